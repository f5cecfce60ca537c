/* sched.h - the scheduler: which tokens of which sequences each pipeline step computes.
 *
 * Owns: the sequences (queued or running), their token lists and positions, their KV block
 * tables (kv_blocks.h) and images; the bounded queue; the steps in flight; the image arena's
 * space; and the policy:
 *   - a sequence's unscheduled tokens (a prompt, or the one token it sampled last) go into
 *     steps in chunks, so prefill and decode are one mechanism; the chunk holding its last
 *     known token gets a logit row, and the sequence waits for that token before its next
 *     step, while earlier chunks of a long prompt follow each other down the pipeline
 *     without waiting;
 *   - each step carries single-token decodes first (at most ceil(running / depth) of them,
 *     so the pipeline's steps stay evenly filled), then prompt chunks of running sequences,
 *     then newly admitted ones, within the token, logit-row and plan-size budgets;
 *   - as many steps are in flight as the pipeline is deep;
 *   - admission in arrival order when the free KV blocks hold the whole prompt (past a small
 *     reserve); when a decode finds the cache full, the newest running sequence that is not
 *     waiting on a token is preempted: its blocks are released and it goes back to the head
 *     of the queue, to be recomputed later (greedy tokens stay the same; its published blocks
 *     stay cached, so the recomputation usually starts past them);
 *   - the prefix cache (kv_blocks.h): a block is published once its tokens are all scheduled,
 *     under a key hashed from its parent block's key, its tokens, their M-RoPE positions and,
 *     for image rows, the image's content hash and which rows; admission takes the longest
 *     run of published blocks that matches the sequence's leading tokens (whole blocks, and
 *     never its last token, which must be computed to give logits), written by an earlier
 *     step, by reference, and schedules only the rest.  An image whose every token comes
 *     from the cache never reaches the vision tower; one the hit ends inside goes to stage 0
 *     whole and fills only its remaining rows;
 *   - images: the step that first reaches an image's pad tokens carries its resized RGB in
 *     the arena (freed when that step completes) for stage 0's vision tower; the features of
 *     an image split over several steps stay on stage 0 until its last tokens pass, or until
 *     a later plan tells stage 0 to drop them.  Stage 0's memory for them is fixed: a chunk
 *     that would split an image while the images split before hold too many tokens stops
 *     before it (the split ones finish first), and a larger image than it has memory for is
 *     refused;
 *   - the vision cache (vision_cache.h): an image stage 0 is sent whole is kept there after
 *     its last rows when the cache has room (evicting the least recently used images no
 *     sequence still needs and the step being built does not read); a later image of the
 *     same content hash takes that handle and is not sent again (no tower).  Its rows count
 *     against the cache's budget, not the split images'.  A lost pipeline forgets it;
 *   - penalties: a sequence sampled with a penalty keeps its history (history.h), and each
 *     logit row of it carries that history whole in the arena (freed when the step
 *     completes) for the last stage's sampler; a row whose history finds no room waits for
 *     a later step (its chunk stops before its last token).  Nothing is kept on the
 *     workers, so preemption, restarts and the prefix cache leave it right.
 * It does no I/O: the daemon posts the plans it builds and feeds the results back.
 */
#ifndef QW_DAEMON_SCHED_H
#define QW_DAEMON_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/history.h"
#include "daemon/kv_blocks.h"
#include "daemon/vision_cache.h"
#include "ipc/step.h"
#include "kernels/ops.h"

typedef struct qw_sched_image {
	int32_t pos;              /* prompt index of its first pad token */
	int32_t n_tokens;         /* pad tokens it fills */
	int32_t grid[3];          /* (t, h, w) in patches */
	int32_t height, width;    /* of rgb */
	uint8_t *rgb;             /* (height, width, 3) the resized image; owned */
	uint64_t content_hash;    /* of its pixels, size and grid (set by qw_sched_submit) */
	uint64_t handle;          /* its name on stage 0 while there; 0: not sent yet */
	bool cached;              /* handle is the vision cache's: stage 0 keeps it after its last
				     rows, and only the cache drops it */
	uint64_t fresh_step;      /* the step that carries its pixels to stage 0 */
	uint64_t placed_step;     /* the last step that fills rows of it */
	uint64_t arena_offset;    /* where they lie meanwhile */
} qw_sched_image;

typedef struct qw_seq qw_seq;

struct qw_seq {
	uint64_t id;              /* the request id; unique, non-zero */
	int32_t *tokens;          /* (n_tokens,) the prompt, then generated tokens; owned */
	int n_tokens, cap_tokens;
	int n_prompt;
	int32_t *positions;       /* (n_prompt, 3) M-RoPE positions, NULL for text (p, p, p); owned */
	int rope_delta;           /* position of a later token = its index + rope_delta */
	qw_sched_image *images;   /* (n_images,) in prompt order; owned */
	int n_images;
	qw_sampling sampling;     /* temperature, top-k, top-p, seed; step is set per draw */
	qw_history *history;      /* its tokens for the penalties, or NULL: none; owned */
	void *owner;              /* the daemon's request */
	/* the scheduler's */
	int n_scheduled;          /* tokens placed in steps (their K/V is, or is being, written) */
	bool awaiting;            /* a step that samples for it is in flight */
	bool running;             /* admitted: holds KV blocks */
	int preemptions;          /* times it was sent back to the queue */
	uint64_t admitted;        /* admission order */
	uint64_t last_step;       /* the last step it was placed in */
	int n_cached;             /* tokens its last admission took from the prefix cache */
	uint64_t *keys;           /* (n_keys,) content keys of its leading full blocks; owned */
	int n_keys, cap_keys;
	qw_kv_seq kv;
	qw_seq *prev, *next;      /* its list: the queue or the running list */
};

typedef struct qw_sched_opts {
	int kv_blocks, block_tokens;  /* the pool, the same on every stage */
	int max_seqs;                 /* running at once (and logit rows in a step) */
	int max_batch_tokens;         /* tokens in a step */
	int max_queue;                /* waiting; past it submit is refused */
	int depth;                    /* steps in flight */
	int max_plan_blocks;          /* block ids one plan may carry (its ring's size) */
	bool prefix_cache;            /* reuse published blocks across sequences */
	uint8_t *arena;               /* the region's arena: images and histories (may be NULL
					 with arena_bytes 0) */
	uint64_t arena_bytes;
	int vision_tokens;            /* the largest image stage 0 has memory for, and the tokens
					 of images split across steps it may hold besides the one
					 it sees (0: no limit) */
	int vision_cache_tokens;      /* rows stage 0 keeps for the vision cache (0: off) */
	int vision_cache_entries;     /* images it may hold at most (each evicted one is a drop
					 in a plan) */
} qw_sched_opts;

typedef struct qw_seq_list {
	qw_seq *head, *tail;
	int n;
} qw_seq_list;

typedef struct qw_arena_range {
	uint64_t offset, bytes;
} qw_arena_range;

typedef struct qw_inflight {
	uint64_t step;
	int n_logits;
	int n_prompt_tokens;          /* tokens of prompts it computes (the rest decode) */
	uint64_t *seq_ids;            /* (n_logits,) whose token each logit row samples */
	qw_arena_range *arena;        /* arena space its fresh images and histories take */
	int n_arena;
} qw_inflight;

/* What the prefix cache saved. */
typedef struct qw_prefix_stats {
	uint64_t lookups;             /* admissions that looked for a cached prefix */
	uint64_t hits;                /* those that found at least one block */
	uint64_t lookup_tokens;       /* known tokens of those admissions (prompts, and a
					 preempted sequence's generated tokens) */
	uint64_t hit_tokens;          /* of them, served from the cache instead of computed */
	uint64_t images_skipped;      /* images whose every token came from the cache */
} qw_prefix_stats;

typedef struct qw_sched_plan_buf qw_sched_plan_buf;   /* the arrays of the plan being built */

typedef struct qw_sched {
	qw_sched_opts o;
	qw_kv_pool pool;
	qw_seq_list queue, running;
	qw_seq **table;               /* id -> sequence, open addressing */
	int table_cap;
	uint64_t next_step, next_handle, next_admit;
	qw_inflight *inflight;        /* (depth,) a ring of the steps in flight */
	int inflight_head, n_inflight;
	qw_arena_range *arena_free;   /* free arena ranges, sorted by offset */
	int n_arena_free, cap_arena_free;
	uint64_t *drops;              /* image handles stage 0 may forget, for the next plan */
	int n_drops, cap_drops;
	qw_sched_plan_buf *buf;
	uint64_t preempted;           /* total preemptions */
	qw_prefix_stats prefix;
	qw_vision_cache vcache;       /* the images stage 0 keeps the tower's outputs of */
	int32_t *key_words;           /* (8 * block_tokens + 2,) what one block key hashes */
} qw_sched;

qw_status qw_sched_init(qw_sched *s, const qw_sched_opts *o, qw_err *err);
void qw_sched_free(qw_sched *s);

/* Queues seq (the scheduler then owns its arrays and history; seq itself stays the
 * caller's until removed).  QW_E_FULL when the queue is full; QW_E_LIMIT when the sequence
 * could never fit (its prompt plus max_new tokens exceed the KV pool, an image or its
 * history exceeds the arena, or an image a step). */
qw_status qw_sched_submit(qw_sched *s, qw_seq *seq, int max_new, qw_err *err);

/* What qw_sched_submit would say now, without queueing (the images' pixels are not needed:
 * their sizes are). */
qw_status qw_sched_check(const qw_sched *s, const qw_seq *seq, int max_new, qw_err *err);

/* Forgets seq (finished, cancelled, or its client gone): its blocks are released at once
 * (steps still in flight only write them before later steps do; its published ones stay in
 * the prefix cache), its arrays released. */
void qw_sched_remove(qw_sched *s, qw_seq *seq);

/* The sequence of a request id, or NULL. */
qw_seq *qw_sched_find(const qw_sched *s, uint64_t id);

/* Builds the next step into plan (arrays owned by the scheduler, valid until the next call)
 * when the pipeline has room and there is work; false otherwise.  Fresh images are copied
 * into the arena. */
bool qw_sched_next(qw_sched *s, qw_step_plan *plan);

/* The stop plan (no work, every worker exits). */
void qw_sched_stop_plan(qw_sched *s, qw_step_plan *plan);

/* Called with each sampled token (already appended to seq->tokens and its history) and
 * its log-probabilities (NULL unless its sampling asks); it may remove seq. */
typedef void (*qw_sched_token_fn)(void *ctx, qw_seq *seq, int32_t token,
				  const qw_sample_logprobs *logprobs);

/* Applies the result of the oldest step in flight; *prompt_tokens (may be NULL) gets how
 * many of its tokens were prompt tokens. */
qw_status qw_sched_complete(qw_sched *s, const qw_step_result *r, qw_sched_token_fn on_token,
			    void *ctx, int *prompt_tokens, qw_err *err);

/* The pipeline was lost (a worker died): every step in flight is forgotten, every running
 * sequence handed to on_lost (which must remove it: its KV entries are gone), the prefix
 * cache and the arena emptied.  Queued sequences stay queued. */
typedef void (*qw_sched_seq_fn)(void *ctx, qw_seq *seq);
void qw_sched_reset(qw_sched *s, qw_sched_seq_fn on_lost, void *ctx);

/* Turns the prefix cache on or off (off forgets every cached block). */
void qw_sched_set_prefix_cache(qw_sched *s, bool on);

/* For status. */
int qw_sched_inflight(const qw_sched *s);

#endif
