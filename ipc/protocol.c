/* protocol.c - what the codecs share (see protocol_wire.h) and the replies: encoding and
 * decoding.  Requests are in protocol_request.c.  See protocol.h and docs/protocol.md. */
#include "ipc/protocol.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/protocol_wire.h"

// ---------------------------------------------------------------------------------------
// what a decoded message owns

void *qw_own(qw_owned *o, size_t bytes)
{
	if (o->n_allocs == o->cap) {
		int cap = o->cap ? 2 * o->cap : 16;
		void **grown = realloc(o->allocs, (size_t)cap * sizeof *grown);
		if (!grown)
			return NULL;
		o->allocs = grown;
		o->cap = cap;
	}
	void *p = calloc(1, bytes ? bytes : 1);
	if (p)
		o->allocs[o->n_allocs++] = p;
	return p;
}

void qw_owned_free(qw_owned *o)
{
	if (!o)
		return;
	msgpack_unpacked_destroy(&o->u);
	for (int i = 0; i < o->n_allocs; i++)
		free(o->allocs[i]);
	free(o->allocs);
	free(o);
}

bool qw_mp_is_str(const msgpack_object *o, const char *s)
{
	return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
	       memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

char *qw_own_cstr(qw_owned *o, const msgpack_object *s)
{
	char *c = qw_own(o, s->via.str.size + 1);
	if (c)
		memcpy(c, s->via.str.ptr, s->via.str.size);
	return c;
}

// ---------------------------------------------------------------------------------------
// unpacking

/* What follows a type byte, for each run of type bytes (msgpack's spec, in order; 0xc1 is
 * never used).  The length n of a string, binary or ext, or the count n of a container, is
 * in the type byte's low bits (low_mask) or in the len_bytes bytes after it (big-endian);
 * then come `fixed` bytes (a number's, an ext's type byte) and, for a string, binary or
 * ext, n bytes, or for a container n elements (per_count 1) or n pairs (2). */
typedef struct mp_type {
	uint8_t first, last;
	uint8_t low_mask, len_bytes, fixed, per_count;
} mp_type;

static const mp_type mp_types[] = {
	/*  first  last  low   len  fixed per */
	{0x00, 0x7f, 0x00, 0, 0, 0},      /* positive fixint */
	{0x80, 0x8f, 0x0f, 0, 0, 2},      /* fixmap */
	{0x90, 0x9f, 0x0f, 0, 0, 1},      /* fixarray */
	{0xa0, 0xbf, 0x1f, 0, 0, 0},      /* fixstr */
	{0xc0, 0xc0, 0x00, 0, 0, 0},      /* nil */
	{0xc2, 0xc3, 0x00, 0, 0, 0},      /* false, true */
	{0xc4, 0xc4, 0x00, 1, 0, 0},      /* bin 8 */
	{0xc5, 0xc5, 0x00, 2, 0, 0},      /* bin 16 */
	{0xc6, 0xc6, 0x00, 4, 0, 0},      /* bin 32 */
	{0xc7, 0xc7, 0x00, 1, 1, 0},      /* ext 8: a type byte after the length */
	{0xc8, 0xc8, 0x00, 2, 1, 0},      /* ext 16 */
	{0xc9, 0xc9, 0x00, 4, 1, 0},      /* ext 32 */
	{0xca, 0xca, 0x00, 0, 4, 0},      /* float 32 */
	{0xcb, 0xcb, 0x00, 0, 8, 0},      /* float 64 */
	{0xcc, 0xcc, 0x00, 0, 1, 0},      /* uint 8 */
	{0xcd, 0xcd, 0x00, 0, 2, 0},      /* uint 16 */
	{0xce, 0xce, 0x00, 0, 4, 0},      /* uint 32 */
	{0xcf, 0xcf, 0x00, 0, 8, 0},      /* uint 64 */
	{0xd0, 0xd0, 0x00, 0, 1, 0},      /* int 8 */
	{0xd1, 0xd1, 0x00, 0, 2, 0},      /* int 16 */
	{0xd2, 0xd2, 0x00, 0, 4, 0},      /* int 32 */
	{0xd3, 0xd3, 0x00, 0, 8, 0},      /* int 64 */
	{0xd4, 0xd4, 0x00, 0, 2, 0},      /* fixext 1: a type byte and 1 byte */
	{0xd5, 0xd5, 0x00, 0, 3, 0},      /* fixext 2 */
	{0xd6, 0xd6, 0x00, 0, 5, 0},      /* fixext 4 */
	{0xd7, 0xd7, 0x00, 0, 9, 0},      /* fixext 8 */
	{0xd8, 0xd8, 0x00, 0, 17, 0},     /* fixext 16 */
	{0xd9, 0xd9, 0x00, 1, 0, 0},      /* str 8 */
	{0xda, 0xda, 0x00, 2, 0, 0},      /* str 16 */
	{0xdb, 0xdb, 0x00, 4, 0, 0},      /* str 32 */
	{0xdc, 0xdc, 0x00, 2, 0, 1},      /* array 16 */
	{0xdd, 0xdd, 0x00, 4, 0, 1},      /* array 32 */
	{0xde, 0xde, 0x00, 2, 0, 2},      /* map 16 */
	{0xdf, 0xdf, 0x00, 4, 0, 2},      /* map 32 */
	{0xe0, 0xff, 0x00, 0, 0, 0},      /* negative fixint */
};

static const mp_type *type_of(uint8_t t)
{
	size_t lo = 0, hi = sizeof mp_types / sizeof *mp_types;
	while (lo < hi) {   /* the rows are sorted and do not overlap */
		size_t mid = (lo + hi) / 2;
		if (t < mp_types[mid].first)
			hi = mid;
		else if (t > mp_types[mid].last)
			lo = mid + 1;
		else
			return &mp_types[mid];
	}
	return NULL;
}

/* How deep a message's containers may nest: a request nests five levels (the map, messages,
 * a message, its content or tool calls, an item), a reply two. */
#define MAX_DEPTH 8

typedef enum walk_fault {
	WALK_OK,
	WALK_MALFORMED,      /* truncated, an unused type byte, a length past the end */
	WALK_TRAILING,       /* bytes after the first object */
	WALK_TOO_DEEP,       /* containers nested past MAX_DEPTH */
	WALK_TOO_MANY,       /* more elements than the budget */
} walk_fault;

/* Walks the msgpack bytes by the table, without allocating: every declared length and
 * element count must fit in what remains of the buffer, containers nest at most MAX_DEPTH
 * levels, and the message holds at most max_elements elements in its containers (a map's
 * keys and values count one each).  msgpack-c allocates a container's elements from its
 * declared count (24 bytes each, 48 a map pair), so a few bytes claiming 2^32 elements, or
 * 60 MB of nils, would otherwise cost gigabytes. */
static walk_fault msgpack_sane(const uint8_t *p, size_t len, uint64_t max_elements)
{
	size_t at = 0;
	uint64_t left[MAX_DEPTH + 1] = {1};  /* elements still to read at each open level */
	uint64_t elements = 0;
	int depth = 0;
	for (;;) {
		while (depth > 0 && left[depth] == 0)
			depth--;
		if (left[depth] == 0)
			break;
		if (at >= len)
			return WALK_MALFORMED;
		left[depth]--;
		uint8_t t = p[at++];
		const mp_type *ty = type_of(t);
		if (!ty)
			return WALK_MALFORMED;
		uint64_t n = t & ty->low_mask;
		if (ty->len_bytes) {
			if (len - at < ty->len_bytes)
				return WALK_MALFORMED;
			for (int i = 0; i < ty->len_bytes; i++)
				n = (n << 8) | p[at++];
		}
		uint64_t skip = ty->fixed + (ty->per_count ? 0 : n), items = ty->per_count * n;
		if (skip > len - at || items > len - at)   /* each element takes a byte at least */
			return WALK_MALFORMED;
		at += (size_t)skip;
		if (items == 0)
			continue;
		if ((elements += items) > max_elements)
			return WALK_TOO_MANY;
		if (depth == MAX_DEPTH)
			return WALK_TOO_DEEP;
		left[++depth] = items;
	}
	return at == len ? WALK_OK : WALK_TRAILING;
}

qw_status qw_mp_unpack_map(const void *buf, size_t len, uint64_t max_elements, qw_owned **out,
			   const char *what, qw_err *err)
{
	switch (msgpack_sane(buf, len, max_elements)) {
	case WALK_OK:
		break;
	case WALK_MALFORMED:
		return qw_fail(err, QW_E_ARG, "%s: not valid msgpack (truncated, malformed, or with "
			       "lengths past its end)", what);
	case WALK_TRAILING:
		return qw_fail(err, QW_E_ARG, "%s: not valid msgpack: trailing bytes after the "
			       "first object", what);
	case WALK_TOO_DEEP:
		return qw_fail(err, QW_E_ARG, "%s: containers nest deeper than %d levels (a request "
			       "nests at most 5)", what, MAX_DEPTH);
	case WALK_TOO_MANY:
		return qw_fail(err, QW_E_LIMIT, "%s: more than %llu msgpack elements, past the limit "
			       "of what a message within the limits holds", what,
			       (unsigned long long)max_elements);
	}
	qw_owned *o = calloc(1, sizeof *o);
	if (!o)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	msgpack_unpacked_init(&o->u);
	size_t off = 0;
	msgpack_unpack_return rc = msgpack_unpack_next(&o->u, buf, len, &off);
	if (rc != MSGPACK_UNPACK_SUCCESS || off != len || o->u.data.type != MSGPACK_OBJECT_MAP) {
		qw_owned_free(o);
		if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
			return qw_fail(err, QW_E_NOMEM, "%s: out of memory unpacking", what);
		return qw_fail(err, QW_E_ARG, "%s: %s", what, rc == MSGPACK_UNPACK_SUCCESS &&
			       off == len ? "not a msgpack map" : "not valid msgpack");
	}
	*out = o;
	return QW_OK;
}

int qw_mp_key(const msgpack_object *k, const char *const *names, int n, uint32_t *seen,
	      bool *dup)
{
	for (int i = 0; i < n; i++)
		if (qw_mp_is_str(k, names[i])) {
			*dup = *seen & (1u << i);
			*seen |= 1u << i;
			return i;
		}
	*dup = false;
	return -1;
}

qw_status qw_mp_check_version(const msgpack_object *map, const char *what, qw_err *err)
{
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object_kv *kv = &map->via.map.ptr[i];
		if (!qw_mp_is_str(&kv->key, "v"))
			continue;
		if (kv->val.type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return qw_fail(err, QW_E_ARG, "%s: \"v\" must be an integer", what);
		if (kv->val.via.u64 != QW_PROTOCOL_VERSION)
			return qw_fail(err, QW_E_ARG, "%s: protocol version %llu; this daemon speaks %d",
				       what, (unsigned long long)kv->val.via.u64, QW_PROTOCOL_VERSION);
		return QW_OK;
	}
	return qw_fail(err, QW_E_ARG, "%s: no protocol version \"v\"", what);
}

// ---------------------------------------------------------------------------------------
// packing

void qw_mp_pack_str(msgpack_packer *pk, const char *s, size_t len)
{
	msgpack_pack_str(pk, len);
	msgpack_pack_str_body(pk, s, len);
}

void qw_mp_pack_key(msgpack_packer *pk, const char *k)
{
	qw_mp_pack_str(pk, k, strlen(k));
}

void qw_mp_pack_ids(msgpack_packer *pk, const int32_t *ids, int n)
{
	msgpack_pack_array(pk, (size_t)n);
	for (int i = 0; i < n; i++)
		msgpack_pack_int32(pk, ids[i]);
}

qw_status qw_mp_finish(msgpack_sbuffer *sb, char **buf, size_t *len, qw_err *err)
{
	if (!sb->data) {
		msgpack_sbuffer_destroy(sb);
		return qw_fail(err, QW_E_NOMEM, "out of memory encoding a message");
	}
	*len = sb->size;
	*buf = msgpack_sbuffer_release(sb);
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// replies

static const char *const reply_types[] = {"accepted", "chunk", "done", "error", "status", "ok",
					  "tokens"};
enum { N_REPLY_TYPES = sizeof reply_types / sizeof *reply_types };

/* {logprob, bytes?, top: [{id, logprob, bytes?}]} per token */
static void pack_logprobs(msgpack_packer *pk, const qw_reply_logprob *lp, int n)
{
	qw_mp_pack_key(pk, "logprobs");
	msgpack_pack_array(pk, (size_t)n);
	for (int i = 0; i < n; i++) {
		msgpack_pack_map(pk, 2 + (lp[i].bytes != NULL));
		qw_mp_pack_key(pk, "logprob");
		msgpack_pack_double(pk, lp[i].logprob);
		if (lp[i].bytes) {
			qw_mp_pack_key(pk, "bytes");
			msgpack_pack_bin(pk, lp[i].bytes_len);
			msgpack_pack_bin_body(pk, lp[i].bytes, lp[i].bytes_len);
		}
		qw_mp_pack_key(pk, "top");
		msgpack_pack_array(pk, (size_t)lp[i].n_top);
		for (int k = 0; k < lp[i].n_top; k++) {
			const qw_reply_top *t = &lp[i].top[k];
			msgpack_pack_map(pk, 2 + (t->bytes != NULL));
			qw_mp_pack_key(pk, "id");
			msgpack_pack_int32(pk, t->id);
			qw_mp_pack_key(pk, "logprob");
			msgpack_pack_double(pk, t->logprob);
			if (t->bytes) {
				qw_mp_pack_key(pk, "bytes");
				msgpack_pack_bin(pk, t->bytes_len);
				msgpack_pack_bin_body(pk, t->bytes, t->bytes_len);
			}
		}
	}
}

/* A logprobs map's fields into *logprob and *bytes (a copy o owns: the message's buffer
 * does not outlive the decoding); its "top" array in *top (NULL if none); false if a field
 * has the wrong type or memory ran out. */
static bool logprob_fields(qw_owned *o, const msgpack_object *m, double *logprob,
			   const char **bytes, size_t *bytes_len, int32_t *id,
			   const msgpack_object **top)
{
	if (m->type != MSGPACK_OBJECT_MAP)
		return false;
	bool have = false;
	for (uint32_t i = 0; i < m->via.map.size; i++) {
		const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
		if (qw_mp_is_str(k, "logprob")) {
			if (v->type != MSGPACK_OBJECT_FLOAT64 && v->type != MSGPACK_OBJECT_FLOAT32)
				return false;
			*logprob = v->via.f64;
			have = true;
		} else if (qw_mp_is_str(k, "bytes")) {
			char *copy;
			if (v->type != MSGPACK_OBJECT_BIN || !(copy = qw_own(o, v->via.bin.size)))
				return false;
			memcpy(copy, v->via.bin.ptr, v->via.bin.size);
			*bytes = copy;
			*bytes_len = v->via.bin.size;
		} else if (qw_mp_is_str(k, "id") && id) {
			if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > INT32_MAX)
				return false;
			*id = (int32_t)v->via.u64;
		} else if (qw_mp_is_str(k, "top") && top) {
			if (v->type != MSGPACK_OBJECT_ARRAY)
				return false;
			*top = v;
		}
	}
	return have;
}

static qw_status unpack_logprobs(qw_owned *o, const msgpack_object *v, qw_reply *out,
				 qw_err *err)
{
	uint32_t n = v->via.array.size;
	qw_reply_logprob *lp = qw_own(o, n * sizeof *lp);
	if (!lp)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object *top = NULL;
		if (!logprob_fields(o, &v->via.array.ptr[i], &lp[i].logprob, &lp[i].bytes,
				    &lp[i].bytes_len, NULL, &top))
			return qw_fail(err, QW_E_ARG, "reply: logprobs entry %u is malformed", i);
		if (!top)
			continue;
		qw_reply_top *t = qw_own(o, top->via.array.size * sizeof *t);
		if (!t)
			return qw_fail(err, QW_E_NOMEM, "out of memory");
		for (uint32_t k = 0; k < top->via.array.size; k++)
			if (!logprob_fields(o, &top->via.array.ptr[k], &t[k].logprob, &t[k].bytes,
					    &t[k].bytes_len, &t[k].id, NULL))
				return qw_fail(err, QW_E_ARG, "reply: logprobs entry %u's top %u is "
					       "malformed", i, k);
		lp[i].top = t;
		lp[i].n_top = (int)top->via.array.size;
	}
	out->logprobs = lp;
	return QW_OK;
}

qw_status qw_reply_encode(const qw_reply *r, char **buf, size_t *len, qw_err *err)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	int n = 3;
	switch (r->type) {
	case QW_REPLY_ACCEPTED: n += r->n_token_ids > 0; break;
	case QW_REPLY_CHUNK: n += 3 + (r->logprobs && r->n_token_ids > 0); break;
	case QW_REPLY_DONE: n += 5; break;
	case QW_REPLY_ERROR: n += 2; break;
	case QW_REPLY_STATUS: n += 1; break;
	case QW_REPLY_OK: n += 1; break;
	case QW_REPLY_TOKENS: n += 2; break;
	}
	msgpack_pack_map(&pk, (size_t)n);
	qw_mp_pack_key(&pk, "v");
	msgpack_pack_int(&pk, QW_PROTOCOL_VERSION);
	qw_mp_pack_key(&pk, "type");
	qw_mp_pack_key(&pk, reply_types[r->type]);
	qw_mp_pack_key(&pk, "request");
	msgpack_pack_uint64(&pk, r->request);
	switch (r->type) {
	case QW_REPLY_ACCEPTED:
		if (r->n_token_ids > 0) {
			qw_mp_pack_key(&pk, "token_ids");
			qw_mp_pack_ids(&pk, r->token_ids, r->n_token_ids);
		}
		break;
	case QW_REPLY_CHUNK:
	case QW_REPLY_TOKENS:
		qw_mp_pack_key(&pk, "text");
		qw_mp_pack_str(&pk, r->text ? r->text : "", r->text ? r->text_len : 0);
		if (r->type == QW_REPLY_CHUNK) {
			qw_mp_pack_key(&pk, "reasoning");
			qw_mp_pack_str(&pk, r->reasoning ? r->reasoning : "",
				       r->reasoning ? r->reasoning_len : 0);
		}
		qw_mp_pack_key(&pk, "token_ids");
		qw_mp_pack_ids(&pk, r->token_ids, r->n_token_ids);
		if (r->type == QW_REPLY_CHUNK && r->logprobs && r->n_token_ids > 0)
			pack_logprobs(&pk, r->logprobs, r->n_token_ids);
		break;
	case QW_REPLY_DONE:
		qw_mp_pack_key(&pk, "finish_reason");
		qw_mp_pack_key(&pk, r->finish_reason ? r->finish_reason : "stop");
		qw_mp_pack_key(&pk, "prompt_tokens");
		msgpack_pack_int(&pk, r->prompt_tokens);
		qw_mp_pack_key(&pk, "completion_tokens");
		msgpack_pack_int(&pk, r->completion_tokens);
		qw_mp_pack_key(&pk, "ttft_ms");
		msgpack_pack_double(&pk, r->ttft_ms);
		qw_mp_pack_key(&pk, "tokens_per_s");
		msgpack_pack_double(&pk, r->tokens_per_s);
		break;
	case QW_REPLY_ERROR:
		qw_mp_pack_key(&pk, "code");
		qw_mp_pack_key(&pk, r->code ? r->code : "internal");
		qw_mp_pack_key(&pk, "message");
		qw_mp_pack_key(&pk, r->message ? r->message : "");
		break;
	case QW_REPLY_OK:
		qw_mp_pack_key(&pk, "message");
		qw_mp_pack_key(&pk, r->message ? r->message : "");
		break;
	case QW_REPLY_STATUS:
		qw_mp_pack_key(&pk, "json");
		qw_mp_pack_key(&pk, r->json ? r->json : "{}");
		break;
	}
	return qw_mp_finish(&sb, buf, len, err);
}

qw_status qw_reply_decode(const void *buf, size_t len, qw_reply *out, qw_err *err)
{
	memset(out, 0, sizeof *out);
	qw_owned *o;
	qw_status st = qw_mp_unpack_map(buf, len, len, &o, "reply", err);
	if (st != QW_OK)
		return st;
	out->owned = o;
	const msgpack_object *map = &o->u.data;
	if ((st = qw_mp_check_version(map, "reply", err)) != QW_OK)
		goto fail;
	int type = -1, logprobs_n = -1;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key, *v = &map->via.map.ptr[i].val;
		bool str = v->type == MSGPACK_OBJECT_STR, uint = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
		bool num = uint || v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32;
		double x = uint ? (double)v->via.u64 : num ? v->via.f64 : 0;
		if (qw_mp_is_str(k, "type") && str) {
			for (int t = 0; t < N_REPLY_TYPES; t++)
				if (qw_mp_is_str(v, reply_types[t]))
					type = t;
		} else if (qw_mp_is_str(k, "request") && uint) {
			out->request = v->via.u64;
		} else if (qw_mp_is_str(k, "text") && str) {
			out->text = qw_own_cstr(o, v);
			out->text_len = v->via.str.size;
		} else if (qw_mp_is_str(k, "reasoning") && str) {
			out->reasoning = qw_own_cstr(o, v);
			out->reasoning_len = v->via.str.size;
		} else if (qw_mp_is_str(k, "token_ids") && v->type == MSGPACK_OBJECT_ARRAY) {
			int32_t *ids = qw_own(o, v->via.array.size * sizeof *ids);
			if (!ids) {
				st = qw_fail(err, QW_E_NOMEM, "out of memory");
				goto fail;
			}
			for (uint32_t j = 0; j < v->via.array.size; j++)
				ids[j] = (int32_t)v->via.array.ptr[j].via.u64;
			out->token_ids = ids;
			out->n_token_ids = (int)v->via.array.size;
		} else if (qw_mp_is_str(k, "logprobs") && v->type == MSGPACK_OBJECT_ARRAY) {
			if ((st = unpack_logprobs(o, v, out, err)) != QW_OK)
				goto fail;
			logprobs_n = (int)v->via.array.size;
		} else if (qw_mp_is_str(k, "finish_reason") && str) {
			out->finish_reason = qw_own_cstr(o, v);
		} else if (qw_mp_is_str(k, "prompt_tokens") && uint) {
			out->prompt_tokens = (int)x;
		} else if (qw_mp_is_str(k, "completion_tokens") && uint) {
			out->completion_tokens = (int)x;
		} else if (qw_mp_is_str(k, "ttft_ms") && num) {
			out->ttft_ms = x;
		} else if (qw_mp_is_str(k, "tokens_per_s") && num) {
			out->tokens_per_s = x;
		} else if (qw_mp_is_str(k, "code") && str) {
			out->code = qw_own_cstr(o, v);
		} else if (qw_mp_is_str(k, "message") && str) {
			out->message = qw_own_cstr(o, v);
		} else if (qw_mp_is_str(k, "json") && str) {
			out->json = qw_own_cstr(o, v);
		}
	}
	if (type < 0) {
		st = qw_fail(err, QW_E_ARG, "reply: no known \"type\"");
		goto fail;
	}
	if (logprobs_n >= 0 && logprobs_n != out->n_token_ids) {
		st = qw_fail(err, QW_E_ARG, "reply: %d logprobs entries for %d tokens", logprobs_n,
			     out->n_token_ids);
		goto fail;
	}
	out->type = (qw_reply_type)type;
	return QW_OK;
fail:
	qw_reply_free(out);
	return st;
}

void qw_reply_free(qw_reply *r)
{
	qw_owned_free(r->owned);
	memset(r, 0, sizeof *r);
}

// ---------------------------------------------------------------------------------------
// error codes

const char *qw_error_code_name(qw_error_code c)
{
	static const char *const names[QW_CODE_COUNT_] = {
		[QW_CODE_BAD_REQUEST] = "bad_request", [QW_CODE_TOO_LARGE] = "too_large",
		[QW_CODE_BUSY] = "busy", [QW_CODE_NOT_READY] = "not_ready",
		[QW_CODE_INTERNAL] = "internal"};
	return c >= 0 && c < QW_CODE_COUNT_ ? names[c] : "internal";
}

qw_error_code qw_error_code_of(qw_status st)
{
	switch (st) {
	case QW_E_LIMIT: return QW_CODE_TOO_LARGE;
	case QW_E_FULL: return QW_CODE_BUSY;
	case QW_E_NOMEM:
	case QW_E_IO:
	case QW_E_DEVICE:
	case QW_E_TIMEOUT:
	case QW_E_ABORTED: return QW_CODE_INTERNAL;
	default: return QW_CODE_BAD_REQUEST;
	}
}
