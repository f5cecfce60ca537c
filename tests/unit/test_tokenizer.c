/* test_tokenizer.c - the tokenizer against the HF cases (tokenizers' own ids and decodes),
 * UTF-8 handling against the Unicode standard's example, the streaming decoder, and bad
 * input. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/text/tokenizer.h"

static qw_tokenizer *tok;

static int setup(void **state)
{
	qw_err err = {0};
	if (qw_tokenizer_load(fixture("tokenizer/qwen3"), &tok, &err) != QW_OK) {
		print_error("%s\n", err.msg);
		return 1;
	}
	return 0;
}

static int teardown(void **state)
{
	qw_tokenizer_free(tok);
	return 0;
}

static json_t *cases(void)
{
	json_error_t jerr;
	json_t *c = json_load_file(fixture("tokenizer/qwen3_cases.json"), 0, &jerr);
	assert_non_null(c);
	return c;
}

static void test_hf_cases(void **state)
{
	json_t *all = cases();
	size_t i;
	json_t *c;
	json_array_foreach(all, i, c) {
		const char *text = json_string_value(json_object_get(c, "text"));
		json_t *want = json_object_get(c, "ids");
		int32_t *ids;
		size_t n;
		qw_err err = {0};
		assert_int_equal(qw_tokenizer_encode(tok, text, strlen(text), &ids, &n, &err), QW_OK);
		if (n != json_array_size(want))
			fail_msg("case %zu '%s': %zu ids, HF %zu", i, text, n, json_array_size(want));
		for (size_t k = 0; k < n; k++)
			if (ids[k] != json_integer_value(json_array_get(want, k)))
				fail_msg("case %zu '%s': id %zu is %d, HF %lld", i, text, k, ids[k],
					 json_integer_value(json_array_get(want, k)));
		char *back;
		size_t len;
		assert_int_equal(qw_tokenizer_decode(tok, ids, n, &back, &len, &err), QW_OK);
		assert_string_equal(back, json_string_value(json_object_get(c, "decoded")));
		/* again, now from the cache */
		int32_t *again;
		size_t n2;
		assert_int_equal(qw_tokenizer_encode(tok, text, strlen(text), &again, &n2, &err), QW_OK);
		assert_int_equal(n2, n);
		assert_memory_equal(again, ids, n * sizeof *ids);
		free(again);
		free(back);
		free(ids);
	}
	json_decref(all);
}

static void test_special_ids(void **state)
{
	assert_int_equal(qw_tokenizer_size(tok), 151669);
	assert_int_equal(qw_tokenizer_added_id(tok, "<|im_end|>"), 151645);
	assert_int_equal(qw_tokenizer_added_id(tok, "<think>"), 151667);
	assert_int_equal(qw_tokenizer_added_id(tok, "<|image_pad|>"), 151655);
	assert_int_equal(qw_tokenizer_added_id(tok, "nope"), -1);
	assert_int_equal(qw_tokenizer_eos(tok), 151645);
}

/* Unicode 15, section 3.9, "U+FFFD Substitution of Maximal Subparts", Table 3-8. */
static void test_utf8_maximal_subparts(void **state)
{
	const uint8_t in[] = {0x61, 0xF1, 0x80, 0x80, 0xE1, 0x80, 0xC2, 0x62, 0x80, 0x63, 0x80,
			      0xBF, 0x64};
	const char *want = "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "b\xef\xbf\xbd" "c"
			   "\xef\xbf\xbd\xef\xbf\xbd" "d";
	char out[64];
	size_t n = qw_utf8_lossy(in, sizeof in, out, false, NULL);
	out[n] = '\0';
	assert_string_equal(out, want);
	assert_int_equal(qw_utf8_check(in, sizeof in), 1);
	const uint8_t surrogate[] = {0xED, 0xA0, 0x80};    /* U+D800 is not UTF-8 */
	assert_int_equal(qw_utf8_check(surrogate, 3), 0);
	const uint8_t overlong[] = {0xC0, 0xAF};
	assert_int_equal(qw_utf8_check(overlong, 2), 0);
	assert_int_equal(qw_utf8_check((const uint8_t *)"h\xc3\xa9", 3), 3);
}

static void test_streaming_decode(void **state)
{
	json_t *all = cases();
	size_t i;
	json_t *c;
	char *chunk = malloc(qw_detok_max_out(tok));
	json_array_foreach(all, i, c) {
		json_t *ids = json_object_get(c, "ids");
		size_t n = json_array_size(ids);
		int32_t *v = malloc((n + 1) * sizeof *v);
		for (size_t k = 0; k < n; k++)
			v[k] = (int32_t)json_integer_value(json_array_get(ids, k));
		char *whole;
		size_t whole_len, at = 0;
		qw_err err = {0};
		assert_int_equal(qw_tokenizer_decode(tok, v, n, &whole, &whole_len, &err), QW_OK);
		char *joined = malloc(whole_len + 64);
		qw_detok d = {0};
		for (size_t k = 0; k < n; k++) {
			size_t len;
			assert_int_equal(qw_detok_push(&d, tok, v[k], chunk, qw_detok_max_out(tok), &len,
						       &err), QW_OK);
			/* every piece handed out is whole characters */
			assert_int_equal(qw_utf8_check((const uint8_t *)chunk, len), len);
			memcpy(joined + at, chunk, len);
			at += len;
		}
		at += qw_detok_finish(&d, joined + at);
		assert_int_equal(at, whole_len);
		assert_memory_equal(joined, whole, whole_len);
		free(joined);
		free(whole);
		free(v);
	}
	json_decref(all);
	/* a character split over tokens waits; a stray byte becomes U+FFFD */
	int32_t e4 = -1, bd = -1, a0 = -1;
	for (int32_t id = 0; id < 256 * 1024 && id < qw_tokenizer_size(tok); id++) {
		size_t len;
		const uint8_t *b = qw_tokenizer_bytes(tok, id, &len);
		if (b && len == 1 && b[0] == 0xe4) e4 = id;
		if (b && len == 1 && b[0] == 0xbd) bd = id;
		if (b && len == 1 && b[0] == 0xa0) a0 = id;
	}
	assert_true(e4 >= 0 && bd >= 0 && a0 >= 0);
	qw_detok d = {0};
	size_t len;
	qw_err err = {0};
	qw_detok_push(&d, tok, e4, chunk, qw_detok_max_out(tok), &len, &err);
	assert_int_equal(len, 0);
	qw_detok_push(&d, tok, bd, chunk, qw_detok_max_out(tok), &len, &err);
	assert_int_equal(len, 0);
	qw_detok_push(&d, tok, a0, chunk, qw_detok_max_out(tok), &len, &err);
	assert_int_equal(len, 3);
	assert_memory_equal(chunk, "\xe4\xbd\xa0", 3);              /* 你 */
	qw_detok_push(&d, tok, e4, chunk, qw_detok_max_out(tok), &len, &err);
	assert_int_equal(qw_detok_finish(&d, chunk), 3);            /* cut short: U+FFFD */
	assert_memory_equal(chunk, "\xef\xbf\xbd", 3);
	free(chunk);
}

static void test_bad_input(void **state)
{
	int32_t *ids;
	size_t n;
	qw_err err = {0};
	assert_int_equal(qw_tokenizer_encode(tok, "ok \xff then", 9, &ids, &n, &err), QW_E_ARG);
	assert_contains(err.msg, "not valid UTF-8 at byte 3");
	assert_int_equal(qw_tokenizer_encode(tok, "caf\xc3", 4, &ids, &n, &err), QW_E_ARG);
	int32_t bad[] = {9707, 151669};
	char *text;
	size_t len;
	assert_int_equal(qw_tokenizer_decode(tok, bad, 2, &text, &len, &err), QW_E_ARG);
	assert_contains(err.msg, "id 151669 at position 1 is not a token");
	int32_t neg = -4;
	assert_int_equal(qw_tokenizer_decode(tok, &neg, 1, &text, &len, &err), QW_E_ARG);

	qw_tokenizer *t;
	char *dir = scratch_new();
	assert_int_equal(qw_tokenizer_load(dir, &t, &err), QW_E_IO);
	assert_contains(err.msg, "tokenizer.json");
	write_file(path_in(dir, "tokenizer.json"), "{\"model\": ", 10);
	assert_int_equal(qw_tokenizer_load(dir, &t, &err), QW_E_CONFIG);
	assert_contains(err.msg, "not valid JSON");
	const char *wordpiece = "{\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Whitespace\"},"
				" \"decoder\": {\"type\": \"WordPiece\"}, \"model\": {\"type\": \"WordPiece\"}}";
	write_file(path_in(dir, "tokenizer.json"), wordpiece, strlen(wordpiece));
	assert_int_equal(qw_tokenizer_load(dir, &t, &err), QW_E_CONFIG);
	assert_contains(err.msg, "pre_tokenizer");
	scratch_free(dir);
}

static void test_parity_tokens_cli(void **state)
{
	char *out, *dir = scratch_new();
	char tdir[4096];
	snprintf(tdir, sizeof tdir, "%s", fixture("tokenizer/qwen3"));
	assert_int_equal(run_capture(&out, "%s tokens --tokenizer %s --cases %s",
				     program("qwen-parity"), tdir,
				     fixture("tokenizer/qwen3_cases.json")), 0);
	assert_contains(out, "25 of 25 cases match");
	free(out);
	const char *tampered = "[{\"text\": \"Hello world\", \"ids\": [9707, 1880]}]";
	write_file(path_in(dir, "c.json"), tampered, strlen(tampered));
	assert_int_equal(run_capture(&out, "%s tokens --tokenizer %s --cases %s",
				     program("qwen-parity"), tdir, path_in(dir, "c.json")), 1);
	assert_contains(out, "ids differ from position 1");
	assert_contains(out, "[9707, 1879]");
	assert_contains(out, "[9707, 1880]");
	free(out);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hf_cases),
		cmocka_unit_test(test_special_ids),
		cmocka_unit_test(test_utf8_maximal_subparts),
		cmocka_unit_test(test_streaming_decode),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_parity_tokens_cli),
	};
	return cmocka_run_group_tests_name("tokenizer", tests, setup, teardown);
}
