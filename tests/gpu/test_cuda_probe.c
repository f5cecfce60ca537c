/* test_cuda_probe.c - the CUDA stack this build links (runtime, cuBLAS, NCCL) works on
 * this machine's GPUs: every GPU answers, is Ampere or newer (the archs we build), and
 * reports sane memory.  Part of `scons test-gpu`. */
#include "tests/unit/helpers.h"

#include "kernels/cuda/device_info.h"

static void test_probe(void **state)
{
	(void)state;
	qw_cuda_env env;
	qw_err err = {0};
	if (qw_cuda_probe(&env, &err) != QW_OK)
		fail_msg("%s", err.msg);
	assert_true(env.n_gpus >= 1);
	assert_true(env.runtime_version >= 12000);
	assert_true(env.driver_version >= env.runtime_version);
	assert_true(env.cublas_version > 0);
	assert_true(env.nccl_version >= 21800);
	for (int i = 0; i < env.n_gpus; i++) {
		const qw_gpu_info *g = &env.gpus[i];
		assert_true(g->cc_major >= 8);
		assert_true(g->sm_count > 0);
		assert_true(g->total_bytes > ((size_t)1 << 30));
		assert_true(g->free_bytes <= g->total_bytes);
		print_message("gpu %d: %s cc %d.%d, %d SMs, %zu MiB\n", i, g->name, g->cc_major,
			      g->cc_minor, g->sm_count, g->total_bytes >> 20);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_probe),
	};
	return cmocka_run_group_tests_name("cuda-probe", tests, NULL, NULL);
}
