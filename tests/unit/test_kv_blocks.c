/* test_kv_blocks.c - the KV block pool: tables grow block by block, slots follow the table,
 * exhaustion refuses without side effects, and under random grow / free no block is ever
 * held twice or lost. */
#include "tests/unit/helpers.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/kv_blocks.h"

static void test_grow_and_slots(void **state)
{
	qw_kv_pool p;
	qw_err err = {0};
	assert_int_equal(qw_kv_pool_init(&p, 5, 4, &err), QW_OK);
	qw_kv_seq a = {0}, b = {0};
	assert_int_equal(qw_kv_grow(&p, &a, 6, &err), QW_OK);       /* prompt of 6: 2 blocks */
	assert_int_equal(a.n_blocks, 2);
	assert_int_equal(p.n_free, 3);
	assert_int_equal(qw_kv_grow(&p, &a, 2, &err), QW_OK);       /* 8 tokens: still 2 */
	assert_int_equal(a.n_blocks, 2);
	assert_int_equal(qw_kv_grow(&p, &a, 1, &err), QW_OK);       /* 9: a third */
	assert_int_equal(a.n_blocks, 3);
	for (int i = 0; i < 9; i++)
		assert_int_equal(qw_kv_slot(&p, &a, i), a.blocks[i / 4] * 4 + i % 4);
	assert_true(qw_kv_can_grow(&p, &b, 8));
	assert_false(qw_kv_can_grow(&p, &b, 9));                     /* 3 blocks needed, 2 free */
	assert_int_equal(qw_kv_grow(&p, &b, 9, &err), QW_E_NOMEM);
	assert_contains(err.msg, "2 free blocks");
	assert_int_equal(b.n_blocks, 0);                             /* unchanged */
	assert_int_equal(p.n_free, 2);
	qw_kv_free(&p, &a);
	assert_int_equal(p.n_free, 5);
	assert_int_equal(qw_kv_grow(&p, &b, 9, &err), QW_OK);
	qw_kv_free(&p, &b);
	qw_kv_pool_free(&p);
	assert_int_equal(qw_kv_pool_init(&p, 0, 4, &err), QW_E_ARG);
}

static void test_random_traffic(void **state)
{
	enum { SEQS = 12, BLOCKS = 40 };
	qw_kv_pool p;
	qw_err err = {0};
	assert_int_equal(qw_kv_pool_init(&p, BLOCKS, 16, &err), QW_OK);
	qw_kv_seq s[SEQS];
	memset(s, 0, sizeof s);
	uint64_t rng = 11;
	for (int step = 0; step < 20000; step++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		int i = (int)((rng >> 33) % SEQS), op = (int)((rng >> 20) % 10);
		if (op == 0) {
			qw_kv_free(&p, &s[i]);
		} else {
			int tokens = op == 1 ? (int)((rng >> 8) % 200) : 1;   /* prefill or decode */
			bool could = qw_kv_can_grow(&p, &s[i], tokens);
			qw_status st = qw_kv_grow(&p, &s[i], tokens, &err);
			assert_int_equal(st == QW_OK, could);
		}
		/* every block is either free or in exactly one table */
		int seen[BLOCKS] = {0}, held = 0;
		for (int k = 0; k < SEQS; k++) {
			assert_int_equal(s[k].n_blocks, qw_kv_blocks_for(&p, s[k].n_tokens));
			for (int j = 0; j < s[k].n_blocks; j++, held++)
				seen[s[k].blocks[j]]++;
		}
		for (int j = 0; j < p.n_free; j++)
			seen[p.free_list[j]]++;
		assert_int_equal(held + p.n_free, BLOCKS);
		for (int j = 0; j < BLOCKS; j++)
			assert_int_equal(seen[j], 1);
	}
	for (int k = 0; k < SEQS; k++)
		qw_kv_free(&p, &s[k]);
	assert_int_equal(p.n_free, BLOCKS);
	qw_kv_pool_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_grow_and_slots),
		cmocka_unit_test(test_random_traffic),
	};
	return cmocka_run_group_tests_name("kv-blocks", tests, NULL, NULL);
}
