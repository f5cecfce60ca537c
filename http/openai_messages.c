/* openai_messages.c - chat messages, their content and images, tools and the template's
 * switches, from OpenAI's shapes into the protocol's.  See openai.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/media.h"
#include "http/openai_internal.h"
#include "http/pyjson.h"

bool qh_token_ids(qh_job *job, const json_t *v, const char *param, int32_t **ids, int *n,
		  qh_error *e)
{
	qw_limits lim = QW_LIMITS_DEFAULT;
	if (!json_is_array(v) || json_array_size(v) == 0)
		return qh_fail(e, 400, param, "'%s' must be a string or a non-empty list of token "
			       "ids", param);
	if (json_array_size(v) > (size_t)lim.max_token_ids)
		return qh_fail(e, 413, param, "'%s' has %zu token ids; at most %d are taken", param,
			       json_array_size(v), lim.max_token_ids);
	*n = (int)json_array_size(v);
	*ids = qh_job_alloc(job, (size_t)*n * sizeof **ids);
	if (!*ids)
		return qh_oom(e);
	for (int i = 0; i < *n; i++) {
		json_t *t = json_array_get(v, (size_t)i);
		if (!json_is_integer(t) || json_integer_value(t) < 0 ||
		    json_integer_value(t) > INT32_MAX)
			return qh_fail(e, 400, param, "'%s'[%d] is not a token id (an integer from 0)",
				       param, i);
		(*ids)[i] = (int32_t)json_integer_value(t);
	}
	return true;
}

// ---------------------------------------------------------------------------------------
// tools and the template's switches

/* One tool as the template shows it, after checking its shape. */
static bool tool(qh_job *job, const json_t *t, int i, const char **text, size_t *len,
		 qh_error *e)
{
	char param[48];
	snprintf(param, sizeof param, "tools[%d]", i);
	json_t *type = json_object_get(t, "type"), *f = json_object_get(t, "function");
	if (!json_is_object(t) || !json_is_string(type) ||
	    strcmp(json_string_value(type), "function") != 0 || !json_is_object(f) ||
	    !json_is_string(json_object_get(f, "name")))
		return qh_fail(e, 400, param, "'%s' must be {\"type\": \"function\", \"function\": "
			       "{\"name\": ..., \"parameters\": {...}}}", param);
	char *s;
	if (!qh_pyjson_dumps(t, &s, len))
		return qh_fail(e, 400, param, "'%s' holds a value JSON cannot", param);
	if (!qh_job_keep(job, s))
		return qh_oom(e);
	*text = s;
	return true;
}

bool qh_template_options(qh_job *job, const json_t *body, qw_request *r, qh_error *e)
{
	json_t *choice = qh_get(body, "tool_choice");
	bool none = false;
	if (choice) {
		const char *c = json_string_value(choice);
		if (!c || (strcmp(c, "none") != 0 && strcmp(c, "auto") != 0))
			return qh_fail(e, 400, "tool_choice", "'tool_choice' may be \"none\" or \"auto\" "
				       "here: this server cannot force a tool call");
		none = !strcmp(c, "none");
	}
	json_t *tools = qh_get(body, "tools");
	qw_limits lim = QW_LIMITS_DEFAULT;
	if (tools && (!json_is_array(tools) || json_array_size(tools) > (size_t)lim.max_tools))
		return qh_fail(e, 400, "tools", "'tools' must be a list of at most %d tools",
			       lim.max_tools);
	if (tools && !none && json_array_size(tools) > 0) {
		int n = (int)json_array_size(tools);
		r->tools = qh_job_alloc(job, (size_t)n * sizeof *r->tools);
		r->tools_len = qh_job_alloc(job, (size_t)n * sizeof *r->tools_len);
		if (!r->tools || !r->tools_len)
			return qh_oom(e);
		for (int i = 0; i < n; i++)
			if (!tool(job, json_array_get(tools, (size_t)i), i, &r->tools[i],
				  &r->tools_len[i], e))
				return false;
		r->n_tools = n;
		job->parse_tools = job->api == QH_API_CHAT;
	}
	json_t *kw = qh_get(body, "chat_template_kwargs");
	if (kw) {
		static const char *const known[] = {"enable_thinking", NULL};
		if (!json_is_object(kw))
			return qh_fail(e, 400, "chat_template_kwargs", "'chat_template_kwargs' must be "
				       "an object");
		if (!qh_known_keys(kw, known, "chat_template_kwargs", e))
			return false;
		json_t *think = qh_get(kw, "enable_thinking");
		if (think && !json_is_boolean(think))
			return qh_fail(e, 400, "chat_template_kwargs.enable_thinking",
				       "'enable_thinking' must be true or false");
		if (think)
			r->thinking = json_is_true(think) ? QW_THINKING_ON : QW_THINKING_OFF;
	}
	return true;
}

// ---------------------------------------------------------------------------------------
// messages

/* One image_url part's bytes. */
static bool image(qh_job *job, const json_t *part, const char *param, const qh_parse_opts *o,
		  qw_item *item, qh_error *e)
{
	json_t *iu = json_object_get(part, "image_url");
	json_t *url = json_is_object(iu) ? json_object_get(iu, "url") : iu;
	if (!json_is_string(url))
		return qh_fail(e, 400, param, "'%s.image_url' must be {\"url\": \"data:image/..."
			       ";base64,...\"}", param);
	unsigned char *data;
	size_t n;
	bool too_large;
	char msg[512];
	if (!qh_media_load(json_string_value(url), json_string_length(url), o->media_dir,
			   QW_LIMITS_DEFAULT.max_image_bytes, &data, &n, &too_large, msg,
			   sizeof msg))
		return qh_fail(e, too_large ? 413 : 400, param, "%s: %s", param, msg);
	if (!qh_job_keep(job, data))
		return qh_oom(e);
	*item = (qw_item){QW_ITEM_IMAGE, (const char *)data, n};
	return true;
}

static bool content(qh_job *job, const json_t *c, const char *where, bool may_be_empty,
		    const qh_parse_opts *o, qw_req_message *m, qh_error *e)
{
	char param[64];
	snprintf(param, sizeof param, "%s.content", where);
	if (!c && !may_be_empty)
		return qh_fail(e, 400, param, "'%s' is required", param);
	if (!c || json_is_string(c)) {      /* no content: an assistant turn of tool calls */
		m->items = qh_job_alloc(job, sizeof *m->items);
		if (!m->items)
			return qh_oom(e);
		m->n_items = 1;
		m->items[0] = (qw_item){QW_ITEM_TEXT, c ? json_string_value(c) : "",
					c ? json_string_length(c) : 0};
		return true;
	}
	if (!json_is_array(c) || json_array_size(c) > (size_t)QW_LIMITS_DEFAULT.max_items)
		return qh_fail(e, 400, param, "'%s' must be a string or a list of at most %d parts",
			       param, QW_LIMITS_DEFAULT.max_items);
	m->n_items = (int)json_array_size(c);
	m->items = qh_job_alloc(job, (size_t)m->n_items * sizeof *m->items);
	if (!m->items)
		return qh_oom(e);
	for (int k = 0; k < m->n_items; k++) {
		json_t *part = json_array_get(c, (size_t)k);
		char at[96];
		snprintf(at, sizeof at, "%s[%d]", param, k);
		const char *type = json_string_value(json_object_get(part, "type"));
		json_t *text = json_object_get(part, "text");
		if (type && !strcmp(type, "text") && json_is_string(text)) {
			m->items[k] = (qw_item){QW_ITEM_TEXT, json_string_value(text),
						json_string_length(text)};
		} else if (type && !strcmp(type, "image_url")) {
			if (!image(job, part, at, o, &m->items[k], e))
				return false;
		} else {
			return qh_fail(e, 400, at, "'%s' must be {\"type\": \"text\", \"text\": ...} or "
				       "{\"type\": \"image_url\", \"image_url\": {\"url\": ...}}", at);
		}
	}
	return true;
}

/* An assistant message's tool_calls: [{id, type, function: {name, arguments}}]. */
static bool tool_calls(qh_job *job, const json_t *list, const char *where, qw_req_message *m,
		       qh_error *e)
{
	char param[64];
	snprintf(param, sizeof param, "%s.tool_calls", where);
	if (!json_is_array(list) || json_array_size(list) > (size_t)QW_LIMITS_DEFAULT.max_items)
		return qh_fail(e, 400, param, "'%s' must be a list of at most %d calls", param,
			       QW_LIMITS_DEFAULT.max_items);
	m->n_tool_calls = (int)json_array_size(list);
	m->tool_calls = qh_job_alloc(job, (size_t)m->n_tool_calls * sizeof *m->tool_calls);
	if (!m->tool_calls && m->n_tool_calls)
		return qh_oom(e);
	for (int i = 0; i < m->n_tool_calls; i++) {
		json_t *f = json_object_get(json_array_get(list, (size_t)i), "function");
		json_t *name = json_object_get(f, "name"), *args = json_object_get(f, "arguments");
		qw_tool_call *tc = &m->tool_calls[i];
		if (!json_is_string(name) || !(json_is_string(args) || json_is_object(args)))
			return qh_fail(e, 400, param, "'%s'[%d] must be {\"type\": \"function\", "
				       "\"function\": {\"name\": ..., \"arguments\": \"{...}\"}}", param,
				       i);
		tc->name = json_string_value(name);
		tc->name_len = json_string_length(name);
		if (json_is_string(args)) {
			tc->arguments = json_string_value(args);
			tc->arguments_len = json_string_length(args);
		} else {
			char *text;
			if (!qh_pyjson_dumps(args, &text, &tc->arguments_len) || !qh_job_keep(job, text))
				return qh_oom(e);
			tc->arguments = text;
		}
	}
	return true;
}

static bool message(qh_job *job, const json_t *msg, int i, const qh_parse_opts *o,
		    qw_req_message *m, qh_error *e)
{
	static const char *const known[] = {"role", "content", "name", "reasoning_content",
					    "reasoning", "tool_calls", "tool_call_id", "refusal",
					    NULL};
	char where[32];
	snprintf(where, sizeof where, "messages[%d]", i);
	if (!json_is_object(msg))
		return qh_fail(e, 400, where, "'%s' must be an object", where);
	if (!qh_known_keys(msg, known, where, e))
		return false;
	const char *role = json_string_value(json_object_get(msg, "role"));
	static const char *const roles[] = {"system", "user", "assistant", "tool", "developer"};
	m->role = NULL;
	for (int k = 0; role && k < 5; k++)
		if (!strcmp(role, roles[k]))
			m->role = k == 4 ? "system" : roles[k];   /* OpenAI's developer is system */
	if (!m->role)
		return qh_fail(e, 400, where, "'%s.role' must be system, user, assistant, tool or "
			       "developer", where);
	m->role_len = strlen(m->role);
	bool assistant = !strcmp(m->role, "assistant");
	json_t *reasoning = qh_get(msg, "reasoning_content");
	if (!reasoning)
		reasoning = qh_get(msg, "reasoning");
	json_t *calls = qh_get(msg, "tool_calls");
	if ((reasoning || calls) && !assistant)
		return qh_fail(e, 400, where, "'%s' is a %s message: reasoning and tool_calls belong "
			       "to assistant messages", where, m->role);
	if (reasoning && !json_is_string(reasoning))
		return qh_fail(e, 400, where, "'%s.reasoning_content' must be a string", where);
	if (reasoning) {
		m->reasoning = json_string_value(reasoning);
		m->reasoning_len = json_string_length(reasoning);
	}
	json_t *refusal = qh_get(msg, "refusal"), *name = qh_get(msg, "name");
	json_t *id = qh_get(msg, "tool_call_id");
	if (refusal)
		return qh_fail(e, 400, where, "'%s.refusal' is not supported by this server", where);
	if ((name && !json_is_string(name)) || (id && !json_is_string(id)))
		return qh_fail(e, 400, where, "'%s.%s' must be a string", where,
			       name && !json_is_string(name) ? "name" : "tool_call_id");
	return content(job, qh_get(msg, "content"), where, assistant, o, m, e) &&
	       (!calls || tool_calls(job, calls, where, m, e));
}

bool qh_messages(qh_job *job, const json_t *body, const qh_parse_opts *o, qw_request *r,
		 qh_error *e)
{
	json_t *msgs = qh_get(body, "messages");
	qw_limits lim = QW_LIMITS_DEFAULT;
	if (!json_is_array(msgs) || json_array_size(msgs) == 0)
		return qh_fail(e, 400, "messages", "'messages' must be a non-empty list");
	if (json_array_size(msgs) > (size_t)lim.max_messages)
		return qh_fail(e, 413, "messages", "%zu messages; at most %d are taken",
			       json_array_size(msgs), lim.max_messages);
	r->n_messages = (int)json_array_size(msgs);
	r->messages = qh_job_alloc(job, (size_t)r->n_messages * sizeof *r->messages);
	if (!r->messages)
		return qh_oom(e);
	int images = 0;
	for (int i = 0; i < r->n_messages; i++) {
		if (!message(job, json_array_get(msgs, (size_t)i), i, o, &r->messages[i], e))
			return false;
		for (int k = 0; k < r->messages[i].n_items; k++)
			images += r->messages[i].items[k].kind == QW_ITEM_IMAGE;
	}
	if (images > lim.max_images)
		return qh_fail(e, 413, "messages", "%d images; at most %d are taken in one request",
			       images, lim.max_images);
	return true;
}
