/* vision.c - the vision tower over the op interface.  See vision.h. */
#include "kernels/vision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A view of rows [first, first + n) of a 2-D tensor (or of all of a tensor as 2-D). */
static qw_tensor rows_view(const qw_tensor *t, int64_t first, int64_t n, int64_t cols)
{
	qw_tensor v = *t;
	size_t elem = qw_dtype_size(t->dtype);
	v.data = (const uint8_t *)t->data + (size_t)first * (size_t)cols * elem;
	v.ndim = cols ? 2 : 1;
	v.shape[0] = n;
	v.shape[1] = cols;
	v.numel = (uint64_t)n * (uint64_t)(cols ? cols : 1);
	v.nbytes = v.numel * elem;
	return v;
}

/* torch.linspace(a, b, n) in fp32 */
static float linspace_at(float a, float b, int n, int i)
{
	if (n == 1)
		return a;
	float step = (b - a) / (float)(n - 1);
	return i < n / 2 ? a + step * (float)i : b - step * (float)(n - 1 - i);
}

/* Per patch row (merge-window order): (row, col) for the rotary, 4 taps into the position
 * table with their bilinear weights; and the segment starts (one per frame pair). */
typedef struct geometry {
	int32_t *pos_rc;     /* (N, 2) */
	int32_t *taps;       /* (N, 4) */
	float *weights;      /* (N, 4) */
	int32_t *seg;        /* (n_segs + 1,) */
	int n_segs;
} geometry;

static void geometry_free(geometry *g)
{
	free(g->pos_rc);
	free(g->taps);
	free(g->weights);
	free(g->seg);
}

static qw_status geometry_build(const qw_vision_config *vc, const int32_t *grids, int n_images,
				int rows, geometry *g, qw_err *err)
{
	int m = vc->spatial_merge_size, G = (int)lround(sqrt((double)vc->num_position_embeddings));
	int n_segs = 0, total = 0;
	for (int i = 0; i < n_images; i++) {
		int t = grids[3 * i], h = grids[3 * i + 1], w = grids[3 * i + 2];
		if (t < 1 || h < m || w < m || h % m || w % m)
			return qw_fail(err, QW_E_ARG, "image %d: grid (%d, %d, %d) is not whole merge "
				       "windows of %d", i, t, h, w, m);
		n_segs += t;
		total += t * h * w;
	}
	if (total != rows)
		return qw_fail(err, QW_E_ARG, "the grids cover %d patches but %d pixel rows were given",
			       total, rows);
	g->pos_rc = malloc((size_t)rows * 2 * sizeof *g->pos_rc);
	g->taps = malloc((size_t)rows * 4 * sizeof *g->taps);
	g->weights = malloc((size_t)rows * 4 * sizeof *g->weights);
	g->seg = malloc((size_t)(n_segs + 1) * sizeof *g->seg);
	if (!g->pos_rc || !g->taps || !g->weights || !g->seg)
		return qw_fail(err, QW_E_NOMEM, "out of memory for the vision geometry");
	g->n_segs = n_segs;
	int r = 0, s = 0;
	for (int i = 0; i < n_images; i++) {
		int t = grids[3 * i], h = grids[3 * i + 1], w = grids[3 * i + 2];
		for (int ti = 0; ti < t; ti++) {
			g->seg[s++] = r;
			for (int bh = 0; bh < h / m; bh++)
				for (int bw = 0; bw < w / m; bw++)
					for (int ih = 0; ih < m; ih++)
						for (int iw = 0; iw < m; iw++, r++) {
							int y = bh * m + ih, x = bw * m + iw;
							g->pos_rc[2 * r] = y;
							g->pos_rc[2 * r + 1] = x;
							float hy = linspace_at(0.0f, (float)(G - 1), h, y);
							float wx = linspace_at(0.0f, (float)(G - 1), w, x);
							int hf = (int)hy, wf = (int)wx;
							int hc = hf + 1 < G ? hf + 1 : G - 1, wc = wf + 1 < G ? wf + 1 : G - 1;
							float dh = hy - (float)hf, dw = wx - (float)wf;
							int32_t *tp = g->taps + 4 * r;
							float *wt = g->weights + 4 * r;
							tp[0] = hf * G + wf;
							tp[1] = hf * G + wc;
							tp[2] = hc * G + wf;
							tp[3] = hc * G + wc;
							wt[0] = (1.0f - dh) * (1.0f - dw);
							wt[1] = (1.0f - dh) * dw;
							wt[2] = dh * (1.0f - dw);
							wt[3] = dh * dw;
						}
		}
	}
	g->seg[s] = r;
	return QW_OK;
}

/* A merger: LayerNorm before (main) or after (deepstack) grouping each 2 x 2 window's rows
 * into one, then fc1, exact GELU, fc2.  x (N, Dv) is left as it was. */
static qw_status merge(qw_backend *be, const qw_merger_weights *mw, const qw_act *x, int group,
		       bool norm_after, qw_act *tmp_n, qw_act *tmp_g, qw_act *out, qw_err *err)
{
	qw_status st;
	int Dv = x->cols;
	float eps = 1e-6f;
	qw_act grouped = {tmp_n->data, x->rows / group, Dv * group, x->rows / group};
	if (norm_after) {
		qw_act xg = {x->data, x->rows / group, Dv * group, x->rows / group};
		st = be->layernorm(be, &grouped, &xg, mw->norm_w, mw->norm_b, eps, err);
	} else {
		qw_act flat = {tmp_n->data, x->rows, Dv, x->rows};
		st = be->layernorm(be, &flat, x, mw->norm_w, mw->norm_b, eps, err);
	}
	if (st == QW_OK) {
		tmp_g->rows = grouped.rows;
		st = be->matmul(be, tmp_g, &grouped, mw->fc1_w, mw->fc1_b, err);
	}
	if (st == QW_OK)
		st = be->gelu(be, tmp_g, false, err);
	if (st == QW_OK)
		st = be->matmul(be, out, tmp_g, mw->fc2_w, mw->fc2_b, err);
	return st;
}

/* values a patch row holds: C x Tp x P x P */
static int in_cols(const qw_vision_config *vc)
{
	return vc->in_channels * vc->temporal_patch_size * vc->patch_size * vc->patch_size;
}

/* One scratch activation: its columns, and whether it has a row per merged token (else one
 * per patch). */
typedef struct scratch_part {
	qw_act *a;
	int cols;
	bool per_token;
} scratch_part;

#define SCRATCH_PARTS 11

static void scratch_parts(qw_vision_scratch *s, const qw_vision_config *vc,
			  scratch_part p[SCRATCH_PARTS])
{
	int Dv = vc->hidden_size, group = vc->spatial_merge_size * vc->spatial_merge_size;
	scratch_part parts[SCRATCH_PARTS] = {
		{&s->px, in_cols(vc), false}, {&s->x, Dv, false}, {&s->h, Dv, false},
		{&s->q, Dv, false}, {&s->k, Dv, false}, {&s->v, Dv, false}, {&s->a, Dv, false},
		{&s->pe, Dv, false}, {&s->f, vc->intermediate_size, false},
		{&s->tn, Dv, false},               /* (N, Dv), also viewed as (N/4, 4 Dv) */
		{&s->tg, Dv * group, true}};
	memcpy(p, parts, sizeof parts);
}

qw_status qw_vision_scratch_alloc(qw_backend *be, const qw_config *cfg, int max_rows,
				  qw_vision_scratch *s, qw_err *err)
{
	const qw_vision_config *vc = &cfg->vision;
	int group = vc->spatial_merge_size * vc->spatial_merge_size;
	scratch_part p[SCRATCH_PARTS];
	memset(s, 0, sizeof *s);
	scratch_parts(s, vc, p);
	for (int i = 0; i < SCRATCH_PARTS; i++) {
		qw_status st = be->act_alloc(be, p[i].per_token ? max_rows / group : max_rows,
					     p[i].cols, p[i].a, err);
		if (st != QW_OK) {
			qw_vision_scratch_free(be, s);
			return st;
		}
	}
	s->max_rows = max_rows;
	return QW_OK;
}

void qw_vision_scratch_free(qw_backend *be, qw_vision_scratch *s)
{
	scratch_part p[SCRATCH_PARTS];
	scratch_parts(s, &(qw_vision_config){0}, p);
	for (int i = 0; i < SCRATCH_PARTS; i++)
		if (p[i].a->data)
			be->act_free(be, p[i].a);
	memset(s, 0, sizeof *s);
}

uint64_t qw_vision_scratch_bytes(const qw_config *cfg, int max_rows, size_t elem)
{
	const qw_vision_config *vc = &cfg->vision;
	int group = vc->spatial_merge_size * vc->spatial_merge_size;
	qw_vision_scratch none;
	scratch_part p[SCRATCH_PARTS];
	scratch_parts(&none, vc, p);
	uint64_t bytes = 0;
	for (int i = 0; i < SCRATCH_PARTS; i++)
		bytes += (uint64_t)(p[i].per_token ? max_rows / group : max_rows) *
			 (uint64_t)p[i].cols * elem;
	return bytes;
}

/* The tower on scratch s whose activations hold this call's rows: patch and position
 * embeddings, the blocks with their deepstack mergers, the merger. */
static qw_status tower(qw_backend *be, const qw_config *cfg, const qw_weights *w,
		       const geometry *g, const float *pixels, qw_vision_scratch *s,
		       qw_vision_hook hook, void *hook_ctx, qw_vision_out *out, qw_err *err)
{
	const qw_vision_config *vc = &cfg->vision;
	int Dv = vc->hidden_size, heads = vc->num_heads;
	int group = vc->spatial_merge_size * vc->spatial_merge_size;
	qw_act *x = &s->x, *h = &s->h, *q = &s->q, *k = &s->k, *v = &s->v, *a = &s->a, *f = &s->f;

	/* patch embedding: the Conv3d is a Linear over each row's (c, t, y, x) values */
	QW_TRY(be->act_write(be, &s->px, pixels, err));
	qw_tensor pw = rows_view(w->patch_w, 0, Dv, in_cols(vc));
	QW_TRY(be->matmul(be, x, &s->px, &pw, w->patch_b, err));
	if (hook)
		hook(hook_ctx, -1, x);
	QW_TRY(be->interp_rows(be, &s->pe, w->pos_embed, g->taps, g->weights, 4, err));
	QW_TRY(be->add(be, x, x, &s->pe, err));

	for (int b = 0, ds = 0; b < vc->depth; b++) {
		const qw_vision_block_weights *bw = &w->blocks[b];
		qw_tensor wq = rows_view(bw->qkv_w, 0, Dv, Dv), wk = rows_view(bw->qkv_w, Dv, Dv, Dv);
		qw_tensor wv = rows_view(bw->qkv_w, 2 * Dv, Dv, Dv);
		qw_tensor bq = rows_view(bw->qkv_b, 0, Dv, 0), bk = rows_view(bw->qkv_b, Dv, Dv, 0);
		qw_tensor bv = rows_view(bw->qkv_b, 2 * Dv, Dv, 0);
		QW_TRY(be->layernorm(be, h, x, bw->norm1_w, bw->norm1_b, 1e-6f, err));
		QW_TRY(be->matmul(be, q, h, &wq, &bq, err));
		QW_TRY(be->matmul(be, k, h, &wk, &bk, err));
		QW_TRY(be->matmul(be, v, h, &wv, &bv, err));
		QW_TRY(be->rope_2d(be, q, g->pos_rc, heads, Dv / heads, (float)vc->rope_theta, err));
		QW_TRY(be->rope_2d(be, k, g->pos_rc, heads, Dv / heads, (float)vc->rope_theta, err));
		QW_TRY(be->segment_attention(be, a, q, k, v, g->seg, g->n_segs, heads, err));
		QW_TRY(be->matmul(be, h, a, bw->proj_w, bw->proj_b, err));
		QW_TRY(be->add(be, x, x, h, err));
		QW_TRY(be->layernorm(be, h, x, bw->norm2_w, bw->norm2_b, 1e-6f, err));
		QW_TRY(be->matmul(be, f, h, bw->fc1_w, bw->fc1_b, err));
		QW_TRY(be->gelu(be, f, true, err));
		QW_TRY(be->matmul(be, h, f, bw->fc2_w, bw->fc2_b, err));
		QW_TRY(be->add(be, x, x, h, err));
		if (hook)
			hook(hook_ctx, b, x);
		if (ds < vc->n_deepstack && vc->deepstack_indexes[ds] == b) {
			QW_TRY(merge(be, &w->deepstack[ds], x, group, true, &s->tn, &s->tg,
				     &out->deepstack[ds], err));
			ds++;
		}
	}
	return merge(be, &w->merger, x, group, false, &s->tn, &s->tg, &out->embeds, err);
}

qw_status qw_vision_forward_into(qw_backend *be, const qw_config *cfg, const qw_weights *w,
				 const int32_t *grids, int n_images, const float *pixels, int rows,
				 qw_vision_scratch *s, qw_vision_hook hook, void *hook_ctx,
				 qw_vision_out *out, qw_err *err)
{
	const qw_vision_config *vc = &cfg->vision;
	int group = vc->spatial_merge_size * vc->spatial_merge_size, tokens = rows / group;
	if (rows > s->max_rows)
		return qw_fail(err, QW_E_LIMIT, "vision: %d patches; the tower's scratch holds %d "
			       "(HINT: the largest image is set by max-image-tokens)", rows,
			       s->max_rows);
	bool room = out->embeds.cap_rows >= tokens;
	for (int j = 0; j < vc->n_deepstack; j++)
		room = room && out->deepstack[j].cap_rows >= tokens;
	if (!room)
		return qw_fail(err, QW_E_ARG, "vision: the outputs hold fewer than the image's %d "
			       "tokens", tokens);
	geometry g = {0};
	qw_status st = geometry_build(vc, grids, n_images, rows, &g, err);
	if (st == QW_OK) {
		scratch_part p[SCRATCH_PARTS];
		scratch_parts(s, vc, p);
		for (int i = 0; i < SCRATCH_PARTS; i++)
			p[i].a->rows = p[i].per_token ? tokens : rows;
		out->tokens = tokens;
		out->n_deepstack = vc->n_deepstack;
		out->embeds.rows = tokens;
		for (int j = 0; j < vc->n_deepstack; j++)
			out->deepstack[j].rows = tokens;
		st = tower(be, cfg, w, &g, pixels, s, hook, hook_ctx, out, err);
	}
	geometry_free(&g);
	return st;
}

/* The outputs for `tokens` merged tokens. */
static qw_status out_alloc(qw_backend *be, const qw_config *cfg, int tokens, qw_vision_out *out,
			   qw_err *err)
{
	int H = cfg->text.hidden_size;
	memset(out, 0, sizeof *out);
	QW_TRY(be->act_alloc(be, tokens, H, &out->embeds, err));
	for (int j = 0; j < cfg->vision.n_deepstack; j++)
		QW_TRY(be->act_alloc(be, tokens, H, &out->deepstack[j], err));
	return QW_OK;
}

qw_status qw_vision_forward(qw_backend *be, const qw_config *cfg, const qw_weights *w,
			    const int32_t *grids, int n_images, const float *pixels, int rows,
			    qw_vision_hook hook, void *hook_ctx, qw_vision_out *out, qw_err *err)
{
	int group = cfg->vision.spatial_merge_size * cfg->vision.spatial_merge_size;
	qw_vision_scratch s;
	memset(out, 0, sizeof *out);
	qw_status st = qw_vision_scratch_alloc(be, cfg, rows, &s, err);
	if (st == QW_OK)
		st = out_alloc(be, cfg, rows / group, out, err);
	if (st == QW_OK)
		st = qw_vision_forward_into(be, cfg, w, grids, n_images, pixels, rows, &s, hook,
					    hook_ctx, out, err);
	qw_vision_scratch_free(be, &s);
	if (st != QW_OK)
		qw_vision_out_free(be, out);
	return st;
}

void qw_vision_out_free(qw_backend *be, qw_vision_out *out)
{
	if (out->embeds.data)
		be->act_free(be, &out->embeds);
	for (int j = 0; j < QW_MAX_DEEPSTACK; j++)
		if (out->deepstack[j].data)
			be->act_free(be, &out->deepstack[j]);
	memset(out, 0, sizeof *out);
}
