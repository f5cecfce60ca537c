/* test_parity.c - the CPU reference against the HF fixtures through the parity ladder, the
 * ladder failing where it should (a perturbed weight, a wrong rope, a broken KV-cache
 * update, each at the step that catches it), in-process stages bit-identical to one,
 * seeded sampling reproducible, and a backend that cannot fuse a layer's q/k/v weights
 * running that layer's three GEMMs instead. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/parity.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/pipeline.h"
#include "kernels/sample.h"
#include "loader/dtype.h"

static qw_backend *be;

static int setup(void **state)
{
	qw_err err = {0};
	return qw_cpu_backend_create(&be, &err) != QW_OK;
}

static int teardown(void **state)
{
	be->destroy(be);
	return 0;
}

static void climb(const char *model_dir, const char *model, const char *case_name, int stages,
		  qw_parity_result *r)
{
	char ref[4096];
	snprintf(ref, sizeof ref, "%s", fixture(model));
	strncat(ref, "/reference.safetensors", sizeof ref - strlen(ref) - 1);
	qw_parity_opts o = {.model_dir = model_dir, .reference = ref, .case_name = case_name,
			    .stages = stages, .trace = true, .th = &qw_thresholds_fp32};
	qw_err err = {0};
	if (qw_parity_run(&o, be, r, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

/* The reference's greedy tokens, from the manifest (written by HF, not by us). */
static int manifest_greedy(const char *model, const char *key, int32_t *out)
{
	char rel[256];
	snprintf(rel, sizeof rel, "%s/manifest.json", model);
	json_error_t jerr;
	json_t *m = json_load_file(fixture(rel), 0, &jerr);
	assert_non_null(m);
	json_t *g = json_object_get(json_object_get(m, "greedy"), key);
	size_t i;
	json_t *v;
	json_array_foreach(g, i, v) out[i] = (int32_t)json_integer_value(v);
	int n = (int)json_array_size(g);
	json_decref(m);
	return n;
}

static void test_fixtures_pass(void **state)
{
	const char *models[] = {"hf/tiny-moe", "hf/tiny-dense"};
	const char *cases[] = {"short", "long"};
	for (int mi = 0; mi < 2; mi++)
		for (int ci = 0; ci < 2; ci++) {
			char dir[4096];
			snprintf(dir, sizeof dir, "%s/model", fixture(models[mi]));
			qw_parity_result r;
			climb(dir, models[mi], cases[ci], 1, &r);
			for (int s = 0; s < QW_N_STEPS; s++)
				if (r.step[s].ran && !r.step[s].pass)
					fail_msg("%s %s: step %s failed: %s", models[mi], cases[ci],
						 r.names[s], r.step[s].note);
			assert_true(r.pass);
			assert_int_equal(r.trace_first_bad, -1);
			assert_int_equal(r.n_trace, (mi == 0 ? 4 : 3) + 1);
			if (ci == 0) {       /* short has a greedy continuation */
				int32_t want[64];
				assert_int_equal(manifest_greedy(models[mi], "short.fp32", want), 16);
				assert_int_equal(r.decode_steps, 16);
				assert_int_equal(r.decode_matched, 16);
			}
		}
}

// ---------------------------------------------------------------------------------------
// faults the ladder must catch

static void test_perturbed_weight_fails_first_logit(void **state)
{
	/* layer 2's o_proj: the attention output at position 0 is V itself, so position 0 sees it */
	perturb p = {"model.language_model.layers.2.self_attn.o_proj.weight", 77, 0.5f};
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", fixture("hf/tiny-moe/model"));
	char *copy = copy_model(dir, perturb_bf16, &p);
	qw_parity_result r;
	climb(copy, "hf/tiny-moe", "short", 1, &r);
	assert_true(r.step[QW_STEP_SHAPES].pass);
	assert_true(r.step[QW_STEP_FIRST].ran && !r.step[QW_STEP_FIRST].pass);
	assert_false(r.step[QW_STEP_POSITIONS].ran);
	assert_false(r.pass);
	assert_int_equal(r.trace_first_bad, 3);        /* hidden.3: the output of layer 2 */
	scratch_free(copy);
}

static void test_wrong_rope_fails_positions(void **state)
{
	/* the rotation base: position 0 does not turn, so first-logit still passes */
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", fixture("hf/tiny-moe/model"));
	char *copy = copy_model(dir, NULL, NULL);
	size_t len;
	char *cfg = read_file(path_in(copy, "config.json"), &len);
	char *at = strstr(cfg, "\"rope_theta\": 5000000.0");
	assert_non_null(at);
	memcpy(at, "\"rope_theta\": 500000.00", 23);
	write_file(path_in(copy, "config.json"), cfg, len);
	free(cfg);
	qw_parity_result r;
	climb(copy, "hf/tiny-moe", "short", 1, &r);
	assert_true(r.step[QW_STEP_FIRST].pass);
	assert_true(r.step[QW_STEP_POSITIONS].ran && !r.step[QW_STEP_POSITIONS].pass);
	assert_false(r.step[QW_STEP_DECODE].ran);
	assert_false(r.pass);
	scratch_free(copy);
}

static void test_broken_kv_update_fails_decode(void **state)
{
	kv_stale_after_prompt(be, true);
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", fixture("hf/tiny-dense/model"));
	qw_parity_result r;
	climb(dir, "hf/tiny-dense", "short", 1, &r);
	kv_stale_after_prompt(be, false);
	assert_true(r.step[QW_STEP_FIRST].pass);
	assert_true(r.step[QW_STEP_POSITIONS].pass);
	assert_true(r.step[QW_STEP_DECODE].ran && !r.step[QW_STEP_DECODE].pass);
	assert_false(r.pass);
}

// ---------------------------------------------------------------------------------------
// stages and sampling

/* A fixture's model (e.g. "hf/tiny-dense"): its config and checkpoint. */
static void open_model(const char *model, qw_config *cfg, qw_checkpoint **ck)
{
	char dir[4096], cfg_path[4200];
	snprintf(dir, sizeof dir, "%s/model", fixture(model));
	snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
	qw_err err = {0};
	assert_int_equal(qw_config_load(cfg_path, cfg, &err), QW_OK);
	assert_int_equal(qw_ckpt_open(dir, ck, &err), QW_OK);
}

static void run_pipeline(const char *model, int stages, int n_prompt, int n_new,
			 const qw_sampling *sampling, float *logits, int32_t *tokens)
{
	qw_config cfg;
	qw_checkpoint *ck;
	qw_err err = {0};
	open_model(model, &cfg, &ck);
	qw_pipeline p;
	if (qw_pipeline_init(&p, &cfg, ck, be, stages, n_prompt + n_new, n_prompt, &err) != QW_OK)
		fail_msg("%s", err.msg);
	int V = cfg.text.vocab_size;
	int32_t prompt[64];
	for (int i = 0; i < n_prompt; i++)
		prompt[i] = (int32_t)((i * 37 + 11) % V);
	assert_int_equal(qw_pipeline_append(&p, prompt, n_prompt, NULL, NULL, true, logits, &err), QW_OK);
	float *last = logits + (size_t)(n_prompt - 1) * (size_t)V;
	for (int i = 0; i < n_new; i++) {
		qw_sampling sp = *sampling;
		sp.step = (uint64_t)i;
		tokens[i] = qw_sample_row(last, V, &sp, NULL, NULL, NULL);
		float *next = logits + (size_t)(n_prompt + i) * (size_t)V;
		assert_int_equal(qw_pipeline_append(&p, &tokens[i], 1, NULL, NULL, false, next, &err), QW_OK);
		last = next;
	}
	qw_pipeline_free(&p);
	qw_ckpt_close(ck);
}

static void test_stages_bit_identical(void **state)
{
	const char *models[] = {"hf/tiny-moe", "hf/tiny-dense"};
	enum { P = 10, N = 6, V = 1024 };
	static float one[(P + N) * V], many[(P + N) * V];
	int32_t t1[N], tn[N];
	qw_sampling greedy = {.temperature = 0, .top_p = 1};
	for (int m = 0; m < 2; m++) {
		run_pipeline(models[m], 1, P, N, &greedy, one, t1);
		for (int S = 2; S <= 3; S++) {
			run_pipeline(models[m], S, P, N, &greedy, many, tn);
			assert_memory_equal(one, many, sizeof one);
			assert_memory_equal(t1, tn, sizeof t1);
		}
	}
}

static void test_seeded_sampling(void **state)
{
	enum { P = 6, N = 12, V = 1024 };
	static float logits[(P + N) * V];
	int32_t a[N], b[N], c[N];
	qw_sampling s7 = {.temperature = 1.5f, .top_k = 50, .top_p = 0.95f, .seed = 7};
	qw_sampling s8 = s7;
	s8.seed = 8;
	run_pipeline("hf/tiny-moe", 1, P, N, &s7, logits, a);
	run_pipeline("hf/tiny-moe", 2, P, N, &s7, logits, b);
	run_pipeline("hf/tiny-moe", 1, P, N, &s8, logits, c);
	assert_memory_equal(a, b, sizeof a);
	assert_true(memcmp(a, c, sizeof a) != 0);
}

/* A backend whose fuse_rows refuses every set of parts (QW_E_ARG, as the CUDA backend does
 * for FP8 parts of partial blocks) or fails (anything else): the forward must keep the
 * separate q/k/v GEMMs for the first, so the fused op never runs, and fail the load for the
 * second. */
static qw_status refuse_fuse(qw_backend *b, const qw_tensor *const *parts, int n,
			     const qw_tensor **out, qw_err *err)
{
	return qw_fail(err, QW_E_ARG, "test: these parts cannot be fused");
}

static qw_status fail_fuse(qw_backend *b, const qw_tensor *const *parts, int n,
			   const qw_tensor **out, qw_err *err)
{
	return qw_fail(err, QW_E_NOMEM, "test: out of memory fusing");
}

static qw_status no_fused_qkv(qw_backend *b, qw_act *q_out, const qw_act *qkv,
			      const qw_tensor *q_norm, const qw_tensor *k_norm,
			      const int32_t *positions, int n_heads, int n_kv_heads, int head_dim,
			      const int *mrope_section, float theta, float eps, qw_kv_cache *kv,
			      int layer, const qw_batch *batch, qw_err *err)
{
	fail_msg("qk_norm_rope_kv ran for a layer whose q/k/v weights were not fused");
	return QW_E_ARG;
}

static void test_unfusable_qkv_stays_separate(void **state)
{
	enum { P = 8, N = 4, V = 1024 };
	static float plain[(P + N) * V], wrapped[(P + N) * V];
	int32_t tp[N], tw[N];
	qw_sampling greedy = {.temperature = 0, .top_p = 1};
	run_pipeline("hf/tiny-dense", 1, P, N, &greedy, plain, tp);
	qw_backend *cpu = be, refusing = *be;
	refusing.fuse_rows = refuse_fuse;
	refusing.qk_norm_rope_kv = no_fused_qkv;
	be = &refusing;
	run_pipeline("hf/tiny-dense", 1, P, N, &greedy, wrapped, tw);
	be = cpu;
	assert_memory_equal(plain, wrapped, sizeof plain);
	assert_memory_equal(tp, tw, sizeof tp);

	refusing.fuse_rows = fail_fuse;
	qw_config cfg;
	qw_checkpoint *ck;
	qw_err err = {0};
	open_model("hf/tiny-dense", &cfg, &ck);
	qw_pipeline p;
	assert_int_equal(qw_pipeline_init(&p, &cfg, ck, &refusing, 1, P, P, &err), QW_E_NOMEM);
	assert_contains(err.msg, "layer 0: q/k/v as one weight");
	assert_contains(err.msg, "test: out of memory fusing");
	qw_ckpt_close(ck);
}

static void test_cli(void **state)
{
	char *dir = scratch_new(), *out;
	const char *m = fixture("hf/tiny-dense");
	char model[4096];
	snprintf(model, sizeof model, "%s", m);
	assert_int_equal(run_capture(&out, "%s --model %s/model --reference %s/reference.safetensors "
				     "--case short --stages 2 --report %s", program("qwen-parity"),
				     model, model, path_in(dir, "r.json")), 0);
	assert_contains(out, "decode: 16 of 16 greedy tokens equal");
	free(out);
	json_error_t jerr;
	json_t *r = json_load_file(path_in(dir, "r.json"), 0, &jerr);
	assert_non_null(r);
	assert_true(json_is_true(json_object_get(r, "pass")));
	assert_int_equal(json_integer_value(json_object_get(r, "stages")), 2);
	assert_int_equal(json_array_size(json_object_get(r, "steps")), 4);
	json_decref(r);

	assert_int_equal(run_capture(&out, "%s --model %s/model --reference %s/reference.safetensors "
				     "--case nope", program("qwen-parity"), model, model), 2);
	assert_contains(out, "no case 'nope'");
	free(out);
	assert_int_equal(run_capture(&out, "%s --model %s/model --reference %s/reference.safetensors "
				     "--case image", program("qwen-parity"), model, model), 0);
	assert_contains(out, "preprocess   PASS");
	assert_contains(out, "generate     PASS");
	free(out);
	assert_int_equal(run_capture(&out, "%s --model %s/model --reference %s/reference.safetensors "
				     "--case short --backend tpu", program("qwen-parity"), model,
				     model), 2);
	free(out);
	/* a model that does not match: exit 1, the failing step named */
	perturb p = {"model.language_model.norm.weight", 3, 1.0f};
	char src[4096];
	snprintf(src, sizeof src, "%s/model", model);
	char *copy = copy_model(src, perturb_bf16, &p);
	assert_int_equal(run_capture(&out, "%s --model %s --reference %s/reference.safetensors "
				     "--case short", program("qwen-parity"), copy, model), 1);
	assert_contains(out, "first-logit  FAIL");
	free(out);
	scratch_free(copy);
	assert_int_equal(run_capture(&out, "%s --model %s/model --reference %s/reference.safetensors "
				     "--case short --stages 9", program("qwen-parity"), model, model), 2);
	assert_contains(out, "3 decoder layers into 9 stages");
	free(out);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixtures_pass),
		cmocka_unit_test(test_perturbed_weight_fails_first_logit),
		cmocka_unit_test(test_wrong_rope_fails_positions),
		cmocka_unit_test(test_broken_kv_update_fails_decode),
		cmocka_unit_test(test_stages_bit_identical),
		cmocka_unit_test(test_seeded_sampling),
		cmocka_unit_test(test_unfusable_qkv_stays_separate),
		cmocka_unit_test(test_cli),
	};
	return cmocka_run_group_tests_name("parity", tests, setup, teardown);
}
