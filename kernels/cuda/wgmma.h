/* wgmma.h - Hopper's warpgroup MMA and the shared-memory machinery that feeds it (CUDA C++
 * only, sm_90a: included by gemm_wgmma.cu and the GPU tests' probe).
 *
 * Owns: the shared-memory layout the wgmma kernels write their operands in (wg_pair_offset:
 * 128-byte swizzled rows, the k values of a 32-block in mma.sync's slot order), its matrix
 * descriptor (wg_desc, wg_desc_sw128), an MN-major operand's layout and descriptor
 * (wg_mn_offset, wg_desc_mn: only the probe's so far, for the grouped expert GEMM), the
 * instructions (wgmma_m64n128, wgmma_fence, wgmma_commit, wgmma_wait, wg_fence_acc), the
 * registers of a specialised warpgroup (wg_regs_dec, wg_regs_inc), the mbarriers of a
 * producer/consumer pipeline (mbar_init, mbar_arrive, mbar_wait) and the proxy fence between
 * the threads' writes to shared memory and wgmma's reads of it (fence_proxy_async).  Everything compiles to nothing
 * but a trap outside sm_90a (QW_WGMMA_ARCH 0): a caller checks the device first.
 *
 * The operand layout (both operands K-major: x (T, K) and W (N, K) are rows of k):
 * a panel holds R rows of 64 k values, 128 bytes a row, row r at byte 128 r; its 16-byte
 * chunks are swizzled as the hardware's 128-byte mode reads them: logical chunk c of row r
 * lies at physical chunk c ^ (r % 8) (the XOR of address bits [4, 7) with bits [7, 10), so
 * a panel must start 1024-byte aligned).  wgmma's k16 step q (0..3) of the panel reads
 * logical chunks 2q (its k slots 0..7) and 2q + 1 (slots 8..15) of each row.
 *
 * The order of the sums (gemm.cu's header) wants each k16 step to be one of gemm.cu's
 * mma.sync instructions with the same k in the same slot: block b's first mma.sync takes
 * k = 32b + 8t + {0, 1} in slots 2t, 2t + 1 and 32b + 8t + {2, 3} in slots 2t + 8, 2t + 9
 * (t = 0..3); its second the same + 4.  So k = 32b + 8t + 2j + e (j = 0..3, e = 0, 1) goes
 * to step 2b' + j / 2 (b' = b % 2, the block's half of the panel), chunk 4b' + j, bytes
 * 4t + 2e of that chunk: the 4x4 transpose of a block's 4-byte pairs (t, j) -> (j, t).
 * Pairs of k stay together, so a 4-byte copy moves one pair (wg_pair_offset gives its place).
 *
 * The matrix descriptor (64 bits; PTX ISA "Matrix Descriptor Format"), for a panel of
 * 128-byte swizzled K-major rows, at step q:
 *   bits  0..13  start address >> 4: (panel + 32 q) >> 4 (shared addresses < 256 KiB, so
 *                18 bits >> 4 fit); the hardware applies the swizzle to the address it forms,
 *                so stepping 32 bytes along k is adding 2 here
 *   bits 16..29  leading-dimension byte offset >> 4: unused by K-major swizzled layouts
 *                whose k16 step lies inside one 128-byte row; 1 (16 bytes), as CUTLASS sets
 *   bits 32..45  stride-dimension byte offset >> 4: from one group of 8 rows to the next,
 *                8 x 128 = 1024 bytes -> 64
 *   bits 49..51  base offset: 0 (panels are 1024-byte aligned)
 *   bits 62..63  swizzle mode: 1 = 128-byte (2 = 64-byte, 3 = 32-byte, 0 = none)
 * An m64 A operand is 64 rows (8 groups of 8 rows) from the descriptor's start; B is N rows.
 *
 * The accumulators of m64nNk16 (f32): warp w of the warpgroup holds rows 16 w .. 16 w + 15;
 * lane (g = lane / 4, t = lane % 4) holds d[4 j + {0, 1}] at row g, columns 8 j + 2 t + {0,
 * 1} and d[4 j + {2, 3}] at row g + 8: mma.sync's m16n8 accumulator, N / 8 times.
 */
#ifndef QW_KERNELS_CUDA_WGMMA_H
#define QW_KERNELS_CUDA_WGMMA_H

#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/cuda/mma.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define QW_WGMMA_ARCH 1
#else
#define QW_WGMMA_ARCH 0
#endif

#define WG_PANEL_K 64        /* k values of a panel row (128 bytes) */
#define WG_ROW_BYTES 128

/* The byte offset in a panel of the 4-byte pair of row r holding k and k + 1, k even and
 * local to the panel (0..63): mma.sync's slot order (above). */
static __device__ __forceinline__ uint32_t wg_pair_offset(int r, int k)
{
	const int half = k / 32, t = (k % 32) / 8, j = (k % 8) / 2;
	const int chunk = 4 * half + j;
	return (uint32_t)(r * WG_ROW_BYTES + ((chunk ^ (r % 8)) * 16) + 4 * t);
}

/* A descriptor of 128-byte swizzled atoms at shared address `start` (above): lbo and sbo in
 * bytes. */
static __device__ __forceinline__ uint64_t wg_desc_sw128(uint32_t start, uint32_t lbo,
							 uint32_t sbo)
{
	return (uint64_t)((start & 0x3FFFFu) >> 4) | (uint64_t)((lbo & 0x3FFFFu) >> 4) << 16 |
	       (uint64_t)((sbo & 0x3FFFFu) >> 4) << 32 | 1ull << 62;
}

/* The descriptor of the K-major panel at shared address `panel` (1024-byte aligned), k16
 * step q. */
static __device__ __forceinline__ uint64_t wg_desc(uint32_t panel, int q)
{
	return wg_desc_sw128(panel + 32u * (uint32_t)q, 16, 1024);
}

/* An MN-major B operand (what an input-major (K, N) weight gives: rows of n for each k; the
 * grouped expert GEMM's layout), N a multiple of 64, 128-byte swizzle (CUTLASS's canonical
 * ((8,n),(8,k)):((1,LBO),(8,SBO)) in 16-byte units): atoms of 8 k rows x 64 n (128 bytes a
 * row, chunk c of row r at c ^ (r % 8)); the atoms along n at LBO = 1024 bytes, the groups of
 * 8 k at SBO = N / 64 x 1024.  A k16 step s starts 2 SBO further.  The byte offset of (k, n): */
static __device__ __forceinline__ uint32_t wg_mn_offset(int k, int n, int N)
{
	return (uint32_t)((k / 8) * (N / 64) * 1024 + (n / 64) * 1024 + (k % 8) * WG_ROW_BYTES +
			  ((((n % 64) / 8) ^ (k % 8)) * 16) + (n % 8) * 2);
}

/* ... and the descriptor of k16 step s of such an operand at `tile` (1024-byte aligned). */
static __device__ __forceinline__ uint64_t wg_desc_mn(uint32_t tile, int s, int N)
{
	const uint32_t sbo = (uint32_t)(N / 64) * 1024u;
	return wg_desc_sw128(tile + 2u * sbo * (uint32_t)s, 1024, sbo);
}

static __device__ __forceinline__ void wgmma_fence(void)
{
#if QW_WGMMA_ARCH
	asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
	__trap();
#endif
}

static __device__ __forceinline__ void wgmma_commit(void)
{
#if QW_WGMMA_ARCH
	asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

/* Waits until at most N of the warpgroup's committed wgmma groups are pending. */
template <int N>
static __device__ __forceinline__ void wgmma_wait(void)
{
#if QW_WGMMA_ARCH
	asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

/* Keeps the compiler from moving reads or writes of an accumulator across a wgmma_wait. */
static __device__ __forceinline__ void wg_fence_acc(float &v)
{
	asm volatile("" : "+f"(v)::"memory");
}

/* d (64 x 128, f32) += A (64 x 16, descriptor a, K-major) B (16 x 128, descriptor b: K-major
 * when !MN_B, i.e. W's rows of k; MN-major when MN_B, rows of 128 n a k); asynchronous until
 * wgmma_commit + wgmma_wait. */
template <bool MN_B = false>
static __device__ __forceinline__ void wgmma_m64n128(float d[64], uint64_t a, uint64_t b)
{
#if QW_WGMMA_ARCH
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
		     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
		     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
		     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
		     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
		     "%64, %65, p, 1, 1, 0, %67;\n}\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
		       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
		       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
		       "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
		       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
		       "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
		       "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
		       "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
		       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
		       "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
		       "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
		     : "l"(a), "l"(b), "r"(1), "n"(MN_B ? 1 : 0));
#else
	__trap();
#endif
}

/* The warpgroup's registers a thread from here on: fewer (dec) for a producer that only
 * copies, more (inc) for consumers that hold accumulators.  The CTA's total must stay
 * within what it was launched with (__launch_bounds__: 65536 / threads a thread). */
template <int REGS>
static __device__ __forceinline__ void wg_regs_dec(void)
{
#if QW_WGMMA_ARCH
	asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
#endif
}

template <int REGS>
static __device__ __forceinline__ void wg_regs_inc(void)
{
#if QW_WGMMA_ARCH
	asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
#endif
}

/* Orders this thread's generic-proxy writes to shared memory (st.shared, cp.async once
 * waited for) before later async-proxy reads (wgmma) that a barrier hands them to. */
static __device__ __forceinline__ void fence_proxy_async(void)
{
#if QW_WGMMA_ARCH
	asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

static __device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count)
{
#if QW_WGMMA_ARCH
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)),
		     "r"(count) : "memory");
#endif
}

/* One arrival (release: this thread's earlier writes are seen by whoever waits). */
static __device__ __forceinline__ void mbar_arrive(uint64_t *bar)
{
#if QW_WGMMA_ARCH
	asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n"
		     ::"r"(smem_addr(bar)) : "memory");
#endif
}

/* Waits for the barrier's phase of this parity to complete (acquire). */
static __device__ __forceinline__ void mbar_wait(uint64_t *bar, unsigned parity)
{
#if QW_WGMMA_ARCH
	uint32_t done = 0;
	do {
		asm volatile("{\n.reg .pred p;\n"
			     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
			     "selp.u32 %0, 1, 0, p;\n}\n"
			     : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
	} while (!done);
#endif
}

#endif
