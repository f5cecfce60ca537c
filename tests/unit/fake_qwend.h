/* fake_qwend.h - a stand-in for qwend that tests start in a child process: a ROUTER
 * socket bound to ipc://DIR/qwend.sock that hands every request to a scripted handler.
 *
 * Owns: the child (fork, bind, serve, exit), saving each request's raw bytes as DIR/req-N.bin
 * so the test can decode what a client sent (fake_request), and the replies a handler sends
 * back to the client whose request it is answering.  The parent never touches ZeroMQ, so
 * the fork is safe.
 */
#ifndef QW_TESTS_FAKE_QWEND_H
#define QW_TESTS_FAKE_QWEND_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ipc/protocol.h"

typedef struct fake {
	void *zctx;                  /* the child's ZeroMQ context */
	void *sock;                  /* the ROUTER socket */
	char peer[256];              /* routing id of the client being answered */
	size_t peer_len;
	const char *dir;             /* where the socket and req-N.bin files are */
	int n;                       /* requests received before this one */
	uint64_t next_id;            /* the id the next accepted request gets */
	void *user;                  /* the test's own data (inherited through the fork) */
} fake;

/* Answers request r (the n-th, from 0); returns false to stop serving. */
typedef bool (*fake_fn)(fake *f, const qw_request *r);

/* Forks the fake: it serves up to max requests with fn, then exits 0 (a child alarm ends it
 * after 30 s whatever happens).  Returns once the socket is there. */
pid_t fake_start(const char *dir, fake_fn fn, int max, void *user);

/* Waits (up to 10 s, then kills it) for the fake; returns its exit status. */
int fake_end(pid_t pid);

/* "ipc://DIR/qwend.sock" in a static buffer. */
const char *fake_endpoint(const char *dir);

/* Decodes DIR/req-N.bin into *r (free with qw_request_free); fails the test when missing. */
void fake_request(const char *dir, int n, qw_request *r);

/* The number of req-N.bin files in dir. */
int fake_count(const char *dir);

/* Replies to the client of the request being answered. */
void fake_reply(fake *f, const qw_reply *r);
void fake_accepted(fake *f, uint64_t id);
void fake_chunk(fake *f, uint64_t id, const char *text, const char *reasoning,
		const int32_t *ids, int n_ids);
void fake_done(fake *f, uint64_t id, const char *finish, int prompt_tokens,
	       int completion_tokens, double ttft_ms, double tokens_per_s);
void fake_error(fake *f, uint64_t id, const char *code, const char *message);
void fake_status(fake *f, const char *json);
void fake_ok(fake *f, const char *message);

#endif
