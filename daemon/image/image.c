/* image.c - JPEG / PNG / WebP decoding to RGB.  See image.h. */
#include "daemon/image/image.h"
#include "daemon/image/format.h"

#include <stdio.h>   /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <webp/decode.h>

static qw_status check_size(int w, int h, const qw_image_limits *lim, const char *fmt,
			    qw_err *err)
{
	if (w <= 0 || h <= 0)
		return qw_fail(err, QW_E_ARG, "%s image has no pixels (%d x %d)", fmt, w, h);
	if (w > lim->max_side || h > lim->max_side || (int64_t)w * h > lim->max_pixels)
		return qw_fail(err, QW_E_LIMIT, "%s image of %d x %d is too large (at most %d pixels a "
			       "side and %lld pixels)", fmt, w, h, lim->max_side,
			       (long long)lim->max_pixels);
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// JPEG

typedef struct jpeg_failure {
	struct jpeg_error_mgr mgr;
	jmp_buf jump;
	char msg[JMSG_LENGTH_MAX];
} jpeg_failure;

static void jpeg_fail(j_common_ptr cinfo)
{
	jpeg_failure *f = (jpeg_failure *)cinfo->err;
	f->mgr.format_message(cinfo, f->msg);
	longjmp(f->jump, 1);
}

static void jpeg_quiet(j_common_ptr cinfo, int level)
{
	if (level < 0)   /* a warning (e.g. premature end of data): counted, not printed */
		cinfo->err->num_warnings++;
}

static qw_status decode_jpeg(const uint8_t *data, size_t len, const qw_image_limits *lim,
			     bool header_only, qw_image *out, qw_err *err)
{
	struct jpeg_decompress_struct cinfo;
	jpeg_failure fail;
	volatile qw_status st = QW_OK;
	uint8_t *volatile rgb = NULL;
	cinfo.err = jpeg_std_error(&fail.mgr);
	fail.mgr.error_exit = jpeg_fail;
	fail.mgr.emit_message = jpeg_quiet;
	if (setjmp(fail.jump)) {
		free(rgb);
		jpeg_destroy_decompress(&cinfo);
		return qw_fail(err, QW_E_ARG, "malformed JPEG: %s", fail.msg);
	}
	jpeg_create_decompress(&cinfo);
	jpeg_mem_src(&cinfo, data, (unsigned long)len);
	jpeg_read_header(&cinfo, TRUE);
	if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
		st = qw_fail(err, QW_E_ARG, "CMYK JPEG images are not supported");
		goto out;
	}
	if ((st = check_size((int)cinfo.image_width, (int)cinfo.image_height, lim, "JPEG", err)))
		goto out;
	if (header_only) {
		out->width = (int)cinfo.image_width;
		out->height = (int)cinfo.image_height;
		goto out;
	}
	cinfo.out_color_space = JCS_RGB;
	jpeg_start_decompress(&cinfo);
	size_t stride = (size_t)cinfo.output_width * 3;
	rgb = malloc(stride * cinfo.output_height);
	if (!rgb) {
		st = qw_fail(err, QW_E_NOMEM, "out of memory decoding a JPEG image");
		goto out;
	}
	while (cinfo.output_scanline < cinfo.output_height) {
		JSAMPROW row = rgb + stride * cinfo.output_scanline;
		jpeg_read_scanlines(&cinfo, &row, 1);
	}
	if (fail.mgr.num_warnings) {   /* truncated data reads as grey: refuse it */
		st = qw_fail(err, QW_E_ARG, "malformed JPEG: the data ends early or is corrupt");
		goto out;
	}
	jpeg_finish_decompress(&cinfo);
	out->width = (int)cinfo.output_width;
	out->height = (int)cinfo.output_height;
	out->rgb = rgb;
	rgb = NULL;
out:
	free(rgb);
	jpeg_destroy_decompress(&cinfo);
	return st;
}

// ---------------------------------------------------------------------------------------
// PNG

typedef struct png_source {
	const uint8_t *data;
	size_t len, at;
	char msg[256];
} png_source;

static void png_read_mem(png_structp png, png_bytep dst, png_size_t n)
{
	png_source *src = png_get_io_ptr(png);
	if (src->len - src->at < n)
		png_error(png, "the data ends early");
	memcpy(dst, src->data + src->at, n);
	src->at += n;
}

static void png_fail(png_structp png, png_const_charp msg)
{
	png_source *src = png_get_io_ptr(png);
	snprintf(src->msg, sizeof src->msg, "%s", msg);
	png_longjmp(png, 1);
}

static void png_quiet(png_structp png, png_const_charp msg)
{
	(void)png;
	(void)msg;
}

static qw_status decode_png(const uint8_t *data, size_t len, const qw_image_limits *lim,
			    bool header_only, qw_image *out, qw_err *err)
{
	png_source src = {data, len, 0, "unknown error"};
	png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
	png_infop info = png ? png_create_info_struct(png) : NULL;
	if (!png || !info) {
		png_destroy_read_struct(&png, &info, NULL);
		return qw_fail(err, QW_E_NOMEM, "out of memory decoding a PNG image");
	}
	uint8_t *volatile rgb = NULL;
	png_bytep *volatile rows = NULL;
	png_set_error_fn(png, &src, png_fail, png_quiet);
	png_set_read_fn(png, &src, png_read_mem);
	if (setjmp(png_jmpbuf(png))) {
		free(rgb);
		free(rows);
		png_destroy_read_struct(&png, &info, NULL);
		return qw_fail(err, QW_E_ARG, "malformed PNG: %s", src.msg);
	}
	png_read_info(png, info);
	int w = (int)png_get_image_width(png, info), h = (int)png_get_image_height(png, info);
	qw_status st = check_size(w, h, lim, "PNG", err);
	if (st != QW_OK || header_only) {
		png_destroy_read_struct(&png, &info, NULL);
		out->width = st == QW_OK ? w : 0;
		out->height = st == QW_OK ? h : 0;
		return st;
	}
	/* to 8-bit RGB as PIL's convert("RGB"): expand palette and low-bit grey, cut 16-bit
	 * channels to their high byte, replicate grey, drop alpha */
	png_set_expand(png);
	png_set_strip_16(png);
	png_set_gray_to_rgb(png);
	png_set_strip_alpha(png);
	png_set_interlace_handling(png);
	png_read_update_info(png, info);
	if (png_get_rowbytes(png, info) != (size_t)w * 3)
		png_error(png, "unexpected pixel layout after conversion to RGB");
	rgb = malloc((size_t)w * (size_t)h * 3);
	rows = malloc((size_t)h * sizeof *rows);
	if (!rgb || !rows)
		png_error(png, "out of memory");
	for (int y = 0; y < h; y++)
		rows[y] = rgb + (size_t)y * (size_t)w * 3;
	png_read_image(png, rows);
	png_read_end(png, NULL);
	png_destroy_read_struct(&png, &info, NULL);
	free(rows);
	out->width = w;
	out->height = h;
	out->rgb = rgb;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// WebP

static qw_status decode_webp(const uint8_t *data, size_t len, const qw_image_limits *lim,
			     bool header_only, qw_image *out, qw_err *err)
{
	int w, h;
	if (!WebPGetInfo(data, len, &w, &h))
		return qw_fail(err, QW_E_ARG, "malformed WebP: the header cannot be read");
	qw_status st = check_size(w, h, lim, "WebP", err);
	if (st != QW_OK)
		return st;
	if (header_only) {
		out->width = w;
		out->height = h;
		return QW_OK;
	}
	uint8_t *rgb = malloc((size_t)w * (size_t)h * 3);
	if (!rgb)
		return qw_fail(err, QW_E_NOMEM, "out of memory decoding a WebP image");
	if (!WebPDecodeRGBInto(data, len, rgb, (size_t)w * (size_t)h * 3, w * 3)) {
		free(rgb);
		return qw_fail(err, QW_E_ARG, "malformed WebP: the image data cannot be decoded");
	}
	out->width = w;
	out->height = h;
	out->rgb = rgb;
	return QW_OK;
}

// ---------------------------------------------------------------------------------------

/* Decodes data, or with header_only reads its size alone (out->rgb stays NULL). */
static qw_status decode(const void *data, size_t len, const qw_image_limits *lim,
			bool header_only, qw_image *out, qw_err *err)
{
	const uint8_t *p = data;
	qw_image_limits def = QW_IMAGE_LIMITS_DEFAULT;
	if (!lim)
		lim = &def;
	memset(out, 0, sizeof *out);
	if (len > lim->max_bytes)
		return qw_fail(err, QW_E_LIMIT, "image of %zu bytes is larger than the %zu-byte limit",
			       len, lim->max_bytes);
	const char *name;
	switch (qw_image_sniff(p, len, &name)) {
	case QW_IMAGE_PNG: return decode_png(p, len, lim, header_only, out, err);
	case QW_IMAGE_JPEG: return decode_jpeg(p, len, lim, header_only, out, err);
	case QW_IMAGE_WEBP: return decode_webp(p, len, lim, header_only, out, err);
	case QW_IMAGE_UNSUPPORTED:
		return qw_fail(err, QW_E_ARG, "%s images are not supported (JPEG, PNG or WebP)", name);
	case QW_IMAGE_UNKNOWN: break;
	}
	return qw_fail(err, QW_E_ARG, "not an image: the data is neither JPEG, PNG nor WebP");
}

qw_status qw_image_decode(const void *data, size_t len, const qw_image_limits *lim, qw_image *out,
			  qw_err *err)
{
	return decode(data, len, lim, false, out, err);
}

qw_status qw_image_probe(const void *data, size_t len, const qw_image_limits *lim, int *width,
			 int *height, qw_err *err)
{
	qw_image img;
	qw_status st = decode(data, len, lim, true, &img, err);
	*width = img.width;
	*height = img.height;
	return st;
}

void qw_image_free(qw_image *img)
{
	free(img->rgb);
	memset(img, 0, sizeof *img);
}
