/* server.c - qwen-http's loop and its HTTP side: libmicrohttpd in external-loop mode,
 * routes, the API key, limits, answers queued, streams fed and clients that go away.
 * See server.h. */
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "daemon/log.h"
#include "ipc/endpoint.h"
#include "loader/clock.h"

void qh_settings_default(qh_settings *s)
{
	memset(s, 0, sizeof *s);
	qw_endpoint_env env = qw_endpoint_env_current();
	qw_endpoint_client_default(&env, s->socket, sizeof s->socket);
	snprintf(s->host, sizeof s->host, "127.0.0.1");
	s->port = 8000;
	s->max_body = 64u << 20;
	s->max_header = 16u << 10;
	s->max_connections = 512;
	s->idle_timeout_s = 60;
	s->timeout_ms = 10000;
	s->max_choices = 16;
	s->drain_s = 30;
}

// ---------------------------------------------------------------------------------------
// routes

static const struct route {
	const char *method, *path, *name;
	qh_route route;
	bool prefix;                /* path is a prefix (GET /v1/models/ID) */
} routes[] = {
	{"POST", "/v1/chat/completions", "chat_completions", QH_ROUTE_CHAT, false},
	{"POST", "/v1/completions", "completions", QH_ROUTE_COMPLETIONS, false},
	{"GET", "/v1/models", "models", QH_ROUTE_MODELS, false},
	{"GET", "/v1/models/", "models", QH_ROUTE_MODEL, true},
	{"GET", "/health", "health", QH_ROUTE_HEALTH, false},
	{"GET", "/metrics", "metrics", QH_ROUTE_METRICS, false},
	{"POST", "/tokenize", "tokenize", QH_ROUTE_TOKENIZE, false},
	{"POST", "/detokenize", "detokenize", QH_ROUTE_DETOKENIZE, false},
};

/* The route of a request, or why there is none (404, 405 naming the method to use). */
static const struct route *find_route(const char *method, const char *url, qh_error *e)
{
	const struct route *other_method = NULL;
	for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
		const struct route *rt = &routes[i];
		bool match = rt->prefix ? !strncmp(url, rt->path, strlen(rt->path)) &&
					  url[strlen(rt->path)]
					: !strcmp(url, rt->path);
		if (!match)
			continue;
		if (!strcmp(method, rt->method) || (!strcmp(method, "HEAD") &&
						     !strcmp(rt->method, "GET")))
			return rt;
		other_method = rt;
	}
	if (other_method)
		qh_fail(e, 405, NULL, "%s takes %s, not %s", other_method->path,
			other_method->method, method);
	else
		qh_fail(e, 404, NULL, "no endpoint %s %s (this server has /v1/chat/completions, "
			"/v1/completions, /v1/models, /health, /metrics, /tokenize, /detokenize)",
			method, url);
	return NULL;
}

/* "Authorization: Bearer KEY", compared in time that depends on the key's length only. */
static bool authorized(struct MHD_Connection *conn, const char *key)
{
	const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	const char *given = h + 7;
	size_t a = strlen(given), b = strlen(key);
	unsigned diff = (unsigned)(a ^ b);
	for (size_t i = 0; i < b; i++)
		diff |= (unsigned char)key[i] ^ (unsigned char)(i < a ? given[i] : 0);
	return diff == 0;
}

// ---------------------------------------------------------------------------------------
// answers

void qh_answer(qh_req *r, int status, const char *ctype, char *body, size_t len)
{
	if (r->ready || r->queued) {   /* answered already (a stream carries its own errors) */
		free(body);
		return;
	}
	r->ready = true;
	r->status = status;
	r->ctype = ctype;
	r->resp = body;
	r->resp_len = len;
	if (r->suspended) {
		r->suspended = r->watching = false;
		MHD_resume_connection(r->conn);
	}
}

void qh_answer_json(qh_req *r, int status, json_t *j)
{
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!text) {
		qh_error e;
		qh_fail(&e, 500, NULL, "out of memory (or text that is not UTF-8) writing the answer");
		qh_answer_error(r, &e);
		return;
	}
	qh_answer(r, status, "application/json", text, strlen(text));
}

void qh_answer_error(qh_req *r, const qh_error *e)
{
	char *text = qh_error_json(e);
	if (!r->ready && !r->queued) {
		const char *code = qh_error_code(e);
		snprintf(r->code, sizeof r->code, "%s", code ? code : "");
		r->retry_after = qh_retry_after(e);
	}
	if (e->status >= 500)
		qw_log(QW_LOG_WARN, "%s: %d %s", r->endpoint, e->status, e->message);
	qh_answer(r, e->status, "application/json", text, text ? strlen(text) : 0);
}

void qh_stream_wake(qh_req *r)
{
	if (r->suspended && r->queued) {
		r->suspended = r->watching = false;
		MHD_resume_connection(r->conn);
	}
}

static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
	qh_req *r = cls;
	if (r->gone)
		return MHD_CONTENT_READER_END_WITH_ERROR;
	if (r->sse.n) {
		size_t n = r->sse.n < max ? r->sse.n : max;
		memcpy(buf, r->sse.p, n);
		qh_buf_consume(&r->sse, n);
		return (ssize_t)n;
	}
	if (r->sse_end)
		return MHD_CONTENT_READER_END_OF_STREAM;
	/* nothing to send yet: wait for qwend (watching for the client to go) */
	MHD_suspend_connection(r->conn);
	r->suspended = true;
	r->watching = r->fd >= 0;
	return 0;
}

static enum MHD_Result queue(qh_req *r)
{
	struct MHD_Response *resp;
	if (r->streaming && r->status == 200)
		resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, read_stream, r,
							 NULL);
	else
		resp = MHD_create_response_from_buffer(r->resp_len, r->resp ? r->resp : "",
						       r->resp ? MHD_RESPMEM_MUST_FREE
							       : MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	r->resp = NULL;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->ctype ? r->ctype
							: "application/json");
	if (r->streaming && r->status == 200) {
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
		MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	}
	if (r->retry_after > 0) {
		char s[16];
		snprintf(s, sizeof s, "%d", r->retry_after);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, s);
	}
	if (r->status == 401)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)r->status, resp);
	MHD_destroy_response(resp);
	r->queued = true;
	return ok;
}

// ---------------------------------------------------------------------------------------
// requests in and out

/* The client went away: nothing more is sent, and its requests in qwend are cancelled at
 * once (closing a DEALER socket does that). */
static void client_gone(qh_req *r)
{
	if (r->gone)
		return;
	r->gone = true;
	qh_call_close(&r->one);
	qh_generate_stop(r);
	if (r->suspended) {
		r->suspended = r->watching = false;
		MHD_resume_connection(r->conn);
	}
}

static bool header_too_large(struct MHD_Connection *conn, size_t max)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn,
		MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
	return ci && ci->header_size > max;
}

/* The first call for a request: its route, the key, the declared size. */
static qh_req *new_request(qh_server *sv, struct MHD_Connection *conn, const char *url,
			   const char *method)
{
	qh_req *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->sv = sv;
	r->conn = conn;
	r->t_start = qw_seconds_now();
	r->endpoint = "unknown";
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn,
		MHD_CONNECTION_INFO_CONNECTION_FD);
	r->fd = ci ? ci->connect_fd : -1;
	r->next = sv->reqs;
	if (sv->reqs)
		sv->reqs->prev = r;
	sv->reqs = r;
	sv->n_reqs++;
	qh_error e;
	const struct route *rt = find_route(method, url, &e);
	const char *length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							 MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (!rt) {
		qh_answer_error(r, &e);
		return r;
	}
	r->route = rt->route;
	r->endpoint = rt->name;
	if (rt->prefix)
		snprintf(r->model_arg, sizeof r->model_arg, "%s", url + strlen(rt->path));
	if (header_too_large(conn, sv->set.max_header)) {
		qh_fail(&e, 431, NULL, "the request's headers are over %zu bytes", sv->set.max_header);
		snprintf(e.code, sizeof e.code, "too_large");
		qh_answer_error(r, &e);
	} else if (sv->set.api_key[0] && !strncmp(url, "/v1/", 4) &&
		   !authorized(conn, sv->set.api_key)) {
		qh_fail(&e, 401, NULL, "a valid API key is needed: send \"Authorization: Bearer "
			"KEY\"");
		qh_answer_error(r, &e);
	} else if (length && strtoull(length, NULL, 10) > sv->set.max_body) {
		qh_fail(&e, 413, NULL, "the body is %s bytes; this server takes at most %zu "
			"(--max-body-bytes)", length, sv->set.max_body);
		qh_answer_error(r, &e);
	} else if (sv->draining) {
		qh_fail(&e, 503, NULL, "qwen-http is shutting down");
		qh_answer_error(r, &e);
	}
	return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_size, void **state)
{
	qh_server *sv = cls;
	qh_req *r = *state;
	if (!r) {
		r = *state = new_request(sv, conn, url, method);
		if (!r)
			return MHD_NO;
		return r->ready ? queue(r) : MHD_YES;
	}
	if (r->queued) {                /* a body after an early answer: dropped */
		*upload_size = 0;
		return MHD_YES;
	}
	if (*upload_size) {
		if (!r->body_too_large && r->body.n + *upload_size > sv->set.max_body) {
			r->body_too_large = true;
			qh_buf_free(&r->body);
		}
		if (!r->body_too_large)
			qh_buf_add(&r->body, upload_data, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	if (r->gone)
		return MHD_NO;
	if (!r->started) {
		r->started = true;
		qh_error e;
		if (r->body_too_large)
			qh_answer_error(r, (qh_fail(&e, 413, NULL, "the body is over %zu bytes "
						    "(--max-body-bytes)", sv->set.max_body), &e));
		else if (r->body.oom)
			qh_answer_error(r, (qh_fail(&e, 500, NULL, "out of memory"), &e));
		else
			qh_endpoint_begin(r);
	}
	if (r->ready)
		return queue(r);
	MHD_suspend_connection(conn);   /* until qwend answers */
	r->suspended = true;
	r->watching = r->fd >= 0;
	return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **state,
			 enum MHD_RequestTerminationCode why)
{
	qh_server *sv = cls;
	qh_req *r = *state;
	if (!r)
		return;
	*state = NULL;
	bool ok = why == MHD_REQUEST_TERMINATED_COMPLETED_OK;
	if (!ok)
		client_gone(r);
	int status = r->queued ? r->status : 499;   /* nginx's "client closed request" */
	const char *code = r->queued ? r->code : "client_closed_request";
	if (r->queued && !ok && r->streaming)
		code = "client_closed_request";
	qh_metrics_request(&sv->metrics, r->endpoint, status, code);
	qw_log(status >= 500 ? QW_LOG_INFO : QW_LOG_DEBUG, "%s %d%s%s %.3f s", r->endpoint, status,
	       *code ? " " : "", code, qw_seconds_now() - r->t_start);
	qh_call_close(&r->one);
	qh_generate_free(r);
	qh_job_free(&r->job);
	qh_buf_free(&r->body);
	qh_buf_free(&r->sse);
	free(r->resp);
	if (r->prev)
		r->prev->next = r->next;
	else
		sv->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	sv->n_reqs--;
	free(r);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];
	vsnprintf(line, sizeof line, fmt, ap);
	line[strcspn(line, "\n")] = '\0';
	qw_log(QW_LOG_DEBUG, "libmicrohttpd: %s", line);
}

// ---------------------------------------------------------------------------------------
// the loop

/* The listening socket: host must be an address (or localhost), loopback unless
 * allow_remote. */
static int listen_on(qh_server *sv, qw_err *err)
{
	const qh_settings *s = &sv->set;
	const char *host = strcmp(s->host, "localhost") ? s->host : "127.0.0.1";
	if (!qw_endpoint_host_is_loopback(host) && !s->allow_remote) {
		qw_fail(err, QW_E_ARG, "--host %s would let other machines use the API; qwen-http "
			"listens on loopback addresses unless --allow-remote is given\nHINT: --host "
			"127.0.0.1, or --allow-remote (and --api-key) to serve the network", s->host);
		return -1;
	}
	char port[16];
	snprintf(port, sizeof port, "%d", s->port);
	struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
				 .ai_socktype = SOCK_STREAM}, *ai;
	int rc = getaddrinfo(host, port, &hints, &ai);
	if (rc != 0) {
		qw_fail(err, QW_E_ARG, "--host %s is not an IP address (%s)\nHINT: 127.0.0.1, ::1, "
			"or with --allow-remote 0.0.0.0 or ::", s->host, gai_strerror(rc));
		return -1;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 512) != 0) {
		qw_fail(err, QW_E_IO, "cannot listen on %s port %d: %s", s->host, s->port,
			strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	struct sockaddr_storage sa;
	socklen_t len = sizeof sa;
	int bound = s->port;
	if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		bound = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
						       : ((struct sockaddr_in *)&sa)->sin_port);
	snprintf(sv->listening, sizeof sv->listening, ai->ai_family == AF_INET6
		 ? "http://[%s]:%d" : "http://%s:%d", host, bound);
	freeaddrinfo(ai);
	return fd;
}

/* What a poll item stands for. */
typedef struct slot {
	qh_req *r;
	qh_call *call;              /* a call's socket or monitor, or NULL: r's descriptor */
	qh_choice *choice;          /* the call's choice (generation), or NULL */
} slot;

typedef struct poller {
	zmq_pollitem_t *items;
	slot *slots;
	int n, cap;
} poller;

static bool poller_add(poller *p, zmq_pollitem_t item, slot s)
{
	if (p->n == p->cap) {
		int cap = p->cap ? 2 * p->cap : 64;
		zmq_pollitem_t *items = realloc(p->items, (size_t)cap * sizeof *items);
		if (items)
			p->items = items;
		slot *slots = items ? realloc(p->slots, (size_t)cap * sizeof *slots) : NULL;
		if (!slots)
			return false;
		p->slots = slots;
		p->cap = cap;
	}
	p->items[p->n] = item;
	p->slots[p->n++] = s;
	return true;
}

static void add_call(poller *p, qh_req *r, qh_call *c, qh_choice *ch, double *wake)
{
	if (!c->open)
		return;
	zmq_pollitem_t items[2];
	qw_client_pollitems(&c->client, items);
	poller_add(p, items[0], (slot){r, c, ch});
	poller_add(p, items[1], (slot){r, c, ch});
	if (c->deadline > 0 && c->deadline < *wake)
		*wake = c->deadline;
}

/* Everything a call has for us, handed to its request. */
static void service(qh_req *r, qh_call *c, qh_choice *ch)
{
	for (int k = 0; k < 1024 && c->open; k++) {
		qw_reply rep;
		qh_error e;
		int got = qh_call_poll(c, &rep, &e);
		if (got == 0)
			return;
		if (got < 0) {
			if (ch)
				qh_generate_failed(r, ch, &e);
			else
				qh_endpoint_failed(r, &e);
			return;
		}
		if (ch)
			qh_generate_reply(r, ch, &rep);
		else
			qh_endpoint_reply(r, &rep);
		qw_reply_free(&rep);
	}
}

/* A suspended connection's descriptor is readable: the client closed it (or sent more,
 * which is then left to libmicrohttpd). */
static void check_gone(qh_req *r)
{
	char c;
	ssize_t n = recv(r->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
		qw_log(QW_LOG_DEBUG, "%s: the client went away; its request is cancelled",
		       r->endpoint);
		client_gone(r);
	} else if (n > 0) {
		r->watching = false;
	}
}

static bool handle_signals(qh_server *sv)
{
	struct signalfd_siginfo si;
	bool stop = false;
	while (read(sv->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (sv->draining) {
			qw_log(QW_LOG_INFO, "second signal: stopping now");
			stop = true;
			continue;
		}
		qw_log(QW_LOG_INFO, "signal %u: no new connections; finishing %d request%s (up to "
		       "%.0f s)", si.ssi_signo, sv->n_reqs, sv->n_reqs == 1 ? "" : "s",
		       sv->set.drain_s);
		sv->draining = true;
		sv->drain_deadline = qw_seconds_now() + sv->set.drain_s;
		int lfd = MHD_quiesce_daemon(sv->mhd);
		if (lfd >= 0)
			close(lfd);
	}
	return stop;
}

static void run_loop(qh_server *sv)
{
	const union MHD_DaemonInfo *ei = MHD_get_daemon_info(sv->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	int epfd = ei ? ei->epoll_fd : -1;
	poller p = {0};
	for (;;) {
		p.n = 0;
		poller_add(&p, (zmq_pollitem_t){.fd = epfd, .events = ZMQ_POLLIN}, (slot){0});
		poller_add(&p, (zmq_pollitem_t){.fd = sv->sigfd, .events = ZMQ_POLLIN}, (slot){0});
		double now = qw_seconds_now(), wake = now + 1;
		for (qh_req *r = sv->reqs; r; r = r->next) {
			add_call(&p, r, &r->one, NULL, &wake);
			for (int i = 0; i < r->n_choices; i++)
				add_call(&p, r, &r->choices[i].call, &r->choices[i], &wake);
			if (r->suspended && r->watching)
				poller_add(&p, (zmq_pollitem_t){.fd = r->fd, .events = ZMQ_POLLIN},
					   (slot){r, NULL, NULL});
		}
		MHD_UNSIGNED_LONG_LONG mhd_ms;
		long timeout = (long)((wake - now) * 1e3) + 1;
		if (MHD_get_timeout(sv->mhd, &mhd_ms) == MHD_YES && (long)mhd_ms < timeout)
			timeout = (long)mhd_ms;
		if (timeout < 0)
			timeout = 0;
		if (zmq_poll(p.items, p.n, timeout) < 0 && zmq_errno() != EINTR) {
			qw_log(QW_LOG_ERROR, "zmq_poll: %s", zmq_strerror(zmq_errno()));
			break;
		}
		if ((p.items[1].revents & ZMQ_POLLIN) && handle_signals(sv))
			break;
		now = qw_seconds_now();
		for (int i = 2; i < p.n; i++) {
			slot *s = &p.slots[i];
			bool due = s->call && s->call->deadline > 0 && now > s->call->deadline;
			if (!(p.items[i].revents || due))
				continue;
			if (s->call)
				service(s->r, s->call, s->choice);
			else if (s->r->suspended && s->r->watching)
				check_gone(s->r);
		}
		MHD_run(sv->mhd);
		if (sv->draining && (sv->n_reqs == 0 || now > sv->drain_deadline))
			break;
	}
	free(p.items);
	free(p.slots);
	/* what is left is cancelled, and its connections closed */
	for (qh_req *r = sv->reqs; r; r = r->next)
		client_gone(r);
	MHD_run(sv->mhd);
}

int qh_server_run(const qh_settings *s)
{
	qh_server *sv = calloc(1, sizeof *sv);
	if (!sv) {
		qw_log(QW_LOG_ERROR, "out of memory");
		return 1;
	}
	sv->set = *s;
	qh_metrics_init(&sv->metrics);
	/* a request in flight holds its connection's socket and its DEALER's: raise the soft
	 * limit on descriptors to the hard one */
	struct rlimit fds;
	if (getrlimit(RLIMIT_NOFILE, &fds) == 0 && fds.rlim_cur < fds.rlim_max) {
		fds.rlim_cur = fds.rlim_max;
		setrlimit(RLIMIT_NOFILE, &fds);
	}
	qw_err err = {0};
	int status = 1;
	int lfd = listen_on(sv, &err);
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	signal(SIGPIPE, SIG_IGN);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	sv->sigfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	sv->zctx = zmq_ctx_new();
	if (lfd < 0) {
		qw_log(QW_LOG_ERROR, "%s", err.msg);
		goto out;
	}
	if (!sv->zctx || sv->sigfd < 0) {
		qw_log(QW_LOG_ERROR, "cannot set up: %s", strerror(errno));
		close(lfd);
		goto out;
	}
	/* two sockets a request to qwend (DEALER and its monitor), a few requests a connection */
	zmq_ctx_set(sv->zctx, ZMQ_MAX_SOCKETS, 8 * s->max_connections + 64);
	zmq_ctx_set(sv->zctx, ZMQ_BLOCKY, 0);
	sv->mhd = MHD_start_daemon(
		MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL,
		on_request, sv,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, sv,
		MHD_OPTION_LISTEN_SOCKET, lfd,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->max_connections,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->idle_timeout_s,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(2 * s->max_header + 65536),
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, sv,
		MHD_OPTION_END);
	if (!sv->mhd) {
		qw_log(QW_LOG_ERROR, "libmicrohttpd would not start on %s", sv->listening);
		close(lfd);
		goto out;
	}
	qw_log(QW_LOG_INFO, "listening on %s, qwend at %s%s", sv->listening, s->socket,
	       s->api_key[0] ? ", API key required" : "");
	run_loop(sv);
	MHD_stop_daemon(sv->mhd);
	qw_log(QW_LOG_INFO, "stopped");
	status = 0;
out:
	if (sv->sigfd >= 0)
		close(sv->sigfd);
	if (sv->zctx)
		zmq_ctx_term(sv->zctx);
	free(sv);
	return status;
}

/* The gauges /metrics reports. */
qh_gauges qh_server_gauges(const qh_server *sv, bool qwend_up)
{
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(sv->mhd,
		MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
	return (qh_gauges){.connections = di ? (int)di->num_connections : 0,
			   .in_flight = sv->n_reqs, .qwend_up = qwend_up};
}
