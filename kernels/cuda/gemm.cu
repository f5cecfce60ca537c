/* gemm.cu - dense projections, out (T, N) = x (T, K) W^T with W (N, K) in the checkpoint's
 * [out, in] layout, for any number of tokens, batch invariant by construction.  See kernels.h
 * (qw_cuda_gemm).
 *
 * One order of the sums per shape.  Every output element is summed in an order fixed by
 * (N, K) alone, never by T, the kernel or the tile, so a token's bits do not depend on what
 * else its step holds:
 *  - K is cut into blocks of 32 (the last padded with zeros).  A block is two
 *    mma.sync.m16n8k16 in a fixed order: the first over k = 32b + 8t + {0, 1, 2, 3}, t = 0..3
 *    (MMA slots 2t, 2t+1, 2t+8, 2t+9), the second over 32b + 8t + {4, .., 7}.  This fixed
 *    permutation of k inside a block lets a lane feed both MMAs from one 16-byte load of a
 *    row of x or W at 32b + 8t, from registers or shared memory alike (mma_block).
 *  - The blocks form S = qw_cuda_gemm_splits(N, K) runs of consecutive blocks (S is 1, 2, 4 or
 *    8, as many as a decode step needs warps to stream W at the memory's rate); each run is
 *    one chain of MMAs over its blocks in ascending order into an fp32 accumulator from 0.
 *  - The runs' sums are added in order, ((r0 + r1) + r2) + ..., each add rounded in fp32,
 *    and the total is rounded to bf16 once.
 * An MMA's element (m, n) depends only on row m of x, column n of W and its own accumulator,
 * so neither the other rows of a tile nor its padding reach it: every kernel below follows
 * the order and gives the same bits (test_cuda_invariance holds them to it).
 *
 * Kernels:
 *  - stream (T <= 16 MT rows, MT 1, 2 or 4): a warp per (8 columns, run) reads its 8 rows of W
 *    straight into registers once (16-byte loads, UNROLL blocks in flight a lane, streaming
 *    cache hint) and x from L1/L2; the S warps of a column group are one CTA's and add their
 *    runs through shared memory in order.  Many CTAs of few columns, no atomics: W streams at
 *    the memory's rate, as the few-rows kernel did, with S runs where N alone gives too few
 *    warps.  A programmatic dependent launch: the first weight loads go out before it waits
 *    for the kernel that wrote x.
 *  - tiles (M: 64 x 128, 4 warps; L: 128 x 128, 8 warps): 4-stage cp.async pipeline through
 *    shared memory, rows of 32 values (64 bytes, so the 16-byte fragment loads of 8 lanes
 *    cover 128 consecutive bytes: no bank conflicts, no padding), warp tiles of 64 x 32; a
 *    run's chain in registers, folded into the total where the next run begins (a second
 *    set of accumulators, only where S > 1).
 *  - rows (K not a multiple of 8, or x or W not 16-byte aligned: no real model's projection,
 *    but small test shapes and odd views): a thread per output, one fp32 fma chain over k in
 *    order.  Another order, but the one every T of such a shape and alignment takes.
 * FP8 weights (W8A16, qw_cuda_gemm_fp8) have kernels of their own in gemm_fp8.cu: the same
 * blocks and runs, with a partial sum per scale block multiplied by the block's scale (its
 * header says how and why); they share this order's pieces through gemm_order.h.
 * qw_cuda_gemm picks by T (stream up to STREAM_MAX_T rows, M up to 128, L beyond); the choice
 * changes the speed only.  gemm_wgmma.cu's tile (QW_GEMM_WGMMA) keeps the same order on
 * Hopper's warpgroup MMA; it is never the automatic choice (the backend opts in).
 * Tuning belongs to issue 20: bench_cuda_matmul times every kernel against cuBLAS at decode
 * and prefill shapes.
 */
#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/gemm_order.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.h"

typedef __nv_bfloat16 bf16;

#define STREAM_WARPS 8       /* warps of a stream CTA: 8 / S column groups of S runs */
#define UNROLL 8             /* stream: blocks of W in flight a lane */
#define STREAM_MAX_T 32      /* qw_cuda_gemm's largest T for the stream kernel */
#define TARGET_WARPS 1024    /* stream warps a shape should have: ~8 an SM */
#define MIN_RUN_BLOCKS 8     /* a run is at least 256 values of k */
#define STAGES 4             /* tiles: cp.async pipeline depth */

// ---------------------------------------------------------------------------------------
// the order

extern "C" int qw_cuda_gemm_splits(int N, int K)
{
	int64_t blocks = (K + KB - 1) / KB, groups = (N + 7) / 8;
	int S = 1;
	while (S < 8 && groups * S * 2 <= TARGET_WARPS && blocks / (2 * S) >= MIN_RUN_BLOCKS)
		S *= 2;
	return S;
}

// ---------------------------------------------------------------------------------------
// the weight format the stream reads: a lane's 8 values of its row at a block, as loaded
// (raw) and as the MMA takes them (8 bf16 values in a uint4)

/* bf16: one 16-byte load. */
struct bf16_rows {
	const bf16 *w;
	int K;
	typedef uint4 raw;
	struct lane {
		const uint4 *p;   /* the lane's first chunk of its row */
	};
	__device__ lane at(int n, int t) const
	{
		return {(const uint4 *)(w + (size_t)n * (size_t)K) + t};
	}
	__device__ static raw load(const lane &l, int b) { return __ldcs(l.p + b * 4); }
	__device__ static raw none(void) { return zero4(); }
	__device__ static uint4 widen(const raw &r) { return r; }
};

// ---------------------------------------------------------------------------------------
// stream: few rows, W read once straight into registers

template <int MT, class W>
static __global__ void __launch_bounds__(STREAM_WARPS * 32)
gemm_stream_kernel(bf16 *out, const bf16 *x, const W w, int T, int N, int K, int S, bool pairs)
{
	pdl_launch_next();
	__shared__ float part[STREAM_WARPS][MT * 4][32];
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
	const int groups = STREAM_WARPS / S;
	const int grp = blockIdx.x * groups + warp / S, run = warp % S;
	const int nb = (K + KB - 1) / KB, chunks = K / 8;
	const int b0 = run_begin(run, nb, S), b1 = run_begin(run + 1, nb, S);
	const int n = grp * 8 + g;
	const typename W::lane wl = w.at(n < N ? n : 0, t);
	auto wload = [&](int b) -> typename W::raw {
		return n < N && b * 4 + t < chunks ? W::load(wl, b) : W::none();
	};
	/* W does not depend on the previous kernel: its first loads go out before waiting */
	typename W::raw wv[UNROLL];
#pragma unroll
	for (int u = 0; u < UNROLL; u++)
		wv[u] = b0 + u < b1 ? wload(b0 + u) : W::none();
	pdl_wait_previous();
	float acc[MT][4];
#pragma unroll
	for (int m = 0; m < MT; m++)
		acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
	const uint4 *xrow[MT][2];
	bool xok[MT][2];
	stream_x_rows<MT>(xrow, xok, x, T, K, g, t);
	for (int b = b0; b < b1; b += UNROLL) {
		typename W::raw cur[UNROLL];
#pragma unroll
		for (int u = 0; u < UNROLL; u++) {
			cur[u] = wv[u];
			wv[u] = b + UNROLL + u < b1 ? wload(b + UNROLL + u) : W::none();
		}
#pragma unroll
		for (int u = 0; u < UNROLL; u++) {
			const int bb = b + u;
			if (bb >= b1)
				break;
			const bool in = bb * 4 + t < chunks;
			const uint4 wk = W::widen(cur[u]);
#pragma unroll
			for (int m = 0; m < MT; m++) {
				uint4 lo = xok[m][0] && in ? __ldg(xrow[m][0] + bb * 4) : zero4();
				uint4 hi = xok[m][1] && in ? __ldg(xrow[m][1] + bb * 4) : zero4();
				mma_block(acc[m], lo, hi, wk);
			}
		}
	}
	if (!join_runs<MT>(acc, part, warp, lane, run, S))
		return;
#pragma unroll
	for (int m = 0; m < MT; m++)
		store_tile(out, acc[m], m * 16 + g, grp * 8 + 2 * t, T, N, pairs);
}

// ---------------------------------------------------------------------------------------
// tiles: more rows, through shared memory

/* A BM x BN tile of out by warps of WM x WN, STAGES deep. */
template <int BM_, int BN_, int WM_, int WN_> struct tile_cfg {
	static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_;
	static constexpr int WARPS_N = BN / WN, WARPS = (BM / WM) * WARPS_N, THREADS = 32 * WARPS;
	static constexpr int MI = WM / 16, NJ = WN / 8;     /* m16 / n8 tiles a warp */
	static constexpr int A_STAGE = BM * KB, B_STAGE = BN * KB;   /* elements */
	static constexpr int SMEM = STAGES * (A_STAGE + B_STAGE) * 2;  /* bytes */
	static constexpr int A_ITERS = BM * (KB / 8) / THREADS;       /* 16-byte copies a thread */
	static constexpr int B_ITERS = BN * (KB / 8) / THREADS;
	static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 8 == 0, "warp tiles");
	static_assert(A_ITERS * THREADS == BM * (KB / 8) && B_ITERS * THREADS == BN * (KB / 8),
		      "copies must split evenly");
};
typedef tile_cfg<64, 128, 64, 32> cfg_m;
typedef tile_cfg<128, 128, 64, 32> cfg_l;

template <class C, bool RUNS>
static __global__ void __launch_bounds__(C::THREADS)
gemm_tile_kernel(bf16 *out, const bf16 *x, const bf16 *w, int T, int N, int K, int S, bool pairs)
{
	pdl_launch_next();
	pdl_wait_previous();
	extern __shared__ __align__(16) unsigned char smem_raw[];
	bf16 *As = (bf16 *)smem_raw, *Bs = As + STAGES * C::A_STAGE;
	const int n0 = blockIdx.x * C::BN, m0 = blockIdx.y * C::BM;
	const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
	const int wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;
	const int nb = (K + KB - 1) / KB, chunks = K / 8;

	/* each thread's 16-byte copies keep their row and chunk over k */
	const bf16 *a_src[C::A_ITERS], *b_src[C::B_ITERS];
	int a_dst[C::A_ITERS], a_ch[C::A_ITERS], b_dst[C::B_ITERS], b_ch[C::B_ITERS];
#pragma unroll
	for (int i = 0; i < C::A_ITERS; i++) {
		int c = tid + i * C::THREADS, r = c / 4;
		a_ch[i] = c % 4;
		a_dst[i] = r * KB + a_ch[i] * 8;
		a_src[i] = m0 + r < T ? x + (size_t)(m0 + r) * (size_t)K : nullptr;
	}
#pragma unroll
	for (int i = 0; i < C::B_ITERS; i++) {
		int c = tid + i * C::THREADS, r = c / 4;
		b_ch[i] = c % 4;
		b_dst[i] = r * KB + b_ch[i] * 8;
		b_src[i] = n0 + r < N ? w + (size_t)(n0 + r) * (size_t)K : nullptr;
	}
	auto load_tile = [&](int stage, int b) {
		bf16 *as = As + stage * C::A_STAGE, *bs = Bs + stage * C::B_STAGE;
#pragma unroll
		for (int i = 0; i < C::A_ITERS; i++) {
			int ch = b * 4 + a_ch[i];
			bool ok = a_src[i] && ch < chunks;
			cp_async<16>(as + a_dst[i], ok ? a_src[i] + (size_t)ch * 8 : x, ok);
		}
#pragma unroll
		for (int i = 0; i < C::B_ITERS; i++) {
			int ch = b * 4 + b_ch[i];
			bool ok = b_src[i] && ch < chunks;
			cp_async<16>(bs + b_dst[i], ok ? b_src[i] + (size_t)ch * 8 : w, ok);
		}
	};

	float acc[C::MI][C::NJ][4], tot[C::MI][C::NJ][4];
#pragma unroll
	for (int i = 0; i < C::MI; i++)
#pragma unroll
		for (int j = 0; j < C::NJ; j++)
#pragma unroll
			for (int q = 0; q < 4; q++)
				acc[i][j][q] = tot[i][j][q] = 0.0f;
	/* run `run` ends before block run_end; at its end its chain joins the total */
	int run = 0, run_end = run_begin(1, nb, S);
	auto fold = [&]() {
#pragma unroll
		for (int i = 0; i < C::MI; i++)
#pragma unroll
			for (int j = 0; j < C::NJ; j++)
				join_run(tot[i][j], acc[i][j], run == 0);
	};

#pragma unroll
	for (int s = 0; s < STAGES - 1; s++) {
		if (s < nb)
			load_tile(s, s);
		cp_async_commit();
	}
	for (int b = 0; b < nb; b++) {
		if (RUNS && b == run_end) {
			fold();
			run++;
			run_end = run_begin(run + 1, nb, S);
		}
		cp_async_wait<STAGES - 2>();   /* block b has landed */
		__syncthreads();               /* ... for everyone; stage b - 1 is free */
		int pf = b + STAGES - 1;
		if (pf < nb)
			load_tile(pf % STAGES, pf);
		cp_async_commit();
		const bf16 *as = As + (b % STAGES) * C::A_STAGE, *bs = Bs + (b % STAGES) * C::B_STAGE;
		uint4 wf[C::NJ];
#pragma unroll
		for (int j = 0; j < C::NJ; j++)
			wf[j] = *(const uint4 *)(bs + (wn * C::WN + j * 8 + g) * KB + 8 * t);
#pragma unroll
		for (int i = 0; i < C::MI; i++) {
			const bf16 *ar = as + (wm * C::WM + i * 16 + g) * KB + 8 * t;
			uint4 lo = *(const uint4 *)ar, hi = *(const uint4 *)(ar + 8 * KB);
#pragma unroll
			for (int j = 0; j < C::NJ; j++)
				mma_block(acc[i][j], lo, hi, wf[j]);
		}
	}
	cp_async_wait<0>();
	if (RUNS)
		fold();   /* the last run */
#pragma unroll
	for (int i = 0; i < C::MI; i++)
#pragma unroll
		for (int j = 0; j < C::NJ; j++)
			store_tile(out, RUNS ? tot[i][j] : acc[i][j], m0 + wm * C::WM + i * 16 + g,
				   n0 + wn * C::WN + j * 8 + 2 * t, T, N, pairs);
}

// ---------------------------------------------------------------------------------------
// rows: shapes the MMA kernels cannot read

static __global__ void gemm_rows_kernel(bf16 *out, const bf16 *x, const bf16 *w, int T, int N,
					int K)
{
	const int n = blockIdx.x * blockDim.x + threadIdx.x;
	if (n >= N)
		return;
	const bf16 *wr = w + (size_t)n * (size_t)K;
	for (int r = blockIdx.y; r < T; r += gridDim.y) {
		const bf16 *xr = x + (size_t)r * (size_t)K;
		float acc = 0.0f;
		for (int k = 0; k < K; k++)
			acc = __fmaf_rn(__bfloat162float(xr[k]), __bfloat162float(wr[k]), acc);
		out[(size_t)r * (size_t)N + n] = __float2bfloat16_rn(acc);
	}
}

// ---------------------------------------------------------------------------------------
// launchers

static bool aligned16(const void *p)
{
	return ((uintptr_t)p & 15) == 0;
}

static bool mma_shape(int K, const void *x, const void *w)
{
	return K % 8 == 0 && aligned16(x) && aligned16(w);
}

extern "C" qw_gemm_kernel qw_cuda_gemm_pick(int T, int N, int K, const void *x, const void *w)
{
	(void)N;
	if (!mma_shape(K, x, w))
		return QW_GEMM_ROWS;
	if (T <= STREAM_MAX_T)
		return QW_GEMM_STREAM;
	return T <= 128 ? QW_GEMM_TILE_M : QW_GEMM_TILE_L;
}

template <class W>
static qw_status launch_stream(bf16 *o, const bf16 *x, const W &w, int T, int N, int K, int S,
			       bool pairs, cudaStream_t stream, qw_err *err)
{
	if (T > 64)
		return qw_fail(err, QW_E_ARG, "cuda gemm: the stream kernel takes at most 64 rows, not "
			       "%d", T);
	void (*kernel)(bf16 *, const bf16 *, const W, int, int, int, int, bool) =
		T <= 16 ? gemm_stream_kernel<1, W> : T <= 32 ? gemm_stream_kernel<2, W>
						    : gemm_stream_kernel<4, W>;
	int64_t groups = (N + 7) / 8, per = STREAM_WARPS / S;
	QW_CUDA_TRY(err, launch_pdl(kernel, dim3((unsigned)((groups + per - 1) / per)),
				    dim3(STREAM_WARPS * 32), 0, stream, o, x, w, T, N, K, S, pairs));
	return QW_OK;
}

template <class C>
static qw_status launch_tile(bf16 *o, const bf16 *x, const bf16 *w, int T, int N, int K, int S,
			     bool pairs, cudaStream_t stream, qw_err *err)
{
	auto kernel = S > 1 ? gemm_tile_kernel<C, true> : gemm_tile_kernel<C, false>;
	QW_CUDA_TRY(err, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
					      C::SMEM));
	int64_t mt = (T + C::BM - 1) / C::BM;
	if (mt > 65535)
		return qw_fail(err, QW_E_ARG, "cuda gemm: %d rows is too many for one call", T);
	dim3 grid((unsigned)((N + C::BN - 1) / C::BN), (unsigned)mt);
	QW_CUDA_TRY(err, launch_pdl(kernel, grid, dim3(C::THREADS), (size_t)C::SMEM, stream, o, x,
				    w, T, N, K, S, pairs));
	return QW_OK;
}

extern "C" qw_status qw_cuda_gemm_with(qw_gemm_kernel kind, uint16_t *out, const uint16_t *x,
				       const uint16_t *w, int T, int N, int K,
				       cudaStream_t stream, qw_err *err)
{
	if (T < 0 || N < 1 || K < 1)
		return qw_fail(err, QW_E_ARG, "cuda gemm: T %d, N %d, K %d", T, N, K);
	if (T == 0)
		return QW_OK;
	if (!out || !x || !w)
		return qw_fail(err, QW_E_ARG, "cuda gemm: a NULL operand");
	if (kind == QW_GEMM_AUTO)
		kind = qw_cuda_gemm_pick(T, N, K, x, w);
	if (kind != QW_GEMM_ROWS && !mma_shape(K, x, w))
		return qw_fail(err, QW_E_ARG, "cuda gemm: K %d with x %p, w %p: the MMA kernels need K "
			       "a multiple of 8 and x, w 16-byte aligned", K, (const void *)x,
			       (const void *)w);
	bf16 *o = (bf16 *)out;
	const bf16 *xb = (const bf16 *)x, *wb = (const bf16 *)w;
	const int S = qw_cuda_gemm_splits(N, K);
	const bool pairs = N % 2 == 0 && ((uintptr_t)out & 3) == 0;
	switch (kind) {
	case QW_GEMM_STREAM:
		return launch_stream(o, xb, bf16_rows{wb, K}, T, N, K, S, pairs, stream, err);
	case QW_GEMM_TILE_M:
		return launch_tile<cfg_m>(o, xb, wb, T, N, K, S, pairs, stream, err);
	case QW_GEMM_TILE_L:
		return launch_tile<cfg_l>(o, xb, wb, T, N, K, S, pairs, stream, err);
	case QW_GEMM_WGMMA:
		return qw_cuda_gemm_wgmma(out, x, w, T, N, K, stream, err);
	case QW_GEMM_ROWS: {
		dim3 grid((unsigned)((N + 127) / 128), (unsigned)(T < 65535 ? T : 65535));
		gemm_rows_kernel<<<grid, 128, 0, stream>>>(o, xb, wb, T, N, K);
		QW_CUDA_TRY(err, cudaGetLastError());
		return QW_OK;
	}
	default:
		return qw_fail(err, QW_E_ARG, "cuda gemm: no kernel %d", (int)kind);
	}
}

extern "C" qw_status qw_cuda_gemm(uint16_t *out, const uint16_t *x, const uint16_t *w, int T,
				  int N, int K, cudaStream_t stream, qw_err *err)
{
	return qw_cuda_gemm_with(QW_GEMM_AUTO, out, x, w, T, N, K, stream, err);
}
