/* log.h - the daemon's logger: one line per event, levelled, in a fixed format, to stdout
 * (the systemd journal picks it up) or a file descriptor.
 *
 * Owns: the process's log state, the one global of the project (a process logs as one role:
 * the daemon, or worker N).  Lines read
 *     <pid>:<role> <yyyy-mm-dd hh:mm:ss.mmm> <D|I|W|E> <message>
 * and when the descriptor is the systemd journal's stream (JOURNAL_STREAM names it), as the
 * journal wants them: a syslog priority first, no timestamp (the journal keeps its own),
 *     <7|6|4|3><pid>:<role> <D|I|W|E> <message>
 * so `journalctl -p err` finds the errors.  A message of several lines (an error and its
 * HINT) gives several log lines, each with the prefix.  The level is checked before
 * anything is formatted.  qw_log_signal_safe writes a fixed message with write(2) alone, for
 * signal handlers.  Library code (loader/, kernels/) never logs: it returns errors.
 */
#ifndef QW_DAEMON_LOG_H
#define QW_DAEMON_LOG_H

#include <stdbool.h>

#include "loader/error.h"

typedef enum qw_log_level { QW_LOG_DEBUG, QW_LOG_INFO, QW_LOG_WARN, QW_LOG_ERROR } qw_log_level;

/* role: "daemon", "worker 2", ...; fd -1 for stdout. */
void qw_log_init(const char *role, qw_log_level level, int fd);
void qw_log_set_level(qw_log_level level);
bool qw_log_enabled(qw_log_level level);

void qw_log(qw_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* For signal handlers: writes "<pid>:<role> <msg>\n" with write(2) only. */
void qw_log_signal_safe(const char *msg);

/* "debug", "info", "warn", "error". */
qw_status qw_log_level_parse(const char *name, qw_log_level *out, qw_err *err);

#endif
