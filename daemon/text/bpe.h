/* bpe.h - byte-level BPE: the vocabulary and merges of an HF tokenizer.json model.
 *
 * Owns: token id <-> raw bytes (the byte-level alphabet, where byte 0x20 is written 'Ġ', is
 * decoded once at load), the merge table (pair of ids -> rank and merged id), and the merge
 * of one pre-token into ids exactly as HF tokenizers does it: the lowest-ranked adjacent pair
 * first, the leftmost of equal pairs first.
 */
#ifndef QW_TEXT_BPE_H
#define QW_TEXT_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

typedef struct qw_bpe qw_bpe;

/* Builds the model from tokenizer.json's "model" object (a jansson json_t *, passed as void *
 * so this header does not need jansson).  label names the file in errors. */
qw_status qw_bpe_load(const void *model_json, const char *label, qw_bpe **out, qw_err *err);
void qw_bpe_free(qw_bpe *b);

int32_t qw_bpe_vocab_size(const qw_bpe *b);      /* ids 0 .. size-1 (added tokens not included) */

/* The id of a token given as raw bytes, or -1. */
int32_t qw_bpe_lookup(const qw_bpe *b, const uint8_t *bytes, size_t len);

/* Raw bytes of token id (NULL if id is not a BPE token). */
const uint8_t *qw_bpe_bytes(const qw_bpe *b, int32_t id, size_t *len);

/* Appends the ids of one pre-token (raw bytes, len >= 1) to out (room for len ids).
 * Returns how many were written. */
size_t qw_bpe_encode_word(const qw_bpe *b, const uint8_t *word, size_t len, int32_t *out);

/* Byte-level alphabet: the code point that stands for byte v in tokenizer.json. */
uint32_t qw_bytelevel_char(uint8_t v);

#endif
