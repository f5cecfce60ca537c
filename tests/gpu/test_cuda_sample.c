/* test_cuda_sample.c - qw_cuda_sample (kernels/cuda/sample.cu) against kernels/sample.c:
 * greedy rows against qw_argmax (planted ties, -inf, NaN); sampled rows against
 * qw_sample_row for many seeds in every mode (temperature alone, min-p, top-k up to 1024
 * with and without top-p, top-p alone, top-k past 1024 and flat rows whose nucleus the host
 * draws), on bf16 logits full of ties, over a real vocabulary (151936) and sizes around the
 * GPU's 1024 candidates; rows with penalties over fresh random histories (prompt tokens and
 * generated counts, every mode); log-probabilities (the chosen token's value, the top ids
 * exactly, their values, -inf where cut); greedy and seeded rows giving the same bits alone,
 * again, and anywhere in mixed batches; the frequencies of many draws on a small vocabulary.
 * Part of `scons test-gpu`.
 *
 * Agreement: the GPU sums probabilities in double in another order than the CPU, and its exp
 * may differ from the host's in the last bit, so a draw may differ only where u lies within
 * rounding of a cumulative boundary, the top-p cut's running mass within rounding of its
 * threshold, or a probability within rounding of min_p.  Every disagreement must be such a
 * case (a margin below 1e-12, measured by a mirror of the rule below) and there may be at
 * most 1 per 1000 draws; none is expected.  Where the tokens agree, log-probabilities agree
 * within 2e-6 (float roundings of values computed in double).  The seed is printed;
 * QW_TEST_SEED=n repeats a run.
 */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cuda/kernels.h"
#include "kernels/sample.h"

#define CUDA_OK(call)                                                                        \
	do {                                                                                 \
		cudaError_t rc_ = (call);                                                    \
		if (rc_ != cudaSuccess)                                                      \
			fail_msg("%s: %s", #call, cudaGetErrorString(rc_));                  \
	} while (0)

#define VOCAB 151936

static uint64_t seed, rng_state;

static uint64_t next64(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double unit(void)   /* [0, 1) */
{
	return (double)(next64() >> 11) * 0x1.0p-53;
}

static double gauss(void)
{
	double u = unit(), v = unit();
	return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

static uint16_t bf16_bits(float f)
{
	uint32_t b;
	memcpy(&b, &f, 4);
	if ((b & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((b >> 16) | 0x40);   /* NaN stays NaN */
	b += 0x7fffu + ((b >> 16) & 1u);
	return (uint16_t)(b >> 16);
}

static float bf16_float(uint16_t h)
{
	uint32_t b = (uint32_t)h << 16;
	float f;
	memcpy(&f, &b, 4);
	return f;
}

// ---------------------------------------------------------------------------------------
// rows of logits

enum { GAUSS, PEAKED, FLAT, INTEGERS, N_KINDS };
static const char *kind_name[N_KINDS] = {"gauss", "peaked", "flat", "integers"};

/* gauss: N(0, 3) (many exact ties once in bf16); peaked: N(0, 1) plus three logits raised by
 * 12; flat: N(0, 0.05) (a top-p nucleus far wider than 1024); integers: -3..2 (huge ties) */
static void make_row(uint16_t *row, int V, int kind)
{
	for (int i = 0; i < V; i++) {
		double x = kind == GAUSS ? 3.0 * gauss() : kind == PEAKED ? gauss()
			 : kind == FLAT ? 0.05 * gauss() : (double)(int)(next64() % 6) - 3.0;
		row[i] = bf16_bits((float)x);
	}
	if (kind == PEAKED)
		for (int j = 0; j < 3; j++) {
			int i = (int)(next64() % (uint64_t)V);
			row[i] = bf16_bits(bf16_float(row[i]) + 12.0f);
		}
}

// ---------------------------------------------------------------------------------------
// a mirror of qw_sample_row's rule that says how near the draw is to changing

typedef struct cand {
	double prob;
	int id;
} cand;

static int by_prob_desc(const void *a, const void *b)
{
	const cand *x = a, *y = b;
	if (x->prob != y->prob)
		return x->prob > y->prob ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/* The smallest distance, relative to the mass or threshold involved, between u and the
 * running sums on either side of the drawn candidate, between top_p * kept and the running
 * sums on either side of the cut, or between a probability and min_p.  The penalties are
 * applied first (their fp32 arithmetic is the same on both sides, bit for bit). */
static double rule_margin(const float *logits, int V, const qw_sampling *p,
			  const qw_sample_history *h)
{
	if (p->temperature <= 0.0f)
		return INFINITY;
	cand *c = malloc((size_t)V * sizeof *c);
	float *z = malloc((size_t)V * sizeof *z);
	assert_non_null(c);
	assert_non_null(z);
	memcpy(z, logits, (size_t)V * sizeof *z);
	if (h && qw_sample_penalized(p))
		qw_sample_penalize(z, V, p, h);
	double max = z[qw_argmax(z, V)], margin = INFINITY;
	int n = 0;
	for (int i = 0; i < V; i++) {
		double e = exp(((double)z[i] - max) / p->temperature);
		if (p->min_p > 0 && z[i] != max)   /* the best is kept on both sides: e is 1 */
			margin = fmin(margin, fabs(e - p->min_p) / p->min_p);
		if (p->min_p <= 0 || e >= p->min_p)
			c[n++] = (cand){e, i};
	}
	int keep = (p->top_k > 0 && p->top_k < n) ? p->top_k : n;
	if ((p->top_k > 0 && p->top_k < V) || p->top_p < 1.0f)
		qsort(c, (size_t)n, sizeof *c, by_prob_desc);
	if (p->top_p < 1.0f) {
		double kept = 0.0, cum = 0.0;
		for (int i = 0; i < keep; i++)
			kept += c[i].prob;
		double thr = p->top_p * kept;
		int m = 0;
		while (m < keep && (m == 0 || cum < thr))
			cum += c[m++].prob;
		if (m > 1)
			margin = fmin(margin, fmin(fabs(cum - thr), fabs(cum - c[m - 1].prob - thr)) /
						      kept);
		keep = m;
	}
	double total = 0.0, acc = 0.0;
	for (int i = 0; i < keep; i++)
		total += c[i].prob;
	double u = qw_sample_uniform(p->seed, p->step) * total;
	for (int i = 0; i < keep; i++) {
		double before = acc;
		acc += c[i].prob;
		if (u < acc) {
			margin = fmin(margin, fmin(u - before, acc - u) / total);
			break;
		}
	}
	free(c);
	free(z);
	return margin;
}

// ---------------------------------------------------------------------------------------
// one batch through the GPU and the CPU

typedef struct tally {
	long draws, explained;   /* explained: disagreements at a rounding boundary */
	long logprobs;           /* rows whose log-probabilities were compared */
} tally;

static bool lp_near(float got, float want)
{
	if (isinf(want) || isinf(got))
		return got == want;
	return fabsf(got - want) <= 2e-6f * fmaxf(1.0f, fabsf(want));
}

/* Whether the GPU's log-probabilities of row r equal the CPU's (printing them if not). */
static bool same_as_cpu(const qw_sample_logprobs *g, const qw_sample_logprobs *c, int V, int r)
{
	bool ok = g->n_top == c->n_top && lp_near(g->logprob, c->logprob);
	for (int i = 0; ok && i < c->n_top; i++)
		ok = g->top_ids[i] == c->top_ids[i] && lp_near(g->top_logprobs[i], c->top_logprobs[i]);
	if (ok)
		return true;
	print_message("  V %d row %d: gpu logprob %.9g, %d top; cpu %.9g, %d top\n", V, r,
		      g->logprob, g->n_top, c->logprob, c->n_top);
	for (int i = 0; i < c->n_top && i < g->n_top; i++)
		print_message("    top %d: gpu %d %.9g, cpu %d %.9g\n", i, g->top_ids[i],
			      g->top_logprobs[i], c->top_ids[i], c->top_logprobs[i]);
	return false;
}

/* rows (rows, V) with their params and histories through qw_cuda_sample into out and lp. */
static void gpu_sample(const uint16_t *rows_host, int rows, int V, const qw_sampling *params,
		       const qw_sample_history *hist, int32_t *out, qw_sample_logprobs *lp)
{
	size_t n = (size_t)rows * (size_t)V;
	uint16_t *d_logits;
	void *ws;
	size_t ws_bytes = qw_cuda_sample_ws_bytes(rows, V);
	CUDA_OK(cudaMalloc((void **)&d_logits, n * 2));
	CUDA_OK(cudaMalloc(&ws, ws_bytes));
	CUDA_OK(cudaMemcpy(d_logits, rows_host, n * 2, cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemset(ws, 0xff, ws_bytes));   /* poisoned: nothing may be read unwritten */
	qw_err err = {0};
	if (qw_cuda_sample(out, lp, d_logits, rows, V, params, hist, ws, ws_bytes, 0, &err) !=
	    QW_OK)
		fail_msg("qw_cuda_sample: %s", err.msg);
	cudaFree(d_logits);
	cudaFree(ws);
}

/* rows (rows, V) with their params and histories (NULL: none) through qw_cuda_sample; each
 * row's token and log-probabilities against qw_sample_row.  Fails on an unexplained
 * disagreement. */
static void run_batch_h(const uint16_t *rows_host, int rows, int V, const qw_sampling *params,
			const qw_sample_history *hist, tally *t)
{
	int32_t *out = malloc((size_t)rows * sizeof *out);
	qw_sample_logprobs *lp = calloc((size_t)rows, sizeof *lp), want_lp;
	float *row = malloc((size_t)V * sizeof *row);
	void *scratch = malloc(qw_sample_scratch_bytes(V));
	assert_non_null(out);
	assert_non_null(lp);
	assert_non_null(row);
	assert_non_null(scratch);
	for (int r = 0; r < rows; r++)
		out[r] = -7;
	gpu_sample(rows_host, rows, V, params, hist, out, lp);
	for (int r = 0; r < rows; r++) {
		const qw_sampling *p = &params[r];
		const qw_sample_history *h = hist ? &hist[r] : NULL;
		for (int i = 0; i < V; i++)
			row[i] = bf16_float(rows_host[(size_t)r * (size_t)V + i]);
		int32_t want = qw_sample_row(row, V, p, h, scratch, &want_lp);
		t->draws++;
		bool lp_ok = !p->logprobs || same_as_cpu(&lp[r], &want_lp, V, r);
		if (out[r] == want && lp_ok) {
			t->logprobs += p->logprobs != 0;
			continue;
		}
		/* a token, or the set the cuts keep, at a rounding boundary */
		double margin = rule_margin(row, V, p, h);
		print_message("  V %d row %d (temperature %g, top-k %d, top-p %g, min-p %g, penalties "
			      "%g %g %g over %d, seed %llu, step %llu): gpu %d, cpu %d, margin %.3g\n",
			      V, r, p->temperature, p->top_k, p->top_p, p->min_p,
			      p->repetition_penalty, p->frequency_penalty, p->presence_penalty,
			      h ? h->n : 0, (unsigned long long)p->seed, (unsigned long long)p->step,
			      out[r], want, margin);
		if (out[r] < 0 || out[r] >= V || !(margin <= 1e-12))
			fail_msg("V %d row %d: gpu %d, cpu %d%s, not at a rounding boundary (test "
				 "seed %llu)", V, r, out[r], want, lp_ok ? "" : ", log-probabilities "
				 "differ", (unsigned long long)seed);
		t->explained++;
	}
	free(out);
	free(lp);
	free(row);
	free(scratch);
}

static void run_batch(const uint16_t *rows_host, int rows, int V, const qw_sampling *params,
		      tally *t)
{
	run_batch_h(rows_host, rows, V, params, NULL, t);
}

static void check_tally(const char *what, const tally *t)
{
	print_message("%s: %ld draws, %ld differing at a rounding boundary, %ld rows' "
		      "log-probabilities equal\n", what, t->draws, t->explained, t->logprobs);
	if (t->explained * 1000 > t->draws && t->explained > 1)
		fail_msg("%s: %ld of %ld draws differ (at most 1 in 1000 allowed)", what,
			 t->explained, t->draws);
}

// ---------------------------------------------------------------------------------------
// tests

/* (temperature, top-k, top-p, min-p, top logprobs or -1 for none): every mode and the edges
 * of each */
static const struct rule {
	float temperature;
	int top_k;
	float top_p;
	float min_p;
	int top_logprobs;
} rules[] = {
	{1.0f, 0, 1.0f, 0, -1},    {0.7f, 0, 1.0f, 0, 5},     {1.5f, VOCAB, 1.0f, 0, -1},
	{1.0f, 1, 1.0f, 0, 3},     {0.8f, 20, 1.0f, 0, 20},   {0.7f, 20, 0.8f, 0, 0},
	{1.0f, 50, 0.95f, 0, 10},  {1.0f, 1024, 1.0f, 0, -1}, {1.0f, 1024, 0.9f, 0, 20},
	{0.6f, 0, 0.95f, 0, 4},    {1.0f, 0, 0.5f, 0, -1},    {1.0f, 2000, 1.0f, 0, 7},
	{1.0f, 2000, 0.9f, 0, -1}, {1.0f, 0, 0.0f, 0, 2},     {1.0f, 3, 0.0f, 0, -1},
	{2.0f, 100, 0.99f, 0, -1}, {0.0f, 0, 1.0f, 0, 20},    {0.05f, 1000, 1.0f, 0, -1},
	/* min-p alone and with the others */
	{1.0f, 0, 1.0f, 0.05f, 5}, {0.8f, 0, 1.0f, 0.5f, -1}, {1.0f, 40, 1.0f, 0.1f, 20},
	{1.2f, 0, 0.9f, 0.02f, 3}, {1.0f, 5, 0.0f, 0.9f, 1},  {1.0f, 0, 1.0f, 1.0f, 2},
	{0.7f, 1024, 0.95f, 0.001f, -1}, {3.0f, 0, 0.98f, 0.0001f, 20},
};
#define N_RULES (int)(sizeof rules / sizeof rules[0])

static qw_sampling sampling_of(const struct rule *r)
{
	return (qw_sampling){.temperature = r->temperature, .top_k = r->top_k, .top_p = r->top_p,
			     .seed = next64(), .step = next64() % 100000, .min_p = r->min_p,
			     .logprobs = r->top_logprobs >= 0,
			     .top_logprobs = r->top_logprobs > 0 ? r->top_logprobs : 0};
}

static void test_greedy(void **state)
{
	(void)state;
	const int V = VOCAB, rows = 150;
	uint16_t *logits = malloc((size_t)rows * V * 2);
	qw_sampling *params = calloc(rows, sizeof *params);
	assert_non_null(logits);
	assert_non_null(params);
	for (int r = 0; r < rows; r++) {
		uint16_t *row = logits + (size_t)r * V;
		make_row(row, V, r % N_KINDS);
		if (r % 5 == 1) {   /* the maximum planted twice: the lower id wins */
			int a = (int)(next64() % V), b = (int)(next64() % V);
			row[a] = row[b] = bf16_bits(30.0f);
		}
		if (r % 7 == 2)
			for (int i = 0; i < V; i += 3)
				row[i] = 0xff80;   /* -inf */
		if (r == 3)
			for (int i = 0; i < V; i++)
				row[i] = 0xff80;   /* all -inf: id 0 */
		if (r == 4)
			row[(int)(next64() % V)] = 0x7fc0;   /* a NaN is skipped */
		if (r == 5)
			row[0] = 0x7fc0;   /* a NaN first: id 0, as qw_argmax's scan */
		params[r].temperature = r % 2 ? 0.0f : -1.0f;
	}
	uint16_t *d_logits;
	void *ws;
	size_t ws_bytes = qw_cuda_sample_ws_bytes(rows, V);
	CUDA_OK(cudaMalloc((void **)&d_logits, (size_t)rows * V * 2));
	CUDA_OK(cudaMalloc(&ws, ws_bytes));
	CUDA_OK(cudaMemcpy(d_logits, logits, (size_t)rows * V * 2, cudaMemcpyHostToDevice));
	int32_t out[150];
	float *row = malloc((size_t)V * sizeof *row);
	assert_non_null(row);
	qw_err err = {0};
	if (qw_cuda_sample(out, NULL, d_logits, rows, V, params, NULL, ws, ws_bytes, 0, &err) !=
	    QW_OK)
		fail_msg("qw_cuda_sample: %s", err.msg);
	for (int r = 0; r < rows; r++) {
		for (int i = 0; i < V; i++)
			row[i] = bf16_float(logits[(size_t)r * V + i]);
		int32_t want = qw_argmax(row, V);
		if (out[r] != want)
			fail_msg("row %d: gpu %d, argmax %d (seed %llu)", r, out[r], want,
				 (unsigned long long)seed);
	}
	free(row);
	free(logits);
	free(params);
	cudaFree(d_logits);
	cudaFree(ws);
}

/* Every rule on every kind of row of the real vocabulary, 12 draws each (rows of one kind
 * share their logits; seeds and steps are random). */
static void test_rules(void **state)
{
	(void)state;
	const int V = VOCAB, draws = 12, rows = N_RULES * draws;
	uint16_t *base = malloc((size_t)V * 2), *logits = malloc((size_t)rows * V * 2);
	qw_sampling *params = malloc((size_t)rows * sizeof *params);
	assert_non_null(base);
	assert_non_null(logits);
	assert_non_null(params);
	tally t = {0};
	for (int kind = 0; kind < N_KINDS; kind++) {
		make_row(base, V, kind);
		for (int r = 0; r < rows; r++) {
			memcpy(logits + (size_t)r * V, base, (size_t)V * 2);
			params[r] = sampling_of(&rules[r / draws]);
		}
		double t0 = (double)clock() / CLOCKS_PER_SEC;
		run_batch(logits, rows, V, params, &t);
		print_message("%s rows: %d draws checked in %.1f s of CPU\n", kind_name[kind], rows,
			      (double)clock() / CLOCKS_PER_SEC - t0);
	}
	check_tally("V 151936", &t);
	free(base);
	free(logits);
	free(params);
}

/* Vocabularies around the GPU's 1024 candidates, one below eight (16-byte loads cannot be
 * assumed), and the smallest. */
static void test_vocab_sizes(void **state)
{
	(void)state;
	static const int sizes[] = {1, 2, 7, 1000, 1023, 1024, 1025, 3001};
	tally t = {0};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
		int V = sizes[s], rows = N_RULES * N_KINDS * 3;
		uint16_t *logits = malloc((size_t)rows * V * 2);
		qw_sampling *params = malloc((size_t)rows * sizeof *params);
		assert_non_null(logits);
		assert_non_null(params);
		for (int r = 0; r < rows; r++) {
			make_row(logits + (size_t)r * V, V, r % N_KINDS);
			params[r] = sampling_of(&rules[r / (N_KINDS * 3)]);
		}
		run_batch(logits, rows, V, params, &t);
		free(logits);
		free(params);
	}
	check_tally("small vocabularies", &t);
}

/* 20000 draws on 8 logits: the frequencies of each rule's candidates against their
 * probabilities (within 5 standard deviations), nothing outside them. */
static void test_distribution(void **state)
{
	(void)state;
	static const float x[8] = {2.0f, 1.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f, 0.25f};
	static const struct rule dist_rules[] = {
		{1.0f, 0, 1.0f, 0, -1}, {0.5f, 0, 1.0f, 0, -1},   {1.0f, 4, 1.0f, 0, -1},
		{1.0f, 0, 0.7f, 0, -1}, {1.0f, 3, 0.8f, 0, -1},   {1.0f, 0, 1.0f, 0.3f, -1},
		{1.0f, 0, 0.9f, 0.2f, -1},
	};
	const int V = 8, rows = 20000;
	uint16_t *logits = malloc((size_t)rows * V * 2);
	qw_sampling *params = malloc((size_t)rows * sizeof *params);
	int32_t *out = malloc((size_t)rows * sizeof *out);
	assert_non_null(logits);
	assert_non_null(params);
	assert_non_null(out);
	for (int r = 0; r < rows; r++)
		for (int i = 0; i < V; i++)
			logits[(size_t)r * V + i] = bf16_bits(x[i]);
	uint16_t *d_logits;
	void *ws;
	size_t ws_bytes = qw_cuda_sample_ws_bytes(rows, V);
	CUDA_OK(cudaMalloc((void **)&d_logits, (size_t)rows * V * 2));
	CUDA_OK(cudaMalloc(&ws, ws_bytes));
	CUDA_OK(cudaMemcpy(d_logits, logits, (size_t)rows * V * 2, cudaMemcpyHostToDevice));
	uint64_t s0 = next64();
	for (size_t d = 0; d < sizeof dist_rules / sizeof dist_rules[0]; d++) {
		const struct rule *ru = &dist_rules[d];
		for (int r = 0; r < rows; r++)
			params[r] = (qw_sampling){.temperature = ru->temperature, .top_k = ru->top_k,
						  .top_p = ru->top_p, .seed = s0, .step = (uint64_t)r,
						  .min_p = ru->min_p};
		qw_err err = {0};
		if (qw_cuda_sample(out, NULL, d_logits, rows, V, params, NULL, ws, ws_bytes, 0,
				   &err) != QW_OK)
			fail_msg("qw_cuda_sample: %s", err.msg);
		/* the rule's probabilities: exp((x - max) / T), those min-p keeps, the top-k and
		 * top-p cuts, renormalised */
		cand c[8];
		double q[8] = {0};
		int n = 0;
		for (int i = 0; i < V; i++) {
			double e = exp(((double)x[i] - 2.0) / ru->temperature);
			if (e >= ru->min_p)
				c[n++] = (cand){e, i};
		}
		qsort(c, (size_t)n, sizeof *c, by_prob_desc);
		int keep = ru->top_k && ru->top_k < n ? ru->top_k : n;
		if (ru->top_p < 1.0f) {
			double kept = 0.0, cum = 0.0;
			for (int i = 0; i < keep; i++)
				kept += c[i].prob;
			int m = 0;
			while (m < keep && (m == 0 || cum < ru->top_p * kept))
				cum += c[m++].prob;
			keep = m;
		}
		double total = 0.0;
		for (int i = 0; i < keep; i++)
			total += c[i].prob;
		for (int i = 0; i < keep; i++)
			q[c[i].id] = c[i].prob / total;
		long count[8] = {0};
		float row[8];
		for (int i = 0; i < V; i++)
			row[i] = bf16_float(logits[i]);
		for (int r = 0; r < rows; r++) {
			assert_true(out[r] >= 0 && out[r] < V);
			count[out[r]]++;
			int32_t want = qw_sample_row(row, V, &params[r], NULL, NULL, NULL);
			if (out[r] != want && !(rule_margin(row, V, &params[r], NULL) <= 1e-12))
				fail_msg("rule %zu draw %d: gpu %d, cpu %d", d, r, out[r], want);
		}
		for (int i = 0; i < V; i++) {
			double f = (double)count[i] / rows;
			double sd = sqrt(q[i] * (1.0 - q[i]) / rows);
			print_message("rule %zu token %d: %.4f drawn, %.4f expected\n", d, i, f, q[i]);
			if (q[i] == 0.0 ? count[i] != 0 : fabs(f - q[i]) > 5.0 * sd + 1e-4)
				fail_msg("rule %zu token %d: frequency %.4f, probability %.4f (seed %llu)",
					 d, i, f, q[i], (unsigned long long)seed);
		}
	}
	free(logits);
	free(params);
	free(out);
	cudaFree(d_logits);
	cudaFree(ws);
}

// ---------------------------------------------------------------------------------------
// penalties over random histories

/* A history of n distinct random tokens of V, each generated 0-5 times and/or in the
 * prompt (malloc'd). */
static qw_token_count *random_history(int V, int n)
{
	qw_token_count *h = malloc((size_t)(n ? n : 1) * sizeof *h);
	int32_t *ids = malloc((size_t)V * sizeof *ids);
	assert_non_null(h);
	assert_non_null(ids);
	for (int i = 0; i < V; i++)
		ids[i] = i;
	for (int i = 0; i < n; i++) {   /* a partial Fisher-Yates shuffle */
		int j = i + (int)(next64() % (uint64_t)(V - i));
		int32_t t = ids[i];
		ids[i] = ids[j];
		ids[j] = t;
		uint32_t generated = (uint32_t)(next64() % 6);
		bool prompt = generated == 0 || next64() % 3 == 0;
		h[i] = (qw_token_count){ids[i], generated | (prompt ? QW_IN_PROMPT : 0)};
	}
	free(ids);
	return h;
}

/* Penalties of every kind, off and on, over histories of 1 token to the whole vocabulary. */
static void penalties_of(qw_sampling *p)
{
	static const float rep[] = {1.0f, 0.8f, 1.3f, 2.0f}, freq[] = {0.0f, -0.5f, 0.7f, 2.0f},
			   pres[] = {0.0f, -1.0f, 0.5f, 2.0f};
	p->repetition_penalty = rep[next64() % 4];
	p->frequency_penalty = freq[next64() % 4];
	p->presence_penalty = pres[next64() % 4];
}

static void penalised_batch(int V, const int *sizes, int n_sizes, int per_rule, tally *t)
{
	int rows = N_RULES * per_rule;
	uint16_t *logits = malloc((size_t)rows * V * 2);
	qw_sampling *params = malloc((size_t)rows * sizeof *params);
	qw_sample_history *hist = calloc((size_t)rows, sizeof *hist);
	assert_non_null(logits);
	assert_non_null(params);
	assert_non_null(hist);
	for (int r = 0; r < rows; r++) {
		make_row(logits + (size_t)r * V, V, r % N_KINDS);
		params[r] = sampling_of(&rules[r / per_rule]);
		penalties_of(&params[r]);
		int n = r % 7 == 6 ? 0 : sizes[next64() % (uint64_t)n_sizes];   /* some none */
		if (n > V)
			n = V;
		hist[r] = (qw_sample_history){random_history(V, n), n};
	}
	run_batch_h(logits, rows, V, params, hist, t);
	for (int r = 0; r < rows; r++)
		free((void *)hist[r].tokens);
	free(hist);
	free(logits);
	free(params);
}

static void test_penalties(void **state)
{
	(void)state;
	static const int big[] = {1, 50, 2000, VOCAB / 2, VOCAB}, small[] = {1, 3, 200, 1000, 3001};
	tally t = {0};
	penalised_batch(VOCAB, big, 5, 4, &t);
	check_tally("penalties, V 151936", &t);
	tally u = {0};
	for (int V = 1000; V <= 3001; V += 2001)
		penalised_batch(V, small, 5, 12, &u);
	check_tally("penalties, V 1000 and 3001", &u);
}

// ---------------------------------------------------------------------------------------
// the same bits alone, again and in any batch

static bool same_logprobs(const qw_sample_logprobs *a, const qw_sample_logprobs *b)
{
	if (memcmp(&a->logprob, &b->logprob, sizeof a->logprob) || a->n_top != b->n_top)
		return false;
	return !memcmp(a->top_ids, b->top_ids, (size_t)a->n_top * sizeof *a->top_ids) &&
	       !memcmp(a->top_logprobs, b->top_logprobs, (size_t)a->n_top * sizeof(float));
}

static void test_batch_invariant(void **state)
{
	(void)state;
	const int V = VOCAB, R = 24, big = 3 * R;
	uint16_t *logits = malloc((size_t)R * V * 2), *mixed = malloc((size_t)big * V * 2);
	qw_sampling params[24];
	qw_sample_history hist[24] = {{0}};
	int32_t alone[24], again[24], in_batch[3 * 24];
	qw_sample_logprobs lp_alone[24], lp_again[24], lp_batch[3 * 24];
	assert_non_null(logits);
	assert_non_null(mixed);
	for (int r = 0; r < R; r++) {   /* greedy and seeded, with and without penalties */
		make_row(logits + (size_t)r * V, V, r % N_KINDS);
		params[r] = sampling_of(&rules[(r * 5) % N_RULES]);
		params[r].logprobs = 1;
		params[r].top_logprobs = 20;
		if (r % 2) {
			penalties_of(&params[r]);
			params[r].frequency_penalty = 0.5f;   /* penalised for sure */
			hist[r] = (qw_sample_history){random_history(V, 100 * r), 100 * r};
		}
	}
	for (int r = 0; r < R; r++)
		gpu_sample(logits + (size_t)r * V, 1, V, &params[r], &hist[r], &alone[r], &lp_alone[r]);
	gpu_sample(logits, R, V, params, hist, again, lp_again);
	/* the rows again, reversed, among others (row r at 3 * (R - 1 - r) + 1) */
	qw_sampling mp[3 * 24];
	qw_sample_history mh[3 * 24] = {{0}};
	for (int i = 0; i < big; i++) {
		int r = R - 1 - i / 3;
		if (i % 3 == 1) {
			memcpy(mixed + (size_t)i * V, logits + (size_t)r * V, (size_t)V * 2);
			mp[i] = params[r];
			mh[i] = hist[r];
		} else {
			make_row(mixed + (size_t)i * V, V, i % N_KINDS);
			mp[i] = sampling_of(&rules[i % N_RULES]);
			if (i % 4 == 0) {
				penalties_of(&mp[i]);
				mp[i].presence_penalty = 1.0f;
				mh[i] = (qw_sample_history){random_history(V, 500), 500};
			}
		}
	}
	gpu_sample(mixed, big, V, mp, mh, in_batch, lp_batch);
	for (int r = 0; r < R; r++) {
		int i = 3 * (R - 1 - r) + 1;
		if (again[r] != alone[r] || in_batch[i] != alone[r] ||
		    !same_logprobs(&lp_again[r], &lp_alone[r]) ||
		    !same_logprobs(&lp_batch[i], &lp_alone[r]))
			fail_msg("row %d: alone %d, again %d, in a batch %d, or their log-probabilities "
				 "differ (seed %llu)", r, alone[r], again[r], in_batch[i],
				 (unsigned long long)seed);
	}
	for (int i = 0; i < big; i++)
		if (i % 3 != 1)
			free((void *)mh[i].tokens);
	for (int r = 0; r < R; r++)
		free((void *)hist[r].tokens);
	free(logits);
	free(mixed);
}

static void test_args(void **state)
{
	(void)state;
	int32_t out[4];
	qw_sampling p[4] = {{0}};
	void *ws;
	uint16_t *d_logits;
	size_t need = qw_cuda_sample_ws_bytes(4, 64);
	CUDA_OK(cudaMalloc(&ws, need));
	CUDA_OK(cudaMalloc((void **)&d_logits, 4 * 64 * 2));
	CUDA_OK(cudaMemset(d_logits, 0, 4 * 64 * 2));
	qw_err err = {0};
	assert_int_equal(qw_cuda_sample(out, NULL, d_logits, 0, 64, p, NULL, ws, need, 0, &err),
			 QW_OK);
	assert_int_equal(qw_cuda_sample(out, NULL, d_logits, 4, 0, p, NULL, ws, need, 0, &err),
			 QW_E_ARG);
	assert_int_equal(qw_cuda_sample(out, NULL, d_logits, 4, 64, p, NULL, ws, need - 1, 0,
					&err), QW_E_ARG);
	print_message("refused: %s\n", err.msg);
	/* a history token outside the vocabulary; logprobs with nowhere to put them */
	qw_token_count bad = {64, 1};
	qw_sample_history h[4] = {{&bad, 1}};
	p[0].frequency_penalty = 1.0f;
	assert_int_equal(qw_cuda_sample(out, NULL, d_logits, 4, 64, p, h, ws, need, 0, &err),
			 QW_E_ARG);
	assert_non_null(strstr(err.msg, "outside the vocabulary"));
	p[0].frequency_penalty = 0.0f;
	p[1].logprobs = 1;
	assert_int_equal(qw_cuda_sample(out, NULL, d_logits, 4, 64, p, NULL, ws, need, 0, &err),
			 QW_E_ARG);
	p[1].logprobs = 0;
	assert_int_equal(qw_cuda_sample(out, NULL, d_logits, 4, 64, p, NULL, ws, need, 0, &err),
			 QW_OK);
	for (int r = 0; r < 4; r++)
		assert_int_equal(out[r], 0);   /* all equal: the lowest id */
	cudaFree(ws);
	cudaFree(d_logits);
}

static int setup(void **state)
{
	(void)state;
	const char *s = getenv("QW_TEST_SEED");
	seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	rng_state = seed;
	print_message("seed %llu (QW_TEST_SEED=%llu repeats this run)\n", (unsigned long long)seed,
		      (unsigned long long)seed);
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
		print_message("no GPU: this suite needs one\n");
		return -1;
	}
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_args),
		cmocka_unit_test(test_greedy),
		cmocka_unit_test(test_rules),
		cmocka_unit_test(test_vocab_sizes),
		cmocka_unit_test(test_distribution),
		cmocka_unit_test(test_penalties),
		cmocka_unit_test(test_batch_invariant),
	};
	return cmocka_run_group_tests_name("cuda-sample", tests, setup, NULL);
}
