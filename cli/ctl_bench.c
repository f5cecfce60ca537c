/* ctl_bench.c - qwenctl bench: N streaming requests of P random token ids, greedy, EOS
 * ignored, T tokens each, at most C in flight (one DEALER socket per slot, all polled in
 * one thread).  Prompts may begin with a shared prefix of S random ids (the same for every
 * request: a system prompt), and requests may be turns of conversations, each turn's prompt
 * the previous one's with its answer and P new ids appended (a chat resending itself).  Per
 * request it measures TTFT (submit to the first chunk), latency (submit to done) and the
 * gaps between tokens; it reports request and token throughput and their percentiles, and
 * from the daemon's status before and after, how much of the prompts its prefix cache
 * served.  Error replies (busy, ...) are counted, not fatal.  See ctl.h.
 */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/ctl.h"
#include "loader/clock.h"

#define BENCH_MAX_TOKEN 150000   /* prompts draw ids from [100, min(vocab, this)) */
#define BENCH_MIN_TOKEN 100

typedef struct bench_opts {
	int concurrency;             /* requests in flight at once */
	int requests;                /* requests in all */
	int prompt_tokens;           /* random ids per prompt (per turn) */
	int shared_prefix;           /* random ids every prompt begins with */
	int turns;                   /* requests a conversation makes, each resending the last */
	int max_tokens;              /* tokens generated per request */
	uint64_t seed;               /* seed of the prompts */
	bool json;                   /* one JSON object instead of the report */
} bench_opts;

typedef struct slot {
	qw_client client;            /* this slot's socket */
	int req;                     /* the request in flight, -1 when idle */
	uint64_t id;                 /* its daemon id, 0 until accepted */
	double t_submit, t_first, t_last; /* ms: sent, first chunk, latest chunk (0: none) */
	int tokens;                  /* token ids received in chunks */
	int32_t *conv;               /* (n_conv,) its conversation: the prompt last sent */
	int n_conv, cap_conv;
	int32_t *answer;             /* (n_answer,) the tokens streamed back for it */
	int n_answer, cap_answer;
	int conv_no;                 /* its conversation's number, -1 before the first */
	int turn;                    /* turns of it sent */
} slot;

typedef struct result {
	bool done;                   /* finished with a done reply */
	double ttft_ms, latency_ms;  /* measured here */
	int prompt_tokens, completion_tokens; /* from the done reply */
} result;

typedef struct dvec {
	double *v;
	size_t n, cap;
} dvec;

#define MAX_CODES 8
typedef struct errors {
	char code[MAX_CODES][32];    /* distinct error codes seen */
	char first[MAX_CODES][160];  /* the first message of each */
	int count[MAX_CODES];
	int n;
	int total;
} errors;


static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The prompt of request r: ids in [BENCH_MIN_TOKEN, hi), a function of (seed, r) alone. */
static void make_prompt(int32_t *ids, int n, uint64_t seed, int r, int32_t hi)
{
	uint64_t s = seed, k = (uint64_t)r + 1;
	s ^= splitmix64(&k);
	for (int i = 0; i < n; i++)
		ids[i] = BENCH_MIN_TOKEN +
			 (int32_t)(splitmix64(&s) % (uint64_t)(hi - BENCH_MIN_TOKEN));
}

static void dvec_push(dvec *d, double x)
{
	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 1024;
		double *v = realloc(d->v, cap * sizeof *v);
		if (!v)
			return;                    /* a sample lost is no reason to stop */
		d->v = v;
		d->cap = cap;
	}
	d->v[d->n++] = x;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The q-th percentile (0..100) of sorted v, interpolated linearly; NAN when empty. */
static double pct(const double *v, size_t n, double q)
{
	if (!n)
		return NAN;
	double at = q / 100 * (double)(n - 1);
	size_t lo = (size_t)at;
	return lo + 1 < n ? v[lo] + (at - (double)lo) * (v[lo + 1] - v[lo]) : v[n - 1];
}

static void count_error(errors *e, const qw_reply *r)
{
	const char *code = r->code ? r->code : "error";
	int i = 0;
	while (i < e->n && strcmp(e->code[i], code) != 0)
		i++;
	if (i == e->n && e->n < MAX_CODES) {
		snprintf(e->code[i], sizeof e->code[i], "%s", code);
		snprintf(e->first[i], sizeof e->first[i], "%s", r->message ? r->message : "");
		e->n++;
	}
	if (i < MAX_CODES)
		e->count[i]++;
	e->total++;
}

// ---------------------------------------------------------------------------------------
// the report

/* The daemon's prefix-cache figures (status prefix_cache), before and after the run. */
typedef struct prefix_figures {
	double hit_tokens, prompt_tokens;    /* NAN when the daemon gives none */
} prefix_figures;

typedef struct summary {
	int done, failed;
	double wall_s, req_per_s, out_tok_s, total_tok_s, prompt_tok_s;
	double hit_tokens, looked_tokens, hit_rate;   /* the daemon's, over the run; NAN: unknown */
	double ttft[3], lat[3], itl[2];  /* p50 p90 p99; p50 p99 */
	double ttft_mean, lat_mean, itl_mean;
} summary;

static double mean(const double *v, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += v[i];
	return n ? s / (double)n : NAN;
}

static summary summarise(const bench_opts *o, const result *res, dvec *itl, double wall_ms,
			 const prefix_figures *before, const prefix_figures *after)
{
	summary s = {0};
	double *ttft = malloc(((size_t)o->requests + 1) * sizeof *ttft);
	double *lat = malloc(((size_t)o->requests + 1) * sizeof *lat);
	double out_tokens = 0, in_tokens = 0;
	size_t n = 0;
	for (int i = 0; i < o->requests && ttft && lat; i++) {
		if (!res[i].done)
			continue;
		ttft[n] = res[i].ttft_ms;
		lat[n++] = res[i].latency_ms;
		out_tokens += res[i].completion_tokens;
		in_tokens += res[i].prompt_tokens;
	}
	s.done = (int)n;
	s.wall_s = wall_ms / 1e3;
	if (s.wall_s > 0) {
		s.req_per_s = (double)n / s.wall_s;
		s.out_tok_s = out_tokens / s.wall_s;
		s.total_tok_s = (in_tokens + out_tokens) / s.wall_s;
		s.prompt_tok_s = in_tokens / s.wall_s;
	}
	s.hit_tokens = after->hit_tokens - before->hit_tokens;
	s.looked_tokens = after->prompt_tokens - before->prompt_tokens;
	s.hit_rate = s.looked_tokens > 0 ? s.hit_tokens / s.looked_tokens : NAN;
	if (ttft && lat) {
		qsort(ttft, n, sizeof *ttft, cmp_double);
		qsort(lat, n, sizeof *lat, cmp_double);
	}
	if (itl->n)   /* answers of one chunk each leave no gaps (and no array) */
		qsort(itl->v, itl->n, sizeof *itl->v, cmp_double);
	static const double q[3] = {50, 90, 99};
	for (int k = 0; k < 3; k++) {
		s.ttft[k] = ttft ? pct(ttft, n, q[k]) : NAN;
		s.lat[k] = lat ? pct(lat, n, q[k]) : NAN;
	}
	s.itl[0] = pct(itl->v, itl->n, 50);
	s.itl[1] = pct(itl->v, itl->n, 99);
	s.ttft_mean = ttft ? mean(ttft, n) : NAN;
	s.lat_mean = lat ? mean(lat, n) : NAN;
	s.itl_mean = mean(itl->v, itl->n);
	free(ttft);
	free(lat);
	return s;
}

static json_t *jnum(double x)
{
	return isnan(x) ? json_null() : json_real(x);
}

static void report(const bench_opts *o, const summary *s, const errors *e, bool as_json)
{
	if (as_json) {
		json_t *errs = json_object();
		for (int i = 0; i < e->n; i++)
			json_object_set_new(errs, e->code[i], json_integer(e->count[i]));
		json_t *obj = json_pack(
			"{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:i, s:i, s:o, s:o, s:o, s:o, s:o,"
			" s:{s:o, s:o, s:o}, s:{s:o, s:o, s:o, s:o}, s:{s:o, s:o, s:o, s:o},"
			" s:{s:o, s:o, s:o}, s:o}",
			"requests", o->requests, "concurrency", o->concurrency,
			"prompt_tokens", o->prompt_tokens, "shared_prefix", o->shared_prefix,
			"turns", o->turns, "max_tokens", o->max_tokens,
			"completed", s->done, "seed", (json_int_t)o->seed, "failed", e->total,
			"not_finished", o->requests - s->done - e->total,
			"duration_s", jnum(s->wall_s), "request_throughput", jnum(s->req_per_s),
			"output_tokens_per_s", jnum(s->out_tok_s),
			"total_tokens_per_s", jnum(s->total_tok_s),
			"prompt_tokens_per_s", jnum(s->prompt_tok_s),
			"prefix_cache", "hit_tokens", jnum(s->hit_tokens), "prompt_tokens",
			jnum(s->looked_tokens), "hit_rate", jnum(s->hit_rate),
			"ttft_ms", "p50", jnum(s->ttft[0]), "p90", jnum(s->ttft[1]),
			"p99", jnum(s->ttft[2]), "mean", jnum(s->ttft_mean),
			"latency_ms", "p50", jnum(s->lat[0]), "p90", jnum(s->lat[1]),
			"p99", jnum(s->lat[2]), "mean", jnum(s->lat_mean),
			"itl_ms", "p50", jnum(s->itl[0]), "p99", jnum(s->itl[1]),
			"mean", jnum(s->itl_mean), "errors", errs);
		char *text = obj ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
		if (text)
			printf("%s\n", text);
		free(text);
		json_decref(obj);
		return;
	}
	printf("# bench: %d requests, concurrency %d, prompt %d tokens", o->requests,
	       o->concurrency, o->prompt_tokens);
	if (o->shared_prefix)
		printf(" after a shared prefix of %d", o->shared_prefix);
	if (o->turns > 1)
		printf(", conversations of %d turns", o->turns);
	printf(", %d tokens generated (greedy, EOS ignored), seed %llu\n", o->max_tokens,
	       (unsigned long long)o->seed);
	printf("%-20s %d done, %d failed", "requests", s->done, e->total);
	if (o->requests - s->done - e->total > 0)
		printf(", %d not finished", o->requests - s->done - e->total);
	printf(", in %.3f s\n", s->wall_s);
	printf("%-20s %.2f requests/s\n", "request throughput", s->req_per_s);
	printf("%-20s %.1f\n", "output tokens/s", s->out_tok_s);
	printf("%-20s %.1f\n", "total tokens/s", s->total_tok_s);
	printf("%-20s %.1f\n", "prompt tokens/s", s->prompt_tok_s);
	if (!isnan(s->hit_rate))
		printf("%-20s %.0f of %.0f prompt tokens (%.1f%%) from the daemon's prefix cache\n",
		       "prefix cache", s->hit_tokens, s->looked_tokens, 100 * s->hit_rate);
	printf("%-20s p50 %.2f  p90 %.2f  p99 %.2f  mean %.2f\n", "TTFT ms", s->ttft[0],
	       s->ttft[1], s->ttft[2], s->ttft_mean);
	printf("%-20s p50 %.2f  p90 %.2f  p99 %.2f  mean %.2f\n", "latency ms", s->lat[0],
	       s->lat[1], s->lat[2], s->lat_mean);
	printf("%-20s p50 %.2f  p99 %.2f  mean %.2f\n", "inter-token ms", s->itl[0], s->itl[1],
	       s->itl_mean);
	for (int i = 0; i < e->n; i++)
		printf("%-20s %s x %d (first: %s)\n", i ? "" : "errors", e->code[i], e->count[i],
		       e->first[i]);
}

// ---------------------------------------------------------------------------------------
// the run

typedef struct bench {
	const bench_opts *o;
	slot *slots;
	result *res;
	dvec itl;                    /* gaps between tokens, ms */
	errors err;
	int32_t hi;                  /* prompt ids are below this */
	int next;                    /* the next request to send */
	int finished;                /* requests done or failed */
	int next_conv, n_convs;      /* conversations: the next to begin, how many in all */
	int expected;                /* requests to send in all (fewer when a turn fails) */
	double t0, t_end;            /* first submit, latest finish (ms) */
} bench;

static bool reserve(int32_t **p, int *cap, int need)
{
	if (need <= *cap)
		return true;
	int32_t *g = realloc(*p, (size_t)need * sizeof *g);
	if (!g)
		return false;
	*p = g;
	*cap = need;
	return true;
}

/* Turns of conversation c: --turns each, the last one what is left of --requests. */
static int turns_of(const bench *b, int c)
{
	int left = b->o->requests - c * b->o->turns;
	return left < b->o->turns ? left : b->o->turns;
}

/* Whether s's conversation has a turn to send, or a new conversation may begin. */
static bool has_work(const bench *b, const slot *s)
{
	return (s->conv_no >= 0 && s->turn < turns_of(b, s->conv_no)) || b->next_conv < b->n_convs;
}

/* The slot's next prompt: the next turn of its conversation (the last prompt, its answer,
 * the turn's own ids), or a new conversation (the shared prefix, the turn's own ids).  The
 * own ids are a function of (seed, conversation, turn); the prefix's of the seed. */
static qw_status next_prompt(bench *b, slot *s, qw_err *err)
{
	const bench_opts *o = b->o;
	bool next_turn = s->conv_no >= 0 && s->turn < turns_of(b, s->conv_no);
	int keep = next_turn ? s->n_conv + s->n_answer : o->shared_prefix;
	if (!reserve(&s->conv, &s->cap_conv, keep + o->prompt_tokens))
		return qw_fail(err, QW_E_NOMEM, "out of memory for a prompt of %d tokens",
			       keep + o->prompt_tokens);
	if (next_turn) {
		memcpy(s->conv + s->n_conv, s->answer, (size_t)s->n_answer * sizeof *s->conv);
	} else {
		make_prompt(s->conv, o->shared_prefix, o->seed, -1, b->hi);
		s->conv_no = b->next_conv++;
		s->turn = 0;
	}
	make_prompt(s->conv + keep, o->prompt_tokens, o->seed, s->conv_no * o->turns + s->turn,
		    b->hi);
	s->turn++;
	s->n_conv = keep + o->prompt_tokens;
	s->n_answer = 0;
	return QW_OK;
}

static qw_status submit(bench *b, slot *s, qw_err *err)
{
	const bench_opts *o = b->o;
	qw_status st = next_prompt(b, s, err);
	if (st != QW_OK)
		return st;
	qw_request r = {.op = QW_OP_SUBMIT, .token_ids = s->conv, .n_token_ids = s->n_conv,
			.max_tokens = o->max_tokens, .greedy = true, .ignore_eos = true,
			.stream = true, .temperature = -1, .top_k = -1};
	s->t_submit = qw_millis_now();
	if (!b->t0)
		b->t0 = s->t_submit;
	s->req = b->next++;
	s->id = 0;
	s->t_first = s->t_last = 0;
	s->tokens = 0;
	return qw_client_send(&s->client, &r, err);
}

static void finish(bench *b, slot *s)
{
	b->finished++;
	b->t_end = qw_millis_now();
	s->req = -1;
}

static void on_reply(bench *b, slot *s, const qw_reply *r)
{
	double t = qw_millis_now();
	result *res = &b->res[s->req];
	switch (r->type) {
	case QW_REPLY_ACCEPTED:
		s->id = r->request;
		break;
	case QW_REPLY_CHUNK: {
		int k = r->n_token_ids > 0 ? r->n_token_ids : 1;
		if (!s->t_first)
			s->t_first = t;
		else
			for (int i = 0; i < k; i++)   /* a chunk of k tokens: k gaps of 1/k each */
				dvec_push(&b->itl, (t - s->t_last) / k);
		s->t_last = t;
		s->tokens += r->n_token_ids;
		if (r->n_token_ids > 0 && reserve(&s->answer, &s->cap_answer,
						  s->n_answer + r->n_token_ids)) {
			memcpy(s->answer + s->n_answer, r->token_ids,
			       (size_t)r->n_token_ids * sizeof *s->answer);
			s->n_answer += r->n_token_ids;
		}
		if (!s->id)
			s->id = r->request;
		break;
	}
	case QW_REPLY_DONE:
		res->done = true;
		res->ttft_ms = (s->t_first ? s->t_first : t) - s->t_submit;
		res->latency_ms = t - s->t_submit;
		res->prompt_tokens = r->prompt_tokens ? r->prompt_tokens : s->n_conv;
		res->completion_tokens = r->completion_tokens ? r->completion_tokens : s->tokens;
		finish(b, s);
		break;
	case QW_REPLY_ERROR:   /* its conversation ends here: the turns after it are not sent */
		count_error(&b->err, r);
		b->expected -= turns_of(b, s->conv_no) - s->turn;
		s->turn = turns_of(b, s->conv_no);
		finish(b, s);
		break;
	default:
		break;
	}
}

/* Ctrl-C: cancel what is in flight, give the daemon a moment, stop. */
static void cancel_all(bench *b)
{
	int C = b->o->concurrency;
	for (int i = 0; i < C; i++) {
		slot *s = &b->slots[i];
		qw_err err = {0};
		s->client.interrupt = NULL;
		if (s->req >= 0 && s->id) {
			qw_request r = {.op = QW_OP_CANCEL, .target = s->id};
			qw_client_send(&s->client, &r, &err);
		}
	}
	double t0 = qw_millis_now();
	for (int i = 0; i < C; i++) {
		qw_reply rep;
		qw_err err = {0};
		while (b->slots[i].req >= 0 && qw_millis_now() - t0 < 1000 &&
		       qw_client_recv(&b->slots[i].client, &rep, 1000 - (int)(qw_millis_now() - t0) + 1,
				      &err) == QW_OK) {
			if (rep.type == QW_REPLY_DONE || rep.type == QW_REPLY_ERROR)
				b->slots[i].req = -1;
			qw_reply_free(&rep);
		}
	}
}

/* Runs every request; returns CTL_OK, or CTL_UNREACHABLE / CTL_INTERRUPTED (the results so
 * far are kept). */
static int run(bench *b, const ctl_common *c)
{
	const bench_opts *o = b->o;
	int C = o->concurrency;
	zmq_pollitem_t *items = calloc((size_t)C * 2, sizeof *items);
	if (!items)
		return CTL_ERROR;
	for (int i = 0; i < C; i++)
		qw_client_pollitems(&b->slots[i].client, items + 2 * i);
	int rc = CTL_OK;
	qw_err err = {0};
	while (b->finished < b->expected && rc == CTL_OK) {
		for (int i = 0; i < C && !ctl_interrupted; i++)
			if (b->slots[i].req < 0 && has_work(b, &b->slots[i]) &&
			    submit(b, &b->slots[i], &err) != QW_OK)
				rc = CTL_UNREACHABLE;
		if (rc != CTL_OK || ctl_interrupted)
			break;
		/* wait until a reply, or until the oldest unanswered request runs out of time */
		long wait = -1;
		for (int i = 0; i < C; i++) {
			const slot *s = &b->slots[i];
			if (s->req < 0 || s->id || s->t_first)
				continue;
			long left = (long)(s->t_submit + c->timeout_ms - qw_millis_now());
			if (left <= 0) {
				qw_fail(&err, QW_E_IO, "qwend does not answer at %s (request %d "
					"had no answer in %.1f s)", c->endpoint, s->req,
					c->timeout_ms / 1e3);
				rc = CTL_UNREACHABLE;
			}
			if (wait < 0 || left < wait)
				wait = left > 0 ? left : 0;
		}
		if (rc != CTL_OK)
			break;
		if (zmq_poll(items, C * 2, wait) < 0)
			continue;                          /* EINTR: the loop looks at the flag */
		for (int i = 0; i < C && rc == CTL_OK; i++) {
			if (!((items[2 * i].revents | items[2 * i + 1].revents) & ZMQ_POLLIN))
				continue;
			qw_reply rep;
			bool got;
			if (qw_client_poll(&b->slots[i].client, &rep, &got, &err) != QW_OK) {
				if (b->slots[i].req < 0)
					continue;          /* closed while idle: matters if used */
				rc = err.code == QW_E_IO ? CTL_UNREACHABLE : CTL_ERROR;
				break;
			}
			if (got && b->slots[i].req >= 0)
				on_reply(b, &b->slots[i], &rep);
			if (got)
				qw_reply_free(&rep);
		}
	}
	free(items);
	if (rc != CTL_OK)
		fprintf(stderr, "qwenctl: %s\n", err.msg);
	if (ctl_interrupted) {
		cancel_all(b);
		fprintf(stderr, "qwenctl: interrupted after %d of %d requests\n", b->finished,
			o->requests);
		rc = CTL_INTERRUPTED;
	}
	return rc;
}

static void read_prefix(const json_t *st, prefix_figures *p)
{
	const json_t *pc = json_object_get(st, "prefix_cache");
	const json_t *hit = json_object_get(pc, "hit_tokens"), *all = json_object_get(pc,
									     "prompt_tokens");
	p->hit_tokens = json_is_number(hit) ? json_number_value(hit) : NAN;
	p->prompt_tokens = json_is_number(all) ? json_number_value(all) : NAN;
}

/* The daemon's prefix-cache figures now (NAN when it cannot say). */
static void fetch_prefix(const ctl_common *c, prefix_figures *p)
{
	char *text;
	json_t *st;
	*p = (prefix_figures){NAN, NAN};
	if (ctl_fetch_status(c, &text, &st) != CTL_OK)
		return;
	free(text);
	read_prefix(st, p);
	json_decref(st);
}

/* The status must say ready and give the vocabulary's size; *p gets its prefix figures. */
static int check_ready(const ctl_common *c, int32_t *hi, prefix_figures *p)
{
	char *text;
	json_t *st;
	int rc = ctl_fetch_status(c, &text, &st);
	free(text);
	if (rc != CTL_OK)
		return rc;
	read_prefix(st, p);
	const char *state = json_string_value(json_object_get(st, "state"));
	json_t *vocab = json_object_get(json_object_get(st, "model"), "vocab");
	if (!state || strcmp(state, "ready") != 0) {
		json_t *load = json_object_get(st, "load");
		double done = json_number_value(json_object_get(load, "bytes_done"));
		double total = json_number_value(json_object_get(load, "bytes_total"));
		fprintf(stderr, "qwenctl: the daemon is not ready (state %s",
			state ? state : "unknown");
		if (total > 0)
			fprintf(stderr, ", weights %.0f%% loaded", 100 * done / total);
		fprintf(stderr, "); bench needs it ready\n");
		rc = CTL_ERROR;
	} else if (!json_is_integer(vocab) || json_integer_value(vocab) <= BENCH_MIN_TOKEN + 1) {
		fprintf(stderr, "qwenctl: the daemon's status gives no usable model.vocab; bench "
			"draws prompt ids from [%d, min(vocab, %d))\n", BENCH_MIN_TOKEN,
			BENCH_MAX_TOKEN);
		rc = CTL_ERROR;
	} else {
		json_int_t v = json_integer_value(vocab);
		*hi = (int32_t)(v < BENCH_MAX_TOKEN ? v : BENCH_MAX_TOKEN);
	}
	json_decref(st);
	return rc;
}

enum { O_SEED = 256, O_JSON, O_SHARED, O_TURNS };

int ctl_bench(ctl_common *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"concurrency", required_argument, NULL, 'c'},
		{"requests", required_argument, NULL, 'N'},
		{"prompt-tokens", required_argument, NULL, 'p'},
		{"max-tokens", required_argument, NULL, 'n'},
		{"seed", required_argument, NULL, O_SEED},
		{"json", no_argument, NULL, O_JSON},
		{"shared-prefix", required_argument, NULL, O_SHARED},
		{"turns", required_argument, NULL, O_TURNS},
		CTL_COMMON_OPTIONS};
	bench_opts o = {.concurrency = 4, .requests = 32, .prompt_tokens = 128, .max_tokens = 128,
			.turns = 1};
	const qw_limits lim = QW_LIMITS_DEFAULT;
	long long v;
	int opt;
	optind = 0;
	while ((opt = getopt_long(argc, argv, CTL_SHORT("c:N:p:n:"), opts, NULL)) != -1) {
		int common = ctl_common_opt(c, opt, optarg);
		if (common < 0)
			return CTL_USAGE;
		if (common)
			continue;
		switch (opt) {
		case 'c':
			if (!qw_arg_int("qwenctl", "--concurrency", optarg, 1, 1024, &v))
				return CTL_USAGE;
			o.concurrency = (int)v;
			break;
		case 'N':
			if (!qw_arg_int("qwenctl", "--requests", optarg, 1, 1 << 24, &v))
				return CTL_USAGE;
			o.requests = (int)v;
			break;
		case 'p':
			if (!qw_arg_int("qwenctl", "--prompt-tokens", optarg, 1, lim.max_token_ids,
					&v))
				return CTL_USAGE;
			o.prompt_tokens = (int)v;
			break;
		case 'n':
			if (!qw_arg_int("qwenctl", "--max-tokens", optarg, 1, lim.max_new_tokens, &v))
				return CTL_USAGE;
			o.max_tokens = (int)v;
			break;
		case O_SEED:
			if (!qw_arg_int("qwenctl", "--seed", optarg, 0, INT64_MAX, &v))
				return CTL_USAGE;
			o.seed = (uint64_t)v;
			break;
		case O_JSON: o.json = true; break;
		case O_SHARED:
			if (!qw_arg_int("qwenctl", "--shared-prefix", optarg, 0, lim.max_token_ids,
					&v))
				return CTL_USAGE;
			o.shared_prefix = (int)v;
			break;
		case O_TURNS:
			if (!qw_arg_int("qwenctl", "--turns", optarg, 1, 1 << 16, &v))
				return CTL_USAGE;
			o.turns = (int)v;
			break;
		default:
			return ctl_option_error("bench", argv, opt);
		}
	}
	if (optind != argc)
		return ctl_usage_error("bench takes no arguments");
	if ((int64_t)o.shared_prefix + (int64_t)o.turns * (o.prompt_tokens + o.max_tokens) >
	    (int64_t)lim.max_token_ids)
		return ctl_usage_error("bench: --shared-prefix + --turns x (--prompt-tokens + "
				       "--max-tokens) is longer than a request may be");
	if (o.concurrency > o.requests)
		o.concurrency = o.requests;
	bench b = {.o = &o, .n_convs = (o.requests + o.turns - 1) / o.turns,
		   .expected = o.requests};
	prefix_figures before, after;
	int rc = check_ready(c, &b.hi, &before);
	if (rc != CTL_OK)
		return rc;
	void *zctx = zmq_ctx_new();
	b.slots = calloc((size_t)o.concurrency, sizeof *b.slots);
	b.res = calloc((size_t)o.requests, sizeof *b.res);
	if (!zctx || !b.slots || !b.res) {
		fprintf(stderr, "qwenctl: out of memory\n");
		rc = CTL_ERROR;
		goto out;
	}
	ctl_catch_sigint();
	for (int i = 0; i < o.concurrency; i++) {
		qw_err err = {0};
		b.slots[i].req = -1;
		b.slots[i].conv_no = -1;
		if (qw_client_open(&b.slots[i].client, zctx, c->endpoint, c->timeout_ms,
				   &err) != QW_OK) {
			rc = ctl_fail(&err);
			goto out;
		}
		b.slots[i].client.interrupt = &ctl_interrupted;
	}
	rc = run(&b, c);
	if (rc == CTL_OK)
		fetch_prefix(c, &after);
	else
		after = (prefix_figures){NAN, NAN};
	summary s = summarise(&o, b.res, &b.itl, b.t_end > b.t0 ? b.t_end - b.t0 : 0, &before,
			      &after);
	report(&o, &s, &b.err, o.json);
	if (rc == CTL_OK && s.done == 0)
		rc = CTL_ERROR;              /* every request failed */
out:
	for (int i = 0; b.slots && i < o.concurrency; i++) {
		qw_client_close(&b.slots[i].client);
		free(b.slots[i].conv);
		free(b.slots[i].answer);
	}
	if (zctx)
		zmq_ctx_term(zctx);
	free(b.slots);
	free(b.res);
	free(b.itl.v);
	return rc;
}
