/* sched_prefix.c - block keys, publishing and cached prefixes for the scheduler.  See
 * sched_prefix.h. */
#include "daemon/sched_prefix.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

uint64_t qw_sched_image_hash(const qw_sched_image *im)
{
	int32_t shape[6] = {im->height, im->width, im->grid[0], im->grid[1], im->grid[2],
			    im->n_tokens};
	uint64_t px = XXH64(im->rgb, (size_t)im->height * (size_t)im->width * 3, 0);
	return XXH64(shape, sizeof shape, px);
}

void qw_seq_position(const qw_seq *q, int i, int32_t *pos)
{
	for (int k = 0; k < 3; k++)
		pos[k] = q->positions && i < q->n_prompt ? q->positions[3 * i + k] : i + q->rope_delta;
}

/* The content key of q's full block j (the keys before it known). */
static uint64_t block_key(qw_sched *s, const qw_seq *q, int j)
{
	int bs = s->pool.block_size, a = j * bs, n = 0;
	int32_t *w = s->key_words;   /* 2 + bs tokens + 3 bs positions + 4 per image (<= bs) */
	uint64_t parent = j ? q->keys[j - 1] : 0;
	w[n++] = (int32_t)(uint32_t)parent;
	w[n++] = (int32_t)(uint32_t)(parent >> 32);
	memcpy(w + n, q->tokens + a, (size_t)bs * sizeof *w);
	n += bs;
	for (int i = a; i < a + bs; i++, n += 3)
		qw_seq_position(q, i, w + n);
	for (int i = 0; i < q->n_images; i++) {
		const qw_sched_image *im = &q->images[i];
		int lo = im->pos > a ? im->pos : a;
		int hi = im->pos + im->n_tokens < a + bs ? im->pos + im->n_tokens : a + bs;
		if (lo >= hi)
			continue;
		w[n++] = (int32_t)(uint32_t)im->content_hash;
		w[n++] = (int32_t)(uint32_t)(im->content_hash >> 32);
		w[n++] = lo - im->pos;
		w[n++] = hi - lo;
	}
	return XXH64(w, (size_t)n * sizeof *w, 0);
}

/* q's keys for its first n blocks (whose tokens it knows); false when out of memory. */
static bool seq_keys(qw_sched *s, qw_seq *q, int n)
{
	if (n <= q->n_keys)
		return true;
	if (n > q->cap_keys) {
		int cap = q->cap_keys ? q->cap_keys : 16;
		while (cap < n)
			cap *= 2;
		uint64_t *grown = realloc(q->keys, (size_t)cap * sizeof *grown);
		if (!grown)
			return false;
		q->keys = grown;
		q->cap_keys = cap;
	}
	for (; q->n_keys < n; q->n_keys++)
		q->keys[q->n_keys] = block_key(s, q, q->n_keys);
	return true;
}

void qw_sched_publish(qw_sched *s, qw_seq *q, uint64_t step)
{
	int bs = s->pool.block_size, full = q->n_scheduled / bs;
	if (!s->pool.caching || q->kv.n_published >= full || !seq_keys(s, q, full))
		return;
	for (int j = q->kv.n_published; j < full; j++)
		qw_kv_publish(&s->pool, &q->kv, j, q->keys[j], j ? q->keys[j - 1] : 0,
			      q->tokens + (size_t)j * (size_t)bs, step);
}

/* The cached block that holds q's block j for a step built now, or -1. */
static int32_t cached_block(qw_sched *s, qw_seq *q, int j, uint64_t step)
{
	if (!seq_keys(s, q, j + 1))
		return -1;
	return qw_kv_find(&s->pool, q->keys[j], j ? q->keys[j - 1] : 0,
			  q->tokens + (size_t)j * (size_t)s->pool.block_size, step);
}

int qw_sched_cached_prefix(qw_sched *s, qw_seq *q, uint64_t step, int *idle)
{
	*idle = 0;
	if (!s->pool.caching)
		return 0;
	int n = 0, max = (q->n_tokens - 1) / s->pool.block_size;
	for (int32_t b; n < max && (b = cached_block(s, q, n, step)) >= 0; n++)
		*idle += s->pool.ref[b] == 0;
	return n;
}

void qw_sched_take_prefix(qw_sched *s, qw_seq *q, int n, uint64_t step)
{
	int bs = s->pool.block_size, k = 0;
	for (int32_t b; k < n && (b = cached_block(s, q, k, step)) >= 0 &&
			qw_kv_share(&s->pool, &q->kv, b, NULL) == QW_OK;)
		k++;
	q->n_scheduled = q->n_cached = k * bs;
	if (!s->pool.caching)
		return;
	qw_prefix_stats *st = &s->prefix;
	st->lookups++;
	st->hits += k > 0;
	st->lookup_tokens += (uint64_t)q->n_tokens;
	st->hit_tokens += (uint64_t)(k * bs);
	for (int i = 0; i < q->n_images; i++)
		st->images_skipped += q->images[i].pos + q->images[i].n_tokens <= k * bs;
}
