/* gpu_check.c - the GPU op tests' random inputs and comparisons.  See gpu_check.h. */
#include "tests/gpu/gpu_check.h"

#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "loader/dtype.h"

static uint64_t rng;

void gpu_check_seed(void)
{
	const char *s = getenv("QW_TEST_SEED");
	rng = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
	printf("# seed %llu (QW_TEST_SEED)\n", (unsigned long long)rng);
}

int gpu_check_backends(qw_backend **cpu, qw_backend **gpu)
{
	qw_err err = {0};
	gpu_check_seed();
	if (qw_cpu_backend_create(cpu, &err) || qw_cuda_backend_create(0, gpu, &err)) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	return 0;
}

void gpu_check_backends_free(qw_backend *cpu, qw_backend *gpu)
{
	cpu->destroy(cpu);
	gpu->destroy(gpu);
}

qw_act gpu_check_act(qw_backend *be, int rows, int cols, const float *v)
{
	qw_act a;
	qw_err err = {0};
	assert_int_equal(be->act_alloc(be, rows, cols, &a, &err), QW_OK);
	if (v)
		assert_int_equal(be->act_write(be, &a, v, &err), QW_OK);
	else
		assert_int_equal(cudaMemset(a.data, 0xff, (size_t)rows * (size_t)cols * 2), cudaSuccess);
	assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
	return a;
}

static uint64_t next(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return rng;
}

double gpu_check_normal(void)
{
	double u1 = ((double)(next() >> 11) + 0.5) * 0x1.0p-53;
	double u2 = (double)(next() >> 11) * 0x1.0p-53;
	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint32_t gpu_check_below(uint32_t n)
{
	return (uint32_t)(next() >> 33) % n;
}

float *gpu_check_randv(size_t n, double mean, double std)
{
	float *v = malloc(n * sizeof *v + 4);
	for (size_t i = 0; i < n; i++)
		v[i] = qw_bf16_to_f32(qw_f32_to_bf16((float)(mean + std * gpu_check_normal())));
	return v;
}

void gpu_check_values(const char *what, const float *want, const float *got, size_t n, int cols,
		      double rtol, double atol_rms_share, double atol)
{
	double ss = 0.0, max_err = 0.0, se = 0.0;
	for (size_t i = 0; i < n; i++)
		ss += (double)want[i] * want[i];
	double rms = sqrt(ss / (double)(n ? n : 1)), tol_abs = atol + atol_rms_share * rms;
	int bad = 0;
	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)got[i] - (double)want[i]);
		se += e * e;
		if (!(e <= tol_abs + rtol * fabs(want[i]))) {
			if (bad < 10)
				fprintf(stderr, "%s: [%zu] (row %zu) cpu %.6g gpu %.6g\n", what, i,
					i / (size_t)cols, want[i], got[i]);
			bad++;
		}
		if (e > max_err || isnan(e))
			max_err = isnan(e) ? INFINITY : e;
	}
	printf("# %-28s %7zu values, max |err| %.3g, nmse %.3g\n", what, n, max_err,
	       ss > 0 ? se / ss : se);
	if (bad)
		fail_msg("%s: %d of %zu values outside tolerance", what, bad, n);
}

uint16_t *gpu_check_device_bits(void *stream, const void *p, size_t n)
{
	uint16_t *h = malloc(n * 2 + 2);
	assert_int_equal(cudaStreamSynchronize((cudaStream_t)stream), cudaSuccess);
	assert_int_equal(cudaMemcpy(h, p, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
	return h;
}

void gpu_check_same_bits(void *stream, const char *what, const char *a_name, const void *a,
			 const char *b_name, const void *b, size_t n, int cols)
{
	uint16_t *x = gpu_check_device_bits(stream, a, n), *y = gpu_check_device_bits(stream, b, n);
	int bad = 0;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i]) {
			if (bad < 10)
				fprintf(stderr, "%s: [%zu] (row %zu) %s %04x, %s %04x\n", what, i,
					i / (size_t)cols, a_name, x[i], b_name, y[i]);
			bad++;
		}
	printf("# %-28s %7zu values, %s\n", what, n, bad ? "DIFFERENT" : "same bits");
	free(x);
	free(y);
	if (bad)
		fail_msg("%s: %d of %zu values differ from the %s", what, bad, n, b_name);
}
