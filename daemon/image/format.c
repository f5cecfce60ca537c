/* format.c - image formats from their magic numbers.  See format.h. */
#include "daemon/image/format.h"

#include <stdbool.h>
#include <string.h>

qw_image_format qw_image_sniff(const void *data, size_t len, const char **name)
{
	static const struct {
		qw_image_format format;
		const char *name;
		size_t at, len;
		const char *magic;
	} kinds[] = {
		{QW_IMAGE_PNG, "PNG", 0, 8, "\x89PNG\r\n\x1a\n"},
		{QW_IMAGE_JPEG, "JPEG", 0, 3, "\xff\xd8\xff"},
		{QW_IMAGE_WEBP, "WebP", 8, 4, "WEBP"},   /* after "RIFF" and a size */
		{QW_IMAGE_UNSUPPORTED, "GIF", 0, 6, "GIF87a"},
		{QW_IMAGE_UNSUPPORTED, "GIF", 0, 6, "GIF89a"},
		{QW_IMAGE_UNSUPPORTED, "BMP", 0, 2, "BM"},
		{QW_IMAGE_UNSUPPORTED, "TIFF", 0, 4, "II*\0"},
		{QW_IMAGE_UNSUPPORTED, "TIFF", 0, 4, "MM\0*"},
		{QW_IMAGE_UNSUPPORTED, "HEIF/AVIF", 4, 4, "ftyp"},
	};
	const unsigned char *p = data;
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
		size_t end = kinds[i].at + kinds[i].len;
		bool riff = kinds[i].format == QW_IMAGE_WEBP;
		if (len >= (riff || kinds[i].at == 4 ? 12 : end) &&
		    (!riff || !memcmp(p, "RIFF", 4)) &&
		    !memcmp(p + kinds[i].at, kinds[i].magic, kinds[i].len)) {
			if (name)
				*name = kinds[i].name;
			return kinds[i].format;
		}
	}
	if (name)
		*name = NULL;
	return QW_IMAGE_UNKNOWN;
}
