/* stages.c - a model's stages on the CUDA backend for the GPU tests.  See stages.h. */
#include "tests/gpu/stages.h"

#include "tests/unit/helpers.h"

void gpu_stages_load(gpu_stages *g, qw_backend *be, const qw_config *cfg, int n_stages,
		     int max_tokens, int n_blocks, int block, int logit_rows)
{
	qw_err err = {0};
	int L = cfg->text.num_layers;
	assert_true(n_stages >= 1 && n_stages <= GPU_STAGES_MAX);
	g->n_stages = n_stages;
	for (int s = 0; s < n_stages; s++) {
		qw_stage stage = {s, n_stages, s * L / n_stages, (s + 1) * L / n_stages};
		qw_status st = qw_stage_model_load_synthetic(&g->st[s], cfg, &stage, be, 7,
							     max_tokens, NULL, NULL, &err);
		if (st == QW_OK)
			st = qw_stage_model_alloc_kv(&g->st[s], n_blocks, block, &err);
		if (st != QW_OK)
			fail_msg("%s", err.msg);
	}
	if (be->act_alloc(be, max_tokens, cfg->text.hidden_size, &g->hidden, &err) ||
	    be->act_alloc(be, logit_rows, cfg->text.vocab_size, &g->logits, &err))
		fail_msg("%s", err.msg);
}

void gpu_stages_free(gpu_stages *g, qw_backend *be)
{
	for (int s = 0; s < g->n_stages; s++)
		qw_stage_model_free(&g->st[s]);
	be->act_free(be, &g->hidden);
	be->act_free(be, &g->logits);
}

void gpu_stages_step(gpu_stages *g, qw_backend *be, const qw_batch *b, float *out)
{
	qw_err err = {0};
	g->logits.rows = b->n_logits;
	for (int s = 0; s < g->n_stages; s++)
		if (qw_stage_step(&g->st[s], b, &g->hidden, &g->logits, &err))
			fail_msg("step: %s", err.msg);
	if (be->act_read(be, &g->logits, out, &err))
		fail_msg("%s", err.msg);
}
