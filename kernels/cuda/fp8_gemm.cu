/* fp8_gemm.cu - FP8 weights for GEMMs of more tokens than the decode stream takes, two ways:
 * (a) the weight dequantised to bf16 (into scratch the backend reserved at upload) for
 * cuBLAS's bf16 GEMM, which then gives the bits the bf16 path gives on the dequantised
 * weight; (b) cuBLASLt's block-scaled FP8 GEMM on Hopper's FP8 tensor cores (twice the bf16
 * rate), the weight as it is with its 128 x 128 block scales and the activations quantised
 * to e4m3 per token and 128 columns (W8A8: looser than bf16, see docs/testing.md), where
 * this cuBLAS has an algorithm for it.  See kernels.h. */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/e4m3x8.h"
#include "kernels/cuda/kernels.h"

typedef __nv_bfloat16 bf16;

/* The scale of element (m, r, c) of w. */
__device__ static inline float scale_at(const qw_cuda_fp8_weight &w, int64_t m, int r, int c)
{
	int sr = (w.rows + w.br - 1) / w.br, sc = (w.cols + w.bc - 1) / w.bc;
	return __ldg(w.scale + (m * sr + r / w.br) * sc + c / w.bc);
}

/* A thread per eight weights of a row (cols and bc multiples of 8, q 8-byte aligned: eight
 * consecutive weights then share a block). */
static __global__ void dequant8_kernel(bf16 *out, qw_cuda_fp8_weight w, int64_t chunks)
{
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= chunks)
		return;
	int per_row = w.cols / 8;
	int64_t row = i / per_row;   /* of all mats */
	int c = (int)(i % per_row) * 8;
	float f[8];
	e4m3x8_dequant(__ldcs((const uint2 *)w.q + i), scale_at(w, row / w.rows, (int)(row % w.rows), c),
		       f);
	uint32_t u[4];   /* each f is a bf16 widened: its top half is the bf16 */
#pragma unroll
	for (int j = 0; j < 4; j++)
		u[j] = (__float_as_uint(f[2 * j]) >> 16) | (__float_as_uint(f[2 * j + 1]) & 0xffff0000u);
	*((uint4 *)out + i) = make_uint4(u[0], u[1], u[2], u[3]);
}

/* A thread per weight: any shape. */
static __global__ void dequant1_kernel(bf16 *out, qw_cuda_fp8_weight w, int64_t n)
{
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= n)
		return;
	int64_t row = i / w.cols;
	out[i] = e4m3_dequant(w.q[i], scale_at(w, row / w.rows, (int)(row % w.rows), (int)(i % w.cols)));
}

extern "C" qw_status qw_cuda_fp8_dequant(uint16_t *out, const qw_cuda_fp8_weight *w,
					 cudaStream_t stream, qw_err *err)
{
	if (w->mats < 1 || w->rows < 1 || w->cols < 1 || w->br < 1 || w->bc < 1)
		return qw_fail(err, QW_E_ARG, "cuda fp8 dequant: %d x %d x %d weight, %d x %d blocks",
			       w->mats, w->rows, w->cols, w->br, w->bc);
	int64_t n = (int64_t)w->mats * w->rows * w->cols;
	bool by8 = w->cols % 8 == 0 && w->bc % 8 == 0 && ((uintptr_t)w->q & 7) == 0 &&
		   ((uintptr_t)out & 15) == 0;
	int64_t threads = by8 ? n / 8 : n;
	unsigned blocks = (unsigned)((threads + 255) / 256);
	if (by8)
		dequant8_kernel<<<blocks, 256, 0, stream>>>((bf16 *)out, *w, threads);
	else
		dequant1_kernel<<<blocks, 256, 0, stream>>>((bf16 *)out, *w, threads);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// the FP8 tensor-core GEMM (cuBLASLt, block scaled): activations quantised per token and
// 128 columns, as DeepSeek-V3 and vLLM's block FP8 do

/* A warp per (token, 128-column group): amax of |x| over the group, scale = amax / 448, q =
 * e4m3_rn(x * 448 / amax) saturated; scales stored group-major (xs[g * T + t]: cuBLASLt's
 * VEC128_32F layout for an operand whose inner dimension is K). */
static __global__ void quantize_act_kernel(uint8_t *xq, float *xs, const bf16 *x, int T, int K)
{
	int g = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, t = blockIdx.y;
	int lane = threadIdx.x % 32, c = g * 128 + lane * 4;
	if (g * 128 >= K)
		return;
	float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
	if (c < K) {   /* K is a multiple of 16: four columns are all in or all out */
		uint2 raw = *(const uint2 *)(x + (size_t)t * K + c);
		v[0] = __uint_as_float(raw.x << 16);
		v[1] = __uint_as_float(raw.x & 0xffff0000u);
		v[2] = __uint_as_float(raw.y << 16);
		v[3] = __uint_as_float(raw.y & 0xffff0000u);
	}
	float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
	amax = fmaxf(amax, 1e-30f);   /* an all-zero group: any scale, q all zero */
	float inv = 448.0f / amax;
	if (c < K) {
		__nv_fp8x2_storage_t lo = __nv_cvt_float2_to_fp8x2(make_float2(v[0] * inv, v[1] * inv),
								   __NV_SATFINITE, __NV_E4M3);
		__nv_fp8x2_storage_t hi = __nv_cvt_float2_to_fp8x2(make_float2(v[2] * inv, v[3] * inv),
								   __NV_SATFINITE, __NV_E4M3);
		*(uint32_t *)(xq + (size_t)t * K + c) = (uint32_t)lo | ((uint32_t)hi << 16);
	}
	if (lane == 0)
		xs[(size_t)g * T + t] = amax / 448.0f;
}

#define LT_PLANS 32   /* shapes whose cuBLASLt plan is kept */

/* A shape's plan: descriptors and the algorithm the heuristic chose (or none). */
typedef struct lt_plan {
	int N, K, T;                 /* 0: a free slot */
	bool supported;
	cublasLtMatmulDesc_t desc;
	cublasLtMatrixLayout_t a, b, d;
	cublasLtMatmulAlgo_t algo;
} lt_plan;

struct qw_cuda_fp8_lt {
	cublasLtHandle_t handle;
	void *ws;
	size_t ws_bytes;
	lt_plan plans[LT_PLANS];
	int next;                    /* the slot replaced next when all are taken */
};

static void plan_clear(lt_plan *p)
{
	if (p->desc)
		cublasLtMatmulDescDestroy(p->desc);
	if (p->a)
		cublasLtMatrixLayoutDestroy(p->a);
	if (p->b)
		cublasLtMatrixLayoutDestroy(p->b);
	if (p->d)
		cublasLtMatrixLayoutDestroy(p->d);
	memset(p, 0, sizeof *p);
}

extern "C" qw_status qw_cuda_fp8_lt_create(qw_cuda_fp8_lt **out, void *ws, size_t ws_bytes,
					   qw_err *err)
{
	qw_cuda_fp8_lt *lt = (qw_cuda_fp8_lt *)calloc(1, sizeof *lt);
	if (!lt)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	cublasStatus_t st = cublasLtCreate(&lt->handle);
	if (st != CUBLAS_STATUS_SUCCESS) {
		free(lt);
		return qw_fail(err, QW_E_DEVICE, "cublasLtCreate failed: %s", cublasGetStatusString(st));
	}
	lt->ws = ws;
	lt->ws_bytes = ws_bytes;
	*out = lt;
	return QW_OK;
}

extern "C" void qw_cuda_fp8_lt_destroy(qw_cuda_fp8_lt *lt)
{
	if (!lt)
		return;
	for (int i = 0; i < LT_PLANS; i++)
		plan_clear(&lt->plans[i]);
	cublasLtDestroy(lt->handle);
	free(lt);
}

/* Row-major out (T, N) = x (T, K) w^T as cuBLASLt's column-major D (N, T) = A^T B, A = w
 * stored (K, N) with its 128 x 128 block scales (row-major (ceil(N/128), ceil(K/128)), which
 * is the checkpoint's layout), B = the quantised x stored (K, T) with per-128 scales. */
static qw_status plan_make(qw_cuda_fp8_lt *lt, lt_plan *p, int N, int K, int T, qw_err *err)
{
	p->N = N;
	p->K = K;
	p->T = T;
	cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
	int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
	int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
	QW_CUBLAS_TRY(err, cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
	QW_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
							  sizeof ta));
	QW_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
							  sizeof tb));
	QW_CUBLAS_TRY(err, cublasLtMatrixLayoutCreate(&p->a, CUDA_R_8F_E4M3, K, N, K));
	QW_CUBLAS_TRY(err, cublasLtMatrixLayoutCreate(&p->b, CUDA_R_8F_E4M3, K, T, K));
	QW_CUBLAS_TRY(err, cublasLtMatrixLayoutCreate(&p->d, CUDA_R_16BF, N, T, N));
	cublasLtMatmulPreference_t pref;
	QW_CUBLAS_TRY(err, cublasLtMatmulPreferenceCreate(&pref));
	/* a cuBLAS or GPU without block scaling refuses the modes, or the heuristic finds no
	 * algorithm: either way no such GEMM here, and the caller dequantises */
	cublasLtMatmulHeuristicResult_t h;
	int found = 0;
	cublasStatus_t st = cublasLtMatmulDescSetAttribute(
		p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof a_mode);
	if (st == CUBLAS_STATUS_SUCCESS)
		st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode,
						    sizeof b_mode);
	/* The scale pointers before the heuristic: with the modes set and the pointers still
	 * NULL (the default, read as a scalar 1) this asked the heuristic in a configuration the
	 * block-scaled kernels do not serve, and it found no algorithm on an H100, while a probe
	 * that set them first (otherwise the same descriptors) found one for the same shapes.
	 * Any device address with the scales' alignment stands in here (the workspace: 256-byte
	 * aligned); each GEMM sets the real ones before it runs. */
	const void *stand_in = lt->ws;
	if (st == CUBLAS_STATUS_SUCCESS)
		st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
						    &stand_in, sizeof stand_in);
	if (st == CUBLAS_STATUS_SUCCESS)
		st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
						    &stand_in, sizeof stand_in);
	if (st == CUBLAS_STATUS_SUCCESS)
		st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
							  &lt->ws_bytes, sizeof lt->ws_bytes);
	if (st == CUBLAS_STATUS_SUCCESS)
		st = cublasLtMatmulAlgoGetHeuristic(lt->handle, p->desc, p->a, p->b, p->d, p->d, pref, 1,
						    &h, &found);
	cublasLtMatmulPreferenceDestroy(pref);
	p->supported = st == CUBLAS_STATUS_SUCCESS && found > 0;
	if (p->supported)
		p->algo = h.algo;
	return QW_OK;
}

/* The plan of a shape, made (and the heuristic asked) on its first sight. */
static qw_status plan_of(qw_cuda_fp8_lt *lt, int N, int K, int T, lt_plan **out, qw_err *err)
{
	for (int i = 0; i < LT_PLANS; i++) {
		lt_plan *p = &lt->plans[i];
		if (p->N == N && p->K == K && p->T == T) {
			*out = p;
			return QW_OK;
		}
	}
	lt_plan *p = NULL;
	for (int i = 0; i < LT_PLANS && !p; i++)
		if (!lt->plans[i].N)
			p = &lt->plans[i];
	if (!p) {
		p = &lt->plans[lt->next];
		lt->next = (lt->next + 1) % LT_PLANS;
	}
	plan_clear(p);
	qw_status st = plan_make(lt, p, N, K, T, err);
	if (st != QW_OK) {
		plan_clear(p);
		return st;
	}
	*out = p;
	return QW_OK;
}

/* What cuBLASLt's FP8 GEMM needs beyond an algorithm: 16-byte rows (K a multiple of 16),
 * the weight's block-scale rows a multiple of 4 (cuBLASLt reads them padded so), 128 x 128
 * blocks, an output row of 16-byte multiples. */
static bool lt_shape_ok(const qw_cuda_fp8_weight *w)
{
	int sc = (w->cols + 127) / 128;
	return w->mats == 1 && w->br == 128 && w->bc == 128 && w->cols % 16 == 0 && sc % 4 == 0 &&
	       w->rows % 8 == 0 && ((uintptr_t)w->q & 15) == 0 && ((uintptr_t)w->scale & 15) == 0;
}

extern "C" size_t qw_cuda_fp8_lt_act_bytes(int T, int K)
{
	size_t q = ((size_t)T * K + 255) & ~(size_t)255;
	return q + (size_t)T * ((K + 127) / 128) * sizeof(float);
}

extern "C" qw_status qw_cuda_fp8_lt_supported(qw_cuda_fp8_lt *lt, const qw_cuda_fp8_weight *w,
					      int T, bool *yes, qw_err *err)
{
	*yes = false;
	if (!lt_shape_ok(w) || T < 1)
		return QW_OK;
	lt_plan *p;
	QW_TRY(plan_of(lt, w->rows, w->cols, T, &p, err));
	*yes = p->supported;
	return QW_OK;
}

extern "C" qw_status qw_cuda_fp8_lt_gemm(qw_cuda_fp8_lt *lt, uint16_t *out, const uint16_t *x,
					 const qw_cuda_fp8_weight *w, int T, void *act,
					 size_t act_bytes, cudaStream_t stream, qw_err *err)
{
	int N = w->rows, K = w->cols;
	bool yes;
	QW_TRY(qw_cuda_fp8_lt_supported(lt, w, T, &yes, err));
	if (!yes)
		return qw_fail(err, QW_E_ARG, "cuBLASLt has no block-scaled FP8 GEMM for %d tokens of "
			       "a %d x %d weight of %d x %d blocks here (it needs cuBLAS 12.9 or later "
			       "on sm_90 or later, 128 x 128 blocks, K a multiple of 16 in a multiple "
			       "of 4 blocks, N a multiple of 8)", T, N, K, w->br, w->bc);
	if (act_bytes < qw_cuda_fp8_lt_act_bytes(T, K) || ((uintptr_t)act & 255) ||
	    ((uintptr_t)x & 7))
		return qw_fail(err, QW_E_ARG, "cuda fp8 gemm: %zu bytes of activation scratch at %p "
			       "for %d x %d (needs %zu, 256-byte aligned)", act_bytes, act, T, K,
			       qw_cuda_fp8_lt_act_bytes(T, K));
	lt_plan *p;
	QW_TRY(plan_of(lt, N, K, T, &p, err));
	uint8_t *xq = (uint8_t *)act;
	float *xs = (float *)(xq + (((size_t)T * K + 255) & ~(size_t)255));
	int groups = (K + 127) / 128;
	quantize_act_kernel<<<dim3((unsigned)((groups + 3) / 4), (unsigned)T), 128, 0, stream>>>(
		xq, xs, (const bf16 *)x, T, K);
	QW_CUDA_TRY(err, cudaGetLastError());
	const void *a_scale = w->scale, *b_scale = xs;
	QW_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
							  &a_scale, sizeof a_scale));
	QW_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
							  &b_scale, sizeof b_scale));
	const float one = 1.0f, zero = 0.0f;
	QW_CUBLAS_TRY(err, cublasLtMatmul(lt->handle, p->desc, &one, w->q, p->a, xq, p->b, &zero, out,
					  p->d, out, p->d, &p->algo, lt->ws, lt->ws_bytes, stream));
	return QW_OK;
}
