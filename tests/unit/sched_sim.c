/* sched_sim.c - the simulated pipeline of the scheduler's tests.  See sched_sim.h. */
#include "tests/unit/sched_sim.h"

#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
	return h * 0xff51afd7ed558ccdull;
}

/* What token i adds to its history: its id, its positions and, for image rows, which image
 * row (seed of the image and the row within it). */
static uint64_t entry(int32_t token, const int32_t *pos, int img_seed, int img_row)
{
	return mix(mix(mix(mix((uint64_t)token, (uint64_t)pos[0]), (uint64_t)pos[1]),
		       (uint64_t)pos[2]), (uint64_t)(img_seed * 100000 + img_row));
}

static int32_t next_token(uint64_t h)
{
	return (int32_t)(10 + h % (SIM_V - 10));
}

void sim_reference(const sim_seq *x, int32_t *out, int n_out)
{
	int n = x->n_prompt;
	int32_t *toks = malloc((size_t)(n + n_out) * sizeof *toks);
	memcpy(toks, x->prompt, (size_t)n * sizeof *toks);
	uint64_t h = 0;
	for (int i = 0; i < n + n_out - 1; i++) {
		int32_t p[3];
		for (int a = 0; a < 3; a++)
			p[a] = i < n ? x->pos[3 * i + a] : i + SIM_DELTA;
		int seed = 0, row = 0;
		for (int m = 0; m < x->n_img; m++)
			if (i >= x->img_pos[m] && i < x->img_pos[m] + x->img_len[m]) {
				seed = x->img_seed[m];
				row = i - x->img_pos[m];
			}
		h = mix(h, entry(toks[i], p, seed, row));
		if (i >= n - 1)
			out[i - (n - 1)] = toks[i + 1] = next_token(h);
	}
	free(toks);
}

static uint8_t *image_rgb(uint8_t seed, int h, int w)
{
	uint8_t *rgb = malloc((size_t)h * (size_t)w * 3);
	for (int i = 0; i < h * w * 3; i++)
		rgb[i] = (uint8_t)(seed * 31 + i * 7);
	return rgb;
}

static int find_handle(sim *m, uint64_t handle)
{
	for (int i = 0; i < m->n_handles; i++)
		if (m->handles[i] == handle)
			return i;
	return -1;
}

static void forget_handle(sim *m, int k)
{
	m->handles[k] = m->handles[--m->n_handles];
	m->seeds[k] = m->seeds[m->n_handles];
	m->tokens[k] = m->tokens[m->n_handles];
}

static int tokens_held(const sim *m)
{
	int held = 0;
	for (int i = 0; i < m->n_handles; i++)
		held += m->tokens[i];
	return held;
}

/* Stage 0: which image and row each of the plan's image rows carries. */
static void image_rows(sim *m, const qw_step_plan *p, int *seed_of_row, int *row_in_img)
{
	for (int i = 0; i < p->n_drop; i++) {
		int k = find_handle(m, p->drop[i]);
		if (k >= 0)
			forget_handle(m, k);
	}
	for (int i = 0; i < p->n_images; i++) {
		const qw_step_image *im = &p->images[i];
		int k = find_handle(m, im->handle);
		if (im->fresh) {
			assert_int_equal(k, -1);
			/* the seed is the first arena byte divided back out (31 is odd: invertible) */
			uint8_t first = m->arena[im->arena_offset], seed = 0;
			while ((uint8_t)(seed * 31) != first)
				seed++;
			uint8_t *want = image_rgb(seed, im->height, im->width);
			assert_memory_equal(m->arena + im->arena_offset, want,
					    (size_t)im->height * (size_t)im->width * 3);
			free(want);
			assert_true(m->n_handles < 256);
			m->handles[m->n_handles] = im->handle;
			m->seeds[m->n_handles] = seed;
			m->tokens[m->n_handles] = im->n_tokens;
			m->fresh[seed]++;
			k = m->n_handles++;
			if (tokens_held(m) > m->held_peak)
				m->held_peak = tokens_held(m);
			if (im->first + im->count < im->n_tokens && tokens_held(m) > m->held_split)
				m->held_split = tokens_held(m);
		}
		assert_true(k >= 0);   /* features of a later segment are still there */
		for (int c = 0; c < im->count; c++) {
			assert_int_equal(p->token_ids[im->row + c], SIM_PAD);
			seed_of_row[im->row + c] = m->seeds[k];
			row_in_img[im->row + c] = im->first + c;
		}
		if (im->first + im->count == im->n_tokens && !im->keep)   /* kept: until dropped */
			forget_handle(m, k);
	}
	if (tokens_held(m) > m->held_after)
		m->held_after = tokens_held(m);
}

/* Each logit row's history against the reference's tokens so far. */
static void check_histories(sim *m, const qw_step_plan *p)
{
	const qw_sched *s = m->s;
	const qw_inflight *f = &s->inflight[(s->inflight_head + s->n_inflight - 1) % s->o.depth];
	assert_int_equal(f->step, p->step);
	for (int l = 0; l < p->n_logits; l++) {
		const qw_seq *q = qw_sched_find(s, f->seq_ids[l]);
		const sim_seq *x = (const sim_seq *)q->owner;
		const qw_step_history *h = &p->history[l];
		if (!x->penalized) {
			assert_int_equal(h->n, 0);
			continue;
		}
		uint32_t want[SIM_V] = {0};
		int distinct = 0;
		for (int i = 0; x->prompt_penalized && i < x->n_prompt; i++) {
			distinct += want[x->prompt[i]] == 0;
			want[x->prompt[i]] |= QW_IN_PROMPT;
		}
		for (int i = 0; i < x->generated; i++) {
			distinct += want[x->out[i]] == 0;
			want[x->out[i]]++;
		}
		if (h->n != distinct)
			fail_msg("step %llu: sequence %llu's history has %d tokens, %d expected",
				 (unsigned long long)p->step, (unsigned long long)q->id, h->n, distinct);
		assert_true(h->arena_offset + (uint64_t)h->n * sizeof(qw_token_count) <=
			    s->o.arena_bytes);
		const qw_token_count *e = (const qw_token_count *)(m->arena + h->arena_offset);
		for (int i = 0; i < h->n; i++) {
			assert_true(e[i].token >= 0 && e[i].token < SIM_V);
			if (e[i].count != want[e[i].token])
				fail_msg("step %llu: sequence %llu's token %d counts %#x, %#x expected",
					 (unsigned long long)p->step, (unsigned long long)q->id,
					 e[i].token, e[i].count, want[e[i].token]);
			want[e[i].token] = 0xdeadu;   /* a token listed twice fails */
		}
	}
}

void sim_run_plan(sim *m, const qw_step_plan *p, int32_t *tokens)
{
	const qw_kv_pool *pool = &m->s->pool;
	m->steps++;
	if (m->steps > 1 && p->n_logits > m->max_logits_per_step)   /* past the admissions */
		m->max_logits_per_step = p->n_logits;
	int *seed_of_row = calloc((size_t)p->n_tokens, sizeof(int));
	int *row_in_img = calloc((size_t)p->n_tokens, sizeof(int));
	image_rows(m, p, seed_of_row, row_in_img);
	/* no two tokens of a step write one slot: a GPU writes them all at once */
	for (int t = 0; t < p->n_tokens; t++)
		for (int u = 0; u < t; u++)
			if (p->slot[t] == p->slot[u])
				fail_msg("step %llu: rows %d and %d both write slot %d",
					 (unsigned long long)p->step, u, t, p->slot[t]);
	/* tokens in plan order: a sequence's tokens are consecutive and in order, so the entry
	 * before each is written by now (in this plan or an earlier one) */
	for (int t = 0; t < p->n_tokens; t++) {
		const int32_t *blocks = p->blocks + p->block_start[p->seq[t]];
		int i = p->kv_index[t];
		int32_t b = blocks[i / SIM_BLOCK];
		assert_int_equal(p->slot[t], b * SIM_BLOCK + i % SIM_BLOCK);
		assert_true(p->slot[t] >= 0 && p->slot[t] < m->slots);
		if (pool->ref[b] != 1 || (pool->published[b] && pool->ready_step[b] != p->step))
			fail_msg("step %llu writes block %d, which %d sequences hold%s",
				 (unsigned long long)p->step, b, pool->ref[b], pool->published[b] ?
				 " and an earlier step published" : "");
		for (int j = 0; j < i; j++) {   /* what attention reads */
			int32_t slot = blocks[j / SIM_BLOCK] * SIM_BLOCK + j % SIM_BLOCK;
			if (!m->written[slot] || (m->written[slot] == p->step &&
						  m->writer[slot] != p->seq[t]))
				fail_msg("step %llu: entry %d of a sequence (slot %d) is read before it "
					 "is written (written by step %llu)", (unsigned long long)p->step,
					 j, slot, (unsigned long long)m->written[slot]);
		}
		uint64_t before = i ? m->cache[blocks[(i - 1) / SIM_BLOCK] * SIM_BLOCK +
					      (i - 1) % SIM_BLOCK] : 0;
		m->cache[p->slot[t]] = mix(before, entry(p->token_ids[t], &p->positions[3 * t],
							 seed_of_row[t], row_in_img[t]));
		m->written[p->slot[t]] = p->step;
		m->writer[p->slot[t]] = p->seq[t];
	}
	for (int l = 0; l < p->n_logits; l++)
		tokens[l] = next_token(m->cache[p->slot[p->logit_rows[l]]]);
	check_histories(m, p);
	free(seed_of_row);
	free(row_in_img);
}

static void on_token(void *ctx, qw_seq *q, int32_t token, const qw_sample_logprobs *lp)
{
	sim *m = ctx;
	sim_seq *x = (sim_seq *)q->owner;
	x->out[x->generated++] = token;
	if (x->generated == x->max_new) {
		x->finished = true;
		if (m->remove_on_finish)
			qw_sched_remove(m->s, q);
	}
}

static void on_lost(void *ctx, qw_seq *q)
{
	sim *m = ctx;
	((sim_seq *)q->owner)->lost = true;
	qw_sched_remove(m->s, q);
}

void sim_reset(sim *m)
{
	qw_sched_reset(m->s, on_lost, m);
	memset(m->cache, 0, (size_t)m->slots * sizeof *m->cache);
	memset(m->written, 0, (size_t)m->slots * sizeof *m->written);
	m->n_handles = 0;
}

void sim_make_arena(qw_sched *s, sim *m, int depth, int budget, int max_seqs, int kv_blocks,
		    bool prefix_cache, uint64_t arena_bytes)
{
	memset(m, 0, sizeof *m);
	m->slots = kv_blocks * SIM_BLOCK;
	m->cache = calloc((size_t)m->slots, sizeof *m->cache);
	m->written = calloc((size_t)m->slots, sizeof *m->written);
	m->writer = calloc((size_t)m->slots, sizeof *m->writer);
	m->arena = calloc(1, arena_bytes);
	m->s = s;
	m->remove_on_finish = true;
	qw_sched_opts o = {.kv_blocks = kv_blocks, .block_tokens = SIM_BLOCK,
			   .max_seqs = max_seqs, .max_batch_tokens = budget, .max_queue = 64,
			   .depth = depth, .max_plan_blocks = 4096, .arena = m->arena,
			   .arena_bytes = arena_bytes, .prefix_cache = prefix_cache};
	qw_err err = {0};
	if (qw_sched_init(s, &o, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

void sim_make(qw_sched *s, sim *m, int depth, int budget, int max_seqs, int kv_blocks,
	      bool prefix_cache)
{
	sim_make_arena(s, m, depth, budget, max_seqs, kv_blocks, prefix_cache, SIM_ARENA);
}

void sim_seq_penalize(sim_seq *x, bool with_prompt)
{
	x->penalized = true;
	x->prompt_penalized = with_prompt;
	x->q.sampling.frequency_penalty = 0.5f;
	x->q.sampling.repetition_penalty = with_prompt ? 1.2f : 0.0f;
	x->q.history = malloc(sizeof *x->q.history);
	assert_non_null(x->q.history);
	assert_int_equal(qw_history_init(x->q.history, x->q.tokens, x->q.n_prompt, with_prompt,
					 NULL), QW_OK);
}

void sim_free(sim *m)
{
	free(m->cache);
	free(m->written);
	free(m->writer);
	free(m->arena);
}

void sim_end(qw_sched *s, sim *m, sim_seq *xs, int n)
{
	qw_sched_free(s);
	for (int i = 0; i < n; i++)
		sim_seq_free(&xs[i], true);
	sim_free(m);
}

void sim_seq_init(sim_seq *x, uint64_t id, const int32_t *prompt, const int32_t *pos,
		  int n_prompt, int n_img, const int *img_pos, const int *img_len,
		  const uint8_t *img_seed, int max_new)
{
	memset(x, 0, sizeof *x);
	assert_true(n_img <= SIM_MAX_IMG && max_new <= SIM_MAX_OUT);
	x->n_prompt = n_prompt;
	x->max_new = max_new;
	x->prompt = malloc((size_t)n_prompt * sizeof *x->prompt);
	x->pos = malloc((size_t)n_prompt * 3 * sizeof *x->pos);
	memcpy(x->prompt, prompt, (size_t)n_prompt * sizeof *x->prompt);
	memcpy(x->pos, pos, (size_t)n_prompt * 3 * sizeof *x->pos);
	x->n_img = n_img;
	for (int m = 0; m < n_img; m++) {
		x->img_pos[m] = img_pos[m];
		x->img_len[m] = img_len[m];
		x->img_seed[m] = img_seed[m];
		for (int i = 0; i < img_len[m]; i++)
			x->prompt[img_pos[m] + i] = SIM_PAD;
	}
	qw_seq *q = &x->q;
	q->id = id;
	q->owner = x;
	q->n_tokens = q->n_prompt = n_prompt;
	q->cap_tokens = n_prompt;
	q->tokens = malloc((size_t)n_prompt * sizeof *q->tokens);
	memcpy(q->tokens, x->prompt, (size_t)n_prompt * sizeof *q->tokens);
	q->positions = malloc((size_t)n_prompt * 3 * sizeof *q->positions);
	memcpy(q->positions, x->pos, (size_t)n_prompt * 3 * sizeof *q->positions);
	q->rope_delta = SIM_DELTA;
	q->n_images = n_img;
	q->images = n_img > 0 ? calloc((size_t)n_img, sizeof *q->images) : NULL;
	for (int m = 0; m < n_img; m++) {
		/* a (1, 2, 2 len) grid of patches merges 2 x 2 into len tokens */
		int h = 2 * 16, w = img_len[m] * 16;
		q->images[m] = (qw_sched_image){.pos = img_pos[m], .n_tokens = img_len[m],
						.grid = {1, 2, 2 * img_len[m]}, .height = h,
						.width = w, .rgb = image_rgb(img_seed[m], h, w)};
	}
}

void sim_seq_random(sim_seq *x, uint64_t id, int n_prompt, int n_img, int max_new,
		    uint64_t *rng)
{
	int32_t *prompt = malloc((size_t)n_prompt * sizeof *prompt);
	int32_t *pos = malloc((size_t)n_prompt * 3 * sizeof *pos);
	for (int i = 0; i < n_prompt; i++) {
		*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
		prompt[i] = (int32_t)(10 + (*rng >> 33) % 900);
		for (int a = 0; a < 3; a++)
			pos[3 * i + a] = i + (int)((*rng >> (40 + a)) & 3);
	}
	/* images: runs of pads, spread through the prompt */
	int img_pos[SIM_MAX_IMG], img_len[SIM_MAX_IMG];
	uint8_t img_seed[SIM_MAX_IMG];
	if (n_prompt < 30)
		n_img = 0;
	for (int m = 0; m < n_img; m++) {
		img_pos[m] = 2 + m * (n_prompt / 3);
		img_len[m] = 4 + 2 * m;
		img_seed[m] = (uint8_t)(1 + (id * 3 + (uint64_t)m) % 200);
	}
	sim_seq_init(x, id, prompt, pos, n_prompt, n_img, img_pos, img_len, img_seed, max_new);
	free(prompt);
	free(pos);
}

void sim_seq_free(sim_seq *x, bool submitted)
{
	if (!submitted) {
		if (x->q.history)
			qw_history_free(x->q.history);
		free(x->q.history);
		for (int m = 0; m < x->q.n_images; m++)
			free(x->q.images[m].rgb);
		free(x->q.images);
		free(x->q.tokens);
		free(x->q.positions);
	}
	free(x->prompt);
	free(x->pos);
	x->prompt = x->pos = NULL;
}

/* The steps in flight, their results computed when they were posted. */
typedef struct pending {
	int32_t tokens[8][256];
	int n;
} pending;

void sim_complete(sim *m, const int32_t *tokens)
{
	qw_sched *s = m->s;
	qw_step_result r = {s->inflight[s->inflight_head].step,
			    s->inflight[s->inflight_head].n_logits, tokens, NULL};
	qw_err err = {0};
	if (qw_sched_complete(s, &r, on_token, m, NULL, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

void sim_drive(sim *m)
{
	qw_sched *s = m->s;
	static pending pend;
	int guard = 0;
	pend.n = 0;
	for (;;) {
		qw_step_plan p;
		bool posted = false;
		while (qw_sched_next(s, &p)) {
			assert_true(p.n_tokens <= s->o.max_batch_tokens);
			assert_true(pend.n < 8);
			sim_run_plan(m, &p, pend.tokens[pend.n++]);
			posted = true;
		}
		if (pend.n == 0) {
			if (!posted)
				break;
			continue;
		}
		sim_complete(m, pend.tokens[0]);
		memmove(pend.tokens[0], pend.tokens[1], sizeof pend.tokens[0] * (size_t)(pend.n - 1));
		pend.n--;
		assert_true(++guard < 100000);
	}
}

void sim_check(sim_seq *xs, int n)
{
	for (int i = 0; i < n; i++) {
		if (!xs[i].cancelled && !xs[i].lost)
			assert_true(xs[i].finished);
		int32_t want[SIM_MAX_OUT];
		sim_reference(&xs[i], want, xs[i].max_new);
		for (int k = 0; k < xs[i].generated; k++)
			if (xs[i].out[k] != want[k])
				fail_msg("sequence %d (prompt %d, %d images, preempted %d times, %d "
					 "tokens from the prefix cache): token %d is %d, alone it is "
					 "%d", i, xs[i].n_prompt, xs[i].n_img, xs[i].q.preemptions,
					 xs[i].q.n_cached, k, xs[i].out[k], want[k]);
	}
}

void sim_check_tables(const qw_kv_pool *p, const qw_kv_seq *const *tables, int n_tables)
{
	int n = p->n_blocks, used = 0;
	int *refs = calloc((size_t)n, sizeof *refs), *states = calloc((size_t)n, sizeof *states);
	for (int i = 0; i < n_tables; i++) {
		const qw_kv_seq *t = tables[i];
		assert_int_equal(t->n_blocks, qw_kv_blocks_for(p, t->n_tokens));
		assert_true(t->n_published <= t->n_blocks);
		for (int j = 0; j < t->n_blocks; j++)
			refs[t->blocks[j]]++;
	}
	for (int b = 0; b < n; b++) {
		if (p->ref[b] != refs[b])
			fail_msg("block %d: %d references counted, %d tables hold it", b, p->ref[b],
				 refs[b]);
		if (refs[b] > 0) {
			states[b]++;
			used++;
		}
		if (p->published[b])   /* found by its key (from any later step) */
			assert_int_equal(qw_kv_find(p, p->key[b], p->parent[b],
						    p->tokens + (size_t)b * (size_t)p->block_size,
						    UINT64_MAX), b);
	}
	for (int i = 0; i < p->n_free; i++) {
		int32_t b = p->free_list[i];
		assert_true(refs[b] == 0 && !p->published[b]);
		states[b]++;
	}
	int cached = 0;
	for (int32_t b = p->lru_head; b >= 0; b = p->lru_next[b], cached++) {
		assert_true(refs[b] == 0 && p->published[b]);
		states[b]++;
	}
	assert_int_equal(cached, p->n_cached);
	for (int b = 0; b < n; b++)
		if (states[b] != 1)
			fail_msg("block %d is in %d of the states used, cached, free", b, states[b]);
	assert_int_equal(used + p->n_cached + p->n_free, n);
	assert_int_equal(qw_kv_used(p), used);
	free(refs);
	free(states);
}

void sim_check_pool(const qw_sched *s)
{
	const qw_kv_seq *tables[256];
	int n = 0;
	for (const qw_seq *q = s->running.head; q; q = q->next) {
		assert_true(n < 256);
		tables[n++] = &q->kv;
	}
	for (const qw_seq *q = s->queue.head; q; q = q->next)
		assert_int_equal(q->kv.n_blocks, 0);
	sim_check_tables(&s->pool, tables, n);
}
