/* protocol.c - msgpack encoding and checked decoding of requests and replies.
 * See protocol.h and docs/protocol.md. */
#include "ipc/protocol.h"

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What a decoded message owns: the unpacked tree, and the arrays and strings made for it. */
typedef struct owned {
	msgpack_unpacked u;
	void *allocs[64];
	int n_allocs;
} owned;

static void *own(owned *o, size_t bytes)
{
	if (o->n_allocs == 64)
		return NULL;
	void *p = calloc(1, bytes ? bytes : 1);
	if (p)
		o->allocs[o->n_allocs++] = p;
	return p;
}

static void owned_free(owned *o)
{
	if (!o)
		return;
	msgpack_unpacked_destroy(&o->u);
	for (int i = 0; i < o->n_allocs; i++)
		free(o->allocs[i]);
	free(o);
}

static bool is_str(const msgpack_object *o, const char *s)
{
	return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
	       memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static char *own_cstr(owned *o, const msgpack_object *s)
{
	char *c = own(o, s->via.str.size + 1);
	if (c)
		memcpy(c, s->via.str.ptr, s->via.str.size);
	return c;
}

static uint64_t be_uint(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Walks the msgpack bytes without allocating: every declared length and element count must
 * fit in what remains of the buffer.  msgpack-c allocates a container's elements from its
 * declared count, so a few bytes claiming 2^32 elements would otherwise cost gigabytes.
 * Returns false for a truncated, malformed or lying message. */
static bool msgpack_sane(const uint8_t *p, size_t len)
{
	size_t at = 0;
	uint64_t pending = 1;                /* elements still to read */
	while (pending > 0) {
		if (at >= len)
			return false;
		uint8_t t = p[at++];
		uint64_t skip = 0, items = 0;
		int lenbytes = 0;
		pending--;
		if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3)
			continue;
		if (t >= 0x80 && t <= 0x8f)
			items = 2u * (t & 0x0f);
		else if (t >= 0x90 && t <= 0x9f)
			items = t & 0x0f;
		else if (t >= 0xa0 && t <= 0xbf)
			skip = t & 0x1f;
		else
			switch (t) {
			case 0xc4: case 0xd9: lenbytes = 1; break;             /* bin8, str8 */
			case 0xc5: case 0xda: lenbytes = 2; break;
			case 0xc6: case 0xdb: lenbytes = 4; break;
			case 0xc7: lenbytes = 1; skip = 1; break;              /* ext: + type byte */
			case 0xc8: lenbytes = 2; skip = 1; break;
			case 0xc9: lenbytes = 4; skip = 1; break;
			case 0xca: skip = 4; break;
			case 0xcb: skip = 8; break;
			case 0xcc: case 0xd0: skip = 1; break;
			case 0xcd: case 0xd1: skip = 2; break;
			case 0xce: case 0xd2: skip = 4; break;
			case 0xcf: case 0xd3: skip = 8; break;
			case 0xd4: skip = 2; break;
			case 0xd5: skip = 3; break;
			case 0xd6: skip = 5; break;
			case 0xd7: skip = 9; break;
			case 0xd8: skip = 17; break;
			case 0xdc: case 0xdd: case 0xde: case 0xdf: {
				int nb = (t == 0xdc || t == 0xde) ? 2 : 4;
				if (len - at < (size_t)nb)
					return false;
				items = be_uint(p + at, nb) * (t >= 0xde ? 2u : 1u);
				at += (size_t)nb;
				break;
			}
			default:
				return false;                                  /* 0xc1: never used */
			}
		if (lenbytes) {
			if (len - at < (size_t)lenbytes)
				return false;
			skip += be_uint(p + at, lenbytes);
			at += (size_t)lenbytes;
		}
		if (skip > len - at || items > len - at)   /* each element takes a byte at least */
			return false;
		at += (size_t)skip;
		pending += items;
	}
	return at == len;
}

/* Unpacks exactly one msgpack map from buf. */
static qw_status unpack_map(const void *buf, size_t len, owned **out, const char *what,
			    qw_err *err)
{
	if (!msgpack_sane(buf, len))
		return qw_fail(err, QW_E_ARG, "%s: not valid msgpack (truncated, malformed, or with "
			       "lengths past its end)", what);
	owned *o = calloc(1, sizeof *o);
	if (!o)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	msgpack_unpacked_init(&o->u);
	size_t off = 0;
	msgpack_unpack_return rc = msgpack_unpack_next(&o->u, buf, len, &off);
	if (rc != MSGPACK_UNPACK_SUCCESS || off != len || o->u.data.type != MSGPACK_OBJECT_MAP) {
		owned_free(o);
		return qw_fail(err, QW_E_ARG, "%s: %s", what,
			       rc == MSGPACK_UNPACK_SUCCESS && off != len ? "trailing bytes after the msgpack map"
			       : rc == MSGPACK_UNPACK_SUCCESS ? "not a msgpack map"
			       : rc == MSGPACK_UNPACK_NOMEM_ERROR ? "out of memory unpacking"
							          : "not valid msgpack (or truncated)");
	}
	*out = o;
	return QW_OK;
}

static qw_status check_version(const msgpack_object *map, const char *what, qw_err *err)
{
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object_kv *kv = &map->via.map.ptr[i];
		if (!is_str(&kv->key, "v"))
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
// request decoding

typedef struct decoder {
	const qw_limits *lim;
	owned *o;
	size_t text;       /* text bytes so far */
	int images;
	qw_err *err;
} decoder;

static qw_status bad(decoder *d, const char *field, const char *what)
{
	return qw_fail(d->err, QW_E_ARG, "request: \"%s\" %s", field, what);
}

static qw_status text_field(decoder *d, const char *field, const msgpack_object *v,
			    const char **out, size_t *len)
{
	if (v->type != MSGPACK_OBJECT_STR)
		return bad(d, field, "must be a string");
	if ((d->text += v->via.str.size) > d->lim->max_text_bytes) {
		char what[96];
		snprintf(what, sizeof what, "takes the request past its limit of %zu bytes of text",
			 d->lim->max_text_bytes);
		return bad(d, field, what);
	}
	*out = v->via.str.ptr;
	*len = v->via.str.size;
	return QW_OK;
}

static qw_status number(decoder *d, const char *field, const msgpack_object *v, double lo,
			double hi, double *out)
{
	if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		*out = (double)v->via.u64;
	else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		*out = (double)v->via.i64;
	else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
		*out = v->via.f64;
	else
		return bad(d, field, "must be a number");
	if (!(*out >= lo && *out <= hi)) {
		char what[96];
		snprintf(what, sizeof what, "must be in [%g, %g]", lo, hi);
		return bad(d, field, what);
	}
	return QW_OK;
}

static qw_status boolean(decoder *d, const char *field, const msgpack_object *v, bool *out)
{
	if (v->type != MSGPACK_OBJECT_BOOLEAN)
		return bad(d, field, "must be true or false");
	*out = v->via.boolean;
	return QW_OK;
}

/* One encoded image, counted against the limits. */
static qw_status image_bytes(decoder *d, const char *field, const msgpack_object *data,
			     qw_item *out)
{
	if (data->type != MSGPACK_OBJECT_BIN)
		return bad(d, field, "must be binary (the encoded image)");
	if (data->via.bin.size > d->lim->max_image_bytes || ++d->images > d->lim->max_images) {
		char what[128];
		snprintf(what, sizeof what, "is over the limits (%zu bytes an image, %d images "
			 "a request)", d->lim->max_image_bytes, d->lim->max_images);
		return bad(d, field, what);
	}
	out->kind = QW_ITEM_IMAGE;
	out->data = data->via.bin.ptr;
	out->len = data->via.bin.size;
	return QW_OK;
}

static qw_status content(decoder *d, const msgpack_object *v, qw_req_message *m)
{
	if (v->type == MSGPACK_OBJECT_STR) {
		m->items = own(d->o, sizeof *m->items);
		if (!m->items)
			return qw_fail(d->err, QW_E_NOMEM, "out of memory");
		m->n_items = 1;
		m->items[0].kind = QW_ITEM_TEXT;
		return text_field(d, "content", v, &m->items[0].data, &m->items[0].len);
	}
	if (v->type != MSGPACK_OBJECT_ARRAY)
		return bad(d, "content", "must be a string or an array of items");
	if ((int)v->via.array.size > d->lim->max_items)
		return bad(d, "content", "has too many items");
	m->n_items = (int)v->via.array.size;
	m->items = own(d->o, (size_t)m->n_items * sizeof *m->items);
	if (!m->items)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < m->n_items; i++) {
		const msgpack_object *it = &v->via.array.ptr[i];
		const msgpack_object *type = NULL, *text = NULL, *data = NULL;
		if (it->type != MSGPACK_OBJECT_MAP)
			return bad(d, "content", "items must be maps");
		for (uint32_t k = 0; k < it->via.map.size; k++) {
			const msgpack_object_kv *kv = &it->via.map.ptr[k];
			if (is_str(&kv->key, "type"))
				type = &kv->val;
			else if (is_str(&kv->key, "text"))
				text = &kv->val;
			else if (is_str(&kv->key, "data"))
				data = &kv->val;
			else
				return bad(d, "content", "items take only type, text and data");
		}
		if (type && is_str(type, "text") && text) {
			m->items[i].kind = QW_ITEM_TEXT;

			qw_status st = text_field(d, "text", text, &m->items[i].data, &m->items[i].len);
			if (st != QW_OK)
				return st;
		} else if (type && is_str(type, "image") && data) {
			qw_status st = image_bytes(d, "data", data, &m->items[i]);
			if (st != QW_OK)
				return st;
		} else {
			return bad(d, "content", "items are {type: text, text} or {type: image, data}");
		}
	}
	return QW_OK;
}

static qw_status images(decoder *d, const msgpack_object *v, qw_request *r)
{
	if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0)
		return bad(d, "images", "must be a non-empty array of encoded images");
	if ((int)v->via.array.size > d->lim->max_images)
		return bad(d, "images", "has too many images");
	r->n_images = (int)v->via.array.size;
	r->images = own(d->o, (size_t)r->n_images * sizeof *r->images);
	if (!r->images)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < r->n_images; i++) {
		qw_status st = image_bytes(d, "images", &v->via.array.ptr[i], &r->images[i]);
		if (st != QW_OK)
			return st;
	}
	return QW_OK;
}

static qw_status messages(decoder *d, const msgpack_object *v, qw_request *r)
{
	if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0)
		return bad(d, "messages", "must be a non-empty array");
	if ((int)v->via.array.size > d->lim->max_messages)
		return bad(d, "messages", "has too many messages");
	r->n_messages = (int)v->via.array.size;
	r->messages = own(d->o, (size_t)r->n_messages * sizeof *r->messages);
	if (!r->messages)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < r->n_messages; i++) {
		const msgpack_object *m = &v->via.array.ptr[i];
		qw_req_message *out = &r->messages[i];
		if (m->type != MSGPACK_OBJECT_MAP)
			return bad(d, "messages", "must hold maps");
		bool has_content = false;
		for (uint32_t k = 0; k < m->via.map.size; k++) {
			const msgpack_object_kv *kv = &m->via.map.ptr[k];
			qw_status st;
			if (is_str(&kv->key, "role")) {
				if (!is_str(&kv->val, "system") && !is_str(&kv->val, "user") &&
				    !is_str(&kv->val, "assistant") && !is_str(&kv->val, "tool"))
					return bad(d, "role", "must be system, user, assistant or tool");
				out->role = kv->val.via.str.ptr;
				out->role_len = kv->val.via.str.size;
				continue;
			} else if (is_str(&kv->key, "content")) {
				st = content(d, &kv->val, out);
				has_content = true;
			} else if (is_str(&kv->key, "reasoning")) {
				st = text_field(d, "reasoning", &kv->val, &out->reasoning, &out->reasoning_len);
			} else {
				return bad(d, "messages", "take only role, content and reasoning");
			}
			if (st != QW_OK)
				return st;
		}
		if (!out->role || !has_content)
			return bad(d, "messages", "each needs a role and a content");
	}
	return QW_OK;
}

static qw_status int_array(decoder *d, const char *field, const msgpack_object *v, int max,
			   int32_t **out, int *n)
{
	if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0)
		return bad(d, field, "must be a non-empty array of token ids");
	if ((int)v->via.array.size > max)
		return bad(d, field, "has too many token ids");
	*n = (int)v->via.array.size;
	*out = own(d->o, (size_t)*n * sizeof **out);
	if (!*out)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < *n; i++) {
		const msgpack_object *e = &v->via.array.ptr[i];
		if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > INT32_MAX)
			return bad(d, field, "holds something that is not a token id");
		(*out)[i] = (int32_t)e->via.u64;
	}
	return QW_OK;
}

static qw_status stops(decoder *d, const msgpack_object *v, qw_request *r)
{
	if (v->type != MSGPACK_OBJECT_ARRAY || (int)v->via.array.size > d->lim->max_stop)
		return bad(d, "stop", "must be an array of at most max_stop strings");
	r->n_stop = (int)v->via.array.size;
	r->stop = own(d->o, (size_t)r->n_stop * sizeof *r->stop);
	r->stop_len = own(d->o, (size_t)r->n_stop * sizeof *r->stop_len);
	if (!r->stop || !r->stop_len)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < r->n_stop; i++) {
		const msgpack_object *s = &v->via.array.ptr[i];
		if (s->type != MSGPACK_OBJECT_STR || s->via.str.size == 0 ||
		    s->via.str.size > d->lim->max_stop_bytes)
			return bad(d, "stop", "holds an empty, overlong or non-string entry");
		r->stop[i] = s->via.str.ptr;
		r->stop_len[i] = s->via.str.size;
	}
	return QW_OK;
}

qw_status qw_request_decode(const void *buf, size_t len, const qw_limits *lim, qw_request *out,
			    qw_err *err)
{
	memset(out, 0, sizeof *out);
	qw_limits def = QW_LIMITS_DEFAULT;
	lim = lim ? lim : &def;
	if (len > lim->max_message)
		return qw_fail(err, QW_E_ARG, "request of %zu bytes is over the %zu-byte limit", len,
			       lim->max_message);
	owned *o;
	qw_status st = unpack_map(buf, len, &o, "request", err);
	if (st != QW_OK)
		return st;
	out->owned = o;
	out->temperature = -1;
	out->top_k = -1;
	out->stream = true;
	const msgpack_object *map = &o->u.data;
	if ((st = check_version(map, "request", err)) != QW_OK)
		goto fail;
	decoder d = {lim, o, 0, 0, err};
	const msgpack_object *op = NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++)
		if (is_str(&map->via.map.ptr[i].key, "op"))
			op = &map->via.map.ptr[i].val;
	if (!op || op->type != MSGPACK_OBJECT_STR) {
		st = bad(&d, "op", "is missing or not a string");
		goto fail;
	}
	static const char *const ops[] = {"submit", "status", "cancel", "shutdown"};
	int which = -1;
	for (int i = 0; i < 4; i++)
		if (is_str(op, ops[i]))
			which = i;
	if (which < 0) {
		st = qw_fail(err, QW_E_ARG, "request: unknown op \"%.*s\" (submit, status, cancel, "
			     "shutdown)", (int)(op->via.str.size > 32 ? 32 : op->via.str.size),
			     op->via.str.ptr);
		goto fail;
	}
	out->op = (qw_op)which;
	int inputs = 0;
	bool has_target = false;
	for (uint32_t i = 0; i < map->via.map.size && st == QW_OK; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key, *v = &map->via.map.ptr[i].val;
		double x;
		if (is_str(k, "v") || is_str(k, "op"))
			continue;
		if (out->op == QW_OP_CANCEL && is_str(k, "request")) {
			if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
				st = bad(&d, "request", "must be a request id");
			out->target = v->via.u64;
			has_target = true;
		} else if (out->op != QW_OP_SUBMIT) {
			st = qw_fail(err, QW_E_ARG, "request: \"%.*s\" is not a field of %s",
				     (int)(k->type == MSGPACK_OBJECT_STR && k->via.str.size < 32
					   ? k->via.str.size : 8),
				     k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "(a key)", ops[which]);
		} else if (is_str(k, "messages")) {
			inputs++;
			st = messages(&d, v, out);
		} else if (is_str(k, "prompt")) {
			inputs++;
			st = text_field(&d, "prompt", v, &out->prompt, &out->prompt_len);
		} else if (is_str(k, "token_ids")) {
			inputs++;
			st = int_array(&d, "token_ids", v, lim->max_token_ids, &out->token_ids,
				       &out->n_token_ids);
		} else if (is_str(k, "images")) {
			st = images(&d, v, out);
		} else if (is_str(k, "max_tokens")) {
			if ((st = number(&d, "max_tokens", v, 1, lim->max_new_tokens, &x)) == QW_OK)
				out->max_tokens = (int)x;
		} else if (is_str(k, "temperature")) {
			st = number(&d, "temperature", v, 0, 100, &out->temperature);
		} else if (is_str(k, "top_p")) {
			st = number(&d, "top_p", v, 1e-9, 1, &out->top_p);
		} else if (is_str(k, "top_k")) {
			if ((st = number(&d, "top_k", v, 0, 1 << 20, &x)) == QW_OK)
				out->top_k = (int)x;
		} else if (is_str(k, "seed")) {
			if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
				st = bad(&d, "seed", "must be a non-negative integer");
			out->seed = v->via.u64;
			out->has_seed = true;
		} else if (is_str(k, "greedy")) {
			st = boolean(&d, "greedy", v, &out->greedy);
		} else if (is_str(k, "stream")) {
			st = boolean(&d, "stream", v, &out->stream);
		} else if (is_str(k, "ignore_eos")) {
			st = boolean(&d, "ignore_eos", v, &out->ignore_eos);
		} else if (is_str(k, "stop")) {
			st = stops(&d, v, out);
		} else {
			st = qw_fail(err, QW_E_ARG, "request: unknown field \"%.*s\"",
				     (int)(k->type == MSGPACK_OBJECT_STR && k->via.str.size < 32
					   ? k->via.str.size : 8),
				     k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "(a key)");
		}
	}
	if (st == QW_OK && out->op == QW_OP_SUBMIT && inputs != 1)
		st = qw_fail(err, QW_E_ARG, "request: submit needs exactly one of messages, prompt and "
			     "token_ids (%d given)", inputs);
	if (st == QW_OK && out->n_images && out->messages)
		st = bad(&d, "images", "go with prompt or token_ids; messages carry their images in "
			 "their content");
	if (st == QW_OK && out->op == QW_OP_CANCEL && !has_target)
		st = bad(&d, "request", "is required by cancel");
	if (st == QW_OK)
		return QW_OK;
fail:
	qw_request_free(out);
	return st;
}

void qw_request_free(qw_request *r)
{
	owned_free(r->owned);
	memset(r, 0, sizeof *r);
}

// ---------------------------------------------------------------------------------------
// encoding

static void pack_cstr(msgpack_packer *pk, const char *s, size_t len)
{
	msgpack_pack_str(pk, len);
	msgpack_pack_str_body(pk, s, len);
}

static void pack_key(msgpack_packer *pk, const char *k)
{
	pack_cstr(pk, k, strlen(k));
}

static qw_status finish(msgpack_sbuffer *sb, char **buf, size_t *len, qw_err *err)
{
	if (!sb->data) {
		msgpack_sbuffer_destroy(sb);
		return qw_fail(err, QW_E_NOMEM, "out of memory encoding a message");
	}
	*len = sb->size;
	*buf = msgpack_sbuffer_release(sb);
	return QW_OK;
}

qw_status qw_request_encode(const qw_request *r, char **buf, size_t *len, qw_err *err)
{
	static const char *const ops[] = {"submit", "status", "cancel", "shutdown"};
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	bool submit = r->op == QW_OP_SUBMIT;
	int n = 2 + (r->op == QW_OP_CANCEL);
	if (submit)
		n += 1 + (r->max_tokens > 0) + (r->temperature >= 0) + (r->top_p > 0) +
		     (r->top_k >= 0) + r->has_seed + r->greedy + !r->stream + (r->n_stop > 0) +
		     r->ignore_eos + (r->n_images > 0 && !r->messages);
	msgpack_pack_map(&pk, (size_t)n);
	pack_key(&pk, "v");
	msgpack_pack_int(&pk, QW_PROTOCOL_VERSION);
	pack_key(&pk, "op");
	pack_key(&pk, ops[r->op]);
	if (r->op == QW_OP_CANCEL) {
		pack_key(&pk, "request");
		msgpack_pack_uint64(&pk, r->target);
	}
	if (submit) {
		if (r->messages) {
			pack_key(&pk, "messages");
			msgpack_pack_array(&pk, (size_t)r->n_messages);
			for (int i = 0; i < r->n_messages; i++) {
				const qw_req_message *m = &r->messages[i];
				msgpack_pack_map(&pk, 2 + (m->reasoning != NULL));
				pack_key(&pk, "role");
				pack_cstr(&pk, m->role, m->role_len ? m->role_len : strlen(m->role));
				pack_key(&pk, "content");
				msgpack_pack_array(&pk, (size_t)m->n_items);
				for (int k = 0; k < m->n_items; k++) {
					const qw_item *it = &m->items[k];
					msgpack_pack_map(&pk, 2);
					pack_key(&pk, "type");
					pack_key(&pk, it->kind == QW_ITEM_TEXT ? "text" : "image");
					pack_key(&pk, it->kind == QW_ITEM_TEXT ? "text" : "data");
					if (it->kind == QW_ITEM_TEXT) {
						pack_cstr(&pk, it->data, it->len);
					} else {
						msgpack_pack_bin(&pk, it->len);
						msgpack_pack_bin_body(&pk, it->data, it->len);
					}
				}
				if (m->reasoning) {
					pack_key(&pk, "reasoning");
					pack_cstr(&pk, m->reasoning, m->reasoning_len);
				}
			}
		} else if (r->prompt) {
			pack_key(&pk, "prompt");
			pack_cstr(&pk, r->prompt, r->prompt_len);
		} else {
			pack_key(&pk, "token_ids");
			msgpack_pack_array(&pk, (size_t)r->n_token_ids);
			for (int i = 0; i < r->n_token_ids; i++)
				msgpack_pack_int32(&pk, r->token_ids[i]);
		}
		if (r->n_images > 0 && !r->messages) {
			pack_key(&pk, "images");
			msgpack_pack_array(&pk, (size_t)r->n_images);
			for (int i = 0; i < r->n_images; i++) {
				msgpack_pack_bin(&pk, r->images[i].len);
				msgpack_pack_bin_body(&pk, r->images[i].data, r->images[i].len);
			}
		}
		if (r->max_tokens > 0) {
			pack_key(&pk, "max_tokens");
			msgpack_pack_int(&pk, r->max_tokens);
		}
		if (r->temperature >= 0) {
			pack_key(&pk, "temperature");
			msgpack_pack_double(&pk, r->temperature);
		}
		if (r->top_p > 0) {
			pack_key(&pk, "top_p");
			msgpack_pack_double(&pk, r->top_p);
		}
		if (r->top_k >= 0) {
			pack_key(&pk, "top_k");
			msgpack_pack_int(&pk, r->top_k);
		}
		if (r->has_seed) {
			pack_key(&pk, "seed");
			msgpack_pack_uint64(&pk, r->seed);
		}
		if (r->greedy) {
			pack_key(&pk, "greedy");
			msgpack_pack_true(&pk);
		}
		if (!r->stream) {
			pack_key(&pk, "stream");
			msgpack_pack_false(&pk);
		}
		if (r->ignore_eos) {
			pack_key(&pk, "ignore_eos");
			msgpack_pack_true(&pk);
		}
		if (r->n_stop > 0) {
			pack_key(&pk, "stop");
			msgpack_pack_array(&pk, (size_t)r->n_stop);
			for (int i = 0; i < r->n_stop; i++)
				pack_cstr(&pk, r->stop[i], r->stop_len[i]);
		}
	}
	return finish(&sb, buf, len, err);
}

static const char *const reply_types[] = {"accepted", "chunk", "done", "error", "status", "ok"};

qw_status qw_reply_encode(const qw_reply *r, char **buf, size_t *len, qw_err *err)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	int n = 3;
	switch (r->type) {
	case QW_REPLY_CHUNK: n += 3; break;
	case QW_REPLY_DONE: n += 5; break;
	case QW_REPLY_ERROR: n += 2; break;
	case QW_REPLY_STATUS: n += 1; break;
	case QW_REPLY_OK: n += 1; break;
	default: break;
	}
	msgpack_pack_map(&pk, (size_t)n);
	pack_key(&pk, "v");
	msgpack_pack_int(&pk, QW_PROTOCOL_VERSION);
	pack_key(&pk, "type");
	pack_key(&pk, reply_types[r->type]);
	pack_key(&pk, "request");
	msgpack_pack_uint64(&pk, r->request);
	if (r->type == QW_REPLY_CHUNK) {
		pack_key(&pk, "text");
		pack_cstr(&pk, r->text ? r->text : "", r->text ? r->text_len : 0);
		pack_key(&pk, "reasoning");
		pack_cstr(&pk, r->reasoning ? r->reasoning : "", r->reasoning ? r->reasoning_len : 0);
		pack_key(&pk, "token_ids");
		msgpack_pack_array(&pk, (size_t)r->n_token_ids);
		for (int i = 0; i < r->n_token_ids; i++)
			msgpack_pack_int32(&pk, r->token_ids[i]);
	} else if (r->type == QW_REPLY_DONE) {
		pack_key(&pk, "finish_reason");
		pack_key(&pk, r->finish_reason ? r->finish_reason : "stop");
		pack_key(&pk, "prompt_tokens");
		msgpack_pack_int(&pk, r->prompt_tokens);
		pack_key(&pk, "completion_tokens");
		msgpack_pack_int(&pk, r->completion_tokens);
		pack_key(&pk, "ttft_ms");
		msgpack_pack_double(&pk, r->ttft_ms);
		pack_key(&pk, "tokens_per_s");
		msgpack_pack_double(&pk, r->tokens_per_s);
	} else if (r->type == QW_REPLY_ERROR) {
		pack_key(&pk, "code");
		pack_key(&pk, r->code ? r->code : "internal");
		pack_key(&pk, "message");
		pack_key(&pk, r->message ? r->message : "");
	} else if (r->type == QW_REPLY_OK) {
		pack_key(&pk, "message");
		pack_key(&pk, r->message ? r->message : "");
	} else if (r->type == QW_REPLY_STATUS) {
		pack_key(&pk, "json");
		pack_key(&pk, r->json ? r->json : "{}");
	}
	return finish(&sb, buf, len, err);
}

qw_status qw_reply_decode(const void *buf, size_t len, qw_reply *out, qw_err *err)
{
	memset(out, 0, sizeof *out);
	owned *o;
	qw_status st = unpack_map(buf, len, &o, "reply", err);
	if (st != QW_OK)
		return st;
	out->owned = o;
	const msgpack_object *map = &o->u.data;
	if ((st = check_version(map, "reply", err)) != QW_OK)
		goto fail;
	int type = -1;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key, *v = &map->via.map.ptr[i].val;
		bool str = v->type == MSGPACK_OBJECT_STR, uint = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
		bool num = uint || v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32;
		double x = uint ? (double)v->via.u64 : num ? v->via.f64 : 0;
		if (is_str(k, "type") && str) {
			for (int t = 0; t < 6; t++)
				if (is_str(v, reply_types[t]))
					type = t;
		} else if (is_str(k, "request") && uint) {
			out->request = v->via.u64;
		} else if (is_str(k, "text") && str) {
			out->text = own_cstr(o, v);
			out->text_len = v->via.str.size;
		} else if (is_str(k, "reasoning") && str) {
			out->reasoning = own_cstr(o, v);
			out->reasoning_len = v->via.str.size;
		} else if (is_str(k, "token_ids") && v->type == MSGPACK_OBJECT_ARRAY) {
			int32_t *ids = own(o, v->via.array.size * sizeof *ids);
			if (!ids) {
				st = qw_fail(err, QW_E_NOMEM, "out of memory");
				goto fail;
			}
			for (uint32_t j = 0; j < v->via.array.size; j++)
				ids[j] = (int32_t)v->via.array.ptr[j].via.u64;
			out->token_ids = ids;
			out->n_token_ids = (int)v->via.array.size;
		} else if (is_str(k, "finish_reason") && str) {
			out->finish_reason = own_cstr(o, v);
		} else if (is_str(k, "prompt_tokens") && uint) {
			out->prompt_tokens = (int)x;
		} else if (is_str(k, "completion_tokens") && uint) {
			out->completion_tokens = (int)x;
		} else if (is_str(k, "ttft_ms") && num) {
			out->ttft_ms = x;
		} else if (is_str(k, "tokens_per_s") && num) {
			out->tokens_per_s = x;
		} else if (is_str(k, "code") && str) {
			out->code = own_cstr(o, v);
		} else if (is_str(k, "message") && str) {
			out->message = own_cstr(o, v);
		} else if (is_str(k, "json") && str) {
			out->json = own_cstr(o, v);
		}
	}
	if (type < 0) {
		st = qw_fail(err, QW_E_ARG, "reply: no known \"type\"");
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
	owned_free(r->owned);
	memset(r, 0, sizeof *r);
}
