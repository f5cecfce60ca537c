/* bench_cuda_step.c - times whole decode steps of one pipeline stage holding every layer of a
 * model (a config; synthetic weights made on the GPU), without the daemon: steps replayed
 * as CUDA graphs and the same steps run op by op, at several batch sizes, against the
 * step's byte roofline (the weights it reads once, plus the K/V, over a copy bandwidth);
 * then where the time of one op-by-op step goes, op by op (events around each op on the
 * backend's stream, the fused ops among them; an op's time includes its launch gaps).  The
 * model runs the fused ops where the backend has them; QW_PLAIN_OPS=1 runs every op
 * separately (qw_stage_model.plain_ops), for the breakdown before fusion.  Not a test.
 * Built by `scons tests`; run
 *     build/tests/bench/bench_cuda_step CONFIG.json [copy GB/s, default 4287] [context]
 * The op-by-op step of batch QW_PROFILE_BATCH (default 1) runs between cudaProfilerStart and
 * Stop, for `ncu --profile-from-start off`.
 */
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/forward.h"
#include "loader/config.h"
#include "tests/bench/bench_util.h"

#define BLOCK 16
#define MAX_SEQS 256
#define STEPS 30

static void die(const char *what, const qw_err *err)
{
	fprintf(stderr, "bench_cuda_step: %s: %s\n", what, err ? err->msg : "");
	exit(1);
}

// -- per-op timing: the backend's ops wrapped with events ---------------------------------

#define MAX_MARKS 8192
#define MAX_NAMES 64

static qw_backend inner;   /* the CUDA backend's table, called by the wrappers */
static cudaStream_t stream;
static cudaEvent_t marks[MAX_MARKS];
static const char *mark_name[MAX_MARKS / 2];
static int n_marks;
static bool timing;
static char names[MAX_NAMES][48];
static double name_ms[MAX_NAMES];
static int name_calls[MAX_NAMES];
static int n_names;

static const char *intern(const char *s)
{
	for (int i = 0; i < n_names; i++)
		if (!strcmp(names[i], s))
			return names[i];
	snprintf(names[n_names], sizeof names[0], "%s", s);
	return names[n_names++];
}

static void mark(const char *name)
{
	if (!timing || n_marks + 2 > MAX_MARKS)
		return;
	if (!(n_marks & 1))
		mark_name[n_marks / 2] = intern(name);
	CK(cudaEventRecord(marks[n_marks++], stream));
}

#define WRAP(op, params, args, label)                 \
	static qw_status w_##op params               \
	{                                             \
		mark(label);                          \
		qw_status st = inner.op args;         \
		mark(label);                          \
		return st;                            \
	}

WRAP(embed, (qw_backend *be, qw_act *out, const qw_tensor *t, const int32_t *ids, qw_err *e),
     (be, out, t, ids, e), "embed")
WRAP(rmsnorm, (qw_backend *be, qw_act *o, const qw_act *x, const qw_tensor *w, float eps,
	       qw_err *e), (be, o, x, w, eps, e), "rmsnorm")
WRAP(head_rmsnorm, (qw_backend *be, qw_act *x, const qw_tensor *w, int h, float eps, qw_err *e),
     (be, x, w, h, eps, e), "head_rmsnorm")
WRAP(rope, (qw_backend *be, qw_act *x, const int32_t *p, int h, int d, const int *sec, float th,
	    qw_err *e), (be, x, p, h, d, sec, th, e), "rope")
WRAP(add, (qw_backend *be, qw_act *o, const qw_act *a, const qw_act *b, qw_err *e),
     (be, o, a, b, e), "add")
WRAP(kv_write, (qw_backend *be, qw_kv_cache *kv, int l, const qw_act *k, const qw_act *v,
		const qw_batch *b, qw_err *e), (be, kv, l, k, v, b, e), "kv_write")
WRAP(attention, (qw_backend *be, qw_act *o, const qw_act *q, qw_kv_cache *kv, int l,
		 const qw_batch *b, int h, qw_err *e), (be, o, q, kv, l, b, h, e), "attention")
WRAP(moe, (qw_backend *be, qw_act *o, const qw_act *x, const qw_moe_weights *w, qw_err *e),
     (be, o, x, w, e), "moe")
WRAP(gather_rows, (qw_backend *be, qw_act *o, const qw_act *x, const int32_t *r, int n,
		   qw_err *e), (be, o, x, r, n, e), "gather_rows")
WRAP(silu_mul, (qw_backend *be, qw_act *o, const qw_act *g, const qw_act *u, qw_err *e),
     (be, o, g, u, e), "silu_mul")
WRAP(add_rmsnorm, (qw_backend *be, qw_act *o, qw_act *x, const qw_act *r, const qw_tensor *w,
		   float eps, qw_err *e), (be, o, x, r, w, eps, e), "add_rmsnorm")
WRAP(qk_norm_rope_kv, (qw_backend *be, qw_act *q, const qw_act *qkv, const qw_tensor *qn,
		       const qw_tensor *kn, const int32_t *p, int hq, int hkv, int d,
		       const int *sec, float th, float eps, qw_kv_cache *kv, int l,
		       const qw_batch *b, qw_err *e),
     (be, q, qkv, qn, kn, p, hq, hkv, d, sec, th, eps, kv, l, b, e), "qk_norm_rope_kv")

static qw_status w_matmul(qw_backend *be, qw_act *out, const qw_act *x, const qw_tensor *w,
			  const qw_tensor *bias, qw_err *err)
{
	char label[48];
	snprintf(label, sizeof label, "matmul %lldx%lld", (long long)w->shape[0],
		 (long long)w->shape[1]);
	mark(label);
	qw_status st = inner.matmul(be, out, x, w, bias, err);
	mark(label);
	return st;
}

static qw_backend *wrapped(qw_backend *be)
{
	inner = *be;
	be->embed = w_embed;
	be->rmsnorm = w_rmsnorm;
	be->head_rmsnorm = w_head_rmsnorm;
	be->rope = w_rope;
	be->add = w_add;
	be->kv_write = w_kv_write;
	be->attention = w_attention;
	be->moe = w_moe;
	be->gather_rows = w_gather_rows;
	be->silu_mul = w_silu_mul;
	be->matmul = w_matmul;
	if (be->add_rmsnorm)   /* the fused ops, where the backend has them */
		be->add_rmsnorm = w_add_rmsnorm;
	if (be->qk_norm_rope_kv)
		be->qk_norm_rope_kv = w_qk_norm_rope_kv;
	return be;
}

// -- the steps --------------------------------------------------------------------------

typedef struct bench {
	qw_config cfg;
	qw_backend *be;
	qw_stage_model m;
	qw_act hidden, logits;
	int blocks_per_seq;
	int32_t *ids, *pos, *seq, *kv, *slot, *rows, *tables;
} bench;

/* The decode batch of B sequences, each at context ctx. */
static qw_batch decode_batch(bench *k, int B, int ctx)
{
	int used = ctx / BLOCK + 1;
	for (int i = 0; i < B; i++) {
		k->ids[i] = 1000 + i;
		k->pos[3 * i] = k->pos[3 * i + 1] = k->pos[3 * i + 2] = ctx;
		k->seq[i] = k->rows[i] = i;
		k->kv[i] = ctx;
		k->slot[i] = (i * k->blocks_per_seq + ctx / BLOCK) * BLOCK + ctx % BLOCK;
		for (int j = 0; j < used; j++)
			k->tables[i * used + j] = i * k->blocks_per_seq + j;
	}
	return (qw_batch){.n_tokens = B, .token_ids = k->ids, .positions = k->pos, .seq = k->seq,
			  .kv_index = k->kv, .slot = k->slot, .n_seqs = B, .max_blocks = used,
			  .block_tables = k->tables, .n_logits = B, .logit_rows = k->rows};
}

/* Median ms of STEPS decode steps of B sequences at context ctx (K/V values are whatever the
 * cache holds: timing does not depend on them). */
static double time_steps(bench *k, int B, int ctx, bool graphs)
{
	qw_err err = {0};
	k->m.graphs = graphs;
	qw_batch b = decode_batch(k, B, ctx);
	cudaEvent_t e0, e1;
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	float ms[STEPS];
	for (int i = -3; i < STEPS; i++) {   /* three to see, record and warm the graph */
		CK(cudaEventRecord(e0, stream));
		if (qw_stage_step(&k->m, &b, &k->hidden, &k->logits, &err))
			die("step", &err);
		CK(cudaEventRecord(e1, stream));
		CK(cudaEventSynchronize(e1));
		float t;
		CK(cudaEventElapsedTime(&t, e0, e1));
		if (i >= 0)
			ms[i] = t;
	}
	CK(cudaEventDestroy(e0));
	CK(cudaEventDestroy(e1));
	return bench_median_ms(ms, STEPS);
}

/* Bytes one decode step of B sequences reads at least: each distinct weight once (the
 * experts B tokens pick, expected over uniform routing), the K/V of every sequence. */
static double step_bytes(const qw_config *cfg, int B, int ctx)
{
	const qw_text_config *t = &cfg->text;
	double H = t->hidden_size, QD = (double)t->num_heads * t->head_dim;
	double KD = (double)t->num_kv_heads * t->head_dim;
	double attn = 2.0 * (H * QD + 2.0 * H * KD + QD * H);
	double mlp;
	if (t->num_experts > 0) {
		double E = t->num_experts, k = t->num_experts_per_tok;
		double hit = E * (1.0 - pow(1.0 - k / E, B));   /* experts some token picks */
		mlp = 2.0 * (E * H + hit * 3.0 * H * t->moe_intermediate_size);
	} else {
		mlp = 2.0 * 3.0 * H * t->intermediate_size;
	}
	double kv = 2.0 * 2.0 * KD * (double)ctx * B;
	return t->num_layers * (attn + mlp + kv) + 2.0 * H * t->vocab_size;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: bench_cuda_step CONFIG.json [copy GB/s] [context]\n");
		return 2;
	}
	double peak = argc > 2 ? atof(argv[2]) : 4287.0;
	int ctx = argc > 3 ? atoi(argv[3]) : 256;
	/* the batch whose op-by-op step a profiler sees (QW_PROFILE_BATCH, default 1) */
	const char *pb = getenv("QW_PROFILE_BATCH");
	int profiled = pb ? atoi(pb) : 1;
	static bench k;
	qw_err err = {0};
	if (qw_config_load(argv[1], &k.cfg, &err))
		die(argv[1], &err);
	if (qw_cuda_backend_create(0, &k.be, &err))
		die("cuda backend", &err);
	stream = (cudaStream_t)qw_cuda_backend_stream(k.be);
	wrapped(k.be);
	for (int i = 0; i < MAX_MARKS; i++)
		CK(cudaEventCreate(&marks[i]));
	qw_stage stage = {0, 1, 0, k.cfg.text.num_layers};
	if (qw_stage_model_load_synthetic(&k.m, &k.cfg, &stage, k.be, 0, MAX_SEQS, NULL, NULL, &err))
		die("synthetic model", &err);
	const char *plain = getenv("QW_PLAIN_OPS");
	k.m.plain_ops = plain && atoi(plain);
	k.blocks_per_seq = (ctx + 64) / BLOCK + 1;
	/* as many sequences as the memory left holds (long contexts: fewer than MAX_SEQS) */
	const qw_text_config *tc = &k.cfg.text;
	uint64_t seq_bytes = (uint64_t)k.blocks_per_seq * BLOCK * tc->num_layers * 2 *
			     tc->num_kv_heads * tc->head_dim * 2;
	uint64_t free_b = k.be->free_memory ? k.be->free_memory(k.be) : 0;
	int max_seqs = (int)(free_b * 0.9 / (double)seq_bytes);
	if (max_seqs > MAX_SEQS)
		max_seqs = MAX_SEQS;
	if (max_seqs < 1)
		die("no memory left for one sequence's KV cache", NULL);
	if (qw_stage_model_alloc_kv(&k.m, max_seqs * k.blocks_per_seq, BLOCK, &err) ||
	    k.be->act_alloc(k.be, MAX_SEQS, k.cfg.text.hidden_size, &k.hidden, &err) ||
	    k.be->act_alloc(k.be, MAX_SEQS, k.cfg.text.vocab_size, &k.logits, &err))
		die("buffers", &err);
	k.ids = calloc(MAX_SEQS, 4);
	k.pos = calloc(3 * MAX_SEQS, 4);
	k.seq = calloc(MAX_SEQS, 4);
	k.kv = calloc(MAX_SEQS, 4);
	k.slot = calloc(MAX_SEQS, 4);
	k.rows = calloc(MAX_SEQS, 4);
	k.tables = calloc((size_t)MAX_SEQS * k.blocks_per_seq, 4);

	printf("# %s: %d layers; decode steps of one stage, context %d, median of %d; %s\n",
	       argv[1], k.cfg.text.num_layers, ctx, STEPS,
	       k.m.plain_ops ? "every op separately (QW_PLAIN_OPS)" : "fused ops");
	printf("# roofline: the bytes a step must read over %.0f GB/s\n", peak);
	printf("# batch   graphs ms   ops ms   roofline ms   %%roofline   tokens/s (graphs)\n");
	const int sizes[] = {1, 8, 64, 256};
	for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
		int B = sizes[i];
		if (B > max_seqs) {
			printf("%7d   (the KV cache holds %d sequences of this context)\n", B, max_seqs);
			continue;
		}
		double g = time_steps(&k, B, ctx, true), o = time_steps(&k, B, ctx, false);
		double roof = step_bytes(&k.cfg, B, ctx) / (peak * 1e9) * 1e3;
		printf("%7d %11.3f %8.3f %13.3f %10.1f%% %12.0f\n", B, g, o, roof, 100.0 * roof / g,
		       B / g * 1e3);
	}

	/* one op-by-op step of each batch size, op by op */
	for (size_t i = 0; i < sizeof sizes / sizeof *sizes && sizes[i] <= max_seqs; i++) {
		int B = sizes[i];
		k.m.graphs = false;
		qw_batch b = decode_batch(&k, B, ctx);
		n_marks = 0;
		timing = true;
		if (B == profiled)   /* the step a profiler started with --profile-from-start off sees */
			CK(cudaProfilerStart());
		if (qw_stage_step(&k.m, &b, &k.hidden, &k.logits, &err))
			die("step", &err);
		if (B == profiled)
			CK(cudaProfilerStop());
		timing = false;
		CK(cudaStreamSynchronize(stream));
		memset(name_ms, 0, sizeof name_ms);
		memset(name_calls, 0, sizeof name_calls);
		double total = 0.0;
		for (int j = 0; j + 1 < n_marks; j += 2) {
			float t;
			CK(cudaEventElapsedTime(&t, marks[j], marks[j + 1]));
			int n = (int)(mark_name[j / 2] - names[0]) / (int)sizeof names[0];
			name_ms[n] += t;
			name_calls[n]++;
			total += t;
		}
		float whole;
		CK(cudaEventElapsedTime(&whole, marks[0], marks[n_marks - 1]));
		printf("# batch %d, one step op by op: %.3f ms from first op to last, %.3f ms inside "
		       "ops\n#   %-22s %6s %9s %9s\n", B, whole, total, "op", "calls", "ms",
		       "us/call");
		for (int n = 0; n < n_names; n++)
			if (name_calls[n])
				printf("    %-22s %6d %9.3f %9.1f\n", names[n], name_calls[n], name_ms[n],
				       1e3 * name_ms[n] / name_calls[n]);
	}
	return 0;
}
