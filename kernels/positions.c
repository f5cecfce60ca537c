/* positions.c - M-RoPE positions with images.  See positions.h. */
#include "kernels/positions.h"

qw_status qw_mrope_positions(const qw_config *cfg, const int32_t *ids, int n,
			     const int32_t *grids, int n_images, int32_t *pos, int *rope_delta,
			     qw_err *err)
{
	int m = cfg->has_vision ? cfg->vision.spatial_merge_size : 1;
	int32_t p = 0, max = -1;
	int image = 0;
	for (int i = 0; i < n;) {
		bool pad = cfg->has_vision && ids[i] == cfg->image_token_id;
		if (cfg->has_vision && ids[i] == cfg->video_token_id)
			return qw_fail(err, QW_E_ARG, "token %d is a video pad; video input is not "
				       "supported", i);
		if (!pad) {
			pos[3 * i] = pos[3 * i + 1] = pos[3 * i + 2] = p;
			max = p > max ? p : max;
			p++;
			i++;
			continue;
		}
		int run = 0;
		while (i + run < n && ids[i + run] == cfg->image_token_id)
			run++;
		if (image >= n_images)
			return qw_fail(err, QW_E_ARG, "image pad run %d at token %d has no image grid "
				       "(%d given)", image, i, n_images);
		int t = grids[3 * image], h = grids[3 * image + 1] / m, w = grids[3 * image + 2] / m;
		if (run != t * h * w)
			return qw_fail(err, QW_E_ARG, "image %d: %d pad tokens at token %d, its grid "
				       "(%d, %d, %d) needs %d", image, run, i, t, h * m, w * m, t * h * w);
		for (int ti = 0, k = i; ti < t; ti++)
			for (int hi = 0; hi < h; hi++)
				for (int wi = 0; wi < w; wi++, k++) {
					pos[3 * k] = p + ti;
					pos[3 * k + 1] = p + hi;
					pos[3 * k + 2] = p + wi;
				}
		int span = t > h ? t : h;
		span = span > w ? span : w;
		max = p + span - 1 > max ? p + span - 1 : max;
		p += span;
		i += run;
		image++;
	}
	if (image != n_images)
		return qw_fail(err, QW_E_ARG, "%d image grids given, the prompt has %d image pad runs",
			       n_images, image);
	*rope_delta = max + 1 - n;
	return QW_OK;
}
