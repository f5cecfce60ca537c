/* preprocess.c - smart_resize, bicubic resize, normalise, patchify.  See preprocess.h. */
#include "daemon/image/preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

qw_status qw_smart_resize(int height, int width, int factor, const qw_preprocess_opts *o,
			  int *out_h, int *out_w, qw_err *err)
{
	double hi = height > width ? height : width, lo = height < width ? height : width;
	if (lo < 1 || hi / lo > o->max_aspect)
		return qw_fail(err, QW_E_ARG, "image of %d x %d: aspect ratio above %.0f (or an empty "
			       "side)", width, height, o->max_aspect);
	/* round() is Python's: half to even, which rint() does in the default rounding mode */
	double h = rint((double)height / factor) * factor, w = rint((double)width / factor) * factor;
	if (h * w > (double)o->max_pixels) {
		double beta = sqrt((double)height * width / (double)o->max_pixels);
		h = fmax(factor, floor(height / beta / factor) * factor);
		w = fmax(factor, floor(width / beta / factor) * factor);
	} else if (h * w < (double)o->min_pixels) {
		double beta = sqrt((double)o->min_pixels / ((double)height * width));
		h = ceil(height * beta / factor) * factor;
		w = ceil(width * beta / factor) * factor;
	}
	if (h > 1e6 || w > 1e6)
		return qw_fail(err, QW_E_ARG, "image of %d x %d resizes to an unreasonable size", width,
			       height);
	*out_h = (int)h;
	*out_w = (int)w;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// torchvision's uint8 antialiased bicubic (a port of PIL's ImagingResample)

static double cubic(double x)
{
	const double a = -0.5;
	x = fabs(x);
	if (x < 1.0)
		return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
	if (x < 2.0)
		return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
	return 0.0;
}

/* Per output index: the first input index, the tap count, and `taps` int16 weights. */
typedef struct axis_weights {
	int *first, *count;
	int16_t *w;     /* (out, taps) */
	int taps, precision;
} axis_weights;

static void axis_free(axis_weights *a)
{
	free(a->first);
	free(a->count);
	free(a->w);
}

static bool axis_build(int in, int out, axis_weights *a)
{
	double scale = (double)in / out, fs = scale > 1.0 ? scale : 1.0, support = 2.0 * fs;
	a->taps = (int)ceil(support) * 2 + 1;
	a->first = malloc((size_t)out * sizeof *a->first);
	a->count = malloc((size_t)out * sizeof *a->count);
	a->w = calloc((size_t)out * (size_t)a->taps, sizeof *a->w);
	double *wd = calloc((size_t)out * (size_t)a->taps, sizeof *wd);
	if (!a->first || !a->count || !a->w || !wd) {
		free(wd);
		return false;
	}
	double max_w = 0.0;
	for (int o = 0; o < out; o++) {
		double center = (o + 0.5) * scale;
		int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
		lo = lo < 0 ? 0 : lo;
		hi = hi > in ? in : hi;
		int n = hi - lo;
		if (n > a->taps)
			n = a->taps;
		double total = 0.0, *row = wd + (size_t)o * (size_t)a->taps;
		for (int k = 0; k < n; k++)
			total += row[k] = cubic((lo + k - center + 0.5) / fs);
		for (int k = 0; k < n; k++) {
			row[k] = total != 0.0 ? row[k] / total : 0.0;
			max_w = fmax(max_w, row[k]);
		}
		a->first[o] = lo;
		a->count[o] = n;
	}
	int p;
	for (p = 0; p < 22; p++)
		if ((int)(0.5 + max_w * (double)(1 << (p + 1))) >= (1 << 15))
			break;
	a->precision = p;
	for (size_t i = 0; i < (size_t)out * (size_t)a->taps; i++) {
		double v = wd[i] * (double)(1 << p);
		a->w[i] = (int16_t)(v < 0 ? v - 0.5 : v + 0.5);
	}
	free(wd);
	return true;
}

static uint8_t clip8(int64_t v, int precision)
{
	v >>= precision;
	return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

qw_status qw_resize_bicubic(const qw_image *in, int out_h, int out_w, qw_image *out, qw_err *err)
{
	axis_weights ax = {0}, ay = {0};
	uint8_t *mid = malloc((size_t)in->height * (size_t)out_w * 3);
	uint8_t *dst = malloc((size_t)out_h * (size_t)out_w * 3);
	if (!mid || !dst || !axis_build(in->width, out_w, &ax) || !axis_build(in->height, out_h, &ay)) {
		free(mid);
		free(dst);
		axis_free(&ax);
		axis_free(&ay);
		return qw_fail(err, QW_E_NOMEM, "out of memory resizing to %d x %d", out_w, out_h);
	}
	/* horizontal: every input row, kept as uint8 */
	for (int y = 0; y < in->height; y++)
		for (int x = 0; x < out_w; x++) {
			const int16_t *w = ax.w + (size_t)x * (size_t)ax.taps;
			const uint8_t *src = in->rgb + ((size_t)y * (size_t)in->width + (size_t)ax.first[x]) * 3;
			for (int c = 0; c < 3; c++) {
				int64_t acc = (int64_t)1 << (ax.precision - 1);
				for (int k = 0; k < ax.count[x]; k++)
					acc += (int64_t)src[3 * k + c] * w[k];
				mid[((size_t)y * (size_t)out_w + (size_t)x) * 3 + (size_t)c] = clip8(acc, ax.precision);
			}
		}
	/* vertical */
	for (int y = 0; y < out_h; y++) {
		const int16_t *w = ay.w + (size_t)y * (size_t)ay.taps;
		for (int x = 0; x < out_w; x++)
			for (int c = 0; c < 3; c++) {
				int64_t acc = (int64_t)1 << (ay.precision - 1);
				for (int k = 0; k < ay.count[y]; k++)
					acc += (int64_t)mid[(((size_t)ay.first[y] + (size_t)k) * (size_t)out_w + (size_t)x) * 3 + (size_t)c] * w[k];
				dst[((size_t)y * (size_t)out_w + (size_t)x) * 3 + (size_t)c] = clip8(acc, ay.precision);
			}
	}
	free(mid);
	axis_free(&ax);
	axis_free(&ay);
	out->width = out_w;
	out->height = out_h;
	out->rgb = dst;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------

qw_status qw_preprocess_plan(int height, int width, const qw_vision_config *vc,
			     const qw_preprocess_opts *o, int *out_h, int *out_w, int *n_tokens,
			     qw_err *err)
{
	int P = vc->patch_size, m = vc->spatial_merge_size;
	int h, w;
	qw_status st = qw_smart_resize(height, width, P * m, o, &h, &w, err);
	if (st != QW_OK)
		return st;
	int tokens = (h / P / m) * (w / P / m);
	if (o->max_tokens > 0 && tokens > o->max_tokens)
		return qw_fail(err, QW_E_LIMIT, "image of %d x %d needs %d image tokens (resized to %d x "
			       "%d), more than the %d allowed", width, height, tokens, w, h,
			       o->max_tokens);
	*out_h = h;
	*out_w = w;
	*n_tokens = tokens;
	return QW_OK;
}

qw_status qw_preprocess_resize(const qw_image *img, const qw_vision_config *vc,
			       const qw_preprocess_opts *o, qw_image *resized, qw_err *err)
{
	memset(resized, 0, sizeof *resized);
	int h, w, tokens;
	qw_status st = qw_preprocess_plan(img->height, img->width, vc, o, &h, &w, &tokens, err);
	if (st != QW_OK)
		return st;
	if (h != img->height || w != img->width)
		return qw_resize_bicubic(img, h, w, resized, err);
	size_t bytes = (size_t)h * (size_t)w * 3;
	resized->rgb = malloc(bytes);
	if (!resized->rgb)
		return qw_fail(err, QW_E_NOMEM, "out of memory for a %d x %d image", w, h);
	memcpy(resized->rgb, img->rgb, bytes);
	resized->width = w;
	resized->height = h;
	return QW_OK;
}

qw_status qw_patchify(const qw_image *r, const qw_vision_config *vc, qw_pixels *out,
		      qw_err *err)
{
	memset(out, 0, sizeof *out);
	int P = vc->patch_size, m = vc->spatial_merge_size, Tp = vc->temporal_patch_size;
	int h = r->height, w = r->width;
	if (h < P * m || w < P * m || h % (P * m) || w % (P * m))
		return qw_fail(err, QW_E_ARG, "an image of %d x %d cannot be cut into %d x %d merge "
			       "windows", w, h, P * m, P * m);
	/* one image is one frame, repeated to fill a temporal patch */
	int gt = 1, gh = h / P, gw = w / P;
	out->grid_t = gt;
	out->grid_h = gh;
	out->grid_w = gw;
	out->rows = gt * gh * gw;
	out->cols = 3 * Tp * P * P;
	out->n_tokens = out->rows / (m * m);
	out->values = malloc((size_t)out->rows * (size_t)out->cols * sizeof *out->values);
	if (!out->values)
		return qw_fail(err, QW_E_NOMEM, "out of memory for %d x %d pixel values", out->rows,
			       out->cols);
	/* row = ((bh * gw/m + bw) * m + ih) * m + iw, col = ((c * Tp + tt) * P + py) * P + px */
	for (int bh = 0; bh < gh / m; bh++)
		for (int bw = 0; bw < gw / m; bw++)
			for (int ih = 0; ih < m; ih++)
				for (int iw = 0; iw < m; iw++) {
					size_t row = (((size_t)bh * (size_t)(gw / m) + (size_t)bw) * (size_t)m +
						      (size_t)ih) * (size_t)m + (size_t)iw;
					float *dst = out->values + row * (size_t)out->cols;
					int y0 = (bh * m + ih) * P, x0 = (bw * m + iw) * P;
					for (int c = 0; c < 3; c++)
						for (int tt = 0; tt < Tp; tt++)
							for (int py = 0; py < P; py++)
								for (int px = 0; px < P; px++) {
									uint8_t v = r->rgb[((size_t)(y0 + py) * (size_t)w + (size_t)(x0 + px)) * 3 + (size_t)c];
									*dst++ = ((float)v - 127.5f) / 127.5f;
								}
				}
	return QW_OK;
}

qw_status qw_preprocess(const qw_image *img, const qw_vision_config *vc,
			const qw_preprocess_opts *o, qw_pixels *out, qw_err *err)
{
	memset(out, 0, sizeof *out);
	qw_image r;
	qw_status st = qw_preprocess_resize(img, vc, o, &r, err);
	if (st == QW_OK)
		st = qw_patchify(&r, vc, out, err);
	qw_image_free(&r);
	return st;
}

void qw_pixels_free(qw_pixels *p)
{
	free(p->values);
	memset(p, 0, sizeof *p);
}
