/* cpu_backend.c - the fp32 reference backend.  See cpu_backend.h and ops.h. */
#include "kernels/cpu/cpu_backend.h"

#include <math.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sample.h"
#include "kernels/step_limits.h"

struct qw_kv_cache {
	qw_kv_shape shape;
	float *k, *v;   /* (n_layers, n_blocks * block_size, Hkv * D) */
};

/* What reserve and seal set: steps are then held to lim, and nothing more is allocated once
 * sealed.  (The ops' own scratch is transient host memory, taken and given back per call.) */
typedef struct cpu_ctx {
	bool reserved, sealed;
	qw_step_limits lim;
} cpu_ctx;

static cpu_ctx *ctx_of(qw_backend *be)
{
	return (cpu_ctx *)be->ctx;
}

/* need within limit l, once reserved */
static qw_status hold(qw_backend *be, qw_limit l, long long need, const char *what, qw_err *err)
{
	cpu_ctx *c = ctx_of(be);
	return c->reserved ? qw_step_limits_hold(&c->lim, l, need, "cpu", what, err) : QW_OK;
}

static qw_status reserve(qw_backend *be, const qw_step_limits *lim, qw_reserved *out, qw_err *err)
{
	cpu_ctx *c = ctx_of(be);
	if (c->sealed)
		return qw_sealed_error(err, "cpu", "a reservation");
	c->lim = *lim;
	c->reserved = true;
	if (out)
		*out = (qw_reserved){0};
	return QW_OK;
}

static void seal(qw_backend *be)
{
	ctx_of(be)->sealed = true;
}

#define ROWS(a) ((size_t)(a)->rows)
#define F(a) ((float *)(a)->data)
#define CF(a) ((const float *)(a)->data)

static qw_status shape_error(qw_err *err, const char *op, const char *what)
{
	return qw_fail(err, QW_E_ARG, "cpu %s: %s", op, what);
}

void qw_tensor_read_f32(const qw_tensor *t, uint64_t first, uint64_t n, float *dst)
{
	const uint8_t *base = t->data;
	switch (t->dtype) {
	case QW_DT_F32:
		memcpy(dst, base + first * 4, n * 4);
		break;
	case QW_DT_BF16:
		/* bf16 is the top half of an fp32: widening is a shift (NaNs stay NaNs) */
		for (uint64_t i = 0; i < n; i++) {
			uint16_t h;
			memcpy(&h, base + (first + i) * 2, 2);
			uint32_t bits = (uint32_t)h << 16;
			memcpy(&dst[i], &bits, 4);
		}
		break;
	case QW_DT_F16:
		for (uint64_t i = 0; i < n; i++) {
			uint16_t h;
			memcpy(&h, base + (first + i) * 2, 2);
			dst[i] = qw_f16_to_f32(h);
		}
		break;
	case QW_DT_F8_E4M3:
		if (t->scale) {
			/* W = Wq * S[block] over the last two dims (rows R, cols C) */
			int nd = t->ndim;
			uint64_t R = (uint64_t)t->shape[nd - 2], C = (uint64_t)t->shape[nd - 1];
			uint64_t br = (uint64_t)t->block[0], bc = (uint64_t)t->block[1];
			uint64_t SR = (R + br - 1) / br, SC = (C + bc - 1) / bc;
			float s = 0.0f;
			uint64_t cur = UINT64_MAX;
			for (uint64_t i = 0; i < n; i++) {
				uint64_t e = first + i, c = e % C, r = (e / C) % R, m = e / (R * C);
				uint64_t si = (m * SR + r / br) * SC + c / bc;
				if (si != cur) {
					qw_tensor_read_f32(t->scale, si, 1, &s);
					cur = si;
				}
				dst[i] = qw_f8e4m3_to_f32(base[e]) * s;
			}
			break;
		}
		/* a quantized weight without its scales cannot be read */
		__attribute__((fallthrough));
	default:
		for (uint64_t i = 0; i < n; i++)
			dst[i] = NAN;   /* the loader admits only float or scaled FP8 weights */
	}
}

/* In double precision, over four interleaved partial sums (independent chains run four
 * times faster than one; the order is fixed, so results are reproducible). */
static double dot(const float *a, const float *b, int n)
{
	double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
	int i = 0;
	for (; i + 4 <= n; i += 4) {
		s0 += (double)a[i] * (double)b[i];
		s1 += (double)a[i + 1] * (double)b[i + 1];
		s2 += (double)a[i + 2] * (double)b[i + 2];
		s3 += (double)a[i + 3] * (double)b[i + 3];
	}
	for (; i < n; i++)
		s0 += (double)a[i] * (double)b[i];
	return (s0 + s1) + (s2 + s3);
}

// ---------------------------------------------------------------------------------------
// memory

static qw_status act_alloc(qw_backend *be, int rows, int cols, qw_act *out, qw_err *err)
{
	if (ctx_of(be)->sealed) {
		char what[64];
		snprintf(what, sizeof what, "a %d x %d activation", rows, cols);
		return qw_sealed_error(err, "cpu", what);
	}
	out->data = calloc((size_t)rows * (size_t)cols + 1, sizeof(float));
	if (!out->data)
		return qw_fail(err, QW_E_NOMEM, "cpu: out of memory for a %d x %d activation", rows,
			       cols);
	out->rows = out->cap_rows = rows;
	out->cols = cols;
	return QW_OK;
}

static void act_free(qw_backend *be, qw_act *a)
{
	free(a->data);
	memset(a, 0, sizeof *a);
}

static qw_status act_write(qw_backend *be, qw_act *dst, const float *src, qw_err *err)
{
	memcpy(dst->data, src, ROWS(dst) * (size_t)dst->cols * sizeof(float));
	return QW_OK;
}

static qw_status act_read(qw_backend *be, const qw_act *src, float *dst, qw_err *err)
{
	memcpy(dst, src->data, ROWS(src) * (size_t)src->cols * sizeof(float));
	return QW_OK;
}

static qw_status act_copy(qw_backend *be, qw_act *dst, const qw_act *src, qw_err *err)
{
	if (dst->cap_rows < src->rows || dst->cols != src->cols)
		return shape_error(err, "act_copy", "destination too small");
	dst->rows = src->rows;
	memcpy(dst->data, src->data, ROWS(src) * (size_t)src->cols * sizeof(float));
	return QW_OK;
}

static qw_status upload(qw_backend *be, const qw_tensor *t, const qw_tensor **out, qw_err *err)
{
	if (ctx_of(be)->sealed)
		return qw_sealed_error(err, "cpu", t->name ? t->name : "a tensor");
	*out = t;   /* read in place from the mapping */
	return QW_OK;
}

static qw_status kv_alloc(qw_backend *be, const qw_kv_shape *shape, qw_kv_cache **out,
			  qw_err *err)
{
	if (ctx_of(be)->sealed)
		return qw_sealed_error(err, "cpu", "a KV cache");
	qw_kv_cache *kv = calloc(1, sizeof *kv);
	size_t n = (size_t)shape->n_layers * (size_t)shape->n_blocks * (size_t)shape->block_size *
		   (size_t)shape->n_kv_heads * (size_t)shape->head_dim;
	if (kv) {
		kv->shape = *shape;
		kv->k = calloc(n + 1, sizeof(float));
		kv->v = calloc(n + 1, sizeof(float));
	}
	if (!kv || !kv->k || !kv->v) {
		if (kv) {
			free(kv->k);
			free(kv->v);
		}
		free(kv);
		return qw_fail(err, QW_E_NOMEM, "cpu: out of memory for a KV cache of %zu values", 2 * n);
	}
	*out = kv;
	return QW_OK;
}

static void kv_free(qw_backend *be, qw_kv_cache *kv)
{
	if (kv) {
		free(kv->k);
		free(kv->v);
		free(kv);
	}
}

static void destroy(qw_backend *be)
{
	free(be->ctx);
	free(be);
}

// ---------------------------------------------------------------------------------------
// ops

static qw_status embed(qw_backend *be, qw_act *out, const qw_tensor *table, const int32_t *ids,
		       qw_err *err)
{
	int64_t V = table->shape[0], H = table->shape[1];
	if (out->cols != H)
		return shape_error(err, "embed", "output width is not the table's");
	QW_TRY(hold(be, QW_LIMIT_TOKENS, out->rows, "embed", err));
	for (size_t t = 0; t < ROWS(out); t++) {
		if (ids[t] < 0 || ids[t] >= V)
			return qw_fail(err, QW_E_ARG, "token id %d at row %zu is outside the vocabulary "
				       "of %lld", ids[t], t, (long long)V);
		qw_tensor_read_f32(table, (uint64_t)ids[t] * (uint64_t)H, (uint64_t)H,
				   F(out) + t * (size_t)H);
	}
	return QW_OK;
}

static void rms_row(float *out, const float *x, const float *w, int n, float eps)
{
	double ss = 0.0;
	for (int i = 0; i < n; i++)
		ss += (double)x[i] * (double)x[i];
	float r = (float)(1.0 / sqrt(ss / n + (double)eps));
	for (int i = 0; i < n; i++)
		out[i] = w[i] * (x[i] * r);
}

static qw_status rmsnorm(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			 float eps, qw_err *err)
{
	int n = x->cols;
	if (w->numel != (uint64_t)n || out->cols != n)
		return shape_error(err, "rmsnorm", "weight or output width differs from the input");
	float *wf = malloc((size_t)n * sizeof *wf);
	if (!wf)
		return qw_fail(err, QW_E_NOMEM, "cpu rmsnorm: out of memory");
	qw_tensor_read_f32(w, 0, (uint64_t)n, wf);
	out->rows = x->rows;
	for (size_t t = 0; t < ROWS(x); t++)
		rms_row(F(out) + t * (size_t)n, CF(x) + t * (size_t)n, wf, n, eps);
	free(wf);
	return QW_OK;
}

static qw_status head_rmsnorm(qw_backend *be, qw_act *x, const qw_tensor *w, int n_heads,
			      float eps, qw_err *err)
{
	int D = (int)w->numel;
	if (D * n_heads != x->cols)
		return shape_error(err, "head_rmsnorm", "heads x weight width is not the row width");
	float wf[4096];
	if (D > 4096)
		return shape_error(err, "head_rmsnorm", "head_dim above 4096");
	qw_tensor_read_f32(w, 0, (uint64_t)D, wf);
	for (size_t t = 0; t < ROWS(x); t++)
		for (int h = 0; h < n_heads; h++) {
			float *row = F(x) + t * (size_t)x->cols + (size_t)h * (size_t)D;
			rms_row(row, row, wf, D, eps);
		}
	return QW_OK;
}

/* Turns rotary pair j, (v[j], v[j + D/2]), of every head of one row by angle. */
static void rotate_pair(float *row, int n_heads, int head_dim, int j, float angle)
{
	float c = cosf(angle), s = sinf(angle);
	int half = head_dim / 2;
	for (int h = 0; h < n_heads; h++) {
		float *v = row + (size_t)h * (size_t)head_dim;
		float a = v[j], b = v[j + half];
		v[j] = a * c - b * s;
		v[j + half] = b * c + a * s;
	}
}

/* One query head over n key / value rows: softmax(q . k * scale) . v, in double.  krow and
 * vrow point at the rows, off at the head's values in them; score is n of scratch. */
static void attend(const float *qh, const float *const *krow, const float *const *vrow,
		   size_t off, int n, int D, double scale, double *score, float *oh)
{
	double max = -INFINITY, sum = 0.0;
	for (int j = 0; j < n; j++) {
		score[j] = dot(qh, krow[j] + off, D) * scale;
		max = score[j] > max ? score[j] : max;
	}
	for (int j = 0; j < n; j++)
		sum += score[j] = exp(score[j] - max);
	for (int d = 0; d < D; d++) {
		double acc = 0.0;
		for (int j = 0; j < n; j++)
			acc += score[j] * (double)vrow[j][off + (size_t)d];
		oh[d] = (float)(acc / sum);
	}
}

static qw_status rope(qw_backend *be, qw_act *x, const int32_t *positions, int n_heads,
		      int head_dim, const int *sec, float theta, qw_err *err)
{
	int half = head_dim / 2;
	if (n_heads * head_dim != x->cols || head_dim % 2 || half > 2048)
		return shape_error(err, "rope", "heads x head_dim is not the row width");
	float inv_freq[2048];
	for (int j = 0; j < half; j++)   /* as HF: float pow, float reciprocal */
		inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
	for (size_t t = 0; t < ROWS(x); t++) {
		const int32_t *pos = positions + 3 * t;
		for (int j = 0; j < half; j++) {
			int axis = (j % 3 == 1 && j < 3 * sec[1]) ? 1 : (j % 3 == 2 && j < 3 * sec[2]) ? 2 : 0;
			rotate_pair(F(x) + t * (size_t)x->cols, n_heads, head_dim, j,
				    (float)pos[axis] * inv_freq[j]);
		}
	}
	return QW_OK;
}

static qw_status matmul(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			const qw_tensor *bias, qw_err *err)
{
	if (w->ndim != 2 || w->shape[1] != x->cols || w->shape[0] != out->cols ||
	    out->cap_rows < x->rows)
		return shape_error(err, "matmul", "weight does not match input and output widths");
	int N = (int)w->shape[0], K = (int)w->shape[1];
	float *row = malloc((size_t)K * sizeof *row), *b = NULL;
	if (bias && (b = malloc((size_t)N * sizeof *b)))
		qw_tensor_read_f32(bias, 0, (uint64_t)N, b);
	if (!row || (bias && !b)) {
		free(row);
		free(b);
		return qw_fail(err, QW_E_NOMEM, "cpu matmul: out of memory");
	}
	out->rows = x->rows;
	for (int n = 0; n < N; n++) {
		qw_tensor_read_f32(w, (uint64_t)n * (uint64_t)K, (uint64_t)K, row);
		for (size_t t = 0; t < ROWS(x); t++)
			F(out)[t * (size_t)N + (size_t)n] =
				(float)(dot(CF(x) + t * (size_t)K, row, K) + (b ? b[n] : 0.0));
	}
	free(row);
	free(b);
	return QW_OK;
}

static qw_status add(qw_backend *be, qw_act *out, const qw_act *a, const qw_act *b, qw_err *err)
{
	if (a->rows != b->rows || a->cols != b->cols || out->cols != a->cols)
		return shape_error(err, "add", "operand shapes differ");
	out->rows = a->rows;
	for (size_t i = 0; i < ROWS(a) * (size_t)a->cols; i++)
		F(out)[i] = CF(a)[i] + CF(b)[i];
	return QW_OK;
}

static float silu(float z)
{
	return z / (1.0f + expf(-z));
}

static qw_status silu_mul(qw_backend *be, qw_act *out, const qw_act *gate, const qw_act *up,
			  qw_err *err)
{
	if (gate->rows != up->rows || gate->cols != up->cols || out->cols != gate->cols)
		return shape_error(err, "silu_mul", "operand shapes differ");
	out->rows = gate->rows;
	for (size_t i = 0; i < ROWS(gate) * (size_t)gate->cols; i++)
		F(out)[i] = silu(CF(gate)[i]) * CF(up)[i];
	return QW_OK;
}

static qw_status kv_write(qw_backend *be, qw_kv_cache *kv, int layer, const qw_act *k,
			  const qw_act *v, const qw_batch *batch, qw_err *err)
{
	const qw_kv_shape *s = &kv->shape;
	size_t width = (size_t)s->n_kv_heads * (size_t)s->head_dim;
	size_t slots = (size_t)s->n_blocks * (size_t)s->block_size;
	if (k->cols != (int)width || v->cols != (int)width || layer < 0 || layer >= s->n_layers)
		return shape_error(err, "kv_write", "K/V width or layer does not match the cache");
	for (int t = 0; t < batch->n_tokens; t++) {
		if (batch->slot[t] < 0 || (size_t)batch->slot[t] >= slots)
			return qw_fail(err, QW_E_ARG, "kv_write: slot %d of token %d outside the cache "
				       "(%zu slots)", batch->slot[t], t, slots);
		size_t at = ((size_t)layer * slots + (size_t)batch->slot[t]) * width;
		memcpy(kv->k + at, CF(k) + (size_t)t * width, width * sizeof(float));
		memcpy(kv->v + at, CF(v) + (size_t)t * width, width * sizeof(float));
	}
	return QW_OK;
}

static qw_status attention(qw_backend *be, qw_act *out, const qw_act *q, qw_kv_cache *kv,
			   int layer, const qw_batch *batch, int n_heads, qw_err *err)
{
	const qw_kv_shape *s = &kv->shape;
	int D = s->head_dim, Hkv = s->n_kv_heads, group = n_heads / Hkv, bs = s->block_size;
	size_t width = (size_t)Hkv * (size_t)D, slots = (size_t)s->n_blocks * (size_t)bs;
	if (q->cols != n_heads * D || out->cols != q->cols || n_heads % Hkv)
		return shape_error(err, "attention", "query width or head counts do not match");
	if (ctx_of(be)->reserved)
		QW_TRY(qw_step_limits_check(&ctx_of(be)->lim, batch, "cpu attention", err));
	int max_ctx = batch->max_blocks * bs;
	double *score = malloc((size_t)(max_ctx > 0 ? max_ctx : 1) * sizeof *score);
	const float **krow = malloc((size_t)(max_ctx > 0 ? max_ctx : 1) * sizeof *krow * 2);
	if (!score || !krow) {
		free(score);
		free(krow);
		return qw_fail(err, QW_E_NOMEM, "cpu attention: out of memory");
	}
	const float **vrow = krow + max_ctx;
	const double scale = 1.0 / sqrt((double)D);
	qw_status st = QW_OK;
	out->rows = q->rows;
	for (int t = 0; t < batch->n_tokens && st == QW_OK; t++) {
		int n = batch->kv_index[t] + 1;
		const int32_t *table = batch->block_tables + (size_t)batch->seq[t] * (size_t)batch->max_blocks;
		if (n < 1 || n > max_ctx) {
			st = qw_fail(err, QW_E_ARG, "attention: token %d attends to %d entries, its block "
				     "table holds %d", t, n, max_ctx);
			break;
		}
		for (int j = 0; j < n; j++) {
			int32_t block = table[j / bs];
			if (block < 0 || (size_t)block * (size_t)bs >= slots) {
				st = qw_fail(err, QW_E_ARG, "attention: block %d outside the cache", block);
				break;
			}
			size_t at = ((size_t)layer * slots + (size_t)block * (size_t)bs + (size_t)(j % bs)) * width;
			krow[j] = kv->k + at;
			vrow[j] = kv->v + at;
		}
		for (int h = 0; st == QW_OK && h < n_heads; h++)   /* GQA: kv head h / group */
			attend(CF(q) + (size_t)t * (size_t)q->cols + (size_t)h * (size_t)D, krow, vrow,
			       (size_t)(h / group) * (size_t)D, n, D, scale,
			       score, F(out) + (size_t)t * (size_t)out->cols + (size_t)h * (size_t)D);
	}
	free(score);
	free(krow);
	return st;
}

/* Work buffers of the MoE op, sized for one layer. */
typedef struct moe_scratch {
	float *router;   /* (E, H) the router widened once */
	float *act;      /* (2I,) gate | up pre-activations, then the SwiGLU output in [0, I) */
	double *acc;     /* (max(2I, H),) accumulators */
	float *row;      /* (max(2I, H),) one widened weight row */
	float *y;        /* (H,) one expert's output */
	double *prob;    /* (E,) router probabilities */
	int *chosen;     /* (k,) selected experts */
	bool *taken;     /* (E,) */
} moe_scratch;

/* One expert's SwiGLU on x (H,) into s->y (H,), in either layout. */
static void expert_ffn(const qw_moe_weights *w, int e, const float *x, int H, moe_scratch *s)
{
	int I = w->inter;
	float *a = s->act;
	if (w->gate_up) {
		/* a = x . GU[e], GU[e] (H, 2I): gate columns [0, I), up columns [I, 2I) */
		memset(s->acc, 0, 2 * (size_t)I * sizeof *s->acc);
		for (int h = 0; h < H; h++) {
			qw_tensor_read_f32(w->gate_up, ((uint64_t)e * (uint64_t)H + (uint64_t)h) * 2 *
					   (uint64_t)I, 2 * (uint64_t)I, s->row);
			for (int j = 0; j < 2 * I; j++)
				s->acc[j] += (double)x[h] * (double)s->row[j];
		}
		for (int j = 0; j < 2 * I; j++)
			a[j] = (float)s->acc[j];
	} else {
		for (int i = 0; i < I; i++) {
			qw_tensor_read_f32(w->gate[e], (uint64_t)i * (uint64_t)H, (uint64_t)H, s->row);
			a[i] = (float)dot(x, s->row, H);
			qw_tensor_read_f32(w->up[e], (uint64_t)i * (uint64_t)H, (uint64_t)H, s->row);
			a[I + i] = (float)dot(x, s->row, H);
		}
	}
	for (int i = 0; i < I; i++)
		a[i] = silu(a[i]) * a[I + i];
	if (w->down) {
		/* y = h . DN[e], DN[e] (I, H) */
		memset(s->acc, 0, (size_t)H * sizeof *s->acc);
		for (int i = 0; i < I; i++) {
			qw_tensor_read_f32(w->down, ((uint64_t)e * (uint64_t)I + (uint64_t)i) *
					   (uint64_t)H, (uint64_t)H, s->row);
			for (int h = 0; h < H; h++)
				s->acc[h] += (double)a[i] * (double)s->row[h];
		}
		for (int h = 0; h < H; h++)
			s->y[h] = (float)s->acc[h];
	} else {
		for (int h = 0; h < H; h++) {
			qw_tensor_read_f32(w->expert_down[e], (uint64_t)h * (uint64_t)I, (uint64_t)I,
					   s->row);
			s->y[h] = (float)dot(a, s->row, I);
		}
	}
}

static int by_expert_id(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

static void moe_scratch_free(moe_scratch *s)
{
	free(s->router);
	free(s->act);
	free(s->acc);
	free(s->row);
	free(s->y);
	free(s->prob);
	free(s->chosen);
	free(s->taken);
}

static qw_status moe(qw_backend *be, qw_act *out, const qw_act *x, const qw_moe_weights *w,
		     qw_err *err)
{
	int H = x->cols, E = w->n_experts, k = w->top_k, I = w->inter;
	if (out->cols != H || w->router->shape[0] != E || w->router->shape[1] != H || k < 1 || k > E)
		return shape_error(err, "moe", "router, expert count or widths do not match");
	QW_TRY(hold(be, QW_LIMIT_TOKENS, x->rows, "moe", err));
	size_t big = (size_t)(H > 2 * I ? H : 2 * I);
	moe_scratch s = {
		.router = malloc((size_t)E * (size_t)H * sizeof(float)),
		.act = malloc(2 * (size_t)I * sizeof(float)),
		.acc = malloc(big * sizeof(double)),
		.row = malloc(big * sizeof(float)),
		.y = malloc((size_t)H * sizeof(float)),
		.prob = malloc((size_t)E * sizeof(double)),
		.chosen = malloc((size_t)k * sizeof(int)),
		.taken = malloc((size_t)E * sizeof(bool)),
	};
	if (!s.router || !s.act || !s.acc || !s.row || !s.y || !s.prob || !s.chosen || !s.taken) {
		moe_scratch_free(&s);
		return qw_fail(err, QW_E_NOMEM, "cpu moe: out of memory");
	}
	qw_tensor_read_f32(w->router, 0, (uint64_t)E * (uint64_t)H, s.router);
	out->rows = x->rows;
	for (size_t t = 0; t < ROWS(x); t++) {
		const float *xt = CF(x) + t * (size_t)H;
		float *ot = F(out) + t * (size_t)H;
		/* router: logits in fp32, softmax, top-k by probability (lowest id on ties) */
		double max = -INFINITY, sum = 0.0, wsum = 0.0;
		for (int e = 0; e < E; e++) {
			s.prob[e] = (float)dot(xt, s.router + (size_t)e * (size_t)H, H);
			max = s.prob[e] > max ? s.prob[e] : max;
			s.taken[e] = false;
		}
		for (int e = 0; e < E; e++)
			sum += s.prob[e] = exp(s.prob[e] - max);
		for (int i = 0; i < k; i++) {
			int best = -1;
			for (int e = 0; e < E; e++)
				if (!s.taken[e] && (best < 0 || s.prob[e] > s.prob[best]))
					best = e;
			s.taken[best] = true;
			s.chosen[i] = best;
			wsum += (double)(float)(s.prob[best] / sum);
		}
		qsort(s.chosen, (size_t)k, sizeof *s.chosen, by_expert_id);   /* HF's summation order */
		memset(ot, 0, (size_t)H * sizeof *ot);
		for (int i = 0; i < k; i++) {
			int e = s.chosen[i];
			float weight = (float)(s.prob[e] / sum);
			if (w->renormalize)
				weight = (float)((double)weight / wsum);
			expert_ffn(w, e, xt, H, &s);
			for (int h = 0; h < H; h++)
				ot[h] += weight * s.y[h];
		}
	}
	moe_scratch_free(&s);
	return QW_OK;
}

static qw_status gather_rows(qw_backend *be, qw_act *out, const qw_act *x, const int32_t *rows,
			     int n, qw_err *err)
{
	if (out->cols != x->cols || out->cap_rows < n)
		return shape_error(err, "gather_rows", "output too small");
	for (int i = 0; i < n; i++) {
		if (rows[i] < 0 || rows[i] >= x->rows)
			return shape_error(err, "gather_rows", "row index out of range");
		memcpy(F(out) + (size_t)i * (size_t)x->cols, CF(x) + (size_t)rows[i] * (size_t)x->cols,
		       (size_t)x->cols * sizeof(float));
	}
	out->rows = n;
	return QW_OK;
}

static qw_status sample(qw_backend *be, const qw_act *logits, const qw_sampling *params,
			const qw_sample_history *history, int32_t *out_tokens,
			qw_sample_logprobs *out_logprobs, qw_err *err)
{
	QW_TRY(hold(be, QW_LIMIT_LOGITS, logits->rows, "sample", err));
	QW_TRY(hold(be, QW_LIMIT_VOCAB, logits->cols, "sample", err));
	QW_TRY(qw_sample_check(params, history, out_logprobs, logits->rows, logits->cols, err));
	void *scratch = malloc(qw_sample_scratch_bytes(logits->cols));
	if (!scratch)
		return qw_fail(err, QW_E_NOMEM, "cpu sample: out of memory");
	for (size_t r = 0; r < ROWS(logits); r++)
		out_tokens[r] = qw_sample_row(CF(logits) + r * (size_t)logits->cols, logits->cols,
					      &params[r], history ? &history[r] : NULL, scratch,
					      out_logprobs ? &out_logprobs[r] : NULL);
	free(scratch);
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// vision ops

static qw_status layernorm(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			   const qw_tensor *b, float eps, qw_err *err)
{
	int n = x->cols;
	if (w->numel != (uint64_t)n || b->numel != (uint64_t)n || out->cols != n)
		return shape_error(err, "layernorm", "weight, bias or output width differs");
	float *wf = malloc(2 * (size_t)n * sizeof *wf);
	if (!wf)
		return qw_fail(err, QW_E_NOMEM, "cpu layernorm: out of memory");
	float *bf = wf + n;
	qw_tensor_read_f32(w, 0, (uint64_t)n, wf);
	qw_tensor_read_f32(b, 0, (uint64_t)n, bf);
	out->rows = x->rows;
	for (size_t t = 0; t < ROWS(x); t++) {
		const float *xr = CF(x) + t * (size_t)n;
		float *o = F(out) + t * (size_t)n;
		double mean = 0.0, var = 0.0;
		for (int i = 0; i < n; i++)
			mean += xr[i];
		mean /= n;
		for (int i = 0; i < n; i++)
			var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
		double r = 1.0 / sqrt(var / n + (double)eps);
		for (int i = 0; i < n; i++)
			o[i] = (float)(((double)xr[i] - mean) * r) * wf[i] + bf[i];
	}
	free(wf);
	return QW_OK;
}

static qw_status gelu(qw_backend *be, qw_act *x, bool tanh_approx, qw_err *err)
{
	for (size_t i = 0; i < ROWS(x) * (size_t)x->cols; i++) {
		double z = F(x)[i];
		F(x)[i] = (float)(tanh_approx
			? 0.5 * z * (1.0 + tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))
			: 0.5 * z * (1.0 + erf(z * 0.7071067811865476)));
	}
	return QW_OK;
}

static qw_status rope_2d(qw_backend *be, qw_act *x, const int32_t *pos_rc, int n_heads,
			 int head_dim, float theta, qw_err *err)
{
	int half = head_dim / 2, quarter = head_dim / 4;
	if (n_heads * head_dim != x->cols || head_dim % 4 || quarter > 1024)
		return shape_error(err, "rope_2d", "heads x head_dim is not the row width");
	QW_TRY(hold(be, QW_LIMIT_IMAGE_ROWS, x->rows, "rope_2d", err));
	float inv_freq[1024];
	for (int k = 0; k < quarter; k++)   /* as HF: theta^(arange(0, D/2, 2) / (D/2)), float */
		inv_freq[k] = 1.0f / powf(theta, (float)(2 * k) / (float)half);
	for (size_t t = 0; t < ROWS(x); t++)
		for (int j = 0; j < half; j++)
			rotate_pair(F(x) + t * (size_t)x->cols, n_heads, head_dim, j,
				    (float)pos_rc[2 * t + (j < quarter ? 0 : 1)] * inv_freq[j % quarter]);
	return QW_OK;
}

static qw_status segment_attention(qw_backend *be, qw_act *out, const qw_act *q, const qw_act *k,
				   const qw_act *v, const int32_t *seg_start, int n_segs, int n_heads,
				   qw_err *err)
{
	int width = q->cols, D = width / n_heads;
	if (k->cols != width || v->cols != width || out->cols != width || width % n_heads ||
	    seg_start[0] != 0 || seg_start[n_segs] != q->rows)
		return shape_error(err, "segment_attention", "widths or segments do not match");
	QW_TRY(hold(be, QW_LIMIT_IMAGE_ROWS, q->rows, "segment_attention", err));
	int longest = 0;
	for (int s = 0; s < n_segs; s++)
		if (seg_start[s + 1] - seg_start[s] > longest)
			longest = seg_start[s + 1] - seg_start[s];
	size_t m = (size_t)(longest ? longest : 1);
	double *score = malloc(m * sizeof *score);
	const float **krow = malloc(2 * m * sizeof *krow), **vrow = krow + m;
	if (!score || !krow) {
		free(score);
		free(krow);
		return qw_fail(err, QW_E_NOMEM, "cpu segment_attention: out of memory");
	}
	const double scale = 1.0 / sqrt((double)D);
	out->rows = q->rows;
	for (int s = 0; s < n_segs; s++) {
		int a = seg_start[s], n = seg_start[s + 1] - a;
		for (int j = 0; j < n; j++) {
			krow[j] = CF(k) + (size_t)(a + j) * (size_t)width;
			vrow[j] = CF(v) + (size_t)(a + j) * (size_t)width;
		}
		for (int t = a; t < a + n; t++)
			for (int h = 0; h < n_heads; h++)
				attend(CF(q) + (size_t)t * (size_t)width + (size_t)h * (size_t)D, krow, vrow,
				       (size_t)h * (size_t)D, n, D, scale, score,
				       F(out) + (size_t)t * (size_t)width + (size_t)h * (size_t)D);
	}
	free(krow);
	free(score);
	return QW_OK;
}

static qw_status interp_rows(qw_backend *be, qw_act *out, const qw_tensor *table,
			     const int32_t *idx, const float *w, int taps, qw_err *err)
{
	int D = (int)table->shape[1];
	if (out->cols != D || taps < 1 || taps > 16)
		return shape_error(err, "interp_rows", "output width differs from the table's");
	QW_TRY(hold(be, QW_LIMIT_IMAGE_ROWS, out->rows, "interp_rows", err));
	float *row = malloc((size_t)D * sizeof *row);
	if (!row)
		return qw_fail(err, QW_E_NOMEM, "cpu interp_rows: out of memory");
	for (size_t r = 0; r < ROWS(out); r++) {
		float *o = F(out) + r * (size_t)D;
		for (int k = 0; k < taps; k++) {
			int32_t i = idx[r * (size_t)taps + (size_t)k];
			if (i < 0 || i >= table->shape[0]) {
				free(row);
				return shape_error(err, "interp_rows", "table index out of range");
			}
			qw_tensor_read_f32(table, (uint64_t)i * (uint64_t)D, (uint64_t)D, row);
			for (int d = 0; d < D; d++)
				o[d] = k ? o[d] + row[d] * w[r * (size_t)taps + (size_t)k]
					 : row[d] * w[r * (size_t)taps];
		}
	}
	free(row);
	return QW_OK;
}

static qw_status scatter_rows(qw_backend *be, qw_act *dst, const int32_t *rows, const qw_act *src,
			      bool add_, qw_err *err)
{
	if (dst->cols != src->cols)
		return shape_error(err, "scatter_rows", "row widths differ");
	for (int i = 0; i < src->rows; i++) {
		if (rows[i] < 0 || rows[i] >= dst->rows)
			return shape_error(err, "scatter_rows", "row index out of range");
		float *d = F(dst) + (size_t)rows[i] * (size_t)dst->cols;
		const float *s = CF(src) + (size_t)i * (size_t)src->cols;
		for (int c = 0; c < dst->cols; c++)
			d[c] = add_ ? d[c] + s[c] : s[c];
	}
	return QW_OK;
}

qw_status qw_cpu_backend_create(qw_backend **out, qw_err *err)
{
	qw_backend *be = calloc(1, sizeof *be);
	cpu_ctx *c = calloc(1, sizeof *c);
	if (!be || !c) {
		free(be);
		free(c);
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	}
	*be = (qw_backend){
		.name = "cpu", .act_dtype = QW_DT_F32, .ctx = c,
		.reserve = reserve, .seal = seal,
		.act_alloc = act_alloc, .act_free = act_free, .act_write = act_write,
		.act_read = act_read, .act_copy = act_copy, .upload = upload,
		.kv_alloc = kv_alloc, .kv_free = kv_free, .destroy = destroy,
		.embed = embed, .rmsnorm = rmsnorm, .head_rmsnorm = head_rmsnorm, .rope = rope,
		.matmul = matmul, .add = add, .silu_mul = silu_mul, .kv_write = kv_write,
		.attention = attention, .moe = moe, .gather_rows = gather_rows, .sample = sample,
		.layernorm = layernorm, .gelu = gelu, .rope_2d = rope_2d,
		.segment_attention = segment_attention, .interp_rows = interp_rows,
		.scatter_rows = scatter_rows,
	};
	*out = be;
	return QW_OK;
}
