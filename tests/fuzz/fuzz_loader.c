/* fuzz_loader.c - libFuzzer target of the checkpoint parsers: the safetensors header
 * (qw_st_parse, even first byte; every byte it hands out must be readable), config.json
 * (qw_config_parse, odd first byte) and checkpoint manifests (qw_manifest_parse, first byte
 * 0x12).  See tests/fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>

#include "loader/config.h"
#include "loader/manifest.h"
#include "loader/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	qw_err err;
	if (data[0] == 0x12) {
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
		for (size_t i = 0; i < f->n_tensors; i++)
			for (uint64_t b = 0; b < f->tensors[i].nbytes; b++)
				sink ^= ((const uint8_t *)f->tensors[i].data)[b];
		(void)sink;
		qw_st_close(f);
	}
	return 0;
}
