/* json_text.c - text into JSON strings, invalid UTF-8 replaced.  See json_text.h. */
#include "cli/json_text.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

json_t *qw_json_text(const char *s, size_t len)
{
	json_t *j = json_stringn(s ? s : "", s ? len : 0);
	if (j || !s)
		return j;
	char *out = malloc(3 * len + 1), *w = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < len;) {
		unsigned char b = (unsigned char)s[i];
		size_t n = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3
			 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
		bool ok = n > 0 && i + n <= len;
		for (size_t k = 1; ok && k < n; k++) {
			unsigned char cb = (unsigned char)s[i + k];
			unsigned char lo = 0x80, hi = 0xbf;
			if (k == 1 && b == 0xe0) lo = 0xa0;
			if (k == 1 && b == 0xed) hi = 0x9f;
			if (k == 1 && b == 0xf0) lo = 0x90;
			if (k == 1 && b == 0xf4) hi = 0x8f;
			ok = cb >= lo && cb <= hi;
		}
		memcpy(w, ok ? s + i : "\xef\xbf\xbd", ok ? n : 3);
		w += ok ? n : 3;
		i += ok ? n : 1;
	}
	j = json_stringn(out, (size_t)(w - out));
	free(out);
	return j;
}
