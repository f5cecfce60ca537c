/* test_plan.c - parameter counts against the fixtures' manifests and the published model
 * sizes, and the stage planner against brute force. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/checkpoint.h"
#include "loader/config.h"
#include "loader/plan.h"
#include "loader/weights.h"

static void specs_of(const char *config_rel, qw_config *cfg, qw_wspec **specs, size_t *n)
{
	qw_err err = {0};
	if (qw_config_load(fixture(config_rel), cfg, &err) != QW_OK ||
	    qw_wmap_build(cfg, QW_EXPERTS_FUSED, NULL, specs, n, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

/* Sum of numel over the manifest's weight_keys: what HF saved. */
static uint64_t manifest_params(const char *name)
{
	char rel[128];
	snprintf(rel, sizeof rel, "hf/%s/manifest.json", name);
	json_error_t jerr;
	json_t *m = json_load_file(fixture(rel), 0, &jerr);
	assert_non_null(m);
	uint64_t total = 0;
	const char *key;
	json_t *v;
	json_object_foreach(json_object_get(m, "weight_keys"), key, v) {
		uint64_t numel = 1;
		size_t i;
		json_t *d;
		json_array_foreach(json_array_get(v, 1), i, d) numel *= (uint64_t)json_integer_value(d);
		total += numel;
	}
	json_decref(m);
	return total;
}

static void test_counts_match_manifests(void **state)
{
	(void)state;
	const char *names[] = {"tiny-moe", "tiny-dense"};
	for (int i = 0; i < 2; i++) {
		char rel[128];
		snprintf(rel, sizeof rel, "hf/%s/model/config.json", names[i]);
		qw_config cfg;
		qw_wspec *specs;
		size_t n;
		specs_of(rel, &cfg, &specs, &n);
		qw_params p;
		qw_count_params(specs, n, cfg.text.num_experts_per_tok, &p);
		assert_int_equal(p.total, manifest_params(names[i]));
		free(specs);
	}
}

static void test_published_sizes(void **state)
{
	(void)state;
	qw_config cfg;
	qw_wspec *specs;
	size_t n;
	qw_params p;

	specs_of("configs/Qwen3-VL-235B-A22B-Thinking.json", &cfg, &specs, &n);
	qw_count_params(specs, n, cfg.text.num_experts_per_tok, &p);
	assert_true(p.total > 234e9 && p.total < 237e9);     /* "235B" */
	assert_true(p.active > 21.5e9 && p.active < 23e9);   /* "A22B" */
	/* active, from the architecture: per layer attention, q/k norms, two RMSNorms, the
	 * router and top-k of E experts' three matrices; embeddings, lm_head, final norm */
	uint64_t H = 4096, Hq = 64, Hkv = 4, D = 128, E = 128, k = 8, I = 1536, V = 151936;
	uint64_t layer = 2 * Hq * D * H + 2 * Hkv * D * H + 2 * D + 2 * H + E * H + k * 3 * H * I;
	assert_int_equal(p.active, 94 * layer + 2 * V * H + H);
	free(specs);

	specs_of("configs/Qwen3-VL-30B-A3B-Instruct.json", &cfg, &specs, &n);
	qw_count_params(specs, n, cfg.text.num_experts_per_tok, &p);
	assert_true(p.total > 30e9 && p.total < 32e9);       /* "30B" (31.1B with vision) */
	assert_true(p.active > 3.0e9 && p.active < 3.6e9);   /* "A3B" */
	free(specs);

	specs_of("configs/Qwen3-VL-8B-Instruct.json", &cfg, &specs, &n);
	qw_count_params(specs, n, cfg.text.num_experts_per_tok, &p);
	assert_true(p.total > 8.5e9 && p.total < 9e9);
	assert_int_equal(p.active + p.vision, p.total);      /* dense: all of the text active */
	free(specs);

	assert_int_equal(qw_kv_bytes_per_token_layer(&cfg, QW_DT_BF16), 2 * 8 * 128 * 2);
}

/* Smallest possible largest stage, by trying every split of the layers. */
static uint64_t brute_best(const uint64_t *layer, int L, int S, uint64_t first, uint64_t last,
			   int s, int begin, uint64_t worst)
{
	if (s == S - 1) {
		uint64_t b = last + (S == 1 ? first : 0);
		for (int l = begin; l < L; l++)
			b += layer[l];
		return b > worst ? b : worst;
	}
	uint64_t best = UINT64_MAX;
	for (int end = begin + 1; end <= L - (S - 1 - s); end++) {
		uint64_t b = s == 0 ? first : 0;
		for (int l = begin; l < end; l++)
			b += layer[l];
		uint64_t r = brute_best(layer, L, S, first, last, s + 1, end, b > worst ? b : worst);
		if (r < best)
			best = r;
	}
	return best;
}

static void test_planner_optimal(void **state)
{
	(void)state;
	/* a synthetic model: random layer sizes, embeddings and head of random size */
	uint64_t rng = 7;
	for (int trial = 0; trial < 200; trial++) {
		int L = 1 + trial % 9;
		qw_config cfg = {0};
		cfg.text.num_layers = L;
		cfg.text.num_kv_heads = 1;
		cfg.text.head_dim = 2;
		qw_wspec specs[16];
		uint64_t layer[16];
		size_t n = 0;
		for (int l = 0; l < L; l++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			layer[l] = 1 + (rng >> 40) % 1000;
			specs[n++] = (qw_wspec){.part = QW_PART_LAYER, .layer = l, .bytes = layer[l]};
		}
		uint64_t first = (rng >> 20) % 1500, last = (rng >> 8) % 1500;
		specs[n++] = (qw_wspec){.part = QW_PART_EMBED, .layer = -1, .bytes = first};
		specs[n++] = (qw_wspec){.part = QW_PART_HEAD, .layer = -1, .bytes = last};
		for (int S = 1; S <= L && S <= 5; S++) {
			qw_stage_plan plan[8];
			qw_err err = {0};
			assert_int_equal(qw_plan_stages(&cfg, specs, n, S, QW_DT_BF16, plan, &err), 0);
			uint64_t worst = 0;
			for (int s = 0; s < S; s++) {
				assert_int_equal(plan[s].stage.index, s);
				assert_int_equal(plan[s].stage.count, S);
				assert_int_equal(plan[s].stage.layer_begin,
						 s ? plan[s - 1].stage.layer_end : 0);
				assert_true(plan[s].stage.layer_end > plan[s].stage.layer_begin);
				uint64_t b = (s == 0 ? first : 0) + (s == S - 1 ? last : 0);
				for (int l = plan[s].stage.layer_begin; l < plan[s].stage.layer_end; l++)
					b += layer[l];
				assert_int_equal(plan[s].weight_bytes, b);
				assert_int_equal(plan[s].kv_bytes_per_token,
						 (uint64_t)(plan[s].stage.layer_end -
							    plan[s].stage.layer_begin) * 2 * 1 * 2 * 2);
				worst = b > worst ? b : worst;
			}
			assert_int_equal(plan[S - 1].stage.layer_end, L);
			assert_int_equal(worst, brute_best(layer, L, S, first, last, 0, 0, 0));
		}
	}
}

/* When stage 0 is fixed by a large embedding, the other stages still share the layers
 * evenly (many splits reach the same largest stage; the even one is chosen). */
static void test_planner_spreads_the_rest(void **state)
{
	(void)state;
	qw_config cfg = {0};
	cfg.text.num_layers = 36;
	cfg.text.num_kv_heads = 1;
	cfg.text.head_dim = 2;
	qw_wspec specs[40];
	size_t n = 0;
	for (int l = 0; l < 36; l++)
		specs[n++] = (qw_wspec){.part = QW_PART_LAYER, .layer = l, .bytes = 100};
	specs[n++] = (qw_wspec){.part = QW_PART_EMBED, .layer = -1, .bytes = 1000};
	specs[n++] = (qw_wspec){.part = QW_PART_HEAD, .layer = -1, .bytes = 100};
	qw_stage_plan plan[8];
	qw_err err = {0};
	assert_int_equal(qw_plan_stages(&cfg, specs, n, 8, QW_DT_BF16, plan, &err), QW_OK);
	assert_int_equal(plan[0].stage.layer_end, 1);            /* 1000 + 100: the largest */
	uint64_t lo = UINT64_MAX, hi = 0;                       /* the rest within one layer */
	for (int s = 1; s < 8; s++) {
		lo = plan[s].weight_bytes < lo ? plan[s].weight_bytes : lo;
		hi = plan[s].weight_bytes > hi ? plan[s].weight_bytes : hi;
	}
	assert_true(hi - lo <= 100);
}

/* A model whose lm_head is its embedding table (tiny-dense): one stage holds the table once,
 * so its bytes are the checkpoint's, tensor for tensor (what a worker loads and reports);
 * with more stages the last holds a copy as its lm_head. */
static void test_planner_tied_embedding(void **state)
{
	qw_config cfg;
	qw_checkpoint *ck;
	qw_err err = {0};
	if (qw_config_load(fixture("hf/tiny-dense/model/config.json"), &cfg, &err) != QW_OK ||
	    qw_ckpt_open(fixture("hf/tiny-dense/model"), &ck, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_true(cfg.tie_word_embeddings);
	const qw_tensor *embed = qw_ckpt_find(ck, "model.language_model.embed_tokens.weight");
	assert_non_null(embed);
	qw_stage_plan plan[4];
	assert_int_equal(qw_plan_checkpoint(&cfg, ck, 1, QW_DT_BF16, plan, &err), QW_OK);
	assert_int_equal(plan[0].weight_bytes, ck->total_bytes);
	for (int S = 2; S <= 3; S++) {
		assert_int_equal(qw_plan_checkpoint(&cfg, ck, S, QW_DT_BF16, plan, &err), QW_OK);
		uint64_t sum = 0;
		for (int s = 0; s < S; s++)
			sum += plan[s].weight_bytes;
		assert_int_equal(sum, ck->total_bytes + embed->nbytes);
	}
	qw_ckpt_close(ck);
}

static void test_planner_limits(void **state)
{
	(void)state;
	qw_config cfg;
	qw_wspec *specs;
	size_t n;
	specs_of("hf/tiny-moe/model/config.json", &cfg, &specs, &n);
	qw_stage_plan plan[8];
	qw_err err = {0};
	assert_int_equal(qw_plan_stages(&cfg, specs, n, 5, QW_DT_BF16, plan, &err), QW_E_ARG);
	assert_contains(err.msg, "4 decoder layers into 5 stages");
	assert_int_equal(qw_plan_stages(&cfg, specs, n, 0, QW_DT_BF16, plan, &err), QW_E_ARG);
	free(specs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counts_match_manifests),
		cmocka_unit_test(test_published_sizes),
		cmocka_unit_test(test_planner_optimal),
		cmocka_unit_test(test_planner_spreads_the_rest),
		cmocka_unit_test(test_planner_tied_embedding),
		cmocka_unit_test(test_planner_limits),
	};
	return cmocka_run_group_tests_name("plan", tests, NULL, NULL);
}
