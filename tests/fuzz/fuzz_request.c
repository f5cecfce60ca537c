/* fuzz_request.c - libFuzzer target of the client protocol's request decoder
 * (qw_request_decode): any bytes are refused or decoded, and a decoded request encodes
 * (qw_request_encode) to bytes that decode to the same request, field by field.  See
 * tests/fuzz/README.md. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_bytes(const char *a, size_t na, const char *b, size_t nb)
{
	return na == nb && (na == 0 || memcmp(a, b, na) == 0);
}

static bool same_items(const qw_item *a, int na, const qw_item *b, int nb)
{
	if (na != nb)
		return false;
	for (int i = 0; i < na; i++)
		if (a[i].kind != b[i].kind || !same_bytes(a[i].data, a[i].len, b[i].data, b[i].len))
			return false;
	return true;
}

static bool same_request(const qw_request *a, const qw_request *b)
{
	if (a->op != b->op || a->n_messages != b->n_messages || (a->prompt == NULL) !=
	    (b->prompt == NULL) || !same_bytes(a->prompt, a->prompt_len, b->prompt, b->prompt_len) ||
	    a->n_token_ids != b->n_token_ids ||
	    (a->n_token_ids && memcmp(a->token_ids, b->token_ids,
				      (size_t)a->n_token_ids * sizeof *a->token_ids) != 0) ||
	    !same_items(a->images, a->n_images, b->images, b->n_images) ||
	    a->max_tokens != b->max_tokens || a->temperature != b->temperature ||
	    a->top_p != b->top_p || a->top_k != b->top_k || a->has_seed != b->has_seed ||
	    a->seed != b->seed || a->greedy != b->greedy || a->stream != b->stream ||
	    a->ignore_eos != b->ignore_eos || a->n_stop != b->n_stop || a->target != b->target ||
	    a->n_tools != b->n_tools || a->thinking != b->thinking ||
	    a->prompt_ids != b->prompt_ids || a->no_generation_prompt != b->no_generation_prompt)
		return false;
	for (int i = 0; i < a->n_messages; i++) {
		const qw_req_message *x = &a->messages[i], *y = &b->messages[i];
		if (!same_bytes(x->role, x->role_len, y->role, y->role_len) ||
		    !same_items(x->items, x->n_items, y->items, y->n_items) ||
		    (x->reasoning == NULL) != (y->reasoning == NULL) ||
		    !same_bytes(x->reasoning, x->reasoning_len, y->reasoning, y->reasoning_len) ||
		    x->n_tool_calls != y->n_tool_calls)
			return false;
		for (int k = 0; k < x->n_tool_calls; k++)
			if (!same_bytes(x->tool_calls[k].name, x->tool_calls[k].name_len,
					y->tool_calls[k].name, y->tool_calls[k].name_len) ||
			    !same_bytes(x->tool_calls[k].arguments, x->tool_calls[k].arguments_len,
					y->tool_calls[k].arguments, y->tool_calls[k].arguments_len))
				return false;
	}
	for (int i = 0; i < a->n_stop; i++)
		if (!same_bytes(a->stop[i], a->stop_len[i], b->stop[i], b->stop_len[i]))
			return false;
	for (int i = 0; i < a->n_tools; i++)
		if (!same_bytes(a->tools[i], a->tools_len[i], b->tools[i], b->tools_len[i]))
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	qw_request r, again;
	qw_err err;
	if (qw_request_decode(data, size, NULL, &r, &err) != QW_OK)
		return 0;
	char *buf;
	size_t len;
	if (qw_request_encode(&r, &buf, &len, &err) != QW_OK)
		__builtin_trap();
	if (qw_request_decode(buf, len, NULL, &again, &err) != QW_OK)
		__builtin_trap();      /* what the encoder writes, the decoder takes */
	if (!same_request(&r, &again))
		__builtin_trap();
	qw_request_free(&again);
	qw_request_free(&r);
	free(buf);
	return 0;
}
