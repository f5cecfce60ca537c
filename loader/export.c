/* export.c - reduced models with deterministic random weights.  See export.h. */
#include "loader/export.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader/checkpoint.h"
#include "loader/config.h"
#include "loader/st_writer.h"

void qw_export_opts_default(qw_export_opts *o)
{
	memset(o, 0, sizeof *o);
	for (int i = 0; i < QW_EXPORT_OV_COUNT; i++)
		o->ov[i] = -1;
	o->shards = 1;
}

// ---------------------------------------------------------------------------------------
// the config

static void set_int(json_t *obj, const char *key, long long v)
{
	json_object_set_new(obj, key, json_integer(v));
}

static long long get_int(json_t *obj, const char *key, long long def)
{
	json_t *v = json_object_get(obj, key);
	return json_is_integer(v) ? json_integer_value(v) : def;
}

/* The object holding mrope_section (rope_parameters or rope_scaling), or NULL. */
static json_t *rope_object(json_t *text)
{
	json_t *rp = json_object_get(text, "rope_parameters");
	if (!json_is_object(rp))
		rp = json_object_get(text, "rope_scaling");
	return json_is_object(rp) ? rp : NULL;
}

static void rescale_mrope(json_t *text, long long head_dim)
{
	json_t *rp = rope_object(text);
	json_t *sec = rp ? json_object_get(rp, "mrope_section") : NULL;
	if (!json_is_array(sec) || json_array_size(sec) != 3)
		return;
	long long old[3], sum = 0, half = head_dim / 2, got = 0, v[3];
	for (int i = 0; i < 3; i++)
		sum += old[i] = json_integer_value(json_array_get(sec, (size_t)i));
	for (int i = 1; i < 3; i++)
		got += v[i] = sum ? old[i] * half / sum : 0;
	v[0] = half - got;                      /* rounding goes to the temporal axis */
	for (int i = 0; i < 3; i++)
		json_array_set_new(sec, (size_t)i, json_integer(v[i]));
}

static void apply_vocab(json_t *root, json_t *text, long long V)
{
	set_int(text, "vocab_size", V);
	static const char *const ids[] = {"bos_token_id", "eos_token_id", "vision_start_token_id",
					  "vision_end_token_id", "image_token_id", "video_token_id"};
	for (int i = 0; i < 6; i++) {
		json_t *holder = i < 2 ? text : root;
		json_t *v = json_object_get(holder, ids[i]);
		bool outside = json_is_integer(v) && json_integer_value(v) >= V;
		if (json_is_array(v)) {
			size_t k;
			json_t *e;
			json_array_foreach(v, k, e) outside |= json_integer_value(e) >= V;
		}
		if (outside)
			set_int(holder, ids[i], V - 6 + i);
	}
}

static void apply_vision_depth(json_t *vis, long long depth)
{
	long long old = get_int(vis, "depth", depth);
	set_int(vis, "depth", depth);
	json_t *ds = json_object_get(vis, "deepstack_visual_indexes");
	if (!json_is_array(ds))
		return;
	json_t *mapped = json_array();
	long long prev = -1;
	size_t k;
	json_t *e;
	json_array_foreach(ds, k, e) {
		long long idx = json_integer_value(e) * depth / (old ? old : 1);
		if (idx >= depth)
			idx = depth - 1;
		if (idx > prev)
			json_array_append_new(mapped, json_integer(prev = idx));
	}
	json_object_set_new(vis, "deepstack_visual_indexes", mapped);
}

static void apply_vision_hidden(json_t *vis, long long hidden)
{
	long long old = get_int(vis, "hidden_size", hidden);
	long long inter = get_int(vis, "intermediate_size", 4 * hidden);
	long long heads = get_int(vis, "num_heads", 1);
	set_int(vis, "hidden_size", hidden);
	set_int(vis, "intermediate_size", inter * hidden / (old ? old : 1) > 0
						  ? inter * hidden / (old ? old : 1) : 1);
	while (heads > 1 && (hidden % heads != 0 || (hidden / heads) % 4 != 0))
		heads--;
	set_int(vis, "num_heads", heads);
}

static void apply_layers(json_t *text, long long layers)
{
	set_int(text, "num_hidden_layers", layers);
	json_t *only = json_object_get(text, "mlp_only_layers");
	if (!json_is_array(only))
		return;
	json_t *kept = json_array();
	size_t k;
	json_t *e;
	json_array_foreach(only, k, e) if (json_integer_value(e) < layers)
		json_array_append(kept, e);
	json_object_set_new(text, "mlp_only_layers", kept);
}

/* Applies the overrides to root in place (after the input config validated). */
static void apply_overrides(json_t *root, bool vision, const int64_t *ov)
{
	json_t *text = vision ? json_object_get(root, "text_config") : root;
	json_t *vis = vision ? json_object_get(root, "vision_config") : NULL;
	if (ov[QW_EXPORT_OV_LAYERS] >= 0)
		apply_layers(text, ov[QW_EXPORT_OV_LAYERS]);
	if (ov[QW_EXPORT_OV_VOCAB] >= 0)
		apply_vocab(root, text, ov[QW_EXPORT_OV_VOCAB]);
	if (ov[QW_EXPORT_OV_HIDDEN] >= 0) {
		set_int(text, "hidden_size", ov[QW_EXPORT_OV_HIDDEN]);
		if (vis)
			set_int(vis, "out_hidden_size", ov[QW_EXPORT_OV_HIDDEN]);
	}
	if (ov[QW_EXPORT_OV_HEADS] >= 0)
		set_int(text, "num_attention_heads", ov[QW_EXPORT_OV_HEADS]);
	if (ov[QW_EXPORT_OV_KV_HEADS] >= 0)
		set_int(text, "num_key_value_heads", ov[QW_EXPORT_OV_KV_HEADS]);
	if (ov[QW_EXPORT_OV_HEAD_DIM] >= 0) {
		set_int(text, "head_dim", ov[QW_EXPORT_OV_HEAD_DIM]);
		rescale_mrope(text, ov[QW_EXPORT_OV_HEAD_DIM]);
	}
	if (ov[QW_EXPORT_OV_INTER] >= 0)
		set_int(text, "intermediate_size", ov[QW_EXPORT_OV_INTER]);
	if (ov[QW_EXPORT_OV_MOE_INTER] >= 0)
		set_int(text, "moe_intermediate_size", ov[QW_EXPORT_OV_MOE_INTER]);
	if (ov[QW_EXPORT_OV_EXPERTS] >= 0) {
		bool v5 = json_object_get(text, "num_local_experts") != NULL;
		bool hub = json_object_get(text, "num_experts") != NULL;
		if (v5)
			set_int(text, "num_local_experts", ov[QW_EXPORT_OV_EXPERTS]);
		if (hub || !v5)
			set_int(text, "num_experts", ov[QW_EXPORT_OV_EXPERTS]);
	}
	if (ov[QW_EXPORT_OV_TOP_K] >= 0)
		set_int(text, "num_experts_per_tok", ov[QW_EXPORT_OV_TOP_K]);
	if (vis && ov[QW_EXPORT_OV_VISION_DEPTH] >= 0)
		apply_vision_depth(vis, ov[QW_EXPORT_OV_VISION_DEPTH]);
	if (vis && ov[QW_EXPORT_OV_VISION_HIDDEN] >= 0)
		apply_vision_hidden(vis, ov[QW_EXPORT_OV_VISION_HIDDEN]);
}

/* Qwen's FP8 quantization_config.  modules_to_not_convert names the Linear modules left in
 * bf16 the way transformers matches them (by trailing module names), so the vision tower's
 * are listed one by one, as the published FP8 checkpoints do. */
static qw_status add_fp8_config(json_t *root, const qw_config *in_cfg, qw_err *err)
{
	json_t *skip = json_pack("[s, s, s]", "lm_head", "embed_tokens", "mlp.gate");
	if (in_cfg->has_vision) {
		char *text = json_dumps(root, 0);
		qw_config cfg;
		qw_wspec *specs = NULL;
		size_t n = 0;
		qw_status st = QW_E_NOMEM;
		if (!text)
			qw_fail(err, st, "out of memory");
		else if ((st = qw_config_parse(text, strlen(text), "config", &cfg, err)) == QW_OK)
			st = qw_wmap_build(&cfg, QW_EXPERTS_FUSED, NULL, &specs, &n, err);
		if (st != QW_OK) {
			free(text);
			json_decref(skip);
			return st;
		}
		for (size_t i = 0; i < n; i++) {
			size_t len = strlen(specs[i].name);
			bool linear = strstr(specs[i].name, "linear_fc") || strstr(specs[i].name, ".attn.");
			if (specs[i].part == QW_PART_VISION && specs[i].ndim == 2 && len > 7 &&
			    !strcmp(specs[i].name + len - 7, ".weight") && linear)
				json_array_append_new(skip, json_stringn(specs[i].name, len - 7));
		}
		free(specs);
		free(text);
	}
	json_object_set_new(root, "quantization_config", json_pack(
		"{s:s, s:s, s:s, s:[i, i], s:o}", "quant_method", "fp8", "fmt", "e4m3",
		"activation_scheme", "dynamic", "weight_block_size", 128, 128,
		"modules_to_not_convert", skip));
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// the random values

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double uniform01(uint64_t *s)
{
	return ((double)(splitmix64(s) >> 11) + 0.5) * 0x1.0p-53;   /* in (0, 1) */
}

uint64_t qw_export_stream_start(uint64_t seed, const char *name)
{
	uint64_t h = 0xcbf29ce484222325ull;            /* FNV-1a of the name */
	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 0x100000001b3ull;
	return seed ^ h;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && strcmp(s + n - k, suffix) == 0;
}

void qw_export_value_dist(const qw_wspec *s, double *mean, double *std)
{
	*mean = 0.0;
	if (strstr(s->name, "norm") && ends_with(s->name, ".weight")) {
		*mean = 1.0;
		*std = 0.1;
	} else if (ends_with(s->name, ".bias")) {
		*std = 0.02;
	} else if (strstr(s->name, "embed_tokens")) {
		*std = 1.0;
	} else if (strstr(s->name, "pos_embed")) {
		*std = 0.5;
	} else {
		/* [out, in...] linear or conv; fused experts [E, in, out] */
		uint64_t fan_in = 1;
		if (s->experts && s->ndim == 3)
			fan_in = (uint64_t)s->shape[1];
		else
			for (int i = 1; i < s->ndim; i++)
				fan_in *= (uint64_t)s->shape[i];
		*std = 1.0 / sqrt((double)fan_in);
	}
}

void qw_export_random_values(const qw_wspec *s, uint64_t seed, float *out)
{
	uint64_t state = qw_export_stream_start(seed, s->name);
	double mean, std;
	qw_export_value_dist(s, &mean, &std);
	for (uint64_t i = 0; i < s->numel; i += 2) {      /* Box-Muller: two normals per draw */
		double r = sqrt(-2.0 * log(uniform01(&state))), a = 2.0 * M_PI * uniform01(&state);
		out[i] = qw_bf16_to_f32(qw_f32_to_bf16((float)(mean + std * r * cos(a))));
		if (i + 1 < s->numel)
			out[i + 1] = qw_bf16_to_f32(qw_f32_to_bf16((float)(mean + std * r * sin(a))));
	}
}

void qw_export_quantize_fp8(const qw_wspec *w, const qw_quant *q, const float *v, uint8_t *qout,
			    float *scales)
{
	int nd = w->ndim;
	uint64_t R = (uint64_t)w->shape[nd - 2], C = (uint64_t)w->shape[nd - 1];
	uint64_t br = (uint64_t)q->block[0], bc = (uint64_t)q->block[1];
	uint64_t SR = (R + br - 1) / br, SC = (C + bc - 1) / bc, M = w->numel / (R * C);
	for (uint64_t m = 0; m < M; m++)
		for (uint64_t sr = 0; sr < SR; sr++)
			for (uint64_t sc = 0; sc < SC; sc++) {
				float amax = 0.0f;
				for (uint64_t r = sr * br; r < R && r < (sr + 1) * br; r++)
					for (uint64_t c = sc * bc; c < C && c < (sc + 1) * bc; c++)
						amax = fmaxf(amax, fabsf(v[(m * R + r) * C + c]));
				float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
				if (scales)
					scales[(m * SR + sr) * SC + sc] = scale;
				for (uint64_t r = sr * br; qout && r < R && r < (sr + 1) * br; r++)
					for (uint64_t c = sc * bc; c < C && c < (sc + 1) * bc; c++)
						qout[(m * R + r) * C + c] =
							qw_f32_to_f8e4m3(v[(m * R + r) * C + c] / scale);
			}
}

// ---------------------------------------------------------------------------------------
// the files

typedef struct fill_ctx {
	const qw_wspec *specs;   /* the whole list, in file order */
	size_t base;             /* index of the file's first tensor in specs */
	uint64_t seed;           /* the random streams' seed */
	const qw_quant *quant;   /* FP8: quantizable weights quantized, scales written; or NULL */
} fill_ctx;

static qw_status fill_random(void *vctx, size_t index, void *buf, uint64_t nbytes, qw_err *err)
{
	const fill_ctx *ctx = vctx;
	size_t at = ctx->base + index;
	const qw_wspec *s = &ctx->specs[at];
	const qw_wspec *w = s->is_scale ? &ctx->specs[at - 1] : s;   /* a scale follows its weight */
	float *v = malloc(w->numel * sizeof *v + 1);
	if (!v)
		return qw_fail(err, QW_E_NOMEM, "out of memory generating %s", s->name);
	qw_export_random_values(w, ctx->seed, v);
	if (s->is_scale)
		qw_export_quantize_fp8(w, ctx->quant, v, NULL, buf);
	else if (ctx->quant && s->quantizable)
		qw_export_quantize_fp8(w, ctx->quant, v, buf, NULL);
	else
		for (uint64_t i = 0; i < nbytes / 2; i++)
			((uint16_t *)buf)[i] = qw_f32_to_bf16(v[i]);
	free(v);
	return QW_OK;
}

/* Writes o as indented JSON to path (through path.tmp, synced, renamed). */
static qw_status write_json_file(const char *path, json_t *o, qw_err *err)
{
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	bool ok = f && json_dumpf(o, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 &&
		  fflush(f) == 0 && fsync(fileno(f)) == 0;
	int saved = errno;
	if (f && fclose(f) != 0 && ok) {
		ok = false;
		saved = errno;
	}
	if (ok && rename(tmp, path) != 0) {
		ok = false;
		saved = errno;
	}
	if (!ok) {
		unlink(tmp);
		return qw_fail(err, QW_E_IO, "cannot write %s: %s", path, strerror(saved));
	}
	return QW_OK;
}

/* Writes specs into `shards` files (one: model.safetensors), balanced by bytes; with quant,
 * quantizable weights as FP8 with their block scales.  *total gets the data bytes. */
static qw_status write_weights(const char *out, const qw_wspec *specs, size_t n, int shards,
			       uint64_t seed, const qw_quant *quant, uint64_t *total, qw_err *err)
{
	qw_st_entry *entries = calloc(n, sizeof *entries);
	if (!entries)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	*total = 0;
	for (size_t i = 0; i < n; i++) {
		qw_dtype dt = specs[i].is_scale ? QW_DT_F32
			    : quant && specs[i].quantizable ? QW_DT_F8_E4M3 : QW_DT_BF16;
		entries[i] = (qw_st_entry){.name = specs[i].name, .dtype = dt, .ndim = specs[i].ndim};
		memcpy(entries[i].shape, specs[i].shape, sizeof specs[i].shape);
		*total += qw_st_entry_bytes(&entries[i]);
	}
	json_t *weight_map = json_object();
	char path[4200], stale[4200];
	qw_status st = QW_OK;
	size_t begin = 0;
	uint64_t done = 0;
	for (int k = 0; k < shards && st == QW_OK; k++) {
		/* shard k ends where the running total passes (k+1)/shards of the bytes, leaving
		 * at least one tensor for each later shard */
		size_t end = begin + 1;
		done += qw_st_entry_bytes(&entries[begin]);
		while (end < n - (size_t)(shards - 1 - k) &&
		       (k == shards - 1 || done < *total / (uint64_t)shards * (uint64_t)(k + 1)))
			done += qw_st_entry_bytes(&entries[end++]);
		char name[64];
		if (shards == 1)
			snprintf(name, sizeof name, "%s", QW_ST_SINGLE);
		else
			snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, shards);
		snprintf(path, sizeof path, "%s/%s", out, name);
		fill_ctx ctx = {specs, begin, seed, quant};
		st = qw_st_write(path, entries + begin, end - begin, fill_random, &ctx, err);
		for (size_t i = begin; i < end; i++)
			json_object_set_new(weight_map, entries[i].name, json_string(name));
		begin = end;
	}
	/* a stale file of the other layout would shadow or confuse the new one */
	snprintf(stale, sizeof stale, "%s/%s", out, shards == 1 ? QW_ST_INDEX : QW_ST_SINGLE);
	unlink(stale);
	if (st == QW_OK && shards > 1) {
		json_t *index = json_pack("{s:{s:I}, s:O}", "metadata", "total_size",
					  (json_int_t)*total, "weight_map", weight_map);
		snprintf(path, sizeof path, "%s/%s", out, QW_ST_INDEX);
		st = write_json_file(path, index, err);
		json_decref(index);
	}
	json_decref(weight_map);
	free(entries);
	return st;
}

/* mkdir -p: 0, or -1 with errno set. */
static int mkdir_p(const char *path)
{
	char buf[4096];
	if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			if (mkdir(buf, 0755) != 0 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

// ---------------------------------------------------------------------------------------

static const char *const ov_names[QW_EXPORT_OV_COUNT] = {
	"num_hidden_layers", "vocab_size", "hidden_size", "num_attention_heads",
	"num_key_value_heads", "head_dim", "intermediate_size", "moe_intermediate_size",
	"num_experts", "num_experts_per_tok", "vision depth", "vision hidden_size"};

static qw_status check_opts(const qw_export_opts *o, qw_err *err)
{
	for (int i = 0; i < QW_EXPORT_OV_COUNT; i++)
		if (o->ov[i] != -1 && (o->ov[i] < 1 || o->ov[i] > QW_EXPORT_OV_MAX))
			return qw_fail(err, QW_E_ARG, "export override of %s: %lld is not in [1, %d] "
				       "(-1 keeps the config's)", ov_names[i], (long long)o->ov[i],
				       QW_EXPORT_OV_MAX);
	if (o->shards < 1)
		return qw_fail(err, QW_E_ARG, "export: %d shards; at least 1", o->shards);
	return QW_OK;
}

/* The output config (overrides applied, fp8 added) into *root and *cfg. */
static qw_status reduced_config(const char *config_text, size_t len, const char *label,
				const qw_export_opts *o, json_t **root, qw_config *cfg, qw_err *err)
{
	qw_config in_cfg;
	qw_status st = qw_config_parse(config_text, len, label, &in_cfg, err);
	if (st != QW_OK)
		return st;
	json_error_t jerr;
	*root = json_loadb(config_text, len, 0, &jerr);
	if (!*root)
		return qw_fail(err, QW_E_NOMEM, "%s: out of memory", label);
	apply_overrides(*root, in_cfg.has_vision, o->ov);
	if (o->fp8 && (st = add_fp8_config(*root, &in_cfg, err)) != QW_OK)
		return st;
	char *text = json_dumps(*root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (!text)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	qw_err perr = {0};
	st = qw_config_parse(text, strlen(text), "config after overrides", cfg, &perr);
	free(text);
	if (st != QW_OK)
		return qw_fail(err, QW_E_ARG, "%s", perr.msg);

	/* transformers v5 transposes hub-layout fused experts only when their shape differs
	 * from its own (Transpose check_dims): a square matrix would be loaded untransposed */
	const qw_text_config *t = &cfg->text;
	if (cfg->arch == QW_ARCH_QWEN3_VL_MOE &&
	    (t->hidden_size == 2 * t->moe_intermediate_size ||
	     t->hidden_size == t->moe_intermediate_size))
		return qw_fail(err, QW_E_ARG, "hidden_size %d with moe_intermediate_size %d makes "
			       "the fused expert matrices square, and transformers then loads them "
			       "untransposed (it cannot tell the hub layout from its own)\nHINT: pick "
			       "another --override-moe-intermediate", t->hidden_size,
			       t->moe_intermediate_size);
	return QW_OK;
}

qw_status qw_export_reduced(const char *config_text, size_t len, const char *label,
			    const qw_export_opts *o, const char *out_dir, qw_export_summary *sum,
			    qw_err *err)
{
	qw_status st = check_opts(o, err);
	if (st != QW_OK)
		return st;
	json_t *root = NULL;
	qw_config cfg;
	qw_wspec *specs = NULL;
	size_t n = 0;
	uint64_t bytes = 0;
	if ((st = reduced_config(config_text, len, label, o, &root, &cfg, err)) != QW_OK)
		goto out;
	qw_expert_layout layout = cfg.arch == QW_ARCH_QWEN3_MOE ? QW_EXPERTS_PER_EXPERT
								: QW_EXPERTS_FUSED;
	if ((st = qw_wmap_build(&cfg, layout, NULL, &specs, &n, err)) != QW_OK)
		goto out;
	if ((size_t)o->shards > n) {
		st = qw_fail(err, QW_E_ARG, "--shards %d: the model has only %zu tensors", o->shards,
			     n);
		goto out;
	}
	if (mkdir_p(out_dir) != 0) {
		st = qw_fail(err, QW_E_IO, "cannot create %s: %s", out_dir, strerror(errno));
		goto out;
	}
	st = write_weights(out_dir, specs, n, o->shards, o->seed,
			   cfg.quant.kind == QW_QUANT_FP8 ? &cfg.quant : NULL, &bytes, err);
	if (st == QW_OK) {
		char path[4200];
		snprintf(path, sizeof path, "%s/config.json", out_dir);
		st = write_json_file(path, root, err);     /* last: a dir with a config is complete */
	}
	if (st == QW_OK && sum) {
		memset(sum, 0, sizeof *sum);
		snprintf(sum->model_type, sizeof sum->model_type, "%s", cfg.model_type);
		sum->n_tensors = n;
		sum->bytes = bytes;
		sum->shards = o->shards;
	}
out:
	free(specs);
	json_decref(root);
	return st;
}
