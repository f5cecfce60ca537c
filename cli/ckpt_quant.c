/* ckpt_quant.c - the quantization checks of qwen-ckpt, for FP8 block-scaled checkpoints (Qwen's
 * form: float8_e4m3fn weights, fp32 <weight>_scale_inv per 128 x 128 block) and NVFP4 ones as
 * NVIDIA ModelOpt writes them (weight: uint8, two e2m1 values per byte, low nibble first;
 * weight_scale: float8_e4m3fn per 16 values of a row; weight_scale_2: fp32 per tensor;
 * input_scale: fp32).
 *
 *   qwen-ckpt scales DIR [--json]   statistics of every kind of scale, and the tensors whose
 *                                   scales are non-finite, zero, negative or orders of
 *                                   magnitude from the rest, by layer
 *   qwen-ckpt gate-up DIR           gate and up projections must share their global scale
 *                                   (NVFP4); fused FP8 gate_up: the blocks at the boundary
 *   qwen-ckpt diff A B [--tensor PATTERN] [--bytes N]
 *                                   tensor by tensor: names, shapes, dtypes, bytes (first
 *                                   differing offset), and for quantized A against bf16 B the
 *                                   dequantisation error
 */
#include <fnmatch.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/ckpt.h"
#include "loader/checkpoint.h"
#include "loader/config.h"

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Element i of a scale or weight tensor as a double (float formats and F8_E4M3). */
static double value_at(const qw_tensor *t, uint64_t i)
{
	const uint8_t *p = (const uint8_t *)t->data;
	uint16_t h;
	float f;
	switch (t->dtype) {
	case QW_DT_F32: memcpy(&f, p + 4 * i, 4); return f;
	case QW_DT_BF16: memcpy(&h, p + 2 * i, 2); return qw_bf16_to_f32(h);
	case QW_DT_F16: memcpy(&h, p + 2 * i, 2); return qw_f16_to_f32(h);
	case QW_DT_F8_E4M3: return qw_f8e4m3_to_f32(p[i]);
	default: return NAN;
	}
}

static int layer_of(const char *name)
{
	const char *at = strstr(name, "layers.");
	return at ? atoi(at + 7) : -1;
}

static int open_dir(const char *cmd, const char *dir, qw_checkpoint **ck)
{
	qw_err err = {0};
	if (qw_ckpt_open(dir, ck, &err) != QW_OK) {
		fprintf(stderr, "qwen-ckpt %s: %s\n", cmd, err.msg);
		return CKPT_FAILED;
	}
	return CKPT_OK;
}

// ---------------------------------------------------------------------------------------
// scales

enum { KIND_SCALE2, KIND_SCALE, KIND_INPUT, KIND_SCALE_INV, N_KINDS };
static const char *const kind_names[N_KINDS] = {"weight_scale_2", "weight_scale", "input_scale",
						"*_scale_inv"};

static int kind_of(const char *name)
{
	if (ends_with(name, ".weight_scale_2"))
		return KIND_SCALE2;
	if (ends_with(name, ".weight_scale"))
		return KIND_SCALE;
	if (ends_with(name, ".input_scale"))
		return KIND_INPUT;
	if (ends_with(name, "_scale_inv"))
		return KIND_SCALE_INV;
	return -1;
}

#define LOG_BINS 8000          /* log10 of positive values, 0.01 wide, from -40 to 40 */

typedef struct kind_stats {
	uint64_t tensors, values, bad;
	double min, max, sum, sumsq;
	uint64_t hist[LOG_BINS];
	double median_log;
} kind_stats;

static int log_bin(double v)
{
	int b = (int)floor((log10(v) + 40.0) * 100.0);
	return b < 0 ? 0 : b >= LOG_BINS ? LOG_BINS - 1 : b;
}

static void median_log(kind_stats *k)
{
	uint64_t total = 0, acc = 0;
	for (int b = 0; b < LOG_BINS; b++)
		total += k->hist[b];
	k->median_log = NAN;
	for (int b = 0; b < LOG_BINS && total; b++)
		if ((acc += k->hist[b]) * 2 >= total) {
			k->median_log = (b + 0.5) / 100.0 - 40.0;
			return;
		}
}

/* Why tensor t's scales are out of a sane range, or "" (far: decades from the median). */
static void judge_tensor(const qw_tensor *t, const kind_stats *k, char *why, size_t cap)
{
	uint64_t nonfinite = 0, zero = 0, neg = 0, far = 0;
	double worst = 0;
	for (uint64_t i = 0; i < t->numel; i++) {
		double v = value_at(t, i);
		if (!isfinite(v))
			nonfinite++;
		else if (v == 0)
			zero++;
		else if (v < 0)
			neg++;
		else if (isfinite(k->median_log) && fabs(log10(v) - k->median_log) > 3.0) {
			far++;
			worst = fabs(log10(v) - k->median_log) > fabs(log10(worst) - k->median_log) ||
					worst == 0 ? v : worst;
		}
	}
	why[0] = '\0';
	if (nonfinite || zero || neg)
		snprintf(why, cap, "%llu non-finite, %llu zero, %llu negative of %llu",
			 (unsigned long long)nonfinite, (unsigned long long)zero,
			 (unsigned long long)neg, (unsigned long long)t->numel);
	else if (far)
		snprintf(why, cap, "%llu values more than 3 decades from the median 1e%.2f (e.g. %g)",
			 (unsigned long long)far, k->median_log, worst);
}

int ckpt_scales(int argc, char **argv)
{
	bool json = false;
	static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {0, 0, 0, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "j", opts, NULL)) != -1)
		if (c == 'j')
			json = true;
		else
			return CKPT_USAGE;
	if (optind != argc - 1) {
		fputs("usage: qwen-ckpt scales DIR [--json]\n", stderr);
		return CKPT_USAGE;
	}
	qw_checkpoint *ck;
	if (open_dir("scales", argv[optind], &ck) != CKPT_OK)
		return CKPT_FAILED;
	kind_stats *ks = calloc(N_KINDS, sizeof *ks);
	for (int k = 0; k < N_KINDS; k++)
		ks[k].min = INFINITY, ks[k].max = -INFINITY;
	for (size_t i = 0; i < ck->n_tensors; i++) {
		const qw_tensor *t = ck->tensors[i];
		int k = kind_of(t->name);
		if (k < 0)
			continue;
		ks[k].tensors++;
		for (uint64_t j = 0; j < t->numel; j++) {
			double v = value_at(t, j);
			ks[k].values++;
			if (!isfinite(v) || v <= 0) {
				ks[k].bad++;
				continue;
			}
			ks[k].min = fmin(ks[k].min, v);
			ks[k].max = fmax(ks[k].max, v);
			ks[k].sum += v;
			ks[k].sumsq += v * v;
			ks[k].hist[log_bin(v)]++;
		}
	}
	json_t *out = json_object(), *kinds = json_object(), *flagged = json_array();
	if (!json)
		printf("# %-16s %8s %12s %12s %12s %12s %12s %6s\n", "kind", "tensors", "values",
		       "min", "max", "mean", "std", "bad");
	for (int k = 0; k < N_KINDS; k++) {
		median_log(&ks[k]);
		uint64_t good = ks[k].values - ks[k].bad;
		double mean = good ? ks[k].sum / (double)good : NAN;
		double std = good ? sqrt(fmax(ks[k].sumsq / (double)good - mean * mean, 0.0)) : NAN;
		if (!ks[k].tensors)
			continue;
		json_object_set_new(kinds, kind_names[k], json_pack(
			"{s:I, s:I, s:f, s:f, s:f, s:f, s:I}", "tensors", (json_int_t)ks[k].tensors,
			"values", (json_int_t)ks[k].values, "min", good ? ks[k].min : 0.0, "max",
			good ? ks[k].max : 0.0, "mean", good ? mean : 0.0, "std", good ? std : 0.0,
			"bad", (json_int_t)ks[k].bad));
		if (!json)
			printf("  %-16s %8llu %12llu %12.4g %12.4g %12.4g %12.4g %6llu\n", kind_names[k],
			       (unsigned long long)ks[k].tensors, (unsigned long long)ks[k].values,
			       good ? ks[k].min : NAN, good ? ks[k].max : NAN, mean, std,
			       (unsigned long long)ks[k].bad);
	}
	/* the tensors out of range, in layer order (the table is sorted by name) */
	int rc = CKPT_OK;
	for (int pass_layer = -1, printed = 0; pass_layer < QW_MAX_LAYERS; pass_layer++)
		for (size_t i = 0; i < ck->n_tensors; i++) {
			const qw_tensor *t = ck->tensors[i];
			int k = kind_of(t->name);
			if (k < 0 || layer_of(t->name) != pass_layer)
				continue;
			char why[256];
			judge_tensor(t, &ks[k], why, sizeof why);
			if (!why[0])
				continue;
			rc = CKPT_FAILED;
			json_array_append_new(flagged, json_pack("{s:s, s:s, s:i, s:s}", "tensor", t->name,
								 "kind", kind_names[k], "layer",
								 pass_layer, "why", why));
			if (!json) {
				if (!printed++)
					printf("# out of range (by layer)\n");
				printf("  layer %-4d %s: %s\n", pass_layer, t->name, why);
			}
		}
	if (json) {
		json_object_set_new(out, "kinds", kinds);
		json_object_set_new(out, "out_of_range", flagged);
		char *text = json_dumps(out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("%s\n", text);
		free(text);
	} else {
		json_decref(kinds);
		json_decref(flagged);
		printf("%s\n", rc == CKPT_OK ? "OK" : "FAILED");
	}
	json_decref(out);
	free(ks);
	qw_ckpt_close(ck);
	return rc;
}

// ---------------------------------------------------------------------------------------
// gate-up

static void block_of(const char *dir, int *block);

int ckpt_gate_up(int argc, char **argv)
{
	if (argc != 2) {
		fputs("usage: qwen-ckpt gate-up DIR\n", stderr);
		return CKPT_USAGE;
	}
	qw_checkpoint *ck;
	if (open_dir("gate-up", argv[1], &ck) != CKPT_OK)
		return CKPT_FAILED;
	int block[2];
	block_of(argv[1], block);
	size_t matched = 0, mismatched = 0, straddling = 0, fused = 0;
	for (size_t i = 0; i < ck->n_tensors; i++) {
		const qw_tensor *g = ck->tensors[i];
		const char *at = strstr(g->name, "gate_proj.weight_scale_2");
		if (at && ends_with(g->name, "gate_proj.weight_scale_2")) {
			/* NVFP4: the up projection next to it must share its global scale */
			char up[512];
			snprintf(up, sizeof up, "%.*sup_proj.weight_scale_2", (int)(at - g->name), g->name);
			const qw_tensor *u = qw_ckpt_find(ck, up);
			double gv = value_at(g, 0), uv = u ? value_at(u, 0) : NAN;
			if (u && gv == uv && g->numel == 1 && u->numel == 1) {
				matched++;
			} else {
				mismatched++;
				printf("mismatched  %s = %.9g, %s = %.9g%s\n", g->name, gv, up, uv,
				       u ? "" : " (missing)");
			}
		} else if (ends_with(g->name, "mlp.experts.gate_up_proj_scale_inv") && g->ndim == 3) {
			/* FP8 fused: where does the gate | up boundary fall among the column blocks? */
			char wname[512];
			snprintf(wname, sizeof wname, "%.*s", (int)(strlen(g->name) - 10), g->name);
			const qw_tensor *w = qw_ckpt_find(ck, wname);
			fused++;
			if (!w || w->ndim != 3) {
				printf("mismatched  %s: its weight %s is missing\n", g->name, wname);
				mismatched++;
				continue;
			}
			int64_t I = w->shape[2] / 2, SC = g->shape[2], bc = block[1];
			if (I % bc == 0) {
				printf("aligned     %s: gate columns [0, %lld) | up [%lld, %lld), blocks of "
				       "%lld\n", wname, (long long)I, (long long)I, (long long)(2 * I),
				       (long long)bc);
				matched++;
			} else {
				int64_t blk = I / bc;
				double lo = INFINITY, hi = -INFINITY;
				for (int64_t e = 0; e < g->shape[0]; e++)
					for (int64_t r = 0; r < g->shape[1]; r++) {
						double v = value_at(g, (uint64_t)((e * g->shape[1] + r) * SC + blk));
						lo = fmin(lo, v);
						hi = fmax(hi, v);
					}
				printf("straddling  %s: column block %lld holds gate and up columns (the "
				       "boundary %lld is not a multiple of %lld); its scales span [%g, %g]\n",
				       wname, (long long)blk, (long long)I, (long long)bc, lo, hi);
				straddling++;
			}
		}
	}
	printf("# gate/up: %zu matched, %zu mismatched%s", matched, mismatched,
	       fused ? "" : "\n");
	if (fused)
		printf(", %zu fused FP8 tensors (%zu with a block straddling the boundary)\n", fused,
		       straddling);
	qw_ckpt_close(ck);
	return mismatched || straddling ? CKPT_FAILED : CKPT_OK;
}

// ---------------------------------------------------------------------------------------
// diff

/* Reads tensor t of checkpoint ck as fp32 values of its logical shape: float formats as
 * they are, FP8 through its <name>_scale_inv (blocks of `block`), NVFP4 through weight_scale
 * and weight_scale_2.  NULL if t is none of these. */
static float *dequantize(const qw_checkpoint *ck, const qw_tensor *t, const int *block,
			 uint64_t *n_out)
{
	char sname[512];
	size_t len = strlen(t->name);
	uint64_t n = t->numel;
	if (t->dtype == QW_DT_U8 && ends_with(t->name, ".weight") && t->ndim == 2) {
		snprintf(sname, sizeof sname, "%s_scale", t->name);
		const qw_tensor *s = qw_ckpt_find(ck, sname);
		snprintf(sname, sizeof sname, "%s_scale_2", t->name);
		const qw_tensor *s2 = qw_ckpt_find(ck, sname);
		int64_t R = t->shape[0], C = t->shape[1] * 2;
		if (!s || !s2 || s->numel != (uint64_t)(R * ((C + 15) / 16)))
			return NULL;
		float *out = malloc((size_t)(R * C) * sizeof *out);
		double g = value_at(s2, 0);
		for (int64_t r = 0; out && r < R; r++)
			for (int64_t c = 0; c < C; c++) {
				uint8_t byte = ((const uint8_t *)t->data)[r * (C / 2) + c / 2];
				uint8_t nib = (c & 1) ? byte >> 4 : byte & 0xf;
				out[r * C + c] = (float)(qw_e2m1_to_f32(nib) *
							 value_at(s, (uint64_t)(r * ((C + 15) / 16) + c / 16)) * g);
			}
		*n_out = (uint64_t)(R * C);
		return out;
	}
	float *out = malloc(n * sizeof *out + 1);
	if (!out)
		return NULL;
	*n_out = n;
	if (t->dtype != QW_DT_F8_E4M3) {
		for (uint64_t i = 0; i < n; i++)
			out[i] = (float)value_at(t, i);
		return out;
	}
	if (ends_with(t->name, ".weight"))
		snprintf(sname, sizeof sname, "%.*s.weight_scale_inv", (int)(len - 7), t->name);
	else
		snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
	const qw_tensor *s = qw_ckpt_find(ck, sname);
	if (!s || t->ndim < 2) {
		free(out);
		return NULL;
	}
	uint64_t R = (uint64_t)t->shape[t->ndim - 2], C = (uint64_t)t->shape[t->ndim - 1];
	uint64_t SR = (R + (uint64_t)block[0] - 1) / (uint64_t)block[0];
	uint64_t SC = (C + (uint64_t)block[1] - 1) / (uint64_t)block[1];
	if (s->numel != n / (R * C) * SR * SC) {
		free(out);
		return NULL;
	}
	for (uint64_t i = 0; i < n; i++) {
		uint64_t c = i % C, r = (i / C) % R, m = i / (R * C);
		out[i] = (float)(qw_f8e4m3_to_f32(((const uint8_t *)t->data)[i]) *
				 value_at(s, (m * SR + r / (uint64_t)block[0]) * SC + c / (uint64_t)block[1]));
	}
	return out;
}

static void block_of(const char *dir, int *block)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/config.json", dir);
	qw_config cfg;
	block[0] = block[1] = 128;
	if (qw_config_load(path, &cfg, NULL) == QW_OK && cfg.quant.kind == QW_QUANT_FP8) {
		block[0] = cfg.quant.block[0];
		block[1] = cfg.quant.block[1];
	}
}

int ckpt_diff(int argc, char **argv)
{
	static const struct option opts[] = {{"tensor", required_argument, NULL, 't'},
					     {"bytes", required_argument, NULL, 'b'},
					     {0, 0, 0, 0}};
	const char *pattern = NULL;
	long long max_bytes = -1;
	int c;
	while ((c = getopt_long(argc, argv, "t:b:", opts, NULL)) != -1) {
		if (c == 't')
			pattern = optarg;
		else if (c == 'b') {
			if (!qw_arg_int("qwen-ckpt diff", "--bytes", optarg, 1, INT64_MAX, &max_bytes))
				return CKPT_USAGE;
		} else
			return CKPT_USAGE;
	}
	if (optind != argc - 2) {
		fputs("usage: qwen-ckpt diff A B [--tensor PATTERN] [--bytes N]\n", stderr);
		return CKPT_USAGE;
	}
	qw_checkpoint *a, *b;
	if (open_dir("diff", argv[optind], &a) != CKPT_OK)
		return CKPT_FAILED;
	if (open_dir("diff", argv[optind + 1], &b) != CKPT_OK) {
		qw_ckpt_close(a);
		return CKPT_FAILED;
	}
	int block[2];
	block_of(argv[optind], block);
	size_t same = 0, differ = 0, only_a = 0, only_b = 0, quant = 0;
	for (size_t i = 0; i < a->n_tensors; i++) {
		const qw_tensor *ta = a->tensors[i];
		if (pattern && fnmatch(pattern, ta->name, 0) != 0)
			continue;
		const qw_tensor *tb = qw_ckpt_find(b, ta->name);
		char sa[96], sb[96];
		if (!tb) {
			if (kind_of(ta->name) < 0) {   /* A's own scales are not B's tensors */
				printf("only-in-A  %s\n", ta->name);
				only_a++;
			}
			continue;
		}
		bool quantized = (ta->dtype == QW_DT_F8_E4M3 || ta->dtype == QW_DT_U8) &&
				 qw_dtype_is_float(tb->dtype);
		if (quantized) {
			uint64_t na = 0, nb = 0;
			float *va = dequantize(a, ta, block, &na), *vb = dequantize(b, tb, block, &nb);
			if (!va || !vb || na != nb) {
				printf("differ     %s: cannot dequantise A's %s %s against B's %s %s\n",
				       ta->name, qw_dtype_name(ta->dtype),
				       qw_shape_str(ta->shape, ta->ndim, sa, sizeof sa),
				       qw_dtype_name(tb->dtype),
				       qw_shape_str(tb->shape, tb->ndim, sb, sizeof sb));
				differ++;
			} else {
				double max_abs = 0, se = 0, ss = 0;
				for (uint64_t k = 0; k < na; k++) {
					double d = (double)va[k] - vb[k];
					max_abs = fmax(max_abs, fabs(d));
					se += d * d;
					ss += (double)vb[k] * vb[k];
				}
				printf("quantized  %s: %s vs %s, dequantisation max-abs %.4g, relative RMS "
				       "%.4g\n", ta->name, qw_dtype_name(ta->dtype), qw_dtype_name(tb->dtype),
				       max_abs, ss > 0 ? sqrt(se / ss) : 0.0);
				quant++;
			}
			free(va);
			free(vb);
			continue;
		}
		if (ta->dtype != tb->dtype || ta->ndim != tb->ndim ||
		    memcmp(ta->shape, tb->shape, sizeof ta->shape) != 0) {
			printf("differ     %s: %s %s vs %s %s\n", ta->name, qw_dtype_name(ta->dtype),
			       qw_shape_str(ta->shape, ta->ndim, sa, sizeof sa), qw_dtype_name(tb->dtype),
			       qw_shape_str(tb->shape, tb->ndim, sb, sizeof sb));
			differ++;
			continue;
		}
		uint64_t n = ta->nbytes;
		if (max_bytes >= 0 && (uint64_t)max_bytes < n)
			n = (uint64_t)max_bytes;
		const uint8_t *pa = ta->data, *pb = tb->data;
		uint64_t k = 0;
		while (k < n && pa[k] == pb[k])
			k++;
		if (k < n) {
			printf("differ     %s: bytes differ from offset %llu (0x%02x vs 0x%02x)%s\n",
			       ta->name, (unsigned long long)k, pa[k], pb[k],
			       kind_of(ta->name) >= 0 ? ", a scale" : "");
			differ++;
		} else {
			same++;
		}
	}
	for (size_t i = 0; i < b->n_tensors; i++) {
		const qw_tensor *tb = b->tensors[i];
		if ((!pattern || fnmatch(pattern, tb->name, 0) == 0) && !qw_ckpt_find(a, tb->name) &&
		    kind_of(tb->name) < 0) {
			printf("only-in-B  %s\n", tb->name);
			only_b++;
		}
	}
	printf("# %zu equal, %zu differ, %zu quantized against float, %zu only in A, %zu only in "
	       "B\n", same, differ, quant, only_a, only_b);
	qw_ckpt_close(a);
	qw_ckpt_close(b);
	return differ || only_a || only_b ? CKPT_FAILED : CKPT_OK;
}
