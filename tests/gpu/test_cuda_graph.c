/* test_cuda_graph.c - decode steps replayed as CUDA graphs (qw_stage_step with graphs on)
 * give the bits of the same steps run op by op.
 *
 * Two copies of a model (the tiny MoE fixture's config, synthetic weights from one seed, on
 * one and on two in-process stages), one with graphs and one without, prefill the same
 * prompts into their own KV caches, then decode greedily in lockstep: every step's logits
 * must be bit-identical.  The decode runs long enough to cross the backend's buckets (the
 * longest context passing 512 tokens, its block-table row passing 32 blocks) and changes its
 * batch size, so graphs are recorded again for new shapes and old ones replayed.  The
 * prompts are random (the seed is printed; QW_TEST_SEED repeats a run). */
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

#define SEQS 3
#define BLOCK 16
#define BLOCKS_PER_SEQ 48      /* 768 tokens a sequence */
#define MAX_TOKENS 512

static qw_backend *gpu;
static qw_config cfg;
static uint64_t rng;

static uint32_t next_u32(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng >> 33);
}

static int setup(void **state)
{
	(void)state;
	qw_err err = {0};
	const char *s = getenv("QW_TEST_SEED");
	rng = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
	printf("# seed %llu (QW_TEST_SEED)\n", (unsigned long long)rng);
	if (qw_config_load(fixture("hf/tiny-moe/model/config.json"), &cfg, &err) ||
	    qw_cuda_backend_create(0, &gpu, &err)) {
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

static void load_copy(gpu_stages *g, int n_stages, bool graphs)
{
	gpu_stages_load(g, gpu, &cfg, n_stages, MAX_TOKENS, SEQS * BLOCKS_PER_SEQ, BLOCK, SEQS);
	for (int s = 0; s < n_stages; s++)
		g->st[s].graphs = graphs;
}

/* The batch of the sequences in `which` (n of them), tokens[i] at context length ctx[i];
 * block tables as the daemon's worker lays them out (rows as long as the longest). */
typedef struct batch_buf {
	int32_t ids[SEQS], pos[3 * SEQS], seq[SEQS], kv[SEQS], slot[SEQS], rows[SEQS];
	int32_t tables[SEQS * BLOCKS_PER_SEQ];
} batch_buf;

static qw_batch decode_batch(batch_buf *bb, const int *which, int n, const int *ctx,
			     const int32_t *tokens)
{
	int max_blocks = 1;
	for (int i = 0; i < n; i++) {
		int used = ctx[which[i]] / BLOCK + 1;
		if (used > max_blocks)
			max_blocks = used;
	}
	for (int i = 0; i < n; i++) {
		int s = which[i], c = ctx[s];
		bb->ids[i] = tokens[s];
		bb->pos[3 * i] = bb->pos[3 * i + 1] = bb->pos[3 * i + 2] = c;
		bb->seq[i] = i;
		bb->kv[i] = c;
		bb->slot[i] = (s * BLOCKS_PER_SEQ + c / BLOCK) * BLOCK + c % BLOCK;
		bb->rows[i] = i;
		for (int j = 0; j < max_blocks; j++)
			bb->tables[i * max_blocks + j] = s * BLOCKS_PER_SEQ + j;
	}
	return (qw_batch){.n_tokens = n, .token_ids = bb->ids, .positions = bb->pos,
			  .seq = bb->seq, .kv_index = bb->kv, .slot = bb->slot, .n_seqs = n,
			  .max_blocks = max_blocks, .block_tables = bb->tables, .n_logits = n,
			  .logit_rows = bb->rows};
}

/* Prefills sequence s with len random tokens into both copies. */
static void prefill(gpu_stages *plain, gpu_stages *graphed, int s, int len, float *la, float *lb)
{
	int32_t *ids = malloc(len * sizeof *ids), *pos = malloc(3 * len * sizeof *pos);
	int32_t *seq = calloc(len, sizeof *seq), *kv = malloc(len * sizeof *kv);
	int32_t *slot = malloc(len * sizeof *slot), table[BLOCKS_PER_SEQ], last = len - 1;
	for (int t = 0; t < len; t++) {
		ids[t] = (int32_t)(next_u32() % (uint32_t)cfg.text.vocab_size);
		pos[3 * t] = pos[3 * t + 1] = pos[3 * t + 2] = kv[t] = t;
		slot[t] = (s * BLOCKS_PER_SEQ + t / BLOCK) * BLOCK + t % BLOCK;
	}
	for (int j = 0; j < BLOCKS_PER_SEQ; j++)
		table[j] = s * BLOCKS_PER_SEQ + j;
	qw_batch b = {.n_tokens = len, .token_ids = ids, .positions = pos, .seq = seq,
		      .kv_index = kv, .slot = slot, .n_seqs = 1, .max_blocks = BLOCKS_PER_SEQ,
		      .block_tables = table, .n_logits = 1, .logit_rows = &last};
	gpu_stages_step(plain, gpu, &b, la);
	gpu_stages_step(graphed, gpu, &b, lb);
	assert_memory_equal(la, lb, (size_t)cfg.text.vocab_size * sizeof *la);
	free(ids);
	free(pos);
	free(seq);
	free(kv);
	free(slot);
}

static void run(int n_stages)
{
	gpu_stages plain = {0}, graphed = {0};
	load_copy(&plain, n_stages, false);
	load_copy(&graphed, n_stages, true);
	qw_cuda_graph_stats before = qw_cuda_backend_graph_stats(gpu);
	int V = cfg.text.vocab_size;
	float *la = malloc((size_t)SEQS * V * sizeof *la), *lb = malloc((size_t)SEQS * V * sizeof *lb);
	/* short, middling and long: the long one passes 512 tokens (32 blocks) while decoding */
	int ctx[SEQS] = {5 + (int)(next_u32() % 20), 200 + (int)(next_u32() % 40),
			 480 + (int)(next_u32() % 20)};
	int32_t tokens[SEQS];
	for (int s = 0; s < SEQS; s++) {
		prefill(&plain, &graphed, s, ctx[s], la, lb);
		tokens[s] = qw_argmax(la, V);
	}
	const int all[SEQS] = {0, 1, 2}, two[2] = {0, 2};
	int steps = 0;
	for (int k = 0; k < 140; k++) {
		/* mostly all three; a stretch of two (sequence 1 paused) and back */
		bool pair = k >= 60 && k < 80;
		const int *which = pair ? two : all;
		int n = pair ? 2 : SEQS;
		batch_buf bb;
		qw_batch b = decode_batch(&bb, which, n, ctx, tokens);
		gpu_stages_step(&plain, gpu, &b, la);
		gpu_stages_step(&graphed, gpu, &b, lb);
		if (memcmp(la, lb, (size_t)n * V * sizeof *la))
			fail_msg("%d stage(s), decode step %d (%d sequences, contexts %d %d %d): the "
				 "graph's logits differ from the ops'", n_stages, k, n, ctx[0], ctx[1],
				 ctx[2]);
		for (int i = 0; i < n; i++) {
			tokens[which[i]] = qw_argmax(la + (size_t)i * V, V);
			ctx[which[i]]++;
		}
		steps++;
	}
	qw_cuda_graph_stats after = qw_cuda_backend_graph_stats(gpu);
	uint64_t rec = after.recorded - before.recorded, rep = after.replayed - before.replayed;
	printf("# %d stage(s): %d decode steps, %llu graphs recorded, %llu replays, %llu refused\n",
	       n_stages, steps, (unsigned long long)rec, (unsigned long long)rep,
	       (unsigned long long)(after.refused - before.refused));
	assert_int_equal(after.refused, before.refused);
	/* each stage records each shape once; most steps replay */
	assert_true(rec >= (uint64_t)(2 * n_stages));
	assert_true(rep >= (uint64_t)(steps * n_stages * 3 / 4));
	free(la);
	free(lb);
	gpu_stages_free(&plain, gpu);
	gpu_stages_free(&graphed, gpu);
}

static void test_one_stage(void **state)
{
	(void)state;
	run(1);
}

static void test_two_stages(void **state)
{
	(void)state;
	run(2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_stage),
		cmocka_unit_test(test_two_stages),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
