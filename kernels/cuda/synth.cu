/* synth.cu - a synthetic model's weights made on the GPU: the random streams of
 * loader/export.h, evaluated element pair by element pair (the stream is counter-based), so a
 * full-size model fills in about a second instead of being generated on the host and
 * copied.  In double precision like the host's; values can differ from qwen-ckpt
 * export-reduced's only where CUDA's and glibc's double log/sin/cos round a last bit apart
 * and that bit survives the rounding to bf16.  FP8 weights are those same bf16 values
 * quantized per block as qw_export_quantize_fp8 does (fp32 amax / 448, fp32 division, e4m3
 * nearest-even saturating), so they match the export's codes and scales wherever the bf16
 * values do. */
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"

static __device__ uint64_t mix(uint64_t z)   /* splitmix64's finaliser */
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static __device__ double uniform(uint64_t x)
{
	return ((double)(mix(x) >> 11) + 0.5) * 0x1.0p-53;
}

/* Element k of the stream s0 with (mean, std) as float: pair k / 2, its cosine or sine. */
static __device__ float normal_at(uint64_t k, uint64_t s0, double mean, double std)
{
	const uint64_t g = 0x9e3779b97f4a7c15ull, j = k / 2;
	double u1 = uniform(s0 + (2 * j + 1) * g), u2 = uniform(s0 + (2 * j + 2) * g);
	double r = sqrt(-2.0 * log(u1)), a = 2.0 * 3.14159265358979323846 * u2, s, c;
	sincos(a, &s, &c);
	return (float)(mean + std * r * (k & 1 ? s : c));
}

static __global__ void fill_normal_kernel(__nv_bfloat16 *out, uint64_t n, uint64_t s0,
					  double mean, double std)
{
	const uint64_t g = 0x9e3779b97f4a7c15ull;
	uint64_t pairs = (n + 1) / 2;
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < pairs;
	     j += (uint64_t)gridDim.x * blockDim.x) {
		double u1 = uniform(s0 + (2 * j + 1) * g), u2 = uniform(s0 + (2 * j + 2) * g);
		double r = sqrt(-2.0 * log(u1)), a = 2.0 * 3.14159265358979323846 * u2, s, c;
		sincos(a, &s, &c);
		out[2 * j] = __float2bfloat16((float)(mean + std * r * c));
		if (2 * j + 1 < n)
			out[2 * j + 1] = __float2bfloat16((float)(mean + std * r * s));
	}
}

qw_status qw_cuda_fill_normal(uint16_t *out, uint64_t n, uint64_t s0, double mean, double std,
			      cudaStream_t stream, qw_err *err)
{
	if (n == 0)
		return QW_OK;
	uint64_t pairs = (n + 1) / 2, blocks = (pairs + 255) / 256;
	fill_normal_kernel<<<(unsigned)(blocks < 65536 * 4 ? blocks : 65536 * 4), 256, 0, stream>>>(
		(__nv_bfloat16 *)out, n, s0, mean, std);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// FP8 block-scaled weights

#define FP8_FILL_THREADS 256

/* One CUDA block per scale block (m, sr, sc): its values into shared memory (bf16, as the
 * export rounds them), their amax, the scale, the codes.  Blocks at the edges are partial. */
static __global__ void fill_fp8_kernel(uint8_t *q, float *scales, uint64_t R, uint64_t C, int br,
				       int bc, uint64_t SR, uint64_t SC, uint64_t s0, double mean,
				       double std)
{
	extern __shared__ __nv_bfloat16 vals[];   /* (br * bc,) */
	__shared__ float warp_max[FP8_FILL_THREADS / 32];
	uint64_t b = blockIdx.x, sc = b % SC, sr = b / SC % SR, m = b / (SC * SR);
	uint64_t r0 = sr * (uint64_t)br, c0 = sc * (uint64_t)bc;
	int rows = (int)(R - r0 < (uint64_t)br ? R - r0 : (uint64_t)br);
	int cols = (int)(C - c0 < (uint64_t)bc ? C - c0 : (uint64_t)bc);
	float amax = 0.0f;
	for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
		uint64_t k = (m * R + r0 + (uint64_t)(i / cols)) * C + c0 + (uint64_t)(i % cols);
		vals[i] = __float2bfloat16(normal_at(k, s0, mean, std));
		amax = fmaxf(amax, fabsf(__bfloat162float(vals[i])));
	}
	for (int o = 16; o > 0; o >>= 1)
		amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
	if (threadIdx.x % 32 == 0)
		warp_max[threadIdx.x / 32] = amax;
	__syncthreads();
	amax = 0.0f;
	for (int w = 0; w < FP8_FILL_THREADS / 32; w++)
		amax = fmaxf(amax, warp_max[w]);
	float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
	if (threadIdx.x == 0)
		scales[b] = scale;
	for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
		uint64_t k = (m * R + r0 + (uint64_t)(i / cols)) * C + c0 + (uint64_t)(i % cols);
		q[k] = (uint8_t)__nv_cvt_float_to_fp8(__bfloat162float(vals[i]) / scale, __NV_SATFINITE,
						      __NV_E4M3);
	}
}

qw_status qw_cuda_fill_fp8(uint8_t *q, float *scales, uint64_t M, uint64_t R, uint64_t C,
			   int br, int bc, uint64_t s0, double mean, double std,
			   cudaStream_t stream, qw_err *err)
{
	if (br < 1 || bc < 1 || (long long)br * bc > QW_CUDA_FP8_FILL_MAX_BLOCK)
		return qw_fail(err, QW_E_ARG, "cuda qw_cuda_fill_fp8: blocks of %d x %d values (1 to %d "
			       "values are taken)", br, bc, QW_CUDA_FP8_FILL_MAX_BLOCK);
	uint64_t SR = (R + (uint64_t)br - 1) / (uint64_t)br, SC = (C + (uint64_t)bc - 1) / (uint64_t)bc;
	uint64_t blocks = M * SR * SC;
	if (blocks == 0)
		return QW_OK;
	if (blocks > 0x7fffffffull)
		return qw_fail(err, QW_E_ARG, "cuda qw_cuda_fill_fp8: %llu scale blocks (at most 2^31 - 1)",
			       (unsigned long long)blocks);
	size_t shared = (size_t)br * (size_t)bc * sizeof(__nv_bfloat16);
	if (shared > 48 * 1024)
		QW_CUDA_TRY(err, cudaFuncSetAttribute(fill_fp8_kernel,
						      cudaFuncAttributeMaxDynamicSharedMemorySize,
						      (int)shared));
	fill_fp8_kernel<<<(unsigned)blocks, FP8_FILL_THREADS, shared, stream>>>(
		q, scales, R, C, br, bc, SR, SC, s0, mean, std);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}
