/* make_seeds.c - writes the fuzz targets' seed inputs from the fixtures, one folder a
 * target under OUT: loader/ (the real configs, a small safetensors file), request/ and
 * prepare/ (client requests of every op, with the fixture image), tokenizer/ (the texts
 * of the tokenizer cases), image/ (the fixture image, and a small copy of it as grey
 * interlaced PNG, progressive JPEG and WebP).
 * Run from the repository root:  make_seeds OUT  (scons fuzz runs it). */
#include <stdio.h>   /* before jpeglib.h, which uses FILE */
#include <jansson.h>
#include <jpeglib.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <webp/encode.h>

#include "daemon/image/image.h"
#include "daemon/image/preprocess.h"
#include "ipc/protocol.h"
#include "loader/st_writer.h"

static const char *out_dir;

static void die(const char *what)
{
	fprintf(stderr, "make_seeds: %s\n", what);
	exit(1);
}

static void put(const char *target, const char *name, const void *head, size_t nhead,
		const void *data, size_t n)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", out_dir, target);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/%s/%s", out_dir, target, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(head, 1, nhead, f) != nhead || fwrite(data, 1, n, f) != n || fclose(f))
		die(path);
}

static char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die(path);
	fseek(f, 0, SEEK_END);
	*n = (size_t)ftell(f);
	rewind(f);
	char *p = malloc(*n + 1);
	if (fread(p, 1, *n, f) != *n)
		die(path);
	fclose(f);
	p[*n] = '\0';
	return p;
}

// ---------------------------------------------------------------------------------------

static qw_status fill(void *ctx, size_t index, void *buf, uint64_t nbytes, qw_err *err)
{
	memset(buf, (int)(0x3f + index), nbytes);
	return QW_OK;
}

static void loader_seeds(void)
{
	static const char *const configs[] = {"Qwen3-VL-235B-A22B-Thinking", "Qwen3-VL-8B-Instruct",
					      "Qwen3-30B-A3B", "Qwen3-8B"};
	for (int i = 0; i < 4; i++) {
		char path[256], name[64];
		snprintf(path, sizeof path, "tests/fixtures/configs/%s.json", configs[i]);
		size_t n;
		char *json = slurp(path, &n);
		snprintf(name, sizeof name, "config-%d", i);
		put("loader", name, "\x01", 1, json, n);
		free(json);
	}
	/* a small safetensors file of two tensors */
	qw_st_entry e[] = {{"a.weight", QW_DT_BF16, 2, {2, 3}}, {"b.bias", QW_DT_F32, 1, {4}}};
	char path[4096];
	snprintf(path, sizeof path, "%s/small.safetensors", out_dir);
	qw_err err;
	if (qw_st_write(path, e, 2, fill, NULL, &err) != QW_OK)
		die(err.msg);
	size_t n;
	char *st = slurp(path, &n);
	put("loader", "safetensors", "\x00", 1, st, n);
	free(st);
	remove(path);
}

static void request_seed(const char *name, const qw_request *r)
{
	char *buf;
	size_t len;
	qw_err err;
	if (qw_request_encode(r, &buf, &len, &err) != QW_OK)
		die(err.msg);
	put("request", name, "", 0, buf, len);
	put("prepare", name, "", 0, buf, len);
	free(buf);
}

static void request_seeds(const char *png, size_t png_len)
{
	request_seed("status", &(qw_request){.op = QW_OP_STATUS});
	request_seed("shutdown", &(qw_request){.op = QW_OP_SHUTDOWN});
	request_seed("cancel", &(qw_request){.op = QW_OP_CANCEL, .target = 7});
	const char *stop[] = {"\n\n", "END"};
	size_t stop_len[] = {2, 3};
	request_seed("prompt", &(qw_request){.op = QW_OP_SUBMIT, .prompt = "Tell me a story.",
					     .prompt_len = 16, .max_tokens = 32, .temperature = 0.7,
					     .top_p = 0.9, .top_k = 20, .seed = 5, .has_seed = true,
					     .stream = true, .stop = stop, .stop_len = stop_len,
					     .n_stop = 2});
	int32_t ids[] = {151652, 151655, 151653, 3838, 374, 419, 30};
	qw_item image = {QW_ITEM_IMAGE, png, png_len};
	request_seed("token_ids", &(qw_request){.op = QW_OP_SUBMIT, .token_ids = ids,
						.n_token_ids = 7, .images = &image, .n_images = 1,
						.greedy = true, .temperature = -1, .top_k = -1,
						.ignore_eos = true, .stream = false});
	qw_item sys[] = {{QW_ITEM_TEXT, "Be brief.", 9}};
	qw_item user[] = {image, {QW_ITEM_TEXT, "What is in the picture?", 23}};
	qw_item said[] = {{QW_ITEM_TEXT, "A house.", 8}};
	qw_item again[] = {{QW_ITEM_TEXT, "What colour is it?", 18}};
	qw_req_message msgs[] = {{"system", 6, sys, 1, NULL, 0, NULL, 0},
				 {"user", 4, user, 2, NULL, 0, NULL, 0},
				 {"assistant", 9, said, 1, "It looks like a house.", 22, NULL, 0},
				 {"user", 4, again, 1, NULL, 0, NULL, 0}};
	request_seed("chat", &(qw_request){.op = QW_OP_SUBMIT, .messages = msgs, .n_messages = 4,
					   .temperature = -1, .top_k = -1, .stream = true});
	/* tools: a call, its result, the tools listed; and the same as a tokenize */
	const char *tool = "{\"type\": \"function\", \"function\": {\"name\": \"paint\", "
			   "\"parameters\": {\"type\": \"object\"}}}";
	size_t tool_len = strlen(tool);
	qw_tool_call call = {"paint", 5, "{\"colour\": \"red\"}", 17};
	qw_item result[] = {{QW_ITEM_TEXT, "done", 4}};
	qw_req_message turns[] = {{"user", 4, again, 1, NULL, 0, NULL, 0},
				  {"assistant", 9, said, 1, NULL, 0, &call, 1},
				  {"tool", 4, result, 1, NULL, 0, NULL, 0}};
	qw_request with_tools = {.op = QW_OP_SUBMIT, .messages = turns, .n_messages = 3,
				 .tools = &tool, .tools_len = &tool_len, .n_tools = 1,
				 .thinking = QW_THINKING_OFF, .temperature = -1, .top_k = -1,
				 .stream = true, .prompt_ids = true};
	request_seed("tools", &with_tools);
	with_tools.op = QW_OP_TOKENIZE;
	request_seed("tokenize", &with_tools);
	request_seed("detokenize", &(qw_request){.op = QW_OP_DETOKENIZE, .token_ids = ids,
						 .n_token_ids = 7});
}

static void tokenizer_seeds(void)
{
	json_error_t je;
	json_t *cases = json_load_file("tests/fixtures/tokenizer/qwen3_cases.json", 0, &je);
	if (!json_is_array(cases))
		die("tests/fixtures/tokenizer/qwen3_cases.json");
	for (size_t i = 0; i < json_array_size(cases); i++) {
		json_t *text = json_object_get(json_array_get(cases, i), "text");
		char name[32];
		snprintf(name, sizeof name, "case-%02zu", i);
		put("tokenizer", name, "", 0, json_string_value(text), json_string_length(text));
	}
	json_decref(cases);
}

static void png_write(png_structp png, png_bytep data, png_size_t n)
{
	FILE *f = png_get_io_ptr(png);
	fwrite(data, 1, n, f);
}

static void png_flush(png_structp png)
{
	(void)png;
}

/* img as an 8-bit grey PNG (its red channel) into a file of the image folder. */
static void grey_png(const qw_image *img, const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/image/%s", out_dir, name);
	FILE *f = fopen(path, "wb");
	png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
	png_infop info = png_create_info_struct(png);
	if (!f || !png || !info || setjmp(png_jmpbuf(png)))
		die(path);
	png_set_write_fn(png, f, png_write, png_flush);
	png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
		     PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_ADAM7, PNG_COMPRESSION_TYPE_DEFAULT,
		     PNG_FILTER_TYPE_DEFAULT);
	png_write_info(png, info);
	uint8_t *row = malloc((size_t)img->width);
	for (int pass = 0; pass < png_set_interlace_handling(png); pass++)
		for (int y = 0; y < img->height; y++) {
			for (int x = 0; x < img->width; x++)
				row[x] = img->rgb[((size_t)y * (size_t)img->width + (size_t)x) * 3];
			png_write_row(png, row);
		}
	png_write_end(png, NULL);
	png_destroy_write_struct(&png, &info);
	free(row);
	fclose(f);
}

/* img as a JPEG (progressive), and a lossy WebP, into the image folder. */
static void jpeg_and_webp(const qw_image *img, const char *jpeg_name, const char *webp_name)
{
	/* JPEG, progressive */
	struct jpeg_compress_struct c;
	struct jpeg_error_mgr e;
	c.err = jpeg_std_error(&e);
	jpeg_create_compress(&c);
	unsigned char *jpg = NULL;
	unsigned long jn = 0;
	jpeg_mem_dest(&c, &jpg, &jn);
	c.image_width = (JDIMENSION)img->width;
	c.image_height = (JDIMENSION)img->height;
	c.input_components = 3;
	c.in_color_space = JCS_RGB;
	jpeg_set_defaults(&c);
	jpeg_set_quality(&c, 80, TRUE);
	jpeg_simple_progression(&c);
	jpeg_start_compress(&c, TRUE);
	while (c.next_scanline < c.image_height) {
		JSAMPROW row = img->rgb + (size_t)c.next_scanline * (size_t)img->width * 3;
		jpeg_write_scanlines(&c, &row, 1);
	}
	jpeg_finish_compress(&c);
	jpeg_destroy_compress(&c);
	put("image", jpeg_name, "", 0, jpg, jn);
	free(jpg);
	uint8_t *webp;
	size_t wn = WebPEncodeRGB(img->rgb, img->width, img->height, img->width * 3, 75, &webp);
	put("image", webp_name, "", 0, webp, wn);
	WebPFree(webp);
}

/* The fixture image, and a small copy of it (quicker inputs) in every format. */
static void image_seeds(const char *png, size_t png_len)
{
	put("image", "house.png", "", 0, png, png_len);
	qw_image img, small;
	qw_err err;
	if (qw_image_decode(png, png_len, NULL, &img, &err) != QW_OK ||
	    qw_resize_bicubic(&img, 36, 48, &small, &err) != QW_OK)
		die(err.msg);
	grey_png(&small, "small-grey-interlaced.png");
	jpeg_and_webp(&small, "small.jpg", "small.webp");
	qw_image_free(&small);
	qw_image_free(&img);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: make_seeds OUT (from the repository root)\n");
		return 2;
	}
	out_dir = argv[1];
	mkdir(out_dir, 0755);
	size_t png_len;
	char *png = slurp("tests/fixtures/images/house.png", &png_len);
	loader_seeds();
	request_seeds(png, png_len);
	tokenizer_seeds();
	image_seeds(png, png_len);
	free(png);
	return 0;
}
