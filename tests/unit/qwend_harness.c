/* qwend_harness.c - a real qwend for the daemon's tests.  See qwend_harness.h. */
#include "tests/unit/qwend_harness.h"

#include <errno.h>
#include <fcntl.h>
#include <png.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "cli/client.h"
#include "daemon/image/image.h"
#include "loader/clock.h"
#include "loader/safetensors.h"

void qwend_dump_log(const qwend *d)
{
	size_t len;
	char *log = read_file(d->log, &len);
	fprintf(stderr, "------ qwend log (%s) ------\n%s------\n", d->log, log ? log : "(none)");
	free(log);
}

static char *demo_root;

static void remove_demo_root(void)
{
	scratch_free(demo_root);
}

void use_demo_cache(void)
{
	if (demo_root)
		return;
	demo_root = scratch_new();
	setenv("QWEN_DEMO_DIR", demo_root, 1);
	atexit(remove_demo_root);
}

void qwend_start(qwend *d, const char *model, const char *const *args, const char *const *env,
		 bool wait_ready)
{
	qwend_start_at(d, model, NULL, args, env, wait_ready);
}

void qwend_start_at(qwend *d, const char *model, const char *endpoint,
		    const char *const *args, const char *const *env, bool wait_ready)
{
	memset(d, 0, sizeof *d);
	d->dir = scratch_new();
	if (endpoint) {
		snprintf(d->endpoint, sizeof d->endpoint, "%s", endpoint);
	} else {
		snprintf(d->socket_path, sizeof d->socket_path, "%s/q.sock", d->dir);
		snprintf(d->endpoint, sizeof d->endpoint, "ipc://%s", d->socket_path);
	}
	snprintf(d->log, sizeof d->log, "%s/qwend.log", d->dir);
	const char *argv[64] = {"--model", model, "--socket", d->endpoint};
	int n = 4;
	/* QWEND_TEST_DEVICE=cuda: the same tests on the GPU, --stages S as S stages on GPU 0 */
	const char *device = getenv("QWEND_TEST_DEVICE");
	bool cuda = device && !strcmp(device, "cuda");
	static char gpus[128];
	snprintf(gpus, sizeof gpus, "0");
	for (int i = 0; args && args[i] && n < 60; i++) {
		if (cuda && !strcmp(args[i], "--stages") && args[i + 1]) {
			int stages = atoi(args[++i]);
			for (int k = 1; k < stages && strlen(gpus) + 3 < sizeof gpus; k++)
				strcat(gpus, ",0");
			continue;
		}
		argv[n++] = args[i];
	}
	if (cuda) {
		argv[n++] = "--device";
		argv[n++] = "cuda";
		argv[n++] = "--gpus";
		argv[n++] = gpus;
	} else {   /* the CPU backend whatever the machine has (auto would pick a GPU) */
		argv[n++] = "--device";
		argv[n++] = "cpu";
	}
	argv[n] = NULL;
	d->pid = spawn_program("qwend", argv, env, d->log);
	double until = qw_seconds_now() + 30;
	struct stat st;
	while (!endpoint && stat(d->socket_path, &st) != 0) {
		int status;
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			d->pid = 0;
			qwend_dump_log(d);
			fail_msg("qwend exited before opening its socket");
		}
		if (qw_seconds_now() > until) {
			qwend_dump_log(d);
			fail_msg("qwend opened no socket in 30 s");
		}
		usleep(10000);
	}
	if (wait_ready)
		qwend_wait_state(d, "ready", 60);
}

json_t *qwend_status(qwend *d)
{
	qw_client c;
	qw_err err = {0};
	qw_reply rep;
	qw_request r = {.op = QW_OP_STATUS};
	if (qw_client_open(&c, NULL, d->endpoint, 10000, &err) != QW_OK ||
	    qw_client_call(&c, &r, &rep, &err) != QW_OK) {
		qw_client_close(&c);
		qwend_dump_log(d);
		fail_msg("status: %s", err.msg);
	}
	assert_int_equal(rep.type, QW_REPLY_STATUS);
	json_t *j = json_loads(rep.json, 0, NULL);
	assert_non_null(j);
	qw_reply_free(&rep);
	qw_client_close(&c);
	return j;
}

void qwend_wait_state(qwend *d, const char *state, double timeout_s)
{
	double until = qw_seconds_now() + timeout_s;
	for (;;) {
		json_t *s = qwend_status(d);
		bool ok = !strcmp(json_string_value(json_object_get(s, "state")), state);
		json_decref(s);
		if (ok)
			return;
		if (qw_seconds_now() > until) {
			qwend_dump_log(d);
			fail_msg("qwend was not %s within %.0f s", state, timeout_s);
		}
		usleep(20000);
	}
}

void qwend_wait_restarted(qwend *d, json_int_t restarts, double timeout_s)
{
	double until = qw_seconds_now() + timeout_s;
	for (;;) {
		json_t *s = qwend_status(d);
		bool back = json_integer_value(json_object_get(s, "restarts")) >= restarts &&
			    !strcmp(json_string_value(json_object_get(s, "state")), "ready");
		json_decref(s);
		if (back)
			return;
		if (qw_seconds_now() > until) {
			qwend_dump_log(d);
			fail_msg("qwend was not ready after restart %lld within %.0f s",
				 (long long)restarts, timeout_s);
		}
		usleep(10000);
	}
}

json_int_t qwend_status_int(qwend *d, const char *section, const char *key)
{
	json_t *s = qwend_status(d);
	json_int_t v = json_integer_value(json_object_get(json_object_get(s, section), key));
	json_decref(s);
	return v;
}

void qwend_wait_for(qwend *d, const char *section, const char *key, json_int_t want,
		    double timeout_s)
{
	double until = qw_seconds_now() + timeout_s;
	json_int_t got;
	for (;;) {
		json_t *s = qwend_status(d);
		got = json_integer_value(json_object_get(json_object_get(s, section), key));
		json_decref(s);
		if (got == want)
			return;
		if (qw_seconds_now() > until)
			break;
		usleep(20000);
	}
	qwend_dump_log(d);
	fail_msg("status %s.%s stayed %lld, not %lld, for %.0f s", section, key, (long long)got,
		 (long long)want, timeout_s);
}

int qwend_wait_exit(qwend *d, double timeout_s)
{
	double until = qw_seconds_now() + timeout_s;
	int status = -1;
	while (d->pid) {
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			d->pid = 0;
			break;
		}
		if (qw_seconds_now() > until) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &status, 0);
			d->pid = 0;
			qwend_dump_log(d);
			fail_msg("qwend did not exit within %.0f s", timeout_s);
		}
		usleep(10000);
	}
	return status;
}

void qwend_stop(qwend *d)
{
	if (d->pid)
		kill(d->pid, SIGTERM);
	int status = qwend_wait_exit(d, 30);
	struct stat st;
	bool left = d->socket_path[0] && stat(d->socket_path, &st) == 0;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || left) {
		qwend_dump_log(d);
		fail_msg("qwend did not stop cleanly (status %d; socket %s)", status,
			 left ? "left behind" : "removed");
	}
	scratch_free(d->dir);
	d->dir = NULL;
}

int qwend_run_to_exit(const char *const *args, char **log)
{
	return run_program("qwend", args, 30, log);
}

// ---------------------------------------------------------------------------------------
// requests

void outcome_free(outcome *o)
{
	free(o->text);
	free(o->reasoning);
	memset(o, 0, sizeof *o);
}

void expect_tokens(const outcome *o, const int32_t *want, int n, const char *whose,
		   const char *what)
{
	if (o->code[0])
		fail_msg("%s: error %s: %s", what, o->code, o->message);
	if (o->n_tokens != n || memcmp(o->tokens, want, (size_t)n * sizeof *want) != 0) {
		fprintf(stderr, "%s: got", what);
		for (int i = 0; i < o->n_tokens; i++)
			fprintf(stderr, " %d", o->tokens[i]);
		fprintf(stderr, "\n%s: %s", what, whose);
		for (int i = 0; i < n; i++)
			fprintf(stderr, " %d", want[i]);
		fail_msg("\n%s: the daemon's greedy tokens differ from %s", what, whose);
	}
}

static void append(char **s, const char *add, size_t n)
{
	size_t have = *s ? strlen(*s) : 0;
	*s = realloc(*s, have + n + 1);
	memcpy(*s + have, add, n);
	(*s)[have + n] = '\0';
}

/* Takes one reply into o; true when the request has ended. */
static bool take(outcome *o, const qw_reply *r)
{
	switch (r->type) {
	case QW_REPLY_ACCEPTED:
		o->id = r->request;
		return false;
	case QW_REPLY_CHUNK:
		o->chunks++;
		append(&o->text, r->text ? r->text : "", r->text_len);
		append(&o->reasoning, r->reasoning ? r->reasoning : "", r->reasoning_len);
		for (int i = 0; i < r->n_token_ids && o->n_tokens < 4096; i++)
			o->tokens[o->n_tokens++] = r->token_ids[i];
		return false;
	case QW_REPLY_DONE:
		snprintf(o->finish, sizeof o->finish, "%s", r->finish_reason);
		return true;
	case QW_REPLY_ERROR:
		snprintf(o->code, sizeof o->code, "%s", r->code);
		snprintf(o->message, sizeof o->message, "%s", r->message);
		return true;
	default:
		return false;
	}
}

void run_request(const char *endpoint, const qw_request *r, outcome *o)
{
	run_concurrently(endpoint, r, 1, o);
}

void run_concurrently(const char *endpoint, const qw_request *reqs, int n, outcome *out)
{
	void *ctx = zmq_ctx_new();
	qw_client *c = calloc((size_t)n, sizeof *c);
	bool *ended = calloc((size_t)n, sizeof *ended);
	qw_err err = {0};
	for (int i = 0; i < n; i++) {
		memset(&out[i], 0, sizeof out[i]);
		if (qw_client_open(&c[i], ctx, endpoint, 10000, &err) != QW_OK ||
		    qw_client_send(&c[i], &reqs[i], &err) != QW_OK)
			fail_msg("client %d: %s", i, err.msg);
	}
	int left = n;
	double until = qw_seconds_now() + 180;
	zmq_pollitem_t *items = calloc(2 * (size_t)n, sizeof *items);
	while (left > 0) {
		for (int i = 0; i < n; i++)
			qw_client_pollitems(&c[i], items + 2 * i);
		zmq_poll(items, 2 * n, 100);
		for (int i = 0; i < n; i++) {
			bool got = true;
			while (!ended[i] && got) {
				qw_reply rep;
				if (qw_client_poll(&c[i], &rep, &got, &err) != QW_OK) {
					out[i].closed = ended[i] = true;
					left--;
					break;
				}
				if (got) {
					if (take(&out[i], &rep)) {
						ended[i] = true;
						left--;
					}
					qw_reply_free(&rep);
				}
			}
		}
		if (qw_seconds_now() > until)
			fail_msg("%d of %d requests had not ended after 180 s", left, n);
	}
	for (int i = 0; i < n; i++)
		qw_client_close(&c[i]);
	free(items);
	free(ended);
	free(c);
	zmq_ctx_term(ctx);
}

qw_request token_request(const int32_t *ids, int n, int max_tokens, const qw_item *images,
			 int n_images)
{
	return (qw_request){.op = QW_OP_SUBMIT, .token_ids = (int32_t *)ids, .n_token_ids = n,
			    .max_tokens = max_tokens, .greedy = true, .temperature = -1,
			    .top_k = -1, .stream = true, .images = (qw_item *)images,
			    .n_images = n_images};
}

// ---------------------------------------------------------------------------------------
// one client, reply by reply

void open_client(qw_client *c, const qwend *d)
{
	qw_err err = {0};
	if (qw_client_open(c, NULL, d->endpoint, 10000, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

/* The next reply, which must be of type t. */
void expect_reply(qw_client *c, qw_reply_type t, qw_reply *r)
{
	qw_err err = {0};
	if (qw_client_recv(c, r, 30000, &err) != QW_OK)
		fail_msg("no reply: %s", err.msg);
	if (r->type != t)
		fail_msg("expected a reply of type %d, got %d (%s: %s)", t, r->type,
			 r->code ? r->code : "", r->message ? r->message : "");
}

/* Submits r on c and waits for it to be accepted and to stream its first chunk. */
uint64_t start_streaming(qw_client *c, const qw_request *r)
{
	qw_reply rep;
	qw_err err = {0};
	assert_int_equal(qw_client_send(c, r, &err), QW_OK);
	expect_reply(c, QW_REPLY_ACCEPTED, &rep);
	uint64_t id = rep.request;
	qw_reply_free(&rep);
	expect_reply(c, QW_REPLY_CHUNK, &rep);
	qw_reply_free(&rep);
	return id;
}

/* Reads c's replies to the end of its request. */
void read_to_end(qw_client *c, outcome *o)
{
	for (;;) {
		qw_reply r;
		qw_err err = {0};
		if (qw_client_recv(c, &r, 60000, &err) != QW_OK) {
			o->closed = true;
			return;
		}
		if (r.type == QW_REPLY_CHUNK)
			for (int i = 0; i < r.n_token_ids && o->n_tokens < 4096; i++)
				o->tokens[o->n_tokens++] = r.token_ids[i];
		bool end = r.type == QW_REPLY_DONE || r.type == QW_REPLY_ERROR;
		if (r.type == QW_REPLY_DONE)
			snprintf(o->finish, sizeof o->finish, "%s", r.finish_reason);
		if (r.type == QW_REPLY_ERROR) {
			snprintf(o->code, sizeof o->code, "%s", r.code);
			snprintf(o->message, sizeof o->message, "%s", r.message);
		}
		qw_reply_free(&r);
		if (end)
			return;
	}
}

bool raw_exchange(const char *endpoint, const void *bytes, size_t len, int frames,
		  qw_reply *reply, int timeout_ms)
{
	void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_DEALER);
	int zero = 0;
	zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
	zmq_connect(s, endpoint);
	if (frames == 2) {
		zmq_send(s, bytes, len / 2, ZMQ_SNDMORE);
		zmq_send(s, (const char *)bytes + len / 2, len - len / 2, 0);
	} else {
		zmq_send(s, bytes, frames ? len : 0, 0);
	}
	zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
	bool got = false;
	if (zmq_poll(&it, 1, timeout_ms) == 1) {
		zmq_msg_t m;
		zmq_msg_init(&m);
		if (zmq_msg_recv(&m, s, 0) >= 0)
			got = qw_reply_decode(zmq_msg_data(&m), zmq_msg_size(&m), reply, NULL) == QW_OK;
		zmq_msg_close(&m);
	}
	zmq_close(s);
	zmq_ctx_term(ctx);
	return got;
}

// ---------------------------------------------------------------------------------------
// fixtures

/* The model's reference.safetensors; *t its tensor `key`, which must be there. */
static qw_st_file *reference(const char *model, const char *key, const qw_tensor **t)
{
	char rel[256];
	snprintf(rel, sizeof rel, "hf/%s/reference.safetensors", model);
	qw_st_file *f;
	qw_err err = {0};
	if (qw_st_open(fixture(rel), &f, &err) != QW_OK)
		fail_msg("%s", err.msg);
	*t = qw_st_find(f, key);
	if (!*t)
		fail_msg("%s has no %s", rel, key);
	return f;
}

int32_t *fixture_ids(const char *model, const char *key, int *n)
{
	const qw_tensor *t;
	qw_st_file *f = reference(model, key, &t);
	*n = (int)t->numel;
	int32_t *ids = malloc((size_t)*n * sizeof *ids);
	for (int i = 0; i < *n; i++) {
		int64_t v;
		memcpy(&v, (const uint8_t *)t->data + 8 * i, 8);
		ids[i] = (int32_t)v;
	}
	qw_st_close(f);
	return ids;
}

membuf fixture_png(const char *model)
{
	const qw_tensor *t;
	qw_st_file *f = reference(model, "image_hwc_u8", &t);
	qw_image img = {(int)t->shape[1], (int)t->shape[0], (uint8_t *)t->data};
	membuf m = encode_png(&img, PNG_COLOR_TYPE_RGB);
	qw_st_close(f);
	return m;
}

json_t *qwenctl_submit_json(const qwend *d, const char *args)
{
	char *out;
	int rc = run_capture(&out, "{ %s --socket %s submit %s --json 2>/dev/null; }",
			     program("qwenctl"), d->endpoint, args);
	if (rc != 0)
		fail_msg("qwenctl submit %s exited %d:\n%s", args, rc, out);
	json_t *j = json_loads(out, 0, NULL);
	if (!j)
		fail_msg("qwenctl's output is not JSON:\n%s", out);
	free(out);
	return j;
}
