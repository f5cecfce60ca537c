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
#define COLS PROBE_N
#define PANELS (PROBE_K / WG_PANEL_K)
#define A_PANEL (ROWS * WG_ROW_BYTES)
#define B_PANEL (COLS * WG_ROW_BYTES)
#define A_BYTES (PANELS * A_PANEL)
#define SMEM (A_BYTES + PANELS * B_PANEL + 1024)   /* + the alignment of the first panel */

/* The byte offset in a K-major panel of the element of row r at k (local to the panel), for
 * a wgmma way. */
static __device__ uint32_t k_offset(probe_way how, int r, int k)
{
	int chunk, byte;
	switch (how) {
	case PROBE_WG_SLOTS:
		return wg_pair_offset(r, k & ~1) + (uint32_t)(k & 1) * 2;
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

/* One problem a CTA of one warpgroup: its A (64 x K) and B (N x K) into shared memory in
 * `how`'s layout (B MN-major for PROBE_WG_MN), then K / 16 wgmmas into accumulators from
 * zero. */
static __global__ void __launch_bounds__(128) probe_wgmma_kernel(probe_way how, float *out,
								  const uint16_t *a,
								  const uint16_t *b)
{
	extern __shared__ __align__(16) unsigned char smem_raw[];
	const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
	unsigned char *sm = smem_raw + (base - smem_addr(smem_raw));
	const uint16_t *ap = a + (size_t)blockIdx.x * ROWS * PROBE_K;
	const uint16_t *bp = b + (size_t)blockIdx.x * COLS * PROBE_K;
	const bool mn = how == PROBE_WG_MN;
	const probe_way ka = mn ? PROBE_WG_NATURAL : how;   /* A's layout */
	for (int i = threadIdx.x; i < (ROWS + COLS) * PROBE_K; i += blockDim.x) {
		const bool is_a = i < ROWS * PROBE_K;
		const int j = is_a ? i : i - ROWS * PROBE_K;
		const int r = j / PROBE_K, k = j % PROBE_K, panel = k / WG_PANEL_K;
		uint32_t off;
		if (is_a)
			off = panel * A_PANEL + k_offset(ka, r, k % WG_PANEL_K);
		else if (mn)
			off = A_BYTES + wg_mn_offset(k, r, COLS);
		else
			off = A_BYTES + panel * B_PANEL + k_offset(how, r, k % WG_PANEL_K);
		*(uint16_t *)(sm + off) = is_a ? ap[j] : bp[j];
	}
	fence_proxy_async();
	__syncthreads();
	float d[64];
	for (int i = 0; i < 64; i++)
		d[i] = 0.0f;
	wgmma_fence();
#pragma unroll
	for (int s = 0; s < PROBE_K / 16; s++) {
		const int panel = s / 4, q = s % 4;
		const uint64_t da = wg_desc(base + panel * A_PANEL, q);
		if (mn)
			wgmma_m64n128<true>(d, da, wg_desc_mn(base + A_BYTES, s, COLS));
		else
			wgmma_m64n128(d, da, wg_desc(base + A_BYTES + panel * B_PANEL, q));
	}
	wgmma_commit();
	wgmma_wait<0>();
	for (int i = 0; i < 64; i++)
		wg_fence_acc(d[i]);
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
	float *o = out + (size_t)blockIdx.x * ROWS * COLS;
	for (int j = 0; j < COLS / 8; j++)
		for (int h = 0; h < 2; h++)
			for (int e = 0; e < 2; e++)
				o[(16 * warp + g + 8 * h) * COLS + 8 * j + 2 * t + e] = d[4 * j + 2 * h + e];
}

/* The same problems by mma.sync m16n8k16, a warp per 16 rows, column tiles of 8 in turn:
 * gemm.cu's slots (mma_block) or the natural ones (k 16s..16s+15 in slot order). */
static __global__ void __launch_bounds__(128) probe_mma_kernel(probe_way how, float *out,
								const uint16_t *a,
								const uint16_t *b)
{
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
	const uint16_t *a0 = a + ((size_t)blockIdx.x * ROWS + 16 * warp + g) * PROBE_K;
	const uint16_t *a1 = a0 + 8 * PROBE_K;
	float *o = out + (size_t)blockIdx.x * ROWS * COLS;
	for (int j = 0; j < COLS / 8; j++) {
		const uint16_t *b0 = b + ((size_t)blockIdx.x * COLS + 8 * j + g) * PROBE_K;
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
				const uint32_t af[4] = {
					*(const uint32_t *)(a0 + k), *(const uint32_t *)(a1 + k),
					*(const uint32_t *)(a0 + k + 8), *(const uint32_t *)(a1 + k + 8)};
				mma_bf16(c, af, *(const uint32_t *)(b0 + k),
					 *(const uint32_t *)(b0 + k + 8));
			}
		}
		for (int h = 0; h < 2; h++)
			for (int e = 0; e < 2; e++)
				o[(16 * warp + g + 8 * h) * COLS + 8 * j + 2 * t + e] = c[2 * h + e];
	}
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
