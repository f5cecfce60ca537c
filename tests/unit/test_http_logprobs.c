/* test_http_logprobs.c - the sampler's settings and log-probabilities through qwen-http:
 *   - against a scripted fake daemon (fake_qwend.h): OpenAI's chat object (whole, and per
 *     chunk with its tokens) and completions' (text_offset counting on through a stream), a
 *     token that is part of a character, -inf as vLLM's -9999.0, token_id:N without a
 *     tokenizer, null when not asked, and what the request to qwend carries;
 *   - against the real daemon (the demo model): sampled with top_k 2 and 4 top ones asked,
 *     the two kept tokens' probabilities make the whole distribution and the others show
 *     -9999.0; streamed equals whole; the values equal qwend's (qwenctl's). */
#include "tests/unit/http_harness.h"
#include "tests/unit/qwend_harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define STATUS_JSON "{\"state\": \"ready\", \"model\": {\"path\": \"/models/Fake-VL\", " \
	"\"max_context\": 4096, \"tokenizer\": true}}"

static const char *str(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "(none)";
}

/* status: STATUS_JSON; a submit of "logprobs": accepted, two chunks of tokens with their
 * log-probabilities ("Hel", two bytes of a character, "lo"; the tops as many as asked, the
 * last one -inf), done; "logprobs-ids" the same without bytes (a model without a
 * tokenizer). */
static bool script(fake *f, const qw_request *r)
{
	uint64_t id = f->next_id++;
	if (r->op == QW_OP_STATUS) {
		fake_status(f, STATUS_JSON);
		return true;
	}
	/* the chat's last message, or the completion's prompt */
	const qw_item *it = r->messages ? &r->messages[r->n_messages - 1].items[0] : NULL;
	char text[32];
	snprintf(text, sizeof text, "%.*s", it ? (int)it->len : (int)r->prompt_len,
		 it ? it->data : r->prompt);
	fake_accepted(f, id);
	bool bytes = !strcmp(text, "logprobs");
	int n = r->top_logprobs;
	qw_reply_top top[3][QW_PROTOCOL_MAX_LOGPROBS];
	static const char *const tb[] = {"Hel", "\xe2\x80", "lo"};
	qw_reply_logprob lp[3];
	for (int t = 0; t < 3; t++) {
		lp[t] = (qw_reply_logprob){-0.5 * (t + 1), bytes ? tb[t] : NULL,
					   bytes ? strlen(tb[t]) : 0, top[t], n};
		for (int k = 0; k < n; k++)
			top[t][k] = (qw_reply_top){200 + k, k == n - 1 && t == 2 ? -INFINITY
							: -0.5 * (k + 1), bytes ? "x" : NULL,
						   bytes ? 1 : 0};
	}
	int32_t ids[] = {100, 101, 102};
	fake_reply(f, &(qw_reply){.type = QW_REPLY_CHUNK, .request = id, .text = "Hel",
				  .text_len = 3, .token_ids = ids, .n_token_ids = 2,
				  .logprobs = lp});
	fake_reply(f, &(qw_reply){.type = QW_REPLY_CHUNK, .request = id, .text = "\xe2\x80lo",
				  .text_len = 4, .token_ids = ids + 2, .n_token_ids = 1,
				  .logprobs = lp + 2});
	fake_done(f, id, "length", 4, 3, 1, 1);
	return true;
}

static bool close_to(double a, double b)
{
	return fabs(a - b) <= 1e-6 * (1 + fabs(b));
}

/* OpenAI's chat logprobs object: {content: [{token, logprob, bytes, top_logprobs: [{token,
 * logprob, bytes}] (n_top of them)}], refusal: null}; the tokens' strings joined into
 * *text. */
static void check_chat_logprobs(const json_t *lp, int n_top, int n_tokens, char *text)
{
	json_t *content = json_object_get(lp, "content");
	if (!json_is_array(content) || !json_object_get(lp, "refusal") ||
	    !json_is_null(json_object_get(lp, "refusal")) || json_object_size(lp) != 2)
		fail_msg("not OpenAI's chat logprobs object: %s", json_dumps(lp, 0));
	assert_int_equal(json_array_size(content), n_tokens);
	for (size_t i = 0; i < json_array_size(content); i++) {
		json_t *e = json_array_get(content, i), *top = json_object_get(e, "top_logprobs");
		assert_true(json_is_string(json_object_get(e, "token")) &&
			    json_is_number(json_object_get(e, "logprob")) &&
			    (json_is_array(json_object_get(e, "bytes")) ||
			     json_is_null(json_object_get(e, "bytes"))) && json_is_array(top));
		assert_int_equal(json_object_size(e), 4);
		strcat(text, str(e, "token"));
		assert_int_equal(json_array_size(top), n_top);
		for (size_t k = 0; k < json_array_size(top); k++) {
			json_t *t = json_array_get(top, k);
			assert_true(json_is_string(json_object_get(t, "token")) &&
				    json_is_number(json_object_get(t, "logprob")) &&
				    json_object_get(t, "bytes"));
			assert_int_equal(json_object_size(t), 3);
		}
	}
}

/* Log-probabilities in OpenAI's shapes: chat whole and streamed (each chunk its tokens'),
 * completions whole and streamed (text_offset counting on), a token that is part of a
 * character, -inf as vLLM's -9999.0, and token_id:N without a tokenizer. */
static void test_logprobs(void **state)
{
	http_world w;
	http_world_start(&w, script, NULL);
	http_resp r;
	http_post(w.h.port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
		  "\"content\": \"logprobs\"}], \"logprobs\": true, \"top_logprobs\": 2}", &r);
	assert_int_equal(r.status, 200);
	json_t *j = http_json(&r), *ch = json_array_get(json_object_get(j, "choices"), 0);
	json_t *lp = json_object_get(ch, "logprobs");
	char text[256] = "";
	check_chat_logprobs(lp, 2, 3, text);
	assert_string_equal(text, "Hel\xef\xbf\xbd\xef\xbf\xbdlo");   /* U+FFFD a stray byte */
	json_t *e1 = json_array_get(json_object_get(lp, "content"), 1);
	assert_true(json_real_value(json_object_get(e1, "logprob")) == -1.0);
	json_t *bytes = json_object_get(e1, "bytes");
	assert_int_equal(json_array_size(bytes), 2);
	assert_int_equal(json_integer_value(json_array_get(bytes, 0)), 0xe2);
	json_t *top2 = json_object_get(json_array_get(json_object_get(lp, "content"), 2),
				       "top_logprobs");
	assert_true(json_real_value(json_object_get(json_array_get(top2, 0), "logprob")) == -0.5);
	assert_true(json_real_value(json_object_get(json_array_get(top2, 1), "logprob")) == -9999.0);
	json_decref(j);
	http_resp_free(&r);
	qw_request q;
	fake_request(w.dir, fake_count(w.dir) - 1, &q);
	assert_true(q.logprobs);
	assert_int_equal(q.top_logprobs, 2);
	qw_request_free(&q);

	/* streamed: the chunks with tokens carry theirs, the others null */
	http_post(w.h.port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
		  "\"content\": \"logprobs\"}], \"logprobs\": true, \"stream\": true}", &r);
	char **ev = sse_events(r.body);
	int with = 0, tokens = 0;
	text[0] = '\0';
	for (int i = 0; ev[i] && strcmp(ev[i], "[DONE]"); i++) {
		j = json_loads(ev[i], 0, NULL);
		ch = json_array_get(json_object_get(j, "choices"), 0);
		lp = json_object_get(ch, "logprobs");
		int n = (int)json_array_size(json_object_get(ch, "token_ids"));
		if (json_is_null(lp)) {
			assert_int_equal(n, 0);
		} else {
			int k = (int)json_array_size(json_object_get(lp, "content"));
			check_chat_logprobs(lp, 0, k, text);
			with++;
			tokens += k;
		}
		json_decref(j);
	}
	assert_int_equal(with, 2);
	assert_int_equal(tokens, 3);
	sse_free(ev);
	http_resp_free(&r);

	/* completions: tokens, token_logprobs, top_logprobs (the top ones and the chosen),
	 * text_offset in characters */
	http_post(w.h.port, "/v1/completions", "{\"prompt\": \"logprobs\", \"logprobs\": 2}", &r);
	j = http_json(&r);
	lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
	assert_int_equal(json_object_size(lp), 4);
	json_t *toks = json_object_get(lp, "tokens"), *tl = json_object_get(lp, "token_logprobs");
	json_t *tops = json_object_get(lp, "top_logprobs"), *off = json_object_get(lp, "text_offset");
	assert_int_equal(json_array_size(toks), 3);
	assert_string_equal(json_string_value(json_array_get(toks, 2)), "lo");
	assert_true(json_real_value(json_array_get(tl, 2)) == -1.5);
	assert_int_equal(json_object_size(json_array_get(tops, 0)), 2);   /* "x" and "Hel" */
	assert_true(json_real_value(json_object_get(json_array_get(tops, 0), "Hel")) == -0.5);
	assert_int_equal(json_integer_value(json_array_get(off, 0)), 0);
	assert_int_equal(json_integer_value(json_array_get(off, 1)), 3);
	assert_int_equal(json_integer_value(json_array_get(off, 2)), 5);
	json_decref(j);
	http_resp_free(&r);
	http_post(w.h.port, "/v1/completions", "{\"prompt\": \"logprobs\", \"logprobs\": 0, "
		  "\"stream\": true}", &r);
	ev = sse_events(r.body);
	long long last_offset = -1;
	for (int i = 0; ev[i] && strcmp(ev[i], "[DONE]"); i++) {
		j = json_loads(ev[i], 0, NULL);
		lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
		off = json_object_get(lp, "text_offset");
		for (size_t k = 0; k < json_array_size(off); k++)
			last_offset = json_integer_value(json_array_get(off, k));
		json_decref(j);
	}
	assert_int_equal(last_offset, 5);   /* the second chunk counts on from the first */
	sse_free(ev);
	http_resp_free(&r);

	/* no tokenizer: the ids as vLLM shows them */
	http_post(w.h.port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
		  "\"content\": \"logprobs-ids\"}], \"logprobs\": true, \"top_logprobs\": 1}", &r);
	j = http_json(&r);
	lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
	text[0] = '\0';
	check_chat_logprobs(lp, 1, 3, text);
	assert_string_equal(text, "token_id:100token_id:101token_id:102");
	json_t *e0 = json_array_get(json_object_get(lp, "content"), 0);
	assert_true(json_is_null(json_object_get(e0, "bytes")));
	assert_string_equal(str(json_array_get(json_object_get(e0, "top_logprobs"), 0), "token"),
			    "token_id:200");
	json_decref(j);
	http_resp_free(&r);
	/* not asked: null */
	http_post(w.h.port, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
		  "\"content\": \"logprobs\"}]}", &r);
	j = http_json(&r);
	assert_true(json_is_null(json_object_get(json_array_get(json_object_get(j, "choices"), 0),
						 "logprobs")));
	json_decref(j);
	http_resp_free(&r);
	http_world_stop(&w);
}

/* The sampler's settings through HTTP on the demo daemon: sampled with top_k 2 and 4 top
 * log-probabilities asked, each token's two kept ones make the whole distribution
 * (log_softmax over what the cuts keep: their probabilities sum to 1) and the other two
 * show -9999.0; the chosen is one of the two; the same request streamed gives the same
 * tokens and values; qwenctl gets the same from qwend. */
static void test_sampling_settings(void **state)
{
	use_demo_cache();
	qwend d;
	qwend_start(&d, "demo", NULL, NULL, true);
	qhttp h;
	qhttp_start(&h, d.endpoint, NULL);
	const char *body = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
			   "\"max_tokens\": 8, \"temperature\": 0.9, \"top_k\": 2, \"seed\": 5, "
			   "\"min_p\": 0.001, \"frequency_penalty\": 1, \"logprobs\": true, "
			   "\"top_logprobs\": 4, \"return_token_ids\": true%s}";
	char b[512];
	snprintf(b, sizeof b, body, "");
	http_resp r;
	http_post(h.port, "/v1/chat/completions", b, &r);
	if (r.status != 200)
		fail_msg("%d: %s", r.status, r.body);
	json_t *j = http_json(&r), *ch = json_array_get(json_object_get(j, "choices"), 0);
	json_t *content = json_object_get(json_object_get(ch, "logprobs"), "content");
	assert_int_equal(json_array_size(content), 8);
	for (size_t i = 0; i < 8; i++) {
		json_t *t = json_array_get(content, i), *top = json_object_get(t, "top_logprobs");
		double x = json_number_value(json_object_get(t, "logprob")), sum = 0;
		assert_int_equal(json_array_size(top), 4);
		for (size_t k = 0; k < 2; k++)
			sum += exp(json_number_value(json_object_get(json_array_get(top, k), "logprob")));
		if (!(fabs(sum - 1.0) < 1e-5))
			fail_msg("token %zu: the two kept make %.9g of the distribution", i, sum);
		for (size_t k = 2; k < 4; k++)
			assert_true(json_number_value(json_object_get(json_array_get(top, k),
								      "logprob")) == -9999.0);
		assert_true(x == json_number_value(json_object_get(json_array_get(top, 0), "logprob")) ||
			    x == json_number_value(json_object_get(json_array_get(top, 1), "logprob")));
	}
	/* streamed: the same */
	snprintf(b, sizeof b, body, ", \"stream\": true");
	http_resp rs;
	http_post(h.port, "/v1/chat/completions", b, &rs);
	char **ev = sse_events(rs.body);
	size_t at = 0;
	for (int i = 0; ev[i] && strcmp(ev[i], "[DONE]"); i++) {
		json_t *e = json_loads(ev[i], 0, NULL);
		json_t *c = json_object_get(json_object_get(json_array_get(json_object_get(e, "choices"),
									      0), "logprobs"), "content");
		for (size_t k = 0; k < json_array_size(c); k++, at++)
			assert_true(json_equal(json_array_get(c, k), json_array_get(content, at)));
		json_decref(e);
	}
	assert_int_equal(at, 8);
	sse_free(ev);
	http_resp_free(&rs);
	/* qwend's own, through qwenctl (its chat: the same prompt) */
	json_t *want = qwenctl_submit_json(&d, "Hi --max-tokens 8 --temperature 0.9 --top-k 2 "
					   "--seed 5 --min-p 0.001 --frequency-penalty 1 "
					   "--logprobs 4");
	json_t *w = json_object_get(want, "logprobs"), *ids = json_object_get(ch, "token_ids");
	for (size_t i = 0; i < 8; i++) {
		json_t *wt = json_array_get(w, i);
		assert_int_equal(json_integer_value(json_object_get(wt, "id")),
				 json_integer_value(json_array_get(ids, i)));
		assert_true(close_to(json_number_value(json_object_get(json_array_get(content, i),
								       "logprob")),
				     json_number_value(json_object_get(wt, "logprob"))));
		assert_true(json_is_null(json_object_get(json_array_get(json_object_get(wt, "top"), 3),
							 "logprob")));   /* qwenctl's -inf */
	}
	json_decref(want);
	json_decref(j);
	http_resp_free(&r);
	qhttp_stop(&h);
	qwend_stop(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_logprobs),
		cmocka_unit_test(test_sampling_settings),
	};
	return cmocka_run_group_tests_name("http-logprobs", tests, NULL, NULL);
}
