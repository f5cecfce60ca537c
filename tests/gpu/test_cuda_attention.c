/* test_cuda_attention.c - the CUDA attention kernels (kernels/cuda/attention.cu) against the
 * CPU reference backend: KV-cache writes (bit-exact), paged causal GQA attention over mixed
 * batches of prefill chunks and decodes (tiny and real shapes, block sizes 1 to 256, contexts
 * up to 40000 tokens so the split-context path runs), and the vision tower's attention within
 * segments.  Part of `scons test-gpu`.
 *
 * Inputs are random bf16 values from a printed seed (fresh each run; QW_TEST_SEED=<n> repeats
 * one); both sides see the same values, the CPU in fp32 with double accumulation.  Slots of
 * the GPU cache that no token owns, and the outputs, hold NaN bit patterns before each run,
 * so a kernel that reads outside its sequence or leaves a row unwritten fails.
 *
 * Tolerance (bf16 outputs): |gpu - cpu| <= ATOL + RTOL * |cpu|.  The kernels round the
 * softmax weights P to bf16 (relative error <= 2^-8 each, summed from the rounded values so
 * they stay normalised: the output moves by at most 2 * 2^-8 * max|V| = 0.0078 in the worst,
 * fully correlated case and by far less for random data) and the output to bf16 (2^-8
 * relative); scores are exact bf16 products summed in fp32.  V lies in [-1, 1], so
 * ATOL 8e-3 covers the worst case, RTOL 1e-2 the output rounding (observed errors stay
 * under 3e-3).  Query heads alternate between flat, moderate and sharp softmaxes (scores of
 * std ~0.2, 0.7, 2.7), and every fourth head is a "needle" that picks out one key (mostly
 * beside a multiple of 64, where tiles and splits meet), so a kernel that drops, repeats or
 * misplaces even a single key moves some outputs by O(0.1) and fails.
 */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/kernels.h"

#define ATOL 8e-3
#define RTOL 1e-2
#define MAX_REPORTED 10   /* mismatches printed before a comparison stops */

#define CK(call)                                                                           \
	do {                                                                               \
		cudaError_t ck_ = (call);                                                  \
		if (ck_ != cudaSuccess)                                                    \
			fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #call,               \
				 cudaGetErrorString(ck_));                                 \
	} while (0)

#define OK(call)                                                                           \
	do {                                                                               \
		qw_err ok_err_ = {0};                                                      \
		qw_err *err = &ok_err_;                                                    \
		if ((call) != QW_OK)                                                       \
			fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #call, ok_err_.msg);  \
	} while (0)

static qw_backend *ref;   /* the CPU backend */
static uint64_t base_seed;

// -- random bf16 values ---------------------------------------------------------------------

static uint64_t rng;

static uint64_t next_u64(void)
{
	uint64_t z = (rng += 0x9E3779B97F4A7C15ull);   /* splitmix64 */
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static int rand_below(int n)
{
	return (int)(next_u64() % (uint64_t)n);
}

static uint16_t to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	u += 0x7FFFu + ((u >> 16) & 1u);   /* round to nearest even; inputs are finite */
	return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* A random bf16 value in [-a, a]: its bits in *bits, its value returned. */
static float rand_bf16(float a, uint16_t *bits)
{
	double x = (double)(next_u64() >> 11) * 0x1p-53 * 2.0 - 1.0;
	*bits = to_bf16((float)(x * a));
	return from_bf16(*bits);
}

static void shuffle(int *v, int n)
{
	for (int i = n - 1; i > 0; i--) {
		int j = rand_below(i + 1), x = v[i];
		v[i] = v[j];
		v[j] = x;
	}
}

/* Seeds the stream for one test from the run's seed and the test's number; prints both. */
static void seed_test(const char *name, int salt)
{
	rng = base_seed * 1000003u + (uint64_t)salt;
	print_message("%s: seed %llu (QW_TEST_SEED=%llu repeats this run)\n", name,
		      (unsigned long long)rng, (unsigned long long)base_seed);
}

/* Query head h's scale: scores of std about 0.2, 0.7 and 2.7 in turn. */
static float q_scale(int h)
{
	static const float s[3] = {0.6f, 2.0f, 8.0f};
	return s[h % 3];
}

/* Every fourth query head is a needle: 16 times one key (of its KV head), which then
 * outscores every other key by far, so the output is that key's V and a kernel that loses
 * or misplaces that one key fails. */
static bool is_needle(int h)
{
	return h % 4 == 3;
}

/* The key a needle picks among n: mostly beside a multiple of 64 (where the kernels' tiles
 * and splits begin and end), else the first, the last or any. */
static int needle_key(int n)
{
	int r = rand_below(8);
	if (r == 0 || n < 64)
		return rand_below(n);
	if (r == 1)
		return n - 1;
	if (r == 2)
		return 0;
	int j = 64 * (1 + rand_below(n / 64)) - rand_below(2);
	return j < n ? j : n - 1;
}

/* A needle's query row (D values) from the key row kbits. */
static void needle_row(float *q, uint16_t *qbits, const uint16_t *kbits, int D)
{
	for (int d = 0; d < D; d++) {
		qbits[d] = to_bf16(16.0f * from_bf16(kbits[d]));
		q[d] = from_bf16(qbits[d]);
	}
}

// -- comparing ------------------------------------------------------------------------------

/* gpu (bf16, rows of `cols`) against cpu (fp32): |gpu - cpu| <= ATOL + RTOL * |cpu| for
 * every value.  Prints the first mismatches (row, column) and the largest error; returns
 * how many failed (counting stops after MAX_REPORTED). */
static int compare(const char *what, const uint16_t *gpu, const float *cpu, size_t n, int cols)
{
	int bad = 0;
	double worst = 0.0;
	size_t worst_at = 0;
	for (size_t i = 0; i < n; i++) {
		double g = from_bf16(gpu[i]), c = cpu[i], e = fabs(g - c);
		if (!(e <= ATOL + RTOL * fabs(c))) {   /* NaN fails */
			if (bad < MAX_REPORTED)
				print_message("  %s mismatch at row %zu col %zu: gpu %.6g cpu %.6g "
					      "(bits %04x)\n", what, i / (size_t)cols, i % (size_t)cols,
					      g, c, gpu[i]);
			if (++bad == MAX_REPORTED)
				break;
		}
		if (e > worst || e != e) {
			worst = e;
			worst_at = i;
		}
	}
	print_message("  %s: %zu values, max |gpu - cpu| %.3g at row %zu col %zu, %s\n", what, n,
		      worst, worst_at / (size_t)cols, worst_at % (size_t)cols,
		      bad ? "FAILED" : "ok");
	return bad;
}

/* Bit-exact comparison of n bf16 values. */
static int compare_exact(const char *what, const uint16_t *got, const uint16_t *want, size_t n,
			 int cols)
{
	int bad = 0;
	for (size_t i = 0; i < n && bad < MAX_REPORTED; i++)
		if (got[i] != want[i]) {
			print_message("  %s differs at row %zu col %zu: %04x, want %04x\n", what,
				      i / (size_t)cols, i % (size_t)cols, got[i], want[i]);
			bad++;
		}
	print_message("  %s: %zu values, %s\n", what, n, bad ? "FAILED" : "exact");
	return bad;
}

static void *dev_copy(const void *src, size_t bytes)
{
	void *p = NULL;
	CK(cudaMalloc(&p, bytes ? bytes : 16));
	if (bytes)
		CK(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
	return p;
}

/* A CPU activation (rows, cols) holding vals. */
static qw_act cpu_act(int rows, int cols, const float *vals)
{
	qw_act a;
	OK(ref->act_alloc(ref, rows, cols, &a, err));
	if (vals)
		OK(ref->act_write(ref, &a, vals, err));
	return a;
}

// -- paged attention --------------------------------------------------------------------------

/* One step: sequences with `ctx` tokens already cached, `n` new ones (a prefill chunk when
 * n > 1, a decode when n == 1 and ctx > 0). */
typedef struct seq_spec {
	int ctx, n;
} seq_spec;

typedef struct attn_case {
	const char *name;
	int D, Hq, Hkv, block_size;
	int n_seqs;
	seq_spec seqs[12];
} attn_case;

static const attn_case attn_cases[] = {
	{"tiny D32 4/2 heads, bs 16, mixed", 32, 4, 2, 16, 11,
	 {{0, 300}, {100, 37}, {0, 1}, {1, 1}, {14, 1}, {15, 1}, {16, 1}, {999, 1}, {4999, 1},
	  {63, 64}, {2000, 5}}},
	{"tiny D32 4/2 heads, bs 1, mixed", 32, 4, 2, 1, 6,
	 {{0, 150}, {30, 17}, {0, 1}, {4999, 1}, {64, 1}, {777, 2}}},
	{"tiny D32 4/2 heads, bs 16, decodes (split)", 32, 4, 2, 16, 6,
	 {{4999, 1}, {1200, 1}, {0, 1}, {63, 1}, {64, 1}, {20, 8}}},
	{"tiny D32 4/2 heads, bs 1, decodes (split)", 32, 4, 2, 1, 4,
	 {{4000, 1}, {513, 1}, {1, 1}, {2047, 3}}},
	{"real D128 64/4 heads, bs 16, mixed", 128, 64, 4, 16, 6,
	 {{50, 300}, {0, 1}, {4999, 1}, {1000, 1}, {17, 3}, {3000, 2}}},
	{"real D128 64/4 heads, bs 1, mixed", 128, 64, 4, 1, 4,
	 {{0, 200}, {2500, 1}, {99, 17}, {0, 1}}},
	{"real D128 64/4 heads, bs 16, prefill split", 128, 64, 4, 16, 4,
	 {{2000, 60}, {0, 5}, {4000, 1}, {511, 1}}},
	{"real D128 64/4 heads, bs 1, decodes (split)", 128, 64, 4, 1, 4,
	 {{4999, 1}, {2500, 1}, {0, 1}, {700, 1}}},
	{"real D128 64/4 heads, bs 16, long decode", 128, 64, 4, 16, 1, {{39999, 1}}},
	{"real D128 64/4 heads, bs 1, long decode", 128, 64, 4, 1, 2, {{40000, 1}, {12345, 1}}},
	{"D64 8/1 heads, bs 256, mixed", 64, 8, 1, 256, 4,
	 {{0, 200}, {1000, 1}, {3000, 1}, {300, 17}}},
	{"D64 4/4 heads, bs 24, mixed", 64, 4, 4, 24, 3, {{0, 100}, {2000, 1}, {40, 9}}},
	{"tiny D32 4/2 heads, bs 7, mixed", 32, 4, 2, 7, 4, {{0, 90}, {1000, 1}, {13, 14}, {6, 1}}},
	{"D256 16/2 heads, bs 16, mixed", 256, 16, 2, 16, 3, {{0, 100}, {2000, 1}, {700, 3}}},
	{"D256 16/2 heads, bs 16, decodes (split)", 256, 16, 2, 16, 2, {{3000, 1}, {1, 1}}},
	{"D96 12/4 heads, bs 16, mixed", 96, 12, 4, 16, 3, {{0, 130}, {1500, 1}, {10, 4}}},
	{"D96 12/4 heads, bs 32, decodes (split)", 96, 12, 4, 32, 2, {{2600, 1}, {5, 5}}},
	{"D32 16/1 heads, bs 16, mixed", 32, 16, 1, 16, 3, {{0, 70}, {900, 1}, {33, 2}}},
};

/* Runs one step of a case on both backends: the cache filled with the sequences' contexts,
 * the step's K/V written by kv_write (compared exactly), then attention (compared within
 * tolerance). */
static void run_attention(const attn_case *c, int salt)
{
	seed_test(c->name, salt);
	const int D = c->D, Hq = c->Hq, Hkv = c->Hkv, bs = c->block_size, S = c->n_seqs;
	const int width = Hkv * D, qwidth = Hq * D;

	/* blocks: each sequence's in a shuffled order, plus spare ones nobody owns */
	int order[12], nblk[12], total_blocks = 4, max_blocks = 1, T = 0, n_fill = 0;
	int max_kv = 0, max_seq_tokens = 0;
	for (int s = 0; s < S; s++) {
		int len = c->seqs[s].ctx + c->seqs[s].n;
		order[s] = s;
		nblk[s] = (len + bs - 1) / bs;
		total_blocks += nblk[s];
		max_blocks = nblk[s] + 1 > max_blocks ? nblk[s] + 1 : max_blocks;
		T += c->seqs[s].n;
		n_fill += c->seqs[s].ctx;
		max_kv = len > max_kv ? len : max_kv;
		max_seq_tokens = c->seqs[s].n > max_seq_tokens ? c->seqs[s].n : max_seq_tokens;
	}
	shuffle(order, S);   /* the batch's sequence order */
	int *perm = malloc((size_t)total_blocks * sizeof *perm);
	for (int i = 0; i < total_blocks; i++)
		perm[i] = i;
	shuffle(perm, total_blocks);
	const int spare = perm[total_blocks - 1];
	int32_t *tables = malloc((size_t)S * (size_t)max_blocks * sizeof *tables);
	for (int s = 0, next = 0; s < S; s++)
		for (int i = 0; i < max_blocks; i++)
			tables[s * max_blocks + i] = i < nblk[order[s]] ? perm[next++] : spare;
	const size_t n_slots = (size_t)total_blocks * (size_t)bs, cache_n = n_slots * (size_t)width;

	/* the cached contexts: the GPU's image, NaN where no token is; the CPU's as fill rows */
	uint16_t *kimg = malloc(cache_n * 2), *vimg = malloc(cache_n * 2);
	memset(kimg, 0xFF, cache_n * 2);
	memset(vimg, 0xFF, cache_n * 2);
	float *fk = malloc(((size_t)n_fill + 1) * (size_t)width * sizeof(float));
	float *fv = malloc(((size_t)n_fill + 1) * (size_t)width * sizeof(float));
	int32_t *fslot = malloc(((size_t)n_fill + 1) * sizeof *fslot);
	/* the step: T tokens, batch rows in sequence order */
	float *q = malloc((size_t)T * (size_t)qwidth * sizeof(float));
	float *k = malloc((size_t)T * (size_t)width * sizeof(float));
	float *v = malloc((size_t)T * (size_t)width * sizeof(float));
	uint16_t *qb = malloc((size_t)T * (size_t)qwidth * 2);
	uint16_t *kb = malloc((size_t)T * (size_t)width * 2);
	uint16_t *vb = malloc((size_t)T * (size_t)width * 2);
	int32_t *seq = malloc((size_t)T * 4), *kv_index = malloc((size_t)T * 4);
	int32_t *slot = malloc((size_t)T * 4);
	int32_t seq_start[13];
	int f = 0, t = 0;
	for (int s = 0; s < S; s++) {
		const seq_spec *sp = &c->seqs[order[s]];
		const int32_t *table = tables + s * max_blocks;
		seq_start[s] = t;
		for (int j = 0; j < sp->ctx + sp->n; j++) {
			const int32_t sl = table[j / bs] * bs + j % bs;
			const bool fill = j < sp->ctx;
			float *kr = fill ? fk + (size_t)f * width : k + (size_t)t * width;
			float *vr = fill ? fv + (size_t)f * width : v + (size_t)t * width;
			for (int i = 0; i < width; i++) {
				uint16_t bits;
				kr[i] = rand_bf16(1.0f, &bits);
				if (fill)
					kimg[(size_t)sl * width + i] = bits;
				else
					kb[(size_t)t * width + i] = bits;
				vr[i] = rand_bf16(1.0f, &bits);
				if (fill)
					vimg[(size_t)sl * width + i] = bits;
				else
					vb[(size_t)t * width + i] = bits;
			}
			if (fill) {
				fslot[f++] = sl;
				continue;
			}
			for (int h = 0; h < Hq; h++) {
				float *qr = q + (size_t)t * qwidth + (size_t)h * D;
				uint16_t *qbr = qb + (size_t)t * qwidth + (size_t)h * D;
				if (!is_needle(h)) {
					for (int d = 0; d < D; d++)
						qr[d] = rand_bf16(q_scale(h), &qbr[d]);
					continue;
				}
				/* key jj: cached (in the image) or one of this step's rows */
				const int jj = needle_key(j + 1), kvh = h / (Hq / Hkv);
				const uint16_t *kr_bits = jj < sp->ctx
					? kimg + (size_t)(table[jj / bs] * bs + jj % bs) * width
					: kb + (size_t)(seq_start[s] + jj - sp->ctx) * width;
				needle_row(qr, qbr, kr_bits + (size_t)kvh * D, D);
			}
			seq[t] = s;
			kv_index[t] = j;
			slot[t] = sl;
			t++;
		}
	}
	seq_start[S] = T;
	print_message("  %d tokens of %d sequences, %d cached, max kv %d, %d blocks of %d\n", T, S,
		      n_fill, max_kv, total_blocks, bs);

	/* CPU: fill, write the step, attend */
	qw_kv_shape shape = {1, total_blocks, bs, Hkv, D};
	qw_kv_cache *kv;
	OK(ref->kv_alloc(ref, &shape, &kv, err));
	if (n_fill) {
		qw_act ka = cpu_act(n_fill, width, fk), va = cpu_act(n_fill, width, fv);
		qw_batch fb = {.n_tokens = n_fill, .slot = fslot};
		OK(ref->kv_write(ref, kv, 0, &ka, &va, &fb, err));
		ref->act_free(ref, &ka);
		ref->act_free(ref, &va);
	}
	qw_batch b = {.n_tokens = T, .seq = seq, .kv_index = kv_index, .slot = slot, .n_seqs = S,
		      .max_blocks = max_blocks, .block_tables = tables};
	qw_act qa = cpu_act(T, qwidth, q), ka = cpu_act(T, width, k), va = cpu_act(T, width, v);
	qw_act oa = cpu_act(T, qwidth, NULL);
	OK(ref->kv_write(ref, kv, 0, &ka, &va, &b, err));
	OK(ref->attention(ref, &oa, &qa, kv, 0, &b, Hq, err));
	float *want = malloc((size_t)T * (size_t)qwidth * sizeof(float));
	OK(ref->act_read(ref, &oa, want, err));

	/* GPU: the same */
	uint16_t *dk = dev_copy(kimg, cache_n * 2), *dv = dev_copy(vimg, cache_n * 2);
	uint16_t *dq = dev_copy(qb, (size_t)T * qwidth * 2);
	uint16_t *dkn = dev_copy(kb, (size_t)T * width * 2);
	uint16_t *dvn = dev_copy(vb, (size_t)T * width * 2);
	qw_cuda_batch gb = {
		.n_tokens = T, .n_seqs = S, .max_blocks = max_blocks, .block_size = bs,
		.max_kv_len = max_kv, .max_seq_tokens = max_seq_tokens,
		.seq = dev_copy(seq, (size_t)T * 4), .kv_index = dev_copy(kv_index, (size_t)T * 4),
		.slot = dev_copy(slot, (size_t)T * 4),
		.seq_start = dev_copy(seq_start, (size_t)(S + 1) * 4),
		.block_tables = dev_copy(tables, (size_t)S * max_blocks * 4),
	};
	OK(qw_cuda_kv_write(dk, dv, dkn, dvn, &gb, width, 0, err));
	CK(cudaDeviceSynchronize());
	for (int i = 0; i < T; i++) {   /* what the cache should now hold */
		memcpy(kimg + (size_t)slot[i] * width, kb + (size_t)i * width, (size_t)width * 2);
		memcpy(vimg + (size_t)slot[i] * width, vb + (size_t)i * width, (size_t)width * 2);
	}
	uint16_t *back = malloc(cache_n * 2);
	CK(cudaMemcpy(back, dk, cache_n * 2, cudaMemcpyDeviceToHost));
	int bad = compare_exact("K cache", back, kimg, cache_n, width);
	CK(cudaMemcpy(back, dv, cache_n * 2, cudaMemcpyDeviceToHost));
	bad += compare_exact("V cache", back, vimg, cache_n, width);
	free(back);

	const size_t ws_bytes = qw_cuda_attention_ws_bytes(T, Hq, D, max_kv);
	void *ws = NULL;
	if (ws_bytes) {
		CK(cudaMalloc(&ws, ws_bytes));
		CK(cudaMemset(ws, 0xFF, ws_bytes));
	}
	uint16_t *dout;
	const size_t out_n = (size_t)T * qwidth;
	CK(cudaMalloc((void **)&dout, out_n * 2));
	CK(cudaMemset(dout, 0xFF, out_n * 2));   /* NaN: a row left unwritten fails */
	OK(qw_cuda_attention(dout, dq, dk, dv, &gb, Hq, Hkv, D, (float)(1.0 / sqrt((double)D)), ws,
			     ws_bytes, 0, err));
	CK(cudaDeviceSynchronize());
	uint16_t *got = malloc(out_n * 2);
	CK(cudaMemcpy(got, dout, out_n * 2, cudaMemcpyDeviceToHost));
	bad += compare("attention", got, want, out_n, qwidth);

	CK(cudaFree(dk));
	CK(cudaFree(dv));
	CK(cudaFree(dq));
	CK(cudaFree(dkn));
	CK(cudaFree(dvn));
	CK(cudaFree(dout));
	CK(cudaFree(ws));
	CK(cudaFree((void *)gb.seq));
	CK(cudaFree((void *)gb.kv_index));
	CK(cudaFree((void *)gb.slot));
	CK(cudaFree((void *)gb.seq_start));
	CK(cudaFree((void *)gb.block_tables));
	ref->act_free(ref, &qa);
	ref->act_free(ref, &ka);
	ref->act_free(ref, &va);
	ref->act_free(ref, &oa);
	ref->kv_free(ref, kv);
	free(got);
	free(want);
	free(perm);
	free(tables);
	free(kimg);
	free(vimg);
	free(fk);
	free(fv);
	free(fslot);
	free(q);
	free(k);
	free(v);
	free(qb);
	free(kb);
	free(vb);
	free(seq);
	free(kv_index);
	free(slot);
	if (bad)
		fail_msg("%s: %d mismatches (seed above)", c->name, bad);
}

static void test_attention(void **state)
{
	const attn_case *c = *state;
	run_attention(c, (int)(c - attn_cases));
}

// -- KV writes of odd widths ------------------------------------------------------------------

/* The element-wise path: a width that is no multiple of 8, rows from an unaligned buffer,
 * and rows with a negative slot skipped. */
static void test_kv_write_unaligned(void **state)
{
	seed_test("kv_write, width 12, unaligned", 100);
	enum { T = 7, W = 12, SLOTS = 20 };
	uint16_t src_k[T * W + 1], src_v[T * W + 1], want_k[SLOTS * W], want_v[SLOTS * W];
	int32_t slot[T] = {3, 0, 19, -1, 7, 8, 12};
	for (int i = 0; i < T * W + 1; i++) {
		rand_bf16(1.0f, &src_k[i]);
		rand_bf16(1.0f, &src_v[i]);
	}
	memset(want_k, 0xFF, sizeof want_k);
	memset(want_v, 0xFF, sizeof want_v);
	for (int t = 0; t < T; t++)
		if (slot[t] >= 0) {
			memcpy(want_k + slot[t] * W, src_k + 1 + t * W, W * 2);
			memcpy(want_v + slot[t] * W, src_v + 1 + t * W, W * 2);
		}
	uint16_t *dk, *dv, *sk = dev_copy(src_k, sizeof src_k), *sv = dev_copy(src_v, sizeof src_v);
	CK(cudaMalloc((void **)&dk, sizeof want_k));
	CK(cudaMalloc((void **)&dv, sizeof want_v));
	CK(cudaMemset(dk, 0xFF, sizeof want_k));
	CK(cudaMemset(dv, 0xFF, sizeof want_v));
	qw_cuda_batch b = {.n_tokens = T, .slot = dev_copy(slot, sizeof slot)};
	OK(qw_cuda_kv_write(dk, dv, sk + 1, sv + 1, &b, W, 0, err));
	CK(cudaDeviceSynchronize());
	uint16_t got[SLOTS * W];
	CK(cudaMemcpy(got, dk, sizeof got, cudaMemcpyDeviceToHost));
	int bad = compare_exact("K cache", got, want_k, SLOTS * W, W);
	CK(cudaMemcpy(got, dv, sizeof got, cudaMemcpyDeviceToHost));
	bad += compare_exact("V cache", got, want_v, SLOTS * W, W);
	CK(cudaFree(dk));
	CK(cudaFree(dv));
	CK(cudaFree(sk));
	CK(cudaFree(sv));
	CK(cudaFree((void *)b.slot));
	assert_int_equal(bad, 0);
}

// -- segment attention ------------------------------------------------------------------------

typedef struct seg_case {
	const char *name;
	int D, H;
	int n_segs;
	int len[8];
} seg_case;

static const seg_case seg_cases[] = {
	{"segments D16 2 heads", 16, 2, 5, {1, 5, 64, 65, 200}},
	{"segments D4 4 heads", 4, 4, 3, {3, 100, 1}},
	{"segments D72 16 heads (the vision tower)", 72, 16, 5, {1500, 1, 300, 64, 129}},
	{"segments D8 3 heads", 8, 3, 2, {50, 77}},
	{"segments D20 2 heads", 20, 2, 2, {40, 90}},
	{"segments D32 3 heads", 32, 3, 1, {190}},
	{"segments D64 1 head", 64, 1, 2, {130, 2}},
	{"segments D128 2 heads", 128, 2, 2, {100, 257}},
	{"segments D256 2 heads", 256, 2, 2, {70, 33}},
};

static void test_segments(void **state)
{
	const seg_case *c = *state;
	seed_test(c->name, 200 + (int)(c - seg_cases));
	const int D = c->D, H = c->H, width = H * D;
	int32_t seg_start[9] = {0};
	int max_seg = 0;
	for (int s = 0; s < c->n_segs; s++) {
		seg_start[s + 1] = seg_start[s] + c->len[s];
		max_seg = c->len[s] > max_seg ? c->len[s] : max_seg;
	}
	const int T = seg_start[c->n_segs];
	const size_t n = (size_t)T * (size_t)width;
	float *x[3];
	uint16_t *xb[3];
	for (int m = 0; m < 3; m++) {
		x[m] = malloc(n * sizeof(float));
		xb[m] = malloc(n * 2);
	}
	for (size_t i = 0; i < n; i++) {   /* k, v */
		x[1][i] = rand_bf16(1.0f, &xb[1][i]);
		x[2][i] = rand_bf16(1.0f, &xb[2][i]);
	}
	for (int sg = 0; sg < c->n_segs; sg++)   /* q: per-head scales and needles as above */
		for (int r = seg_start[sg]; r < seg_start[sg + 1]; r++)
			for (int h = 0; h < H; h++) {
				const size_t at = (size_t)r * width + (size_t)h * D;
				if (is_needle(h)) {
					const int jj = seg_start[sg] + needle_key(c->len[sg]);
					needle_row(x[0] + at, xb[0] + at,
						   xb[1] + (size_t)jj * width + (size_t)h * D, D);
				} else {
					for (int d = 0; d < D; d++)
						x[0][at + d] = rand_bf16(q_scale(h), &xb[0][at + d]);
				}
			}
	qw_act qa = cpu_act(T, width, x[0]), ka = cpu_act(T, width, x[1]);
	qw_act va = cpu_act(T, width, x[2]);
	qw_act oa = cpu_act(T, width, NULL);
	OK(ref->segment_attention(ref, &oa, &qa, &ka, &va, seg_start, c->n_segs, H, err));
	float *want = malloc(n * sizeof(float));
	OK(ref->act_read(ref, &oa, want, err));

	uint16_t *dq = dev_copy(xb[0], n * 2), *dk = dev_copy(xb[1], n * 2);
	uint16_t *dv = dev_copy(xb[2], n * 2);
	int32_t *dseg = dev_copy(seg_start, (size_t)(c->n_segs + 1) * 4);
	uint16_t *dout;
	CK(cudaMalloc((void **)&dout, n * 2));
	CK(cudaMemset(dout, 0xFF, n * 2));
	OK(qw_cuda_segment_attention(dout, dq, dk, dv, dseg, c->n_segs, max_seg, T, H, D, 0, err));
	CK(cudaDeviceSynchronize());
	uint16_t *got = malloc(n * 2);
	CK(cudaMemcpy(got, dout, n * 2, cudaMemcpyDeviceToHost));
	int bad = compare("segment attention", got, want, n, width);
	CK(cudaFree(dq));
	CK(cudaFree(dk));
	CK(cudaFree(dv));
	CK(cudaFree(dseg));
	CK(cudaFree(dout));
	ref->act_free(ref, &qa);
	ref->act_free(ref, &ka);
	ref->act_free(ref, &va);
	ref->act_free(ref, &oa);
	for (int m = 0; m < 3; m++) {
		free(x[m]);
		free(xb[m]);
	}
	free(want);
	free(got);
	if (bad)
		fail_msg("%s: %d mismatches (seed above)", c->name, bad);
}

// -- argument checks --------------------------------------------------------------------------

static void test_refused_shapes(void **state)
{
	qw_err err = {0};
	qw_cuda_batch b = {.n_tokens = 1, .n_seqs = 1, .max_blocks = 1, .block_size = 16};
	uint16_t *p;
	CK(cudaMalloc((void **)&p, 4096));
	/* heads that do not group, head dims 20 and 512, a misaligned output */
	assert_int_equal(qw_cuda_attention(p, p, p, p, &b, 6, 4, 64, 0.1f, NULL, 0, 0, &err), QW_E_ARG);
	assert_int_equal(qw_cuda_attention(p, p, p, p, &b, 4, 2, 20, 0.2f, NULL, 0, 0, &err), QW_E_ARG);
	assert_int_equal(qw_cuda_attention(p, p, p, p, &b, 4, 2, 512, 0.1f, NULL, 0, 0, &err), QW_E_ARG);
	assert_int_equal(qw_cuda_attention(p + 1, p, p, p, &b, 4, 2, 64, 0.1f, NULL, 0, 0, &err),
			 QW_E_ARG);
	/* segment head dims 6 and 260 */
	assert_int_equal(qw_cuda_segment_attention(p, p, p, p, NULL, 1, 1, 1, 1, 6, 0, &err),
			 QW_E_ARG);
	assert_int_equal(qw_cuda_segment_attention(p, p, p, p, NULL, 1, 1, 1, 1, 260, 0, &err),
			 QW_E_ARG);
	CK(cudaFree(p));
}

static int setup(void **state)
{
	qw_err err = {0};
	const char *s = getenv("QW_TEST_SEED");
	base_seed = s && *s ? strtoull(s, NULL, 10)
			    : (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid();
	printf("# test_cuda_attention: QW_TEST_SEED=%llu\n", (unsigned long long)base_seed);
	return qw_cpu_backend_create(&ref, &err) != QW_OK;
}

static int teardown(void **state)
{
	ref->destroy(ref);
	return 0;
}

int main(void)
{
	enum { NA = sizeof attn_cases / sizeof attn_cases[0] };
	enum { NS = sizeof seg_cases / sizeof seg_cases[0] };
	struct CMUnitTest tests[NA + NS + 2];
	int n = 0;
	for (int i = 0; i < NA; i++)
		tests[n++] = (struct CMUnitTest){attn_cases[i].name, test_attention, NULL, NULL,
						 (void *)&attn_cases[i]};
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_kv_write_unaligned);
	for (int i = 0; i < NS; i++)
		tests[n++] = (struct CMUnitTest){seg_cases[i].name, test_segments, NULL, NULL,
						 (void *)&seg_cases[i]};
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_refused_shapes);
	return _cmocka_run_group_tests("cuda-attention", tests, (size_t)n, setup, teardown);
}
