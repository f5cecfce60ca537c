/* kv_blocks.c - block pool, per-sequence block tables and the prefix cache.  See
 * kv_blocks.h. */
#include "daemon/kv_blocks.h"

#include <stdlib.h>
#include <string.h>

qw_status qw_kv_pool_init(qw_kv_pool *p, int n_blocks, int block_size, qw_err *err)
{
	memset(p, 0, sizeof *p);
	if (n_blocks < 1 || block_size < 1)
		return qw_fail(err, QW_E_ARG, "a KV pool needs blocks (%d) of at least one token (%d)",
			       n_blocks, block_size);
	if (n_blocks > QW_KV_MAX_BLOCKS)
		return qw_fail(err, QW_E_ARG, "a KV pool of %d blocks: at most %d (HINT: larger "
			       "blocks, kv-block-tokens)", n_blocks, QW_KV_MAX_BLOCKS);
	size_t n = (size_t)n_blocks;
	p->table_cap = 16;
	while (p->table_cap < 2 * n_blocks)
		p->table_cap *= 2;
	p->free_list = malloc(n * sizeof *p->free_list);
	p->ref = calloc(n, sizeof *p->ref);
	p->published = calloc(n, 1);
	p->key = calloc(n, sizeof *p->key);
	p->parent = calloc(n, sizeof *p->parent);
	p->ready_step = calloc(n, sizeof *p->ready_step);
	p->tokens = malloc(n * (size_t)block_size * sizeof *p->tokens);
	p->table = malloc((size_t)p->table_cap * sizeof *p->table);
	p->lru_prev = malloc(n * sizeof *p->lru_prev);
	p->lru_next = malloc(n * sizeof *p->lru_next);
	if (!p->free_list || !p->ref || !p->published || !p->key || !p->parent ||
	    !p->ready_step || !p->tokens || !p->table || !p->lru_prev || !p->lru_next) {
		qw_kv_pool_free(p);
		return qw_fail(err, QW_E_NOMEM, "out of memory for %d KV blocks", n_blocks);
	}
	p->n_blocks = n_blocks;
	p->block_size = block_size;
	for (int i = 0; i < n_blocks; i++)   /* low ids are handed out first */
		p->free_list[i] = n_blocks - 1 - i;
	p->n_free = n_blocks;
	for (int i = 0; i < p->table_cap; i++)
		p->table[i] = -1;
	p->lru_head = p->lru_tail = -1;
	p->caching = true;
	return QW_OK;
}

void qw_kv_pool_free(qw_kv_pool *p)
{
	free(p->free_list);
	free(p->ref);
	free(p->published);
	free(p->key);
	free(p->parent);
	free(p->ready_step);
	free(p->tokens);
	free(p->table);
	free(p->lru_prev);
	free(p->lru_next);
	memset(p, 0, sizeof *p);
}

// ---------------------------------------------------------------------------------------
// the key table (open addressing, linear probing; keys are hashes already) and the LRU list

static size_t home(const qw_kv_pool *p, uint64_t key)
{
	return (size_t)(key ^ (key >> 32)) & (size_t)(p->table_cap - 1);
}

/* The table index of block b, which is published. */
static size_t table_index(const qw_kv_pool *p, int32_t b)
{
	size_t mask = (size_t)(p->table_cap - 1), i = home(p, p->key[b]);
	while (p->table[i] != b)
		i = (i + 1) & mask;
	return i;
}

static bool key_taken(const qw_kv_pool *p, uint64_t key)
{
	size_t mask = (size_t)(p->table_cap - 1);
	for (size_t i = home(p, key); p->table[i] >= 0; i = (i + 1) & mask)
		if (p->key[p->table[i]] == key)
			return true;
	return false;
}

/* Takes b out of the table, shifting later entries of its probe run back (no tombstones). */
static void unpublish(qw_kv_pool *p, int32_t b)
{
	size_t mask = (size_t)(p->table_cap - 1), i = table_index(p, b);
	p->table[i] = -1;
	p->published[b] = 0;
	for (size_t j = (i + 1) & mask; p->table[j] >= 0; j = (j + 1) & mask) {
		size_t h = home(p, p->key[p->table[j]]);
		/* move j back into the hole unless its home lies cyclically in (i, j] */
		bool stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
		if (!stays) {
			p->table[i] = p->table[j];
			p->table[j] = -1;
			i = j;
		}
	}
}

static void lru_push_back(qw_kv_pool *p, int32_t b)
{
	p->lru_prev[b] = p->lru_tail;
	p->lru_next[b] = -1;
	if (p->lru_tail >= 0)
		p->lru_next[p->lru_tail] = b;
	else
		p->lru_head = b;
	p->lru_tail = b;
	p->n_cached++;
}

static void lru_remove(qw_kv_pool *p, int32_t b)
{
	if (p->lru_prev[b] >= 0)
		p->lru_next[p->lru_prev[b]] = p->lru_next[b];
	else
		p->lru_head = p->lru_next[b];
	if (p->lru_next[b] >= 0)
		p->lru_prev[p->lru_next[b]] = p->lru_prev[b];
	else
		p->lru_tail = p->lru_prev[b];
	p->n_cached--;
}

/* Every published block forgotten; the cached ones become free. */
void qw_kv_forget_all(qw_kv_pool *p)
{
	while (p->lru_head >= 0) {
		int32_t b = p->lru_head;
		lru_remove(p, b);
		p->free_list[p->n_free++] = b;
	}
	for (int i = 0; i < p->table_cap; i++)
		if (p->table[i] >= 0) {
			p->published[p->table[i]] = 0;
			p->table[i] = -1;
		}
}

void qw_kv_set_caching(qw_kv_pool *p, bool on)
{
	if (!on)
		qw_kv_forget_all(p);
	p->caching = on;
}

// ---------------------------------------------------------------------------------------
// block tables

int qw_kv_blocks_for(const qw_kv_pool *p, int n_tokens)
{
	return (n_tokens + p->block_size - 1) / p->block_size;
}

int qw_kv_available(const qw_kv_pool *p)
{
	return p->n_free + p->n_cached;
}

int qw_kv_used(const qw_kv_pool *p)
{
	return p->n_blocks - p->n_free - p->n_cached;
}

static int blocks_needed(const qw_kv_pool *p, const qw_kv_seq *seq, int tokens)
{
	int have = seq ? seq->n_blocks : 0, after = (seq ? seq->n_tokens : 0) + tokens;
	int need = qw_kv_blocks_for(p, after) - have;
	return need > 0 ? need : 0;
}

bool qw_kv_can_grow(const qw_kv_pool *p, const qw_kv_seq *seq, int tokens)
{
	return tokens >= 0 && blocks_needed(p, seq, tokens) <= qw_kv_available(p);
}

static bool reserve_table(qw_kv_seq *seq, int need, qw_err *err)
{
	if (seq->n_blocks + need <= seq->cap)
		return true;
	int cap = seq->cap ? seq->cap : 8;
	while (cap < seq->n_blocks + need)
		cap *= 2;
	int32_t *grown = realloc(seq->blocks, (size_t)cap * sizeof *grown);
	if (!grown) {
		qw_fail(err, QW_E_NOMEM, "out of memory for a block table");
		return false;
	}
	seq->blocks = grown;
	seq->cap = cap;
	return true;
}

/* A block to write: a free one, else the oldest cached one (evicted). */
static int32_t take_block(qw_kv_pool *p)
{
	if (p->n_free > 0)
		return p->free_list[--p->n_free];
	int32_t b = p->lru_head;
	lru_remove(p, b);
	unpublish(p, b);
	p->evictions++;
	return b;
}

qw_status qw_kv_grow(qw_kv_pool *p, qw_kv_seq *seq, int tokens, qw_err *err)
{
	if (tokens < 0)
		return qw_fail(err, QW_E_ARG, "cannot grow a sequence by %d tokens", tokens);
	int need = blocks_needed(p, seq, tokens);
	if (need > qw_kv_available(p))
		return qw_fail(err, QW_E_NOMEM, "the KV cache has %d free blocks of %d tokens; %d more "
			       "are needed", qw_kv_available(p), p->block_size, need);
	if (!reserve_table(seq, need, err))
		return QW_E_NOMEM;
	for (int i = 0; i < need; i++) {
		int32_t b = take_block(p);
		p->ref[b] = 1;
		seq->blocks[seq->n_blocks++] = b;
	}
	seq->n_tokens += tokens;
	return QW_OK;
}

int32_t qw_kv_slot(const qw_kv_pool *p, const qw_kv_seq *seq, int i)
{
	return seq->blocks[i / p->block_size] * p->block_size + i % p->block_size;
}

void qw_kv_free(qw_kv_pool *p, qw_kv_seq *seq)
{
	for (int i = seq->n_blocks - 1; i >= 0; i--) {   /* later blocks are evicted first */
		int32_t b = seq->blocks[i];
		if (b < 0 || b >= p->n_blocks || p->ref[b] <= 0 || --p->ref[b] > 0)
			continue;
		if (p->published[b])
			lru_push_back(p, b);
		else
			p->free_list[p->n_free++] = b;
	}
	free(seq->blocks);
	memset(seq, 0, sizeof *seq);
}

// ---------------------------------------------------------------------------------------
// the prefix cache

int32_t qw_kv_find(const qw_kv_pool *p, uint64_t key, uint64_t parent, const int32_t *tokens,
		   uint64_t step)
{
	if (!p->caching)
		return -1;
	size_t mask = (size_t)(p->table_cap - 1), bs = (size_t)p->block_size;
	for (size_t i = home(p, key); p->table[i] >= 0; i = (i + 1) & mask) {
		int32_t b = p->table[i];
		if (p->key[b] == key)   /* one block per key: the content must match too */
			return p->parent[b] == parent && p->ready_step[b] < step &&
			       memcmp(p->tokens + (size_t)b * bs, tokens, bs * sizeof *tokens) == 0
			       ? b : -1;
	}
	return -1;
}

qw_status qw_kv_share(qw_kv_pool *p, qw_kv_seq *seq, int32_t b, qw_err *err)
{
	if (b < 0 || b >= p->n_blocks || !p->published[b] ||
	    seq->n_tokens != seq->n_blocks * p->block_size || seq->n_published != seq->n_blocks)
		return qw_fail(err, QW_E_ARG, "block %d cannot be shared here", b);
	if (!reserve_table(seq, 1, err))
		return QW_E_NOMEM;
	if (p->ref[b]++ == 0)
		lru_remove(p, b);
	seq->blocks[seq->n_blocks++] = b;
	seq->n_tokens += p->block_size;
	seq->n_published++;
	return QW_OK;
}

void qw_kv_publish(qw_kv_pool *p, qw_kv_seq *seq, int j, uint64_t key, uint64_t parent,
		   const int32_t *tokens, uint64_t step)
{
	if (!p->caching || j != seq->n_published || j >= seq->n_blocks ||
	    (j + 1) * p->block_size > seq->n_tokens)
		return;
	seq->n_published++;
	int32_t b = seq->blocks[j];
	if (p->published[b] || key_taken(p, key))
		return;
	size_t mask = (size_t)(p->table_cap - 1), i = home(p, key);
	while (p->table[i] >= 0)
		i = (i + 1) & mask;
	p->table[i] = b;
	p->published[b] = 1;
	p->key[b] = key;
	p->parent[b] = parent;
	p->ready_step[b] = step;
	memcpy(p->tokens + (size_t)b * (size_t)p->block_size, tokens,
	       (size_t)p->block_size * sizeof *tokens);
}
