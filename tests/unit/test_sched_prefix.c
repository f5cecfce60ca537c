/* test_sched_prefix.c - the prefix cache in the scheduler, against the simulated pipeline
 * (sched_sim.h), whose entries hash each sequence's whole history: a cached block reused
 * for another history (another prefix, another image, other positions) changes the tokens.
 *
 *   - a repeated prompt, a shared beginning, the same tokens with another image, and a
 *     conversation resent with its answer: each gets its solo tokens, from exactly the
 *     blocks it may reuse; an image wholly cached never reaches stage 0 again;
 *   - a hit that ends inside an image: the image goes to stage 0 again and fills only its
 *     remaining rows;
 *   - eviction, least recently released first, a sequence's later blocks before its earlier;
 *   - a random workload (shared prefixes, images, conversations, cancels, preemptions, lost
 *     pipelines) with the pool checked after every event: every block used, cached or free,
 *     reference counts equal to the tables holding it;
 *   - the cache off, and turned on and off while serving. */
#include "tests/unit/sched_sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rand_below(uint64_t *rng, uint32_t n)
{
	*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(*rng >> 33) % n;
}

/* Random tokens and positions (index + 0..3) for [from, to). */
static void fill_random(int32_t *prompt, int32_t *pos, int from, int to, uint64_t *rng)
{
	for (int i = from; i < to; i++) {
		prompt[i] = (int32_t)(10 + rand_below(rng, 900));
		for (int a = 0; a < 3; a++)
			pos[3 * i + a] = i + (int)rand_below(rng, 4);
	}
}

static void submit(qw_sched *s, sim_seq *x)
{
	qw_err err = {0};
	if (qw_sched_submit(s, &x->q, x->max_new, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

/* x's prompt and answer as the prompt of a conversation's next turn, `more` tokens added
 * (the answer's positions as it had them: index + SIM_DELTA). */
static void next_turn(sim_seq *y, const sim_seq *x, uint64_t id, int more, int max_new,
		      uint64_t *rng)
{
	int n = x->n_prompt + x->generated + more;
	int32_t *prompt = malloc((size_t)n * sizeof *prompt), *pos = malloc((size_t)n * 3 * sizeof *pos);
	memcpy(prompt, x->prompt, (size_t)x->n_prompt * sizeof *prompt);
	memcpy(pos, x->pos, (size_t)x->n_prompt * 3 * sizeof *pos);
	for (int k = 0; k < x->generated; k++) {
		int i = x->n_prompt + k;
		prompt[i] = x->out[k];
		pos[3 * i] = pos[3 * i + 1] = pos[3 * i + 2] = i + SIM_DELTA;
	}
	fill_random(prompt, pos, n - more, n, rng);
	sim_seq_init(y, id, prompt, pos, n, x->n_img, x->img_pos, x->img_len, x->img_seed,
		     max_new);
	free(prompt);
	free(pos);
}

/* A repeated prompt, a shared beginning, the same tokens with another image, a
 * conversation's next turn, the same tokens at other positions: run together after the
 * first, each reuses exactly the blocks whose history it shares and gets its solo tokens. */
static void test_reuse_matches_solo(void **state)
{
	for (int depth = 1; depth <= 3; depth += 2) {
		qw_sched s;
		sim m;
		sim_make(&s, &m, depth, 24, 8, 64, true);
		uint64_t rng = 5;
		int32_t prompt[64], pos[192];
		fill_random(prompt, pos, 0, 64, &rng);
		int img_pos = 2, img_len = 6;
		uint8_t seed = 50, other = 51;
		sim_seq xs[6];
		/* A: 41 tokens, an image at rows 2..7 */
		sim_seq_init(&xs[0], 1, prompt, pos, 41, 1, &img_pos, &img_len, &seed, 6);
		submit(&s, &xs[0]);
		sim_drive(&m);
		/* B = A; C = A's first 23 tokens and 10 others; D = A with another image; E = A,
		 * its answer and 9 more; F = A with positions one further from token 30 on */
		sim_seq_init(&xs[1], 2, prompt, pos, 41, 1, &img_pos, &img_len, &seed, 6);
		int32_t c_prompt[33], c_pos[99];
		memcpy(c_prompt, prompt, 23 * sizeof *prompt);
		memcpy(c_pos, pos, 23 * 3 * sizeof *pos);
		fill_random(c_prompt, c_pos, 23, 33, &rng);
		sim_seq_init(&xs[2], 3, c_prompt, c_pos, 33, 1, &img_pos, &img_len, &seed, 5);
		sim_seq_init(&xs[3], 4, prompt, pos, 41, 1, &img_pos, &img_len, &other, 4);
		next_turn(&xs[4], &xs[0], 5, 9, 5, &rng);
		int32_t f_pos[123];
		memcpy(f_pos, pos, sizeof f_pos);
		for (int i = 3 * 30; i < 123; i++)
			f_pos[i]++;
		sim_seq_init(&xs[5], 6, prompt, f_pos, 41, 1, &img_pos, &img_len, &seed, 4);
		for (int i = 1; i < 6; i++)
			submit(&s, &xs[i]);
		sim_drive(&m);
		sim_check(xs, 6);
		sim_check_pool(&s);
		/* B: whole blocks short of its last token, 40; C: 5 blocks (block 5 holds its own
		 * token 23); D: none (block 0 holds image rows); E: the 11 blocks A filled (41
		 * prompt tokens and 5 of its 6 answer tokens were computed); F: 7 blocks */
		const int want[6] = {0, 40, 20, 0, 44, 28};
		for (int i = 0; i < 6; i++)
			if (xs[i].q.n_cached != want[i])
				fail_msg("depth %d, sequence %c: %d tokens from the cache, not %d", depth,
					 'A' + i, xs[i].q.n_cached, want[i]);
		assert_int_equal(s.prefix.lookups, 6);
		assert_int_equal(s.prefix.hits, 4);
		assert_int_equal(s.prefix.hit_tokens, 104 + 28);
		assert_int_equal(s.prefix.lookup_tokens, 41 + 41 + 33 + 41 + 56 + 41);
		assert_int_equal(s.prefix.images_skipped, 4);   /* B, C, E and F */
		assert_int_equal(m.fresh[seed], 1);              /* A's image, once */
		assert_int_equal(m.fresh[other], 1);
		sim_end(&s, &m, xs, 6);
	}
}

/* A prompt that ends in an image, repeated: the last token is computed, so the hit ends
 * inside the image, which goes to stage 0 again for its remaining rows; with more text
 * after it, the image is wholly cached and stage 0 does not see it. */
static void test_hit_inside_an_image(void **state)
{
	qw_sched s;
	sim m;
	sim_make(&s, &m, 2, 16, 4, 32, true);
	uint64_t rng = 9;
	int32_t prompt[17], pos[51];
	fill_random(prompt, pos, 0, 17, &rng);
	int img_pos = 2, img_len = 10;
	uint8_t seed = 60;
	sim_seq xs[3];
	sim_seq_init(&xs[0], 1, prompt, pos, 12, 1, &img_pos, &img_len, &seed, 3);
	submit(&s, &xs[0]);
	sim_drive(&m);
	sim_seq_init(&xs[1], 2, prompt, pos, 12, 1, &img_pos, &img_len, &seed, 3);
	submit(&s, &xs[1]);
	sim_drive(&m);
	assert_int_equal(xs[1].q.n_cached, 8);   /* (12 - 1) / 4 blocks: rows 2..7 of 10 */
	assert_int_equal(m.fresh[seed], 2);
	assert_int_equal(s.prefix.images_skipped, 0);
	sim_seq_init(&xs[2], 3, prompt, pos, 17, 1, &img_pos, &img_len, &seed, 3);
	submit(&s, &xs[2]);
	sim_drive(&m);
	assert_int_equal(xs[2].q.n_cached, 12);   /* A's 3 full prompt blocks */
	assert_int_equal(m.fresh[seed], 2);
	assert_int_equal(s.prefix.images_skipped, 1);
	sim_check(xs, 3);
	sim_check_pool(&s);
	sim_end(&s, &m, xs, 3);
}

/* Four 30-token prompts one after another in 24 blocks: each leaves 7 blocks cached, the
 * fourth evicts the first's last 5 (a sequence's later blocks go first); the fourth again
 * hits whole, the first again hits its 2 surviving blocks and evicts the second's. */
static void test_eviction_order(void **state)
{
	qw_sched s;
	sim m;
	sim_make(&s, &m, 1, 64, 2, 24, true);
	uint64_t rng = 17;
	int32_t prompt[4][30], pos[4][90];
	sim_seq xs[6];
	for (int i = 0; i < 6; i++) {
		int k = i < 4 ? i : i == 4 ? 3 : 0;
		if (i < 4)
			fill_random(prompt[i], pos[i], 0, 30, &rng);
		sim_seq_init(&xs[i], (uint64_t)(i + 1), prompt[k], pos[k], 30, 0, NULL, NULL, NULL, 2);
		submit(&s, &xs[i]);
		sim_drive(&m);
		sim_check_pool(&s);
		const int cached[6] = {7, 14, 21, 23, 23, 23}, free_[6] = {17, 10, 3, 1, 1, 1};
		const int hits[6] = {0, 0, 0, 0, 28, 8};
		const uint64_t evicted[6] = {0, 0, 0, 5, 5, 10};
		if (s.pool.n_cached != cached[i] || s.pool.n_free != free_[i] ||
		    xs[i].q.n_cached != hits[i] || s.pool.evictions != evicted[i])
			fail_msg("after prompt %d: %d cached, %d free, %d tokens hit, %llu evicted; "
				 "expected %d, %d, %d, %llu", i, s.pool.n_cached, s.pool.n_free,
				 xs[i].q.n_cached, (unsigned long long)s.pool.evictions, cached[i],
				 free_[i], hits[i], (unsigned long long)evicted[i]);
	}
	sim_check(xs, 6);
	sim_end(&s, &m, xs, 6);
}

// ---------------------------------------------------------------------------------------
// a random workload

enum { RANDOM_SEQS = 90, BASE_TOKENS = 48 };

typedef struct workload {
	int32_t base[3][BASE_TOKENS], base_pos[3][3 * BASE_TOKENS];
	sim_seq xs[RANDOM_SEQS];
	int n;
} workload;

/* The next sequence: a base prompt's beginning (bases 0 and 1 have the same tokens and
 * positions and different images at rows 10..15) and a suffix of its own, or an earlier
 * sequence's next turn. */
static void random_seq(workload *w, uint64_t *rng)
{
	sim_seq *x = &w->xs[w->n];
	uint64_t id = (uint64_t)w->n + 1;
	int max_new = 1 + (int)rand_below(rng, 12), more = 1 + (int)rand_below(rng, 16);
	if (w->n > 0 && rand_below(rng, 4) == 0) {
		const sim_seq *y = &w->xs[rand_below(rng, (uint32_t)w->n)];
		if (y->n_prompt + y->generated + more <= 80) {
			next_turn(x, y, id, more, max_new, rng);
			w->n++;
			return;
		}
	}
	int b = (int)rand_below(rng, 3), keep = (int)rand_below(rng, BASE_TOKENS + 1);
	int img_pos = 10, img_len = 6;
	uint8_t seed = (uint8_t)(70 + b);
	if (b < 2 && keep > img_pos && keep < img_pos + img_len)
		keep = img_pos + img_len;   /* an image is whole or absent */
	int n = keep + more;
	int32_t prompt[BASE_TOKENS + 16], pos[3 * (BASE_TOKENS + 16)];
	memcpy(prompt, w->base[b], (size_t)keep * sizeof *prompt);
	memcpy(pos, w->base_pos[b], (size_t)keep * 3 * sizeof *pos);
	fill_random(prompt, pos, keep, n, rng);
	bool image = b < 2 && keep >= img_pos + img_len;
	sim_seq_init(x, id, prompt, pos, n, image, &img_pos, &img_len, &seed, max_new);
	w->n++;
}

/* A random live sequence, or NULL. */
static sim_seq *random_live(workload *w, qw_sched *s, uint64_t *rng)
{
	for (int tries = 0; tries < 8 && w->n; tries++) {
		sim_seq *x = &w->xs[rand_below(rng, (uint32_t)w->n)];
		if (qw_sched_find(s, x->q.id) == &x->q)
			return x;
	}
	return NULL;
}

/* Sequences arrive while others run; some are cancelled, the pipeline is lost now and
 * then; the cache is tight, so decodes preempt and cached blocks are evicted.  The pool
 * is checked after every event, and every sequence's tokens against its solo run. */
static void test_random_workload(void **state)
{
	static workload w;
	memset(&w, 0, sizeof w);
	uint64_t rng = 2024;
	for (int b = 0; b < 3; b++)
		fill_random(w.base[b], w.base_pos[b], 0, BASE_TOKENS, &rng);
	memcpy(w.base[1], w.base[0], sizeof w.base[0]);
	memcpy(w.base_pos[1], w.base_pos[0], sizeof w.base_pos[0]);
	qw_sched s;
	sim m;
	sim_make(&s, &m, 3, 16, 6, 40, true);
	int32_t pend[8][256];
	int n_pend = 0, cancels = 0, resets = 0;
	for (int guard = 0; w.n < RANDOM_SEQS || s.running.n + s.queue.n + n_pend > 0; guard++) {
		assert_true(guard < 200000);
		uint32_t r = rand_below(&rng, 100);
		sim_seq *x;
		qw_step_plan p;
		if (w.n < RANDOM_SEQS && r < 12 && s.queue.n < 32) {
			random_seq(&w, &rng);
			submit(&s, &w.xs[w.n - 1]);
		} else if (r < 15 && (x = random_live(&w, &s, &rng))) {
			qw_sched_remove(&s, &x->q);
			x->cancelled = true;
			cancels++;
		} else if (r == 15 && resets < 3 && s.running.n > 0) {
			sim_reset(&m);
			n_pend = 0;   /* the steps in flight are gone */
			resets++;
		} else if (n_pend < 8 && qw_sched_next(&s, &p)) {
			sim_run_plan(&m, &p, pend[n_pend++]);
		} else if (n_pend > 0) {
			sim_complete(&m, pend[0]);
			memmove(pend[0], pend[1], sizeof pend[0] * (size_t)(n_pend - 1));
			n_pend--;
		}
		sim_check_pool(&s);
	}
	sim_check(w.xs, w.n);
	printf("# %d sequences: %llu preemptions, %d cancels, %d lost pipelines, %llu of %llu "
	       "tokens from the cache, %llu evictions\n", w.n, (unsigned long long)s.preempted,
	       cancels, resets, (unsigned long long)s.prefix.hit_tokens,
	       (unsigned long long)s.prefix.lookup_tokens, (unsigned long long)s.pool.evictions);
	/* the workload did what it is for */
	assert_true(s.preempted > 0 && cancels > 0 && resets > 0);
	assert_true(s.prefix.hits > 10 && s.pool.evictions > 0 && s.prefix.images_skipped > 0);
	assert_int_equal(qw_kv_used(&s.pool), 0);
	sim_end(&s, &m, w.xs, w.n);
}

// ---------------------------------------------------------------------------------------

/* Off: nothing is published or found, a repeated prompt is computed again, every block is
 * free at the end.  Turned on while serving, a repeat hits; turned off, the cached blocks
 * are free at once. */
static void test_off_and_toggled(void **state)
{
	qw_sched s;
	sim m;
	sim_make(&s, &m, 2, 16, 4, 32, false);
	uint64_t rng = 33;
	int32_t prompt[20], pos[60];
	fill_random(prompt, pos, 0, 20, &rng);
	sim_seq xs[4];
	for (int i = 0; i < 4; i++) {
		if (i == 2)
			qw_sched_set_prefix_cache(&s, true);
		sim_seq_init(&xs[i], (uint64_t)(i + 1), prompt, pos, 20, 0, NULL, NULL, NULL, 3);
		submit(&s, &xs[i]);
		sim_drive(&m);
		sim_check_pool(&s);
	}
	assert_int_equal(xs[1].q.n_cached, 0);
	assert_int_equal(xs[2].q.n_cached, 0);
	assert_int_equal(xs[3].q.n_cached, 16);
	assert_int_equal(s.prefix.lookups, 2);
	assert_int_equal(s.pool.n_cached, 5);   /* 22 tokens computed: 5 full blocks */
	qw_sched_set_prefix_cache(&s, false);
	assert_int_equal(s.pool.n_cached, 0);
	assert_int_equal(s.pool.n_free, 32);
	sim_check_pool(&s);
	sim_check(xs, 4);
	sim_end(&s, &m, xs, 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reuse_matches_solo),
		cmocka_unit_test(test_hit_inside_an_image),
		cmocka_unit_test(test_eviction_order),
		cmocka_unit_test(test_random_workload),
		cmocka_unit_test(test_off_and_toggled),
	};
	return cmocka_run_group_tests_name("sched prefix", tests, NULL, NULL);
}
