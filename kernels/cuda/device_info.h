/* device_info.h - what GPUs this process sees, and the CUDA stack it runs on.
 *
 * Owns: qw_cuda_probe, which reads the driver, runtime, cuBLAS and NCCL versions, each
 * GPU's name, compute capability, SM count and memory, and which pairs of GPUs can
 * access each other's memory directly (NVLink or PCIe P2P).  C callable.
 */
#ifndef QW_KERNELS_CUDA_DEVICE_INFO_H
#define QW_KERNELS_CUDA_DEVICE_INFO_H

#include <stddef.h>

#include "loader/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QW_MAX_GPUS 16

typedef struct qw_gpu_info {
	char name[256];
	int cc_major, cc_minor;      /* compute capability, e.g. 9.0 for Hopper */
	int sm_count;
	size_t total_bytes, free_bytes;
	int pci_bus, pci_device;
} qw_gpu_info;

typedef struct qw_cuda_env {
	int driver_version;          /* e.g. 13000 for 13.0 */
	int runtime_version;
	int cublas_version;
	int nccl_version;            /* e.g. 22800 for 2.28.0 */
	int n_gpus;
	qw_gpu_info gpus[QW_MAX_GPUS];
	int peer[QW_MAX_GPUS][QW_MAX_GPUS];   /* 1 if gpus[i] can access gpus[j] directly */
} qw_cuda_env;

/* Fills out; no GPU (a driver and none visible) is n_gpus 0, not an error.  No driver at
 * all, or one older than the runtime, is QW_E_DEVICE saying which, with a HINT. */
qw_status qw_cuda_probe(qw_cuda_env *out, qw_err *err);

#ifdef __cplusplus
}
#endif

#endif
