/* generate.c - /v1/chat/completions and /v1/completions: one qwend request a choice, their
 * replies into one JSON answer or a stream of Server-Sent Events.  See server.h and
 * docs/http.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/json_text.h"
#include "daemon/log.h"
#include "http/server.h"
#include "loader/clock.h"

static bool is_chat(const qh_req *r)
{
	return r->job.api == QH_API_CHAT;
}

/* Token ids are answered when asked, and always by a model without a tokenizer. */
static bool want_ids(const qh_req *r)
{
	return r->job.return_token_ids || !r->sv->info.tokenizer;
}

json_t *qh_ids_json(const int32_t *ids, int n)
{
	json_t *a = json_array();
	for (int i = 0; i < n; i++)
		json_array_append_new(a, json_integer(ids[i]));
	return a;
}

static void add_ids(qh_choice *c, const int32_t *ids, int n)
{
	if (c->n_ids + n > c->cap_ids) {
		int cap = c->cap_ids ? c->cap_ids : 64;
		while (cap < c->n_ids + n)
			cap *= 2;
		int32_t *g = realloc(c->ids, (size_t)cap * sizeof *g);
		if (!g)
			return;
		c->ids = g;
		c->cap_ids = cap;
	}
	memcpy(c->ids + c->n_ids, ids, (size_t)n * sizeof *ids);
	c->n_ids += n;
}

static json_t *tool_call_json(const qh_req *r, const qh_choice *c, int k, bool delta)
{
	char id[48];
	snprintf(id, sizeof id, "call_%s_%d_%d", r->id + strlen(r->id) - 12, c->index, k);
	json_t *t = json_pack("{s:s, s:s, s:{s:o, s:o}}", "id", id, "type", "function",
			      "function", "name", qw_json_text(c->calls[k].name,
							       strlen(c->calls[k].name)),
			      "arguments", qw_json_text(c->calls[k].arguments,
						       strlen(c->calls[k].arguments)));
	if (delta && t)
		json_object_set_new(t, "index", json_integer(k));
	return t;
}

/* The object every chunk and answer starts with. */
static json_t *envelope(const qh_req *r, bool chunk)
{
	const char *object = is_chat(r) ? chunk ? "chat.completion.chunk" : "chat.completion"
			     : "text_completion";
	return json_pack("{s:s, s:s, s:I, s:s}", "id", r->id, "object", object, "created",
			 (json_int_t)r->created, "model", r->sv->info.name);
}

static json_t *usage_json(const qh_req *r)
{
	int prompt = 0, completion = 0;
	for (int i = 0; i < r->n_choices; i++) {
		if (r->choices[i].index % r->job.n == 0)
			prompt += r->choices[i].prompt_tokens;   /* each prompt once */
		completion += r->choices[i].completion_tokens;
	}
	return json_pack("{s:i, s:i, s:i}", "prompt_tokens", prompt, "completion_tokens",
			 completion, "total_tokens", prompt + completion);
}

// ---------------------------------------------------------------------------------------
// streams

static void event(qh_req *r, json_t *j)
{
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!text)
		return;
	qh_buf_str(&r->sse, "data: ");
	qh_buf_str(&r->sse, text);
	qh_buf_str(&r->sse, "\n\n");
	free(text);
}

/* One chunk of choice c: the role (first), reasoning, content, tool calls, token ids, the
 * log-probabilities of its tokens, and the finish reason (last). */
static void chunk(qh_req *r, qh_choice *c, const char *reasoning, size_t n_reasoning,
		  const char *text, size_t n_text, const int32_t *ids, int n_ids,
		  const char *finish)
{
	json_t *logprobs = r->job.logprobs && n_ids ? qh_logprobs_take(&c->logprobs) : NULL;
	json_t *env = envelope(r, true), *ch = json_object();
	json_object_set_new(ch, "index", json_integer(c->index));
	if (is_chat(r)) {
		json_t *delta = json_object();
		if (!c->role_sent) {
			json_object_set_new(delta, "role", json_string("assistant"));
			if (!n_text && !n_reasoning)
				json_object_set_new(delta, "content", json_string(""));
			if (c->n_prompt_ids)
				json_object_set_new(env, "prompt_token_ids",
						    qh_ids_json(c->prompt_ids, c->n_prompt_ids));
			c->role_sent = true;
		}
		if (n_reasoning)
			json_object_set_new(delta, "reasoning_content",
					    qw_json_text(reasoning, n_reasoning));
		if (n_text)
			json_object_set_new(delta, "content", qw_json_text(text, n_text));
		if (c->calls_sent < c->n_calls) {
			json_t *calls = json_array();
			for (; c->calls_sent < c->n_calls; c->calls_sent++)
				json_array_append_new(calls, tool_call_json(r, c, c->calls_sent, true));
			json_object_set_new(delta, "tool_calls", calls);
		}
		json_object_set_new(ch, "delta", delta);
	} else {
		qh_buf t = {0};
		qh_buf_add(&t, reasoning, n_reasoning);   /* a Thinking model's text, both parts */
		qh_buf_add(&t, text, n_text);
		json_object_set_new(ch, "text", qw_json_text(t.p ? t.p : "", t.n));
		qh_buf_free(&t);
		if (!c->role_sent && c->n_prompt_ids)
			json_object_set_new(ch, "prompt_token_ids",
					    qh_ids_json(c->prompt_ids, c->n_prompt_ids));
		c->role_sent = true;
	}
	json_object_set_new(ch, "logprobs", logprobs ? logprobs : json_null());
	json_object_set_new(ch, "finish_reason", finish ? json_string(finish) : json_null());
	if (want_ids(r) && (n_ids || finish))
		json_object_set_new(ch, "token_ids", qh_ids_json(ids, n_ids));
	json_object_set_new(env, "choices", json_pack("[o]", ch));
	event(r, env);
}

static void stream_end(qh_req *r)
{
	if (r->job.include_usage) {
		json_t *env = envelope(r, true);
		json_object_set_new(env, "choices", json_array());
		json_object_set_new(env, "usage", usage_json(r));
		event(r, env);
	}
	qh_buf_str(&r->sse, "data: [DONE]\n\n");
	r->sse_end = true;
}

// ---------------------------------------------------------------------------------------
// answers that are not streamed

static json_t *choice_json(const qh_req *r, qh_choice *c)
{
	json_t *ch = json_pack("{s:i}", "index", c->index);
	if (is_chat(r)) {
		json_t *msg = json_pack("{s:s}", "role", "assistant");
		json_object_set_new(msg, "content", c->n_calls && !c->text.n ? json_null()
				    : qw_json_text(c->text.p ? c->text.p : "", c->text.n));
		json_object_set_new(msg, "reasoning_content", c->reasoning.n
				    ? qw_json_text(c->reasoning.p, c->reasoning.n) : json_null());
		if (c->n_calls) {
			json_t *calls = json_array();
			for (int k = 0; k < c->n_calls; k++)
				json_array_append_new(calls, tool_call_json(r, c, k, false));
			json_object_set_new(msg, "tool_calls", calls);
		}
		json_object_set_new(ch, "message", msg);
	} else {
		qh_buf t = {0};
		qh_buf_add(&t, c->reasoning.p, c->reasoning.n);
		qh_buf_add(&t, c->text.p, c->text.n);
		json_object_set_new(ch, "text", qw_json_text(t.p ? t.p : "", t.n));
		qh_buf_free(&t);
		if (c->n_prompt_ids)
			json_object_set_new(ch, "prompt_token_ids",
					    qh_ids_json(c->prompt_ids, c->n_prompt_ids));
	}
	json_object_set_new(ch, "logprobs", r->job.logprobs
			    ? qh_logprobs_take(&c->logprobs) : json_null());
	json_object_set_new(ch, "finish_reason", json_string(c->finish));
	if (want_ids(r))
		json_object_set_new(ch, "token_ids", qh_ids_json(c->ids, c->n_ids));
	return ch;
}

static void answer_whole(qh_req *r)
{
	json_t *env = envelope(r, false), *choices = json_array();
	for (int i = 0; i < r->n_choices; i++)
		json_array_append_new(choices, choice_json(r, &r->choices[i]));
	json_object_set_new(env, "choices", choices);
	json_object_set_new(env, "usage", usage_json(r));
	if (is_chat(r) && r->choices[0].n_prompt_ids)
		json_object_set_new(env, "prompt_token_ids", qh_ids_json(r->choices[0].prompt_ids,
								       r->choices[0].n_prompt_ids));
	qh_answer_json(r, 200, env);
}

// ---------------------------------------------------------------------------------------
// the choices' life

/* Stops every choice still running (its qwend request is cancelled). */
static void stop_all(qh_req *r, qh_finish why)
{
	for (int i = 0; i < r->n_choices; i++) {
		qh_choice *c = &r->choices[i];
		if (c->call.open && !c->done)
			r->sv->metrics.finished[why]++;
		qh_call_close(&c->call);
	}
}

void qh_generate_begin(qh_req *r)
{
	qh_server *sv = r->sv;
	qh_job *job = &r->job;
	r->n_choices = job->n_reqs * job->n;
	r->choices = calloc((size_t)r->n_choices, sizeof *r->choices);
	if (!r->choices) {
		qh_error e;
		qh_answer_error(r, (qh_fail(&e, 500, NULL, "out of memory"), &e));
		return;
	}
	r->created = (long long)time(NULL);
	uint64_t n = ++sv->next_id ^ ((uint64_t)r->created << 20) ^ (uint64_t)(size_t)r;
	snprintf(r->id, sizeof r->id, "%s-%016llx", is_chat(r) ? "chatcmpl" : "cmpl",
		 (unsigned long long)(n * 0x9e3779b97f4a7c15ull));
	for (int i = 0; i < r->n_choices; i++) {
		qh_choice *c = &r->choices[i];
		c->index = i;
		c->prompt = i / job->n;
		c->logprobs.chat = is_chat(r);
		qw_request q = job->reqs[c->prompt];
		if (job->has_seed)
			q.seed = job->seed + (uint64_t)(i % job->n);   /* choices differ */
		qh_error e;
		if (!qh_call_start(sv, &c->call, &q, &e)) {
			stop_all(r, QH_FINISH_ERROR);
			qh_answer_error(r, &e);
			return;
		}
	}
}

static void accepted(qh_req *r, qh_choice *c, const qw_reply *rep)
{
	c->accepted = true;
	c->call.id = rep->request;
	if (rep->n_token_ids && (c->prompt_ids = malloc((size_t)rep->n_token_ids * sizeof(int32_t)))) {
		memcpy(c->prompt_ids, rep->token_ids, (size_t)rep->n_token_ids * sizeof(int32_t));
		c->n_prompt_ids = rep->n_token_ids;
	}
	if (++r->n_accepted < r->n_choices || !r->job.stream)
		return;
	/* every choice is in: the stream begins (events so far are waiting in r->sse) */
	r->streaming = true;
	qh_answer(r, 200, "text/event-stream", NULL, 0);
}

static void tokens_came(qh_req *r, qh_choice *c, int n)
{
	double now = qw_seconds_now();
	if (n <= 0)
		return;
	if (c->t_first == 0) {
		c->t_first = now;
		qh_histogram_observe(&r->sv->metrics.ttft, now - r->t_start);
		n--;
	} else if (n > 0) {
		/* a chunk may carry several tokens: each gets the average gap */
		for (int k = 0; k < n; k++)
			qh_histogram_observe(&r->sv->metrics.itl, (now - c->t_last) / n);
	}
	c->t_last = now;
}

static void chunk_came(qh_req *r, qh_choice *c, const qw_reply *rep)
{
	tokens_came(r, c, rep->n_token_ids);
	if (want_ids(r))
		add_ids(c, rep->token_ids, rep->n_token_ids);
	if (r->job.logprobs && !qh_logprobs_add(&c->logprobs, rep->token_ids, rep->logprobs,
						rep->n_token_ids)) {
		qh_error e;
		qh_generate_failed(r, c, (qh_fail(&e, 500, NULL, "out of memory"), &e));
		return;
	}
	qh_buf content = {0};
	const char *text = rep->text;
	size_t n_text = rep->text_len;
	if (r->job.parse_tools) {
		qh_toolparse_push(&c->tools, rep->text, rep->text_len, false, &content, c->calls,
				  &c->n_calls, QH_MAX_TOOL_CALLS);
		text = content.p;
		n_text = content.n;
	}
	if (!r->job.stream) {
		qh_buf_add(&c->text, text, n_text);
		qh_buf_add(&c->reasoning, rep->reasoning, rep->reasoning_len);
	} else if (n_text || rep->reasoning_len || c->calls_sent < c->n_calls ||
		   ((want_ids(r) || r->job.logprobs) && rep->n_token_ids) || !c->role_sent) {
		chunk(r, c, rep->reasoning, rep->reasoning_len, text, n_text, rep->token_ids,
		      rep->n_token_ids, NULL);
		qh_stream_wake(r);
	}
	qh_buf_free(&content);
}

static void done(qh_req *r, qh_choice *c, const qw_reply *rep)
{
	qh_metrics *m = &r->sv->metrics;
	c->done = true;
	qh_call_close(&c->call);
	r->n_done++;
	c->prompt_tokens = rep->prompt_tokens;
	c->completion_tokens = rep->completion_tokens;
	m->prompt_tokens += (uint64_t)rep->prompt_tokens;
	m->generation_tokens += (uint64_t)rep->completion_tokens;
	/* what the tool parser held back */
	qh_buf content = {0};
	if (r->job.parse_tools)
		qh_toolparse_push(&c->tools, NULL, 0, true, &content, c->calls, &c->n_calls,
				  QH_MAX_TOOL_CALLS);
	const char *why = rep->finish_reason ? rep->finish_reason : "stop";
	qh_finish f = QH_FINISH_STOP;
	if (!strcmp(why, "length"))
		f = QH_FINISH_LENGTH;
	else if (!strcmp(why, "cancelled"))
		f = QH_FINISH_ABORT;
	else if (c->n_calls)
		f = QH_FINISH_TOOL_CALLS;
	static const char *const names[] = {"stop", "length", "tool_calls", "abort"};
	snprintf(c->finish, sizeof c->finish, "%s", names[f]);
	m->finished[f]++;
	if (r->job.stream) {
		chunk(r, c, NULL, 0, content.p, content.n, NULL, 0, c->finish);
	} else {
		qh_buf_add(&c->text, content.p, content.n);
	}
	qh_buf_free(&content);
	if (r->n_done < r->n_choices)
		return;
	qh_histogram_observe(&m->e2e, qw_seconds_now() - r->t_start);
	if (r->job.stream) {
		stream_end(r);
		qh_stream_wake(r);
	} else {
		answer_whole(r);
	}
}

void qh_generate_reply(qh_req *r, qh_choice *c, const qw_reply *rep)
{
	qh_error e;
	switch (rep->type) {
	case QW_REPLY_ACCEPTED:
		accepted(r, c, rep);
		break;
	case QW_REPLY_CHUNK:
		chunk_came(r, c, rep);
		break;
	case QW_REPLY_DONE:
		done(r, c, rep);
		break;
	case QW_REPLY_ERROR:
		qh_error_from_qwend(&e, rep->code, rep->message);
		qh_generate_failed(r, c, &e);
		break;
	default:
		qh_fail(&e, 500, NULL, "qwend answered a submit with an unexpected reply");
		qh_generate_failed(r, c, &e);
	}
}

void qh_generate_failed(qh_req *r, qh_choice *c, const qh_error *e)
{
	qh_call_close(&c->call);
	if (!c->done)
		r->sv->metrics.finished[QH_FINISH_ERROR]++;
	c->done = true;
	stop_all(r, QH_FINISH_ERROR);
	if (!r->queued) {
		/* nothing went out yet: the whole request fails with this error */
		qh_buf_free(&r->sse);
		r->streaming = false;
		r->ready = false;
		qh_answer_error(r, e);
		return;
	}
	/* a stream already under way ends with the error as an event */
	char *text = qh_error_json(e);
	if (text) {
		qh_buf_str(&r->sse, "data: ");
		qh_buf_str(&r->sse, text);
		qh_buf_str(&r->sse, "\n\n");
		free(text);
	}
	qh_buf_str(&r->sse, "data: [DONE]\n\n");
	r->sse_end = true;
	qh_stream_wake(r);
}

void qh_generate_stop(qh_req *r)
{
	stop_all(r, QH_FINISH_ABORT);
}

void qh_generate_free(qh_req *r)
{
	stop_all(r, QH_FINISH_ABORT);
	for (int i = 0; i < r->n_choices; i++) {
		qh_choice *c = &r->choices[i];
		qh_buf_free(&c->text);
		qh_buf_free(&c->reasoning);
		free(c->ids);
		free(c->prompt_ids);
		qh_logprobs_free(&c->logprobs);
		qh_toolparse_free(&c->tools);
		for (int k = 0; k < c->n_calls; k++)
			qh_toolcall_free(&c->calls[k]);
	}
	free(r->choices);
	r->choices = NULL;
	r->n_choices = 0;
}
