/* test_cuda_invariance.c - batch invariance of the CUDA forward, op by op: a token's output
 * bits depend on its own sequence alone, never on what else its step holds (how many rows,
 * which other sequences, prefill chunks or decodes, how its prompt was chunked, whether its
 * beginning came from the prefix cache).  The daemon's tests that hold "alone == together"
 * and "prefix-cache hit == cache off" rest on it; this suite says which op breaks it.
 *
 * Every check computes rows within some step and compares their bits with the same rows
 * computed alone (a step of that one row), printing each step that differs as
 *     MISMATCH <op> <shape> T=<rows of the step> <what>: <r> of <n> rows differ ..., max <u> ulp
 * (ulp: units in the last place of the backend's activations, bf16 on the GPU), and a test
 * fails when it printed any.
 *  - matmul: the backend's matmul on real projection shapes (the 30B-A3B's and 235B-A22B's
 *    attention projections and lm_heads, the vision tower's and its mergers', a dense MLP's)
 *    and on tiny and odd ones (K not a multiple of 8 or 16, N of 1 and 3), at T from 1 to 600
 *    across every switch between kernels: each window of a pool of rows against those rows
 *    computed one at a time; and (GPU) each of gemm.cu's tensor-core kernels, asked for by
 *    name, on the same rows (gemm_wgmma.cu's on Hopper; QW_CUDA_WGMMA=1 puts it in the
 *    backend's matmul and forward too); FP8 weights (e4m3 with block scales) likewise, on
 *    gemm_fp8.cu's W8A16 kernels (stream, then tiles: one order at every T) or, shapes they
 *    do not take, on the dequantised weight at every T.
 *  - attention: the backend's attention over a paged cache, for several head shapes (the
 *    real models', the tiny ones', D 64 without grouping, D 96, D 256): a decode beside 1 to
 *    63 others and beside a prefill chunk, decodes at contexts on either side of 256 and 1024
 *    keys, a 700-token prompt whole, in chunks, as chunks beside decodes and as suffixes
 *    after its cached beginning, and long contexts (16384+ keys, where the context is split)
 *    alone and beside 15 other long ones: every row against the same token alone.
 *  - forward: whole steps of the tiny models (synthetic weights, one stage): a prompt
 *    prefilled whole, in chunks beside other sequences' decodes, and as a suffix after
 *    another sequence's blocks gives the same logits and (GPU) the same KV cache entries;
 *    decoding alone and beside 1 to 15 others, sometimes with a prefill chunk in the step,
 *    gives the same logits at every step.
 * Inputs are random from a printed seed (QW_TEST_SEED=<n> repeats a run).
 * QW_TEST_BACKEND=cpu runs the same checks on small shapes on the CPU reference backend,
 * whose ops compute each row on its own: a check of the checks.
 */
#include "tests/unit/helpers.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/kernels.h"
#include "kernels/forward.h"
#include "kernels/sample.h"
#include "loader/config.h"
#include "loader/dtype.h"
#include "tests/gpu/stages.h"

#define OK(call)                                                                           \
	do {                                                                               \
		qw_err ok_err_ = {0};                                                      \
		qw_err *err = &ok_err_;                                                    \
		if ((call) != QW_OK)                                                       \
			fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #call, ok_err_.msg);  \
	} while (0)

static qw_backend *be;       /* the backend under test, made fresh for each test */
static bool on_cpu;          /* QW_TEST_BACKEND=cpu */
static uint64_t base_seed;
static int mismatches;       /* MISMATCH lines printed by the running test */

// -- random values -----------------------------------------------------------------------

static uint64_t mix64(uint64_t z)
{
	z += 0x9E3779B97F4A7C15ull;   /* splitmix64's finaliser */
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* A bf16-representable value in [-a, a] that is a pure function of key. */
static float value_of(uint64_t key, float a)
{
	double u = (double)(mix64(key ^ base_seed) >> 11) * 0x1p-53 * 2.0 - 1.0;
	return qw_bf16_to_f32(qw_f32_to_bf16((float)(u * a)));
}

static uint64_t rng;

static int rand_below(int n)
{
	rng = mix64(rng);
	return (int)(rng % (uint64_t)n);
}

static void fill_values(float *v, size_t n, uint64_t key, float a)
{
	for (size_t i = 0; i < n; i++)
		v[i] = value_of(key * 0x100000001B3ull + i, a);
}

// -- comparing -------------------------------------------------------------------------------

/* The distance of a and b in units in the last place of the backend's activation type. */
static int ulp_between(float a, float b)
{
	if (isnan(a) || isnan(b))
		return INT_MAX;
	uint32_t ua, ub;
	memcpy(&ua, &a, 4);
	memcpy(&ub, &b, 4);
	int64_t ka = ua >> 31 ? -(int64_t)(ua & 0x7fffffffu) : (int64_t)ua;
	int64_t kb = ub >> 31 ? -(int64_t)(ub & 0x7fffffffu) : (int64_t)ub;
	int64_t d = ka > kb ? ka - kb : kb - ka;
	if (be->act_dtype == QW_DT_BF16)
		d >>= 16;   /* widened bf16 values: the low half is zero */
	return d > INT_MAX ? INT_MAX : (int)d;
}

/* got against want, n rows of cols, bit for bit.  A mismatch prints one line naming the op,
 * the shape, the step's row count, what was compared, how many rows and values differ, the
 * first differing row (row_name names it) and the largest distance; returns whether any
 * differed. */
static bool same_rows(const char *op, const char *shape, int T, const char *what,
		      const float *got, const float *want, int n, int cols,
		      void (*row_name)(int row, char *buf, size_t len, void *ctx), void *ctx)
{
	int rows_bad = 0, first = -1, worst = 0, worst_row = -1;
	long vals_bad = 0;
	for (int r = 0; r < n; r++) {
		const float *g = got + (size_t)r * cols, *w = want + (size_t)r * cols;
		if (!memcmp(g, w, (size_t)cols * sizeof *g))
			continue;
		rows_bad++;
		if (first < 0)
			first = r;
		for (int c = 0; c < cols; c++) {
			if (!memcmp(&g[c], &w[c], sizeof *g))
				continue;
			vals_bad++;
			int u = ulp_between(g[c], w[c]);
			if (u > worst) {
				worst = u;
				worst_row = r;
			}
		}
	}
	if (!rows_bad)
		return false;
	char first_name[64] = "", worst_name[64] = "";
	if (row_name) {
		row_name(first, first_name, sizeof first_name, ctx);
		row_name(worst_row, worst_name, sizeof worst_name, ctx);
	} else {
		snprintf(first_name, sizeof first_name, "row %d", first);
		snprintf(worst_name, sizeof worst_name, "row %d", worst_row);
	}
	printf("MISMATCH %s %s T=%d %s: %d of %d rows differ (%ld values; first %s), max %d ulp "
	       "(%s)\n", op, shape, T, what, rows_bad, n, vals_bad, first_name, worst,
	       worst_name);
	mismatches++;
	return true;
}

static void end_test(const char *name)
{
	if (mismatches)
		fail_msg("%s: %d step(s) whose rows differ from the same rows alone (MISMATCH lines "
			 "above; seed %llu)", name, mismatches, (unsigned long long)base_seed);
	printf("# %s: every row equals itself computed alone\n", name);
}

// -- the backend, fresh for each test ----------------------------------------------------------

static int make_backend(void **state)
{
	(void)state;
	qw_err err = {0};
	qw_status st = on_cpu ? qw_cpu_backend_create(&be, &err)
			      : qw_cuda_backend_create(0, &be, &err);
	if (st != QW_OK) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	mismatches = 0;
	return 0;
}

static int drop_backend(void **state)
{
	(void)state;
	be->destroy(be);
	be = NULL;
	return 0;
}

static size_t act_elem(void)
{
	return qw_dtype_size(be->act_dtype);
}

/* A (N, K) bf16 tensor of random values of standard deviation std, made where it lives when
 * the backend can (synthesize), else on the host; released with the backend. */
static const qw_tensor *random_tensor(int N, int K, uint64_t s0, double std, uint16_t **host_bits)
{
	static qw_tensor t;   /* the description only: the backend keeps its own copy */
	memset(&t, 0, sizeof t);
	t.name = (char *)"invariance.weight";
	t.dtype = QW_DT_BF16;
	t.ndim = 2;
	t.shape[0] = N;
	t.shape[1] = K;
	t.numel = (uint64_t)N * (uint64_t)K;
	t.nbytes = t.numel * 2;
	const qw_tensor *out = NULL;
	*host_bits = NULL;
	if (be->synthesize) {
		OK(be->synthesize(be, &t, s0, 0.0, std, &out, err));
		return out;
	}
	uint16_t *bits = malloc(t.nbytes + 2);
	assert_non_null(bits);
	for (uint64_t i = 0; i < t.numel; i++)
		bits[i] = qw_f32_to_bf16(value_of(s0 * 0x9E37ull + i, (float)(1.7 * std)));
	t.data = bits;
	OK(be->upload(be, &t, &out, err));
	*host_bits = bits;   /* the CPU backend reads it in place: freed by the caller */
	return out;
}

// -- matmul ------------------------------------------------------------------------------------

typedef struct mm_shape {
	const char *name;
	int N, K;
	bool big;    /* a vocabulary-sized weight: fewer row counts (each read is 0.6-1.2 GB) */
	int br, bc;  /* an FP8 weight's blocks; 0: bf16 */
} mm_shape;

static const mm_shape mm_real[] = {
	{"30B q/k/v fused", 5120, 2048, false, 0, 0}, {"30B q", 4096, 2048, false, 0, 0},
	{"30B k or v", 512, 2048, false, 0, 0},       {"30B o", 2048, 4096, false, 0, 0},
	{"30B lm_head", 151936, 2048, true, 0, 0},    {"235B q/k/v fused", 9216, 4096, false, 0, 0},
	{"235B q", 8192, 4096, false, 0, 0},          {"235B k or v", 512, 4096, false, 0, 0},
	{"235B o", 4096, 8192, false, 0, 0},          {"235B lm_head", 151936, 4096, true, 0, 0},
	{"vision q, k or v", 1152, 1152, false, 0, 0}, {"vision fc1", 4304, 1152, false, 0, 0},
	{"vision fc2", 1152, 4304, false, 0, 0},      {"vision patch", 1152, 1536, false, 0, 0},
	{"merger fc1", 4608, 4608, false, 0, 0},      {"merger fc2", 4096, 4608, false, 0, 0},
	{"dense gate or up", 12288, 4096, false, 0, 0}, {"dense down", 4096, 12288, false, 0, 0},
};

static const mm_shape mm_small[] = {
	{"tiny q/k/v fused", 256, 128, false, 0, 0}, {"tiny o", 128, 128, false, 0, 0},
	{"tiny lm_head", 1024, 128, false, 0, 0},    {"tiny down", 128, 256, false, 0, 0},
	{"tiny vision qkv", 192, 64, false, 0, 0},   {"tiny vision fc2", 64, 128, false, 0, 0},
	{"K 100", 37, 100, false, 0, 0},             {"K 200", 40, 200, false, 0, 0},
	{"K 24", 48, 24, false, 0, 0},               {"K 40, N 130", 130, 40, false, 0, 0},
	{"K 8, N 3", 3, 8, false, 0, 0},             {"N 1", 1, 64, false, 0, 0},
	{"K 1000, N 520", 520, 1000, false, 0, 0},
};

/* FP8 weights (e4m3, block scales): gemm_fp8.cu's W8A16 stream for few rows and its tiles for
 * more; the dequantised weight (gemm.cu's kernels, the plain one where K is no multiple of 8)
 * for blocks it does not take. */
static const mm_shape mm_fp8[] = {
	{"30B q, FP8", 4096, 2048, false, 128, 128},
	{"235B o, FP8", 4096, 8192, false, 128, 128},
	{"FP8, partial blocks", 200, 208, false, 128, 128},
	{"FP8 of 64 x 48 blocks", 520, 1000, false, 64, 48},
	{"FP8, K 100", 40, 100, false, 16, 16},
};

/* Row counts: every T up to 9, then both sides of 16, 32, 64, 128, 256 and 512 and a few
 * between: whatever a kernel choice depends on, these cross it. */
static const int mm_T[] = {1,  2,  3,  4,   5,   6,   7,   8,   9,   12,  15,  16,
			   17, 24, 31, 32,  33,  48,  63,  64,  65,  96,  127, 128,
			   129, 192, 255, 256, 257, 300, 384, 511, 512, 513, 600};
static const int mm_T_big[] = {1, 2, 4, 5, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 600};
#define MM_POOL 600

static void name_pool_row(int row, char *buf, size_t len, void *ctx)
{
	snprintf(buf, len, "pool row %d", *(const int *)ctx + row);
}

/* x (T rows) = pool rows [r0, r0 + T); out = x w^T; out's rows into host (T, N). */
static void mm_run(qw_act *x, qw_act *out, const qw_act *pool, int r0, int T,
		   const qw_tensor *w, float *host)
{
	qw_act win = qw_act_rows(pool, r0, T, act_elem());
	OK(be->act_copy(be, x, &win, err));
	x->rows = T;
	OK(be->matmul(be, out, x, w, NULL, err));
	assert_int_equal(out->rows, T);
	OK(be->act_read(be, out, host, err));
}

/* Every tensor-core kernel of gemm.cu that can take T rows, asked for by name, on the same
 * rows: each must give the bits of the rows alone (one order of the sums, whichever kernel). */
static int mm_kernels_check(const mm_shape *s, const char *shape, const qw_act *pool, qw_act *x,
			    qw_act *out, const qw_tensor *w, const float *alone, float *got)
{
	static const struct {
		qw_gemm_kernel kind;
		const char *name;
		int max_T;
	} kernels[] = {{QW_GEMM_STREAM, "stream", 64}, {QW_GEMM_TILE_M, "64x128 tiles", INT_MAX},
		       {QW_GEMM_TILE_L, "128x128 tiles", INT_MAX},
		       {QW_GEMM_WGMMA, "wgmma tiles", INT_MAX}};
	static const int Ts[] = {1, 8, 17, 33, 64, 130, 257};
	const bool hopper = qw_cuda_gemm_wgmma_device();   /* the wgmma tiles run on sm_90 only */
	if (qw_cuda_gemm_pick(1, s->N, s->K, x->data, w->data) == QW_GEMM_ROWS)
		return 0;   /* only the plain kernel reads this shape */
	cudaStream_t stream = (cudaStream_t)qw_cuda_backend_stream(be);
	uint16_t *bits = malloc((size_t)257 * s->N * 2);
	assert_non_null(bits);
	int bad = 0;
	for (size_t i = 0; i < sizeof Ts / sizeof *Ts; i++) {
		int T = Ts[i], r0 = (T * 13) % (MM_POOL - T + 1);
		qw_act win = qw_act_rows(pool, r0, T, act_elem());
		OK(be->act_copy(be, x, &win, err));
		for (size_t k = 0; k < sizeof kernels / sizeof *kernels; k++) {
			if (T > kernels[k].max_T || (kernels[k].kind == QW_GEMM_WGMMA && !hopper))
				continue;
			OK(qw_cuda_gemm_with(kernels[k].kind, out->data, x->data, w->data, T, s->N, s->K,
					     stream, err));
			if (cudaStreamSynchronize(stream) != cudaSuccess ||
			    cudaMemcpy(bits, out->data, (size_t)T * s->N * 2, cudaMemcpyDeviceToHost) !=
				    cudaSuccess)
				fail_msg("%s: the %s kernel failed: %s", shape, kernels[k].name,
					 cudaGetErrorString(cudaGetLastError()));
			for (size_t j = 0; j < (size_t)T * s->N; j++)
				got[j] = qw_bf16_to_f32(bits[j]);
			char what[96];
			snprintf(what, sizeof what, "the %s kernel on rows %d..%d", kernels[k].name, r0,
				 r0 + T - 1);
			bad += same_rows("matmul", shape, T, what, got, alone + (size_t)r0 * s->N, T,
					 s->N, name_pool_row, &r0);
		}
	}
	free(bits);
	return bad;
}

/* An FP8 (N, K) weight of (br, bc) blocks: random finite codes, scales amax / 448 for amax
 * in [0.05, 0.2]; host holds the codes, the scales and their tensor (the CPU backend reads
 * them in place), freed by the caller. */
typedef struct fp8_host {
	qw_tensor t, scale;
	uint8_t *q;
	float *s;
} fp8_host;

static const qw_tensor *random_fp8(int N, int K, int br, int bc, uint64_t seed, fp8_host *h)
{
	int sr = (N + br - 1) / br, sc = (K + bc - 1) / bc;
	h->q = malloc((size_t)N * K + 8);
	h->s = malloc((size_t)sr * sc * sizeof *h->s);
	assert_true(h->q && h->s);
	for (size_t i = 0; i < (size_t)N * K; i++) {
		uint8_t c = (uint8_t)mix64(seed * 0x2545F491ull + i);
		h->q[i] = (c & 0x7f) == 0x7f ? (uint8_t)(c - 1) : c;   /* 0x7f, 0xff: NaN */
	}
	for (int i = 0; i < sr * sc; i++)
		h->s[i] = (0.125f + 0.075f * value_of(seed + (uint64_t)i, 1.0f)) / 448.0f;
	h->scale = (qw_tensor){.dtype = QW_DT_F32, .ndim = 2, .shape = {sr, sc},
			       .numel = (uint64_t)sr * sc, .nbytes = (uint64_t)sr * sc * 4,
			       .data = h->s};
	h->scale.name = (char *)"invariance.weight_scale_inv";
	h->t = (qw_tensor){.dtype = QW_DT_F8_E4M3, .ndim = 2, .shape = {N, K},
			   .numel = (uint64_t)N * K, .nbytes = (uint64_t)N * K, .data = h->q,
			   .scale = &h->scale, .block = {br, bc}};
	h->t.name = (char *)"invariance.weight";
	const qw_tensor *out = NULL;
	OK(be->upload(be, &h->t, &out, err));
	return out;
}

static void mm_shape_check(const mm_shape *s, int idx)
{
	const int N = s->N, K = s->K;
	const int *Ts = s->big ? mm_T_big : mm_T;
	int nT = s->big ? (int)(sizeof mm_T_big / sizeof *mm_T_big)
			: (int)(sizeof mm_T / sizeof *mm_T);
	char shape[96];
	snprintf(shape, sizeof shape, "%s (N %d, K %d)", s->name, N, K);
	uint16_t *wbits = NULL;
	fp8_host f8 = {0};
	const qw_tensor *w = s->br ? random_fp8(N, K, s->br, s->bc, 1000 + (uint64_t)idx, &f8)
				   : random_tensor(N, K, 1000 + (uint64_t)idx, 1.0 / sqrt((double)K),
						   &wbits);
	float *px = malloc((size_t)MM_POOL * K * sizeof *px);
	float *alone = malloc((size_t)MM_POOL * N * sizeof *alone);
	float *got = malloc((size_t)MM_POOL * N * sizeof *got);
	assert_true(px && alone && got);
	fill_values(px, (size_t)MM_POOL * K, 77 + (uint64_t)idx, 2.0f);
	qw_act pool, x, out;
	OK(be->act_alloc(be, MM_POOL, K, &pool, err));
	OK(be->act_alloc(be, MM_POOL, K, &x, err));
	OK(be->act_alloc(be, MM_POOL, N, &out, err));
	OK(be->act_write(be, &pool, px, err));
	for (int r = 0; r < MM_POOL; r++)   /* each row alone */
		mm_run(&x, &out, &pool, r, 1, w, alone + (size_t)r * N);
	int bad = 0;
	for (int i = 0; i < nT; i++) {
		int T = Ts[i], r0 = (T * 37 + idx * 11) % (MM_POOL - T + 1);
		mm_run(&x, &out, &pool, r0, T, w, got);
		char what[64];
		snprintf(what, sizeof what, "rows %d..%d of the pool", r0, r0 + T - 1);
		bad += same_rows("matmul", shape, T, what, got, alone + (size_t)r0 * N, T, N,
				 name_pool_row, &r0);
	}
	if (!on_cpu && !s->br)
		bad += mm_kernels_check(s, shape, &pool, &x, &out, w, alone, got);
	printf("# matmul %-40s %2d row counts%s\n", shape, nT, bad ? ": MISMATCHES" : ", invariant");
	be->act_free(be, &pool);
	be->act_free(be, &x);
	be->act_free(be, &out);
	free(px);
	free(alone);
	free(got);
	free(wbits);
	free(f8.q);
	free(f8.s);
}

static void test_matmul_real(void **state)
{
	(void)state;
	if (on_cpu) {
		skip();   /* hours of fp32 GEMMs on the CPU; mm_small covers the checks */
		return;
	}
	for (size_t i = 0; i < sizeof mm_real / sizeof *mm_real; i++)
		mm_shape_check(&mm_real[i], (int)i);
	end_test("matmul, real shapes");
}

static void test_matmul_small(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof mm_small / sizeof *mm_small; i++)
		mm_shape_check(&mm_small[i], 100 + (int)i);
	end_test("matmul, tiny and odd shapes");
}

static void test_matmul_fp8(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof mm_fp8 / sizeof *mm_fp8; i++) {
		if (on_cpu && (int64_t)mm_fp8[i].N * mm_fp8[i].K > (1 << 20))
			continue;   /* the real shapes take minutes in fp32 on the CPU */
		mm_shape_check(&mm_fp8[i], 200 + (int)i);
	}
	end_test("matmul, FP8 weights");
}

// -- attention ----------------------------------------------------------------------------------

typedef struct attn_cfg {
	const char *name;
	int D, Hq, Hkv, block;
} attn_cfg;

static const attn_cfg attn_cfgs[] = {
	{"235B heads (D 128, 64 q / 4 kv)", 128, 64, 4, 16},
	{"30B heads (D 128, 32 q / 4 kv)", 128, 32, 4, 16},
	{"tiny heads (D 32, 4 q / 2 kv)", 32, 4, 2, 16},
	{"D 64, 8 q / 8 kv, blocks of 7", 64, 8, 8, 7},
	{"D 96, 12 q / 4 kv, blocks of 32", 96, 12, 4, 32},
	{"D 256, 16 q / 2 kv", 256, 16, 2, 16},
};

/* The sequences every step draws from: their whole contexts are in the cache before any
 * step (a step reads entries 0..kv_index of its tokens and writes none), so a token's
 * output is a function of its sequence and position alone. */
enum {
	SEQ_TARGET = 0,                 /* decodes, context up to 3000 */
	SEQ_PROMPT = 1,                 /* a 700-token prompt */
	SEQ_COMP0 = 2,                  /* 63 companions, contexts 1..4000 */
	N_COMP = 63,
	SEQ_LONG0 = SEQ_COMP0 + N_COMP, /* 16 long ones */
	N_LONG = 16,
	N_ATTN_SEQS = SEQ_LONG0 + N_LONG,
	PROMPT_LEN = 700,
	TARGET_LEN = 3000,
};

typedef struct attn_world {
	const attn_cfg *c;
	int len[N_ATTN_SEQS];
	int first_block[N_ATTN_SEQS];   /* a sequence's blocks: a run of the shuffled block ids */
	int32_t *blocks;                /* (total_blocks,) shuffled ids */
	int total_blocks;
	qw_kv_cache *kv;
	qw_act q, out;                  /* (max rows, Hq D) */
	int max_rows;
	/* tokens computed alone: token j of sequence s is row alone_of[alone_at[s] + j] of
	 * alone (-1 until computed) */
	int *alone_at;                  /* (N_ATTN_SEQS,) */
	int *alone_of;                  /* (sum of len,) */
	float *alone;                   /* (n_alone, Hq D) */
	int n_alone, cap_alone;
	float *host;                    /* (max rows, Hq D) */
} attn_world;

/* One part of a step: tokens [first, first + n) of sequence seq. */
typedef struct part {
	int seq, first, n;
} part;

typedef struct step_names {
	const part *parts;
	int n_parts;
} step_names;

static void name_attn_row(int row, char *buf, size_t len, void *ctx)
{
	const step_names *s = ctx;
	for (int i = 0; i < s->n_parts; i++) {
		if (row < s->parts[i].n) {
			snprintf(buf, len, "sequence %d token %d", s->parts[i].seq,
				 s->parts[i].first + row);
			return;
		}
		row -= s->parts[i].n;
	}
	snprintf(buf, len, "row ?");
}

static int32_t block_of(const attn_world *w, int seq, int j)
{
	return w->blocks[w->first_block[seq] + j];
}

/* Runs one step of attention over parts; the outputs (rows in part order) into w->host. */
static void attn_run(attn_world *w, const part *parts, int n_parts)
{
	const attn_cfg *c = w->c;
	int T = 0, max_blocks = 1, qw = c->Hq * c->D;
	for (int i = 0; i < n_parts; i++) {
		T += parts[i].n;
		int nb = (parts[i].first + parts[i].n + c->block - 1) / c->block;
		max_blocks = nb > max_blocks ? nb : max_blocks;
	}
	assert_true(T <= w->max_rows);
	int32_t *ids = calloc((size_t)T, 4), *pos = calloc(3 * (size_t)T, 4);
	int32_t *seq = malloc((size_t)T * 4), *kvi = malloc((size_t)T * 4);
	int32_t *slot = malloc((size_t)T * 4);
	int32_t *tables = malloc((size_t)n_parts * (size_t)max_blocks * 4);
	float *q = malloc((size_t)T * (size_t)qw * sizeof *q);
	assert_true(ids && pos && seq && kvi && slot && tables && q);
	int t = 0;
	for (int i = 0; i < n_parts; i++) {
		const part *p = &parts[i];
		int nb = (w->len[p->seq] + c->block - 1) / c->block;
		for (int j = 0; j < max_blocks; j++)   /* past the sequence's blocks: never read */
			tables[i * max_blocks + j] = block_of(w, p->seq, j < nb ? j : 0);
		for (int k = 0; k < p->n; k++, t++) {
			int j = p->first + k;
			seq[t] = i;
			kvi[t] = j;
			pos[3 * t] = pos[3 * t + 1] = pos[3 * t + 2] = j;
			slot[t] = block_of(w, p->seq, j / c->block) * c->block + j % c->block;
			/* query heads of three sharpnesses: flat, moderate and peaked softmaxes */
			for (int h = 0; h < c->Hq; h++) {
				static const float scale[3] = {0.6f, 2.0f, 8.0f};
				uint64_t key = ((uint64_t)p->seq << 40) ^ ((uint64_t)j << 16) ^ (uint64_t)h;
				fill_values(q + (size_t)t * qw + (size_t)h * c->D, (size_t)c->D,
					    key, scale[h % 3]);
			}
		}
	}
	qw_batch b = {.n_tokens = T, .token_ids = ids, .positions = pos, .seq = seq,
		      .kv_index = kvi, .slot = slot, .n_seqs = n_parts, .max_blocks = max_blocks,
		      .block_tables = tables};
	w->q.rows = T;
	OK(be->act_write(be, &w->q, q, err));
	if (be->begin_step)
		OK(be->begin_step(be, &b, err));
	OK(be->attention(be, &w->out, &w->q, w->kv, 0, &b, c->Hq, err));
	assert_int_equal(w->out.rows, T);
	OK(be->act_read(be, &w->out, w->host, err));
	free(ids);
	free(pos);
	free(seq);
	free(kvi);
	free(slot);
	free(tables);
	free(q);
}

/* Sequence seq's token j computed alone (once; kept). */
static const float *attn_alone(attn_world *w, int seq, int j)
{
	size_t qw = (size_t)w->c->Hq * (size_t)w->c->D;
	int *at = &w->alone_of[w->alone_at[seq] + j];
	if (*at < 0) {
		if (w->n_alone == w->cap_alone) {
			w->cap_alone = w->cap_alone ? 2 * w->cap_alone : 256;
			w->alone = realloc(w->alone, (size_t)w->cap_alone * qw * sizeof(float));
			assert_non_null(w->alone);
		}
		part p = {seq, j, 1};
		attn_run(w, &p, 1);
		*at = w->n_alone++;
		memcpy(w->alone + (size_t)*at * qw, w->host, qw * sizeof(float));
	}
	return w->alone + (size_t)*at * qw;
}

/* A step of parts, every row against its token alone. */
static void attn_step(attn_world *w, const char *what, const part *parts, int n_parts)
{
	int T = 0, qw = w->c->Hq * w->c->D;
	for (int i = 0; i < n_parts; i++)
		T += parts[i].n;
	float *got = malloc((size_t)T * (size_t)qw * sizeof *got);
	float *want = malloc((size_t)T * (size_t)qw * sizeof *want);
	assert_true(got && want);
	attn_run(w, parts, n_parts);
	memcpy(got, w->host, (size_t)T * (size_t)qw * sizeof *got);
	for (int i = 0, t = 0; i < n_parts; i++)
		for (int k = 0; k < parts[i].n; k++, t++)
			memcpy(want + (size_t)t * qw, attn_alone(w, parts[i].seq, parts[i].first + k),
			       (size_t)qw * sizeof *want);
	step_names names = {parts, n_parts};
	same_rows("attention", w->c->name, T, what, got, want, T, qw, name_attn_row, &names);
	free(got);
	free(want);
}

/* The cache: every sequence's whole context, random K and V, written by kv_write. */
static void attn_fill(attn_world *w)
{
	const attn_cfg *c = w->c;
	int width = c->Hkv * c->D, n_slots = w->total_blocks * c->block;
	const int chunk = 8192;
	float *host = NULL;
	int32_t *seq = calloc(chunk, 4), *kvi = malloc(chunk * 4), *slot = malloc(chunk * 4);
	int32_t table0 = 0;
	assert_true(seq && kvi && slot);
	qw_act k, v;
	OK(be->act_alloc(be, chunk, width, &k, err));
	OK(be->act_alloc(be, chunk, width, &v, err));
	if (on_cpu)
		host = malloc((size_t)chunk * width * sizeof *host);
	for (int s0 = 0, part_no = 0; s0 < n_slots; s0 += chunk, part_no++) {
		int n = n_slots - s0 < chunk ? n_slots - s0 : chunk;
		for (int i = 0; i < n; i++) {
			kvi[i] = i;
			slot[i] = s0 + i;
		}
		k.rows = v.rows = n;
		for (int m = 0; m < 2; m++) {
			qw_act *dst = m ? &v : &k;
			uint64_t key = 0xCAC4E000ull + (uint64_t)part_no * 2 + (uint64_t)m;
			if (on_cpu) {
				fill_values(host, (size_t)n * width, key, 1.0f);
				OK(be->act_write(be, dst, host, err));
			} else {   /* made on the GPU: a weight's random stream, copied into the rows */
				uint16_t *unused;
				const qw_tensor *r = random_tensor(n, width, key, 1.0, &unused);
				cudaError_t ce = cudaDeviceSynchronize();   /* made on be's stream */
				if (ce == cudaSuccess)
					ce = cudaMemcpy(dst->data, r->data, (size_t)n * width * 2,
							cudaMemcpyDeviceToDevice);
				if (ce != cudaSuccess)
					fail_msg("filling the cache: %s", cudaGetErrorString(ce));
			}
		}
		qw_batch b = {.n_tokens = n, .seq = seq, .kv_index = kvi, .slot = slot, .n_seqs = 1,
			      .max_blocks = 1, .block_tables = &table0};
		if (be->begin_step)
			OK(be->begin_step(be, &b, err));
		OK(be->kv_write(be, w->kv, 0, &k, &v, &b, err));
	}
	be->act_free(be, &k);
	be->act_free(be, &v);
	free(host);
	free(seq);
	free(kvi);
	free(slot);
}

static void attn_world_make(attn_world *w, const attn_cfg *c)
{
	memset(w, 0, sizeof *w);
	w->c = c;
	int long_len = on_cpu ? 3000 : 16384;
	w->len[SEQ_TARGET] = TARGET_LEN;
	w->len[SEQ_PROMPT] = PROMPT_LEN;
	for (int i = 0; i < N_COMP; i++)
		w->len[SEQ_COMP0 + i] = 1 + rand_below(on_cpu ? 1500 : 4000);
	w->len[SEQ_COMP0] = 1;   /* a first token among the companions */
	for (int i = 0; i < N_LONG; i++)
		w->len[SEQ_LONG0 + i] = long_len + rand_below(3000);
	int total = 0, tokens = 0;
	w->alone_at = malloc(N_ATTN_SEQS * sizeof *w->alone_at);
	assert_non_null(w->alone_at);
	for (int s = 0; s < N_ATTN_SEQS; s++) {
		w->first_block[s] = total;
		total += (w->len[s] + c->block - 1) / c->block;
		w->alone_at[s] = tokens;
		tokens += w->len[s];
	}
	w->total_blocks = total;
	w->blocks = malloc((size_t)total * sizeof *w->blocks);
	for (int i = 0; i < total; i++)
		w->blocks[i] = i;
	for (int i = total - 1; i > 0; i--) {   /* sequences' blocks scattered over the cache */
		int j = rand_below(i + 1), x = w->blocks[i];
		w->blocks[i] = w->blocks[j];
		w->blocks[j] = x;
	}
	w->alone_of = malloc((size_t)tokens * sizeof *w->alone_of);
	assert_non_null(w->alone_of);
	for (int i = 0; i < tokens; i++)
		w->alone_of[i] = -1;
	qw_kv_shape shape = {1, total, c->block, c->Hkv, c->D};
	OK(be->kv_alloc(be, &shape, &w->kv, err));
	w->max_rows = 1024;
	OK(be->act_alloc(be, w->max_rows, c->Hq * c->D, &w->q, err));
	OK(be->act_alloc(be, w->max_rows, c->Hq * c->D, &w->out, err));
	w->host = malloc((size_t)w->max_rows * c->Hq * c->D * sizeof *w->host);
	assert_true(w->blocks && w->host);
	attn_fill(w);
}

static void attn_world_free(attn_world *w)
{
	free(w->alone);
	free(w->alone_of);
	free(w->alone_at);
	free(w->blocks);
	free(w->host);
	be->act_free(be, &w->q);
	be->act_free(be, &w->out);
	be->kv_free(be, w->kv);
}

/* Sequence s's next token (a decode over its whole cached context). */
static part decode_of(const attn_world *w, int s)
{
	return (part){s, w->len[s] - 1, 1};
}

static void test_attention(void **state)
{
	const attn_cfg *c = *state;
	rng = base_seed ^ (uint64_t)(c - attn_cfgs) * 0x51ED27ull;
	print_message("%s: QW_TEST_SEED=%llu\n", c->name, (unsigned long long)base_seed);
	attn_world w;
	attn_world_make(&w, c);
	part p[80];
	char what[96];

	/* a decode beside 1, 3, 15 and 63 other decodes, itself somewhere in the middle */
	static const int others[] = {1, 3, 15, 63};
	for (size_t i = 0; i < sizeof others / sizeof *others; i++) {
		int n = 0, at = others[i] / 2;
		for (int k = 0; k < others[i]; k++) {
			if (k == at)
				p[n++] = decode_of(&w, SEQ_TARGET);
			p[n++] = decode_of(&w, SEQ_COMP0 + k);
		}
		snprintf(what, sizeof what, "a decode beside %d other decodes", others[i]);
		attn_step(&w, what, p, n);
	}
	/* decodes at contexts on either side of 64, 256 and 1024 keys, with 7 others */
	static const int ctx[] = {63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 2999};
	for (size_t i = 0; i < sizeof ctx / sizeof *ctx; i++) {
		int n = 0;
		for (int k = 0; k < 7; k++)
			p[n++] = decode_of(&w, SEQ_COMP0 + 10 + k);
		p[n++] = (part){SEQ_TARGET, ctx[i] - 1, 1};
		snprintf(what, sizeof what, "a decode at context %d beside 7 decodes", ctx[i]);
		attn_step(&w, what, p, n);
	}
	/* a decode beside a prefill chunk and three decodes */
	p[0] = (part){SEQ_PROMPT, 100, 200};
	p[1] = decode_of(&w, SEQ_COMP0 + 3);
	p[2] = decode_of(&w, SEQ_TARGET);
	p[3] = decode_of(&w, SEQ_COMP0 + 4);
	p[4] = decode_of(&w, SEQ_COMP0 + 5);
	attn_step(&w, "decodes beside a prefill chunk", p, 5);
	/* the prompt whole, in chunks, chunks beside decodes, suffixes after its beginning */
	p[0] = (part){SEQ_PROMPT, 0, PROMPT_LEN};
	attn_step(&w, "a prompt whole", p, 1);
	static const int cuts[] = {0, 256, 512, PROMPT_LEN};
	for (int i = 0; i < 3; i++) {
		p[0] = (part){SEQ_PROMPT, cuts[i], cuts[i + 1] - cuts[i]};
		snprintf(what, sizeof what, "a prompt's chunk [%d, %d)", cuts[i], cuts[i + 1]);
		attn_step(&w, what, p, 1);
	}
	int n = 0;
	for (int k = 0; k < 15; k++) {
		if (k == 7)
			p[n++] = (part){SEQ_PROMPT, 256, 256};
		p[n++] = decode_of(&w, SEQ_COMP0 + 20 + k);
	}
	attn_step(&w, "a prompt's chunk [256, 512) beside 15 decodes", p, n);
	p[0] = (part){SEQ_PROMPT, 640, PROMPT_LEN - 640};
	attn_step(&w, "a suffix [640, 700) after a cached beginning", p, 1);
	p[0] = decode_of(&w, SEQ_TARGET);
	p[1] = (part){SEQ_PROMPT, 512, PROMPT_LEN - 512};
	p[2] = decode_of(&w, SEQ_COMP0 + 40);
	attn_step(&w, "a suffix [512, 700) beside decodes", p, 3);
	p[0] = (part){SEQ_PROMPT, PROMPT_LEN - 2, 2};
	attn_step(&w, "a prompt's last two tokens", p, 1);
	/* long contexts: beside the other long ones (each alone is the reference), and beside a
	 * prefill chunk */
	n = 0;
	for (int k = 0; k < N_LONG; k++)
		p[n++] = decode_of(&w, SEQ_LONG0 + k);
	attn_step(&w, "16 long decodes together", p, n);
	p[0] = decode_of(&w, SEQ_LONG0 + 3);
	p[1] = (part){SEQ_PROMPT, 0, 128};
	p[2] = decode_of(&w, SEQ_LONG0 + 9);
	attn_step(&w, "long decodes beside a prefill chunk", p, 3);
	p[0] = (part){SEQ_LONG0 + 5, w.len[SEQ_LONG0 + 5] - 40, 40};
	p[1] = decode_of(&w, SEQ_LONG0 + 6);
	attn_step(&w, "a long context's last 40 tokens as a chunk", p, 2);
	attn_world_free(&w);
	end_test(c->name);
}

// -- whole forward steps ------------------------------------------------------------------------

enum {
	F_BLOCK = 16,
	F_BPS = 40,                 /* blocks a sequence: 640 tokens */
	F_REF = 0,                  /* the prompt prefilled whole, decoded alone */
	F_CHUNKED = 1,              /* the prompt in chunks, decoded beside 15 others */
	F_SUFFIX = 2,               /* the prompt's suffix after F_REF's blocks, decoded beside others */
	F_COMP0 = 3,                /* 16 companions */
	F_NCOMP = 16,
	F_FRESH = F_COMP0 + F_NCOMP, /* a sequence whose prompt comes in chunks during the decode */
	F_SEQS = F_FRESH + 1,
	F_MAX_TOKENS = 512,
	F_PROMPT = 150,
	F_CACHED = 96,              /* F_SUFFIX's beginning, from F_REF's blocks */
	F_DECODES = 24,
};

typedef struct fwd_seq {
	int32_t tokens[F_BPS * F_BLOCK];   /* the sequence's tokens so far */
	int len;                           /* tokens known */
	int done;                          /* tokens whose K/V is in the cache */
	int32_t table[F_BPS];
} fwd_seq;

typedef struct fwd_world {
	const char *model;
	qw_config cfg;
	gpu_stages g;
	fwd_seq s[F_SEQS];
	float *logits;     /* (F_SEQS, V) */
	int V;
} fwd_world;

/* One step: for each of the n sequences `which`, its next `count[i]` unscheduled tokens
 * (a decode when 1 and the sequence has its tokens in the cache); logits of every
 * sequence's last row into w->logits (row i for which[i]). */
static void fwd_step(fwd_world *w, const int *which, const int *count, int n)
{
	int T = 0;
	for (int i = 0; i < n; i++)
		T += count[i];
	assert_true(T <= F_MAX_TOKENS);
	int32_t *ids = malloc((size_t)T * 4), *pos = malloc(3 * (size_t)T * 4);
	int32_t *seq = malloc((size_t)T * 4), *kvi = malloc((size_t)T * 4);
	int32_t *slot = malloc((size_t)T * 4), rows[F_SEQS];
	int32_t *tables = malloc((size_t)n * F_BPS * 4);
	assert_true(ids && pos && seq && kvi && slot && tables);
	int t = 0;
	for (int i = 0; i < n; i++) {
		fwd_seq *s = &w->s[which[i]];
		assert_true(s->done + count[i] <= s->len);
		memcpy(tables + (size_t)i * F_BPS, s->table, sizeof s->table);
		for (int k = 0; k < count[i]; k++, t++) {
			int j = s->done + k;
			ids[t] = s->tokens[j];
			pos[3 * t] = pos[3 * t + 1] = pos[3 * t + 2] = j;
			seq[t] = i;
			kvi[t] = j;
			slot[t] = s->table[j / F_BLOCK] * F_BLOCK + j % F_BLOCK;
		}
		rows[i] = t - 1;
		s->done += count[i];
	}
	qw_batch b = {.n_tokens = T, .token_ids = ids, .positions = pos, .seq = seq,
		      .kv_index = kvi, .slot = slot, .n_seqs = n, .max_blocks = F_BPS,
		      .block_tables = tables, .n_logits = n, .logit_rows = rows};
	gpu_stages_step(&w->g, be, &b, w->logits);
	free(ids);
	free(pos);
	free(seq);
	free(kvi);
	free(slot);
	free(tables);
}

/* Appends the greedy token of logits row to sequence s. */
static void fwd_append(fwd_world *w, int s, const float *row)
{
	fwd_seq *q = &w->s[s];
	assert_true(q->len < F_BPS * F_BLOCK);
	q->tokens[q->len++] = qw_argmax(row, w->V);
}

/* The K and V entries of positions [a, b) of sequences x and y in every layer (GPU: read from
 * the cache), bit for bit: names the first layer whose entries differ. */
static void fwd_same_cache(fwd_world *w, int x, int y, int a, int b, const char *what)
{
	if (on_cpu)
		return;   /* the CPU cache is opaque; the logits compare the same */
	const qw_text_config *tc = &w->cfg.text;
	int width = tc->num_kv_heads * tc->head_dim;
	uint16_t *rx = malloc((size_t)width * 2), *ry = malloc((size_t)width * 2);
	assert_true(rx && ry);
	for (int L = 0; L < tc->num_layers; L++)
		for (int m = 0; m < 2; m++) {
			void *k, *v;
			size_t bytes;
			assert_true(qw_cuda_backend_kv_layer(w->g.st[0].kv, L, &k, &v, &bytes));
			const uint16_t *base = m ? v : k;
			int bad = 0, first = -1, worst = 0;
			for (int j = a; j < b; j++) {
				size_t sx = (size_t)w->s[x].table[j / F_BLOCK] * F_BLOCK + j % F_BLOCK;
				size_t sy = (size_t)w->s[y].table[j / F_BLOCK] * F_BLOCK + j % F_BLOCK;
				cudaMemcpy(rx, base + sx * width, (size_t)width * 2, cudaMemcpyDeviceToHost);
				cudaMemcpy(ry, base + sy * width, (size_t)width * 2, cudaMemcpyDeviceToHost);
				if (!memcmp(rx, ry, (size_t)width * 2))
					continue;
				bad++;
				if (first < 0)
					first = j;
				for (int i = 0; i < width; i++) {
					int u = ulp_between(qw_bf16_to_f32(rx[i]), qw_bf16_to_f32(ry[i]));
					worst = u > worst ? u : worst;
				}
			}
			if (bad) {
				printf("MISMATCH kv-cache layer %d %s %s: %d of %d positions differ from "
				       "sequence %d's (first %d), max %d ulp\n", L, m ? "V" : "K", what,
				       bad, b - a, x, first, worst);
				mismatches++;
			}
		}
	free(rx);
	free(ry);
}

static void fwd_compare(fwd_world *w, const char *what, int T, const float *got,
			const float *want)
{
	char shape[64];
	snprintf(shape, sizeof shape, "%s (V %d)", w->model, w->V);
	same_rows("forward-logits", shape, T, what, got, want, 1, w->V, NULL, NULL);
}

static void forward_check(const char *model)
{
	fwd_world *w = calloc(1, sizeof *w);
	assert_non_null(w);
	w->model = model;
	char path[128];
	snprintf(path, sizeof path, "hf/%s/model/config.json", model);
	OK(qw_config_load(fixture(path), &w->cfg, err));
	w->V = w->cfg.text.vocab_size;
	gpu_stages_load(&w->g, be, &w->cfg, 1, F_MAX_TOKENS, F_SEQS * F_BPS, F_BLOCK, F_SEQS);
	w->logits = malloc((size_t)F_SEQS * w->V * sizeof *w->logits);
	float *want = malloc((size_t)w->V * sizeof *want);
	assert_true(w->logits && want);
	for (int s = 0; s < F_SEQS; s++)
		for (int j = 0; j < F_BPS; j++)
			w->s[s].table[j] = s * F_BPS + j;
	/* the prompt: random tokens, the same for the three sequences under test */
	for (int j = 0; j < F_PROMPT; j++) {
		int32_t tok = (int32_t)rand_below(w->V);
		for (int s = F_REF; s <= F_SUFFIX; s++)
			w->s[s].tokens[j] = tok;
	}
	w->s[F_REF].len = w->s[F_CHUNKED].len = w->s[F_SUFFIX].len = F_PROMPT;
	/* F_SUFFIX's beginning is F_REF's blocks, as a prefix-cache hit takes them */
	for (int j = 0; j < F_CACHED / F_BLOCK; j++)
		w->s[F_SUFFIX].table[j] = w->s[F_REF].table[j];
	w->s[F_SUFFIX].done = F_CACHED;
	for (int c = F_COMP0; c <= F_FRESH; c++) {
		fwd_seq *s = &w->s[c];
		s->len = c == F_FRESH ? 300 : 5 + rand_below(180);
		for (int j = 0; j < s->len; j++)
			s->tokens[j] = (int32_t)rand_below(w->V);
	}
	/* companions prefilled, two to a step */
	for (int c = F_COMP0; c < F_COMP0 + F_NCOMP; c += 2) {
		int which[2] = {c, c + 1}, count[2] = {w->s[c].len, w->s[c + 1].len};
		fwd_step(w, which, count, 2);
		for (int i = 0; i < 2; i++)
			fwd_append(w, c + i, w->logits + (size_t)i * w->V);
	}
	/* the reference: the prompt whole */
	int which[F_SEQS], count[F_SEQS];
	which[0] = F_REF;
	count[0] = F_PROMPT;
	fwd_step(w, which, count, 1);
	memcpy(want, w->logits, (size_t)w->V * sizeof *want);
	fwd_append(w, F_REF, want);
	/* the prompt in chunks of 40, 60 and 50 tokens, each beside companions' decodes */
	static const int chunks[] = {40, 60, 50};
	for (int k = 0; k < 3; k++) {
		int n = 0;
		for (int c = 0; c < 1 + 3 * k; c++, n++) {
			which[n] = F_COMP0 + c;
			count[n] = 1;
		}
		which[n] = F_CHUNKED;
		count[n++] = chunks[k];
		fwd_step(w, which, count, n);
		for (int i = 0; i < n - 1; i++)
			fwd_append(w, which[i], w->logits + (size_t)i * w->V);
		if (k == 2) {
			char what[64];
			snprintf(what, sizeof what, "a prompt's last chunk beside %d decodes", n - 1);
			fwd_compare(w, what, count[n - 1] + n - 1, w->logits + (size_t)(n - 1) * w->V,
				    want);
		}
	}
	/* the three go on with F_REF's tokens from here */
	w->s[F_CHUNKED].tokens[F_PROMPT] = w->s[F_REF].tokens[F_PROMPT];
	w->s[F_CHUNKED].len = F_PROMPT + 1;
	fwd_same_cache(w, F_REF, F_CHUNKED, 0, F_PROMPT, "of a prompt in chunks");
	/* the suffix after the cached beginning, beside five decodes */
	int n = 0;
	for (int c = 0; c < 5; c++, n++) {
		which[n] = F_COMP0 + 8 + c;
		count[n] = 1;
	}
	which[n] = F_SUFFIX;
	count[n++] = F_PROMPT - F_CACHED;
	fwd_step(w, which, count, n);
	for (int i = 0; i < n - 1; i++)
		fwd_append(w, which[i], w->logits + (size_t)i * w->V);
	fwd_compare(w, "a suffix after a cached beginning, beside 5 decodes",
		    F_PROMPT - F_CACHED + 5, w->logits + (size_t)(n - 1) * w->V, want);
	w->s[F_SUFFIX].tokens[F_PROMPT] = w->s[F_REF].tokens[F_PROMPT];
	w->s[F_SUFFIX].len = F_PROMPT + 1;
	fwd_same_cache(w, F_REF, F_SUFFIX, F_CACHED, F_PROMPT, "of a suffix");

	/* decoding: F_REF alone; F_CHUNKED beside 15 companions (and, every third step, a chunk
	 * of F_FRESH's prompt); F_SUFFIX beside 0 to 4 of them.  All three follow F_REF's
	 * greedy tokens, so their logits must stay F_REF's. */
	for (int d = 0; d < F_DECODES; d++) {
		which[0] = F_REF;
		count[0] = 1;
		fwd_step(w, which, count, 1);
		memcpy(want, w->logits, (size_t)w->V * sizeof *want);
		int32_t next = qw_argmax(want, w->V);

		n = 0;
		for (int c = 0; c < 15; c++) {
			if (c == 6) {
				which[n] = F_CHUNKED;
				count[n++] = 1;
			}
			which[n] = F_COMP0 + c;
			count[n++] = 1;
		}
		int fresh_left = w->s[F_FRESH].len - w->s[F_FRESH].done;
		if (d % 3 == 1 && fresh_left > 0) {
			which[n] = F_FRESH;
			count[n++] = fresh_left < 64 ? fresh_left : 64;
		}
		int T = 0;
		for (int i = 0; i < n; i++)
			T += count[i];
		fwd_step(w, which, count, n);
		char what[96];
		snprintf(what, sizeof what, "decode step %d beside 15 decodes%s", d,
			 n > 16 ? " and a prefill chunk" : "");
		fwd_compare(w, what, T, w->logits + (size_t)6 * w->V, want);
		for (int i = 0; i < n; i++) {
			if (which[i] == F_CHUNKED || (which[i] == F_FRESH &&
						     w->s[F_FRESH].done < w->s[F_FRESH].len))
				continue;
			fwd_append(w, which[i], w->logits + (size_t)i * w->V);
		}

		int others = d % 5;
		n = 0;
		for (int c = 0; c < others; c++) {
			which[n] = F_COMP0 + 15 - c;
			count[n++] = 1;
		}
		which[n] = F_SUFFIX;
		count[n++] = 1;
		fwd_step(w, which, count, n);
		snprintf(what, sizeof what, "decode step %d of a suffixed prompt beside %d decodes", d,
			 others);
		fwd_compare(w, what, n, w->logits + (size_t)(n - 1) * w->V, want);
		for (int i = 0; i < n - 1; i++)
			fwd_append(w, which[i], w->logits + (size_t)i * w->V);

		for (int s = F_REF; s <= F_SUFFIX; s++) {   /* all three go on with F_REF's token */
			w->s[s].tokens[w->s[s].done] = next;
			w->s[s].len = w->s[s].done + 1;
		}
	}
	fwd_same_cache(w, F_REF, F_CHUNKED, 0, F_PROMPT + F_DECODES, "after decoding beside others");
	gpu_stages_free(&w->g, be);
	free(w->logits);
	free(want);
	free(w);
}

static void test_forward_moe(void **state)
{
	(void)state;
	rng = base_seed ^ 0xF0F0ull;
	forward_check("tiny-moe");
	end_test("forward, tiny-moe");
}

static void test_forward_dense(void **state)
{
	(void)state;
	rng = base_seed ^ 0x0F0Full;
	forward_check("tiny-dense");
	end_test("forward, tiny-dense");
}

int main(void)
{
	const char *b = getenv("QW_TEST_BACKEND");
	on_cpu = b && !strcmp(b, "cpu");
	const char *s = getenv("QW_TEST_SEED");
	base_seed = s && *s ? strtoull(s, NULL, 10)
			    : (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid();
	printf("# test_cuda_invariance on the %s backend: QW_TEST_SEED=%llu\n",
	       on_cpu ? "cpu" : "cuda", (unsigned long long)base_seed);
	enum { NA = sizeof attn_cfgs / sizeof attn_cfgs[0] };
	struct CMUnitTest tests[NA + 5];
	int n = 0;
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_matmul_small,
									make_backend, drop_backend);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_matmul_real,
									make_backend, drop_backend);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_matmul_fp8,
									make_backend, drop_backend);
	for (int i = 0; i < NA; i++) {
		if (on_cpu && attn_cfgs[i].D * attn_cfgs[i].Hq > 1024)
			continue;   /* the real shapes take too long in fp32 on the CPU */
		tests[n++] = (struct CMUnitTest){attn_cfgs[i].name, test_attention, make_backend,
						 drop_backend, (void *)&attn_cfgs[i]};
	}
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_forward_moe,
									make_backend, drop_backend);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_forward_dense,
									make_backend, drop_backend);
	return _cmocka_run_group_tests("cuda-invariance", tests, (size_t)n, NULL, NULL);
}
