/* soak.c - qwend under a long, mixed and hostile load, measured.  The real daemon on the
 * demo model (2 stages, CPU) gets, until the time is up, rounds of:
 *   - CLIENTS requests at once, one client each: chat with and without the fixture image,
 *     token ids, stop strings, sampling with seeds, streamed or not;
 *   - a few clients that disconnect mid-stream and requests cancelled by another client;
 *   - malformed and hostile messages: random mutations and cuts of valid requests, random
 *     bytes, keys given twice, deep nesting, 7 MB of nils, a NUL in chat text, images past
 *     the limits, a message past max-request-bytes;
 * while another process SIGKILLs a worker every KILL_EVERY seconds and times the pipeline's
 * way back to ready.  At the end the daemon must be ready with nothing running or held, and
 * the figures are printed: requests by outcome, malformed messages by reply, kills and
 * recovery times, and the daemon's resident memory before and after.
 *
 * Not part of any suite (it runs for minutes):
 *   build/tests/soak/soak [MINUTES [CLIENTS [KILL_EVERY_S]]]     (defaults 2, 64, 20)
 *   build/tests/soak/soak probes     the attacks of issue 17 one by one, measured: 60 MB of
 *                                    nils, sixteen 8000 x 8000 PNGs (and a status meanwhile),
 *                                    a key given twice
 *   build/tests/soak/soak recovery [STAGES [KILLS [MODEL]]]   (defaults 3, 30, demo)
 *                                    an idle daemon's worker SIGKILLed KILLS times, each
 *                                    stage in turn: the time from the kill to ready again,
 *                                    and which workers were started again
 * from the repository root; QW_BIN picks the qwend to drive (build/bin by default), so the
 * same figures can be taken of an older build. */
#include "tests/unit/qwend_harness.h"

#include <png.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "cli/client.h"
#include "daemon/image/image.h"
#include "loader/clock.h"

static double minutes = 2, kill_every = 20;
static int clients = 64;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng >> 33) % n;
}

/* Sets a process's peak resident memory (VmHWM) back to what it holds now. */
static void reset_peak(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/clear_refs", (int)pid);
	FILE *f = fopen(path, "w");
	if (f) {
		fputs("5", f);
		fclose(f);
	}
}

/* VmRSS and VmHWM of a process, in kB. */
static void memory_kb(pid_t pid, long *rss, long *hwm)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	*rss = *hwm = -1;
	while (f && fgets(line, sizeof line, f)) {
		sscanf(line, "VmRSS: %ld kB", rss);
		sscanf(line, "VmHWM: %ld kB", hwm);
	}
	if (f)
		fclose(f);
}

// ---------------------------------------------------------------------------------------
// what came back

typedef struct tally {
	long requests, finished, length, stopped, cancelled, errors_by_kind[8], closed;
	long malformed, malformed_refused, malformed_accepted, malformed_dropped;
	long disconnects, cancels;
	long tokens;
} tally;

static const char *const codes[] = {"bad_request", "too_large", "busy", "not_ready", "internal"};

static void count(tally *t, const outcome *o)
{
	t->requests++;
	t->tokens += o->n_tokens;
	if (o->finish[0]) {
		t->finished++;
		t->length += !strcmp(o->finish, "length");
		t->stopped += !strcmp(o->finish, "stop");
		t->cancelled += !strcmp(o->finish, "cancelled");
	} else if (o->code[0]) {
		int k = 5;
		for (int i = 0; i < 5; i++)
			if (!strcmp(o->code, codes[i]))
				k = i;
		t->errors_by_kind[k]++;
	} else {
		t->closed++;
	}
}

// ---------------------------------------------------------------------------------------
// requests

static const char *const words[] = {"the", "house", "stands", "by", "a", "river", "and",
				    "its", "roof", "is", "red", "what", "colour", "describe",
				    "picture", "count", "windows", "tell", "me", "story"};

typedef struct req_store {
	qw_request r;
	qw_req_message msg;
	qw_item items[2];
	char text[256];
	int32_t ids[64];
	const char *stop[1];
	size_t stop_len[1];
} req_store;

static void random_request(req_store *s, const membuf *png, int vocab)
{
	memset(s, 0, sizeof *s);
	qw_request *r = &s->r;
	*r = (qw_request){.op = QW_OP_SUBMIT, .temperature = -1, .top_k = -1, .stream = true,
			  .max_tokens = 1 + (int)rnd(16)};
	int kind = (int)rnd(6);
	if (kind == 0) {                       /* token ids */
		int n = 1 + (int)rnd(60);
		for (int i = 0; i < n; i++)
			s->ids[i] = (int32_t)rnd((uint32_t)vocab);
		r->token_ids = s->ids;
		r->n_token_ids = n;
	} else {                               /* chat, one in four with the image */
		size_t at = 0;
		for (int i = 0, n = 3 + (int)rnd(20); i < n; i++)
			at += (size_t)snprintf(s->text + at, sizeof s->text - at, "%s%s", i ? " " : "",
					       words[rnd(20)]);
		int k = 0;
		if (kind == 1)
			s->items[k++] = (qw_item){QW_ITEM_IMAGE, (const char *)png->p, png->n};
		s->items[k++] = (qw_item){QW_ITEM_TEXT, s->text, at};
		s->msg = (qw_req_message){"user", 4, s->items, k, NULL, 0, NULL, 0};
		r->messages = &s->msg;
		r->n_messages = 1;
	}
	if (rnd(4) == 0) {
		s->stop[0] = words[rnd(20)];
		s->stop_len[0] = strlen(s->stop[0]);
		r->stop = s->stop;
		r->stop_len = s->stop_len;
		r->n_stop = 1;
	}
	if (rnd(2))
		r->greedy = true;
	else
		r->temperature = 0.8, r->top_p = 0.9, r->seed = rnd(1000), r->has_seed = true;
	r->stream = rnd(5) != 0;
}

/* Clients that leave after their first chunk, and requests another client cancels. */
static void leave_and_cancel(const char *endpoint, const membuf *png, int vocab, tally *t)
{
	enum { N = 4 };
	req_store s[N];
	qw_client c[N], canceller;
	qw_err err = {0};
	if (qw_client_open(&canceller, NULL, endpoint, 10000, &err) != QW_OK)
		fail_msg("%s", err.msg);
	for (int i = 0; i < N; i++) {
		random_request(&s[i], png, vocab);
		s[i].r.max_tokens = 400;
		s[i].r.stream = true;
		if (qw_client_open(&c[i], NULL, endpoint, 10000, &err) != QW_OK ||
		    qw_client_send(&c[i], &s[i].r, &err) != QW_OK)
			fail_msg("%s", err.msg);
	}
	for (int i = 0; i < N; i++) {
		qw_reply rep;
		uint64_t id = 0;
		/* accepted, then a chunk (or an error: busy, not ready during a restart) */
		while (qw_client_recv(&c[i], &rep, 30000, &err) == QW_OK) {
			bool end = rep.type != QW_REPLY_ACCEPTED;
			if (rep.type == QW_REPLY_ACCEPTED)
				id = rep.request;
			qw_reply_free(&rep);
			if (end)
				break;
		}
		if (!id) {
			qw_client_close(&c[i]);
			continue;
		}
		if (i % 2 == 0) {
			qw_client_close(&c[i]);   /* gone mid-stream */
			t->disconnects++;
			continue;
		}
		qw_request cancel = {.op = QW_OP_CANCEL, .target = id};
		if (qw_client_call(&canceller, &cancel, &rep, &err) == QW_OK) {
			t->cancels += rep.type == QW_REPLY_OK;
			qw_reply_free(&rep);
		}
		qw_client_close(&c[i]);
	}
	qw_client_close(&canceller);
}

// ---------------------------------------------------------------------------------------
// malformed and hostile messages

/* Raw msgpack writing, enough for hostile messages. */
typedef struct bytes_buf {
	uint8_t *p;
	size_t n, cap;
} bytes_buf;

static void raw(bytes_buf *b, const void *d, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
}

static void pack_s(bytes_buf *b, const char *s)
{
	uint8_t h = (uint8_t)(0xa0 | strlen(s));
	raw(b, &h, 1);
	raw(b, s, strlen(s));
}

static void head(bytes_buf *b, int fields, const char *op)
{
	uint8_t m = (uint8_t)(0x80 | fields);
	raw(b, &m, 1);
	pack_s(b, "v");
	raw(b, "\x01", 1);
	pack_s(b, "op");
	pack_s(b, op);
}

/* A chat submit of one user message holding items, encoded into b. */
static void chat_into(bytes_buf *b, qw_item *items, int n)
{
	qw_req_message m = {"user", 4, items, n, NULL, 0, NULL, 0};
	qw_request r = {.op = QW_OP_SUBMIT, .messages = &m, .n_messages = 1, .temperature = -1,
			.top_k = -1, .stream = true};
	char *buf;
	size_t len;
	qw_request_encode(&r, &buf, &len, NULL);
	raw(b, buf, len);
	free(buf);
}

/* One hostile message of kind k into b. */
static void hostile(int k, bytes_buf *b, const uint8_t *valid, size_t valid_len,
		    const membuf *big_png)
{
	b->n = 0;
	switch (k) {
	case 0: {                              /* a valid request, mutated */
		raw(b, valid, valid_len);
		for (int i = 0, n = 1 + (int)rnd(4); i < n; i++)
			b->p[rnd((uint32_t)b->n)] = (uint8_t)rnd(256);
		break;
	}
	case 1:                                /* cut anywhere */
		raw(b, valid, rnd((uint32_t)valid_len));
		break;
	case 2:                                /* random bytes */
		for (int i = 0, n = (int)rnd(200); i < n; i++) {
			uint8_t x = (uint8_t)rnd(256);
			raw(b, &x, 1);
		}
		break;
	case 3:                                /* a key given twice */
		head(b, 3, "status");
		pack_s(b, "op");
		pack_s(b, "shutdown");
		break;
	case 4:                                /* nested 40 deep */
		head(b, 3, "status");
		pack_s(b, "x");
		for (int i = 0; i < 40; i++)
			raw(b, "\x91", 1);
		raw(b, "\xc0", 1);
		break;
	case 5: {                              /* 7 MB of nils */
		head(b, 3, "status");
		pack_s(b, "x");
		raw(b, "\xdd\x00\x70\x00\x00", 5);
		size_t at = b->n;
		b->cap = at + (7u << 20);
		b->p = realloc(b->p, b->cap);
		memset(b->p + at, 0xc0, 7u << 20);
		b->n = at + (7u << 20);
		break;
	}
	case 6: {                              /* a NUL in chat text */
		qw_item it = {QW_ITEM_TEXT, "hello\0there", 11};
		chat_into(b, &it, 1);
		break;
	}
	case 7: {                              /* images past the token limits */
		qw_item it[8];
		for (int i = 0; i < 8; i++)
			it[i] = (qw_item){QW_ITEM_IMAGE, (const char *)big_png->p, big_png->n};
		chat_into(b, it, 8);
		break;
	}
	default: {                             /* past max-request-bytes: dropped by ZeroMQ */
		b->cap = (9u << 20);
		b->p = realloc(b->p, b->cap);
		memset(b->p, 0x42, 9u << 20);
		b->n = 9u << 20;
		break;
	}
	}
}

static void malformed_round(const char *endpoint, int n, const uint8_t *valid, size_t valid_len,
			    const membuf *big_png, tally *t)
{
	bytes_buf b = {0};
	for (int i = 0; i < n; i++) {
		int k = (int)rnd(9);
		if (k >= 4 && rnd(4))          /* the heavy kinds less often */
			k = (int)rnd(3);
		hostile(k, &b, valid, valid_len, big_png);
		qw_reply rep;
		t->malformed++;
		/* past max-request-bytes no reply comes: ZeroMQ drops the connection */
		if (!raw_exchange(endpoint, b.p, b.n, 1, &rep, k == 8 ? 500 : 10000)) {
			t->malformed_dropped++;    /* past max-request-bytes (or an empty message) */
			if (k != 8 && b.n != 0)
				fail_msg("a hostile message of kind %d (%zu bytes) got no reply", k, b.n);
			continue;
		}
		if (rep.type == QW_REPLY_ERROR)
			t->malformed_refused++;
		else
			t->malformed_accepted++;   /* a mutation that is still a valid request */
		qw_reply_free(&rep);
	}
	free(b.p);
}

// ---------------------------------------------------------------------------------------
// the killer

/* In a child: every kill_every seconds SIGKILL one worker, then time the way back to
 * ready.  Writes "kills total_s worst_s" to fd at the end. */
static void killer(qwend *d, double until, int fd)
{
	int kills = 0;
	double total = 0, worst = 0;
	while (qw_seconds_now() + kill_every < until) {
		usleep((useconds_t)(kill_every * 1e6));
		json_t *s = qwend_status(d);
		json_t *stages = json_object_get(s, "stages");
		pid_t victim = (pid_t)json_integer_value(json_object_get(
			json_array_get(stages, rnd((uint32_t)json_array_size(stages))), "pid"));
		json_int_t restarts = json_integer_value(json_object_get(s, "restarts"));
		json_decref(s);
		if (victim <= 0)
			continue;
		double t0 = qw_seconds_now();
		kill(victim, SIGKILL);
		kills++;
		/* back: the restart counted and the new workers ready */
		for (bool back = false; !back && qw_seconds_now() - t0 < 120;) {
			usleep(5000);
			s = qwend_status(d);
			back = json_integer_value(json_object_get(s, "restarts")) > restarts &&
			       !strcmp(json_string_value(json_object_get(s, "state")), "ready");
			json_decref(s);
		}
		double took = qw_seconds_now() - t0;
		total += took;
		worst = took > worst ? took : worst;
	}
	char line[128];
	int n = snprintf(line, sizeof line, "%d %f %f\n", kills, total, worst);
	if (write(fd, line, (size_t)n) < 0) {
	}
	_exit(0);
}

// ---------------------------------------------------------------------------------------

static void soak(void **state)
{
	use_demo_cache();
	qwend d;
	qwend_start(&d, "demo", (const char *[]){"--stages", "2", "--max-restarts", "1000",
						 "--max-request-bytes", "8M", "--max-queue", "100000",
						 NULL}, NULL, true);
	json_t *st = qwend_status(&d);
	int vocab = (int)json_integer_value(json_object_get(json_object_get(st, "model"),
							    "vocab"));
	json_decref(st);
	membuf png = fixture_png("tiny-moe");
	qw_image big = {2000, 2000, calloc(2000u * 2000u, 3)};
	membuf big_png = encode_png(&big, PNG_COLOR_TYPE_RGB);
	free(big.rgb);
	req_store valid_store;
	random_request(&valid_store, &png, vocab);
	char *valid;
	size_t valid_len;
	qw_request_encode(&valid_store.r, &valid, &valid_len, NULL);

	tally t = {0};
	req_store *store = calloc((size_t)clients, sizeof *store);
	qw_request *reqs = calloc((size_t)clients, sizeof *reqs);
	outcome *out = calloc((size_t)clients, sizeof *out);
	/* a warm-up round, then the daemon's memory */
	for (int i = 0; i < clients; i++) {
		random_request(&store[i], &png, vocab);
		reqs[i] = store[i].r;
	}
	run_concurrently(d.endpoint, reqs, clients, out);
	for (int i = 0; i < clients; i++)
		outcome_free(&out[i]);
	long rss0, hwm0, rss1, hwm1, rss_max = 0;
	memory_kb(d.pid, &rss0, &hwm0);

	double began = qw_seconds_now(), until = began + minutes * 60;
	int pipefd[2];
	if (pipe(pipefd) != 0)
		fail_msg("pipe");
	fflush(NULL);
	pid_t kid = fork();
	if (kid == 0) {
		close(pipefd[0]);
		killer(&d, until, pipefd[1]);
	}
	close(pipefd[1]);
	int rounds = 0, n_minutes = 0;
	long by_minute[64];
	while (qw_seconds_now() < until) {
		for (int i = 0; i < clients; i++) {
			random_request(&store[i], &png, vocab);
			reqs[i] = store[i].r;
		}
		run_concurrently(d.endpoint, reqs, clients, out);
		for (int i = 0; i < clients; i++) {
			count(&t, &out[i]);
			outcome_free(&out[i]);
		}
		leave_and_cancel(d.endpoint, &png, vocab, &t);
		malformed_round(d.endpoint, 20, (const uint8_t *)valid, valid_len, &big_png, &t);
		long rss, hwm;
		memory_kb(d.pid, &rss, &hwm);
		rss_max = rss > rss_max ? rss : rss_max;
		if (qw_seconds_now() - began >= 60.0 * n_minutes && n_minutes < 64)
			by_minute[n_minutes++] = rss;
		rounds++;
	}
	int kills = 0;
	double kill_total = 0, kill_worst = 0;
	char line[128] = "";
	ssize_t got = read(pipefd[0], line, sizeof line - 1);
	if (got > 0) {
		line[got] = '\0';
		sscanf(line, "%d %lf %lf", &kills, &kill_total, &kill_worst);
	}
	close(pipefd[0]);
	waitpid(kid, NULL, 0);
	qwend_wait_state(&d, "ready", 120);
	qwend_wait_for(&d, "requests", "running", 0, 30);
	qwend_wait_for(&d, "kv", "blocks_used", 0, 30);
	qwend_wait_for(&d, "requests", "queued", 0, 30);
	memory_kb(d.pid, &rss1, &hwm1);
	st = qwend_status(&d);
	json_int_t restarts = json_integer_value(json_object_get(st, "restarts"));
	json_decref(st);

	double secs = qw_seconds_now() - began;
	printf("# soak: %.1f min, %d rounds of %d clients at once, worker kills every %.0f s\n",
	       secs / 60, rounds, clients, kill_every);
	printf("requests      %ld (%ld tokens streamed): %ld finished (%ld length, %ld stop), "
	       "errors: %ld bad_request, %ld too_large, %ld busy, %ld not_ready, %ld internal; "
	       "%ld connections closed\n", t.requests, t.tokens, t.finished, t.length, t.stopped,
	       t.errors_by_kind[0], t.errors_by_kind[1], t.errors_by_kind[2], t.errors_by_kind[3],
	       t.errors_by_kind[4], t.closed);
	printf("mid-stream    %ld clients gone, %ld requests cancelled by another client\n",
	       t.disconnects, t.cancels);
	printf("hostile       %ld messages: %ld refused with an error, %ld still valid (accepted), "
	       "%ld past max-request-bytes (dropped by ZeroMQ)\n", t.malformed, t.malformed_refused,
	       t.malformed_accepted, t.malformed_dropped);
	printf("kills         %d workers SIGKILLed, %lld restarts; ready again in %.2f s on "
	       "average, %.2f s at worst\n", kills, (long long)restarts,
	       kills ? kill_total / kills : 0.0, kill_worst);
	printf("qwend memory  resident %ld kB after warm-up, %ld kB at most between rounds, %ld kB "
	       "at the end; peak %ld kB (%ld kB after warm-up)\n", rss0, rss_max, rss1, hwm1, hwm0);
	printf("qwend resident memory at each minute (kB):");
	for (int i = 0; i < n_minutes; i++)
		printf(" %ld", by_minute[i]);
	printf("\n");
	free(store);
	free(reqs);
	free(out);
	free(valid);
	free(png.p);
	free(big_png.p);
	qwend_stop(&d);
}

// ---------------------------------------------------------------------------------------
// probes: the attacks of issue 17, measured one by one

/* Seconds from sending bytes on a fresh client to its first reply (its type in *type). */
static double timed_raw(const char *endpoint, const void *bytes, size_t len, qw_reply *rep)
{
	double t0 = qw_seconds_now();
	if (!raw_exchange(endpoint, bytes, len, 1, rep, 120000))
		return -1;
	return qw_seconds_now() - t0;
}

static void probes(void **state)
{
	use_demo_cache();
	qwend d;
	qwend_start(&d, "demo", NULL, NULL, true);
	bytes_buf b = {0};
	qw_reply rep;
	long rss0, hwm0, rss1, hwm1;

	/* 60 MB of nils in a status request */
	reset_peak(d.pid);
	memory_kb(d.pid, &rss0, &hwm0);
	head(&b, 3, "status");
	pack_s(&b, "x");
	size_t n = 60u << 20, at = b.n + 5;
	uint8_t count[5] = {0xdd, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8),
			    (uint8_t)n};
	raw(&b, count, 5);
	b.p = realloc(b.p, at + n);
	memset(b.p + at, 0xc0, n);
	b.n = at + n;
	double took = timed_raw(d.endpoint, b.p, b.n, &rep);
	memory_kb(d.pid, &rss1, &hwm1);
	printf("60 MB of nils:  answered in %.2f s (%s); qwend's resident memory %ld MB before, "
	       "%ld MB at its peak\n", took, took < 0 ? "no reply" : rep.message ? rep.message : "?",
	       rss0 / 1024, hwm1 / 1024);
	if (took >= 0)
		qw_reply_free(&rep);

	/* sixteen 8000 x 8000 PNGs, while a status is asked */
	qw_image flat = {8000, 8000, calloc(8000u * 8000u, 3)};
	membuf png = encode_png(&flat, PNG_COLOR_TYPE_RGB);
	free(flat.rgb);
	qw_item it[16];
	for (int i = 0; i < 16; i++)
		it[i] = (qw_item){QW_ITEM_IMAGE, (const char *)png.p, png.n};
	qw_req_message m = {"user", 4, it, 16, NULL, 0, NULL, 0};
	qw_request r = {.op = QW_OP_SUBMIT, .messages = &m, .n_messages = 1, .temperature = -1,
			.top_k = -1, .stream = true};
	char *buf;
	size_t len;
	qw_request_encode(&r, &buf, &len, NULL);
	reset_peak(d.pid);
	memory_kb(d.pid, &rss0, &hwm0);
	qw_client heavy;
	qw_err err = {0};
	if (qw_client_open(&heavy, NULL, d.endpoint, 120000, &err) != QW_OK ||
	    qw_client_send(&heavy, &r, &err) != QW_OK)
		fail_msg("%s", err.msg);
	double t0 = qw_seconds_now();
	usleep(100000);
	qw_client asker;
	qw_request status = {.op = QW_OP_STATUS};
	if (qw_client_open(&asker, NULL, d.endpoint, 120000, &err) != QW_OK ||
	    qw_client_call(&asker, &status, &rep, &err) != QW_OK)
		fail_msg("%s", err.msg);
	qw_reply_free(&rep);
	qw_client_close(&asker);
	double status_s = qw_seconds_now() - t0;
	if (qw_client_recv(&heavy, &rep, 120000, &err) != QW_OK)
		fail_msg("%s", err.msg);
	took = qw_seconds_now() - t0;
	memory_kb(d.pid, &rss1, &hwm1);
	printf("16 PNGs of 8000 x 8000 (%.1f MB):  refused in %.2f s (%s: %s); a status sent 0.1 s "
	       "after them answered %.2f s after them; resident memory %ld MB before, %ld MB at its "
	       "peak\n", (double)len / 1e6, took, rep.code ? rep.code : "?",
	       rep.message ? rep.message : "", status_s, rss0 / 1024, hwm1 / 1024);
	qw_reply_free(&rep);
	qw_client_close(&heavy);
	free(buf);
	free(png.p);

	/* {"v": 1, "op": "status", "op": "shutdown"} */
	b.n = 0;
	head(&b, 3, "status");
	pack_s(&b, "op");
	pack_s(&b, "shutdown");
	took = timed_raw(d.endpoint, b.p, b.n, &rep);
	usleep(300000);
	bool gone = kill(d.pid, 0) != 0 || waitpid(d.pid, NULL, WNOHANG) == d.pid;
	printf("{\"op\": \"status\", \"op\": \"shutdown\"}:  answered %s (%s); qwend then %s\n",
	       rep.type == QW_REPLY_ERROR ? "error" : rep.type == QW_REPLY_OK ? "ok" : "status",
	       rep.message ? rep.message : "", gone ? "exited" : "still serving");
	qw_reply_free(&rep);
	free(b.p);
	if (gone)
		scratch_free(d.dir);
	else
		qwend_stop(&d);
}

// ---------------------------------------------------------------------------------------
// recovery: kill to ready

static int rec_stages = 3, rec_kills = 30;
static const char *rec_model = "demo";
static const char *rec_args[32];   /* more qwend settings (a GPU shared by stages: --kv-blocks) */

static void stage_pids(qwend *d, pid_t *pid, int n)
{
	json_t *s = qwend_status(d);
	for (int i = 0; i < n; i++)
		pid[i] = (pid_t)json_integer_value(json_object_get(
			json_array_get(json_object_get(s, "stages"), (size_t)i), "pid"));
	json_decref(s);
}

static void recovery(void **state)
{
	if (!strcmp(rec_model, "demo"))
		use_demo_cache();
	char stages[16];
	snprintf(stages, sizeof stages, "%d", rec_stages);
	const char *args[40] = {"--stages", stages, "--max-restarts", "1000"};
	for (int i = 0; rec_args[i]; i++)
		args[4 + i] = rec_args[i];
	qwend d;
	double started = qw_seconds_now();
	qwend_start(&d, rec_model, args, NULL, false);
	qwend_wait_state(&d, "ready", 3600);   /* a real model loads for minutes */
	/* every stage loading at once: what a restart of every worker costs at the least */
	printf("# start to ready: %.3f s\n", qw_seconds_now() - started);
	double total[64] = {0}, worst[64] = {0};
	int kills[64] = {0}, kept = 0, others = 0;
	for (int k = 0; k < rec_kills; k++) {
		int victim = k % rec_stages;
		pid_t before[64], after[64];
		stage_pids(&d, before, rec_stages);
		json_t *s0 = qwend_status(&d);
		json_int_t restarts = json_integer_value(json_object_get(s0, "restarts"));
		json_decref(s0);
		usleep(200000);   /* idle */
		double t0 = qw_seconds_now();
		kill(before[victim], SIGKILL);
		for (bool back = false; !back && qw_seconds_now() - t0 < 3600;) {
			usleep(1000);
			json_t *s = qwend_status(&d);
			back = json_integer_value(json_object_get(s, "restarts")) > restarts &&
			       !strcmp(json_string_value(json_object_get(s, "state")), "ready");
			json_decref(s);
		}
		double took = qw_seconds_now() - t0;
		total[victim] += took;
		worst[victim] = took > worst[victim] ? took : worst[victim];
		kills[victim]++;
		stage_pids(&d, after, rec_stages);
		for (int i = 0; i < rec_stages; i++)
			if (i != victim) {
				others++;
				kept += after[i] == before[i];
			}
	}
	printf("# recovery: %s, %d stages, %d kills of an idle worker (each stage in turn)\n",
	       rec_model, rec_stages, rec_kills);
	double all = 0;
	for (int i = 0; i < rec_stages; i++) {
		all += total[i];
		printf("stage %d killed %d times: ready again in %.3f s on average, %.3f s at worst\n",
		       i, kills[i], kills[i] ? total[i] / kills[i] : 0.0, worst[i]);
	}
	printf("all kills: %.3f s on average; the other stages kept their worker %d of %d times\n",
	       rec_kills ? all / rec_kills : 0.0, kept, others);
	qwend_stop(&d);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "recovery")) {
		if (argc > 2)
			rec_stages = atoi(argv[2]);
		if (argc > 3)
			rec_kills = atoi(argv[3]);
		if (argc > 4)
			rec_model = argv[4];
		for (int i = 5; i < argc && i - 5 < 31; i++)
			rec_args[i - 5] = argv[i];
		if (rec_stages < 1 || rec_stages > 64)
			rec_stages = 3;
		const struct CMUnitTest tests[] = {cmocka_unit_test(recovery)};
		return cmocka_run_group_tests_name("recovery", tests, NULL, NULL);
	}
	if (argc > 1 && !strcmp(argv[1], "probes")) {
		const struct CMUnitTest tests[] = {cmocka_unit_test(probes)};
		return cmocka_run_group_tests_name("probes", tests, NULL, NULL);
	}
	if (argc > 1)
		minutes = atof(argv[1]);
	if (argc > 2)
		clients = atoi(argv[2]);
	if (argc > 3)
		kill_every = atof(argv[3]);
	const struct CMUnitTest tests[] = {cmocka_unit_test(soak)};
	return cmocka_run_group_tests_name("soak", tests, NULL, NULL);
}
