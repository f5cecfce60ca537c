/* export.h - reduced-size models: a complete HF model directory (config.json and safetensors
 * weights in the hub's layout) of a model shrunk from a real config, with deterministic
 * random bf16 weights, for tests, parity fixtures and the built-in demo model.
 *
 * Owns: the config overrides and everything they keep consistent, the per-tensor random
 * value streams, FP8 block quantization of the exported weights, and writing the shards, the
 * index and config.json.  `qwen-ckpt export-reduced` is this module behind a command line.
 *
 * The output config is the input config (its own spelling kept) with the overrides applied
 * and everything that depends on them kept consistent:
 *   QW_EXPORT_OV_HEAD_DIM       rescales mrope_section to sum to head_dim/2
 *   QW_EXPORT_OV_HIDDEN         also sets vision_config.out_hidden_size
 *   QW_EXPORT_OV_VOCAB          moves special token ids that fall outside the vocabulary to
 *                               its top: bos V-6, eos V-5, vision_start V-4, vision_end V-3,
 *                               image V-2, video V-1 (ids inside it are kept)
 *   QW_EXPORT_OV_VISION_DEPTH   maps deepstack_visual_indexes proportionally into the depth
 *   QW_EXPORT_OV_VISION_HIDDEN  scales vision intermediate_size alike and keeps the most
 *                               heads (at most the original) that give a head size that is a
 *                               multiple of 4
 *   QW_EXPORT_OV_LAYERS         drops mlp_only_layers entries past the new depth
 * A fused-expert model whose expert matrices would be square (hidden = 2 x or 1 x
 * moe_intermediate) is refused: transformers could not tell its layout from its own.
 * With fp8 the text layers' linear weights are those same values quantized to float8_e4m3fn
 * per 128 x 128 block (scale = amax / 448, stored as <weight>_scale_inv), and config.json
 * gets Qwen's quantization_config.
 *
 * Weights: linear layers ~ N(0, 1/fan_in), embeddings ~ N(0, 1), position embeddings
 * ~ N(0, 0.5^2), norm weights 1 + N(0, 0.1^2), biases N(0, 0.02^2); each tensor draws from
 * its own stream seeded by (seed, tensor name), so a tensor does not change when others do.
 * The stream is counter-based, so any element can be computed on its own (e.g. by a GPU
 * filling a tensor in parallel): with s0 = qw_export_stream_start(seed, name),
 * g = 0x9e3779b97f4a7c15, mix = splitmix64's finaliser and U(x) = ((x >> 11) + 0.5) * 2^-53,
 * the element pair (2j, 2j+1) is
 *     u1 = U(mix(s0 + (2j+1) g)), u2 = U(mix(s0 + (2j+2) g))    (wrapping uint64 arithmetic)
 *     r = sqrt(-2 ln u1), a = 2 pi u2
 *     (mean + std r cos a, mean + std r sin a), computed in double, then float, then bf16
 * (round to nearest even), with (mean, std) from qw_export_value_dist.
 *
 * Files appear whole: each is written to NAME.tmp, synced and renamed; config.json comes last,
 * so a directory with a config.json holds a complete model.
 */
#ifndef QW_LOADER_EXPORT_H
#define QW_LOADER_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"
#include "loader/weights.h"

/* What an override replaces (index into qw_export_opts.ov). */
typedef enum qw_export_ov {
	QW_EXPORT_OV_LAYERS,         /* text num_hidden_layers */
	QW_EXPORT_OV_VOCAB,          /* text vocab_size */
	QW_EXPORT_OV_HIDDEN,         /* text hidden_size */
	QW_EXPORT_OV_HEADS,          /* text num_attention_heads */
	QW_EXPORT_OV_KV_HEADS,       /* text num_key_value_heads */
	QW_EXPORT_OV_HEAD_DIM,       /* text head_dim */
	QW_EXPORT_OV_INTER,          /* text intermediate_size (dense MLPs) */
	QW_EXPORT_OV_MOE_INTER,      /* text moe_intermediate_size */
	QW_EXPORT_OV_EXPERTS,        /* text num_experts (num_local_experts in v5 spelling) */
	QW_EXPORT_OV_TOP_K,          /* text num_experts_per_tok */
	QW_EXPORT_OV_VISION_DEPTH,   /* vision_config.depth */
	QW_EXPORT_OV_VISION_HIDDEN,  /* vision_config.hidden_size */
	QW_EXPORT_OV_COUNT           /* number of overrides; not one */
} qw_export_ov;

/* Largest value an override may take. */
#define QW_EXPORT_OV_MAX (1 << 30)

typedef struct qw_export_opts {
	int64_t ov[QW_EXPORT_OV_COUNT];  /* new values by qw_export_ov, 1..QW_EXPORT_OV_MAX;
					    -1 keeps the config's */
	uint64_t seed;                   /* the random streams' seed */
	int shards;                      /* 1: one model.safetensors; more: that many
					    model-0000k-of-0000n.safetensors and the index */
	bool fp8;                        /* text-layer linear weights as float8_e4m3fn with an
					    fp32 scale per 128 x 128 block */
} qw_export_opts;

/* What an export wrote. */
typedef struct qw_export_summary {
	char model_type[32];             /* as written in config.json */
	size_t n_tensors;                /* tensors written (FP8 scales included) */
	uint64_t bytes;                  /* their data bytes, all files together */
	int shards;                      /* safetensors files written */
} qw_export_summary;

/* No overrides, seed 0, one shard, bf16. */
void qw_export_opts_default(qw_export_opts *o);

/* Writes the reduced model of the input config (config_text: len bytes of config.json text;
 * label names it in errors, e.g. its path) into out_dir, created if missing (with its
 * parents).  sum (may be NULL) gets what was written.  Errors: QW_E_CONFIG when the input
 * config is invalid; QW_E_ARG when the options are (an override out of range, an overridden
 * config that does not validate, square fused experts, more shards than tensors), and then
 * nothing has been written; QW_E_IO / QW_E_NOMEM while writing.  A failed export may leave
 * weight files but never config.json. */
qw_status qw_export_reduced(const char *config_text, size_t len, const char *label,
			    const qw_export_opts *o, const char *out_dir, qw_export_summary *sum,
			    qw_err *err);

/* The first state of spec `name`'s random stream under seed. */
uint64_t qw_export_stream_start(uint64_t seed, const char *name);

/* Mean and standard deviation of spec s's random values, by what the tensor is. */
void qw_export_value_dist(const qw_wspec *s, double *mean, double *std);

/* The random values of spec s (s->numel of them, each already rounded to bf16) into out.
 * An FP8 export quantizes these same values. */
void qw_export_random_values(const qw_wspec *s, uint64_t seed, float *out);

/* FP8 block quantization of w's values v (w->numel of them, w's shape) with q's block
 * (br, bc) over the last two dims, as the export writes it and a GPU may repeat it value for
 * value: per block (m, sr, sc) of the leading index m and the block row and column (partial
 * at the edges), amax = the largest |v| in fp32, scale = amax / 448.0f in fp32 (1 for an
 * all-zero block), q = e4m3(v / scale) (fp32 division; nearest, ties to even, saturating at
 * +-448).  qout (may be NULL) gets the w->numel codes, scales (may be NULL) the
 * M * ceil(R / br) * ceil(C / bc) scales in (m, sr, sc) order. */
void qw_export_quantize_fp8(const qw_wspec *w, const qw_quant *q, const float *v, uint8_t *qout,
			    float *scales);

#endif
