/* fuzz_loader.c - libFuzzer entry for the parsers of untrusted input: the safetensors header
 * (qw_st_parse), config.json (qw_config_parse) and request text through the tokenizer
 * (qw_tokenizer_encode, then decode of the ids; the tokenizer is loaded from
 * $QW_FUZZ_TOKENIZER, default tests/fixtures/tokenizer/qwen3), client requests
 * (qw_request_decode, first byte 0x10) and checkpoint manifests (qw_manifest_parse, first
 * byte 0x12).  The first input byte picks the parser.  Build and run (clang with libFuzzer):
 *
 *   scons fuzz          (builds build/fuzz/fuzz_loader with clang)
 *   mkdir -p /tmp/corpus && build/fuzz/fuzz_loader -max_total_time=300 /tmp/corpus \
 *       tests/fuzz/corpus
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <stdbool.h>
#include <stdlib.h>
#include <utf8proc.h>

#include "daemon/text/tokenizer.h"
#include "ipc/protocol.h"
#include "loader/config.h"
#include "loader/manifest.h"
#include "loader/safetensors.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static qw_tokenizer *tok;   /* loaded once: the fuzzer calls the entry millions of times */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("QW_FUZZ_TOKENIZER");
	qw_err err;
	if (qw_tokenizer_load(dir ? dir : "tests/fixtures/tokenizer/qwen3", &tok, &err) != QW_OK)
		tok = NULL;   /* then the tokenizer is not fuzzed */
	return 0;
}

static void fuzz_tokenizer(const uint8_t *data, size_t size)
{
	int32_t *ids;
	size_t n;
	qw_err err;
	if (!tok || qw_tokenizer_encode(tok, (const char *)data, size, &ids, &n, &err) != QW_OK)
		return;
	char *text;
	size_t len;
	if (qw_tokenizer_decode(tok, ids, n, &text, &len, &err) == QW_OK) {
		/* text already in NFC (which encoding applies) must round-trip exactly */
		char *copy = malloc(size + 1);
		memcpy(copy, data, size);
		copy[size] = '\0';
		uint8_t *nfc = utf8proc_NFC((const uint8_t *)copy);
		bool stable = nfc && strlen((char *)nfc) == size && memcmp(nfc, data, size) == 0 &&
			      !memchr(data, 0, size);
		if (stable && (len != size || memcmp(text, data, size) != 0))
			__builtin_trap();
		free(nfc);
		free(copy);
		free(text);
	}
	free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	qw_err err;
	if (data[0] % 3 == 2) {
		fuzz_tokenizer(data + 1, size - 1);
		return 0;
	}
	if (data[0] == 0x10) {       /* a client request */
		qw_request r;
		if (qw_request_decode(data + 1, size - 1, NULL, &r, &err) == QW_OK)
			qw_request_free(&r);
		return 0;
	}
	if (data[0] == 0x12) {       /* a checkpoint manifest */
		qw_manifest m;
		if (qw_manifest_parse((const char *)data + 1, size - 1, "fuzz", &m, &err) == QW_OK)
			qw_manifest_free(&m);
		return 0;
	}
	if (data[0] & 1) {
		qw_config cfg;
		qw_config_parse((const char *)data + 1, size - 1, "fuzz", &cfg, &err);
		return 0;
	}
	qw_st_file *f = NULL;
	if (qw_st_parse(data + 1, size - 1, "fuzz", &f, &err) == QW_OK) {
		volatile uint8_t sink = 0;
		for (size_t i = 0; i < f->n_tensors; i++)   /* every byte handed out is readable */
			for (uint64_t b = 0; b < f->tensors[i].nbytes; b++)
				sink ^= ((const uint8_t *)f->tensors[i].data)[b];
		(void)sink;
		qw_st_close(f);
	}
	return 0;
}
