/* backend.cu - the CUDA backend's op table: activations, each op handed to its kernel (on
 * the step's batch, step_batch.cu's), create and destroy.  The weights and
 * KV caches it owns are memory.cu's, the recorded steps step_graphs.cu's.  See
 * cuda_backend.h and backend_ctx.h. */
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/backend_ctx.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/kernels.h"
#include "kernels/step_limits.h"
#include "loader/dtype.h"

// ---------------------------------------------------------------------------------------
// activations

static qw_status act_alloc(qw_backend *be, int rows, int cols, qw_act *out, qw_err *err)
{
	if (ctx_of(be)->sealed) {
		char what[64];
		snprintf(what, sizeof what, "a %d x %d activation", rows, cols);
		return qw_sealed_error(err, "cuda", what);
	}
	size_t bytes = (size_t)(rows > 0 ? rows : 1) * (size_t)cols * 2;
	if (cudaMalloc(&out->data, bytes) != cudaSuccess) {
		cudaGetLastError();
		size_t free_b = 0, total = 0;
		cudaMemGetInfo(&free_b, &total);
		out->data = NULL;
		return qw_fail(err, QW_E_NOMEM, "cuda: out of device memory for a %d x %d activation "
			       "(%zu MiB free)", rows, cols, free_b >> 20);
	}
	out->rows = out->cap_rows = rows;
	out->cols = cols;
	return QW_OK;
}

static void act_free(qw_backend *be, qw_act *a)
{
	cudaFree(a->data);
	memset(a, 0, sizeof *a);
}

static qw_status act_write(qw_backend *be, qw_act *dst, const float *src, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	size_t n = (size_t)dst->rows * (size_t)dst->cols;
	QW_TRY(cuda_host_room(c, n, err));
	for (size_t i = 0; i < n; i++)
		c->host_bf16[i] = qw_f32_to_bf16(src[i]);
	QW_CUDA_TRY(err, cudaMemcpyAsync(dst->data, c->host_bf16, n * 2, cudaMemcpyHostToDevice,
					 c->stream));
	QW_CUDA_TRY(err, cudaStreamSynchronize(c->stream));   /* host_bf16 is reused */
	return QW_OK;
}

static qw_status act_read(qw_backend *be, const qw_act *src, float *dst, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	size_t n = (size_t)src->rows * (size_t)src->cols;
	QW_TRY(cuda_host_room(c, n, err));
	QW_CUDA_TRY(err, cudaMemcpyAsync(c->host_bf16, src->data, n * 2, cudaMemcpyDeviceToHost,
					 c->stream));
	QW_CUDA_TRY(err, cudaStreamSynchronize(c->stream));
	for (size_t i = 0; i < n; i++)
		dst[i] = qw_bf16_to_f32(c->host_bf16[i]);
	return QW_OK;
}

static qw_status act_copy(qw_backend *be, qw_act *dst, const qw_act *src, qw_err *err)
{
	if (dst->cap_rows < src->rows || dst->cols != src->cols)
		return qw_fail(err, QW_E_ARG, "cuda act_copy: destination too small");
	dst->rows = src->rows;
	QW_CUDA_TRY(err, cudaMemcpyAsync(dst->data, src->data,
					 (size_t)src->rows * (size_t)src->cols * 2,
					 cudaMemcpyDeviceToDevice, ctx_of(be)->stream));
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// the step's batch

/* The step's device batch for b (copied now if begin_step has not seen it). */
static qw_status step_of(qw_backend *be, const qw_batch *b, const qw_cuda_batch **out,
			 qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (c->cur != b)
		QW_TRY(cuda_begin_step(be, b, err));
	*out = &c->db;
	return QW_OK;
}

/* A device copy of n host ints (or floats): the step's own when ptr is one of its arrays,
 * else a copy into this op's scratch (each op resets it). */
static qw_status dev_copy(cuda_ctx *c, const void *host, size_t n, size_t elem,
			  const void **out, qw_err *err)
{
	const qw_batch *b = c->cur;
	if (b && elem == 4) {
		const int32_t *p = (const int32_t *)host;
		if (p == b->token_ids) { *out = c->db.token_ids; return QW_OK; }
		if (p == b->positions) { *out = c->db.positions; return QW_OK; }
		if (p == b->logit_rows) { *out = c->db.logit_rows; return QW_OK; }
	}
	size_t bytes = (n * elem + 255) & ~(size_t)255;
	if (c->small_used + bytes > c->small.bytes)   /* begin_op reserved too little */
		return qw_fail(err, QW_E_ARG, "cuda: an op's index arrays outgrew their scratch");
	void *dst = (uint8_t *)c->small.p + c->small_used;
	c->small_used += bytes;
	/* from pageable memory: returns once the source is read; the copy is stream ordered */
	QW_CUDA_TRY(err, cudaMemcpyAsync(dst, host, n * elem, cudaMemcpyHostToDevice, c->stream));
	*out = dst;
	return QW_OK;
}

/* Starts an op that copies up to `bytes` of index arrays (dev_copy). */
static qw_status begin_op(cuda_ctx *c, size_t bytes, qw_err *err)
{
	c->small_used = 0;
	return cuda_grow_dev(c, &c->small, bytes + 1024, err);
}

// ---------------------------------------------------------------------------------------
// ops

static qw_status shape_error(qw_err *err, const char *op, const char *what)
{
	return qw_fail(err, QW_E_ARG, "cuda %s: %s", op, what);
}

/* Ops that read a weight as bf16 refuse any other (an FP8 one: only the linear weights of
 * the text layers are quantized, and matmul reads them). */
static qw_status bf16_weight(const char *op, const qw_tensor *t, qw_err *err)
{
	if (t->dtype == QW_DT_BF16)
		return QW_OK;
	return qw_fail(err, QW_E_ARG, "cuda %s: %s is %s; this op reads BF16 weights only", op,
		       t->name ? t->name : "(unnamed)", qw_dtype_name(t->dtype));
}

/* A vision op's rows within the largest image reserved for. */
static qw_status image_rows(cuda_ctx *c, int rows, const char *op, qw_err *err)
{
	return c->reserved ? qw_step_limits_hold(&c->lim, QW_LIMIT_IMAGE_ROWS, rows, "cuda", op, err)
			   : QW_OK;
}

static qw_status embed(qw_backend *be, qw_act *out, const qw_tensor *table, const int32_t *ids,
		       qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (out->cols != table->shape[1])
		return shape_error(err, "embed", "output width is not the table's");
	QW_TRY(bf16_weight("embed", table, err));
	const void *d_ids;
	QW_TRY(begin_op(c, (size_t)out->rows * 4, err));
	QW_TRY(dev_copy(c, ids, (size_t)out->rows, 4, &d_ids, err));
	return qw_cuda_embed(D16(out), (const uint16_t *)table->data, (const int32_t *)d_ids,
			     out->rows, out->cols, (int)table->shape[0], c->stream, err);
}

static qw_status rmsnorm(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			 float eps, qw_err *err)
{
	if (w->numel != (uint64_t)x->cols || out->cols != x->cols || out->cap_rows < x->rows)
		return shape_error(err, "rmsnorm", "weight or output width differs from the input");
	QW_TRY(bf16_weight("rmsnorm", w, err));
	out->rows = x->rows;
	return qw_cuda_rmsnorm(D16(out), C16(x), (const uint16_t *)w->data, x->rows, x->cols, eps,
			       ctx_of(be)->stream, err);
}

static qw_status add_rmsnorm(qw_backend *be, qw_act *out, qw_act *x, const qw_act *r,
			     const qw_tensor *w, float eps, qw_err *err)
{
	if (x->rows != r->rows || x->cols != r->cols || w->numel != (uint64_t)x->cols ||
	    out->cols != x->cols || out->cap_rows < x->rows || out->data == x->data)
		return shape_error(err, "add_rmsnorm", "operand, weight or output widths differ (or "
				   "the output is x)");
	QW_TRY(bf16_weight("add_rmsnorm", w, err));
	out->rows = x->rows;
	return qw_cuda_add_rmsnorm(D16(out), D16(x), C16(r), (const uint16_t *)w->data, x->rows,
				   x->cols, eps, ctx_of(be)->stream, err);
}

static qw_status head_rmsnorm(qw_backend *be, qw_act *x, const qw_tensor *w, int n_heads,
			      float eps, qw_err *err)
{
	if ((uint64_t)n_heads * w->numel != (uint64_t)x->cols)
		return shape_error(err, "head_rmsnorm", "heads x weight width is not the row width");
	QW_TRY(bf16_weight("head_rmsnorm", w, err));
	return qw_cuda_head_rmsnorm(D16(x), (const uint16_t *)w->data, x->rows, n_heads,
				    (int)w->numel, eps, ctx_of(be)->stream, err);
}

static qw_status rope(qw_backend *be, qw_act *x, const int32_t *positions, int n_heads,
		      int head_dim, const int *mrope_section, float theta, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (n_heads * head_dim != x->cols || head_dim % 2)
		return shape_error(err, "rope", "heads x head_dim is not the row width");
	const void *d_pos;
	QW_TRY(begin_op(c, (size_t)x->rows * 12, err));
	QW_TRY(dev_copy(c, positions, 3 * (size_t)x->rows, 4, &d_pos, err));
	return qw_cuda_rope(D16(x), (const int32_t *)d_pos, x->rows, n_heads, head_dim,
			    mrope_section, theta, c->stream, err);
}

/* out (T, N) = x (T, K) w^T, w (N, K) bf16: gemm.cu, one order of the sums per (N, K) for
 * every T, so a token's bits do not depend on its step; more than 128 rows on the wgmma
 * tiles where the backend opted in (the same bits: setup's self-check). */
static qw_status gemm_bf16(cuda_ctx *c, qw_act *out, const qw_act *x, const void *w, int N,
			   qw_err *err)
{
	qw_gemm_kernel kind = QW_GEMM_AUTO;
	if (c->wgmma_on && qw_cuda_gemm_pick(x->rows, N, x->cols, x->data, w) == QW_GEMM_TILE_L)
		kind = QW_GEMM_WGMMA;
	return qw_cuda_gemm_with(kind, D16(out), C16(x), (const uint16_t *)w, x->rows, N, x->cols,
				 c->stream, err);
}

/* An FP8 linear weight (N, K) as the kernels take it. */
static qw_cuda_fp8_weight fp8_of(const qw_tensor *w)
{
	qw_cuda_fp8_weight f;
	f.q = (const uint8_t *)w->data;
	f.scale = (const float *)w->scale->data;
	f.mats = 1;
	f.rows = (int)w->shape[0];
	f.cols = (int)w->shape[1];
	f.br = w->block[0];
	f.bc = w->block[1];
	return f;
}

/* out = x w^T for an FP8 w: gemm_fp8.cu's W8A16 kernels where they take the weight (one order
 * at every T: batch invariant), except that with QW_CUDA_FP8_GEMM=cublaslt more tokens than
 * the stream takes go to cuBLASLt's FP8 GEMM where it has an algorithm (W8A8 on the FP8
 * tensor cores: faster prefill, not batch invariant); weights gemm_fp8.cu does not take are
 * dequantised into the scratch reserved at upload for the bf16 GEMM, at every T. */
static qw_status matmul_fp8(cuda_ctx *c, qw_act *out, const qw_act *x, const qw_tensor *w,
			    qw_err *err)
{
	int N = (int)w->shape[0], T = x->rows, K = x->cols;
	qw_cuda_fp8_weight f = fp8_of(w);
	bool ours = qw_cuda_gemm_fp8_takes(T, &f, x->data);
	if (c->fp8_lt_on && !(ours && T <= QW_CUDA_FP8_STREAM_MAX_T)) {
		bool lt = false;
		QW_TRY(qw_cuda_fp8_lt_supported(c->fp8_lt, &f, T, &lt, err));
		if (lt) {
			QW_TRY(cuda_grow_dev(c, &c->fp8_act, qw_cuda_fp8_lt_act_bytes(T, K), err));
			c->fp8_stats.fp8_gemms++;
			return qw_cuda_fp8_lt_gemm(c->fp8_lt, D16(out), C16(x), &f, T, c->fp8_act.p,
						   c->fp8_act.bytes, c->stream, err);
		}
		c->fp8_stats.fallbacks++;
	}
	if (ours) {
		c->fp8_stats.streamed++;
		return qw_cuda_gemm_fp8(D16(out), C16(x), &f, T, c->stream, err);
	}
	c->fp8_stats.dequantised++;
	if ((size_t)w->numel * 2 > c->fp8_deq.bytes)   /* upload reserves it: cannot be */
		return qw_fail(err, QW_E_ARG, "cuda matmul: FP8 weight %s (%llu values) is larger than "
			       "the dequantisation scratch reserved at upload (%zu bytes)",
			       w->name ? w->name : "(unnamed)", (unsigned long long)w->numel,
			       c->fp8_deq.bytes);
	QW_TRY(qw_cuda_fp8_dequant((uint16_t *)c->fp8_deq.p, &f, c->stream, err));
	return gemm_bf16(c, out, x, c->fp8_deq.p, N, err);
}

static qw_status matmul(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			const qw_tensor *bias, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (w->ndim != 2 || w->shape[1] != x->cols || w->shape[0] != out->cols ||
	    out->cap_rows < x->rows)
		return shape_error(err, "matmul", "weight does not match input and output widths");
	if (bias)
		QW_TRY(bf16_weight("matmul (bias)", bias, err));
	int N = (int)w->shape[0], T = x->rows;
	out->rows = T;
	if (T == 0)
		return QW_OK;
	if (w->dtype == QW_DT_F8_E4M3) {
		QW_TRY(matmul_fp8(c, out, x, w, err));
	} else {
		QW_TRY(bf16_weight("matmul", w, err));
		QW_TRY(gemm_bf16(c, out, x, w->data, N, err));
	}
	if (bias)
		return qw_cuda_add_bias(D16(out), (const uint16_t *)bias->data, T, N, c->stream, err);
	return QW_OK;
}

static qw_status add(qw_backend *be, qw_act *out, const qw_act *a, const qw_act *b, qw_err *err)
{
	if (a->rows != b->rows || a->cols != b->cols || out->cols != a->cols)
		return shape_error(err, "add", "operand shapes differ");
	out->rows = a->rows;
	return qw_cuda_add(D16(out), C16(a), C16(b), (size_t)a->rows * (size_t)a->cols,
			   ctx_of(be)->stream, err);
}

static qw_status silu_mul(qw_backend *be, qw_act *out, const qw_act *gate, const qw_act *up,
			  qw_err *err)
{
	if (gate->rows != up->rows || gate->cols != up->cols || out->cols != gate->cols)
		return shape_error(err, "silu_mul", "operand shapes differ");
	out->rows = gate->rows;
	return qw_cuda_silu_mul(D16(out), C16(gate), C16(up),
				(size_t)gate->rows * (size_t)gate->cols, ctx_of(be)->stream, err);
}

static qw_status kv_write(qw_backend *be, qw_kv_cache *kv, int layer, const qw_act *k,
			  const qw_act *v, const qw_batch *batch, qw_err *err)
{
	const qw_cuda_batch *db;
	QW_TRY(step_of(be, batch, &db, err));
	qw_cuda_batch b = *db;
	b.block_size = kv->shape.block_size;
	int width = kv->shape.n_kv_heads * kv->shape.head_dim;
	if (k->cols != width || v->cols != width || k->rows != batch->n_tokens)
		return shape_error(err, "kv_write", "K or V does not match the cache's width");
	size_t off = (size_t)layer * kv->layer_elems;
	return qw_cuda_kv_write(kv->k + off, kv->v + off, C16(k), C16(v), &b, width,
				ctx_of(be)->stream, err);
}

static qw_status qk_norm_rope_kv(qw_backend *be, qw_act *q_out, const qw_act *qkv,
				 const qw_tensor *q_norm, const qw_tensor *k_norm,
				 const int32_t *positions, int n_heads, int n_kv_heads, int head_dim,
				 const int *mrope_section, float theta, float eps, qw_kv_cache *kv,
				 int layer, const qw_batch *batch, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	int T = qkv->rows, D = head_dim;
	if (kv->shape.n_kv_heads != n_kv_heads || kv->shape.head_dim != D || layer < 0 ||
	    layer >= kv->shape.n_layers)
		return shape_error(err, "qk_norm_rope_kv", "heads, head_dim or layer not the cache's");
	if (qkv->cols != (n_heads + 2 * n_kv_heads) * D || q_out->cols != n_heads * D ||
	    q_out->cap_rows < T || q_norm->numel != (uint64_t)D || k_norm->numel != (uint64_t)D ||
	    T != batch->n_tokens)
		return shape_error(err, "qk_norm_rope_kv", "qkv, q_out or norm widths do not match "
				   "the heads, or qkv's rows the batch");
	QW_TRY(bf16_weight("qk_norm_rope_kv", q_norm, err));
	QW_TRY(bf16_weight("qk_norm_rope_kv", k_norm, err));
	const qw_cuda_batch *db;
	QW_TRY(step_of(be, batch, &db, err));
	const void *d_pos;
	QW_TRY(begin_op(c, (size_t)T * 12, err));
	QW_TRY(dev_copy(c, positions, 3 * (size_t)T, 4, &d_pos, err));
	q_out->rows = T;
	size_t off = (size_t)layer * kv->layer_elems;
	return qw_cuda_qk_norm_rope_kv(D16(q_out), kv->k + off, kv->v + off, C16(qkv),
				       (const uint16_t *)q_norm->data,
				       (const uint16_t *)k_norm->data, (const int32_t *)d_pos,
				       db->slot, T, n_heads, n_kv_heads, D, mrope_section, theta,
				       eps, c->stream, err);
}

static qw_status attention(qw_backend *be, qw_act *out, const qw_act *q, qw_kv_cache *kv,
			   int layer, const qw_batch *batch, int n_heads, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	const qw_cuda_batch *db;
	QW_TRY(step_of(be, batch, &db, err));
	qw_cuda_batch b = *db;
	b.block_size = kv->shape.block_size;
	int D = kv->shape.head_dim, Hkv = kv->shape.n_kv_heads;
	if (q->cols != n_heads * D || out->cols != q->cols || n_heads % Hkv)
		return shape_error(err, "attention", "query width or head counts do not match");
	size_t ws = qw_cuda_attention_ws_bytes(q->rows, n_heads, D, b.max_kv_len);
	QW_TRY(cuda_grow_dev(c, &c->attn_ws, ws, err));
	out->rows = q->rows;
	size_t off = (size_t)layer * kv->layer_elems;
	return qw_cuda_attention(D16(out), C16(q), kv->k + off, kv->v + off, &b, n_heads, Hkv, D,
				 1.0f / sqrtf((float)D), c->attn_ws.p, c->attn_ws.bytes, c->stream,
				 err);
}

static qw_status gather_rows(qw_backend *be, qw_act *out, const qw_act *x, const int32_t *rows,
			     int n, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (out->cols != x->cols || out->cap_rows < n)
		return shape_error(err, "gather_rows", "output too small");
	const void *d_rows;
	QW_TRY(begin_op(c, (size_t)n * 4, err));
	QW_TRY(dev_copy(c, rows, (size_t)n, 4, &d_rows, err));
	out->rows = n;
	return qw_cuda_gather_rows(D16(out), C16(x), (const int32_t *)d_rows, n, x->cols, x->rows,
				   c->stream, err);
}

static qw_status scatter_rows(qw_backend *be, qw_act *dst, const int32_t *rows, const qw_act *src,
			      bool add_, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (dst->cols != src->cols)
		return shape_error(err, "scatter_rows", "row widths differ");
	const void *d_rows;
	QW_TRY(begin_op(c, (size_t)src->rows * 4, err));
	QW_TRY(dev_copy(c, rows, (size_t)src->rows, 4, &d_rows, err));
	return qw_cuda_scatter_rows(D16(dst), (const int32_t *)d_rows, C16(src), src->rows,
				    src->cols, dst->rows, add_, c->stream, err);
}

static qw_status sample(qw_backend *be, const qw_act *logits, const qw_sampling *params,
			const qw_sample_history *history, int32_t *out_tokens,
			qw_sample_logprobs *out_logprobs, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	QW_TRY(cuda_grow_dev(c, &c->sample_ws, qw_cuda_sample_ws_bytes(logits->rows, logits->cols),
			      err));
	return qw_cuda_sample(out_tokens, out_logprobs, C16(logits), logits->rows, logits->cols,
			      params, history, c->sample_ws.p, c->sample_ws.bytes, c->stream, err);
}

static qw_status layernorm(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			   const qw_tensor *b, float eps, qw_err *err)
{
	if (w->numel != (uint64_t)x->cols || b->numel != (uint64_t)x->cols || out->cols != x->cols)
		return shape_error(err, "layernorm", "weight, bias or output width differs");
	QW_TRY(bf16_weight("layernorm", w, err));
	QW_TRY(bf16_weight("layernorm", b, err));
	out->rows = x->rows;
	return qw_cuda_layernorm(D16(out), C16(x), (const uint16_t *)w->data,
				 (const uint16_t *)b->data, x->rows, x->cols, eps,
				 ctx_of(be)->stream, err);
}

static qw_status gelu(qw_backend *be, qw_act *x, bool tanh_approx, qw_err *err)
{
	return qw_cuda_gelu(D16(x), (size_t)x->rows * (size_t)x->cols, tanh_approx,
			    ctx_of(be)->stream, err);
}

static qw_status rope_2d(qw_backend *be, qw_act *x, const int32_t *pos_rc, int n_heads,
			 int head_dim, float theta, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (n_heads * head_dim != x->cols || head_dim % 4)
		return shape_error(err, "rope_2d", "heads x head_dim is not the row width");
	QW_TRY(image_rows(c, x->rows, "rope_2d", err));
	const void *d_pos;
	QW_TRY(begin_op(c, (size_t)x->rows * 8, err));
	QW_TRY(dev_copy(c, pos_rc, 2 * (size_t)x->rows, 4, &d_pos, err));
	return qw_cuda_rope_2d(D16(x), (const int32_t *)d_pos, x->rows, n_heads, head_dim, theta,
			       c->stream, err);
}

static qw_status segment_attention(qw_backend *be, qw_act *out, const qw_act *q, const qw_act *k,
				   const qw_act *v, const int32_t *seg_start, int n_segs,
				   int n_heads, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	int width = q->cols;
	if (k->cols != width || v->cols != width || out->cols != width || width % n_heads ||
	    seg_start[0] != 0 || seg_start[n_segs] != q->rows)
		return shape_error(err, "segment_attention", "widths or segments do not match");
	QW_TRY(image_rows(c, q->rows, "segment_attention", err));
	int longest = 0;
	for (int s = 0; s < n_segs; s++)
		if (seg_start[s + 1] - seg_start[s] > longest)
			longest = seg_start[s + 1] - seg_start[s];
	const void *d_seg;
	QW_TRY(begin_op(c, ((size_t)n_segs + 1) * 4, err));
	QW_TRY(dev_copy(c, seg_start, (size_t)n_segs + 1, 4, &d_seg, err));
	out->rows = q->rows;
	return qw_cuda_segment_attention(D16(out), C16(q), C16(k), C16(v), (const int32_t *)d_seg,
					 n_segs, longest, q->rows, n_heads, width / n_heads,
					 c->stream, err);
}

static qw_status interp_rows(qw_backend *be, qw_act *out, const qw_tensor *table,
			     const int32_t *idx, const float *w, int taps, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (out->cols != table->shape[1] || taps < 1 || taps > 16)
		return shape_error(err, "interp_rows", "output width differs from the table's");
	QW_TRY(bf16_weight("interp_rows", table, err));
	QW_TRY(image_rows(c, out->rows, "interp_rows", err));
	size_t n = (size_t)out->rows * (size_t)taps;
	const void *d_idx, *d_w;
	QW_TRY(begin_op(c, 2 * n * 4 + 256, err));
	QW_TRY(dev_copy(c, idx, n, 4, &d_idx, err));
	QW_TRY(dev_copy(c, w, n, 4, &d_w, err));
	return qw_cuda_interp_rows(D16(out), (const uint16_t *)table->data, (const int32_t *)d_idx,
				   (const float *)d_w, out->rows, taps, out->cols,
				   (int)table->shape[0], c->stream, err);
}

/* One fused expert tensor (E, d1, d2) as the MoE kernels take it: bf16, or FP8 with its
 * block scales. */
static qw_status expert_weights(const qw_tensor *t, int64_t E, int64_t d1, int64_t d2,
				const void **data, qw_cuda_moe_scales *s, qw_err *err)
{
	const char *name = t->name ? t->name : "(unnamed)";
	if (t->ndim != 3 || t->shape[0] != E || t->shape[1] != d1 || t->shape[2] != d2 || !t->data)
		return qw_fail(err, QW_E_ARG, "cuda moe: %s is not an (%lld, %lld, %lld) tensor on the "
			       "device", name, (long long)E, (long long)d1, (long long)d2);
	*data = t->data;
	*s = (qw_cuda_moe_scales){};
	if (t->dtype == QW_DT_BF16)
		return QW_OK;
	const qw_tensor *sc = t->scale;
	if (t->dtype != QW_DT_F8_E4M3 || !sc || !sc->data || sc->dtype != QW_DT_F32 ||
	    t->block[0] < 1 || t->block[1] < 1 ||
	    sc->numel != (uint64_t)E * (uint64_t)((d1 + t->block[0] - 1) / t->block[0]) *
			     (uint64_t)((d2 + t->block[1] - 1) / t->block[1]))
		return qw_fail(err, QW_E_ARG, "cuda moe: %s is %s; the experts are read as BF16, or "
			       "F8_E4M3 with fp32 block scales", name, qw_dtype_name(t->dtype));
	*s = (qw_cuda_moe_scales){(const float *)sc->data, t->block[0], t->block[1]};
	return QW_OK;
}

static qw_status moe(qw_backend *be, qw_act *out, const qw_act *x, const qw_moe_weights *w,
		     qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	int H = x->cols, E = w->n_experts, k = w->top_k, I = w->inter;
	if (out->cols != H || w->router->shape[0] != E || w->router->shape[1] != H || k < 1 || k > E)
		return shape_error(err, "moe", "router, expert count or widths do not match");
	QW_TRY(bf16_weight("moe (router)", w->router, err));
	if (!w->gate_up || !w->down)   /* re-laying out here would allocate in a step */
		return qw_fail(err, QW_E_ARG, "cuda moe: the layer's experts are per-expert tensors; "
			       "HINT: this backend reads them fused, made once at load by its "
			       "prepare_experts op (qw_stage_model_load calls it)");
	qw_cuda_moe_args a = {};
	QW_TRY(expert_weights(w->gate_up, E, H, 2 * (int64_t)I, &a.gate_up, &a.gate_up_scales, err));
	QW_TRY(expert_weights(w->down, E, I, H, &a.down, &a.down_scales, err));
	a.T = x->rows;
	a.H = H;
	a.E = E;
	a.top_k = k;
	a.I = I;
	a.renormalize = w->renormalize != 0;
	a.x = C16(x);
	a.router = (const uint16_t *)w->router->data;
	a.out = D16(out);
	a.sync = c->moe_sync;
	a.path = w->separate ? QW_CUDA_MOE_PLAIN : c->moe_path;
	QW_TRY(cuda_grow_dev(c, &c->moe_ws, qw_cuda_moe_ws_bytes(x->rows, H, E, k, I), err));
	out->rows = x->rows;
	return qw_cuda_moe(&a, c->moe_ws.p, c->moe_ws.bytes, c->stream, err);
}

// ---------------------------------------------------------------------------------------

extern "C" qw_cuda_fp8_stats qw_cuda_backend_fp8_stats(const qw_backend *be)
{
	return ((const cuda_ctx *)be->ctx)->fp8_stats;
}

extern "C" void *qw_cuda_backend_stream(const qw_backend *be)
{
	return (void *)((const cuda_ctx *)be->ctx)->stream;
}

// ---------------------------------------------------------------------------------------
// what memory.cu allocates, refused once sealed (reserve.cu)

static qw_status upload(qw_backend *be, const qw_tensor *t, const qw_tensor **out, qw_err *err)
{
	QW_TRY(cuda_unsealed(ctx_of(be), t->name ? t->name : "a tensor", err));
	return cuda_upload(be, t, out, err);
}

static qw_status synthesize(qw_backend *be, const qw_tensor *t, uint64_t s0, double mean,
			    double std, const qw_tensor **out, qw_err *err)
{
	QW_TRY(cuda_unsealed(ctx_of(be), t->name ? t->name : "a tensor", err));
	return cuda_synthesize(be, t, s0, mean, std, out, err);
}

static qw_status fuse_rows(qw_backend *be, const qw_tensor *const *parts, int n,
			   const qw_tensor **out, qw_err *err)
{
	QW_TRY(cuda_unsealed(ctx_of(be), "a fused weight", err));
	return cuda_fuse_rows(be, parts, n, out, err);
}

static qw_status kv_alloc(qw_backend *be, const qw_kv_shape *shape, qw_kv_cache **out,
			  qw_err *err)
{
	QW_TRY(cuda_unsealed(ctx_of(be), "a KV cache", err));
	return cuda_kv_alloc(be, shape, out, err);
}

static qw_status prepare_experts(qw_backend *be, const qw_moe_weights *w,
				 const qw_tensor **gate_up, const qw_tensor **down, qw_err *err)
{
	QW_TRY(cuda_unsealed(ctx_of(be), "an MoE layer's experts", err));
	return cuda_prepare_experts(be, w, gate_up, down, err);
}

/* Step graphs name the cache by address: they go with it. */
static void kv_free(qw_backend *be, qw_kv_cache *kv)
{
	cudaStreamSynchronize(ctx_of(be)->stream);
	cuda_drop_graphs(ctx_of(be));
	cuda_kv_free(be, kv);
}

// ---------------------------------------------------------------------------------------

static void destroy(qw_backend *be)
{
	cuda_ctx *c = ctx_of(be);
	if (c) {
		cudaStreamSynchronize(c->stream);
		cuda_drop_graphs(c);
		cuda_free_weights(c);
		qw_cuda_fp8_lt_destroy(c->fp8_lt);
		cudaFree(c->lt_ws);
		cudaFree(c->moe_sync);
		dev_buf *bufs[] = {&c->batch_dev, &c->small, &c->attn_ws, &c->moe_ws, &c->sample_ws,
				   &c->fp8_deq, &c->fp8_act};
		for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
			cudaFree(bufs[i]->p);
		for (int i = 0; i < 2; i++) {
			cudaFreeHost(c->staging[i]);
			if (c->staged[i])
				cudaEventDestroy(c->staged[i]);
		}
		cudaFreeHost(c->batch_host);
		if (c->batch_copied)
			cudaEventDestroy(c->batch_copied);
		if (c->stream)
			cudaStreamDestroy(c->stream);
		free(c->host_bf16);
		free(c);
	}
	free(be);
}

static qw_status setup(cuda_ctx *c, int device, qw_err *err)
{
	c->device = device;
	c->recording = -1;
	QW_CUDA_TRY(err, cudaSetDevice(device));
	QW_CUDA_TRY(err, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
	/* the FP8 tensor-core GEMM for many tokens, when asked for (fp8_gemm.cu), with its own
	 * workspace: no allocations inside cuBLASLt calls */
	const char *fp8_gemm = getenv("QW_CUDA_FP8_GEMM");
	c->fp8_lt_on = c->fp8_stats.cublaslt_on = fp8_gemm && strcmp(fp8_gemm, "cublaslt") == 0;
	if (fp8_gemm && !c->fp8_lt_on && strcmp(fp8_gemm, "dequantise") != 0)
		return qw_fail(err, QW_E_ARG, "QW_CUDA_FP8_GEMM is '%s'; HINT: it takes cublaslt or "
			       "dequantise (the default)", fp8_gemm);
	QW_TRY(qw_cuda_moe_path_parse(getenv("QW_CUDA_MOE"), &c->moe_path, err));
	QW_CUDA_TRY(err, cudaMalloc((void **)&c->moe_sync, QW_CUDA_MOE_SYNC_BYTES));
	QW_CUDA_TRY(err, cudaMemset(c->moe_sync, 0, QW_CUDA_MOE_SYNC_BYTES));
	if (c->fp8_lt_on) {
		QW_CUDA_TRY(err, cudaMalloc(&c->lt_ws, LT_WS_BYTES));
		QW_TRY(qw_cuda_fp8_lt_create(&c->fp8_lt, c->lt_ws, LT_WS_BYTES, err));
	}
	/* the wgmma tiles for prefill GEMMs, when asked for and once they have shown on this GPU
	 * that they give the mma.sync tiles' bits (gemm_wgmma.cu) */
	QW_TRY(qw_cuda_gemm_wgmma_opt_in(getenv("QW_CUDA_WGMMA"), device, c->stream, &c->wgmma_on,
					 err));
	for (int i = 0; i < 2; i++) {
		QW_CUDA_TRY(err, cudaMallocHost((void **)&c->staging[i], STAGING_BYTES));
		QW_CUDA_TRY(err, cudaEventCreateWithFlags(&c->staged[i], cudaEventDisableTiming));
	}
	QW_CUDA_TRY(err, cudaEventCreateWithFlags(&c->batch_copied, cudaEventDisableTiming));
	return QW_OK;
}

extern "C" bool qw_cuda_backend_built(void)
{
	return true;
}

extern "C" qw_status qw_cuda_backend_create(int device, qw_backend **out, qw_err *err)
{
	qw_backend *be = (qw_backend *)calloc(1, sizeof *be);
	cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
	if (!be || !c) {
		free(be);
		free(c);
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	}
	be->ctx = c;
	qw_status st = setup(c, device, err);
	if (st != QW_OK) {
		destroy(be);
		return qw_err_context(err, "cuda backend on GPU %d", device);
	}
	be->name = "cuda";
	be->act_dtype = QW_DT_BF16;
	be->act_alloc = act_alloc;
	be->act_free = act_free;
	be->act_write = act_write;
	be->act_read = act_read;
	be->act_copy = act_copy;
	be->upload = upload;
	be->kv_alloc = kv_alloc;
	be->kv_free = kv_free;
	be->destroy = destroy;
	be->free_memory = cuda_step_free_memory;
	be->reserve = cuda_reserve;
	be->seal = cuda_seal;
	be->begin_step = cuda_begin_step;
	be->graph_begin = cuda_graph_begin;
	be->graph_end = cuda_graph_end;
	be->synthesize = synthesize;
	be->prepare_experts = prepare_experts;
	be->embed = embed;
	be->rmsnorm = rmsnorm;
	be->add_rmsnorm = add_rmsnorm;
	be->head_rmsnorm = head_rmsnorm;
	be->rope = rope;
	be->matmul = matmul;
	be->add = add;
	be->silu_mul = silu_mul;
	be->kv_write = kv_write;
	be->qk_norm_rope_kv = qk_norm_rope_kv;
	be->fuse_rows = fuse_rows;
	be->attention = attention;
	be->moe = moe;
	be->gather_rows = gather_rows;
	be->sample = sample;
	be->layernorm = layernorm;
	be->gelu = gelu;
	be->rope_2d = rope_2d;
	be->segment_attention = segment_attention;
	be->interp_rows = interp_rows;
	be->scatter_rows = scatter_rows;
	*out = be;
	return QW_OK;
}
