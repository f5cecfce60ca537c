/* logprobs.c - log-probabilities in OpenAI's shapes.  See logprobs.h. */
#include "http/logprobs.h"

#include <math.h>
#include <stdio.h>

#include "cli/json_text.h"

/* vLLM's stand-in for -inf */
static json_t *logprob_json(double x)
{
	return json_real(isinf(x) && x < 0 ? -9999.0 : x);
}

/* A token as text: its bytes (U+FFFD for what is not UTF-8), or "token_id:N". */
static json_t *token_json(int32_t id, const char *bytes, size_t len)
{
	if (!bytes) {
		char s[32];
		snprintf(s, sizeof s, "token_id:%d", id);
		return json_string(s);
	}
	return qw_json_text(bytes, len);
}

static json_t *bytes_json(const char *bytes, size_t len)
{
	if (!bytes)
		return json_null();
	json_t *a = json_array();
	for (size_t i = 0; a && i < len; i++)
		json_array_append_new(a, json_integer((unsigned char)bytes[i]));
	return a;
}

/* {token, logprob, bytes} */
static json_t *entry_json(int32_t id, double logprob, const char *bytes, size_t len)
{
	return json_pack("{s:o, s:o, s:o}", "token", token_json(id, bytes, len), "logprob",
			 logprob_json(logprob), "bytes", bytes_json(bytes, len));
}

/* Characters of a JSON string (its UTF-8 bytes that begin one). */
static long long characters(const json_t *s)
{
	long long n = 0;
	const char *p = json_string_value(s);
	for (size_t i = 0; p && i < json_string_length(s); i++)
		n += ((unsigned char)p[i] & 0xc0) != 0x80;
	return n;
}

static bool add_chat(json_t *content, int32_t id, const qw_reply_logprob *lp)
{
	json_t *e = entry_json(id, lp->logprob, lp->bytes, lp->bytes_len), *top = json_array();
	for (int k = 0; top && k < lp->n_top; k++)
		json_array_append_new(top, entry_json(lp->top[k].id, lp->top[k].logprob,
						      lp->top[k].bytes, lp->top[k].bytes_len));
	if (!e || !top || json_object_set_new(e, "top_logprobs", top) != 0) {
		json_decref(e);
		return false;
	}
	return json_array_append_new(content, e) == 0;
}

static bool add_completion(qh_logprobs *l, int32_t id, const qw_reply_logprob *lp)
{
	json_t *token = token_json(id, lp->bytes, lp->bytes_len), *top = json_object();
	if (!token || !top) {
		json_decref(token);
		json_decref(top);
		return false;
	}
	/* the most likely, then the chosen one (the same string keeps one entry) */
	for (int k = 0; k < lp->n_top; k++) {
		json_t *t = token_json(lp->top[k].id, lp->top[k].bytes, lp->top[k].bytes_len);
		if (t)
			json_object_set_new(top, json_string_value(t), logprob_json(lp->top[k].logprob));
		json_decref(t);
	}
	json_object_set_new(top, json_string_value(token), logprob_json(lp->logprob));
	long long at = l->offset;
	l->offset += characters(token);
	return json_array_append_new(json_object_get(l->obj, "tokens"), token) == 0 &&
	       json_array_append_new(json_object_get(l->obj, "token_logprobs"),
				     logprob_json(lp->logprob)) == 0 &&
	       json_array_append_new(json_object_get(l->obj, "top_logprobs"), top) == 0 &&
	       json_array_append_new(json_object_get(l->obj, "text_offset"),
				     json_integer(at)) == 0;
}

/* The empty object of the API's shape. */
static json_t *empty(bool chat)
{
	return chat ? json_pack("{s:[], s:n}", "content", "refusal")
		    : json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs",
				"top_logprobs", "text_offset");
}

bool qh_logprobs_add(qh_logprobs *l, const int32_t *ids, const qw_reply_logprob *lp, int n)
{
	if (!lp || n == 0)
		return true;
	if (!l->obj && !(l->obj = empty(l->chat)))
		return false;
	for (int i = 0; i < n; i++)
		if (!(l->chat ? add_chat(json_object_get(l->obj, "content"), ids[i], &lp[i])
			      : add_completion(l, ids[i], &lp[i])))
			return false;
	return true;
}

json_t *qh_logprobs_take(qh_logprobs *l)
{
	json_t *o = l->obj ? l->obj : empty(l->chat);
	l->obj = NULL;
	return o;
}

void qh_logprobs_free(qh_logprobs *l)
{
	json_decref(l->obj);
	l->obj = NULL;
}
