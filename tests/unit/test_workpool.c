/* test_workpool.c - the daemon's pool of threads: jobs run off the calling thread, several
 * at once, each comes back exactly once through a descriptor that is readable exactly
 * while one waits, and stopping gives back every job, run or not. */
#include "tests/unit/helpers.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "daemon/workpool.h"

static atomic_int running_now, most_at_once;

typedef struct job {
	qw_work work;
	int index;
	pthread_t ran_on;
	bool ran;
	int sleep_ms;
} job;

static void run(qw_work *w)
{
	job *j = (job *)w;
	int now = atomic_fetch_add(&running_now, 1) + 1;
	int most = atomic_load(&most_at_once);
	while (now > most && !atomic_compare_exchange_weak(&most_at_once, &most, now)) {
	}
	usleep((useconds_t)j->sleep_ms * 1000);
	j->ran_on = pthread_self();
	j->ran = true;
	atomic_fetch_sub(&running_now, 1);
}

static bool readable(int fd, int timeout_ms)
{
	struct pollfd p = {fd, POLLIN, 0};
	return poll(&p, 1, timeout_ms) == 1;
}

static void test_jobs_come_back(void **state)
{
	qw_work_pool pool;
	qw_err err = {0};
	assert_int_equal(qw_work_pool_init(&pool, 3, &err), QW_OK);
	int fd = qw_work_pool_fd(&pool);
	assert_false(readable(fd, 0));
	assert_null(qw_work_pool_take(&pool));
	enum { N = 30 };
	job jobs[N];
	for (int i = 0; i < N; i++) {
		jobs[i] = (job){.work.run = run, .index = i, .sleep_ms = 10};
		qw_work_pool_submit(&pool, &jobs[i].work);
	}
	int taken[N] = {0}, n = 0;
	while (n < N) {
		if (!readable(fd, 5000))
			fail_msg("%d of %d jobs came back, then nothing for 5 s", n, N);
		job *j;
		while ((j = (job *)qw_work_pool_take(&pool))) {
			assert_true(j->ran);
			assert_false(pthread_equal(j->ran_on, pthread_self()));
			taken[j->index]++;
			n++;
		}
		/* all taken: the descriptor is quiet until the next one is done */
		if (n < N && readable(fd, 0)) {
			j = (job *)qw_work_pool_take(&pool);
			assert_non_null(j);   /* readable means one waits */
			taken[j->index]++;
			n++;
		}
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(taken[i], 1);
	assert_false(readable(fd, 0));
	assert_true(atomic_load(&most_at_once) > 1);   /* three threads, ten-millisecond jobs */
	assert_null(qw_work_pool_free(&pool));
}

/* Stopping while jobs wait: the one being run finishes, the rest are not run, and every
 * one of them is handed back. */
static void test_stop_gives_back(void **state)
{
	qw_work_pool pool;
	qw_err err = {0};
	assert_int_equal(qw_work_pool_init(&pool, 1, &err), QW_OK);
	enum { N = 10 };
	job jobs[N];
	for (int i = 0; i < N; i++) {
		jobs[i] = (job){.work.run = run, .index = i, .sleep_ms = 50};
		qw_work_pool_submit(&pool, &jobs[i].work);
	}
	usleep(20000);   /* the first is running */
	int seen[N] = {0}, ran = 0;
	for (qw_work *w = qw_work_pool_free(&pool); w; w = w->next) {
		job *j = (job *)w;
		seen[j->index]++;
		ran += j->ran;
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(seen[i], 1);
	assert_true(ran >= 1 && ran < N);
	assert_true(jobs[0].ran);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_jobs_come_back),
		cmocka_unit_test(test_stop_gives_back),
	};
	return cmocka_run_group_tests_name("workpool", tests, NULL, NULL);
}
