/* vision_store.c - stage 0's tower and image features in fixed memory.  See vision_store.h. */
#include "daemon/vision_store.h"

#include <stdlib.h>
#include <string.h>

#include "loader/dtype.h"

qw_status qw_vision_store_init(qw_vision_store *s, qw_backend *be, const qw_config *cfg,
			       int max_image_tokens, int cap_tokens, qw_err *err)
{
	const qw_vision_config *vc = &cfg->vision;
	memset(s, 0, sizeof *s);
	s->be = be;
	s->cfg = cfg;
	s->elem = qw_dtype_size(be->act_dtype);
	s->cap = cap_tokens;
	s->max_rows = max_image_tokens * vc->spatial_merge_size * vc->spatial_merge_size;
	s->n_out = 1 + vc->n_deepstack;
	qw_status st = qw_vision_scratch_alloc(be, cfg, s->max_rows, &s->scratch, err);
	for (int j = 0; j < s->n_out && st == QW_OK; j++)
		st = be->act_alloc(be, cap_tokens, cfg->text.hidden_size, &s->out[j], err);
	if (st != QW_OK)
		qw_vision_store_free(s);
	return st;
}

void qw_vision_store_free(qw_vision_store *s)
{
	if (!s->be)
		return;
	qw_vision_scratch_free(s->be, &s->scratch);
	for (int j = 0; j < s->n_out; j++)
		if (s->out[j].data)
			s->be->act_free(s->be, &s->out[j]);
	free(s->runs);
	memset(s, 0, sizeof *s);
}

int qw_vision_store_tokens_in(const qw_config *cfg, size_t elem, uint64_t bytes, int max)
{
	uint64_t row = (uint64_t)(1 + cfg->vision.n_deepstack) * (uint64_t)cfg->text.hidden_size *
		       elem;
	uint64_t tokens = row ? bytes / row : 0;
	return tokens < (uint64_t)max ? (int)tokens : max;
}

uint64_t qw_vision_store_bytes(const qw_vision_store *s)
{
	if (!s->be)
		return 0;
	return qw_vision_scratch_bytes(s->cfg, s->max_rows, s->elem) +
	       (uint64_t)s->n_out * (uint64_t)s->cap * (uint64_t)s->cfg->text.hidden_size * s->elem;
}

int qw_vision_store_held(const qw_vision_store *s)
{
	int held = 0;
	for (int i = 0; i < s->n_runs; i++)
		held += s->runs[i].tokens;
	return held;
}

/* Rows [from, from + n) of every output to [to, to + n), to < from, in pieces that do not
 * overlap (each piece's rows are read before a later piece writes over them). */
static qw_status move_rows(qw_vision_store *s, int from, int to, int n, qw_err *err)
{
	int step = from - to;
	for (int r = 0; r < n; r += step) {
		int k = n - r < step ? n - r : step;
		for (int j = 0; j < s->n_out; j++) {
			qw_act dst = qw_act_rows(&s->out[j], to + r, k, s->elem);
			qw_act src = qw_act_rows(&s->out[j], from + r, k, s->elem);
			QW_TRY(s->be->act_copy(s->be, &dst, &src, err));
		}
	}
	return QW_OK;
}

/* Where a run of n rows goes: the first gap that holds it, else the end once every run has
 * been moved down.  runs stay in the order of their rows; *at is its index among them. */
static qw_status place(qw_vision_store *s, int n, int *first, int *at, qw_err *err)
{
	int end = 0;
	for (int i = 0; i < s->n_runs; i++) {
		if (s->runs[i].first - end >= n) {
			*first = end;
			*at = i;
			return QW_OK;
		}
		end = s->runs[i].first + s->runs[i].tokens;
	}
	if (s->cap - end >= n) {
		*first = end;
		*at = s->n_runs;
		return QW_OK;
	}
	int held = qw_vision_store_held(s);
	if (s->cap - held < n)
		return qw_fail(err, QW_E_LIMIT, "stage 0 holds the features of %d image tokens and "
			       "has room for %d in all: no room for an image of %d (the daemon keeps "
			       "the images split across steps within the store)", held, s->cap, n);
	end = 0;
	for (int i = 0; i < s->n_runs; i++) {
		qw_vision_run *r = &s->runs[i];
		if (r->first > end) {
			QW_TRY(move_rows(s, r->first, end, r->tokens, err));
			r->first = end;
			s->moves++;
		}
		end += r->tokens;
	}
	*first = end;
	*at = s->n_runs;
	return QW_OK;
}

qw_status qw_vision_store_see(qw_vision_store *s, const qw_weights *w, uint64_t handle,
			      const int32_t grid[3], const float *pixels, int rows, qw_err *err)
{
	const qw_vision_config *vc = &s->cfg->vision;
	int group = vc->spatial_merge_size * vc->spatial_merge_size, tokens = rows / group;
	if (!s->be)
		return qw_fail(err, QW_E_LIMIT, "an image came to a stage that reserved no memory for "
			       "the vision tower");
	if (rows > s->max_rows)
		return qw_fail(err, QW_E_LIMIT, "an image of %d patches; stage 0 reserved the vision "
			       "tower's memory for %d (HINT: the largest image is set by "
			       "max-image-tokens at start)", rows, s->max_rows);
	if (s->n_runs == s->cap_runs) {
		int cap = s->cap_runs ? 2 * s->cap_runs : 8;
		qw_vision_run *grown = realloc(s->runs, (size_t)cap * sizeof *grown);
		if (!grown)
			return qw_fail(err, QW_E_NOMEM, "out of memory");
		s->runs = grown;
		s->cap_runs = cap;
	}
	int first = 0, at = 0;
	QW_TRY(place(s, tokens, &first, &at, err));
	qw_vision_out out = {0};
	for (int j = 0; j < s->n_out; j++) {
		qw_act view = qw_act_rows(&s->out[j], first, tokens, s->elem);
		if (j == 0)
			out.embeds = view;
		else
			out.deepstack[j - 1] = view;
	}
	QW_TRY(qw_vision_forward_into(s->be, s->cfg, w, grid, 1, pixels, rows, &s->scratch, NULL,
				      NULL, &out, err));
	memmove(&s->runs[at + 1], &s->runs[at], (size_t)(s->n_runs - at) * sizeof *s->runs);
	s->runs[at] = (qw_vision_run){handle, first, tokens};
	s->n_runs++;
	return QW_OK;
}

qw_status qw_vision_store_warm_up(qw_vision_store *s, const qw_weights *w, qw_err *err)
{
	const qw_vision_config *vc = &s->cfg->vision;
	int m = vc->spatial_merge_size, rows = s->max_rows;
	int cols = vc->in_channels * vc->temporal_patch_size * vc->patch_size * vc->patch_size;
	float *pixels = calloc((size_t)rows * (size_t)cols, sizeof *pixels);
	if (!pixels)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	const int32_t grid[3] = {1, m, rows / m};   /* a strip of the largest image's patches */
	qw_status st = qw_vision_store_see(s, w, UINT64_MAX, grid, pixels, rows, err);
	qw_vision_store_forget(s, UINT64_MAX);
	free(pixels);
	return st;
}

static int find_run(const qw_vision_store *s, uint64_t handle)
{
	for (int i = 0; i < s->n_runs; i++)
		if (s->runs[i].handle == handle)
			return i;
	return -1;
}

bool qw_vision_store_find(const qw_vision_store *s, uint64_t handle, qw_vision_out *out)
{
	int i = find_run(s, handle);
	if (i < 0)
		return false;
	memset(out, 0, sizeof *out);
	const qw_vision_run *r = &s->runs[i];
	out->tokens = r->tokens;
	out->n_deepstack = s->n_out - 1;
	out->embeds = qw_act_rows(&s->out[0], r->first, r->tokens, s->elem);
	for (int j = 1; j < s->n_out; j++)
		out->deepstack[j - 1] = qw_act_rows(&s->out[j], r->first, r->tokens, s->elem);
	return true;
}

void qw_vision_store_forget(qw_vision_store *s, uint64_t handle)
{
	int i = find_run(s, handle);
	if (i < 0)
		return;
	memmove(&s->runs[i], &s->runs[i + 1], (size_t)(s->n_runs - i - 1) * sizeof *s->runs);
	s->n_runs--;
}
