/* fuzz_tokenizer.c - libFuzzer target of the tokenizer (loaded once from
 * $QW_FUZZ_TOKENIZER, default tests/fixtures/tokenizer/qwen3): text is encoded and the ids
 * decoded, and text already in NFC (which encoding applies) must come back byte for byte;
 * the streaming decoder, fed one id at a time, must give the one-shot decoder's text.  See
 * tests/fuzz/README.md. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "daemon/text/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static qw_tokenizer *tok;   /* loaded once: the fuzzer calls the entry millions of times */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("QW_FUZZ_TOKENIZER");
	qw_err err;
	if (qw_tokenizer_load(dir ? dir : "tests/fixtures/tokenizer/qwen3", &tok, &err) != QW_OK)
		abort();   /* run from the repository root, or set QW_FUZZ_TOKENIZER */
	return 0;
}

/* The ids through the streaming decoder, then its tail: the one-shot decoder's text. */
static void stream_matches(const int32_t *ids, size_t n, const char *want, size_t want_len)
{
	size_t cap = 2 * qw_detok_max_out(tok) + 64, at = 0;
	char *got = malloc(n * cap + 16), *piece = malloc(cap);
	qw_detok d = {0};
	for (size_t i = 0; i < n; i++) {
		size_t len = 0;
		if (qw_detok_push(&d, tok, ids[i], piece, cap, &len, NULL) != QW_OK)
			__builtin_trap();
		memcpy(got + at, piece, len);
		at += len;
	}
	at += qw_detok_finish(&d, got + at);
	if (at != want_len || memcmp(got, want, at) != 0)
		__builtin_trap();
	free(piece);
	free(got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int32_t *ids;
	size_t n;
	qw_err err;
	if (qw_tokenizer_encode(tok, (const char *)data, size, &ids, &n, &err) != QW_OK)
		return 0;
	char *text;
	size_t len;
	if (qw_tokenizer_decode(tok, ids, n, &text, &len, &err) != QW_OK)
		__builtin_trap();      /* ids the encoder made always decode */
	char *copy = malloc(size + 1);
	memcpy(copy, data, size);
	copy[size] = '\0';
	uint8_t *nfc = utf8proc_NFC((const uint8_t *)copy);
	bool stable = nfc && strlen((char *)nfc) == size && memcmp(nfc, data, size) == 0 &&
		      !memchr(data, 0, size);
	if (stable && (len != size || memcmp(text, data, size) != 0))
		__builtin_trap();
	stream_matches(ids, n, text, len);
	free(nfc);
	free(copy);
	free(text);
	free(ids);
	return 0;
}
