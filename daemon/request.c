/* request.c - preparing a submit, and the text that comes back.  See request.h. */
#include "daemon/request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/positions.h"
#include "kernels/sample.h"

_Static_assert(QW_PROTOCOL_MAX_LOGPROBS == QW_MAX_TOP_LOGPROBS,
	       "the protocol lists as many log-probabilities as the sampler gives");

bool qw_text_append(qw_text_buf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->n + n + 1)
			cap *= 2;
		char *g = realloc(b->p, cap);
		if (!g)
			return false;
		b->p = g;
		b->cap = cap;
	}
	if (n)   /* s may be NULL when there is nothing (an empty buffer's text) */
		memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
	return true;
}

// ---------------------------------------------------------------------------------------
// images

/* An image weighed from its header: what it is resized to and the tokens it takes. */
typedef struct prepared_image {
	int height, width;       /* resized */
	int grid[3];
	int n_tokens;
} prepared_image;

const qw_item *qw_request_image(const qw_request *r, int i)
{
	if (i < r->n_images)
		return &r->images[i];
	i -= r->n_images;
	for (int m = 0; m < r->n_messages; m++)
		for (int k = 0; k < r->messages[m].n_items; k++)
			if (r->messages[m].items[k].kind == QW_ITEM_IMAGE && i-- == 0)
				return &r->messages[m].items[k];
	return NULL;
}

/* Weighs the request's images, in order, from their headers alone: each must be an image
 * within the limits, and their tokens together within the request's; nothing is decoded. */
static qw_status prepare_images(const qw_req_ctx *c, const qw_request *r, int n,
				prepared_image **out, qw_err *err)
{
	*out = NULL;
	if (n == 0)
		return QW_OK;
	if (!c->cfg->has_vision)
		return qw_fail(err, QW_E_ARG, "the model (%s) takes no images", c->cfg->model_type);
	if (n > c->max_images)
		return qw_fail(err, QW_E_LIMIT, "%d images; a request may carry %d", n,
			       c->max_images);
	prepared_image *im = calloc((size_t)n, sizeof *im);
	if (!im)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	const qw_vision_config *vc = &c->cfg->vision;
	int P = vc->patch_size, total = 0;
	for (int i = 0; i < n; i++) {
		const qw_item *item = qw_request_image(r, i);
		int w, h;
		qw_status st = qw_image_probe(item->data, item->len, &c->image_limits, &w, &h, err);
		if (st == QW_OK)
			st = qw_preprocess_plan(h, w, vc, &c->preprocess, &im[i].height, &im[i].width,
						&im[i].n_tokens, err);
		if (st != QW_OK) {
			free(im);
			return qw_err_context(err, "image %d", i + 1);
		}
		im[i].grid[0] = 1;
		im[i].grid[1] = im[i].height / P;
		im[i].grid[2] = im[i].width / P;
		total += im[i].n_tokens;
		if (total > c->max_image_tokens) {
			free(im);
			return qw_fail(err, QW_E_LIMIT, "the images take more than %d image tokens (image "
				       "%d brings them to %d), the most a request may take",
				       c->max_image_tokens, i + 1, total);
		}
	}
	*out = im;
	return QW_OK;
}

qw_status qw_request_image_pixels(const void *data, size_t len, const qw_image_limits *lim,
				  int width, int height, uint8_t **rgb, qw_err *err)
{
	*rgb = NULL;
	qw_image img;
	qw_status st = qw_image_decode(data, len, lim, &img, err);
	if (st != QW_OK)
		return st;
	if (img.width == width && img.height == height) {
		*rgb = img.rgb;
		return QW_OK;
	}
	qw_image resized;
	st = qw_resize_bicubic(&img, height, width, &resized, err);
	qw_image_free(&img);
	if (st == QW_OK)
		*rgb = resized.rgb;
	return st;
}

qw_status qw_request_decode_images(const qw_req_ctx *c, const qw_request *r, qw_seq *seq,
				   qw_err *err)
{
	for (int i = 0; i < seq->n_images; i++) {
		qw_sched_image *im = &seq->images[i];
		const qw_item *item = qw_request_image(r, i);
		if (im->rgb)
			continue;
		qw_status st = qw_request_image_pixels(item->data, item->len, &c->image_limits,
						       im->width, im->height, &im->rgb, err);
		if (st != QW_OK)
			return qw_err_context(err, "image %d", i + 1);
	}
	return QW_OK;
}

/* Expands each image's pad run: a single pad becomes the image's token count; a run of
 * exactly that count stays.  *ids is replaced (malloc'd). */
static qw_status expand_pads(const qw_req_ctx *c, int32_t **ids, int *n,
			     const prepared_image *im, int n_images, qw_err *err)
{
	int32_t pad = c->cfg->has_vision ? c->cfg->image_token_id : -1;
	int runs = 0, total = 0;
	for (int i = 0; i < *n;) {
		if ((*ids)[i] != pad) {
			total++;
			i++;
			continue;
		}
		int j = i;
		while (j < *n && (*ids)[j] == pad)
			j++;
		if (runs >= n_images)
			return qw_fail(err, QW_E_ARG, "the prompt has more image pad runs than the %d "
				       "image%s given", n_images, n_images == 1 ? "" : "s");
		if (j - i != 1 && j - i != im[runs].n_tokens)
			return qw_fail(err, QW_E_ARG, "image %d: a run of %d pad tokens; the image takes "
				       "%d (or give one pad to have it expanded)", runs + 1, j - i,
				       im[runs].n_tokens);
		total += im[runs++].n_tokens;
		i = j;
	}
	if (runs != n_images)
		return qw_fail(err, QW_E_ARG, "%d image%s given, the prompt has %d image pad run%s",
			       n_images, n_images == 1 ? "" : "s", runs, runs == 1 ? "" : "s");
	int32_t *out = malloc((size_t)(total ? total : 1) * sizeof *out);
	if (!out)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	int k = 0, r = 0;
	for (int i = 0; i < *n;) {
		if ((*ids)[i] != pad) {
			out[k++] = (*ids)[i++];
			continue;
		}
		while (i < *n && (*ids)[i] == pad)
			i++;
		for (int t = 0; t < im[r].n_tokens; t++)
			out[k++] = pad;
		r++;
	}
	free(*ids);
	*ids = out;
	*n = total;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// the prompt

/* A NUL-terminated copy of n bytes (which may hold NULs: strndup would stop at the first). */
static char *memdup0(const char *s, size_t n)
{
	char *c = malloc(n + 1);
	if (c) {
		memcpy(c, s, n);
		c[n] = '\0';
	}
	return c;
}

/* The chat template works on C strings, so a NUL in chat text would silently end it there:
 * such text is refused, naming where. */
static qw_status no_nul(const char *s, size_t n, int message, const char *what, int item,
			qw_err *err)
{
	const char *nul = memchr(s, '\0', n);
	if (!nul)
		return QW_OK;
	char where[32] = "";
	if (item > 0)
		snprintf(where, sizeof where, " item %d", item);
	return qw_fail(err, QW_E_ARG, "message %d: the %s%s holds a NUL byte (at byte %zu), which "
		       "chat text cannot carry (HINT: remove it, or send a raw prompt, which keeps "
		       "it)", message, what, where, (size_t)(nul - s));
}

/* The C strings render_chat makes of a request's protocol strings (not NUL-terminated). */
typedef struct cstrs {
	char **p;
	int n, cap;
	bool oom;
} cstrs;

static const char *cstr(cstrs *s, const char *data, size_t len)
{
	char *c = s->n < s->cap ? strndup(data, len) : NULL;
	if (!c) {
		s->oom = true;
		return "";
	}
	return s->p[s->n++] = c;
}

/* Renders chat messages (with tools and the thinking switch); image items get their pad
 * counts.  *text is malloc'd. */
static qw_status render_chat(const qw_req_ctx *c, const qw_request *r, const prepared_image *im,
			     bool generation_prompt, char **text, size_t *len, qw_err *err)
{
	for (int i = 0; i < r->n_messages; i++) {
		const qw_req_message *m = &r->messages[i];
		qw_status st = m->reasoning ? no_nul(m->reasoning, m->reasoning_len, i + 1,
						     "reasoning", 0, err) : QW_OK;
		for (int k = 0; k < m->n_items && st == QW_OK; k++)
			if (m->items[k].kind == QW_ITEM_TEXT)
				st = no_nul(m->items[k].data, m->items[k].len, i + 1, "content", k + 1,
					    err);
		for (int k = 0; k < m->n_tool_calls && st == QW_OK; k++)
			if ((st = no_nul(m->tool_calls[k].name, m->tool_calls[k].name_len, i + 1,
					 "tool call", k + 1, err)) == QW_OK)
				st = no_nul(m->tool_calls[k].arguments, m->tool_calls[k].arguments_len,
					    i + 1, "tool call", k + 1, err);
		if (st != QW_OK)
			return st;
	}
	for (int k = 0; k < r->n_tools; k++) {
		const char *nul = memchr(r->tools[k], '\0', r->tools_len[k]);
		if (nul)
			return qw_fail(err, QW_E_ARG, "tool %d holds a NUL byte (at byte %zu), which the "
				       "chat template cannot carry", k + 1, (size_t)(nul - r->tools[k]));
	}
	size_t n_items = 0, n_calls = 0, n_msgs = r->n_messages > 0 ? (size_t)r->n_messages : 1;
	for (int i = 0; i < r->n_messages; i++) {
		n_items += (size_t)r->messages[i].n_items;
		n_calls += (size_t)r->messages[i].n_tool_calls;
	}
	qw_message *msgs = calloc(n_msgs, sizeof *msgs);
	qw_content *content = calloc(n_items + 1, sizeof *content);
	qw_chat_tool_call *calls = calloc(n_calls + 1, sizeof *calls);
	const char **tools = calloc((size_t)r->n_tools + 1, sizeof *tools);
	cstrs strs = {.cap = (int)(2 * n_msgs + n_items + 2 * n_calls + (size_t)r->n_tools + 1)};
	strs.p = calloc((size_t)strs.cap, sizeof *strs.p);
	int at = 0, call = 0, image = 0;
	qw_status st = msgs && content && calls && tools && strs.p
		       ? QW_OK : qw_fail(err, QW_E_NOMEM, "out of memory");
	for (int i = 0; i < r->n_messages && st == QW_OK; i++) {
		const qw_req_message *m = &r->messages[i];
		msgs[i].role = cstr(&strs, m->role, m->role_len);
		msgs[i].content = content + at;
		msgs[i].n_content = m->n_items;
		msgs[i].tool_calls = calls + call;
		msgs[i].n_tool_calls = m->n_tool_calls;
		if (m->reasoning)
			msgs[i].reasoning = cstr(&strs, m->reasoning, m->reasoning_len);
		for (int k = 0; k < m->n_items; k++, at++) {
			if (m->items[k].kind == QW_ITEM_TEXT) {
				content[at].kind = QW_CONTENT_TEXT;
				content[at].text = cstr(&strs, m->items[k].data, m->items[k].len);
			} else {
				content[at].kind = QW_CONTENT_IMAGE;
				content[at].n_pad = im[image++].n_tokens;
			}
		}
		for (int k = 0; k < m->n_tool_calls; k++, call++) {
			const qw_tool_call *tc = &m->tool_calls[k];
			calls[call].name = cstr(&strs, tc->name, tc->name_len);
			calls[call].arguments = cstr(&strs, tc->arguments, tc->arguments_len);
		}
	}
	for (int i = 0; i < r->n_tools && st == QW_OK; i++)
		tools[i] = cstr(&strs, r->tools[i], r->tools_len[i]);
	if (st == QW_OK && strs.oom)
		st = qw_fail(err, QW_E_NOMEM, "out of memory");
	qw_chat_opts o = {.add_generation_prompt = generation_prompt, .thinking = c->thinking,
			  .thinking_off = r->thinking == QW_THINKING_OFF, .tools = tools,
			  .n_tools = r->n_tools};
	if (st == QW_OK)
		st = qw_chat_render(msgs, r->n_messages, &o, text, len, err);
	for (int i = 0; i < strs.n; i++)
		free(strs.p[i]);
	free(strs.p);
	free(tools);
	free(calls);
	free(content);
	free(msgs);
	return st;
}

/* The prompt's token ids (malloc'd) and its images, in prompt order. */
static qw_status prompt_ids(const qw_req_ctx *c, const qw_request *r, int32_t **ids, int *n,
			    prepared_image **im, int *n_images, qw_err *err)
{
	*ids = NULL;
	*im = NULL;
	*n_images = 0;
	/* the images: in the messages' items, or beside a prompt or token ids */
	int n_img = r->n_images;
	for (int i = 0; i < r->n_messages; i++)
		for (int k = 0; k < r->messages[i].n_items; k++)
			n_img += r->messages[i].items[k].kind == QW_ITEM_IMAGE;
	qw_status st = prepare_images(c, r, n_img, im, err);
	if (st != QW_OK)
		return st;
	*n_images = n_img;
	if ((r->messages || r->prompt) && !c->tok) {
		st = qw_fail(err, QW_E_ARG, "this model has no tokenizer: send token_ids "
			     "(HINT: start qwend with --tokenizer DIR to accept text)");
	} else if (r->messages || r->prompt) {
		char *text = NULL;
		size_t len = r->prompt_len, count = 0;
		if (r->messages)
			st = render_chat(c, r, *im, !r->no_generation_prompt, &text, &len, err);
		if (st == QW_OK)
			st = qw_tokenizer_encode(c->tok, text ? text : r->prompt, len, ids, &count, err);
		free(text);
		*n = (int)count;
		/* chat messages come out expanded; a raw prompt may give one pad per image */
		if (st == QW_OK && r->prompt)
			st = expand_pads(c, ids, n, *im, n_img, err);
	} else {
		*ids = malloc((size_t)r->n_token_ids * sizeof **ids);
		if (!*ids)
			st = qw_fail(err, QW_E_NOMEM, "out of memory");
		else
			memcpy(*ids, r->token_ids, (size_t)r->n_token_ids * sizeof **ids);
		*n = r->n_token_ids;
		if (st == QW_OK)
			st = expand_pads(c, ids, n, *im, n_img, err);
	}
	if (st == QW_OK && *n == 0)
		st = qw_fail(err, QW_E_ARG, "the prompt is empty");
	for (int i = 0; i < *n && st == QW_OK; i++)
		if ((*ids)[i] < 0 || (*ids)[i] >= c->cfg->text.vocab_size)
			st = qw_fail(err, QW_E_ARG, "token %d of the prompt is %d, outside the model's "
				     "vocabulary of %d", i, (*ids)[i], c->cfg->text.vocab_size);
	if (st != QW_OK) {
		free(*ids);
		*ids = NULL;
		free(*im);
		*im = NULL;
	}
	return st;
}

qw_status qw_request_tokenize(const qw_req_ctx *c, const qw_request *r, int32_t **ids, int *n,
			      qw_err *err)
{
	prepared_image *im;
	int n_img;
	qw_status st = prompt_ids(c, r, ids, n, &im, &n_img, err);
	if (st == QW_OK)
		free(im);
	return st;
}

void qw_request_seq_free(qw_seq *seq)
{
	for (int i = 0; i < seq->n_images; i++)
		free(seq->images[i].rgb);
	free(seq->images);
	free(seq->tokens);
	free(seq->positions);
	if (seq->history)
		qw_history_free(seq->history);
	free(seq->history);
	memset(seq, 0, sizeof *seq);
}

static qw_status prepare_output(const qw_req_ctx *c, const qw_request *r, qw_output *out,
				int n_prompt, qw_err *err)
{
	memset(out, 0, sizeof *out);
	out->ctx = c;
	out->ignore_eos = r->ignore_eos;
	out->room = c->max_context - n_prompt;
	if (out->room < 1)
		return qw_fail(err, QW_E_LIMIT, "the prompt has %d tokens; the model's context holds "
			       "%d", n_prompt, c->max_context);
	out->max_new = r->max_tokens > 0 ? r->max_tokens : c->default_max_tokens;
	if (r->max_tokens > out->room)
		return qw_fail(err, QW_E_LIMIT, "the prompt (%d tokens) and max_tokens %d exceed the "
			       "model's context of %d tokens", n_prompt, r->max_tokens,
			       c->max_context);
	if (out->max_new > out->room)
		out->max_new = out->room;
	if (c->tok && c->think_start >= 0 && c->think_end >= 0)
		qw_reasoning_init(&out->split, c->think_start, c->think_end,
				  c->thinking && !(r->messages && r->thinking == QW_THINKING_OFF));
	else
		qw_reasoning_init(&out->split, -2, -2, false);
	if (r->n_stop) {
		out->stop = calloc((size_t)r->n_stop, sizeof *out->stop);
		out->stop_len = calloc((size_t)r->n_stop, sizeof *out->stop_len);
		if (!out->stop || !out->stop_len)
			return qw_fail(err, QW_E_NOMEM, "out of memory");
		for (int i = 0; i < r->n_stop; i++) {
			out->stop[i] = memdup0(r->stop[i], r->stop_len[i]);
			if (!out->stop[i])
				return qw_fail(err, QW_E_NOMEM, "out of memory");
			out->stop_len[i] = r->stop_len[i];
			out->n_stop = i + 1;
			if (r->stop_len[i] > out->max_stop)
				out->max_stop = r->stop_len[i];
		}
	}
	if (c->tok) {
		out->scratch_cap = 2 * qw_detok_max_out(c->tok) + 64;
		out->scratch = malloc(3 * out->scratch_cap);
		if (!out->scratch)
			return qw_fail(err, QW_E_NOMEM, "out of memory");
	}
	return QW_OK;
}

qw_status qw_request_prepare(const qw_req_ctx *c, const qw_request *r, uint64_t id,
			     qw_seq *seq, qw_output *out, qw_err *err)
{
	memset(seq, 0, sizeof *seq);
	memset(out, 0, sizeof *out);
	int32_t *ids;
	int n = 0, n_img = 0;
	prepared_image *im;
	qw_status st = prompt_ids(c, r, &ids, &n, &im, &n_img, err);
	if (st != QW_OK)
		return st;
	seq->id = id;
	seq->tokens = ids;
	seq->n_tokens = seq->n_prompt = seq->cap_tokens = n;
	if (n_img) {
		int32_t grids[3 * 64], *g = n_img <= 64 ? grids : malloc((size_t)n_img * 3 * sizeof *g);
		seq->positions = malloc((size_t)n * 3 * sizeof *seq->positions);
		seq->images = calloc((size_t)n_img, sizeof *seq->images);
		if (!g || !seq->positions || !seq->images)
			st = qw_fail(err, QW_E_NOMEM, "out of memory");
		for (int i = 0; g && i < n_img; i++)
			memcpy(g + 3 * i, im[i].grid, sizeof im[i].grid);
		if (st == QW_OK)
			st = qw_mrope_positions(c->cfg, ids, n, g, n_img, seq->positions,
						&seq->rope_delta, err);
		if (g != grids)
			free(g);
		/* hand the resized images to the sequence, with where their pads start */
		int at = 0;
		for (int i = 0; st == QW_OK && i < n_img; i++) {
			while (ids[at] != c->cfg->image_token_id)
				at++;
			seq->images[i] = (qw_sched_image){.pos = at, .n_tokens = im[i].n_tokens,
							  .grid = {im[i].grid[0], im[i].grid[1],
								   im[i].grid[2]},
							  .height = im[i].height, .width = im[i].width};
			seq->n_images = i + 1;
			at += im[i].n_tokens;
		}
	}
	free(im);
	if (st == QW_OK)
		st = prepare_output(c, r, out, n, err);
	if (st != QW_OK) {
		qw_request_seq_free(seq);
		qw_output_free(out);
		return st;
	}
	bool greedy = r->greedy || (r->temperature < 0 ? c->temperature : r->temperature) == 0;
	seq->sampling = (qw_sampling){
		.temperature = greedy ? 0.0f : (float)(r->temperature < 0 ? c->temperature
									  : r->temperature),
		.top_k = r->top_k >= 0 ? r->top_k : c->top_k,
		.top_p = (float)(r->top_p > 0 ? r->top_p : c->top_p),
		.seed = r->has_seed ? r->seed : id * 0x9e3779b97f4a7c15ull,
		.min_p = (float)r->min_p,
		.repetition_penalty = (float)r->repetition_penalty,
		.frequency_penalty = (float)r->frequency_penalty,
		.presence_penalty = (float)r->presence_penalty,
		.logprobs = r->logprobs,
		.top_logprobs = r->logprobs ? r->top_logprobs : 0,
	};
	if (qw_sample_penalized(&seq->sampling)) {
		/* the prompt matters to the repetition penalty alone */
		float rep = seq->sampling.repetition_penalty;
		if (!(seq->history = malloc(sizeof *seq->history)) ||
		    qw_history_init(seq->history, seq->tokens, seq->n_prompt,
				    rep > 0 && rep != 1.0f, err) != QW_OK) {
			free(seq->history);
			seq->history = NULL;
			qw_request_seq_free(seq);
			qw_output_free(out);
			return qw_fail(err, QW_E_NOMEM, "out of memory for the penalties' history");
		}
	}
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// output

void qw_output_free(qw_output *out)
{
	for (int i = 0; i < out->n_stop; i++)
		free(out->stop[i]);
	free(out->stop);
	free(out->stop_len);
	free(out->held.p);
	free(out->scratch);
	memset(out, 0, sizeof *out);
}

static bool is_eos(const qw_output *o, int32_t token)
{
	for (int i = 0; i < o->ctx->n_eos; i++)
		if (o->ctx->eos[i] == token)
			return true;
	return false;
}

/* Releases held answer text: all of it when finishing, else what cannot begin a stop
 * string.  A stop string found ends the request; it and what follows are dropped. */
static void release_held(qw_output *o, qw_text_buf *answer, bool all)
{
	qw_text_buf *h = &o->held;
	size_t cut = h->n;
	for (int i = 0; i < o->n_stop; i++) {
		char *at = h->n ? memmem(h->p, h->n, o->stop[i], o->stop_len[i]) : NULL;
		if (at && (size_t)(at - h->p) < cut) {
			cut = (size_t)(at - h->p);
			o->finish = QW_FINISH_STOP;
		}
	}
	size_t keep = 0;
	if (o->finish == QW_FINISH_NONE && !all) {
		/* the longest tail that is a start of some stop string stays held */
		for (size_t k = h->n < o->max_stop ? h->n : o->max_stop; k > 0 && !keep; k--)
			for (int i = 0; i < o->n_stop && !keep; i++)
				if (k < o->stop_len[i] && memcmp(h->p + h->n - k, o->stop[i], k) == 0)
					keep = k;
		cut = h->n - keep;
	}
	qw_text_append(answer, h->p, cut);
	if (o->finish != QW_FINISH_NONE || all) {
		h->n = 0;
	} else {
		memmove(h->p, h->p + cut, keep);
		h->n = keep;
	}
}

bool qw_output_push(qw_output *o, int32_t token, qw_text_buf *answer, qw_text_buf *reasoning)
{
	const qw_req_ctx *c = o->ctx;
	o->generated++;
	bool eos = !o->ignore_eos && is_eos(o, token);
	if (c->tok && !eos) {
		char *text = o->scratch, *rsn = text + o->scratch_cap, *ans = rsn + o->scratch_cap;
		size_t len = 0, n_r = 0, n_a = 0;
		bool think = token == c->think_start || token == c->think_end;
		if (think || !qw_tokenizer_is_special(c->tok, token)) {
			if (!think && qw_detok_push(&o->detok, c->tok, token, text, o->scratch_cap, &len,
						    NULL) != QW_OK)
				len = 0;   /* an id outside the tokenizer: no text */
			qw_reasoning_push(&o->split, token, text, len, rsn, &n_r, ans, &n_a);
		}
		qw_text_append(reasoning, rsn, n_r);
		qw_text_append(&o->held, ans, n_a);
	}
	if (eos)
		o->finish = QW_FINISH_STOP;
	else if (o->generated >= o->max_new || o->generated >= o->room)
		o->finish = QW_FINISH_LENGTH;
	if (c->tok && o->finish != QW_FINISH_NONE) {
		/* a character left incomplete at the end shows as U+FFFD */
		char tail[16];
		size_t n = qw_detok_finish(&o->detok, tail);
		qw_text_append(o->split.in_reasoning ? reasoning : &o->held, tail, n);
	}
	if (c->tok)
		release_held(o, answer, o->finish != QW_FINISH_NONE);
	return o->finish != QW_FINISH_NONE;
}
