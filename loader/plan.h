/* plan.h - sizes of a model and its split into pipeline stages.
 *
 * Owns: parameter counts (total, active per text token, vision tower) and the stage
 * planner: contiguous decoder-layer ranges, one per stage, chosen to minimise the largest
 * stage's weight bytes, where stage 0 also carries the embeddings and the vision tower
 * and the last stage the final norm and lm_head (a tied lm_head counts on both ends).
 * Works from a spec list (weights.h), so a bare config.json can be planned.
 */
#ifndef QW_LOADER_PLAN_H
#define QW_LOADER_PLAN_H

#include "loader/weights.h"

#define QW_MAX_STAGES 64

typedef struct qw_params {
	uint64_t total;     /* every weight, vision included */
	uint64_t active;    /* touched per text token: experts counted top-k of E; no vision */
	uint64_t vision;    /* the vision tower */
} qw_params;

typedef struct qw_stage_plan {
	qw_stage stage;
	uint64_t weight_bytes;
	uint64_t kv_bytes_per_token;   /* K and V of this stage's layers for one token */
} qw_stage_plan;

void qw_count_params(const qw_wspec *specs, size_t n, int experts_per_tok, qw_params *out);

/* K+V bytes one token occupies in one layer's cache, at kv_dtype. */
uint64_t qw_kv_bytes_per_token_layer(const qw_config *cfg, qw_dtype kv_dtype);

/* What a synthetic model's tensors weigh (--model synthetic:CONFIG.json: made by a backend,
 * no checkpoint): each bf16, except under an fp8 quantization_config, where a quantizable
 * weight is F8_E4M3 (one byte a value) and its block scales F32, as a checkpoint of that
 * config stores them.  Sets the specs' bytes. */
void qw_plan_synthetic_bytes(const qw_config *cfg, qw_wspec *specs, size_t n);

/* Splits the model into `count` stages (1..min(num_layers, QW_MAX_STAGES)); out has
 * count entries. */
qw_status qw_plan_stages(const qw_config *cfg, const qw_wspec *specs, size_t n, int count,
			 qw_dtype kv_dtype, qw_stage_plan *out, qw_err *err);

/* How a stage fits a GPU of device_bytes: its weights and `reserve` (what a worker holds
 * besides weights and KV cache) taken off, the KV cache gets kv_memory of what is left (the
 * daemon's kv-memory setting), in whole tokens of the stage's kv_bytes_per_token. */
typedef struct qw_stage_fit {
	bool fits;              /* weights + reserve within the GPU */
	uint64_t free_bytes;    /* device_bytes - weights - reserve, or 0 */
	uint64_t kv_bytes;      /* the KV cache: kv_memory of free_bytes, rounded down */
	uint64_t kv_tokens;     /* tokens whose K and V fit in kv_bytes (0 without layers) */
} qw_stage_fit;

void qw_plan_fit(const qw_stage_plan *p, uint64_t device_bytes, uint64_t reserve,
		 double kv_memory, qw_stage_fit *out);

/* The same for a checkpoint: each tensor weighs what it weighs in ck (what the config
 * implies where ck lacks it). */
qw_status qw_plan_checkpoint(const qw_config *cfg, const qw_checkpoint *ck, int count,
			     qw_dtype kv_dtype, qw_stage_plan *out, qw_err *err);

#endif
