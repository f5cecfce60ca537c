/* pipeline.c - a single sequence through in-process stages.  See pipeline.h. */
#include "kernels/pipeline.h"

#include <stdlib.h>
#include <string.h>

qw_status qw_pipeline_init(qw_pipeline *p, const qw_config *cfg, const qw_checkpoint *ck,
			   qw_backend *be, int n_stages, int max_ctx, int max_tokens, qw_err *err)
{
	memset(p, 0, sizeof *p);
	p->cfg = cfg;
	p->be = be;
	p->block_size = 16;
	p->max_ctx = (max_ctx + p->block_size - 1) / p->block_size * p->block_size;
	p->max_tokens = max_tokens;
	int n_blocks = p->max_ctx / p->block_size;

	qw_stage_plan plan[QW_MAX_STAGES];
	qw_status st = qw_plan_checkpoint(cfg, ck, n_stages, QW_DT_F32, plan, err);
	if (st != QW_OK)
		return st;
	p->block_table = malloc((size_t)n_blocks * sizeof *p->block_table);
	if (!p->block_table)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < n_blocks; i++)
		p->block_table[i] = i;
	for (int s = 0; s < n_stages && st == QW_OK; s++) {
		st = qw_stage_model_init(&p->stages[s], cfg, ck, &plan[s].stage, be, n_blocks,
					 p->block_size, max_tokens, err);
		if (st == QW_OK) {
			p->n_stages = s + 1;
			p->stages[s].graphs = true;   /* decode steps replay on a backend that can */
		}
	}
	if (st == QW_OK)
		st = be->act_alloc(be, max_tokens, cfg->text.hidden_size, &p->hidden, err);
	if (st == QW_OK)
		st = be->act_alloc(be, max_tokens, cfg->text.vocab_size, &p->logits, err);
	if (st != QW_OK)
		qw_pipeline_free(p);
	return st;
}

void qw_pipeline_free(qw_pipeline *p)
{
	for (int s = 0; s < p->n_stages; s++)
		qw_stage_model_free(&p->stages[s]);
	if (p->hidden.data)
		p->be->act_free(p->be, &p->hidden);
	if (p->logits.data)
		p->be->act_free(p->be, &p->logits);
	free(p->block_table);
	memset(p, 0, sizeof *p);
}

void qw_pipeline_set_hook(qw_pipeline *p, qw_hidden_hook hook, void *ctx)
{
	for (int s = 0; s < p->n_stages; s++) {
		p->stages[s].hook = hook;
		p->stages[s].hook_ctx = ctx;
	}
}

void qw_pipeline_reset(qw_pipeline *p)
{
	p->n_ctx = 0;
	p->rope_delta = 0;
}

qw_status qw_pipeline_append(qw_pipeline *p, const int32_t *ids, int n, const int32_t *positions,
			     const qw_visual *vis, bool all_logits, float *logits_out,
			     qw_err *err)
{
	if (n < 1 || n > p->max_tokens)
		return qw_fail(err, QW_E_ARG, "a step of %d tokens; this pipeline takes 1 to %d", n,
			       p->max_tokens);
	if (p->n_ctx + n > p->max_ctx)
		return qw_fail(err, QW_E_ARG, "the sequence would reach %d tokens; the cache holds %d",
			       p->n_ctx + n, p->max_ctx);
	int32_t *buf = malloc((size_t)n * 7 * sizeof *buf);
	if (!buf)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	int32_t *pos = buf, *seq = buf + 3 * n, *kv_index = buf + 4 * n, *slot = buf + 5 * n,
		*rows = buf + 6 * n;
	for (int i = 0; i < n; i++) {
		int idx = p->n_ctx + i;
		for (int a = 0; a < 3; a++)
			pos[3 * i + a] = positions ? positions[3 * i + a] : idx + p->rope_delta;
		seq[i] = 0;
		kv_index[i] = idx;
		slot[i] = p->block_table[idx / p->block_size] * p->block_size + idx % p->block_size;
		rows[i] = all_logits ? i : n - 1;
	}
	qw_batch b = {.n_tokens = n, .token_ids = ids, .positions = pos, .seq = seq,
		      .kv_index = kv_index, .slot = slot, .n_seqs = 1,
		      .max_blocks = p->max_ctx / p->block_size, .block_tables = p->block_table,
		      .n_logits = all_logits ? n : 1, .logit_rows = rows};
	if (vis) {
		b.n_visual = vis->n;
		b.visual_rows = vis->rows;
		b.visual_embeds = vis->embeds;
		b.deepstack = vis->deepstack;
		b.n_deepstack = vis->n_deepstack;
	}
	qw_status st = QW_OK;
	for (int s = 0; s < p->n_stages && st == QW_OK; s++)
		st = qw_stage_step(&p->stages[s], &b, &p->hidden, &p->logits, err);
	if (st == QW_OK && logits_out)
		st = p->be->act_read(p->be, &p->logits, logits_out, err);
	if (st == QW_OK)
		p->n_ctx += n;
	free(buf);
	return st;
}
