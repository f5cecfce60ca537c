/* test_config.c - config.json of every supported model type, both spellings, and an
 * error naming the field for each invalid or inconsistent value. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/config.h"

static void load_ok(const char *rel, qw_config *cfg)
{
	qw_err err = {0};
	if (qw_config_load(fixture(rel), cfg, &err) != QW_OK)
		fail_msg("%s: %s", rel, err.msg);
}

static void test_tiny_moe(void **state)
{
	(void)state;
	qw_config c;
	load_ok("hf/tiny-moe/model/config.json", &c);
	assert_int_equal(c.arch, QW_ARCH_QWEN3_VL_MOE);
	assert_true(c.has_vision && c.is_moe && !c.tie_word_embeddings);
	assert_int_equal(c.dtype, QW_DT_BF16);
	const qw_text_config *t = &c.text;
	assert_int_equal(t->vocab_size, 1024);
	assert_int_equal(t->hidden_size, 128);
	assert_int_equal(t->num_layers, 4);
	assert_int_equal(t->num_heads, 4);
	assert_int_equal(t->num_kv_heads, 2);
	assert_int_equal(t->head_dim, 32);
	assert_int_equal(t->num_experts, 8);
	assert_int_equal(t->num_experts_per_tok, 2);
	assert_int_equal(t->moe_intermediate_size, 48);
	assert_int_equal(t->intermediate_size, 256);
	assert_int_equal(t->mrope_section[0], 6);
	assert_int_equal(t->mrope_section[1], 5);
	assert_int_equal(t->mrope_section[2], 5);
	assert_true(t->rope_theta == 5000000.0);
	assert_true(t->rms_norm_eps == 1e-6);
	assert_int_equal(t->bos_token_id, -1);
	assert_int_equal(t->n_eos, 0);
	for (int L = 0; L < 4; L++)
		assert_true(qw_layer_is_moe(&c, L));
	const qw_vision_config *v = &c.vision;
	assert_int_equal(v->depth, 4);
	assert_int_equal(v->hidden_size, 64);
	assert_int_equal(v->num_heads, 4);
	assert_int_equal(v->intermediate_size, 128);
	assert_int_equal(v->out_hidden_size, 128);
	assert_int_equal(v->n_deepstack, 3);
	assert_int_equal(v->deepstack_indexes[2], 3);
	assert_int_equal(c.image_token_id, 1000);
	assert_int_equal(c.vision_start_token_id, 998);
}

static void test_both_spellings_agree(void **state)
{
	(void)state;
	qw_config hub, v5;
	load_ok("hf/tiny-moe/model/config.json", &hub);
	load_ok("hf/tiny-moe/model/config.v5.json", &v5);
	assert_memory_equal(&hub.text, &v5.text, sizeof hub.text);
	assert_memory_equal(&hub.vision, &v5.vision, sizeof hub.vision);
	assert_int_equal(hub.tie_word_embeddings, v5.tie_word_embeddings);
	assert_int_equal(hub.image_token_id, v5.image_token_id);
}

static void test_tiny_dense(void **state)
{
	(void)state;
	qw_config c;
	load_ok("hf/tiny-dense/model/config.json", &c);
	assert_int_equal(c.arch, QW_ARCH_QWEN3_VL);
	assert_true(c.has_vision && !c.is_moe && c.tie_word_embeddings);
	assert_int_equal(c.text.num_layers, 3);
	assert_int_equal(c.text.intermediate_size, 256);
	assert_int_equal(c.text.num_experts, 0);
	assert_false(qw_layer_is_moe(&c, 0));
	assert_int_equal(c.vision.n_deepstack, 2);
}

static void test_real_configs(void **state)
{
	(void)state;
	qw_config c;
	load_ok("configs/Qwen3-VL-235B-A22B-Thinking.json", &c);
	assert_int_equal(c.text.num_layers, 94);
	assert_int_equal(c.text.num_heads, 64);
	assert_int_equal(c.text.num_kv_heads, 4);
	assert_int_equal(c.text.num_experts, 128);
	assert_int_equal(c.text.mrope_section[0], 24);
	assert_int_equal(c.text.eos_token_ids[0], 151645);
	assert_int_equal(c.vision.deepstack_indexes[0], 8);
	load_ok("configs/Qwen3-VL-30B-A3B-Instruct.json", &c);
	assert_int_equal(c.text.hidden_size, 2048);
	load_ok("configs/Qwen3-VL-8B-Instruct.json", &c);
	assert_int_equal(c.arch, QW_ARCH_QWEN3_VL);
	assert_int_equal(c.text.num_kv_heads, 8);
}

static void test_text_only(void **state)
{
	(void)state;
	qw_config c;
	load_ok("configs/Qwen3-30B-A3B.json", &c);
	assert_int_equal(c.arch, QW_ARCH_QWEN3_MOE);
	assert_true(c.is_moe && !c.has_vision);
	assert_int_equal(c.text.num_experts, 128);
	assert_int_equal(c.text.mrope_section[0], 64);   /* all pairs temporal: plain RoPE */
	assert_int_equal(c.text.mrope_section[1], 0);
	assert_true(c.text.rope_theta == 1e6);
	load_ok("configs/Qwen3-8B.json", &c);
	assert_int_equal(c.arch, QW_ARCH_QWEN3);
	assert_int_equal(c.text.intermediate_size, 12288);
}

/* Parses the tiny-moe config with the value at a dotted path replaced (value_json NULL:
 * removed) and expects a config error containing each needle. */
static void expect_invalid(const char *path, const char *value_json, const char *needle1,
			   const char *needle2)
{
	json_error_t jerr;
	json_t *root = json_load_file(fixture("hf/tiny-moe/model/config.json"), 0, &jerr);
	assert_non_null(root);
	char buf[256];
	snprintf(buf, sizeof buf, "%s", path);
	json_t *obj = root;
	char *key = buf, *dot;
	while ((dot = strchr(key, '.'))) {
		*dot = '\0';
		obj = json_object_get(obj, key);
		assert_non_null(obj);
		key = dot + 1;
	}
	if (value_json)
		json_object_set_new(obj, key, json_loads(value_json, JSON_DECODE_ANY, &jerr));
	else
		json_object_del(obj, key);
	char *text = json_dumps(root, 0);
	qw_config c;
	qw_err err = {0};
	qw_status st = qw_config_parse(text, strlen(text), "cfg.json", &c, &err);
	if (st != QW_E_CONFIG)
		fail_msg("%s = %s: expected a config error, got %s: %s", path,
			 value_json ? value_json : "(removed)", qw_status_name(st), err.msg);
	assert_contains(err.msg, "cfg.json");
	assert_contains(err.msg, needle1);
	if (needle2)
		assert_contains(err.msg, needle2);
	free(text);
	json_decref(root);
}

static void test_invalid_values_name_the_field(void **state)
{
	(void)state;
	expect_invalid("text_config.num_key_value_heads", "3", "text_config.num_key_value_heads",
		       "does not divide");
	expect_invalid("text_config.rope_scaling.mrope_section", "[6, 5, 4]",
		       "text_config.rope_scaling.mrope_section", "must sum to head_dim/2 = 16");
	expect_invalid("text_config.rope_scaling.mrope_section", "[8, 8]", "mrope_section",
		       "3 entries");
	expect_invalid("text_config.num_experts_per_tok", "9", "text_config.num_experts_per_tok",
		       "more than the 8 experts");
	expect_invalid("vision_config.deepstack_visual_indexes", "[0, 1, 4]",
		       "vision_config.deepstack_visual_indexes", "depth is 4");
	expect_invalid("vision_config.deepstack_visual_indexes", "[1, 0]",
		       "vision_config.deepstack_visual_indexes", "increasing");
	expect_invalid("model_type", "\"llama\"", "model_type", "'llama' is not supported");
	expect_invalid("text_config.hidden_size", "\"128\"", "text_config.hidden_size",
		       "must be an integer");
	expect_invalid("text_config.vocab_size", NULL, "text_config.vocab_size", "required");
	expect_invalid("text_config", NULL, "text_config", "missing");
	expect_invalid("vision_config", "[]", "vision_config", "not an object");
	expect_invalid("text_config.rope_scaling.rope_type", "\"yarn\"", "rope_type", "'yarn'");
	expect_invalid("text_config.num_local_experts", "16", "num_experts", "disagrees");
	expect_invalid("vision_config.out_hidden_size", "64", "vision_config.out_hidden_size",
		       "text hidden_size 128");
	expect_invalid("image_token_id", "5000", "image_token_id", "[0, 1023]");
	expect_invalid("text_config.mlp_only_layers", "[4]", "text_config.mlp_only_layers", NULL);
	expect_invalid("text_config.decoder_sparse_step", "0", "decoder_sparse_step", NULL);
	expect_invalid("text_config.hidden_act", "\"gelu\"", "text_config.hidden_act", "'silu'");
	expect_invalid("vision_config.hidden_act", "\"relu\"", "vision_config.hidden_act", NULL);
	expect_invalid("text_config.tie_word_embeddings", "true", "tie_word_embeddings",
		       "contradicts");
	expect_invalid("vision_config.num_heads", "3", "vision_config.num_heads", NULL);
	expect_invalid("text_config.head_dim", "31", "text_config.head_dim", "even");
	expect_invalid("text_config.rms_norm_eps", "-1", "text_config.rms_norm_eps", NULL);
	expect_invalid("text_config.rope_theta", NULL, "rope_theta", "required");
	expect_invalid("text_config.use_sliding_window", "true", "use_sliding_window", NULL);
	expect_invalid("text_config.eos_token_id", "[1, 2000]", "text_config.eos_token_id", NULL);
	expect_invalid("vision_config.num_position_embeddings", "2000", "num_position_embeddings",
		       "square");
	expect_invalid("text_config.num_hidden_layers", "0", "num_hidden_layers", NULL);
}

static void test_malformed_json(void **state)
{
	(void)state;
	qw_config c;
	qw_err err = {0};
	assert_int_equal(qw_config_parse("{\"model_type\": ", 15, "x.json", &c, &err), QW_E_CONFIG);
	assert_contains(err.msg, "not valid JSON");
	assert_int_equal(qw_config_parse("[1]", 3, "x.json", &c, &err), QW_E_CONFIG);
	assert_int_equal(qw_config_load("/nonexistent/config.json", &c, &err), QW_E_IO);
	assert_contains(err.msg, "/nonexistent/config.json");
}

static void test_sparse_step_and_mlp_only(void **state)
{
	(void)state;
	/* layer L is MoE iff (L+1) % step == 0 and L is not in mlp_only_layers */
	const char *text =
		"{\"model_type\": \"qwen3_moe\", \"vocab_size\": 64, \"hidden_size\": 16,"
		" \"num_hidden_layers\": 6, \"num_attention_heads\": 2, \"head_dim\": 8,"
		" \"rope_theta\": 10000, \"intermediate_size\": 32, \"moe_intermediate_size\": 8,"
		" \"num_experts\": 4, \"num_experts_per_tok\": 2, \"decoder_sparse_step\": 2,"
		" \"mlp_only_layers\": [3]}";
	qw_config c;
	qw_err err = {0};
	assert_int_equal(qw_config_parse(text, strlen(text), "x", &c, &err), QW_OK);
	const bool moe[6] = {false, true, false, false, false, true};
	for (int L = 0; L < 6; L++)
		assert_int_equal(qw_layer_is_moe(&c, L), moe[L]);
	assert_int_equal(c.text.num_kv_heads, 2);          /* defaults to the query heads */
	/* a dense layer needs intermediate_size */
	const char *no_inter =
		"{\"model_type\": \"qwen3_moe\", \"vocab_size\": 64, \"hidden_size\": 16,"
		" \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"head_dim\": 8,"
		" \"rope_theta\": 10000, \"moe_intermediate_size\": 8, \"num_experts\": 4,"
		" \"num_experts_per_tok\": 2, \"decoder_sparse_step\": 2}";
	assert_int_equal(qw_config_parse(no_inter, strlen(no_inter), "x", &c, &err), QW_E_CONFIG);
	assert_contains(err.msg, "intermediate_size is required");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tiny_moe),
		cmocka_unit_test(test_both_spellings_agree),
		cmocka_unit_test(test_tiny_dense),
		cmocka_unit_test(test_real_configs),
		cmocka_unit_test(test_text_only),
		cmocka_unit_test(test_invalid_values_name_the_field),
		cmocka_unit_test(test_malformed_json),
		cmocka_unit_test(test_sparse_step_and_mlp_only),
	};
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
