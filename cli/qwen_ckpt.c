/* qwen-ckpt - validate, inspect and export Qwen3-VL checkpoints.
 *
 *   qwen-ckpt validate DIR|--manifest FILE [--config FILE] [--stage I/S]
 *                      [--min-vision-blocks N] [--json]
 *   qwen-ckpt manifest DIR
 *   qwen-ckpt inspect DIR|CONFIG.json|--manifest FILE [--gpu-memory SIZE] [--reserve SIZE]
 *                     [--kv-memory F] [--json]
 *   qwen-ckpt export-reduced --config CONFIG.json --out DIR [overrides...]
 *   qwen-ckpt scales DIR | gate-up DIR | diff A B       (quantization checks)
 *
 * This file holds main and inspect; validate and manifest are in ckpt_validate.c,
 * export-reduced in ckpt_export.c, the quantization checks in ckpt_quant.c.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/ckpt.h"
#include "loader/checkpoint.h"
#include "loader/config.h"
#include "loader/manifest.h"
#include "loader/plan.h"
#include "loader/units.h"
#include "loader/version.h"
#include "loader/weights.h"

static const char usage[] =
	"usage: qwen-ckpt COMMAND ...\n"
	"  validate DIR|--manifest FILE [--config FILE] [--stage I/S] [--min-vision-blocks N]\n"
	"           [--json]\n"
	"      Check every tensor the config implies (text and vision) against the checkpoint\n"
	"      in DIR, or a manifest of its headers: names, shapes, dtypes, and the files\n"
	"      themselves.  With --stage, only what pipeline stage I of S owns.  Exit 0 iff\n"
	"      nothing is missing or mismatched.  (see validate --help)\n"
	"  manifest DIR\n"
	"      The checkpoint's config, files and tensor headers as JSON (no tensor data is\n"
	"      read), for validate --manifest.\n"
	"  inspect DIR|CONFIG.json|--manifest FILE [--gpu-memory SIZE] [--reserve SIZE]\n"
	"          [--kv-memory F] [--json]\n"
	"      Architecture, parameters (total, active per token), bytes per dtype (FP8\n"
	"      weights one byte a value, with their scales), and a memory plan for 1, 2, 4\n"
	"      and 8 pipeline stages, a stage per GPU: each stage's weights and the KV cache\n"
	"      (bytes and tokens) its GPU has left, and whether the model fits.\n"
	"      --manifest FILE: a checkpoint's manifest (its config and tensor headers);\n"
	"        one of DIR, CONFIG.json and --manifest FILE is required\n"
	"      --gpu-memory SIZE: each GPU's memory (default 80G; K/M/G are powers of 1024)\n"
	"      --reserve SIZE: what a worker holds besides weights and KV cache: the CUDA\n"
	"        context, the step's scratch, NCCL's buffers, the 1 GiB it keeps free\n"
	"        (default 5G, an estimate)\n"
	"      --kv-memory F: the share of the rest the KV cache takes, as qwend's kv-memory\n"
	"        (default 0.9)\n"
	"  export-reduced --config CONFIG.json --out DIR [--num-layers N] [--seed S]\n"
	"      [--shards N] [--override-FIELD N ...]   (see export-reduced --help)\n"
	"      Write a complete HF model dir with deterministic random bf16 weights\n"
	"      (--quantize fp8: FP8 block-scaled, as Qwen publishes them).\n"
	"  scales DIR [--json]\n"
	"      Statistics of every kind of quantization scale; the tensors whose scales are\n"
	"      non-finite, zero, negative or orders of magnitude from the rest, by layer.\n"
	"  gate-up DIR\n"
	"      Gate and up projections must share their global scale (NVFP4); fused FP8\n"
	"      gate_up: the block scales at the gate/up boundary.\n"
	"  diff A B [--tensor PATTERN] [--bytes N]\n"
	"      Tensor by tensor: names, shapes, dtypes, bytes; quantized A against float B:\n"
	"      the dequantisation error.  --tensor: only the tensors whose names match the\n"
	"      shell pattern (default: all); --bytes: compare the first N bytes of each, 1 or\n"
	"      more (default: all of them).\n"
	"  --json (validate, inspect, scales): the report as JSON (default: a table)\n"
	"  -h, --help: this text (validate --help and export-reduced --help: their options)\n"
	"  -V, --version: the version\n"
	"exit status: 0 ok, 1 the model failed a check or could not be read, 2 bad usage\n";

// ---------------------------------------------------------------------------------------
// inspect

/* The model as the inspect report sees it: config, specs with their stored bytes, and the
 * bytes per dtype (from the checkpoint or manifest, or what a bare config implies). */
typedef struct inspected {
	qw_config cfg;
	qw_wspec *specs;
	size_t n;
	uint64_t dtype_bytes[QW_DT_COUNT_];
	bool from_checkpoint;
} inspected;

/* What a GPU of the memory plan holds (--gpu-memory, --reserve, --kv-memory). */
typedef struct device_plan {
	uint64_t memory;      /* each GPU's memory */
	uint64_t reserve;     /* what a worker holds besides its weights and KV cache */
	double kv_memory;     /* the share of what is left that the KV cache takes */
} device_plan;

/* The config and tensors of path: a model directory, a config.json, or with manifest a
 * checkpoint manifest (loader/manifest.h). */
static int inspect_load(const char *path, bool manifest, inspected *m)
{
	memset(m, 0, sizeof *m);
	struct stat sb;
	char cfg_path[4096];
	bool is_dir = !manifest && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
	snprintf(cfg_path, sizeof cfg_path, is_dir ? "%s/config.json" : "%s", path);
	qw_err err = {0};
	qw_checkpoint *ck = NULL;
	qw_manifest mf = {0};
	qw_status st;
	if (manifest) {
		st = qw_manifest_load(path, &mf, &err);
		if (st == QW_OK && !mf.config_json)
			st = qw_fail(&err, QW_E_CONFIG, "%s holds no config (HINT: inspect its "
				     "config.json, or a manifest written with one)", path);
		if (st == QW_OK)
			st = qw_config_parse(mf.config_json, strlen(mf.config_json), path, &m->cfg,
					     &err);
		ck = mf.ck;
	} else {
		st = qw_config_load(cfg_path, &m->cfg, &err);
		if (st == QW_OK && is_dir)
			st = qw_ckpt_open(path, &ck, &err);
	}
	if (st == QW_OK)
		st = qw_wmap_build(&m->cfg, qw_detect_expert_layout(&m->cfg, ck), NULL, &m->specs,
				   &m->n, &err);
	if (st != QW_OK) {
		fprintf(stderr, "qwen-ckpt inspect: %s\n", err.msg);
		if (manifest)
			qw_manifest_free(&mf);
		else
			qw_ckpt_close(ck);
		return CKPT_FAILED;
	}
	m->from_checkpoint = ck != NULL;
	bool fp8 = m->cfg.quant.kind == QW_QUANT_FP8;
	for (size_t i = 0; i < m->n; i++) {
		const qw_wspec *s = &m->specs[i];
		const qw_tensor *t = ck ? qw_ckpt_find(ck, s->name) : NULL;
		if (t)
			m->specs[i].bytes = t->nbytes;
		if (!ck)   /* a bare config: its dtype, FP8 weights and their F32 scales */
			m->dtype_bytes[s->is_scale ? QW_DT_F32 : fp8 && s->quantizable
				       ? QW_DT_F8_E4M3 : m->cfg.dtype] += s->bytes;
	}
	for (size_t i = 0; ck && i < ck->n_tensors; i++)
		m->dtype_bytes[ck->tensors[i]->dtype] += ck->tensors[i]->nbytes;
	if (manifest)
		qw_manifest_free(&mf);
	else
		qw_ckpt_close(ck);
	return CKPT_OK;
}

static json_t *inspect_json(const inspected *m, const qw_params *p, const device_plan *dp)
{
	const qw_config *cfg = &m->cfg;
	const qw_text_config *t = &cfg->text;
	json_t *o = json_object();
	json_object_set_new(o, "model_type", json_string(cfg->model_type));
	json_object_set_new(o, "text", json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i}",
		"layers", t->num_layers, "hidden", t->hidden_size, "heads", t->num_heads,
		"kv_heads", t->num_kv_heads, "head_dim", t->head_dim, "vocab", t->vocab_size,
		"experts", t->num_experts, "experts_per_token", t->num_experts_per_tok,
		"moe_intermediate", t->moe_intermediate_size));
	if (cfg->has_vision)
		json_object_set_new(o, "vision", json_pack("{s:i, s:i, s:i, s:i}", "depth",
			cfg->vision.depth, "hidden", cfg->vision.hidden_size, "heads",
			cfg->vision.num_heads, "deepstack", cfg->vision.n_deepstack));
	if (cfg->quant.kind == QW_QUANT_FP8)
		json_object_set_new(o, "quantization", json_pack("{s:s, s:[i, i]}", "method", "fp8",
			"block", cfg->quant.block[0], cfg->quant.block[1]));
	json_object_set_new(o, "params", json_pack("{s:I, s:I, s:I}", "total", (json_int_t)p->total,
		"active", (json_int_t)p->active, "vision", (json_int_t)p->vision));
	json_t *bytes = json_object();
	for (int d = 1; d < QW_DT_COUNT_; d++)
		if (m->dtype_bytes[d])
			json_object_set_new(bytes, qw_dtype_name((qw_dtype)d),
					    json_integer((json_int_t)m->dtype_bytes[d]));
	json_object_set_new(o, "bytes_per_dtype", bytes);
	json_object_set_new(o, "gpu", json_pack("{s:I, s:I, s:f}", "memory", (json_int_t)dp->memory,
		"reserve", (json_int_t)dp->reserve, "kv_memory", dp->kv_memory));
	json_object_set_new(o, "plans", json_array());
	return o;
}

static void print_header(const char *label, const inspected *m, const qw_params *p,
			 const device_plan *dp, uint64_t kv_layer)
{
	const qw_config *cfg = &m->cfg;
	const qw_text_config *t = &cfg->text;
	char b1[32], b2[32], b3[32];
	printf("# %s: %s\n", label, cfg->model_type);
	printf("text      layers %d, hidden %d, heads %d (kv %d) x %d, vocab %d", t->num_layers,
	       t->hidden_size, t->num_heads, t->num_kv_heads, t->head_dim, t->vocab_size);
	if (cfg->is_moe)
		printf(", MoE %d experts top-%d of width %d", t->num_experts,
		       t->num_experts_per_tok, t->moe_intermediate_size);
	else
		printf(", MLP width %d", t->intermediate_size);
	printf("%s\n", cfg->tie_word_embeddings ? ", tied lm_head" : "");
	if (cfg->has_vision)
		printf("vision    depth %d, hidden %d, heads %d, patch %d, merge %d, deepstack %d\n",
		       cfg->vision.depth, cfg->vision.hidden_size, cfg->vision.num_heads,
		       cfg->vision.patch_size, cfg->vision.spatial_merge_size, cfg->vision.n_deepstack);
	if (cfg->quant.kind == QW_QUANT_FP8)
		printf("quant     fp8: text-layer linear weights F8_E4M3, an F32 scale per %d x %d "
		       "block\n", cfg->quant.block[0], cfg->quant.block[1]);
	printf("params    total %s, active per token %s, vision %s\n",
	       qw_fmt_count(p->total, b1, sizeof b1), qw_fmt_count(p->active, b2, sizeof b2),
	       qw_fmt_count(p->vision, b3, sizeof b3));
	for (int d = 1; d < QW_DT_COUNT_; d++)
		if (m->dtype_bytes[d])
			printf("bytes     %-8s %s%s\n", qw_dtype_name((qw_dtype)d),
			       qw_fmt_bytes(m->dtype_bytes[d], b1, sizeof b1),
			       m->from_checkpoint ? "" : " (what the config implies)");
	printf("kv cache  %llu bytes per token per layer (BF16), %s per token for all layers\n",
	       (unsigned long long)kv_layer,
	       qw_fmt_bytes(kv_layer * (uint64_t)t->num_layers, b1, sizeof b1));
	printf("# memory plan: decoder layers per stage balanced by weight bytes; a GPU of %s a "
	       "stage,\n# %s of it kept for the runtime, %.2f of the rest for the KV cache\n",
	       qw_fmt_bytes(dp->memory, b1, sizeof b1), qw_fmt_bytes(dp->reserve, b2, sizeof b2),
	       dp->kv_memory);
	printf("# %6s %5s %12s %12s %15s %12s %12s\n", "stages", "stage", "layers", "weights",
	       "kv_bytes/token", "kv_cache", "kv_tokens");
}

/* One plan of S stages: its stages' rows and a line saying whether it fits. */
static json_t *plan_of(const inspected *m, int S, const device_plan *dp, bool json)
{
	qw_stage_plan plan[8];
	qw_err err = {0};
	if (S > m->cfg.text.num_layers ||
	    qw_plan_stages(&m->cfg, m->specs, m->n, S, QW_DT_BF16, plan, &err) != QW_OK)
		return NULL;
	json_t *stages = json_array();
	bool fits = true;
	uint64_t tokens = UINT64_MAX;
	char b1[32], b2[32];
	for (int s = 0; s < S; s++) {
		const qw_stage_plan *sp = &plan[s];
		qw_stage_fit f;
		qw_plan_fit(sp, dp->memory, dp->reserve, dp->kv_memory, &f);
		fits &= f.fits;
		tokens = f.kv_tokens < tokens ? f.kv_tokens : tokens;
		json_array_append_new(stages, json_pack("{s:i, s:[i, i], s:I, s:I, s:b, s:I, s:I}",
			"stage", s, "layers", sp->stage.layer_begin, sp->stage.layer_end,
			"weight_bytes", (json_int_t)sp->weight_bytes, "kv_bytes_per_token",
			(json_int_t)sp->kv_bytes_per_token, "fits", f.fits, "kv_bytes",
			(json_int_t)f.kv_bytes, "kv_tokens", (json_int_t)f.kv_tokens));
		if (!json) {
			char range[32], toks[32];
			snprintf(range, sizeof range, "[%d, %d)", sp->stage.layer_begin,
				 sp->stage.layer_end);
			snprintf(toks, sizeof toks, "%llu", (unsigned long long)f.kv_tokens);
			printf("  %6d %5d %12s %12s %15llu %12s %12s\n", S, s, range,
			       qw_fmt_bytes(sp->weight_bytes, b1, sizeof b1),
			       (unsigned long long)sp->kv_bytes_per_token,
			       f.fits ? qw_fmt_bytes(f.kv_bytes, b2, sizeof b2) : "-",
			       f.fits ? toks : "does not fit");
		}
	}
	if (!fits)
		tokens = 0;
	if (!json) {
		const char *what = S == 1 ? "stage" : "stages";
		if (fits)
			printf("  %6d %s fit: a KV cache of %llu tokens (the smallest stage's; every "
			       "stage gets as many)\n", S, what, (unsigned long long)tokens);
		else
			printf("  %6d %s do not fit: a stage's weights and the runtime's %s pass %s\n",
			       S, what, qw_fmt_bytes(dp->reserve, b1, sizeof b1),
			       qw_fmt_bytes(dp->memory, b2, sizeof b2));
	}
	return json_pack("{s:i, s:b, s:I, s:o}", "stages", S, "fits", fits, "kv_tokens",
			 (json_int_t)tokens, "per_stage", stages);
}

/* --kv-memory: a share in (0, 1). */
static bool parse_share(const char *s, double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || !(v > 0 && v < 1)) {
		fprintf(stderr, "qwen-ckpt inspect: --kv-memory: '%s' is not a number between 0 and "
			"1 (exclusive)\n", s);
		return false;
	}
	*out = v;
	return true;
}

int ckpt_inspect(int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'}, {"manifest", required_argument, NULL, 'm'},
		{"gpu-memory", required_argument, NULL, 'g'},
		{"reserve", required_argument, NULL, 'r'},
		{"kv-memory", required_argument, NULL, 'k'}, {"help", no_argument, NULL, 'h'},
		{0, 0, 0, 0}};
	bool json = false;
	const char *manifest = NULL;
	device_plan dp = {80ull << 30, 5ull << 30, 0.9};
	long long v;
	int c;
	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'm': manifest = optarg; break;
		case 'g':
			if (!qw_arg_int("qwen-ckpt inspect", "--gpu-memory", optarg, 1, INT64_MAX, &v))
				return CKPT_USAGE;
			dp.memory = (uint64_t)v;
			break;
		case 'r':
			if (!qw_arg_int("qwen-ckpt inspect", "--reserve", optarg, 0, INT64_MAX, &v))
				return CKPT_USAGE;
			dp.reserve = (uint64_t)v;
			break;
		case 'k':
			if (!parse_share(optarg, &dp.kv_memory))
				return CKPT_USAGE;
			break;
		case 'h': fputs(usage, stdout); return CKPT_OK;
		default: fputs(usage, stderr); return CKPT_USAGE;
		}
	}
	if (optind != argc - !manifest) {
		fputs(manifest ? "qwen-ckpt inspect: --manifest takes the place of DIR|CONFIG.json\n"
			       : "qwen-ckpt inspect: expected a model directory or a config.json (or "
				 "--manifest FILE)\n", stderr);
		return CKPT_USAGE;
	}
	const char *label = manifest ? manifest : argv[optind];
	inspected m;
	int rc = inspect_load(label, manifest != NULL, &m);
	if (rc != CKPT_OK)
		return rc;
	qw_params p;
	qw_count_params(m.specs, m.n, m.cfg.text.num_experts_per_tok, &p);
	json_t *o = inspect_json(&m, &p, &dp);
	if (!json)
		print_header(label, &m, &p, &dp, qw_kv_bytes_per_token_layer(&m.cfg, QW_DT_BF16));
	static const int stage_counts[] = {1, 2, 4, 8};
	for (size_t k = 0; k < sizeof stage_counts / sizeof *stage_counts; k++) {
		json_t *plan = plan_of(&m, stage_counts[k], &dp, json);
		if (plan)
			json_array_append_new(json_object_get(o, "plans"), plan);
	}
	if (json) {
		char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("%s\n", text ? text : "{}");
		free(text);
	}
	json_decref(o);
	free(m.specs);
	return CKPT_OK;
}

// ---------------------------------------------------------------------------------------

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? CKPT_USAGE : CKPT_OK;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
		printf("qwen-ckpt %s\n", QW_VERSION);
		return CKPT_OK;
	}
	/* the quantization checks' few options are in this text */
	bool quant = !strcmp(argv[1], "scales") || !strcmp(argv[1], "gate-up") ||
		     !strcmp(argv[1], "diff");
	if (quant && argc == 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
		fputs(usage, stdout);
		return CKPT_OK;
	}
	if (strcmp(argv[1], "validate") == 0)
		return ckpt_validate(argc - 1, argv + 1);
	if (strcmp(argv[1], "manifest") == 0)
		return ckpt_manifest(argc - 1, argv + 1);
	if (strcmp(argv[1], "inspect") == 0)
		return ckpt_inspect(argc - 1, argv + 1);
	if (strcmp(argv[1], "export-reduced") == 0)
		return ckpt_export_reduced(argc - 1, argv + 1);
	if (strcmp(argv[1], "scales") == 0)
		return ckpt_scales(argc - 1, argv + 1);
	if (strcmp(argv[1], "gate-up") == 0)
		return ckpt_gate_up(argc - 1, argv + 1);
	if (strcmp(argv[1], "diff") == 0)
		return ckpt_diff(argc - 1, argv + 1);
	fprintf(stderr, "qwen-ckpt: unknown command '%s'\n%s", argv[1], usage);
	return CKPT_USAGE;
}
