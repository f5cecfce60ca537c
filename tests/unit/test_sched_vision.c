/* test_sched_vision.c - the vision cache: its entries (vision_cache.h), and the scheduler
 * that uses it against the simulated pipeline (sched_sim.h), whose stage 0 keeps an
 * image's features under its handle as the plans say (the tower on a fresh image; after its
 * last rows only when the plan says keep, until a plan drops it) and whose KV entries hash
 * which image each row came from: a handle that names another image changes the tokens, a
 * handle stage 0 no longer holds fails the step.
 *
 *   - entries: least recently used evicted first, never one a sequence still needs or the
 *     step being built reads, an image larger than the cache or than what may go refused
 *     with nothing evicted, the entry count bounded, clear;
 *   - the same image in later prompts (other tokens around it, the prefix cache off): the
 *     tower runs once, and each gets its solo tokens; with the cache off it runs every time;
 *   - a random workload (images from a few, repeated, cancels, lost pipelines, steps that
 *     split images, a cache of two images) with the prefix cache off and on: every sequence
 *     its solo tokens, stage 0 never missing an image a step reads, its holdings within what
 *     it reserved, the cache forgotten with every lost pipeline. */
#include "tests/unit/sched_sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------
// the entries

typedef struct evictions {
	uint64_t handle[16];
	int n;
	uint64_t busy;            /* the handle a sequence still needs (0: none) */
} evictions;

static bool busy_fn(void *ctx, uint64_t handle)
{
	return ((evictions *)ctx)->busy == handle;
}

static void evicted_fn(void *ctx, uint64_t handle)
{
	evictions *e = ctx;
	assert_true(e->n < 16);
	e->handle[e->n++] = handle;
}

static bool add(qw_vision_cache *c, evictions *e, uint64_t hash, uint64_t handle, int tokens,
		uint64_t step)
{
	return qw_vcache_add(c, hash, handle, tokens, step, busy_fn, evicted_fn, e);
}

static void test_entries(void **state)
{
	qw_vision_cache c;
	evictions e = {0};
	qw_vcache_init(&c, 10, 8);
	assert_true(add(&c, &e, 0xA, 1, 4, 1));
	assert_true(add(&c, &e, 0xB, 2, 4, 2));
	assert_int_equal(c.held_tokens, 8);
	assert_null(qw_vcache_use(&c, 0xC, 3));
	assert_int_equal(qw_vcache_use(&c, 0xA, 3)->handle, 1);   /* A is now the newer */
	assert_true(add(&c, &e, 0xC, 3, 4, 4));                    /* B, the older, goes */
	assert_int_equal(e.n, 1);
	assert_int_equal(e.handle[0], 2);
	assert_null(qw_vcache_use(&c, 0xB, 4));
	/* A, the oldest, is needed by a sequence: C goes instead */
	e.busy = 1;
	assert_true(add(&c, &e, 0xD, 4, 4, 5));
	assert_int_equal(e.n, 2);
	assert_int_equal(e.handle[1], 3);
	/* A busy and D read by step 5: 2 tokens free, nothing may go */
	assert_false(add(&c, &e, 0xE, 5, 4, 5));
	assert_false(add(&c, &e, 0xE, 5, 11, 6));                  /* larger than the cache */
	assert_false(add(&c, &e, 0xE, 5, 7, 6));                   /* D may go: 6 < 7 */
	assert_int_equal(e.n, 2);                                   /* and nothing went */
	assert_int_equal(c.n, 2);
	assert_true(add(&c, &e, 0xE, 5, 6, 6));                    /* D goes, A stays */
	assert_int_equal(e.handle[2], 4);
	assert_non_null(qw_vcache_use(&c, 0xA, 7));
	assert_int_equal(c.held_tokens, 10);
	assert_int_equal(c.stats.evictions, 3);
	assert_int_equal(c.stats.hits, 2);
	qw_vcache_remove(&c, 5);   /* E's step did not carry it after all: no drop */
	assert_int_equal(c.held_tokens, 4);
	assert_int_equal(e.n, 3);
	qw_vcache_clear(&c);
	assert_int_equal(c.n, 0);
	assert_int_equal(c.held_tokens, 0);
	assert_null(qw_vcache_use(&c, 0xA, 8));
	qw_vcache_free(&c);

	/* two entries at most: the third evicts the older however many tokens are free */
	qw_vcache_init(&c, 100, 2);
	e = (evictions){0};
	assert_true(add(&c, &e, 0xA, 1, 1, 1));
	assert_true(add(&c, &e, 0xB, 2, 1, 2));
	assert_true(add(&c, &e, 0xC, 3, 1, 3));
	assert_int_equal(e.n, 1);
	assert_int_equal(e.handle[0], 1);
	assert_int_equal(c.n, 2);
	qw_vcache_free(&c);

	/* off: nothing is kept */
	qw_vcache_init(&c, 0, 8);
	assert_false(add(&c, &e, 0xA, 1, 1, 1));
	qw_vcache_free(&c);
}

// ---------------------------------------------------------------------------------------
// the scheduler

static void submit(qw_sched *s, sim_seq *x)
{
	qw_err err = {0};
	if (qw_sched_submit(s, &x->q, x->max_new, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

static uint32_t rand_below(uint64_t *rng, uint32_t n)
{
	*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(*rng >> 33) % n;
}

/* A prompt of n random tokens with images of the given seeds at img_pos (len tokens each,
 * the length following from the seed so that one seed is one image). */
static void seq_with_images(sim_seq *x, uint64_t id, int n, int n_img, const int *img_pos,
			    const uint8_t *seeds, int max_new, uint64_t *rng)
{
	int32_t prompt[128], pos[3 * 128];
	assert_true(n <= 128);
	for (int i = 0; i < n; i++) {
		prompt[i] = (int32_t)(10 + rand_below(rng, 900));
		for (int a = 0; a < 3; a++)
			pos[3 * i + a] = i + (int)rand_below(rng, 3);
	}
	int len[SIM_MAX_IMG];
	for (int m = 0; m < n_img; m++)
		len[m] = 4 + 2 * (seeds[m] % 3);
	sim_seq_init(x, id, prompt, pos, n, n_img, img_pos, len, seeds, max_new);
}

/* Four prompts with one image each, one after another, the prefix cache off: seed 50 in the
 * first, second (other tokens, another place) and fourth (the first's prompt again), seed
 * 51 in the third.  With the cache the tower runs once per image; without, every time. */
static void test_same_image_later(void **state)
{
	for (int cached = 0; cached < 2; cached++) {
		qw_sched s;
		sim m;
		sim_make(&s, &m, 2, 8, 4, 64, false);
		s.o.vision_tokens = 8;
		qw_vcache_init(&s.vcache, cached ? 20 : 0, 8);
		uint64_t rng = 11;
		sim_seq xs[4];
		const int at[4] = {2, 9, 3, 2};
		const uint8_t seed[4] = {50, 50, 51, 50};
		for (int i = 0; i < 4; i++) {
			uint64_t r = i == 3 ? 11 : rng;   /* the fourth: the first's tokens */
			seq_with_images(&xs[i], (uint64_t)i + 1, 30, 1, &at[i], &seed[i], 3, &r);
			if (i < 3)
				rng = r;
			submit(&s, &xs[i]);
			sim_drive(&m);
		}
		sim_check(xs, 4);
		assert_int_equal(m.fresh[50], cached ? 1 : 3);
		assert_int_equal(m.fresh[51], 1);
		assert_int_equal(s.vcache.stats.hits, cached ? 2 : 0);
		assert_int_equal(s.vcache.stats.misses, cached ? 2 : 0);
		assert_int_equal(m.n_handles, cached ? 2 : 0);   /* stage 0 keeps both */
		assert_int_equal(s.vcache.n, m.n_handles);
		sim_end(&s, &m, xs, 4);
	}
}

enum { VISION_SEQS = 150, BUDGET = 10, CACHE = 8 };

/* Sequences with one or two images from five (seeds 60..64, of 4, 6 or 8 tokens) arrive
 * while others run, in steps of 6 tokens (so images split), some cancelled, the pipeline
 * lost now and then; the cache holds 14 tokens (one or two images), stage 0's split images
 * 8 besides. */
static void random_workload(bool prefix_cache)
{
	static sim_seq xs[VISION_SEQS];
	memset(xs, 0, sizeof xs);
	qw_sched s;
	sim m;
	sim_make(&s, &m, 3, BUDGET, 6, 120, prefix_cache);
	s.o.vision_tokens = 8;
	qw_vcache_init(&s.vcache, CACHE, 8);
	uint64_t rng = prefix_cache ? 7 : 8;
	int32_t pend[8][256];
	int n = 0, n_pend = 0, cancels = 0, resets = 0, images = 0;
	for (int guard = 0; n < VISION_SEQS || s.running.n + s.queue.n + n_pend > 0; guard++) {
		assert_true(guard < 200000);
		uint32_t r = rand_below(&rng, 100);
		sim_seq *x = n ? &xs[rand_below(&rng, (uint32_t)n)] : NULL;
		qw_step_plan p;
		if (n < VISION_SEQS && r < 14 && s.queue.n < 32) {
			int n_img = 1 + (int)rand_below(&rng, 2), at[2];
			uint8_t seeds[2];
			at[0] = 1 + (int)rand_below(&rng, 6);
			seeds[0] = (uint8_t)(60 + rand_below(&rng, 5));
			at[1] = at[0] + 8 + (int)rand_below(&rng, 6);
			seeds[1] = (uint8_t)(60 + rand_below(&rng, 5));
			int len = at[n_img - 1] + 8 + 1 + (int)rand_below(&rng, 20);
			seq_with_images(&xs[n], (uint64_t)n + 1, len, n_img, at, seeds,
					1 + (int)rand_below(&rng, 6), &rng);
			submit(&s, &xs[n++]);
			images += n_img;
		} else if (r < 16 && x && qw_sched_find(&s, x->q.id) == &x->q) {
			qw_sched_remove(&s, &x->q);
			x->cancelled = true;
			cancels++;
		} else if (r == 16 && resets < 3 && s.running.n > 0) {
			sim_reset(&m);
			assert_int_equal(s.vcache.n, 0);   /* stage 0 holds none now */
			assert_int_equal(s.vcache.held_tokens, 0);
			n_pend = 0;
			resets++;
		} else if (n_pend < 8 && qw_sched_next(&s, &p)) {
			sim_run_plan(&m, &p, pend[n_pend++]);
			assert_true(s.vcache.held_tokens <= CACHE);
		} else if (n_pend > 0) {
			sim_complete(&m, pend[0]);
			memmove(pend[0], pend[1], sizeof pend[0] * (size_t)(n_pend - 1));
			n_pend--;
		}
	}
	sim_check(xs, n);
	int runs = 0;
	for (int k = 60; k < 65; k++)
		runs += m.fresh[k];
	printf("# prefix cache %s: %d sequences, %d images: the tower ran %d times; %llu hits, "
	       "%llu misses, %llu evictions; %d cancels, %d lost pipelines; stage 0 held %d "
	       "image tokens at most\n", prefix_cache ? "on" : "off", n, images, runs,
	       (unsigned long long)s.vcache.stats.hits, (unsigned long long)s.vcache.stats.misses,
	       (unsigned long long)s.vcache.stats.evictions, cancels, resets, m.held_peak);
	/* within what stage 0 reserved: the cache, the split images and the one it sees */
	assert_true(m.held_peak <= CACHE + 2 * 8);
	/* the workload did what it is for */
	assert_true(resets > 0 && cancels > 0);
	assert_true(s.vcache.stats.hits > 10 && s.vcache.stats.evictions > 5);
	assert_int_equal((uint64_t)runs, s.vcache.stats.misses);
	assert_true(runs < images);
	sim_end(&s, &m, xs, n);
}

static void test_random_workload(void **state)
{
	random_workload(false);
	random_workload(true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_entries),
		cmocka_unit_test(test_same_image_later),
		cmocka_unit_test(test_random_workload),
	};
	return cmocka_run_group_tests_name("sched vision cache", tests, NULL, NULL);
}
