/* server_status.c - qwend's status report, as JSON.  See server.h and docs/protocol.md. */
#include "daemon/server.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/clock.h"
#include "loader/units.h"

static const char *state_name(qw_server_state s)
{
	static const char *const names[] = {"loading", "ready", "restarting", "draining"};
	return names[s];
}

void qw_server_load_progress(const qw_server *sv, qw_server_load *out)
{
	*out = (qw_server_load){.eta_s = -1};
	for (int i = 0; i < sv->n_stages; i++) {
		uint64_t plan = sv->plan[i].weight_bytes, done = 0;
		out->total += plan;
		if (sv->sup.running) {
			qw_worker_slot *w = &sv->sup.region.hdr->worker[i];
			qw_worker_state st = atomic_load(&w->state);
			done = st == QW_WORKER_LOADED || st == QW_WORKER_READY ||
			       st == QW_WORKER_REJOINING ? plan : atomic_load(&w->load_done);
		}
		out->done += done < plan ? done : plan;
	}
	out->elapsed_s = sv->t_load > 0 ? qw_seconds_now() - sv->t_load : 0;
	if (out->done >= out->total)
		out->eta_s = 0;
	else if (out->done > 0)
		out->eta_s = out->elapsed_s * (double)(out->total - out->done) / (double)out->done;
}

const char *qw_server_load_text(const qw_server_load *l, char *buf, size_t cap)
{
	char done[32], total[32];
	int n = snprintf(buf, cap, "%.0f%% (%s of %s)",
			 l->total ? 100.0 * (double)l->done / (double)l->total : 0.0,
			 qw_fmt_bytes(l->done, done, sizeof done),
			 qw_fmt_bytes(l->total, total, sizeof total));
	if (l->eta_s > 0 && n > 0 && (size_t)n < cap)
		snprintf(buf + n, cap - (size_t)n, ", about %.0f s left", l->eta_s + 0.5);
	return buf;
}

static json_t *stages_json(const qw_server *sv)
{
	json_t *stages = json_array();
	for (int i = 0; i < sv->n_stages; i++) {
		json_t *st = json_pack("{s:i, s:[i, i]}", "index", i, "layers",
				       sv->plan[i].stage.layer_begin, sv->plan[i].stage.layer_end);
		if (sv->sup.running) {
			const qw_worker_slot *w = &sv->sup.region.hdr->worker[i];
			uint64_t d = atomic_load(&((qw_worker_slot *)w)->load_done);
			qw_worker_state state = atomic_load(&((qw_worker_slot *)w)->state);
			json_object_set_new(st, "pid", json_integer(sv->sup.pid[i]));
			json_object_set_new(st, "state", json_string(qw_worker_state_name(state)));
			json_object_set_new(st, "device", json_string(w->device));
			json_object_set_new(st, "weight_bytes",
					    json_integer((json_int_t)(w->weight_bytes ? w->weight_bytes
								      : sv->plan[i].weight_bytes)));
			json_object_set_new(st, "kv_bytes", json_integer((json_int_t)w->kv_bytes));
			json_object_set_new(st, "step_bytes", json_integer((json_int_t)w->step_bytes));
			json_object_set_new(st, "step_host_bytes",
					    json_integer((json_int_t)w->step_host_bytes));
			uint64_t free_b = atomic_load(&((qw_worker_slot *)w)->device_free);
			if (free_b)
				json_object_set_new(st, "device_free_bytes",
						    json_integer((json_int_t)free_b));
			json_object_set_new(st, "load_done", json_integer((json_int_t)d));
			/* a partial restart starts only the failed stages again: the others' loads
			 * stay as they were */
			json_object_set_new(st, "loads", json_integer(sv->sup.loads[i]));
			json_object_set_new(st, "load_s", json_real((double)w->load_ms / 1000.0));
			json_object_set_new(st, "steps", json_integer((json_int_t)atomic_load(
					    &((qw_worker_slot *)w)->steps)));
			json_object_set_new(st, "busy_s", json_real((double)atomic_load(
					    &((qw_worker_slot *)w)->busy_us) / 1e6));
			if (i == 0 && sv->cfg.has_vision)   /* this worker's, since it started */
				json_object_set_new(st, "vision_runs", json_integer((json_int_t)
						    atomic_load(&((qw_worker_slot *)w)->vision_runs)));
		} else {
			json_object_set_new(st, "state", json_string("down"));
		}
		json_array_append_new(stages, st);
	}
	return stages;
}

/* What the prefix cache saved: hit_rate is the share of admitted tokens served from it. */
static json_t *prefix_json(const qw_server *sv)
{
	qw_prefix_stats p = {0};
	json_int_t cached = 0, evictions = 0;
	if (sv->have_sched) {
		p = sv->sched.prefix;
		cached = sv->sched.pool.n_cached;
		evictions = (json_int_t)sv->sched.pool.evictions;
	}
	bool on = sv->have_sched ? sv->sched.pool.caching : !strcmp(sv->set.prefix_cache, "yes");
	return json_pack("{s:b, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I}", "enabled", on,
			 "lookups", (json_int_t)p.lookups, "hits", (json_int_t)p.hits,
			 "prompt_tokens", (json_int_t)p.lookup_tokens, "hit_tokens",
			 (json_int_t)p.hit_tokens, "hit_rate", p.lookup_tokens
			 ? (double)p.hit_tokens / (double)p.lookup_tokens : 0.0,
			 "images_skipped", (json_int_t)p.images_skipped, "cached_blocks", cached,
			 "evictions", evictions);
}

/* What the vision cache saved: images sent to stage 0 whose tower outputs it kept (hits)
 * or not (misses). */
static json_t *vision_cache_json(const qw_server *sv)
{
	qw_vision_cache c = {0};
	if (sv->have_sched)
		c = sv->sched.vcache;
	return json_pack("{s:b, s:i, s:i, s:i, s:I, s:I, s:I}", "enabled", c.cap_tokens > 0,
			 "capacity_tokens", c.cap_tokens, "tokens", c.held_tokens, "images", c.n,
			 "hits", (json_int_t)c.stats.hits, "misses", (json_int_t)c.stats.misses,
			 "evictions", (json_int_t)c.stats.evictions);
}

char *qw_server_status_json(const qw_server *sv)
{
	const qw_config *c = &sv->cfg;
	json_t *o = json_object();
	json_object_set_new(o, "state", json_string(state_name(sv->state)));
	json_object_set_new(o, "uptime_s", json_real(qw_seconds_now() - sv->t_start));
	json_object_set_new(o, "endpoint", json_string(sv->endpoint));
	json_object_set_new(o, "model", json_pack(
		"{s:s, s:b, s:s, s:i, s:I, s:I, s:i, s:b, s:b, s:i, s:b}", "path", sv->model_dir,
		"demo", sv->demo,
		"type", c->model_type, "layers", c->text.num_layers,
		"params", (json_int_t)sv->params_total, "active_params",
		(json_int_t)sv->params_active, "vocab", c->text.vocab_size, "tokenizer",
		sv->tok != NULL, "thinking", sv->rc.thinking, "max_context", sv->rc.max_context,
		"vision", c->has_vision));
	if (c->quant.kind == QW_QUANT_FP8)   /* weight_bytes count its FP8 weights a byte a value */
		json_object_set_new(json_object_get(o, "model"), "quantization", json_pack(
			"{s:s, s:[i, i]}", "method", "fp8", "block", c->quant.block[0],
			c->quant.block[1]));
	json_object_set_new(o, "device", json_string(sv->device));
	json_object_set_new(o, "stages", stages_json(sv));
	qw_server_load l;
	qw_server_load_progress(sv, &l);
	json_t *load = json_pack("{s:I, s:I, s:f}", "bytes_done", (json_int_t)l.done, "bytes_total",
				 (json_int_t)l.total, "elapsed_s", l.elapsed_s);
	if (l.eta_s >= 0)
		json_object_set_new(load, "eta_s", json_real(l.eta_s));
	json_object_set_new(o, "load", load);
	int queued = 0, running = 0, inflight = 0;
	json_int_t blocks = 0, used = 0, cached = 0, used_tokens = 0;
	if (sv->have_sched) {
		const qw_sched *s = &sv->sched;
		queued = s->queue.n;
		running = s->running.n;
		inflight = qw_sched_inflight(s);
		blocks = s->pool.n_blocks;
		used = qw_kv_used(&s->pool);
		cached = s->pool.n_cached;
		double held = 0;   /* a block shared by k sequences counts 1/k for each */
		for (const qw_seq *q = s->running.head; q; q = q->next)
			for (int j = 0; j < q->kv.n_blocks; j++) {
				int in_block = q->kv.n_tokens - j * s->pool.block_size;
				if (in_block > s->pool.block_size)
					in_block = s->pool.block_size;
				held += (double)in_block / s->pool.ref[q->kv.blocks[j]];
			}
		used_tokens = (json_int_t)(held + 0.5);
	}
	json_int_t bt = (json_int_t)sv->set.kv_block_tokens;
	json_object_set_new(o, "kv", json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
					       "blocks_total", blocks, "blocks_used", used,
					       "blocks_cached", cached, "blocks_free",
					       blocks - used - cached, "block_tokens", bt,
					       "capacity_tokens", blocks * bt, "used_tokens",
					       used_tokens));
	json_object_set_new(o, "prefix_cache", prefix_json(sv));
	json_object_set_new(o, "vision_cache", vision_cache_json(sv));
	json_object_set_new(o, "requests", json_pack(
		"{s:i, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:i}", "preparing",
		qw_server_preparing(sv), "images_decoding", sv->images_out, "queued", queued, "running", running, "steps_in_flight",
		inflight, "max_queue", (json_int_t)sv->set.max_queue,
		"max_seqs", (json_int_t)sv->set.max_seqs, "served", (json_int_t)sv->served,
		"failed", (json_int_t)sv->failed, "cancelled", (json_int_t)sv->cancelled,
		"preempted", (json_int_t)(sv->have_sched ? sv->sched.preempted : 0),
		"pipeline_depth", sv->depth));
	/* refusals apart from failures: a refused request never ran */
	json_t *refused = json_object();
	for (int code = 0; code < QW_CODE_COUNT_; code++)
		json_object_set_new(refused, qw_error_code_name(code),
				    json_integer((json_int_t)sv->refused[code]));
	json_object_set_new(json_object_get(o, "requests"), "refused", refused);
	/* the window's buckets, the current (partial) second left out */
	uint64_t p = 0, g = 0;
	int64_t now = (int64_t)qw_seconds_now();
	for (int i = 1; i < QW_THROUGHPUT_WINDOW; i++) {
		int64_t s = now - i;
		if (s > sv->window_second - QW_THROUGHPUT_WINDOW && s <= sv->window_second) {
			p += sv->window_prompt[s % QW_THROUGHPUT_WINDOW];
			g += sv->window_gen[s % QW_THROUGHPUT_WINDOW];
		}
	}
	double w = QW_THROUGHPUT_WINDOW - 1;
	json_object_set_new(o, "throughput", json_pack(
		"{s:f, s:f, s:f, s:I, s:I}", "window_s", w, "prompt_tokens_per_s", (double)p / w,
		"generated_tokens_per_s", (double)g / w, "prompt_tokens_total",
		(json_int_t)sv->prompt_tokens, "generated_tokens_total",
		(json_int_t)sv->generated_tokens));
	json_object_set_new(o, "restarts", json_integer(sv->n_restarts));
	json_object_set_new(o, "partial_restarts", json_integer(sv->n_partial_restarts));
	json_object_set_new(o, "generation", json_integer(sv->sup.generation));
	if (sv->last_recovery_s > 0)
		json_object_set_new(o, "last_recovery_s", json_real(sv->last_recovery_s));
	if (sv->last_failure[0])
		json_object_set_new(o, "last_failure", json_string(sv->last_failure));
	/* the settings as values, and as a config file writes them (64M, not 67108864) */
	for (int as_text = 0; as_text < 2; as_text++) {
		char *settings = qw_settings_json(&sv->set, as_text);
		json_t *sj = settings ? json_loads(settings, 0, NULL) : NULL;
		free(settings);
		json_object_set_new(o, as_text ? "settings_text" : "settings", sj ? sj : json_object());
	}
	char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return text;
}
