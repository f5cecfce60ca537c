/* parity_tokens.c - `qwen-parity tokens`: ladder step 1, token parity.  Every case of a
 * cases file ({"text", "ids", "decoded"} as HF tokenizers wrote them) is encoded and the ids
 * compared; the reference ids are decoded and the text compared.  Each mismatch prints both
 * id lists and the first differing position.  Exit 0 iff every case matches. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/parity.h"
#include "daemon/text/tokenizer.h"

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
	printf("    %-6s [", label);
	for (size_t i = 0; i < n; i++)
		printf("%s%d", i ? ", " : "", ids[i]);
	printf("]\n");
}

/* One case; returns true if it matches.  *why is set for a case that cannot be read. */
static bool check_case(qw_tokenizer *t, json_t *c, size_t index, int *problems)
{
	json_t *text = json_object_get(c, "text"), *ids = json_object_get(c, "ids");
	json_t *decoded = json_object_get(c, "decoded");
	if (!json_is_string(text) || !json_is_array(ids)) {
		printf("case %zu: needs a string 'text' and an array 'ids'\n", index);
		(*problems)++;
		return false;
	}
	size_t n_want = json_array_size(ids);
	int32_t *want = malloc((n_want + 1) * sizeof *want);
	for (size_t i = 0; i < n_want; i++)
		want[i] = (int32_t)json_integer_value(json_array_get(ids, i));
	int32_t *got = NULL;
	size_t n_got = 0;
	qw_err err = {0};
	bool ok = true;
	if (qw_tokenizer_encode(t, json_string_value(text), json_string_length(text), &got, &n_got,
				&err) != QW_OK) {
		printf("case %zu: encode failed: %s\n", index, err.msg);
		ok = false;
	} else if (n_got != n_want || memcmp(got, want, n_got * sizeof *got) != 0) {
		size_t first = 0;
		while (first < n_got && first < n_want && got[first] == want[first])
			first++;
		printf("case %zu: ids differ from position %zu (%zu ids, reference %zu)\n", index,
		       first, n_got, n_want);
		print_ids("ours", got, n_got);
		print_ids("ref", want, n_want);
		ok = false;
	}
	if (json_is_string(decoded)) {
		char *back = NULL;
		size_t len;
		if (qw_tokenizer_decode(t, want, n_want, &back, &len, &err) != QW_OK) {
			printf("case %zu: decode failed: %s\n", index, err.msg);
			ok = false;
		} else if (len != json_string_length(decoded) ||
			   memcmp(back, json_string_value(decoded), len) != 0) {
			printf("case %zu: decode of the reference ids differs from 'decoded'\n", index);
			ok = false;
		}
		free(back);
	}
	free(got);
	free(want);
	return ok;
}

int parity_tokens_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"tokenizer", required_argument, NULL, 't'},
		{"cases", required_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
		{0, 0, 0, 0}};
	const char *dir = NULL, *cases = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "t:c:h", opts, NULL)) != -1) {
		switch (c) {
		case 't': dir = optarg; break;
		case 'c': cases = optarg; break;
		case 'h':
			puts("usage: qwen-parity tokens --tokenizer DIR --cases FILE.json");
			return 0;
		default: return 2;
		}
	}
	if (!dir || !cases || optind != argc) {
		fputs("usage: qwen-parity tokens --tokenizer DIR --cases FILE.json\n", stderr);
		return 2;
	}
	qw_tokenizer *t;
	qw_err err = {0};
	if (qw_tokenizer_load(dir, &t, &err) != QW_OK) {
		fprintf(stderr, "qwen-parity tokens: %s\n", err.msg);
		return 2;
	}
	json_error_t jerr;
	json_t *list = json_load_file(cases, 0, &jerr);
	if (!json_is_array(list)) {
		fprintf(stderr, "qwen-parity tokens: %s: %s\n", cases,
			list ? "not an array of cases" : jerr.text);
		json_decref(list);
		qw_tokenizer_free(t);
		return 2;
	}
	size_t matched = 0, i;
	int problems = 0;
	json_t *one;
	json_array_foreach(list, i, one) matched += check_case(t, one, i, &problems);
	size_t n = json_array_size(list);
	printf("# token parity: %zu of %zu cases match\n%s\n", matched, n,
	       matched == n ? "PASS" : "FAIL");
	json_decref(list);
	qw_tokenizer_free(t);
	return problems ? 2 : matched == n ? 0 : 1;
}
