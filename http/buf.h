/* buf.h - a growing byte buffer, the front end's one way to build text.
 *
 * Owns: qh_buf (bytes, always NUL-terminated once anything was added; a failed growth sets
 * oom and later appends do nothing, so a caller checks once at the end).
 */
#ifndef QW_HTTP_BUF_H
#define QW_HTTP_BUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct qh_buf {
	char *p;
	size_t n, cap;
	bool oom;                 /* an append failed; the contents are incomplete */
} qh_buf;

void qh_buf_add(qh_buf *b, const void *data, size_t len);
void qh_buf_str(qh_buf *b, const char *s);
void qh_buf_printf(qh_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void qh_buf_consume(qh_buf *b, size_t n);
void qh_buf_free(qh_buf *b);

#endif
