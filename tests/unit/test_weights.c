/* test_weights.c - the weight map against real and broken checkpoints: both fixtures load
 * completely in both config spellings, stages partition the tensors, and missing, wrong
 * shape, wrong dtype and extra tensors are each reported by name. */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/checkpoint.h"
#include "loader/config.h"
#include "loader/plan.h"
#include "loader/st_writer.h"
#include "loader/weights.h"

typedef struct model {
	qw_config cfg;
	qw_checkpoint *ck;
} model;

static void open_model(model *m, const char *dir, const char *config_path)
{
	qw_err err = {0};
	if (qw_config_load(config_path, &m->cfg, &err) != QW_OK || qw_ckpt_open(dir, &m->ck, &err))
		fail_msg("%s", err.msg);
}

static void load_expect(const model *m, const qw_stage *stage, qw_status want, qw_weights *w,
			qw_wreport *rep)
{
	qw_err err = {0};
	qw_status st = qw_weights_load(&m->cfg, m->ck, stage, w, rep, &err);
	if (st != want)
		fail_msg("expected %s, got %s: %s", qw_status_name(want), qw_status_name(st), err.msg);
}

static void assert_shape(const qw_tensor *t, int ndim, const int64_t *shape)
{
	assert_non_null(t);
	assert_int_equal(t->ndim, ndim);
	for (int i = 0; i < ndim; i++)
		assert_int_equal(t->shape[i], shape[i]);
}

static void check_complete(const char *name, const char *config_file)
{
	char dir[256], cfg[256];
	snprintf(dir, sizeof dir, "%s", fixture(name));
	snprintf(cfg, sizeof cfg, "%s/%s", dir, config_file);
	model m;
	open_model(&m, dir, cfg);
	qw_weights w;
	qw_wreport rep;
	load_expect(&m, NULL, QW_OK, &w, &rep);
	assert_int_equal(rep.missing, 0);
	assert_int_equal(rep.mismatched, 0);
	assert_int_equal(rep.extra, 0);
	assert_int_equal(rep.other_stage, 0);
	assert_int_equal(rep.loaded, m.ck->n_tensors);
	assert_int_equal(rep.loaded_bytes, m.ck->total_bytes);
	qw_wreport_free(&rep);
	qw_weights_free(&w);
	qw_ckpt_close(m.ck);
}

static void test_fixtures_complete(void **state)
{
	(void)state;
	check_complete("hf/tiny-moe/model", "config.json");
	check_complete("hf/tiny-moe/model", "config.v5.json");
	check_complete("hf/tiny-dense/model", "config.json");
}

static void test_bound_shapes(void **state)
{
	(void)state;
	model m;
	open_model(&m, fixture("hf/tiny-moe/model"), fixture("hf/tiny-moe/model/config.json"));
	qw_weights w;
	qw_wreport rep;
	load_expect(&m, NULL, QW_OK, &w, &rep);
	assert_int_equal(w.expert_layout, QW_EXPERTS_FUSED);
	assert_shape(w.layers[3].experts_gate_up, 3, (int64_t[]){8, 128, 96});
	assert_shape(w.layers[3].experts_down, 3, (int64_t[]){8, 48, 128});
	assert_shape(w.layers[0].router, 2, (int64_t[]){8, 128});
	assert_shape(w.layers[0].k_proj, 2, (int64_t[]){64, 128});
	assert_shape(w.layers[0].q_norm, 1, (int64_t[]){32});
	assert_null(w.layers[0].gate_proj);
	assert_shape(w.patch_w, 5, (int64_t[]){64, 3, 2, 16, 16});
	assert_shape(w.pos_embed, 2, (int64_t[]){2304, 64});
	assert_shape(w.blocks[3].qkv_w, 2, (int64_t[]){192, 64});
	assert_shape(w.merger.norm_w, 1, (int64_t[]){64});          /* before the 2x2 shuffle */
	assert_shape(w.deepstack[2].norm_w, 1, (int64_t[]){256});   /* after it */
	assert_shape(w.lm_head, 2, (int64_t[]){1024, 128});
	assert_ptr_not_equal(w.lm_head, w.embed);
	qw_wreport_free(&rep);
	qw_weights_free(&w);
	qw_ckpt_close(m.ck);

	open_model(&m, fixture("hf/tiny-dense/model"), fixture("hf/tiny-dense/model/config.json"));
	load_expect(&m, NULL, QW_OK, &w, &rep);
	assert_ptr_equal(w.lm_head, w.embed);                       /* tied */
	assert_shape(w.layers[2].down_proj, 2, (int64_t[]){128, 256});
	assert_null(w.layers[2].router);
	qw_wreport_free(&rep);
	qw_weights_free(&w);
	qw_ckpt_close(m.ck);
}

/* Every stage split loads each tensor exactly once (a tied table on both ends). */
static void check_stages(const char *name, int max_stages)
{
	char dir[256], cfg[300];
	snprintf(dir, sizeof dir, "%s", fixture(name));
	snprintf(cfg, sizeof cfg, "%s/config.json", dir);
	model m;
	open_model(&m, dir, cfg);
	qw_wspec *specs;
	size_t n;
	qw_err err = {0};
	assert_int_equal(qw_wmap_build(&m.cfg, QW_EXPERTS_FUSED, NULL, &specs, &n, &err), QW_OK);
	for (int S = 1; S <= max_stages; S++) {
		qw_stage_plan plan[8];
		assert_int_equal(qw_plan_stages(&m.cfg, specs, n, S, QW_DT_BF16, plan, &err), QW_OK);
		size_t loaded = 0;
		for (int s = 0; s < S; s++) {
			qw_weights w;
			qw_wreport rep;
			load_expect(&m, &plan[s].stage, QW_OK, &w, &rep);
			assert_int_equal(rep.missing + rep.mismatched + rep.extra, 0);
			assert_int_equal(rep.loaded + rep.other_stage, m.ck->n_tensors);
			loaded += rep.loaded;
			assert_int_equal(w.embed != NULL, s == 0);
			assert_int_equal(w.patch_w != NULL, s == 0);
			assert_int_equal(w.lm_head != NULL, s == S - 1);
			assert_int_equal(w.final_norm != NULL, s == S - 1);
			for (int L = 0; L < m.cfg.text.num_layers; L++) {
				bool mine = L >= plan[s].stage.layer_begin && L < plan[s].stage.layer_end;
				assert_int_equal(w.layers[L].q_proj != NULL, mine);
			}
			qw_wreport_free(&rep);
			qw_weights_free(&w);
		}
		assert_int_equal(loaded, m.ck->n_tensors + (m.cfg.tie_word_embeddings && S > 1));
	}
	free(specs);
	qw_ckpt_close(m.ck);
}

static void test_stages_partition(void **state)
{
	(void)state;
	check_stages("hf/tiny-moe/model", 4);
	check_stages("hf/tiny-dense/model", 3);
}

// ---------------------------------------------------------------------------------------
// broken copies of tiny-moe

typedef struct variant {
	const char *drop;        /* leave this tensor out */
	const char *reshape;     /* give this tensor the shape below (same bytes) */
	int ndim;
	int64_t shape[4];
	const char *retype;      /* store this tensor as I16 (same bytes) */
	const char *extra;       /* add this tensor */
} variant;

typedef struct copy_ctx {
	const qw_checkpoint *src;
	const qw_st_entry *entries;
} copy_ctx;

static qw_status copy_fill(void *vctx, size_t i, void *buf, uint64_t nbytes, qw_err *err)
{
	const copy_ctx *ctx = vctx;
	const qw_tensor *t = qw_ckpt_find(ctx->src, ctx->entries[i].name);
	if (t)
		memcpy(buf, t->data, nbytes);
	else
		memset(buf, 0, nbytes);
	return QW_OK;
}

static char *write_variant(const variant *v)
{
	char *dir = scratch_new();
	qw_checkpoint *src;
	qw_err err = {0};
	assert_int_equal(qw_ckpt_open(fixture("hf/tiny-moe/model"), &src, &err), QW_OK);
	qw_st_entry *entries = calloc(src->n_tensors + 1, sizeof *entries);
	size_t n = 0;
	for (size_t i = 0; i < src->n_tensors; i++) {
		const qw_tensor *t = src->tensors[i];
		if (v->drop && strcmp(t->name, v->drop) == 0)
			continue;
		qw_st_entry *e = &entries[n++];
		*e = (qw_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim};
		memcpy(e->shape, t->shape, sizeof e->shape);
		if (v->reshape && strcmp(t->name, v->reshape) == 0) {
			e->ndim = v->ndim;
			memcpy(e->shape, v->shape, sizeof v->shape);
		}
		if (v->retype && strcmp(t->name, v->retype) == 0)
			e->dtype = QW_DT_I16;
	}
	if (v->extra)
		entries[n++] = (qw_st_entry){.name = v->extra, .dtype = QW_DT_F32, .ndim = 1,
					     .shape = {4}};
	copy_ctx ctx = {src, entries};
	assert_int_equal(qw_st_write(path_in(dir, "model.safetensors"), entries, n, copy_fill, &ctx,
				     &err), QW_OK);
	copy_file(fixture("hf/tiny-moe/model/config.json"), path_in(dir, "config.json"));
	free(entries);
	qw_ckpt_close(src);
	return dir;
}

static void load_variant(const variant *v, qw_status want, qw_wreport *rep, qw_err *err)
{
	char *dir = write_variant(v);
	model m;
	open_model(&m, dir, path_in(dir, "config.json"));
	qw_weights w;
	qw_status st = qw_weights_load(&m.cfg, m.ck, NULL, &w, rep, err);
	if (st != want)
		fail_msg("expected %s, got %s: %s", qw_status_name(want), qw_status_name(st),
			 err->msg);
	qw_weights_free(&w);
	qw_ckpt_close(m.ck);
	scratch_free(dir);
}

static void test_missing_tensor(void **state)
{
	(void)state;
	const char *name = "model.language_model.layers.2.self_attn.k_norm.weight";
	qw_wreport rep;
	qw_err err = {0};
	load_variant(&(variant){.drop = name}, QW_E_WEIGHTS, &rep, &err);
	assert_int_equal(rep.missing, 1);
	assert_int_equal(rep.mismatched, 0);
	assert_string_equal(rep.missing_names[0], name);
	assert_contains(err.msg, name);
	qw_wreport_free(&rep);

	const char *vis = "model.visual.deepstack_merger_list.1.linear_fc2.bias";
	load_variant(&(variant){.drop = vis}, QW_E_WEIGHTS, &rep, &err);
	assert_int_equal(rep.missing, 1);
	assert_string_equal(rep.missing_names[0], vis);
	qw_wreport_free(&rep);
}

static void test_wrong_shape(void **state)
{
	(void)state;
	/* the transposed fused expert layout, [E, 2I, H] instead of [E, H, 2I] */
	const char *name = "model.language_model.layers.1.mlp.experts.gate_up_proj";
	qw_wreport rep;
	qw_err err = {0};
	load_variant(&(variant){.reshape = name, .ndim = 3, .shape = {8, 96, 128}}, QW_E_WEIGHTS,
		     &rep, &err);
	assert_int_equal(rep.missing, 0);
	assert_int_equal(rep.mismatched, 1);
	assert_contains(rep.mismatched_desc[0], name);
	assert_contains(rep.mismatched_desc[0], "expected [8, 128, 96]");
	assert_contains(rep.mismatched_desc[0], "got [8, 96, 128] BF16");
	qw_wreport_free(&rep);
}

static void test_wrong_dtype(void **state)
{
	(void)state;
	const char *name = "model.visual.pos_embed.weight";
	qw_wreport rep;
	qw_err err = {0};
	load_variant(&(variant){.retype = name}, QW_E_WEIGHTS, &rep, &err);
	assert_int_equal(rep.mismatched, 1);
	assert_contains(rep.mismatched_desc[0], "I16");
	qw_wreport_free(&rep);
}

static void test_extra_tensor(void **state)
{
	(void)state;
	qw_wreport rep;
	qw_err err = {0};
	load_variant(&(variant){.extra = "model.language_model.layers.9.mystery"}, QW_OK, &rep, &err);
	assert_int_equal(rep.extra, 1);
	assert_string_equal(rep.extra_names[0], "model.language_model.layers.9.mystery");
	char *json = qw_wreport_json(&rep, NULL);
	assert_contains(json, "\"extra\": 1");
	assert_contains(json, "\"missing\": 0");
	free(json);
	qw_wreport_free(&rep);
}

// ---------------------------------------------------------------------------------------
// the per-expert layout of Qwen3-MoE text checkpoints, and attention biases

static qw_status zero_fill(void *ctx, size_t i, void *buf, uint64_t nbytes, qw_err *err)
{
	memset(buf, 0, nbytes);
	return QW_OK;
}

/* Writes a zero checkpoint of exactly the specs of cfg in `layout`. */
static char *write_from_specs(const qw_config *cfg, qw_expert_layout layout, const char *skip)
{
	char *dir = scratch_new();
	qw_wspec *specs;
	size_t n, k = 0;
	qw_err err = {0};
	assert_int_equal(qw_wmap_build(cfg, layout, NULL, &specs, &n, &err), QW_OK);
	qw_st_entry *entries = calloc(n, sizeof *entries);
	for (size_t i = 0; i < n; i++) {
		if (skip && strstr(specs[i].name, skip))
			continue;
		entries[k] = (qw_st_entry){.name = specs[i].name, .dtype = QW_DT_BF16,
					   .ndim = specs[i].ndim};
		memcpy(entries[k++].shape, specs[i].shape, sizeof specs[i].shape);
	}
	assert_int_equal(qw_st_write(path_in(dir, "model.safetensors"), entries, k, zero_fill, NULL,
				     &err), QW_OK);
	free(entries);
	free(specs);
	return dir;
}

static const char small_moe[] =
	"{\"model_type\": \"qwen3_moe\", \"vocab_size\": 64, \"hidden_size\": 16,"
	" \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
	" \"head_dim\": 8, \"rope_theta\": 1e6, \"intermediate_size\": 32,"
	" \"moe_intermediate_size\": 8, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
	" \"mlp_only_layers\": [1], \"attention_bias\": %s}";

static void test_per_expert_layout(void **state)
{
	(void)state;
	char text[1024];
	snprintf(text, sizeof text, small_moe, "false");
	qw_config cfg;
	qw_err err = {0};
	assert_int_equal(qw_config_parse(text, strlen(text), "x", &cfg, &err), QW_OK);
	char *dir = write_from_specs(&cfg, QW_EXPERTS_PER_EXPERT, NULL);
	qw_checkpoint *ck;
	assert_int_equal(qw_ckpt_open(dir, &ck, &err), QW_OK);
	assert_int_equal(qw_detect_expert_layout(&cfg, ck), QW_EXPERTS_PER_EXPERT);
	assert_non_null(qw_ckpt_find(ck, "model.layers.2.mlp.experts.3.down_proj.weight"));
	assert_non_null(qw_ckpt_find(ck, "model.layers.1.mlp.gate_proj.weight"));  /* dense */
	qw_weights w;
	qw_wreport rep;
	assert_int_equal(qw_weights_load(&cfg, ck, NULL, &w, &rep, &err), QW_OK);
	assert_int_equal(rep.loaded, ck->n_tensors);
	assert_shape(w.layers[2].expert_down[3], 2, (int64_t[]){16, 8});
	assert_shape(w.layers[0].expert_gate[0], 2, (int64_t[]){8, 16});
	assert_null(w.layers[0].experts_gate_up);
	assert_shape(w.layers[1].up_proj, 2, (int64_t[]){32, 16});
	/* by part: a layer has 2 norms, 4 projections and 2 head norms; layers 0 and 2 a
	 * router and 4 experts of 3 tensors, layer 1 (dense) 3 MLP projections */
	assert_int_equal(rep.parts[QW_GROUP_EXPERTS].loaded, 2 * 4 * 3);
	assert_int_equal(rep.parts[QW_GROUP_LAYERS].loaded, 3 * 8 + 2 + 3);
	assert_int_equal(rep.parts[QW_GROUP_TEXT].loaded, 3);
	assert_int_equal(rep.parts[QW_GROUP_VISION].expected + rep.parts[QW_GROUP_OTHER].expected, 0);
	qw_wreport_free(&rep);
	qw_weights_free(&w);
	qw_ckpt_close(ck);
	scratch_free(dir);
}

static void test_attention_bias(void **state)
{
	(void)state;
	char text[1024];
	snprintf(text, sizeof text, small_moe, "true");
	qw_config cfg;
	qw_err err = {0};
	assert_int_equal(qw_config_parse(text, strlen(text), "x", &cfg, &err), QW_OK);
	char *dir = write_from_specs(&cfg, QW_EXPERTS_PER_EXPERT, "self_attn.o_proj.bias");
	qw_checkpoint *ck;
	assert_int_equal(qw_ckpt_open(dir, &ck, &err), QW_OK);
	qw_weights w;
	qw_wreport rep;
	assert_int_equal(qw_weights_load(&cfg, ck, NULL, &w, &rep, &err), QW_E_WEIGHTS);
	assert_int_equal(rep.missing, 3);                 /* one per layer */
	assert_string_equal(rep.missing_names[0], "model.layers.0.self_attn.o_proj.bias");
	assert_shape(w.layers[1].q_bias, 1, (int64_t[]){32});
	qw_wreport_free(&rep);
	qw_weights_free(&w);
	qw_ckpt_close(ck);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixtures_complete),
		cmocka_unit_test(test_bound_shapes),
		cmocka_unit_test(test_stages_partition),
		cmocka_unit_test(test_missing_tensor),
		cmocka_unit_test(test_wrong_shape),
		cmocka_unit_test(test_wrong_dtype),
		cmocka_unit_test(test_extra_tensor),
		cmocka_unit_test(test_per_expert_layout),
		cmocka_unit_test(test_attention_bias),
	};
	return cmocka_run_group_tests_name("weights", tests, NULL, NULL);
}
