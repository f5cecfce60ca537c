/* openai.h - OpenAI (and vLLM) request bodies into qwend requests.
 *
 * Owns: qh_job, what one HTTP request asks of qwend: a qw_request per prompt (chat has one,
 * /v1/completions may have several), how many choices each, and how the answer is to be
 * given (streamed, with usage, with token ids, with tool calls parsed).  The parser checks
 * every field: an unknown field, a wrong type, a value out of range, a broken image and a
 * setting qwend cannot honour (logit_bias, response_format other than text, tool_choice
 * other than none or auto) are each a 400 naming the field.
 * Image URLs go through media.h; tools and tool-call arguments are written as Qwen's
 * template writes them (pyjson.h).
 */
#ifndef QW_HTTP_OPENAI_H
#define QW_HTTP_OPENAI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/reply.h"
#include "ipc/protocol.h"

typedef enum qh_api {
	QH_API_CHAT,              /* POST /v1/chat/completions */
	QH_API_COMPLETIONS,       /* POST /v1/completions */
	QH_API_TOKENIZE,          /* POST /tokenize */
	QH_API_DETOKENIZE,        /* POST /detokenize */
} qh_api;

typedef struct qh_parse_opts {
	const char *media_dir;    /* where file:// image URLs may point ("" or NULL: nowhere) */
	int max_choices;          /* prompts x n of one request */
} qh_parse_opts;

typedef struct qh_job {
	qh_api api;
	json_t *body;             /* the parsed body; the requests' strings point into it */
	qw_request *reqs;         /* (n_reqs,) one qwend request per prompt */
	int n_reqs;
	int n;                    /* choices per prompt */
	const char *model;        /* the model asked for, or NULL */
	bool stream;              /* Server-Sent Events */
	bool include_usage;       /* stream_options.include_usage */
	bool return_token_ids;    /* vLLM's: the prompt's and each choice's token ids */
	bool parse_tools;         /* tools were offered: look for tool calls in the answer */
	bool logprobs;            /* each token's log-probabilities are answered */
	bool has_seed;
	uint64_t seed;            /* choice j of a prompt samples with seed + j */
	void **allocs;            /* what the requests point to besides the body */
	int n_allocs, cap_allocs;
} qh_job;

/* Parses body (len bytes) as a request to api into job.  false with e filled (400, 413 for
 * an image past the limits) on any problem.  qh_job_free releases job either way. */
bool qh_job_parse(qh_api api, const char *body, size_t len, const qh_parse_opts *o,
		  qh_job *job, qh_error *e);

void qh_job_free(qh_job *job);

#endif
