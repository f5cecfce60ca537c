/* test_devices.c - what qwend runs on: GPUs counted from a directory listing one entry per
 * GPU (as /proc/driver/nvidia/gpus does) and CUDA_VISIBLE_DEVICES, device auto choosing
 * cuda exactly when the build has CUDA and a GPU is listed, and the GPU list of a cuda
 * pipeline. */
#include "tests/unit/helpers.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "daemon/devices.h"

static void test_count(void **state)
{
	char *dir = scratch_new();
	unsetenv("CUDA_VISIBLE_DEVICES");
	assert_int_equal(qw_devices_count_gpus(path_in(dir, "missing")), 0);
	assert_int_equal(qw_devices_count_gpus(dir), 0);
	assert_int_equal(mkdir(path_in(dir, "0000:18:00.0"), 0755), 0);
	assert_int_equal(mkdir(path_in(dir, "0000:2a:00.0"), 0755), 0);
	assert_int_equal(qw_devices_count_gpus(dir), 2);
	/* as CUDA sees them */
	setenv("CUDA_VISIBLE_DEVICES", "1", 1);
	assert_int_equal(qw_devices_count_gpus(dir), 1);
	setenv("CUDA_VISIBLE_DEVICES", "", 1);
	assert_int_equal(qw_devices_count_gpus(dir), 0);
	setenv("CUDA_VISIBLE_DEVICES", "-1", 1);
	assert_int_equal(qw_devices_count_gpus(dir), 0);
	/* without a driver's listing, none, whatever the variable says */
	setenv("CUDA_VISIBLE_DEVICES", "0,1", 1);
	assert_int_equal(qw_devices_count_gpus(path_in(dir, "missing")), 0);
	unsetenv("CUDA_VISIBLE_DEVICES");
	scratch_free(dir);
}

static void test_pick(void **state)
{
	char why[160];
	assert_string_equal(qw_devices_pick("auto", 2, true, why, sizeof why), "cuda");
	assert_string_equal(why, "device auto: cuda, on the 2 GPUs the driver lists");
	assert_string_equal(qw_devices_pick("auto", 0, true, why, sizeof why), "cpu");
	assert_contains(why, "device auto: cpu, as no NVIDIA GPU is listed in");
	assert_string_equal(qw_devices_pick("auto", 4, false, why, sizeof why), "cpu");
	assert_string_equal(why, "device auto: cpu, as this build has no CUDA backend");
	/* told: as told */
	assert_string_equal(qw_devices_pick("cpu", 8, true, why, sizeof why), "cpu");
	assert_string_equal(why, "device cpu, as set");
	assert_string_equal(qw_devices_pick("cuda", 0, false, why, sizeof why), "cuda");
}

static void test_gpus(void **state)
{
	int gpu[64], n;
	qw_err err = {0};
	assert_int_equal(qw_devices_gpus("", 3, gpu, 64, &n, &err), QW_OK);
	assert_int_equal(n, 3);
	assert_true(gpu[0] == 0 && gpu[1] == 1 && gpu[2] == 2);
	assert_int_equal(qw_devices_gpus("2,0,0", 1, gpu, 64, &n, &err), QW_OK);
	assert_int_equal(n, 3);
	assert_true(gpu[0] == 2 && gpu[1] == 0 && gpu[2] == 0);
	assert_int_equal(qw_devices_gpus("", 0, gpu, 64, &n, &err), QW_E_ARG);
	assert_contains(err.msg, "no NVIDIA GPU is listed");
	assert_contains(err.msg, "HINT: --gpus 0,1,... names them");
	assert_int_equal(qw_devices_gpus("0,x", 2, gpu, 64, &n, &err), QW_E_ARG);
	assert_contains(err.msg, "--gpus 0,x: not a list");
	assert_int_equal(qw_devices_gpus("0,1,2", 3, gpu, 2, &n, &err), QW_E_ARG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_count),
		cmocka_unit_test(test_pick),
		cmocka_unit_test(test_gpus),
	};
	return cmocka_run_group_tests_name("devices", tests, NULL, NULL);
}
