/* media.h - the bytes behind an image_url of an OpenAI request.
 *
 * Owns: the URL rules of the front end.  A data: URL (data:image/...;base64,...) is decoded
 * here; a file:// URL is read when the operator allowed a directory (--allowed-local-media)
 * and the file, symbolic links resolved, lies inside it; http(s) URLs are refused (the
 * server fetches nothing on a client's behalf); anything else is refused.  What the bytes
 * are (JPEG, PNG, WebP, or broken) is qwend's to decide.  Errors say what is wrong and what
 * to send instead.
 */
#ifndef QW_HTTP_MEDIA_H
#define QW_HTTP_MEDIA_H

#include <stdbool.h>
#include <stddef.h>

/* Decodes standard base64 (padding optional, no whitespace) of len chars into out (room for
 * len / 4 * 3 + 3 bytes); false on a character outside the alphabet or a bad length. */
bool qh_base64_decode(const char *in, size_t len, unsigned char *out, size_t *n);

/* The image behind url (url_len bytes) into *data (malloc'd, *len bytes), at most max
 * bytes.  allowed_dir is the directory file:// URLs may read from ("" or NULL: none).
 * On failure returns false with why (a sentence, with a HINT where the client can fix it)
 * in msg, and *too_large when only the size was wrong. */
bool qh_media_load(const char *url, size_t url_len, const char *allowed_dir, size_t max,
		   unsigned char **data, size_t *len, bool *too_large, char *msg, size_t cap);

#endif
