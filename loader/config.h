/* config.h - a model's HF config.json, read into one struct and validated.
 *
 * Owns: qw_config, for the model types qwen3_vl_moe, qwen3_vl (text + vision) and the
 * text-only qwen3_moe and qwen3.  Both spellings are read: the hub's (rope_theta,
 * rope_scaling{mrope_section, mrope_interleaved}, num_experts) and transformers v5's
 * (rope_parameters{...}, num_local_experts).  Every invalid or inconsistent value is an
 * error (QW_E_CONFIG) whose message names the field, e.g. "text_config.num_key_value_heads".
 * Text-only models get mrope_section = {head_dim/2, 0, 0}: every rotary pair on the
 * temporal axis, which with equal positions on all axes is ordinary RoPE.
 */
#ifndef QW_LOADER_CONFIG_H
#define QW_LOADER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "loader/dtype.h"
#include "loader/error.h"

#define QW_MAX_LAYERS 512
#define QW_MAX_DEEPSTACK 16
#define QW_MAX_EOS 8

typedef enum qw_arch {
	QW_ARCH_QWEN3_VL_MOE,   /* Qwen3VLMoeForConditionalGeneration */
	QW_ARCH_QWEN3_VL,       /* Qwen3VLForConditionalGeneration */
	QW_ARCH_QWEN3_MOE,      /* Qwen3MoeForCausalLM (text only, per-expert weights) */
	QW_ARCH_QWEN3,          /* Qwen3ForCausalLM (text only, dense) */
} qw_arch;

typedef struct qw_text_config {
	int vocab_size;
	int hidden_size;                   /* H */
	int num_layers;                    /* num_hidden_layers */
	int num_heads;                     /* Hq */
	int num_kv_heads;                  /* Hkv; divides Hq */
	int head_dim;                      /* D; q_proj is [Hq*D, H] */
	int intermediate_size;             /* dense MLP width (0 when no layer is dense) */
	int moe_intermediate_size;         /* I, per expert */
	int num_experts;                   /* E; 0 for dense models */
	int num_experts_per_tok;           /* top-k */
	int decoder_sparse_step;           /* layer L is MoE iff (L+1) % step == 0 ... */
	bool layer_dense[QW_MAX_LAYERS];   /* ... and L is not in mlp_only_layers */
	bool norm_topk_prob;
	bool attention_bias;               /* q/k/v/o projections carry biases */
	double rms_norm_eps;
	double rope_theta;
	int mrope_section[3];              /* (t, h, w) rotary pairs; sums to head_dim/2 */
	bool mrope_interleaved;            /* informational: Qwen3-VL always interleaves */
	int max_position_embeddings;       /* 0 if the config does not say */
	int bos_token_id;                  /* -1 if none */
	int eos_token_ids[QW_MAX_EOS];
	int n_eos;
} qw_text_config;

typedef struct qw_vision_config {
	int depth;                         /* blocks */
	int hidden_size;                   /* Dv */
	int intermediate_size;
	int num_heads;
	int in_channels;
	int patch_size;                    /* P */
	int temporal_patch_size;           /* Tp */
	int spatial_merge_size;            /* m */
	int out_hidden_size;               /* = text hidden_size */
	int num_position_embeddings;       /* a square: G*G learned positions */
	int deepstack_indexes[QW_MAX_DEEPSTACK]; /* blocks whose output feeds a deepstack merger */
	int n_deepstack;
	double rope_theta;                 /* 2-D vision rotary base */
} qw_vision_config;

typedef enum qw_quant_kind {
	QW_QUANT_NONE,
	QW_QUANT_FP8,       /* quant_method fp8: float8_e4m3fn weights, fp32 scale per block */
	QW_QUANT_NVFP4,     /* quant_method modelopt, quant_algo NVFP4 (checks only) */
} qw_quant_kind;

typedef struct qw_quant {
	qw_quant_kind kind;
	int block[2];       /* fp8 weight_block_size (rows, cols) */
} qw_quant;

typedef struct qw_config {
	qw_arch arch;
	qw_quant quant;                    /* quantization_config; kind NONE when absent */
	char model_type[32];               /* as written in config.json */
	bool has_vision;                   /* qwen3_vl and qwen3_vl_moe */
	bool is_moe;                       /* qwen3_vl_moe and qwen3_moe */
	bool tie_word_embeddings;          /* lm_head is embed_tokens */
	qw_dtype dtype;                    /* torch_dtype / dtype; BF16 if unstated */
	qw_text_config text;
	qw_vision_config vision;           /* zeroed when !has_vision */
	int image_token_id, video_token_id, vision_start_token_id, vision_end_token_id;
} qw_config;

/* Reads and validates path (a config.json). */
qw_status qw_config_load(const char *path, qw_config *cfg, qw_err *err);

/* The same from JSON text; label names the source in errors. */
qw_status qw_config_parse(const char *json, size_t len, const char *label, qw_config *cfg,
			  qw_err *err);

/* Whether decoder layer L has an MoE block (else a dense MLP). */
bool qw_layer_is_moe(const qw_config *cfg, int layer);

/* cfg's vision tower cut to its first `depth` blocks (for a reduced export that keeps only
 * those): depth set and the deepstack mergers that follow dropped blocks dropped.  Does
 * nothing unless 0 <= depth < the tower's depth. */
void qw_config_cut_vision(qw_config *cfg, int depth);

/* "qwen3_vl_moe" etc. */
const char *qw_arch_name(qw_arch arch);

#endif
