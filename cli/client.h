/* client.h - a client of qwend: one ZeroMQ DEALER socket connected to the daemon.
 *
 * Owns: qw_client (the socket, a monitor that notices the daemon going away, the time the
 * daemon has for its first answer), sending a qw_request and receiving qw_reply messages
 * with a timeout, and the errors a user can act on: "qwend is not running (no socket at
 * PATH)", "qwend does not answer at ENDPOINT", "qwend closed the connection".  Several
 * clients may share one ZeroMQ context and be polled together (qw_client_pollitems).
 *
 * Every failure to reach the daemon is QW_E_IO; a reply that does not decode is QW_E_ARG.
 * An error the daemon answers with is a reply (QW_REPLY_ERROR), not a failure here.
 */
#ifndef QW_CLI_CLIENT_H
#define QW_CLI_CLIENT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <zmq.h>

#include "ipc/endpoint.h"
#include "ipc/protocol.h"
#include "loader/error.h"

#define QW_CLIENT_TIMEOUT_MS 10000   /* the default time for the daemon's first answer */

typedef struct qw_client {
	void *zctx;                       /* the ZeroMQ context */
	bool own_ctx;                     /* zctx was made by qw_client_open; close ends it */
	void *sock;                       /* the DEALER socket connected to endpoint */
	void *monitor;                    /* PAIR socket receiving sock's disconnect events */
	char endpoint[QW_ENDPOINT_MAX];   /* where the daemon is */
	char ipc_path[QW_ENDPOINT_MAX];   /* the socket file of an ipc endpoint, or "" */
	int timeout_ms;                   /* how long qw_client_call waits for the first reply */
	size_t last_sent;                 /* bytes of the last request sent */
	bool connected;                   /* a connection to the daemon was made */
	bool closed;                      /* the daemon closed the connection: once the replies
					   * it sent are read, receiving fails */
	volatile sig_atomic_t *interrupt; /* (optional) a flag a signal handler sets; a wait
					   * ends with QW_E_IO "interrupted" when it is nonzero */
} qw_client;

/* Connects c to endpoint.  zctx is a ZeroMQ context to share, or NULL for one of c's own.
 * timeout_ms (> 0, else QW_CLIENT_TIMEOUT_MS) is how long qw_client_call waits for the
 * first reply.  An ipc endpoint whose socket file is missing fails at once ("qwend is not
 * running (no socket at PATH)"); one that c may not write to names the permission.
 *
 * The socket has ZMQ_LINGER 0: nothing outlives qw_client_close.  It does not set
 * ZMQ_IMMEDIATE: with it, libzmq drops replies already received but not yet read when the
 * daemon closes the connection (the ok of a shutdown, the last chunks before a restart).
 * A request to a daemon that is not there is queued instead, and the wait for its reply
 * ends in "qwend does not answer at ENDPOINT (no connection in N s ...)". */
qw_status qw_client_open(qw_client *c, void *zctx, const char *endpoint, int timeout_ms,
			 qw_err *err);

/* Encodes r and queues it for the daemon (a send waits, up to c->timeout_ms, only when the
 * socket's high-water mark is reached). */
qw_status qw_client_send(qw_client *c, const qw_request *r, qw_err *err);

/* Waits for the next reply: timeout_ms < 0 waits until one comes, the daemon closes the
 * connection or c->interrupt is set.  On QW_OK *out holds the reply (free it with
 * qw_reply_free).  A timeout is QW_E_IO "qwend does not answer at ENDPOINT (...)". */
qw_status qw_client_recv(qw_client *c, qw_reply *out, int timeout_ms, qw_err *err);

/* Takes a reply if one is waiting, without waiting: *got says whether *out holds one.
 * Fails (QW_E_IO) only when the daemon closed the connection and no reply is left. */
qw_status qw_client_poll(qw_client *c, qw_reply *out, bool *got, qw_err *err);

/* Sends r and waits c->timeout_ms for the first reply. */
qw_status qw_client_call(qw_client *c, const qw_request *r, qw_reply *out, qw_err *err);

/* The two sockets to poll (ZMQ_POLLIN) for c, its DEALER and its monitor: when either is
 * ready, qw_client_poll has something to look at. */
void qw_client_pollitems(const qw_client *c, zmq_pollitem_t items[2]);

/* Closes the sockets (and the context if c made it).  Safe on a zeroed or closed client. */
void qw_client_close(qw_client *c);

#endif
