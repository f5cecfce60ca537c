/* check.h - checked calls into CUDA, cuBLAS and NCCL.
 *
 * Owns: one generated check per error domain.  A failing call fills the caller's qw_err
 * with the statement, the library's error name and file:line, and returns QW_E_DEVICE from
 * the enclosing function, so errors pass up the stack instead of aborting the process.
 *   QW_CUDA_TRY(err, cudaMalloc(&p, n));
 */
#ifndef QW_KERNELS_CUDA_CHECK_H
#define QW_KERNELS_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "loader/error.h"

#define QW_CHECK_GEN(err, call, type, ok, strfn)                                             \
	do {                                                                                 \
		type chk_rc_ = (call);                                                       \
		if (chk_rc_ != (ok))                                                         \
			return qw_fail((err), QW_E_DEVICE, "%s:%d: %s failed: %s (%d)",      \
				       __FILE__, __LINE__, #call, strfn(chk_rc_), (int)chk_rc_); \
	} while (0)

#define QW_CUDA_TRY(err, call) QW_CHECK_GEN(err, call, cudaError_t, cudaSuccess, cudaGetErrorString)
#define QW_CUBLAS_TRY(err, call) \
	QW_CHECK_GEN(err, call, cublasStatus_t, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)
#define QW_NCCL_TRY(err, call) QW_CHECK_GEN(err, call, ncclResult_t, ncclSuccess, ncclGetErrorString)

#endif
