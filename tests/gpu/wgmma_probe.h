/* wgmma_probe.h - does Hopper's wgmma give mma.sync's bits?  The probe computes the same
 * problems, each out (64, PROBE_N) = A (64, PROBE_K) B (PROBE_N, PROBE_K)^T in fp32 from
 * zero, by mma.sync m16n8k16 and by wgmma m64n128k16, with the k values laid into the
 * instructions' slots in several ways (test_cuda_wgmma compares them).
 *
 * Owns: the probe's ways and probe_run; the kernels are in wgmma_probe.cu.
 */
#ifndef QW_TESTS_GPU_WGMMA_PROBE_H
#define QW_TESTS_GPU_WGMMA_PROBE_H

#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime.h>

#define PROBE_K 256   /* k of every problem: 8 blocks of 32, 4 panels of 64 */
#define PROBE_N 128   /* columns of every problem: one wgmma's */

typedef enum probe_way {
	PROBE_MMA_SLOTS,     /* mma.sync in gemm.cu's order (mma_block): the reference */
	PROBE_MMA_NATURAL,   /* mma.sync, instruction s over k 16s..16s+15 in slot order */
	PROBE_WG_SLOTS,      /* wgmma, each k in the slot mma.sync gives it (wgmma.h's layout) */
	PROBE_WG_QUADS,      /* wgmma, each instruction over mma.sync's k values, in other slots:
				quads of 4 consecutive k (the layout 8-byte copies can make) */
	PROBE_WG_NATURAL,    /* wgmma, step s over k 16s..16s+15 in slot order (TMA's layout) */
	PROBE_WG_MN,         /* the same with B MN-major (rows of n for each k: the layout of the
				expert GEMM's input-major weights), A as PROBE_WG_NATURAL */
} probe_way;

#ifdef __cplusplus
extern "C" {
#endif

/* out (problems, 64, PROBE_N) fp32 from a (problems, 64, PROBE_K) and b (problems,
 * PROBE_N, PROBE_K) bf16, all device memory, on the default stream; the wgmma ways need
 * an sm_90 device (qw_cuda_gemm_wgmma_device). */
cudaError_t probe_run(probe_way how, float *out, const uint16_t *a, const uint16_t *b,
		      int problems);

#ifdef __cplusplus
}
#endif

#endif
