/* parity.h - the parity ladder: does a backend compute what HF transformers computed?
 *
 * Owns: the ladder's steps, their metrics and thresholds, and running them against a
 * reference file in the fixtures' format (tests/fixtures/hf/README.md):
 *   1 shapes       vocabulary, sequence length and hidden size agree
 *   2 first-logit  the logits at position 0 (embedding, norms, MLP/MoE, head: no attention
 *                  mixing yet, no rotation)
 *   3 positions    the logits at every prompt position (attention, RoPE, causal mask)
 *   4 decode       greedy continuation through the KV cache, token for token, each step's
 *                  logits against greedy_step_logits
 * and for prompts with images the multimodal ladder (parity_image.c): preprocessing, vision,
 * connector, positions, forward, generate.  It stops at the first failing step.  With trace, the hidden states are compared layer by
 * layer and the first diverging one is named.  Used by qwen-parity and the tests.
 */
#ifndef QW_CLI_PARITY_H
#define QW_CLI_PARITY_H

#include <stdbool.h>

#include "kernels/ops.h"

#define QW_MAX_STEPS 8

/* the text ladder */
enum { QW_STEP_SHAPES, QW_STEP_FIRST, QW_STEP_POSITIONS, QW_STEP_DECODE, QW_N_STEPS };
/* the multimodal ladder (a case whose prompt holds image tokens) */
enum { QW_MM_PREPROCESS, QW_MM_VISION, QW_MM_CONNECTOR, QW_MM_POSITIONS, QW_MM_FORWARD,
       QW_MM_GENERATE, QW_MM_N_STEPS };

typedef struct qw_metrics {
	double mse;        /* mean squared difference */
	double max_abs;    /* largest absolute difference */
	double cosine;     /* smallest cosine similarity of a row pair */
	double kl;         /* largest KL(softmax(ref) || softmax(ours)) of a row pair */
	double top5;       /* mean share of the reference's top 5 ids found in ours */
	double exact;      /* share of values exactly equal */
	double rel;        /* max_abs / max |ref| (at least 1) */
	int rows;
} qw_metrics;

typedef struct qw_thresholds {
	const char *name;                   /* "fp32" or "bf16" */
	double first_mse, first_max_abs;
	double pos_mse, pos_kl, pos_top5, pos_max_abs;
	double trace_rel;                   /* a layer diverges past this max-abs / max|ref| */
	double vision_rel;                  /* vision and connector features: max-abs / max|ref| */
	double pixel_max_abs;               /* preprocessing: one 8-bit level, 1/127.5 */
} qw_thresholds;

extern const qw_thresholds qw_thresholds_fp32;
extern const qw_thresholds qw_thresholds_bf16;
extern const qw_thresholds qw_thresholds_fp8;

/* "fp32", "bf16" or "fp8"; NULL if none is called that. */
const qw_thresholds *qw_thresholds_named(const char *name);

typedef struct qw_step_result {
	bool ran, pass;
	qw_metrics m;
	char note[512];
} qw_step_result;

typedef struct qw_parity_opts {
	const char *model_dir;
	const char *reference;
	const char *case_name;
	int stages;                 /* in-process stages (1 = whole model in one) */
	bool trace;
	const qw_thresholds *th;
	const struct qw_preprocess_opts *preprocess;   /* image processor settings; NULL: Qwen's */
} qw_parity_opts;

#define QW_TRACE_MAX 512

typedef struct qw_parity_result {
	bool multimodal;                      /* the image ladder ran */
	int n_steps;
	const char *names[QW_MAX_STEPS];
	qw_step_result step[QW_MAX_STEPS];
	bool pass;
	int tokens, vocab, hidden;            /* of the case */
	int decode_steps, decode_matched;     /* greedy steps compared, and equal */
	int n_trace;                          /* hidden states compared (0 without trace) */
	double trace_max_abs[QW_TRACE_MAX];   /* per hidden state */
	double trace_rel[QW_TRACE_MAX];
	int trace_first_bad;                  /* index of the first diverging one, or -1 */
} qw_parity_result;

/* Climbs the ladder with backend be: the multimodal one if the case's prompt holds image
 * tokens, else the text one.  Returns an error only when the ladder could not be run
 * (unreadable model or reference, missing case); a failing step is a result. */
qw_status qw_parity_run(const qw_parity_opts *o, qw_backend *be, qw_parity_result *r,
			qw_err *err);

/* Metrics of ours against ref, rows x cols (logits: top-5 and KL are meaningful). */
void qw_compare(const float *ref, const float *ours, int rows, int cols, qw_metrics *m);

#endif
