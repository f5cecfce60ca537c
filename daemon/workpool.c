/* workpool.c - threads running jobs for the loop.  See workpool.h. */
#include "daemon/workpool.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static void push(qw_work **head, qw_work **tail, qw_work *w)
{
	w->next = NULL;
	if (*tail)
		(*tail)->next = w;
	else
		*head = w;
	*tail = w;
}

static qw_work *pop(qw_work **head, qw_work **tail)
{
	qw_work *w = *head;
	if (w) {
		*head = w->next;
		if (!*head)
			*tail = NULL;
		w->next = NULL;
	}
	return w;
}

static void *thread_main(void *arg)
{
	qw_work_pool *p = arg;
	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->stopping && !p->todo)
			pthread_cond_wait(&p->wake, &p->lock);
		if (p->stopping)
			break;
		qw_work *w = pop(&p->todo, &p->todo_tail);
		pthread_mutex_unlock(&p->lock);
		w->run(w);
		pthread_mutex_lock(&p->lock);
		push(&p->done, &p->done_tail, w);
		/* under the lock, so the descriptor is readable exactly while done is not empty */
		uint64_t one = 1;
		if (write(p->event_fd, &one, sizeof one) < 0) {
		}
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

qw_status qw_work_pool_init(qw_work_pool *p, int n_threads, qw_err *err)
{
	memset(p, 0, sizeof *p);
	p->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->event_fd < 0)
		return qw_fail(err, QW_E_IO, "eventfd: %s", strerror(errno));
	p->threads = calloc((size_t)n_threads, sizeof *p->threads);
	if (!p->threads) {
		close(p->event_fd);
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->wake, NULL);
	for (int i = 0; i < n_threads; i++) {
		int rc = pthread_create(&p->threads[i], NULL, thread_main, p);
		if (rc != 0) {
			(void)qw_work_pool_free(p);
			return qw_fail(err, QW_E_IO, "cannot start a thread for image decoding: %s",
				       strerror(rc));
		}
		p->n_threads = i + 1;
	}
	return QW_OK;
}

int qw_work_pool_fd(const qw_work_pool *p)
{
	return p->event_fd;
}

void qw_work_pool_submit(qw_work_pool *p, qw_work *w)
{
	pthread_mutex_lock(&p->lock);
	push(&p->todo, &p->todo_tail, w);
	pthread_cond_signal(&p->wake);
	pthread_mutex_unlock(&p->lock);
}

qw_work *qw_work_pool_take(qw_work_pool *p)
{
	pthread_mutex_lock(&p->lock);
	qw_work *w = pop(&p->done, &p->done_tail);
	if (!p->done) {
		uint64_t count;
		if (read(p->event_fd, &count, sizeof count) < 0) {   /* EAGAIN: already clear */
		}
	}
	pthread_mutex_unlock(&p->lock);
	return w;
}

qw_work *qw_work_pool_free(qw_work_pool *p)
{
	if (!p->threads)
		return NULL;
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < p->n_threads; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	p->threads = NULL;
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->wake);
	close(p->event_fd);
	p->event_fd = -1;
	if (p->done_tail)
		p->done_tail->next = p->todo;
	qw_work *left = p->done ? p->done : p->todo;
	p->done = p->done_tail = p->todo = p->todo_tail = NULL;
	return left;
}
