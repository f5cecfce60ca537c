/* gemm_wgmma.cu - the dense projections' prefill tile on Hopper's warpgroup MMA (sm_90a):
 * out (T, N) = x (T, K) W^T in 128 x 128 tiles, in gemm.cu's order of the sums, so it is one
 * more kernel of qw_cuda_gemm_with (QW_GEMM_WGMMA) with the bits of the others.  See
 * kernels.h (qw_cuda_gemm_wgmma).
 *
 * The order (gemm.cu's header) held on wgmma: each 32-block of k is two wgmma m64n128k16
 * whose k slots hold exactly the k values mma.sync's two instructions hold in theirs (the
 * operands are laid into shared memory in that permutation: wgmma.h), chained in fp32 from
 * zero over a run's blocks in ascending order, the runs folded in order with fp32 adds, the
 * total rounded to bf16 once.  That this gives mma.sync's bits is the hardware's business:
 * test_cuda_wgmma probes it, test_cuda_invariance holds this kernel to the other tiles'
 * bits, and qw_cuda_gemm_wgmma_selfcheck checks it on the GPU at hand before the backend
 * uses it (QW_CUDA_WGMMA=1: the backend's opt-in).
 *
 * The CTA: three warpgroups, warp-specialised.
 *  - the producer (warpgroup 0) copies panels of 64 k of the tile's 128 rows of x and 128
 *    rows of W into a STAGES-deep ring with 4-byte cp.async (a warp a row: 32 lanes, 128
 *    consecutive bytes of global memory, 32 distinct banks of shared memory), each pair of
 *    k straight to its permuted, swizzled place.  It publishes a stage LAG stages later
 *    (once its copies have landed: cp.async.wait_group, then a proxy fence so wgmma's reads
 *    see them, then an arrive on the stage's `full` barrier), and refills a stage once both
 *    consumers have arrived on its `empty` barrier.
 *  - two consumers (warpgroups 1 and 2), 64 rows each, wait for a stage, issue its wgmmas
 *    (two a block), commit them as a group and, once the previous stage's group is done
 *    (wgmma.wait_group 1), release that stage.  A run's end waits for everything and folds
 *    the chain into the total (in shared memory, only where S > 1: 64 more registers a
 *    thread would not leave wgmma's pipeline room).
 * Deadlock-free as long as LAG <= STAGES - 2: the producer's wait for stage p's slot needs
 * stage p - STAGES released, which needs stage p - STAGES + 1 published.
 * Napkin math (H100 SXM: ~4096 bf16 flops a clock an SM): a stage is 2 x 128 x 128 x 64
 * flops, ~512 clocks of MMA; its copies are 64 cp.async a producer thread (one producer
 * warp on each of the SM's 4 schedulers), ~3-4 instructions each where the warp's rows all
 * lie inside (copy_panel), ~256 issue slots, and 32 KB through L1 (~256 clocks at 128 B a
 * clock).  So the producer should keep up, with little to spare: if test_cuda_wgmma finds
 * that wgmma sums a k16 step's products in any slot order (its "quads" line at 0), 8-byte
 * copies halve that; if also in consecutive order, TMA can fill the panels.  x from
 * registers (wgmma's A fragment is mma.sync's, mma_block's loads give it) would leave only
 * W to permute.
 */
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/gemm_order.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/wgmma.h"

typedef __nv_bfloat16 bf16;

#define BM 128                  /* rows of x a tile: two consumers of 64 */
#define BN 128                  /* rows of W (output columns) a tile */
#define STAGES 4                /* panels of 64 k in the ring */
#define LAG 2                   /* panels the producer has in flight before publishing one */
#define THREADS 384             /* the producer's warpgroup and two consumers' */
#define A_BYTES (BM * WG_ROW_BYTES)
#define STAGE_BYTES (A_BYTES + BN * WG_ROW_BYTES)
#define SMEM_BYTES (STAGES * STAGE_BYTES + 1024 + 2 * STAGES * 8)   /* + alignment, barriers */
#define TOT_BYTES (256 * 64 * 4)   /* the consumers' totals, where S > 1 */
#define PRODUCER_REGS 40        /* registers a thread, after setmaxnreg: the producer copies */
#define CONSUMER_REGS 232       /* ... the consumers hold 64 accumulators */
static_assert(LAG <= STAGES - 2, "the pipeline would deadlock");
static_assert(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 65536, "more registers than an SM's");

#if QW_WGMMA_ARCH
/* Copies panel p (k from 64 p) of rows [r0, r0 + 128) of m (rows `rows`, K columns) into
 * the panel at shared address dst: warp w of the producer takes rows w, w + 4, ...; lane l
 * the pair at k 64 p + 2 l.  Rows or k past the end are zeros.  Rows w + 8 i share their
 * swizzle (r % 8), so two offsets and a stride of 512 bytes place them all. */
static __device__ __forceinline__ void copy_panel(uint32_t dst, const bf16 *m, int r0, int rows,
						  int K, int p, int warp, int lane)
{
	const int k = WG_PANEL_K * p + 2 * lane;
	/* K is a multiple of 8: a pair is whole or past the end; row warp + 4 i is read while
	 * 4 i < left */
	const int left = k < K ? rows - r0 - warp : 0;
	const size_t step = (size_t)4 * (size_t)K;
	size_t at = (size_t)(r0 + warp) * (size_t)K + (size_t)k;
	const uint32_t d0 = dst + wg_pair_offset(warp, 2 * lane);
	const uint32_t d1 = dst + wg_pair_offset(warp + 4, 2 * lane);
	if (__all_sync(0xffffffffu, left >= 128)) {   /* the whole panel: no tests a copy */
		const bf16 *src = m + at;
#pragma unroll
		for (int i = 0; i < 32; i += 2) {
			cp_async_at<4>(d0 + 512u * i, src, true);
			src += step;
			cp_async_at<4>(d1 + 512u * i, src, true);
			src += step;
		}
		return;
	}
#pragma unroll
	for (int i = 0; i < 32; i += 2) {
		cp_async_at<4>(d0 + 512u * i, 4 * i < left ? m + at : m, 4 * i < left);
		at += step;
		cp_async_at<4>(d1 + 512u * i, 4 * i + 4 < left ? m + at : m, 4 * i + 4 < left);
		at += step;
	}
}
#endif

template <bool RUNS>
static __global__ void __launch_bounds__(THREADS, 1)
gemm_wgmma_kernel(bf16 *out, const bf16 *x, const bf16 *w, int T, int N, int K, int S, bool pairs)
{
#if QW_WGMMA_ARCH
	pdl_launch_next();
	pdl_wait_previous();
	extern __shared__ __align__(16) unsigned char smem_raw[];
	const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
	unsigned char *sm = smem_raw + (base - smem_addr(smem_raw));
	uint64_t *full = (uint64_t *)(sm + STAGES * STAGE_BYTES), *empty = full + STAGES;
	const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
	/* the warpgroup, known uniform (a shuffle from lane 0): wgmma wants convergent code */
	const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0), tid = threadIdx.x % 128;
	const int nb = (K + KB - 1) / KB, np = (nb + 1) / 2;   /* blocks, panels */
	if (threadIdx.x == 0) {
		for (int s = 0; s < STAGES; s++) {
			mbar_init(&full[s], 128);    /* the producer's threads */
			mbar_init(&empty[s], 256);   /* the consumers' */
		}
	}
	__syncthreads();

	if (wg == 0) {   /* the producer */
		wg_regs_dec<PRODUCER_REGS>();
		const int warp = tid / 32, lane = tid % 32;
		for (int p = 0; p < np; p++) {
			const int slot = p % STAGES;
			if (p >= STAGES)
				mbar_wait(&empty[slot], (unsigned)(p / STAGES - 1) & 1u);
			const uint32_t st = base + slot * STAGE_BYTES;
			copy_panel(st, x, m0, T, K, p, warp, lane);
			copy_panel(st + A_BYTES, w, n0, N, K, p, warp, lane);
			cp_async_commit();
			if (p >= LAG) {
				cp_async_wait<LAG>();
				fence_proxy_async();
				mbar_arrive(&full[(p - LAG) % STAGES]);
			}
		}
		cp_async_wait<0>();
		fence_proxy_async();
		for (int p = np - LAG > 0 ? np - LAG : 0; p < np; p++)
			mbar_arrive(&full[p % STAGES]);
		return;
	}

	/* a consumer: rows 64 c .. 64 c + 63 of the tile */
	wg_regs_inc<CONSUMER_REGS>();
	const int c = wg - 1;
	float acc[64];
#pragma unroll
	for (int i = 0; i < 64; i++)
		acc[i] = 0.0f;
	/* the runs' total, where S > 1: in shared memory (the registers hold the chain), value i
	 * of consumer thread u at tot[256 i + u] */
	float *tot = (float *)(empty + STAGES) + (threadIdx.x - 128);
	int run = 0, run_end = run_begin(1, nb, S);
	auto fold = [&]() {
#pragma unroll
		for (int i = 0; i < 64; i++) {
			wg_fence_acc(acc[i]);
			tot[256 * i] = run == 0 ? acc[i] : __fadd_rn(tot[256 * i], acc[i]);
			acc[i] = 0.0f;
		}
	};
	for (int p = 0; p < np; p++) {
		const int slot = p % STAGES;
		mbar_wait(&full[slot], (unsigned)(p / STAGES) & 1u);
		const uint32_t a = base + slot * STAGE_BYTES + c * 64 * WG_ROW_BYTES;
		const uint32_t b = base + slot * STAGE_BYTES + A_BYTES;
#pragma unroll
		for (int h = 0; h < 2; h++) {
			const int blk = 2 * p + h;
			if (blk >= nb)
				break;
			if (RUNS && blk == run_end) {   /* the run's chain joins the total */
				wgmma_commit();
				wgmma_wait<0>();
				fold();
				run++;
				run_end = run_begin(run + 1, nb, S);
			}
			wgmma_fence();
			wgmma_m64n128(acc, wg_desc(a, 2 * h), wg_desc(b, 2 * h));
			wgmma_m64n128(acc, wg_desc(a, 2 * h + 1), wg_desc(b, 2 * h + 1));
		}
		wgmma_commit();
		wgmma_wait<1>();   /* the previous stage's wgmmas are done: its panels are free */
		if (p > 0)
			mbar_arrive(&empty[(p - 1) % STAGES]);
	}
	wgmma_wait<0>();
	if (RUNS) {
		fold();   /* the last run */
#pragma unroll
		for (int i = 0; i < 64; i++)
			acc[i] = tot[256 * i];
	} else {
#pragma unroll
		for (int i = 0; i < 64; i++)
			wg_fence_acc(acc[i]);
	}
	const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
	const int row = m0 + 64 * c + 16 * warp + g;
#pragma unroll
	for (int j = 0; j < 16; j++)
		store_tile(out, &acc[4 * j], row, n0 + 8 * j + 2 * t, T, N, pairs);
#else
	__trap();
#endif
}

extern "C" bool qw_cuda_gemm_wgmma_device(void)
{
	int dev = 0, major = 0, minor = 0;
	return cudaGetDevice(&dev) == cudaSuccess &&
	       cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) ==
		       cudaSuccess &&
	       cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) ==
		       cudaSuccess &&
	       major == 9 && minor == 0;
}

extern "C" qw_status qw_cuda_gemm_wgmma(uint16_t *out, const uint16_t *x, const uint16_t *w,
					int T, int N, int K, cudaStream_t stream, qw_err *err)
{
	if (T < 0 || N < 1 || K < 1 || K % 8 || ((uintptr_t)x & 15) || ((uintptr_t)w & 15))
		return qw_fail(err, QW_E_ARG, "cuda gemm (wgmma): T %d, N %d, K %d with x %p, w %p: "
			       "needs K a multiple of 8 and x, w 16-byte aligned", T, N, K,
			       (const void *)x, (const void *)w);
	if (!qw_cuda_gemm_wgmma_device())
		return qw_fail(err, QW_E_ARG, "cuda gemm (wgmma): the device is not sm_90 (Hopper); "
			       "HINT: leave QW_CUDA_WGMMA unset on other GPUs");
	if (T == 0)
		return QW_OK;
	const int S = qw_cuda_gemm_splits(N, K);
	auto kernel = S > 1 ? gemm_wgmma_kernel<true> : gemm_wgmma_kernel<false>;
	const size_t smem = (size_t)SMEM_BYTES + (S > 1 ? TOT_BYTES : 0);
	QW_CUDA_TRY(err, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
					      (int)smem));
	int64_t mt = (T + BM - 1) / BM;
	if (mt > 65535)
		return qw_fail(err, QW_E_ARG, "cuda gemm (wgmma): %d rows is too many for one call", T);
	const bool pairs = N % 2 == 0 && ((uintptr_t)out & 3) == 0;
	QW_CUDA_TRY(err, launch_pdl(kernel, dim3((unsigned)((N + BN - 1) / BN), (unsigned)mt),
				    dim3(THREADS), smem, stream, (bf16 *)out,
				    (const bf16 *)x, (const bf16 *)w, T, N, K, S, pairs));
	return QW_OK;
}

/* n bf16 values of random sign, exponent in [-8, 8] and mantissa (where rounding shows). */
static void wide_values(uint16_t *v, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		uint32_t r = (uint32_t)(seed >> 33);
		v[i] = (uint16_t)((r & 1u) << 15 | (127u - 8u + (r >> 1) % 17u) << 7 | (r >> 8) % 128u);
	}
}

/* The wgmma tile against the mma.sync tile on one shape: fills *differ with the outputs
 * whose bits differ. */
static qw_status check_shape(int T, int N, int K, uint64_t seed, cudaStream_t stream,
			     size_t *differ, qw_err *err)
{
	const size_t nx = (size_t)T * K, nw = (size_t)N * K, no = (size_t)T * N;
	uint16_t *h = (uint16_t *)malloc((nx + nw + 2 * no) * 2);
	if (!h)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	wide_values(h, nx + nw, seed);
	uint16_t *d = NULL;
	qw_status st = QW_OK;
	if (cudaMalloc(&d, (nx + nw + 2 * no) * 2) != cudaSuccess) {
		free(h);
		return qw_fail(err, QW_E_DEVICE, "cuda gemm (wgmma) check: no device memory");
	}
	uint16_t *dx = d, *dw = d + nx, *d_mma = dw + nw, *d_wg = d_mma + no;
	if (cudaMemcpyAsync(d, h, (nx + nw) * 2, cudaMemcpyHostToDevice, stream) != cudaSuccess ||
	    cudaMemsetAsync(d_mma, 0xff, 2 * no * 2, stream) != cudaSuccess)
		st = qw_fail(err, QW_E_DEVICE, "cuda gemm (wgmma) check: a copy failed");
	if (st == QW_OK)
		st = qw_cuda_gemm_with(QW_GEMM_TILE_L, d_mma, dx, dw, T, N, K, stream, err);
	if (st == QW_OK)
		st = qw_cuda_gemm_wgmma(d_wg, dx, dw, T, N, K, stream, err);
	if (st == QW_OK && (cudaMemcpyAsync(h + nx + nw, d_mma, 2 * no * 2, cudaMemcpyDeviceToHost,
					    stream) != cudaSuccess ||
			    cudaStreamSynchronize(stream) != cudaSuccess))
		st = qw_fail(err, QW_E_DEVICE, "cuda gemm (wgmma) check: %s",
			     cudaGetErrorString(cudaGetLastError()));
	if (st == QW_OK) {
		const uint16_t *a = h + nx + nw, *b = a + no;
		*differ = 0;
		for (size_t i = 0; i < no; i++)
			*differ += a[i] != b[i];
	}
	cudaFree(d);
	free(h);
	return st;
}

extern "C" qw_status qw_cuda_gemm_wgmma_selfcheck(cudaStream_t stream, qw_err *err)
{
	/* S 4 with a partial last block (K 1000) and an odd number of panels (K 1064); S 1
	 * with an odd number of blocks; ragged row and column tiles everywhere */
	static const int shapes[][3] = {{300, 392, 1000}, {200, 392, 1064}, {130, 136, 200}};
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		size_t differ = 0;
		const int T = shapes[i][0], N = shapes[i][1], K = shapes[i][2];
		QW_TRY(check_shape(T, N, K, 7 + i, stream, &differ, err));
		if (differ)
			return qw_fail(err, QW_E_DEVICE, "cuda gemm (wgmma): on T %d, N %d, K %d the "
				       "wgmma tiles give other bits than the mma.sync tiles in %zu of "
				       "%zu values, which would break batch invariance; HINT: unset "
				       "QW_CUDA_WGMMA (and report the GPU and driver)", T, N, K,
				       differ, (size_t)T * N);
	}
	return QW_OK;
}

extern "C" qw_status qw_cuda_gemm_wgmma_opt_in(const char *value, int device,
					       cudaStream_t stream, bool *on, qw_err *err)
{
	*on = false;
	if (!value || strcmp(value, "0") == 0)
		return QW_OK;
	if (strcmp(value, "1") != 0)
		return qw_fail(err, QW_E_ARG, "QW_CUDA_WGMMA is '%s'; HINT: it takes 1 (the wgmma "
			       "tiles for prefill GEMMs on Hopper) or 0 (the default)", value);
	if (!qw_cuda_gemm_wgmma_device())
		return qw_fail(err, QW_E_ARG, "QW_CUDA_WGMMA=1, but GPU %d is not a Hopper (sm_90); "
			       "HINT: unset QW_CUDA_WGMMA", device);
	QW_TRY(qw_cuda_gemm_wgmma_selfcheck(stream, err));
	*on = true;
	return QW_OK;
}
