/* sample.c - the sampling rule on the host: penalties, greedy, temperature, min-p, top-k,
 * top-p, the draw, and the log-probabilities.  See sample.h. */
#include "kernels/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

// ---------------------------------------------------------------------------------------
// penalties

bool qw_sample_penalized(const qw_sampling *p)
{
	return (p->repetition_penalty > 0 && p->repetition_penalty != 1.0f) ||
	       p->frequency_penalty != 0 || p->presence_penalty != 0;
}

void qw_sample_penalize(float *z, int V, const qw_sampling *p, const qw_sample_history *h)
{
	if (!h)
		return;
	bool rep = p->repetition_penalty > 0 && p->repetition_penalty != 1.0f;
	for (int i = 0; i < h->n; i++) {
		int32_t t = h->tokens[i].token;
		if (t < 0 || t >= V)
			continue;
		uint32_t generated = QW_GENERATED(h->tokens[i].count);
		float x = z[t];
		if (rep && (generated > 0 || (h->tokens[i].count & QW_IN_PROMPT)))
			x = x > 0 ? x / p->repetition_penalty : x * p->repetition_penalty;
		if (generated > 0) {
			/* two roundings, as a GPU makes them (no fused multiply-add) */
			float f = p->frequency_penalty * (float)generated;
			x = x - f;
			x = x - p->presence_penalty;
		}
		z[t] = x;
	}
}

qw_status qw_sample_check(const qw_sampling *params, const qw_sample_history *history,
			  const qw_sample_logprobs *out_logprobs, int rows, int V, qw_err *err)
{
	for (int r = 0; r < rows; r++) {
		const qw_sampling *p = &params[r];
		if (p->logprobs && (!out_logprobs || p->top_logprobs < 0 ||
				    p->top_logprobs > QW_MAX_TOP_LOGPROBS))
			return qw_fail(err, QW_E_ARG, "sample: row %d asks for logprobs with %d top "
				       "ones (at most %d) and %s", r, p->top_logprobs,
				       QW_MAX_TOP_LOGPROBS, out_logprobs ? "room" : "no room for them");
		if (!history)
			continue;
		const qw_sample_history *h = &history[r];
		if (h->n < 0 || h->n > V || (h->n > 0 && !h->tokens))
			return qw_fail(err, QW_E_ARG, "sample: row %d has a history of %d tokens, "
				       "vocabulary %d", r, h->n, V);
		for (int i = 0; i < h->n; i++)
			if (h->tokens[i].token < 0 || h->tokens[i].token >= V)
				return qw_fail(err, QW_E_ARG, "sample: row %d's history holds token %d, "
					       "outside the vocabulary of %d", r, h->tokens[i].token, V);
	}
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// candidates

typedef struct cand {
	double prob;       /* unnormalised: exp((z - max z) / T) */
	int32_t id;
} cand;

uint64_t qw_sample_scratch_bytes(int V)
{
	return (uint64_t)V * (sizeof(cand) + sizeof(float));
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

/* Moves the k best of c[0..n) to c[0..k), sorted best first. */
static void top_k_sorted(cand *c, int n, int k)
{
	for (int i = k / 2 - 1; i >= 0; i--)
		sift_down(c, k, i);
	for (int i = k; i < n; i++)
		if (worse(&c[0], &c[i])) {
			c[0] = c[i];
			sift_down(c, k, 0);
		}
	qsort(c, (size_t)k, sizeof *c, by_prob_desc);
}

// ---------------------------------------------------------------------------------------
// log-probabilities

/* The n best of z by (value desc, id asc) into ids, best first; returns how many (n, or V
 * when smaller). */
static int best_ids(const float *z, int V, int n, int32_t *ids)
{
	int m = 0;
	for (int i = 0; i < V && n > 0; i++) {
		if (m == n && !(z[i] > z[ids[m - 1]]))
			continue;   /* an equal value with a higher id stays out */
		int j = m < n ? m++ : n - 1;
		while (j > 0 && z[i] > z[ids[j - 1]]) {
			ids[j] = ids[j - 1];
			j--;
		}
		ids[j] = i;
	}
	return m;
}

/* The kept set, to tell a top token's log-probability from a removed one's: in id order
 * (no sort) the tokens min-p keeps; sorted, the prefix c[0..keep). */
typedef struct kept_set {
	bool sorted;
	double last_prob;          /* sorted: the last kept candidate */
	int32_t last_id;
	double min_p;              /* id order: the threshold (0: all) */
	double max, temperature;
} kept_set;

static bool is_kept(const kept_set *k, const float *z, int32_t id)
{
	double e = exp(((double)z[id] - k->max) / k->temperature);
	if (!k->sorted)
		return k->min_p <= 0 || e >= k->min_p;
	return e > k->last_prob || (e == k->last_prob && id <= k->last_id);
}

/* lp for token: log-probability (z - max) / T - log_mass of the kept, -inf for the rest
 * (kept NULL: every token is kept). */
static void fill_logprobs(qw_sample_logprobs *lp, const float *z, int V, const qw_sampling *p,
			  double max, double temperature, double log_mass, const kept_set *kept,
			  int32_t token)
{
	int n = p->top_logprobs < 0 ? 0 : p->top_logprobs;
	if (n > QW_MAX_TOP_LOGPROBS)
		n = QW_MAX_TOP_LOGPROBS;
	lp->logprob = (float)(((double)z[token] - max) / temperature - log_mass);
	lp->n_top = best_ids(z, V, n, lp->top_ids);
	for (int i = 0; i < lp->n_top; i++) {
		int32_t id = lp->top_ids[i];
		lp->top_logprobs[i] = !kept || is_kept(kept, z, id)
				      ? (float)(((double)z[id] - max) / temperature - log_mass)
				      : -INFINITY;
	}
}

// ---------------------------------------------------------------------------------------

int32_t qw_sample_row(const float *logits, int V, const qw_sampling *p,
		      const qw_sample_history *h, void *scratch, qw_sample_logprobs *lp)
{
	bool penalize = h && h->n > 0 && qw_sample_penalized(p);
	bool greedy = p->temperature <= 0.0f;
	if (greedy && !penalize && !p->logprobs)
		return qw_argmax(logits, V);
	void *owned = NULL;
	if (!scratch && !(scratch = owned = malloc(qw_sample_scratch_bytes(V))))
		return -1;
	cand *c = scratch;
	const float *z = logits;
	if (penalize) {
		float *zz = (float *)(c + V);
		memcpy(zz, logits, (size_t)V * sizeof *zz);
		qw_sample_penalize(zz, V, p, h);
		z = zz;
	}
	int32_t best = qw_argmax(z, V);
	double max = z[best];
	if (greedy) {
		if (p->logprobs) {
			double sum = 0.0;
			for (int i = 0; i < V; i++)
				sum += exp((double)z[i] - max);
			fill_logprobs(lp, z, V, p, max, 1.0, log(sum), NULL, best);
		}
		free(owned);
		return best;
	}

	/* exp((z - max) / T) of the tokens min-p keeps, in id order */
	double temperature = p->temperature;
	int n = 0;
	for (int i = 0; i < V; i++) {
		double e = exp(((double)z[i] - max) / temperature);
		if (p->min_p <= 0 || e >= p->min_p)
			c[n++] = (cand){e, i};
	}
	bool sorted = (p->top_k > 0 && p->top_k < V) || p->top_p < 1.0f;
	int keep = n;
	if (p->top_k > 0 && p->top_k < n) {
		top_k_sorted(c, n, p->top_k);
		keep = p->top_k;
	} else if (sorted) {
		qsort(c, (size_t)n, sizeof *c, by_prob_desc);
	}
	/* else: the walk goes in id order */

	if (p->top_p < 1.0f) {
		/* smallest prefix of what is kept whose share of its mass reaches top_p */
		double kept_mass = 0.0, cum = 0.0;
		for (int i = 0; i < keep; i++)
			kept_mass += c[i].prob;
		int m = 0;
		while (m < keep && (m == 0 || cum < p->top_p * kept_mass))
			cum += c[m++].prob;
		keep = m;
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
	if (p->logprobs) {
		kept_set k = {sorted, c[keep - 1].prob, c[keep - 1].id, p->min_p, max, temperature};
		fill_logprobs(lp, z, V, p, max, temperature, log(total), &k, token);
	}
	free(owned);
	return token;
}
