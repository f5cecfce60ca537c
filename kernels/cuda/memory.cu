/* memory.cu - what the CUDA backend allocates and owns for a model: weight tensors (uploaded
 * through pinned staging buffers, bf16 or FP8 with their block scales; synthesized on the GPU;
 * fused by rows into one weight with the parts left as views; or made by experts.cu from
 * parts whose memory then goes), the scratch an FP8 weight is dequantised into for a GEMM of
 * many tokens, and KV caches.  See backend_ctx.h. */
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

static bool is_fp8(const qw_tensor *t)
{
	return t->dtype == QW_DT_F8_E4M3;
}

static qw_status no_device_memory(const char *what, const char *name, uint64_t bytes,
				  qw_err *err)
{
	size_t free_b = 0, total = 0;
	cudaMemGetInfo(&free_b, &total);
	return qw_fail(err, QW_E_NOMEM, "cuda: out of device memory for %s%s (%llu bytes; %zu MiB "
		       "free)", what, name ? name : "", (unsigned long long)bytes, free_b >> 20);
}

/* The dequantisation scratch (backend_ctx.h) grown to hold `values` bf16 weights: called as
 * FP8 linear weights are made, at load, so a step never allocates. */
static qw_status reserve_fp8_scratch(cuda_ctx *c, uint64_t values, const char *name,
				     qw_err *err)
{
	size_t bytes = (size_t)values * 2;
	if (bytes <= c->fp8_deq.bytes)
		return QW_OK;
	QW_CUDA_TRY(err, cudaStreamSynchronize(c->stream));   /* nothing may still use it */
	cuda_drop_graphs(c);   /* recorded steps may name it */
	cudaFree(c->fp8_deq.p);
	c->fp8_deq.p = NULL;
	c->fp8_deq.bytes = 0;
	if (cudaMalloc(&c->fp8_deq.p, bytes) != cudaSuccess) {
		cudaGetLastError();
		c->fp8_deq.p = NULL;
		return no_device_memory("the FP8 dequantisation scratch of ", name, bytes, err);
	}
	c->fp8_deq.bytes = bytes;
	return QW_OK;
}

/* A new owned device tensor with t's shape, its memory not yet written: BF16, or FP8 with
 * room for block scales of t->scale's shape when t is FP8. */
static qw_status new_tensor(cuda_ctx *c, const qw_tensor *t, owned_tensor **out, qw_err *err)
{
	/* a linear weight may meet a GEMM of many tokens: room to dequantise it then */
	if (is_fp8(t) && t->ndim == 2)
		QW_TRY(reserve_fp8_scratch(c, t->numel, t->name, err));
	owned_tensor *o = (owned_tensor *)calloc(1, sizeof *o);
	if (!o)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	o->t = *t;
	o->t.scale = NULL;
	if (is_fp8(t)) {
		o->t.nbytes = t->numel;
		o->scale = *t->scale;
		o->scale.dtype = QW_DT_F32;
		o->scale.nbytes = t->scale->numel * 4;
		o->scale.scale = NULL;
		if (cudaMalloc((void **)&o->scale.data, o->scale.nbytes ? o->scale.nbytes : 1) !=
		    cudaSuccess) {
			cudaGetLastError();
			free(o);
			return no_device_memory("the block scales of ", t->name, t->scale->nbytes, err);
		}
		o->t.scale = &o->scale;
	} else {
		o->t.dtype = QW_DT_BF16;
		o->t.nbytes = t->numel * 2;
		o->t.block[0] = o->t.block[1] = 0;
	}
	if (cudaMalloc((void **)&o->t.data, o->t.nbytes ? o->t.nbytes : 1) != cudaSuccess) {
		cudaGetLastError();
		cudaFree((void *)o->scale.data);
		free(o);
		return no_device_memory("", t->name, t->nbytes, err);
	}
	o->next = c->tensors;
	c->tensors = o;
	*out = o;
	return QW_OK;
}

/* An FP8 weight in the form upload gives (the e4m3 codes, its F32 block scales), made as
 * qwen-ckpt export-reduced --quantize fp8 makes them from the same values; t->scale
 * describes the scales, t->block the block. */
static qw_status synthesize_fp8(cuda_ctx *c, const qw_tensor *t, uint64_t s0, double mean,
				double std, const qw_tensor **out, qw_err *err)
{
	const qw_tensor *sd = t->scale;
	int nd = t->ndim, br = t->block[0], bc = t->block[1];
	if (!sd || nd < 2 || br < 1 || bc < 1 || sd->ndim != nd ||
	    sd->shape[nd - 2] != (t->shape[nd - 2] + br - 1) / br ||
	    sd->shape[nd - 1] != (t->shape[nd - 1] + bc - 1) / bc)
		return qw_fail(err, QW_E_ARG, "cuda synthesize: %s is F8_E4M3 but its block scales are "
			       "not described (t->scale of ceil(shape / block), block %d x %d)",
			       t->name ? t->name : "(unnamed)", br, bc);
	owned_tensor *o;
	QW_TRY(new_tensor(c, t, &o, err));
	uint64_t R = (uint64_t)t->shape[nd - 2], C = (uint64_t)t->shape[nd - 1];
	uint64_t M = R != 0 && C != 0 ? t->numel / (R * C) : 0;
	*out = &o->t;
	return qw_cuda_fill_fp8((uint8_t *)o->t.data, (float *)o->scale.data, M, R, C, br, bc, s0,
				mean, std, c->stream, err);
}

qw_status cuda_new_tensor(cuda_ctx *c, const qw_tensor *desc, owned_tensor **out, qw_err *err)
{
	return new_tensor(c, desc, out, err);
}

qw_status cuda_synthesize(qw_backend *be, const qw_tensor *t, uint64_t s0, double mean,
			  double std, const qw_tensor **out, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (is_fp8(t))
		return synthesize_fp8(c, t, s0, mean, std, out, err);
	if (t->dtype != QW_DT_BF16)
		return qw_fail(err, QW_E_ARG, "cuda synthesize: %s is %s; only BF16 and F8_E4M3 tensors "
			       "are made on the GPU", t->name ? t->name : "(unnamed)",
			       qw_dtype_name(t->dtype));
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

owned_tensor *cuda_owner_of(cuda_ctx *c, const qw_tensor *t)
{
	return owner_of(c, t);
}

/* Frees an owned tensor's device memory, unless it is a view into a fused tensor's. */
static void free_device(owned_tensor *o)
{
	if (o->view)
		return;
	cudaFree((void *)o->t.data);
	cudaFree((void *)o->scale.data);
}

void cuda_release_moved(owned_tensor *o)
{
	free_device(o);
	o->t.data = NULL;
	o->scale.data = NULL;
	o->moved = true;
}

/* Unlinks and frees an owned tensor that nothing views or refers to yet. */
static void drop_tensor(cuda_ctx *c, owned_tensor *gone)
{
	for (owned_tensor **o = &c->tensors; *o; o = &(*o)->next)
		if (*o == gone) {
			*o = gone->next;
			break;
		}
	free_device(gone);
	free(gone->name);
	free(gone);
}

void cuda_drop_tensor(cuda_ctx *c, owned_tensor *o)
{
	drop_tensor(c, o);
}

#define FUSE_MAX_PARTS 16

/* Whether part p (number i) can join part 0's rows as FP8 goes: both FP8 or neither; FP8
 * parts of one block, each a whole number of block rows, so their scales stack by rows. */
static qw_status fusable_fp8(const qw_tensor *p, const qw_tensor *p0, int i, const char *name,
			     qw_err *err)
{
	if (is_fp8(p) != is_fp8(p0))
		return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) is %s, part 0 is %s",
			       i, name, qw_dtype_name(p->dtype), qw_dtype_name(p0->dtype));
	if (!is_fp8(p))
		return QW_OK;
	if (p->block[0] != p0->block[0] || p->block[1] != p0->block[1])
		return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) has %d x %d blocks, "
			       "part 0 %d x %d", i, name, p->block[0], p->block[1], p0->block[0],
			       p0->block[1]);
	if (p->shape[0] % p->block[0])
		return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: FP8 part %d (%s) has %lld rows, not "
			       "a multiple of its blocks' %d (its scales would not stack)", i, name,
			       (long long)p->shape[0], p->block[0]);
	return QW_OK;
}

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
		if (o[i]->view || o[i]->viewed || o[i]->moved)
			return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) is already part of "
				       "a fused tensor, or is one, or moved into one", i, name);
		for (int j = 0; j < i; j++)
			if (o[j] == o[i])
				return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) is also part %d",
					       i, name, j);
		if (p->ndim != 2 || p->shape[1] != parts[0]->shape[1] || parts[0]->ndim != 2)
			return qw_fail(err, QW_E_ARG, "cuda cuda_fuse_rows: part %d (%s) is %d-D with %lld "
				       "columns; every part must be 2-D with the columns of part 0 (%lld)",
				       i, name, p->ndim, (long long)p->shape[p->ndim > 1 ? 1 : 0],
				       (long long)parts[0]->shape[1]);
		QW_TRY(fusable_fp8(p, parts[0], i, name, err));
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
	qw_tensor desc = *parts[0], scale_desc;
	desc.shape[0] = rows;
	desc.numel = (uint64_t)rows * (uint64_t)desc.shape[1];
	if (is_fp8(&desc)) {   /* whole blocks of rows: the scales stack by rows */
		scale_desc = *parts[0]->scale;
		scale_desc.shape[0] = rows / desc.block[0];
		scale_desc.numel = (uint64_t)scale_desc.shape[0] * (uint64_t)scale_desc.shape[1];
		desc.scale = &scale_desc;
	}
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
	uint64_t at = 0, s_at = 0;
	for (int i = 0; i < n && ce == cudaSuccess; i++) {
		ce = cudaMemcpyAsync((uint8_t *)f->t.data + at, parts[i]->data, o[i]->t.nbytes,
				     cudaMemcpyDeviceToDevice, c->stream);
		if (ce == cudaSuccess && o[i]->scale.nbytes)
			ce = cudaMemcpyAsync((uint8_t *)f->scale.data + s_at, o[i]->scale.data,
					     o[i]->scale.nbytes, cudaMemcpyDeviceToDevice, c->stream);
		at += o[i]->t.nbytes;
		s_at += o[i]->scale.nbytes;
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
	owned_tensor old[FUSE_MAX_PARTS];
	at = s_at = 0;
	for (int i = 0; i < n; i++) {
		old[i] = *o[i];
		o[i]->t.data = (const uint8_t *)f->t.data + at;
		if (o[i]->scale.nbytes)
			o[i]->scale.data = (const uint8_t *)f->scale.data + s_at;
		o[i]->view = true;
		at += o[i]->t.nbytes;
		s_at += o[i]->scale.nbytes;
	}
	f->viewed = true;
	*out = &f->t;
	for (int i = 0; i < n; i++)
		free_device(&old[i]);
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// uploads

/* Fills a staging buffer with elements [first, first + n) of t as the device keeps them. */
typedef qw_status (*stage_fn)(const qw_tensor *t, uint64_t first, uint64_t n, void *dst,
			      qw_err *err);

/* Values as bf16 (other float dtypes converted, round to nearest even). */
static qw_status stage_bf16(const qw_tensor *t, uint64_t first, uint64_t n, void *dst_,
			    qw_err *err)
{
	uint16_t *dst = (uint16_t *)dst_;
	if (t->dtype == QW_DT_BF16) {
		memcpy(dst, (const uint8_t *)t->data + first * 2, n * 2);
		return QW_OK;
	}
	float buf[4096];
	for (uint64_t at = 0; at < n; at += 4096) {
		uint64_t k = n - at < 4096 ? n - at : 4096;
		qw_tensor_read_f32(t, first + at, k, buf);
		for (uint64_t i = 0; i < k; i++)
			dst[at + i] = qw_f32_to_bf16(buf[i]);
	}
	return QW_OK;
}

/* Block scales as fp32 (a checkpoint's may be bf16: widened exactly). */
static qw_status stage_f32(const qw_tensor *t, uint64_t first, uint64_t n, void *dst,
			   qw_err *err)
{
	qw_tensor_read_f32(t, first, n, (float *)dst);
	return QW_OK;
}

/* FP8 bytes as they are, refusing the NaN codes (0x7f, 0xff): the GPU's dequantisation
 * (e4m3x8.h) does not look for them. */
static qw_status stage_fp8(const qw_tensor *t, uint64_t first, uint64_t n, void *dst,
			   qw_err *err)
{
	const uint8_t *b = (const uint8_t *)dst;
	memcpy(dst, (const uint8_t *)t->data + first, n);
	const uint64_t low7 = 0x7f7f7f7f7f7f7f7full, ones = 0x0101010101010101ull;
	for (uint64_t i = 0; i < n; i += 8) {
		uint64_t w = 0;
		memcpy(&w, b + i, n - i < 8 ? n - i : 8);
		if ((((w & low7) + ones) & ~low7) == 0)   /* no byte's low seven bits all set */
			continue;
		for (uint64_t j = i; j < n && j < i + 8; j++)
			if ((b[j] & 0x7f) == 0x7f)
				return qw_fail(err, QW_E_WEIGHTS, "cuda upload: %s holds a NaN (e4m3 byte "
					       "0x%02x) at element %llu; HINT: FP8 weights must be "
					       "finite: the checkpoint is damaged, re-download or "
					       "re-quantize it", t->name ? t->name : "(unnamed)", b[j],
					       (unsigned long long)(first + j));
	}
	return QW_OK;
}

/* dst (device) = the numel elements of t as `stage` makes them, elem bytes each.  The two
 * pinned buffers alternate: the host fills one while the GPU copies from the other, so
 * reading the mapping and the PCIe transfer overlap. */
static qw_status staged_copy(cuda_ctx *c, void *dst, const qw_tensor *t, size_t elem,
			     stage_fn stage, qw_err *err)
{
	const uint64_t per = STAGING_BYTES / elem;   /* elements a buffer holds */
	for (uint64_t at = 0; at < t->numel; at += per) {
		uint64_t n = t->numel - at < per ? t->numel - at : per;
		int s = c->next_staging;
		c->next_staging ^= 1;
		QW_CUDA_TRY(err, cudaEventSynchronize(c->staged[s]));   /* its last copy is done */
		QW_TRY(stage(t, at, n, c->staging[s], err));
		QW_CUDA_TRY(err, cudaMemcpyAsync((uint8_t *)dst + at * elem, c->staging[s], n * elem,
						 cudaMemcpyHostToDevice, c->stream));
		QW_CUDA_TRY(err, cudaEventRecord(c->staged[s], c->stream));
	}
	return QW_OK;
}

/* An FP8 tensor's block scales and block against its shape (the loader checked them; this
 * backend reads them without bounds). */
static qw_status check_fp8(const qw_tensor *t, qw_err *err)
{
	const char *name = t->name ? t->name : "(unnamed)";
	const qw_tensor *s = t->scale;
	if (!s || !s->data || t->ndim < 2 || t->block[0] < 1 || t->block[1] < 1)
		return qw_fail(err, QW_E_ARG, "cuda upload: %s is F8_E4M3 %d-D without block scales "
			       "(%d x %d blocks); HINT: FP8 weights load with their *_scale_inv "
			       "through the weight binder", name, t->ndim, t->block[0], t->block[1]);
	uint64_t R = (uint64_t)t->shape[t->ndim - 2], C = (uint64_t)t->shape[t->ndim - 1];
	uint64_t mats = R && C ? t->numel / (R * C) : 0;
	uint64_t want = mats * ((R + t->block[0] - 1) / t->block[0]) *
			((C + t->block[1] - 1) / t->block[1]);
	if (s->numel != want || (s->dtype != QW_DT_F32 && s->dtype != QW_DT_BF16))
		return qw_fail(err, QW_E_ARG, "cuda upload: %s's scales are %llu %s values, expected "
			       "%llu F32 (one per %d x %d block)", name, (unsigned long long)s->numel,
			       qw_dtype_name(s->dtype), (unsigned long long)want, t->block[0],
			       t->block[1]);
	return QW_OK;
}

/* A device copy of t: FP8 (F8_E4M3) kept as it is, with its block scales as fp32 (no bf16
 * copy: kernels dequantise as they read); any other float dtype as bf16. */
qw_status cuda_upload(qw_backend *be, const qw_tensor *t, const qw_tensor **out, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (is_fp8(t))
		QW_TRY(check_fp8(t, err));
	owned_tensor *o;
	QW_TRY(new_tensor(c, t, &o, err));
	if (is_fp8(t)) {
		QW_TRY(staged_copy(c, (void *)o->t.data, t, 1, stage_fp8, err));
		QW_TRY(staged_copy(c, (void *)o->scale.data, t->scale, 4, stage_f32, err));
	} else {
		QW_TRY(staged_copy(c, (void *)o->t.data, t, 2, stage_bf16, err));
	}
	*out = &o->t;
	return QW_OK;
}

void cuda_free_weights(cuda_ctx *c)
{
	for (owned_tensor *o = c->tensors, *next; o; o = next) {
		next = o->next;
		free_device(o);   /* a view's memory goes with its fused tensor */
		free(o->name);
		free(o);
	}
	c->tensors = NULL;
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
