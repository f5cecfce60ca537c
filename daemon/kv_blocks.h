/* kv_blocks.h - the paged KV cache's bookkeeping: which fixed-size blocks each sequence
 * holds, and the prefix cache that keeps full blocks for later sequences.
 *
 * Owns: a pool of n_blocks block ids (the KV memory itself lives in each stage's backend;
 * every stage allocates the same number of blocks, so one id names the same slot range on
 * all of them), per-sequence block tables that grow as the sequence does, a reference count
 * per block (sequences that share a prefix hold the same blocks), and the prefix cache:
 * a full block whose tokens are all scheduled may be published under a content key the
 * caller computes (the scheduler: parent key, tokens, positions, images); it then outlives
 * its sequence and is found again by key.
 *
 * Every block is in exactly one state, so used + cached + free = n_blocks:
 *   used    held by at least one sequence (ref > 0), published or not;
 *   cached  held by none, published: kept for reuse, least recently released evicted first
 *           when a sequence needs a block and none is free;
 *   free    held by none, not published.
 * A block is written only through the table of the one sequence that grew into it; a
 * published block is never handed out for writing until it is evicted, and a used block is
 * never evicted.  Steps run in order on every stage, so a block released while a step that
 * writes it is in flight may be reused or found at once by a later step.
 *
 * The scheduler asks before it admits work (qw_kv_can_grow), grows a sequence by tokens
 * (qw_kv_grow), takes cached blocks by reference at admission (qw_kv_find, qw_kv_share),
 * publishes full blocks as their tokens are scheduled (qw_kv_publish), and releases a
 * finished, cancelled or preempted sequence at once (qw_kv_free).
 */
#ifndef QW_DAEMON_KV_BLOCKS_H
#define QW_DAEMON_KV_BLOCKS_H

#include <stdbool.h>
#include <stdint.h>

#include "loader/error.h"

#define QW_KV_MAX_BLOCKS (1 << 28)   /* keeps the key table's size an int */

typedef struct qw_kv_seq {
	int32_t *blocks;        /* (n_blocks,) the sequence's block table, in token order */
	int n_blocks, cap;
	int n_tokens;           /* tokens whose K/V the blocks hold */
	int n_published;        /* leading blocks offered to the prefix cache (or taken from it) */
} qw_kv_seq;

typedef struct qw_kv_pool {
	int block_size;         /* tokens per block */
	int n_blocks;
	int32_t *free_list;     /* (n_free,) a stack of free block ids */
	int n_free;
	int32_t *ref;           /* (n_blocks,) sequences holding each block */
	/* the prefix cache */
	bool caching;           /* publishing and finding are on */
	uint8_t *published;     /* (n_blocks,) 1 while the block is in the key table */
	uint64_t *key;          /* (n_blocks,) a published block's content key */
	uint64_t *parent;       /* (n_blocks,) the key of the block before it (0: the first) */
	uint64_t *ready_step;   /* (n_blocks,) the step that writes its last entries */
	int32_t *tokens;        /* (n_blocks, block_size) its tokens, checked on every find */
	int32_t *table;         /* (table_cap,) key -> block, open addressing, -1 empty */
	int table_cap;
	int32_t *lru_prev, *lru_next;   /* (n_blocks,) the cached blocks, oldest first */
	int32_t lru_head, lru_tail;     /* -1 when none */
	int n_cached;
	uint64_t evictions;     /* cached blocks taken back for new writes */
} qw_kv_pool;

/* A pool with the prefix cache on. */
qw_status qw_kv_pool_init(qw_kv_pool *p, int n_blocks, int block_size, qw_err *err);
void qw_kv_pool_free(qw_kv_pool *p);

/* Turns the prefix cache on or off; off forgets every published block (cached ones become
 * free, used ones stay with their sequences). */
void qw_kv_set_caching(qw_kv_pool *p, bool on);

/* Forgets every published block: after a pipeline restart the blocks' contents are gone. */
void qw_kv_forget_all(qw_kv_pool *p);

/* Blocks a sequence of n_tokens needs. */
int qw_kv_blocks_for(const qw_kv_pool *p, int n_tokens);

/* Blocks a sequence may still get: free ones and cached ones (evicted on demand). */
int qw_kv_available(const qw_kv_pool *p);

/* Blocks held by sequences. */
int qw_kv_used(const qw_kv_pool *p);

/* Whether seq (NULL: a new one) could grow by `tokens` with the blocks available now. */
bool qw_kv_can_grow(const qw_kv_pool *p, const qw_kv_seq *seq, int tokens);

/* Grows seq by `tokens` (taking free blocks first, then evicting the oldest cached ones);
 * the slot of its token i is blocks[i / block_size] * block_size + i % block_size.  Refuses
 * (QW_E_NOMEM, seq unchanged) when too few blocks are available: the caller queues or
 * preempts. */
qw_status qw_kv_grow(qw_kv_pool *p, qw_kv_seq *seq, int tokens, qw_err *err);

/* The cache slot of token i of seq. */
int32_t qw_kv_slot(const qw_kv_pool *p, const qw_kv_seq *seq, int i);

/* Releases all of seq's blocks (a cached block goes back to the cache as its most recently
 * used, the sequence's later blocks before its earlier ones, so a prefix outlives its
 * continuations) and empties seq. */
void qw_kv_free(qw_kv_pool *p, qw_kv_seq *seq);

/* The published block of `key` whose parent key and tokens (block_size of them) are these
 * and whose entries a step before `step` writes, or -1. */
int32_t qw_kv_find(const qw_kv_pool *p, uint64_t key, uint64_t parent, const int32_t *tokens,
		   uint64_t step);

/* Appends published block b to seq's table by reference (seq holds only whole shared
 * blocks so far); it stops being evictable. */
qw_status qw_kv_share(qw_kv_pool *p, qw_kv_seq *seq, int32_t b, qw_err *err);

/* Block j of seq (the next one to publish: j == seq->n_published) is full, its tokens
 * scheduled in `step`: publishes it under key unless the key is taken (another sequence
 * computed the same content first; this copy then stays private).  Does nothing with the
 * cache off. */
void qw_kv_publish(qw_kv_pool *p, qw_kv_seq *seq, int j, uint64_t key, uint64_t parent,
		   const int32_t *tokens, uint64_t step);

#endif
