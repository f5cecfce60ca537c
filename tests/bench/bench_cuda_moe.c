/* bench_cuda_moe.c - one MoE layer (qw_cuda_moe, kernels/cuda/moe.cu and moe_gemm.cu) on the
 * Qwen3-VL-30B-A3B and 235B-A22B layer shapes at T = 1, 8, 64, 256 and 8192 tokens, random
 * weights, against the byte roofline: the router and the experts the batch chooses
 * (expected over uniform routing), read once, over the copy bandwidth; and the tensor work
 * (2 T k 3 H I flops) as TFLOP/s, which is what bounds the large batches.  The L2 is flushed
 * before each run and each run routes other tokens, as in a real step.  Median of 30.  Not
 * a test.  Built by `scons tests`; run
 *     build/tests/bench/bench_cuda_moe [--fp8] [copy GB/s, default 4287]
 * With --fp8 the experts are FP8 (e4m3 with a random fp32 scale per 128 x 128 block, made
 * on the host) and each size is timed twice, FP8 and bf16 on the same experts dequantised
 * (bf16_rn(e4m3 * s)), the FP8 roofline counting FP8 bytes (and the scales'); without it,
 * bf16 experts made on the GPU.  (bench_cuda_moe_* are the same over build-time variants of
 * the decode tiles; see tests/SConscript.)  Before a layer is timed, its bf16 output for the
 * first 64 tokens is checked against the CPU reference within test_cuda_moe's tolerance
 * (tests/gpu/moe_check.h), larger batches' first 64 rows against that output (batch
 * invariance), and FP8 outputs against the bf16 ones bit for bit (bench_cuda_moe_fp8_blocksum,
 * whose FP8 tiles sum a block of rows before its scale: FP8 against the CPU reference within
 * MOE_CHECK_ATOL_FP8, and larger batches' first 64 rows against that output): a variant that
 * computes something else is reported and not timed (exit 1).
 *
 * Each path is forced (qw_cuda_moe_args.path): the plain one (routing, the two grouped
 * GEMMs and the combine as separate kernels) at every size, and beside it, at the sizes the
 * fused decode kernel takes (T <= 8: kernels/cuda/moe_fused.cu), the fused one, each row
 * with its share of the roofline and the fused row with its speed-up over the plain one.
 * The fused output is checked first: the plain bf16 path's bits at that size, bf16 and FP8
 * experts alike (the fused kernel is the library's in every variant: it dequantises FP8 to
 * the bf16 weights, block-sum build or not).
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cuda/kernels.h"
#include "tests/bench/bench_util.h"
#include "tests/gpu/moe_check.h"

#ifndef QW_MOE_FP8_BLOCKSUM   /* the build's FP8 tiles sum before the scale (moe_gemm.cu) */
#define QW_MOE_FP8_BLOCKSUM 0
#endif

#define RUNS 30
#define FLUSH_BYTES (256ull << 20)
#define CHECK_T 64         /* tokens checked against the CPU reference */
#define BATCHES 4          /* distinct batches of tokens the runs cycle through */
#define BLOCK 128          /* FP8 blocks */

static const int tokens[] = {1, 8, 64, 256, 8192};
#define N_TOK (int)(sizeof tokens / sizeof *tokens)
#define MAX_T 8192

static void ok(qw_status st, const qw_err *err)
{
	if (st != QW_OK) {
		fprintf(stderr, "bench_cuda_moe: %s\n", err->msg);
		exit(1);
	}
}

static void *must(void *p, const char *what)
{
	if (!p) {
		fprintf(stderr, "bench_cuda_moe: out of memory for %s\n", what);
		exit(1);
	}
	return p;
}

/* A host copy of n bf16 values on the device. */
static uint16_t *to_host(const uint16_t *d, size_t n)
{
	uint16_t *h = must(malloc(n * 2), "a host copy");
	CK(cudaMemcpy(h, d, n * 2, cudaMemcpyDeviceToHost));
	return h;
}

static uint16_t *dev_random(size_t n, uint64_t seed, double std, cudaStream_t s)
{
	uint16_t *p;
	qw_err err = {0};
	CK(cudaMalloc((void **)&p, n * 2));
	ok(qw_cuda_fill_normal(p, n, seed, 0.0, std, s, &err), &err);
	return p;
}

static void *dev_copy(const void *host, size_t bytes)
{
	return must(moe_check_to_device(host, bytes), "a device copy");
}

typedef struct layer {
	const char *name;
	int H, E, k, I;
	uint16_t *router, *gu16, *dn16;     /* device bf16: (E, H), (E, H, 2I), (E, I, H) */
	uint8_t *gu8, *dn8;                 /* device e4m3 (--fp8) */
	float *gus, *dns;                   /* their block scales */
	uint16_t *x, *out;                  /* (BATCHES, MAX_T, H), (MAX_T, H) */
	void *ws;
	size_t ws_bytes;
	uint32_t *sync;                     /* the fused kernel's counters */
} layer;

#define FUSED_T 8   /* the most tokens the fused kernel takes */

static qw_cuda_moe_args args(const layer *L, bool fp8, bool fused, int batch, int T)
{
	qw_cuda_moe_args a = {.T = T, .H = L->H, .E = L->E, .top_k = L->k, .I = L->I,
			      .renormalize = true,
			      .x = L->x + (size_t)batch * MAX_T * (size_t)L->H, .router = L->router,
			      .gate_up = L->gu16, .down = L->dn16, .out = L->out, .sync = L->sync,
			      .path = fused ? QW_CUDA_MOE_FUSED : QW_CUDA_MOE_PLAIN};
	if (fp8) {
		a.gate_up = L->gu8;
		a.down = L->dn8;
		a.gate_up_scales = (qw_cuda_moe_scales){L->gus, BLOCK, BLOCK};
		a.down_scales = (qw_cuda_moe_scales){L->dns, BLOCK, BLOCK};
	}
	return a;
}

/* One run of batch 0's first T tokens into host (T, H). */
static void run_once(const layer *L, bool fp8, bool fused, int T, uint16_t *host,
		     cudaStream_t s)
{
	qw_cuda_moe_args a = args(L, fp8, fused, 0, T);
	qw_err err = {0};
	CK(cudaMemsetAsync(L->out, 0xff, (size_t)T * L->H * 2, s));   /* NaN until written */
	ok(qw_cuda_moe(&a, L->ws, L->ws_bytes, s, &err), &err);
	CK(cudaStreamSynchronize(s));
	CK(cudaMemcpy(host, L->out, (size_t)T * L->H * 2, cudaMemcpyDeviceToHost));
}

/* The checks of the header; exits unless all hold. */
static void check_layer(const layer *L, bool fp8, cudaStream_t s)
{
	int H = L->H, E = L->E, I = L->I;
	uint16_t *h_router = to_host(L->router, (size_t)E * H);
	uint16_t *h_gu = to_host(L->gu16, (size_t)E * H * 2 * I);
	uint16_t *h_dn = to_host(L->dn16, (size_t)E * I * H);
	uint16_t *h_x = to_host(L->x, (size_t)CHECK_T * H);
	uint16_t *first = must(malloc((size_t)CHECK_T * H * 2), "the check");
	uint16_t *first8 = must(malloc((size_t)CHECK_T * H * 2), "the check");
	uint16_t *got = must(malloc((size_t)MAX_T * H * 2), "the check");
	uint16_t *got8 = must(malloc((size_t)MAX_T * H * 2), "the check");
	uint16_t *gotf = must(malloc((size_t)FUSED_T * H * 2), "the check");
	float *ref = must(malloc((size_t)CHECK_T * H * sizeof *ref), "the check");
	qw_tensor tr = moe_check_tensor(h_router, 2, E, H, 0);
	qw_tensor tgu = moe_check_tensor(h_gu, 3, E, H, 2 * (int64_t)I);
	qw_tensor td = moe_check_tensor(h_dn, 3, E, I, H);
	qw_moe_weights w = {.router = &tr, .gate_up = &tgu, .down = &td, .n_experts = E,
			    .top_k = L->k, .inter = I, .renormalize = 1};
	qw_err err = {0};
	ok(moe_check_reference(&w, H, h_x, CHECK_T, moe_check_threads(), ref, &err), &err);
	char what[96];   /* the check's lines are '#' lines of the table */
	snprintf(what, sizeof what, "# check %s", L->name);
	bool all = true;
	for (int ti = 0; all && ti < N_TOK; ti++) {
		int T = tokens[ti], c = T < CHECK_T ? T : CHECK_T;
		run_once(L, false, false, T, got, s);
		if (T <= CHECK_T)
			all = moe_check_compare(what, T, H, ref, got, MOE_CHECK_ATOL_BF16);
		if (T == CHECK_T)
			memcpy(first, got, (size_t)CHECK_T * H * 2);
		if (T > CHECK_T)   /* checked through the first CHECK_T rows */
			all = moe_check_same_bits(what, got, first, (size_t)c * H, H);
		if (all && T <= FUSED_T) {   /* the fused kernel: the plain path's bits */
			run_once(L, false, true, T, gotf, s);
			all = moe_check_same_bits(what, gotf, got, (size_t)T * H, H);
		}
		if (all && fp8 && !QW_MOE_FP8_BLOCKSUM) {
			run_once(L, true, false, T, got8, s);
			all = moe_check_same_bits(what, got8, got, (size_t)T * H, H);
		} else if (all && fp8) {   /* its own sums: the reference, then invariance */
			run_once(L, true, false, T, got8, s);
			if (T <= CHECK_T)
				all = moe_check_compare(what, T, H, ref, got8, MOE_CHECK_ATOL_FP8);
			if (T == CHECK_T)
				memcpy(first8, got8, (size_t)CHECK_T * H * 2);
			if (T > CHECK_T)
				all = moe_check_same_bits(what, got8, first8, (size_t)c * H, H);
		}
		if (all && fp8 && T <= FUSED_T) {
			run_once(L, true, true, T, gotf, s);
			all = moe_check_same_bits(what, gotf, got, (size_t)T * H, H);
		}
	}
	free(h_router);
	free(h_gu);
	free(h_dn);
	free(h_x);
	free(first);
	free(first8);
	free(got);
	free(got8);
	free(gotf);
	free(ref);
	if (!all) {
		fprintf(stderr, "bench_cuda_moe: %s: this build's MoE kernels do not compute the "
			"layer (above); not timed\n", L->name);
		exit(1);
	}
}

/* Median microseconds of RUNS runs at T, each on other tokens after an L2 flush. */
static double time_us(const layer *L, bool fp8, bool fused, int T, void *flush,
		      cudaStream_t s, cudaEvent_t a, cudaEvent_t b)
{
	float ms[RUNS];
	qw_err err = {0};
	for (int r = -1; r < RUNS; r++) {
		qw_cuda_moe_args m = args(L, fp8, fused, (r + 1) % BATCHES, T);
		CK(cudaMemsetAsync(flush, r & 0xff, FLUSH_BYTES, s));
		CK(cudaEventRecord(a, s));
		ok(qw_cuda_moe(&m, L->ws, L->ws_bytes, s, &err), &err);
		CK(cudaEventRecord(b, s));
		CK(cudaEventSynchronize(b));
		if (r >= 0)
			CK(cudaEventElapsedTime(&ms[r], a, b));
	}
	return bench_median_ms(ms, RUNS) * 1e3;
}

/* The layer's weights: bf16 made on the GPU, or (fp8) FP8 made on the host and their
 * dequantised bf16. */
static void make_weights(layer *L, bool fp8, cudaStream_t s)
{
	size_t nr = (size_t)L->E * L->H, ngu = nr * 2 * L->I, nd = nr * L->I;
	L->router = dev_random(nr, 1, 0.05, s);
	if (!fp8) {
		L->gu16 = dev_random(ngu, 2, 0.02, s);
		L->dn16 = dev_random(nd, 3, 0.02, s);
		return;
	}
	int threads = moe_check_threads();
	moe_check_fp8 m[2];
	const int64_t shape[2][2] = {{L->H, 2 * (int64_t)L->I}, {L->I, L->H}};
	for (int i = 0; i < 2; i++) {
		if (!moe_check_fp8_make(&m[i], L->E, shape[i][0], shape[i][1], BLOCK, BLOCK, 0.05f, 7,
					2 + 2 * (uint64_t)i, threads))
			must(NULL, "the FP8 experts");
		uint16_t *deq = must(moe_check_fp8_bf16(&m[i], threads), "the dequantised experts");
		size_t n = (size_t)(m[i].count * m[i].rows * m[i].cols);
		size_t sb = (size_t)m[i].count * moe_check_fp8_scales(&m[i]) * 4;
		*(i ? &L->dn8 : &L->gu8) = dev_copy(m[i].q, n);
		*(i ? &L->dns : &L->gus) = dev_copy(m[i].s, sb);
		*(i ? &L->dn16 : &L->gu16) = dev_copy(deq, n * 2);
		free(deq);
		moe_check_fp8_free(&m[i]);
	}
}

static void bench_layer(layer *L, bool fp8, double peak, void *flush, cudaStream_t s)
{
	cudaEvent_t a, b;
	CK(cudaEventCreate(&a));
	CK(cudaEventCreate(&b));
	int H = L->H, E = L->E, k = L->k, I = L->I;
	make_weights(L, fp8, s);
	L->x = dev_random((size_t)BATCHES * MAX_T * H, 4, 1.0, s);
	CK(cudaMalloc((void **)&L->out, (size_t)MAX_T * H * 2));
	L->ws_bytes = qw_cuda_moe_ws_bytes(MAX_T, H, E, k, I);
	CK(cudaMalloc(&L->ws, L->ws_bytes));
	CK(cudaMalloc((void **)&L->sync, QW_CUDA_MOE_SYNC_BYTES));
	CK(cudaMemset(L->sync, 0, QW_CUDA_MOE_SYNC_BYTES));
	CK(cudaStreamSynchronize(s));   /* the random weights are made */
	check_layer(L, fp8, s);
	double expert = 3.0 * H * I;     /* weights of one expert */
	for (int ti = 0; ti < N_TOK; ti++) {
		int T = tokens[ti];
		double chosen = E * (1.0 - pow(1.0 - (double)k / E, T));
		double flop = 2.0 * T * k * expert;
		double us16 = time_us(L, false, false, T, flush, s, a, b);
		for (int f8 = 0; f8 <= (int)fp8; f8++) {
			double plain = f8 ? time_us(L, true, false, T, flush, s, a, b) : us16;
			/* bytes a weight, its scale's share counted: one fp32 per 128 x 128 */
			double per = f8 ? 1.0 + 4.0 / (BLOCK * BLOCK) : 2.0;
			double bytes = (double)E * H * 2 + chosen * expert * per;
			double roof = bytes / peak / 1e3;
			for (int fused = 0; fused <= (T <= FUSED_T); fused++) {
				double us = fused ? time_us(L, f8, true, T, flush, s, a, b) : plain;
				printf("  %-10s %6d %5s %5s %10.1f %10.1f %8.0f %7.1f%% %8.1f", L->name, T,
				       f8 ? "fp8" : "bf16", fused ? "fused" : "plain", us, roof,
				       bytes / us / 1e3, 100.0 * roof / us, flop / us / 1e6);
				if (f8 && !fused)
					printf(" %7.2fx bf16", us16 / us);
				if (fused)
					printf(" %7.2fx plain", plain / us);
				printf("\n");
			}
		}
	}
	void *dev[] = {L->router, L->gu16, L->dn16, L->gu8, L->dn8, L->gus, L->dns, L->x, L->out,
		       L->ws, L->sync};
	for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
		cudaFree(dev[i]);
	cudaEventDestroy(a);
	cudaEventDestroy(b);
}

int main(int argc, char **argv)
{
	bool fp8 = argc > 1 && strcmp(argv[1], "--fp8") == 0;
	double peak = argc > 1 + (int)fp8 ? atof(argv[1 + (int)fp8]) : 4287.0;
	if (peak <= 0) {
		fprintf(stderr, "usage: bench_cuda_moe [--fp8] [copy GB/s, default 4287]\n");
		return 2;
	}
	static const struct { const char *name; int H, E, k, I; } shapes[] = {
		{"30B-A3B", 2048, 128, 8, 768}, {"235B-A22B", 4096, 128, 8, 1536}};
	cudaStream_t s;
	CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
	void *flush;
	CK(cudaMalloc(&flush, FLUSH_BYTES));
	printf("# one MoE layer: median us of %d runs, L2 flushed; roofline: router + expected "
	       "chosen experts' bytes over %.0f GB/s%s\n", RUNS, peak,
	       fp8 ? "; fp8: FP8 experts (128 x 128 blocks), bf16: the same dequantised" : "");
	printf("# %-10s %6s %5s %5s %10s %10s %8s %8s %8s  %s\n", "layer", "tokens", "exp", "path",
	       "us", "roofline", "GB/s", "of peak", "TFLOP/s", "speed-up");
	for (size_t l = 0; l < sizeof shapes / sizeof *shapes; l++) {
		layer L = {.name = shapes[l].name, .H = shapes[l].H, .E = shapes[l].E,
			   .k = shapes[l].k, .I = shapes[l].I};
		bench_layer(&L, fp8, peak, flush, s);
	}
	cudaFree(flush);
	return 0;
}
