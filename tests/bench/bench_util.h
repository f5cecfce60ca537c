/* bench_util.h - what the GPU benchmarks share: a checked CUDA call that ends the program,
 * and the median of a run's timings.
 *
 * Owns: CK, bench_median_ms.  Benchmarks are programs a person runs, not tests: a failed
 * CUDA call prints where and why and exits.
 */
#ifndef QW_TESTS_BENCH_BENCH_UTIL_H
#define QW_TESTS_BENCH_BENCH_UTIL_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                           \
	do {                                                                               \
		cudaError_t ck_ = (call);                                                  \
		if (ck_ != cudaSuccess) {                                                  \
			fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,      \
				cudaGetErrorString(ck_));                                  \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

static inline int bench_cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

/* The median of n timings (sorts them in place). */
static inline float bench_median_ms(float *ms, int n)
{
	qsort(ms, (size_t)n, sizeof *ms, bench_cmp_float);
	return ms[n / 2];
}

#endif
