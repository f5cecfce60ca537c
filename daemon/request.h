/* request.h - a client's submit, from the protocol to the scheduler, and its tokens back
 * to text.
 *
 * Owns: qw_req_ctx (what preparing a request needs: the model's config, its tokenizer when
 * it has one, the per-request limits, end-of-sequence ids, sampling defaults) and the two
 * ends of a request:
 *   - qw_request_prepare turns a decoded submit into a sequence for the scheduler: chat
 *     messages through the chat template, a raw prompt, or token ids; images weighed from
 *     their headers alone (their resized sizes and token counts, checked against the
 *     limits) and their pad runs expanded; M-RoPE positions; sampling, maximum length and
 *     stop settings.  A refusal's status says whether the request is over a limit
 *     (QW_E_LIMIT) or wrong (QW_E_ARG), and err says why.  The images' pixels come after
 *     (qw_request_image_pixels for one, which a thread may run, or qw_request_decode_images
 *     for all), so a request past a limit is refused before any image is decoded;
 *   - qw_output turns the sequence's sampled tokens into text: whole characters only,
 *     special tokens left out, split into reasoning and answer, answer text held back while
 *     it may still begin a stop string; it says when the request is finished and why.
 */
#ifndef QW_DAEMON_REQUEST_H
#define QW_DAEMON_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/image/image.h"
#include "daemon/image/preprocess.h"
#include "daemon/sched.h"
#include "daemon/text/chat.h"
#include "daemon/text/tokenizer.h"
#include "ipc/protocol.h"
#include "loader/config.h"

#define QW_REQ_MAX_EOS 8

typedef struct qw_req_ctx {
	const qw_config *cfg;
	qw_tokenizer *tok;               /* NULL: the model serves token-id requests only */
	bool thinking;                   /* prompts open <think>: a Thinking model */
	int32_t eos[QW_REQ_MAX_EOS];     /* tokens that end generation */
	int n_eos;
	int32_t think_start, think_end;  /* <think>, </think>, or -1 */
	int max_context;                 /* prompt + generated tokens of one sequence */
	int default_max_tokens;
	double temperature, top_p;       /* defaults when a request does not say */
	int top_k;
	qw_image_limits image_limits;    /* one encoded / decoded image */
	qw_preprocess_opts preprocess;   /* resizing, and the per-image token cap */
	int max_images;                  /* per request */
	int max_image_tokens;            /* per request, all images */
} qw_req_ctx;

typedef enum qw_finish {
	QW_FINISH_NONE = 0,
	QW_FINISH_STOP,                  /* an end-of-sequence token or a stop string */
	QW_FINISH_LENGTH,                /* max_tokens or the context */
} qw_finish;

/* Growing text. */
typedef struct qw_text_buf {
	char *p;
	size_t n, cap;
} qw_text_buf;

typedef struct qw_output {
	const qw_req_ctx *ctx;
	qw_detok detok;
	qw_reasoning split;
	char **stop;                     /* (n_stop,) owned copies */
	size_t *stop_len;
	int n_stop;
	size_t max_stop;                 /* longest stop string */
	qw_text_buf held;                /* answer text not released yet */
	char *scratch;                   /* one token's text, split */
	size_t scratch_cap;
	int generated, max_new, room;    /* tokens so far; allowed by max_tokens; by the context */
	bool ignore_eos;
	qw_finish finish;
} qw_output;

/* Prepares seq (id, tokens, positions, images without their pixels, sampling; the
 * scheduler's fields zeroed) and out from r.  A refusal is QW_E_LIMIT for a request over a
 * limit (images, image tokens, the context), QW_E_ARG for one that is wrong, QW_E_NOMEM
 * when memory ran out (the protocol's qw_error_code_of gives the client's code), and err
 * says why; nothing is left allocated. */
qw_status qw_request_prepare(const qw_req_ctx *c, const qw_request *r, uint64_t id,
			     qw_seq *seq, qw_output *out, qw_err *err);

/* The token ids (malloc'd) a tokenize request's messages or prompt come to, as a submit
 * of them would be prompted: templates rendered, images weighed from their headers to count
 * their pads.  A refusal's status and err say why, as for prepare. */
qw_status qw_request_tokenize(const qw_req_ctx *c, const qw_request *r, int32_t **ids, int *n,
			      qw_err *err);

/* The i-th image of r in prompt order (the seq's images[i]): r->images, then the images in
 * the messages' content; NULL past the last. */
const qw_item *qw_request_image(const qw_request *r, int i);

/* The pixels of one prepared image: data decoded within lim and resized to width x height
 * (the seq's image), into *rgb (malloc'd).  Touches nothing but its arguments, so a thread
 * may run it while the loop goes on. */
qw_status qw_request_image_pixels(const void *data, size_t len, const qw_image_limits *lim,
				  int width, int height, uint8_t **rgb, qw_err *err);

/* Every image of seq still without pixels, decoded here, in turn; a refusal is QW_E_ARG
 * (an image that does not decode) or QW_E_NOMEM, and err names the image. */
qw_status qw_request_decode_images(const qw_req_ctx *c, const qw_request *r, qw_seq *seq,
				   qw_err *err);

/* Frees what prepare gave seq (when it never reached the scheduler). */
void qw_request_seq_free(qw_seq *seq);

/* Feeds the next sampled token: appends released text to answer and reasoning.  Returns
 * true when the request is finished (out->finish says why); whatever it held is then
 * released, less a stop string and what follows it. */
bool qw_output_push(qw_output *out, int32_t token, qw_text_buf *answer, qw_text_buf *reasoning);

void qw_output_free(qw_output *out);

/* Appends n bytes; false when out of memory. */
bool qw_text_append(qw_text_buf *b, const char *s, size_t n);

#endif
