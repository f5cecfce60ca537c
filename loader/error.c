/* error.c - qw_err: status codes with messages.  See error.h. */
#include "loader/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

qw_status qw_fail(qw_err *err, qw_status code, const char *fmt, ...)
{
	if (!err)
		return code;
	err->code = code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	return code;
}

qw_status qw_err_context(qw_err *err, const char *fmt, ...)
{
	if (!err)
		return QW_E_ARG;
	char prefix[512], joined[sizeof err->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	snprintf(joined, sizeof joined, "%s: %s", prefix, err->msg);
	memcpy(err->msg, joined, sizeof joined);
	return err->code;
}

const char *qw_status_name(qw_status code)
{
	static const char *const names[QW_E_COUNT_] = {
		[QW_OK] = "ok",
		[QW_E_IO] = "io",
		[QW_E_NOMEM] = "out-of-memory",
		[QW_E_ARG] = "bad-argument",
		[QW_E_CONFIG] = "config",
		[QW_E_ST_TRUNCATED] = "truncated",
		[QW_E_ST_HEADER_LEN] = "header-length",
		[QW_E_ST_HEADER_JSON] = "header-json",
		[QW_E_ST_DTYPE] = "dtype",
		[QW_E_ST_OFFSETS] = "offsets",
		[QW_E_ST_OVERLAP] = "overlap",
		[QW_E_ST_SIZE] = "size",
		[QW_E_INDEX] = "index",
		[QW_E_WEIGHTS] = "weights",
		[QW_E_DEVICE] = "device",
		[QW_E_TIMEOUT] = "timeout",
		[QW_E_ABORTED] = "aborted",
		[QW_E_FULL] = "full",
		[QW_E_LIMIT] = "limit",
	};
	return (code >= 0 && code < QW_E_COUNT_ && names[code]) ? names[code] : "unknown";
}

void qw_err_clear(qw_err *err)
{
	if (err) {
		err->code = QW_OK;
		err->msg[0] = '\0';
	}
}
