/* step_limits.h - the largest step a stage is sized for (qw_step_limits, ops.h), and the
 * checks that hold every step to it once a backend has reserved for it.
 *
 * Owns: the shapes part of qw_step_limits from a config and a stage; the checks both
 * backends run after reserve (a step, or an op's rows, past a limit is QW_E_LIMIT naming
 * the limit, what the step needs, what was reserved, and the setting behind it); the error
 * an allocation after seal gets.  The sizes (rows, sequences, context, ...) are the caller's:
 * the daemon's settings, or a test's.
 */
#ifndef QW_KERNELS_STEP_LIMITS_H
#define QW_KERNELS_STEP_LIMITS_H

#include "kernels/ops.h"
#include "loader/config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The limit a check holds a step to. */
typedef enum qw_limit {
	QW_LIMIT_TOKENS,       /* rows of a step */
	QW_LIMIT_SEQS,         /* sequences of a step */
	QW_LIMIT_LOGITS,       /* logit rows of a step */
	QW_LIMIT_CONTEXT,      /* KV entries of a sequence */
	QW_LIMIT_BLOCKS,       /* block-table row: blocks of a sequence */
	QW_LIMIT_VOCAB,        /* logits' width */
	QW_LIMIT_IMAGE_ROWS,   /* patches of one image */
} qw_limit;

/* Fills lim's shapes (layers, vocabulary, vision tower) for `stage` of cfg; the vision tower
 * (stage 0 of a model with one) sized for images of up to max_image_tokens merged tokens.
 * The sizes (max_tokens ... graphs) are left as they are. */
struct qw_stage;   /* loader/weights.h */
void qw_step_limits_shapes(qw_step_limits *lim, const qw_config *cfg,
			   const struct qw_stage *stage, int max_image_tokens);

/* Blocks of one sequence at the longest context. */
int qw_step_limits_blocks(const qw_step_limits *lim);

/* The value of limit l in lim. */
long long qw_step_limits_get(const qw_step_limits *lim, qw_limit l);

/* need within limit l of lim?  QW_E_LIMIT otherwise: "<who>: <what> needs N <unit>; the stage
 * reserved for M at load" with a HINT naming the setting. */
qw_status qw_step_limits_hold(const qw_step_limits *lim, qw_limit l, long long need,
			      const char *who, const char *what, qw_err *err);

/* A step's batch within lim: its tokens, sequences, logit rows, block-table row and longest
 * context. */
qw_status qw_step_limits_check(const qw_step_limits *lim, const qw_batch *b, const char *who,
			       qw_err *err);

/* The error of an allocation asked for after seal (what: e.g. "a 16 x 64 activation"). */
qw_status qw_sealed_error(qw_err *err, const char *who, const char *what);

#ifdef __cplusplus
}
#endif

#endif
