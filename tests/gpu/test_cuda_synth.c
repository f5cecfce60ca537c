/* test_cuda_synth.c - synthetic FP8 weights made on the GPU (the CUDA backend's synthesize
 * of an F8_E4M3 tensor, kernels/cuda/synth.cu) against the host's recipe: the values of
 * loader/export.h's stream, recomputed here from its documented formula for any element,
 * rounded to bf16 and quantized per 128 x 128 block by qw_export_quantize_fp8.  At odd shapes
 * with partial blocks and at the real models' shapes (Qwen3-VL-235B-A22B's o_proj and fused
 * experts, of which the first and last expert are compared: 805 M values would take the host
 * minutes): the result is F8_E4M3 with a device F32 scale tensor of ceil(shape / block) and
 * the block bound; codes and scales equal the host's but where CUDA's and glibc's double
 * log/sin/cos round a last bit apart (at most 1 in 10^4 values, each then within e4m3's
 * rounding of the host's); the dequantised values have the standard deviation asked for
 * (within 1%).  Then a whole tiny FP8 model through qw_stage_model_load_synthetic: every
 * quantizable weight's codes and scales on the GPU equal the FP8 export's file. */
#include "tests/unit/helpers.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/forward.h"
#include "loader/checkpoint.h"
#include "loader/clock.h"
#include "loader/dtype.h"
#include "loader/export.h"
#include "loader/weights.h"

static qw_backend *gpu;

static int setup(void **state)
{
	qw_err err = {0};
	if (qw_cuda_backend_create(0, &gpu, &err) != QW_OK) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	gpu->destroy(gpu);
	return 0;
}

/* Element k of stream s0 with (mean, std), as export.h documents it, rounded to bf16. */
static float stream_value(uint64_t s0, uint64_t k, double mean, double std)
{
	const uint64_t g = 0x9e3779b97f4a7c15ull, j = k / 2;
	uint64_t x[2] = {s0 + (2 * j + 1) * g, s0 + (2 * j + 2) * g};
	double u[2];
	for (int i = 0; i < 2; i++) {
		uint64_t z = x[i];
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		u[i] = ((double)(z >> 11) + 0.5) * 0x1.0p-53;
	}
	double r = sqrt(-2.0 * log(u[0])), a = 2.0 * M_PI * u[1];
	return qw_bf16_to_f32(qw_f32_to_bf16((float)(mean + std * r * (k & 1 ? sin(a) : cos(a)))));
}

static void *download(const void *dev, size_t bytes)
{
	void *h = malloc(bytes + 1);
	assert_int_equal(cudaStreamSynchronize((cudaStream_t)qw_cuda_backend_stream(gpu)),
			 cudaSuccess);
	assert_int_equal(cudaMemcpy(h, dev, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
	return h;
}

/* A description of an FP8 weight of shape (ndim, shape) with 128 x 128 blocks, its scales'
 * description in *sd, as qw_stage_model_load_synthetic hands it to synthesize. */
static qw_tensor fp8_desc(const char *name, int ndim, const int64_t *shape, qw_tensor *sd)
{
	qw_tensor t = {.name = (char *)name, .dtype = QW_DT_F8_E4M3, .ndim = ndim, .numel = 1};
	*sd = (qw_tensor){.name = (char *)"scale", .dtype = QW_DT_F32, .ndim = ndim, .numel = 1};
	for (int d = 0; d < ndim; d++) {
		t.shape[d] = sd->shape[d] = shape[d];
		if (d >= ndim - 2)
			sd->shape[d] = (shape[d] + 127) / 128;
		t.numel *= (uint64_t)shape[d];
		sd->numel *= (uint64_t)sd->shape[d];
	}
	t.nbytes = t.numel;
	sd->nbytes = sd->numel * 4;
	t.scale = sd;
	t.block[0] = t.block[1] = 128;
	return t;
}

/* Synthesizes an FP8 weight of this shape on the GPU and holds matrices `first` and `last`
 * (of the leading dimension) to the host's recipe. */
static void check_shape(const char *name, int ndim, const int64_t *shape, uint64_t first,
			uint64_t last)
{
	qw_tensor sd, t = fp8_desc(name, ndim, shape, &sd);
	uint64_t R = (uint64_t)shape[ndim - 2], C = (uint64_t)shape[ndim - 1], M = t.numel / (R * C);
	uint64_t SR = (R + 127) / 128, SC = (C + 127) / 128;
	double std = 1.0 / sqrt((double)shape[1]);   /* the fan-in: [out, in], experts [E, in, out] */
	uint64_t s0 = qw_export_stream_start(11, name);
	const qw_tensor *dev;
	qw_err err = {0};
	double t0 = qw_millis_now();
	assert_int_equal(gpu->synthesize(gpu, &t, s0, 0.0, std, &dev, &err), QW_OK);
	assert_int_equal(cudaStreamSynchronize((cudaStream_t)qw_cuda_backend_stream(gpu)),
			 cudaSuccess);
	double ms = qw_millis_now() - t0;
	assert_int_equal(dev->dtype, QW_DT_F8_E4M3);
	assert_int_equal(dev->nbytes, t.numel);
	assert_non_null(dev->scale);
	assert_int_equal(dev->block[0], 128);
	assert_int_equal(dev->block[1], 128);
	assert_int_equal(dev->scale->dtype, QW_DT_F32);
	assert_int_equal(dev->scale->numel, M * SR * SC);
	assert_int_equal(dev->scale->shape[ndim - 2], (int64_t)SR);
	assert_int_equal(dev->scale->shape[ndim - 1], (int64_t)SC);
	uint8_t *q = download(dev->data, t.numel);
	float *s = download(dev->scale->data, dev->scale->nbytes);

	/* the whole tensor's dequantised statistics */
	double sum = 0, sq = 0;
	for (uint64_t k = 0; k < t.numel; k++) {
		double v = qw_f8e4m3_to_f32(q[k]) *
			   s[(k / (R * C) * SR + k / C % R / 128) * SC + k % C / 128];
		sum += v;
		sq += v * v;
	}
	double mean = sum / (double)t.numel, sd_got = sqrt(sq / (double)t.numel - mean * mean);
	/* the host's recipe for matrices first and last */
	qw_wspec one = {.ndim = 2, .shape = {(int64_t)R, (int64_t)C}, .numel = R * C};
	qw_quant block = {QW_QUANT_FP8, {128, 128}};
	float *v = malloc(R * C * sizeof *v), *hs = malloc(SR * SC * sizeof *hs);
	uint8_t *hq = malloc(R * C);
	uint64_t codes_off = 0, scales_off = 0, compared = 0;
	for (uint64_t m = first; m <= last; m += last > first ? last - first : 1) {
		for (uint64_t k = 0; k < R * C; k++)
			v[k] = stream_value(s0, m * R * C + k, 0.0, std);
		qw_export_quantize_fp8(&one, &block, v, hq, hs);
		for (uint64_t k = 0; k < SR * SC; k++)
			if (s[m * SR * SC + k] != hs[k]) {
				scales_off++;
				assert_true(fabsf(s[m * SR * SC + k] - hs[k]) <= hs[k] * 0x1p-7f);
			}
		for (uint64_t k = 0; k < R * C; k++) {
			uint8_t c = q[m * R * C + k];
			if (c == hq[k])
				continue;
			codes_off++;
			float g = qw_f8e4m3_to_f32(c) * s[m * SR * SC + k / C / 128 * SC + k % C / 128];
			float h = qw_f8e4m3_to_f32(hq[k]) * hs[k / C / 128 * SC + k % C / 128];
			if (fabsf(g - h) > fabsf(h) / 8 + hs[k / C / 128 * SC + k % C / 128] * 0x1p-9f)
				fail_msg("%s[%llu][%llu]: %g on the GPU, %g on the host", name,
					 (unsigned long long)m, (unsigned long long)k, g, h);
		}
		compared += R * C;
		if (last == first)
			break;
	}
	printf("# %-40s %12llu values in %8.2f ms (%6.1f GB/s of FP8); std %.6f (asked %.6f), "
	       "mean %+.2e; %llu of %llu values compared: %llu codes and %llu scales differ\n",
	       name, (unsigned long long)t.numel, ms, (double)t.numel / ms / 1e6, sd_got, std, mean,
	       (unsigned long long)compared, (unsigned long long)compared, (unsigned long long)codes_off,
	       (unsigned long long)scales_off);
	assert_true(codes_off * 10000 <= compared);
	assert_true(fabs(sd_got / std - 1) < 0.01);
	assert_true(fabs(mean) < 0.01 * std);
	free(v);
	free(hs);
	free(hq);
	free(q);
	free(s);
}

static void test_shapes(void **state)
{
	check_shape("odd.weight", 2, (int64_t[]){200, 328}, 0, 0);
	check_shape("odd.experts.gate_up_proj", 3, (int64_t[]){3, 200, 144}, 0, 2);
	check_shape("tiny.k_proj.weight", 2, (int64_t[]){64, 128}, 0, 0);
	check_shape("235b.o_proj.weight", 2, (int64_t[]){4096, 8192}, 0, 0);
	check_shape("235b.experts.gate_up_proj", 3, (int64_t[]){128, 4096, 3072}, 0, 127);
	check_shape("235b.experts.down_proj", 3, (int64_t[]){128, 1536, 4096}, 0, 127);
}

/* A whole FP8 model (tiny-moe, hidden 200 for partial blocks) synthesized on the GPU holds
 * the FP8 export's codes and scales, weight for weight. */
static void test_model(void **state)
{
	char *dir = scratch_new(), *out;
	int rc = run_capture(&out, "%s export-reduced --config %s --out %s --seed 5 --quantize fp8 "
			     "--override-hidden 200 --override-moe-intermediate 72",
			     program("qwen-ckpt"), fixture("hf/tiny-moe/model/config.json"), dir);
	if (rc != 0)
		fail_msg("%s", out);
	free(out);
	qw_config cfg;
	qw_err err = {0};
	qw_checkpoint *ck;
	assert_int_equal(qw_config_load(path_in(dir, "config.json"), &cfg, &err), QW_OK);
	assert_int_equal(qw_ckpt_open(dir, &ck, &err), QW_OK);
	qw_stage st = {0, 1, 0, cfg.text.num_layers};
	qw_stage_model m;
	if (qw_stage_model_load_synthetic(&m, &cfg, &st, gpu, 5, 4, NULL, NULL, &err) != QW_OK)
		fail_msg("%s", err.msg);
	qw_wspec *specs;
	size_t n, fp8 = 0;
	uint64_t values = 0, off = 0;
	assert_int_equal(qw_wmap_build(&cfg, m.w.expert_layout, &m.w, &specs, &n, &err), QW_OK);
	for (size_t i = 0; i < n; i++) {
		if (!specs[i].quantizable)
			continue;
		const qw_tensor *t = *specs[i].slot, *f = qw_ckpt_find(ck, specs[i].name);
		char scale_name[128];
		snprintf(scale_name, sizeof scale_name, "%s_scale_inv", specs[i].name);
		const qw_tensor *fs = qw_ckpt_find(ck, scale_name);
		assert_non_null(f);
		assert_non_null(fs);
		assert_int_equal(t->dtype, QW_DT_F8_E4M3);
		assert_non_null(t->scale);
		assert_int_equal(t->scale->nbytes, fs->nbytes);
		uint8_t *q = download(t->data, t->nbytes);
		float *s = download(t->scale->data, t->scale->nbytes);
		const uint8_t *fq = f->data;
		for (uint64_t k = 0; k < t->nbytes; k++)
			off += q[k] != fq[k];
		for (uint64_t k = 0; k < t->scale->numel; k++) {
			float want;
			memcpy(&want, (const uint8_t *)fs->data + 4 * k, 4);
			assert_true(fabsf(s[k] - want) <= want * 0x1p-7f);
		}
		values += t->nbytes;
		fp8++;
		free(q);
		free(s);
	}
	printf("# tiny-moe FP8 (hidden 200): %zu FP8 weights, %llu values, %llu codes differ from "
	       "the export's\n", fp8, (unsigned long long)values, (unsigned long long)off);
	assert_true(fp8 >= 2 * (size_t)cfg.text.num_layers);
	assert_true(off * 10000 <= values);
	free(specs);
	qw_stage_model_free(&m);
	qw_ckpt_close(ck);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shapes),
		cmocka_unit_test(test_model),
	};
	return cmocka_run_group_tests_name("cuda_synth", tests, setup, teardown);
}
