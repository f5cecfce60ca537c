/* test_nccl_pipeline.c - the NCCL data plane (kernels/cuda/nccl_pipe.h) between pipeline
 * stages in processes of their own, as qwend's workers run them.
 *
 * Each stage is a forked process with its layers of the tiny MoE model (synthetic weights
 * from one seed) on the CUDA backend; they run one script of steps (an image prefill whose
 * deepstack features must cross stage boundaries, a text prefill, then decode steps of both
 * sequences with random tokens), hidden states and features handed over with NCCL, the
 * middle stages posting each next receive with their send as the worker does.  The last
 * stage's logits of every step must be bit-identical to one stage running every layer on the
 * same GPU.  Then the faults: a corrupted hand-over caught by the checksum; a stage killed
 * mid-run, after which the others must report an error rather than hang in NCCL; and the
 * same with the survivors leaving the broken communicator and joining a new one beside the
 * killed stage's new process (as qwend's partial restart does), their weights and KV cache
 * kept, the whole script then giving one stage's logits again.
 *
 * The stages share GPU 0 (QW_TEST_GPUS=0,1,2 spreads them): each then gets its own
 * NCCL_HOSTID and NCCL talks over loopback sockets, as in the daemon.  Inputs are random
 * (the seed is printed; QW_TEST_SEED repeats a run). */
#include "tests/unit/helpers.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_pipe.h"
#include "kernels/forward.h"
#include "loader/clock.h"
#include "loader/config.h"

#define MAX_RANKS 4
#define SEQS 2
#define BLOCK 16
#define BLOCKS_PER_SEQ 40      /* 640 tokens a sequence */
#define MAX_TOKENS 64
#define IMAGE_LEN 40
#define N_VISUAL 6
#define TEXT_LEN 23
#define MAX_STEPS 600

/* What the processes share (an anonymous shared mapping made before the fork). */
typedef struct shared {
	volatile int id_ready;
	uint8_t id[QW_NCCL_ID_BYTES];
	volatile int id2_ready;            /* the communicator after a stage was replaced */
	uint8_t id2[QW_NCCL_ID_BYTES];
	volatile int left[MAX_RANKS];      /* a survivor has left the broken communicator */
	char first_failure[MAX_RANKS][512];
	volatile int stop;                 /* a stage failed: the others give up waiting */
	volatile int steps_done[MAX_RANKS];
	int status[MAX_RANKS];             /* qw_status of each stage */
	char msg[MAX_RANKS][512];
	float logits[];                    /* (steps, SEQS, V) of the last stage */
} shared;

typedef struct run_opts {
	int n_ranks;
	int steps;                         /* 2 prefills, then decode steps */
	bool check;
	int corrupt_every;
	bool stop_on_failure;              /* a failing stage tells the others to give up */
	bool rejoin;                       /* after a failure, a stage joins the next
					      communicator and runs the script again */
} run_opts;

static qw_config cfg;
static uint64_t seed;
static int gpus[MAX_RANKS];

static uint64_t rng;

static uint32_t next_u32(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng >> 33);
}

static float next_value(void)
{
	return (float)next_u32() / 2147483648.0f - 1.0f;
}

static int setup(void **state)
{
	(void)state;
	const char *s = getenv("QW_TEST_SEED");
	seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
	printf("# seed %llu (QW_TEST_SEED)\n", (unsigned long long)seed);
	const char *list = getenv("QW_TEST_GPUS");
	for (int i = 0; i < MAX_RANKS; i++)
		gpus[i] = 0;
	for (int i = 0; list && *list && i < MAX_RANKS; i++) {
		char *end;
		gpus[i] = (int)strtol(list, &end, 10);
		list = *end == ',' ? end + 1 : end;
	}
	qw_err err = {0};
	if (qw_config_load(fixture("hf/tiny-moe/model/config.json"), &cfg, &err)) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	return 0;
}

// ---------------------------------------------------------------------------------------
// the script: the same batches in every process, from the seed

typedef struct step_buf {
	int32_t ids[MAX_TOKENS], pos[3 * MAX_TOKENS], seq[MAX_TOKENS], kv[MAX_TOKENS];
	int32_t slot[MAX_TOKENS], tables[SEQS * BLOCKS_PER_SEQ], rows[SEQS];
	int32_t visual_rows[N_VISUAL];
} step_buf;

/* Step k: 0 the image prompt of sequence 0, 1 the text prompt of sequence 1, then one
 * random token of each a step. */
static qw_batch script_step(step_buf *sb, int k)
{
	qw_batch b = {.token_ids = sb->ids, .positions = sb->pos, .seq = sb->seq,
		      .kv_index = sb->kv, .slot = sb->slot, .block_tables = sb->tables,
		      .logit_rows = sb->rows};
	for (int s = 0; s < SEQS; s++)
		for (int j = 0; j < BLOCKS_PER_SEQ; j++)
			sb->tables[s * BLOCKS_PER_SEQ + j] = s * BLOCKS_PER_SEQ + j;
	if (k < 2) {
		int len = k == 0 ? IMAGE_LEN : TEXT_LEN;
		for (int t = 0; t < len; t++) {
			sb->ids[t] = (int32_t)(next_u32() % (uint32_t)cfg.text.vocab_size);
			sb->pos[3 * t] = sb->pos[3 * t + 1] = sb->pos[3 * t + 2] = sb->kv[t] = t;
			sb->seq[t] = 0;
			sb->slot[t] = (k * BLOCKS_PER_SEQ + t / BLOCK) * BLOCK + t % BLOCK;
		}
		for (int j = 0; j < BLOCKS_PER_SEQ; j++)   /* one sequence: its table is row 0 */
			sb->tables[j] = k * BLOCKS_PER_SEQ + j;
		sb->rows[0] = len - 1;
		b.n_tokens = len;
		b.n_seqs = 1;
		b.max_blocks = BLOCKS_PER_SEQ;
		b.n_logits = 1;
		return b;
	}
	int ctx[SEQS] = {IMAGE_LEN + k - 2, TEXT_LEN + k - 2};
	for (int s = 0; s < SEQS; s++) {
		int c = ctx[s];
		sb->ids[s] = (int32_t)(next_u32() % (uint32_t)cfg.text.vocab_size);
		sb->pos[3 * s] = sb->pos[3 * s + 1] = sb->pos[3 * s + 2] = sb->kv[s] = c;
		sb->seq[s] = sb->rows[s] = s;
		sb->slot[s] = (s * BLOCKS_PER_SEQ + c / BLOCK) * BLOCK + c % BLOCK;
	}
	b.n_tokens = b.n_seqs = b.n_logits = SEQS;
	b.max_blocks = BLOCKS_PER_SEQ;
	return b;
}

// ---------------------------------------------------------------------------------------
// one stage's process

typedef struct stage_proc {
	int rank, n_ranks, n_ds;
	bool replacement;                  /* started for a killed stage: joins the second
					      communicator */
	qw_stage stage;
	shared *sh;
	const run_opts *o;
	qw_backend *be;
	qw_stage_model m;
	qw_nccl_pipe *pipe;
	qw_act hidden, logits, embeds, deepstack[QW_MAX_DEEPSTACK];
} stage_proc;

static bool keep_waiting(void *ctx)
{
	stage_proc *sp = ctx;
	return !(sp->o->stop_on_failure && sp->sh->stop);
}

/* The record step k's batch b carries into stage `rank` (in) or out of it. */
static qw_nccl_record record_of(const stage_proc *sp, const qw_batch *b, uint64_t k, bool in)
{
	int from = in ? sp->stage.layer_begin : sp->stage.layer_end;
	int n = b->n_visual && sp->n_ds > from ? sp->n_ds - from : 0;
	return (qw_nccl_record){k, b->n_tokens, n, b->n_visual};
}

/* The communicator's id (the first, or the one after a stage was replaced): stage 0 makes
 * it, the others wait for it. */
static qw_status await_id(stage_proc *sp, bool second, qw_err *err)
{
	uint8_t *id = second ? sp->sh->id2 : sp->sh->id;
	volatile int *ready = second ? &sp->sh->id2_ready : &sp->sh->id_ready;
	if (sp->rank == 0) {
		QW_TRY(qw_nccl_unique_id(id, err));
		__atomic_store_n(ready, 1, __ATOMIC_RELEASE);
	}
	while (!__atomic_load_n(ready, __ATOMIC_ACQUIRE))
		usleep(1000);
	return QW_OK;
}

static qw_status draw_inputs(stage_proc *sp, qw_err *err);

static qw_status stage_setup(stage_proc *sp, qw_err *err)
{
	int L = cfg.text.num_layers, H = cfg.text.hidden_size;
	sp->stage = (qw_stage){sp->rank, sp->n_ranks, sp->rank * L / sp->n_ranks,
			       (sp->rank + 1) * L / sp->n_ranks};
	sp->n_ds = cfg.vision.n_deepstack;
	QW_TRY(qw_cuda_backend_create(gpus[sp->rank], &sp->be, err));
	qw_backend *be = sp->be;
	if (sp->n_ranks > 1) {
		QW_TRY(await_id(sp, sp->replacement, err));
		int in = sp->rank > 0 ? sp->n_ds - sp->stage.layer_begin : 0;
		int out = sp->rank < sp->n_ranks - 1 ? sp->n_ds - sp->stage.layer_end : 0;
		qw_nccl_pipe_config c = {
			.rank = sp->rank, .n_ranks = sp->n_ranks,
			.unique_id = sp->replacement ? sp->sh->id2 : sp->sh->id, .cols = H,
			.max_rows = MAX_TOKENS, .max_extra_in = in > 0 ? in : 0,
			.max_extra_out = out > 0 ? out : 0, .check = sp->o->check,
			.corrupt_every = sp->o->corrupt_every, .timeout_s = 60,
			.keep_waiting = keep_waiting, .wait_ctx = sp};
		QW_TRY(qw_nccl_pipe_create(be, &c, &sp->pipe, err));
	}
	QW_TRY(qw_stage_model_load_synthetic(&sp->m, &cfg, &sp->stage, be, 7, MAX_TOKENS, NULL,
					     NULL, err));
	QW_TRY(qw_stage_model_alloc_kv(&sp->m, SEQS * BLOCKS_PER_SEQ, BLOCK, err));
	if (sp->pipe)
		QW_TRY(qw_nccl_pipe_warm(sp->pipe, err));
	QW_TRY(be->act_alloc(be, MAX_TOKENS, H, &sp->hidden, err));
	QW_TRY(be->act_alloc(be, SEQS, cfg.text.vocab_size, &sp->logits, err));
	QW_TRY(be->act_alloc(be, N_VISUAL, H, &sp->embeds, err));
	for (int j = 0; j < sp->n_ds; j++)
		QW_TRY(be->act_alloc(be, N_VISUAL, H, &sp->deepstack[j], err));
	return draw_inputs(sp, err);
}

/* The image's embeddings and features: every process draws them (the stream stays in step),
 * stage 0 alone keeps them; the others hold NaN until the hand-overs bring them. */
static qw_status draw_inputs(stage_proc *sp, qw_err *err)
{
	qw_backend *be = sp->be;
	int H = cfg.text.hidden_size;
	float *v = malloc((size_t)N_VISUAL * H * sizeof *v);
	qw_status st = v ? QW_OK : qw_fail(err, QW_E_NOMEM, "out of memory");
	for (int a = 0; a <= sp->n_ds && st == QW_OK; a++) {
		for (size_t i = 0; i < (size_t)N_VISUAL * H; i++) {
			float x = next_value();
			v[i] = sp->rank == 0 ? x : __builtin_nanf("");
		}
		st = be->act_write(be, a == 0 ? &sp->embeds : &sp->deepstack[a - 1], v, err);
	}
	free(v);
	return st;
}

static qw_status stage_steps(stage_proc *sp, qw_err *err)
{
	bool first = sp->rank == 0, last = sp->rank == sp->n_ranks - 1;
	int V = cfg.text.vocab_size;
	step_buf bufs[2];
	qw_batch b = script_step(&bufs[0], 0), next = {0};
	for (int k = 0; k < sp->o->steps; k++) {
		if (k + 1 < sp->o->steps)
			next = script_step(&bufs[(k + 1) % 2], k + 1);
		if (k == 0) {
			for (int i = 0; i < N_VISUAL; i++)
				bufs[0].visual_rows[i] = 5 + i;
			b.n_visual = N_VISUAL;
			b.visual_rows = bufs[0].visual_rows;
			b.visual_embeds = &sp->embeds;
			b.deepstack = sp->deepstack;
			b.n_deepstack = sp->n_ds;
		}
		qw_nccl_record in = record_of(sp, &b, (uint64_t)k, true);
		qw_nccl_record out = record_of(sp, &b, (uint64_t)k, false);
		qw_nccl_record then = record_of(sp, &next, (uint64_t)k + 1, true);
		bool ahead = !first && k + 1 < sp->o->steps;
		qw_act *extra_in[QW_MAX_DEEPSTACK];
		const qw_act *extra_out[QW_MAX_DEEPSTACK];
		for (int j = 0; j < in.n_extra; j++)
			extra_in[j] = &sp->deepstack[sp->stage.layer_begin + j];
		for (int j = 0; j < out.n_extra; j++)
			extra_out[j] = &sp->deepstack[sp->stage.layer_end + j];
		if (!first) {
			if (k == 0)   /* later receives were posted with the step before */
				QW_TRY(qw_nccl_pipe_post_recv(sp->pipe, &in, err));
			QW_TRY(qw_nccl_pipe_take(sp->pipe, &in, &sp->hidden, extra_in, err));
		}
		sp->logits.rows = b.n_logits;
		QW_TRY(qw_stage_step(&sp->m, &b, &sp->hidden, &sp->logits, err));
		if (!last) {
			QW_TRY(qw_nccl_pipe_send(sp->pipe, &out, &sp->hidden, extra_out,
						 ahead ? &then : NULL, err));
			if (!first)
				QW_TRY(qw_nccl_pipe_wait_taken(sp->pipe, err));
			QW_TRY(qw_nccl_pipe_wait_sent(sp->pipe, 1, err));
		} else {
			if (ahead)
				QW_TRY(qw_nccl_pipe_post_recv(sp->pipe, &then, err));
			if (sp->pipe)
				QW_TRY(qw_nccl_pipe_sync(sp->pipe, err));
			QW_TRY(sp->be->act_read(sp->be, &sp->logits,
						sp->sh->logits + (size_t)k * SEQS * V, err));
		}
		sp->sh->steps_done[sp->rank] = k + 1;
		b = next;
	}
	return QW_OK;
}

/* A survivor of a killed stage: it leaves the broken communicator, joins the next one with
 * the killed stage's new process, and runs the script again from the start on the weights
 * and KV cache it has (every entry a step reads, this run writes first). */
static qw_status stage_rejoin(stage_proc *sp, qw_err *err)
{
	QW_TRY(qw_nccl_pipe_leave(sp->pipe, err));
	__atomic_store_n(&sp->sh->left[sp->rank], 1, __ATOMIC_RELEASE);
	QW_TRY(await_id(sp, true, err));
	QW_TRY(qw_nccl_pipe_join(sp->pipe, sp->sh->id2, err));
	QW_TRY(qw_nccl_pipe_warm(sp->pipe, err));
	rng = seed;
	QW_TRY(draw_inputs(sp, err));
	return stage_steps(sp, err);
}

static void stage_main(int rank, const run_opts *o, shared *sh, bool replacement)
{
	stage_proc sp = {.rank = rank, .n_ranks = o->n_ranks, .sh = sh, .o = o,
			 .replacement = replacement};
	rng = seed;
	if (o->n_ranks > 1) {
		bool repeat = false;
		for (int i = 0; i < o->n_ranks; i++)
			for (int j = 0; j < i; j++)
				repeat |= gpus[i] == gpus[j];
		setenv("NCCL_NVLS_ENABLE", "0", 0);
		if (repeat) {
			char id[64];
			snprintf(id, sizeof id, "qw-test-%d-rank-%d", (int)getppid(), rank);
			setenv("NCCL_HOSTID", id, 1);
			setenv("NCCL_SOCKET_IFNAME", "lo", 0);
		}
	}
	qw_err err = {0};
	qw_status st = stage_setup(&sp, &err);
	if (st == QW_OK)
		st = stage_steps(&sp, &err);
	if (st != QW_OK && o->rejoin && sp.pipe && !replacement) {
		snprintf(sh->first_failure[rank], sizeof sh->first_failure[rank], "%s", err.msg);
		st = stage_rejoin(&sp, &err);
	}
	sh->status[rank] = st;
	snprintf(sh->msg[rank], sizeof sh->msg[rank], "%s", st == QW_OK ? "" : err.msg);
	if (st != QW_OK)
		sh->stop = 1;
	qw_nccl_pipe_destroy(sp.pipe, st == QW_OK);
	_exit(st == QW_OK ? 0 : 1);   /* the context goes with the process */
}

// ---------------------------------------------------------------------------------------
// the parent: no CUDA here, so it may fork

static shared *shared_new(int steps)
{
	size_t bytes = sizeof(shared) + (size_t)steps * SEQS * cfg.text.vocab_size * sizeof(float);
	shared *sh = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	memset(sh, 0, sizeof *sh);
	for (int r = 0; r < MAX_RANKS; r++)
		sh->status[r] = -1;
	return sh;
}

static void shared_free(shared *sh, int steps)
{
	munmap(sh, sizeof(shared) + (size_t)steps * SEQS * cfg.text.vocab_size * sizeof(float));
}

/* Starts the stages; kill_rank >= 0 is SIGKILLed once it has run kill_after steps.  Returns
 * the seconds the survivors took to exit after that (or after the start). */
static double run_stages(const run_opts *o, shared *sh, int kill_rank, int kill_after,
			 double limit_s)
{
	pid_t pids[MAX_RANKS];
	for (int r = 0; r < o->n_ranks; r++) {
		fflush(NULL);
		pids[r] = fork();
		assert_true(pids[r] >= 0);
		if (pids[r] == 0)
			stage_main(r, o, sh, false);
	}
	double t0 = qw_seconds_now();
	int left = o->n_ranks;
	bool killed = false, replaced = false;
	double elapsed = 0;
	while (left > 0) {
		if (!killed && kill_rank >= 0 && sh->steps_done[kill_rank] >= kill_after) {
			kill(pids[kill_rank], SIGKILL);
			killed = true;
			t0 = qw_seconds_now();
		}
		/* rejoining: the killed stage's new process, once the survivors have left */
		bool all_left = true;
		for (int r = 0; r < o->n_ranks; r++)
			all_left &= r == kill_rank || sh->left[r];
		if (o->rejoin && killed && !replaced && all_left && !pids[kill_rank]) {
			fflush(NULL);
			pids[kill_rank] = fork();
			assert_true(pids[kill_rank] >= 0);
			if (pids[kill_rank] == 0)
				stage_main(kill_rank, o, sh, true);
			replaced = true;
			left++;
		}
		for (int r = 0; r < o->n_ranks; r++) {
			int status;
			if (pids[r] && waitpid(pids[r], &status, WNOHANG) == pids[r]) {
				pids[r] = 0;
				left--;
			}
		}
		elapsed = qw_seconds_now() - t0;
		if (elapsed > limit_s) {
			for (int r = 0; r < o->n_ranks; r++)
				if (pids[r]) {
					kill(pids[r], SIGKILL);
					waitpid(pids[r], NULL, 0);
					fprintf(stderr, "# stage %d still running after %.0f s: killed\n",
						r, limit_s);
				}
			fail_msg("stages still running %.0f s %s", limit_s,
				 killed ? "after a stage was killed (hung in NCCL?)" : "after the start");
		}
		usleep(2000);
	}
	return elapsed;
}

/* One stage with every layer: the logits the pipelines must reproduce. */
static shared *reference(int steps)
{
	run_opts o = {.n_ranks = 1, .steps = steps};
	shared *sh = shared_new(steps);
	run_stages(&o, sh, -1, 0, 300);
	if (sh->status[0] != QW_OK)
		fail_msg("the one-stage reference failed: %s", sh->msg[0]);
	return sh;
}

/* The last stage's logits of every step, bit for bit those of one stage (ref). */
static void expect_reference_logits(const shared *ref, const shared *sh, int steps,
				    const char *what)
{
	size_t V = (size_t)cfg.text.vocab_size;
	for (int k = 0; k < steps; k++) {
		int rows = k < 2 ? 1 : SEQS;
		const float *a = ref->logits + (size_t)k * SEQS * V;
		const float *b = sh->logits + (size_t)k * SEQS * V;
		for (int s = 0; s < rows; s++)
			if (memcmp(a + s * V, b + s * V, V * sizeof *a) != 0)
				fail_msg("%s: step %d, row %d: the logits differ from one stage's", what,
					 k, s);
	}
}

static void pipeline_bits(int n_ranks, bool check)
{
	int steps = 14;
	shared *ref = reference(steps);
	run_opts o = {.n_ranks = n_ranks, .steps = steps, .check = check, .stop_on_failure = true};
	shared *sh = shared_new(steps);
	run_stages(&o, sh, -1, 0, 300);
	for (int r = 0; r < n_ranks; r++)
		if (sh->status[r] != QW_OK)
			fail_msg("stage %d of %d failed: %s", r, n_ranks, sh->msg[r]);
	char what[32];
	snprintf(what, sizeof what, "%d stages", n_ranks);
	expect_reference_logits(ref, sh, steps, what);
	printf("# %d stages over NCCL%s: %d steps' logits bit-identical to one stage\n", n_ranks,
	       check ? " (checksummed)" : "", steps);
	shared_free(ref, steps);
	shared_free(sh, steps);
}

static void test_two_stages(void **state)
{
	(void)state;
	pipeline_bits(2, false);
}

static void test_three_stages_checked(void **state)
{
	(void)state;
	pipeline_bits(3, true);
}

/* Every third record has a bit flipped after its checksum: the receiver must say so. */
static void test_corruption_caught(void **state)
{
	(void)state;
	int steps = 10;
	run_opts o = {.n_ranks = 2, .steps = steps, .check = true, .corrupt_every = 3,
		      .stop_on_failure = true};
	shared *sh = shared_new(steps);
	run_stages(&o, sh, -1, 0, 120);
	printf("# stage 1: %s\n", sh->msg[1]);
	assert_int_equal(sh->status[1], QW_E_IO);
	assert_non_null(strstr(sh->msg[1], "checksum mismatch"));
	assert_int_equal(sh->steps_done[1], 2);   /* the third record is the bad one */
	shared_free(sh, steps);
}

/* A stage killed mid-run: its neighbours must fail (NCCL's asynchronous error: nobody tells
 * them), not hang. */
static void test_killed_stage(void **state)
{
	(void)state;
	int steps = MAX_STEPS;
	run_opts o = {.n_ranks = 3, .steps = steps};
	shared *sh = shared_new(steps);
	double s = run_stages(&o, sh, 1, 20, 90);
	for (int r = 0; r < 3; r += 2) {
		printf("# stage %d after stage 1 was killed: %s\n", r, sh->msg[r]);
		assert_int_not_equal(sh->status[r], QW_OK);
	}
	printf("# the other stages gave up %.2f s after the kill\n", s);
	shared_free(sh, steps);
}

/* A middle stage killed mid-run; its neighbours leave the broken communicator and join a
 * new one with its new process, keeping their weights and KV cache, and the script run again
 * gives one stage's logits bit for bit. */
static void test_killed_stage_rejoined(void **state)
{
	(void)state;
	int steps = 30;
	shared *ref = reference(steps);
	run_opts o = {.n_ranks = 3, .steps = steps, .rejoin = true};
	shared *sh = shared_new(steps);
	double s = run_stages(&o, sh, 1, 10, 180);
	for (int r = 0; r < 3; r += 2) {
		printf("# stage %d after stage 1 was killed: %s\n", r, sh->first_failure[r]);
		assert_true(sh->first_failure[r][0] != 0);   /* the kill broke its run */
	}
	for (int r = 0; r < 3; r++)
		if (sh->status[r] != QW_OK)
			fail_msg("stage %d after the new communicator: %s", r, sh->msg[r]);
	expect_reference_logits(ref, sh, steps, "after the rejoin");
	printf("# survivors rejoined a new communicator; %d steps' logits bit-identical to one "
	       "stage, %.2f s from the kill to the end\n", steps, s);
	shared_free(ref, steps);
	shared_free(sh, steps);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_two_stages),
		cmocka_unit_test(test_three_stages_checked),
		cmocka_unit_test(test_corruption_caught),
		cmocka_unit_test(test_killed_stage),
		cmocka_unit_test(test_killed_stage_rejoined),
	};
	return cmocka_run_group_tests_name("nccl-pipeline", tests, setup, NULL);
}
