/* ring.h - a single-producer, single-consumer ring of bytes in shared memory whose waits
 * sleep instead of spinning.
 *
 * Owns: qw_ring, the ring's header and data as they lie in a shared mapping (the caller
 * places it: a memfd of its own for a channel, or a slice of the daemon's region), and its
 * two ways of use:
 *   - streams (qw_ring_write / qw_ring_read): exact byte counts of any size, passed through
 *     the ring piece by piece, as a stage hand-over sends activations;
 *   - messages (qw_ring_send / qw_ring_recv): one length-prefixed record each, published all
 *     at once, for step plans and results.
 * One ring carries one of the two, never both.  A waiter spins briefly, then sleeps on a
 * futex; it wakes on progress, on its timeout (QW_E_TIMEOUT, so it can check on its peer and
 * wait again), or when the ring is aborted (QW_E_ABORTED, e.g. after a peer process died).
 * Producer and consumer may live in different processes: every shared field is a C11
 * atomic (lock-free here), and the futexes are process-shared.
 */
#ifndef QW_IPC_RING_H
#define QW_IPC_RING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

typedef struct qw_ring {
	_Alignas(64) _Atomic uint64_t head;      /* bytes written, ever (producer) */
	_Atomic uint32_t data_seq;               /* futex word: bumped when head moves */
	_Atomic uint32_t consumer_sleeps;        /* the consumer is (about to be) in futex_wait */
	_Alignas(64) _Atomic uint64_t tail;      /* bytes read, ever (consumer) */
	_Atomic uint32_t space_seq;              /* futex word: bumped when tail moves */
	_Atomic uint32_t producer_sleeps;
	_Alignas(64) _Atomic uint32_t aborted;   /* set once; every wait then fails */
	uint64_t size;                           /* bytes of data, a power of two */
	_Alignas(64) uint8_t data[];
} qw_ring;

/* Largest message a ring of `size` bytes carries. */
#define QW_RING_MAX_MESSAGE(size) ((size) - 8)

/* Bytes of ring a message of len bytes takes (its length prefix and padding included). */
size_t qw_ring_record_bytes(size_t len);

/* Bytes of shared memory a ring with `capacity` bytes of data occupies (capacity is rounded
 * up to a power of two, at least 4096). */
size_t qw_ring_footprint(size_t capacity);

/* Lays out an empty ring in mem (qw_ring_footprint(capacity) bytes, 64-byte aligned). */
qw_ring *qw_ring_init(void *mem, size_t capacity);

/* timeout_ms < 0 waits for ever (until progress or abort); 0 does not wait. */

/* Streams: all n bytes, piece by piece as room appears. */
qw_status qw_ring_write(qw_ring *r, const void *buf, size_t n, int timeout_ms, qw_err *err);
qw_status qw_ring_read(qw_ring *r, void *buf, size_t n, int timeout_ms, qw_err *err);

/* Messages: the parts, concatenated, as one record, once there is room for all of it.  A
 * record longer than QW_RING_MAX_MESSAGE is an error (QW_E_ARG). */
qw_status qw_ring_send(qw_ring *r, const void *const *parts, const size_t *lens, int n_parts,
		       int timeout_ms, qw_err *err);
/* The next record into *buf (grown with realloc as needed; *cap its size), *len its length. */
qw_status qw_ring_recv(qw_ring *r, void **buf, size_t *cap, size_t *len, int timeout_ms,
		       qw_err *err);

/* Whether a record of len bytes would fit now (the producer's non-blocking check). */
bool qw_ring_has_room(const qw_ring *r, size_t len);
/* Whether the ring holds anything to read. */
bool qw_ring_readable(const qw_ring *r);

/* Fails every wait on the ring, now and later, and wakes whoever sleeps. */
void qw_ring_abort(qw_ring *r);

/* Empties the ring and clears its abort, for use again.  Only while neither side touches it
 * (a pipeline between generations). */
void qw_ring_reset(qw_ring *r);

#endif
