/* test_http_parts.c - qwen-http's parts on their own: the Python-style JSON writer against
 * Python's json.dumps itself (a fixed and a random corpus), base64 against RFC 4648's
 * vectors, image URLs (data:, file:// inside and outside the allowed directory, http(s)
 * refused), the tool-call parser fed whole and a byte at a time, OpenAI request bodies into
 * qwend requests with every refusal naming its field, errors in OpenAI's shape, and the
 * metrics' histograms and exposition. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http/media.h"
#include "http/metrics.h"
#include "http/openai.h"
#include "http/pyjson.h"
#include "http/reply.h"
#include "http/toolcall.h"

// ---------------------------------------------------------------------------------------
// pyjson

static void test_pyjson_matches_python(void **state)
{
	char *cases;
	int rc = run_capture(&cases, "python3 %s 600", fixture("../unit/pyjson_cases.py"));
	if (rc != 0)
		fail_msg("pyjson_cases.py failed:\n%s", cases);
	int n = 0, bad = 0;
	for (char *line = strtok(cases, "\n"); line; line = strtok(NULL, "\n"), n++) {
		char *tab = strchr(line, '\t');
		assert_non_null(tab);
		*tab = '\0';
		json_error_t jerr;
		json_t *v = json_loads(line, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
		json_t *want = json_loads(tab + 1, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
		if (!v || !want)
			fail_msg("case %d does not load: %s", n, jerr.text);
		char *got;
		size_t len;
		assert_true(qh_pyjson_dumps(v, &got, &len));
		assert_int_equal(strlen(got), len);
		if (len != json_string_length(want) || memcmp(got, json_string_value(want), len)) {
			if (bad++ < 5)
				fprintf(stderr, "case %d: %s\n  python: %s\n  ours:   %s\n", n, line,
					json_string_value(want), got);
		}
		free(got);
		json_decref(v);
		json_decref(want);
	}
	free(cases);
	assert_true(n > 600);
	if (bad)
		fail_msg("%d of %d values are not written as Python writes them", bad, n);
}

// ---------------------------------------------------------------------------------------
// media

static void test_base64_rfc4648(void **state)
{
	static const char *const vec[][2] = {{"", ""}, {"Zg==", "f"}, {"Zm8=", "fo"},
		{"Zm9v", "foo"}, {"Zm9vYg==", "foob"}, {"Zm9vYmE=", "fooba"}, {"Zm9vYmFy", "foobar"},
		{"Zm9vYmE", "fooba"}};   /* the last without its padding */
	for (size_t i = 0; i < sizeof vec / sizeof *vec; i++) {
		unsigned char out[16];
		size_t n;
		assert_true(qh_base64_decode(vec[i][0], strlen(vec[i][0]), out, &n));
		assert_int_equal(n, strlen(vec[i][1]));
		assert_memory_equal(out, vec[i][1], n);
	}
	unsigned char out[16];
	size_t n;
	assert_false(qh_base64_decode("Zm9v!", 5, out, &n));
	assert_false(qh_base64_decode("Zm9vY", 5, out, &n));      /* one char past a group */
	assert_false(qh_base64_decode("Zm 9v", 5, out, &n));
	assert_true(qh_base64_decode("+/+/", 4, out, &n));
	assert_int_equal(out[0], 0xfb);
}

static bool load(const char *url, const char *dir, size_t max, unsigned char **data,
		 size_t *n, bool *too_large, char *msg)
{
	return qh_media_load(url, strlen(url), dir, max, data, n, too_large, msg, 512);
}

static void test_media_urls(void **state)
{
	unsigned char *data;
	size_t n;
	bool big;
	char msg[512];
	assert_true(load("data:image/png;base64,iVBORw0K", NULL, 100, &data, &n, &big, msg));
	assert_int_equal(n, 6);
	assert_memory_equal(data, "\x89PNG\r\n", 6);
	free(data);
	assert_false(load("data:image/png;base64,iVB*Rw0K", NULL, 100, &data, &n, &big, msg));
	assert_contains(msg, "base64 is broken");
	assert_false(load("data:text/plain;base64,aGk=", NULL, 100, &data, &n, &big, msg));
	assert_contains(msg, "must carry an image");
	assert_false(load("data:image/png,raw", NULL, 100, &data, &n, &big, msg));
	assert_contains(msg, "must be base64");
	assert_false(load("data:image/png;base64,AAAAAAAAAAAA", NULL, 8, &data, &n, &big, msg));
	assert_true(big);
	assert_false(load("https://example.com/a.png", NULL, 100, &data, &n, &big, msg));
	assert_contains(msg, "does not fetch images from http(s)");
	assert_contains(msg, "HINT");
	assert_false(big);
	assert_false(load("ftp://x/y", NULL, 100, &data, &n, &big, msg));
	assert_contains(msg, "not an image URL");
	/* file:// only inside the allowed directory, links resolved */
	char *dir = scratch_new(), *outside = scratch_new();
	write_file(path_in(dir, "a b.png"), "PNGDATA", 7);
	write_file(path_in(outside, "secret.png"), "SECRET", 6);
	char url[2300], allowed[1100];
	snprintf(allowed, sizeof allowed, "%s", dir);
	assert_false(load("file:///etc/passwd", NULL, 100, &data, &n, &big, msg));
	assert_contains(msg, "--allowed-local-media");
	snprintf(url, sizeof url, "file://%s/a%%20b.png", dir);
	assert_true(load(url, allowed, 100, &data, &n, &big, msg));
	assert_memory_equal(data, "PNGDATA", 7);
	free(data);
	snprintf(url, sizeof url, "file://%s", path_in(outside, "secret.png"));
	assert_false(load(url, allowed, 100, &data, &n, &big, msg));
	assert_contains(msg, "outside the directory");
	assert_int_equal(symlink(path_in(outside, "secret.png"), path_in(dir, "link.png")), 0);
	snprintf(url, sizeof url, "file://%s/../%s", dir, strrchr(outside, '/') + 1);
	strcat(url, "/secret.png");
	assert_false(load(url, allowed, 100, &data, &n, &big, msg));
	assert_contains(msg, "outside the directory");
	snprintf(url, sizeof url, "file://%s", path_in(dir, "link.png"));
	assert_false(load(url, allowed, 100, &data, &n, &big, msg));
	assert_contains(msg, "outside the directory");
	snprintf(url, sizeof url, "file://%s", path_in(dir, "a b.png"));
	assert_false(load(url, allowed, 3, &data, &n, &big, msg));
	assert_true(big);
	scratch_free(dir);
	scratch_free(outside);
}

// ---------------------------------------------------------------------------------------
// tool calls

typedef struct parsed {
	char content[512];
	qh_toolcall calls[4];
	int n;
} parsed;

/* Feeds text in pieces of `step` bytes (0: whole). */
static void parse_tools(const char *text, size_t step, parsed *p)
{
	qh_toolparse tp = {0};
	qh_buf content = {0};
	memset(p, 0, sizeof *p);
	size_t len = strlen(text);
	if (!step)
		step = len ? len : 1;
	for (size_t at = 0; at < len; at += step)
		qh_toolparse_push(&tp, text + at, at + step < len ? step : len - at, false, &content,
				  p->calls, &p->n, 4);
	qh_toolparse_push(&tp, NULL, 0, true, &content, p->calls, &p->n, 4);
	snprintf(p->content, sizeof p->content, "%s", content.p ? content.p : "");
	qh_buf_free(&content);
	qh_toolparse_free(&tp);
}

static void parsed_free(parsed *p)
{
	for (int i = 0; i < p->n; i++)
		qh_toolcall_free(&p->calls[i]);
}

static void test_tool_calls(void **state)
{
	static const struct {
		const char *text, *content;
		int n;
		const char *name0, *args0;
	} cases[] = {
		{"Let me check.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
		 "{\"city\":\"Paris\",\"days\":2}}\n</tool_call>",
		 "Let me check.", 1, "get_weather", "{\"city\": \"Paris\", \"days\": 2}"},
		{"<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n"
		 "{\"name\": \"b\", \"arguments\": \"{\\\"raw\\\": 1}\"}\n</tool_call>\n",
		 "", 2, "a", "{}"},
		/* no call: the text exactly, blanks and a "<tool" that is not one included */
		{"a <tool and\n\n more  \n", "a <tool and\n\n more  \n", 0, NULL, NULL},
		/* a block that is not a call is content, as written */
		{"x<tool_call>not json</tool_call>y", "x<tool_call>not json</tool_call>y", 0, NULL,
		 NULL},
		{"<tool_call>{\"arguments\": {}}</tool_call>", "<tool_call>{\"arguments\": {}}"
		 "</tool_call>", 0, NULL, NULL},
		/* an unfinished block at the end is content */
		{"ok <tool_call>{\"name\": \"f\"", "ok <tool_call>{\"name\": \"f\"", 0, NULL, NULL},
		/* no arguments: an empty object */
		{"<tool_call>{\"name\": \"f\"}</tool_call>", "", 1, "f", "{}"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
		for (size_t step = 0; step < 4; step++) {
			parsed p;
			parse_tools(cases[i].text, step, &p);
			if (strcmp(p.content, cases[i].content) || p.n != cases[i].n)
				fail_msg("case %zu, pieces of %zu: content \"%s\", %d calls", i, step,
					 p.content, p.n);
			if (p.n) {
				assert_string_equal(p.calls[0].name, cases[i].name0);
				assert_string_equal(p.calls[0].arguments, cases[i].args0);
			}
			if (i == 1)
				assert_string_equal(p.calls[1].arguments, "{\"raw\": 1}");
			parsed_free(&p);
		}
}

// ---------------------------------------------------------------------------------------
// OpenAI bodies

static qh_parse_opts opts = {NULL, 8};

static void parse_ok(qh_api api, const char *body, qh_job *job)
{
	qh_error e;
	if (!qh_job_parse(api, body, strlen(body), &opts, job, &e))
		fail_msg("refused (%d, %s): %s", e.status, e.param, e.message);
}

static void refused(qh_api api, const char *body, int status, const char *param,
		    const char *needle)
{
	qh_job job;
	qh_error e;
	if (qh_job_parse(api, body, strlen(body), &opts, &job, &e))
		fail_msg("accepted: %s", body);
	qh_job_free(&job);
	if (e.status != status || strcmp(e.param, param) != 0)
		fail_msg("%s\n  got %d param '%s': %s", body, e.status, e.param, e.message);
	assert_contains(e.message, needle);
}

static void test_chat_body(void **state)
{
	qh_job job;
	parse_ok(QH_API_CHAT,
		 "{\"model\": \"m\", \"messages\": [{\"role\": \"developer\", \"content\": \"Be brief\"},"
		 " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"What?\"},"
		 " {\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,iVBORw0K\"}}]},"
		 " {\"role\": \"assistant\", \"content\": null, \"reasoning_content\": \"hm\","
		 " \"tool_calls\": [{\"id\": \"c\", \"type\": \"function\", \"function\": {\"name\": \"f\","
		 " \"arguments\": {\"b\": 1.5, \"a\": \"é\"}}}]},"
		 " {\"role\": \"tool\", \"tool_call_id\": \"c\", \"content\": \"42\"}],"
		 " \"max_completion_tokens\": 20, \"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": -1,"
		 " \"seed\": 7, \"n\": 3, \"stop\": \"END\", \"stream\": true,"
		 " \"stream_options\": {\"include_usage\": true}, \"return_token_ids\": true,"
		 " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}],"
		 " \"tool_choice\": \"auto\", \"chat_template_kwargs\": {\"enable_thinking\": false},"
		 " \"presence_penalty\": 0, \"repetition_penalty\": 1, \"logprobs\": false, \"user\": \"u\"}",
		 &job);
	qw_request *r = &job.reqs[0];
	assert_string_equal(job.model, "m");
	assert_int_equal(job.n, 3);
	assert_true(job.stream && job.include_usage && job.return_token_ids && job.parse_tools);
	assert_true(r->stream && r->prompt_ids);
	assert_int_equal(r->max_tokens, 20);
	assert_true(r->temperature == 0.5 && r->top_p == 0.9);
	assert_int_equal(r->top_k, 0);
	assert_true(job.has_seed && job.seed == 7);
	assert_int_equal(r->n_stop, 1);
	assert_int_equal(r->thinking, QW_THINKING_OFF);
	assert_int_equal(r->n_messages, 4);
	assert_memory_equal(r->messages[0].role, "system", 6);
	assert_int_equal(r->messages[1].n_items, 2);
	assert_int_equal(r->messages[1].items[1].kind, QW_ITEM_IMAGE);
	assert_memory_equal(r->messages[1].items[1].data, "\x89PNG\r\n", 6);
	assert_int_equal(r->messages[2].n_items, 1);
	assert_int_equal(r->messages[2].items[0].len, 0);
	assert_memory_equal(r->messages[2].reasoning, "hm", 2);
	assert_int_equal(r->messages[2].n_tool_calls, 1);
	assert_string_equal(r->messages[2].tool_calls[0].arguments, "{\"b\": 1.5, \"a\": \"é\"}");
	assert_int_equal(r->n_tools, 1);
	assert_string_equal(r->tools[0], "{\"type\": \"function\", \"function\": {\"name\": \"f\", "
			    "\"parameters\": {}}}");
	assert_true(r->min_p == 0 && r->repetition_penalty == 0 && r->frequency_penalty == 0 &&
		    r->presence_penalty == 0);   /* at their neutral values: off */
	assert_false(job.logprobs || r->logprobs);
	qh_job_free(&job);
	/* the sampler's other settings, as vLLM takes them */
	parse_ok(QH_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
		 "\"min_p\": 0.05, \"repetition_penalty\": 1.2, \"frequency_penalty\": -0.5, "
		 "\"presence_penalty\": 2, \"logprobs\": true, \"top_logprobs\": 20}", &job);
	r = &job.reqs[0];
	assert_true(r->min_p == 0.05 && r->repetition_penalty == 1.2 &&
		    r->frequency_penalty == -0.5 && r->presence_penalty == 2);
	assert_true(job.logprobs && r->logprobs);
	assert_int_equal(r->top_logprobs, 20);
	qh_job_free(&job);
	parse_ok(QH_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
		 "\"logprobs\": true}", &job);
	assert_true(job.reqs[0].logprobs);
	assert_int_equal(job.reqs[0].top_logprobs, 0);
	qh_job_free(&job);
	/* tool_choice none: the tools are neither shown nor parsed */
	parse_ok(QH_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\":"
		 " [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], \"tool_choice\": \"none\"}",
		 &job);
	assert_int_equal(job.reqs[0].n_tools, 0);
	assert_false(job.parse_tools);
	assert_int_equal(job.reqs[0].max_tokens, 0);    /* the daemon's default */
	assert_true(job.reqs[0].temperature < 0 && job.reqs[0].top_k < 0);
	qh_job_free(&job);
}

static void test_chat_refusals(void **state)
{
	const qh_api C = QH_API_CHAT;
	refused(C, "{\"messages\": [", 400, "", "not valid JSON");
	refused(C, "[1]", 400, "", "must be a JSON object");
	refused(C, "{}", 400, "messages", "non-empty list");
	refused(C, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temprature\": 1}",
		400, "temprature", "unknown field 'temprature'");
	refused(C, "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", 400, "messages[0]",
		"role");
	refused(C, "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages[0].content",
		"is required");
	refused(C, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"audio\"}]}]}", 400,
		"messages[0].content[0]", "must be");
	refused(C, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\","
		" \"image_url\": {\"url\": \"http://x/y.png\"}}]}]}", 400, "messages[0].content[0]",
		"does not fetch");
	refused(C, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\","
		" \"image_url\": {\"url\": \"data:image/png;base64,@@@@\"}}]}]}", 400,
		"messages[0].content[0]", "base64 is broken");
	refused(C, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"tool_calls\": []}]}", 400,
		"messages[0]", "belong to assistant");
	const char *m = "\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]";
	char body[512];
	static const struct { const char *field; int status; const char *param, *needle; } f[] = {
		{"\"temperature\": -1", 400, "temperature", "must be in [0, 100]"},
		{"\"temperature\": \"hot\"", 400, "temperature", "must be a number"},
		{"\"top_p\": 0", 400, "top_p", "(0, 1]"},
		{"\"top_k\": -2", 400, "top_k", "must be in"},
		{"\"max_tokens\": 0", 400, "max_tokens", "must be in [1,"},
		{"\"max_tokens\": 1.5", 400, "max_tokens", "must be an integer"},
		{"\"n\": 9", 400, "n", "[1, 8]"},
		{"\"stop\": [\"\"]", 400, "stop", "1 to 256 bytes"},
		{"\"stop\": 5", 400, "stop", "string or a list"},
		{"\"min_p\": 1.5", 400, "min_p", "must be in [0, 1]"},
		{"\"presence_penalty\": 2.5", 400, "presence_penalty", "must be in [-2, 2]"},
		{"\"frequency_penalty\": -3", 400, "frequency_penalty", "must be in [-2, 2]"},
		{"\"repetition_penalty\": 0", 400, "repetition_penalty", "must be in (0, 100]"},
		{"\"logprobs\": 1", 400, "logprobs", "true or false"},
		{"\"top_logprobs\": 5", 400, "top_logprobs", "goes with 'logprobs': true"},
		{"\"logprobs\": true, \"top_logprobs\": 21", 400, "top_logprobs", "[0, 20]"},
		{"\"logit_bias\": {\"1\": 5}", 400, "logit_bias", "not supported"},
		{"\"response_format\": {\"type\": \"json_object\"}", 400, "response_format", "JSON"},
		{"\"tool_choice\": \"required\"", 400, "tool_choice", "cannot force"},
		{"\"tools\": [{\"type\": \"function\"}]", 400, "tools[0]", "\"name\""},
		{"\"chat_template_kwargs\": {\"foo\": 1}", 400, "chat_template_kwargs.foo", "unknown"},
		{"\"chat_template_kwargs\": {\"enable_thinking\": 1}", 400,
		 "chat_template_kwargs.enable_thinking", "true or false"},
		{"\"stream_options\": {\"include_usage\": true}", 400, "stream_options", "stream true"},
		{"\"stream\": true, \"stream_options\": {\"x\": 1}", 400, "stream_options.x", "unknown"},
		{"\"stream\": \"yes\"", 400, "stream", "true or false"},
		{"\"model\": 5", 400, "model", "must be a string"},
		{"\"seed\": \"s\"", 400, "seed", "integer"},
		{"\"user\": 5", 400, "user", "string"},
	};
	for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
		snprintf(body, sizeof body, "{%s, %s}", m, f[i].field);
		refused(C, body, f[i].status, f[i].param, f[i].needle);
	}
	/* 256 messages at most; 16 images at most */
	char *big = malloc(300 * 64 + 64);
	strcpy(big, "{\"messages\": [");
	for (int i = 0; i < 257; i++)
		strcat(big, i ? ", {\"role\": \"user\", \"content\": \"x\"}"
			      : "{\"role\": \"user\", \"content\": \"x\"}");
	strcat(big, "]}");
	refused(C, big, 413, "messages", "at most 256");
	strcpy(big, "{\"messages\": [{\"role\": \"user\", \"content\": [");
	for (int i = 0; i < 17; i++)
		strcat(big, i ? ", {\"type\": \"image_url\", \"image_url\": \"data:image/png;base64,AA==\"}"
			      : "{\"type\": \"image_url\", \"image_url\": \"data:image/png;base64,AA==\"}");
	strcat(big, "]}]}");
	refused(C, big, 413, "messages", "17 images");
	free(big);
}

static void test_completions_and_tokens(void **state)
{
	qh_job job;
	parse_ok(QH_API_COMPLETIONS, "{\"prompt\": \"Once\"}", &job);
	assert_int_equal(job.n_reqs, 1);
	assert_memory_equal(job.reqs[0].prompt, "Once", 4);
	assert_int_equal(job.reqs[0].max_tokens, 16);   /* OpenAI's default */
	qh_job_free(&job);
	parse_ok(QH_API_COMPLETIONS, "{\"prompt\": [1, 2, 3], \"n\": 2, \"best_of\": 2, \"echo\": false}",
		 &job);
	assert_int_equal(job.reqs[0].n_token_ids, 3);
	assert_int_equal(job.reqs[0].token_ids[2], 3);
	assert_int_equal(job.n, 2);
	qh_job_free(&job);
	parse_ok(QH_API_COMPLETIONS, "{\"prompt\": [\"a\", \"bc\", [7, 8]]}", &job);
	assert_int_equal(job.n_reqs, 3);
	assert_memory_equal(job.reqs[1].prompt, "bc", 2);
	assert_int_equal(job.reqs[2].n_token_ids, 2);
	qh_job_free(&job);
	refused(QH_API_COMPLETIONS, "{}", 400, "prompt", "required");
	refused(QH_API_COMPLETIONS, "{\"prompt\": [1, -2]}", 400, "prompt", "not a token id");
	refused(QH_API_COMPLETIONS, "{\"prompt\": [[1], \"x\", 5]}", 400, "prompt[2]", "token ids");
	refused(QH_API_COMPLETIONS, "{\"prompt\": \"x\", \"echo\": true}", 400, "echo", "not supported");
	refused(QH_API_COMPLETIONS, "{\"prompt\": \"x\", \"suffix\": \"y\"}", 400, "suffix",
		"fill-in-the-middle");
	refused(QH_API_COMPLETIONS, "{\"prompt\": \"x\", \"best_of\": 3}", 400, "best_of", "[1, 1]");
	parse_ok(QH_API_COMPLETIONS, "{\"prompt\": \"x\", \"logprobs\": 3, \"min_p\": 0.1}",
		 &job);
	assert_true(job.logprobs && job.reqs[0].logprobs);
	assert_int_equal(job.reqs[0].top_logprobs, 3);
	assert_true(job.reqs[0].min_p == 0.1);
	qh_job_free(&job);
	parse_ok(QH_API_COMPLETIONS, "{\"prompt\": \"x\", \"logprobs\": null}", &job);
	assert_false(job.logprobs || job.reqs[0].logprobs);
	qh_job_free(&job);
	refused(QH_API_COMPLETIONS, "{\"prompt\": \"x\", \"logprobs\": true}", 400, "logprobs",
		"must be an integer");
	refused(QH_API_COMPLETIONS, "{\"prompt\": \"x\", \"logprobs\": 21}", 400, "logprobs",
		"[0, 20]");
	refused(QH_API_COMPLETIONS, "{\"prompt\": [\"a\", \"b\", \"c\"], \"n\": 3}", 400, "prompt",
		"9 choices");
	parse_ok(QH_API_TOKENIZE, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
		 "\"add_generation_prompt\": false, \"tools\": [{\"type\": \"function\", \"function\": "
		 "{\"name\": \"f\"}}]}", &job);
	assert_int_equal(job.reqs[0].op, QW_OP_TOKENIZE);
	assert_true(job.reqs[0].no_generation_prompt);
	assert_int_equal(job.reqs[0].n_tools, 1);
	qh_job_free(&job);
	refused(QH_API_TOKENIZE, "{\"prompt\": \"x\", \"messages\": []}", 400, "prompt", "one of them");
	refused(QH_API_TOKENIZE, "{\"prompt\": \"x\", \"tools\": []}", 400, "tools", "go with");
	refused(QH_API_TOKENIZE, "{\"prompt\": \"x\", \"return_token_strs\": true}", 400,
		"return_token_strs", "not supported");
	parse_ok(QH_API_DETOKENIZE, "{\"tokens\": [9707, 11]}", &job);
	assert_int_equal(job.reqs[0].op, QW_OP_DETOKENIZE);
	assert_int_equal(job.reqs[0].n_token_ids, 2);
	qh_job_free(&job);
	refused(QH_API_DETOKENIZE, "{\"tokens\": []}", 400, "tokens", "non-empty");
	refused(QH_API_DETOKENIZE, "{\"tokens\": [1], \"x\": 1}", 400, "x", "unknown");
}

// ---------------------------------------------------------------------------------------
// errors and metrics

static void test_errors(void **state)
{
	qh_error e;
	qh_error_from_qwend(&e, "busy", "the queue is full");
	assert_int_equal(e.status, 429);
	assert_int_equal(qh_retry_after(&e), 1);
	char *j = qh_error_json(&e);
	json_t *o = json_loads(j, 0, NULL), *err = json_object_get(o, "error");
	assert_string_equal(json_string_value(json_object_get(err, "message")), "the queue is full");
	assert_string_equal(json_string_value(json_object_get(err, "type")), "rate_limit_error");
	assert_string_equal(json_string_value(json_object_get(err, "code")), "busy");
	assert_true(json_is_null(json_object_get(err, "param")));
	json_decref(o);
	free(j);
	static const struct { const char *code; int status; } map[] = {
		{"bad_request", 400}, {"too_large", 413}, {"not_ready", 503}, {"internal", 500},
		{"something_new", 500}};
	for (size_t i = 0; i < sizeof map / sizeof *map; i++) {
		qh_error_from_qwend(&e, map[i].code, "m");
		assert_int_equal(e.status, map[i].status);
	}
	qh_fail(&e, 400, "messages[0]", "bad \xff byte");
	j = qh_error_json(&e);   /* still JSON, though the message is not UTF-8 */
	o = json_loads(j, 0, NULL);
	assert_non_null(o);
	json_decref(o);
	free(j);
}

static void test_metrics(void **state)
{
	qh_metrics m;
	qh_metrics_init(&m);
	qh_histogram_observe(&m.ttft, 0.003);   /* (0.001, 0.005] */
	qh_histogram_observe(&m.ttft, 0.005);   /* on a bound: that bucket */
	qh_histogram_observe(&m.ttft, 5000);    /* past the last: +Inf only */
	qh_metrics_request(&m, "chat_completions", 200, "");
	qh_metrics_request(&m, "chat_completions", 200, "");
	qh_metrics_request(&m, "chat_completions", 400, "bad_request");
	/* more series than the table keeps: past its 95, the rest count as "other" */
	for (int i = 0; i < 200; i++) {
		char ep[16];
		snprintf(ep, sizeof ep, "e%d", i);
		qh_metrics_request(&m, ep, 200, "");
	}
	qh_gauges g = {3, 2, false};
	char *text = qh_metrics_render(&m, &g, NULL, "my \"model\"");
	assert_contains(text, "qwen:http_requests_total{endpoint=\"chat_completions\",status="
			"\"200\",code=\"\"} 2\n");
	assert_contains(text, "code=\"bad_request\"} 1\n");
	assert_contains(text, "qwen:http_requests_total{endpoint=\"other\",status=\"0\",code=\"\"} "
			"107\n");
	assert_contains(text, "qwen:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\","
			"le=\"0.001\"} 0\n");
	assert_contains(text, "le=\"0.005\"} 2\n");
	assert_contains(text, "le=\"2560\"} 2\n");
	assert_contains(text, "le=\"+Inf\"} 3\n");
	assert_contains(text, "qwen:time_to_first_token_seconds_count{model_name=\"my \\\"model\\\"\"} 3");
	assert_contains(text, "qwen:daemon_up{model_name=\"my \\\"model\\\"\"} 0\n");
	assert_null(strstr(text, "qwen:num_requests_running"));   /* qwend's: none without it */
	free(text);
	json_t *st = json_loads("{\"state\": \"loading\", \"requests\": {\"running\": 2, \"queued\": 5,"
				" \"preempted\": 1, \"served\": 9}, \"kv\": {\"blocks_used\": 3, "
				"\"blocks_total\": 12}, \"load\": {\"bytes_done\": 25, \"bytes_total\": "
				"100}, \"stages\": [{\"weight_bytes\": 7, \"kv_bytes\": 8, \"step_bytes\": 5}, "
				"{\"weight_bytes\": 9, \"kv_bytes\": 10, \"step_bytes\": 6}], "
				"\"restarts\": 4}", 0, NULL);
	g.qwend_up = true;
	text = qh_metrics_render(&m, &g, st, "m");
	assert_contains(text, "qwen:daemon_state{model_name=\"m\",state=\"loading\"} 1\n");
	assert_contains(text, "qwen:daemon_state{model_name=\"m\",state=\"ready\"} 0\n");
	assert_contains(text, "qwen:num_requests_running{model_name=\"m\"} 2\n");
	assert_contains(text, "qwen:num_requests_waiting{model_name=\"m\"} 5\n");
	assert_contains(text, "qwen:kv_cache_usage_perc{model_name=\"m\"} 0.25\n");
	assert_contains(text, "qwen:stage_kv_cache_bytes{model_name=\"m\",stage=\"1\"} 10\n");
	assert_contains(text, "qwen:stage_step_bytes{model_name=\"m\",stage=\"1\"} 6\n");
	assert_contains(text, "qwen:load_progress_ratio{model_name=\"m\"} 0.25\n");
	assert_contains(text, "qwen:restarts_total{model_name=\"m\"} 4\n");
	assert_contains(text, "qwen:daemon_requests_total{model_name=\"m\",outcome=\"served\"} 9\n");
	free(text);
	json_decref(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pyjson_matches_python),
		cmocka_unit_test(test_base64_rfc4648),
		cmocka_unit_test(test_media_urls),
		cmocka_unit_test(test_tool_calls),
		cmocka_unit_test(test_chat_body),
		cmocka_unit_test(test_chat_refusals),
		cmocka_unit_test(test_completions_and_tokens),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_metrics),
	};
	return cmocka_run_group_tests_name("http_parts", tests, NULL, NULL);
}
