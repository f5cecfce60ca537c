/* bf16x8.h - eight bf16 values of one 16-byte load, widened to fp32 (CUDA C++ only, included
 * by the .cu files that stream bf16 rows: moe.cu, few_rows_gemm.cu).
 *
 * Owns: bf16x8_to_f32.  A bf16 is the top half of an fp32, so widening is a shift or a mask,
 * exact, with no conversion instruction.
 */
#ifndef QW_KERNELS_CUDA_BF16X8_H
#define QW_KERNELS_CUDA_BF16X8_H

#include <cuda_runtime.h>
#include <stdint.h>

__device__ static inline void bf16x8_to_f32(uint4 v, float f[8])
{
	const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
	for (int i = 0; i < 4; i++) {
		f[2 * i] = __uint_as_float(w[i] << 16);
		f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
	}
}

#endif
