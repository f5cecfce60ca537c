/* log.c - the levelled line logger.  See log.h. */
#include "daemon/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* the process's logger: the project's one global, set once at start-up */
static struct {
	char prefix[64];      /* "<pid>:<role>" */
	qw_log_level level;
	int fd;
	bool journal;         /* fd is the journal's stream: syslog priorities, no timestamps */
} logger = {"?", QW_LOG_INFO, 1, false};

/* systemd sets JOURNAL_STREAM=DEVICE:INODE for the stream it gave the service as stdout or
 * stderr; fd is the journal's when it is that very file. */
static bool is_journal(int fd)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	char end;
	return js && sscanf(js, "%llu:%llu%c", &dev, &ino, &end) == 2 && fstat(fd, &st) == 0 &&
	       (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void qw_log_init(const char *role, qw_log_level level, int fd)
{
	snprintf(logger.prefix, sizeof logger.prefix, "%d:%s", (int)getpid(), role);
	logger.level = level;
	logger.fd = fd < 0 ? STDOUT_FILENO : fd;
	logger.journal = is_journal(logger.fd);
}

void qw_log_set_level(qw_log_level level)
{
	logger.level = level;
}

bool qw_log_enabled(qw_log_level level)
{
	return level >= logger.level;
}

static void write_all(const char *buf, size_t n)
{
	for (size_t at = 0; at < n;) {       /* retried if interrupted */
		ssize_t w = write(logger.fd, buf + at, n - at);
		if (w <= 0)
			break;
		at += (size_t)w;
	}
}

void qw_log(qw_log_level level, const char *fmt, ...)
{
	if (!qw_log_enabled(level))
		return;
	/* the prefix every line of the message gets */
	static const char priority[] = {'7', '6', '4', '3'};   /* debug, info, warning, err */
	char head[160];
	int h = 0;
	if (logger.journal) {
		h = snprintf(head, sizeof head, "<%c>%s %c ", priority[level], logger.prefix,
			     "DIWE"[level]);
	} else {
		struct timeval tv;
		struct tm tm;
		gettimeofday(&tv, NULL);
		localtime_r(&tv.tv_sec, &tm);
		h = snprintf(head, sizeof head, "%s ", logger.prefix);
		h += (int)strftime(head + h, sizeof head - (size_t)h, "%Y-%m-%d %H:%M:%S", &tm);
		h += snprintf(head + h, sizeof head - (size_t)h, ".%03d %c ",
			      (int)(tv.tv_usec / 1000), "DIWE"[level]);
	}
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (k < 0)
		return;
	/* one write for the whole message, each of its lines prefixed (a HINT on the line
	 * after an error keeps the error's level and origin) */
	char out[4096];
	size_t n = 0;
	for (const char *line = msg; line && n + (size_t)h + 2 < sizeof out;) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		if (len > sizeof out - n - (size_t)h - 2)
			len = sizeof out - n - (size_t)h - 2;
		memcpy(out + n, head, (size_t)h);
		memcpy(out + n + (size_t)h, line, len);
		n += (size_t)h + len;
		out[n++] = '\n';
		line = nl && nl[1] ? nl + 1 : NULL;
	}
	write_all(out, n);
}

void qw_log_signal_safe(const char *msg)
{
	char line[256];
	size_t n = 0, k = strlen(logger.prefix), m = strlen(msg);
	if (logger.journal) {
		memcpy(line, "<6>", 3);
		n = 3;
	}
	memcpy(line + n, logger.prefix, k < 100 ? k : 100);
	n += k < 100 ? k : 100;
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
