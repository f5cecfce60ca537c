/* units.h - how quantities are written for people, one convention in every program.
 *
 * Owns: bytes in binary units (B, KiB, MiB, GiB, TiB: powers of 1024, as the settings' K, M
 * and G suffixes count them), and a size as a config file takes it (64M).  The daemon's log,
 * its status summary and the tools' reports all write bytes with qw_fmt_bytes.
 */
#ifndef QW_LOADER_UNITS_H
#define QW_LOADER_UNITS_H

#include <stdint.h>

/* "512 B", "1.50 KiB", "1.26 GiB" into buf (len bytes); returns buf. */
const char *qw_fmt_bytes(uint64_t bytes, char *buf, int len);

/* A size as a config file writes it: "64M" for 64 MiB, "1536K", "3G"; a number with no
 * suffix when not a whole number of KiB.  Returns buf. */
const char *qw_fmt_size(uint64_t bytes, char *buf, int len);

#endif
