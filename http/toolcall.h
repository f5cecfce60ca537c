/* toolcall.h - tool calls out of a Qwen model's answer, as they stream.
 *
 * Owns: qh_toolparse, which splits answer text into content and tool calls the way Qwen3
 * writes them: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, one block per
 * call (vLLM's hermes parser reads the same).  Text outside the blocks is content; blank
 * text next to a block is dropped; a block that is not a JSON object with a string name is
 * given back as content, as written.  Text that may begin "<tool_call>" is held until it is
 * known not to; blank text held before a block that turns out to be no call is given back
 * with it.  Arguments come out as JSON text in Python's json.dumps style (pyjson.h),
 * or as written when the model wrote a string.
 */
#ifndef QW_HTTP_TOOLCALL_H
#define QW_HTTP_TOOLCALL_H

#include <stdbool.h>
#include <stddef.h>

#include "http/buf.h"

typedef struct qh_toolcall {
	char *name;               /* malloc'd */
	char *arguments;          /* malloc'd JSON text */
} qh_toolcall;

typedef struct qh_toolparse {
	qh_buf held;              /* text not yet given out: a possible "<tool_call>" start, or
				   * blank text that a block may follow, or a block's body */
	qh_buf gap;               /* the blank text before the open block, given back if the
				   * block is no call */
	bool in_call;             /* inside <tool_call> ... */
	int n_calls;              /* calls given out so far */
} qh_toolparse;

/* Feeds answer text (final: nothing follows).  Appends content to give out to *content and
 * completed calls to calls[*n] (room for max; more are given back as content). */
void qh_toolparse_push(qh_toolparse *p, const char *text, size_t len, bool final,
		       qh_buf *content, qh_toolcall *calls, int *n, int max);

void qh_toolparse_free(qh_toolparse *p);
void qh_toolcall_free(qh_toolcall *c);

#endif
