/* protocol_request.c - msgpack encoding and checked decoding of requests.
 * See protocol.h and docs/protocol.md. */
#include "ipc/protocol.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/protocol_wire.h"

// ---------------------------------------------------------------------------------------
// request decoding

typedef struct decoder {
	const qw_limits *lim;
	qw_owned *o;
	size_t text;       /* text bytes so far */
	int images;
	qw_err *err;
} decoder;

static qw_status bad(decoder *d, const char *field, const char *what)
{
	return qw_fail(d->err, QW_E_ARG, "request: \"%s\" %s", field, what);
}

/* A field over one of the limits. */
static qw_status over(decoder *d, const char *field, const char *what)
{
	return qw_fail(d->err, QW_E_LIMIT, "request: \"%s\" %s", field, what);
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
		return over(d, field, what);
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
		return over(d, field, what);
	}
	out->kind = QW_ITEM_IMAGE;
	out->data = data->via.bin.ptr;
	out->len = data->via.bin.size;
	return QW_OK;
}

static qw_status content(decoder *d, const msgpack_object *v, qw_req_message *m)
{
	if (v->type == MSGPACK_OBJECT_STR) {
		m->items = qw_own(d->o, sizeof *m->items);
		if (!m->items)
			return qw_fail(d->err, QW_E_NOMEM, "out of memory");
		m->n_items = 1;
		m->items[0].kind = QW_ITEM_TEXT;
		return text_field(d, "content", v, &m->items[0].data, &m->items[0].len);
	}
	if (v->type != MSGPACK_OBJECT_ARRAY)
		return bad(d, "content", "must be a string or an array of items");
	if ((int)v->via.array.size > d->lim->max_items)
		return over(d, "content", "has too many items");
	m->n_items = (int)v->via.array.size;
	m->items = qw_own(d->o, (size_t)m->n_items * sizeof *m->items);
	if (!m->items)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < m->n_items; i++) {
		const msgpack_object *it = &v->via.array.ptr[i];
		static const char *const names[] = {"type", "text", "data"};
		const msgpack_object *found[3] = {NULL, NULL, NULL};
		uint32_t seen = 0;
		if (it->type != MSGPACK_OBJECT_MAP)
			return bad(d, "content", "items must be maps");
		for (uint32_t k = 0; k < it->via.map.size; k++) {
			bool dup;
			int f = qw_mp_key(&it->via.map.ptr[k].key, names, 3, &seen, &dup);
			if (f < 0)
				return bad(d, "content", "items take only type, text and data");
			if (dup)
				return bad(d, names[f], "is given twice in a content item");
			found[f] = &it->via.map.ptr[k].val;
		}
		const msgpack_object *type = found[0], *text = found[1], *data = found[2];
		if (type && qw_mp_is_str(type, "text") && text) {
			m->items[i].kind = QW_ITEM_TEXT;

			qw_status st = text_field(d, "text", text, &m->items[i].data, &m->items[i].len);
			if (st != QW_OK)
				return st;
		} else if (type && qw_mp_is_str(type, "image") && data) {
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
		return over(d, "images", "has too many images");
	r->n_images = (int)v->via.array.size;
	r->images = qw_own(d->o, (size_t)r->n_images * sizeof *r->images);
	if (!r->images)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < r->n_images; i++) {
		qw_status st = image_bytes(d, "images", &v->via.array.ptr[i], &r->images[i]);
		if (st != QW_OK)
			return st;
	}
	return QW_OK;
}

/* An assistant message's tool calls: [{name, arguments}], both strings. */
static qw_status tool_calls(decoder *d, const msgpack_object *v, qw_req_message *m)
{
	if (v->type != MSGPACK_OBJECT_ARRAY || (int)v->via.array.size > d->lim->max_items) {
		char what[64];
		snprintf(what, sizeof what, "must be an array of at most %d calls", d->lim->max_items);
		return bad(d, "tool_calls", what);
	}
	m->n_tool_calls = (int)v->via.array.size;
	m->tool_calls = qw_own(d->o, (size_t)m->n_tool_calls * sizeof *m->tool_calls);
	if (!m->tool_calls)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < m->n_tool_calls; i++) {
		const msgpack_object *c = &v->via.array.ptr[i];
		qw_tool_call *out = &m->tool_calls[i];
		static const char *const names[] = {"name", "arguments"};
		uint32_t seen = 0;
		if (c->type != MSGPACK_OBJECT_MAP)
			return bad(d, "tool_calls", "must hold maps {name, arguments}");
		for (uint32_t k = 0; k < c->via.map.size; k++) {
			const msgpack_object_kv *kv = &c->via.map.ptr[k];
			bool dup;
			int f = qw_mp_key(&kv->key, names, 2, &seen, &dup);
			qw_status st;
			if (f < 0)
				return bad(d, "tool_calls", "take only name and arguments");
			if (dup)
				return bad(d, names[f], "is given twice in a tool call");
			if (f == 0)
				st = text_field(d, "name", &kv->val, &out->name, &out->name_len);
			else
				st = text_field(d, "arguments", &kv->val, &out->arguments,
						&out->arguments_len);
			if (st != QW_OK)
				return st;
		}
		if (!out->name || !out->arguments)
			return bad(d, "tool_calls", "each needs a name and arguments");
	}
	return QW_OK;
}

static qw_status messages(decoder *d, const msgpack_object *v, qw_request *r)
{
	if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0)
		return bad(d, "messages", "must be a non-empty array");
	if ((int)v->via.array.size > d->lim->max_messages)
		return over(d, "messages", "has too many messages");
	r->n_messages = (int)v->via.array.size;
	r->messages = qw_own(d->o, (size_t)r->n_messages * sizeof *r->messages);
	if (!r->messages)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < r->n_messages; i++) {
		const msgpack_object *m = &v->via.array.ptr[i];
		qw_req_message *out = &r->messages[i];
		if (m->type != MSGPACK_OBJECT_MAP)
			return bad(d, "messages", "must hold maps");
		static const char *const names[] = {"role", "content", "reasoning", "tool_calls"};
		uint32_t seen = 0;
		for (uint32_t k = 0; k < m->via.map.size; k++) {
			const msgpack_object_kv *kv = &m->via.map.ptr[k];
			bool dup;
			int f = qw_mp_key(&kv->key, names, 4, &seen, &dup);
			qw_status st = QW_OK;
			if (f < 0)
				return bad(d, "messages", "take only role, content, reasoning and tool_calls");
			if (dup)
				return bad(d, names[f], "is given twice in a message");
			if (f == 0) {
				if (!qw_mp_is_str(&kv->val, "system") && !qw_mp_is_str(&kv->val, "user") &&
				    !qw_mp_is_str(&kv->val, "assistant") && !qw_mp_is_str(&kv->val, "tool"))
					return bad(d, "role", "must be system, user, assistant or tool");
				out->role = kv->val.via.str.ptr;
				out->role_len = kv->val.via.str.size;
			} else if (f == 1) {
				st = content(d, &kv->val, out);
			} else if (f == 2) {
				st = text_field(d, "reasoning", &kv->val, &out->reasoning, &out->reasoning_len);
			} else {
				st = tool_calls(d, &kv->val, out);
			}
			if (st != QW_OK)
				return st;
		}
		bool has_content = seen & 2u;
		if (!out->role || !has_content)
			return bad(d, "messages", "each needs a role and a content");
		if (out->n_tool_calls && !(out->role_len == 9 && !memcmp(out->role, "assistant", 9)))
			return bad(d, "tool_calls", "belong to assistant messages");
	}
	return QW_OK;
}

static qw_status int_array(decoder *d, const char *field, const msgpack_object *v, int max,
			   int32_t **out, int *n)
{
	if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0)
		return bad(d, field, "must be a non-empty array of token ids");
	if ((int)v->via.array.size > max)
		return over(d, field, "has too many token ids");
	*n = (int)v->via.array.size;
	*out = qw_own(d->o, (size_t)*n * sizeof **out);
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
	if (v->type != MSGPACK_OBJECT_ARRAY || (int)v->via.array.size > d->lim->max_stop) {
		char what[64];
		snprintf(what, sizeof what, "must be an array of at most %d strings", d->lim->max_stop);
		return bad(d, "stop", what);
	}
	r->n_stop = (int)v->via.array.size;
	r->stop = qw_own(d->o, (size_t)r->n_stop * sizeof *r->stop);
	r->stop_len = qw_own(d->o, (size_t)r->n_stop * sizeof *r->stop_len);
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

static qw_status tools(decoder *d, const msgpack_object *v, qw_request *r)
{
	if (v->type != MSGPACK_OBJECT_ARRAY || (int)v->via.array.size > d->lim->max_tools) {
		char what[64];
		snprintf(what, sizeof what, "must be an array of at most %d strings", d->lim->max_tools);
		return bad(d, "tools", what);
	}
	r->n_tools = (int)v->via.array.size;
	r->tools = qw_own(d->o, (size_t)r->n_tools * sizeof *r->tools);
	r->tools_len = qw_own(d->o, (size_t)r->n_tools * sizeof *r->tools_len);
	if (!r->tools || !r->tools_len)
		return qw_fail(d->err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < r->n_tools; i++) {
		qw_status st = text_field(d, "tools", &v->via.array.ptr[i], &r->tools[i],
					  &r->tools_len[i]);
		if (st != QW_OK)
			return st;
	}
	return QW_OK;
}

static const char *const ops[] = {"submit", "status", "cancel", "shutdown", "tokenize",
				  "detokenize"};
enum { N_OPS = sizeof ops / sizeof *ops };

/* Which ops take a field (besides v and op). */
static bool field_of(qw_op op, const msgpack_object *k)
{
	static const char *const submit[] = {
		"messages", "prompt", "token_ids", "images", "max_tokens", "temperature", "top_p",
		"top_k", "seed", "greedy", "stream", "ignore_eos", "stop", "tools", "thinking",
		"prompt_ids", NULL};
	static const char *const tokenize[] = {
		"messages", "prompt", "images", "tools", "thinking", "generation_prompt", NULL};
	static const char *const detokenize[] = {"token_ids", NULL};
	static const char *const cancel[] = {"request", NULL};
	const char *const *list = op == QW_OP_SUBMIT ? submit : op == QW_OP_TOKENIZE ? tokenize
				: op == QW_OP_DETOKENIZE ? detokenize : op == QW_OP_CANCEL ? cancel
				: NULL;
	for (int i = 0; list && list[i]; i++)
		if (qw_mp_is_str(k, list[i]))
			return true;
	return false;
}

/* One field of a request (field_of said it belongs to the op). */
static qw_status field(decoder *d, const msgpack_object *k, const msgpack_object *v,
		       qw_request *out, int *inputs)
{
	const qw_limits *lim = d->lim;
	qw_status st = QW_OK;
	double x;
	bool b = false;
	if (qw_mp_is_str(k, "request")) {
		if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return bad(d, "request", "must be a request id");
		out->target = v->via.u64;
	} else if (qw_mp_is_str(k, "messages")) {
		(*inputs)++;
		st = messages(d, v, out);
	} else if (qw_mp_is_str(k, "prompt")) {
		(*inputs)++;
		st = text_field(d, "prompt", v, &out->prompt, &out->prompt_len);
	} else if (qw_mp_is_str(k, "token_ids")) {
		(*inputs)++;
		st = int_array(d, "token_ids", v, lim->max_token_ids, &out->token_ids,
			       &out->n_token_ids);
	} else if (qw_mp_is_str(k, "images")) {
		st = images(d, v, out);
	} else if (qw_mp_is_str(k, "max_tokens")) {
		if ((st = number(d, "max_tokens", v, 1, lim->max_new_tokens, &x)) == QW_OK)
			out->max_tokens = (int)x;
	} else if (qw_mp_is_str(k, "temperature")) {
		st = number(d, "temperature", v, 0, 100, &out->temperature);
	} else if (qw_mp_is_str(k, "top_p")) {
		st = number(d, "top_p", v, 1e-9, 1, &out->top_p);
	} else if (qw_mp_is_str(k, "top_k")) {
		if ((st = number(d, "top_k", v, 0, 1 << 20, &x)) == QW_OK)
			out->top_k = (int)x;
	} else if (qw_mp_is_str(k, "seed")) {
		if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return bad(d, "seed", "must be a non-negative integer");
		out->seed = v->via.u64;
		out->has_seed = true;
	} else if (qw_mp_is_str(k, "greedy")) {
		st = boolean(d, "greedy", v, &out->greedy);
	} else if (qw_mp_is_str(k, "stream")) {
		st = boolean(d, "stream", v, &out->stream);
	} else if (qw_mp_is_str(k, "ignore_eos")) {
		st = boolean(d, "ignore_eos", v, &out->ignore_eos);
	} else if (qw_mp_is_str(k, "stop")) {
		st = stops(d, v, out);
	} else if (qw_mp_is_str(k, "tools")) {
		st = tools(d, v, out);
	} else if (qw_mp_is_str(k, "thinking")) {
		if ((st = boolean(d, "thinking", v, &b)) == QW_OK)
			out->thinking = b ? QW_THINKING_ON : QW_THINKING_OFF;
	} else if (qw_mp_is_str(k, "prompt_ids")) {
		st = boolean(d, "prompt_ids", v, &out->prompt_ids);
	} else if (qw_mp_is_str(k, "generation_prompt")) {
		if ((st = boolean(d, "generation_prompt", v, &b)) == QW_OK)
			out->no_generation_prompt = !b;
	}
	return st;
}

/* What each op needs once its fields are read. */
static qw_status complete(decoder *d, qw_request *out, int inputs, bool has_target)
{
	switch (out->op) {
	case QW_OP_SUBMIT:
		if (inputs != 1)
			return qw_fail(d->err, QW_E_ARG, "request: submit needs exactly one of messages, "
				       "prompt and token_ids (%d given)", inputs);
		break;
	case QW_OP_TOKENIZE:
		if (inputs != 1)
			return qw_fail(d->err, QW_E_ARG, "request: tokenize needs exactly one of "
				       "messages and prompt (%d given)", inputs);
		break;
	case QW_OP_DETOKENIZE:
		if (!out->token_ids)
			return bad(d, "token_ids", "is required by detokenize");
		break;
	case QW_OP_CANCEL:
		if (!has_target)
			return bad(d, "request", "is required by cancel");
		break;
	default:
		break;
	}
	if (out->n_images && out->messages)
		return bad(d, "images", "go with prompt or token_ids; messages carry their images in "
			   "their content");
	if ((out->n_tools || out->thinking) && !out->messages)
		return bad(d, out->n_tools ? "tools" : "thinking", "go with messages (the chat "
			   "template renders them)");
	return QW_OK;
}

/* A key for a message: at most 31 bytes of it. */
static int key_len(const msgpack_object *k)
{
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size < 32 ? (int)k->via.str.size : 8;
}

static const char *key_ptr(const msgpack_object *k)
{
	return k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "(a key)";
}

/* The most msgpack elements (map keys and values, array entries) a request within lim can
 * hold: its fields, the token ids, images, stop strings and tools, and each message with its
 * four fields, its content items and its tool calls (an item or a call: the array's entry
 * and at most three pairs).  With the default limits about 1.2 million, which msgpack-c
 * unpacks into 28 MB. */
static uint64_t max_request_elements(const qw_limits *lim)
{
	uint64_t message = 1 + 8 + 2 * (uint64_t)lim->max_items * 7;
	return 2 * 32 + (uint64_t)lim->max_token_ids + (uint64_t)lim->max_images +
	       (uint64_t)lim->max_stop + (uint64_t)lim->max_tools +
	       (uint64_t)lim->max_messages * message;
}

/* Every field of any op: a field given twice is refused before any is acted on
 * ({"op": "status", "op": "shutdown"} must not shut the daemon down). */
static const char *const all_fields[] = {
	"v", "op", "request", "messages", "prompt", "token_ids", "images", "max_tokens",
	"temperature", "top_p", "top_k", "seed", "greedy", "stream", "ignore_eos", "stop", "tools",
	"thinking", "prompt_ids", "generation_prompt"};
enum { N_FIELDS = sizeof all_fields / sizeof *all_fields };

qw_status qw_request_decode(const void *buf, size_t len, const qw_limits *lim, qw_request *out,
			    qw_err *err)
{
	memset(out, 0, sizeof *out);
	qw_limits def = QW_LIMITS_DEFAULT;
	lim = lim ? lim : &def;
	if (len > lim->max_message)
		return qw_fail(err, QW_E_LIMIT, "request of %zu bytes is over the %zu-byte limit", len,
			       lim->max_message);
	qw_owned *o;
	qw_status st = qw_mp_unpack_map(buf, len, max_request_elements(lim), &o, "request", err);
	if (st != QW_OK)
		return st;
	out->owned = o;
	out->temperature = -1;
	out->top_k = -1;
	out->stream = true;
	const msgpack_object *map = &o->u.data;
	if ((st = qw_mp_check_version(map, "request", err)) != QW_OK)
		goto fail;
	decoder d = {lim, o, 0, 0, err};
	const msgpack_object *op = NULL;
	uint32_t seen = 0;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		bool dup;
		int f = qw_mp_key(&map->via.map.ptr[i].key, all_fields, N_FIELDS, &seen, &dup);
		if (f < 0)
			break;   /* an unknown field: named below */
		if (dup) {
			st = qw_fail(err, QW_E_ARG, "request: \"%s\" is given twice", all_fields[f]);
			goto fail;
		}
		if (f == 1)
			op = &map->via.map.ptr[i].val;
	}
	if (!op || op->type != MSGPACK_OBJECT_STR) {
		st = bad(&d, "op", "is missing or not a string");
		goto fail;
	}
	int which = -1;
	for (int i = 0; i < N_OPS; i++)
		if (qw_mp_is_str(op, ops[i]))
			which = i;
	if (which < 0) {
		st = qw_fail(err, QW_E_ARG, "request: unknown op \"%.*s\" (submit, status, cancel, "
			     "shutdown, tokenize, detokenize)",
			     (int)(op->via.str.size > 32 ? 32 : op->via.str.size), op->via.str.ptr);
		goto fail;
	}
	out->op = (qw_op)which;
	int inputs = 0;
	bool has_target = false;
	for (uint32_t i = 0; i < map->via.map.size && st == QW_OK; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key, *v = &map->via.map.ptr[i].val;
		if (qw_mp_is_str(k, "v") || qw_mp_is_str(k, "op"))
			continue;
		if (!field_of(out->op, k)) {
			bool known = false;
			for (int other = 0; other < N_OPS && !known; other++)
				known = field_of((qw_op)other, k);
			st = known ? qw_fail(err, QW_E_ARG, "request: \"%.*s\" is not a field of %s",
					     key_len(k), key_ptr(k), ops[which])
				   : qw_fail(err, QW_E_ARG, "request: unknown field \"%.*s\"",
					     key_len(k), key_ptr(k));
			break;
		}
		has_target |= qw_mp_is_str(k, "request");
		st = field(&d, k, v, out, &inputs);
	}
	if (st == QW_OK)
		st = complete(&d, out, inputs, has_target);
	if (st == QW_OK)
		return QW_OK;
fail:
	qw_request_free(out);
	return st;
}

void qw_request_free(qw_request *r)
{
	qw_owned_free(r->owned);
	memset(r, 0, sizeof *r);
}

// ---------------------------------------------------------------------------------------
// encoding

static void pack_messages(msgpack_packer *pk, const qw_request *r)
{
	qw_mp_pack_key(pk, "messages");
	msgpack_pack_array(pk, (size_t)r->n_messages);
	for (int i = 0; i < r->n_messages; i++) {
		const qw_req_message *m = &r->messages[i];
		msgpack_pack_map(pk, 2 + (m->reasoning != NULL) + (m->n_tool_calls > 0));
		qw_mp_pack_key(pk, "role");
		qw_mp_pack_str(pk, m->role, m->role_len ? m->role_len : strlen(m->role));
		qw_mp_pack_key(pk, "content");
		msgpack_pack_array(pk, (size_t)m->n_items);
		for (int k = 0; k < m->n_items; k++) {
			const qw_item *it = &m->items[k];
			msgpack_pack_map(pk, 2);
			qw_mp_pack_key(pk, "type");
			qw_mp_pack_key(pk, it->kind == QW_ITEM_TEXT ? "text" : "image");
			qw_mp_pack_key(pk, it->kind == QW_ITEM_TEXT ? "text" : "data");
			if (it->kind == QW_ITEM_TEXT) {
				qw_mp_pack_str(pk, it->data, it->len);
			} else {
				msgpack_pack_bin(pk, it->len);
				msgpack_pack_bin_body(pk, it->data, it->len);
			}
		}
		if (m->reasoning) {
			qw_mp_pack_key(pk, "reasoning");
			qw_mp_pack_str(pk, m->reasoning, m->reasoning_len);
		}
		if (m->n_tool_calls > 0) {
			qw_mp_pack_key(pk, "tool_calls");
			msgpack_pack_array(pk, (size_t)m->n_tool_calls);
			for (int k = 0; k < m->n_tool_calls; k++) {
				msgpack_pack_map(pk, 2);
				qw_mp_pack_key(pk, "name");
				qw_mp_pack_str(pk, m->tool_calls[k].name, m->tool_calls[k].name_len);
				qw_mp_pack_key(pk, "arguments");
				qw_mp_pack_str(pk, m->tool_calls[k].arguments,
					       m->tool_calls[k].arguments_len);
			}
		}
	}
}

static void pack_strs(msgpack_packer *pk, const char *key, const char *const *s,
		      const size_t *len, int n)
{
	qw_mp_pack_key(pk, key);
	msgpack_pack_array(pk, (size_t)n);
	for (int i = 0; i < n; i++)
		qw_mp_pack_str(pk, s[i], len[i]);
}

/* The input (messages, prompt or token ids) and what goes with it. */
static void pack_input(msgpack_packer *pk, const qw_request *r)
{
	if (r->messages) {
		pack_messages(pk, r);
	} else if (r->prompt) {
		qw_mp_pack_key(pk, "prompt");
		qw_mp_pack_str(pk, r->prompt, r->prompt_len);
	} else {
		qw_mp_pack_key(pk, "token_ids");
		qw_mp_pack_ids(pk, r->token_ids, r->n_token_ids);
	}
	if (r->n_images > 0 && !r->messages) {
		qw_mp_pack_key(pk, "images");
		msgpack_pack_array(pk, (size_t)r->n_images);
		for (int i = 0; i < r->n_images; i++) {
			msgpack_pack_bin(pk, r->images[i].len);
			msgpack_pack_bin_body(pk, r->images[i].data, r->images[i].len);
		}
	}
	if (r->n_tools > 0)
		pack_strs(pk, "tools", r->tools, r->tools_len, r->n_tools);
	if (r->thinking) {
		qw_mp_pack_key(pk, "thinking");
		if (r->thinking == QW_THINKING_OFF)
			msgpack_pack_false(pk);
		else
			msgpack_pack_true(pk);
	}
}

static void pack_bool(msgpack_packer *pk, const char *key, bool v)
{
	qw_mp_pack_key(pk, key);
	if (v)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

/* A submit's settings, each only when it differs from the default. */
static void pack_settings(msgpack_packer *pk, const qw_request *r)
{
	if (r->max_tokens > 0) {
		qw_mp_pack_key(pk, "max_tokens");
		msgpack_pack_int(pk, r->max_tokens);
	}
	if (r->temperature >= 0) {
		qw_mp_pack_key(pk, "temperature");
		msgpack_pack_double(pk, r->temperature);
	}
	if (r->top_p > 0) {
		qw_mp_pack_key(pk, "top_p");
		msgpack_pack_double(pk, r->top_p);
	}
	if (r->top_k >= 0) {
		qw_mp_pack_key(pk, "top_k");
		msgpack_pack_int(pk, r->top_k);
	}
	if (r->has_seed) {
		qw_mp_pack_key(pk, "seed");
		msgpack_pack_uint64(pk, r->seed);
	}
	if (r->greedy)
		pack_bool(pk, "greedy", true);
	if (!r->stream)
		pack_bool(pk, "stream", false);
	if (r->ignore_eos)
		pack_bool(pk, "ignore_eos", true);
	if (r->n_stop > 0)
		pack_strs(pk, "stop", r->stop, r->stop_len, r->n_stop);
	if (r->prompt_ids)
		pack_bool(pk, "prompt_ids", true);
}

qw_status qw_request_encode(const qw_request *r, char **buf, size_t *len, qw_err *err)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	bool input = r->op == QW_OP_SUBMIT || r->op == QW_OP_TOKENIZE || r->op == QW_OP_DETOKENIZE;
	int n = 2 + (r->op == QW_OP_CANCEL);
	if (input)
		n += 1 + (r->n_images > 0 && !r->messages) + (r->n_tools > 0) + (r->thinking != 0);
	if (r->op == QW_OP_SUBMIT)
		n += (r->max_tokens > 0) + (r->temperature >= 0) + (r->top_p > 0) +
		     (r->top_k >= 0) + r->has_seed + r->greedy + !r->stream + (r->n_stop > 0) +
		     r->ignore_eos + r->prompt_ids;
	if (r->op == QW_OP_TOKENIZE)
		n += r->no_generation_prompt;
	msgpack_pack_map(&pk, (size_t)n);
	qw_mp_pack_key(&pk, "v");
	msgpack_pack_int(&pk, QW_PROTOCOL_VERSION);
	qw_mp_pack_key(&pk, "op");
	qw_mp_pack_key(&pk, ops[r->op]);
	if (r->op == QW_OP_CANCEL) {
		qw_mp_pack_key(&pk, "request");
		msgpack_pack_uint64(&pk, r->target);
	}
	if (input)
		pack_input(&pk, r);
	if (r->op == QW_OP_SUBMIT)
		pack_settings(&pk, r);
	if (r->op == QW_OP_TOKENIZE && r->no_generation_prompt)
		pack_bool(&pk, "generation_prompt", false);
	return qw_mp_finish(&sb, buf, len, err);
}
