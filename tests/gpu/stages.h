/* stages.h - what the GPU tests that run whole stage models share: a model's stages on
 * the CUDA backend (synthetic weights from one seed, a KV cache, the hidden and logits
 * activations) and one step through all of them.
 *
 * Owns: gpu_stages and its functions.  Failures end the running cmocka test (fail_msg).
 * Used by test_cuda_graph (graphs against ops) and test_cuda_fused (fused ops against
 * plain ones): each runs two copies of one model and compares their bits.
 */
#ifndef QW_TESTS_GPU_STAGES_H
#define QW_TESTS_GPU_STAGES_H

#include "kernels/forward.h"

#define GPU_STAGES_MAX 2

typedef struct gpu_stages {
	qw_stage_model st[GPU_STAGES_MAX];
	int n_stages;
	qw_act hidden;   /* (max_tokens, H) */
	qw_act logits;   /* (logit_rows, V) */
} gpu_stages;

/* cfg's layers split evenly over n_stages stages on be, synthetic weights of seed 7, each
 * stage with n_blocks KV blocks of block tokens and scratch for max_tokens rows. */
void gpu_stages_load(gpu_stages *g, qw_backend *be, const qw_config *cfg, int n_stages,
		     int max_tokens, int n_blocks, int block, int logit_rows);
void gpu_stages_free(gpu_stages *g, qw_backend *be);

/* b through every stage; its logits (b->n_logits, V) into out. */
void gpu_stages_step(gpu_stages *g, qw_backend *be, const qw_batch *b, float *out);

#endif
