/* test_synthetic.c - synthetic models (--model synthetic:CONFIG.json: weights made by the
 * backend, no checkpoint) under an FP8 quantization_config, on the CPU backend: the
 * quantizable weights are F8_E4M3 with the block scales the config's block implies, byte for
 * byte what qwen-ckpt export-reduced --quantize fp8 writes, within e4m3's rounding of the bf16
 * synthetic model's values, with the standard deviation the export's recipe asks for; the
 * other tensors stay bf16; and the bytes the planner counts for them are the checkpoint's. */
#include "tests/unit/helpers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/forward.h"
#include "loader/checkpoint.h"
#include "loader/plan.h"
#include "loader/weights.h"

/* Two reduced models whose matrices are not multiples of the 128 x 128 block (hidden 200,
 * expert width 72: partial blocks at the edges, several blocks per matrix): tiny-moe's config
 * (fused experts, vision) and Qwen3-30B-A3B's (text only, one tensor per expert). */
static const struct {
	const char *config, *args;
} k_models[] = {
	{"hf/tiny-moe/model/config.json", "--override-hidden 200 --override-moe-intermediate 72"},
	{"configs/Qwen3-30B-A3B.json",
	 "--num-layers 2 --override-vocab 512 --override-hidden 200 --override-heads 4 "
	 "--override-kv-heads 2 --override-head-dim 32 --override-moe-intermediate 72 "
	 "--override-num-experts 4 --override-top-k 2"},
};

static char *export_model(int k, bool fp8)
{
	char *dir = scratch_new(), *out;
	int rc = run_capture(&out, "%s export-reduced --config %s --out %s --seed 5 %s %s",
			     program("qwen-ckpt"), fixture(k_models[k].config), dir, k_models[k].args,
			     fp8 ? "--quantize fp8" : "");
	if (rc != 0)
		fail_msg("%s", out);
	free(out);
	return dir;
}

static void load_synthetic(const char *dir, qw_config *cfg, qw_backend *be, qw_stage_model *m)
{
	qw_err err = {0};
	if (qw_config_load(path_in(dir, "config.json"), cfg, &err) != QW_OK)
		fail_msg("%s", err.msg);
	qw_stage st = {0, 1, 0, cfg->text.num_layers};
	if (qw_stage_model_load_synthetic(m, cfg, &st, be, 5, 4, NULL, NULL, &err) != QW_OK)
		fail_msg("%s", err.msg);
}

static float *values(const qw_tensor *t)
{
	float *v = malloc(t->numel * sizeof *v);
	assert_non_null(v);
	qw_tensor_read_f32(t, 0, t->numel, v);
	return v;
}

/* What one FP8 weight must be: F8_E4M3, scales F32 of ceil(shape / 128) (the config's block,
 * read here from its quantization_config), the export's bytes and scales, e4m3's rounding of
 * the bf16 model's values, every block's largest code +-448 (scale = amax / 448).  Adds its
 * dequantised values to *sum, *sq, *n. */
static void check_fp8_weight(const qw_wspec *s, const qw_tensor *t, const qw_tensor *bf16,
			     const qw_checkpoint *ck, double *sum, double *sq, uint64_t *n)
{
	assert_int_equal(t->dtype, QW_DT_F8_E4M3);
	assert_int_equal(t->nbytes, t->numel);
	assert_non_null(t->scale);
	assert_int_equal(t->block[0], 128);
	assert_int_equal(t->block[1], 128);
	const qw_tensor *sc = t->scale;
	int nd = s->ndim;
	assert_int_equal(sc->dtype, QW_DT_F32);
	assert_int_equal(sc->ndim, nd);
	for (int d = 0; d < nd - 2; d++)
		assert_int_equal(sc->shape[d], s->shape[d]);
	assert_int_equal(sc->shape[nd - 2], (s->shape[nd - 2] + 127) / 128);
	assert_int_equal(sc->shape[nd - 1], (s->shape[nd - 1] + 127) / 128);

	const qw_tensor *ft = qw_ckpt_find(ck, s->name), *fs = qw_ckpt_find(ck, sc->name);
	assert_non_null(ft);
	assert_non_null(fs);
	assert_int_equal(ft->dtype, QW_DT_F8_E4M3);
	assert_memory_equal(t->data, ft->data, t->nbytes);
	assert_int_equal(fs->nbytes, sc->nbytes);
	assert_memory_equal(sc->data, fs->data, sc->nbytes);

	float *q = values(t), *b = values(bf16), smax = 0;
	for (uint64_t k = 0; k < sc->numel; k++) {
		float v;
		qw_tensor_read_f32(sc, k, 1, &v);
		assert_true(v > 0 && isfinite(v));
		smax = fmaxf(smax, v);
	}
	for (uint64_t k = 0; k < t->numel; k++) {
		if (fabsf(q[k] - b[k]) > fabsf(b[k]) / 16 + smax * 0x1p-10f)
			fail_msg("%s[%llu]: %g in FP8, %g in bf16", s->name, (unsigned long long)k,
				 q[k], b[k]);
		*sum += q[k];
		*sq += (double)q[k] * q[k];
	}
	*n += t->numel;
	/* every block holds a code of magnitude 448 (0x7e): its scale is its amax / 448 */
	int64_t R = s->shape[nd - 2], C = s->shape[nd - 1];
	uint64_t M = s->numel / (uint64_t)(R * C), SR = (uint64_t)sc->shape[nd - 2],
		 SC = (uint64_t)sc->shape[nd - 1];
	uint8_t *seen = calloc(M * SR * SC, 1);
	const uint8_t *code = t->data;
	for (uint64_t k = 0; k < t->numel; k++) {
		uint64_t m = k / (uint64_t)(R * C), r = k / (uint64_t)C % (uint64_t)R,
			 c = k % (uint64_t)C;
		if ((code[k] & 0x7f) == 0x7e)
			seen[(m * SR + r / 128) * SC + c / 128] = 1;
	}
	for (uint64_t k = 0; k < M * SR * SC; k++)
		if (!seen[k])
			fail_msg("%s: block %llu has no code of magnitude 448", s->name,
				 (unsigned long long)k);
	free(seen);
	free(q);
	free(b);
}

static void test_fp8_weights(void **state)
{
	qw_err err = {0};
	for (int k = 0; k < 2; k++) {
		char *qdir = export_model(k, true), *bdir = export_model(k, false);
		qw_backend *be;
		assert_int_equal(qw_cpu_backend_create(&be, &err), QW_OK);
		qw_config cq, cb;
		qw_stage_model mq, mb;
		load_synthetic(qdir, &cq, be, &mq);
		load_synthetic(bdir, &cb, be, &mb);
		assert_int_equal(cq.quant.kind, QW_QUANT_FP8);
		qw_checkpoint *ck;
		assert_int_equal(qw_ckpt_open(qdir, &ck, &err), QW_OK);
		qw_wspec *sq, *sb;
		size_t n, nb;
		assert_int_equal(qw_wmap_build(&cq, mq.w.expert_layout, &mq.w, &sq, &n, &err), QW_OK);
		assert_int_equal(qw_wmap_build(&cb, mb.w.expert_layout, &mb.w, &sb, &nb, &err), QW_OK);
		size_t fp8 = 0, bf16 = 0;
		double sum = 0, sumsq = 0;
		uint64_t count = 0;
		for (size_t i = 0, j = 0; i < n; i++) {
			if (sq[i].is_scale)
				continue;
			while (j < nb && strcmp(sb[j].name, sq[i].name) != 0)
				j++;
			assert_true(j < nb);
			const qw_tensor *t = *sq[i].slot, *tb = *sb[j].slot;
			if (!sq[i].quantizable) {
				assert_int_equal(t->dtype, QW_DT_BF16);
				assert_null(t->scale);
				bf16++;
				continue;
			}
			/* the fan-in the export's recipe draws from: [out, in], fused experts
			 * [E, in, out] */
			double want = 1.0 / sqrt((double)sq[i].shape[1]);
			double s0 = 0, s1 = 0;
			uint64_t c0 = 0;
			check_fp8_weight(&sq[i], t, tb, ck, &s0, &s1, &c0);
			double mean = s0 / (double)c0, sd = sqrt(s1 / (double)c0 - mean * mean);
			if (fabs(sd / want - 1) > 0.03 || fabs(mean) > 0.03 * want)
				fail_msg("%s: dequantised mean %g, std %g; N(0, %g) asked for", sq[i].name,
					 mean, sd, want);
			sum += s0;
			sumsq += s1;
			count += c0;
			fp8++;
		}
		assert_true(fp8 >= 4 * (size_t)cq.text.num_layers);
		assert_true(bf16 > 0);
		print_message("%s: %zu FP8 weights (%llu values), %zu bf16 tensors\n",
			      k_models[k].config, fp8, (unsigned long long)count, bf16);
		/* the planner's bytes for the synthetic model are the checkpoint's */
		qw_plan_synthetic_bytes(&cq, sq, n);
		uint64_t planned = 0, stored = 0;
		for (size_t i = 0; i < n; i++)
			planned += sq[i].bytes;
		for (size_t i = 0; i < ck->n_tensors; i++)
			stored += ck->tensors[i]->nbytes;
		assert_int_equal(planned, stored);
		free(sq);
		free(sb);
		qw_ckpt_close(ck);
		qw_stage_model_free(&mq);
		qw_stage_model_free(&mb);
		be->destroy(be);
		scratch_free(qdir);
		scratch_free(bdir);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fp8_weights),
	};
	return cmocka_run_group_tests_name("synthetic", tests, NULL, NULL);
}
