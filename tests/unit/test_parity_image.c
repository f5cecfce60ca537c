/* test_parity_image.c - the multimodal ladder on both fixtures, and each phase failing when
 * its part is broken: processor settings (preprocess), a vision block weight (vision), a
 * deepstack merger weight (connector), the image token id (positions), the M-RoPE section
 * (forward: text prompts cannot catch it), a stale KV cache (generate). */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/parity.h"
#include "daemon/image/preprocess.h"
#include "kernels/cpu/cpu_backend.h"
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

static void climb(const char *model_dir, const char *model, int stages,
		  const qw_preprocess_opts *po, qw_parity_result *r)
{
	char ref[4096];
	snprintf(ref, sizeof ref, "%s/reference.safetensors", fixture(model));
	qw_parity_opts o = {.model_dir = model_dir, .reference = ref, .case_name = "image",
			    .stages = stages, .trace = true, .th = &qw_thresholds_fp32,
			    .preprocess = po};
	qw_err err = {0};
	if (qw_parity_run(&o, be, r, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_true(r->multimodal);
	assert_int_equal(r->n_steps, QW_MM_N_STEPS);
}

/* Expects every phase before `step` to pass, `step` to fail, and none after it to run. */
static void expect_fail_at(const qw_parity_result *r, int step, const char *note)
{
	for (int i = 0; i < step; i++)
		if (!r->step[i].ran || !r->step[i].pass)
			fail_msg("phase %s failed before %s: %s", r->names[i], r->names[step],
				 r->step[i].note);
	if (!r->step[step].ran || r->step[step].pass)
		fail_msg("phase %s passed", r->names[step]);
	for (int i = step + 1; i < r->n_steps; i++)
		assert_false(r->step[i].ran);
	if (note)
		assert_contains(r->step[step].note, note);
	assert_false(r->pass);
}

static char *model_copy(const char *model, tensor_edit_fn edit, void *ctx)
{
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/model", fixture(model));
	return copy_model(dir, edit, ctx);
}

static void test_fixtures_pass(void **state)
{
	const char *models[] = {"hf/tiny-moe", "hf/tiny-dense"};
	for (int i = 0; i < 2; i++) {
		char dir[4096];
		snprintf(dir, sizeof dir, "%s/model", fixture(models[i]));
		qw_parity_result r1, r2;
		climb(dir, models[i], 1, NULL, &r1);
		for (int s = 0; s < r1.n_steps; s++)
			if (!r1.step[s].pass)
				fail_msg("%s: %s: %s", models[i], r1.names[s], r1.step[s].note);
		assert_true(r1.pass);
		assert_int_equal(r1.step[QW_MM_PREPROCESS].m.exact, 1.0);
		assert_int_equal(r1.decode_matched, 16);
		assert_int_equal(r1.trace_first_bad, -1);
		/* two in-process stages compute the same logits, bit for bit */
		climb(dir, models[i], 2, NULL, &r2);
		assert_true(r2.pass);
		assert_memory_equal(&r1.step[QW_MM_FORWARD].m, &r2.step[QW_MM_FORWARD].m,
				    sizeof r1.step[QW_MM_FORWARD].m);
		assert_memory_equal(&r1.step[QW_MM_GENERATE].m, &r2.step[QW_MM_GENERATE].m,
				    sizeof r1.step[QW_MM_GENERATE].m);
	}
}

static void test_processor_settings_fail_preprocess(void **state)
{
	qw_preprocess_opts po = QW_PREPROCESS_DEFAULT;
	po.min_pixels = 4 * 65536;      /* another processor's budget: another grid */
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/model", fixture("hf/tiny-moe"));
	qw_parity_result r;
	climb(dir, "hf/tiny-moe", 1, &po, &r);
	expect_fail_at(&r, QW_MM_PREPROCESS, "grid");
}

static void test_vision_weight_fails_vision(void **state)
{
	perturb p = {"model.visual.blocks.1.mlp.linear_fc2.weight", 5, 0.5f};
	char *copy = model_copy("hf/tiny-moe", perturb_bf16, &p);
	qw_parity_result r;
	climb(copy, "hf/tiny-moe", 1, NULL, &r);
	expect_fail_at(&r, QW_MM_VISION, "block 1");
	scratch_free(copy);
}

static void test_deepstack_weight_fails_connector(void **state)
{
	perturb p = {"model.visual.deepstack_merger_list.2.linear_fc2.bias", 3, 0.5f};
	char *copy = model_copy("hf/tiny-moe", perturb_bf16, &p);
	qw_parity_result r;
	climb(copy, "hf/tiny-moe", 1, NULL, &r);
	expect_fail_at(&r, QW_MM_CONNECTOR, "deepstack 2");
	scratch_free(copy);
}

static void edit_config(const char *dir, const char *from, const char *to)
{
	size_t len;
	char *cfg = read_file(path_in(dir, "config.json"), &len);
	char *at = strstr(cfg, from);
	if (!at)
		fail_msg("config has no '%s'", from);
	size_t nf = strlen(from), nt = strlen(to);
	char *out = malloc(len + nt + 1);
	memcpy(out, cfg, (size_t)(at - cfg));
	memcpy(out + (at - cfg), to, nt);
	memcpy(out + (at - cfg) + nt, at + nf, len - (size_t)(at - cfg) - nf);
	write_file(path_in(dir, "config.json"), out, len - nf + nt);
	free(out);
	free(cfg);
}

static void test_image_token_fails_positions(void **state)
{
	char *copy = model_copy("hf/tiny-moe", NULL, NULL);
	/* pads no longer recognised: the vision_end token (999) is taken for the image pad */
	edit_config(copy, "\"image_token_id\": 1000", "\"image_token_id\": 999");
	qw_parity_result r;
	climb(copy, "hf/tiny-moe", 1, NULL, &r);
	expect_fail_at(&r, QW_MM_POSITIONS, "pad tokens");
	scratch_free(copy);
}

static void test_mrope_section_fails_forward(void **state)
{
	char *copy = model_copy("hf/tiny-moe", NULL, NULL);
	/* [16, 0, 0] turns every pair by the temporal position, as plain RoPE would.  (Some
	 * wrong splits are invisible: in the interleaved layout [5, 6, 5] is the same map as
	 * [6, 5, 5] at head_dim 32, and [8, 4, 4] only moves pairs 13 and 14, whose rotation
	 * at theta 5e6 is below 1e-4 radians for these positions.) */
	edit_config(copy, "6,\n        5,\n        5", "16,\n        0,\n        0");
	qw_parity_result r;
	climb(copy, "hf/tiny-moe", 1, NULL, &r);
	expect_fail_at(&r, QW_MM_FORWARD, NULL);
	scratch_free(copy);
}

static void test_stale_cache_fails_generate(void **state)
{
	kv_stale_after_prompt(be, true);
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/model", fixture("hf/tiny-dense"));
	qw_parity_result r;
	climb(dir, "hf/tiny-dense", 1, NULL, &r);
	kv_stale_after_prompt(be, false);
	expect_fail_at(&r, QW_MM_GENERATE, "step");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixtures_pass),
		cmocka_unit_test(test_processor_settings_fail_preprocess),
		cmocka_unit_test(test_vision_weight_fails_vision),
		cmocka_unit_test(test_deepstack_weight_fails_connector),
		cmocka_unit_test(test_image_token_fails_positions),
		cmocka_unit_test(test_mrope_section_fails_forward),
		cmocka_unit_test(test_stale_cache_fails_generate),
	};
	return cmocka_run_group_tests_name("parity-image", tests, setup, teardown);
}
