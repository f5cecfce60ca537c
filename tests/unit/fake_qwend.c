/* fake_qwend.c - a scripted stand-in for qwend in a child process.  See fake_qwend.h. */
#include "tests/unit/fake_qwend.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tests/unit/helpers.h"

const char *fake_endpoint(const char *dir)
{
	static char buf[4200];
	snprintf(buf, sizeof buf, "ipc://%s/qwend.sock", dir);
	return buf;
}

static void save(const fake *f, const void *data, size_t len)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/req-%d.bin", f->dir, f->n);
	FILE *out = fopen(path, "wb");
	if (out) {
		fwrite(data, 1, len, out);
		fclose(out);
	}
}

static void serve(const char *dir, fake_fn fn, int max, void *user)
{
	alarm(30);
	fake f = {.dir = dir, .next_id = 7, .user = user};
	int linger = 2000;
	f.zctx = zmq_ctx_new();
	f.sock = zmq_socket(f.zctx, ZMQ_ROUTER);
	zmq_setsockopt(f.sock, ZMQ_LINGER, &linger, sizeof linger);
	if (zmq_bind(f.sock, fake_endpoint(dir)) != 0)
		_exit(90);
	bool more = true;
	while (more && f.n < max) {
		int len = zmq_recv(f.sock, f.peer, sizeof f.peer, 0);
		if (len < 0) {
			if (zmq_errno() == EINTR)
				continue;
			_exit(91);
		}
		f.peer_len = (size_t)len;
		zmq_msg_t msg;
		zmq_msg_init(&msg);
		if (zmq_msg_recv(&msg, f.sock, 0) < 0)
			_exit(92);
		save(&f, zmq_msg_data(&msg), zmq_msg_size(&msg));
		qw_request r;
		qw_err err = {0};
		qw_limits lim = QW_LIMITS_DEFAULT;
		if (qw_request_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), &lim, &r,
				      &err) != QW_OK) {
			fake_error(&f, 0, "bad_request", err.msg);
		} else {
			more = fn(&f, &r);
			qw_request_free(&r);
		}
		zmq_msg_close(&msg);
		f.n++;
	}
	zmq_close(f.sock);
	zmq_ctx_term(f.zctx);
	_exit(0);
}

pid_t fake_start(const char *dir, fake_fn fn, int max, void *user)
{
	char sock[4200];
	snprintf(sock, sizeof sock, "%s/qwend.sock", dir);
	/* a fake before this one may have left its socket file (libzmq removes it from its I/O
	 * thread, which _exit can beat): the wait below is then for this fake's own */
	unlink(sock);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		serve(dir, fn, max, user);
	struct stat st;
	for (int i = 0; i < 500 && stat(sock, &st) != 0; i++)
		usleep(10000);
	assert_int_equal(stat(sock, &st), 0);
	return pid;
}

int fake_end(pid_t pid)
{
	int status = 0;
	for (int i = 0; i < 1000; i++) {
		pid_t got = waitpid(pid, &status, WNOHANG);
		if (got == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return 137;
}

void fake_request(const char *dir, int n, qw_request *r)
{
	char name[64];
	size_t len;
	snprintf(name, sizeof name, "req-%d.bin", n);
	char *data = read_file(path_in(dir, name), &len);
	qw_err err = {0};
	qw_limits lim = QW_LIMITS_DEFAULT;
	if (qw_request_decode(data, len, &lim, r, &err) != QW_OK)
		fail_msg("request %d does not decode: %s", n, err.msg);
	free(data);
}

int fake_count(const char *dir)
{
	int n = 0;
	char name[64];
	struct stat st;
	for (;; n++) {
		snprintf(name, sizeof name, "req-%d.bin", n);
		if (stat(path_in(dir, name), &st) != 0)
			return n;
	}
}

void fake_reply(fake *f, const qw_reply *r)
{
	char *buf;
	size_t len;
	qw_err err = {0};
	if (qw_reply_encode(r, &buf, &len, &err) != QW_OK)
		_exit(93);
	zmq_send(f->sock, f->peer, f->peer_len, ZMQ_SNDMORE);
	zmq_send(f->sock, buf, len, 0);
	free(buf);
}

void fake_accepted(fake *f, uint64_t id)
{
	fake_reply(f, &(qw_reply){.type = QW_REPLY_ACCEPTED, .request = id});
}

void fake_chunk(fake *f, uint64_t id, const char *text, const char *reasoning,
		const int32_t *ids, int n_ids)
{
	fake_reply(f, &(qw_reply){.type = QW_REPLY_CHUNK, .request = id, .text = text,
				  .text_len = text ? strlen(text) : 0, .reasoning = reasoning,
				  .reasoning_len = reasoning ? strlen(reasoning) : 0,
				  .token_ids = ids, .n_token_ids = n_ids});
}

void fake_done(fake *f, uint64_t id, const char *finish, int prompt_tokens,
	       int completion_tokens, double ttft_ms, double tokens_per_s)
{
	fake_reply(f, &(qw_reply){.type = QW_REPLY_DONE, .request = id, .finish_reason = finish,
				  .prompt_tokens = prompt_tokens,
				  .completion_tokens = completion_tokens, .ttft_ms = ttft_ms,
				  .tokens_per_s = tokens_per_s});
}

void fake_error(fake *f, uint64_t id, const char *code, const char *message)
{
	fake_reply(f, &(qw_reply){.type = QW_REPLY_ERROR, .request = id, .code = code,
				  .message = message});
}

void fake_status(fake *f, const char *json)
{
	fake_reply(f, &(qw_reply){.type = QW_REPLY_STATUS, .json = json});
}

void fake_ok(fake *f, const char *message)
{
	fake_reply(f, &(qw_reply){.type = QW_REPLY_OK, .message = message});
}
