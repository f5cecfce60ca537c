/* reply.c - errors in OpenAI's shape.  See reply.h. */
#include "http/reply.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool qh_fail(qh_error *e, int status, const char *param, const char *fmt, ...)
{
	e->status = status;
	snprintf(e->param, sizeof e->param, "%s", param ? param : "");
	e->code[0] = '\0';
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
	return false;
}

const char *qh_error_type(int status)
{
	switch (status) {
	case 401: return "authentication_error";
	case 404: return "not_found_error";
	case 429: return "rate_limit_error";
	case 503: return "service_unavailable_error";
	default: return status >= 500 ? "server_error" : "invalid_request_error";
	}
}

const char *qh_error_code(const qh_error *e)
{
	if (e->code[0])
		return e->code;
	switch (e->status) {
	case 400: return "bad_request";
	case 401: return "invalid_api_key";
	case 404: return "not_found";
	case 405: return "method_not_allowed";
	case 413: return "too_large";
	case 429: return "busy";
	case 503: return "not_ready";
	default: return e->status >= 500 ? "internal" : NULL;
	}
}

char *qh_error_json(const qh_error *e)
{
	const char *code = qh_error_code(e);
	json_t *j = json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", e->message, "type",
			      qh_error_type(e->status), "param",
			      e->param[0] ? json_string(e->param) : json_null(), "code",
			      code ? json_string(code) : json_null());
	if (!j) {   /* a message that is not UTF-8 (it quotes what a client sent) */
		j = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message",
			      "(the message is not valid UTF-8)", "type", qh_error_type(e->status),
			      "param", "code");
	}
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	return text;
}

void qh_error_from_qwend(qh_error *e, const char *code, const char *message)
{
	static const struct { const char *code; int status; } map[] = {
		{"bad_request", 400}, {"too_large", 413}, {"busy", 429}, {"not_ready", 503},
		{"internal", 500},
	};
	int status = 500;
	for (size_t i = 0; i < sizeof map / sizeof *map; i++)
		if (code && !strcmp(code, map[i].code))
			status = map[i].status;
	qh_fail(e, status, NULL, "%s", message && *message ? message : "qwend failed the request");
	snprintf(e->code, sizeof e->code, "%s", code && status != 500 ? code : "internal");
}

int qh_retry_after(const qh_error *e)
{
	return e->status == 429 ? 1 : e->status == 503 ? 5 : 0;
}
