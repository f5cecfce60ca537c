/* shm_channel.c - a single-producer, single-consumer byte ring in shared memory.
 * See channel.h.  The producer advances `head` after writing, the consumer `tail` after
 * reading; both are C11 atomics in the shared mapping (lock-free on this platform), so the
 * two processes need no lock.  Waiting spins briefly, then yields. */
#include "ipc/channel.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct ring {
	_Alignas(64) _Atomic uint64_t head;   /* bytes written, ever */
	_Alignas(64) _Atomic uint64_t tail;   /* bytes read, ever */
	_Alignas(64) uint64_t size;           /* power of two */
	uint8_t data[];
} ring;

typedef struct shm_impl {
	ring *r;
	size_t map_bytes;
	int fd;
} shm_impl;

static void wait_a_little(unsigned *spins)
{
	if (++*spins > 1000)
		sched_yield();
}

static qw_status shm_send(qw_channel *c, const void *buf, size_t n, qw_err *err)
{
	ring *r = ((shm_impl *)c->impl)->r;
	const uint8_t *p = buf;
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	while (n > 0) {
		unsigned spins = 0;
		uint64_t tail;
		while (head - (tail = atomic_load_explicit(&r->tail, memory_order_acquire)) == r->size)
			wait_a_little(&spins);
		uint64_t room = r->size - (head - tail), at = head & (r->size - 1);
		size_t k = n < room ? n : (size_t)room;
		if (k > r->size - at)
			k = (size_t)(r->size - at);                  /* up to the wrap */
		memcpy(r->data + at, p, k);
		head += k;
		atomic_store_explicit(&r->head, head, memory_order_release);
		p += k;
		n -= k;
	}
	return QW_OK;
}

static qw_status shm_recv(qw_channel *c, void *buf, size_t n, qw_err *err)
{
	ring *r = ((shm_impl *)c->impl)->r;
	uint8_t *p = buf;
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	while (n > 0) {
		unsigned spins = 0;
		uint64_t head;
		while ((head = atomic_load_explicit(&r->head, memory_order_acquire)) == tail)
			wait_a_little(&spins);
		uint64_t avail = head - tail, at = tail & (r->size - 1);
		size_t k = n < avail ? n : (size_t)avail;
		if (k > r->size - at)
			k = (size_t)(r->size - at);
		memcpy(p, r->data + at, k);
		tail += k;
		atomic_store_explicit(&r->tail, tail, memory_order_release);
		p += k;
		n -= k;
	}
	return QW_OK;
}

static void shm_close(qw_channel *c)
{
	shm_impl *s = c->impl;
	if (!s)
		return;
	munmap(s->r, s->map_bytes);
	close(s->fd);
	free(s);
	c->impl = NULL;
}

qw_status qw_shm_channel_create(size_t bytes, qw_channel *out, qw_err *err)
{
	size_t size = 4096;
	while (size < bytes)
		size <<= 1;
	shm_impl *s = calloc(1, sizeof *s);
	if (!s)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	s->map_bytes = sizeof(ring) + size;
	s->fd = memfd_create("qwen-vl-ring", MFD_CLOEXEC);
	if (s->fd < 0 || ftruncate(s->fd, (off_t)s->map_bytes) != 0) {
		int e = errno;
		if (s->fd >= 0)
			close(s->fd);
		free(s);
		return qw_fail(err, QW_E_IO, "shared-memory ring of %zu bytes: %s", size, strerror(e));
	}
	s->r = mmap(NULL, s->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	if (s->r == MAP_FAILED) {
		int e = errno;
		close(s->fd);
		free(s);
		return qw_fail(err, QW_E_IO, "cannot map the shared-memory ring: %s", strerror(e));
	}
	atomic_init(&s->r->head, 0);
	atomic_init(&s->r->tail, 0);
	s->r->size = size;
	*out = (qw_channel){.kind = "shm", .send = shm_send, .recv = shm_recv, .close = shm_close,
			    .impl = s};
	snprintf(out->link, sizeof out->link, "shared memory (memfd ring of %zu KiB)", size >> 10);
	return QW_OK;
}
