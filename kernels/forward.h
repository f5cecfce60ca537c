/* forward.h - the text model's forward pass, written once over the op interface.
 *
 * Owns: qw_stage_model, one pipeline stage on one backend: its weights (uploaded from the
 * checkpoint through qw_backend.upload, plus each layer's q/k/v projections fused into one
 * weight where the backend has the fused ops, and each MoE layer's experts as the backend's
 * moe op reads them where it has prepare_experts: per-expert ones moved into the fused
 * layout, which the layer's weights then name), its layers' KV cache, and scratch activations
 * for up to max_tokens rows.  A stage runs decoder layers [layer_begin, layer_end): the first
 * stage embeds token ids, every other stage takes the hidden states (T, H) the previous one
 * left, and the last stage also turns chosen rows into logits.  The daemon's pipeline stages
 * and the in-process stages of qwen-parity are this same code.
 *
 * Fused ops (ops.h, optional): where the backend has them, a layer runs one q/k/v GEMM then
 * qk_norm_rope_kv, and add_rmsnorm for a residual add and the norm after it (within a layer,
 * and into the next layer of the stage when no deepstack feature comes between).  They give
 * the bits of the separate ops, so plain_ops (every op separately) is their reference.
 */
#ifndef QW_KERNELS_FORWARD_H
#define QW_KERNELS_FORWARD_H

#include "kernels/ops.h"
#include "loader/checkpoint.h"
#include "loader/weights.h"

/* Called with each hidden state HF records: index 0 after the embedding, index L+1 after
 * decoder layer L (its output, as the next layer receives it). */
typedef void (*qw_hidden_hook)(void *ctx, int index, const qw_act *hidden);

typedef struct qw_stage_model {
	const qw_config *cfg;           /* not owned */
	qw_backend *be;                 /* not owned */
	qw_stage stage;
	qw_weights w;                   /* tensors on the backend */
	qw_kv_cache *kv;                /* (layer_end - layer_begin) layers */
	qw_kv_shape kv_shape;
	int max_tokens;                 /* rows of the scratch activations */
	qw_act h, q, k, v, attn, o, gate, up, mlp;   /* scratch, (max_tokens, width) */
	qw_act picked;                  /* (max_tokens, H) rows chosen for logits */
	/* (layer_end - layer_begin,) a layer's q/k/v projections as one ((Hq + 2 Hkv) D, H)
	 * weight, rows q | k | v (fuse_rows; q_proj, k_proj, v_proj stay valid as its views), or
	 * NULL where the layer runs them apart (biases, or a backend without the fused ops) */
	const qw_tensor **qkv_proj;
	qw_act qkv;                     /* (max_tokens, (Hq + 2 Hkv) D) its GEMM's output, scratch */
	bool plain_ops;                 /* run every op separately: the reference the fused path is
					   tested against */
	qw_hidden_hook hook;            /* optional; must not change hidden */
	bool graphs;                    /* decode steps may be recorded and replayed (qw_stage_step) */
	void *hook_ctx;
	/* a synthetic model's tensors (no checkpoint): their descriptions, the block scales'
	 * descriptions of those that are FP8 (synth_scales[i] for synth[i]), and their values
	 * (bf16, or e4m3 codes then the F32 scales) on the host when the backend cannot
	 * generate them itself */
	qw_tensor *synth;
	qw_tensor *synth_scales;
	int n_synth;
	void **synth_host;
} qw_stage_model;

/* Called as weights reach the backend: bytes uploaded so far of the stage's total. */
typedef void (*qw_load_progress)(void *ctx, uint64_t done, uint64_t total);

/* Loads and uploads what `stage` owns from ck (the load must be complete: a missing or
 * mismatched tensor is an error) and allocates scratch for max_tokens rows; no KV cache yet.
 * progress may be NULL. */
qw_status qw_stage_model_load(qw_stage_model *m, const qw_config *cfg, const qw_checkpoint *ck,
			      const qw_stage *stage, qw_backend *be, int max_tokens,
			      qw_load_progress progress, void *progress_ctx, qw_err *err);

/* The same without a checkpoint: every tensor the stage owns filled with the deterministic
 * random values qwen-ckpt export-reduced would write for seed (loader/export.h), generated
 * by the backend where it can (synthesize), else on the host and uploaded.  Under an fp8
 * quantization_config the quantizable weights are F8_E4M3 with F32 block scales (t->scale,
 * t->block), those same values quantized as export-reduced --quantize fp8 writes them. */
qw_status qw_stage_model_load_synthetic(qw_stage_model *m, const qw_config *cfg,
					const qw_stage *stage, qw_backend *be, uint64_t seed,
					int max_tokens, qw_load_progress progress,
					void *progress_ctx, qw_err *err);

/* Bytes of the scratch activations the stage holds (for max_tokens rows). */
uint64_t qw_stage_model_scratch_bytes(const qw_stage_model *m);

/* Allocates the stage's KV cache: n_blocks blocks of block_size tokens for its layers. */
qw_status qw_stage_model_alloc_kv(qw_stage_model *m, int n_blocks, int block_size, qw_err *err);

/* Both: load, then a KV cache of n_blocks x block_size tokens. */
qw_status qw_stage_model_init(qw_stage_model *m, const qw_config *cfg, const qw_checkpoint *ck,
			      const qw_stage *stage, qw_backend *be, int n_blocks, int block_size,
			      int max_tokens, qw_err *err);
void qw_stage_model_free(qw_stage_model *m);

/* Before a daemon's stage is ready: steps of the largest sizes lim admits on a KV cache made
 * for them and freed after (m has none yet), so that the kernels they launch are loaded, a
 * step graph is recorded (and its memory measured) where m->graphs says so, and a step past
 * what the backend reserved fails at load, not on the first request.  Prefills of one
 * sequence of 1, 2, 3, 4 tokens and the powers of two up to T = min(max_tokens, max_context),
 * and of T; decode steps of 1, 2, 3, 4, 8, 16 and min(max_seqs, max_tokens) sequences (those
 * within it), each three times (seen, recorded, replayed); the last stage samples each,
 * its rows taking every way of sampling in turn (greedy, drawn, penalised, with
 * log-probabilities).  hidden (max_tokens, H); logits (max_logits, V) on the last stage,
 * else NULL.  Their contents are left undefined. */
qw_status qw_stage_model_warm_up(qw_stage_model *m, const qw_step_limits *lim, qw_act *hidden,
				 qw_act *logits, qw_err *err);

/* One step of this stage for batch b.  hidden (cap >= T rows, H cols): ignored on input by
 * the first stage (which embeds b->token_ids), the previous stage's output otherwise; holds
 * this stage's output afterwards.  On the last stage, when b->n_logits > 0, logits
 * (b->n_logits rows set, V cols) get the logits of rows b->logit_rows of hidden (final norm,
 * then lm_head); other stages ignore logits (it may be NULL).  With m->graphs on a backend
 * that has graph_begin, a decode step (one token from each sequence, in sequence order, no
 * images, no hook) is recorded the second time its shape is seen and replayed after: the
 * same kernels on the same buffers, so the same bits as running the ops. */
qw_status qw_stage_step(qw_stage_model *m, const qw_batch *b, qw_act *hidden, qw_act *logits,
			qw_err *err);

#endif
