/* calls.c - the front end's requests to qwend (one DEALER socket each) and what it keeps of
 * qwend's status: the model's name and context.  See server.h. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http/server.h"
#include "loader/clock.h"

const qw_request qh_status_request = {.op = QW_OP_STATUS};

/* A failure to reach qwend, as the client library words it. */
static void unreachable(qh_error *e, const qw_err *err)
{
	qh_fail(e, 503, NULL, "qwend cannot be reached: %s", err->msg);
	snprintf(e->code, sizeof e->code, "unreachable");
}

bool qh_call_start(qh_server *sv, qh_call *c, const qw_request *q, qh_error *e)
{
	qw_err err = {0};
	memset(c, 0, sizeof *c);
	if (qw_client_open(&c->client, sv->zctx, sv->set.socket, sv->set.timeout_ms, &err) != QW_OK) {
		unreachable(e, &err);
		return false;
	}
	if (qw_client_send(&c->client, q, &err) != QW_OK) {
		qw_client_close(&c->client);
		if (err.code == QW_E_IO)
			unreachable(e, &err);
		else
			qh_fail(e, 500, NULL, "cannot send the request to qwend: %s", err.msg);
		return false;
	}
	c->open = true;
	c->deadline = qw_seconds_now() + sv->set.timeout_ms / 1e3;
	return true;
}

void qh_call_close(qh_call *c)
{
	if (c->open)
		qw_client_close(&c->client);
	c->open = false;
	c->deadline = 0;
}

int qh_call_poll(qh_call *c, qw_reply *rep, qh_error *e)
{
	if (!c->open)
		return 0;
	qw_err err = {0};
	bool got = false;
	qw_status st = qw_client_poll(&c->client, rep, &got, &err);
	if (st == QW_OK && !got && c->deadline > 0 && qw_seconds_now() > c->deadline)
		st = qw_fail(&err, QW_E_IO, "qwend at %s did not answer in time (is it stuck?)",
			     c->client.endpoint);
	else if (st == QW_OK && !got)
		return 0;
	if (st != QW_OK) {
		if (err.code == QW_E_IO)
			unreachable(e, &err);
		else
			qh_fail(e, 500, NULL, "qwend's reply does not decode: %s", err.msg);
		qh_call_close(c);
		return -1;
	}
	c->deadline = 0;
	return 1;
}

void qh_info_update(qh_server *sv, const json_t *status)
{
	json_t *model = json_object_get(status, "model");
	const char *path = json_string_value(json_object_get(model, "path"));
	if (!path)
		return;
	qh_info *in = &sv->info;
	if (!in->known || strcmp(in->path, path) != 0)
		in->created = (long long)time(NULL);
	in->known = true;
	snprintf(in->path, sizeof in->path, "%s", path);
	if (sv->set.model_name[0]) {
		snprintf(in->name, sizeof in->name, "%s", sv->set.model_name);
	} else {
		/* the directory's name ("Qwen3-VL-235B-A22B-Thinking"), without a trailing / */
		char tmp[1024];
		snprintf(tmp, sizeof tmp, "%s", path);
		size_t n = strlen(tmp);
		while (n > 1 && tmp[n - 1] == '/')
			tmp[--n] = '\0';
		const char *base = strrchr(tmp, '/');
		snprintf(in->name, sizeof in->name, "%s", base ? base + 1 : tmp);
	}
	in->max_context = (int)json_integer_value(json_object_get(model, "max_context"));
	in->tokenizer = json_is_true(json_object_get(model, "tokenizer"));
}

bool qh_check_model(const qh_server *sv, const char *model, qh_error *e)
{
	if (!model || !strcmp(model, sv->info.name) || !strcmp(model, sv->info.path))
		return true;
	qh_fail(e, 404, "model", "The model '%s' does not exist; this server serves '%s' (GET "
		"/v1/models lists it)", model, sv->info.name);
	snprintf(e->code, sizeof e->code, "model_not_found");
	return false;
}
