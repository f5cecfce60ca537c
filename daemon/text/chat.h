/* chat.h - the Qwen3-VL chat format, rendered in C, and the split of a Thinking model's
 * output into reasoning and answer.
 *
 * Owns: qw_message / qw_content (a conversation: roles, text and image/video items),
 * qw_chat_render (the text the model's chat template renders for it) and qw_reasoning (a
 * streaming splitter of generated tokens into reasoning and answer).
 *
 * The rendering follows Qwen's template: a first system message; each message as
 * <|im_start|>ROLE\n ... <|im_end|>\n; an image item as
 * <|vision_start|><|image_pad|><|vision_end|> (n_pad pads when the caller has expanded it,
 * one otherwise; "Picture N: " first with add_vision_id); tool results grouped into one user
 * turn of <tool_response> blocks; assistant turns after the last real user query keep their
 * reasoning as <think>\n...\n</think>\n\n, earlier ones only their answer; and the
 * generation prompt <|im_start|>assistant\n, followed by <think>\n for Thinking models.
 * With tools, the system prompt lists them (each tool's JSON as the caller gives it, which
 * must be what the template's tojson writes) after the first system message's text; an
 * assistant turn's tool calls follow its content as <tool_call> blocks; enable_thinking
 * false (thinking_off) ends the generation prompt with an empty <think>\n\n</think>\n\n.
 */
#ifndef QW_TEXT_CHAT_H
#define QW_TEXT_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

typedef enum qw_content_kind {
	QW_CONTENT_TEXT,
	QW_CONTENT_IMAGE,
	QW_CONTENT_VIDEO,
} qw_content_kind;

typedef struct qw_content {
	qw_content_kind kind;
	const char *text;     /* QW_CONTENT_TEXT */
	int n_pad;            /* image/video: pad tokens to write (0: one, as the template does) */
} qw_content;

typedef struct qw_chat_tool_call {
	const char *name;
	const char *arguments;         /* JSON text, written as it is */
} qw_chat_tool_call;

typedef struct qw_message {
	const char *role;              /* system, user, assistant or tool */
	const qw_content *content;     /* (n_content,) */
	int n_content;
	const char *reasoning;         /* assistant: reasoning_content, or NULL */
	const qw_chat_tool_call *tool_calls;   /* assistant: (n_tool_calls,) */
	int n_tool_calls;
} qw_message;

typedef struct qw_chat_opts {
	bool add_generation_prompt;
	bool thinking;                 /* a Thinking model: the prompt opens <think>\n */
	bool thinking_off;             /* enable_thinking false: the prompt closes an empty
					* think block instead */
	bool add_vision_id;            /* "Picture N: " / "Video N: " before each item */
	const char *const *tools;      /* (n_tools,) each tool's JSON text */
	int n_tools;
} qw_chat_opts;

/* Renders the conversation; *out is malloc'd and NUL-terminated.  An unknown role, or an
 * image in an assistant or system message, is an error naming the message. */
qw_status qw_chat_render(const qw_message *msgs, int n, const qw_chat_opts *o, char **out,
			 size_t *len, qw_err *err);

/* Splits a stream of generated tokens: text before </think> is reasoning, after it the
 * answer.  A Thinking model's prompt already opened <think>, so such a stream starts in
 * reasoning; newlines next to </think> are dropped, as the template drops them. */
typedef struct qw_reasoning {
	int32_t think_start, think_end;  /* ids of <think> and </think> */
	bool in_reasoning;
	bool answer_started;             /* the answer's leading newlines are behind us */
	int held_newlines;               /* reasoning newlines held back until we know what follows */
} qw_reasoning;

void qw_reasoning_init(qw_reasoning *r, int32_t think_start, int32_t think_end, bool thinking);

/* Routes one token's decoded text (len bytes) to reasoning or answer, writing from their
 * start (room for len + 32 bytes each) and setting their lengths. */
void qw_reasoning_push(qw_reasoning *r, int32_t id, const char *text, size_t len,
		       char *reasoning, size_t *n_reasoning, char *answer, size_t *n_answer);

#endif
