/* kernels.h - the CUDA backend's kernels, as C-callable launchers: what the op table in
 * backend.cu calls.
 *
 * Owns: the launchers' contracts.  Every pointer is a device pointer unless said otherwise.
 * Activations are row-major bf16 (passed as uint16_t bit patterns, so C code can include
 * this header); weights are bf16 unless said; math is fp32 inside every kernel.  A launcher
 * enqueues on `stream` and returns without waiting for the GPU, after checking the launch
 * (cudaGetLastError); it returns QW_E_ARG for shapes it cannot take, QW_E_DEVICE for a CUDA
 * failure, with err naming it.  Nothing here allocates device memory per call: scratch comes
 * from the caller (the *_ws_bytes functions say how much).
 *
 * Files: attention.cu (KV-cache writes, paged attention, the vision tower's attention within
 * segments), moe.cu (routing and experts; their grouped GEMM, bf16 or FP8, in moe_gemm.cu),
 * gemm.cu (dense projections; gemm_wgmma.cu their tile on Hopper's wgmma), gemm_fp8.cu
 * (dense projections on FP8 weights, W8A16), fp8_gemm.cu (FP8 weights dequantised to bf16,
 * or cuBLASLt's FP8 tensor-core GEMM), few_rows_gemm.cu (the earlier decode kernels, kept for benchmarks),
 * sample.cu (greedy and seeded sampling), elementwise.cu (norms, rotary, SwiGLU, GELU,
 * gathers, and the fused add + norm and q/k norm + rotary + KV write), checksum.cu (the
 * hand-over checksum's chunk hashes), backend.cu (the op table; memory.cu, experts.cu and
 * step_graphs.cu with it).
 */
#ifndef QW_KERNELS_CUDA_KERNELS_H
#define QW_KERNELS_CUDA_KERNELS_H

#include <cuda_runtime.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "loader/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One step's batch on the device (backend.cu copies qw_batch there once a step).  The tokens
 * of one sequence are consecutive rows in increasing kv_index order: sequence s owns rows
 * [seq_start[s], seq_start[s + 1]). */
typedef struct qw_cuda_batch {
	int n_tokens;               /* T */
	int n_seqs;
	int max_blocks;             /* row length of block_tables */
	int block_size;             /* tokens per KV block */
	int max_kv_len;             /* the largest kv_index + 1 of the step (host-known) */
	int max_seq_tokens;         /* the most rows one sequence has in the step (host-known) */
	const int32_t *token_ids;   /* (T,) */
	const int32_t *positions;   /* (T, 3) */
	const int32_t *seq;         /* (T,) */
	const int32_t *kv_index;    /* (T,) */
	const int32_t *slot;        /* (T,) */
	const int32_t *seq_start;   /* (n_seqs + 1,) */
	const int32_t *block_tables;/* (n_seqs, max_blocks) */
	const int32_t *logit_rows;  /* (n_logits,) */
	int n_logits;
} qw_cuda_batch;

// -- attention.cu ------------------------------------------------------------------------

/* k, v (T, width) into one layer's cache (n_slots, width) at rows slot[t]. */
qw_status qw_cuda_kv_write(uint16_t *k_cache, uint16_t *v_cache, const uint16_t *k,
			   const uint16_t *v, const qw_cuda_batch *b, int width,
			   cudaStream_t stream, qw_err *err);

/* out (T, Hq*D) = causal GQA attention of each token over its sequence's cache entries
 * 0..kv_index through its block table (one layer's cache, (n_slots, Hkv*D) for K and V),
 * softmax in fp32 with scale.  ws: qw_cuda_attention_ws_bytes of scratch. */
size_t qw_cuda_attention_ws_bytes(int max_tokens, int n_heads, int head_dim, int max_kv_len);
qw_status qw_cuda_attention(uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
			    const uint16_t *v_cache, const qw_cuda_batch *b, int n_heads,
			    int n_kv_heads, int head_dim, float scale, void *ws, size_t ws_bytes,
			    cudaStream_t stream, qw_err *err);

/* out (T, H*D): full (non-causal) attention among the rows of each segment [seg_start[i],
 * seg_start[i+1]) (seg_start on the device, n_segs + 1 entries; max_seg the longest), q, k,
 * v (T, H*D), scale D^-0.5.  The vision tower's. */
qw_status qw_cuda_segment_attention(uint16_t *out, const uint16_t *q, const uint16_t *k,
				    const uint16_t *v, const int32_t *seg_start, int n_segs,
				    int max_seg, int T, int n_heads, int head_dim,
				    cudaStream_t stream, qw_err *err);

// -- moe.cu --------------------------------------------------------------------------------

/* FP8 expert weights' block scales: the weights are float8_e4m3fn bytes and each block of
 * `rows` x `cols` of a matrix (rows along its input dimension K, columns along its output
 * columns, the last block of each partial) has one fp32 scale s, the weight being
 * bf16_rn(e4m3(q) * s) (an fp32 multiply rounded once to bf16: the FP8 contract's
 * dequantisation).  s NULL: the weights are bf16. */
typedef struct qw_cuda_moe_scales {
	const float *s;   /* (E, ceil(K / rows), ceil(cols of the matrix / cols)) */
	int rows;         /* >= 1 */
	int cols;         /* a multiple of 16 */
} qw_cuda_moe_scales;

/* How qw_cuda_moe runs the block (moe.cu's header):
 *   AUTO   the fused decode kernel (moe_fused.cu) where it applies (a small batch: T <= 8,
 *          E <= 256, T * top_k <= 256; a sync buffer; a GPU with the shared memory it
 *          takes), else the plain path;
 *   PLAIN  routing, the two grouped GEMMs and the combine as separate kernels, always;
 *   FUSED  the fused kernel, or QW_E_ARG saying why it does not apply.
 * Both give the same bits for the same inputs. */
typedef enum qw_cuda_moe_path {
	QW_CUDA_MOE_AUTO = 0,
	QW_CUDA_MOE_PLAIN,
	QW_CUDA_MOE_FUSED,
} qw_cuda_moe_path;

/* The path named name (the environment's QW_CUDA_MOE): plain (or NULL: the default),
 * auto or fused. */
qw_status qw_cuda_moe_path_parse(const char *name, qw_cuda_moe_path *path, qw_err *err);

/* The fused path's counters: a device buffer of this many bytes, zero before its first use
 * (cudaMemset), which every fused run leaves zero again (its last block resets them), so
 * a run recorded in a CUDA graph replays without a memset.  Runs on one buffer must be
 * ordered (one stream); a run that fails on the GPU may leave it dirty: zero it again. */
#define QW_CUDA_MOE_SYNC_BYTES 4096

/* The MoE block of one layer for T tokens, fused (hub) expert layout:
 * router (E, H); gate_up (E, H, 2I) input-major, gate columns [0, I), up [I, 2I);
 * down (E, I, H) input-major.  Per token: router logits in fp32, softmax, top-k by
 * probability (lowest id on ties), divided by their sum when renormalize; each chosen
 * expert's silu(x Wg) * (x Wu) Wd, weighted, summed in fp32, stored bf16.  Each of gate_up
 * and down is bf16, or FP8 with its block scales (W8A16: dequantised to bf16 as the kernel
 * reads it, so the output has the bits of the bf16 weights bf16_rn(e4m3 * s)); FP8 weights
 * may hold no NaN code (0x7f, 0xff: the upload refuses them). */
typedef struct qw_cuda_moe_args {
	int T, H, E, top_k, I;
	bool renormalize;
	const uint16_t *x;          /* (T, H) */
	const uint16_t *router;     /* (E, H) */
	const void *gate_up;        /* (E, H, 2I) bf16, or e4m3 with gate_up_scales */
	const void *down;           /* (E, I, H) bf16, or e4m3 with down_scales */
	qw_cuda_moe_scales gate_up_scales, down_scales;   /* .s NULL: bf16 */
	uint16_t *out;              /* (T, H) */
	uint32_t *sync;             /* the fused path's counters (below); NULL: plain path only */
	qw_cuda_moe_path path;      /* which path runs (below); 0: AUTO */
} qw_cuda_moe_args;

size_t qw_cuda_moe_ws_bytes(int max_tokens, int H, int E, int top_k, int I);
qw_status qw_cuda_moe(const qw_cuda_moe_args *a, void *ws, size_t ws_bytes, cudaStream_t stream,
		      qw_err *err);

// -- sample.cu -----------------------------------------------------------------------------

/* One token per row of logits (rows, V) bf16, each row with its own parameters and
 * history (host arrays; history NULL: no row has one), by the rule of kernels/sample.h:
 * the penalties of a row with a history on its logits in fp32, then greedy (argmax, lowest
 * id on ties) when temperature is 0, else temperature, min-p, top-k, top-p and one draw with
 * qw_sample_uniform(seed, step), walking ids in order when top-k and top-p are off, else in
 * descending probability; the log-probabilities of the rows that ask into lp_host (rows,)
 * (NULL when none asks; the other rows' entries are left undefined).  out_host (rows,) and
 * lp_host are written before this returns (it waits for the stream).  ws:
 * qw_cuda_sample_ws_bytes, a function of the rows and V alone (the histories go through it a
 * few rows at a time). */
size_t qw_cuda_sample_ws_bytes(int max_rows, int V);
qw_status qw_cuda_sample(int32_t *out_host, qw_sample_logprobs *lp_host, const uint16_t *logits,
			 int rows, int V, const qw_sampling *params,
			 const qw_sample_history *history, void *ws, size_t ws_bytes,
			 cudaStream_t stream, qw_err *err);

// -- elementwise.cu ------------------------------------------------------------------------

/* out (T, H) = table[ids] (an id outside [0, V) gives a NaN row). */
qw_status qw_cuda_embed(uint16_t *out, const uint16_t *table, const int32_t *ids, int T,
			int H, int V, cudaStream_t stream, qw_err *err);
/* out (n, cols) = x[rows] (x has x_rows rows; an index outside gives a NaN row). */
qw_status qw_cuda_gather_rows(uint16_t *out, const uint16_t *x, const int32_t *rows, int n,
			      int cols, int x_rows, cudaStream_t stream, qw_err *err);
/* dst[rows[i]] = src[i] (or +=) for i < n. */
qw_status qw_cuda_scatter_rows(uint16_t *dst, const int32_t *rows, const uint16_t *src, int n,
			       int cols, int dst_rows, bool add, cudaStream_t stream, qw_err *err);
/* out = x * rsqrt(mean(x^2) + eps) * w per row (out may be x). */
qw_status qw_cuda_rmsnorm(uint16_t *out, const uint16_t *x, const uint16_t *w, int rows,
			  int cols, float eps, cudaStream_t stream, qw_err *err);
/* x += r (stored rounded to bf16), then out = rmsnorm of the rounded x, per row: the bits of
 * qw_cuda_add then qw_cuda_rmsnorm.  out is not x. */
qw_status qw_cuda_add_rmsnorm(uint16_t *out, uint16_t *x, const uint16_t *r, const uint16_t *w,
			      int rows, int cols, float eps, cudaStream_t stream, qw_err *err);
/* The same per head of head_dim values, in place, w (head_dim,). */
qw_status qw_cuda_head_rmsnorm(uint16_t *x, const uint16_t *w, int rows, int n_heads,
			       int head_dim, float eps, cudaStream_t stream, qw_err *err);
/* One layer's q/k norms, M-RoPE and KV-cache write in one launch.  qkv (T, (Hq + 2 Hkv) D)
 * holds rows [q | k | v]; q_out (T, Hq D) = rope(head_rmsnorm(q, q_norm)); rows slot[t] of
 * one layer's k_cache and v_cache ((n_slots, Hkv D)) = rope(head_rmsnorm(k, k_norm)) and v
 * (a negative slot: no cache row).  positions (T, 3) and slot (T,) on the device,
 * mrope_section on the host; head_dim even, at most 256.  The bits of qw_cuda_head_rmsnorm,
 * qw_cuda_rope and qw_cuda_kv_write on q, k and v apart. */
qw_status qw_cuda_qk_norm_rope_kv(uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache,
				  const uint16_t *qkv, const uint16_t *q_norm,
				  const uint16_t *k_norm, const int32_t *positions,
				  const int32_t *slot, int T, int n_heads, int n_kv_heads,
				  int head_dim, const int *mrope_section, float theta, float eps,
				  cudaStream_t stream, qw_err *err);
qw_status qw_cuda_layernorm(uint16_t *out, const uint16_t *x, const uint16_t *w,
			    const uint16_t *b, int rows, int cols, float eps, cudaStream_t stream,
			    qw_err *err);
/* Interleaved M-RoPE in place (kernels/ops.h); positions (T, 3); mrope_section on the host. */
qw_status qw_cuda_rope(uint16_t *x, const int32_t *positions, int T, int n_heads, int head_dim,
		       const int *mrope_section, float theta, cudaStream_t stream, qw_err *err);
/* The vision tower's 2-D rotary in place; pos_rc (T, 2). */
qw_status qw_cuda_rope_2d(uint16_t *x, const int32_t *pos_rc, int T, int n_heads, int head_dim,
			  float theta, cudaStream_t stream, qw_err *err);
qw_status qw_cuda_add(uint16_t *out, const uint16_t *a, const uint16_t *b, size_t n,
		      cudaStream_t stream, qw_err *err);
/* x (rows, cols) += bias (cols,) */
qw_status qw_cuda_add_bias(uint16_t *x, const uint16_t *bias, int rows, int cols,
			   cudaStream_t stream, qw_err *err);
/* out = silu(gate) * up over n values. */
qw_status qw_cuda_silu_mul(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n,
			   cudaStream_t stream, qw_err *err);
qw_status qw_cuda_gelu(uint16_t *x, size_t n, bool tanh_approx, cudaStream_t stream,
		       qw_err *err);
/* out[r] = sum over k < taps of w[r][k] * table[idx[r][k]]; idx, w (rows, taps) on the
 * device; table (table_rows, cols). */
qw_status qw_cuda_interp_rows(uint16_t *out, const uint16_t *table, const int32_t *idx,
			      const float *w, int rows, int taps, int cols, int table_rows,
			      cudaStream_t stream, qw_err *err);

// -- fp8_gemm.cu ----------------------------------------------------------------------------

/* An FP8 weight on the device as the backend keeps it (memory.cu): float8_e4m3fn bytes and
 * an fp32 scale per block of its last two dims; value = e4m3(q) * scale[block], dequantised
 * (where a kernel dequantises) as bf16_rn(e4m3(q) * scale) (e4m3x8.h); gemm_fp8.cu scales a
 * block's sum instead.  Blocks at the right and bottom edges may be partial. */
typedef struct qw_cuda_fp8_weight {
	const uint8_t *q;        /* (mats, rows, cols) e4m3 */
	const float *scale;      /* (mats, ceil(rows / br), ceil(cols / bc)) */
	int mats, rows, cols;    /* mats: 1 for a linear weight */
	int br, bc;              /* rows and columns of a block */
} qw_cuda_fp8_weight;

/* out (mats, rows, cols) bf16 = w dequantised. */
qw_status qw_cuda_fp8_dequant(uint16_t *out, const qw_cuda_fp8_weight *w, cudaStream_t stream,
			      qw_err *err);

/* cuBLASLt's block-scaled FP8 GEMM: a handle and the plans (descriptors, the heuristic's
 * algorithm) of the shapes it has seen, using the caller's workspace (ws_bytes at ws, on
 * the stream the GEMMs run on). */
typedef struct qw_cuda_fp8_lt qw_cuda_fp8_lt;
qw_status qw_cuda_fp8_lt_create(qw_cuda_fp8_lt **out, void *ws, size_t ws_bytes, qw_err *err);
void qw_cuda_fp8_lt_destroy(qw_cuda_fp8_lt *lt);
/* Whether cuBLASLt has an algorithm for T tokens of w here (the heuristic, asked once per
 * shape): sm_90 or later, a cuBLAS with block scaling (12.9+), 128 x 128 blocks, K a multiple
 * of 16 in a multiple of 4 blocks, N a multiple of 8. */
qw_status qw_cuda_fp8_lt_supported(qw_cuda_fp8_lt *lt, const qw_cuda_fp8_weight *w, int T,
				   bool *yes, qw_err *err);
/* Scratch for T tokens of K quantised activations (e4m3, and a scale per token and 128). */
size_t qw_cuda_fp8_lt_act_bytes(int T, int K);
/* out (T, N) = x (T, K) w^T on FP8 tensor cores: x quantised per token per 128 columns
 * (scale amax / 448) into act (256-byte aligned), fp32 accumulation of the scaled block
 * products (W8A8: activations carry e4m3's 2^-4 steps).  QW_E_ARG, nothing run, where
 * qw_cuda_fp8_lt_supported says no. */
qw_status qw_cuda_fp8_lt_gemm(qw_cuda_fp8_lt *lt, uint16_t *out, const uint16_t *x,
			      const qw_cuda_fp8_weight *w, int T, void *act, size_t act_bytes,
			      cudaStream_t stream, qw_err *err);

// -- gemm.cu --------------------------------------------------------------------------------

/* out (T, N) = x (T, K) w^T, w (N, K) bf16 (the checkpoint's [out, in] layout), fp32 sums,
 * bf16 out, for any T: the backend's dense projections.  Batch invariant: every output
 * element is summed in one order fixed by (N, K) alone (gemm.cu's header), whatever T and
 * whichever kernel runs, so a row's bits do not depend on the other rows.  K a multiple of 8
 * with x and w 16-byte aligned take the tensor-core kernels; other shapes a plain kernel
 * (another order, but one for every T of that shape).  No scratch. */
qw_status qw_cuda_gemm(uint16_t *out, const uint16_t *x, const uint16_t *w, int T, int N, int K,
		       cudaStream_t stream, qw_err *err);

/* The kernels qw_cuda_gemm chooses among (by T); they give the same bits. */
typedef enum qw_gemm_kernel {
	QW_GEMM_AUTO,     /* qw_cuda_gemm's choice */
	QW_GEMM_STREAM,   /* T <= 64: W streamed into registers, a warp per 8 columns and run */
	QW_GEMM_TILE_M,   /* 64 x 128 tiles */
	QW_GEMM_TILE_L,   /* 128 x 128 tiles */
	QW_GEMM_ROWS,     /* a thread per output: shapes the others cannot read */
	QW_GEMM_WGMMA,    /* 128 x 128 tiles on wgmma (gemm_wgmma.cu): sm_90 only, never AUTO's
			     choice; the backend's with QW_CUDA_WGMMA=1 */
} qw_gemm_kernel;

/* The kernel qw_cuda_gemm takes for this shape and these operands. */
qw_gemm_kernel qw_cuda_gemm_pick(int T, int N, int K, const void *x, const void *w);
/* qw_cuda_gemm on a given kernel (tests, benchmarks); QW_E_ARG where it cannot take the shape. */
qw_status qw_cuda_gemm_with(qw_gemm_kernel kind, uint16_t *out, const uint16_t *x,
			    const uint16_t *w, int T, int N, int K, cudaStream_t stream,
			    qw_err *err);
/* S, the runs of consecutive k blocks whose sums the order adds last (1, 2, 4 or 8): a
 * function of (N, K) alone. */
int qw_cuda_gemm_splits(int N, int K);

// -- gemm_wgmma.cu ---------------------------------------------------------------------------

/* Whether the current device is sm_90 (Hopper), the one the wgmma kernels run on. */
bool qw_cuda_gemm_wgmma_device(void);
/* qw_cuda_gemm in 128 x 128 tiles on Hopper's warpgroup MMA, in gemm.cu's order of the sums
 * (the bits of the other kernels, where the hardware rounds wgmma as it rounds mma.sync:
 * test_cuda_wgmma, qw_cuda_gemm_wgmma_selfcheck).  Needs an sm_90 device, K a multiple of
 * 8 and x, w 16-byte aligned (QW_E_ARG, nothing run, otherwise). */
qw_status qw_cuda_gemm_wgmma(uint16_t *out, const uint16_t *x, const uint16_t *w, int T, int N,
			     int K, cudaStream_t stream, qw_err *err);
/* Runs the wgmma tiles and the mma.sync tiles on a few random shapes (values of wide
 * exponents, ragged tiles, several runs) and fails (QW_E_DEVICE, with a HINT) unless their
 * bits agree: what the backend does before it takes the wgmma tiles.  Synchronises stream. */
qw_status qw_cuda_gemm_wgmma_selfcheck(cudaStream_t stream, qw_err *err);
/* The backend's opt-in, from the value of QW_CUDA_WGMMA (NULL: unset): "1" sets *on once
 * GPU `device` (current) is sm_90 and the self-check passed; NULL or "0" clears it; any
 * other value, or "1" on another GPU, is QW_E_ARG with a HINT. */
qw_status qw_cuda_gemm_wgmma_opt_in(const char *value, int device, cudaStream_t stream, bool *on,
				    qw_err *err);

// -- gemm_fp8.cu ----------------------------------------------------------------------------

/* out (T, N) = x (T, K) w^T for an FP8 w (one matrix, rows N, cols K) read as it is (W8A16:
 * the codes' exact values, a partial sum per 128-wide (bc) block of k multiplied by the
 * block's scale once, fp32 sums, bf16 out), for any T: the stream kernel up to 32 rows, 64 x
 * 128 tiles beyond.  Batch invariant: one order of the sums fixed by (N, K, bc) (gemm_fp8.cu's
 * header), whatever T and whichever kernel.  Not the bits of qw_cuda_gemm on the dequantised
 * weight: held to the CPU reference within a tolerance.  _takes: T >= 1, K a multiple of 16,
 * block columns a multiple of 64, block rows a multiple of 8, x and the codes 16-byte
 * aligned; else dequantise (qw_cuda_fp8_dequant) and call qw_cuda_gemm, at every T. */
#define QW_CUDA_FP8_STREAM_MAX_T 32   /* qw_cuda_gemm_fp8's most rows on its stream kernel */
bool qw_cuda_gemm_fp8_takes(int T, const qw_cuda_fp8_weight *w, const void *x);
qw_status qw_cuda_gemm_fp8(uint16_t *out, const uint16_t *x, const qw_cuda_fp8_weight *w, int T,
			   cudaStream_t stream, qw_err *err);
/* qw_cuda_gemm_fp8 on a given kernel (tests, benchmarks): QW_GEMM_STREAM (T <= 64) or
 * QW_GEMM_TILE_M (its 64 x 128 tiles); QW_E_ARG for another or where it cannot take the shape. */
qw_status qw_cuda_gemm_fp8_with(qw_gemm_kernel kind, uint16_t *out, const uint16_t *x,
				const qw_cuda_fp8_weight *w, int T, cudaStream_t stream,
				qw_err *err);
/* S of w's order: the runs of scale blocks whose sums are added last. */
int qw_cuda_gemm_fp8_splits(const qw_cuda_fp8_weight *w);

// -- few_rows_gemm.cu ------------------------------------------------------------------------

#define QW_FEW_ROWS_MAX 4   /* the most tokens qw_cuda_few_rows_gemm takes */

/* out (T, N) = x (T, K) w^T, w (N, K) bf16, fp32 sums, for the few tokens of a decode step
 * (T <= QW_FEW_ROWS_MAX, K a multiple of 8, x and w 16-byte aligned): a stream over w,
 * launched so that it may start before the previous kernel on the stream ends (it waits for
 * it before reading x).  _takes: whether the shape suits it and it beat cuBLAS there (T 1, or
 * a weight of at most 16 M values).  Not the backend's (its order is not qw_cuda_gemm's):
 * bench_cuda_matmul's baseline. */
bool qw_cuda_few_rows_gemm_takes(int T, int N, int K, const void *x, const void *w,
				 const void *out);
qw_status qw_cuda_few_rows_gemm(uint16_t *out, const uint16_t *x, const uint16_t *w, int T,
				int N, int K, cudaStream_t stream, qw_err *err);

/* The same for an FP8 w (qw_cuda_fp8_weight above: one matrix, rows N, cols K), dequantised
 * in registers as it streams (W8A16): the output bits of qw_cuda_few_rows_gemm on the
 * dequantised weight, reading half the bytes.  _takes: T <= QW_FEW_ROWS_MAX, K a multiple of
 * 8, block columns a power of two >= 8, q 8-byte and x 16-byte aligned (any T it takes: the
 * other way, dequantising for cuBLAS, reads the weight and writes it twice over).
 * cols_per_warp: 1 or 2 output columns a warp streams (the same bits either way), 0 to pick
 * by the weight's size. */
bool qw_cuda_few_rows_gemm_fp8_takes(int T, const qw_cuda_fp8_weight *w, const void *x,
				     const void *out);
qw_status qw_cuda_few_rows_gemm_fp8(uint16_t *out, const uint16_t *x,
				    const qw_cuda_fp8_weight *w, int T, int cols_per_warp,
				    cudaStream_t stream, qw_err *err);

// -- synth.cu ------------------------------------------------------------------------------

/* out (n,) bf16 = loader/export.h's random stream s0 with (mean, std), element by element. */
qw_status qw_cuda_fill_normal(uint16_t *out, uint64_t n, uint64_t s0, double mean, double std,
			      cudaStream_t stream, qw_err *err);

/* Most values one scale block of qw_cuda_fill_fp8 may hold (they sit in shared memory). */
#define QW_CUDA_FP8_FILL_MAX_BLOCK (256 * 256)

/* FP8 block-scaled weights: M matrices of (R, C) values of that same stream, each rounded to
 * bf16 and quantized per (br, bc) block as qw_export_quantize_fp8 does: q (M * R * C,) the
 * e4m3 codes, scales (M * ceil(R / br) * ceil(C / bc),) fp32 in (m, block row, block column)
 * order. */
qw_status qw_cuda_fill_fp8(uint8_t *q, float *scales, uint64_t M, uint64_t R, uint64_t C,
			   int br, int bc, uint64_t s0, double mean, double std,
			   cudaStream_t stream, qw_err *err);

// -- checksum.cu ---------------------------------------------------------------------------

/* out (ceil(bytes / QW_CHECKSUM_CHUNK),) = the first level of ipc/checksum.h over buf: chunk
 * i hashed with XXH64 seeded by i, a thread a chunk; qw_checksum_finish on the host makes the
 * whole checksum of them. */
qw_status qw_cuda_chunk_hashes(uint64_t *out, const void *buf, uint64_t bytes,
			       cudaStream_t stream, qw_err *err);

#ifdef __cplusplus
}
#endif

#endif
