/* ring.c - the shared-memory SPSC ring.  See ring.h.
 *
 * Waking without lost wake-ups: a waiter reads the futex word, announces that it sleeps,
 * checks its condition once more and only then sleeps on the word's old value; the other
 * side moves head (or tail), bumps the word, and wakes if a sleeper is announced.  All of
 * these are sequentially consistent, so either the waiter sees the progress or the mover
 * sees the sleeper (and a wake that comes early finds the word changed). */
#include "ipc/ring.h"

#include <limits.h>
#include <stdlib.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "loader/clock.h"

#define SPINS 256    /* polls before sleeping: a hand-over often completes within them */

static void futex_wait(_Atomic uint32_t *word, uint32_t expected, const struct timespec *ts)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, ts, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

size_t qw_ring_footprint(size_t capacity)
{
	size_t size = 4096;
	while (size < capacity)
		size <<= 1;
	return sizeof(qw_ring) + size;
}

qw_ring *qw_ring_init(void *mem, size_t capacity)
{
	qw_ring *r = mem;
	size_t size = qw_ring_footprint(capacity) - sizeof(qw_ring);
	atomic_init(&r->head, 0);
	atomic_init(&r->data_seq, 0);
	atomic_init(&r->consumer_sleeps, 0);
	atomic_init(&r->tail, 0);
	atomic_init(&r->space_seq, 0);
	atomic_init(&r->producer_sleeps, 0);
	atomic_init(&r->aborted, 0);
	r->size = size;
	return r;
}

static uint64_t used(const qw_ring *r)
{
	return atomic_load(&((qw_ring *)r)->head) - atomic_load(&((qw_ring *)r)->tail);
}

typedef bool (*ring_pred)(const qw_ring *r, uint64_t need);

static bool has_data(const qw_ring *r, uint64_t need)
{
	return used(r) >= need;
}

static bool has_room(const qw_ring *r, uint64_t need)
{
	return r->size - used(r) >= need;
}

/* Waits until ok(r, need) holds; deadline_ms < 0: none. */
static qw_status wait_until(qw_ring *r, ring_pred ok, uint64_t need, _Atomic uint32_t *word,
			    _Atomic uint32_t *sleeps, int64_t deadline_ms, qw_err *err)
{
	for (unsigned spins = 0;; spins++) {
		if (atomic_load(&r->aborted))
			return qw_fail(err, QW_E_ABORTED, "the ring was aborted (its peer is gone)");
		if (ok(r, need))
			return QW_OK;
		if (spins < SPINS) {
			cpu_relax();
			continue;
		}
		uint32_t seen = atomic_load(word);
		atomic_store(sleeps, 1);
		if (ok(r, need) || atomic_load(&r->aborted)) {
			atomic_store(sleeps, 0);
			continue;
		}
		struct timespec ts, *tsp = NULL;
		if (deadline_ms >= 0) {
			int64_t left = deadline_ms - (int64_t)qw_now_ms();
			if (left <= 0) {
				atomic_store(sleeps, 0);
				return qw_fail(err, QW_E_TIMEOUT, "nothing moved through the ring in time");
			}
			ts.tv_sec = left / 1000;
			ts.tv_nsec = (left % 1000) * 1000000;
			tsp = &ts;
		}
		futex_wait(word, seen, tsp);
		atomic_store(sleeps, 0);
	}
}

static int64_t deadline(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : (int64_t)qw_now_ms() + timeout_ms;
}

static void copy_in(qw_ring *r, uint64_t at, const void *src, size_t n)
{
	size_t off = (size_t)(at & (r->size - 1)), k = n < r->size - off ? n : (size_t)r->size - off;
	memcpy(r->data + off, src, k);
	memcpy(r->data, (const uint8_t *)src + k, n - k);
}

static void copy_out(const qw_ring *r, uint64_t at, void *dst, size_t n)
{
	size_t off = (size_t)(at & (r->size - 1)), k = n < r->size - off ? n : (size_t)r->size - off;
	memcpy(dst, r->data + off, k);
	memcpy((uint8_t *)dst + k, r->data, n - k);
}

static void publish_head(qw_ring *r, uint64_t head)
{
	atomic_store(&r->head, head);
	atomic_fetch_add(&r->data_seq, 1);
	if (atomic_load(&r->consumer_sleeps))
		futex_wake(&r->data_seq);
}

static void publish_tail(qw_ring *r, uint64_t tail)
{
	atomic_store(&r->tail, tail);
	atomic_fetch_add(&r->space_seq, 1);
	if (atomic_load(&r->producer_sleeps))
		futex_wake(&r->space_seq);
}

// ---------------------------------------------------------------------------------------
// streams

qw_status qw_ring_write(qw_ring *r, const void *buf, size_t n, int timeout_ms, qw_err *err)
{
	const uint8_t *p = buf;
	int64_t until = deadline(timeout_ms);
	uint64_t head = atomic_load(&r->head);
	while (n > 0) {
		qw_status st = wait_until(r, has_room, 1, &r->space_seq, &r->producer_sleeps, until,
					  err);
		if (st != QW_OK)
			return st;
		uint64_t room = r->size - used(r);
		size_t k = n < room ? n : (size_t)room;
		copy_in(r, head, p, k);
		publish_head(r, head += k);
		p += k;
		n -= k;
	}
	return QW_OK;
}

qw_status qw_ring_read(qw_ring *r, void *buf, size_t n, int timeout_ms, qw_err *err)
{
	uint8_t *p = buf;
	int64_t until = deadline(timeout_ms);
	uint64_t tail = atomic_load(&r->tail);
	while (n > 0) {
		qw_status st = wait_until(r, has_data, 1, &r->data_seq, &r->consumer_sleeps, until,
					  err);
		if (st != QW_OK)
			return st;
		uint64_t avail = used(r);
		size_t k = n < avail ? n : (size_t)avail;
		copy_out(r, tail, p, k);
		publish_tail(r, tail += k);
		p += k;
		n -= k;
	}
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// messages: a u32 length, the bytes, padding to 8

static uint64_t record_bytes(size_t len)
{
	return ((uint64_t)len + 4 + 7) & ~(uint64_t)7;
}

size_t qw_ring_record_bytes(size_t len)
{
	return (size_t)record_bytes(len);
}

bool qw_ring_has_room(const qw_ring *r, size_t len)
{
	return record_bytes(len) <= r->size && has_room(r, record_bytes(len));
}

bool qw_ring_readable(const qw_ring *r)
{
	return used(r) > 0;
}

qw_status qw_ring_send(qw_ring *r, const void *const *parts, const size_t *lens, int n_parts,
		       int timeout_ms, qw_err *err)
{
	size_t len = 0;
	for (int i = 0; i < n_parts; i++)
		len += lens[i];
	uint64_t need = record_bytes(len);
	if (len > UINT32_MAX || need > r->size)
		return qw_fail(err, QW_E_ARG, "a message of %zu bytes does not fit a ring of %llu",
			       len, (unsigned long long)r->size);
	qw_status st = wait_until(r, has_room, need, &r->space_seq, &r->producer_sleeps,
				  deadline(timeout_ms), err);
	if (st != QW_OK)
		return st;
	uint64_t head = atomic_load(&r->head), at = head + 4;
	uint32_t len32 = (uint32_t)len;
	copy_in(r, head, &len32, 4);
	for (int i = 0; i < n_parts; i++) {
		copy_in(r, at, parts[i], lens[i]);
		at += lens[i];
	}
	publish_head(r, head + need);
	return QW_OK;
}

qw_status qw_ring_recv(qw_ring *r, void **buf, size_t *cap, size_t *len, int timeout_ms,
		       qw_err *err)
{
	qw_status st = wait_until(r, has_data, 4, &r->data_seq, &r->consumer_sleeps,
				  deadline(timeout_ms), err);
	if (st != QW_OK)
		return st;
	uint64_t tail = atomic_load(&r->tail);
	uint32_t n;
	copy_out(r, tail, &n, 4);
	if (record_bytes(n) > used(r))
		return qw_fail(err, QW_E_IO, "ring: a record of %u bytes claims more than the ring "
			       "holds (a stream written into a message ring?)", n);
	if (*cap < n || !*buf) {
		void *grown = realloc(*buf, n ? n : 1);
		if (!grown)
			return qw_fail(err, QW_E_NOMEM, "out of memory for a %u-byte message", n);
		*buf = grown;
		*cap = n ? n : 1;
	}
	copy_out(r, tail + 4, *buf, n);
	*len = n;
	publish_tail(r, tail + record_bytes(n));
	return QW_OK;
}

void qw_ring_abort(qw_ring *r)
{
	atomic_store(&r->aborted, 1);
	atomic_fetch_add(&r->data_seq, 1);
	atomic_fetch_add(&r->space_seq, 1);
	futex_wake(&r->data_seq);
	futex_wake(&r->space_seq);
}

void qw_ring_reset(qw_ring *r)
{
	qw_ring_init(r, (size_t)r->size);   /* a power of two: the same size again */
}
