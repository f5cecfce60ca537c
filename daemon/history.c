/* history.c - distinct tokens with their counts.  See history.h. */
#include "daemon/history.h"

#include <stdlib.h>
#include <string.h>

static uint32_t hash_token(int32_t t)
{
	uint32_t x = (uint32_t)t * 0x9e3779b1u;
	return x ^ (x >> 15);
}

/* The slot of token in the index: its own, or the empty one where it would go. */
static int slot_of(const qw_history *h, int32_t token)
{
	int mask = h->index_cap - 1, i = (int)(hash_token(token) & (uint32_t)mask);
	while (h->index[i] && h->entries[h->index[i] - 1].token != token)
		i = (i + 1) & mask;
	return i;
}

/* Room for one more entry, the index kept under half full. */
static bool reserve(qw_history *h)
{
	if (h->n == h->cap) {
		int cap = h->cap ? 2 * h->cap : 64;
		qw_token_count *g = realloc(h->entries, (size_t)cap * sizeof *g);
		if (!g)
			return false;
		h->entries = g;
		h->cap = cap;
	}
	if (2 * (h->n + 1) < h->index_cap)
		return true;
	int cap = h->index_cap ? 2 * h->index_cap : 128;
	int32_t *index = calloc((size_t)cap, sizeof *index);
	if (!index)
		return false;
	free(h->index);
	h->index = index;
	h->index_cap = cap;
	for (int e = 0; e < h->n; e++)
		h->index[slot_of(h, h->entries[e].token)] = e + 1;
	return true;
}

/* The entry of token, made (with count 0) if new; NULL when out of memory. */
static qw_token_count *entry(qw_history *h, int32_t token)
{
	if (h->index_cap) {
		int i = slot_of(h, token);
		if (h->index[i])
			return &h->entries[h->index[i] - 1];
	}
	if (!reserve(h))
		return NULL;
	h->entries[h->n] = (qw_token_count){token, 0};
	h->index[slot_of(h, token)] = ++h->n;
	return &h->entries[h->n - 1];
}

qw_status qw_history_init(qw_history *h, const int32_t *prompt, int n_prompt, bool with_prompt,
			  qw_err *err)
{
	memset(h, 0, sizeof *h);
	for (int i = 0; with_prompt && i < n_prompt; i++) {
		qw_token_count *e = entry(h, prompt[i]);
		if (!e) {
			qw_history_free(h);
			return qw_fail(err, QW_E_NOMEM, "out of memory for the penalties' history");
		}
		e->count |= QW_IN_PROMPT;
	}
	return QW_OK;
}

bool qw_history_generated(qw_history *h, int32_t token)
{
	qw_token_count *e = entry(h, token);
	if (!e)
		return false;
	if (QW_GENERATED(e->count) < QW_GENERATED(~0u))
		e->count++;
	return true;
}

void qw_history_free(qw_history *h)
{
	free(h->entries);
	free(h->index);
	memset(h, 0, sizeof *h);
}
