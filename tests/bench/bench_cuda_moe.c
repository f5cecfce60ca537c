/* bench_cuda_moe.c - one MoE layer (qw_cuda_moe, kernels/cuda/moe.cu) at decode batch sizes on
 * the Qwen3-VL-30B-A3B and 235B-A22B layer shapes, random weights made on the GPU, against
 * the byte roofline: the router and the experts the batch chooses (expected over uniform
 * routing), read once, over the copy bandwidth.  The L2 is flushed before each run and each
 * run routes other tokens, as in a real step.  Median of 30.  Not a test.  Built by
 * `scons tests`; run
 *     build/tests/bench/bench_cuda_moe [copy GB/s, default 4287]
 * (bench_cuda_moe_* are the same over build-time variants of the decode tile; see
 * tests/SConscript.)  Before a layer is timed, its output at every batch size is checked
 * against the CPU reference within test_cuda_moe's tolerance (tests/gpu/moe_check.h): a
 * variant that computes something else is reported and not timed (exit 1).
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels/cuda/kernels.h"
#include "tests/bench/bench_util.h"
#include "tests/gpu/moe_check.h"

#define RUNS 30
#define FLUSH_BYTES (256ull << 20)

static void ok(qw_status st, const qw_err *err)
{
	if (st != QW_OK) {
		fprintf(stderr, "bench_cuda_moe: %s\n", err->msg);
		exit(1);
	}
}

/* A host copy of n bf16 values on the device. */
static uint16_t *to_host(const uint16_t *d, size_t n)
{
	uint16_t *h = malloc(n * 2);
	if (!h) {
		fprintf(stderr, "bench_cuda_moe: out of memory for a host copy\n");
		exit(1);
	}
	CK(cudaMemcpy(h, d, n * 2, cudaMemcpyDeviceToHost));
	return h;
}

/* The layer's output for the first max_t tokens of x at each batch size, against the CPU
 * reference on host copies of the same weights; exits unless every one is within the
 * tolerance. */
static void check_layer(const char *name, int H, int E, int k, int I, const uint16_t *router,
			const uint16_t *gate_up, const uint16_t *down, const uint16_t *x,
			const int *tokens, int n_tok, int max_t, uint16_t *out, void *ws,
			size_t ws_bytes, cudaStream_t s)
{
	uint16_t *h_router = to_host(router, (size_t)E * H);
	uint16_t *h_gate_up = to_host(gate_up, (size_t)E * H * 2 * I);
	uint16_t *h_down = to_host(down, (size_t)E * I * H);
	uint16_t *h_x = to_host(x, (size_t)max_t * H), *got = malloc((size_t)max_t * H * 2);
	float *ref = malloc((size_t)max_t * H * sizeof *ref);
	qw_tensor tr = moe_check_tensor(h_router, 2, E, H, 0);
	qw_tensor tgu = moe_check_tensor(h_gate_up, 3, E, H, 2 * (int64_t)I);
	qw_tensor td = moe_check_tensor(h_down, 3, E, I, H);
	qw_moe_weights w = {.router = &tr, .gate_up = &tgu, .down = &td, .n_experts = E,
			    .top_k = k, .inter = I, .renormalize = 1};
	qw_err err = {0};
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (!got || !ref)
		ok(qw_fail(&err, QW_E_NOMEM, "out of memory for the check"), &err);
	ok(moe_check_reference(&w, H, h_x, max_t, cpus > 0 ? (int)cpus : 1, ref, &err), &err);
	bool all = true;
	for (int ti = 0; ti < n_tok; ti++) {
		int T = tokens[ti];
		qw_cuda_moe_args m = {.T = T, .H = H, .E = E, .top_k = k, .I = I,
				      .renormalize = true, .x = x, .router = router,
				      .gate_up = gate_up, .down = down, .out = out};
		CK(cudaMemsetAsync(out, 0xff, (size_t)T * H * 2, s));   /* NaN until written */
		ok(qw_cuda_moe(&m, ws, ws_bytes, s, &err), &err);
		CK(cudaStreamSynchronize(s));
		CK(cudaMemcpy(got, out, (size_t)T * H * 2, cudaMemcpyDeviceToHost));
		all &= moe_check_compare(name, T, H, ref, got);
	}
	free(h_router);
	free(h_gate_up);
	free(h_down);
	free(h_x);
	free(got);
	free(ref);
	if (!all) {
		fprintf(stderr, "bench_cuda_moe: %s: this build's MoE kernels do not compute the "
			"layer (outputs out of tolerance above); not timed\n", name);
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
		CK(cudaStreamSynchronize(s));   /* the random weights are made */
		char what[64];   /* the check's lines are '#' lines of the table */
		snprintf(what, sizeof what, "# check %s", layers[l].name);
		check_layer(what, H, E, k, I, router, gate_up, down, x, tokens, n_tok, max_t, out,
			    ws, ws_bytes, s);
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
