/* server_clients.c - qwend and its clients: the socket, requests in, replies out, and
 * clients that go away.  See server.h.
 *
 * Disconnects: the ROUTER socket's monitor reports a DISCONNECTED event with the
 * connection's file descriptor, and every request remembers the descriptor its submit came
 * through (ZMQ_SRCFD); the requests of a closed connection are cancelled at once.  A
 * descriptor may be reused by a new connection, but only after the old one's event was
 * queued, so the monitor is drained before each incoming message is read.  A reply that
 * cannot be routed (the client is gone) or queued (the client stopped reading) cancels the
 * request too. */
#include "daemon/server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "ipc/endpoint.h"
#include "loader/clock.h"

#define MONITOR_ENDPOINT "inproc://qwend-monitor"

// ---------------------------------------------------------------------------------------
// the socket

/* An ipc socket file belongs to the qwend holding the lock beside it. */
static qw_status lock_socket(qw_server *sv, qw_err *err)
{
	char lock[1200];
	snprintf(lock, sizeof lock, "%s.lock", sv->socket_path);
	sv->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (sv->lock_fd < 0)
		return qw_fail(err, QW_E_IO, "cannot open %s: %s (HINT: does the directory exist, "
			       "and may qwend write there? --socket chooses another place)", lock,
			       strerror(errno));
	if (flock(sv->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		close(sv->lock_fd);
		sv->lock_fd = -1;
		return qw_fail(err, QW_E_IO, "another qwend serves %s (it holds %s)", sv->endpoint,
			       lock);
	}
	unlink(sv->socket_path);   /* a stale socket of a qwend that died */
	return QW_OK;
}

qw_status qw_server_open_socket(qw_server *sv, qw_err *err)
{
	char requested[1100];
	qw_status st;
	if (sv->set.socket[0])
		qw_endpoint_from_arg(sv->set.socket, requested, sizeof requested);   /* fits: 1024 */
	else {
		qw_endpoint_env env = qw_endpoint_env_current();
		if ((st = qw_endpoint_daemon_default(&env, requested, sizeof requested, err)))
			return st;
	}
	if ((st = qw_endpoint_check_bind(requested, !strcmp(sv->set.allow_remote, "yes"),
					 sv->endpoint, sizeof sv->endpoint, err)) != QW_OK)
		return st;
	if (qw_endpoint_ipc_path(sv->endpoint, sv->socket_path, sizeof sv->socket_path) &&
	    (st = lock_socket(sv, err)) != QW_OK) {
		sv->socket_path[0] = '\0';
		return st;
	}
	sv->zctx = zmq_ctx_new();
	sv->router = sv->zctx ? zmq_socket(sv->zctx, ZMQ_ROUTER) : NULL;
	if (!sv->router)
		return qw_fail(err, QW_E_IO, "zmq: %s", zmq_strerror(errno));
	int one = 1, zero = 0, sndhwm = 100000, rcvhwm = 10000;
	int64_t maxmsg = sv->set.max_request_bytes;
	zmq_setsockopt(sv->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
	zmq_setsockopt(sv->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
	zmq_setsockopt(sv->router, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm);
	zmq_setsockopt(sv->router, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
	zmq_setsockopt(sv->router, ZMQ_LINGER, &zero, sizeof zero);
	if (zmq_socket_monitor(sv->router, MONITOR_ENDPOINT,
			       ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0 ||
	    !(sv->monitor = zmq_socket(sv->zctx, ZMQ_PAIR)) ||
	    zmq_setsockopt(sv->monitor, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
	    zmq_connect(sv->monitor, MONITOR_ENDPOINT) != 0)
		return qw_fail(err, QW_E_IO, "zmq monitor: %s", zmq_strerror(errno));
	if (zmq_bind(sv->router, sv->endpoint) != 0)
		return qw_fail(err, QW_E_IO, "cannot bind %s: %s", sv->endpoint, zmq_strerror(errno));
	/* the owner and the group may talk to qwend (systemd/qwend.service sets the group) */
	if (sv->socket_path[0] && chmod(sv->socket_path, 0660) != 0)
		return qw_fail(err, QW_E_IO, "chmod %s: %s", sv->socket_path, strerror(errno));
	qw_endpoint_reach reach = qw_endpoint_access(sv->endpoint);
	if (reach == QW_REACH_FILE)
		qw_log(QW_LOG_INFO, "listening on %s", sv->endpoint);
	else
		qw_log(QW_LOG_WARN, "listening on %s, which has no access control: every user of "
		       "this machine%s may submit requests and shut qwend down (allow-remote yes)",
		       sv->endpoint, reach == QW_REACH_NETWORK ? " and every machine that reaches it"
							    : "");
	return QW_OK;
}

void qw_server_close_socket(qw_server *sv)
{
	/* monitoring stops before its reader closes: an event sent (blocking, under the
	 * monitor's lock) to a reader already gone would wait forever, and so would this stop */
	if (sv->router)
		zmq_socket_monitor(sv->router, NULL, 0);
	if (sv->monitor)
		zmq_close(sv->monitor);
	if (sv->router)
		zmq_close(sv->router);
	if (sv->zctx)
		zmq_ctx_term(sv->zctx);
	sv->monitor = sv->router = sv->zctx = NULL;
	if (sv->socket_path[0] && sv->lock_fd >= 0)
		unlink(sv->socket_path);
	if (sv->lock_fd >= 0)
		close(sv->lock_fd);
	sv->lock_fd = -1;
}

// ---------------------------------------------------------------------------------------
// replies

/* false when the client cannot be reached (gone, or not reading). */
static bool send_reply(qw_server *sv, const uint8_t *peer, size_t peer_len, const qw_reply *r)
{
	char *buf;
	size_t len;
	if (qw_reply_encode(r, &buf, &len, NULL) != QW_OK)
		return false;
	bool ok = zmq_send(sv->router, peer, peer_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
		  zmq_send(sv->router, buf, len, ZMQ_DONTWAIT) >= 0;
	free(buf);
	return ok;
}

static void reply_error(qw_server *sv, const uint8_t *peer, size_t peer_len, uint64_t id,
			const char *code, const char *message)
{
	qw_reply r = {.type = QW_REPLY_ERROR, .request = id, .code = code, .message = message};
	send_reply(sv, peer, peer_len, &r);
}

/* A request refused before it was accepted: answered, counted by its code. */
static void refuse(qw_server *sv, const uint8_t *peer, size_t peer_len, qw_error_code code,
		   const char *message)
{
	qw_log(QW_LOG_DEBUG, "refused a request: %s: %s", qw_error_code_name(code), message);
	reply_error(sv, peer, peer_len, 0, qw_error_code_name(code), message);
	sv->refused[code]++;
}

static void unlink_live(qw_server *sv, qw_live *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		sv->live = r->next;
	if (r->next)
		r->next->prev = r->prev;
	sv->n_live--;
}

static void free_live(qw_server *sv, qw_live *r)
{
	qw_server_forget_images(r);
	if (sv->have_sched && r->seq.id && qw_sched_find(&sv->sched, r->seq.id) == &r->seq)
		qw_sched_remove(&sv->sched, &r->seq);
	else
		qw_request_seq_free(&r->seq);   /* it never reached the scheduler */
	unlink_live(sv, r);
	qw_output_free(&r->out);
	free(r->answer.p);
	free(r->reasoning.p);
	free(r->tokens);
	free(r->lps);
	free(r->tops);
	free(r);
}

/* A chunk with what r holds; false when the client is gone. */
static bool send_chunk(qw_server *sv, qw_live *r)
{
	if (!r->answer.n && !r->reasoning.n && !r->n_tokens)
		return true;
	qw_reply c = {.type = QW_REPLY_CHUNK, .request = r->id, .text = r->answer.p,
		      .text_len = r->answer.n, .reasoning = r->reasoning.p,
		      .reasoning_len = r->reasoning.n, .token_ids = r->tokens,
		      .n_token_ids = r->n_tokens};
	if (r->logprobs) {
		/* each token's most likely ones: its run of tops, in order */
		for (int i = 0, at = 0; i < r->n_tokens; at += r->lps[i++].n_top)
			r->lps[i].top = r->tops + at;
		c.logprobs = r->lps;
	}
	bool ok = send_reply(sv, r->peer, r->peer_len, &c);
	r->answer.n = r->reasoning.n = 0;
	r->n_tokens = r->n_tops = 0;
	r->dirty = false;
	return ok;
}

static void client_gone(qw_server *sv, qw_live *r, const char *how)
{
	qw_log(QW_LOG_INFO, "request %llu: its client %s; cancelled", (unsigned long long)r->id,
	       how);
	sv->cancelled++;
	free_live(sv, r);
}

void qw_server_end(qw_server *sv, qw_live *r, const char *code, const char *message,
		   const char *reason)
{
	if (code) {
		qw_log(QW_LOG_INFO, "request %llu: failed (%s) after %d tokens: %s",
		       (unsigned long long)r->id, code, r->out.generated, message);
		reply_error(sv, r->peer, r->peer_len, r->id, code, message);
		sv->failed++;
	} else {
		double now = qw_seconds_now(), gen = r->t_first > 0 ? now - r->t_first : 0;
		int n = r->out.generated;
		qw_reply d = {.type = QW_REPLY_DONE, .request = r->id, .finish_reason = reason,
			      .prompt_tokens = r->n_prompt, .completion_tokens = n,
			      .ttft_ms = r->t_first > 0 ? 1000.0 * (r->t_first - r->t_submit) : 0,
			      .tokens_per_s = n > 1 && gen > 0 ? (n - 1) / gen : 0};
		/* the line qwenctl prints for it, in the daemon's log */
		qw_log(QW_LOG_INFO, "request %llu: prompt %d tokens, completion %d tokens, TTFT "
		       "%.1f ms, %.1f tokens/s, finish %s", (unsigned long long)r->id, d.prompt_tokens,
		       n, d.ttft_ms, d.tokens_per_s, reason);
		if (send_chunk(sv, r))
			send_reply(sv, r->peer, r->peer_len, &d);
		if (!strcmp(reason, "cancelled"))
			sv->cancelled++;
		else
			sv->served++;
	}
	free_live(sv, r);
}

void qw_server_flush(qw_server *sv)
{
	for (qw_live *r = sv->live, *next; r; r = next) {
		next = r->next;
		if (r->dirty && r->stream && !send_chunk(sv, r))
			client_gone(sv, r, "is gone or stopped reading");
	}
}

/* Room for one more token (and its log-probabilities, n_top of the most likely ones). */
static bool token_room(qw_live *r, int n_top)
{
	if (r->n_tokens == r->cap_tokens) {
		int cap = r->cap_tokens ? 2 * r->cap_tokens : 16;
		int32_t *g = realloc(r->tokens, (size_t)cap * sizeof *g);
		if (!g)
			return false;
		r->tokens = g;
		if (r->logprobs) {
			qw_reply_logprob *l = realloc(r->lps, (size_t)cap * sizeof *l);
			if (!l)
				return false;
			r->lps = l;
		}
		r->cap_tokens = cap;
	}
	if (r->n_tops + n_top > r->cap_tops) {
		int cap = r->cap_tops ? 2 * r->cap_tops : 64;
		while (cap < r->n_tops + n_top)
			cap *= 2;
		qw_reply_top *t = realloc(r->tops, (size_t)cap * sizeof *t);
		if (!t)
			return false;
		r->tops = t;
		r->cap_tops = cap;
	}
	return true;
}

/* What a token stands for, for a reply's log-probabilities (NULL without a tokenizer). */
static const char *token_bytes(const qw_server *sv, int32_t id, size_t *len)
{
	*len = 0;
	return sv->tok ? (const char *)qw_tokenizer_bytes(sv->tok, id, len) : NULL;
}

void qw_server_on_token(void *ctx, qw_seq *seq, int32_t token, const qw_sample_logprobs *lp)
{
	qw_server *sv = ctx;
	qw_live *r = seq->owner;
	if (r->t_first == 0)
		r->t_first = qw_seconds_now();
	if (r->logprobs && !lp) {
		qw_server_end(sv, r, "internal", "the pipeline sampled a token without the "
			      "log-probabilities asked for", NULL);
		return;
	}
	int n_top = r->logprobs ? lp->n_top : 0;
	if (!token_room(r, n_top)) {
		qw_server_end(sv, r, "internal", "out of memory", NULL);
		return;
	}
	if (r->logprobs) {
		qw_reply_logprob *e = &r->lps[r->n_tokens];
		*e = (qw_reply_logprob){.logprob = lp->logprob, .n_top = n_top};
		e->bytes = token_bytes(sv, token, &e->bytes_len);
		for (int k = 0; k < n_top; k++) {
			qw_reply_top *t = &r->tops[r->n_tops++];
			*t = (qw_reply_top){.id = lp->top_ids[k], .logprob = lp->top_logprobs[k]};
			t->bytes = token_bytes(sv, t->id, &t->bytes_len);
		}
	}
	r->tokens[r->n_tokens++] = token;
	r->dirty = true;
	if (qw_output_push(&r->out, token, &r->answer, &r->reasoning))
		qw_server_end(sv, r, NULL, NULL,
			      r->out.finish == QW_FINISH_LENGTH ? "length" : "stop");
}

// ---------------------------------------------------------------------------------------
// requests

void qw_server_refuse(qw_server *sv, qw_live *r, qw_error_code code, const char *message)
{
	refuse(sv, r->peer, r->peer_len, code, message);
	free_live(sv, r);
}

void qw_server_admit(qw_server *sv, qw_live *r)
{
	qw_err err = {0};
	qw_status st = qw_sched_submit(&sv->sched, &r->seq, r->out.max_new, &err);
	if (st != QW_OK) {
		qw_server_refuse(sv, r, qw_error_code_of(st), err.msg);
		return;
	}
	qw_reply a = {.type = QW_REPLY_ACCEPTED, .request = r->id};
	if (r->prompt_ids) {
		a.token_ids = r->seq.tokens;
		a.n_token_ids = r->n_prompt;
	}
	if (!send_reply(sv, r->peer, r->peer_len, &a))
		client_gone(sv, r, "is gone");
}

static void submit(qw_server *sv, const qw_request *req, const uint8_t *peer, size_t peer_len,
		   int fd)
{
	char why[160];
	if (qw_server_not_ready(sv, why, sizeof why)) {
		refuse(sv, peer, peer_len, QW_CODE_NOT_READY, why);
		return;
	}
	qw_live *r = calloc(1, sizeof *r);
	if (!r) {
		refuse(sv, peer, peer_len, QW_CODE_INTERNAL, "out of memory");
		return;
	}
	r->id = sv->next_id++;
	r->t_submit = qw_seconds_now();
	memcpy(r->peer, peer, peer_len);
	r->peer_len = peer_len;
	r->peer_fd = fd;
	r->stream = req->stream;
	r->prompt_ids = req->prompt_ids;
	r->logprobs = req->logprobs;
	qw_err err = {0};
	/* everything but the images' pixels, which are weighed from their headers: a request
	 * past a limit is refused before any image is decoded */
	qw_status st = qw_request_prepare(&sv->rc, req, r->id, &r->seq, &r->out, &err);
	if (st == QW_OK) {
		r->seq.owner = r;
		r->n_prompt = r->seq.n_prompt;
		st = qw_sched_check(&sv->sched, &r->seq, r->out.max_new, &err);
		if (st != QW_OK) {
			qw_request_seq_free(&r->seq);
			qw_output_free(&r->out);
		}
	}
	if (st != QW_OK) {
		refuse(sv, peer, peer_len, qw_error_code_of(st), err.msg);
		free(r);
		return;
	}
	r->next = sv->live;
	if (sv->live)
		sv->live->prev = r;
	sv->live = r;
	sv->n_live++;
	if (r->seq.n_images == 0)
		qw_server_admit(sv, r);
	else if (!qw_server_decode_images(sv, r, req))
		qw_server_refuse(sv, r, QW_CODE_INTERNAL, "out of memory for the request's images");
	/* else: qw_server_on_images admits it when its images are back */
}

/* tokenize: the prompt's ids; detokenize: the ids' text.  Both work while loading. */
static void tokens(qw_server *sv, const qw_request *req, const uint8_t *peer, size_t peer_len)
{
	qw_err err = {0};
	qw_reply t = {.type = QW_REPLY_TOKENS};
	int32_t *ids = NULL;
	char *text = NULL;
	size_t len = 0;
	qw_status st;
	if (req->op == QW_OP_TOKENIZE) {
		st = qw_request_tokenize(&sv->rc, req, &ids, &t.n_token_ids, &err);
		t.token_ids = ids;
	} else if (!sv->tok) {
		st = qw_fail(&err, QW_E_ARG, "this model has no tokenizer: token ids have no text");
	} else {
		st = qw_tokenizer_decode(sv->tok, req->token_ids, (size_t)req->n_token_ids, &text,
					 &len, &err);
		t.text = text;
		t.text_len = len;
	}
	if (st == QW_OK)
		send_reply(sv, peer, peer_len, &t);
	else
		refuse(sv, peer, peer_len, qw_error_code_of(st), err.msg);
	free(ids);
	free(text);
}

static void cancel(qw_server *sv, uint64_t id, const uint8_t *peer, size_t peer_len)
{
	qw_seq *q = sv->have_sched ? qw_sched_find(&sv->sched, id) : NULL;
	char msg[96];
	if (!q) {
		snprintf(msg, sizeof msg, "no request %llu is in progress", (unsigned long long)id);
		reply_error(sv, peer, peer_len, id, "bad_request", msg);
		sv->refused[QW_CODE_BAD_REQUEST]++;
		return;
	}
	qw_server_end(sv, q->owner, NULL, NULL, "cancelled");
	snprintf(msg, sizeof msg, "request %llu cancelled", (unsigned long long)id);
	qw_reply ok = {.type = QW_REPLY_OK, .request = id, .message = msg};
	send_reply(sv, peer, peer_len, &ok);
}

static void handle(qw_server *sv, const uint8_t *peer, size_t peer_len, const void *msg,
		   size_t len, int fd)
{
	qw_request req;
	qw_err err = {0};
	qw_status st = qw_request_decode(msg, len, &sv->limits, &req, &err);
	if (st != QW_OK) {
		refuse(sv, peer, peer_len, qw_error_code_of(st), err.msg);
		return;
	}
	switch (req.op) {
	case QW_OP_SUBMIT:
		submit(sv, &req, peer, peer_len, fd);
		break;
	case QW_OP_STATUS: {
		char *json = qw_server_status_json(sv);
		qw_reply s = {.type = QW_REPLY_STATUS, .json = json};
		if (json)
			send_reply(sv, peer, peer_len, &s);
		else
			reply_error(sv, peer, peer_len, 0, "internal", "out of memory");
		free(json);
		break;
	}
	case QW_OP_CANCEL:
		cancel(sv, req.target, peer, peer_len);
		break;
	case QW_OP_TOKENIZE:
	case QW_OP_DETOKENIZE:
		tokens(sv, &req, peer, peer_len);
		break;
	case QW_OP_SHUTDOWN: {
		qw_reply ok = {.type = QW_REPLY_OK, .message = "qwend is shutting down"};
		send_reply(sv, peer, peer_len, &ok);
		qw_server_begin_drain(sv, "shutdown requested");
		break;
	}
	}
	qw_request_free(&req);
}

void qw_server_on_router(qw_server *sv)
{
	for (int k = 0; k < 256; k++) {
		qw_server_on_monitor(sv);
		zmq_msg_t id, part, body;
		zmq_msg_init(&id);
		if (zmq_msg_recv(&id, sv->router, ZMQ_DONTWAIT) < 0) {
			zmq_msg_close(&id);
			return;
		}
		/* the frames after the routing id: empty delimiters (REQ clients), then one body */
		int bodies = 0, fd = -1;
		zmq_msg_init(&body);
		while (zmq_msg_more(bodies ? &body : &id)) {
			zmq_msg_init(&part);
			if (zmq_msg_recv(&part, sv->router, 0) < 0) {
				zmq_msg_close(&part);
				break;
			}
			if (zmq_msg_size(&part) == 0 && bodies == 0) {
				bool more = zmq_msg_more(&part);
				zmq_msg_close(&part);
				if (!more)
					break;
				continue;
			}
			bodies++;
			zmq_msg_move(&body, &part);   /* releases what body held */
			zmq_msg_close(&part);
		}
		fd = bodies ? zmq_msg_get(&body, ZMQ_SRCFD) : -1;
		const uint8_t *peer = zmq_msg_data(&id);
		size_t peer_len = zmq_msg_size(&id);
		if (bodies == 1)
			handle(sv, peer, peer_len, zmq_msg_data(&body), zmq_msg_size(&body), fd);
		else
			refuse(sv, peer, peer_len, QW_CODE_BAD_REQUEST, bodies
			       ? "a request is one message of one frame"
			       : "an empty message is not a request");
		zmq_msg_close(&body);
		zmq_msg_close(&id);
	}
}

void qw_server_on_monitor(qw_server *sv)
{
	for (;;) {
		zmq_msg_t ev, addr;
		zmq_msg_init(&ev);
		if (zmq_msg_recv(&ev, sv->monitor, ZMQ_DONTWAIT) < 0) {
			zmq_msg_close(&ev);
			return;
		}
		uint16_t event = 0;
		int32_t value = -1;
		if (zmq_msg_size(&ev) >= 6) {
			memcpy(&event, zmq_msg_data(&ev), 2);
			memcpy(&value, (uint8_t *)zmq_msg_data(&ev) + 2, 4);
		}
		if (zmq_msg_more(&ev)) {
			zmq_msg_init(&addr);
			zmq_msg_recv(&addr, sv->monitor, 0);
			zmq_msg_close(&addr);
		}
		zmq_msg_close(&ev);
		if (event != ZMQ_EVENT_DISCONNECTED)
			continue;
		for (qw_live *r = sv->live, *next; r; r = next) {
			next = r->next;
			if (r->peer_fd == value)
				client_gone(sv, r, "disconnected");
		}
	}
}
