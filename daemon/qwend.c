/* qwend - the qwen-vl daemon.
 *
 *   qwend [--config FILE] [--SETTING VALUE]...
 *
 * Every setting of daemon/settings.h (systemd/qwend.conf documents them all) can be given
 * in the config file or on the command line, the command line winning.  The daemon starts
 * one worker process per pipeline stage by running this same program as
 *   qwend-worker --worker STAGE --region-fd FD --notify-fd FD --log-level LEVEL
 * which is not for people to type.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/server.h"
#include "daemon/settings.h"
#include "daemon/worker.h"
#include "loader/units.h"
#include "loader/version.h"

#define HELP_WIDTH 99    /* columns of --help */
#define HELP_INDENT 24   /* where an option's text starts */

/* text from column `col` on, wrapped at HELP_WIDTH, continuation lines at HELP_INDENT */
static void wrap(FILE *f, int col, const char *text)
{
	if (col > HELP_INDENT - 2) {
		fprintf(f, "\n%*s", HELP_INDENT, "");
		col = HELP_INDENT;
	} else {
		col += fprintf(f, "%*s", HELP_INDENT - col, "");
	}
	for (const char *p = text; *p;) {
		size_t word = strcspn(p, " ");
		if (col > HELP_INDENT && col + 1 + (int)word > HELP_WIDTH) {
			fprintf(f, "\n%*s", HELP_INDENT, "");
			col = HELP_INDENT;
		} else if (col > HELP_INDENT) {
			col += fprintf(f, " ");
		}
		col += fprintf(f, "%.*s", (int)word, p);
		p += word;
		p += strspn(p, " ");
	}
	fputs("\n", f);
}

/* One setting: its flag, what it is, the values it takes and its default. */
static void usage_setting(FILE *f, const qw_setting_def *d)
{
	static const char *const arg[] = {"VALUE", "N", "SIZE", "X", NULL};
	char text[1200], lo[32], hi[32], choices[96];
	snprintf(choices, sizeof choices, "%s", d->choices ? d->choices : "");
	for (char *c = choices; *c; c++)
		*c = *c == '|' ? '/' : *c;
	int col = fprintf(f, "  --%s %s", d->name, d->type == QW_SET_ENUM ? choices : arg[d->type]);
	int n = snprintf(text, sizeof text, "%s.", d->help);
	switch (d->type) {
	case QW_SET_ENUM:
		break;
	case QW_SET_INT:
		n += snprintf(text + n, sizeof text - (size_t)n, " %.0f to %.0f.", d->lo, d->hi);
		break;
	case QW_SET_REAL:
		n += snprintf(text + n, sizeof text - (size_t)n, " %g to %g.", d->lo, d->hi);
		break;
	case QW_SET_SIZE:
		n += snprintf(text + n, sizeof text - (size_t)n, " %s to %s (K, M, G: KiB, MiB, "
			      "GiB).", qw_fmt_size((uint64_t)d->lo, lo, sizeof lo),
			      qw_fmt_size((uint64_t)d->hi, hi, sizeof hi));
		break;
	case QW_SET_STR:
		break;
	}
	snprintf(text + n, sizeof text - (size_t)n, " Default: %s%s", d->def[0] ? d->def : "\"\"",
		 d->runtime ? "; SIGHUP reloads it" : "");
	wrap(f, col, text);
}

static void usage(FILE *f)
{
	fputs("usage: qwend [--config FILE] [--SETTING VALUE]...\n"
	      "The qwen-vl daemon: serves a Qwen3-VL model to local clients (qwenctl).\n\n", f);
	wrap(f, fprintf(f, "  --config FILE"), "a settings file of NAME VALUE lines "
	     "(systemd/qwend.conf documents every setting); the command line wins over it, and "
	     "SIGHUP reloads it");
	wrap(f, fprintf(f, "  -h, --help"), "this text");
	wrap(f, fprintf(f, "  -V, --version"), "the version");
	fputs("\nSettings, on the command line or in the config file:\n", f);
	int n;
	const qw_setting_def *t = qw_settings_table(&n);
	for (int i = 0; i < n; i++)
		usage_setting(f, &t[i]);
	fputs("\nExit status: 0 after a shutdown or SIGTERM, 1 when it cannot serve (the model, "
	      "the\nsocket, the workers failing for good), 2 bad usage or settings.\n", f);
}

static int worker_mode(int argc, char **argv)
{
	qw_worker_args a = {.stage = -1, .region_fd = -1, .notify_fd = -1,
			    .log_level = QW_LOG_INFO};
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--worker"))
			a.stage = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--region-fd"))
			a.region_fd = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--notify-fd"))
			a.notify_fd = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--log-level"))
			qw_log_level_parse(argv[i + 1], &a.log_level, NULL);
	}
	if (a.stage < 0 || a.region_fd < 0 || a.notify_fd < 0) {
		fputs("qwend: worker mode is started by qwend itself\n", stderr);
		return 2;
	}
	return qw_worker_run(&a);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--worker"))
		return worker_mode(argc, argv);

	int n;
	const qw_setting_def *t = qw_settings_table(&n);
	struct option *opts = calloc((size_t)n + 4, sizeof *opts);
	if (!opts)
		return 1;
	for (int i = 0; i < n; i++)
		opts[i] = (struct option){t[i].name, required_argument, NULL, 1000 + i};
	opts[n] = (struct option){"config", required_argument, NULL, 'c'};
	opts[n + 1] = (struct option){"help", no_argument, NULL, 'h'};
	opts[n + 2] = (struct option){"version", no_argument, NULL, 'V'};

	/* the config file first, whatever its place: the command line wins over it */
	const char *config = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--config") && i + 1 < argc)
			config = argv[i + 1];
		else if (!strncmp(argv[i], "--config=", 9))
			config = argv[i] + 9;
	}
	qw_settings s;
	qw_settings_defaults(&s);
	qw_err err = {0};
	if (config && qw_settings_load(&s, config, &err) != QW_OK) {
		fprintf(stderr, "qwend: %s\n", err.msg);
		free(opts);
		return 2;
	}
	int c, li;
	opterr = 0;   /* what is wrong with an option is said once, below */
	while ((c = getopt_long(argc, argv, ":c:hV", opts, &li)) != -1) {
		if (c == 'h') {
			usage(stdout);
			free(opts);
			return 0;
		}
		if (c == 'V') {
			printf("qwend %s (protocol %d)\n", QW_VERSION, QW_PROTOCOL_VERSION);
			free(opts);
			return 0;
		}
		if (c == 'c')
			continue;
		if (c == ':' || c == '?') {
			const char *word = argv[optind - 1];
			fprintf(stderr, "qwend: %s%.*s%s\n(qwend --help lists every setting)\n",
				c == ':' ? "" : "unknown option '", (int)strcspn(word, "="), word,
				c == ':' ? " needs a value" : "'");
			free(opts);
			return 2;
		}
		if (qw_settings_set(&s, t[c - 1000].name, optarg, NULL, &err) != QW_OK) {
			fprintf(stderr, "qwend: %s\n", err.msg);
			free(opts);
			return 2;
		}
	}
	free(opts);
	if (optind < argc) {
		fprintf(stderr, "qwend: unexpected argument '%s' (settings are --NAME VALUE)\n",
			argv[optind]);
		return 2;
	}
	if (!s.model[0]) {
		fprintf(stderr, "qwend: no model to serve: set model in the config file or give "
			"--model DIR (a model directory as HF's download makes it)\n"
			"HINT: --model demo serves a tiny built-in model with random weights, to try "
			"qwend out\n");
		return 2;
	}
	qw_log_level level;
	qw_log_level_parse(s.log_level, &level, NULL);
	qw_log_init("daemon", level, -1);
	return qw_server_run(&s, config);
}
