/* shm_channel.c - a channel over a shared-memory ring (ring.h): either in a memfd of its own
 * (qw_shm_channel_create) or in memory the caller maps (qw_ring_channel).  See channel.h. */
#include "ipc/channel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ipc/ring.h"

typedef struct shm_impl {
	qw_ring *r;
	size_t map_bytes;   /* 0: the ring is the caller's */
	int fd;
} shm_impl;

static qw_status shm_send(qw_channel *c, const void *buf, size_t n, qw_err *err)
{
	return qw_ring_write(((shm_impl *)c->impl)->r, buf, n, -1, err);
}

static qw_status shm_recv(qw_channel *c, void *buf, size_t n, qw_err *err)
{
	return qw_ring_read(((shm_impl *)c->impl)->r, buf, n, -1, err);
}

static void shm_close(qw_channel *c)
{
	shm_impl *s = c->impl;
	if (!s)
		return;
	if (s->map_bytes) {
		munmap(s->r, s->map_bytes);
		close(s->fd);
	}
	free(s);
	c->impl = NULL;
}

static qw_status wrap(qw_ring *r, size_t map_bytes, int fd, qw_channel *out, qw_err *err)
{
	shm_impl *s = calloc(1, sizeof *s);
	if (!s)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	*s = (shm_impl){r, map_bytes, fd};
	*out = (qw_channel){.kind = "shm", .send = shm_send, .recv = shm_recv, .close = shm_close,
			    .impl = s};
	snprintf(out->link, sizeof out->link, "shared memory (ring of %llu KiB)",
		 (unsigned long long)(r->size >> 10));
	return QW_OK;
}

qw_status qw_shm_channel_create(size_t bytes, qw_channel *out, qw_err *err)
{
	size_t map_bytes = qw_ring_footprint(bytes);
	int fd = memfd_create("qwen-vl-ring", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)map_bytes) != 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return qw_fail(err, QW_E_IO, "shared-memory ring of %zu bytes: %s", map_bytes,
			       strerror(e));
	}
	void *mem = mmap(NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED) {
		int e = errno;
		close(fd);
		return qw_fail(err, QW_E_IO, "cannot map the shared-memory ring: %s", strerror(e));
	}
	qw_status st = wrap(qw_ring_init(mem, bytes), map_bytes, fd, out, err);
	if (st != QW_OK) {
		munmap(mem, map_bytes);
		close(fd);
	}
	return st;
}

qw_status qw_ring_channel(qw_ring *r, qw_channel *out, qw_err *err)
{
	return wrap(r, 0, -1, out, err);
}
