/* toolcall.c - <tool_call> blocks out of answer text.  See toolcall.h. */
#include "http/toolcall.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "http/pyjson.h"

static const char OPEN[] = "<tool_call>", CLOSE[] = "</tool_call>";

static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\n' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

/* The longest tail of s that is a proper start of tag. */
static size_t partial_tag(const char *s, size_t n, const char *tag)
{
	size_t t = strlen(tag);
	for (size_t k = n < t - 1 ? n : t - 1; k > 0; k--)
		if (memcmp(s + n - k, tag, k) == 0)
			return k;
	return 0;
}

/* A block's body as a call; false when it is not {"name": str, "arguments": ...}. */
static bool parse_call(const char *body, size_t len, qh_toolcall *call)
{
	json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	json_t *name = json_object_get(j, "name"), *args = json_object_get(j, "arguments");
	if (!json_is_object(j) || !json_is_string(name)) {
		json_decref(j);
		return false;
	}
	char *text = NULL;
	size_t n;
	if (json_is_string(args))
		text = strdup(json_string_value(args));
	else if (args)
		qh_pyjson_dumps(args, &text, &n);
	else
		text = strdup("{}");
	call->name = strdup(json_string_value(name));
	call->arguments = text;
	json_decref(j);
	if (!call->name || !call->arguments) {
		qh_toolcall_free(call);
		return false;
	}
	return true;
}

void qh_toolparse_push(qh_toolparse *p, const char *text, size_t len, bool final,
		       qh_buf *content, qh_toolcall *calls, int *n, int max)
{
	qh_buf_add(&p->held, text, len);
	for (;;) {
		qh_buf *h = &p->held;
		if (!p->in_call) {
			char *open = h->n ? memmem(h->p, h->n, OPEN, strlen(OPEN)) : NULL;
			if (open) {
				/* the text before, less the blank text next to the call */
				size_t before = (size_t)(open - h->p), end = before;
				while (end > 0 && blank(h->p + end - 1, 1))
					end--;
				qh_buf_add(content, h->p, end);
				qh_buf_consume(&p->gap, p->gap.n);   /* kept in case it is no call */
				qh_buf_add(&p->gap, h->p + end, before - end);
				qh_buf_consume(h, before + strlen(OPEN));
				p->in_call = true;
				continue;
			}
			if (final) {
				/* all of it, unless it is blank text after the last call */
				if (!(p->n_calls > 0 && blank(h->p, h->n)))
					qh_buf_add(content, h->p, h->n);
				qh_buf_consume(h, h->n);
				return;
			}
			/* hold a possible tag start, and blank text a tag may follow */
			size_t end = h->n - partial_tag(h->p, h->n, OPEN);
			while (end > 0 && blank(h->p + end - 1, 1))
				end--;
			qh_buf_add(content, h->p, end);
			qh_buf_consume(h, end);
			return;
		}
		char *close = h->n ? memmem(h->p, h->n, CLOSE, strlen(CLOSE)) : NULL;
		if (!close) {
			if (final) {                  /* an unfinished block: as written */
				qh_buf_add(content, p->gap.p, p->gap.n);
				qh_buf_str(content, OPEN);
				qh_buf_add(content, h->p, h->n);
				qh_buf_consume(h, h->n);
				p->in_call = false;
			}
			return;
		}
		size_t body = (size_t)(close - h->p);
		qh_toolcall call = {0};
		if (*n < max && parse_call(h->p, body, &call)) {
			calls[(*n)++] = call;
			p->n_calls++;
		} else {
			qh_buf_add(content, p->gap.p, p->gap.n);
			qh_buf_str(content, OPEN);
			qh_buf_add(content, h->p, body + strlen(CLOSE));
		}
		qh_buf_consume(h, body + strlen(CLOSE));
		p->in_call = false;
	}
}

void qh_toolcall_free(qh_toolcall *c)
{
	free(c->name);
	free(c->arguments);
	*c = (qh_toolcall){0};
}

void qh_toolparse_free(qh_toolparse *p)
{
	qh_buf_free(&p->held);
	qh_buf_free(&p->gap);
	*p = (qh_toolparse){0};
}
