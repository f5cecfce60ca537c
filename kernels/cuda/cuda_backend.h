/* cuda_backend.h - the CUDA backend: the op interface (kernels/ops.h) on one GPU.
 *
 * Owns: a qw_backend whose activations are bf16 on the device (act_dtype QW_DT_BF16; math
 * in fp32 inside every kernel), whose weights are device copies of the checkpoint's tensors,
 * bf16 (other float dtypes converted) or FP8 as they are (F8_E4M3 bytes, their block scales
 * fp32, kernels/cuda/kernels.h's qw_cuda_fp8_weight), uploaded through pinned staging buffers
 * so reading the mapping and copying to the GPU overlap, and whose KV cache is one bf16
 * array per layer for K and one for V, (blocks x block_size, Hkv x D).  All work runs in
 * order on one stream; a step's batch is copied to the device once (begin_step).  Dense
 * projections are gemm.cu's (bf16 in, fp32 sums); an FP8 weight is read as it is by
 * gemm_fp8.cu's W8A16 kernels at every T (a partial sum per 128-wide block of k times its
 * scale), or, where they cannot take its shape, dequantised into scratch reserved as it was
 * uploaded for gemm.cu's, or (QW_CUDA_FP8_GEMM=cublaslt) goes to cuBLASLt's FP8 GEMM for
 * more tokens than the stream takes (qw_cuda_fp8_stats below); the other ops are
 * the kernels of kernels/cuda/kernels.h, the optional fused ones included (add_rmsnorm,
 * qk_norm_rope_kv).  Ops other than matmul and moe read bf16 weights only and refuse an FP8
 * one (QW_E_ARG).  Batch invariant (cuBLASLt's FP8 GEMM aside): a token's outputs have the
 * same bits whatever else its step holds (docs/architecture.md, "Batch invariance on CUDA").
 * fuse_rows makes one weight of several (q/k/v for one GEMM): the parts' memory moves into it
 * and they become views of their rows, freed with it; FP8 parts fuse when each is a whole
 * number of block rows (their scales then stack by rows), else QW_E_ARG.  prepare_experts,
 * at load, moves a per-expert MoE layer's experts into the fused layout the MoE kernels
 * read (bf16, or FP8 when they are: read as e4m3 and dequantised in the kernel), freeing the
 * parts, so the moe op allocates nothing; it refuses a layer that was not prepared.  Decode
 * steps can be recorded as CUDA graphs and replayed (graph_begin): a step's block tables are
 * padded to a power-of-two row length and its longest context rounded up to a power of two,
 * so steps of one batch size share a graph for many tokens.
 * reserve sizes every buffer a step uses from the step limits (nothing grows after: a step
 * past them is QW_E_LIMIT) and keeps device memory free for GRAPH_SLOTS step graphs (their
 * size measured as they are recorded); once sealed it allocates nothing, and records a graph
 * only while the memory kept for them holds one more.
 */
#ifndef QW_KERNELS_CUDA_CUDA_BACKEND_H
#define QW_KERNELS_CUDA_CUDA_BACKEND_H

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A backend on GPU `device`. */
qw_status qw_cuda_backend_create(int device, qw_backend **out, qw_err *err);

/* Whether this build has the CUDA backend (false where cuda_stub.c stands in for it).  It
 * touches no GPU and no driver. */
bool qw_cuda_backend_built(void);

/* What the step graphs did so far (for tests and logs). */
typedef struct qw_cuda_graph_stats {
	uint64_t recorded;   /* graphs recorded */
	uint64_t replayed;   /* steps that replayed one */
	uint64_t refused;    /* recordings that failed (those steps ran plainly) */
	uint64_t over_budget;/* recordings not made after seal: the memory kept for graphs was
				spent (those steps ran plainly) */
} qw_cuda_graph_stats;

/* be must be a CUDA backend. */
qw_cuda_graph_stats qw_cuda_backend_graph_stats(const qw_backend *be);

/* Which way matmul took FP8 weights so far (its calls: a replayed step graph makes none).
 * gemm_fp8.cu's W8A16 kernels at any T where they take the shape, else the weight
 * dequantised for the bf16 GEMM; where the environment has QW_CUDA_FP8_GEMM=cublaslt at
 * create, more tokens than the stream takes run cuBLASLt's block-scaled FP8 GEMM (W8A8),
 * falling back to the others where cuBLASLt has no algorithm for the shape. */
typedef struct qw_cuda_fp8_stats {
	uint64_t streamed;      /* GEMMs on gemm_fp8.cu's W8A16 kernels (stream or tiles) */
	uint64_t dequantised;   /* GEMMs on the weight dequantised to bf16 */
	uint64_t fp8_gemms;     /* GEMMs on cuBLASLt's FP8 tensor cores */
	uint64_t fallbacks;     /* asked for cuBLASLt and not had (then one of the above) */
	bool cublaslt_on;       /* QW_CUDA_FP8_GEMM=cublaslt */
} qw_cuda_fp8_stats;

/* be must be a CUDA backend. */
qw_cuda_fp8_stats qw_cuda_backend_fp8_stats(const qw_backend *be);

/* Layer `layer`'s K and V arrays of a KV cache this backend allocated: device pointers to
 * (n_slots, Hkv x D) bf16 each, bytes the size of each.  False when the cache has no such
 * layer.  For tests that fill or read the cache directly. */
bool qw_cuda_backend_kv_layer(const qw_kv_cache *kv, int layer, void **k, void **v,
			      size_t *bytes);

/* What reserve took and seal saw (for tests and logs). */
typedef struct qw_cuda_reservation {
	uint64_t scratch_bytes;  /* the step buffers' device memory (with upload's FP8
				    dequantisation scratch) */
	uint64_t graph_budget;   /* device memory kept free for step graphs */
	uint64_t graph_each;     /* the most one recording took, as measured */
	uint64_t graph_used;     /* what recordings since seal took, summed as measured */
	uint64_t free_at_seal;   /* the device's free memory when sealed */
	bool reserved, sealed;
} qw_cuda_reservation;

/* be must be a CUDA backend. */
qw_cuda_reservation qw_cuda_backend_reservation(const qw_backend *be);

/* The free memory of be's device now (cudaMemGetInfo), 0 if it cannot be read. */
uint64_t qw_cuda_backend_device_free(const qw_backend *be);

/* The stream (a cudaStream_t) all of be's work runs on, for benchmarks that time ops with
 * events. */
void *qw_cuda_backend_stream(const qw_backend *be);

#ifdef __cplusplus
}
#endif

#endif
