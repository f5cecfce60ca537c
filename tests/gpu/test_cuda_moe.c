/* test_cuda_moe.c - qw_cuda_moe (kernels/cuda/moe.cu) against the CPU backend's moe op, the
 * reference, on random bf16-representable inputs and weights: a tiny layer (H 128, E 8, k 2,
 * I 48) at sizes that use each of the three GEMM tile shapes, with and without
 * renormalisation; a 30B-A3B-like layer (H 2048, E 128, k 8, I 768) at T = 1, 4, 64, 700
 * and 1100; a 235B-A22B-like one (H 4096, E 128, k 8, I 1536, 4.8 GB of weights) at T = 1,
 * 128 and 300.  Part of `scons test-gpu`.
 *
 * Tolerance, per element: |gpu - cpu| <= atol + rtol |cpu|, rtol = 2^-7 (the bf16 output's
 * rounding is at most 2^-8 relative), atol = 0.02 rms(cpu): the GPU rounds the SwiGLU output
 * to bf16 before the down projection, the CPU keeps fp32 (an error of ~0.0015 rms(out) per
 * element, so 0.02 is over 10 sigma); fp32 tensor-core sums against the CPU's double ones
 * add ~1e-6.  Over the whole output, sum (gpu - cpu)^2 / sum cpu^2 <= 3e-5.  A numpy model
 * of both roundings on these shapes gives at most 0.45 of the per-element tolerance and
 * an nmse of 5.6e-6.  The GPU's router logits equal the CPU's bit for bit (moe.cu), so no token may
 * differ by a routing flip at a near-tie.
 * Also: two runs give the same bits; every prefix of the batch (the sizes span the S, M and
 * L tile shapes), a token alone and a slice from the middle give the bits of the whole batch
 * (batch invariance).  Outputs and scratch are poisoned (0xff, NaN) before every run.  The
 * seed is printed; QW_TEST_SEED=n repeats a run.  The last lines time the layer.
 */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cuda/kernels.h"
#include "loader/clock.h"
#include "tests/gpu/cuda_ok.h"
#include "tests/gpu/moe_check.h"

static uint64_t seed;
static int n_threads;

static uint16_t *random_bf16(size_t n, uint64_t stream, float scale)
{
	uint16_t *p = moe_check_random_bf16(n, seed, stream, scale, n_threads);
	assert_non_null(p);
	return p;
}

// ---------------------------------------------------------------------------------------
// a layer on both backends

typedef struct layer {
	const char *name;
	int H, E, k, I;
	uint16_t *router, *gate_up, *down;       /* host bf16: (E, H), (E, H, 2I), (E, I, H) */
	void *d_router, *d_gate_up, *d_down;     /* their device copies */
	qw_tensor t_router, t_gate_up, t_down;   /* the CPU op's views of the host copies */
	qw_moe_weights w;
} layer;

static void *upload(const uint16_t *host, size_t n)
{
	void *d = moe_check_to_device(host, n * 2);
	assert_non_null(d);
	return d;
}

/* Weights uniform in [-a, a): router logits of std ~2 for inputs uniform in [-1, 1), gate
 * and up pre-activations of std ~1, expert outputs of std ~1. */
static void layer_init(layer *L, const char *name, int H, int E, int k, int I)
{
	double t0 = qw_seconds_now();
	*L = (layer){.name = name, .H = H, .E = E, .k = k, .I = I};
	size_t nr = (size_t)E * (size_t)H, ngu = nr * 2 * (size_t)I, nd = nr * (size_t)I;
	L->router = random_bf16(nr, 1, 6.0f / sqrtf((float)H));
	L->gate_up = random_bf16(ngu, 2, 3.0f / sqrtf((float)H));
	L->down = random_bf16(nd, 3, 5.0f / sqrtf((float)I));
	L->d_router = upload(L->router, nr);
	L->d_gate_up = upload(L->gate_up, ngu);
	L->d_down = upload(L->down, nd);
	L->t_router = moe_check_tensor(L->router, 2, E, H, 0);
	L->t_gate_up = moe_check_tensor(L->gate_up, 3, E, H, 2 * (int64_t)I);
	L->t_down = moe_check_tensor(L->down, 3, E, I, H);
	L->w = (qw_moe_weights){.router = &L->t_router, .gate_up = &L->t_gate_up,
				.down = &L->t_down, .n_experts = E, .top_k = k, .inter = I,
				.renormalize = 1};
	print_message("%s: H %d, E %d, top-%d, I %d: %.2f GB of weights made in %.1f s\n", name,
		      H, E, k, I, (double)(nr + ngu + nd) * 2e-9, qw_seconds_now() - t0);
}

static void layer_free(layer *L)
{
	free(L->router);
	free(L->gate_up);
	free(L->down);
	cudaFree(L->d_router);
	cudaFree(L->d_gate_up);
	cudaFree(L->d_down);
}

// ---------------------------------------------------------------------------------------
// the reference (moe_check.h), in parallel over tokens

static float *reference(layer *L, const uint16_t *x, int T)
{
	double t0 = qw_seconds_now();
	float *out = malloc((size_t)T * (size_t)L->H * sizeof(float));
	assert_non_null(out);
	qw_err err = {0};
	if (moe_check_reference(&L->w, L->H, x, T, n_threads, out, &err) != QW_OK)
		fail_msg("cpu moe: %s", err.msg);
	print_message("%s: the CPU reference for %d tokens took %.1f s on %d threads\n", L->name,
		      T, qw_seconds_now() - t0, n_threads);
	return out;
}

// ---------------------------------------------------------------------------------------
// the GPU side

typedef struct gpu {
	void *ws;
	size_t ws_bytes;
	uint16_t *d_x;      /* (Tmax, H) */
	uint16_t *d_out;    /* (Tmax, H) */
	cudaStream_t stream;
} gpu;

typedef struct layer_gpu {
	const layer *L;
	const gpu *g;
} layer_gpu;

static qw_cuda_moe_args args_of(const layer *L, const gpu *g, int row0, int T)
{
	return (qw_cuda_moe_args){.T = T, .H = L->H, .E = L->E, .top_k = L->k, .I = L->I,
				  .renormalize = L->w.renormalize != 0,
				  .x = g->d_x + (size_t)row0 * (size_t)L->H,
				  .router = L->d_router, .gate_up = L->d_gate_up,
				  .down = L->d_down, .out = g->d_out};
}

/* Tokens [row0, row0 + T) of d_x through qw_cuda_moe into out (T, H), poisoned first. */
static void gpu_moe(const layer *L, const gpu *g, int row0, int T, uint16_t *out)
{
	size_t n = (size_t)T * (size_t)L->H;
	CUDA_OK(cudaMemsetAsync(g->d_out, 0xff, n * 2, g->stream));
	CUDA_OK(cudaMemsetAsync(g->ws, 0xff, g->ws_bytes, g->stream));
	qw_cuda_moe_args a = args_of(L, g, row0, T);
	qw_err err = {0};
	if (qw_cuda_moe(&a, g->ws, g->ws_bytes, g->stream, &err) != QW_OK)
		fail_msg("qw_cuda_moe (%s, T %d): %s", L->name, T, err.msg);
	CUDA_OK(cudaStreamSynchronize(g->stream));
	CUDA_OK(cudaMemcpy(out, g->d_out, n * 2, cudaMemcpyDeviceToHost));
}

/* Milliseconds per call, over 5 calls after one warm-up. */
static double gpu_time(const layer *L, const gpu *g, int T)
{
	qw_cuda_moe_args a = args_of(L, g, 0, T);
	qw_err err = {0};
	cudaEvent_t start, stop;
	CUDA_OK(cudaEventCreate(&start));
	CUDA_OK(cudaEventCreate(&stop));
	for (int i = 0; i < 6; i++) {
		if (i == 1)
			CUDA_OK(cudaEventRecord(start, g->stream));
		if (qw_cuda_moe(&a, g->ws, g->ws_bytes, g->stream, &err) != QW_OK)
			fail_msg("qw_cuda_moe: %s", err.msg);
	}
	CUDA_OK(cudaEventRecord(stop, g->stream));
	CUDA_OK(cudaEventSynchronize(stop));
	float ms = 0.0f;
	CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
	cudaEventDestroy(start);
	cudaEventDestroy(stop);
	return ms / 5.0;
}

static bool run_gpu(void *ctx, int row0, int T, uint16_t *out)
{
	const layer_gpu *lg = ctx;
	gpu_moe(lg->L, lg->g, row0, T, out);
	return true;
}

/* The layer at each size (a prefix of one batch of random tokens; the last is the largest),
 * against the reference, for determinism and for batch invariance (moe_check_runs). */
static void check_layer(layer *L, const int *sizes, int n_sizes)
{
	int Tmax = sizes[n_sizes - 1], H = L->H;
	size_t n = (size_t)Tmax * (size_t)H;
	uint16_t *x = random_bf16(n, 10 + (uint64_t)L->w.renormalize, 1.0f);
	float *ref = reference(L, x, Tmax);

	gpu g = {.ws_bytes = qw_cuda_moe_ws_bytes(Tmax, H, L->E, L->k, L->I)};
	CUDA_OK(cudaStreamCreate(&g.stream));
	CUDA_OK(cudaMalloc(&g.ws, g.ws_bytes));
	g.d_x = upload(x, n);
	CUDA_OK(cudaMalloc((void **)&g.d_out, n * 2));
	layer_gpu lg = {L, &g};
	if (!moe_check_runs(L->name, H, sizes, n_sizes, ref, MOE_CHECK_ATOL_BF16, run_gpu, &lg,
			    NULL, NULL))
		fail_msg("%s: see above (seed %llu)", L->name, (unsigned long long)seed);
	double ms1 = gpu_time(L, &g, 1), msT = gpu_time(L, &g, Tmax);
	double expert_bytes = 3.0 * (double)H * (double)L->I * 2.0;
	print_message("%s: %.3f ms at T 1 (%.0f GB/s of the top-%d experts' weights), %.3f ms at "
		      "T %d (%.1f us a token)\n", L->name, ms1,
		      (double)L->k * expert_bytes / (ms1 * 1e6), L->k, msT, Tmax,
		      msT * 1e3 / Tmax);

	free(ref);
	free(x);
	cudaFree(g.ws);
	cudaFree(g.d_x);
	cudaFree(g.d_out);
	cudaStreamDestroy(g.stream);
}

// ---------------------------------------------------------------------------------------
// tests

static void test_tiny(void **state)
{
	(void)state;
	/* E 8, k 2: S for T <= 32, M for T <= 256, L above */
	static const int sizes[] = {1, 5, 32, 33, 100, 256, 257, 300};
	layer L;
	layer_init(&L, "tiny", 128, 8, 2, 48);
	check_layer(&L, sizes, 8);
	L.w.renormalize = 0;
	L.name = "tiny (not renormalised)";
	check_layer(&L, sizes, 8);
	layer_free(&L);
}

static void test_30b(void **state)
{
	(void)state;
	/* E 128, k 8: S for T <= 128, M for T <= 1024, L above */
	static const int sizes[] = {1, 4, 64, 700, 1100};
	layer L;
	layer_init(&L, "30B-A3B-like", 2048, 128, 8, 768);
	check_layer(&L, sizes, 5);
	layer_free(&L);
}

static void test_235b(void **state)
{
	(void)state;
	static const int sizes[] = {1, 128, 300};
	layer L;
	layer_init(&L, "235B-A22B-like", 4096, 128, 8, 1536);
	check_layer(&L, sizes, 3);
	layer_free(&L);
}

/* shapes the kernels cannot take are refused, and T 0 does nothing */
static void test_args(void **state)
{
	(void)state;
	layer L;
	layer_init(&L, "args", 64, 4, 2, 32);
	gpu g = {.ws_bytes = qw_cuda_moe_ws_bytes(8, 64, 4, 2, 32)};
	CUDA_OK(cudaMalloc(&g.ws, g.ws_bytes));
	CUDA_OK(cudaMalloc((void **)&g.d_x, 8 * 64 * 2));
	CUDA_OK(cudaMalloc((void **)&g.d_out, 8 * 64 * 2));
	qw_err err = {0};
	qw_cuda_moe_args a = args_of(&L, &g, 0, 8);
	assert_int_equal(qw_cuda_moe(&a, g.ws, g.ws_bytes, 0, &err), QW_OK);
	a.T = 9;   /* more tokens than the scratch was sized for */
	assert_int_equal(qw_cuda_moe(&a, g.ws, g.ws_bytes, 0, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	a.T = 0;
	assert_int_equal(qw_cuda_moe(&a, g.ws, g.ws_bytes, 0, &err), QW_OK);
	a = args_of(&L, &g, 0, 8);
	a.H = 60;
	assert_int_equal(qw_cuda_moe(&a, g.ws, g.ws_bytes, 0, &err), QW_E_ARG);
	a = args_of(&L, &g, 0, 8);
	a.top_k = 5;
	assert_int_equal(qw_cuda_moe(&a, g.ws, g.ws_bytes, 0, &err), QW_E_ARG);
	a = args_of(&L, &g, 0, 8);
	a.x = (const uint16_t *)((const char *)a.x + 2);
	assert_int_equal(qw_cuda_moe(&a, g.ws, g.ws_bytes, 0, &err), QW_E_ARG);
	CUDA_OK(cudaDeviceSynchronize());
	cudaFree(g.ws);
	cudaFree(g.d_x);
	cudaFree(g.d_out);
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
		cmocka_unit_test(test_30b),
		cmocka_unit_test(test_235b),
	};
	return cmocka_run_group_tests_name("cuda-moe", tests, setup, NULL);
}
