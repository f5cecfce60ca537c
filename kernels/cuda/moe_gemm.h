/* moe_gemm.h - the MoE block's grouped expert GEMM (moe_gemm.cu) as moe.cu calls it (CUDA
 * C++ only, private to kernels/cuda/).
 *
 * Owns: moe_tile (the GEMM's tile shapes, picked by the batch), moe_gemm_args (one GEMM:
 * the sorted pairs' rows, the experts' weights, bf16 or FP8 with block scales, where the
 * output goes) and moe_gemm (its launch).
 */
#ifndef QW_KERNELS_CUDA_MOE_GEMM_H
#define QW_KERNELS_CUDA_MOE_GEMM_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "loader/error.h"

/* The tile shapes, by the average pairs per expert (moe_gemm.cu's header). */
typedef enum moe_tile {
	MOE_TILE_S,   /* 16 rows: decode */
	MOE_TILE_M,   /* 64 rows */
	MOE_TILE_L,   /* 128 rows: prefill */
} moe_tile;

#define MOE_TILE_MAX_ROWS 128   /* the most rows a tile has (L) */

/* Rows of a tile of this shape: the tile list routing builds counts tiles of this many. */
int moe_tile_rows(moe_tile t);

/* One grouped GEMM over the pairs sorted by expert: row p of the output = row p of a
 * (gathered through a_row) times the weights of p's expert. */
typedef struct moe_gemm_args {
	const __nv_bfloat16 *a;     /* gate_up: x (T, K); down: act (P, K) */
	const int *a_row;           /* gate_up: pair_token (P,), the row of a of each sorted pair;
				     * down: NULL (a pair's own row) */
	const void *w;              /* (E, K, ldw) input-major: bf16, or e4m3 bytes with scale */
	const float *scale;         /* FP8: (E, ceil(K / scale_rows), ceil(ldw / scale_cols));
				     * NULL: the weights are bf16 */
	int scale_rows, scale_cols; /* FP8: a block, along K and along the ldw columns (x16) */
	int K, N, ldw;              /* reduction length, output columns, row length of w */
	const int *off;             /* (E + 1,) first sorted pair of each expert */
	const int *n_tiles;         /* (1,) tiles in the list */
	const int *tile_e;          /* (max_tiles,) each tile's expert */
	const int *tile_m0;         /* (max_tiles,) its first row among the expert's pairs */
	const int *pair_slot;       /* (P,) down: where each sorted pair's row of y goes */
	__nv_bfloat16 *act;         /* gate_up output (P, N): silu(gate) * up */
	float *y;                   /* down output (T * k, N), rows by pair_slot */
} moe_gemm_args;

/* The GEMM in tile shape t on stream, after the previous kernel (programmatic launch):
 * gate_up, the weights' columns are the gate then the up columns of N outputs each (ldw
 * 2N) and act gets SwiGLU of them; else y.  max_tiles: the most tiles the list may hold. */
qw_status moe_gemm(const moe_gemm_args *g, moe_tile t, bool gate_up, int max_tiles,
		   cudaStream_t stream, qw_err *err);

#endif
