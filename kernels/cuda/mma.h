/* mma.h - the tensor-core and asynchronous-copy primitives the CUDA kernels share (CUDA C++
 * only, included by the files that feed mma.sync: attn_engine.cuh (attention.cu,
 * segment_attention.cu), moe_tile.cuh (moe_gemm.cu, moe_fused.cu), gemm.cu; and by wgmma.h).
 *
 * Owns: cp_async / cp_async_at (16, 8 or 4 bytes, global to shared, zeros when told not to
 * read), cp_async_commit / cp_async_wait, ldmatrix_x4 (plain and transposed), mma_bf16
 * (m16n8k16, bf16 in, fp32 accumulate) and bf16x2_bits.  One home for them, so a fix or a
 * new architecture touches one place.
 */
#ifndef QW_KERNELS_CUDA_MMA_H
#define QW_KERNELS_CUDA_MMA_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

static __device__ __forceinline__ uint32_t smem_addr(const void *p)
{
	return (uint32_t)__cvta_generic_to_shared(p);
}

/* VEC bytes from global src to shared address dst, or zeros when !ok (src is then not
 * read). */
template <int VEC>
static __device__ __forceinline__ void cp_async_at(uint32_t dst, const void *src, bool ok)
{
	static_assert(VEC == 16 || VEC == 8 || VEC == 4, "cp.async copies 16, 8 or 4 bytes");
	if constexpr (VEC == 16)
		asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
			     "r"(ok ? 16 : 0) : "memory");
	else
		asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src),
			     "n"(VEC), "r"(ok ? VEC : 0) : "memory");
}

/* The same to a generic pointer into shared memory. */
template <int VEC>
static __device__ __forceinline__ void cp_async(void *dst, const void *src, bool ok)
{
	cp_async_at<VEC>(smem_addr(dst), src, ok);
}

static __device__ __forceinline__ void cp_async_commit()
{
	asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most N of this thread's committed groups are pending. */
template <int N>
static __device__ __forceinline__ void cp_async_wait()
{
	asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Four 8x8 bf16 matrices; lane i gives the address of row i % 8 of matrix i / 8. */
static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const __nv_bfloat16 *p)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(smem_addr(p)));
}

/* The same, each matrix transposed. */
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const __nv_bfloat16 *p)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(smem_addr(p)));
}

/* c (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col). */
static __device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0,
						uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
		     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ uint32_t bf16x2_bits(__nv_bfloat162 h)
{
	uint32_t u;
	memcpy(&u, &h, sizeof u);
	return u;
}

#endif
