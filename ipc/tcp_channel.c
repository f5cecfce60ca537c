/* tcp_channel.c - a TCP connection as a channel.  See channel.h. */
#include "ipc/channel.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct tcp_impl {
	int fd;
} tcp_impl;

static qw_status tcp_send(qw_channel *c, const void *buf, size_t n, qw_err *err)
{
	int fd = ((tcp_impl *)c->impl)->fd;
	const char *p = buf;
	while (n > 0) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return qw_fail(err, QW_E_IO, "tcp send to %s: %s", c->link,
				       k < 0 ? strerror(errno) : "connection closed");
		p += k;
		n -= (size_t)k;
	}
	return QW_OK;
}

static qw_status tcp_recv(qw_channel *c, void *buf, size_t n, qw_err *err)
{
	int fd = ((tcp_impl *)c->impl)->fd;
	char *p = buf;
	while (n > 0) {
		ssize_t k = recv(fd, p, n, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return qw_fail(err, QW_E_IO, "tcp receive from %s: %s", c->link,
				       k < 0 ? strerror(errno) : "the peer closed the connection");
		p += k;
		n -= (size_t)k;
	}
	return QW_OK;
}

static void tcp_close(qw_channel *c)
{
	tcp_impl *t = c->impl;
	if (t) {
		close(t->fd);
		free(t);
		c->impl = NULL;
	}
}

static qw_status wrap(int fd, const char *peer, qw_channel *out, qw_err *err)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	tcp_impl *t = malloc(sizeof *t);
	if (!t) {
		close(fd);
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	}
	t->fd = fd;
	*out = (qw_channel){.kind = "tcp", .send = tcp_send, .recv = tcp_recv, .close = tcp_close,
			    .impl = t};
	snprintf(out->link, sizeof out->link, "tcp %s", peer);
	return QW_OK;
}

static qw_status resolve(const char *host, int port, struct sockaddr_storage *sa, socklen_t *len,
			 qw_err *err)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC}, *res;
	char ports[16];
	snprintf(ports, sizeof ports, "%d", port);
	int rc = getaddrinfo(host, ports, &hints, &res);
	if (rc != 0)
		return qw_fail(err, QW_E_ARG, "tcp: cannot resolve %s: %s", host, gai_strerror(rc));
	memcpy(sa, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return QW_OK;
}

qw_status qw_tcp_listen(const char *host, int *port, int *listen_fd, qw_err *err)
{
	struct sockaddr_storage sa;
	socklen_t len;
	qw_status st = resolve(host, *port, &sa, &len, err);
	if (st != QW_OK)
		return st;
	int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, len) != 0 || listen(fd, 4) != 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return qw_fail(err, QW_E_IO, "tcp: cannot listen on %s:%d: %s", host, *port,
			       strerror(e));
	}
	if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		*port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
						       : ((struct sockaddr_in *)&sa)->sin_port);
	*listen_fd = fd;
	return QW_OK;
}

qw_status qw_tcp_accept(int listen_fd, qw_channel *out, qw_err *err)
{
	struct sockaddr_storage sa;
	socklen_t len = sizeof sa;
	int fd;
	while ((fd = accept(listen_fd, (struct sockaddr *)&sa, &len)) < 0 && errno == EINTR)
		;
	if (fd < 0)
		return qw_fail(err, QW_E_IO, "tcp: accept failed: %s", strerror(errno));
	char host[INET6_ADDRSTRLEN] = "?", peer[INET6_ADDRSTRLEN + 16];
	if (sa.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&sa)->sin_addr, host, sizeof host);
	else
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&sa)->sin6_addr, host, sizeof host);
	snprintf(peer, sizeof peer, "from %s", host);
	return wrap(fd, peer, out, err);
}

qw_status qw_tcp_connect(const char *host, int port, qw_channel *out, qw_err *err)
{
	struct sockaddr_storage sa;
	socklen_t len;
	qw_status st = resolve(host, port, &sa, &len, err);
	if (st != QW_OK)
		return st;
	int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, len) != 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return qw_fail(err, QW_E_IO, "tcp: cannot connect to %s:%d: %s", host, port,
			       strerror(e));
	}
	char peer[300];
	snprintf(peer, sizeof peer, "to %s:%d", host, port);
	return wrap(fd, peer, out, err);
}
