/* test_request.c - a submit turned into a sequence (chat template, images and their pad
 * runs, positions, limits) and sampled tokens turned back into text (stop strings held back
 * and cut, end-of-sequence, lengths, reasoning apart from the answer, special tokens left
 * out), with the real Qwen3 tokenizer and the real 235B config. */
#include "tests/unit/helpers.h"

#include <png.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/image/image.h"
#include "daemon/request.h"

#define IMAGE_PAD 151655
#define IM_END 151645

static qw_config cfg;
static qw_tokenizer *tok;

static int setup(void **state)
{
	qw_err err = {0};
	if (qw_config_load(fixture("configs/Qwen3-VL-235B-A22B-Thinking.json"), &cfg, &err) ||
	    qw_tokenizer_load(fixture("tokenizer/qwen3"), &tok, &err)) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	qw_tokenizer_free(tok);
	return 0;
}

static qw_req_ctx context(bool thinking)
{
	qw_req_ctx c = {.cfg = &cfg, .tok = tok, .thinking = thinking, .eos = {IM_END, 151643},
			.n_eos = 2, .think_start = qw_tokenizer_added_id(tok, "<think>"),
			.think_end = qw_tokenizer_added_id(tok, "</think>"), .max_context = 1000,
			.default_max_tokens = 50, .temperature = 1, .top_p = 1,
			.image_limits = QW_IMAGE_LIMITS_DEFAULT, .preprocess = QW_PREPROCESS_DEFAULT,
			.max_images = 2, .max_image_tokens = 200};
	c.preprocess.max_tokens = 100;
	return c;
}

static membuf picture(int w, int h)
{
	qw_image img = {w, h, malloc((size_t)w * (size_t)h * 3)};
	for (int i = 0; i < w * h * 3; i++)
		img.rgb[i] = (uint8_t)(i * 13);
	membuf m = encode_png(&img, PNG_COLOR_TYPE_RGB);
	free(img.rgb);
	return m;
}

static int count(const int32_t *ids, int n, int32_t id)
{
	int k = 0;
	for (int i = 0; i < n; i++)
		k += ids[i] == id;
	return k;
}

static qw_request submit(void)
{
	return (qw_request){.op = QW_OP_SUBMIT, .temperature = -1, .top_k = -1, .stream = true};
}

static void test_chat_with_image(void **state)
{
	qw_req_ctx c = context(true);
	membuf png = picture(300, 200);
	qw_item items[] = {{QW_ITEM_IMAGE, (const char *)png.p, png.n},
			   {QW_ITEM_TEXT, "What is it?", 11}};
	qw_req_message m = {"user", 4, items, 2, NULL, 0, NULL, 0};
	qw_request r = submit();
	r.messages = &m;
	r.n_messages = 1;
	r.greedy = true;
	qw_seq seq;
	qw_output out;
	qw_err err = {0};
	if (qw_request_prepare(&c, &r, 7, &seq, &out, &err) != QW_OK)
		fail_msg("%s", err.msg);
	/* 300 x 200 is resized to 320 x 224 (multiples of 32 within the pixel budget): a 20 x
	 * 14 patch grid, 70 merged tokens; min_pixels lifts it to at least 65536 pixels */
	assert_int_equal(seq.n_images, 1);
	int pads = count(seq.tokens, seq.n_tokens, IMAGE_PAD);
	assert_int_equal(pads, seq.images[0].n_tokens);
	assert_int_equal(seq.images[0].n_tokens, seq.images[0].grid[1] * seq.images[0].grid[2] / 4);
	assert_true(seq.images[0].width * seq.images[0].height >= 65536);
	assert_int_equal(seq.tokens[seq.images[0].pos], IMAGE_PAD);
	assert_int_not_equal(seq.tokens[seq.images[0].pos - 1], IMAGE_PAD);
	assert_non_null(seq.positions);
	assert_true(seq.rope_delta < 0);   /* an image takes fewer positions than tokens */
	assert_int_equal(seq.sampling.temperature, 0);
	/* the prompt ends with the Thinking generation prompt */
	char *text;
	size_t len;
	assert_int_equal(qw_tokenizer_decode(tok, seq.tokens + seq.n_tokens - 5, 5, &text, &len,
					     &err), QW_OK);
	assert_contains(text, "<|im_start|>assistant\n<think>\n");
	free(text);
	qw_request_seq_free(&seq);
	qw_output_free(&out);
	free(png.p);
}

/* Refused with a status the client sees as code (through the protocol's one table). */
static void expect_refusal(const qw_req_ctx *c, const qw_request *r, const char *code,
			   const char *needle)
{
	qw_seq seq;
	qw_output out;
	qw_err err = {0};
	qw_status st = qw_request_prepare(c, r, 1, &seq, &out, &err);
	if (st == QW_OK)
		fail_msg("accepted a request that should get %s (%s)", code, needle);
	assert_string_equal(qw_error_code_name(qw_error_code_of(st)), code);
	assert_contains(err.msg, needle);
	assert_null(seq.tokens);
}

static void test_pad_runs_and_limits(void **state)
{
	qw_req_ctx c = context(false);
	membuf png = picture(64, 64);
	qw_item img = {QW_ITEM_IMAGE, (const char *)png.p, png.n};
	qw_item three[] = {img, img, img};
	qw_seq seq;
	qw_output out;
	qw_err err = {0};

	/* a raw prompt with one pad per image: expanded */
	const char *raw = "<|vision_start|><|image_pad|><|vision_end|>Hi";
	qw_request r = submit();
	r.prompt = raw;
	r.prompt_len = strlen(raw);
	r.images = &img;
	r.n_images = 1;
	if (qw_request_prepare(&c, &r, 1, &seq, &out, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(count(seq.tokens, seq.n_tokens, IMAGE_PAD), seq.images[0].n_tokens);
	assert_true(seq.images[0].n_tokens > 1);
	int expanded = seq.images[0].n_tokens;
	qw_request_seq_free(&seq);
	qw_output_free(&out);

	/* token ids: a run of exactly the image's tokens stays; another length is refused */
	int32_t ids[300] = {151652};
	for (int i = 1; i <= expanded; i++)
		ids[i] = IMAGE_PAD;
	ids[expanded + 1] = 151653;
	r = submit();
	r.token_ids = ids;
	r.n_token_ids = expanded + 2;
	r.images = &img;
	r.n_images = 1;
	assert_int_equal(qw_request_prepare(&c, &r, 1, &seq, &out, &err), QW_OK);
	assert_int_equal(seq.n_tokens, expanded + 2);
	qw_request_seq_free(&seq);
	qw_output_free(&out);
	r.n_token_ids = 5;   /* a run of 3 pads */
	ids[4] = 151653;
	expect_refusal(&c, &r, "bad_request", "a run of 3 pad tokens");
	r.n_images = 0;
	expect_refusal(&c, &r, "bad_request", "more image pad runs than the 0 images");
	r.images = three;
	r.n_images = 3;
	expect_refusal(&c, &r, "too_large", "3 images; a request may carry 2");
	/* outside the vocabulary; too long for the context; text without a tokenizer */
	int32_t outside[] = {5, 200000};
	r = submit();
	r.token_ids = outside;
	r.n_token_ids = 2;
	expect_refusal(&c, &r, "bad_request", "outside the model's vocabulary");
	outside[1] = 6;
	r.max_tokens = 999;
	expect_refusal(&c, &r, "too_large", "exceed the model's context of 1000 tokens");
	qw_req_ctx bare = c;
	bare.tok = NULL;
	r = submit();
	r.prompt = "Hi";
	r.prompt_len = 2;
	expect_refusal(&bare, &r, "bad_request", "no tokenizer");
	/* a broken image */
	qw_item junk = {QW_ITEM_IMAGE, "GIF89a....", 10};
	r.prompt = raw;
	r.prompt_len = strlen(raw);
	r.images = &junk;
	r.n_images = 1;
	expect_refusal(&c, &r, "bad_request", "image 1");
	free(png.p);
}

/* Images are weighed from their headers: a request past the token limits is refused
 * before any image is decoded (here the image data is broken, which decoding would have
 * reported first), one within them is prepared without pixels, which come after, the same
 * as decoding and resizing the image directly. */
static void test_images_weighed_from_headers(void **state)
{
	qw_req_ctx c = context(false);
	c.max_images = 3;
	membuf good = picture(300, 200);                 /* 70 tokens */
	membuf broken = picture(300, 200);
	uint8_t *idat = memmem(broken.p, broken.n, "IDAT", 4);
	memset(idat + 4, 0xaa, (size_t)(broken.p + broken.n - idat) - 16);
	qw_item three[] = {{QW_ITEM_IMAGE, (const char *)broken.p, broken.n},
			   {QW_ITEM_IMAGE, (const char *)broken.p, broken.n},
			   {QW_ITEM_IMAGE, (const char *)broken.p, broken.n}};
	qw_item items[] = {three[0], three[1], three[2], {QW_ITEM_TEXT, "Compare.", 8}};
	qw_req_message m = {"user", 4, items, 4, NULL, 0, NULL, 0};
	qw_request r = submit();
	r.messages = &m;
	r.n_messages = 1;
	expect_refusal(&c, &r, "too_large", "more than 200 image tokens (image 3 brings them to "
		       "210)");

	/* two broken ones within the limits: prepared; their pixels are refused after */
	m.n_items = 2;
	items[1] = (qw_item){QW_ITEM_IMAGE, (const char *)good.p, good.n};
	qw_seq seq;
	qw_output out;
	qw_err err = {0};
	if (qw_request_prepare(&c, &r, 1, &seq, &out, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(seq.n_images, 2);
	assert_null(seq.images[0].rgb);
	assert_null(seq.images[1].rgb);
	assert_ptr_equal(qw_request_image(&r, 1), &items[1]);
	assert_null(qw_request_image(&r, 2));
	assert_int_equal(qw_request_decode_images(&c, &r, &seq, &err), QW_E_ARG);
	assert_contains(err.msg, "image 1: malformed PNG");
	qw_request_seq_free(&seq);
	qw_output_free(&out);

	/* a good one: its pixels are the image decoded and resized as the processor does */
	items[0] = items[1];
	assert_int_equal(qw_request_prepare(&c, &r, 1, &seq, &out, &err), QW_OK);
	assert_int_equal(qw_request_decode_images(&c, &r, &seq, &err), QW_OK);
	qw_image decoded, resized;
	assert_int_equal(qw_image_decode(good.p, good.n, NULL, &decoded, &err), QW_OK);
	assert_int_equal(qw_preprocess_resize(&decoded, &cfg.vision, &c.preprocess, &resized, &err),
			 QW_OK);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(seq.images[i].width, resized.width);
		assert_int_equal(seq.images[i].height, resized.height);
		assert_memory_equal(seq.images[i].rgb, resized.rgb,
				    (size_t)resized.width * (size_t)resized.height * 3);
	}
	qw_image_free(&decoded);
	qw_image_free(&resized);
	qw_request_seq_free(&seq);
	qw_output_free(&out);
	free(good.p);
	free(broken.p);
}

/* Feeds text's tokens to a fresh output; returns what was released, in order. */
typedef struct fed {
	qw_text_buf answer, reasoning;
	qw_finish finish;
	int tokens_used;
	bool released_past_final;   /* something released that is not in the final answer */
} fed;

static void feed(const qw_req_ctx *c, qw_request *r, const int32_t *ids, size_t n, fed *f)
{
	memset(f, 0, sizeof *f);
	qw_seq seq;
	qw_output out;
	qw_err err = {0};
	int32_t prompt[] = {9707};
	r->token_ids = prompt;
	r->n_token_ids = 1;
	assert_int_equal(qw_request_prepare(c, r, 1, &seq, &out, &err), QW_OK);
	for (size_t i = 0; i < n; i++) {
		f->tokens_used++;
		if (qw_output_push(&out, ids[i], &f->answer, &f->reasoning))
			break;
	}
	f->finish = out.finish;
	qw_request_seq_free(&seq);
	qw_output_free(&out);
}

static int32_t *encode(const char *text, size_t *n)
{
	int32_t *ids;
	assert_int_equal(qw_tokenizer_encode(tok, text, strlen(text), &ids, n, NULL), QW_OK);
	return ids;
}

static void test_stop_strings(void **state)
{
	qw_req_ctx c = context(false);
	size_t n;
	int32_t *ids = encode("The answer is 42. STOP and then more words follow", &n);
	const char *stop[] = {"STOP"};
	size_t stop_len[] = {4};
	qw_request r = submit();
	r.stop = stop;
	r.stop_len = stop_len;
	r.n_stop = 1;
	fed f;
	feed(&c, &r, ids, n, &f);
	assert_int_equal(f.finish, QW_FINISH_STOP);
	assert_string_equal(f.answer.p, "The answer is 42. ");
	assert_true((size_t)f.tokens_used < n);   /* it stopped there */
	free(f.answer.p);
	free(f.reasoning.p);

	/* a stop string's start is held back, then released when it turns out not to be one */
	const char *peace[] = {"world peace"};
	size_t peace_len[] = {11};
	r.stop = peace;
	r.stop_len = peace_len;
	free(ids);
	ids = encode("Hello world wide web", &n);
	qw_seq seq;
	qw_output out;
	int32_t prompt[] = {9707};
	r.token_ids = prompt;
	r.n_token_ids = 1;
	r.max_tokens = 100;
	assert_int_equal(qw_request_prepare(&c, &r, 1, &seq, &out, NULL), QW_OK);
	qw_text_buf ans = {0}, rsn = {0};
	bool held_world = false;
	for (size_t i = 0; i < n; i++) {
		qw_output_push(&out, ids[i], &ans, &rsn);
		if (ans.n && !strstr(ans.p, "world") && out.held.n && strstr(out.held.p, "world"))
			held_world = true;
	}
	assert_true(held_world);
	assert_string_equal(ans.p, "Hello world wide web");   /* with the rest, not stopped */
	assert_int_equal(out.finish, QW_FINISH_NONE);
	free(ans.p);
	free(rsn.p);
	free(ids);
	qw_request_seq_free(&seq);
	qw_output_free(&out);
}

/* A NUL in chat text is refused, naming the message and item (the template works on C
 * strings and would end the text there); a raw prompt keeps it; a stop string holding a NUL
 * stops at the whole string. */
static void test_nul_bytes(void **state)
{
	qw_req_ctx c = context(false);
	qw_item items[] = {{QW_ITEM_TEXT, "Say hi", 6}, {QW_ITEM_TEXT, "then\0stop here", 14}};
	qw_req_message m = {"user", 4, items, 2, NULL, 0, NULL, 0};
	qw_request r = submit();
	r.messages = &m;
	r.n_messages = 1;
	expect_refusal(&c, &r, "bad_request", "message 1: the content item 2 holds a NUL byte "
		       "(at byte 4)");
	qw_item ok[] = {{QW_ITEM_TEXT, "Say hi", 6}};
	qw_req_message a[] = {{"user", 4, ok, 1, NULL, 0, NULL, 0},
			      {"assistant", 9, ok, 1, "hm\0m", 4, NULL, 0}};
	r.messages = a;
	r.n_messages = 2;
	expect_refusal(&c, &r, "bad_request", "message 2: the reasoning holds a NUL byte (at byte 2)");
	qw_tool_call call = {"f", 1, "{\"a\": \"\0\"}", 10};
	a[1] = (qw_req_message){"assistant", 9, ok, 1, NULL, 0, &call, 1};
	expect_refusal(&c, &r, "bad_request", "message 2: the tool call item 1 holds a NUL byte "
		       "(at byte 7)");

	/* a raw prompt keeps it: its tokens decode back to the same bytes */
	r = submit();
	r.prompt = "a\0b";
	r.prompt_len = 3;
	qw_seq seq;
	qw_output out;
	qw_err err = {0};
	if (qw_request_prepare(&c, &r, 1, &seq, &out, &err) != QW_OK)
		fail_msg("%s", err.msg);
	char *text;
	size_t len;
	assert_int_equal(qw_tokenizer_decode(tok, seq.tokens, (size_t)seq.n_tokens, &text, &len,
					     &err), QW_OK);
	assert_int_equal(len, 3);
	assert_memory_equal(text, "a\0b", 3);
	free(text);
	qw_request_seq_free(&seq);
	qw_output_free(&out);

	/* a stop string with a NUL: found whole, not cut at the NUL */
	int32_t *ids;
	size_t n;
	assert_int_equal(qw_tokenizer_encode(tok, "one\0two\0three", 13, &ids, &n, NULL), QW_OK);
	const char *stop[] = {"\0three"};
	size_t stop_len[] = {6};
	r = submit();
	r.stop = stop;
	r.stop_len = stop_len;
	r.n_stop = 1;
	fed f;
	feed(&c, &r, ids, n, &f);
	assert_int_equal(f.finish, QW_FINISH_STOP);
	assert_int_equal(f.answer.n, 7);
	assert_memory_equal(f.answer.p, "one\0two", 7);
	free(f.answer.p);
	free(f.reasoning.p);
	free(ids);
}

static void test_eos_length_reasoning(void **state)
{
	qw_req_ctx c = context(true);
	size_t n1, n2;
	int32_t *a = encode("Let me look.\n", &n1), *b = encode("\n\nIt is a house.", &n2);
	int32_t ids[64];
	size_t n = 0;
	memcpy(ids, a, n1 * sizeof *ids);
	n += n1;
	ids[n++] = c.think_end;
	memcpy(ids + n, b, n2 * sizeof *ids);
	n += n2;
	ids[n++] = 151652;   /* <|vision_start|>: special, no text */
	ids[n++] = IM_END;
	ids[n++] = 9707;     /* after the end */
	qw_request r = submit();
	fed f;
	feed(&c, &r, ids, n, &f);
	assert_int_equal(f.finish, QW_FINISH_STOP);
	assert_int_equal(f.tokens_used, (int)n - 1);
	assert_string_equal(f.reasoning.p, "Let me look.");
	assert_string_equal(f.answer.p, "It is a house.");
	free(f.answer.p);
	free(f.reasoning.p);
	/* an end-of-sequence token first, with stop strings: nothing held, an empty answer
	 * (found by fuzz_prepare: the empty held text was appended from a NULL pointer) */
	const char *stop[] = {"\n\n"};
	size_t stop_len[] = {2};
	r.stop = stop;
	r.stop_len = stop_len;
	r.n_stop = 1;
	feed(&c, &r, (int32_t[]){IM_END}, 1, &f);
	assert_int_equal(f.finish, QW_FINISH_STOP);
	assert_string_equal(f.answer.p, "");
	free(f.answer.p);
	free(f.reasoning.p);
	r.n_stop = 0;
	/* ignore_eos goes on; max_tokens ends it */
	r.ignore_eos = true;
	r.max_tokens = (int)n - 1;
	feed(&c, &r, ids, n, &f);
	assert_int_equal(f.finish, QW_FINISH_LENGTH);
	assert_int_equal(f.tokens_used, (int)n - 1);
	free(f.answer.p);
	free(f.reasoning.p);
	free(a);
	free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chat_with_image),
		cmocka_unit_test(test_pad_runs_and_limits),
		cmocka_unit_test(test_images_weighed_from_headers),
		cmocka_unit_test(test_stop_strings),
		cmocka_unit_test(test_nul_bytes),
		cmocka_unit_test(test_eos_length_reasoning),
	};
	return cmocka_run_group_tests_name("request", tests, setup, teardown);
}
