/* qwen-parity - climb the parity ladder: does this build compute what HF transformers
 * computed for the same model and prompt?
 *
 *   qwen-parity --model DIR --reference REF.safetensors --case NAME [--backend cpu|cuda]
 *               [--stages S] [--report OUT.json] [--trace] [--thresholds fp32|bf16|fp8]
 *   qwen-parity tokens --tokenizer DIR --cases FILE.json      (step 1: token parity)
 *
 * Prints one row per step (and per hidden state with --trace), writes the JSON report, and
 * exits 0 iff every step passed (1 a step failed, 2 bad usage or unreadable input).  The
 * steps, metrics and thresholds are in docs/parity.md.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/parity.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "loader/version.h"

static const char usage[] =
	"usage: qwen-parity --model DIR --reference REF.safetensors --case NAME\n"
	"                   [--backend cpu|cuda] [--stages S] [--report OUT.json] [--trace]\n"
	"                   [--thresholds fp32|bf16|fp8]\n"
	"       qwen-parity tokens --tokenizer DIR --cases FILE.json\n"
	"Climbs the parity ladder against a reference HF computed (docs/parity.md).\n"
	"\n"
	"  --model DIR        the model directory (required)\n"
	"  --reference FILE   the reference outputs, a safetensors file (required)\n"
	"  --case NAME        the reference's case, e.g. short, long or image (required)\n"
	"  --backend B        cpu or cuda (default cpu)\n"
	"  --stages S         split the layers over S in-process pipeline stages, 1 to 64\n"
	"                     (default 1)\n"
	"  --report FILE      write the results as JSON to FILE (default: none)\n"
	"  --trace            compare hidden states layer by layer and name the first that\n"
	"                     diverges (default: off)\n"
	"  --thresholds T     fp32, bf16 or fp8 (an FP8 checkpoint against its bf16 twin's\n"
	"                     reference) (default: fp32 on cpu, bf16 on cuda)\n"
	"  -h, --help         this text\n"
	"  -V, --version      the version\n"
	"tokens: token parity of a cases file (text, HF's ids, decoded)\n"
	"  --tokenizer DIR    the directory of tokenizer.json (required)\n"
	"  --cases FILE       the cases, JSON (required)\n"
	"exit status: 0 every step passed, 1 a step failed, 2 bad usage or unreadable input\n";

static json_t *metrics_json(const qw_metrics *m)
{
	return json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:i}", "mse", m->mse, "max_abs",
			 m->max_abs, "rel", m->rel, "exact", m->exact, "cosine", m->cosine, "kl", m->kl,
			 "top5", m->top5, "rows", m->rows);
}

static int write_report(const char *path, const qw_parity_opts *o, const char *backend,
			const qw_parity_result *r)
{
	const qw_thresholds *th = o->th;
	json_t *steps = json_array();
	for (int i = 0; i < r->n_steps; i++) {
		const qw_step_result *s = &r->step[i];
		json_t *js = json_pack("{s:s, s:b, s:b, s:s}", "name", r->names[i], "ran", s->ran,
				       "pass", s->pass, "note", s->note);
		if (s->ran && s->m.rows)
			json_object_set_new(js, "metrics", metrics_json(&s->m));
		json_array_append_new(steps, js);
	}
	json_t *o_json = json_pack(
		"{s:s, s:s, s:s, s:s, s:i, s:b, s:i, s:i, s:i, s:i, s:i, s:o, s:{s:s, s:f, s:f, "
		"s:f, s:f, s:f, s:f, s:f}}",
		"model", o->model_dir, "reference", o->reference, "case", o->case_name, "backend",
		backend, "stages", o->stages, "pass", r->pass, "tokens", r->tokens, "vocab",
		r->vocab, "hidden", r->hidden, "decode_steps", r->decode_steps, "decode_matched",
		r->decode_matched, "steps", steps, "thresholds", "name", th->name, "first_mse",
		th->first_mse, "first_max_abs", th->first_max_abs, "pos_mse", th->pos_mse, "pos_kl",
		th->pos_kl, "pos_top5", th->pos_top5, "pos_max_abs", th->pos_max_abs, "trace_rel",
		th->trace_rel);
	if (r->n_trace) {
		json_t *tr = json_array();
		for (int i = 0; i < r->n_trace; i++)
			json_array_append_new(tr, json_pack("{s:i, s:f, s:f}", "hidden", i, "max_abs",
							    r->trace_max_abs[i], "rel", r->trace_rel[i]));
		json_object_set_new(o_json, "trace", tr);
		json_object_set_new(o_json, "trace_first_diverging",
				    r->trace_first_bad < 0 ? json_null()
							   : json_integer(r->trace_first_bad));
	}
	int rc = json_dump_file(o_json, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o_json);
	if (rc != 0)
		fprintf(stderr, "qwen-parity: cannot write %s\n", path);
	return rc;
}

static void print_table(const qw_parity_opts *o, const char *backend, const qw_parity_result *r)
{
	printf("# %s case '%s': %d tokens, vocab %d, hidden %d; backend %s, %d stage%s, %s "
	       "thresholds\n", o->model_dir, o->case_name, r->tokens, r->vocab, r->hidden, backend,
	       o->stages, o->stages == 1 ? "" : "s", o->th->name);
	printf("# %-12s %-6s %11s %11s %10s %11s %7s  note\n", "step", "result", "mse", "max_abs",
	       "cosine", "kl", "top5");
	for (int i = 0; i < r->n_steps; i++) {
		const qw_step_result *s = &r->step[i];
		const char *res = !s->ran ? (s->note[0] ? "skip" : "-") : s->pass ? "PASS" : "FAIL";
		if (s->ran && s->m.rows)
			printf("  %-12s %-6s %11.3e %11.3e %10.7f %11.3e %7.3f  %s\n", r->names[i], res,
			       s->m.mse, s->m.max_abs, s->m.cosine, s->m.kl, s->m.top5, s->note);
		else
			printf("  %-12s %-6s %11s %11s %10s %11s %7s  %s\n", r->names[i], res, "", "", "",
			       "", "", s->note);
	}
	if (r->decode_steps)
		printf("# decode: %d of %d greedy tokens equal\n", r->decode_matched, r->decode_steps);
	if (r->n_trace) {
		printf("# trace: hidden state, max-abs difference, relative to max |ref|\n");
		for (int i = 0; i < r->n_trace; i++)
			printf("  hidden.%-4d %11.3e %11.3e%s\n", i, r->trace_max_abs[i], r->trace_rel[i],
			       i == r->trace_first_bad ? "  <- first to diverge" : "");
		if (r->trace_first_bad < 0)
			printf("# trace: no hidden state diverges\n");
	}
	printf("%s\n", r->pass ? "PASS" : "FAIL");
}

int parity_tokens_main(int argc, char **argv);   /* parity_tokens.c */

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "tokens") == 0)
		return parity_tokens_main(argc - 1, argv + 1);
	static const struct option opts[] = {
		{"model", required_argument, NULL, 'm'},
		{"reference", required_argument, NULL, 'r'},
		{"case", required_argument, NULL, 'c'},
		{"backend", required_argument, NULL, 'b'},
		{"stages", required_argument, NULL, 's'},
		{"report", required_argument, NULL, 'o'},
		{"trace", no_argument, NULL, 't'},
		{"thresholds", required_argument, NULL, 'T'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{0, 0, 0, 0}};
	qw_parity_opts o = {.stages = 1, .th = &qw_thresholds_fp32};   /* cpu's; see --thresholds */
	const char *backend = "cpu", *report = NULL;
	long long stages = 1;
	int c;
	const char *th_name = NULL;
	while ((c = getopt_long(argc, argv, "m:r:c:b:s:o:tT:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'm': o.model_dir = optarg; break;
		case 'r': o.reference = optarg; break;
		case 'c': o.case_name = optarg; break;
		case 'b': backend = optarg; break;
		case 's':
			if (!qw_arg_int("qwen-parity", "--stages", optarg, 1, 64, &stages))
				return 2;
			o.stages = (int)stages;
			break;
		case 'o': report = optarg; break;
		case 't': o.trace = true; break;
		case 'T': th_name = optarg; break;
		case 'h': fputs(usage, stdout); return 0;
		case 'V': printf("qwen-parity %s\n", QW_VERSION); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (!o.model_dir || !o.reference || !o.case_name || optind != argc) {
		fputs("qwen-parity: --model, --reference and --case are required\n", stderr);
		fputs(usage, stderr);
		return 2;
	}
	if (!th_name && strcmp(backend, "cuda") == 0)
		o.th = &qw_thresholds_bf16;   /* a bf16 backend's thresholds unless told otherwise */
	if (th_name && !(o.th = qw_thresholds_named(th_name))) {
		fprintf(stderr, "qwen-parity: --thresholds: '%s' is not fp32, bf16 or fp8\n", th_name);
		return 2;
	}
	qw_backend *be = NULL;
	qw_err err = {0};
	if (strcmp(backend, "cpu") == 0) {
		if (qw_cpu_backend_create(&be, &err) != QW_OK) {
			fprintf(stderr, "qwen-parity: %s\n", err.msg);
			return 2;
		}
	} else if (strcmp(backend, "cuda") == 0) {
		if (qw_cuda_backend_create(0, &be, &err) != QW_OK) {
			fprintf(stderr, "qwen-parity: --backend cuda: %s\n", err.msg);
			return 2;
		}
	} else {
		fprintf(stderr, "qwen-parity: --backend: '%s' is not cpu or cuda\n", backend);
		return 2;
	}
	qw_parity_result r;
	qw_status st = qw_parity_run(&o, be, &r, &err);
	be->destroy(be);
	if (st != QW_OK) {
		fprintf(stderr, "qwen-parity: %s\n", err.msg);
		return 2;
	}
	print_table(&o, backend, &r);
	if (report && write_report(report, &o, backend, &r) != 0)
		return 2;
	return r.pass ? 0 : 1;
}
