/* test_sample.c - the sampler's processors (kernels/sample.h) one by one against values
 * worked out by hand from their definitions: HF's RepetitionPenaltyLogitsProcessor and
 * MinPLogitsWarper, vLLM's frequency and presence penalties, their order (vLLM's), the draw
 * over what min-p, top-k and top-p keep, and the log-probabilities of the processed logits;
 * then the CPU backend's sample op with histories and logprobs, and what it refuses. */
#include "tests/unit/helpers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/sample.h"

#define TOL 1e-6

static void near(double got, double want, const char *what)
{
	if (!(fabs(got - want) <= TOL * (1 + fabs(want))))
		fail_msg("%s: %.9g, want %.9g", what, got, want);
}

static qw_sample_history hist(const qw_token_count *t, int n)
{
	return (qw_sample_history){t, n};
}

// ---------------------------------------------------------------------------------------
// penalties

static void test_repetition_penalty(void **state)
{
	/* HF: score < 0 ? score * r : score / r, for every token of the prompt or generated */
	float z[6] = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f, -4.0f};
	qw_token_count t[] = {{0, QW_IN_PROMPT}, {1, 1}, {4, QW_IN_PROMPT | 2}, {5, 0}};
	qw_sample_history h = hist(t, 4);
	qw_sampling p = {.repetition_penalty = 2.0f};
	assert_true(qw_sample_penalized(&p));
	qw_sample_penalize(z, 6, &p, &h);
	float want[6] = {1.0f, -2.0f, 0.5f, 3.0f, 0.0f, -4.0f};   /* 5: neither prompt nor made */
	assert_memory_equal(z, want, sizeof z);
	/* below one it raises them: 2 * ... */
	float y[2] = {2.0f, -1.0f};
	qw_token_count both[] = {{0, QW_IN_PROMPT}, {1, QW_IN_PROMPT}};
	h = hist(both, 2);
	p.repetition_penalty = 0.5f;
	qw_sample_penalize(y, 2, &p, &h);
	assert_true(y[0] == 4.0f && y[1] == -0.5f);
	/* off at 1 and at 0 (unset) */
	p.repetition_penalty = 1.0f;
	assert_false(qw_sample_penalized(&p));
	p.repetition_penalty = 0.0f;
	assert_false(qw_sample_penalized(&p));
}

static void test_frequency_presence_penalties(void **state)
{
	/* vLLM / OpenAI: z - f * count - p * (count > 0), generated tokens only */
	float z[4] = {1.0f, 1.0f, 1.0f, 1.0f};
	qw_token_count t[] = {{0, 3}, {1, 1}, {2, QW_IN_PROMPT}};
	qw_sample_history h = hist(t, 3);
	qw_sampling p = {.frequency_penalty = 0.5f, .presence_penalty = 0.25f};
	assert_true(qw_sample_penalized(&p));
	qw_sample_penalize(z, 4, &p, &h);
	float want[4] = {1.0f - 1.5f - 0.25f, 1.0f - 0.5f - 0.25f, 1.0f, 1.0f};
	assert_memory_equal(z, want, sizeof z);
	/* negative values favour repeats */
	float y[1] = {0.0f};
	qw_token_count one[] = {{0, 2}};
	h = hist(one, 1);
	p = (qw_sampling){.frequency_penalty = -1.0f, .presence_penalty = -0.5f};
	qw_sample_penalize(y, 1, &p, &h);
	assert_true(y[0] == 2.5f);
	/* all three in vLLM's order: repetition, then frequency, then presence */
	float x[1] = {3.0f};
	qw_token_count made[] = {{0, 2}};
	h = hist(made, 1);
	p = (qw_sampling){.repetition_penalty = 2.0f, .frequency_penalty = 0.5f,
			  .presence_penalty = 1.0f};
	qw_sample_penalize(x, 1, &p, &h);
	assert_true(x[0] == 3.0f / 2 - 1.0f - 1.0f);
	/* tokens outside the row are skipped */
	float w[2] = {1.0f, 1.0f};
	qw_token_count out[] = {{-1, 1}, {2, 1}};
	h = hist(out, 2);
	qw_sample_penalize(w, 2, &p, &h);
	assert_true(w[0] == 1.0f && w[1] == 1.0f);
}

static void test_penalties_change_the_greedy_token(void **state)
{
	float logits[3] = {2.0f, 1.9f, -5.0f};
	qw_token_count t[] = {{0, QW_IN_PROMPT}};
	qw_sample_history h = hist(t, 1);
	qw_sampling p = {.repetition_penalty = 1.5f};     /* 2 / 1.5 = 1.33 < 1.9 */
	assert_int_equal(qw_sample_row(logits, 3, &p, &h, NULL, NULL), 1);
	p = (qw_sampling){.presence_penalty = 0.2f};      /* a prompt token: no presence penalty */
	assert_int_equal(qw_sample_row(logits, 3, &p, &h, NULL, NULL), 0);
	qw_token_count made[] = {{0, 1}};
	h = hist(made, 1);
	assert_int_equal(qw_sample_row(logits, 3, &p, &h, NULL, NULL), 1);   /* 1.8 < 1.9 */
	/* the logits themselves are left alone */
	assert_true(logits[0] == 2.0f);
	/* no history: nothing to penalise */
	assert_int_equal(qw_sample_row(logits, 3, &p, NULL, NULL, NULL), 0);
}

// ---------------------------------------------------------------------------------------
// min-p, top-k, top-p and the draw

static void test_min_p(void **state)
{
	/* probabilities in proportion 1 : .5 : .25 : .1; min-p .3 keeps the first two */
	float logits[4] = {0.0f, logf(0.5f), logf(0.25f), logf(0.1f)};
	int seen[4] = {0};
	for (int s = 0; s < 400; s++) {
		qw_sampling p = {.temperature = 1, .top_p = 1, .min_p = 0.3f, .seed = (uint64_t)s};
		int32_t tok = qw_sample_row(logits, 4, &p, NULL, NULL, NULL);
		/* the walk in id order over the kept mass 1.5 */
		double u = qw_sample_uniform((uint64_t)s, 0) * (1.0 + exp((double)logits[1]));
		assert_int_equal(tok, u < 1.0 ? 0 : 1);
		seen[tok]++;
	}
	assert_true(seen[0] > 0 && seen[1] > 0 && seen[2] + seen[3] == 0);
	/* relative to the most likely after the temperature: at T = 2 the proportions are the
	 * square roots, 1 : .71 : .5 : .32, and .4 keeps three */
	for (int s = 0; s < 400; s++) {
		qw_sampling p = {.temperature = 2, .top_p = 1, .min_p = 0.4f, .seed = (uint64_t)s};
		assert_true(qw_sample_row(logits, 4, &p, NULL, NULL, NULL) != 3);
	}
	/* min-p 1 keeps the best alone */
	qw_sampling only = {.temperature = 1, .top_p = 1, .min_p = 1.0f, .seed = 5};
	assert_int_equal(qw_sample_row(logits, 4, &only, NULL, NULL, NULL), 0);
}

static void test_min_p_comes_before_top_p(void **state)
{
	/* proportions 1 : .9 : .1 x 10.  vLLM: min-p .5 keeps {0, 1} (mass 1.9), then top-p .5
	 * needs .95 of it: token 0 alone.  HF's order (top-p over everything, 1.45: {0, 1},
	 * then min-p) would keep token 1 too. */
	float logits[12];
	logits[0] = 0.0f;
	logits[1] = logf(0.9f);
	for (int i = 2; i < 12; i++)
		logits[i] = logf(0.1f);
	for (int s = 0; s < 200; s++) {
		qw_sampling p = {.temperature = 1, .top_p = 0.5f, .min_p = 0.5f, .seed = (uint64_t)s};
		assert_int_equal(qw_sample_row(logits, 12, &p, NULL, NULL, NULL), 0);
	}
}

static void test_draw_best_first(void **state)
{
	/* top-k 2 of proportions 1 : .5 : .4: the walk best first over mass 1.5 */
	float logits[3] = {logf(0.4f), 0.0f, logf(0.5f)};
	for (int s = 0; s < 300; s++) {
		qw_sampling p = {.temperature = 1, .top_k = 2, .top_p = 1, .seed = (uint64_t)s,
				 .step = 3};
		double u = qw_sample_uniform((uint64_t)s, 3) * (1.0 + exp((double)logits[2]));
		assert_int_equal(qw_sample_row(logits, 3, &p, NULL, NULL, NULL), u < 1.0 ? 1 : 2);
	}
}

// ---------------------------------------------------------------------------------------
// log-probabilities

static void test_logprobs_plain(void **state)
{
	/* log_softmax([1, 2, 3]): l - 3 - log(1 + e^-1 + e^-2) */
	float logits[3] = {1.0f, 2.0f, 3.0f};
	double lse = 3.0 + log(1.0 + exp(-1.0) + exp(-2.0));
	qw_sample_logprobs lp;
	qw_sampling g = {.logprobs = 1, .top_logprobs = 3};
	assert_int_equal(qw_sample_row(logits, 3, &g, NULL, NULL, &lp), 2);
	near(lp.logprob, 3.0 - lse, "greedy: the chosen");
	assert_int_equal(lp.n_top, 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(lp.top_ids[i], 2 - i);
		near(lp.top_logprobs[i], 3.0 - i - lse, "greedy: a top one");
	}
	/* temperature 2: (l - 3) / 2 - log(sum exp((l - 3) / 2)) */
	double lse2 = log(1.0 + exp(-0.5) + exp(-1.0));
	for (int s = 0; s < 20; s++) {
		qw_sampling p = {.temperature = 2, .top_p = 1, .seed = (uint64_t)s, .logprobs = 1,
				 .top_logprobs = 2};
		int32_t tok = qw_sample_row(logits, 3, &p, NULL, NULL, &lp);
		near(lp.logprob, (logits[tok] - 3.0) / 2 - lse2, "T 2: the chosen");
		assert_int_equal(lp.n_top, 2);
		assert_int_equal(lp.top_ids[0], 2);
		assert_int_equal(lp.top_ids[1], 1);
		near(lp.top_logprobs[0], -lse2, "T 2: the best");
		near(lp.top_logprobs[1], -0.5 - lse2, "T 2: the second");
	}
	/* no top ones asked: the chosen only */
	qw_sampling none = {.logprobs = 1};
	qw_sample_row(logits, 3, &none, NULL, NULL, &lp);
	assert_int_equal(lp.n_top, 0);
	/* equal logits: lower ids first */
	float flat[4] = {0.5f, 0.5f, 0.5f, 0.5f};
	qw_sampling t3 = {.logprobs = 1, .top_logprobs = 3};
	assert_int_equal(qw_sample_row(flat, 4, &t3, NULL, NULL, &lp), 0);
	assert_int_equal(lp.top_ids[0], 0);
	assert_int_equal(lp.top_ids[1], 1);
	assert_int_equal(lp.top_ids[2], 2);
	near(lp.logprob, -log(4.0), "flat");
}

static void test_logprobs_after_cuts(void **state)
{
	/* top-k 2 of [1, 2, 3]: log_softmax over {2, 1}; token 0 removed */
	float logits[3] = {1.0f, 2.0f, 3.0f};
	double lse = log(1.0 + exp(-1.0));
	qw_sample_logprobs lp;
	for (int s = 0; s < 20; s++) {
		qw_sampling p = {.temperature = 1, .top_k = 2, .top_p = 1, .seed = (uint64_t)s,
				 .logprobs = 1, .top_logprobs = 3};
		int32_t tok = qw_sample_row(logits, 3, &p, NULL, NULL, &lp);
		assert_true(tok == 1 || tok == 2);
		near(lp.logprob, logits[tok] - 3.0 - lse, "top-k: the chosen");
		assert_int_equal(lp.n_top, 3);
		near(lp.top_logprobs[0], -lse, "top-k: the best");
		near(lp.top_logprobs[1], -1.0 - lse, "top-k: the second");
		assert_int_equal(lp.top_ids[2], 0);
		assert_true(isinf(lp.top_logprobs[2]) && lp.top_logprobs[2] < 0);
	}
	/* min-p .3 of 1 : .5 : .25 : .1 keeps two: log(2/3), log(1/3), then -inf */
	float m[4] = {0.0f, logf(0.5f), logf(0.25f), logf(0.1f)};
	double lm = log(1.0 + exp((double)m[1]));
	qw_sampling p = {.temperature = 1, .top_p = 1, .min_p = 0.3f, .seed = 1, .logprobs = 1,
			 .top_logprobs = 4};
	int32_t tok = qw_sample_row(m, 4, &p, NULL, NULL, &lp);
	near(lp.logprob, m[tok] - lm, "min-p: the chosen");
	near(lp.top_logprobs[0], -lm, "min-p: the best");
	near(lp.top_logprobs[1], m[1] - lm, "min-p: the second");
	assert_true(isinf(lp.top_logprobs[2]) && isinf(lp.top_logprobs[3]));
	/* top-k 1: the chosen is certain */
	qw_sampling k1 = {.temperature = 1.5f, .top_k = 1, .top_p = 1, .seed = 4, .logprobs = 1,
			  .top_logprobs = 2};
	assert_int_equal(qw_sample_row(logits, 3, &k1, NULL, NULL, &lp), 2);
	assert_true(lp.logprob == 0.0f && lp.top_logprobs[0] == 0.0f && isinf(lp.top_logprobs[1]));
}

static void test_logprobs_of_penalised_logits(void **state)
{
	/* repetition 2 on token 2 of the prompt: z = [1, 2, 1.5]; greedy picks 1 and the
	 * log-probabilities are those of z */
	float logits[3] = {1.0f, 2.0f, 3.0f};
	qw_token_count t[] = {{2, QW_IN_PROMPT}};
	qw_sample_history h = hist(t, 1);
	qw_sampling p = {.repetition_penalty = 2.0f, .logprobs = 1, .top_logprobs = 3};
	qw_sample_logprobs lp;
	assert_int_equal(qw_sample_row(logits, 3, &p, &h, NULL, &lp), 1);
	double lse = 2.0 + log(exp(-1.0) + 1.0 + exp(-0.5));
	near(lp.logprob, 2.0 - lse, "penalised: the chosen");
	assert_int_equal(lp.top_ids[0], 1);
	assert_int_equal(lp.top_ids[1], 2);
	assert_int_equal(lp.top_ids[2], 0);
	near(lp.top_logprobs[1], 1.5 - lse, "penalised: the second");
	/* frequency with temperature: z = [1, 2, 3 - 2 * 1] = [1, 2, 1], T = 0.5 */
	qw_token_count made[] = {{2, 2}};
	h = hist(made, 1);
	qw_sampling q = {.temperature = 0.5f, .top_p = 1, .frequency_penalty = 1.0f, .seed = 2,
			 .logprobs = 1, .top_logprobs = 1};
	int32_t tok = qw_sample_row(logits, 3, &q, &h, NULL, &lp);
	double z[3] = {1, 2, 1}, l2 = log(exp(-2.0) + 1.0 + exp(-2.0));
	near(lp.logprob, (z[tok] - 2.0) / 0.5 - l2, "frequency: the chosen");
	assert_int_equal(lp.top_ids[0], 1);
}

// ---------------------------------------------------------------------------------------
// the CPU backend's op

static void test_backend_op(void **state)
{
	qw_err err = {0};
	qw_backend *be;
	assert_int_equal(qw_cpu_backend_create(&be, &err), QW_OK);
	enum { R = 3, V = 5 };
	qw_act logits;
	assert_int_equal(be->act_alloc(be, R, V, &logits, &err), QW_OK);
	float x[R * V] = {0, 1, 2, 3, 4,   4, 3, 2, 1, 0,   1, 1, 5, 1, 1};
	assert_int_equal(be->act_write(be, &logits, x, &err), QW_OK);
	qw_token_count t0[] = {{4, QW_IN_PROMPT}}, t2[] = {{2, 3}};
	qw_sample_history h[R] = {{t0, 1}, {NULL, 0}, {t2, 1}};
	qw_sampling p[R] = {{.repetition_penalty = 10.0f},       /* 4 / 10 < 3: token 3 */
			    {.logprobs = 1, .top_logprobs = 2},
			    {.frequency_penalty = 2.0f, .logprobs = 1}};   /* 5 - 6 < 1 */
	int32_t tok[R];
	qw_sample_logprobs lp[R];
	assert_int_equal(be->sample(be, &logits, p, h, tok, lp, &err), QW_OK);
	assert_int_equal(tok[0], 3);
	assert_int_equal(tok[1], 0);
	assert_int_equal(lp[1].n_top, 2);
	assert_int_equal(lp[1].top_ids[1], 1);
	assert_int_equal(tok[2], 0);
	near(lp[2].logprob, 1.0 - log(4 * exp(1.0) + exp(-1.0)), "op: row 2");
	/* no history at all: row 0 keeps its best */
	assert_int_equal(be->sample(be, &logits, p, NULL, tok, lp, &err), QW_OK);
	assert_int_equal(tok[0], 4);
	/* refused: a token outside the vocabulary, logprobs without room or past 20 */
	qw_token_count bad[] = {{V, 1}};
	qw_sample_history hb[R] = {{bad, 1}, {NULL, 0}, {NULL, 0}};
	assert_int_equal(be->sample(be, &logits, p, hb, tok, lp, &err), QW_E_ARG);
	assert_contains(err.msg, "outside the vocabulary");
	assert_int_equal(be->sample(be, &logits, p, h, tok, NULL, &err), QW_E_ARG);
	assert_contains(err.msg, "logprobs");
	p[1].top_logprobs = 21;
	assert_int_equal(be->sample(be, &logits, p, h, tok, lp, &err), QW_E_ARG);
	assert_contains(err.msg, "at most 20");
	be->act_free(be, &logits);
	be->destroy(be);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_repetition_penalty),
		cmocka_unit_test(test_frequency_presence_penalties),
		cmocka_unit_test(test_penalties_change_the_greedy_token),
		cmocka_unit_test(test_min_p),
		cmocka_unit_test(test_min_p_comes_before_top_p),
		cmocka_unit_test(test_draw_best_first),
		cmocka_unit_test(test_logprobs_plain),
		cmocka_unit_test(test_logprobs_after_cuts),
		cmocka_unit_test(test_logprobs_of_penalised_logits),
		cmocka_unit_test(test_backend_op),
	};
	return cmocka_run_group_tests_name("sample", tests, NULL, NULL);
}
