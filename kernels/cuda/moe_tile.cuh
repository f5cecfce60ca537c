/* moe_tile.cuh - one output tile of the MoE block's grouped expert GEMM, as a device function
 * (CUDA C++ device code, private to kernels/cuda/): moe_gemm.cu's kernels run one a block,
 * moe_fused.cu's persistent kernel one per work item.  moe_gemm.cu's header says how a tile
 * is computed (mma.sync fed by a cp.async pipeline; FP8 experts dequantised in shared memory)
 * and why its bits depend on nothing but a row of a, a column of the weights and K: the same
 * function in both kernels, whatever the tile's width, depth or warps, gives the same bits.
 *
 * Owns: tile_cfg (a tile shape), the FP8 dequantisation of eight weights, swiglu,
 * gemm_params (a GEMM's arguments as a kernel takes them; gemm_params_of), wait_count (a
 * block waiting for a counter in global memory, bounded in time) and expert_tile.
 */
#ifndef QW_KERNELS_CUDA_MOE_TILE_CUH
#define QW_KERNELS_CUDA_MOE_TILE_CUH

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/e4m3x8.h"
#include "kernels/cuda/mma.h"
#include "kernels/cuda/moe_gemm.h"

#ifndef QW_MOE_FP8_HW
#define QW_MOE_FP8_HW 0
#endif
#if QW_MOE_FP8_HW
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#endif
/* QW_MOE_FP8_BLOCKSUM=1 (a build variant of moe_gemm.cu, bench_cuda_moe_fp8_blocksum): FP8
 * tiles in shared memory hold the codes' exact values (no scale, e4m3x8_exact_bf16x8: ~2.5
 * instructions a code against ~4.5), the MMAs sum each block of scale_rows of k into a
 * partial, and the partial is multiplied by its column's scale once: acc = fma(partial, s,
 * acc), blocks in order.  Not the bf16 kernel's bits on the dequantised experts (nearer the
 * exact values); every tile shape of that build follows it, so it stays batch invariant
 * (the fused kernel, built without it, keeps the bf16 kernel's bits).  Needs k-tiles inside
 * blocks of rows (scale_rows a multiple of BK) and even block columns. */
#ifndef QW_MOE_FP8_BLOCKSUM
#define QW_MOE_FP8_BLOCKSUM 0
#endif
/* the hardware's conversion where asked for and the device has it (sm_89 and up) */
#if QW_MOE_FP8_HW && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define MOE_FP8_HW_CVT 1
#else
#define MOE_FP8_HW_CVT 0
#endif

typedef __nv_bfloat16 bf16;

// ---------------------------------------------------------------------------------------
// tile shapes

/* A block tile of BM rows x BN weight columns over BK of the reduction, warps of WM x WN,
 * STAGES deep.  In the gate_up GEMM the BN columns are BN/2 gate then BN/2 up columns of
 * the same output indices, and each warp takes WN/2 of each. */
template <int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_> struct tile_cfg {
	static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, STAGES = STAGES_;
	static constexpr int WARPS_N = BN / WN, WARPS = (BM / WM) * WARPS_N, THREADS = 32 * WARPS;
	static constexpr int MI = WM / 16, NT = WN / 8;   /* m16 / n8 tiles per warp */
	static constexpr int ALD = BK + 8, BLD = BN + 8;  /* padded shared-memory rows */
	static constexpr int A_STAGE = BM * ALD, B_STAGE = BK * BLD;   /* elements */
	static constexpr int SMEM = STAGES * (A_STAGE + B_STAGE) * 2;  /* bytes */
	static constexpr int A_ITERS = BM * (BK / 8) / THREADS;   /* 16-byte loads per thread */
	static constexpr int B_ITERS = BK * (BN / 8) / THREADS;
	/* FP8 weights: e4m3 k-tiles of BK x BN bytes through the stages, one bf16 tile they
	 * are dequantised into, pieces of 8 weights a thread dequantises */
	static constexpr int B8_STAGE = BK * BN;                                 /* bytes */
	static constexpr int SMEM8 = STAGES * (A_STAGE * 2 + B8_STAGE) + B_STAGE * 2;
	static constexpr int B8_ITERS = BK * (BN / 16) / THREADS;   /* 16-byte loads per thread */
	static constexpr int DQ_ROW = BN / 8;                       /* pieces in a tile row */
	static constexpr int DQ_ROWS = THREADS / DQ_ROW;            /* rows one pass covers */
	static constexpr int DQ_ITERS = BK / DQ_ROWS;               /* pieces per thread */
	static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0, "warp tiles");
	static_assert(BK % 16 == 0 && A_ITERS * THREADS == BM * (BK / 8) &&
		      B_ITERS * THREADS == BK * (BN / 8), "loads must split evenly");
};

/* The FP8 tile's own constraints (a bf16-only shape need not meet them). */
template <class C> struct fp8_tile {
	static_assert(C::B8_ITERS * C::THREADS == C::BK * (C::BN / 16) &&
		      C::THREADS % C::DQ_ROW == 0 && C::DQ_ITERS * C::DQ_ROWS == C::BK,
		      "FP8 loads and dequantisation must split evenly");
	static constexpr bool ok = true;
};

// ---------------------------------------------------------------------------------------
// FP8 dequantisation (the header says how; e4m3x8.h does it)

/* What a piece's weights are multiplied by: s * 2^120, or (big) s itself. */
typedef struct dq_scale {
	float m;
	bool big;   /* s >= 2^8: s * 2^120 is not finite; two multiplies */
} dq_scale;

__device__ static __forceinline__ dq_scale dq_scale_of(float s)
{
#if MOE_FP8_HW_CVT
	return {s, false};
#else
	bool big = !(s < 0x1p8f);
	return {big ? s : s * 0x1p120f, big};
#endif
}

/* Eight weights (q's bytes in memory order) of one block as eight bf16 in order: e4m3x8.h's,
 * or (QW_MOE_FP8_HW) through the hardware's e4m3x2 -> f16x2 conversion. */
template <bool BIG>
__device__ static __forceinline__ uint4 dequant8(uint2 q, float m)
{
#if MOE_FP8_HW_CVT
	uint4 r;
	uint32_t *out = &r.x;
	const uint32_t w[2] = {q.x, q.y};
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__half2_raw h = __nv_cvt_fp8x2_to_halfraw2(
			(__nv_fp8x2_storage_t)(w[i / 2] >> (16 * (i % 2))), __NV_E4M3);
		__half2 hh = h;
		float2 f = __half22float2(hh);
		out[i] = bf16x2_bits(__floats2bfloat162_rn(__fmul_rn(f.x, m), __fmul_rn(f.y, m)));
	}
	return r;
#else
	return e4m3x8_bf16x8<BIG>(q, m);
#endif
}

// ---------------------------------------------------------------------------------------
// the kernel

/* silu(g) * u with every operation rounded on its own (no contraction), as the reference
 * computes z / (1 + exp(-z)) * u in fp32 */
__device__ static inline float swiglu(float g, float u)
{
	return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

/* The kernel's arguments: the caller's, and the FP8 scales' layout worked out once. */
typedef struct gemm_params {
	moe_gemm_args g;
	int scale_k;        /* FP8: scale rows of an expert, ceil(K / scale_rows) */
	int scale_ld;       /* FP8: scales a row, ceil(ldw / scale_cols) */
	int scale_shift;    /* FP8: log2(scale_rows) when a power of two, else -1 */
} gemm_params;

/* FP8: the block row of reduction index k. */
__device__ static __forceinline__ int scale_row(const gemm_params &p, int k)
{
	return p.scale_shift >= 0 ? k >> p.scale_shift : k / p.g.scale_rows;
}

/* The gemm_params of g (its FP8 blocks checked by the caller, qw_cuda_moe). */
static inline gemm_params gemm_params_of(const moe_gemm_args *g)
{
	gemm_params p = {};
	p.g = *g;
	p.scale_shift = -1;
	if (g->scale) {
		p.scale_k = (g->K + g->scale_rows - 1) / g->scale_rows;
		p.scale_ld = (g->ldw + g->scale_cols - 1) / g->scale_cols;
		if ((g->scale_rows & (g->scale_rows - 1)) == 0)
			p.scale_shift = __builtin_ctz((unsigned)g->scale_rows);
	}
	return p;
}

/* The routing's outputs as a tile reads them: through L2, since in the fused kernel another
 * block of the same launch wrote them (L1 is not coherent across blocks). */
__device__ static __forceinline__ int ld_idx(const int *p)
{
	return __ldcg(p);
}

/* A counter another block raises with a release (atomicAdd after __threadfence), read with
 * acquire semantics. */
__device__ static __forceinline__ unsigned ld_acquire(const unsigned *p)
{
	unsigned v;
	asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
	return v;
}

/* The longest a block waits for a counter before it ends the launch with an error: a wait
 * lasts at most a layer (microseconds; a millisecond at worst), so one this long is one no
 * block will ever end (a bug in the protocol, or counters a failed run left dirty), and
 * hanging the stream (and every later call on it, and a GPU test run) forever is worse than
 * a launch error the caller sees at its next synchronisation. */
#ifndef QW_MOE_WAIT_LIMIT_NS
#define QW_MOE_WAIT_LIMIT_NS 4000000000ull
#endif

__device__ static __forceinline__ unsigned long long globaltimer_ns(void)
{
	unsigned long long t;
	asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
	return t;
}

/* The block waits until *c >= need: thread 0 polls, then the block goes on together, every
 * thread's later reads ordered after the writes the counter counts.  Past
 * QW_MOE_WAIT_LIMIT_NS the kernel traps (above). */
__device__ static __forceinline__ void wait_count(const unsigned *c, unsigned need)
{
	if (threadIdx.x == 0) {
		unsigned long long t0 = globaltimer_ns();
		while (ld_acquire(c) < need) {
			__nanosleep(32);
			if (globaltimer_ns() - t0 > QW_MOE_WAIT_LIMIT_NS)
				__trap();
		}
		__threadfence();
	}
	__syncthreads();
}

/* Output tile (tile, nblk) of the GEMM p in shape C: tile `tile` of the list (rows of one
 * expert's pairs; none when past the list's length), output columns [nblk * OUT_BN, ...)
 * (OUT_BN = C::BN, or C::BN / 2 of gate and of up for gate_up), into act (gate_up) or y.
 * smem_raw: the tile's shared memory (C::SMEM, or C::SMEM8 for FP8).  ready NULL: a is
 * ready; else the weights' first k-tiles are requested before the block waits for
 * *ready >= need, and a's rows after. */
template <class C, bool GATE_UP, bool W8>
__device__ static __forceinline__ void expert_tile(const gemm_params &p, int tile, int nblk,
						   unsigned char *smem_raw, const unsigned *ready,
						   unsigned need)
{
	const moe_gemm_args &g = p.g;
	constexpr bool BS = W8 && QW_MOE_FP8_BLOCKSUM;   /* the block-sum variant (above) */
	bf16 *As = (bf16 *)smem_raw;
	/* bf16: STAGES B tiles after the A tiles; FP8: STAGES e4m3 tiles, then the bf16 tile */
	bf16 *Bs = As + C::STAGES * C::A_STAGE;
	uint8_t *B8 = (uint8_t *)Bs;
	bf16 *Bq = (bf16 *)(B8 + C::STAGES * C::B8_STAGE);
	if (tile >= ld_idx(g.n_tiles))
		return;
	int e = ld_idx(g.tile_e + tile), row0 = ld_idx(g.off + e) + ld_idx(g.tile_m0 + tile);
	int rows = min(C::BM, ld_idx(g.off + e + 1) - row0);
	constexpr int OUT_BN = GATE_UP ? C::BN / 2 : C::BN;   /* output columns of a block */
	int n0 = nblk * OUT_BN;
	constexpr int EB = W8 ? 1 : 2;                         /* bytes of a weight */
	const uint8_t *w = (const uint8_t *)g.w + (size_t)e * (size_t)g.K * (size_t)g.ldw * EB;
	int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
	int wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;

	/* A tile column (of BN) cc as a column of w (gcol) and its output index (col) */
	auto w_column = [&](int cc, int *col) {
		if (!GATE_UP) {
			*col = n0 + cc;
			return *col;
		}
		int half = cc >= C::BN / 2;           /* 0: gate columns, 1: up columns */
		*col = n0 + cc - half * (C::BN / 2);  /* the output index */
		return half * g.N + *col;
	};

	/* each thread's 16-byte chunks keep their row and column over k */
	const bf16 *a_src[C::A_ITERS];
	int a_dst[C::A_ITERS], a_col[C::A_ITERS];
#pragma unroll
	for (int i = 0; i < C::A_ITERS; i++) {
		int c = tid + i * C::THREADS, r = c / (C::BK / 8);
		a_col[i] = c % (C::BK / 8) * 8;
		a_dst[i] = r * C::ALD + a_col[i];
		a_src[i] = nullptr;
		if (r < rows)
			a_src[i] = g.a + (size_t)(g.a_row ? ld_idx(g.a_row + row0 + r) : row0 + r) *
				   (size_t)g.K;
	}
	constexpr int BC = W8 ? 16 : 8;                        /* weights a 16-byte chunk holds */
	constexpr int BI = W8 ? C::B8_ITERS : C::B_ITERS;
	const uint8_t *b_src[BI];
	int b_dst[BI], b_row[BI];
#pragma unroll
	for (int i = 0; i < BI; i++) {
		int c = tid + i * C::THREADS, r = c / (C::BN / BC), cc = c % (C::BN / BC) * BC, col;
		int gcol = w_column(cc, &col);
		b_row[i] = r;
		b_dst[i] = W8 ? r * C::BN + cc : (r * C::BLD + cc) * 2;   /* bytes */
		b_src[i] = col < g.N ? w + (size_t)gcol * EB : nullptr;
	}
	auto load_a = [&](int stage, int kt) {
		int k0 = kt * C::BK;
		bf16 *as = As + stage * C::A_STAGE;
#pragma unroll
		for (int i = 0; i < C::A_ITERS; i++) {
			int k = k0 + a_col[i];
			bool ok = a_src[i] && k < g.K;
			cp_async<16>(as + a_dst[i], ok ? a_src[i] + k : g.a, ok);
		}
	};
	auto load_b = [&](int stage, int kt) {
		int k0 = kt * C::BK;
		uint8_t *bs = W8 ? B8 + stage * C::B8_STAGE : (uint8_t *)(Bs + stage * C::B_STAGE);
#pragma unroll
		for (int i = 0; i < BI; i++) {
			int k = k0 + b_row[i];
			bool ok = b_src[i] && k < g.K;
			cp_async<16>(bs + b_dst[i], ok ? b_src[i] + (size_t)k * (size_t)g.ldw * EB : g.w,
				     ok);
		}
	};

	/* FP8: the pieces of 8 weights this thread dequantises, rows dq_r0 + j * DQ_ROWS of
	 * column dq_c, and their scales' column (NULL past N: the piece stays zero) */
	int dq_c = tid % C::DQ_ROW * 8, dq_r0 = tid / C::DQ_ROW;
	const float *scol = nullptr;
	if (W8) {
		int col, gcol = w_column(dq_c, &col);
		if (col < g.N)
			scol = g.scale + (size_t)e * (size_t)p.scale_k * (size_t)p.scale_ld +
			       gcol / g.scale_cols;
	}
	/* FP8: k-tile kt's scale when its rows lie in one block of rows (else false) */
	auto tile_scale = [&](int kt, float *s) {
		int k0 = kt * C::BK, k1 = min(k0 + C::BK, g.K) - 1, r0 = scale_row(p, k0);
		*s = scol ? __ldg(scol + (size_t)r0 * (size_t)p.scale_ld) : 0.0f;
		return r0 == scale_row(p, k1);
	};
	/* FP8: the e4m3 k-tile kt in stage into Bq, one scale s for it (one) or a scale a row;
	 * (BS) the codes' exact values, no scale */
	auto dequant = [&](int stage, int kt, bool one, float s) {
		const uint8_t *raw = B8 + stage * C::B8_STAGE;
		if (BS) {
#pragma unroll
			for (int j = 0; j < C::DQ_ITERS; j++) {
				int r = dq_r0 + j * C::DQ_ROWS;
				uint2 q = *(const uint2 *)(raw + r * C::BN + dq_c);
				*(uint4 *)(Bq + r * C::BLD + dq_c) = e4m3x8_exact_bf16x8(q);
			}
			return;
		}
		dq_scale d = dq_scale_of(s);
		if (one && !d.big) {   /* the common case: one scale, one multiply a weight */
#pragma unroll
			for (int j = 0; j < C::DQ_ITERS; j++) {
				int r = dq_r0 + j * C::DQ_ROWS;
				uint2 q = *(const uint2 *)(raw + r * C::BN + dq_c);
				*(uint4 *)(Bq + r * C::BLD + dq_c) = dequant8<false>(q, d.m);
			}
			return;
		}
		for (int j = 0; j < C::DQ_ITERS; j++) {
			int r = dq_r0 + j * C::DQ_ROWS, k = kt * C::BK + r;
			if (!one)
				d = dq_scale_of(scol && k < g.K ? __ldg(scol + (size_t)scale_row(p, k) *
									 (size_t)p.scale_ld)
								: 0.0f);
			uint2 q = *(const uint2 *)(raw + r * C::BN + dq_c);
			*(uint4 *)(Bq + r * C::BLD + dq_c) = d.big ? dequant8<true>(q, d.m)
								   : dequant8<false>(q, d.m);
		}
	};

	/* the warp's n8 tiles: their first column in the shared B tile */
	auto bcol = [&](int j) {
		if (!GATE_UP)
			return wn * C::WN + j * 8;
		return j < C::NT / 2 ? wn * (C::WN / 2) + j * 8
				     : C::BN / 2 + wn * (C::WN / 2) + (j - C::NT / 2) * 8;
	};

	/* acc the sums; (BS) part a block of rows' partial sums, scol8[j] tile j's scales (its
	 * lane's two columns share a block: even block columns) */
	float acc[C::MI][C::NT][4], part[C::MI][C::NT][4];
#pragma unroll
	for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
		for (int j = 0; j < C::NT; j++)
#pragma unroll
			for (int q = 0; q < 4; q++)
				acc[mi][j][q] = part[mi][j][q] = 0.0f;
	const float *scol8[C::NT];
#pragma unroll
	for (int j = 0; j < C::NT; j++) {
		scol8[j] = nullptr;
		if (BS) {
			int col, gcol = w_column(bcol(j) + lane % 4 * 2, &col);
			if (col < g.N)
				scol8[j] = g.scale + (size_t)e * (size_t)p.scale_k * (size_t)p.scale_ld +
					   gcol / g.scale_cols;
		}
	}

	int nk = (g.K + C::BK - 1) / C::BK;
	if (ready) {
		/* the weights' first k-tiles stream in while the rows of a are still being made:
		 * all of them land with the first group (the first k-tile waits for them all) */
#pragma unroll
		for (int s = 0; s < C::STAGES - 1; s++)
			if (s < nk)
				load_b(s, s);
		wait_count(ready, need);
	}
#pragma unroll
	for (int s = 0; s < C::STAGES - 1; s++) {
		if (s < nk) {
			load_a(s, s);
			if (!ready)
				load_b(s, s);
		}
		cp_async_commit();
	}
	float s_now = 0.0f, s_next = 0.0f;
	bool one_now = true, one_next = true;
	if (W8 && !BS)
		one_now = tile_scale(0, &s_now);
	for (int kt = 0; kt < nk; kt++) {
		cp_async_wait<C::STAGES - 2>();   /* tile kt has landed */
		__syncthreads();                   /* ... for everyone; stage kt-1 (and Bq) is free */
		int pf = kt + C::STAGES - 1;
		if (pf < nk) {
			load_a(pf % C::STAGES, pf);
			load_b(pf % C::STAGES, pf);
		}
		cp_async_commit();
		const bf16 *bs = Bs + (kt % C::STAGES) * C::B_STAGE;
		if (W8) {
			if (!BS && kt + 1 < nk)   /* in flight while this tile is dequantised and used */
				one_next = tile_scale(kt + 1, &s_next);
			dequant(kt % C::STAGES, kt, one_now, s_now);
			__syncthreads();   /* Bq is whole */
			s_now = s_next;
			one_now = one_next;
			bs = Bq;
		}
		const bf16 *as = As + (kt % C::STAGES) * C::A_STAGE;
		int ksteps = min(C::BK, g.K - kt * C::BK) / 16;
#pragma unroll
		for (int ks = 0; ks < C::BK / 16; ks++) {
			if (ks >= ksteps)
				break;
			uint32_t af[C::MI][4], bfr[C::NT][2];
#pragma unroll
			for (int mi = 0; mi < C::MI; mi++)
				ldmatrix_x4(af[mi], as + (wm * C::WM + mi * 16 + lane % 16) * C::ALD +
							ks * 16 + lane / 16 * 8);
#pragma unroll
			for (int j = 0; j < C::NT; j += 2) {
				/* lanes 8q..8q+7 address matrix q: k rows (q%2)*8.., tile j + q/2 */
				int q = lane / 8;
				uint32_t r[4];
				ldmatrix_x4_trans(r, bs + (ks * 16 + q % 2 * 8 + lane % 8) * C::BLD +
							     bcol(j + q / 2));
				bfr[j][0] = r[0];
				bfr[j][1] = r[1];
				bfr[j + 1][0] = r[2];
				bfr[j + 1][1] = r[3];
			}
#pragma unroll
			for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
				for (int j = 0; j < C::NT; j++)
					mma_bf16(BS ? part[mi][j] : acc[mi][j], af[mi], bfr[j][0], bfr[j][1]);
		}
		/* (BS) a block of rows ends with this k-tile: its partials times their scales */
		if (BS && ((kt + 1) * C::BK % g.scale_rows == 0 || kt + 1 == nk)) {
			int sr = scale_row(p, kt * C::BK);
#pragma unroll
			for (int j = 0; j < C::NT; j++) {
				float sc = scol8[j] ? __ldg(scol8[j] + (size_t)sr * (size_t)p.scale_ld) : 0.0f;
#pragma unroll
				for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
					for (int q = 0; q < 4; q++) {
						acc[mi][j][q] = __fmaf_rn(part[mi][j][q], sc, acc[mi][j][q]);
						part[mi][j][q] = 0.0f;
					}
			}
		}
	}
	cp_async_wait<0>();

	/* accumulator q of tile (mi, j): row lane/4 (+8 for q >= 2), column (lane%4)*2 + q%2 */
#pragma unroll
	for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
		for (int h = 0; h < 2; h++) {
			int r = wm * C::WM + mi * 16 + lane / 4 + h * 8;
			if (r >= rows)
				continue;
			if (GATE_UP) {
				bf16 *dst = g.act + (size_t)(row0 + r) * (size_t)g.N;
#pragma unroll
				for (int j = 0; j < C::NT / 2; j++) {
					int col = n0 + wn * (C::WN / 2) + j * 8 + lane % 4 * 2;
					if (col >= g.N)
						continue;
					const float *gt = acc[mi][j], *up = acc[mi][j + C::NT / 2];
					*(__nv_bfloat162 *)(dst + col) = __floats2bfloat162_rn(
						swiglu(gt[2 * h], up[2 * h]),
						swiglu(gt[2 * h + 1], up[2 * h + 1]));
				}
			} else {
				float *dst = g.y + (size_t)ld_idx(g.pair_slot + row0 + r) * (size_t)g.N;
#pragma unroll
				for (int j = 0; j < C::NT; j++) {
					int col = n0 + wn * C::WN + j * 8 + lane % 4 * 2;
					if (col < g.N)
						*(float2 *)(dst + col) =
							make_float2(acc[mi][j][2 * h], acc[mi][j][2 * h + 1]);
				}
			}
		}
}

#endif
