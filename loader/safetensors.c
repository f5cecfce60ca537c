/* safetensors.c - mmap and validate a safetensors file.  See safetensors.h.
 *
 * Layout: u64 little-endian N, then N bytes of UTF-8 JSON
 *   {"__metadata__": {str: str}, "<name>": {"dtype": "BF16", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}
 * then the data section; offsets are relative to its start.
 */
#include "loader/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------
// header parsing

const char *qw_shape_str(const int64_t *shape, int ndim, char *buf, size_t len)
{
	size_t used = (size_t)snprintf(buf, len, "[");
	for (int i = 0; i < ndim && used < len; i++)
		used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
					 (long long)shape[i]);
	if (used < len)
		snprintf(buf + used, len - used, "]");
	return buf;
}

static int cmp_tensor_name(const void *a, const void *b)
{
	return strcmp(((const qw_tensor *)a)->name, ((const qw_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
	const qw_tensor *x = *(const qw_tensor *const *)a, *y = *(const qw_tensor *const *)b;
	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* A non-negative JSON integer, as u64. */
static int json_u64(const json_t *v, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* Fills t from one header entry (not yet placed in the data section). */
static qw_status parse_entry(const char *label, const char *name, json_t *entry, qw_tensor *t,
			     qw_err *err)
{
	if (!json_is_object(entry))
		return qw_fail(err, QW_E_ST_HEADER_JSON, "%s: tensor '%s': entry is not an object",
			       label, name);
	json_t *dtype = json_object_get(entry, "dtype");
	json_t *shape = json_object_get(entry, "shape");
	json_t *offs = json_object_get(entry, "data_offsets");
	if (!json_is_string(dtype) || !json_is_array(shape) || !json_is_array(offs))
		return qw_fail(err, QW_E_ST_HEADER_JSON,
			       "%s: tensor '%s': needs string 'dtype', array 'shape' and array "
			       "'data_offsets'", label, name);
	t->dtype = qw_dtype_from_name(json_string_value(dtype));
	if (t->dtype == QW_DT_INVALID)
		return qw_fail(err, QW_E_ST_DTYPE, "%s: tensor '%s': unknown dtype '%s'", label, name,
			       json_string_value(dtype));
	size_t ndim = json_array_size(shape);
	if (ndim > QW_MAX_DIMS)
		return qw_fail(err, QW_E_ST_HEADER_JSON, "%s: tensor '%s': %zu dims, at most %d",
			       label, name, ndim, QW_MAX_DIMS);
	t->ndim = (int)ndim;
	uint64_t numel = 1;
	for (size_t i = 0; i < ndim; i++) {
		uint64_t d;
		if (json_u64(json_array_get(shape, i), &d) != 0)
			return qw_fail(err, QW_E_ST_HEADER_JSON,
				       "%s: tensor '%s': shape[%zu] is not a non-negative integer",
				       label, name, i);
		if (d != 0 && numel > UINT64_MAX / 8 / d)
			return qw_fail(err, QW_E_ST_SIZE, "%s: tensor '%s': shape overflows 64 bits",
				       label, name);
		numel *= d;
		t->shape[i] = (int64_t)d;
	}
	uint64_t begin, end;
	if (json_array_size(offs) != 2 || json_u64(json_array_get(offs, 0), &begin) != 0 ||
	    json_u64(json_array_get(offs, 1), &end) != 0 || begin > end)
		return qw_fail(err, QW_E_ST_HEADER_JSON,
			       "%s: tensor '%s': data_offsets must be [begin, end] with "
			       "0 <= begin <= end", label, name);
	t->numel = numel;
	t->nbytes = numel * qw_dtype_size(t->dtype);
	t->offset = begin;
	if (end - begin != t->nbytes) {
		char s[128];
		return qw_fail(err, QW_E_ST_SIZE,
			       "%s: tensor '%s': shape %s x %s is %llu bytes, but data_offsets "
			       "[%llu, %llu] span %llu bytes", label, name,
			       qw_shape_str(t->shape, t->ndim, s, sizeof s), qw_dtype_name(t->dtype),
			       (unsigned long long)t->nbytes, (unsigned long long)begin,
			       (unsigned long long)end, (unsigned long long)(end - begin));
	}
	return QW_OK;
}

/* Checks the byte ranges against each other and against the data section: overlap,
 * then truncation (tensors tile the data from 0 but the file ends early) or stray
 * offsets past the end. */
static qw_status check_ranges(qw_st_file *f, const char *label, qw_err *err)
{
	size_t n = f->n_tensors;
	if (n == 0)
		return QW_OK;
	const qw_tensor **by_off = malloc(n * sizeof *by_off);
	if (!by_off)
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory sorting %zu tensors", label, n);
	for (size_t i = 0; i < n; i++)
		by_off[i] = &f->tensors[i];
	qsort(by_off, n, sizeof *by_off, cmp_tensor_offset);

	qw_status st = QW_OK;
	bool tiled = by_off[0]->offset == 0;
	const qw_tensor *reach = NULL;                   /* tensor whose end is furthest */
	for (size_t i = 0; i < n && st == QW_OK; i++) {
		const qw_tensor *t = by_off[i];
		uint64_t end_prev = reach ? reach->offset + reach->nbytes : 0;
		if (reach && t->nbytes > 0 && t->offset < end_prev)
			st = qw_fail(err, QW_E_ST_OVERLAP,
				     "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap",
				     label, reach->name, (unsigned long long)reach->offset,
				     (unsigned long long)end_prev, t->name,
				     (unsigned long long)t->offset,
				     (unsigned long long)(t->offset + t->nbytes));
		if (reach && t->offset != end_prev)
			tiled = false;
		if (!reach || t->offset + t->nbytes >= end_prev)
			reach = t;
	}
	uint64_t data_end = reach->offset + reach->nbytes;
	if (st == QW_OK && data_end > f->data_size) {
		const qw_tensor *bad = NULL;             /* first tensor not wholly inside */
		for (size_t i = 0; i < n && !bad; i++)
			if (by_off[i]->offset + by_off[i]->nbytes > f->data_size)
				bad = by_off[i];
		if (tiled)
			st = qw_fail(err, QW_E_ST_TRUNCATED,
				     "%s: truncated: the header describes %llu bytes of tensor data "
				     "but the file holds %llu (%llu bytes missing, from tensor '%s' "
				     "on)\nHINT: the download or copy of this file did not finish",
				     label, (unsigned long long)data_end,
				     (unsigned long long)f->data_size,
				     (unsigned long long)(data_end - f->data_size), bad->name);
		else
			st = qw_fail(err, QW_E_ST_OFFSETS,
				     "%s: tensor '%s': data_offsets [%llu, %llu) run past the end "
				     "of the %llu-byte data section", label, bad->name,
				     (unsigned long long)bad->offset,
				     (unsigned long long)(bad->offset + bad->nbytes),
				     (unsigned long long)f->data_size);
	}
	free(by_off);
	return st;
}

static void free_tensors(qw_st_file *f)
{
	for (size_t i = 0; i < f->n_tensors; i++)
		free(f->tensors[i].name);
	free(f->tensors);
	f->tensors = NULL;
	f->n_tensors = 0;
}

/* Checks the parsed header root (a safetensors header object) and fills f's tensor table;
 * f->data_size must be set.  Tensor data points into f->data, or is NULL without it. */
static qw_status parse_header(qw_st_file *f, json_t *root, const char *label, qw_err *err)
{
	if (!json_is_object(root))
		return qw_fail(err, QW_E_ST_HEADER_JSON, "%s: header is JSON but not an object",
			       label);
	size_t cap = json_object_size(root);
	f->tensors = calloc(cap ? cap : 1, sizeof *f->tensors);
	if (!f->tensors)
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory for %zu tensors", label, cap);
	const char *key;
	json_t *val;
	json_object_foreach(root, key, val) {
		if (strcmp(key, "__metadata__") == 0) {
			const char *mk;
			json_t *mv;
			if (!json_is_object(val))
				return qw_fail(err, QW_E_ST_HEADER_JSON,
					       "%s: __metadata__ is not an object", label);
			json_object_foreach(val, mk, mv) {
				if (!json_is_string(mv))
					return qw_fail(err, QW_E_ST_HEADER_JSON,
						       "%s: __metadata__['%s'] is not a string", label,
						       mk);
			}
			continue;
		}
		qw_tensor *t = &f->tensors[f->n_tensors];
		QW_TRY(parse_entry(label, key, val, t, err));
		if (!(t->name = strdup(key)))
			return qw_fail(err, QW_E_NOMEM, "%s: out of memory", label);
		t->file = f;
		f->n_tensors++;
	}
	QW_TRY(check_ranges(f, label, err));
	for (size_t i = 0; i < f->n_tensors; i++)
		f->tensors[i].data = f->data ? f->data + f->tensors[i].offset : NULL;
	qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
	return QW_OK;
}

/* Parses and checks the header of the image in f->map-like memory [base, base+size). */
static qw_status parse_image(qw_st_file *f, const uint8_t *base, const char *label, qw_err *err)
{
	if (f->size < 8)
		return qw_fail(err, QW_E_ST_TRUNCATED,
			       "%s: truncated: %zu bytes, less than the 8-byte header length field",
			       label, f->size);
	uint64_t n = 0;
	for (int i = 7; i >= 0; i--)
		n = (n << 8) | base[i];
	f->header_len = n;
	if (n > QW_ST_MAX_HEADER)
		return qw_fail(err, QW_E_ST_HEADER_LEN,
			       "%s: header length %llu exceeds the %u-byte limit (not a safetensors "
			       "file, or corrupted)", label, (unsigned long long)n, QW_ST_MAX_HEADER);
	if (n > f->size - 8)
		return qw_fail(err, QW_E_ST_HEADER_LEN,
			       "%s: header length %llu runs past the end of the file (%zu bytes "
			       "after the length field)", label, (unsigned long long)n, f->size - 8);
	f->data = base + 8 + n;
	f->data_size = f->size - 8 - n;

	json_error_t jerr;
	json_t *root = json_loadb((const char *)base + 8, n, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return qw_fail(err, QW_E_ST_HEADER_JSON,
			       "%s: header is not valid JSON (byte %d of the header: %s)", label,
			       jerr.position, jerr.text);
	qw_status st = parse_header(f, root, label, err);
	json_decref(root);
	return st;
}

json_t *qw_st_header_entry(qw_dtype dtype, int ndim, const int64_t *shape, uint64_t begin,
			   uint64_t end)
{
	json_t *dims = json_array();
	for (int d = 0; d < ndim; d++)
		json_array_append_new(dims, json_integer(shape[d]));
	return json_pack("{s:s, s:o, s:[I, I]}", "dtype", qw_dtype_name(dtype), "shape", dims,
			 "data_offsets", (json_int_t)begin, (json_int_t)end);
}

// ---------------------------------------------------------------------------------------
// files and buffers

/* A new file record named label (fd -1, nothing mapped); NULL if out of memory. */
static qw_st_file *file_new(const char *label)
{
	qw_st_file *f = calloc(1, sizeof *f);
	if (f && !(f->path = strdup(label))) {
		free(f);
		return NULL;
	}
	if (f)
		f->fd = -1;
	return f;
}

/* Hands f out through *out if st is QW_OK, else closes it; returns st. */
static qw_status file_done(qw_st_file *f, qw_status st, qw_st_file **out)
{
	if (st != QW_OK)
		qw_st_close(f);
	else
		*out = f;
	return st;
}

qw_status qw_st_parse(const void *buf, size_t size, const char *label, qw_st_file **out,
		      qw_err *err)
{
	*out = NULL;
	qw_st_file *f = file_new(label);
	if (!f)
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory", label);
	f->size = size;
	return file_done(f, parse_image(f, buf, label, err), out);
}

qw_status qw_st_from_header(json_t *header, uint64_t data_size, const char *label,
			    qw_st_file **out, qw_err *err)
{
	*out = NULL;
	qw_st_file *f = file_new(label);
	if (!f)
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory", label);
	f->data_size = data_size;
	return file_done(f, parse_header(f, header, label, err), out);
}

qw_status qw_st_open(const char *path, qw_st_file **out, qw_err *err)
{
	*out = NULL;
	qw_st_file *f = file_new(path);
	if (!f)
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory", path);
	qw_status st = QW_OK;
	f->fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	if (f->fd < 0 || fstat(f->fd, &sb) != 0) {
		st = qw_fail(err, QW_E_IO, "%s: cannot open: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(sb.st_mode)) {
		st = qw_fail(err, QW_E_IO, "%s: not a regular file", path);
		goto fail;
	}
	f->size = (size_t)sb.st_size;
	if (f->size > 0) {
		f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
		if (f->map == MAP_FAILED) {
			f->map = NULL;
			st = qw_fail(err, QW_E_IO, "%s: cannot mmap %zu bytes: %s", path, f->size,
				     strerror(errno));
			goto fail;
		}
	}
	st = parse_image(f, f->map, path, err);
fail:
	return file_done(f, st, out);
}

const qw_tensor *qw_st_find(const qw_st_file *f, const char *name)
{
	qw_tensor key = {.name = (char *)name};
	return bsearch(&key, f->tensors, f->n_tensors, sizeof key, cmp_tensor_name);
}

void qw_st_close(qw_st_file *f)
{
	if (!f)
		return;
	free_tensors(f);
	if (f->map)
		munmap(f->map, f->size);
	if (f->fd >= 0)
		close(f->fd);
	free(f->path);
	free(f);
}
