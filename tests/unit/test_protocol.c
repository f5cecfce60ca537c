/* test_protocol.c - the client protocol: requests and replies round-trip (the sampling
 * settings and a chunk's log-probabilities among them), and every kind of malformed or
 * oversized request is refused with an error naming what is wrong. */
#include "tests/unit/helpers.h"

#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ipc/protocol.h"

static void test_submit_roundtrip(void **state)
{
	const uint8_t png[] = {0x89, 'P', 'N', 'G', 0, 1, 2};
	qw_item items[] = {{QW_ITEM_IMAGE, (const char *)png, sizeof png},
			   {QW_ITEM_TEXT, "What is this?", 13}};
	qw_item sys_items[] = {{QW_ITEM_TEXT, "Be brief.", 9}};
	qw_req_message msgs[] = {{"system", 6, sys_items, 1, NULL, 0, NULL, 0},
				 {"user", 4, items, 2, NULL, 0, NULL, 0}};
	const char *stop[] = {"\n\n", "END"};
	size_t stop_len[] = {2, 3};
	qw_request r = {.op = QW_OP_SUBMIT, .messages = msgs, .n_messages = 2, .max_tokens = 64,
			.temperature = 0.7, .top_p = 0.9, .top_k = 20, .seed = 99, .has_seed = true,
			.stream = false, .stop = stop, .stop_len = stop_len, .n_stop = 2};
	char *buf;
	size_t len;
	qw_err err = {0};
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	qw_request d;
	if (qw_request_decode(buf, len, NULL, &d, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(d.op, QW_OP_SUBMIT);
	assert_int_equal(d.n_messages, 2);
	assert_int_equal(d.messages[1].n_items, 2);
	assert_int_equal(d.messages[1].items[0].kind, QW_ITEM_IMAGE);
	assert_int_equal(d.messages[1].items[0].len, sizeof png);
	assert_memory_equal(d.messages[1].items[0].data, png, sizeof png);
	assert_int_equal(d.messages[1].items[1].len, 13);
	assert_memory_equal(d.messages[1].items[1].data, "What is this?", 13);
	assert_memory_equal(d.messages[0].role, "system", 6);
	assert_int_equal(d.max_tokens, 64);
	assert_true(d.temperature == 0.7 && d.top_p == 0.9);
	assert_int_equal(d.top_k, 20);
	assert_true(d.has_seed && d.seed == 99);
	assert_false(d.stream);
	assert_int_equal(d.n_stop, 2);
	assert_memory_equal(d.stop[1], "END", 3);
	/* not given: off */
	assert_true(d.min_p == 0 && d.repetition_penalty == 0 && d.frequency_penalty == 0 &&
		    d.presence_penalty == 0);
	assert_false(d.logprobs);
	qw_request_free(&d);
	free(buf);

	/* the sampler's other settings */
	r.min_p = 0.05;
	r.repetition_penalty = 1.1;
	r.frequency_penalty = -0.5;
	r.presence_penalty = 2;
	r.logprobs = true;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	if (qw_request_decode(buf, len, NULL, &d, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_true(d.min_p == 0.05 && d.repetition_penalty == 1.1 &&
		    d.frequency_penalty == -0.5 && d.presence_penalty == 2);
	assert_true(d.logprobs);
	assert_int_equal(d.top_logprobs, 0);
	qw_request_free(&d);
	free(buf);
	r.top_logprobs = 20;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_OK);
	assert_true(d.logprobs);
	assert_int_equal(d.top_logprobs, 20);
	qw_request_free(&d);
	free(buf);

	int32_t ids[] = {1, 2, 151645};
	qw_request t = {.op = QW_OP_SUBMIT, .token_ids = ids, .n_token_ids = 3, .greedy = true,
			.temperature = -1, .top_k = -1, .stream = true};
	assert_int_equal(qw_request_encode(&t, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_OK);
	assert_int_equal(d.n_token_ids, 3);
	assert_int_equal(d.token_ids[2], 151645);
	assert_true(d.greedy && d.stream && d.temperature < 0 && d.top_k < 0);
	assert_false(d.ignore_eos);
	assert_int_equal(d.n_images, 0);
	qw_request_free(&d);
	free(buf);

	/* token ids with the images their pad runs stand for */
	qw_item imgs[] = {{QW_ITEM_IMAGE, (const char *)png, sizeof png},
			  {QW_ITEM_IMAGE, (const char *)png, 3}};
	t.images = imgs;
	t.n_images = 2;
	t.ignore_eos = true;
	assert_int_equal(qw_request_encode(&t, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_OK);
	assert_int_equal(d.n_images, 2);
	assert_int_equal(d.images[0].kind, QW_ITEM_IMAGE);
	assert_int_equal(d.images[1].len, 3);
	assert_memory_equal(d.images[0].data, png, sizeof png);
	assert_true(d.ignore_eos);
	qw_request_free(&d);
	free(buf);
}

static void test_other_ops(void **state)
{
	qw_request r = {.op = QW_OP_CANCEL, .target = 42};
	char *buf;
	size_t len;
	qw_err err = {0};
	qw_request d;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_OK);
	assert_int_equal(d.op, QW_OP_CANCEL);
	assert_int_equal(d.target, 42);
	qw_request_free(&d);
	free(buf);
	qw_request s = {.op = QW_OP_STATUS};
	assert_int_equal(qw_request_encode(&s, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_OK);
	assert_int_equal(d.op, QW_OP_STATUS);
	qw_request_free(&d);
	free(buf);
}

/* A request map built from (key, packer) pairs given as a small text recipe. */
typedef void (*pack_fn)(msgpack_packer *pk);

static char *build(size_t *len, int n, const char *const *keys, const pack_fn *vals)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, (size_t)n);
	for (int i = 0; i < n; i++) {
		msgpack_pack_str(&pk, strlen(keys[i]));
		msgpack_pack_str_body(&pk, keys[i], strlen(keys[i]));
		vals[i](&pk);
	}
	*len = sb.size;
	return msgpack_sbuffer_release(&sb);
}

static void v1(msgpack_packer *pk) { msgpack_pack_int(pk, 1); }
static void v2(msgpack_packer *pk) { msgpack_pack_int(pk, 2); }
static void op_submit(msgpack_packer *pk) { msgpack_pack_str(pk, 6); msgpack_pack_str_body(pk, "submit", 6); }
static void op_boom(msgpack_packer *pk) { msgpack_pack_str(pk, 4); msgpack_pack_str_body(pk, "boom", 4); }
static void op_cancel(msgpack_packer *pk) { msgpack_pack_str(pk, 6); msgpack_pack_str_body(pk, "cancel", 6); }
static void op_status(msgpack_packer *pk) { msgpack_pack_str(pk, 6); msgpack_pack_str_body(pk, "status", 6); }
static void hot(msgpack_packer *pk) { msgpack_pack_str(pk, 3); msgpack_pack_str_body(pk, "hot", 3); }
static void hello(msgpack_packer *pk) { msgpack_pack_str(pk, 5); msgpack_pack_str_body(pk, "hello", 5); }
static void ids(msgpack_packer *pk) { msgpack_pack_array(pk, 2); msgpack_pack_int(pk, 1); msgpack_pack_int(pk, 2); }
static void neg_ids(msgpack_packer *pk) { msgpack_pack_array(pk, 1); msgpack_pack_int(pk, -5); }
static void big(msgpack_packer *pk) { msgpack_pack_int(pk, 1 << 30); }
static void num21(msgpack_packer *pk) { msgpack_pack_int(pk, 21); }
static void num_neg3(msgpack_packer *pk) { msgpack_pack_double(pk, -3.0); }
static void num_zero(msgpack_packer *pk) { msgpack_pack_double(pk, 0.0); }
static void num_1_5(msgpack_packer *pk) { msgpack_pack_double(pk, 1.5); }
static void bad_msgs(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	msgpack_pack_str(pk, 4);
	msgpack_pack_str_body(pk, "role", 4);
	msgpack_pack_str(pk, 5);
	msgpack_pack_str_body(pk, "robot", 5);
	msgpack_pack_str(pk, 7);
	msgpack_pack_str_body(pk, "content", 7);
	msgpack_pack_str(pk, 2);
	msgpack_pack_str_body(pk, "hi", 2);
}
/* [{role: user, content: [ then n items for the caller to pack */
static void user_message(msgpack_packer *pk, int n_items)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	msgpack_pack_str(pk, 4);
	msgpack_pack_str_body(pk, "role", 4);
	msgpack_pack_str(pk, 4);
	msgpack_pack_str_body(pk, "user", 4);
	msgpack_pack_str(pk, 7);
	msgpack_pack_str_body(pk, "content", 7);
	msgpack_pack_array(pk, (size_t)n_items);
}

static void image_msgs(msgpack_packer *pk)
{
	user_message(pk, 3);
	for (int i = 0; i < 3; i++) {
		msgpack_pack_map(pk, 2);
		msgpack_pack_str(pk, 4);
		msgpack_pack_str_body(pk, "type", 4);
		msgpack_pack_str(pk, 5);
		msgpack_pack_str_body(pk, "image", 5);
		msgpack_pack_str(pk, 4);
		msgpack_pack_str_body(pk, "data", 4);
		msgpack_pack_bin(pk, 100);
		msgpack_pack_bin_body(pk, (const char[100]){0}, 100);
	}
}

static void neg(msgpack_packer *pk) { msgpack_pack_int(pk, -1); }
static void video_msgs(msgpack_packer *pk)
{
	user_message(pk, 1);
	msgpack_pack_map(pk, 1);
	msgpack_pack_str(pk, 4);
	msgpack_pack_str_body(pk, "type", 4);
	msgpack_pack_str(pk, 5);
	msgpack_pack_str_body(pk, "video", 5);
}

static void image_list(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 3);
	for (int i = 0; i < 3; i++) {
		msgpack_pack_bin(pk, 10);
		msgpack_pack_bin_body(pk, (const char[10]){0}, 10);
	}
}
static void text_list(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_str(pk, 2);
	msgpack_pack_str_body(pk, "hi", 2);
}

/* Refused with QW_E_ARG (wrong) or, past a limit, QW_E_LIMIT. */
static void expect_refused_as(qw_status want, int n, const char *const *keys,
			      const pack_fn *vals, const qw_limits *lim, const char *needle)
{
	size_t len;
	char *buf = build(&len, n, keys, vals);
	qw_request d;
	qw_err err = {0};
	qw_status st = qw_request_decode(buf, len, lim, &d, &err);
	free(buf);
	if (st != want)
		fail_msg("expected a refusal (%s) containing \"%s\", got %s", qw_status_name(want),
			 needle, qw_status_name(st));
	assert_contains(err.msg, needle);
	assert_null(d.owned);
}

#define expect_refused(...) expect_refused_as(QW_E_ARG, __VA_ARGS__)
#define expect_over_limit(...) expect_refused_as(QW_E_LIMIT, __VA_ARGS__)

static void test_refusals(void **state)
{
	const char *k1[] = {"v", "op", "temperature", "prompt"};
	pack_fn f1[] = {v1, op_submit, hot, hello};
	expect_refused(4, k1, f1, NULL, "\"temperature\" must be a number");
	const char *k2[] = {"v", "op"};
	pack_fn f2[] = {v1, op_boom};
	expect_refused(2, k2, f2, NULL, "unknown op \"boom\"");
	pack_fn f3[] = {v2, op_submit};
	expect_refused(2, k2, f3, NULL, "protocol version 2");
	const char *k4[] = {"op", "prompt"};
	pack_fn f4[] = {op_submit, hello};
	expect_refused(2, k4, f4, NULL, "no protocol version");
	const char *k5[] = {"v", "op", "tempertaure", "prompt"};
	pack_fn f5[] = {v1, op_submit, hot, hello};
	expect_refused(4, k5, f5, NULL, "unknown field \"tempertaure\"");
	const char *k6[] = {"v", "op", "prompt", "token_ids"};
	pack_fn f6[] = {v1, op_submit, hello, ids};
	expect_refused(4, k6, f6, NULL, "exactly one of messages, prompt and token_ids (2 given)");
	pack_fn f7[] = {v1, op_submit};
	expect_refused(2, k2, f7, NULL, "(0 given)");
	const char *k8[] = {"v", "op", "token_ids"};
	pack_fn f8[] = {v1, op_submit, neg_ids};
	expect_refused(3, k8, f8, NULL, "\"token_ids\" holds something that is not a token id");
	const char *k9[] = {"v", "op", "max_tokens", "prompt"};
	pack_fn f9[] = {v1, op_submit, big, hello};
	expect_refused(4, k9, f9, NULL, "\"max_tokens\" must be in");
	const char *k10[] = {"v", "op", "messages"};
	pack_fn f10[] = {v1, op_submit, bad_msgs};
	expect_refused(3, k10, f10, NULL, "\"role\" must be system, user, assistant or tool");
	pack_fn f11[] = {v1, op_cancel};
	expect_refused(2, k2, f11, NULL, "\"request\" is required by cancel");
	const char *k12[] = {"v", "op", "prompt"};
	pack_fn f12[] = {v1, op_status, hello};
	expect_refused(3, k12, f12, NULL, "\"prompt\" is not a field of status");
	/* limits */
	qw_limits lim = QW_LIMITS_DEFAULT;
	lim.max_images = 2;
	pack_fn f13[] = {v1, op_submit, image_msgs};
	expect_over_limit(3, k10, f13, &lim, "\"data\" is over the limits");
	const char *k15[] = {"v", "op", "token_ids", "images"};
	pack_fn f15[] = {v1, op_submit, ids, image_list};
	expect_over_limit(4, k15, f15, &lim, "\"images\" has too many images");
	pack_fn f16[] = {v1, op_submit, ids, text_list};
	expect_refused(4, k15, f16, NULL, "\"images\" must be binary");
	const char *k17[] = {"v", "op", "messages", "images"};
	pack_fn f17[] = {v1, op_submit, image_msgs, image_list};
	expect_refused(4, k17, f17, NULL, "\"images\" go with prompt or token_ids");
	lim = QW_LIMITS_DEFAULT;
	lim.max_text_bytes = 3;
	pack_fn f14[] = {v1, op_submit, hello};
	expect_over_limit(3, k12, f14, &lim, "past its limit of 3 bytes of text");
	lim = QW_LIMITS_DEFAULT;
	lim.max_message = 8;
	expect_over_limit(3, k12, f14, &lim, "over the 8-byte limit");
	/* each field's type and its row's limits */
	lim = QW_LIMITS_DEFAULT;
	lim.max_token_ids = 1;
	expect_over_limit(3, k8, (pack_fn[]){v1, op_submit, ids}, &lim,
			  "\"token_ids\" has too many token ids (2; at most 1)");
	lim = QW_LIMITS_DEFAULT;
	lim.max_items = 2;
	expect_over_limit(3, k10, f13, &lim, "\"content\" has too many items (3; at most 2)");
	const char *k18[] = {"v", "op", "seed", "prompt"};
	expect_refused(4, k18, (pack_fn[]){v1, op_submit, neg, hello}, NULL,
		       "\"seed\" must be a non-negative integer");
	const char *k19[] = {"v", "op", "request"};
	expect_refused(3, k19, (pack_fn[]){v1, op_cancel, hello}, NULL,
		       "\"request\" must be a non-negative integer");
	expect_refused(3, k10, (pack_fn[]){v1, op_submit, video_msgs}, NULL,
		       "\"type\" must be text or image");
	/* the sampler's settings, out of range */
	const char *k21[][4] = {{"v", "op", "logprobs", "prompt"},
				{"v", "op", "frequency_penalty", "prompt"},
				{"v", "op", "presence_penalty", "prompt"},
				{"v", "op", "repetition_penalty", "prompt"},
				{"v", "op", "min_p", "prompt"}};
	pack_fn bad_value[] = {num21, num_neg3, num_neg3, num_zero, num_1_5};
	const char *why[] = {"\"logprobs\" must be in [0, 20]",
			     "\"frequency_penalty\" must be in [-2, 2]",
			     "\"presence_penalty\" must be in [-2, 2]",
			     "\"repetition_penalty\" must be in [1e-09, 100]",
			     "\"min_p\" must be in [0, 1]"};
	for (int i = 0; i < 5; i++)
		expect_refused(4, k21[i], (pack_fn[]){v1, op_submit, bad_value[i], hello}, NULL,
			       why[i]);
	const char *k20[] = {"v", "op", "greedy", "prompt"};
	expect_refused(4, k20, (pack_fn[]){v1, op_submit, hello, hello}, NULL,
		       "\"greedy\" must be true or false");
}

/* The one table from status to the code a client gets, as docs/protocol.md gives it. */
static void test_error_codes(void **state)
{
	static const struct {
		qw_status st;
		const char *code;
	} table[] = {
		{QW_E_LIMIT, "too_large"}, {QW_E_FULL, "busy"}, {QW_E_ARG, "bad_request"},
		{QW_E_CONFIG, "bad_request"}, {QW_E_NOMEM, "internal"}, {QW_E_IO, "internal"},
		{QW_E_DEVICE, "internal"}, {QW_E_TIMEOUT, "internal"}, {QW_E_ABORTED, "internal"},
	};
	for (size_t i = 0; i < sizeof table / sizeof *table; i++)
		assert_string_equal(qw_error_code_name(qw_error_code_of(table[i].st)), table[i].code);
	assert_string_equal(qw_error_code_name(QW_CODE_NOT_READY), "not_ready");
	assert_string_equal(qw_status_name(QW_E_LIMIT), "limit");
}

static void test_not_msgpack(void **state)
{
	qw_request d;
	qw_err err = {0};
	assert_int_equal(qw_request_decode("\xc1\xc1\xc1", 3, NULL, &d, &err), QW_E_ARG);
	assert_contains(err.msg, "not valid msgpack");
	assert_int_equal(qw_request_decode("\x92\x01\x02", 3, NULL, &d, &err), QW_E_ARG);
	assert_contains(err.msg, "not a msgpack map");
	assert_int_equal(qw_request_decode("\x80\x01", 2, NULL, &d, &err), QW_E_ARG);
	assert_contains(err.msg, "not valid msgpack");
	/* a few bytes claiming four billion elements are refused before anything is allocated */
	assert_int_equal(qw_request_decode("\xdd\xff\xff\xff\xff\x01", 6, NULL, &d, &err), QW_E_ARG);
	assert_int_equal(qw_request_decode("\xdf\x7f\xff\xff\xff", 5, NULL, &d, &err), QW_E_ARG);
	assert_int_equal(qw_request_decode("\xc6\xff\xff\xff\xf0" "ab", 7, NULL, &d, &err), QW_E_ARG);
	assert_int_equal(qw_request_decode("", 0, NULL, &d, &err), QW_E_ARG);
	/* a valid request cut anywhere, and random flips: refused or decoded, never a crash */
	int32_t idsv[] = {5, 6, 7};
	qw_request r = {.op = QW_OP_SUBMIT, .token_ids = idsv, .n_token_ids = 3, .max_tokens = 9,
			.temperature = 0.5, .top_k = 3, .stream = true};
	char *buf;
	size_t len;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	for (size_t cut = 0; cut < len; cut++)
		assert_int_equal(qw_request_decode(buf, cut, NULL, &d, &err), QW_E_ARG);
	char *m = malloc(len);
	uint64_t rng = 3;
	for (int i = 0; i < 5000; i++) {
		memcpy(m, buf, len);
		for (int k = 0; k < 1 + i % 3; k++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			m[(rng >> 33) % len] = (char)(rng >> 24);
		}
		if (qw_request_decode(m, len, NULL, &d, &err) == QW_OK)
			qw_request_free(&d);
	}
	free(m);
	free(buf);
}

static void pack_s(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str(pk, strlen(s));
	msgpack_pack_str_body(pk, s, strlen(s));
}

/* Starts {"v": 1, "op": op, ...} (n fields in all) in a fresh sb. */
static void begin_request(msgpack_sbuffer *sb, msgpack_packer *pk, int n, const char *op)
{
	msgpack_sbuffer_init(sb);
	msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(pk, (size_t)n);
	pack_s(pk, "v");
	msgpack_pack_int(pk, 1);
	pack_s(pk, "op");
	pack_s(pk, op);
}

/* Decodes sb's bytes (released), which must be refused with a message holding needle. */
static void expect_sbuf_refused(msgpack_sbuffer *sb, const qw_limits *lim, const char *needle)
{
	qw_request d;
	qw_err err = {0};
	qw_status st = qw_request_decode(sb->data, sb->size, lim, &d, &err);
	msgpack_sbuffer_destroy(sb);
	if (st == QW_OK) {
		qw_request_free(&d);
		fail_msg("decoded a request that should be refused with \"%s\"", needle);
	}
	assert_contains(err.msg, needle);
}

/* A key given twice is refused wherever it is: {"op": "status", "op": "shutdown"} must not
 * decode as a shutdown (the last value winning). */
static void test_duplicate_keys(void **state)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	begin_request(&sb, &pk, 3, "status");
	pack_s(&pk, "op");
	pack_s(&pk, "shutdown");
	expect_sbuf_refused(&sb, NULL, "\"op\" is given twice");

	begin_request(&sb, &pk, 4, "submit");
	pack_s(&pk, "prompt");
	pack_s(&pk, "hi");
	pack_s(&pk, "v");
	msgpack_pack_int(&pk, 1);
	expect_sbuf_refused(&sb, NULL, "\"v\" is given twice");

	/* in a message, and in a content item */
	for (int where = 0; where < 2; where++) {
		begin_request(&sb, &pk, 3, "submit");
		pack_s(&pk, "messages");
		msgpack_pack_array(&pk, 1);
		msgpack_pack_map(&pk, where == 0 ? 3 : 2);
		pack_s(&pk, "role");
		pack_s(&pk, "user");
		if (where == 0) {
			pack_s(&pk, "role");
			pack_s(&pk, "system");
		}
		pack_s(&pk, "content");
		msgpack_pack_array(&pk, 1);
		msgpack_pack_map(&pk, where == 1 ? 3 : 2);
		pack_s(&pk, "type");
		pack_s(&pk, "text");
		pack_s(&pk, "text");
		pack_s(&pk, "a");
		if (where == 1) {
			pack_s(&pk, "text");
			pack_s(&pk, "b");
		}
		expect_sbuf_refused(&sb, NULL, where == 0 ? "\"role\" is given twice in a message"
						      : "\"text\" is given twice in a content item");
	}
}

/* Containers nested past what any request needs are refused as such (not reported as "out
 * of memory", which msgpack-c says past 32 levels); a stop list past its limit names it. */
static void test_nesting_and_stop_limit(void **state)
{
	for (int depth = 9; depth <= 40; depth += 31) {
		msgpack_sbuffer sb;
		msgpack_packer pk;
		begin_request(&sb, &pk, 3, "status");
		pack_s(&pk, "x");
		for (int i = 1; i < depth; i++)
			msgpack_pack_array(&pk, 1);
		msgpack_pack_nil(&pk);
		expect_sbuf_refused(&sb, NULL, "nest deeper than 8 levels");
	}
	/* five levels, as a chat request with content items has, decode */
	qw_item items[] = {{QW_ITEM_TEXT, "a", 1}};
	qw_req_message m = {"user", 4, items, 1, NULL, 0, NULL, 0};
	qw_request r = {.op = QW_OP_SUBMIT, .messages = &m, .n_messages = 1, .temperature = -1,
			.top_k = -1, .stream = true};
	char *buf;
	size_t len;
	qw_err err = {0};
	qw_request d;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_OK);
	qw_request_free(&d);
	free(buf);

	const char *stop[17];
	size_t stop_len[17];
	for (int i = 0; i < 17; i++)
		stop[i] = "x", stop_len[i] = 1;
	int32_t one = 1;
	qw_request s = {.op = QW_OP_SUBMIT, .token_ids = &one, .n_token_ids = 1, .temperature = -1,
			.top_k = -1, .stream = true, .stop = stop, .stop_len = stop_len, .n_stop = 17};
	assert_int_equal(qw_request_encode(&s, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_E_LIMIT);
	assert_contains(err.msg, "\"stop\" has too many strings (17; at most 16)");
	free(buf);
}

/* Every limit at its most decodes: 256 messages of 256 items, 16 stop strings. */
static void test_at_the_limits(void **state)
{
	qw_limits lim = QW_LIMITS_DEFAULT;
	qw_item *items = calloc((size_t)lim.max_items, sizeof *items);
	for (int i = 0; i < lim.max_items; i++)
		items[i] = (qw_item){QW_ITEM_TEXT, "ab", 2};
	qw_req_message *msgs = calloc((size_t)lim.max_messages, sizeof *msgs);
	for (int i = 0; i < lim.max_messages; i++)
		msgs[i] = (qw_req_message){"user", 4, items, lim.max_items, NULL, 0, NULL, 0};
	const char *stop[16];
	size_t stop_len[16];
	for (int i = 0; i < 16; i++)
		stop[i] = "x", stop_len[i] = 1;
	qw_request r = {.op = QW_OP_SUBMIT, .messages = msgs, .n_messages = lim.max_messages,
			.temperature = -1, .top_k = -1, .stream = true, .stop = stop,
			.stop_len = stop_len, .n_stop = 16};
	char *buf;
	size_t len;
	qw_err err = {0};
	qw_request d;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	if (qw_request_decode(buf, len, NULL, &d, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(d.n_messages, lim.max_messages);
	assert_int_equal(d.messages[255].n_items, lim.max_items);
	assert_memory_equal(d.messages[255].items[255].data, "ab", 2);
	qw_request_free(&d);
	free(buf);
	free(msgs);
	free(items);
}

static long peak_rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* A request of millions of nils (8 MB, under the 64 MiB limit) is refused before msgpack-c
 * unpacks it: unpacked, each nil would cost 24 bytes (192 MB).  Measured as the peak
 * resident memory of a child process that decodes it. */
static void test_memory_bound(void **state)
{
	const size_t n = 8u << 20;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		static const char head[] = "\x83\xa1v\x01\xa2op\xa6status\xa1x\xdd";
		char *buf = malloc(n + 64);
		size_t len = sizeof head - 1;
		memcpy(buf, head, len);
		buf[len++] = (char)(n >> 24), buf[len++] = (char)(n >> 16);
		buf[len++] = (char)(n >> 8), buf[len++] = (char)n;
		memset(buf + len, 0xc0, n);
		len += n;
		long before = peak_rss_kb();
		qw_request d;
		qw_err err = {0};
		qw_status st = qw_request_decode(buf, len, NULL, &d, &err);
		long grew = peak_rss_kb() - before;
		printf("# %zu nils: %s; peak RSS grew %ld kB\n", n, err.msg, grew);
		fflush(stdout);
		_exit(st == QW_E_LIMIT && strstr(err.msg, "msgpack elements") && grew < 4096 ? 0 : 1);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The walk before unpacking reads every msgpack type as msgpack-c writes it: a status
 * request carrying one of each (every width of int, float, string, binary, ext, array and
 * map) under a key it does not take passes the walk and is refused only for that key; cut
 * short anywhere, or with the never-used type byte 0xc1, it is not msgpack. */
static void test_msgpack_walk_every_type(void **state)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	begin_request(&sb, &pk, 3, "status");
	static char big[70000];
	memset(big, 'x', sizeof big);
	size_t sizes[] = {3, 200, 300, 70000};   /* fix, 8-bit, 16-bit and 32-bit lengths */
	pack_s(&pk, "x");
	msgpack_pack_array(&pk, 15 + 8 + 12 + 5);   /* scalars, exts, strings, containers */
	msgpack_pack_nil(&pk);
	msgpack_pack_true(&pk);
	msgpack_pack_false(&pk);
	msgpack_pack_fix_uint8(&pk, 7);
	msgpack_pack_uint8(&pk, 200);
	msgpack_pack_uint16(&pk, 60000);
	msgpack_pack_uint32(&pk, 4000000000u);
	msgpack_pack_uint64(&pk, 1ull << 60);
	msgpack_pack_fix_int8(&pk, -3);
	msgpack_pack_int8(&pk, -100);
	msgpack_pack_int16(&pk, -30000);
	msgpack_pack_int32(&pk, -2000000000);
	msgpack_pack_int64(&pk, -(1ll << 60));
	msgpack_pack_float(&pk, 1.5f);
	msgpack_pack_double(&pk, 2.5);
	for (int e = 0; e < 8; e++) {           /* fixext 1 .. 16, ext 8, 16, 32 */
		size_t n = e < 5 ? (size_t)1 << e : e == 5 ? 3 : e == 6 ? 300 : 70000;
		msgpack_pack_ext(&pk, n, 5);
		msgpack_pack_ext_body(&pk, big, n);
	}
	for (int i = 0; i < 4; i++) {           /* str, bin and the old raw of each length */
		msgpack_pack_str(&pk, sizes[i]);
		msgpack_pack_str_body(&pk, big, sizes[i]);
		msgpack_pack_bin(&pk, sizes[i]);
		msgpack_pack_bin_body(&pk, big, sizes[i]);
		msgpack_pack_v4raw(&pk, sizes[i] > 65535 ? 3 : sizes[i]);
		msgpack_pack_v4raw_body(&pk, big, sizes[i] > 65535 ? 3 : sizes[i]);
	}
	msgpack_pack_array(&pk, 20);            /* array 16 */
	for (int i = 0; i < 20; i++)
		msgpack_pack_nil(&pk);
	msgpack_pack_array(&pk, 70000);         /* array 32 */
	for (int i = 0; i < 70000; i++)
		msgpack_pack_nil(&pk);
	msgpack_pack_map(&pk, 20);              /* map 16 */
	for (int i = 0; i < 40; i++)
		msgpack_pack_int(&pk, i);
	msgpack_pack_map(&pk, 70000);           /* map 32 */
	for (int i = 0; i < 140000; i++)
		msgpack_pack_nil(&pk);
	msgpack_pack_map(&pk, 0);
	qw_request d;
	qw_err err = {0};
	assert_int_equal(qw_request_decode(sb.data, sb.size, NULL, &d, &err), QW_E_ARG);
	assert_contains(err.msg, "unknown field \"x\"");   /* walked and unpacked */
	for (size_t cut = 0; cut < sb.size; cut += cut < 64 || cut + 64 > sb.size ? 1 : 997) {
		if (qw_request_decode(sb.data, cut, NULL, &d, &err) == QW_OK)
			fail_msg("cut to %zu of %zu bytes, it decoded", cut, sb.size);
		assert_contains(err.msg, "not valid msgpack");
	}
	sb.data[sb.size - 1] = (char)0xc1;   /* the last value, {}, becomes the unused byte */
	assert_int_equal(qw_request_decode(sb.data, sb.size, NULL, &d, &err), QW_E_ARG);
	assert_contains(err.msg, "not valid msgpack");
	msgpack_sbuffer_destroy(&sb);
}

static void test_replies(void **state)
{
	int32_t toks[] = {9707, 11};
	qw_reply replies[] = {
		{.type = QW_REPLY_ACCEPTED, .request = 7},
		{.type = QW_REPLY_CHUNK, .request = 7, .text = "Hello,", .text_len = 6,
		 .reasoning = "", .token_ids = toks, .n_token_ids = 2},
		{.type = QW_REPLY_DONE, .request = 7, .finish_reason = "length", .prompt_tokens = 12,
		 .completion_tokens = 16, .ttft_ms = 3.5, .tokens_per_s = 120.25},
		{.type = QW_REPLY_ERROR, .request = 0, .code = "busy", .message = "the queue is full"},
		{.type = QW_REPLY_STATUS, .json = "{\"state\": \"ready\"}"},
		{.type = QW_REPLY_OK, .request = 3, .message = "request 3 cancelled"},
		{.type = QW_REPLY_TOKENS, .text = "Hi,", .text_len = 3, .token_ids = toks,
		 .n_token_ids = 2},
		{.type = QW_REPLY_ACCEPTED, .request = 8, .token_ids = toks, .n_token_ids = 2},
	};
	for (int i = 0; i < 8; i++) {
		char *buf;
		size_t len;
		qw_err err = {0};
		qw_reply d;
		if (i == 1)   /* the chunk with no log-probabilities */
			assert_null(replies[1].logprobs);
		assert_int_equal(qw_reply_encode(&replies[i], &buf, &len, &err), QW_OK);
		assert_int_equal(qw_reply_decode(buf, len, &d, &err), QW_OK);
		assert_int_equal(d.type, replies[i].type);
		assert_int_equal(d.request, replies[i].request);
		if (i == 1) {
			assert_string_equal(d.text, "Hello,");
			assert_int_equal(d.n_token_ids, 2);
			assert_int_equal(d.token_ids[0], 9707);
		} else if (i == 2) {
			assert_string_equal(d.finish_reason, "length");
			assert_int_equal(d.completion_tokens, 16);
			assert_true(d.tokens_per_s == 120.25);
		} else if (i == 3) {
			assert_string_equal(d.code, "busy");
			assert_string_equal(d.message, "the queue is full");
		} else if (i == 4) {
			assert_string_equal(d.json, "{\"state\": \"ready\"}");
		} else if (i == 5) {
			assert_string_equal(d.message, "request 3 cancelled");
		} else if (i == 6 || i == 7) {
			assert_string_equal(d.text ? d.text : "", i == 6 ? "Hi," : "");
			assert_int_equal(d.n_token_ids, 2);
			assert_int_equal(d.token_ids[1], 11);
		} else {
			assert_int_equal(d.n_token_ids, 0);   /* accepted carries no ids unless asked */
		}
		qw_reply_free(&d);
		free(buf);
	}
}

/* A chunk's log-probabilities round-trip: each token's, its bytes (or none), its top ones
 * with theirs, -inf as it is; a count that does not match the tokens is refused. */
static void test_logprobs_reply(void **state)
{
	int32_t toks[] = {9707, 11};
	qw_reply_top top0[] = {{9707, -0.25, "Hello", 5}, {13, -1.5, "\xe2\x80", 2},
			       {7, -INFINITY, NULL, 0}};
	qw_reply_logprob lp[] = {{-0.25, "Hello", 5, top0, 3}, {-2.0, NULL, 0, NULL, 0}};
	qw_reply c = {.type = QW_REPLY_CHUNK, .request = 7, .text = "Hello,", .text_len = 6,
		      .token_ids = toks, .n_token_ids = 2, .logprobs = lp};
	char *buf;
	size_t len;
	qw_err err = {0};
	qw_reply d;
	assert_int_equal(qw_reply_encode(&c, &buf, &len, &err), QW_OK);
	if (qw_reply_decode(buf, len, &d, &err) != QW_OK)
		fail_msg("%s", err.msg);
	memset(buf, 0, len);   /* the decoded reply outlives the message's buffer */
	free(buf);
	assert_non_null(d.logprobs);
	assert_true(d.logprobs[0].logprob == -0.25 && d.logprobs[1].logprob == -2.0);
	assert_int_equal(d.logprobs[0].bytes_len, 5);
	assert_memory_equal(d.logprobs[0].bytes, "Hello", 5);
	assert_null(d.logprobs[1].bytes);
	assert_int_equal(d.logprobs[0].n_top, 3);
	assert_int_equal(d.logprobs[1].n_top, 0);
	assert_int_equal(d.logprobs[0].top[1].id, 13);
	assert_true(d.logprobs[0].top[1].logprob == -1.5);
	assert_memory_equal(d.logprobs[0].top[1].bytes, "\xe2\x80", 2);
	assert_true(isinf(d.logprobs[0].top[2].logprob) && d.logprobs[0].top[2].logprob < 0);
	assert_null(d.logprobs[0].top[2].bytes);
	qw_reply_free(&d);
	/* one entry for two tokens */
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 5);
	msgpack_pack_str(&pk, 1);
	msgpack_pack_str_body(&pk, "v", 1);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_str(&pk, 4);
	msgpack_pack_str_body(&pk, "type", 4);
	msgpack_pack_str(&pk, 5);
	msgpack_pack_str_body(&pk, "chunk", 5);
	msgpack_pack_str(&pk, 7);
	msgpack_pack_str_body(&pk, "request", 7);
	msgpack_pack_int(&pk, 7);
	msgpack_pack_str(&pk, 9);
	msgpack_pack_str_body(&pk, "token_ids", 9);
	msgpack_pack_array(&pk, 2);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_int(&pk, 2);
	msgpack_pack_str(&pk, 8);
	msgpack_pack_str_body(&pk, "logprobs", 8);
	msgpack_pack_array(&pk, 1);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str(&pk, 7);
	msgpack_pack_str_body(&pk, "logprob", 7);
	msgpack_pack_double(&pk, -1.0);
	assert_int_equal(qw_reply_decode(sb.data, sb.size, &d, &err), QW_E_ARG);
	assert_contains(err.msg, "1 logprobs entries for 2 tokens");
	msgpack_sbuffer_destroy(&sb);
}

/* Tools, tool calls, the thinking switch and the prompt ids round-trip; tokenize and
 * detokenize take only their own fields. */
static void test_tools_and_tokens(void **state)
{
	qw_item user[] = {{QW_ITEM_TEXT, "Weather?", 8}};
	qw_item none[] = {{QW_ITEM_TEXT, "", 0}};
	qw_tool_call calls[] = {{"get_weather", 11, "{\"city\": \"Paris\"}", 18},
				{"noop", 4, "{}", 2}};
	qw_req_message msgs[] = {{"user", 4, user, 1, NULL, 0, NULL, 0},
				 {"assistant", 9, none, 1, NULL, 0, calls, 2}};
	const char *tools[] = {"{\"type\": \"function\"}"};
	size_t tools_len[] = {20};
	qw_request r = {.op = QW_OP_SUBMIT, .messages = msgs, .n_messages = 2, .tools = tools,
			.tools_len = tools_len, .n_tools = 1, .thinking = QW_THINKING_OFF,
			.prompt_ids = true, .temperature = -1, .top_k = -1, .stream = true};
	char *buf;
	size_t len;
	qw_err err = {0};
	qw_request d;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	if (qw_request_decode(buf, len, NULL, &d, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(d.n_tools, 1);
	assert_memory_equal(d.tools[0], tools[0], 20);
	assert_int_equal(d.thinking, QW_THINKING_OFF);
	assert_true(d.prompt_ids);
	assert_int_equal(d.messages[1].n_tool_calls, 2);
	assert_memory_equal(d.messages[1].tool_calls[0].arguments, "{\"city\": \"Paris\"}", 18);
	assert_int_equal(d.messages[1].tool_calls[1].name_len, 4);
	qw_request_free(&d);
	free(buf);
	/* the same as a tokenize, without the generation prompt */
	r.op = QW_OP_TOKENIZE;
	r.no_generation_prompt = true;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_OK);
	assert_int_equal(d.op, QW_OP_TOKENIZE);
	assert_true(d.no_generation_prompt);
	assert_int_equal(d.n_tools, 1);
	qw_request_free(&d);
	free(buf);
	int32_t ids[] = {9707, 11};
	qw_request t = {.op = QW_OP_DETOKENIZE, .token_ids = ids, .n_token_ids = 2};
	assert_int_equal(qw_request_encode(&t, &buf, &len, &err), QW_OK);
	assert_int_equal(qw_request_decode(buf, len, NULL, &d, &err), QW_OK);
	assert_int_equal(d.op, QW_OP_DETOKENIZE);
	assert_int_equal(d.token_ids[1], 11);
	qw_request_free(&d);
	free(buf);
}

static void op_tokenize(msgpack_packer *pk) { msgpack_pack_str(pk, 8); msgpack_pack_str_body(pk, "tokenize", 8); }
static void op_detok(msgpack_packer *pk) { msgpack_pack_str(pk, 10); msgpack_pack_str_body(pk, "detokenize", 10); }
static void yes(msgpack_packer *pk) { msgpack_pack_true(pk); }
static void user_call(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 3);
	msgpack_pack_str(pk, 4);
	msgpack_pack_str_body(pk, "role", 4);
	msgpack_pack_str(pk, 4);
	msgpack_pack_str_body(pk, "user", 4);
	msgpack_pack_str(pk, 7);
	msgpack_pack_str_body(pk, "content", 7);
	msgpack_pack_str(pk, 2);
	msgpack_pack_str_body(pk, "hi", 2);
	msgpack_pack_str(pk, 10);
	msgpack_pack_str_body(pk, "tool_calls", 10);
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	msgpack_pack_str(pk, 4);
	msgpack_pack_str_body(pk, "name", 4);
	msgpack_pack_str(pk, 1);
	msgpack_pack_str_body(pk, "f", 1);
	msgpack_pack_str(pk, 9);
	msgpack_pack_str_body(pk, "arguments", 9);
	msgpack_pack_str(pk, 2);
	msgpack_pack_str_body(pk, "{}", 2);
}

static void test_tools_and_tokens_refused(void **state)
{
	const char *k1[] = {"v", "op", "prompt", "max_tokens"};
	pack_fn f1[] = {v1, op_tokenize, hello, big};
	expect_refused(4, k1, f1, NULL, "\"max_tokens\" is not a field of tokenize");
	const char *k2[] = {"v", "op", "prompt"};
	pack_fn f2[] = {v1, op_detok, hello};
	expect_refused(3, k2, f2, NULL, "\"prompt\" is not a field of detokenize");
	const char *k3[] = {"v", "op"};
	pack_fn f3[] = {v1, op_detok};
	expect_refused(2, k3, f3, NULL, "\"token_ids\" is required by detokenize");
	const char *k4[] = {"v", "op", "token_ids"};
	pack_fn f4[] = {v1, op_tokenize, ids};
	expect_refused(3, k4, f4, NULL, "\"token_ids\" is not a field of tokenize");
	const char *k4b[] = {"v", "op"};
	pack_fn f4b[] = {v1, op_tokenize};
	expect_refused(2, k4b, f4b, NULL, "tokenize needs exactly one of messages and prompt");
	const char *k5[] = {"v", "op", "prompt", "thinking"};
	pack_fn f5[] = {v1, op_submit, hello, yes};
	expect_refused(4, k5, f5, NULL, "\"thinking\" go with messages");
	const char *k6[] = {"v", "op", "messages"};
	pack_fn f6[] = {v1, op_submit, user_call};
	expect_refused(3, k6, f6, NULL, "\"tool_calls\" belong to assistant messages");
	const char *k7[] = {"v", "op", "prompt", "tools"};
	pack_fn f7[] = {v1, op_submit, hello, text_list};
	expect_refused(4, k7, f7, NULL, "\"tools\" go with messages");
}

/* Every message of a request at the limit decodes (each takes storage of its own). */
static void test_many_messages(void **state)
{
	enum { N = 256 };
	qw_item item = {QW_ITEM_TEXT, "m", 1};
	qw_req_message *msgs = calloc(N, sizeof *msgs);
	for (int i = 0; i < N; i++)
		msgs[i] = (qw_req_message){"user", 4, &item, 1, NULL, 0, NULL, 0};
	qw_request r = {.op = QW_OP_SUBMIT, .messages = msgs, .n_messages = N, .temperature = -1,
			.top_k = -1, .stream = true};
	char *buf;
	size_t len;
	qw_err err = {0};
	qw_request d;
	assert_int_equal(qw_request_encode(&r, &buf, &len, &err), QW_OK);
	if (qw_request_decode(buf, len, NULL, &d, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(d.n_messages, N);
	assert_memory_equal(d.messages[N - 1].items[0].data, "m", 1);
	qw_request_free(&d);
	free(buf);
	free(msgs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_submit_roundtrip),
		cmocka_unit_test(test_logprobs_reply),
		cmocka_unit_test(test_other_ops),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_not_msgpack),
		cmocka_unit_test(test_error_codes),
		cmocka_unit_test(test_duplicate_keys),
		cmocka_unit_test(test_nesting_and_stop_limit),
		cmocka_unit_test(test_at_the_limits),
		cmocka_unit_test(test_memory_bound),
		cmocka_unit_test(test_msgpack_walk_every_type),
		cmocka_unit_test(test_replies),
		cmocka_unit_test(test_tools_and_tokens),
		cmocka_unit_test(test_tools_and_tokens_refused),
		cmocka_unit_test(test_many_messages),
	};
	return cmocka_run_group_tests_name("protocol", tests, NULL, NULL);
}
