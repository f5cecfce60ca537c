/* workpool.h - a few threads that run jobs off the daemon's loop and hand them back to it.
 *
 * Owns: the threads, the queue of jobs waiting to run (first in, first out), the queue of
 * jobs done, and an eventfd that is readable while a done job waits to be taken, for the
 * loop to poll beside its sockets.  A job is the caller's struct with a qw_work as its first
 * member: the pool runs it and hands it back, and never frees one.  run() is called on a
 * pool thread and may touch only its own job; everything else stays the loop's.
 */
#ifndef QW_DAEMON_WORKPOOL_H
#define QW_DAEMON_WORKPOOL_H

#include <pthread.h>
#include <stdbool.h>

#include "loader/error.h"

typedef struct qw_work qw_work;
struct qw_work {
	void (*run)(qw_work *w);     /* on a pool thread */
	qw_work *next;               /* the pool's, while the job is in it */
};

typedef struct qw_work_pool {
	pthread_t *threads;          /* (n_threads,) */
	int n_threads;
	pthread_mutex_t lock;        /* guards the queues and stopping */
	pthread_cond_t wake;         /* a job to run, or stopping */
	qw_work *todo, *todo_tail;   /* waiting to run */
	qw_work *done, *done_tail;   /* run, not yet taken */
	int event_fd;                /* readable while done is not empty */
	bool stopping;
} qw_work_pool;

/* Starts n_threads threads (with the signal mask of the caller). */
qw_status qw_work_pool_init(qw_work_pool *p, int n_threads, qw_err *err);

/* The descriptor to poll for done jobs. */
int qw_work_pool_fd(const qw_work_pool *p);

/* Queues w; it comes back through qw_work_pool_take once run. */
void qw_work_pool_submit(qw_work_pool *p, qw_work *w);

/* A job that has run, oldest first, or NULL when none waits. */
qw_work *qw_work_pool_take(qw_work_pool *p);

/* Stops the threads once they finish the jobs they are running and joins them; jobs still
 * waiting are not run.  Returns every job left in the pool, run or not, linked through
 * next, for the caller to free. */
qw_work *qw_work_pool_free(qw_work_pool *p);

#endif
