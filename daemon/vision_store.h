/* vision_store.h - stage 0's vision tower and the features of the images it has seen and not
 * yet placed, in memory made once at load.
 *
 * Owns: the tower's scratch for the largest image, and one store of rows per output (the
 * merged embeddings and each deepstack feature, (cap, H) each) holding the outputs of the
 * images in progress and of those the daemon's vision cache keeps, each a run of rows.  An image's run is placed at the first gap that
 * holds it; when none does though enough rows are free, the runs are moved down to close
 * the gaps first, so a store of cap rows holds any images of cap tokens in all.  Nothing is
 * allocated per image: the daemon's scheduler keeps what stage 0 holds within cap (the
 * tokens of images split across steps, plus the one being seen, plus the cached ones).
 */
#ifndef QW_DAEMON_VISION_STORE_H
#define QW_DAEMON_VISION_STORE_H

#include "kernels/vision.h"
#include "loader/config.h"
#include "loader/weights.h"

typedef struct qw_vision_run {
	uint64_t handle;            /* the daemon's name of the image */
	int first, tokens;          /* rows [first, first + tokens) of the store */
} qw_vision_run;

typedef struct qw_vision_store {
	qw_backend *be;             /* not owned */
	const qw_config *cfg;       /* not owned */
	size_t elem;                /* bytes of an activation value */
	int cap;                    /* rows of each output's store */
	int max_rows;               /* patches of the largest image */
	qw_act out[1 + QW_MAX_DEEPSTACK]; /* (cap, H): embeddings, then deepstack feature j */
	int n_out;                  /* 1 + the model's deepstack features */
	qw_vision_scratch scratch;
	qw_vision_run *runs;        /* (n_runs,) in the order of their rows */
	int n_runs, cap_runs;
	uint64_t moves;             /* runs moved down to close gaps (for tests) */
} qw_vision_store;

/* A store for images of up to max_image_tokens merged tokens, holding cap_tokens in all. */
qw_status qw_vision_store_init(qw_vision_store *s, qw_backend *be, const qw_config *cfg,
			       int max_image_tokens, int cap_tokens, qw_err *err);
void qw_vision_store_free(qw_vision_store *s);

/* Image tokens that bytes of store hold, at elem bytes a value (the merged embedding and
 * each deepstack feature a row of hidden_size each), at most max. */
int qw_vision_store_tokens_in(const qw_config *cfg, size_t elem, uint64_t bytes, int max);

/* Bytes of backend memory the store and the tower's scratch hold. */
uint64_t qw_vision_store_bytes(const qw_vision_store *s);

/* The tower on one image (grid (t, h, w) in patches, host pixels (rows, C*Tp*P*P)); its
 * features are kept under handle.  QW_E_LIMIT when the image is larger than the store was
 * made for, or the images held leave too few rows. */
qw_status qw_vision_store_see(qw_vision_store *s, const qw_weights *w, uint64_t handle,
			      const int32_t grid[3], const float *pixels, int rows, qw_err *err);

/* The tower once on an image of the largest size (zeros, forgotten after), so that the
 * kernels it launches are loaded, and what it needs is known to fit, before the stage is
 * ready. */
qw_status qw_vision_store_warm_up(qw_vision_store *s, const qw_weights *w, qw_err *err);

/* The features of handle as views of the store (valid until the next see or forget), or
 * false when it holds none. */
bool qw_vision_store_find(const qw_vision_store *s, uint64_t handle, qw_vision_out *out);

/* Frees handle's rows (nothing if it holds none). */
void qw_vision_store_forget(qw_vision_store *s, uint64_t handle);

/* Tokens of the images held. */
int qw_vision_store_held(const qw_vision_store *s);

#endif
