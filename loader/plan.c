/* plan.c - parameter counts and the byte-balanced stage planner.  See plan.h. */
#include "loader/plan.h"

#include <stdlib.h>
#include <string.h>

void qw_count_params(const qw_wspec *specs, size_t n, int experts_per_tok, qw_params *out)
{
	memset(out, 0, sizeof *out);
	for (size_t i = 0; i < n; i++) {
		const qw_wspec *s = &specs[i];
		if (s->is_scale)
			continue;   /* quantization scales are not parameters */
		out->total += s->numel;
		if (s->part == QW_PART_VISION)
			out->vision += s->numel;
		else if (s->experts)
			out->active += s->numel * (uint64_t)experts_per_tok / (uint64_t)s->experts;
		else
			out->active += s->numel;
	}
}

void qw_plan_synthetic_bytes(const qw_config *cfg, qw_wspec *specs, size_t n)
{
	bool fp8 = cfg->quant.kind == QW_QUANT_FP8;
	for (size_t i = 0; i < n; i++)
		specs[i].bytes = specs[i].is_scale ? specs[i].numel * 4
			       : fp8 && specs[i].quantizable ? specs[i].numel : specs[i].numel * 2;
}

uint64_t qw_kv_bytes_per_token_layer(const qw_config *cfg, qw_dtype kv_dtype)
{
	return 2ull * (uint64_t)cfg->text.num_kv_heads * (uint64_t)cfg->text.head_dim *
	       qw_dtype_size(kv_dtype);
}

qw_status qw_plan_stages(const qw_config *cfg, const qw_wspec *specs, size_t n, int count,
			 qw_dtype kv_dtype, qw_stage_plan *out, qw_err *err)
{
	int L = cfg->text.num_layers;
	if (count < 1 || count > L || count > QW_MAX_STAGES)
		return qw_fail(err, QW_E_ARG, "cannot split %d decoder layers into %d stages "
			       "(1 to %d)", L, count, L < QW_MAX_STAGES ? L : QW_MAX_STAGES);
	uint64_t first = 0, last = 0, tied = 0;   /* tied: the embedding the last stage uses as
						     its lm_head, held again there */
	uint64_t *prefix = calloc((size_t)L + 1, sizeof *prefix);   /* prefix[l]: layers < l */
	uint64_t *best = malloc(sizeof *best * (size_t)(L + 1) * (size_t)count);
	double *spread = malloc(sizeof *spread * (size_t)(L + 1) * (size_t)count);
	int *cut = malloc(sizeof *cut * (size_t)(L + 1) * (size_t)count);
	if (!prefix || !best || !spread || !cut) {
		free(prefix);
		free(best);
		free(spread);
		free(cut);
		return qw_fail(err, QW_E_NOMEM, "out of memory planning stages");
	}
	for (size_t i = 0; i < n; i++) {
		const qw_wspec *s = &specs[i];
		if (s->part == QW_PART_LAYER)
			prefix[s->layer + 1] += s->bytes;
		else if (s->part == QW_PART_HEAD)
			last += s->bytes;
		else
			first += s->bytes;
		if (s->part == QW_PART_EMBED && cfg->tie_word_embeddings)
			tied += s->bytes;
	}
	for (int l = 0; l < L; l++)
		prefix[l + 1] += prefix[l];
	if (count > 1)   /* one stage holds the table once, for both ends */
		last += tied;

	/* best[s*(L+1)+b]: the least possible largest stage when stages 0..s hold layers
	 * [0, b), ties broken by the smaller sum of squared stage sizes (spread[..], in
	 * GB^2 so it cannot overflow) so that no stage is starved; cut[..]: where stage s then
	 * begins.  O(count * L^2), a few thousand steps. */
#define AT(s, b) ((size_t)(s) * (size_t)(L + 1) + (size_t)(b))
	for (int s = 0; s < count; s++)
		for (int b = s + 1; b <= L; b++) {
			best[AT(s, b)] = UINT64_MAX;
			for (int a = s; a < b; a++) {
				if (s == 0 && a != 0)
					break;
				uint64_t stage = prefix[b] - prefix[a] + (s == 0 ? first : 0) +
						 (s == count - 1 ? last : 0);
				uint64_t before = s == 0 ? 0 : best[AT(s - 1, a)];
				uint64_t worst = stage > before ? stage : before;
				double gb = (double)stage / 1e9;
				double sq = (s == 0 ? 0.0 : spread[AT(s - 1, a)]) + gb * gb;
				if (worst < best[AT(s, b)] ||
				    (worst == best[AT(s, b)] && sq < spread[AT(s, b)])) {
					best[AT(s, b)] = worst;
					spread[AT(s, b)] = sq;
					cut[AT(s, b)] = a;
				}
			}
		}
	uint64_t per_layer_kv = qw_kv_bytes_per_token_layer(cfg, kv_dtype);
	for (int s = count - 1, b = L; s >= 0; s--) {
		int a = cut[AT(s, b)];
		qw_stage_plan *p = &out[s];
		p->stage = (qw_stage){.index = s, .count = count, .layer_begin = a, .layer_end = b};
		p->weight_bytes = prefix[b] - prefix[a] + (s == 0 ? first : 0) +
				  (s == count - 1 ? last : 0);
		p->kv_bytes_per_token = (uint64_t)(b - a) * per_layer_kv;
		b = a;
	}
#undef AT
	free(prefix);
	free(best);
	free(spread);
	free(cut);
	return QW_OK;
}

void qw_plan_fit(const qw_stage_plan *p, uint64_t device_bytes, uint64_t reserve,
		 double kv_memory, qw_stage_fit *out)
{
	memset(out, 0, sizeof *out);
	out->fits = p->weight_bytes <= device_bytes && reserve <= device_bytes - p->weight_bytes;
	if (!out->fits)
		return;
	out->free_bytes = device_bytes - p->weight_bytes - reserve;
	out->kv_bytes = (uint64_t)((double)out->free_bytes * kv_memory);
	out->kv_tokens = p->kv_bytes_per_token ? out->kv_bytes / p->kv_bytes_per_token : 0;
}

qw_status qw_plan_checkpoint(const qw_config *cfg, const qw_checkpoint *ck, int count,
			     qw_dtype kv_dtype, qw_stage_plan *out, qw_err *err)
{
	qw_wspec *specs;
	size_t n;
	qw_status st = qw_wmap_build(cfg, qw_detect_expert_layout(cfg, ck), NULL, &specs, &n, err);
	if (st != QW_OK)
		return st;
	for (size_t i = 0; i < n; i++) {
		const qw_tensor *t = qw_ckpt_find(ck, specs[i].name);
		if (t)
			specs[i].bytes = t->nbytes;
	}
	st = qw_plan_stages(cfg, specs, n, count, kv_dtype, out, err);
	free(specs);
	return st;
}
