/* devices.h - what qwend runs on: the device setting resolved, and a cuda pipeline's GPUs.
 *
 * Owns: the choice of backend when device is auto (cuda where this build has the CUDA
 * backend and the NVIDIA driver lists a GPU, else cpu) and the GPU of each stage of a cuda
 * pipeline (--gpus, else every GPU the driver lists).  The daemon never opens a GPU: it
 * counts them in /proc (QW_NVIDIA_GPUS_DIR, one entry per GPU), so it runs where there is no
 * driver at all; the workers open them.
 */
#ifndef QW_DAEMON_DEVICES_H
#define QW_DAEMON_DEVICES_H

#include <stdbool.h>
#include <stddef.h>

#include "loader/error.h"

#define QW_NVIDIA_GPUS_DIR "/proc/driver/nvidia/gpus"

/* GPUs the driver lists in dir (QW_NVIDIA_GPUS_DIR; 0 when it is not there), as CUDA will
 * see them: CUDA_VISIBLE_DEVICES, when set, says how many (none when empty or -1). */
int qw_devices_count_gpus(const char *dir);

/* The backend for setting ("auto", "cpu" or "cuda") given the GPUs found and whether this
 * build has CUDA; why (cap bytes) says how auto chose. */
const char *qw_devices_pick(const char *setting, int gpus, bool cuda_built, char *why,
			    size_t cap);

/* The GPUs of a cuda pipeline into gpu[] (at most max), one stage each: list ("0,1,2,3"; a
 * GPU may repeat), or when list is empty 0 .. n_found - 1.  QW_E_ARG naming the list, or
 * saying no GPU was found, with a HINT. */
qw_status qw_devices_gpus(const char *list, int n_found, int *gpu, int max, int *n,
			  qw_err *err);

#endif
