/* test_manifest_models.c - the real models' manifests (tests/fixtures/manifests, written from
 * their config.json files by make_manifests.py, not by this project's code) validate part by
 * part, and copies broken on purpose are reported by name: a vision block removed, a
 * deepstack merger of the wrong width, an expert tensor of the wrong shape, a stray tensor,
 * FP8 scales missing or of the wrong shape or dtype; a partial vision tower passes
 * --min-vision-blocks only with its deepstack mergers consistent. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/config.h"
#include "loader/dtype.h"
#include "loader/manifest.h"
#include "loader/weights.h"

#define M235 "manifests/Qwen3-VL-235B-A22B-Thinking.json"
#define M235_FP8 "manifests/Qwen3-VL-235B-A22B-Thinking-FP8.json"
#define M30 "manifests/Qwen3-VL-30B-A3B-Instruct.json"
#define VIS "model.visual."
#define LM "model.language_model."

static json_t *load_json(const char *path)
{
	json_error_t jerr;
	json_t *o = json_load_file(path, 0, &jerr);
	if (!o)
		fail_msg("%s: %s", path, jerr.text);
	return o;
}

// ---------------------------------------------------------------------------------------
// editing a manifest's JSON

/* The header entry of tensor `name` (NULL if none); *file gets its file's entry. */
static json_t *find_tensor(json_t *m, const char *name, json_t **file)
{
	size_t i;
	json_t *f;
	json_array_foreach(json_object_get(m, "files"), i, f) {
		json_t *e = json_object_get(json_object_get(f, "header"), name);
		if (e) {
			if (file)
				*file = f;
			return e;
		}
	}
	return NULL;
}

/* Removes every tensor whose name starts with prefix; returns how many. */
static int drop_tensors(json_t *m, const char *prefix)
{
	int n = 0;
	size_t i;
	json_t *f;
	json_array_foreach(json_object_get(m, "files"), i, f) {
		json_t *h = json_object_get(f, "header");
		const char *key;
		json_t *v, *tmp;
		json_object_foreach_safe(h, tmp, key, v) {
			if (strncmp(key, prefix, strlen(prefix)) == 0) {
				json_object_del(h, key);
				n++;
			}
		}
	}
	return n;
}

/* Gives tensor `name` dtype and shape (adding it to the last file if absent), its bytes
 * placed at the end of its file's data section so the header stays well formed. */
static void set_tensor(json_t *m, const char *name, const char *dtype, int ndim,
		       const int64_t *shape)
{
	json_t *file = NULL;
	if (!find_tensor(m, name, &file)) {
		json_t *files = json_object_get(m, "files");
		file = json_array_get(files, json_array_size(files) - 1);
	}
	json_int_t begin = json_integer_value(json_object_get(file, "data_bytes"));
	json_int_t bytes = (json_int_t)qw_dtype_size(qw_dtype_from_name(dtype));
	json_t *dims = json_array();
	for (int d = 0; d < ndim; d++) {
		json_array_append_new(dims, json_integer(shape[d]));
		bytes *= shape[d];
	}
	json_object_set_new(json_object_get(file, "header"), name, json_pack(
		"{s:s, s:o, s:[I, I]}", "dtype", dtype, "shape", dims, "data_offsets", begin,
		begin + bytes));
	json_object_set_new(file, "data_bytes", json_integer(begin + bytes));
}

// ---------------------------------------------------------------------------------------
// validating

typedef struct checked {
	qw_status st;
	qw_wreport rep;
	size_t n_tensors;
	uint64_t total_bytes;
	qw_err err;
} checked;

/* Validates manifest m as `qwen-ckpt validate --manifest` does: its own config, the whole
 * model. */
static void validate(json_t *m, checked *c)
{
	memset(c, 0, sizeof *c);
	char *text = json_dumps(m, JSON_COMPACT);
	qw_manifest man;
	qw_config cfg;
	if (qw_manifest_parse(text, strlen(text), "edited.json", &man, &c->err) != QW_OK ||
	    qw_config_parse(man.config_json, strlen(man.config_json), "config", &cfg, &c->err))
		fail_msg("%s", c->err.msg);
	free(text);
	qw_weights w;
	c->st = qw_weights_load(&cfg, man.ck, NULL, &w, &c->rep, &c->err);
	c->n_tensors = man.ck->n_tensors;
	c->total_bytes = man.ck->total_bytes;
	qw_weights_free(&w);
	qw_manifest_free(&man);
}

static bool listed(char **list, size_t n, const char *needle)
{
	for (size_t i = 0; i < n; i++)
		if (strstr(list[i], needle))
			return true;
	return false;
}

/* Runs qwen-ckpt validate --json on m written to a file, with `flags`; returns the exit
 * status, the report in *report (NULL if the output is not JSON) and the output in *out. */
static int run_validate(json_t *m, const char *flags, json_t **report, char **out)
{
	char *dir = scratch_new();
	const char *path = path_in(dir, "manifest.json");
	assert_int_equal(json_dump_file(m, path, JSON_COMPACT), 0);
	int rc = run_capture(out, "%s validate --json --manifest %s %s 2>&1", program("qwen-ckpt"),
			     path, flags);
	*report = json_loads(*out, 0, NULL);
	scratch_free(dir);
	return rc;
}

static json_int_t part_count(json_t *report, const char *part, const char *what)
{
	return json_integer_value(json_object_get(json_object_get(json_object_get(report, "parts"),
								  part), what));
}

// ---------------------------------------------------------------------------------------
// the real models

typedef struct expect {
	const char *manifest;
	int layers;
	size_t scales_per_layer;       /* FP8: q, k, v, o and both expert tensors */
	double params_min, params_max; /* published parameters (bf16 manifests: bytes / 2) */
} expect;

static void check_model(const expect *e)
{
	json_t *m = load_json(fixture(e->manifest));
	checked c;
	validate(m, &c);
	if (c.st != QW_OK)
		fail_msg("%s: %s", e->manifest, c.err.msg);
	assert_int_equal(c.rep.missing + c.rep.mismatched + c.rep.extra, 0);
	assert_int_equal(c.rep.loaded, c.n_tensors);
	assert_int_equal(c.rep.loaded_bytes, c.total_bytes);
	/* the parts, counted from the architecture: a decoder layer has 2 norms, 4 attention
	 * projections, 2 head norms and a router (dense: 3 MLP projections), 2 fused expert
	 * tensors; the tower 27 blocks of 12, 3 deepstack mergers and the merger of 6 each */
	const qw_wcount *p = c.rep.parts;
	size_t L = (size_t)e->layers, S = e->scales_per_layer;
	assert_int_equal(p[QW_GROUP_TEXT].loaded, 3);
	assert_int_equal(p[QW_GROUP_LAYERS].loaded, L * 9 + L * (S ? 4 : 0));
	assert_int_equal(p[QW_GROUP_EXPERTS].loaded, L * 2 + L * (S ? 2 : 0));
	assert_int_equal(p[QW_GROUP_VISION].loaded, 3);
	assert_int_equal(p[QW_GROUP_VISION_BLOCKS].loaded, 27 * 12);
	assert_int_equal(p[QW_GROUP_DEEPSTACK].loaded, 3 * 6);
	assert_int_equal(p[QW_GROUP_MERGER].loaded, 6);
	if (e->params_max > 0) {
		double params = (double)c.rep.loaded_bytes / 2;
		assert_true(params >= e->params_min && params < e->params_max);
	}
	qw_wreport_free(&c.rep);

	/* the config it carries is the real one */
	json_t *cfg = json_object_get(m, "config");
	json_t *real = load_json(fixture(strstr(e->manifest, "30B")
					 ? "configs/Qwen3-VL-30B-A3B-Instruct.json"
					 : "configs/Qwen3-VL-235B-A22B-Thinking.json"));
	json_t *plain = json_deep_copy(cfg);
	json_object_del(plain, "quantization_config");
	assert_true(json_equal(plain, real));
	assert_int_equal(json_object_get(cfg, "quantization_config") != NULL, S > 0);
	json_decref(plain);
	json_decref(real);

	/* and the program says the same */
	char *out;
	assert_int_equal(run_capture(&out, "%s validate --manifest %s", program("qwen-ckpt"),
				     fixture(e->manifest)), 0);
	assert_contains(out, "missing 0  mismatched 0  extra 0");
	assert_contains(out, "\nOK\n");
	free(out);
	json_decref(m);
}

static void test_real_models_validate(void **state)
{
	(void)state;
	check_model(&(expect){M235, 94, 0, 235.0e9, 236.0e9});
	check_model(&(expect){M235_FP8, 94, 6, 0, 0});
	check_model(&(expect){M30, 48, 0, 31.0e9, 31.2e9});
}

static void test_vision_block_removed(void **state)
{
	(void)state;
	static const char *const block_tensors[] = {
		"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
		"attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
		"mlp.linear_fc1.weight", "mlp.linear_fc1.bias", "mlp.linear_fc2.weight",
		"mlp.linear_fc2.bias"};
	json_t *m = load_json(fixture(M235));
	assert_int_equal(drop_tensors(m, VIS "blocks.13."), 12);
	checked c;
	validate(m, &c);
	assert_int_equal(c.st, QW_E_WEIGHTS);
	assert_int_equal(c.rep.missing, 12);
	assert_int_equal(c.rep.parts[QW_GROUP_VISION_BLOCKS].missing, 12);
	assert_int_equal(c.rep.mismatched + c.rep.extra, 0);
	for (size_t i = 0; i < 12; i++) {
		char name[96];
		snprintf(name, sizeof name, VIS "blocks.13.%s", block_tensors[i]);
		if (!listed(c.rep.missing_names, c.rep.missing, name))
			fail_msg("%s is not reported missing", name);
	}
	assert_contains(c.err.msg, VIS "blocks.13.");
	qw_wreport_free(&c.rep);
	json_decref(m);
}

static void test_deepstack_wrong_width(void **state)
{
	(void)state;
	/* the norm of deepstack merger 1 at the vision width (1152), as the final merger's is,
	 * instead of after the 2 x 2 grouping (4608) */
	json_t *m = load_json(fixture(M235));
	const char *w = VIS "deepstack_merger_list.1.norm.weight";
	const char *b = VIS "deepstack_merger_list.1.norm.bias";
	set_tensor(m, w, "BF16", 1, (int64_t[]){1152});
	set_tensor(m, b, "BF16", 1, (int64_t[]){1152});
	checked c;
	validate(m, &c);
	assert_int_equal(c.st, QW_E_WEIGHTS);
	assert_int_equal(c.rep.mismatched, 2);
	assert_int_equal(c.rep.parts[QW_GROUP_DEEPSTACK].mismatched, 2);
	assert_int_equal(c.rep.missing + c.rep.extra, 0);
	char want[160];
	snprintf(want, sizeof want, "%s: expected [4608], got [1152] BF16", w);
	assert_true(listed(c.rep.mismatched_desc, c.rep.mismatched, want));
	snprintf(want, sizeof want, "%s: expected [4608], got [1152] BF16", b);
	assert_true(listed(c.rep.mismatched_desc, c.rep.mismatched, want));
	qw_wreport_free(&c.rep);
	json_decref(m);
}

static void test_expert_wrong_shape(void **state)
{
	(void)state;
	/* gate_up stored output-major, [E, 2I, H], instead of the hub's [E, H, 2I] */
	json_t *m = load_json(fixture(M235));
	const char *name = LM "layers.50.mlp.experts.gate_up_proj";
	set_tensor(m, name, "BF16", 3, (int64_t[]){128, 3072, 4096});
	checked c;
	validate(m, &c);
	assert_int_equal(c.st, QW_E_WEIGHTS);
	assert_int_equal(c.rep.mismatched, 1);
	assert_int_equal(c.rep.parts[QW_GROUP_EXPERTS].mismatched, 1);
	assert_contains(c.rep.mismatched_desc[0], name);
	assert_contains(c.rep.mismatched_desc[0], "expected [128, 4096, 3072], got [128, 3072, 4096]");
	qw_wreport_free(&c.rep);

	/* the 30B model's experts in the 235B's width */
	json_decref(m);
	m = load_json(fixture(M30));
	name = LM "layers.0.mlp.experts.down_proj";
	set_tensor(m, name, "BF16", 3, (int64_t[]){128, 1536, 2048});
	validate(m, &c);
	assert_int_equal(c.rep.mismatched, 1);
	assert_contains(c.rep.mismatched_desc[0], "expected [128, 768, 2048], got [128, 1536, 2048]");
	qw_wreport_free(&c.rep);
	json_decref(m);
}

static void test_stray_tensor(void **state)
{
	(void)state;
	json_t *m = load_json(fixture(M235));
	const char *layer = LM "layers.94.self_attn.q_proj.weight";     /* one layer too many */
	const char *block = VIS "blocks.27.norm1.weight";                  /* one block too many */
	const char *mtp = "mtp.fc.weight";
	set_tensor(m, layer, "BF16", 2, (int64_t[]){8192, 4096});
	set_tensor(m, block, "BF16", 1, (int64_t[]){1152});
	set_tensor(m, mtp, "BF16", 2, (int64_t[]){4096, 8192});
	checked c;
	validate(m, &c);
	assert_int_equal(c.st, QW_OK);                 /* extras are reported, not fatal */
	assert_int_equal(c.rep.extra, 3);
	assert_true(listed(c.rep.extra_names, c.rep.extra, layer));
	assert_true(listed(c.rep.extra_names, c.rep.extra, block));
	assert_true(listed(c.rep.extra_names, c.rep.extra, mtp));
	assert_int_equal(c.rep.parts[QW_GROUP_LAYERS].extra, 1);
	assert_int_equal(c.rep.parts[QW_GROUP_VISION_BLOCKS].extra, 1);
	assert_int_equal(c.rep.parts[QW_GROUP_OTHER].extra, 1);
	assert_int_equal(c.rep.loaded, c.n_tensors - 3);
	qw_wreport_free(&c.rep);

	json_t *report;
	char *out;
	assert_int_equal(run_validate(m, "", &report, &out), 0);
	assert_non_null(report);
	assert_int_equal(json_integer_value(json_object_get(report, "extra")), 3);
	assert_contains(out, mtp);
	json_decref(report);
	free(out);
	json_decref(m);
}

static void test_fp8_scales(void **state)
{
	(void)state;
	/* q_proj [8192, 4096] has [64, 32] scales; down_proj [128, 1536, 4096] [128, 12, 32] */
	const char *q = LM "layers.3.self_attn.q_proj.weight";
	const char *q_scale = LM "layers.3.self_attn.q_proj.weight_scale_inv";
	const char *down = LM "layers.7.mlp.experts.down_proj";
	const char *down_scale = LM "layers.7.mlp.experts.down_proj_scale_inv";
	const char *k_scale = LM "layers.9.self_attn.k_proj.weight_scale_inv";
	json_t *m = load_json(fixture(M235_FP8));
	assert_non_null(find_tensor(m, q_scale, NULL));
	set_tensor(m, q_scale, "F32", 2, (int64_t[]){64, 33});
	json_t *file;
	assert_non_null(find_tensor(m, down_scale, &file));
	json_object_del(json_object_get(file, "header"), down_scale);
	set_tensor(m, k_scale, "F16", 2, (int64_t[]){4, 32});
	checked c;
	validate(m, &c);
	assert_int_equal(c.st, QW_E_WEIGHTS);
	assert_int_equal(c.rep.mismatched, 3);      /* each reported on its weight */
	assert_int_equal(c.rep.missing, 0);
	assert_int_equal(c.rep.parts[QW_GROUP_LAYERS].mismatched, 2);
	assert_int_equal(c.rep.parts[QW_GROUP_EXPERTS].mismatched, 1);
	char want[256];
	snprintf(want, sizeof want, "its scale %s is [64, 33] F32, expected [64, 32] F32", q_scale);
	assert_true(listed(c.rep.mismatched_desc, 3, want));
	snprintf(want, sizeof want, "%s: expected [128, 1536, 4096], got [128, 1536, 4096] "
		 "F8_E4M3", down);
	assert_true(listed(c.rep.mismatched_desc, 3, want));
	snprintf(want, sizeof want, "its scale tensor %s is missing", down_scale);
	assert_true(listed(c.rep.mismatched_desc, 3, want));
	snprintf(want, sizeof want, "its scale %s is [4, 32] F16", k_scale);
	assert_true(listed(c.rep.mismatched_desc, 3, want));
	qw_wreport_free(&c.rep);
	json_decref(m);

	/* bf16 scales are accepted, as the loader accepts them; the weight may stay bf16 */
	m = load_json(fixture(M235_FP8));
	set_tensor(m, q_scale, "BF16", 2, (int64_t[]){64, 32});
	set_tensor(m, q, "BF16", 2, (int64_t[]){8192, 4096});
	set_tensor(m, down_scale, "BF16", 3, (int64_t[]){128, 12, 32});
	validate(m, &c);
	assert_int_equal(c.st, QW_OK);
	assert_int_equal(c.rep.mismatched + c.rep.missing + c.rep.extra, 0);
	assert_int_equal(c.rep.loaded, c.n_tensors - 1);   /* q's scales go with no weight */
	qw_wreport_free(&c.rep);
	json_decref(m);

	/* FP8 weights under a config without quantization_config */
	m = load_json(fixture(M235_FP8));
	json_t *report;
	char *out;
	char flags[4200];
	snprintf(flags, sizeof flags, "--config %s",
		 fixture("configs/Qwen3-VL-235B-A22B-Thinking.json"));
	assert_int_equal(run_validate(m, flags, &report, &out), 1);
	assert_non_null(report);
	assert_int_equal(json_integer_value(json_object_get(report, "mismatched")), 94 * 6);
	assert_int_equal(json_integer_value(json_object_get(report, "extra")), 94 * 6);
	assert_contains(out, "config.json has no fp8 quantization_config");
	json_decref(report);
	free(out);
	json_decref(m);
}

/* The 235B manifest with only vision blocks [0, keep) and deepstack mergers [0, mergers). */
static json_t *partial_tower(int keep, int mergers)
{
	json_t *m = load_json(fixture(M235));
	char prefix[96];
	for (int k = keep; k < 27; k++) {
		snprintf(prefix, sizeof prefix, VIS "blocks.%d.", k);
		assert_int_equal(drop_tensors(m, prefix), 12);
	}
	for (int j = mergers; j < 3; j++) {
		snprintf(prefix, sizeof prefix, VIS "deepstack_merger_list.%d.", j);
		assert_int_equal(drop_tensors(m, prefix), 6);
	}
	return m;
}

static void test_partial_vision_tower(void **state)
{
	(void)state;
	/* blocks 0..16 stored: deepstack mergers 0 and 1 (after blocks 8 and 16) belong */
	json_t *m = partial_tower(17, 2);
	json_t *report;
	char *out;
	assert_int_equal(run_validate(m, "", &report, &out), 1);     /* the whole tower asked */
	assert_int_equal(part_count(report, "vision_blocks", "missing"), 10 * 12);
	assert_int_equal(part_count(report, "deepstack_mergers", "missing"), 6);
	json_decref(report);
	free(out);

	assert_int_equal(run_validate(m, "--min-vision-blocks 17", &report, &out), 0);
	assert_non_null(report);
	assert_int_equal(json_integer_value(json_object_get(report, "missing")), 0);
	assert_int_equal(part_count(report, "vision_blocks", "loaded"), 17 * 12);
	assert_int_equal(part_count(report, "deepstack_mergers", "loaded"), 2 * 6);
	json_t *vb = json_object_get(report, "vision_blocks");
	assert_int_equal(json_integer_value(json_object_get(vb, "stored")), 17);
	assert_int_equal(json_integer_value(json_object_get(vb, "config")), 27);
	assert_int_equal(json_integer_value(json_object_get(vb, "deepstack_mergers")), 2);
	json_decref(report);
	free(out);
	assert_int_equal(run_validate(m, "--min-vision-blocks 1", &report, &out), 0);
	json_decref(report);
	free(out);

	assert_int_equal(run_validate(m, "--min-vision-blocks 18", &report, &out), 1);
	assert_contains(out, "stores 17 vision blocks, fewer than --min-vision-blocks 18");
	json_decref(report);
	free(out);
	json_decref(m);

	/* a block inside the kept range still has to be whole */
	m = partial_tower(17, 2);
	assert_int_equal(drop_tensors(m, VIS "blocks.5.attn.proj.weight"), 1);
	assert_int_equal(run_validate(m, "--min-vision-blocks 4", &report, &out), 1);
	assert_int_equal(json_integer_value(json_object_get(report, "missing")), 1);
	assert_contains(out, VIS "blocks.5.attn.proj.weight");
	json_decref(report);
	free(out);
	json_decref(m);

	/* the merger after block 16 is owed once block 16 is there */
	m = partial_tower(17, 1);
	assert_int_equal(run_validate(m, "--min-vision-blocks 10", &report, &out), 1);
	assert_int_equal(part_count(report, "deepstack_mergers", "missing"), 6);
	assert_contains(out, VIS "deepstack_merger_list.1.linear_fc2.weight");
	json_decref(report);
	free(out);
	json_decref(m);

	/* ... and the merger after block 24 is stray when the tower stops at 17 */
	m = partial_tower(17, 3);
	assert_int_equal(run_validate(m, "--min-vision-blocks 10", &report, &out), 1);
	assert_int_equal(json_integer_value(json_object_get(report, "missing")), 0);
	assert_int_equal(part_count(report, "deepstack_mergers", "extra"), 6);
	assert_contains(out, VIS "deepstack_merger_list.2.norm.weight");
	json_decref(report);
	free(out);
	json_decref(m);

	/* bad asks */
	m = partial_tower(27, 3);
	assert_int_equal(run_validate(m, "--min-vision-blocks 28", &report, &out), 2);
	assert_contains(out, "the model's vision tower has 27 blocks");
	free(out);
	assert_int_equal(run_validate(m, "--min-vision-blocks 0", &report, &out), 2);
	free(out);
	json_decref(m);
}

static void test_cut_vision(void **state)
{
	(void)state;
	qw_config cfg, cut;
	qw_err err = {0};
	assert_int_equal(qw_config_load(fixture("configs/Qwen3-VL-235B-A22B-Thinking.json"), &cfg,
					&err), QW_OK);
	static const struct {
		int depth, want_depth, want_mergers;
	} cases[] = {{30, 27, 3}, {27, 27, 3}, {25, 25, 3}, {24, 24, 2}, {17, 17, 2},
		     {9, 9, 1}, {8, 8, 0}, {1, 1, 0}, {-1, 27, 3}};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		cut = cfg;
		qw_config_cut_vision(&cut, cases[i].depth);
		assert_int_equal(cut.vision.depth, cases[i].want_depth);
		assert_int_equal(cut.vision.n_deepstack, cases[i].want_mergers);
	}
	/* blocks stored: one more than the highest index, whatever the gaps */
	json_t *m = partial_tower(17, 2);
	assert_int_equal(drop_tensors(m, VIS "blocks.3."), 12);
	char *text = json_dumps(m, JSON_COMPACT);
	qw_manifest man;
	assert_int_equal(qw_manifest_parse(text, strlen(text), "m", &man, &err), QW_OK);
	assert_int_equal(qw_vision_blocks_stored(man.ck), 17);
	qw_manifest_free(&man);
	free(text);
	json_decref(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_real_models_validate),
		cmocka_unit_test(test_vision_block_removed),
		cmocka_unit_test(test_deepstack_wrong_width),
		cmocka_unit_test(test_expert_wrong_shape),
		cmocka_unit_test(test_stray_tensor),
		cmocka_unit_test(test_fp8_scales),
		cmocka_unit_test(test_partial_vision_tower),
		cmocka_unit_test(test_cut_vision),
	};
	return cmocka_run_group_tests_name("manifest_models", tests, NULL, NULL);
}
