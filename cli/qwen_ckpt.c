/* qwen-ckpt - validate, inspect and export Qwen3-VL checkpoints.
 *
 *   qwen-ckpt validate DIR|--manifest FILE [--config FILE] [--stage I/S]
 *                      [--min-vision-blocks N] [--json]
 *   qwen-ckpt manifest DIR
 *   qwen-ckpt inspect DIR|CONFIG.json [--json]
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
	"  inspect DIR|CONFIG.json [--json]\n"
	"      Architecture, parameters (total, active per token), bytes per dtype, and a\n"
	"      memory plan for 1, 2, 4 and 8 pipeline stages.\n"
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
 * bytes per dtype (from the checkpoint, or the config's dtype for a bare config). */
typedef struct inspected {
	qw_config cfg;
	qw_wspec *specs;
	size_t n;
	uint64_t dtype_bytes[QW_DT_COUNT_];
	bool from_checkpoint;
} inspected;

static int inspect_load(const char *path, inspected *m)
{
	memset(m, 0, sizeof *m);
	struct stat sb;
	char cfg_path[4096];
	bool is_dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
	snprintf(cfg_path, sizeof cfg_path, is_dir ? "%s/config.json" : "%s", path);
	qw_err err = {0};
	qw_checkpoint *ck = NULL;
	if (qw_config_load(cfg_path, &m->cfg, &err) != QW_OK) {
		fprintf(stderr, "qwen-ckpt inspect: %s\n", err.msg);
		return CKPT_FAILED;
	}
	if (is_dir && qw_ckpt_open(path, &ck, &err) != QW_OK) {
		fprintf(stderr, "qwen-ckpt inspect: %s\n", err.msg);
		return CKPT_FAILED;
	}
	if (qw_wmap_build(&m->cfg, qw_detect_expert_layout(&m->cfg, ck), NULL, &m->specs, &m->n,
			  &err) != QW_OK) {
		fprintf(stderr, "qwen-ckpt inspect: %s\n", err.msg);
		qw_ckpt_close(ck);
		return CKPT_FAILED;
	}
	m->from_checkpoint = ck != NULL;
	for (size_t i = 0; i < m->n; i++) {
		const qw_tensor *t = ck ? qw_ckpt_find(ck, m->specs[i].name) : NULL;
		if (t)
			m->specs[i].bytes = t->nbytes;
		if (!ck)
			m->dtype_bytes[m->cfg.dtype] += m->specs[i].bytes;
	}
	for (size_t i = 0; ck && i < ck->n_tensors; i++)
		m->dtype_bytes[ck->tensors[i]->dtype] += ck->tensors[i]->nbytes;
	qw_ckpt_close(ck);
	return CKPT_OK;
}

static json_t *inspect_json(const inspected *m, const qw_params *p)
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
	json_object_set_new(o, "params", json_pack("{s:I, s:I, s:I}", "total", (json_int_t)p->total,
		"active", (json_int_t)p->active, "vision", (json_int_t)p->vision));
	json_t *bytes = json_object();
	for (int d = 1; d < QW_DT_COUNT_; d++)
		if (m->dtype_bytes[d])
			json_object_set_new(bytes, qw_dtype_name((qw_dtype)d),
					    json_integer((json_int_t)m->dtype_bytes[d]));
	json_object_set_new(o, "bytes_per_dtype", bytes);
	json_object_set_new(o, "plans", json_array());
	return o;
}

int ckpt_inspect(int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {0, 0, 0, 0}};
	bool json = false;
	int c;
	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'h': fputs(usage, stdout); return CKPT_OK;
		default: fputs(usage, stderr); return CKPT_USAGE;
		}
	}
	if (optind != argc - 1) {
		fputs("qwen-ckpt inspect: expected a model directory or a config.json\n", stderr);
		return CKPT_USAGE;
	}
	inspected m;
	int rc = inspect_load(argv[optind], &m);
	if (rc != CKPT_OK)
		return rc;
	const qw_config *cfg = &m.cfg;
	const qw_text_config *t = &cfg->text;
	qw_params p;
	qw_count_params(m.specs, m.n, t->num_experts_per_tok, &p);
	qw_dtype kv_dtype = QW_DT_BF16;
	uint64_t kv_layer = qw_kv_bytes_per_token_layer(cfg, kv_dtype);
	json_t *o = inspect_json(&m, &p);
	char b1[32], b2[32];

	if (!json) {
		printf("# %s: %s\n", argv[optind], cfg->model_type);
		printf("text      layers %d, hidden %d, heads %d (kv %d) x %d, vocab %d",
		       t->num_layers, t->hidden_size, t->num_heads, t->num_kv_heads, t->head_dim,
		       t->vocab_size);
		if (cfg->is_moe)
			printf(", MoE %d experts top-%d of width %d", t->num_experts,
			       t->num_experts_per_tok, t->moe_intermediate_size);
		else
			printf(", MLP width %d", t->intermediate_size);
		printf("%s\n", cfg->tie_word_embeddings ? ", tied lm_head" : "");
		if (cfg->has_vision)
			printf("vision    depth %d, hidden %d, heads %d, patch %d, merge %d, "
			       "deepstack %d\n", cfg->vision.depth, cfg->vision.hidden_size,
			       cfg->vision.num_heads, cfg->vision.patch_size,
			       cfg->vision.spatial_merge_size, cfg->vision.n_deepstack);
		char c1[32], c2[32], c3[32];
		printf("params    total %s, active per token %s, vision %s\n",
		       qw_fmt_count(p.total, c1, sizeof c1), qw_fmt_count(p.active, c2, sizeof c2),
		       qw_fmt_count(p.vision, c3, sizeof c3));
		for (int d = 1; d < QW_DT_COUNT_; d++)
			if (m.dtype_bytes[d])
				printf("bytes     %-8s %s%s\n", qw_dtype_name((qw_dtype)d),
				       qw_fmt_bytes(m.dtype_bytes[d], b1, sizeof b1),
				       m.from_checkpoint ? "" : " (from the config's dtype)");
		printf("kv cache  %llu bytes per token per layer (%s), %s per token for all layers\n",
		       (unsigned long long)kv_layer, qw_dtype_name(kv_dtype),
		       qw_fmt_bytes(kv_layer * (uint64_t)t->num_layers, b2, sizeof b2));
		printf("# memory plan: decoder layers per stage balanced by weight bytes\n");
		printf("# %6s %5s %12s %14s %18s\n", "stages", "stage", "layers", "weights",
		       "kv_bytes/token");
	}
	static const int stage_counts[] = {1, 2, 4, 8};
	for (size_t k = 0; k < sizeof stage_counts / sizeof *stage_counts; k++) {
		int S = stage_counts[k];
		qw_stage_plan plan[8];
		qw_err err = {0};
		if (S > t->num_layers || qw_plan_stages(cfg, m.specs, m.n, S, kv_dtype, plan, &err))
			continue;
		json_t *stages = json_array();
		for (int s = 0; s < S; s++) {
			const qw_stage_plan *sp = &plan[s];
			json_array_append_new(stages, json_pack("{s:i, s:[i, i], s:I, s:I}", "stage", s,
				"layers", sp->stage.layer_begin, sp->stage.layer_end, "weight_bytes",
				(json_int_t)sp->weight_bytes, "kv_bytes_per_token",
				(json_int_t)sp->kv_bytes_per_token));
			if (!json) {
				char range[32];
				snprintf(range, sizeof range, "[%d, %d)", sp->stage.layer_begin,
					 sp->stage.layer_end);
				printf("  %6d %5d %12s %14s %18llu\n", S, s, range,
				       qw_fmt_bytes(sp->weight_bytes, b1, sizeof b1),
				       (unsigned long long)sp->kv_bytes_per_token);
			}
		}
		json_array_append_new(json_object_get(o, "plans"),
				      json_pack("{s:i, s:o}", "stages", S, "per_stage", stages));
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
