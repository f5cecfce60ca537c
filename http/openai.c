/* openai.c - OpenAI request bodies into qwend requests: the fields, the sampling settings
 * and what is refused.  Messages and their content are in openai_messages.c.
 * See openai.h and docs/http.md. */
#include "http/openai.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/openai_internal.h"
#include "http/pyjson.h"

void *qh_job_alloc(qh_job *job, size_t bytes)
{
	if (job->n_allocs == job->cap_allocs) {
		int cap = job->cap_allocs ? 2 * job->cap_allocs : 16;
		void **g = realloc(job->allocs, (size_t)cap * sizeof *g);
		if (!g)
			return NULL;
		job->allocs = g;
		job->cap_allocs = cap;
	}
	void *p = calloc(1, bytes ? bytes : 1);
	if (p)
		job->allocs[job->n_allocs++] = p;
	return p;
}

bool qh_job_keep(qh_job *job, void *p)
{
	if (!p)
		return false;
	if (job->n_allocs == job->cap_allocs) {
		int cap = job->cap_allocs ? 2 * job->cap_allocs : 16;
		void **g = realloc(job->allocs, (size_t)cap * sizeof *g);
		if (!g) {
			free(p);
			return false;
		}
		job->allocs = g;
		job->cap_allocs = cap;
	}
	job->allocs[job->n_allocs++] = p;
	return true;
}

void qh_job_free(qh_job *job)
{
	for (int i = 0; i < job->n_allocs; i++)
		free(job->allocs[i]);
	free(job->allocs);
	json_decref(job->body);
	memset(job, 0, sizeof *job);
}

json_t *qh_get(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_null(v) ? NULL : v;
}

bool qh_oom(qh_error *e)
{
	return qh_fail(e, 500, NULL, "out of memory");
}

// ---------------------------------------------------------------------------------------
// fields

/* Each key of obj must be one of known (NULL-terminated); where names the object. */
bool qh_known_keys(const json_t *obj, const char *const *known, const char *where,
		   qh_error *e)
{
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)obj, key, v) {
		bool ok = false;
		for (int i = 0; known[i] && !ok; i++)
			ok = !strcmp(key, known[i]);
		if (!ok) {
			char param[128];
			snprintf(param, sizeof param, "%s%s%s", where, *where ? "." : "", key);
			return qh_fail(e, 400, param, "unknown field '%s'%s", param,
				       *where ? "" : " (this server takes the fields docs/http.md "
				       "lists; a setting it cannot honour is refused, not ignored)");
		}
	}
	return true;
}

static bool integer(const json_t *body, const char *key, long long lo, long long hi,
		    long long *out, bool *given, qh_error *e)
{
	json_t *v = qh_get(body, key);
	*given = v != NULL;
	if (!v)
		return true;
	if (!json_is_integer(v))
		return qh_fail(e, 400, key, "'%s' must be an integer", key);
	*out = json_integer_value(v);
	if (*out < lo || *out > hi)
		return qh_fail(e, 400, key, "'%s' is %lld; it must be in [%lld, %lld]", key, *out,
			       lo, hi);
	return true;
}

static bool number(const json_t *body, const char *key, double lo, double hi, bool lo_open,
		   double *out, bool *given, qh_error *e)
{
	json_t *v = qh_get(body, key);
	*given = v != NULL;
	if (!v)
		return true;
	if (!json_is_number(v))
		return qh_fail(e, 400, key, "'%s' must be a number", key);
	*out = json_number_value(v);
	if (!(*out >= lo && *out <= hi) || (lo_open && *out == lo))
		return qh_fail(e, 400, key, "'%s' is %g; it must be in %c%g, %g]", key, *out,
			       lo_open ? '(' : '[', lo, hi);
	return true;
}

bool qh_boolean(const json_t *body, const char *key, bool *out, qh_error *e)
{
	json_t *v = qh_get(body, key);
	if (!v)
		return true;
	if (!json_is_boolean(v))
		return qh_fail(e, 400, key, "'%s' must be true or false", key);
	*out = json_is_true(v);
	return true;
}

static bool stops(qh_job *job, const json_t *body, qw_request *r, qh_error *e)
{
	json_t *v = qh_get(body, "stop");
	if (!v)
		return true;
	int n = json_is_string(v) ? 1 : json_is_array(v) ? (int)json_array_size(v) : -1;
	qw_limits lim = QW_LIMITS_DEFAULT;
	if (n < 0)
		return qh_fail(e, 400, "stop", "'stop' must be a string or a list of strings");
	if (n > lim.max_stop)
		return qh_fail(e, 400, "stop", "'stop' has %d strings; at most %d are taken", n,
			       lim.max_stop);
	r->stop = qh_job_alloc(job, (size_t)n * sizeof *r->stop);
	r->stop_len = qh_job_alloc(job, (size_t)n * sizeof *r->stop_len);
	if (!r->stop || !r->stop_len)
		return qh_oom(e);
	for (int i = 0; i < n; i++) {
		json_t *s = json_is_string(v) ? v : json_array_get(v, (size_t)i);
		if (!json_is_string(s) || json_string_length(s) == 0 ||
		    json_string_length(s) > lim.max_stop_bytes)
			return qh_fail(e, 400, "stop", "each stop string must be a string of 1 to %zu "
				       "bytes", lim.max_stop_bytes);
		r->stop[i] = json_string_value(s);
		r->stop_len[i] = json_string_length(s);
	}
	r->n_stop = n;
	return true;
}

/* min_p and the penalties, as vLLM takes them (repetition_penalty 1 and the others 0 are
 * off). */
static bool penalties(const json_t *body, qw_request *r, qh_error *e)
{
	double x;
	bool given;
	if (!number(body, "min_p", 0, 1, false, &x, &given, e))
		return false;
	if (given)
		r->min_p = x;
	if (!number(body, "repetition_penalty", 0, 100, true, &x, &given, e))
		return false;
	if (given && x != 1)
		r->repetition_penalty = x;
	if (!number(body, "frequency_penalty", -2, 2, false, &x, &given, e))
		return false;
	if (given)
		r->frequency_penalty = x;
	if (!number(body, "presence_penalty", -2, 2, false, &x, &given, e))
		return false;
	if (given)
		r->presence_penalty = x;
	return true;
}

/* Chat: logprobs (true or false) and top_logprobs (0 to 20, with logprobs true);
 * completions: logprobs, how many of the most likely (0 to 20). */
static bool logprobs(qh_job *job, const json_t *body, qw_request *r, qh_error *e)
{
	long long v;
	bool given;
	if (job->api == QH_API_CHAT) {
		if (!qh_boolean(body, "logprobs", &job->logprobs, e) ||
		    !integer(body, "top_logprobs", 0, QW_PROTOCOL_MAX_LOGPROBS, &v, &given, e))
			return false;
		if (given && !job->logprobs)
			return qh_fail(e, 400, "top_logprobs", "'top_logprobs' goes with 'logprobs': "
				       "true");
		r->top_logprobs = given ? (int)v : 0;
	} else {
		if (!integer(body, "logprobs", 0, QW_PROTOCOL_MAX_LOGPROBS, &v, &given, e))
			return false;
		job->logprobs = given;
		r->top_logprobs = given ? (int)v : 0;
	}
	r->logprobs = job->logprobs;
	return true;
}

/* What every generating request shares: sampling, stop, limits, stream options. */
static bool generation(qh_job *job, const json_t *body, const qh_parse_opts *o,
		       qw_request *r, qh_error *e)
{
	qw_limits lim = QW_LIMITS_DEFAULT;
	long long v;
	double x;
	bool given, chat = job->api == QH_API_CHAT;
	*r = (qw_request){.op = QW_OP_SUBMIT, .temperature = -1, .top_k = -1, .stream = true};
	if (!integer(body, "max_tokens", 1, lim.max_new_tokens, &v, &given, e))
		return false;
	if (given)
		r->max_tokens = (int)v;
	else if (!chat)
		r->max_tokens = 16;          /* OpenAI's default for completions */
	if (chat && !integer(body, "max_completion_tokens", 1, lim.max_new_tokens, &v, &given, e))
		return false;
	if (chat && given)
		r->max_tokens = (int)v;
	if (!number(body, "temperature", 0, 100, false, &x, &given, e))
		return false;
	if (given)
		r->temperature = x;
	if (!number(body, "top_p", 0, 1, true, &x, &given, e))
		return false;
	if (given)
		r->top_p = x;
	if (!integer(body, "top_k", -1, 1 << 20, &v, &given, e))
		return false;
	if (given)
		r->top_k = v < 0 ? 0 : (int)v;       /* vLLM's -1 is off, as 0 is */
	if (!integer(body, "seed", INT64_MIN, INT64_MAX, &v, &given, e))
		return false;
	job->has_seed = r->has_seed = given;
	job->seed = r->seed = (uint64_t)v;
	if (!qh_boolean(body, "ignore_eos", &r->ignore_eos, e) || !stops(job, body, r, e))
		return false;
	if (!integer(body, "n", 1, o->max_choices, &v, &given, e))
		return false;
	job->n = given ? (int)v : 1;
	if (!chat && !integer(body, "best_of", job->n, job->n, &v, &given, e))
		return false;
	json_t *user = qh_get(body, "user");
	if (user && !json_is_string(user))
		return qh_fail(e, 400, "user", "'user' must be a string");
	if (!penalties(body, r, e) || !logprobs(job, body, r, e))
		return false;
	json_t *bias = qh_get(body, "logit_bias");
	if (bias && !(json_is_object(bias) && json_object_size(bias) == 0))
		return qh_fail(e, 400, "logit_bias", "'logit_bias' is not supported by this server "
			       "(leave it out, or empty)");
	/* streaming */
	if (!qh_boolean(body, "stream", &job->stream, e) ||
	    !qh_boolean(body, "return_token_ids", &job->return_token_ids, e))
		return false;
	r->prompt_ids = job->return_token_ids;
	json_t *so = qh_get(body, "stream_options");
	if (so) {
		static const char *const known[] = {"include_usage", NULL};
		if (!job->stream)
			return qh_fail(e, 400, "stream_options", "'stream_options' goes with stream "
				       "true");
		if (!json_is_object(so))
			return qh_fail(e, 400, "stream_options", "'stream_options' must be an object");
		if (!qh_known_keys(so, known, "stream_options", e))
			return false;
		json_t *usage = qh_get(so, "include_usage");
		if (usage && !json_is_boolean(usage))
			return qh_fail(e, 400, "stream_options.include_usage", "'include_usage' must "
				       "be true or false");
		job->include_usage = json_is_true(usage);
	}
	return true;
}

// ---------------------------------------------------------------------------------------
// chat

static bool chat_options(qh_job *job, const json_t *body, qw_request *r, qh_error *e)
{
	json_t *format = qh_get(body, "response_format");
	if (format) {
		json_t *type = json_object_get(format, "type");
		if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0)
			return qh_fail(e, 400, "response_format", "'response_format' may only be "
				       "{\"type\": \"text\"} here: this server cannot constrain output "
				       "to JSON yet");
	}
	bool parallel = true;
	if (!qh_boolean(body, "parallel_tool_calls", &parallel, e))
		return false;
	return qh_template_options(job, body, r, e);
}

static bool parse_chat(qh_job *job, const qh_parse_opts *o, qh_error *e)
{
	static const char *const known[] = {
		"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
		"top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty",
		"repetition_penalty", "logprobs", "top_logprobs", "n", "ignore_eos", "user",
		"return_token_ids", "stream", "stream_options", "tools", "tool_choice",
		"parallel_tool_calls", "chat_template_kwargs", "response_format", "logit_bias",
		NULL};
	if (!qh_known_keys(job->body, known, "", e))
		return false;
	job->reqs = qh_job_alloc(job, sizeof *job->reqs);
	if (!job->reqs)
		return qh_oom(e);
	job->n_reqs = 1;
	qw_request *r = &job->reqs[0];
	return generation(job, job->body, o, r, e) && chat_options(job, job->body, r, e) &&
	       qh_messages(job, job->body, o, r, e);
}

// ---------------------------------------------------------------------------------------
// completions

/* A prompt: a string, or token ids. */
static bool prompt(qh_job *job, json_t *p, const char *param, qw_request *r, qh_error *e)
{
	if (json_is_string(p)) {
		r->prompt = json_string_value(p);
		r->prompt_len = json_string_length(p);
		return true;
	}
	return qh_token_ids(job, p, param, &r->token_ids, &r->n_token_ids, e);
}

static bool parse_completions(qh_job *job, const qh_parse_opts *o, qh_error *e)
{
	static const char *const known[] = {
		"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
		"stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs",
		"n", "best_of", "echo", "suffix", "ignore_eos", "user", "return_token_ids", "stream",
		"stream_options", "logit_bias", NULL};
	if (!qh_known_keys(job->body, known, "", e))
		return false;
	qw_request base;
	if (!generation(job, job->body, o, &base, e))
		return false;
	bool echo = false;
	if (!qh_boolean(job->body, "echo", &echo, e))
		return false;
	if (echo)
		return qh_fail(e, 400, "echo", "'echo' is not supported by this server");
	json_t *suffix = qh_get(job->body, "suffix");
	if (suffix && !(json_is_string(suffix) && json_string_length(suffix) == 0))
		return qh_fail(e, 400, "suffix", "'suffix' is not supported by this server (Qwen "
			       "has no fill-in-the-middle prompt)");
	json_t *p = qh_get(job->body, "prompt");
	if (!p)
		return qh_fail(e, 400, "prompt", "'prompt' is required");
	/* one prompt (a string or token ids), or a list of them */
	bool list = json_is_array(p) && json_array_size(p) > 0 &&
		    (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0)));
	job->n_reqs = list ? (int)json_array_size(p) : 1;
	if (job->n_reqs * job->n > o->max_choices)
		return qh_fail(e, 400, "prompt", "%d prompts with n %d make %d choices; at most %d "
			       "are served in one request", job->n_reqs, job->n,
			       job->n_reqs * job->n, o->max_choices);
	job->reqs = qh_job_alloc(job, (size_t)job->n_reqs * sizeof *job->reqs);
	if (!job->reqs)
		return qh_oom(e);
	for (int i = 0; i < job->n_reqs; i++) {
		char param[32];
		snprintf(param, sizeof param, list ? "prompt[%d]" : "prompt", i);
		job->reqs[i] = base;
		if (!prompt(job, list ? json_array_get(p, (size_t)i) : p, param, &job->reqs[i], e))
			return false;
	}
	return true;
}

// ---------------------------------------------------------------------------------------
// tokenize, detokenize

/* The job's one request, of op. */
static qw_request *single(qh_job *job, qw_op op)
{
	job->reqs = qh_job_alloc(job, sizeof *job->reqs);
	if (!job->reqs)
		return NULL;
	job->n_reqs = job->n = 1;
	job->reqs[0] = (qw_request){.op = op};
	return &job->reqs[0];
}

static bool parse_tokenize(qh_job *job, qh_error *e)
{
	static const char *const known[] = {"model", "prompt", "messages", "add_generation_prompt",
					    "add_special_tokens", "tools", "chat_template_kwargs",
					    "return_token_strs", NULL};
	qw_request *r;
	if (!qh_known_keys(job->body, known, "", e))
		return false;
	if (!(r = single(job, QW_OP_TOKENIZE)))
		return qh_oom(e);
	bool gen = true, special = true, strs = false;
	if (!qh_boolean(job->body, "add_generation_prompt", &gen, e) ||
	    !qh_boolean(job->body, "add_special_tokens", &special, e) ||
	    !qh_boolean(job->body, "return_token_strs", &strs, e))
		return false;
	if (strs)
		return qh_fail(e, 400, "return_token_strs", "'return_token_strs' is not supported by "
			       "this server");
	r->no_generation_prompt = !gen;
	json_t *p = qh_get(job->body, "prompt"), *m = qh_get(job->body, "messages");
	if (!p == !m)
		return qh_fail(e, 400, p ? "prompt" : "messages", "/tokenize takes 'prompt' or "
			       "'messages', one of them");
	if (p) {
		if (!json_is_string(p))
			return qh_fail(e, 400, "prompt", "'prompt' must be a string");
		if (qh_get(job->body, "tools") || qh_get(job->body, "chat_template_kwargs"))
			return qh_fail(e, 400, qh_get(job->body, "tools") ? "tools"
				       : "chat_template_kwargs", "tools and chat_template_kwargs go "
				       "with 'messages'");
		r->prompt = json_string_value(p);
		r->prompt_len = json_string_length(p);
		return true;
	}
	qh_parse_opts none = {0};
	return qh_template_options(job, job->body, r, e) && qh_messages(job, job->body, &none, r,
									  e);
}

static bool parse_detokenize(qh_job *job, qh_error *e)
{
	static const char *const known[] = {"model", "tokens", NULL};
	qw_request *r;
	if (!qh_known_keys(job->body, known, "", e))
		return false;
	if (!(r = single(job, QW_OP_DETOKENIZE)))
		return qh_oom(e);
	json_t *t = qh_get(job->body, "tokens");
	if (!t)
		return qh_fail(e, 400, "tokens", "'tokens' is required");
	return qh_token_ids(job, t, "tokens", &r->token_ids, &r->n_token_ids, e);
}

// ---------------------------------------------------------------------------------------

bool qh_job_parse(qh_api api, const char *body, size_t len, const qh_parse_opts *o,
		  qh_job *job, qh_error *e)
{
	memset(job, 0, sizeof *job);
	job->api = api;
	job->n = 1;
	json_error_t jerr;
	job->body = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!job->body)
		return qh_fail(e, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)",
			       jerr.text, jerr.line, jerr.column);
	if (!json_is_object(job->body))
		return qh_fail(e, 400, NULL, "the body must be a JSON object");
	json_t *model = qh_get(job->body, "model");
	if (model && !json_is_string(model))
		return qh_fail(e, 400, "model", "'model' must be a string");
	job->model = model ? json_string_value(model) : NULL;
	switch (api) {
	case QH_API_CHAT: return parse_chat(job, o, e);
	case QH_API_COMPLETIONS: return parse_completions(job, o, e);
	case QH_API_TOKENIZE: return parse_tokenize(job, e);
	case QH_API_DETOKENIZE: return parse_detokenize(job, e);
	}
	return false;
}
