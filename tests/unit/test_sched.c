/* test_sched.c - the scheduler against a simulated pipeline (sched_sim.h): batching,
 * chunking, queueing, preemption, refusals, removal and a lost pipeline; the penalties'
 * histories carried whole with every logit row, and waiting for room in the arena.  Every
 * sequence must get exactly the tokens it gets when run alone.  The prefix cache has its
 * own tests (test_sched_prefix.c); these run with it off and on. */
#include "tests/unit/sched_sim.h"

#include <stdlib.h>
#include <string.h>

/* Many sequences, three steps in flight, a cache small enough to preempt: every sequence
 * gets its solo tokens, and everything is given back at the end. */
static void test_mixed_load_matches_solo(void **state)
{
	const int depths[] = {1, 3};
	for (int k = 0; k < 4; k++) {
		bool cache = k >= 2;
		qw_sched s;
		sim m;
		sim_make(&s, &m, depths[k % 2], 24, 8, 40, cache);
		sim_seq xs[16];
		uint64_t rng = 42;
		for (int i = 0; i < 16; i++) {
			sim_seq_random(&xs[i], (uint64_t)(i + 1), 1 + (i * 37) % 90, 1 + i % 3,
				       1 + (i * 7) % 20, &rng);
			qw_err err = {0};
			if (qw_sched_submit(&s, &xs[i].q, xs[i].max_new, &err) != QW_OK)
				fail_msg("%s", err.msg);
		}
		sim_drive(&m);
		sim_check(xs, 16);
		sim_check_pool(&s);
		assert_int_equal(s.pool.n_free + s.pool.n_cached, 40);
		if (!cache)
			assert_int_equal(s.pool.n_free, 40);
		assert_int_equal(s.running.n + s.queue.n, 0);
		assert_int_equal(s.n_arena_free, 1);
		assert_int_equal(s.arena_free[0].bytes, 1 << 16);
		assert_int_equal(m.n_handles, 0);   /* stage 0 holds no image features */
		assert_true(s.preempted > 0);   /* the cache was tight enough to preempt */
		sim_end(&s, &m, xs, 16);
	}
}

/* Steady decoding with a deep pipeline: steps are filled evenly. */
static void test_decode_cadence(void **state)
{
	qw_sched s;
	sim m;
	sim_make(&s, &m, 3, 256, 16, 64, true);
	sim_seq xs[9];
	uint64_t rng = 7;
	for (int i = 0; i < 9; i++) {
		sim_seq_random(&xs[i], (uint64_t)(i + 1), 2, 0, 20, &rng);
		assert_int_equal(qw_sched_submit(&s, &xs[i].q, 20, NULL), QW_OK);
	}
	sim_drive(&m);
	sim_check(xs, 9);
	assert_true(m.max_logits_per_step <= 3);
	sim_end(&s, &m, xs, 9);
}

static void test_refusals_and_removal(void **state)
{
	qw_sched s;
	sim m;
	sim_make(&s, &m, 2, 16, 4, 64, false);
	uint64_t rng = 1;
	sim_seq big, x, y;
	qw_err err = {0};
	sim_seq_random(&big, 1, 200, 0, 60, &rng);   /* 260 tokens: more than 64 blocks of 4 */
	assert_int_equal(qw_sched_submit(&s, &big.q, 60, &err), QW_E_LIMIT);
	assert_contains(err.msg, "the cache holds 64");
	sim_seq_free(&big, false);

	/* a full queue answers QW_E_FULL */
	s.o.max_queue = 1;
	sim_seq_random(&x, 2, 10, 0, 5, &rng);
	assert_int_equal(qw_sched_submit(&s, &x.q, 5, &err), QW_OK);
	sim_seq_random(&y, 3, 10, 0, 5, &rng);
	assert_int_equal(qw_sched_submit(&s, &y.q, 5, &err), QW_E_FULL);
	sim_seq_free(&y, false);

	/* removed while its step is in flight: its blocks come back at once and its token is
	 * ignored */
	qw_step_plan p;
	assert_true(qw_sched_next(&s, &p));
	int32_t tokens[4];
	sim_run_plan(&m, &p, tokens);
	assert_true(s.pool.n_free < 64);
	assert_true(x.q.awaiting);
	qw_sched_remove(&s, &x.q);
	assert_int_equal(s.pool.n_free, 64);
	assert_null(qw_sched_find(&s, 2));
	sim_complete(&m, tokens);
	assert_int_equal(x.generated, 0);
	assert_false(qw_sched_next(&s, &p));
	sim_end(&s, &m, &x, 1);
}

/* A lost pipeline: running sequences are handed back, queued ones stay and then finish. */
static void test_reset(void **state)
{
	for (int cache = 0; cache < 2; cache++) {
		qw_sched s;
		sim m;
		sim_make(&s, &m, 2, 8, 2, 64, cache);
		uint64_t rng = 3;
		sim_seq xs[4];
		for (int i = 0; i < 4; i++) {
			sim_seq_random(&xs[i], (uint64_t)(i + 1), 20, 0, 4, &rng);
			assert_int_equal(qw_sched_submit(&s, &xs[i].q, 4, NULL), QW_OK);
		}
		qw_step_plan p;
		int32_t tokens[8];
		assert_true(qw_sched_next(&s, &p));
		sim_run_plan(&m, &p, tokens);
		assert_int_equal(s.running.n, 1);   /* one admitted: its first chunk fills the step */
		assert_true(s.pool.n_blocks - s.pool.n_free == 2);
		sim_reset(&m);
		assert_true(xs[0].lost);
		assert_int_equal(s.pool.n_free, 64);   /* nothing is cached from the lost workers */
		assert_int_equal(qw_sched_inflight(&s), 0);
		sim_drive(&m);
		sim_check(xs + 1, 3);
		sim_end(&s, &m, xs, 4);
	}
}

/* Sequences with penalties among the others, through preemption and with the prefix cache
 * off and on: every logit row carries the history the sequence's tokens make (the
 * simulation checks each), and the arena is given back. */
static void test_histories(void **state)
{
	for (int k = 0; k < 4; k++) {
		bool cache = k >= 2;
		qw_sched s;
		sim m;
		sim_make(&s, &m, k % 2 ? 3 : 1, 24, 8, 40, cache);
		sim_seq xs[16];
		uint64_t rng = 5;
		for (int i = 0; i < 16; i++) {
			sim_seq_random(&xs[i], (uint64_t)(i + 1), 1 + (i * 37) % 90, i % 2,
				       1 + (i * 7) % 20, &rng);
			if (i % 3)
				sim_seq_penalize(&xs[i], i % 3 == 1);
			qw_err err = {0};
			if (qw_sched_submit(&s, &xs[i].q, xs[i].max_new, &err) != QW_OK)
				fail_msg("%s", err.msg);
		}
		sim_drive(&m);
		sim_check(xs, 16);
		assert_true(s.preempted > 0);
		assert_int_equal(s.n_arena_free, 1);
		assert_int_equal(s.arena_free[0].bytes, SIM_ARENA);
		sim_end(&s, &m, xs, 16);
	}
}

/* Six sequences with penalties decoding at once, one step in flight, in an arena of
 * arena_bytes: every one gets its tokens; returns the most logit rows a step had. */
static int decode_with_arena(uint64_t arena_bytes)
{
	qw_sched s;
	sim m;
	sim_make_arena(&s, &m, 1, 64, 8, 200, false, arena_bytes);
	sim_seq xs[6];
	uint64_t rng = 11;
	for (int i = 0; i < 6; i++) {
		sim_seq_random(&xs[i], (uint64_t)(i + 1), 30, 0, 20, &rng);
		sim_seq_penalize(&xs[i], true);   /* 30 to 50 entries: 256 to 448 arena bytes */
		assert_int_equal(qw_sched_submit(&s, &xs[i].q, 20, NULL), QW_OK);
	}
	sim_drive(&m);
	sim_check(xs, 6);
	assert_int_equal(s.n_arena_free, 1);
	assert_int_equal(s.arena_free[0].bytes, arena_bytes);
	int most = m.max_logits_per_step;
	sim_end(&s, &m, xs, 6);
	return most;
}

/* An arena with room for at most four histories: the other logit rows wait for a later
 * step (with room for all, each step samples all six); one whose history could never fit
 * is refused. */
static void test_history_waits_for_room(void **state)
{
	assert_int_equal(decode_with_arena(SIM_ARENA), 6);
	int most = decode_with_arena(1024);
	assert_true(most >= 2 && most <= 4);
	qw_sched s;
	sim m;
	sim_make_arena(&s, &m, 1, 64, 8, 200, false, 1024);
	uint64_t rng = 3;
	sim_seq big;
	sim_seq_random(&big, 1, 100, 0, 60, &rng);
	sim_seq_penalize(&big, false);   /* the prompt is not kept: 60 entries at most */
	assert_int_equal(qw_sched_submit(&s, &big.q, 60, NULL), QW_OK);
	sim_drive(&m);
	sim_check(&big, 1);
	sim_seq huge;
	sim_seq_random(&huge, 2, 100, 0, 60, &rng);
	sim_seq_penalize(&huge, true);   /* 60 and the prompt's (over 80): past 128 */
	qw_err err = {0};
	assert_int_equal(qw_sched_submit(&s, &huge.q, 60, &err), QW_E_LIMIT);
	assert_contains(err.msg, "penalties' history");
	sim_seq_free(&huge, false);
	sim_end(&s, &m, &big, 1);
}

/* Images split across steps stay on stage 0, whose memory for them is fixed (vision_tokens
 * V): a step that would split an image while the ones split before it hold too many tokens
 * stops before it.  A load of prompts with images of 4, 6 and 8 tokens, in steps of 6 tokens
 * with an arena for two images (so a sequence whose image did not fit waits while a later one
 * splits its own): without the limit stage 0 holds 12 tokens from one step to the next; with
 * V 8 at most 8 (and 16 while it sees the next image), every sequence gets its solo tokens,
 * prefix cache off and on.  An image larger than V is refused. */
static void held_images(int vision_tokens, bool cache, sim *m)
{
	qw_sched s;
	sim_make_arena(&s, m, 3, 6, 4, 400, cache, 2 * 12288);
	s.o.vision_tokens = vision_tokens;
	sim_seq xs[12];
	uint64_t rng = 2;
	for (int i = 0; i < 12; i++) {
		sim_seq_random(&xs[i], (uint64_t)(i + 1), 30 + (int)((rng >> 20) % 60), 3,
			       1 + i % 4, &rng);
		qw_err err = {0};
		if (qw_sched_submit(&s, &xs[i].q, xs[i].max_new, &err) != QW_OK)
			fail_msg("%s", err.msg);
	}
	sim_drive(m);
	sim_check(xs, 12);
	assert_int_equal(m->n_handles, 0);
	assert_int_equal(s.running.n + s.queue.n, 0);
	sim_end(&s, m, xs, 12);
}

static void test_images_held_within_vision_tokens(void **state)
{
	for (int cache = 0; cache < 2; cache++) {
		sim m;
		held_images(0, cache, &m);
		assert_int_equal(m.held_after, 12);   /* what the limit prevents */
		held_images(8, cache, &m);
		assert_true(m.held_after <= 8 && m.held_split <= 8 && m.held_peak <= 16);
		assert_true(m.held_after > 0);   /* images were still split */
	}
	/* an image larger than stage 0 has memory for is refused at once */
	qw_sched s;
	sim m;
	sim_make(&s, &m, 2, 10, 4, 400, false);
	s.o.vision_tokens = 7;
	sim_seq x;
	uint64_t rng = 5;
	sim_seq_random(&x, 1, 60, 3, 2, &rng);   /* its third image has 8 tokens */
	qw_err err = {0};
	assert_int_equal(qw_sched_submit(&s, &x.q, 2, &err), QW_E_LIMIT);
	assert_contains(err.msg, "image 3 takes 8 tokens");
	assert_contains(err.msg, "max-image-tokens");
	sim_seq_free(&x, false);
	sim_end(&s, &m, NULL, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mixed_load_matches_solo),
		cmocka_unit_test(test_decode_cadence),
		cmocka_unit_test(test_refusals_and_removal),
		cmocka_unit_test(test_reset),
		cmocka_unit_test(test_histories),
		cmocka_unit_test(test_history_waits_for_room),
		cmocka_unit_test(test_images_held_within_vision_tokens),
	};
	return cmocka_run_group_tests_name("sched", tests, NULL, NULL);
}
