/* test_nccl_transport.c - qwen-transport-check over NCCL between the GPUs of this machine:
 * every transfer verified (the GPUs' checksums agree with the host's), a flipped bit caught.
 * Needs two GPUs; with fewer it says so and fails, as a GPU test that cannot run should. */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/device_info.h"

static int gpus(void)
{
	qw_cuda_env env;
	qw_err err = {0};
	return qw_cuda_probe(&env, &err) == QW_OK ? env.n_gpus : 0;
}

static void test_nccl(void **state)
{
	int n = gpus();
	if (n < 2)
		fail_msg("this machine has %d GPU(s); the NCCL transport needs 2", n);
	char list[64] = "0";
	for (int i = 1; i < n && i < 4; i++)
		snprintf(list + strlen(list), sizeof list - strlen(list), ",%d", i);
	char *out;
	int rc = run_capture(&out, "NCCL_NVLS_ENABLE=0 %s --transport nccl --gpus %s --sizes 1K:64M "
			     "--iters 5 --dtype bf16", program("qwen-transport-check"), list);
	if (rc != 0)
		fail_msg("%s", out);
	assert_contains(out, "mismatched\nOK");
	free(out);
	rc = run_capture(&out, "NCCL_NVLS_ENABLE=0 %s --transport nccl --gpus 0,1 --shape 1,8,4096 "
			 "--corrupt", program("qwen-transport-check"));
	assert_int_equal(rc, 1);
	assert_contains(out, "MISMATCH hop 0 -> 1");
	assert_contains(out, "19 of 20 transfers verified, 1 mismatched");
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nccl),
	};
	return cmocka_run_group_tests_name("nccl-transport", tests, NULL, NULL);
}
