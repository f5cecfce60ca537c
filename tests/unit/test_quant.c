/* test_quant.c - FP8 block-scaled checkpoints (export, validation, dequantisation, parity with
 * the bf16 twin and with transformers' own FP8 run) and the quantization checks (scales,
 * gate-up, diff) on FP8 and on NVFP4 checkpoints written here bit by bit from the ModelOpt
 * layout. */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/cpu_backend.h"
#include "loader/checkpoint.h"
#include "loader/st_writer.h"
#include "loader/weights.h"

/* tiny-moe exported with seed 3, in bf16 (the twin of the committed HF reference) or FP8 */
static char *export_tiny(bool fp8, const char *extra)
{
	char *dir = scratch_new(), *out;
	int rc = run_capture(&out, "%s export-reduced --config %s --out %s --seed 3 %s %s",
			     program("qwen-ckpt"), fixture("hf/tiny-moe/model/config.json"), dir,
			     fp8 ? "--quantize fp8" : "", extra ? extra : "");
	if (rc != 0)
		fail_msg("%s", out);
	free(out);
	return dir;
}

/* The nearest e4m3 code to f by trying all of them (ties to the even code; saturating). */
static uint8_t nearest_e4m3(float f)
{
	uint8_t sign = signbit(f) ? 0x80 : 0, best = 0;
	float a = fminf(fabsf(f), 448.0f), best_d = INFINITY;
	for (uint8_t c = 0; c <= 0x7e; c++) {
		float d = fabsf(qw_f8e4m3_to_f32(c) - a);
		if (d < best_d || (d == best_d && !(c & 1))) {
			best_d = d;
			best = c;
		}
	}
	return sign | best;
}

static void test_e4m3(void **state)
{
	/* the conversion against the exhaustive search: floats of every exponent e4m3 reaches
	 * (and past it), each code's neighbourhood and the midpoints between codes */
	for (uint32_t u = 0x30000000u; u < 0x44000000u; u += 4099) {
		float f;
		memcpy(&f, &u, 4);
		for (int s = 0; s < 2; s++, f = -f)
			if (qw_f32_to_f8e4m3(f) != nearest_e4m3(f))
				fail_msg("%a: %#x, nearest %#x", f, qw_f32_to_f8e4m3(f), nearest_e4m3(f));
	}
	for (int c = 0; c < 0x7e; c++) {
		float lo = qw_f8e4m3_to_f32((uint8_t)c), hi = qw_f8e4m3_to_f32((uint8_t)(c + 1));
		float probes[] = {(lo + hi) / 2, nextafterf((lo + hi) / 2, 0),
				  nextafterf((lo + hi) / 2, INFINITY), nextafterf(lo, INFINITY)};
		for (int k = 0; k < 4; k++)
			assert_int_equal(qw_f32_to_f8e4m3(probes[k]), nearest_e4m3(probes[k]));
	}
	assert_int_equal(qw_f32_to_f8e4m3(1.0f), 0x38);
	assert_int_equal(qw_f32_to_f8e4m3(-1.0f), 0xb8);
	assert_int_equal(qw_f32_to_f8e4m3(448.0f), 0x7e);
	assert_int_equal(qw_f32_to_f8e4m3(1000.0f), 0x7e);          /* saturates, no infinity */
	assert_int_equal(qw_f32_to_f8e4m3(1.0625f), 0x38);          /* tie: to the even code */
	assert_int_equal(qw_f32_to_f8e4m3(1.1875f), 0x3a);          /* tie between 0x39 and 0x3a */
	assert_int_equal(qw_f32_to_f8e4m3(0x1p-9f), 0x01);          /* smallest subnormal */
	assert_int_equal(qw_f32_to_f8e4m3(0x1p-11f), 0x00);         /* below half of it: zero */
	for (int c = 0; c < 0x7f; c++)                              /* every code round-trips */
		assert_int_equal(qw_f32_to_f8e4m3(qw_f8e4m3_to_f32((uint8_t)c)), c);
	assert_true(qw_e2m1_to_f32(0x7) == 6.0f && qw_e2m1_to_f32(0xb) == -1.5f);
}

/* Every dequantised value is within e4m3's rounding of the bf16 twin's: half a step of 3
 * mantissa bits (|w| / 16) or, near zero, half the smallest subnormal times the scale.
 * A 256-wide model has several blocks per matrix, so the block indexing is exercised. */
static void test_dequantisation(void **state)
{
	const char *wide = "--override-hidden 256 --override-intermediate 320 "
			   "--override-moe-intermediate 192 --override-heads 8 --override-head-dim 32";
	char *q = export_tiny(true, wide), *b = export_tiny(false, wide);
	qw_config cfg;
	qw_checkpoint *cq, *cb;
	qw_err err = {0};
	assert_int_equal(qw_config_load(path_in(q, "config.json"), &cfg, &err), QW_OK);
	assert_int_equal(qw_ckpt_open(q, &cq, &err), QW_OK);
	assert_int_equal(qw_ckpt_open(b, &cb, &err), QW_OK);
	qw_weights w;
	qw_wreport rep;
	if (qw_weights_load(&cfg, cq, NULL, &w, &rep, &err) != QW_OK)
		fail_msg("%s", err.msg);
	const qw_tensor *tq[] = {w.layers[1].q_proj, w.layers[2].experts_gate_up,
				 w.layers[3].experts_down};
	for (int i = 0; i < 3; i++) {
		const qw_tensor *t = tq[i], *tb = qw_ckpt_find(cb, t->name);
		assert_non_null(t->scale);
		assert_true(t->scale->numel > 1);
		float *vq = malloc(t->numel * sizeof *vq), *vb = malloc(t->numel * sizeof *vb);
		qw_tensor_read_f32(t, 0, t->numel, vq);
		qw_tensor_read_f32(tb, 0, tb->numel, vb);
		float smax = 0;
		for (uint64_t k = 0; k < t->scale->numel; k++) {
			float s;
			qw_tensor_read_f32(t->scale, k, 1, &s);
			smax = fmaxf(smax, s);
		}
		for (uint64_t k = 0; k < t->numel; k++)
			if (fabsf(vq[k] - vb[k]) > fabsf(vb[k]) / 16 + smax * 0x1p-10f)
				fail_msg("%s[%llu]: %g dequantised, %g in bf16", t->name,
					 (unsigned long long)k, vq[k], vb[k]);
		free(vq);
		free(vb);
	}
	qw_wreport_free(&rep);
	qw_weights_free(&w);
	qw_ckpt_close(cq);
	qw_ckpt_close(cb);
	scratch_free(q);
	scratch_free(b);
}

static int parity(const char *model, const char *case_name, const char *th, char **out)
{
	return run_capture(out, "%s --model %s --reference %s --case %s --thresholds %s",
			   program("qwen-parity"), model,
			   fixture("fp8/bf16_twin_reference.safetensors"), case_name, th);
}

static void test_parity_with_bf16_twin(void **state)
{
	char *b = export_tiny(false, NULL), *q = export_tiny(true, NULL), *out;
	/* the twin is what the reference was made from (by HF on the GPU box) */
	assert_int_equal(parity(b, "short", "fp32", &out), 0);
	free(out);
	for (int i = 0; i < 2; i++) {
		const char *c = i ? "long" : "short";
		if (parity(q, c, "fp8", &out) != 0)
			fail_msg("%s", out);
		free(out);
		assert_int_equal(parity(q, c, "fp32", &out), 1);   /* the quantization error is there */
		free(out);
	}
	scratch_free(b);
	scratch_free(q);
}

// ---------------------------------------------------------------------------------------
// HF's FP8 reference (tests/fixtures/fp8/tiny-moe-fp8, written on the GPU box by
// tests/hf/make_fp8_reference.py)

#define HF_FP8_DIR "fp8/tiny-moe-fp8"

/* The export the reference was made from, again, from its manifest's config and arguments;
 * its files must be the ones transformers ran (their sha256 in the manifest). */
static char *export_from_manifest(json_t *mf)
{
	json_t *ex = json_object_get(mf, "export");
	const char *config = json_string_value(json_object_get(ex, "config"));
	assert_non_null(config);
	char args[1024] = "";
	size_t i;
	json_t *a;
	json_array_foreach(json_object_get(ex, "args"), i, a) {
		const char *v = json_string_value(a);
		assert_non_null(v);
		for (const char *c = v; *c; c++)   /* plain words: nothing for the shell to read */
			assert_true(strchr("-_.=/", *c) || (*c >= '0' && *c <= '9') ||
				    (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'));
		snprintf(args + strlen(args), sizeof args - strlen(args), " %s", v);
	}
	char *dir = scratch_new(), *out;
	if (run_capture(&out, "%s export-reduced --config %s --out %s%s", program("qwen-ckpt"),
			fixture(config), dir, args) != 0)
		fail_msg("%s", out);
	free(out);
	const char *file;
	json_t *sum;
	json_object_foreach(json_object_get(ex, "files"), file, sum) {
		assert_int_equal(run_capture(&out, "sha256sum %s", path_in(dir, file)), 0);
		if (strncmp(out, json_string_value(sum), 64) != 0)
			fail_msg("%s of the export differs from the one transformers ran (sha256 %.64s, "
				 "the manifest's %s): the export changed since the reference was made "
				 "(HINT: make it again, docs/parity.md)", file, out, json_string_value(sum));
		free(out);
	}
	return dir;
}

/* The CPU backend on the FP8 export against transformers' own FP8 run of it (W8A8, bf16) at
 * the fp8 thresholds, and against transformers' fp32 run of its weights dequantized (the
 * arithmetic this backend does) at the fp32 thresholds; the FP8 run is not the dequantized
 * one (activations quantized), so the fp32 thresholds fail against it.  Skipped while the
 * fixture is absent (it needs transformers' FP8 kernels on a GPU to make). */
static void test_hf_fp8_reference(void **state)
{
	char ref[4200];
	snprintf(ref, sizeof ref, "%s", fixture(HF_FP8_DIR "/reference.safetensors"));
	if (access(ref, R_OK) != 0) {
		print_message("%s is absent: make it on the GPU box with tests/hf/make_fp8_reference.py "
			      "(docs/parity.md)\n", HF_FP8_DIR "/reference.safetensors");
		skip();
	}
	json_error_t jerr;
	json_t *mf = json_load_file(fixture(HF_FP8_DIR "/manifest.json"), 0, &jerr);
	if (!mf)
		fail_msg("%s/manifest.json: %s", HF_FP8_DIR, jerr.text);
	char *dir = export_from_manifest(mf), *out;
	static const struct {
		const char *name, *thresholds;
	} cases[] = {{"short", "fp8"}, {"long", "fp8"}, {"short_dequant", "fp32"},
		     {"long_dequant", "fp32"}};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		assert_non_null(json_object_get(json_object_get(mf, "cases"), cases[i].name));
		int rc = run_capture(&out, "%s --model %s --reference %s --case %s --thresholds %s",
				     program("qwen-parity"), dir, ref, cases[i].name,
				     cases[i].thresholds);
		if (rc != 0)
			fail_msg("case %s at the %s thresholds:\n%s", cases[i].name, cases[i].thresholds,
				 out);
		free(out);
	}
	assert_int_equal(run_capture(&out, "%s --model %s --reference %s --case short --thresholds "
				     "fp32", program("qwen-parity"), dir, ref), 1);
	free(out);
	json_decref(mf);
	scratch_free(dir);
}

// ---------------------------------------------------------------------------------------
// broken FP8 checkpoints

typedef struct scale_edit {
	const char *tensor;
	float value;
} scale_edit;

static void set_scale(const char *name, int dtype, void *bytes, uint64_t nbytes, void *ctx)
{
	const scale_edit *e = ctx;
	if (e->tensor && strcmp(name, e->tensor) == 0)
		memcpy(bytes, &e->value, 4);
	if (!e->tensor && strstr(name, "_scale_inv"))       /* every scale times 4 */
		for (uint64_t i = 0; i < nbytes / 4; i++)
			((float *)bytes)[i] *= 4.0f;
}

static const char *k_scale = "model.language_model.layers.1.self_attn.k_proj.weight_scale_inv";

static void test_bad_scales_fail(void **state)
{
	char *q = export_tiny(true, NULL), *out;
	scale_edit zero = {k_scale, 0.0f}, nan = {k_scale, NAN}, times4 = {NULL, 0};
	char *z = copy_model(q, set_scale, &zero), *n = copy_model(q, set_scale, &nan);
	char *x4 = copy_model(q, set_scale, &times4);
	assert_int_equal(run_capture(&out, "%s validate %s", program("qwen-ckpt"), z), 1);
	assert_contains(out, "k_proj.weight_scale_inv holds 0 at element 0");
	free(out);
	assert_int_equal(run_capture(&out, "%s validate %s", program("qwen-ckpt"), n), 1);
	assert_contains(out, "holds nan");
	free(out);
	assert_int_equal(run_capture(&out, "%s scales %s", program("qwen-ckpt"), z), 1);
	assert_contains(out, "layer 1");
	assert_contains(out, "1 zero");
	free(out);
	assert_int_equal(run_capture(&out, "%s scales %s", program("qwen-ckpt"), q), 0);
	free(out);
	/* wrong scales that are still positive: validation cannot know, parity does */
	assert_int_equal(parity(x4, "short", "fp8", &out), 1);
	free(out);
	scratch_free(z);
	scratch_free(n);
	scratch_free(x4);
	scratch_free(q);
}

typedef struct copy_ctx {
	const qw_checkpoint *src;
	const qw_st_entry *e;
} copy_ctx;

static qw_status copy_fill(void *vctx, size_t i, void *buf, uint64_t nbytes, qw_err *err)
{
	const copy_ctx *c = vctx;
	const qw_tensor *t = qw_ckpt_find(c->src, c->e[i].name);
	memset(buf, 0, nbytes);
	memcpy(buf, t->data, t->nbytes < nbytes ? t->nbytes : nbytes);
	return QW_OK;
}

/* A copy of dir without tensor `drop`, or with tensor `reshape` given one more row. */
static char *variant(const char *dir, const char *drop, const char *reshape)
{
	char *out = scratch_new();
	qw_checkpoint *src;
	qw_err err = {0};
	assert_int_equal(qw_ckpt_open(dir, &src, &err), QW_OK);
	qw_st_entry *e = calloc(src->n_tensors, sizeof *e);
	size_t n = 0;
	for (size_t i = 0; i < src->n_tensors; i++) {
		const qw_tensor *t = src->tensors[i];
		if (drop && !strcmp(t->name, drop))
			continue;
		e[n] = (qw_st_entry){t->name, t->dtype, t->ndim, {0}};
		memcpy(e[n].shape, t->shape, sizeof e[n].shape);
		if (reshape && !strcmp(t->name, reshape))
			e[n].shape[0]++;
		n++;
	}
	copy_ctx c = {src, e};
	assert_int_equal(qw_st_write(path_in(out, "model.safetensors"), e, n, copy_fill, &c, &err),
			 QW_OK);
	copy_file(path_in(dir, "config.json"), path_in(out, "config.json"));
	free(e);
	qw_ckpt_close(src);
	return out;
}

static void test_missing_and_misshapen_scale(void **state)
{
	char *q = export_tiny(true, NULL), *out;
	char *m = variant(q, k_scale, NULL), *s = variant(q, NULL, k_scale);
	assert_int_equal(run_capture(&out, "%s validate %s", program("qwen-ckpt"), m), 1);
	assert_contains(out, "its scale tensor model.language_model.layers.1.self_attn.k_proj."
			     "weight_scale_inv is missing");
	free(out);
	assert_int_equal(run_capture(&out, "%s validate %s", program("qwen-ckpt"), s), 1);
	assert_contains(out, "is [2, 1] F32, expected [1, 1] F32");
	free(out);
	scratch_free(m);
	scratch_free(s);
	scratch_free(q);
}

static void flip_byte(const char *name, int dtype, void *bytes, uint64_t nbytes, void *ctx)
{
	if (strcmp(name, (const char *)ctx) == 0)
		((uint8_t *)bytes)[77] ^= 0x10;
}

static void test_diff(void **state)
{
	char *q = export_tiny(true, NULL), *b = export_tiny(false, NULL), *out;
	const char *victim = "model.language_model.layers.2.mlp.experts.down_proj";
	char *f = copy_model(q, flip_byte, (void *)victim);
	assert_int_equal(run_capture(&out, "%s diff %s %s", program("qwen-ckpt"), q, f), 1);
	assert_contains(out, "layers.2.mlp.experts.down_proj: bytes differ from offset 77");
	assert_contains(out, "1 differ");
	free(out);
	assert_int_equal(run_capture(&out, "%s diff %s %s", program("qwen-ckpt"), q, q), 0);
	free(out);
	assert_int_equal(run_capture(&out, "%s diff %s %s --tensor '*q_proj*'", program("qwen-ckpt"),
				     q, b), 0);
	assert_contains(out, "quantized  model.language_model.layers.0.self_attn.q_proj.weight: "
			     "F8_E4M3 vs BF16, dequantisation max-abs");
	assert_contains(out, "4 quantized against float");
	free(out);
	scratch_free(f);
	scratch_free(q);
	scratch_free(b);
}

// ---------------------------------------------------------------------------------------
// NVFP4, written bit by bit: two layers of two experts, gate/up/down [32, 64]

enum { OUT = 32, IN = 64 };

typedef struct nv_tensor {
	char name[128];
	qw_dtype dtype;
	int ndim;
	int64_t shape[2];
	uint8_t *data;
	uint64_t bytes;
} nv_tensor;

typedef struct nv_model {
	nv_tensor t[64];
	int n;
} nv_model;

static nv_tensor *nv_add(nv_model *m, const char *name, qw_dtype dt, int ndim, int64_t d0,
			 int64_t d1)
{
	nv_tensor *t = &m->t[m->n++];
	snprintf(t->name, sizeof t->name, "%s", name);
	t->dtype = dt;
	t->ndim = ndim;
	t->shape[0] = d0;
	t->shape[1] = d1;
	t->bytes = qw_dtype_size(dt) * (uint64_t)(ndim > 0 ? d0 : 1) * (uint64_t)(ndim > 1 ? d1 : 1);
	t->data = calloc(t->bytes, 1);
	return t;
}

static qw_status nv_fill(void *ctx, size_t i, void *buf, uint64_t nbytes, qw_err *err)
{
	memcpy(buf, ((nv_model *)ctx)->t[i].data, nbytes);
	return QW_OK;
}

static void nv_write(nv_model *m, const char *dir)
{
	qw_st_entry e[64];
	for (int i = 0; i < m->n; i++) {
		e[i] = (qw_st_entry){m->t[i].name, m->t[i].dtype, m->t[i].ndim, {0}};
		e[i].shape[0] = m->t[i].shape[0];
		e[i].shape[1] = m->t[i].shape[1];
	}
	qw_err err = {0};
	assert_int_equal(qw_st_write(path_in(dir, "model.safetensors"), e, (size_t)m->n, nv_fill, m,
				     &err), QW_OK);
}

/* NVFP4 model A (packed e2m1, f8 block scales, fp32 global scales) and float model B holding
 * exactly the values A decodes to; mismatch plants a different up_proj global scale. */
static void build_nvfp4(const char *dir_a, const char *dir_b, bool mismatch)
{
	nv_model a = {0}, b = {0};
	uint32_t rng = 5;
	for (int L = 0; L < 2; L++)
		for (int e = 0; e < 2; e++)
			for (int p = 0; p < 3; p++) {
				const char *proj = p == 0 ? "gate_proj" : p == 1 ? "up_proj" : "down_proj";
				char base[128], name[160];
				snprintf(base, sizeof base, "model.layers.%d.mlp.experts.%d.%s", L, e, proj);
				snprintf(name, sizeof name, "%s.weight", base);
				nv_tensor *w = nv_add(&a, name, QW_DT_U8, 2, OUT, IN / 2);
				nv_tensor *f = nv_add(&b, name, QW_DT_F32, 2, OUT, IN);
				snprintf(name, sizeof name, "%s.weight_scale", base);
				nv_tensor *s = nv_add(&a, name, QW_DT_F8_E4M3, 2, OUT, IN / 16);
				snprintf(name, sizeof name, "%s.weight_scale_2", base);
				nv_tensor *g = nv_add(&a, name, QW_DT_F32, 0, 0, 0);
				snprintf(name, sizeof name, "%s.input_scale", base);
				nv_tensor *is = nv_add(&a, name, QW_DT_F32, 0, 0, 0);
				float global = 0.5f + 0.25f * L + (mismatch && L == 1 && e == 0 && p == 1);
				float input = 0.01f;
				memcpy(g->data, &global, 4);
				memcpy(is->data, &input, 4);
				for (int i = 0; i < OUT * IN / 16; i++)   /* block scales 0.5 .. 2 */
					s->data[i] = qw_f32_to_f8e4m3(0.5f * (float)(1 + i % 4));
				for (int r = 0; r < OUT; r++)
					for (int c = 0; c < IN; c++) {
						rng = rng * 1103515245u + 12345u;
						uint8_t nib = (uint8_t)((rng >> 16) & 0xf);
						uint8_t *byte = &w->data[r * (IN / 2) + c / 2];
						*byte |= (uint8_t)((c & 1) ? nib << 4 : nib);   /* low nibble first */
						float v = qw_e2m1_to_f32(nib) *
							  qw_f8e4m3_to_f32(s->data[r * (IN / 16) + c / 16]) * global;
						memcpy(f->data + 4 * (r * IN + c), &v, 4);
					}
			}
	nv_write(&a, dir_a);
	nv_write(&b, dir_b);
	for (int i = 0; i < a.n; i++)
		free(a.t[i].data);
	for (int i = 0; i < b.n; i++)
		free(b.t[i].data);
}

static void test_nvfp4(void **state)
{
	char *a = scratch_new(), *b = scratch_new(), *bad = scratch_new(), *badb = scratch_new(), *out;
	build_nvfp4(a, b, false);
	build_nvfp4(bad, badb, true);
	assert_int_equal(run_capture(&out, "%s gate-up %s", program("qwen-ckpt"), a), 0);
	assert_contains(out, "4 matched, 0 mismatched");
	free(out);
	assert_int_equal(run_capture(&out, "%s gate-up %s", program("qwen-ckpt"), bad), 1);
	assert_contains(out, "mismatched  model.layers.1.mlp.experts.0.gate_proj.weight_scale_2 = "
			     "0.75, model.layers.1.mlp.experts.0.up_proj.weight_scale_2 = 1.75");
	assert_contains(out, "3 matched, 1 mismatched");
	free(out);
	/* A decodes exactly to B */
	assert_int_equal(run_capture(&out, "%s diff %s %s", program("qwen-ckpt"), a, b), 0);
	assert_contains(out, "experts.1.down_proj.weight: U8 vs F32, dequantisation max-abs 0, "
			     "relative RMS 0");
	assert_contains(out, "12 quantized against float");
	free(out);
	assert_int_equal(run_capture(&out, "%s scales --json %s", program("qwen-ckpt"), a), 0);
	assert_contains(out, "\"weight_scale_2\"");
	assert_contains(out, "\"input_scale\"");
	assert_contains(out, "\"weight_scale\"");
	free(out);
	/* a scale orders of magnitude from the rest is flagged */
	scale_edit tiny = {"model.layers.0.mlp.experts.1.up_proj.input_scale", 1e-9f};
	char *odd = copy_model(a, set_scale, &tiny);
	assert_int_equal(run_capture(&out, "%s scales %s", program("qwen-ckpt"), odd), 1);
	assert_contains(out, "layer 0");
	assert_contains(out, "experts.1.up_proj.input_scale: 1 values more than 3 decades");
	free(out);
	scratch_free(odd);
	scratch_free(a);
	scratch_free(b);
	scratch_free(bad);
	scratch_free(badb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_e4m3),
		cmocka_unit_test(test_dequantisation),
		cmocka_unit_test(test_parity_with_bf16_twin),
		cmocka_unit_test(test_hf_fp8_reference),
		cmocka_unit_test(test_bad_scales_fail),
		cmocka_unit_test(test_missing_and_misshapen_scale),
		cmocka_unit_test(test_diff),
		cmocka_unit_test(test_nvfp4),
	};
	return cmocka_run_group_tests_name("quant", tests, NULL, NULL);
}
