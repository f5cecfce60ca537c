/* test_cli.c - qwen-ckpt end to end: validate (whole, per stage, both config spellings,
 * broken inputs), export-reduced with every override, and inspect. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loader/checkpoint.h"
#include "loader/config.h"

static json_t *parse_json(const char *text)
{
	json_error_t jerr;
	json_t *o = json_loads(text, 0, &jerr);
	if (!o)
		fail_msg("not JSON (%s):\n%s", jerr.text, text);
	return o;
}

static json_int_t jint(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_integer(v))
		fail_msg("no integer '%s'", key);
	return json_integer_value(v);
}

static void test_validate_fixtures(void **state)
{
	(void)state;
	char *out;
	assert_int_equal(run_capture(&out, "%s validate %s", program("qwen-ckpt"),
				     fixture("hf/tiny-moe/model")), 0);
	assert_contains(out, "missing 0  mismatched 0  extra 0");
	assert_contains(out, "OK");
	free(out);

	assert_int_equal(run_capture(&out, "%s validate --json %s", program("qwen-ckpt"),
				     fixture("hf/tiny-dense/model")), 0);
	json_t *o = parse_json(out);
	assert_int_equal(jint(o, "loaded"), 92);
	assert_int_equal(jint(o, "missing") + jint(o, "mismatched") + jint(o, "extra"), 0);
	json_decref(o);
	free(out);

	/* the transformers-v5 spelling of the same model */
	char *dir = scratch_new();
	char src[4096];
	snprintf(src, sizeof src, "%s", fixture("hf/tiny-moe/model/model.safetensors"));
	assert_int_equal(symlink(src, path_in(dir, "model.safetensors")), 0);
	copy_file(fixture("hf/tiny-moe/model/config.v5.json"), path_in(dir, "config.json"));
	assert_int_equal(run_capture(&out, "%s validate --json %s", program("qwen-ckpt"), dir), 0);
	o = parse_json(out);
	assert_int_equal(jint(o, "loaded"), 122);
	assert_int_equal(jint(o, "missing") + jint(o, "mismatched") + jint(o, "extra"), 0);
	json_decref(o);
	free(out);
	scratch_free(dir);
}

static void test_validate_stage(void **state)
{
	(void)state;
	char *out;
	json_int_t loaded = 0;
	for (int s = 0; s < 2; s++) {
		assert_int_equal(run_capture(&out, "%s validate --json --stage %d/2 %s",
					     program("qwen-ckpt"), s, fixture("hf/tiny-moe/model")), 0);
		json_t *o = parse_json(out);
		assert_int_equal(jint(o, "loaded") + jint(o, "other_stage"), 122);
		assert_true(jint(o, "other_stage") > 0);
		json_t *layers = json_object_get(json_object_get(o, "stage"), "layers");
		assert_int_equal(json_integer_value(json_array_get(layers, 0)) == 0, s == 0);
		loaded += jint(o, "loaded");
		json_decref(o);
		free(out);
	}
	assert_int_equal(loaded, 122);
	assert_int_equal(run_capture(&out, "%s validate --stage 2/2 %s", program("qwen-ckpt"),
				     fixture("hf/tiny-moe/model")), 2);
	assert_contains(out, "--stage");
	free(out);
	assert_int_equal(run_capture(&out, "%s validate --stage 0/5 %s", program("qwen-ckpt"),
				     fixture("hf/tiny-moe/model")), 2);
	assert_contains(out, "4 decoder layers into 5 stages");
	free(out);
}

static void test_validate_broken(void **state)
{
	(void)state;
	char *dir = scratch_new(), *out;
	size_t len;
	char *data = read_file(fixture("hf/tiny-moe/model/model.safetensors"), &len);
	write_file(path_in(dir, "model.safetensors"), data, len - 1000);
	free(data);
	copy_file(fixture("hf/tiny-moe/model/config.json"), path_in(dir, "config.json"));
	assert_int_equal(run_capture(&out, "%s validate %s", program("qwen-ckpt"), dir), 1);
	assert_contains(out, "truncated");
	assert_contains(out, "1000 bytes missing");
	free(out);
	unlink(path_in(dir, "model.safetensors"));
	assert_int_equal(run_capture(&out, "%s validate %s", program("qwen-ckpt"), dir), 1);
	assert_contains(out, "HINT");
	free(out);
	assert_int_equal(run_capture(&out, "%s validate", program("qwen-ckpt")), 2);
	free(out);
	assert_int_equal(run_capture(&out, "%s frobnicate", program("qwen-ckpt")), 2);
	assert_contains(out, "unknown command");
	free(out);
	scratch_free(dir);
}

static void shape_is(const qw_checkpoint *ck, const char *name, int ndim, const int64_t *shape)
{
	const qw_tensor *t = qw_ckpt_find(ck, name);
	if (!t)
		fail_msg("no tensor %s", name);
	assert_int_equal(t->ndim, ndim);
	for (int i = 0; i < ndim; i++)
		if (t->shape[i] != shape[i])
			fail_msg("%s: dim %d is %lld, expected %lld", name, i, (long long)t->shape[i],
				 (long long)shape[i]);
}

static void test_export_every_override(void **state)
{
	(void)state;
	char *dir = scratch_new(), *out;
	const char *overrides =
		"--num-layers 3 --override-vocab 2048 --override-hidden 192 --override-heads 6"
		" --override-kv-heads 2 --override-head-dim 48 --override-intermediate 320"
		" --override-moe-intermediate 64 --override-num-experts 12 --override-top-k 3"
		" --override-vision-depth 5 --override-vision-hidden 96 --seed 11 --shards 3";
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s %s",
				     program("qwen-ckpt"),
				     fixture("configs/Qwen3-VL-235B-A22B-Thinking.json"), dir,
				     overrides), 0);
	free(out);
	assert_int_equal(access(path_in(dir, "model.safetensors.index.json"), F_OK), 0);
	assert_int_equal(access(path_in(dir, "model-00003-of-00003.safetensors"), F_OK), 0);
	assert_int_equal(run_capture(&out, "%s validate --json %s", program("qwen-ckpt"), dir), 0);
	json_t *o = parse_json(out);
	assert_int_equal(jint(o, "missing") + jint(o, "mismatched") + jint(o, "extra"), 0);
	json_decref(o);
	free(out);

	qw_config c;
	qw_err err = {0};
	assert_int_equal(qw_config_load(path_in(dir, "config.json"), &c, &err), QW_OK);
	assert_int_equal(c.text.num_layers, 3);
	assert_int_equal(c.text.vocab_size, 2048);
	assert_int_equal(c.text.hidden_size, 192);
	assert_int_equal(c.text.num_heads, 6);
	assert_int_equal(c.text.num_kv_heads, 2);
	assert_int_equal(c.text.head_dim, 48);
	assert_int_equal(c.text.mrope_section[0] + c.text.mrope_section[1] + c.text.mrope_section[2],
			 24);
	assert_int_equal(c.text.intermediate_size, 320);
	assert_int_equal(c.text.moe_intermediate_size, 64);
	assert_int_equal(c.text.num_experts, 12);
	assert_int_equal(c.text.num_experts_per_tok, 3);
	assert_int_equal(c.vision.depth, 5);
	assert_int_equal(c.vision.hidden_size, 96);
	assert_int_equal(c.vision.out_hidden_size, 192);
	assert_true(c.image_token_id < 2048 && c.text.eos_token_ids[0] < 2048);
	for (int i = 0; i < c.vision.n_deepstack; i++)
		assert_true(c.vision.deepstack_indexes[i] < 5);

	qw_checkpoint *ck;
	assert_int_equal(qw_ckpt_open(dir, &ck, &err), QW_OK);
	assert_int_equal(ck->n_files, 3);
	const char *lp = "model.language_model.layers.2.";
	char name[256];
	snprintf(name, sizeof name, "%sself_attn.q_proj.weight", lp);
	shape_is(ck, name, 2, (int64_t[]){6 * 48, 192});
	snprintf(name, sizeof name, "%sself_attn.k_proj.weight", lp);
	shape_is(ck, name, 2, (int64_t[]){2 * 48, 192});
	snprintf(name, sizeof name, "%smlp.experts.gate_up_proj", lp);
	shape_is(ck, name, 3, (int64_t[]){12, 192, 128});
	snprintf(name, sizeof name, "%smlp.experts.down_proj", lp);
	shape_is(ck, name, 3, (int64_t[]){12, 64, 192});
	shape_is(ck, "lm_head.weight", 2, (int64_t[]){2048, 192});
	shape_is(ck, "model.visual.blocks.4.attn.qkv.weight", 2, (int64_t[]){3 * 96, 96});
	shape_is(ck, "model.visual.merger.linear_fc2.weight", 2, (int64_t[]){192, 4 * 96});
	assert_null(qw_ckpt_find(ck, "model.visual.blocks.5.norm1.weight"));
	assert_null(qw_ckpt_find(ck, "model.language_model.layers.3.input_layernorm.weight"));
	/* weights are random but sane: a norm weight near 1, a projection near 0 */
	const qw_tensor *norm = qw_ckpt_find(ck, "model.language_model.norm.weight");
	uint16_t h;
	memcpy(&h, norm->data, 2);
	assert_true(qw_bf16_to_f32(h) > 0.5f && qw_bf16_to_f32(h) < 1.5f);
	qw_ckpt_close(ck);
	scratch_free(dir);
}

static void test_export_deterministic(void **state)
{
	(void)state;
	char *a = scratch_new(), *b = scratch_new(), *c = scratch_new(), *out;
	const char *cfg = fixture("hf/tiny-moe/model/config.json");
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s --seed 5 && "
				     "%s export-reduced --config %s --out %s --seed 5 && "
				     "%s export-reduced --config %s --out %s --seed 6",
				     program("qwen-ckpt"), cfg, a, program("qwen-ckpt"), cfg, b,
				     program("qwen-ckpt"), cfg, c), 0);
	free(out);
	size_t la, lb, lc;
	char *da = read_file(path_in(a, "model.safetensors"), &la);
	char *db = read_file(path_in(b, "model.safetensors"), &lb);
	char *dc = read_file(path_in(c, "model.safetensors"), &lc);
	assert_int_equal(la, lb);
	assert_memory_equal(da, db, la);
	assert_int_equal(la, lc);
	assert_true(memcmp(da, dc, la) != 0);
	free(da);
	free(db);
	free(dc);
	scratch_free(a);
	scratch_free(b);
	scratch_free(c);
}

static void test_export_text_only_and_dense(void **state)
{
	(void)state;
	char *dir = scratch_new(), *out;
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s --num-layers 2 "
				     "--override-vocab 512 --override-hidden 64 --override-heads 4 "
				     "--override-head-dim 16 --override-num-experts 6 --override-top-k 2 "
				     "--override-moe-intermediate 32 --shards 2 && %s validate %s",
				     program("qwen-ckpt"), fixture("configs/Qwen3-30B-A3B.json"), dir,
				     program("qwen-ckpt"), dir), 0);
	assert_contains(out, "per-module experts");
	assert_contains(out, "missing 0  mismatched 0  extra 0");
	free(out);
	scratch_free(dir);

	dir = scratch_new();
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s --num-layers 2 "
				     "--override-vocab 512 --override-hidden 64 --override-heads 4 "
				     "--override-kv-heads 2 --override-head-dim 16 "
				     "--override-intermediate 96 --override-vision-depth 2 "
				     "--override-vision-hidden 32 && %s validate %s",
				     program("qwen-ckpt"), fixture("configs/Qwen3-VL-8B-Instruct.json"),
				     dir, program("qwen-ckpt"), dir), 0);
	assert_contains(out, "qwen3_vl, no experts");
	assert_contains(out, "missing 0  mismatched 0  extra 0");
	free(out);
	scratch_free(dir);
}

static void test_export_rejects_inconsistent(void **state)
{
	(void)state;
	char *dir = scratch_new(), *out;
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s "
				     "--override-num-experts 4 --override-top-k 6",
				     program("qwen-ckpt"), fixture("hf/tiny-moe/model/config.json"),
				     dir), 2);
	assert_contains(out, "num_experts_per_tok");
	free(out);
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s "
				     "--override-heads 5", program("qwen-ckpt"),
				     fixture("hf/tiny-moe/model/config.json"), dir), 2);
	assert_contains(out, "num_key_value_heads");
	free(out);
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s "
				     "--override-hidden lots", program("qwen-ckpt"),
				     fixture("hf/tiny-moe/model/config.json"), dir), 2);
	assert_contains(out, "--override-hidden");
	free(out);
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s "
				     "--override-moe-intermediate 64", program("qwen-ckpt"),
				     fixture("hf/tiny-moe/model/config.json"), dir), 2);
	assert_contains(out, "square");
	free(out);
	assert_int_equal(access(path_in(dir, "config.json"), F_OK), -1);   /* nothing written */
	scratch_free(dir);
}

static void test_inspect(void **state)
{
	(void)state;
	char *out;
	assert_int_equal(run_capture(&out, "%s inspect --json %s", program("qwen-ckpt"),
				     fixture("configs/Qwen3-VL-235B-A22B-Thinking.json")), 0);
	json_t *o = parse_json(out);
	json_t *params = json_object_get(o, "params");
	assert_true(jint(params, "total") > 234000000000LL && jint(params, "total") < 237000000000LL);
	assert_true(jint(params, "active") > 21500000000LL && jint(params, "active") < 23000000000LL);
	json_t *plans = json_object_get(o, "plans");
	assert_int_equal(json_array_size(plans), 4);
	json_int_t whole = jint(json_array_get(json_object_get(json_array_get(plans, 0),
							       "per_stage"), 0), "weight_bytes");
	assert_int_equal(whole, jint(json_object_get(o, "bytes_per_dtype"), "BF16"));
	for (size_t k = 0; k < 4; k++) {
		json_t *per = json_object_get(json_array_get(plans, k), "per_stage");
		json_int_t sum = 0, kv = 0;
		for (size_t s = 0; s < json_array_size(per); s++) {
			sum += jint(json_array_get(per, s), "weight_bytes");
			kv += jint(json_array_get(per, s), "kv_bytes_per_token");
		}
		assert_int_equal(sum, whole);                /* untied: nothing counted twice */
		assert_int_equal(kv, 94 * 2 * 4 * 128 * 2);
	}
	json_decref(o);
	free(out);

	assert_int_equal(run_capture(&out, "%s inspect %s", program("qwen-ckpt"),
				     fixture("hf/tiny-moe/model")), 0);
	assert_contains(out, "total 1.830 M");
	assert_contains(out, "BF16");
	free(out);
	assert_int_equal(run_capture(&out, "%s inspect /nonexistent.json", program("qwen-ckpt")), 1);
	assert_contains(out, "/nonexistent.json");
	free(out);
}

/* Bytes of a safetensors header entry, from its dtype and shape (a table of this test's). */
static uint64_t entry_bytes(json_t *e)
{
	const char *dt = json_string_value(json_object_get(e, "dtype"));
	uint64_t n = !strcmp(dt, "BF16") ? 2 : !strcmp(dt, "F32") ? 4 : !strcmp(dt, "F8_E4M3") ? 1 : 0;
	assert_true(n > 0);
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(e, "shape"), i, d) n *= (uint64_t)json_integer_value(d);
	return n;
}

/* The 235B-A22B in FP8 on four 80 GiB GPUs: inspect --manifest's stages weigh what the
 * manifest's tensors weigh, counted here by decoder layer (stage 0 also the embeddings and
 * the vision tower, the last the final norm and lm_head); they fit, and each leaves the KV
 * cache (80 GiB - weights - 5 GiB) x 0.9 holds at 2 x 4 heads x 128 x 2 bytes a token and
 * layer; the config file in configs/ is the manifest's; its bf16 twin does not fit. */
static void test_inspect_fp8_235b(void **state)
{
	const char *mpath = fixture("manifests/Qwen3-VL-235B-A22B-Thinking-FP8.json");
	json_error_t jerr;
	json_t *mf = json_load_file(mpath, 0, &jerr);
	assert_non_null(mf);
	json_t *cfg_file = json_load_file(fixture("configs/Qwen3-VL-235B-A22B-Thinking-FP8.json"), 0,
					  &jerr);
	assert_non_null(cfg_file);
	assert_true(json_equal(cfg_file, json_object_get(mf, "config")));
	uint64_t layer[94] = {0}, first = 0, head = 0, fp8 = 0;
	size_t i;
	json_t *f;
	json_array_foreach(json_object_get(mf, "files"), i, f) {
		const char *name;
		json_t *e;
		json_object_foreach(json_object_get(f, "header"), name, e) {
			if (!strcmp(name, "__metadata__"))
				continue;
			uint64_t b = entry_bytes(e);
			int L;
			if (sscanf(name, "model.language_model.layers.%d.", &L) == 1) {
				assert_true(L >= 0 && L < 94);
				layer[L] += b;
			} else if (!strncmp(name, "model.language_model.norm.", 26) ||
				   !strncmp(name, "lm_head.", 8)) {
				head += b;
			} else {
				first += b;
			}
			if (!strcmp(json_string_value(json_object_get(e, "dtype")), "F8_E4M3"))
				fp8 += b;
		}
	}
	json_decref(mf);
	char *out;
	const char *inputs[] = {"--manifest", "", ""};
	inputs[1] = mpath;
	inputs[2] = fixture("configs/Qwen3-VL-235B-A22B-Thinking-FP8.json");
	for (int k = 0; k < 2; k++) {
		assert_int_equal(run_capture(&out, "%s inspect --json %s %s", program("qwen-ckpt"),
					     k ? "" : inputs[0], inputs[1 + k]), 0);
		json_t *o = parse_json(out);
		free(out);
		assert_int_equal(jint(json_object_get(o, "bytes_per_dtype"), "F8_E4M3"), fp8);
		json_t *four = NULL, *p;
		json_array_foreach(json_object_get(o, "plans"), i, p)
			if (jint(p, "stages") == 4)
				four = p;
		assert_non_null(four);
		assert_true(json_is_true(json_object_get(four, "fits")));
		json_t *per = json_object_get(four, "per_stage");
		assert_int_equal(json_array_size(per), 4);
		json_int_t least = INT64_MAX;
		for (int s = 0; s < 4; s++) {
			json_t *st = json_array_get(per, s);
			json_t *range = json_object_get(st, "layers");
			int a = (int)json_integer_value(json_array_get(range, 0));
			int b = (int)json_integer_value(json_array_get(range, 1));
			uint64_t want = (s == 0 ? first : 0) + (s == 3 ? head : 0);
			for (int L = a; L < b; L++)
				want += layer[L];
			assert_int_equal(jint(st, "weight_bytes"), want);
			assert_true(want < 60ull << 30);
			uint64_t per_token = (uint64_t)(b - a) * 2 * 4 * 128 * 2;
			uint64_t kv = ((80ull << 30) - want - (5ull << 30)) * 9 / 10;
			assert_int_equal(jint(st, "kv_bytes_per_token"), per_token);
			assert_true(json_is_true(json_object_get(st, "fits")));
			assert_int_equal(jint(st, "kv_tokens"), kv / per_token);
			least = jint(st, "kv_tokens") < least ? jint(st, "kv_tokens") : least;
		}
		assert_int_equal(jint(four, "kv_tokens"), least);
		assert_true(least > 100000);
		json_decref(o);
	}
	json_decref(cfg_file);
	/* the table says so; the bf16 model does not fit four such GPUs */
	assert_int_equal(run_capture(&out, "%s inspect --manifest %s", program("qwen-ckpt"), mpath), 0);
	assert_contains(out, "4 stages fit: a KV cache of");
	assert_contains(out, "F8_E4M3");
	free(out);
	assert_int_equal(run_capture(&out, "%s inspect %s", program("qwen-ckpt"),
				     fixture("configs/Qwen3-VL-235B-A22B-Thinking.json")), 0);
	assert_contains(out, "4 stages do not fit");
	assert_contains(out, "8 stages fit");
	free(out);
	/* usage errors */
	assert_int_equal(run_capture(&out, "%s inspect --kv-memory 1.5 %s", program("qwen-ckpt"),
				     mpath), 2);
	assert_contains(out, "--kv-memory: '1.5' is not a number between 0 and 1");
	free(out);
	assert_int_equal(run_capture(&out, "%s inspect --manifest %s %s", program("qwen-ckpt"), mpath,
				     mpath), 2);
	assert_contains(out, "--manifest takes the place of DIR|CONFIG.json");
	free(out);
	assert_int_equal(run_capture(&out, "%s inspect --gpu-memory 1G --manifest %s",
				     program("qwen-ckpt"), mpath), 0);
	assert_contains(out, "8 stages do not fit");
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_validate_fixtures),
		cmocka_unit_test(test_validate_stage),
		cmocka_unit_test(test_validate_broken),
		cmocka_unit_test(test_export_every_override),
		cmocka_unit_test(test_export_deterministic),
		cmocka_unit_test(test_export_text_only_and_dense),
		cmocka_unit_test(test_export_rejects_inconsistent),
		cmocka_unit_test(test_inspect),
		cmocka_unit_test(test_inspect_fp8_235b),
	};
	return cmocka_run_group_tests_name("qwen-ckpt", tests, NULL, NULL);
}
