/* experts.cu - a MoE layer's experts as the MoE kernels read them, made once at load
 * (cuda_prepare_experts: the backend's prepare_experts op, which the forward pass calls for
 * each MoE layer once its weights are on the GPU).  See backend_ctx.h and ops.h.
 *
 * The MoE kernels (moe.cu) read the hub's fused layout: gate_up (E, H, 2I) input-major, gate
 * columns first, and down (E, I, H).  Fused checkpoints have it already: their tensors are
 * checked and taken as they are.  Per-expert checkpoints (Qwen3-MoE text: gate_proj and
 * up_proj (I, H), down_proj (H, I) per expert, [out, in]) are re-laid out here, expert by
 * expert, into two new tensors, and the parts' memory is freed (they stay listed, marked
 * moved), so nothing is held twice and nothing is allocated when a step runs (issue 17).
 * While a layer is re-laid out its experts are on the GPU twice: a layer's worth of headroom
 * at load.
 *
 * Which path each expert weight takes:
 *   bf16 parts                       -> bf16 fused tensors (transposes)
 *   FP8 parts (one block for all)    -> FP8 fused tensors: the e4m3 bytes transposed, their
 *                                       scales re-gridded (below)
 *   FP8 parts otherwise (blocks that differ between parts, or whose output side is not a
 *   multiple of 16 weights), or FP8 mixed with bf16
 *                                    -> bf16 fused tensors, dequantised as they are moved
 *                                       (bf16_rn(e4m3 * s), the FP8 contract's bits)
 * gate_up and down are planned apart (one may be FP8, the other bf16).
 *
 * FP8 scales.  A part's block is (b0 rows, b1 columns) of [out, in]; input-major, its blocks
 * are b1 rows (along H, the reduction) by b0 columns.  Fused, the up half starts at column I,
 * which need not be a multiple of b0 (I 48 with 128-wide blocks: the tiny models): a block
 * of the fused tensor may not straddle that seam.  So the fused tensor's blocks are b1 rows
 * by gcd(b0, I) columns (I itself when I < b0, else b0 for the real models' 128 | I): each
 * lies in one block of one part, whose scale it takes.  gcd(b0, I) is a multiple of 16 when
 * b0 is (I is), as the kernels need.  down's blocks are b1 rows (along I) by b0 columns.
 */
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/backend_ctx.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/e4m3x8.h"
#include "loader/dtype.h"

#define TILE 32   /* transposes: a block's square of values */

// ---------------------------------------------------------------------------------------
// kernels

/* dst[c * dst_ld + dst_off + r] = src[r][c] for src (rows, cols): one expert matrix,
 * [out, in], into its place in the fused input-major layout, a TILE x TILE square a block.
 * DQ: src is e4m3 with scales (ceil(rows / br), ceil(cols / bc)) and dst bf16, dequantised
 * as the FP8 contract says (e4m3x8.h); else both T. */
template <bool DQ, typename T>
static __global__ void transpose_kernel(T *dst, const void *src, const float *scale, int rows,
					int cols, int br, int bc, int dst_ld, int dst_off)
{
	__shared__ T tile[TILE][TILE + 1];
	int c0 = blockIdx.x * TILE, r0 = blockIdx.y * TILE, tx = threadIdx.x;
	for (int i = threadIdx.y; i < TILE; i += blockDim.y) {
		int r = r0 + i, c = c0 + tx;
		if (r >= rows || c >= cols)
			continue;
		size_t at = (size_t)r * (size_t)cols + (size_t)c;
		if (DQ)
			tile[i][tx] = __bfloat16_as_ushort(e4m3_dequant(
				((const uint8_t *)src)[at],
				scale[(size_t)(r / br) * (size_t)((cols + bc - 1) / bc) + (size_t)(c / bc)]));
		else
			tile[i][tx] = ((const T *)src)[at];
	}
	__syncthreads();
	for (int i = threadIdx.y; i < TILE; i += blockDim.y) {
		int c = c0 + i, r = r0 + tx;   /* dst row c, column r */
		if (r < rows && c < cols)
			dst[(size_t)c * (size_t)dst_ld + (size_t)dst_off + (size_t)r] = tile[tx][i];
	}
}

/* One expert's fused scales dst (kb_n, nb) from its parts' [out, in] grids (a, and b from
 * the seam on; src_ld = kb_n blocks a row of them): column j of dst covers the fused
 * columns [j * cw, (j + 1) * cw), all in one part block of b_out output rows, and row kb of
 * dst is that part's column of blocks kb. */
static __global__ void regrid_scales_kernel(float *dst, const float *a, const float *b,
					    int kb_n, int nb, int cw, int seam, int b_out)
{
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= kb_n * nb)
		return;
	int kb = i / nb, j = i % nb, col = j * cw;
	const float *src = col < seam ? a : b;
	int out = col < seam ? col : col - seam;   /* the output index in its part */
	dst[i] = src[(size_t)(out / b_out) * (size_t)kb_n + (size_t)kb];
}

// ---------------------------------------------------------------------------------------
// checks

static const char *name_of(const qw_tensor *t)
{
	return t && t->name ? t->name : "(unnamed)";
}

static int64_t blocks(int64_t n, int b)
{
	return (n + b - 1) / b;
}

/* t's FP8 block scales as the backend keeps them: on the device, F32, one per block. */
static qw_status check_scales(const qw_tensor *t, qw_err *err)
{
	const qw_tensor *s = t->scale;
	int nd = t->ndim;
	if (!s || !s->data || s->dtype != QW_DT_F32 || t->block[0] < 1 || t->block[1] < 1 ||
	    s->numel != t->numel / ((uint64_t)t->shape[nd - 2] * (uint64_t)t->shape[nd - 1]) *
			    (uint64_t)blocks(t->shape[nd - 2], t->block[0]) *
			    (uint64_t)blocks(t->shape[nd - 1], t->block[1]))
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: %s is F8_E4M3 without fp32 scales "
			       "of its %d x %d blocks on the device", name_of(t), t->block[0],
			       t->block[1]);
	return QW_OK;
}

/* A fused-layout expert tensor (E, d1, d2): this backend's, bf16 or FP8 with blocks of a
 * multiple of 16 columns. */
static qw_status check_fused(cuda_ctx *c, const qw_tensor *t, int64_t E, int64_t d1,
			     int64_t d2, qw_err *err)
{
	owned_tensor *o = cuda_owner_of(c, t);
	if (!o || o->moved)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: %s is not a tensor this backend "
			       "holds", name_of(t));
	if (t->ndim != 3 || t->shape[0] != E || t->shape[1] != d1 || t->shape[2] != d2)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: %s is not (%lld, %lld, %lld)",
			       name_of(t), (long long)E, (long long)d1, (long long)d2);
	if (t->dtype == QW_DT_BF16)
		return QW_OK;
	if (t->dtype != QW_DT_F8_E4M3)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: %s is %s; the MoE kernels read "
			       "BF16 or F8_E4M3", name_of(t), qw_dtype_name(t->dtype));
	QW_TRY(check_scales(t, err));
	if (t->block[1] % 16)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: %s has FP8 blocks %d columns "
			       "wide; the MoE kernels take a multiple of 16", name_of(t), t->block[1]);
	return QW_OK;
}

/* A per-expert part (rows, cols): this backend's own (not fused into anything, not moved),
 * bf16 or FP8 with its scales. */
static qw_status check_part(cuda_ctx *c, const qw_tensor *t, int64_t rows, int64_t cols,
			    qw_err *err)
{
	owned_tensor *o = t ? cuda_owner_of(c, t) : NULL;
	if (!o || o->view || o->viewed || o->moved)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: %s is not a tensor this backend "
			       "holds on its own (or it was moved already)", name_of(t));
	if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: %s is not (%lld, %lld)",
			       name_of(t), (long long)rows, (long long)cols);
	if (t->dtype == QW_DT_F8_E4M3)
		return check_scales(t, err);
	if (t->dtype != QW_DT_BF16)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: %s is %s; BF16 or F8_E4M3 are "
			       "taken", name_of(t), qw_dtype_name(t->dtype));
	return QW_OK;
}

/* Whether n parts are all FP8 of one block whose output side (block[0]) is a multiple of
 * 16: then they move as FP8, else as bf16. */
static bool fp8_together(const qw_tensor *const *const *sets, int n_sets, int E)
{
	const qw_tensor *first = sets[0][0];
	for (int s = 0; s < n_sets; s++)
		for (int e = 0; e < E; e++) {
			const qw_tensor *t = sets[s][e];
			if (t->dtype != QW_DT_F8_E4M3 || t->block[0] != first->block[0] ||
			    t->block[1] != first->block[1])
				return false;
		}
	return first->block[0] % 16 == 0;
}

static int gcd(int a, int b)
{
	while (b) {
		int r = a % b;
		a = b;
		b = r;
	}
	return a;
}

// ---------------------------------------------------------------------------------------
// the re-layout

/* The description of a fused tensor (E, d1, d2) named from a part's name ("...experts.0.
 * gate_proj.weight" -> "...experts.<what>"), FP8 with blocks (br, bc) when fp8. */
static char *describe(qw_tensor *t, qw_tensor *scale, const qw_tensor *part, const char *what,
		      int64_t E, int64_t d1, int64_t d2, bool fp8, int br, int bc)
{
	const char *p = name_of(part), *at = strstr(p, "experts.");
	int keep = at ? (int)(at - p) + 8 : 0;
	size_t len = (size_t)keep + strlen(what) + 16;
	char *name = (char *)malloc(len);
	if (!name)
		return NULL;
	snprintf(name, len, "%.*s%s", keep, p, what);
	memset(t, 0, sizeof *t);
	t->name = name;
	t->ndim = 3;
	t->shape[0] = E;
	t->shape[1] = d1;
	t->shape[2] = d2;
	t->numel = (uint64_t)E * (uint64_t)d1 * (uint64_t)d2;
	t->dtype = fp8 ? QW_DT_F8_E4M3 : QW_DT_BF16;
	if (fp8) {
		memset(scale, 0, sizeof *scale);
		scale->dtype = QW_DT_F32;
		scale->ndim = 3;
		scale->shape[0] = E;
		scale->shape[1] = blocks(d1, br);
		scale->shape[2] = blocks(d2, bc);
		scale->numel = (uint64_t)E * (uint64_t)scale->shape[1] * (uint64_t)scale->shape[2];
		t->scale = scale;
		t->block[0] = br;
		t->block[1] = bc;
	}
	return name;
}

/* Part src (rows, cols) transposed into expert e of fused tensor f at column dst_off: raw
 * when both are of one dtype, else (FP8 into bf16) dequantised. */
static qw_status move_part(const qw_tensor *f, int64_t e, const qw_tensor *src, int dst_off,
			   cudaStream_t stream, qw_err *err)
{
	int rows = (int)src->shape[0], cols = (int)src->shape[1], ld = (int)f->shape[2];
	size_t each = (size_t)f->shape[1] * (size_t)f->shape[2];
	dim3 grid((unsigned)blocks(cols, TILE), (unsigned)blocks(rows, TILE)), block(TILE, 8);
	if (f->dtype == QW_DT_F8_E4M3)
		transpose_kernel<false, uint8_t><<<grid, block, 0, stream>>>(
			(uint8_t *)f->data + (size_t)e * each, src->data, NULL, rows, cols, 1, 1, ld,
			dst_off);
	else if (src->dtype == QW_DT_F8_E4M3)
		transpose_kernel<true, uint16_t><<<grid, block, 0, stream>>>(
			(uint16_t *)f->data + (size_t)e * each, src->data,
			(const float *)src->scale->data, rows, cols, src->block[0], src->block[1], ld,
			dst_off);
	else
		transpose_kernel<false, uint16_t><<<grid, block, 0, stream>>>(
			(uint16_t *)f->data + (size_t)e * each, src->data, NULL, rows, cols, 1, 1, ld,
			dst_off);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}

/* Expert e's scales of FP8 fused tensor f from its parts a (and b past the seam column). */
static qw_status move_scales(const qw_tensor *f, int64_t e, const qw_tensor *a,
			     const qw_tensor *b, int seam, cudaStream_t stream, qw_err *err)
{
	const qw_tensor *s = f->scale;
	int kb_n = (int)s->shape[1], nb = (int)s->shape[2];
	size_t each = (size_t)kb_n * (size_t)nb;
	regrid_scales_kernel<<<(unsigned)blocks((int64_t)each, 256), 256, 0, stream>>>(
		(float *)s->data + (size_t)e * each, (const float *)a->scale->data,
		b ? (const float *)b->scale->data : NULL, kb_n, nb, f->block[1], seam, a->block[0]);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}

/* The per-expert parts of w into gu and dn, made here (descriptions of the fused tensors). */
static qw_status move_experts(cuda_ctx *c, const qw_moe_weights *w, const qw_tensor *gu,
			      const qw_tensor *dn, qw_err *err)
{
	int I = w->inter;
	for (int e = 0; e < w->n_experts; e++) {
		QW_TRY(move_part(gu, e, w->gate[e], 0, c->stream, err));
		QW_TRY(move_part(gu, e, w->up[e], I, c->stream, err));
		QW_TRY(move_part(dn, e, w->expert_down[e], 0, c->stream, err));
		if (gu->dtype == QW_DT_F8_E4M3)
			QW_TRY(move_scales(gu, e, w->gate[e], w->up[e], I, c->stream, err));
		if (dn->dtype == QW_DT_F8_E4M3)   /* one part: no seam */
			QW_TRY(move_scales(dn, e, w->expert_down[e], NULL, (int)dn->shape[2], c->stream,
					   err));
	}
	/* the parts are read before their memory goes */
	QW_CUDA_TRY(err, cudaStreamSynchronize(c->stream));
	return QW_OK;
}

qw_status cuda_prepare_experts(qw_backend *be, const qw_moe_weights *w,
			       const qw_tensor **gate_up, const qw_tensor **down, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	int E = w->n_experts, I = w->inter;
	if (!w->router || w->router->ndim != 2 || E < 1 || I < 1)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: no router, or %d experts of %d",
			       E, I);
	int64_t H = w->router->shape[1];
	if (w->gate_up && w->down) {   /* fused: as they are */
		QW_TRY(check_fused(c, w->gate_up, E, H, 2 * (int64_t)I, err));
		QW_TRY(check_fused(c, w->down, E, I, H, err));
		*gate_up = w->gate_up;
		*down = w->down;
		return QW_OK;
	}
	if (!w->gate || !w->up || !w->expert_down)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: the layer has neither fused nor "
			       "per-expert weights");
	if (c->recording >= 0)
		return qw_fail(err, QW_E_ARG, "cuda prepare_experts: called while a step is being "
			       "recorded");
	for (int e = 0; e < E; e++) {
		QW_TRY(check_part(c, w->gate[e], I, H, err));
		QW_TRY(check_part(c, w->up[e], I, H, err));
		QW_TRY(check_part(c, w->expert_down[e], H, I, err));
	}
	const qw_tensor *const *gate_sets[2] = {w->gate, w->up}, *const *down_set[1] = {
		w->expert_down};
	bool gu8 = fp8_together(gate_sets, 2, E), dn8 = fp8_together(down_set, 1, E);
	const qw_tensor *g0 = w->gate[0], *d0 = w->expert_down[0];
	qw_tensor gu_desc, gu_scale, dn_desc, dn_scale;
	char *gu_name = describe(&gu_desc, &gu_scale, g0, "gate_up_proj", E, H, 2 * (int64_t)I, gu8,
				 g0->block[1], gu8 ? gcd(g0->block[0], I) : 0);
	char *dn_name = describe(&dn_desc, &dn_scale, d0, "down_proj", E, I, H, dn8, d0->block[1],
				 d0->block[0]);
	owned_tensor *gu = NULL, *dn = NULL;
	qw_status st = gu_name && dn_name ? QW_OK : qw_fail(err, QW_E_NOMEM, "out of memory");
	if (st == QW_OK && (st = cuda_new_tensor(c, &gu_desc, &gu, err)) == QW_OK)
		gu->name = gu_name;
	if (st == QW_OK && (st = cuda_new_tensor(c, &dn_desc, &dn, err)) == QW_OK)
		dn->name = dn_name;
	if (st == QW_OK)
		st = move_experts(c, w, &gu->t, &dn->t, err);
	if (st != QW_OK) {   /* nothing moved: the parts stay as they were */
		if (gu)
			cuda_drop_tensor(c, gu);
		else
			free(gu_name);
		if (dn)
			cuda_drop_tensor(c, dn);
		else
			free(dn_name);
		return qw_err_context(err, "re-laying out %s and the rest of its layer's experts",
				      name_of(g0));
	}
	cuda_drop_graphs(c);   /* recorded steps may name the parts */
	for (int e = 0; e < E; e++) {
		const qw_tensor *parts[3] = {w->gate[e], w->up[e], w->expert_down[e]};
		for (int i = 0; i < 3; i++)
			cuda_release_moved(cuda_owner_of(c, parts[i]));
	}
	*gate_up = &gu->t;
	*down = &dn->t;
	return QW_OK;
}
