/* channel.h - a byte stream from one pipeline stage to the next (or back), whatever carries
 * it: a shared-memory ring between processes on one host (the CPU backend's hand-over), or a
 * TCP connection (stages on different hosts).  Hand-overs between GPUs are not a channel:
 * they go device to device over NCCL (kernels/cuda/nccl_pipe.h).
 *
 * Owns: qw_channel (send / recv of exact byte counts, blocking) and its two host
 * implementations.
 */
#ifndef QW_IPC_CHANNEL_H
#define QW_IPC_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

typedef struct qw_channel qw_channel;

struct qw_channel {
	const char *kind;       /* "shm" or "tcp" */
	char link[160];         /* what carries it, for reports */
	qw_status (*send)(qw_channel *c, const void *buf, size_t n, qw_err *err);
	qw_status (*recv)(qw_channel *c, void *buf, size_t n, qw_err *err);
	void (*close)(qw_channel *c);
	void *impl;
};

/* A one-way shared-memory ring (ring.h) of `bytes` (rounded to a power of two), in a memfd
 * mapping that survives fork: create it before forking, then one process sends and the
 * other receives.  Large messages stream through the ring; a waiting side sleeps. */
qw_status qw_shm_channel_create(size_t bytes, qw_channel *out, qw_err *err);

/* The same over a ring the caller has placed in shared memory it maps (the daemon's region);
 * closing the channel leaves the ring alone.  A wait fails once the ring is aborted. */
struct qw_ring;
qw_status qw_ring_channel(struct qw_ring *r, qw_channel *out, qw_err *err);

/* TCP: a listening socket on host:port (port 0 picks one; *port gets it), then accept one
 * peer; or connect to host:port.  The connection carries both directions. */
qw_status qw_tcp_listen(const char *host, int *port, int *listen_fd, qw_err *err);
qw_status qw_tcp_accept(int listen_fd, qw_channel *out, qw_err *err);
qw_status qw_tcp_connect(const char *host, int port, qw_channel *out, qw_err *err);

#endif
