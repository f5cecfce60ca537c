/* logprobs.h - qwend's log-probabilities (ipc/protocol.h, qw_reply_logprob) in OpenAI's
 * shapes.
 *
 * Owns: qh_logprobs, one choice's log-probabilities as its API gives them:
 *   chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
 *         "bytes"}]}], "refusal": null}, the top ones as many as top_logprobs asked;
 *   completions: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token:
 *         logprob}], "text_offset": [...]}, each dict the logprobs most likely and the
 *         chosen token (OpenAI's "up to logprobs + 1"), text_offset counting characters
 *         from the choice's first token.
 * A token shows as its text (invalid UTF-8, such as part of a character, as U+FFFD), its
 * bytes as the token's own; a model without a tokenizer shows "token_id:N" and null bytes
 * (vLLM's form).  A log-probability of -inf (a token the sampler's cuts removed) shows as
 * -9999.0, as vLLM shows it: JSON has no infinity.  A stream takes the object after each
 * chunk's tokens and starts a new one; text_offset keeps counting.
 */
#ifndef QW_HTTP_LOGPROBS_H
#define QW_HTTP_LOGPROBS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "ipc/protocol.h"

typedef struct qh_logprobs {
	bool chat;
	json_t *obj;            /* the object so far (NULL: none yet) */
	long long offset;       /* completions: characters before the next token */
} qh_logprobs;

/* Appends n tokens and their log-probabilities (lp NULL: the reply had none: nothing is
 * added); false when out of memory. */
bool qh_logprobs_add(qh_logprobs *l, const int32_t *ids, const qw_reply_logprob *lp, int n);

/* The object so far (an empty one when none), handed over; the next add starts anew. */
json_t *qh_logprobs_take(qh_logprobs *l);

void qh_logprobs_free(qh_logprobs *l);

#endif
