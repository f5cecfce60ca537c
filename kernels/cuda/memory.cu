/* memory.cu - what the CUDA backend allocates and owns for a model: weight tensors (uploaded
 * through pinned staging buffers, synthesized on the GPU, fused by rows into one weight with
 * the parts left as views), per-expert layers re-laid out in the fused expert layout, and
 * KV caches.  See backend_ctx.h. */
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/backend_ctx.h"
#include "kernels/cuda/check.h"
#include "loader/dtype.h"

// ---------------------------------------------------------------------------------------
// weight tensors

/* A new owned device tensor with t's shape, bf16, its memory not yet written. */
static qw_status new_tensor(cuda_ctx *c, const qw_tensor *t, owned_tensor **out, qw_err *err)
{
	owned_tensor *o = (owned_tensor *)calloc(1, sizeof *o);
	if (!o)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	o->t = *t;
	o->t.dtype = QW_DT_BF16;
	o->t.nbytes = t->numel * 2;
	o->t.scale = NULL;
	if (cudaMalloc((void **)&o->t.data, o->t.nbytes ? o->t.nbytes : 1) != cudaSuccess) {
		cudaGetLastError();
		free(o);
		size_t free_b = 0, total = 0;
		cudaMemGetInfo(&free_b, &total);
		return qw_fail(err, QW_E_NOMEM, "cuda: out of device memory for %s (%llu bytes; %zu "
			       "MiB free)", t->name, (unsigned long long)t->numel * 2, free_b >> 20);
	}
	o->next = c->tensors;
	c->tensors = o;
	*out = o;
	return QW_OK;
}

qw_status cuda_synthesize(qw_backend *be, const qw_tensor *t, uint64_t s0, double mean,
			  double std, const qw_tensor **out, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	owned_tensor *o;
	QW_TRY(new_tensor(c, t, &o, err));
	*out = &o->t;
	return qw_cuda_fill_normal((uint16_t *)o->t.data, t->numel, s0, mean, std, c->stream, err);
}

/* The owned tensor that t is, or NULL when this backend did not make t. */
static owned_tensor *owner_of(cuda_ctx *c, const qw_tensor *t)
{
	for (owned_tensor *o = c->tensors; o; o = o->next)
		if (&o->t == t)
			return o;
	return NULL;
}

/* Unlinks and frees an owned tensor that nothing views or refers to yet. */
static void drop_tensor(cuda_ctx *c, owned_tensor *gone)
{
	for (owned_tensor **o = &c->tensors; *o; o = &(*o)->next)
		if (*o == gone) {
			*o = gone->next;
			break;
		}
	cudaFree((void *)gone->t.data);
	free(gone->name);
	free(gone);
}

#define FUSE_MAX_PARTS 16

/* Checks the parts cuda_fuse_rows is given; their owners into o, the sum of their rows. */
static qw_status fusable(cuda_ctx *c, const qw_tensor *const *parts, int n, owned_tensor **o,
			 int64_t *rows, qw_err *err)
{
	if (n < 1 || n > FUSE_MAX_PARTS)
		return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: %d parts (1 to %d are taken)", n,
			       FUSE_MAX_PARTS);
	if (c->recording >= 0)
		return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: called while a step is being recorded");
	*rows = 0;
	for (int i = 0; i < n; i++) {
		const qw_tensor *p = parts[i];
		const char *name = p && p->name ? p->name : "(unnamed)";
		o[i] = p ? owner_of(c, p) : NULL;
		if (!o[i])
			return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) is not a tensor this "
				       "backend uploaded or synthesized", i, name);
		if (o[i]->view || o[i]->viewed)
			return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) is already part of "
				       "a fused tensor, or is one", i, name);
		for (int j = 0; j < i; j++)
			if (o[j] == o[i])
				return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) is also part %d",
					       i, name, j);
		if (p->ndim != 2 || p->shape[1] != parts[0]->shape[1] || parts[0]->ndim != 2)
			return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) is %d-D with %lld "
				       "columns; every part must be 2-D with the columns of part 0 (%lld)",
				       i, name, p->ndim, (long long)p->shape[p->ndim > 1 ? 1 : 0],
				       (long long)parts[0]->shape[1]);
		*rows += p->shape[0];
	}
	return QW_OK;
}

/* One tensor of the parts' rows in order; the parts then view their rows of it (their own
 * memory freed), so nothing is held twice and pointers to them stay good. */
qw_status cuda_fuse_rows(qw_backend *be, const qw_tensor *const *parts, int n,
			 const qw_tensor **out, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	owned_tensor *o[FUSE_MAX_PARTS], *f;
	int64_t rows = 0;
	QW_TRY(fusable(c, parts, n, o, &rows, err));
	qw_tensor desc = *parts[0];
	desc.shape[0] = rows;
	desc.numel = (uint64_t)rows * (uint64_t)desc.shape[1];
	size_t name_len = strlen(desc.name ? desc.name : "") + 32;
	char *name = (char *)malloc(name_len);
	if (!name)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	snprintf(name, name_len, "%s + %d more, fused", desc.name ? desc.name : "", n - 1);
	desc.name = name;
	qw_status st = new_tensor(c, &desc, &f, err);
	if (st != QW_OK) {
		free(name);
		return st;
	}
	f->name = name;
	cudaError_t ce = cudaSuccess;
	uint64_t at = 0;
	for (int i = 0; i < n && ce == cudaSuccess; i++) {
		ce = cudaMemcpyAsync((uint8_t *)f->t.data + at, parts[i]->data, o[i]->t.nbytes,
				     cudaMemcpyDeviceToDevice, c->stream);
		at += o[i]->t.nbytes;
	}
	if (ce == cudaSuccess)   /* the old memory is read before it is freed */
		ce = cudaStreamSynchronize(c->stream);
	if (ce != cudaSuccess) {
		qw_fail(err, QW_E_DEVICE, "cuda cuda_fuse_rows: copying %d parts into %s failed: %s", n,
			name, cudaGetErrorString(ce));
		drop_tensor(c, f);   /* frees name too */
		return QW_E_DEVICE;
	}
	cuda_drop_graphs(c);   /* recorded steps may name the parts' old memory */
	void *old[FUSE_MAX_PARTS];
	at = 0;
	for (int i = 0; i < n; i++) {
		old[i] = (void *)o[i]->t.data;
		o[i]->t.data = (const uint8_t *)f->t.data + at;
		o[i]->view = true;
		at += o[i]->t.nbytes;
	}
	f->viewed = true;
	*out = &f->t;
	for (int i = 0; i < n; i++)
		QW_CUDA_TRY(err, cudaFree(old[i]));
	return QW_OK;
}

/* Fills a staging buffer with values [first, first + n) of t as bf16. */
static void stage_values(const qw_tensor *t, uint64_t first, uint64_t n, uint16_t *dst)
{
	if (t->dtype == QW_DT_BF16) {
		memcpy(dst, (const uint8_t *)t->data + first * 2, n * 2);
		return;
	}
	float buf[4096];
	for (uint64_t at = 0; at < n; at += 4096) {
		uint64_t k = n - at < 4096 ? n - at : 4096;
		qw_tensor_read_f32(t, first + at, k, buf);   /* FP8 dequantised here */
		for (uint64_t i = 0; i < k; i++)
			dst[at + i] = qw_f32_to_bf16(buf[i]);
	}
}

/* A bf16 device copy of t.  The two pinned buffers alternate: the host fills one while the
 * GPU copies from the other, so reading the mapping and the PCIe transfer overlap. */
qw_status cuda_upload(qw_backend *be, const qw_tensor *t, const qw_tensor **out, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	owned_tensor *o;
	QW_TRY(new_tensor(c, t, &o, err));
	const uint64_t per = STAGING_BYTES / 2;   /* values a buffer holds */
	for (uint64_t at = 0; at < t->numel; at += per) {
		uint64_t n = t->numel - at < per ? t->numel - at : per;
		int s = c->next_staging;
		c->next_staging ^= 1;
		QW_CUDA_TRY(err, cudaEventSynchronize(c->staged[s]));   /* its last copy is done */
		stage_values(t, at, n, (uint16_t *)c->staging[s]);
		QW_CUDA_TRY(err, cudaMemcpyAsync((uint8_t *)o->t.data + at * 2, c->staging[s], n * 2,
						 cudaMemcpyHostToDevice, c->stream));
		QW_CUDA_TRY(err, cudaEventRecord(c->staged[s], c->stream));
	}
	*out = &o->t;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// experts in the fused layout

/* dst[c * dst_ld + dst_off + r] = src[r * cols + c]: one expert matrix into the fused layout. */
static __global__ void transpose_kernel(__nv_bfloat16 *dst, const __nv_bfloat16 *src, int rows,
					int cols, int dst_ld, int dst_off)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (size_t)rows * cols)
		return;
	int r = (int)(i / cols), col = (int)(i % cols);
	dst[(size_t)col * dst_ld + dst_off + r] = src[i];
}

static qw_status transpose_into(uint16_t *dst, const qw_tensor *src, int dst_ld, int dst_off,
				cudaStream_t stream, qw_err *err)
{
	int rows = (int)src->shape[0], cols = (int)src->shape[1];
	size_t n = (size_t)rows * cols;
	transpose_kernel<<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(
		(__nv_bfloat16 *)dst, (const __nv_bfloat16 *)src->data, rows, cols, dst_ld, dst_off);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}

/* The per-expert layout (Qwen3-MoE text checkpoints) as the fused one the MoE kernels take:
 * made once per layer on first use. */
qw_status cuda_fused_experts(cuda_ctx *c, const qw_moe_weights *w, const uint16_t **gu,
			     const uint16_t **dn, qw_err *err)
{
	for (fused_experts *f = c->fused; f; f = f->next)
		if (f->router == w->router) {
			*gu = f->gate_up;
			*dn = f->down;
			return QW_OK;
		}
	int E = w->n_experts, I = w->inter, H = (int)w->router->shape[1];
	fused_experts *f = (fused_experts *)calloc(1, sizeof *f);
	if (!f)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	size_t each = (size_t)H * 2 * I;
	if (cudaMalloc((void **)&f->gate_up, (size_t)E * each * 2) != cudaSuccess ||
	    cudaMalloc((void **)&f->down, (size_t)E * each / 2 * 2) != cudaSuccess) {
		cudaGetLastError();
		cudaFree(f->gate_up);
		free(f);
		return qw_fail(err, QW_E_NOMEM, "cuda: out of device memory re-laying out experts");
	}
	f->router = w->router;
	f->next = c->fused;
	c->fused = f;
	for (int e = 0; e < E; e++) {
		QW_TRY(transpose_into(f->gate_up + (size_t)e * each, w->gate[e], 2 * I, 0, c->stream, err));
		QW_TRY(transpose_into(f->gate_up + (size_t)e * each, w->up[e], 2 * I, I, c->stream, err));
		QW_TRY(transpose_into(f->down + (size_t)e * (size_t)I * H, w->expert_down[e], H, 0,
				      c->stream, err));
	}
	*gu = f->gate_up;
	*dn = f->down;
	return QW_OK;
}

void cuda_free_weights(cuda_ctx *c)
{
	for (owned_tensor *o = c->tensors, *next; o; o = next) {
		next = o->next;
		if (!o->view)   /* a view's memory goes with its fused tensor */
			cudaFree((void *)o->t.data);
		free(o->name);
		free(o);
	}
	for (fused_experts *f = c->fused, *next; f; f = next) {
		next = f->next;
		cudaFree(f->gate_up);
		cudaFree(f->down);
		free(f);
	}
	c->tensors = NULL;
	c->fused = NULL;
}

// ---------------------------------------------------------------------------------------
// KV caches

qw_status cuda_kv_alloc(qw_backend *be, const qw_kv_shape *shape, qw_kv_cache **out,
			qw_err *err)
{
	qw_kv_cache *kv = (qw_kv_cache *)calloc(1, sizeof *kv);
	if (!kv)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	kv->shape = *shape;
	kv->layer_elems = (size_t)shape->n_blocks * (size_t)shape->block_size *
			  (size_t)shape->n_kv_heads * (size_t)shape->head_dim;
	size_t bytes = kv->layer_elems * (size_t)shape->n_layers * 2;
	if (cudaMalloc(&kv->k, bytes ? bytes : 1) != cudaSuccess ||
	    cudaMalloc(&kv->v, bytes ? bytes : 1) != cudaSuccess) {
		cudaGetLastError();
		cudaFree(kv->k);
		free(kv);
		size_t free_b = 0, total = 0;
		cudaMemGetInfo(&free_b, &total);
		return qw_fail(err, QW_E_NOMEM, "cuda: out of device memory for a KV cache of 2 x %zu "
			       "MiB (%zu MiB free)", bytes >> 20, free_b >> 20);
	}
	*out = kv;
	return QW_OK;
}

void cuda_kv_free(qw_backend *be, qw_kv_cache *kv)
{
	if (!kv)
		return;
	cudaFree(kv->k);
	cudaFree(kv->v);
	free(kv);
}

uint64_t cuda_free_memory(qw_backend *be)
{
	size_t free_b = 0, total = 0;
	if (cudaMemGetInfo(&free_b, &total) != cudaSuccess)
		return 0;
	return free_b > KV_HEADROOM ? free_b - KV_HEADROOM : 0;
}

extern "C" bool qw_cuda_backend_kv_layer(const qw_kv_cache *kv, int layer, void **k, void **v,
					 size_t *bytes)
{
	if (!kv || layer < 0 || layer >= kv->shape.n_layers)
		return false;
	*k = kv->k + (size_t)layer * kv->layer_elems;
	*v = kv->v + (size_t)layer * kv->layer_elems;
	*bytes = kv->layer_elems * 2;
	return true;
}
