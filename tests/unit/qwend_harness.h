/* qwend_harness.h - what the daemon's tests share: a real qwend (build/bin/qwend) started
 * in a scratch directory and talked to over its real socket.
 *
 * Owns: starting qwend (its output in DIR/qwend.log, printed when a test fails), waiting
 * for it to be ready, its status as JSON, stopping it (SIGTERM, then it must exit 0 and
 * remove its socket); running requests through the client library (one at a time, or many
 * clients at once) and collecting what comes back; raw frames for malformed requests; the
 * HF fixtures' token ids and image.
 */
#ifndef QW_TESTS_QWEND_HARNESS_H
#define QW_TESTS_QWEND_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cli/client.h"
#include "ipc/protocol.h"
#include "tests/unit/helpers.h"

typedef struct qwend {
	pid_t pid;
	char *dir;                 /* scratch: the socket and the log */
	char endpoint[1100];
	char socket_path[1100];
	char log[1100];
} qwend;

/* Starts qwend --model MODEL --socket ipc://DIR/q.sock ARGS... --device cpu (args
 * NULL-terminated; env NAME=VALUE entries, NULL-terminated, may be NULL) and, with
 * wait_ready, waits until its status says ready.  With QWEND_TEST_DEVICE=cuda in the
 * environment it runs on the CUDA backend instead, --stages S becoming S stages on GPU 0. */
void qwend_start(qwend *d, const char *model, const char *const *args, const char *const *env,
		 bool wait_ready);

/* The same at another endpoint (a tcp one: start-up is watched through status). */
void qwend_start_at(qwend *d, const char *model, const char *endpoint,
		    const char *const *args, const char *const *env, bool wait_ready);

/* Runs qwend with args (no --socket added) to its exit, up to 30 s; returns its wait
 * status and its output (malloc'd) in *log. */
int qwend_run_to_exit(const char *const *args, char **log);

/* The status JSON (json_decref it). */
json_t *qwend_status(qwend *d);

/* status.section.key, an integer (0 when missing). */
json_int_t qwend_status_int(qwend *d, const char *section, const char *key);

/* Waits (up to timeout_s) until status.path (e.g. "kv.blocks_used") equals want. */
void qwend_wait_for(qwend *d, const char *section, const char *key, json_int_t want,
		    double timeout_s);
void qwend_wait_state(qwend *d, const char *state, double timeout_s);
/* Waits (up to timeout_s) until the daemon has counted its restart number `restarts` and is
 * ready again. */
void qwend_wait_restarted(qwend *d, json_int_t restarts, double timeout_s);

/* SIGTERM; it must exit 0 within 30 s and leave no socket file. */
void qwend_stop(qwend *d);

/* Waits up to timeout_s for the daemon to exit on its own; returns its wait status. */
int qwend_wait_exit(qwend *d, double timeout_s);

/* Prints the daemon's log (after a failure). */
void qwend_dump_log(const qwend *d);

/* What a request got back. */
typedef struct outcome {
	uint64_t id;
	int32_t tokens[4096];
	int n_tokens;
	char *text;                /* answer (malloc'd) */
	char *reasoning;
	int chunks;
	char finish[16];           /* done: stop, length, cancelled; "" otherwise */
	char code[32];             /* error: its code; "" otherwise */
	char message[1024];
	bool closed;               /* the connection ended before done or error */
} outcome;

void outcome_free(outcome *o);

/* Fails unless o ended without an error and with exactly the n tokens of want (from `whose`,
 * e.g. "HF"), printing both lists; what names the request. */
void expect_tokens(const outcome *o, const int32_t *want, int n, const char *whose,
		   const char *what);

/* Runs r to its end on a client of its own. */
void run_request(const char *endpoint, const qw_request *r, outcome *o);

/* Runs n requests at once, one client each, polled together. */
void run_concurrently(const char *endpoint, const qw_request *reqs, int n, outcome *out);

/* A request of token ids (greedy, max_tokens), images optional. */
qw_request token_request(const int32_t *ids, int n, int max_tokens, const qw_item *images,
			 int n_images);

/* One client, reply by reply: a client of d; the next reply, which must be of type t; r
 * submitted and streaming (accepted, its first chunk read; returns its id); the replies to
 * the end of the request, collected into o. */
void open_client(qw_client *c, const qwend *d);
void expect_reply(qw_client *c, qw_reply_type t, qw_reply *r);
uint64_t start_streaming(qw_client *c, const qw_request *r);
void read_to_end(qw_client *c, outcome *o);

/* Sends raw bytes as one message on a fresh DEALER socket and decodes the reply; false if
 * none came within timeout_ms (the daemon dropped the connection, say). */
bool raw_exchange(const char *endpoint, const void *bytes, size_t len, int frames,
		  qw_reply *reply, int timeout_ms);

/* qwenctl --socket (d's) submit ARGS --json: its one JSON object (fails the test unless it
 * exits 0 with one; json_decref it). */
json_t *qwenctl_submit_json(const qwend *d, const char *args);

/* The fixtures: a case's token ids (int64 in the file, int32 here; malloc'd). */
int32_t *fixture_ids(const char *model, const char *key, int *n);
/* The fixture image as a PNG (free m.p). */
membuf fixture_png(const char *model);

/* The demo model's cache for this test program (QWEN_DEMO_DIR), made once. */
void use_demo_cache(void);

#endif
