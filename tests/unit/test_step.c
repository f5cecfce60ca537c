/* test_step.c - the largest step plan a ring must hold (qw_step_plan_max_size): every plan
 * within the limits fits it, it is reached, and two past a limit go beyond it; a
 * plan of the largest size is written and read back whole, and as many of them as the
 * daemon sizes a ring for fit in that ring at once; results with and without
 * log-probabilities read back as written, within the largest result's size, and one
 * whose counts do not hold is refused. */
#include "tests/unit/helpers.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ipc/ring.h"
#include "ipc/step.h"

typedef struct counts {
	int tokens, seqs, logits, images, drop, blocks;
} counts;

static size_t size_of(counts c)
{
	qw_step_plan p = {.kind = QW_STEP_RUN, .n_tokens = c.tokens, .n_seqs = c.seqs,
			  .n_logits = c.logits, .n_images = c.images, .n_drop = c.drop,
			  .n_blocks = c.blocks};
	return qw_step_plan_size(&p);
}

static void test_every_plan_within_the_limits_fits(void **state)
{
	static const counts limits[] = {{1, 1, 1, 1, 0, 1}, {8192, 256, 256, 8192, 4096, 65536},
					{7, 3, 3, 7, 5, 11}, {1000, 1, 1, 1000, 16, 63}};
	srand(7);
	for (size_t l = 0; l < sizeof limits / sizeof *limits; l++) {
		counts m = limits[l];
		size_t max = qw_step_plan_max_size(m.tokens, m.seqs, m.blocks, m.drop);
		/* reached: every count at its limit (logit rows as many as sequences, image
		 * segments as many as tokens) */
		counts full = {m.tokens, m.seqs, m.seqs, m.tokens, m.drop, m.blocks};
		assert_int_equal(size_of(full), max);
		for (int i = 0; i < 2000; i++) {
			counts c = {1 + rand() % m.tokens, 1 + rand() % m.seqs, 0, 0,
				    rand() % (m.drop + 1), rand() % (m.blocks + 1)};
			c.logits = rand() % (c.seqs + 1);
			c.images = rand() % (c.tokens + 1);
			assert_true(size_of(c) <= max);
		}
		/* tight: two more of anything take more room (arrays are padded to 8 bytes, so
		 * one more int32 may fit the padding) */
		counts over[6];
		for (int k = 0; k < 6; k++)
			over[k] = full;
		over[0].tokens += 2, over[1].seqs += 2, over[2].logits += 2, over[3].images += 2;
		over[4].drop += 2, over[5].blocks += 2;
		for (int k = 0; k < 6; k++)
			assert_true(size_of(over[k]) > max);
	}
}

static int32_t *ints(size_t n, int32_t v)
{
	int32_t *p = calloc(n ? n : 1, sizeof *p);
	assert_non_null(p);
	for (size_t i = 0; i < n; i++)
		p[i] = v;
	return p;
}

/* A valid plan of T tokens of one sequence, every other count at its limit. */
static void test_largest_plans_fill_the_ring_sized_for_them(void **state)
{
	const int T = 300, S = 5, B = 77, D = 40, depth = 3;
	int32_t *tok = ints(T, 1), *pos = ints(3 * (size_t)T, 0), *seq = ints(T, 0),
		*kv = ints(T, 0), *slot = ints(T, 0), *start = ints(S + 1, B),
		*blocks = ints(B, 2), *rows = ints(S, 0);
	start[0] = 0;
	qw_sampling *samp = calloc(S, sizeof *samp);
	qw_step_history *hist = calloc(S, sizeof *hist);
	qw_step_image *im = calloc(T, sizeof *im);
	uint64_t *drop = calloc(D, sizeof *drop);
	assert_true(samp && hist && im && drop);
	hist[S - 1] = (qw_step_history){.arena_offset = 4096, .n = 17};
	for (int i = 0; i < T; i++)
		im[i] = (qw_step_image){.handle = 9, .grid = {1, 2, 2}, .height = 28, .width = 28,
					.n_tokens = T, .first = i, .count = 1, .row = i};
	qw_step_plan p = {.step = 1, .kind = QW_STEP_RUN, .n_tokens = T, .n_seqs = S,
			  .n_logits = S, .n_images = T, .n_drop = D, .n_blocks = B,
			  .token_ids = tok, .positions = pos, .seq = seq, .kv_index = kv,
			  .slot = slot, .block_start = start, .blocks = blocks, .logit_rows = rows,
			  .sampling = samp, .history = hist, .images = im, .drop = drop};
	size_t max = qw_step_plan_max_size(T, S, B, D);
	assert_int_equal(qw_step_plan_size(&p), max);
	void *buf = aligned_alloc(8, max);
	assert_non_null(buf);
	qw_step_plan_write(&p, buf);
	qw_step_plan back;
	qw_err err = {0};
	assert_int_equal(qw_step_plan_read(buf, max, &back, &err), QW_OK);
	assert_int_equal(back.n_images, T);
	assert_int_equal(back.images[T - 1].row, T - 1);
	assert_int_equal(back.drop[D - 1], 0);
	assert_int_equal(back.history[S - 1].n, 17);
	assert_int_equal(back.history[S - 1].arena_offset, 4096);

	/* the daemon's plan ring: depth + 1 of the largest records */
	size_t cap = (size_t)(depth + 1) * qw_ring_record_bytes(max);
	size_t bytes = qw_ring_footprint(cap);
	void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(mem != MAP_FAILED);
	qw_ring *r = qw_ring_init(mem, cap);
	const void *parts[] = {buf};
	for (int i = 0; i <= depth; i++)
		assert_int_equal(qw_ring_send(r, parts, &max, 1, 0, &err), QW_OK);
	munmap(mem, bytes);
	free(buf);
	free(tok), free(pos), free(seq), free(kv), free(slot), free(start), free(blocks);
	free(rows), free(samp), free(hist), free(im), free(drop);
}

static void test_results(void **state)
{
	enum { N = 3 };
	int32_t tokens[N] = {5, 6, 7};
	qw_sample_logprobs lp[N] = {{0}};
	lp[1] = (qw_sample_logprobs){.logprob = -0.5f, .n_top = 2, .top_ids = {6, 9},
				     .top_logprobs = {-0.5f, -1.5f}};
	size_t max = qw_step_result_max_size(N);
	void *buf = aligned_alloc(8, max);
	assert_non_null(buf);
	qw_err err = {0};
	/* without log-probabilities */
	qw_step_result r = {4, N, tokens, NULL}, back;
	size_t len = qw_step_result_size(&r);
	assert_true(len < max);
	qw_step_result_write(&r, buf);
	assert_int_equal(qw_step_result_read(buf, len, &back, &err), QW_OK);
	assert_int_equal(back.step, 4);
	assert_memory_equal(back.tokens, tokens, sizeof tokens);
	assert_null(back.logprobs);
	/* with them: the largest result */
	r.logprobs = lp;
	len = qw_step_result_size(&r);
	assert_int_equal(len, max);
	qw_step_result_write(&r, buf);
	assert_int_equal(qw_step_result_read(buf, len, &back, &err), QW_OK);
	assert_memory_equal(back.tokens, tokens, sizeof tokens);
	assert_non_null(back.logprobs);
	assert_memory_equal(back.logprobs, lp, sizeof lp);
	/* a length that does not match, and a count of top ones past 20 */
	assert_int_equal(qw_step_result_read(buf, len - 8, &back, &err), QW_E_IO);
	lp[2].n_top = QW_MAX_TOP_LOGPROBS + 1;
	qw_step_result_write(&r, buf);
	assert_int_equal(qw_step_result_read(buf, len, &back, &err), QW_E_IO);
	assert_contains(err.msg, "row 2");
	free(buf);
}

static void test_record_bytes(void **state)
{
	/* a u32 length before the message, padded to 8 */
	assert_int_equal(qw_ring_record_bytes(0), 8);
	assert_int_equal(qw_ring_record_bytes(4), 8);
	assert_int_equal(qw_ring_record_bytes(5), 16);
	assert_int_equal(qw_ring_record_bytes(1000), 1008);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_plan_within_the_limits_fits),
		cmocka_unit_test(test_largest_plans_fill_the_ring_sized_for_them),
		cmocka_unit_test(test_record_bytes),
		cmocka_unit_test(test_results),
	};
	return cmocka_run_group_tests_name("step", tests, NULL, NULL);
}
