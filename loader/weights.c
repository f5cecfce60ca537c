/* weights.c - the weight map of a config and its binding to a checkpoint.
 * See weights.h. */
#include "loader/weights.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------
// building the spec list

typedef struct builder {
	qw_wspec *specs;
	size_t n, cap;
	size_t dtype_size;
	bool oom;
} builder;

/* Appends one spec; shape is given as ndim int64 varargs after the name format's args. */
static void add(builder *b, const qw_tensor **slot, qw_part part, int layer, int experts, int ndim,
		const int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static void add(builder *b, const qw_tensor **slot, qw_part part, int layer, int experts, int ndim,
		const int64_t *shape, const char *fmt, ...)
{
	if (b->oom)
		return;
	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 256;
		qw_wspec *grown = realloc(b->specs, cap * sizeof *grown);
		if (!grown) {
			b->oom = true;
			return;
		}
		b->specs = grown;
		b->cap = cap;
	}
	qw_wspec *s = &b->specs[b->n++];
	memset(s, 0, sizeof *s);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->name, sizeof s->name, fmt, ap);
	va_end(ap);
	s->ndim = ndim;
	s->numel = 1;
	for (int i = 0; i < ndim; i++) {
		s->shape[i] = shape[i];
		s->numel *= (uint64_t)shape[i];
	}
	s->bytes = s->numel * b->dtype_size;
	s->part = part;
	s->layer = layer;
	s->experts = experts;
	s->slot = slot;
}

/* Marks the last spec a quantizable weight; for FP8 configs its bytes are one per value and
 * its scale spec follows it. */
static void quantizable(builder *b, const qw_config *cfg)
{
	if (b->oom || !b->n)
		return;
	qw_wspec *w = &b->specs[b->n - 1];
	w->quantizable = true;
	if (cfg->quant.kind != QW_QUANT_FP8)
		return;
	w->bytes = w->numel;
	int64_t shape[5];
	int nd = w->ndim;
	memcpy(shape, w->shape, sizeof shape);
	shape[nd - 2] = (shape[nd - 2] + cfg->quant.block[0] - 1) / cfg->quant.block[0];
	shape[nd - 1] = (shape[nd - 1] + cfg->quant.block[1] - 1) / cfg->quant.block[1];
	char name[96];
	size_t len = strlen(w->name);
	if (len > 7 && strcmp(w->name + len - 7, ".weight") == 0)
		snprintf(name, sizeof name, "%.*s.weight_scale_inv", (int)(len - 7), w->name);
	else
		snprintf(name, sizeof name, "%s_scale_inv", w->name);
	size_t saved = b->dtype_size;
	b->dtype_size = 4;
	add(b, NULL, w->part, w->layer, 0, nd, shape, "%s", name);
	b->dtype_size = saved;
	if (!b->oom)
		b->specs[b->n - 1].is_scale = true;
}

#define SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}
#define SLOT(field) (w ? &(field) : NULL)

static void add_layer(builder *b, const qw_config *cfg, qw_expert_layout layout, qw_weights *w,
		      const char *tp, int L)
{
	const qw_text_config *t = &cfg->text;
	int64_t H = t->hidden_size, D = t->head_dim, QD = t->num_heads * D, KD = t->num_kv_heads * D;
	qw_layer_weights *lw = w ? &w->layers[L] : NULL;
	const qw_part P = QW_PART_LAYER;
#define LSLOT(field) (lw ? &lw->field : NULL)
	add(b, LSLOT(input_norm), P, L, 0, SHAPE(H), "%slayers.%d.input_layernorm.weight", tp, L);
	add(b, LSLOT(q_proj), P, L, 0, SHAPE(QD, H), "%slayers.%d.self_attn.q_proj.weight", tp, L);
	quantizable(b, cfg);
	add(b, LSLOT(k_proj), P, L, 0, SHAPE(KD, H), "%slayers.%d.self_attn.k_proj.weight", tp, L);
	quantizable(b, cfg);
	add(b, LSLOT(v_proj), P, L, 0, SHAPE(KD, H), "%slayers.%d.self_attn.v_proj.weight", tp, L);
	quantizable(b, cfg);
	add(b, LSLOT(o_proj), P, L, 0, SHAPE(H, QD), "%slayers.%d.self_attn.o_proj.weight", tp, L);
	quantizable(b, cfg);
	if (t->attention_bias) {
		add(b, LSLOT(q_bias), P, L, 0, SHAPE(QD), "%slayers.%d.self_attn.q_proj.bias", tp, L);
		add(b, LSLOT(k_bias), P, L, 0, SHAPE(KD), "%slayers.%d.self_attn.k_proj.bias", tp, L);
		add(b, LSLOT(v_bias), P, L, 0, SHAPE(KD), "%slayers.%d.self_attn.v_proj.bias", tp, L);
		add(b, LSLOT(o_bias), P, L, 0, SHAPE(H), "%slayers.%d.self_attn.o_proj.bias", tp, L);
	}
	add(b, LSLOT(q_norm), P, L, 0, SHAPE(D), "%slayers.%d.self_attn.q_norm.weight", tp, L);
	add(b, LSLOT(k_norm), P, L, 0, SHAPE(D), "%slayers.%d.self_attn.k_norm.weight", tp, L);
	add(b, LSLOT(post_norm), P, L, 0, SHAPE(H), "%slayers.%d.post_attention_layernorm.weight",
	    tp, L);
	if (!qw_layer_is_moe(cfg, L)) {
		int64_t I = t->intermediate_size;
		add(b, LSLOT(gate_proj), P, L, 0, SHAPE(I, H), "%slayers.%d.mlp.gate_proj.weight", tp, L);
		quantizable(b, cfg);
		add(b, LSLOT(up_proj), P, L, 0, SHAPE(I, H), "%slayers.%d.mlp.up_proj.weight", tp, L);
		quantizable(b, cfg);
		add(b, LSLOT(down_proj), P, L, 0, SHAPE(H, I), "%slayers.%d.mlp.down_proj.weight", tp, L);
		quantizable(b, cfg);
		return;
	}
	int64_t E = t->num_experts, I = t->moe_intermediate_size;
	add(b, LSLOT(router), P, L, 0, SHAPE(E, H), "%slayers.%d.mlp.gate.weight", tp, L);
	if (layout == QW_EXPERTS_FUSED) {
		add(b, LSLOT(experts_gate_up), P, L, (int)E, SHAPE(E, H, 2 * I),
		    "%slayers.%d.mlp.experts.gate_up_proj", tp, L);
		quantizable(b, cfg);
		add(b, LSLOT(experts_down), P, L, (int)E, SHAPE(E, I, H),
		    "%slayers.%d.mlp.experts.down_proj", tp, L);
		quantizable(b, cfg);
		return;
	}
	for (int e = 0; e < E; e++) {
		add(b, lw ? &lw->expert_gate[e] : NULL, P, L, (int)E, SHAPE(I, H),
		    "%slayers.%d.mlp.experts.%d.gate_proj.weight", tp, L, e);
		quantizable(b, cfg);
		add(b, lw ? &lw->expert_up[e] : NULL, P, L, (int)E, SHAPE(I, H),
		    "%slayers.%d.mlp.experts.%d.up_proj.weight", tp, L, e);
		quantizable(b, cfg);
		add(b, lw ? &lw->expert_down[e] : NULL, P, L, (int)E, SHAPE(H, I),
		    "%slayers.%d.mlp.experts.%d.down_proj.weight", tp, L, e);
		quantizable(b, cfg);
	}
#undef LSLOT
}

static void add_merger(builder *b, qw_merger_weights *mw, int64_t norm_dim, int64_t in,
		       int64_t out, const char *prefix)
{
	const qw_part P = QW_PART_VISION;
	add(b, mw ? &mw->norm_w : NULL, P, -1, 0, SHAPE(norm_dim), "%s.norm.weight", prefix);
	add(b, mw ? &mw->norm_b : NULL, P, -1, 0, SHAPE(norm_dim), "%s.norm.bias", prefix);
	add(b, mw ? &mw->fc1_w : NULL, P, -1, 0, SHAPE(in, in), "%s.linear_fc1.weight", prefix);
	add(b, mw ? &mw->fc1_b : NULL, P, -1, 0, SHAPE(in), "%s.linear_fc1.bias", prefix);
	add(b, mw ? &mw->fc2_w : NULL, P, -1, 0, SHAPE(out, in), "%s.linear_fc2.weight", prefix);
	add(b, mw ? &mw->fc2_b : NULL, P, -1, 0, SHAPE(out), "%s.linear_fc2.bias", prefix);
}

static void add_vision(builder *b, const qw_config *cfg, qw_weights *w)
{
	const qw_vision_config *v = &cfg->vision;
	const qw_part P = QW_PART_VISION;
	int64_t Dv = v->hidden_size, Iv = v->intermediate_size, Pz = v->patch_size;
	int64_t merged = Dv * v->spatial_merge_size * v->spatial_merge_size;
	add(b, SLOT(w->patch_w), P, -1, 0,
	    SHAPE(Dv, v->in_channels, v->temporal_patch_size, Pz, Pz),
	    "model.visual.patch_embed.proj.weight");
	add(b, SLOT(w->patch_b), P, -1, 0, SHAPE(Dv), "model.visual.patch_embed.proj.bias");
	add(b, SLOT(w->pos_embed), P, -1, 0, SHAPE(v->num_position_embeddings, Dv),
	    "model.visual.pos_embed.weight");
	for (int k = 0; k < v->depth; k++) {
		qw_vision_block_weights *bw = w ? &w->blocks[k] : NULL;
#define BSLOT(field) (bw ? &bw->field : NULL)
		const char *bp = "model.visual.blocks";
		add(b, BSLOT(norm1_w), P, -1, 0, SHAPE(Dv), "%s.%d.norm1.weight", bp, k);
		add(b, BSLOT(norm1_b), P, -1, 0, SHAPE(Dv), "%s.%d.norm1.bias", bp, k);
		add(b, BSLOT(qkv_w), P, -1, 0, SHAPE(3 * Dv, Dv), "%s.%d.attn.qkv.weight", bp, k);
		add(b, BSLOT(qkv_b), P, -1, 0, SHAPE(3 * Dv), "%s.%d.attn.qkv.bias", bp, k);
		add(b, BSLOT(proj_w), P, -1, 0, SHAPE(Dv, Dv), "%s.%d.attn.proj.weight", bp, k);
		add(b, BSLOT(proj_b), P, -1, 0, SHAPE(Dv), "%s.%d.attn.proj.bias", bp, k);
		add(b, BSLOT(norm2_w), P, -1, 0, SHAPE(Dv), "%s.%d.norm2.weight", bp, k);
		add(b, BSLOT(norm2_b), P, -1, 0, SHAPE(Dv), "%s.%d.norm2.bias", bp, k);
		add(b, BSLOT(fc1_w), P, -1, 0, SHAPE(Iv, Dv), "%s.%d.mlp.linear_fc1.weight", bp, k);
		add(b, BSLOT(fc1_b), P, -1, 0, SHAPE(Iv), "%s.%d.mlp.linear_fc1.bias", bp, k);
		add(b, BSLOT(fc2_w), P, -1, 0, SHAPE(Dv, Iv), "%s.%d.mlp.linear_fc2.weight", bp, k);
		add(b, BSLOT(fc2_b), P, -1, 0, SHAPE(Dv), "%s.%d.mlp.linear_fc2.bias", bp, k);
#undef BSLOT
	}
	add_merger(b, w ? &w->merger : NULL, Dv, merged, cfg->text.hidden_size,
		   "model.visual.merger");
	for (int j = 0; j < v->n_deepstack; j++) {
		char prefix[64];
		snprintf(prefix, sizeof prefix, "model.visual.deepstack_merger_list.%d", j);
		add_merger(b, w ? &w->deepstack[j] : NULL, merged, merged, cfg->text.hidden_size,
			   prefix);
	}
}

static qw_status weights_alloc(const qw_config *cfg, qw_expert_layout layout, qw_weights *w,
			       qw_err *err)
{
	memset(w, 0, sizeof *w);
	w->expert_layout = layout;
	int L = cfg->text.num_layers, E = cfg->text.num_experts;
	w->layers = calloc((size_t)L, sizeof *w->layers);
	w->blocks = calloc((size_t)(cfg->vision.depth + 1), sizeof *w->blocks);
	w->deepstack = calloc((size_t)(cfg->vision.n_deepstack + 1), sizeof *w->deepstack);
	size_t n_slots = layout == QW_EXPERTS_PER_EXPERT ? (size_t)L * (size_t)E * 3 : 0;
	w->expert_slots = calloc(n_slots + 1, sizeof *w->expert_slots);
	if (!w->layers || !w->blocks || !w->deepstack || !w->expert_slots) {
		qw_weights_free(w);
		return qw_fail(err, QW_E_NOMEM, "out of memory for the weight table");
	}
	for (int l = 0; n_slots && l < L; l++) {
		const qw_tensor **base = w->expert_slots + (size_t)l * (size_t)E * 3;
		w->layers[l].expert_gate = base;
		w->layers[l].expert_up = base + E;
		w->layers[l].expert_down = base + 2 * E;
	}
	return QW_OK;
}

qw_status qw_wmap_build(const qw_config *cfg, qw_expert_layout layout, qw_weights *w,
			qw_wspec **specs, size_t *n, qw_err *err)
{
	*specs = NULL;
	*n = 0;
	if (w && !w->layers) {
		qw_status st = weights_alloc(cfg, layout, w, err);
		if (st != QW_OK)
			return st;
	}
	builder b = {.dtype_size = qw_dtype_size(cfg->dtype)};
	const qw_text_config *t = &cfg->text;
	const char *tp = cfg->has_vision ? "model.language_model." : "model.";
	int64_t V = t->vocab_size, H = t->hidden_size;
	add(&b, SLOT(w->embed), QW_PART_EMBED, -1, 0, SHAPE(V, H), "%sembed_tokens.weight", tp);
	if (cfg->has_vision)
		add_vision(&b, cfg, w);
	for (int L = 0; L < t->num_layers; L++)
		add_layer(&b, cfg, layout, w, tp, L);
	add(&b, SLOT(w->final_norm), QW_PART_HEAD, -1, 0, SHAPE(H), "%snorm.weight", tp);
	if (!cfg->tie_word_embeddings)
		add(&b, SLOT(w->lm_head), QW_PART_HEAD, -1, 0, SHAPE(V, H), "lm_head.weight");
	if (b.oom) {
		free(b.specs);
		return qw_fail(err, QW_E_NOMEM, "out of memory building the weight map");
	}
	*specs = b.specs;
	*n = b.n;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// parts of the model, for the report

static const char *const group_names[QW_GROUP_COUNT] = {
	"text", "text_layers", "experts", "vision", "vision_blocks", "deepstack_mergers",
	"merger", "other"};

const char *qw_wgroup_name(qw_wgroup g)
{
	return g >= 0 && g < QW_GROUP_COUNT ? group_names[g] : "?";
}

/* What follows prefix in s, or NULL if s does not start with it. */
static const char *after(const char *s, const char *prefix)
{
	size_t n = strlen(prefix);
	return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

qw_wgroup qw_wgroup_of_name(const char *name)
{
	const char *vis = after(name, "model.visual.");
	if (vis)
		return after(vis, "blocks.") ? QW_GROUP_VISION_BLOCKS
		     : after(vis, "deepstack_merger_list.") ? QW_GROUP_DEEPSTACK
		     : after(vis, "merger.") ? QW_GROUP_MERGER : QW_GROUP_VISION;
	const char *text = after(name, "model.language_model.");
	if (!text)
		text = after(name, "model.");
	if (text && after(text, "layers."))
		return strstr(text, ".mlp.experts.") ? QW_GROUP_EXPERTS : QW_GROUP_LAYERS;
	if ((text && (!strcmp(text, "embed_tokens.weight") || !strcmp(text, "norm.weight"))) ||
	    !strcmp(name, "lm_head.weight"))
		return QW_GROUP_TEXT;
	return QW_GROUP_OTHER;
}

int qw_vision_blocks_stored(const qw_checkpoint *ck)
{
	long top = -1;
	for (size_t i = 0; i < ck->n_tensors; i++) {
		const char *digits = after(ck->tensors[i]->name, "model.visual.blocks.");
		char *end;
		long k = digits && isdigit((unsigned char)*digits) ? strtol(digits, &end, 10) : -1;
		if (k > top && k < (1 << 20) && *end == '.')
			top = k;
	}
	return (int)(top + 1);
}

// ---------------------------------------------------------------------------------------
// binding

qw_expert_layout qw_detect_expert_layout(const qw_config *cfg, const qw_checkpoint *ck)
{
	for (size_t i = 0; ck && i < ck->n_tensors; i++) {
		const char *name = ck->tensors[i]->name;
		if (strstr(name, ".mlp.experts.gate_up_proj") || strstr(name, ".mlp.experts.down_proj"))
			return QW_EXPERTS_FUSED;
		if (strstr(name, ".mlp.experts.0.gate_proj.weight"))
			return QW_EXPERTS_PER_EXPERT;
	}
	return cfg->arch == QW_ARCH_QWEN3_MOE ? QW_EXPERTS_PER_EXPERT : QW_EXPERTS_FUSED;
}

bool qw_stage_owns(const qw_stage *stage, const qw_config *cfg, const qw_wspec *spec)
{
	if (!stage)
		return true;
	bool first = stage->index == 0, last = stage->index == stage->count - 1;
	switch (spec->part) {
	case QW_PART_EMBED:
		return first || (last && cfg->tie_word_embeddings);
	case QW_PART_VISION:
		return first;
	case QW_PART_LAYER:
		return spec->layer >= stage->layer_begin && spec->layer < stage->layer_end;
	case QW_PART_HEAD:
		return last;
	}
	return false;
}

static int cmp_spec_ptr(const void *a, const void *b)
{
	return strcmp((*(const qw_wspec *const *)a)->name, (*(const qw_wspec *const *)b)->name);
}

/* Appends a malloc'd copy of s to *list, whose length *n grows only on success. */
static bool push_str(char ***list, size_t *n, const char *s)
{
	char **grown = realloc(*list, (*n + 1) * sizeof *grown);
	if (!grown)
		return false;
	*list = grown;
	if (!(grown[*n] = strdup(s)))
		return false;
	(*n)++;
	return true;
}

static bool shape_matches(const qw_wspec *s, const qw_tensor *t)
{
	if (s->ndim != t->ndim)
		return false;
	for (int i = 0; i < s->ndim; i++)
		if (s->shape[i] != t->shape[i])
			return false;
	return true;
}

/* The scale tensor of an FP8 weight t, checked against its spec sc: present, of the
 * blocked shape, fp32 or bf16, every value finite and > 0 (values only where the checkpoint
 * has data: a manifest has headers alone).  NULL with *why set if not. */
static const qw_tensor *check_scale(const qw_config *cfg, const qw_checkpoint *ck,
				    const qw_tensor *t, const qw_wspec *sc, char *why, size_t cap)
{
	if (cfg->quant.kind != QW_QUANT_FP8 || !sc) {
		snprintf(why, cap, "an F8_E4M3 weight, but config.json has no fp8 quantization_config");
		return NULL;
	}
	const qw_tensor *s = qw_ckpt_find(ck, sc->name);
	char want[96], got[96];
	if (!s) {
		snprintf(why, cap, "its scale tensor %s is missing", sc->name);
		return NULL;
	}
	if (!shape_matches(sc, s) || (s->dtype != QW_DT_F32 && s->dtype != QW_DT_BF16)) {
		snprintf(why, cap, "its scale %s is %s %s, expected %s F32", sc->name,
			 qw_shape_str(s->shape, s->ndim, got, sizeof got), qw_dtype_name(s->dtype),
			 qw_shape_str(sc->shape, sc->ndim, want, sizeof want));
		return NULL;
	}
	for (uint64_t i = 0; s->data && i < s->numel; i++) {   /* no data: a header alone */
		float v;
		if (s->dtype == QW_DT_F32) {
			memcpy(&v, (const uint8_t *)s->data + 4 * i, 4);
		} else {
			uint16_t h;
			memcpy(&h, (const uint8_t *)s->data + 2 * i, 2);
			v = qw_bf16_to_f32(h);
		}
		if (!(v > 0.0f) || !isfinite(v)) {
			snprintf(why, cap, "its scale %s holds %g at element %llu (scales must be finite "
				 "and > 0)", sc->name, (double)v, (unsigned long long)i);
			return NULL;
		}
	}
	return s;
}

qw_status qw_weights_load(const qw_config *cfg, const qw_checkpoint *ck, const qw_stage *stage,
			  qw_weights *w, qw_wreport *rep, qw_err *err)
{
	memset(rep, 0, sizeof *rep);
	memset(w, 0, sizeof *w);
	qw_wspec *specs;
	size_t n;
	qw_status st = qw_wmap_build(cfg, qw_detect_expert_layout(cfg, ck), w, &specs, &n, err);
	if (st != QW_OK)
		return st;
	w->layer_begin = stage ? stage->layer_begin : 0;
	w->layer_end = stage ? stage->layer_end : cfg->text.num_layers;
	const qw_wspec **sorted = malloc((n ? n : 1) * sizeof *sorted);
	if (!sorted) {
		free(specs);
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	}
	bool oom = false;
	bool first = !stage || stage->index == 0, last = !stage || stage->index == stage->count - 1;
	for (size_t i = 0; i < n; i++) {
		const qw_wspec *s = &specs[i];
		sorted[i] = s;
		if (!qw_stage_owns(stage, cfg, s) || s->is_scale)   /* scales go with their weight */
			continue;
		qw_wcount *part = &rep->parts[qw_wgroup_of_name(s->name)];
		rep->expected++;
		part->expected++;
		const qw_tensor *t = qw_ckpt_find(ck, s->name);
		char want[96], got[96], desc[512], why[256] = "";
		const qw_tensor *scale = NULL;
		if (!t) {
			oom |= !push_str(&rep->missing_names, &rep->missing, s->name);
			part->missing++;
			continue;
		}
		if (shape_matches(s, t) && t->dtype == QW_DT_F8_E4M3 && s->quantizable)
			scale = check_scale(cfg, ck, t, i + 1 < n && specs[i + 1].is_scale ? &specs[i + 1]
									     : NULL, why, sizeof why);
		else if (shape_matches(s, t) && !qw_dtype_is_float(t->dtype))
			snprintf(why, sizeof why, "expected BF16/F16/F32%s",
				 s->quantizable ? " or F8_E4M3 with block scales" : "");
		if (!shape_matches(s, t) || why[0]) {
			snprintf(desc, sizeof desc, "%s: expected %s, got %s %s (%s)%s%s", s->name,
				 qw_shape_str(s->shape, s->ndim, want, sizeof want),
				 qw_shape_str(t->shape, t->ndim, got, sizeof got),
				 qw_dtype_name(t->dtype), t->file->path, why[0] ? ": " : "", why);
			oom |= !push_str(&rep->mismatched_desc, &rep->mismatched, desc);
			part->mismatched++;
			continue;
		}
		rep->loaded++;
		part->loaded++;
		rep->loaded_bytes += t->nbytes;
		if (scale) {
			/* the binder annotates the quantized weight with its scales */
			qw_tensor *q = (qw_tensor *)t;
			q->scale = scale;
			q->block[0] = cfg->quant.block[0];
			q->block[1] = cfg->quant.block[1];
			rep->expected++;
			rep->loaded++;
			part->expected++;
			part->loaded++;
			rep->loaded_bytes += scale->nbytes;
		}
		if (s->part != QW_PART_EMBED || first)
			*s->slot = t;
		if (s->part == QW_PART_EMBED && last && cfg->tie_word_embeddings)
			w->lm_head = t;    /* a tied lm_head is the embedding table */
	}
	qsort(sorted, n, sizeof *sorted, cmp_spec_ptr);
	for (size_t i = 0; i < ck->n_tensors; i++) {
		qw_wspec key;
		snprintf(key.name, sizeof key.name, "%s", ck->tensors[i]->name);
		const qw_wspec *kp = &key;
		const qw_wspec **hit = strlen(ck->tensors[i]->name) < sizeof key.name
			? bsearch(&kp, sorted, n, sizeof *sorted, cmp_spec_ptr) : NULL;
		qw_wcount *part = &rep->parts[qw_wgroup_of_name(ck->tensors[i]->name)];
		if (!hit) {
			oom |= !push_str(&rep->extra_names, &rep->extra, ck->tensors[i]->name);
			part->extra++;
		} else if (!qw_stage_owns(stage, cfg, *hit)) {
			rep->other_stage++;
			part->other_stage++;
		}
	}
	free(sorted);
	free(specs);
	if (oom)
		return qw_fail(err, QW_E_NOMEM, "out of memory writing the load report");
	if (rep->missing || rep->mismatched)
		return qw_fail(err, QW_E_WEIGHTS, "%s: %zu of %zu tensors missing, %zu mismatched; "
			       "first: %s", ck->dir, rep->missing, rep->expected, rep->mismatched,
			       rep->missing ? rep->missing_names[0] : rep->mismatched_desc[0]);
	return QW_OK;
}

void qw_weights_free(qw_weights *w)
{
	free(w->layers);
	free(w->blocks);
	free(w->deepstack);
	free(w->expert_slots);
	memset(w, 0, sizeof *w);
}

static void free_list(char **list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

void qw_wreport_free(qw_wreport *rep)
{
	free_list(rep->missing_names, rep->missing);
	free_list(rep->mismatched_desc, rep->mismatched);
	free_list(rep->extra_names, rep->extra);
	memset(rep, 0, sizeof *rep);
}

static json_t *str_array(char **list, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(list[i]));
	return a;
}

char *qw_wreport_json(const qw_wreport *rep, const qw_stage *stage)
{
	json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
			      "loaded", (json_int_t)rep->loaded,
			      "missing", (json_int_t)rep->missing,
			      "mismatched", (json_int_t)rep->mismatched,
			      "extra", (json_int_t)rep->extra,
			      "other_stage", (json_int_t)rep->other_stage,
			      "expected", (json_int_t)rep->expected,
			      "loaded_bytes", (json_int_t)rep->loaded_bytes);
	if (!o)
		return NULL;
	if (stage)
		json_object_set_new(o, "stage", json_pack("{s:i, s:i, s:[i, i]}", "index",
							  stage->index, "count", stage->count,
							  "layers", stage->layer_begin,
							  stage->layer_end));
	json_t *parts = json_object();
	for (int g = 0; g < QW_GROUP_COUNT; g++) {
		const qw_wcount *c = &rep->parts[g];
		if (c->expected + c->extra + c->other_stage == 0)
			continue;
		json_object_set_new(parts, qw_wgroup_name((qw_wgroup)g), json_pack(
			"{s:I, s:I, s:I, s:I, s:I, s:I}", "expected", (json_int_t)c->expected,
			"loaded", (json_int_t)c->loaded, "missing", (json_int_t)c->missing,
			"mismatched", (json_int_t)c->mismatched, "extra", (json_int_t)c->extra,
			"other_stage", (json_int_t)c->other_stage));
	}
	json_object_set_new(o, "parts", parts);
	json_object_set_new(o, "missing_names", str_array(rep->missing_names, rep->missing));
	json_object_set_new(o, "mismatched_names",
			    str_array(rep->mismatched_desc, rep->mismatched));
	json_object_set_new(o, "extra_names", str_array(rep->extra_names, rep->extra));
	char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	return s;
}
