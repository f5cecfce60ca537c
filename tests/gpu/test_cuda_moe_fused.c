/* test_cuda_moe_fused.c - the fused decode kernel of the MoE block (kernels/cuda/moe_fused.cu:
 * routing, both expert GEMMs and the combine in one persistent launch) against the CPU
 * reference and against the plain path (qw_cuda_moe with QW_CUDA_MOE_PLAIN) bit for bit, on
 * fresh random inputs and weights (the seed is printed; QW_TEST_SEED=n repeats a run).
 *
 * Shapes: the 30B-A3B and 235B-A22B MoE layers as tests/fixtures/configs gives them (H, E,
 * top-k, I, renormalisation; the FP8 blocks from the -FP8 configs), each with bf16 experts
 * and with FP8 ones (e4m3 codes, a fresh random fp32 scale per block); a tiny layer (H 144,
 * E 8, k 2, I 48) renormalised and not, with FP8 blocks of 48 x 32 (k-tiles straddle blocks:
 * the per-row scale path), with FP8 gate_up beside bf16 down (the mixed kernels) and with
 * gate_up scales of 128 to 512 (the dequantisation's two-multiply path); and a
 * layer whose router is all zeros (every probability equal: the top-k by lowest id, and
 * route_token's long-candidate-list path, since 128 experts tie); a layer of 16 experts in
 * pairs sharing a router row, top-3 (the third choice ties with its twin at the boundary of
 * the top-k: the lower id, through the short candidate list); and one at the routing's
 * limits (256 experts, top-32: 256 pairs at T = 8).
 *
 * Each layer, at every T = 1 .. 8 (prefixes of one batch of 8 random tokens), is held to
 * moe_check_runs: the reference within test_cuda_moe's tolerance (bf16 experts) or
 * test_cuda_moe_fp8's (FP8: the reference reads e4m3 * s in fp32; moe_check.h says why);
 * the plain path's bits at that size; a second run's bits (determinism); every prefix,
 * tokens alone and a slice, the bits of the whole batch (batch invariance).  Outputs and
 * scratch are poisoned (0xff) before every run, and after every fused run the sync buffer's
 * counters must all be zero again (the kernel resets them for the next launch).  The tiny,
 * widest and 30B layers are also recorded once into a CUDA graph and replayed on three
 * fresh batches: each replay gives the plain path's bits for its batch, with no memset
 * between.  A deadlock cannot hang the test: the kernel traps when a wait for a counter lasts
 * seconds (moe_tile.cuh, wait_count), and the failed synchronisation names the run.
 * test_args: each path can be forced, and forcing the fused one where it does not apply is
 * refused with the reason; QW_CUDA_MOE's names parse, another is refused with a hint.
 * Part of `scons test-gpu`.
 */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kernels.h"
#include "loader/clock.h"
#include "loader/config.h"
#include "tests/gpu/cuda_ok.h"
#include "tests/gpu/moe_check.h"

#define TMAX 8   /* the most tokens the fused kernel takes */

static uint64_t seed;
static int n_threads;
static const int sizes[TMAX] = {1, 2, 3, 4, 5, 6, 7, 8};

/* What a layer is made of besides its shape. */
typedef struct recipe {
	int br, bc;          /* FP8 blocks of the experts; 0: bf16 experts */
	bool down_bf16;      /* FP8 gate_up, bf16 down */
	bool zero_router;    /* every logit 0 */
	bool twin_router;    /* experts 2i and 2i + 1 share a router row: their logits tie */
	float gu_amax;       /* gate_up's values: 0 for 3 / sqrt(H) */
	bool renormalize;
} recipe;

typedef struct layer {
	const char *name;
	int H, E, k, I;
	recipe r;
	uint16_t *router, *gu16, *dn16;          /* host bf16 (the bf16 experts) */
	moe_check_fp8 gu8, dn8;                  /* host FP8 (the FP8 experts) */
	float *gu32, *dn32;                      /* the FP8 experts' values, the reference's */
	qw_tensor t_router, t_gu, t_dn;
	qw_moe_weights w;
	/* on the device */
	void *d_router, *d_gu, *d_gus, *d_dn, *d_dns;
	uint16_t *d_x, *d_out;                   /* (TMAX, H) */
	void *ws;
	size_t ws_bytes;
	uint32_t *d_sync;
	cudaStream_t stream;
} layer;

static void *to_device(const void *host, size_t bytes)
{
	void *d = moe_check_to_device(host, bytes);
	assert_non_null(d);
	return d;
}

static uint16_t *random_bf16(size_t n, uint64_t stream, float scale)
{
	uint16_t *p = moe_check_random_bf16(n, seed, stream, scale, n_threads);
	assert_non_null(p);
	return p;
}

/* FP8 matrices (count, rows, cols) in r's blocks on the host and the device, and their fp32
 * values as the reference's tensor. */
static void make_fp8(layer *L, moe_check_fp8 *m, float **f32, qw_tensor *t, void **d_q,
		     void **d_s, int64_t rows, int64_t cols, float amax, uint64_t stream)
{
	assert_true(moe_check_fp8_make(m, L->E, rows, cols, L->r.br, L->r.bc, amax, seed, stream,
				       n_threads));
	*f32 = moe_check_fp8_f32(m, n_threads);
	assert_non_null(*f32);
	*t = moe_check_tensor_of(*f32, QW_DT_F32, 3, L->E, rows, cols);
	*d_q = to_device(m->q, (size_t)(L->E * rows * cols));
	*d_s = to_device(m->s, (size_t)L->E * moe_check_fp8_scales(m) * 4);
}

/* Weights uniform in [-a, a) as test_cuda_moe makes them: router logits of std ~2, gate and
 * up pre-activations of std ~1, expert outputs of std ~1. */
static void layer_init(layer *L, const char *name, int H, int E, int k, int I, recipe r)
{
	double t0 = qw_seconds_now();
	*L = (layer){.name = name, .H = H, .E = E, .k = k, .I = I, .r = r};
	size_t nr = (size_t)E * (size_t)H, ngu = nr * 2 * (size_t)I, nd = nr * (size_t)I;
	float gu_a = r.gu_amax > 0 ? r.gu_amax : 3.0f / sqrtf((float)H);
	float dn_a = 5.0f / sqrtf((float)I);
	L->router = r.zero_router ? calloc(nr, 2) : random_bf16(nr, 1, 6.0f / sqrtf((float)H));
	assert_non_null(L->router);
	for (int e = 1; r.twin_router && e < E; e += 2)
		memcpy(L->router + (size_t)e * (size_t)H, L->router + (size_t)(e - 1) * (size_t)H,
		       (size_t)H * 2);
	L->t_router = moe_check_tensor(L->router, 2, E, H, 0);
	L->d_router = to_device(L->router, nr * 2);
	if (r.br) {
		make_fp8(L, &L->gu8, &L->gu32, &L->t_gu, &L->d_gu, &L->d_gus, H, 2 * (int64_t)I, gu_a,
			 2);
	} else {
		L->gu16 = random_bf16(ngu, 2, gu_a);
		L->t_gu = moe_check_tensor(L->gu16, 3, E, H, 2 * (int64_t)I);
		L->d_gu = to_device(L->gu16, ngu * 2);
	}
	if (r.br && !r.down_bf16) {
		make_fp8(L, &L->dn8, &L->dn32, &L->t_dn, &L->d_dn, &L->d_dns, I, H, dn_a, 4);
	} else {
		L->dn16 = random_bf16(nd, 3, dn_a);
		L->t_dn = moe_check_tensor(L->dn16, 3, E, I, H);
		L->d_dn = to_device(L->dn16, nd * 2);
	}
	L->w = (qw_moe_weights){.router = &L->t_router, .gate_up = &L->t_gu, .down = &L->t_dn,
				.n_experts = E, .top_k = k, .inter = I,
				.renormalize = r.renormalize};
	L->ws_bytes = qw_cuda_moe_ws_bytes(TMAX, H, E, k, I);
	CUDA_OK(cudaMalloc(&L->ws, L->ws_bytes));
	CUDA_OK(cudaMalloc((void **)&L->d_out, (size_t)TMAX * (size_t)H * 2));
	CUDA_OK(cudaMalloc((void **)&L->d_sync, QW_CUDA_MOE_SYNC_BYTES));
	CUDA_OK(cudaMemset(L->d_sync, 0, QW_CUDA_MOE_SYNC_BYTES));
	CUDA_OK(cudaStreamCreate(&L->stream));
	print_message("%s: H %d, E %d, top-%d, I %d, %s experts%s, made in %.1f s\n", name, H, E,
		      k, I, !r.br ? "bf16" : r.down_bf16 ? "FP8 gate_up and bf16 down" : "FP8",
		      r.renormalize ? "" : ", not renormalised", qw_seconds_now() - t0);
}

static void layer_free(layer *L)
{
	free(L->router);
	free(L->gu16);
	free(L->dn16);
	free(L->gu32);
	free(L->dn32);
	if (L->r.br)
		moe_check_fp8_free(&L->gu8);
	if (L->r.br && !L->r.down_bf16)
		moe_check_fp8_free(&L->dn8);
	void *dev[] = {L->d_router, L->d_gu, L->d_gus, L->d_dn, L->d_dns, L->d_x, L->d_out, L->ws,
		       L->d_sync};
	for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
		cudaFree(dev[i]);
	cudaStreamDestroy(L->stream);
}

static qw_cuda_moe_args args_of(const layer *L, qw_cuda_moe_path path, int row0, int T)
{
	qw_cuda_moe_args a = {.T = T, .H = L->H, .E = L->E, .top_k = L->k, .I = L->I,
			      .renormalize = L->r.renormalize,
			      .x = L->d_x + (size_t)row0 * (size_t)L->H, .router = L->d_router,
			      .gate_up = L->d_gu, .down = L->d_dn, .out = L->d_out,
			      .sync = L->d_sync, .path = path};
	if (L->d_gus)
		a.gate_up_scales = (qw_cuda_moe_scales){L->d_gus, L->r.br, L->r.bc};
	if (L->d_dns)
		a.down_scales = (qw_cuda_moe_scales){L->d_dns, L->r.br, L->r.bc};
	return a;
}

/* True when every counter of the sync buffer is zero (else says which is not). */
static bool sync_clear(const layer *L, const char *when)
{
	uint32_t words[QW_CUDA_MOE_SYNC_BYTES / 4];
	CUDA_OK(cudaMemcpy(words, L->d_sync, sizeof words, cudaMemcpyDeviceToHost));
	for (size_t i = 0; i < sizeof words / sizeof *words; i++)
		if (words[i]) {
			print_message("%s: %s: the fused kernel left counter %zu at %u (not reset)\n",
				      L->name, when, i, words[i]);
			return false;
		}
	return true;
}

/* Waits for the layer's stream; a failure names the run (the fused kernel traps when a wait
 * for a counter lasts seconds: a deadlock ends as a launch error, not a hung test). */
static void synced(const layer *L, const char *what, int T)
{
	cudaError_t rc = cudaStreamSynchronize(L->stream);
	if (rc != cudaSuccess)
		fail_msg("%s: %s at T %d: %s (a fused kernel whose wait for a counter timed out, a "
			 "deadlock, ends so) (seed %llu)", L->name, what, T, cudaGetErrorString(rc),
			 (unsigned long long)seed);
}

static void poison(const layer *L, int T)
{
	CUDA_OK(cudaMemsetAsync(L->d_out, 0xff, (size_t)T * (size_t)L->H * 2, L->stream));
	CUDA_OK(cudaMemsetAsync(L->ws, 0xff, L->ws_bytes, L->stream));
}

static bool run(const layer *L, qw_cuda_moe_path path, int row0, int T, uint16_t *out)
{
	poison(L, T);
	qw_cuda_moe_args a = args_of(L, path, row0, T);
	qw_err err = {0};
	if (qw_cuda_moe(&a, L->ws, L->ws_bytes, L->stream, &err) != QW_OK) {
		print_message("%s: qw_cuda_moe (T %d): %s\n", L->name, T, err.msg);
		return false;
	}
	synced(L, path == QW_CUDA_MOE_PLAIN ? "the plain path" : "the fused path", T);
	CUDA_OK(cudaMemcpy(out, L->d_out, (size_t)T * (size_t)L->H * 2, cudaMemcpyDeviceToHost));
	return path != QW_CUDA_MOE_FUSED || sync_clear(L, "after a run");
}

static bool run_fused(void *ctx, int row0, int T, uint16_t *out)
{
	return run(ctx, QW_CUDA_MOE_FUSED, row0, T, out);
}

static bool run_plain(void *ctx, int row0, int T, uint16_t *out)
{
	return run(ctx, QW_CUDA_MOE_PLAIN, row0, T, out);
}

/* The fused kernel recorded once into a graph (T = TMAX, the tokens at d_x), replayed on
 * three fresh batches written into d_x: each gives the plain path's bits for its batch. */
static void check_graph(layer *L)
{
	size_t n = (size_t)TMAX * (size_t)L->H;
	uint16_t *got = malloc(n * 2), *want = malloc(n * 2);
	assert_non_null(got);
	assert_non_null(want);
	qw_cuda_moe_args a = args_of(L, QW_CUDA_MOE_FUSED, 0, TMAX);
	qw_err err = {0};
	cudaGraph_t graph;
	cudaGraphExec_t exec;
	CUDA_OK(cudaStreamBeginCapture(L->stream, cudaStreamCaptureModeThreadLocal));
	qw_status st = qw_cuda_moe(&a, L->ws, L->ws_bytes, L->stream, &err);
	CUDA_OK(cudaStreamEndCapture(L->stream, &graph));
	if (st != QW_OK)
		fail_msg("%s: qw_cuda_moe while recording: %s", L->name, err.msg);
	CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
	for (int i = 0; i < 3; i++) {
		uint16_t *x = random_bf16(n, 100 + (uint64_t)i, 1.0f);
		CUDA_OK(cudaMemcpy(L->d_x, x, n * 2, cudaMemcpyHostToDevice));
		free(x);
		assert_true(run_plain(L, 0, TMAX, want));
		poison(L, TMAX);
		CUDA_OK(cudaGraphLaunch(exec, L->stream));
		synced(L, "a graph replay of the fused path", TMAX);
		CUDA_OK(cudaMemcpy(got, L->d_out, n * 2, cudaMemcpyDeviceToHost));
		char what[96];
		snprintf(what, sizeof what, "%s: graph replay %d", L->name, i);
		if (!moe_check_same_bits(what, got, want, n, L->H) || !sync_clear(L, what))
			fail_msg("%s (seed %llu)", what, (unsigned long long)seed);
	}
	print_message("%s: three graph replays gave the plain path's bits\n", L->name);
	cudaGraphExecDestroy(exec);
	cudaGraphDestroy(graph);
	free(got);
	free(want);
}

/* The layer on TMAX random tokens: moe_check_runs with the fused path, the plain path as
 * its twin; then, when graph, check_graph. */
static void check_layer(layer *L, bool graph)
{
	size_t n = (size_t)TMAX * (size_t)L->H;
	uint16_t *x = random_bf16(n, 10, 1.0f);
	float *ref = malloc(n * sizeof *ref);
	assert_non_null(ref);
	qw_err err = {0};
	if (moe_check_reference(&L->w, L->H, x, TMAX, n_threads, ref, &err) != QW_OK)
		fail_msg("cpu moe: %s", err.msg);
	L->d_x = to_device(x, n * 2);
	double atol = L->r.br ? MOE_CHECK_ATOL_FP8 : MOE_CHECK_ATOL_BF16;
	if (!moe_check_runs(L->name, L->H, sizes, TMAX, ref, atol, run_fused, L, run_plain, L))
		fail_msg("%s: see above (seed %llu)", L->name, (unsigned long long)seed);
	if (graph)
		check_graph(L);
	free(ref);
	free(x);
}

static void one_layer(const char *name, int H, int E, int k, int I, recipe r, bool graph)
{
	layer L;
	layer_init(&L, name, H, E, k, I, r);
	check_layer(&L, graph);
	layer_free(&L);
}

/* A fixture's MoE layer: its shape, renormalisation and (FP8 configs) blocks. */
static void fixture_layer(const char *config, const char *name, bool fp8, bool graph)
{
	qw_config cfg, cfg8;
	qw_err err = {0};
	char path[256];
	snprintf(path, sizeof path, "configs/%s.json", config);
	if (qw_config_load(fixture(path), &cfg, &err) != QW_OK)
		fail_msg("%s: %s", path, err.msg);
	recipe r = {.renormalize = cfg.text.norm_topk_prob};
	if (fp8) {
		snprintf(path, sizeof path, "configs/%s-FP8.json", config);
		if (qw_config_load(fixture(path), &cfg8, &err) != QW_OK)
			fail_msg("%s: %s", path, err.msg);
		assert_int_equal(cfg8.quant.kind, QW_QUANT_FP8);
		r.br = cfg8.quant.block[0];
		r.bc = cfg8.quant.block[1];
	}
	const qw_text_config *t = &cfg.text;
	one_layer(name, t->hidden_size, t->num_experts, t->num_experts_per_tok,
		  t->moe_intermediate_size, r, graph);
}

// ---------------------------------------------------------------------------------------
// tests

static void test_30b_bf16(void **state)
{
	(void)state;
	fixture_layer("Qwen3-VL-30B-A3B-Instruct", "30B-A3B bf16", false, true);
}

static void test_30b_fp8(void **state)
{
	(void)state;
	fixture_layer("Qwen3-VL-30B-A3B-Instruct", "30B-A3B FP8", true, false);
}

static void test_235b_bf16(void **state)
{
	(void)state;
	fixture_layer("Qwen3-VL-235B-A22B-Thinking", "235B-A22B bf16", false, false);
}

static void test_235b_fp8(void **state)
{
	(void)state;
	fixture_layer("Qwen3-VL-235B-A22B-Thinking", "235B-A22B FP8", true, false);
}

static void test_tiny(void **state)
{
	(void)state;
	one_layer("tiny", 144, 8, 2, 48, (recipe){.renormalize = true}, true);
	one_layer("tiny (not renormalised)", 144, 8, 2, 48, (recipe){0}, false);
	one_layer("tiny FP8, 48 x 32 blocks", 144, 8, 2, 48,
		  (recipe){.br = 48, .bc = 32, .renormalize = true}, true);
	one_layer("tiny FP8 gate_up, bf16 down", 144, 8, 2, 48,
		  (recipe){.br = 128, .bc = 128, .down_bf16 = true, .renormalize = true}, false);
	/* gate_up scales of 128 to 512: half of them take the dequantisation's two multiplies */
	one_layer("tiny FP8, scales 128-512", 144, 8, 2, 48,
		  (recipe){.br = 128, .bc = 128, .gu_amax = 448.0f * 128.0f, .renormalize = true},
		  false);
}

/* all 128 probabilities equal: the lowest ids are chosen, through the long candidate list */
static void test_ties(void **state)
{
	(void)state;
	one_layer("all tied", 256, 128, 8, 64, (recipe){.zero_router = true, .renormalize = true},
		  false);
}

/* experts in tied pairs, top-3: the third choice is one of a tied pair (the lower id), from
 * route_token's short candidate list */
static void test_twins(void **state)
{
	(void)state;
	one_layer("twin experts", 144, 16, 3, 48,
		  (recipe){.twin_router = true, .renormalize = true}, false);
}

/* the routing's limits: 256 experts, top-32, 8 x 32 = 256 pairs (a thread each) */
static void test_wide(void **state)
{
	(void)state;
	one_layer("256 experts, top-32", 128, 256, 32, 64, (recipe){.renormalize = true}, true);
}

/* each path can be forced; the fused one is refused by name where it does not apply */
static void test_args(void **state)
{
	(void)state;
	layer L;
	layer_init(&L, "args", 64, 4, 2, 32, (recipe){.renormalize = true});
	size_t ws_bytes = qw_cuda_moe_ws_bytes(TMAX + 1, 64, 4, 2, 32);
	void *ws;
	CUDA_OK(cudaMalloc(&ws, ws_bytes));
	CUDA_OK(cudaMalloc((void **)&L.d_x, (TMAX + 1) * 64 * 2));
	CUDA_OK(cudaMemset(L.d_x, 0, (TMAX + 1) * 64 * 2));
	CUDA_OK(cudaFree(L.d_out));
	CUDA_OK(cudaMalloc((void **)&L.d_out, (TMAX + 1) * 64 * 2));
	qw_err err = {0};
	static const qw_cuda_moe_path paths[] = {QW_CUDA_MOE_AUTO, QW_CUDA_MOE_PLAIN,
						 QW_CUDA_MOE_FUSED};
	for (int i = 0; i < 3; i++) {
		qw_cuda_moe_args a = args_of(&L, paths[i], 0, TMAX);
		assert_int_equal(qw_cuda_moe(&a, ws, ws_bytes, L.stream, &err), QW_OK);
	}
	qw_cuda_moe_args a = args_of(&L, QW_CUDA_MOE_FUSED, 0, TMAX + 1);
	assert_int_equal(qw_cuda_moe(&a, ws, ws_bytes, L.stream, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	assert_non_null(strstr(err.msg, "at most 8 tokens"));
	a.path = QW_CUDA_MOE_AUTO;   /* the plain path takes it */
	assert_int_equal(qw_cuda_moe(&a, ws, ws_bytes, L.stream, &err), QW_OK);
	a = args_of(&L, QW_CUDA_MOE_FUSED, 0, TMAX);
	a.sync = NULL;
	assert_int_equal(qw_cuda_moe(&a, ws, ws_bytes, L.stream, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	assert_non_null(strstr(err.msg, "sync"));
	a.path = QW_CUDA_MOE_AUTO;   /* without a sync buffer AUTO is the plain path */
	assert_int_equal(qw_cuda_moe(&a, ws, ws_bytes, L.stream, &err), QW_OK);
	a = args_of(&L, (qw_cuda_moe_path)7, 0, TMAX);
	assert_int_equal(qw_cuda_moe(&a, ws, ws_bytes, L.stream, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	a = args_of(&L, QW_CUDA_MOE_FUSED, 0, TMAX);
	a.sync = (uint32_t *)((char *)L.d_sync + 2);
	assert_int_equal(qw_cuda_moe(&a, ws, ws_bytes, L.stream, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	CUDA_OK(cudaStreamSynchronize(L.stream));
	assert_true(sync_clear(&L, "after the forced runs"));
	/* the environment's names for the paths (QW_CUDA_MOE) */
	qw_cuda_moe_path p = QW_CUDA_MOE_FUSED;
	assert_int_equal(qw_cuda_moe_path_parse(NULL, &p, &err), QW_OK);
	assert_int_equal(p, QW_CUDA_MOE_PLAIN);   /* the default until a GPU has held the fused one */
	assert_int_equal(qw_cuda_moe_path_parse("plain", &p, &err), QW_OK);
	assert_int_equal(p, QW_CUDA_MOE_PLAIN);
	assert_int_equal(qw_cuda_moe_path_parse("fused", &p, &err), QW_OK);
	assert_int_equal(p, QW_CUDA_MOE_FUSED);
	assert_int_equal(qw_cuda_moe_path_parse("auto", &p, &err), QW_OK);
	assert_int_equal(p, QW_CUDA_MOE_AUTO);
	assert_int_equal(qw_cuda_moe_path_parse("fast", &p, &err), QW_E_ARG);
	assert_non_null(strstr(err.msg, "HINT"));
	cudaFree(ws);
	layer_free(&L);
}

static int setup(void **state)
{
	(void)state;
	return moe_check_setup(&seed, &n_threads);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_args),
		cmocka_unit_test(test_tiny),
		cmocka_unit_test(test_ties),
		cmocka_unit_test(test_twins),
		cmocka_unit_test(test_wide),
		cmocka_unit_test(test_30b_bf16),
		cmocka_unit_test(test_30b_fp8),
		cmocka_unit_test(test_235b_bf16),
		cmocka_unit_test(test_235b_fp8),
	};
	return cmocka_run_group_tests_name("cuda-moe-fused", tests, setup, NULL);
}
