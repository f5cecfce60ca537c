/* forward.c - the decoder layers over the op interface.  See forward.h. */
#include "kernels/forward.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/dtype.h"
#include "loader/export.h"

static uint64_t tensor_bytes(const qw_tensor *t)
{
	return t->nbytes + (t->scale ? t->scale->nbytes : 0);
}

static qw_status upload_weights(qw_stage_model *m, qw_load_progress progress, void *ctx,
				qw_err *err)
{
	const qw_config *cfg = m->cfg;
	qw_wspec *specs;
	size_t n;
	const qw_tensor *host_lm_head = m->w.lm_head;
	QW_TRY(qw_wmap_build(cfg, m->w.expert_layout, &m->w, &specs, &n, err));
	/* bytes as the stage planner counts them: each tensor with its block scales */
	uint64_t total = 0, done = 0;
	for (size_t i = 0; i < n; i++)
		if (qw_stage_owns(&m->stage, cfg, &specs[i]) && specs[i].slot && *specs[i].slot)
			total += tensor_bytes(*specs[i].slot);
	qw_status st = QW_OK;
	for (size_t i = 0; i < n && st == QW_OK; i++)
		if (qw_stage_owns(&m->stage, cfg, &specs[i]) && specs[i].slot && *specs[i].slot) {
			done += tensor_bytes(*specs[i].slot);
			st = m->be->upload(m->be, *specs[i].slot, specs[i].slot, err);
			if (st == QW_OK && progress)
				progress(ctx, done, total);
		}
	free(specs);
	bool first = m->stage.index == 0, last = m->stage.index == m->stage.count - 1;
	if (st == QW_OK && cfg->tie_word_embeddings && last)
		st = first ? (m->w.lm_head = m->w.embed, QW_OK)
			   : m->be->upload(m->be, host_lm_head, &m->w.lm_head, err);
	return st;
}

/* Layer L's MoE weights as the moe op takes them. */
static qw_moe_weights moe_weights(const qw_stage_model *m, int L)
{
	const qw_layer_weights *lw = &m->w.layers[L];
	const qw_text_config *t = &m->cfg->text;
	return (qw_moe_weights){
		.router = lw->router, .gate_up = lw->experts_gate_up, .down = lw->experts_down,
		.gate = lw->expert_gate, .up = lw->expert_up, .expert_down = lw->expert_down,
		.n_experts = t->num_experts, .top_k = t->num_experts_per_tok,
		.inter = t->moe_intermediate_size,
		/* Qwen3-VL-MoE always renormalises; Qwen3-MoE as norm_topk_prob says */
		.renormalize = m->cfg->arch == QW_ARCH_QWEN3_VL_MOE || t->norm_topk_prob,
		.separate = m->plain_ops,
	};
}

/* Where the backend has prepare_experts: each MoE layer's experts as its moe op reads them,
 * once they are on the backend (per-expert tensors move into the fused layout there, so the
 * layer then has fused weights and its step allocates nothing for them). */
static qw_status prepare_experts(qw_stage_model *m, qw_err *err)
{
	qw_backend *be = m->be;
	if (!be->prepare_experts)
		return QW_OK;
	for (int L = m->stage.layer_begin; L < m->stage.layer_end; L++) {
		if (!qw_layer_is_moe(m->cfg, L))
			continue;
		qw_layer_weights *lw = &m->w.layers[L];
		qw_moe_weights mw = moe_weights(m, L);
		if (be->prepare_experts(be, &mw, &lw->experts_gate_up, &lw->experts_down, err) != QW_OK)
			return qw_err_context(err, "layer %d: its experts", L);
	}
	return QW_OK;
}

/* A layer whose q/k/v projections can run as one GEMM into qk_norm_rope_kv: no biases (the
 * op adds none) and both head norms. */
static bool qkv_fusable(const qw_layer_weights *lw)
{
	return lw->q_proj && lw->k_proj && lw->v_proj && lw->q_norm && lw->k_norm && !lw->q_bias &&
	       !lw->k_bias && !lw->v_bias;
}

/* Where the backend has fuse_rows and qk_norm_rope_kv: each fusable layer's q/k/v weights
 * as one (m->qkv_proj), once they are on the backend.  Parts the backend cannot fuse
 * (QW_E_ARG, nothing moved: e.g. FP8 ones whose rows end in a partial block) stay separate
 * and the layer runs its three GEMMs. */
static qw_status fuse_qkv(qw_stage_model *m, qw_err *err)
{
	qw_backend *be = m->be;
	if (!be->fuse_rows || !be->qk_norm_rope_kv)
		return QW_OK;
	int begin = m->stage.layer_begin, n = m->stage.layer_end - begin;
	m->qkv_proj = calloc(n > 0 ? (size_t)n : 1, sizeof *m->qkv_proj);
	if (!m->qkv_proj)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	for (int L = begin; L < begin + n; L++) {
		const qw_layer_weights *lw = &m->w.layers[L];
		if (!qkv_fusable(lw))
			continue;
		const qw_tensor *parts[3] = {lw->q_proj, lw->k_proj, lw->v_proj};
		qw_status st = be->fuse_rows(be, parts, 3, &m->qkv_proj[L - begin], err);
		if (st == QW_E_ARG) {
			m->qkv_proj[L - begin] = NULL;
			qw_err_clear(err);
		} else if (st != QW_OK) {
			return qw_err_context(err, "layer %d: q/k/v as one weight", L);
		}
	}
	return QW_OK;
}

static bool any_fused_qkv(const qw_stage_model *m)
{
	for (int i = 0; m->qkv_proj && i < m->stage.layer_end - m->stage.layer_begin; i++)
		if (m->qkv_proj[i])
			return true;
	return false;
}

static qw_status alloc_scratch(qw_stage_model *m, qw_err *err)
{
	const qw_text_config *t = &m->cfg->text;
	int T = m->max_tokens, H = t->hidden_size, QD = t->num_heads * t->head_dim;
	int KD = t->num_kv_heads * t->head_dim;
	int I = t->intermediate_size > 0 ? t->intermediate_size : 1;
	struct { qw_act *a; int cols; } plan[] = {
		{&m->h, H}, {&m->q, QD}, {&m->k, KD}, {&m->v, KD}, {&m->attn, QD}, {&m->o, H},
		{&m->gate, I}, {&m->up, I}, {&m->mlp, H}, {&m->picked, H}};
	for (size_t i = 0; i < sizeof plan / sizeof *plan; i++)
		QW_TRY(m->be->act_alloc(m->be, T, plan[i].cols, plan[i].a, err));
	if (any_fused_qkv(m))
		QW_TRY(m->be->act_alloc(m->be, T, QD + 2 * KD, &m->qkv, err));
	return QW_OK;
}

qw_status qw_stage_model_load(qw_stage_model *m, const qw_config *cfg, const qw_checkpoint *ck,
			      const qw_stage *stage, qw_backend *be, int max_tokens,
			      qw_load_progress progress, void *progress_ctx, qw_err *err)
{
	memset(m, 0, sizeof *m);
	m->cfg = cfg;
	m->be = be;
	m->stage = *stage;
	m->max_tokens = max_tokens;
	qw_wreport rep;
	qw_status st = qw_weights_load(cfg, ck, stage, &m->w, &rep, err);
	qw_wreport_free(&rep);
	if (st == QW_OK)
		st = upload_weights(m, progress, progress_ctx, err);
	if (st == QW_OK)
		st = prepare_experts(m, err);
	if (st == QW_OK)
		st = fuse_qkv(m, err);
	if (st == QW_OK)
		st = alloc_scratch(m, err);
	if (st != QW_OK)
		qw_stage_model_free(m);
	return st;
}

/* Describes synthetic tensor i of spec: bf16, or under an fp8 config a quantizable weight
 * as F8_E4M3 whose block scales synth_scales[i] describes (no data yet). */
static qw_status describe_synthetic(qw_stage_model *m, int i, const qw_wspec *spec)
{
	qw_tensor *t = &m->synth[i];
	const qw_quant *q = &m->cfg->quant;
	bool fp8 = q->kind == QW_QUANT_FP8 && spec->quantizable;
	t->name = strdup(spec->name);
	t->dtype = fp8 ? QW_DT_F8_E4M3 : QW_DT_BF16;
	t->ndim = spec->ndim;
	memcpy(t->shape, spec->shape, sizeof spec->shape);
	t->numel = spec->numel;
	t->nbytes = spec->numel * (fp8 ? 1 : 2);
	if (!t->name)
		return QW_E_NOMEM;
	if (!fp8)
		return QW_OK;
	qw_tensor *sc = &m->synth_scales[i];
	size_t len = strlen(spec->name) + 16;
	if (!(sc->name = malloc(len)))
		return QW_E_NOMEM;
	snprintf(sc->name, len, "%s_scale_inv", spec->name);
	sc->dtype = QW_DT_F32;
	sc->ndim = spec->ndim;
	memcpy(sc->shape, spec->shape, sizeof spec->shape);
	sc->shape[sc->ndim - 2] = (sc->shape[sc->ndim - 2] + q->block[0] - 1) / q->block[0];
	sc->shape[sc->ndim - 1] = (sc->shape[sc->ndim - 1] + q->block[1] - 1) / q->block[1];
	sc->numel = 1;
	for (int d = 0; d < sc->ndim; d++)
		sc->numel *= (uint64_t)sc->shape[d];
	sc->nbytes = sc->numel * 4;
	t->scale = sc;
	t->block[0] = q->block[0];
	t->block[1] = q->block[1];
	return QW_OK;
}

/* Synthetic tensor i's values made on the host: bf16 bits, or e4m3 codes followed (4-byte
 * aligned) by the F32 block scales. */
static qw_status make_on_host(qw_stage_model *m, int i, const qw_wspec *spec, uint64_t seed,
			      qw_err *err)
{
	qw_tensor *t = &m->synth[i];
	qw_tensor *sc = t->scale ? &m->synth_scales[i] : NULL;
	uint64_t at = (t->nbytes + 3) & ~3ull;
	float *v = malloc(spec->numel * sizeof *v + 4);
	uint8_t *buf = m->synth_host[i] = malloc(at + (sc ? sc->nbytes : 0) + 4);
	if (!v || !buf) {
		free(v);
		return qw_fail(err, QW_E_NOMEM, "out of memory synthesizing %s", spec->name);
	}
	qw_export_random_values(spec, seed, v);
	if (sc) {
		qw_export_quantize_fp8(spec, &m->cfg->quant, v, buf, (float *)(buf + at));
		sc->data = buf + at;
	} else {
		for (uint64_t k = 0; k < spec->numel; k++) {
			uint16_t b = qw_f32_to_bf16(v[k]);
			memcpy(buf + 2 * k, &b, 2);
		}
	}
	free(v);
	t->data = buf;
	return QW_OK;
}

/* Synthetic tensor i (described): on the backend when it can generate, else made here and
 * uploaded. */
static qw_status synthesize(qw_stage_model *m, int i, const qw_wspec *spec, uint64_t seed,
			    const qw_tensor **out, qw_err *err)
{
	const qw_tensor *t = &m->synth[i];
	double mean, std;
	qw_export_value_dist(spec, &mean, &std);
	if (m->be->synthesize)
		return m->be->synthesize(m->be, t, qw_export_stream_start(seed, spec->name), mean, std,
					 out, err);
	QW_TRY(make_on_host(m, i, spec, seed, err));
	return m->be->upload(m->be, t, out, err);
}

/* Whether the stage makes spec s: what it owns and binds, and a tied lm_head's table again
 * on a last stage that is not the first. */
static bool makes(const qw_stage_model *m, const qw_wspec *s, bool *tied_copy)
{
	const qw_stage *st = &m->stage;
	*tied_copy = m->cfg->tie_word_embeddings && st->index == st->count - 1 && st->index > 0 &&
		     s->part == QW_PART_EMBED;
	return (qw_stage_owns(st, m->cfg, s) && s->slot) || *tied_copy;
}

qw_status qw_stage_model_load_synthetic(qw_stage_model *m, const qw_config *cfg,
					const qw_stage *stage, qw_backend *be, uint64_t seed,
					int max_tokens, qw_load_progress progress,
					void *progress_ctx, qw_err *err)
{
	memset(m, 0, sizeof *m);
	m->cfg = cfg;
	m->be = be;
	m->stage = *stage;
	m->max_tokens = max_tokens;
	m->w.expert_layout = cfg->arch == QW_ARCH_QWEN3_MOE ? QW_EXPERTS_PER_EXPERT : QW_EXPERTS_FUSED;
	qw_wspec *specs;
	size_t n;
	qw_status st = qw_wmap_build(cfg, m->w.expert_layout, &m->w, &specs, &n, err);
	if (st != QW_OK)
		return st;
	m->synth = calloc(n + 1, sizeof *m->synth);
	m->synth_scales = calloc(n + 1, sizeof *m->synth_scales);
	m->synth_host = calloc(n + 1, sizeof *m->synth_host);
	if (!m->synth || !m->synth_scales || !m->synth_host)
		st = qw_fail(err, QW_E_NOMEM, "out of memory");
	/* every tensor described first: the stage's bytes are those of the tensors it makes
	 * (FP8 weights one byte a value, with their scales) */
	uint64_t total = 0, done = 0;
	bool tied_copy;
	for (size_t i = 0; i < n && st == QW_OK; i++)
		if (makes(m, &specs[i], &tied_copy)) {
			if (describe_synthetic(m, m->n_synth, &specs[i]) != QW_OK)
				st = qw_fail(err, QW_E_NOMEM, "out of memory");
			total += tensor_bytes(&m->synth[m->n_synth++]);
		}
	for (size_t i = 0, k = 0; i < n && st == QW_OK; i++) {
		const qw_wspec *sp = &specs[i];
		if (!makes(m, sp, &tied_copy))
			continue;
		/* a tied lm_head is the embedding table, on the last stage too */
		const qw_tensor **slot = tied_copy ? &m->w.lm_head : sp->slot;
		st = synthesize(m, (int)k, sp, seed, slot, err);
		if (st == QW_OK && cfg->tie_word_embeddings && !tied_copy &&
		    stage->index == stage->count - 1 && sp->part == QW_PART_EMBED)
			m->w.lm_head = *slot;
		done += tensor_bytes(&m->synth[k++]);
		if (st == QW_OK && progress)
			progress(progress_ctx, done, total);
	}
	free(specs);
	if (st == QW_OK)
		st = prepare_experts(m, err);
	if (st == QW_OK)
		st = fuse_qkv(m, err);
	if (st == QW_OK)
		st = alloc_scratch(m, err);
	if (st != QW_OK)
		qw_stage_model_free(m);
	return st;
}

uint64_t qw_stage_model_scratch_bytes(const qw_stage_model *m)
{
	const qw_act *acts[] = {&m->h, &m->q, &m->k, &m->v, &m->attn, &m->o, &m->gate, &m->up,
				&m->mlp, &m->picked, &m->qkv};
	uint64_t bytes = 0, elem = m->be ? qw_dtype_size(m->be->act_dtype) : 0;
	for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
		if (acts[i]->data)
			bytes += (uint64_t)acts[i]->cap_rows * (uint64_t)acts[i]->cols * elem;
	return bytes;
}

qw_status qw_stage_model_alloc_kv(qw_stage_model *m, int n_blocks, int block_size, qw_err *err)
{
	if (m->kv)
		return qw_fail(err, QW_E_ARG, "stage %d already has a KV cache", m->stage.index);
	m->kv_shape = (qw_kv_shape){.n_layers = m->stage.layer_end - m->stage.layer_begin,
				    .n_blocks = n_blocks, .block_size = block_size,
				    .n_kv_heads = m->cfg->text.num_kv_heads,
				    .head_dim = m->cfg->text.head_dim};
	return m->be->kv_alloc(m->be, &m->kv_shape, &m->kv, err);
}

qw_status qw_stage_model_init(qw_stage_model *m, const qw_config *cfg, const qw_checkpoint *ck,
			      const qw_stage *stage, qw_backend *be, int n_blocks, int block_size,
			      int max_tokens, qw_err *err)
{
	qw_status st = qw_stage_model_load(m, cfg, ck, stage, be, max_tokens, NULL, NULL, err);
	if (st == QW_OK && (st = qw_stage_model_alloc_kv(m, n_blocks, block_size, err)) != QW_OK)
		qw_stage_model_free(m);
	return st;
}

void qw_stage_model_free(qw_stage_model *m)
{
	if (!m->be)
		return;
	qw_act *acts[] = {&m->h, &m->q, &m->k, &m->v, &m->attn, &m->o, &m->gate, &m->up, &m->mlp,
			  &m->picked, &m->qkv};
	for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
		if (acts[i]->data)
			m->be->act_free(m->be, acts[i]);
	free(m->qkv_proj);   /* the fused weights go with the backend */
	if (m->kv)
		m->be->kv_free(m->be, m->kv);
	qw_weights_free(&m->w);
	for (int i = 0; i < m->n_synth; i++) {
		free(m->synth[i].name);
		free(m->synth_scales[i].name);
		free(m->synth_host[i]);
	}
	free(m->synth);
	free(m->synth_scales);
	free(m->synth_host);
	memset(m, 0, sizeof *m);
}

/* Sets the row count of every scratch activation to T. */
static void set_rows(qw_stage_model *m, int T)
{
	qw_act *acts[] = {&m->h, &m->q, &m->k, &m->v, &m->attn, &m->o, &m->gate, &m->up, &m->mlp,
			  &m->qkv};
	for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
		acts[i]->rows = T;
}

static qw_status mlp(qw_stage_model *m, int L, qw_err *err)
{
	qw_backend *be = m->be;
	const qw_layer_weights *lw = &m->w.layers[L];
	if (!qw_layer_is_moe(m->cfg, L)) {
		QW_TRY(be->matmul(be, &m->gate, &m->h, lw->gate_proj, NULL, err));
		QW_TRY(be->matmul(be, &m->up, &m->h, lw->up_proj, NULL, err));
		QW_TRY(be->silu_mul(be, &m->gate, &m->gate, &m->up, err));
		return be->matmul(be, &m->mlp, &m->gate, lw->down_proj, NULL, err);
	}
	qw_moe_weights mw = moe_weights(m, L);
	return be->moe(be, &m->mlp, &m->h, &mw, err);
}

/* Whether a step runs add_rmsnorm (and, where a layer has its weight, the fused q/k/v). */
static bool fused_ops(const qw_stage_model *m)
{
	return !m->plain_ops && m->be->add_rmsnorm;
}

/* The attention half of layer L, from its normed input m->h to m->o: the q/k/v projections,
 * their norms and rotations, the KV write (one GEMM and qk_norm_rope_kv when the layer has a
 * fused weight), attention, the output projection. */
static qw_status attention_block(qw_stage_model *m, int L, const qw_batch *b, qw_err *err)
{
	qw_backend *be = m->be;
	const qw_layer_weights *lw = &m->w.layers[L];
	const qw_text_config *t = &m->cfg->text;
	float eps = (float)t->rms_norm_eps, theta = (float)t->rope_theta;
	int cache_layer = L - m->stage.layer_begin;
	const qw_tensor *qkv = !m->plain_ops && m->qkv_proj ? m->qkv_proj[cache_layer] : NULL;

	if (qkv) {
		QW_TRY(be->matmul(be, &m->qkv, &m->h, qkv, NULL, err));
		QW_TRY(be->qk_norm_rope_kv(be, &m->q, &m->qkv, lw->q_norm, lw->k_norm, b->positions,
					   t->num_heads, t->num_kv_heads, t->head_dim,
					   t->mrope_section, theta, eps, m->kv, cache_layer, b, err));
	} else {
		QW_TRY(be->matmul(be, &m->q, &m->h, lw->q_proj, lw->q_bias, err));
		QW_TRY(be->matmul(be, &m->k, &m->h, lw->k_proj, lw->k_bias, err));
		QW_TRY(be->matmul(be, &m->v, &m->h, lw->v_proj, lw->v_bias, err));
		QW_TRY(be->head_rmsnorm(be, &m->q, lw->q_norm, t->num_heads, eps, err));
		QW_TRY(be->head_rmsnorm(be, &m->k, lw->k_norm, t->num_kv_heads, eps, err));
		QW_TRY(be->rope(be, &m->q, b->positions, t->num_heads, t->head_dim, t->mrope_section,
			        theta, err));
		QW_TRY(be->rope(be, &m->k, b->positions, t->num_kv_heads, t->head_dim,
			        t->mrope_section, theta, err));
		QW_TRY(be->kv_write(be, m->kv, cache_layer, &m->k, &m->v, b, err));
	}
	QW_TRY(be->attention(be, &m->attn, &m->q, m->kv, cache_layer, b, t->num_heads, err));
	return be->matmul(be, &m->o, &m->attn, lw->o_proj, lw->o_bias, err);
}

/* Decoder layer L on x.  normed: m->h already holds its input norm (the previous layer's
 * last add_rmsnorm made it).  norm_next: end with the residual add fused with layer L + 1's
 * input norm, leaving that in m->h. */
static qw_status layer(qw_stage_model *m, int L, qw_act *x, const qw_batch *b, bool normed,
		       bool norm_next, qw_err *err)
{
	qw_backend *be = m->be;
	const qw_layer_weights *lw = &m->w.layers[L];
	float eps = (float)m->cfg->text.rms_norm_eps;

	if (!normed)
		QW_TRY(be->rmsnorm(be, &m->h, x, lw->input_norm, eps, err));
	QW_TRY(attention_block(m, L, b, err));
	if (fused_ops(m)) {
		QW_TRY(be->add_rmsnorm(be, &m->h, x, &m->o, lw->post_norm, eps, err));
	} else {
		QW_TRY(be->add(be, x, x, &m->o, err));
		QW_TRY(be->rmsnorm(be, &m->h, x, lw->post_norm, eps, err));
	}
	QW_TRY(mlp(m, L, err));
	if (norm_next)
		return be->add_rmsnorm(be, &m->h, x, &m->mlp, m->w.layers[L + 1].input_norm, eps,
				       err);
	return be->add(be, x, x, &m->mlp, err);
}

static qw_status check_step(const qw_stage_model *m, const qw_batch *b, const qw_act *hidden,
			    qw_err *err)
{
	int T = b->n_tokens;
	if (T < 1 || T > m->max_tokens || hidden->cap_rows < T ||
	    hidden->cols != m->cfg->text.hidden_size)
		return qw_fail(err, QW_E_ARG, "stage %d: a step of %d tokens (this stage takes 1 to "
			       "%d, hidden holds %d rows of %d)", m->stage.index, T, m->max_tokens,
			       hidden->cap_rows, hidden->cols);
	if (!m->kv)
		return qw_fail(err, QW_E_ARG, "stage %d has no KV cache yet", m->stage.index);
	return QW_OK;
}

/* The stage's layers (after begin_step). */
static qw_status forward_ops(qw_stage_model *m, const qw_batch *b, qw_act *hidden, qw_err *err)
{
	int T = b->n_tokens;
	set_rows(m, T);
	hidden->rows = T;
	if (m->stage.index == 0) {
		QW_TRY(m->be->embed(m->be, hidden, m->w.embed, b->token_ids, err));
		if (b->n_visual)   /* image features take the place of the pad tokens */
			QW_TRY(m->be->scatter_rows(m->be, hidden, b->visual_rows, b->visual_embeds, false,
						   err));
		if (m->hook)
			m->hook(m->hook_ctx, 0, hidden);
	}
	bool normed = false;   /* m->h holds layer L's input norm already */
	for (int L = m->stage.layer_begin; L < m->stage.layer_end; L++) {
		bool deepstack = b->n_visual && L < b->n_deepstack;
		/* the next layer's norm follows this layer's last add unless a feature comes between */
		bool norm_next = fused_ops(m) && L + 1 < m->stage.layer_end && !deepstack;
		qw_status st = layer(m, L, hidden, b, normed, norm_next, err);
		if (st != QW_OK)
			return qw_err_context(err, "layer %d", L);
		if (m->hook)   /* HF records a layer's output before the deepstack feature is added */
			m->hook(m->hook_ctx, L + 1, hidden);
		if (deepstack)
			QW_TRY(m->be->scatter_rows(m->be, hidden, b->visual_rows, &b->deepstack[L], true,
						   err));
		normed = norm_next;
	}
	return QW_OK;
}

/* The logits of rows b->logit_rows of hidden (final norm, then lm_head); last stage only. */
static qw_status stage_logits(qw_stage_model *m, const qw_batch *b, const qw_act *hidden,
			      qw_act *logits, qw_err *err)
{
	if (m->stage.index != m->stage.count - 1)
		return qw_fail(err, QW_E_ARG, "stage %d of %d has no lm_head", m->stage.index,
			       m->stage.count);
	if (b->n_logits < 1 || b->n_logits > logits->cap_rows || b->n_logits > m->max_tokens)
		return qw_fail(err, QW_E_ARG, "%d logits rows requested, room for %d", b->n_logits,
			       logits->cap_rows);
	qw_backend *be = m->be;
	QW_TRY(be->gather_rows(be, &m->picked, hidden, b->logit_rows, b->n_logits, err));
	QW_TRY(be->rmsnorm(be, &m->picked, &m->picked, m->w.final_norm,
			   (float)m->cfg->text.rms_norm_eps, err));
	return be->matmul(be, logits, &m->picked, m->w.lm_head, NULL, err);
}

static bool last_stage(const qw_stage_model *m)
{
	return m->stage.index == m->stage.count - 1;
}

/* forward_ops, then the logits when the step wants them. */
static qw_status step_ops(qw_stage_model *m, const qw_batch *b, qw_act *hidden, qw_act *logits,
			  qw_err *err)
{
	QW_TRY(forward_ops(m, b, hidden, err));
	if (!last_stage(m) || b->n_logits < 1)
		return QW_OK;
	logits->rows = b->n_logits;
	return stage_logits(m, b, hidden, logits, err);
}

/* A decode step: one row per sequence, sequence t on row t, and nothing that changes from
 * one step of its shape to the next but the batch arrays. */
static bool replayable(const qw_stage_model *m, const qw_batch *b)
{
	if (!m->graphs || !m->be->graph_begin || m->hook || b->n_visual || b->n_tokens != b->n_seqs)
		return false;
	for (int t = 0; t < b->n_tokens; t++)
		if (b->seq[t] != t)
			return false;
	return true;
}

qw_status qw_stage_step(qw_stage_model *m, const qw_batch *b, qw_act *hidden, qw_act *logits,
			qw_err *err)
{
	QW_TRY(check_step(m, b, hidden, err));
	bool wants_logits = last_stage(m) && b->n_logits > 0;
	if (wants_logits && (!logits || b->n_logits > logits->cap_rows))
		return qw_fail(err, QW_E_ARG, "%d logits rows requested, room for %d", b->n_logits,
			       logits ? logits->cap_rows : 0);
	if (m->be->begin_step)
		QW_TRY(m->be->begin_step(m->be, b, err));
	if (!replayable(m, b))
		return step_ops(m, b, hidden, logits, err);
	/* what this stage's launches depend on besides the batch arrays (the backend adds the
	 * shapes its own launches take from the batch); zeroed first, padding included, since
	 * keys are compared byte for byte */
	struct {
		const void *model, *hidden, *logits;
		int32_t n_tokens, n_logits, plain_ops;
	} key;
	memset(&key, 0, sizeof key);
	key.model = m;
	key.hidden = hidden->data;
	key.logits = wants_logits ? logits->data : NULL;
	key.n_tokens = b->n_tokens;
	key.n_logits = wants_logits ? b->n_logits : 0;
	key.plain_ops = m->plain_ops;
	bool replayed = false, recording = false;
	QW_TRY(m->be->graph_begin(m->be, &key, sizeof key, &replayed, &recording, err));
	if (replayed) {
		set_rows(m, b->n_tokens);
		hidden->rows = b->n_tokens;
		if (wants_logits)
			logits->rows = b->n_logits;
		return QW_OK;
	}
	qw_status st = step_ops(m, b, hidden, logits, err);
	if (!recording)
		return st;
	bool launched = false;
	QW_TRY(m->be->graph_end(m->be, st == QW_OK, &launched, err));
	/* a step that could not be recorded runs as it is */
	return launched ? QW_OK : step_ops(m, b, hidden, logits, err);
}

// ---------------------------------------------------------------------------------------
// warm-up

/* The arrays of a warm-up step. */
typedef struct warm_batch {
	int32_t *ids, *positions, *seq, *kv_index, *slot, *tables, *logit_rows;
	qw_sampling *sampling;
	qw_sample_history *history;     /* (T,) empty but on the penalised rows */
	qw_sample_logprobs *logprobs;   /* (T,) */
	qw_token_count seen;            /* a penalised row's history: one token */
	int32_t *tokens;
} warm_batch;

static void warm_free(warm_batch *w)
{
	int32_t *arrays[] = {w->ids, w->positions, w->seq, w->kv_index, w->slot, w->tables,
			     w->logit_rows, w->tokens};
	for (size_t i = 0; i < sizeof arrays / sizeof *arrays; i++)
		free(arrays[i]);
	free(w->sampling);
	free(w->history);
	free(w->logprobs);
}

/* The step, then on the last stage a token for each logit row, the rows taking each way of
 * sampling in turn: greedy; drawn with temperature, top-k and top-p; penalised over a
 * history, with min-p; greedy with log-probabilities. */
static qw_status warm_step(qw_stage_model *m, const qw_batch *b, warm_batch *w, qw_act *hidden,
			   qw_act *logits, qw_err *err)
{
	QW_TRY(qw_stage_step(m, b, hidden, logits, err));
	if (!last_stage(m) || b->n_logits < 1)
		return QW_OK;
	w->seen = (qw_token_count){.token = 0, .count = 1};
	for (int r = 0; r < b->n_logits; r++) {
		qw_sampling *p = &w->sampling[r];
		*p = (qw_sampling){.top_p = 1.0f, .seed = 1, .step = (uint64_t)r};
		w->history[r] = (qw_sample_history){0};
		if (r % 4 == 1) {
			p->temperature = 1.0f;
			p->top_k = 50;
			p->top_p = 0.9f;
		} else if (r % 4 == 2) {
			p->temperature = 0.8f;
			p->min_p = 0.05f;
			p->repetition_penalty = 1.1f;
			p->frequency_penalty = 0.5f;
			p->presence_penalty = 0.5f;
			w->history[r] = (qw_sample_history){&w->seen, 1};
		} else if (r % 4 == 3) {
			p->logprobs = 1;
			p->top_logprobs = 5;
		}
	}
	return m->be->sample(m->be, logits, w->sampling, w->history, w->tokens, w->logprobs, err);
}

/* A prefill of n tokens of one sequence (its blocks 0, 1, ... in order), with as many
 * logit rows as the limits allow on the last stage. */
static qw_status warm_prefill(qw_stage_model *m, const qw_step_limits *lim, warm_batch *w,
			      int n, qw_act *hidden, qw_act *logits, qw_err *err)
{
	int bs = lim->block_size, blocks = (n + bs - 1) / bs;
	int n_logits = last_stage(m) ? (lim->max_logits < n ? lim->max_logits : n) : 0;
	for (int i = 0; i < n; i++) {
		w->ids[i] = 0;
		w->positions[3 * i] = w->positions[3 * i + 1] = w->positions[3 * i + 2] = i;
		w->seq[i] = 0;
		w->kv_index[i] = w->slot[i] = i;
	}
	for (int j = 0; j < blocks; j++)
		w->tables[j] = j;
	for (int r = 0; r < n_logits; r++)
		w->logit_rows[r] = n - n_logits + r;
	qw_batch b = {.n_tokens = n, .token_ids = w->ids, .positions = w->positions, .seq = w->seq,
		      .kv_index = w->kv_index, .slot = w->slot, .n_seqs = 1, .max_blocks = blocks,
		      .block_tables = w->tables, .n_logits = n_logits, .logit_rows = w->logit_rows};
	return warm_step(m, &b, w, hidden, logits, err);
}

/* Decode steps of n sequences of one token each (sequence s in block s): seen, recorded,
 * replayed. */
static qw_status warm_decode(qw_stage_model *m, const qw_step_limits *lim, warm_batch *w,
			     int n, qw_act *hidden, qw_act *logits, qw_err *err)
{
	for (int i = 0; i < n; i++) {
		w->ids[i] = 0;
		w->seq[i] = i;
		w->kv_index[i] = 0;
		w->slot[i] = i * lim->block_size;
		w->positions[3 * i] = w->positions[3 * i + 1] = w->positions[3 * i + 2] = 0;
		w->tables[i] = i;
		w->logit_rows[i] = i;
	}
	qw_batch b = {.n_tokens = n, .token_ids = w->ids, .positions = w->positions, .seq = w->seq,
		      .kv_index = w->kv_index, .slot = w->slot, .n_seqs = n, .max_blocks = 1,
		      .block_tables = w->tables,
		      .n_logits = last_stage(m) ? (n < lim->max_logits ? n : lim->max_logits) : 0,
		      .logit_rows = w->logit_rows};
	for (int i = 0; i < 3; i++)
		QW_TRY(warm_step(m, &b, w, hidden, logits, err));
	return QW_OK;
}

/* Prefills of 1, 2, 3, 4 tokens and the powers of two up to T, and T; decodes of 1, 2, 3,
 * 4, 8, 16 sequences and S: the sizes where the kernels a step launches change (few-row
 * GEMMs, one-launch routing, the MoE tiles, cuBLAS's choices by rows) and the largest. */
static qw_status warm_steps(qw_stage_model *m, const qw_step_limits *lim, warm_batch *w,
			    qw_act *hidden, qw_act *logits, qw_err *err)
{
	int T = lim->max_tokens < lim->max_context ? lim->max_tokens : lim->max_context;
	int S = lim->max_seqs < lim->max_tokens ? lim->max_seqs : lim->max_tokens;
	for (int n = 1;; n = n < 4 ? n + 1 : 2 * n) {
		QW_TRY(warm_prefill(m, lim, w, n < T ? n : T, hidden, logits, err));
		if (n >= T)
			break;
	}
	const int sizes[] = {1, 2, 3, 4, 8, 16, S};
	int prev = 0;
	for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
		int n = sizes[k];
		if (n > S || n <= prev)
			continue;
		prev = n;
		QW_TRY(warm_decode(m, lim, w, n, hidden, logits, err));
	}
	return QW_OK;
}

qw_status qw_stage_model_warm_up(qw_stage_model *m, const qw_step_limits *lim, qw_act *hidden,
				 qw_act *logits, qw_err *err)
{
	int T = lim->max_tokens, S = lim->max_seqs < T ? lim->max_seqs : T, bs = lim->block_size;
	if (T < 1 || T > m->max_tokens || S < 1 || bs < 1 || lim->max_context < 1 || m->kv)
		return qw_fail(err, QW_E_ARG, "stage %d: warm-up for %d tokens of %d sequences (the "
			       "stage takes 1 to %d, and has no KV cache yet)", m->stage.index, T, S,
			       m->max_tokens);
	int blocks = (T + bs - 1) / bs > S ? (T + bs - 1) / bs : S;
	size_t n = (size_t)T;
	warm_batch w = {
		.ids = calloc(n, sizeof(int32_t)), .positions = calloc(3 * n, sizeof(int32_t)),
		.seq = calloc(n, sizeof(int32_t)), .kv_index = calloc(n, sizeof(int32_t)),
		.slot = calloc(n, sizeof(int32_t)), .tables = calloc((size_t)blocks, sizeof(int32_t)),
		.logit_rows = calloc(n, sizeof(int32_t)), .tokens = calloc(n, sizeof(int32_t)),
		.sampling = calloc(n, sizeof(qw_sampling)),
		.history = calloc(n, sizeof(qw_sample_history)),
		.logprobs = calloc(n, sizeof(qw_sample_logprobs))};
	qw_status st = QW_OK;
	if (!w.ids || !w.positions || !w.seq || !w.kv_index || !w.slot || !w.tables ||
	    !w.logit_rows || !w.tokens || !w.sampling || !w.history || !w.logprobs)
		st = qw_fail(err, QW_E_NOMEM, "out of memory for the warm-up steps");
	if (st == QW_OK)
		st = qw_stage_model_alloc_kv(m, blocks, bs, err);
	if (st == QW_OK)
		st = warm_steps(m, lim, &w, hidden, logits, err);
	if (m->kv)
		m->be->kv_free(m->be, m->kv);
	m->kv = NULL;
	warm_free(&w);
	return st == QW_OK ? QW_OK : qw_err_context(err, "stage %d: warm-up", m->stage.index);
}
