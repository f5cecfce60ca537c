/* server.h - qwend: the daemon's state and its one loop.
 *
 * Owns: the daemon's state (loading, ready, restarting, draining); the model as the daemon
 * sees it (config, tokenizer, stage plan; it never touches weights); the client socket (a
 * ZeroMQ ROUTER, with a monitor reporting disconnects) and the requests in progress, each
 * with the client that asked; the scheduler (sched.h) and the workers' supervisor
 * (supervisor.h); signals, read from a signalfd (SIGTERM and SIGINT drain and stop, SIGHUP
 * reloads the runtime settings, SIGCHLD reaps); systemd notifications; and the status
 * report.  One loop: a poll on the socket, the monitor, the signalfd, the workers' eventfd
 * and the image pool's, with a 10 Hz tick for heartbeats, timeouts and statistics.  Request
 * images are decoded and resized by a few threads (workpool.h), so no request's preparation
 * holds the loop; everything else is the loop's.
 *
 * server.c runs the loop and the pipeline; server_restart.c what a failure of the pipeline
 * does; server_clients.c speaks to clients (requests, replies, disconnects); server_images.c
 * hands request images to the pool and takes them back; server_status.c writes the status
 * report.
 */
#ifndef QW_DAEMON_SERVER_H
#define QW_DAEMON_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/request.h"
#include "daemon/sched.h"
#include "daemon/settings.h"
#include "daemon/supervisor.h"
#include "daemon/workpool.h"
#include "ipc/protocol.h"
#include "loader/plan.h"

typedef enum qw_server_state {
	QW_SERVER_LOADING,       /* workers loading weights */
	QW_SERVER_READY,
	QW_SERVER_RESTARTING,    /* the pipeline failed; a new generation of workers loads */
	QW_SERVER_DRAINING,      /* finishing requests before exit */
} qw_server_state;

/* One submitted request. */
typedef struct qw_live {
	qw_seq seq;                  /* the scheduler's view; seq.owner is this */
	qw_output out;
	uint64_t id;
	uint8_t peer[256];           /* the client's ZeroMQ routing id */
	size_t peer_len;
	int peer_fd;                 /* the client's connection, for disconnects (-1: unknown) */
	bool stream;
	bool prompt_ids;             /* accepted carries the prompt's token ids */
	int n_prompt;
	double t_submit, t_first;    /* seconds (monotonic) */
	qw_text_buf answer, reasoning;   /* text not yet sent */
	int32_t *tokens;             /* tokens not yet sent */
	int n_tokens, cap_tokens;
	bool logprobs;               /* the submit asked for log-probabilities */
	qw_reply_logprob *lps;       /* (cap_tokens,) those of the tokens not yet sent */
	qw_reply_top *tops;          /* (cap_tops,) their most likely ones, in order */
	int n_tops, cap_tops;
	bool dirty;                  /* holds something to send */
	/* preparing: its images decode on the pool; it reaches the scheduler (and is
	 * accepted) when the last is back */
	struct qw_image_job **jobs;  /* (seq.n_images,) NULL once back */
	int jobs_out;                /* not back yet */
	qw_status image_st;          /* the first image that failed: why (QW_OK: none) */
	qw_err image_err;
	struct qw_live *prev, *next; /* all live requests */
} qw_live;

#define QW_THROUGHPUT_WINDOW 10   /* seconds */

typedef struct qw_server {
	qw_settings set;
	char config_path[1024];      /* "" when none */
	qw_server_state state;
	double t_start;
	/* the model */
	char model_dir[1024];        /* a model directory, or synthetic:CONFIG.json */
	bool demo;                   /* the built-in demo model (random weights) */
	char device[8];              /* the backend: cpu or cuda (the device setting resolved) */
	char meta_dir[1024];         /* where its tokenizer and generation config would be */
	qw_config cfg;
	qw_tokenizer *tok;
	qw_req_ctx rc;
	qw_limits limits;
	qw_stage_plan plan[QW_MAX_STAGES];
	int n_stages;
	int gpu[QW_MAX_STAGES];      /* cuda: the GPU of each stage */
	uint64_t params_total, params_active;
	/* the pipeline */
	qw_supervisor sup;
	qw_sched sched;
	bool have_sched;
	int depth;
	int max_plan_blocks;         /* block ids one plan may carry (the plan rings' size) */
	int max_image_handles;       /* images every sequence may bring at start: handles one plan
					drops for them, and as many again for the vision cache's
					evictions (its most entries) */
	void *plan_buf;
	size_t plan_buf_cap;
	void *result_buf;
	size_t result_buf_cap;
	double t_load;               /* when the current generation began loading */
	double t_load_logged;        /* when its progress was last logged */
	int load_logged_tenth;       /* the tenth of its bytes last logged */
	double restarts[64];         /* when the pipeline was restarted (ring) */
	int n_restarts;
	int n_partial_restarts;      /* of them, those that kept the surviving workers */
	double t_failed;             /* when the pipeline failed, until it is ready again (0) */
	double last_recovery_s;      /* from the last failure to ready again */
	char last_failure[1024];
	/* request images, decoded off the loop */
	qw_work_pool images;
	bool have_images;
	int images_out;              /* jobs in the pool (of live requests or of gone ones) */
	/* clients */
	void *zctx, *router, *monitor;
	char endpoint[1100];         /* what the socket is bound to */
	char socket_path[1100];      /* ipc: the socket file, removed at exit */
	int lock_fd;
	qw_live *live;               /* every submitted request */
	int n_live;
	uint64_t next_id;
	/* signals and the end */
	int sigfd;
	double drain_deadline;
	bool stopping;               /* leave the loop */
	int exit_status;
	/* statistics */
	uint64_t served, failed, cancelled;   /* accepted requests, by how they ended */
	uint64_t refused[QW_CODE_COUNT_];     /* requests refused before acceptance, by code */
	uint64_t prompt_tokens, generated_tokens;
	uint64_t window_prompt[QW_THROUGHPUT_WINDOW], window_gen[QW_THROUGHPUT_WINDOW];
	int64_t window_second;       /* the second the last bucket counts */
} qw_server;

/* Runs the daemon with settings s (config_path: where they came from, for SIGHUP; may be
 * NULL).  Returns the process exit status. */
int qw_server_run(const qw_settings *s, const char *config_path);

// -- shared by the server's files ------------------------------------------------------

/* server_clients.c */
qw_status qw_server_open_socket(qw_server *sv, qw_err *err);
void qw_server_close_socket(qw_server *sv);
void qw_server_on_router(qw_server *sv);
void qw_server_on_monitor(qw_server *sv);
/* Sends what requests hold (chunks), finishing those done. */
void qw_server_flush(qw_server *sv);
/* Ends a request with an error reply, or (code NULL) a done reply with reason. */
void qw_server_end(qw_server *sv, qw_live *r, const char *code, const char *message,
		   const char *reason);
/* The scheduler's callback for each sampled token. */
void qw_server_on_token(void *ctx, qw_seq *seq, int32_t token, const qw_sample_logprobs *lp);
/* A prepared request (its images' pixels in) to the scheduler, then accepted; refused with
 * request 0 if the scheduler cannot take it. */
void qw_server_admit(qw_server *sv, qw_live *r);
/* Refuses r before it was accepted (request 0; counted by its code) and forgets it. */
void qw_server_refuse(qw_server *sv, qw_live *r, qw_error_code code, const char *message);

/* server_images.c */
qw_status qw_server_images_start(qw_server *sv, qw_err *err);
/* Sends r's images (from req, which may go once this returns) to the pool; false when out
 * of memory. */
bool qw_server_decode_images(qw_server *sv, qw_live *r, const qw_request *req);
/* Takes the images the pool is done with: a request whose last image is back is admitted,
 * or refused if one failed. */
void qw_server_on_images(qw_server *sv);
/* r is going: its images still out are freed when they come back. */
void qw_server_forget_images(qw_live *r);
/* Stops the threads and frees every image job left. */
void qw_server_images_stop(qw_server *sv);
int qw_server_preparing(const qw_server *sv);

/* server.c */
void qw_server_post_steps(qw_server *sv);
/* Ends every request with an error. */
void qw_server_fail_all(qw_server *sv, const char *code, const char *message);

/* server_restart.c */
/* A worker failed, died or hung (f names the stages to start again): the running requests
 * fail, and the failed stages' workers start again, or every worker, or qwend gives up. */
void qw_server_pipeline_failed(qw_server *sv, const qw_pipe_failure *f);
/* A failure that is not one stage's doing: every worker starts again. */
void qw_server_pipeline_broke(qw_server *sv, const char *why);
void qw_server_begin_drain(qw_server *sv, const char *why);
/* Why submit is refused now (loading, restarting, draining), or NULL when ready. */
const char *qw_server_not_ready(const qw_server *sv, char *buf, size_t cap);

/* server_status.c: the status report (malloc'd JSON). */
char *qw_server_status_json(const qw_server *sv);

/* How far the workers are with the weights: the total is the stage plan's from the start,
 * so the figure only grows. */
typedef struct qw_server_load {
	uint64_t done, total;        /* bytes */
	double elapsed_s;            /* since the generation began loading */
	double eta_s;                /* seconds left at the rate so far; < 0 while unknown */
} qw_server_load;
void qw_server_load_progress(const qw_server *sv, qw_server_load *out);

/* "35% (440.00 MiB of 1.26 GiB), about 23 s left" into buf. */
const char *qw_server_load_text(const qw_server_load *l, char *buf, size_t cap);

#endif
