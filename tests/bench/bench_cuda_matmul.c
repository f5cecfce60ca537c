/* bench_cuda_matmul.c - the dense projections of a decode step, cuBLAS (cublasGemmEx, as the
 * backend calls it for more tokens) against the few-rows kernel (kernels/cuda/few_rows_gemm.cu),
 * at 1 to 4 tokens on the Qwen3-VL-30B-A3B and 235B-A22B projection shapes, against the
 * copy bandwidth (the weight's bytes are the step's only traffic).  Weights rotate over
 * copies filling more than the L2, so each run reads from HBM as in a real step.  Median of
 * 50 runs.  Not a test.  Built by `scons tests`; run
 *     build/tests/bench/bench_cuda_matmul [copy GB/s, default 4287]
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cuda/kernels.h"
#include "tests/bench/bench_util.h"

#define RUNS 50
#define ROTATE_BYTES (256ull << 20)   /* weight copies cycled through: 5x the L2 */

typedef struct shape {
	const char *name;
	int N, K;
} shape;

/* median microseconds of RUNS calls over rotating weight copies; cublas or the kernel */
static double time_it(cublasHandle_t blas, cudaStream_t s, bool use_blas, int T, int N, int K,
		      uint16_t *out, const uint16_t *x, uint16_t **w, int copies)
{
	cudaEvent_t a, b;
	CK(cudaEventCreate(&a));
	CK(cudaEventCreate(&b));
	float ms[RUNS];
	const float one = 1.0f, zero = 0.0f;
	qw_err err = {0};
	for (int r = -3; r < RUNS; r++) {
		const uint16_t *wr = w[(r + 3) % copies];
		CK(cudaEventRecord(a, s));
		if (use_blas) {
			if (cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, wr, CUDA_R_16BF,
					 K, x, CUDA_R_16BF, K, &zero, out, CUDA_R_16BF, N,
					 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
				fprintf(stderr, "cublasGemmEx failed\n");
				exit(1);
			}
		} else if (qw_cuda_few_rows_gemm(out, x, wr, T, N, K, s, &err) != QW_OK) {
			fprintf(stderr, "%s\n", err.msg);
			exit(1);
		}
		CK(cudaEventRecord(b, s));
		CK(cudaEventSynchronize(b));
		if (r >= 0)
			CK(cudaEventElapsedTime(&ms[r], a, b));
	}
	cudaEventDestroy(a);
	cudaEventDestroy(b);
	return bench_median_ms(ms, RUNS) * 1e3;
}

int main(int argc, char **argv)
{
	double peak = argc > 1 ? atof(argv[1]) : 4287.0;
	static const shape shapes[] = {
		{"30B q/k/v fused", 5120, 2048}, {"30B q", 4096, 2048}, {"30B k or v", 512, 2048},
		{"30B o", 2048, 4096},           {"235B q/k/v fused", 9216, 4096},
		{"235B o", 4096, 8192},          {"lm_head", 151936, 2048},
	};
	static const int tokens[] = {1, 2, 4};
	cudaStream_t s;
	cublasHandle_t blas;
	void *blas_ws;
	CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
	if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(blas, s))
		return 1;
	CK(cudaMalloc(&blas_ws, 32u << 20));
	if (cublasSetWorkspace(blas, blas_ws, 32u << 20) != CUBLAS_STATUS_SUCCESS)
		return 1;
	uint16_t *x, *out;
	CK(cudaMalloc((void **)&x, 8 * 8192 * 2));
	CK(cudaMalloc((void **)&out, 8 * 151936 * 2));
	CK(cudaMemset(x, 0x3c, 8 * 8192 * 2));   /* bf16 ~0.01: finite sums */
	printf("# dense projections of a decode step: median us of %d, weights from HBM; "
	       "roofline: weight bytes over %.0f GB/s\n", RUNS, peak);
	printf("# %-18s %6s %7s   %10s %10s   %10s %10s %8s\n", "shape (N x K)", "", "tokens",
	       "cuBLAS us", "few-rows", "cuBLAS GB/s", "few GB/s", "roofline");
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		int N = shapes[i].N, K = shapes[i].K;
		size_t bytes = (size_t)N * K * 2;
		int copies = (int)(ROTATE_BYTES / bytes) + 1;
		uint16_t **w = malloc((size_t)copies * sizeof *w);
		for (int c = 0; c < copies; c++) {
			CK(cudaMalloc((void **)&w[c], bytes));
			CK(cudaMemset(w[c], 0x3c, bytes));
		}
		for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++) {
			int T = tokens[t];
			double ub = time_it(blas, s, true, T, N, K, out, x, w, copies);
			double uf = time_it(blas, s, false, T, N, K, out, x, w, copies);
			printf("  %-18s %6dx%-6d %3d   %10.1f %10.1f   %10.0f %10.0f %8.1f\n",
			       shapes[i].name, N, K, T, ub, uf, bytes / ub / 1e3, bytes / uf / 1e3,
			       bytes / peak / 1e3);
		}
		for (int c = 0; c < copies; c++)
			cudaFree(w[c]);
		free(w);
	}
	cublasDestroy(blas);
	return 0;
}
