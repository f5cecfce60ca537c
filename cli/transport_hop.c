/* transport_hop.c - one hop between host processes, either side, over qw_channels (shm
 * rings, tcp), and the chain of stages the local transports run: one process per stage, as
 * the daemon's pipeline runs.  See transport_check.h. */
#include "cli/transport_check.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ipc/checksum.h"
#include "loader/clock.h"

#define MAGIC 0x43545751u   /* "QWTC" */

/* What precedes every transfer. */
typedef struct header {
	uint32_t magic, stage, iter, size_idx;
	uint64_t bytes, checksum, seed;
	uint32_t dtype, iters;      /* iters: transfers of this size before the receiver acks */
} header;

// ---------------------------------------------------------------------------------------
// one hop, either side

int tc_send_side(const tc_opts *o, int stage, qw_channel *fwd, qw_channel *back,
		 tc_report *rep, qw_err *err)
{
	uint8_t *buf = malloc(o->sizes[o->n_sizes - 1] + 1);
	if (!buf)
		return qw_fail(err, QW_E_NOMEM, "out of memory"), 1;
	for (int s = 0; s < o->n_sizes; s++) {
		double sending = 0;      /* the pattern is made between sends, outside the timing */
		for (int it = 0; it < o->iters; it++) {
			uint64_t n = o->sizes[s];
			tc_fill(buf, n, o->dtype, o->seed, stage, it);
			header h = {MAGIC, (uint32_t)stage, (uint32_t)it, (uint32_t)s, n,
				    qw_checksum(buf, n), o->seed, (uint32_t)o->dtype, (uint32_t)o->iters};
			if (o->corrupt && stage == 0 && s == 0 && it == 0)
				buf[n / 3] ^= 0x08;                   /* in flight, after the checksum */
			double t = qw_seconds_now();
			if (fwd->send(fwd, &h, sizeof h, err) || fwd->send(fwd, buf, n, err)) {
				free(buf);
				return 1;
			}
			sending += qw_seconds_now() - t;
		}
		double t0 = qw_seconds_now();
		uint8_t ack;
		if (back->recv(back, &ack, 1, err)) {
			free(buf);
			return 1;
		}
		rep->r[stage][s].seconds = sending + (qw_seconds_now() - t0);
	}
	free(buf);
	return 0;
}

/* Checks one received transfer against its header and the pattern it recomputes. */
static void verify(const header *h, const uint8_t *buf, uint8_t *want, int hop, tc_result *r)
{
	tc_fill(want, h->bytes, (tc_dtype)h->dtype, h->seed, (int)h->stage, (int)h->iter);
	if (qw_checksum(buf, h->bytes) == h->checksum && qw_checksum(want, h->bytes) == h->checksum &&
	    memcmp(buf, want, h->bytes) == 0) {
		r->verified++;
		return;
	}
	r->wrong++;
	uint64_t at = 0;
	while (at < h->bytes && buf[at] == want[at])
		at++;
	fprintf(stderr, "# MISMATCH hop %d -> %d, %llu bytes, transfer %u: checksum %016llx, sender's "
		"%016llx, first wrong byte %llu\n", hop, hop + 1, (unsigned long long)h->bytes, h->iter,
		(unsigned long long)qw_checksum(buf, h->bytes), (unsigned long long)h->checksum,
		(unsigned long long)at);
}

/* Receivers hold a size's transfers for verification after the ack up to this many bytes
 * ($QW_TC_STAGING_BYTES overrides it, for tests of both paths). */
static uint64_t staging_max(void)
{
	const char *v = getenv("QW_TC_STAGING_BYTES");
	return v ? strtoull(v, NULL, 10) : 512ull << 20;
}

int tc_recv_side(const tc_opts *o, int hop, qw_channel *in, qw_channel *back,
		 tc_report *rep, int expect_sizes, qw_err *err)
{
	uint8_t *stage_buf = NULL, *want = NULL;
	header *heads = NULL;
	uint64_t cap = 0, want_cap = 0;     /* bytes of stage_buf and of want */
	int rc = 0, heads_cap = 0;
	for (int s = 0; !rc && (expect_sizes < 0 || s < expect_sizes); s++) {
		int got = 0, iters = 1;
		bool staged = true;
		for (int it = 0; it < iters; it++, got++) {
			header first;       /* the first header is read aside: heads may grow */
			header *h = it == 0 ? &first : &heads[it];
			if (in->recv(in, h, sizeof *h, err)) {
				rc = expect_sizes < 0 && s > 0 && it == 0 ? 0 : 1;   /* server: peer done */
				goto out;
			}
			if (h->magic != MAGIC || h->bytes > (1ull << 34) || h->size_idx >= TC_MAX_SIZES ||
			    h->dtype > TC_FP8 || h->iters < 1 || h->iters > 1000000) {
				qw_fail(err, QW_E_ARG, "hop %d: a malformed header (not this tool's peer?)",
					hop);
				rc = 1;
				goto out;
			}
			if (it == 0) {      /* the sender says how many transfers this size has */
				iters = (int)h->iters;
				if (iters > heads_cap) {
					header *grown = realloc(heads, (size_t)iters * sizeof *grown);
					if (!grown) {
						qw_fail(err, QW_E_NOMEM, "out of memory");
						rc = 1;
						goto out;
					}
					heads = grown;
					heads_cap = iters;
				}
				heads[0] = *h;
				h = &heads[0];
			}
			staged = h->bytes * (uint64_t)iters <= staging_max();
			uint64_t need = staged ? h->bytes * (uint64_t)iters : h->bytes;
			if (need > cap || h->bytes > want_cap) {
				free(stage_buf);
				free(want);
				cap = need > cap ? need : cap;
				want_cap = h->bytes > want_cap ? h->bytes : want_cap;
				stage_buf = malloc(cap + 1);
				want = malloc(want_cap + 1);
				if (!stage_buf || !want) {
					qw_fail(err, QW_E_NOMEM, "out of memory");
					rc = 1;
					goto out;
				}
			}
			uint8_t *slot = stage_buf + (staged ? (uint64_t)it * h->bytes : 0);
			if (in->recv(in, slot, h->bytes, err)) {
				rc = 1;
				goto out;
			}
			if (!staged)
				verify(h, slot, want, hop, &rep->r[hop][h->size_idx]);
		}
		uint8_t ack = 1;
		if (back->send(back, &ack, 1, err)) {
			rc = 1;
			goto out;
		}
		for (int it = 0; staged && it < got; it++)
			verify(&heads[it], stage_buf + (uint64_t)it * heads[it].bytes, want, hop,
			       &rep->r[hop][heads[it].size_idx]);
	}
out:
	free(stage_buf);
	free(want);
	free(heads);
	return rc;
}

// ---------------------------------------------------------------------------------------
// the chain

int tc_run_chain(const tc_opts *o, tc_report *rep, const tc_links *links, qw_err *err)
{
	int hops = o->stages - 1;
	pid_t pids[TC_MAX_HOPS + 1];
	int started = 0;
	for (; started < o->stages; started++) {
		int s = started;
		pids[s] = fork();
		if (pids[s] < 0)
			break;
		if (pids[s] > 0)
			continue;
		/* stage s: receive from s-1 first (so timings see a ready receiver), then send */
		int rc = 0;
		qw_err e = {0};
		qw_channel *data, *ack;
		if (s > 0)
			rc = links->open(links->ctx, s - 1, false, &data, &ack, &e) != QW_OK ||
			     tc_recv_side(o, s - 1, data, ack, rep, o->n_sizes, &e);
		if (!rc && s < hops)
			rc = links->open(links->ctx, s, true, &data, &ack, &e) != QW_OK ||
			     tc_send_side(o, s, data, ack, rep, &e);
		if (rc)
			fprintf(stderr, "qwen-transport-check: stage %d: %s\n", s, e.msg);
		_exit(rc);
	}
	int failed = started < o->stages;
	if (failed)
		qw_fail(err, QW_E_IO, "fork failed for stage %d", started);
	for (int s = 0; s < started; s++) {
		int status;
		if (failed)
			kill(pids[s], SIGKILL);
		waitpid(pids[s], &status, 0);
		failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	}
	return failed;
}
