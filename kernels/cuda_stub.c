/* cuda_stub.c - qw_cuda_backend_create and the NCCL pipe in a build without CUDA (no nvcc,
 * or a sanitizer build): they say so.  See cuda/cuda_backend.h and cuda/nccl_pipe.h. */
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_pipe.h"

qw_status qw_cuda_backend_create(int device, qw_backend **out, qw_err *err)
{
	*out = NULL;
	return qw_fail(err, QW_E_ARG, "this build has no CUDA backend (built without nvcc, or "
		       "with sanitize=1); HINT: build with nvcc on PATH and without sanitize=1");
}

bool qw_cuda_backend_built(void)
{
	return false;
}

uint64_t qw_cuda_backend_device_free(const qw_backend *be)
{
	return 0;   /* no CUDA backend exists to ask */
}

qw_cuda_reservation qw_cuda_backend_reservation(const qw_backend *be)
{
	return (qw_cuda_reservation){0};   /* no CUDA backend made be */
}

/* The NCCL data plane (cuda/nccl_pipe.h) needs CUDA too: each entry says so. */
static qw_status no_nccl(qw_err *err)
{
	return qw_fail(err, QW_E_ARG, "this build has no CUDA, so no NCCL pipeline; HINT: build "
		       "with nvcc on PATH and without sanitize=1");
}

qw_status qw_nccl_unique_id(uint8_t out[QW_NCCL_ID_BYTES], qw_err *err)
{
	return no_nccl(err);
}

qw_status qw_nccl_pipe_create(qw_backend *be, const qw_nccl_pipe_config *cfg,
			      qw_nccl_pipe **out, qw_err *err)
{
	*out = NULL;
	return no_nccl(err);
}

qw_status qw_nccl_pipe_warm(qw_nccl_pipe *p, qw_err *err) { return no_nccl(err); }

qw_status qw_nccl_pipe_post_recv(qw_nccl_pipe *p, const qw_nccl_record *r, qw_err *err)
{
	return no_nccl(err);
}

qw_status qw_nccl_pipe_take(qw_nccl_pipe *p, const qw_nccl_record *r, qw_act *hidden,
			    qw_act *const *extra, qw_err *err)
{
	return no_nccl(err);
}

qw_status qw_nccl_pipe_send(qw_nccl_pipe *p, const qw_nccl_record *r, const qw_act *hidden,
			    const qw_act *const *extra, const qw_nccl_record *then, qw_err *err)
{
	return no_nccl(err);
}

qw_status qw_nccl_pipe_wait_taken(qw_nccl_pipe *p, qw_err *err) { return no_nccl(err); }
qw_status qw_nccl_pipe_wait_sent(qw_nccl_pipe *p, int in_flight, qw_err *err)
{
	return no_nccl(err);
}
qw_status qw_nccl_pipe_sync(qw_nccl_pipe *p, qw_err *err) { return no_nccl(err); }
qw_status qw_nccl_pipe_health(qw_nccl_pipe *p, qw_err *err) { return no_nccl(err); }
qw_status qw_nccl_pipe_leave(qw_nccl_pipe *p, qw_err *err) { return no_nccl(err); }
qw_status qw_nccl_pipe_join(qw_nccl_pipe *p, const uint8_t *unique_id, qw_err *err)
{
	return no_nccl(err);
}
void qw_nccl_pipe_destroy(qw_nccl_pipe *p, bool clean) {}
