/* ops.h - the op interface: everything the model computes, as one table of functions a
 * backend implements: the CPU backend (cpu/, the reference) and the CUDA backend (cuda/).
 *
 * Owns: qw_backend (the table), qw_act (activations on the backend), qw_kv_cache (the
 * paged KV cache, opaque: each backend picks its layout), qw_batch (which tokens of which
 * sequences one step computes) and the sampling parameters.
 *
 * Shapes: T tokens of a step, from any number of sequences, are rows of every activation.
 * H hidden, Hq / Hkv query / key-value heads of D dims, V vocabulary.  Weights are qw_tensor
 * values on the backend (qw_backend.upload), in the checkpoint's layout: Linear weights
 * [out, in]; fused experts input-major [E, H, 2I] and [E, I, H].  Activations are in the
 * backend's act_dtype (F32 on the CPU); the host sees them only through act_read/act_write.
 *
 * The KV cache holds post-norm, post-RoPE K and V per layer in fixed-size blocks.  A token's
 * K/V goes to `slot` = block * block_size + offset (kv_write); attention reads a sequence's
 * entries 0..kv_index through its block table, so writing a step's K/V before its attention
 * makes attention causal within a prefill chunk and continues the cache when decoding.
 */
#ifndef QW_KERNELS_OPS_H
#define QW_KERNELS_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "loader/config.h"
#include "loader/error.h"
#include "loader/safetensors.h"

typedef struct qw_act {
	void *data;     /* backend memory, (rows, cols) row-major in the backend's act_dtype */
	int rows, cols;
	int cap_rows;   /* rows allocated; rows may be set lower for a smaller step */
} qw_act;

typedef struct qw_kv_cache qw_kv_cache;     /* backend-defined */

/* Rows [row0, row0 + n) of a, as an activation of its own sharing a's memory (every backend
 * keeps activations row-major and contiguous); elem_bytes: the size of the backend's
 * act_dtype. */
static inline qw_act qw_act_rows(const qw_act *a, int row0, int n, size_t elem_bytes)
{
	qw_act r;
	r.data = (char *)a->data + (size_t)row0 * (size_t)a->cols * elem_bytes;
	r.rows = r.cap_rows = n;
	r.cols = a->cols;
	return r;
}

typedef struct qw_kv_shape {
	int n_layers;        /* layers this cache serves (a stage's) */
	int n_blocks;
	int block_size;      /* tokens per block */
	int n_kv_heads, head_dim;
} qw_kv_shape;

/* One step: T tokens and the sequences they belong to.  Host arrays; a backend copies what
 * it needs. */
typedef struct qw_batch {
	int n_tokens;                  /* T */
	const int32_t *token_ids;      /* (T,) */
	const int32_t *positions;      /* (T, 3) M-RoPE (t, h, w); text tokens repeat one value */
	const int32_t *seq;            /* (T,) the token's sequence, index into block_tables */
	const int32_t *kv_index;       /* (T,) the token's index in its sequence's KV entries */
	const int32_t *slot;           /* (T,) cache slot its K/V is written to */
	int n_seqs;
	int max_blocks;                /* row length of block_tables */
	const int32_t *block_tables;   /* (n_seqs, max_blocks) physical block ids */
	int n_logits;                  /* rows that need logits (usually each sequence's last) */
	const int32_t *logit_rows;     /* (n_logits,) token rows */
	/* image tokens in this step (prefill): their embeddings replace the pad tokens' and the
	 * deepstack features are added to the outputs of the first n_deepstack layers */
	int n_visual;
	const int32_t *visual_rows;    /* (n_visual,) token rows */
	const qw_act *visual_embeds;   /* (n_visual, H) */
	const qw_act *deepstack;      /* (n_deepstack,) of (n_visual, H) */
	int n_deepstack;
} qw_batch;

/* How one row is sampled (kernels/sample.h has the rule).  Zero-initialised fields beyond
 * the first five are off. */
typedef struct qw_sampling {
	float temperature;   /* 0: greedy (argmax, lowest id on ties) */
	int top_k;           /* 0: off */
	float top_p;         /* 1: off */
	uint64_t seed;
	uint64_t step;       /* which draw of this sequence: with seed, fixes the random number */
	float min_p;         /* 0: off; keeps tokens at least min_p times as likely as the best */
	float repetition_penalty;  /* 0 or 1: off; the row's history says which tokens */
	float frequency_penalty;   /* 0: off; times each generated token's count */
	float presence_penalty;    /* 0: off; once for each token generated */
	int32_t logprobs;    /* 0: none; 1: the chosen token's log-probability, and top_logprobs */
	int32_t top_logprobs;      /* with logprobs: this many of the most likely (at most
				      QW_MAX_TOP_LOGPROBS) */
} qw_sampling;

/* One distinct token of a sequence's history, for the penalties. */
typedef struct qw_token_count {
	int32_t token;
	uint32_t count;      /* bits 0-30: times generated; QW_IN_PROMPT: the prompt holds it */
} qw_token_count;

#define QW_IN_PROMPT 0x80000000u
#define QW_GENERATED(c) ((c) & 0x7fffffffu)

/* A row's history: what the penalties look at (each token at most once, any order). */
typedef struct qw_sample_history {
	const qw_token_count *tokens;   /* (n,) */
	int n;
} qw_sample_history;

#define QW_MAX_TOP_LOGPROBS 20

/* What a row asked with logprobs gets: log-probabilities under the distribution the token
 * was drawn from (kernels/sample.h). */
typedef struct qw_sample_logprobs {
	float logprob;                            /* of the chosen token */
	int32_t n_top;                            /* entries below */
	int32_t top_ids[QW_MAX_TOP_LOGPROBS];     /* the most likely, best first (lower id first
						     among equals) */
	float top_logprobs[QW_MAX_TOP_LOGPROBS];  /* theirs; -inf for one the cuts removed */
} qw_sample_logprobs;

/* The MoE weights of one layer, in either checkpoint layout. */
typedef struct qw_moe_weights {
	const qw_tensor *router;          /* (E, H) */
	const qw_tensor *gate_up;         /* (E, H, 2I) fused, or NULL */
	const qw_tensor *down;            /* (E, I, H) fused, or NULL */
	const qw_tensor *const *gate;     /* (E,) of (I, H): per-expert layout */
	const qw_tensor *const *up;       /* (E,) of (I, H) */
	const qw_tensor *const *expert_down; /* (E,) of (H, I) */
	int n_experts, top_k, inter;      /* E, k, I */
	int renormalize;                  /* divide the top-k weights by their sum */
	int separate;                     /* run the block as separate kernels, where a backend
					   * has a fused one too (qw_stage_model.plain_ops: the
					   * reference the fused kernel is held to) */
} qw_moe_weights;

/* The largest step a stage is sized for: what a backend's reserve() sizes every buffer a
 * step uses by (kernels/step_limits.h fills the shapes from a config and holds steps to the
 * limits).  The daemon's settings give the sizes (named in brackets). */
typedef struct qw_step_limits {
	int max_tokens;        /* rows of a step [max-batch-tokens] */
	int max_seqs;          /* sequences in a step [max-seqs] */
	int max_logits;        /* logit rows of a step [max-seqs] */
	int max_context;       /* KV entries one sequence reaches [max-model-len] */
	int block_size;        /* tokens per KV block [kv-block-tokens] */
	bool graphs;           /* decode steps are recorded as graphs [cuda-graphs] */
	/* the stage's text layers */
	int hidden, n_heads, n_kv_heads, head_dim;
	int moe_experts, moe_top_k, moe_inter;   /* 0 when no layer of the stage is MoE */
	int vocab;             /* logits' width where the stage samples, else 0 */
	/* the vision tower, on the stage that runs it (else 0): one image at a time */
	int vision_rows;       /* patches of the largest image [max-image-tokens x merge^2] */
	int vision_in;         /* values per patch row (C x Tp x P x P) */
} qw_step_limits;

/* What a backend's reserve() took. */
typedef struct qw_reserved {
	uint64_t device_bytes;   /* step scratch now allocated (device memory, or host on the CPU) */
	uint64_t graph_bytes;    /* kept free for step graphs (allocated as they are recorded) */
	uint64_t host_bytes;     /* pinned host buffers for steps */
} qw_reserved;

typedef struct qw_backend qw_backend;

struct qw_backend {
	const char *name;
	qw_dtype act_dtype;
	void *ctx;   /* backend state */

	// -- memory ----------------------------------------------------------------------
	qw_status (*act_alloc)(qw_backend *be, int rows, int cols, qw_act *out, qw_err *err);
	void (*act_free)(qw_backend *be, qw_act *a);
	/* host fp32 (rows, cols) <-> activation */
	qw_status (*act_write)(qw_backend *be, qw_act *dst, const float *src, qw_err *err);
	qw_status (*act_read)(qw_backend *be, const qw_act *src, float *dst, qw_err *err);
	qw_status (*act_copy)(qw_backend *be, qw_act *dst, const qw_act *src, qw_err *err);
	/* A backend-resident copy of a checkpoint tensor (the CPU backend returns t itself);
	 * released with the backend. */
	qw_status (*upload)(qw_backend *be, const qw_tensor *t, const qw_tensor **out, qw_err *err);
	qw_status (*kv_alloc)(qw_backend *be, const qw_kv_shape *shape, qw_kv_cache **out,
			      qw_err *err);
	void (*kv_free)(qw_backend *be, qw_kv_cache *kv);
	void (*destroy)(qw_backend *be);
	/* (optional) bytes of memory still free for a KV cache, after what is allocated and what
	 * reserve keeps free */
	uint64_t (*free_memory)(qw_backend *be);
	/* (optional) sizes now every buffer a step within lim needs; from then on a step past
	 * lim fails with QW_E_LIMIT, naming the buffer or limit, what it needs and what was
	 * reserved, where it would have grown a buffer.  *out (may be NULL): what it took.
	 * Called again, it sizes for the new limits. */
	qw_status (*reserve)(qw_backend *be, const qw_step_limits *lim, qw_reserved *out,
			     qw_err *err);
	/* (optional) nothing is allocated from here on: act_alloc, kv_alloc, upload, synthesize
	 * and fuse_rows fail with QW_E_LIMIT.  Only after reserve. */
	void (*seal)(qw_backend *be);
	/* (optional) a backend-resident tensor of t's dtype and shape (t->data unused) filled
	 * with the random values of loader/export.h's stream s0 and (mean, std), generated
	 * where it lives; released with the backend.  t F8_E4M3 (t->scale describes the F32
	 * block scales, t->block the block): those values quantized as qw_export_quantize_fp8
	 * does, the result's scale a backend-resident tensor of them (the FP8 form upload gives) */
	qw_status (*synthesize)(qw_backend *be, const qw_tensor *t, uint64_t s0, double mean,
				double std, const qw_tensor **out, qw_err *err);
	/* (optional) once per MoE layer at load, after its weights are on the backend: *gate_up
	 * and *down get the layer's experts in the fused layout ((E, H, 2I) input-major, gate
	 * columns first; (E, I, H)) as this backend's moe op reads them; the moe op is then given
	 * them (qw_moe_weights.gate_up, down).  Per-expert weights (w->gate, up, expert_down,
	 * made by this backend) move into them: their memory is freed and they may not be used
	 * again, so nothing is held twice and the moe op allocates nothing.  Fused ones
	 * (w->gate_up, down) are checked and given back as they are.  QW_E_ARG for weights it
	 * cannot take.  Without it, the moe op reads either layout as it is. */
	qw_status (*prepare_experts)(qw_backend *be, const qw_moe_weights *w,
				     const qw_tensor **gate_up, const qw_tensor **down, qw_err *err);
	/* (optional) called before a step's ops with its batch: a device backend copies the
	 * batch's arrays over once here instead of in every op that reads them */
	qw_status (*begin_step)(qw_backend *be, const qw_batch *batch, qw_err *err);
	/* (optional) step graphs: a step's launches recorded once and replayed, free of per-op
	 * host overhead.  Called after begin_step with a key naming everything the caller's ops
	 * depend on beyond the contents of begin_step's copies (pointers, shapes); the backend
	 * adds its own.  *replayed: a recording of the key was launched and the caller skips
	 * the ops.  Else *recording: the ops the caller runs next, up to graph_end, are recorded
	 * (not run); graph_end(ok) launches them and says so in *launched.  When an op failed
	 * while recording (ok false) or the recording could not be made, *launched is false,
	 * the key is never recorded again and the caller runs the ops plainly.  Neither: run the
	 * ops plainly (a key's first sight). */
	qw_status (*graph_begin)(qw_backend *be, const void *key, size_t key_bytes, bool *replayed,
				 bool *recording, qw_err *err);
	qw_status (*graph_end)(qw_backend *be, bool ok, bool *launched, qw_err *err);

	// -- ops ---------------------------------------------------------------------------
	/* out (T, H) = table[ids] */
	qw_status (*embed)(qw_backend *be, qw_act *out, const qw_tensor *table, const int32_t *ids,
			   qw_err *err);
	/* out = x * rsqrt(mean(x^2) + eps) * w, per row (out may be x) */
	qw_status (*rmsnorm)(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			     float eps, qw_err *err);
	/* the same per head: x (T, n_heads * head_dim), w (head_dim,) shared by all heads */
	qw_status (*head_rmsnorm)(qw_backend *be, qw_act *x, const qw_tensor *w, int n_heads,
				  float eps, qw_err *err);
	/* interleaved M-RoPE in place on x (T, n_heads * D): rotary pair j (of D/2) turns by
	 * pos[axis(j)] * theta^(-2j/D), axis(j) = h if j%3==1 && j<3*sec[1], w if j%3==2 &&
	 * j<3*sec[2], else t; pairs are (j, j + D/2) */
	qw_status (*rope)(qw_backend *be, qw_act *x, const int32_t *positions, int n_heads,
			  int head_dim, const int *mrope_section, float theta, qw_err *err);
	/* out (T, N) = x (T, K) w^T (+ bias), w (N, K) */
	qw_status (*matmul)(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			    const qw_tensor *bias, qw_err *err);
	/* out = a + b (out may be a) */
	qw_status (*add)(qw_backend *be, qw_act *out, const qw_act *a, const qw_act *b, qw_err *err);
	/* out (T, I) = silu(gate) * up */
	qw_status (*silu_mul)(qw_backend *be, qw_act *out, const qw_act *gate, const qw_act *up,
			      qw_err *err);
	/* K, V (T, Hkv * D) into the cache of `layer` at batch->slot */
	qw_status (*kv_write)(qw_backend *be, qw_kv_cache *kv, int layer, const qw_act *k,
			      const qw_act *v, const qw_batch *batch, qw_err *err);
	/* out (T, Hq * D): causal GQA attention of each token over its sequence's cache entries
	 * 0..kv_index, scale D^-0.5 */
	qw_status (*attention)(qw_backend *be, qw_act *out, const qw_act *q, qw_kv_cache *kv,
			       int layer, const qw_batch *batch, int n_heads, qw_err *err);
	/* out (T, H): router softmax in fp32, top-k, optional renormalisation, SwiGLU experts,
	 * weighted sum in ascending expert order */
	qw_status (*moe)(qw_backend *be, qw_act *out, const qw_act *x, const qw_moe_weights *w,
			 qw_err *err);
	/* out (n, cols) = rows `rows` of x */
	qw_status (*gather_rows)(qw_backend *be, qw_act *out, const qw_act *x, const int32_t *rows,
				 int n, qw_err *err);
	/* one token per logits row (n = logits->rows), each with its own parameters and
	 * history (history NULL: none has one; tokens must lie in [0, V), each at most once);
	 * out_logprobs (NULL, or (n,)) gets the rows whose params ask for logprobs (the
	 * other rows' entries may be overwritten with anything) */
	qw_status (*sample)(qw_backend *be, const qw_act *logits, const qw_sampling *params,
			    const qw_sample_history *history, int32_t *out_tokens,
			    qw_sample_logprobs *out_logprobs, qw_err *err);

	// -- fused ops (optional) ----------------------------------------------------------
	/* add_rmsnorm and qk_norm_rope_kv each stand for a run of the ops above and give their
	 * bits on the same backend (rounding where those store), so a forward pass with them
	 * equals one without; fuse_rows makes the weight qk_norm_rope_kv's GEMM reads.  The CPU
	 * backend has none: the composition of its ops is their reference. */
	/* x = x + r (stored as add stores it), then out = rmsnorm(x) * w of that x (out is not
	 * x): a residual add and the next norm */
	qw_status (*add_rmsnorm)(qw_backend *be, qw_act *out, qw_act *x, const qw_act *r,
				 const qw_tensor *w, float eps, qw_err *err);
	/* qkv (T, Hq*D + 2*Hkv*D) rows [q | k | v] (one GEMM against the fused q/k/v weight):
	 * q_out (T, Hq*D) = rope(head_rmsnorm(q, q_norm)); rope(head_rmsnorm(k, k_norm)) and v
	 * into the cache of `layer` at batch->slot: head_rmsnorm, rope, head_rmsnorm, rope,
	 * kv_write in one (positions, mrope_section, theta as rope takes them) */
	qw_status (*qk_norm_rope_kv)(qw_backend *be, qw_act *q_out, const qw_act *qkv,
				     const qw_tensor *q_norm, const qw_tensor *k_norm,
				     const int32_t *positions, int n_heads, int n_kv_heads,
				     int head_dim, const int *mrope_section, float theta, float eps,
				     qw_kv_cache *kv, int layer, const qw_batch *batch, qw_err *err);
	/* *out: one backend tensor whose rows are the rows of parts[0..n) in order (each a 2-D
	 * tensor this backend made, by upload or synthesize, all of one column count), released
	 * with the backend.  The parts move into it: each part's data then points at its rows
	 * there and its own memory is freed, so pointers to the parts stay valid and nothing is
	 * held twice (e.g. q/k/v projections as one GEMM's weight).  QW_E_ARG, nothing moved, for
	 * parts it cannot take */
	qw_status (*fuse_rows)(qw_backend *be, const qw_tensor *const *parts, int n,
			       const qw_tensor **out, qw_err *err);

	// -- vision ops --------------------------------------------------------------------
	/* out = (x - mean) / sqrt(var + eps) * w + b per row (out may be x) */
	qw_status (*layernorm)(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			       const qw_tensor *b, float eps, qw_err *err);
	/* x = gelu(x) in place: tanh approximation, or exact (erf) */
	qw_status (*gelu)(qw_backend *be, qw_act *x, bool tanh_approx, qw_err *err);
	/* 2-D rotary in place on x (T, n_heads * D), in fp32: pair j (of D/2, halves of the
	 * head) turns by pos_rc[t][j < D/4 ? 0 : 1] * theta^(-2 (j mod D/4) / (D/2)) */
	qw_status (*rope_2d)(qw_backend *be, qw_act *x, const int32_t *pos_rc, int n_heads,
			     int head_dim, float theta, qw_err *err);
	/* out (T, n_heads * D): full (non-causal) attention among the rows of each segment
	 * [seg_start[i], seg_start[i+1]); scale D^-0.5; q, k, v (T, n_heads * D) */
	qw_status (*segment_attention)(qw_backend *be, qw_act *out, const qw_act *q, const qw_act *k,
				       const qw_act *v, const int32_t *seg_start, int n_segs,
				       int n_heads, qw_err *err);
	/* out[r] = sum over k < taps of w[r][k] * table[idx[r][k]] (rows of a (G*G, D) table),
	 * summed in order in fp32 */
	qw_status (*interp_rows)(qw_backend *be, qw_act *out, const qw_tensor *table,
				 const int32_t *idx, const float *w, int taps, qw_err *err);
	/* dst[rows[i]] = src[i], or += with add */
	qw_status (*scatter_rows)(qw_backend *be, qw_act *dst, const int32_t *rows, const qw_act *src,
				  bool add, qw_err *err);
};

#endif
