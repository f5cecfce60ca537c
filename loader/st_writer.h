/* st_writer.h - writes safetensors files.
 *
 * Owns: laying out a header for a list of tensors (offsets in list order, header padded to
 * 8 bytes) and streaming their data out one tensor at a time through a fill callback, so a
 * checkpoint larger than memory can be written.  The file appears atomically: it is
 * written to PATH.tmp, synced, then renamed over PATH.
 */
#ifndef QW_LOADER_ST_WRITER_H
#define QW_LOADER_ST_WRITER_H

#include "loader/safetensors.h"

typedef struct qw_st_entry {
	const char *name;
	qw_dtype dtype;
	int ndim;
	int64_t shape[QW_MAX_DIMS];
} qw_st_entry;

/* Fills buf (nbytes) with the data of entries[index]. */
typedef qw_status (*qw_st_fill_fn)(void *ctx, size_t index, void *buf, uint64_t nbytes,
				   qw_err *err);

qw_status qw_st_write(const char *path, const qw_st_entry *entries, size_t n, qw_st_fill_fn fill,
		      void *ctx, qw_err *err);

/* Bytes of entries[i]'s data. */
uint64_t qw_st_entry_bytes(const qw_st_entry *e);

#endif
