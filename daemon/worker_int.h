/* worker_int.h - what a worker's two files share (private to them): worker.c (its life:
 * load, allocate, serve) and worker_gen.c (its generations: what a partial restart that
 * keeps it does).
 *
 * Owns: the worker's state (struct worker) and the few helpers both files call.
 */
#ifndef QW_DAEMON_WORKER_INT_H
#define QW_DAEMON_WORKER_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon/handover.h"
#include "daemon/vision_store.h"
#include "daemon/worker.h"
#include "ipc/region.h"
#include "kernels/cuda/nccl_pipe.h"
#include "kernels/forward.h"
#include "kernels/vision.h"
#include "loader/checkpoint.h"

typedef struct worker {
	const qw_worker_args *args;
	qw_region region;
	qw_region_header *hdr;
	qw_worker_slot *slot;
	int stage, n_stages;
	pid_t daemon;
	qw_config cfg;
	qw_checkpoint *ck;
	qw_backend *be;
	qw_stage_model m;
	size_t elem;                       /* bytes of one activation value */
	qw_handover prev, next;            /* hand-overs from the previous, to the next stage
					      (CPU backend: through the region's rings) */
	qw_nccl_pipe *pipe;                /* the hand-overs device to device (CUDA, S > 1) */
	qw_act hidden;                     /* (max_tokens, H) */
	qw_act logits;                     /* (max_logits, V), last stage */
	qw_act visual;                     /* (max_tokens, H), stage 0: image rows of a step */
	qw_act deepstack[QW_MAX_DEEPSTACK];/* (max_tokens, H) each, for the layers it needs */
	int n_ds;                          /* the model's deepstack features */
	int ds_from;                       /* first deepstack index this stage holds */
	qw_vision_store images;            /* stage 0: the vision tower, the images in progress */
	uint64_t step_bytes;               /* what reserve_steps took (host memory on the CPU) */
	void *msg;                         /* the plan being run */
	size_t msg_cap;
	void *ahead;                       /* the plan after it, read early (NCCL pipe) */
	size_t ahead_cap, ahead_len;       /* ahead_len 0: none */
	uint64_t posted_ahead;             /* step + 1 whose receive was posted early, or 0 */
	int32_t *tables;                   /* dense block tables of a step */
	size_t tables_cap;
	int32_t *visual_rows;              /* (max_tokens,) */
	int32_t *tokens;                   /* (max_logits,) sampled */
	qw_sample_logprobs *logprobs;      /* (max_logits,) their log-probabilities */
	qw_sample_history *history;        /* (max_logits,) the rows' histories, in the arena */
	void *result;                      /* a result record */
	int kv_blocks, block_tokens;
	uint32_t generation;               /* the daemon's generation this worker is in */
	uint64_t load_t0_ms;               /* when the upload of the weights began */
	int load_delay_ms;                 /* tests: QWEND_TEST_LOAD_DELAY_MS */
} worker;

/* worker.c */
void worker_notify(worker *w);          /* wakes the daemon */
void worker_beat(worker *w);            /* a sign of life */
/* The generation's NCCL id in the region: stage 0 makes it, the others wait for it. */
qw_status worker_pipe_id(worker *w, qw_err *err);
/* The CPU backend's hand-overs over the region's rings (nothing with an NCCL pipe). */
qw_status worker_connect_handovers(worker *w, qw_err *err);
/* Stage 0 forgets every image in progress. */
void worker_forget_images(worker *w);

/* worker_gen.c */
/* The daemon has moved on to a newer generation than this worker's (a partial restart). */
bool worker_moved_on(const worker *w);
/* A wait goes on while the daemon wants this generation (an NCCL pipe's keep_waiting). */
bool worker_keep_waiting(void *ctx);
/* Until the rings are this worker's generation's. */
qw_status worker_await_rings(worker *w, qw_err *err);
/* After a failed step: says so in the slot and waits for the daemon's word; false when the
 * daemon is gone. */
bool worker_await_generation(worker *w, const qw_err *err);
/* Rejoins the daemon's newest generation keeping the weights and KV cache. */
qw_status worker_rejoin(worker *w, qw_err *err);

#endif
