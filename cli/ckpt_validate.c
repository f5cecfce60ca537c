/* ckpt_validate.c - qwen-ckpt validate and manifest: a checkpoint, as a directory or as a
 * manifest of its headers (loader/manifest.h), held to the weight map of its config.  Both
 * kinds go through the same binding (qw_weights_load) and give the same report. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/ckpt.h"
#include "loader/checkpoint.h"
#include "loader/config.h"
#include "loader/manifest.h"
#include "loader/plan.h"
#include "loader/units.h"
#include "loader/weights.h"

static const char validate_usage[] =
	"usage: qwen-ckpt validate DIR | --manifest MANIFEST.json [--config CONFIG.json]\n"
	"                          [--stage I/S] [--min-vision-blocks N] [--json]\n"
	"  Checks every tensor the config implies (text and vision) against the checkpoint in\n"
	"  DIR, or against the headers a manifest lists (qwen-ckpt manifest writes one): names,\n"
	"  shapes, dtypes, and the files themselves.  The config is CONFIG.json, else DIR's\n"
	"  config.json, else the manifest's.\n"
	"  --manifest FILE        check the manifest FILE instead of a directory DIR (one of the\n"
	"                         two is required)\n"
	"  --config FILE          the config to check against (default: DIR's config.json,\n"
	"                         else the manifest's)\n"
	"  --stage I/S            only what pipeline stage I of S owns, 0 <= I < S (default:\n"
	"                         the whole model)\n"
	"  --min-vision-blocks N  accept a vision tower cut to its first K >= N blocks (a\n"
	"                         reduced export): the deepstack mergers of those blocks are\n"
	"                         expected, and one of a block it lacks fails the check\n"
	"                         (default: the whole tower)\n"
	"  --json                 the report as JSON (default: a table)\n"
	"exit status: 0 nothing missing or mismatched, 1 otherwise or unreadable, 2 bad usage\n";

static bool parse_stage(const char *s, int *index, int *count)
{
	char tail;
	return sscanf(s, "%d/%d%c", index, count, &tail) == 2 && *count >= 1 && *index >= 0 &&
	       *index < *count;
}

static void print_list(const char *title, char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("  %s %s\n", title, names[i]);
}

typedef struct validate_args {
	const char *dir, *manifest, *config;
	int stage_index, stage_count;      /* stage_count 0: the whole model */
	int min_vision_blocks;             /* 0: the whole tower is expected */
	bool json;
} validate_args;

/* What is validated: a config and a checkpoint (a directory's, or a manifest's headers). */
typedef struct subject {
	qw_config cfg;
	qw_checkpoint *ck;
	qw_manifest manifest;              /* from --manifest; its ck is ck */
	const char *label;                 /* DIR or the manifest's path */
	int vision_depth;                  /* the config's, before any cut */
	int vision_stored;                 /* blocks stored, with --min-vision-blocks */
} subject;

static int parse_args(int argc, char **argv, validate_args *a)
{
	static const struct option opts[] = {
		{"stage", required_argument, NULL, 's'},
		{"manifest", required_argument, NULL, 'm'},
		{"config", required_argument, NULL, 'c'},
		{"min-vision-blocks", required_argument, NULL, 'v'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{0, 0, 0, 0}};
	memset(a, 0, sizeof *a);
	long long v;
	int c;
	while ((c = getopt_long(argc, argv, "s:m:c:v:jh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (!parse_stage(optarg, &a->stage_index, &a->stage_count)) {
				fprintf(stderr, "qwen-ckpt validate: --stage: '%s' is not I/S with "
					"0 <= I < S\n", optarg);
				return CKPT_USAGE;
			}
			break;
		case 'm': a->manifest = optarg; break;
		case 'c': a->config = optarg; break;
		case 'v':
			if (!qw_arg_int("qwen-ckpt validate", "--min-vision-blocks", optarg, 1, 1024,
					&v))
				return CKPT_USAGE;
			a->min_vision_blocks = (int)v;
			break;
		case 'j': a->json = true; break;
		case 'h': fputs(validate_usage, stdout); return -1;
		default: fputs(validate_usage, stderr); return CKPT_USAGE;
		}
	}
	if (optind != argc - !a->manifest) {
		fputs(a->manifest ? "qwen-ckpt validate: --manifest takes the place of DIR; give "
				    "one or the other\n"
				  : "qwen-ckpt validate: expected one model directory (or "
				    "--manifest FILE)\n", stderr);
		return CKPT_USAGE;
	}
	a->dir = a->manifest ? NULL : argv[optind];
	return CKPT_OK;
}

static void subject_close(subject *s)
{
	if (s->manifest.ck)
		qw_manifest_free(&s->manifest);
	else
		qw_ckpt_close(s->ck);
	s->ck = NULL;
}

/* Opens the checkpoint and reads the config: --config, else DIR's, else the manifest's. */
static int subject_open(const validate_args *a, subject *s)
{
	memset(s, 0, sizeof *s);
	qw_err err = {0};
	s->label = a->manifest ? a->manifest : a->dir;
	qw_status st = a->manifest ? qw_manifest_load(a->manifest, &s->manifest, &err)
				   : qw_ckpt_open(a->dir, &s->ck, &err);
	if (a->manifest)
		s->ck = s->manifest.ck;
	char path[4096];
	if (st == QW_OK && a->config) {
		st = qw_config_load(a->config, &s->cfg, &err);
	} else if (st == QW_OK && a->dir) {
		snprintf(path, sizeof path, "%s/config.json", a->dir);
		st = qw_config_load(path, &s->cfg, &err);
	} else if (st == QW_OK && s->manifest.config_json) {
		snprintf(path, sizeof path, "%s: config", a->manifest);
		st = qw_config_parse(s->manifest.config_json, strlen(s->manifest.config_json), path,
				     &s->cfg, &err);
	} else if (st == QW_OK) {
		st = qw_fail(&err, QW_E_CONFIG, "%s holds no config\nHINT: pass the model's "
			     "config.json with --config", a->manifest);
	}
	if (st != QW_OK) {
		fprintf(stderr, "qwen-ckpt validate: %s\n", err.msg);
		subject_close(s);
		return CKPT_FAILED;
	}
	s->vision_depth = s->cfg.vision.depth;
	return CKPT_OK;
}

/* With --min-vision-blocks: cuts the config's tower to the blocks the checkpoint stores. */
static int cut_vision(const validate_args *a, subject *s)
{
	if (!a->min_vision_blocks)
		return CKPT_OK;
	if (!s->cfg.has_vision || a->min_vision_blocks > s->cfg.vision.depth) {
		fprintf(stderr, "qwen-ckpt validate: --min-vision-blocks %d: the model's vision "
			"tower has %d blocks\n", a->min_vision_blocks, s->cfg.vision.depth);
		return CKPT_USAGE;
	}
	s->vision_stored = qw_vision_blocks_stored(s->ck);
	if (s->vision_stored < a->min_vision_blocks) {
		fprintf(stderr, "qwen-ckpt validate: %s stores %d vision blocks, fewer than "
			"--min-vision-blocks %d\n", s->label, s->vision_stored, a->min_vision_blocks);
		return CKPT_FAILED;
	}
	qw_config_cut_vision(&s->cfg, s->vision_stored);
	return CKPT_OK;
}

/* The stage --stage names, planned by the bytes the checkpoint stores. */
static int plan_stage(const validate_args *a, subject *s, qw_stage *out)
{
	qw_wspec *specs;
	size_t n;
	qw_stage_plan plan[QW_MAX_STAGES];
	qw_err err = {0};
	qw_status st = qw_wmap_build(&s->cfg, qw_detect_expert_layout(&s->cfg, s->ck), NULL,
				     &specs, &n, &err);
	if (st == QW_OK) {
		for (size_t i = 0; i < n; i++) {   /* balance by the bytes actually stored */
			const qw_tensor *t = qw_ckpt_find(s->ck, specs[i].name);
			if (t)
				specs[i].bytes = t->nbytes;
		}
		st = qw_plan_stages(&s->cfg, specs, n, a->stage_count, s->cfg.dtype, plan, &err);
		free(specs);
	}
	if (st != QW_OK) {
		fprintf(stderr, "qwen-ckpt validate: --stage %d/%d: %s\n", a->stage_index,
			a->stage_count, err.msg);
		return CKPT_USAGE;
	}
	*out = plan[a->stage_index].stage;
	return CKPT_OK;
}

static void print_parts(const qw_wreport *rep)
{
	printf("  %-18s %8s %8s %8s %10s %6s %11s\n", "part", "expected", "loaded", "missing",
	       "mismatched", "extra", "other_stage");
	for (int g = 0; g < QW_GROUP_COUNT; g++) {
		const qw_wcount *c = &rep->parts[g];
		if (c->expected + c->extra + c->other_stage)
			printf("  %-18s %8zu %8zu %8zu %10zu %6zu %11zu\n",
			       qw_wgroup_name((qw_wgroup)g), c->expected, c->loaded, c->missing,
			       c->mismatched, c->extra, c->other_stage);
	}
}

static void print_report(const validate_args *a, const subject *s, const qw_weights *w,
			 const qw_wreport *rep, const qw_stage *sp, bool stray, bool ok)
{
	const qw_config *cfg = &s->cfg;
	if (a->json) {
		char *text = qw_wreport_json(rep, sp);
		json_t *o = text ? json_loads(text, 0, NULL) : NULL;
		if (o && a->min_vision_blocks)
			json_object_set_new(o, "vision_blocks", json_pack(
				"{s:i, s:i, s:i, s:i}", "stored", s->vision_stored, "config",
				s->vision_depth, "min", a->min_vision_blocks, "deepstack_mergers",
				cfg->vision.n_deepstack));
		char *out = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
		printf("%s\n", out ? out : "{}");
		free(out);
		json_decref(o);
		free(text);
		return;
	}
	char b[32];
	printf("# %s%s: %s, %s experts, %zu file%s, %zu tensors\n", s->label,
	       a->manifest ? " (manifest: headers only)" : "", cfg->model_type,
	       cfg->is_moe ? (w->expert_layout == QW_EXPERTS_FUSED ? "fused" : "per-module") : "no",
	       s->ck->n_files, s->ck->n_files == 1 ? "" : "s", s->ck->n_tensors);
	if (a->manifest && cfg->quant.kind == QW_QUANT_FP8)
		printf("# FP8 scales: presence, shapes and dtypes checked; values need the "
		       "weights\n");
	if (a->min_vision_blocks)
		printf("# vision tower: %d of %d blocks stored (at least %d asked), so %d deepstack "
		       "merger%s expected\n", s->vision_stored, s->vision_depth,
		       a->min_vision_blocks, cfg->vision.n_deepstack,
		       cfg->vision.n_deepstack == 1 ? "" : "s");
	if (sp)
		printf("# stage %d/%d: decoder layers [%d, %d)%s%s\n", sp->index, sp->count,
		       sp->layer_begin, sp->layer_end, sp->index == 0 ? " + embeddings" : "",
		       sp->index == sp->count - 1 ? " + head" : "");
	printf("loaded %zu (%s)  missing %zu  mismatched %zu  extra %zu  other_stage %zu\n",
	       rep->loaded, qw_fmt_bytes(rep->loaded_bytes, b, sizeof b), rep->missing,
	       rep->mismatched, rep->extra, rep->other_stage);
	print_parts(rep);
	print_list("missing", rep->missing_names, rep->missing);
	print_list("mismatched", rep->mismatched_desc, rep->mismatched);
	print_list("extra", rep->extra_names, rep->extra);
	if (stray)
		printf("deepstack mergers are stored for vision blocks this partial tower lacks "
		       "(listed as extra)\n");
	printf("%s\n", ok ? "OK" : "FAILED");
}

int ckpt_validate(int argc, char **argv)
{
	validate_args a;
	int rc = parse_args(argc, argv, &a);
	if (rc != CKPT_OK)
		return rc < 0 ? CKPT_OK : rc;
	subject s;
	if ((rc = subject_open(&a, &s)) != CKPT_OK)
		return rc;
	qw_stage stage, *sp = NULL;
	if ((rc = cut_vision(&a, &s)) == CKPT_OK && a.stage_count &&
	    (rc = plan_stage(&a, &s, &stage)) == CKPT_OK)
		sp = &stage;
	if (rc != CKPT_OK) {
		subject_close(&s);
		return rc;
	}
	qw_weights w;
	qw_wreport rep;
	qw_err err = {0};
	qw_status st = qw_weights_load(&s.cfg, s.ck, sp, &w, &rep, &err);
	if (st != QW_OK && st != QW_E_WEIGHTS) {
		fprintf(stderr, "qwen-ckpt validate: %s\n", err.msg);
		qw_wreport_free(&rep);
		qw_weights_free(&w);
		subject_close(&s);
		return CKPT_FAILED;
	}
	/* a partial tower's mergers must be those of the blocks it keeps */
	bool stray = a.min_vision_blocks && rep.parts[QW_GROUP_DEEPSTACK].extra;
	bool ok = st == QW_OK && !stray;
	print_report(&a, &s, &w, &rep, sp, stray, ok);
	qw_wreport_free(&rep);
	qw_weights_free(&w);
	subject_close(&s);
	return ok ? CKPT_OK : CKPT_FAILED;
}

// ---------------------------------------------------------------------------------------
// manifest

int ckpt_manifest(int argc, char **argv)
{
	static const char usage[] =
		"usage: qwen-ckpt manifest DIR > MANIFEST.json\n"
		"  The names, shapes, dtypes and byte ranges of every tensor of the checkpoint in\n"
		"  DIR (its files' headers; no tensor data is read), its config.json and its files,\n"
		"  as one JSON object that `qwen-ckpt validate --manifest` checks like DIR itself.\n";
	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		fputs(usage, stdout);
		return CKPT_OK;
	}
	if (argc != 2 || argv[1][0] == '-') {
		fputs(usage, stderr);
		return CKPT_USAGE;
	}
	const char *dir = argv[1];
	char path[4096];
	snprintf(path, sizeof path, "%s/config.json", dir);
	size_t len;
	char *config = qw_read_text(path, &len);
	if (!config) {
		fprintf(stderr, "qwen-ckpt manifest: %s: cannot open: %s\nHINT: a manifest carries "
			"the model's config.json; DIR must hold it beside the weights\n", path,
			strerror(errno));
		return CKPT_FAILED;
	}
	qw_err err = {0};
	qw_checkpoint *ck = NULL;
	char *out = NULL;
	qw_status st = qw_ckpt_open(dir, &ck, &err);
	if (st == QW_OK)
		st = qw_manifest_write(ck, config, dir, &out, &err);
	if (st == QW_OK)
		printf("%s\n", out);
	else
		fprintf(stderr, "qwen-ckpt manifest: %s%s%s\n", st == QW_E_CONFIG ? path : "",
			st == QW_E_CONFIG ? ": " : "", err.msg);
	free(out);
	free(config);
	qw_ckpt_close(ck);
	return st == QW_OK ? CKPT_OK : CKPT_FAILED;
}
