/* history.h - a sequence's tokens as the sampler's penalties see them.
 *
 * Owns: qw_history, the distinct tokens of a sequence's prompt and what it generated, each
 * once as a qw_token_count (kernels/ops.h: how many times it was generated, whether the
 * prompt holds it), in the order first seen and kept up to date as tokens arrive, so a
 * step copies the array whole into the arena for the last stage's sampler.  An index from
 * token to entry (open addressing) keeps each arrival O(1).  The prompt's tokens are kept
 * only when the repetition penalty, which looks at them, is on; frequency and presence look
 * at generated tokens alone (sample.h).
 */
#ifndef QW_DAEMON_HISTORY_H
#define QW_DAEMON_HISTORY_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "loader/error.h"

typedef struct qw_history {
	qw_token_count *entries;   /* (n,) distinct tokens */
	int n, cap;
	int32_t *index;            /* (index_cap,) 1 + an entry of the token hashed there; 0 empty */
	int index_cap;             /* a power of two, over twice n */
} qw_history;

/* A history of prompt (n_prompt tokens, recorded with_prompt) and nothing generated yet. */
qw_status qw_history_init(qw_history *h, const int32_t *prompt, int n_prompt, bool with_prompt,
			  qw_err *err);

/* Counts one more generation of token; false when out of memory (h unchanged). */
bool qw_history_generated(qw_history *h, int32_t token);

void qw_history_free(qw_history *h);

#endif
