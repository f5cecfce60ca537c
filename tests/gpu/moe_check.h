/* moe_check.h - one MoE layer's test data, CPU reference and the tolerance a GPU result is
 * held to, shared by test_cuda_moe, test_cuda_moe_fp8 and test_cuda_experts (the GPU suite)
 * and bench_cuda_moe (which checks every build-time variant of the decode tile against it
 * before timing it, as llm.c's dev/cuda files do).
 *
 * Owns: the run's seed and threads; random inputs from (seed, stream, index), made in
 * parallel (moe_check_random_bf16);
 * FP8 matrices in a checkpoint's form with fresh random block scales (moe_check_fp8) and
 * their values as the CPU reference reads them (e4m3 * s in fp32) and as the FP8 contract
 * dequantises them (bf16_rn of that); per-expert matrices laid out fused
 * (moe_check_fuse); qw_tensor views of host data; moe_check_reference (the CPU backend's
 * moe op, the reference, over host tensors, in parallel over tokens); moe_check_compare
 * (per element |gpu - cpu| <= 0.02 rms(cpu) + 2^-7 |cpu|, and over the whole output an
 * nmse <= 3e-5; test_cuda_moe.c's header says why, test_cuda_moe_fp8.c's why it holds for
 * FP8 experts too), moe_check_same_bits, and moe_check_runs (the checks every GPU run of a
 * layer is held to: tolerance, a twin's bits, determinism, batch invariance).  None needs
 * cmocka: they return what they found and print why.
 */
#ifndef QW_TESTS_GPU_MOE_CHECK_H
#define QW_TESTS_GPU_MOE_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

/* A GPU suite's set-up: *seed the run's seed (QW_TEST_SEED, else fresh from the time and
 * pid; printed with how to repeat it), *threads the host's threads (the CPU's count, at
 * most 64); 0, or -1 (said) when there is no GPU. */
int moe_check_setup(uint64_t *seed, int *threads);
/* Threads for the host's share, as moe_check_setup gives them. */
int moe_check_threads(void);
/* A device copy of bytes of host (NULL, printed, on a CUDA error). */
void *moe_check_to_device(const void *host, size_t bytes);

/* A bf16 value as a float. */
float moe_check_bf16(uint16_t h);

/* fn over [0, n) in `threads` contiguous parts (1 to 64), each on its own thread. */
typedef void (*moe_check_part_fn)(void *ctx, size_t lo, size_t hi);
void moe_check_parallel(size_t n, int threads, moe_check_part_fn fn, void *ctx);

/* n bf16 values uniform in [-scale, scale) from (seed, stream, index) (malloc'd; NULL when
 * out of memory). */
uint16_t *moe_check_random_bf16(size_t n, uint64_t seed, uint64_t stream, float scale,
				int threads);

/* `count` FP8 matrices (rows, cols) as a checkpoint stores them: e4m3 codes and one fp32
 * scale per (br, bc) block of each matrix (partial at the edges).  Made from values v
 * uniform in [-amax, amax): each block's scale s = (2 amax / 448) 2^u with u uniform in
 * [-1, 1] (fresh random scales, a factor of 4 between blocks), codes e4m3(v / s) (none
 * saturates: |v / s| < 448; never a NaN code). */
typedef struct moe_check_fp8 {
	uint8_t *q;           /* (count, rows, cols) */
	float *s;             /* (count, ceil(rows / br), ceil(cols / bc)) */
	int64_t count, rows, cols;
	int br, bc;
} moe_check_fp8;

bool moe_check_fp8_make(moe_check_fp8 *m, int64_t count, int64_t rows, int64_t cols, int br,
			int bc, float amax, uint64_t seed, uint64_t stream, int threads);
void moe_check_fp8_free(moe_check_fp8 *m);
size_t moe_check_fp8_scales(const moe_check_fp8 *m);   /* scales of one matrix */
/* Its values (count * rows * cols, malloc'd): fp32 e4m3 * s (what qw_tensor_read_f32 reads,
 * the CPU reference's weights), or bf16 bits of bf16_rn(e4m3 * s) (the FP8 contract's). */
float *moe_check_fp8_f32(const moe_check_fp8 *m, int threads);
uint16_t *moe_check_fp8_bf16(const moe_check_fp8 *m, int threads);

/* fused (count, cols, ld) gets each (rows, cols) matrix of parts ([out, in]) transposed into
 * its columns [off, off + rows): per-expert weights laid out as the fused layout. */
void moe_check_fuse(uint16_t *fused, const uint16_t *parts, int64_t count, int64_t rows,
		    int64_t cols, int64_t ld, int64_t off, int threads);

/* A qw_tensor named "t" over host data of dtype (BF16 or F32) and ndim (1 to 3)
 * dimensions d0, d1, d2. */
qw_tensor moe_check_tensor_of(const void *data, qw_dtype dtype, int ndim, int64_t d0,
			      int64_t d1, int64_t d2);
/* The same, BF16. */
qw_tensor moe_check_tensor(uint16_t *data, int ndim, int64_t d0, int64_t d1, int64_t d2);
/* Matrix i of m (ndim 2), or all of them (ndim 3, i 0), as an F8_E4M3 qw_tensor with its
 * scales in *scale (which must outlive it). */
qw_tensor moe_check_fp8_tensor(const moe_check_fp8 *m, int64_t i, int ndim, qw_tensor *scale);

/* out (T, H) fp32 = the CPU backend's moe op with weights w (host tensors) on x (T, H)
 * bf16, T's tokens split over threads (1 to 64). */
qw_status moe_check_reference(const qw_moe_weights *w, int H, const uint16_t *x, int T,
			      int threads, float *out, qw_err *err);

/* The per-element tolerance's absolute term, in units of rms(ref): bf16 experts, and FP8
 * ones, whose weights the GPU rounds once more (to bf16, the FP8 contract) than the fp32
 * reference does: gate and up move by that rounding, act inherits it and down adds its own,
 * about sqrt(2) times bf16's error in all (nmse 1.4e-5 against bf16's 5.6e-6 on an H100, and
 * a largest difference of 1.14 x 0.02 rms over 2.6 million values of the 30B and 235B
 * layers), so 1.5 times bf16's term. */
#define MOE_CHECK_ATOL_BF16 0.02
#define MOE_CHECK_ATOL_FP8 0.03

/* got (T, H) bf16 against ref (T, H): true within atol_rms * rms(ref) + 2^-7 |ref| per
 * element and an nmse of 3e-5.  Prints the first 10 elements outside it and a line of
 * figures, each starting with what. */
bool moe_check_compare(const char *what, int T, int H, const float *ref, const uint16_t *got,
		       double atol_rms);

/* n bf16 values of a and b: true when their bits are equal; else prints the first that
 * differs (row and column of rows of `cols`), starting with what. */
bool moe_check_same_bits(const char *what, const uint16_t *a, const uint16_t *b, size_t n,
			 int cols);

/* One way to run a layer: tokens [row0, row0 + T) of a fixed batch into out (T, H) bf16
 * bits; false on a failure (printed). */
typedef bool (*moe_check_run_fn)(void *ctx, int row0, int T, uint16_t *out);

/* What a layer's runs are held to over one batch of sizes[n - 1] tokens (sizes ascending):
 * at every size (a prefix of the batch) the tolerance against ref (the whole batch's
 * reference), and, when twin is given, the bits of twin at that size; run again, the same
 * bits (determinism); every prefix, four tokens alone and a slice from the middle, the bits
 * of the whole batch (batch invariance).  True when all hold; prints what did not. */
bool moe_check_runs(const char *name, int H, const int *sizes, int n, const float *ref,
		    double atol_rms, moe_check_run_fn run, void *ctx, moe_check_run_fn twin,
		    void *twin_ctx);

#endif
