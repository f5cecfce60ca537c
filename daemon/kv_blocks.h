/* kv_blocks.h - the paged KV cache's bookkeeping: which fixed-size blocks each sequence
 * holds.
 *
 * Owns: a pool of n_blocks block ids (the KV memory itself lives in each stage's backend;
 * every stage allocates the same number of blocks, so one id names the same slot range on
 * all of them), the free list, and per-sequence block tables that grow as the sequence does.
 * The scheduler asks before it admits work (qw_kv_can_grow), grows a sequence by tokens
 * (qw_kv_grow), and frees a finished, cancelled or abandoned sequence at once (qw_kv_free).
 */
#ifndef QW_DAEMON_KV_BLOCKS_H
#define QW_DAEMON_KV_BLOCKS_H

#include <stdbool.h>
#include <stdint.h>

#include "loader/error.h"

typedef struct qw_kv_seq {
	int32_t *blocks;        /* (n_blocks,) the sequence's block table, in token order */
	int n_blocks, cap;
	int n_tokens;           /* tokens whose K/V the blocks hold */
} qw_kv_seq;

typedef struct qw_kv_pool {
	int block_size;         /* tokens per block */
	int n_blocks;
	int32_t *free_list;     /* (n_free,) a stack of free block ids */
	int n_free;
	uint8_t *owner;         /* (n_blocks,) 1 while a sequence holds the block */
} qw_kv_pool;

qw_status qw_kv_pool_init(qw_kv_pool *p, int n_blocks, int block_size, qw_err *err);
void qw_kv_pool_free(qw_kv_pool *p);

/* Blocks a sequence of n_tokens needs. */
int qw_kv_blocks_for(const qw_kv_pool *p, int n_tokens);

/* Whether seq (NULL: a new one) could grow by `tokens` with the blocks free now. */
bool qw_kv_can_grow(const qw_kv_pool *p, const qw_kv_seq *seq, int tokens);

/* Grows seq by `tokens` (allocating blocks as needed); the slot of its token i is
 * blocks[i / block_size] * block_size + i % block_size.  Refuses (QW_E_NOMEM, seq unchanged)
 * when the pool has too few free blocks: the caller queues or preempts. */
qw_status qw_kv_grow(qw_kv_pool *p, qw_kv_seq *seq, int tokens, qw_err *err);

/* The cache slot of token i of seq. */
int32_t qw_kv_slot(const qw_kv_pool *p, const qw_kv_seq *seq, int i);

/* Returns all of seq's blocks to the pool and empties it. */
void qw_kv_free(qw_kv_pool *p, qw_kv_seq *seq);

#endif
