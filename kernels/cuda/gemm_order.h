/* gemm_order.h - the pieces of gemm.cu's order of the sums that every dense-projection kernel
 * shares (CUDA C++ only, included by gemm.cu, the bf16 kernels, gemm_wgmma.cu, their tile on
 * Hopper's wgmma, gemm_fp8.cu, the FP8 ones, and the GPU tests' wgmma probe): the k block of one pair of MMAs, where a run of blocks begins, and the store of an
 * accumulator tile rounded to bf16.
 *
 * Owns: KB, run_begin, mma_block, store_tile, zero4, and the stream kernels' shared steps:
 * stream_x_rows (a lane's rows of x) and join_runs (a column group's runs added in order),
 * and the tiles' join_run (a run's sum into the total).  gemm.cu's header says what the order
 * is; gemm_fp8.cu's what the FP8 weights' order adds to it.
 */
#ifndef QW_KERNELS_CUDA_GEMM_ORDER_H
#define QW_KERNELS_CUDA_GEMM_ORDER_H

#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/mma.h"

#define KB 32   /* k values a block: two m16n8k16 MMAs */

/* The first block of run s of S over nb blocks (run s is [run_begin(s), run_begin(s + 1))). */
__host__ __device__ static inline int run_begin(int s, int nb, int S)
{
	return (int)((int64_t)s * nb / S);
}

/* c += one block: lo, hi the lane's 16 bytes of rows g and g + 8 of x at 32b + 8t, w its 16
 * bytes of W's row (output column) g there. */
__device__ static inline void mma_block(float c[4], uint4 lo, uint4 hi, uint4 w)
{
	const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y};
	mma_bf16(c, a0, w.x, w.y);
	const uint32_t a1[4] = {lo.z, hi.z, lo.w, hi.w};
	mma_bf16(c, a1, w.z, w.w);
}

/* Rows r and r + 8 (of T), columns c and c + 1 (of N) of out from accumulator tile v: the
 * total rounded to bf16 (a pair store where both columns exist and pairs are aligned). */
__device__ static inline void store_tile(__nv_bfloat16 *out, const float v[4], int r, int c,
					 int T, int N, bool pairs)
{
#pragma unroll
	for (int h = 0; h < 2; h++) {
		int row = r + 8 * h;
		if (row >= T || c >= N)
			continue;
		__nv_bfloat16 *o = out + (size_t)row * (size_t)N + c;
		if (pairs && c + 1 < N) {
			*(__nv_bfloat162 *)o = __floats2bfloat162_rn(v[2 * h], v[2 * h + 1]);
		} else {
			o[0] = __float2bfloat16_rn(v[2 * h]);
			if (c + 1 < N)
				o[1] = __float2bfloat16_rn(v[2 * h + 1]);
		}
	}
}

__device__ static inline uint4 zero4(void)
{
	return make_uint4(0u, 0u, 0u, 0u);
}

/* A tile's run ends: its sum acc joins the total in order (the first run's sum is the
 * total), and acc starts again from 0. */
__device__ static inline void join_run(float tot[4], float acc[4], bool first)
{
#pragma unroll
	for (int q = 0; q < 4; q++) {
		tot[q] = first ? acc[q] : __fadd_rn(tot[q], acc[q]);
		acc[q] = 0.0f;
	}
}

/* The stream kernels' rows of x: xrow[m][h] row m * 16 + g + 8h of T (row 0 past T, xok
 * false) at its chunk `chunk` (16-byte chunks). */
template <int MT>
__device__ static inline void stream_x_rows(const uint4 *xrow[MT][2], bool xok[MT][2],
					    const __nv_bfloat16 *x, int T, int K, int g, int chunk)
{
#pragma unroll
	for (int m = 0; m < MT; m++)
#pragma unroll
		for (int h = 0; h < 2; h++) {
			int r = m * 16 + g + 8 * h;
			xok[m][h] = r < T;
			xrow[m][h] = (const uint4 *)(x + (size_t)(r < T ? r : 0) * (size_t)K) + chunk;
		}
}

/* The end of a stream kernel: the S warps of a column group (consecutive, run 0 first) add
 * their runs' sums in order, ((r0 + r1) + r2) + ..., into the first one's acc through part
 * (a row of it a warp).  Every thread of the block calls it (S is the block's); false for
 * the warps whose sums went to the first (they are done). */
template <int MT>
__device__ static inline bool join_runs(float acc[MT][4], float (*part)[MT * 4][32], int warp,
					int lane, int run, int S)
{
	if (S == 1)
		return true;
#pragma unroll
	for (int m = 0; m < MT; m++)
#pragma unroll
		for (int q = 0; q < 4; q++)
			part[warp][m * 4 + q][lane] = acc[m][q];
	__syncthreads();
	if (run != 0)
		return false;
	for (int s = 1; s < S; s++)
#pragma unroll
		for (int m = 0; m < MT; m++)
#pragma unroll
			for (int q = 0; q < 4; q++)
				acc[m][q] = __fadd_rn(acc[m][q], part[warp + s][m * 4 + q][lane]);
	return true;
}

#endif
