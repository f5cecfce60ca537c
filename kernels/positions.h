/* positions.h - M-RoPE 3-D positions of a prompt (HF's get_rope_index).
 *
 * Owns: the rule.  Text tokens (vision_start / vision_end included) take (p, p, p) and
 * advance p by one; a run of image pad tokens takes the next image grid (t, h, w):
 * its tokens, row-major over (t, h/m, w/m), get (p + ti, p + hi, p + wi), and p then
 * advances by max(t, h/m, w/m).  rope_delta = max position + 1 - length: a token appended
 * at sequence index s later gets s + rope_delta on all three axes.
 */
#ifndef QW_KERNELS_POSITIONS_H
#define QW_KERNELS_POSITIONS_H

#include <stdint.h>

#include "loader/config.h"
#include "loader/error.h"

/* pos (n, 3).  grids (n_images, 3) in patches, in the order the images appear.  A run of pad
 * tokens whose length is not its grid's t*h*w/(m*m), a run with no grid left, or a grid with
 * no run is an error. */
qw_status qw_mrope_positions(const qw_config *cfg, const int32_t *ids, int n,
			     const int32_t *grids, int n_images, int32_t *pos, int *rope_delta,
			     qw_err *err);

#endif
