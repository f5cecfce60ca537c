/* step.c - step plans and results as flat records.  See step.h. */
#include "ipc/step.h"

#include <string.h>

#define PLAN_MAGIC 0x4e414c50u     /* "PLAN" */
#define RESULT_MAGIC 0x544c5352u   /* "RSLT" */

typedef struct plan_header {
	uint32_t magic;
	int32_t kind;
	uint64_t step;
	int32_t n_tokens, n_seqs, n_logits, n_images, n_drop, n_blocks;
} plan_header;

typedef struct result_header {
	uint32_t magic;
	int32_t n_logits;
	uint64_t step;
	int32_t has_logprobs;    /* 1: n_logits qw_sample_logprobs follow the tokens */
	int32_t pad;
} result_header;

static size_t align8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

/* The arrays of a plan, in record order: where each lives and how many bytes it takes. */
typedef struct plan_array {
	const void **field;
	size_t bytes;
} plan_array;

static int plan_arrays(qw_step_plan *p, plan_array *a)
{
	size_t T = (size_t)p->n_tokens, i4 = sizeof(int32_t);
	int n = 0;
	a[n++] = (plan_array){(const void **)&p->token_ids, T * i4};
	a[n++] = (plan_array){(const void **)&p->positions, 3 * T * i4};
	a[n++] = (plan_array){(const void **)&p->seq, T * i4};
	a[n++] = (plan_array){(const void **)&p->kv_index, T * i4};
	a[n++] = (plan_array){(const void **)&p->slot, T * i4};
	a[n++] = (plan_array){(const void **)&p->block_start,
			      p->n_seqs ? ((size_t)p->n_seqs + 1) * i4 : 0};
	a[n++] = (plan_array){(const void **)&p->blocks, (size_t)p->n_blocks * i4};
	a[n++] = (plan_array){(const void **)&p->logit_rows, (size_t)p->n_logits * i4};
	a[n++] = (plan_array){(const void **)&p->sampling, (size_t)p->n_logits * sizeof(qw_sampling)};
	a[n++] = (plan_array){(const void **)&p->history,
			      (size_t)p->n_logits * sizeof(qw_step_history)};
	a[n++] = (plan_array){(const void **)&p->images,
			      (size_t)p->n_images * sizeof(qw_step_image)};
	a[n++] = (plan_array){(const void **)&p->drop, (size_t)p->n_drop * sizeof(uint64_t)};
	return n;
}

size_t qw_step_plan_size(const qw_step_plan *p)
{
	plan_array a[16];
	qw_step_plan copy = *p;
	int n = plan_arrays(&copy, a);
	size_t size = align8(sizeof(plan_header));
	for (int i = 0; i < n; i++)
		size += align8(a[i].bytes);
	return size;
}

size_t qw_step_plan_max_size(int max_tokens, int max_seqs, int max_blocks, int max_drop)
{
	qw_step_plan p = {.n_tokens = max_tokens, .n_seqs = max_seqs, .n_logits = max_seqs,
			  .n_images = max_tokens, .n_drop = max_drop, .n_blocks = max_blocks};
	return qw_step_plan_size(&p);
}

void qw_step_plan_write(const qw_step_plan *p, void *buf)
{
	plan_header h = {PLAN_MAGIC, p->kind, p->step, p->n_tokens, p->n_seqs, p->n_logits,
			 p->n_images, p->n_drop, p->n_blocks};
	uint8_t *at = buf;
	memcpy(at, &h, sizeof h);
	at += align8(sizeof h);
	plan_array a[16];
	qw_step_plan copy = *p;
	int n = plan_arrays(&copy, a);
	for (int i = 0; i < n; i++) {
		if (a[i].bytes)
			memcpy(at, *a[i].field, a[i].bytes);
		memset(at + a[i].bytes, 0, align8(a[i].bytes) - a[i].bytes);
		at += align8(a[i].bytes);
	}
}

static qw_status bad(qw_err *err, const char *what)
{
	return qw_fail(err, QW_E_IO, "step plan: %s", what);
}

/* Everything in the plan that indexes something else must stay inside it. */
static qw_status check_plan(const qw_step_plan *p, qw_err *err)
{
	int T = p->n_tokens;
	for (int t = 0; t < T; t++) {
		if (p->seq[t] < 0 || p->seq[t] >= p->n_seqs)
			return bad(err, "a token of a sequence the step does not have");
		if (p->kv_index[t] < 0 || p->slot[t] < 0)
			return bad(err, "a negative KV index or cache slot");
	}
	if (p->block_start[0] != 0 || p->block_start[p->n_seqs] != p->n_blocks)
		return bad(err, "block table offsets that do not span the blocks");
	for (int s = 0; s < p->n_seqs; s++)
		if (p->block_start[s + 1] < p->block_start[s])
			return bad(err, "block table offsets that go backwards");
	for (int i = 0; i < p->n_blocks; i++)
		if (p->blocks[i] < 0)
			return bad(err, "a negative block id");
	for (int i = 0; i < p->n_logits; i++) {
		if (p->logit_rows[i] < 0 || p->logit_rows[i] >= T)
			return bad(err, "a logit row outside the step");
		if (p->history[i].n < 0)
			return bad(err, "a history of a negative length");
	}
	int prev_end = 0;
	for (int i = 0; i < p->n_images; i++) {
		const qw_step_image *im = &p->images[i];
		if (im->count < 1 || im->first < 0 || im->first + im->count > im->n_tokens ||
		    im->row < prev_end || im->row + im->count > T || im->height < 1 || im->width < 1)
			return bad(err, "an image segment outside its image or the step, or out of order");
		prev_end = im->row + im->count;
	}
	return QW_OK;
}

qw_status qw_step_plan_read(const void *buf, size_t len, qw_step_plan *out, qw_err *err)
{
	plan_header h;
	memset(out, 0, sizeof *out);
	if (len < sizeof h || ((uintptr_t)buf & 7))
		return bad(err, "a record too short or misaligned");
	memcpy(&h, buf, sizeof h);
	if (h.magic != PLAN_MAGIC || (h.kind != QW_STEP_RUN && h.kind != QW_STEP_STOP))
		return bad(err, "not a step plan");
	const int32_t big = 1 << 28;
	if (h.n_tokens < 0 || h.n_seqs < 0 || h.n_logits < 0 || h.n_images < 0 || h.n_drop < 0 ||
	    h.n_blocks < 0 || h.n_tokens > big || h.n_seqs > big || h.n_logits > big ||
	    h.n_images > big || h.n_drop > big || h.n_blocks > big ||
	    (h.kind == QW_STEP_RUN && (h.n_tokens < 1 || h.n_seqs < 1)))
		return bad(err, "impossible counts");
	*out = (qw_step_plan){.step = h.step, .kind = h.kind, .n_tokens = h.n_tokens,
			      .n_seqs = h.n_seqs, .n_logits = h.n_logits, .n_images = h.n_images,
			      .n_drop = h.n_drop, .n_blocks = h.n_blocks};
	if (qw_step_plan_size(out) != len)
		return bad(err, "a record whose length does not match its counts");
	const uint8_t *at = (const uint8_t *)buf + align8(sizeof h);
	plan_array a[16];
	int n = plan_arrays(out, a);
	for (int i = 0; i < n; i++) {
		*a[i].field = at;
		at += align8(a[i].bytes);
	}
	return h.kind == QW_STEP_RUN ? check_plan(out, err) : QW_OK;
}

size_t qw_step_result_size(const qw_step_result *r)
{
	size_t n = (size_t)r->n_logits;
	return align8(sizeof(result_header)) + align8(n * sizeof(int32_t)) +
	       (r->logprobs ? align8(n * sizeof(qw_sample_logprobs)) : 0);
}

size_t qw_step_result_max_size(int max_logits)
{
	size_t n = (size_t)max_logits;
	return align8(sizeof(result_header)) + align8(n * sizeof(int32_t)) +
	       align8(n * sizeof(qw_sample_logprobs));
}

void qw_step_result_write(const qw_step_result *r, void *buf)
{
	result_header h = {RESULT_MAGIC, r->n_logits, r->step, r->logprobs != NULL, 0};
	uint8_t *at = buf;
	memcpy(at, &h, sizeof h);
	at += align8(sizeof h);
	size_t n = (size_t)r->n_logits;
	if (n)
		memcpy(at, r->tokens, n * sizeof(int32_t));
	at += align8(n * sizeof(int32_t));
	if (r->logprobs && n)
		memcpy(at, r->logprobs, n * sizeof(qw_sample_logprobs));
}

qw_status qw_step_result_read(const void *buf, size_t len, qw_step_result *out, qw_err *err)
{
	result_header h;
	memset(out, 0, sizeof *out);
	if (len < sizeof h || ((uintptr_t)buf & 7))
		return qw_fail(err, QW_E_IO, "step result: a record too short or misaligned");
	memcpy(&h, buf, sizeof h);
	const uint8_t *at = (const uint8_t *)buf + align8(sizeof h);
	*out = (qw_step_result){.step = h.step, .n_logits = h.n_logits};
	if (h.has_logprobs == 1)   /* where they would be, for the length */
		out->logprobs = (const qw_sample_logprobs *)at;
	if (h.magic != RESULT_MAGIC || h.n_logits < 0 || (h.has_logprobs & ~1) ||
	    qw_step_result_size(out) != len) {
		*out = (qw_step_result){0};
		return qw_fail(err, QW_E_IO, "step result: not a result record, or a length that "
			       "does not match its count");
	}
	out->tokens = (const int32_t *)at;
	if (out->logprobs) {
		out->logprobs = (const qw_sample_logprobs *)(at + align8((size_t)h.n_logits *
									sizeof(int32_t)));
		for (int i = 0; i < h.n_logits; i++)
			if (out->logprobs[i].n_top < 0 || out->logprobs[i].n_top > QW_MAX_TOP_LOGPROBS)
				return qw_fail(err, QW_E_IO, "step result: row %d lists %d "
					       "log-probabilities", i, out->logprobs[i].n_top);
	}
	return QW_OK;
}
