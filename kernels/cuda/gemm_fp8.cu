/* gemm_fp8.cu - dense projections on FP8 weights (W8A16): out (T, N) = x (T, K) W^T with W
 * (N, K) e4m3 codes and an fp32 scale per (br, bc) block, bf16 activations, fp32 sums, for
 * any number of tokens, batch invariant by construction.  See kernels.h (qw_cuda_gemm_fp8).
 *
 * The order (gemm.cu's, with the scale applied once a block of bc columns).  Every output
 * element is summed in an order fixed by (N, K, bc) alone, never by T or the kernel:
 *  - W's codes are taken at their exact values (e4m3 fits bf16: e4m3x8_exact_bf16x8), not
 *    multiplied by the scale: no per-weight multiply, and no bf16 rounding of the weight.
 *  - K is cut into groups of 64 (the last padded with zeros).  A group is four
 *    mma.sync.m16n8k16 (bf16 in, fp32 accumulate) in a fixed order: lane t of a quad feeds
 *    k = 64b + 16t + {0..3}, {4..7}, {8..11}, {12..15} to them in turn, so one 16-byte load
 *    brings a lane's 16 codes of a group, as one 16-byte load brings 8 bf16 values to
 *    gemm.cu's stream: as many bytes in flight a lane, twice the weights.
 *  - A scale block (bc columns: a multiple of 64) is one chain of MMAs over its groups in
 *    ascending order into an fp32 partial sum from 0; the partial is multiplied by the
 *    block's scale and added once: r = fma(partial, scale, r), blocks in ascending order.
 *  - The scale blocks form S runs of consecutive blocks (S = qw_cuda_gemm_splits(N, K), halved
 *    until it is at most the number of scale blocks, so no run is empty); each run's r
 *    starts at 0; the runs' sums are added in order, ((r0 + r1) + r2) + ..., each add rounded
 *    in fp32, and the total is rounded to bf16 once.
 * An MMA's element (m, n) depends only on row m of x, column n of W and its own accumulator,
 * and the scale of column n's block (br a multiple of 8: the 8 columns of an n8 tile share a
 * block row), so the stream and the tiles give the same bits for a row, at every T
 * (test_cuda_fp8 and test_cuda_invariance hold them to it).
 *
 * Why not the bf16 kernels' bits on the dequantised weight (the order before): that needs
 * bf16_rn(e4m3 * scale) for every weight, ~4.75 instructions a weight, which made the W8A16
 * stream as slow as bf16 (docs/performance.md); here a code costs ~2.5 (the conversion of
 * e4m3x8.h) and a 128-wide block of k one fma per output.  The price: the bits differ from
 * the bf16 path on the dequantised weight (and are nearer the CPU reference: the weight is
 * not rounded to bf16), so FP8 is held to the CPU reference within a tolerance
 * (test_cuda_fp8: |gpu - cpu| <= RMS(cpu) / 256 + |cpu| / 128, about four times the output's
 * bf16 rounding).
 * Why W8A16 for prefill too and not W8A8 (activations quantised per token and 128 columns
 * to e4m3, FP8 mma.sync.m16n8k32, the DeepSeek-V3 / vLLM recipe): the tiles must sum in the
 * decode stream's order for a row to keep its bits whatever T its step has, and W8A8 decode
 * would quantise every decode token's activations (2^-4 relative steps, errors ~30x the
 * W8A16 ones) to speed up a path bound by reading weights, where it gains nothing.  Prefill
 * at Hopper's FP8 rate is cuBLASLt's block-scaled GEMM (QW_CUDA_FP8_GEMM=cublaslt, fp8_gemm.cu):
 * W8A8 and not batch invariant, an opt-in for throughput.
 *
 * Kernels:
 *  - stream (T <= QW_CUDA_FP8_STREAM_MAX_T): a warp per (8 columns, run) streams its rows of W, a
 *    16-byte load of codes a lane a group, UNROLL groups in flight, into registers; x from
 *    L1/L2; the S warps of a column group are one CTA's and add their runs through shared
 *    memory in order.  Launched as a programmatic dependent launch (launch.h).
 *  - tiles (64 x 128, 8 warps of 32 x 32): a 4-stage cp.async pipeline of 64-deep k-groups,
 *    x as bf16 rows padded by 16 bytes (the 16-byte fragment loads of a quarter-warp then
 *    hit distinct banks), W as code rows of 64 bytes (conflict-free as they are), converted
 *    per fragment; three sets of accumulators (the scale block's partial, the run's sum and
 *    the total, the last only where S > 1).  A first cut: no larger tile, no tuning yet.
 * Shapes they take (qw_cuda_gemm_fp8_takes): one matrix, K a multiple of 16, bc a multiple
 * of 64, br a multiple of 8, codes and x 16-byte aligned; the backend dequantises other
 * weights and runs qw_cuda_gemm on them at every T (so each weight keeps one order).
 */
#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/e4m3x8.h"
#include "kernels/cuda/gemm_order.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"

typedef __nv_bfloat16 bf16;

#define G8 64                /* k values a group: a lane's 16 codes, four MMAs */
#define STREAM_WARPS 8       /* warps of a stream CTA: 8 / S column groups of S runs */
#define UNROLL 8             /* stream: groups of W in flight a lane */
#define STAGES 4             /* tiles: cp.async pipeline depth */

/* What the kernels read of an FP8 weight. */
struct fp8_w {
	const uint8_t *q;      /* (N, K) codes */
	const float *scale;    /* (ceil(N / br), sc) */
	int N, K, br, sc;
	int gps;               /* groups a scale block: bc / 64 */
	int nsb;               /* scale blocks of a row: ceil(K / bc) */
};

/* S of the FP8 order: gemm.cu's runs, at most one a scale block. */
static int fp8_splits(int N, int K, int bc)
{
	int S = qw_cuda_gemm_splits(N, K), nsb = (K + bc - 1) / bc;
	while (S > 1 && S > nsb)
		S /= 2;
	return S;
}

/* 16 codes of one 16-byte load as bf16: lo the first 8, hi the next 8. */
__device__ static inline void codes16(uint4 q, uint4 &lo, uint4 &hi)
{
	lo = e4m3x8_exact_bf16x8(make_uint2(q.x, q.y));
	hi = e4m3x8_exact_bf16x8(make_uint2(q.z, q.w));
}

/* c += one group: x0/x1 the lane's rows g (and g + 8: h0/h1) at 64b + 16t and + 8, wl/wh
 * its 16 weights of W's row g there. */
__device__ static inline void mma_group(float c[4], uint4 x0, uint4 h0, uint4 x1, uint4 h1,
					uint4 wl, uint4 wh)
{
	mma_block(c, x0, h0, wl);
	mma_block(c, x1, h1, wh);
}

/* The end of a scale block: r += p * s, p back to 0. */
__device__ static inline void scale_fold(float r[4], float p[4], float s)
{
#pragma unroll
	for (int q = 0; q < 4; q++) {
		r[q] = __fmaf_rn(p[q], s, r[q]);
		p[q] = 0.0f;
	}
}

/* Whether group b ends its scale block (or the row). */
__device__ static inline bool block_ends(const fp8_w &w, int b, int ng)
{
	return (b + 1) % w.gps == 0 || b + 1 == ng;
}

// ---------------------------------------------------------------------------------------
// stream: few rows, W read once straight into registers

template <int MT>
static __global__ void __launch_bounds__(STREAM_WARPS * 32)
gemm_fp8_stream_kernel(bf16 *out, const bf16 *x, const fp8_w w, int T, int S, bool pairs)
{
	pdl_launch_next();
	__shared__ float part[STREAM_WARPS][MT * 4][32];
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
	const int N = w.N, K = w.K, groups = STREAM_WARPS / S;
	const int grp = blockIdx.x * groups + warp / S, run = warp % S;
	const int ng = (K + G8 - 1) / G8, chunks = K / 16;
	const int b0 = run_begin(run, w.nsb, S) * w.gps;
	const int b1 = min(run_begin(run + 1, w.nsb, S) * w.gps, ng);
	const int n = grp * 8 + g, c0 = grp * 8 < N ? grp * 8 : 0;
	const uint4 *wp = (const uint4 *)(w.q + (size_t)(n < N ? n : 0) * (size_t)K) + t;
	const float *srow = w.scale + (size_t)(c0 / w.br) * (size_t)w.sc;
	auto wload = [&](int b) -> uint4 {
		return n < N && b * 4 + t < chunks ? __ldcs(wp + b * 4) : zero4();
	};
	/* W does not depend on the previous kernel: its first loads go out before waiting */
	uint4 wv[UNROLL];
#pragma unroll
	for (int u = 0; u < UNROLL; u++)
		wv[u] = b0 + u < b1 ? wload(b0 + u) : zero4();
	pdl_wait_previous();
	float p[MT][4], r[MT][4];
#pragma unroll
	for (int m = 0; m < MT; m++)
#pragma unroll
		for (int q = 0; q < 4; q++)
			p[m][q] = r[m][q] = 0.0f;
	const uint4 *xrow[MT][2];
	bool xok[MT][2];
	stream_x_rows<MT>(xrow, xok, x, T, K, g, 2 * t);
	for (int b = b0; b < b1; b += UNROLL) {
		uint4 cur[UNROLL];
#pragma unroll
		for (int u = 0; u < UNROLL; u++) {
			cur[u] = wv[u];
			wv[u] = b + UNROLL + u < b1 ? wload(b + UNROLL + u) : zero4();
		}
#pragma unroll
		for (int u = 0; u < UNROLL; u++) {
			const int bb = b + u;
			if (bb >= b1)
				break;
			const bool in = bb * 4 + t < chunks;
			uint4 wl, wh;
			codes16(cur[u], wl, wh);
#pragma unroll
			for (int m = 0; m < MT; m++) {
				const bool i0 = xok[m][0] && in, i1 = xok[m][1] && in;
				uint4 x0 = i0 ? __ldg(xrow[m][0] + bb * 8) : zero4();
				uint4 x1 = i0 ? __ldg(xrow[m][0] + bb * 8 + 1) : zero4();
				uint4 h0 = i1 ? __ldg(xrow[m][1] + bb * 8) : zero4();
				uint4 h1 = i1 ? __ldg(xrow[m][1] + bb * 8 + 1) : zero4();
				mma_group(p[m], x0, h0, x1, h1, wl, wh);
			}
			if (block_ends(w, bb, ng)) {
				const float s = __ldg(srow + bb / w.gps);
#pragma unroll
				for (int m = 0; m < MT; m++)
					scale_fold(r[m], p[m], s);
			}
		}
	}
	if (!join_runs<MT>(r, part, warp, lane, run, S))
		return;
#pragma unroll
	for (int m = 0; m < MT; m++)
		store_tile(out, r[m], m * 16 + g, grp * 8 + 2 * t, T, N, pairs);
}

// ---------------------------------------------------------------------------------------
// tiles: more rows, through shared memory

struct f8_tile {
	static constexpr int BM = 64, BN = 128, WM = 32, WN = 32;
	static constexpr int WARPS_N = BN / WN, WARPS = (BM / WM) * WARPS_N, THREADS = 32 * WARPS;
	static constexpr int MI = WM / 16, NJ = WN / 8;   /* m16 / n8 tiles a warp */
	static constexpr int A_LD = G8 + 8;               /* bf16 a row of x: 64 and a pad of 16 bytes */
	static constexpr int A_STAGE = BM * A_LD;         /* bf16 elements */
	static constexpr int B_STAGE = BN * G8;           /* code bytes */
	static constexpr int SMEM = STAGES * (A_STAGE * 2 + B_STAGE);
	static constexpr int A_ITERS = BM * (G8 / 8) / THREADS;    /* 16-byte copies a thread */
	static constexpr int B_ITERS = BN * (G8 / 16) / THREADS;
	static_assert(A_ITERS * THREADS == BM * (G8 / 8) && B_ITERS * THREADS == BN * (G8 / 16),
		      "copies must split evenly");
};

template <bool RUNS>
static __global__ void __launch_bounds__(f8_tile::THREADS)
gemm_fp8_tile_kernel(bf16 *out, const bf16 *x, const fp8_w w, int T, int S, bool pairs)
{
	typedef f8_tile C;
	pdl_launch_next();
	pdl_wait_previous();
	extern __shared__ __align__(16) unsigned char smem_raw[];
	bf16 *As = (bf16 *)smem_raw;
	uint8_t *Bs = smem_raw + STAGES * C::A_STAGE * 2;
	const int N = w.N, K = w.K;
	const int n0 = blockIdx.x * C::BN, m0 = blockIdx.y * C::BM;
	const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
	const int wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;
	const int ng = (K + G8 - 1) / G8, xchunks = K / 8, qchunks = K / 16;

	const bf16 *a_src[C::A_ITERS];
	const uint8_t *b_src[C::B_ITERS];
	int a_dst[C::A_ITERS], a_ch[C::A_ITERS], b_dst[C::B_ITERS], b_ch[C::B_ITERS];
#pragma unroll
	for (int i = 0; i < C::A_ITERS; i++) {
		int c = tid + i * C::THREADS, r = c / (G8 / 8);
		a_ch[i] = c % (G8 / 8);
		a_dst[i] = r * C::A_LD + a_ch[i] * 8;
		a_src[i] = m0 + r < T ? x + (size_t)(m0 + r) * (size_t)K : nullptr;
	}
#pragma unroll
	for (int i = 0; i < C::B_ITERS; i++) {
		int c = tid + i * C::THREADS, r = c / (G8 / 16);
		b_ch[i] = c % (G8 / 16);
		b_dst[i] = r * G8 + b_ch[i] * 16;
		b_src[i] = n0 + r < N ? w.q + (size_t)(n0 + r) * (size_t)K : nullptr;
	}
	auto load_tile = [&](int stage, int b) {
		bf16 *as = As + stage * C::A_STAGE;
		uint8_t *bs = Bs + stage * C::B_STAGE;
#pragma unroll
		for (int i = 0; i < C::A_ITERS; i++) {
			int ch = b * (G8 / 8) + a_ch[i];
			bool ok = a_src[i] && ch < xchunks;
			cp_async<16>(as + a_dst[i], ok ? a_src[i] + (size_t)ch * 8 : x, ok);
		}
#pragma unroll
		for (int i = 0; i < C::B_ITERS; i++) {
			int ch = b * (G8 / 16) + b_ch[i];
			bool ok = b_src[i] && ch < qchunks;
			cp_async<16>(bs + b_dst[i], ok ? b_src[i] + (size_t)ch * 16 : w.q, ok);
		}
	};
	/* the scales of the warp's n8 tiles: each tile's 8 columns share a block row */
	const float *srow[C::NJ];
#pragma unroll
	for (int j = 0; j < C::NJ; j++) {
		int c = n0 + wn * C::WN + j * 8;
		srow[j] = w.scale + (size_t)((c < N ? c : 0) / w.br) * (size_t)w.sc;
	}

	float p[C::MI][C::NJ][4], r[C::MI][C::NJ][4], tot[C::MI][C::NJ][4];
#pragma unroll
	for (int i = 0; i < C::MI; i++)
#pragma unroll
		for (int j = 0; j < C::NJ; j++)
#pragma unroll
			for (int q = 0; q < 4; q++)
				p[i][j][q] = r[i][j][q] = tot[i][j][q] = 0.0f;
	/* run `run` ends before scale block run_end; at its end its sum joins the total */
	int run = 0, run_end = run_begin(1, w.nsb, S);

#pragma unroll
	for (int s = 0; s < STAGES - 1; s++) {
		if (s < ng)
			load_tile(s, s);
		cp_async_commit();
	}
	for (int b = 0; b < ng; b++) {
		cp_async_wait<STAGES - 2>();   /* group b has landed */
		__syncthreads();               /* ... for everyone; stage b - 1 is free */
		int pf = b + STAGES - 1;
		if (pf < ng)
			load_tile(pf % STAGES, pf);
		cp_async_commit();
		const bf16 *as = As + (b % STAGES) * C::A_STAGE;
		const uint8_t *bs = Bs + (b % STAGES) * C::B_STAGE;
		uint4 wl[C::NJ], wh[C::NJ];
#pragma unroll
		for (int j = 0; j < C::NJ; j++)
			codes16(*(const uint4 *)(bs + (wn * C::WN + j * 8 + g) * G8 + 16 * t), wl[j],
				wh[j]);
#pragma unroll
		for (int i = 0; i < C::MI; i++) {
			const bf16 *ar = as + (wm * C::WM + i * 16 + g) * C::A_LD + 16 * t;
			uint4 x0 = *(const uint4 *)ar, x1 = *(const uint4 *)(ar + 8);
			uint4 h0 = *(const uint4 *)(ar + 8 * C::A_LD);
			uint4 h1 = *(const uint4 *)(ar + 8 * C::A_LD + 8);
#pragma unroll
			for (int j = 0; j < C::NJ; j++)
				mma_group(p[i][j], x0, h0, x1, h1, wl[j], wh[j]);
		}
		if (block_ends(w, b, ng)) {
			const int sb = b / w.gps;
#pragma unroll
			for (int j = 0; j < C::NJ; j++) {
				const float s = __ldg(srow[j] + sb);
#pragma unroll
				for (int i = 0; i < C::MI; i++)
					scale_fold(r[i][j], p[i][j], s);
			}
			if (RUNS && sb + 1 == run_end) {
#pragma unroll
				for (int i = 0; i < C::MI; i++)
#pragma unroll
					for (int j = 0; j < C::NJ; j++)
						join_run(tot[i][j], r[i][j], run == 0);
				run++;
				run_end = run_begin(run + 1, w.nsb, S);
			}
		}
	}
	cp_async_wait<0>();
#pragma unroll
	for (int i = 0; i < C::MI; i++)
#pragma unroll
		for (int j = 0; j < C::NJ; j++)
			store_tile(out, RUNS ? tot[i][j] : r[i][j], m0 + wm * C::WM + i * 16 + g,
				   n0 + wn * C::WN + j * 8 + 2 * t, T, N, pairs);
}

// ---------------------------------------------------------------------------------------
// launchers

static bool aligned16(const void *p)
{
	return ((uintptr_t)p & 15) == 0;
}

extern "C" bool qw_cuda_gemm_fp8_takes(int T, const qw_cuda_fp8_weight *w, const void *x)
{
	return T >= 1 && w && w->mats == 1 && w->rows >= 1 && w->cols % 16 == 0 && w->cols >= 16 &&
	       w->bc >= G8 && w->bc % G8 == 0 && w->br >= 8 && w->br % 8 == 0 && aligned16(x) &&
	       aligned16(w->q);
}

extern "C" int qw_cuda_gemm_fp8_splits(const qw_cuda_fp8_weight *w)
{
	return fp8_splits(w->rows, w->cols, w->bc);
}

extern "C" qw_status qw_cuda_gemm_fp8_with(qw_gemm_kernel kind, uint16_t *out, const uint16_t *x,
					   const qw_cuda_fp8_weight *w, int T, cudaStream_t stream,
					   qw_err *err)
{
	if (T == 0 && w)
		return QW_OK;
	if (!out || !x || !w || !qw_cuda_gemm_fp8_takes(T, w, x))
		return qw_fail(err, QW_E_ARG, "cuda gemm (fp8): T %d of a %d x %d weight of %d x %d "
			       "blocks: needs one matrix, K a multiple of 16, block columns a multiple "
			       "of 64, block rows of 8, x and the codes 16-byte aligned", T,
			       w ? w->rows : 0, w ? w->cols : 0, w ? w->br : 0, w ? w->bc : 0);
	const int N = w->rows, K = w->cols, S = fp8_splits(N, K, w->bc);
	const fp8_w fw = {w->q, w->scale, N, K, w->br, (K + w->bc - 1) / w->bc, w->bc / G8,
			  (K + w->bc - 1) / w->bc};
	const bool pairs = N % 2 == 0 && ((uintptr_t)out & 3) == 0;
	bf16 *o = (bf16 *)out;
	const bf16 *xb = (const bf16 *)x;
	if (kind == QW_GEMM_AUTO)
		kind = T <= QW_CUDA_FP8_STREAM_MAX_T ? QW_GEMM_STREAM : QW_GEMM_TILE_M;
	if (kind == QW_GEMM_STREAM) {
		if (T > 64)
			return qw_fail(err, QW_E_ARG, "cuda gemm (fp8): the stream kernel takes at most "
				       "64 rows, not %d", T);
		void (*kernel)(bf16 *, const bf16 *, const fp8_w, int, int, bool) =
			T <= 16 ? gemm_fp8_stream_kernel<1> : T <= 32 ? gemm_fp8_stream_kernel<2>
							     : gemm_fp8_stream_kernel<4>;
		int64_t groups = (N + 7) / 8, per = STREAM_WARPS / S;
		QW_CUDA_TRY(err, launch_pdl(kernel, dim3((unsigned)((groups + per - 1) / per)),
					    dim3(STREAM_WARPS * 32), 0, stream, o, xb, fw, T, S, pairs));
		return QW_OK;
	}
	if (kind != QW_GEMM_TILE_M)
		return qw_fail(err, QW_E_ARG, "cuda gemm (fp8): no kernel %d (stream or 64x128 tiles)",
			       (int)kind);
	auto kernel = S > 1 ? gemm_fp8_tile_kernel<true> : gemm_fp8_tile_kernel<false>;
	QW_CUDA_TRY(err, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
					      f8_tile::SMEM));
	int64_t mt = (T + f8_tile::BM - 1) / f8_tile::BM;
	if (mt > 65535)
		return qw_fail(err, QW_E_ARG, "cuda gemm (fp8): %d rows is too many for one call", T);
	dim3 grid((unsigned)((N + f8_tile::BN - 1) / f8_tile::BN), (unsigned)mt);
	QW_CUDA_TRY(err, launch_pdl(kernel, grid, dim3(f8_tile::THREADS), (size_t)f8_tile::SMEM,
				    stream, o, xb, fw, T, S, pairs));
	return QW_OK;
}

extern "C" qw_status qw_cuda_gemm_fp8(uint16_t *out, const uint16_t *x,
				      const qw_cuda_fp8_weight *w, int T, cudaStream_t stream,
				      qw_err *err)
{
	return qw_cuda_gemm_fp8_with(QW_GEMM_AUTO, out, x, w, T, stream, err);
}
