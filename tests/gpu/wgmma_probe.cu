/* wgmma_probe.cu - the probe behind test_cuda_wgmma: the same small products by mma.sync and
 * by wgmma, with the k values laid into the instructions' slots in several ways, so one GPU
 * run says whether wgmma can give gemm.cu's bits and what it takes (wgmma_probe.h).
 */
#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/gemm_order.h"
#include "kernels/cuda/mma.h"
#include "kernels/cuda/wgmma.h"
#include "tests/gpu/wgmma_probe.h"

#define ROWS 64
#define COLS 8
#define PANELS (PROBE_K / WG_PANEL_K)
#define A_PANEL (ROWS * WG_ROW_BYTES)
#define B_PANEL (COLS * WG_ROW_BYTES)
#define SMEM (PANELS * (A_PANEL + B_PANEL) + 1024)   /* + the alignment of the first panel */

/* The byte offset in a panel of the pair holding k, k + 1 (k even, local to the panel) of
 * row r, for a wgmma layout. */
static __device__ uint32_t pair_offset(probe_way how, int r, int k)
{
	int chunk, byte;
	switch (how) {
	case PROBE_WG_SLOTS:
		return wg_pair_offset(r, k);
	case PROBE_WG_QUADS: {   /* quad i of a block (k 4i..4i+3) to step i % 2, slots 4(i/2).. */
		const int half = k / 32, i = (k % 32) / 4, e = k % 4, p = i / 2;
		chunk = 2 * (2 * half + i % 2) + p / 2;
		byte = ((p % 2) * 4 + e) * 2;
		break;
	}
	default:   /* natural: step q takes k 16q..16q+15 in slot order */
		chunk = k / 8;
		byte = (k % 8) * 2;
		break;
	}
	return (uint32_t)(r * WG_ROW_BYTES + ((chunk ^ (r % 8)) * 16) + byte);
}

/* One problem a CTA of one warpgroup: its A (64 x K) and B (8 x K) into shared memory in
 * `how`'s layout, then K / 16 wgmmas into accumulators from zero. */
static __global__ void __launch_bounds__(128) probe_wgmma_kernel(probe_way how, float *out,
								  const uint16_t *a,
								  const uint16_t *b)
{
	extern __shared__ __align__(16) unsigned char smem_raw[];
	const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
	unsigned char *sm = smem_raw + (base - smem_addr(smem_raw));
	const uint32_t *ap = (const uint32_t *)(a + (size_t)blockIdx.x * ROWS * PROBE_K);
	const uint32_t *bp = (const uint32_t *)(b + (size_t)blockIdx.x * COLS * PROBE_K);
	for (int i = threadIdx.x; i < (ROWS + COLS) * PROBE_K / 2; i += blockDim.x) {
		const bool is_a = i < ROWS * PROBE_K / 2;
		const int j = is_a ? i : i - ROWS * PROBE_K / 2;
		const int r = j / (PROBE_K / 2), k = 2 * (j % (PROBE_K / 2));
		const int panel = k / WG_PANEL_K;
		unsigned char *p = sm + (is_a ? panel * A_PANEL : PANELS * A_PANEL + panel * B_PANEL);
		*(uint32_t *)(p + pair_offset(how, r, k % WG_PANEL_K)) = is_a ? ap[j] : bp[j];
	}
	fence_proxy_async();
	__syncthreads();
	float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
	wgmma_fence();
#pragma unroll 1
	for (int s = 0; s < PROBE_K / 16; s++) {
		const int panel = s / 4, q = s % 4;
		wgmma_m64n8(d, wg_desc(base + panel * A_PANEL, q),
			    wg_desc(base + PANELS * A_PANEL + panel * B_PANEL, q));
	}
	wgmma_commit();
	wgmma_wait<0>();
	for (int i = 0; i < 4; i++)
		wg_fence_acc(d[i]);
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
	float *o = out + (size_t)blockIdx.x * ROWS * COLS;
	for (int h = 0; h < 2; h++)
		for (int e = 0; e < 2; e++)
			o[(16 * warp + g + 8 * h) * COLS + 2 * t + e] = d[2 * h + e];
}

/* The same problems by mma.sync m16n8k16, a warp per 16 rows: gemm.cu's slots (mma_block)
 * or the natural ones (k 16s..16s+15 in slot order). */
static __global__ void __launch_bounds__(128) probe_mma_kernel(probe_way how, float *out,
								const uint16_t *a,
								const uint16_t *b)
{
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
	const uint16_t *a0 = a + ((size_t)blockIdx.x * ROWS + 16 * warp + g) * PROBE_K;
	const uint16_t *a1 = a0 + 8 * PROBE_K;
	const uint16_t *b0 = b + ((size_t)blockIdx.x * COLS + g) * PROBE_K;
	float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
	if (how == PROBE_MMA_SLOTS) {
		for (int blk = 0; blk < PROBE_K / KB; blk++) {
			const int k = KB * blk + 8 * t;
			mma_block(c, *(const uint4 *)(a0 + k), *(const uint4 *)(a1 + k),
				  *(const uint4 *)(b0 + k));
		}
	} else {
		for (int s = 0; s < PROBE_K / 16; s++) {
			const int k = 16 * s + 2 * t;
			const uint32_t af[4] = {*(const uint32_t *)(a0 + k), *(const uint32_t *)(a1 + k),
						*(const uint32_t *)(a0 + k + 8),
						*(const uint32_t *)(a1 + k + 8)};
			mma_bf16(c, af, *(const uint32_t *)(b0 + k), *(const uint32_t *)(b0 + k + 8));
		}
	}
	float *o = out + (size_t)blockIdx.x * ROWS * COLS;
	for (int h = 0; h < 2; h++)
		for (int e = 0; e < 2; e++)
			o[(16 * warp + g + 8 * h) * COLS + 2 * t + e] = c[2 * h + e];
}

extern "C" cudaError_t probe_run(probe_way how, float *out, const uint16_t *a, const uint16_t *b,
				 int problems)
{
	if (how == PROBE_MMA_SLOTS || how == PROBE_MMA_NATURAL) {
		probe_mma_kernel<<<problems, 128>>>(how, out, a, b);
		return cudaGetLastError();
	}
	cudaError_t rc = cudaFuncSetAttribute(probe_wgmma_kernel,
					      cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
	if (rc != cudaSuccess)
		return rc;
	probe_wgmma_kernel<<<problems, 128, SMEM>>>(how, out, a, b);
	return cudaGetLastError();
}
