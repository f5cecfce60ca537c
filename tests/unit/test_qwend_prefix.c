/* test_qwend_prefix.c - the prefix cache through the real daemon (tiny-moe on the CPU
 * backend, over its socket).
 *
 *   - HF's greedy tokens when a prompt is served partly from the cache: the short case after
 *     a prompt that shares its first 9 tokens and again after itself (3 stages), the image
 *     case again (the image wholly cached: its vision tower skipped) and, with 32-token
 *     blocks, again with the hit ending inside the image; another image with the same
 *     tokens misses from the image's first block and gets what the cache-off daemon gives;
 *   - prompts that share a long beginning, some with images, run at once, then again, then a
 *     conversation's next turn: each gets exactly the tokens of a daemon with the cache off;
 *   - eviction under a full cache, and a cancel, a disconnect and preemption among requests
 *     that share blocks: every block ends used, cached or free (used + cached + free =
 *     total, used 0 at rest), and the tokens stay right;
 *   - the figures in qwen-http's /metrics. */
#include "tests/unit/http_harness.h"
#include "tests/unit/qwend_harness.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/image/image.h"

static const char *tiny(void)
{
	return fixture("hf/tiny-moe/model");
}

#define PAD 1000   /* tiny-moe's image pad token */

/* The fixture image with its pixels changed, at the same size (so the same tokens). */
static membuf other_png(const membuf *png)
{
	qw_image img;
	qw_image_limits lim = QW_IMAGE_LIMITS_DEFAULT;
	assert_int_equal(qw_image_decode(png->p, png->n, &lim, &img, NULL), QW_OK);
	for (int i = 0; i < img.width * img.height * 3; i += 7)
		img.rgb[i] = (uint8_t)(255 - img.rgb[i]);
	membuf m = encode_png(&img, PNG_COLOR_TYPE_RGB);
	qw_image_free(&img);
	return m;
}

static outcome run(const qwend *d, const int32_t *ids, int n, int max_tokens,
		   const qw_item *image)
{
	qw_request r = token_request(ids, n, max_tokens, image, image != NULL);
	outcome o;
	run_request(d->endpoint, &r, &o);
	if (o.code[0])
		fail_msg("error %s: %s", o.code, o.message);
	return o;
}

/* KV blocks at rest: none used; cached and free make up the rest. */
static void expect_at_rest(qwend *d)
{
	json_t *s = qwend_status(d);
	json_t *kv = json_object_get(s, "kv");
	json_int_t total = json_integer_value(json_object_get(kv, "blocks_total"));
	json_int_t used = json_integer_value(json_object_get(kv, "blocks_used"));
	json_int_t cached = json_integer_value(json_object_get(kv, "blocks_cached"));
	json_int_t free_ = json_integer_value(json_object_get(kv, "blocks_free"));
	json_int_t cached2 = json_integer_value(json_object_get(json_object_get(s, "prefix_cache"),
								"cached_blocks"));
	json_decref(s);
	if (used != 0 || cached + free_ != total || cached != cached2)
		fail_msg("at rest: %lld used, %lld (%lld) cached, %lld free of %lld", (long long)used,
			 (long long)cached, (long long)cached2, (long long)free_, (long long)total);
}

/* HF's tokens for prompts served partly from the cache. */
static void test_fixture_tokens_from_cache(void **state)
{
	int n_short, n_image, n_ws, n_wi;
	int32_t *ids_s = fixture_ids("tiny-moe", "short.input_ids", &n_short);
	int32_t *ids_i = fixture_ids("tiny-moe", "image.input_ids", &n_image);
	const char *device = getenv("QWEND_TEST_DEVICE");
	bool bf16 = device && !strcmp(device, "cuda");
	int32_t *want_s = fixture_ids("tiny-moe", bf16 ? "short.bf16.greedy_tokens"
						      : "short.fp32.greedy_tokens", &n_ws);
	int32_t *want_i = fixture_ids("tiny-moe", bf16 ? "image.bf16.greedy_tokens"
						      : "image.fp32.greedy_tokens", &n_wi);
	membuf png = fixture_png("tiny-moe"), png2 = other_png(&png);
	qw_item image = {QW_ITEM_IMAGE, (const char *)png.p, png.n};
	qw_item image2 = {QW_ITEM_IMAGE, (const char *)png2.p, png2.n};

	/* the tokens another image gets, with the cache off */
	qwend off;
	qwend_start(&off, tiny(), (const char *[]){"--prefix-cache", "no", "--kv-blocks", "64",
						   NULL}, NULL, true);
	outcome other_off = run(&off, ids_i, n_image, n_wi, &image2);
	assert_int_equal(qwend_status_int(&off, "prefix_cache", "lookups"), 0);
	assert_int_equal(qwend_status_int(&off, "kv", "blocks_cached"), 0);
	qwend_stop(&off);

	/* blocks of 4 tokens through 3 stages */
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--stages", "3", "--kv-block-tokens", "4",
						 "--kv-blocks", "256", NULL}, NULL, true);
	int32_t first9[14];
	memcpy(first9, ids_s, 9 * sizeof *first9);
	for (int i = 9; i < 14; i++)
		first9[i] = 300 + i;
	outcome o = run(&d, first9, 14, 3, NULL);
	outcome_free(&o);
	o = run(&d, ids_s, n_short, n_ws, NULL);   /* 2 blocks from the first */
	expect_tokens(&o, want_s, n_ws, "HF", "short, after a prompt sharing its first 9 tokens");
	outcome_free(&o);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "hit_tokens"), 8);
	o = run(&d, ids_s, n_short, n_ws, NULL);   /* (12 - 1) / 4 blocks: 8 tokens again */
	expect_tokens(&o, want_s, n_ws, "HF", "short, again");
	outcome_free(&o);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "hit_tokens"), 16);
	o = run(&d, ids_i, n_image, n_wi, &image);
	expect_tokens(&o, want_i, n_wi, "HF", "image");
	outcome_free(&o);
	o = run(&d, ids_i, n_image, n_wi, &image);   /* 84 of 86 tokens: the image whole */
	expect_tokens(&o, want_i, n_wi, "HF", "image, again");
	outcome_free(&o);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "hit_tokens"), 16 + 84);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "images_skipped"), 1);
	/* another image: block 0 (text) hits, block 1 holds image rows and misses */
	o = run(&d, ids_i, n_image, n_wi, &image2);
	expect_tokens(&o, other_off.tokens, other_off.n_tokens, "the cache-off daemon",
		      "another image");
	outcome_free(&o);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "hit_tokens"), 16 + 84 + 4);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "lookups"), 6);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "hits"), 4);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "images_skipped"), 1);
	expect_at_rest(&d);
	qwend_stop(&d);

	/* blocks of 32: the repeat's hit (2 blocks) ends inside the image (rows 6..77) */
	qwend_start(&d, tiny(), (const char *[]){"--kv-block-tokens", "32", "--kv-blocks", "16",
						 NULL}, NULL, true);
	for (int k = 0; k < 2; k++) {
		o = run(&d, ids_i, n_image, n_wi, &image);
		expect_tokens(&o, want_i, n_wi, "HF", k ? "image, again, the hit inside it"
						       : "image");
		outcome_free(&o);
	}
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "hit_tokens"), 64);
	assert_int_equal(qwend_status_int(&d, "prefix_cache", "images_skipped"), 0);
	expect_at_rest(&d);
	qwend_stop(&d);

	outcome_free(&other_off);
	free(png.p);
	free(png2.p);
	free(ids_s);
	free(ids_i);
	free(want_s);
	free(want_i);
}

// ---------------------------------------------------------------------------------------
// against the daemon with the cache off

#define SHARED 130
#define N_REQ 6

typedef struct prompts {
	int32_t ids[N_REQ][300];
	int n[N_REQ];
	qw_request reqs[N_REQ];
	qw_item image, image2;
} prompts;

/* Six prompts that begin with the long case's first 130 tokens (one with only 70 of them),
 * three of them with an image after it (the fixture's twice, another once). */
static void make_prompts(prompts *p, const int32_t *longi, const membuf *png,
			 const membuf *png2)
{
	p->image = (qw_item){QW_ITEM_IMAGE, (const char *)png->p, png->n};
	p->image2 = (qw_item){QW_ITEM_IMAGE, (const char *)png2->p, png2->n};
	static const int32_t vision[3] = {998, PAD, 999};   /* start, one pad (expanded), end */
	for (int r = 0; r < N_REQ; r++) {
		int keep = r == 5 ? 70 : r == 4 ? 257 : SHARED, n = keep;
		memcpy(p->ids[r], longi, (size_t)keep * sizeof(int32_t));
		if (r == 0 || r == 2 || r == 3) {
			memcpy(p->ids[r] + n, vision, sizeof vision);
			n += 3;
		}
		for (int k = 0; k < (r == 4 ? 0 : 10); k++)
			p->ids[r][n++] = longi[140 + 10 * r + k];
		p->n[r] = n;
		const qw_item *im = r == 0 || r == 2 ? &p->image : r == 3 ? &p->image2 : NULL;
		p->reqs[r] = token_request(p->ids[r], n, 8, im, im != NULL);
	}
}

/* Shared beginnings, at once and again, and a conversation's next turn: the tokens of the
 * cache-off daemon. */
static void test_shared_prefixes_match_cache_off(void **state)
{
	int n_long;
	int32_t *longi = fixture_ids("tiny-moe", "long.input_ids", &n_long);
	assert_int_equal(n_long, 257);
	membuf png = fixture_png("tiny-moe"), png2 = other_png(&png);
	static prompts p;
	make_prompts(&p, longi, &png, &png2);
	qwend off, on;
	const char *args_off[] = {"--stages", "2", "--kv-blocks", "256", "--prefix-cache", "no",
				  NULL};
	const char *args_on[] = {"--stages", "2", "--kv-blocks", "256", NULL};
	qwend_start(&off, tiny(), args_off, NULL, true);
	static outcome want[N_REQ], got[N_REQ];
	for (int r = 0; r < N_REQ; r++)
		run_request(off.endpoint, &p.reqs[r], &want[r]);
	/* the next turn of prompt 1: it, its answer, 10 more tokens */
	int32_t turn[200];
	int n_turn = p.n[1];
	memcpy(turn, p.ids[1], (size_t)n_turn * sizeof *turn);
	memcpy(turn + n_turn, want[1].tokens, 8 * sizeof *turn);
	n_turn += 8;
	memcpy(turn + n_turn, longi + 230, 10 * sizeof *turn);
	n_turn += 10;
	outcome turn_off = run(&off, turn, n_turn, 8, NULL);
	qwend_stop(&off);

	qwend_start(&on, tiny(), args_on, NULL, true);
	outcome warm = run(&on, longi, SHARED + 1, 2, NULL);   /* the shared blocks cached */
	outcome_free(&warm);
	for (int round = 0; round < 2; round++) {
		run_concurrently(on.endpoint, p.reqs, N_REQ, got);
		for (int r = 0; r < N_REQ; r++) {
			char what[64];
			snprintf(what, sizeof what, "prompt %d, %s", r, round ? "again" : "at once");
			expect_tokens(&got[r], want[r].tokens, want[r].n_tokens, "the cache-off daemon",
				      what);
			outcome_free(&got[r]);
		}
	}
	/* the first round hit at least the 128 shared tokens (64 for prompt 5) each */
	assert_true(qwend_status_int(&on, "prefix_cache", "hit_tokens") >= 2 * (5 * 128 + 64));
	json_int_t before = qwend_status_int(&on, "prefix_cache", "hit_tokens");
	outcome o = run(&on, turn, n_turn, 8, NULL);
	expect_tokens(&o, turn_off.tokens, turn_off.n_tokens, "the cache-off daemon",
		      "the next turn");
	outcome_free(&o);
	/* prompt 1 (140 tokens) and 7 computed answer tokens: 9 blocks of 16 */
	assert_int_equal(qwend_status_int(&on, "prefix_cache", "hit_tokens") - before, 144);
	assert_true(qwend_status_int(&on, "prefix_cache", "images_skipped") >= 3);   /* again */
	expect_at_rest(&on);
	qwend_stop(&on);
	for (int r = 0; r < N_REQ; r++)
		outcome_free(&want[r]);
	outcome_free(&turn_off);
	free(png.p);
	free(png2.p);
	free(longi);
}

// ---------------------------------------------------------------------------------------
// a full cache, cancels, preemption

/* 40 blocks of 16: the long prompt, then three others of 250 tokens one after another,
 * evict its blocks; it again still gets its tokens; at rest, nothing is used. */
static void test_eviction(void **state)
{
	int n_long;
	int32_t *longi = fixture_ids("tiny-moe", "long.input_ids", &n_long);
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--kv-blocks", "40", NULL}, NULL, true);
	outcome first = run(&d, longi, n_long, 8, NULL);
	assert_int_equal(qwend_status_int(&d, "kv", "blocks_cached"), 16);   /* 264 computed */
	for (int k = 0; k < 3; k++) {
		int32_t ids[250];
		for (int i = 0; i < 250; i++)
			ids[i] = 10 + (i * (31 + 2 * k) + k) % 900;
		outcome o = run(&d, ids, 250, 8, NULL);
		outcome_free(&o);
		expect_at_rest(&d);
	}
	assert_true(qwend_status_int(&d, "prefix_cache", "evictions") >= 3 * 16 - 24);
	outcome again = run(&d, longi, n_long, 8, NULL);
	expect_tokens(&again, first.tokens, first.n_tokens, "its first run", "long, after eviction");
	expect_at_rest(&d);
	outcome_free(&first);
	outcome_free(&again);
	qwend_stop(&d);
	free(longi);
}

/* A request that shares the long prompt's blocks, cancelled mid-stream, and another whose
 * client goes away: the shared blocks stay cached, nothing stays used, and the prompt again
 * gets its tokens.  Then three at once in a cache too small for their answers: decodes
 * preempt, and each gets the tokens of a solo run. */
static void test_cancel_and_preempt(void **state)
{
	int n_long;
	int32_t *longi = fixture_ids("tiny-moe", "long.input_ids", &n_long);
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--kv-blocks", "40", "--max-seqs", "4", NULL},
		    NULL, true);
	outcome solo = run(&d, longi, n_long, 160, NULL);   /* 417 tokens: 27 of the 40 blocks */
	assert_int_equal(qwend_status_int(&d, "kv", "blocks_cached"), 26);
	qw_request r = token_request(longi, n_long, 350, NULL, 0);   /* at most 38 blocks */
	qw_client a, b, c;
	open_client(&a, &d);
	open_client(&b, &d);
	uint64_t id = start_streaming(&a, &r);
	assert_true(qwend_status_int(&d, "kv", "blocks_used") >= 17);
	qw_request cancel = {.op = QW_OP_CANCEL, .target = id};
	qw_reply rep;
	qw_err err = {0};
	assert_int_equal(qw_client_send(&b, &cancel, &err), QW_OK);
	expect_reply(&b, QW_REPLY_OK, &rep);
	qw_reply_free(&rep);
	outcome o = {0};
	read_to_end(&a, &o);
	assert_string_equal(o.finish, "cancelled");
	qwend_wait_for(&d, "kv", "blocks_used", 0, 5);
	expect_at_rest(&d);
	assert_true(qwend_status_int(&d, "kv", "blocks_cached") >= 16);
	open_client(&c, &d);
	start_streaming(&c, &r);
	qw_client_close(&c);
	qwend_wait_for(&d, "kv", "blocks_used", 0, 5);
	expect_at_rest(&d);
	qw_client_close(&a);
	qw_client_close(&b);
	outcome again = run(&d, longi, n_long, 160, NULL);
	expect_tokens(&again, solo.tokens, solo.n_tokens, "its solo run", "long, after cancels");
	outcome_free(&again);

	/* 16 shared blocks and 11 more each: 49 > 40 */
	qw_request three[3];
	outcome got[3];
	for (int i = 0; i < 3; i++)
		three[i] = token_request(longi, n_long, 160, NULL, 0);
	run_concurrently(d.endpoint, three, 3, got);
	for (int i = 0; i < 3; i++) {
		expect_tokens(&got[i], solo.tokens, solo.n_tokens, "its solo run",
			      "long, three at once");
		outcome_free(&got[i]);
	}
	assert_true(qwend_status_int(&d, "requests", "preempted") > 0);
	expect_at_rest(&d);
	outcome_free(&solo);
	qwend_stop(&d);
	free(longi);
}

/* qwen-http's /metrics carries the prefix cache's figures: the long prompt twice, the second
 * time 256 of its 257 tokens from the cache. */
static void test_http_metrics(void **state)
{
	int n_long;
	int32_t *longi = fixture_ids("tiny-moe", "long.input_ids", &n_long);
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--kv-blocks", "64", NULL}, NULL, true);
	qhttp h;
	qhttp_start(&h, d.endpoint, (const char *[]){"--model-name", "m", NULL});
	char body[4096];
	int at = snprintf(body, sizeof body, "{\"prompt\": [");
	for (int i = 0; i < n_long; i++)
		at += snprintf(body + at, sizeof body - (size_t)at, "%s%d", i ? ", " : "", longi[i]);
	snprintf(body + at, sizeof body - (size_t)at, "], \"max_tokens\": 2, \"temperature\": 0}");
	for (int k = 0; k < 2; k++) {
		http_resp r;
		http_post(h.port, "/v1/completions", body, &r);
		if (r.status != 200)
			fail_msg("%d %s", r.status, r.body);
		http_resp_free(&r);
	}
	http_resp r;
	http_call(h.port, "GET", "/metrics", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_contains(r.body, "qwen:prefix_cache_hits_total{model_name=\"m\"} 256\n");
	assert_contains(r.body, "qwen:prefix_cache_queries_total{model_name=\"m\"} 514\n");
	assert_contains(r.body, "qwen:kv_cache_blocks_cached{model_name=\"m\"} 16\n");
	assert_contains(r.body, "qwen:kv_cache_blocks_used{model_name=\"m\"} 0\n");
	assert_contains(r.body, "qwen:prefix_cache_evictions_total{model_name=\"m\"} 0\n");
	assert_contains(r.body, "# TYPE qwen:prefix_cache_hits_total counter\n");
	http_resp_free(&r);
	qhttp_stop(&h);
	qwend_stop(&d);
	free(longi);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixture_tokens_from_cache),
		cmocka_unit_test(test_shared_prefixes_match_cache_off),
		cmocka_unit_test(test_eviction),
		cmocka_unit_test(test_cancel_and_preempt),
		cmocka_unit_test(test_http_metrics),
	};
	return cmocka_run_group_tests_name("qwend prefix", tests, NULL, NULL);
}
