/* preprocess.h - Qwen3-VL's image preprocessing, bit-exact with HF's default (fast) image
 * processor.
 *
 * Owns: smart_resize (the target size: multiples of patch x merge within the pixel budget,
 * Python's round-half-to-even), the resize (torchvision's antialiased bicubic on uint8: PIL's
 * separable filter with int16 weights, horizontal then vertical), the fused rescale and
 * normalise ((v - 127.5) / 127.5 for mean = std = 0.5), the duplication to temporal_patch_size
 * frames, and the flattening into pixel_values rows in 2 x 2 merge-window order, with the grid
 * (t, h, w) in patches.
 */
#ifndef QW_IMAGE_PREPROCESS_H
#define QW_IMAGE_PREPROCESS_H

#include "daemon/image/image.h"
#include "loader/config.h"

typedef struct qw_preprocess_opts {
	int64_t min_pixels;       /* 65536 as Qwen3-VL ships */
	int64_t max_pixels;       /* 16777216 */
	double max_aspect;        /* 200: longer side over shorter */
	int max_tokens;           /* image tokens one image may take (0: no limit beyond pixels) */
} qw_preprocess_opts;

#define QW_PREPROCESS_DEFAULT ((qw_preprocess_opts){65536, 16777216, 200.0, 0})

typedef struct qw_pixels {
	int grid_t, grid_h, grid_w;   /* in patches, before merging */
	int rows, cols;               /* rows = t*h*w patches, cols = C * Tp * P * P */
	float *values;                /* (rows, cols) */
	int n_tokens;                 /* rows / (m*m): image pad tokens in the prompt */
} qw_pixels;

/* smart_resize: the size the image is resized to (multiples of `factor`). */
qw_status qw_smart_resize(int height, int width, int factor, const qw_preprocess_opts *o,
			  int *out_h, int *out_w, qw_err *err);

/* What an image of width x height becomes: the size it is resized to (smart_resize with
 * factor patch x merge) and the image tokens it then takes, refused past the per-image
 * token limit.  Needs only the size, so a request's images can be weighed from their
 * headers before any is decoded. */
qw_status qw_preprocess_plan(int height, int width, const qw_vision_config *vc,
			     const qw_preprocess_opts *o, int *out_h, int *out_w, int *n_tokens,
			     qw_err *err);

/* Antialiased bicubic resize of 8-bit RGB (torchvision's uint8 path). */
qw_status qw_resize_bicubic(const qw_image *in, int out_h, int out_w, qw_image *out, qw_err *err);

/* The image the vision tower sees: img resized as the processor does (smart_resize, then
 * the bicubic resize when the size changes), in a new allocation either way (free it with
 * qw_image_free).  The per-image token limit is checked here. */
qw_status qw_preprocess_resize(const qw_image *img, const qw_vision_config *vc,
			       const qw_preprocess_opts *o, qw_image *resized, qw_err *err);

/* Normalises and patchifies an image already resized (sides multiples of patch x merge)
 * into pixel_values rows, as qw_preprocess does after its resize. */
qw_status qw_patchify(const qw_image *resized, const qw_vision_config *vc, qw_pixels *out,
		      qw_err *err);

/* The whole pipeline: resize, normalise, patchify. */
qw_status qw_preprocess(const qw_image *img, const qw_vision_config *vc,
			const qw_preprocess_opts *o, qw_pixels *out, qw_err *err);

void qw_pixels_free(qw_pixels *p);

#endif
