/* test_dtype.c - dtype names/sizes and the scalar conversions, against values from the
 * IEEE-754 / bfloat16 / OCP FP8 definitions; the CUDA backend's FP8 dequantisation arithmetic
 * (kernels/cuda/e4m3x8.h) against the loader's, bit for bit. */
#include "tests/unit/helpers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/e4m3x8.h"
#include "loader/dtype.h"

static void test_names_and_sizes(void **state)
{
	(void)state;
	assert_int_equal(qw_dtype_from_name("BF16"), QW_DT_BF16);
	assert_int_equal(qw_dtype_from_name("F8_E4M3"), QW_DT_F8_E4M3);
	assert_int_equal(qw_dtype_from_name("I64"), QW_DT_I64);
	assert_int_equal(qw_dtype_from_name("bf16"), QW_DT_INVALID);   /* names are exact */
	assert_int_equal(qw_dtype_from_name(""), QW_DT_INVALID);
	assert_int_equal(qw_dtype_size(QW_DT_BF16), 2);
	assert_int_equal(qw_dtype_size(QW_DT_F8_E4M3), 1);
	assert_int_equal(qw_dtype_size(QW_DT_I64), 8);
	assert_int_equal(qw_dtype_size(QW_DT_INVALID), 0);
	for (int d = 1; d < QW_DT_COUNT_; d++)
		assert_int_equal(qw_dtype_from_name(qw_dtype_name((qw_dtype)d)), d);
	assert_true(qw_dtype_is_float(QW_DT_BF16));
	assert_false(qw_dtype_is_float(QW_DT_I64));
}

static void test_bf16(void **state)
{
	(void)state;
	assert_true(qw_bf16_to_f32(0x3f80) == 1.0f);
	assert_true(qw_bf16_to_f32(0xc040) == -3.0f);
	assert_int_equal(qw_f32_to_bf16(1.0f), 0x3f80);
	/* 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties go to even (1.0) */
	assert_int_equal(qw_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
	/* 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): up */
	assert_int_equal(qw_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
	assert_int_equal(qw_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
	assert_int_equal(qw_f32_to_bf16(INFINITY), 0x7f80);
	assert_true(isnan(qw_bf16_to_f32(qw_f32_to_bf16(NAN))));
	assert_int_equal(qw_f32_to_bf16(3.4e38f), 0x7f80);   /* rounds past the largest bf16 */
}

static void test_f16(void **state)
{
	(void)state;
	assert_true(qw_f16_to_f32(0x3c00) == 1.0f);
	assert_true(qw_f16_to_f32(0xc000) == -2.0f);
	assert_true(qw_f16_to_f32(0x7bff) == 65504.0f);
	assert_true(qw_f16_to_f32(0x0001) == 0x1p-24f);       /* smallest subnormal */
	assert_true(qw_f16_to_f32(0x0400) == 0x1p-14f);       /* smallest normal */
	assert_true(isinf(qw_f16_to_f32(0x7c00)));
	assert_true(isnan(qw_f16_to_f32(0x7e00)));
	assert_true(signbit(qw_f16_to_f32(0x8000)));
}

static void test_f8e4m3(void **state)
{
	(void)state;
	assert_true(qw_f8e4m3_to_f32(0x38) == 1.0f);          /* exp 7 = bias */
	assert_true(qw_f8e4m3_to_f32(0x7e) == 448.0f);        /* the largest finite */
	assert_true(qw_f8e4m3_to_f32(0xfe) == -448.0f);
	assert_true(qw_f8e4m3_to_f32(0x01) == 0x1p-9f);       /* smallest subnormal */
	assert_true(qw_f8e4m3_to_f32(0x08) == 0x1p-6f);       /* smallest normal */
	assert_true(qw_f8e4m3_to_f32(0x3c) == 1.5f);
	assert_true(isnan(qw_f8e4m3_to_f32(0x7f)));
	assert_true(isnan(qw_f8e4m3_to_f32(0xff)));
	assert_true(qw_f8e4m3_to_f32(0x78) == 256.0f);        /* e4m3fn has no infinity */
}

static uint32_t bits_of(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	return u;
}

/* The GPU's way to e4m3 * scale (a byte's bits placed in an fp32, one multiply by scale *
 * 2^120, two where that overflows) gives the reference's fp32 product bit for bit, for every
 * finite code and scales from subnormal to far past 2^8 (so the bf16 each rounds to is the
 * same); the NaN codes read as +-480, which is why the upload refuses them. */
static void test_f8e4m3_gpu_arithmetic(void **state)
{
	(void)state;
	float scales[2000];
	int n = 0;
	static const float fixed[] = {1.0f, 0x1p-149f, 0x1p-126f, 3e-39f, 1.17e-4f, 2.2e-4f,
				      255.99998f, 256.0f, 257.0f, 0x1p100f, 3.0e38f, 0x1.fffffep127f};
	for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
		scales[n++] = fixed[i];
	srand(16);
	while (n < 2000) {   /* log-uniform over 2^-140 .. 2^20, random mantissas */
		float m = 1.0f + (float)rand() / (float)RAND_MAX;
		scales[n++] = ldexpf(m, -140 + rand() % 160);
	}
	for (int i = 0; i < n; i++) {
		float s = scales[i], up = s * 0x1p120f;
		for (int q = 0; q < 256; q++) {
			if ((q & 0x7f) == 0x7f)
				continue;
			float ref = qw_f8e4m3_to_f32((uint8_t)q) * s;
			float gpu = e4m3_scaled(e4m3_times_2m120((uint32_t)q), up, s);
			if (bits_of(ref) != bits_of(gpu))
				fail_msg("code 0x%02x, scale %a: reference %a, GPU arithmetic %a", q, s,
					 ref, gpu);
		}
	}
	assert_true(e4m3_times_2m120(0x7f) * 0x1p120f == 480.0f);
	assert_true(e4m3_times_2m120(0xff) * 0x1p120f == -480.0f);
	assert_true(e4m3_times_2m120(0x17f) * 0x1p120f == 480.0f);   /* bits above 7 ignored */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_and_sizes),
		cmocka_unit_test(test_bf16),
		cmocka_unit_test(test_f16),
		cmocka_unit_test(test_f8e4m3),
		cmocka_unit_test(test_f8e4m3_gpu_arithmetic),
	};
	return cmocka_run_group_tests_name("dtype", tests, NULL, NULL);
}
