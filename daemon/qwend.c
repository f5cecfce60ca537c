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

#define QWEND_VERSION "0.1"

static void usage(FILE *f)
{
	fputs("usage: qwend [--config FILE] [--SETTING VALUE]...\n"
	      "  the qwen-vl daemon: serves a Qwen3-VL model to local clients (qwenctl)\n\n"
	      "  --config FILE   settings file (systemd/qwend.conf documents every setting);\n"
	      "                  the command line wins over it; SIGHUP reloads it\n"
	      "  --help, --version\n\nsettings (default in brackets):\n", f);
	int n;
	const qw_setting_def *t = qw_settings_table(&n);
	for (int i = 0; i < n; i++)
		fprintf(f, "  --%-18s %s [%s]\n", t[i].name, t[i].help,
			t[i].def[0] ? t[i].def : "\"\"");
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
	while ((c = getopt_long(argc, argv, "c:hV", opts, &li)) != -1) {
		if (c == 'h') {
			usage(stdout);
			free(opts);
			return 0;
		}
		if (c == 'V') {
			printf("qwend %s (protocol %d)\n", QWEND_VERSION, QW_PROTOCOL_VERSION);
			free(opts);
			return 0;
		}
		if (c == 'c')
			continue;
		if (c < 1000) {
			usage(stderr);
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
	qw_log_level level;
	qw_log_level_parse(s.log_level, &level, NULL);
	qw_log_init("daemon", level, -1);
	return qw_server_run(&s, config);
}
