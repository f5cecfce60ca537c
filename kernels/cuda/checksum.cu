/* checksum.cu - the first level of the hand-over checksum (ipc/checksum.h) on the GPU: each
 * 16 KiB chunk hashed with XXH64 seeded by its index, a thread a chunk, giving the values
 * libxxhash gives on the host.  See kernels.h. */
#include <string.h>

#include "ipc/checksum.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull
#define P4 0x85EBCA77C2B2AE63ull
#define P5 0x27D4EB2F165667C5ull

__device__ static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
__device__ static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
__device__ static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
__device__ static uint64_t xround(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
__device__ static uint64_t xmerge(uint64_t acc, uint64_t v) { return (acc ^ xround(0, v)) * P1 + P4; }

__device__ static uint64_t xxh64(const uint8_t *p, uint64_t len, uint64_t seed)
{
	const uint8_t *end = p + len;
	uint64_t h;
	if (len >= 32) {
		uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
		for (; p + 32 <= end; p += 32) {
			v1 = xround(v1, rd64(p));
			v2 = xround(v2, rd64(p + 8));
			v3 = xround(v3, rd64(p + 16));
			v4 = xround(v4, rd64(p + 24));
		}
		h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
		h = xmerge(xmerge(xmerge(xmerge(h, v1), v2), v3), v4);
	} else {
		h = seed + P5;
	}
	h += len;
	for (; p + 8 <= end; p += 8)
		h = rotl(h ^ xround(0, rd64(p)), 27) * P1 + P4;
	if (p + 4 <= end) {
		h = rotl(h ^ (uint64_t)rd32(p) * P1, 23) * P2 + P3;
		p += 4;
	}
	for (; p < end; p++)
		h = rotl(h ^ (uint64_t)(*p) * P5, 11) * P1;
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	return h ^ (h >> 32);
}

__global__ static void chunk_hash_kernel(uint64_t *out, const uint8_t *buf, uint64_t bytes,
					 uint64_t n_chunks)
{
	uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x;
	if (i >= n_chunks)
		return;
	uint64_t off = i * QW_CHECKSUM_CHUNK;
	uint64_t k = bytes - off < QW_CHECKSUM_CHUNK ? bytes - off : QW_CHECKSUM_CHUNK;
	out[i] = xxh64(buf + off, k, i);
}

extern "C" qw_status qw_cuda_chunk_hashes(uint64_t *out, const void *buf, uint64_t bytes,
					  cudaStream_t stream, qw_err *err)
{
	uint64_t n = (bytes + QW_CHECKSUM_CHUNK - 1) / QW_CHECKSUM_CHUNK;
	if (n == 0)
		return QW_OK;
	chunk_hash_kernel<<<(unsigned)((n + 127) / 128), 128, 0, stream>>>(
		out, (const uint8_t *)buf, bytes, n);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}
