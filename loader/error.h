/* error.h - the error value that library code of qwen-vl returns.
 *
 * Owns: qw_status (what kind of failure) and qw_err (the status plus a message that names
 * what is wrong: file, tensor, field, expected against got).  Library code under loader/
 * and kernels/ never prints; it fills a caller-supplied qw_err and returns its status, and
 * each level may prefix context on the way up.  A NULL qw_err is allowed everywhere.
 */
#ifndef QW_LOADER_ERROR_H
#define QW_LOADER_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qw_status {
	QW_OK = 0,
	QW_E_IO,              /* open/read/write/mmap of a file failed */
	QW_E_NOMEM,           /* an allocation failed */
	QW_E_ARG,             /* a bad argument from the caller or the command line */
	QW_E_CONFIG,          /* config.json is malformed, invalid or inconsistent */
	QW_E_ST_TRUNCATED,    /* safetensors file shorter than its own header says */
	QW_E_ST_HEADER_LEN,   /* header length runs past the end of the file, or is insane */
	QW_E_ST_HEADER_JSON,  /* header is not JSON, or not the safetensors structure */
	QW_E_ST_DTYPE,        /* a dtype this loader does not know */
	QW_E_ST_OFFSETS,      /* a tensor's data offsets lie past the end of the data */
	QW_E_ST_OVERLAP,      /* two tensors' byte ranges overlap */
	QW_E_ST_SIZE,         /* a tensor's byte size is not shape x dtype size */
	QW_E_INDEX,           /* sharded index malformed, or naming a shard that is missing */
	QW_E_WEIGHTS,         /* tensors missing or mismatched against the config */
	QW_E_DEVICE,          /* a CUDA, cuBLAS or NCCL call failed */
	QW_E_TIMEOUT,         /* nothing arrived within the time given (the caller may retry) */
	QW_E_ABORTED,         /* the other side gave up: a ring or channel was aborted */
	QW_E_FULL,            /* no room now (a full queue, ring or cache); later may succeed */
	QW_E_LIMIT,           /* over a configured limit (a request, image or prompt larger than
				 allowed); a smaller one may succeed, this one never will */
	QW_E_COUNT_           /* number of codes; not an error */
} qw_status;

typedef struct qw_err {
	qw_status code;   /* QW_OK when nothing went wrong */
	char msg[1024];   /* what went wrong, most general context first */
} qw_err;

/* Records code and a printf-style message in err; returns code. */
qw_status qw_fail(qw_err *err, qw_status code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prepends "context: " to err's message (as an error passes up a level); returns err->code. */
qw_status qw_err_context(qw_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Short stable name of a status, e.g. "truncated". */
const char *qw_status_name(qw_status code);

/* Clears err to QW_OK. */
void qw_err_clear(qw_err *err);

/* Evaluates call (a qw_status expression) and returns its status from the calling function
 * when it is not QW_OK. */
#define QW_TRY(call)                            \
	do {                                    \
		qw_status qw_try_st_ = (call);  \
		if (qw_try_st_ != QW_OK)        \
			return qw_try_st_;      \
	} while (0)

#ifdef __cplusplus
}
#endif

#endif
