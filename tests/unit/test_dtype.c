/* test_dtype.c - dtype names/sizes and the scalar conversions, against values from the
 * IEEE-754 / bfloat16 / OCP FP8 definitions. */
#include "tests/unit/helpers.h"

#include <math.h>

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_and_sizes),
		cmocka_unit_test(test_bf16),
		cmocka_unit_test(test_f16),
		cmocka_unit_test(test_f8e4m3),
	};
	return cmocka_run_group_tests_name("dtype", tests, NULL, NULL);
}
