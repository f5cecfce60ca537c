/* settings.h - qwend's settings: one table drives the config file, the --name value command
 * line overrides, validation, defaults and the status dump.
 *
 * Owns: qw_settings (every setting as a struct field) and the table (name, type, bounds or
 * choices, default, whether it can change at run time, and a line of help).  A config file
 * is "name value" lines with # comments; an unknown name, a bad value or a value out of
 * bounds is an error naming the file and line.  systemd/qwend.conf documents every setting.
 */
#ifndef QW_DAEMON_SETTINGS_H
#define QW_DAEMON_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loader/error.h"

typedef struct qw_settings {
	char model[1024];            /* a model directory, "demo" or synthetic:CONFIG.json; "" =
					unset, which qwend refuses */
	char tokenizer[1024];        /* "" = the model directory's */
	char device[8];              /* auto, cpu or cuda */
	char gpus[128];              /* "0,1,2,3" ("" = every GPU) */
	int64_t stages;              /* pipeline stages on the cpu backend */
	char socket[1024];           /* ZeroMQ endpoint; "" = the default one */
	int64_t kv_blocks;           /* 0 = from kv_memory */
	double kv_memory;            /* share of free GPU memory for the KV cache */
	int64_t kv_block_tokens;
	int64_t max_seqs;
	int64_t max_batch_tokens;
	int64_t max_queue;
	int64_t max_request_bytes;
	int64_t max_images;          /* per request */
	int64_t max_image_bytes;
	int64_t max_image_pixels;    /* decoded */
	int64_t max_image_tokens;    /* per request */
	int64_t max_new_tokens;      /* the default max_tokens */
	int64_t max_model_len;       /* tokens of one sequence; 0 = the model's */
	char thinking[8];            /* auto, yes, no: prompts open <think> */
	double temperature;          /* sampling defaults */
	double top_p;
	int64_t top_k;
	int64_t pipeline_depth;      /* steps in flight; 0 = the stage count */
	int64_t image_arena;         /* bytes of shared memory for images on their way in */
	int64_t image_threads;       /* threads decoding and resizing request images */
	int64_t vision_cache;        /* bytes stage 0 keeps the vision tower's outputs of seen
					images in; 0: off */
	double drain_timeout;        /* seconds SIGTERM waits for requests to finish */
	double worker_timeout;       /* seconds without a sign of life before a worker is hung */
	int64_t max_restarts;        /* worker restarts in 10 minutes before qwend gives up */
	char allow_remote[4];        /* yes: tcp and abstract sockets (no file guards them) */
	char check_transport[4];     /* yes: checksum every stage hand-over */
	char cuda_graphs[4];         /* yes: decode steps replayed as CUDA graphs */
	char prefix_cache[4];        /* yes: full KV blocks are kept and reused by prompts that
					share their beginning */
	char log_level[8];           /* debug, info, warn, error */
} qw_settings;

typedef enum qw_setting_type { QW_SET_STR, QW_SET_INT, QW_SET_SIZE, QW_SET_REAL, QW_SET_ENUM } qw_setting_type;

typedef struct qw_setting_def {
	const char *name;
	qw_setting_type type;
	size_t offset;               /* of the field in qw_settings */
	size_t size;                 /* string capacity */
	double lo, hi;               /* numeric bounds */
	const char *choices;         /* enum: "a|b|c" */
	const char *def;             /* default, as written in a config file */
	bool runtime;                /* may change while serving */
	const char *help;
} qw_setting_def;

const qw_setting_def *qw_settings_table(int *n);

/* Every setting at its default. */
void qw_settings_defaults(qw_settings *s);

/* Sets one by name from its text form (sizes take K, M, G).  where names the source in
 * errors ("qwend.conf:12: kv-blocks: ..."); NULL is the command line, whose errors name the
 * flag ("--kv-blocks: ..."). */
qw_status qw_settings_set(qw_settings *s, const char *name, const char *value, const char *where,
			  qw_err *err);

/* Applies a config file. */
qw_status qw_settings_load(qw_settings *s, const char *path, qw_err *err);

/* One setting's value as a config file writes it ("64M", "0.9", "cpu", "\"\"" for an
 * empty string) into buf; returns buf. */
const char *qw_settings_text(const qw_settings *s, const qw_setting_def *d, char *buf,
			     size_t cap);

/* All settings as a JSON object (malloc'd text), for status: values as JSON numbers and
 * strings, or with as_text every one as the text a config file takes. */
char *qw_settings_json(const qw_settings *s, bool as_text);

#endif
