/* qwen-tok - the tokenizer from the command line.
 *
 *   qwen-tok encode --tokenizer DIR [FILE]     ids of FILE (or stdin), space-separated
 *   qwen-tok decode --tokenizer DIR [FILE]     text of the ids in FILE (or stdin)
 *   qwen-tok bench  --tokenizer DIR FILE [--repeat N]
 *   qwen-tok chat   [--thinking] [--no-thinking] [--no-generation-prompt] [--vision-id]
 *                   [--tools FILE] [FILE]
 *       renders a conversation (a JSON array of {"role", "content", "reasoning_content",
 *       "tool_calls"}, content a string or a list of {"type": "text", "text"} /
 *       {"type": "image"} / {"type": "video"} items, "n_pad" optional; tool_calls a list of
 *       {"function": {"name", "arguments"}} with arguments a JSON string) with the Qwen3-VL
 *       chat template; --tools FILE holds one tool a line, each the JSON text the template
 *       shows; --no-thinking is enable_thinking false
 *
 * bench encodes the whole file in one call, single-threaded, N times (default 5) and prints
 * the first (cold cache) and the best (warm) rate in MB/s, then the best rate over the file
 * cut into 4 KB pieces encoded one call each.  Exit 0 ok, 1 bad input, 2 usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include <jansson.h>

#include "daemon/text/chat.h"
#include "daemon/text/tokenizer.h"
#include "loader/clock.h"
#include "loader/version.h"

static const char usage[] =
	"usage: qwen-tok encode --tokenizer DIR [FILE]\n"
	"       qwen-tok decode --tokenizer DIR [FILE]\n"
	"       qwen-tok bench  --tokenizer DIR FILE [--repeat N]\n"
	"       qwen-tok chat   [--thinking] [--no-thinking] [--no-generation-prompt] "
	"[--vision-id]\n"
	"                       [--tools FILE] [FILE]\n";

static const char help[] =
	"The Qwen3 tokenizer and the Qwen3-VL chat template from the command line.\n"
	"\n"
	"  encode                  the token ids of FILE (default: stdin), space-separated\n"
	"  decode                  the text of the token ids in FILE (default: stdin)\n"
	"  bench                   encode FILE, single-threaded: MB/s of the first run and of the\n"
	"                          best, then of the best over the file in 4 KB pieces\n"
	"  chat                    render FILE (default: stdin), a JSON array of {\"role\",\n"
	"                          \"content\", \"reasoning_content\"}, with the chat template;\n"
	"                          content a string or a list of {\"type\": \"text\", \"text\"},\n"
	"                          {\"type\": \"image\"} and {\"type\": \"video\"} items\n"
	"                          (\"n_pad\" optional)\n"
	"\n"
	"  --tokenizer DIR         the directory of tokenizer.json (required by encode, decode,\n"
	"                          bench)\n"
	"  --repeat N              bench: runs over the whole file, 1 to 1000 (default 5)\n"
	"  --thinking              chat: the generation prompt opens <think> (default: off)\n"
	"  --no-generation-prompt  chat: end after the last message (default: the assistant's\n"
	"                          turn is opened)\n"
	"  --vision-id             chat: each image is labelled \"Picture N:\" (default: off)\n"
	"  -h, --help              this text\n"
	"  -V, --version           the version\n"
	"exit status: 0 ok, 1 bad input, 2 bad usage\n";

static char *slurp(const char *path, size_t *len)
{
	FILE *f = path ? fopen(path, "rb") : stdin;
	if (!f)
		return NULL;
	size_t cap = 1 << 16, n = 0, got;
	char *buf = malloc(cap);
	while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
		n += got;
		if (n == cap) {
			char *grown = realloc(buf, cap *= 2);
			if (!grown)
				free(buf);
			buf = grown;
		}
	}
	if (path)
		fclose(f);
	*len = n;
	return buf;
}

static int do_encode(qw_tokenizer *t, const char *text, size_t len)
{
	int32_t *ids;
	size_t n;
	qw_err err = {0};
	if (qw_tokenizer_encode(t, text, len, &ids, &n, &err) != QW_OK) {
		fprintf(stderr, "qwen-tok: %s\n", err.msg);
		return 1;
	}
	for (size_t i = 0; i < n; i++)
		printf("%s%d", i ? " " : "", ids[i]);
	printf("\n");
	free(ids);
	return 0;
}

static int do_decode(qw_tokenizer *t, char *text)
{
	size_t cap = 1024, n = 0;
	int32_t *ids = malloc(cap * sizeof *ids);
	char *tok = strtok(text, " \t\r\n,");
	for (; tok && ids; tok = strtok(NULL, " \t\r\n,")) {
		long long v;
		if (!qw_arg_int("qwen-tok decode", "id", tok, 0, INT32_MAX, &v)) {
			free(ids);
			return 1;
		}
		if (n == cap)
			ids = realloc(ids, (cap *= 2) * sizeof *ids);
		if (ids)
			ids[n++] = (int32_t)v;
	}
	char *out;
	size_t len;
	qw_err err = {0};
	if (!ids || qw_tokenizer_decode(t, ids, n, &out, &len, &err) != QW_OK) {
		fprintf(stderr, "qwen-tok: %s\n", ids ? err.msg : "out of memory");
		free(ids);
		return 1;
	}
	fwrite(out, 1, len, stdout);
	free(out);
	free(ids);
	return 0;
}

static int do_bench(qw_tokenizer *t, const char *text, size_t len, int repeat)
{
	double first = 0, best = 1e30;
	size_t n = 0;
	for (int r = 0; r < repeat; r++) {
		int32_t *ids;
		qw_err err = {0};
		double t0 = qw_seconds_now();
		if (qw_tokenizer_encode(t, text, len, &ids, &n, &err) != QW_OK) {
			fprintf(stderr, "qwen-tok: %s\n", err.msg);
			return 1;
		}
		double dt = qw_seconds_now() - t0;
		free(ids);
		if (r == 0)
			first = dt;
		best = dt < best ? dt : best;
	}
	printf("# encode, one thread: %.2f MB -> %zu tokens (%.2f bytes/token)\n", len / 1e6, n,
	       (double)len / (double)n);
	printf("cold  %8.2f MB/s  %10.0f tokens/s\n", len / 1e6 / first, n / first);
	printf("warm  %8.2f MB/s  %10.0f tokens/s  (best of %d)\n", len / 1e6 / best, n / best,
	       repeat);
	/* the same text as 4 KB pieces, one call each (how a server sees requests) */
	best = 1e30;
	size_t calls = 0;
	for (int r = 0; r < repeat; r++) {
		double t0 = qw_seconds_now();
		calls = 0;
		for (size_t i = 0; i < len; calls++) {
			size_t j = i + 4096 < len ? i + 4096 : len;
			while (j < len && ((unsigned char)text[j] & 0xc0) == 0x80)
				j++;
			int32_t *ids;
			size_t k;
			qw_err err = {0};
			if (qw_tokenizer_encode(t, text + i, j - i, &ids, &k, &err) != QW_OK) {
				fprintf(stderr, "qwen-tok: %s\n", err.msg);
				return 1;
			}
			free(ids);
			i = j;
		}
		double dt = qw_seconds_now() - t0;
		best = dt < best ? dt : best;
	}
	printf("4 KB pieces, warm  %8.2f MB/s  (best of %d, %zu calls)\n", len / 1e6 / best, repeat,
	       calls);
	return 0;
}

/* One message's content from JSON into items (text points into the JSON). */
static bool content_items(json_t *content, qw_content *items, int *n, int cap)
{
	*n = 0;
	if (json_is_string(content)) {
		items[(*n)++] = (qw_content){QW_CONTENT_TEXT, json_string_value(content), 0};
		return true;
	}
	if (!json_is_array(content) || (int)json_array_size(content) > cap)
		return json_is_null(content);
	size_t i;
	json_t *it;
	json_array_foreach(content, i, it) {
		const char *type = json_string_value(json_object_get(it, "type"));
		int n_pad = (int)json_integer_value(json_object_get(it, "n_pad"));
		if (type && !strcmp(type, "text") && json_is_string(json_object_get(it, "text")))
			items[(*n)++] = (qw_content){QW_CONTENT_TEXT,
						     json_string_value(json_object_get(it, "text")), 0};
		else if (type && !strcmp(type, "image"))
			items[(*n)++] = (qw_content){QW_CONTENT_IMAGE, NULL, n_pad};
		else if (type && !strcmp(type, "video"))
			items[(*n)++] = (qw_content){QW_CONTENT_VIDEO, NULL, n_pad};
		else
			return false;
	}
	return true;
}

/* An assistant message's tool calls ({"function": {"name", "arguments"}} or {"name",
 * "arguments"}, arguments a string) into calls (cap of them). */
static bool tool_calls(json_t *list, qw_chat_tool_call *calls, int *n, int cap)
{
	*n = 0;
	if (!list)
		return true;
	if (!json_is_array(list) || (int)json_array_size(list) > cap)
		return false;
	size_t i;
	json_t *c;
	json_array_foreach(list, i, c) {
		json_t *f = json_object_get(c, "function") ? json_object_get(c, "function") : c;
		calls[*n].name = json_string_value(json_object_get(f, "name"));
		calls[*n].arguments = json_string_value(json_object_get(f, "arguments"));
		if (!calls[*n].name || !calls[(*n)++].arguments)
			return false;
	}
	return true;
}

/* --tools FILE: one tool's JSON text a line (lines point into *buf). */
static bool read_tools(const char *path, char **buf, const char ***tools, int *n)
{
	size_t len;
	*buf = slurp(path, &len);
	*tools = calloc(len + 1, sizeof **tools);
	*n = 0;
	if (!*buf || !*tools)
		return false;
	(*buf)[len] = '\0';   /* slurp leaves room for it */
	for (char *line = *buf, *nl; line && *line; line = nl) {
		nl = strchr(line, '\n');
		if (nl)
			*nl++ = '\0';
		if (*line)
			(*tools)[(*n)++] = line;
	}
	return true;
}

static int do_chat(int argc, char **argv)
{
	qw_chat_opts o = {.add_generation_prompt = true};
	const char *file = NULL;
	char *tools_buf = NULL;
	const char **tools = NULL;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--thinking"))
			o.thinking = true;
		else if (!strcmp(argv[i], "--no-thinking"))
			o.thinking_off = true;
		else if (!strcmp(argv[i], "--tools") && i + 1 < argc && !tools) {
			if (!read_tools(argv[++i], &tools_buf, &tools, &o.n_tools)) {
				fprintf(stderr, "qwen-tok chat: cannot read --tools %s\n", argv[i]);
				free(tools_buf);
				free(tools);
				return 1;
			}
			o.tools = tools;
		}
		else if (!strcmp(argv[i], "--no-generation-prompt"))
			o.add_generation_prompt = false;
		else if (!strcmp(argv[i], "--vision-id"))
			o.add_vision_id = true;
		else if (argv[i][0] != '-' && !file)
			file = argv[i];
		else {
			fputs(usage, stderr);
			free(tools_buf);
			free(tools);
			return 2;
		}
	}
	json_error_t jerr;
	json_t *msgs = file ? json_load_file(file, 0, &jerr) : json_loadf(stdin, 0, &jerr);
	if (!json_is_array(msgs)) {
		fprintf(stderr, "qwen-tok chat: %s\n", msgs ? "expected a JSON array of messages"
							    : jerr.text);
		json_decref(msgs);
		free(tools_buf);
		free(tools);
		return 1;
	}
	int n = (int)json_array_size(msgs), rc = 0;
	qw_message *m = calloc((size_t)n + 1, sizeof *m);
	qw_content *items = calloc((size_t)n * 64 + 1, sizeof *items);
	qw_chat_tool_call *calls = calloc((size_t)n * 16 + 1, sizeof *calls);
	for (int i = 0; m && items && calls && i < n && rc == 0; i++) {
		json_t *j = json_array_get(msgs, (size_t)i);
		m[i].role = json_string_value(json_object_get(j, "role"));
		m[i].content = items + (size_t)i * 64;
		m[i].reasoning = json_string_value(json_object_get(j, "reasoning_content"));
		if (!content_items(json_object_get(j, "content"), items + (size_t)i * 64,
				   &m[i].n_content, 64)) {
			fprintf(stderr, "qwen-tok chat: message %d: content must be a string or a "
				"list of text / image / video items\n", i);
			rc = 1;
		}
		m[i].tool_calls = calls + (size_t)i * 16;
		if (rc == 0 && !tool_calls(json_object_get(j, "tool_calls"), calls + (size_t)i * 16,
					   &m[i].n_tool_calls, 16)) {
			fprintf(stderr, "qwen-tok chat: message %d: tool_calls must be a list of at "
				"most 16 {function: {name, arguments}} with arguments a string\n", i);
			rc = 1;
		}
	}
	char *out = NULL;
	size_t len;
	qw_err err = {0};
	if (rc == 0 && (!m || !items || !calls)) {
		fputs("qwen-tok chat: out of memory\n", stderr);
		rc = 1;
	} else if (rc == 0 && qw_chat_render(m, n, &o, &out, &len, &err) != QW_OK) {
		fprintf(stderr, "qwen-tok chat: %s\n", err.msg);
		rc = 1;
	} else if (rc == 0) {
		fwrite(out, 1, len, stdout);
	}
	free(out);
	free(m);
	free(items);
	free(calls);
	free(tools);
	free(tools_buf);
	json_decref(msgs);
	return rc;
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			printf("%s%s", usage, help);
			return 0;
		}
		if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-V")) {
			printf("qwen-tok %s\n", QW_VERSION);
			return 0;
		}
	}
	if (argc >= 2 && !strcmp(argv[1], "chat"))
		return do_chat(argc, argv);
	if (argc < 2) {
		fputs(usage, stderr);
		return 2;
	}
	const char *cmd = argv[1], *dir = NULL;
	long long repeat = 5;
	static const struct option opts[] = {{"tokenizer", required_argument, NULL, 't'},
					     {"repeat", required_argument, NULL, 'r'},
					     {"help", no_argument, NULL, 'h'},
					     {0, 0, 0, 0}};
	int c;
	optind = 2;
	while ((c = getopt_long(argc, argv, "t:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 't': dir = optarg; break;
		case 'r':
			if (!qw_arg_int("qwen-tok", "--repeat", optarg, 1, 1000, &repeat))
				return 2;
			break;
		default: fprintf(stderr, "%s(qwen-tok --help says more)\n", usage); return 2;
		}
	}
	const char *file = optind < argc ? argv[optind] : NULL;
	bool known = !strcmp(cmd, "encode") || !strcmp(cmd, "decode") || !strcmp(cmd, "bench");
	if (!dir || !known || optind + 1 < argc || (!strcmp(cmd, "bench") && !file)) {
		fputs(usage, stderr);
		return 2;
	}
	qw_tokenizer *t;
	qw_err err = {0};
	if (qw_tokenizer_load(dir, &t, &err) != QW_OK) {
		fprintf(stderr, "qwen-tok: %s\n", err.msg);
		return 1;
	}
	size_t len;
	char *text = slurp(file, &len);
	int rc = 1;
	if (!text)
		fprintf(stderr, "qwen-tok: cannot read %s\n", file ? file : "stdin");
	else if (!strcmp(cmd, "encode"))
		rc = do_encode(t, text, len);
	else if (!strcmp(cmd, "decode"))
		rc = (text[len] = '\0', do_decode(t, text));
	else
		rc = do_bench(t, text, len, (int)repeat);
	free(text);
	qw_tokenizer_free(t);
	return rc;
}
