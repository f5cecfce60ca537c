/* vision.h - the Qwen3-VL vision tower, written once over the op interface.
 *
 * Owns: the host-side geometry (per image: the 2 x 2 merge-window row order, each patch's
 * (row, col) for the 2-D rotary, the bilinear taps into the learned position table, and the
 * attention segments, one per frame pair) and the forward pass: patch embedding, position
 * embedding, the blocks (LayerNorm, 2-D rotary attention within each segment, tanh-GELU MLP),
 * the deepstack mergers at their blocks, and the final merger.
 */
#ifndef QW_KERNELS_VISION_H
#define QW_KERNELS_VISION_H

#include "kernels/ops.h"
#include "loader/weights.h"

typedef struct qw_vision_out {
	qw_act embeds;                         /* (tokens, H): one row per merged 2 x 2 window */
	qw_act deepstack[QW_MAX_DEEPSTACK];    /* (tokens, H) each, n_deepstack of them */
	int n_deepstack;
	int tokens;
} qw_vision_out;

/* Called with the patch embedding (index -1, before the position embedding is added) and
 * each block's output (index k), rows in merge-window order. */
typedef void (*qw_vision_hook)(void *ctx, int index, const qw_act *x);

/* Runs the tower on the pixel rows of n_images images (grids (n_images, 3) in patches, rows
 * in the order qw_preprocess writes them), host fp32 pixels (rows, C*Tp*P*P); its scratch
 * and out are allocated for the call. */
qw_status qw_vision_forward(qw_backend *be, const qw_config *cfg, const qw_weights *w,
			    const int32_t *grids, int n_images, const float *pixels, int rows,
			    qw_vision_hook hook, void *hook_ctx, qw_vision_out *out, qw_err *err);

/* The tower's working activations for up to max_rows patches, made once (a daemon's stage
 * allocates nothing per image). */
typedef struct qw_vision_scratch {
	int max_rows;
	qw_act px;                           /* (max_rows, C*Tp*P*P) the pixels */
	qw_act x, h, q, k, v, a, pe, tn;     /* (max_rows, Dv) */
	qw_act f;                            /* (max_rows, Iv) */
	qw_act tg;                           /* (max_rows / m^2, m^2 Dv) a merger's grouped rows */
} qw_vision_scratch;

qw_status qw_vision_scratch_alloc(qw_backend *be, const qw_config *cfg, int max_rows,
				  qw_vision_scratch *s, qw_err *err);
void qw_vision_scratch_free(qw_backend *be, qw_vision_scratch *s);
/* Bytes qw_vision_scratch_alloc takes for max_rows, at elem bytes a value. */
uint64_t qw_vision_scratch_bytes(const qw_config *cfg, int max_rows, size_t elem);

/* qw_vision_forward on the caller's scratch (rows <= its max_rows, else QW_E_LIMIT) into the
 * caller's outputs: out->embeds and out->deepstack[0, n_deepstack) hold at least rows / m^2
 * rows each (e.g. views of a larger store) and get their rows set; nothing is allocated. */
qw_status qw_vision_forward_into(qw_backend *be, const qw_config *cfg, const qw_weights *w,
				 const int32_t *grids, int n_images, const float *pixels, int rows,
				 qw_vision_scratch *s, qw_vision_hook hook, void *hook_ctx,
				 qw_vision_out *out, qw_err *err);

void qw_vision_out_free(qw_backend *be, qw_vision_out *out);

#endif
