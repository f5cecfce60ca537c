/* test_cuda_experts.c - per-expert MoE layers on the CUDA backend as a stage loads them: the
 * layer's parts (Qwen3-MoE text checkpoints: gate_proj, up_proj (I, H), down_proj (H, I)
 * per expert, [out, in]) uploaded, then the backend's prepare_experts (kernels/cuda/
 * experts.cu) moves them into the fused layout the MoE kernels read, and the moe op runs on
 * what it made.  Part of `scons test-gpu`; the FP8 cases need the FP8 upload (issue 16's
 * contract: FP8 parts stay FP8 on the GPU).
 *
 * Layers: FP8 parts with a fresh random fp32 scale per 128 x 128 block (moe_check_fp8) at a
 * tiny shape with partial blocks everywhere (H 144, E 8, k 2, I 48: the fused blocks are 16
 * columns wide, as gcd(128, 48)), a small one (H 272, E 16, k 4, I 208), the 30B-A3B layer
 * (H 2048, E 128, k 8, I 768) and the 235B-A22B layer (H 4096, E 128, k 8, I 1536); FP8
 * parts whose blocks differ (up's 64 rows: gate_up moves as bf16, dequantised, down as
 * FP8); bf16 parts.  Each at T = 1, 8, 64 and 512, held to (moe_check_runs): the CPU
 * reference on the per-expert parts themselves (the FP8 tensors on the small layers, their
 * fp32 values on the big ones) within test_cuda_moe's tolerance, FP8 parts within 1.5
 * times its absolute term (moe_check.h and test_cuda_moe_fp8.c say why); the bits of the bf16 kernel on the twin, the parts dequantised to
 * bf16 and laid out fused on the host; determinism and batch invariance.  And: what
 * prepare_experts made (dtype, blocks), the parts' memory freed (their data NULL; on the
 * big layers the device's free memory after prepare_experts within 5% of the fused bytes of
 * what it was before: not the whole layer less); the moe op allocating nothing (the free
 * memory the same across a layer's first MoE calls, after another layer of its shape warmed
 * the scratch and kernels: the old re-layout on first use made its copy there); and what is
 * refused (a layer not prepared, parts prepared twice, a tensor that is not the backend's).
 * The seed is printed; QW_TEST_SEED=n repeats a run.
 */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/kernels.h"
#include "loader/clock.h"
#include "loader/dtype.h"
#include "tests/gpu/cuda_ok.h"
#include "tests/gpu/moe_check.h"

static uint64_t seed;
static int n_threads;

static const int sizes[] = {1, 8, 64, 512};
#define N_SIZES 4
#define TMAX 512

typedef struct recipe {
	bool fp8;            /* FP8 parts (128 x 128 blocks), else bf16 */
	int up_rows;         /* FP8: up's block rows when not 128 */
	bool f32_reference;  /* the reference reads the parts' fp32 values */
	bool no_checks;      /* parts and backend only (no reference, no twin) */
} recipe;

/* A per-expert layer: on the host, on the backend, and its twin. */
typedef struct layer {
	const char *name;
	int H, E, k, I;
	recipe r;
	uint16_t *router;              /* (E, H) */
	moe_check_fp8 p8[3];           /* FP8 parts: gate, up (E, I, H); down (E, H, I) */
	uint16_t *p16[3];              /* bf16 parts, or the FP8 ones dequantised */
	float *p32[3];                 /* f32_reference: the FP8 parts' values */
	qw_tensor *host[3], *scale[3]; /* (E,) views of the parts as the checkpoint has them */
	qw_tensor *ref[3];             /* (E,) the reference's views */
	const qw_tensor **ref_p[3];
	qw_tensor t_router;
	qw_moe_weights w;              /* the reference's */
	/* the backend's */
	qw_backend *be;
	const qw_tensor *b_router, **b_part[3], *b_gu, *b_dn;
	qw_act x, out;                 /* (TMAX, H) */
	float *out_host;
	/* the twin: qw_cuda_moe on the fused bf16 of p16 */
	void *d_router, *d_gu16, *d_dn16, *ws;
	uint16_t *d_out;
	size_t ws_bytes;
	cudaStream_t stream;
} layer;

static int64_t rows_of(const layer *L, int p)
{
	return p < 2 ? L->I : L->H;
}

static int64_t cols_of(const layer *L, int p)
{
	return p < 2 ? L->H : L->I;
}

static void *to_device(const void *host, size_t bytes)
{
	void *d = moe_check_to_device(host, bytes);
	assert_non_null(d);
	return d;
}

/* The host parts (and, for checks, their values and the twin's fused weights). */
static void make_parts(layer *L)
{
	int E = L->E;
	static const float amax_num[3] = {3.0f, 3.0f, 5.0f};
	for (int p = 0; p < 3; p++) {
		int64_t rows = rows_of(L, p), cols = cols_of(L, p);
		float amax = amax_num[p] / sqrtf((float)cols);
		if (L->r.fp8) {
			int br = p == 1 && L->r.up_rows ? L->r.up_rows : 128;
			assert_true(moe_check_fp8_make(&L->p8[p], E, rows, cols, br, 128, amax, seed,
						       2 + 2 * (uint64_t)p, n_threads));
			if (!L->r.no_checks) {
				L->p16[p] = moe_check_fp8_bf16(&L->p8[p], n_threads);
				assert_non_null(L->p16[p]);
			}
			if (L->r.f32_reference) {
				L->p32[p] = moe_check_fp8_f32(&L->p8[p], n_threads);
				assert_non_null(L->p32[p]);
			}
		} else {
			L->p16[p] = moe_check_random_bf16((size_t)(E * rows * cols), seed,
							  2 + 2 * (uint64_t)p, amax, n_threads);
			assert_non_null(L->p16[p]);
		}
		L->host[p] = calloc((size_t)E, sizeof(qw_tensor));
		L->scale[p] = calloc((size_t)E, sizeof(qw_tensor));
		L->ref[p] = calloc((size_t)E, sizeof(qw_tensor));
		L->ref_p[p] = calloc((size_t)E, sizeof(qw_tensor *));
		L->b_part[p] = calloc((size_t)E, sizeof(qw_tensor *));
		assert_true(L->host[p] && L->scale[p] && L->ref[p] && L->ref_p[p] && L->b_part[p]);
		size_t per = (size_t)(rows * cols);
		for (int e = 0; e < E; e++) {
			L->host[p][e] = L->r.fp8 ? moe_check_fp8_tensor(&L->p8[p], e, 2, &L->scale[p][e])
						 : moe_check_tensor(L->p16[p] + e * per, 2, rows, cols,
								    0);
			L->ref[p][e] = L->r.f32_reference
					       ? moe_check_tensor_of(L->p32[p] + e * per, QW_DT_F32, 2,
								     rows, cols, 0)
					       : L->host[p][e];
			L->ref_p[p][e] = &L->ref[p][e];
		}
	}
}

/* The twin's fused bf16 weights on the device, from the bf16 (or dequantised) parts. */
static void make_twin(layer *L)
{
	int64_t E = L->E, H = L->H, I = L->I;
	size_t ngu = (size_t)(E * H * 2 * I), nd = (size_t)(E * I * H);
	uint16_t *gu = malloc(ngu * 2), *dn = malloc(nd * 2);
	assert_non_null(gu);
	assert_non_null(dn);
	moe_check_fuse(gu, L->p16[0], E, I, H, 2 * I, 0, n_threads);
	moe_check_fuse(gu, L->p16[1], E, I, H, 2 * I, I, n_threads);
	moe_check_fuse(dn, L->p16[2], E, H, I, H, 0, n_threads);
	L->d_gu16 = to_device(gu, ngu * 2);
	L->d_dn16 = to_device(dn, nd * 2);
	free(gu);
	free(dn);
	L->ws_bytes = qw_cuda_moe_ws_bytes(TMAX, L->H, L->E, L->k, L->I);
	CUDA_OK(cudaMalloc(&L->ws, L->ws_bytes));
	CUDA_OK(cudaMalloc((void **)&L->d_out, (size_t)TMAX * (size_t)L->H * 2));
	CUDA_OK(cudaStreamCreate(&L->stream));
}

/* The parts uploaded to be (not yet prepared). */
static void upload_parts(layer *L)
{
	qw_err err = {0};
	if (L->be->upload(L->be, &L->t_router, &L->b_router, &err) != QW_OK)
		fail_msg("upload %s: %s", L->name, err.msg);
	for (int p = 0; p < 3; p++)
		for (int e = 0; e < L->E; e++)
			if (L->be->upload(L->be, &L->host[p][e], &L->b_part[p][e], &err) != QW_OK)
				fail_msg("upload %s: %s", L->name, err.msg);
}

/* The layer's per-expert weights on the backend, as the forward pass gives them. */
static qw_moe_weights backend_weights(const layer *L)
{
	return (qw_moe_weights){.router = L->b_router, .gate = L->b_part[0], .up = L->b_part[1],
				.expert_down = L->b_part[2], .n_experts = L->E, .top_k = L->k,
				.inter = L->I, .renormalize = 1};
}

static void prepare(layer *L)
{
	qw_moe_weights w = backend_weights(L);
	qw_err err = {0};
	if (L->be->prepare_experts(L->be, &w, &L->b_gu, &L->b_dn, &err) != QW_OK)
		fail_msg("prepare_experts %s: %s", L->name, err.msg);
}

static void layer_init(layer *L, qw_backend *be, const char *name, int H, int E, int k, int I,
		       recipe r)
{
	double t0 = qw_seconds_now();
	*L = (layer){.name = name, .H = H, .E = E, .k = k, .I = I, .r = r, .be = be};
	L->router = moe_check_random_bf16((size_t)E * H, seed, 1, 6.0f / sqrtf((float)H),
					  n_threads);
	assert_non_null(L->router);
	L->t_router = moe_check_tensor(L->router, 2, E, H, 0);
	make_parts(L);
	L->w = (qw_moe_weights){.router = &L->t_router, .gate = L->ref_p[0], .up = L->ref_p[1],
				.expert_down = L->ref_p[2], .n_experts = E, .top_k = k, .inter = I,
				.renormalize = 1};
	if (!r.no_checks) {
		make_twin(L);
		L->d_router = to_device(L->router, (size_t)E * H * 2);
	}
	qw_err err = {0};
	assert_int_equal(be->act_alloc(be, TMAX, H, &L->x, &err), QW_OK);
	assert_int_equal(be->act_alloc(be, TMAX, H, &L->out, &err), QW_OK);
	L->out_host = malloc((size_t)TMAX * H * sizeof(float));
	assert_non_null(L->out_host);
	uint16_t *x = moe_check_random_bf16((size_t)TMAX * H, seed, 10, 1.0f, n_threads);
	assert_non_null(x);
	for (size_t i = 0; i < (size_t)TMAX * H; i++)   /* the inputs, as floats for act_write */
		L->out_host[i] = moe_check_bf16(x[i]);
	assert_int_equal(be->act_write(be, &L->x, L->out_host, &err), QW_OK);
	free(x);
	print_message("%s: H %d, E %d, top-%d, I %d, %s parts made in %.1f s\n", name, H, E, k, I,
		      r.fp8 ? "FP8" : "bf16", qw_seconds_now() - t0);
}

static void layer_free(layer *L)
{
	free(L->router);
	for (int p = 0; p < 3; p++) {
		if (L->r.fp8)
			moe_check_fp8_free(&L->p8[p]);
		free(L->p16[p]);
		free(L->p32[p]);
		free(L->host[p]);
		free(L->scale[p]);
		free(L->ref[p]);
		free(L->ref_p[p]);
		free(L->b_part[p]);
	}
	L->be->act_free(L->be, &L->x);
	L->be->act_free(L->be, &L->out);
	free(L->out_host);
	void *dev[] = {L->d_router, L->d_gu16, L->d_dn16, L->ws, L->d_out};
	for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
		cudaFree(dev[i]);
	if (L->stream)
		cudaStreamDestroy(L->stream);
}

/* Tokens [row0, row0 + T) through the backend's moe op (on what prepare_experts made). */
static bool run_backend(void *ctx, int row0, int T, uint16_t *out)
{
	layer *L = ctx;
	qw_backend *be = L->be;
	qw_act x = qw_act_rows(&L->x, row0, T, 2);
	qw_moe_weights w = backend_weights(L);
	w.gate_up = L->b_gu;
	w.down = L->b_dn;
	qw_err err = {0};
	CUDA_OK(cudaMemset(L->out.data, 0xff, (size_t)TMAX * (size_t)L->H * 2));
	if (be->moe(be, &L->out, &x, &w, &err) != QW_OK ||
	    be->act_read(be, &L->out, L->out_host, &err) != QW_OK) {
		print_message("%s: the moe op (T %d): %s\n", L->name, T, err.msg);
		return false;
	}
	for (size_t i = 0; i < (size_t)T * (size_t)L->H; i++)
		out[i] = qw_f32_to_bf16(L->out_host[i]);   /* bf16 values: exact */
	return true;
}

/* The same tokens through qw_cuda_moe on the twin's fused bf16 weights. */
static bool run_twin(void *ctx, int row0, int T, uint16_t *out)
{
	layer *L = ctx;
	size_t n = (size_t)T * (size_t)L->H;
	CUDA_OK(cudaMemsetAsync(L->d_out, 0xff, n * 2, L->stream));
	qw_cuda_moe_args a = {.T = T, .H = L->H, .E = L->E, .top_k = L->k, .I = L->I,
			      .renormalize = true,
			      .x = (const uint16_t *)L->x.data + (size_t)row0 * (size_t)L->H,
			      .router = L->d_router, .gate_up = L->d_gu16, .down = L->d_dn16,
			      .out = L->d_out};
	qw_err err = {0};
	if (qw_cuda_moe(&a, L->ws, L->ws_bytes, L->stream, &err) != QW_OK) {
		print_message("%s: the twin (T %d): %s\n", L->name, T, err.msg);
		return false;
	}
	CUDA_OK(cudaStreamSynchronize(L->stream));
	CUDA_OK(cudaMemcpy(out, L->d_out, n * 2, cudaMemcpyDeviceToHost));
	return true;
}

static size_t device_free(void)
{
	size_t free_b = 0, total = 0;
	CUDA_OK(cudaDeviceSynchronize());
	CUDA_OK(cudaMemGetInfo(&free_b, &total));
	return free_b;
}

/* Uploads, prepares and checks what prepare_experts made (dtypes, blocks, the parts
 * moved, and on big layers the device memory it left), then every run (moe_check_runs). */
static void check_layer(layer *L, qw_dtype gu_dtype, qw_dtype dn_dtype, int gu_cols)
{
	qw_err err = {0};
	upload_parts(L);
	size_t before = device_free();
	prepare(L);
	size_t after = device_free();
	double fused = (double)L->E * 3.0 * L->H * L->I * (L->b_gu->dtype == QW_DT_BF16 ? 2 : 1);
	print_message("%s: prepare_experts: %s / %s fused (%d x %d, %d x %d blocks); free device "
		      "memory %+.1f MB\n", L->name, qw_dtype_name(L->b_gu->dtype),
		      qw_dtype_name(L->b_dn->dtype), L->b_gu->block[0], L->b_gu->block[1],
		      L->b_dn->block[0], L->b_dn->block[1],
		      ((double)after - (double)before) / 1048576.0);
	assert_int_equal(L->b_gu->dtype, gu_dtype);
	assert_int_equal(L->b_dn->dtype, dn_dtype);
	if (gu_dtype == QW_DT_F8_E4M3) {
		assert_int_equal(L->b_gu->block[0], 128);
		assert_int_equal(L->b_gu->block[1], gu_cols);
	}
	if (dn_dtype == QW_DT_F8_E4M3) {
		assert_int_equal(L->b_dn->block[0], 128);
		assert_int_equal(L->b_dn->block[1], 128);
	}
	for (int p = 0; p < 3; p++)
		for (int e = 0; e < L->E; e++)
			assert_null(L->b_part[p][e]->data);   /* moved: their memory is gone */
	if (fused > 256e6 && (double)after + 0.05 * fused < (double)before)
		fail_msg("%s: %.0f MB less free device memory after prepare_experts (the layer's "
			 "fused experts are %.0f MB): the parts' memory was not freed", L->name,
			 ((double)before - (double)after) / 1048576.0, fused / 1048576.0);
	if (L->r.no_checks)
		return;

	size_t n = (size_t)TMAX * (size_t)L->H;
	uint16_t *x = moe_check_random_bf16(n, seed, 10, 1.0f, n_threads);   /* layer_init's */
	float *ref = malloc(n * sizeof *ref);
	assert_true(x && ref);
	double t0 = qw_seconds_now();
	if (moe_check_reference(&L->w, L->H, x, TMAX, n_threads, ref, &err) != QW_OK)
		fail_msg("cpu moe: %s", err.msg);
	print_message("%s: the CPU reference for %d tokens took %.1f s on %d threads\n", L->name,
		      TMAX, qw_seconds_now() - t0, n_threads);
	if (!moe_check_runs(L->name, L->H, sizes, N_SIZES, ref,
			    L->r.fp8 ? MOE_CHECK_ATOL_FP8 : MOE_CHECK_ATOL_BF16, run_backend, L,
			    run_twin, L))
		fail_msg("%s: see above (seed %llu)", L->name, (unsigned long long)seed);
	free(x);
	free(ref);
}

static qw_backend *backend(void)
{
	qw_backend *be = NULL;
	qw_err err = {0};
	if (qw_cuda_backend_create(0, &be, &err) != QW_OK)
		fail_msg("cuda backend: %s", err.msg);
	return be;
}

static void one_layer(const char *name, int H, int E, int k, int I, recipe r, qw_dtype gu,
		      qw_dtype dn, int gu_cols)
{
	qw_backend *be = backend();
	layer L;
	layer_init(&L, be, name, H, E, k, I, r);
	check_layer(&L, gu, dn, gu_cols);
	layer_free(&L);
	be->destroy(be);
}

// ---------------------------------------------------------------------------------------
// tests

static const recipe fp8 = {.fp8 = true};
static const recipe fp8_big = {.fp8 = true, .f32_reference = true};

static void test_fp8_tiny(void **state)
{
	(void)state;
	one_layer("tiny, FP8 parts", 144, 8, 2, 48, fp8, QW_DT_F8_E4M3, QW_DT_F8_E4M3, 16);
}

static void test_fp8_small(void **state)
{
	(void)state;
	one_layer("small, FP8 parts", 272, 16, 4, 208, fp8, QW_DT_F8_E4M3, QW_DT_F8_E4M3, 16);
}

/* up's blocks of 64 rows: gate and up differ, so gate_up moves as bf16 (down as FP8) */
static void test_fp8_blocks_differ(void **state)
{
	(void)state;
	one_layer("tiny, FP8 parts, up's blocks 64 x 128", 144, 8, 2, 48,
		  (recipe){.fp8 = true, .up_rows = 64}, QW_DT_BF16, QW_DT_F8_E4M3, 0);
}

static void test_bf16_tiny(void **state)
{
	(void)state;
	one_layer("tiny, bf16 parts", 144, 8, 2, 48, (recipe){0}, QW_DT_BF16, QW_DT_BF16, 0);
}

static void test_fp8_30b(void **state)
{
	(void)state;
	one_layer("30B-A3B, FP8 parts", 2048, 128, 8, 768, fp8_big, QW_DT_F8_E4M3, QW_DT_F8_E4M3,
		  128);
}

static void test_fp8_235b(void **state)
{
	(void)state;
	one_layer("235B-A22B, FP8 parts", 4096, 128, 8, 1536, fp8_big, QW_DT_F8_E4M3,
		  QW_DT_F8_E4M3, 128);
}

/* A prepared layer's first MoE calls allocate nothing: another layer of the same shape
 * first grows the op's scratch and loads its kernels, then the free device memory is the
 * same after the layer's own first calls as before them. */
static void test_no_allocation(void **state)
{
	(void)state;
	qw_backend *be = backend();
	recipe r = {.fp8 = true, .no_checks = true};
	layer A, B;
	layer_init(&A, be, "30B-A3B, A", 2048, 128, 8, 768, r);
	layer_init(&B, be, "30B-A3B, B", 2048, 128, 8, 768, r);
	check_layer(&A, QW_DT_F8_E4M3, QW_DT_F8_E4M3, 128);
	check_layer(&B, QW_DT_F8_E4M3, QW_DT_F8_E4M3, 128);
	uint16_t *out = malloc((size_t)TMAX * 2048 * 2);
	assert_non_null(out);
	static const int calls[] = {TMAX, 64, 8, 1};   /* both routing paths, M and S tiles */
	for (int i = 0; i < 4; i++)
		assert_true(run_backend(&B, 0, calls[i], out));
	size_t before = device_free();
	for (int i = 3; i >= 0; i--)
		assert_true(run_backend(&A, 0, calls[i], out));
	size_t after = device_free();
	print_message("free device memory across the first MoE calls of a prepared layer: %zu -> "
		      "%zu bytes\n", before, after);
	assert_int_equal(after, before);
	free(out);
	layer_free(&A);
	layer_free(&B);
	be->destroy(be);
}

/* What prepare_experts and the moe op refuse, naming it. */
static void test_refusals(void **state)
{
	(void)state;
	qw_backend *be = backend();
	layer L;
	layer_init(&L, be, "tiny, refusals", 144, 8, 2, 48, (recipe){.no_checks = true});
	upload_parts(&L);
	qw_err err = {0};
	qw_moe_weights w = backend_weights(&L);
	assert_int_equal(be->moe(be, &L.out, &L.x, &w, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	assert_non_null(strstr(err.msg, "prepare_experts"));
	w.gate = (const qw_tensor *const *)L.ref_p[0];   /* host tensors: not the backend's */
	assert_int_equal(be->prepare_experts(be, &w, &L.b_gu, &L.b_dn, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	for (int e = 0; e < L.E; e++)   /* nothing moved */
		assert_non_null(L.b_part[1][e]->data);
	prepare(&L);
	w = backend_weights(&L);
	const qw_tensor *gu, *dn;
	assert_int_equal(be->prepare_experts(be, &w, &gu, &dn, &err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	assert_non_null(strstr(err.msg, "moved"));
	layer_free(&L);
	be->destroy(be);
}

static int setup(void **state)
{
	(void)state;
	return moe_check_setup(&seed, &n_threads);
}

int main(void)
{
	/* every kernel loaded with the context: the allocation test counts no module's memory */
	setenv("CUDA_MODULE_LOADING", "EAGER", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_bf16_tiny),
		cmocka_unit_test(test_fp8_tiny),
		cmocka_unit_test(test_fp8_small),
		cmocka_unit_test(test_fp8_blocks_differ),
		cmocka_unit_test(test_no_allocation),
		cmocka_unit_test(test_fp8_30b),
		cmocka_unit_test(test_fp8_235b),
	};
	return cmocka_run_group_tests_name("cuda-experts", tests, setup, NULL);
}
