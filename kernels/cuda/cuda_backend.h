/* cuda_backend.h - the CUDA backend: the op interface (kernels/ops.h) on one GPU.
 *
 * Owns: a qw_backend whose activations are bf16 on the device (act_dtype QW_DT_BF16; math
 * in fp32 inside every kernel), whose weights are bf16 device copies of the checkpoint's
 * tensors (FP8 ones dequantised as they are uploaded), uploaded through pinned staging
 * buffers so reading the mapping and copying to the GPU overlap, and whose KV cache is one
 * bf16 array per layer for K and one for V, (blocks x block_size, Hkv x D).  All work runs in
 * order on one stream; a step's batch is copied to the device once (begin_step).  Dense
 * projections are cuBLAS GEMMs (bf16 in, fp32 accumulate); the other ops are the kernels of
 * kernels/cuda/kernels.h.
 */
#ifndef QW_KERNELS_CUDA_CUDA_BACKEND_H
#define QW_KERNELS_CUDA_CUDA_BACKEND_H

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A backend on GPU `device`. */
qw_status qw_cuda_backend_create(int device, qw_backend **out, qw_err *err);

#ifdef __cplusplus
}
#endif

#endif
