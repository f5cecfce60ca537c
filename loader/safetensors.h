/* safetensors.h - one safetensors file, mmapped and validated.
 *
 * Owns: the mapping of one file and the table of its tensors (qw_tensor), sorted by name.
 * The file is never read into memory: tensor data points into the read-only mapping, so
 * a 5 GB shard costs address space, not RAM.  Everything in the header is checked before
 * any tensor is handed out: length field sane, JSON well formed and of the safetensors
 * structure, dtypes known, byte size = shape x dtype size, offsets inside the data
 * section and not overlapping.  A bad file gives a specific status (error.h) and a
 * message naming the file, the tensor and what was expected against what was found.
 * A file may also be known by its header alone (a manifest's copy of it, manifest.h): the
 * same checks, and its tensors have no data.
 */
#ifndef QW_LOADER_SAFETENSORS_H
#define QW_LOADER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "loader/dtype.h"
#include "loader/error.h"

#define QW_MAX_DIMS 8
#define QW_ST_MAX_HEADER (100u * 1000u * 1000u)   /* the same limit as the reference reader */

struct qw_st_file;
struct json_t;   /* jansson's */

typedef struct qw_tensor {
	char *name;                      /* key in the header, e.g. "lm_head.weight" */
	qw_dtype dtype;
	int ndim;
	int64_t shape[QW_MAX_DIMS];      /* (ndim,) */
	uint64_t numel;
	uint64_t nbytes;                 /* numel * dtype size */
	uint64_t offset;                 /* begin, relative to the data section */
	const void *data;                /* into the mapping; may be unaligned: read with memcpy;
					    NULL when the file is known by its header alone */
	const struct qw_st_file *file;   /* the file that holds it */
	/* block-quantized weights (F8_E4M3): the fp32 scales, one per block of the last two
	 * dims, multiplied in on dequantisation; set by the weight binder, else NULL */
	const struct qw_tensor *scale;
	int block[2];                    /* (rows, cols) of a block */
} qw_tensor;

typedef struct qw_st_file {
	char *path;
	int fd;                          /* -1 for a parsed in-memory buffer */
	void *map;                       /* whole file, PROT_READ; NULL for a buffer */
	size_t size;                     /* file size in bytes */
	uint64_t header_len;             /* the leading little-endian u64 */
	const uint8_t *data;             /* data section: 8 + header_len bytes in; NULL for a
					    header alone */
	uint64_t data_size;              /* bytes after the header */
	qw_tensor *tensors;              /* (n_tensors,) sorted by name */
	size_t n_tensors;
} qw_st_file;

/* Maps and validates the file at path.  On success *out owns the mapping. */
qw_status qw_st_open(const char *path, qw_st_file **out, qw_err *err);

/* Validates a safetensors image already in memory (the whole file: length, header and
 * data).  label names it in errors.  The result points into buf, which must outlive it. */
qw_status qw_st_parse(const void *buf, size_t size, const char *label, qw_st_file **out,
		      qw_err *err);

/* A file known by its header alone: header is the parsed JSON of a safetensors header
 * ({"__metadata__": {...}, name: {"dtype", "shape", "data_offsets"}, ...}), data_size the
 * bytes of the file's data section.  The checks of qw_st_open apply; the tensors' data is
 * NULL.  label (e.g. "manifest.json: model-00001-of-00002.safetensors") becomes the path. */
qw_status qw_st_from_header(struct json_t *header, uint64_t data_size, const char *label,
			    qw_st_file **out, qw_err *err);

/* One header entry, {"dtype": .., "shape": [..], "data_offsets": [begin, end]} (a new jansson
 * reference). */
struct json_t *qw_st_header_entry(qw_dtype dtype, int ndim, const int64_t *shape,
				  uint64_t begin, uint64_t end);

/* Looks a tensor up by exact name; NULL if absent. */
const qw_tensor *qw_st_find(const qw_st_file *f, const char *name);

void qw_st_close(qw_st_file *f);

/* "[2, 3, 4]" into buf. */
const char *qw_shape_str(const int64_t *shape, int ndim, char *buf, size_t len);

#endif
