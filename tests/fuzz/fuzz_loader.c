/* fuzz_loader.c - libFuzzer entry for the parsers of untrusted checkpoint input: the
 * safetensors header (qw_st_parse) and config.json (qw_config_parse).  The first input byte
 * picks the parser.  Build and run (clang with libFuzzer):
 *
 *   scons fuzz          (builds build/fuzz/fuzz_loader with clang)
 *   mkdir -p /tmp/corpus && build/fuzz/fuzz_loader -max_total_time=300 /tmp/corpus \
 *       tests/fuzz/corpus
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "loader/config.h"
#include "loader/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	qw_err err;
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
