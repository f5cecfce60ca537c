/* moe_fused.cu - the MoE block of a small batch (decode: T <= 8) as one persistent kernel:
 * routing, both expert GEMMs and the combine, with their dependencies tracked by counters in
 * global memory instead of kernel boundaries.  See moe_fused.h; moe.cu's header has the
 * arithmetic of every step, which this kernel does not change.
 *
 * Why.  At one token the plain path is four kernels (route_small, gate_up, down, combine),
 * each a few microseconds of ramp (blocks launched, pipelines filled) and tail (the last
 * blocks alone, the next kernel's weights not yet requested): the 30B-A3B layer's block took
 * ~53 us against 17.7 us of bytes (docs/performance.md, "One MoE layer"), the routing alone
 * 14.5.  Here one launch does all of it: a block that has finished its piece takes the next
 * at once, the down GEMM's weights stream while the gate_up GEMM still runs, and the combine
 * of a column block runs the moment its last expert output lands.
 *
 * Design.  Blocks of SCAN_THREADS (256) threads, as many as the GPU holds at once (one an SM:
 * ~190 KB of shared memory), each looping: take the next work item from a ticket counter
 * (atomicAdd), do it, repeat until the items run out.  The items, in ticket order:
 *   [0, E)              the router logits of expert e for the T tokens (router_block); the
 *                       block that finishes the last of them (a second counter) routes the
 *                       batch (route_small_tail: top-k, counts, the tile list) and raises
 *                       `routed`;
 *   then n x nb_gu      gate_up tiles, tile-major, n the tile list's length (known once
 *                       routed: a block past the E router items waits for `routed` before
 *                       it knows what its ticket is): each writes its act columns and
 *                       raises act[tile];
 *   then n x nb_dn      down tiles, tile-major: each requests its expert's first
 *                       k-tiles of weights, then waits for act[tile] == nb_gu (all of that
 *                       tile's act) before loading act; it writes y and raises col[nb]; the
 *                       block that brings col[nb] to the list's length combines output
 *                       columns [nb * 128, ...) of every token.
 * Deadlock-free without co-residency: an item waits only on items with lower tickets, which
 * running blocks took and finish without waiting on anything later; so neither a
 * cooperative launch nor a grid that fits the GPU is needed for correctness (the grid fits
 * for speed).  A block whose ticket is past the last item leaves (so would every later
 * ticket); a block that starts late finds no item and leaves.  Each wait is bounded in time
 * all the same (wait_count, moe_tile.cuh: the kernel traps after seconds), so a bug here, or
 * counters a failed run left dirty, is a launch error at the caller's next synchronisation
 * instead of a stream that never drains.
 * Self-resetting counters: the block that leaves last (an exit counter) zeroes them all, so
 * the next launch (stream-ordered) finds them zero and a CUDA graph replays the kernel with
 * no memset.  They live in the caller's sync buffer (QW_CUDA_MOE_SYNC_BYTES, kernels.h), not
 * in the scratch, which the tests poison.
 * Memory ordering: a producer's threads write, __threadfence, the block syncs and thread 0
 * adds to the counter; a consumer's thread 0 polls it with ld.acquire, fences, and the block
 * syncs before it reads, through L2 (__ldcg, cp.async.cg: L1 is not coherent across blocks).
 *
 * The same bits as the plain path: the routing is the same device code (moe_route.cuh); both
 * GEMMs are the same tile function (moe_tile.cuh) in a 256-thread shape (16 x 128 columns,
 * BK 128, 8 warps, where the plain decode tile has 4 warps over BK 64): every output element
 * is still one chain of m16n8k16 MMAs over k = 0, 16, ... into one fp32 accumulator, and the
 * FP8 tiles dequantise to the same bf16 weights; SwiGLU and the combine's arithmetic are the
 * same (explicitly rounded, j ascending).  So batch invariance and determinism carry over,
 * and test_cuda_moe_fused holds the fused output to the plain path's bits.
 *
 * Limits: those of route_small (T <= ROUTER_TOKENS, E <= SMALL_E, T * k <= SCAN_THREADS),
 * the counters' room (FUSED_MAX_TILES tiles, FUSED_MAX_COLS column blocks of down), and a
 * device with the shared memory (Hopper: yes; an A100's 163 KB: no, the plain path runs).
 */
#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/moe_fused.h"
#include "kernels/cuda/moe_tile.cuh"

/* the fused tiles' depth, bf16 and FP8; a build may override them to compare variants */
#ifndef QW_MOE_F_STAGES
#define QW_MOE_F_STAGES 4
#endif
#ifndef QW_MOE_F8_STAGES
#define QW_MOE_F8_STAGES 6
#endif
typedef tile_cfg<16, 128, 128, 16, 16, QW_MOE_F_STAGES> cfg_f;
typedef tile_cfg<16, 128, 128, 16, 16, QW_MOE_F8_STAGES> cfg_f8;
static_assert(cfg_f::THREADS == SCAN_THREADS && cfg_f8::THREADS == SCAN_THREADS,
	      "the routing and the tiles take the same block");
static_assert(cfg_f::BM == cfg_f8::BM && cfg_f::BN == cfg_f8::BN, "one tile list, one grid");
static_assert(fp8_tile<cfg_f8>::ok, "FP8 tile");
static_assert(cfg_f::BM == 16, "moe.cu's moe_layout sizes the tile list for 16-row tiles");

/* the counters: words of the sync buffer */
enum {
	SYNC_NEXT,     /* the next work item's ticket */
	SYNC_LOGITS,   /* router items done */
	SYNC_ROUTED,   /* 1 once the batch is routed */
	SYNC_EXIT,     /* blocks that have left */
	SYNC_ACT = 8,  /* [tile]: gate_up items of the tile done */
};
#define SYNC_WORDS (QW_CUDA_MOE_SYNC_BYTES / 4)
#define FUSED_MAX_TILES 504
#define SYNC_COL (SYNC_ACT + FUSED_MAX_TILES)   /* [nb]: down tiles of column block nb done */
#define FUSED_MAX_COLS (SYNC_WORDS - SYNC_COL)

typedef struct fused_params {
	moe_ws w;
	gemm_params gu, dn;
	const bf16 *x, *router;
	bf16 *out;
	unsigned *sync;
	int T, H, E, k, renormalize;
	int tiles;          /* the tile list's bound (its length is known once routed) */
	int nb_gu, nb_dn;   /* output column blocks of each GEMM */
	int items;          /* a bound on the work items: E + tiles x (nb_gu + nb_dn) */
} fused_params;

/* The block's writes before it are visible to whoever sees the counter c raised; returns
 * (to every thread) whether this raised it to `last`. */
__device__ static bool arrive(unsigned *c, unsigned last, bool *flag)
{
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0) {
		*flag = atomicAdd(c, 1u) + 1u == last;
		if (*flag)
			__threadfence();   /* ... and the others' writes visible to this block */
	}
	__syncthreads();
	return *flag;
}

/* Router item e; the block that finishes the last routes the batch. */
__device__ static void router_item(const fused_params &f, int e, bool *flag)
{
	router_block(f.w.logits, f.x, f.router, e, 0, f.T, f.H, f.E);
	if (!arrive(f.sync + SYNC_LOGITS, (unsigned)f.E, flag))
		return;
	route_small_tail(f.w, f.T, f.E, f.k, f.renormalize, cfg_f::BM);
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0)
		atomicExch(f.sync + SYNC_ROUTED, 1u);
}

/* Output columns [nb * BN, ...) of every token: the k weighted expert outputs summed in
 * slot (= expert id) order, as combine_kernel (moe.cu) does. */
__device__ static void combine_cols(const fused_params &f, int nb)
{
	constexpr int BN = cfg_f::BN;
	int c0 = nb * BN;
	for (int i = threadIdx.x; i < f.T * BN; i += SCAN_THREADS) {
		int t = i / BN, c = c0 + i % BN;
		if (c >= f.H)
			continue;
		float s = 0.0f;
		for (int j = 0; j < f.k; j++) {
			float wj = __ldcg(f.w.topk_w + (size_t)t * f.k + j);
			float v = __ldcg(f.w.y + ((size_t)t * f.k + j) * (size_t)f.H + c);
			s = __fadd_rn(s, __fmul_rn(wj, v));
		}
		f.out[(size_t)t * (size_t)f.H + c] = __float2bfloat16_rn(s);
	}
}

template <class CG, class CD, bool W8G, bool W8D>
static __global__ void __launch_bounds__(SCAN_THREADS, 1) moe_fused_kernel(fused_params f)
{
	pdl_launch_next();
	pdl_wait_previous();   /* x, and the counters the previous launch reset */
	extern __shared__ __align__(16) unsigned char smem[];
	__shared__ int item_s;
	__shared__ bool flag_s;
	unsigned *sync = f.sync;
	for (;;) {
		__syncthreads();   /* the last item is done with shared memory and item_s */
		if (threadIdx.x == 0)
			item_s = (int)atomicAdd(sync + SYNC_NEXT, 1u);
		__syncthreads();
		int item = item_s;
		if (item >= f.items)
			break;
		if (item < f.E) {
			router_item(f, item, &flag_s);
			continue;
		}
		/* the GEMM items are numbered by the list's real length, known once routed */
		item -= f.E;
		wait_count(sync + SYNC_ROUTED, 1u);
		int n_tiles = ld_idx(f.w.n_tiles), gu_items = n_tiles * f.nb_gu;
		if (item < gu_items) {
			int tile = item / f.nb_gu;
			expert_tile<CG, true, W8G>(f.gu, tile, item % f.nb_gu, smem, nullptr, 0);
			arrive(sync + SYNC_ACT + tile, 0u, &flag_s);
			continue;
		}
		item -= gu_items;
		if (item >= n_tiles * f.nb_dn)
			break;   /* past the last item: so is every later ticket */
		int tile = item / f.nb_dn, nb = item % f.nb_dn;
		expert_tile<CD, false, W8D>(f.dn, tile, nb, smem, sync + SYNC_ACT + tile,
					    (unsigned)f.nb_gu);
		if (arrive(sync + SYNC_COL + nb, (unsigned)n_tiles, &flag_s))
			combine_cols(f, nb);
	}
	/* the last block to leave zeroes the counters for the next launch.  Thread 0 made all of
	 * this block's counter accesses; the fences order its last ticket (a relaxed atomic, to
	 * another word) before its exit count, and the last block's zeroing after every exit
	 * count, so no block's late ticket can land on a zeroed counter. */
	if (threadIdx.x == 0) {
		__threadfence();
		flag_s = atomicAdd(sync + SYNC_EXIT, 1u) == gridDim.x - 1;
		if (flag_s)
			__threadfence();
	}
	__syncthreads();
	if (flag_s)
		for (int i = threadIdx.x; i < SYNC_WORDS; i += SCAN_THREADS)
			sync[i] = 0u;
}

// ---------------------------------------------------------------------------------------
// launch

typedef void (*fused_kernel)(fused_params);

/* The kernel for these weights and its dynamic shared memory (the larger GEMM's tile). */
static fused_kernel kernel_for(bool w8g, bool w8d, int *smem)
{
	constexpr int S16 = cfg_f::SMEM, S8 = cfg_f8::SMEM8;
	*smem = w8g || w8d ? (S8 > S16 ? S8 : S16) : S16;
	if (w8g)
		return w8d ? moe_fused_kernel<cfg_f8, cfg_f8, true, true>
			   : moe_fused_kernel<cfg_f8, cfg_f, true, false>;
	return w8d ? moe_fused_kernel<cfg_f, cfg_f8, false, true>
		   : moe_fused_kernel<cfg_f, cfg_f, false, false>;
}

static int ceil_div(int a, int b)
{
	return (a + b - 1) / b;
}

/* The work items of a's shape: E router items, then the tiles of both GEMMs. */
static void shape_of(const qw_cuda_moe_args *a, int *tiles, int *nb_gu, int *nb_dn)
{
	*tiles = (int)max_tiles((size_t)a->T * (size_t)a->top_k, a->E, cfg_f::BM);
	*nb_gu = ceil_div(a->I, cfg_f::BN / 2);
	*nb_dn = ceil_div(a->H, cfg_f::BN);
}

const char *moe_fused_refusal(const qw_cuda_moe_args *a, int *blocks)
{
	int tiles, nb_gu, nb_dn;
	*blocks = 0;
	if (!a->sync)
		return "no sync buffer was given (qw_cuda_moe_args.sync)";
	if (a->T > ROUTER_TOKENS || a->E > SMALL_E || a->T * a->top_k > SCAN_THREADS)
		return "it takes at most 8 tokens, 256 experts and 256 (token, expert) pairs";
	shape_of(a, &tiles, &nb_gu, &nb_dn);
	if (tiles > FUSED_MAX_TILES || nb_dn > FUSED_MAX_COLS)
		return "the layer is wider than its counters hold";
	int smem, per_sm = 0, sms = 0, device = 0;
	fused_kernel k = kernel_for(a->gate_up_scales.s != NULL, a->down_scales.s != NULL, &smem);
	if (cudaGetDevice(&device) != cudaSuccess ||
	    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
	    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
		    cudaSuccess ||
	    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, SCAN_THREADS, smem) !=
		    cudaSuccess ||
	    per_sm < 1) {
		cudaGetLastError();
		return "this GPU does not hold its block (about 190 KB of shared memory)";
	}
	int items = a->E + tiles * (nb_gu + nb_dn);
	*blocks = sms * per_sm < items ? sms * per_sm : items;
	return NULL;
}

qw_status moe_fused(const moe_fused_args *f, int blocks, cudaStream_t stream, qw_err *err)
{
	const qw_cuda_moe_args *a = f->a;
	fused_params p = {};
	p.w = *f->w;
	p.gu = gemm_params_of(f->gate_up);
	p.dn = gemm_params_of(f->down);
	p.x = (const bf16 *)a->x;
	p.router = (const bf16 *)a->router;
	p.out = (bf16 *)a->out;
	p.sync = a->sync;
	p.T = a->T;
	p.H = a->H;
	p.E = a->E;
	p.k = a->top_k;
	p.renormalize = a->renormalize;
	shape_of(a, &p.tiles, &p.nb_gu, &p.nb_dn);
	p.items = a->E + p.tiles * (p.nb_gu + p.nb_dn);
	int smem;
	fused_kernel k = kernel_for(a->gate_up_scales.s != NULL, a->down_scales.s != NULL, &smem);
	QW_CUDA_TRY(err, cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
	QW_CUDA_TRY(err, launch_pdl(k, dim3((unsigned)blocks), dim3(SCAN_THREADS), (size_t)smem,
				    stream, p));
	return QW_OK;
}
