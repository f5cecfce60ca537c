/* parity_internal.h - what the text ladder (parity.c) and the multimodal ladder
 * (parity_image.c) share: reading the reference file, judging a step, the hidden-state trace
 * and the greedy continuation. */
#ifndef QW_CLI_PARITY_INTERNAL_H
#define QW_CLI_PARITY_INTERNAL_H

#include "cli/parity.h"
#include "kernels/pipeline.h"
#include "loader/checkpoint.h"

typedef struct pl_reference {
	qw_st_file *file;
	char case_name[64];
} pl_reference;

/* "{case}.{suffix}" as a malloc'd fp32 copy (F32 only), or NULL; *t gets the entry. */
float *pl_ref_f32(const pl_reference *ref, const char *suffix, const qw_tensor **t);
/* A reference tensor by its full key as fp32 (F32 only), or NULL. */
float *pl_ref_key_f32(const pl_reference *ref, const char *key, const qw_tensor **t);
/* "{case}.{suffix}" I64 (any shape) as malloc'd int32, *n values, or NULL. */
int32_t *pl_ref_ids(const pl_reference *ref, const char *suffix, int *n);

/* Marks s ran, stores m, passes it iff within the bounds (a note says which failed). */
void pl_judge(qw_step_result *s, const qw_metrics *m, double mse, double max_abs, double kl,
	      double top5);

/* Hidden states recorded through the stage hook, (n_hidden, T, H). */
typedef struct pl_trace {
	qw_backend *be;
	float *states;
	int n_hidden, T, H;
	qw_status st;
	qw_err err;
} pl_trace;

void pl_record_hidden(void *ctx, int index, const qw_act *hidden);
/* Starts recording p's hidden states for a T-token prefill (if o->trace). */
qw_status pl_trace_begin(pl_trace *tb, const qw_parity_opts *o, const qw_config *cfg, int T,
			 qw_pipeline *p, qw_err *err);
/* Stops recording and compares (if o->trace). */
qw_status pl_trace_end(pl_trace *tb, const qw_parity_opts *o, const pl_reference *ref,
		       const qw_config *cfg, const qw_checkpoint *ck, qw_pipeline *p,
		       qw_parity_result *r, qw_err *err);
void pl_compare_trace(const pl_reference *ref, const qw_config *cfg, const qw_checkpoint *ck,
		      pl_trace *tb, const qw_thresholds *th, qw_parity_result *r);

/* Greedy continuation through the cache from the prefill already in p, judged into
 * r->step[step]. */
qw_status pl_decode(const pl_reference *ref, qw_pipeline *p, const float *prefill_logits,
		    const qw_thresholds *th, qw_parity_result *r, int step, qw_err *err);

/* The multimodal ladder (parity_image.c); ids (T,) are the case's prompt. */
qw_status pl_run_image(const qw_parity_opts *o, qw_backend *be, const qw_config *cfg,
		       const qw_checkpoint *ck, const pl_reference *ref, const int32_t *ids, int T,
		       qw_parity_result *r, qw_err *err);

#endif
