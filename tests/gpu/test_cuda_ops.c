/* test_cuda_ops.c - every CUDA op of the backend's own (elementwise.cu, the GEMMs, uploads)
 * against the CPU reference, on fresh random inputs at several shapes, the real models'
 * among them (FP8 weights: test_cuda_fp8); the fused ops (add_rmsnorm, qk_norm_rope_kv) also bit for bit against the
 * backend's separate ops they replace, and fuse_rows by reading the moved weights back.
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

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "loader/dtype.h"
#include "tests/gpu/gpu_check.h"

static qw_backend *cpu, *gpu;

static int setup(void **state)
{
	return gpu_check_backends(&cpu, &gpu);
}

static int teardown(void **state)
{
	gpu_check_backends_free(cpu, gpu);
	return 0;
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
	gpu_check_values(what, a, b, n, p->c.cols, rtol, atol_rms_share, atol);
	free(a);
	free(b);
}

// ---------------------------------------------------------------------------------------

static void test_matmul(void **state)
{
	/* (T, K, N): the tiny models' projections, the 235B's q and o projections and MLP, a
	 * vocabulary-sized lm_head, the 30B's fused q/k/v and o projections; each of gemm.cu's
	 * kernels runs: the stream kernel (T <= 32; split into runs on the narrow 512- and
	 * 768-column weights), 64 x 128 tiles (T up to 128) and 128 x 128 ones (T 300, and 257
	 * on the vision fc2: runs, an odd number of blocks, the last half one), and the plain
	 * kernel (K 100 and 200, not multiples of 8).  QW_CUDA_WGMMA=1 puts the wgmma tiles
	 * under T 300 and 257 (gemm_wgmma.cu, on Hopper). */
	static const int shapes[][3] = {{1, 128, 128}, {7, 128, 48}, {300, 128, 256},
					{257, 4304, 1152},
					{1, 4096, 8192}, {64, 4096, 512}, {33, 8192, 4096},
					{4, 2048, 151936}, {2, 2048, 5120}, {3, 4096, 2048},
					{5, 200, 40}, {6, 2048, 5120}, {8, 2048, 768},
					{8, 768, 2048}, {2, 100, 64}, {9, 2048, 5120}};
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		int T = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
		float *x = gpu_check_randv((size_t)T * K, 0, 1), *w = gpu_check_randv((size_t)N * K, 0, 1 / sqrt(K));
		float *b = gpu_check_randv((size_t)N, 0, 0.02);
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

/* A token's outputs have the same bits alone, with others, and in the whole batch
 * (gemm.cu sums in one order per shape; test_cuda_invariance holds it at every T). */
static void test_matmul_rows_alone(void **state)
{
	(void)state;
	const int T = 4, K = 2048, N = 5120;
	float *x = gpu_check_randv((size_t)T * K, 0, 1), *w = gpu_check_randv((size_t)N * K, 0, 1 / sqrt(K));
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
		float *x = gpu_check_randv((size_t)T * H, 0.5, 3), *w = gpu_check_randv((size_t)H, 1, 0.1);
		float *b = gpu_check_randv((size_t)H, 0, 0.1);
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
		float *x = gpu_check_randv((size_t)T * Hn * D, 0, 1);
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
		x = gpu_check_randv((size_t)T * Hn * D, 0, 1);
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
	float *a = gpu_check_randv((size_t)T * H, 0, 2), *b = gpu_check_randv((size_t)T * H, 0, 2);
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
	float *table = gpu_check_randv((size_t)V * H / 64, 0, 1);   /* V/64 rows: enough to gather from */
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
	float *s = gpu_check_randv((size_t)5 * H, 0, 1);
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

// ---------------------------------------------------------------------------------------
// fused ops: each against the CPU's ops composed (within the tolerances above), and bit for
// bit against the CUDA backend's own separate ops, whose bits a fused op must give

static qw_act gpu_act(int rows, int cols, const float *v)
{
	return gpu_check_act(gpu, rows, cols, v);
}

/* A CPU activation holding v. */
static qw_act cpu_act(int rows, int cols, const float *v)
{
	qw_act a;
	qw_err err = {0};
	assert_int_equal(cpu->act_alloc(cpu, rows, cols, &a, &err), QW_OK);
	assert_int_equal(cpu->act_write(cpu, &a, v, &err), QW_OK);
	return a;
}

/* A host copy of n bf16 values at device address p, once the backend's work is done. */
static uint16_t *device_bits(const void *p, size_t n)
{
	return gpu_check_device_bits(qw_cuda_backend_stream(gpu), p, n);
}

/* Fails unless n bf16 values at device addresses fused and separate have the same bits. */
static void same_bits(const char *what, const void *fused, const void *separate, size_t n,
		      int cols)
{
	gpu_check_same_bits(qw_cuda_backend_stream(gpu), what, "fused", fused, "separate ops",
			    separate, n, cols);
}

/* Rounds a CPU activation to bf16, as the CUDA backend stores it between two ops. */
static void round_to_bf16(qw_act *a)
{
	size_t n = (size_t)a->rows * (size_t)a->cols;
	float *v = malloc(n * sizeof *v + 4);
	qw_err err = {0};
	assert_int_equal(cpu->act_read(cpu, a, v, &err), QW_OK);
	for (size_t i = 0; i < n; i++)
		v[i] = qw_bf16_to_f32(qw_f32_to_bf16(v[i]));
	assert_int_equal(cpu->act_write(cpu, a, v, &err), QW_OK);
	free(v);
}

static void test_add_rmsnorm(void **state)
{
	/* (T, H): the hidden sizes of Qwen3-VL-30B-A3B (2048) and 235B-A22B (4096) at decode and
	 * prefill sizes, the tiny models' (128), and widths beside each block-size boundary */
	static const int shapes[][2] = {{1, 2048}, {64, 2048}, {1, 4096}, {33, 4096}, {7, 128},
					{3, 100},  {5, 1000}, {2, 255},   {1, 1023}, {4, 1024}};
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		int T = shapes[s][0], H = shapes[s][1];
		float *x = gpu_check_randv((size_t)T * H, 0, 2), *r = gpu_check_randv((size_t)T * H, 0.1, 1);
		float *w = gpu_check_randv((size_t)H, 1, 0.1);
		int64_t shape[] = {H};
		wpair W = weight(1, shape, w);
		pair X = act2(T, H, x), R = act2(T, H, r), O = act2(T, H, NULL);
		qw_act xs = gpu_act(T, H, x), os = gpu_act(T, H, NULL);
		qw_err err = {0};
		/* CPU: add, then rmsnorm */
		assert_int_equal(cpu->add(cpu, &X.c, &X.c, &R.c, &err), QW_OK);
		assert_int_equal(cpu->rmsnorm(cpu, &O.c, &X.c, &W.host, 1e-6f, &err), QW_OK);
		/* the fused op, and the CUDA backend's separate ops */
		if (gpu->add_rmsnorm(gpu, &O.g, &X.g, &R.g, W.dev, 1e-6f, &err) != QW_OK)
			fail_msg("%s", err.msg);
		assert_int_equal(gpu->add(gpu, &xs, &xs, &R.g, &err), QW_OK);
		assert_int_equal(gpu->rmsnorm(gpu, &os, &xs, W.dev, 1e-6f, &err), QW_OK);
		char what[64];
		snprintf(what, sizeof what, "add_rmsnorm %dx%d: x", T, H);
		compare(what, &X, 1.0 / 64, 0, 1e-3);
		same_bits(what, X.g.data, xs.data, (size_t)T * H, H);
		snprintf(what, sizeof what, "add_rmsnorm %dx%d: out", T, H);
		compare(what, &O, 1.0 / 64, 0, 1e-3);
		same_bits(what, O.g.data, os.data, (size_t)T * H, H);
		free2(&X);
		free2(&R);
		free2(&O);
		gpu->act_free(gpu, &xs);
		gpu->act_free(gpu, &os);
		free(x);
		free(r);
		free(w);
		free(W.bits);
	}
	/* the output may not be x: the sum would be lost */
	float one[4] = {1, 2, 3, 4};
	int64_t shape[] = {4};
	wpair W = weight(1, shape, one);
	qw_act x = gpu_act(1, 4, one), r = gpu_act(1, 4, one);
	qw_err err = {0};
	assert_int_equal(gpu->add_rmsnorm(gpu, &x, &x, &r, W.dev, 1e-6f, &err), QW_E_ARG);
	gpu->act_free(gpu, &x);
	gpu->act_free(gpu, &r);
	free(W.bits);
}

typedef struct qkv_case {
	int T, Hq, Hkv, D, sec[3];
} qkv_case;

/* One case of qk_norm_rope_kv: the fused op into one KV cache, the CUDA backend's separate
 * ops into another (two layers each, layer 1 written, every slot poisoned first), and the
 * CPU's ops composed. */
static void run_qk_norm_rope_kv(const qkv_case *c)
{
	const int T = c->T, Hq = c->Hq, Hkv = c->Hkv, D = c->D, QD = Hq * D, KD = Hkv * D;
	const int W = QD + 2 * KD, BS = 16, n_blocks = (T + 8) / BS + 2, n_slots = n_blocks * BS;
	const float eps = 1e-6f, theta = 5e6f;
	qw_err err = {0};
	float *qkv = gpu_check_randv((size_t)T * W, 0.2, 1.5);
	float *qn = gpu_check_randv((size_t)D, 1, 0.1), *kn = gpu_check_randv((size_t)D, 1, 0.1);
	int64_t dshape[] = {D};
	wpair QN = weight(1, dshape, qn), KN = weight(1, dshape, kn);
	float *q = malloc((size_t)T * QD * 4), *k = malloc((size_t)T * KD * 4);
	float *v = malloc((size_t)T * KD * 4);
	int32_t *pos = malloc((size_t)T * 12), *slot = malloc((size_t)T * 4);
	int32_t *seq = calloc((size_t)T, 4), *kv_index = malloc((size_t)T * 4), table[1] = {0};
	int32_t *perm = malloc((size_t)n_slots * 4);
	for (int i = 0; i < n_slots; i++)
		perm[i] = i;
	for (int i = n_slots - 1; i > 0; i--) {
		int j = (int)gpu_check_below((uint32_t)i + 1), x = perm[i];
		perm[i] = perm[j];
		perm[j] = x;
	}
	for (int t = 0; t < T; t++) {
		memcpy(q + (size_t)t * QD, qkv + (size_t)t * W, (size_t)QD * 4);
		memcpy(k + (size_t)t * KD, qkv + (size_t)t * W + QD, (size_t)KD * 4);
		memcpy(v + (size_t)t * KD, qkv + (size_t)t * W + QD + KD, (size_t)KD * 4);
		for (int a = 0; a < 3; a++)   /* t, h and w differ, so a wrong axis shows */
			pos[3 * t + a] = (int32_t)gpu_check_below(8192);
		slot[t] = t == 1 && T > 2 ? -1 : perm[t];   /* a negative slot: no cache row */
		kv_index[t] = t;
	}
	qw_batch b = {.n_tokens = T, .positions = pos, .seq = seq, .kv_index = kv_index,
		      .slot = slot, .n_seqs = 1, .max_blocks = 1, .block_tables = table};

	/* CPU: head norms, the rounding to bf16 the CUDA backend's storage makes between ops,
	 * rotations; kv_write would store these K rows and the V rows as they are */
	qw_act qc = cpu_act(T, QD, q), kc = cpu_act(T, KD, k);
	assert_int_equal(cpu->head_rmsnorm(cpu, &qc, &QN.host, Hq, eps, &err), QW_OK);
	assert_int_equal(cpu->head_rmsnorm(cpu, &kc, &KN.host, Hkv, eps, &err), QW_OK);
	round_to_bf16(&qc);
	round_to_bf16(&kc);
	assert_int_equal(cpu->rope(cpu, &qc, pos, Hq, D, c->sec, theta, &err), QW_OK);
	assert_int_equal(cpu->rope(cpu, &kc, pos, Hkv, D, c->sec, theta, &err), QW_OK);

	/* GPU: two caches, every value NaN */
	qw_kv_shape shape = {2, n_blocks, BS, Hkv, D};
	qw_kv_cache *kv_fused, *kv_sep;
	assert_int_equal(gpu->kv_alloc(gpu, &shape, &kv_fused, &err), QW_OK);
	assert_int_equal(gpu->kv_alloc(gpu, &shape, &kv_sep, &err), QW_OK);
	void *kf[2], *vf[2], *ks_[2], *vs_[2];
	size_t bytes = 0;
	for (int l = 0; l < 2; l++) {
		assert_true(qw_cuda_backend_kv_layer(kv_fused, l, &kf[l], &vf[l], &bytes));
		assert_true(qw_cuda_backend_kv_layer(kv_sep, l, &ks_[l], &vs_[l], &bytes));
		void *all[4] = {kf[l], vf[l], ks_[l], vs_[l]};
		for (int i = 0; i < 4; i++)
			assert_int_equal(cudaMemset(all[i], 0xff, bytes), cudaSuccess);
	}
	assert_int_equal(bytes, (size_t)n_slots * KD * 2);
	assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
	assert_int_equal(gpu->begin_step(gpu, &b, &err), QW_OK);
	/* the fused op */
	qw_act QKV = gpu_act(T, W, qkv), qf = gpu_act(T, QD, NULL);
	if (gpu->qk_norm_rope_kv(gpu, &qf, &QKV, QN.dev, KN.dev, pos, Hq, Hkv, D, c->sec, theta,
				 eps, kv_fused, 1, &b, &err) != QW_OK)
		fail_msg("%s", err.msg);
	/* the separate ops */
	qw_act qs = gpu_act(T, QD, q), ks = gpu_act(T, KD, k), vs = gpu_act(T, KD, v);
	assert_int_equal(gpu->head_rmsnorm(gpu, &qs, QN.dev, Hq, eps, &err), QW_OK);
	assert_int_equal(gpu->head_rmsnorm(gpu, &ks, KN.dev, Hkv, eps, &err), QW_OK);
	assert_int_equal(gpu->rope(gpu, &qs, pos, Hq, D, c->sec, theta, &err), QW_OK);
	assert_int_equal(gpu->rope(gpu, &ks, pos, Hkv, D, c->sec, theta, &err), QW_OK);
	assert_int_equal(gpu->kv_write(gpu, kv_sep, 1, &ks, &vs, &b, &err), QW_OK);

	char what[80];
	snprintf(what, sizeof what, "qk_norm_rope_kv T%d %d/%d D%d", T, Hq, Hkv, D);
	printf("# %s\n", what);
	same_bits("  q", qf.data, qs.data, (size_t)T * QD, QD);
	for (int l = 0; l < 2; l++) {
		same_bits(l ? "  K cache, layer 1" : "  K cache, layer 0", kf[l], ks_[l],
			  (size_t)n_slots * KD, KD);
		same_bits(l ? "  V cache, layer 1" : "  V cache, layer 0", vf[l], vs_[l],
			  (size_t)n_slots * KD, KD);
	}
	/* against the CPU.  CUDA's powf may be a few ulp off glibc's: at positions below 8192
	 * that turns a pair by up to ~2e-3 rad, up to 1e-2 on normed values of magnitude 5 */
	const double atol = 1e-2;
	pair Q = {qc, qf};
	compare("  q against the CPU", &Q, 1.0 / 64, 0, atol);
	uint16_t *kb = device_bits(kf[1], (size_t)n_slots * KD);
	uint16_t *vb = device_bits(vf[1], (size_t)n_slots * KD);
	float *kref = malloc((size_t)T * KD * 4), *want = malloc((size_t)T * KD * 4);
	float *got = malloc((size_t)T * KD * 4);
	bool *written = calloc((size_t)n_slots, 1);
	assert_int_equal(cpu->act_read(cpu, &kc, kref, &err), QW_OK);
	int rows = 0, bad_v = 0, bad_poison = 0;
	for (int t = 0; t < T; t++) {
		if (slot[t] < 0)
			continue;
		written[slot[t]] = true;
		const uint16_t *kr = kb + (size_t)slot[t] * KD, *vr = vb + (size_t)slot[t] * KD;
		for (int i = 0; i < KD; i++) {
			got[(size_t)rows * KD + i] = qw_bf16_to_f32(kr[i]);
			want[(size_t)rows * KD + i] = kref[(size_t)t * KD + i];
			bad_v += vr[i] != qw_f32_to_bf16(v[(size_t)t * KD + i]);   /* a copy: exact */
		}
		rows++;
	}
	gpu_check_values("  K rows against the CPU", want, got, (size_t)rows * KD, KD, 1.0 / 64, 0,
		       atol);
	uint16_t *k0 = device_bits(kf[0], (size_t)n_slots * KD);
	uint16_t *v0 = device_bits(vf[0], (size_t)n_slots * KD);
	for (size_t i = 0; i < (size_t)n_slots * KD; i++) {
		bool mine = written[i / (size_t)KD];
		bad_poison += k0[i] != 0xffff || v0[i] != 0xffff ||
			      (!mine && (kb[i] != 0xffff || vb[i] != 0xffff));
	}
	printf("# %-28s %d rows, %d V values differ, %d poisoned values overwritten\n",
	       "  V rows and the rest", rows, bad_v, bad_poison);
	if (bad_v || bad_poison)
		fail_msg("%s: %d V values differ from the input, %d values outside the written rows "
			 "lost their poison", what, bad_v, bad_poison);
	gpu->kv_free(gpu, kv_fused);
	gpu->kv_free(gpu, kv_sep);
	qw_act *gacts[] = {&QKV, &qf, &qs, &ks, &vs};
	for (size_t i = 0; i < sizeof gacts / sizeof *gacts; i++)
		gpu->act_free(gpu, gacts[i]);
	cpu->act_free(cpu, &qc);
	cpu->act_free(cpu, &kc);
	void *host[] = {qkv, qn, kn, q, k, v, pos, slot, seq, kv_index, perm, QN.bits, KN.bits,
			kb, vb, kref, want, got, written, k0, v0};
	for (size_t i = 0; i < sizeof host / sizeof *host; i++)
		free(host[i]);
}

static void test_qk_norm_rope_kv(void **state)
{
	static const qkv_case cases[] = {
		{1, 32, 4, 128, {24, 20, 20}},   /* Qwen3-VL-30B-A3B: a decode step */
		{70, 32, 4, 128, {24, 20, 20}},  /* ... and a prefill chunk */
		{3, 64, 4, 128, {24, 20, 20}},   /* Qwen3-VL-235B-A22B */
		{9, 4, 2, 32, {6, 5, 5}},        /* the tiny models */
		{5, 3, 1, 40, {8, 6, 6}},        /* a pair's halves in different lanes (D/2 = 20) */
		{4, 2, 2, 256, {48, 40, 40}},    /* the widest head taken */
		{6, 5, 1, 96, {16, 16, 16}},
		{2, 1, 1, 2, {1, 0, 0}},         /* one pair a head */
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
		run_qk_norm_rope_kv(&cases[i]);
	/* a head wider than the kernel takes is refused */
	float z[1024] = {0};
	int64_t dshape[] = {512};
	wpair N = weight(1, dshape, z);
	qw_act qkv = gpu_act(1, 3 * 512, NULL), qo = gpu_act(1, 512, NULL);
	qw_kv_shape shape = {1, 1, 16, 1, 512};
	qw_kv_cache *kv;
	qw_err err = {0};
	int32_t pos[3] = {0, 0, 0}, slot[1] = {0}, zero[1] = {0};
	int sec[3] = {96, 80, 80};
	qw_batch b = {.n_tokens = 1, .positions = pos, .seq = zero, .kv_index = zero, .slot = slot,
		      .n_seqs = 1, .max_blocks = 1, .block_tables = zero};
	assert_int_equal(gpu->kv_alloc(gpu, &shape, &kv, &err), QW_OK);
	assert_int_equal(gpu->begin_step(gpu, &b, &err), QW_OK);
	assert_int_equal(gpu->qk_norm_rope_kv(gpu, &qo, &qkv, N.dev, N.dev, pos, 1, 1, 512, sec,
					      5e6f, 1e-6f, kv, 0, &b, &err), QW_E_ARG);
	printf("# refused: %s\n", err.msg);
	gpu->kv_free(gpu, kv);
	gpu->act_free(gpu, &qkv);
	gpu->act_free(gpu, &qo);
	free(N.bits);
}

/* Whether one GEMM against the fused weight gives the bits of the parts' GEMMs in its column
 * ranges (the fused forward pass equals the plain one only if it does; cuBLAS may pick other
 * kernels, or split K, for other widths).  Printed, not asserted here: test_cuda_fused holds
 * the forward passes to it on the tiny models. */
static void gemm_bits(const qw_tensor *f, const qw_tensor *const *parts, int cols)
{
	static const int tokens[] = {1, 4, 33};
	for (size_t i = 0; i < sizeof tokens / sizeof *tokens; i++) {
		int T = tokens[i], N = (int)f->shape[0];
		float *x = gpu_check_randv((size_t)T * cols, 0, 1);
		qw_act X = gpu_act(T, cols, x), O = gpu_act(T, N, NULL);
		qw_err err = {0};
		assert_int_equal(gpu->matmul(gpu, &O, &X, f, NULL, &err), QW_OK);
		uint16_t *all = device_bits(O.data, (size_t)T * N);
		size_t differ = 0;
		for (int p = 0, col0 = 0; p < 3; col0 += (int)parts[p]->shape[0], p++) {
			int n = (int)parts[p]->shape[0];
			qw_act P = gpu_act(T, n, NULL);
			assert_int_equal(gpu->matmul(gpu, &P, &X, parts[p], NULL, &err), QW_OK);
			uint16_t *mine = device_bits(P.data, (size_t)T * n);
			for (int t = 0; t < T; t++)
				for (int c = 0; c < n; c++)
					differ += mine[(size_t)t * n + c] != all[(size_t)t * N + col0 + c];
			free(mine);
			gpu->act_free(gpu, &P);
		}
		printf("# fuse_rows GEMM, T %d K %d N %d: %zu of %d values differ from the parts' "
		       "GEMMs%s\n", T, cols, N, differ, T * N,
		       differ ? " (cuBLAS chose other kernels: fused forward bits will differ)" : "");
		gpu->act_free(gpu, &X);
		gpu->act_free(gpu, &O);
		free(all);
		free(x);
	}
}

static void test_fuse_rows(void **state)
{
	/* rows of three parts and their columns: the q/k/v projections of Qwen3-VL-30B-A3B, of
	 * 235B-A22B and of the tiny models, and small odd ones */
	static const int cases[][4] = {{4096, 512, 512, 2048}, {8192, 512, 512, 4096},
				       {128, 64, 64, 128}, {3, 7, 1, 5}};
	qw_err err = {0};
	const qw_tensor *fused_part = NULL;
	for (size_t s = 0; s < sizeof cases / sizeof *cases; s++) {
		int cols = cases[s][3];
		wpair P[3];
		float *v[3];
		const qw_tensor *parts[3];
		int64_t total = 0;
		for (int i = 0; i < 3; i++) {
			int64_t shape[] = {cases[s][i], cols};
			v[i] = gpu_check_randv((size_t)cases[s][i] * cols, 0, 1);
			P[i] = weight(2, shape, v[i]);
			parts[i] = P[i].dev;
			total += cases[s][i];
		}
		const qw_tensor *f;
		if (gpu->fuse_rows(gpu, parts, 3, &f, &err) != QW_OK)
			fail_msg("%s", err.msg);
		assert_int_equal(f->ndim, 2);
		assert_int_equal(f->shape[0], total);
		assert_int_equal(f->shape[1], cols);
		uint16_t *all = device_bits(f->data, (size_t)total * cols);
		size_t at = 0;
		for (int i = 0; i < 3; i++) {
			size_t n = (size_t)cases[s][i] * cols;
			uint16_t *mine = device_bits(parts[i]->data, n);
			assert_memory_equal(mine, P[i].bits, n * 2);     /* the part reads the same */
			assert_memory_equal(all + at, P[i].bits, n * 2); /* its rows, in order */
			assert_ptr_equal(parts[i]->data, (const uint8_t *)f->data + at * 2);
			at += n;
			free(mine);
		}
		/* a part still serves as a weight */
		int T = 3;
		float *x = gpu_check_randv((size_t)T * cols, 0, 1);
		pair X = act2(T, cols, x), O = act2(T, cases[s][1], NULL);
		assert_int_equal(cpu->matmul(cpu, &O.c, &X.c, &P[1].host, NULL, &err), QW_OK);
		assert_int_equal(gpu->matmul(gpu, &O.g, &X.g, parts[1], NULL, &err), QW_OK);
		compare("fuse_rows: a part's GEMM", &O, 1.0 / 64, 1.0 / 64, 0);
		printf("# fuse_rows %d + %d + %d rows of %d: parts and fused rows read back exact\n",
		       cases[s][0], cases[s][1], cases[s][2], cols);
		gemm_bits(f, parts, cols);
		fused_part = parts[0];
		free2(&X);
		free2(&O);
		free(x);
		free(all);
		for (int i = 0; i < 3; i++) {
			free(v[i]);
			free(P[i].bits);
		}
	}
	/* refused with QW_E_ARG, nothing moved: columns that differ, a tensor the backend did
	 * not make, one given twice, one already fused */
	float ones[64];
	for (int i = 0; i < 64; i++)
		ones[i] = 1;
	int64_t s46[] = {4, 6}, s27[] = {2, 7}, s36[] = {3, 6};
	wpair A = weight(2, s46, ones), B = weight(2, s27, ones), C = weight(2, s36, ones);
	const void *a_data = A.dev->data;
	const qw_tensor *bad[][2] = {{A.dev, B.dev}, {A.dev, &C.host}, {A.dev, A.dev},
				     {A.dev, fused_part}};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		const qw_tensor *f = NULL;
		assert_int_equal(gpu->fuse_rows(gpu, bad[i], 2, &f, &err), QW_E_ARG);
		printf("# refused: %s\n", err.msg);
		assert_ptr_equal(A.dev->data, a_data);
	}
	free(A.bits);
	free(B.bits);
	free(C.bits);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matmul),
		cmocka_unit_test(test_matmul_rows_alone),
		cmocka_unit_test(test_norms),
		cmocka_unit_test(test_rotary),
		cmocka_unit_test(test_elementwise),
		cmocka_unit_test(test_rows),
		cmocka_unit_test(test_add_rmsnorm),
		cmocka_unit_test(test_qk_norm_rope_kv),
		cmocka_unit_test(test_fuse_rows),
	};
	return cmocka_run_group_tests_name("cuda ops", tests, setup, teardown);
}
