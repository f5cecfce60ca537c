/* metrics.c - Prometheus metrics in the text exposition format.  See metrics.h and
 * docs/http.md (the list of metrics). */
#include "http/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/buf.h"

/* vLLM's buckets, with finer ones below 10 ms for inter-token latency on GPUs */
static const double TTFT_BOUNDS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
				     0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
				     160.0, 640.0, 2560.0};
static const double ITL_BOUNDS[] = {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
				    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
				    10.0, 20.0, 40.0, 80.0};
static const double E2E_BOUNDS[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
				    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
				    7680.0};
#define COUNT(a) ((int)(sizeof a / sizeof *a))

void qh_metrics_init(qh_metrics *m)
{
	memset(m, 0, sizeof *m);
	m->ttft = (qh_histogram){.bounds = TTFT_BOUNDS, .n_bounds = COUNT(TTFT_BOUNDS)};
	m->itl = (qh_histogram){.bounds = ITL_BOUNDS, .n_bounds = COUNT(ITL_BOUNDS)};
	m->e2e = (qh_histogram){.bounds = E2E_BOUNDS, .n_bounds = COUNT(E2E_BOUNDS)};
}

void qh_metrics_request(qh_metrics *m, const char *endpoint, int status, const char *code)
{
	code = code ? code : "";
	for (int i = 0; i < m->n_requests; i++) {
		qh_request_series *s = &m->requests[i];
		if (s->status == status && !strcmp(s->endpoint, endpoint) && !strcmp(s->code, code)) {
			s->n++;
			return;
		}
	}
	/* the series are few (routes x statuses x codes); should the table fill, its last
	 * entry counts the rest as endpoint "other" */
	qh_request_series *s;
	if (m->n_requests < QH_METRIC_SERIES - 1) {
		s = &m->requests[m->n_requests++];
	} else {
		s = &m->requests[QH_METRIC_SERIES - 1];
		endpoint = "other";
		status = 0;
		code = "";
		if (m->n_requests == QH_METRIC_SERIES)
			goto count;
		m->n_requests++;
	}
	snprintf(s->endpoint, sizeof s->endpoint, "%s", endpoint);
	s->status = status;
	snprintf(s->code, sizeof s->code, "%s", code);
count:
	s->n++;
}

void qh_histogram_observe(qh_histogram *h, double v)
{
	int b = 0;
	while (b < h->n_bounds && v > h->bounds[b])
		b++;
	h->counts[b]++;
	h->sum += v;
	h->count++;
}

// ---------------------------------------------------------------------------------------
// the exposition

static void head(qh_buf *o, const char *name, const char *type, const char *help)
{
	qh_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newlines escaped. */
static void label(qh_buf *o, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			qh_buf_printf(o, "\\%c", *v);
		else if (*v == '\n')
			qh_buf_str(o, "\\n");
		else
			qh_buf_add(o, v, 1);
	}
}

static void model_sample(qh_buf *o, const char *name, const char *model, double v)
{
	qh_buf_printf(o, "%s{model_name=\"", name);
	label(o, model);
	qh_buf_printf(o, "\"} %.17g\n", v);
}

static void gauge(qh_buf *o, const char *name, const char *help, const char *model, double v)
{
	head(o, name, "gauge", help);
	model_sample(o, name, model, v);
}

static void counter(qh_buf *o, const char *name, const char *help, const char *model, double v)
{
	head(o, name, "counter", help);
	model_sample(o, name, model, v);
}

static void histogram(qh_buf *o, const char *name, const char *help, const char *model,
		      const qh_histogram *h)
{
	head(o, name, "histogram", help);
	uint64_t cum = 0;
	for (int b = 0; b <= h->n_bounds; b++) {
		cum += h->counts[b];
		qh_buf_printf(o, "%s_bucket{model_name=\"", name);
		label(o, model);
		if (b < h->n_bounds)
			qh_buf_printf(o, "\",le=\"%g\"} %llu\n", h->bounds[b], (unsigned long long)cum);
		else
			qh_buf_printf(o, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
	}
	qh_buf_printf(o, "%s_sum{model_name=\"", name);
	label(o, model);
	qh_buf_printf(o, "\"} %.17g\n%s_count{model_name=\"", h->sum, name);
	label(o, model);
	qh_buf_printf(o, "\"} %llu\n", (unsigned long long)h->count);
}

static double num(const json_t *o, const char *section, const char *key)
{
	json_t *s = section ? json_object_get(o, section) : (json_t *)o;
	return json_number_value(json_object_get(s, key));
}

/* What qwend's status says. */
static void daemon_metrics(qh_buf *o, const json_t *st, const char *model)
{
	static const char *const states[] = {"loading", "ready", "restarting", "draining"};
	const char *state = json_string_value(json_object_get(st, "state"));
	head(o, "qwen:daemon_state", "gauge", "1 for qwend's state (loading, ready, restarting, "
	     "draining), 0 for the others");
	for (int i = 0; i < 4; i++) {
		qh_buf_str(o, "qwen:daemon_state{model_name=\"");
		label(o, model);
		qh_buf_printf(o, "\",state=\"%s\"} %d\n", states[i],
			      state && !strcmp(state, states[i]));
	}
	gauge(o, "qwen:num_requests_running", "Requests qwend is generating for.", model,
	      num(st, "requests", "running"));
	gauge(o, "qwen:num_requests_waiting", "Requests queued in qwend.", model,
	      num(st, "requests", "queued"));
	double used = num(st, "kv", "blocks_used"), total = num(st, "kv", "blocks_total");
	gauge(o, "qwen:kv_cache_blocks_used", "KV cache blocks in use.", model, used);
	gauge(o, "qwen:kv_cache_blocks_total", "KV cache blocks in all.", model, total);
	gauge(o, "qwen:kv_cache_usage_perc", "KV cache usage, 1 is full.", model,
	      total > 0 ? used / total : 0);
	gauge(o, "qwen:kv_cache_blocks_cached", "KV cache blocks no request holds, kept for the "
	      "prefix cache.", model, num(st, "kv", "blocks_cached"));
	counter(o, "qwen:prefix_cache_queries_total", "Tokens of the prompts admitted while the "
		"prefix cache was on.", model, num(st, "prefix_cache", "prompt_tokens"));
	counter(o, "qwen:prefix_cache_hits_total", "Of them, tokens served from the prefix cache "
		"instead of computed.", model, num(st, "prefix_cache", "hit_tokens"));
	counter(o, "qwen:prefix_cache_images_skipped_total", "Images served whole from the "
		"prefix cache (no vision tower).", model, num(st, "prefix_cache", "images_skipped"));
	counter(o, "qwen:prefix_cache_evictions_total", "Cached KV blocks evicted for new ones.",
		model, num(st, "prefix_cache", "evictions"));
	counter(o, "qwen:vision_cache_hits_total", "Images sent to the vision tower's stage whose "
		"outputs it kept from an earlier request (no vision tower).", model,
		num(st, "vision_cache", "hits"));
	counter(o, "qwen:vision_cache_misses_total", "Images the vision tower ran on while the "
		"vision cache was on.", model, num(st, "vision_cache", "misses"));
	counter(o, "qwen:vision_cache_evictions_total", "Images evicted from the vision cache for "
		"new ones.", model, num(st, "vision_cache", "evictions"));
	counter(o, "qwen:num_preemptions_total", "Sequences preempted when the KV cache ran out.",
		model, num(st, "requests", "preempted"));
	counter(o, "qwen:restarts_total", "Pipeline restarts after a worker failed.", model,
		num(st, NULL, "restarts"));
	counter(o, "qwen:prompt_tokens_total", "Prompt tokens qwend prefilled.", model,
		num(st, "throughput", "prompt_tokens_total"));
	counter(o, "qwen:generation_tokens_total", "Tokens qwend generated.", model,
		num(st, "throughput", "generated_tokens_total"));
	head(o, "qwen:daemon_requests_total", "counter", "Requests qwend ended, by outcome (all "
	     "its clients).");
	static const char *const outcomes[] = {"served", "failed", "cancelled"};
	for (int i = 0; i < 3; i++) {
		qh_buf_str(o, "qwen:daemon_requests_total{model_name=\"");
		label(o, model);
		qh_buf_printf(o, "\",outcome=\"%s\"} %.17g\n", outcomes[i],
			      num(st, "requests", outcomes[i]));
	}
	json_t *stages = json_object_get(st, "stages");
	static const char *const per_stage[][3] = {
		{"qwen:stage_weight_bytes", "Weight bytes a pipeline stage holds.", "weight_bytes"},
		{"qwen:stage_kv_cache_bytes", "KV cache bytes a pipeline stage holds.", "kv_bytes"},
		{"qwen:stage_step_bytes", "Bytes a pipeline stage reserved at load for steps "
		 "(activations, scratch, its vision tower, step graphs).", "step_bytes"}};
	for (int k = 0; k < 3; k++) {
		head(o, per_stage[k][0], "gauge", per_stage[k][1]);
		for (size_t i = 0; i < json_array_size(stages); i++) {
			qh_buf_printf(o, "%s{model_name=\"", per_stage[k][0]);
			label(o, model);
			qh_buf_printf(o, "\",stage=\"%zu\"} %.17g\n", i,
				      num(json_array_get(stages, i), NULL, per_stage[k][2]));
		}
	}
	double done = num(st, "load", "bytes_done"), all = num(st, "load", "bytes_total");
	gauge(o, "qwen:weight_bytes_loaded", "Weight bytes loaded so far.", model, done);
	gauge(o, "qwen:weight_bytes", "Weight bytes of the model, all stages.", model, all);
	gauge(o, "qwen:load_progress_ratio", "Weights loaded, 1 when all are.", model,
	      all > 0 ? done / all : 0);
}

char *qh_metrics_render(const qh_metrics *m, const qh_gauges *g, const json_t *status,
			const char *model)
{
	qh_buf o = {0};
	model = model ? model : "";
	head(&o, "qwen:http_requests_total", "counter", "HTTP requests answered, by endpoint, "
	     "status and error code.");
	for (int i = 0; i < m->n_requests; i++) {
		const qh_request_series *s = &m->requests[i];
		qh_buf_str(&o, "qwen:http_requests_total{endpoint=\"");
		label(&o, s->endpoint);
		qh_buf_printf(&o, "\",status=\"%d\",code=\"", s->status);
		label(&o, s->code);
		qh_buf_printf(&o, "\"} %llu\n", (unsigned long long)s->n);
	}
	static const char *const reasons[] = {"stop", "length", "tool_calls", "abort", "error"};
	head(&o, "qwen:request_success_total", "counter", "Choices that ended, by finish reason "
	     "(abort: the client went away; error: qwend failed it).");
	for (int i = 0; i < QH_N_FINISH; i++) {
		qh_buf_str(&o, "qwen:request_success_total{model_name=\"");
		label(&o, model);
		qh_buf_printf(&o, "\",finished_reason=\"%s\"} %llu\n", reasons[i],
			      (unsigned long long)m->finished[i]);
	}
	counter(&o, "qwen:http_prompt_tokens_total", "Prompt tokens of requests served over HTTP.",
		model, (double)m->prompt_tokens);
	counter(&o, "qwen:http_generation_tokens_total", "Tokens generated for requests served "
		"over HTTP.", model, (double)m->generation_tokens);
	histogram(&o, "qwen:time_to_first_token_seconds", "From the HTTP request to its first "
		  "token.", model, &m->ttft);
	histogram(&o, "qwen:inter_token_latency_seconds", "Between a choice's tokens as they "
		  "reach the front end.", model, &m->itl);
	histogram(&o, "qwen:e2e_request_latency_seconds", "From the HTTP request to its last "
		  "token.", model, &m->e2e);
	gauge(&o, "qwen:http_connections", "HTTP connections open.", model, g->connections);
	gauge(&o, "qwen:http_requests_in_flight", "HTTP requests being served.", model,
	      g->in_flight);
	gauge(&o, "qwen:daemon_up", "1 when qwend answered the status request of this scrape.",
	      model, g->qwend_up && status);
	if (status)
		daemon_metrics(&o, status, model);
	if (o.oom) {
		qh_buf_free(&o);
		return NULL;
	}
	return o.p;
}
