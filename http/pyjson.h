/* pyjson.h - JSON text exactly as Python's json.dumps(x, ensure_ascii=False) writes it.
 *
 * Owns: qh_pyjson_dumps, the one way the front end turns a JSON value into the text that
 * goes into a prompt.  Qwen's chat template writes each tool with transformers' tojson
 * filter, which is json.dumps(..., ensure_ascii=False): ", " and ": " between items, keys in
 * the order given, non-ASCII characters as they are, control characters as \uXXXX (lower
 * case) except \b \f \n \r \t, and floats as Python's repr (the shortest digits that read
 * back to the same double; exponent form below 1e-4 and from 1e16, as "1e-05", "1.5e+16").
 * jansson's own writer differs on several of these (float digits, \u case, separators).
 */
#ifndef QW_HTTP_PYJSON_H
#define QW_HTTP_PYJSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Writes v into *out (malloc'd, NUL-terminated, *len bytes).  false when out of memory or
 * v holds a value JSON cannot (NaN, infinity). */
bool qh_pyjson_dumps(const json_t *v, char **out, size_t *len);

/* Python's repr() of a finite double into buf (at least 32 bytes). */
void qh_pyjson_float(double x, char *buf, size_t cap);

#endif
