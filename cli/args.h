/* args.h - command-line helpers shared by the qwen-vl tools.
 *
 * Owns: strict number parsing for flags (the whole string must be a number in range; sizes
 * take K/M/G suffixes) with an error that names the flag, reading a whole file, and
 * parameter counts for reports (bytes: loader/units.h).
 */
#ifndef QW_CLI_ARGS_H
#define QW_CLI_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses s as an integer in [lo, hi] into *out; on failure prints "prog: --flag: ..." to
 * stderr and returns false. */
bool qw_arg_int(const char *prog, const char *flag, const char *s, long long lo, long long hi,
		long long *out);

/* The whole of path into a malloc'd buffer (NUL-terminated), its length in *len; NULL with
 * errno set. */
char *qw_read_text(const char *path, size_t *len);

/* "235.67 B", "1.83 M" (parameter counts) into buf. */
const char *qw_fmt_count(uint64_t n, char *buf, int len);

#endif
