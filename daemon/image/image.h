/* image.h - decoding request images (JPEG, PNG, WebP) into RGB, as HF's processor sees them.
 *
 * Owns: qw_image (8-bit RGB, row-major (H, W, 3)), the decoders (libjpeg-turbo, libpng,
 * libwebp; format.h says which), reading a size from the header alone, and the size limits
 * checked from the header before any pixel is decoded.  RGB conversion follows PIL's
 * convert("RGB"), which HF applies: grey is replicated, a palette expanded, alpha dropped
 * (not composited), 16-bit channels cut to their high byte.
 */
#ifndef QW_IMAGE_IMAGE_H
#define QW_IMAGE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

typedef struct qw_image {
	int width, height;
	uint8_t *rgb;        /* (height, width, 3) */
} qw_image;

typedef struct qw_image_limits {
	size_t max_bytes;          /* encoded size */
	int max_side;              /* width or height */
	int64_t max_pixels;        /* width x height, decoded */
} qw_image_limits;

#define QW_IMAGE_LIMITS_DEFAULT ((qw_image_limits){64u << 20, 16384, 64ll << 20})

/* Decodes an encoded image.  A format other than JPEG, PNG or WebP, a malformed or truncated
 * file (QW_E_ARG), or one past the limits (QW_E_LIMIT) is an error that says which. */
qw_status qw_image_decode(const void *data, size_t len, const qw_image_limits *lim, qw_image *out,
			  qw_err *err);

/* Reads an encoded image's size from its header alone, without decoding a pixel, with the
 * same refusals as qw_image_decode for other formats, an unreadable header and sizes past
 * the limits (so a request's images can be weighed before any is decoded). */
qw_status qw_image_probe(const void *data, size_t len, const qw_image_limits *lim, int *width,
			 int *height, qw_err *err);

void qw_image_free(qw_image *img);

#endif
