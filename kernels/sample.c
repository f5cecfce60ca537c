/* sample.c - greedy and temperature / top-k / top-p sampling.  See sample.h. */
#include "kernels/sample.h"

#include <math.h>
#include <stdlib.h>

int32_t qw_argmax(const float *x, int n)
{
	int32_t best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

double qw_sample_uniform(uint64_t seed, uint64_t step)
{
	uint64_t z = seed ^ (step * 0x9e3779b97f4a7c15ull) ^ 0xd1b54a32d192ed03ull;  /* splitmix64 */
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (double)(z >> 11) * 0x1.0p-53;
}

typedef struct cand {
	double prob;
	int32_t id;
} cand;

uint64_t qw_sample_scratch_bytes(int V)
{
	return (uint64_t)V * sizeof(cand);
}

/* probability descending, then id ascending */
static int by_prob_desc(const void *a, const void *b)
{
	const cand *x = a, *y = b;
	if (x->prob != y->prob)
		return x->prob > y->prob ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/* Sifts c[i] down a min-heap of n by (prob, then -id): the root is the worst kept. */
static int worse(const cand *a, const cand *b)
{
	return by_prob_desc(a, b) > 0;
}

static void sift_down(cand *h, int n, int i)
{
	for (;;) {
		int l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && worse(&h[l], &h[m]))
			m = l;
		if (r < n && worse(&h[r], &h[m]))
			m = r;
		if (m == i)
			return;
		cand t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

/* Moves the k best of c[0..V) to c[0..k), sorted best first. */
static void top_k_sorted(cand *c, int V, int k)
{
	for (int i = k / 2 - 1; i >= 0; i--)
		sift_down(c, k, i);
	for (int i = k; i < V; i++)
		if (worse(&c[0], &c[i])) {
			c[0] = c[i];
			sift_down(c, k, 0);
		}
	qsort(c, (size_t)k, sizeof *c, by_prob_desc);
}

int32_t qw_sample_row(const float *logits, int V, const qw_sampling *p, void *scratch)
{
	if (p->temperature <= 0.0f)
		return qw_argmax(logits, V);
	void *owned = NULL;
	if (!scratch && !(scratch = owned = malloc(qw_sample_scratch_bytes(V))))
		return -1;
	cand *c = scratch;

	/* softmax of logits / temperature, in double */
	double max = logits[qw_argmax(logits, V)], sum = 0.0;
	for (int i = 0; i < V; i++) {
		c[i] = (cand){exp(((double)logits[i] - max) / p->temperature), i};
		sum += c[i].prob;
	}
	for (int i = 0; i < V; i++)
		c[i].prob /= sum;
	int keep = (p->top_k > 0 && p->top_k < V) ? p->top_k : V;
	if (keep < V)
		top_k_sorted(c, V, keep);
	else if (p->top_p < 1.0f)
		qsort(c, (size_t)V, sizeof *c, by_prob_desc);
	/* else: nothing is cut, and the walk goes in id order */

	if (p->top_p < 1.0f) {
		/* smallest prefix of the top-k whose share of the top-k's mass reaches top_p */
		double kept_mass = 0.0, cum = 0.0;
		for (int i = 0; i < keep; i++)
			kept_mass += c[i].prob;
		int n = 0;
		while (n < keep && (n == 0 || cum < p->top_p * kept_mass))
			cum += c[n++].prob;
		keep = n;
	}
	double total = 0.0;
	for (int i = 0; i < keep; i++)
		total += c[i].prob;
	double u = qw_sample_uniform(p->seed, p->step) * total, acc = 0.0;
	int32_t token = c[keep - 1].id;
	for (int i = 0; i < keep; i++) {
		acc += c[i].prob;
		if (u < acc) {
			token = c[i].id;
			break;
		}
	}
	free(owned);
	return token;
}
