/* cuda_ok.h - a CUDA runtime call checked inside a cmocka test: CUDA_OK(call) ends the
 * running test (fail_msg) with the call's text and CUDA's error string.  For the GPU suites
 * that include tests/unit/helpers.h (cmocka) first.
 */
#ifndef QW_TESTS_GPU_CUDA_OK_H
#define QW_TESTS_GPU_CUDA_OK_H

#include <cuda_runtime.h>

#define CUDA_OK(call)                                                                        \
	do {                                                                                 \
		cudaError_t rc_ = (call);                                                    \
		if (rc_ != cudaSuccess)                                                      \
			fail_msg("%s: %s", #call, cudaGetErrorString(rc_));                  \
	} while (0)

#endif
