/* few_rows_gemm.cu - dense projections of a few tokens (decode): out (T, N) = x (T, K) W^T
 * for T <= QW_FEW_ROWS_MAX, W (N, K) in the checkpoint's [out, in] layout.  See kernels.h.
 *
 * Why not cuBLAS here: at T = 1 a projection is a read of W and nothing else, and cuBLAS's
 * kernels for it reached 1.7 TB/s on the 30B's q projection (16 MB in 10 us) and ~0.5 TB/s on
 * the small k and v ones: the fixed cost of a GEMM kernel, not the bytes.  This kernel is a
 * stream over W: a warp per output column n reads row n of W with 16-byte loads (lane l takes
 * elements l*8 .. l*8+7, then +256, ..., several loads in flight per lane), multiplies each
 * chunk by the same chunk of every token's row of x (small, from L1/L2), accumulates in fp32,
 * and a butterfly sums the lanes; lane t stores token t's value.  Blocks of 8 warps.  It is
 * launched as a programmatic dependent launch (launch.h): it may start while the previous
 * kernel runs, its first weight loads go out, and only then does it wait for that kernel
 * (whose output is x), so the weight stream does not start from a cold pipe.  Where it
 * wins (bench_cuda_matmul, H200): one token on every projection (30B q 10.1 against 15.7 us,
 * k 7.6 against 14.0), up to four tokens on the 30B's projections; beyond that the x reads
 * from L1 (T per weight chunk) cost more than cuBLAS's fixed cost.
 *
 * The sum order is fixed by K alone (not by T or N), so among the steps this kernel takes a
 * token's outputs do not depend on the other tokens.  They differ from cuBLAS's (another
 * fp32 order, taken for more tokens) by fp32 rounding, well within the bf16 output's step.
 */
#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/bf16x8.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"

#define WARPS 8           /* output columns of a block */
#define UNROLL 4          /* 16-byte loads of W in flight per lane */

typedef __nv_bfloat16 bf16;

template <int T>
__device__ static inline void fma_chunk(float acc[T], uint4 w, const bf16 *x, int K, int c)
{
	float wf[8];
	bf16x8_to_f32(w, wf);
#pragma unroll
	for (int t = 0; t < T; t++) {
		float xf[8];
		bf16x8_to_f32(__ldg((const uint4 *)(x + (size_t)t * K) + c), xf);
#pragma unroll
		for (int j = 0; j < 8; j++)
			acc[t] = fmaf(xf[j], wf[j], acc[t]);
	}
}

template <int T>
static __global__ void __launch_bounds__(WARPS * 32)
few_rows_gemm_kernel(bf16 *out, const bf16 *x, const bf16 *w, int N, int K)
{
	pdl_launch_next();
	int n = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
	if (n >= N) {
		pdl_wait_previous();
		return;
	}
	const uint4 *wrow = (const uint4 *)(w + (size_t)n * (size_t)K);
	const int chunks = K / 8, step = 32 * UNROLL;
	float acc[T];
#pragma unroll
	for (int t = 0; t < T; t++)
		acc[t] = 0.0f;
	/* W does not depend on the previous kernel: its first loads go out before waiting for
	 * it (x does), so this kernel's start overlaps that one's tail */
	int c = lane;
	uint4 wv[UNROLL];
	bool have = c + step - 32 < chunks;
	if (have) {
#pragma unroll
		for (int u = 0; u < UNROLL; u++)
			wv[u] = __ldcs(wrow + c + 32 * u);
	}
	pdl_wait_previous();
	while (have) {   /* the next UNROLL loads in flight while these are summed */
		uint4 cur[UNROLL];
#pragma unroll
		for (int u = 0; u < UNROLL; u++)
			cur[u] = wv[u];
		int next = c + step;
		bool more = next + step - 32 < chunks;
		if (more) {
#pragma unroll
			for (int u = 0; u < UNROLL; u++)
				wv[u] = __ldcs(wrow + next + 32 * u);
		}
#pragma unroll
		for (int u = 0; u < UNROLL; u++)
			fma_chunk<T>(acc, cur[u], x, K, c + 32 * u);
		c = next;
		have = more;
	}
	for (; c < chunks; c += 32)   /* the rest, in the same order */
		fma_chunk<T>(acc, __ldcs(wrow + c), x, K, c);
#pragma unroll
	for (int t = 0; t < T; t++) {
#pragma unroll
		for (int o = 16; o > 0; o >>= 1)
			acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
		if (lane == t)
			out[(size_t)t * (size_t)N + n] = __float2bfloat16(acc[t]);
	}
}

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
	bf16 *o = (bf16 *)out;
	const bf16 *xb = (const bf16 *)x, *wb = (const bf16 *)w;
	void (*kernel)(bf16 *, const bf16 *, const bf16 *, int, int) =
		T == 1 ? few_rows_gemm_kernel<1> : T == 2 ? few_rows_gemm_kernel<2>
			 : T == 3 ? few_rows_gemm_kernel<3> : few_rows_gemm_kernel<4>;
	QW_CUDA_TRY(err, launch_pdl(kernel, dim3((unsigned)((N + WARPS - 1) / WARPS)),
				    dim3(WARPS * 32), 0, stream, o, xb, wb, N, K));
	return QW_OK;
}
