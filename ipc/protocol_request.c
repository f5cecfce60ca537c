/* protocol_request.c - msgpack encoding and checked decoding of requests.
 * See protocol.h and docs/protocol.md. */
#include "ipc/protocol.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/protocol_wire.h"

// ---------------------------------------------------------------------------------------
// request decoding: a table of fields for each kind of map

/* What a field holds, and so how it is read and checked. */
typedef enum field_type {
	FT_VERSION,      /* "v": checked before anything else */
	FT_OP,           /* "op": read before the rest, which depend on it */
	FT_TEXT,         /* a string counted against max_text_bytes: (const char *, size_t) */
	FT_NAME,         /* a string among `choices` ("a|b|c"): (const char *, size_t) */
	FT_NUMBER,       /* an integer or a float in [lo, hi]: double (and flag_at) */
	FT_INT,          /* a number in [lo, hi], kept as an int (and a bool set: flag_at) */
	FT_ID,           /* an integer >= 0: uint64_t, and a bool set when given (flag_at) */
	FT_BOOL,         /* true or false: bool */
	FT_NOT,          /* true or false, kept negated: bool (generation_prompt) */
	FT_THINKING,     /* true or false: qw_thinking ON or OFF */
	FT_IMAGE,        /* an encoded image: binary, of at most max_image_bytes: qw_item */
	FT_CONTENT,      /* a string, or an array of content items: a message's items */
	FT_TOOL_CALLS,   /* an array of {name, arguments}: a message's tool calls */
	FT_MESSAGES,     /* a non-empty array of messages */
	FT_TOKEN_IDS,    /* a non-empty array of token ids (0 .. INT32_MAX) */
	FT_IMAGES,       /* a non-empty array of encoded images */
	FT_STRINGS,      /* an array of non-empty strings of at most max_stop_bytes (stop) */
	FT_TEXTS,        /* an array of strings counted as text (tools) */
} field_type;

/* Which of the decoder's limits bounds a field: its number's upper end, or its array's
 * length. */
typedef enum field_limit {
	NO_LIMIT, LIM_NEW_TOKENS, LIM_MESSAGES, LIM_ITEMS, LIM_TOKEN_IDS, LIM_IMAGES, LIM_STOP,
	LIM_TOOLS,
} field_limit;

#define OP(o) (1u << (o))
#define ANY_OP 0xffu
#define SUBMIT OP(QW_OP_SUBMIT)
#define TOKENIZE OP(QW_OP_TOKENIZE)
#define DETOKENIZE OP(QW_OP_DETOKENIZE)
#define CANCEL OP(QW_OP_CANCEL)

/* One field of a map: its name, the ops it belongs to and those that require it, its type
 * and limits, and where it is stored in the decoded struct (offsets). */
typedef struct field {
	const char *name;
	unsigned ops, required_by;
	field_type type;
	double lo, hi;            /* FT_NUMBER, FT_INT */
	field_limit limit;        /* the upper end of a number (instead of hi), or an array's length */
	const char *choices;      /* FT_NAME */
	unsigned input;           /* the ops it is one of the inputs of (messages, prompt, ...) */
	size_t at;                /* the value (an array: its pointer) */
	size_t len_at;            /* a string's length, an array's count */
	size_t flag_at;           /* FT_ID, FT_INT: a bool set when given (0: none); FT_STRINGS:
				     lengths */
} field;

/* A kind of map: its fields, and how its errors name it. */
typedef struct map_kind {
	const char *what;         /* the field the map is in ("request" for the top) */
	const field *fields;
	int n_fields;
	const char *unknown;      /* said of a key that is none of the fields (NULL: named) */
	const char *needs;        /* said when a required field is missing (NULL: named) */
	const char *twice;        /* where a key given twice was */
} map_kind;

#define RQ(m) offsetof(qw_request, m)
static const field request_fields[] = {
	{.name = "v", .ops = ANY_OP, .type = FT_VERSION},
	{.name = "op", .ops = ANY_OP, .type = FT_OP},
	{.name = "request", .ops = CANCEL, .required_by = CANCEL, .type = FT_ID, .at = RQ(target)},
	{.name = "messages", .ops = SUBMIT | TOKENIZE, .type = FT_MESSAGES, .limit = LIM_MESSAGES,
	 .input = SUBMIT | TOKENIZE, .at = RQ(messages), .len_at = RQ(n_messages)},
	{.name = "prompt", .ops = SUBMIT | TOKENIZE, .type = FT_TEXT, .input = SUBMIT | TOKENIZE,
	 .at = RQ(prompt), .len_at = RQ(prompt_len)},
	{.name = "token_ids", .ops = SUBMIT | DETOKENIZE, .required_by = DETOKENIZE,
	 .type = FT_TOKEN_IDS, .limit = LIM_TOKEN_IDS, .input = SUBMIT, .at = RQ(token_ids),
	 .len_at = RQ(n_token_ids)},
	{.name = "images", .ops = SUBMIT | TOKENIZE, .type = FT_IMAGES, .limit = LIM_IMAGES,
	 .at = RQ(images), .len_at = RQ(n_images)},
	{.name = "max_tokens", .ops = SUBMIT, .type = FT_INT, .lo = 1, .limit = LIM_NEW_TOKENS,
	 .at = RQ(max_tokens)},
	{.name = "temperature", .ops = SUBMIT, .type = FT_NUMBER, .lo = 0, .hi = 100,
	 .at = RQ(temperature)},
	{.name = "top_p", .ops = SUBMIT, .type = FT_NUMBER, .lo = 1e-9, .hi = 1, .at = RQ(top_p)},
	{.name = "top_k", .ops = SUBMIT, .type = FT_INT, .lo = 0, .hi = 1 << 20, .at = RQ(top_k)},
	{.name = "min_p", .ops = SUBMIT, .type = FT_NUMBER, .lo = 0, .hi = 1, .at = RQ(min_p)},
	{.name = "repetition_penalty", .ops = SUBMIT, .type = FT_NUMBER, .lo = 1e-9, .hi = 100,
	 .at = RQ(repetition_penalty)},
	{.name = "frequency_penalty", .ops = SUBMIT, .type = FT_NUMBER, .lo = -2, .hi = 2,
	 .at = RQ(frequency_penalty)},
	{.name = "presence_penalty", .ops = SUBMIT, .type = FT_NUMBER, .lo = -2, .hi = 2,
	 .at = RQ(presence_penalty)},
	{.name = "logprobs", .ops = SUBMIT, .type = FT_INT, .lo = 0,
	 .hi = QW_PROTOCOL_MAX_LOGPROBS, .at = RQ(top_logprobs), .flag_at = RQ(logprobs)},
	{.name = "seed", .ops = SUBMIT, .type = FT_ID, .at = RQ(seed), .flag_at = RQ(has_seed)},
	{.name = "greedy", .ops = SUBMIT, .type = FT_BOOL, .at = RQ(greedy)},
	{.name = "stream", .ops = SUBMIT, .type = FT_BOOL, .at = RQ(stream)},
	{.name = "ignore_eos", .ops = SUBMIT, .type = FT_BOOL, .at = RQ(ignore_eos)},
	{.name = "stop", .ops = SUBMIT, .type = FT_STRINGS, .limit = LIM_STOP, .at = RQ(stop),
	 .len_at = RQ(n_stop), .flag_at = RQ(stop_len)},
	{.name = "tools", .ops = SUBMIT | TOKENIZE, .type = FT_TEXTS, .limit = LIM_TOOLS,
	 .at = RQ(tools), .len_at = RQ(n_tools), .flag_at = RQ(tools_len)},
	{.name = "thinking", .ops = SUBMIT | TOKENIZE, .type = FT_THINKING, .at = RQ(thinking)},
	{.name = "prompt_ids", .ops = SUBMIT, .type = FT_BOOL, .at = RQ(prompt_ids)},
	{.name = "generation_prompt", .ops = TOKENIZE, .type = FT_NOT,
	 .at = RQ(no_generation_prompt)},
};
static const map_kind request_map = {"request", request_fields,
				     sizeof request_fields / sizeof *request_fields, NULL, NULL,
				     ""};

#define MSG(m) offsetof(qw_req_message, m)
static const field message_fields[] = {
	{.name = "role", .ops = ANY_OP, .required_by = ANY_OP, .type = FT_NAME,
	 .choices = "system|user|assistant|tool", .at = MSG(role), .len_at = MSG(role_len)},
	{.name = "content", .ops = ANY_OP, .required_by = ANY_OP, .type = FT_CONTENT,
	 .limit = LIM_ITEMS, .at = MSG(items), .len_at = MSG(n_items)},
	{.name = "reasoning", .ops = ANY_OP, .type = FT_TEXT, .at = MSG(reasoning),
	 .len_at = MSG(reasoning_len)},
	{.name = "tool_calls", .ops = ANY_OP, .type = FT_TOOL_CALLS, .limit = LIM_ITEMS,
	 .at = MSG(tool_calls), .len_at = MSG(n_tool_calls)},
};
static const map_kind message_map = {"messages", message_fields, 4,
				     "take only role, content, reasoning and tool_calls",
				     "each needs a role and a content", " in a message"};

#define CALL(m) offsetof(qw_tool_call, m)
static const field call_fields[] = {
	{.name = "name", .ops = ANY_OP, .required_by = ANY_OP, .type = FT_TEXT, .at = CALL(name),
	 .len_at = CALL(name_len)},
	{.name = "arguments", .ops = ANY_OP, .required_by = ANY_OP, .type = FT_TEXT,
	 .at = CALL(arguments), .len_at = CALL(arguments_len)},
};
static const map_kind call_map = {"tool_calls", call_fields, 2, "take only name and arguments",
				  "each needs a name and arguments", " in a tool call"};

/* A content item as given: {type: text, text} or {type: image, data}. */
typedef struct item_in {
	const char *type, *text;
	size_t type_len, text_len;
	qw_item image;
} item_in;

#define ITEM(m) offsetof(item_in, m)
static const field item_fields[] = {
	{.name = "type", .ops = ANY_OP, .required_by = ANY_OP, .type = FT_NAME,
	 .choices = "text|image", .at = ITEM(type), .len_at = ITEM(type_len)},
	{.name = "text", .ops = ANY_OP, .type = FT_TEXT, .at = ITEM(text), .len_at = ITEM(text_len)},
	{.name = "data", .ops = ANY_OP, .type = FT_IMAGE, .at = ITEM(image)},
};
static const char item_shapes[] = "items are {type: text, text} or {type: image, data}";
static const map_kind item_map = {"content", item_fields, 3,
				  "items take only type, text and data", item_shapes,
				  " in a content item"};

static const char *const ops[] = {"submit", "status", "cancel", "shutdown", "tokenize",
				  "detokenize"};
enum { N_OPS = sizeof ops / sizeof *ops };

typedef struct decoder {
	const qw_limits *lim;
	qw_owned *o;
	unsigned op;       /* OP() of the request's op */
	size_t text;       /* text bytes so far */
	int images;
	qw_err *err;
} decoder;

static int limit_of(const qw_limits *l, field_limit which)
{
	switch (which) {
	case LIM_NEW_TOKENS: return l->max_new_tokens;
	case LIM_MESSAGES: return l->max_messages;
	case LIM_ITEMS: return l->max_items;
	case LIM_TOKEN_IDS: return l->max_token_ids;
	case LIM_IMAGES: return l->max_images;
	case LIM_STOP: return l->max_stop;
	case LIM_TOOLS: return l->max_tools;
	default: return 0;
	}
}

static qw_status bad(decoder *d, const char *name, const char *what)
{
	return qw_fail(d->err, QW_E_ARG, "request: \"%s\" %s", name, what);
}

/* A field over one of the limits. */
static qw_status over(decoder *d, const char *name, const char *what)
{
	return qw_fail(d->err, QW_E_LIMIT, "request: \"%s\" %s", name, what);
}

static qw_status oom(decoder *d)
{
	return qw_fail(d->err, QW_E_NOMEM, "out of memory");
}

/* An array field: checked for its count (1 .. its limit, or 0 .. when may_be_empty) and
 * given room (elem bytes an element) that lives with the request. */
static qw_status array_of(decoder *d, const field *f, const msgpack_object *v, size_t elem,
			  bool may_be_empty, const char *holds, void **out, int *n)
{
	int max = limit_of(d->lim, f->limit);
	char why[96];
	if (v->type != MSGPACK_OBJECT_ARRAY || (!may_be_empty && v->via.array.size == 0)) {
		snprintf(why, sizeof why, "must be a%s array of %s", may_be_empty ? "n" : " non-empty",
			 holds);
		return bad(d, f->name, why);
	}
	if (v->via.array.size > (uint32_t)max) {
		snprintf(why, sizeof why, "has too many %s (%u; at most %d)", holds,
			 v->via.array.size, max);
		return over(d, f->name, why);
	}
	*n = (int)v->via.array.size;
	if (!(*out = qw_own(d->o, (size_t)*n * elem)))
		return oom(d);
	return QW_OK;
}

static qw_status text_value(decoder *d, const char *name, const msgpack_object *v,
			    const char **out, size_t *len)
{
	if (v->type != MSGPACK_OBJECT_STR)
		return bad(d, name, "must be a string");
	if ((d->text += v->via.str.size) > d->lim->max_text_bytes) {
		char why[96];
		snprintf(why, sizeof why, "takes the request past its limit of %zu bytes of text",
			 d->lim->max_text_bytes);
		return over(d, name, why);
	}
	*out = v->via.str.ptr;
	*len = v->via.str.size;
	return QW_OK;
}

static qw_status image_value(decoder *d, const char *name, const msgpack_object *v,
			     qw_item *out)
{
	if (v->type != MSGPACK_OBJECT_BIN)
		return bad(d, name, "must be binary (the encoded image)");
	if (v->via.bin.size > d->lim->max_image_bytes || ++d->images > d->lim->max_images) {
		char why[128];
		snprintf(why, sizeof why, "is over the limits (%zu bytes an image, %d images a "
			 "request)", d->lim->max_image_bytes, d->lim->max_images);
		return over(d, name, why);
	}
	*out = (qw_item){QW_ITEM_IMAGE, v->via.bin.ptr, v->via.bin.size};
	return QW_OK;
}

/* A string that must be one of the field's choices ("a|b|c"); the refusal lists them. */
static qw_status name_value(decoder *d, const field *f, const msgpack_object *v,
			    const char **out, size_t *len)
{
	const char *c = f->choices;
	while (v->type == MSGPACK_OBJECT_STR) {
		size_t k = strcspn(c, "|");
		if (k == v->via.str.size && memcmp(c, v->via.str.ptr, k) == 0) {
			*out = v->via.str.ptr;
			*len = k;
			return QW_OK;
		}
		if (!c[k])
			break;
		c += k + 1;
	}
	char why[128] = "must be ";
	for (c = f->choices; *c;) {   /* "a, b or c" */
		size_t k = strcspn(c, "|"), at = strlen(why);
		const char *sep = !c[k] ? "" : strchr(c + k + 1, '|') ? ", " : " or ";
		snprintf(why + at, sizeof why - at, "%.*s%s", (int)k, c, sep);
		c += c[k] ? k + 1 : k;
	}
	return bad(d, f->name, why);
}

static qw_status decode_map(decoder *d, const map_kind *kind, const msgpack_object *map,
			    void *out, uint32_t *seen);

/* Each element of an array of maps of one kind, into room of elem bytes each. */
static qw_status maps_value(decoder *d, const field *f, const msgpack_object *v,
			    const map_kind *kind, size_t elem, bool may_be_empty,
			    const char *holds, void **out, int *n)
{
	qw_status st = array_of(d, f, v, elem, may_be_empty, holds, out, n);
	for (int i = 0; st == QW_OK && i < *n; i++) {
		uint32_t seen = 0;
		if (v->via.array.ptr[i].type != MSGPACK_OBJECT_MAP)
			return bad(d, f->name, "must hold maps");
		st = decode_map(d, kind, &v->via.array.ptr[i], (char *)*out + (size_t)i * elem,
				&seen);
	}
	return st;
}

static qw_status content_value(decoder *d, const field *f, const msgpack_object *v,
			       qw_req_message *m)
{
	if (v->type == MSGPACK_OBJECT_STR) {
		if (!(m->items = qw_own(d->o, sizeof *m->items)))
			return oom(d);
		m->n_items = 1;
		m->items[0].kind = QW_ITEM_TEXT;
		return text_value(d, "content", v, &m->items[0].data, &m->items[0].len);
	}
	if (v->type != MSGPACK_OBJECT_ARRAY)
		return bad(d, "content", "must be a string or an array of items");
	item_in *in;
	qw_status st = maps_value(d, f, v, &item_map, sizeof *in, true, "items", (void **)&in,
				  &m->n_items);
	if (st != QW_OK)
		return st;
	if (!(m->items = qw_own(d->o, (size_t)m->n_items * sizeof *m->items)))
		return oom(d);
	for (int i = 0; i < m->n_items; i++) {
		bool text = in[i].type_len == 4 && in[i].text && !in[i].image.data;
		bool image = in[i].type_len == 5 && in[i].image.data && !in[i].text;
		if (!text && !image)
			return bad(d, "content", item_shapes);
		m->items[i] = text ? (qw_item){QW_ITEM_TEXT, in[i].text, in[i].text_len} : in[i].image;
	}
	return QW_OK;
}

/* One value of field f into the struct at out. */
static qw_status decode_value(decoder *d, const field *f, const msgpack_object *v, char *out)
{
	qw_status st = QW_OK;
	switch (f->type) {
	case FT_VERSION:
	case FT_OP:
		return QW_OK;            /* read before the rest */
	case FT_TEXT:
		return text_value(d, f->name, v, (const char **)(out + f->at),
				  (size_t *)(out + f->len_at));
	case FT_NAME:
		return name_value(d, f, v, (const char **)(out + f->at), (size_t *)(out + f->len_at));
	case FT_NUMBER:
	case FT_INT: {
		double x, hi = f->limit ? limit_of(d->lim, f->limit) : f->hi;
		if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			x = (double)v->via.u64;
		else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			x = (double)v->via.i64;
		else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
			x = v->via.f64;
		else
			return bad(d, f->name, "must be a number");
		if (!(x >= f->lo && x <= hi)) {
			char why[96];
			snprintf(why, sizeof why, "must be in [%g, %g]", f->lo, hi);
			return bad(d, f->name, why);
		}
		if (f->type == FT_INT)
			*(int *)(out + f->at) = (int)x;
		else
			*(double *)(out + f->at) = x;
		if (f->flag_at)
			*(bool *)(out + f->flag_at) = true;
		return QW_OK;
	}
	case FT_ID:
		if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return bad(d, f->name, "must be a non-negative integer");
		*(uint64_t *)(out + f->at) = v->via.u64;
		if (f->flag_at)
			*(bool *)(out + f->flag_at) = true;
		return QW_OK;
	case FT_BOOL:
	case FT_NOT:
	case FT_THINKING: {
		if (v->type != MSGPACK_OBJECT_BOOLEAN)
			return bad(d, f->name, "must be true or false");
		bool b = v->via.boolean;
		if (f->type == FT_THINKING)
			*(qw_thinking *)(out + f->at) = b ? QW_THINKING_ON : QW_THINKING_OFF;
		else
			*(bool *)(out + f->at) = f->type == FT_NOT ? !b : b;
		return QW_OK;
	}
	case FT_IMAGE:
		return image_value(d, f->name, v, (qw_item *)(out + f->at));
	case FT_CONTENT:
		return content_value(d, f, v, (qw_req_message *)out);
	case FT_TOOL_CALLS:
		return maps_value(d, f, v, &call_map, sizeof(qw_tool_call), true, "calls",
				  (void **)(out + f->at), (int *)(out + f->len_at));
	case FT_MESSAGES:
		return maps_value(d, f, v, &message_map, sizeof(qw_req_message), false, "messages",
				  (void **)(out + f->at), (int *)(out + f->len_at));
	case FT_TOKEN_IDS: {
		int32_t **ids = (int32_t **)(out + f->at);
		int *n = (int *)(out + f->len_at);
		st = array_of(d, f, v, sizeof **ids, false, "token ids", (void **)ids, n);
		for (int i = 0; st == QW_OK && i < *n; i++) {
			const msgpack_object *e = &v->via.array.ptr[i];
			if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > INT32_MAX)
				return bad(d, f->name, "holds something that is not a token id");
			(*ids)[i] = (int32_t)e->via.u64;
		}
		return st;
	}
	case FT_IMAGES: {
		qw_item **items = (qw_item **)(out + f->at);
		int *n = (int *)(out + f->len_at);
		st = array_of(d, f, v, sizeof **items, false, "images", (void **)items, n);
		for (int i = 0; st == QW_OK && i < *n; i++)
			st = image_value(d, f->name, &v->via.array.ptr[i], &(*items)[i]);
		return st;
	}
	case FT_STRINGS:
	case FT_TEXTS: {
		const char ***s = (const char ***)(out + f->at);
		size_t **len = (size_t **)(out + f->flag_at);
		int *n = (int *)(out + f->len_at);
		st = array_of(d, f, v, sizeof **s, true, "strings", (void **)s, n);
		if (st == QW_OK && !(*len = qw_own(d->o, (size_t)*n * sizeof **len)))
			return oom(d);
		for (int i = 0; st == QW_OK && i < *n; i++) {
			const msgpack_object *e = &v->via.array.ptr[i];
			if (f->type == FT_TEXTS) {
				st = text_value(d, f->name, e, &(*s)[i], &(*len)[i]);
				continue;
			}
			if (e->type != MSGPACK_OBJECT_STR || e->via.str.size == 0 ||
			    e->via.str.size > d->lim->max_stop_bytes)
				return bad(d, f->name, "holds an empty, overlong or non-string entry");
			(*s)[i] = e->via.str.ptr;
			(*len)[i] = e->via.str.size;
		}
		return st;
	}
	}
	return st;
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

/* A map of the given kind into out: every key one of its fields, given once, a field of the
 * request's op, of its type and within its limits; then every field the op requires.
 * *seen gets a bit for each field given. */
static qw_status decode_map(decoder *d, const map_kind *kind, const msgpack_object *map,
			    void *out, uint32_t *seen)
{
	const char *names[32];
	for (int i = 0; i < kind->n_fields; i++)
		names[i] = kind->fields[i].name;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key;
		bool dup;
		int f = qw_mp_key(k, names, kind->n_fields, seen, &dup);
		if (f < 0 && kind->unknown)
			return bad(d, kind->what, kind->unknown);
		if (f < 0)
			return qw_fail(d->err, QW_E_ARG, "request: unknown field \"%.*s\"", key_len(k),
				       key_ptr(k));
		if (dup)
			return qw_fail(d->err, QW_E_ARG, "request: \"%s\" is given twice%s", names[f],
				       kind->twice);
		if (!(kind->fields[f].ops & d->op))
			return qw_fail(d->err, QW_E_ARG, "request: \"%s\" is not a field of %s",
				       names[f], ops[__builtin_ctz(d->op)]);
		qw_status st = decode_value(d, &kind->fields[f], &map->via.map.ptr[i].val, out);
		if (st != QW_OK)
			return st;
	}
	for (int i = 0; i < kind->n_fields; i++)
		if ((kind->fields[i].required_by & d->op) && !(*seen & (1u << i))) {
			if (kind->needs)
				return bad(d, kind->what, kind->needs);
			return qw_fail(d->err, QW_E_ARG, "request: \"%s\" is required by %s", names[i],
				       ops[__builtin_ctz(d->op)]);
		}
	return QW_OK;
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

/* The op, read first: every other field is checked against it.  A key given twice is
 * refused here, before any is acted on ({"op": "status", "op": "shutdown"} must not shut
 * the daemon down); the first unknown one ends the look (decoding the map names it). */
static qw_status read_op(decoder *d, const msgpack_object *map, qw_op *op)
{
	const char *names[32];
	for (int i = 0; i < request_map.n_fields; i++)
		names[i] = request_fields[i].name;
	const msgpack_object *v = NULL;
	uint32_t seen = 0;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		bool dup;
		int f = qw_mp_key(&map->via.map.ptr[i].key, names, request_map.n_fields, &seen, &dup);
		if (f < 0)
			break;
		if (dup)
			return qw_fail(d->err, QW_E_ARG, "request: \"%s\" is given twice", names[f]);
		if (request_fields[f].type == FT_OP)
			v = &map->via.map.ptr[i].val;
	}
	if (!v || v->type != MSGPACK_OBJECT_STR)
		return bad(d, "op", "is missing or not a string");
	for (int i = 0; i < N_OPS; i++)
		if (qw_mp_is_str(v, ops[i])) {
			*op = (qw_op)i;
			d->op = OP(i);
			return QW_OK;
		}
	return qw_fail(d->err, QW_E_ARG, "request: unknown op \"%.*s\" (submit, status, cancel, "
		       "shutdown, tokenize, detokenize)",
		       (int)(v->via.str.size > 32 ? 32 : v->via.str.size), v->via.str.ptr);
}

/* What holds across fields once they are read. */
static qw_status complete(decoder *d, const qw_request *out, uint32_t seen)
{
	int inputs = 0;
	for (int i = 0; i < request_map.n_fields; i++)
		inputs += (request_fields[i].input & d->op) && (seen & (1u << i));
	if (out->op == QW_OP_SUBMIT && inputs != 1)
		return qw_fail(d->err, QW_E_ARG, "request: submit needs exactly one of messages, "
			       "prompt and token_ids (%d given)", inputs);
	if (out->op == QW_OP_TOKENIZE && inputs != 1)
		return qw_fail(d->err, QW_E_ARG, "request: tokenize needs exactly one of messages "
			       "and prompt (%d given)", inputs);
	for (int i = 0; i < out->n_messages; i++) {
		const qw_req_message *m = &out->messages[i];
		if (m->n_tool_calls && !(m->role_len == 9 && !memcmp(m->role, "assistant", 9)))
			return bad(d, "tool_calls", "belong to assistant messages");
	}
	if (out->n_images && out->messages)
		return bad(d, "images", "go with prompt or token_ids; messages carry their images in "
			   "their content");
	if ((out->n_tools || out->thinking) && !out->messages)
		return bad(d, out->n_tools ? "tools" : "thinking", "go with messages (the chat "
			   "template renders them)");
	return QW_OK;
}

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
	decoder d = {lim, o, 0, 0, 0, err};
	uint32_t seen = 0;
	if ((st = qw_mp_check_version(map, "request", err)) == QW_OK &&
	    (st = read_op(&d, map, &out->op)) == QW_OK &&
	    (st = decode_map(&d, &request_map, map, out, &seen)) == QW_OK)
		st = complete(&d, out, seen);
	if (st != QW_OK)
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
	const struct {
		const char *key;
		double v;
		bool given;
	} extra[] = {{"min_p", r->min_p, r->min_p > 0},
		     {"repetition_penalty", r->repetition_penalty, r->repetition_penalty > 0},
		     {"frequency_penalty", r->frequency_penalty, r->frequency_penalty != 0},
		     {"presence_penalty", r->presence_penalty, r->presence_penalty != 0}};
	for (size_t i = 0; i < sizeof extra / sizeof *extra; i++)
		if (extra[i].given) {
			qw_mp_pack_key(pk, extra[i].key);
			msgpack_pack_double(pk, extra[i].v);
		}
	if (r->logprobs) {
		qw_mp_pack_key(pk, "logprobs");
		msgpack_pack_int(pk, r->top_logprobs);
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
		     r->ignore_eos + r->prompt_ids + (r->min_p > 0) + (r->repetition_penalty > 0) +
		     (r->frequency_penalty != 0) + (r->presence_penalty != 0) + r->logprobs;
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
