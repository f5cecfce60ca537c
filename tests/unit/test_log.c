/* test_log.c - the logger's line format, level filter and signal-safe variant, messages of
 * several lines, and the journal's form when JOURNAL_STREAM names the descriptor. */
#include "tests/unit/helpers.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
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
	qw_log(QW_LOG_ERROR, "cannot open x\nHINT: make it");
	close(fd);
	char *text = read_file(path_in(dir, "log"), NULL);
	regex_t re;
	assert_int_equal(regcomp(&re, "^[0-9]+:worker 2 [0-9]{4}-[0-9]{2}-[0-9]{2} "
				      "[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3} I weights resident: 118 GB\n"
				      "[0-9]+:worker 2 [^\n]* E worker 3 died\n"
				      "[0-9]+:worker 2 SIGTERM: shutting down\n"
				      "[0-9]+:worker 2 [^\n]* D now it is\n"
				      "[0-9]+:worker 2 [^\n]* E cannot open x\n"
				      "[0-9]+:worker 2 [^\n]* E HINT: make it\n$", REG_EXTENDED), 0);
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

/* The journal's stream: a syslog priority on every line (a HINT keeps its error's), no
 * timestamp; a descriptor that is not the stream JOURNAL_STREAM names gets plain lines. */
static void test_journal(void **state)
{
	char *dir = scratch_new();
	int fd = open(path_in(dir, "journal"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	int other = open(path_in(dir, "other"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0 && other >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	char js[64];
	snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	setenv("JOURNAL_STREAM", js, 1);
	qw_log_init("daemon", QW_LOG_DEBUG, fd);
	qw_log(QW_LOG_DEBUG, "a step");
	qw_log(QW_LOG_INFO, "ready");
	qw_log(QW_LOG_WARN, "slow");
	qw_log(QW_LOG_ERROR, "cannot bind\nHINT: another qwend runs");
	qw_log_signal_safe("SIGTERM");
	qw_log_init("daemon", QW_LOG_DEBUG, other);
	qw_log(QW_LOG_ERROR, "plain");
	unsetenv("JOURNAL_STREAM");
	close(fd);
	close(other);
	char *text = read_file(path_in(dir, "journal"), NULL);
	char want[512];
	int pid = (int)getpid();
	snprintf(want, sizeof want, "<7>%d:daemon D a step\n<6>%d:daemon I ready\n"
		 "<4>%d:daemon W slow\n<3>%d:daemon E cannot bind\n"
		 "<3>%d:daemon E HINT: another qwend runs\n<6>%d:daemon SIGTERM\n", pid, pid,
		 pid, pid, pid, pid);
	assert_string_equal(text, want);
	free(text);
	text = read_file(path_in(dir, "other"), NULL);
	regex_t re;
	assert_int_equal(regcomp(&re, "^[0-9]+:daemon [0-9]{4}-[^\n]* E plain\n$", REG_EXTENDED), 0);
	if (regexec(&re, text, 0, NULL, 0) != 0)
		fail_msg("not a plain line:\n%s", text);
	regfree(&re);
	free(text);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines),
		cmocka_unit_test(test_journal),
	};
	return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
