/* ctl_messages.c - qwenctl submit --messages FILE: a conversation read from JSON into the
 * protocol's messages, its images read from their files and checked.  See ctl.h.
 *
 * The file is a JSON array of messages, or an object whose "messages" is one (the shape of
 * an OpenAI request).  A message is {"role": system|user|assistant|tool, "content": ...,
 * "reasoning_content": optional, an assistant turn's reasoning}; content is a string or an
 * array of {"type": "text", "text": STR} and {"type": "image", "image": PATH} items.  An
 * image's PATH (a "file://" prefix allowed) is relative to the file's directory. */
#include <jansson.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/ctl.h"

static bool fail(const char *file, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool fail(const char *file, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "qwenctl: --messages %s: ", file);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n", stderr);
	return false;
}

/* One image item: its file read and checked. */
static bool read_image(ctl_conversation *c, const char *file, const char *dir, int m, int k,
		       const json_t *item, qw_item *out)
{
	const char *path = json_string_value(json_object_get(item, "image"));
	if (!path || !*path)
		return fail(file, "message %d, item %d: an image item needs \"image\": the image "
			    "file's path", m + 1, k + 1);
	if (c->n_images == CTL_MAX_IMAGES)
		return fail(file, "more than %d images", CTL_MAX_IMAGES);
	if (!strncmp(path, "file://", 7))
		path += 7;
	char full[4096];
	if (path[0] == '/' || !dir)
		snprintf(full, sizeof full, "%s", path);
	else
		snprintf(full, sizeof full, "%s/%s", dir, path);
	char *data, what[4200];
	size_t len;
	snprintf(what, sizeof what, "--messages %s: message %d, item %d: image", file, m + 1, k + 1);
	if (!ctl_read_image(what, full, &data, &len))
		return false;
	c->images[c->n_images++] = data;
	*out = (qw_item){QW_ITEM_IMAGE, data, len};
	return true;
}

static bool read_content(ctl_conversation *c, const char *file, const char *dir, int m,
			 const json_t *content, qw_req_message *out)
{
	if (json_is_string(content)) {
		out->items = &c->items[c->n_items++];
		out->n_items = 1;
		out->items[0] = (qw_item){QW_ITEM_TEXT, json_string_value(content),
					  json_string_length(content)};
		return true;
	}
	if (!json_is_array(content) || json_array_size(content) == 0)
		return fail(file, "message %d: \"content\" must be a string or a non-empty array of "
			    "items", m + 1);
	size_t n = json_array_size(content);
	if (n > (size_t)QW_LIMITS_DEFAULT.max_items)
		return fail(file, "message %d: more than %d items", m + 1,
			    QW_LIMITS_DEFAULT.max_items);
	out->items = &c->items[c->n_items];
	out->n_items = (int)n;
	c->n_items += (int)n;
	for (size_t k = 0; k < n; k++) {
		const json_t *item = json_array_get(content, k);
		const char *type = json_string_value(json_object_get(item, "type"));
		const json_t *text = json_object_get(item, "text");
		if (type && !strcmp(type, "text") && json_is_string(text))
			out->items[k] = (qw_item){QW_ITEM_TEXT, json_string_value(text),
						  json_string_length(text)};
		else if (type && !strcmp(type, "image")) {
			if (!read_image(c, file, dir, m, (int)k, item, &out->items[k]))
				return false;
		} else
			return fail(file, "message %d, item %d: items are {\"type\": \"text\", "
				    "\"text\": STR} or {\"type\": \"image\", \"image\": PATH}", m + 1,
				    (int)k + 1);
	}
	return true;
}

int ctl_conversation_read(const char *path, ctl_conversation *c)
{
	memset(c, 0, sizeof *c);
	const char *file = strcmp(path, "-") ? path : "(stdin)";
	char *text;
	size_t len;
	if (!ctl_read_input("--messages", strcmp(path, "-") ? path : NULL,
			    QW_LIMITS_DEFAULT.max_message, &text, &len))
		return CTL_USAGE;
	json_error_t jerr;
	c->json = json_loadb(text, len, 0, &jerr);
	free(text);
	if (!c->json) {
		fail(file, "not JSON (line %d, column %d: %s)", jerr.line, jerr.column, jerr.text);
		return CTL_USAGE;
	}
	const json_t *msgs = json_is_object(c->json) ? json_object_get(c->json, "messages")
						     : c->json;
	size_t n = json_array_size(msgs);
	if (!json_is_array(msgs) || n == 0) {
		fail(file, "expected a non-empty array of messages (or an object whose \"messages\" "
		     "is one)");
		ctl_conversation_free(c);
		return CTL_USAGE;
	}
	if (n > (size_t)QW_LIMITS_DEFAULT.max_messages) {
		fail(file, "%zu messages; a request carries at most %d", n,
		     QW_LIMITS_DEFAULT.max_messages);
		ctl_conversation_free(c);
		return CTL_USAGE;
	}
	size_t items = 0;
	for (size_t m = 0; m < n; m++) {
		const json_t *content = json_object_get(json_array_get(msgs, m), "content");
		items += json_is_array(content) ? json_array_size(content) : 1;
	}
	c->msgs = calloc(n, sizeof *c->msgs);
	c->items = calloc(items ? items : 1, sizeof *c->items);
	if (!c->msgs || !c->items) {
		fputs("qwenctl: out of memory\n", stderr);
		ctl_conversation_free(c);
		return CTL_ERROR;
	}
	char *copy = strdup(path), *dir = strcmp(path, "-") && copy ? dirname(copy) : NULL;
	bool ok = true;
	for (size_t m = 0; ok && m < n; m++) {
		const json_t *msg = json_array_get(msgs, m);
		const char *role = json_string_value(json_object_get(msg, "role"));
		const json_t *reasoning = json_object_get(msg, "reasoning_content");
		qw_req_message *out = &c->msgs[m];
		if (!role || (strcmp(role, "system") && strcmp(role, "user") &&
			      strcmp(role, "assistant") && strcmp(role, "tool"))) {
			ok = fail(file, "message %zu: \"role\" must be system, user, assistant or tool",
				  m + 1);
			break;
		}
		out->role = role;
		out->role_len = strlen(role);
		if (reasoning && !json_is_string(reasoning)) {
			ok = fail(file, "message %zu: \"reasoning_content\" must be a string", m + 1);
			break;
		}
		if (reasoning) {
			out->reasoning = json_string_value(reasoning);
			out->reasoning_len = json_string_length(reasoning);
		}
		ok = read_content(c, file, dir, (int)m, json_object_get(msg, "content"), out);
	}
	free(copy);
	if (!ok) {
		ctl_conversation_free(c);
		return CTL_USAGE;
	}
	c->n_msgs = (int)n;
	return CTL_OK;
}

void ctl_conversation_free(ctl_conversation *c)
{
	for (int i = 0; i < c->n_images; i++)
		free(c->images[i]);
	free(c->msgs);
	free(c->items);
	json_decref(c->json);
	memset(c, 0, sizeof *c);
}
