/* attention.cu - KV-cache writes and paged causal GQA attention over the cache.  See kernels.h
 * for the contracts; the engine (tiles, the online-softmax step, the fold of chunk states and
 * the order of the sums every kernel keeps) is attn_engine.cuh's; the vision tower's
 * attention is segment_attention.cu's.
 *
 * A query row is a (token, query head) pair; the `group` = Hq / Hkv heads of one KV head and
 * tq = BM / group consecutive tokens of one sequence fill a tile, so each K/V tile read from
 * the cache serves all of them (GQA packing).  The CTAs of one step form a grid (tiles, Hkv,
 * splits); tile i of sequence s is CTA x = seq_start[s] / tq + s + i, which needs no
 * per-sequence counts on the host (each CTA finds its s by a scan of seq_start).  Keys are
 * read through the block table; row r sees keys < kv_index + 1.
 *
 * Batch invariance.  A row's output is summed in the engine's one order: its keys in chunks
 * of CHUNK (256) at fixed positions, each chunk an online softmax over steps of 16 keys from
 * an empty state, the chunks' states folded in chunk order.  Nothing of it depends on the
 * step: not the kernel (decode or prefill, chosen by the step's longest sequence), not the
 * tile a row shares, not whether the context is split (the split is the chunk, a function of
 * the key positions alone, and the partial states are folded in the same order and
 * arithmetic as inside a CTA).  So a token's bits are the same alone, beside any others, in a
 * prefill chunk of any length or as a decode (test_cuda_invariance).
 *
 * Kernels:
 *  - prefill (some sequence has more than 16 / group rows): 64-row tiles (64 / group tokens,
 *    4 warps of 16 rows) over the tile's causal range, every warp over the whole of each
 *    BN-key tile (attend_rows), chunk states folded in registers.
 *  - decode (every sequence has at most 16 / group rows): one 16-row tile per sequence and
 *    KV head; its 4 warps take 4 consecutive chunks at once (a round), each its own 16 keys of
 *    a 64-key stage; at a round's end warps 1-3 hand their chunk states to warp 0 through
 *    shared memory and it folds the four in order.
 *  - split (either kernel, when the step's CTAs would not fill the GPU and the partials fit
 *    SPLIT_BUDGET): each chunk's state goes to ws (prefill: a CTA a chunk; decode: a CTA a
 *    round) and split_reduce folds a row's states in chunk order: flash-decoding whose split
 *    points are the fixed chunks.  Its traffic: T Hq (D + 2) 4 bytes a chunk, written and
 *    read back, against Hkv CHUNK D 4 bytes of K and V a chunk and token.
 * Memory traffic otherwise: every CTA reads its K and V range once, D * 2 bytes a key each,
 * from the cache (16-byte copies); a prefill chunk of n tokens reads its causal range once per
 * tile of 64 / group tokens, mostly from L2 since a sequence's tiles run together.
 *
 * Shared memory: Q (BM, DP + 8) and two stages of K and V (BN, DP + 8) bf16; the 16 bytes of
 * padding a row make ldmatrix conflict-free.  Up to 135 KB (DP 256), under the 163 KB an
 * sm_80 block may have.
 */
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"

#include <algorithm>
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/attn_engine.cuh"
#include "kernels/cuda/check.h"

static constexpr int ROUND = 4;              /* chunks a decode CTA takes at once (its warps) */
static constexpr int DECODE_BN = ROUND * STEP;   /* a decode stage: 16 keys of each warp */
/* Partial states of a split step, at most: tokens x chunks (bounds ws: 2048 x 64 heads x
 * 130 floats = 68 MB for the 235B) */
static constexpr int SPLIT_BUDGET = 2048;

/* What a paged attention CTA reads. */
struct paged_args {
	bf16 *out;                   /* (T, Hq * D) */
	float *part_o;               /* (n_chunks, T, Hq, D) chunk states' o, or NULL: not split */
	float *part_m, *part_l;      /* (n_chunks, T, Hq) their max and sum */
	const bf16 *q;               /* (T, Hq * D) */
	const bf16 *k, *v;           /* (n_slots, Hkv * D): one layer's cache */
	const int32_t *kv_index;     /* (T,) */
	const int32_t *seq_start;    /* (n_seqs + 1,) */
	const int32_t *block_tables; /* (n_seqs, max_blocks) */
	int T, n_seqs, max_blocks, block_size;
	int Hq, Hkv, group, D;
	int tq;                      /* tokens a tile: BM / group */
	int max_ctx;                 /* max_blocks * block_size: the most keys a table names */
	float sc;                    /* scale * log2(e) */
};

/* A paged CTA's rows: their tokens and key limits, its sequence's table, its KV head. */
struct paged_tile {
	int s, first, n, kvh, hi;    /* sequence, first token, tokens, KV head, the rows' last limit */
};

/* Finds the CTA's tile and fills row_tok / row_lim (BM rows); false when the CTA has no
 * rows. */
template <class C>
static __device__ bool paged_setup(const paged_args &a, int *row_tok, int *row_lim,
				   paged_tile *pt)
{
	__shared__ int tile_hi;
	int tile = 0;
	const int s = find_owner(a.seq_start, a.n_seqs, a.tq, blockIdx.x, &tile);
	if (s < 0)
		return false;
	const int first = a.seq_start[s] + tile * a.tq;
	const int n = min(a.tq, a.seq_start[s + 1] - first);
	if (n <= 0)
		return false;
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
	*pt = {s, first, n, (int)blockIdx.y, tile_hi};
	return true;
}

/* Issues the copies of the tile's query rows into smem. */
template <class C>
static __device__ void paged_load_q(const paged_args &a, unsigned char *smem, const int *row_tok,
				    int kvh)
{
	const int64_t qrow = (int64_t)a.Hq * a.D;
	load_tile<C, C::BM, false>((bf16 *)smem, nullptr, a.q, nullptr, [&](int r) -> int64_t {
		const int tok = row_tok[r];
		return tok < 0 ? -1 : tok * qrow + (int64_t)(kvh * a.group + r % a.group) * a.D;
	}, a.D);
	cp_async_commit();
}

/* The element offset of key j of sequence s for KV head kvh, through its block table. */
struct key_at {
	const int32_t *table;
	int bs;
	int64_t width, head;
	__device__ int64_t operator()(int j) const
	{
		const int blk = __ldg(table + j / bs);
		return blk < 0 ? -1 : ((int64_t)blk * bs + j % bs) * width + head;
	}
};

static __device__ key_at key_of(const paged_args &a, const paged_tile &pt)
{
	return {a.block_tables + (int64_t)pt.s * a.max_blocks, a.block_size,
		(int64_t)a.Hkv * a.D, (int64_t)pt.kvh * a.D};
}

/* A warp's 16 rows (from row r0 of the tile) out of state st: the output, or (chunk >= 0)
 * chunk `chunk`'s partial state. */
template <int DP>
static __device__ void paged_write(const paged_args &a, const row_state<DP> &st,
				   const int *row_tok, int r0, int kvh, int chunk)
{
	const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
	for (int h = 0; h < 2; h++) {
		const int r = r0 + g + 8 * h, tok = row_tok[r];
		if (tok < 0)
			continue;
		const int64_t row = (int64_t)tok * a.Hq + kvh * a.group + r % a.group;
		if (chunk >= 0) {
			const int64_t prow = (int64_t)chunk * a.T * a.Hq + row;
			if (t == 0) {
				a.part_m[prow] = st.m[h];
				a.part_l[prow] = st.l[h];
			}
#pragma unroll
			for (int i = 0; i < DP / 8; i++) {
				const int d = i * 8 + 2 * t;
				if (d < a.D)   /* D % 8 == 0: d + 1 < D too */
					*(float2 *)(a.part_o + prow * a.D + d) =
						make_float2(st.o[i][2 * h], st.o[i][2 * h + 1]);
			}
		} else {
#pragma unroll
			for (int i = 0; i < DP / 8; i++) {
				const int d = i * 8 + 2 * t;
				if (d < a.D)
					*(__nv_bfloat162 *)(a.out + row * a.D + d) = __floats2bfloat162_rn(
						finish(st.o[i][2 * h], st.l[h]),
						finish(st.o[i][2 * h + 1], st.l[h]));
			}
		}
	}
}

// -- the prefill kernel ----------------------------------------------------------------------

/* 64-row tiles, 4 warps of 16 rows; split: CTA z takes chunk z only and writes its state. */
template <int DP, int BN>
static __global__ void __launch_bounds__(THREADS) paged_prefill(const paged_args a)
{
	pdl_launch_next();
	pdl_wait_previous();
	using C = tile_cfg<DP, 4, BN, 16>;
	extern __shared__ __align__(16) unsigned char smem[];
	__shared__ int row_tok[C::BM], row_lim[C::BM];
	paged_tile pt;
	if (!paged_setup<C>(a, row_tok, row_lim, &pt))
		return;
	const bool split = a.part_o != nullptr;
	const int lo = split ? (int)blockIdx.z * CHUNK : 0;
	if (lo >= pt.hi)
		return;
	const int hi = split ? min(pt.hi, lo + CHUNK) : pt.hi;
	paged_load_q<C>(a, smem, row_tok, pt.kvh);
	row_state<DP> st;
	attend_rows<C>(smem, a.k, a.v, key_of(a, pt), a.D, lo, hi, row_lim, a.sc, st);
	paged_write<DP>(a, st, row_tok, (threadIdx.x >> 5) * 16, pt.kvh,
			split ? (int)blockIdx.z : -1);
}

// -- the decode kernel -----------------------------------------------------------------------

/* One 16-row tile; rounds of ROUND chunks, warp w taking chunk ROUND r + w of round r; split:
 * CTA z takes round z only and each warp writes its chunk's state. */
template <int DP>
static __global__ void __launch_bounds__(THREADS) paged_decode(const paged_args a)
{
	pdl_launch_next();
	pdl_wait_previous();
	using C = tile_cfg<DP, 1, DECODE_BN, 16>;
	extern __shared__ __align__(16) unsigned char smem[];
	__shared__ int row_tok[C::BM], row_lim[C::BM];
	paged_tile pt;
	if (!paged_setup<C>(a, row_tok, row_lim, &pt))
		return;
	const bool split = a.part_o != nullptr;
	const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2;
	const int hi = pt.hi, rounds = (hi + ROUND * CHUNK - 1) / (ROUND * CHUNK);
	const int r0 = split ? (int)blockIdx.z : 0, r1 = split ? r0 + 1 : rounds;
	if (r0 >= rounds)
		return;
	paged_load_q<C>(a, smem, row_tok, pt.kvh);
	const int lim0 = row_lim[g], lim1 = row_lim[g + 8];
	int wmin, wmax;
	warp_limits(lim0, lim1, &wmin, &wmax);
	const key_at key_off = key_of(a, pt);
	auto kt = [&](int st) { return (bf16 *)(smem + C::Q_BYTES + (2 * st) * C::KV_BYTES); };
	auto vt = [&](int st) { return (bf16 *)(smem + C::Q_BYTES + (2 * st + 1) * C::KV_BYTES); };
	/* stage rows [16 w', 16 w' + 16): keys 16 i.. of warp w''s chunk of round r */
	auto load = [&](int st, int r, int i) {
		load_tile<C, C::BN, true>(kt(st), vt(st), a.k, a.v, [&](int row) -> int64_t {
			const int j = ((r * ROUND + row / STEP) * CHUNK) + i * STEP + row % STEP;
			return j < hi ? key_off(j) : -1;
		}, a.D);
		cp_async_commit();
	};
	/* warps 1.. hand their chunk states to warp 0 here (the stages' memory, free then) */
	constexpr int VALS = DP / 2 + 4;   /* a thread's o, m and l */
	float *handed = (float *)(smem + C::Q_BYTES);
	static_assert((ROUND - 1) * VALS * 32 * 4 <= 4 * C::KV_BYTES, "hand-over room");

	row_state<DP> res, c;
	state_clear(res);
	for (int r = r0; r < r1; r++) {
		const int cb = (r * ROUND + w) * CHUNK;   /* this warp's chunk's first key */
		/* steps past the round's last key hold no key for any warp */
		const int steps = min(CHUNK / STEP, (hi - r * ROUND * CHUNK + STEP - 1) / STEP);
		state_clear(c);
		load(0, r, 0);
		for (int i = 0, st = 0; i < steps; i++, st ^= 1) {
			if (i + 1 < steps) {
				load(st ^ 1, r, i + 1);
				cp_async_wait<1>();
			} else {
				cp_async_wait<0>();
			}
			__syncthreads();
			const int kb = cb + i * STEP;
			if (kb < wmax)
				warp_step<C>(c, (const bf16 *)smem, kt(st) + w * STEP * C::S,
					     vt(st) + w * STEP * C::S, kb, lim0, lim1, kb + STEP > wmin, a.sc);
			__syncthreads();
		}
		quad_sum(c);
		if (split) {   /* a chunk past the tile's keys is never read back: not written */
			if (cb < hi)
				paged_write<DP>(a, c, row_tok, 0, pt.kvh, r * ROUND + w);
			continue;
		}
		if (w > 0) {   /* thread-major: lane l's values at [v][l] of its warp's slot */
			float *slot = handed + (w - 1) * VALS * 32 + lane;
#pragma unroll
			for (int i = 0; i < DP / 8; i++)
#pragma unroll
				for (int q = 0; q < 4; q++)
					slot[(i * 4 + q) * 32] = c.o[i][q];
			slot[(DP / 2) * 32] = c.m[0];
			slot[(DP / 2 + 1) * 32] = c.m[1];
			slot[(DP / 2 + 2) * 32] = c.l[0];
			slot[(DP / 2 + 3) * 32] = c.l[1];
		}
		__syncthreads();
		if (w == 0) {   /* the round's chunks folded in order */
			fold_into(res, c);
			for (int x = 1; x < ROUND; x++) {
				const float *slot = handed + (x - 1) * VALS * 32 + lane;
#pragma unroll
				for (int i = 0; i < DP / 8; i++)
#pragma unroll
					for (int q = 0; q < 4; q++)
						c.o[i][q] = slot[(i * 4 + q) * 32];
				c.m[0] = slot[(DP / 2) * 32];
				c.m[1] = slot[(DP / 2 + 1) * 32];
				c.l[0] = slot[(DP / 2 + 2) * 32];
				c.l[1] = slot[(DP / 2 + 3) * 32];
				fold_into(res, c);
			}
		}
		__syncthreads();   /* the hand-over is read before the next round loads */
	}
	if (!split && w == 0)
		paged_write<DP>(a, res, row_tok, 0, pt.kvh, -1);
}

// -- split_reduce ------------------------------------------------------------------------------

/* out (T, Hq * D) from the chunks' states: a warp a (token, head), the states of the chunks
 * its row saw folded in chunk order (fold_of / fold_val: the kernels' arithmetic). */
static __global__ void __launch_bounds__(THREADS)
split_reduce(bf16 *out, const float *part_o, const float *part_m, const float *part_l,
	     const int32_t *kv_index, int T, int Hq, int D, int max_ctx)
{
	pdl_launch_next();
	pdl_wait_previous();
	const int64_t w = ((int64_t)blockIdx.x * THREADS + threadIdx.x) >> 5;
	const int64_t rows = (int64_t)T * Hq;
	const int lane = threadIdx.x & 31;
	if (w >= rows)
		return;
	const int lim = min(kv_index[w / Hq] + 1, max_ctx);
	const int nc = lim <= 0 ? 0 : (lim + CHUNK - 1) / CHUNK;
	for (int d0 = 0; d0 < D; d0 += 32) {
		const int d = d0 + lane;
		float m = -INFINITY, l = 0.0f, o = 0.0f;
		for (int c = 0; c < nc; c++) {
			const int64_t p = c * rows + w;
			const fold_scale f = fold_of(m, part_m[p]);
			l = fold_val(l, part_l[p], f);
			o = fold_val(o, d < D ? part_o[p * D + d] : 0.0f, f);
			m = f.m;
		}
		if (d < D)
			out[w * D + d] = __float2bfloat16_rn(finish(o, l));
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

/* Chunks of a step whose longest context is max_kv_len keys, and whether its partial states
 * fit the budget. */
static int64_t step_chunks(int max_kv_len)
{
	return max_kv_len <= 0 ? 0 : (max_kv_len + CHUNK - 1) / CHUNK;
}

extern "C" size_t qw_cuda_attention_ws_bytes(int max_tokens, int n_heads, int head_dim,
					     int max_kv_len)
{
	const int64_t chunks = step_chunks(max_kv_len);
	if (max_tokens < 1 || n_heads < 1 || head_dim < 1 || chunks < 2 ||
	    (int64_t)max_tokens * chunks > SPLIT_BUDGET)
		return 0;   /* such a step is never split */
	return (size_t)(chunks * max_tokens * n_heads * (int64_t)(head_dim + 2) * (int64_t)sizeof(float));
}

typedef void (*paged_fn)(paged_args);

/* A paged attention kernel and its launch shape. */
struct paged_kernel {
	paged_fn fn;
	int smem;   /* dynamic shared memory, bytes */
	int bm;     /* query rows a CTA */
	int per;    /* chunks a CTA of a split step takes */
};

template <int DP, int BN>
static paged_kernel prefill_of()
{
	return {paged_prefill<DP, BN>, tile_cfg<DP, 4, BN, 16>::SMEM, 64, 1};
}

template <int DP>
static paged_kernel decode_of()
{
	return {paged_decode<DP>, tile_cfg<DP, 1, DECODE_BN, 16>::SMEM, 16, ROUND};
}

/* DP: the head dim rounded up to 32, 64, 128 or 256; the prefill kernel's stages 64 keys
 * (32 at DP 256, to fit sm_80). */
static paged_kernel pick_paged(int D, bool decode)
{
	if (D <= 32)
		return decode ? decode_of<32>() : prefill_of<32, 64>();
	if (D <= 64)
		return decode ? decode_of<64>() : prefill_of<64, 64>();
	if (D <= 128)
		return decode ? decode_of<128>() : prefill_of<128, 64>();
	return decode ? decode_of<256>() : prefill_of<256, 32>();
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
	/* the kernel and the split change the speed only: every choice sums in one order */
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
	const int64_t ctas = (int64_t)T / tq + (tq > 1 ? b->n_seqs : 0);
	if (ctas > INT_MAX || n_kv_heads > 65535)
		return qw_fail(err, QW_E_ARG, "cuda attention: %lld tiles of %d KV heads is too many",
			       (long long)ctas, n_kv_heads);

	/* split when the step's CTAs would not fill the GPU and the partial states fit */
	const int64_t chunks = step_chunks(b->max_kv_len);
	const size_t need = qw_cuda_attention_ws_bytes(T, n_heads, head_dim, b->max_kv_len);
	const int64_t work = std::max<int64_t>((T + tq - 1) / tq, std::min(b->n_seqs, T)) * n_kv_heads;
	const bool split = need && ws && ws_bytes >= need && aligned(ws, 16) &&
			   work < (int64_t)sms * std::max(occ, 1);
	const int64_t z = split ? (chunks + kern.per - 1) / kern.per : 1;

	paged_args a;
	a.out = (bf16 *)out;
	a.part_o = split ? (float *)ws : nullptr;
	a.part_m = split ? a.part_o + chunks * T * n_heads * head_dim : nullptr;
	a.part_l = split ? a.part_m + chunks * T * n_heads : nullptr;
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
	a.max_ctx = b->max_blocks * b->block_size;
	a.sc = scale * LOG2E;
	const dim3 grid((unsigned)ctas, (unsigned)n_kv_heads, (unsigned)z);
	QW_CUDA_TRY(err, launch_pdl(kern.fn, grid, dim3(THREADS), (size_t)kern.smem, stream, a));
	if (split) {
		const int64_t warps = (int64_t)T * n_heads;
		const unsigned blocks = (unsigned)((warps * 32 + THREADS - 1) / THREADS);
		QW_CUDA_TRY(err, launch_pdl(split_reduce, dim3(blocks), dim3(THREADS), 0, stream, a.out,
					    (const float *)a.part_o, (const float *)a.part_m,
					    (const float *)a.part_l, a.kv_index, T, n_heads, head_dim,
					    a.max_ctx));
	}
	return QW_OK;
}
