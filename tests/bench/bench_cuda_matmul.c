/* bench_cuda_matmul.c - the dense projections of a step on the Qwen3-VL-30B-A3B and
 * 235B-A22B shapes, both lm_heads, a dense MLP's and 8192^3.  Not a test.  Built by
 * `scons tests`; run
 *     build/tests/bench/bench_cuda_matmul [--copy GBPS] [--bf16-tflops R] [copy GB/s]
 *     build/tests/bench/bench_cuda_matmul --fp8 [--copy GBPS] [--bf16-tflops R] [--fp8-tflops R]
 * (the ceilings from tests/bench/gpu_ceilings.py on the same GPU).
 *
 * Without --fp8, bf16 weights: first gemm.cu's output against cuBLAS's at 8 and 512 rows
 * (max |diff| over the output's RMS: two fp32 orders rounded to bf16, a few bf16 steps apart
 * at most); then decode (T 1 to 32): qw_cuda_gemm (the backend's, batch invariant) against
 * cuBLAS (cublasGemmEx, which the backend called for more than 4 tokens), the few-rows kernel
 * (its decode kernel before) and gemm.cu's stream kernel by name: us, GB/s of weight and the
 * fraction of the copy bandwidth (the weight's bytes are the step's traffic); and prefill (T
 * 64 to 8192): qw_cuda_gemm, cuBLAS and each of gemm.cu's tile kernels, and on Hopper
 * gemm_wgmma.cu's tiles once they gave the 128x128 tiles' bits at 129 and 1000 rows (-1: not
 * timed): us, TFLOP/s and the fraction of the bf16 tensor-core rate.
 *
 * With --fp8: the same weights as FP8 (e4m3, 128 x 128 block scales).  Every way is first
 * checked against the CPU reference (double sums of x times e4m3 * scale, or the bf16
 * weight, on the rows of T up to 4, else four of them) within its tolerance (`ways` below),
 * and the program ends on a miss, before anything is timed.  Decode (1, 2, 4 tokens): the
 * bf16 GEMM against gemm_fp8.cu's W8A16 stream (the backend's) and the earlier few-rows FP8
 * stream with one and two columns a warp: us, GB/s and the fraction of the byte roofline (FP8
 * bytes and scales, or bf16 bytes, over the copy bandwidth), and the FP8 speed-up.  More
 * tokens (5, 64, 512, 8192): the bf16 GEMM, (c) gemm_fp8.cu's W8A16 (tiles beyond 32 rows),
 * (a) dequantise + the bf16 GEMM, (b) cuBLASLt's block-scaled FP8 GEMM with the activations'
 * quantisation (or why there is none): us and the fraction of the bf16 and FP8 tensor-core
 * rates.
 *
 * Decode weights rotate over copies filling more than the L2, so each run reads from HBM as
 * in a real step.  Median of RUNS after three warm-ups.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/e4m3x8.h"
#include "kernels/cuda/kernels.h"
#include "tests/bench/bench_util.h"

#define RUNS 30
#define ROTATE_BYTES (256ull << 20)   /* weight copies cycled through: 5x the L2 */
#define BLAS_WS (32u << 20)           /* cuBLAS's workspace (the backend's was this size) */
#define MAX_T 8192

typedef struct shape {
	const char *name;
	int N, K;
} shape;

static const shape shapes[] = {
	{"30B q/k/v fused", 5120, 2048}, {"30B q", 4096, 2048},   {"30B k or v", 512, 2048},
	{"30B o", 2048, 4096},           {"235B q/k/v fused", 9216, 4096},
	{"235B k or v", 512, 4096},      {"235B o", 4096, 8192},  {"lm_head 30B", 151936, 2048},
	{"lm_head 235B", 151936, 4096},  {"dense gate/up", 12288, 4096},
	{"square", 8192, 8192},
};

/* What a run needs: the copies of one weight, bf16 and FP8, and scratch. */
typedef struct bench {
	cudaStream_t s;
	cublasHandle_t blas;
	qw_cuda_fp8_lt *lt;
	int N, K, copies;
	uint16_t **w;               /* (copies,) bf16 (N, K) */
	qw_cuda_fp8_weight *w8;     /* (copies,) FP8 (N, K) and scales */
	uint16_t *x, *out, *ref, *deq;   /* (T, K), (T, N) twice, the dequantised weight */
	void *act;                  /* cuBLASLt's quantised activations */
	size_t act_bytes;
	uint16_t *wh, *xh;          /* host copies: the bf16 weight (N, K), x (max_T, K) */
	uint8_t *codes;             /* the FP8 weight's codes (N, K) */
	float *sh;                  /* its scales (ceil(N / 128), ceil(K / 128)) */
	int max_T;
} bench;

typedef enum way {
	GEMM, GEMM_STREAM, GEMM_TILE_M, GEMM_TILE_L, GEMM_WGMMA, BF16_BLAS, BF16_FEW, FP8_GEMM,
	FP8_STREAM1, FP8_STREAM2, FP8_DEQUANT, FP8_LT
} way;

/* What each way is called, and its tolerance against the CPU reference: |gpu - ref| <=
 * rms * RMS(ref) + rel * |ref| (test_cuda_fp8.c and test_cuda_ops.c say why: W8A16 on the
 * codes' exact values, or a weight rounded to bf16, or W8A8). */
static const struct {
	const char *name;
	double rms, rel;
} ways[] = {
	[GEMM] = {"bf16 gemm", 1.0 / 256, 1.0 / 128},
	[GEMM_STREAM] = {"bf16 stream", 1.0 / 256, 1.0 / 128},
	[GEMM_TILE_M] = {"bf16 64x128", 1.0 / 256, 1.0 / 128},
	[GEMM_TILE_L] = {"bf16 128x128", 1.0 / 256, 1.0 / 128},
	[BF16_BLAS] = {"cuBLAS bf16", 1.0 / 256, 1.0 / 128},
	[BF16_FEW] = {"bf16 few-rows", 1.0 / 256, 1.0 / 128},
	[FP8_GEMM] = {"fp8 W8A16 (gemm_fp8.cu)", 1.0 / 256, 1.0 / 128},
	[FP8_STREAM1] = {"fp8 few-rows/1", 1.0 / 64, 1.0 / 64},
	[FP8_STREAM2] = {"fp8 few-rows/2", 1.0 / 64, 1.0 / 64},
	[FP8_DEQUANT] = {"fp8 dequantised + bf16 gemm", 1.0 / 64, 1.0 / 64},
	[FP8_LT] = {"fp8 cuBLASLt W8A8", 0.25, 1.0 / 16},
};

static void fail(const char *what, const qw_err *err)
{
	fprintf(stderr, "%s: %s\n", what, err ? err->msg : "failed");
	exit(1);
}

/* One run of `how` on T rows into out; false when it cannot take the shape. */
static bool run_once(bench *b, way how, int T, int copy, uint16_t *out)
{
	const float one = 1.0f, zero = 0.0f;
	qw_err err = {0};
	qw_status st = QW_OK;
	const qw_cuda_fp8_weight *w8 = &b->w8[copy];
	static const qw_gemm_kernel kinds[] = {QW_GEMM_AUTO, QW_GEMM_STREAM, QW_GEMM_TILE_M,
					       QW_GEMM_TILE_L, QW_GEMM_WGMMA};
	switch (how) {
	case GEMM:
	case GEMM_STREAM:
	case GEMM_TILE_M:
	case GEMM_TILE_L:
	case GEMM_WGMMA:
		if (how == GEMM_STREAM && T > 64)
			return false;
		st = qw_cuda_gemm_with(kinds[how], out, b->x, b->w[copy], T, b->N, b->K, b->s, &err);
		break;
	case BF16_BLAS:
		if (cublasGemmEx(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, b->N, T, b->K, &one, b->w[copy],
				 CUDA_R_16BF, b->K, b->x, CUDA_R_16BF, b->K, &zero, out, CUDA_R_16BF,
				 b->N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
			fail("cublasGemmEx", NULL);
		break;
	case BF16_FEW:
		if (T > QW_FEW_ROWS_MAX)
			return false;
		st = qw_cuda_few_rows_gemm(out, b->x, b->w[copy], T, b->N, b->K, b->s, &err);
		break;
	case FP8_GEMM:
		st = qw_cuda_gemm_fp8(out, b->x, w8, T, b->s, &err);
		break;
	case FP8_STREAM1:
	case FP8_STREAM2:
		st = qw_cuda_few_rows_gemm_fp8(out, b->x, w8, T, how == FP8_STREAM1 ? 1 : 2, b->s,
					       &err);
		break;
	case FP8_DEQUANT:
		st = qw_cuda_fp8_dequant(b->deq, w8, b->s, &err);
		if (st == QW_OK)
			st = qw_cuda_gemm(out, b->x, b->deq, T, b->N, b->K, b->s, &err);
		break;
	case FP8_LT:
		st = qw_cuda_fp8_lt_gemm(b->lt, out, b->x, w8, T, b->act, b->act_bytes, b->s, &err);
		break;
	}
	if (st != QW_OK)
		fail("a GEMM", &err);
	return true;
}

/* Median microseconds of RUNS runs over the weight copies (decode: all, rotating; else the
 * first); -1 when `how` cannot take the shape. */
static double time_it(bench *b, way how, int T, bool rotate)
{
	cudaEvent_t e0, e1;
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	float ms[RUNS];
	double us = -1.0;
	for (int r = -3; r < RUNS; r++) {
		CK(cudaEventRecord(e0, b->s));
		if (!run_once(b, how, T, rotate ? (r + 3) % b->copies : 0, b->out))
			goto done;
		CK(cudaEventRecord(e1, b->s));
		CK(cudaEventSynchronize(e1));
		if (r >= 0)
			CK(cudaEventElapsedTime(&ms[r], e0, e1));
	}
	us = bench_median_ms(ms, RUNS) * 1e3;
done:
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	return us;
}

static float bf16_value(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* T rows' outputs of `a` and of `b` (malloc'd host copies of their bits). */
static void outputs(bench *b, way a, way c, int T, uint16_t **o, uint16_t **r)
{
	size_t n = (size_t)T * (size_t)b->N;
	CK(cudaMemset(b->out, 0xff, n * 2));
	run_once(b, a, T, 0, b->out);
	run_once(b, c, T, 0, b->ref);
	CK(cudaStreamSynchronize(b->s));
	*o = malloc(n * 2);
	*r = malloc(n * 2);
	if (!*o || !*r)
		fail("host memory", NULL);
	CK(cudaMemcpy(*o, b->out, n * 2, cudaMemcpyDeviceToHost));
	CK(cudaMemcpy(*r, b->ref, n * 2, cudaMemcpyDeviceToHost));
}

/* max |gemm - cuBLAS| over the RMS of cuBLAS's output, at T rows */
static double against_cublas(bench *b, int T)
{
	size_t n = (size_t)T * (size_t)b->N;
	uint16_t *o, *r;
	outputs(b, GEMM, BF16_BLAS, T, &o, &r);
	double ss = 0.0, worst = 0.0;
	for (size_t i = 0; i < n; i++) {
		double a = bf16_value(o[i]), c = bf16_value(r[i]), d = fabs(a - c);
		ss += c * c;
		if (d != d)
			d = INFINITY;
		if (d > worst)
			worst = d;
	}
	free(o);
	free(r);
	return worst / sqrt(ss / (double)n + 1e-30);
}

/* How many of T rows' outputs the wgmma tiles give other bits for than the 128x128 mma.sync
 * tiles (they must give none: checked before they are timed). */
static size_t wgmma_differs(bench *b, int T)
{
	size_t n = (size_t)T * (size_t)b->N, bad = 0;
	uint16_t *o, *r;
	outputs(b, GEMM_WGMMA, GEMM_TILE_L, T, &o, &r);
	for (size_t i = 0; i < n; i++)
		bad += o[i] != r[i];
	free(o);
	free(r);
	return bad;
}

/* n bf16 values in [-a, a) from a seed */
static uint16_t *random_bf16(size_t n, float a, uint64_t seed)
{
	uint16_t *h = malloc(n * 2);
	if (!h)
		fail("host memory", NULL);
	for (size_t i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		float f = (float)((double)(seed >> 11) * 0x1p-53 * 2.0 - 1.0) * a;
		uint32_t u;
		memcpy(&u, &f, 4);
		h[i] = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
	}
	return h;
}

/* n random finite e4m3 codes (NaN ones, 0x7f and 0xff, moved one down). */
static uint8_t *random_codes(size_t n)
{
	uint8_t *q = malloc(n);
	uint64_t r = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < n; i++) {
		r = r * 6364136223846793005ull + 1442695040888963407ull;
		uint8_t c = (uint8_t)(r >> 56);
		q[i] = (c & 0x7f) == 0x7f ? (uint8_t)(c - 1) : c;
	}
	return q;
}

/* Device copies of an (N, K) weight, bf16 (random, std ~K^-1/2) and FP8 (random codes),
 * enough to rotate past the L2, and x of max_T random rows; the host keeps one of each for
 * the reference. */
static void weights(bench *b, int N, int K, int max_T)
{
	b->N = N;
	b->K = K;
	b->max_T = max_T;
	size_t bytes = (size_t)N * K * 2;
	b->copies = (int)(ROTATE_BYTES / bytes) + 1;
	b->w = malloc((size_t)b->copies * sizeof *b->w);
	b->w8 = malloc((size_t)b->copies * sizeof *b->w8);
	int sr = (N + 127) / 128, sc = (K + 127) / 128;
	float *s = malloc((size_t)sr * sc * sizeof *s);
	uint8_t *codes = random_codes(bytes / 2);
	uint16_t *wh = random_bf16((size_t)N * K, (float)(1.7 / sqrt(K)), 7);
	for (int i = 0; i < sr * sc; i++)
		s[i] = (0.05f + 0.1f * (float)(i % 7) / 7.0f) / 448.0f;
	for (int c = 0; c < b->copies; c++) {
		CK(cudaMalloc((void **)&b->w[c], bytes));
		CK(cudaMemcpy(b->w[c], wh, bytes, cudaMemcpyHostToDevice));
		uint8_t *q;
		float *ds;
		CK(cudaMalloc((void **)&q, bytes / 2));
		CK(cudaMalloc((void **)&ds, (size_t)sr * sc * 4));
		CK(cudaMemcpy(q, codes, bytes / 2, cudaMemcpyHostToDevice));
		CK(cudaMemcpy(ds, s, (size_t)sr * sc * 4, cudaMemcpyHostToDevice));
		b->w8[c] = (qw_cuda_fp8_weight){.q = q, .scale = ds, .mats = 1, .rows = N, .cols = K,
						.br = 128, .bc = 128};
	}
	b->sh = s;
	b->codes = codes;
	b->wh = wh;
	b->xh = random_bf16((size_t)max_T * K, 1.0f, 11);
	CK(cudaMalloc((void **)&b->deq, bytes));
	CK(cudaMalloc((void **)&b->x, (size_t)max_T * K * 2));
	CK(cudaMalloc((void **)&b->out, (size_t)max_T * N * 2));
	CK(cudaMalloc((void **)&b->ref, (size_t)max_T * N * 2));
	CK(cudaMemcpy(b->x, b->xh, (size_t)max_T * K * 2, cudaMemcpyHostToDevice));
	b->act_bytes = qw_cuda_fp8_lt_act_bytes(max_T, K);
	CK(cudaMalloc(&b->act, b->act_bytes));
}

static void weights_free(bench *b)
{
	for (int c = 0; c < b->copies; c++) {
		cudaFree(b->w[c]);
		cudaFree((void *)b->w8[c].q);
		cudaFree((void *)b->w8[c].scale);
	}
	free(b->w);
	free(b->w8);
	cudaFree(b->deq);
	cudaFree(b->x);
	cudaFree(b->out);
	cudaFree(b->ref);
	cudaFree(b->act);
	free(b->wh);
	free(b->xh);
	free(b->codes);
	free(b->sh);
}

// ---------------------------------------------------------------------------------------
// the CPU reference: every way is checked against it before it is timed

#define CHECK_ROWS 4   /* rows checked: all of T <= 4, else the first, two inside, the last */

/* The rows of T checked. */
static int check_rows(int T, int rows[CHECK_ROWS])
{
	if (T <= CHECK_ROWS) {
		for (int i = 0; i < T; i++)
			rows[i] = i;
		return T;
	}
	rows[0] = 0;
	rows[1] = T / 3;
	rows[2] = (2 * T) / 3;
	rows[3] = T - 1;
	return CHECK_ROWS;
}

/* ref (n_rows, N) = the checked rows of x times the bf16 weight or the FP8 one (e4m3 *
 * scale), in double: the CPU backend's definition of an FP8 weight. */
static double *reference(const bench *b, bool fp8, const int *rows, int n_rows)
{
	int N = b->N, K = b->K, sc = (K + 127) / 128;
	double *ref = malloc((size_t)n_rows * N * sizeof *ref), *w = malloc((size_t)K * sizeof *w);
	float *x = malloc((size_t)n_rows * K * sizeof *x);
	if (!ref || !w || !x)
		fail("host memory", NULL);
	for (int r = 0; r < n_rows; r++)
		for (int k = 0; k < K; k++)
			x[(size_t)r * K + k] = bf16_value(b->xh[(size_t)rows[r] * K + k]);
	for (int n = 0; n < N; n++) {
		for (int k = 0; k < K; k++)
			w[k] = fp8 ? (double)e4m3_times_2m120(b->codes[(size_t)n * K + k]) * 0x1p120 *
					     b->sh[(size_t)(n / 128) * sc + k / 128]
				   : bf16_value(b->wh[(size_t)n * K + k]);
		for (int r = 0; r < n_rows; r++) {
			const float *xr = x + (size_t)r * K;
			double acc = 0.0;
			for (int k = 0; k < K; k++)
				acc += xr[k] * w[k];
			ref[(size_t)r * N + n] = acc;
		}
	}
	free(w);
	free(x);
	return ref;
}

/* Runs `how` on T rows and holds the checked rows to ref within its tolerance; the
 * program ends on a miss (a wrong kernel's time means nothing). */
static void check_way(bench *b, way how, int T, const double *ref, const int *rows, int n_rows)
{
	int N = b->N;
	if (!run_once(b, how, T, 0, b->out))
		return;
	CK(cudaStreamSynchronize(b->s));
	uint16_t *got = malloc((size_t)N * 2);
	double ss = 0.0;
	for (size_t i = 0; i < (size_t)n_rows * N; i++)
		ss += ref[i] * ref[i];
	double rms = sqrt(ss / ((double)n_rows * N)), worst = 0.0;
	int bad = 0;
	for (int r = 0; r < n_rows; r++) {
		CK(cudaMemcpy(got, b->out + (size_t)rows[r] * N, (size_t)N * 2, cudaMemcpyDeviceToHost));
		for (int n = 0; n < N; n++) {
			double want = ref[(size_t)r * N + n], d = fabs(bf16_value(got[n]) - want);
			double tol = ways[how].rms * rms + ways[how].rel * fabs(want);
			if (!(d <= tol) && bad++ < 5)
				fprintf(stderr, "  %s T %d: row %d col %d: %g, want %g\n", ways[how].name,
					T, rows[r], n, bf16_value(got[n]), want);
			if (d != d)
				d = INFINITY;
			worst = d / rms > worst ? d / rms : worst;
		}
	}
	free(got);
	if (bad) {
		fprintf(stderr, "%s %dx%d T %d: %d values outside %.3g RMS + %.3g |ref| of the CPU "
			"reference (max %.3g RMS): not timed\n", ways[how].name, b->N, b->K, T, bad,
			ways[how].rms, ways[how].rel, worst);
		exit(1);
	}
	printf("# checked %-28s T %5d against the CPU: max |diff| %.2g RMS\n", ways[how].name, T,
	       worst);
}

/* Each way of the list checked against the reference of T rows (bf16 or FP8 weights). */
static void check_ways(bench *b, int T, bool fp8, const way *list, int n)
{
	int rows[CHECK_ROWS], n_rows = check_rows(T, rows);
	double *ref = reference(b, fp8, rows, n_rows);
	for (int i = 0; i < n; i++)
		check_way(b, list[i], T, ref, rows, n_rows);
	free(ref);
}

static void bf16(bench *b, double peak, double tflops)
{
	const bool hopper = qw_cuda_gemm_wgmma_device();
	static const int decode[] = {1, 2, 4, 8, 16, 32};
	static const int prefill[] = {64, 128, 256, 512, 1024, 2048, 8192};
	printf("# dense projections on bf16 weights, median us of %d; decode: weights from HBM, "
	       "roofline = weight bytes at %.0f GB/s; prefill: 2TNK flops against %.0f TFLOP/s\n",
	       RUNS, peak, tflops);
	printf("# gemm = qw_cuda_gemm, the backend's (stream kernel up to 32 rows, 64x128 tiles "
	       "to 128, 128x128 beyond); S: the runs of its order for the shape\n");
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		weights(b, shapes[i].N, shapes[i].K, MAX_T);
		double bytes = (double)b->N * b->K * 2;
		printf("\n## %s: N %d, K %d, S %d; gemm against cuBLAS: max |diff| %.2g rms at T 8, "
		       "%.2g at T 512\n", shapes[i].name, b->N, b->K, qw_cuda_gemm_splits(b->N, b->K),
		       against_cublas(b, 8), against_cublas(b, 512));
		printf("# %6s %9s %9s %9s %9s   %9s %9s %8s   %8s %9s\n", "T", "gemm us", "cuBLAS",
		       "few-rows", "stream", "gemm GB/s", "cuBLAS", "roof us", "gemm/rf", "cuBLAS/rf");
		for (size_t t = 0; t < sizeof decode / sizeof *decode; t++) {
			int T = decode[t];
			double ug = time_it(b, GEMM, T, true), uc = time_it(b, BF16_BLAS, T, true);
			double uf = time_it(b, BF16_FEW, T, true), us = time_it(b, GEMM_STREAM, T, true);
			double roof = bytes / peak / 1e3;
			printf("  %6d %9.1f %9.1f %9.1f %9.1f   %9.0f %9.0f %8.1f   %8.2f %9.2f\n", T, ug,
			       uc, uf, us, bytes / ug / 1e3, bytes / uc / 1e3, roof, roof / ug, roof / uc);
		}
		/* the wgmma tiles (Hopper only) are timed where they gave the mma.sync tiles' bits */
		bool wg = hopper;
		if (hopper) {
			size_t d1 = wgmma_differs(b, 129), d2 = wgmma_differs(b, 1000);
			wg = d1 == 0 && d2 == 0;
			printf("# wgmma tiles against the 128x128 tiles: %zu of %zu values differ at T "
			       "129, %zu of %zu at T 1000%s\n", d1, (size_t)129 * b->N, d2,
			       (size_t)1000 * b->N, wg ? "" : ": WRONG, not timed");
		}
		printf("# %6s %9s %9s %9s %9s %9s   %9s %9s %9s   %8s %8s %9s\n", "T", "gemm us",
		       "cuBLAS", "64x128", "128x128", "wgmma", "gemm TF/s", "cuBLAS", "wgmma",
		       "gemm/pk", "wgmma/pk", "cuBLAS/pk");
		for (size_t t = 0; t < sizeof prefill / sizeof *prefill; t++) {
			int T = prefill[t];
			double ug = time_it(b, GEMM, T, false), uc = time_it(b, BF16_BLAS, T, false);
			double um = time_it(b, GEMM_TILE_M, T, false);
			double ul = time_it(b, GEMM_TILE_L, T, false);
			double uw = wg ? time_it(b, GEMM_WGMMA, T, false) : -1.0;
			double flop = 2.0 * T * (double)b->N * b->K, tw = uw > 0 ? flop / uw / 1e6 : 0.0;
			printf("  %6d %9.1f %9.1f %9.1f %9.1f %9.1f   %9.0f %9.0f %9.0f   %8.2f %8.2f "
			       "%9.2f\n", T, ug, uc, um, ul, uw, flop / ug / 1e6, flop / uc / 1e6, tw,
			       flop / ug / 1e6 / tflops, tw / tflops, flop / uc / 1e6 / tflops);
		}
		weights_free(b);
	}
}

static void decode_fp8(bench *b, double peak)
{
	static const int tokens[] = {1, 2, 4};
	static const way bf16_ways[] = {GEMM}, fp8_ways[] = {FP8_GEMM, FP8_STREAM1, FP8_STREAM2};
	printf("# FP8 decode: the bf16 GEMM (qw_cuda_gemm) against gemm_fp8.cu's W8A16 stream (the "
	       "backend's) and the few-rows FP8 stream (1 or 2 columns a warp, the earlier kernel); "
	       "each checked against the CPU first; median us of %d; roofline: bytes over %.0f "
	       "GB/s\n", RUNS, peak);
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		if (shapes[i].N > 16384)   /* the lm_heads stay bf16 */
			continue;
		weights(b, shapes[i].N, shapes[i].K, 4);
		double b16 = (double)b->N * b->K * 2;
		double b8 = (double)b->N * b->K + ((b->N + 127) / 128) * ((b->K + 127) / 128) * 4.0;
		printf("\n## %s: N %d, K %d, S %d (FP8 order: %d)\n", shapes[i].name, b->N, b->K,
		       qw_cuda_gemm_splits(b->N, b->K), qw_cuda_gemm_fp8_splits(&b->w8[0]));
		for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++) {
			check_ways(b, tokens[t], false, bf16_ways, 1);
			check_ways(b, tokens[t], true, fp8_ways, 3);
		}
		printf("# %-18s %13s %3s  %8s %6s  %8s %6s %6s %7s  %8s %8s\n", "shape", "N x K", "T",
		       "bf16 us", "of rf", "fp8 us", "GB/s", "of rf", "speedup", "few/1 us", "few/2 us");
		for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++) {
			int T = tokens[t];
			double ub = time_it(b, GEMM, T, true), u8 = time_it(b, FP8_GEMM, T, true);
			double u1 = time_it(b, FP8_STREAM1, T, true), u2 = time_it(b, FP8_STREAM2, T, true);
			printf("  %-18s %6dx%-6d %3d  %8.1f %5.1f%%  %8.1f %6.0f %5.1f%% %6.2fx  %8.1f "
			       "%8.1f\n", shapes[i].name, b->N, b->K, T, ub, 100.0 * b16 / peak / 1e3 / ub,
			       u8, b8 / u8 / 1e3, 100.0 * b8 / peak / 1e3 / u8, ub / u8, u1, u2);
		}
		weights_free(b);
	}
}

static void prefill_fp8(bench *b, double bf16_tflops, double fp8_tflops)
{
	static const int tokens[] = {5, 64, 512, 8192};
	static const way bf16_ways[] = {GEMM};
	printf("\n# FP8 weights, more tokens: the bf16 GEMM, (c) gemm_fp8.cu's W8A16 (the backend's: "
	       "the stream up to 32 rows, its tiles beyond), (a) dequantise + the bf16 GEMM (the "
	       "backend's for blocks (c) does not take), (b) cuBLASLt FP8 (activations quantised "
	       "per token and 128; QW_CUDA_FP8_GEMM=cublaslt); each checked against the CPU first; "
	       "median us of %d; rates against %.0f (bf16) and %.0f (FP8) TFLOP/s\n", RUNS,
	       bf16_tflops, fp8_tflops);
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		if (shapes[i].N > 16384)   /* the lm_heads stay bf16 */
			continue;
		weights(b, shapes[i].N, shapes[i].K, 8192);
		printf("\n## %s: N %d, K %d\n", shapes[i].name, b->N, b->K);
		bool lt[sizeof tokens / sizeof *tokens];
		for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++) {
			int T = tokens[t];
			qw_err err = {0};
			lt[t] = false;
			if (qw_cuda_fp8_lt_supported(b->lt, &b->w8[0], T, &lt[t], &err) != QW_OK)
				fail("cuBLASLt heuristic", &err);
			way fp8_ways[] = {FP8_GEMM, FP8_DEQUANT, FP8_LT};
			check_ways(b, T, false, bf16_ways, 1);
			check_ways(b, T, true, fp8_ways, lt[t] ? 3 : 2);
		}
		printf("# %-18s %13s %5s  %9s %6s  %9s %6s %6s  %9s %6s  %9s %6s %6s\n", "shape",
		       "N x K", "T", "bf16 us", "of bf", "(c) us", "of bf", "vs bf", "(a) us", "of bf",
		       "(b) us", "of bf", "of fp8");
		for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++) {
			int T = tokens[t];
			double flop = 2.0 * T * b->N * b->K;
			double ub = time_it(b, GEMM, T, false), uc = time_it(b, FP8_GEMM, T, false);
			double ua = time_it(b, FP8_DEQUANT, T, false);
			printf("  %-18s %6dx%-6d %5d  %9.1f %5.1f%%  %9.1f %5.1f%% %5.2fx  %9.1f %5.1f%%",
			       shapes[i].name, b->N, b->K, T, ub, 100.0 * flop / ub / 1e6 / bf16_tflops,
			       uc, 100.0 * flop / uc / 1e6 / bf16_tflops, ub / uc, ua,
			       100.0 * flop / ua / 1e6 / bf16_tflops);
			if (lt[t]) {
				double ul = time_it(b, FP8_LT, T, false);
				printf("  %9.1f %5.1f%% %5.1f%%\n", ul, 100.0 * flop / ul / 1e6 / bf16_tflops,
				       100.0 * flop / ul / 1e6 / fp8_tflops);
			} else {
				printf("  %9s (cuBLASLt has no block-scaled FP8 GEMM here)\n", "-");
			}
		}
		weights_free(b);
	}
}

int main(int argc, char **argv)
{
	double peak = 4287.0, bf16_tflops = 786.6, fp8_tflops = 1573.0;
	bool fp8 = false;
	static const struct option opts[] = {
		{"fp8", no_argument, NULL, 'f'},         {"copy", required_argument, NULL, 'c'},
		{"bf16-tflops", required_argument, NULL, 'b'},
		{"fp8-tflops", required_argument, NULL, 'e'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}};
	for (int o; (o = getopt_long(argc, argv, "fc:b:e:h", opts, NULL)) != -1;) {
		switch (o) {
		case 'f': fp8 = true; break;
		case 'c': peak = atof(optarg); break;
		case 'b': bf16_tflops = atof(optarg); break;
		case 'e': fp8_tflops = atof(optarg); break;
		default:
			printf("usage: %s [--fp8] [--copy GB/s (4287)] [--bf16-tflops R (786.6)] "
			       "[--fp8-tflops R (1573)] [copy GB/s]\n", argv[0]);
			return o == 'h' ? 0 : 2;
		}
	}
	if (optind < argc)   /* the copy bandwidth, as before the options */
		peak = atof(argv[optind]);
	bench b = {0};
	void *ws;
	qw_err err = {0};
	CK(cudaStreamCreateWithFlags(&b.s, cudaStreamNonBlocking));
	if (cublasCreate(&b.blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(b.blas, b.s))
		return 1;
	CK(cudaMalloc(&ws, BLAS_WS));
	if (cublasSetWorkspace(b.blas, ws, BLAS_WS) != CUBLAS_STATUS_SUCCESS)
		return 1;
	if (qw_cuda_fp8_lt_create(&b.lt, ws, BLAS_WS, &err) != QW_OK)
		fail("cuBLASLt", &err);
	if (fp8) {
		decode_fp8(&b, peak);
		prefill_fp8(&b, bf16_tflops, fp8_tflops);
	} else {
		bf16(&b, peak, bf16_tflops);
	}
	qw_cuda_fp8_lt_destroy(b.lt);
	cublasDestroy(b.blas);
	cudaFree(ws);
	return 0;
}
