/* protocol_wire.h - (private to ipc/protocol*.c) what the request and reply codecs share:
 * the storage a decoded message owns, the allocation-free msgpack check, unpacking one map,
 * the version check and the packers' small helpers. */
#ifndef QW_IPC_PROTOCOL_WIRE_H
#define QW_IPC_PROTOCOL_WIRE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

/* What a decoded message owns: the unpacked tree, and the arrays and strings made for it. */
typedef struct qw_owned {
	msgpack_unpacked u;
	void **allocs;             /* (cap,) each freed with the message */
	int n_allocs, cap;
} qw_owned;

/* Zeroed storage of bytes (at least 1) freed with o; NULL when out of memory. */
void *qw_own(qw_owned *o, size_t bytes);
void qw_owned_free(qw_owned *o);
/* A NUL-terminated copy of a msgpack string, owned by o. */
char *qw_own_cstr(qw_owned *o, const msgpack_object *s);

bool qw_mp_is_str(const msgpack_object *o, const char *s);

/* Unpacks exactly one msgpack map from buf into a new qw_owned (what: "request" or
 * "reply", for the message).  The bytes are walked first, allocating nothing: lengths
 * within the buffer, containers nested at most 8 levels, at most max_elements elements (a
 * map's keys and values count one each). */
qw_status qw_mp_unpack_map(const void *buf, size_t len, uint64_t max_elements, qw_owned **out,
			   const char *what, qw_err *err);

/* Which of names[0..n) (n <= 32) the map key k is, or -1.  A name seen before in the same
 * map (bit i of *seen, which the caller zeroes per map) sets *dup: a key given twice is
 * refused, not left for the last value to win. */
int qw_mp_key(const msgpack_object *k, const char *const *names, int n, uint32_t *seen,
	      bool *dup);
qw_status qw_mp_check_version(const msgpack_object *map, const char *what, qw_err *err);

void qw_mp_pack_str(msgpack_packer *pk, const char *s, size_t len);
void qw_mp_pack_key(msgpack_packer *pk, const char *k);
void qw_mp_pack_ids(msgpack_packer *pk, const int32_t *ids, int n);
/* Hands the buffer over (QW_E_NOMEM when packing ran out of memory). */
qw_status qw_mp_finish(msgpack_sbuffer *sb, char **buf, size_t *len, qw_err *err);

#endif
