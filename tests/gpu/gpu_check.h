/* gpu_check.h - what the GPU op tests share: fresh random inputs from a printed seed, and
 * comparisons that fail a cmocka test with the first mismatches and the largest error
 * (llm.c's validate_result: |got - want| <= atol + rtol |want|), or bit for bit.
 *
 * Owns: the tests' random stream (seeded once by gpu_check_seed: $QW_TEST_SEED, else the
 * time, printed so a failure can be replayed) and the comparison functions.
 */
#ifndef QW_TESTS_GPU_GPU_CHECK_H
#define QW_TESTS_GPU_GPU_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

/* Seeds the stream from $QW_TEST_SEED or the time and prints the seed. */
void gpu_check_seed(void);
/* gpu_check_seed, then a CPU backend and a CUDA backend on GPU 0 (a cmocka group setup's
 * result: 0, or -1 with the reason printed); _free destroys both. */
int gpu_check_backends(qw_backend **cpu, qw_backend **gpu);
void gpu_check_backends_free(qw_backend *cpu, qw_backend *gpu);
/* A CUDA activation of be's holding v, or NaN everywhere when v is NULL (an output must be
 * written to pass), once the device is idle. */
qw_act gpu_check_act(qw_backend *be, int rows, int cols, const float *v);
/* A standard normal draw; a uniform integer in [0, n). */
double gpu_check_normal(void);
uint32_t gpu_check_below(uint32_t n);
/* n bf16-representable values ~ N(mean, std^2) (malloc'd). */
float *gpu_check_randv(size_t n, double mean, double std);

/* Fails unless every got[i] is within atol + atol_rms_share * RMS(want) + rtol |want[i]| of
 * want[i] (rows of `cols` for the messages); prints the largest error and the NMSE. */
void gpu_check_values(const char *what, const float *want, const float *got, size_t n, int cols,
		      double rtol, double atol_rms_share, double atol);
/* A host copy of n bf16 values at device address p, once `stream`'s work is done. */
uint16_t *gpu_check_device_bits(void *stream, const void *p, size_t n);
/* Fails unless n bf16 values at device addresses a and b have the same bits; names a's and
 * b's sources in the messages. */
void gpu_check_same_bits(void *stream, const char *what, const char *a_name, const void *a,
			 const char *b_name, const void *b, size_t n, int cols);

#endif
