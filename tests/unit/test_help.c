/* test_help.c - every program's --help and --version, and the man pages.
 *
 * --help exits 0 on stdout, under 100 columns, and names every option the program's sources
 * declare (their getopt tables and the flags they compare by hand, read from cli/), each
 * with its default or saying it is required; qwend's names every setting of the table with
 * its default.  --version exits 0 with the program's name and the version.  The man pages
 * (man/) render without a groff warning, qwend.8 gives every setting with its default,
 * qwenctl.1 and qwen-ckpt.1 every option.  qwen-gpuinfo (built with CUDA) on a machine
 * without an NVIDIA driver says so.
 */
#include "tests/unit/helpers.h"

#include <ctype.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/settings.h"
#include "loader/version.h"

/* A file of the repository, by its path from the root. */
static char *repo_file(const char *rel)
{
	char path[4096];
	snprintf(path, sizeof path, "%s", fixture("../.."));
	snprintf(path + strlen(path), sizeof path - strlen(path), "/%s", rel);
	char *text = read_file(path, NULL);
	if (!text)
		fail_msg("cannot read %s", path);
	return text;
}

/* The long options sources declare: getopt tables ({"name", *_argument}) and flags compared
 * by hand ("--name" string literals).  names gets up to cap of them; *takes_value says
 * which take one. */
static int source_options(const char *const *rels, char names[][64], bool *takes_value,
			  int cap)
{
	int n = 0;
	regex_t table, literal;
	assert_int_equal(regcomp(&table, "\\{\"([a-z][a-z0-9-]*)\", (required|no|optional)_argument",
				 REG_EXTENDED), 0);
	assert_int_equal(regcomp(&literal, "\"--([a-z][a-z0-9-]*)\"", REG_EXTENDED), 0);
	for (int f = 0; rels[f]; f++) {
		char *text = repo_file(rels[f]);
		for (int pass = 0; pass < 2; pass++) {
			regmatch_t m[3];
			for (const char *at = text;
			     !regexec(pass ? &literal : &table, at, 3, m, 0); at += m[0].rm_eo) {
				char name[64];
				snprintf(name, sizeof name, "%.*s", (int)(m[1].rm_eo - m[1].rm_so),
					 at + m[1].rm_so);
				bool value = !pass && at[m[2].rm_so] == 'r';
				int k = 0;
				while (k < n && strcmp(names[k], name))
					k++;
				if (k == n) {
					assert_true(n < cap);
					snprintf(names[n], 64, "%s", name);
					takes_value[n++] = value;
				} else {
					takes_value[k] |= value;
				}
			}
		}
		free(text);
	}
	regfree(&table);
	regfree(&literal);
	return n;
}

/* Where --name is defined in help: the first line that names it as an option (first, at an
 * indent of at most 6, or after "-x, "), with the lines that continue it (more indented,
 * not an option of their own); else the first line that mentions it with its paragraph.  Runs of
 * blanks and line ends become one space.  NULL when absent. */
static char *option_block(const char *help, const char *name)
{
	char flag[80];
	snprintf(flag, sizeof flag, "--%s", name);
	size_t fl = strlen(flag);
	const char *def = NULL, *mention = NULL;
	for (const char *line = help; *line;) {
		const char *end = strchr(line, '\n');
		end = end ? end : line + strlen(line);
		for (const char *p = line; p + fl <= end; p++) {
			if (strncmp(p, flag, fl) != 0 || (p + fl < end && (isalnum((unsigned char)p[fl]) ||
									   p[fl] == '-')))
				continue;
			const char *lead = line + strspn(line, " ");
			if (!mention)
				mention = line;
			if (!def && ((p == lead && lead - line <= 6) ||
				     (lead - line <= 4 && lead[0] == '-' && lead[1] != '-' &&
				      p == lead + 4)))
				def = line;
		}
		line = *end ? end + 1 : end;
	}
	const char *start = def ? def : mention;
	if (!start)
		return NULL;
	int indent = (int)strspn(start, " ");
	const char *stop = strchr(start, '\n');
	while (stop && stop[1]) {
		const char *next = stop + 1;
		int ni = (int)strspn(next, " ");
		if (next[ni] == '\n' || ni <= indent || (def && next[ni] == '-' && ni <= indent + 2))
			break;
		stop = strchr(next, '\n');
	}
	size_t len = stop ? (size_t)(stop - start) : strlen(start), n = 0;
	char *block = malloc(len + 1);
	for (size_t i = 0; i < len; i++) {
		bool blank = start[i] == ' ' || start[i] == '\n';
		if (!blank || (n && block[n - 1] != ' '))
			block[n++] = blank ? ' ' : start[i];
	}
	block[n] = '\0';
	return block;
}

static char *run_ok(const char *what, const char *fmt, const char *prog, const char *args)
{
	char *out;
	int rc = run_capture(&out, fmt, prog, args);
	if (rc != 0)
		fail_msg("%s: exit %d:\n%s", what, rc, out);
	return out;
}

static void check_width(const char *what, const char *text)
{
	for (const char *line = text; *line;) {
		size_t len = strcspn(line, "\n");
		if (len > 99)
			fail_msg("%s: a line of %zu columns:\n%.*s", what, len, (int)len, line);
		line += len + (line[len] == '\n');
	}
}

typedef struct tool {
	const char *name;
	const char *helps[4];     /* the commands whose output together is the help */
	const char *sources[8];   /* from the repository's root */
} tool;

static const tool tools[] = {
	{"qwenctl", {"--help"},
	 {"cli/ctl.h", "cli/qwenctl.c", "cli/ctl_submit.c", "cli/ctl_status.c", "cli/ctl_bench.c"}},
	{"qwen-ckpt", {"--help", "validate --help", "export-reduced --help"},
	 {"cli/qwen_ckpt.c", "cli/ckpt_validate.c", "cli/ckpt_export.c", "cli/ckpt_quant.c"}},
	{"qwen-parity", {"--help"}, {"cli/qwen_parity.c", "cli/parity_tokens.c"}},
	{"qwen-tok", {"--help"}, {"cli/qwen_tok.c"}},
	{"qwen-transport-check", {"--help"}, {"cli/qwen_transport_check.c"}},
	{"qwen-gpuinfo", {"--help"}, {"cli/qwen_gpuinfo.c"}},
	{"qwen-http", {"--help"}, {"http/qwen_http.c"}},
};

static bool built(const char *name)
{
	struct stat st;
	return stat(program(name), &st) == 0;
}

static void test_tools_help(void **state)
{
	for (size_t i = 0; i < sizeof tools / sizeof *tools; i++) {
		const tool *p = &tools[i];
		if (!built(p->name)) {   /* qwen-gpuinfo: only with CUDA */
			print_message("%s is not built here\n", p->name);
			continue;
		}
		char help[65536] = "";
		for (int h = 0; p->helps[h]; h++) {
			char what[128];
			snprintf(what, sizeof what, "%s %s", p->name, p->helps[h]);
			/* stdout alone: stderr would make run_capture's output fail the test */
			char *out = run_ok(what, "%s %s 2>/dev/null", program(p->name), p->helps[h]);
			assert_true(strlen(out) > 40);
			check_width(what, out);
			snprintf(help + strlen(help), sizeof help - strlen(help), "%s\n", out);
			free(out);
		}
		char names[128][64];
		bool value[128];
		int n = source_options(p->sources, names, value, 128);
		assert_true(n > 0);
		for (int k = 0; k < n; k++) {
			char *block = option_block(help, names[k]);
			if (!block)
				fail_msg("%s --help does not name --%s", p->name, names[k]);
			if (value[k] && !strstr(block, "default") && !strstr(block, "Default") &&
			    !strstr(block, "required"))
				fail_msg("%s --help: --%s takes a value but has no default:\n%s", p->name,
					 names[k], block);
			free(block);
		}
		char *out = run_ok("--version", "%s %s", program(p->name), "--version");
		char want[96];
		snprintf(want, sizeof want, "%s %s", p->name, QW_VERSION);
		assert_true(strncmp(out, want, strlen(want)) == 0);
		free(out);
	}
}

static void test_qwend_help(void **state)
{
	char *help = run_ok("qwend --help", "%s %s", program("qwend"), "--help");
	check_width("qwend --help", help);
	int n;
	const qw_setting_def *t = qw_settings_table(&n);
	for (int i = 0; i < n; i++) {
		char *block = option_block(help, t[i].name);
		if (!block)
			fail_msg("qwend --help does not name --%s", t[i].name);
		char want[128];
		snprintf(want, sizeof want, "Default: %s", t[i].def[0] ? t[i].def : "\"\"");
		if (!strstr(block, want))
			fail_msg("qwend --help: --%s: no \"%s\" in:\n%s", t[i].name, want, block);
		if (t[i].choices) {   /* the values an enum takes, as a/b/c */
			char choices[96];
			snprintf(choices, sizeof choices, "%s", t[i].choices);
			for (char *c = choices; *c; c++)
				*c = *c == '|' ? '/' : *c;
			assert_contains(block, choices);
		}
		free(block);
	}
	free(help);
	char *out = run_ok("qwend --version", "%s %s", program("qwend"), "--version");
	char want[64];
	snprintf(want, sizeof want, "qwend %s (protocol ", QW_VERSION);
	assert_contains(out, want);
	free(out);
}

/* "--name" as troff writes it: \-\-name with every - escaped. */
static void troff_flag(const char *name, char *out, size_t cap)
{
	size_t n = (size_t)snprintf(out, cap, "\\-\\-");
	for (const char *c = name; *c && n + 3 < cap; c++) {
		if (*c == '-')
			out[n++] = '\\';
		out[n++] = *c;
	}
	out[n] = '\0';
}

static void check_man_renders(const char *rel)
{
	char *out;
	if (run_capture(&out, "command -v groff") != 0) {
		free(out);
		fail_msg("groff is not installed (.ci/install-deps installs groff-base)");
	}
	free(out);
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", fixture("../.."), rel);
	int rc = run_capture(&out, "groff -man -Tutf8 -ww -z %s", path);
	if (rc != 0 || out[0])
		fail_msg("%s: groff says (exit %d):\n%s", rel, rc, out);
	free(out);
}

static void test_man_pages(void **state)
{
	char *page = repo_file("man/qwend.8");
	check_man_renders("man/qwend.8");
	int n;
	const qw_setting_def *t = qw_settings_table(&n);
	for (int i = 0; i < n; i++) {
		char flag[96], entry[128], want[128], def[64];   /* def: as troff writes it */
		troff_flag(t[i].name, flag, sizeof flag);
		snprintf(entry, sizeof entry, "\\fB%s\\fR", flag);   /* its .TP entry */
		const char *at = strstr(page, entry);
		if (!at)
			fail_msg("man/qwend.8 has no %s", flag);
		const char *end = strstr(at, "\n.TP");
		size_t k = 0;
		for (const char *c = t[i].def[0] ? t[i].def : "\"\""; *c && k + 3 < sizeof def; c++) {
			if (*c == '-')
				def[k++] = '\\';
			def[k++] = *c;
		}
		def[k] = '\0';
		snprintf(want, sizeof want, "Default: %s", def);
		const char *found = strstr(at, want);
		if (!found || (end && found > end))
			fail_msg("man/qwend.8: %s without \"%s\"", flag, want);
	}
	free(page);
	static const struct {
		const char *page;
		int tool;      /* in tools[] */
	} pages[] = {{"man/qwenctl.1", 0}, {"man/qwen-ckpt.1", 1}};
	for (size_t i = 0; i < sizeof pages / sizeof *pages; i++) {
		check_man_renders(pages[i].page);
		page = repo_file(pages[i].page);
		char names[128][64];
		bool value[128];
		int m = source_options(tools[pages[i].tool].sources, names, value, 128);
		for (int k = 0; k < m; k++) {
			char flag[96];
			troff_flag(names[k], flag, sizeof flag);
			if (!strstr(page, flag))
				fail_msg("%s has no %s", pages[i].page, flag);
		}
		free(page);
	}
}

/* Without a driver, qwen-gpuinfo says that no NVIDIA driver was found, not that the driver
 * is too old. */
static void test_gpuinfo_without_driver(void **state)
{
	struct stat st;
	if (!built("qwen-gpuinfo") || stat("/proc/driver/nvidia", &st) == 0) {
		print_message("needs qwen-gpuinfo (a CUDA build) on a machine without a driver\n");
		return;
	}
	char *out;
	int rc = run_capture(&out, "%s", program("qwen-gpuinfo"));
	assert_int_equal(rc, 1);
	assert_contains(out, "qwen-gpuinfo: no NVIDIA driver was found");
	assert_contains(out, "HINT: ");
	assert_null(strstr(out, "insufficient"));
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tools_help),
		cmocka_unit_test(test_qwend_help),
		cmocka_unit_test(test_man_pages),
		cmocka_unit_test(test_gpuinfo_without_driver),
	};
	return cmocka_run_group_tests_name("help", tests, NULL, NULL);
}
