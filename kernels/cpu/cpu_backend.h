/* cpu_backend.h - the plain-C fp32 backend of the op interface (ops.h).
 *
 * Owns: nothing beyond its allocations.  Weights stay where the loader mapped them (bf16,
 * f16 or f32) and are widened to fp32 a row at a time; activations and the KV cache are
 * fp32; dot products, norms and softmaxes accumulate in double.  It is the reference every
 * other backend is held to, so it is written to be obviously right, not fast.
 */
#ifndef QW_KERNELS_CPU_BACKEND_H
#define QW_KERNELS_CPU_BACKEND_H

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

qw_status qw_cpu_backend_create(qw_backend **out, qw_err *err);

/* Widens n elements of a float tensor starting at element `first` into dst; an FP8 weight
 * with block scales (qw_tensor.scale) is dequantised, W = Wq * S[block]. */
void qw_tensor_read_f32(const qw_tensor *t, uint64_t first, uint64_t n, float *dst);

#ifdef __cplusplus
}
#endif

#endif
