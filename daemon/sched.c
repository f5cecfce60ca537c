/* sched.c - the step scheduler.  See sched.h for the policy. */
#include "daemon/sched.h"
#include "daemon/sched_prefix.h"

#include <stdlib.h>
#include <string.h>

struct qw_sched_plan_buf {
	int n_tokens, n_seqs, n_blocks, n_logits, n_images, n_fresh;
	int n_prompt_tokens;
	int held;                 /* tokens of images stage 0 holds across this step: those split
				     before it, and those it splits */
	int32_t *token_ids, *positions, *seq, *kv_index, *slot;   /* (max_batch_tokens,) */
	int32_t *block_start;                                     /* (max_seqs + 1,) */
	int32_t *blocks;                                          /* (max_plan_blocks,) */
	int32_t *logit_rows;                                      /* (max_seqs,) */
	qw_sampling *sampling;                                    /* (max_seqs,) */
	qw_step_history *history;                                 /* (max_seqs,) */
	uint64_t *seq_ids;                                        /* (max_seqs,) */
	qw_step_image *images;                                    /* (cap_images,) */
	qw_arena_range *fresh;                                    /* (cap_fresh,) arena space
								     the step takes */
	int cap_images, cap_fresh;
	uint64_t *drops;                                          /* copied from the scheduler */
	int cap_drops;
};

// ---------------------------------------------------------------------------------------
// lists and the id table

static void list_push_back(qw_seq_list *l, qw_seq *q)
{
	q->prev = l->tail;
	q->next = NULL;
	if (l->tail)
		l->tail->next = q;
	else
		l->head = q;
	l->tail = q;
	l->n++;
}

static void list_push_front(qw_seq_list *l, qw_seq *q)
{
	q->next = l->head;
	q->prev = NULL;
	if (l->head)
		l->head->prev = q;
	else
		l->tail = q;
	l->head = q;
	l->n++;
}

static void list_remove(qw_seq_list *l, qw_seq *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		l->head = q->next;
	if (q->next)
		q->next->prev = q->prev;
	else
		l->tail = q->prev;
	q->prev = q->next = NULL;
	l->n--;
}

static size_t hash_id(uint64_t id, int cap)
{
	id ^= id >> 33;
	id *= 0xff51afd7ed558ccdull;
	id ^= id >> 33;
	return (size_t)id & (size_t)(cap - 1);
}

static void table_put(qw_sched *s, qw_seq *q)
{
	size_t i = hash_id(q->id, s->table_cap);
	while (s->table[i])
		i = (i + 1) & (size_t)(s->table_cap - 1);
	s->table[i] = q;
}

qw_seq *qw_sched_find(const qw_sched *s, uint64_t id)
{
	for (size_t i = hash_id(id, s->table_cap); s->table[i];
	     i = (i + 1) & (size_t)(s->table_cap - 1))
		if (s->table[i]->id == id)
			return s->table[i];
	return NULL;
}

/* Removes q, shifting later entries of its probe run back (no tombstones). */
static void table_del(qw_sched *s, const qw_seq *q)
{
	size_t mask = (size_t)(s->table_cap - 1), i = hash_id(q->id, s->table_cap);
	while (s->table[i] != q) {
		if (!s->table[i])
			return;
		i = (i + 1) & mask;
	}
	s->table[i] = NULL;
	for (size_t j = (i + 1) & mask; s->table[j]; j = (j + 1) & mask) {
		size_t home = hash_id(s->table[j]->id, s->table_cap);
		/* move j back into the hole unless its home lies cyclically in (i, j] */
		bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!stays) {
			s->table[i] = s->table[j];
			s->table[j] = NULL;
			i = j;
		}
	}
}

// ---------------------------------------------------------------------------------------
// the arena: first fit over sorted free ranges

static bool arena_alloc(qw_sched *s, uint64_t bytes, uint64_t *offset)
{
	bytes = (bytes + 63) & ~63ull;
	for (int i = 0; i < s->n_arena_free; i++) {
		qw_arena_range *r = &s->arena_free[i];
		if (r->bytes < bytes)
			continue;
		*offset = r->offset;
		r->offset += bytes;
		r->bytes -= bytes;
		if (r->bytes == 0) {
			memmove(r, r + 1, (size_t)(s->n_arena_free - i - 1) * sizeof *r);
			s->n_arena_free--;
		}
		return true;
	}
	return false;
}

static void arena_release(qw_sched *s, qw_arena_range a)
{
	a.bytes = (a.bytes + 63) & ~63ull;
	int i = 0;
	while (i < s->n_arena_free && s->arena_free[i].offset < a.offset)
		i++;
	bool joins_prev = i > 0 && s->arena_free[i - 1].offset + s->arena_free[i - 1].bytes == a.offset;
	bool joins_next = i < s->n_arena_free && a.offset + a.bytes == s->arena_free[i].offset;
	if (joins_prev && joins_next) {
		s->arena_free[i - 1].bytes += a.bytes + s->arena_free[i].bytes;
		memmove(&s->arena_free[i], &s->arena_free[i + 1],
			(size_t)(s->n_arena_free - i - 1) * sizeof *s->arena_free);
		s->n_arena_free--;
	} else if (joins_prev) {
		s->arena_free[i - 1].bytes += a.bytes;
	} else if (joins_next) {
		s->arena_free[i].offset = a.offset;
		s->arena_free[i].bytes += a.bytes;
	} else {
		if (s->n_arena_free == s->cap_arena_free) {
			qw_arena_range *g = realloc(s->arena_free, 2 * (size_t)s->cap_arena_free *
								   sizeof *g);
			if (!g)
				return;   /* the space is lost until the next reset */
			s->arena_free = g;
			s->cap_arena_free *= 2;
		}
		memmove(&s->arena_free[i + 1], &s->arena_free[i],
			(size_t)(s->n_arena_free - i) * sizeof *s->arena_free);
		s->arena_free[i] = a;
		s->n_arena_free++;
	}
}

static void arena_reset(qw_sched *s)
{
	s->n_arena_free = s->o.arena_bytes > 0;
	s->arena_free[0] = (qw_arena_range){0, s->o.arena_bytes & ~63ull};
}

// ---------------------------------------------------------------------------------------

static bool grow(void **p, int *cap, int need, size_t elem)
{
	if (need <= *cap)
		return true;
	int c = *cap ? *cap : 8;
	while (c < need)
		c *= 2;
	void *g = realloc(*p, (size_t)c * elem);
	if (!g)
		return false;
	*p = g;
	*cap = c;
	return true;
}

qw_status qw_sched_init(qw_sched *s, const qw_sched_opts *o, qw_err *err)
{
	memset(s, 0, sizeof *s);
	s->o = *o;
	if (o->depth < 1 || o->max_seqs < 1 || o->max_batch_tokens < 1 || o->max_plan_blocks < 1)
		return qw_fail(err, QW_E_ARG, "scheduler: depth, max_seqs, max_batch_tokens and "
			       "max_plan_blocks must be positive");
	qw_status st = qw_kv_pool_init(&s->pool, o->kv_blocks, o->block_tokens, err);
	if (st != QW_OK)
		return st;
	qw_kv_set_caching(&s->pool, o->prefix_cache);
	qw_vcache_init(&s->vcache, o->vision_cache_tokens, o->vision_cache_entries);
	s->table_cap = 16;
	while (s->table_cap < 2 * (o->max_queue + o->max_seqs + 1))
		s->table_cap *= 2;
	s->table = calloc((size_t)s->table_cap, sizeof *s->table);
	s->inflight = calloc((size_t)o->depth, sizeof *s->inflight);
	s->cap_arena_free = 64;   /* grows as frees fragment the arena */
	s->arena_free = malloc((size_t)s->cap_arena_free * sizeof *s->arena_free);
	qw_sched_plan_buf *b = s->buf = calloc(1, sizeof *b);
	size_t T = (size_t)o->max_batch_tokens, Q = (size_t)o->max_seqs;
	s->key_words = malloc((8 * (size_t)o->block_tokens + 2) * sizeof *s->key_words);
	bool ok = s->table && s->inflight && s->arena_free && b && s->key_words;
	for (int i = 0; ok && i < o->depth; i++)
		ok = (s->inflight[i].seq_ids = malloc(Q * sizeof(uint64_t))) != NULL;
	if (ok) {
		b->token_ids = malloc(T * sizeof(int32_t));
		b->positions = malloc(3 * T * sizeof(int32_t));
		b->seq = malloc(T * sizeof(int32_t));
		b->kv_index = malloc(T * sizeof(int32_t));
		b->slot = malloc(T * sizeof(int32_t));
		b->block_start = malloc((Q + 1) * sizeof(int32_t));
		b->blocks = malloc((size_t)o->max_plan_blocks * sizeof(int32_t));
		b->logit_rows = malloc(Q * sizeof(int32_t));
		b->sampling = malloc(Q * sizeof(qw_sampling));
		b->history = malloc(Q * sizeof(qw_step_history));
		b->seq_ids = malloc(Q * sizeof(uint64_t));
		ok = b->token_ids && b->positions && b->seq && b->kv_index && b->slot &&
		     b->block_start && b->blocks && b->logit_rows && b->sampling && b->history &&
		     b->seq_ids;
	}
	if (!ok) {
		qw_sched_free(s);
		return qw_fail(err, QW_E_NOMEM, "out of memory for the scheduler");
	}
	arena_reset(s);
	s->next_step = s->next_handle = s->next_admit = 1;
	return QW_OK;
}

static void release_seq_arrays(qw_seq *q)
{
	for (int i = 0; i < q->n_images; i++)
		free(q->images[i].rgb);
	free(q->images);
	free(q->tokens);
	free(q->positions);
	free(q->keys);
	if (q->history)
		qw_history_free(q->history);
	free(q->history);
	q->history = NULL;
	q->images = NULL;
	q->tokens = q->positions = NULL;
	q->keys = NULL;
	q->n_images = q->n_tokens = q->n_keys = q->cap_keys = 0;
}

void qw_sched_free(qw_sched *s)
{
	for (qw_seq_list *l = &s->queue; l <= &s->running; l++)
		while (l->head) {
			qw_seq *q = l->head;
			list_remove(l, q);
			qw_kv_free(&s->pool, &q->kv);
			release_seq_arrays(q);
		}
	qw_kv_pool_free(&s->pool);
	for (int i = 0; s->inflight && i < s->o.depth; i++) {
		free(s->inflight[i].seq_ids);
		free(s->inflight[i].arena);
	}
	free(s->inflight);
	free(s->table);
	free(s->arena_free);
	free(s->drops);
	free(s->key_words);
	qw_vcache_free(&s->vcache);
	qw_sched_plan_buf *b = s->buf;
	if (b) {
		free(b->token_ids);
		free(b->positions);
		free(b->seq);
		free(b->kv_index);
		free(b->slot);
		free(b->block_start);
		free(b->blocks);
		free(b->logit_rows);
		free(b->sampling);
		free(b->history);
		free(b->seq_ids);
		free(b->images);
		free(b->fresh);
		free(b->drops);
		free(b);
	}
	memset(s, 0, sizeof *s);
}

int qw_sched_inflight(const qw_sched *s)
{
	return s->n_inflight;
}

void qw_sched_set_prefix_cache(qw_sched *s, bool on)
{
	s->o.prefix_cache = on;
	qw_kv_set_caching(&s->pool, on);
}

qw_status qw_sched_check(const qw_sched *s, const qw_seq *seq, int max_new, qw_err *err)
{
	if (seq->id == 0 || qw_sched_find(s, seq->id))
		return qw_fail(err, QW_E_ARG, "sequence id %llu is zero or taken",
			       (unsigned long long)seq->id);
	int total = seq->n_tokens + max_new;
	int blocks = qw_kv_blocks_for(&s->pool, total);
	if (blocks > s->pool.n_blocks)
		return qw_fail(err, QW_E_LIMIT, "the prompt (%d tokens) and up to %d new tokens need "
			       "%d KV blocks of %d tokens; the cache holds %d", seq->n_tokens, max_new,
			       blocks, s->pool.block_size, s->pool.n_blocks);
	if (blocks > s->o.max_plan_blocks)
		return qw_fail(err, QW_E_LIMIT, "%d tokens of context need more KV blocks (%d) than a "
			       "step plan may carry (%d)", total, blocks, s->o.max_plan_blocks);
	if (seq->history) {
		/* at most one entry a token, of the prompt and what it may generate */
		uint64_t entries = (uint64_t)seq->history->n + (uint64_t)max_new;
		if (entries * sizeof(qw_token_count) > s->o.arena_bytes)
			return qw_fail(err, QW_E_LIMIT, "the penalties' history of %d prompt tokens "
				       "and %d new ones may take %llu bytes; the arena holds %llu",
				       seq->history->n, max_new,
				       (unsigned long long)(entries * sizeof(qw_token_count)),
				       (unsigned long long)s->o.arena_bytes);
	}
	for (int i = 0; i < seq->n_images; i++) {
		uint64_t bytes = (uint64_t)seq->images[i].height * (uint64_t)seq->images[i].width * 3;
		if (s->o.vision_tokens > 0 && seq->images[i].n_tokens > s->o.vision_tokens)
			return qw_fail(err, QW_E_LIMIT, "image %d takes %d tokens; the vision tower's "
				       "memory was reserved at start for images of up to %d (HINT: "
				       "max-image-tokens sets it when qwend starts; a larger value "
				       "given since takes effect at the next start)", i + 1,
				       seq->images[i].n_tokens, s->o.vision_tokens);
		if (bytes > s->o.arena_bytes)
			return qw_fail(err, QW_E_LIMIT, "image %d (%d x %d) takes %llu bytes; the image "
				       "arena holds %llu", i + 1, seq->images[i].width,
				       seq->images[i].height, (unsigned long long)bytes,
				       (unsigned long long)s->o.arena_bytes);
	}
	if (s->queue.n >= s->o.max_queue)
		return qw_fail(err, QW_E_FULL, "the queue is full (%d requests wait)", s->queue.n);
	return QW_OK;
}

qw_status qw_sched_submit(qw_sched *s, qw_seq *seq, int max_new, qw_err *err)
{
	qw_status st = qw_sched_check(s, seq, max_new, err);
	if (st != QW_OK)
		return st;
	for (int i = 0; i < seq->n_images; i++)
		seq->images[i].content_hash = qw_sched_image_hash(&seq->images[i]);
	seq->n_scheduled = seq->n_cached = 0;
	seq->awaiting = seq->running = false;
	seq->keys = NULL;
	seq->n_keys = seq->cap_keys = 0;
	seq->kv = (qw_kv_seq){0};
	list_push_back(&s->queue, seq);
	table_put(s, seq);
	return QW_OK;
}

/* Stage 0 may forget handle's features (from the next plan on). */
static void drop_handle(void *ctx, uint64_t handle)
{
	qw_sched *s = ctx;
	if (grow((void **)&s->drops, &s->cap_drops, s->n_drops + 1, sizeof *s->drops))
		s->drops[s->n_drops++] = handle;
}

/* Stage 0 may drop the features of seq's images that it holds and will not finish (those
 * of the vision cache stay: the cache drops them). */
static void drop_images(qw_sched *s, qw_seq *q)
{
	for (int i = 0; i < q->n_images; i++) {
		qw_sched_image *im = &q->images[i];
		if (im->handle && !im->cached && q->n_scheduled > im->pos &&
		    q->n_scheduled < im->pos + im->n_tokens)
			drop_handle(s, im->handle);
		im->handle = 0;
		im->cached = false;
	}
}

void qw_sched_remove(qw_sched *s, qw_seq *q)
{
	table_del(s, q);
	list_remove(q->running ? &s->running : &s->queue, q);
	drop_images(s, q);
	qw_kv_free(&s->pool, &q->kv);
	release_seq_arrays(q);
	q->running = q->awaiting = false;
}

/* Back to the head of the queue, to be computed again from its first token. */
static void preempt(qw_sched *s, qw_seq *q)
{
	list_remove(&s->running, q);
	drop_images(s, q);
	qw_kv_free(&s->pool, &q->kv);
	q->n_scheduled = 0;
	q->running = false;
	q->preemptions++;
	s->preempted++;
	list_push_front(&s->queue, q);
}

// ---------------------------------------------------------------------------------------
// building a step

/* Tokens of the images stage 0 holds now: sent, and split by the steps so far (it keeps
 * their features until their last tokens pass); the vision cache's count in its budget. */
static int images_held(const qw_sched *s)
{
	int held = 0;
	for (const qw_seq *q = s->running.head; q; q = q->next)
		for (int i = 0; i < q->n_images; i++) {
			const qw_sched_image *im = &q->images[i];
			held += im->handle && !im->cached && q->n_scheduled > im->pos &&
					q->n_scheduled < im->pos + im->n_tokens
				? im->n_tokens : 0;
		}
	return held;
}

/* Whether a running sequence has rows left of the image stage 0 keeps under handle, or
 * the step being built fills some (an eviction's drop comes before the step's rows). */
static bool image_busy(void *ctx, uint64_t handle)
{
	const qw_sched *s = ctx;
	for (const qw_seq *q = s->running.head; q; q = q->next)
		for (int i = 0; i < q->n_images; i++) {
			const qw_sched_image *im = &q->images[i];
			if (im->handle == handle && (q->n_scheduled < im->pos + im->n_tokens ||
						     im->placed_step == s->next_step))
				return true;
		}
	return false;
}

/* Arena space of the step, freed when it completes; false when there is none. */
static bool take_arena(qw_sched *s, uint64_t bytes, uint64_t *offset)
{
	qw_sched_plan_buf *b = s->buf;
	if (!grow((void **)&b->fresh, &b->cap_fresh, b->n_fresh + 1, sizeof *b->fresh) ||
	    !arena_alloc(s, bytes, offset))
		return false;
	b->fresh[b->n_fresh++] = (qw_arena_range){*offset, bytes};
	return true;
}

/* Gives im, which the step reaches, its handle on stage 0: the vision cache's when stage 0
 * keeps its features (no pixels, no tower); else a new one, its pixels in the arena for the
 * tower, kept in the cache after when it has room.  false when the chunk must stop before
 * it: it would split the image while the split images fill stage 0's memory for them, or
 * the arena has no room. */
static bool send_image(qw_sched *s, qw_sched_image *im, bool split, uint64_t step)
{
	qw_vision_cache *vc = &s->vcache;
	const qw_vcache_entry *e = qw_vcache_use(vc, im->content_hash, step);
	if (e) {
		im->handle = e->handle;
		im->cached = true;
		im->fresh_step = 0;
		return true;
	}
	uint64_t handle = s->next_handle;
	bool keep = qw_vcache_add(vc, im->content_hash, handle, im->n_tokens, step, image_busy,
				  drop_handle, s);
	/* an image the chunk splits stays on stage 0: within what it holds, or not yet */
	if (!keep && split && s->o.vision_tokens > 0 &&
	    s->buf->held + im->n_tokens > s->o.vision_tokens)
		return false;
	uint64_t off, bytes = (uint64_t)im->height * (uint64_t)im->width * 3;
	if (!take_arena(s, bytes, &off)) {
		if (keep)
			qw_vcache_remove(vc, handle);
		return false;
	}
	memcpy(s->o.arena + off, im->rgb, (size_t)bytes);
	s->buf->held += split && !keep ? im->n_tokens : 0;
	vc->stats.misses += vc->cap_tokens > 0;
	im->handle = s->next_handle++;
	im->cached = keep;
	im->fresh_step = step;
	im->arena_offset = off;
	return true;
}

/* Tokens of q's next chunk that fit: the budget, the free KV blocks, the plan's block
 * budget, and the arena for q's history when the chunk ends at its last token (*history
 * gets where it goes; a chunk whose history finds no room stops before that token) and
 * for the fresh images it reaches (whose arena space it takes). */
static int chunk_size(qw_sched *s, qw_seq *q, int budget, uint64_t step, qw_step_history *history)
{
	int bs = s->pool.block_size, a = q->n_scheduled;
	int c = q->n_tokens - a < budget ? q->n_tokens - a : budget;
	int kv_room = q->kv.n_blocks * bs - q->kv.n_tokens + qw_kv_available(&s->pool) * bs;
	if (c > kv_room)
		c = kv_room;
	int plan_room = (s->o.max_plan_blocks - s->buf->n_blocks) * bs - a;
	if (c > plan_room)
		c = plan_room;
	*history = (qw_step_history){0};
	if (c > 0 && a + c == q->n_tokens && q->history && q->history->n > 0) {
		uint64_t off, bytes = (uint64_t)q->history->n * sizeof(qw_token_count);
		if (take_arena(s, bytes, &off)) {
			memcpy(s->o.arena + off, q->history->entries, (size_t)bytes);
			*history = (qw_step_history){off, q->history->n, 0};
		} else {
			c--;   /* its logit row waits for room */
		}
	}
	for (int i = 0; i < q->n_images && c > 0; i++) {
		qw_sched_image *im = &q->images[i];
		if (im->handle || im->pos >= a + c || im->pos + im->n_tokens <= a)
			continue;
		if (!send_image(s, im, im->pos + im->n_tokens > a + c, step)) {
			c = im->pos > a ? im->pos - a : 0;   /* stop before it */
			break;
		}
	}
	if (c < q->n_tokens - a)
		*history = (qw_step_history){0};   /* no logit row after all (its space is freed
						      with the step's) */
	return c > 0 ? c : 0;
}

/* Places tokens [n_scheduled, n_scheduled + c) of q (its KV grown) into the plan, with its
 * history's place in the arena when the chunk gets a logit row. */
static bool place(qw_sched *s, qw_seq *q, int c, uint64_t step, const qw_step_history *history)
{
	qw_sched_plan_buf *b = s->buf;
	int a = q->n_scheduled, segments = 0;
	for (int i = 0; i < q->n_images; i++)
		segments += q->images[i].pos < a + c && q->images[i].pos + q->images[i].n_tokens > a;
	if (!grow((void **)&b->images, &b->cap_images, b->n_images + segments, sizeof *b->images))
		return false;
	int si = b->n_seqs++, row0 = b->n_tokens;
	memcpy(b->blocks + b->n_blocks, q->kv.blocks, (size_t)q->kv.n_blocks * sizeof(int32_t));
	b->n_blocks += q->kv.n_blocks;
	b->block_start[si + 1] = b->n_blocks;
	b->n_prompt_tokens += (a + c < q->n_prompt ? a + c : q->n_prompt) - (a < q->n_prompt ? a : q->n_prompt);
	for (int i = a; i < a + c; i++) {
		int r = b->n_tokens++;
		b->token_ids[r] = q->tokens[i];
		qw_seq_position(q, i, &b->positions[3 * r]);
		b->seq[r] = si;
		b->kv_index[r] = i;
		b->slot[r] = qw_kv_slot(&s->pool, &q->kv, i);
	}
	for (int i = 0; i < q->n_images; i++) {
		qw_sched_image *im = &q->images[i];
		int lo = im->pos > a ? im->pos : a;
		int hi = im->pos + im->n_tokens < a + c ? im->pos + im->n_tokens : a + c;
		if (lo >= hi)
			continue;
		bool fresh = im->fresh_step == step;
		im->placed_step = step;
		b->images[b->n_images++] = (qw_step_image){
			.handle = im->handle, .grid = {im->grid[0], im->grid[1], im->grid[2]},
			.height = im->height, .width = im->width, .n_tokens = im->n_tokens,
			.first = lo - im->pos, .count = hi - lo, .row = row0 + lo - a,
			.fresh = fresh, .keep = im->cached,
			.arena_offset = fresh ? im->arena_offset : 0};
	}
	if (a + c == q->n_tokens) {   /* its last known token: sample the next */
		int l = b->n_logits++;
		b->logit_rows[l] = b->n_tokens - 1;
		b->sampling[l] = q->sampling;
		b->sampling[l].step = (uint64_t)(q->n_tokens - q->n_prompt);
		b->history[l] = *history;
		b->seq_ids[l] = q->id;
		q->awaiting = true;
	}
	q->n_scheduled = a + c;
	q->last_step = step;
	qw_sched_publish(s, q, step);
	return true;
}

/* The newest running sequence that may give up its blocks now: not waiting on a token, not
 * in the step being built. */
static qw_seq *victim(qw_sched *s, const qw_seq *keep, uint64_t step)
{
	for (qw_seq *q = s->running.tail; q; q = q->prev)
		if (q != keep && !q->awaiting && q->last_step != step && q->kv.n_blocks > 0)
			return q;
	return NULL;
}

/* Whether q's next token finds no room in its blocks or the free ones. */
static bool kv_full(const qw_sched *s, const qw_seq *q)
{
	return q->kv.n_blocks * s->pool.block_size - q->kv.n_tokens +
	       qw_kv_available(&s->pool) * s->pool.block_size < 1;
}

/* Schedules up to `budget` tokens of q; returns how many. */
static int schedule(qw_sched *s, qw_seq *q, int budget, uint64_t step)
{
	qw_sched_plan_buf *b = s->buf;
	if (budget <= 0 || b->n_logits >= s->o.max_seqs)
		return 0;
	qw_step_history history;
	int c = chunk_size(s, q, budget, step, &history);
	while (c == 0 && q->n_tokens - q->n_scheduled == 1 && kv_full(s, q)) {
		/* a decode that finds the cache full takes the blocks of the newest sequence */
		qw_seq *v = victim(s, q, step);
		if (!v)
			return 0;
		preempt(s, v);
		c = chunk_size(s, q, budget, step, &history);
	}
	if (c == 0 || qw_kv_grow(&s->pool, &q->kv, c, NULL) != QW_OK)
		return 0;
	return place(s, q, c, step, &history) ? c : 0;
}

/* Whether q fits now, its first `cached` blocks taken from the prefix cache (`idle` of them
 * held by no sequence, so no longer available to others once taken). */
static bool admissible(const qw_sched *s, const qw_seq *q, int cached, int idle)
{
	int reserve = s->pool.n_blocks / 100 > 0 ? s->pool.n_blocks / 100 : 1;
	if (s->running.n == 0)
		reserve = 0;
	return s->running.n < s->o.max_seqs &&
	       qw_kv_blocks_for(&s->pool, q->n_tokens) - cached + reserve <=
		       qw_kv_available(&s->pool) - idle;
}

bool qw_sched_next(qw_sched *s, qw_step_plan *plan)
{
	if (s->n_inflight >= s->o.depth)
		return false;
	qw_sched_plan_buf *b = s->buf;
	uint64_t step = s->next_step;
	b->n_tokens = b->n_seqs = b->n_blocks = b->n_logits = b->n_images = b->n_fresh = 0;
	b->n_prompt_tokens = 0;
	b->held = images_held(s);
	b->block_start[0] = 0;
	int budget = s->o.max_batch_tokens;

	/* 1. single-token decodes, evenly spread over the steps in flight */
	int decodes = 0, cap = (s->running.n + s->o.depth - 1) / s->o.depth;
	for (qw_seq *q = s->running.head, *next; q && decodes < cap && budget > 0; q = next) {
		next = q->next;
		if (!q->awaiting && q->n_tokens - q->n_scheduled == 1) {
			int c = schedule(s, q, budget, step);
			budget -= c;
			decodes += c;
		}
	}
	/* 2. prompt chunks of running sequences, in admission order */
	for (qw_seq *q = s->running.head, *next; q && budget > 0; q = next) {
		next = q->next;
		if (!q->awaiting && q->n_tokens - q->n_scheduled > 1)
			budget -= schedule(s, q, budget, step);
	}
	/* 3. admissions, in arrival order, while the head of the queue fits */
	while (s->queue.head && budget > 0) {
		qw_seq *q = s->queue.head;
		int idle, cached = qw_sched_cached_prefix(s, q, step, &idle);
		if (!admissible(s, q, cached, idle))
			break;
		list_remove(&s->queue, q);
		list_push_back(&s->running, q);
		q->running = true;
		q->admitted = s->next_admit++;
		qw_sched_take_prefix(s, q, cached, step);
		budget -= schedule(s, q, budget, step);
	}
	if (b->n_tokens == 0) {
		for (int i = 0; i < b->n_fresh; i++)   /* nothing placed after all */
			arena_release(s, b->fresh[i]);
		return false;
	}

	/* the step is in flight from here */
	if (!grow((void **)&b->drops, &b->cap_drops, s->n_drops, sizeof *b->drops))
		s->n_drops = 0;   /* stage 0 keeps a few features longer; nothing breaks */
	if (s->n_drops)
		memcpy(b->drops, s->drops, (size_t)s->n_drops * sizeof *b->drops);
	*plan = (qw_step_plan){.step = step, .kind = QW_STEP_RUN, .n_tokens = b->n_tokens,
			       .n_seqs = b->n_seqs, .n_logits = b->n_logits,
			       .n_images = b->n_images, .n_drop = s->n_drops,
			       .n_blocks = b->n_blocks, .token_ids = b->token_ids,
			       .positions = b->positions, .seq = b->seq, .kv_index = b->kv_index,
			       .slot = b->slot, .block_start = b->block_start, .blocks = b->blocks,
			       .logit_rows = b->logit_rows, .sampling = b->sampling,
			       .history = b->history,
			       .images = b->images, .drop = b->drops};
	s->n_drops = 0;
	qw_inflight *f = &s->inflight[(s->inflight_head + s->n_inflight) % s->o.depth];
	f->step = step;
	f->n_logits = b->n_logits;
	f->n_prompt_tokens = b->n_prompt_tokens;
	memcpy(f->seq_ids, b->seq_ids, (size_t)b->n_logits * sizeof *f->seq_ids);
	free(f->arena);
	f->arena = NULL;
	f->n_arena = 0;
	if (b->n_fresh && (f->arena = malloc((size_t)b->n_fresh * sizeof *f->arena))) {
		memcpy(f->arena, b->fresh, (size_t)b->n_fresh * sizeof *f->arena);
		f->n_arena = b->n_fresh;
	}
	s->n_inflight++;
	s->next_step++;
	return true;
}

void qw_sched_stop_plan(qw_sched *s, qw_step_plan *plan)
{
	*plan = (qw_step_plan){.step = s->next_step++, .kind = QW_STEP_STOP};
}

static bool append_token(qw_seq *q, int32_t token)
{
	if (!grow((void **)&q->tokens, &q->cap_tokens, q->n_tokens + 1, sizeof *q->tokens))
		return false;
	q->tokens[q->n_tokens++] = token;
	return true;
}

qw_status qw_sched_complete(qw_sched *s, const qw_step_result *r, qw_sched_token_fn on_token,
			    void *ctx, int *prompt_tokens, qw_err *err)
{
	if (s->n_inflight == 0)
		return qw_fail(err, QW_E_IO, "a result for step %llu, with no step in flight",
			       (unsigned long long)r->step);
	qw_inflight *f = &s->inflight[s->inflight_head];
	if (r->step != f->step || r->n_logits != f->n_logits)
		return qw_fail(err, QW_E_IO, "a result for step %llu with %d tokens; step %llu with "
			       "%d sampled rows is the oldest in flight", (unsigned long long)r->step,
			       r->n_logits, (unsigned long long)f->step, f->n_logits);
	s->inflight_head = (s->inflight_head + 1) % s->o.depth;
	s->n_inflight--;
	if (prompt_tokens)
		*prompt_tokens = f->n_prompt_tokens;
	for (int i = 0; i < f->n_arena; i++)
		arena_release(s, f->arena[i]);
	f->n_arena = 0;
	qw_status st = QW_OK;
	for (int i = 0; i < r->n_logits; i++) {
		qw_seq *q = qw_sched_find(s, f->seq_ids[i]);
		if (!q || !q->awaiting)
			continue;   /* removed meanwhile */
		q->awaiting = false;
		if (!append_token(q, r->tokens[i]) ||
		    (q->history && !qw_history_generated(q->history, r->tokens[i]))) {
			st = qw_fail(err, QW_E_NOMEM, "out of memory for sequence %llu's tokens",
				     (unsigned long long)q->id);
			continue;
		}
		on_token(ctx, q, r->tokens[i],
			 r->logprobs && q->sampling.logprobs ? &r->logprobs[i] : NULL);
	}
	return st;
}

void qw_sched_reset(qw_sched *s, qw_sched_seq_fn on_lost, void *ctx)
{
	for (int i = 0; i < s->o.depth; i++)
		s->inflight[i].n_arena = 0;
	s->n_inflight = s->inflight_head = 0;
	s->n_drops = 0;
	arena_reset(s);
	while (s->running.head) {
		qw_seq *q = s->running.head;
		for (int i = 0; i < q->n_images; i++) {
			q->images[i].handle = 0;   /* the new stage 0 has seen none of them */
			q->images[i].cached = false;
		}
		q->awaiting = false;
		on_lost(ctx, q);
		if (s->running.head == q)      /* on_lost did not remove it: requeue */
			preempt(s, q);
	}
	qw_kv_forget_all(&s->pool);        /* the new workers' caches hold none of it */
	qw_vcache_clear(&s->vcache);       /* nor stage 0 any image: survivors forget theirs */
}
