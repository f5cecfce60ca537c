/* supervisor.h - qwend's workers: starting them, watching them, ending them.
 *
 * Owns: the workers (a process per stage, started by fork and exec of the daemon's own
 * program in worker mode) and their shared-memory region; the eventfd they wake the daemon
 * with; the decision on the KV cache once every stage has loaded (the smallest capacity any
 * stage reported, or the configured block count, capped at what the sequences could ever
 * use); which workers a failure names (those that died, else those that reported a failure);
 * and the generations:
 *   - a whole start (qw_supervisor_start): a fresh region, a worker per stage;
 *   - a partial restart (qw_supervisor_restart_stages): only the failed stages' workers are
 *     killed and started again, into the same region; the survivors drop their steps in
 *     flight, keep their weights and KV cache, and move to the next generation without
 *     exiting.  In turn: the generation is bumped and the rings aborted (waking whoever
 *     waits on one), the NCCL id forgotten and the failed stages started again (they load
 *     meanwhile); the survivors acknowledge (REJOINING); the rings are emptied and the
 *     generation resumed: the survivors go on (the CUDA ones join a new communicator), the
 *     new workers may touch the rings, and all are ready again;
 *   - the end: a clean stop after stop plans, or a kill (rings aborted so nobody waits for
 *     ever, every process SIGKILLed and reaped).
 */
#ifndef QW_DAEMON_SUPERVISOR_H
#define QW_DAEMON_SUPERVISOR_H

#include <stdbool.h>
#include <sys/types.h>

#include "daemon/log.h"
#include "ipc/region.h"

typedef enum qw_pipe_state {
	QW_PIPE_LOADING,        /* workers starting or loading */
	QW_PIPE_READY,          /* every worker ready: steps may be posted */
	QW_PIPE_FAILED,         /* a worker failed or died; why says which and how */
} qw_pipe_state;

/* What failed: why, and which stages' workers to start again. */
typedef struct qw_pipe_failure {
	char why[1024];
	uint64_t stages;         /* bit i: stage i's worker died, failed or hung; 0: not one
				    stage's doing (every worker is started again) */
} qw_pipe_failure;

typedef struct qw_supervisor {
	qw_region_job job;       /* what every generation runs */
	qw_region_sizes sizes;
	int64_t kv_blocks;       /* configured blocks per stage; 0: from the workers' capacity */
	int64_t kv_blocks_max;   /* more would never be used */
	qw_log_level log_level;  /* the workers' */
	int notify_fd;           /* eventfd: workers write, the daemon polls */
	qw_region region;        /* the current generation's */
	pid_t pid[QW_MAX_STAGES];    /* 0 once reaped */
	int exit_status[QW_MAX_STAGES];
	bool exited[QW_MAX_STAGES];  /* reaped in this generation (exit_status holds how) */
	int generation;          /* 1 for the first start, + 1 for every restart, partial or not */
	bool running;            /* a generation exists (started, not yet ended) */
	int kv_decided;          /* blocks per stage, 0 until decided */
	uint64_t rejoin;         /* a partial restart under way: the stages started again */
	bool resumed;            /* ... and its rings emptied (survivors and new workers go on) */
	int loads[QW_MAX_STAGES];    /* workers started for each stage: loads of its weights */
} qw_supervisor;

/* Sets up (no processes yet). */
qw_status qw_supervisor_init(qw_supervisor *s, const qw_region_job *job,
			     const qw_region_sizes *sizes, int64_t kv_blocks, int64_t kv_blocks_max,
			     qw_log_level log_level, qw_err *err);

/* Starts a generation: a fresh region, one worker per stage. */
qw_status qw_supervisor_start(qw_supervisor *s, qw_err *err);

/* Whether a partial restart of `stages` can keep the others: each is alive, has served (its
 * weights and KV cache are resident) and is not among them. */
bool qw_supervisor_can_rejoin(const qw_supervisor *s, uint64_t stages);

/* Begins a partial restart of `stages` (qw_supervisor_can_rejoin must hold): bumps the
 * generation, aborts the rings, kills and reaps what is left of those stages' workers and
 * starts new ones.  qw_supervisor_poll carries it on (emptying the rings once every
 * survivor has dropped its steps) until the pipeline is ready again, or fails. */
qw_status qw_supervisor_restart_stages(qw_supervisor *s, uint64_t stages, qw_err *err);

/* Reads the workers' states (decides the KV cache once all have loaded; moves a partial
 * restart on).  FAILED fills f.  While a partial restart is under way, a survivor that fails
 * or dies is a failure as any other; the caller then restarts every worker. */
qw_pipe_state qw_supervisor_poll(qw_supervisor *s, qw_pipe_failure *f);

/* Reaps exited workers; true if one exited without being asked to, with f filled. */
bool qw_supervisor_reap(qw_supervisor *s, qw_pipe_failure *f);

/* Waits up to timeout_ms for every worker to exit (after stop plans); true if all did. */
bool qw_supervisor_wait(qw_supervisor *s, int timeout_ms);

/* Ends the generation now: aborts its rings, kills and reaps its workers, frees the region. */
void qw_supervisor_kill(qw_supervisor *s);

/* Drains the eventfd. */
void qw_supervisor_clear_notify(qw_supervisor *s);

void qw_supervisor_free(qw_supervisor *s);

#endif
