/* moe_fused.h - the MoE block of a small batch as one persistent kernel (moe_fused.cu), as
 * moe.cu calls it (CUDA C++ only, private to kernels/cuda/).
 *
 * Owns: moe_fused_args (a layer's call and the two GEMMs as the plain path would run them),
 * moe_fused_refusal (whether the kernel applies, and its grid) and moe_fused (its launch).
 */
#ifndef QW_KERNELS_CUDA_MOE_FUSED_H
#define QW_KERNELS_CUDA_MOE_FUSED_H

#include <cuda_runtime.h>

#include "kernels/cuda/kernels.h"
#include "kernels/cuda/moe_gemm.h"
#include "kernels/cuda/moe_route.cuh"
#include "loader/error.h"

typedef struct moe_fused_args {
	const qw_cuda_moe_args *a;       /* checked by qw_cuda_moe */
	const moe_ws *w;                 /* the scratch, carved for a->T tokens */
	const moe_gemm_args *gate_up;    /* the GEMMs over w, as moe.cu builds them */
	const moe_gemm_args *down;
} moe_fused_args;

/* NULL when the fused kernel can run a on the current device, *blocks then its grid (the
 * blocks the device holds at once, at most one per work item); else why not, a phrase for
 * an error message (a shape past its limits, no sync buffer, a device without the shared
 * memory it takes). */
const char *moe_fused_refusal(const qw_cuda_moe_args *a, int *blocks);

/* The block for f->a in one launch of `blocks` blocks on stream, after the previous kernel
 * (programmatic launch). */
qw_status moe_fused(const moe_fused_args *f, int blocks, cudaStream_t stream, qw_err *err);

#endif
