/* tokenizer.c - HF tokenizer.json encode / decode.  See tokenizer.h. */
#include "daemon/text/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "daemon/text/bpe.h"

#define CACHE_SLOTS (1u << 16)    /* recently merged pre-tokens */
#define CACHE_MAX_WORD 64         /* longer pre-tokens are merged every time */

typedef struct added_token {
	char *content;
	size_t len;
	int32_t id;
	bool special;
} added_token;

typedef struct cache_slot {
	uint64_t hash;                      /* 0 = empty */
	uint8_t len, n_ids;
	uint8_t word[CACHE_MAX_WORD];
	int32_t ids[CACHE_MAX_WORD];
} cache_slot;

struct qw_tokenizer {
	qw_bpe *bpe;
	int32_t size;                       /* BPE ids and added ids */
	added_token *added;                 /* (n_added,) longest first */
	int n_added;
	bool added_first_byte[256];         /* some added token starts with this byte */
	int32_t *added_by_id;               /* (size,) index into added, or -1 */
	bool nfc;
	pcre2_code *re;
	pcre2_match_data *md;
	int32_t eos;
	size_t max_token_bytes;
	cache_slot *cache;                  /* (CACHE_SLOTS,) */
};

// ---------------------------------------------------------------------------------------
// UTF-8

/* Examines the character at p (n bytes left).  Returns its length if valid; else 0 with
 * *part = the length of its maximal valid subpart (at least 1) and *incomplete set when the
 * input simply ended inside a character that could still be valid. */
static int utf8_char(const uint8_t *p, size_t n, int *part, bool *incomplete)
{
	uint8_t b = p[0];
	int need;
	uint8_t lo = 0x80, hi = 0xbf;      /* range of the second byte */
	*incomplete = false;
	if (b < 0x80)
		return 1;
	if (b >= 0xc2 && b <= 0xdf)
		need = 2;
	else if (b >= 0xe0 && b <= 0xef) {
		need = 3;
		if (b == 0xe0)
			lo = 0xa0;
		if (b == 0xed)
			hi = 0x9f;
	} else if (b >= 0xf0 && b <= 0xf4) {
		need = 4;
		if (b == 0xf0)
			lo = 0x90;
		if (b == 0xf4)
			hi = 0x8f;
	} else {
		*part = 1;
		return 0;
	}
	int got = 1;
	while (got < need && (size_t)got < n) {
		uint8_t c = p[got];
		bool ok = got == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xbf);
		if (!ok)
			break;
		got++;
	}
	if (got == need)
		return need;
	*part = got;
	*incomplete = (size_t)got == n;
	return 0;
}

size_t qw_utf8_check(const uint8_t *in, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (in[i] < 0x80) {
			i++;
			continue;
		}
		int part;
		bool incomplete;
		int k = utf8_char(in + i, n - i, &part, &incomplete);
		if (!k)
			return i;
		i += (size_t)k;
	}
	return n;
}

size_t qw_utf8_lossy(const uint8_t *in, size_t n, char *out, bool partial, size_t *consumed)
{
	size_t i = 0, o = 0;
	while (i < n) {
		int part;
		bool incomplete;
		int k = utf8_char(in + i, n - i, &part, &incomplete);
		if (k) {
			memcpy(out + o, in + i, (size_t)k);
			o += (size_t)k;
			i += (size_t)k;
			continue;
		}
		if (incomplete && partial)
			break;
		memcpy(out + o, "\xef\xbf\xbd", 3);   /* U+FFFD for the maximal subpart */
		o += 3;
		i += (size_t)part;
	}
	if (consumed)
		*consumed = i;
	return o;
}

// ---------------------------------------------------------------------------------------
// loading

static qw_status check_pipeline(json_t *root, const char *label, char **pattern, bool *nfc,
				qw_err *err)
{
	json_t *norm = json_object_get(root, "normalizer");
	*nfc = false;
	if (norm && !json_is_null(norm)) {
		json_t *type = json_object_get(norm, "type");
		if (!json_is_string(type) || strcmp(json_string_value(type), "NFC") != 0)
			return qw_fail(err, QW_E_CONFIG, "%s: normalizer: only NFC (or none) is "
				       "supported", label);
		*nfc = true;
	}
	json_t *pre = json_object_get(root, "pre_tokenizer");
	json_t *list = json_object_get(pre, "pretokenizers");
	json_t *split = json_array_get(list, 0), *bytelevel = json_array_get(list, 1);
	const char *type = json_string_value(json_object_get(pre, "type"));
	const char *regex = json_string_value(json_object_get(json_object_get(split, "pattern"),
							      "Regex"));
	const char *behavior = json_string_value(json_object_get(split, "behavior"));
	const char *bl_type = json_string_value(json_object_get(bytelevel, "type"));
	if (!type || strcmp(type, "Sequence") != 0 || json_array_size(list) != 2 || !regex ||
	    !behavior || strcmp(behavior, "Isolated") != 0 ||
	    json_is_true(json_object_get(split, "invert")) || !bl_type ||
	    strcmp(bl_type, "ByteLevel") != 0 || json_is_true(json_object_get(bytelevel, "use_regex")) ||
	    json_is_true(json_object_get(bytelevel, "add_prefix_space")))
		return qw_fail(err, QW_E_CONFIG, "%s: pre_tokenizer: expected a Sequence of a Split "
			       "(Regex pattern, Isolated, not inverted) and a ByteLevel (use_regex "
			       "and add_prefix_space false), as Qwen tokenizers have", label);
	json_t *dec = json_object_get(root, "decoder");
	const char *dec_type = json_string_value(json_object_get(dec, "type"));
	if (!dec_type || strcmp(dec_type, "ByteLevel") != 0)
		return qw_fail(err, QW_E_CONFIG, "%s: decoder: only ByteLevel is supported", label);
	*pattern = strdup(regex);
	return *pattern ? QW_OK : qw_fail(err, QW_E_NOMEM, "out of memory");
}

static qw_status compile_regex(qw_tokenizer *t, const char *pattern, const char *label,
			       qw_err *err)
{
	int code;
	PCRE2_SIZE at;
	t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
			      &code, &at, NULL);
	if (!t->re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(code, msg, sizeof msg);
		return qw_fail(err, QW_E_CONFIG, "%s: pre_tokenizer regex does not compile at offset "
			       "%zu: %s", label, (size_t)at, (const char *)msg);
	}
	pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);   /* falls back to the interpreter */
	t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
	return t->md ? QW_OK : qw_fail(err, QW_E_NOMEM, "out of memory");
}

static int longest_first(const void *a, const void *b)
{
	const added_token *x = a, *y = b;
	return x->len != y->len ? (x->len < y->len ? 1 : -1) : x->id - y->id;
}

static qw_status load_added(qw_tokenizer *t, json_t *added, const char *label, qw_err *err)
{
	size_t n = json_array_size(added);
	t->added = calloc(n + 1, sizeof *t->added);
	if (!t->added)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	int32_t max_id = qw_bpe_vocab_size(t->bpe) - 1;
	for (size_t i = 0; i < n; i++) {
		json_t *a = json_array_get(added, i);
		json_t *id = json_object_get(a, "id"), *content = json_object_get(a, "content");
		if (!json_is_integer(id) || json_integer_value(id) < 0 ||
		    json_integer_value(id) >= (1 << 24) || !json_is_string(content) ||
		    !json_string_length(content))
			return qw_fail(err, QW_E_CONFIG, "%s: added_tokens[%zu] needs an id and a "
				       "non-empty content", label, i);
		if (json_is_true(json_object_get(a, "lstrip")) ||
		    json_is_true(json_object_get(a, "rstrip")) ||
		    json_is_true(json_object_get(a, "single_word")))
			return qw_fail(err, QW_E_CONFIG, "%s: added_tokens[%zu] ('%s'): lstrip, rstrip "
				       "and single_word are not supported", label, i,
				       json_string_value(content));
		added_token *at = &t->added[t->n_added++];
		at->id = (int32_t)json_integer_value(id);
		at->content = strdup(json_string_value(content));
		if (!at->content)
			return qw_fail(err, QW_E_NOMEM, "out of memory");
		at->len = strlen(at->content);
		at->special = json_is_true(json_object_get(a, "special"));
		t->added_first_byte[(uint8_t)at->content[0]] = true;
		if (at->id > max_id)
			max_id = at->id;
		if (at->len > t->max_token_bytes)
			t->max_token_bytes = at->len;
	}
	qsort(t->added, (size_t)t->n_added, sizeof *t->added, longest_first);
	t->size = max_id + 1;
	t->added_by_id = malloc((size_t)t->size * sizeof *t->added_by_id);
	if (!t->added_by_id)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	memset(t->added_by_id, 0xff, (size_t)t->size * sizeof *t->added_by_id);
	for (int i = 0; i < t->n_added; i++)
		t->added_by_id[t->added[i].id] = i;
	for (int32_t id = 0; id < t->size; id++) {
		size_t len;
		if (t->added_by_id[id] < 0 && !qw_bpe_bytes(t->bpe, id, &len))
			return qw_fail(err, QW_E_CONFIG, "%s: id %d is neither in model.vocab nor in "
				       "added_tokens (ids must be contiguous)", label, id);
		if (t->added_by_id[id] < 0 && len > t->max_token_bytes)
			t->max_token_bytes = len;
	}
	return QW_OK;
}

static void read_eos(qw_tokenizer *t, const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
	json_error_t jerr;
	json_t *cfg = json_load_file(path, 0, &jerr);
	json_t *eos = json_object_get(cfg, "eos_token");
	if (json_is_object(eos))
		eos = json_object_get(eos, "content");
	t->eos = json_is_string(eos) ? qw_tokenizer_added_id(t, json_string_value(eos)) : -1;
	json_decref(cfg);
}

qw_status qw_tokenizer_load(const char *dir, qw_tokenizer **out, qw_err *err)
{
	*out = NULL;
	char path[4096];
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	json_error_t jerr;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return qw_fail(err, jerr.line < 0 ? QW_E_IO : QW_E_CONFIG, "%s: %s%s", path,
			       jerr.line < 0 ? "" : "not valid JSON: ", jerr.text);
	qw_tokenizer *t = calloc(1, sizeof *t);
	char *pattern = NULL;
	qw_status st = t ? QW_OK : qw_fail(err, QW_E_NOMEM, "out of memory");
	if (st == QW_OK)
		st = check_pipeline(root, path, &pattern, &t->nfc, err);
	if (st == QW_OK)
		st = qw_bpe_load(json_object_get(root, "model"), path, &t->bpe, err);
	if (st == QW_OK)
		st = load_added(t, json_object_get(root, "added_tokens"), path, err);
	if (st == QW_OK)
		st = compile_regex(t, pattern, path, err);
	if (st == QW_OK && !(t->cache = calloc(CACHE_SLOTS, sizeof *t->cache)))
		st = qw_fail(err, QW_E_NOMEM, "out of memory for the tokenizer cache");
	free(pattern);
	json_decref(root);
	if (st != QW_OK) {
		qw_tokenizer_free(t);
		return st;
	}
	read_eos(t, dir);
	*out = t;
	return QW_OK;
}

void qw_tokenizer_free(qw_tokenizer *t)
{
	if (!t)
		return;
	for (int i = 0; i < t->n_added; i++)
		free(t->added[i].content);
	free(t->added);
	free(t->added_by_id);
	qw_bpe_free(t->bpe);
	pcre2_match_data_free(t->md);
	pcre2_code_free(t->re);
	free(t->cache);
	free(t);
}

int32_t qw_tokenizer_size(const qw_tokenizer *t)
{
	return t->size;
}

bool qw_tokenizer_is_special(const qw_tokenizer *t, int32_t id)
{
	return id >= 0 && id < t->size && t->added_by_id[id] >= 0 &&
	       t->added[t->added_by_id[id]].special;
}

int32_t qw_tokenizer_eos(const qw_tokenizer *t)
{
	return t->eos;
}

int32_t qw_tokenizer_added_id(const qw_tokenizer *t, const char *content)
{
	for (int i = 0; i < t->n_added; i++)
		if (strcmp(t->added[i].content, content) == 0)
			return t->added[i].id;
	return -1;
}

const uint8_t *qw_tokenizer_bytes(const qw_tokenizer *t, int32_t id, size_t *len)
{
	if (id < 0 || id >= t->size)
		return NULL;
	if (t->added_by_id[id] >= 0) {
		*len = t->added[t->added_by_id[id]].len;
		return (const uint8_t *)t->added[t->added_by_id[id]].content;
	}
	return qw_bpe_bytes(t->bpe, id, len);
}

// ---------------------------------------------------------------------------------------
// encoding

typedef struct id_buf {
	int32_t *ids;
	size_t n, cap;
} id_buf;

static bool reserve(id_buf *b, size_t more)
{
	if (b->n + more <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->n + more)
		cap *= 2;
	int32_t *grown = realloc(b->ids, cap * sizeof *grown);
	if (!grown)
		return false;
	b->ids = grown;
	b->cap = cap;
	return true;
}

static uint64_t word_hash(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h | 1;   /* never 0, which marks an empty slot */
}

static bool encode_word(qw_tokenizer *t, const uint8_t *w, size_t len, id_buf *out)
{
	if (!reserve(out, len))
		return false;
	if (len > CACHE_MAX_WORD) {
		out->n += qw_bpe_encode_word(t->bpe, w, len, out->ids + out->n);
		return true;
	}
	uint64_t h = word_hash(w, len);
	cache_slot *c = &t->cache[h & (CACHE_SLOTS - 1)];
	if (c->hash == h && c->len == len && memcmp(c->word, w, len) == 0) {
		memcpy(out->ids + out->n, c->ids, c->n_ids * sizeof *c->ids);
		out->n += c->n_ids;
		return true;
	}
	size_t n = qw_bpe_encode_word(t->bpe, w, len, out->ids + out->n);
	c->hash = h;
	c->len = (uint8_t)len;
	c->n_ids = (uint8_t)n;
	memcpy(c->word, w, len);
	memcpy(c->ids, out->ids + out->n, n * sizeof *c->ids);
	out->n += n;
	return true;
}

static bool is_ascii(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] & 0x80)
			return false;
	return true;
}

/* Normalises, pre-tokenizes and merges one stretch of text free of added tokens. */
static qw_status encode_segment(qw_tokenizer *t, const uint8_t *seg, size_t len, id_buf *out,
				qw_err *err)
{
	uint8_t *norm = NULL;
	if (t->nfc && !is_ascii(seg, len)) {    /* ASCII is already NFC */
		utf8proc_uint8_t *copy = malloc(len + 1);
		if (!copy)
			return qw_fail(err, QW_E_NOMEM, "out of memory");
		memcpy(copy, seg, len);
		copy[len] = 0;
		norm = utf8proc_NFC(copy);   /* valid UTF-8 in, malloc'd result */
		free(copy);
		if (!norm)
			return qw_fail(err, QW_E_NOMEM, "out of memory normalising text");
		seg = norm;
		len = strlen((const char *)norm);
	}
	qw_status st = QW_OK;
	size_t at = 0;
	while (at < len) {
		int rc = pcre2_match(t->re, seg, len, at, PCRE2_NO_UTF_CHECK, t->md, NULL);
		size_t s = len, e = len;
		if (rc > 0) {
			PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
			s = ov[0];
			e = ov[1];
		} else if (rc != PCRE2_ERROR_NOMATCH) {
			st = qw_fail(err, QW_E_ARG, "pre-tokenizer regex failed (PCRE2 error %d)", rc);
			break;
		}
		if (s > at && !encode_word(t, seg + at, s - at, out))   /* a gap is its own piece */
			goto oom;
		if (e == s) {                                          /* no progress: step a char */
			if (s >= len)
				break;
			size_t step = 1;
			while (s + step < len && (seg[s + step] & 0xc0) == 0x80)
				step++;
			if (!encode_word(t, seg + s, step, out))
				goto oom;
			e = s + step;
		} else if (!encode_word(t, seg + s, e - s, out)) {
			goto oom;
		}
		at = e;
	}
	free(norm);
	return st;
oom:
	free(norm);
	return qw_fail(err, QW_E_NOMEM, "out of memory encoding text");
}

/* The added token that starts at p (n bytes left), longest first; NULL if none. */
static const added_token *added_at(const qw_tokenizer *t, const uint8_t *p, size_t n)
{
	if (!t->added_first_byte[p[0]])
		return NULL;
	for (int i = 0; i < t->n_added; i++)
		if (t->added[i].len <= n && memcmp(p, t->added[i].content, t->added[i].len) == 0)
			return &t->added[i];
	return NULL;
}

qw_status qw_tokenizer_encode(qw_tokenizer *t, const char *text, size_t len, int32_t **ids,
			      size_t *n, qw_err *err)
{
	*ids = NULL;
	*n = 0;
	const uint8_t *p = (const uint8_t *)text;
	size_t bad = qw_utf8_check(p, len);
	if (bad < len)
		return qw_fail(err, QW_E_ARG, "text is not valid UTF-8 at byte %zu (0x%02x)", bad,
			       p[bad]);
	id_buf out = {0};
	qw_status st = QW_OK;
	size_t seg = 0;
	for (size_t i = 0; i < len && st == QW_OK;) {
		const added_token *a = added_at(t, p + i, len - i);
		if (!a) {
			i++;
			continue;
		}
		if (i > seg)
			st = encode_segment(t, p + seg, i - seg, &out, err);
		if (st == QW_OK && !reserve(&out, 1))
			st = qw_fail(err, QW_E_NOMEM, "out of memory encoding text");
		if (st == QW_OK)
			out.ids[out.n++] = a->id;
		i += a->len;
		seg = i;
	}
	if (st == QW_OK && seg < len)
		st = encode_segment(t, p + seg, len - seg, &out, err);
	if (st != QW_OK) {
		free(out.ids);
		return st;
	}
	*ids = out.ids ? out.ids : malloc(sizeof(int32_t));
	*n = out.n;
	return *ids ? QW_OK : qw_fail(err, QW_E_NOMEM, "out of memory");
}

// ---------------------------------------------------------------------------------------
// decoding

qw_status qw_tokenizer_decode(const qw_tokenizer *t, const int32_t *ids, size_t n, char **text,
			      size_t *len, qw_err *err)
{
	*text = NULL;
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		size_t l;
		if (!qw_tokenizer_bytes(t, ids[i], &l))
			return qw_fail(err, QW_E_ARG, "id %d at position %zu is not a token (the "
				       "tokenizer has ids 0 to %d)", ids[i], i, t->size - 1);
		total += l;
	}
	uint8_t *raw = malloc(total + 1);
	char *out = malloc(3 * total + 1);
	if (!raw || !out) {
		free(raw);
		free(out);
		return qw_fail(err, QW_E_NOMEM, "out of memory decoding %zu ids", n);
	}
	size_t at = 0;
	for (size_t i = 0; i < n; i++) {
		size_t l;
		const uint8_t *b = qw_tokenizer_bytes(t, ids[i], &l);
		memcpy(raw + at, b, l);
		at += l;
	}
	*len = qw_utf8_lossy(raw, total, out, false, NULL);
	out[*len] = '\0';
	free(raw);
	*text = out;
	return QW_OK;
}

size_t qw_detok_max_out(const qw_tokenizer *t)
{
	return 3 * (t->max_token_bytes + sizeof ((qw_detok *)0)->pending);
}

qw_status qw_detok_push(qw_detok *d, const qw_tokenizer *t, int32_t id, char *out, size_t cap,
			size_t *len, qw_err *err)
{
	size_t l;
	const uint8_t *b = qw_tokenizer_bytes(t, id, &l);
	*len = 0;
	if (!b)
		return qw_fail(err, QW_E_ARG, "id %d is not a token (the tokenizer has ids 0 to %d)",
			       id, t->size - 1);
	if (cap < 3 * (l + (size_t)d->n_pending))
		return qw_fail(err, QW_E_ARG, "detokenizer output buffer of %zu bytes is too small",
			       cap);
	uint8_t stack[512], *buf = l + 8 <= sizeof stack ? stack : malloc(l + 8);
	if (!buf)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	memcpy(buf, d->pending, (size_t)d->n_pending);
	memcpy(buf + d->n_pending, b, l);
	size_t n = (size_t)d->n_pending + l, used;
	*len = qw_utf8_lossy(buf, n, out, true, &used);
	d->n_pending = (int)(n - used);          /* at most 3 bytes of a started character */
	memcpy(d->pending, buf + used, (size_t)d->n_pending);
	if (buf != stack)
		free(buf);
	return QW_OK;
}

size_t qw_detok_finish(qw_detok *d, char *out)
{
	size_t n = qw_utf8_lossy(d->pending, (size_t)d->n_pending, out, false, NULL);
	d->n_pending = 0;
	return n;
}
