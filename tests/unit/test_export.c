/* test_export.c - the export library (loader/export.h) called directly: the random stream is
 * the counter-based one its header spells out (so another implementation, e.g. on a GPU, can
 * fill any element on its own), the status codes tell bad input from bad options, and a
 * refused export writes nothing.  The command line is test_cli.c's. */
#include "tests/unit/helpers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loader/checkpoint.h"
#include "loader/export.h"

static uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Element i of spec s, computed alone from the header's description. */
static float element(const qw_wspec *s, uint64_t seed, uint64_t i)
{
	const uint64_t g = 0x9e3779b97f4a7c15ull;
	uint64_t s0 = qw_export_stream_start(seed, s->name), j = i / 2;
	double u1 = ((double)(mix(s0 + (2 * j + 1) * g) >> 11) + 0.5) * 0x1.0p-53;
	double u2 = ((double)(mix(s0 + (2 * j + 2) * g) >> 11) + 0.5) * 0x1.0p-53;
	double r = sqrt(-2.0 * log(u1)), a = 2.0 * M_PI * u2, mean, std;
	qw_export_value_dist(s, &mean, &std);
	float v = (float)(mean + std * r * (i % 2 ? sin(a) : cos(a)));
	return qw_bf16_to_f32(qw_f32_to_bf16(v));
}

static void test_stream_is_counter_based(void **state)
{
	qw_wspec specs[3] = {
		{.name = "model.language_model.layers.0.self_attn.q_proj.weight", .ndim = 2,
		 .shape = {48, 64}, .numel = 48 * 64},
		{.name = "model.language_model.norm.weight", .ndim = 1, .shape = {65}, .numel = 65},
		{.name = "model.language_model.embed_tokens.weight", .ndim = 2, .shape = {7, 9},
		 .numel = 63}};
	for (int k = 0; k < 3; k++) {
		const qw_wspec *s = &specs[k];
		float *v = malloc(s->numel * sizeof *v);
		assert_non_null(v);
		qw_export_random_values(s, 42, v);
		for (uint64_t i = 0; i < s->numel; i++)
			if (v[i] != element(s, 42, i))
				fail_msg("%s[%llu]: %g, the formula gives %g", s->name,
					 (unsigned long long)i, v[i], element(s, 42, i));
		double mean, std;
		qw_export_value_dist(s, &mean, &std);
		assert_true(mean == (k == 1 ? 1.0 : 0.0));
		assert_true(std == (k == 0 ? 1.0 / 8.0 : k == 1 ? 0.1 : 1.0));
		free(v);
	}
	/* another seed or another name: another stream */
	assert_true(qw_export_stream_start(1, "a") != qw_export_stream_start(2, "a"));
	assert_true(qw_export_stream_start(1, "a") != qw_export_stream_start(1, "b"));
}

static char *config_text(size_t *len)
{
	return read_file(fixture("hf/tiny-moe/model/config.json"), len);
}

static void test_status_codes(void **state)
{
	char *dir = scratch_new(), out[4200];
	snprintf(out, sizeof out, "%s/model", dir);
	size_t len;
	char *text = config_text(&len);
	qw_export_opts o;
	qw_err err = {0};

	qw_export_opts_default(&o);
	assert_int_equal(qw_export_reduced("{\"model_type\": 3}", 17, "broken.json", &o, out, NULL,
					   &err), QW_E_CONFIG);
	assert_contains(err.msg, "broken.json");
	o.ov[QW_EXPORT_OV_HEADS] = 0;
	assert_int_equal(qw_export_reduced(text, len, "tiny", &o, out, NULL, &err), QW_E_ARG);
	assert_contains(err.msg, "num_attention_heads");
	qw_export_opts_default(&o);
	o.ov[QW_EXPORT_OV_TOP_K] = 9;
	assert_int_equal(qw_export_reduced(text, len, "tiny", &o, out, NULL, &err), QW_E_ARG);
	assert_contains(err.msg, "config after overrides");
	qw_export_opts_default(&o);
	o.ov[QW_EXPORT_OV_MOE_INTER] = 64;
	assert_int_equal(qw_export_reduced(text, len, "tiny", &o, out, NULL, &err), QW_E_ARG);
	assert_contains(err.msg, "square");
	qw_export_opts_default(&o);
	o.shards = 100000;
	assert_int_equal(qw_export_reduced(text, len, "tiny", &o, out, NULL, &err), QW_E_ARG);
	assert_int_equal(access(out, F_OK), -1);                  /* refused: nothing written */

	qw_export_opts_default(&o);
	o.seed = 3;
	o.shards = 2;
	qw_export_summary sum;
	if (qw_export_reduced(text, len, "tiny", &o, out, &sum, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_string_equal(sum.model_type, "qwen3_vl_moe");
	assert_int_equal(sum.shards, 2);
	qw_checkpoint *ck;
	assert_int_equal(qw_ckpt_open(out, &ck, &err), QW_OK);
	assert_int_equal(sum.n_tensors, ck->n_tensors);
	assert_int_equal(sum.bytes, ck->total_bytes);
	qw_ckpt_close(ck);
	free(text);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stream_is_counter_based),
		cmocka_unit_test(test_status_codes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
