/* attention.cu - KV-cache writes, paged causal GQA attention over the cache, and the vision
 * tower's attention within segments.  See kernels.h for the contracts.
 *
 * One engine serves both attentions (FlashAttention-2 on mma.sync): a CTA of 4 warps holds
 * a tile of BM = 16 * WM query rows in shared memory and streams key/value tiles of BN keys
 * through two shared-memory stages (cp.async, the next tile in flight while the current one
 * is computed).  Each warp owns 16 query rows and a slice of NW = BN / WN keys of every tile
 * (WM x WN = 4 warps): S = Q K^T and O += P V are bf16 m16n8k16 tensor-core MMAs with fp32
 * accumulators, the softmax is online in fp32 (log2 domain, scale * log2 e folded into the
 * scores), and P is rounded to bf16 once, its sum taken from the rounded values so the
 * weights of V stay normalised.  Warps that share rows (WN > 1) merge their (max, sum, O)
 * through shared memory at the end.  Head dims are padded up to DP (a multiple of 16) with
 * zeros, so any D that is a multiple of 8 (paged) or 4 (segments) works.
 *
 * Paged attention.  A query row is a (token, query head) pair; the `group` = Hq / Hkv heads
 * of one KV head and tq = BM / group consecutive tokens of one sequence fill a tile, so each
 * K/V tile read from the cache serves all of them (GQA packing).  The CTAs of one step form
 * a grid (tiles, Hkv, splits); tile i of sequence s is CTA x = seq_start[s] / tq + s + i,
 * which needs no per-sequence counts on the host (each CTA finds its s by a scan of
 * seq_start).  Keys are read through the block table; row r may see keys < kv_index + 1.
 *  - Decode (every sequence has at most 16 / group rows: WM = 1, WN = 4): one 16-row tile
 *    per sequence and KV head, its 4 warps taking 16 keys each of a 64-key tile.  When the
 *    step's CTAs would not fill the GPU (few sequences, long contexts), the context is split
 *    into n_splits chunks of a multiple of BN keys (flash-decoding): CTA z writes fp32
 *    partial outputs and their log-sum-exp to ws and split_reduce merges them.  Splits are
 *    chosen to reach about one wave of resident CTAs, at least MIN_CHUNK keys each (LONG_CHUNK
 *    once a context has more than SHORT_SPLITS of those), at most MAX_SPLITS, and only
 *    while rows * splits <= SPLIT_BUDGET (which bounds ws).
 *  - Prefill chunks (WM = 4, WN = 1): 64-row tiles (64 / group tokens) over the causal range
 *    0 .. the tile's last kv_index, all 4 warps over the whole of each key tile; the last
 *    tiles are masked per row.
 * Memory traffic: every CTA reads its K and V range once, D * 2 bytes a key each, from the
 * cache (rows of a 16-byte multiple, 16-byte copies): a decode step moves sum over
 * sequences of kv_len * Hkv * D * 4 bytes plus, when split, n_splits * T * Hq * (D + 1) * 4
 * bytes of partials written and read back.  A prefill chunk of n tokens reads its causal
 * K/V range once per tile of 64 / group tokens (Hq = 64, Hkv = 4: 4 tokens a tile), mostly
 * from L2 since a sequence's tiles run together.
 *
 * Segment attention: the same engine, one head of a 64-row tile of one segment per CTA,
 * full (unmasked) attention over the segment's rows of k and v, 8-byte copies (D % 4 == 0).
 *
 * Shared memory: Q (BM, DP + 8) and two stages of K and V (BN, DP + 8) bf16; the 16 bytes of
 * padding a row make ldmatrix conflict-free.  Up to 143 KB (DP 256), under the 163 KB an
 * sm_80 block may have.
 */
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"

#include <algorithm>
#include <cuda_bf16.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/mma.h"

typedef __nv_bfloat16 bf16;

static constexpr int THREADS = 128;          /* 4 warps a CTA, everywhere in this file */
static constexpr int MAX_SPLITS = 64;        /* split_reduce's lanes hold two splits each */
/* Keys per split: at least one decode tile, and at least LONG_CHUNK unless that leaves fewer
 * than SHORT_SPLITS splits.  Measured on the H200: one 30B-shape sequence of 256 keys took
 * 22 us a layer in 2 splits of 256 keys (8 CTAs), 18 us in single-tile splits; one of 4096
 * keys (235B shape) 33 us in 16 splits of 256 and 59 us in 64 of 64 (the merge grows with
 * the splits). */
static constexpr int MIN_CHUNK = 64;
static constexpr int LONG_CHUNK = 256;
static constexpr int SHORT_SPLITS = 8;
static constexpr int SPLIT_BUDGET = 256;     /* rows x splits of partials, at most */
static constexpr unsigned FULL = 0xffffffffu;
static constexpr float LOG2E = 1.4426950408889634f;

// -- the engine ----------------------------------------------------------------------------

/* Tile shape: DP head dims (padded), WM warps over rows, BN keys a tile, VEC-byte copies. */
template <int DP_, int WM_, int BN_, int VEC_>
struct tile_cfg {
	static constexpr int DP = DP_, WM = WM_, BN = BN_, VEC = VEC_;
	static constexpr int BM = 16 * WM;         /* query rows of a CTA */
	static constexpr int WN = 4 / WM;          /* warps sharing 16 rows, over key slices */
	static constexpr int NW = BN / WN;         /* keys of a tile per warp */
	static constexpr int S = DP + 8;           /* shared row stride, bf16 */
	static constexpr int EPS = DP + 4;         /* epilogue row stride, floats */
	static constexpr int ELEMS = VEC / 2;      /* bf16 a copy */
	static constexpr int CPR = DP / ELEMS;     /* copies a row */
	static constexpr int Q_BYTES = BM * S * 2;
	static constexpr int KV_BYTES = BN * S * 2;
	static constexpr int SMEM = Q_BYTES + 4 * KV_BYTES;   /* Q, then K0 V0 K1 V1 */
	static_assert(WM * WN == 4 && NW % 16 == 0 && DP % 16 == 0, "tile shape");
	static_assert(64 * EPS * 4 <= SMEM, "the epilogue reuses the tiles' memory");
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

/* One warp's 16 rows against its NW keys of a tile: S = Q K^T, online softmax, O += P V.
 * qs, ks, vs: the warp's first row, key and value in shared memory; kb: the index of key 0
 * of the slice; the thread's rows (g, g + 8) see keys < lim0, lim1 (when mask). */
template <class C>
static __device__ __forceinline__ void warp_tile(float (&o)[C::DP / 8][4], float (&m)[2],
						 float (&l)[2], const bf16 *qs, const bf16 *ks,
						 const bf16 *vs, int kb, int lim0, int lim1, bool mask,
						 float sc)
{
	constexpr int S = C::S, NW = C::NW, DP = C::DP;
	const int lane = threadIdx.x & 31, t = lane & 3;
	float s[NW / 8][4];
#pragma unroll
	for (int i = 0; i < NW / 8; i++)
		s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
	for (int kk = 0; kk < DP / 16; kk++) {
		uint32_t a[4];
		ldmatrix_x4(a, qs + (lane & 15) * S + kk * 16 + (lane >> 4) * 8);
#pragma unroll
		for (int np = 0; np < NW / 16; np++) {
			/* matrices (keys, dims): 0-7 0-7, 0-7 8-15, 8-15 0-7, 8-15 8-15 */
			uint32_t b[4];
			ldmatrix_x4(b, ks + (np * 16 + (lane & 7) + (lane >> 4) * 8) * S + kk * 16 +
					       ((lane >> 3) & 1) * 8);
			mma_bf16(s[2 * np], a, b[0], b[1]);
			mma_bf16(s[2 * np + 1], a, b[2], b[3]);
		}
	}
	/* s[i]: rows g (0, 1) and g + 8 (2, 3), keys kb + 8i + 2t (+1) */
	float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
	for (int i = 0; i < NW / 8; i++)
#pragma unroll
		for (int e = 0; e < 4; e++) {
			float x = s[i][e] * sc;
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
		const float mn = fmaxf(m[h], mx[h]);
		mu[h] = mn == -INFINITY ? 0.0f : mn;      /* a row with no key yet stays at 0 */
		alpha[h] = exp2f(m[h] - mu[h]);
		m[h] = mn;
		l[h] *= alpha[h];
	}
#pragma unroll
	for (int i = 0; i < DP / 8; i++) {
		o[i][0] *= alpha[0];
		o[i][1] *= alpha[0];
		o[i][2] *= alpha[1];
		o[i][3] *= alpha[1];
	}
	uint32_t p[NW / 8][2];
#pragma unroll
	for (int i = 0; i < NW / 8; i++)
#pragma unroll
		for (int h = 0; h < 2; h++) {
			const __nv_bfloat162 pb = __floats2bfloat162_rn(exp2f(s[i][2 * h] - mu[h]),
									exp2f(s[i][2 * h + 1] - mu[h]));
			const float2 pf = __bfloat1622float2(pb);
			l[h] += pf.x + pf.y;
			p[i][h] = bf16x2_bits(pb);
		}
#pragma unroll
	for (int kk = 0; kk < NW / 16; kk++) {
		const uint32_t a[4] = {p[2 * kk][0], p[2 * kk][1], p[2 * kk + 1][0],
				       p[2 * kk + 1][1]};
#pragma unroll
		for (int np = 0; np < DP / 16; np++) {
			/* matrices (keys, dims): 0-7 0-7, 8-15 0-7, 0-7 8-15, 8-15 8-15 */
			uint32_t b[4];
			ldmatrix_x4_trans(b, vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S +
						     np * 16 + (lane >> 4) * 8);
			mma_bf16(o[2 * np], a, b[0], b[1]);
			mma_bf16(o[2 * np + 1], a, b[2], b[3]);
		}
	}
}

/* The CTA's attention of its BM query rows (Q's copies issued and committed by the caller,
 * rows at smem) over keys [lo, hi) (lo < hi); row r sees keys < row_lim[r] (0: an empty
 * row).  key_off(j): the element offset of key j's row in k and v.  Leaves each warp's
 * unnormalised output in smem as (64, EPS) floats, row wn * BM + r, and its log2-domain max
 * and sum in em, el (64,); combine() merges them. */
template <class C, class KeyOff>
static __device__ void attend(unsigned char *smem, const bf16 *k, const bf16 *v, KeyOff key_off,
			      int D, int lo, int hi, const int *row_lim, float sc, float *em, float *el)
{
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int wm = warp / C::WN, wn = warp % C::WN, g = lane >> 2, t = lane & 3;
	const int lim0 = min(row_lim[wm * 16 + g], hi), lim1 = min(row_lim[wm * 16 + g + 8], hi);
	int wmax = max(lim0, lim1), wmin = min(lim0, lim1);
#pragma unroll
	for (int x = 16; x; x >>= 1) {
		wmax = max(wmax, __shfl_xor_sync(FULL, wmax, x));
		wmin = min(wmin, __shfl_xor_sync(FULL, wmin, x));
	}
	const bf16 *qs = (const bf16 *)smem + wm * 16 * C::S;
	auto kt = [&](int st) { return (bf16 *)(smem + C::Q_BYTES + (2 * st) * C::KV_BYTES); };
	auto vt = [&](int st) { return (bf16 *)(smem + C::Q_BYTES + (2 * st + 1) * C::KV_BYTES); };
	auto load = [&](int st, int j0) {
		load_tile<C, C::BN, true>(kt(st), vt(st), k, v, [&](int r) -> int64_t {
			const int j = j0 + r;
			return j < hi ? key_off(j) : -1;
		}, D);
		cp_async_commit();
	};

	float o[C::DP / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
	for (int i = 0; i < C::DP / 8; i++)
		o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
	load(0, lo);
	int st = 0;
	for (int j0 = lo; j0 < hi; j0 += C::BN, st ^= 1) {
		if (j0 + C::BN < hi) {
			load(st ^ 1, j0 + C::BN);
			cp_async_wait<1>();
		} else {
			cp_async_wait<0>();
		}
		__syncthreads();
		const int kb = j0 + wn * C::NW;
		if (kb < wmax)   /* else every key of the slice is masked for every row */
			warp_tile<C>(o, m, l, qs, kt(st) + wn * C::NW * C::S, vt(st) + wn * C::NW * C::S,
				     kb, lim0, lim1, kb + C::NW > wmin, sc);
		__syncthreads();
	}
	float *ep = (float *)smem;
	const int r0 = wn * C::BM + wm * 16 + g;
#pragma unroll
	for (int h = 0; h < 2; h++) {
		l[h] += __shfl_xor_sync(FULL, l[h], 1);
		l[h] += __shfl_xor_sync(FULL, l[h], 2);
		if (t == 0) {
			em[r0 + 8 * h] = m[h];
			el[r0 + 8 * h] = l[h];
		}
	}
#pragma unroll
	for (int i = 0; i < C::DP / 8; i++) {
		*(float2 *)(ep + r0 * C::EPS + i * 8 + 2 * t) = make_float2(o[i][0], o[i][1]);
		*(float2 *)(ep + (r0 + 8) * C::EPS + i * 8 + 2 * t) = make_float2(o[i][2], o[i][3]);
	}
	__syncthreads();
}

/* Row r's normalised output at columns d, d + 1 from attend's parts; *lse: the row's log2
 * sum of exponentials (-inf when it saw no key). */
template <class C>
static __device__ __forceinline__ float2 combine(const unsigned char *smem, const float *em,
						 const float *el, int r, int d, float *lse)
{
	const float *ep = (const float *)smem;
	float M = -INFINITY;
#pragma unroll
	for (int w = 0; w < C::WN; w++)
		M = fmaxf(M, em[w * C::BM + r]);
	float L = 0.0f, x = 0.0f, y = 0.0f;
#pragma unroll
	for (int w = 0; w < C::WN; w++) {
		const int row = w * C::BM + r;
		const float e = M == -INFINITY ? 0.0f : exp2f(em[row] - M);
		L += e * el[row];
		x += e * ep[row * C::EPS + d];
		y += e * ep[row * C::EPS + d + 1];
	}
	const float inv = L > 0.0f ? 1.0f / L : 0.0f;
	*lse = L > 0.0f ? M + log2f(L) : -INFINITY;
	return make_float2(x * inv, y * inv);
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

// -- paged attention -------------------------------------------------------------------------

/* What a paged attention CTA reads. */
struct paged_args {
	bf16 *out;                   /* (T, Hq * D) */
	float *part_o;               /* (n_splits, T, Hq, D) normalised partial outputs, or NULL */
	float *part_lse;             /* (n_splits, T, Hq) their log2-sum-exp */
	const bf16 *q;               /* (T, Hq * D) */
	const bf16 *k, *v;           /* (n_slots, Hkv * D): one layer's cache */
	const int32_t *kv_index;     /* (T,) */
	const int32_t *seq_start;    /* (n_seqs + 1,) */
	const int32_t *block_tables; /* (n_seqs, max_blocks) */
	int T, n_seqs, max_blocks, block_size;
	int Hq, Hkv, group, D;
	int tq;                      /* tokens a tile: BM / group */
	int n_splits;                /* context splits (grid z) */
	int chunk;                   /* split z: keys [z * chunk, (z + 1) * chunk), the last to the end */
	int max_ctx;                 /* max_blocks * block_size: the most keys a table names */
	float sc;                    /* scale * log2(e) */
};

template <int DP, int WM, int BN>
static __global__ void __launch_bounds__(THREADS) paged_attention(const paged_args a)
{
	pdl_launch_next();
	pdl_wait_previous();
	using C = tile_cfg<DP, WM, BN, 16>;
	extern __shared__ __align__(16) unsigned char smem[];
	__shared__ int row_tok[C::BM], row_lim[C::BM], tile_hi;
	__shared__ float em[64], el[64];
	int tile = 0;
	const int s = find_owner(a.seq_start, a.n_seqs, a.tq, blockIdx.x, &tile);
	if (s < 0)
		return;
	const int first = a.seq_start[s] + tile * a.tq;
	const int n = min(a.tq, a.seq_start[s + 1] - first);
	if (n <= 0)
		return;
	const int kvh = blockIdx.y, z = blockIdx.z;
	if (threadIdx.x == 0)
		tile_hi = 0;
	__syncthreads();
	for (int r = threadIdx.x; r < C::BM; r += THREADS) {
		const int i = r / a.group;
		int tok = -1, lim = 0;
		if (i < n) {
			tok = first + i;
			lim = max(0, min(a.kv_index[tok] + 1, a.max_ctx));
		}
		row_tok[r] = tok;
		row_lim[r] = lim;
		atomicMax(&tile_hi, lim);
	}
	__syncthreads();
	const int lo = z * a.chunk;   /* chunk is INT_MAX only when z is 0 */
	if (lo >= tile_hi)
		return;
	const int hi = z == a.n_splits - 1 ? tile_hi : min(tile_hi, lo + a.chunk);

	const int64_t qrow = (int64_t)a.Hq * a.D;
	load_tile<C, C::BM, false>((bf16 *)smem, nullptr, a.q, nullptr, [&](int r) -> int64_t {
		const int tok = row_tok[r];
		return tok < 0 ? -1 : tok * qrow + (int64_t)(kvh * a.group + r % a.group) * a.D;
	}, a.D);
	cp_async_commit();
	const int32_t *table = a.block_tables + (int64_t)s * a.max_blocks;
	const int64_t width = (int64_t)a.Hkv * a.D, head = (int64_t)kvh * a.D;
	const int bs = a.block_size;
	attend<C>(smem, a.k, a.v, [=](int j) -> int64_t {
		const int blk = __ldg(table + j / bs);
		return blk < 0 ? -1 : ((int64_t)blk * bs + j % bs) * width + head;
	}, a.D, lo, hi, row_lim, a.sc, em, el);

	const int half = a.D / 2;
	for (int i = threadIdx.x; i < C::BM * half; i += THREADS) {
		const int r = i / half, d = i % half * 2, tok = row_tok[r];
		if (tok < 0)
			continue;
		float lse;
		const float2 o = combine<C>(smem, em, el, r, d, &lse);
		const int64_t row = (int64_t)tok * a.Hq + kvh * a.group + r % a.group;
		if (a.part_o) {
			const int64_t prow = (int64_t)z * a.T * a.Hq + row;
			*(float2 *)(a.part_o + prow * a.D + d) = o;
			if (d == 0)
				a.part_lse[prow] = lse;
		} else {
			*(__nv_bfloat162 *)(a.out + row * a.D + d) = __floats2bfloat162_rn(o.x, o.y);
		}
	}
}

/* out (T, Hq * D) from the splits' partials: one warp a (token, head), weights
 * 2^(lse_z - max) over the splits that saw a key of the row. */
static __global__ void __launch_bounds__(THREADS)
split_reduce(bf16 *out, const float *part_o, const float *part_lse, const int32_t *kv_index, int T,
	     int Hq, int D, int n_splits, int chunk, int max_ctx)
{
	pdl_launch_next();
	pdl_wait_previous();
	const int64_t w = ((int64_t)blockIdx.x * THREADS + threadIdx.x) >> 5;
	const int64_t rows = (int64_t)T * Hq;
	const int lane = threadIdx.x & 31;
	if (w >= rows)
		return;
	const int lim = min(kv_index[w / Hq] + 1, max_ctx);
	const int nv = lim <= 0 ? 0 : min(n_splits, (lim - 1) / chunk + 1);
	const float x0 = lane < nv ? part_lse[lane * rows + w] : -INFINITY;
	const float x1 = lane + 32 < nv ? part_lse[(lane + 32) * rows + w] : -INFINITY;
	float M = fmaxf(x0, x1);
#pragma unroll
	for (int x = 16; x; x >>= 1)
		M = fmaxf(M, __shfl_xor_sync(FULL, M, x));
	const float e0 = M == -INFINITY ? 0.0f : exp2f(x0 - M);
	const float e1 = M == -INFINITY ? 0.0f : exp2f(x1 - M);
	float L = e0 + e1;
#pragma unroll
	for (int x = 16; x; x >>= 1)
		L += __shfl_xor_sync(FULL, L, x);
	const float inv = L > 0.0f ? 1.0f / L : 0.0f;
	for (int d0 = 0; d0 < D; d0 += 32) {
		const int d = d0 + lane;
		float acc = 0.0f;
		for (int i = 0; i < nv; i++) {
			const float e = __shfl_sync(FULL, i < 32 ? e0 : e1, i & 31);
			if (d < D)
				acc += e * part_o[(i * rows + w) * D + d];
		}
		if (d < D)
			out[w * D + d] = __float2bfloat16_rn(acc * inv);
	}
}

// -- segment attention ------------------------------------------------------------------------

/* What a segment attention CTA reads. */
struct segment_args {
	bf16 *out;                 /* (T, H * D) */
	const bf16 *q, *k, *v;     /* (T, H * D) */
	const int32_t *seg_start;  /* (n_segs + 1,) */
	int n_segs, H, D;
	float sc;                  /* D^-0.5 * log2(e) */
};

template <int DP, int BN>
static __global__ void __launch_bounds__(THREADS) segment_attention(const segment_args a)
{
	using C = tile_cfg<DP, 4, BN, 8>;
	extern __shared__ __align__(16) unsigned char smem[];
	__shared__ int row_lim[C::BM];
	__shared__ float em[64], el[64];
	int tile = 0;
	const int s = find_owner(a.seg_start, a.n_segs, C::BM, blockIdx.x, &tile);
	if (s < 0)
		return;
	const int s0 = a.seg_start[s], len = a.seg_start[s + 1] - s0, first = s0 + tile * C::BM;
	const int n = min(C::BM, s0 + len - first);
	if (n <= 0)
		return;
	for (int r = threadIdx.x; r < C::BM; r += THREADS)
		row_lim[r] = r < n ? len : 0;
	__syncthreads();
	const int64_t width = (int64_t)a.H * a.D, head = (int64_t)blockIdx.y * a.D;
	load_tile<C, C::BM, false>((bf16 *)smem, nullptr, a.q, nullptr, [&](int r) -> int64_t {
		return r < n ? (first + r) * width + head : -1;
	}, a.D);
	cp_async_commit();
	attend<C>(smem, a.k, a.v, [=](int j) -> int64_t { return (s0 + j) * width + head; }, a.D, 0,
		  len, row_lim, a.sc, em, el);
	const int half = a.D / 2;
	for (int i = threadIdx.x; i < n * half; i += THREADS) {
		const int r = i / half, d = i % half * 2;
		float lse;
		const float2 o = combine<C>(smem, em, el, r, d, &lse);
		*(__nv_bfloat162 *)(a.out + (first + r) * width + head + d) =
			__floats2bfloat162_rn(o.x, o.y);
	}
}

// -- KV-cache writes ----------------------------------------------------------------------------

/* cache row slot[t] = row t, n elements of E a row; rows with a negative slot are skipped. */
template <class E>
static __global__ void kv_write_rows(E *k_cache, E *v_cache, const E *k, const E *v,
				     const int32_t *slot, int T, int n)
{
	const int64_t total = (int64_t)T * n, stride = (int64_t)gridDim.x * blockDim.x;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
		const int64_t t = i / n, c = i % n;
		const int32_t sl = slot[t];
		if (sl < 0)
			continue;
		k_cache[sl * (int64_t)n + c] = k[i];
		v_cache[sl * (int64_t)n + c] = v[i];
	}
}

// -- launchers --------------------------------------------------------------------------------

static bool aligned(const void *p, uintptr_t n)
{
	return ((uintptr_t)p & (n - 1)) == 0;
}

extern "C" qw_status qw_cuda_kv_write(uint16_t *k_cache, uint16_t *v_cache, const uint16_t *k,
				      const uint16_t *v, const qw_cuda_batch *b, int width,
				      cudaStream_t stream, qw_err *err)
{
	if (!b || b->n_tokens < 0 || width < 1)
		return qw_fail(err, QW_E_ARG, "cuda kv_write: bad batch or width %d", width);
	if (b->n_tokens == 0)
		return QW_OK;
	const bool vec = width % 8 == 0 && aligned(k_cache, 16) && aligned(v_cache, 16) &&
			 aligned(k, 16) && aligned(v, 16);
	const int n = vec ? width / 8 : width;
	const int64_t total = (int64_t)b->n_tokens * n;
	const int blocks = (int)(total / 256 + 1 < 65536 ? total / 256 + 1 : 65536);
	if (vec)
		kv_write_rows<uint4><<<blocks, 256, 0, stream>>>((uint4 *)k_cache, (uint4 *)v_cache,
								 (const uint4 *)k, (const uint4 *)v,
								 b->slot, b->n_tokens, n);
	else
		kv_write_rows<uint16_t><<<blocks, 256, 0, stream>>>(k_cache, v_cache, k, v, b->slot,
								    b->n_tokens, n);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}

extern "C" size_t qw_cuda_attention_ws_bytes(int max_tokens, int n_heads, int head_dim,
					     int max_kv_len)
{
	const int64_t splits = std::min<int64_t>(MAX_SPLITS, max_kv_len / MIN_CHUNK);
	if (max_tokens < 1 || n_heads < 1 || head_dim < 1 || splits < 2)
		return 0;
	const int64_t rows = std::min<int64_t>(SPLIT_BUDGET, (int64_t)max_tokens * splits);
	return (size_t)(rows * n_heads * (head_dim + 1) * (int64_t)sizeof(float));
}

typedef void (*paged_fn)(paged_args);

/* A paged attention kernel and its launch shape. */
struct paged_kernel {
	paged_fn fn;
	int smem;   /* dynamic shared memory, bytes */
	int bn;     /* keys a tile: splits are multiples of it */
	int bm;     /* query rows a CTA */
};

template <int DP, int WM, int BN>
static paged_kernel paged_of()
{
	return {paged_attention<DP, WM, BN>, tile_cfg<DP, WM, BN, 16>::SMEM, BN, 16 * WM};
}

/* DP: the head dim rounded up to 32, 64, 128 or 256; decode: 16-row tiles of 4 warps over
 * 16 keys each, else 64-row tiles (32-key tiles at DP 256, to fit sm_80). */
static paged_kernel pick_paged(int D, bool decode)
{
	if (D <= 32)
		return decode ? paged_of<32, 1, 64>() : paged_of<32, 4, 64>();
	if (D <= 64)
		return decode ? paged_of<64, 1, 64>() : paged_of<64, 4, 64>();
	if (D <= 128)
		return decode ? paged_of<128, 1, 64>() : paged_of<128, 4, 64>();
	return decode ? paged_of<256, 1, 64>() : paged_of<256, 4, 32>();
}

extern "C" qw_status qw_cuda_attention(uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
				       const uint16_t *v_cache, const qw_cuda_batch *b, int n_heads,
				       int n_kv_heads, int head_dim, float scale, void *ws,
				       size_t ws_bytes, cudaStream_t stream, qw_err *err)
{
	if (!b || b->n_tokens < 0 || b->n_seqs < 0)
		return qw_fail(err, QW_E_ARG, "cuda attention: bad batch");
	if (n_heads < 1 || n_kv_heads < 1 || n_heads % n_kv_heads || n_heads / n_kv_heads > 64)
		return qw_fail(err, QW_E_ARG, "cuda attention: %d query heads over %d KV heads (groups "
			       "of at most 64 are supported)", n_heads, n_kv_heads);
	if (head_dim < 8 || head_dim > 256 || head_dim % 8)
		return qw_fail(err, QW_E_ARG, "cuda attention: head dim %d (a multiple of 8 up to 256 "
			       "is supported)", head_dim);
	if (b->block_size < 1 || b->max_blocks < 1 ||
	    (int64_t)b->block_size * b->max_blocks > INT_MAX)
		return qw_fail(err, QW_E_ARG, "cuda attention: %d blocks of %d tokens a sequence",
			       b->max_blocks, b->block_size);
	if (!aligned(out, 16) || !aligned(q, 16) || !aligned(k_cache, 16) || !aligned(v_cache, 16))
		return qw_fail(err, QW_E_ARG, "cuda attention: buffers must be 16-byte aligned");
	const int T = b->n_tokens;
	if (T == 0 || b->n_seqs == 0)
		return QW_OK;
	const int group = n_heads / n_kv_heads;
	const bool decode = group <= 16 && (int64_t)std::max(b->max_seq_tokens, 1) * group <= 16;
	const paged_kernel kern = pick_paged(head_dim, decode);
	const int tq = kern.bm / group;

	int dev = 0, sms = 0, occ = 0;
	QW_CUDA_TRY(err, cudaGetDevice(&dev));
	QW_CUDA_TRY(err, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
	QW_CUDA_TRY(err, cudaFuncSetAttribute((const void *)kern.fn,
					      cudaFuncAttributeMaxDynamicSharedMemorySize, kern.smem));
	QW_CUDA_TRY(err, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern.fn, THREADS,
								       kern.smem));

	/* splits: enough CTAs for about one wave, when the partials fit the budget and ws */
	int n_splits = 1, chunk = INT_MAX;
	const int64_t per_split = (int64_t)T * n_heads * (head_dim + 1) * (int64_t)sizeof(float);
	if (2 * (int64_t)T <= SPLIT_BUDGET && b->max_kv_len >= 2 * MIN_CHUNK && ws &&
	    aligned(ws, 16)) {
		const int64_t tiles = std::max<int64_t>((T + tq - 1) / tq, std::min(b->n_seqs, T));
		const int64_t work = tiles * n_kv_heads, slots = (int64_t)sms * std::max(occ, 1);
		int64_t want = (slots + work - 1) / work;
		want = std::min<int64_t>(want, MAX_SPLITS);
		want = std::min<int64_t>(want, SPLIT_BUDGET / T);
		want = std::min<int64_t>(want, std::max<int64_t>(b->max_kv_len / LONG_CHUNK,
			std::min<int64_t>(b->max_kv_len / MIN_CHUNK, SHORT_SPLITS)));
		want = std::min<int64_t>(want, (int64_t)(ws_bytes / (size_t)per_split));
		if (want >= 2) {
			const int per = (int)((b->max_kv_len + want - 1) / want);
			chunk = (per + kern.bn - 1) / kern.bn * kern.bn;
			n_splits = (b->max_kv_len + chunk - 1) / chunk;
		}
		if (n_splits < 2) {
			n_splits = 1;
			chunk = INT_MAX;
		}
	}

	paged_args a;
	a.out = (bf16 *)out;
	a.part_o = n_splits > 1 ? (float *)ws : nullptr;
	a.part_lse = a.part_o ? a.part_o + (int64_t)n_splits * T * n_heads * head_dim : nullptr;
	a.q = (const bf16 *)q;
	a.k = (const bf16 *)k_cache;
	a.v = (const bf16 *)v_cache;
	a.kv_index = b->kv_index;
	a.seq_start = b->seq_start;
	a.block_tables = b->block_tables;
	a.T = T;
	a.n_seqs = b->n_seqs;
	a.max_blocks = b->max_blocks;
	a.block_size = b->block_size;
	a.Hq = n_heads;
	a.Hkv = n_kv_heads;
	a.group = group;
	a.D = head_dim;
	a.tq = tq;
	a.n_splits = n_splits;
	a.chunk = chunk;
	a.max_ctx = b->max_blocks * b->block_size;
	a.sc = scale * LOG2E;
	const int64_t ctas = (int64_t)T / tq + (tq > 1 ? b->n_seqs : 0);
	if (ctas > INT_MAX || n_kv_heads > 65535)
		return qw_fail(err, QW_E_ARG, "cuda attention: %lld tiles of %d KV heads is too many",
			       (long long)ctas, n_kv_heads);
	const dim3 grid((unsigned)ctas, (unsigned)n_kv_heads, (unsigned)n_splits);
	QW_CUDA_TRY(err, launch_pdl(kern.fn, grid, dim3(THREADS), (size_t)kern.smem, stream, a));
	if (n_splits > 1) {
		const int64_t warps = (int64_t)T * n_heads;
		const unsigned blocks = (unsigned)((warps * 32 + THREADS - 1) / THREADS);
		QW_CUDA_TRY(err, launch_pdl(split_reduce, dim3(blocks), dim3(THREADS), 0, stream, a.out,
					    (const float *)a.part_o, (const float *)a.part_lse,
					    a.kv_index, T, n_heads, head_dim, n_splits, chunk,
					    a.max_ctx));
	}
	return QW_OK;
}

typedef void (*segment_fn)(segment_args);

/* A segment attention kernel and its dynamic shared memory. */
struct segment_kernel {
	segment_fn fn;
	int smem;
};

template <int DP, int BN>
static segment_kernel segment_of()
{
	return {segment_attention<DP, BN>, tile_cfg<DP, 4, BN, 8>::SMEM};
}

/* DP: the smallest of 16, 32, 64, 80 (the vision tower's 72), 128, 256 that holds D. */
static segment_kernel pick_segment(int D)
{
	if (D <= 16)
		return segment_of<16, 64>();
	if (D <= 32)
		return segment_of<32, 64>();
	if (D <= 64)
		return segment_of<64, 64>();
	if (D <= 80)
		return segment_of<80, 64>();
	if (D <= 128)
		return segment_of<128, 64>();
	return segment_of<256, 32>();
}

extern "C" qw_status qw_cuda_segment_attention(uint16_t *out, const uint16_t *q, const uint16_t *k,
					       const uint16_t *v, const int32_t *seg_start, int n_segs,
					       int max_seg, int T, int n_heads, int head_dim,
					       cudaStream_t stream, qw_err *err)
{
	if (n_segs < 0 || T < 0 || n_heads < 1 || n_heads > 65535)
		return qw_fail(err, QW_E_ARG, "cuda segment attention: %d segments, %d rows, %d heads",
			       n_segs, T, n_heads);
	if (head_dim < 4 || head_dim > 256 || head_dim % 4)
		return qw_fail(err, QW_E_ARG, "cuda segment attention: head dim %d (a multiple of 4 up "
			       "to 256 is supported)", head_dim);
	if (!aligned(out, 8) || !aligned(q, 8) || !aligned(k, 8) || !aligned(v, 8))
		return qw_fail(err, QW_E_ARG, "cuda segment attention: buffers must be 8-byte aligned");
	if (T == 0 || n_segs == 0)
		return QW_OK;
	const segment_kernel kern = pick_segment(head_dim);
	QW_CUDA_TRY(err, cudaFuncSetAttribute((const void *)kern.fn,
					      cudaFuncAttributeMaxDynamicSharedMemorySize, kern.smem));
	segment_args a;
	a.out = (bf16 *)out;
	a.q = (const bf16 *)q;
	a.k = (const bf16 *)k;
	a.v = (const bf16 *)v;
	a.seg_start = seg_start;
	a.n_segs = n_segs;
	a.H = n_heads;
	a.D = head_dim;
	a.sc = (float)(1.0 / sqrt((double)head_dim)) * LOG2E;
	const dim3 grid((unsigned)(T / 64 + n_segs), (unsigned)n_heads);
	kern.fn<<<grid, THREADS, kern.smem, stream>>>(a);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}
