/* kv_blocks.c - block pool and per-sequence block tables.  See kv_blocks.h. */
#include "daemon/kv_blocks.h"

#include <stdlib.h>
#include <string.h>

qw_status qw_kv_pool_init(qw_kv_pool *p, int n_blocks, int block_size, qw_err *err)
{
	memset(p, 0, sizeof *p);
	if (n_blocks < 1 || block_size < 1)
		return qw_fail(err, QW_E_ARG, "a KV pool needs blocks (%d) of at least one token (%d)",
			       n_blocks, block_size);
	p->free_list = malloc((size_t)n_blocks * sizeof *p->free_list);
	p->owner = calloc((size_t)n_blocks, 1);
	if (!p->free_list || !p->owner) {
		qw_kv_pool_free(p);
		return qw_fail(err, QW_E_NOMEM, "out of memory for %d KV blocks", n_blocks);
	}
	p->n_blocks = n_blocks;
	p->block_size = block_size;
	for (int i = 0; i < n_blocks; i++)   /* low ids are handed out first */
		p->free_list[i] = n_blocks - 1 - i;
	p->n_free = n_blocks;
	return QW_OK;
}

void qw_kv_pool_free(qw_kv_pool *p)
{
	free(p->free_list);
	free(p->owner);
	memset(p, 0, sizeof *p);
}

int qw_kv_blocks_for(const qw_kv_pool *p, int n_tokens)
{
	return (n_tokens + p->block_size - 1) / p->block_size;
}

static int blocks_needed(const qw_kv_pool *p, const qw_kv_seq *seq, int tokens)
{
	int have = seq ? seq->n_blocks : 0, after = (seq ? seq->n_tokens : 0) + tokens;
	int need = qw_kv_blocks_for(p, after) - have;
	return need > 0 ? need : 0;
}

bool qw_kv_can_grow(const qw_kv_pool *p, const qw_kv_seq *seq, int tokens)
{
	return tokens >= 0 && blocks_needed(p, seq, tokens) <= p->n_free;
}

qw_status qw_kv_grow(qw_kv_pool *p, qw_kv_seq *seq, int tokens, qw_err *err)
{
	if (tokens < 0)
		return qw_fail(err, QW_E_ARG, "cannot grow a sequence by %d tokens", tokens);
	int need = blocks_needed(p, seq, tokens);
	if (need > p->n_free)
		return qw_fail(err, QW_E_NOMEM, "the KV cache has %d free blocks of %d tokens; %d more "
			       "are needed", p->n_free, p->block_size, need);
	if (seq->n_blocks + need > seq->cap) {
		int cap = seq->cap ? seq->cap : 8;
		while (cap < seq->n_blocks + need)
			cap *= 2;
		int32_t *grown = realloc(seq->blocks, (size_t)cap * sizeof *grown);
		if (!grown)
			return qw_fail(err, QW_E_NOMEM, "out of memory for a block table");
		seq->blocks = grown;
		seq->cap = cap;
	}
	for (int i = 0; i < need; i++) {
		int32_t b = p->free_list[--p->n_free];
		p->owner[b] = 1;
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
	for (int i = seq->n_blocks - 1; i >= 0; i--) {   /* back on the stack, in reverse */
		int32_t b = seq->blocks[i];
		if (b >= 0 && b < p->n_blocks && p->owner[b]) {
			p->owner[b] = 0;
			p->free_list[p->n_free++] = b;
		}
	}
	free(seq->blocks);
	memset(seq, 0, sizeof *seq);
}
