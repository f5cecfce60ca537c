/* reserve.cu - the CUDA backend's step memory: the buffers a step grows (attention, MoE and
 * sampling scratch, the step's batch on the device and its pinned host copy, the ops' index
 * arrays, the host's bf16 conversions), sized at reserve from the step limits and never grown
 * after; the memory kept free for step graphs; and the seal, after which the backend
 * allocates nothing.  See backend_ctx.h and kernels/ops.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/backend_ctx.h"
#include "kernels/cuda/check.h"
#include "kernels/step_limits.h"

static const char *buf_name(const cuda_ctx *c, const dev_buf *b)
{
	return b == &c->attn_ws ? "attention scratch" : b == &c->moe_ws ? "MoE scratch"
	       : b == &c->sample_ws ? "sampling scratch" : b == &c->batch_dev ? "the step's batch"
	       : b == &c->fp8_act ? "FP8 activation scratch" : "index-array scratch";
}

static double mib(size_t bytes)
{
	return (double)bytes / (double)(1 << 20);
}

/* A buffer that would grow after reserve. */
static qw_status over(const char *what, size_t need, size_t have, qw_err *err)
{
	return qw_fail(err, QW_E_LIMIT, "cuda: %s: the step needs %.2f MiB, %.2f MiB were reserved "
		       "at load (HINT: nothing grows after load: a step past the limits the stage "
		       "reserved for, max-batch-tokens, max-seqs, max-model-len or max-image-tokens, "
		       "is refused; raise the one it passes and restart)", what, mib(need), mib(have));
}

qw_status cuda_grow_dev(cuda_ctx *c, dev_buf *b, size_t bytes, qw_err *err)
{
	if (bytes <= b->bytes)
		return QW_OK;
	if (c->reserved)
		return over(buf_name(c, b), bytes, b->bytes, err);
	if (c->recording >= 0)   /* graph_begin's first sight runs the step plainly: cannot be */
		return qw_fail(err, QW_E_ARG, "cuda: scratch grew while a step was being recorded");
	size_t want = bytes + bytes / 2;
	cuda_drop_graphs(c);
	if (b->p) {
		QW_CUDA_TRY(err, cudaStreamSynchronize(c->stream));   /* nothing may still use it */
		QW_CUDA_TRY(err, cudaFree(b->p));
		b->p = NULL;
		b->bytes = 0;
	}
	if (cudaMalloc(&b->p, want) != cudaSuccess) {
		cudaGetLastError();
		b->p = NULL;
		return qw_fail(err, QW_E_NOMEM, "cuda: out of device memory for %zu bytes of %s",
			       want, buf_name(c, b));
	}
	b->bytes = want;
	return QW_OK;
}

/* b holding exactly `bytes` (reserve). */
static qw_status size_dev(cuda_ctx *c, dev_buf *b, size_t bytes, qw_err *err)
{
	if (b->bytes == bytes)
		return QW_OK;
	if (b->p) {
		QW_CUDA_TRY(err, cudaStreamSynchronize(c->stream));
		QW_CUDA_TRY(err, cudaFree(b->p));
		b->p = NULL;
		b->bytes = 0;
	}
	if (bytes && cudaMalloc(&b->p, bytes) != cudaSuccess) {
		cudaGetLastError();
		b->p = NULL;
		size_t free_b = 0, total = 0;
		cudaMemGetInfo(&free_b, &total);
		return qw_fail(err, QW_E_NOMEM, "cuda: out of device memory reserving %.2f MiB of %s "
			       "for steps (%.2f MiB free)", mib(bytes), buf_name(c, b), mib(free_b));
	}
	b->bytes = bytes;
	return QW_OK;
}

qw_status cuda_host_room(cuda_ctx *c, size_t n, qw_err *err)
{
	if (n <= c->host_cap)
		return QW_OK;
	/* host memory: it may grow after load, and counts among the stage's host bytes */
	uint16_t *g = (uint16_t *)realloc(c->host_bf16, n * sizeof *g);
	if (!g)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	c->host_bf16 = g;
	c->host_cap = n;
	return QW_OK;
}

qw_status cuda_batch_room(cuda_ctx *c, size_t ints, qw_err *err)
{
	if (ints > c->batch_cap) {
		if (c->reserved)
			return over("the step's pinned batch", ints * 4, c->batch_cap * 4, err);
		cudaFreeHost(c->batch_host);
		c->batch_host = NULL;
		c->batch_cap = 0;
		if (cudaMallocHost((void **)&c->batch_host, ints * 2 * sizeof(int32_t)) != cudaSuccess) {
			cudaGetLastError();
			return qw_fail(err, QW_E_NOMEM, "cuda: no pinned memory for a step's batch");
		}
		c->batch_cap = ints * 2;
	}
	return cuda_grow_dev(c, &c->batch_dev, ints * sizeof(int32_t), err);
}

/* The ops' index arrays (begin_op's bytes + 1024): the text ops copy at most 12 bytes a row
 * (positions), the vision tower's interpolation 32 a patch (4 taps and their weights). */
static size_t small_bytes(const qw_step_limits *l)
{
	size_t text = 12 * (size_t)l->max_tokens, vision = 32 * (size_t)l->vision_rows + 256;
	return (text > vision ? text : vision) + 1024;
}

/* The most input columns of an FP8 weight the backend holds (0: none). */
static int fp8_widest(const cuda_ctx *c)
{
	int64_t k = 0;
	for (const owned_tensor *o = c->tensors; o; o = o->next)
		if (o->t.dtype == QW_DT_F8_E4M3 && o->t.ndim == 2 && o->t.shape[1] > k)
			k = o->t.shape[1];
	return (int)k;
}

/* Every step buffer's device memory (the FP8 dequantisation scratch is upload's; the fused
 * MoE kernel's counters are made with the backend). */
static uint64_t step_buffers(const cuda_ctx *c)
{
	return c->attn_ws.bytes + c->moe_ws.bytes + c->sample_ws.bytes + c->small.bytes +
	       c->batch_dev.bytes + c->fp8_act.bytes + c->fp8_deq.bytes + QW_CUDA_MOE_SYNC_BYTES;
}

uint64_t cuda_graph_budget(const cuda_ctx *c)
{
	if (!c->reserved || !c->lim.graphs)
		return 0;
	uint64_t each = c->graph_each > GRAPH_BYTES_MIN ? c->graph_each : GRAPH_BYTES_MIN;
	return (uint64_t)GRAPH_SLOTS * each;
}

bool cuda_graph_room(const cuda_ctx *c)
{
	uint64_t each = c->graph_each > GRAPH_BYTES_MIN ? c->graph_each : GRAPH_BYTES_MIN;
	return !c->sealed || c->graph_used + each <= cuda_graph_budget(c);
}

qw_status cuda_reserve(qw_backend *be, const qw_step_limits *lim, qw_reserved *out, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	if (c->sealed)
		return qw_sealed_error(err, "cuda", "a reservation");
	if (c->recording >= 0)
		return qw_fail(err, QW_E_ARG, "cuda: reserve called while a step is being recorded");
	const qw_step_limits *l = lim;
	int T = l->max_tokens > 0 ? l->max_tokens : 1;
	int row = cuda_table_row(qw_step_limits_blocks(l));
	size_t ints = cuda_batch_layout_of(T, l->max_seqs, row, l->max_logits).ints;
	size_t attn = l->n_heads > 0 ? qw_cuda_attention_ws_bytes(T, l->n_heads, l->head_dim,
								 cuda_kv_bucket(l->max_context))
				     : 0;
	size_t moe = l->moe_experts > 0 ? qw_cuda_moe_ws_bytes(T, l->hidden, l->moe_experts,
							       l->moe_top_k, l->moe_inter)
					: 0;
	size_t smp = l->vocab > 0 ? qw_cuda_sample_ws_bytes(l->max_logits, l->vocab) : 0;
	/* cuBLASLt's FP8 GEMM quantises a step's activations (QW_CUDA_FP8_GEMM=cublaslt) */
	int fp8_k = c->fp8_lt_on ? fp8_widest(c) : 0;
	size_t fp8 = fp8_k > 0 ? qw_cuda_fp8_lt_act_bytes(T, fp8_k) : 0;
	c->reserved = false;   /* sized now, held from here on */
	cuda_drop_graphs(c);   /* they name the buffers that move */
	QW_TRY(size_dev(c, &c->attn_ws, attn, err));
	QW_TRY(size_dev(c, &c->moe_ws, moe, err));
	QW_TRY(size_dev(c, &c->sample_ws, smp, err));
	QW_TRY(size_dev(c, &c->small, small_bytes(l), err));
	QW_TRY(size_dev(c, &c->batch_dev, ints * sizeof(int32_t), err));
	QW_TRY(size_dev(c, &c->fp8_act, fp8, err));
	if (ints != c->batch_cap) {
		QW_CUDA_TRY(err, cudaEventSynchronize(c->batch_copied));
		cudaFreeHost(c->batch_host);
		c->batch_host = NULL;
		c->batch_cap = 0;
		QW_CUDA_TRY(err, cudaMallocHost((void **)&c->batch_host, ints * sizeof(int32_t)));
		c->batch_cap = ints;
	}
	/* act_write of the largest image's pixels */
	QW_TRY(cuda_host_room(c, (size_t)l->vision_rows * (size_t)l->vision_in, err));
	c->lim = *l;
	c->reserved = true;
	if (out) {
		out->device_bytes = step_buffers(c);
		out->graph_bytes = cuda_graph_budget(c);
		out->host_bytes = c->batch_cap * sizeof(int32_t) + c->host_cap * sizeof(uint16_t);
	}
	return QW_OK;
}

void cuda_seal(qw_backend *be)
{
	cuda_ctx *c = ctx_of(be);
	size_t free_b = 0, total = 0;
	cudaStreamSynchronize(c->stream);
	if (cudaMemGetInfo(&free_b, &total) != cudaSuccess)
		cudaGetLastError();
	c->free_at_seal = free_b;
	c->sealed = true;
}

qw_status cuda_unsealed(const cuda_ctx *c, const char *what, qw_err *err)
{
	return c->sealed ? qw_sealed_error(err, "cuda", what) : QW_OK;
}

uint64_t cuda_step_free_memory(qw_backend *be)
{
	uint64_t free_b = cuda_free_memory(be), graphs = cuda_graph_budget(ctx_of(be));
	return free_b > graphs ? free_b - graphs : 0;
}

extern "C" qw_cuda_reservation qw_cuda_backend_reservation(const qw_backend *be)
{
	const cuda_ctx *c = (const cuda_ctx *)be->ctx;
	qw_cuda_reservation r;
	r.scratch_bytes = step_buffers(c);
	r.graph_budget = cuda_graph_budget(c);
	r.graph_each = c->graph_each;
	r.graph_used = c->graph_used;
	r.free_at_seal = c->free_at_seal;
	r.reserved = c->reserved;
	r.sealed = c->sealed;
	return r;
}

extern "C" uint64_t qw_cuda_backend_device_free(const qw_backend *be)
{
	size_t free_b = 0, total = 0;
	if (cudaSetDevice(((const cuda_ctx *)be->ctx)->device) != cudaSuccess ||
	    cudaMemGetInfo(&free_b, &total) != cudaSuccess) {
		cudaGetLastError();
		return 0;
	}
	return free_b;
}
