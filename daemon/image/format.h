/* format.h - which kind of image a file is, from its first bytes.
 *
 * Owns: the magic numbers of the formats a request may carry (JPEG, PNG, WebP) and of the
 * common ones it may not (GIF, BMP, TIFF, HEIF/AVIF), so the daemon's decoder and a client
 * checking a file before it sends it agree.  No decoding: it links without the codecs.
 */
#ifndef QW_IMAGE_FORMAT_H
#define QW_IMAGE_FORMAT_H

#include <stddef.h>

typedef enum qw_image_format {
	QW_IMAGE_UNKNOWN = 0,    /* not an image this module knows */
	QW_IMAGE_JPEG,
	QW_IMAGE_PNG,
	QW_IMAGE_WEBP,
	QW_IMAGE_UNSUPPORTED,    /* an image of another format (*name says which) */
} qw_image_format;

/* The format of the len bytes at data; *name (may be NULL) gets its name ("JPEG", "GIF",
 * ...), or NULL when unknown. */
qw_image_format qw_image_sniff(const void *data, size_t len, const char **name);

#endif
