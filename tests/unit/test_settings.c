/* test_settings.c - qwend's settings table: defaults, overrides with bounds and choices,
 * config files with errors naming the line, and the shipped qwend.conf documenting every
 * setting at its default. */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/settings.h"

static void test_defaults_and_overrides(void **state)
{
	qw_settings s;
	qw_settings_defaults(&s);
	assert_string_equal(s.model, "");       /* none: qwend refuses to start without one */
	assert_string_equal(s.device, "auto");
	assert_int_equal(s.max_request_bytes, 64ll << 20);
	assert_true(s.kv_memory == 0.9);
	qw_err err = {0};
	assert_int_equal(qw_settings_set(&s, "kv-blocks", "512", NULL, &err), QW_OK);
	assert_int_equal(s.kv_blocks, 512);
	assert_int_equal(qw_settings_set(&s, "max-image-bytes", "2G", NULL, &err), QW_OK);
	assert_int_equal(s.max_image_bytes, 2ll << 30);
	/* from the command line (where NULL), the flag is named once */
	assert_int_equal(qw_settings_set(&s, "device", "tpu", NULL, &err), QW_E_ARG);
	assert_string_equal(err.msg, "--device: \"tpu\" is not one of auto|cpu|cuda");
	assert_int_equal(qw_settings_set(&s, "temperature", "-1", NULL, &err), QW_E_ARG);
	assert_string_equal(err.msg, "--temperature: -1 is outside [0, 100]");
	assert_int_equal(qw_settings_set(&s, "stages", "0", NULL, &err), QW_E_ARG);
	assert_contains(err.msg, "outside [1, 64]");
	assert_int_equal(qw_settings_set(&s, "stages", "2.5", NULL, &err), QW_E_ARG);
	assert_contains(err.msg, "not an integer");
	assert_int_equal(qw_settings_set(&s, "kv-memory", "1.5", NULL, &err), QW_E_ARG);
	assert_int_equal(qw_settings_set(&s, "kv-memry", "0.5", NULL, &err), QW_E_ARG);
	assert_string_equal(err.msg, "unknown setting --kv-memry");
	char *json = qw_settings_json(&s, false);
	assert_contains(json, "\"kv-blocks\": 512");
	assert_contains(json, "\"max-image-bytes\": 2147483648");
	free(json);
	/* as a config file writes them: sizes with their suffix, empty strings quoted */
	json = qw_settings_json(&s, true);
	assert_contains(json, "\"kv-blocks\": \"512\"");
	assert_contains(json, "\"max-image-bytes\": \"2G\"");
	assert_contains(json, "\"max-request-bytes\": \"64M\"");
	assert_contains(json, "\"kv-memory\": \"0.9\"");
	assert_contains(json, "\"tokenizer\": \"\\\"\\\"\"");
	free(json);
}

/* Every setting's text form, written into a config file, reads back as the same value. */
static void test_text_round_trip(void **state)
{
	char *dir = scratch_new();
	qw_settings s;
	qw_settings_defaults(&s);
	qw_err err = {0};
	assert_int_equal(qw_settings_set(&s, "max-image-bytes", "1536K", NULL, &err), QW_OK);
	assert_int_equal(qw_settings_set(&s, "image-arena", "3000000", NULL, &err), QW_OK);
	assert_int_equal(qw_settings_set(&s, "kv-memory", "0.123456789", NULL, &err), QW_OK);
	assert_int_equal(qw_settings_set(&s, "socket", "/tmp/q.sock", NULL, &err), QW_OK);
	int n;
	const qw_setting_def *t = qw_settings_table(&n);
	char conf[16384] = "", text[1100];
	for (int i = 0; i < n; i++)
		snprintf(conf + strlen(conf), sizeof conf - strlen(conf), "%s %s\n", t[i].name,
			 qw_settings_text(&s, &t[i], text, sizeof text));
	assert_contains(conf, "\nmax-image-bytes 1536K\n");
	assert_contains(conf, "\nimage-arena 3000000\n");
	write_file(path_in(dir, "round.conf"), conf, strlen(conf));
	qw_settings back;
	memset(&back, 0, sizeof back);
	if (qw_settings_load(&back, path_in(dir, "round.conf"), &err) != QW_OK)
		fail_msg("%s", err.msg);
	char *a = qw_settings_json(&s, false), *b = qw_settings_json(&back, false);
	assert_string_equal(a, b);
	free(a);
	free(b);
	scratch_free(dir);
}

static void test_file(void **state)
{
	char *dir = scratch_new();
	const char *good = "# a comment\n\nkv-blocks 64   # trailing comment\nsocket \"\"\n"
			   "model   /srv/models/qwen  \nlog-level debug\n";
	write_file(path_in(dir, "a.conf"), good, strlen(good));
	qw_settings s;
	qw_settings_defaults(&s);
	qw_err err = {0};
	assert_int_equal(qw_settings_load(&s, path_in(dir, "a.conf"), &err), QW_OK);
	assert_int_equal(s.kv_blocks, 64);
	assert_string_equal(s.model, "/srv/models/qwen");
	assert_string_equal(s.socket, "");
	assert_string_equal(s.log_level, "debug");
	const char *bad = "kv-blocks 64\nmax-queue lots\n";
	write_file(path_in(dir, "b.conf"), bad, strlen(bad));
	assert_int_equal(qw_settings_load(&s, path_in(dir, "b.conf"), &err), QW_E_ARG);
	assert_contains(err.msg, "b.conf:2: max-queue: \"lots\" is not an integer");
	assert_int_equal(qw_settings_load(&s, path_in(dir, "none.conf"), &err), QW_E_IO);
	scratch_free(dir);
}

/* The shipped file names every setting, each at its default, each with a comment above. */
static void test_shipped_conf(void **state)
{
	char path[4096];
	snprintf(path, sizeof path, "%s", fixture("../../systemd/qwend.conf"));
	qw_settings fromfile, def;
	qw_settings_defaults(&def);
	memset(&fromfile, 0, sizeof fromfile);
	qw_err err = {0};
	if (qw_settings_load(&fromfile, path, &err) != QW_OK)
		fail_msg("%s", err.msg);
	char *a = qw_settings_json(&fromfile, false), *b = qw_settings_json(&def, false);
	assert_string_equal(a, b);
	free(a);
	free(b);
	char *text = read_file(path, NULL);
	int n;
	const qw_setting_def *t = qw_settings_table(&n);
	for (int i = 0; i < n; i++) {
		char needle[128];
		snprintf(needle, sizeof needle, "\n%s ", t[i].name);
		assert_contains(text, needle);
	}
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_and_overrides),
		cmocka_unit_test(test_text_round_trip),
		cmocka_unit_test(test_file),
		cmocka_unit_test(test_shipped_conf),
	};
	return cmocka_run_group_tests_name("settings", tests, NULL, NULL);
}
