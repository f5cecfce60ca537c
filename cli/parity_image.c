/* parity_image.c - the multimodal ladder, for a case whose prompt holds an image:
 *   1 preprocess  our pixel_values from image_hwc_u8 against pixel_values_fast (at most one
 *                 8-bit level apart; the share of exact values is reported)
 *   2 vision      from the reference pixel_values: the patch embedding and every block
 *   3 connector   the merged embeddings and each deepstack feature
 *   4 positions   our 3-D M-RoPE positions against {case}.position_ids, exactly
 *   5 forward     the logits at every position
 *   6 generate    greedy continuation through the KV cache
 * Each phase starts from the reference's own inputs where it can, so a failure points at the
 * part that is wrong.  See parity.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/parity_internal.h"
#include "daemon/image/preprocess.h"
#include "kernels/positions.h"
#include "kernels/vision.h"

/* Judges features by their relative max-abs; keeps the worst and names the first failure. */
typedef struct feature_check {
	qw_step_result *step;
	double bound;
	double worst_rel;
} feature_check;

static void check_feature(feature_check *fc, const char *what, const float *ref, const float *ours,
			  int rows, int cols)
{
	qw_metrics m;
	qw_compare(ref, ours, rows, cols, &m);
	if (m.rel >= fc->worst_rel) {
		fc->worst_rel = m.rel;
		fc->step->m = m;
	}
	if (m.rel > fc->bound && fc->step->pass) {
		fc->step->pass = false;
		snprintf(fc->step->note, sizeof fc->step->note, "%s: max-abs %.3g is %.3g of max |ref| "
			 "(<= %.3g)", what, m.max_abs, m.rel, fc->bound);
	}
}

typedef struct vision_trace {
	const pl_reference *ref;
	qw_backend *be;
	feature_check fc;
	qw_status st;
	qw_err err;
	bool missing;
} vision_trace;

static void on_vision(void *ctx, int index, const qw_act *x)
{
	vision_trace *vt = ctx;
	char suffix[64], what[32];
	if (index < 0) {
		snprintf(suffix, sizeof suffix, "fp32.vision.patch_embed");
		snprintf(what, sizeof what, "patch embedding");
	} else {
		snprintf(suffix, sizeof suffix, "fp32.vision.block.%d", index);
		snprintf(what, sizeof what, "block %d", index);
	}
	const qw_tensor *t;
	float *want = pl_ref_f32(vt->ref, suffix, &t);
	float *got = malloc((size_t)x->rows * (size_t)x->cols * sizeof *got);
	if (!want || !got || t->numel != (uint64_t)x->rows * (uint64_t)x->cols) {
		vt->missing = true;
	} else if (vt->st == QW_OK && (vt->st = vt->be->act_read(vt->be, x, got, &vt->err)) == QW_OK) {
		check_feature(&vt->fc, what, want, got, x->rows, x->cols);
	}
	free(want);
	free(got);
}

static qw_status read_act(qw_backend *be, const qw_act *a, float **out, qw_err *err)
{
	*out = malloc((size_t)a->rows * (size_t)a->cols * sizeof **out + 1);
	if (!*out)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	return be->act_read(be, a, *out, err);
}

/* 1: preprocessing; grid gets the reference's grid (t, h, w). */
static qw_status preprocess_step(const pl_reference *ref, const qw_config *cfg,
				 const qw_parity_opts *o, qw_parity_result *r, int32_t *grid,
				 qw_err *err)
{
	qw_step_result *s = &r->step[QW_MM_PREPROCESS];
	const qw_tensor *img_t = qw_st_find(ref->file, "image_hwc_u8");
	const qw_tensor *grid_t = qw_st_find(ref->file, "image_grid_thw_fast");
	const qw_tensor *pv;
	float *want = pl_ref_key_f32(ref, "pixel_values_fast", &pv);
	qw_status st = QW_OK;
	if (!img_t || img_t->dtype != QW_DT_U8 || img_t->ndim != 3 || !grid_t ||
	    grid_t->dtype != QW_DT_I64 || grid_t->numel != 3 || !want) {
		free(want);
		return qw_fail(err, QW_E_ARG, "the reference lacks image_hwc_u8 (U8), "
			       "image_grid_thw_fast (I64 [1, 3]) or pixel_values_fast (F32)");
	}
	for (int i = 0; i < 3; i++) {
		int64_t v;
		memcpy(&v, (const uint8_t *)grid_t->data + 8 * i, 8);
		grid[i] = (int32_t)v;
	}
	qw_image img = {(int)img_t->shape[1], (int)img_t->shape[0], (uint8_t *)img_t->data};
	qw_preprocess_opts po = o->preprocess ? *o->preprocess : QW_PREPROCESS_DEFAULT;
	qw_pixels px;
	s->ran = true;
	if ((st = qw_preprocess(&img, &cfg->vision, &po, &px, err)) != QW_OK) {
		free(want);
		return st;
	}
	if (px.grid_t != grid[0] || px.grid_h != grid[1] || px.grid_w != grid[2] ||
	    (uint64_t)px.rows * (uint64_t)px.cols != pv->numel) {
		snprintf(s->note, sizeof s->note, "grid (%d, %d, %d), reference (%d, %d, %d)",
			 px.grid_t, px.grid_h, px.grid_w, grid[0], grid[1], grid[2]);
		s->pass = false;
	} else {
		qw_compare(want, px.values, px.rows, px.cols, &s->m);
		s->pass = s->m.max_abs <= o->th->pixel_max_abs;
		snprintf(s->note, sizeof s->note, "%.4f%% of values exact%s", 100.0 * s->m.exact,
			 s->pass ? "" : "; more than one 8-bit level apart");
	}
	qw_pixels_free(&px);
	free(want);
	return st;
}

qw_status pl_run_image(const qw_parity_opts *o, qw_backend *be, const qw_config *cfg,
		       const qw_checkpoint *ck, const pl_reference *ref, const int32_t *ids, int T,
		       qw_parity_result *r, qw_err *err)
{
	const qw_thresholds *th = o->th;
	int32_t grid[3];
	qw_pipeline p = {0};
	qw_vision_out vis = {0};
	float *pixels = NULL, *ours = NULL, *want = NULL, *got = NULL;
	int32_t *pos = NULL, *want_pos = NULL, *rows = NULL;
	pl_trace tb = {.be = be};
	int n_decode = 0, delta = 0;
	qw_status st = preprocess_step(ref, cfg, o, r, grid, err);
	if (st != QW_OK || !r->step[QW_MM_PREPROCESS].pass)
		goto out;

	/* 2. vision, from the reference's pixel values */
	const qw_tensor *pv, *lt;
	pixels = pl_ref_key_f32(ref, "pixel_values_fast", &pv);
	free(pl_ref_ids(ref, "fp32.greedy_tokens", &n_decode));
	if ((st = qw_pipeline_init(&p, cfg, ck, be, o->stages, T + n_decode + 1, T, err)))
		goto out;
	qw_step_result *s = &r->step[QW_MM_VISION];
	vision_trace vt = {.ref = ref, .be = be, .fc = {s, th->vision_rel, 0.0}};
	s->ran = s->pass = true;
	st = qw_vision_forward(be, cfg, &p.stages[0].w, grid, 1, pixels, (int)pv->shape[0],
			       on_vision, &vt, &vis, err);
	if (st == QW_OK && (st = vt.st) != QW_OK)
		*err = vt.err;
	if (st != QW_OK)
		goto out;
	if (vt.missing && s->pass) {
		s->pass = false;
		snprintf(s->note, sizeof s->note, "the reference lacks a vision intermediate of the "
			 "right shape");
	}
	if (!s->pass)
		goto out;

	/* 3. connector */
	s = &r->step[QW_MM_CONNECTOR];
	s->ran = s->pass = true;
	feature_check fc = {s, th->vision_rel, 0.0};
	const qw_tensor *wt;
	want = pl_ref_f32(ref, "fp32.vision_pooler_output", &wt);
	if ((st = read_act(be, &vis.embeds, &got, err)) != QW_OK)
		goto out;
	if (!want || wt->numel != (uint64_t)vis.tokens * (uint64_t)cfg->text.hidden_size) {
		s->pass = false;
		snprintf(s->note, sizeof s->note, "the reference has no vision_pooler_output of %d "
			 "rows", vis.tokens);
		goto out;
	}
	check_feature(&fc, "merged embeddings", want, got, vis.tokens, cfg->text.hidden_size);
	for (int j = 0; j < vis.n_deepstack; j++) {
		char suffix[64], what[32];
		snprintf(suffix, sizeof suffix, "fp32.deepstack.%d", j);
		snprintf(what, sizeof what, "deepstack %d", j);
		free(want);
		free(got);
		got = NULL;
		want = pl_ref_f32(ref, suffix, &wt);
		if ((st = read_act(be, &vis.deepstack[j], &got, err)) != QW_OK)
			goto out;
		if (want && wt->numel == (uint64_t)vis.tokens * (uint64_t)cfg->text.hidden_size)
			check_feature(&fc, what, want, got, vis.tokens, cfg->text.hidden_size);
	}
	if (!s->pass)
		goto out;

	/* 4. positions */
	s = &r->step[QW_MM_POSITIONS];
	s->ran = true;
	int n_pos = 0;
	pos = malloc((size_t)T * 3 * sizeof *pos);
	want_pos = pl_ref_ids(ref, "position_ids", &n_pos);
	if (!pos) {
		st = qw_fail(err, QW_E_NOMEM, "out of memory");
		goto out;
	}
	qw_err perr = {0};
	if (qw_mrope_positions(cfg, ids, T, grid, 1, pos, &delta, &perr) != QW_OK) {
		snprintf(s->note, sizeof s->note, "%s", perr.msg);   /* a failing step, not an error */
		goto out;
	}
	s->pass = want_pos && n_pos == 3 * T;
	for (int i = 0; s->pass && i < T; i++)
		for (int a = 0; a < 3; a++)
			if (pos[3 * i + a] != want_pos[a * T + i]) {   /* reference is (3, T) */
				snprintf(s->note, sizeof s->note, "token %d axis %d: %d, reference %d", i, a,
					 pos[3 * i + a], want_pos[a * T + i]);
				s->pass = false;
				break;
			}
	if (!want_pos)
		snprintf(s->note, sizeof s->note, "the reference has no position_ids");
	if (!s->pass)
		goto out;

	/* 5. forward */
	s = &r->step[QW_MM_FORWARD];
	free(want);
	want = pl_ref_f32(ref, "fp32.logits", &lt);
	r->vocab = cfg->text.vocab_size;
	r->hidden = cfg->text.hidden_size;
	if (!want || lt->ndim != 2 || lt->shape[0] != T || lt->shape[1] != r->vocab) {
		s->ran = true;
		snprintf(s->note, sizeof s->note, "the reference has no fp32.logits of [%d, %d]", T,
			 r->vocab);
		goto out;
	}
	rows = malloc((size_t)vis.tokens * sizeof *rows);
	ours = malloc((size_t)(T + n_decode + 1) * (size_t)r->vocab * sizeof *ours);
	if (!rows || !ours) {
		st = qw_fail(err, QW_E_NOMEM, "out of memory");
		goto out;
	}
	int n_rows = 0;
	for (int i = 0; i < T; i++)
		if (ids[i] == cfg->image_token_id && n_rows < vis.tokens)
			rows[n_rows++] = i;
	qw_visual v = {n_rows, rows, &vis.embeds, vis.deepstack, vis.n_deepstack};
	if ((st = pl_trace_begin(&tb, o, cfg, T, &p, err)))
		goto out;
	if ((st = qw_pipeline_append(&p, ids, T, pos, &v, true, ours, err)))
		goto out;
	if ((st = pl_trace_end(&tb, o, ref, cfg, ck, &p, r, err)))
		goto out;
	qw_metrics m;
	qw_compare(want, ours, T, r->vocab, &m);
	pl_judge(s, &m, th->pos_mse, th->pos_max_abs, th->pos_kl, th->pos_top5);
	if (!s->pass)
		goto out;

	/* 6. generate: continuation positions are index + rope_delta */
	p.rope_delta = delta;
	st = pl_decode(ref, &p, ours, th, r, QW_MM_GENERATE, err);
out:
	if (p.be) {
		qw_vision_out_free(be, &vis);
		qw_pipeline_free(&p);
	}
	free(tb.states);
	free(pixels);
	free(ours);
	free(want);
	free(got);
	free(pos);
	free(want_pos);
	free(rows);
	return st;
}
