/* test_experts_load.c - the forward pass's load step for MoE experts (kernels/forward.c):
 * where the backend has prepare_experts (the CUDA backend re-lays out per-expert layers
 * there, so its moe op never allocates), a stage calls it once for each MoE layer it owns,
 * after the weights are on the backend (from a checkpoint or synthetic), with that layer's
 * weights, and from then on hands the moe op what it returned.  Checked on the CPU backend
 * wrapped by a recorder whose prepare_experts lays per-expert parts out fused in fp32 on the
 * host (the CPU backend itself has none): a Qwen3-MoE-style model (per-expert checkpoint,
 * layer 1 dense) exported bf16 and FP8, through two stages, gives the logits of the plain
 * CPU backend (within 1e-5 of their largest: the fused and per-expert sums add in other
 * orders), every MoE call gets the fused tensors made for its layer, and the dense layer
 * none.
 */
#include "tests/unit/helpers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/pipeline.h"
#include "loader/checkpoint.h"
#include "loader/config.h"
#include "loader/export.h"

#define MAX_LAYERS 8

/* The CPU backend with prepare_experts and moe recorded. */
typedef struct recorder {
	qw_backend be;                       /* first: the ops get &be */
	qw_backend *cpu;
	int prepared;                        /* prepare_experts calls */
	const qw_tensor *router[MAX_LAYERS]; /* the layer of each call, by its router */
	qw_tensor made[MAX_LAYERS][2];       /* what each call returned: gate_up, down (fp32) */
	float *data[MAX_LAYERS][2];
	int moe_calls, moe_on_made;          /* moe calls; those given what was made for them */
} recorder;

static qw_tensor f32_tensor(float *data, int64_t E, int64_t rows, int64_t cols)
{
	qw_tensor t = {.name = "fused", .dtype = QW_DT_F32, .ndim = 3, .data = data,
		       .shape = {E, rows, cols}};
	t.numel = (uint64_t)(E * rows * cols);
	t.nbytes = t.numel * 4;
	return t;
}

/* parts[e] (rows, cols), [out, in], into fused (E, cols, ld) at columns [off, off + rows). */
static void lay_out(float *fused, const qw_tensor *const *parts, int E, int64_t rows,
		    int64_t cols, int64_t ld, int64_t off)
{
	float *row = malloc((size_t)cols * sizeof *row);
	assert_non_null(row);
	for (int e = 0; e < E; e++) {
		assert_int_equal(parts[e]->shape[0], rows);
		assert_int_equal(parts[e]->shape[1], cols);
		for (int64_t r = 0; r < rows; r++) {
			qw_tensor_read_f32(parts[e], (uint64_t)(r * cols), (uint64_t)cols, row);
			for (int64_t c = 0; c < cols; c++)
				fused[((int64_t)e * cols + c) * ld + off + r] = row[c];
		}
	}
	free(row);
}

static qw_status rec_prepare(qw_backend *be, const qw_moe_weights *w, const qw_tensor **gate_up,
			     const qw_tensor **down, qw_err *err)
{
	recorder *r = (recorder *)be;
	assert_true(r->prepared < MAX_LAYERS);
	/* a per-expert layer, whole */
	assert_null(w->gate_up);
	assert_null(w->down);
	assert_non_null(w->gate);
	assert_non_null(w->up);
	assert_non_null(w->expert_down);
	int n = r->prepared++, E = w->n_experts, I = w->inter, H = (int)w->router->shape[1];
	r->router[n] = w->router;
	float *gu = calloc((size_t)E * H * 2 * I, sizeof *gu), *dn = calloc((size_t)E * I * H, 4);
	assert_non_null(gu);
	assert_non_null(dn);
	lay_out(gu, w->gate, E, I, H, 2 * I, 0);
	lay_out(gu, w->up, E, I, H, 2 * I, I);
	lay_out(dn, w->expert_down, E, H, I, H, 0);
	r->data[n][0] = gu;
	r->data[n][1] = dn;
	r->made[n][0] = f32_tensor(gu, E, H, 2 * I);
	r->made[n][1] = f32_tensor(dn, E, I, H);
	*gate_up = &r->made[n][0];
	*down = &r->made[n][1];
	return QW_OK;
}

static qw_status rec_moe(qw_backend *be, qw_act *out, const qw_act *x, const qw_moe_weights *w,
			 qw_err *err)
{
	recorder *r = (recorder *)be;
	r->moe_calls++;
	for (int i = 0; i < r->prepared; i++)
		if (w->router == r->router[i] && w->gate_up == &r->made[i][0] &&
		    w->down == &r->made[i][1])
			r->moe_on_made++;
	return r->cpu->moe(r->cpu, out, x, w, err);
}

static void recorder_init(recorder *r, qw_backend *cpu)
{
	memset(r, 0, sizeof *r);
	r->be = *cpu;
	r->cpu = cpu;
	r->be.prepare_experts = rec_prepare;
	r->be.moe = rec_moe;
}

static void recorder_free(recorder *r)
{
	for (int i = 0; i < r->prepared; i++) {
		free(r->data[i][0]);
		free(r->data[i][1]);
	}
}

/* Three layers, the middle one dense; per-expert experts (Qwen3-MoE). */
static const char tiny_moe[] =
	"{\"model_type\": \"qwen3_moe\", \"vocab_size\": 96, \"hidden_size\": 32,"
	" \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
	" \"head_dim\": 8, \"rope_theta\": 1e6, \"intermediate_size\": 48,"
	" \"moe_intermediate_size\": 24, \"num_experts\": 6, \"num_experts_per_tok\": 2,"
	" \"norm_topk_prob\": true, \"mlp_only_layers\": [1], \"tie_word_embeddings\": false}";

enum { PROMPT = 7, V = 96 };

/* The last prompt token's logits through two stages of the exported model on be. */
static void run(const char *dir, qw_backend *be, float *logits)
{
	qw_config cfg;
	qw_checkpoint *ck;
	qw_err err = {0};
	assert_int_equal(qw_config_load(path_in(dir, "config.json"), &cfg, &err), QW_OK);
	assert_int_equal(qw_ckpt_open(dir, &ck, &err), QW_OK);
	qw_pipeline p;
	if (qw_pipeline_init(&p, &cfg, ck, be, 2, PROMPT, PROMPT, &err) != QW_OK)
		fail_msg("%s", err.msg);
	int32_t prompt[PROMPT];
	for (int i = 0; i < PROMPT; i++)
		prompt[i] = (int32_t)((i * 37 + 11) % V);
	assert_int_equal(qw_pipeline_append(&p, prompt, PROMPT, NULL, NULL, false, logits, &err),
			 QW_OK);
	qw_pipeline_free(&p);
	qw_ckpt_close(ck);
}

static void check_export(bool fp8)
{
	char *dir = scratch_new();
	qw_export_opts o;
	qw_export_opts_default(&o);
	o.seed = 5;
	o.fp8 = fp8;
	qw_err err = {0};
	if (qw_export_reduced(tiny_moe, sizeof tiny_moe - 1, "tiny-moe", &o, dir, NULL, &err) !=
	    QW_OK)
		fail_msg("%s", err.msg);
	qw_backend *cpu;
	assert_int_equal(qw_cpu_backend_create(&cpu, &err), QW_OK);
	recorder r;
	recorder_init(&r, cpu);
	float plain[V], recorded[V];
	run(dir, cpu, plain);
	run(dir, &r.be, recorded);
	assert_int_equal(r.prepared, 2);       /* layers 0 and 2; 1 is dense */
	assert_int_equal(r.moe_calls, 2);      /* one step */
	assert_int_equal(r.moe_on_made, 2);
	float top = 0.0f;
	for (int i = 0; i < V; i++)
		top = fmaxf(top, fabsf(plain[i]));
	for (int i = 0; i < V; i++)
		if (!(fabsf(recorded[i] - plain[i]) <= 1e-5f * top))
			fail_msg("%s: logit %d: %g with prepare_experts, %g without", fp8 ? "FP8" : "bf16",
				 i, recorded[i], plain[i]);
	recorder_free(&r);
	cpu->destroy(cpu);
	scratch_free(dir);
}

static void test_bf16_checkpoint(void **state)
{
	(void)state;
	check_export(false);
}

static void test_fp8_checkpoint(void **state)
{
	(void)state;
	check_export(true);
}

/* A synthetic stage prepares its own MoE layers, each once, with the layer's router. */
static void test_synthetic(void **state)
{
	(void)state;
	qw_config cfg;
	qw_err err = {0};
	assert_int_equal(qw_config_parse(tiny_moe, sizeof tiny_moe - 1, "tiny-moe", &cfg, &err),
			 QW_OK);
	qw_backend *cpu;
	assert_int_equal(qw_cpu_backend_create(&cpu, &err), QW_OK);
	recorder r;
	recorder_init(&r, cpu);
	qw_stage stage = {.index = 1, .count = 2, .layer_begin = 1, .layer_end = 3};
	qw_stage_model m;
	if (qw_stage_model_load_synthetic(&m, &cfg, &stage, &r.be, 9, 4, NULL, NULL, &err) !=
	    QW_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(r.prepared, 1);   /* layer 2 (layer 1 is dense) */
	assert_ptr_equal(r.router[0], m.w.layers[2].router);
	assert_ptr_equal(m.w.layers[2].experts_gate_up, &r.made[0][0]);
	assert_ptr_equal(m.w.layers[2].experts_down, &r.made[0][1]);
	qw_stage_model_free(&m);
	recorder_free(&r);
	cpu->destroy(cpu);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bf16_checkpoint),
		cmocka_unit_test(test_fp8_checkpoint),
		cmocka_unit_test(test_synthetic),
	};
	return cmocka_run_group_tests_name("experts_load", tests, NULL, NULL);
}
