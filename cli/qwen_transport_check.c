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
 *
 * This file parses, runs the transport its table names and reports; each transport is a file
 * of its own (transport_check.h).
 */
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cli/args.h"
#include "cli/transport_check.h"
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

// ---------------------------------------------------------------------------------------
// report

static const char *const dtype_names[] = {"fp16", "bf16", "fp32", "fp8"};

/* The table (or --json) of every size and hop, and the verdict: every transfer verified.
 * Returns the exit status. */
static int report(const tc_opts *o, const tc_report *rep, int failed)
{
	int hops = o->stages - 1;
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
// parse

static const char prog[] = "qwen-transport-check";

static const struct {
	const char *name;
	tc_run_fn run;
} transports[] = {{"shm", tc_run_shm}, {"tcp", tc_run_tcp}, {"nccl", tc_run_nccl}};
#define N_TRANSPORTS (int)(sizeof transports / sizeof *transports)

static bool parse_list(const char *s, long long *out, int cap, int *n)
{
	*n = 0;
	char *copy = strdup(s), *tok, *save = NULL;
	bool ok = copy != NULL;
	for (tok = strtok_r(copy, ",", &save); ok && tok; tok = strtok_r(NULL, ",", &save))
		ok = *n < cap && qw_arg_int(prog, "list", tok, 0, 1LL << 40, &out[(*n)++]);
	free(copy);
	return ok && *n > 0;
}

/* The transfer sizes: a doubling sweep MIN:MAX (sizes, when given) or one transfer of the
 * shape. */
static bool parse_sizes(tc_opts *o, const char *shape, const char *sizes)
{
	if (sizes) {
		char lo_text[64];
		const char *colon = strchr(sizes, ':');
		long long lo, hi;
		if (!colon || colon - sizes >= (long)sizeof lo_text)
			return false;
		snprintf(lo_text, sizeof lo_text, "%.*s", (int)(colon - sizes), sizes);
		if (!qw_arg_int(prog, "--sizes", lo_text, o->dsize, 1LL << 34, &lo) ||
		    !qw_arg_int(prog, "--sizes", colon + 1, lo, 1LL << 34, &hi))
			return false;
		for (long long b = lo; b <= hi && o->n_sizes < TC_MAX_SIZES; b *= 2)
			o->sizes[o->n_sizes++] = (uint64_t)(b / o->dsize * o->dsize);
	} else {
		long long dims[8];
		int n;
		if (!parse_list(shape, dims, 8, &n))
			return false;
		uint64_t elems = 1;
		for (int i = 0; i < n; i++)
			elems *= (uint64_t)dims[i];
		o->sizes[o->n_sizes++] = elems * (uint64_t)o->dsize;
	}
	return o->sizes[0] != 0;
}

/* The options into o and *run; returns -1 to go on, else the exit status (help, version, bad
 * usage, said once). */
static int parse(int argc, char **argv, tc_opts *o, tc_run_fn *run)
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
	*o = (tc_opts){.dtype = TC_BF16, .dsize = 2, .seed = 1234, .iters = 20, .stages = 2,
		       .gpus = {0, 1}, .port = -1};
	const char *mode = "local", *shape = "1,8,64", *sizes = NULL;
	long long v, list[TC_MAX_HOPS + 1];
	int c, n;
	while ((c = getopt_long(argc, argv, "t:s:d:S:n:z:p:g:jcm:H:P:ohV", opts, NULL)) != -1) {
		switch (c) {
		case 't': o->transport = optarg; break;
		case 's': shape = optarg; break;
		case 'd':
			for (n = 0; n < 4 && strcmp(optarg, dtype_names[n]); n++)
				;
			if (n == 4) {
				fprintf(stderr, "%s: --dtype: '%s' is not fp16, bf16, fp32 or fp8\n", prog,
					optarg);
				return 2;
			}
			o->dtype = (tc_dtype)n;
			o->dsize = n == TC_FP32 ? 4 : n == TC_FP8 ? 1 : 2;
			break;
		case 'S':
			if (!qw_arg_int(prog, "--seed", optarg, 0, INT64_MAX, &v))
				return 2;
			o->seed = (uint64_t)v;
			break;
		case 'n':
			if (!qw_arg_int(prog, "--iters", optarg, 1, 1000000, &v))
				return 2;
			o->iters = (int)v;
			break;
		case 'z': sizes = optarg; break;
		case 'p':
			if (!qw_arg_int(prog, "--stages", optarg, 2, TC_MAX_HOPS + 1, &v))
				return 2;
			o->stages = (int)v;
			break;
		case 'g':
			if (!parse_list(optarg, list, TC_MAX_HOPS + 1, &n) || n < 2) {
				fprintf(stderr, "%s: --gpus: '%s' is not a list of 2 to %d GPU ids\n", prog,
					optarg, TC_MAX_HOPS + 1);
				return 2;
			}
			for (int i = 0; i < n; i++)
				o->gpus[i] = (int)list[i];
			o->stages = n;
			break;
		case 'j': o->json = true; break;
		case 'c': o->corrupt = true; break;
		case 'm': mode = optarg; break;
		case 'H': o->host = optarg; break;
		case 'P':
			if (!qw_arg_int(prog, "--port", optarg, 0, 65535, &v))
				return 2;
			o->port = (int)v;
			break;
		case 'o': o->once = true; break;
		case 'h': fputs(usage, stdout); return 0;
		case 'V': printf("%s %s\n", prog, QW_VERSION); return 0;
		default: fprintf(stderr, "%s: HINT: --help lists the options\n", prog); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "%s: '%s': no arguments besides the options (HINT: --help)\n", prog,
			argv[optind]);
		return 2;
	}
	*run = NULL;
	for (int t = 0; o->transport && t < N_TRANSPORTS; t++)
		if (!strcmp(o->transport, transports[t].name))
			*run = transports[t].run;
	if (!*run) {
		if (o->transport)
			fprintf(stderr, "%s: --transport: '%s' is not shm, tcp or nccl\n", prog,
				o->transport);
		else
			fprintf(stderr, "%s: --transport is required: shm, tcp or nccl\n", prog);
		return 2;
	}
	if (!parse_sizes(o, shape, sizes)) {
		fprintf(stderr, "%s: --shape / --sizes: expected e.g. --shape 1,8,64 or --sizes "
			"1K:64M\n", prog);
		return 2;
	}
	o->mode = !strcmp(mode, "server") ? TC_SERVER : !strcmp(mode, "client") ? TC_CLIENT
											: TC_LOCAL;
	if (o->mode == TC_LOCAL && strcmp(mode, "local")) {
		fprintf(stderr, "%s: --mode: '%s' is not local, server or client\n", prog, mode);
		return 2;
	}
	if (o->mode != TC_LOCAL) {
		if (strcmp(o->transport, "tcp") != 0 || o->port < 0 ||
		    (o->mode == TC_CLIENT && !o->host)) {
			fprintf(stderr, "%s: --mode %s needs --transport tcp and --port (and --host for "
				"the client)\n", prog, mode);
			return 2;
		}
		o->stages = 2;   /* one hop: this machine and the other */
	}
	return -1;
}

// ---------------------------------------------------------------------------------------

int main(int argc, char **argv)
{
	tc_opts o;
	tc_run_fn run;
	int rc = parse(argc, argv, &o, &run);
	if (rc >= 0)
		return rc;
	tc_report *rep = mmap(NULL, sizeof *rep, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			      -1, 0);   /* the stages' processes write their results here */
	if (rep == MAP_FAILED) {
		fprintf(stderr, "%s: cannot map shared memory for the results\n", prog);
		return 1;
	}
	memset(rep, 0, sizeof *rep);
	qw_err err = {0};
	int failed = o.mode == TC_SERVER ? tc_serve_tcp(&o, rep, &err) : run(&o, rep, &err);
	if (err.msg[0])
		fprintf(stderr, "%s: %s\n", prog, err.msg);
	if (failed < 0)
		return 1;
	return o.mode == TC_SERVER ? failed : report(&o, rep, failed);
}
