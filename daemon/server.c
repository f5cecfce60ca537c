/* server.c - qwend's loop: start-up, the pipeline's life, signals, the tick, shutdown.
 * See server.h. */
#include "daemon/server.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <zmq.h>

#include "daemon/demo.h"
#include "daemon/devices.h"
#include "kernels/cuda/cuda_backend.h"
#include "loader/checkpoint.h"
#include "loader/clock.h"
#include "loader/dtype.h"

#define TICK_MS 100
#define LOAD_LOG_S 2.0            /* at most how often a load's progress is logged */

static bool file_exists(const char *dir, const char *name)
{
	char path[2200];
	struct stat st;
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// ---------------------------------------------------------------------------------------
// the model, as the daemon sees it

/* End-of-sequence ids: generation_config.json's, the config's, the tokenizer's. */
static void collect_eos(qw_server *sv)
{
	qw_req_ctx *rc = &sv->rc;
	int32_t cand[2 * QW_REQ_MAX_EOS + 2];
	int n = 0;
	char path[1100];
	snprintf(path, sizeof path, "%s/generation_config.json", sv->meta_dir);
	json_t *gen = json_load_file(path, 0, NULL);
	json_t *e = gen ? json_object_get(gen, "eos_token_id") : NULL;
	if (json_is_integer(e))
		cand[n++] = (int32_t)json_integer_value(e);
	for (size_t i = 0; json_is_array(e) && i < json_array_size(e) && n < QW_REQ_MAX_EOS; i++)
		if (json_is_integer(json_array_get(e, i)))
			cand[n++] = (int32_t)json_integer_value(json_array_get(e, i));
	json_decref(gen);
	for (int i = 0; i < sv->cfg.text.n_eos && n < 2 * QW_REQ_MAX_EOS; i++)
		cand[n++] = sv->cfg.text.eos_token_ids[i];
	if (sv->tok && qw_tokenizer_eos(sv->tok) >= 0)
		cand[n++] = qw_tokenizer_eos(sv->tok);
	rc->n_eos = 0;
	for (int i = 0; i < n && rc->n_eos < QW_REQ_MAX_EOS; i++) {
		bool dup = cand[i] < 0 || cand[i] >= sv->cfg.text.vocab_size;
		for (int k = 0; k < rc->n_eos; k++)
			dup |= rc->eos[k] == cand[i];
		if (!dup)
			rc->eos[rc->n_eos++] = cand[i];
	}
}

/* A Thinking model's chat template opens <think> in its generation prompt. */
static bool template_thinks(const char *dir)
{
	static const char *const files[] = {"chat_template.jinja", "chat_template.json",
					    "tokenizer_config.json"};
	for (int i = 0; i < 3; i++) {
		char path[1100];
		snprintf(path, sizeof path, "%s/%s", dir, files[i]);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		char *text = NULL;
		size_t cap = 0;
		ssize_t n = getdelim(&text, &cap, '\0', f);
		fclose(f);
		/* in a .jinja file the newlines are real; in JSON they are escaped */
		bool yes = n > 0 && (strstr(text, "assistant\n<think>\n") ||
				     strstr(text, "assistant\\n<think>\\n"));
		free(text);
		if (n > 0)
			return yes;
	}
	return false;
}

static qw_status open_tokenizer(qw_server *sv, qw_err *err)
{
	bool explicit_dir = sv->set.tokenizer[0] != '\0';
	const char *dir = explicit_dir ? sv->set.tokenizer : sv->meta_dir;
	if (!file_exists(dir, "tokenizer.json")) {
		if (explicit_dir)
			return qw_fail(err, QW_E_IO, "--tokenizer %s: no tokenizer.json there", dir);
		qw_log(QW_LOG_WARN, "%s has no tokenizer.json: serving token-id requests only "
		       "(HINT: --tokenizer DIR)", sv->meta_dir);
		return QW_OK;
	}
	qw_status st = qw_tokenizer_load(dir, &sv->tok, err);
	if (st != QW_OK)
		return st;
	if (qw_tokenizer_size(sv->tok) > sv->cfg.text.vocab_size) {
		int32_t size = qw_tokenizer_size(sv->tok);
		qw_tokenizer_free(sv->tok);
		sv->tok = NULL;
		if (explicit_dir)
			return qw_fail(err, QW_E_CONFIG, "the tokenizer in %s has %d tokens, more than "
				       "the model's vocabulary of %d", dir, size,
				       sv->cfg.text.vocab_size);
		qw_log(QW_LOG_WARN, "the tokenizer in %s (%d tokens) does not fit the model's "
		       "vocabulary of %d: serving token-id requests only", dir, size,
		       sv->cfg.text.vocab_size);
	}
	return QW_OK;
}

/* The stage plan and parameter counts: from the checkpoint's tensors, or for a synthetic
 * model from what the config implies (bf16; FP8 weights and their scales under an fp8
 * quantization_config). */
static qw_status plan_model(qw_server *sv, bool synthetic, qw_dtype kv_dtype, qw_err *err)
{
	qw_checkpoint *ck = NULL;
	qw_status st = synthetic ? QW_OK : qw_ckpt_open(sv->model_dir, &ck, err);
	if (st != QW_OK)
		return st;
	qw_expert_layout layout = ck ? qw_detect_expert_layout(&sv->cfg, ck)
				     : sv->cfg.arch == QW_ARCH_QWEN3_MOE ? QW_EXPERTS_PER_EXPERT
									  : QW_EXPERTS_FUSED;
	qw_wspec *specs = NULL;
	size_t n = 0;
	st = ck ? qw_plan_checkpoint(&sv->cfg, ck, sv->n_stages, kv_dtype, sv->plan, err) : QW_OK;
	if (st == QW_OK)
		st = qw_wmap_build(&sv->cfg, layout, NULL, &specs, &n, err);
	if (st == QW_OK && !ck) {
		qw_plan_synthetic_bytes(&sv->cfg, specs, n);
		st = qw_plan_stages(&sv->cfg, specs, n, sv->n_stages, kv_dtype, sv->plan, err);
	}
	if (st == QW_OK) {
		qw_params p;
		qw_count_params(specs, n, sv->cfg.text.num_experts_per_tok, &p);
		sv->params_total = p.total;
		sv->params_active = p.active;
	}
	free(specs);
	if (ck)
		qw_ckpt_close(ck);
	return st;
}

static qw_status open_model(qw_server *sv, qw_err *err)
{
	const qw_settings *set = &sv->set;
	qw_status st;
	bool synthetic = strncmp(set->model, QW_SYNTHETIC_PREFIX, strlen(QW_SYNTHETIC_PREFIX)) == 0;
	char path[1100];
	sv->demo = strcmp(set->model, "demo") == 0;
	if (sv->demo) {
		if ((st = qw_demo_model_ensure(NULL, sv->model_dir, sizeof sv->model_dir, err)))
			return qw_err_context(err, "the demo model");
		qw_log(QW_LOG_WARN, "serving the demo model: a tiny Qwen3-VL with random weights, to "
		       "try qwend out; its answers are fluent nonsense (HINT: --model DIR serves a "
		       "real model)");
	} else {
		snprintf(sv->model_dir, sizeof sv->model_dir, "%s", set->model);
		if (!synthetic && (st = qw_model_dir_check(sv->model_dir, err)) != QW_OK)
			return qw_err_context(err, "model");
	}
	/* a synthetic model's tokenizer, generation config and template sit beside its config */
	if (synthetic) {
		snprintf(path, sizeof path, "%s", set->model + strlen(QW_SYNTHETIC_PREFIX));
		snprintf(sv->meta_dir, sizeof sv->meta_dir, "%s", path);
		char *slash = strrchr(sv->meta_dir, '/');
		if (slash)
			*slash = '\0';
		else
			snprintf(sv->meta_dir, sizeof sv->meta_dir, ".");
	} else {
		snprintf(path, sizeof path, "%s/config.json", sv->model_dir);
		snprintf(sv->meta_dir, sizeof sv->meta_dir, "%s", sv->model_dir);
	}
	if ((st = qw_config_load(path, &sv->cfg, err)) != QW_OK)
		return st;
	/* the backend: auto picks cuda where this build has it and the driver lists a GPU */
	char why[160];
	int found = qw_devices_count_gpus(QW_NVIDIA_GPUS_DIR);
	snprintf(sv->device, sizeof sv->device, "%s",
		 qw_devices_pick(set->device, found, qw_cuda_backend_built(), why, sizeof why));
	qw_log(QW_LOG_INFO, "%s", why);
	bool cuda = strcmp(sv->device, "cuda") == 0;
	sv->n_stages = (int)set->stages;
	if (cuda && (st = qw_devices_gpus(set->gpus, found, sv->gpu, QW_MAX_STAGES, &sv->n_stages,
					  err)) != QW_OK)
		return st;
	if ((st = plan_model(sv, synthetic, cuda ? QW_DT_BF16 : QW_DT_F32, err)) != QW_OK ||
	    (st = open_tokenizer(sv, err)) != QW_OK)
		return st;

	qw_req_ctx *rc = &sv->rc;
	rc->cfg = &sv->cfg;
	rc->tok = sv->tok;
	rc->thinking = !strcmp(set->thinking, "yes") ||
		       (!strcmp(set->thinking, "auto") && template_thinks(sv->meta_dir));
	rc->think_start = sv->tok ? qw_tokenizer_added_id(sv->tok, "<think>") : -1;
	rc->think_end = sv->tok ? qw_tokenizer_added_id(sv->tok, "</think>") : -1;
	collect_eos(sv);
	rc->max_context = set->max_model_len > 0 ? (int)set->max_model_len
		       : sv->cfg.text.max_position_embeddings > 0
			       ? sv->cfg.text.max_position_embeddings : 32768;
	rc->default_max_tokens = (int)set->max_new_tokens;
	rc->temperature = set->temperature;
	rc->top_p = set->top_p;
	rc->top_k = (int)set->top_k;
	rc->image_limits = (qw_image_limits){(size_t)set->max_image_bytes, 65535,
					     set->max_image_pixels};
	rc->preprocess = QW_PREPROCESS_DEFAULT;
	rc->preprocess.max_tokens = (int)set->max_image_tokens;
	rc->max_images = (int)set->max_images;
	rc->max_image_tokens = (int)set->max_image_tokens;
	sv->limits = QW_LIMITS_DEFAULT;
	sv->limits.max_message = (size_t)set->max_request_bytes;
	sv->limits.max_images = (int)set->max_images;
	sv->limits.max_image_bytes = (size_t)set->max_image_bytes;
	qw_log(QW_LOG_INFO, "model %s: %s, %d layers, %.2fM parameters (%.2fM active), %s%s",
	       sv->model_dir, sv->cfg.model_type, sv->cfg.text.num_layers,
	       (double)sv->params_total / 1e6, (double)sv->params_active / 1e6,
	       sv->tok ? "with a tokenizer" : "token ids only", rc->thinking ? ", thinking" : "");
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// the pipeline

/* Tokens of the largest image a request may bring (max-image-tokens, and what the resizer's
 * pixel limit leaves): what stage 0 reserves its vision tower for.  0 without one. */
static int largest_image(const qw_server *sv)
{
	const qw_vision_config *vc = &sv->cfg.vision;
	if (!sv->cfg.has_vision)
		return 0;
	int64_t side = (int64_t)vc->patch_size * vc->spatial_merge_size;
	int64_t by_pixels = side > 0 ? sv->rc.preprocess.max_pixels / (side * side) : 0;
	int64_t tokens = sv->set.max_image_tokens;
	return (int)(by_pixels > 0 && by_pixels < tokens ? by_pixels : tokens);
}

static qw_status start_pipeline(qw_server *sv, qw_err *err)
{
	const qw_settings *set = &sv->set;
	qw_region_job job = {0};
	snprintf(job.model_dir, sizeof job.model_dir, "%s", sv->model_dir);
	snprintf(job.device, sizeof job.device, "%s", sv->device);
	job.n_stages = sv->n_stages;
	for (int i = 0; i < sv->n_stages; i++) {
		job.layer_begin[i] = sv->plan[i].stage.layer_begin;
		job.layer_end[i] = sv->plan[i].stage.layer_end;
		job.gpu[i] = sv->gpu[i];
	}
	job.max_tokens = (int)set->max_batch_tokens;
	job.max_logits = (int)set->max_seqs;
	job.max_seqs = (int)set->max_seqs;
	job.max_context = sv->rc.max_context;
	job.max_image_tokens = largest_image(sv);
	job.block_tokens = (int)set->kv_block_tokens;
	job.vision_cache_bytes = (uint64_t)set->vision_cache;
	job.kv_memory = set->kv_memory;
	job.check_transport = !strcmp(set->check_transport, "yes");
	job.cuda_graphs = !strcmp(set->cuda_graphs, "yes");
	const char *corrupt = getenv("QWEND_TEST_CORRUPT_HANDOVER");
	job.corrupt_handover = corrupt ? atoi(corrupt) : 0;
	sv->depth = set->pipeline_depth > 0 ? (int)set->pipeline_depth : sv->n_stages;

	/* a plan carries at most this many block ids; the rings hold depth + 1 largest plans */
	int64_t per_seq = (sv->rc.max_context + job.block_tokens - 1) / job.block_tokens;
	int64_t kv_max = per_seq * set->max_seqs;
	int64_t plan_blocks = kv_max < (1 << 18) ? kv_max : (1 << 18);
	/* image handles stage 0 may drop: at most every image of every sequence, and the vision
	 * cache's entries (as many at most) */
	int64_t handles = set->max_seqs * set->max_images;
	sv->max_image_handles = handles < (1 << 26) ? (int)handles : (1 << 26);
	size_t plan_max = qw_step_plan_max_size(job.max_tokens, job.max_logits, (int)plan_blocks,
						2 * sv->max_image_handles);
	size_t result_max = qw_step_result_max_size(job.max_logits);
	qw_region_sizes sizes = {
		.plan_ring = (size_t)(sv->depth + 1) * qw_ring_record_bytes(plan_max),
		.result_ring = (size_t)(sv->depth + 1) * qw_ring_record_bytes(result_max),
		.handover_ring = 8u << 20,
		.arena = (size_t)set->image_arena,
	};
	sv->max_plan_blocks = (int)plan_blocks;
	qw_status st = qw_supervisor_init(&sv->sup, &job, &sizes, set->kv_blocks,
					  kv_max < INT32_MAX ? kv_max : INT32_MAX,
					  qw_log_enabled(QW_LOG_DEBUG) ? QW_LOG_DEBUG : QW_LOG_INFO,
					  err);
	if (st == QW_OK)
		st = qw_supervisor_start(&sv->sup, err);
	sv->t_load = sv->t_load_logged = qw_seconds_now();
	sv->load_logged_tenth = 0;
	return st;
}

void qw_server_fail_all(qw_server *sv, const char *code, const char *message)
{
	while (sv->live)
		qw_server_end(sv, sv->live, code, message, NULL);
}

static void pipeline_ready(qw_server *sv)
{
	qw_err err = {0};
	if (!sv->have_sched) {
		qw_sched_opts o = {.kv_blocks = sv->sup.kv_decided,
				   .block_tokens = (int)sv->set.kv_block_tokens,
				   .max_seqs = (int)sv->set.max_seqs,
				   .max_batch_tokens = (int)sv->set.max_batch_tokens,
				   .max_queue = (int)sv->set.max_queue, .depth = sv->depth,
				   .max_plan_blocks = sv->max_plan_blocks,
				   .prefix_cache = !strcmp(sv->set.prefix_cache, "yes"),
				   .arena = qw_region_arena(&sv->sup.region),
				   .arena_bytes = sv->sup.region.hdr->arena_bytes,
				   .vision_tokens = sv->sup.job.max_image_tokens,
				   .vision_cache_tokens =
					   sv->sup.region.hdr->worker[0].vision_cache_tokens,
				   .vision_cache_entries = sv->max_image_handles};
		if (qw_sched_init(&sv->sched, &o, &err) != QW_OK) {
			qw_log(QW_LOG_ERROR, "%s", err.msg);
			sv->stopping = true;
			return;
		}
		sv->have_sched = true;
		sv->sup.kv_blocks = sv->sup.kv_decided;   /* a restart allocates the same */
		sd_notify(0, "READY=1");
	} else {
		sv->sched.o.arena = qw_region_arena(&sv->sup.region);   /* the new region's */
	}
	if (sv->state != QW_SERVER_DRAINING)
		sv->state = QW_SERVER_READY;
	uint64_t tokens = (uint64_t)sv->sup.kv_decided * (uint64_t)sv->set.kv_block_tokens;
	char after[64] = "";
	if (sv->t_failed > 0) {   /* back from a failure: how long that took */
		sv->last_recovery_s = qw_seconds_now() - sv->t_failed;
		sv->t_failed = 0;
		snprintf(after, sizeof after, " (%.2f s after the failure)", sv->last_recovery_s);
	}
	qw_log(QW_LOG_INFO, "ready: %d stage%s, KV cache of %llu tokens, serving %s%s",
	       sv->n_stages, sv->n_stages == 1 ? "" : "s", (unsigned long long)tokens,
	       sv->endpoint, after);
	sd_notifyf(0, "STATUS=ready: %d stage%s, %llu tokens of KV cache", sv->n_stages,
		   sv->n_stages == 1 ? "" : "s", (unsigned long long)tokens);
}

void qw_server_post_steps(qw_server *sv)
{
	/* a drain goes on posting, but not while a partial restart has the rings */
	if (!sv->have_sched || (sv->state != QW_SERVER_READY && sv->state != QW_SERVER_DRAINING) ||
	    !sv->sup.running || sv->sup.rejoin)
		return;
	qw_step_plan p;
	while (qw_sched_next(&sv->sched, &p)) {
		size_t len = qw_step_plan_size(&p);
		if (len > sv->plan_buf_cap) {
			free(sv->plan_buf);
			sv->plan_buf_cap = len + len / 2;
			sv->plan_buf = malloc(sv->plan_buf_cap);
			if (!sv->plan_buf) {
				sv->plan_buf_cap = 0;
				qw_server_pipeline_broke(sv, "out of memory for a step plan");
				return;
			}
		}
		qw_step_plan_write(&p, sv->plan_buf);
		const void *parts[] = {sv->plan_buf};
		for (int i = 0; i < sv->n_stages; i++) {
			qw_err err = {0};
			/* the rings hold depth + 1 of the largest plans: never full here */
			if (qw_ring_send(qw_region_plan_ring(&sv->sup.region, i), parts, &len, 1, 0,
					 &err) != QW_OK) {
				char why[1200];
				snprintf(why, sizeof why, "posting step %llu to worker %d: %s",
					 (unsigned long long)p.step, i, err.msg);
				qw_server_pipeline_broke(sv, why);
				return;
			}
		}
	}
}

static void count_tokens(qw_server *sv, int prompt, int generated)
{
	int64_t sec = (int64_t)qw_seconds_now();
	if (sec != sv->window_second) {
		for (int64_t s = sv->window_second + 1; s <= sec && s <= sv->window_second +
						      QW_THROUGHPUT_WINDOW; s++) {
			sv->window_prompt[s % QW_THROUGHPUT_WINDOW] = 0;
			sv->window_gen[s % QW_THROUGHPUT_WINDOW] = 0;
		}
		if (sec - sv->window_second > QW_THROUGHPUT_WINDOW)
			memset(sv->window_prompt, 0, sizeof sv->window_prompt),
			memset(sv->window_gen, 0, sizeof sv->window_gen);
		sv->window_second = sec;
	}
	sv->window_prompt[sec % QW_THROUGHPUT_WINDOW] += (uint64_t)prompt;
	sv->window_gen[sec % QW_THROUGHPUT_WINDOW] += (uint64_t)generated;
	sv->prompt_tokens += (uint64_t)prompt;
	sv->generated_tokens += (uint64_t)generated;
}

static void read_results(qw_server *sv)
{
	qw_ring *ring = qw_region_result_ring(&sv->sup.region);
	while (sv->sup.running && qw_ring_readable(ring)) {
		size_t len;
		qw_err err = {0};
		qw_step_result r;
		int prompt = 0;
		if (qw_ring_recv(ring, &sv->result_buf, &sv->result_buf_cap, &len, 0, &err) != QW_OK ||
		    qw_step_result_read(sv->result_buf, len, &r, &err) != QW_OK ||
		    qw_sched_complete(&sv->sched, &r, qw_server_on_token, sv, &prompt, &err) != QW_OK) {
			qw_server_pipeline_broke(sv, err.msg);
			return;
		}
		count_tokens(sv, prompt, r.n_logits);
	}
}

static void on_notify(qw_server *sv)
{
	qw_supervisor_clear_notify(&sv->sup);
	if (!sv->sup.running)
		return;
	qw_pipe_failure f;
	qw_pipe_state ps = qw_supervisor_poll(&sv->sup, &f);
	if (ps == QW_PIPE_FAILED) {
		qw_server_pipeline_failed(sv, &f);
		return;
	}
	bool loading = sv->state == QW_SERVER_LOADING || sv->state == QW_SERVER_RESTARTING ||
		       (sv->state == QW_SERVER_DRAINING && !sv->have_sched);
	if (ps == QW_PIPE_READY && loading)
		pipeline_ready(sv);
	else if (ps == QW_PIPE_READY && sv->have_sched)
		read_results(sv);
}

// ---------------------------------------------------------------------------------------
// signals, the tick, draining

static qw_status setup_signals(qw_server *sv, qw_err *err)
{
	signal(SIGPIPE, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0 ||
	    (sv->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
		return qw_fail(err, QW_E_IO, "signalfd: %s", strerror(errno));
	return QW_OK;
}

/* SIGHUP: the config file again; only settings marked runtime change. */
static void reload(qw_server *sv)
{
	if (!sv->config_path[0]) {
		qw_log(QW_LOG_INFO, "SIGHUP: no config file to reload");
		return;
	}
	qw_settings fresh = sv->set;
	qw_err err = {0};
	if (qw_settings_load(&fresh, sv->config_path, &err) != QW_OK) {
		qw_log(QW_LOG_ERROR, "SIGHUP: %s; nothing changed", err.msg);
		return;
	}
	int n;
	const qw_setting_def *t = qw_settings_table(&n);
	for (int i = 0; i < n; i++) {
		const char *a = (const char *)&sv->set + t[i].offset;
		const char *b = (const char *)&fresh + t[i].offset;
		size_t size = t[i].type == QW_SET_STR || t[i].type == QW_SET_ENUM ? t[i].size : 8;
		if (memcmp(a, b, size) == 0)
			continue;
		if (!t[i].runtime) {
			qw_log(QW_LOG_WARN, "SIGHUP: %s changes only with a restart", t[i].name);
			continue;
		}
		char was[1100], now[1100];
		qw_settings_text(&sv->set, &t[i], was, sizeof was);
		memcpy((char *)&sv->set + t[i].offset, b, size);
		qw_log(QW_LOG_INFO, "SIGHUP: %s %s, was %s", t[i].name,
		       qw_settings_text(&sv->set, &t[i], now, sizeof now), was);
	}
	qw_log_level level;
	if (qw_log_level_parse(sv->set.log_level, &level, NULL) == QW_OK)
		qw_log_set_level(level);
	qw_req_ctx *rc = &sv->rc;
	rc->default_max_tokens = (int)sv->set.max_new_tokens;
	rc->temperature = sv->set.temperature;
	rc->top_p = sv->set.top_p;
	rc->top_k = (int)sv->set.top_k;
	rc->image_limits.max_bytes = (size_t)sv->set.max_image_bytes;
	rc->image_limits.max_pixels = sv->set.max_image_pixels;
	rc->preprocess.max_tokens = rc->max_image_tokens = (int)sv->set.max_image_tokens;
	rc->max_images = sv->limits.max_images = (int)sv->set.max_images;
	sv->limits.max_image_bytes = (size_t)sv->set.max_image_bytes;
	if (largest_image(sv) > sv->sup.job.max_image_tokens)
		qw_log(QW_LOG_WARN, "SIGHUP: stage 0 reserved its vision tower's memory at start for "
		       "images of up to %d tokens: larger ones are refused until qwend restarts",
		       sv->sup.job.max_image_tokens);
	if (sv->have_sched) {
		sv->sched.o.max_queue = (int)sv->set.max_queue;
		qw_sched_set_prefix_cache(&sv->sched, !strcmp(sv->set.prefix_cache, "yes"));
	}
}

void qw_server_begin_drain(qw_server *sv, const char *why)
{
	if (sv->state == QW_SERVER_DRAINING) {
		qw_log(QW_LOG_INFO, "%s again: stopping now", why);
		sv->drain_deadline = 0;
		return;
	}
	qw_log(QW_LOG_INFO, "%s: finishing %d request%s (at most %.0f s), then exiting", why,
	       sv->n_live, sv->n_live == 1 ? "" : "s", sv->set.drain_timeout);
	sv->state = QW_SERVER_DRAINING;
	sv->drain_deadline = qw_seconds_now() + sv->set.drain_timeout;
	sd_notify(0, "STOPPING=1");
}

static void on_signal(qw_server *sv)
{
	struct signalfd_siginfo si;
	while (read(sv->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
			qw_server_begin_drain(sv, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
		} else if (si.ssi_signo == SIGHUP) {
			reload(sv);
		} else if (si.ssi_signo == SIGCHLD) {
			qw_pipe_failure f;
			if (qw_supervisor_reap(&sv->sup, &f))
				qw_server_pipeline_failed(sv, &f);
		}
	}
}

/* Heartbeats, loading progress, the watchdog, and the end of a drain. */
static void tick(qw_server *sv, double *next_status)
{
	double now = qw_seconds_now();
	if (sv->sup.running) {
		uint64_t ms = qw_now_ms();
		for (int i = 0; i < sv->n_stages; i++) {
			uint64_t hb = atomic_load(&sv->sup.region.hdr->worker[i].heartbeat_ms);
			if (hb && ms > hb && (double)(ms - hb) > sv->set.worker_timeout * 1000.0) {
				qw_pipe_failure f = {.stages = 1ull << i};
				snprintf(f.why, sizeof f.why, "worker %d (pid %d) has shown no sign of "
					 "life for %.0f s", i, (int)sv->sup.pid[i],
					 (double)(ms - hb) / 1000.0);
				qw_server_pipeline_failed(sv, &f);
				return;
			}
		}
	}
	if (now >= *next_status) {
		*next_status = now + 2.0;
		char why[192];
		if ((sv->state == QW_SERVER_LOADING || sv->state == QW_SERVER_RESTARTING) &&
		    qw_server_not_ready(sv, why, sizeof why)) {
			sd_notifyf(0, "STATUS=%s\nEXTEND_TIMEOUT_USEC=%llu", why, 60000000ull);
			/* a long load is logged as it passes each tenth of the bytes, a line
			 * every LOAD_LOG_S at most (a load shorter than that says nothing) */
			qw_server_load l;
			qw_server_load_progress(sv, &l);
			int tenth = l.total ? (int)(10 * l.done / l.total) : 0;
			if (tenth > sv->load_logged_tenth && now - sv->t_load_logged >= LOAD_LOG_S) {
				sv->t_load_logged = now;
				sv->load_logged_tenth = tenth;
				qw_log(QW_LOG_INFO, "%s", why);
			}
		}
		uint64_t usec;
		if (sd_watchdog_enabled(0, &usec) > 0)
			sd_notify(0, "WATCHDOG=1");
	}
	if (sv->state == QW_SERVER_DRAINING && (sv->n_live == 0 || now >= sv->drain_deadline)) {
		qw_server_fail_all(sv, "not_ready", "qwend is shutting down; the request did not finish in time");
		sv->stopping = true;
	}
}

/* After the loop: stop plans, then wait for the workers (or kill them). */
static void stop_workers(qw_server *sv)
{
	if (!sv->sup.running)
		return;
	bool stopped = false;
	qw_pipe_failure f;   /* a partial restart under way is not carried on: all are ended */
	if (sv->have_sched && !sv->sup.rejoin && qw_supervisor_poll(&sv->sup, &f) == QW_PIPE_READY) {
		qw_step_plan p;
		qw_sched_stop_plan(&sv->sched, &p);
		size_t len = qw_step_plan_size(&p);
		char buf[256] __attribute__((aligned(8)));
		qw_step_plan_write(&p, buf);
		const void *parts[] = {buf};
		bool sent = true;
		for (int i = 0; i < sv->n_stages; i++)
			sent &= qw_ring_send(qw_region_plan_ring(&sv->sup.region, i), parts, &len, 1,
					     1000, NULL) == QW_OK;
		stopped = sent && qw_supervisor_wait(&sv->sup, 10000);
	}
	if (!stopped)
		qw_log(QW_LOG_WARN, "workers did not stop in time: killing them");
	qw_supervisor_kill(&sv->sup);
}

const char *qw_server_not_ready(const qw_server *sv, char *buf, size_t cap)
{
	if (sv->state == QW_SERVER_READY)
		return NULL;
	if (sv->state == QW_SERVER_DRAINING) {
		snprintf(buf, cap, "qwend is shutting down");
		return buf;
	}
	qw_server_load l;
	char progress[128];
	qw_server_load_progress(sv, &l);
	snprintf(buf, cap, "%s: the weights %s",
		 sv->state == QW_SERVER_RESTARTING ? "restarting after a failure" : "loading",
		 qw_server_load_text(&l, progress, sizeof progress));
	return buf;
}

// ---------------------------------------------------------------------------------------

static void release(qw_server *sv)
{
	qw_server_fail_all(sv, "not_ready", "qwend is exiting");
	qw_server_images_stop(sv);
	qw_supervisor_free(&sv->sup);
	if (sv->have_sched)
		qw_sched_free(&sv->sched);
	qw_server_close_socket(sv);
	if (sv->tok)
		qw_tokenizer_free(sv->tok);
	if (sv->sigfd > 0)
		close(sv->sigfd);
	free(sv->plan_buf);
	free(sv->result_buf);
}

int qw_server_run(const qw_settings *s, const char *config_path)
{
	qw_server *sv = calloc(1, sizeof *sv);
	if (!sv) {
		qw_log(QW_LOG_ERROR, "out of memory");
		return 1;
	}
	sv->set = *s;
	snprintf(sv->config_path, sizeof sv->config_path, "%s", config_path ? config_path : "");
	sv->t_start = qw_seconds_now();
	sv->lock_fd = sv->sigfd = -1;
	sv->sup.notify_fd = -1;
	sv->next_id = 1;
	sv->state = QW_SERVER_LOADING;
	qw_err err = {0};
	/* the socket first: a client that comes while the model is read waits for its answer
	 * (loading) instead of finding no qwend */
	qw_status st = qw_server_open_socket(sv, &err);
	if (st == QW_OK)
		st = open_model(sv, &err);
	if (st == QW_OK)
		st = setup_signals(sv, &err);
	if (st == QW_OK)   /* after the signal mask: its threads inherit it */
		st = qw_server_images_start(sv, &err);
	if (st == QW_OK)
		st = start_pipeline(sv, &err);
	if (st != QW_OK) {
		qw_log(QW_LOG_ERROR, "%s", err.msg);
		release(sv);
		free(sv);
		return 1;
	}
	sd_notifyf(0, "STATUS=loading %s", sv->model_dir);
	double next_status = 0;
	while (!sv->stopping) {
		zmq_pollitem_t items[] = {{sv->router, 0, ZMQ_POLLIN, 0},
					  {sv->monitor, 0, ZMQ_POLLIN, 0},
					  {NULL, sv->sigfd, ZMQ_POLLIN, 0},
					  {NULL, sv->sup.notify_fd, ZMQ_POLLIN, 0},
					  {NULL, qw_work_pool_fd(&sv->images), ZMQ_POLLIN, 0}};
		if (zmq_poll(items, 5, TICK_MS) < 0 && errno != EINTR) {
			qw_log(QW_LOG_ERROR, "zmq_poll: %s", zmq_strerror(errno));
			sv->exit_status = 1;
			break;
		}
		if (items[2].revents)
			on_signal(sv);
		if (items[1].revents)   /* disconnects first: see server_clients.c */
			qw_server_on_monitor(sv);
		if (items[0].revents)
			qw_server_on_router(sv);
		if (items[3].revents)
			on_notify(sv);
		if (items[4].revents)
			qw_server_on_images(sv);
		qw_server_post_steps(sv);
		qw_server_flush(sv);
		tick(sv, &next_status);
	}
	stop_workers(sv);
	int rc = sv->exit_status;
	qw_log(QW_LOG_INFO, "exiting (%d)", rc);
	release(sv);
	free(sv);
	return rc;
}
