/* pipeline.h - one sequence through S in-process stages: prefill, then decode steps.
 *
 * Owns: the stages (qw_stage_model, planned by bytes with plan.h), the sequence's block
 * table (blocks handed out in order; the cache is sized for max_ctx tokens), the hidden
 * state passed from stage to stage, and the logits.  This is the reference runner that
 * qwen-parity and the tests use; the daemon schedules many sequences itself over the same
 * stage code.
 */
#ifndef QW_KERNELS_PIPELINE_H
#define QW_KERNELS_PIPELINE_H

#include "kernels/forward.h"
#include "loader/plan.h"

typedef struct qw_pipeline {
	const qw_config *cfg;
	qw_backend *be;
	int n_stages;
	qw_stage_model stages[QW_MAX_STAGES];
	int block_size, max_ctx;
	int32_t *block_table;   /* (max_ctx / block_size,) */
	int n_ctx;              /* tokens in the cache */
	int rope_delta;         /* M-RoPE position of a continuation token = index + rope_delta */
	qw_act hidden;          /* (max_tokens, H) */
	qw_act logits;          /* (max_tokens, V) */
	int max_tokens;
} qw_pipeline;

qw_status qw_pipeline_init(qw_pipeline *p, const qw_config *cfg, const qw_checkpoint *ck,
			   qw_backend *be, int n_stages, int max_ctx, int max_tokens, qw_err *err);
void qw_pipeline_free(qw_pipeline *p);

/* Sets a hook on every stage (hidden states as HF records them). */
void qw_pipeline_set_hook(qw_pipeline *p, qw_hidden_hook hook, void *ctx);

/* Image features for one step: rows of the pad tokens and what goes there. */
typedef struct qw_visual {
	int n;                     /* pad tokens */
	const int32_t *rows;       /* (n,) token rows in the step */
	const qw_act *embeds;      /* (n, H) */
	const qw_act *deepstack;   /* (n_deepstack,) of (n, H) */
	int n_deepstack;
} qw_visual;

/* Appends n tokens to the sequence in one step.  positions (n, 3) or NULL for text (index +
 * rope_delta on every axis); vis NULL for text.  If all_logits, logits_out gets (n, V), else
 * (1, V) for the last token; logits_out may be NULL. */
qw_status qw_pipeline_append(qw_pipeline *p, const int32_t *ids, int n, const int32_t *positions,
			     const qw_visual *vis, bool all_logits, float *logits_out,
			     qw_err *err);

/* Forgets the sequence (the cache is reused). */
void qw_pipeline_reset(qw_pipeline *p);

#endif
