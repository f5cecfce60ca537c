/* step.h - what the daemon tells the pipeline's workers each step, and what the last stage
 * answers.
 *
 * Owns: qw_step_plan (one microbatch: its tokens with their M-RoPE positions, sequences,
 * KV indices and cache slots; the block tables of its sequences; the rows that need logits,
 * how each is sampled and where in the region's arena its penalties' history lies; the
 * image segments whose features take pad rows; the images stage 0 may forget),
 * qw_step_result (the sampled tokens and the log-probabilities asked for), and their wire
 * form: one flat
 * record (a header of counts, then each array 8-byte aligned) that a ring message carries
 * and the receiver reads in place, every count, offset and index checked first.
 *
 * Both ends are the same program (the daemon and the workers it starts), so records hold
 * native structs (qw_sampling, qw_step_image) as they are.
 */
#ifndef QW_IPC_STEP_H
#define QW_IPC_STEP_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "loader/error.h"

typedef enum qw_step_kind {
	QW_STEP_RUN = 1,     /* compute the microbatch */
	QW_STEP_STOP = 2,    /* no more steps: release everything and exit */
} qw_step_kind;

/* A run of one image's merged tokens that this step fills. */
typedef struct qw_step_image {
	uint64_t handle;         /* the daemon's name for the image while it is in use */
	int32_t grid[3];         /* (t, h, w) in patches */
	int32_t height, width;   /* of the resized RGB image in the arena */
	int32_t n_tokens;        /* merged tokens the whole image fills */
	int32_t first;           /* the image's first token this step fills */
	int32_t count;           /* how many, consecutive */
	int32_t row;             /* the step's token row the first of them lands on */
	int32_t fresh;           /* 1: not seen before: stage 0 runs the vision tower on it now */
	int32_t keep;            /* 1: the daemon's vision cache: stage 0 keeps its features
				    after its last rows, until a plan drops the handle */
	uint64_t arena_offset;   /* fresh: where its RGB bytes (height x width x 3) lie in the
				    region's image arena */
} qw_step_image;

/* Where a sampled row's history (qw_token_count entries, for its penalties) lies in the
 * region's arena. */
typedef struct qw_step_history {
	uint64_t arena_offset;
	int32_t n;               /* entries; 0: none */
	int32_t pad;
} qw_step_history;

typedef struct qw_step_plan {
	uint64_t step;               /* 1, 2, ... in the order every stage runs them */
	qw_step_kind kind;
	int32_t n_tokens;            /* T */
	int32_t n_seqs;
	int32_t n_logits;
	int32_t n_images;            /* image segments */
	int32_t n_drop;              /* image handles stage 0 may forget */
	int32_t n_blocks;            /* entries of blocks */
	const int32_t *token_ids;    /* (T,) */
	const int32_t *positions;    /* (T, 3) */
	const int32_t *seq;          /* (T,) index of the token's sequence in this step */
	const int32_t *kv_index;     /* (T,) the token's index in its sequence's KV entries */
	const int32_t *slot;         /* (T,) cache slot its K/V goes to */
	const int32_t *block_start;  /* (n_seqs + 1,) sequence s holds blocks[start[s], start[s+1]) */
	const int32_t *blocks;       /* (n_blocks,) physical block ids, in token order */
	const int32_t *logit_rows;   /* (n_logits,) token rows that are sampled */
	const qw_sampling *sampling; /* (n_logits,) */
	const qw_step_history *history; /* (n_logits,) */
	const qw_step_image *images; /* (n_images,) in ascending row order */
	const uint64_t *drop;        /* (n_drop,) */
} qw_step_plan;

/* Bytes of p's record. */
size_t qw_step_plan_size(const qw_step_plan *p);

/* Bytes of the largest record of a plan with at most max_tokens tokens (and as many image
 * segments: each fills one token or more), max_seqs sequences and logit rows, max_blocks
 * block ids and max_drop image handles: what a ring must hold for one plan. */
size_t qw_step_plan_max_size(int max_tokens, int max_seqs, int max_blocks, int max_drop);

/* Writes p's record into buf (qw_step_plan_size bytes, 8-byte aligned). */
void qw_step_plan_write(const qw_step_plan *p, void *buf);

/* Reads a record (8-byte aligned, len bytes) into out, whose arrays then point into buf.
 * Counts, offsets and indices are checked against each other and the record's length
 * (block ids and slots against the KV pool are the worker's to check). */
qw_status qw_step_plan_read(const void *buf, size_t len, qw_step_plan *out, qw_err *err);

typedef struct qw_step_result {
	uint64_t step;
	int32_t n_logits;
	const int32_t *tokens;       /* (n_logits,) one per logit row, in the plan's order */
	const qw_sample_logprobs *logprobs;  /* (n_logits,) when a row asked for them, or NULL
						(entries of rows that did not ask are zeros) */
} qw_step_result;

size_t qw_step_result_size(const qw_step_result *r);
/* Bytes of the largest result of max_logits rows. */
size_t qw_step_result_max_size(int max_logits);
void qw_step_result_write(const qw_step_result *r, void *buf);
qw_status qw_step_result_read(const void *buf, size_t len, qw_step_result *out, qw_err *err);

#endif
