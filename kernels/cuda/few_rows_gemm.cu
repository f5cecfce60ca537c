/* few_rows_gemm.cu - dense projections of a few tokens (decode): out (T, N) = x (T, K) W^T
 * for T <= QW_FEW_ROWS_MAX, W (N, K) in the checkpoint's [out, in] layout, bf16 or FP8.  See
 * kernels.h.
 *
 * The backend no longer calls it: its sum order (lanes over K, then a butterfly) is not the
 * one gemm.cu keeps for every T, and a projection must use one order at every row count to
 * stay batch invariant.  It stays as bench_cuda_matmul's baseline for gemm.cu's stream
 * kernel, which must read W as fast.
 *
 * Why not cuBLAS here: at T = 1 a projection is a read of W and nothing else, and cuBLAS's
 * kernels for it reached 1.7 TB/s on the 30B's q projection (16 MB in 10 us) and ~0.5 TB/s on
 * the small k and v ones: the fixed cost of a GEMM kernel, not the bytes.  This kernel is a
 * stream over W: a warp per output column n (or per R adjacent columns) reads row n of W in
 * chunks of 8 weights (lane l takes elements l*8 .. l*8+7, then +256, ..., several loads in
 * flight per lane), multiplies each chunk by the same chunk of every token's row of x (small,
 * from L1/L2), accumulates in fp32, and a butterfly sums the lanes; lane t stores token t's
 * value.  Blocks of 8 warps.  It is launched as a programmatic dependent launch (launch.h): it
 * may start while the previous kernel runs, its first weight loads go out, and only then does
 * it wait for that kernel (whose output is x), so the weight stream does not start from a cold
 * pipe.  Where it wins (bench_cuda_matmul, H200): one token on every projection (30B q 10.1
 * against 15.7 us, k 7.6 against 14.0), up to four tokens on the 30B's projections; beyond
 * that the x reads from L1 (T per weight chunk) cost more than cuBLAS's fixed cost.
 *
 * FP8 weights (W8A16): a chunk is one 8-byte load of e4m3 bytes and its block's scale,
 * dequantised in registers as everywhere (e4m3x8.h: bf16_rn(e4m3 * scale)) and then summed
 * exactly as a bf16 chunk is, so the output has the bits of the bf16 stream on the
 * dequantised weight, from half the bytes.  Dequantising costs ALU work per byte the bf16
 * stream does not have, so a warp may take R = 2 columns: each token's chunk of x is then
 * read and widened once for both.  The block of a chunk is found by a shift (block columns a
 * power of two), its row block once per column.
 *
 * The sum order is fixed by K alone (not by T, N or R), so among the steps this kernel takes
 * a token's outputs do not depend on the other tokens.  They differ from cuBLAS's (another
 * fp32 order, taken for more tokens) by fp32 rounding, well within the bf16 output's step.
 */
#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/bf16x8.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/e4m3x8.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"

#define WARPS 8           /* warps of a block, each one or R output columns */

typedef __nv_bfloat16 bf16;

// ---------------------------------------------------------------------------------------
// the weight formats: a row of W, a chunk of 8 weights of it, the chunk widened to fp32

/* bf16: a chunk is one 16-byte load. */
struct bf16_weight {
	static const int unroll = 4;   /* 16-byte loads in flight per lane and column */
	typedef uint4 chunk;
	typedef const uint4 *row;
	const bf16 *w;
	int K;
	__device__ row row_of(int n) const { return (const uint4 *)(w + (size_t)n * (size_t)K); }
	__device__ static chunk load(row r, int c) { return __ldcs(r + c); }
	__device__ static void widen(chunk v, float f[8]) { bf16x8_to_f32(v, f); }
};

/* FP8: a chunk is one 8-byte load and its block's scale. */
struct fp8_chunk {
	uint2 q;
	float scale;
};

struct fp8_row {
	const uint2 *q;
	const float *scale;   /* this row's row of block scales */
	int cshift;           /* chunk c lies in block column c >> cshift */
};

struct fp8_weight {
	static const int unroll = 8;   /* 8-byte loads in flight per lane and column */
	typedef fp8_chunk chunk;
	typedef fp8_row row;
	const uint8_t *q;
	const float *scale;
	int K, br, scale_cols, cshift;
	__device__ row row_of(int n) const
	{
		row r;
		r.q = (const uint2 *)(q + (size_t)n * (size_t)K);
		r.scale = scale + (size_t)(n / br) * (size_t)scale_cols;
		r.cshift = cshift;
		return r;
	}
	__device__ static chunk load(row r, int c)
	{
		chunk v;
		v.q = __ldcs(r.q + c);
		v.scale = __ldg(r.scale + (c >> r.cshift));
		return v;
	}
	__device__ static void widen(chunk v, float f[8]) { e4m3x8_dequant(v.q, v.scale, f); }
};

// ---------------------------------------------------------------------------------------
// the stream

/* Chunk c of R columns' rows (w) against chunk c of every token's x: acc[r][t] += in order. */
template <int T, int R, class W>
__device__ static inline void fma_chunk(float (&acc)[R][T], const typename W::chunk (&w)[R],
					const bf16 *x, int K, int c)
{
	float xf[T][8];
#pragma unroll
	for (int t = 0; t < T; t++)
		bf16x8_to_f32(__ldg((const uint4 *)(x + (size_t)t * K) + c), xf[t]);
#pragma unroll
	for (int r = 0; r < R; r++) {
		float wf[8];
		W::widen(w[r], wf);
#pragma unroll
		for (int t = 0; t < T; t++)
#pragma unroll
			for (int j = 0; j < 8; j++)
				acc[r][t] = fmaf(xf[t][j], wf[j], acc[r][t]);
	}
}

template <int T, int R, class W>
static __global__ void __launch_bounds__(WARPS * 32)
few_rows_gemm_kernel(bf16 *out, const bf16 *x, W w, int N, int K)
{
	pdl_launch_next();
	int n0 = (blockIdx.x * WARPS + threadIdx.x / 32) * R, lane = threadIdx.x % 32;
	if (n0 >= N) {
		pdl_wait_previous();
		return;
	}
	const int U = W::unroll, chunks = K / 8, step = 32 * U;
	typename W::row rows[R];
#pragma unroll
	for (int r = 0; r < R; r++)   /* a column past N reads the last one's row, unstored */
		rows[r] = w.row_of(n0 + r < N ? n0 + r : N - 1);
	float acc[R][T];
#pragma unroll
	for (int r = 0; r < R; r++)
#pragma unroll
		for (int t = 0; t < T; t++)
			acc[r][t] = 0.0f;
	/* W does not depend on the previous kernel: its first loads go out before waiting for
	 * it (x does), so this kernel's start overlaps that one's tail */
	int c = lane;
	typename W::chunk wv[U][R];
	bool have = c + step - 32 < chunks;
	if (have) {
#pragma unroll
		for (int u = 0; u < U; u++)
#pragma unroll
			for (int r = 0; r < R; r++)
				wv[u][r] = W::load(rows[r], c + 32 * u);
	}
	pdl_wait_previous();
	while (have) {   /* the next U loads in flight while these are summed */
		typename W::chunk cur[U][R];
#pragma unroll
		for (int u = 0; u < U; u++)
#pragma unroll
			for (int r = 0; r < R; r++)
				cur[u][r] = wv[u][r];
		int next = c + step;
		bool more = next + step - 32 < chunks;
		if (more) {
#pragma unroll
			for (int u = 0; u < U; u++)
#pragma unroll
				for (int r = 0; r < R; r++)
					wv[u][r] = W::load(rows[r], next + 32 * u);
		}
#pragma unroll
		for (int u = 0; u < U; u++)
			fma_chunk<T, R, W>(acc, cur[u], x, K, c + 32 * u);
		c = next;
		have = more;
	}
	for (; c < chunks; c += 32) {   /* the rest, in the same order */
		typename W::chunk one[R];
#pragma unroll
		for (int r = 0; r < R; r++)
			one[r] = W::load(rows[r], c);
		fma_chunk<T, R, W>(acc, one, x, K, c);
	}
#pragma unroll
	for (int r = 0; r < R; r++)
#pragma unroll
		for (int t = 0; t < T; t++) {
#pragma unroll
			for (int o = 16; o > 0; o >>= 1)
				acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], o);
			if (lane == t && n0 + r < N)
				out[(size_t)t * (size_t)N + n0 + r] = __float2bfloat16(acc[r][t]);
		}
}

/* Launches the stream for T tokens, R columns a warp. */
template <int R, class W>
static qw_status launch(bf16 *out, const bf16 *x, const W &w, int T, int N, int K,
			cudaStream_t stream, qw_err *err)
{
	void (*kernel)(bf16 *, const bf16 *, W, int, int) =
		T == 1 ? few_rows_gemm_kernel<1, R, W> : T == 2 ? few_rows_gemm_kernel<2, R, W>
			 : T == 3 ? few_rows_gemm_kernel<3, R, W> : few_rows_gemm_kernel<4, R, W>;
	unsigned blocks = (unsigned)((N + WARPS * R - 1) / (WARPS * R));
	QW_CUDA_TRY(err, launch_pdl(kernel, dim3(blocks), dim3(WARPS * 32), 0, stream, out, x, w, N,
				    K));
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// bf16

static bool shape_ok(int T, int N, int K, const void *x, const void *w, const void *out)
{
	return T >= 1 && T <= QW_FEW_ROWS_MAX && N >= 1 && N <= 65535 * WARPS && K >= 8 &&
	       K % 8 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0 && out != NULL;
}

extern "C" bool qw_cuda_few_rows_gemm_takes(int T, int N, int K, const void *x, const void *w,
					     const void *out)
{
	/* where it beats cuBLAS on the H200 (bench_cuda_matmul): one token always; up to four
	 * on weights of up to 16 M values (each token's x is re-read per column from L1, which
	 * a large weight at more tokens pays for) */
	return (T == 1 || (int64_t)N * K <= (16 << 20)) && shape_ok(T, N, K, x, w, out);
}

extern "C" qw_status qw_cuda_few_rows_gemm(uint16_t *out, const uint16_t *x, const uint16_t *w,
					   int T, int N, int K, cudaStream_t stream, qw_err *err)
{
	if (!shape_ok(T, N, K, x, w, out))
		return qw_fail(err, QW_E_ARG, "cuda few-rows gemm: T %d, N %d, K %d: needs 1 <= T <= "
			       "%d, K a multiple of 8, x and w 16-byte aligned", T, N, K,
			       QW_FEW_ROWS_MAX);
	bf16_weight wr;
	wr.w = (const bf16 *)w;
	wr.K = K;
	return launch<1>((bf16 *)out, (const bf16 *)x, wr, T, N, K, stream, err);
}

// ---------------------------------------------------------------------------------------
// FP8

/* log2 of the chunks a block column spans, or -1 when that is not a power of two. */
static int chunk_shift(int bc)
{
	if (bc < 8 || bc % 8)
		return -1;
	int s = 0;
	while ((8 << s) < bc)
		s++;
	return (8 << s) == bc ? s : -1;
}

extern "C" bool qw_cuda_few_rows_gemm_fp8_takes(int T, const qw_cuda_fp8_weight *w,
						 const void *x, const void *out)
{
	return T >= 1 && T <= QW_FEW_ROWS_MAX && w->mats == 1 && w->rows >= 1 &&
	       w->rows <= 65535 * WARPS && w->cols >= 8 && w->cols % 8 == 0 && w->br >= 1 &&
	       chunk_shift(w->bc) >= 0 && ((uintptr_t)w->q & 7) == 0 && ((uintptr_t)x & 15) == 0 &&
	       out != NULL;
}

extern "C" qw_status qw_cuda_few_rows_gemm_fp8(uint16_t *out, const uint16_t *x,
					       const qw_cuda_fp8_weight *w, int T,
					       int cols_per_warp, cudaStream_t stream, qw_err *err)
{
	if (!qw_cuda_few_rows_gemm_fp8_takes(T, w, x, out))
		return qw_fail(err, QW_E_ARG, "cuda few-rows gemm (fp8): T %d, %d x %d x %d weight of "
			       "%d x %d blocks: needs 1 <= T <= %d, one matrix, columns a multiple of "
			       "8, block columns a power of two >= 8, w 8-byte and x 16-byte aligned",
			       T, w->mats, w->rows, w->cols, w->br, w->bc, QW_FEW_ROWS_MAX);
	if (cols_per_warp == 0)   /* large weights: x widened once for two columns */
		cols_per_warp = w->rows >= 2048 ? 2 : 1;
	fp8_weight wr;
	wr.q = w->q;
	wr.scale = w->scale;
	wr.K = w->cols;
	wr.br = w->br;
	wr.scale_cols = (w->cols + w->bc - 1) / w->bc;
	wr.cshift = chunk_shift(w->bc);
	if (cols_per_warp == 2)
		return launch<2>((bf16 *)out, (const bf16 *)x, wr, T, w->rows, w->cols, stream, err);
	return launch<1>((bf16 *)out, (const bf16 *)x, wr, T, w->rows, w->cols, stream, err);
}
