/* args.c - command-line helpers.  See args.h. */
#include "cli/args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

bool qw_arg_int(const char *prog, const char *flag, const char *s, long long lo, long long hi,
		long long *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	long long mult = 1;
	if (end != s && *end && !end[1]) {
		switch (*end) {
		case 'K': mult = 1LL << 10; end++; break;
		case 'M': mult = 1LL << 20; end++; break;
		case 'G': mult = 1LL << 30; end++; break;
		}
	}
	if (errno || end == s || *end || v > hi / mult || v * mult < lo || v * mult > hi) {
		fprintf(stderr, "%s: %s: '%s' is not an integer in [%lld, %lld]\n", prog, flag, s,
			lo, hi);
		return false;
	}
	*out = v * mult;
	return true;
}

const char *qw_fmt_count(uint64_t n, char *buf, int len)
{
	if (n >= 1000000000ull)
		snprintf(buf, (size_t)len, "%.3f B", (double)n / 1e9);
	else if (n >= 1000000ull)
		snprintf(buf, (size_t)len, "%.3f M", (double)n / 1e6);
	else
		snprintf(buf, (size_t)len, "%llu", (unsigned long long)n);
	return buf;
}

char *qw_read_text(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - 1 - n, f);
		if (n < cap - 1)
			break;
		char *grown = realloc(buf, cap *= 2);
		if (!grown)
			free(buf);
		buf = grown;
	}
	int failed = !buf ? ENOMEM : ferror(f) ? errno : 0;
	fclose(f);
	if (failed) {
		free(buf);
		errno = failed;
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}
