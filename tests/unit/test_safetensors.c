/* test_safetensors.c - the safetensors reader and writer: a round trip, the real
 * fixture, and every kind of broken file giving its own error. */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loader/safetensors.h"
#include "loader/st_writer.h"

/* A file image: u64 header length, the header text, then data_len bytes of 0xab. */
static uint8_t *image(const char *header, size_t data_len, size_t *size)
{
	size_t hlen = strlen(header);
	*size = 8 + hlen + data_len;
	uint8_t *buf = malloc(*size);
	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
	memcpy(buf + 8, header, hlen);
	memset(buf + 8 + hlen, 0xab, data_len);
	return buf;
}

/* Parses header + data and expects status `want` with `needle` in the message. */
static void expect_parse(const char *header, size_t data_len, qw_status want, const char *needle)
{
	size_t size;
	uint8_t *buf = image(header, data_len, &size);
	qw_st_file *f = NULL;
	qw_err err = {0};
	qw_status st = qw_st_parse(buf, size, "test.safetensors", &f, &err);
	if (st != want)
		fail_msg("expected %s, got %s: %s", qw_status_name(want), qw_status_name(st), err.msg);
	if (want == QW_OK) {
		assert_non_null(f);
		qw_st_close(f);
	} else {
		assert_null(f);
		assert_contains(err.msg, needle);
		assert_contains(err.msg, "test.safetensors");
	}
	free(buf);
}

static qw_status fill_pattern(void *ctx, size_t index, void *buf, uint64_t nbytes, qw_err *err)
{
	(void)ctx;
	for (uint64_t i = 0; i < nbytes; i++)
		((uint8_t *)buf)[i] = (uint8_t)(index * 31 + i * 7);
	return QW_OK;
}

static const qw_st_entry roundtrip_entries[] = {
	{"b.weight", QW_DT_BF16, 2, {2, 3}},
	{"a.scale", QW_DT_F32, 1, {5}},
	{"c.ids", QW_DT_I64, 1, {1}},
	{"d.empty", QW_DT_F16, 2, {0, 4}},
};

static char *write_roundtrip(const char *dir)
{
	char *path = strdup(path_in(dir, "rt.safetensors"));
	qw_err err = {0};
	assert_int_equal(qw_st_write(path, roundtrip_entries, 4, fill_pattern, NULL, &err), QW_OK);
	return path;
}

static void test_roundtrip(void **state)
{
	(void)state;
	char *dir = scratch_new(), *path = write_roundtrip(dir);
	qw_st_file *f;
	qw_err err = {0};
	assert_int_equal(qw_st_open(path, &f, &err), QW_OK);
	assert_int_equal(f->n_tensors, 4);
	assert_int_equal(f->header_len % 8, 0);
	assert_string_equal(f->tensors[0].name, "a.scale");   /* sorted by name */
	for (size_t i = 0; i < 4; i++) {
		const qw_st_entry *e = &roundtrip_entries[i];
		const qw_tensor *t = qw_st_find(f, e->name);
		assert_non_null(t);
		assert_int_equal(t->dtype, e->dtype);
		assert_int_equal(t->ndim, e->ndim);
		for (int d = 0; d < e->ndim; d++)
			assert_int_equal(t->shape[d], e->shape[d]);
		assert_int_equal(t->nbytes, qw_st_entry_bytes(e));
		const uint8_t *data = t->data;
		for (uint64_t k = 0; k < t->nbytes; k++)
			assert_int_equal(data[k], (uint8_t)(i * 31 + k * 7));
	}
	assert_null(qw_st_find(f, "nope"));
	assert_int_equal(access(path_in(dir, "rt.safetensors.tmp"), F_OK), -1);
	qw_st_close(f);
	free(path);
	scratch_free(dir);
}

static void test_fixture(void **state)
{
	(void)state;
	qw_st_file *f;
	qw_err err = {0};
	assert_int_equal(qw_st_open(fixture("hf/tiny-moe/model/model.safetensors"), &f, &err), QW_OK);
	assert_int_equal(f->n_tensors, 122);
	const qw_tensor *t = qw_st_find(f, "model.language_model.layers.0.mlp.experts.gate_up_proj");
	assert_non_null(t);
	assert_int_equal(t->dtype, QW_DT_BF16);
	assert_int_equal(t->ndim, 3);
	assert_int_equal(t->shape[0], 8);
	assert_int_equal(t->shape[1], 128);
	assert_int_equal(t->shape[2], 96);
	qw_st_close(f);
}

static void test_truncated(void **state)
{
	(void)state;
	char *dir = scratch_new(), *path = write_roundtrip(dir);
	size_t len;
	char *data = read_file(path, &len);
	const char *cut = path_in(dir, "cut.safetensors");
	write_file(cut, data, len - 5);
	qw_st_file *f = NULL;
	qw_err err = {0};
	assert_int_equal(qw_st_open(cut, &f, &err), QW_E_ST_TRUNCATED);
	assert_null(f);
	assert_contains(err.msg, "truncated");
	assert_contains(err.msg, "5 bytes missing");
	assert_contains(err.msg, "cut.safetensors");

	write_file(cut, data, 3);                        /* not even the length field */
	assert_int_equal(qw_st_open(cut, &f, &err), QW_E_ST_TRUNCATED);
	write_file(cut, data, 0);
	assert_int_equal(qw_st_open(cut, &f, &err), QW_E_ST_TRUNCATED);
	write_file(cut, data, 40);                       /* cut inside the header */
	assert_int_equal(qw_st_open(cut, &f, &err), QW_E_ST_HEADER_LEN);
	free(data);
	free(path);
	scratch_free(dir);
}

static void test_header_not_json(void **state)
{
	(void)state;
	expect_parse("{\"a\": {\"dtype\": \"F32\", nope", 0, QW_E_ST_HEADER_JSON, "not valid JSON");
	expect_parse("[1, 2, 3]", 0, QW_E_ST_HEADER_JSON, "not an object");
	expect_parse("{\"a\": 1}", 0, QW_E_ST_HEADER_JSON, "'a'");
	expect_parse("{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
		     QW_E_ST_HEADER_JSON, "shape[0]");
	expect_parse("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4,
		     QW_E_ST_HEADER_JSON, "data_offsets");
	expect_parse("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
		     " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8,
		     QW_E_ST_HEADER_JSON, "duplicate");
	expect_parse("{\"__metadata__\": {\"format\": 1}}", 0, QW_E_ST_HEADER_JSON, "__metadata__");
}

static void test_header_length(void **state)
{
	(void)state;
	uint8_t buf[64] = {0};
	buf[0] = 0xe8;   /* 1000 */
	buf[1] = 0x03;
	qw_st_file *f;
	qw_err err = {0};
	assert_int_equal(qw_st_parse(buf, sizeof buf, "x", &f, &err), QW_E_ST_HEADER_LEN);
	assert_contains(err.msg, "header length 1000 runs past the end");
	memset(buf, 0, 8);
	buf[5] = 1;      /* 2^40 */
	assert_int_equal(qw_st_parse(buf, sizeof buf, "x", &f, &err), QW_E_ST_HEADER_LEN);
	assert_contains(err.msg, "limit");
}

static void test_offsets_past_end(void **state)
{
	(void)state;
	expect_parse("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
		     " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [100, 108]}}",
		     16, QW_E_ST_OFFSETS, "tensor 'b'");
}

static void test_overlap(void **state)
{
	(void)state;
	expect_parse("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
		     " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
		     12, QW_E_ST_OVERLAP, "'a' [0, 8) and 'b' [4, 12) overlap");
	/* empty tensors take no bytes and may sit anywhere */
	expect_parse("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
		     " \"e\": {\"dtype\": \"F32\", \"shape\": [0, 3], \"data_offsets\": [4, 4]}}",
		     8, QW_OK, "");
}

static void test_size_mismatch(void **state)
{
	(void)state;
	expect_parse("{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 8,
		     QW_E_ST_SIZE, "shape [3] x F32 is 12 bytes, but data_offsets [0, 8] span 8");
	expect_parse("{\"a\": {\"dtype\": \"BF16\", \"shape\": [4294967296, 4294967296, 16],"
		     " \"data_offsets\": [0, 8]}}", 8, QW_E_ST_SIZE, "overflows");
}

static void test_unknown_dtype(void **state)
{
	(void)state;
	expect_parse("{\"a\": {\"dtype\": \"Q4_K\", \"shape\": [2], \"data_offsets\": [0, 1]}}", 1,
		     QW_E_ST_DTYPE, "unknown dtype 'Q4_K'");
}

static void test_missing_file(void **state)
{
	(void)state;
	qw_st_file *f;
	qw_err err = {0};
	assert_int_equal(qw_st_open("/nonexistent/model.safetensors", &f, &err), QW_E_IO);
	assert_contains(err.msg, "/nonexistent/model.safetensors");
}

/* Random byte corruption of a valid image: every result is OK or a clean error, never a
 * crash or an out-of-bounds read (the sanitizer build checks the latter). */
static void test_corruption_never_crashes(void **state)
{
	(void)state;
	char *dir = scratch_new(), *path = write_roundtrip(dir);
	size_t len;
	uint8_t *good = (uint8_t *)read_file(path, &len);
	uint8_t *bad = malloc(len);
	uint64_t rng = 12345;
	int errors = 0;
	for (int iter = 0; iter < 3000; iter++) {
		memcpy(bad, good, len);
		int flips = 1 + iter % 4;
		for (int k = 0; k < flips; k++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			size_t at = (size_t)(rng >> 33) % len;
			bad[at] = (uint8_t)(rng >> 20);
		}
		size_t size = len - (size_t)(iter % 7);
		qw_st_file *f = NULL;
		qw_err err = {0};
		qw_status st = qw_st_parse(bad, size, "fuzz", &f, &err);
		if (st == QW_OK) {
			for (size_t i = 0; i < f->n_tensors; i++) {   /* touch every byte */
				const uint8_t *p = f->tensors[i].data;
				volatile uint8_t sum = 0;
				for (uint64_t b = 0; b < f->tensors[i].nbytes; b++)
					sum ^= p[b];
			}
			qw_st_close(f);
		} else {
			assert_null(f);
			assert_true(err.msg[0] != '\0');
			errors++;
		}
	}
	assert_true(errors > 100);
	free(good);
	free(bad);
	free(path);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_fixture),
		cmocka_unit_test(test_truncated),
		cmocka_unit_test(test_header_not_json),
		cmocka_unit_test(test_header_length),
		cmocka_unit_test(test_offsets_past_end),
		cmocka_unit_test(test_overlap),
		cmocka_unit_test(test_size_mismatch),
		cmocka_unit_test(test_unknown_dtype),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_corruption_never_crashes),
	};
	return cmocka_run_group_tests_name("safetensors", tests, NULL, NULL);
}
