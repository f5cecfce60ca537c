/* bench_cuda_moe.c - one MoE layer (qw_cuda_moe, kernels/cuda/moe.cu) at decode batch sizes on
 * the Qwen3-VL-30B-A3B and 235B-A22B layer shapes, random weights made on the GPU, against
 * the byte roofline: the router and the experts the batch chooses (expected over uniform
 * routing), read once, over the copy bandwidth.  The L2 is flushed before each run and each
 * run routes other tokens, as in a real step.  Median of 30.  Not a test.  Built by
 * `scons tests`; run
 *     build/tests/bench/bench_cuda_moe [copy GB/s, default 4287]
 * (bench_cuda_moe_* are the same over build-time variants of the decode tile; see
 * tests/SConscript.)
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cuda/kernels.h"
#include "tests/bench/bench_util.h"

#define RUNS 30
#define FLUSH_BYTES (256ull << 20)

static void ok(qw_status st, const qw_err *err)
{
	if (st != QW_OK) {
		fprintf(stderr, "bench_cuda_moe: %s\n", err->msg);
		exit(1);
	}
}

static uint16_t *dev_random(size_t n, uint64_t seed, double std, cudaStream_t s)
{
	uint16_t *p;
	qw_err err = {0};
	CK(cudaMalloc((void **)&p, n * 2));
	ok(qw_cuda_fill_normal(p, n, seed, 0.0, std, s, &err), &err);
	return p;
}

int main(int argc, char **argv)
{
	double peak = argc > 1 ? atof(argv[1]) : 4287.0;
	static const struct { const char *name; int H, E, k, I; } layers[] = {
		{"30B-A3B", 2048, 128, 8, 768}, {"235B-A22B", 4096, 128, 8, 1536}};
	static const int tokens[] = {1, 2, 4, 8, 16, 64};
	const int n_tok = sizeof tokens / sizeof *tokens, max_t = 64;
	cudaStream_t s;
	CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
	void *flush;
	CK(cudaMalloc(&flush, FLUSH_BYTES));
	cudaEvent_t a, b;
	CK(cudaEventCreate(&a));
	CK(cudaEventCreate(&b));
	printf("# one MoE layer: median us of %d runs, L2 flushed; roofline: router + expected "
	       "chosen experts' bytes over %.0f GB/s\n", RUNS, peak);
	printf("# %-10s %6s %10s %10s %10s %8s\n", "layer", "tokens", "us", "roofline", "GB/s",
	       "of peak");
	for (size_t l = 0; l < sizeof layers / sizeof *layers; l++) {
		int H = layers[l].H, E = layers[l].E, k = layers[l].k, I = layers[l].I;
		uint16_t *router = dev_random((size_t)E * H, 1, 0.05, s);
		uint16_t *gate_up = dev_random((size_t)E * H * 2 * I, 2, 0.02, s);
		uint16_t *down = dev_random((size_t)E * I * H, 3, 0.02, s);
		/* RUNS + 1 batches of distinct tokens, so each run routes afresh */
		uint16_t *x = dev_random((size_t)(RUNS + 1) * max_t * H, 4, 1.0, s), *out;
		CK(cudaMalloc((void **)&out, (size_t)max_t * H * 2));
		size_t ws_bytes = qw_cuda_moe_ws_bytes(max_t, H, E, k, I);
		void *ws;
		CK(cudaMalloc(&ws, ws_bytes));
		for (int ti = 0; ti < n_tok; ti++) {
			int T = tokens[ti];
			float ms[RUNS];
			qw_err err = {0};
			for (int r = -1; r < RUNS; r++) {
				qw_cuda_moe_args m = {.T = T, .H = H, .E = E, .top_k = k, .I = I,
						      .renormalize = true,
						      .x = x + (size_t)(r + 1) * max_t * H,
						      .router = router, .gate_up = gate_up,
						      .down = down, .out = out};
				CK(cudaMemsetAsync(flush, r & 0xff, FLUSH_BYTES, s));
				CK(cudaEventRecord(a, s));
				ok(qw_cuda_moe(&m, ws, ws_bytes, s, &err), &err);
				CK(cudaEventRecord(b, s));
				CK(cudaEventSynchronize(b));
				if (r >= 0)
					CK(cudaEventElapsedTime(&ms[r], a, b));
			}
			double us = bench_median_ms(ms, RUNS) * 1e3;
			double experts = E * (1.0 - pow(1.0 - (double)k / E, T));
			double bytes = (double)E * H * 2 + experts * 3.0 * H * I * 2;
			double roof = bytes / peak / 1e3;
			printf("  %-10s %6d %10.1f %10.1f %10.0f %7.1f%%\n", layers[l].name, T, us, roof,
			       bytes / us / 1e3, 100.0 * roof / us);
		}
		cudaFree(router);
		cudaFree(gate_up);
		cudaFree(down);
		cudaFree(x);
		cudaFree(out);
		cudaFree(ws);
	}
	return 0;
}
