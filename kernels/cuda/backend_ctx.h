/* backend_ctx.h - the CUDA backend's state, shared by the files that make it up (CUDA C++
 * only, private to kernels/cuda/): backend.cu (the op table, activations, the step's batch,
 * create and destroy), memory.cu (the weights and KV caches the backend owns), experts.cu
 * (MoE experts re-laid out at load), step_graphs.cu (recorded decode steps) and reserve.cu
 * (step memory: its buffers sized at reserve, the graphs' share, the seal).
 *
 * Owns: cuda_ctx and the records it keeps (owned tensors, step graphs, growing device
 * buffers), and the functions one of those files gives the others.
 */
#ifndef QW_KERNELS_CUDA_BACKEND_CTX_H
#define QW_KERNELS_CUDA_BACKEND_CTX_H

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/kernels.h"
#include "kernels/ops.h"

#define STAGING_BYTES (64u << 20)      /* each of the two pinned upload buffers */
#define LT_WS_BYTES (32u << 20)        /* cuBLASLt's workspace (QW_CUDA_FP8_GEMM=cublaslt) */
#define KV_HEADROOM (1ull << 30)        /* free memory kept back from the KV cache */
#define GRAPH_SLOTS 64                  /* step graphs kept, the least recently used replaced */
#define GRAPH_KEY_MAX 96
#define GRAPH_BYTES_MIN (2ull << 20)    /* device memory one step graph is taken to need, at
					   least (the driver's allocations come in 2 MiB) */
#define GRAPH_BYTES_MAX (64ull << 20)   /* more measured for one recording is another process's
					   allocation in the same moment (stages sharing a GPU,
					   in tests), not the graph's */

struct qw_kv_cache {
	qw_kv_shape shape;
	uint16_t *k, *v;            /* (n_layers, n_blocks * block_size, Hkv * D) bf16 */
	size_t layer_elems;         /* values of one layer's K (or V) */
};

/* A tensor the backend uploaded, synthesized or fused; freed with the backend.  BF16, or
 * FP8 (F8_E4M3) as the checkpoint has it: then t.scale points at `scale`, its block scales. */
typedef struct owned_tensor {
	qw_tensor t;
	qw_tensor scale;            /* FP8: F32 on the device, the checkpoint's shape */
	char *name;                 /* the name this backend gave it (fused tensors), else NULL */
	bool view;                  /* its data (and scales) lie in a fused tensor's memory */
	bool viewed;                /* views lie in its memory: it may not move */
	bool moved;                 /* its values moved into a tensor made of it (experts.cu) and
				       its memory is freed: data NULL, not to be used */
	struct owned_tensor *next;
} owned_tensor;

/* A recorded step (graph_begin): its key, and its executable graph once recorded. */
typedef struct step_graph {
	uint8_t key[GRAPH_KEY_MAX];
	size_t key_bytes;           /* 0: a free slot */
	cudaGraphExec_t exec;       /* NULL: seen once, or refused */
	bool refused;               /* its recording failed: it runs plainly */
	uint64_t used;              /* graph_clock at its last use */
} step_graph;

/* A device buffer that grows. */
typedef struct dev_buf {
	void *p;
	size_t bytes;
} dev_buf;

typedef struct cuda_ctx {
	int device;
	cudaStream_t stream;
	uint8_t *staging[2];        /* pinned host buffers for uploads */
	cudaEvent_t staged[2];      /* each buffer's last copy */
	int next_staging;
	owned_tensor *tensors;
	/* the step */
	const qw_batch *cur;        /* the host batch begin_step last saw */
	qw_cuda_batch db;           /* its device copy */
	int32_t *batch_host;        /* pinned (batch_cap ints) */
	size_t batch_cap;
	dev_buf batch_dev;
	cudaEvent_t batch_copied;
	/* scratch */
	dev_buf small;              /* per-call index arrays (vision ops) */
	size_t small_used;
	dev_buf attn_ws, moe_ws, sample_ws;
	uint32_t *moe_sync;         /* the fused MoE kernel's counters, zeroed once (kernels.h) */
	qw_cuda_moe_path moe_path;  /* environment QW_CUDA_MOE: plain (the default), auto or fused */
	/* an FP8 linear weight dequantised to bf16 for a GEMM of many tokens: sized at upload
	 * (and fuse_rows) for the largest such weight, never grown by a step */
	dev_buf fp8_deq;
	/* GEMMs of many tokens on FP8 weights through cuBLASLt's FP8 GEMM instead (environment
	 * QW_CUDA_FP8_GEMM=cublaslt; shapes it has no algorithm for are dequantised) */
	bool fp8_lt_on;
	/* dense GEMMs of more than 128 tokens on gemm_wgmma.cu's tiles (environment
	 * QW_CUDA_WGMMA=1, on a Hopper GPU whose self-check gave the mma.sync tiles' bits) */
	bool wgmma_on;
	qw_cuda_fp8_lt *fp8_lt;     /* NULL unless fp8_lt_on */
	void *lt_ws;                /* its workspace (LT_WS_BYTES) */
	dev_buf fp8_act;            /* the quantised activations */
	qw_cuda_fp8_stats fp8_stats;
	uint16_t *host_bf16;        /* act_read / act_write conversions */
	size_t host_cap;
	/* step graphs: they name scratch by address, so a buffer that moves drops them all */
	step_graph graphs[GRAPH_SLOTS];
	uint64_t graph_clock;
	int recording;              /* the slot being recorded, or -1 */
	qw_cuda_graph_stats graph_stats;
	uint64_t graph_each;        /* the most device memory one recording took (measured) */
	uint64_t graph_used;        /* what recordings since seal took, summed as measured (an
				       upper bound: the driver may reuse a replaced graph's) */
	/* reserve and seal (reserve.cu) */
	bool reserved;              /* the buffers above are sized for lim and never grow */
	qw_step_limits lim;
	bool sealed;                /* nothing is allocated any more */
	uint64_t free_at_seal;      /* the device's free memory then */
} cuda_ctx;

static inline cuda_ctx *ctx_of(qw_backend *be)
{
	return (cuda_ctx *)be->ctx;
}

#define D16(a) ((uint16_t *)(a)->data)
#define C16(a) ((const uint16_t *)(a)->data)

// -- memory.cu: the weights and KV caches the backend owns --------------------------------

qw_status cuda_upload(qw_backend *be, const qw_tensor *t, const qw_tensor **out, qw_err *err);
qw_status cuda_synthesize(qw_backend *be, const qw_tensor *t, uint64_t s0, double mean,
			  double std, const qw_tensor **out, qw_err *err);
qw_status cuda_fuse_rows(qw_backend *be, const qw_tensor *const *parts, int n,
			 const qw_tensor **out, qw_err *err);
qw_status cuda_kv_alloc(qw_backend *be, const qw_kv_shape *shape, qw_kv_cache **out,
			qw_err *err);
void cuda_kv_free(qw_backend *be, qw_kv_cache *kv);
uint64_t cuda_free_memory(qw_backend *be);
/* Frees every tensor the backend made (destroy). */
void cuda_free_weights(cuda_ctx *c);
/* A new owned tensor of desc's dtype and shape (FP8 with room for the block scales desc->scale
 * describes, else bf16), its memory not yet written. */
qw_status cuda_new_tensor(cuda_ctx *c, const qw_tensor *desc, owned_tensor **out, qw_err *err);
/* The owned tensor that t is, or NULL when this backend did not make t. */
owned_tensor *cuda_owner_of(cuda_ctx *c, const qw_tensor *t);
/* Unlinks and frees an owned tensor that nothing views or refers to yet (its name too). */
void cuda_drop_tensor(cuda_ctx *c, owned_tensor *o);
/* Frees o's device memory once its values are in a tensor made of it: o stays listed,
 * marked moved, its data NULL. */
void cuda_release_moved(owned_tensor *o);

// -- experts.cu: MoE experts as the MoE kernels read them ----------------------------------

/* The prepare_experts op (ops.h): per-expert layers re-laid out in the fused layout, their
 * parts' memory freed; fused ones checked. */
qw_status cuda_prepare_experts(qw_backend *be, const qw_moe_weights *w,
			       const qw_tensor **gate_up, const qw_tensor **down, qw_err *err);

// -- step_batch.cu: the step's batch on the device ----------------------------------------

/* The begin_step op (ops.h): checks the step's rows, copies its arrays to the device in one
 * transfer and points c->db at them (c->cur = b). */
qw_status cuda_begin_step(qw_backend *be, const qw_batch *b, qw_err *err);
/* Where each of a step's arrays lies in its batch copy (pinned host and device alike), in
 * ints from the copy's start: T tokens, S sequences, block-table rows of `row`, n_logits. */
typedef struct cuda_batch_layout {
	size_t token_ids;           /* (T,) */
	size_t positions;           /* (T, 3) */
	size_t seq, kv_index, slot; /* (T,) each */
	size_t seq_start;           /* (S + 1,) */
	size_t block_tables;        /* (S, row) */
	size_t logit_rows;          /* (n_logits,) */
	size_t ints;                /* the whole copy */
} cuda_batch_layout;
cuda_batch_layout cuda_batch_layout_of(int T, int S, int row, int n_logits);
/* The step's block-table row (a power of two, at least 4) and context bucket (a power of
 * two, at least 256): what step graphs share */
int cuda_table_row(int max_blocks);
int cuda_kv_bucket(int max_kv);

// -- reserve.cu: step memory ----------------------------------------------------------------

/* b holding at least `bytes`: grown (by half again) before reserve, an error after it. */
qw_status cuda_grow_dev(cuda_ctx *c, dev_buf *b, size_t bytes, qw_err *err);
/* host_bf16 holding at least n values (host memory: it may grow). */
qw_status cuda_host_room(cuda_ctx *c, size_t n, qw_err *err);
/* The step's batch: `ints` of pinned host and device memory (an error past reserve's). */
qw_status cuda_batch_room(cuda_ctx *c, size_t ints, qw_err *err);
qw_status cuda_reserve(qw_backend *be, const qw_step_limits *lim, qw_reserved *out,
		       qw_err *err);
void cuda_seal(qw_backend *be);
/* QW_E_LIMIT naming `what` once sealed */
qw_status cuda_unsealed(const cuda_ctx *c, const char *what, qw_err *err);
/* Device memory kept free for step graphs: GRAPH_SLOTS of the largest measured (0 unless the
 * limits say graphs are recorded). */
uint64_t cuda_graph_budget(const cuda_ctx *c);
/* Whether one more graph fits in what is kept for them (always before seal): what the
 * recordings since seal took, and the largest one again, within the budget.  Measured per
 * recording, not against the device's free memory, which stages sharing a GPU also move. */
bool cuda_graph_room(const cuda_ctx *c);
/* free_memory: the device's free memory less the headroom and the graphs' share. */
uint64_t cuda_step_free_memory(qw_backend *be);

// -- step_graphs.cu: recorded decode steps -------------------------------------------------

qw_status cuda_graph_begin(qw_backend *be, const void *key, size_t key_bytes, bool *replayed,
			   bool *recording, qw_err *err);
qw_status cuda_graph_end(qw_backend *be, bool ok, bool *launched, qw_err *err);
/* Forgets every recorded step (their scratch addresses are about to change). */
void cuda_drop_graphs(cuda_ctx *c);

#endif
