/* units.c - quantities for people.  See units.h. */
#include "loader/units.h"

#include <stdio.h>

const char *qw_fmt_bytes(uint64_t bytes, char *buf, int len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)bytes;
	int u = 0;
	while (v >= 1024.0 && u < 4) {
		v /= 1024.0;
		u++;
	}
	snprintf(buf, (size_t)len, u ? "%.2f %s" : "%.0f %s", v, units[u]);
	return buf;
}

const char *qw_fmt_size(uint64_t bytes, char *buf, int len)
{
	static const char suffix[] = {'G', 'M', 'K'};
	for (int i = 0; i < 3; i++) {
		uint64_t unit = 1ull << (10 * (3 - i));
		if (bytes && bytes % unit == 0) {
			snprintf(buf, (size_t)len, "%llu%c", (unsigned long long)(bytes / unit),
				 suffix[i]);
			return buf;
		}
	}
	snprintf(buf, (size_t)len, "%llu", (unsigned long long)bytes);
	return buf;
}
