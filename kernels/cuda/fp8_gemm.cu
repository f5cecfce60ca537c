/* fp8_gemm.cu - FP8 weights for GEMMs of more tokens than the decode stream takes: the
 * weight dequantised to bf16 (into scratch the backend reserved at upload) for cuBLAS's bf16
 * GEMM, which then gives the bits today's bf16 path gives on the dequantised weight.  See
 * kernels.h. */
#include <cuda_bf16.h>
#include <stdint.h>

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
