/* supervisor.h - qwend's workers: starting them, watching them, ending them.
 *
 * Owns: one generation of workers (a process per stage, started by fork and exec of the
 * daemon's own program in worker mode) and their shared-memory region; the eventfd they
 * wake the daemon with; the decision on the KV cache once every stage has loaded (the
 * smallest capacity any stage reported, or the configured block count, capped at what the
 * sequences could ever use); and the end of a generation: a clean stop after stop plans, or
 * a kill (rings aborted so nobody waits for ever, every process SIGKILLed and reaped).
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
	int generation;          /* 1 for the first start */
	bool running;            /* a generation exists (started, not yet ended) */
	int kv_decided;          /* blocks per stage, 0 until decided */
} qw_supervisor;

/* Sets up (no processes yet). */
qw_status qw_supervisor_init(qw_supervisor *s, const qw_region_job *job,
			     const qw_region_sizes *sizes, int64_t kv_blocks, int64_t kv_blocks_max,
			     qw_log_level log_level, qw_err *err);

/* Starts a generation: a fresh region, one worker per stage. */
qw_status qw_supervisor_start(qw_supervisor *s, qw_err *err);

/* Reads the workers' states (decides the KV cache once all have loaded).  FAILED fills why. */
qw_pipe_state qw_supervisor_poll(qw_supervisor *s, char *why, size_t cap);

/* Reaps exited workers; true if one exited without being asked to, with why filled. */
bool qw_supervisor_reap(qw_supervisor *s, char *why, size_t cap);

/* Waits up to timeout_ms for every worker to exit (after stop plans); true if all did. */
bool qw_supervisor_wait(qw_supervisor *s, int timeout_ms);

/* Ends the generation now: aborts its rings, kills and reaps its workers, frees the region. */
void qw_supervisor_kill(qw_supervisor *s);

/* Drains the eventfd. */
void qw_supervisor_clear_notify(qw_supervisor *s);

void qw_supervisor_free(qw_supervisor *s);

#endif
