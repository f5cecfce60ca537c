/* test_cuda_reserve.c - nothing is allocated on the GPU once a stage is sealed (issue 17):
 * the CUDA backend reserves every buffer a step uses at load, and steps of the largest
 * sizes after seal leave the device's free memory (cudaMemGetInfo) where it was.
 *
 * One stage of the tiny MoE fixture's model (synthetic weights, with the vision tower), set
 * up as a daemon's worker sets one up: the step's activations, the vision store, reserve for
 * limits of 512 tokens, 32 sequences, a context of 2048 and images of 256 tokens, the
 * warm-up, a KV cache for every sequence at the longest context, seal.  Then, step graphs
 * off: a prefill of 512 tokens over four sequences, an image of 256 tokens (1024 patches)
 * through the vision store into a prefill, a prefill chunk at the end of the longest context,
 * decode steps of 1 to 32 sequences at contexts up to 2048, sampling; the free memory must be
 * what it was at seal, to the byte, after each.  Steps past the limits (a longer context,
 * more sequences, more logit rows, an image of more patches, an activation, a KV cache)
 * fail with QW_E_LIMIT and allocate nothing, and a step within them still runs after.  Then
 * with graphs on, decode steps of every batch size are recorded: the free memory may fall
 * only within what reserve kept for graphs, and the measured size of a graph is printed. */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/vision_store.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/forward.h"
#include "kernels/step_limits.h"
#include "loader/config.h"

#define MAX_T 512
#define SEQS 32
#define CONTEXT 2048
#define BLOCK 16
#define IMAGE_TOKENS 256
#define PER_SEQ (CONTEXT / BLOCK)

static qw_backend *gpu;
static qw_config cfg;

/* The stage as a worker has it. */
typedef struct stage {
	qw_stage_model m;
	qw_act hidden, logits, visual, deepstack[QW_MAX_DEEPSTACK];
	qw_vision_store images;
	qw_step_limits lim;
	qw_reserved r;
	int n_ds;
} stage;

static stage st;

static uint64_t device_free(void)
{
	assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
	return qw_cuda_backend_device_free(gpu);
}

static void act(int rows, int cols, qw_act *a)
{
	qw_err err = {0};
	if (gpu->act_alloc(gpu, rows, cols, a, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

static int setup(void **state)
{
	(void)state;
	qw_err err = {0};
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
	qw_vision_store_free(&st.images);
	qw_act *acts[] = {&st.hidden, &st.logits, &st.visual};
	for (int i = 0; i < 3; i++)
		if (acts[i]->data)
			gpu->act_free(gpu, acts[i]);
	for (int j = 0; j < st.n_ds; j++)
		gpu->act_free(gpu, &st.deepstack[j]);
	qw_stage_model_free(&st.m);
	gpu->destroy(gpu);
	return 0;
}

// ---------------------------------------------------------------------------------------
// steps

typedef struct step_buf {
	int32_t ids[MAX_T + 1], pos[3 * (MAX_T + 1)], seq[MAX_T + 1], kv[MAX_T + 1];
	int32_t slot[MAX_T + 1], tables[(SEQS + 1) * (PER_SEQ + 1)], rows[SEQS + 1];
	int32_t visual_rows[MAX_T];
} step_buf;

/* n sequences of `len` tokens each, sequence s from KV index at[s] (its blocks s * PER_SEQ
 * on); each sequence's last token gets a logit row. */
static qw_batch step(step_buf *sb, int n, int len, const int *at)
{
	int max_blocks = 1, t = 0;
	for (int s = 0; s < n; s++)
		if ((at[s] + len + BLOCK - 1) / BLOCK > max_blocks)
			max_blocks = (at[s] + len + BLOCK - 1) / BLOCK;
	for (int s = 0; s < n; s++) {
		for (int i = 0; i < len; i++, t++) {
			int k = at[s] + i;
			sb->ids[t] = (int32_t)((t * 37 + s) % 1000);
			sb->pos[3 * t] = sb->pos[3 * t + 1] = sb->pos[3 * t + 2] = k;
			sb->seq[t] = s;
			sb->kv[t] = k;
			sb->slot[t] = ((s % SEQS) * PER_SEQ + (k / BLOCK) % PER_SEQ) * BLOCK + k % BLOCK;
		}
		for (int j = 0; j < max_blocks; j++)
			sb->tables[s * max_blocks + j] = (s % SEQS) * PER_SEQ + j % PER_SEQ;
		sb->rows[s] = t - 1;
	}
	return (qw_batch){.n_tokens = t, .token_ids = sb->ids, .positions = sb->pos,
			  .seq = sb->seq, .kv_index = sb->kv, .slot = sb->slot, .n_seqs = n,
			  .max_blocks = max_blocks, .block_tables = sb->tables, .n_logits = n,
			  .logit_rows = sb->rows};
}

static qw_status run(const qw_batch *b, qw_err *err)
{
	qw_status s = qw_stage_step(&st.m, b, &st.hidden, &st.logits, err);
	if (s != QW_OK || b->n_logits == 0)
		return s;
	qw_sampling p[SEQS];
	int32_t tokens[SEQS];
	for (int i = 0; i < b->n_logits; i++)
		p[i] = i % 2 ? (qw_sampling){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f,
					     .seed = 9, .step = (uint64_t)i}
			     : (qw_sampling){.top_p = 1.0f};
	return gpu->sample(gpu, &st.logits, p, NULL, tokens, NULL, err);
}

static void run_ok(const qw_batch *b, const char *what)
{
	qw_err err = {0};
	if (run(b, &err) != QW_OK)
		fail_msg("%s: %s", what, err.msg);
}

/* free memory where it was at seal */
static void unchanged(uint64_t at_seal, const char *after)
{
	uint64_t now = device_free();
	printf("# after %s: %llu bytes free (%+lld from seal)\n", after, (unsigned long long)now,
	       (long long)now - (long long)at_seal);
	if (now != at_seal)
		fail_msg("after %s the GPU has %llu bytes free, %llu at seal: something was "
			 "allocated (or freed) after seal", after, (unsigned long long)now,
			 (unsigned long long)at_seal);
}

static float *pixels(int rows)
{
	const qw_vision_config *vc = &cfg.vision;
	int cols = vc->in_channels * vc->temporal_patch_size * vc->patch_size * vc->patch_size;
	float *p = malloc((size_t)rows * (size_t)cols * sizeof *p);
	for (int i = 0; i < rows * cols; i++)
		p[i] = (float)((i * 7919) % 2001) / 1000.0f - 1.0f;
	return p;
}

/* An image of h x w patches through the vision store, then a prefill of one sequence whose
 * prompt is 8 text tokens, the image's, and 8 more. */
static qw_status image_step(step_buf *sb, int h, int w, uint64_t handle, qw_err *err)
{
	int group = cfg.vision.spatial_merge_size * cfg.vision.spatial_merge_size;
	int rows = h * w, tokens = rows / group;
	const int32_t grid[3] = {1, h, w};
	float *px = pixels(rows);
	qw_status s = qw_vision_store_see(&st.images, &st.m.w, handle, grid, px, rows, err);
	free(px);
	if (s != QW_OK)
		return s;
	qw_vision_out f;
	assert_true(qw_vision_store_find(&st.images, handle, &f));
	qw_act dst = qw_act_rows(&st.visual, 0, tokens, 2);
	if ((s = gpu->act_copy(gpu, &dst, &f.embeds, err)) != QW_OK)
		return s;
	for (int j = 0; j < st.n_ds; j++) {
		dst = qw_act_rows(&st.deepstack[j], 0, tokens, 2);
		if ((s = gpu->act_copy(gpu, &dst, &f.deepstack[j], err)) != QW_OK)
			return s;
	}
	st.visual.rows = tokens;
	for (int j = 0; j < st.n_ds; j++)
		st.deepstack[j].rows = tokens;
	int at = 0;
	qw_batch b = step(sb, 1, tokens + 16, &at);
	for (int i = 0; i < tokens; i++)
		sb->visual_rows[i] = 8 + i;
	b.n_visual = tokens;
	b.visual_rows = sb->visual_rows;
	b.visual_embeds = &st.visual;
	b.deepstack = st.deepstack;
	b.n_deepstack = st.n_ds;
	s = run(&b, err);
	qw_vision_store_forget(&st.images, handle);
	return s;
}

// ---------------------------------------------------------------------------------------

/* The stage as a worker makes it, up to seal; the free memory at seal. */
static uint64_t make_stage(void)
{
	qw_err err = {0};
	qw_stage s0 = {0, 1, 0, cfg.text.num_layers};
	if (qw_stage_model_load_synthetic(&st.m, &cfg, &s0, gpu, 5, MAX_T, NULL, NULL, &err))
		fail_msg("%s", err.msg);
	int H = cfg.text.hidden_size;
	st.n_ds = cfg.vision.n_deepstack;
	act(MAX_T, H, &st.hidden);
	act(SEQS + 1, cfg.text.vocab_size, &st.logits);   /* room for one row too many */
	act(MAX_T, H, &st.visual);
	for (int j = 0; j < st.n_ds; j++)
		act(MAX_T, H, &st.deepstack[j]);
	if (qw_vision_store_init(&st.images, gpu, &cfg, IMAGE_TOKENS, 2 * IMAGE_TOKENS, &err))
		fail_msg("%s", err.msg);
	st.lim = (qw_step_limits){.max_tokens = MAX_T, .max_seqs = SEQS, .max_logits = SEQS,
				  .max_context = CONTEXT, .block_size = BLOCK, .graphs = true};
	qw_step_limits_shapes(&st.lim, &cfg, &s0, IMAGE_TOKENS);
	st.m.graphs = true;
	uint64_t before = device_free();
	if (gpu->reserve(gpu, &st.lim, &st.r, &err) != QW_OK)
		fail_msg("%s", err.msg);
	printf("# reserve: %llu bytes of step buffers (%lld taken from the device), %llu pinned\n",
	       (unsigned long long)st.r.device_bytes, (long long)before - (long long)device_free(),
	       (unsigned long long)st.r.host_bytes);
	if (qw_stage_model_warm_up(&st.m, &st.lim, &st.hidden, &st.logits, &err) != QW_OK ||
	    qw_vision_store_warm_up(&st.images, &st.m.w, &err) != QW_OK)
		fail_msg("%s", err.msg);
	qw_cuda_reservation res = qw_cuda_backend_reservation(gpu);
	printf("# warm-up: one step graph took %llu bytes; %llu kept for %s\n",
	       (unsigned long long)res.graph_each, (unsigned long long)res.graph_budget,
	       "the graphs");
	assert_true(res.reserved && !res.sealed && res.graph_budget > 0);
	if (qw_stage_model_alloc_kv(&st.m, SEQS * PER_SEQ, BLOCK, &err) != QW_OK)
		fail_msg("%s", err.msg);
	for (int L = 0; L < cfg.text.num_layers; L++) {   /* what steps read before they write */
		void *k, *v;
		size_t bytes;
		assert_true(qw_cuda_backend_kv_layer(st.m.kv, L, &k, &v, &bytes));
		assert_int_equal(cudaMemset(k, 0, bytes), cudaSuccess);
		assert_int_equal(cudaMemset(v, 0, bytes), cudaSuccess);
	}
	gpu->seal(gpu);
	assert_true(qw_cuda_backend_reservation(gpu).sealed);
	return device_free();
}

static void test_nothing_allocated_after_seal(void **state)
{
	(void)state;
	uint64_t at_seal = make_stage();
	st.m.graphs = false;
	step_buf *sb = malloc(sizeof *sb);
	int at[SEQS + 1] = {0};
	qw_err err = {0};

	qw_batch b = step(sb, 4, MAX_T / 4, at);
	run_ok(&b, "a prefill of 512 tokens over 4 sequences");
	unchanged(at_seal, "a prefill of 512 tokens");

	if (image_step(sb, 32, 32, 1, &err) != QW_OK)   /* 1024 patches, 256 tokens */
		fail_msg("the largest image: %s", err.msg);
	unchanged(at_seal, "an image of 256 tokens");

	at[0] = CONTEXT - MAX_T;
	b = step(sb, 1, MAX_T, at);
	run_ok(&b, "a prefill chunk ending at the longest context");
	unchanged(at_seal, "a prefill at the longest context");

	for (int n = 1; n <= SEQS; n++) {
		for (int s = 0; s < n; s++)
			at[s] = (s * 997 + n * 61) % CONTEXT;
		at[n - 1] = CONTEXT - 1;
		b = step(sb, n, 1, at);
		run_ok(&b, "a decode step");
	}
	unchanged(at_seal, "decode steps of 1 to 32 sequences up to the longest context");

	/* past the limits: refused, nothing allocated, and the stage still runs */
	at[0] = CONTEXT;
	b = step(sb, 1, 1, at);
	assert_int_equal(run(&b, &err), QW_E_LIMIT);
	assert_contains(err.msg, "max-model-len");
	for (int s = 0; s <= SEQS; s++)
		at[s] = 0;
	b = step(sb, SEQS + 1, 1, at);
	assert_int_equal(run(&b, &err), QW_E_LIMIT);
	assert_contains(err.msg, "max-seqs");
	b = step(sb, 1, 40, at);
	b.n_logits = SEQS + 1;
	for (int i = 0; i <= SEQS; i++)
		sb->rows[i] = i;
	assert_int_equal(run(&b, &err), QW_E_LIMIT);
	assert_contains(err.msg, "needs 33 logit rows");
	assert_int_equal(image_step(sb, 32, 64, 2, &err), QW_E_LIMIT);
	assert_contains(err.msg, "max-image-tokens");
	qw_act a;
	assert_int_equal(gpu->act_alloc(gpu, 4, 4, &a, &err), QW_E_LIMIT);
	assert_contains(err.msg, "sealed");
	qw_kv_cache *kv;
	qw_kv_shape shape = {1, 1, BLOCK, cfg.text.num_kv_heads, cfg.text.head_dim};
	assert_int_equal(gpu->kv_alloc(gpu, &shape, &kv, &err), QW_E_LIMIT);
	unchanged(at_seal, "steps past the limits");
	b = step(sb, SEQS, 1, at);
	run_ok(&b, "a decode step after the refusals");
	unchanged(at_seal, "a decode step after the refusals");

	/* graphs on: recordings take only from what reserve kept for them */
	st.m.graphs = true;
	qw_cuda_graph_stats g0 = qw_cuda_backend_graph_stats(gpu);
	for (int n = 1; n <= SEQS; n++)
		for (int k = 0; k < 3; k++) {
			for (int s = 0; s < n; s++)
				at[s] = 100 + k;
			b = step(sb, n, 1, at);
			run_ok(&b, "a decode step with graphs");
		}
	qw_cuda_graph_stats g1 = qw_cuda_backend_graph_stats(gpu);
	qw_cuda_reservation res = qw_cuda_backend_reservation(gpu);
	uint64_t now = device_free();
	long long used = (long long)at_seal - (long long)now;
	printf("# graphs: %llu recorded, %llu replayed, %llu not recorded (budget); %lld bytes "
	       "taken from the device (%llu as the recordings measured) of %llu kept, %llu the "
	       "largest one\n", (unsigned long long)(g1.recorded - g0.recorded),
	       (unsigned long long)(g1.replayed - g0.replayed),
	       (unsigned long long)(g1.over_budget - g0.over_budget), used,
	       (unsigned long long)res.graph_used, (unsigned long long)res.graph_budget,
	       (unsigned long long)res.graph_each);
	assert_true(g1.recorded > g0.recorded);
	assert_true(res.graph_used <= res.graph_budget);
	assert_true(used <= (long long)res.graph_budget);
	free(sb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nothing_allocated_after_seal),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
