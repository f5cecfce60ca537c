/* step_limits.c - the limits a stage reserves for, and the checks against them.  See
 * step_limits.h. */
#include "kernels/step_limits.h"

#include <stdio.h>

#include "loader/weights.h"

/* What each limit counts, and the setting behind it (the HINT). */
static const struct {
	const char *unit;
	const char *setting;
} LIMITS[] = {
	[QW_LIMIT_TOKENS] = {"tokens", "max-batch-tokens"},
	[QW_LIMIT_SEQS] = {"sequences", "max-seqs"},
	[QW_LIMIT_LOGITS] = {"logit rows", "max-seqs"},
	[QW_LIMIT_CONTEXT] = {"tokens of context", "max-model-len"},
	[QW_LIMIT_BLOCKS] = {"KV blocks per sequence", "max-model-len"},
	[QW_LIMIT_VOCAB] = {"vocabulary entries", "the model's vocabulary"},
	[QW_LIMIT_IMAGE_ROWS] = {"image patches", "max-image-tokens"},
};

void qw_step_limits_shapes(qw_step_limits *lim, const qw_config *cfg,
			   const struct qw_stage *stage, int max_image_tokens)
{
	const qw_text_config *t = &cfg->text;
	lim->hidden = t->hidden_size;
	lim->n_heads = t->num_heads;
	lim->n_kv_heads = t->num_kv_heads;
	lim->head_dim = t->head_dim;
	lim->moe_experts = lim->moe_top_k = lim->moe_inter = 0;
	for (int L = stage->layer_begin; L < stage->layer_end; L++)
		if (qw_layer_is_moe(cfg, L)) {
			lim->moe_experts = t->num_experts;
			lim->moe_top_k = t->num_experts_per_tok;
			lim->moe_inter = t->moe_intermediate_size;
		}
	lim->vocab = stage->index == stage->count - 1 ? t->vocab_size : 0;
	lim->vision_rows = lim->vision_in = 0;
	if (stage->index == 0 && cfg->has_vision && max_image_tokens > 0) {
		const qw_vision_config *v = &cfg->vision;
		lim->vision_rows = max_image_tokens * v->spatial_merge_size * v->spatial_merge_size;
		lim->vision_in = v->in_channels * v->temporal_patch_size * v->patch_size *
				 v->patch_size;
	}
}

int qw_step_limits_blocks(const qw_step_limits *lim)
{
	int bs = lim->block_size > 0 ? lim->block_size : 1;
	return (lim->max_context + bs - 1) / bs;
}

long long qw_step_limits_get(const qw_step_limits *lim, qw_limit l)
{
	switch (l) {
	case QW_LIMIT_TOKENS: return lim->max_tokens;
	case QW_LIMIT_SEQS: return lim->max_seqs;
	case QW_LIMIT_LOGITS: return lim->max_logits;
	case QW_LIMIT_CONTEXT: return lim->max_context;
	case QW_LIMIT_BLOCKS: return qw_step_limits_blocks(lim);
	case QW_LIMIT_VOCAB: return lim->vocab;
	case QW_LIMIT_IMAGE_ROWS: return lim->vision_rows;
	}
	return 0;
}

qw_status qw_step_limits_hold(const qw_step_limits *lim, qw_limit l, long long need,
			      const char *who, const char *what, qw_err *err)
{
	long long have = qw_step_limits_get(lim, l);
	if (need <= have)
		return QW_OK;
	return qw_fail(err, QW_E_LIMIT, "%s: %s needs %lld %s; the stage reserved step memory for "
		       "%lld at load (HINT: nothing grows after load: a step past %s is refused; "
		       "raise it and restart)", who, what, need, LIMITS[l].unit, have,
		       LIMITS[l].setting);
}

qw_status qw_step_limits_check(const qw_step_limits *lim, const qw_batch *b, const char *who,
			       qw_err *err)
{
	int context = 0;
	for (int t = 0; t < b->n_tokens; t++)
		if (b->kv_index[t] + 1 > context)
			context = b->kv_index[t] + 1;
	QW_TRY(qw_step_limits_hold(lim, QW_LIMIT_TOKENS, b->n_tokens, who, "the step", err));
	QW_TRY(qw_step_limits_hold(lim, QW_LIMIT_SEQS, b->n_seqs, who, "the step", err));
	QW_TRY(qw_step_limits_hold(lim, QW_LIMIT_LOGITS, b->n_logits, who, "the step", err));
	QW_TRY(qw_step_limits_hold(lim, QW_LIMIT_BLOCKS, b->max_blocks, who,
				   "the step's block tables", err));
	return qw_step_limits_hold(lim, QW_LIMIT_CONTEXT, context, who, "the step's longest "
				   "sequence", err);
}

qw_status qw_sealed_error(qw_err *err, const char *who, const char *what)
{
	return qw_fail(err, QW_E_LIMIT, "%s: %s was asked for after the backend was sealed "
		       "(nothing is allocated once the daemon is ready: what a step needs is "
		       "reserved at load)", who, what);
}
