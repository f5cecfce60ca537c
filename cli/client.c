/* client.c - a DEALER socket to qwend with timeouts and errors a user can act on.
 * See client.h. */
#include "cli/client.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader/clock.h"

static qw_status zfail(qw_err *err, const char *what, const char *endpoint)
{
	return qw_fail(err, QW_E_IO, "%s %s: %s", what, endpoint, zmq_strerror(zmq_errno()));
}

/* The socket file must be there and writable before a connect is worth trying. */
static qw_status check_ipc(const qw_client *c, qw_err *err)
{
	struct stat st;
	if (!c->ipc_path[0])
		return QW_OK;
	if (stat(c->ipc_path, &st) != 0) {
		if (errno == EACCES)
			return qw_fail(err, QW_E_IO, "cannot reach %s: permission denied on a "
				       "directory above it\nHINT: qwend's socket is for its group; ask to be "
				       "added to it", c->ipc_path);
		return qw_fail(err, QW_E_IO, "qwend is not running (no socket at %s)", c->ipc_path);
	}
	if (!S_ISSOCK(st.st_mode))
		return qw_fail(err, QW_E_IO, "%s is not a socket (is --socket right?)", c->ipc_path);
	if (access(c->ipc_path, W_OK) != 0)
		return qw_fail(err, QW_E_IO, "no permission to use qwend's socket %s\nHINT: qwend's "
			       "socket is for its group; ask to be added to it", c->ipc_path);
	return QW_OK;
}

qw_status qw_client_open(qw_client *c, void *zctx, const char *endpoint, int timeout_ms,
			 qw_err *err)
{
	static int serial;
	memset(c, 0, sizeof *c);
	if (strlen(endpoint) >= sizeof c->endpoint)
		return qw_fail(err, QW_E_ARG, "endpoint longer than %zu bytes",
			       sizeof c->endpoint - 1);
	snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
	qw_endpoint_ipc_path(endpoint, c->ipc_path, sizeof c->ipc_path);
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : QW_CLIENT_TIMEOUT_MS;
	qw_status st = check_ipc(c, err);
	if (st != QW_OK)
		return st;
	c->zctx = zctx;
	if (!c->zctx) {
		if (!(c->zctx = zmq_ctx_new()))
			return zfail(err, "cannot make a ZeroMQ context for", endpoint);
		c->own_ctx = true;
		zmq_ctx_set(c->zctx, ZMQ_BLOCKY, 0);
	}
	int zero = 0;
	c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
	if (!c->sock || zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero) ||
	    zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &c->timeout_ms, sizeof c->timeout_ms)) {
		st = zfail(err, "cannot make a socket for", endpoint);
		goto fail;
	}
	/* the monitor: whether a connection was ever made, and whether it closed */
	char mon[64];
	snprintf(mon, sizeof mon, "inproc://qwclient-monitor-%d-%p", serial++, (void *)c);
	if (zmq_socket_monitor(c->sock, mon, ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
			       ZMQ_EVENT_DISCONNECTED) != 0 ||
	    !(c->monitor = zmq_socket(c->zctx, ZMQ_PAIR)) ||
	    zmq_setsockopt(c->monitor, ZMQ_LINGER, &zero, sizeof zero) ||
	    zmq_connect(c->monitor, mon) != 0) {
		st = zfail(err, "cannot monitor the connection to", endpoint);
		goto fail;
	}
	if (zmq_connect(c->sock, endpoint) != 0) {
		st = qw_fail(err, QW_E_ARG, "cannot connect to %s: %s\nHINT: an endpoint is "
			     "ipc:///PATH or tcp://HOST:PORT", endpoint, zmq_strerror(zmq_errno()));
		goto fail;
	}
	return QW_OK;
fail:
	qw_client_close(c);
	return st;
}

static void read_events(qw_client *c);

/* Nothing came in time: say whether a connection was ever made. */
static qw_status no_answer(qw_client *c, double waited_ms, qw_err *err)
{
	if (c->ipc_path[0] && check_ipc(c, NULL) != QW_OK)
		return check_ipc(c, err);
	read_events(c);
	if (c->connected)
		return qw_fail(err, QW_E_IO, "qwend does not answer at %s (connected, but nothing "
			       "came in %.1f s)\nHINT: --timeout waits longer", c->endpoint,
			       waited_ms / 1e3);
	return qw_fail(err, QW_E_IO, "qwend does not answer at %s (no connection in %.1f s: %s)",
		       c->endpoint, waited_ms / 1e3, c->ipc_path[0]
		       ? "nothing listens on the socket file; is qwend running?"
		       : "nothing listens there; is qwend running?");
}

qw_status qw_client_send(qw_client *c, const qw_request *r, qw_err *err)
{
	char *buf;
	size_t len;
	qw_status st = qw_request_encode(r, &buf, &len, err);
	if (st != QW_OK)
		return st;
	double t0 = qw_millis_now();
	int rc, e;
	do {                                   /* blocks only past the high-water mark */
		rc = zmq_send(c->sock, buf, len, 0);
		e = rc < 0 ? zmq_errno() : 0;
	} while (e == EINTR && !(c->interrupt && *c->interrupt));
	free(buf);
	if (rc >= 0) {
		c->last_sent = len;
		return QW_OK;
	}
	if (e == EINTR)
		return qw_fail(err, QW_E_IO, "interrupted");
	if (e == EAGAIN)
		return no_answer(c, qw_millis_now() - t0, err);
	return qw_fail(err, QW_E_IO, "cannot send to %s: %s", c->endpoint, zmq_strerror(e));
}

/* Reads one message off sock (all its frames; the last one is the reply, so an empty
 * envelope frame in front is tolerated).  Returns 1 with a reply, 0 when none is there. */
static int take(qw_client *c, qw_reply *out, qw_status *st, qw_err *err)
{
	zmq_msg_t msg;
	zmq_msg_init(&msg);
	if (zmq_msg_recv(&msg, c->sock, ZMQ_DONTWAIT) < 0) {
		zmq_msg_close(&msg);
		return 0;
	}
	while (zmq_msg_more(&msg)) {
		zmq_msg_close(&msg);
		zmq_msg_init(&msg);
		if (zmq_msg_recv(&msg, c->sock, 0) < 0)
			break;
	}
	*st = qw_reply_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), out, err);
	if (*st != QW_OK)
		qw_err_context(err, "a reply from qwend at %s", c->endpoint);
	zmq_msg_close(&msg);
	return 1;
}

/* Reads the monitor's events into c->connected and c->closed.  An event is two frames: 6
 * bytes (uint16 event, uint32 value), then the endpoint. */
static void read_events(qw_client *c)
{
	zmq_msg_t msg;
	zmq_msg_init(&msg);
	while (zmq_msg_recv(&msg, c->monitor, ZMQ_DONTWAIT) >= 0) {
		uint16_t event = 0;
		if (zmq_msg_size(&msg) >= 2)
			memcpy(&event, zmq_msg_data(&msg), 2);
		if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
			c->connected = true;
		else if (event == ZMQ_EVENT_DISCONNECTED)
			c->closed = true;
		while (zmq_msg_more(&msg)) {
			zmq_msg_close(&msg);
			zmq_msg_init(&msg);
			if (zmq_msg_recv(&msg, c->monitor, 0) < 0)
				break;
		}
	}
	zmq_msg_close(&msg);
}

static qw_status closed(const qw_client *c, qw_err *err)
{
	if (c->last_sent > (64u << 20))
		return qw_fail(err, QW_E_IO, "qwend closed the connection at %s\nHINT: the request "
			       "was %zu bytes; the daemon may take fewer (max-request-bytes)",
			       c->endpoint, c->last_sent);
	return qw_fail(err, QW_E_IO, "qwend closed the connection at %s (did it stop or "
		       "restart?)", c->endpoint);
}

qw_status qw_client_poll(qw_client *c, qw_reply *out, bool *got, qw_err *err)
{
	qw_status st = QW_OK;
	*got = take(c, out, &st, err);
	if (*got || c->closed)
		return *got ? st : closed(c, err);
	read_events(c);
	if (c->closed) {
		/* replies the daemon sent before it closed are queued ahead of the event; give
		 * any still on their way a moment */
		zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
		zmq_poll(&item, 1, 100);
		*got = take(c, out, &st, err);
		return *got ? st : closed(c, err);
	}
	return QW_OK;
}

qw_status qw_client_recv(qw_client *c, qw_reply *out, int timeout_ms, qw_err *err)
{
	double t0 = qw_millis_now();
	zmq_pollitem_t items[2];
	qw_client_pollitems(c, items);
	for (;;) {
		bool got;
		qw_status st = qw_client_poll(c, out, &got, err);
		if (st != QW_OK || got)
			return st;
		if (c->interrupt && *c->interrupt)
			return qw_fail(err, QW_E_IO, "interrupted");
		long left = -1;
		if (timeout_ms >= 0) {
			left = timeout_ms - (long)(qw_millis_now() - t0);
			if (left <= 0)
				return no_answer(c, qw_millis_now() - t0, err);
		}
		if (zmq_poll(items, 2, left) < 0 && zmq_errno() != EINTR)
			return zfail(err, "cannot wait for", c->endpoint);
	}
}

qw_status qw_client_call(qw_client *c, const qw_request *r, qw_reply *out, qw_err *err)
{
	qw_status st = qw_client_send(c, r, err);
	return st == QW_OK ? qw_client_recv(c, out, c->timeout_ms, err) : st;
}

void qw_client_pollitems(const qw_client *c, zmq_pollitem_t items[2])
{
	items[0] = (zmq_pollitem_t){.socket = c->sock, .events = ZMQ_POLLIN};
	items[1] = (zmq_pollitem_t){.socket = c->monitor, .events = ZMQ_POLLIN};
}

void qw_client_close(qw_client *c)
{
	if (c->sock) {
		zmq_socket_monitor(c->sock, NULL, 0);
		zmq_close(c->sock);
	}
	if (c->monitor)
		zmq_close(c->monitor);
	if (c->own_ctx && c->zctx)
		zmq_ctx_term(c->zctx);
	c->sock = c->monitor = c->zctx = NULL;
	c->own_ctx = false;
}
