/* attn_engine.cuh - the attention engine that attention.cu (paged attention over the KV
 * cache) and segment_attention.cu (the vision tower's) share (CUDA C++ only).
 *
 * Owns: the tile shapes (tile_cfg), the copies of Q, K and V tiles into shared memory
 * (load_tile), one warp's online-softmax step over 16 keys (warp_step), a row's softmax state
 * and the fold of two of them (row_state, fold_into), a warp's rows over a range of keys
 * (attend_rows) and the search for a CTA's sequence (find_owner).
 *
 * FlashAttention-2 on mma.sync: a warp owns 16 query rows; S = Q K^T and O += P V are bf16
 * m16n8k16 MMAs with fp32 accumulators; the softmax is online in fp32 in the log2 domain
 * (scale * log2 e folded into the scores); P is rounded to bf16 once, its sum taken from the
 * rounded values so the weights of V stay normalised.  Head dims are padded to DP (a multiple
 * of 16) with zeros.
 *
 * The order of the sums, which every kernel keeps, so a row's bits depend on its query, its
 * keys and values, and nothing else (not the step, the tile, the kernel or a split):
 *  - a row's keys are cut into chunks of CHUNK keys at fixed positions (chunk c holds keys
 *    [c CHUNK, (c + 1) CHUNK));
 *  - within a chunk, steps of STEP keys in ascending order, each an online-softmax update of
 *    the chunk's state (max m, sum l, unnormalised o) from an empty one (warp_step: one
 *    order for every row, whichever warp runs it);
 *  - the chunks' states are folded left in chunk order (fold_into, with explicitly rounded
 *    operations), and the output is o / l.
 * Keys a row may not see are masked to -inf: a step or chunk that holds none of its keys
 * leaves its state exactly as it was (a multiply by exp2(0) = 1, adds of exact zeros), so a
 * tile's rows may cover different key ranges.
 */
#ifndef QW_KERNELS_CUDA_ATTN_ENGINE_CUH
#define QW_KERNELS_CUDA_ATTN_ENGINE_CUH

#include <cuda_bf16.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda/mma.h"

typedef __nv_bfloat16 bf16;

static constexpr int THREADS = 128;      /* 4 warps a CTA, in every attention kernel */
static constexpr int STEP = 16;          /* keys of one online-softmax step */
static constexpr int CHUNK = 256;        /* keys of a chunk: a state of its own */
static constexpr unsigned FULL = 0xffffffffu;
static constexpr float LOG2E = 1.4426950408889634f;

/* Tile shape: DP head dims (padded), WM warps over rows (4, or 1 in the decode kernel, whose
 * warps share 16 rows), BN keys a stage, VEC-byte copies. */
template <int DP_, int WM_, int BN_, int VEC_>
struct tile_cfg {
	static constexpr int DP = DP_, WM = WM_, BN = BN_, VEC = VEC_;
	static constexpr int BM = 16 * WM;         /* query rows of a CTA */
	static constexpr int S = DP + 8;           /* shared row stride, bf16 */
	static constexpr int ELEMS = VEC / 2;      /* bf16 a copy */
	static constexpr int CPR = DP / ELEMS;     /* copies a row */
	static constexpr int Q_BYTES = BM * S * 2;
	static constexpr int KV_BYTES = BN * S * 2;
	static constexpr int SMEM = Q_BYTES + 4 * KV_BYTES;   /* Q, then K0 V0 K1 V1 */
	static_assert((WM == 4 || WM == 1) && DP % 16 == 0 && BN % STEP == 0 && CHUNK % BN == 0,
		      "tile shape");
	static_assert(SMEM <= 163 * 1024, "more shared memory than an sm_80 block may have");
};

/* Issues the copies of ROWS rows (DP columns, stride S) into kd (and vd when KV) from k (v)
 * at element offset off(r) of row r, or zeros where off(r) < 0 or the column is >= D. */
template <class C, int ROWS, bool KV, class Off>
static __device__ __forceinline__ void load_tile(bf16 *kd, bf16 *vd, const bf16 *k, const bf16 *v,
						 Off off, int D)
{
	constexpr int N = ROWS * C::CPR;
#pragma unroll
	for (int i = 0; i < (N + THREADS - 1) / THREADS; i++) {
		const int c = (int)threadIdx.x + i * THREADS;
		if (N % THREADS == 0 || c < N) {
			const int r = c / C::CPR, col = c % C::CPR * C::ELEMS;
			const int64_t o = col < D ? off(r) : -1;
			const bool ok = o >= 0;
			cp_async<C::VEC>(kd + r * C::S + col, ok ? k + o + col : k, ok);
			if (KV)
				cp_async<C::VEC>(vd + r * C::S + col, ok ? v + o + col : v, ok);
		}
	}
}

/* A warp's 16 rows' softmax state over some keys, in MMA accumulator layout: the thread's
 * rows g = lane / 4 (index 0) and g + 8 (index 1); o[i] columns 8i + 2t, +1 (t = lane % 4)
 * for rows g (o[i][0..1]) and g + 8 (o[i][2..3]).  m: the log2-domain max of the scaled
 * scores (-inf: no key yet); l: the sum of the rounded weights, the thread's keys only inside
 * a chunk, the whole row's (quad_sum) once the chunk is done. */
template <int DP>
struct row_state {
	float o[DP / 8][4];
	float m[2], l[2];
};

template <int DP>
static __device__ __forceinline__ void state_clear(row_state<DP> &s)
{
#pragma unroll
	for (int i = 0; i < DP / 8; i++)
		s.o[i][0] = s.o[i][1] = s.o[i][2] = s.o[i][3] = 0.0f;
	s.m[0] = s.m[1] = -INFINITY;
	s.l[0] = s.l[1] = 0.0f;
}

/* l summed over the four threads of each row (the same bits on all four: a + b == b + a). */
template <int DP>
static __device__ __forceinline__ void quad_sum(row_state<DP> &s)
{
#pragma unroll
	for (int h = 0; h < 2; h++) {
		s.l[h] = __fadd_rn(s.l[h], __shfl_xor_sync(FULL, s.l[h], 1));
		s.l[h] = __fadd_rn(s.l[h], __shfl_xor_sync(FULL, s.l[h], 2));
	}
}

/* How r (+) s scales the two sides of one row: s empty (no key) leaves r; r empty takes s. */
struct fold_scale {
	float a, b, m;
	bool keep, take;
};

static __device__ __forceinline__ fold_scale fold_of(float rm, float sm)
{
	fold_scale f;
	f.keep = sm == -INFINITY;
	f.take = !f.keep && rm == -INFINITY;
	f.m = fmaxf(rm, sm);
	f.a = f.keep || f.take ? 1.0f : exp2f(__fsub_rn(rm, f.m));
	f.b = f.keep || f.take ? 1.0f : exp2f(__fsub_rn(sm, f.m));
	return f;
}

static __device__ __forceinline__ float fold_val(float r, float s, const fold_scale &f)
{
	if (f.keep)
		return r;
	if (f.take)
		return s;
	return __fadd_rn(__fmul_rn(r, f.a), __fmul_rn(s, f.b));
}

/* One row's output from its folded state. */
static __device__ __forceinline__ float finish(float o, float l)
{
	return l > 0.0f ? __fdiv_rn(o, l) : 0.0f;
}

/* r = r (+) s (s's l summed over its row), row by row: the fold of chunk states, in this one
 * arithmetic wherever it runs (registers, shared or global memory). */
template <int DP>
static __device__ __forceinline__ void fold_into(row_state<DP> &r, const row_state<DP> &s)
{
#pragma unroll
	for (int h = 0; h < 2; h++) {
		const fold_scale f = fold_of(r.m[h], s.m[h]);
		r.l[h] = fold_val(r.l[h], s.l[h], f);
#pragma unroll
		for (int i = 0; i < DP / 8; i++) {
			r.o[i][2 * h] = fold_val(r.o[i][2 * h], s.o[i][2 * h], f);
			r.o[i][2 * h + 1] = fold_val(r.o[i][2 * h + 1], s.o[i][2 * h + 1], f);
		}
		r.m[h] = f.m;
	}
}

/* One online-softmax step of a warp's 16 rows over STEP keys: S = Q K^T, scaled, masked,
 * the state rescaled to the new max, O += P V.  qs, ks, vs: the warp's first row, key and
 * value in shared memory (stride C::S); kb: the index of the first key; the thread's rows
 * (g, g + 8) see keys < lim0, lim1 (when mask). */
template <class C>
static __device__ __forceinline__ void warp_step(row_state<C::DP> &st, const bf16 *qs,
						 const bf16 *ks, const bf16 *vs, int kb, int lim0,
						 int lim1, bool mask, float sc)
{
	constexpr int S = C::S, DP = C::DP;
	const int lane = threadIdx.x & 31, t = lane & 3;
	float s[2][4];
#pragma unroll
	for (int i = 0; i < 2; i++)
		s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
	for (int kk = 0; kk < DP / 16; kk++) {
		uint32_t a[4], b[4];
		ldmatrix_x4(a, qs + (lane & 15) * S + kk * 16 + (lane >> 4) * 8);
		/* matrices (keys, dims): 0-7 0-7, 0-7 8-15, 8-15 0-7, 8-15 8-15 */
		ldmatrix_x4(b, ks + ((lane & 7) + (lane >> 4) * 8) * S + kk * 16 + ((lane >> 3) & 1) * 8);
		mma_bf16(s[0], a, b[0], b[1]);
		mma_bf16(s[1], a, b[2], b[3]);
	}
	/* s[i]: rows g (0, 1) and g + 8 (2, 3), keys kb + 8i + 2t (+1) */
	float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
	for (int i = 0; i < 2; i++)
#pragma unroll
		for (int e = 0; e < 4; e++) {
			float x = __fmul_rn(s[i][e], sc);
			if (mask && kb + i * 8 + 2 * t + (e & 1) >= (e < 2 ? lim0 : lim1))
				x = -INFINITY;
			s[i][e] = x;
			mx[e >> 1] = fmaxf(mx[e >> 1], x);
		}
	float mu[2], alpha[2];
#pragma unroll
	for (int h = 0; h < 2; h++) {
		mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL, mx[h], 1));
		mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL, mx[h], 2));
		const float mn = fmaxf(st.m[h], mx[h]);
		mu[h] = mn == -INFINITY ? 0.0f : mn;      /* a row with no key yet stays at 0 */
		alpha[h] = exp2f(__fsub_rn(st.m[h], mu[h]));
		st.m[h] = mn;
		st.l[h] = __fmul_rn(st.l[h], alpha[h]);
	}
	if (alpha[0] != 1.0f || alpha[1] != 1.0f) {   /* a multiply by 1 would change nothing */
#pragma unroll
		for (int i = 0; i < DP / 8; i++) {
			st.o[i][0] = __fmul_rn(st.o[i][0], alpha[0]);
			st.o[i][1] = __fmul_rn(st.o[i][1], alpha[0]);
			st.o[i][2] = __fmul_rn(st.o[i][2], alpha[1]);
			st.o[i][3] = __fmul_rn(st.o[i][3], alpha[1]);
		}
	}
	uint32_t p[2][2];
#pragma unroll
	for (int i = 0; i < 2; i++)
#pragma unroll
		for (int h = 0; h < 2; h++) {
			const __nv_bfloat162 pb = __floats2bfloat162_rn(
				exp2f(__fsub_rn(s[i][2 * h], mu[h])), exp2f(__fsub_rn(s[i][2 * h + 1], mu[h])));
			const float2 pf = __bfloat1622float2(pb);
			st.l[h] = __fadd_rn(st.l[h], __fadd_rn(pf.x, pf.y));
			p[i][h] = bf16x2_bits(pb);
		}
	const uint32_t a[4] = {p[0][0], p[0][1], p[1][0], p[1][1]};
#pragma unroll
	for (int np = 0; np < DP / 16; np++) {
		/* matrices (keys, dims): 0-7 0-7, 8-15 0-7, 0-7 8-15, 8-15 8-15 */
		uint32_t b[4];
		ldmatrix_x4_trans(b, vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * S + np * 16 +
					     (lane >> 4) * 8);
		mma_bf16(st.o[2 * np], a, b[0], b[1]);
		mma_bf16(st.o[2 * np + 1], a, b[2], b[3]);
	}
}

/* The lowest and highest key limits of a warp's 16 rows (lim0, lim1 the thread's). */
static __device__ __forceinline__ void warp_limits(int lim0, int lim1, int *wmin, int *wmax)
{
	int lo = min(lim0, lim1), hi = max(lim0, lim1);
#pragma unroll
	for (int x = 16; x; x >>= 1) {
		hi = max(hi, __shfl_xor_sync(FULL, hi, x));
		lo = min(lo, __shfl_xor_sync(FULL, lo, x));
	}
	*wmin = lo;
	*wmax = hi;
}

/* The CTA's 4 warps, 16 rows each (Q's copies issued and committed by the caller, rows at
 * smem), over keys [lo, hi) (lo a multiple of CHUNK, lo < hi), the whole of each BN-key
 * tile a warp: row r sees keys < row_lim[r] (0: an empty row).  key_off(j): the element
 * offset of key j's row in k and v.  Leaves each warp's folded state of its rows in r. */
template <class C, class KeyOff>
static __device__ void attend_rows(unsigned char *smem, const bf16 *k, const bf16 *v,
				   KeyOff key_off, int D, int lo, int hi, const int *row_lim,
				   float sc, row_state<C::DP> &r)
{
	static_assert(C::WM == 4, "a warp per 16 rows");
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2;
	const int lim0 = min(row_lim[warp * 16 + g], hi), lim1 = min(row_lim[warp * 16 + g + 8], hi);
	int wmin, wmax;
	warp_limits(lim0, lim1, &wmin, &wmax);
	const bf16 *qs = (const bf16 *)smem + warp * 16 * C::S;
	auto kt = [&](int st) { return (bf16 *)(smem + C::Q_BYTES + (2 * st) * C::KV_BYTES); };
	auto vt = [&](int st) { return (bf16 *)(smem + C::Q_BYTES + (2 * st + 1) * C::KV_BYTES); };
	auto load = [&](int st, int j0) {
		load_tile<C, C::BN, true>(kt(st), vt(st), k, v, [&](int i) -> int64_t {
			const int j = j0 + i;
			return j < hi ? key_off(j) : -1;
		}, D);
		cp_async_commit();
	};
	row_state<C::DP> c;
	state_clear(c);
	state_clear(r);
	load(0, lo);
	int st = 0;
	for (int j0 = lo; j0 < hi; j0 += C::BN, st ^= 1) {
		if (j0 > lo && j0 % CHUNK == 0) {   /* a chunk ends: its state joins the row's */
			quad_sum(c);
			fold_into(r, c);
			state_clear(c);
		}
		if (j0 + C::BN < hi) {
			load(st ^ 1, j0 + C::BN);
			cp_async_wait<1>();
		} else {
			cp_async_wait<0>();
		}
		__syncthreads();
#pragma unroll
		for (int sub = 0; sub < C::BN / STEP; sub++) {
			const int kb = j0 + sub * STEP;
			if (kb < wmax)   /* else every key of the step is masked for every row */
				warp_step<C>(c, qs, kt(st) + sub * STEP * C::S, vt(st) + sub * STEP * C::S, kb,
					     lim0, lim1, kb + STEP > wmin, sc);
		}
		__syncthreads();
	}
	quad_sum(c);
	fold_into(r, c);
}

/* The sequence (or segment) s whose tiles include CTA x: tile i of s is CTA
 * start[s] / per + (per > 1 ? s : 0) + i, so T / per + n CTAs cover every tile.  -1 when
 * none (then the CTA has nothing to do); *tile = i. */
static __device__ int find_owner(const int32_t *start, int n, int per, int x, int *tile)
{
	__shared__ int owner;
	const int extra = per > 1;
	if (threadIdx.x == 0)
		owner = -1;
	__syncthreads();
	for (int s = threadIdx.x; s < n; s += THREADS) {
		const int o0 = start[s] / per + extra * s;
		const int o1 = s + 1 < n ? start[s + 1] / per + extra * (s + 1) : INT_MAX;
		if (o0 <= x && x < o1)
			owner = s;
	}
	__syncthreads();
	const int s = owner;
	if (s >= 0)
		*tile = x - (start[s] / per + extra * s);
	return s;
}

#endif
