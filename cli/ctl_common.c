/* ctl_common.c - what qwenctl's commands share: the usage text, the common options, strict
 * real-valued flags, the daemon's answers turned into messages and exit statuses, Ctrl-C,
 * the clock, and fetching the daemon's status.  See ctl.h. */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/ctl.h"
#include "daemon/image/format.h"
#include "loader/clock.h"

static const char usage_short[] =
	"usage: qwenctl [--socket ENDPOINT] [--timeout SECONDS] COMMAND [OPTIONS]\n"
	"       qwenctl submit [OPTIONS] [PROMPT | - | --token-ids LIST | --messages FILE]\n"
	"       qwenctl status [--json]\n"
	"       qwenctl cancel ID\n"
	"       qwenctl shutdown\n"
	"       qwenctl bench [--concurrency C] [--requests N] [--prompt-tokens P] "
	"[--max-tokens T]\n"
	"                     [--shared-prefix S] [--turns K] [--seed S] [--json]\n";

static const char usage_long[] =
	"\n"
	"Commands:\n"
	"  submit    generate from PROMPT (- reads stdin) and stream the answer to stdout\n"
	"  status    the daemon's state: model, loading, stages, KV cache, queue, throughput\n"
	"  cancel    cancel the request with id ID\n"
	"  shutdown  ask the daemon to stop\n"
	"  bench     load the daemon with random token-id prompts; report throughput and latency\n"
	"\n"
	"Every command:\n"
	"  -s, --socket ENDPOINT   the daemon: ipc://PATH (or the socket file's PATH alone)\n"
	"                          or tcp://HOST:PORT (default: ipc:///run/qwend/qwend.sock\n"
	"                          if that socket exists, else\n"
	"                          ipc://$XDG_RUNTIME_DIR/qwend.sock; here: %s)\n"
	"  -t, --timeout SECONDS   how long the daemon has for its first answer (default %g)\n"
	"  -h, --help              this text\n"
	"  -V, --version           the version (before the command)\n"
	"\n"
	"submit:\n"
	"  -i, --image FILE        an image (JPEG, PNG or WebP, at most %d MiB); repeat for\n"
	"                          more, in order (default: none)\n"
	"      --system TEXT       a system message before the user's (default: none)\n"
	"  -n, --max-tokens N      tokens to generate at most (default: the daemon's\n"
	"                          max-new-tokens)\n"
	"      --temperature T     sampling temperature, 0 to 100 (default: the daemon's)\n"
	"      --top-p P           nucleus sampling, in (0, 1] (default: the daemon's)\n"
	"      --top-k K           top-k sampling, 0 is off (default: the daemon's)\n"
	"      --min-p P           keep tokens at least P times as likely as the best, 0 to 1\n"
	"                          (default: 0, off)\n"
	"      --repetition-penalty R  HF's: logits of tokens of the prompt or generated\n"
	"                          divided by R (multiplied where negative), in (0, 100]\n"
	"                          (default: 1, off)\n"
	"      --frequency-penalty F  minus F times each token's count so far, -2 to 2\n"
	"                          (default: 0, off)\n"
	"      --presence-penalty P  minus P for each token generated so far, -2 to 2\n"
	"                          (default: 0, off)\n"
	"      --logprobs N        with --json: each token's log-probability and the N most\n"
	"                          likely ones', 0 to 20 (default: none)\n"
	"      --seed S            sampling seed (default: the daemon's)\n"
	"  -g, --greedy            argmax decoding, whatever the sampling flags say (default: off)\n"
	"      --token-ids LIST    the prompt as token ids, e.g. 1,2,3, instead of PROMPT; with\n"
	"                          --image, the images of its <|image_pad|> runs (default: none)\n"
	"      --messages FILE     the whole conversation instead of PROMPT, - reads stdin: a\n"
	"                          JSON array of {\"role\", \"content\", \"reasoning_content\"};\n"
	"                          content a string or an array of {\"type\": \"text\",\n"
	"                          \"text\"} and {\"type\": \"image\", \"image\": PATH} (a\n"
	"                          path relative to FILE's directory) (default: none)\n"
	"      --stop STR          stop at STR; repeat for more, at most %d (default: none)\n"
	"      --raw               send PROMPT as it is, without the chat template; images go\n"
	"                          to its <|image_pad|> runs in order (default: chat)\n"
	"      --ignore-eos        generate --max-tokens tokens whatever the model says\n"
	"                          (default: off)\n"
	"      --thinking          also print the reasoning, before the answer, as\n"
	"                          <think>\\n...\\n</think>\\n (default: hidden)\n"
	"      --json              print one JSON object at the end instead of streaming: id,\n"
	"                          token_ids, text, reasoning (if any), finish_reason, usage,\n"
	"                          logprobs (with --logprobs: [{id, logprob, top: [{id,\n"
	"                          logprob}]}], null for a token the cuts removed)\n"
	"      --no-stream         the daemon sends the whole text at the end (default: stream)\n"
	"\n"
	"status:\n"
	"      --json              the daemon's status JSON as it is (default: a summary)\n"
	"\n"
	"bench:\n"
	"  -c, --concurrency C     requests in flight at once, one socket each (default 4)\n"
	"  -N, --requests N        requests in all (default 32)\n"
	"  -p, --prompt-tokens P   random prompt token ids per request, from [100, min(vocab,\n"
	"                          150000)) (default 128)\n"
	"  -n, --max-tokens T      tokens each request generates, greedy, ignoring EOS\n"
	"                          (default 128)\n"
	"      --shared-prefix S   every prompt begins with the same S random ids, as a system\n"
	"                          prompt would (default 0)\n"
	"      --turns K           requests are turns of conversations of K turns (N / K of\n"
	"                          them, C at once): each turn resends the previous prompt and\n"
	"                          its answer, then P new ids (default 1); the report gives the\n"
	"                          share of prompt tokens the daemon's prefix cache served\n"
	"      --seed S            seed of the random prompts (default 0)\n"
	"      --json              one JSON object instead of the report\n"
	"\n"
	"Answers and reports go to stdout; statistics and errors to stderr.\n"
	"Exit status: 0 ok, 1 the daemon answered with an error, 2 bad usage, 3 the daemon\n"
	"could not be reached, 130 interrupted (submit cancels its request first).\n";

void ctl_print_help(void)
{
	char here[QW_ENDPOINT_MAX];
	qw_endpoint_env env = qw_endpoint_env_current();
	qw_endpoint_client_default(&env, here, sizeof here);
	fputs(usage_short, stdout);
	printf(usage_long, here, QW_CLIENT_TIMEOUT_MS / 1e3,
	       (int)(QW_LIMITS_DEFAULT.max_image_bytes >> 20), QW_LIMITS_DEFAULT.max_stop);
}

int ctl_usage_error(const char *fmt, ...)
{
	va_list ap;
	fputs("qwenctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n", stderr);
	fputs(usage_short, stderr);
	fputs("(qwenctl --help lists every option)\n", stderr);
	return CTL_USAGE;
}

int ctl_option_error(const char *cmd, char *const *argv, int opt)
{
	/* a short option is optopt; a long one (or one given a value it does not take) is the
	 * word getopt just stepped over */
	char name[64];
	const char *word = optind > 0 ? argv[optind - 1] : "";
	if (optopt > 0 && optopt < 128 && strncmp(word, "--", 2) != 0)
		snprintf(name, sizeof name, "-%c", optopt);
	else
		snprintf(name, sizeof name, "%.*s", (int)strcspn(word, "="), word);
	const char *sep = cmd ? ": " : "";
	cmd = cmd ? cmd : "";
	if (opt == ':')
		return ctl_usage_error("%s%s%s needs a value", cmd, sep, name);
	if (strchr(word, '=') && strncmp(word, "--", 2) == 0 && optopt)
		return ctl_usage_error("%s%s%s takes no value", cmd, sep, name);
	return ctl_usage_error("%s%sunknown option '%s'", cmd, sep, name);
}

bool ctl_arg_real(const char *flag, const char *s, double lo, double hi, bool lo_open,
		  double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || !(v >= lo && v <= hi) || (lo_open && v == lo)) {
		fprintf(stderr, "qwenctl: %s: '%s' is not a number in %c%g, %g]\n", flag, s,
			lo_open ? '(' : '[', lo, hi);
		return false;
	}
	*out = v;
	return true;
}

int ctl_common_opt(ctl_common *c, int opt, const char *arg)
{
	double secs;
	switch (opt) {
	case 's':
		/* a bare path is the daemon's socket file */
		if (!*arg || !qw_endpoint_from_arg(arg, c->endpoint, sizeof c->endpoint)) {
			ctl_usage_error("--socket: '%s' is not an endpoint: write ipc://PATH (or the "
					"socket file's PATH alone) or tcp://HOST:PORT", arg);
			return -1;
		}
		return 1;
	case 't':
		if (!ctl_arg_real("--timeout", arg, 0, 86400, true, &secs))
			return -1;
		c->timeout_ms = secs * 1e3 < 1 ? 1 : (int)(secs * 1e3);
		return 1;
	case 'h':
		ctl_print_help();
		exit(CTL_OK);
	}
	return 0;
}

int ctl_fail(const qw_err *err)
{
	fprintf(stderr, "qwenctl: %s\n", err->msg);
	return err->code == QW_E_IO ? CTL_UNREACHABLE : CTL_ERROR;
}

int ctl_reply_error(const qw_reply *r)
{
	const char *code = r->code ? r->code : "error";
	fprintf(stderr, "qwenctl: %s: %s\n", code, r->message ? r->message : "");
	if (strcmp(code, "not_ready") == 0)
		fprintf(stderr, "qwenctl: the daemon is still loading the model; qwenctl status "
			"shows how far\n");
	else if (strcmp(code, "busy") == 0)
		fprintf(stderr, "qwenctl: the daemon's queue is full; try again later\n");
	return CTL_ERROR;
}

int ctl_unexpected(const char *op, const qw_reply *r)
{
	static const char *const names[] = {"accepted", "chunk", "done", "error", "status", "ok"};
	fprintf(stderr, "qwenctl: the daemon answered %s with a '%s' reply\n", op,
		names[r->type]);
	return CTL_ERROR;
}

volatile sig_atomic_t ctl_interrupted;

static void on_sigint(int sig)
{
	ctl_interrupted = 1;
}

void ctl_catch_sigint(void)
{
	struct sigaction sa = {.sa_handler = on_sigint, .sa_flags = SA_RESETHAND};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
}

int ctl_connect(const ctl_common *c, qw_client *client)
{
	qw_err err = {0};
	if (qw_client_open(client, NULL, c->endpoint, c->timeout_ms, &err) != QW_OK)
		return ctl_fail(&err);
	return CTL_OK;
}

int ctl_fetch_status(const ctl_common *c, char **text, json_t **obj)
{
	qw_client client;
	*text = NULL;
	*obj = NULL;
	int rc = ctl_connect(c, &client);
	if (rc != CTL_OK)
		return rc;
	qw_request r = {.op = QW_OP_STATUS};
	qw_reply rep = {0};
	qw_err err = {0};
	if (qw_client_call(&client, &r, &rep, &err) != QW_OK) {
		rc = ctl_fail(&err);
	} else if (rep.type == QW_REPLY_ERROR) {
		rc = ctl_reply_error(&rep);
	} else if (rep.type != QW_REPLY_STATUS) {
		rc = ctl_unexpected("status", &rep);
	} else {
		json_error_t jerr;
		*text = strdup(rep.json ? rep.json : "");
		*obj = json_loads(*text ? *text : "", 0, &jerr);
		if (!json_is_object(*obj)) {
			fprintf(stderr, "qwenctl: the daemon's status is not a JSON object (%s)\n",
				*obj ? "another JSON value" : jerr.text);
			json_decref(*obj);
			*obj = NULL;
			rc = CTL_ERROR;
		}
	}
	qw_reply_free(&rep);
	qw_client_close(&client);
	return rc;
}

// ---------------------------------------------------------------------------------------
// files named on the command line

bool ctl_read_input(const char *what, const char *path, size_t cap, char **out, size_t *len)
{
	const char *name = path ? path : "(stdin)";
	FILE *f = path ? fopen(path, "rb") : stdin;
	struct stat st;
	if (!f) {
		fprintf(stderr, "qwenctl: %s %s: cannot open: %s\n", what, path, strerror(errno));
		return false;
	}
	if (path && (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) ||
		     (size_t)st.st_size > cap)) {
		if (S_ISREG(st.st_mode))
			fprintf(stderr, "qwenctl: %s %s: %lld bytes; at most %zu MiB are sent\n", what,
				path, (long long)st.st_size, cap >> 20);
		else
			fprintf(stderr, "qwenctl: %s %s: not a regular file\n", what, path);
		fclose(f);
		return false;
	}
	char *buf = NULL, chunk[65536];
	size_t n = 0, got;
	bool ok = true;
	while (ok && (got = fread(chunk, 1, sizeof chunk, f)) > 0) {
		char *grown = n + got <= cap ? realloc(buf, n + got + 1) : NULL;
		if (n + got > cap)
			fprintf(stderr, "qwenctl: %s %s: more than %zu bytes\n", what, name, cap);
		else if (!grown)
			fprintf(stderr, "qwenctl: out of memory reading %s\n", name);
		ok = grown != NULL;
		if (ok) {
			buf = grown;
			memcpy(buf + n, chunk, got);
			n += got;
		}
	}
	if (ok && ferror(f)) {
		fprintf(stderr, "qwenctl: %s %s: cannot read: %s\n", what, name, strerror(errno));
		ok = false;
	}
	if (path)
		fclose(f);
	if (ok && !buf && !(buf = malloc(1)))
		fprintf(stderr, "qwenctl: out of memory reading %s\n", name);
	if (!ok || !buf) {
		free(buf);
		return false;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return true;
}

bool ctl_read_image(const char *what, const char *path, char **out, size_t *len)
{
	if (!ctl_read_input(what, path, QW_LIMITS_DEFAULT.max_image_bytes, out, len))
		return false;
	const char *name;
	qw_image_format f = qw_image_sniff(*out, *len, &name);
	if (f == QW_IMAGE_JPEG || f == QW_IMAGE_PNG || f == QW_IMAGE_WEBP)
		return true;
	if (f == QW_IMAGE_UNSUPPORTED)
		fprintf(stderr, "qwenctl: %s %s: a %s image; qwend takes JPEG, PNG or WebP\n", what,
			path, name);
	else
		fprintf(stderr, "qwenctl: %s %s: not an image (JPEG, PNG or WebP)\n", what, path);
	free(*out);
	*out = NULL;
	return false;
}
