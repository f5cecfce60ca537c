/* qwenctl - the command-line client of qwend: submit (streaming), status, cancel, shutdown,
 * bench.  Talks to the daemon over ZeroMQ (cli/client.h) in the protocol of
 * docs/protocol.md.  This file is main, cancel and shutdown; the other commands and what
 * they share are ctl.h's (the usage text, with every option and default, is in
 * ctl_common.c).
 */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/ctl.h"
#include "loader/version.h"

// ---------------------------------------------------------------------------------------
// cancel and shutdown: one request, one ok

static int simple(ctl_common *c, qw_request *r, const char *op)
{
	qw_client client;
	qw_reply rep;
	qw_err err = {0};
	int rc = ctl_connect(c, &client);
	if (rc != CTL_OK)
		return rc;
	if (qw_client_call(&client, r, &rep, &err) != QW_OK) {
		rc = ctl_fail(&err);
	} else {
		if (rep.type == QW_REPLY_OK)
			printf("%s\n", rep.message && *rep.message ? rep.message : "ok");
		else
			rc = rep.type == QW_REPLY_ERROR ? ctl_reply_error(&rep)
							 : ctl_unexpected(op, &rep);
		qw_reply_free(&rep);
	}
	qw_client_close(&client);
	return rc;
}

static int parse_plain(ctl_common *c, int argc, char **argv)
{
	static const struct option opts[] = {CTL_COMMON_OPTIONS};
	int opt;
	optind = 0;
	while ((opt = getopt_long(argc, argv, CTL_SHORT(""), opts, NULL)) != -1) {
		int r = ctl_common_opt(c, opt, optarg);
		if (r <= 0)
			return r < 0 ? -1 : (ctl_option_error(argv[0], argv, opt), -1);
	}
	return optind;
}

static int cmd_cancel(ctl_common *c, int argc, char **argv)
{
	int first = parse_plain(c, argc, argv);
	if (first < 0)
		return CTL_USAGE;
	if (argc - first != 1)
		return ctl_usage_error("cancel takes one request ID");
	long long id;
	if (!qw_arg_int("qwenctl", "cancel ID", argv[first], 1, INT64_MAX, &id))
		return CTL_USAGE;
	qw_request r = {.op = QW_OP_CANCEL, .target = (uint64_t)id};
	return simple(c, &r, "cancel");
}

static int cmd_shutdown(ctl_common *c, int argc, char **argv)
{
	int first = parse_plain(c, argc, argv);
	if (first < 0)
		return CTL_USAGE;
	if (first != argc)
		return ctl_usage_error("shutdown takes no arguments");
	qw_request r = {.op = QW_OP_SHUTDOWN};
	return simple(c, &r, "shutdown");
}

int main(int argc, char **argv)
{
	ctl_common c = {.timeout_ms = QW_CLIENT_TIMEOUT_MS};
	qw_endpoint_env env = qw_endpoint_env_current();
	qw_endpoint_client_default(&env, c.endpoint, sizeof c.endpoint);
	/* common options may come before the command, and --version */
	static const struct option opts[] = {{"version", no_argument, NULL, 'V'},
					     CTL_COMMON_OPTIONS};
	int opt;
	opterr = 0;   /* the commands say what is wrong with an option themselves, once */
	while ((opt = getopt_long(argc, argv, "+" CTL_SHORT("V"), opts, NULL)) != -1) {
		if (opt == 'V') {
			printf("qwenctl %s (protocol %d)\n", QW_VERSION, QW_PROTOCOL_VERSION);
			return CTL_OK;
		}
		int r = ctl_common_opt(&c, opt, optarg);
		if (r != 1)
			return r < 0 ? CTL_USAGE : ctl_option_error(NULL, argv, opt);
	}
	if (optind >= argc)
		return ctl_usage_error("no command");
	const char *cmd = argv[optind];
	int sub_argc = argc - optind;
	char **sub_argv = argv + optind;
	if (strcmp(cmd, "submit") == 0)
		return ctl_submit(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "status") == 0)
		return ctl_status(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "cancel") == 0)
		return cmd_cancel(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "shutdown") == 0)
		return cmd_shutdown(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "bench") == 0)
		return ctl_bench(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "help") == 0) {
		ctl_print_help();
		return CTL_OK;
	}
	return ctl_usage_error("unknown command '%s'", cmd);
}
