/* media.c - image URLs to bytes: data: URLs, file:// inside an allowed directory.
 * See media.h. */
#include "http/media.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	return c == '+' ? 62 : c == '/' ? 63 : -1;
}

bool qh_base64_decode(const char *in, size_t len, unsigned char *out, size_t *n)
{
	while (len > 0 && in[len - 1] == '=' && len % 4 != 1)
		len--;                          /* padding is optional: drop it */
	if (len % 4 == 1)
		return false;
	size_t o = 0;
	unsigned acc = 0;
	int bits = 0;
	for (size_t i = 0; i < len; i++) {
		int v = b64_value((unsigned char)in[i]);
		if (v < 0)
			return false;
		acc = (acc << 6) | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	*n = o;
	return true;
}

static bool fail(char *msg, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static bool fail(char *msg, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, cap, fmt, ap);
	va_end(ap);
	return false;
}

static bool data_url(const char *url, size_t len, size_t max, unsigned char **data,
		     size_t *n, bool *too_large, char *msg, size_t cap)
{
	const char *comma = memchr(url, ',', len);
	if (!comma)
		return fail(msg, cap, "a data: URL has no ',' before its data");
	size_t head = (size_t)(comma - url);
	if (head < 5 + 6 || strncasecmp(url + 5, "image/", 6) != 0)
		return fail(msg, cap, "a data: URL must carry an image (data:image/png;base64,...), "
			    "not '%.*s'", (int)(head > 64 ? 64 : head), url);
	if (head < 7 || strncasecmp(comma - 7, ";base64", 7) != 0)
		return fail(msg, cap, "a data: URL's image must be base64 (data:image/...;base64,...)");
	const char *b64 = comma + 1;
	size_t b64_len = len - head - 1;
	if (b64_len / 4 * 3 > max + 3) {
		*too_large = true;
		snprintf(msg, cap, "the image is about %zu bytes; at most %zu are taken",
			 b64_len / 4 * 3, max);
		return false;
	}
	*data = malloc(b64_len / 4 * 3 + 3);
	if (!*data)
		return fail(msg, cap, "out of memory");
	if (!qh_base64_decode(b64, b64_len, *data, n)) {
		free(*data);
		*data = NULL;
		return fail(msg, cap, "a data: URL's base64 is broken (a character outside A-Z a-z "
			    "0-9 + /, or a cut-off end)");
	}
	if (*n > max) {
		free(*data);
		*data = NULL;
		*too_large = true;
		snprintf(msg, cap, "the image is %zu bytes; at most %zu are taken", *n, max);
		return false;
	}
	return true;
}

/* %XX escapes of a file URL's path decoded into out (cap bytes). */
static bool unescape(const char *in, size_t len, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c == '%' && i + 2 < len) {
			char hex[3] = {in[i + 1], in[i + 2], 0};
			char *end;
			long v = strtol(hex, &end, 16);
			if (*end || v <= 0)
				return false;
			c = (char)v;
			i += 2;
		} else if (c == '%') {
			return false;
		}
		if (o + 1 >= cap)
			return false;
		out[o++] = c;
	}
	out[o] = '\0';
	return true;
}

static bool file_url(const char *url, size_t len, const char *allowed, size_t max,
		     unsigned char **data, size_t *n, bool *too_large, char *msg, size_t cap)
{
	if (!allowed || !*allowed)
		return fail(msg, cap, "file:// image URLs are not allowed on this server\nHINT: send "
			    "the image as a data: URL (data:image/png;base64,...), or start "
			    "qwen-http with --allowed-local-media DIR");
	char path[PATH_MAX], real[PATH_MAX], root[PATH_MAX];
	const char *p = url + 7;
	size_t plen = len - 7;
	if (plen >= 9 && !strncasecmp(p, "localhost", 9)) {
		p += 9;
		plen -= 9;
	}
	if (plen == 0 || p[0] != '/' || !unescape(p, plen, path, sizeof path))
		return fail(msg, cap, "a file:// URL needs an absolute path (file:///DIR/FILE)");
	if (!realpath(allowed, root))
		return fail(msg, cap, "the allowed media directory %s cannot be resolved: %s",
			    allowed, strerror(errno));
	if (!realpath(path, real))
		return fail(msg, cap, "cannot open %s: %s", path, strerror(errno));
	size_t rl = strlen(root);
	if (strncmp(real, root, rl) != 0 || (real[rl] != '/' && rl > 1))
		return fail(msg, cap, "%s is outside the directory this server reads images from "
			    "(%s)", path, allowed);
	int fd = open(real, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		if (fd >= 0)
			close(fd);
		return fail(msg, cap, "%s is not a readable file", path);
	}
	if ((size_t)st.st_size > max) {
		close(fd);
		*too_large = true;
		snprintf(msg, cap, "%s is %lld bytes; at most %zu are taken", path,
			 (long long)st.st_size, max);
		return false;
	}
	*data = malloc((size_t)st.st_size + 1);
	size_t got = 0;
	ssize_t r = 1;
	while (*data && got < (size_t)st.st_size &&
	       (r = read(fd, *data + got, (size_t)st.st_size - got)) > 0)
		got += (size_t)r;
	close(fd);
	if (!*data || r < 0) {
		free(*data);
		*data = NULL;
		return fail(msg, cap, "cannot read %s", path);
	}
	*n = got;
	return true;
}

bool qh_media_load(const char *url, size_t url_len, const char *allowed_dir, size_t max,
		   unsigned char **data, size_t *len, bool *too_large, char *msg, size_t cap)
{
	*data = NULL;
	*len = 0;
	*too_large = false;
	if (url_len >= 5 && !strncasecmp(url, "data:", 5))
		return data_url(url, url_len, max, data, len, too_large, msg, cap);
	if (url_len >= 7 && !strncasecmp(url, "file://", 7))
		return file_url(url, url_len, allowed_dir, max, data, len, too_large, msg, cap);
	if ((url_len >= 7 && !strncasecmp(url, "http://", 7)) ||
	    (url_len >= 8 && !strncasecmp(url, "https://", 8)))
		return fail(msg, cap, "this server does not fetch images from http(s) URLs\nHINT: "
			    "send the image itself as a data: URL (data:image/png;base64,...)");
	return fail(msg, cap, "'%.*s' is not an image URL this server takes (data:image/...;"
		    "base64, or file://)", (int)(url_len > 48 ? 48 : url_len), url);
}
