/* reply.h - what the front end answers, as OpenAI's clients expect it.
 *
 * Owns: qh_error (an HTTP status, the field at fault, an error code and a message) and its
 * JSON body {"error": {"message", "type", "param", "code"}}, the error type and code each
 * status gets, and the translation of qwend's error codes to HTTP (bad_request 400,
 * too_large 413, busy 429, not_ready 503, internal 500; a qwend that cannot be reached 503).
 */
#ifndef QW_HTTP_REPLY_H
#define QW_HTTP_REPLY_H

#include <stdbool.h>

typedef struct qh_error {
	int status;               /* HTTP status */
	char param[128];          /* the request field at fault, "" for none */
	char code[40];            /* "" for the status's default */
	char message[1536];
} qh_error;

/* Fills e and returns false (so a parser can `return qh_fail(...)`). */
bool qh_fail(qh_error *e, int status, const char *param, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* OpenAI's error type for a status: invalid_request_error, authentication_error, ... */
const char *qh_error_type(int status);

/* The code an error carries: e->code, else the status's own (bad_request, invalid_api_key,
 * not_found, too_large, busy, internal, not_ready), else NULL. */
const char *qh_error_code(const qh_error *e);

/* {"error": {...}} as compact JSON (malloc'd). */
char *qh_error_json(const qh_error *e);

/* An error qwend answered (its code and message) as an HTTP error. */
void qh_error_from_qwend(qh_error *e, const char *code, const char *message);

/* Seconds a client should wait before trying again (Retry-After), or 0 for none. */
int qh_retry_after(const qh_error *e);

#endif
