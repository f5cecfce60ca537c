/* http_harness.c - qwen-http and an HTTP client for the tests.  See http_harness.h. */
#include "tests/unit/http_harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loader/clock.h"

void qhttp_dump_log(const qhttp *h)
{
	size_t len;
	char *log = read_file(h->log, &len);
	fprintf(stderr, "------ qwen-http log (%s) ------\n%s------\n", h->log, log ? log : "(none)");
	free(log);
}

void qhttp_start(qhttp *h, const char *endpoint, const char *const *args)
{
	memset(h, 0, sizeof *h);
	h->dir = scratch_new();
	snprintf(h->log, sizeof h->log, "%s/http.log", h->dir);
	const char *argv[64] = {"--socket", endpoint, "--port", "0", "--log-level", "debug"};
	int n = 6;
	for (int i = 0; args && args[i] && n < 62; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	h->pid = spawn_program("qwen-http", argv, NULL, h->log);
	double until = qw_seconds_now() + 10;
	for (;;) {
		size_t len;
		char *log = access(h->log, R_OK) == 0 ? read_file(h->log, &len) : NULL;
		const char *at = log ? strstr(log, "listening on http://") : NULL;
		const char *colon = at ? strchr(at + 20, ']') : NULL;
		colon = at ? strchr(colon ? colon : at + 20, ':') : NULL;
		if (colon)
			h->port = atoi(colon + 1);
		free(log);
		if (h->port > 0)
			return;
		int status;
		if (waitpid(h->pid, &status, WNOHANG) == h->pid) {
			h->pid = 0;
			qhttp_dump_log(h);
			fail_msg("qwen-http exited before listening");
		}
		if (qw_seconds_now() > until) {
			qhttp_dump_log(h);
			fail_msg("qwen-http did not listen within 10 s");
		}
		usleep(5000);
	}
}

int qhttp_run_to_exit(const char *const *args, char **out)
{
	return run_program("qwen-http", args, 10, out);
}

void qhttp_stop(qhttp *h)
{
	if (!h->pid)
		return;
	kill(h->pid, SIGTERM);
	bool killed;
	int status = wait_exit(h->pid, 30, &killed);
	if (killed) {
		qhttp_dump_log(h);
		fail_msg("qwen-http did not stop within 30 s of SIGTERM");
	}
	h->pid = 0;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		qhttp_dump_log(h);
		fail_msg("qwen-http did not exit 0 on SIGTERM (status %d)", status);
	}
	scratch_free(h->dir);
	h->dir = NULL;
}

// ---------------------------------------------------------------------------------------
// the client

int http_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		fail_msg("cannot connect to port %d: %s", port, strerror(errno));
	return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;              /* the server closed early: its answer tells why */
		c += w;
		n -= (size_t)w;
	}
}

static char *read_all(int fd, size_t *len)
{
	size_t cap = 1 << 14, n = 0;
	char *buf = malloc(cap + 1);
	for (;;) {
		if (n == cap)
			buf = realloc(buf, (cap *= 2) + 1);
		ssize_t r = recv(fd, buf + n, cap - n, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

void http_resp_free(http_resp *r)
{
	free(r->head);
	free(r->body);
	memset(r, 0, sizeof *r);
}

/* Chunked transfer coding decoded in place; the decoded length. */
static size_t dechunk(char *p, size_t len)
{
	size_t in = 0, out = 0;
	while (in < len) {
		char *end;
		unsigned long n = strtoul(p + in, &end, 16);
		char *crlf = strstr(p + in, "\r\n");
		if (!crlf || n == 0)
			break;
		in = (size_t)(crlf - p) + 2;
		if (in + n > len)
			n = len - in;
		memmove(p + out, p + in, n);
		out += n;
		in += n + 2;
	}
	p[out] = '\0';
	return out;
}

void http_parse(const char *raw, size_t len, http_resp *out)
{
	memset(out, 0, sizeof *out);
	const char *sep = strstr(raw, "\r\n\r\n");
	if (strncmp(raw, "HTTP/1.", 7) != 0 || !sep) {
		out->head = strdup("");
		out->body = strdup("");
		return;
	}
	out->status = atoi(raw + 9);
	out->head = strndup(raw, (size_t)(sep - raw) + 2);
	size_t blen = len - (size_t)(sep + 4 - raw);
	out->body = malloc(blen + 1);
	memcpy(out->body, sep + 4, blen);
	out->body[blen] = '\0';
	const char *te = http_header(out, "Transfer-Encoding");
	out->body_len = te && !strcasecmp(te, "chunked") ? dechunk(out->body, blen) : blen;
}

const char *http_header(const http_resp *r, const char *name)
{
	static char value[1024];
	size_t n = strlen(name);
	for (const char *line = r->head ? strstr(r->head, "\r\n") : NULL; line && line[2];
	     line = strstr(line + 2, "\r\n")) {
		const char *h = line + 2;
		if (!strncasecmp(h, name, n) && h[n] == ':') {
			const char *v = h + n + 1;
			while (*v == ' ')
				v++;
			size_t len = strcspn(v, "\r");
			snprintf(value, sizeof value, "%.*s", (int)len, v);
			return value;
		}
	}
	return NULL;
}

json_t *http_json(const http_resp *r)
{
	json_error_t err;
	json_t *j = json_loads(r->body ? r->body : "", 0, &err);
	if (!j)
		fail_msg("status %d, body is not JSON (%s):\n%s", r->status, err.text, r->body);
	return j;
}

char *http_raw(int port, const void *bytes, size_t len)
{
	int fd = http_connect(port);
	send_all(fd, bytes, len);
	shutdown(fd, SHUT_WR);
	size_t n;
	char *out = read_all(fd, &n);
	close(fd);
	return out;
}

static char *request_text(const char *method, const char *path, const char *headers,
			  const char *body, size_t *len)
{
	size_t blen = body ? strlen(body) : 0;
	size_t cap = strlen(path) + (headers ? strlen(headers) : 0) + blen + 256;
	char *req = malloc(cap);
	int n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
			 "%s%s%zu\r\n\r\n", method, path, headers ? headers : "",
			 body ? "Content-Type: application/json\r\nContent-Length: " : "", blen);
	if (!body)   /* no body: drop the dangling length */
		n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
			     "%s\r\n", method, path, headers ? headers : "");
	memcpy(req + n, body ? body : "", blen);
	*len = (size_t)n + blen;
	return req;
}

void http_call(int port, const char *method, const char *path, const char *headers,
	       const char *body, http_resp *out)
{
	size_t len, n;
	char *req = request_text(method, path, headers, body, &len);
	int fd = http_connect(port);
	send_all(fd, req, len);
	free(req);
	char *raw = read_all(fd, &n);
	close(fd);
	http_parse(raw, n, out);
	free(raw);
}

void http_post(int port, const char *path, const char *body, http_resp *out)
{
	http_call(port, "POST", path, NULL, body, out);
}

char **sse_events(const char *body)
{
	int n = 0, cap = 16;
	char **ev = calloc((size_t)cap + 1, sizeof *ev);
	for (const char *p = body; p && *p;) {
		const char *end = strstr(p, "\n\n");
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (!strncmp(p, "data: ", 6)) {
			if (n == cap)
				ev = realloc(ev, ((size_t)(cap *= 2) + 1) * sizeof *ev);
			ev[n++] = strndup(p + 6, len - 6);
		}
		p = end ? end + 2 : NULL;
	}
	ev[n] = NULL;
	return ev;
}

void sse_free(char **events)
{
	for (int i = 0; events && events[i]; i++)
		free(events[i]);
	free(events);
}

void http_many(int port, const char *path, const char *const *bodies, int n, http_resp *out)
{
	int *fd = calloc((size_t)n, sizeof *fd);
	char **raw = calloc((size_t)n, sizeof *raw);
	size_t *len = calloc((size_t)n, sizeof *len), *cap = calloc((size_t)n, sizeof *cap);
	struct pollfd *pf = calloc((size_t)n, sizeof *pf);
	for (int i = 0; i < n; i++) {
		size_t rl;
		char *req = request_text("POST", path, NULL, bodies[i], &rl);
		fd[i] = http_connect(port);
		send_all(fd[i], req, rl);
		free(req);
		cap[i] = 4096;
		raw[i] = malloc(cap[i] + 1);
	}
	int open_fds = n;
	double until = qw_seconds_now() + 120;
	while (open_fds > 0) {
		for (int i = 0; i < n; i++)
			pf[i] = (struct pollfd){.fd = fd[i], .events = POLLIN};
		poll(pf, (nfds_t)n, 200);
		for (int i = 0; i < n; i++) {
			if (fd[i] < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			if (len[i] == cap[i])
				raw[i] = realloc(raw[i], (cap[i] *= 2) + 1);
			ssize_t r = recv(fd[i], raw[i] + len[i], cap[i] - len[i], 0);
			if (r > 0) {
				len[i] += (size_t)r;
				continue;
			}
			close(fd[i]);
			fd[i] = -1;
			open_fds--;
		}
		if (qw_seconds_now() > until)
			fail_msg("%d of %d responses had not ended after 120 s", open_fds, n);
	}
	for (int i = 0; i < n; i++) {
		raw[i][len[i]] = '\0';
		http_parse(raw[i], len[i], &out[i]);
		free(raw[i]);
	}
	free(fd);
	free(raw);
	free(len);
	free(cap);
	free(pf);
}

char *data_url(const void *bytes, size_t n, const char *mime)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = bytes;
	size_t head = strlen(mime) + 13;
	char *out = malloc(head + 4 * (n / 3 + 1) + 1), *w = out;
	w += sprintf(w, "data:%s;base64,", mime);
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
			     (i + 2 < n ? p[i + 2] : 0);
		*w++ = b64[v >> 18 & 63];
		*w++ = b64[v >> 12 & 63];
		*w++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
		*w++ = i + 2 < n ? b64[v & 63] : '=';
	}
	*w = '\0';
	return out;
}

int http_checks(char **out, const char *args)
{
	const char *pythons[] = {"python3", "/usr/bin/python3"};
	int rc = 77;
	*out = NULL;
	for (int i = 0; i < 2 && rc == 77; i++) {
		free(*out);
		rc = run_capture(out, "{ %s %s %s 2>&1; }", pythons[i],
				 fixture("../unit/http_checks.py"), args);
		rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : rc;
	}
	return rc;
}

void http_world_start(http_world *w, fake_fn script, const char *const *args)
{
	w->dir = scratch_new();
	w->fake = fake_start(w->dir, script, 1000, NULL);
	qhttp_start(&w->h, fake_endpoint(w->dir), args);
}

void http_world_stop(http_world *w)
{
	qhttp_stop(&w->h);
	kill(w->fake, SIGTERM);
	fake_end(w->fake);
	scratch_free(w->dir);
}
