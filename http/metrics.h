/* metrics.h - the front end's Prometheus metrics and the text exposition of all of them.
 *
 * Owns: qh_metrics, the counters and histograms the front end keeps itself (HTTP requests
 * by endpoint, status and error code; finished choices by reason; time to first token,
 * inter-token latency and end-to-end latency), and qh_metrics_render, which writes them with
 * the gauges and counters taken from qwend's status (qwend's own counters stay the source:
 * running and queued requests, KV blocks, preemptions, restarts, tokens, per-stage bytes,
 * load progress) in the text format Prometheus scrapes (version 0.0.4).
 *
 * Names follow Prometheus' conventions (base units, _total on counters, _seconds, _bytes)
 * under the prefix "qwen:", and reuse vLLM's name where vLLM has the same metric (vLLM
 * writes "vllm:num_requests_running", this server "qwen:num_requests_running"), so a vLLM
 * dashboard needs only its prefix changed.
 */
#ifndef QW_HTTP_METRICS_H
#define QW_HTTP_METRICS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define QH_METRIC_SERIES 96     /* (endpoint, status, code) series kept */
#define QH_MAX_BUCKETS 24

typedef struct qh_histogram {
	const double *bounds;                /* (n_bounds,) upper bounds, rising */
	int n_bounds;
	uint64_t counts[QH_MAX_BUCKETS + 1]; /* per bucket, not cumulative; the last is +Inf */
	double sum;
	uint64_t count;
} qh_histogram;

typedef struct qh_request_series {
	char endpoint[32];
	int status;
	char code[32];
	uint64_t n;
} qh_request_series;

typedef enum qh_finish {
	QH_FINISH_STOP, QH_FINISH_LENGTH, QH_FINISH_TOOL_CALLS, QH_FINISH_ABORT, QH_FINISH_ERROR,
	QH_N_FINISH
} qh_finish;

typedef struct qh_metrics {
	qh_request_series requests[QH_METRIC_SERIES];
	int n_requests;
	uint64_t finished[QH_N_FINISH];       /* choices by how they ended */
	uint64_t prompt_tokens, generation_tokens;   /* served through HTTP */
	qh_histogram ttft, itl, e2e;
} qh_metrics;

void qh_metrics_init(qh_metrics *m);

/* One HTTP request answered: endpoint (a route name, never the raw path), status, error
 * code ("" for none). */
void qh_metrics_request(qh_metrics *m, const char *endpoint, int status, const char *code);

void qh_histogram_observe(qh_histogram *h, double v);

/* The front end's gauges at render time. */
typedef struct qh_gauges {
	int connections;                      /* HTTP connections open */
	int in_flight;                        /* HTTP requests being served */
	bool qwend_up;                        /* qwend answered the status just asked for */
} qh_gauges;

/* Everything in the exposition format (malloc'd).  status is qwend's status JSON, or NULL
 * when qwend could not be reached; model labels the model's series. */
char *qh_metrics_render(const qh_metrics *m, const qh_gauges *g, const json_t *status,
			const char *model);

#endif
