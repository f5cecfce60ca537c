/* test_qwend_sampling.c - the sampler's settings through the real daemon (CPU backend, HF's
 * tiny dense model), held to their definitions computed here from the model's own logits
 * (the model run in this process, kernels/pipeline.h, fed the daemon's tokens):
 *   - greedy with the three penalties: each token is the argmax of the penalised logits
 *     (HF's repetition penalty over the prompt and what was generated, vLLM's frequency and
 *     presence penalties over what was generated), and its log-probabilities (the chosen
 *     token's, the top five's ids and values) are log_softmax of them;
 *   - sampled with temperature, min-p and top-k, penalised: each token lies in the set they
 *     keep, its log-probability is log_softmax of the processed logits over that set, and
 *     the top ones outside it are -inf;
 *   - the same requests again (the prompt then comes from the prefix cache) and through a
 *     3-stage pipeline give the same tokens and log-probabilities, bit for bit;
 *   - a request without logprobs gets none; logprobs past 20 and a penalty out of range are
 *     refused naming the field.
 * With QWEND_TEST_DEVICE=cuda the daemon runs on the GPU (bf16 logits), which the CPU model
 * here does not reproduce, and whose logits' bits may depend on a step's rows (a prompt from
 * the cache prefills its last token alone): the definitions and the same-bits comparisons
 * are then left to test_cuda_sample (the GPU's sampler against the CPU's, and to the same
 * bits in any batch); what holds on any backend is checked on both (the greedy token the
 * best of its tops, log-probabilities of a distribution, the penalties changing the answer,
 * the refusals). */
#include "tests/unit/qwend_harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/pipeline.h"
#include "loader/checkpoint.h"

#define MODEL "hf/tiny-dense/model"
#define N_NEW 12
#define MAX_TOP 20

/* One generated token as the daemon reported it. */
typedef struct tok_lp {
	int32_t token;
	double logprob;
	int n_top;
	int32_t top_ids[MAX_TOP];
	double top[MAX_TOP];
} tok_lp;

typedef struct answer {
	tok_lp t[64];
	int n;
	bool any_logprobs;
	char code[32], message[512];
} answer;

static void run(const qwend *d, const qw_request *r, answer *a)
{
	memset(a, 0, sizeof *a);
	qw_client c;
	open_client(&c, d);
	qw_err err = {0};
	assert_int_equal(qw_client_send(&c, r, &err), QW_OK);
	for (;;) {
		qw_reply rep;
		if (qw_client_recv(&c, &rep, 60000, &err) != QW_OK)
			fail_msg("no reply: %s", err.msg);
		if (rep.type == QW_REPLY_CHUNK) {
			a->any_logprobs |= rep.logprobs != NULL;
			for (int i = 0; i < rep.n_token_ids && a->n < 64; i++) {
				tok_lp *t = &a->t[a->n++];
				t->token = rep.token_ids[i];
				if (!rep.logprobs)
					continue;
				t->logprob = rep.logprobs[i].logprob;
				t->n_top = rep.logprobs[i].n_top;
				assert_true(t->n_top <= MAX_TOP);
				for (int k = 0; k < t->n_top; k++) {
					t->top_ids[k] = rep.logprobs[i].top[k].id;
					t->top[k] = rep.logprobs[i].top[k].logprob;
				}
			}
		}
		bool end = rep.type == QW_REPLY_DONE || rep.type == QW_REPLY_ERROR;
		if (rep.type == QW_REPLY_ERROR) {
			snprintf(a->code, sizeof a->code, "%s", rep.code);
			snprintf(a->message, sizeof a->message, "%s", rep.message);
		}
		qw_reply_free(&rep);
		if (end)
			break;
	}
	qw_client_close(&c);
}

// ---------------------------------------------------------------------------------------
// the definitions, over the model's logits

typedef struct ranked {
	double v;
	int id;
} ranked;

static int by_value_desc(const void *a, const void *b)
{
	const ranked *x = a, *y = b;
	if (x->v != y->v)
		return x->v > y->v ? -1 : 1;
	return x->id - y->id;
}

static void near(double got, double want, const char *what, int i)
{
	bool inf = isinf(want) && want < 0;
	if (inf ? !(isinf(got) && got < 0) : !(fabs(got - want) <= 1e-4 * (1 + fabs(want))))
		fail_msg("token %d: %s is %.9g, the definition gives %.9g", i, what, got, want);
}

/* Runs the model over the prompt and the daemon's tokens; at each one, applies p's
 * penalties, temperature, min-p and top-k as HF and vLLM define them, and holds the
 * daemon's token and log-probabilities (n_top asked) to them. */
static void check(const int32_t *prompt, int n_prompt, const answer *a, const qw_sampling *p,
		  int n_top)
{
	char cfg_path[4200];
	snprintf(cfg_path, sizeof cfg_path, "%s/config.json", fixture(MODEL));
	qw_config cfg;
	qw_checkpoint *ck;
	qw_backend *be;
	qw_err err = {0};
	assert_int_equal(qw_config_load(cfg_path, &cfg, &err), QW_OK);
	assert_int_equal(qw_ckpt_open(fixture(MODEL), &ck, &err), QW_OK);
	assert_int_equal(qw_cpu_backend_create(&be, &err), QW_OK);
	qw_pipeline pl;
	if (qw_pipeline_init(&pl, &cfg, ck, be, 1, n_prompt + a->n + 1, n_prompt, &err) != QW_OK)
		fail_msg("%s", err.msg);
	int V = cfg.text.vocab_size;
	float *logits = malloc((size_t)V * sizeof *logits), *z = malloc((size_t)V * sizeof *z);
	ranked *r = malloc((size_t)V * sizeof *r);
	int *generated = calloc((size_t)V, sizeof *generated);
	bool *in_prompt = calloc((size_t)V, sizeof *in_prompt);
	assert_true(logits && z && r && generated && in_prompt);
	for (int i = 0; i < n_prompt; i++)
		in_prompt[prompt[i]] = true;
	assert_int_equal(qw_pipeline_append(&pl, prompt, n_prompt, NULL, NULL, false, logits,
					    &err), QW_OK);
	for (int i = 0; i < a->n; i++) {
		const tok_lp *t = &a->t[i];
		/* penalties, as HF's RepetitionPenaltyLogitsProcessor and vLLM's apply_penalties */
		for (int v = 0; v < V; v++) {
			float x = logits[v];
			if (p->repetition_penalty != 1.0f && (in_prompt[v] || generated[v]))
				x = x < 0 ? x * p->repetition_penalty : x / p->repetition_penalty;
			if (generated[v]) {
				x = x - p->frequency_penalty * (float)generated[v];
				x = x - p->presence_penalty;
			}
			z[v] = x;
		}
		double max = -INFINITY;
		for (int v = 0; v < V; v++)
			max = fmax(max, z[v]);
		double T = p->temperature > 0 ? p->temperature : 1.0, mass = 0.0;
		for (int v = 0; v < V; v++)
			r[v] = (ranked){z[v], v};
		qsort(r, (size_t)V, sizeof *r, by_value_desc);
		/* what is kept: everything when greedy; else min-p, then the top k of that */
		int kept = V;
		if (p->temperature > 0) {
			kept = 0;
			while (kept < V && exp((r[kept].v - max) / T) >= p->min_p)
				kept++;
			if (p->top_k > 0 && p->top_k < kept)
				kept = p->top_k;
		}
		for (int k = 0; k < kept; k++)
			mass += exp((r[k].v - max) / T);
		bool ok = false;
		for (int k = 0; k < kept && !ok; k++)
			ok = r[k].id == t->token;
		if (p->temperature <= 0 ? t->token != r[0].id : !ok)
			fail_msg("token %d: the daemon gave %d; the definition %s %d", i, t->token,
				 p->temperature <= 0 ? "gives" : "keeps none such, its best is",
				 r[0].id);
		near(t->logprob, (z[t->token] - max) / T - log(mass), "the chosen's logprob", i);
		assert_int_equal(t->n_top, n_top);
		for (int k = 0; k < n_top; k++) {
			if (t->top_ids[k] != r[k].id)
				fail_msg("token %d: top %d is %d; the definition gives %d", i, k,
					 t->top_ids[k], r[k].id);
			near(t->top[k], k < kept ? (r[k].v - max) / T - log(mass) : -INFINITY,
			     "a top one's logprob", i);
		}
		generated[t->token]++;
		assert_int_equal(qw_pipeline_append(&pl, &t->token, 1, NULL, NULL, false, logits,
						    &err), QW_OK);
	}
	free(logits);
	free(z);
	free(r);
	free(generated);
	free(in_prompt);
	qw_pipeline_free(&pl);
	be->destroy(be);
	qw_ckpt_close(ck);
}

/* What holds on any backend: a greedy token is the most likely one; the listed
 * log-probabilities are of one distribution (their probabilities sum to at most 1). */
static void consistent(const answer *a, bool greedy)
{
	for (int i = 0; i < a->n; i++) {
		const tok_lp *t = &a->t[i];
		double mass = 0;
		for (int k = 0; k < t->n_top; k++)
			mass += exp(t->top[k]);
		if (mass > 1 + 1e-6 || t->logprob > 0)
			fail_msg("token %d: log-probabilities of no distribution", i);
		if (greedy && (t->top_ids[0] != t->token || t->top[0] != t->logprob))
			fail_msg("token %d: greedy %d (%g), the best listed %d (%g)", i, t->token,
				 t->logprob, t->top_ids[0], t->top[0]);
	}
}

static void same(const answer *x, const answer *y, const char *what)
{
	if (x->n != y->n || memcmp(x->t, y->t, (size_t)x->n * sizeof *x->t) != 0)
		fail_msg("%s: the tokens or their log-probabilities differ", what);
}

// ---------------------------------------------------------------------------------------

static void test_definitions(void **state)
{
	int n;
	int32_t *ids = fixture_ids("tiny-dense", "short.input_ids", &n);
	/* greedy, penalised; sampled, penalised, with min-p and top-k */
	qw_request g = token_request(ids, n, N_NEW, NULL, 0);
	g.repetition_penalty = 1.3;
	g.frequency_penalty = 0.4;
	g.presence_penalty = 0.3;
	g.logprobs = true;
	g.top_logprobs = 5;
	g.ignore_eos = true;
	qw_request s = g;
	s.greedy = false;
	s.temperature = 0.8;
	s.top_k = 40;
	s.min_p = 0.02;
	s.seed = 7;
	s.has_seed = true;
	s.top_logprobs = MAX_TOP;
	qw_request plain = token_request(ids, n, N_NEW, NULL, 0);
	plain.ignore_eos = true;
	const char *args1[] = {"--kv-blocks", "64", NULL}, *args3[] = {"--stages", "3",
									"--kv-blocks", "64", NULL};
	answer ag, as, ag2, as2, ag3, as3, ap;
	qwend d;
	qwend_start(&d, fixture(MODEL), args1, NULL, true);
	run(&d, &g, &ag);
	run(&d, &s, &as);
	run(&d, &g, &ag2);   /* the prompt now comes from the prefix cache */
	run(&d, &s, &as2);
	run(&d, &plain, &ap);
	qwend_stop(&d);
	qwend_start(&d, fixture(MODEL), args3, NULL, true);
	run(&d, &g, &ag3);
	run(&d, &s, &as3);
	qwend_stop(&d);

	assert_int_equal(ag.n, N_NEW);
	assert_int_equal(as.n, N_NEW);
	qw_sampling pg = {.repetition_penalty = 1.3f, .frequency_penalty = 0.4f,
			  .presence_penalty = 0.3f};
	qw_sampling ps = pg;
	ps.temperature = 0.8f;
	ps.top_k = 40;
	ps.min_p = 0.02f;
	consistent(&ag, true);
	consistent(&as, false);
	const char *device = getenv("QWEND_TEST_DEVICE");
	if (device && !strcmp(device, "cuda")) {
		fprintf(stderr, "(on the GPU: the definitions and same bits are test_cuda_sample's)\n");
	} else {
		check(ids, n, &ag, &pg, 5);
		check(ids, n, &as, &ps, MAX_TOP);
		same(&ag, &ag2, "greedy, prompt from the cache");
		same(&as, &as2, "sampled, prompt from the cache");
		same(&ag, &ag3, "greedy, 3 stages");
		same(&as, &as3, "sampled, 3 stages");
	}
	/* the penalties changed the greedy answer; without logprobs, none are sent */
	bool differs = false;
	for (int i = 0; i < N_NEW; i++)
		differs |= ap.t[i].token != ag.t[i].token;
	assert_true(differs);
	assert_false(ap.any_logprobs);
	assert_true(ag.any_logprobs);
	free(ids);
}

static void test_refusals(void **state)
{
	int n;
	int32_t *ids = fixture_ids("tiny-dense", "short.input_ids", &n);
	const char *args[] = {"--kv-blocks", "64", NULL};
	qwend d;
	qwend_start(&d, fixture(MODEL), args, NULL, true);
	qw_request r = token_request(ids, n, 4, NULL, 0);
	r.logprobs = true;
	r.top_logprobs = 21;
	answer a;
	run(&d, &r, &a);
	assert_string_equal(a.code, "bad_request");
	assert_contains(a.message, "\"logprobs\" must be in [0, 20]");
	r = token_request(ids, n, 4, NULL, 0);
	r.frequency_penalty = 2.5;
	run(&d, &r, &a);
	assert_string_equal(a.code, "bad_request");
	assert_contains(a.message, "\"frequency_penalty\" must be in [-2, 2]");
	qwend_stop(&d);
	free(ids);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_definitions),
		cmocka_unit_test(test_refusals),
	};
	return cmocka_run_group_tests_name("qwend-sampling", tests, NULL, NULL);
}
