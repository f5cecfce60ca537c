/* test_chat.c - the chat template against the text Qwen's real template renders (Jinja,
 * through tests/unit/render_chat_template.py, for the text-only Qwen3 template shipped with
 * the tokenizer), against the spec's Qwen3-VL examples for images and the Thinking prompt,
 * and the reasoning / answer split. */
#include "tests/unit/helpers.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/text/chat.h"

static const char *const conversations[] = {
	"[{\"role\": \"user\", \"content\": \"Hi there\"}]",
	"[{\"role\": \"system\", \"content\": \"You are terse.\"},"
	" {\"role\": \"user\", \"content\": \"What is 2+2?\"}]",
	/* history: an earlier assistant turn keeps only its answer */
	"[{\"role\": \"user\", \"content\": \"Q1\"},"
	" {\"role\": \"assistant\", \"content\": \"<think>\\nr1\\n</think>\\n\\nA1\"},"
	" {\"role\": \"user\", \"content\": \"Q2\"}]",
	/* a continuation after the last query keeps its reasoning */
	"[{\"role\": \"user\", \"content\": \"Q\"},"
	" {\"role\": \"assistant\", \"content\": \"partial answer\", \"reasoning_content\": \"\\n\\nthinking\\n\\n\"}]",
	"[{\"role\": \"user\", \"content\": \"Q\"},"
	" {\"role\": \"assistant\", \"content\": \"\\n\\nA\", \"reasoning_content\": \"\"},"
	" {\"role\": \"tool\", \"content\": \"{\\\"t\\\": 1}\"},"
	" {\"role\": \"tool\", \"content\": \"second\"},"
	" {\"role\": \"assistant\", \"content\": \"<think>why</think>final\"}]",
	/* a user turn that is only a tool response does not count as the last query */
	"[{\"role\": \"user\", \"content\": \"look it up\"},"
	" {\"role\": \"assistant\", \"content\": \"calling\", \"reasoning_content\": \"need a tool\"},"
	" {\"role\": \"user\", \"content\": \"<tool_response>\\n42\\n</tool_response>\"}]",
	"[{\"role\": \"system\", \"content\": \"first\"}, {\"role\": \"user\", \"content\": \"u\"},"
	" {\"role\": \"system\", \"content\": \"second system\"}, {\"role\": \"user\", \"content\": \"v\"}]",
	"[{\"role\": \"user\", \"content\": \"你好，世界 — ünïcødé\\n\\twith tabs\"},"
	" {\"role\": \"assistant\", \"content\": \"<think>\\n\\n一\\n</think>\\n好\"},"
	" {\"role\": \"user\", \"content\": \"\"}]",
};

static void test_matches_real_template(void **state)
{
	char *dir = scratch_new();
	for (size_t i = 0; i < sizeof conversations / sizeof *conversations; i++)
		for (int gen = 0; gen < 2; gen++) {
			write_file(path_in(dir, "m.json"), conversations[i], strlen(conversations[i]));
			char *want, *got;
			const char *flag = gen ? "" : "--no-generation-prompt";
			int rc = run_capture(&want, "/usr/bin/python3 %s "
					     "%s %s %s", fixture("../unit/render_chat_template.py"),
					     fixture("tokenizer/qwen3/tokenizer_config.json"),
					     path_in(dir, "m.json"), flag);
			if (rc != 0)
				fail_msg("the Jinja renderer failed (is python3-jinja2 installed? "
					 ".ci/install-deps installs it):\n%s", want);
			assert_int_equal(run_capture(&got, "%s chat %s %s", program("qwen-tok"),
						     path_in(dir, "m.json"), flag), 0);
			if (strcmp(want, got) != 0)
				fail_msg("conversation %zu (generation prompt %d):\n--- template ---\n%s"
					 "\n--- ours ---\n%s\n---", i, gen, want, got);
			free(want);
			free(got);
		}
	scratch_free(dir);
}

/* Tools, and conversations that use them: tool calls in assistant turns (after content or
 * none, after reasoning), tool results, a system message merged into the tools' turn. */
static const char tools_json[] =
	"[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": "
	"\"Weather in a city — «today»\", \"parameters\": {\"type\": \"object\", \"properties\": "
	"{\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\", \"minimum\": 1, "
	"\"maximum\": 7.5}}, \"required\": [\"city\"], \"additionalProperties\": false}}},"
	" {\"type\": \"function\", \"function\": {\"name\": \"noop\", \"parameters\": {}}}]";

static const char *const tool_conversations[] = {
	"[{\"role\": \"user\", \"content\": \"Weather in Paris?\"}]",
	"[{\"role\": \"system\", \"content\": \"Be terse.\"},"
	" {\"role\": \"user\", \"content\": \"Weather in Paris?\"},"
	" {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"type\": \"function\","
	" \"id\": \"c1\", \"function\": {\"name\": \"get_weather\", \"arguments\": "
	"\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
	" {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"{\\\"temp\\\": 21}\"}]",
	"[{\"role\": \"user\", \"content\": \"two calls\"},"
	" {\"role\": \"assistant\", \"content\": \"Let me check.\", \"reasoning_content\": \"need"
	" both\", \"tool_calls\": [{\"function\": {\"name\": \"get_weather\", \"arguments\": "
	"\"{\\\"city\\\": \\\"Oslo\\\", \\\"days\\\": 2}\"}}, {\"function\": {\"name\": \"noop\","
	" \"arguments\": \"{}\"}}]},"
	" {\"role\": \"tool\", \"content\": \"cold\"}, {\"role\": \"tool\", \"content\": \"ok\"},"
	" {\"role\": \"assistant\", \"content\": \"<think>done</think>It is cold.\"},"
	" {\"role\": \"user\", \"content\": \"thanks\"}]",
};

static void test_tools_match_real_template(void **state)
{
	char *dir = scratch_new();
	write_file(path_in(dir, "tools.json"), tools_json, strlen(tools_json));
	for (size_t i = 0; i < sizeof tool_conversations / sizeof *tool_conversations; i++)
		for (int mode = 0; mode < 3; mode++) {
			/* with the generation prompt, without, and with enable_thinking false */
			const char *flags = mode == 0 ? "" : mode == 1 ? "--no-generation-prompt"
					  : "--no-thinking";
			write_file(path_in(dir, "m.json"), tool_conversations[i],
				   strlen(tool_conversations[i]));
			char *want, *got;
			int rc = run_capture(&want, "/usr/bin/python3 %s %s %s --tools %s --tool-lines "
					     "%s %s", fixture("../unit/render_chat_template.py"),
					     fixture("tokenizer/qwen3/tokenizer_config.json"),
					     path_in(dir, "m.json"), path_in(dir, "tools.json"),
					     path_in(dir, "tools.txt"), flags);
			if (rc != 0)
				fail_msg("the Jinja renderer failed:\n%s", want);
			assert_int_equal(run_capture(&got, "%s chat %s --tools %s %s", program("qwen-tok"),
						     path_in(dir, "m.json"), path_in(dir, "tools.txt"),
						     flags), 0);
			if (strcmp(want, got) != 0)
				fail_msg("tool conversation %zu (%s):\n--- template ---\n%s\n--- ours ---\n"
					 "%s\n---", i, *flags ? flags : "generation prompt", want, got);
			assert_contains(got, "\"maximum\": 7.5");
			free(want);
			free(got);
		}
	scratch_free(dir);
}

static char *render(const qw_message *m, int n, qw_chat_opts o)
{
	char *out;
	size_t len;
	qw_err err = {0};
	if (qw_chat_render(m, n, &o, &out, &len, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(strlen(out), len);
	return out;
}

/* The spec's example (section 7): one image and a question, Thinking prompt. */
static void test_vl_thinking_example(void **state)
{
	qw_content c[] = {{QW_CONTENT_IMAGE, NULL, 0}, {QW_CONTENT_TEXT, "Describe this image.", 0}};
	qw_message m = {"user", c, 2, NULL, NULL, 0};
	char *out = render(&m, 1, (qw_chat_opts){.add_generation_prompt = true, .thinking = true});
	assert_string_equal(out, "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
				 "Describe this image.<|im_end|>\n<|im_start|>assistant\n<think>\n");
	free(out);
}

static void test_images_expanded_and_numbered(void **state)
{
	qw_content c[] = {{QW_CONTENT_TEXT, "Compare ", 0}, {QW_CONTENT_IMAGE, NULL, 3},
			  {QW_CONTENT_TEXT, " and ", 0}, {QW_CONTENT_IMAGE, NULL, 2}};
	qw_content c2[] = {{QW_CONTENT_VIDEO, NULL, 1}};
	qw_message m[] = {{"user", c, 4, NULL, NULL, 0}, {"user", c2, 1, NULL, NULL, 0}};
	char *out = render(m, 2, (qw_chat_opts){.add_vision_id = true});
	assert_string_equal(out,
		"<|im_start|>user\nCompare Picture 1: <|vision_start|><|image_pad|><|image_pad|>"
		"<|image_pad|><|vision_end|> and Picture 2: <|vision_start|><|image_pad|><|image_pad|>"
		"<|vision_end|><|im_end|>\n<|im_start|>user\nVideo 1: <|vision_start|><|video_pad|>"
		"<|vision_end|><|im_end|>\n");
	free(out);
}

static void test_bad_messages(void **state)
{
	qw_content img[] = {{QW_CONTENT_IMAGE, NULL, 0}};
	qw_message m[] = {{"user", NULL, 0, NULL, NULL, 0}, {"robot", NULL, 0, NULL, NULL, 0}};
	char *out;
	size_t len;
	qw_err err = {0};
	qw_chat_opts o = {0};
	assert_int_equal(qw_chat_render(m, 2, &o, &out, &len, &err), QW_E_ARG);
	assert_contains(err.msg, "message 1: role 'robot'");
	qw_message a[] = {{"assistant", img, 1, NULL, NULL, 0}};
	assert_int_equal(qw_chat_render(a, 1, &o, &out, &len, &err), QW_E_ARG);
	assert_contains(err.msg, "message 0: an assistant message cannot hold an image");
	qw_message sys[] = {{"system", img, 1, NULL, NULL, 0}};
	assert_int_equal(qw_chat_render(sys, 1, &o, &out, &len, &err), QW_OK);
	free(out);
	qw_message tool[] = {{"tool", img, 1, NULL, NULL, 0}};
	assert_int_equal(qw_chat_render(tool, 1, &o, &out, &len, &err), QW_E_ARG);
	assert_contains(err.msg, "message 0: a tool message cannot hold an image");
	qw_chat_tool_call call = {"f", "{}"};
	qw_message u[] = {{"user", NULL, 0, NULL, &call, 1}};
	assert_int_equal(qw_chat_render(u, 1, &o, &out, &len, &err), QW_E_ARG);
	assert_contains(err.msg, "message 0: a user message cannot hold tool calls");
}

/* enable_thinking false closes an empty think block, for Thinking models too. */
static void test_thinking_off(void **state)
{
	qw_content c[] = {{QW_CONTENT_TEXT, "Hi", 0}};
	qw_message m = {"user", c, 1, NULL, NULL, 0};
	char *out = render(&m, 1, (qw_chat_opts){.add_generation_prompt = true, .thinking = true,
						 .thinking_off = true});
	assert_string_equal(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
				 "<think>\n\n</think>\n\n");
	free(out);
}

/* Feeds (id, text) pairs and collects both channels. */
static void split(qw_reasoning *r, const int32_t *ids, const char *const *texts, int n,
		  char *reasoning, char *answer)
{
	size_t rn = 0, an = 0;
	for (int i = 0; i < n; i++) {
		char rb[128], ab[128];
		size_t nr, na;
		qw_reasoning_push(r, ids[i], texts[i], strlen(texts[i]), rb, &nr, ab, &na);
		memcpy(reasoning + rn, rb, nr);
		rn += nr;
		memcpy(answer + an, ab, na);
		an += na;
	}
	reasoning[rn] = answer[an] = '\0';
}

static void test_reasoning_split(void **state)
{
	enum { THINK = 151667, END = 151668 };
	/* the prompt opened <think>\n; the model thinks, closes, answers */
	int32_t ids[] = {1, 2, 3, END, 4, 5, 6};
	const char *texts[] = {"Let me ", "see.", "\n", "</think>", "\n\n", "It is ", "42."};
	qw_reasoning r;
	qw_reasoning_init(&r, THINK, END, true);
	char reasoning[256], answer[256];
	split(&r, ids, texts, 7, reasoning, answer);
	assert_string_equal(reasoning, "Let me see.");
	assert_string_equal(answer, "It is 42.");
	/* newlines inside the reasoning stay; an answer's inner newlines stay */
	int32_t ids2[] = {1, 2, 3, END, 4, 5};
	const char *texts2[] = {"a\n", "\n", "b", "</think>", "x\n\n", "y"};
	qw_reasoning_init(&r, THINK, END, true);
	split(&r, ids2, texts2, 6, reasoning, answer);
	assert_string_equal(reasoning, "a\n\nb");
	assert_string_equal(answer, "x\n\ny");
	/* a model without thinking: all answer; one that opens <think> itself */
	int32_t ids3[] = {THINK, 1, END, 2};
	const char *texts3[] = {"<think>", "hmm", "</think>", "ok"};
	qw_reasoning_init(&r, THINK, END, false);
	split(&r, ids3, texts3, 4, reasoning, answer);
	assert_string_equal(reasoning, "hmm");
	assert_string_equal(answer, "ok");
	/* many newlines in a row cannot overflow the held-back run */
	qw_reasoning_init(&r, THINK, END, true);
	char rb[200], ab[200];
	size_t nr, na, total = 0;
	for (int i = 0; i < 100; i++) {
		qw_reasoning_push(&r, 9, "\n", 1, rb, &nr, ab, &na);
		total += nr;
	}
	qw_reasoning_push(&r, 9, "z", 1, rb, &nr, ab, &na);
	total += nr;
	assert_int_equal(total, 101);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matches_real_template),
		cmocka_unit_test(test_tools_match_real_template),
		cmocka_unit_test(test_thinking_off),
		cmocka_unit_test(test_vl_thinking_example),
		cmocka_unit_test(test_images_expanded_and_numbered),
		cmocka_unit_test(test_bad_messages),
		cmocka_unit_test(test_reasoning_split),
	};
	return cmocka_run_group_tests_name("chat", tests, NULL, NULL);
}
