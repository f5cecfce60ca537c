/* test_clock.c - the one monotonic clock: its units agree, it only moves forward, it counts
 * real time (a sleep), it is not the wall clock, and every process reads the same clock (a
 * heartbeat written by a worker is compared with the daemon's reading). */
#include "tests/unit/helpers.h"

#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include "loader/clock.h"

static void test_units_agree(void **state)
{
	for (int i = 0; i < 1000; i++) {
		uint64_t ns0 = qw_now_ns();
		uint64_t ms = qw_now_ms();
		double millis = qw_millis_now(), s = qw_seconds_now();
		uint64_t ns1 = qw_now_ns();
		assert_true(ms >= ns0 / 1000000 && ms <= ns1 / 1000000);
		assert_true(millis >= (double)ns0 / 1e6 - 1e-3 && millis <= (double)ns1 / 1e6 + 1e-3);
		assert_true(s >= (double)ns0 / 1e9 - 1e-6 && s <= (double)ns1 / 1e9 + 1e-6);
	}
}

static void test_forward_and_real(void **state)
{
	uint64_t last = qw_now_ns();
	for (int i = 0; i < 100000; i++) {
		uint64_t t = qw_now_ns();
		assert_true(t >= last);
		last = t;
	}
	uint64_t t0 = qw_now_ns();
	struct timespec nap = {0, 30 * 1000000};
	while (nanosleep(&nap, &nap) != 0)
		;
	uint64_t slept = qw_now_ns() - t0;
	assert_true(slept >= 30 * 1000000ull);
	assert_true(slept < 5 * 1000000000ull);
	/* counted from boot, not from 1970 (a wall clock would be ~1.7e18 ns) */
	assert_true(qw_now_ns() < (uint64_t)time(NULL) / 2 * 1000000000ull);
}

static void test_same_in_every_process(void **state)
{
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	uint64_t before = qw_now_ns();
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		uint64_t t = qw_now_ns();
		_exit(write(fds[1], &t, sizeof t) == sizeof t ? 0 : 1);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	uint64_t after = qw_now_ns(), child = 0;
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(read(fds[0], &child, sizeof child), sizeof child);
	close(fds[0]);
	close(fds[1]);
	assert_true(child >= before && child <= after);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_units_agree),
		cmocka_unit_test(test_forward_and_real),
		cmocka_unit_test(test_same_in_every_process),
	};
	return cmocka_run_group_tests_name("clock", tests, NULL, NULL);
}
