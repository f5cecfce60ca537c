/* moe.cu - the MoE block of one layer on the GPU: routing, then the experts as grouped GEMMs
 * on the tensor cores.  See kernels.h (qw_cuda_moe) for the contract.
 *
 * Two paths, the same bits.  A small batch (decode: T <= 8, with a sync buffer; kernels.h's
 * qw_cuda_moe_path) runs all seven steps below in one persistent kernel (moe_fused.cu, whose
 * header says how and why), from the same device code: the routing in moe_route.cuh, the
 * GEMM tiles in moe_tile.cuh.  The plain path, for every other batch or when forced:
 * seven launches on the caller's stream, scratch carved from ws (moe_layout).  A batch of at
 * most ROUTER_TOKENS tokens has its routing, 1-4, in one launch (route_small: the
 * logits spread over blocks, the last block to finish routes and sorts, after a 4-byte
 * memset of its ticket):
 *  1. router_logits  logits (T, E) = x router^T.  A product of two bf16 values is exact in
 *     fp32; the products are summed in double and the sum rounded to fp32 once, as the CPU
 *     reference does.  The logits therefore equal the reference's bit for bit except when a
 *     double sum lies within double rounding of an fp32 rounding boundary (~1e-9 of them), so
 *     the top-k choice, a discrete one, cannot flip between the backends at near-ties.
 *     Cost: T*E*H fp64 FMAs, 0.26 ms for 8192 tokens of the 235B layer at the H100/H200's
 *     ~34 TFLOPS fp64 (~5% of that layer's expert GEMMs).
 *  2. route          per token (a warp): softmax in double, top-k by probability (lowest id
 *     on ties), weights rounded to fp32 and renormalised exactly as the reference does; the
 *     k choices in expert id order, so slot j of token t (pair t*k + j) holds its j-th
 *     expert in ascending order (moe_route.cuh: ranked in parallel, no sort).
 *  3. count_rank     per expert (a block): the pairs that chose it, in token order (a block
 *     scan of flags gives each pair its rank among its expert's pairs), and their count.
 *  4. scatter        offsets (exclusive scan of the counts), the pairs sorted by expert then
 *     token (pair_token, pair_slot), and the list of M-tiles of the GEMM shape in use.
 *     Counting sort without atomics: the order is fixed by the token indices alone.
 *  5. gate_up GEMM   act (P, I) = silu(x Wg) * (x Wu) for the P = T*k pairs in sorted order;
 *     the A tiles gather their rows from x by pair_token.  A warp's gate and up columns of
 *     one index land in the same thread's accumulators, so SwiGLU is fused into the epilogue.
 *     act is stored in bf16, as HF's bf16 model keeps it (the CPU reference keeps fp32: the
 *     main difference the tests allow for).
 *  6. down GEMM      y (T*k, H) fp32, row pair_slot[p] = act[p] Wd[e].
 *  7. combine        out[t] = bf16(sum over j of w[t][j] * y[t*k + j]), j ascending, that is
 *     in ascending expert order, with separately rounded fp32 products and sums (the CPU
 *     reference's order and arithmetic).
 *
 * The two GEMMs are one grouped GEMM on the tensor cores (moe_gemm.cu: mma.sync fed by a
 * cp.async pipeline, in one of three tile shapes the batch picks: S for decode, M, L for
 * prefill), each over bf16 experts or FP8 ones (W8A16: the e4m3 bytes stream through the
 * pipeline, half the bytes of bf16, and each k-tile is dequantised in shared memory to the
 * bf16 weights bf16_rn(e4m3 * s) the FP8 contract defines before the MMAs read it, so the
 * output has the bits of the bf16 GEMM on the dequantised experts).  gate_up and down may
 * differ (one FP8, the other bf16).
 *
 * Determinism and batch invariance.  Every step has a fixed reduction order: the router sums
 * a token's products in a fixed lane/element order and a fixed butterfly; the softmax sum is
 * sequential over experts; the sort has no atomics; every output element of both GEMMs, in
 * every tile shape, is one chain of m16n8k16 MMAs over k = 0, 16, 32, ... into one fp32
 * accumulator starting at zero (no split-K; K is a multiple of 16 and steps past K are
 * skipped, not run on zeros), and an MMA's element (m, n) depends only on row m of A, column
 * n of B and its accumulator, so padding rows and the other tokens of a tile never reach it;
 * SwiGLU and the combine use explicitly rounded operations (__fadd_rn etc., never contracted
 * into FMAs differently per instantiation).  So a token's output bits depend on its own row
 * and the weights only: not on T, on which tokens share its experts, or on the tile shape
 * the batch size picks.
 *
 * The FP8 GEMMs dequantise to those bits, so all of this holds for FP8 experts too, and a
 * layer's FP8 output equals its bf16 output on the dequantised experts bit for bit.
 *
 * Limits (QW_E_ARG otherwise): H and I multiples of 16; E <= 1024; 1 <= top_k <= min(E, 32);
 * x, router, gate_up, down, out and ws 16-byte aligned; FP8 blocks of any number of rows
 * and a multiple of 16 columns, scales 4-byte aligned; sync 4-byte aligned; path one of
 * AUTO, PLAIN and FUSED (FUSED where the fused kernel does not apply: QW_E_ARG, the reason).
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/moe_fused.h"
#include "kernels/cuda/moe_gemm.h"
#include "kernels/cuda/moe_route.cuh"

#define ROUTE_WARPS 4        /* route: tokens per block (a warp each) */
#define COMBINE_COLS 512     /* combine: columns of a block (4 a thread) */

/* Carves ws (base may be NULL to only measure); returns the bytes used. */
static size_t moe_layout(int T, int H, int E, int k, int I, char *base, moe_ws *w)
{
	size_t at = 0, P = (size_t)T * (size_t)k, tiles = max_tiles(P, E, 16);
#define TAKE(field, type, n)                                                                 \
	do {                                                                                 \
		w->field = base ? (type *)(base + at) : NULL;                               \
		at += ((n) * sizeof(type) + 255) & ~(size_t)255;                             \
	} while (0)
	TAKE(logits, float, (size_t)T * (size_t)E);
	TAKE(topk_id, int, P);
	TAKE(topk_w, float, P);
	TAKE(rank, int, P);
	TAKE(counts, int, (size_t)E);
	TAKE(off, int, (size_t)E + 1);
	TAKE(n_tiles, int, 1);
	TAKE(ticket, unsigned, 1);
	TAKE(tile_e, int, tiles);
	TAKE(tile_m0, int, tiles);
	TAKE(pair_token, int, P);
	TAKE(pair_slot, int, P);
	TAKE(act, bf16, P * (size_t)I);
	TAKE(y, float, P * (size_t)H);
#undef TAKE
	return at;
}

// ---------------------------------------------------------------------------------------
// routing

/* logits (T, E): a block per (expert, up to ROUTER_TOKENS tokens). */
static __global__ void __launch_bounds__(ROUTER_SLICES * 32)
router_logits_kernel(float *logits, const bf16 *x, const bf16 *router, int T, int H, int E)
{
	pdl_launch_next();
	pdl_wait_previous();
	int t0 = blockIdx.y * ROUTER_TOKENS;
	router_block(logits, x, router, blockIdx.x, t0, min(ROUTER_TOKENS, T - t0), H, E);
}

/* A warp per token: softmax, top-k, weights, in expert order. */
static __global__ void __launch_bounds__(ROUTE_WARPS * 32)
route_kernel(int *topk_id, float *topk_w, const float *logits, int T, int E, int k,
	     int renormalize)
{
	pdl_launch_next();
	pdl_wait_previous();
	__shared__ route_scratch<MOE_MAX_E> scratch[ROUTE_WARPS];
	int warp = threadIdx.x / 32, t = blockIdx.x * ROUTE_WARPS + warp;
	if (t < T)
		route_token(topk_id, topk_w, logits, t, E, k, renormalize, scratch[warp]);
}

/* A block per expert: ranks of its pairs in token order, and its count. */
static __global__ void __launch_bounds__(SCAN_THREADS)
count_rank_kernel(int *rank, int *counts, const int *topk_id, int T, int k)
{
	pdl_launch_next();
	pdl_wait_previous();
	int e = blockIdx.x, running = 0;
	for (int t0 = 0; t0 < T; t0 += SCAN_THREADS) {
		int t = t0 + (int)threadIdx.x, slot = -1;
		if (t < T)
			for (int j = 0; j < k; j++)
				if (topk_id[t * k + j] == e)
					slot = t * k + j;
		int total, before = block_exclusive_scan(slot >= 0, &total);
		if (slot >= 0)
			rank[slot] = running + before;
		running += total;
	}
	if (threadIdx.x == 0)
		counts[e] = running;
}

/* Offsets, the sorted pairs, and (block 0) the tile list for tiles of bm rows. */
static __global__ void __launch_bounds__(SCAN_THREADS)
scatter_kernel(moe_ws w, int T, int E, int k, int bm)
{
	pdl_launch_next();
	pdl_wait_previous();
	scatter_pairs(w, T, E, k, bm, (int)(blockIdx.x * SCAN_THREADS + threadIdx.x),
		      blockIdx.x == 0);
}

/* Routing of a small batch (T <= ROUTER_TOKENS, E <= SMALL_E) in one launch: the router
 * logits by a block per expert (router_block, as the large path), and
 * the last block to finish (a ticket counter, zeroed before the launch) routes the tokens
 * (route_token), counts and ranks the P <= SCAN_THREADS pairs and scatters them with the tile
 * list (scatter_pairs).  The same arithmetic as the four launches of the large path, so the
 * same bits; what it saves is three launches and their latency. */
static __global__ void __launch_bounds__(SCAN_THREADS)
route_small_kernel(moe_ws w, const bf16 *x, const bf16 *router, int T, int H, int E, int k,
		   int renormalize, int bm)
{
	pdl_launch_next();
	pdl_wait_previous();
	static_assert(ROUTER_SLICES == SCAN_THREADS / 32, "router_block takes the whole block");
	__shared__ bool last;
	router_block(w.logits, x, router, blockIdx.x, 0, T, H, E);
	__threadfence();   /* this block's logits are visible to the GPU before its ticket */
	__syncthreads();
	if (threadIdx.x == 0)
		last = atomicAdd(w.ticket, 1u) == gridDim.x - 1;
	__syncthreads();
	if (!last)
		return;
	__threadfence();
	route_small_tail(w, T, E, k, renormalize, bm);
}

// ---------------------------------------------------------------------------------------
// combine

/* A block per (token, COMBINE_COLS columns): the k weighted expert outputs summed in slot
 * (= expert id) order. */
static __global__ void __launch_bounds__(COMBINE_COLS / 4)
combine_kernel(bf16 *out, const float *y, const float *topk_w, int H, int k)
{
	pdl_launch_next();
	pdl_wait_previous();
	int t = blockIdx.x;
	const float *wt = topk_w + (size_t)t * k;
	int c = blockIdx.y * COMBINE_COLS + threadIdx.x * 4;
	if (c < H) {
		float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
		for (int j = 0; j < k; j++) {
			float wj = wt[j];
			float4 v = *(const float4 *)(y + ((size_t)t * k + j) * (size_t)H + c);
			s0 = __fadd_rn(s0, __fmul_rn(wj, v.x));
			s1 = __fadd_rn(s1, __fmul_rn(wj, v.y));
			s2 = __fadd_rn(s2, __fmul_rn(wj, v.z));
			s3 = __fadd_rn(s3, __fmul_rn(wj, v.w));
		}
		__nv_bfloat162 lo = __floats2bfloat162_rn(s0, s1), hi = __floats2bfloat162_rn(s2, s3);
		uint2 packed;
		packed.x = *(const uint32_t *)&lo;
		packed.y = *(const uint32_t *)&hi;
		*(uint2 *)(out + (size_t)t * (size_t)H + c) = packed;
	}
}

// ---------------------------------------------------------------------------------------
// launchers

/* The gate_up (or down) GEMM of a over the scratch w, as both paths run it. */
static moe_gemm_args gemm_args(const qw_cuda_moe_args *a, const moe_ws *w, bool gate_up)
{
	moe_gemm_args g = {};
	g.off = w->off;
	g.n_tiles = w->n_tiles;
	g.tile_e = w->tile_e;
	g.tile_m0 = w->tile_m0;
	g.pair_slot = w->pair_slot;
	g.act = w->act;
	g.y = w->y;
	const qw_cuda_moe_scales *s = gate_up ? &a->gate_up_scales : &a->down_scales;
	g.scale = s->s;
	g.scale_rows = s->rows;
	g.scale_cols = s->cols;
	if (gate_up) {
		g.a = (const bf16 *)a->x;
		g.a_row = w->pair_token;
		g.w = a->gate_up;
		g.K = a->H;
		g.N = a->I;
		g.ldw = 2 * a->I;
	} else {
		g.a = w->act;
		g.a_row = NULL;
		g.w = a->down;
		g.K = a->I;
		g.N = a->H;
		g.ldw = a->H;
	}
	return g;
}

/* Routing, then both GEMMs in tile shape t, then the combine.  A small batch is routed in
 * one launch (route_small); a larger one by the router, route, count_rank and scatter
 * kernels. */
static qw_status run_moe(const qw_cuda_moe_args *a, const moe_ws *w, moe_tile t,
			 cudaStream_t stream, qw_err *err)
{
	int T = a->T, E = a->E, k = a->top_k, P = T * k, bm = moe_tile_rows(t);
	if (T <= ROUTER_TOKENS && E <= SMALL_E && P <= SCAN_THREADS) {
		QW_CUDA_TRY(err, cudaMemsetAsync(w->ticket, 0, sizeof *w->ticket, stream));
		QW_CUDA_TRY(err, launch_pdl(route_small_kernel, dim3(E), dim3(SCAN_THREADS), 0, stream,
					    *w, (const bf16 *)a->x, (const bf16 *)a->router, T, a->H, E,
					    k, (int)a->renormalize, bm));
	} else {
		dim3 rgrid((unsigned)E, (unsigned)((T + ROUTER_TOKENS - 1) / ROUTER_TOKENS));
		QW_CUDA_TRY(err, launch_pdl(router_logits_kernel, rgrid, dim3(ROUTER_SLICES * 32), 0,
					    stream, w->logits, (const bf16 *)a->x,
					    (const bf16 *)a->router, T, a->H, E));
		QW_CUDA_TRY(err, launch_pdl(route_kernel, dim3((T + ROUTE_WARPS - 1) / ROUTE_WARPS),
					    dim3(ROUTE_WARPS * 32), 0, stream, w->topk_id, w->topk_w,
					    (const float *)w->logits, T, E, k, (int)a->renormalize));
		QW_CUDA_TRY(err, launch_pdl(count_rank_kernel, dim3(E), dim3(SCAN_THREADS), 0, stream,
					    w->rank, w->counts, (const int *)w->topk_id, T, k));
		QW_CUDA_TRY(err, launch_pdl(scatter_kernel, dim3((P + SCAN_THREADS - 1) / SCAN_THREADS),
					    dim3(SCAN_THREADS), 0, stream, *w, T, E, k, bm));
	}
	int tiles = (int)max_tiles((size_t)P, a->E, bm);
	moe_gemm_args g = gemm_args(a, w, true);
	QW_TRY(moe_gemm(&g, t, true, tiles, stream, err));
	g = gemm_args(a, w, false);
	QW_TRY(moe_gemm(&g, t, false, tiles, stream, err));

	dim3 cgrid((unsigned)T, (unsigned)((a->H + COMBINE_COLS - 1) / COMBINE_COLS));
	QW_CUDA_TRY(err, launch_pdl(combine_kernel, cgrid, dim3(COMBINE_COLS / 4), 0, stream,
				    (bf16 *)a->out, (const float *)w->y, (const float *)w->topk_w,
				    a->H, k));
	return QW_OK;
}

extern "C" qw_status qw_cuda_moe_path_parse(const char *name, qw_cuda_moe_path *path,
					   qw_err *err)
{
	/* plain unless asked: the fused kernel becomes the default once the GPU suite has held
	 * it on a Hopper card (test_cuda_moe_fused), not before */
	if (!name || !strcmp(name, "plain"))
		*path = QW_CUDA_MOE_PLAIN;
	else if (!strcmp(name, "auto"))
		*path = QW_CUDA_MOE_AUTO;
	else if (!strcmp(name, "fused"))
		*path = QW_CUDA_MOE_FUSED;
	else
		return qw_fail(err, QW_E_ARG, "QW_CUDA_MOE is '%s'; HINT: it takes plain (the default: "
			       "separate kernels), auto (the fused kernel for small batches) or fused "
			       "(every MoE layer, refusing larger batches)", name);
	return QW_OK;
}

extern "C" size_t qw_cuda_moe_ws_bytes(int max_tokens, int H, int E, int top_k, int I)
{
	moe_ws w;
	if (max_tokens < 0 || H < 0 || E < 0 || top_k < 0 || I < 0)
		return 0;
	return moe_layout(max_tokens, H, E, top_k, I, NULL, &w);
}

static bool misaligned(const void *p)
{
	return ((uintptr_t)p & 15) != 0;
}

/* An FP8 matrix's block scales (what names them in errors): rows >= 1, columns a multiple
 * of 16 (a dequantised piece of 16-byte-aligned columns lies in one block), 4-byte aligned. */
static qw_status check_scales(const qw_cuda_moe_scales *s, const char *what, qw_err *err)
{
	if (!s->s)
		return QW_OK;
	if (s->rows < 1 || s->cols < 16 || s->cols % 16 || ((uintptr_t)s->s & 3))
		return qw_fail(err, QW_E_ARG, "cuda moe: %s's FP8 blocks of %d x %d weights: rows >= 1, "
			       "columns a multiple of 16 and 4-byte aligned scales are taken", what,
			       s->rows, s->cols);
	return QW_OK;
}

extern "C" qw_status qw_cuda_moe(const qw_cuda_moe_args *a, void *ws, size_t ws_bytes,
				 cudaStream_t stream, qw_err *err)
{
	if (!a)
		return qw_fail(err, QW_E_ARG, "cuda moe: no arguments");
	if (a->T < 0 || a->H <= 0 || a->H % 16 || a->I <= 0 || a->I % 16)
		return qw_fail(err, QW_E_ARG, "cuda moe: T %d, H %d, I %d: H and I must be positive "
			       "multiples of 16", a->T, a->H, a->I);
	if (a->E < 1 || a->E > MOE_MAX_E || a->top_k < 1 || a->top_k > a->E ||
	    a->top_k > MOE_MAX_K)
		return qw_fail(err, QW_E_ARG, "cuda moe: %d experts, top-%d: at most %d experts and "
			       "1 <= top_k <= min(E, %d)", a->E, a->top_k, MOE_MAX_E, MOE_MAX_K);
	if (a->path != QW_CUDA_MOE_AUTO && a->path != QW_CUDA_MOE_PLAIN &&
	    a->path != QW_CUDA_MOE_FUSED)
		return qw_fail(err, QW_E_ARG, "cuda moe: path %d is none of AUTO, PLAIN and FUSED",
			       (int)a->path);
	if ((uintptr_t)a->sync & 3)
		return qw_fail(err, QW_E_ARG, "cuda moe: the sync buffer must be 4-byte aligned");
	QW_TRY(check_scales(&a->gate_up_scales, "gate_up", err));
	QW_TRY(check_scales(&a->down_scales, "down", err));
	if (a->T == 0)
		return QW_OK;
	if (!a->x || !a->router || !a->gate_up || !a->down || !a->out || !ws)
		return qw_fail(err, QW_E_ARG, "cuda moe: a NULL tensor or scratch pointer");
	if (misaligned(a->x) || misaligned(a->router) || misaligned(a->gate_up) ||
	    misaligned(a->down) || misaligned(a->out) || misaligned(ws))
		return qw_fail(err, QW_E_ARG, "cuda moe: tensors and scratch must be 16-byte aligned");
	if (a->T > 65535 * ROUTER_TOKENS || (long long)a->T * a->top_k > (1 << 30) ||
	    max_tiles((size_t)a->T * (size_t)a->top_k, a->E, MOE_TILE_MAX_ROWS) > 65535)
		return qw_fail(err, QW_E_ARG, "cuda moe: %d tokens is too many for one call", a->T);
	moe_ws w;
	size_t need = moe_layout(a->T, a->H, a->E, a->top_k, a->I, (char *)ws, &w);
	if (need > ws_bytes)
		return qw_fail(err, QW_E_ARG, "cuda moe: %zu bytes of scratch, %d tokens need %zu "
			       "(qw_cuda_moe_ws_bytes)", ws_bytes, a->T, need);
	int blocks = 0;
	const char *why = a->path == QW_CUDA_MOE_PLAIN ? "" : moe_fused_refusal(a, &blocks);
	if (a->path == QW_CUDA_MOE_FUSED && why)
		return qw_fail(err, QW_E_ARG, "cuda moe: the fused path does not apply to %d tokens "
			       "of %d experts, top-%d: %s; HINT: QW_CUDA_MOE_AUTO runs the plain path "
			       "there", a->T, a->E, a->top_k, why);
	if (!why) {
		moe_gemm_args gu = gemm_args(a, &w, true), dn = gemm_args(a, &w, false);
		moe_fused_args f = {a, &w, &gu, &dn};
		return moe_fused(&f, blocks, stream, err);
	}
	int P = a->T * a->top_k;
	/* the tile shape by the average pairs per expert (moe_gemm.cu's header) */
	moe_tile t = P <= 8 * a->E ? MOE_TILE_S : P <= 64 * a->E ? MOE_TILE_M : MOE_TILE_L;
	return run_moe(a, &w, t, stream, err);
}
