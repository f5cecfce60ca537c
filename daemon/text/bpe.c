/* bpe.c - byte-level BPE vocabulary, merges and word merging.  See bpe.h. */
#include "daemon/text/bpe.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------
// open-addressing hash tables

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
	uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return mix64(h);
}

/* pair (a, b) -> (rank, merged id) */
typedef struct merge_slot {
	uint64_t key;      /* (a << 32 | b) + 1; 0 = empty */
	int32_t rank, id;
} merge_slot;

struct qw_bpe {
	int32_t n_tokens;
	uint8_t *blob;               /* every token's bytes, back to back */
	uint32_t *tok_off, *tok_len; /* (n_tokens,) into blob; len 0 = no such id */
	int32_t *vocab_slots;        /* open addressing: token ids keyed by their bytes; -1 empty */
	size_t vocab_mask;
	merge_slot *merges;
	size_t merge_mask;
	int32_t byte_id[256];        /* the token of each single byte */
};

int32_t qw_bpe_lookup(const qw_bpe *b, const uint8_t *bytes, size_t len)
{
	for (size_t i = hash_bytes(bytes, len) & b->vocab_mask;; i = (i + 1) & b->vocab_mask) {
		int32_t id = b->vocab_slots[i];
		if (id < 0)
			return -1;
		if (b->tok_len[id] == len && memcmp(b->blob + b->tok_off[id], bytes, len) == 0)
			return id;
	}
}

static const merge_slot *find_merge(const qw_bpe *b, int32_t a, int32_t c)
{
	uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)c) + 1;
	for (size_t i = mix64(key) & b->merge_mask;; i = (i + 1) & b->merge_mask) {
		if (b->merges[i].key == key)
			return &b->merges[i];
		if (b->merges[i].key == 0)
			return NULL;
	}
}

int32_t qw_bpe_vocab_size(const qw_bpe *b)
{
	return b->n_tokens;
}

const uint8_t *qw_bpe_bytes(const qw_bpe *b, int32_t id, size_t *len)
{
	if (id < 0 || id >= b->n_tokens || b->tok_len[id] == 0)
		return NULL;
	*len = b->tok_len[id];
	return b->blob + b->tok_off[id];
}

// ---------------------------------------------------------------------------------------
// the byte-level alphabet (GPT-2's bytes_to_unicode)

uint32_t qw_bytelevel_char(uint8_t v)
{
	if ((v >= 33 && v <= 126) || (v >= 161 && v <= 172) || v >= 174)
		return v;
	/* the other 68 bytes, in order, become 256, 257, ... */
	uint32_t n = 0;
	for (uint32_t u = 0; u < v; u++)
		if (!((u >= 33 && u <= 126) || (u >= 161 && u <= 172) || u >= 174))
			n++;
	return 256 + n;
}

/* Decodes a token string of byte-level characters into raw bytes; false if some character
 * is not in the alphabet or the string is not UTF-8. */
static bool bytelevel_decode(const char *s, const int16_t *char_to_byte, uint8_t *out,
			     size_t *len)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t n = 0;
	while (*p) {
		uint32_t cp;
		if (p[0] < 0x80) {
			cp = p[0];
			p += 1;
		} else if ((p[0] & 0xe0) == 0xc0 && (p[1] & 0xc0) == 0x80) {
			cp = ((uint32_t)(p[0] & 0x1f) << 6) | (p[1] & 0x3f);
			p += 2;
		} else {
			return false;                 /* the alphabet lies below U+0800 */
		}
		if (cp >= 512 || char_to_byte[cp] < 0)
			return false;
		out[n++] = (uint8_t)char_to_byte[cp];
	}
	*len = n;
	return true;
}

// ---------------------------------------------------------------------------------------
// loading

static size_t pow2_at_least(size_t n)
{
	size_t p = 1024;
	while (p < n)
		p <<= 1;
	return p;
}

static qw_status load_vocab(qw_bpe *b, json_t *vocab, const char *label, const int16_t *c2b,
			    qw_err *err)
{
	size_t n = json_object_size(vocab), blob_len = 0;
	const char *key;
	json_t *val;
	int32_t max_id = -1;
	json_object_foreach(vocab, key, val) {
		if (!json_is_integer(val) || json_integer_value(val) < 0 ||
		    json_integer_value(val) >= (1 << 24))
			return qw_fail(err, QW_E_CONFIG, "%s: model.vocab['%s'] is not a token id",
				       label, key);
		if (json_integer_value(val) > max_id)
			max_id = (int32_t)json_integer_value(val);
		blob_len += strlen(key);
	}
	b->n_tokens = max_id + 1;
	b->blob = malloc(blob_len + 1);
	b->tok_off = calloc((size_t)b->n_tokens + 1, sizeof *b->tok_off);
	b->tok_len = calloc((size_t)b->n_tokens + 1, sizeof *b->tok_len);
	b->vocab_mask = pow2_at_least(2 * n) - 1;
	b->vocab_slots = malloc((b->vocab_mask + 1) * sizeof *b->vocab_slots);
	if (!b->blob || !b->tok_off || !b->tok_len || !b->vocab_slots)
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory for the vocabulary", label);
	memset(b->vocab_slots, 0xff, (b->vocab_mask + 1) * sizeof *b->vocab_slots);
	size_t used = 0;
	json_object_foreach(vocab, key, val) {
		int32_t id = (int32_t)json_integer_value(val);
		size_t len;
		if (!bytelevel_decode(key, c2b, b->blob + used, &len) || len == 0)
			return qw_fail(err, QW_E_CONFIG, "%s: model.vocab: token '%s' (id %d) is not "
				       "written in the byte-level alphabet", label, key, id);
		if (b->tok_len[id])
			return qw_fail(err, QW_E_CONFIG, "%s: model.vocab: id %d is given twice", label,
				       id);
		if (qw_bpe_lookup(b, b->blob + used, len) >= 0)
			return qw_fail(err, QW_E_CONFIG, "%s: model.vocab: token '%s' is given twice",
				       label, key);
		b->tok_off[id] = (uint32_t)used;
		b->tok_len[id] = (uint32_t)len;
		size_t i = hash_bytes(b->blob + used, len) & b->vocab_mask;
		while (b->vocab_slots[i] >= 0)
			i = (i + 1) & b->vocab_mask;
		b->vocab_slots[i] = id;
		used += len;
	}
	for (int v = 0; v < 256; v++) {
		uint8_t byte = (uint8_t)v;
		if ((b->byte_id[v] = qw_bpe_lookup(b, &byte, 1)) < 0)
			return qw_fail(err, QW_E_CONFIG, "%s: model.vocab has no token for byte 0x%02x "
				       "(a byte-level vocabulary needs all 256)", label, v);
	}
	return QW_OK;
}

/* One merge entry: ["a", "b"] (current format) or "a b" (older). */
static bool merge_parts(json_t *m, const char **a, const char **c, char *buf, size_t cap)
{
	if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
	    json_is_string(json_array_get(m, 1))) {
		*a = json_string_value(json_array_get(m, 0));
		*c = json_string_value(json_array_get(m, 1));
		return true;
	}
	if (!json_is_string(m) || strlen(json_string_value(m)) >= cap)
		return false;
	snprintf(buf, cap, "%s", json_string_value(m));
	char *space = strchr(buf, ' ');
	if (!space || strchr(space + 1, ' '))
		return false;
	*space = '\0';
	*a = buf;
	*c = space + 1;
	return true;
}

static qw_status load_merges(qw_bpe *b, json_t *merges, const char *label, const int16_t *c2b,
			     qw_err *err)
{
	size_t n = json_array_size(merges);
	b->merge_mask = pow2_at_least(2 * n) - 1;
	b->merges = calloc(b->merge_mask + 1, sizeof *b->merges);
	uint8_t *tmp = malloc(1024);
	if (!b->merges || !tmp) {
		free(tmp);
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory for the merges", label);
	}
	qw_status st = QW_OK;
	for (size_t r = 0; r < n && st == QW_OK; r++) {
		const char *a, *c;
		char buf[512];
		size_t la, lc;
		int32_t ia = -1, ic = -1, im = -1;
		if (!merge_parts(json_array_get(merges, r), &a, &c, buf, sizeof buf)) {
			st = qw_fail(err, QW_E_CONFIG, "%s: model.merges[%zu] is not a pair of tokens",
				     label, r);
			break;
		}
		if (strlen(a) + strlen(c) < 500 && bytelevel_decode(a, c2b, tmp, &la) &&
		    bytelevel_decode(c, c2b, tmp + la, &lc)) {
			ia = qw_bpe_lookup(b, tmp, la);
			ic = qw_bpe_lookup(b, tmp + la, lc);
			im = qw_bpe_lookup(b, tmp, la + lc);
		}
		if (ia < 0 || ic < 0 || im < 0) {
			st = qw_fail(err, QW_E_CONFIG, "%s: model.merges[%zu] ('%s' + '%s'): a part or "
				     "the merged token is not in the vocabulary", label, r, a, c);
			break;
		}
		uint64_t key = (((uint64_t)(uint32_t)ia << 32) | (uint32_t)ic) + 1;
		size_t i = mix64(key) & b->merge_mask;
		while (b->merges[i].key && b->merges[i].key != key)
			i = (i + 1) & b->merge_mask;
		if (!b->merges[i].key)   /* a repeated pair keeps its first (lowest) rank */
			b->merges[i] = (merge_slot){key, (int32_t)r, im};
	}
	free(tmp);
	return st;
}

qw_status qw_bpe_load(const void *model_json, const char *label, qw_bpe **out, qw_err *err)
{
	json_t *model = (json_t *)model_json;
	*out = NULL;
	json_t *type = json_object_get(model, "type");
	if (!json_is_string(type) || strcmp(json_string_value(type), "BPE") != 0)
		return qw_fail(err, QW_E_CONFIG, "%s: model.type must be \"BPE\"", label);
	json_t *fallback = json_object_get(model, "byte_fallback");
	if (json_is_true(fallback))
		return qw_fail(err, QW_E_CONFIG, "%s: model.byte_fallback is true; only byte-level "
			       "BPE is supported", label);
	json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
	if (!json_is_object(vocab) || !json_is_array(merges))
		return qw_fail(err, QW_E_CONFIG, "%s: model needs an object 'vocab' and an array "
			       "'merges'", label);
	int16_t c2b[512];
	memset(c2b, 0xff, sizeof c2b);
	for (int v = 0; v < 256; v++)
		c2b[qw_bytelevel_char((uint8_t)v)] = (int16_t)v;
	qw_bpe *b = calloc(1, sizeof *b);
	if (!b)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	qw_status st = load_vocab(b, vocab, label, c2b, err);
	if (st == QW_OK)
		st = load_merges(b, merges, label, c2b, err);
	if (st != QW_OK) {
		qw_bpe_free(b);
		return st;
	}
	*out = b;
	return QW_OK;
}

void qw_bpe_free(qw_bpe *b)
{
	if (!b)
		return;
	free(b->blob);
	free(b->tok_off);
	free(b->tok_len);
	free(b->vocab_slots);
	free(b->merges);
	free(b);
}

// ---------------------------------------------------------------------------------------
// merging one word

typedef struct symbol {
	int32_t id;
	int32_t prev, next;   /* neighbours, -1 at the ends */
	bool gone;            /* merged into its left neighbour */
} symbol;

typedef struct candidate {
	int32_t rank, pos, merged;
} candidate;

/* min-heap on (rank, pos) */
static bool before(const candidate *x, const candidate *y)
{
	return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(candidate *h, size_t *n, candidate c)
{
	size_t i = (*n)++;
	while (i > 0 && before(&c, &h[(i - 1) / 2])) {
		h[i] = h[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h[i] = c;
}

static candidate heap_pop(candidate *h, size_t *n)
{
	candidate top = h[0], last = h[--*n];
	size_t i = 0;
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		const candidate *cur = &last;
		if (l < *n && before(&h[l], cur))
			m = l, cur = &h[l];
		if (r < *n && before(&h[r], cur))
			m = r;
		if (m == i)
			break;
		h[i] = h[m];
		i = m;
	}
	if (*n)
		h[i] = last;
	return top;
}

static void push_pair(const qw_bpe *b, const symbol *s, int32_t pos, candidate *heap, size_t *n)
{
	if (pos < 0 || s[pos].next < 0)
		return;
	const merge_slot *m = find_merge(b, s[pos].id, s[s[pos].next].id);
	if (m)
		heap_push(heap, n, (candidate){m->rank, pos, m->id});
}

size_t qw_bpe_encode_word(const qw_bpe *b, const uint8_t *word, size_t len, int32_t *out)
{
	symbol stack_sym[64];
	candidate stack_heap[256];
	symbol *s = len <= 64 ? stack_sym : malloc(len * sizeof *s);
	/* each merge pushes at most two candidates: len + 2 * len bounds the heap */
	candidate *heap = 3 * len <= 256 ? stack_heap : malloc(3 * len * sizeof *heap);
	if (!s || !heap) {   /* cannot merge without memory: fall back to bytes */
		for (size_t i = 0; i < len; i++)
			out[i] = b->byte_id[word[i]];
		if (s != stack_sym)
			free(s);
		if (heap != stack_heap)
			free(heap);
		return len;
	}
	size_t n_heap = 0;
	for (size_t i = 0; i < len; i++)
		s[i] = (symbol){b->byte_id[word[i]], (int32_t)i - 1, i + 1 < len ? (int32_t)i + 1 : -1,
				false};
	for (size_t i = 0; i + 1 < len; i++)
		push_pair(b, s, (int32_t)i, heap, &n_heap);
	while (n_heap) {
		candidate c = heap_pop(heap, &n_heap);
		symbol *left = &s[c.pos];
		if (left->gone || left->next < 0)
			continue;
		const merge_slot *m = find_merge(b, left->id, s[left->next].id);
		if (!m || m->id != c.merged)
			continue;                    /* this pair changed since it was queued */
		symbol *right = &s[left->next];
		left->id = c.merged;
		right->gone = true;
		left->next = right->next;
		if (right->next >= 0)
			s[right->next].prev = c.pos;
		push_pair(b, s, left->prev, heap, &n_heap);
		push_pair(b, s, c.pos, heap, &n_heap);
	}
	size_t n = 0;
	for (int32_t i = 0; i >= 0; i = s[i].next)
		out[n++] = s[i].id;
	if (s != stack_sym)
		free(s);
	if (heap != stack_heap)
		free(heap);
	return n;
}
