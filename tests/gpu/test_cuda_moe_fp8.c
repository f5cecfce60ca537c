/* test_cuda_moe_fp8.c - qw_cuda_moe (kernels/cuda/moe.cu, moe_gemm.cu) on FP8 experts in the
 * fused (hub) layout: gate_up (E, H, 2I) and down (E, I, H) as float8_e4m3fn codes with a
 * fresh random fp32 scale per 128 x 128 block of each expert's matrix (moe_check_fp8: a
 * factor of 4 between blocks), on random bf16 inputs.  Shapes: a tiny layer with partial
 * blocks everywhere (H 144, E 8, k 2, I 48: gate and up share one block, the seam inside
 * it); a small one (H 272, E 16, k 4, I 208: the seam inside the second block); the
 * 30B-A3B layer (H 2048, E 128, k 8, I 768) and the 235B-A22B layer (H 4096, E 128, k 8,
 * I 1536, 2.4 GB of FP8 experts); each at T = 1, 8, 64 and 512 (prefixes of one batch; the
 * tiny and small layers' sizes use each of the three tile shapes, the big ones S and M).
 * Also: blocks of 48 x 32 (k-tiles straddle blocks of rows that are not a power of two: the
 * kernel's per-row path); scales of 128 to 512 (half of them >= 2^8: the two-multiply
 * path); gate_up FP8 with down bf16; FP8 arguments the kernel refuses.  Part of
 * `scons test-gpu`.
 *
 * Each run is held to (moe_check_runs):
 *  - the CPU reference (the CPU backend's moe op), whose weights are e4m3 * s in fp32 (it
 *    reads the FP8 tensors themselves on the tiny and small layers, their fp32 values, the
 *    same numbers, on the big ones, where reading FP8 element by element would take
 *    minutes), within 0.03 rms(cpu) + 2^-7 |cpu| per element and an nmse of 3e-5
 *    (MOE_CHECK_ATOL_FP8 in moe_check.h: 1.5 times test_cuda_moe's absolute term).  Why:
 *    the GPU's weights are those values rounded once more, to bf16 (the FP8 contract), a
 *    relative error of at most 2^-9, independent between weights; gate and up move by it,
 *    act inherits it and down adds its own, about sqrt(2) times bf16's error in all.  On an
 *    H100 the 30B and 235B layers gave an nmse of 1.4e-5 (bf16: 5.6e-6) and a largest
 *    difference of 1.14 times bf16's 0.02 rms term;
 *  - the bf16 kernel on the dequantised experts (bf16_rn(e4m3 * s), made on the host, what
 *    an upload-time dequantisation gave): the same bits at every size (the FP8 GEMM
 *    dequantises to those bits and sums as the bf16 one does);
 *  - determinism and batch invariance: a second run, every prefix, tokens alone and a slice
 *    give the bits of the whole batch.
 * Outputs and scratch are poisoned before every run.  The seed is printed; QW_TEST_SEED=n
 * repeats a run.  The last lines time each layer (FP8 against bf16).
 */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kernels.h"
#include "loader/clock.h"
#include "tests/bench/bench_util.h"
#include "tests/gpu/cuda_ok.h"
#include "tests/gpu/moe_check.h"

static uint64_t seed;
static int n_threads;

static const int sizes[] = {1, 8, 64, 512};
#define N_SIZES 4
#define TMAX 512

/* What a layer is made of besides its shape. */
typedef struct recipe {
	int br, bc;          /* the FP8 blocks */
	float gu_amax;       /* gate_up's values: 0 for 3 / sqrt(H) */
	bool down_bf16;      /* down as its dequantised bf16 (gate_up alone FP8) */
	bool f32_reference;  /* the reference reads fp32 values instead of the FP8 tensors */
} recipe;

typedef struct layer {
	const char *name;
	int H, E, k, I;
	recipe r;
	uint16_t *router;                     /* host (E, H) bf16 */
	moe_check_fp8 gu, dn;                 /* (E, H, 2I), (E, I, H) */
	uint16_t *gu16, *dn16;                /* their dequantised bf16 */
	float *gu32, *dn32;                   /* their fp32 values (f32_reference) */
	qw_tensor t_router, t_gu, t_gus, t_dn, t_dns;   /* the reference's views */
	qw_moe_weights w;
	/* on the device */
	void *d_router, *d_gu8, *d_gus, *d_dn8, *d_dns, *d_gu16, *d_dn16;
	uint16_t *d_x, *d_out;                /* (TMAX, H) */
	void *ws;
	size_t ws_bytes;
	cudaStream_t stream;
} layer;

static void *to_device(const void *host, size_t bytes)
{
	void *d = moe_check_to_device(host, bytes);
	assert_non_null(d);
	return d;
}

static void layer_init(layer *L, const char *name, int H, int E, int k, int I, recipe r)
{
	double t0 = qw_seconds_now();
	*L = (layer){.name = name, .H = H, .E = E, .k = k, .I = I, .r = r};
	size_t nr = (size_t)E * (size_t)H, ngu = nr * 2 * (size_t)I, nd = nr * (size_t)I;
	float gu_amax = r.gu_amax > 0 ? r.gu_amax : 3.0f / sqrtf((float)H);
	L->router = moe_check_random_bf16(nr, seed, 1, 6.0f / sqrtf((float)H), n_threads);
	assert_non_null(L->router);
	assert_true(moe_check_fp8_make(&L->gu, E, H, 2 * (int64_t)I, r.br, r.bc, gu_amax, seed, 2,
				       n_threads));
	assert_true(moe_check_fp8_make(&L->dn, E, I, H, r.br, r.bc, 5.0f / sqrtf((float)I), seed,
				       4, n_threads));
	L->gu16 = moe_check_fp8_bf16(&L->gu, n_threads);
	L->dn16 = moe_check_fp8_bf16(&L->dn, n_threads);
	assert_non_null(L->gu16);
	assert_non_null(L->dn16);
	L->t_router = moe_check_tensor(L->router, 2, E, H, 0);
	if (r.f32_reference) {
		L->gu32 = moe_check_fp8_f32(&L->gu, n_threads);
		assert_non_null(L->gu32);
		L->t_gu = moe_check_tensor_of(L->gu32, QW_DT_F32, 3, E, H, 2 * (int64_t)I);
	} else {
		L->t_gu = moe_check_fp8_tensor(&L->gu, 0, 3, &L->t_gus);
	}
	if (r.down_bf16) {
		L->t_dn = moe_check_tensor(L->dn16, 3, E, I, H);
	} else if (r.f32_reference) {
		L->dn32 = moe_check_fp8_f32(&L->dn, n_threads);
		assert_non_null(L->dn32);
		L->t_dn = moe_check_tensor_of(L->dn32, QW_DT_F32, 3, E, I, H);
	} else {
		L->t_dn = moe_check_fp8_tensor(&L->dn, 0, 3, &L->t_dns);
	}
	L->w = (qw_moe_weights){.router = &L->t_router, .gate_up = &L->t_gu, .down = &L->t_dn,
				.n_experts = E, .top_k = k, .inter = I, .renormalize = 1};
	L->d_router = to_device(L->router, nr * 2);
	L->d_gu8 = to_device(L->gu.q, ngu);
	L->d_gus = to_device(L->gu.s, (size_t)E * moe_check_fp8_scales(&L->gu) * 4);
	L->d_dn8 = to_device(L->dn.q, nd);
	L->d_dns = to_device(L->dn.s, (size_t)E * moe_check_fp8_scales(&L->dn) * 4);
	L->d_gu16 = to_device(L->gu16, ngu * 2);
	L->d_dn16 = to_device(L->dn16, nd * 2);
	L->ws_bytes = qw_cuda_moe_ws_bytes(TMAX, H, E, k, I);
	CUDA_OK(cudaMalloc(&L->ws, L->ws_bytes));
	CUDA_OK(cudaMalloc((void **)&L->d_out, (size_t)TMAX * (size_t)H * 2));
	CUDA_OK(cudaStreamCreate(&L->stream));
	print_message("%s: H %d, E %d, top-%d, I %d, %d x %d blocks: %.2f GB of FP8 experts made "
		      "in %.1f s\n", name, H, E, k, I, r.br, r.bc, (double)(ngu + nd) * 1e-9,
		      qw_seconds_now() - t0);
}

static void layer_free(layer *L)
{
	free(L->router);
	moe_check_fp8_free(&L->gu);
	moe_check_fp8_free(&L->dn);
	free(L->gu16);
	free(L->dn16);
	free(L->gu32);
	free(L->dn32);
	void *dev[] = {L->d_router, L->d_gu8, L->d_gus, L->d_dn8, L->d_dns, L->d_gu16, L->d_dn16,
		       L->d_x, L->d_out, L->ws};
	for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
		cudaFree(dev[i]);
	cudaStreamDestroy(L->stream);
}

/* The kernel's arguments for tokens [row0, row0 + T): the FP8 experts, or (bf16) the twin's. */
static qw_cuda_moe_args args_of(const layer *L, bool bf16, int row0, int T)
{
	qw_cuda_moe_args a = {.T = T, .H = L->H, .E = L->E, .top_k = L->k, .I = L->I,
			      .renormalize = true, .x = L->d_x + (size_t)row0 * (size_t)L->H,
			      .router = L->d_router, .gate_up = L->d_gu16, .down = L->d_dn16,
			      .out = L->d_out};
	if (bf16)
		return a;
	a.gate_up = L->d_gu8;
	a.gate_up_scales = (qw_cuda_moe_scales){L->d_gus, L->r.br, L->r.bc};
	if (!L->r.down_bf16) {
		a.down = L->d_dn8;
		a.down_scales = (qw_cuda_moe_scales){L->d_dns, L->r.br, L->r.bc};
	}
	return a;
}

static bool run(const layer *L, bool bf16, int row0, int T, uint16_t *out)
{
	size_t n = (size_t)T * (size_t)L->H;
	CUDA_OK(cudaMemsetAsync(L->d_out, 0xff, n * 2, L->stream));   /* NaN until written */
	CUDA_OK(cudaMemsetAsync(L->ws, 0xff, L->ws_bytes, L->stream));
	qw_cuda_moe_args a = args_of(L, bf16, row0, T);
	qw_err err = {0};
	if (qw_cuda_moe(&a, L->ws, L->ws_bytes, L->stream, &err) != QW_OK) {
		print_message("%s: qw_cuda_moe (T %d): %s\n", L->name, T, err.msg);
		return false;
	}
	CUDA_OK(cudaStreamSynchronize(L->stream));
	CUDA_OK(cudaMemcpy(out, L->d_out, n * 2, cudaMemcpyDeviceToHost));
	return true;
}

static bool run_fp8(void *ctx, int row0, int T, uint16_t *out)
{
	return run(ctx, false, row0, T, out);
}

static bool run_bf16(void *ctx, int row0, int T, uint16_t *out)
{
	return run(ctx, true, row0, T, out);
}

/* Median milliseconds of 5 calls after a warm-up. */
static double time_ms(const layer *L, bool bf16, int T)
{
	qw_cuda_moe_args a = args_of(L, bf16, 0, T);
	qw_err err = {0};
	cudaEvent_t start, stop;
	CUDA_OK(cudaEventCreate(&start));
	CUDA_OK(cudaEventCreate(&stop));
	float ms[5];
	for (int i = -1; i < 5; i++) {
		CUDA_OK(cudaEventRecord(start, L->stream));
		if (qw_cuda_moe(&a, L->ws, L->ws_bytes, L->stream, &err) != QW_OK)
			fail_msg("qw_cuda_moe: %s", err.msg);
		CUDA_OK(cudaEventRecord(stop, L->stream));
		CUDA_OK(cudaEventSynchronize(stop));
		if (i >= 0)
			CUDA_OK(cudaEventElapsedTime(&ms[i], start, stop));
	}
	cudaEventDestroy(start);
	cudaEventDestroy(stop);
	return bench_median_ms(ms, 5);
}

/* The layer against the reference, its bf16 twin, and itself (moe_check.h). */
static void check_layer(layer *L)
{
	int H = L->H;
	size_t n = (size_t)TMAX * (size_t)H;
	uint16_t *x = moe_check_random_bf16(n, seed, 10, 1.0f, n_threads);
	float *ref = malloc(n * sizeof *ref);
	assert_non_null(x);
	assert_non_null(ref);
	double t0 = qw_seconds_now();
	qw_err err = {0};
	if (moe_check_reference(&L->w, H, x, TMAX, n_threads, ref, &err) != QW_OK)
		fail_msg("cpu moe: %s", err.msg);
	print_message("%s: the CPU reference for %d tokens took %.1f s on %d threads\n", L->name,
		      TMAX, qw_seconds_now() - t0, n_threads);
	L->d_x = to_device(x, n * 2);
	if (!moe_check_runs(L->name, H, sizes, N_SIZES, ref, MOE_CHECK_ATOL_FP8, run_fp8, L,
			    run_bf16, L))
		fail_msg("%s: see above (seed %llu)", L->name, (unsigned long long)seed);
	double expert = 3.0 * (double)H * (double)L->I;   /* weights of one expert */
	for (int i = 0; i < N_SIZES; i++) {
		int T = sizes[i];
		double f8 = time_ms(L, false, T), b16 = time_ms(L, true, T);
		double chosen = L->E * (1.0 - pow(1.0 - (double)L->k / L->E, T));   /* expected */
		print_message("%s: T %d: FP8 %.3f ms (%.0f GB/s of the chosen experts), bf16 %.3f ms: "
			      "%.2fx\n", L->name, T, f8, chosen * expert / (f8 * 1e6), b16, b16 / f8);
	}
	free(ref);
	free(x);
}

static void one_layer(const char *name, int H, int E, int k, int I, recipe r)
{
	layer L;
	layer_init(&L, name, H, E, k, I, r);
	check_layer(&L);
	layer_free(&L);
}

// ---------------------------------------------------------------------------------------
// tests

static const recipe hub = {.br = 128, .bc = 128};

static void test_tiny(void **state)
{
	(void)state;
	one_layer("tiny FP8", 144, 8, 2, 48, hub);
}

static void test_small(void **state)
{
	(void)state;
	one_layer("small FP8", 272, 16, 4, 208, hub);
}

/* blocks of 48 rows (not a power of two; k-tiles of 64 and 32 straddle them) by 32 columns */
static void test_odd_blocks(void **state)
{
	(void)state;
	one_layer("tiny FP8, 48 x 32 blocks", 144, 8, 2, 48, (recipe){.br = 48, .bc = 32});
}

/* gate_up scales of 128 to 512: half of them take the two-multiply path */
static void test_big_scales(void **state)
{
	(void)state;
	one_layer("tiny FP8, scales 128-512", 144, 8, 2, 48,
		  (recipe){.br = 128, .bc = 128, .gu_amax = 448.0f * 128.0f});
}

static void test_down_bf16(void **state)
{
	(void)state;
	one_layer("small FP8 gate_up, bf16 down", 272, 16, 4, 208,
		  (recipe){.br = 128, .bc = 128, .down_bf16 = true});
}

static void test_30b(void **state)
{
	(void)state;
	one_layer("30B-A3B FP8", 2048, 128, 8, 768,
		  (recipe){.br = 128, .bc = 128, .f32_reference = true});
}

static void test_235b(void **state)
{
	(void)state;
	one_layer("235B-A22B FP8", 4096, 128, 8, 1536,
		  (recipe){.br = 128, .bc = 128, .f32_reference = true});
}

/* FP8 blocks the kernel cannot take are refused */
static void test_args(void **state)
{
	(void)state;
	layer L;
	layer_init(&L, "args", 64, 4, 2, 32, hub);
	uint16_t *x = moe_check_random_bf16(8 * 64, seed, 10, 1.0f, n_threads);
	assert_non_null(x);
	L.d_x = to_device(x, 8 * 64 * 2);
	free(x);
	qw_err err = {0};
	qw_cuda_moe_args a = args_of(&L, false, 0, 8);
	assert_int_equal(qw_cuda_moe(&a, L.ws, L.ws_bytes, L.stream, &err), QW_OK);
	a.gate_up_scales.cols = 24;   /* not a multiple of 16 */
	assert_int_equal(qw_cuda_moe(&a, L.ws, L.ws_bytes, L.stream, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	a = args_of(&L, false, 0, 8);
	a.down_scales.rows = 0;
	assert_int_equal(qw_cuda_moe(&a, L.ws, L.ws_bytes, L.stream, &err), QW_E_ARG);
	a = args_of(&L, false, 0, 8);
	a.down_scales.s = (const float *)((const char *)a.down_scales.s + 2);
	assert_int_equal(qw_cuda_moe(&a, L.ws, L.ws_bytes, L.stream, &err), QW_E_ARG);
	CUDA_OK(cudaStreamSynchronize(L.stream));
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
		cmocka_unit_test(test_small),
		cmocka_unit_test(test_odd_blocks),
		cmocka_unit_test(test_big_scales),
		cmocka_unit_test(test_down_bf16),
		cmocka_unit_test(test_30b),
		cmocka_unit_test(test_235b),
	};
	return cmocka_run_group_tests_name("cuda-moe-fp8", tests, setup, NULL);
}
