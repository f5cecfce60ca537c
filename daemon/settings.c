/* settings.c - the settings table, config files and overrides.  See settings.h. */
#include "daemon/settings.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/units.h"

#define F(field) offsetof(qw_settings, field)
#define STR(field) F(field), sizeof(((qw_settings *)0)->field)

static const qw_setting_def table[] = {
	{"model", QW_SET_STR, STR(model), 0, 0, NULL, "", false,
	 "what to serve (required): a model directory (config.json and the safetensors, as HF's "
	 "download makes it); demo: a tiny built-in model with random weights, to try qwend out; "
	 "synthetic:CONFIG.json: that config with deterministic random weights (FP8 with block "
	 "scales under an fp8 quantization_config)"},
	{"tokenizer", QW_SET_STR, STR(tokenizer), 0, 0, NULL, "", false,
	 "tokenizer directory; empty: the model directory's"},
	{"device", QW_SET_ENUM, STR(device), 0, 0, "auto|cpu|cuda", "auto", false,
	 "backend; auto: cuda where this build has CUDA and the NVIDIA driver lists a GPU, else "
	 "cpu"},
	{"gpus", QW_SET_STR, STR(gpus), 0, 0, NULL, "", false,
	 "GPUs of the cuda pipeline, one stage each, e.g. 0,1,2,3; empty: all (a GPU may repeat: "
	 "its stages then talk over NCCL's sockets, for tests)"},
	{"stages", QW_SET_INT, F(stages), 0, 1, 64, NULL, "1", false,
	 "pipeline stages on the cpu backend"},
	{"socket", QW_SET_STR, STR(socket), 0, 0, NULL, "", false,
	 "client endpoint: ipc://PATH (or the socket file's PATH alone) or tcp://HOST:PORT; "
	 "empty: ipc:///run/qwend/qwend.sock or $XDG_RUNTIME_DIR/qwend.sock"},
	{"kv-blocks", QW_SET_INT, F(kv_blocks), 0, 0, 1 << 30, NULL, "0", false,
	 "KV cache blocks per stage; 0: size the cache by kv-memory"},
	{"kv-memory", QW_SET_REAL, F(kv_memory), 0, 0.01, 0.99, NULL, "0.9", false,
	 "share of the memory left after the weights and what steps use given to the KV cache "
	 "(the cpu backend: of the host's available memory over the stages, at most 256 MiB a "
	 "stage)"},
	{"kv-block-tokens", QW_SET_INT, F(kv_block_tokens), 0, 1, 1024, NULL, "16", false,
	 "tokens per KV block"},
	{"max-seqs", QW_SET_INT, F(max_seqs), 0, 1, 65536, NULL, "256", false,
	 "sequences decoding at once"},
	{"max-batch-tokens", QW_SET_INT, F(max_batch_tokens), 0, 1, 1 << 24, NULL, "8192", false,
	 "tokens in one step (prefill chunks and decodes together)"},
	{"pipeline-depth", QW_SET_INT, F(pipeline_depth), 0, 0, 256, NULL, "0", false,
	 "steps in flight at once; 0: as many as there are stages"},
	{"max-queue", QW_SET_INT, F(max_queue), 0, 0, 1 << 24, NULL, "1024", true,
	 "requests waiting beyond which submit answers busy"},
	{"max-request-bytes", QW_SET_SIZE, F(max_request_bytes), 0, 1024, 1ll << 32, NULL, "64M",
	 false, "largest client message"},
	{"max-images", QW_SET_INT, F(max_images), 0, 0, 1024, NULL, "16", true,
	 "images in one request"},
	{"max-image-bytes", QW_SET_SIZE, F(max_image_bytes), 0, 1024, 1ll << 32, NULL, "32M", true,
	 "one encoded image"},
	{"max-image-pixels", QW_SET_SIZE, F(max_image_pixels), 0, 1024, 1ll << 32, NULL, "64M", true,
	 "pixels of one decoded image"},
	{"max-image-tokens", QW_SET_INT, F(max_image_tokens), 0, 1, 1 << 24, NULL, "16384", true,
	 "image tokens in one request (stage 0's vision memory is reserved for it at start)"},
	{"max-new-tokens", QW_SET_INT, F(max_new_tokens), 0, 1, 1 << 22, NULL, "4096", true,
	 "tokens a request generates when it does not say"},
	{"max-model-len", QW_SET_INT, F(max_model_len), 0, 0, 1 << 24, NULL, "0", false,
	 "tokens of one sequence, prompt and answer; 0: the model's max_position_embeddings"},
	{"image-arena", QW_SET_SIZE, F(image_arena), 0, 1 << 20, 1ll << 36, NULL, "256M", false,
	 "shared memory for resized images on their way to the vision tower, and for the "
	 "token histories that the penalties of a request's sampling look at"},
	{"image-threads", QW_SET_INT, F(image_threads), 0, 1, 64, NULL, "2", false,
	 "threads that decode and resize request images, off the loop that serves the clients"},
	{"vision-cache", QW_SET_SIZE, F(vision_cache), 0, 0, 1ll << 40, NULL, "256M", false,
	 "memory stage 0 reserves at start for the vision tower's outputs of images it has seen, "
	 "so that a request about the same image (by its pixels) does not run the tower again; "
	 "least recently used images make room; 0: off"},
	{"thinking", QW_SET_ENUM, STR(thinking), 0, 0, "auto|yes|no", "auto", false,
	 "whether prompts open <think> (a Thinking model); auto: as the model's chat template does"},
	{"temperature", QW_SET_REAL, F(temperature), 0, 0, 100, NULL, "1.0", true,
	 "sampling temperature when a request does not say (0: greedy)"},
	{"top-p", QW_SET_REAL, F(top_p), 0, 1e-6, 1, NULL, "1.0", true,
	 "nucleus sampling when a request does not say (1: off)"},
	{"top-k", QW_SET_INT, F(top_k), 0, 0, 1 << 20, NULL, "0", true,
	 "top-k sampling when a request does not say (0: off)"},
	{"drain-timeout", QW_SET_REAL, F(drain_timeout), 0, 0, 86400, NULL, "30", true,
	 "seconds SIGTERM or shutdown lets requests finish before failing the rest"},
	{"worker-timeout", QW_SET_REAL, F(worker_timeout), 0, 1, 86400, NULL, "300", true,
	 "seconds a worker may show no sign of life before it is taken for hung and restarted"},
	{"max-restarts", QW_SET_INT, F(max_restarts), 0, 0, 1000, NULL, "3", true,
	 "worker failures handled within 10 minutes (each restarts the failed stage's worker, or "
	 "every worker) before qwend exits for systemd to restart it"},
	{"allow-remote", QW_SET_ENUM, STR(allow_remote), 0, 0, "no|yes", "no", false,
	 "yes: qwend may bind sockets that no file permissions guard: tcp (every local user may "
	 "connect, and other machines too beyond loopback) and abstract ipc://@NAME sockets"},
	{"check-transport", QW_SET_ENUM, STR(check_transport), 0, 0, "no|yes", "no", false,
	 "yes: checksum the activations of every stage hand-over and fail loudly on a mismatch"},
	{"cuda-graphs", QW_SET_ENUM, STR(cuda_graphs), 0, 0, "no|yes", "yes", false,
	 "yes: the cuda backend records each decode step's shape as a CUDA graph and replays it"},
	{"prefix-cache", QW_SET_ENUM, STR(prefix_cache), 0, 0, "no|yes", "yes", true,
	 "yes: full KV blocks outlive their request, and a prompt that begins as an earlier one "
	 "did (a system prompt, a conversation, an image) skips that part of its prefill; no: "
	 "every prompt is computed whole"},
	{"log-level", QW_SET_ENUM, STR(log_level), 0, 0, "debug|info|warn|error", "info", true,
	 "least severe log line written"},
};

const qw_setting_def *qw_settings_table(int *n)
{
	*n = (int)(sizeof table / sizeof *table);
	return table;
}

static const qw_setting_def *find(const char *name)
{
	for (size_t i = 0; i < sizeof table / sizeof *table; i++)
		if (strcmp(table[i].name, name) == 0)
			return &table[i];
	return NULL;
}

static bool parse_size(const char *v, double *out)
{
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	double mult = 1;
	if (*end == 'K' || *end == 'k')
		mult = 1024.0, end++;
	else if (*end == 'M' || *end == 'm')
		mult = 1024.0 * 1024, end++;
	else if (*end == 'G' || *end == 'g')
		mult = 1024.0 * 1024 * 1024, end++;
	*out = x * mult;
	return !errno && end != v && !*end;
}

qw_status qw_settings_set(qw_settings *s, const char *name, const char *value, const char *where,
			  qw_err *err)
{
	const qw_setting_def *d = find(name);
	if (!d)
		return where ? qw_fail(err, QW_E_ARG, "%s: unknown setting \"%s\"", where, name)
			     : qw_fail(err, QW_E_ARG, "unknown setting --%s", name);
	/* what the errors name: the file and line and the setting, or the flag */
	char what[1200];
	if (where)
		snprintf(what, sizeof what, "%s: %s", where, name);
	else
		snprintf(what, sizeof what, "--%s", name);
	char *field = (char *)s + d->offset;
	if (d->type == QW_SET_STR || d->type == QW_SET_ENUM) {
		if (strlen(value) >= d->size)
			return qw_fail(err, QW_E_ARG, "%s: longer than %zu characters", what,
				       d->size - 1);
		if (d->type == QW_SET_ENUM) {
			bool ok = false;
			const char *c = d->choices;
			size_t n = strlen(value);
			while (c && *c) {
				const char *bar = strchr(c, '|');
				size_t k = bar ? (size_t)(bar - c) : strlen(c);
				ok |= k == n && strncmp(c, value, n) == 0;
				c = bar ? bar + 1 : NULL;
			}
			if (!ok)
				return qw_fail(err, QW_E_ARG, "%s: \"%s\" is not one of %s", what, value,
					       d->choices);
		}
		snprintf(field, d->size, "%s", value);
		return QW_OK;
	}
	double x;
	char *end;
	bool ok;
	if (d->type == QW_SET_SIZE) {
		ok = parse_size(value, &x);
	} else {
		errno = 0;
		x = strtod(value, &end);
		ok = !errno && end != value && !*end && (d->type == QW_SET_REAL || x == (double)(int64_t)x);
	}
	if (!ok)
		return qw_fail(err, QW_E_ARG, "%s: \"%s\" is not %s", what, value,
			       d->type == QW_SET_REAL ? "a number" : d->type == QW_SET_SIZE
			       ? "a size (K, M, G allowed)" : "an integer");
	if (x < d->lo || x > d->hi)
		return qw_fail(err, QW_E_ARG, "%s: %s is outside [%g, %g]", what, value, d->lo, d->hi);
	if (d->type == QW_SET_REAL)
		*(double *)field = x;
	else
		*(int64_t *)field = (int64_t)x;
	return QW_OK;
}

void qw_settings_defaults(qw_settings *s)
{
	memset(s, 0, sizeof *s);
	for (size_t i = 0; i < sizeof table / sizeof *table; i++)
		qw_settings_set(s, table[i].name, table[i].def, "the defaults", NULL);
}

qw_status qw_settings_load(qw_settings *s, const char *path, qw_err *err)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return qw_fail(err, QW_E_IO, "%s: cannot open: %s", path, strerror(errno));
	char line[4096], where[4200];
	qw_status st = QW_OK;
	for (int no = 1; st == QW_OK && fgets(line, sizeof line, f); no++) {
		snprintf(where, sizeof where, "%s:%d", path, no);
		size_t n = strlen(line);
		if (n == sizeof line - 1 && line[n - 1] != '\n') {
			st = qw_fail(err, QW_E_ARG, "%s: line longer than %zu characters", where,
				     sizeof line - 2);
			break;
		}
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char *name = strtok(line, " \t\r\n"), *value = strtok(NULL, "\r\n");
		if (!name)
			continue;
		while (value && (*value == ' ' || *value == '\t'))
			value++;
		for (char *e = value ? value + strlen(value) : NULL; e && e > value && (e[-1] == ' ' ||
								       e[-1] == '\t'); e--)
			e[-1] = '\0';
		if (value && value[0] == '"' && strlen(value) >= 2 && value[strlen(value) - 1] == '"') {
			value[strlen(value) - 1] = '\0';   /* "" writes an empty string */
			value++;
		}
		st = qw_settings_set(s, name, value ? value : "", where, err);
	}
	fclose(f);
	return st;
}

const char *qw_settings_text(const qw_settings *s, const qw_setting_def *d, char *buf,
			     size_t cap)
{
	const char *field = (const char *)s + d->offset;
	switch (d->type) {
	case QW_SET_STR:
	case QW_SET_ENUM: snprintf(buf, cap, "%s", field[0] ? field : "\"\""); break;
	case QW_SET_REAL:
		/* the shortest text that reads back as the same double */
		for (int digits = 6; digits <= 17; digits++) {
			snprintf(buf, cap, "%.*g", digits, *(const double *)field);
			if (strtod(buf, NULL) == *(const double *)field)
				break;
		}
		break;
	case QW_SET_SIZE: qw_fmt_size((uint64_t)*(const int64_t *)field, buf, (int)cap); break;
	case QW_SET_INT: snprintf(buf, cap, "%lld", (long long)*(const int64_t *)field); break;
	}
	return buf;
}

char *qw_settings_json(const qw_settings *s, bool as_text)
{
	json_t *o = json_object();
	for (size_t i = 0; i < sizeof table / sizeof *table; i++) {
		const qw_setting_def *d = &table[i];
		const char *field = (const char *)s + d->offset;
		char text[1100];
		json_t *v = as_text ? json_string(qw_settings_text(s, d, text, sizeof text))
			  : d->type == QW_SET_STR || d->type == QW_SET_ENUM ? json_string(field)
			  : d->type == QW_SET_REAL ? json_real(*(const double *)field)
						   : json_integer(*(const int64_t *)field);
		json_object_set_new(o, d->name, v);
	}
	char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	return text;
}
