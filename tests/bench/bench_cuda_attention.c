/* bench_cuda_attention.c - times the CUDA attention kernels (kernels/cuda/attention.cu) on
 * Qwen3-VL-235B and 30B shapes (Hq 64 or 32, Hkv 4, D 128, 16-token blocks) and the vision
 * tower's (16 heads of 72), and prints napkin math: decode as GB/s of K/V read against the
 * GPU's peak, with and without the split into chunk states (and the partial states' bytes),
 * a mixed step, prefill and segments as TFLOP/s of the two matmuls.  Not a test: correctness
 * is tests/gpu/test_cuda_attention's, invariance test_cuda_invariance's.  Built by `scons
 * tests`; run build/tests/bench/bench_cuda_attention [peak GB/s, default 4800 (H200)].
 *
 * Each timing is the median of 10 runs after 2 warm-ups, L2 flushed (a 256 MiB memset)
 * before each; the cache holds a constant (timing does not depend on values).
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kernels.h"
#include "tests/bench/bench_util.h"

#define REPS 10

static void *flush_buf;

static void *dalloc(size_t bytes, int byte)
{
	void *p;
	CK(cudaMalloc(&p, bytes));
	CK(cudaMemset(p, byte, bytes));
	return p;
}

static void *dcopy(const void *src, size_t bytes)
{
	void *p = dalloc(bytes, 0);
	CK(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
	return p;
}

/* What one timed call runs. */
typedef struct job {
	int segments;                /* 0: paged attention, 1: segment attention */
	qw_cuda_batch b;             /* paged: the batch (device arrays) */
	uint16_t *out, *q, *k, *v;   /* k, v: the cache (paged) or activations (segments) */
	void *ws;
	size_t ws_bytes;
	int32_t *seg_start;          /* segments: (n_segs + 1,) on the device */
	int n_segs, max_seg, T, Hq, Hkv, D;
} job;

static void run(const job *j)
{
	qw_err err = {0};
	qw_status st = j->segments
		? qw_cuda_segment_attention(j->out, j->q, j->k, j->v, j->seg_start, j->n_segs,
					    j->max_seg, j->T, j->Hq, j->D, 0, &err)
		: qw_cuda_attention(j->out, j->q, j->k, j->v, &j->b, j->Hq, j->Hkv, j->D,
				    0.08838834764f, j->ws, j->ws_bytes, 0, &err);
	if (st != QW_OK) {
		fprintf(stderr, "launch failed: %s\n", err.msg);
		exit(1);
	}
}

/* Median microseconds of one call. */
static float time_us(const job *j)
{
	cudaEvent_t a, b;
	float ms[REPS];
	CK(cudaEventCreate(&a));
	CK(cudaEventCreate(&b));
	for (int i = 0; i < 2; i++)
		run(j);
	for (int i = 0; i < REPS; i++) {
		CK(cudaMemset(flush_buf, i, 256u << 20));
		CK(cudaEventRecord(a, 0));
		run(j);
		CK(cudaEventRecord(b, 0));
		CK(cudaEventSynchronize(b));
		CK(cudaEventElapsedTime(&ms[i], a, b));
	}
	CK(cudaEventDestroy(a));
	CK(cudaEventDestroy(b));
	return bench_median_ms(ms, REPS) * 1000.0f;
}

/* n_seqs sequences, sequence s with ctx[s] cached tokens computing n[s] new ones (kv_index
 * ctx .. ctx+n-1), blocks laid out contiguously, Hq query heads over 4 KV heads of 128.
 * Returns K/V bytes read once and matmul FLOPs. */
static job paged_job(int n_seqs, const int *ctx, const int *n, int Hq, double *kv_bytes,
		     double *flops)
{
	const int Hkv = 4, D = 128, bs = 16, width = Hkv * D;
	int T = 0, nb = 1, max_len = 0, max_n = 0;
	for (int s = 0; s < n_seqs; s++) {
		int len = ctx[s] + n[s];
		T += n[s];
		nb = (len + bs - 1) / bs > nb ? (len + bs - 1) / bs : nb;
		max_len = len > max_len ? len : max_len;
		max_n = n[s] > max_n ? n[s] : max_n;
	}
	int32_t *seq = malloc((size_t)T * 4), *idx = malloc((size_t)T * 4), *slot = malloc((size_t)T * 4);
	int32_t *start = malloc((size_t)(n_seqs + 1) * 4), *tables = malloc((size_t)n_seqs * nb * 4);
	*kv_bytes = *flops = 0.0;
	for (int s = 0, t = 0; s < n_seqs; s++) {
		start[s] = t;
		for (int i = 0; i < nb; i++)
			tables[s * nb + i] = s * nb + i;
		for (int i = 0; i < n[s]; i++, t++) {
			int j = ctx[s] + i;
			seq[t] = s;
			idx[t] = j;
			slot[t] = tables[s * nb + j / bs] * bs + j % bs;
			*flops += 4.0 * Hq * D * (j + 1);
		}
		*kv_bytes += 2.0 * (ctx[s] + n[s]) * width * 2;
	}
	start[n_seqs] = T;
	job j = {0};
	const size_t slots = (size_t)n_seqs * nb * bs;
	j.k = dalloc(slots * width * 2, 0x3c);
	j.v = dalloc(slots * width * 2, 0x3c);
	j.q = dalloc((size_t)T * Hq * D * 2, 0x3c);
	j.out = dalloc((size_t)T * Hq * D * 2, 0);
	j.b = (qw_cuda_batch){.n_tokens = T, .n_seqs = n_seqs, .max_blocks = nb, .block_size = bs,
			      .max_kv_len = max_len, .max_seq_tokens = max_n,
			      .seq = dcopy(seq, (size_t)T * 4), .kv_index = dcopy(idx, (size_t)T * 4),
			      .slot = dcopy(slot, (size_t)T * 4),
			      .seq_start = dcopy(start, (size_t)(n_seqs + 1) * 4),
			      .block_tables = dcopy(tables, (size_t)n_seqs * nb * 4)};
	j.ws_bytes = qw_cuda_attention_ws_bytes(T, Hq, D, max_len);
	j.ws = j.ws_bytes ? dalloc(j.ws_bytes, 0) : NULL;
	j.T = T;
	j.Hq = Hq;
	j.Hkv = Hkv;
	j.D = D;
	free(seq);
	free(idx);
	free(slot);
	free(start);
	free(tables);
	return j;
}

/* n_seqs decodes at context ctx (or a prefill chunk of n tokens after ctx: n_seqs 1). */
static job uniform_job(int n_seqs, int ctx, int n, int Hq, double *kv_bytes, double *flops)
{
	int *c = malloc((size_t)n_seqs * sizeof *c), *m = malloc((size_t)n_seqs * sizeof *m);
	for (int s = 0; s < n_seqs; s++) {
		c[s] = ctx;
		m[s] = n;
	}
	job j = paged_job(n_seqs, c, m, Hq, kv_bytes, flops);
	free(c);
	free(m);
	return j;
}

/* us with the split allowed (ws as the backend gives it) and with none (no ws) */
static void time_split(job *j, float *us_split, float *us_whole)
{
	*us_split = time_us(j);
	void *ws = j->ws;
	j->ws = NULL;
	*us_whole = time_us(j);
	j->ws = ws;
}

static job segment_job(int n_segs, int len, double *flops)
{
	const int H = 16, D = 72, T = n_segs * len;
	int32_t *start = malloc((size_t)(n_segs + 1) * 4);
	for (int s = 0; s <= n_segs; s++)
		start[s] = s * len;
	job j = {.segments = 1, .n_segs = n_segs, .max_seg = len, .T = T, .Hq = H, .D = D};
	const size_t n = (size_t)T * H * D * 2;
	j.q = dalloc(n, 0x3c);
	j.k = dalloc(n, 0x3c);
	j.v = dalloc(n, 0x3c);
	j.out = dalloc(n, 0);
	j.seg_start = dcopy(start, (size_t)(n_segs + 1) * 4);
	*flops = 4.0 * n_segs * (double)len * len * H * D;
	free(start);
	return j;
}

static void free_job(job *j)
{
	CK(cudaFree(j->q));
	CK(cudaFree(j->k));
	CK(cudaFree(j->v));
	CK(cudaFree(j->out));
	CK(cudaFree(j->ws));
	CK(cudaFree(j->seg_start));
	CK(cudaFree((void *)j->b.seq));
	CK(cudaFree((void *)j->b.kv_index));
	CK(cudaFree((void *)j->b.slot));
	CK(cudaFree((void *)j->b.seq_start));
	CK(cudaFree((void *)j->b.block_tables));
}

int main(int argc, char **argv)
{
	const double peak = argc > 1 ? atof(argv[1]) : 4800.0;
	struct cudaDeviceProp prop;
	CK(cudaGetDeviceProperties(&prop, 0));
	printf("# %s, %d SMs; decode GB/s against %.0f GB/s peak\n", prop.name,
	       prop.multiProcessorCount, peak);
	CK(cudaMalloc(&flush_buf, 256u << 20));

	/* decode: the split path (each chunk of 256 keys a partial state, folded in order by
	 * split_reduce) where the step's CTAs would not fill the GPU, against the same step
	 * unsplit; partial MB: the states written and read back */
	static const int heads[] = {64, 32};
	static const int seqs[] = {1, 8, 16, 64}, ctxs[] = {256, 1024, 4096, 32768, 131072};
	for (int h = 0; h < 2; h++) {
		printf("# decode: Hq %d, Hkv 4, D 128, block 16 (%s)\n", heads[h],
		       heads[h] == 64 ? "235B" : "30B");
		printf("# %6s %8s %10s %10s %10s %8s %10s\n", "seqs", "context", "us", "unsplit us",
		       "GB/s", "%peak", "partial MB");
		for (int a = 0; a < 4; a++)
			for (int c = 0; c < 5; c++) {
				if ((long)seqs[a] * ctxs[c] > 4L << 20)
					continue;
				double bytes, flops;
				job j = uniform_job(seqs[a], ctxs[c] - 1, 1, heads[h], &bytes, &flops);
				float us, whole;
				time_split(&j, &us, &whole);
				double part = j.ws_bytes ? 2.0 * j.ws_bytes / 1e6 : 0.0;
				printf("  %6d %8d %10.1f %10.1f %10.0f %7.1f%% %10.1f\n", seqs[a], ctxs[c], us,
				       whole, bytes / us / 1e3, 100.0 * bytes / us / 1e3 / peak, part);
				free_job(&j);
			}
	}

	/* a mixed step: decodes beside a prefill chunk take the prefill kernel */
	printf("# mixed: 16 decodes at 4096 keys beside a 512-token prefill chunk (Hq 64)\n");
	{
		int ctx[17], n[17];
		for (int s = 0; s < 16; s++) {
			ctx[s] = 4095;
			n[s] = 1;
		}
		ctx[16] = 0;
		n[16] = 512;
		double bytes, flops;
		job j = paged_job(17, ctx, n, 64, &bytes, &flops);
		float us = time_us(&j);
		printf("  %10.1f us, %10.0f GB/s of K/V\n", us, bytes / us / 1e3);
		free_job(&j);
	}

	printf("# prefill chunk (one sequence): Hq 64, Hkv 4, D 128, block 16\n");
	printf("# %6s %8s %10s %10s\n", "tokens", "cached", "us", "TFLOP/s");
	const int chunk[][2] = {{512, 0}, {2048, 0}, {2048, 8192}, {8192, 0}};
	for (int i = 0; i < 4; i++) {
		double bytes, flops;
		job j = uniform_job(1, chunk[i][1], chunk[i][0], 64, &bytes, &flops);
		float us = time_us(&j);
		printf("  %6d %8d %10.1f %10.1f\n", chunk[i][0], chunk[i][1], us, flops / us / 1e6);
		free_job(&j);
	}

	printf("# segments (vision tower): 16 heads of 72\n");
	printf("# %6s %8s %10s %10s\n", "segs", "rows", "us", "TFLOP/s");
	const int segs[][2] = {{16, 256}, {4, 1024}, {1, 4096}};
	for (int i = 0; i < 3; i++) {
		double flops;
		job j = segment_job(segs[i][0], segs[i][1], &flops);
		float us = time_us(&j);
		printf("  %6d %8d %10.1f %10.1f\n", segs[i][0], segs[i][1], us, flops / us / 1e6);
		free_job(&j);
	}
	CK(cudaFree(flush_buf));
	return 0;
}
