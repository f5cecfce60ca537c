/* cuda_stub.c - qw_cuda_backend_create in a build without CUDA (no nvcc, or a sanitizer
 * build): it says so.  See cuda/cuda_backend.h. */
#include "kernels/cuda/cuda_backend.h"

qw_status qw_cuda_backend_create(int device, qw_backend **out, qw_err *err)
{
	*out = NULL;
	return qw_fail(err, QW_E_ARG, "this build has no CUDA backend (built without nvcc, or "
		       "with sanitize=1); HINT: build with nvcc on PATH and without sanitize=1");
}
