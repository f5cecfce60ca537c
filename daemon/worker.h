/* worker.h - a pipeline worker: one process per stage, started by qwend.
 *
 * Owns: the worker's life.  It maps the daemon's region (ipc/region.h), loads the weights
 * its stage owns (reporting progress in its slot), reports how many KV blocks would fit,
 * allocates the cache the daemon decides on, and then runs step plans in order until a stop
 * plan, an abort, or its daemon's death: stage 0 runs the vision tower on fresh images and
 * embeds, every stage runs its layers and hands the hidden states (and the deepstack
 * features later stages still add) to the next, and the last stage samples and answers on
 * the result ring, waking the daemon through its notify fd.  A failure to start is written
 * to the slot and the process exits non-zero.  Once it has served, a failed step (its own,
 * or a neighbour's death) is written to the slot and the worker waits for the daemon's word:
 * when the daemon moves to a new generation (a partial restart that keeps this worker), it
 * drops its steps in flight, keeps its weights and KV cache, acknowledges, and once the
 * rings are the new generation's connects its hand-overs again (CUDA: a new communicator)
 * and serves on; the daemon kills it instead when its stage is the one to start again.
 */
#ifndef QW_DAEMON_WORKER_H
#define QW_DAEMON_WORKER_H

#include "daemon/log.h"

typedef struct qw_worker_args {
	int stage;          /* which stage of the region's job */
	int region_fd;      /* the region's memfd, inherited */
	int notify_fd;      /* an eventfd the daemon polls, inherited */
	qw_log_level log_level;
} qw_worker_args;

/* Runs the worker; returns the process's exit status (0 after a stop plan). */
int qw_worker_run(const qw_worker_args *a);

#endif
