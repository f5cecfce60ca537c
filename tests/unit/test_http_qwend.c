/* test_http_qwend.c - qwen-http in front of the real qwend (the demo model and HF's tiny
 * fixtures, CPU backend):
 *   - chat and completions, streamed and whole, with an image as a data: URL, give the
 *     tokens and text qwenctl gets from the same daemon; n=2, stop strings; curl as README
 *     shows it; the official openai package (skipped where it is not installed);
 *   - the openai package reads the log-probabilities of a penalised greedy chat (min_p and
 *     repetition_penalty through extra_body), each qwend's and the chosen the best of its
 *     tops, streamed the same, and completions' object (test_http_logprobs has the rest);
 *   - HF's greedy tokens through /v1/completions with token-id prompts;
 *   - /tokenize of chats with tools is the token ids of Qwen's Jinja template's text;
 *   - a client that hangs up mid-stream (or while waiting for a whole answer) has its
 *     request cancelled in qwend at once, its KV blocks freed;
 *   - qwend's refusals (a broken image, past the context, a full queue) and /health and
 *     the 503s while it loads;
 *   - 200 streaming clients at once each get their whole answer, and nothing is left;
 *   - /metrics parsed by Prometheus' parser, its counters moving with the requests;
 *   - SIGTERM lets a stream under way finish. */
#include "tests/unit/http_harness.h"
#include "tests/unit/qwend_harness.h"

#include <math.h>
#include <png.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon/image/image.h"
#include "loader/clock.h"

static const char *str(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

/* "1,2,3" of a JSON list of ids. */
static char *ids_text(const json_t *a)
{
	char *s = calloc(1, 16 * json_array_size(a) + 1);
	for (size_t i = 0; i < json_array_size(a); i++)
		sprintf(s + strlen(s), "%s%lld", i ? "," : "",
			(long long)json_integer_value(json_array_get(a, i)));
	return s;
}

/* What a stream of chat (or completion) chunks adds up to. */
typedef struct streamed {
	char text[8192], reasoning[8192], ids[16384], finish[32];
	bool done;                 /* ended with [DONE] */
	int events;
} streamed;

static void add_stream(const char *body, streamed *s, int choice)
{
	memset(s, 0, sizeof *s);
	char **ev = sse_events(body);
	for (int i = 0; ev[i]; i++, s->events++) {
		if (!strcmp(ev[i], "[DONE]")) {
			s->done = !ev[i + 1];
			break;
		}
		json_t *j = json_loads(ev[i], 0, NULL);
		if (!j)
			fail_msg("event %d is not JSON: %s", i, ev[i]);
		json_t *choices = json_object_get(j, "choices");
		for (size_t k = 0; k < json_array_size(choices); k++) {
			json_t *ch = json_array_get(choices, k);
			if (json_integer_value(json_object_get(ch, "index")) != choice)
				continue;
			json_t *d = json_object_get(ch, "delta");
			strcat(s->text, d ? str(d, "content") : str(ch, "text"));
			strcat(s->reasoning, str(d, "reasoning_content"));
			json_t *ids = json_object_get(ch, "token_ids");
			if (json_array_size(ids)) {
				char *t = ids_text(ids);
				sprintf(s->ids + strlen(s->ids), "%s%s", s->ids[0] ? "," : "", t);
				free(t);
			}
			if (json_is_string(json_object_get(ch, "finish_reason")))
				snprintf(s->finish, sizeof s->finish, "%s", str(ch, "finish_reason"));
		}
		json_decref(j);
	}
	sse_free(ev);
}

static membuf picture(void)
{
	qw_image img = {48, 32, malloc(48 * 32 * 3)};
	for (int i = 0; i < 48 * 32 * 3; i++)
		img.rgb[i] = (uint8_t)(i * 7 % 251);
	membuf m = encode_png(&img, PNG_COLOR_TYPE_RGB);
	free(img.rgb);
	return m;
}

// ---------------------------------------------------------------------------------------

static bool close_to(double a, double b)
{
	return fabs(a - b) <= 1e-6 * (1 + fabs(b));
}

/* What the openai package read of the penalised, greedy chat with 3 top log-probabilities
 * (http_checks.py sdk): a value a token, qwend's (qwenctl's, on the same daemon); the chosen
 * token the best of its tops; the same streamed; and completions' shape. */
static void sdk_logprobs(const qwend *d, const json_t *j)
{
	json_t *want = qwenctl_submit_json(d, "Hello --greedy --max-tokens 6 --repetition-penalty "
					   "1.2 --presence-penalty 0.5 --frequency-penalty 0.5 "
					   "--logprobs 3");
	json_t *lp = json_object_get(j, "logprobs"), *w = json_object_get(want, "logprobs");
	json_t *st = json_object_get(j, "logprobs_stream");
	assert_int_equal(json_array_size(lp), 6);
	assert_int_equal(json_integer_value(json_object_get(j, "logprobs_tokens")), 6);
	assert_int_equal(json_array_size(w), 6);
	assert_int_equal(json_array_size(st), 6);
	for (size_t i = 0; i < 6; i++) {
		json_t *t = json_array_get(lp, i), *top = json_object_get(t, "top");
		double x = json_number_value(json_object_get(t, "logprob"));
		json_t *wt = json_array_get(w, i), *wtop = json_object_get(wt, "top");
		if (!close_to(x, json_number_value(json_object_get(wt, "logprob"))))
			fail_msg("token %zu: HTTP's logprob %.9g, qwend's %.9g", i, x,
				 json_number_value(json_object_get(wt, "logprob")));
		assert_int_equal(json_array_size(top), 3);
		assert_int_equal(json_array_size(wtop), 3);
		for (size_t k = 0; k < 3; k++)
			assert_true(close_to(json_number_value(json_array_get(json_array_get(top, k), 1)),
					     json_number_value(json_object_get(json_array_get(wtop, k),
									      "logprob"))));
		/* greedy: the chosen is the most likely */
		assert_string_equal(json_string_value(json_array_get(json_array_get(top, 0), 0)),
				    str(t, "token"));
		assert_true(x == json_number_value(json_array_get(json_array_get(top, 0), 1)));
		assert_true(json_is_array(json_object_get(t, "bytes")));
		json_t *s = json_array_get(st, i);
		assert_string_equal(json_string_value(json_array_get(s, 0)), str(t, "token"));
		assert_true(json_number_value(json_array_get(s, 1)) == x);
	}
	json_t *c = json_object_get(j, "completion_logprobs");
	json_t *toks = json_object_get(c, "tokens"), *off = json_object_get(c, "text_offset");
	json_t *tl = json_object_get(c, "token_logprobs"), *tops = json_object_get(c, "top_logprobs");
	assert_int_equal(json_array_size(toks), 4);
	assert_int_equal(json_array_size(tl), 4);
	assert_int_equal(json_integer_value(json_array_get(off, 0)), 0);
	for (size_t i = 0; i < 4; i++) {
		json_t *dict = json_array_get(tops, i);
		const char *tok = json_string_value(json_array_get(toks, i));
		assert_true(json_object_size(dict) >= 2 && json_object_size(dict) <= 3);
		assert_true(json_number_value(json_object_get(dict, tok)) ==
			    json_number_value(json_array_get(tl, i)));
		if (i)
			assert_true(json_integer_value(json_array_get(off, i)) >=
				    json_integer_value(json_array_get(off, i - 1)));
	}
	json_decref(want);
}

/* Chat (with an image) and completions through HTTP against qwenctl on the same daemon;
 * n, stop; curl; the openai package. */
static void test_same_as_qwenctl(void **state)
{
	use_demo_cache();
	qwend d;
	qwend_start(&d, "demo", (const char *[]){"--stages", "2", NULL}, NULL, true);
	qhttp h;
	qhttp_start(&h, d.endpoint, NULL);
	membuf png = picture();
	const char *image = path_in(d.dir, "p.png");
	write_file(image, png.p, png.n);
	char *url = data_url(png.p, png.n, "image/png");
	free(png.p);
	/* greedy (test_http holds what each sampling field becomes in qwend's request) */
	static const char *const sampling[][2] = {{"--greedy", "\"temperature\": 0"}};
	for (int s = 0; s < 1; s++) {
		char args[256];
		snprintf(args, sizeof args, "'What is this?' --image %s --max-tokens 6 %s", image,
			 sampling[s][0]);
		json_t *want = qwenctl_submit_json(&d, args);
		char *want_ids = ids_text(json_object_get(want, "token_ids"));
		size_t cap = strlen(url) + 1024;
		char *body = malloc(cap);
		for (int stream = 0; stream < 2; stream++) {
			/* (qwenctl puts the images before the text) */
			snprintf(body, cap, "{\"model\": \"demo-v1\", \"messages\": [{\"role\": \"user\", "
				 "\"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"%s\"}}, "
				 "{\"type\": \"text\", \"text\": \"What is this?\"}]}], \"max_tokens\": 6, %s, "
				 "\"return_token_ids\": true, \"stream\": %s}", url, sampling[s][1],
				 stream ? "true" : "false");
			http_resp r;
			http_post(h.port, "/v1/chat/completions", body, &r);
			if (r.status != 200)
				fail_msg("%d: %s", r.status, r.body);
			char text[8192], ids[16384];
			if (stream) {
				streamed st;
				add_stream(r.body, &st, 0);
				assert_true(st.done);
				assert_string_equal(st.finish, "length");
				snprintf(text, sizeof text, "%s", st.text);
				snprintf(ids, sizeof ids, "%s", st.ids);
			} else {
				json_t *j = http_json(&r), *ch = json_array_get(json_object_get(j, "choices"), 0);
				snprintf(text, sizeof text, "%s", str(json_object_get(ch, "message"), "content"));
				char *t = ids_text(json_object_get(ch, "token_ids"));
				snprintf(ids, sizeof ids, "%s", t);
				free(t);
				assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "usage"),
						 "completion_tokens")), 6);
				json_decref(j);
			}
			if (strcmp(ids, want_ids) || strcmp(text, str(want, "text")))
				fail_msg("sampling %d, stream %d:\n  http    %s \"%s\"\n  qwenctl %s \"%s\"",
					 s, stream, ids, text, want_ids, str(want, "text"));
			http_resp_free(&r);
		}
		free(body);
		free(want_ids);
		json_decref(want);
	}
	free(url);
	/* completions: the raw prompt, as qwenctl --raw sends it */
	json_t *want = qwenctl_submit_json(&d, "'Once upon a time' --raw --greedy --max-tokens 10");
	http_resp r;
	http_post(h.port, "/v1/completions", "{\"prompt\": \"Once upon a time\", \"max_tokens\": 10, "
		  "\"temperature\": 0}", &r);
	json_t *j = http_json(&r);
	assert_string_equal(str(json_array_get(json_object_get(j, "choices"), 0), "text"),
			    str(want, "text"));
	json_decref(j);
	http_resp_free(&r);
	/* a stop string: the answer ends before it */
	const char *full = str(want, "text");
	char stop[16];
	size_t cut = strlen(full) / 2;
	while (cut > 0 && (full[cut] & 0xc0) == 0x80)
		cut--;
	snprintf(stop, sizeof stop, "%.3s", full + cut);
	char body[512];
	snprintf(body, sizeof body, "{\"prompt\": \"Once upon a time\", \"max_tokens\": 10, "
		 "\"temperature\": 0, \"stop\": [\"%s\"]}", stop);
	http_post(h.port, "/v1/completions", body, &r);
	j = http_json(&r);
	json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
	assert_string_equal(str(ch, "finish_reason"), "stop");
	assert_int_equal(strlen(str(ch, "text")), strstr(full, stop) - full);
	assert_memory_equal(str(ch, "text"), full, strlen(str(ch, "text")));
	json_decref(j);
	json_decref(want);
	http_resp_free(&r);
	/* n = 2, sampled: two whole choices, streamed apart */
	http_post(h.port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": "
		  "\"Hi\"}], \"n\": 2, \"max_tokens\": 6, \"temperature\": 1, \"seed\": 3, "
		  "\"stream\": true, \"return_token_ids\": true}", &r);
	streamed c0, c1;
	add_stream(r.body, &c0, 0);
	add_stream(r.body, &c1, 1);
	assert_string_equal(c0.finish, "length");
	assert_string_equal(c1.finish, "length");
	assert_true(strcmp(c0.ids, c1.ids) != 0);   /* seeds 3 and 4 */
	http_resp_free(&r);
	/* README's curl example */
	char *out;
	int rc = run_capture(&out, "curl -sS http://127.0.0.1:%d/v1/chat/completions -H "
			     "'Content-Type: application/json' -d '{\"model\": \"demo-v1\", "
			     "\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], "
			     "\"max_tokens\": 8}'", h.port);
	if (rc != 0)
		fail_msg("curl: %s", out);
	assert_contains(out, "\"object\":\"chat.completion\"");
	assert_contains(out, "\"completion_tokens\":8");
	free(out);
	/* the official SDK, where it is installed */
	char sdk_args[512];
	snprintf(sdk_args, sizeof sdk_args, "sdk http://127.0.0.1:%d/v1 demo-v1 Hello 6", h.port);
	rc = http_checks(&out, sdk_args);
	if (rc == 77) {
		fprintf(stderr, "(the openai package is not installed: its check is skipped)\n");
	} else {
		if (rc != 0)
			fail_msg("the openai package's check failed:\n%s", out);
		j = json_loads(out, 0, NULL);
		if (!j)
			fail_msg("%s", out);
		json_t *want6 = qwenctl_submit_json(&d, "Hello --greedy --max-tokens 6");
		assert_string_equal(str(j, "chat"), str(want6, "text"));
		assert_string_equal(str(j, "stream"), str(want6, "text"));
		assert_string_equal(str(j, "finish"), "length");
		assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "stream_usage"), 1)),
				 6);
		assert_string_equal(json_string_value(json_array_get(json_object_get(j, "models"), 0)),
				    "demo-v1");
		assert_int_equal(json_integer_value(json_object_get(j, "unknown_model")), 404);
		sdk_logprobs(&d, j);
		fprintf(stderr, "(openai %s talked to qwen-http)\n", str(j, "version"));
		json_decref(want6);
		json_decref(j);
	}
	free(out);
	qhttp_stop(&h);
	qwend_stop(&d);
}

/* HF's greedy tokens through /v1/completions (token ids in, token ids out: the fixture
 * model has no tokenizer). */
static void test_hf_tokens(void **state)
{
	qwend d;
	qwend_start(&d, fixture("hf/tiny-moe/model"), (const char *[]){"--stages", "2",
		    "--kv-blocks", "64", NULL}, NULL, true);
	qhttp h;
	qhttp_start(&h, d.endpoint, NULL);
	int n_in, n_want;
	int32_t *in = fixture_ids("tiny-moe", "short.input_ids", &n_in);
	int32_t *want = fixture_ids("tiny-moe", "short.fp32.greedy_tokens", &n_want);
	char body[8192] = "{\"prompt\": [", want_text[4096] = "";
	for (int i = 0; i < n_in; i++)
		sprintf(body + strlen(body), "%s%d", i ? ", " : "", in[i]);
	sprintf(body + strlen(body), "], \"max_tokens\": %d, \"temperature\": 0}", n_want);
	for (int i = 0; i < n_want; i++)
		sprintf(want_text + strlen(want_text), "%s%d", i ? "," : "", want[i]);
	for (int stream = 0; stream < 2; stream++) {
		if (stream)
			strcpy(body + strlen(body) - 1, ", \"stream\": true}");
		http_resp r;
		http_post(h.port, "/v1/completions", body, &r);
		if (r.status != 200)
			fail_msg("%d: %s", r.status, r.body);
		char got[4096];
		if (stream) {
			streamed s;
			add_stream(r.body, &s, 0);
			snprintf(got, sizeof got, "%s", s.ids);
		} else {
			json_t *j = http_json(&r);
			char *t = ids_text(json_object_get(json_array_get(json_object_get(j, "choices"), 0),
							   "token_ids"));
			snprintf(got, sizeof got, "%s", t);
			free(t);
			json_decref(j);
		}
		if (strcmp(got, want_text))
			fail_msg("HTTP %s\nHF   %s", got, want_text);
		http_resp_free(&r);
	}
	free(in);
	free(want);
	qhttp_stop(&h);
	qwend_stop(&d);
}

/* /tokenize of chats with tools: the ids of the text Qwen's template renders (Jinja, as
 * transformers' apply_chat_template does), that text tokenized as a raw prompt (the
 * tokenizer is held to HF's elsewhere). */
static void test_tokenize_template(void **state)
{
	use_demo_cache();
	qwend d;
	qwend_start(&d, "demo", (const char *[]){"--stages", "1", NULL}, NULL, true);
	qhttp h;
	qhttp_start(&h, d.endpoint, NULL);
	const char *tools = "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
			    "\"description\": \"Weather «now»\", \"parameters\": {\"type\": \"object\", "
			    "\"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": "
			    "\"integer\", \"maximum\": 7.5e0}}, \"required\": [\"city\"]}}}]";
	static const char *const chats[] = {
		"[{\"role\": \"system\", \"content\": \"Be terse.\"}, {\"role\": \"user\", \"content\": "
		"\"Weather in Paris?\"}]",
		"[{\"role\": \"user\", \"content\": \"Weather in Paris?\"}, {\"role\": \"assistant\", "
		"\"content\": \"\", \"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\", "
		"\"function\": {\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": "
		"\\\"Paris\\\"}\"}}]}, {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": "
		"\"21 C\"}, {\"role\": \"assistant\", \"content\": \"It is 21 C.\"}, {\"role\": "
		"\"user\", \"content\": \"And Oslo?\"}]",
	};
	write_file(path_in(h.dir, "tools.json"), tools, strlen(tools));
	for (size_t i = 0; i < sizeof chats / sizeof *chats; i++) {
		bool gen = i == 0;
		write_file(path_in(h.dir, "m.json"), chats[i], strlen(chats[i]));
		char *text;
		int rc = run_capture(&text, "/usr/bin/python3 %s %s %s --tools %s %s",
				     fixture("../unit/render_chat_template.py"),
				     fixture("tokenizer/qwen3/tokenizer_config.json"),
				     path_in(h.dir, "m.json"), path_in(h.dir, "tools.json"),
				     gen ? "" : "--no-generation-prompt");
		if (rc != 0)
			fail_msg("rendering failed:\n%s", text);
		assert_contains(text, "get_weather");
		json_t *raw = json_pack("{s:s}", "prompt", text);
		char *raw_body = json_dumps(raw, 0);
		http_resp r;
		http_post(h.port, "/tokenize", raw_body, &r);
		json_t *j = http_json(&r);
		char *want = ids_text(json_object_get(j, "tokens"));
		json_decref(j);
		http_resp_free(&r);
		char body[4096];
		snprintf(body, sizeof body, "{\"messages\": %s, \"tools\": %s, "
			 "\"add_generation_prompt\": %s}", chats[i], tools, gen ? "true" : "false");
		http_post(h.port, "/tokenize", body, &r);
		j = http_json(&r);
		char *got = ids_text(json_object_get(j, "tokens"));
		if (strcmp(got, want))
			fail_msg("chat %zu:\n  /tokenize %s\n  template  %s\n%s", i, got, want, text);
		assert_int_equal(json_integer_value(json_object_get(j, "count")),
				 json_array_size(json_object_get(j, "tokens")));
		free(got);
		free(want);
		free(raw_body);
		free(text);
		json_decref(raw);
		json_decref(j);
		http_resp_free(&r);
	}
	/* and back */
	http_resp r;
	http_post(h.port, "/detokenize", "{\"tokens\": [9707, 11, 1879, 0]}", &r);
	json_t *j = http_json(&r);
	assert_string_equal(str(j, "prompt"), "Hello, world!");
	json_decref(j);
	http_resp_free(&r);
	qhttp_stop(&h);
	qwend_stop(&d);
}

/* Hanging up cancels the request in qwend at once: mid-stream, and while a whole answer is
 * being waited for. */
static void test_disconnect(void **state)
{
	use_demo_cache();
	qwend d;
	qwend_start(&d, "demo", (const char *[]){"--stages", "2", NULL}, NULL, true);
	qhttp h;
	qhttp_start(&h, d.endpoint, NULL);
	for (int stream = 1; stream >= 0; stream--) {
		char req[512], body[256];
		snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": \"Go\"}], "
			 "\"max_tokens\": 20000, \"ignore_eos\": true, \"stream\": %s}",
			 stream ? "true" : "false");
		snprintf(req, sizeof req, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
			 "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
		int fd = http_connect(h.port);
		assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
		if (stream) {
			char buf[4096];   /* the headers and the first events: it is under way */
			size_t got = 0;
			while (got < 2000) {
				ssize_t k = recv(fd, buf, sizeof buf, 0);
				assert_true(k > 0);
				got += (size_t)k;
			}
		} else {
			qwend_wait_for(&d, "requests", "running", 1, 10);
		}
		json_t *s = qwend_status(&d);
		assert_true(json_integer_value(json_object_get(json_object_get(s, "kv"),
							       "blocks_used")) > 0);
		json_int_t cancelled = json_integer_value(json_object_get(json_object_get(s, "requests"),
									  "cancelled"));
		json_decref(s);
		double t0 = qw_seconds_now();
		close(fd);
		qwend_wait_for(&d, "kv", "blocks_used", 0, 2);
		qwend_wait_for(&d, "requests", "cancelled", cancelled + 1, 2);
		fprintf(stderr, "(%s: KV blocks free %.0f ms after the hang-up)\n",
			stream ? "stream" : "whole answer", (qw_seconds_now() - t0) * 1e3);
		assert_true(qw_seconds_now() - t0 < 1.0);
	}
	/* both show in the metrics as requests whose client went away */
	http_resp r;
	http_call(h.port, "GET", "/metrics", NULL, NULL, &r);
	assert_contains(r.body, "qwen:request_success_total{model_name=\"demo-v1\",finished_reason="
			"\"abort\"} 2\n");
	http_resp_free(&r);
	qhttp_stop(&h);
	qwend_stop(&d);
}

/* qwend's refusals through HTTP, and the server while qwend loads. */
static void test_refusals_and_loading(void **state)
{
	use_demo_cache();
	qwend d;
	/* one sequence at a time, one queued: a third request finds the queue full */
	qwend_start(&d, "demo", (const char *[]){"--stages", "1", "--max-seqs", "1",
		    "--max-queue", "1", NULL}, (const char *[]){"QWEND_TEST_LOAD_DELAY_MS=800", NULL},
		    false);
	qhttp h;
	qhttp_start(&h, d.endpoint, NULL);
	/* loading: /health and requests answer 503 with Retry-After, until ready */
	http_resp r;
	http_call(h.port, "GET", "/health", NULL, NULL, &r);
	assert_int_equal(r.status, 503);
	json_t *j = http_json(&r);
	assert_string_equal(str(j, "status"), "loading");
	assert_contains(str(j, "reason"), "loading the model");
	assert_non_null(http_header(&r, "Retry-After"));
	json_decref(j);
	http_resp_free(&r);
	const char *chat = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 2}";
	http_post(h.port, "/v1/chat/completions", chat, &r);
	assert_int_equal(r.status, 503);
	j = http_json(&r);
	assert_string_equal(str(json_object_get(j, "error"), "code"), "not_ready");
	json_decref(j);
	http_resp_free(&r);
	double until = qw_seconds_now() + 30;
	for (;;) {
		http_call(h.port, "GET", "/health", NULL, NULL, &r);
		int status = r.status;
		http_resp_free(&r);
		if (status == 200)
			break;
		assert_int_equal(status, 503);
		if (qw_seconds_now() > until)
			fail_msg("/health did not turn 200 within 30 s");
		usleep(50000);
	}
	/* a broken image, a request past the context */
	const uint8_t junk[] = {0x89, 'P', 'N', 'G', 1, 2, 3};
	char *url = data_url(junk, sizeof junk, "image/png");
	char body[1024];
	snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": "
		 "\"image_url\", \"image_url\": {\"url\": \"%s\"}}]}]}", url);
	free(url);
	http_post(h.port, "/v1/chat/completions", body, &r);
	assert_int_equal(r.status, 400);
	j = http_json(&r);
	assert_contains(str(json_object_get(j, "error"), "message"), "image 1");
	json_decref(j);
	http_resp_free(&r);
	http_post(h.port, "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 262144}", &r);
	assert_int_equal(r.status, 413);
	j = http_json(&r);
	assert_contains(str(json_object_get(j, "error"), "message"), "context");
	json_decref(j);
	http_resp_free(&r);
	/* two long requests hold the sequence and the queue: the third is refused, 429 */
	const char *longreq = "{\"messages\": [{\"role\": \"user\", \"content\": \"Go\"}], "
			      "\"max_tokens\": 20000, \"ignore_eos\": true, \"stream\": true}";
	char req[512];
	snprintf(req, sizeof req, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
		 "%zu\r\n\r\n%s", strlen(longreq), longreq);
	int fds[2];
	for (int i = 0; i < 2; i++) {
		fds[i] = http_connect(h.port);
		assert_int_equal(send(fds[i], req, strlen(req), 0), (ssize_t)strlen(req));
		qwend_wait_for(&d, "requests", i ? "queued" : "running", 1, 10);
	}
	http_post(h.port, "/v1/chat/completions", chat, &r);
	assert_int_equal(r.status, 429);
	assert_string_equal(http_header(&r, "Retry-After"), "1");
	j = http_json(&r);
	assert_string_equal(str(json_object_get(j, "error"), "code"), "busy");
	json_decref(j);
	http_resp_free(&r);
	close(fds[0]);
	close(fds[1]);
	qwend_wait_for(&d, "kv", "blocks_used", 0, 5);
	qwend_wait_for(&d, "requests", "queued", 0, 5);
	qhttp_stop(&h);
	qwend_stop(&d);
}

/* 200 streaming clients at once: each gets its whole answer, the one it gets alone; the
 * metrics, parsed by Prometheus' parser, count them; nothing is left in qwend.  (HF's tiny
 * MoE model and token-id prompts: its vocabulary of 1024 keeps 200 sequences' steps short
 * on a CPU, where the demo's 151936 would take seconds a step.) */
static void test_many_clients(void **state)
{
	enum { CLIENTS = 200, TOKENS = 6 };
	qwend d;
	qwend_start(&d, fixture("hf/tiny-moe/model"), (const char *[]){"--stages", "2", NULL},
		    NULL, true);
	qhttp h;
	qhttp_start(&h, d.endpoint, NULL);
	char *bodies[4];
	const char *prompts[] = {"[1, 2, 3]", "[500, 7, 9, 11, 13, 17]", "[42]", "[900, 800]"};
	streamed alone[4];
	for (int k = 0; k < 4; k++) {
		bodies[k] = malloc(256);
		snprintf(bodies[k], 256, "{\"prompt\": %s, \"max_tokens\": %d, \"temperature\": 0, "
			 "\"stream\": true}", prompts[k], TOKENS);
		http_resp r;
		http_post(h.port, "/v1/completions", bodies[k], &r);
		add_stream(r.body, &alone[k], 0);
		assert_true(alone[k].done);
		http_resp_free(&r);
	}
	const char **all = calloc(CLIENTS, sizeof *all);
	for (int i = 0; i < CLIENTS; i++)
		all[i] = bodies[i % 4];
	http_resp *out = calloc(CLIENTS, sizeof *out);
	double t0 = qw_seconds_now();
	http_many(h.port, "/v1/completions", all, CLIENTS, out);
	double took = qw_seconds_now() - t0;
	for (int i = 0; i < CLIENTS; i++) {
		if (out[i].status != 200)
			fail_msg("client %d: %d %s", i, out[i].status, out[i].body);
		streamed s;
		add_stream(out[i].body, &s, 0);
		if (!s.done || strcmp(s.ids, alone[i % 4].ids) || !*s.ids)
			fail_msg("client %d: %s [%s]; alone [%s]", i, s.done ? "done" : "unfinished",
				 s.ids, alone[i % 4].ids);
		http_resp_free(&out[i]);
	}
	fprintf(stderr, "(%d streaming clients at once: %.2f s)\n", CLIENTS, took);
	qwend_wait_for(&d, "kv", "blocks_used", 0, 5);
	json_t *s = qwend_status(&d);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "requests"), "running")),
			 0);
	json_decref(s);
	/* the metrics: Prometheus' own parser reads them, and they counted every request */
	http_resp r;
	http_call(h.port, "GET", "/metrics", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_contains(http_header(&r, "Content-Type"), "text/plain; version=0.0.4");
	const char *file = path_in(h.dir, "metrics.txt");
	write_file(file, r.body, r.body_len);
	char *parsed, args[1200];
	snprintf(args, sizeof args, "metrics %s", file);
	int rc = http_checks(&parsed, args);
	if (rc == 77)
		fail_msg("no python3 has prometheus_client (HINT: .ci/install-deps installs "
			 "python3-prometheus-client)");
	if (rc != 0)
		fail_msg("Prometheus' parser refused /metrics:\n%s\n---\n%s", parsed, r.body);
	char line[256];
	snprintf(line, sizeof line, "qwen:http_requests_total{code=\"\",endpoint=\"completions\","
		 "status=\"200\"} %d.0\n", CLIENTS + 4);
	assert_contains(parsed, line);
	snprintf(line, sizeof line, "qwen:request_success_total{finished_reason=\"length\","
		 "model_name=\"model\"} %d.0\n", CLIENTS + 4);
	assert_contains(parsed, line);
	snprintf(line, sizeof line, "qwen:time_to_first_token_seconds_count{model_name=\"model\"} "
		 "%d.0\n", CLIENTS + 4);
	assert_contains(parsed, line);
	snprintf(line, sizeof line, "qwen:inter_token_latency_seconds_count{model_name=\"model\"} "
		 "%d.0\n", (CLIENTS + 4) * (TOKENS - 1));
	assert_contains(parsed, line);
	snprintf(line, sizeof line, "qwen:http_generation_tokens_total{model_name=\"model\"} %d.0\n",
		 (CLIENTS + 4) * TOKENS);
	assert_contains(parsed, line);
	assert_contains(parsed, "qwen:num_requests_running{model_name=\"model\"} 0.0\n");
	assert_contains(parsed, "qwen:daemon_state{model_name=\"model\",state=\"ready\"} 1.0\n");
	assert_contains(parsed, "qwen:daemon_up{model_name=\"model\"} 1.0\n");
	assert_contains(parsed, "qwen:kv_cache_blocks_used{model_name=\"model\"} 0.0\n");
	assert_contains(parsed, "qwen:stage_weight_bytes{model_name=\"model\",stage=\"1\"}");
	assert_contains(parsed, "# FAMILY qwen:time_to_first_token_seconds histogram\n");
	assert_contains(parsed, "# FAMILY qwen:num_preemptions counter\n");
	/* qwend's own counter of generated tokens took them all */
	s = qwend_status(&d);
	snprintf(line, sizeof line, "qwen:generation_tokens_total{model_name=\"model\"} %lld.0\n",
		 (long long)json_integer_value(json_object_get(json_object_get(s, "throughput"),
							       "generated_tokens_total")));
	assert_contains(parsed, line);
	json_decref(s);
	free(parsed);
	http_resp_free(&r);
	for (int k = 0; k < 4; k++)
		free(bodies[k]);
	free(all);
	free(out);
	qhttp_stop(&h);
	qwend_stop(&d);
}

/* SIGTERM: no new connections, but a stream under way runs to its end. */
static void test_sigterm_drains(void **state)
{
	qwend d;
	qwend_start(&d, fixture("hf/tiny-moe/model"), (const char *[]){"--stages", "1", NULL},
		    NULL, true);
	qhttp h;
	qhttp_start(&h, d.endpoint, NULL);
	const char *body = "{\"prompt\": [1, 2, 3], \"max_tokens\": 400, \"ignore_eos\": true, "
			   "\"stream\": true}";
	char req[512];
	snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: "
		 "close\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
	int fd = http_connect(h.port);
	assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
	char *raw = malloc(1 << 20);
	size_t got = 0;
	ssize_t k;
	while (got < 500 && (k = recv(fd, raw + got, (1 << 20) - 1 - got, 0)) > 0)
		got += (size_t)k;
	kill(h.pid, SIGTERM);
	while ((k = recv(fd, raw + got, (1 << 20) - 1 - got, 0)) > 0)
		got += (size_t)k;
	raw[got] = '\0';
	close(fd);
	http_resp r;
	http_parse(raw, got, &r);
	streamed s;
	add_stream(r.body, &s, 0);
	assert_true(s.done);
	assert_string_equal(s.finish, "length");
	free(raw);
	http_resp_free(&r);
	qhttp_stop(&h);   /* it exits 0 */
	qwend_stop(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_same_as_qwenctl),
		cmocka_unit_test(test_hf_tokens),
		cmocka_unit_test(test_tokenize_template),
		cmocka_unit_test(test_disconnect),
		cmocka_unit_test(test_refusals_and_loading),
		cmocka_unit_test(test_many_clients),
		cmocka_unit_test(test_sigterm_drains),
	};
	return cmocka_run_group_tests_name("http_qwend", tests, NULL, NULL);
}
