/* device_info.cu - probe the CUDA stack and the GPUs.  See device_info.h. */
#include "kernels/cuda/device_info.h"

#include <stdio.h>
#include <string.h>

#include "kernels/cuda/check.h"

extern "C" qw_status qw_cuda_probe(qw_cuda_env *out, qw_err *err)
{
	memset(out, 0, sizeof *out);
	QW_CUDA_TRY(err, cudaDriverGetVersion(&out->driver_version));
	QW_CUDA_TRY(err, cudaRuntimeGetVersion(&out->runtime_version));
	QW_NCCL_TRY(err, ncclGetVersion(&out->nccl_version));
	/* the runtime reports a missing driver as version 0; every later call would say
	 * "driver version is insufficient", which reads as if one were there */
	if (out->driver_version == 0)
		return qw_fail(err, QW_E_DEVICE, "no NVIDIA driver was found (the CUDA runtime %d.%d "
			       "could not load libcuda.so.1)\nHINT: on a machine with an NVIDIA GPU, "
			       "install its driver; without one, qwend runs with --device cpu",
			       out->runtime_version / 1000, out->runtime_version % 1000 / 10);
	cudaError_t count = cudaGetDeviceCount(&out->n_gpus);
	if (count == cudaErrorNoDevice) {
		out->n_gpus = 0;   /* a driver and no GPU: the caller says so */
		return QW_OK;
	}
	if (count == cudaErrorInsufficientDriver)
		return qw_fail(err, QW_E_DEVICE, "the NVIDIA driver (CUDA %d.%d) is older than this "
			       "build's CUDA runtime %d.%d\nHINT: update the driver",
			       out->driver_version / 1000, out->driver_version % 1000 / 10,
			       out->runtime_version / 1000, out->runtime_version % 1000 / 10);
	QW_CUDA_TRY(err, count);
	if (out->n_gpus > QW_MAX_GPUS)
		out->n_gpus = QW_MAX_GPUS;
	for (int i = 0; i < out->n_gpus; i++) {
		qw_gpu_info *g = &out->gpus[i];
		cudaDeviceProp prop;
		QW_CUDA_TRY(err, cudaGetDeviceProperties(&prop, i));
		snprintf(g->name, sizeof g->name, "%s", prop.name);
		g->cc_major = prop.major;
		g->cc_minor = prop.minor;
		g->sm_count = prop.multiProcessorCount;
		g->pci_bus = prop.pciBusID;
		g->pci_device = prop.pciDeviceID;
		QW_CUDA_TRY(err, cudaSetDevice(i));
		QW_CUDA_TRY(err, cudaMemGetInfo(&g->free_bytes, &g->total_bytes));
		for (int j = 0; j < out->n_gpus; j++)
			if (j != i)
				QW_CUDA_TRY(err, cudaDeviceCanAccessPeer(&out->peer[i][j], i, j));
	}
	if (out->n_gpus > 0) {
		cublasHandle_t h;
		QW_CUDA_TRY(err, cudaSetDevice(0));
		QW_CUBLAS_TRY(err, cublasCreate(&h));
		cublasStatus_t st = cublasGetVersion(h, &out->cublas_version);
		QW_CUBLAS_TRY(err, cublasDestroy(h));
		QW_CUBLAS_TRY(err, st);
	}
	return QW_OK;
}
