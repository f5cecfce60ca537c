/* checksum.h - the checksum of activations crossing between pipeline stages.
 *
 * Owns: qw_checksum, a two-level XXH64: the data is cut into 16 KiB chunks, chunk i hashed
 * with XXH64 seeded by i, and the chunk hashes (little-endian u64) hashed again seeded by the
 * total length.  The chunks hash independently, so a GPU computes them in parallel
 * (kernels/cuda) and gets the same value as the host (libxxhash).
 */
#ifndef QW_IPC_CHECKSUM_H
#define QW_IPC_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QW_CHECKSUM_CHUNK 16384

uint64_t qw_checksum(const void *data, size_t len);

/* The second level alone: from the chunk hashes (n = ceil(len / CHUNK)). */
uint64_t qw_checksum_finish(const uint64_t *chunk_hashes, size_t n, size_t len);

#ifdef __cplusplus
}
#endif

#endif
