/* ckpt_export.c - qwen-ckpt export-reduced: a complete HF model directory (config.json and
 * safetensors weights in the hub's layout) of a reduced-size model, with deterministic
 * random bf16 weights, for tests, parity fixtures and the demo.  The work is
 * loader/export.h (which documents the overrides and the weights); this file is its
 * command line: flags in, one summary line or one error line out.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/ckpt.h"
#include "loader/export.h"
#include "loader/units.h"

static const char export_usage[] =
	"usage: qwen-ckpt export-reduced --config CONFIG.json --out DIR [options]\n"
	"  Writes a complete HF model directory of the config, reduced as the options say, with\n"
	"  deterministic random bf16 weights.\n"
	"  --config FILE                  the model's config.json (required)\n"
	"  --out DIR                      where to write (required)\n"
	"  (each N below is 1 to 1073741824)\n"
	"  --num-layers N                 decoder layers (default: the config's)\n"
	"  --override-vocab N             vocabulary size (default: the config's)\n"
	"  --override-hidden N            hidden size (default: the config's)\n"
	"  --override-heads N             attention heads (default: the config's)\n"
	"  --override-kv-heads N          key-value heads (default: the config's)\n"
	"  --override-head-dim N          dimensions of a head (default: the config's)\n"
	"  --override-intermediate N      the dense MLP's intermediate size (default: the config's)\n"
	"  --override-moe-intermediate N  an expert's intermediate size (default: the config's)\n"
	"  --override-num-experts N       experts of a MoE layer (default: the config's)\n"
	"  --override-top-k N             experts a token is routed to (default: the config's)\n"
	"  --override-vision-depth N      vision blocks (default: the config's)\n"
	"  --override-vision-hidden N     the vision tower's hidden size (default: the config's)\n"
	"  --seed S                       random stream, 0 or more (default 0)\n"
	"  --shards N                     write N shards and model.safetensors.index.json, 1 to\n"
	"                                 99999 (default 1: one model.safetensors)\n"
	"  --quantize fp8                 the text layers' linear weights as float8_e4m3fn with\n"
	"                                 an fp32 scale (amax / 448) per 128 x 128 block\n"
	"                                 (default: bf16)\n";

typedef struct export_args {
	const char *config, *out;    /* --config, --out */
	qw_export_opts opts;         /* the rest */
} export_args;

static int parse_args(int argc, char **argv, export_args *a)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"out", required_argument, NULL, 'o'},
		{"seed", required_argument, NULL, 's'},
		{"shards", required_argument, NULL, 'S'},
		{"quantize", required_argument, NULL, 'q'},
		{"num-layers", required_argument, NULL, 256 + QW_EXPORT_OV_LAYERS},
		{"override-vocab", required_argument, NULL, 256 + QW_EXPORT_OV_VOCAB},
		{"override-hidden", required_argument, NULL, 256 + QW_EXPORT_OV_HIDDEN},
		{"override-heads", required_argument, NULL, 256 + QW_EXPORT_OV_HEADS},
		{"override-kv-heads", required_argument, NULL, 256 + QW_EXPORT_OV_KV_HEADS},
		{"override-head-dim", required_argument, NULL, 256 + QW_EXPORT_OV_HEAD_DIM},
		{"override-intermediate", required_argument, NULL, 256 + QW_EXPORT_OV_INTER},
		{"override-moe-intermediate", required_argument, NULL, 256 + QW_EXPORT_OV_MOE_INTER},
		{"override-num-experts", required_argument, NULL, 256 + QW_EXPORT_OV_EXPERTS},
		{"override-top-k", required_argument, NULL, 256 + QW_EXPORT_OV_TOP_K},
		{"override-vision-depth", required_argument, NULL, 256 + QW_EXPORT_OV_VISION_DEPTH},
		{"override-vision-hidden", required_argument, NULL, 256 + QW_EXPORT_OV_VISION_HIDDEN},
		{"help", no_argument, NULL, 'h'},
		{0, 0, 0, 0}};
	memset(a, 0, sizeof *a);
	qw_export_opts_default(&a->opts);
	long long v;
	int c, li;
	while ((c = getopt_long(argc, argv, "c:o:s:S:q:h", opts, &li)) != -1) {
		const char *prog = "qwen-ckpt export-reduced";
		switch (c) {
		case 'c': a->config = optarg; break;
		case 'o': a->out = optarg; break;
		case 's':
			if (!qw_arg_int(prog, "--seed", optarg, 0, INT64_MAX, &v))
				return CKPT_USAGE;
			a->opts.seed = (uint64_t)v;
			break;
		case 'S':
			if (!qw_arg_int(prog, "--shards", optarg, 1, 99999, &v))
				return CKPT_USAGE;
			a->opts.shards = (int)v;
			break;
		case 'q':
			if (strcmp(optarg, "fp8") != 0) {
				fprintf(stderr, "%s: --quantize: '%s' is not fp8\n", prog, optarg);
				return CKPT_USAGE;
			}
			a->opts.fp8 = true;
			break;
		case 'h': fputs(export_usage, stdout); return -1;
		default:
			if (c < 256 || c >= 256 + QW_EXPORT_OV_COUNT) {
				fputs(export_usage, stderr);
				return CKPT_USAGE;
			}
			char flag[64];
			snprintf(flag, sizeof flag, "--%s", opts[li].name);
			if (!qw_arg_int(prog, flag, optarg, 1, QW_EXPORT_OV_MAX, &v))
				return CKPT_USAGE;
			a->opts.ov[c - 256] = v;
		}
	}
	if (!a->config || !a->out || optind != argc) {
		fputs("qwen-ckpt export-reduced: needs --config and --out\n", stderr);
		fputs(export_usage, stderr);
		return CKPT_USAGE;
	}
	return CKPT_OK;
}

int ckpt_export_reduced(int argc, char **argv)
{
	export_args a;
	int rc = parse_args(argc, argv, &a);
	if (rc != CKPT_OK)
		return rc < 0 ? CKPT_OK : rc;
	size_t len = 0;
	char *text = qw_read_text(a.config, &len);
	if (!text) {
		fprintf(stderr, "qwen-ckpt export-reduced: %s: cannot open: %s\n", a.config,
			strerror(errno));
		return CKPT_FAILED;
	}
	qw_err err = {0};
	qw_export_summary sum;
	qw_status st = qw_export_reduced(text, len, a.config, &a.opts, a.out, &sum, &err);
	free(text);
	if (st != QW_OK) {
		fprintf(stderr, "qwen-ckpt export-reduced: %s\n", err.msg);
		return st == QW_E_ARG ? CKPT_USAGE : CKPT_FAILED;
	}
	char b[32];
	printf("wrote %s: %s, %zu tensors, %s in %d file%s\n", a.out, sum.model_type, sum.n_tensors,
	       qw_fmt_bytes(sum.bytes, b, sizeof b), sum.shards, sum.shards == 1 ? "" : "s");
	return CKPT_OK;
}
