/* endpoints.c - every endpoint's start, and the ones one qwend call answers: /v1/models,
 * /health, /metrics (each a status), /tokenize and /detokenize.  A generation whose model
 * the front end has not yet seen asks qwend's status first.  See server.h and docs/http.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/json_text.h"
#include "http/server.h"

static qh_api api_of(qh_route route)
{
	return route == QH_ROUTE_CHAT ? QH_API_CHAT : route == QH_ROUTE_COMPLETIONS
	       ? QH_API_COMPLETIONS : route == QH_ROUTE_TOKENIZE ? QH_API_TOKENIZE
	       : QH_API_DETOKENIZE;
}

static bool needs_job(qh_route route)
{
	return route == QH_ROUTE_CHAT || route == QH_ROUTE_COMPLETIONS ||
	       route == QH_ROUTE_TOKENIZE || route == QH_ROUTE_DETOKENIZE;
}

static void call(qh_req *r, const qw_request *q)
{
	qh_error e;
	if (!qh_call_start(r->sv, &r->one, q, &e))
		qh_endpoint_failed(r, &e);
}

/* The job's work, once the model is known. */
static void proceed(qh_req *r)
{
	qh_error e;
	if (!qh_check_model(r->sv, r->job.model, &e)) {
		qh_answer_error(r, &e);
		return;
	}
	if (r->route == QH_ROUTE_CHAT || r->route == QH_ROUTE_COMPLETIONS)
		qh_generate_begin(r);
	else
		call(r, &r->job.reqs[0]);
}

void qh_endpoint_begin(qh_req *r)
{
	qh_server *sv = r->sv;
	if (needs_job(r->route)) {
		qh_parse_opts o = {.media_dir = sv->set.media_dir, .max_choices = sv->set.max_choices};
		qh_error e;
		if (!qh_job_parse(api_of(r->route), r->body.p ? r->body.p : "", r->body.n, &o,
				  &r->job, &e)) {
			qh_answer_error(r, &e);
			return;
		}
		qh_buf_free(&r->body);
		if (sv->info.known) {
			proceed(r);
			return;
		}
		r->info_first = true;
	}
	call(r, &qh_status_request);   /* models, health, metrics, or the model's name first */
}

// ---------------------------------------------------------------------------------------
// answers from a status

static json_t *model_json(const qh_server *sv)
{
	return json_pack("{s:o, s:s, s:I, s:s, s:o, s:i}", "id",
			 qw_json_text(sv->info.name, strlen(sv->info.name)), "object", "model",
			 "created", (json_int_t)sv->info.created, "owned_by", "qwen-vl", "root",
			 qw_json_text(sv->info.path, strlen(sv->info.path)), "max_model_len",
			 sv->info.max_context);
}

static void health(qh_req *r, const json_t *st)
{
	const char *state = json_string_value(json_object_get(st, "state"));
	if (state && !strcmp(state, "ready")) {
		qh_answer_json(r, 200, json_pack("{s:s}", "status", "ok"));
		return;
	}
	char reason[512];
	json_t *load = json_object_get(st, "load");
	double done = json_number_value(json_object_get(load, "bytes_done"));
	double total = json_number_value(json_object_get(load, "bytes_total"));
	const char *failure = json_string_value(json_object_get(st, "last_failure"));
	if (state && !strcmp(state, "loading"))
		snprintf(reason, sizeof reason, "qwend is loading the model (%.0f%% of the weights)",
			 total > 0 ? 100 * done / total : 0);
	else if (state && !strcmp(state, "restarting"))
		snprintf(reason, sizeof reason, "qwend is restarting its pipeline%s%s",
			 failure ? " after: " : "", failure ? failure : "");
	else
		snprintf(reason, sizeof reason, "qwend is %s", state ? state : "in an unknown state");
	r->retry_after = 5;
	snprintf(r->code, sizeof r->code, "not_ready");
	qh_answer_json(r, 503, json_pack("{s:s, s:o}", "status", state ? state : "unknown",
					 "reason", qw_json_text(reason, strlen(reason))));
}

static void metrics(qh_req *r, const json_t *st)
{
	qh_gauges g = qh_server_gauges(r->sv, st != NULL);
	char *text = qh_metrics_render(&r->sv->metrics, &g, st, r->sv->info.name);
	if (!text) {
		qh_error e;
		qh_answer_error(r, (qh_fail(&e, 500, NULL, "out of memory"), &e));
		return;
	}
	qh_answer(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
}

static void status_came(qh_req *r, const json_t *st)
{
	qh_server *sv = r->sv;
	qh_info_update(sv, st);
	qh_error e;
	switch (r->route) {
	case QH_ROUTE_HEALTH:
		health(r, st);
		break;
	case QH_ROUTE_METRICS:
		metrics(r, st);
		break;
	case QH_ROUTE_MODELS:
		qh_answer_json(r, 200, json_pack("{s:s, s:[o]}", "object", "list", "data",
						 model_json(sv)));
		break;
	case QH_ROUTE_MODEL:
		if (qh_check_model(sv, r->model_arg, &e))
			qh_answer_json(r, 200, model_json(sv));
		else
			qh_answer_error(r, &e);
		break;
	default:
		if (r->info_first) {
			r->info_first = false;
			proceed(r);
		}
	}
}

void qh_endpoint_reply(qh_req *r, const qw_reply *rep)
{
	qh_error e;
	qh_call_close(&r->one);     /* one reply answers each of these */
	if (rep->type == QW_REPLY_ERROR) {
		qh_error_from_qwend(&e, rep->code, rep->message);
		qh_endpoint_failed(r, &e);
		return;
	}
	if (rep->type == QW_REPLY_STATUS) {
		json_t *st = json_loads(rep->json ? rep->json : "", 0, NULL);
		if (st)
			status_came(r, st);
		else
			qh_endpoint_failed(r, (qh_fail(&e, 500, NULL, "qwend's status is not JSON"), &e));
		json_decref(st);
		return;
	}
	if (rep->type == QW_REPLY_TOKENS && r->route == QH_ROUTE_TOKENIZE) {
		qh_answer_json(r, 200, json_pack("{s:i, s:i, s:o, s:n}", "count", rep->n_token_ids,
						 "max_model_len", r->sv->info.max_context, "tokens",
						 qh_ids_json(rep->token_ids, rep->n_token_ids),
						 "token_strs"));
		return;
	}
	if (rep->type == QW_REPLY_TOKENS && r->route == QH_ROUTE_DETOKENIZE) {
		qh_answer_json(r, 200, json_pack("{s:o}", "prompt",
						 qw_json_text(rep->text, rep->text_len)));
		return;
	}
	qh_endpoint_failed(r, (qh_fail(&e, 500, NULL, "qwend answered with an unexpected reply"),
			       &e));
}

void qh_endpoint_failed(qh_req *r, const qh_error *e)
{
	qh_call_close(&r->one);
	if (r->route == QH_ROUTE_METRICS) {
		metrics(r, NULL);       /* the front end's own metrics, with qwend down */
		return;
	}
	if (r->route == QH_ROUTE_HEALTH && e->status == 503) {
		char reason[1600];
		snprintf(reason, sizeof reason, "%s", e->message);
		r->retry_after = 5;
		snprintf(r->code, sizeof r->code, "unreachable");
		qh_answer_json(r, 503, json_pack("{s:s, s:o}", "status", "unreachable", "reason",
						 qw_json_text(reason, strlen(reason))));
		return;
	}
	qh_answer_error(r, e);
}
