/* segment_attention.cu - the vision tower's attention: full (unmasked) attention among the
 * rows of each segment (an image's frame), q, k, v (T, H D) straight from the projections.
 * See kernels.h (qw_cuda_segment_attention).
 *
 * attn_engine.cuh's engine: a CTA takes one head of a 64-row tile of one segment (4 warps of
 * 16 rows) over all of the segment's keys, in the engine's order (chunks of CHUNK keys folded
 * in order), with 8-byte copies (D % 4 == 0; the vision tower's D is 72, padded to 80).
 * Each warp writes its rows' outputs from registers.
 */
#include "kernels/cuda/kernels.h"

#include <math.h>
#include <stdint.h>

#include "kernels/cuda/attn_engine.cuh"
#include "kernels/cuda/check.h"

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
	row_state<DP> st;
	attend_rows<C>(smem, a.k, a.v, [=](int j) -> int64_t { return (s0 + j) * width + head; },
		       a.D, 0, len, row_lim, a.sc, st);
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
#pragma unroll
	for (int h = 0; h < 2; h++) {
		const int r = warp * 16 + g + 8 * h;
		if (r >= n)
			continue;
		bf16 *o = a.out + (first + r) * width + head;
#pragma unroll
		for (int i = 0; i < DP / 8; i++) {
			const int d = i * 8 + 2 * t;
			if (d < a.D)   /* D % 4 == 0: d + 1 < D too */
				*(__nv_bfloat162 *)(o + d) = __floats2bfloat162_rn(
					finish(st.o[i][2 * h], st.l[h]), finish(st.o[i][2 * h + 1], st.l[h]));
		}
	}
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

static bool aligned8(const void *p)
{
	return ((uintptr_t)p & 7) == 0;
}

extern "C" qw_status qw_cuda_segment_attention(uint16_t *out, const uint16_t *q, const uint16_t *k,
					       const uint16_t *v, const int32_t *seg_start, int n_segs,
					       int max_seg, int T, int n_heads, int head_dim,
					       cudaStream_t stream, qw_err *err)
{
	(void)max_seg;
	if (n_segs < 0 || T < 0 || n_heads < 1 || n_heads > 65535)
		return qw_fail(err, QW_E_ARG, "cuda segment attention: %d segments, %d rows, %d heads",
			       n_segs, T, n_heads);
	if (head_dim < 4 || head_dim > 256 || head_dim % 4)
		return qw_fail(err, QW_E_ARG, "cuda segment attention: head dim %d (a multiple of 4 up "
			       "to 256 is supported)", head_dim);
	if (!aligned8(out) || !aligned8(q) || !aligned8(k) || !aligned8(v))
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
