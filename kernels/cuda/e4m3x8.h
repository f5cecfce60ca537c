/* e4m3x8.h - FP8 weights (float8_e4m3fn with an fp32 scale per block) dequantised the one
 * way the CUDA backend dequantises them (included by the .cu files that read FP8 weights:
 * few_rows_gemm.cu, fp8_gemm.cu, moe_gemm.cu, experts.cu; gemm_fp8.cu takes the codes' exact
 * values instead and scales a block's sum, see there):
 *     w = bf16_rn(e4m3_to_f32(q) * scale)
 * an fp32 multiply rounded once to bf16: the bits of the CPU reference's value (loader's
 * qw_f8e4m3_to_f32(q) * scale) rounded to bf16, as an upload-time dequantisation gave them.
 *
 * Owns: e4m3_times_2m120 and e4m3_scaled (the fp32 arithmetic: C and CUDA, so the CPU suite
 * holds it to the loader's conversion, tests/unit/test_dtype.c), and for CUDA C++
 * e4m3x8_dequant (eight weights of one 8-byte load to fp32 values, each exactly a bf16),
 * e4m3x8_bf16x8 (the same eight as packed bf16, for a tile dequantised into shared memory),
 * e4m3_dequant (one weight, to its bf16) and e4m3x8_exact_bf16x8 (eight codes as their own
 * values in bf16, no scale: gemm_fp8.cu's kernels apply the scale to a block's sum).
 *
 * How, without conversion instructions (they issue at a fraction of the FMA rate, and a
 * decode stream dequantises every byte it reads): the byte's sign goes to bit 31 and its
 * other seven bits (exponent, mantissa) to bits 26..20 of an fp32, which is then exactly the
 * e4m3 value times 2^-120, subnormals included (fp32's subnormal range holds them); one
 * multiply by scale * 2^120 (exact: a power of two, finite for any scale below 2^8) rounds
 * e4m3 * scale once, as the reference's multiply does.  A scale of 2^8 or more (none in a
 * real checkpoint: scales are amax / 448) takes two multiplies instead: by 2^120 (exact,
 * giving the e4m3 value) and by the scale.  The NaN codes 0x7f and 0xff would read as
 * +-480 * scale: the upload (memory.cu) refuses weights that hold them.  Subnormal fp32
 * values must not be flushed (nvcc's default; no -ftz or --use_fast_math).
 */
#ifndef QW_KERNELS_CUDA_E4M3X8_H
#define QW_KERNELS_CUDA_E4M3X8_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define E4M3_FN __host__ __device__ static inline
#else
#define E4M3_FN static inline
#endif

/* The e4m3 byte in bits 0..7 of b (higher bits ignored) times 2^-120, exactly. */
E4M3_FN float e4m3_times_2m120(uint32_t b)
{
	uint32_t bits = ((b & 0x80u) << 24) | ((b & 0x7fu) << 20);
	float f;
	memcpy(&f, &bits, sizeof f);
	return f;
}

/* e4m3 * scale rounded once to fp32, for a decoded v = e4m3 * 2^-120 and up = scale * 2^120. */
E4M3_FN float e4m3_scaled(float v, float up, float scale)
{
	return up <= 3.40282347e38f ? v * up : (v * 0x1p120f) * scale;
}

#ifdef __CUDACC__

/* Eight weights (q's bytes in memory order) of one block of scale `scale`: f[i] =
 * bf16_rn(e4m3(q byte i) * scale) as an fp32 (the bf16 widened, exactly). */
__device__ static inline void e4m3x8_dequant(uint2 q, float scale, float f[8])
{
	const uint32_t w[2] = {q.x, q.y};
	const float up = scale * 0x1p120f;
#pragma unroll
	for (int i = 0; i < 8; i += 2) {
		uint32_t b = w[i / 4] >> (8 * (i % 4));
		float lo = e4m3_scaled(e4m3_times_2m120(b), up, scale);
		float hi = e4m3_scaled(e4m3_times_2m120(b >> 8), up, scale);
		__nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);   /* both rounded by one cvt */
		f[i] = __uint_as_float((uint32_t)__bfloat16_as_ushort(p.x) << 16);
		f[i + 1] = __uint_as_float((uint32_t)__bfloat16_as_ushort(p.y) << 16);
	}
}

/* Two weights of y = [q1 | 0 | q0 | 0] (bytes 3..0: __byte_perm(w, 0, 0x1404) places bytes
 * 0 and 1 of w so, 0x3424 bytes 2 and 3) as packed bf16 (q0 low), up as e4m3_scaled takes
 * it, finite (BIG: up is the scale itself, 2^8 or more).  The magnitudes' bits masked into
 * place, one multiply each, one pack (round to nearest even), the signs or'ed in after
 * (rounding is symmetric): 9 instructions for two weights. */
template <bool BIG>
__device__ static inline uint32_t e4m3x2_bf16x2(uint32_t y, float up)
{
	float lo = __uint_as_float((y << 12) & 0x07f00000u);   /* |q0| * 2^-120, exactly */
	float hi = __uint_as_float((y >> 4) & 0x07f00000u);    /* |q1| * 2^-120 */
	if (BIG) {
		lo = __fmul_rn(lo, 0x1p120f);   /* exact: |q| */
		hi = __fmul_rn(hi, 0x1p120f);
	}
	__nv_bfloat162 p = __floats2bfloat162_rn(__fmul_rn(lo, up), __fmul_rn(hi, up));
	uint32_t bits;
	memcpy(&bits, &p, sizeof bits);
	return bits | (y & 0x80008000u);
}

/* Eight weights (q's bytes in memory order) of one block as eight bf16, in order: what
 * e4m3x8_dequant gives, packed. */
template <bool BIG>
__device__ static inline uint4 e4m3x8_bf16x8(uint2 q, float up)
{
	uint4 r;
	r.x = e4m3x2_bf16x2<BIG>(__byte_perm(q.x, 0, 0x1404), up);
	r.y = e4m3x2_bf16x2<BIG>(__byte_perm(q.x, 0, 0x3424), up);
	r.z = e4m3x2_bf16x2<BIG>(__byte_perm(q.y, 0, 0x1404), up);
	r.w = e4m3x2_bf16x2<BIG>(__byte_perm(q.y, 0, 0x3424), up);
	return r;
}

/* Eight codes (q's bytes in memory order) as eight bf16, in order, each exactly its e4m3
 * value (e4m3 fits bf16: 3 mantissa bits, exponents 2^-9 .. 2^8), no scale.  Two codes take
 * a byte permute, a shift, two logic ops and one bf16x2 multiply: a code's exponent and
 * mantissa bits go to bits 10..4 of a bf16, which is then |e4m3| * 2^-120 (the codes of
 * exponent 0 as bf16 subnormals), its sign to bit 15; the multiply by 2^120 (exact, and
 * subnormal operands are kept by bf16 arithmetic) gives the e4m3 value, a normal bf16 or
 * zero, so the MMAs never see a subnormal operand. */
__device__ static inline uint32_t e4m3x2_exact_bf16x2(uint32_t y)   /* y = [q1 | 0 | q0 | 0] */
{
	uint32_t bits = ((y >> 4) & 0x07f007f0u) | (y & 0x80008000u);
	__nv_bfloat162 v, up;
	memcpy(&v, &bits, sizeof v);
	const uint32_t two120 = 0x7b807b80u;   /* 2^120, twice */
	memcpy(&up, &two120, sizeof up);
	v = __hmul2(v, up);
	memcpy(&bits, &v, sizeof bits);
	return bits;
}

__device__ static inline uint4 e4m3x8_exact_bf16x8(uint2 q)
{
	uint4 r;
	r.x = e4m3x2_exact_bf16x2(__byte_perm(q.x, 0, 0x1404));
	r.y = e4m3x2_exact_bf16x2(__byte_perm(q.x, 0, 0x3424));
	r.z = e4m3x2_exact_bf16x2(__byte_perm(q.y, 0, 0x1404));
	r.w = e4m3x2_exact_bf16x2(__byte_perm(q.y, 0, 0x3424));
	return r;
}

/* One weight: bf16_rn(e4m3(q) * scale). */
__device__ static inline __nv_bfloat16 e4m3_dequant(uint8_t q, float scale)
{
	return __float2bfloat16_rn(e4m3_scaled(e4m3_times_2m120(q), scale * 0x1p120f, scale));
}

#endif

#endif
