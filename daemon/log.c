/* log.c - the levelled line logger.  See log.h. */
#include "daemon/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* the process's logger: the project's one global, set once at start-up */
static struct {
	char prefix[64];      /* "<pid>:<role>" */
	qw_log_level level;
	int fd;
} logger = {"?", QW_LOG_INFO, 1};

void qw_log_init(const char *role, qw_log_level level, int fd)
{
	snprintf(logger.prefix, sizeof logger.prefix, "%d:%s", (int)getpid(), role);
	logger.level = level;
	logger.fd = fd < 0 ? STDOUT_FILENO : fd;
}

void qw_log_set_level(qw_log_level level)
{
	logger.level = level;
}

bool qw_log_enabled(qw_log_level level)
{
	return level >= logger.level;
}

void qw_log(qw_log_level level, const char *fmt, ...)
{
	if (!qw_log_enabled(level))
		return;
	char line[2048];
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	localtime_r(&tv.tv_sec, &tm);
	int n = snprintf(line, sizeof line, "%s ", logger.prefix);
	n += (int)strftime(line + n, sizeof line - (size_t)n, "%Y-%m-%d %H:%M:%S", &tm);
	n += snprintf(line + n, sizeof line - (size_t)n, ".%03d %c ", (int)(tv.tv_usec / 1000),
		      "DIWE"[level]);
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	n = k < 0 ? n : n + k < (int)sizeof line - 1 ? n + k : (int)sizeof line - 2;
	line[n++] = '\n';
	for (int at = 0; at < n;) {          /* one write a line, retried if interrupted */
		ssize_t w = write(logger.fd, line + at, (size_t)(n - at));
		if (w <= 0)
			break;
		at += (int)w;
	}
}

void qw_log_signal_safe(const char *msg)
{
	char line[256];
	size_t n = 0, k = strlen(logger.prefix), m = strlen(msg);
	memcpy(line, logger.prefix, k < 100 ? k : 100);
	n = k < 100 ? k : 100;
	line[n++] = ' ';
	memcpy(line + n, msg, m < 140 ? m : 140);
	n += m < 140 ? m : 140;
	line[n++] = '\n';
	ssize_t w = write(logger.fd, line, n);
	(void)w;
}

qw_status qw_log_level_parse(const char *name, qw_log_level *out, qw_err *err)
{
	static const char *const names[] = {"debug", "info", "warn", "error"};
	for (int i = 0; i < 4; i++)
		if (strcmp(name, names[i]) == 0) {
			*out = (qw_log_level)i;
			return QW_OK;
		}
	return qw_fail(err, QW_E_ARG, "log level \"%s\" is not debug, info, warn or error", name);
}
