/* moe_gemm.cu - the MoE block's grouped expert GEMM on the tensor cores (moe.cu's steps 5 and
 * 6; see moe_gemm.h), over bf16 or FP8 experts: the plain path's kernels, a block a tile.
 * The tile itself (below: how it is computed, its shapes) is moe_tile.cuh's expert_tile,
 * which the fused decode kernel (moe_fused.cu) runs too.
 *
 * Our own, not cuBLAS: the contract has no handle, per-expert calls would need the counts on
 * the host (a sync per layer), and cuBLAS chooses kernels (split-K among them) by M, which
 * would make a token's bits depend on how many other tokens chose its experts.
 * mma.sync.m16n8k16 (bf16 in, fp32 accumulate) fed by a cp.async pipeline through shared
 * memory (rows padded by 16 bytes, so ldmatrix is free of bank conflicts), ldmatrix.trans
 * turning the input-major (K, N) weight tiles into B fragments.  Grid: x = N-tiles of one
 * expert (fastest, so the blocks running together share the expert's rows and walk its
 * weights), y = an upper bound on the M-tiles, floor(P / BM) + min(E, P); the tile list is
 * built on the GPU and blocks past its length exit at once, so nothing waits for the host.
 *
 * Tile shapes, by the average number of pairs per expert a = P / E:
 *   S  16 x 128 (gate+up: 64 + 64 columns), BK 64, 4 warps  a <= 8  (decode, small batches)
 *   M  64 x 128 (64 + 64),                  BK 32, 4 warps  a <= 64
 *   L 128 x 128 (64 + 64),                  BK 32, 8 warps  a > 64  (prefill)
 * S is the decode path: with at most 16 tokens on an expert (always, for T <= 16) each
 * selected expert's weights are read once, by blocks streaming 128-column slabs with 16-byte
 * cp.async loads coalesced along the output dimension (rows of the input-major layout) and
 * 4 stages (79 KB) per block; the tensor cores only serve as a dot-product engine there,
 * with padded rows.  Its shape was measured (bench_cuda_moe and its build variants, H200):
 * 128 columns (128-byte row segments of gate and of up) against 64 and 32 took the 30B
 * layer at T = 8 from 188-214 us to 175 us and the 235B's at T = 64 from 77-83% to 94% of
 * the byte roofline; 8 stages instead of 4 added nothing, nor did 8 warps over 128-deep
 * k-tiles.
 * Napkin math for the 235B layer (E 128, k 8, H 4096, I 1536, 37.7 MB of bf16 weights per
 * expert, 4.8 GB in all, ~1 ms at 4.8 TB/s): at T = 1, 8 experts, 302 MB, 63 us; at
 * a = 8 (T = 128) S reads every expert about once (1 ms) while L would spend 16x the
 * useful 39 GFLOP on padding (~1.2 ms at ~500 TFLOPS); at a = 16 S reads experts with two
 * tiles twice (~1.5-2 ms) while M wastes 4x (~0.6 ms of compute, overlapped with 1 ms of
 * reads); from a = 64 on, L's bigger tiles win.  M and L are a first cut, not
 * yet tuned.
 * Other traffic: x rows are re-read per N-tile (from L2); act P*I*2 bytes written and read;
 * y P*H*4 bytes written and read (0.5 GB for T = 2048 on the 235B layer: ~0.1 ms against
 * ~2.5 ms of GEMM).
 *
 * FP8 experts (W8A16: bf16 activations, fp32 accumulate).  The e4m3 bytes of a B tile go
 * through the cp.async stages as they are (half the bytes of bf16: the decode tile's whole
 * point); after a tile lands, the block dequantises it into one bf16 tile in shared memory,
 * w = bf16_rn(e4m3(q) * s) with s the weight's block scale (the FP8 contract: the bits an
 * upload-time dequantisation gave), and ldmatrix and the MMAs run on that tile as on a bf16
 * one.  So the FP8 GEMM gives the bf16 GEMM's bits on the dequantised weights, and every
 * property below holds for it too.  Each thread dequantises pieces of 8 weights of one row
 * (an 8-byte shared load, a 16-byte store: both conflict-free), its columns fixed over the
 * tile and the k-tiles, so its scale column is fixed too; it reads one scale per k-tile
 * (when the tile lies in one block of rows: always for 128-row blocks), fetched a k-tile
 * ahead.  The dequantisation uses no conversion instruction but the final pack (Hopper issues
 * conversions at a fraction of the ALU and FMA rates, and the decode tile dequantises every
 * byte it reads): a byte's exponent and mantissa bits go to bits 26..20 of an fp32, which is
 * then exactly |e4m3| * 2^-120 (subnormals too: fp32's subnormals hold them); one multiply
 * by s * 2^120 (a power of two: exact for s < 2^8) rounds |e4m3| * s as the reference's
 * multiply does; the pack rounds to bf16 (nearest even) and the sign goes in after
 * (rounding is symmetric).  9 instructions for 2 weights.  A scale of 2^8 or more (none in
 * a real checkpoint: scales are amax / 448) takes two multiplies.  The NaN codes 0x7f and
 * 0xff would read as 480 * s: FP8 weights may hold none (the upload refuses them).  A build
 * with QW_MOE_FP8_HW=1 uses the hardware's e4m3x2 -> f16x2 conversion instead (sm_89 and
 * up; 6.5 instructions for 2 weights, 2 of them conversions), to measure one against the
 * other (bench_cuda_moe_* variants).
 * The decode tile for FP8 (S8) streams 64 x 128-byte k-tiles 8 stages deep (56 KB in flight
 * a block: the 30B layer at T = 1 has only 96 blocks for 132 SMs), 101 KB of shared memory.
 * Napkin math for FP8: the 235B layer's experts are 18.9 MB each, 2.4 GB in all: at T = 1,
 * 151 MB, 35 us at 4.3 TB/s; the 30B layer's 4.7 MB each, 38 MB at T = 1 (8.8 us).  At
 * 4.3 TB/s the dequantisation has to keep up with ~18 weights a clock on each of 132 SMs at
 * 1.8 GHz: ~4.5 instructions each against 128 a clock a SM.
 * Prefill (M, L) dequantises its tiles the same way (a tile's weights are then used by 64 or
 * 128 rows, so the cost is small against the MMAs).  FP8 tensor cores (W8A8, Hopper's 2x
 * rate) would need: activations quantized per token and 128-column group (e4m3 codes and an
 * fp32 scale each: x before the gate/up GEMM, act in or after its epilogue, where a block's
 * 64 output columns cover half a group); mma.sync.m16n8k32 e4m3 (or wgmma) whose B operand
 * wants K contiguous per column, so FP8 experts re-laid out output-major at load (or a byte
 * transpose in shared memory: ldmatrix.trans moves 16-bit elements only); and the scales
 * applied per 128-deep k-block outside the MMA (a fresh partial sum each k-block, then acc +=
 * partial * s_a * s_w), which changes the summation: no longer the bf16 path's bits, with
 * looser thresholds (measured against the CPU reference), still batch-invariant (a token's
 * scales are its own).  Not built: the M/L tiles on mma.sync bf16 are not at Hopper's
 * tensor-core rate now (wgmma and TMA are what lift prefill first), so 2x on the MMAs alone
 * would not double them.
 *
 * Determinism (moe.cu's header): every output element of both GEMMs, in every tile shape,
 * is one chain of m16n8k16 MMAs over k = 0, 16, 32, ... into one fp32 accumulator starting
 * at zero (no split-K; K is a multiple of 16 and steps past K are skipped, not run on
 * zeros), and an MMA's element (m, n) depends only on row m of A, column n of B and its
 * accumulator, so padding rows and the other tokens of a tile never reach it; SwiGLU uses
 * explicitly rounded operations.
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/moe_gemm.h"
#include "kernels/cuda/moe_tile.cuh"

/* the decode tile's width, warp width and depth, bf16 (S) and FP8 (S8); a build may
 * override them to compare variants (tests/SConscript's bench_cuda_moe_* programs) */
#ifndef QW_MOE_S_BN
#define QW_MOE_S_BN 128
#endif
#ifndef QW_MOE_S_WN
#define QW_MOE_S_WN 32
#endif
#ifndef QW_MOE_S_STAGES
#define QW_MOE_S_STAGES 4
#endif
#ifndef QW_MOE_S_BK
#define QW_MOE_S_BK 64
#endif
#ifndef QW_MOE_S8_BN
#define QW_MOE_S8_BN 128
#endif
#ifndef QW_MOE_S8_WN
#define QW_MOE_S8_WN 32
#endif
#ifndef QW_MOE_S8_STAGES
#define QW_MOE_S8_STAGES 8
#endif
#ifndef QW_MOE_S8_BK
#define QW_MOE_S8_BK 64
#endif
typedef tile_cfg<16, QW_MOE_S_BN, QW_MOE_S_BK, 16, QW_MOE_S_WN, QW_MOE_S_STAGES> cfg_s;
typedef tile_cfg<16, QW_MOE_S8_BN, QW_MOE_S8_BK, 16, QW_MOE_S8_WN, QW_MOE_S8_STAGES> cfg_s8;
typedef tile_cfg<64, 128, 32, 64, 32, 4> cfg_m;
typedef tile_cfg<128, 128, 32, 64, 32, 4> cfg_l;
static_assert(cfg_l::BM == MOE_TILE_MAX_ROWS, "moe_gemm.h's largest tile");

int moe_tile_rows(moe_tile t)
{
	return t == MOE_TILE_S ? cfg_s::BM : t == MOE_TILE_M ? cfg_m::BM : cfg_l::BM;
}
static_assert(cfg_s8::BM == cfg_s::BM, "one tile list serves both GEMMs of a layer");

// ---------------------------------------------------------------------------------------
// the kernel

/* A block per (N-tile, M-tile): grid x the N-tiles of an expert, y an upper bound on the
 * tiles of the list. */
template <class C, bool GATE_UP, bool W8>
static __global__ void __launch_bounds__(C::THREADS) expert_gemm_kernel(gemm_params p)
{
	pdl_launch_next();
	pdl_wait_previous();
	extern __shared__ __align__(16) unsigned char smem_raw[];
	expert_tile<C, GATE_UP, W8>(p, blockIdx.y, blockIdx.x, smem_raw, nullptr, 0);
}

// ---------------------------------------------------------------------------------------
// launch

template <class C, bool GATE_UP, bool W8>
static qw_status launch(const gemm_params *p, int tiles, cudaStream_t stream, qw_err *err)
{
	static_assert(!W8 || fp8_tile<C>::ok, "FP8 tile");
	auto kernel = expert_gemm_kernel<C, GATE_UP, W8>;
	constexpr int smem = W8 ? C::SMEM8 : C::SMEM;
	QW_CUDA_TRY(err, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
					      smem));
	int out_bn = GATE_UP ? C::BN / 2 : C::BN;
	dim3 grid((unsigned)((p->g.N + out_bn - 1) / out_bn), (unsigned)tiles);
	QW_CUDA_TRY(err, launch_pdl(kernel, grid, dim3(C::THREADS), (size_t)smem, stream, *p));
	return QW_OK;
}

template <class C, class C8>
static qw_status launch_shape(const gemm_params *p, bool gate_up, int tiles,
			      cudaStream_t stream, qw_err *err)
{
	if (p->g.scale)
		return gate_up ? launch<C8, true, true>(p, tiles, stream, err)
			       : launch<C8, false, true>(p, tiles, stream, err);
	return gate_up ? launch<C, true, false>(p, tiles, stream, err)
		       : launch<C, false, false>(p, tiles, stream, err);
}

qw_status moe_gemm(const moe_gemm_args *g, moe_tile t, bool gate_up, int max_tiles,
		   cudaStream_t stream, qw_err *err)
{
	gemm_params p = gemm_params_of(g);
	if (QW_MOE_FP8_BLOCKSUM && g->scale &&
	    (g->scale_rows % cfg_s8::BK || g->scale_rows % cfg_m::BK || g->scale_rows % cfg_l::BK ||
	     g->scale_cols % 2 || g->N % 2))
		return qw_fail(err, QW_E_ARG, "moe gemm: this build's block-sum FP8 (QW_MOE_FP8_BLOCKSUM) "
			       "needs blocks of a multiple of %d rows and even columns, and an even "
			       "N, not %d x %d blocks and N %d", cfg_s8::BK, g->scale_rows, g->scale_cols,
			       g->N);
	switch (t) {
	case MOE_TILE_S:
		return launch_shape<cfg_s, cfg_s8>(&p, gate_up, max_tiles, stream, err);
	case MOE_TILE_M:
		return launch_shape<cfg_m, cfg_m>(&p, gate_up, max_tiles, stream, err);
	default:
		return launch_shape<cfg_l, cfg_l>(&p, gate_up, max_tiles, stream, err);
	}
}
