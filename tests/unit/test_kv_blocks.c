/* test_kv_blocks.c - the KV block pool: tables grow block by block, slots follow the table,
 * exhaustion refuses without side effects; the prefix cache publishes full blocks, finds
 * them only with their parent, tokens and a later step, shares them by reference, keeps
 * released ones in LRU order and evicts them only when no block is free; and under random
 * grow / publish / share / free traffic every block is used, cached or free, never two of
 * them, with reference counts equal to the tables holding it. */
#include "tests/unit/sched_sim.h"

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

static const int32_t t0[4] = {1, 2, 3, 4}, t1[4] = {5, 6, 7, 8};

/* Publish, find, share, release into the LRU list, evict, forget. */
static void test_prefix_cache(void **state)
{
	qw_kv_pool p;
	qw_err err = {0};
	assert_int_equal(qw_kv_pool_init(&p, 6, 4, &err), QW_OK);
	qw_kv_seq a = {0}, b = {0}, c = {0};
	assert_int_equal(qw_kv_grow(&p, &a, 9, &err), QW_OK);
	qw_kv_publish(&p, &a, 0, 11, 0, t0, 5);
	qw_kv_publish(&p, &a, 1, 12, 11, t1, 5);
	qw_kv_publish(&p, &a, 2, 13, 12, t1, 5);   /* block 2 holds 1 token: not full */
	assert_int_equal(a.n_published, 2);
	assert_false(p.published[a.blocks[2]]);
	/* found by key, parent and tokens, from a step after the one that writes it */
	assert_int_equal(qw_kv_find(&p, 11, 0, t0, 5), -1);
	assert_int_equal(qw_kv_find(&p, 11, 0, t0, 6), a.blocks[0]);
	assert_int_equal(qw_kv_find(&p, 12, 11, t1, 6), a.blocks[1]);
	assert_int_equal(qw_kv_find(&p, 12, 99, t1, 6), -1);      /* another parent */
	assert_int_equal(qw_kv_find(&p, 12, 11, t0, 6), -1);      /* other tokens */
	assert_int_equal(qw_kv_find(&p, 14, 11, t1, 6), -1);
	/* shared: two references; a table that holds a partial block takes no more */
	assert_int_equal(qw_kv_share(&p, &b, a.blocks[0], &err), QW_OK);
	assert_int_equal(qw_kv_share(&p, &b, a.blocks[1], &err), QW_OK);
	assert_int_equal(b.n_tokens, 8);
	assert_int_equal(b.n_published, 2);
	assert_int_equal(p.ref[a.blocks[0]], 2);
	assert_int_equal(qw_kv_grow(&p, &b, 1, &err), QW_OK);
	assert_int_equal(qw_kv_share(&p, &b, a.blocks[0], &err), QW_E_ARG);
	assert_int_equal(qw_kv_used(&p), 4);
	int32_t a0 = a.blocks[0], a1 = a.blocks[1];
	qw_kv_free(&p, &a);
	assert_int_equal(p.n_cached, 0);    /* b still holds both */
	assert_int_equal(p.n_free, 3);
	qw_kv_free(&p, &b);
	assert_int_equal(p.n_cached, 2);
	assert_int_equal(p.n_free, 4);
	assert_int_equal(qw_kv_used(&p), 0);
	assert_int_equal(qw_kv_available(&p), 6);
	assert_int_equal(p.lru_head, a1);   /* the later block is evicted first */
	/* a sharer takes a cached block out of the LRU list, and gives it back on release */
	assert_int_equal(qw_kv_share(&p, &c, a0, &err), QW_OK);
	assert_int_equal(p.n_cached, 1);
	qw_kv_free(&p, &c);
	assert_int_equal(p.lru_tail, a0);
	/* the free blocks go first, then the oldest cached */
	assert_int_equal(qw_kv_grow(&p, &c, 16, &err), QW_OK);
	assert_int_equal(p.evictions, 0);
	assert_int_equal(qw_kv_grow(&p, &c, 4, &err), QW_OK);
	assert_int_equal(p.evictions, 1);
	assert_int_equal(qw_kv_find(&p, 12, 11, t1, 6), -1);
	assert_int_equal(qw_kv_find(&p, 11, 0, t0, 6), a0);
	/* a key that is taken: the second copy stays private and is free once released */
	qw_kv_publish(&p, &c, 0, 11, 0, t0, 7);
	assert_false(p.published[c.blocks[0]]);
	assert_int_equal(c.n_published, 1);
	qw_kv_publish(&p, &c, 1, 21, 11, t1, 7);
	assert_true(p.published[c.blocks[1]]);
	qw_kv_free(&p, &c);
	assert_int_equal(p.n_cached, 2);
	/* off: the cached blocks are free, nothing is found or published */
	qw_kv_set_caching(&p, false);
	assert_int_equal(p.n_cached, 0);
	assert_int_equal(p.n_free, 6);
	assert_int_equal(qw_kv_find(&p, 11, 0, t0, 9), -1);
	assert_int_equal(qw_kv_grow(&p, &a, 4, &err), QW_OK);
	qw_kv_publish(&p, &a, 0, 11, 0, t0, 9);
	assert_false(p.published[a.blocks[0]]);
	qw_kv_free(&p, &a);
	qw_kv_set_caching(&p, true);
	qw_kv_pool_free(&p);
}

/* The content key of block j of stream s: every table of one stream holds the same
 * content, so tables of a stream share blocks. */
static uint64_t stream_key(int s, int j)
{
	return 1000u * (uint64_t)(s + 1) + (uint64_t)j + 1;
}

static void stream_tokens(int s, int j, int32_t *t)
{
	for (int i = 0; i < 4; i++)
		t[i] = (int32_t)(stream_key(s, j) * 4 + (uint64_t)i);
}

static void test_random_traffic(void **state)
{
	enum { SEQS = 12, BLOCKS = 40 };
	qw_kv_pool p;
	qw_err err = {0};
	assert_int_equal(qw_kv_pool_init(&p, BLOCKS, 4, &err), QW_OK);
	qw_kv_seq s[SEQS];
	const qw_kv_seq *tables[SEQS];
	int stream[SEQS];
	memset(s, 0, sizeof s);
	for (int k = 0; k < SEQS; k++) {
		tables[k] = &s[k];
		stream[k] = k % 3;
	}
	uint64_t rng = 11, shared = 0, evicted_seen = 0;
	for (uint64_t step = 1; step < 20000; step++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		int i = (int)((rng >> 33) % SEQS), op = (int)((rng >> 20) % 10);
		int32_t t[4];
		if (op == 0) {
			qw_kv_free(&p, &s[i]);
			stream[i] = (int)((rng >> 8) % 3);
		} else if (op == 1 && s[i].n_blocks == 0) {
			/* admission: the stream's cached blocks, as far as they go */
			for (int j = 0;; j++) {
				stream_tokens(stream[i], j, t);
				int32_t b = qw_kv_find(&p, stream_key(stream[i], j),
						       j ? stream_key(stream[i], j - 1) : 0, t, step);
				if (b < 0)
					break;
				assert_memory_equal(p.tokens + (size_t)b * 4, t, sizeof t);
				assert_int_equal(qw_kv_share(&p, &s[i], b, &err), QW_OK);
				shared++;
			}
		} else {
			int tokens = op == 2 ? (int)((rng >> 8) % 40) : 1;   /* prefill or decode */
			bool could = qw_kv_can_grow(&p, &s[i], tokens);
			qw_status st = qw_kv_grow(&p, &s[i], tokens, &err);
			assert_int_equal(st == QW_OK, could);
			for (int j = s[i].n_published; st == QW_OK && (j + 1) * 4 <= s[i].n_tokens; j++) {
				stream_tokens(stream[i], j, t);
				qw_kv_publish(&p, &s[i], j, stream_key(stream[i], j),
					      j ? stream_key(stream[i], j - 1) : 0, t, step);
			}
		}
		evicted_seen = p.evictions;
		sim_check_tables(&p, tables, SEQS);
	}
	assert_true(shared > 1000 && evicted_seen > 100);
	for (int k = 0; k < SEQS; k++)
		qw_kv_free(&p, &s[k]);
	assert_int_equal(p.n_free + p.n_cached, BLOCKS);
	qw_kv_pool_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_grow_and_slots),
		cmocka_unit_test(test_prefix_cache),
		cmocka_unit_test(test_random_traffic),
	};
	return cmocka_run_group_tests_name("kv-blocks", tests, NULL, NULL);
}
