/* tokenizer.h - HF tokenizer.json (byte-level BPE, as Qwen3 uses it): text <-> token ids,
 * exactly as the HF `tokenizers` library does with add_special_tokens=False.
 *
 * Owns: the loaded tokenizer: added tokens (special or not; matched in the raw text,
 * leftmost-longest, before anything else), the NFC normaliser (utf8proc), the Split
 * pre-tokenizer regex (PCRE2, JIT-compiled, Unicode classes and look-ahead), the BPE model
 * (bpe.h) and a cache of recently merged pre-tokens.  Also the decoder, lossy like HF's
 * (each maximal invalid UTF-8 subpart becomes U+FFFD), and a streaming decoder that emits
 * only whole characters as tokens arrive.
 *
 * Not thread-safe: encoding updates the cache.  The daemon encodes on its one thread.
 */
#ifndef QW_TEXT_TOKENIZER_H
#define QW_TEXT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

typedef struct qw_tokenizer qw_tokenizer;

/* Loads DIR/tokenizer.json (and DIR/tokenizer_config.json when present: eos/pad names). */
qw_status qw_tokenizer_load(const char *dir, qw_tokenizer **out, qw_err *err);
void qw_tokenizer_free(qw_tokenizer *t);

/* Ids 0 .. n-1 are tokens (BPE and added). */
int32_t qw_tokenizer_size(const qw_tokenizer *t);

/* The id of an added token by its text (e.g. "<|im_end|>"), or -1. */
int32_t qw_tokenizer_added_id(const qw_tokenizer *t, const char *content);

/* Whether id is an added token marked special (<|im_end|>, <|image_pad|>, ...), which
 * generated text leaves out, as HF's decode(skip_special_tokens=True) does. */
bool qw_tokenizer_is_special(const qw_tokenizer *t, int32_t id);

/* eos_token of tokenizer_config.json, or -1. */
int32_t qw_tokenizer_eos(const qw_tokenizer *t);

/* Encodes UTF-8 text (len bytes).  *ids is malloc'd.  Invalid UTF-8 is an error naming the
 * byte offset. */
qw_status qw_tokenizer_encode(qw_tokenizer *t, const char *text, size_t len, int32_t **ids,
			      size_t *n, qw_err *err);

/* Decodes ids to UTF-8 text (malloc'd, NUL-terminated), special tokens included.  An id that
 * is not a token is an error. */
qw_status qw_tokenizer_decode(const qw_tokenizer *t, const int32_t *ids, size_t n, char **text,
			      size_t *len, qw_err *err);

/* The bytes a token stands for (raw, possibly a partial UTF-8 character); NULL if no token. */
const uint8_t *qw_tokenizer_bytes(const qw_tokenizer *t, int32_t id, size_t *len);

/* Streaming decoder: feed ids one at a time, get text made only of whole characters. */
typedef struct qw_detok {
	uint8_t pending[8];   /* the start of a character still incomplete */
	int n_pending;
} qw_detok;

/* Writes the text that id completes to out (cap bytes: qw_detok_max_out suffices for any
 * token); *len gets its length.  Call qw_detok_finish at the end of the stream. */
qw_status qw_detok_push(qw_detok *d, const qw_tokenizer *t, int32_t id, char *out, size_t cap,
			size_t *len, qw_err *err);
/* Bytes of output one push may need: every pending and token byte turned into U+FFFD. */
size_t qw_detok_max_out(const qw_tokenizer *t);

/* Whatever is pending, as U+FFFD per incomplete character (out: 16 bytes suffice). */
size_t qw_detok_finish(qw_detok *d, char *out);

/* Lossy UTF-8 (maximal subparts -> U+FFFD) of n bytes into out (room for 3n); returns the
 * length.  With `partial`, an incomplete character at the end is left out and *consumed
 * says how many input bytes were used. */
size_t qw_utf8_lossy(const uint8_t *in, size_t n, char *out, bool partial, size_t *consumed);

/* The offset of the first invalid UTF-8 byte, or n if the text is valid. */
size_t qw_utf8_check(const uint8_t *in, size_t n);

#endif
