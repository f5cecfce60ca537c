/* server.h - qwen-http: an HTTP/1.1 server (libmicrohttpd) in front of qwend.
 *
 * Owns: the front end's state and its one loop.  One thread: a zmq_poll waits on
 * libmicrohttpd's epoll descriptor, the DEALER sockets of the requests in flight to qwend
 * (cli/client.h, one per qwend request: each choice of a completion has its own, as has
 * each status, tokenize and detokenize), the descriptors of suspended HTTP connections
 * (to see a client go away while its request waits), and a signalfd (SIGTERM and SIGINT:
 * stop taking connections, finish what is in flight for up to --drain-timeout, exit 0).
 * libmicrohttpd runs in that thread too (its external-loop mode): a request waiting for
 * qwend is a suspended connection, resumed when there is something to send.
 *
 * server.c runs the loop and speaks HTTP (routes, the API key, limits, queueing answers,
 * streams); calls.c holds the exchanges with qwend and the model information cached from
 * its status; generate.c answers /v1/chat/completions and /v1/completions; endpoints.c
 * /v1/models, /health, /metrics, /tokenize and /detokenize.  docs/http.md is the
 * reference for every endpoint.
 */
#ifndef QW_HTTP_SERVER_H
#define QW_HTTP_SERVER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cli/client.h"
#include "http/buf.h"
#include "http/logprobs.h"
#include "http/metrics.h"
#include "http/openai.h"
#include "http/reply.h"
#include "http/toolcall.h"

#define QH_MAX_TOOL_CALLS 32        /* calls parsed out of one choice */

/* The settings (qwen-http's command line; --help lists them with their defaults). */
typedef struct qh_settings {
	char socket[QW_ENDPOINT_MAX];   /* qwend's endpoint */
	char host[256];                 /* the address to listen on */
	int port;                       /* 0: any free port (logged) */
	bool allow_remote;              /* a non-loopback host may be bound */
	char api_key[512];              /* "" for none; else every /v1/ request needs
					 * "Authorization: Bearer KEY" */
	char media_dir[1024];           /* file:// image URLs may read from here ("": none) */
	char model_name[256];           /* the model's name in the API ("": qwend's directory
					 * name) */
	size_t max_body;                /* bytes of a request body */
	size_t max_header;              /* bytes of a request's headers */
	int max_connections;
	int idle_timeout_s;             /* an idle connection is closed after this */
	int timeout_ms;                 /* qwend's first answer to a request */
	int max_choices;                /* choices (prompts x n) in one request */
	double drain_s;                 /* SIGTERM: how long requests in flight may finish */
} qh_settings;

/* qwen-http's defaults. */
void qh_settings_default(qh_settings *s);

/* Runs the front end until SIGTERM or SIGINT; returns the exit status (0, or 1 when it
 * could not start: the error is logged). */
int qh_server_run(const qh_settings *s);

// -- shared by the server's files -------------------------------------------------------

typedef struct qh_server qh_server;
typedef struct qh_req qh_req;

typedef enum qh_route {
	QH_ROUTE_NONE, QH_ROUTE_CHAT, QH_ROUTE_COMPLETIONS, QH_ROUTE_MODELS, QH_ROUTE_MODEL,
	QH_ROUTE_HEALTH, QH_ROUTE_METRICS, QH_ROUTE_TOKENIZE, QH_ROUTE_DETOKENIZE,
} qh_route;

/* One request to qwend, on a DEALER socket of its own. */
typedef struct qh_call {
	qw_client client;
	bool open;                  /* client is connected; closing it cancels in qwend */
	double deadline;            /* the first reply is due by then (monotonic s); 0 after */
	uint64_t id;                /* qwend's id of the request, once accepted */
} qh_call;

/* One choice of a completion: one qwend request. */
typedef struct qh_choice {
	qh_call call;
	int index;                  /* in the response */
	int prompt;                 /* which of the job's requests */
	bool accepted, done;
	qh_buf text, reasoning;     /* what came, for an answer that is not streamed */
	int32_t *ids;               /* (n_ids,) tokens generated, when they are answered */
	int n_ids, cap_ids;
	int32_t *prompt_ids;        /* (n_prompt_ids,) from accepted, when asked */
	int n_prompt_ids;
	qh_toolparse tools;         /* tool calls out of the answer (when tools were offered) */
	qh_toolcall calls[QH_MAX_TOOL_CALLS];
	int n_calls, calls_sent;
	char finish[16];            /* stop, length, tool_calls, abort */
	int prompt_tokens, completion_tokens;
	double t_first, t_last;     /* when its first and latest tokens came (monotonic s) */
	bool role_sent;             /* stream: the assistant role went out */
	qh_logprobs logprobs;       /* its tokens' log-probabilities, when asked (a stream's
				       since its last event) */
} qh_choice;

struct qh_req {
	qh_server *sv;
	struct MHD_Connection *conn;
	qh_route route;
	const char *endpoint;       /* the route's name in the metrics */
	char model_arg[256];        /* GET /v1/models/ID: the ID */
	double t_start;             /* when the request came (monotonic s) */
	qh_buf body;
	bool body_too_large;
	bool started;               /* the body is in and the work began */
	bool suspended;             /* its connection is suspended (waiting for qwend) */
	bool watching;              /* while suspended: its descriptor is watched for a close */
	int fd;                     /* the connection's socket */
	bool gone;                  /* the client went away: nothing more is sent */
	/* the answer, once there is one to queue */
	bool ready;
	int status;
	char *resp;                 /* malloc'd body (not streamed) */
	size_t resp_len;
	const char *ctype;
	int retry_after;            /* seconds, 0 for none */
	char code[40];              /* the error code, for the metrics ("" for none) */
	bool queued;                /* handed to libmicrohttpd */
	/* status, tokenize, detokenize: one call */
	qh_call one;
	bool info_first;            /* a generation waiting for the model's information */
	/* generation */
	qh_job job;
	qh_choice *choices;         /* (n_choices,) */
	int n_choices, n_accepted, n_done;
	bool streaming;             /* the answer is Server-Sent Events */
	qh_buf sse;                 /* events not yet taken by libmicrohttpd */
	bool sse_end;               /* the last event is in sse */
	char id[48];                /* chatcmpl-... / cmpl-... */
	long long created;          /* unix seconds */
	qh_req *prev, *next;        /* the server's requests */
};

/* The model as qwend's status describes it. */
typedef struct qh_info {
	bool known;
	char name[256];             /* the name the API uses */
	char path[1024];            /* qwend's model directory */
	int max_context;
	bool tokenizer;
	long long created;          /* unix seconds: when the front end first saw it */
} qh_info;

struct qh_server {
	qh_settings set;
	struct MHD_Daemon *mhd;
	void *zctx;
	int sigfd;
	qh_req *reqs;               /* every request libmicrohttpd gave us */
	int n_reqs;
	qh_info info;
	qh_metrics metrics;
	uint64_t next_id;           /* for response ids */
	bool draining;
	double drain_deadline;
	char listening[300];        /* http://HOST:PORT */
};

/* server.c: the answer to r (body malloc'd, taken over; ctype a static string). */
void qh_answer(qh_req *r, int status, const char *ctype, char *body, size_t len);
void qh_answer_json(qh_req *r, int status, json_t *j);   /* takes j */
void qh_answer_error(qh_req *r, const qh_error *e);
/* More stream data is waiting in r->sse (or the stream ended): wake the connection. */
void qh_stream_wake(qh_req *r);
/* The gauges /metrics reports (qwend_up: its status just came). */
qh_gauges qh_server_gauges(const qh_server *sv, bool qwend_up);

/* calls.c */
bool qh_call_start(qh_server *sv, qh_call *c, const qw_request *q, qh_error *e);
void qh_call_close(qh_call *c);
/* Takes a reply if one is there: 1 with one in *rep, 0 none, -1 the call failed (e). */
int qh_call_poll(qh_call *c, qw_reply *rep, qh_error *e);
/* A status reply's JSON into the cached model information. */
void qh_info_update(qh_server *sv, const json_t *status);
/* 404 unless model is the served one (or NULL). */
bool qh_check_model(const qh_server *sv, const char *model, qh_error *e);
/* The status request every status call sends. */
extern const qw_request qh_status_request;

/* generate.c */
json_t *qh_ids_json(const int32_t *ids, int n);   /* a JSON list of token ids */
void qh_generate_begin(qh_req *r);          /* the job is parsed and the model known */
void qh_generate_reply(qh_req *r, qh_choice *c, const qw_reply *rep);
void qh_generate_failed(qh_req *r, qh_choice *c, const qh_error *e);
/* The client went away: every choice's qwend request is cancelled. */
void qh_generate_stop(qh_req *r);
void qh_generate_free(qh_req *r);

/* endpoints.c */
void qh_endpoint_begin(qh_req *r);          /* models, health, metrics, tokenize, ... */
void qh_endpoint_reply(qh_req *r, const qw_reply *rep);
void qh_endpoint_failed(qh_req *r, const qh_error *e);

#endif
