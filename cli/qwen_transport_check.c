/* qwen-transport-check - are activations crossing from one pipeline stage to the next intact,
 * and how fast do they cross?
 *
 *   qwen-transport-check --transport shm|tcp|nccl [--shape 1,8,64] [--dtype fp16|bf16|fp32|fp8]
 *       [--seed S] [--iters N] [--sizes MIN:MAX] [--stages N] [--gpus LIST] [--corrupt] [--json]
 *   qwen-transport-check --transport tcp --mode server --port P [--host ADDR] [--once]
 *   qwen-transport-check --transport tcp --mode client --host H --port P [...]
 *
 * One process per stage (per GPU for nccl), as the daemon's pipeline runs; stage s sends
 * tensors of the test pattern (from the seed, stage and iteration) to stage s+1, which
 * checksums what arrived (two-level XXH64, ipc/checksum.h), compares it with the sender's
 * checksum and with the pattern it recomputes, and counts every mismatch.  Per size: the
 * time of N transfers until the receiver acknowledges, as algorithm bandwidth (GB/s) and
 * time per transfer, like nccl-tests' sendrecv.  --corrupt flips one bit of the first
 * transfer after its checksum was taken.  Exit 0 iff every transfer verified.
 */
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/transport_check.h"
#include "ipc/channel.h"
#include "ipc/checksum.h"
#include "loader/clock.h"
#include "loader/version.h"

static const char usage[] =
	"usage: qwen-transport-check --transport shm|tcp|nccl [--shape 1,8,64]\n"
	"           [--dtype fp16|bf16|fp32|fp8] [--seed S] [--iters N] [--sizes MIN:MAX]\n"
	"           [--stages N] [--gpus LIST] [--corrupt] [--json]\n"
	"       qwen-transport-check --transport tcp --mode server --port P [--host ADDR] [--once]\n"
	"       qwen-transport-check --transport tcp --mode client --host H --port P [...]\n"
	"Sends deterministic tensors from pipeline stage to stage and verifies every transfer.\n"
	"\n"
	"  --transport T       shm, tcp or nccl (required)\n"
	"  --shape D0,D1,...   elements of one transfer, their product (default 1,8,64)\n"
	"  --dtype D           fp16, bf16, fp32 or fp8 (default bf16)\n"
	"  --seed S            seed of the data, 0 or more (default 1234)\n"
	"  --iters N           transfers per size, 1 to 1000000 (default 20)\n"
	"  --sizes MIN:MAX     sweep transfer sizes in bytes, doubling, K/M/G suffixes allowed,\n"
	"                      instead of --shape (default: none)\n"
	"  --stages N          processes in the chain for shm and tcp, 2 to 17 (default 2)\n"
	"  --gpus LIST         the GPUs of the chain for nccl, 2 to 17 of them (default 0,1)\n"
	"  --corrupt           flip one bit of the first transfer in flight: it must be caught\n"
	"                      (default: off)\n"
	"  --json              one JSON object instead of the table (default: off)\n"
	"  --mode M            local (one machine), server or client for tcp between two\n"
	"                      machines (default local)\n"
	"  --host ADDR         tcp: the server's address (required by client; default for\n"
	"                      server: 127.0.0.1)\n"
	"  --port P            tcp: the server's port, 0 to 65535 (required by server and\n"
	"                      client)\n"
	"  --once              server: serve one client, then exit (default: off)\n"
	"  -h, --help          this text\n"
	"  -V, --version       the version\n"
	"exit status: 0 every transfer verified, 1 a mismatch or failure, 2 bad usage\n";

#define MAGIC 0x43545751u   /* "QWTC" */

typedef struct header {
	uint32_t magic, stage, iter, size_idx;
	uint64_t bytes, checksum, seed;
	uint32_t dtype, iters;      /* iters: transfers of this size before the receiver acks */
} header;

// ---------------------------------------------------------------------------------------
// one hop, either side

/* Sends iters transfers of every size to the next stage, then waits for its ack. */
static int send_side(const tc_opts *o, int stage, qw_channel *fwd, qw_channel *back,
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

/* Receives from the previous stage, acks each size, verifies every transfer: after the ack
 * when a size's transfers fit in staging_max() (so the sender's timing is the transport's),
 * else as they arrive.  With expect_sizes < 0 (a tcp server) the sizes come from the
 * headers, until the peer closes. */
static int recv_side(const tc_opts *o, int hop, qw_channel *in, qw_channel *back,
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
// the local chain (shm, tcp over loopback)

static int run_local(const tc_opts *o, tc_report *rep, qw_err *err)
{
	int hops = o->stages - 1;
	qw_channel fwd[TC_MAX_HOPS], back[TC_MAX_HOPS];
	int listen_fd[TC_MAX_HOPS];
	memset(fwd, 0, sizeof fwd);
	memset(back, 0, sizeof back);
	bool tcp = strcmp(o->transport, "tcp") == 0;
	int ports[TC_MAX_HOPS];
	for (int h = 0; h < hops; h++) {
		qw_status st;
		if (tcp) {
			ports[h] = 0;
			st = qw_tcp_listen("127.0.0.1", &ports[h], &listen_fd[h], err);
			snprintf(rep->link[h], sizeof rep->link[h], "tcp 127.0.0.1:%d (loopback)",
				 ports[h]);
		} else {
			size_t ring = o->sizes[o->n_sizes - 1] + sizeof(header);
			ring = ring < (64u << 20) ? ring : (64u << 20);
			st = qw_shm_channel_create(ring, &fwd[h], err);
			if (st == QW_OK)
				st = qw_shm_channel_create(4096, &back[h], err);
			if (st == QW_OK)
				snprintf(rep->link[h], sizeof rep->link[h], "%s", fwd[h].link);
		}
		if (st != QW_OK)
			return 1;
	}
	pid_t pids[TC_MAX_HOPS + 1];
	for (int s = 0; s < o->stages; s++) {
		pids[s] = fork();
		if (pids[s] < 0)
			return qw_fail(err, QW_E_IO, "fork failed"), 1;
		if (pids[s] > 0)
			continue;
		/* stage s: receive from s-1 first (so timings see a ready receiver), then send */
		int rc = 0;
		qw_err e = {0};
		qw_channel in_tcp, out_tcp;
		if (s > 0) {
			qw_channel *in = &fwd[s - 1], *bk = &back[s - 1];
			if (tcp) {
				rc = qw_tcp_accept(listen_fd[s - 1], &in_tcp, &e) != QW_OK;
				in = bk = &in_tcp;
			}
			rc = rc || recv_side(o, s - 1, in, bk, rep, o->n_sizes, &e);
		}
		if (!rc && s < hops) {
			qw_channel *out = &fwd[s], *bk = &back[s];
			if (tcp) {
				rc = qw_tcp_connect("127.0.0.1", ports[s], &out_tcp, &e) != QW_OK;
				out = bk = &out_tcp;
			}
			rc = rc || send_side(o, s, out, bk, rep, &e);
		}
		if (rc)
			fprintf(stderr, "qwen-transport-check: stage %d: %s\n", s, e.msg);
		_exit(rc);
	}
	int failed = 0;
	for (int s = 0; s < o->stages; s++) {
		int status;
		waitpid(pids[s], &status, 0);
		failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	}
	for (int h = 0; h < hops; h++) {
		if (tcp)
			close(listen_fd[h]);
		else {
			fwd[h].close(&fwd[h]);
			back[h].close(&back[h]);
		}
	}
	return failed;
}

// ---------------------------------------------------------------------------------------
// output

static const char *const dtype_names[] = {"fp16", "bf16", "fp32", "fp8"};

static int report(const tc_opts *o, const tc_report *rep, int hops, int failed)
{
	uint64_t verified = 0, wrong = 0;
	json_t *results = json_array(), *links = json_array();
	if (!o->json) {
		printf("# qwen-transport-check: %s, %d stages, %s, seed %llu, %d transfers per size\n",
		       o->transport, hops + 1, dtype_names[o->dtype], (unsigned long long)o->seed,
		       o->iters);
		for (int h = 0; h < hops; h++)
			printf("# link %d -> %d: %s\n", h, h + 1, rep->link[h]);
		printf("# %12s %12s %4s %12s %12s %8s %8s\n", "size(B)", "elements", "hop", "time(us)",
		       "algbw(GB/s)", "#ok", "#wrong");
	}
	for (int h = 0; h < hops; h++)
		json_array_append_new(links, json_pack("{s:i, s:i, s:s}", "from", h, "to", h + 1, "link",
						       rep->link[h]));
	for (int s = 0; s < o->n_sizes; s++)
		for (int h = 0; h < hops; h++) {
			const tc_result *r = &rep->r[h][s];
			double per = r->seconds / o->iters, gbs = per > 0 ? o->sizes[s] / per / 1e9 : 0;
			verified += r->verified;
			wrong += r->wrong;
			json_array_append_new(results, json_pack(
				"{s:I, s:I, s:i, s:f, s:f, s:I, s:I}", "bytes", (json_int_t)o->sizes[s],
				"elements", (json_int_t)(o->sizes[s] / (uint64_t)o->dsize), "hop", h,
				"time_us", per * 1e6, "algbw_gbs", gbs, "verified",
				(json_int_t)r->verified, "wrong", (json_int_t)r->wrong));
			if (!o->json)
				printf("  %12llu %12llu %4d %12.2f %12.3f %8llu %8llu\n",
				       (unsigned long long)o->sizes[s],
				       (unsigned long long)(o->sizes[s] / (uint64_t)o->dsize), h, per * 1e6,
				       gbs, (unsigned long long)r->verified, (unsigned long long)r->wrong);
		}
	uint64_t expected = (uint64_t)o->n_sizes * (uint64_t)hops * (uint64_t)o->iters;
	bool ok = !failed && wrong == 0 && verified == expected;
	if (o->json) {
		json_t *j = json_pack("{s:s, s:i, s:s, s:I, s:i, s:o, s:o, s:I, s:I, s:b}", "transport",
				      o->transport, "stages", hops + 1, "dtype", dtype_names[o->dtype],
				      "seed", (json_int_t)o->seed, "iters", o->iters, "links", links,
				      "results", results, "verified", (json_int_t)verified, "wrong",
				      (json_int_t)wrong, "pass", ok);
		char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("%s\n", text);
		free(text);
		json_decref(j);
	} else {
		json_decref(results);
		json_decref(links);
		printf("# %llu of %llu transfers verified, %llu mismatched%s\n%s\n",
		       (unsigned long long)verified, (unsigned long long)expected,
		       (unsigned long long)wrong, failed ? "; a stage failed" : "", ok ? "OK" : "FAILED");
	}
	return ok ? 0 : 1;
}

// ---------------------------------------------------------------------------------------

static bool parse_list(const char *s, long long *out, int cap, int *n)
{
	*n = 0;
	char *copy = strdup(s), *tok, *save = NULL;
	bool ok = copy != NULL;
	for (tok = strtok_r(copy, ",", &save); ok && tok; tok = strtok_r(NULL, ",", &save))
		ok = *n < cap && qw_arg_int("qwen-transport-check", "list", tok, 0, 1LL << 40,
					    &out[(*n)++]);
	free(copy);
	return ok && *n > 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"transport", required_argument, NULL, 't'}, {"shape", required_argument, NULL, 's'},
		{"dtype", required_argument, NULL, 'd'},     {"seed", required_argument, NULL, 'S'},
		{"iters", required_argument, NULL, 'n'},     {"sizes", required_argument, NULL, 'z'},
		{"stages", required_argument, NULL, 'p'},    {"gpus", required_argument, NULL, 'g'},
		{"json", no_argument, NULL, 'j'},            {"corrupt", no_argument, NULL, 'c'},
		{"mode", required_argument, NULL, 'm'},      {"host", required_argument, NULL, 'H'},
		{"port", required_argument, NULL, 'P'},      {"once", no_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},            {"version", no_argument, NULL, 'V'},
		{0, 0, 0, 0}};
	tc_opts o = {.dtype = TC_BF16, .dsize = 2, .seed = 1234, .iters = 20, .stages = 2,
		     .gpus = {0, 1}};
	const char *mode = "local", *host = NULL, *shape = "1,8,64", *sizes = NULL;
	long long port = -1, v, list[TC_MAX_HOPS + 1];
	bool once = false;
	int c, n;
	const char *prog = "qwen-transport-check";
	while ((c = getopt_long(argc, argv, "t:s:d:S:n:z:p:g:jcm:H:P:ohV", opts, NULL)) != -1) {
		switch (c) {
		case 't': o.transport = optarg; break;
		case 's': shape = optarg; break;
		case 'd':
			for (n = 0; n < 4 && strcmp(optarg, dtype_names[n]); n++)
				;
			if (n == 4) {
				fprintf(stderr, "%s: --dtype: '%s' is not fp16, bf16, fp32 or fp8\n", prog,
					optarg);
				return 2;
			}
			o.dtype = (tc_dtype)n;
			o.dsize = n == TC_FP32 ? 4 : n == TC_FP8 ? 1 : 2;
			break;
		case 'S':
			if (!qw_arg_int(prog, "--seed", optarg, 0, INT64_MAX, &v))
				return 2;
			o.seed = (uint64_t)v;
			break;
		case 'n':
			if (!qw_arg_int(prog, "--iters", optarg, 1, 1000000, &v))
				return 2;
			o.iters = (int)v;
			break;
		case 'z': sizes = optarg; break;
		case 'p':
			if (!qw_arg_int(prog, "--stages", optarg, 2, TC_MAX_HOPS + 1, &v))
				return 2;
			o.stages = (int)v;
			break;
		case 'g':
			if (!parse_list(optarg, list, TC_MAX_HOPS + 1, &n) || n < 2) {
				fprintf(stderr, "%s: --gpus: '%s' is not a list of 2 to %d GPU ids\n", prog,
					optarg, TC_MAX_HOPS + 1);
				return 2;
			}
			for (int i = 0; i < n; i++)
				o.gpus[i] = (int)list[i];
			o.stages = n;
			break;
		case 'j': o.json = true; break;
		case 'c': o.corrupt = true; break;
		case 'm': mode = optarg; break;
		case 'H': host = optarg; break;
		case 'P':
			if (!qw_arg_int(prog, "--port", optarg, 0, 65535, &port))
				return 2;
			break;
		case 'o': once = true; break;
		case 'h': fputs(usage, stdout); return 0;
		case 'V': printf("qwen-transport-check %s\n", QW_VERSION); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (!o.transport || optind != argc || (strcmp(o.transport, "shm") && strcmp(o.transport, "tcp") &&
					       strcmp(o.transport, "nccl"))) {
		fputs(usage, stderr);
		return 2;
	}
	/* sizes: one transfer of the shape, or a doubling sweep */
	if (sizes) {
		char *colon = strchr(sizes, ':');
		long long lo, hi;
		if (!colon)
			goto bad_sizes;
		*colon = '\0';
		if (!qw_arg_int(prog, "--sizes", sizes, o.dsize, 1LL << 34, &lo) ||
		    !qw_arg_int(prog, "--sizes", colon + 1, lo, 1LL << 34, &hi))
			goto bad_sizes;
		for (long long b = lo; b <= hi && o.n_sizes < TC_MAX_SIZES; b *= 2)
			o.sizes[o.n_sizes++] = (uint64_t)(b / o.dsize * o.dsize);
	} else {
		long long dims[8];
		if (!parse_list(shape, dims, 8, &n))
			goto bad_sizes;
		uint64_t elems = 1;
		for (int i = 0; i < n; i++)
			elems *= (uint64_t)dims[i];
		o.sizes[o.n_sizes++] = elems * (uint64_t)o.dsize;
	}
	if (o.sizes[0] == 0)
		goto bad_sizes;

	tc_report *rep = mmap(NULL, sizeof *rep, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			      -1, 0);   /* the stages' processes write their results here */
	if (rep == MAP_FAILED)
		return 1;
	memset(rep, 0, sizeof *rep);
	qw_err err = {0};
	int failed;
	if (!strcmp(mode, "server") || !strcmp(mode, "client")) {
		if (strcmp(o.transport, "tcp") != 0 || port < 0 || (!strcmp(mode, "client") && !host)) {
			fputs("qwen-transport-check: --mode needs --transport tcp and --port (and --host "
			      "for the client)\n", stderr);
			return 2;
		}
		qw_channel ch;
		if (!strcmp(mode, "server")) {
			int p = (int)port, lfd;
			if (qw_tcp_listen(host ? host : "127.0.0.1", &p, &lfd, &err) != QW_OK) {
				fprintf(stderr, "%s: %s\n", prog, err.msg);
				return 1;
			}
			fprintf(stderr, "# listening on %s:%d\n", host ? host : "127.0.0.1", p);
			int rc = 0;
			do {
				memset(rep, 0, sizeof *rep);
				if (qw_tcp_accept(lfd, &ch, &err) != QW_OK) {
					fprintf(stderr, "%s: %s\n", prog, err.msg);
					return 1;
				}
				snprintf(rep->link[0], sizeof rep->link[0], "%s", ch.link);
				failed = recv_side(&o, 0, &ch, &ch, rep, -1, &err);
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
			} while (!once);
			close(lfd);
			return rc;
		}
		if (qw_tcp_connect(host, (int)port, &ch, &err) != QW_OK) {
			fprintf(stderr, "%s: %s\n", prog, err.msg);
			return 1;
		}
		snprintf(rep->link[0], sizeof rep->link[0], "%s", ch.link);
		failed = send_side(&o, 0, &ch, &ch, rep, &err);
		if (failed)
			fprintf(stderr, "%s: %s\n", prog, err.msg);
		ch.close(&ch);
		/* the client's table: timings; verification happened on the server */
		for (int s = 0; s < o.n_sizes; s++)
			rep->r[0][s].verified = (uint64_t)o.iters;
		return report(&o, rep, 1, failed);
	}
	if (!strcmp(o.transport, "nccl")) {
		char msg[512] = "";
		failed = tc_run_nccl(&o, rep, msg, sizeof msg);
		if (msg[0])
			fprintf(stderr, "%s: %s\n", prog, msg);
		if (failed < 0)
			return 1;
	} else {
		failed = run_local(&o, rep, &err);
		if (err.msg[0])
			fprintf(stderr, "%s: %s\n", prog, err.msg);
	}
	return report(&o, rep, o.stages - 1, failed);
bad_sizes:
	fprintf(stderr, "%s: --shape / --sizes: expected e.g. --shape 1,8,64 or --sizes 1K:64M\n",
		prog);
	return 2;
}
