/* launch.h - programmatic dependent launch (PDL) for the kernels of a decode step (CUDA C++
 * only, included by the .cu files).
 *
 * Owns: launch_pdl, and the two device calls a kernel launched by it makes.  A decode step
 * of one token is a chain of ~10 kernels a layer, most of them a few microseconds long, and
 * the GPU otherwise starts each only after the previous one has fully ended and its
 * blocks have drained: each boundary costs a launch and a pipeline ramp.  A kernel launched
 * with launch_pdl may begin while the previous kernel on the stream still runs:
 *   pdl_launch_next()   first thing in the kernel: the next PDL kernel may be launched once
 *                       every block of this one has started (they then wait, see below);
 *   pdl_wait_previous() before the kernel reads anything an earlier kernel wrote, or writes
 *                       anything an earlier kernel reads: returns once the previous kernel
 *                       has ended and its writes are visible (a no-op after a plain launch).
 * Work that depends on no earlier kernel (a weight stream's first loads) may go between the
 * two.  A kernel launched plainly after a PDL one waits for it as usual, so the chain is
 * safe wherever it stops.  Recorded into CUDA graphs as programmatic edges.
 */
#ifndef QW_KERNELS_CUDA_LAUNCH_H
#define QW_KERNELS_CUDA_LAUNCH_H

#include <cuda_runtime.h>

#include <utility>

__device__ static inline void pdl_launch_next(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ static inline void pdl_wait_previous(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/* kernel<<<grid, block, smem, stream>>>(args...), allowed to begin before the previous
 * kernel on the stream ends; the kernel must call pdl_wait_previous (above). */
template <typename... Params, typename... Args>
static cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
			      cudaStream_t stream, Args &&...args)
{
	cudaLaunchConfig_t cfg = {};
	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.dynamicSmemBytes = smem;
	cfg.stream = stream;
	cudaLaunchAttribute attr[1];
	attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	attr[0].val.programmaticStreamSerializationAllowed = 1;
	cfg.attrs = attr;
	cfg.numAttrs = 1;
	return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

#endif
