/* worker.c - one pipeline stage in its own process: its life (load, allocate, serve).  Its
 * generations (a partial restart that keeps it) are worker_gen.c's.  See worker.h. */
#include "daemon/worker.h"
#include "daemon/worker_int.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "daemon/handover.h"
#include "daemon/image/preprocess.h"
#include "daemon/vision_store.h"
#include "ipc/region.h"
#include "ipc/step.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_pipe.h"
#include "kernels/forward.h"
#include "kernels/step_limits.h"
#include "kernels/vision.h"
#include "loader/checkpoint.h"
#include "loader/clock.h"
#include "loader/dtype.h"
#include "loader/units.h"

#define IDLE_WAIT_MS 500      /* how often an idle worker beats and checks on its daemon */
#define NCCL_TIMEOUT_S 120.0  /* joining the communicator, and leaving it cleanly */
#define CPU_KV_CAP (256ull << 20)   /* the CPU backend's KV cache stops at 256 MiB a stage */
#define VISION_CACHE_MAX_TOKENS (1 << 24)   /* image tokens the vision cache holds at most */

void worker_notify(worker *w)
{
	uint64_t one = 1;
	if (write(w->args->notify_fd, &one, sizeof one) < 0) {
		/* the daemon is gone; the next wait notices */
	}
}

void worker_beat(worker *w)
{
	atomic_store(&w->slot->heartbeat_ms, qw_now_ms());
}

static int fail(worker *w, const qw_err *err)
{
	snprintf(w->slot->error, sizeof w->slot->error, "%s", err->msg);
	atomic_store(&w->slot->state, QW_WORKER_FAILED);
	qw_log(QW_LOG_ERROR, "stage %d failed: %s", w->stage, err->msg);
	worker_notify(w);
	return 1;
}

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
	worker *w = ctx;
	/* tests: a load that takes load_delay_ms, its bytes spread over the time, so loading
	 * and its progress can be seen from outside */
	uint64_t due = w->load_t0_ms + (total ? (uint64_t)w->load_delay_ms * done / total : 0);
	for (uint64_t now = qw_now_ms(); now < due; now = qw_now_ms()) {
		usleep((useconds_t)((due - now < 50 ? due - now : 50) * 1000));
		worker_beat(w);
	}
	atomic_store(&w->slot->load_total, total);
	atomic_store(&w->slot->load_done, done);
	worker_beat(w);
}

/* Bytes of memory free for the KV cache after the weights: the device's, or on the CPU
 * backend this stage's share of the host's. */
static uint64_t free_memory(worker *w)
{
	if (w->be->free_memory) {
		/* stages on one GPU share what it has free */
		const qw_region_job *job = &w->hdr->job;
		uint64_t sharing = 0;
		for (int i = 0; i < w->n_stages; i++)
			sharing += job->gpu[i] == job->gpu[w->stage];
		return w->be->free_memory(w->be) / (sharing ? sharing : 1);
	}
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	unsigned long long kb = 0;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	/* the stages of a CPU pipeline share the host's memory; what a stage reserved for its
	 * steps is not resident yet (untouched pages), so it is taken off here */
	uint64_t share = (uint64_t)kb * 1024 / (uint64_t)w->n_stages;
	share = share > w->step_bytes ? share - w->step_bytes : 0;
	return share < CPU_KV_CAP ? share : CPU_KV_CAP;
}

static qw_status create_backend(worker *w, qw_err *err)
{
	const qw_region_job *job = &w->hdr->job;
	if (strcmp(job->device, "cuda") == 0) {
		int gpu = job->gpu[w->stage];
		snprintf(w->slot->device, sizeof w->slot->device, "cuda:%d", gpu);
		return qw_cuda_backend_create(gpu, &w->be, err);
	}
	snprintf(w->slot->device, sizeof w->slot->device, "cpu");
	return qw_cpu_backend_create(&w->be, err);
}

// ---------------------------------------------------------------------------------------
// the NCCL data plane (CUDA backend, two stages or more)

static bool uses_nccl(const worker *w)
{
	return strcmp(w->hdr->job.device, "cuda") == 0 && w->n_stages > 1;
}

/* Before the first NCCL call.  NCCL refuses two ranks on one GPU unless each has a host id of
 * its own; stages sharing a GPU (tests) then talk over NCCL's socket transport, on loopback.
 * The pipeline only sends and receives, so NVLink SHARP's buffers would be memory for nothing. */
static void nccl_environment(worker *w)
{
	const qw_region_job *job = &w->hdr->job;
	int shared = -1;
	for (int i = 0; i < w->n_stages; i++)
		for (int j = 0; j < i; j++)
			if (job->gpu[i] == job->gpu[j])
				shared = job->gpu[i];
	setenv("NCCL_NVLS_ENABLE", "0", 0);
	if (shared < 0)
		return;
	char id[64];
	snprintf(id, sizeof id, "qwend-%d-stage-%d", (int)w->daemon, w->stage);
	setenv("NCCL_HOSTID", id, 1);
	setenv("NCCL_SOCKET_IFNAME", "lo", 0);
	if (w->stage == 0)
		qw_log(QW_LOG_WARN, "stages share GPU %d: their hand-overs go over NCCL's socket "
		       "transport (for tests, not for speed)", shared);
}

/* The generation's NCCL id in the region: stage 0 makes it, the others wait for it. */
qw_status worker_pipe_id(worker *w, qw_err *err)
{
	qw_region_header *h = w->hdr;
	if (w->stage == 0) {
		QW_TRY(qw_nccl_unique_id(h->nccl_id, err));
		atomic_store(&h->nccl_id_ready, 1);
	}
	while (!atomic_load(&h->nccl_id_ready)) {
		if (!worker_keep_waiting(w))
			return qw_fail(err, QW_E_ABORTED, "the daemon gave up before stage 0 made the "
				       "NCCL id");
		usleep(1000);
	}
	return QW_OK;
}

/* Joins the generation's communicator. */
static qw_status join_pipe(worker *w, qw_err *err)
{
	qw_region_header *h = w->hdr;
	nccl_environment(w);
	QW_TRY(worker_pipe_id(w, err));
	const qw_region_job *job = &h->job;
	int n_ds = w->cfg.has_vision ? w->cfg.vision.n_deepstack : 0;
	int in = w->stage > 0 ? n_ds - job->layer_begin[w->stage] : 0;
	int out = w->stage < w->n_stages - 1 ? n_ds - job->layer_end[w->stage] : 0;
	qw_nccl_pipe_config c = {
		.rank = w->stage, .n_ranks = w->n_stages, .unique_id = h->nccl_id,
		.cols = w->cfg.text.hidden_size, .max_rows = job->max_tokens,
		.max_extra_in = in > 0 ? in : 0, .max_extra_out = out > 0 ? out : 0,
		.check = job->check_transport != 0, .corrupt_every = job->corrupt_handover,
		.timeout_s = NCCL_TIMEOUT_S, .keep_waiting = worker_keep_waiting, .wait_ctx = w,
	};
	return qw_nccl_pipe_create(w->be, &c, &w->pipe, err);
}

// ---------------------------------------------------------------------------------------
// start-up

static uint64_t act_bytes(const worker *w, const qw_act *a)
{
	return a->data ? (uint64_t)a->cap_rows * (uint64_t)a->cols * w->elem : 0;
}

/* The activations a step hands between this stage's parts: the hidden states, the logits on
 * the last stage, and the image rows with their deepstack features. */
static qw_status alloc_step_acts(worker *w, qw_err *err)
{
	const qw_region_job *job = &w->hdr->job;
	qw_backend *be = w->be;
	int T = job->max_tokens, H = w->cfg.text.hidden_size;
	bool first = w->stage == 0, last = w->stage == w->n_stages - 1;
	qw_status st = be->act_alloc(be, T, H, &w->hidden, err);
	if (st == QW_OK && last)
		st = be->act_alloc(be, job->max_logits, w->cfg.text.vocab_size, &w->logits, err);
	w->n_ds = w->cfg.has_vision ? w->cfg.vision.n_deepstack : 0;
	w->ds_from = first ? 0 : job->layer_begin[w->stage];
	if (st == QW_OK && first && w->cfg.has_vision)
		st = be->act_alloc(be, T, H, &w->visual, err);
	for (int j = w->ds_from; j < w->n_ds && st == QW_OK; j++)
		st = be->act_alloc(be, T, H, &w->deepstack[j], err);
	return st;
}

/* Everything a step uses, made before the KV cache is sized from what is left, so that
 * nothing is allocated once the daemon is ready: the step's activations, stage 0's vision
 * tower and image store (the largest image, as many tokens again of images split across
 * steps, and the vision cache's tokens: the scheduler keeps them within that, the cache's
 * size reported in the slot), and the backend's buffers reserved for the
 * largest step the job admits.  On CUDA the largest steps then run once (warm-up): their
 * kernels load now, a step graph is measured, and a step past the reservation fails here. */
static qw_status reserve_steps(worker *w, const qw_stage *stage, qw_err *err)
{
	const qw_region_job *job = &w->hdr->job;
	qw_backend *be = w->be;
	bool first = w->stage == 0, last = w->stage == w->n_stages - 1;
	QW_TRY(alloc_step_acts(w, err));
	bool vision = first && w->cfg.has_vision && job->max_image_tokens > 0;
	int cached = vision ? qw_vision_store_tokens_in(&w->cfg, w->elem, job->vision_cache_bytes,
							 VISION_CACHE_MAX_TOKENS) : 0;
	qw_status st = vision ? qw_vision_store_init(&w->images, be, &w->cfg, job->max_image_tokens,
						     2 * job->max_image_tokens + cached, err)
			      : QW_OK;
	if (st != QW_OK && cached > 0) {
		char why[sizeof err->msg];
		snprintf(why, sizeof why, "%s", err->msg);
		return qw_fail(err, st, "stage 0's image store with a vision cache of %d image "
			       "tokens: %s (HINT: vision-cache sets the cache's memory; a smaller "
			       "value, or 0 for none, leaves more for the rest)", cached, why);
	}
	if (st != QW_OK)
		return st;
	w->slot->vision_cache_tokens = cached;
	qw_step_limits lim = {.max_tokens = job->max_tokens, .max_seqs = job->max_seqs,
			      .max_logits = job->max_logits, .max_context = job->max_context,
			      .block_size = job->block_tokens,
			      .graphs = w->m.graphs && be->graph_begin};
	qw_step_limits_shapes(&lim, &w->cfg, stage, vision ? job->max_image_tokens : 0);
	qw_reserved r = {0};
	if (be->reserve)
		QW_TRY(be->reserve(be, &lim, &r, err));
	/* the CPU backend has no kernels to load nor graphs: its warm-up would only cost time */
	if (strcmp(job->device, "cuda") == 0) {
		QW_TRY(qw_stage_model_warm_up(&w->m, &lim, &w->hidden, last ? &w->logits : NULL, err));
		if (vision)
			QW_TRY(qw_vision_store_warm_up(&w->images, &w->m.w, err));
		r.graph_bytes = qw_cuda_backend_reservation(be).graph_budget;   /* now measured */
	}
	uint64_t acts = act_bytes(w, &w->hidden) + act_bytes(w, &w->logits) +
			act_bytes(w, &w->visual);
	for (int j = 0; j < QW_MAX_DEEPSTACK; j++)
		acts += act_bytes(w, &w->deepstack[j]);
	w->step_bytes = acts + qw_stage_model_scratch_bytes(&w->m) +
			qw_vision_store_bytes(&w->images) + r.device_bytes + r.graph_bytes;
	w->slot->step_bytes = w->step_bytes;
	w->slot->step_host_bytes = r.host_bytes;
	return QW_OK;
}

static qw_status load(worker *w, qw_err *err)
{
	const qw_region_job *job = &w->hdr->job;
	/* "synthetic:CONFIG.json": deterministic random weights, no checkpoint */
	bool synthetic = strncmp(job->model_dir, QW_SYNTHETIC_PREFIX,
				 strlen(QW_SYNTHETIC_PREFIX)) == 0;
	char path[1100];
	if (synthetic)
		snprintf(path, sizeof path, "%s", job->model_dir + strlen(QW_SYNTHETIC_PREFIX));
	else
		snprintf(path, sizeof path, "%s/config.json", job->model_dir);
	qw_status st = qw_config_load(path, &w->cfg, err);
	if (st == QW_OK && !synthetic)
		st = qw_ckpt_open(job->model_dir, &w->ck, err);
	if (st == QW_OK)
		st = create_backend(w, err);
	/* the communicator forms while every stage starts, not after the slowest load */
	if (st == QW_OK && uses_nccl(w))
		st = join_pipe(w, err);
	if (st != QW_OK)
		return st;
	w->elem = qw_dtype_size(w->be->act_dtype);
	qw_stage stage = {w->stage, w->n_stages, job->layer_begin[w->stage],
			  job->layer_end[w->stage]};
	atomic_store(&w->slot->state, QW_WORKER_LOADING);
	worker_notify(w);
	const char *delay = getenv("QWEND_TEST_LOAD_DELAY_MS");
	w->load_delay_ms = delay ? atoi(delay) : 0;
	uint64_t t0 = w->load_t0_ms = qw_now_ms();
	st = synthetic ? qw_stage_model_load_synthetic(&w->m, &w->cfg, &stage, w->be, 0,
						       job->max_tokens, on_progress, w, err)
		       : qw_stage_model_load(&w->m, &w->cfg, w->ck, &stage, w->be, job->max_tokens,
					     on_progress, w, err);
	if (st != QW_OK)
		return st;
	w->m.graphs = job->cuda_graphs != 0;
	w->slot->load_ms = qw_now_ms() - t0;
	atomic_store(&w->slot->weights_ready, 1);   /* survivors of a restart may connect now */
	/* the links' buffers and the steps' memory exist before the KV cache is sized from what
	 * is left */
	if (w->pipe && (st = qw_nccl_pipe_warm(w->pipe, err)) != QW_OK)
		return st;
	if ((st = reserve_steps(w, &stage, err)) != QW_OK)
		return st;
	uint64_t weights = atomic_load(&w->slot->load_total);
	const qw_text_config *t = &w->cfg.text;
	uint64_t block = 2ull * (uint64_t)(stage.layer_end - stage.layer_begin) *
			 (uint64_t)job->block_tokens * (uint64_t)t->num_kv_heads *
			 (uint64_t)t->head_dim * w->elem;
	w->slot->weight_bytes = weights;
	w->slot->kv_block_bytes = block;
	w->slot->kv_block_capacity = block ? (int64_t)((double)free_memory(w) * job->kv_memory /
						       (double)block) : 0;
	char bytes[32], steps[32];
	qw_log(QW_LOG_INFO, "stage %d: layers [%d, %d), %s of weights in %.2f s, %s reserved for "
	       "steps", w->stage, stage.layer_begin, stage.layer_end,
	       qw_fmt_bytes(weights, bytes, sizeof bytes), (double)(qw_now_ms() - t0) / 1000.0,
	       qw_fmt_bytes(w->step_bytes, steps, sizeof steps));
	atomic_store(&w->slot->state, QW_WORKER_LOADED);
	worker_notify(w);
	return QW_OK;
}

/* The GPU's free memory into the slot (status shows it; once ready it should not move). */
static void note_device_free(worker *w)
{
	if (strcmp(w->hdr->job.device, "cuda") == 0)
		atomic_store(&w->slot->device_free, qw_cuda_backend_device_free(w->be));
}

/* The CPU backend's hand-overs: over the region's rings to and from the neighbours. */
qw_status worker_connect_handovers(worker *w, qw_err *err)
{
	const qw_region_job *job = &w->hdr->job;
	qw_channel ch;
	if (w->stage > 0 && !w->pipe) {
		QW_TRY(qw_ring_channel(qw_region_handover_ring(&w->region, w->stage - 1), &ch, err));
		qw_handover_init(&w->prev, ch, w->be, w->stage - 1, w->stage,
				 job->check_transport, 0);
	}
	if (w->stage < w->n_stages - 1 && !w->pipe) {
		QW_TRY(qw_ring_channel(qw_region_handover_ring(&w->region, w->stage), &ch, err));
		qw_handover_init(&w->next, ch, w->be, w->stage, w->stage + 1,
				 job->check_transport, job->corrupt_handover);
	}
	return QW_OK;
}

/* Waits for the daemon's KV decision, allocates the cache, and seals the backend: nothing is
 * allocated from here on. */
static qw_status prepare(worker *w, qw_err *err)
{
	const qw_region_job *job = &w->hdr->job;
	while ((w->kv_blocks = atomic_load(&w->hdr->kv_blocks)) == 0) {
		if (!worker_keep_waiting(w))
			return qw_fail(err, QW_E_ABORTED, "the daemon gave up before the KV cache was "
				       "sized");
		usleep(2000);
	}
	w->block_tokens = job->block_tokens;
	qw_status st = qw_stage_model_alloc_kv(&w->m, w->kv_blocks, w->block_tokens, err);
	if (st != QW_OK)
		return qw_err_context(err, "a KV cache of %d blocks", w->kv_blocks);
	w->slot->kv_bytes = (uint64_t)w->kv_blocks * w->slot->kv_block_bytes;

	int T = job->max_tokens;
	w->visual_rows = malloc((size_t)T * sizeof *w->visual_rows);
	w->tokens = malloc((size_t)job->max_logits * sizeof *w->tokens);
	w->logprobs = calloc((size_t)job->max_logits, sizeof *w->logprobs);
	w->history = malloc((size_t)job->max_logits * sizeof *w->history);
	w->result = malloc(qw_step_result_max_size(job->max_logits));
	if (!w->visual_rows || !w->tokens || !w->logprobs || !w->history || !w->result)
		st = qw_fail(err, QW_E_NOMEM, "out of memory for the step buffers");
	if (st != QW_OK)
		return st;
	if ((st = worker_await_rings(w, err)) != QW_OK ||
	    (st = worker_connect_handovers(w, err)) != QW_OK)
		return st;
	if (w->be->seal)
		w->be->seal(w->be);
	note_device_free(w);
	atomic_store(&w->slot->state, QW_WORKER_READY);
	atomic_store(&w->slot->can_rejoin, 1);
	worker_notify(w);
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// images (stage 0)

void worker_forget_images(worker *w)
{
	while (w->images.n_runs)
		qw_vision_store_forget(&w->images, w->images.runs[0].handle);
}

/* Runs the vision tower on an image the daemon placed in the arena. */
static qw_status see_image(worker *w, const qw_step_image *im, qw_err *err)
{
	const qw_region_header *h = w->hdr;
	uint64_t bytes = (uint64_t)im->height * (uint64_t)im->width * 3;
	if (im->arena_offset > h->arena_bytes || bytes > h->arena_bytes - im->arena_offset)
		return qw_fail(err, QW_E_IO, "image %llu lies outside the arena",
			       (unsigned long long)im->handle);
	qw_image img = {im->width, im->height, qw_region_arena(&w->region) + im->arena_offset};
	qw_pixels px;
	qw_status st = qw_patchify(&img, &w->cfg.vision, &px, err);
	if (st != QW_OK)
		return st;
	if (px.grid_t != im->grid[0] || px.grid_h != im->grid[1] || px.grid_w != im->grid[2] ||
	    px.n_tokens != im->n_tokens) {
		qw_pixels_free(&px);
		return qw_fail(err, QW_E_IO, "image %llu: its pixels make a (%d, %d, %d) grid, the "
			       "plan says (%d, %d, %d)", (unsigned long long)im->handle, px.grid_t,
			       px.grid_h, px.grid_w, im->grid[0], im->grid[1], im->grid[2]);
	}
	st = qw_vision_store_see(&w->images, &w->m.w, im->handle, im->grid, px.values, px.rows,
				 err);
	qw_pixels_free(&px);
	if (st == QW_OK)
		atomic_fetch_add(&w->slot->vision_runs, 1);
	return st;
}

/* Stage 0: the step's image rows (and their deepstack features) from the vision outputs. */
static qw_status gather_visual(worker *w, const qw_step_plan *p, int n_visual, qw_err *err)
{
	qw_backend *be = w->be;
	int at = 0;
	for (int i = 0; i < p->n_images; i++) {
		const qw_step_image *im = &p->images[i];
		qw_status st = QW_OK;
		qw_vision_out e;
		if (im->fresh && !qw_vision_store_find(&w->images, im->handle, &e))
			st = see_image(w, im, err);
		if (st == QW_OK && !qw_vision_store_find(&w->images, im->handle, &e))
			st = qw_fail(err, QW_E_IO, "image %llu: its features are gone (a plan out of "
				     "order?)", (unsigned long long)im->handle);
		if (st != QW_OK)
			return st;
		qw_act dst = qw_act_rows(&w->visual, at, im->count, w->elem);
		qw_act src = qw_act_rows(&e.embeds, im->first, im->count, w->elem);
		if ((st = be->act_copy(be, &dst, &src, err)) != QW_OK)
			return st;
		for (int j = 0; j < w->n_ds; j++) {
			dst = qw_act_rows(&w->deepstack[j], at, im->count, w->elem);
			src = qw_act_rows(&e.deepstack[j], im->first, im->count, w->elem);
			if ((st = be->act_copy(be, &dst, &src, err)) != QW_OK)
				return st;
		}
		for (int k = 0; k < im->count; k++)
			w->visual_rows[at + k] = im->row + k;
		at += im->count;
		/* its last rows are placed: forgotten, unless the daemon's vision cache keeps it */
		if (im->first + im->count == im->n_tokens && !im->keep)
			qw_vision_store_forget(&w->images, im->handle);
	}
	w->visual.rows = n_visual;
	for (int j = 0; j < w->n_ds; j++)
		w->deepstack[j].rows = n_visual;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// a step

/* Dense (n_seqs, max_blocks) block tables from the plan's packed ones; checks ids and slots. */
static qw_status block_tables(worker *w, const qw_step_plan *p, int *max_blocks, qw_err *err)
{
	int mb = 1;
	for (int s = 0; s < p->n_seqs; s++)
		if (p->block_start[s + 1] - p->block_start[s] > mb)
			mb = p->block_start[s + 1] - p->block_start[s];
	size_t need = (size_t)p->n_seqs * (size_t)mb;
	if (need > w->tables_cap) {
		int32_t *grown = realloc(w->tables, need * sizeof *grown);
		if (!grown)
			return qw_fail(err, QW_E_NOMEM, "out of memory for block tables");
		w->tables = grown;
		w->tables_cap = need;
	}
	for (int s = 0; s < p->n_seqs; s++) {
		int a = p->block_start[s], n = p->block_start[s + 1] - a;
		for (int j = 0; j < mb; j++)
			w->tables[(size_t)s * (size_t)mb + (size_t)j] = j < n ? p->blocks[a + j] : 0;
	}
	for (int i = 0; i < p->n_blocks; i++)
		if (p->blocks[i] >= w->kv_blocks)
			return qw_fail(err, QW_E_IO, "step %llu names KV block %d of %d",
				       (unsigned long long)p->step, p->blocks[i], w->kv_blocks);
	for (int t = 0; t < p->n_tokens; t++) {
		int s = p->seq[t], n = p->block_start[s + 1] - p->block_start[s];
		if (p->kv_index[t] >= n * w->block_tokens ||
		    p->slot[t] >= w->kv_blocks * w->block_tokens)
			return qw_fail(err, QW_E_IO, "step %llu: token %d's KV entry lies outside its "
				       "blocks", (unsigned long long)p->step, t);
	}
	*max_blocks = mb;
	return QW_OK;
}

/* The record step p brings from the previous stage (in) or hands to the next (out): its
 * hidden states, and for image rows the deepstack features of layers past the sender's. */
static qw_nccl_record record_of(const worker *w, const qw_step_plan *p, bool in)
{
	const qw_region_job *job = &w->hdr->job;
	int n_visual = 0;
	for (int i = 0; i < p->n_images; i++)
		n_visual += p->images[i].count;
	int from = in ? job->layer_begin[w->stage] : job->layer_end[w->stage];
	int k = n_visual && w->n_ds > from ? w->n_ds - from : 0;
	return (qw_nccl_record){p->step, p->n_tokens, k, n_visual};
}

/* NCCL: the next plan, if the daemon has posted it already, so that its receive is posted
 * now, beside this step's send.  *have: it is a step (not a stop) whose record comes. */
static qw_status look_ahead(worker *w, qw_nccl_record *next, bool *have, qw_err *err)
{
	*have = false;
	w->ahead_len = 0;
	qw_err quiet = {0};
	qw_status st = qw_ring_recv(qw_region_plan_ring(&w->region, w->stage), &w->ahead,
				    &w->ahead_cap, &w->ahead_len, 0, &quiet);
	if (st == QW_E_TIMEOUT)
		return QW_OK;   /* none yet: its receive is posted when it comes */
	if (st != QW_OK) {
		*err = quiet;
		return st;
	}
	qw_step_plan q;
	QW_TRY(qw_step_plan_read(w->ahead, w->ahead_len, &q, err));
	*have = q.kind != QW_STEP_STOP;
	if (*have)
		*next = record_of(w, &q, true);
	return QW_OK;
}

/* The last stage's sampling inputs: each row's history in the arena (checked to lie in
 * it), and whether any row has one or asks for log-probabilities. */
static qw_status sample_inputs(worker *w, const qw_step_plan *p, bool *histories,
			       bool *logprobs, qw_err *err)
{
	const qw_region_header *h = w->hdr;
	*histories = *logprobs = false;
	for (int l = 0; l < p->n_logits; l++) {
		const qw_step_history *s = &p->history[l];
		uint64_t bytes = (uint64_t)s->n * sizeof(qw_token_count);
		if (s->n > 0 && (s->arena_offset > h->arena_bytes ||
				 bytes > h->arena_bytes - s->arena_offset || s->arena_offset % 8))
			return qw_fail(err, QW_E_IO, "step %llu: row %d's history lies outside the "
				       "arena", (unsigned long long)p->step, l);
		w->history[l] = (qw_sample_history){
			s->n > 0 ? (const qw_token_count *)(qw_region_arena(&w->region) +
							    s->arena_offset) : NULL, s->n};
		*histories |= s->n > 0;
		*logprobs |= p->sampling[l].logprobs != 0;
	}
	return QW_OK;
}

static qw_status run_step(worker *w, const qw_step_plan *p, qw_err *err)
{
	const qw_region_job *job = &w->hdr->job;
	bool first = w->stage == 0, last = w->stage == w->n_stages - 1;
	int T = p->n_tokens;
	if (T > job->max_tokens || p->n_logits > job->max_logits)
		return qw_fail(err, QW_E_IO, "step %llu has %d tokens and %d logit rows (at most %d "
			       "and %d)", (unsigned long long)p->step, T, p->n_logits,
			       job->max_tokens, job->max_logits);
	for (int i = 0; i < p->n_drop && first; i++)
		qw_vision_store_forget(&w->images, p->drop[i]);
	int max_blocks = 1, n_visual = 0;
	qw_status st = block_tables(w, p, &max_blocks, err);
	if (st != QW_OK)
		return st;
	for (int i = 0; i < p->n_images; i++)
		n_visual += p->images[i].count;
	if (n_visual && !w->cfg.has_vision)
		return qw_fail(err, QW_E_IO, "step %llu has image rows; the model has no vision "
			       "tower", (unsigned long long)p->step);
	qw_batch b = {.n_tokens = T, .token_ids = p->token_ids, .positions = p->positions,
		      .seq = p->seq, .kv_index = p->kv_index, .slot = p->slot, .n_seqs = p->n_seqs,
		      .max_blocks = max_blocks, .block_tables = w->tables, .n_logits = p->n_logits,
		      .logit_rows = p->logit_rows};
	if (n_visual) {
		if (first && (st = gather_visual(w, p, n_visual, err)) != QW_OK)
			return st;
		if (!first) {   /* the same rows, from the plan */
			int at = 0;
			for (int i = 0; i < p->n_images; i++)
				for (int k = 0; k < p->images[i].count; k++)
					w->visual_rows[at++] = p->images[i].row + k;
		}
		b.n_visual = n_visual;
		b.visual_rows = w->visual_rows;
		b.visual_embeds = &w->visual;
		b.deepstack = w->deepstack;
		b.n_deepstack = w->n_ds;
	}
	qw_nccl_record in = record_of(w, p, true), out = record_of(w, p, false);
	if (!first) {
		qw_act *extra[QW_MAX_DEEPSTACK];
		for (int j = 0; j < in.n_extra; j++)
			extra[j] = &w->deepstack[w->ds_from + j];
		if (!w->pipe)
			st = qw_handover_recv(&w->prev, p->step, &w->hidden, T, extra, in.n_extra,
					      in.extra_rows, err);
		else if (w->posted_ahead != p->step + 1)
			st = qw_nccl_pipe_post_recv(w->pipe, &in, err);
		if (st == QW_OK && w->pipe)
			st = qw_nccl_pipe_take(w->pipe, &in, &w->hidden, extra, err);
		if (st != QW_OK)
			return st;
	}
	if ((st = qw_stage_step(&w->m, &b, &w->hidden, &w->logits, err)) != QW_OK)
		return st;
	qw_nccl_record next;
	bool ahead = false;
	if (w->pipe && !first && (st = look_ahead(w, &next, &ahead, err)) != QW_OK)
		return st;
	w->posted_ahead = ahead ? next.step + 1 : 0;
	if (!last) {
		int end = job->layer_end[w->stage];
		const qw_act *extra[QW_MAX_DEEPSTACK];
		for (int j = 0; j < out.n_extra; j++)
			extra[j] = &w->deepstack[end + j];
		if (!w->pipe)
			return qw_handover_send(&w->next, p->step, &w->hidden, extra, out.n_extra,
						err);
		/* this step leaves while the next is computed; at most one is in flight */
		st = qw_nccl_pipe_send(w->pipe, &out, &w->hidden, extra, ahead ? &next : NULL,
				       err);
		if (st == QW_OK && !first)
			st = qw_nccl_pipe_wait_taken(w->pipe, err);
		return st == QW_OK ? qw_nccl_pipe_wait_sent(w->pipe, 1, err) : st;
	}
	if (ahead && (st = qw_nccl_pipe_post_recv(w->pipe, &next, err)) != QW_OK)
		return st;
	/* the step's compute, waited for here (polling NCCL) rather than inside sample */
	if (w->pipe && (st = qw_nccl_pipe_sync(w->pipe, err)) != QW_OK)
		return st;
	bool histories, logprobs;
	if ((st = sample_inputs(w, p, &histories, &logprobs, err)) != QW_OK)
		return st;
	if (p->n_logits > 0 &&
	    (st = w->be->sample(w->be, &w->logits, p->sampling, histories ? w->history : NULL,
				w->tokens, logprobs ? w->logprobs : NULL, err)) != QW_OK)
		return st;
	for (int l = 0; logprobs && l < p->n_logits; l++)
		if (!p->sampling[l].logprobs)   /* what the backend left there: zeros instead */
			memset(&w->logprobs[l], 0, sizeof w->logprobs[l]);
	qw_step_result r = {p->step, p->n_logits, w->tokens, logprobs ? w->logprobs : NULL};
	size_t len = qw_step_result_size(&r);
	qw_step_result_write(&r, w->result);
	const void *parts[] = {w->result};
	if ((st = qw_ring_send(qw_region_result_ring(&w->region), parts, &len, 1, -1, err)) != QW_OK)
		return st;
	worker_notify(w);
	return QW_OK;
}

static qw_status serve(worker *w, qw_err *err)
{
	qw_ring *plans = qw_region_plan_ring(&w->region, w->stage);
	for (;;) {
		size_t len;
		qw_status st;
		if (w->ahead_len) {   /* read early: it becomes the plan being run */
			void *msg = w->msg;
			size_t cap = w->msg_cap;
			w->msg = w->ahead, w->msg_cap = w->ahead_cap, len = w->ahead_len;
			w->ahead = msg, w->ahead_cap = cap, w->ahead_len = 0;
			st = QW_OK;
		} else {
			st = qw_ring_recv(plans, &w->msg, &w->msg_cap, &len, IDLE_WAIT_MS, err);
		}
		worker_beat(w);
		if (st == QW_E_TIMEOUT) {
			if (getppid() != w->daemon)
				return qw_fail(err, QW_E_ABORTED, "the daemon is gone");
			note_device_free(w);
			/* a neighbour's death shows here while no step runs */
			if (w->pipe && (st = qw_nccl_pipe_health(w->pipe, err)) != QW_OK)
				return st;
			continue;
		}
		qw_step_plan p;
		if (st == QW_OK)
			st = qw_step_plan_read(w->msg, len, &p, err);
		if (st != QW_OK)
			return st;
		if (p.kind == QW_STEP_STOP)
			return QW_OK;
		uint64_t t0 = qw_now_ns();
		if ((st = run_step(w, &p, err)) != QW_OK)
			return qw_err_context(err, "step %llu", (unsigned long long)p.step);
		atomic_fetch_add(&w->slot->steps, 1);
		atomic_fetch_add(&w->slot->busy_us, (qw_now_ns() - t0) / 1000);
	}
}

/* The worker's life: load, allocate, serve; after each failure the daemon may keep it. */
static qw_status run(worker *w, qw_err *err)
{
	QW_TRY(load(w, err));
	QW_TRY(prepare(w, err));
	for (;;) {
		qw_status st = serve(w, err);
		if (st == QW_OK)
			return QW_OK;   /* a stop plan */
		if (!worker_moved_on(w)) {
			/* an abort in the same generation: the daemon ends every worker, or is gone */
			if (st == QW_E_ABORTED)
				return st;
			if (!worker_await_generation(w, err))
				return qw_fail(err, QW_E_ABORTED, "the daemon is gone");
		}
		QW_TRY(worker_rejoin(w, err));
	}
}

static void release(worker *w, bool clean)
{
	qw_nccl_pipe_destroy(w->pipe, clean);   /* before the backend whose stream it uses */
	if (w->be) {
		qw_vision_store_free(&w->images);
		qw_act *acts[] = {&w->hidden, &w->logits, &w->visual};
		for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
			if (acts[i]->data)
				w->be->act_free(w->be, acts[i]);
		for (int j = 0; j < QW_MAX_DEEPSTACK; j++)
			if (w->deepstack[j].data)
				w->be->act_free(w->be, &w->deepstack[j]);
		qw_stage_model_free(&w->m);
		w->be->destroy(w->be);
	}
	qw_handover_free(&w->prev);
	qw_handover_free(&w->next);
	if (w->ck)
		qw_ckpt_close(w->ck);
	free(w->msg);
	free(w->ahead);
	free(w->tables);
	free(w->visual_rows);
	free(w->tokens);
	free(w->logprobs);
	free(w->history);
	free(w->result);
	qw_region_close(&w->region);
}

int qw_worker_run(const qw_worker_args *a)
{
	worker w = {.args = a, .stage = a->stage, .daemon = getppid()};
	/* a worker never outlives its daemon */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != w.daemon)
		return 1;
	char role[32];
	snprintf(role, sizeof role, "worker %d", a->stage);
	qw_log_init(role, a->log_level, -1);
	qw_err err = {0};
	if (qw_region_map(a->region_fd, &w.region, &err) != QW_OK) {
		qw_log(QW_LOG_ERROR, "%s", err.msg);
		return 1;
	}
	w.hdr = w.region.hdr;
	w.n_stages = w.hdr->job.n_stages;
	if (a->stage < 0 || a->stage >= w.n_stages) {
		qw_log(QW_LOG_ERROR, "stage %d of a %d-stage job", a->stage, w.n_stages);
		qw_region_close(&w.region);
		return 1;
	}
	w.slot = &w.hdr->worker[a->stage];
	atomic_store(&w.slot->pid, (int32_t)getpid());
	w.generation = atomic_load(&w.hdr->generation);
	atomic_store(&w.slot->generation, w.generation);
	worker_beat(&w);
	int rc = 0;
	if (run(&w, &err) != QW_OK) {
		rc = err.code == QW_E_ABORTED ? 3 : fail(&w, &err);
	} else {
		atomic_store(&w.slot->state, QW_WORKER_STOPPED);
		worker_notify(&w);
	}
	release(&w, rc == 0);
	return rc;
}
