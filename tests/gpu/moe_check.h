/* moe_check.h - one MoE layer's CPU reference and the tolerance a GPU result is held to,
 * shared by test_cuda_moe (the GPU suite) and bench_cuda_moe (which checks every build-time
 * variant of the decode tile against it before timing it, as llm.c's dev/cuda files do).
 *
 * Owns: moe_check_tensor (a tensor over host bf16 data), moe_check_reference (the CPU
 * backend's moe op, the reference, over host bf16 weights, in parallel over tokens) and
 * moe_check_compare (per element |gpu - cpu| <= 0.02 rms(cpu) + 2^-7 |cpu|, and over the
 * whole output an nmse <= 3e-5; test_cuda_moe.c's header says why).  None needs cmocka:
 * they return what they found and print why.
 */
#ifndef QW_TESTS_GPU_MOE_CHECK_H
#define QW_TESTS_GPU_MOE_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/ops.h"

/* A bf16 value as a float. */
float moe_check_bf16(uint16_t h);

/* A qw_tensor (bf16, named "t") over host data of ndim (1 to 3) dimensions d0, d1, d2. */
qw_tensor moe_check_tensor(uint16_t *data, int ndim, int64_t d0, int64_t d1, int64_t d2);

/* out (T, H) fp32 = the CPU backend's moe op with weights w (host bf16 tensors) on x (T, H)
 * bf16, T's tokens split over threads (1 to 64). */
qw_status moe_check_reference(const qw_moe_weights *w, int H, const uint16_t *x, int T,
			      int threads, float *out, qw_err *err);

/* got (T, H) bf16 against ref (T, H): true within the tolerance.  Prints the first 10
 * elements outside it and a line of figures, each starting with what. */
bool moe_check_compare(const char *what, int T, int H, const float *ref, const uint16_t *got);

#endif
