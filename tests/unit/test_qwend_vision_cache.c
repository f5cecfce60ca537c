/* test_qwend_vision_cache.c - the vision cache through the real daemon (tiny-moe on the CPU
 * backend, over its socket), against a daemon with `--vision-cache 0` and the same settings
 * otherwise (the prefix cache on in both, so the only difference is the tower's outputs
 * kept on stage 0):
 *
 *   - a second question about the same image: the image's last rows share a KV block with
 *     the question, so the prefix cache cannot serve it whole; the vision cache serves its
 *     features, the tower does not run again (stage 0's own count), and the tokens are the
 *     cache-off daemon's (and HF's for the fixture prompt asked again);
 *   - another image misses and runs the tower; in a cache of one or two images, the least
 *     recently used is evicted and asked about again misses, with the right tokens;
 *   - requests at once about three images, each split over several steps, in that small
 *     cache: no image a sequence still reads is evicted (stage 0 would fail the step);
 *   - a restart of stage 0 (its new worker holds no image) and of another stage (stage 0
 *     forgets its images as it rejoins): the daemon forgets the cache, the next request
 *     about the image runs the tower again and gets its tokens; then it hits again;
 *   - qwen-http's /metrics carries the hits and misses. */
#include "tests/unit/http_harness.h"
#include "tests/unit/qwend_harness.h"

#include <png.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/image/image.h"

#define IMAGE_END 76   /* the fixture prompt: text, 70 image rows from 6, vision_end at 76 */

static const char *tiny(void)
{
	return fixture("hf/tiny-moe/model");
}

static bool on_cuda(void)
{
	const char *device = getenv("QWEND_TEST_DEVICE");
	return device && !strcmp(device, "cuda");
}

/* The fixture image with its pixels changed (variant k > 0), at the same size. */
static membuf variant_png(const membuf *png, int k)
{
	qw_image img;
	qw_image_limits lim = QW_IMAGE_LIMITS_DEFAULT;
	assert_int_equal(qw_image_decode(png->p, png->n, &lim, &img, NULL), QW_OK);
	for (int i = 0; i < img.width * img.height * 3; i += 3 + 2 * k)
		img.rgb[i] = (uint8_t)(255 - img.rgb[i]);
	membuf m = encode_png(&img, PNG_COLOR_TYPE_RGB);
	qw_image_free(&img);
	return m;
}

typedef struct fixture_case {
	int32_t q1[128], q2[128];   /* the fixture prompt, and another question after the image */
	int n1, n2;
	int32_t *hf;                /* HF's greedy tokens of q1 */
	int n_hf;
	membuf png[3];              /* the fixture image and two others of its size */
	qw_item image[3];
} fixture_case;

static void fixture_case_init(fixture_case *f)
{
	int n;
	int32_t *ids = fixture_ids("tiny-moe", "image.input_ids", &n);
	assert_true(n <= 128 && n > IMAGE_END + 3);
	assert_int_equal(ids[IMAGE_END], 999);   /* vision_end */
	memcpy(f->q1, ids, (size_t)n * sizeof *ids);
	f->n1 = n;
	/* the same image, another question: other tokens right after the image, the end kept */
	memcpy(f->q2, ids, (IMAGE_END + 1) * sizeof *ids);
	f->n2 = IMAGE_END + 1;
	for (int k = 0; k < 4; k++)
		f->q2[f->n2++] = 400 + 37 * k;
	for (int i = n - 3; i < n; i++)
		f->q2[f->n2++] = ids[i];
	free(ids);
	f->hf = fixture_ids("tiny-moe", on_cuda() ? "image.bf16.greedy_tokens"
						 : "image.fp32.greedy_tokens", &f->n_hf);
	f->png[0] = fixture_png("tiny-moe");
	for (int k = 1; k < 3; k++)
		f->png[k] = variant_png(&f->png[0], k);
	for (int k = 0; k < 3; k++)
		f->image[k] = (qw_item){QW_ITEM_IMAGE, (const char *)f->png[k].p, f->png[k].n};
}

static void fixture_case_free(fixture_case *f)
{
	free(f->hf);
	for (int k = 0; k < 3; k++)
		free(f->png[k].p);
}

static outcome ask(const qwend *d, const int32_t *ids, int n, int max_tokens,
		   const qw_item *image)
{
	qw_request r = token_request(ids, n, max_tokens, image, 1);
	outcome o;
	run_request(d->endpoint, &r, &o);
	if (o.code[0]) {
		qwend_dump_log(d);
		fail_msg("error %s: %s", o.code, o.message);
	}
	return o;
}

/* Images stage 0's worker ran the vision tower on, since it started. */
static json_int_t tower_runs(qwend *d)
{
	json_t *s = qwend_status(d);
	const json_t *st0 = json_array_get(json_object_get(s, "stages"), 0);
	const json_t *v = json_object_get(st0, "vision_runs");
	assert_non_null(v);
	json_int_t n = json_integer_value(v);
	json_decref(s);
	return n;
}

static bool cache_enabled(qwend *d)
{
	json_t *s = qwend_status(d);
	bool on = json_is_true(json_object_get(json_object_get(s, "vision_cache"), "enabled"));
	json_decref(s);
	return on;
}

#define MAX_NEW 8

/* The questions in order, their tokens: q1 about image 0, q2 about it, q1 about image 1. */
typedef struct answers {
	outcome q1, q2, other;
} answers;

static void answers_free(answers *a)
{
	outcome_free(&a->q1);
	outcome_free(&a->q2);
	outcome_free(&a->other);
}

/* A second question about the same image: no tower, the cache-off daemon's tokens; another
 * image: a miss; the fixture prompt asked again with 32-token blocks (the prefix hit ends
 * inside the image): HF's tokens from the cached features. */
static void test_hit_matches_cache_off(void **state)
{
	static fixture_case f;
	fixture_case_init(&f);
	const char *args_off[] = {"--stages", "2", "--vision-cache", "0", NULL};
	const char *args_on[] = {"--stages", "2", NULL};
	qwend off, on;
	answers want, got;
	qwend_start(&off, tiny(), args_off, NULL, true);
	want.q1 = ask(&off, f.q1, f.n1, f.n_hf, &f.image[0]);
	want.q2 = ask(&off, f.q2, f.n2, MAX_NEW, &f.image[0]);
	want.other = ask(&off, f.q2, f.n2, MAX_NEW, &f.image[1]);
	expect_tokens(&want.q1, f.hf, f.n_hf, "HF", "the fixture prompt, the vision cache off");
	assert_int_equal(tower_runs(&off), 3);
	assert_false(cache_enabled(&off));
	assert_int_equal(qwend_status_int(&off, "vision_cache", "hits"), 0);
	qwend_stop(&off);

	qwend_start(&on, tiny(), args_on, NULL, true);
	assert_true(cache_enabled(&on));
	assert_true(qwend_status_int(&on, "vision_cache", "capacity_tokens") >= 70);
	got.q1 = ask(&on, f.q1, f.n1, f.n_hf, &f.image[0]);
	expect_tokens(&got.q1, f.hf, f.n_hf, "HF", "the fixture prompt");
	assert_int_equal(tower_runs(&on), 1);
	assert_int_equal(qwend_status_int(&on, "vision_cache", "images"), 1);
	assert_int_equal(qwend_status_int(&on, "vision_cache", "tokens"), 70);
	got.q2 = ask(&on, f.q2, f.n2, MAX_NEW, &f.image[0]);
	expect_tokens(&got.q2, want.q2.tokens, want.q2.n_tokens, "the cache-off daemon",
		      "another question about the same image");
	/* the prefix cache took the blocks before the image's last rows: the tower's outputs
	 * came from the vision cache */
	assert_int_equal(qwend_status_int(&on, "prefix_cache", "images_skipped"), 0);
	assert_int_equal(tower_runs(&on), 1);
	assert_int_equal(qwend_status_int(&on, "vision_cache", "hits"), 1);
	assert_int_equal(qwend_status_int(&on, "vision_cache", "misses"), 1);
	got.other = ask(&on, f.q2, f.n2, MAX_NEW, &f.image[1]);
	expect_tokens(&got.other, want.other.tokens, want.other.n_tokens, "the cache-off daemon",
		      "the question about another image");
	assert_int_equal(tower_runs(&on), 2);
	assert_int_equal(qwend_status_int(&on, "vision_cache", "misses"), 2);
	assert_int_equal(qwend_status_int(&on, "vision_cache", "images"), 2);
	assert_int_equal(qwend_status_int(&on, "kv", "blocks_used"), 0);
	qwend_stop(&on);

	/* 32-token blocks: the fixture prompt again hits 64 tokens, inside the image */
	qwend_start(&on, tiny(), (const char *[]){"--kv-block-tokens", "32", "--kv-blocks", "16",
						  NULL}, NULL, true);
	for (int k = 0; k < 2; k++) {
		outcome o = ask(&on, f.q1, f.n1, f.n_hf, &f.image[0]);
		expect_tokens(&o, f.hf, f.n_hf, "HF", k ? "the fixture prompt again" :
							  "the fixture prompt");
		outcome_free(&o);
	}
	assert_int_equal(qwend_status_int(&on, "prefix_cache", "hit_tokens"), 64);
	assert_int_equal(tower_runs(&on), 1);
	assert_int_equal(qwend_status_int(&on, "vision_cache", "hits"), 1);
	qwend_stop(&on);
	answers_free(&want);
	answers_free(&got);
	fixture_case_free(&f);
}

#define N_AT_ONCE 6

/* A cache of one image (two on CUDA, whose features take half the bytes), the prefix cache
 * off (every prompt needs its image's features): asked about images 0, 1, 2 and 0 again,
 * the last misses (evicted), with the cache-off tokens; then six requests at once about
 * the three images, with steps of 32 tokens (each image split over three steps, a later
 * request's image coming while an earlier one's is not done): every one gets the cache-off
 * daemon's tokens. */
static void test_eviction(void **state)
{
	static fixture_case f;
	fixture_case_init(&f);
	qw_request reqs[N_AT_ONCE];
	for (int r = 0; r < N_AT_ONCE; r++)
		reqs[r] = token_request(r % 2 ? f.q2 : f.q1, r % 2 ? f.n2 : f.n1, MAX_NEW,
					&f.image[r % 3], 1);
	static outcome want[N_AT_ONCE + 4], got[N_AT_ONCE];
	qwend off, on;
	qwend_start(&off, tiny(), (const char *[]){"--vision-cache", "0", "--max-batch-tokens",
						   "32", "--prefix-cache", "no", NULL}, NULL, true);
	for (int k = 0; k < 3; k++)
		want[k] = ask(&off, f.q1, f.n1, MAX_NEW, &f.image[k]);
	want[3] = ask(&off, f.q2, f.n2, MAX_NEW, &f.image[0]);
	for (int r = 0; r < N_AT_ONCE; r++)
		run_request(off.endpoint, &reqs[r], &want[4 + r]);
	qwend_stop(&off);

	/* 2048 bytes an image token on the CPU (fp32: the embedding and 3 deepstack rows of
	 * 128): 97 tokens, room for one image of 70 */
	qwend_start(&on, tiny(), (const char *[]){"--vision-cache", "200K", "--max-batch-tokens",
						  "32", "--prefix-cache", "no", NULL}, NULL, true);
	json_int_t cap = qwend_status_int(&on, "vision_cache", "capacity_tokens");
	assert_true(cap >= 70 && cap < 3 * 70);
	for (int k = 0; k < 4; k++) {
		outcome o = k < 3 ? ask(&on, f.q1, f.n1, MAX_NEW, &f.image[k])
				  : ask(&on, f.q2, f.n2, MAX_NEW, &f.image[0]);
		char what[64];
		snprintf(what, sizeof what, "image %d%s", k % 3, k == 3 ? ", evicted, again" : "");
		expect_tokens(&o, want[k].tokens, want[k].n_tokens, "the cache-off daemon", what);
		outcome_free(&o);
		assert_int_equal(tower_runs(&on), k + 1);   /* each a miss */
	}
	assert_true(qwend_status_int(&on, "vision_cache", "evictions") >= 2);
	assert_true(qwend_status_int(&on, "vision_cache", "tokens") <= cap);
	run_concurrently(on.endpoint, reqs, N_AT_ONCE, got);
	for (int r = 0; r < N_AT_ONCE; r++) {
		char what[64];
		snprintf(what, sizeof what, "request %d at once (image %d)", r, r % 3);
		if (got[r].code[0])
			qwend_dump_log(&on);
		expect_tokens(&got[r], want[4 + r].tokens, want[4 + r].n_tokens,
			      "the cache-off daemon", what);
		outcome_free(&got[r]);
	}
	assert_int_equal(qwend_status_int(&on, "kv", "blocks_used"), 0);
	assert_int_equal(qwend_status_int(&on, "requests", "failed"), 0);
	qwend_stop(&on);
	for (int k = 0; k < N_AT_ONCE + 4; k++)
		outcome_free(&want[k]);
	fixture_case_free(&f);
}

static pid_t stage_pid(qwend *d, int k)
{
	json_t *s = qwend_status(d);
	pid_t pid = (pid_t)json_integer_value(json_object_get(
		json_array_get(json_object_get(s, "stages"), (size_t)k), "pid"));
	json_decref(s);
	assert_true(pid > 0);
	return pid;
}

/* Stage 0 killed, then stage 1: each time the cache is forgotten, the next question about
 * the image runs the tower on stage 0 again with the cache-off tokens, the one after hits. */
static void test_restarts(void **state)
{
	static fixture_case f;
	fixture_case_init(&f);
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--stages", "2", "--vision-cache", "0", NULL},
		    NULL, true);
	outcome want = ask(&d, f.q2, f.n2, MAX_NEW, &f.image[0]);
	qwend_stop(&d);

	qwend_start(&d, tiny(), (const char *[]){"--stages", "2", "--max-restarts", "5", NULL},
		    NULL, true);
	outcome o = ask(&d, f.q1, f.n1, MAX_NEW, &f.image[0]);
	outcome_free(&o);
	assert_int_equal(qwend_status_int(&d, "vision_cache", "images"), 1);
	for (int k = 0; k < 2; k++) {
		json_int_t runs = tower_runs(&d), misses = qwend_status_int(&d, "vision_cache",
									    "misses");
		kill(stage_pid(&d, k), SIGKILL);
		qwend_wait_restarted(&d, k + 1, 60);
		assert_int_equal(qwend_status_int(&d, "vision_cache", "images"), 0);
		assert_int_equal(qwend_status_int(&d, "vision_cache", "tokens"), 0);
		/* a new stage 0 counts from 0; a survivor goes on */
		json_int_t base = k == 0 ? 0 : runs;
		assert_int_equal(tower_runs(&d), base);
		char what[64];
		snprintf(what, sizeof what, "after stage %d was restarted", k);
		o = ask(&d, f.q2, f.n2, MAX_NEW, &f.image[0]);
		expect_tokens(&o, want.tokens, want.n_tokens, "the cache-off daemon", what);
		outcome_free(&o);
		assert_int_equal(tower_runs(&d), base + 1);
		assert_int_equal(qwend_status_int(&d, "vision_cache", "misses"), misses + 1);
		snprintf(what, sizeof what, "after stage %d was restarted, again", k);
		o = ask(&d, f.q2, f.n2, MAX_NEW, &f.image[0]);
		expect_tokens(&o, want.tokens, want.n_tokens, "the cache-off daemon", what);
		outcome_free(&o);
		assert_int_equal(tower_runs(&d), base + 1);   /* a hit */
	}
	qwend_stop(&d);
	outcome_free(&want);
	fixture_case_free(&f);
}

/* qwen-http's /metrics: one miss and one hit. */
static void test_http_metrics(void **state)
{
	static fixture_case f;
	fixture_case_init(&f);
	qwend d;
	qwend_start(&d, tiny(), NULL, NULL, true);
	outcome o = ask(&d, f.q1, f.n1, 2, &f.image[0]);
	outcome_free(&o);
	o = ask(&d, f.q2, f.n2, 2, &f.image[0]);
	outcome_free(&o);
	qhttp h;
	qhttp_start(&h, d.endpoint, (const char *[]){"--model-name", "m", NULL});
	http_resp r;
	http_call(h.port, "GET", "/metrics", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_contains(r.body, "qwen:vision_cache_hits_total{model_name=\"m\"} 1\n");
	assert_contains(r.body, "qwen:vision_cache_misses_total{model_name=\"m\"} 1\n");
	assert_contains(r.body, "qwen:vision_cache_evictions_total{model_name=\"m\"} 0\n");
	assert_contains(r.body, "# TYPE qwen:vision_cache_hits_total counter\n");
	http_resp_free(&r);
	qhttp_stop(&h);
	qwend_stop(&d);
	fixture_case_free(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hit_matches_cache_off),
		cmocka_unit_test(test_eviction),
		cmocka_unit_test(test_restarts),
		cmocka_unit_test(test_http_metrics),
	};
	return cmocka_run_group_tests_name("qwend vision cache", tests, NULL, NULL);
}
