/* bench_pipeline_stage.c - one stage of a pipeline as qwend plans it (stage I of S of a
 * config, layer ranges by bytes; synthetic bf16 weights made on the GPU), without the
 * daemon: decode steps at batch 1, 8, 16 and 64 (replayed as step graphs) against their byte
 * roofline, a prefill chunk against the dense bf16 rate, the size of each step's hand-over,
 * and whether a hand-over in flight costs the stage time: each kind of step is timed alone,
 * then followed by its hand-over to a second process over the NCCL pipe as a worker sends it
 * (the send of step k moving while step k+1 computes), and the hand-overs alone.  Two
 * processes on one GPU talk over NCCL's socket transport (slow: the point is the overlap,
 * not the link).  Not a test.  Built by `scons tests`; run
 *     NCCL_NVLS_ENABLE=0 build/tests/bench/bench_pipeline_stage CONFIG.json I/S
 *         [copy GB/s, default 4287] [dense bf16 TFLOP/s, default 786.6] [context, default 1024]
 *         [prefill chunk, default 2048]
 * (the defaults: an H200's copy bandwidth and GEMM rate as tests/bench/gpu_ceilings.py
 * measured them).  The two processes take turns on the GPU, so the receiver posts each
 * receive only once its hand-over is coming.
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_pipe.h"
#include "kernels/forward.h"
#include "loader/clock.h"
#include "loader/config.h"
#include "loader/plan.h"
#include "tests/bench/bench_util.h"

#define BLOCK 16
#define STEPS 20              /* timed steps of each kind */
#define PREFILL_STEPS 5

static const int batches[] = {1, 8, 16, 64};
#define N_BATCHES (int)(sizeof batches / sizeof *batches)

typedef struct shared {
	uint8_t id[QW_NCCL_ID_BYTES];
	volatile int id_ready;
	volatile int announced;   /* hand-overs the stage has begun to send */
} shared;

static void die(const char *what, const qw_err *err)
{
	fprintf(stderr, "bench_pipeline_stage: %s: %s\n", what, err ? err->msg : "");
	exit(1);
}

/* The order of records both processes agree on: per batch size, STEPS with a hand-over and
 * STEPS of hand-overs alone (+ 3 warm-up); then the prefill chunk likewise. */
static int record_rows(int i, int chunk)
{
	int per = 2 * (STEPS + 3);
	if (i < N_BATCHES * per)
		return batches[i / per];
	return chunk;
}

static int n_records(void)
{
	return N_BATCHES * 2 * (STEPS + 3) + 2 * (PREFILL_STEPS + 3);
}

static qw_nccl_pipe *join(qw_backend *be, shared *sh, int rank, int H, int max_rows)
{
	qw_err err = {0};
	if (rank == 0) {
		if (qw_nccl_unique_id(sh->id, &err))
			die("nccl id", &err);
		__atomic_store_n(&sh->id_ready, 1, __ATOMIC_RELEASE);
	}
	while (!__atomic_load_n(&sh->id_ready, __ATOMIC_ACQUIRE))
		usleep(1000);
	qw_nccl_pipe_config c = {.rank = rank, .n_ranks = 2, .unique_id = sh->id, .cols = H,
				 .max_rows = max_rows, .timeout_s = 600};
	qw_nccl_pipe *p;
	if (qw_nccl_pipe_create(be, &c, &p, &err) || qw_nccl_pipe_warm(p, &err))
		die("nccl pipe", &err);
	return p;
}

/* The second process: receives every record (into a buffer it never reads). */
static void sink(shared *sh, int H, int chunk)
{
	qw_err err = {0};
	qw_backend *be;
	if (qw_cuda_backend_create(0, &be, &err))
		die("cuda backend", &err);
	qw_nccl_pipe *p = join(be, sh, 1, H, chunk);
	qw_act buf;
	if (be->act_alloc(be, chunk, H, &buf, &err))
		die("buffer", &err);
	for (int i = 0; i < n_records(); i++) {
		/* two processes on one GPU take turns on it: a receive waiting on the GPU would
		 * take the stage's turns, so it is posted only once its hand-over is coming */
		while (__atomic_load_n(&sh->announced, __ATOMIC_ACQUIRE) <= i)
			usleep(20);
		qw_nccl_record r = {(uint64_t)i, record_rows(i, chunk), 0, 0};
		if (qw_nccl_pipe_post_recv(p, &r, &err) || qw_nccl_pipe_take(p, &r, &buf, NULL, &err) ||
		    qw_nccl_pipe_sync(p, &err))
			die("receive", &err);
	}
	qw_nccl_pipe_destroy(p, true);
	_exit(0);
}

typedef struct bench {
	qw_config cfg;
	qw_stage stage;
	qw_backend *be;
	cudaStream_t stream;
	qw_stage_model m;
	qw_nccl_pipe *pipe;
	shared *sh;
	uint64_t sent;
	qw_act hidden, logits;
	qw_act input;              /* (max_tokens, H): what each step starts from */
	int blocks_per_seq, ctx, chunk;
	int32_t *ids, *pos, *seq, *kv, *slot, *rows, *tables;
} bench;

/* B sequences decoding at context ctx, or (B == 0) one sequence's prefill chunk of `chunk`
 * tokens after ctx. */
static qw_batch make_batch(bench *k, int B)
{
	int T = B ? B : k->chunk, n_seqs = B ? B : 1, used = k->blocks_per_seq;
	for (int t = 0; t < T; t++) {
		int s = B ? t : 0, at = B ? k->ctx : k->ctx + t;
		k->ids[t] = 1000 + t;
		k->pos[3 * t] = k->pos[3 * t + 1] = k->pos[3 * t + 2] = at;
		k->seq[t] = s;
		k->kv[t] = at;
		k->slot[t] = (s * used + at / BLOCK) * BLOCK + at % BLOCK;
	}
	for (int s = 0; s < n_seqs; s++) {
		k->rows[s] = B ? s : T - 1;
		for (int j = 0; j < used; j++)
			k->tables[s * used + j] = s * used + j;
	}
	return (qw_batch){.n_tokens = T, .token_ids = k->ids, .positions = k->pos, .seq = k->seq,
			  .kv_index = k->kv, .slot = k->slot, .n_seqs = n_seqs, .max_blocks = used,
			  .block_tables = k->tables, .n_logits = n_seqs, .logit_rows = k->rows};
}

/* The hidden states every step starts from, as a receiving stage copies them in: random rows
 * (from a real pipeline, tokens route to many experts; zeros would send every token to the
 * same ones). */
static void random_input(bench *k)
{
	qw_err err = {0};
	size_t n = (size_t)k->input.cap_rows * (size_t)k->input.cols;
	float *v = malloc(n * sizeof *v);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < n; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		v[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
	}
	if (k->be->act_write(k->be, &k->input, v, &err))
		die("hidden states", &err);
	free(v);
}

/* Mean ms a step over n steps (after 3 unmeasured): compute, hand-over, or both. */
static double time_steps(bench *k, const qw_batch *b, int n, bool compute, bool handover)
{
	qw_err err = {0};
	k->m.graphs = b->n_tokens <= 256;
	double t0 = 0;
	for (int i = -3; i < n; i++) {
		if (i == 0) {
			if (qw_nccl_pipe_sync(k->pipe, &err) ||
			    qw_nccl_pipe_wait_sent(k->pipe, 0, &err))
				die("sync", &err);
			t0 = qw_millis_now();
		}
		k->hidden.rows = k->input.rows = b->n_tokens;
		k->logits.rows = b->n_logits;
		if (compute && (k->be->act_copy(k->be, &k->hidden, &k->input, &err) ||
				qw_stage_step(&k->m, b, &k->hidden, &k->logits, &err)))
			die("step", &err);
		if (handover) {
			__atomic_add_fetch(&k->sh->announced, 1, __ATOMIC_RELEASE);
			qw_nccl_record r = {k->sent++, b->n_tokens, 0, 0};
			if (qw_nccl_pipe_send(k->pipe, &r, &k->hidden, NULL, NULL, &err) ||
			    qw_nccl_pipe_wait_sent(k->pipe, 1, &err))
				die("send", &err);
		}
	}
	/* the step's compute, and every hand-over gone */
	if (qw_nccl_pipe_sync(k->pipe, &err) || qw_nccl_pipe_wait_sent(k->pipe, 0, &err))
		die("sync", &err);
	return (qw_millis_now() - t0) / n;
}

/* Bytes a decode step of B sequences reads at least (each weight of the stage once, the
 * experts B tokens pick expected over uniform routing, the K/V), and a prefill chunk's
 * FLOPs (2 per weight per token, and attention's 4 x ctx x q-width per token a layer). */
static double stage_bytes(const bench *k, int B)
{
	const qw_text_config *t = &k->cfg.text;
	double H = t->hidden_size, QD = (double)t->num_heads * t->head_dim;
	double KD = (double)t->num_kv_heads * t->head_dim, L = k->stage.layer_end -
							      k->stage.layer_begin;
	double attn = 2.0 * (H * QD + 2.0 * H * KD + QD * H), mlp;
	if (t->num_experts > 0) {
		double E = t->num_experts, kk = t->num_experts_per_tok;
		double hit = E * (1.0 - pow(1.0 - kk / E, B));
		mlp = 2.0 * (E * H + hit * 3.0 * H * t->moe_intermediate_size);
	} else {
		mlp = 2.0 * 3.0 * H * t->intermediate_size;
	}
	bool last = k->stage.index == k->stage.count - 1;
	return L * (attn + mlp + 2.0 * 2.0 * KD * (double)k->ctx * B) +
	       (last ? 2.0 * H * t->vocab_size : 0.0);
}

static double chunk_flops(const bench *k)
{
	const qw_text_config *t = &k->cfg.text;
	double H = t->hidden_size, QD = (double)t->num_heads * t->head_dim;
	double KD = (double)t->num_kv_heads * t->head_dim, L = k->stage.layer_end -
							      k->stage.layer_begin;
	double mlp = t->num_experts > 0 ? t->num_experts_per_tok * 3.0 * H * t->moe_intermediate_size
					: 3.0 * H * t->intermediate_size;
	double per_token = 2.0 * (H * QD + 2.0 * H * KD + QD * H + mlp + t->num_experts * H);
	double mean_ctx = k->ctx + k->chunk / 2.0;
	return L * k->chunk * (per_token + 4.0 * mean_ctx * QD);
}

int main(int argc, char **argv)
{
	int index, count;
	if (argc < 3 || sscanf(argv[2], "%d/%d", &index, &count) != 2 || count < 1 ||
	    index < 0 || index >= count) {
		fprintf(stderr, "usage: bench_pipeline_stage CONFIG.json I/S [copy GB/s] "
			"[dense TFLOP/s] [context] [prefill chunk]\n");
		return 2;
	}
	double peak = argc > 3 ? atof(argv[3]) : 4287.0;
	double dense = argc > 4 ? atof(argv[4]) : 786.6;
	static bench k;
	k.ctx = argc > 5 ? atoi(argv[5]) : 1024;
	k.chunk = argc > 6 ? atoi(argv[6]) : 2048;
	qw_err err = {0};
	if (qw_config_load(argv[1], &k.cfg, &err))
		die(argv[1], &err);
	qw_wspec *specs = NULL;
	size_t n = 0;
	qw_stage_plan plan[QW_MAX_STAGES];
	if (qw_wmap_build(&k.cfg, QW_EXPERTS_FUSED, NULL, &specs, &n, &err))
		die("weight map", &err);
	for (size_t i = 0; i < n; i++)
		specs[i].bytes = specs[i].numel * 2;
	if (qw_plan_stages(&k.cfg, specs, n, count, QW_DT_BF16, plan, &err))
		die("plan", &err);
	free(specs);
	k.stage = plan[index].stage;
	int H = k.cfg.text.hidden_size;

	/* the sink first: no CUDA in this process before the fork */
	shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			  -1, 0);
	if (sh == MAP_FAILED)
		die("mmap", NULL);
	setenv("NCCL_NVLS_ENABLE", "0", 0);
	setenv("NCCL_SOCKET_IFNAME", "lo", 0);
	fflush(NULL);
	pid_t child = fork();
	if (child == 0) {
		setenv("NCCL_HOSTID", "bench-sink", 1);
		sink(sh, H, k.chunk);
	}
	setenv("NCCL_HOSTID", "bench-stage", 1);
	if (qw_cuda_backend_create(0, &k.be, &err))
		die("cuda backend", &err);
	k.stream = (cudaStream_t)qw_cuda_backend_stream(k.be);
	k.pipe = join(k.be, sh, 0, H, k.chunk);
	k.sh = sh;
	int max_tokens = k.chunk > 64 ? k.chunk : 64;
	if (qw_stage_model_load_synthetic(&k.m, &k.cfg, &k.stage, k.be, 0, max_tokens, NULL, NULL,
					  &err))
		die("synthetic stage", &err);
	k.blocks_per_seq = (k.ctx + k.chunk) / BLOCK + 1;
	if (qw_stage_model_alloc_kv(&k.m, 64 * k.blocks_per_seq, BLOCK, &err) ||
	    k.be->act_alloc(k.be, max_tokens, H, &k.hidden, &err) ||
	    k.be->act_alloc(k.be, max_tokens, H, &k.input, &err) ||
	    k.be->act_alloc(k.be, 64, k.cfg.text.vocab_size, &k.logits, &err))
		die("buffers", &err);
	k.ids = calloc((size_t)max_tokens, 4);
	k.pos = calloc(3 * (size_t)max_tokens, 4);
	k.seq = calloc((size_t)max_tokens, 4);
	k.kv = calloc((size_t)max_tokens, 4);
	k.slot = calloc((size_t)max_tokens, 4);
	k.rows = calloc(64, 4);
	k.tables = calloc(64 * (size_t)k.blocks_per_seq, 4);
	random_input(&k);

	double weights = (double)plan[index].weight_bytes;
	printf("# %s, stage %d of %d: layers [%d, %d), %.1f GB of bf16 weights; context %d\n",
	       argv[1], index, count, k.stage.layer_begin, k.stage.layer_end, weights / 1e9, k.ctx);
	printf("# decode (step graphs), mean of %d steps; roofline: the bytes a step reads over "
	       "%.0f GB/s; hand-over: to a second process on this GPU over NCCL's sockets\n",
	       STEPS, peak);
	printf("# batch  step ms  roofline ms  %%roof  hand-over KiB  step+hand-over ms  "
	       "hand-over alone ms\n");
	for (int i = 0; i < N_BATCHES; i++) {
		int B = batches[i];
		qw_batch b = make_batch(&k, B);
		double c = time_steps(&k, &b, STEPS, true, false);
		double both = time_steps(&k, &b, STEPS, true, true);
		double alone = time_steps(&k, &b, STEPS, false, true);
		double roof = stage_bytes(&k, B) / (peak * 1e9) * 1e3;
		printf("%7d %8.3f %12.3f %6.1f %14.1f %18.3f %19.3f\n", B, c, roof, 100 * roof / c,
		       B * H * 2.0 / 1024, both, alone);
	}
	qw_batch b = make_batch(&k, 0);
	double c = time_steps(&k, &b, PREFILL_STEPS, true, false);
	double both = time_steps(&k, &b, PREFILL_STEPS, true, true);
	/* the sink expects PREFILL_STEPS + 3 hand-overs alone, then nothing more */
	double alone = time_steps(&k, &b, PREFILL_STEPS, false, true);
	double tflops = chunk_flops(&k) / (c * 1e-3) / 1e12;
	printf("# prefill chunk of %d tokens after %d (ops, mean of %d): %.2f ms, %.0f TFLOP/s "
	       "(%.0f%% of %.1f dense bf16); hand-over %.1f MiB: with it %.2f ms, alone %.2f ms\n",
	       k.chunk, k.ctx, PREFILL_STEPS, c, tflops, 100 * tflops / dense, dense,
	       k.chunk * H * 2.0 / 1048576, both, alone);
	qw_nccl_pipe_destroy(k.pipe, true);
	int status;
	waitpid(child, &status, 0);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
