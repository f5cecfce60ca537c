/* transport_nccl_stub.c - tc_run_nccl in builds without CUDA: says so. */
#include "cli/transport_check.h"

int tc_run_nccl(const tc_opts *o, tc_report *rep, qw_err *err)
{
	(void)o;
	(void)rep;
	qw_fail(err, QW_E_ARG, "--transport nccl: this build has no CUDA (nvcc was not found)");
	return -1;
}
