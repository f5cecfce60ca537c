/* fuzz_image.c - libFuzzer target of request images: the size from the header
 * (qw_image_probe) and the decoders (qw_image_decode: PNG, JPEG, WebP) refuse or agree,
 * and a decoded image goes through the preprocessing the daemon does (the size planned
 * from the header, the pixels decoded and resized to it: the processor's pixels, bit for
 * bit; patchified), at limits small enough to keep each input quick.  See tests/fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/image/image.h"
#include "daemon/image/preprocess.h"
#include "daemon/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const qw_image_limits lim = {1u << 20, 1024, 1 << 18};
	const qw_vision_config vc = {.patch_size = 16, .spatial_merge_size = 2,
				     .temporal_patch_size = 2};
	const qw_preprocess_opts o = {4096, 1 << 16, 200.0, 64};
	qw_err err;
	int w, h;
	qw_image img;
	qw_status probed = qw_image_probe(data, size, &lim, &w, &h, &err);
	qw_status decoded = qw_image_decode(data, size, &lim, &img, &err);
	if (decoded == QW_OK && (probed != QW_OK || w != img.width || h != img.height))
		__builtin_trap();      /* whatever decodes, the header gave its size */
	if (decoded != QW_OK)
		return 0;
	int rh, rw, tokens;
	if (qw_preprocess_plan(h, w, &vc, &o, &rh, &rw, &tokens, &err) == QW_OK) {
		uint8_t *rgb;
		if (qw_request_image_pixels(data, size, &lim, rw, rh, &rgb, &err) != QW_OK)
			__builtin_trap();
		/* the daemon's way (size from the header, then the pixels) is the processor's */
		qw_image resized = {rw, rh, rgb}, direct;
		if (qw_preprocess_resize(&img, &vc, &o, &direct, &err) != QW_OK ||
		    direct.width != rw || direct.height != rh ||
		    memcmp(direct.rgb, rgb, (size_t)rw * (size_t)rh * 3) != 0)
			__builtin_trap();
		qw_image_free(&direct);
		qw_pixels px;
		if (qw_patchify(&resized, &vc, &px, &err) != QW_OK || px.n_tokens != tokens)
			__builtin_trap();
		qw_pixels_free(&px);
		free(rgb);
	}
	qw_image_free(&img);
	return 0;
}
