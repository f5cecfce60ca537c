/* test_cuda_wgmma.c - can Hopper's warpgroup MMA give gemm.cu's bits?  The dense
 * projections are batch invariant because every output element is summed in one order
 * (gemm.cu's header): per 32-block two mma.sync m16n8k16 over a fixed permutation of k,
 * chained in fp32 from zero.  A wgmma tile may replace the mma.sync tiles only if wgmma
 * m64nNk16, given the same 16 products in the same slots, rounds as mma.sync does.  Nothing
 * documents that, so the probe (wgmma_probe.cu) computes the same random problems both ways:
 *  - every way is within fp32 rounding of the exact (double) products: the layouts and
 *    the matrix descriptors (wgmma.h, K-major and MN-major) are right, whatever the bits;
 *  - wgmma with each k in the slot mma.sync gives it equals mma.sync bit for bit (fp32
 *    accumulators): what gemm_wgmma.cu rests on.  If this fails, the wgmma tiles cannot
 *    keep the order and must stay off (QW_CUDA_WGMMA unset).
 * It prints, for information, how many values differ between the other pairs of ways: a
 * permutation of k inside mma.sync, wgmma over the same k in other slots (8-byte quads,
 * what 8-byte copies could lay out), wgmma over consecutive k (what TMA lays out), and
 * wgmma with B MN-major (the grouped expert GEMM's input-major weights, whose order is
 * mma.sync over consecutive k).  Zeros there would allow cheaper loads, or say the expert
 * GEMM can move to wgmma.  Skipped on GPUs other than sm_90.
 * Inputs: standard normal values, and values of random sign and exponent (2^-12 .. 2^12),
 * where the alignment and rounding inside the tensor core show.
 * Then the tile built on it (gemm_wgmma.cu, QW_GEMM_WGMMA) on real and ragged shapes: within
 * bf16 rounding of the exact products (sampled rows, double on the CPU), and the bits of
 * gemm.cu's 128 x 128 mma.sync tiles on every value; and the backend's opt-in
 * (QW_CUDA_WGMMA's values, the self-check).  QW_TEST_SEED=<n> repeats a run.
 */
#include "tests/unit/helpers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kernels.h"
#include "loader/dtype.h"
#include "tests/gpu/cuda_ok.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/wgmma_probe.h"

#define PROBLEMS 64
#define A_N ((size_t)PROBLEMS * 64 * PROBE_K)
#define B_N ((size_t)PROBLEMS * PROBE_N * PROBE_K)
#define OUT_N ((size_t)PROBLEMS * 64 * PROBE_N)
#define WAYS 6

static const char *const way_names[WAYS] = {"mma.sync, gemm.cu's slots",
					   "mma.sync, consecutive k",
					   "wgmma, mma.sync's slots", "wgmma, quads of k",
					   "wgmma, consecutive k", "wgmma, B MN-major"};

typedef struct probe_data {
	uint16_t *a, *b;          /* host bf16 */
	float *out[WAYS];         /* host results of each way */
} probe_data;

/* A bf16 of random sign, exponent in [-12, 12] and mantissa. */
static uint16_t wide_bf16(void)
{
	uint32_t sign = gpu_check_below(2), e = 127 - 12 + gpu_check_below(25);
	return (uint16_t)(sign << 15 | e << 7 | gpu_check_below(128));
}

static void fill(uint16_t *v, size_t n, bool wide)
{
	for (size_t i = 0; i < n; i++)
		v[i] = wide ? wide_bf16() : qw_f32_to_bf16((float)gpu_check_normal());
}

/* Every way on fresh inputs. */
static void run_ways(probe_data *p, bool wide)
{
	p->a = malloc(A_N * 2);
	p->b = malloc(B_N * 2);
	assert_true(p->a && p->b);
	fill(p->a, A_N, wide);
	fill(p->b, B_N, wide);
	void *da, *db, *dout;
	CUDA_OK(cudaMalloc(&da, A_N * 2));
	CUDA_OK(cudaMalloc(&db, B_N * 2));
	CUDA_OK(cudaMalloc(&dout, OUT_N * 4));
	CUDA_OK(cudaMemcpy(da, p->a, A_N * 2, cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(db, p->b, B_N * 2, cudaMemcpyHostToDevice));
	for (int w = 0; w < WAYS; w++) {
		p->out[w] = malloc(OUT_N * 4);
		assert_non_null(p->out[w]);
		CUDA_OK(cudaMemset(dout, 0xff, OUT_N * 4));   /* NaN: every value must be written */
		CUDA_OK(probe_run((probe_way)w, dout, da, db, PROBLEMS));
		CUDA_OK(cudaDeviceSynchronize());
		CUDA_OK(cudaMemcpy(p->out[w], dout, OUT_N * 4, cudaMemcpyDeviceToHost));
	}
	cudaFree(da);
	cudaFree(db);
	cudaFree(dout);
}

static void free_ways(probe_data *p)
{
	free(p->a);
	free(p->b);
	for (int w = 0; w < WAYS; w++)
		free(p->out[w]);
}

/* Fails unless every way is within fp32 rounding of the exact products: |got - exact| <=
 * 2^-14 sum |a b| (16 chained fp32 steps lose ~2^-20 of it; a wrong layout loses all). */
static void check_near_exact(const probe_data *p, const char *data)
{
	for (size_t i = 0; i < OUT_N; i++) {
		size_t pr = i / (64 * PROBE_N), r = i % (64 * PROBE_N) / PROBE_N, c = i % PROBE_N;
		const uint16_t *ar = p->a + (pr * 64 + r) * PROBE_K;
		const uint16_t *bc = p->b + (pr * PROBE_N + c) * PROBE_K;
		double exact = 0.0, mag = 0.0;
		for (int k = 0; k < PROBE_K; k++) {
			double v = (double)qw_bf16_to_f32(ar[k]) * (double)qw_bf16_to_f32(bc[k]);
			exact += v;
			mag += fabs(v);
		}
		for (int w = 0; w < WAYS; w++) {
			double got = p->out[w][i];
			if (!(fabs(got - exact) <= ldexp(mag, -14)))
				fail_msg("%s data, %s: problem %zu row %zu column %zu is %.9g, exactly "
					 "%.9g (sum |a b| %.3g): the layout or the descriptor is wrong",
					 data, way_names[w], pr, r, c, got, exact, mag);
		}
	}
}

static size_t differ(const float *x, const float *y)
{
	size_t n = 0;
	for (size_t i = 0; i < OUT_N; i++)
		n += memcmp(&x[i], &y[i], 4) != 0;
	return n;
}

static void test_ways_near_exact(void **state)
{
	(void)state;
	if (!qw_cuda_gemm_wgmma_device()) {
		skip();
		return;
	}
	for (int wide = 0; wide < 2; wide++) {
		probe_data p = {0};
		run_ways(&p, wide);
		check_near_exact(&p, wide ? "wide" : "normal");
		free_ways(&p);
	}
}

static void test_wgmma_gives_mma_bits(void **state)
{
	(void)state;
	if (!qw_cuda_gemm_wgmma_device()) {
		skip();
		return;
	}
	static const int pairs[][2] = {{PROBE_MMA_NATURAL, PROBE_MMA_SLOTS},
				       {PROBE_WG_QUADS, PROBE_MMA_SLOTS},
				       {PROBE_WG_NATURAL, PROBE_MMA_SLOTS},
				       {PROBE_WG_NATURAL, PROBE_MMA_NATURAL},
				       {PROBE_WG_MN, PROBE_MMA_NATURAL},
				       {PROBE_WG_MN, PROBE_WG_NATURAL},
				       {PROBE_WG_SLOTS, PROBE_MMA_SLOTS}};
	size_t bad = 0;
	for (int wide = 0; wide < 2; wide++) {
		probe_data p = {0};
		run_ways(&p, wide);
		for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
			size_t n = differ(p.out[pairs[i][0]], p.out[pairs[i][1]]);
			printf("# %-6s data: %-25s vs %-27s %7zu of %zu fp32 values differ\n",
			       wide ? "wide" : "normal", way_names[pairs[i][0]],
			       way_names[pairs[i][1]], n, OUT_N);
			if (pairs[i][0] == PROBE_WG_SLOTS)
				bad += n;
		}
		free_ways(&p);
	}
	if (bad)
		fail_msg("wgmma over mma.sync's slots differs from mma.sync in %zu values: the wgmma "
			 "tiles cannot keep gemm.cu's order (leave QW_CUDA_WGMMA unset)", bad);
}

// -- the tile ---------------------------------------------------------------------------------

/* One shape: the wgmma tile against the exact products on every 13th row (and the last) and
 * against the mma.sync tiles' bits on all. */
static void tile_check(int T, int N, int K, const char *name)
{
	const size_t nx = (size_t)T * K, nw = (size_t)N * K, no = (size_t)T * N;
	float *fx = gpu_check_randv(nx, 0.0, 1.0), *fw = gpu_check_randv(nw, 0.0, 1.0);
	uint16_t *hx = malloc(nx * 2), *hw = malloc(nw * 2), *ho = malloc(no * 2);
	assert_true(hx && hw && ho);
	for (size_t i = 0; i < nx; i++)
		hx[i] = qw_f32_to_bf16(fx[i]);
	for (size_t i = 0; i < nw; i++)
		hw[i] = qw_f32_to_bf16(fw[i]);
	uint16_t *dx, *dw, *dwg, *dmma;
	CUDA_OK(cudaMalloc((void **)&dx, nx * 2));
	CUDA_OK(cudaMalloc((void **)&dw, nw * 2));
	CUDA_OK(cudaMalloc((void **)&dwg, no * 2));
	CUDA_OK(cudaMalloc((void **)&dmma, no * 2));
	CUDA_OK(cudaMemcpy(dx, hx, nx * 2, cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(dw, hw, nw * 2, cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemset(dwg, 0xff, no * 2));   /* NaN: every value must be written */
	qw_err err = {0};
	if (qw_cuda_gemm_wgmma(dwg, dx, dw, T, N, K, 0, &err) != QW_OK ||
	    qw_cuda_gemm_with(QW_GEMM_TILE_L, dmma, dx, dw, T, N, K, 0, &err) != QW_OK)
		fail_msg("%s: %s", name, err.msg);
	CUDA_OK(cudaDeviceSynchronize());
	CUDA_OK(cudaMemcpy(ho, dwg, no * 2, cudaMemcpyDeviceToHost));
	int rows = 0;
	for (int r = 0; r < T; r++)
		rows += r % 13 == 0 || r == T - 1;
	float *want = malloc((size_t)rows * N * sizeof *want), *got = malloc((size_t)rows * N * 4);
	assert_true(want && got);
	size_t i = 0;
	for (int r = 0; r < T; r++) {
		if (r % 13 && r != T - 1)
			continue;
		for (int n = 0; n < N; n++, i++) {
			double acc = 0.0;
			for (int k = 0; k < K; k++)
				acc += (double)fx[(size_t)r * K + k] * (double)fw[(size_t)n * K + k];
			want[i] = (float)acc;
			got[i] = qw_bf16_to_f32(ho[(size_t)r * N + n]);
		}
	}
	char what[128];
	snprintf(what, sizeof what, "wgmma tile, %s (T %d, N %d, K %d), S %d", name, T, N, K,
		 qw_cuda_gemm_splits(N, K));
	gpu_check_values(what, want, got, i, N, 1.0 / 128, 1e-3, 0.0);
	gpu_check_same_bits(0, what, "wgmma", dwg, "mma.sync tiles", dmma, no, N);
	cudaFree(dx);
	cudaFree(dw);
	cudaFree(dwg);
	cudaFree(dmma);
	free(fx);
	free(fw);
	free(hx);
	free(hw);
	free(ho);
	free(want);
	free(got);
}

static void test_tile(void **state)
{
	(void)state;
	if (!qw_cuda_gemm_wgmma_device()) {
		skip();
		return;
	}
	/* real projections (S 1; the vision tower's fc2: S 2, K 4304 ends in half a block and an
	 * odd number of blocks), runs of S 4 with a partial block, a panel of one block, ragged
	 * row and column tiles, fewer rows than a tile, K of one partial block */
	tile_check(1000, 5120, 2048, "30B q/k/v fused");
	tile_check(300, 4096, 8192, "235B o");
	tile_check(700, 1152, 4304, "vision fc2");
	tile_check(300, 392, 1000, "S 4, K 1000");
	tile_check(257, 392, 1064, "S 4, K 1064");
	tile_check(130, 136, 200, "K 200");
	tile_check(5, 130, 40, "5 rows");
	tile_check(64, 8, 8, "K 8, N 8");
}

static void test_opt_in(void **state)
{
	(void)state;
	qw_err err = {0};
	bool on = true;
	assert_int_equal(qw_cuda_gemm_wgmma_opt_in(NULL, 0, 0, &on, &err), QW_OK);
	assert_false(on);
	on = true;
	assert_int_equal(qw_cuda_gemm_wgmma_opt_in("0", 0, 0, &on, &err), QW_OK);
	assert_false(on);
	assert_int_equal(qw_cuda_gemm_wgmma_opt_in("yes", 0, 0, &on, &err), QW_E_ARG);
	assert_false(on);
	assert_non_null(strstr(err.msg, "QW_CUDA_WGMMA is 'yes'; HINT"));
	qw_status st = qw_cuda_gemm_wgmma_opt_in("1", 0, 0, &on, &err);
	if (qw_cuda_gemm_wgmma_device()) {   /* the self-check must pass where the tile is right */
		if (st != QW_OK)
			fail_msg("%s", err.msg);
		assert_true(on);
	} else {
		assert_int_equal(st, QW_E_ARG);
		assert_false(on);
		assert_non_null(strstr(err.msg, "not a Hopper"));
	}
}

int main(void)
{
	gpu_check_seed();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ways_near_exact),
		cmocka_unit_test(test_wgmma_gives_mma_bits),
		cmocka_unit_test(test_tile),
		cmocka_unit_test(test_opt_in),
	};
	return cmocka_run_group_tests_name("cuda wgmma", tests, NULL, NULL);
}
