/* test_cuda_ops.c - every CUDA op of the backend's own (elementwise.cu, the GEMMs, uploads)
 * against the CPU reference, on fresh random inputs at several shapes, the real models'
 * among them.
 *
 * Inputs are drawn in fp32 and rounded to bf16, so both backends start from the same values;
 * outputs are poisoned (NaN) before each run.  An output value passes when |gpu - cpu| <=
 * atol + rtol |cpu|: the GPU stores bf16 (a relative step of 2^-8) after computing in fp32,
 * so rtol is 1/64 (two bf16 steps of margin), and atol covers cancellation near zero in
 * sums (GEMMs: 1/64 of the output's RMS; elementwise: 1e-3).  The seed is printed and may
 * be set with QW_TEST_SEED. */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "loader/dtype.h"

static qw_backend *cpu, *gpu;
static uint64_t rng;

static int setup(void **state)
{
	qw_err err = {0};
	const char *s = getenv("QW_TEST_SEED");
	rng = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
	printf("# seed %llu (QW_TEST_SEED)\n", (unsigned long long)rng);
	if (qw_cpu_backend_create(&cpu, &err) || qw_cuda_backend_create(0, &gpu, &err)) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	cpu->destroy(cpu);
	gpu->destroy(gpu);
	return 0;
}

static double normal(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	double u1 = ((double)(rng >> 11) + 0.5) * 0x1.0p-53;
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	double u2 = (double)(rng >> 11) * 0x1.0p-53;
	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* n bf16-representable values ~ N(mean, std^2). */
static float *randv(size_t n, double mean, double std)
{
	float *v = malloc(n * sizeof *v + 4);
	for (size_t i = 0; i < n; i++)
		v[i] = qw_bf16_to_f32(qw_f32_to_bf16((float)(mean + std * normal())));
	return v;
}

/* An activation of the same values on both backends. */
typedef struct pair {
	qw_act c, g;
} pair;

static pair act2(int rows, int cols, const float *v)
{
	pair p;
	qw_err err = {0};
	assert_int_equal(cpu->act_alloc(cpu, rows, cols, &p.c, &err), QW_OK);
	assert_int_equal(gpu->act_alloc(gpu, rows, cols, &p.g, &err), QW_OK);
	if (v) {
		assert_int_equal(cpu->act_write(cpu, &p.c, v, &err), QW_OK);
		assert_int_equal(gpu->act_write(gpu, &p.g, v, &err), QW_OK);
	} else {
		cudaMemset(p.g.data, 0xff, (size_t)rows * (size_t)cols * 2);   /* NaN */
	}
	return p;
}

static void free2(pair *p)
{
	cpu->act_free(cpu, &p->c);
	gpu->act_free(gpu, &p->g);
}

/* A host bf16 tensor of v, and its device copy. */
typedef struct wpair {
	qw_tensor host;
	const qw_tensor *dev;
	uint16_t *bits;
} wpair;

static wpair weight(int ndim, const int64_t *shape, const float *v)
{
	wpair w = {0};
	uint64_t n = 1;
	for (int i = 0; i < ndim; i++)
		n *= (uint64_t)shape[i];
	w.bits = malloc(n * 2 + 2);
	for (uint64_t i = 0; i < n; i++)
		w.bits[i] = qw_f32_to_bf16(v[i]);
	w.host.dtype = QW_DT_BF16;
	w.host.ndim = ndim;
	memcpy(w.host.shape, shape, (size_t)ndim * sizeof *shape);
	w.host.numel = n;
	w.host.nbytes = n * 2;
	w.host.data = w.bits;
	w.host.name = (char *)"test.weight";
	qw_err err = {0};
	assert_int_equal(gpu->upload(gpu, &w.host, &w.dev, &err), QW_OK);
	return w;
}

/* Compares the two outputs; fails with the first mismatches and the largest error. */
static void compare(const char *what, pair *p, double rtol, double atol_rms_share, double atol)
{
	size_t n = (size_t)p->c.rows * (size_t)p->c.cols;
	assert_int_equal(p->c.rows, p->g.rows);
	float *a = malloc(n * sizeof *a + 4), *b = malloc(n * sizeof *b + 4);
	qw_err err = {0};
	assert_int_equal(cpu->act_read(cpu, &p->c, a, &err), QW_OK);
	if (gpu->act_read(gpu, &p->g, b, &err) != QW_OK)
		fail_msg("%s: %s", what, err.msg);
	double ss = 0.0, max_err = 0.0, se = 0.0;
	for (size_t i = 0; i < n; i++)
		ss += (double)a[i] * a[i];
	double rms = sqrt(ss / (double)(n ? n : 1)), tol_abs = atol + atol_rms_share * rms;
	int bad = 0;
	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)b[i] - (double)a[i]);
		se += e * e;
		if (!(e <= tol_abs + rtol * fabs(a[i]))) {
			if (bad < 10)
				fprintf(stderr, "%s: [%zu] (row %zu) cpu %.6g gpu %.6g\n", what, i,
					i / (size_t)p->c.cols, a[i], b[i]);
			bad++;
		}
		if (e > max_err || isnan(e))
			max_err = isnan(e) ? INFINITY : e;
	}
	printf("# %-28s %7zu values, max |err| %.3g, nmse %.3g\n", what, n, max_err,
	       ss > 0 ? se / ss : se);
	free(a);
	free(b);
	if (bad)
		fail_msg("%s: %d of %zu values outside tolerance", what, bad, n);
}

// ---------------------------------------------------------------------------------------

static void test_matmul(void **state)
{
	/* (T, K, N): the tiny models' projections, the 235B's q and o projections and MLP, a
	 * vocabulary-sized lm_head; T <= 4 takes the few-rows kernel where it wins (K a multiple
	 * of 8; kernels.h), each T of it is here, with the 30B's fused q/k/v and o projections
	 * among them; K 100, T 5 and more, and large weights at T > 1 take cuBLAS */
	static const int shapes[][3] = {{1, 128, 128}, {7, 128, 48}, {300, 128, 256},
					{1, 4096, 8192}, {64, 4096, 512}, {33, 8192, 4096},
					{4, 2048, 151936}, {2, 2048, 5120}, {3, 4096, 2048},
					{5, 200, 40}, {6, 2048, 5120}, {8, 2048, 768},
					{8, 768, 2048}, {2, 100, 64}, {9, 2048, 5120}};
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		int T = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
		float *x = randv((size_t)T * K, 0, 1), *w = randv((size_t)N * K, 0, 1 / sqrt(K));
		float *b = randv((size_t)N, 0, 0.02);
		int64_t wshape[] = {N, K}, bshape[] = {N};
		wpair W = weight(2, wshape, w), B = weight(1, bshape, b);
		pair X = act2(T, K, x), O = act2(T, N, NULL);
		qw_err err = {0};
		bool bias = s % 2 == 1;
		assert_int_equal(cpu->matmul(cpu, &O.c, &X.c, &W.host, bias ? &B.host : NULL, &err), QW_OK);
		if (gpu->matmul(gpu, &O.g, &X.g, W.dev, bias ? B.dev : NULL, &err) != QW_OK)
			fail_msg("%s", err.msg);
		char what[64];
		snprintf(what, sizeof what, "matmul %dx%dx%d%s", T, K, N, bias ? "+bias" : "");
		compare(what, &O, 1.0 / 64, 1.0 / 64, 0);
		free2(&X);
		free2(&O);
		free(x);
		free(w);
		free(b);
		free(W.bits);
		free(B.bits);
	}
}

/* The few-rows kernel (T <= 4 on this weight) sums each token's products in an order fixed
 * by K alone: a token's outputs have the same bits alone, with others, and in the whole
 * batch. */
static void test_matmul_few_rows_alone(void **state)
{
	(void)state;
	const int T = 4, K = 2048, N = 5120;
	float *x = randv((size_t)T * K, 0, 1), *w = randv((size_t)N * K, 0, 1 / sqrt(K));
	int64_t wshape[] = {N, K};
	wpair W = weight(2, wshape, w);
	pair X = act2(T, K, x), O = act2(T, N, NULL);
	qw_err err = {0};
	uint16_t *all = malloc((size_t)T * N * 2), *part = malloc((size_t)T * N * 2);
	/* the backend's stream does not wait for the default one, nor it for the backend's */
	if (gpu->matmul(gpu, &O.g, &X.g, W.dev, NULL, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
	assert_int_equal(cudaMemcpy(all, O.g.data, (size_t)T * N * 2, cudaMemcpyDeviceToHost),
			 cudaSuccess);
	for (int t0 = 0; t0 < T; t0++)
		for (int n = 1; t0 + n <= T; n += 2) {   /* rows [t0, t0 + n): 1 and 3 tokens */
			qw_act xs = qw_act_rows(&X.g, t0, n, 2), os = qw_act_rows(&O.g, 0, n, 2);
			assert_int_equal(cudaMemset(os.data, 0xff, (size_t)n * N * 2), cudaSuccess);
			assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
			if (gpu->matmul(gpu, &os, &xs, W.dev, NULL, &err) != QW_OK)
				fail_msg("%s", err.msg);
			assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
			assert_int_equal(cudaMemcpy(part, os.data, (size_t)n * N * 2,
						    cudaMemcpyDeviceToHost), cudaSuccess);
			if (memcmp(part, all + (size_t)t0 * N, (size_t)n * N * 2) != 0)
				fail_msg("rows %d..%d alone differ from the whole batch's", t0,
					 t0 + n - 1);
		}
	free(all);
	free(part);
	free2(&X);
	free2(&O);
	free(x);
	free(w);
	free(W.bits);
}

static void test_norms(void **state)
{
	static const int shapes[][2] = {{1, 128}, {37, 128}, {5, 4096}, {300, 2048}};
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		int T = shapes[s][0], H = shapes[s][1];
		float *x = randv((size_t)T * H, 0.5, 3), *w = randv((size_t)H, 1, 0.1);
		float *b = randv((size_t)H, 0, 0.1);
		int64_t shape[] = {H};
		wpair W = weight(1, shape, w), B = weight(1, shape, b);
		pair X = act2(T, H, x), O = act2(T, H, NULL);
		qw_err err = {0};
		assert_int_equal(cpu->rmsnorm(cpu, &O.c, &X.c, &W.host, 1e-6f, &err), QW_OK);
		assert_int_equal(gpu->rmsnorm(gpu, &O.g, &X.g, W.dev, 1e-6f, &err), QW_OK);
		compare("rmsnorm", &O, 1.0 / 64, 0, 1e-3);
		assert_int_equal(cpu->layernorm(cpu, &O.c, &X.c, &W.host, &B.host, 1e-6f, &err), QW_OK);
		assert_int_equal(gpu->layernorm(gpu, &O.g, &X.g, W.dev, B.dev, 1e-6f, &err), QW_OK);
		compare("layernorm", &O, 1.0 / 64, 0, 1e-3);
		/* per head: 128-wide heads (the 235B's), or 32 (the tiny models') */
		int D = H >= 256 ? 128 : 32;
		int64_t dshape[] = {D};
		wpair HW = weight(1, dshape, w);
		assert_int_equal(cpu->head_rmsnorm(cpu, &X.c, &HW.host, H / D, 1e-6f, &err), QW_OK);
		assert_int_equal(gpu->head_rmsnorm(gpu, &X.g, HW.dev, H / D, 1e-6f, &err), QW_OK);
		compare("head_rmsnorm", &X, 1.0 / 64, 0, 1e-3);
		free2(&X);
		free2(&O);
		free(x);
		free(w);
		free(b);
		free(W.bits);
		free(B.bits);
		free(HW.bits);
	}
}

static void test_rotary(void **state)
{
	/* (T, heads, D, sections): the 235B's interleaved [24, 20, 20], the tiny [6, 5, 5] */
	static const int cases[][6] = {{1, 64, 128, 24, 20, 20}, {70, 4, 128, 24, 20, 20},
				       {9, 4, 32, 6, 5, 5}};
	for (size_t s = 0; s < sizeof cases / sizeof *cases; s++) {
		int T = cases[s][0], Hn = cases[s][1], D = cases[s][2];
		int sec[3] = {cases[s][3], cases[s][4], cases[s][5]};
		float *x = randv((size_t)T * Hn * D, 0, 1);
		int32_t *pos = malloc((size_t)T * 3 * sizeof *pos);
		for (int i = 0; i < 3 * T; i++)
			pos[i] = (int32_t)((i * 7919) % 200000);   /* positions up to 200K */
		pair X = act2(T, Hn * D, x);
		qw_err err = {0};
		assert_int_equal(cpu->rope(cpu, &X.c, pos, Hn, D, sec, 5e6f, &err), QW_OK);
		assert_int_equal(gpu->rope(gpu, &X.g, pos, Hn, D, sec, 5e6f, &err), QW_OK);
		/* an angle of 2e5 rad carries fp32 argument error ~1e-2 rad in both: a looser atol */
		compare("rope", &X, 1.0 / 64, 0, 3e-2);
		free2(&X);
		free(x);
		int32_t *rc = malloc((size_t)T * 2 * sizeof *rc);
		for (int i = 0; i < 2 * T; i++)
			rc[i] = i % 48;
		x = randv((size_t)T * Hn * D, 0, 1);
		X = act2(T, Hn * D, x);
		assert_int_equal(cpu->rope_2d(cpu, &X.c, rc, Hn, D, 1e4f, &err), QW_OK);
		assert_int_equal(gpu->rope_2d(gpu, &X.g, rc, Hn, D, 1e4f, &err), QW_OK);
		compare("rope_2d", &X, 1.0 / 64, 0, 1e-3);
		free2(&X);
		free(x);
		free(rc);
		free(pos);
	}
}

static void test_elementwise(void **state)
{
	int T = 129, H = 1536;
	float *a = randv((size_t)T * H, 0, 2), *b = randv((size_t)T * H, 0, 2);
	pair A = act2(T, H, a), B = act2(T, H, b), O = act2(T, H, NULL);
	qw_err err = {0};
	assert_int_equal(cpu->add(cpu, &O.c, &A.c, &B.c, &err), QW_OK);
	assert_int_equal(gpu->add(gpu, &O.g, &A.g, &B.g, &err), QW_OK);
	compare("add", &O, 1.0 / 64, 0, 1e-3);
	assert_int_equal(cpu->silu_mul(cpu, &O.c, &A.c, &B.c, &err), QW_OK);
	assert_int_equal(gpu->silu_mul(gpu, &O.g, &A.g, &B.g, &err), QW_OK);
	compare("silu_mul", &O, 1.0 / 64, 0, 1e-3);
	for (int tanh_approx = 0; tanh_approx < 2; tanh_approx++) {
		pair G = act2(T, H, a);
		assert_int_equal(cpu->gelu(cpu, &G.c, tanh_approx, &err), QW_OK);
		assert_int_equal(gpu->gelu(gpu, &G.g, tanh_approx, &err), QW_OK);
		compare(tanh_approx ? "gelu (tanh)" : "gelu (erf)", &G, 1.0 / 64, 0, 1e-3);
		free2(&G);
	}
	free2(&A);
	free2(&B);
	free2(&O);
	free(a);
	free(b);
}

static void test_rows(void **state)
{
	int V = 151936, H = 512, T = 41;
	float *table = randv((size_t)V * H / 64, 0, 1);   /* V/64 rows: enough to gather from */
	int64_t tshape[] = {V / 64, H};
	wpair TB = weight(2, tshape, table);
	int32_t ids[41], rows[41];
	for (int i = 0; i < T; i++) {
		ids[i] = (i * 104729) % (V / 64);
		rows[i] = (T - 1 - i) * 3 % T;
	}
	pair E = act2(T, H, NULL), G = act2(T, H, NULL);
	qw_err err = {0};
	assert_int_equal(cpu->embed(cpu, &E.c, &TB.host, ids, &err), QW_OK);
	assert_int_equal(gpu->embed(gpu, &E.g, TB.dev, ids, &err), QW_OK);
	compare("embed", &E, 0, 0, 0);   /* a copy: exact */
	assert_int_equal(cpu->gather_rows(cpu, &G.c, &E.c, rows, T, &err), QW_OK);
	assert_int_equal(gpu->gather_rows(gpu, &G.g, &E.g, rows, T, &err), QW_OK);
	compare("gather_rows", &G, 0, 0, 0);
	float *s = randv((size_t)5 * H, 0, 1);
	pair S = act2(5, H, s);
	int32_t to[5] = {3, 40, 0, 17, 9};
	assert_int_equal(cpu->scatter_rows(cpu, &G.c, to, &S.c, false, &err), QW_OK);
	assert_int_equal(gpu->scatter_rows(gpu, &G.g, to, &S.g, false, &err), QW_OK);
	compare("scatter_rows", &G, 0, 0, 0);
	assert_int_equal(cpu->scatter_rows(cpu, &G.c, to, &S.c, true, &err), QW_OK);
	assert_int_equal(gpu->scatter_rows(gpu, &G.g, to, &S.g, true, &err), QW_OK);
	compare("scatter_rows (add)", &G, 1.0 / 64, 0, 1e-3);
	/* bilinear taps into a position table, 4 per row */
	int taps = 4, R = 96;
	int32_t *idx = malloc((size_t)R * taps * sizeof *idx);
	float *wt = malloc((size_t)R * taps * sizeof *wt);
	for (int i = 0; i < R * taps; i++) {
		idx[i] = (i * 31) % (V / 64);
		wt[i] = (float)((i % 7) + 1) / 16.0f;
	}
	pair I = act2(R, H, NULL);
	assert_int_equal(cpu->interp_rows(cpu, &I.c, &TB.host, idx, wt, taps, &err), QW_OK);
	assert_int_equal(gpu->interp_rows(gpu, &I.g, TB.dev, idx, wt, taps, &err), QW_OK);
	compare("interp_rows", &I, 1.0 / 64, 0, 1e-3);
	free2(&E);
	free2(&G);
	free2(&S);
	free2(&I);
	free(table);
	free(TB.bits);
	free(s);
	free(idx);
	free(wt);
}

/* An FP8 block-scaled weight is dequantised on upload: the GEMM matches the CPU's, which
 * dequantises as it reads. */
static void test_fp8_upload(void **state)
{
	int N = 256, K = 384, T = 9;
	uint8_t *q = malloc((size_t)N * K);
	for (int i = 0; i < N * K; i++)
		q[i] = (uint8_t)((i * 37 + 11) & 0x7e);   /* finite e4m3 values, both signs */
	float sc[6] = {0.5f, 0.25f, 2.0f, 1.0f, 0.125f, 4.0f};   /* (2, 3) blocks of 128 */
	qw_tensor scale = {.dtype = QW_DT_F32, .ndim = 2, .shape = {2, 3}, .numel = 6,
			   .nbytes = 24, .data = sc};
	qw_tensor w = {.dtype = QW_DT_F8_E4M3, .ndim = 2, .shape = {N, K}, .numel = (uint64_t)N * K,
		       .nbytes = (uint64_t)N * K, .data = q, .scale = &scale, .block = {128, 128}};
	w.name = (char *)"fp8.weight";
	const qw_tensor *dev;
	qw_err err = {0};
	assert_int_equal(gpu->upload(gpu, &w, &dev, &err), QW_OK);
	float *x = randv((size_t)T * K, 0, 1);
	pair X = act2(T, K, x), O = act2(T, N, NULL);
	assert_int_equal(cpu->matmul(cpu, &O.c, &X.c, &w, NULL, &err), QW_OK);
	assert_int_equal(gpu->matmul(gpu, &O.g, &X.g, dev, NULL, &err), QW_OK);
	compare("matmul (fp8 weight)", &O, 1.0 / 64, 1.0 / 64, 0);
	free2(&X);
	free2(&O);
	free(x);
	free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matmul),
		cmocka_unit_test(test_matmul_few_rows_alone),
		cmocka_unit_test(test_norms),
		cmocka_unit_test(test_rotary),
		cmocka_unit_test(test_elementwise),
		cmocka_unit_test(test_rows),
		cmocka_unit_test(test_fp8_upload),
	};
	return cmocka_run_group_tests_name("cuda ops", tests, setup, teardown);
}
