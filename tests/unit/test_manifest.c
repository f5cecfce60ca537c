/* test_manifest.c - the manifest form: `qwen-ckpt manifest DIR` writes the headers of the
 * files as they are (held to the file bytes and to transformers' own key list), a manifest
 * gives the same validate report as its directory (single file, sharded, FP8, per stage),
 * a header in a manifest meets the checks of a real file with the same status and message,
 * and a malformed manifest or a bad command line gets an error naming what is wrong. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loader/manifest.h"
#include "loader/safetensors.h"

static json_t *parse_json(const char *text)
{
	json_error_t jerr;
	json_t *o = json_loads(text, 0, &jerr);
	if (!o)
		fail_msg("not JSON (%s):\n%.2000s", jerr.text, text);
	return o;
}

/* The header of the safetensors file at path, read from its bytes; *data_bytes gets the
 * size of its data section. */
static json_t *file_header(const char *path, json_int_t *data_bytes)
{
	size_t len;
	char *bytes = read_file(path, &len);
	uint64_t n = 0;
	for (int i = 7; i >= 0; i--)
		n = (n << 8) | (uint8_t)bytes[i];
	json_error_t jerr;
	json_t *h = json_loadb(bytes + 8, n, 0, &jerr);
	assert_non_null(h);
	*data_bytes = (json_int_t)(len - 8 - n);
	free(bytes);
	return h;
}

static void test_manifest_of_hf_fixture(void **state)
{
	(void)state;
	const char *dir = fixture("hf/tiny-moe/model");
	char *out;
	assert_int_equal(run_capture(&out, "%s manifest %s", program("qwen-ckpt"), dir), 0);
	json_t *m = parse_json(out);
	assert_string_equal(json_string_value(json_object_get(m, "format")), "qwen-vl-manifest");
	assert_int_equal(json_integer_value(json_object_get(m, "version")), 1);
	assert_string_equal(json_string_value(json_object_get(m, "source")), dir);

	json_t *config = json_load_file(fixture("hf/tiny-moe/model/config.json"), 0, NULL);
	assert_true(json_equal(json_object_get(m, "config"), config));
	json_decref(config);

	/* the file's header, entry for entry, and its data size, from the file's bytes */
	json_t *files = json_object_get(m, "files");
	assert_int_equal(json_array_size(files), 1);
	json_t *f = json_array_get(files, 0);
	assert_string_equal(json_string_value(json_object_get(f, "name")), "model.safetensors");
	json_int_t data_bytes;
	json_t *real = file_header(fixture("hf/tiny-moe/model/model.safetensors"), &data_bytes);
	assert_int_equal(json_integer_value(json_object_get(f, "data_bytes")), data_bytes);
	json_object_del(real, "__metadata__");
	json_t *header = json_object_get(f, "header");
	assert_int_equal(json_object_size(header), json_object_size(real));
	const char *name;
	json_t *entry;
	json_object_foreach(real, name, entry) {
		if (!json_equal(json_object_get(header, name), entry))
			fail_msg("%s differs from the file's header", name);
	}
	json_decref(real);

	/* and the names, dtypes and shapes are those transformers saved */
	json_t *hf_root = json_load_file(fixture("hf/tiny-moe/manifest.json"), 0, NULL);
	json_t *hf = json_object_get(hf_root, "weight_keys");
	assert_int_equal(json_object_size(hf), json_object_size(header));
	json_object_foreach(hf, name, entry) {
		json_t *mine = json_object_get(header, name);
		assert_non_null(mine);
		assert_true(json_equal(json_object_get(mine, "dtype"), json_array_get(entry, 0)));
		assert_true(json_equal(json_object_get(mine, "shape"), json_array_get(entry, 1)));
	}
	json_decref(hf_root);
	json_decref(m);
	free(out);
}

/* s with every occurrence of `what` removed, in place. */
static void erase_all(char *s, const char *what)
{
	size_t n = strlen(what);
	for (char *at; n && (at = strstr(s, what));)
		memmove(at, at + n, strlen(at + n) + 1);
}

/* validate --json (and the text report, but for its # lines) of DIR and of its manifest,
 * with `flags`, must be the same, but for how a file is named: "DIR/model.safetensors"
 * against "MANIFEST: model.safetensors". */
static void check_same_report(const char *dir, const char *flags)
{
	char *scratch = scratch_new(), *by_dir, *by_manifest, *made;
	char path[4200], dir_prefix[4200], manifest_prefix[4200];
	snprintf(path, sizeof path, "%s/m.json", scratch);
	snprintf(dir_prefix, sizeof dir_prefix, "%s/", dir);
	snprintf(manifest_prefix, sizeof manifest_prefix, "%s: ", path);
	assert_int_equal(run_capture(&made, "%s manifest %s > %s", program("qwen-ckpt"), dir, path),
			 0);
	free(made);
	for (int json = 0; json < 2; json++) {
		int rc_dir = run_capture(&by_dir, "%s validate %s %s %s", program("qwen-ckpt"),
					 json ? "--json" : "", flags, dir);
		int rc_man = run_capture(&by_manifest, "%s validate %s %s --manifest %s",
					 program("qwen-ckpt"), json ? "--json" : "", flags, path);
		assert_int_equal(rc_dir, rc_man);
		erase_all(by_dir, dir_prefix);
		erase_all(by_manifest, manifest_prefix);
		const char *a = json ? by_dir : strstr(by_dir, "\nloaded ");
		const char *b = json ? by_manifest : strstr(by_manifest, "\nloaded ");
		if (!a || !b || strcmp(a, b) != 0)
			fail_msg("%s %s: the reports differ:\n%s\n---\n%s", dir, flags, by_dir,
				 by_manifest);
		free(by_dir);
		free(by_manifest);
	}
	scratch_free(scratch);
}

static void test_same_report_as_directory(void **state)
{
	(void)state;
	check_same_report(fixture("hf/tiny-moe/model"), "");
	check_same_report(fixture("hf/tiny-dense/model"), "");
	check_same_report(fixture("hf/tiny-moe/model"), "--stage 0/2");
	check_same_report(fixture("hf/tiny-moe/model"), "--stage 1/2");

	/* sharded FP8: each tensor listed in the file the index places it in */
	char *dir = scratch_new(), *out, src[4096];
	assert_int_equal(run_capture(&out, "%s export-reduced --config %s --out %s --shards 3 "
				     "--quantize fp8", program("qwen-ckpt"),
				     fixture("hf/tiny-moe/model/config.json"), dir), 0);
	free(out);
	check_same_report(dir, "");
	check_same_report(dir, "--stage 1/3");
	assert_int_equal(run_capture(&out, "%s manifest %s", program("qwen-ckpt"), dir), 0);
	json_t *m = parse_json(out);
	json_t *index = json_load_file(path_in(dir, "model.safetensors.index.json"), 0, NULL);
	json_t *where = json_object_get(index, "weight_map");
	size_t i, listed = 0;
	json_t *f;
	json_array_foreach(json_object_get(m, "files"), i, f) {
		const char *file = json_string_value(json_object_get(f, "name"));
		const char *name;
		json_t *entry;
		json_object_foreach(json_object_get(f, "header"), name, entry) {
			assert_string_equal(json_string_value(json_object_get(where, name)), file);
			listed++;
		}
	}
	assert_int_equal(json_array_size(json_object_get(m, "files")), 3);
	assert_int_equal(listed, json_object_size(where));
	json_decref(index);
	json_decref(m);
	free(out);

	scratch_free(dir);

	/* a checkpoint that fails: one layer more and experts of another width in its config */
	dir = scratch_new();
	assert_non_null(realpath(fixture("hf/tiny-moe/model/model.safetensors"), src));
	assert_int_equal(symlink(src, path_in(dir, "model.safetensors")), 0);
	json_t *cfg = json_load_file(fixture("hf/tiny-moe/model/config.json"), 0, NULL);
	json_t *text = json_object_get(cfg, "text_config");
	json_object_set_new(text, "num_hidden_layers", json_integer(5));
	json_object_set_new(text, "moe_intermediate_size", json_integer(64));
	assert_int_equal(json_dump_file(cfg, path_in(dir, "config.json"), 0), 0);
	json_decref(cfg);
	check_same_report(dir, "");
	check_same_report(dir, "--stage 1/2");
	scratch_free(dir);
}

// ---------------------------------------------------------------------------------------
// malformed manifests

#define ONE_FILE(header, data_bytes) \
	"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"files\": [{\"name\": " \
	"\"model.safetensors\", \"data_bytes\": " data_bytes ", \"header\": " header "}]}"

typedef struct bad_case {
	const char *text;
	qw_status st;
	const char *says;
	bool header_check;   /* a real file with this header fails the same way */
	const char *header;
	uint64_t data_bytes;
} bad_case;

#define HDR_CASE(header, data_bytes, st, says) \
	{ONE_FILE(header, #data_bytes), st, says, true, header, data_bytes}

static const bad_case bad_cases[] = {
	{"{\"format\": ", QW_E_INDEX, "not valid JSON", false, NULL, 0},
	{"[1, 2]", QW_E_INDEX, "not a checkpoint manifest", false, NULL, 0},
	{"{\"format\": \"safetensors\", \"version\": 1}", QW_E_INDEX,
	 "not a checkpoint manifest (needs \"format\": \"qwen-vl-manifest\")", false, NULL, 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 2, \"files\": []}", QW_E_INDEX,
	 "manifest version must be 1", false, NULL, 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"weights\": {}, \"files\": []}",
	 QW_E_INDEX, "the manifest has an unknown key 'weights'", false, NULL, 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"files\": []}", QW_E_INDEX,
	 "needs a non-empty array 'files'", false, NULL, 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"config\": [], \"files\": []}",
	 QW_E_INDEX, "config must be the model's config.json", false, NULL, 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"files\": [{\"name\": "
	 "\"../model.safetensors\", \"data_bytes\": 0, \"header\": {}}]}", QW_E_INDEX,
	 "files[0].name must be the plain file name", false, NULL, 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"files\": [{\"name\": "
	 "\"model.safetensors\", \"header\": {}}]}", QW_E_INDEX,
	 "files[0] (model.safetensors): data_bytes must be", false, NULL, 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"files\": [{\"name\": "
	 "\"model.safetensors\", \"size\": 8, \"data_bytes\": 0, \"header\": {}}]}", QW_E_INDEX,
	 "files[0] has an unknown key 'size'", false, NULL, 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"files\": [{\"name\": "
	 "\"a.safetensors\", \"data_bytes\": 4, \"header\": {\"t\": {\"dtype\": \"F32\", "
	 "\"shape\": [1], \"data_offsets\": [0, 4]}}}, {\"name\": \"b.safetensors\", "
	 "\"data_bytes\": 4, \"header\": {\"t\": {\"dtype\": \"F32\", \"shape\": [1], "
	 "\"data_offsets\": [0, 4]}}}]}", QW_E_INDEX,
	 "tensor 't' appears in both m.json: a.safetensors and m.json: b.safetensors", false, NULL,
	 0},
	{"{\"format\": \"qwen-vl-manifest\", \"version\": 1, \"files\": [{\"name\": "
	 "\"a.safetensors\", \"data_bytes\": 0, \"header\": {}}, {\"name\": \"a.safetensors\", "
	 "\"data_bytes\": 0, \"header\": {}}]}", QW_E_INDEX,
	 "file 'a.safetensors' is listed twice (files[0] and files[1])", false, NULL, 0},
	HDR_CASE("{\"a\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [0, 10]}}",
		 10, QW_E_ST_SIZE, "m.json: model.safetensors: tensor 'a': shape [2, 3] x BF16 is "
		 "12 bytes, but data_offsets [0, 10] span 10 bytes"),
	HDR_CASE("{\"a\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [0, 8]}, "
		 "\"b\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [4, 12]}}", 12,
		 QW_E_ST_OVERLAP, "tensors 'a' [0, 8) and 'b' [4, 12) overlap"),
	HDR_CASE("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 12,
		 QW_E_ST_TRUNCATED, "truncated: the header describes 16 bytes of tensor data but "
		 "the file holds 12"),
	HDR_CASE("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}", 10,
		 QW_E_ST_OFFSETS, "tensor 'a': data_offsets [8, 12) run past the end of the "
		 "10-byte data section"),
	HDR_CASE("{\"a\": {\"dtype\": \"F4\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1,
		 QW_E_ST_DTYPE, "tensor 'a': unknown dtype 'F4'"),
	HDR_CASE("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, QW_E_ST_HEADER_JSON,
		 "tensor 'a': needs string 'dtype', array 'shape' and array 'data_offsets'"),
	HDR_CASE("{\"__metadata__\": {\"format\": 1}}", 0, QW_E_ST_HEADER_JSON,
		 "__metadata__['format'] is not a string"),
};

static void test_malformed_manifests(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bad_cases / sizeof *bad_cases; i++) {
		const bad_case *c = &bad_cases[i];
		qw_manifest m;
		qw_err err = {0};
		qw_status st = qw_manifest_parse(c->text, strlen(c->text), "m.json", &m, &err);
		if (st != c->st)
			fail_msg("case %zu: expected %s, got %s: %s", i, qw_status_name(c->st),
				 qw_status_name(st), err.msg);
		assert_contains(err.msg, c->says);
		assert_null(m.ck);
		if (!c->header_check)
			continue;
		/* the same header in a real file: the same status and message */
		size_t hlen = strlen(c->header), size = 8 + hlen + c->data_bytes;
		char *image = calloc(1, size);
		for (int b = 0; b < 8; b++)
			image[b] = (char)((uint64_t)hlen >> (8 * b));
		memcpy(image + 8, c->header, hlen);
		qw_st_file *f = NULL;
		qw_err ferr = {0};
		assert_int_equal(qw_st_parse(image, size, "m.json: model.safetensors", &f, &ferr), st);
		assert_string_equal(ferr.msg, err.msg);
		free(image);
	}

	/* a well-formed one, for contrast: no config, one tensor of no data */
	const char *ok = ONE_FILE("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], "
				  "\"data_offsets\": [0, 8]}}", "8");
	qw_manifest m;
	qw_err err = {0};
	assert_int_equal(qw_manifest_parse(ok, strlen(ok), "m.json", &m, &err), QW_OK);
	assert_null(m.config_json);
	assert_int_equal(m.ck->n_tensors, 1);
	assert_null(m.ck->tensors[0]->data);
	assert_int_equal(m.ck->total_bytes, 8);
	assert_string_equal(m.ck->tensors[0]->file->path, "m.json: model.safetensors");
	qw_manifest_free(&m);
}

static void test_command_line(void **state)
{
	(void)state;
	const char *ckpt = program("qwen-ckpt");
	char *dir = scratch_new(), *out;
	const char *cfg235 = fixture("configs/Qwen3-VL-235B-A22B-Thinking.json");

	/* a manifest without a config needs --config */
	json_t *m = json_load_file(fixture("manifests/Qwen3-VL-235B-A22B-Thinking.json"), 0, NULL);
	json_object_del(m, "config");
	const char *bare = path_in(dir, "bare.json");
	assert_int_equal(json_dump_file(m, bare, JSON_COMPACT), 0);
	json_decref(m);
	assert_int_equal(run_capture(&out, "%s validate --manifest %s 2>&1", ckpt, bare), 1);
	assert_contains(out, "holds no config\nHINT: pass the model's config.json with --config");
	free(out);
	assert_int_equal(run_capture(&out, "%s validate --manifest %s --config %s", ckpt, bare,
				     cfg235), 0);
	assert_contains(out, "\nOK\n");
	free(out);
	/* --config wins over the manifest's own: the 30B model's tensors are not the 235B's */
	assert_int_equal(run_capture(&out, "%s validate --manifest %s --config %s", ckpt,
				     fixture("manifests/Qwen3-VL-30B-A3B-Instruct.json"), cfg235), 1);
	assert_contains(out, "FAILED");
	assert_contains(out, "model.language_model.layers.0.self_attn.q_proj.weight: expected "
			"[8192, 4096], got [4096, 2048] BF16");
	free(out);

	/* usage */
	assert_int_equal(run_capture(&out, "%s validate --manifest %s %s 2>&1", ckpt, bare,
				     fixture("hf/tiny-moe/model")), 2);
	assert_contains(out, "--manifest takes the place of DIR");
	free(out);
	assert_int_equal(run_capture(&out, "%s validate 2>&1", ckpt), 2);
	free(out);
	assert_int_equal(run_capture(&out, "%s manifest 2>&1", ckpt), 2);
	free(out);
	assert_int_equal(run_capture(&out, "%s validate --manifest %s 2>&1", ckpt,
				     path_in(dir, "none.json")), 1);
	assert_contains(out, "none.json: cannot open");
	free(out);
	write_file(path_in(dir, "x.json"), "{\"format\": 3}", 13);
	assert_int_equal(run_capture(&out, "%s validate --manifest %s 2>&1", ckpt,
				     path_in(dir, "x.json")), 1);
	assert_contains(out, "not a checkpoint manifest");
	assert_contains(out, "HINT:");
	free(out);

	/* manifest DIR needs the config and sound files */
	char *model = scratch_new();
	copy_file(fixture("hf/tiny-moe/model/model.safetensors"), path_in(model, "model.safetensors"));
	assert_int_equal(run_capture(&out, "%s manifest %s 2>&1", ckpt, model), 1);
	assert_contains(out, "config.json: cannot open");
	assert_contains(out, "HINT:");
	free(out);
	write_file(path_in(model, "config.json"), "{\"a\": ", 6);
	assert_int_equal(run_capture(&out, "%s manifest %s 2>&1", ckpt, model), 1);
	assert_contains(out, "config.json: not valid JSON");
	free(out);
	copy_file(fixture("hf/tiny-moe/model/config.json"), path_in(model, "config.json"));
	assert_int_equal(truncate(path_in(model, "model.safetensors"), 100000), 0);
	assert_int_equal(run_capture(&out, "%s manifest %s 2>&1", ckpt, model), 1);
	assert_contains(out, "truncated");
	free(out);
	scratch_free(model);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_manifest_of_hf_fixture),
		cmocka_unit_test(test_same_report_as_directory),
		cmocka_unit_test(test_malformed_manifests),
		cmocka_unit_test(test_command_line),
	};
	return cmocka_run_group_tests_name("manifest", tests, NULL, NULL);
}
