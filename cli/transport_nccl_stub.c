/* transport_nccl_stub.c - tc_run_nccl in builds without CUDA: says so. */
#include <stdio.h>

#include "cli/transport_check.h"

int tc_run_nccl(const tc_opts *o, tc_report *rep, char *errbuf, size_t errlen)
{
	(void)o;
	(void)rep;
	snprintf(errbuf, errlen, "--transport nccl: this build has no CUDA (nvcc was not found)");
	return -1;
}
