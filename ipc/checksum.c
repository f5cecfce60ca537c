/* checksum.c - two-level XXH64 of activations.  See checksum.h. */
#include "ipc/checksum.h"

#include <stdlib.h>
#include <xxhash.h>

uint64_t qw_checksum_finish(const uint64_t *chunk_hashes, size_t n, size_t len)
{
	return XXH64(chunk_hashes, n * sizeof *chunk_hashes, (XXH64_hash_t)len);
}

uint64_t qw_checksum(const void *data, size_t len)
{
	size_t n = (len + QW_CHECKSUM_CHUNK - 1) / QW_CHECKSUM_CHUNK;
	uint64_t stack[64] = {0}, *h = n <= 64 ? stack : malloc(n * sizeof *h);
	if (!h)
		return 0;   /* cannot happen for the sizes sent; 0 then mismatches loudly */
	for (size_t i = 0; i < n; i++) {
		size_t off = i * QW_CHECKSUM_CHUNK;
		size_t k = len - off < QW_CHECKSUM_CHUNK ? len - off : QW_CHECKSUM_CHUNK;
		h[i] = XXH64((const char *)data + off, k, (XXH64_hash_t)i);   /* little-endian host */
	}
	uint64_t d = qw_checksum_finish(h, n, len);
	if (h != stack)
		free(h);
	return d;
}
