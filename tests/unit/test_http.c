/* test_http.c - qwen-http against a scripted fake daemon (fake_qwend.h): what each OpenAI
 * field becomes in the request qwend gets (decoded back with qw_request_decode), the shape
 * of answers and streams (reasoning, tool calls, token ids, usage, [DONE]; log-probabilities
 * are test_http_logprobs's), every error
 * qwend can answer as its HTTP status with OpenAI's error object and Retry-After, a qwend
 * that is not there or does not answer, the API key, the size limits, routes and methods,
 * the connection limit and idle time-out, the loopback rule, and the systemd unit. */
#include "tests/unit/http_harness.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loader/clock.h"
#include "tests/unit/fake_qwend.h"

#define STATUS_JSON "{\"state\": \"ready\", \"model\": {\"path\": \"/models/Fake-VL\", " \
	"\"max_context\": 4096, \"tokenizer\": true}, \"requests\": {\"running\": 1}}"

/* The first text of the last message: the test's instruction to the fake. */
static const char *script_of(const qw_request *r, char *buf, size_t cap)
{
	buf[0] = '\0';
	if (r->n_messages) {
		const qw_req_message *m = &r->messages[r->n_messages - 1];
		for (int i = 0; i < m->n_items; i++)
			if (m->items[i].kind == QW_ITEM_TEXT) {
				snprintf(buf, cap, "%.*s", (int)m->items[i].len, m->items[i].data);
				break;
			}
	} else if (r->prompt) {
		snprintf(buf, cap, "%.*s", (int)r->prompt_len, r->prompt);
	}
	return buf;
}

/* status: STATUS_JSON; a submit does what its text says:
 *   "error CODE"    an error reply with that code
 *   "tools"         reasoning, then text and a tool call split over chunks
 *   "mid-error"     a chunk, then an internal error
 *   "silent"        no reply at all
 *   anything else   accepted (with the prompt's ids when asked), two chunks, done */
static bool script(fake *f, const qw_request *r)
{
	char text[256];
	uint64_t id = f->next_id++;
	if (r->op == QW_OP_STATUS) {
		fake_status(f, STATUS_JSON);
		return true;
	}
	if (r->op == QW_OP_TOKENIZE) {
		int32_t ids[] = {11, 22, 33};
		fake_reply(f, &(qw_reply){.type = QW_REPLY_TOKENS, .token_ids = ids, .n_token_ids = 3});
		return true;
	}
	if (r->op == QW_OP_DETOKENIZE) {
		fake_reply(f, &(qw_reply){.type = QW_REPLY_TOKENS, .text = "hé", .text_len = 3});
		return true;
	}
	script_of(r, text, sizeof text);
	if (!strncmp(text, "error ", 6)) {
		fake_error(f, 0, text + 6, "as scripted");
		return true;
	}
	if (!strcmp(text, "silent"))
		return true;
	int32_t prompt[] = {1, 2, 3, 4};
	fake_reply(f, &(qw_reply){.type = QW_REPLY_ACCEPTED, .request = id,
				  .token_ids = r->prompt_ids ? prompt : NULL,
				  .n_token_ids = r->prompt_ids ? 4 : 0});
	int32_t a[] = {100}, b[] = {101, 102}, c[] = {103};
	if (!strcmp(text, "tools")) {
		fake_chunk(f, id, NULL, "I should look.", a, 1);
		fake_chunk(f, id, "Checking.\n<tool_", NULL, b, 2);
		fake_chunk(f, id, "call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
			   "\"Paris\"}}\n</tool_call>", NULL, c, 1);
		fake_done(f, id, "stop", 4, 4, 1, 1);
	} else if (!strcmp(text, "mid-error")) {
		fake_chunk(f, id, "partial", NULL, a, 1);
		usleep(300000);             /* the stream is under way when the error comes */
		fake_error(f, id, "internal", "worker 1 died");
	} else {
		char seed[32];
		snprintf(seed, sizeof seed, " s%llu", (unsigned long long)r->seed);
		fake_chunk(f, id, "Hello", "hmm", a, 1);
		fake_chunk(f, id, r->has_seed ? seed : " there", NULL, b, 2);
		fake_done(f, id, "length", 4, 3, 1, 1);
	}
	return true;
}

/* The error object of a response, checked for OpenAI's shape. */
static json_t *error_of(const http_resp *r, int status)
{
	if (r->status != status)
		fail_msg("expected %d, got %d: %s", status, r->status, r->body);
	json_t *j = http_json(r), *e = json_object_get(j, "error");
	if (!json_is_string(json_object_get(e, "message")) ||
	    !json_is_string(json_object_get(e, "type")) || !json_object_get(e, "param") ||
	    !json_object_get(e, "code"))
		fail_msg("not an OpenAI error object: %s", r->body);
	json_incref(e);
	json_decref(j);
	return e;
}

static const char *str(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "(none)";
}

// ---------------------------------------------------------------------------------------

/* What the OpenAI fields become in the requests qwend gets. */
static void test_translation(void **state)
{
	http_world w;
	http_world_start(&w, script, NULL);
	const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 1};
	char *url = data_url(png, sizeof png, "image/png");
	char body[4096];
	snprintf(body, sizeof body,
		 "{\"model\": \"Fake-VL\", \"messages\": [{\"role\": \"system\", \"content\": \"S\"},"
		 " {\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\":"
		 " \"%s\"}}, {\"type\": \"text\", \"text\": \"describe\"}]}], \"max_tokens\": 9,"
		 " \"temperature\": 0.25, \"top_k\": 5, \"seed\": 40, \"n\": 2, \"stop\": [\"a\", \"bc\"],"
		 " \"ignore_eos\": true, \"return_token_ids\": true, \"tools\": [{\"type\": \"function\","
		 " \"function\": {\"name\": \"f\", \"parameters\": {\"x\": 0.5}}}],"
		 " \"chat_template_kwargs\": {\"enable_thinking\": false}}", url);
	free(url);
	http_resp r;
	http_post(w.h.port, "/v1/chat/completions", body, &r);
	assert_int_equal(r.status, 200);
	json_t *j = http_json(&r);
	assert_string_equal(str(j, "object"), "chat.completion");
	assert_string_equal(str(j, "model"), "Fake-VL");
	json_t *choices = json_object_get(j, "choices");
	assert_int_equal(json_array_size(choices), 2);
	json_t *m0 = json_object_get(json_array_get(choices, 0), "message");
	assert_string_equal(str(m0, "content"), "Hello s40");   /* the seeds differ by choice */
	assert_string_equal(str(m0, "reasoning_content"), "hmm");
	assert_string_equal(str(json_object_get(json_array_get(choices, 1), "message"), "content"),
			    "Hello s41");
	assert_string_equal(str(json_array_get(choices, 1), "finish_reason"), "length");
	assert_int_equal(json_array_size(json_object_get(json_array_get(choices, 0), "token_ids")),
			 3);
	assert_int_equal(json_array_size(json_object_get(j, "prompt_token_ids")), 4);
	json_t *u = json_object_get(j, "usage");
	assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 4);  /* once */
	assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 6);
	assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 10);
	json_decref(j);
	http_resp_free(&r);
	/* the status (the model's name, asked once), then one submit a choice */
	assert_int_equal(fake_count(w.dir), 3);
	qw_request q;
	fake_request(w.dir, 0, &q);
	assert_int_equal(q.op, QW_OP_STATUS);
	qw_request_free(&q);
	bool seeds[2] = {false, false};   /* (the two submits may come in either order) */
	for (int k = 1; k <= 2; k++) {
		fake_request(w.dir, k, &q);
		assert_int_equal(q.op, QW_OP_SUBMIT);
		assert_int_equal(q.n_messages, 2);
		assert_int_equal(q.messages[1].n_items, 2);
		assert_int_equal(q.messages[1].items[0].kind, QW_ITEM_IMAGE);
		assert_int_equal(q.messages[1].items[0].len, sizeof png);
		assert_memory_equal(q.messages[1].items[0].data, png, sizeof png);
		assert_int_equal(q.max_tokens, 9);
		assert_true(q.temperature == 0.25);
		assert_int_equal(q.top_k, 5);
		assert_true(q.has_seed && (q.seed == 40 || q.seed == 41));
		seeds[q.seed - 40] = true;
		assert_int_equal(q.n_stop, 2);
		assert_memory_equal(q.stop[1], "bc", 2);
		assert_true(q.ignore_eos && q.stream && q.prompt_ids);
		assert_int_equal(q.thinking, QW_THINKING_OFF);
		assert_int_equal(q.n_tools, 1);
		assert_memory_equal(q.tools[0], "{\"type\": \"function\", \"function\": {\"name\": \"f\", "
				    "\"parameters\": {\"x\": 0.5}}}", q.tools_len[0]);
		qw_request_free(&q);
	}
	assert_true(seeds[0] && seeds[1]);
	/* completions: a batch of a text and token ids; tokenize; detokenize */
	http_post(w.h.port, "/v1/completions", "{\"prompt\": [\"one\", [5, 6]], \"max_tokens\": 3}", &r);
	assert_int_equal(r.status, 200);
	j = http_json(&r);
	assert_string_equal(str(j, "object"), "text_completion");
	assert_string_equal(str(json_array_get(json_object_get(j, "choices"), 1), "text"),
			    "hmmHello there");   /* a Thinking model's text: reasoning, then answer */
	json_decref(j);
	http_resp_free(&r);
	bool text_prompt = false, id_prompt = false;   /* (in either order) */
	for (int k = 3; k <= 4; k++) {
		fake_request(w.dir, k, &q);
		text_prompt |= q.prompt && q.prompt_len == 3 && !memcmp(q.prompt, "one", 3);
		id_prompt |= q.n_token_ids == 2 && q.token_ids[1] == 6;
		assert_int_equal(q.max_tokens, 3);
		qw_request_free(&q);
	}
	assert_true(text_prompt && id_prompt);
	http_post(w.h.port, "/tokenize", "{\"prompt\": \"x\"}", &r);
	j = http_json(&r);
	assert_int_equal(json_integer_value(json_object_get(j, "count")), 3);
	assert_int_equal(json_integer_value(json_object_get(j, "max_model_len")), 4096);
	assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "tokens"), 2)), 33);
	json_decref(j);
	http_resp_free(&r);
	http_post(w.h.port, "/detokenize", "{\"tokens\": [1, 2]}", &r);
	j = http_json(&r);
	assert_string_equal(str(j, "prompt"), "hé");
	json_decref(j);
	http_resp_free(&r);
	http_call(w.h.port, "GET", "/v1/models", NULL, NULL, &r);
	j = http_json(&r);
	json_t *model = json_array_get(json_object_get(j, "data"), 0);
	assert_string_equal(str(model, "id"), "Fake-VL");
	assert_int_equal(json_integer_value(json_object_get(model, "max_model_len")), 4096);
	json_decref(j);
	http_resp_free(&r);
	http_call(w.h.port, "GET", "/v1/models/Fake-VL", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	http_resp_free(&r);
	http_call(w.h.port, "GET", "/v1/models/Other", NULL, NULL, &r);
	json_decref(error_of(&r, 404));
	http_resp_free(&r);
	http_post(w.h.port, "/v1/chat/completions", "{\"model\": \"gpt-4\", \"messages\": [{\"role\": "
		  "\"user\", \"content\": \"x\"}]}", &r);
	json_t *e = error_of(&r, 404);
	assert_string_equal(str(e, "code"), "model_not_found");
	assert_string_equal(str(e, "param"), "model");
	json_decref(e);
	http_resp_free(&r);
	http_world_stop(&w);
}

/* Streams: the role first, reasoning and content deltas, a tool call parsed out of text
 * split over chunks, the finish reason, the usage, [DONE]; the same whole; an error in the
 * middle of a stream. */
static void test_streams(void **state)
{
	http_world w;
	http_world_start(&w, script, NULL);
	const char *tools = ", \"tools\": [{\"type\": \"function\", \"function\": {\"name\": "
			    "\"get_weather\"}}]";
	char body[1024];
	snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": \"tools\"}], "
		 "\"stream\": true, \"stream_options\": {\"include_usage\": true}%s}", tools);
	http_resp r;
	http_post(w.h.port, "/v1/chat/completions", body, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(http_header(&r, "Content-Type"), "text/event-stream");
	char **ev = sse_events(r.body);
	int n = 0;
	while (ev[n])
		n++;
	assert_true(n >= 5);
	assert_string_equal(ev[n - 1], "[DONE]");
	char reasoning[256] = "", content[256] = "", finish[32] = "";
	int calls = 0, roles = 0;
	json_t *usage = NULL;
	for (int i = 0; i < n - 1; i++) {
		json_t *j = json_loads(ev[i], 0, NULL);
		assert_non_null(j);
		assert_string_equal(str(j, "object"), "chat.completion.chunk");
		json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
		json_t *d = json_object_get(ch, "delta");
		if (json_object_get(d, "role"))
			roles++;
		if (json_is_string(json_object_get(d, "reasoning_content")))
			strcat(reasoning, str(d, "reasoning_content"));
		if (json_is_string(json_object_get(d, "content")))
			strcat(content, str(d, "content"));
		json_t *tc = json_array_get(json_object_get(d, "tool_calls"), 0);
		if (tc) {
			calls++;
			assert_int_equal(json_integer_value(json_object_get(tc, "index")), 0);
			assert_string_equal(str(tc, "type"), "function");
			assert_true(!strncmp(str(tc, "id"), "call_", 5));
			json_t *f = json_object_get(tc, "function");
			assert_string_equal(str(f, "name"), "get_weather");
			assert_string_equal(str(f, "arguments"), "{\"city\": \"Paris\"}");
		}
		if (json_is_string(json_object_get(ch, "finish_reason")))
			snprintf(finish, sizeof finish, "%s", str(ch, "finish_reason"));
		if (json_object_get(j, "usage")) {
			usage = json_incref(json_object_get(j, "usage"));
			assert_int_equal(json_array_size(json_object_get(j, "choices")), 0);
			assert_int_equal(i, n - 2);   /* the last before [DONE] */
		}
		json_decref(j);
	}
	assert_int_equal(roles, 1);
	assert_string_equal(reasoning, "I should look.");
	assert_string_equal(content, "Checking.");
	assert_int_equal(calls, 1);
	assert_string_equal(finish, "tool_calls");
	assert_non_null(usage);
	assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 4);
	json_decref(usage);
	sse_free(ev);
	http_resp_free(&r);
	/* the same, whole */
	snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": \"tools\"}]%s}",
		 tools);
	http_post(w.h.port, "/v1/chat/completions", body, &r);
	json_t *j = http_json(&r), *ch = json_array_get(json_object_get(j, "choices"), 0);
	json_t *msg = json_object_get(ch, "message");
	assert_string_equal(str(ch, "finish_reason"), "tool_calls");
	assert_string_equal(str(msg, "content"), "Checking.");
	assert_string_equal(str(json_object_get(json_array_get(json_object_get(msg, "tool_calls"), 0),
						"function"), "name"), "get_weather");
	json_decref(j);
	http_resp_free(&r);
	/* without tools the same text is content, as written */
	http_post(w.h.port, "/v1/chat/completions",
		  "{\"messages\": [{\"role\": \"user\", \"content\": \"tools\"}]}", &r);
	j = http_json(&r);
	msg = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
	assert_string_equal(str(msg, "content"), "Checking.\n<tool_call>\n{\"name\": \"get_weather\", "
			    "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>");
	assert_null(json_object_get(msg, "tool_calls"));
	json_decref(j);
	http_resp_free(&r);
	/* an error after the stream began: an error event, then [DONE] */
	http_post(w.h.port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
		  "\"content\": \"mid-error\"}], \"stream\": true}", &r);
	assert_int_equal(r.status, 200);
	ev = sse_events(r.body);
	n = 0;
	while (ev[n])
		n++;
	assert_true(n >= 3);
	assert_string_equal(ev[n - 1], "[DONE]");
	j = json_loads(ev[n - 2], 0, NULL);
	assert_string_equal(str(json_object_get(j, "error"), "message"), "worker 1 died");
	assert_string_equal(str(json_object_get(j, "error"), "type"), "server_error");
	json_decref(j);
	sse_free(ev);
	http_resp_free(&r);
	http_world_stop(&w);
}

/* Each of qwend's error codes as its HTTP status, streamed or not. */
static void test_qwend_errors(void **state)
{
	http_world w;
	http_world_start(&w, script, (const char *[]){"--timeout", "0.5", NULL});
	static const struct { const char *code; int status; const char *type; int retry; } map[] = {
		{"bad_request", 400, "invalid_request_error", 0},
		{"too_large", 413, "invalid_request_error", 0},
		{"busy", 429, "rate_limit_error", 1},
		{"not_ready", 503, "service_unavailable_error", 5},
		{"internal", 500, "server_error", 0},
	};
	for (size_t i = 0; i < sizeof map / sizeof *map; i++)
		for (int stream = 0; stream < 2; stream++) {
			char body[256];
			snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": "
				 "\"error %s\"}], \"stream\": %s}", map[i].code, stream ? "true" : "false");
			http_resp r;
			http_post(w.h.port, "/v1/chat/completions", body, &r);
			json_t *e = error_of(&r, map[i].status);
			assert_string_equal(str(e, "type"), map[i].type);
			assert_string_equal(str(e, "code"), map[i].code);
			assert_string_equal(str(e, "message"), "as scripted");
			const char *retry = http_header(&r, "Retry-After");
			if (map[i].retry)
				assert_int_equal(retry ? atoi(retry) : -1, map[i].retry);
			else
				assert_null(retry);
			json_decref(e);
			http_resp_free(&r);
		}
	/* a qwend that takes the request and never answers */
	http_resp r;
	http_post(w.h.port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
		  "\"content\": \"silent\"}]}", &r);
	json_t *e = error_of(&r, 503);
	assert_contains(str(e, "message"), "did not answer in time");
	json_decref(e);
	http_resp_free(&r);
	http_world_stop(&w);
	/* no qwend at all: 503 naming why; /health says so; /metrics still answers */
	char *dir = scratch_new();
	qhttp h;
	char endpoint[1200];
	snprintf(endpoint, sizeof endpoint, "ipc://%s/none.sock", dir);
	qhttp_start(&h, endpoint, NULL);
	http_post(h.port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
		  "\"content\": \"x\"}]}", &r);
	e = error_of(&r, 503);
	assert_contains(str(e, "message"), "qwend is not running (no socket at");
	assert_string_equal(str(e, "code"), "unreachable");
	assert_non_null(http_header(&r, "Retry-After"));
	json_decref(e);
	http_resp_free(&r);
	http_call(h.port, "GET", "/health", NULL, NULL, &r);
	assert_int_equal(r.status, 503);
	json_t *j = http_json(&r);
	assert_string_equal(str(j, "status"), "unreachable");
	assert_contains(str(j, "reason"), "not running");
	json_decref(j);
	http_resp_free(&r);
	http_call(h.port, "GET", "/metrics", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_contains(r.body, "qwen:daemon_up{model_name=\"\"} 0\n");
	assert_contains(r.body, "qwen:http_requests_total{endpoint=\"chat_completions\",status="
			"\"503\",code=\"unreachable\"} 1\n");
	http_resp_free(&r);
	qhttp_stop(&h);
	scratch_free(dir);
}

/* --api-key: /v1/... needs it (compared whole), the rest does not. */
static void test_api_key(void **state)
{
	char *dir = scratch_new();
	write_file(path_in(dir, "key"), "s3cret-key\n", 11);
	for (int from_file = 0; from_file < 2; from_file++) {
		http_world w;
		const char *file_args[] = {"--api-key-file", path_in(dir, "key"), NULL};
		const char *key_args[] = {"--api-key", "s3cret-key", NULL};
		http_world_start(&w, script, from_file ? file_args : key_args);
		const char *wrong[] = {NULL, "Authorization: Bearer s3cret\r\n",
				       "Authorization: Bearer s3cret-key2\r\n",
				       "Authorization: Basic s3cret-key\r\n", "Authorization: s3cret-key\r\n"};
		for (int i = 0; i < 5; i++) {
			http_resp r;
			http_call(w.h.port, "GET", "/v1/models", wrong[i], NULL, &r);
			json_t *e = error_of(&r, 401);
			assert_string_equal(str(e, "code"), "invalid_api_key");
			assert_string_equal(http_header(&r, "WWW-Authenticate"), "Bearer");
			json_decref(e);
			http_resp_free(&r);
		}
		http_resp r;
		/* a body after the refusal is dropped (answered at once, over a large body too) */
		char *body = malloc(200001);
		memset(body, ' ', 200000);
		body[0] = '{';
		body[199999] = '}';
		body[200000] = '\0';
		http_call(w.h.port, "POST", "/v1/chat/completions", wrong[1], body, &r);
		json_decref(error_of(&r, 401));
		http_resp_free(&r);
		free(body);
		http_call(w.h.port, "GET", "/v1/models", "Authorization: Bearer s3cret-key\r\n", NULL,
			  &r);
		assert_int_equal(r.status, 200);
		http_resp_free(&r);
		http_call(w.h.port, "POST", "/v1/chat/completions", "authorization: bearer s3cret-key\r\n",
			  "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", &r);
		assert_int_equal(r.status, 200);
		http_resp_free(&r);
		http_call(w.h.port, "GET", "/health", NULL, NULL, &r);
		assert_int_equal(r.status, 200);
		http_resp_free(&r);
		http_world_stop(&w);
	}
	scratch_free(dir);
}

/* Limits, routes, methods and broken HTTP. */
static void test_limits_and_routes(void **state)
{
	http_world w;
	http_world_start(&w, script, (const char *[]){"--max-body-bytes", "2K", "--max-header-bytes", "2K",
					 NULL});
	http_resp r;
	/* a body past the limit: declared, or sent in chunks */
	char big[4096];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	http_post(w.h.port, "/v1/chat/completions", big, &r);
	json_t *e = error_of(&r, 413);
	assert_contains(str(e, "message"), "--max-body-bytes");
	json_decref(e);
	http_resp_free(&r);
	char chunked[8192];
	int n = snprintf(chunked, sizeof chunked, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
			 "Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
	for (int i = 0; i < 5; i++)
		n += snprintf(chunked + n, sizeof chunked - (size_t)n, "400\r\n%.1024s\r\n", big);
	n += snprintf(chunked + n, sizeof chunked - (size_t)n, "0\r\n\r\n");
	char *raw = http_raw(w.h.port, chunked, (size_t)n);
	http_parse(raw, strlen(raw), &r);
	json_decref(error_of(&r, 413));
	http_resp_free(&r);
	free(raw);
	/* headers past the limit */
	char hdr[3000];
	snprintf(hdr, sizeof hdr, "X-Big: %.2500s\r\n", big);
	http_call(w.h.port, "GET", "/v1/models", hdr, NULL, &r);
	assert_int_equal(r.status, 431);
	http_resp_free(&r);
	/* routes and methods */
	http_call(w.h.port, "GET", "/v2/nothing", NULL, NULL, &r);
	e = error_of(&r, 404);
	assert_contains(str(e, "message"), "/v1/chat/completions");
	json_decref(e);
	http_resp_free(&r);
	http_call(w.h.port, "GET", "/v1/chat/completions", NULL, NULL, &r);
	e = error_of(&r, 405);
	assert_contains(str(e, "message"), "takes POST");
	json_decref(e);
	http_resp_free(&r);
	/* broken HTTP: a 400 for a header line without a colon or a length that is no number,
	 * a 505 for an unknown version, a closed connection for garbage; the server goes on */
	static const char *const broken[][2] = {
		{"GET /health HTTP/1.1\r\nHost x\r\n\r\n", "HTTP/1.1 400"},
		{"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "HTTP/1.1 400"},
		{"GET /health HTTP/7.1\r\nHost: x\r\n\r\n", "HTTP/1.1 505"}};
	for (int i = 0; i < 3; i++) {
		raw = http_raw(w.h.port, broken[i][0], strlen(broken[i][0]));
		if (strncmp(raw, broken[i][1], 12) != 0)
			fail_msg("%s\nanswered:\n%s", broken[i][0], raw);
		free(raw);
	}
	raw = http_raw(w.h.port, "\x01\x02\xff garbage\r\n\r\n", 15);
	free(raw);
	http_call(w.h.port, "GET", "/health", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	http_resp_free(&r);
	/* a keep-alive connection serves one request after another */
	int fd = http_connect(w.h.port);
	const char *two = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
			  "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	assert_int_equal(write(fd, two, strlen(two)), (ssize_t)strlen(two));
	char buf[8192];
	size_t got = 0;
	ssize_t k;
	while ((k = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
		got += (size_t)k;
	buf[got] = '\0';
	close(fd);
	assert_contains(buf, "{\"status\":\"ok\"}");
	assert_contains(buf, "\"object\":\"list\"");
	http_world_stop(&w);
}

/* Answers on fd within timeout_s: the bytes read (0: none, the connection still open; -1:
 * closed). */
static int answer_within(int fd, double timeout_s, char *buf, size_t cap)
{
	struct timeval tv = {.tv_sec = (time_t)timeout_s,
			     .tv_usec = (suseconds_t)((timeout_s - (time_t)timeout_s) * 1e6)};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	ssize_t n = recv(fd, buf, cap - 1, 0);
	if (n > 0)
		buf[n] = '\0';
	return n > 0 ? (int)n : n == 0 ? -1 : 0;
}

/* At most --max-connections at once (one more waits to be accepted until one closes); an
 * idle connection is closed after --idle-timeout. */
static void test_connections(void **state)
{
	http_world w;
	http_world_start(&w, script, (const char *[]){"--max-connections", "2", "--idle-timeout", "1", NULL});
	int a = http_connect(w.h.port), b = http_connect(w.h.port), c = http_connect(w.h.port);
	const char *req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
	char buf[4096];
	for (int i = 0; i < 3; i++)
		send(i == 0 ? a : i == 1 ? b : c, req, strlen(req), MSG_NOSIGNAL);
	assert_true(answer_within(a, 2, buf, sizeof buf) > 0);
	assert_contains(buf, "HTTP/1.1 200");
	assert_true(answer_within(b, 2, buf, sizeof buf) > 0);
	assert_int_equal(answer_within(c, 0.3, buf, sizeof buf), 0);   /* not yet accepted */
	close(a);
	assert_true(answer_within(c, 2, buf, sizeof buf) > 0);          /* now it is */
	assert_contains(buf, "HTTP/1.1 200");
	/* b has been idle since its answer: closed about a second after it */
	double t0 = qw_seconds_now();
	assert_int_equal(answer_within(b, 5, buf, sizeof buf), -1);
	assert_true(qw_seconds_now() - t0 < 2);
	t0 = qw_seconds_now();
	assert_int_equal(answer_within(c, 5, buf, sizeof buf), -1);
	double idle = qw_seconds_now() - t0;
	assert_true(idle > 0.3 && idle < 2.5);
	close(b);
	close(c);
	http_world_stop(&w);
}

/* Loopback only, unless --allow-remote; --host must be an address. */
static void test_bind_rules(void **state)
{
	char *out;
	int st = qhttp_run_to_exit((const char *[]){"--host", "0.0.0.0", "--port", "0", NULL}, &out);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_contains(out, "--allow-remote");
	assert_contains(out, "HINT");
	free(out);
	st = qhttp_run_to_exit((const char *[]){"--host", "example.com", "--port", "0", "--allow-remote",
						NULL}, &out);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_contains(out, "is not an IP address");
	free(out);
	st = qhttp_run_to_exit((const char *[]){"--port", "70000", NULL}, &out);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
	free(out);
	st = qhttp_run_to_exit((const char *[]){"--api-key", "a", "--api-key-file", "/x", NULL}, &out);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
	assert_contains(out, "one API key");
	free(out);
	/* allowed: a wildcard with --allow-remote, and IPv6 loopback */
	qhttp h;
	h.pid = 0;
	char *dir = scratch_new();
	char endpoint[1200];
	snprintf(endpoint, sizeof endpoint, "ipc://%s/none.sock", dir);
	qhttp_start(&h, endpoint, (const char *[]){"--host", "0.0.0.0", "--allow-remote", NULL});
	http_resp r;
	http_call(h.port, "GET", "/health", NULL, NULL, &r);
	assert_int_equal(r.status, 503);
	http_resp_free(&r);
	qhttp_stop(&h);
	qhttp_start(&h, endpoint, (const char *[]){"--host", "::1", NULL});
	qhttp_stop(&h);
	scratch_free(dir);
}

/* systemd-analyze verify, where it is installed, on the unit with this build's qwen-http. */
static void test_systemd_unit(void **state)
{
	verify_unit("systemd/qwen-http.service", "qwen-http");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_translation),
		cmocka_unit_test(test_streams),
		cmocka_unit_test(test_qwend_errors),
		cmocka_unit_test(test_api_key),
		cmocka_unit_test(test_limits_and_routes),
		cmocka_unit_test(test_connections),
		cmocka_unit_test(test_bind_rules),
		cmocka_unit_test(test_systemd_unit),
	};
	return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
