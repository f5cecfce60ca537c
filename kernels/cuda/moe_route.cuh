/* moe_route.cuh - the MoE block's routing on the GPU as moe.cu (the plain path) and
 * moe_fused.cu (the fused decode kernel) both run it (CUDA C++ device code, private to
 * kernels/cuda/; moe.cu's header says what each step computes and why its bits are the CPU
 * reference's).
 *
 * Owns: the routing limits, moe_ws (the block's scratch as moe.cu carves it), the router
 * logits of one expert (router_block), the routing of one token (route_token), the counting
 * sort of the pairs into the tile list (scatter_pairs), and the routing of a small batch by
 * the one block that finished its logits last (route_small_tail).  Both paths call these, so
 * a token is routed to the same bits whichever path the backend picks.
 *
 * route_token is parallel over a warp: the softmax's exponentials over the lanes; the top-k
 * not as k rounds of a warp argmax but by rank: a threshold tau (the k-th largest of the 32
 * lanes' maxima: at least k probabilities are >= tau, so the top k all are) keeps a short
 * list of candidates (p >= tau, in expert order, through ballots), and each candidate's rank
 * (how many beat it: a higher probability, or an equal one and a lower id) is counted over
 * that list alone, so the k chosen (rank < k) know their selection order (their rank) and
 * their place in expert order (a ballot prefix over the list) at once: no sort; the k
 * weight divisions run one a lane.  What stays sequential is what the reference's bits
 * need: the softmax's sum, in expert order, and the weights' sum, in selection order (k
 * adds).  When the list would be long (many equal probabilities), every expert is a
 * candidate: the same ranks, counted over all E.
 */
#ifndef QW_KERNELS_CUDA_MOE_ROUTE_CUH
#define QW_KERNELS_CUDA_MOE_ROUTE_CUH

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/bf16x8.h"

#define MOE_MAX_E 1024       /* experts a layer may have */
#define MOE_MAX_K 32         /* experts a token may choose */
#define ROUTER_SLICES 8      /* router logits: warps of a block, each a slice of H */
#define ROUTER_TOKENS 8      /* router logits: tokens per block */
#define SCAN_THREADS 256     /* count_rank, scatter, route_small and the fused kernel */
#define SMALL_E 256          /* route_small: experts it takes (its softmax buffers) */
#define ROUTE_CANDIDATES 64  /* route_token: the longest candidate list it keeps */

typedef __nv_bfloat16 bf16;

static const unsigned FULL = 0xffffffffu;

// ---------------------------------------------------------------------------------------
// scratch

typedef struct moe_ws {
	float *logits;     /* (T, E) router logits */
	int *topk_id;      /* (T, k) chosen experts, ascending per token */
	float *topk_w;     /* (T, k) their weights */
	int *rank;         /* (T, k) a pair's position among its expert's pairs */
	int *counts;       /* (E,) pairs per expert */
	int *off;          /* (E + 1,) first sorted pair of each expert */
	int *n_tiles;      /* (1,) M-tiles of the GEMM shape in use */
	unsigned *ticket;  /* (1,) route_small: blocks done with their logits */
	int *tile_e;       /* (max_tiles,) each tile's expert */
	int *tile_m0;      /* (max_tiles,) its first row among the expert's pairs */
	int *pair_token;   /* (P,) pairs sorted by expert, then token: the token */
	int *pair_slot;    /* (P,) the same pairs: t * k + j */
	bf16 *act;         /* (P, I) SwiGLU outputs in sorted order */
	float *y;          /* (T * k, H) expert outputs by slot */
} moe_ws;

/* Tiles of BM rows needed at most for P pairs over E experts: each expert with pairs adds
 * at most one partial tile to floor(P / BM) full ones. */
static size_t max_tiles(size_t P, int E, int bm)
{
	return P / (size_t)bm + (P < (size_t)E ? P : (size_t)E);
}

// ---------------------------------------------------------------------------------------
// small device helpers

/* Exclusive prefix sum of v over a block of SCAN_THREADS threads; *total gets the sum.
 * Every thread of the block must call it. */
__device__ static int block_exclusive_scan(int v, int *total)
{
	__shared__ int warp_sum[SCAN_THREADS / 32];
	int lane = threadIdx.x % 32, warp = threadIdx.x / 32, incl = v;
#pragma unroll
	for (int o = 1; o < 32; o <<= 1) {
		int n = __shfl_up_sync(FULL, incl, o);
		if (lane >= o)
			incl += n;
	}
	if (lane == 31)
		warp_sum[warp] = incl;
	__syncthreads();
	int base = 0, sum = 0;
#pragma unroll
	for (int i = 0; i < SCAN_THREADS / 32; i++) {
		base += i < warp ? warp_sum[i] : 0;
		sum += warp_sum[i];
	}
	__syncthreads();   /* warp_sum may be reused by the next call */
	*total = sum;
	return base + incl - v;
}

// ---------------------------------------------------------------------------------------
// routing

/* The logits of expert e for tokens t0 .. t0 + nt - 1 (nt <= ROUTER_TOKENS), by a block of
 * ROUTER_SLICES warps.  H is cut into chunks of 8 elements and the chunks into ROUTER_SLICES
 * slices; warp s sums slice s: lane l the products of chunks l, l + 32, ... of the slice, in
 * order, in double, then a fixed butterfly; then the slices' sums are added in slice order
 * and rounded to fp32.  Both routing paths call this, so a token's logits are the same bits
 * whichever path the batch size picks.  A slice is at most a few chunks a lane (H 4096: 2),
 * so the dependent chain is short: the router weights are one layer's smallest read and
 * must not be its slowest. */
__device__ static void router_block(float *logits, const bf16 *x, const bf16 *router, int e,
				    int t0, int nt, int H, int E)
{
	__shared__ double slice_sum[ROUTER_SLICES][ROUTER_TOKENS];
	int warp = threadIdx.x / 32, lane = threadIdx.x % 32, chunks = H / 8;
	int c0 = warp * chunks / ROUTER_SLICES, c1 = (warp + 1) * chunks / ROUTER_SLICES;
	const uint4 *wrow = (const uint4 *)(router + (size_t)e * (size_t)H);
	double acc[ROUTER_TOKENS];
#pragma unroll
	for (int i = 0; i < ROUTER_TOKENS; i++)
		acc[i] = 0.0;
	for (int c = c0 + lane; c < c1; c += 32) {
		float wf[8], xf[8];
		bf16x8_to_f32(wrow[c], wf);
#pragma unroll
		for (int i = 0; i < ROUTER_TOKENS; i++) {
			if (i < nt) {
				bf16x8_to_f32(((const uint4 *)(x + (size_t)(t0 + i) * (size_t)H))[c], xf);
#pragma unroll
				for (int j = 0; j < 8; j++)
					acc[i] = fma((double)xf[j], (double)wf[j], acc[i]);
			}
		}
	}
#pragma unroll
	for (int i = 0; i < ROUTER_TOKENS; i++) {
#pragma unroll
		for (int o = 16; o > 0; o >>= 1)
			acc[i] += __shfl_xor_sync(FULL, acc[i], o);
		if (lane == 0)
			slice_sum[warp][i] = acc[i];
	}
	__syncthreads();
	if ((int)threadIdx.x < nt) {
		double sum = 0.0;
		for (int sl = 0; sl < ROUTER_SLICES; sl++)
			sum += slice_sum[sl][threadIdx.x];
		logits[(size_t)(t0 + threadIdx.x) * (size_t)E + e] = (float)sum;
	}
}

/* A warp's scratch for route_token, NE experts at most. */
template <int NE> struct route_scratch {
	double p[NE];                       /* the token's probabilities */
	double cand_p[ROUTE_CANDIDATES];    /* the candidates, in expert order */
	int cand_id[ROUTE_CANDIDATES];
	double sel_p[MOE_MAX_K];            /* the chosen, in selection order */
	int sel_id[MOE_MAX_K];
	int sel_pos[MOE_MAX_K];             /* ... and their places in expert order */
	double lane_max[32];
};

/* A warp routes token t: softmax of its logits row (read through L2: another block may have
 * written it), top-k, weights, in expert order, into topk_id / topk_w (the header says how).
 * The arithmetic of every value is the reference's: probabilities exp(l - max) in double (a
 * NaN counts as 0), their sum sequential in expert order, the k largest (lowest id on ties),
 * w = fp32(p / sum), and when renormalising fp32(w / (sum of the w in selection order)). */
template <int NE>
__device__ static void route_token(int *topk_id, float *topk_w, const float *logits, int t,
				   int E, int k, int renormalize, route_scratch<NE> &s)
{
	int lane = threadIdx.x % 32;
	unsigned below = (1u << lane) - 1u;   /* the lanes before this one */
	const float *l = logits + (size_t)t * (size_t)E;
	double mx = -INFINITY;
	for (int e = lane; e < E; e += 32) {
		s.p[e] = __ldcg(l + e);
		mx = fmax(mx, s.p[e]);    /* NaNs are skipped, as the reference's max does */
	}
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		mx = fmax(mx, __shfl_xor_sync(FULL, mx, o));
	double lmax = -1.0;   /* probabilities are >= 0: -1 marks a lane without experts */
	for (int e = lane; e < E; e += 32) {
		double v = exp(s.p[e] - mx);
		s.p[e] = isnan(v) ? 0.0 : v;   /* a NaN logit counts as probability 0 */
		lmax = fmax(lmax, s.p[e]);
	}
	s.lane_max[lane] = lmax;
	__syncwarp();
	double sum = 0.0;
	if (lane == 0) {
#pragma unroll 8
		for (int e = 0; e < E; e++)   /* sequential, in expert order, as the reference */
			sum += s.p[e];
	}
	/* tau: the k-th largest lane maximum (the lanes' maxima ranked, ties by lane) */
	int above = 0;
	for (int i = 0; i < 32; i++) {
		double o = s.lane_max[i];
		above += o > lmax || (o == lmax && i < lane);
	}
	unsigned at = __ballot_sync(FULL, above == k - 1);
	double tau = __shfl_sync(FULL, lmax, __ffs(at) - 1);
	/* the candidates, p >= tau, listed in expert order */
	int nc = 0;
	for (int e0 = 0; e0 < E; e0 += 32) {
		int e = e0 + lane;
		bool c = e < E && s.p[e] >= tau;
		unsigned b = __ballot_sync(FULL, c);
		int pos = nc + __popc(b & below);
		if (c && pos < ROUTE_CANDIDATES) {
			s.cand_id[pos] = e;
			s.cand_p[pos] = s.p[e];
		}
		nc += __popc(b);
	}
	__syncwarp();
	bool listed = nc <= ROUTE_CANDIDATES;   /* else every expert is a candidate */
	const double *cp = listed ? s.cand_p : s.p;
	int n = listed ? nc : E, chosen_before = 0;
	for (int j0 = 0; j0 < n; j0 += 32) {
		int j = j0 + lane, rank = k;
		if (j < n) {
			double pj = cp[j];
			rank = 0;
			for (int q = 0; q < n && rank < k; q++) {
				double pq = cp[q];   /* the list is in expert order: q < j is a lower id */
				rank += pq > pj || (pq == pj && q < j);
			}
		}
		bool chosen = rank < k;
		unsigned b = __ballot_sync(FULL, chosen);
		if (chosen) {
			s.sel_id[rank] = listed ? s.cand_id[j] : j;
			s.sel_p[rank] = cp[j];
			s.sel_pos[rank] = chosen_before + __popc(b & below);
		}
		chosen_before += __popc(b);
	}
	__syncwarp();
	sum = __shfl_sync(FULL, sum, 0);
	float w = lane < k ? (float)(s.sel_p[lane] / sum) : 0.0f;
	if (renormalize) {
		double wsum = 0.0;
		for (int i = 0; i < k; i++)   /* in selection order, as the reference */
			wsum += (double)__shfl_sync(FULL, w, i);
		w = (float)((double)w / wsum);
	}
	if (lane < k) {
		topk_id[(size_t)t * k + s.sel_pos[lane]] = s.sel_id[lane];
		topk_w[(size_t)t * k + s.sel_pos[lane]] = w;
	}
}

/* Offsets, the sorted pairs, and (when `tiles`) the tile list for tiles of bm rows, from the
 * counts and ranks: this block's share, pair `pair` of a thread.  Every thread of a block of
 * SCAN_THREADS calls it. */
__device__ static void scatter_pairs(const moe_ws &w, int T, int E, int k, int bm, int pair,
				     bool tiles)
{
	constexpr int PER = MOE_MAX_E / SCAN_THREADS;   /* experts per thread in the scans */
	__shared__ int off[MOE_MAX_E + 1];
	int e0 = (int)threadIdx.x * PER, c[PER], s = 0, total;
#pragma unroll
	for (int i = 0; i < PER; i++) {
		c[i] = e0 + i < E ? w.counts[e0 + i] : 0;
		s += c[i];
	}
	int base = block_exclusive_scan(s, &total);
#pragma unroll
	for (int i = 0; i < PER; i++)
		if (e0 + i < E) {
			off[e0 + i] = base;
			base += c[i];
		}
	if (threadIdx.x == 0)
		off[E] = total;
	__syncthreads();
	if (pair < T * k) {
		int pos = off[w.topk_id[pair]] + w.rank[pair];
		w.pair_token[pos] = pair / k;
		w.pair_slot[pos] = pair;
	}
	if (!tiles)
		return;
	for (int e = (int)threadIdx.x; e <= E; e += SCAN_THREADS)
		w.off[e] = off[e];
	int nt[PER];
	s = 0;
#pragma unroll
	for (int i = 0; i < PER; i++) {
		nt[i] = (c[i] + bm - 1) / bm;
		s += nt[i];
	}
	int tile = block_exclusive_scan(s, &total);
#pragma unroll
	for (int i = 0; i < PER; i++)
		for (int m = 0; m < nt[i]; m++, tile++) {
			w.tile_e[tile] = e0 + i;
			w.tile_m0[tile] = m * bm;
		}
	if (threadIdx.x == 0)
		*w.n_tiles = total;
}

/* The routing of a small batch (T <= ROUTER_TOKENS, E <= SMALL_E, T * k <= SCAN_THREADS)
 * once its logits are all in w.logits, by one block of SCAN_THREADS threads: the tokens
 * (route_token, a warp each), the P pairs' counts and ranks, and their scatter with the tile
 * list for tiles of bm rows (scatter_pairs). */
__device__ static void route_small_tail(const moe_ws &w, int T, int E, int k, int renormalize,
					int bm)
{
	__shared__ route_scratch<SMALL_E> scratch[SCAN_THREADS / 32];
	__shared__ int ids[SCAN_THREADS];
	int warp = threadIdx.x / 32, tid = threadIdx.x;
	if (warp < T)
		route_token(w.topk_id, w.topk_w, w.logits, warp, E, k, renormalize, scratch[warp]);
	__syncthreads();
	int P = T * k;
	if (tid < P)
		ids[tid] = w.topk_id[tid];
	__syncthreads();
	/* a pair's rank: the earlier tokens that chose its expert (a token's experts differ) */
	if (tid < P) {
		int mine = ids[tid], r = 0;
		for (int q = 0; q < tid / k * k; q++)
			r += ids[q] == mine;
		w.rank[tid] = r;
	}
	for (int expert = tid; expert < E; expert += SCAN_THREADS) {
		int n = 0;
		for (int q = 0; q < P; q++)
			n += ids[q] == expert;
		w.counts[expert] = n;
	}
	__syncthreads();
	scatter_pairs(w, T, E, k, bm, tid, true);
}

#endif
