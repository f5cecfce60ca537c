/* test_positions.c - M-RoPE positions with images (get_rope_index), against the spec's
 * worked example and a two-image prompt worked by hand, and the errors. */
#include "tests/unit/helpers.h"

#include <string.h>

#include "kernels/positions.h"

static qw_config cfg;

static int setup(void **state)
{
	qw_err err = {0};
	return qw_config_load(fixture("hf/tiny-moe/model/config.json"), &cfg, &err) != QW_OK;
}

enum { IMG = 1000, START = 998, END = 999 };

/* The spec's example: grid (1, 14, 20) -> 7 x 10 = 70 pads after <|vision_start|> at index 5:
 * pads t = 6, h = 6..12, w = 6..15; <|vision_end|> 16; rope_delta = 26 - 86 = -60. */
static void test_spec_example(void **state)
{
	int32_t ids[86], pos[86 * 3], grid[3] = {1, 14, 20};
	for (int i = 0; i < 86; i++)
		ids[i] = 5;
	ids[5] = START;
	for (int i = 6; i < 76; i++)
		ids[i] = IMG;
	ids[76] = END;
	int delta;
	qw_err err = {0};
	assert_int_equal(qw_mrope_positions(&cfg, ids, 86, grid, 1, pos, &delta, &err), QW_OK);
	assert_int_equal(delta, -60);
	for (int k = 0; k < 70; k++) {
		int i = 6 + k;
		assert_int_equal(pos[3 * i], 6);
		assert_int_equal(pos[3 * i + 1], 6 + k / 10);
		assert_int_equal(pos[3 * i + 2], 6 + k % 10);
	}
	assert_int_equal(pos[3 * 76], 16);
	assert_int_equal(pos[3 * 85 + 1], 25);
}

/* Two images: grids (1, 4, 6) -> 2 x 3 pads, (1, 2, 2) -> 1 pad. */
static void test_two_images(void **state)
{
	int32_t ids[] = {7, START, IMG, IMG, IMG, IMG, IMG, IMG, END, 8, START, IMG, END, 9};
	int n = sizeof ids / sizeof *ids, delta;
	int32_t grids[6] = {1, 4, 6, 1, 2, 2}, pos[14 * 3];
	qw_err err = {0};
	assert_int_equal(qw_mrope_positions(&cfg, ids, n, grids, 2, pos, &delta, &err), QW_OK);
	const int32_t want[14][3] = {{0, 0, 0}, {1, 1, 1}, {2, 2, 2}, {2, 2, 3}, {2, 2, 4},
				     {2, 3, 2}, {2, 3, 3}, {2, 3, 4}, {5, 5, 5}, {6, 6, 6},
				     {7, 7, 7}, {8, 8, 8}, {9, 9, 9}, {10, 10, 10}};
	assert_memory_equal(pos, want, sizeof want);
	assert_int_equal(delta, 11 - 14);
}

static void test_errors(void **state)
{
	int32_t ids[] = {START, IMG, IMG, END}, pos[12], grid[3] = {1, 4, 6};
	int delta;
	qw_err err = {0};
	assert_int_equal(qw_mrope_positions(&cfg, ids, 4, grid, 1, pos, &delta, &err), QW_E_ARG);
	assert_contains(err.msg, "2 pad tokens");
	assert_int_equal(qw_mrope_positions(&cfg, ids, 4, grid, 0, pos, &delta, &err), QW_E_ARG);
	assert_contains(err.msg, "no image grid");
	int32_t text[] = {1, 2};
	assert_int_equal(qw_mrope_positions(&cfg, text, 2, grid, 1, pos, &delta, &err), QW_E_ARG);
	assert_contains(err.msg, "1 image grids given");
	int32_t video[] = {1001};
	assert_int_equal(qw_mrope_positions(&cfg, video, 1, grid, 0, pos, &delta, &err), QW_E_ARG);
	assert_contains(err.msg, "video");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_spec_example),
		cmocka_unit_test(test_two_images),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests_name("positions", tests, setup, NULL);
}
