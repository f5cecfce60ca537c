/* test_ring.c - the shared-memory SPSC ring between two processes: messages and streams
 * arrive intact across wrap-around, waits time out, abort wakes a sleeper, and a waiting
 * side sleeps instead of spinning. */
#include "tests/unit/helpers.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ipc/ring.h"
#include "loader/clock.h"

static qw_ring *shared_ring(size_t capacity, size_t *bytes)
{
	*bytes = qw_ring_footprint(capacity);
	void *mem = mmap(NULL, *bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(mem != MAP_FAILED);
	return qw_ring_init(mem, capacity);
}

static uint8_t pattern(uint64_t msg, size_t i)
{
	return (uint8_t)((msg * 2654435761u) ^ (i * 31u) ^ (i >> 7));
}

/* Sizes cycle through small, odd and ring-sized records so the ring wraps in every way. */
static size_t message_size(int i, size_t max)
{
	static const size_t sizes[] = {0, 1, 7, 8, 9, 100, 1000, 3001, 4088};
	size_t s = sizes[i % 9] + (size_t)(i / 9) % 13;
	return s > max ? max : s;
}

static void test_messages_across_processes(void **state)
{
	size_t bytes;
	qw_ring *r = shared_ring(4096, &bytes);
	const int n = 3000;
	pid_t child = fork();
	if (child == 0) {
		void *buf = NULL;
		size_t cap = 0, len;
		int bad = 0;
		for (int i = 0; i < n; i++) {
			if (qw_ring_recv(r, &buf, &cap, &len, 5000, NULL) != QW_OK) {
				bad = 100;
				break;
			}
			size_t want = message_size(i, QW_RING_MAX_MESSAGE(4096));
			if (len != want)
				bad |= 1;
			for (size_t k = 0; k < len; k++)
				bad |= ((uint8_t *)buf)[k] != pattern((uint64_t)i, k) ? 2 : 0;
		}
		_exit(bad);
	}
	uint8_t *msg = malloc(4096);
	qw_err err = {0};
	for (int i = 0; i < n; i++) {
		size_t len = message_size(i, QW_RING_MAX_MESSAGE(4096));
		for (size_t k = 0; k < len; k++)
			msg[k] = pattern((uint64_t)i, k);
		/* two parts, to check they are joined */
		const void *parts[] = {msg, msg + len / 3};
		size_t lens[] = {len / 3, len - len / 3};
		if (qw_ring_send(r, parts, lens, 2, 5000, &err) != QW_OK)
			fail_msg("send %d: %s", i, err.msg);
	}
	int status;
	waitpid(child, &status, 0);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	free(msg);

	/* too large for the ring at all */
	uint8_t big[8192] = {0};
	const void *p[] = {big};
	size_t l[] = {sizeof big};
	assert_int_equal(qw_ring_send(r, p, l, 1, 0, &err), QW_E_ARG);
	assert_false(qw_ring_has_room(r, sizeof big));
	munmap(r, bytes);
}

static void test_streams_larger_than_the_ring(void **state)
{
	size_t bytes;
	qw_ring *r = shared_ring(4096, &bytes);
	const size_t total = 1 << 20;
	pid_t child = fork();
	if (child == 0) {
		uint8_t *in = malloc(total);
		int bad = qw_ring_read(r, in, total / 2, 5000, NULL) != QW_OK;
		bad |= qw_ring_read(r, in + total / 2, total - total / 2, 5000, NULL) != QW_OK;
		for (size_t k = 0; k < total && !bad; k++)
			bad = in[k] != pattern(7, k);
		_exit(bad);
	}
	uint8_t *out = malloc(total);
	for (size_t k = 0; k < total; k++)
		out[k] = pattern(7, k);
	/* written in uneven pieces, read in halves */
	size_t at = 0, piece = 1;
	while (at < total) {
		size_t k = piece < total - at ? piece : total - at;
		assert_int_equal(qw_ring_write(r, out + at, k, 5000, NULL), QW_OK);
		at += k;
		piece = piece * 3 + 1;
	}
	int status;
	waitpid(child, &status, 0);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	free(out);
	munmap(r, bytes);
}

static void test_timeout_and_abort(void **state)
{
	size_t bytes;
	qw_ring *r = shared_ring(4096, &bytes);
	void *buf = NULL;
	size_t cap = 0, len;
	qw_err err = {0};
	double t0 = qw_seconds_now();
	assert_int_equal(qw_ring_recv(r, &buf, &cap, &len, 60, &err), QW_E_TIMEOUT);
	double waited = qw_seconds_now() - t0;
	assert_true(waited >= 0.055 && waited < 2.0);
	assert_int_equal(qw_ring_recv(r, &buf, &cap, &len, 0, &err), QW_E_TIMEOUT);

	/* a reader asleep for ever in another process wakes when the ring is aborted */
	pid_t child = fork();
	if (child == 0) {
		void *b = NULL;
		size_t c = 0, n;
		_exit(qw_ring_recv(r, &b, &c, &n, -1, NULL) == QW_E_ABORTED ? 0 : 1);
	}
	usleep(100 * 1000);
	qw_ring_abort(r);
	int status;
	waitpid(child, &status, 0);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	const void *p[] = {"x"};
	size_t l[] = {1};
	assert_int_equal(qw_ring_send(r, p, l, 1, 0, &err), QW_E_ABORTED);
	free(buf);
	munmap(r, bytes);
}

/* Reset (a pipeline's next generation): an aborted ring holding half a stream and a message
 * comes back empty, unaborted and of its size, and carries messages again. */
static void test_reset(void **state)
{
	size_t bytes;
	qw_ring *r = shared_ring(4096, &bytes);
	uint64_t size = r->size;
	const void *p[] = {"stale"};
	size_t l[] = {5};
	assert_int_equal(qw_ring_send(r, p, l, 1, 0, NULL), QW_OK);
	assert_int_equal(qw_ring_write(r, "half", 4, 0, NULL), QW_OK);
	qw_ring_abort(r);
	qw_ring_reset(r);
	assert_int_equal(r->size, size);
	assert_false(qw_ring_readable(r));
	void *buf = NULL;
	size_t cap = 0, len;
	assert_int_equal(qw_ring_recv(r, &buf, &cap, &len, 0, NULL), QW_E_TIMEOUT);
	assert_true(qw_ring_has_room(r, size - 8));
	const void *q[] = {"fresh"};
	assert_int_equal(qw_ring_send(r, q, l, 1, 0, NULL), QW_OK);
	assert_int_equal(qw_ring_recv(r, &buf, &cap, &len, 0, NULL), QW_OK);
	assert_int_equal(len, 5);
	assert_memory_equal(buf, "fresh", 5);
	free(buf);
	munmap(r, bytes);
}

/* A consumer left waiting must sleep: its CPU time stays far below the time it waited. */
static void test_waiting_sleeps(void **state)
{
	size_t bytes;
	qw_ring *r = shared_ring(4096, &bytes);
	pid_t child = fork();
	if (child == 0) {
		void *b = NULL;
		size_t c = 0, n;
		_exit(qw_ring_recv(r, &b, &c, &n, -1, NULL) == QW_OK && n == 2 ? 0 : 1);
	}
	usleep(400 * 1000);
	const void *p[] = {"hi"};
	size_t l[] = {2};
	assert_int_equal(qw_ring_send(r, p, l, 1, 1000, NULL), QW_OK);
	int status;
	struct rusage ru;
	assert_int_equal(wait4(child, &status, 0, &ru), child);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
		     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
	if (cpu > 0.1)
		fail_msg("a consumer waiting 0.4 s used %.3f s of CPU", cpu);
	munmap(r, bytes);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_messages_across_processes),
		cmocka_unit_test(test_streams_larger_than_the_ring),
		cmocka_unit_test(test_timeout_and_abort),
		cmocka_unit_test(test_reset),
		cmocka_unit_test(test_waiting_sleeps),
	};
	return cmocka_run_group_tests_name("ring", tests, NULL, NULL);
}
