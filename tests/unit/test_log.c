/* test_log.c - the logger's line format, level filter and signal-safe variant. */
#include "tests/unit/helpers.h"

#include <fcntl.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/log.h"

static void test_lines(void **state)
{
	char *dir = scratch_new();
	int fd = open(path_in(dir, "log"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	qw_log_init("worker 2", QW_LOG_INFO, fd);
	qw_log(QW_LOG_DEBUG, "not written %d", 1);
	qw_log(QW_LOG_INFO, "weights resident: %d GB", 118);
	qw_log(QW_LOG_ERROR, "worker %d died", 3);
	qw_log_signal_safe("SIGTERM: shutting down");
	qw_log_set_level(QW_LOG_DEBUG);
	assert_true(qw_log_enabled(QW_LOG_DEBUG));
	qw_log(QW_LOG_DEBUG, "now it is");
	close(fd);
	char *text = read_file(path_in(dir, "log"), NULL);
	regex_t re;
	assert_int_equal(regcomp(&re, "^[0-9]+:worker 2 [0-9]{4}-[0-9]{2}-[0-9]{2} "
				      "[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3} I weights resident: 118 GB\n"
				      "[0-9]+:worker 2 [^\n]* E worker 3 died\n"
				      "[0-9]+:worker 2 SIGTERM: shutting down\n"
				      "[0-9]+:worker 2 [^\n]* D now it is\n$", REG_EXTENDED), 0);
	if (regexec(&re, text, 0, NULL, 0) != 0)
		fail_msg("unexpected log:\n%s", text);
	regfree(&re);
	free(text);
	qw_log_level l;
	qw_err err = {0};
	assert_int_equal(qw_log_level_parse("warn", &l, &err), QW_OK);
	assert_int_equal(l, QW_LOG_WARN);
	assert_int_equal(qw_log_level_parse("loud", &l, &err), QW_E_ARG);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines),
	};
	return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
