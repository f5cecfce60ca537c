/* weights.h - the weight map: every tensor a config implies, named, shaped and bound to
 * the checkpoint.
 *
 * Owns: qw_wspec (one expected tensor: name, shape, which part of the model and which
 * layer it belongs to), the spec list of a whole model (qw_wmap_build), the bound weights
 * of one pipeline stage (qw_weights, pointers into the checkpoint's mapping; nothing is
 * copied) and the load report (loaded / missing / mismatched / extra / other_stage, in all
 * and by part of the model).  A checkpoint of headers alone (a manifest) binds the same way:
 * the tensors bound then have no data.
 *
 * Layouts: VL checkpoints keep text weights under "model.language_model." and vision
 * under "model.visual."; text-only ones under "model.".  MoE experts come fused in the
 * hub's input-major layout (mlp.experts.gate_up_proj [E, H, 2I], gate columns first;
 * mlp.experts.down_proj [E, I, H]) or one module per expert as Qwen3-MoE text checkpoints
 * store them (mlp.experts.{e}.gate_proj.weight [I, H], up_proj [I, H], down_proj [H, I]).
 * A tied lm_head is embed_tokens, which the last stage then binds too.
 *
 * FP8 checkpoints (config quantization_config, quant_method fp8): each text-layer linear
 * weight is float8_e4m3fn with an fp32 "<weight>_scale_inv" (".weight" -> ".weight_scale_inv";
 * fused experts "<name>_scale_inv") holding one scale per block of its last two dims; a
 * module may also be left in bf16.  Binding checks the scale's presence, shape, dtype and
 * values (finite, > 0; not for a manifest, which has no values) and links it to the
 * weight (qw_tensor.scale), so readers dequantise W = Wq * S[block].
 */
#ifndef QW_LOADER_WEIGHTS_H
#define QW_LOADER_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "loader/checkpoint.h"
#include "loader/config.h"

typedef enum qw_part {
	QW_PART_EMBED,    /* token embeddings: first stage */
	QW_PART_VISION,   /* the vision tower: first stage */
	QW_PART_LAYER,    /* decoder layer qw_wspec.layer */
	QW_PART_HEAD,     /* final norm and lm_head: last stage */
} qw_part;

typedef enum qw_expert_layout {
	QW_EXPERTS_FUSED,       /* hub Qwen3-VL-MoE: two 3-D tensors per layer */
	QW_EXPERTS_PER_EXPERT,  /* Qwen3-MoE text: three 2-D tensors per expert */
} qw_expert_layout;

typedef struct qw_layer_weights {
	const qw_tensor *input_norm;          /* (H,) */
	const qw_tensor *q_proj, *k_proj;     /* (Hq*D, H), (Hkv*D, H) */
	const qw_tensor *v_proj, *o_proj;     /* (Hkv*D, H), (H, Hq*D) */
	const qw_tensor *q_bias, *k_bias;     /* (Hq*D,), (Hkv*D,); attention_bias only */
	const qw_tensor *v_bias, *o_bias;     /* (Hkv*D,), (H,); attention_bias only */
	const qw_tensor *q_norm, *k_norm;     /* (D,) shared by all heads */
	const qw_tensor *post_norm;           /* (H,) */
	/* dense layers */
	const qw_tensor *gate_proj, *up_proj; /* (Imlp, H) */
	const qw_tensor *down_proj;           /* (H, Imlp) */
	/* MoE layers */
	const qw_tensor *router;              /* (E, H) */
	const qw_tensor *experts_gate_up;     /* (E, H, 2I) fused layout */
	const qw_tensor *experts_down;        /* (E, I, H) fused layout */
	const qw_tensor **expert_gate;        /* (E,) of (I, H); per-expert layout */
	const qw_tensor **expert_up;          /* (E,) of (I, H) */
	const qw_tensor **expert_down;        /* (E,) of (H, I) */
} qw_layer_weights;

typedef struct qw_vision_block_weights {
	const qw_tensor *norm1_w, *norm1_b;   /* (Dv,) LayerNorm */
	const qw_tensor *qkv_w, *qkv_b;       /* (3*Dv, Dv), (3*Dv,) rows q | k | v */
	const qw_tensor *proj_w, *proj_b;     /* (Dv, Dv), (Dv,) */
	const qw_tensor *norm2_w, *norm2_b;   /* (Dv,) */
	const qw_tensor *fc1_w, *fc1_b;       /* (Iv, Dv), (Iv,) */
	const qw_tensor *fc2_w, *fc2_b;       /* (Dv, Iv), (Dv,) */
} qw_vision_block_weights;

typedef struct qw_merger_weights {
	const qw_tensor *norm_w, *norm_b;     /* (Dv,) main merger; (Dv*m*m,) deepstack */
	const qw_tensor *fc1_w, *fc1_b;       /* (Dv*m*m, Dv*m*m), (Dv*m*m,) */
	const qw_tensor *fc2_w, *fc2_b;       /* (H, Dv*m*m), (H,) */
} qw_merger_weights;

typedef struct qw_weights {
	qw_expert_layout expert_layout;
	int layer_begin, layer_end;           /* decoder layers [begin, end) bound */
	const qw_tensor *embed;               /* (V, H); first stage */
	const qw_tensor *final_norm;          /* (H,); last stage */
	const qw_tensor *lm_head;             /* (V, H); last stage; == embed tensor when tied */
	qw_layer_weights *layers;             /* (num_layers,) only [begin, end) filled */
	const qw_tensor *patch_w, *patch_b;   /* (Dv, C, Tp, P, P), (Dv,) */
	const qw_tensor *pos_embed;           /* (G*G, Dv) */
	qw_vision_block_weights *blocks;      /* (depth,) */
	qw_merger_weights merger;
	qw_merger_weights *deepstack;         /* (n_deepstack,) */
	const qw_tensor **expert_slots;       /* storage behind expert_gate/up/down */
} qw_weights;

typedef struct qw_wspec {
	char name[96];
	int ndim;
	int64_t shape[5];
	uint64_t numel;
	uint64_t bytes;          /* numel x the config's dtype, or the checkpoint's when bound */
	qw_part part;
	int layer;               /* decoder layer for QW_PART_LAYER, else -1 */
	int experts;             /* E of its layer if this holds expert weights (fused: all E of
				    them; per-expert: one), else 0 */
	bool quantizable;        /* a text-layer linear weight: FP8 checkpoints store it quantized */
	bool is_scale;           /* the block scales of the quantizable spec just before it */
	const qw_tensor **slot;  /* where binding stores the tensor (in a qw_weights) */
} qw_wspec;

/* One pipeline stage: decoder layers [layer_begin, layer_end); stage 0 also holds the
 * embeddings and the vision tower, the last stage the final norm and lm_head. */
typedef struct qw_stage {
	int index, count;
	int layer_begin, layer_end;
} qw_stage;

/* The parts of a model the load report counts separately (by tensor name, so a tensor
 * that the config does not imply is placed too). */
typedef enum qw_wgroup {
	QW_GROUP_TEXT,            /* embeddings, final norm, lm_head */
	QW_GROUP_LAYERS,          /* decoder layers: attention, norms, router, dense MLPs */
	QW_GROUP_EXPERTS,         /* MoE expert weights (and their scales) */
	QW_GROUP_VISION,          /* patch embedding, position table */
	QW_GROUP_VISION_BLOCKS,
	QW_GROUP_DEEPSTACK,       /* deepstack mergers */
	QW_GROUP_MERGER,          /* the merger at the end of the vision tower */
	QW_GROUP_OTHER,           /* none of these */
	QW_GROUP_COUNT
} qw_wgroup;

typedef struct qw_wcount {
	size_t expected, loaded, missing, mismatched, extra, other_stage;
} qw_wcount;

typedef struct qw_wreport {
	size_t expected;           /* tensors this stage needs */
	size_t loaded;             /* found with the right shape and a float dtype */
	size_t missing;
	size_t mismatched;         /* wrong shape or dtype */
	size_t extra;              /* in the checkpoint, implied by nothing in the config */
	size_t other_stage;        /* in the checkpoint, owned by another stage */
	uint64_t loaded_bytes;
	char **missing_names;      /* (missing,) */
	char **mismatched_desc;    /* (mismatched,) "name: expected [..] float, got [..] I64" */
	char **extra_names;        /* (extra,) */
	qw_wcount parts[QW_GROUP_COUNT];   /* the same counts by part of the model */
} qw_wreport;

/* Builds the spec list of the whole model.  If w is non-NULL, each spec's slot points into
 * it; a zeroed w is allocated for the config first (an allocated one is reused, so the slots
 * of loaded weights can be found again).  Free *specs with free(). */
qw_status qw_wmap_build(const qw_config *cfg, qw_expert_layout layout, qw_weights *w,
			qw_wspec **specs, size_t *n, qw_err *err);

/* The layout a checkpoint uses (fused unless per-expert keys are present). */
qw_expert_layout qw_detect_expert_layout(const qw_config *cfg, const qw_checkpoint *ck);

/* The part a tensor of this name belongs to, and the part's name as the report's JSON
 * spells it ("text_layers", "vision_blocks", ...). */
qw_wgroup qw_wgroup_of_name(const char *name);
const char *qw_wgroup_name(qw_wgroup g);

/* Vision blocks a checkpoint stores: 1 + the highest k of its model.visual.blocks.{k}.*
 * tensors (0 if none).  A reduced export may keep only the tower's first blocks. */
int qw_vision_blocks_stored(const qw_checkpoint *ck);

/* Whether spec belongs to stage (NULL stage: the whole model). */
bool qw_stage_owns(const qw_stage *stage, const qw_config *cfg, const qw_wspec *spec);

/* Binds the tensors `stage` owns (NULL: all) and fills the report.  Returns QW_E_WEIGHTS
 * (err names the first problem) if any is missing or mismatched; w stays usable for the
 * report either way and must be released with qw_weights_free. */
qw_status qw_weights_load(const qw_config *cfg, const qw_checkpoint *ck, const qw_stage *stage,
			  qw_weights *w, qw_wreport *rep, qw_err *err);

void qw_weights_free(qw_weights *w);
void qw_wreport_free(qw_wreport *rep);

/* The report as a JSON object (malloc'd string):
 * {"loaded": N, "missing": N, "mismatched": N, "extra": N, "other_stage": N, ...,
 *  "parts": {"text_layers": {"expected": N, "loaded": N, ...}, ...} (parts with any tensor),
 *  ...lists}. */
char *qw_wreport_json(const qw_wreport *rep, const qw_stage *stage);

#endif
