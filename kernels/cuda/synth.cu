/* synth.cu - a synthetic model's weights made on the GPU: the random streams of
 * loader/export.h, evaluated element pair by element pair (the stream is counter-based), so a
 * full-size model fills in about a second instead of being generated on the host and
 * copied.  In double precision like the host's; values can differ from qwen-ckpt
 * export-reduced's only where CUDA's and glibc's double log/sin/cos round a last bit apart
 * and that bit survives the rounding to bf16. */
#include <cuda_bf16.h>

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
