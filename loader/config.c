/* config.c - parse and validate an HF config.json.  See config.h. */
#include "loader/config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Where values are read from, for error messages: "config.json: text_config.head_dim". */
typedef struct reader {
	const char *label;     /* the file */
	const char *section;   /* "text_config." / "vision_config." / "" */
	json_t *obj;
	qw_err *err;
} reader;

static json_t *get(const reader *r, const char *key)
{
	json_t *v = json_object_get(r->obj, key);
	return json_is_null(v) ? NULL : v;    /* null means "not stated" */
}

static qw_status bad(const reader *r, const char *key, const char *what)
{
	return qw_fail(r->err, QW_E_CONFIG, "%s: %s%s %s", r->label, r->section, key, what);
}

/* Reads an integer in [lo, hi]; absent gives def, or an error when def < lo. */
static qw_status read_int(const reader *r, const char *key, long long def, long long lo,
			  long long hi, int *out)
{
	json_t *v = get(r, key);
	long long x = def;
	if (v) {
		if (!json_is_integer(v))
			return bad(r, key, "must be an integer");
		x = json_integer_value(v);
	} else if (def < lo) {
		return bad(r, key, "is required but missing");
	}
	if (x < lo || x > hi) {
		char what[128];
		snprintf(what, sizeof what, "is %lld, must be in [%lld, %lld]", x, lo, hi);
		return bad(r, key, what);
	}
	*out = (int)x;
	return QW_OK;
}

/* Like read_int, for a value with two spellings (hub, v5); both given must agree. */
static qw_status read_int2(const reader *r, const char *key, const char *key2, long long def,
			   long long lo, long long hi, int *out)
{
	if (get(r, key) && get(r, key2)) {
		int a, b;
		qw_status st = read_int(r, key, def, lo, hi, &a);
		if (st == QW_OK)
			st = read_int(r, key2, def, lo, hi, &b);
		if (st == QW_OK && a != b)
			return bad(r, key, "disagrees with its other spelling in the same config");
		*out = a;
		return st;
	}
	return read_int(r, get(r, key2) ? key2 : key, def, lo, hi, out);
}

static qw_status read_double(const reader *r, const char *key, double def, double *out)
{
	json_t *v = get(r, key);
	if (!v) {
		if (isnan(def))
			return bad(r, key, "is required but missing");
		*out = def;
		return QW_OK;
	}
	if (!json_is_number(v))
		return bad(r, key, "must be a number");
	*out = json_number_value(v);
	if (!(*out > 0) || !isfinite(*out))
		return bad(r, key, "must be a finite number > 0");
	return QW_OK;
}

static qw_status read_bool(const reader *r, const char *key, bool def, bool *out)
{
	json_t *v = get(r, key);
	if (!v) {
		*out = def;
		return QW_OK;
	}
	if (!json_is_boolean(v))
		return bad(r, key, "must be true or false");
	*out = json_is_true(v);
	return QW_OK;
}

/* Checks an optional string field against the one value this implementation computes. */
static qw_status expect_string(const reader *r, const char *key, const char *want)
{
	json_t *v = get(r, key);
	if (!v)
		return QW_OK;
	if (!json_is_string(v))
		return bad(r, key, "must be a string");
	if (strcmp(json_string_value(v), want) != 0) {
		char what[160];
		snprintf(what, sizeof what, "is '%s'; only '%s' is supported", json_string_value(v),
			 want);
		return bad(r, key, what);
	}
	return QW_OK;
}

/* Reads an array of ints in [lo, hi] into out[0..*n) (at most cap). */
static qw_status read_int_list(const reader *r, const char *key, int lo, int hi, int *out,
			       int cap, int *n)
{
	json_t *v = get(r, key);
	*n = 0;
	if (!v)
		return QW_OK;
	json_t *one = NULL;
	if (json_is_integer(v))            /* eos_token_id may be a single id */
		v = one = json_pack("[O]", v);
	if (!json_is_array(v))
		return bad(r, key, "must be an array of integers");
	if ((int)json_array_size(v) > cap) {
		char what[64];
		snprintf(what, sizeof what, "has more than %d entries", cap);
		return bad(r, key, what);
	}
	size_t i;
	json_t *e;
	json_array_foreach(v, i, e) {
		if (!json_is_integer(e) || json_integer_value(e) < lo || json_integer_value(e) > hi) {
			char what[128];
			snprintf(what, sizeof what, "[%zu] must be an integer in [%d, %d]", i, lo, hi);
			json_decref(one);
			return bad(r, key, what);
		}
		out[(*n)++] = (int)json_integer_value(e);
	}
	json_decref(one);
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// text

static qw_status read_rope(const reader *r, qw_text_config *t, bool multimodal)
{
	json_t *rp = get(r, "rope_parameters");
	const char *rp_key = "rope_parameters";
	if (!rp) {
		rp = get(r, "rope_scaling");
		rp_key = "rope_scaling";
	}
	if (rp && !json_is_object(rp))
		return bad(r, rp_key, "must be an object");
	char section[64];
	snprintf(section, sizeof section, "%s%s.", r->section, rp_key);
	reader rr = {r->label, section, rp, r->err};

	if (rp && get(&rr, "rope_theta"))
		QW_TRY(read_double(&rr, "rope_theta", NAN, &t->rope_theta));
	else
		QW_TRY(read_double(r, "rope_theta", NAN, &t->rope_theta));
	if (rp) {
		QW_TRY(expect_string(&rr, get(&rr, "rope_type") ? "rope_type" : "type", "default"));
		QW_TRY(read_bool(&rr, "mrope_interleaved", multimodal, &t->mrope_interleaved));
	}
	int half = t->head_dim / 2, n = 0;
	if (!multimodal) {
		t->mrope_section[0] = half;
		return QW_OK;
	}
	if (rp && get(&rr, "mrope_section")) {
		QW_TRY(read_int_list(&rr, "mrope_section", 0, half, t->mrope_section, 3, &n));
		if (n != 3)
			return bad(&rr, "mrope_section", "must have 3 entries (t, h, w)");
	} else {
		memcpy(t->mrope_section, (int[3]){24, 20, 20}, sizeof t->mrope_section);
	}
	if (t->mrope_section[0] + t->mrope_section[1] + t->mrope_section[2] != half) {
		char what[160];
		snprintf(what, sizeof what, "[%d, %d, %d] sums to %d, must sum to head_dim/2 = %d",
			 t->mrope_section[0], t->mrope_section[1], t->mrope_section[2],
			 t->mrope_section[0] + t->mrope_section[1] + t->mrope_section[2], half);
		return bad(&rr, "mrope_section", what);
	}
	return QW_OK;
}

static qw_status read_text(const reader *r, qw_config *cfg)
{
	qw_text_config *t = &cfg->text;
	const int big = 1 << 30;
	QW_TRY(read_int(r, "vocab_size", -1, 1, big, &t->vocab_size));
	QW_TRY(read_int(r, "hidden_size", -1, 1, big, &t->hidden_size));
	QW_TRY(read_int(r, "num_hidden_layers", -1, 1, QW_MAX_LAYERS, &t->num_layers));
	QW_TRY(read_int(r, "num_attention_heads", -1, 1, 4096, &t->num_heads));
	QW_TRY(read_int(r, "num_key_value_heads", t->num_heads, 1, 4096, &t->num_kv_heads));
	if (t->num_heads % t->num_kv_heads != 0) {
		char what[160];
		snprintf(what, sizeof what, "is %d, which does not divide num_attention_heads = %d",
			 t->num_kv_heads, t->num_heads);
		return bad(r, "num_key_value_heads", what);
	}
	if (!get(r, "head_dim") && t->hidden_size % t->num_heads != 0)
		return bad(r, "head_dim", "is missing and hidden_size is not a multiple of "
			   "num_attention_heads");
	QW_TRY(read_int(r, "head_dim", t->hidden_size / t->num_heads, 2, 4096, &t->head_dim));
	if (t->head_dim % 2 != 0)
		return bad(r, "head_dim", "must be even (rotary pairs)");
	QW_TRY(read_double(r, "rms_norm_eps", 1e-6, &t->rms_norm_eps));
	QW_TRY(read_bool(r, "attention_bias", false, &t->attention_bias));
	QW_TRY(read_int(r, "max_position_embeddings", 0, 0, big, &t->max_position_embeddings));
	QW_TRY(expect_string(r, "hidden_act", "silu"));
	bool sliding = false;
	QW_TRY(read_bool(r, "use_sliding_window", false, &sliding));
	if (sliding)
		return bad(r, "use_sliding_window", "is true; sliding-window attention is not "
			   "supported");
	QW_TRY(read_rope(r, t, cfg->has_vision));

	QW_TRY(read_int(r, "bos_token_id", -1, -1, t->vocab_size - 1, &t->bos_token_id));
	QW_TRY(read_int_list(r, "eos_token_id", 0, t->vocab_size - 1, t->eos_token_ids, QW_MAX_EOS,
			     &t->n_eos));

	int n_dense = t->num_layers;
	if (cfg->is_moe) {
		QW_TRY(read_int2(r, "num_experts", "num_local_experts", -1, 1, 1 << 16,
			         &t->num_experts));
		QW_TRY(read_int(r, "num_experts_per_tok", -1, 1, 1 << 16, &t->num_experts_per_tok));
		if (t->num_experts_per_tok > t->num_experts) {
			char what[160];
			snprintf(what, sizeof what, "is %d, more than the %d experts",
				 t->num_experts_per_tok, t->num_experts);
			return bad(r, "num_experts_per_tok", what);
		}
		QW_TRY(read_int(r, "moe_intermediate_size", -1, 1, big, &t->moe_intermediate_size));
		QW_TRY(read_int(r, "decoder_sparse_step", 1, 1, QW_MAX_LAYERS, &t->decoder_sparse_step));
		QW_TRY(read_bool(r, "norm_topk_prob", true, &t->norm_topk_prob));
		int only[QW_MAX_LAYERS], n_only = 0;
		QW_TRY(read_int_list(r, "mlp_only_layers", 0, t->num_layers - 1, only, QW_MAX_LAYERS,
				     &n_only));
		n_dense = 0;
		for (int L = 0; L < t->num_layers; L++)
			t->layer_dense[L] = (L + 1) % t->decoder_sparse_step != 0;
		for (int i = 0; i < n_only; i++)
			t->layer_dense[only[i]] = true;
		for (int L = 0; L < t->num_layers; L++)
			n_dense += t->layer_dense[L];
	} else {
		for (int L = 0; L < t->num_layers; L++)
			t->layer_dense[L] = true;
	}
	QW_TRY(read_int(r, "intermediate_size", n_dense ? -1 : 0, n_dense ? 1 : 0, big,
		        &t->intermediate_size));
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// vision

static qw_status read_vision(const reader *r, qw_config *cfg)
{
	qw_vision_config *v = &cfg->vision;
	const int big = 1 << 30;
	QW_TRY(read_int(r, "depth", -1, 1, 1024, &v->depth));
	QW_TRY(read_int(r, "hidden_size", -1, 1, big, &v->hidden_size));
	QW_TRY(read_int(r, "num_heads", -1, 1, 4096, &v->num_heads));
	if (v->hidden_size % v->num_heads != 0 || (v->hidden_size / v->num_heads) % 4 != 0)
		return bad(r, "num_heads", "must divide hidden_size into heads whose size is a "
			   "multiple of 4 (2-D rotary)");
	QW_TRY(read_int(r, "intermediate_size", -1, 1, big, &v->intermediate_size));
	QW_TRY(read_int(r, "in_channels", 3, 3, 3, &v->in_channels));
	QW_TRY(read_int(r, "patch_size", 16, 1, 1024, &v->patch_size));
	QW_TRY(read_int(r, "temporal_patch_size", 2, 1, 64, &v->temporal_patch_size));
	QW_TRY(read_int(r, "spatial_merge_size", 2, 1, 64, &v->spatial_merge_size));
	QW_TRY(read_int(r, "out_hidden_size", -1, 1, big, &v->out_hidden_size));
	if (v->out_hidden_size != cfg->text.hidden_size) {
		char what[128];
		snprintf(what, sizeof what, "is %d, must equal text hidden_size %d",
			 v->out_hidden_size, cfg->text.hidden_size);
		return bad(r, "out_hidden_size", what);
	}
	QW_TRY(read_int(r, "num_position_embeddings", 2304, 1, big, &v->num_position_embeddings));
	int g = (int)lround(sqrt((double)v->num_position_embeddings));
	if (g * g != v->num_position_embeddings)
		return bad(r, "num_position_embeddings", "must be a perfect square (a G x G grid)");
	QW_TRY(expect_string(r, "hidden_act", "gelu_pytorch_tanh"));
	QW_TRY(read_int_list(r, "deepstack_visual_indexes", 0, big, v->deepstack_indexes,
			     QW_MAX_DEEPSTACK, &v->n_deepstack));
	for (int i = 0; i < v->n_deepstack; i++) {
		char what[128];
		if (v->deepstack_indexes[i] >= v->depth) {
			snprintf(what, sizeof what, "[%d] = %d is not a block (depth is %d)", i,
				 v->deepstack_indexes[i], v->depth);
			return bad(r, "deepstack_visual_indexes", what);
		}
		if (i > 0 && v->deepstack_indexes[i] <= v->deepstack_indexes[i - 1]) {
			snprintf(what, sizeof what, "must be strictly increasing (entry %d)", i);
			return bad(r, "deepstack_visual_indexes", what);
		}
	}
	v->rope_theta = 10000.0;
	json_t *rp = get(r, "rope_parameters");
	if (rp && json_is_object(rp) && json_is_number(json_object_get(rp, "rope_theta")))
		v->rope_theta = json_number_value(json_object_get(rp, "rope_theta"));
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// the whole file

static const struct {
	const char *type;
	qw_arch arch;
	bool vision, moe;
} arch_table[] = {
	{"qwen3_vl_moe", QW_ARCH_QWEN3_VL_MOE, true, true},
	{"qwen3_vl", QW_ARCH_QWEN3_VL, true, false},
	{"qwen3_moe", QW_ARCH_QWEN3_MOE, false, true},
	{"qwen3", QW_ARCH_QWEN3, false, false},
};

const char *qw_arch_name(qw_arch arch)
{
	for (size_t i = 0; i < sizeof arch_table / sizeof *arch_table; i++)
		if (arch_table[i].arch == arch)
			return arch_table[i].type;
	return "unknown";
}

static qw_status read_dtype(const reader *r, json_t *text, qw_dtype *out)
{
	static const struct { const char *name; qw_dtype dt; } names[] = {
		{"bfloat16", QW_DT_BF16}, {"float16", QW_DT_F16}, {"float32", QW_DT_F32}};
	json_t *v = get(r, "dtype");
	const char *key = "dtype";
	if (!v && (v = get(r, "torch_dtype")))
		key = "torch_dtype";
	if (!v && text && (v = json_object_get(text, "dtype")) && json_is_null(v))
		v = NULL;
	*out = QW_DT_BF16;
	if (!v)
		return QW_OK;
	if (json_is_string(v))
		for (size_t i = 0; i < sizeof names / sizeof *names; i++)
			if (strcmp(json_string_value(v), names[i].name) == 0) {
				*out = names[i].dt;
				return QW_OK;
			}
	return bad(r, key, "must be one of bfloat16, float16, float32");
}

static qw_status read_quant(const reader *root, qw_config *cfg)
{
	json_t *q = get(root, "quantization_config");
	if (!q)
		return QW_OK;
	if (!json_is_object(q))
		return bad(root, "quantization_config", "must be an object");
	reader r = {root->label, "quantization_config.", q, root->err};
	const char *method = json_string_value(get(&r, "quant_method"));
	const char *algo = json_string_value(get(&r, "quant_algo"));
	if (method && strcmp(method, "fp8") == 0) {
		cfg->quant.kind = QW_QUANT_FP8;
		json_t *bs = get(&r, "weight_block_size");
		int block[2] = {128, 128}, n = 2;
		if (bs)
			QW_TRY(read_int_list(&r, "weight_block_size", 1, 1 << 16, block, 2, &n));
		if (n != 2)
			return bad(&r, "weight_block_size", "must be [rows, cols]");
		cfg->quant.block[0] = block[0];
		cfg->quant.block[1] = block[1];
		const char *fmt = json_string_value(get(&r, "fmt"));
		if (fmt && strcmp(fmt, "e4m3") != 0)
			return bad(&r, "fmt", "must be e4m3 (float8_e4m3fn)");
		return QW_OK;
	}
	if (method && strcmp(method, "modelopt") == 0 && algo && strcmp(algo, "NVFP4") == 0) {
		cfg->quant.kind = QW_QUANT_NVFP4;
		return QW_OK;
	}
	return bad(&r, "quant_method", "is not fp8 (block-scaled) or modelopt NVFP4");
}

static qw_status read_config(const reader *root, qw_config *cfg)
{
	json_t *mt = get(root, "model_type");
	if (!json_is_string(mt))
		return bad(root, "model_type", "is missing or not a string");
	const char *type = json_string_value(mt);
	size_t i, n = sizeof arch_table / sizeof *arch_table;
	for (i = 0; i < n && strcmp(type, arch_table[i].type) != 0; i++)
		;
	if (i == n) {
		char what[200];
		snprintf(what, sizeof what, "'%.64s' is not supported (expected qwen3_vl_moe, "
			 "qwen3_vl, qwen3_moe or qwen3)", type);
		return bad(root, "model_type", what);
	}
	cfg->arch = arch_table[i].arch;
	cfg->has_vision = arch_table[i].vision;
	cfg->is_moe = arch_table[i].moe;
	snprintf(cfg->model_type, sizeof cfg->model_type, "%s", type);

	reader text = *root;
	if (cfg->has_vision) {
		text.obj = get(root, "text_config");
		text.section = "text_config.";
		if (!json_is_object(text.obj))
			return bad(root, "text_config", "is missing or not an object");
	}
	QW_TRY(read_text(&text, cfg));
	QW_TRY(read_dtype(root, cfg->has_vision ? text.obj : NULL, &cfg->dtype));
	QW_TRY(read_quant(root, cfg));

	/* tie_word_embeddings: top level wins; text_config may repeat it, but not contradict */
	bool tie_top = false, tie_text = false;
	QW_TRY(read_bool(root, "tie_word_embeddings", false, &tie_top));
	cfg->tie_word_embeddings = tie_top;
	if (cfg->has_vision && get(&text, "tie_word_embeddings")) {
		QW_TRY(read_bool(&text, "tie_word_embeddings", false, &tie_text));
		if (!get(root, "tie_word_embeddings"))
			cfg->tie_word_embeddings = tie_text;
		else if (tie_text != tie_top)
			return bad(&text, "tie_word_embeddings", "contradicts the top-level "
				   "tie_word_embeddings");
	}
	if (!cfg->has_vision)
		return QW_OK;

	reader vis = {root->label, "vision_config.", get(root, "vision_config"), root->err};
	if (!json_is_object(vis.obj))
		return bad(root, "vision_config", "is missing or not an object");
	QW_TRY(read_vision(&vis, cfg));
	int last = cfg->text.vocab_size - 1;
	QW_TRY(read_int(root, "image_token_id", 151655, 0, last, &cfg->image_token_id));
	QW_TRY(read_int(root, "video_token_id", 151656, 0, last, &cfg->video_token_id));
	QW_TRY(read_int(root, "vision_start_token_id", 151652, 0, last, &cfg->vision_start_token_id));
	QW_TRY(read_int(root, "vision_end_token_id", 151653, 0, last, &cfg->vision_end_token_id));
	return QW_OK;
}

static qw_status parse_root(json_t *root, const json_error_t *jerr, const char *label,
			    qw_config *cfg, qw_err *err)
{
	memset(cfg, 0, sizeof *cfg);
	if (!root)
		return qw_fail(err, QW_E_CONFIG, "%s: not valid JSON (line %d, column %d: %s)", label,
			       jerr->line, jerr->column, jerr->text);
	qw_status st;
	if (!json_is_object(root)) {
		st = qw_fail(err, QW_E_CONFIG, "%s: not a JSON object", label);
	} else {
		reader r = {label, "", root, err};
		st = read_config(&r, cfg);
	}
	json_decref(root);
	return st;
}

qw_status qw_config_parse(const char *json, size_t len, const char *label, qw_config *cfg,
			  qw_err *err)
{
	json_error_t jerr;
	json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	return parse_root(root, &jerr, label, cfg, err);
}

qw_status qw_config_load(const char *path, qw_config *cfg, qw_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return qw_fail(err, QW_E_IO, "%s: cannot open: %s", path, strerror(errno));
	json_error_t jerr;
	json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
	fclose(f);
	return parse_root(root, &jerr, path, cfg, err);
}

bool qw_layer_is_moe(const qw_config *cfg, int layer)
{
	return cfg->is_moe && layer >= 0 && layer < cfg->text.num_layers &&
	       !cfg->text.layer_dense[layer];
}

void qw_config_cut_vision(qw_config *cfg, int depth)
{
	qw_vision_config *v = &cfg->vision;
	if (!cfg->has_vision || depth < 0 || depth >= v->depth)
		return;
	v->depth = depth;
	while (v->n_deepstack > 0 && v->deepstack_indexes[v->n_deepstack - 1] >= depth)
		v->n_deepstack--;   /* the indexes ascend: the mergers kept are a prefix */
}
