/* test_sched.c - the scheduler against a simulated pipeline.
 *
 * The simulated workers keep a KV cache of slots and compute each sampled token as a hash
 * of the sequence's whole history read back through the plan's block table (token, its
 * positions, and the image row it carries), so a lost or misplaced chunk, a slot shared by
 * two sequences, a wrong position or image row, or a bad recomputation after preemption
 * changes the tokens.  Every sequence must get exactly the tokens it gets when run alone. */
#include "tests/unit/helpers.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/sched.h"

#define V 1000
#define PAD 7   /* the image pad token */

typedef struct sim_seq {
	qw_seq q;
	int max_new, generated;
	int32_t out[64];
	bool finished, lost;
	/* the reference: the history as it should be */
	int n_prompt;
	int32_t *prompt, *pos;
	int n_img;
	int img_pos[3], img_len[3];
	uint8_t img_seed[3];
} sim_seq;

typedef struct sim {
	uint64_t *cache;             /* (slots,) the hash of what each slot holds */
	int slots;
	uint8_t *arena;
	/* stage 0's images: handle -> (seed, tokens consumed) */
	uint64_t handles[256];
	uint8_t seeds[256];
	int n_handles;
	int steps, max_logits_per_step;
	sim_seq *seqs;
	int n;
	qw_sched *s;
	bool remove_on_finish;
} sim;

static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
	return h * 0xff51afd7ed558ccdull;
}

/* What one cache entry holds: the token, its positions and, for image rows, which image
 * row (seed of the image and the row within it). */
static uint64_t entry(int32_t token, const int32_t *pos, int img_seed, int img_row)
{
	uint64_t h = mix(mix(mix(mix((uint64_t)token, (uint64_t)pos[0]), (uint64_t)pos[1]),
			     (uint64_t)pos[2]), (uint64_t)(img_seed * 100000 + img_row));
	return h;
}

static int32_t next_token(uint64_t h)
{
	return (int32_t)(10 + h % (V - 10));
}

/* The reference: token by token over the sequence alone. */
static void reference(const sim_seq *x, int32_t *out, int n_out)
{
	int n = x->n_prompt;
	int32_t *toks = malloc((size_t)(n + n_out) * sizeof *toks);
	memcpy(toks, x->prompt, (size_t)n * sizeof *toks);
	for (int k = 0; k < n_out; k++) {
		uint64_t h = 0;
		for (int i = 0; i < n + k; i++) {
			int32_t p[3];
			for (int a = 0; a < 3; a++)
				p[a] = i < n ? x->pos[3 * i + a] : i + 5;   /* rope_delta 5 */
			int seed = 0, row = 0;
			for (int m = 0; m < x->n_img; m++)
				if (i >= x->img_pos[m] && i < x->img_pos[m] + x->img_len[m]) {
					seed = x->img_seed[m];
					row = i - x->img_pos[m];
				}
			h = mix(h, entry(toks[i], p, seed, row));
		}
		out[k] = toks[n + k] = next_token(h);
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

/* The simulated pipeline runs a plan: writes its entries, then samples its logit rows. */
static void run_plan(sim *m, const qw_step_plan *p, int32_t *tokens)
{
	m->steps++;
	if (m->steps > 1 && p->n_logits > m->max_logits_per_step)   /* past the admissions */
		m->max_logits_per_step = p->n_logits;
	for (int i = 0; i < p->n_drop; i++) {
		int k = find_handle(m, p->drop[i]);
		if (k >= 0) {
			m->handles[k] = m->handles[--m->n_handles];
			m->seeds[k] = m->seeds[m->n_handles];
		}
	}
	/* image rows: stage 0 sees fresh images in the arena */
	int *seed_of_row = calloc((size_t)p->n_tokens, sizeof(int));
	int *row_in_img = calloc((size_t)p->n_tokens, sizeof(int));
	for (int i = 0; i < p->n_images; i++) {
		const qw_step_image *im = &p->images[i];
		int k = find_handle(m, im->handle);
		if (im->fresh) {
			assert_int_equal(k, -1);
			assert_int_equal(im->first, 0);
			/* the seed is the first arena byte divided back out */
			uint8_t first = m->arena[im->arena_offset];
			uint8_t seed = 0;
			while ((uint8_t)(seed * 31) != first)
				seed++;
			uint8_t *want = image_rgb(seed, im->height, im->width);
			assert_memory_equal(m->arena + im->arena_offset, want,
					    (size_t)im->height * (size_t)im->width * 3);
			free(want);
			m->handles[m->n_handles] = im->handle;
			m->seeds[m->n_handles] = seed;
			k = m->n_handles++;
		}
		assert_true(k >= 0);   /* features of a later segment are still there */
		for (int c = 0; c < im->count; c++) {
			assert_int_equal(p->token_ids[im->row + c], PAD);
			seed_of_row[im->row + c] = m->seeds[k];
			row_in_img[im->row + c] = im->first + c;
		}
		if (im->first + im->count == im->n_tokens) {
			m->handles[k] = m->handles[--m->n_handles];
			m->seeds[k] = m->seeds[m->n_handles];
		}
	}
	/* no two tokens of a step write one slot: a GPU writes them all at once */
	for (int t = 0; t < p->n_tokens; t++)
		for (int u = 0; u < t; u++)
			if (p->slot[t] == p->slot[u])
				fail_msg("step %llu: rows %d and %d both write slot %d",
					 (unsigned long long)p->step, u, t, p->slot[t]);
	for (int t = 0; t < p->n_tokens; t++) {
		assert_true(p->slot[t] >= 0 && p->slot[t] < m->slots);
		m->cache[p->slot[t]] = entry(p->token_ids[t], &p->positions[3 * t], seed_of_row[t],
					     row_in_img[t]);
	}
	for (int l = 0; l < p->n_logits; l++) {
		int t = p->logit_rows[l], s = p->seq[t];
		const int32_t *blocks = p->blocks + p->block_start[s];
		int bs = 4;   /* block size: see make_sched */
		uint64_t h = 0;
		for (int j = 0; j <= p->kv_index[t]; j++)
			h = mix(h, m->cache[blocks[j / bs] * bs + j % bs]);
		tokens[l] = next_token(h);
	}
	free(seed_of_row);
	free(row_in_img);
}

static void on_token(void *ctx, qw_seq *q, int32_t token)
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

/* kv_blocks blocks of 4 tokens; a plan of at most budget tokens. */
static void make_sched(qw_sched *s, sim *m, int depth, int budget, int max_seqs, int kv_blocks)
{
	memset(m, 0, sizeof *m);
	m->slots = kv_blocks * 4;
	m->cache = calloc((size_t)m->slots, sizeof *m->cache);
	m->arena = calloc(1, 1 << 16);
	m->s = s;
	m->remove_on_finish = true;
	qw_sched_opts o = {.kv_blocks = kv_blocks, .block_tokens = 4, .max_seqs = max_seqs,
			   .max_batch_tokens = budget, .max_queue = 64, .depth = depth,
			   .max_plan_blocks = 4096, .arena = m->arena, .arena_bytes = 1 << 16};
	qw_err err = {0};
	if (qw_sched_init(s, &o, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

/* A sequence with a random prompt (and images among it) and random positions. */
static void make_seq(sim_seq *x, uint64_t id, int n_prompt, int n_img, int max_new,
		     uint64_t *rng)
{
	memset(x, 0, sizeof *x);
	x->n_prompt = n_prompt;
	x->max_new = max_new;
	x->prompt = malloc((size_t)n_prompt * sizeof *x->prompt);
	x->pos = malloc((size_t)n_prompt * 3 * sizeof *x->pos);
	for (int i = 0; i < n_prompt; i++) {
		*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
		x->prompt[i] = (int32_t)(10 + (*rng >> 33) % 900);
		for (int a = 0; a < 3; a++)
			x->pos[3 * i + a] = i + (int)((*rng >> (40 + a)) & 3);
	}
	/* images: runs of pads, spread through the prompt */
	x->n_img = n_prompt >= 30 ? n_img : 0;
	for (int m = 0; m < x->n_img; m++) {
		x->img_pos[m] = 2 + m * (n_prompt / 3);
		x->img_len[m] = 4 + 2 * m;   /* a (1, 2*len ... ) grid below: tokens = len */
		x->img_seed[m] = (uint8_t)(1 + (id * 3 + (uint64_t)m) % 200);
		for (int i = 0; i < x->img_len[m]; i++)
			x->prompt[x->img_pos[m] + i] = PAD;
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
	q->rope_delta = 5;
	q->n_images = x->n_img;
	q->images = x->n_img ? calloc((size_t)x->n_img, sizeof *q->images) : NULL;
	for (int m = 0; m < x->n_img; m++) {
		int h = 2 * 16, w = x->img_len[m] * 16;
		q->images[m] = (qw_sched_image){.pos = x->img_pos[m], .n_tokens = x->img_len[m],
						.grid = {1, 2, 2 * x->img_len[m]}, .height = h,
						.width = w, .rgb = image_rgb(x->img_seed[m], h, w)};
	}
}

/* Runs the simulation: post plans while the scheduler gives them, complete the oldest when
 * the pipeline is full or idle. */
static void drive(qw_sched *s, sim *m)
{
	int32_t pending[8][256];
	int n_pending = 0, guard = 0;
	for (;;) {
		qw_step_plan p;
		bool posted = false;
		while (qw_sched_next(s, &p)) {
			assert_true(p.n_tokens <= s->o.max_batch_tokens);
			run_plan(m, &p, pending[n_pending++]);
			posted = true;
		}
		if (n_pending == 0) {
			if (!posted)
				break;
			continue;
		}
		/* the oldest step's result */
		qw_step_result r = {s->inflight[s->inflight_head].step,
				    s->inflight[s->inflight_head].n_logits, pending[0]};
		qw_err err = {0};
		if (qw_sched_complete(s, &r, on_token, m, NULL, &err) != QW_OK)
			fail_msg("%s", err.msg);
		memmove(pending[0], pending[1], sizeof pending[0] * (size_t)(n_pending - 1));
		n_pending--;
		assert_true(++guard < 100000);
	}
}

static void check_against_reference(sim_seq *xs, int n)
{
	for (int i = 0; i < n; i++) {
		assert_true(xs[i].finished);
		int32_t want[64];
		reference(&xs[i], want, xs[i].max_new);
		for (int k = 0; k < xs[i].max_new; k++)
			if (xs[i].out[k] != want[k])
				fail_msg("sequence %d (prompt %d, %d images, preempted %d times): token "
					 "%d is %d, alone it is %d", i, xs[i].n_prompt, xs[i].n_img,
					 xs[i].q.preemptions, k, xs[i].out[k], want[k]);
	}
}

static void free_sim(sim *m, sim_seq *xs, int n)
{
	for (int i = 0; i < n; i++) {
		free(xs[i].prompt);
		free(xs[i].pos);
	}
	free(m->cache);
	free(m->arena);
}

/* Many sequences, three steps in flight, a cache small enough to preempt: every sequence
 * gets its solo tokens, and everything is given back at the end. */
static void test_mixed_load_matches_solo(void **state)
{
	const int depths[] = {1, 3};
	for (int d = 0; d < 2; d++) {
		qw_sched s;
		sim m;
		make_sched(&s, &m, depths[d], 24, 8, 40);
		sim_seq xs[16];
		uint64_t rng = 42;
		for (int i = 0; i < 16; i++) {
			make_seq(&xs[i], (uint64_t)(i + 1), 1 + (i * 37) % 90, 1 + i % 3,
				 1 + (i * 7) % 20, &rng);
			qw_err err = {0};
			if (qw_sched_submit(&s, &xs[i].q, xs[i].max_new, &err) != QW_OK)
				fail_msg("%s", err.msg);
		}
		drive(&s, &m);
		check_against_reference(xs, 16);
		assert_int_equal(s.pool.n_free, 40);
		assert_int_equal(s.running.n + s.queue.n, 0);
		assert_int_equal(s.n_arena_free, 1);
		assert_int_equal(s.arena_free[0].bytes, 1 << 16);
		assert_int_equal(m.n_handles, 0);   /* stage 0 holds no image features */
		assert_true(s.preempted > 0);   /* the cache was tight enough to preempt */
		qw_sched_free(&s);
		free_sim(&m, xs, 16);
	}
}

/* Steady decoding with a deep pipeline: steps are filled evenly. */
static void test_decode_cadence(void **state)
{
	qw_sched s;
	sim m;
	make_sched(&s, &m, 3, 256, 16, 64);
	sim_seq xs[9];
	uint64_t rng = 7;
	for (int i = 0; i < 9; i++) {
		make_seq(&xs[i], (uint64_t)(i + 1), 2, 0, 20, &rng);
		assert_int_equal(qw_sched_submit(&s, &xs[i].q, 20, NULL), QW_OK);
	}
	drive(&s, &m);
	check_against_reference(xs, 9);
	assert_true(m.max_logits_per_step <= 3);
	qw_sched_free(&s);
	free_sim(&m, xs, 9);
}

static void test_refusals_and_removal(void **state)
{
	qw_sched s;
	sim m;
	make_sched(&s, &m, 2, 16, 4, 64);
	uint64_t rng = 1;
	sim_seq big, x;
	qw_err err = {0};
	make_seq(&big, 1, 200, 0, 100, &rng);   /* 300 tokens: more than 64 blocks of 4 */
	assert_int_equal(qw_sched_submit(&s, &big.q, 100, &err), QW_E_ARG);
	assert_contains(err.msg, "the cache holds 64");
	free(big.q.tokens);
	free(big.q.positions);

	/* a full queue answers QW_E_FULL */
	s.o.max_queue = 1;
	make_seq(&x, 2, 10, 0, 5, &rng);
	assert_int_equal(qw_sched_submit(&s, &x.q, 5, &err), QW_OK);
	sim_seq y;
	make_seq(&y, 3, 10, 0, 5, &rng);
	assert_int_equal(qw_sched_submit(&s, &y.q, 5, &err), QW_E_FULL);
	free(y.q.tokens);
	free(y.q.positions);

	/* removed while its step is in flight: its blocks come back at once and its token is
	 * ignored */
	qw_step_plan p;
	assert_true(qw_sched_next(&s, &p));
	int32_t tokens[4];
	run_plan(&m, &p, tokens);
	assert_true(s.pool.n_free < 64);
	assert_true(x.q.awaiting);
	qw_sched_remove(&s, &x.q);
	assert_int_equal(s.pool.n_free, 64);
	assert_null(qw_sched_find(&s, 2));
	qw_step_result r = {p.step, p.n_logits, tokens};
	m.remove_on_finish = true;
	assert_int_equal(qw_sched_complete(&s, &r, on_token, &m, NULL, &err), QW_OK);
	assert_int_equal(x.generated, 0);
	assert_false(qw_sched_next(&s, &p));
	qw_sched_free(&s);
	free_sim(&m, &big, 1);
	free(x.prompt);
	free(x.pos);
	free(y.prompt);
	free(y.pos);
}

/* A lost pipeline: running sequences are handed back, queued ones stay and then finish. */
static void test_reset(void **state)
{
	qw_sched s;
	sim m;
	make_sched(&s, &m, 2, 8, 2, 64);
	uint64_t rng = 3;
	sim_seq xs[4];
	for (int i = 0; i < 4; i++) {
		make_seq(&xs[i], (uint64_t)(i + 1), 20, 0, 4, &rng);
		assert_int_equal(qw_sched_submit(&s, &xs[i].q, 4, NULL), QW_OK);
	}
	qw_step_plan p;
	int32_t tokens[8];
	assert_true(qw_sched_next(&s, &p));
	run_plan(&m, &p, tokens);
	assert_int_equal(s.running.n, 1);   /* one admitted: its first chunk fills the step */
	qw_sched_reset(&s, on_lost, &m);
	assert_true(xs[0].lost);
	assert_int_equal(s.pool.n_free, 64);
	assert_int_equal(qw_sched_inflight(&s), 0);
	memset(m.cache, 0, (size_t)m.slots * sizeof *m.cache);   /* the new workers' cache */
	drive(&s, &m);
	check_against_reference(xs + 1, 3);
	qw_sched_free(&s);
	free_sim(&m, xs, 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mixed_load_matches_solo),
		cmocka_unit_test(test_decode_cadence),
		cmocka_unit_test(test_refusals_and_removal),
		cmocka_unit_test(test_reset),
	};
	return cmocka_run_group_tests_name("sched", tests, NULL, NULL);
}
