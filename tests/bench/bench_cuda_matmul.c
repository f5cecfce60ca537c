/* bench_cuda_matmul.c - the dense projections of a step on the Qwen3-VL-30B-A3B and
 * 235B-A22B shapes.  Not a test.  Built by `scons tests`; run
 *     build/tests/bench/bench_cuda_matmul [copy GB/s, default 4287]
 *     build/tests/bench/bench_cuda_matmul --fp8 [--copy GBPS] [--bf16-tflops R] [--fp8-tflops R]
 * (the ceilings from tests/bench/gpu_ceilings.py on the same GPU).
 *
 * Without --fp8: decode (1 to 4 tokens) on bf16 weights, cuBLAS (cublasGemmEx, as the
 * backend calls it for more tokens) against the few-rows kernel (kernels/cuda/few_rows_gemm.cu),
 * against the copy bandwidth (the weight's bytes are the step's only traffic).
 *
 * With --fp8: the same weights as FP8 (e4m3, 128 x 128 block scales).  Decode: the bf16
 * path the backend takes (few-rows where it takes the shape, else cuBLAS) against the FP8
 * stream with one and two columns a warp: us, GB/s and the fraction of the byte roofline
 * (FP8 bytes and scales, or bf16 bytes, over the copy bandwidth), and the FP8 speed-up.
 * More tokens (5, 64, 512, 8192): cuBLAS on bf16, (a) dequantise + cuBLAS, (b) cuBLASLt's
 * block-scaled FP8 GEMM with the activations' quantisation (or why there is none): us and
 * the fraction of the bf16 and FP8 tensor-core rates.
 *
 * Weights rotate over copies filling more than the L2, so each run reads from HBM as in a
 * real step.  Median of RUNS after three warm-ups.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kernels.h"
#include "tests/bench/bench_util.h"

#define RUNS 50
#define ROTATE_BYTES (256ull << 20)   /* weight copies cycled through: 5x the L2 */
#define BLAS_WS (32u << 20)           /* the backend's cuBLAS workspace */

typedef struct shape {
	const char *name;
	int N, K;
} shape;

static const shape shapes[] = {
	{"30B q/k/v fused", 5120, 2048}, {"30B q", 4096, 2048}, {"30B k or v", 512, 2048},
	{"30B o", 2048, 4096},           {"235B q/k/v fused", 9216, 4096},
	{"235B o", 4096, 8192},          {"lm_head", 151936, 2048},
};

/* What a run needs: the copies of one weight, bf16 and FP8, and scratch. */
typedef struct bench {
	cudaStream_t s;
	cublasHandle_t blas;
	qw_cuda_fp8_lt *lt;
	int N, K, copies;
	uint16_t **w;               /* (copies,) bf16 (N, K) */
	qw_cuda_fp8_weight *w8;     /* (copies,) FP8 (N, K) and scales */
	uint16_t *x, *out, *deq;    /* (T, K), (T, N), the dequantised weight */
	void *act;                  /* cuBLASLt's quantised activations */
	size_t act_bytes;
} bench;

typedef enum way { BF16_BLAS, BF16_FEW, FP8_STREAM1, FP8_STREAM2, FP8_DEQUANT, FP8_LT } way;

static void fail(const char *what, const qw_err *err)
{
	fprintf(stderr, "%s: %s\n", what, err ? err->msg : "failed");
	exit(1);
}

static void run_once(bench *b, way how, int T, int copy)
{
	const float one = 1.0f, zero = 0.0f;
	qw_err err = {0};
	const qw_cuda_fp8_weight *w8 = &b->w8[copy];
	switch (how) {
	case BF16_BLAS:
	case FP8_DEQUANT:
		if (how == FP8_DEQUANT && qw_cuda_fp8_dequant(b->deq, w8, b->s, &err) != QW_OK)
			fail("dequantise", &err);
		if (cublasGemmEx(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, b->N, T, b->K, &one,
				 how == FP8_DEQUANT ? b->deq : b->w[copy], CUDA_R_16BF, b->K, b->x,
				 CUDA_R_16BF, b->K, &zero, b->out, CUDA_R_16BF, b->N, CUBLAS_COMPUTE_32F,
				 CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
			fail("cublasGemmEx", NULL);
		break;
	case BF16_FEW:
		if (qw_cuda_few_rows_gemm(b->out, b->x, b->w[copy], T, b->N, b->K, b->s, &err) != QW_OK)
			fail("few-rows gemm", &err);
		break;
	case FP8_STREAM1:
	case FP8_STREAM2:
		if (qw_cuda_few_rows_gemm_fp8(b->out, b->x, w8, T, how == FP8_STREAM1 ? 1 : 2, b->s,
					      &err) != QW_OK)
			fail("few-rows gemm (fp8)", &err);
		break;
	case FP8_LT:
		if (qw_cuda_fp8_lt_gemm(b->lt, b->out, b->x, w8, T, b->act, b->act_bytes, b->s, &err) !=
		    QW_OK)
			fail("cuBLASLt fp8 gemm", &err);
		break;
	}
}

/* Median microseconds of RUNS runs over rotating weight copies. */
static double time_it(bench *b, way how, int T)
{
	cudaEvent_t e0, e1;
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	float ms[RUNS];
	for (int r = -3; r < RUNS; r++) {
		CK(cudaEventRecord(e0, b->s));
		run_once(b, how, T, (r + 3) % b->copies);
		CK(cudaEventRecord(e1, b->s));
		CK(cudaEventSynchronize(e1));
		if (r >= 0)
			CK(cudaEventElapsedTime(&ms[r], e0, e1));
	}
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	return bench_median_ms(ms, RUNS) * 1e3;
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

/* Device copies of an (N, K) weight, bf16 and FP8, enough to rotate past the L2. */
static void weights(bench *b, int N, int K, int max_T)
{
	b->N = N;
	b->K = K;
	size_t bytes = (size_t)N * K * 2;
	b->copies = (int)(ROTATE_BYTES / bytes) + 1;
	b->w = malloc((size_t)b->copies * sizeof *b->w);
	b->w8 = malloc((size_t)b->copies * sizeof *b->w8);
	int sr = (N + 127) / 128, sc = (K + 127) / 128;
	float *s = malloc((size_t)sr * sc * sizeof *s);
	uint8_t *codes = random_codes(bytes / 2);
	for (int i = 0; i < sr * sc; i++)
		s[i] = (0.05f + 0.1f * (float)(i % 7) / 7.0f) / 448.0f;
	for (int c = 0; c < b->copies; c++) {
		CK(cudaMalloc((void **)&b->w[c], bytes));
		CK(cudaMemset(b->w[c], 0x3c, bytes));
		uint8_t *q;
		float *ds;
		CK(cudaMalloc((void **)&q, bytes / 2));
		CK(cudaMalloc((void **)&ds, (size_t)sr * sc * 4));
		CK(cudaMemcpy(q, codes, bytes / 2, cudaMemcpyHostToDevice));
		CK(cudaMemcpy(ds, s, (size_t)sr * sc * 4, cudaMemcpyHostToDevice));
		b->w8[c] = (qw_cuda_fp8_weight){.q = q, .scale = ds, .mats = 1, .rows = N, .cols = K,
						.br = 128, .bc = 128};
	}
	free(s);
	free(codes);
	CK(cudaMalloc((void **)&b->deq, bytes));
	CK(cudaMalloc((void **)&b->x, (size_t)max_T * K * 2));
	CK(cudaMalloc((void **)&b->out, (size_t)max_T * N * 2));
	CK(cudaMemset(b->x, 0x3c, (size_t)max_T * K * 2));   /* bf16 ~0.01: finite sums */
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
	cudaFree(b->act);
}

static void decode_bf16(bench *b, double peak)
{
	static const int tokens[] = {1, 2, 4};
	printf("# dense projections of a decode step: median us of %d, weights from HBM; "
	       "roofline: weight bytes over %.0f GB/s\n", RUNS, peak);
	printf("# %-18s %6s %7s   %10s %10s   %10s %10s %8s\n", "shape (N x K)", "", "tokens",
	       "cuBLAS us", "few-rows", "cuBLAS GB/s", "few GB/s", "roofline");
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		weights(b, shapes[i].N, shapes[i].K, 4);
		size_t bytes = (size_t)b->N * b->K * 2;
		for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++) {
			int T = tokens[t];
			double ub = time_it(b, BF16_BLAS, T), uf = time_it(b, BF16_FEW, T);
			printf("  %-18s %6dx%-6d %3d   %10.1f %10.1f   %10.0f %10.0f %8.1f\n",
			       shapes[i].name, b->N, b->K, T, ub, uf, bytes / ub / 1e3, bytes / uf / 1e3,
			       bytes / peak / 1e3);
		}
		weights_free(b);
	}
}

static void decode_fp8(bench *b, double peak)
{
	static const int tokens[] = {1, 2, 4};
	printf("# FP8 decode: the bf16 path the backend takes against the FP8 stream (1 or 2 "
	       "columns a warp); median us of %d; roofline: bytes over %.0f GB/s\n", RUNS, peak);
	printf("# %-18s %13s %3s  %8s %5s %6s  %8s %8s %6s %6s %7s\n", "shape", "N x K", "T",
	       "bf16 us", "path", "of rf", "fp8/1 us", "fp8/2 us", "GB/s", "of rf", "speedup");
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		weights(b, shapes[i].N, shapes[i].K, 4);
		double b16 = (double)b->N * b->K * 2;
		double b8 = (double)b->N * b->K + ((b->N + 127) / 128) * ((b->K + 127) / 128) * 4.0;
		for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++) {
			int T = tokens[t];
			bool few = qw_cuda_few_rows_gemm_takes(T, b->N, b->K, b->x, b->w[0], b->out);
			double ub = time_it(b, few ? BF16_FEW : BF16_BLAS, T);
			double u1 = time_it(b, FP8_STREAM1, T), u2 = time_it(b, FP8_STREAM2, T);
			double u8 = u1 < u2 ? u1 : u2;
			printf("  %-18s %6dx%-6d %3d  %8.1f %5s %5.1f%%  %8.1f %8.1f %6.0f %5.1f%% %6.2fx\n",
			       shapes[i].name, b->N, b->K, T, ub, few ? "few" : "blas",
			       100.0 * b16 / peak / 1e3 / ub, u1, u2, b8 / u8 / 1e3,
			       100.0 * b8 / peak / 1e3 / u8, ub / u8);
		}
		weights_free(b);
	}
}

static void prefill_fp8(bench *b, double bf16_tflops, double fp8_tflops)
{
	static const int tokens[] = {5, 64, 512, 8192};
	printf("# FP8 weights, more tokens: cuBLAS on bf16, (a) dequantise + cuBLAS, (b) cuBLASLt "
	       "FP8 (activations quantised per token and 128); median us of %d; rates against "
	       "%.0f (bf16) and %.0f (FP8) TFLOP/s\n", RUNS, bf16_tflops, fp8_tflops);
	printf("# %-18s %13s %5s  %9s %6s  %9s %6s  %9s %6s %6s\n", "shape", "N x K", "T",
	       "bf16 us", "of bf", "(a) us", "of bf", "(b) us", "of bf", "of fp8");
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		if (shapes[i].N > 16384)   /* the lm_head stays bf16 */
			continue;
		weights(b, shapes[i].N, shapes[i].K, 8192);
		for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++) {
			int T = tokens[t];
			double flop = 2.0 * T * b->N * b->K;
			double ub = time_it(b, BF16_BLAS, T), ua = time_it(b, FP8_DEQUANT, T);
			printf("  %-18s %6dx%-6d %5d  %9.1f %5.1f%%  %9.1f %5.1f%%", shapes[i].name, b->N,
			       b->K, T, ub, 100.0 * flop / ub / 1e6 / bf16_tflops, ua,
			       100.0 * flop / ua / 1e6 / bf16_tflops);
			bool yes = false;
			qw_err err = {0};
			if (qw_cuda_fp8_lt_supported(b->lt, &b->w8[0], T, &yes, &err) != QW_OK)
				fail("cuBLASLt heuristic", &err);
			if (yes) {
				double ul = time_it(b, FP8_LT, T);
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
		decode_bf16(&b, peak);
	}
	qw_cuda_fp8_lt_destroy(b.lt);
	cublasDestroy(b.blas);
	cudaFree(ws);
	return 0;
}
