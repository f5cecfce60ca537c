/* region.c - creating, mapping and laying out the daemon's shared-memory region.
 * See region.h. */
#include "ipc/region.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define REGION_MAGIC 0x314e4745525751ull   /* "QWREGN1" */

const char *qw_worker_state_name(qw_worker_state s)
{
	static const char *const names[] = {"starting", "loading", "loaded", "ready", "failed",
					    "stopped", "rejoining"};
	return s <= QW_WORKER_REJOINING ? names[s] : "unknown";
}

static size_t align64(size_t n)
{
	return (n + 63) & ~(size_t)63;
}

qw_status qw_region_create(const qw_region_job *job, const qw_region_sizes *sizes, qw_region *out,
			   qw_err *err)
{
	memset(out, 0, sizeof *out);
	out->fd = -1;
	int S = job->n_stages;
	if (S < 1 || S > QW_MAX_STAGES)
		return qw_fail(err, QW_E_ARG, "a region for %d stages (1 to %d)", S, QW_MAX_STAGES);
	/* lay out: header, plan rings, result ring, hand-over rings, arena */
	size_t at = align64(sizeof(qw_region_header));
	uint64_t plan[QW_MAX_STAGES], handover[QW_MAX_STAGES] = {0}, result, arena;
	for (int i = 0; i < S; i++) {
		plan[i] = at;
		at += align64(qw_ring_footprint(sizes->plan_ring));
	}
	result = at;
	at += align64(qw_ring_footprint(sizes->result_ring));
	for (int i = 0; i + 1 < S; i++) {
		handover[i] = at;
		at += align64(qw_ring_footprint(sizes->handover_ring));
	}
	arena = at;
	at += align64(sizes->arena);
	size_t bytes = (at + 4095) & ~(size_t)4095;

	/* a memfd is sparse: only the pages a ring or the arena touches take memory */
	int fd = memfd_create("qwend-region", 0);
	if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return qw_fail(err, QW_E_IO, "cannot create the %zu-byte shared-memory region: %s",
			       bytes, strerror(e));
	}
	void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED) {
		int e = errno;
		close(fd);
		return qw_fail(err, QW_E_IO, "cannot map the shared-memory region: %s", strerror(e));
	}
	qw_region_header *h = mem;
	h->magic = REGION_MAGIC;
	h->version = QW_REGION_VERSION;
	h->bytes = bytes;
	h->job = *job;
	atomic_init(&h->generation, 0);
	atomic_init(&h->resume, 0);
	atomic_init(&h->kv_blocks, 0);
	atomic_init(&h->nccl_id_ready, 0);
	for (int i = 0; i < S; i++) {
		h->plan_ring[i] = plan[i];
		qw_ring_init((uint8_t *)mem + plan[i], sizes->plan_ring);
		if (i + 1 < S) {
			h->handover_ring[i] = handover[i];
			qw_ring_init((uint8_t *)mem + handover[i], sizes->handover_ring);
		}
	}
	h->result_ring = result;
	qw_ring_init((uint8_t *)mem + result, sizes->result_ring);
	h->arena = arena;
	h->arena_bytes = sizes->arena;
	*out = (qw_region){h, bytes, fd};
	return QW_OK;
}

qw_status qw_region_map(int fd, qw_region *out, qw_err *err)
{
	memset(out, 0, sizeof *out);
	out->fd = -1;
	off_t size = lseek(fd, 0, SEEK_END);
	if (size < (off_t)sizeof(qw_region_header))
		return qw_fail(err, QW_E_IO, "fd %d is not the daemon's region (%lld bytes)", fd,
			       (long long)size);
	void *mem = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED)
		return qw_fail(err, QW_E_IO, "cannot map the daemon's region: %s", strerror(errno));
	qw_region_header *h = mem;
	if (h->magic != REGION_MAGIC || h->version != QW_REGION_VERSION ||
	    h->bytes != (uint64_t)size) {
		munmap(mem, (size_t)size);
		return qw_fail(err, QW_E_IO, "fd %d does not hold a version %d region of this daemon",
			       fd, QW_REGION_VERSION);
	}
	*out = (qw_region){h, (size_t)size, fd};
	return QW_OK;
}

void qw_region_close(qw_region *r)
{
	if (r->hdr)
		munmap(r->hdr, r->bytes);
	if (r->fd >= 0)
		close(r->fd);
	memset(r, 0, sizeof *r);
	r->fd = -1;
}

static qw_ring *ring_at(const qw_region *r, uint64_t offset)
{
	return (qw_ring *)((uint8_t *)r->hdr + offset);
}

qw_ring *qw_region_plan_ring(const qw_region *r, int stage)
{
	return ring_at(r, r->hdr->plan_ring[stage]);
}

qw_ring *qw_region_result_ring(const qw_region *r)
{
	return ring_at(r, r->hdr->result_ring);
}

qw_ring *qw_region_handover_ring(const qw_region *r, int stage)
{
	return ring_at(r, r->hdr->handover_ring[stage]);
}

uint8_t *qw_region_arena(const qw_region *r)
{
	return (uint8_t *)r->hdr + r->hdr->arena;
}

void qw_region_abort(qw_region *r)
{
	int S = r->hdr->job.n_stages;
	for (int i = 0; i < S; i++) {
		qw_ring_abort(qw_region_plan_ring(r, i));
		if (i + 1 < S)
			qw_ring_abort(qw_region_handover_ring(r, i));
	}
	qw_ring_abort(qw_region_result_ring(r));
}

void qw_region_reset(qw_region *r)
{
	int S = r->hdr->job.n_stages;
	for (int i = 0; i < S; i++) {
		qw_ring_reset(qw_region_plan_ring(r, i));
		if (i + 1 < S)
			qw_ring_reset(qw_region_handover_ring(r, i));
	}
	qw_ring_reset(qw_region_result_ring(r));
}
