/* transport_tcp.c - qwen-transport-check's tcp transport: a chain of processes over loopback
 * (each stage listens for the one before it), or one hop between two machines: a server that
 * verifies what each client sends, and a client that sends and times.  See transport_check.h. */
#include "cli/transport_check.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------
// the chain over loopback

typedef struct tcp_links {
	int listen_fd[TC_MAX_HOPS], port[TC_MAX_HOPS];
	qw_channel in, out;         /* a stage's own connections (each stage is a process) */
} tcp_links;

/* The receiving side accepts the hop's connection, the sending side makes it; data and acks
 * share it. */
static qw_status open_hop(void *ctx, int hop, bool sending, qw_channel **data, qw_channel **ack,
			  qw_err *err)
{
	tcp_links *l = ctx;
	qw_channel *ch = sending ? &l->out : &l->in;
	qw_status st = sending ? qw_tcp_connect("127.0.0.1", l->port[hop], ch, err)
			       : qw_tcp_accept(l->listen_fd[hop], ch, err);
	*data = *ack = ch;
	return st;
}

static int run_loopback(const tc_opts *o, tc_report *rep, qw_err *err)
{
	int hops = o->stages - 1, made = 0, failed = -1;
	tcp_links l;
	memset(&l, 0, sizeof l);
	for (; made < hops; made++) {
		l.port[made] = 0;
		if (qw_tcp_listen("127.0.0.1", &l.port[made], &l.listen_fd[made], err) != QW_OK)
			goto out;
		snprintf(rep->link[made], sizeof rep->link[made], "tcp 127.0.0.1:%d (loopback)",
			 l.port[made]);
	}
	failed = tc_run_chain(o, rep, &(tc_links){open_hop, &l}, err);
out:
	for (int h = 0; h < made; h++)
		close(l.listen_fd[h]);
	return failed;
}

// ---------------------------------------------------------------------------------------
// between two machines

/* The client: one hop to the server, timed; the server verifies, so the client's table
 * counts every transfer it sent. */
static int run_client(const tc_opts *o, tc_report *rep, qw_err *err)
{
	qw_channel ch;
	if (qw_tcp_connect(o->host, o->port, &ch, err) != QW_OK)
		return -1;
	snprintf(rep->link[0], sizeof rep->link[0], "%s", ch.link);
	int failed = tc_send_side(o, 0, &ch, &ch, rep, err);
	ch.close(&ch);
	for (int s = 0; s < o->n_sizes; s++)
		rep->r[0][s].verified = (uint64_t)o->iters;
	return failed;
}

int tc_run_tcp(const tc_opts *o, tc_report *rep, qw_err *err)
{
	return o->mode == TC_CLIENT ? run_client(o, rep, err) : run_loopback(o, rep, err);
}

int tc_serve_tcp(const tc_opts *o, tc_report *rep, qw_err *err)
{
	const char *host = o->host ? o->host : "127.0.0.1";
	int port = o->port, lfd;
	if (qw_tcp_listen(host, &port, &lfd, err) != QW_OK)
		return -1;
	fprintf(stderr, "# listening on %s:%d\n", host, port);
	int rc = 0;
	do {
		memset(rep, 0, sizeof *rep);
		qw_channel ch;
		if (qw_tcp_accept(lfd, &ch, err) != QW_OK) {
			close(lfd);
			return -1;
		}
		snprintf(rep->link[0], sizeof rep->link[0], "%s", ch.link);
		int failed = tc_recv_side(o, 0, &ch, &ch, rep, -1, err);
		ch.close(&ch);
		/* the server verifies; it has no timings of its own */
		uint64_t ok = 0, wrong = 0;
		for (int s = 0; s < TC_MAX_SIZES; s++)
			ok += rep->r[0][s].verified, wrong += rep->r[0][s].wrong;
		printf("# server: %llu transfers verified, %llu mismatched from %s\n%s\n",
		       (unsigned long long)ok, (unsigned long long)wrong, rep->link[0],
		       !failed && !wrong && ok ? "OK" : "FAILED");
		rc = failed || wrong || !ok;
		fflush(stdout);
	} while (!o->once);
	close(lfd);
	return rc;
}
