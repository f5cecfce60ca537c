/* http_harness.h - what the HTTP API's tests share: a real qwen-http (build/bin/qwen-http)
 * started in front of a daemon (real or fake), and a small HTTP/1.1 client over plain
 * sockets that the tests control byte by byte (so they can send broken requests, read a
 * stream partway and hang up, or hold hundreds of connections at once).
 *
 * Owns: starting qwen-http on a free port (read from its log), stopping it (SIGTERM: it must
 * exit 0), its log (printed when a test fails), alone or in front of a fake daemon;
 * requests and responses (chunked bodies decoded), Server-Sent Events split into their
 * data, many requests at once; the Python checks (http_checks.py).
 */
#ifndef QW_TESTS_HTTP_HARNESS_H
#define QW_TESTS_HTTP_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "tests/unit/fake_qwend.h"
#include "tests/unit/helpers.h"

typedef struct qhttp {
	pid_t pid;
	char *dir;                  /* scratch: the log */
	char log[1100];
	int port;
} qhttp;

/* Starts qwen-http --socket endpoint --port 0 ARGS... (args NULL-terminated, may be NULL)
 * and waits until it listens. */
void qhttp_start(qhttp *h, const char *endpoint, const char *const *args);
/* Runs qwen-http with args (no --socket or --port added) until it exits (up to 10 s);
 * returns its exit status and output (malloc'd). */
int qhttp_run_to_exit(const char *const *args, char **out);
/* SIGTERM; it must exit 0 within 30 s. */
void qhttp_stop(qhttp *h);
void qhttp_dump_log(const qhttp *h);

typedef struct http_resp {
	int status;                 /* 0: no response (the connection closed first) */
	char *head;                 /* status line and headers (malloc'd) */
	char *body;                 /* decoded body, NUL-terminated (malloc'd) */
	size_t body_len;
} http_resp;

void http_resp_free(http_resp *r);
/* The value of header name (case-insensitive) into a static buffer, or NULL. */
const char *http_header(const http_resp *r, const char *name);
/* The body as JSON (fails the test if it is not). */
json_t *http_json(const http_resp *r);

/* A request (Connection: close) and its whole response.  headers: extra header lines,
 * each ending "\r\n", or NULL. */
void http_call(int port, const char *method, const char *path, const char *headers,
	       const char *body, http_resp *out);
/* POST path with a JSON body. */
void http_post(int port, const char *path, const char *body, http_resp *out);
/* Raw bytes as the request; the raw response (malloc'd). */
char *http_raw(int port, const void *bytes, size_t len);
/* Parses a raw response into out. */
void http_parse(const char *raw, size_t len, http_resp *out);

/* A connected socket to the server. */
int http_connect(int port);

/* The data of each event of a Server-Sent Events body (a NULL-terminated, malloc'd list of
 * malloc'd strings; free with sse_free); "[DONE]" included. */
char **sse_events(const char *body);
void sse_free(char **events);

/* n POSTs to path at once, one connection each, polled together; out[i] for body i. */
void http_many(int port, const char *path, const char *const *bodies, int n, http_resp *out);

/* qwen-http in front of a scripted fake daemon (fake_qwend.h), both in a scratch
 * directory: started (qwen-http with args, NULL-terminated, may be NULL) and stopped. */
typedef struct http_world {
	char *dir;
	pid_t fake;
	qhttp h;
} http_world;

void http_world_start(http_world *w, fake_fn script, const char *const *args);
void http_world_stop(http_world *w);

/* tests/unit/http_checks.py ARGS run by python3 (or Debian's /usr/bin/python3): its exit
 * status, 77 when the Python package it needs is missing from both, and its output
 * (malloc'd). */
int http_checks(char **out, const char *args);

/* A data: URL of bytes (malloc'd). */
char *data_url(const void *bytes, size_t n, const char *mime);

#endif
