/* sample.h - choosing the next token from a row of logits, on the host.
 *
 * Owns: the sampling rule every backend follows (greedy, or temperature -> top-k -> top-p,
 * then one draw) and its random number: a pure function of (seed, step), so the same seed
 * gives the same tokens regardless of batching, and a GPU can reproduce the draw.  The draw
 * walks the candidates' cumulative probability: in id order when neither top-k nor top-p
 * cuts anything, else in descending probability (lower id first among equals).
 */
#ifndef QW_KERNELS_SAMPLE_H
#define QW_KERNELS_SAMPLE_H

#include <stdint.h>

#include "kernels/ops.h"

/* Index of the largest value (the lowest index among equals). */
int32_t qw_argmax(const float *x, int n);

/* The uniform number in [0, 1) that draw `step` of a sequence seeded `seed` uses. */
double qw_sample_uniform(uint64_t seed, uint64_t step);

/* Samples one token from logits (V,).  scratch holds qw_sample_scratch_bytes(V) bytes, or
 * is NULL to have it allocated.  Returns -1 only if allocation fails. */
int32_t qw_sample_row(const float *logits, int V, const qw_sampling *p, void *scratch);

/* Bytes of scratch qw_sample_row needs for V. */
uint64_t qw_sample_scratch_bytes(int V);

#endif
