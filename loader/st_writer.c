/* st_writer.c - write a safetensors file.  See st_writer.h. */
#include "loader/st_writer.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint64_t qw_st_entry_bytes(const qw_st_entry *e)
{
	uint64_t n = qw_dtype_size(e->dtype);
	for (int i = 0; i < e->ndim; i++)
		n *= (uint64_t)e->shape[i];
	return n;
}

static char *make_header(const qw_st_entry *entries, size_t n, size_t *len)
{
	json_t *root = json_object();
	json_object_set_new(root, "__metadata__", json_pack("{s:s}", "format", "pt"));
	uint64_t offset = 0;
	for (size_t i = 0; i < n; i++) {
		const qw_st_entry *e = &entries[i];
		uint64_t bytes = qw_st_entry_bytes(e);
		json_object_set_new(root, e->name, qw_st_header_entry(e->dtype, e->ndim, e->shape,
								      offset, offset + bytes));
		offset += bytes;
	}
	char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(root);
	if (!text)
		return NULL;
	size_t raw = strlen(text), padded = (raw + 7) & ~(size_t)7;
	char *out = realloc(text, padded + 1);
	if (!out) {
		free(text);
		return NULL;
	}
	memset(out + raw, ' ', padded - raw);   /* the format pads with spaces */
	out[padded] = '\0';
	*len = padded;
	return out;
}

qw_status qw_st_write(const char *path, const qw_st_entry *entries, size_t n, qw_st_fill_fn fill,
		      void *ctx, qw_err *err)
{
	char tmp[4096];
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
		return qw_fail(err, QW_E_ARG, "%s: path too long", path);
	size_t hlen = 0;
	char *header = make_header(entries, n, &hlen);
	if (!header)
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory for the header", path);
	qw_status st = QW_OK;
	void *buf = NULL;
	FILE *f = fopen(tmp, "wb");
	if (!f) {
		st = qw_fail(err, QW_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
		goto out;
	}
	unsigned char lenbytes[8];
	for (int i = 0; i < 8; i++)
		lenbytes[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
	if (fwrite(lenbytes, 1, 8, f) != 8 || fwrite(header, 1, hlen, f) != hlen)
		goto io;
	for (size_t i = 0; i < n; i++) {
		uint64_t bytes = qw_st_entry_bytes(&entries[i]);
		void *grown = realloc(buf, bytes ? bytes : 1);
		if (!grown) {
			st = qw_fail(err, QW_E_NOMEM, "%s: out of memory for tensor '%s' (%llu bytes)",
				     path, entries[i].name, (unsigned long long)bytes);
			goto out;
		}
		buf = grown;
		if ((st = fill(ctx, i, buf, bytes, err)) != QW_OK)
			goto out;
		if (fwrite(buf, 1, bytes, f) != bytes)
			goto io;
	}
	if (fflush(f) != 0 || fsync(fileno(f)) != 0)
		goto io;
	if (fclose(f) != 0) {
		f = NULL;
		goto io;
	}
	f = NULL;
	if (rename(tmp, path) != 0)
		st = qw_fail(err, QW_E_IO, "%s: cannot rename into place: %s", path, strerror(errno));
	goto out;
io:
	st = qw_fail(err, QW_E_IO, "%s: write failed: %s", tmp, strerror(errno));
out:
	if (f)
		fclose(f);
	if (st != QW_OK)
		unlink(tmp);
	free(buf);
	free(header);
	return st;
}
