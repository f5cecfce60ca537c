/* test_cuda_fused.c - the forward pass with the fused ops (one q/k/v GEMM into
 * qk_norm_rope_kv, add_rmsnorm for each residual add and the norm after it, and the MoE
 * block of a decode step as one kernel, moe_fused.cu) gives the bits of the same model run
 * op by op (plain_ops, whose MoE layers run the plain path's separate kernels).
 *
 * For each tiny fixture model (MoE and dense; synthetic weights from one seed), two copies
 * on one GPU, on one and on two in-process stages: they prefill an image prompt (visual
 * embeddings and deepstack features, so the layers that take a feature do not fuse across
 * it) and a text prompt into their own KV caches, then decode greedily in lockstep, first
 * op by op with every hidden state recorded (the hook), then as replayed step graphs.  Every
 * hidden state HF would record and every step's logits must be bit-identical.  Prompts and
 * features are random (the seed is printed; QW_TEST_SEED repeats a run). */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/forward.h"
#include "kernels/sample.h"
#include "loader/config.h"
#include "tests/gpu/stages.h"

#define SEQS 2
#define BLOCK 16
#define BLOCKS_PER_SEQ 8       /* 128 tokens a sequence */
#define MAX_TOKENS 64
#define IMAGE_LEN 40           /* the image prompt: tokens, of which N_VISUAL image pads */
#define N_VISUAL 6
#define N_DEEPSTACK 2          /* features after layers 0 and 1 */
#define TEXT_LEN 23

/* One copy of the model, on n_stages stages, and what its last step's hook saw. */
typedef struct model_copy {
	gpu_stages g;
	float *states;   /* (num_layers + 1, MAX_TOKENS, H): hidden state i of the last step */
} model_copy;

static qw_backend *gpu;
static qw_config cfg;
static uint64_t rng;

static uint32_t next_u32(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng >> 33);
}

static float next_value(void)
{
	return (float)next_u32() / 2147483648.0f - 1.0f;   /* in [-1, 1) */
}

static int setup(void **state)
{
	(void)state;
	qw_err err = {0};
	const char *s = getenv("QW_TEST_SEED");
	rng = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
	printf("# seed %llu (QW_TEST_SEED)\n", (unsigned long long)rng);
	if (qw_cuda_backend_create(0, &gpu, &err)) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	gpu->destroy(gpu);
	return 0;
}

static size_t state_values(void)
{
	return (size_t)MAX_TOKENS * (size_t)cfg.text.hidden_size;
}

/* The hook: hidden state `index` of this step into the copy's states. */
static void record(void *ctx, int index, const qw_act *hidden)
{
	model_copy *mc = ctx;
	qw_err err = {0};
	if (gpu->act_read(gpu, hidden, mc->states + (size_t)index * state_values(), &err))
		fail_msg("hook: %s", err.msg);
}

static void load_copy(model_copy *mc, int n_stages, bool plain)
{
	gpu_stages_load(&mc->g, gpu, &cfg, n_stages, MAX_TOKENS, SEQS * BLOCKS_PER_SEQ, BLOCK,
			SEQS);
	for (int s = 0; s < n_stages; s++) {
		qw_stage_model *m = &mc->g.st[s];
		m->plain_ops = plain;
		/* the tiny models have no q/k/v biases: every layer gets the fused weight */
		for (int i = 0; i < m->stage.layer_end - m->stage.layer_begin; i++)
			assert_true(m->qkv_proj && m->qkv_proj[i]);
	}
	mc->states = calloc((size_t)(cfg.text.num_layers + 1) * state_values(),
			    sizeof *mc->states);
}

static void free_copy(model_copy *mc)
{
	gpu_stages_free(&mc->g, gpu);
	free(mc->states);
}

static void set_hooks(model_copy *mc, bool on, bool graphs)
{
	for (int s = 0; s < mc->g.n_stages; s++) {
		mc->g.st[s].hook = on ? record : NULL;
		mc->g.st[s].hook_ctx = on ? mc : NULL;
		mc->g.st[s].graphs = graphs;
	}
}

/* Runs b on both copies: the logits, and (with the hooks on) every hidden state, must have
 * the same bits.  The plain copy's logits are left in la. */
static void step_both(model_copy *plain, model_copy *fused, const qw_batch *b, bool hooks,
		      float *la, float *lb, const char *what)
{
	gpu_stages_step(&plain->g, gpu, b, la);
	gpu_stages_step(&fused->g, gpu, b, lb);
	int V = cfg.text.vocab_size, H = cfg.text.hidden_size;
	for (int i = 0; hooks && i <= cfg.text.num_layers; i++)
		for (int t = 0; t < b->n_tokens; t++) {
			size_t at = (size_t)i * state_values() + (size_t)t * H;
			if (memcmp(plain->states + at, fused->states + at, (size_t)H * sizeof(float)))
				fail_msg("%s: hidden state %d (after layer %d), row %d: the fused ops' "
					 "bits differ from the plain ops'", what, i, i - 1, t);
		}
	if (memcmp(la, lb, (size_t)b->n_logits * V * sizeof *la))
		fail_msg("%s: the fused ops' logits differ from the plain ops'", what);
}

/* The prefill batch of sequence s: len random tokens, its last row's logits. */
typedef struct prefill_buf {
	int32_t ids[MAX_TOKENS], pos[3 * MAX_TOKENS], seq[MAX_TOKENS], kv[MAX_TOKENS];
	int32_t slot[MAX_TOKENS], table[BLOCKS_PER_SEQ], last, visual_rows[N_VISUAL];
} prefill_buf;

static qw_batch prefill_batch(prefill_buf *pb, int s, int len)
{
	for (int t = 0; t < len; t++) {
		pb->ids[t] = (int32_t)(next_u32() % (uint32_t)cfg.text.vocab_size);
		pb->pos[3 * t] = pb->pos[3 * t + 1] = pb->pos[3 * t + 2] = pb->kv[t] = t;
		pb->seq[t] = 0;
		pb->slot[t] = (s * BLOCKS_PER_SEQ + t / BLOCK) * BLOCK + t % BLOCK;
	}
	for (int j = 0; j < BLOCKS_PER_SEQ; j++)
		pb->table[j] = s * BLOCKS_PER_SEQ + j;
	pb->last = len - 1;
	return (qw_batch){.n_tokens = len, .token_ids = pb->ids, .positions = pb->pos,
			  .seq = pb->seq, .kv_index = pb->kv, .slot = pb->slot, .n_seqs = 1,
			  .max_blocks = BLOCKS_PER_SEQ, .block_tables = pb->table, .n_logits = 1,
			  .logit_rows = &pb->last};
}

/* The decode batch of both sequences, tokens[i] at context length ctx[i]. */
typedef struct decode_buf {
	int32_t ids[SEQS], pos[3 * SEQS], seq[SEQS], kv[SEQS], slot[SEQS], rows[SEQS];
	int32_t tables[SEQS * BLOCKS_PER_SEQ];
} decode_buf;

static qw_batch decode_batch(decode_buf *db, const int *ctx, const int32_t *tokens)
{
	for (int s = 0; s < SEQS; s++) {
		int c = ctx[s];
		db->ids[s] = tokens[s];
		db->pos[3 * s] = db->pos[3 * s + 1] = db->pos[3 * s + 2] = c;
		db->seq[s] = db->rows[s] = s;
		db->kv[s] = c;
		db->slot[s] = (s * BLOCKS_PER_SEQ + c / BLOCK) * BLOCK + c % BLOCK;
		for (int j = 0; j < BLOCKS_PER_SEQ; j++)
			db->tables[s * BLOCKS_PER_SEQ + j] = s * BLOCKS_PER_SEQ + j;
	}
	return (qw_batch){.n_tokens = SEQS, .token_ids = db->ids, .positions = db->pos,
			  .seq = db->seq, .kv_index = db->kv, .slot = db->slot, .n_seqs = SEQS,
			  .max_blocks = BLOCKS_PER_SEQ, .block_tables = db->tables,
			  .n_logits = SEQS, .logit_rows = db->rows};
}

/* A GPU activation of random values in [-1, 1). */
static qw_act random_act(int rows, int cols)
{
	qw_act a;
	qw_err err = {0};
	float *v = malloc((size_t)rows * cols * sizeof *v);
	for (size_t i = 0; i < (size_t)rows * cols; i++)
		v[i] = next_value();
	if (gpu->act_alloc(gpu, rows, cols, &a, &err) || gpu->act_write(gpu, &a, v, &err))
		fail_msg("%s", err.msg);
	free(v);
	return a;
}

static void run(const char *model, int n_stages)
{
	qw_err err = {0};
	char path[256];
	snprintf(path, sizeof path, "hf/%s/model/config.json", model);
	if (qw_config_load(fixture(path), &cfg, &err))
		fail_msg("%s", err.msg);
	model_copy plain = {0}, fused = {0};
	load_copy(&plain, n_stages, true);
	load_copy(&fused, n_stages, false);
	int V = cfg.text.vocab_size, H = cfg.text.hidden_size;
	float *la = malloc((size_t)SEQS * V * sizeof *la), *lb = malloc((size_t)SEQS * V * sizeof *lb);
	char what[96];

	/* the image prompt: N_VISUAL image rows, features after the first N_DEEPSTACK layers */
	qw_act embeds = random_act(N_VISUAL, H), deepstack[N_DEEPSTACK];
	for (int i = 0; i < N_DEEPSTACK; i++)
		deepstack[i] = random_act(N_VISUAL, H);
	set_hooks(&plain, true, false);
	set_hooks(&fused, true, false);
	prefill_buf pb;
	qw_batch b = prefill_batch(&pb, 0, IMAGE_LEN);
	for (int i = 0; i < N_VISUAL; i++)
		pb.visual_rows[i] = 5 + i;
	b.n_visual = N_VISUAL;
	b.visual_rows = pb.visual_rows;
	b.visual_embeds = &embeds;
	b.deepstack = deepstack;
	b.n_deepstack = N_DEEPSTACK;
	snprintf(what, sizeof what, "%s, %d stage(s), image prefill", model, n_stages);
	step_both(&plain, &fused, &b, true, la, lb, what);
	int ctx[SEQS] = {IMAGE_LEN, TEXT_LEN};
	int32_t tokens[SEQS];
	tokens[0] = qw_argmax(la, V);
	b = prefill_batch(&pb, 1, TEXT_LEN);
	snprintf(what, sizeof what, "%s, %d stage(s), text prefill", model, n_stages);
	step_both(&plain, &fused, &b, true, la, lb, what);
	tokens[1] = qw_argmax(la, V);

	/* decode: op by op with the hidden states compared, then as step graphs */
	qw_cuda_graph_stats before = qw_cuda_backend_graph_stats(gpu);
	for (int k = 0; k < 12; k++) {
		bool hooks = k < 4;
		if (k == 4) {
			set_hooks(&plain, false, true);
			set_hooks(&fused, false, true);
		}
		decode_buf dbuf;
		qw_batch d = decode_batch(&dbuf, ctx, tokens);
		snprintf(what, sizeof what, "%s, %d stage(s), decode step %d%s", model, n_stages, k,
			 hooks ? "" : " (graphs)");
		step_both(&plain, &fused, &d, hooks, la, lb, what);
		for (int s = 0; s < SEQS; s++) {
			tokens[s] = qw_argmax(la + (size_t)s * V, V);
			ctx[s]++;
		}
	}
	qw_cuda_graph_stats after = qw_cuda_backend_graph_stats(gpu);
	printf("# %s, %d stage(s): 2 prefills, 12 decode steps bit-identical; %llu graphs "
	       "recorded, %llu replays\n", model, n_stages,
	       (unsigned long long)(after.recorded - before.recorded),
	       (unsigned long long)(after.replayed - before.replayed));
	/* each copy's stages record their shape once, then replay */
	assert_int_equal(after.refused, before.refused);
	assert_true(after.recorded - before.recorded >= (uint64_t)(2 * n_stages));
	assert_true(after.replayed - before.replayed >= (uint64_t)(2 * n_stages));
	gpu->act_free(gpu, &embeds);
	for (int i = 0; i < N_DEEPSTACK; i++)
		gpu->act_free(gpu, &deepstack[i]);
	free(la);
	free(lb);
	free_copy(&plain);
	free_copy(&fused);
}

static void test_moe_one_stage(void **state)
{
	(void)state;
	run("tiny-moe", 1);
}

static void test_moe_two_stages(void **state)
{
	(void)state;
	run("tiny-moe", 2);
}

static void test_dense_one_stage(void **state)
{
	(void)state;
	run("tiny-dense", 1);
}

static void test_dense_two_stages(void **state)
{
	(void)state;
	run("tiny-dense", 2);
}

int main(void)
{
	/* the fused MoE kernel where it applies, against plain_ops' separate kernels */
	setenv("QW_CUDA_MOE", "auto", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_moe_one_stage),
		cmocka_unit_test(test_moe_two_stages),
		cmocka_unit_test(test_dense_one_stage),
		cmocka_unit_test(test_dense_two_stages),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
