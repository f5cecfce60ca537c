/* protocol.h - the client protocol of qwend: msgpack maps over ZeroMQ, one request or reply
 * a message, a protocol version in every one.  docs/protocol.md is the reference.
 *
 * Owns: qw_request (submit / status / cancel / shutdown / tokenize / detokenize) and
 * qw_reply (accepted / chunk / done / error / status / ok / tokens), their encoders, and
 * their decoders, which check every field's type and size against qw_limits and name the
 * field that is wrong.  A decoded message's strings and bytes point into the decoder's own
 * copy, released with *_free.  protocol_request.c holds the requests' codec, protocol.c the
 * replies' and what both share (protocol_wire.h).
 */
#ifndef QW_IPC_PROTOCOL_H
#define QW_IPC_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

#define QW_PROTOCOL_VERSION 1
#define QW_PROTOCOL_MAX_LOGPROBS 20   /* most likely tokens a generated token may list */

typedef enum qw_op {
	QW_OP_SUBMIT, QW_OP_STATUS, QW_OP_CANCEL, QW_OP_SHUTDOWN,
	QW_OP_TOKENIZE,            /* messages or prompt -> the prompt's token ids */
	QW_OP_DETOKENIZE,          /* token ids -> text */
} qw_op;

typedef struct qw_limits {
	size_t max_message;        /* bytes of one request */
	int max_messages;          /* chat messages in a request */
	int max_items;             /* content items in a message */
	int max_images;            /* images in a request */
	size_t max_image_bytes;    /* one encoded image */
	size_t max_text_bytes;     /* all text of a request */
	int max_token_ids;
	int max_stop;              /* stop strings */
	size_t max_stop_bytes;     /* one stop string */
	int max_new_tokens;
	int max_tools;             /* tool definitions in a request */
} qw_limits;

#define QW_LIMITS_DEFAULT ((qw_limits){64u << 20, 256, 256, 16, 32u << 20, 1u << 20, 262144, \
				       16, 256, 262144, 128})

typedef enum qw_item_kind { QW_ITEM_TEXT, QW_ITEM_IMAGE } qw_item_kind;

typedef struct qw_item {
	qw_item_kind kind;
	const char *data;          /* text (UTF-8, not NUL-terminated) or encoded image bytes */
	size_t len;
} qw_item;

/* An assistant turn's call of a tool, as the chat template renders it back. */
typedef struct qw_tool_call {
	const char *name;
	size_t name_len;
	const char *arguments;     /* JSON text, written into the prompt as it is */
	size_t arguments_len;
} qw_tool_call;

typedef struct qw_req_message {
	const char *role;          /* system, user, assistant or tool */
	size_t role_len;
	qw_item *items;            /* (n_items,) */
	int n_items;
	const char *reasoning;     /* assistant history: reasoning_content, or NULL */
	size_t reasoning_len;
	qw_tool_call *tool_calls;  /* assistant: (n_tool_calls,) */
	int n_tool_calls;
} qw_req_message;

/* The chat template's enable_thinking switch. */
typedef enum qw_thinking {
	QW_THINKING_DEFAULT = 0,   /* as the model's template does */
	QW_THINKING_ON,            /* the same (the switch only turns thinking off) */
	QW_THINKING_OFF,           /* the generation prompt closes an empty <think></think> */
} qw_thinking;

typedef struct qw_request {
	qw_op op;
	/* submit: exactly one of messages, prompt, token_ids; tokenize: messages or prompt;
	 * detokenize: token_ids */
	qw_req_message *messages;
	int n_messages;
	const char *prompt;
	size_t prompt_len;
	int32_t *token_ids;
	int n_token_ids;
	/* with prompt or token_ids: the images whose pad runs the prompt holds (a run of one
	 * <|image_pad|> per image is expanded by the daemon) */
	qw_item *images;
	int n_images;
	int max_tokens;            /* 0: the daemon's default */
	double temperature;        /* < 0: the daemon's default */
	double top_p;              /* 0: the daemon's default */
	int top_k;                 /* < 0: the daemon's default */
	double min_p;              /* 0: off */
	double repetition_penalty; /* 0 (not given) or 1: off */
	double frequency_penalty;  /* 0: off */
	double presence_penalty;   /* 0: off */
	bool logprobs;             /* each generated token's log-probability, */
	int top_logprobs;          /* and this many of the most likely (at most
				    * QW_PROTOCOL_MAX_LOGPROBS) */
	uint64_t seed;
	bool has_seed;
	bool greedy;
	bool stream;               /* default true */
	bool ignore_eos;           /* generate max_tokens whatever the model says (benchmarks) */
	const char **stop;         /* (n_stop,) */
	size_t *stop_len;
	int n_stop;
	/* submit and tokenize, with messages */
	const char **tools;        /* (n_tools,) each tool's JSON text, as the template's tojson
				    * writes it into the system prompt */
	size_t *tools_len;
	int n_tools;
	qw_thinking thinking;
	bool prompt_ids;           /* submit: accepted carries the prompt's token ids */
	bool no_generation_prompt; /* tokenize: render without the assistant's opening */
	/* cancel */
	uint64_t target;
	void *owned;               /* the decoder's storage */
} qw_request;

typedef enum qw_reply_type {
	QW_REPLY_ACCEPTED, QW_REPLY_CHUNK, QW_REPLY_DONE, QW_REPLY_ERROR, QW_REPLY_STATUS,
	QW_REPLY_OK, QW_REPLY_TOKENS
} qw_reply_type;

/* One of the most likely tokens at a generated token's place. */
typedef struct qw_reply_top {
	int32_t id;
	double logprob;            /* -inf: a cut (top-k, top-p, min-p) removed it */
	const char *bytes;         /* what it stands for (raw; maybe part of a character), or
				    * NULL when the model has no tokenizer */
	size_t bytes_len;
} qw_reply_top;

/* A generated token's log-probabilities (of the distribution it was drawn from). */
typedef struct qw_reply_logprob {
	double logprob;
	const char *bytes;         /* the token's, as in qw_reply_top */
	size_t bytes_len;
	const qw_reply_top *top;   /* (n_top,) best first */
	int n_top;
} qw_reply_logprob;

typedef struct qw_reply {
	qw_reply_type type;
	uint64_t request;          /* the request id the daemon gave (0 if none yet) */
	const char *text;          /* chunk: answer text delta; tokens: the text */
	size_t text_len;
	const char *reasoning;     /* chunk: reasoning text delta */
	size_t reasoning_len;
	const int32_t *token_ids;  /* chunk: the tokens of this delta; tokens: the ids;
				    * accepted: the prompt's, when the submit asked */
	int n_token_ids;
	const qw_reply_logprob *logprobs;  /* chunk: (n_token_ids,) when the submit asked for
					      logprobs, else NULL */
	const char *finish_reason; /* done: stop, length, cancelled */
	int prompt_tokens, completion_tokens;
	double ttft_ms, tokens_per_s;
	const char *code;          /* error: bad_request, busy, not_ready, too_large, internal */
	const char *message;       /* error; ok: what was done */
	const char *json;          /* status: the daemon's state as JSON text */
	void *owned;
} qw_reply;

/* The code of an error reply (docs/protocol.md), and which status gives which: the one
 * table from what went wrong to what the client is told. */
typedef enum qw_error_code {
	QW_CODE_BAD_REQUEST,       /* the request itself is wrong (QW_E_ARG and the rest) */
	QW_CODE_TOO_LARGE,         /* over a limit (QW_E_LIMIT) */
	QW_CODE_BUSY,              /* no room now (QW_E_FULL) */
	QW_CODE_NOT_READY,         /* loading, restarting or shutting down (the daemon's state) */
	QW_CODE_INTERNAL,          /* the daemon failed (out of memory, I/O, a device, ...) */
	QW_CODE_COUNT_
} qw_error_code;

/* "bad_request", "too_large", "busy", "not_ready", "internal". */
const char *qw_error_code_name(qw_error_code c);

/* The code a request refused or failed with status st gets. */
qw_error_code qw_error_code_of(qw_status st);

/* Decodes and checks a request; errors name the field: QW_E_LIMIT for one over a limit
 * (sizes, counts), QW_E_ARG for anything else wrong. */
qw_status qw_request_decode(const void *buf, size_t len, const qw_limits *lim, qw_request *out,
			    qw_err *err);
void qw_request_free(qw_request *r);
/* Encodes r (as a client sends it); *buf is malloc'd. */
qw_status qw_request_encode(const qw_request *r, char **buf, size_t *len, qw_err *err);

qw_status qw_reply_encode(const qw_reply *r, char **buf, size_t *len, qw_err *err);
qw_status qw_reply_decode(const void *buf, size_t len, qw_reply *out, qw_err *err);
void qw_reply_free(qw_reply *r);

#endif
