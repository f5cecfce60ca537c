/* step_batch.cu - the step's batch on the device: its rows checked (a sequence's rows
 * consecutive and in kv order, the sequences in row order, as the kernels rely on), each
 * sequence's range found, and every array copied in one transfer through pinned memory, laid
 * out as cuda_batch_layout_of says, the block tables padded to a row that step graphs share.
 * See backend_ctx.h. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/backend_ctx.h"
#include "kernels/cuda/check.h"
#include "kernels/step_limits.h"

int cuda_table_row(int max_blocks)
{
	int row = 4;
	while (row < max_blocks)
		row *= 2;
	return row;
}

int cuda_kv_bucket(int max_kv)
{
	int bucket = 256;
	while (bucket < max_kv)
		bucket *= 2;
	return bucket;
}

cuda_batch_layout cuda_batch_layout_of(int T, int S, int row, int n_logits)
{
	cuda_batch_layout l;
	l.token_ids = 0;
	l.positions = l.token_ids + (size_t)T;
	l.seq = l.positions + 3 * (size_t)T;
	l.kv_index = l.seq + (size_t)T;
	l.slot = l.kv_index + (size_t)T;
	l.seq_start = l.slot + (size_t)T;
	l.block_tables = l.seq_start + (size_t)S + 1;
	l.logit_rows = l.block_tables + (size_t)S * (size_t)row;
	l.ints = l.logit_rows + (size_t)n_logits;
	return l;
}

/* Each sequence's first row into start (S + 1 entries, start[S] = T; a sequence without rows
 * gets an empty range), checking that a sequence's rows are consecutive and in kv order and
 * the sequences in row order (the kernels rely on both); *max_kv: the largest kv_index + 1,
 * *max_rows: the most rows one sequence has. */
static qw_status seq_ranges(const qw_batch *b, int32_t *start, int *max_kv, int *max_rows,
			    qw_err *err)
{
	int T = b->n_tokens, S = b->n_seqs;
	for (int s = 0; s <= S; s++)
		start[s] = -1;
	*max_kv = *max_rows = 0;
	for (int t = 0; t < T; t++) {
		int s = b->seq[t];
		bool ok = s >= 0 && s < S && (start[s] < 0 ? true
					      : b->seq[t - 1] == s && b->kv_index[t] == b->kv_index[t - 1] + 1);
		if (!ok)
			return qw_fail(err, QW_E_ARG, "cuda: the step's token %d (sequence %d) is not "
				       "next to its sequence's other tokens in kv order", t, s);
		if (start[s] < 0)
			start[s] = t;
		if (b->kv_index[t] + 1 > *max_kv)
			*max_kv = b->kv_index[t] + 1;
	}
	int next = T;
	for (int s = S - 1; s >= 0; s--) {
		if (start[s] < 0)
			start[s] = next;
		if (start[s] > next)
			return qw_fail(err, QW_E_ARG, "cuda: the step's sequences are not in row order");
		next = start[s];
	}
	start[S] = T;
	for (int s = 0; s < S; s++)
		if (start[s + 1] - start[s] > *max_rows)
			*max_rows = start[s + 1] - start[s];
	return QW_OK;
}

/* n ints of src at dst (nothing when src is NULL: an array the step does not have). */
static void put_ints(int32_t *dst, const int32_t *src, size_t n)
{
	if (n && src)
		memcpy(dst, src, n * sizeof *dst);
}

/* The step's block tables (S rows of max_blocks) as S rows of `row` (cuda_table_row: a
 * power of two, so what the launches take from it stays put for many decode steps and one
 * step graph serves them all), each row's tail zero: the kernels never read it. */
static void pad_block_tables(int32_t *dst, const qw_batch *b, int row)
{
	for (int s = 0; s < b->n_seqs; s++) {
		int32_t *to = dst + (size_t)s * (size_t)row;
		memcpy(to, b->block_tables + (size_t)s * (size_t)b->max_blocks,
		       (size_t)b->max_blocks * sizeof(int32_t));
		memset(to + b->max_blocks, 0, (size_t)(row - b->max_blocks) * sizeof(int32_t));
	}
}

qw_status cuda_begin_step(qw_backend *be, const qw_batch *b, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	int T = b->n_tokens, S = b->n_seqs;
	if (c->reserved)
		QW_TRY(qw_step_limits_check(&c->lim, b, "cuda", err));
	QW_CUDA_TRY(err, cudaEventSynchronize(c->batch_copied));   /* the last copy is done */
	int32_t *start = (int32_t *)malloc(((size_t)S + 1) * sizeof *start);
	if (!start)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	int max_kv, max_rows;
	qw_status st = seq_ranges(b, start, &max_kv, &max_rows, err);
	int row = cuda_table_row(b->max_blocks);
	cuda_batch_layout at = cuda_batch_layout_of(T, S, row, b->n_logits);
	if (st == QW_OK)
		st = cuda_batch_room(c, at.ints, err);
	if (st != QW_OK) {
		free(start);
		return st;
	}
	int32_t *h = c->batch_host;
	put_ints(h + at.token_ids, b->token_ids, (size_t)T);
	put_ints(h + at.positions, b->positions, 3 * (size_t)T);
	put_ints(h + at.seq, b->seq, (size_t)T);
	put_ints(h + at.kv_index, b->kv_index, (size_t)T);
	put_ints(h + at.slot, b->slot, (size_t)T);
	put_ints(h + at.seq_start, start, (size_t)S + 1);
	pad_block_tables(h + at.block_tables, b, row);
	put_ints(h + at.logit_rows, b->logit_rows, (size_t)b->n_logits);
	free(start);
	const int32_t *d = (const int32_t *)c->batch_dev.p;
	QW_CUDA_TRY(err, cudaMemcpyAsync(c->batch_dev.p, h, at.ints * sizeof(int32_t),
					 cudaMemcpyHostToDevice, c->stream));
	QW_CUDA_TRY(err, cudaEventRecord(c->batch_copied, c->stream));
	qw_cuda_batch *db = &c->db;
	db->n_tokens = T;
	db->n_seqs = S;
	db->max_blocks = row;
	db->block_size = 0;   /* set by the KV cache's shape in each op */
	/* the longest context rounded up to a power of two, as the table row is: one step graph
	 * serves many decode steps (kernels see only the padding, never read) */
	db->max_kv_len = cuda_kv_bucket(max_kv);
	db->max_seq_tokens = max_rows;
	db->token_ids = d + at.token_ids;
	db->positions = d + at.positions;
	db->seq = d + at.seq;
	db->kv_index = d + at.kv_index;
	db->slot = d + at.slot;
	db->seq_start = d + at.seq_start;
	db->block_tables = d + at.block_tables;
	db->logit_rows = d + at.logit_rows;
	db->n_logits = b->n_logits;
	c->cur = b;
	return QW_OK;
}
