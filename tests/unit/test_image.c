/* test_image.c - image decoding and preprocessing: HF's pixel_values reproduced from the
 * fixture image, PNG / JPEG / WebP decoding, sizes read from headers alone, smart_resize
 * against worked examples, and bad images refused with a reason. */
#include "tests/unit/helpers.h"

#include <stdio.h>   /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <math.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>
#include <webp/encode.h>

#include "daemon/image/preprocess.h"
#include "loader/config.h"
#include "loader/safetensors.h"

/* The fixture's input image, as HF received it. */
static qw_image fixture_image(qw_st_file **ref)
{
	qw_err err = {0};
	if (qw_st_open(fixture("hf/tiny-moe/reference.safetensors"), ref, &err) != QW_OK)
		fail_msg("%s", err.msg);
	const qw_tensor *t = qw_st_find(*ref, "image_hwc_u8");
	assert_non_null(t);
	qw_image img = {(int)t->shape[1], (int)t->shape[0], malloc(t->nbytes)};
	memcpy(img.rgb, t->data, t->nbytes);
	return img;
}

static void test_pixel_values_match_hf(void **state)
{
	qw_st_file *ref;
	qw_image img = fixture_image(&ref);
	qw_config cfg;
	qw_err err = {0};
	assert_int_equal(qw_config_load(fixture("hf/tiny-moe/model/config.json"), &cfg, &err), QW_OK);
	qw_preprocess_opts o = QW_PREPROCESS_DEFAULT;
	qw_pixels px;
	assert_int_equal(qw_preprocess(&img, &cfg.vision, &o, &px, &err), QW_OK);
	const qw_tensor *want = qw_st_find(ref, "pixel_values_fast");
	const qw_tensor *grid = qw_st_find(ref, "image_grid_thw_fast");
	int64_t g[3];
	memcpy(g, grid->data, sizeof g);
	assert_int_equal(px.grid_t, g[0]);
	assert_int_equal(px.grid_h, g[1]);
	assert_int_equal(px.grid_w, g[2]);
	assert_int_equal(px.rows, want->shape[0]);
	assert_int_equal(px.cols, want->shape[1]);
	assert_int_equal(px.n_tokens, 70);
	const float *w = want->data;
	size_t n = (size_t)px.rows * (size_t)px.cols, exact = 0;
	double max_abs = 0;
	for (size_t i = 0; i < n; i++) {
		float wv;
		memcpy(&wv, w + i, 4);
		exact += wv == px.values[i];
		max_abs = fmax(max_abs, fabs((double)wv - px.values[i]));
	}
	if (exact != n)
		fail_msg("%zu of %zu values exact, max-abs %g", exact, n, max_abs);
	qw_pixels_free(&px);
	o.max_tokens = 69;   /* the image needs 70 */
	assert_int_equal(qw_preprocess(&img, &cfg.vision, &o, &px, &err), QW_E_LIMIT);
	assert_contains(err.msg, "needs 70 image tokens");
	qw_image_free(&img);
	qw_st_close(ref);
}

/* Worked examples: the spec's 150 x 200 -> 224 x 320; half-to-even rounding; the budget. */
static void test_smart_resize(void **state)
{
	qw_preprocess_opts o = QW_PREPROCESS_DEFAULT;
	qw_err err = {0};
	int h, w;
	assert_int_equal(qw_smart_resize(150, 200, 32, &o, &h, &w, &err), QW_OK);
	assert_int_equal(h, 224);
	assert_int_equal(w, 320);
	/* 1008 / 32 = 31.5 rounds to 32 (even), 1040 / 32 = 32.5 rounds to 32 (even) */
	assert_int_equal(qw_smart_resize(1008, 1040, 32, &o, &h, &w, &err), QW_OK);
	assert_int_equal(h, 1024);
	assert_int_equal(w, 1024);
	/* past max_pixels: scaled down by sqrt(H W / max) and floored to the factor */
	assert_int_equal(qw_smart_resize(8000, 6000, 32, &o, &h, &w, &err), QW_OK);
	assert_true((int64_t)h * w <= o.max_pixels);
	assert_int_equal(h % 32 + w % 32, 0);
	assert_int_equal(qw_smart_resize(10, 2500, 32, &o, &h, &w, &err), QW_E_ARG);
	assert_contains(err.msg, "aspect ratio");
}

static void test_resize_identity_and_flat(void **state)
{
	/* a flat colour stays that colour at any size (weights sum to one) */
	qw_image img = {37, 23, malloc(37 * 23 * 3)};
	for (int i = 0; i < 37 * 23; i++) {
		img.rgb[3 * i] = 10;
		img.rgb[3 * i + 1] = 200;
		img.rgb[3 * i + 2] = 255;
	}
	qw_image out;
	qw_err err = {0};
	assert_int_equal(qw_resize_bicubic(&img, 64, 96, &out, &err), QW_OK);
	for (int i = 0; i < 64 * 96; i++)
		assert_true(out.rgb[3 * i] == 10 && out.rgb[3 * i + 1] == 200 && out.rgb[3 * i + 2] == 255);
	qw_image_free(&out);
	qw_image_free(&img);
}

// ---------------------------------------------------------------------------------------
// decoding


static void test_png(void **state)
{
	qw_st_file *ref;
	qw_image img = fixture_image(&ref);
	int types[] = {PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGBA};
	for (int i = 0; i < 2; i++) {
		membuf m = encode_png(&img, types[i]);
		qw_image got;
		qw_err err = {0};
		assert_int_equal(qw_image_decode(m.p, m.n, NULL, &got, &err), QW_OK);
		assert_int_equal(got.width, 200);
		assert_int_equal(got.height, 150);
		assert_memory_equal(got.rgb, img.rgb, 200 * 150 * 3);   /* lossless; alpha dropped */
		qw_image_free(&got);
		/* truncated */
		assert_int_equal(qw_image_decode(m.p, m.n / 2, NULL, &got, &err), QW_E_ARG);
		assert_contains(err.msg, "malformed PNG");
		free(m.p);
	}
	membuf g = encode_png(&img, PNG_COLOR_TYPE_GRAY);
	qw_image got;
	qw_err err = {0};
	assert_int_equal(qw_image_decode(g.p, g.n, NULL, &got, &err), QW_OK);
	for (int i = 0; i < 200 * 150; i++)   /* grey replicated to R, G and B */
		assert_true(got.rgb[3 * i] == img.rgb[3 * i] && got.rgb[3 * i + 1] == img.rgb[3 * i] &&
			    got.rgb[3 * i + 2] == img.rgb[3 * i]);
	qw_image_free(&got);
	qw_image_limits small = {1 << 20, 100, 1 << 20};
	assert_int_equal(qw_image_decode(g.p, g.n, &small, &got, &err), QW_E_LIMIT);
	assert_contains(err.msg, "200 x 150 is too large");
	free(g.p);
	qw_image_free(&img);
	qw_st_close(ref);
}

/* rgb (w x h) as a JPEG of the given quality; free *out. */
static unsigned long encode_jpeg(const uint8_t *rgb, int w, int h, int quality,
				 unsigned char **out)
{
	struct jpeg_compress_struct c;
	struct jpeg_error_mgr e;
	c.err = jpeg_std_error(&e);
	jpeg_create_compress(&c);
	unsigned long n = 0;
	*out = NULL;
	jpeg_mem_dest(&c, out, &n);
	c.image_width = (JDIMENSION)w;
	c.image_height = (JDIMENSION)h;
	c.input_components = 3;
	c.in_color_space = JCS_RGB;
	jpeg_set_defaults(&c);
	jpeg_set_quality(&c, quality, TRUE);
	jpeg_start_compress(&c, TRUE);
	while (c.next_scanline < c.image_height) {
		JSAMPROW row = (JSAMPROW)rgb + (size_t)c.next_scanline * (size_t)w * 3;
		jpeg_write_scanlines(&c, &row, 1);
	}
	jpeg_finish_compress(&c);
	jpeg_destroy_compress(&c);
	return n;
}

static void test_jpeg_and_webp(void **state)
{
	qw_st_file *ref;
	qw_image img = fixture_image(&ref);
	/* JPEG at quality 95 through libjpeg, of a smooth image (the fixture image is noise,
	 * which JPEG cannot keep): lossy, so close, not equal */
	qw_image smooth = {200, 150, malloc(200 * 150 * 3)};
	for (int y = 0; y < 150; y++)
		for (int x = 0; x < 200; x++) {
			uint8_t *p = smooth.rgb + ((size_t)y * 200 + (size_t)x) * 3;
			p[0] = (uint8_t)x;
			p[1] = (uint8_t)(y + 50);
			p[2] = (uint8_t)((x + y) / 2);
		}
	unsigned char *buf;
	unsigned long n = encode_jpeg(smooth.rgb, 200, 150, 95, &buf);
	qw_image got;
	qw_err err = {0};
	assert_int_equal(qw_image_decode(buf, n, NULL, &got, &err), QW_OK);
	assert_int_equal(got.width, 200);
	double sum = 0;
	for (int i = 0; i < 200 * 150 * 3; i++)
		sum += fabs((double)got.rgb[i] - smooth.rgb[i]);
	if (sum / (200 * 150 * 3) >= 2.0)
		fail_msg("JPEG round trip: mean abs error %.2f", sum / (200 * 150 * 3));
	qw_image_free(&got);
	assert_int_equal(qw_image_decode(buf, n / 3, NULL, &got, &err), QW_E_ARG);
	assert_contains(err.msg, "malformed JPEG");
	free(buf);
	qw_image_free(&smooth);

	uint8_t *webp;
	size_t wn = WebPEncodeLosslessRGB(img.rgb, 200, 150, 600, &webp);
	assert_true(wn > 0);
	assert_int_equal(qw_image_decode(webp, wn, NULL, &got, &err), QW_OK);
	assert_memory_equal(got.rgb, img.rgb, 200 * 150 * 3);
	qw_image_free(&got);
	assert_int_equal(qw_image_decode(webp, 20, NULL, &got, &err), QW_E_ARG);
	WebPFree(webp);
	qw_image_free(&img);
	qw_st_close(ref);
}

/* The size from the header alone: probed images whose data past the header is cut or
 * broken still give their size (while decoding them fails), with decoding's refusals of
 * sizes past the limits and of other formats. */
static void test_probe(void **state)
{
	qw_st_file *ref;
	qw_image img = fixture_image(&ref);
	qw_err err = {0};
	qw_image got;
	int w, h;
	/* PNG: the image data (IDAT) scrambled */
	membuf png = encode_png(&img, PNG_COLOR_TYPE_RGB);
	uint8_t *idat = memmem(png.p, png.n, "IDAT", 4);
	assert_non_null(idat);
	memset(idat + 4, 0xaa, (size_t)(png.p + png.n - idat) - 16);
	/* JPEG: cut 20 bytes after the start of the scan */
	unsigned char *jpg;
	unsigned long jn = encode_jpeg(img.rgb, 200, 150, 75, &jpg);
	uint8_t *sos = memmem(jpg, jn, "\xff\xda", 2);
	assert_non_null(sos);
	size_t jcut = (size_t)(sos - jpg) + 20;
	/* WebP: its first 30 bytes */
	uint8_t *webp;
	size_t wn = WebPEncodeLosslessRGB(img.rgb, 200, 150, 600, &webp);
	assert_true(wn > 30);
	struct {
		const uint8_t *p;
		size_t n;
		const char *why;
	} cases[] = {{png.p, png.n, "malformed PNG"}, {jpg, jcut, "malformed JPEG"},
		     {webp, 30, "malformed WebP"}};
	for (int i = 0; i < 3; i++) {
		if (qw_image_probe(cases[i].p, cases[i].n, NULL, &w, &h, &err) != QW_OK)
			fail_msg("case %d: %s", i, err.msg);
		assert_int_equal(w, 200);
		assert_int_equal(h, 150);
		assert_int_equal(qw_image_decode(cases[i].p, cases[i].n, NULL, &got, &err), QW_E_ARG);
		assert_contains(err.msg, cases[i].why);
		qw_image_limits small = {1 << 20, 199, 1 << 20};
		assert_int_equal(qw_image_probe(cases[i].p, cases[i].n, &small, &w, &h, &err), QW_E_LIMIT);
		assert_contains(err.msg, "200 x 150 is too large");
	}
	assert_int_equal(qw_image_probe("GIF89a\x01\x00\x01\x00", 10, NULL, &w, &h, &err), QW_E_ARG);
	assert_contains(err.msg, "GIF images are not supported");
	assert_int_equal(qw_image_probe("hello", 5, NULL, &w, &h, &err), QW_E_ARG);
	assert_contains(err.msg, "not an image");
	assert_int_equal(qw_image_probe(png.p, 20, NULL, &w, &h, &err), QW_E_ARG);   /* no IHDR */
	assert_contains(err.msg, "malformed PNG");
	WebPFree(webp);
	free(jpg);
	free(png.p);
	qw_image_free(&img);
	qw_st_close(ref);
}

static void test_not_images(void **state)
{
	qw_image got;
	qw_err err = {0};
	assert_int_equal(qw_image_decode("GIF89a\x01\x00\x01\x00", 10, NULL, &got, &err), QW_E_ARG);
	assert_contains(err.msg, "GIF images are not supported");
	assert_int_equal(qw_image_decode("hello", 5, NULL, &got, &err), QW_E_ARG);
	assert_contains(err.msg, "not an image");
	assert_int_equal(qw_image_decode("", 0, NULL, &got, &err), QW_E_ARG);
	qw_image_limits tiny = {4, 100, 100};
	assert_int_equal(qw_image_decode("\x89PNG\r\n\x1a\n", 8, &tiny, &got, &err), QW_E_LIMIT);
	assert_contains(err.msg, "larger than the 4-byte limit");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pixel_values_match_hf),
		cmocka_unit_test(test_smart_resize),
		cmocka_unit_test(test_resize_identity_and_flat),
		cmocka_unit_test(test_png),
		cmocka_unit_test(test_jpeg_and_webp),
		cmocka_unit_test(test_probe),
		cmocka_unit_test(test_not_images),
	};
	return cmocka_run_group_tests_name("image", tests, NULL, NULL);
}
