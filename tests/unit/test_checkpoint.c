/* test_checkpoint.c - single-file and sharded checkpoints, and every way an index can
 * disagree with its shards. */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/checkpoint.h"
#include "loader/st_writer.h"

static qw_status fill_zero(void *ctx, size_t index, void *buf, uint64_t nbytes, qw_err *err)
{
	memset(buf, 0, nbytes);
	return QW_OK;
}

/* Two shards: a, b in shard 1; c in shard 2. */
static char *make_sharded(void)
{
	char *dir = scratch_new();
	qw_st_entry s1[] = {{"a", QW_DT_F32, 1, {4}}, {"b", QW_DT_BF16, 2, {2, 2}}};
	qw_st_entry s2[] = {{"c", QW_DT_F32, 1, {3}}};
	qw_err err = {0};
	assert_int_equal(qw_st_write(path_in(dir, "m-1.safetensors"), s1, 2, fill_zero, NULL, &err), 0);
	assert_int_equal(qw_st_write(path_in(dir, "m-2.safetensors"), s2, 1, fill_zero, NULL, &err), 0);
	return dir;
}

static void write_index(const char *dir, const char *weight_map)
{
	char text[1024];
	snprintf(text, sizeof text, "{\"metadata\": {\"total_size\": 36}, \"weight_map\": %s}",
		 weight_map);
	write_file(path_in(dir, QW_ST_INDEX), text, strlen(text));
}

static void expect_open(const char *dir, qw_status want, const char *needle)
{
	qw_checkpoint *c = NULL;
	qw_err err = {0};
	qw_status st = qw_ckpt_open(dir, &c, &err);
	if (st != want)
		fail_msg("expected %s, got %s: %s", qw_status_name(want), qw_status_name(st), err.msg);
	if (want != QW_OK) {
		assert_null(c);
		assert_contains(err.msg, needle);
	}
	qw_ckpt_close(c);
}

static void test_single_file(void **state)
{
	(void)state;
	qw_checkpoint *c;
	qw_err err = {0};
	assert_int_equal(qw_ckpt_open(fixture("hf/tiny-dense/model"), &c, &err), QW_OK);
	assert_false(c->sharded);
	assert_int_equal(c->n_files, 1);
	assert_int_equal(c->n_tensors, 92);
	assert_non_null(qw_ckpt_find(c, "model.language_model.norm.weight"));
	assert_null(qw_ckpt_find(c, "lm_head.weight"));          /* tied */
	for (size_t i = 1; i < c->n_tensors; i++)
		assert_true(strcmp(c->tensors[i - 1]->name, c->tensors[i]->name) < 0);
	qw_ckpt_close(c);
}

static void test_sharded(void **state)
{
	(void)state;
	char *dir = make_sharded();
	write_index(dir, "{\"a\": \"m-1.safetensors\", \"b\": \"m-1.safetensors\","
			 " \"c\": \"m-2.safetensors\"}");
	qw_checkpoint *c;
	qw_err err = {0};
	assert_int_equal(qw_ckpt_open(dir, &c, &err), QW_OK);
	assert_true(c->sharded);
	assert_int_equal(c->n_files, 2);
	assert_int_equal(c->n_tensors, 3);
	assert_int_equal(c->total_bytes, 16 + 8 + 12);
	const qw_tensor *t = qw_ckpt_find(c, "c");
	assert_non_null(t);
	assert_contains(t->file->path, "m-2.safetensors");
	qw_ckpt_close(c);
	scratch_free(dir);
}

static void test_index_names_missing_shard(void **state)
{
	(void)state;
	char *dir = make_sharded();
	write_index(dir, "{\"a\": \"m-1.safetensors\", \"b\": \"m-1.safetensors\","
			 " \"c\": \"m-3.safetensors\"}");
	expect_open(dir, QW_E_INDEX, "names shard 'm-3.safetensors' (for tensor 'c')");
	scratch_free(dir);
}

static void test_index_disagrees_with_shards(void **state)
{
	(void)state;
	char *dir = make_sharded();
	write_index(dir, "{\"a\": \"m-1.safetensors\", \"b\": \"m-1.safetensors\","
			 " \"c\": \"m-1.safetensors\"}");
	expect_open(dir, QW_E_INDEX, "places tensor 'c'");
	write_index(dir, "{\"a\": \"m-1.safetensors\", \"c\": \"m-2.safetensors\"}");
	expect_open(dir, QW_E_INDEX, "holds tensor 'b', which");
	write_index(dir, "{\"a\": \"../m-1.safetensors\"}");
	expect_open(dir, QW_E_INDEX, "not a plain file name");
	write_index(dir, "{}");
	expect_open(dir, QW_E_INDEX, "weight_map");
	write_file(path_in(dir, QW_ST_INDEX), "{\"weight_map\": ", 15);
	expect_open(dir, QW_E_INDEX, "not valid JSON");
	scratch_free(dir);
}

static void test_shard_broken(void **state)
{
	(void)state;
	char *dir = make_sharded();
	write_index(dir, "{\"a\": \"m-1.safetensors\", \"b\": \"m-1.safetensors\","
			 " \"c\": \"m-2.safetensors\"}");
	size_t len;
	char *data = read_file(path_in(dir, "m-2.safetensors"), &len);
	write_file(path_in(dir, "m-2.safetensors"), data, len - 4);
	free(data);
	expect_open(dir, QW_E_ST_TRUNCATED, "m-2.safetensors: truncated");
	scratch_free(dir);
}

/* What people give instead of a model directory, each said with what to do. */
static void test_model_dir_check(void **state)
{
	qw_err err = {0};
	const char *tiny = fixture("hf/tiny-moe/model");
	assert_int_equal(qw_model_dir_check(tiny, &err), QW_OK);
	/* a hub id: nothing is downloaded */
	assert_int_equal(qw_model_dir_check("Qwen/Qwen3-VL-30B-A3B-Instruct", &err), QW_E_IO);
	assert_string_equal(err.msg, "Qwen/Qwen3-VL-30B-A3B-Instruct: no such directory; it looks "
			    "like a Hugging Face hub id, but models are read from a local directory "
			    "and nothing is downloaded\nHINT: download it first (hf download "
			    "Qwen/Qwen3-VL-30B-A3B-Instruct --local-dir DIR) and give that DIR");
	/* a path that is not one, and is not there */
	assert_int_equal(qw_model_dir_check("./Qwen/Qwen3", &err), QW_E_IO);
	assert_contains(err.msg, "./Qwen/Qwen3: No such file or directory\nHINT: give the model's "
			"directory");
	/* the config.json itself: its directory is the model */
	char path[4200];
	snprintf(path, sizeof path, "%s/config.json", tiny);
	assert_int_equal(qw_model_dir_check(path, &err), QW_E_IO);
	assert_contains(err.msg, "config.json: a file, not a directory");
	char want[4300];
	snprintf(want, sizeof want, "\nHINT: give %s", tiny);
	assert_contains(err.msg, want);
	/* a directory without a config.json */
	char *dir = scratch_new();
	assert_int_equal(qw_model_dir_check(dir, &err), QW_E_IO);
	assert_contains(err.msg, "holds no config.json, so it is not a model directory");
	scratch_free(dir);
}

static void test_empty_dir(void **state)
{
	(void)state;
	char *dir = scratch_new();
	expect_open(dir, QW_E_IO, "HINT");
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single_file),
		cmocka_unit_test(test_model_dir_check),
		cmocka_unit_test(test_sharded),
		cmocka_unit_test(test_index_names_missing_shard),
		cmocka_unit_test(test_index_disagrees_with_shards),
		cmocka_unit_test(test_shard_broken),
		cmocka_unit_test(test_empty_dir),
	};
	return cmocka_run_group_tests_name("checkpoint", tests, NULL, NULL);
}
