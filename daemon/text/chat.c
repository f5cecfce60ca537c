/* chat.c - the Qwen3-VL chat template and the reasoning splitter.  See chat.h. */
#include "daemon/text/chat.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
	char *p;
	size_t n, cap;
	bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t len)
{
	if (b->oom)
		return;
	if (b->n + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->n + len + 1)
			cap *= 2;
		char *grown = realloc(b->p, cap);
		if (!grown) {
			b->oom = true;
			return;
		}
		b->p = grown;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, len);
	b->n += len;
	b->p[b->n] = '\0';
}

static void puts_(sbuf *b, const char *s)
{
	put(b, s, strlen(s));
}

static bool role_is(const qw_message *m, const char *role)
{
	return strcmp(m->role, role) == 0;
}

/* The content as the template's render_content produces it (images counted when count). */
static void render_content(sbuf *b, const qw_message *m, const qw_chat_opts *o, int *images,
			   int *videos)
{
	for (int i = 0; i < m->n_content; i++) {
		const qw_content *c = &m->content[i];
		if (c->kind == QW_CONTENT_TEXT) {
			puts_(b, c->text ? c->text : "");
			continue;
		}
		bool image = c->kind == QW_CONTENT_IMAGE;
		int *count = image ? images : videos;
		(*count)++;
		if (o->add_vision_id) {
			char label[32];
			snprintf(label, sizeof label, "%s %d: ", image ? "Picture" : "Video", *count);
			puts_(b, label);
		}
		puts_(b, "<|vision_start|>");
		for (int k = 0; k < (c->n_pad > 0 ? c->n_pad : 1); k++)
			puts_(b, image ? "<|image_pad|>" : "<|video_pad|>");
		puts_(b, "<|vision_end|>");
	}
}

/* The text of a message with no vision items (for the checks the template makes on it). */
static char *plain_text(const qw_message *m)
{
	sbuf b = {0};
	put(&b, "", 0);
	for (int i = 0; i < m->n_content; i++)
		if (m->content[i].kind == QW_CONTENT_TEXT && m->content[i].text)
			puts_(&b, m->content[i].text);
	return b.oom ? NULL : b.p;
}

static bool starts_with(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

static bool ends_with(const char *s, const char *p)
{
	size_t n = strlen(s), k = strlen(p);
	return n >= k && strcmp(s + n - k, p) == 0;
}

/* Python's s.strip(chars) / lstrip / rstrip for '\n', as [begin, end) into s. */
static void strip_nl(const char *s, size_t *begin, size_t *end, bool left, bool right)
{
	*begin = 0;
	*end = strlen(s);
	while (left && *begin < *end && s[*begin] == '\n')
		(*begin)++;
	while (right && *end > *begin && s[*end - 1] == '\n')
		(*end)--;
}

/* The assistant's tool calls, after its content (content: whether that was non-empty). */
static void render_tool_calls(sbuf *b, const qw_message *m, bool content)
{
	for (int i = 0; i < m->n_tool_calls; i++) {
		if (i > 0 || content)
			puts_(b, "\n");
		puts_(b, "<tool_call>\n{\"name\": \"");
		puts_(b, m->tool_calls[i].name);
		puts_(b, "\", \"arguments\": ");
		puts_(b, m->tool_calls[i].arguments);
		puts_(b, "}\n</tool_call>");
	}
}

static void render_assistant(sbuf *b, const qw_message *m, const char *content, bool recent,
			     bool last)
{
	/* reasoning: given, or the part of the content before </think> */
	const char *reasoning = m->reasoning ? m->reasoning : "";
	char *split_reasoning = NULL;
	const char *close = m->reasoning ? NULL : strstr(content, "</think>");
	if (close) {
		/* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
		size_t head = (size_t)(close - content);
		split_reasoning = strndup(content, head);
		if (split_reasoning) {
			char *open = split_reasoning, *at;
			while ((at = strstr(open, "<think>")))
				open = at + strlen("<think>");
			size_t nb, ne;
			strip_nl(open, &nb, &ne, true, true);
			memmove(split_reasoning, open + nb, ne - nb);
			split_reasoning[ne - nb] = '\0';
			reasoning = split_reasoning;
		}
		/* content.split('</think>')[-1].lstrip('\n') */
		const char *tail = close, *at;
		while ((at = strstr(tail + 1, "</think>")))
			tail = at;
		content = tail + strlen("</think>");
		while (*content == '\n')
			content++;
	}
	puts_(b, "<|im_start|>assistant\n");
	if (recent && (last || *reasoning)) {
		size_t rb, re, cb, ce;
		strip_nl(reasoning, &rb, &re, true, true);
		strip_nl(content, &cb, &ce, true, false);
		puts_(b, "<think>\n");
		put(b, reasoning + rb, re - rb);
		puts_(b, "\n</think>\n\n");
		put(b, content + cb, ce - cb);
	} else {
		puts_(b, content);
	}
	render_tool_calls(b, m, *content != '\0');
	puts_(b, "<|im_end|>\n");
	free(split_reasoning);
}

/* With tools: one system turn holding the first system message's text and the tools. */
static void render_tools(sbuf *b, const qw_message *msgs, int n, const qw_chat_opts *o)
{
	puts_(b, "<|im_start|>system\n");
	if (n > 0 && role_is(&msgs[0], "system")) {
		char *text = plain_text(&msgs[0]);
		if (!text) {
			b->oom = true;
			return;
		}
		puts_(b, text);
		puts_(b, "\n\n");
		free(text);
	}
	puts_(b, "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
	      "You are provided with function signatures within <tools></tools> XML tags:\n"
	      "<tools>");
	for (int i = 0; i < o->n_tools; i++) {
		puts_(b, "\n");
		puts_(b, o->tools[i]);
	}
	puts_(b, "\n</tools>\n\nFor each function call, return a json object with function name "
	      "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
	      "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
	      "</tool_call><|im_end|>\n");
}

qw_status qw_chat_render(const qw_message *msgs, int n, const qw_chat_opts *o, char **out,
			 size_t *len, qw_err *err)
{
	*out = NULL;
	for (int i = 0; i < n; i++) {
		const qw_message *m = &msgs[i];
		if (!m->role || (!role_is(m, "system") && !role_is(m, "user") &&
				 !role_is(m, "assistant") && !role_is(m, "tool")))
			return qw_fail(err, QW_E_ARG, "message %d: role '%s' is not system, user, "
				       "assistant or tool", i, m->role ? m->role : "(none)");
		for (int k = 0; k < m->n_content; k++)
			if (m->content[k].kind != QW_CONTENT_TEXT && !role_is(m, "user") &&
			    !role_is(m, "system"))
				return qw_fail(err, QW_E_ARG, "message %d: %s %s message cannot hold an "
					       "image or video", i, role_is(m, "assistant") ? "an" : "a",
					       m->role);
		if (m->n_tool_calls && !role_is(m, "assistant"))
			return qw_fail(err, QW_E_ARG, "message %d: a %s message cannot hold tool "
				       "calls", i, m->role);
	}
	/* the last user message that is not a tool response ends the "history" */
	int last_query = n - 1;
	for (int i = n - 1; i >= 0; i--) {
		if (!role_is(&msgs[i], "user"))
			continue;
		char *text = plain_text(&msgs[i]);
		bool tool_response = text && starts_with(text, "<tool_response>") &&
				     ends_with(text, "</tool_response>");
		free(text);
		if (!tool_response) {
			last_query = i;
			break;
		}
	}
	sbuf b = {0};
	int images = 0, videos = 0;
	if (o->n_tools > 0)
		render_tools(&b, msgs, n, o);
	for (int i = 0; i < n; i++) {
		const qw_message *m = &msgs[i];
		if (i == 0 && o->n_tools > 0 && role_is(m, "system"))
			continue;   /* it went into the tools' system turn */
		if (role_is(m, "user") || role_is(m, "system")) {
			puts_(&b, "<|im_start|>");
			puts_(&b, m->role);
			puts_(&b, "\n");
			render_content(&b, m, o, &images, &videos);
			puts_(&b, "<|im_end|>\n");
		} else if (role_is(m, "assistant")) {
			char *content = plain_text(m);
			if (!content) {
				b.oom = true;
				break;
			}
			render_assistant(&b, m, content, i > last_query, i == n - 1);
			free(content);
		} else {   /* tool: consecutive results share one user turn */
			if (i == 0 || !role_is(&msgs[i - 1], "tool"))
				puts_(&b, "<|im_start|>user");
			puts_(&b, "\n<tool_response>\n");
			render_content(&b, m, o, &images, &videos);
			puts_(&b, "\n</tool_response>");
			if (i == n - 1 || !role_is(&msgs[i + 1], "tool"))
				puts_(&b, "<|im_end|>\n");
		}
	}
	if (o->add_generation_prompt)
		puts_(&b, o->thinking_off ? "<|im_start|>assistant\n<think>\n\n</think>\n\n"
			  : o->thinking ? "<|im_start|>assistant\n<think>\n" : "<|im_start|>assistant\n");
	put(&b, "", 0);
	if (b.oom) {
		free(b.p);
		return qw_fail(err, QW_E_NOMEM, "out of memory rendering %d messages", n);
	}
	*out = b.p;
	*len = b.n;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// reasoning / answer

void qw_reasoning_init(qw_reasoning *r, int32_t think_start, int32_t think_end, bool thinking)
{
	*r = (qw_reasoning){.think_start = think_start, .think_end = think_end,
			    .in_reasoning = thinking};
}

void qw_reasoning_push(qw_reasoning *r, int32_t id, const char *text, size_t len,
		       char *reasoning, size_t *n_reasoning, char *answer, size_t *n_answer)
{
	*n_reasoning = *n_answer = 0;
	if (id == r->think_start && !r->answer_started) {
		r->in_reasoning = true;           /* a model that opens its own <think> */
		return;
	}
	if (id == r->think_end && r->in_reasoning) {
		r->in_reasoning = false;          /* newlines just before </think> are dropped */
		r->held_newlines = 0;
		return;
	}
	if (r->in_reasoning) {
		/* hold trailing newlines back (up to HOLD_MAX): dropped if </think> comes next */
		enum { HOLD_MAX = 32 };
		size_t end = len, n = 0;
		while (end > 0 && text[end - 1] == '\n')
			end--;
		if (end > 0) {
			memset(reasoning, '\n', (size_t)r->held_newlines);
			memcpy(reasoning + r->held_newlines, text, end);
			n = (size_t)r->held_newlines + end;
			r->held_newlines = 0;
		}
		r->held_newlines += (int)(len - end);
		if (r->held_newlines > HOLD_MAX) {
			memset(reasoning + n, '\n', (size_t)(r->held_newlines - HOLD_MAX));
			n += (size_t)(r->held_newlines - HOLD_MAX);
			r->held_newlines = HOLD_MAX;
		}
		*n_reasoning = n;
		return;
	}
	size_t start = 0;
	if (!r->answer_started) {               /* the answer's leading newlines are dropped */
		while (start < len && text[start] == '\n')
			start++;
		if (start == len)
			return;
		r->answer_started = true;
	}
	memcpy(answer, text + start, len - start);
	*n_answer = len - start;
}
