/* test_reserve.c - step memory reserved at load, then sealed, on the CPU backend (the CUDA
 * backend's is held to the same in tests/gpu/test_cuda_reserve.c):
 *   - a step within the limits a backend reserved for runs; one past any of them (tokens,
 *     sequences, logit rows, context) fails with QW_E_LIMIT naming what it needs, what was
 *     reserved and the setting behind it, where a backend that reserved nothing runs it;
 *   - once sealed, nothing is allocated: activations, KV caches, uploads are refused;
 *   - the warm-up runs steps of the largest sizes (a reservation smaller than them fails it,
 *     at load) and leaves no KV cache;
 *   - stage 0's vision store sees images into memory made once (it works on a sealed backend,
 *     where qw_vision_forward, which allocates, fails), packs its runs when the free rows are
 *     scattered, gives each image the features qw_vision_forward gives it, and refuses an
 *     image larger than it was made for or one it has no room left for.
 * The model is the tiny MoE fixture's config with synthetic weights. */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/vision_store.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/forward.h"
#include "kernels/step_limits.h"
#include "kernels/vision.h"
#include "loader/config.h"

#define BLOCK 4
#define MAX_T 32        /* the stage's scratch rows */

static qw_config cfg;

static int setup(void **state)
{
	qw_err err = {0};
	if (qw_config_load(fixture("hf/tiny-moe/model/config.json"), &cfg, &err) != QW_OK) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	return 0;
}

static qw_backend *cpu(void)
{
	qw_backend *be;
	qw_err err = {0};
	assert_int_equal(qw_cpu_backend_create(&be, &err), QW_OK);
	return be;
}

/* The whole model as one stage on be, with synthetic weights. */
static void load(qw_stage_model *m, qw_backend *be)
{
	qw_stage stage = {0, 1, 0, cfg.text.num_layers};
	qw_err err = {0};
	if (qw_stage_model_load_synthetic(m, &cfg, &stage, be, 3, MAX_T, NULL, NULL, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

static qw_step_limits limits(int max_tokens, int max_seqs, int max_context)
{
	qw_step_limits lim = {.max_tokens = max_tokens, .max_seqs = max_seqs,
			      .max_logits = max_seqs, .max_context = max_context,
			      .block_size = BLOCK};
	qw_stage stage = {0, 1, 0, cfg.text.num_layers};
	qw_step_limits_shapes(&lim, &cfg, &stage, 4);
	return lim;
}

/* A step of n_seqs sequences, sequence s of `len` tokens whose first is at KV index `at`;
 * sequence s owns blocks [s * per_seq, (s + 1) * per_seq). */
typedef struct step_buf {
	int32_t ids[256], pos[768], seq[256], kv[256], slot[256], tables[1024], rows[64];
} step_buf;

static qw_batch step(step_buf *sb, int n_seqs, int len, int at)
{
	int per_seq = (at + len + BLOCK - 1) / BLOCK, t = 0;
	assert_true(n_seqs * len <= 256 && n_seqs * per_seq <= 1024 && n_seqs <= 64);
	for (int s = 0; s < n_seqs; s++) {
		for (int i = 0; i < len; i++, t++) {
			int k = at + i;
			sb->ids[t] = 1 + (t * 7) % 500;
			sb->pos[3 * t] = sb->pos[3 * t + 1] = sb->pos[3 * t + 2] = k;
			sb->seq[t] = s;
			sb->kv[t] = k;
			sb->slot[t] = (s * per_seq + k / BLOCK) * BLOCK + k % BLOCK;
		}
		for (int j = 0; j < per_seq; j++)
			sb->tables[s * per_seq + j] = s * per_seq + j;
		sb->rows[s] = t - 1;
	}
	return (qw_batch){.n_tokens = t, .token_ids = sb->ids, .positions = sb->pos,
			  .seq = sb->seq, .kv_index = sb->kv, .slot = sb->slot, .n_seqs = n_seqs,
			  .max_blocks = per_seq, .block_tables = sb->tables, .n_logits = n_seqs,
			  .logit_rows = sb->rows};
}

/* A stage on be reserved for lim (when given), with a KV cache of `blocks`, then sealed. */
typedef struct stage_run {
	qw_stage_model m;
	qw_act hidden, logits;
} stage_run;

static void start(stage_run *r, qw_backend *be, const qw_step_limits *lim, int blocks)
{
	qw_err err = {0};
	load(&r->m, be);
	assert_int_equal(be->act_alloc(be, MAX_T, cfg.text.hidden_size, &r->hidden, &err), QW_OK);
	assert_int_equal(be->act_alloc(be, 8, cfg.text.vocab_size, &r->logits, &err), QW_OK);
	if (lim)
		assert_int_equal(be->reserve(be, lim, NULL, &err), QW_OK);
	assert_int_equal(qw_stage_model_alloc_kv(&r->m, blocks, BLOCK, &err), QW_OK);
	if (lim)
		be->seal(be);
}

static void stop(stage_run *r, qw_backend *be)
{
	be->act_free(be, &r->hidden);
	be->act_free(be, &r->logits);
	qw_stage_model_free(&r->m);
	be->destroy(be);
}

static qw_status run(stage_run *r, const qw_batch *b, qw_err *err)
{
	return qw_stage_step(&r->m, b, &r->hidden, &r->logits, err);
}

/* A step past the limit: QW_E_LIMIT, naming the step's need and the setting. */
static void refused(stage_run *r, const qw_batch *b, const char *need, const char *setting)
{
	qw_err err = {0};
	assert_int_equal(run(r, b, &err), QW_E_LIMIT);
	assert_contains(err.msg, need);
	assert_contains(err.msg, setting);
	assert_contains(err.msg, "reserved step memory");
}

static void test_steps_held_to_limits(void **state)
{
	qw_step_limits lim = limits(16, 4, 64);
	stage_run r, free_run;
	qw_backend *be = cpu(), *unreserved = cpu();
	start(&r, be, &lim, 128);
	start(&free_run, unreserved, NULL, 128);
	step_buf sb;
	qw_err err = {0};
	/* within: 16 tokens; 4 sequences of 4; a sequence at the longest context */
	qw_batch b = step(&sb, 1, 16, 0);
	assert_int_equal(run(&r, &b, &err), QW_OK);
	b = step(&sb, 4, 4, 0);
	assert_int_equal(run(&r, &b, &err), QW_OK);
	b = step(&sb, 1, 1, 63);
	assert_int_equal(run(&r, &b, &err), QW_OK);
	int32_t tokens[8];
	qw_sampling greedy[8];
	for (int i = 0; i < 8; i++)
		greedy[i] = (qw_sampling){.top_p = 1.0f};
	r.logits.rows = 4;
	assert_int_equal(be->sample(be, &r.logits, greedy, NULL, tokens, NULL, &err), QW_OK);

	/* past each limit: refused here, run where nothing was reserved */
	const char *need[][2] = {{"needs 17 tokens", "max-batch-tokens"},
				 {"needs 5 sequences", "max-seqs"},
				 {"needs 17 KV blocks per sequence", "max-model-len"}};
	for (int i = 0; i < 3; i++) {
		b = i == 0 ? step(&sb, 1, 17, 0) : i == 1 ? step(&sb, 5, 1, 0) : step(&sb, 1, 1, 64);
		refused(&r, &b, need[i][0], need[i][1]);
		assert_int_equal(run(&free_run, &b, &err), QW_OK);
	}
	r.logits.rows = 5;
	assert_int_equal(be->sample(be, &r.logits, greedy, NULL, tokens, NULL, &err), QW_E_LIMIT);
	assert_contains(err.msg, "needs 5 logit rows");

	/* sealed: nothing more is allocated */
	qw_act a;
	qw_kv_cache *kv;
	qw_kv_shape shape = {1, 4, BLOCK, cfg.text.num_kv_heads, cfg.text.head_dim};
	const qw_tensor *copy;
	assert_int_equal(be->act_alloc(be, 2, 8, &a, &err), QW_E_LIMIT);
	assert_contains(err.msg, "a 2 x 8 activation was asked for after the backend was sealed");
	assert_int_equal(be->kv_alloc(be, &shape, &kv, &err), QW_E_LIMIT);
	assert_contains(err.msg, "sealed");
	assert_int_equal(be->upload(be, r.m.w.embed, &copy, &err), QW_E_LIMIT);
	assert_int_equal(unreserved->act_alloc(unreserved, 2, 8, &a, &err), QW_OK);
	unreserved->act_free(unreserved, &a);
	stop(&r, be);
	stop(&free_run, unreserved);
}

static void test_warm_up(void **state)
{
	qw_err err = {0};
	/* reserved for what it runs: the largest steps pass, and no KV cache is left */
	qw_step_limits lim = limits(16, 4, 64);
	qw_backend *be = cpu();
	stage_run r;
	load(&r.m, be);
	assert_int_equal(be->act_alloc(be, MAX_T, cfg.text.hidden_size, &r.hidden, &err), QW_OK);
	assert_int_equal(be->act_alloc(be, 4, cfg.text.vocab_size, &r.logits, &err), QW_OK);
	assert_int_equal(be->reserve(be, &lim, NULL, &err), QW_OK);
	assert_int_equal(qw_stage_model_warm_up(&r.m, &lim, &r.hidden, &r.logits, &err), QW_OK);
	assert_null(r.m.kv);
	/* a reservation smaller than the steps (16 tokens, 4 sequences) fails it, at load */
	qw_step_limits small_t = limits(8, 4, 64), small_s = limits(16, 2, 64);
	small_s.max_logits = 4;
	assert_int_equal(be->reserve(be, &small_t, NULL, &err), QW_OK);
	assert_int_equal(qw_stage_model_warm_up(&r.m, &lim, &r.hidden, &r.logits, &err),
			 QW_E_LIMIT);
	assert_contains(err.msg, "warm-up");
	assert_contains(err.msg, "needs 16 tokens");
	assert_null(r.m.kv);
	assert_int_equal(be->reserve(be, &small_s, NULL, &err), QW_OK);
	assert_int_equal(qw_stage_model_warm_up(&r.m, &lim, &r.hidden, &r.logits, &err),
			 QW_E_LIMIT);
	assert_contains(err.msg, "needs 3 sequences");   /* sizes 1, 2, 3, 4 in turn */
	/* more rows than the stage has scratch for, or a KV cache already there: refused */
	qw_step_limits big = limits(MAX_T + 1, 4, 64);
	assert_int_equal(qw_stage_model_warm_up(&r.m, &big, &r.hidden, &r.logits, &err), QW_E_ARG);
	assert_int_equal(qw_stage_model_alloc_kv(&r.m, 4, BLOCK, &err), QW_OK);
	assert_int_equal(qw_stage_model_warm_up(&r.m, &lim, &r.hidden, &r.logits, &err), QW_E_ARG);
	stop(&r, be);
}

// ---------------------------------------------------------------------------------------
// stage 0's vision store

static float *pixels(int rows, int seed)
{
	const qw_vision_config *vc = &cfg.vision;
	int cols = vc->in_channels * vc->temporal_patch_size * vc->patch_size * vc->patch_size;
	float *p = malloc((size_t)rows * (size_t)cols * sizeof *p);
	uint32_t x = (uint32_t)seed * 2654435761u + 1;
	for (int i = 0; i < rows * cols; i++) {
		x = x * 1664525u + 1013904223u;
		p[i] = (float)((x >> 8) & 0xffff) / 32768.0f - 1.0f;
	}
	return p;
}

/* An image of h x w patches (one frame pair): its grid and pixels. */
typedef struct image {
	int32_t grid[3];
	int rows;
	float *px;
} image;

static image make_image(int h, int w, int seed)
{
	return (image){{1, h, w}, h * w, pixels(h * w, seed)};
}

/* What the store holds for handle equals qw_vision_forward of the image on ref. */
static void same_features(const qw_vision_store *s, uint64_t handle, const image *im,
			  qw_backend *ref, const qw_weights *w)
{
	qw_vision_out got, want;
	qw_err err = {0};
	assert_true(qw_vision_store_find(s, handle, &got));
	assert_int_equal(qw_vision_forward(ref, &cfg, w, im->grid, 1, im->px, im->rows, NULL, NULL,
					   &want, &err), QW_OK);
	assert_int_equal(got.tokens, want.tokens);
	size_t n = (size_t)want.tokens * (size_t)cfg.text.hidden_size;
	float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
	for (int j = -1; j < cfg.vision.n_deepstack; j++) {
		const qw_act *g = j < 0 ? &got.embeds : &got.deepstack[j];
		const qw_act *e = j < 0 ? &want.embeds : &want.deepstack[j];
		s->be->act_read(s->be, g, a, &err);
		ref->act_read(ref, e, b, &err);
		assert_memory_equal(a, b, n * sizeof *a);
	}
	free(a);
	free(b);
	qw_vision_out_free(ref, &want);
}

static void test_vision_store(void **state)
{
	qw_err err = {0};
	qw_backend *be = cpu(), *ref = cpu();
	stage_run r;
	load(&r.m, be);
	/* images of up to 4 tokens (16 patches), 8 tokens in all */
	qw_vision_store s;
	assert_int_equal(qw_vision_store_init(&s, be, &cfg, 4, 8, &err), QW_OK);
	size_t H = (size_t)cfg.text.hidden_size;
	assert_int_equal(qw_vision_store_bytes(&s),
			 qw_vision_scratch_bytes(&cfg, 16, 4) +
				 (1 + (uint64_t)cfg.vision.n_deepstack) * 8 * H * 4);
	qw_step_limits lim = limits(16, 4, 64);
	assert_int_equal(be->reserve(be, &lim, NULL, &err), QW_OK);
	be->seal(be);
	assert_int_equal(qw_vision_store_warm_up(&s, &r.m.w, &err), QW_OK);   /* leaves nothing */
	assert_int_equal(qw_vision_store_held(&s), 0);

	/* 2 + 4 + 2 tokens fill it; the outer two go, leaving 4 rows free in two gaps */
	image b = make_image(2, 4, 1), a = make_image(4, 4, 2), c = make_image(2, 4, 3);
	image d = make_image(4, 4, 4), e = make_image(2, 2, 5), big = make_image(4, 8, 6);
	assert_int_equal(qw_vision_store_see(&s, &r.m.w, 1, b.grid, b.px, b.rows, &err), QW_OK);
	assert_int_equal(qw_vision_store_see(&s, &r.m.w, 2, a.grid, a.px, a.rows, &err), QW_OK);
	assert_int_equal(qw_vision_store_see(&s, &r.m.w, 3, c.grid, c.px, c.rows, &err), QW_OK);
	assert_int_equal(qw_vision_store_held(&s), 8);
	same_features(&s, 1, &b, ref, &r.m.w);
	qw_vision_store_forget(&s, 1);
	qw_vision_store_forget(&s, 3);
	assert_false(qw_vision_store_find(&s, 1, &(qw_vision_out){0}));
	/* 4 more tokens fit only once image 2 has moved down */
	assert_int_equal(qw_vision_store_see(&s, &r.m.w, 4, d.grid, d.px, d.rows, &err), QW_OK);
	assert_int_equal(s.moves, 1);
	same_features(&s, 2, &a, ref, &r.m.w);
	same_features(&s, 4, &d, ref, &r.m.w);
	/* full, and too large: refused, nothing changed */
	assert_int_equal(qw_vision_store_see(&s, &r.m.w, 5, e.grid, e.px, e.rows, &err), QW_E_LIMIT);
	assert_contains(err.msg, "holds the features of 8 image tokens");
	qw_vision_store_forget(&s, 4);
	assert_int_equal(qw_vision_store_see(&s, &r.m.w, 6, big.grid, big.px, big.rows, &err),
			 QW_E_LIMIT);
	assert_contains(err.msg, "max-image-tokens");
	assert_int_equal(qw_vision_store_held(&s), 4);
	same_features(&s, 2, &a, ref, &r.m.w);
	/* the sealed backend runs no tower that allocates */
	qw_vision_out out;
	assert_int_equal(qw_vision_forward(be, &cfg, &r.m.w, e.grid, 1, e.px, e.rows, NULL, NULL,
					   &out, &err), QW_E_LIMIT);
	assert_contains(err.msg, "sealed");
	image *all[] = {&a, &b, &c, &d, &e, &big};
	for (size_t i = 0; i < sizeof all / sizeof *all; i++)
		free(all[i]->px);
	qw_vision_store_free(&s);
	qw_stage_model_free(&r.m);
	be->destroy(be);
	ref->destroy(ref);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_steps_held_to_limits),
		cmocka_unit_test(test_warm_up),
		cmocka_unit_test(test_vision_store),
	};
	return cmocka_run_group_tests_name("reserve", tests, setup, NULL);
}
