/* qwen-http - the OpenAI-compatible HTTP API of qwend, with Prometheus metrics: a front end
 * that translates HTTP requests into qwend's protocol (ZeroMQ + msgpack) and never touches
 * a model itself.  The usage text lists every option and default; docs/http.md every
 * endpoint.  Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot start, 2 bad usage.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "daemon/log.h"
#include "http/server.h"
#include "ipc/endpoint.h"
#include "ipc/protocol.h"
#include "loader/version.h"

static const char usage[] =
	"usage: qwen-http [--socket ENDPOINT] [--host ADDR] [--port N] [--allow-remote]\n"
	"                 [--api-key KEY | --api-key-file FILE] [--allowed-local-media DIR]\n"
	"                 [--model-name NAME] [--max-body-bytes N] [--max-header-bytes N]\n"
	"                 [--max-connections N] [--idle-timeout S] [--timeout S]\n"
	"                 [--max-choices N] [--drain-timeout S] [--log-level L]\n";

static void help(const qh_settings *d)
{
	fputs(usage, stdout);
	printf("\n"
	       "Serves qwend's model over HTTP: /v1/chat/completions, /v1/completions,\n"
	       "/v1/models, /tokenize, /detokenize, /health and /metrics (docs/http.md).\n"
	       "\n"
	       "  -s, --socket ENDPOINT       qwend: ipc://PATH, the socket file's PATH alone, or\n"
	       "                              tcp://HOST:PORT (default: as qwenctl finds it;\n"
	       "                              here %s)\n"
	       "  -H, --host ADDR             the address to listen on (default %s); one that is\n"
	       "                              not loopback needs --allow-remote\n"
	       "  -p, --port N                the port (default %d; 0 picks a free one, logged)\n"
	       "      --allow-remote          let other machines connect (use an API key)\n"
	       "      --api-key KEY           /v1/... requests need \"Authorization: Bearer KEY\"\n"
	       "                              (default: none, no key asked for)\n"
	       "      --api-key-file FILE     the same, the key read from FILE (its first line)\n"
	       "                              (default: none)\n"
	       "      --allowed-local-media DIR  file:// image URLs may read images under DIR\n"
	       "                              (default: file:// URLs are refused)\n"
	       "      --model-name NAME       the model's name in the API (default: the name of\n"
	       "                              qwend's model directory)\n"
	       "      --max-body-bytes N      largest request body, K/M/G taken (default %zu)\n"
	       "      --max-header-bytes N    largest request headers (default %zu)\n"
	       "      --max-connections N     connections at once (default %d)\n"
	       "      --idle-timeout S        close a connection idle this long (default %d)\n"
	       "      --timeout S             qwend's first answer to a request (default %g)\n"
	       "      --max-choices N         choices (n x prompts) in one request (default %d)\n"
	       "      --drain-timeout S       on SIGTERM, how long requests may finish (default %g)\n"
	       "      --log-level L           debug, info, warn or error (default info)\n"
	       "  -h, --help                  this text\n"
	       "  -V, --version               the version\n",
	       d->socket, d->host, d->port, d->max_body, d->max_header, d->max_connections,
	       d->idle_timeout_s, d->timeout_ms / 1e3, d->max_choices, d->drain_s);
}

static int bad(const char *fmt, const char *arg)
{
	fputs("qwen-http: ", stderr);
	fprintf(stderr, fmt, arg);
	fputs("\n", stderr);
	fputs(usage, stderr);
	return 2;
}

/* The key in FILE: its first line, without the newline. */
static bool read_key(const char *path, char *key, size_t cap)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "qwen-http: --api-key-file %s: %s\n", path, strerror(errno));
		return false;
	}
	bool ok = fgets(key, (int)cap, f) != NULL;
	fclose(f);
	key[strcspn(key, "\r\n")] = '\0';
	if (!ok || !*key) {
		fprintf(stderr, "qwen-http: --api-key-file %s holds no key\n", path);
		return false;
	}
	return true;
}

static bool seconds(const char *flag, const char *s, double lo, double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || !(v >= lo && v <= 86400)) {
		fprintf(stderr, "qwen-http: %s: '%s' is not a number of seconds in [%g, 86400]\n",
			flag, s, lo);
		return false;
	}
	*out = v;
	return true;
}

enum { O_ALLOW_REMOTE = 256, O_API_KEY, O_API_KEY_FILE, O_MEDIA, O_MODEL_NAME, O_MAX_BODY,
       O_MAX_HEADER, O_MAX_CONN, O_IDLE, O_TIMEOUT, O_CHOICES, O_DRAIN, O_LOG };

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"socket", required_argument, NULL, 's'},
		{"host", required_argument, NULL, 'H'},
		{"port", required_argument, NULL, 'p'},
		{"allow-remote", no_argument, NULL, O_ALLOW_REMOTE},
		{"api-key", required_argument, NULL, O_API_KEY},
		{"api-key-file", required_argument, NULL, O_API_KEY_FILE},
		{"allowed-local-media", required_argument, NULL, O_MEDIA},
		{"model-name", required_argument, NULL, O_MODEL_NAME},
		{"max-body-bytes", required_argument, NULL, O_MAX_BODY},
		{"max-header-bytes", required_argument, NULL, O_MAX_HEADER},
		{"max-connections", required_argument, NULL, O_MAX_CONN},
		{"idle-timeout", required_argument, NULL, O_IDLE},
		{"timeout", required_argument, NULL, O_TIMEOUT},
		{"max-choices", required_argument, NULL, O_CHOICES},
		{"drain-timeout", required_argument, NULL, O_DRAIN},
		{"log-level", required_argument, NULL, O_LOG},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{0, 0, 0, 0}};
	qh_settings s;
	qh_settings_default(&s);
	qw_log_level level = QW_LOG_INFO;
	long long v;
	double x;
	int opt;
	bool key_given = false;
	while ((opt = getopt_long(argc, argv, "s:H:p:hV", opts, NULL)) != -1) {
		switch (opt) {
		case 's':   /* a bare path is qwend's socket file, as for qwenctl */
			if (!*optarg || !qw_endpoint_from_arg(optarg, s.socket, sizeof s.socket))
				return bad("--socket: '%s' is not an endpoint", optarg);
			break;
		case 'H':
			if (!*optarg || strlen(optarg) >= sizeof s.host)
				return bad("--host: '%s' is not an address", optarg);
			snprintf(s.host, sizeof s.host, "%s", optarg);
			break;
		case 'p':
			if (!qw_arg_int("qwen-http", "--port", optarg, 0, 65535, &v))
				return 2;
			s.port = (int)v;
			break;
		case O_ALLOW_REMOTE: s.allow_remote = true; break;
		case O_API_KEY:
		case O_API_KEY_FILE:
			if (key_given)
				return bad("give one API key (%s)", "--api-key or --api-key-file");
			key_given = true;
			if (opt == O_API_KEY_FILE && !read_key(optarg, s.api_key, sizeof s.api_key))
				return 2;
			if (opt == O_API_KEY && (!*optarg || strlen(optarg) >= sizeof s.api_key))
				return bad("--api-key: a key has 1 to 511 bytes%s", "");
			if (opt == O_API_KEY)
				snprintf(s.api_key, sizeof s.api_key, "%s", optarg);
			break;
		case O_MEDIA:
			if (strlen(optarg) >= sizeof s.media_dir)
				return bad("--allowed-local-media: '%s' is too long", optarg);
			snprintf(s.media_dir, sizeof s.media_dir, "%s", optarg);
			break;
		case O_MODEL_NAME:
			if (!*optarg || strlen(optarg) >= sizeof s.model_name)
				return bad("--model-name: '%s' is not a name", optarg);
			snprintf(s.model_name, sizeof s.model_name, "%s", optarg);
			break;
		case O_MAX_BODY:
			if (!qw_arg_int("qwen-http", "--max-body-bytes", optarg, 1024, 1LL << 32, &v))
				return 2;
			s.max_body = (size_t)v;
			break;
		case O_MAX_HEADER:
			if (!qw_arg_int("qwen-http", "--max-header-bytes", optarg, 1024, 1 << 20, &v))
				return 2;
			s.max_header = (size_t)v;
			break;
		case O_MAX_CONN:
			if (!qw_arg_int("qwen-http", "--max-connections", optarg, 1, 65536, &v))
				return 2;
			s.max_connections = (int)v;
			break;
		case O_IDLE:
			if (!qw_arg_int("qwen-http", "--idle-timeout", optarg, 1, 86400, &v))
				return 2;
			s.idle_timeout_s = (int)v;
			break;
		case O_TIMEOUT:
			if (!seconds("--timeout", optarg, 0.001, &x))
				return 2;
			s.timeout_ms = (int)(x * 1e3);
			break;
		case O_CHOICES:
			if (!qw_arg_int("qwen-http", "--max-choices", optarg, 1, 128, &v))
				return 2;
			s.max_choices = (int)v;
			break;
		case O_DRAIN:
			if (!seconds("--drain-timeout", optarg, 0, &s.drain_s))
				return 2;
			break;
		case O_LOG: {
			qw_err err = {0};
			if (qw_log_level_parse(optarg, &level, &err) != QW_OK)
				return bad("--log-level: %s", err.msg);
			break;
		}
		case 'h': {
			qh_settings d;
			qh_settings_default(&d);
			help(&d);
			return 0;
		}
		case 'V':
			printf("qwen-http %s (protocol %d)\n", QW_VERSION, QW_PROTOCOL_VERSION);
			return 0;
		default:
			fputs(usage, stderr);
			return 2;
		}
	}
	if (optind < argc)
		return bad("unexpected argument '%s'", argv[optind]);
	qw_log_init("http", level, -1);
	return qh_server_run(&s);
}
