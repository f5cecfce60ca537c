/* ctl_submit.c - qwenctl submit: one request, its answer streamed to stdout as chunks
 * arrive (reasoning apart, shown with --thinking), statistics on stderr, or one JSON object
 * with --json; Ctrl-C cancels the request.  See ctl.h. */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/ctl.h"
#include "cli/json_text.h"
#include "loader/clock.h"

enum { MAX_STOP = 16 };   /* the protocol's default limit */

typedef struct submit_opts {
	const char *images[CTL_MAX_IMAGES]; /* --image files, in order */
	int n_images;
	const char *system;          /* --system, or NULL */
	const char *prompt;          /* PROMPT, "-" for stdin, or NULL */
	const char *token_ids;       /* --token-ids LIST, or NULL */
	const char *messages;        /* --messages FILE ("-" for stdin), or NULL */
	const char *stop[MAX_STOP];  /* --stop strings */
	size_t stop_len[MAX_STOP];
	int n_stop;
	bool raw;                    /* --raw: prompt without the chat template */
	bool thinking;               /* --thinking: print the reasoning too */
	bool json;                   /* --json: one object at the end */
} submit_opts;

/* A growing byte or id array. */
typedef struct grow {
	char *p;
	size_t len, cap;
} grow;

static bool grow_add(grow *g, const void *data, size_t len)
{
	if (g->len + len > g->cap) {
		size_t cap = g->cap ? g->cap : 256;
		while (cap < g->len + len)
			cap *= 2;
		char *p = realloc(g->p, cap);
		if (!p)
			return false;
		g->p = p;
		g->cap = cap;
	}
	if (len)
		memcpy(g->p + g->len, data, len);
	g->len += len;
	return true;
}

/* What came back so far. */
typedef struct answer {
	uint64_t id;                 /* the daemon's request id, 0 until accepted */
	grow text, reasoning;        /* answer and reasoning, as received */
	grow ids;                    /* int32 token ids of all chunks */
	json_t *logprobs;            /* --json --logprobs: an entry a token */
	bool think_open, think_closed; /* --thinking: <think> printed, </think> printed */
	bool printed;                /* stdout holds part of the answer (or reasoning) */
	bool oom;                    /* a buffer could not grow */
} answer;


// ---------------------------------------------------------------------------------------
// input

/* "1,2,3" (commas or blanks between) into a malloc'd array. */
static bool parse_ids(const char *list, int32_t **out, int *n)
{
	int cap = 64;
	int32_t *ids = malloc((size_t)cap * sizeof *ids);
	*n = 0;
	const char *p = list;
	while (ids) {
		p += strspn(p, ", \t\n");
		if (!*p)
			break;
		size_t len = strcspn(p, ", \t\n");
		char tok[32];
		long long v;
		snprintf(tok, sizeof tok, "%.*s", (int)(len < 31 ? len : 31), p);
		if (len > 31 || !qw_arg_int("qwenctl", "--token-ids", tok, 0, INT32_MAX, &v)) {
			free(ids);
			return false;
		}
		if (*n == QW_LIMITS_DEFAULT.max_token_ids) {
			fprintf(stderr, "qwenctl: --token-ids: more than %d ids\n", *n);
			free(ids);
			return false;
		}
		if (*n == cap) {
			int32_t *more = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
			if (!more)
				free(ids);
			ids = more;
			if (!ids)
				break;
		}
		ids[(*n)++] = (int32_t)v;
		p += len;
	}
	if (!ids) {
		fprintf(stderr, "qwenctl: out of memory\n");
		return false;
	}
	if (*n == 0) {
		fprintf(stderr, "qwenctl: --token-ids: no ids in '%s'\n", list);
		free(ids);
		return false;
	}
	*out = ids;
	return true;
}

// ---------------------------------------------------------------------------------------
// output

/* A log-probability as JSON: -inf (a token the cuts removed) is null. */
static json_t *logprob_json(double x)
{
	return isinf(x) ? json_null() : json_real(x);
}

/* The chunk's log-probabilities, one {id, logprob, top: [{id, logprob}]} a token. */
static void add_logprobs(answer *a, const qw_reply *r)
{
	for (int i = 0; r->logprobs && i < r->n_token_ids; i++) {
		const qw_reply_logprob *lp = &r->logprobs[i];
		json_t *top = json_array();
		for (int k = 0; k < lp->n_top; k++)
			json_array_append_new(top, json_pack("{s:i, s:o}", "id", lp->top[k].id,
							     "logprob",
							     logprob_json(lp->top[k].logprob)));
		json_t *e = json_pack("{s:i, s:o, s:o}", "id", r->token_ids[i], "logprob",
				      logprob_json(lp->logprob), "top", top);
		if (!e || json_array_append_new(a->logprobs, e) != 0)
			a->oom = true;
	}
}

static void on_chunk(answer *a, const submit_opts *o, const qw_reply *r)
{
	if (!a->id)
		a->id = r->request;
	if (!grow_add(&a->text, r->text, r->text_len) ||
	    !grow_add(&a->reasoning, r->reasoning, r->reasoning_len) ||
	    !grow_add(&a->ids, r->token_ids, (size_t)r->n_token_ids * sizeof(int32_t)))
		a->oom = true;
	if (a->logprobs)
		add_logprobs(a, r);
	if (o->json)
		return;
	if (o->thinking && r->reasoning_len) {
		if (!a->think_open)
			fputs("<think>\n", stdout);
		a->think_open = a->printed = true;
		fwrite(r->reasoning, 1, r->reasoning_len, stdout);
	}
	if (r->text_len) {
		if (a->think_open && !a->think_closed)
			fputs("\n</think>\n", stdout);
		a->think_closed = a->think_open;
		a->printed = true;
		fwrite(r->text, 1, r->text_len, stdout);
	}
	fflush(stdout);
}

/* Ends the streamed answer's line, so what follows on stderr (the statistics, an error)
 * starts on a line of its own: after a whole answer always (it is one line feed more than
 * the model's text; --json gives the text exact), after a cut one when it printed any. */
static void end_answer(answer *a, const submit_opts *o, bool whole)
{
	if (o->json || !(whole || a->printed))
		return;
	if (a->think_open && !a->think_closed)
		fputs("\n</think>\n", stdout);
	a->think_closed = a->think_open;
	fputs("\n", stdout);
	fflush(stdout);
}

static int on_done(answer *a, const submit_opts *o, const qw_reply *r)
{
	const char *finish = r->finish_reason ? r->finish_reason : "?";
	if (!a->id)
		a->id = r->request;
	if (o->json) {
		json_t *ids = json_array();
		for (size_t i = 0; i < a->ids.len / sizeof(int32_t); i++) {
			int32_t id;
			memcpy(&id, a->ids.p + i * sizeof id, sizeof id);
			json_array_append_new(ids, json_integer(id));
		}
		json_t *obj = json_object();
		json_object_set_new(obj, "id", json_integer((json_int_t)a->id));
		json_object_set_new(obj, "token_ids", ids);
		json_object_set_new(obj, "text", qw_json_text(a->text.p ? a->text.p : "", a->text.len));
		if (a->reasoning.len)
			json_object_set_new(obj, "reasoning", qw_json_text(a->reasoning.p,
									 a->reasoning.len));
		json_object_set_new(obj, "finish_reason", json_string(finish));
		if (a->logprobs)
			json_object_set(obj, "logprobs", a->logprobs);
		json_object_set_new(obj, "usage", json_pack("{s:i, s:i, s:f, s:f}",
			"prompt_tokens", r->prompt_tokens, "completion_tokens", r->completion_tokens,
			"ttft_ms", r->ttft_ms, "tokens_per_s", r->tokens_per_s));
		char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(10));
		if (s)
			printf("%s\n", s);
		free(s);
		json_decref(obj);
	} else {
		end_answer(a, o, true);
	}
	fflush(stdout);
	fprintf(stderr, "# request %llu: prompt %d tokens, completion %d tokens, TTFT %.1f ms, "
		"%.1f tokens/s, finish %s\n", (unsigned long long)a->id, r->prompt_tokens,
		r->completion_tokens, r->ttft_ms, r->tokens_per_s, finish);
	if (a->oom)
		fprintf(stderr, "qwenctl: out of memory keeping the answer; it is incomplete\n");
	return a->oom ? CTL_ERROR : CTL_OK;
}

// ---------------------------------------------------------------------------------------
// the request

/* Ctrl-C: cancel the request (waiting briefly for its id if it has none yet), wait for the
 * daemon's ok and done (or a short timeout), exit 130. */
static int cancel_request(qw_client *client, answer *a, const submit_opts *o)
{
	const double wait_ms = 3000;
	double t0 = qw_millis_now();
	qw_reply rep;
	qw_err err = {0};
	client->interrupt = NULL;
	end_answer(a, o, false);
	while (!a->id && qw_millis_now() - t0 < wait_ms) {
		int left = (int)(wait_ms - (qw_millis_now() - t0)) + 1;
		if (qw_client_recv(client, &rep, left, &err) != QW_OK)
			break;
		bool over = rep.type == QW_REPLY_DONE || rep.type == QW_REPLY_ERROR;
		if (!over)
			a->id = rep.request;
		qw_reply_free(&rep);
		if (over)
			return CTL_INTERRUPTED;
	}
	if (!a->id) {
		fprintf(stderr, "qwenctl: interrupted before the daemon accepted the request\n");
		return CTL_INTERRUPTED;
	}
	qw_request cancel = {.op = QW_OP_CANCEL, .target = a->id};
	if (qw_client_send(client, &cancel, &err) != QW_OK) {
		fprintf(stderr, "qwenctl: interrupted; could not cancel request %llu: %s\n",
			(unsigned long long)a->id, err.msg);
		return CTL_INTERRUPTED;
	}
	bool ok = false, done = false;
	while (!(ok && done) && qw_millis_now() - t0 < 2 * wait_ms) {
		int left = (int)(2 * wait_ms - (qw_millis_now() - t0)) + 1;
		if (qw_client_recv(client, &rep, left, &err) != QW_OK)
			break;
		if (rep.type == QW_REPLY_OK) {
			ok = true;   /* "request N cancelled": the line below says it */
		} else if (rep.type == QW_REPLY_DONE) {
			done = true;
		} else if (rep.type == QW_REPLY_ERROR) {
			ok = done = true;
			fprintf(stderr, "qwenctl: %s: %s\n", rep.code ? rep.code : "error",
				rep.message ? rep.message : "");
		}
		qw_reply_free(&rep);
	}
	fprintf(stderr, "qwenctl: interrupted; request %llu %s\n", (unsigned long long)a->id,
		done ? "cancelled" : "cancel sent, no answer yet");
	return CTL_INTERRUPTED;
}

static int run(ctl_common *c, const submit_opts *o, const qw_request *req)
{
	qw_client client;
	int rc = ctl_connect(c, &client);
	if (rc != CTL_OK)
		return rc;
	ctl_catch_sigint();
	client.interrupt = &ctl_interrupted;
	answer a = {0};
	qw_err err = {0};
	if (req->logprobs && !(a.logprobs = json_array())) {
		rc = CTL_ERROR;
		fprintf(stderr, "qwenctl: out of memory\n");
		goto out;
	}
	if (qw_client_send(&client, req, &err) != QW_OK) {
		rc = ctl_interrupted ? CTL_INTERRUPTED : ctl_fail(&err);
		goto out;
	}
	for (;;) {
		qw_reply rep;
		/* the first answer within --timeout; then generation takes what it takes */
		if (qw_client_recv(&client, &rep, a.id ? -1 : c->timeout_ms, &err) != QW_OK) {
			if (ctl_interrupted) {
				rc = cancel_request(&client, &a, o);
			} else {
				end_answer(&a, o, false);
				rc = ctl_fail(&err);
			}
			break;
		}
		bool end = true;
		switch (rep.type) {
		case QW_REPLY_ACCEPTED:
			a.id = rep.request;
			end = false;
			break;
		case QW_REPLY_CHUNK:
			on_chunk(&a, o, &rep);
			end = false;
			break;
		case QW_REPLY_DONE:
			rc = on_done(&a, o, &rep);
			break;
		case QW_REPLY_ERROR:
			end_answer(&a, o, false);
			rc = ctl_reply_error(&rep);
			break;
		default:
			rc = ctl_unexpected("submit", &rep);
		}
		qw_reply_free(&rep);
		if (end)
			break;
	}
out:
	free(a.text.p);
	free(a.reasoning.p);
	free(a.ids.p);
	json_decref(a.logprobs);
	qw_client_close(&client);
	return rc;
}

/* Reads the images and the prompt, fills the rest of req and runs it. */
static int build_and_run(ctl_common *c, const submit_opts *o, qw_request *req)
{
	const qw_limits lim = QW_LIMITS_DEFAULT;
	qw_item images[CTL_MAX_IMAGES + 1], sys_item, *items = images;
	qw_req_message msgs[2];
	char *prompt = NULL, *datas[CTL_MAX_IMAGES] = {0};
	int32_t *ids = NULL;
	int rc = CTL_USAGE, n_items = 0;
	if (o->messages) {
		ctl_conversation conv;
		if ((rc = ctl_conversation_read(o->messages, &conv)) != CTL_OK)
			return rc;
		req->messages = conv.msgs;
		req->n_messages = conv.n_msgs;
		rc = run(c, o, req);
		ctl_conversation_free(&conv);
		return rc;
	}
	for (int i = 0; i < o->n_images; i++) {
		size_t len;
		if (!ctl_read_image("--image", o->images[i], &datas[i], &len))
			goto out;
		images[n_items++] = (qw_item){QW_ITEM_IMAGE, datas[i], len};
	}
	if (o->token_ids) {
		if (!parse_ids(o->token_ids, &ids, &req->n_token_ids))
			goto out;
		req->token_ids = ids;
	} else {
		size_t len;
		if (strcmp(o->prompt, "-") == 0) {
			if (!ctl_read_input("PROMPT", NULL, lim.max_text_bytes, &prompt, &len))
				goto out;
		} else {
			len = strlen(o->prompt);
			if (len > lim.max_text_bytes) {
				fprintf(stderr, "qwenctl: PROMPT: %zu bytes; at most %zu\n", len,
					lim.max_text_bytes);
				goto out;
			}
		}
		const char *text = prompt ? prompt : o->prompt;
		if (o->raw) {
			req->prompt = text;
			req->prompt_len = len;
		} else {
			/* the user's message: the images in order, then the text */
			if (len || !n_items)
				images[n_items++] = (qw_item){QW_ITEM_TEXT, text, len};
			int m = 0;
			if (o->system) {
				sys_item = (qw_item){QW_ITEM_TEXT, o->system, strlen(o->system)};
				msgs[m++] = (qw_req_message){.role = "system", .role_len = 6,
							     .items = &sys_item, .n_items = 1};
			}
			msgs[m++] = (qw_req_message){.role = "user", .role_len = 4, .items = items,
						     .n_items = n_items};
			req->messages = msgs;
			req->n_messages = m;
		}
	}
	if (!req->messages && o->n_images) {
		req->images = images;
		req->n_images = o->n_images;
	}
	rc = run(c, o, req);
out:
	for (int i = 0; i < o->n_images; i++)
		free(datas[i]);
	free(prompt);
	free(ids);
	return rc;
}

enum { O_SYSTEM = 256, O_TEMPERATURE, O_TOP_P, O_TOP_K, O_SEED, O_TOKEN_IDS, O_STOP, O_RAW,
       O_IGNORE_EOS, O_THINKING, O_JSON, O_NO_STREAM, O_MESSAGES, O_MIN_P, O_REPETITION,
       O_FREQUENCY, O_PRESENCE, O_LOGPROBS };

int ctl_submit(ctl_common *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"image", required_argument, NULL, 'i'},
		{"system", required_argument, NULL, O_SYSTEM},
		{"max-tokens", required_argument, NULL, 'n'},
		{"temperature", required_argument, NULL, O_TEMPERATURE},
		{"top-p", required_argument, NULL, O_TOP_P},
		{"top-k", required_argument, NULL, O_TOP_K},
		{"min-p", required_argument, NULL, O_MIN_P},
		{"repetition-penalty", required_argument, NULL, O_REPETITION},
		{"frequency-penalty", required_argument, NULL, O_FREQUENCY},
		{"presence-penalty", required_argument, NULL, O_PRESENCE},
		{"logprobs", required_argument, NULL, O_LOGPROBS},
		{"seed", required_argument, NULL, O_SEED},
		{"greedy", no_argument, NULL, 'g'},
		{"token-ids", required_argument, NULL, O_TOKEN_IDS},
		{"messages", required_argument, NULL, O_MESSAGES},
		{"stop", required_argument, NULL, O_STOP},
		{"raw", no_argument, NULL, O_RAW},
		{"ignore-eos", no_argument, NULL, O_IGNORE_EOS},
		{"thinking", no_argument, NULL, O_THINKING},
		{"json", no_argument, NULL, O_JSON},
		{"no-stream", no_argument, NULL, O_NO_STREAM},
		CTL_COMMON_OPTIONS};
	const qw_limits lim = QW_LIMITS_DEFAULT;
	submit_opts o = {0};
	qw_request req = {.op = QW_OP_SUBMIT, .temperature = -1, .top_k = -1, .stream = true};
	long long v;
	int opt;
	optind = 0;
	while ((opt = getopt_long(argc, argv, CTL_SHORT("i:n:g"), opts, NULL)) != -1) {
		int common = ctl_common_opt(c, opt, optarg);
		if (common < 0)
			return CTL_USAGE;
		if (common)
			continue;
		switch (opt) {
		case 'i':
			if (o.n_images == CTL_MAX_IMAGES)
				return ctl_usage_error("at most %d --image files", CTL_MAX_IMAGES);
			o.images[o.n_images++] = optarg;
			break;
		case O_SYSTEM: o.system = optarg; break;
		case 'n':
			if (!qw_arg_int("qwenctl", "--max-tokens", optarg, 1, lim.max_new_tokens, &v))
				return CTL_USAGE;
			req.max_tokens = (int)v;
			break;
		case O_TEMPERATURE:
			if (!ctl_arg_real("--temperature", optarg, 0, 100, false, &req.temperature))
				return CTL_USAGE;
			break;
		case O_TOP_P:
			if (!ctl_arg_real("--top-p", optarg, 0, 1, true, &req.top_p))
				return CTL_USAGE;
			break;
		case O_TOP_K:
			if (!qw_arg_int("qwenctl", "--top-k", optarg, 0, INT32_MAX, &v))
				return CTL_USAGE;
			req.top_k = (int)v;
			break;
		case O_MIN_P:
			if (!ctl_arg_real("--min-p", optarg, 0, 1, false, &req.min_p))
				return CTL_USAGE;
			break;
		case O_REPETITION:
			if (!ctl_arg_real("--repetition-penalty", optarg, 0, 100, true,
					  &req.repetition_penalty))
				return CTL_USAGE;
			break;
		case O_FREQUENCY:
			if (!ctl_arg_real("--frequency-penalty", optarg, -2, 2, false,
					  &req.frequency_penalty))
				return CTL_USAGE;
			break;
		case O_PRESENCE:
			if (!ctl_arg_real("--presence-penalty", optarg, -2, 2, false,
					  &req.presence_penalty))
				return CTL_USAGE;
			break;
		case O_LOGPROBS:
			if (!qw_arg_int("qwenctl", "--logprobs", optarg, 0, QW_PROTOCOL_MAX_LOGPROBS,
					&v))
				return CTL_USAGE;
			req.logprobs = true;
			req.top_logprobs = (int)v;
			break;
		case O_SEED:
			if (!qw_arg_int("qwenctl", "--seed", optarg, 0, INT64_MAX, &v))
				return CTL_USAGE;
			req.seed = (uint64_t)v;
			req.has_seed = true;
			break;
		case 'g': req.greedy = true; break;
		case O_TOKEN_IDS: o.token_ids = optarg; break;
		case O_MESSAGES: o.messages = optarg; break;
		case O_STOP:
			if (o.n_stop == MAX_STOP)
				return ctl_usage_error("at most %d --stop strings", MAX_STOP);
			if (!*optarg || strlen(optarg) > lim.max_stop_bytes)
				return ctl_usage_error("--stop: a stop string has 1 to %zu bytes",
						       lim.max_stop_bytes);
			o.stop_len[o.n_stop] = strlen(optarg);
			o.stop[o.n_stop++] = optarg;
			break;
		case O_RAW: o.raw = true; break;
		case O_IGNORE_EOS: req.ignore_eos = true; break;
		case O_THINKING: o.thinking = true; break;
		case O_JSON: o.json = true; break;
		case O_NO_STREAM: req.stream = false; break;
		default:
			return ctl_option_error("submit", argv, opt);
		}
	}
	if (argc - optind > 1)
		return ctl_usage_error("submit takes one PROMPT (quote it), not %d words",
				       argc - optind);
	o.prompt = optind < argc ? argv[optind] : NULL;
	if ((o.prompt != NULL) + (o.token_ids != NULL) + (o.messages != NULL) > 1)
		return ctl_usage_error("give one of a PROMPT, --token-ids and --messages");
	if (!o.prompt && !o.token_ids && !o.messages)
		return ctl_usage_error("submit needs a PROMPT (- reads stdin), --token-ids or "
				       "--messages");
	if (o.messages && (o.system || o.raw || o.n_images))
		return ctl_usage_error("--messages holds the whole conversation: put the system "
				       "message and the images in the file, not --system, --raw or "
				       "--image");
	if (req.logprobs && !o.json)
		return ctl_usage_error("--logprobs are given in the --json output: add --json");
	if (o.raw && o.token_ids)
		return ctl_usage_error("--raw is for a PROMPT; --token-ids are sent as they are");
	if (o.system && (o.raw || o.token_ids))
		return ctl_usage_error("--system goes with a chat PROMPT, not --raw or --token-ids");
	req.stop = o.stop;
	req.stop_len = o.stop_len;
	req.n_stop = o.n_stop;
	return build_and_run(c, &o, &req);
}
