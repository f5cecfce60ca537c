/* test_ops.c - the CPU backend's ops against the definitions they implement (written
 * out here directly, or from the spec's explicit lists), including the paged cache and both
 * expert layouts, and the sampler. */
#include "tests/unit/helpers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/sample.h"

static qw_backend *be;

static int setup(void **state)
{
	qw_err err = {0};
	return qw_cpu_backend_create(&be, &err) != QW_OK;
}

static int teardown(void **state)
{
	be->destroy(be);
	return 0;
}

/* An in-memory F32 tensor over data. */
static qw_tensor f32_tensor(float *data, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
	qw_tensor t = {.name = "t", .dtype = QW_DT_F32, .ndim = ndim, .data = data};
	int64_t dims[3] = {d0, d1, d2};
	t.numel = 1;
	for (int i = 0; i < ndim; i++)
		t.numel *= (uint64_t)(t.shape[i] = dims[i]);
	t.nbytes = t.numel * 4;
	return t;
}

static qw_act act(int rows, int cols, const float *init)
{
	qw_act a;
	qw_err err = {0};
	assert_int_equal(be->act_alloc(be, rows, cols, &a, &err), QW_OK);
	if (init)
		assert_int_equal(be->act_write(be, &a, init, &err), QW_OK);
	return a;
}

static void test_rmsnorm(void **state)
{
	float x[8] = {1, 2, 3, 4, -1, 0, 0, 1}, w[4] = {1, 1, 1, 2}, out[8];
	qw_tensor wt = f32_tensor(w, 1, 4, 0, 0);
	qw_act a = act(2, 4, x), o = act(2, 4, NULL);
	qw_err err = {0};
	assert_int_equal(be->rmsnorm(be, &o, &a, &wt, 1e-6f, &err), QW_OK);
	be->act_read(be, &o, out, &err);
	double r0 = 1.0 / sqrt(30.0 / 4 + 1e-6), r1 = 1.0 / sqrt(2.0 / 4 + 1e-6);
	for (int i = 0; i < 4; i++) {
		assert_true(fabs(out[i] - x[i] * r0 * w[i]) < 1e-6);
		assert_true(fabs(out[4 + i] - x[4 + i] * r1 * w[i]) < 1e-6);
	}
	be->act_free(be, &a);
	be->act_free(be, &o);
}

/* The pairs M-RoPE turns by the h and w positions, listed in the spec for [24, 20, 20]:
 * H j in {1, 4, ..., 58}, W j in {2, 5, ..., 59}, T everything else (0, 3, ..., 57, 60..63). */
static void test_rope_sections(void **state)
{
	const int D = 128, half = 64, sec[3] = {24, 20, 20};
	float x[128], out[128];
	for (int i = 0; i < D; i++)
		x[i] = 1.0f;
	for (int axis = 0; axis < 3; axis++) {
		int32_t pos[3] = {0, 0, 0};
		pos[axis] = 7;                   /* only this axis moves */
		qw_act a = act(1, D, x);
		qw_err err = {0};
		assert_int_equal(be->rope(be, &a, pos, 1, D, sec, 5e6f, &err), QW_OK);
		be->act_read(be, &a, out, &err);
		for (int j = 0; j < half; j++) {
			int want = (j % 3 == 1 && j <= 58) ? 1 : (j % 3 == 2 && j <= 59) ? 2 : 0;
			bool moved = out[j] != 1.0f || out[j + half] != 1.0f;
			if (moved != (want == axis))
				fail_msg("axis %d pair %d: moved=%d, spec axis %d", axis, j, moved, want);
		}
		be->act_free(be, &a);
	}
}

/* Text positions (t = h = w = p) are ordinary RoPE: pair j turns by p * theta^(-2j/D), the
 * halves of the head form the pairs (rotate_half). */
static void test_rope_text_is_plain_rope(void **state)
{
	const int D = 8, sec[3] = {2, 1, 1};
	const float theta = 10000.0f;
	float x[16], out[16];
	for (int i = 0; i < 16; i++)
		x[i] = (float)(i % 5) - 2.0f;
	int32_t pos[3] = {5, 5, 5};
	qw_act a = act(1, 16, x);
	qw_err err = {0};
	assert_int_equal(be->rope(be, &a, pos, 2, D, sec, theta, &err), QW_OK);
	be->act_read(be, &a, out, &err);
	for (int h = 0; h < 2; h++)
		for (int j = 0; j < D / 2; j++) {
			double ang = 5.0 * pow(theta, -2.0 * j / D);
			const float *xi = x + h * D;
			double want0 = xi[j] * cos(ang) - xi[j + D / 2] * sin(ang);
			double want1 = xi[j + D / 2] * cos(ang) + xi[j] * sin(ang);
			assert_true(fabs(out[h * D + j] - want0) < 1e-5);
			assert_true(fabs(out[h * D + j + D / 2] - want1) < 1e-5);
		}
	be->act_free(be, &a);
}

/* Two sequences in one step, each through its own block table; a scattered table gives the
 * same result as a contiguous one, and GQA maps query heads h to kv head h / (Hq/Hkv). */
static void test_attention_paged(void **state)
{
	enum { D = 2, Hq = 2, Hkv = 1, bs = 2, T = 5 };
	/* seq 0: 3 tokens, seq 1: 2 tokens; K/V per token */
	float k[T * 2] = {1, 0, 0, 1, 1, 1, 2, 0, 0, 2};
	float v[T * 2] = {1, 2, 3, 4, 5, 6, -1, 1, 1, -1};
	float q[T * 4] = {1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0.5f, 0.5f, 2, -1};
	int32_t seq[T] = {0, 0, 0, 1, 1}, idx[T] = {0, 1, 2, 0, 1};
	int32_t pos[3 * T] = {0};
	int32_t tables[2][2][2] = {{{0, 1}, {2, 3}}, {{3, 0}, {1, 2}}};   /* contiguous, scattered */
	float results[2][T * 4];
	for (int variant = 0; variant < 2; variant++) {
		int32_t slot[T];
		for (int t = 0; t < T; t++)
			slot[t] = tables[variant][seq[t]][idx[t] / bs] * bs + idx[t] % bs;
		qw_batch b = {.n_tokens = T, .positions = pos, .seq = seq, .kv_index = idx, .slot = slot,
			      .n_seqs = 2, .max_blocks = 2, .block_tables = &tables[variant][0][0]};
		qw_kv_shape shape = {1, 4, bs, Hkv, D};
		qw_kv_cache *kv;
		qw_err err = {0};
		assert_int_equal(be->kv_alloc(be, &shape, &kv, &err), QW_OK);
		qw_act ka = act(T, 2, k), va = act(T, 2, v), qa = act(T, 4, q), o = act(T, 4, NULL);
		assert_int_equal(be->kv_write(be, kv, 0, &ka, &va, &b, &err), QW_OK);
		assert_int_equal(be->attention(be, &o, &qa, kv, 0, &b, Hq, &err), QW_OK);
		be->act_read(be, &o, results[variant], &err);
		be->act_free(be, &ka);
		be->act_free(be, &va);
		be->act_free(be, &qa);
		be->act_free(be, &o);
		be->kv_free(be, kv);
	}
	assert_memory_equal(results[0], results[1], sizeof results[0]);
	/* by hand: token 2 (seq 0, attends to tokens 0..2), head 0: q = (1, 1), q.k = 1, 1, 2 */
	double s[3] = {1, 1, 2};
	for (int j = 0; j < 3; j++)
		s[j] = exp(s[j] / sqrt(2.0));
	double z = s[0] + s[1] + s[2];
	double want0 = (s[0] * 1 + s[1] * 3 + s[2] * 5) / z, want1 = (s[0] * 2 + s[1] * 4 + s[2] * 6) / z;
	assert_true(fabs(results[0][2 * 4 + 0] - want0) < 1e-6);
	assert_true(fabs(results[0][2 * 4 + 1] - want1) < 1e-6);
	/* token 3 is the first of seq 1: it sees only itself, so both heads return its V */
	assert_true(results[0][3 * 4 + 0] == -1 && results[0][3 * 4 + 1] == 1);
	assert_true(results[0][3 * 4 + 2] == -1 && results[0][3 * 4 + 3] == 1);
}

/* An MoE layer by hand: E = 3, k = 2, H = 2, I = 1, in both layouts. */
static void test_moe_layouts(void **state)
{
	float router[3 * 2] = {1, 0, 0, 1, -1, -1};            /* logits x0, x1, -(x0+x1) */
	/* expert e: gate = x . g_e, up = x . u_e, out = silu(gate) * up * d_e */
	float g[3][2] = {{1, 0}, {0, 1}, {1, 1}}, u[3][2] = {{1, 1}, {2, 0}, {0, 3}};
	float d[3][2] = {{1, 2}, {-1, 1}, {3, 0}};
	float fused_gu[3 * 2 * 2], fused_dn[3 * 1 * 2];        /* [E, H, 2I], [E, I, H] */
	for (int e = 0; e < 3; e++)
		for (int h = 0; h < 2; h++) {
			fused_gu[(e * 2 + h) * 2 + 0] = g[e][h];
			fused_gu[(e * 2 + h) * 2 + 1] = u[e][h];
			fused_dn[e * 2 + h] = d[e][h];
		}
	qw_tensor rt = f32_tensor(router, 2, 3, 2, 0), gu = f32_tensor(fused_gu, 3, 3, 2, 2);
	qw_tensor dn = f32_tensor(fused_dn, 3, 3, 1, 2);
	qw_tensor gt[3], ut[3], dt[3];
	const qw_tensor *gp[3], *up[3], *dp[3];
	float dcol[3][2];
	for (int e = 0; e < 3; e++) {
		gt[e] = f32_tensor(g[e], 2, 1, 2, 0);
		ut[e] = f32_tensor(u[e], 2, 1, 2, 0);
		dcol[e][0] = d[e][0];
		dcol[e][1] = d[e][1];
		dt[e] = f32_tensor(dcol[e], 2, 2, 1, 0);
		gp[e] = &gt[e];
		up[e] = &ut[e];
		dp[e] = &dt[e];
	}
	qw_moe_weights fused = {.router = &rt, .gate_up = &gu, .down = &dn, .n_experts = 3,
				.top_k = 2, .inter = 1, .renormalize = 1};
	qw_moe_weights split = {.router = &rt, .gate = gp, .up = up, .expert_down = dp,
				.n_experts = 3, .top_k = 2, .inter = 1, .renormalize = 1};
	float x[2] = {0.5f, 2.0f}, out_f[2], out_s[2];
	qw_act xa = act(1, 2, x), o = act(1, 2, NULL);
	qw_err err = {0};
	assert_int_equal(be->moe(be, &o, &xa, &fused, &err), QW_OK);
	be->act_read(be, &o, out_f, &err);
	assert_int_equal(be->moe(be, &o, &xa, &split, &err), QW_OK);
	be->act_read(be, &o, out_s, &err);
	assert_memory_equal(out_f, out_s, sizeof out_f);
	/* router logits 0.5, 2, -2.5: experts 1 and 0, weights p1/(p0+p1), p0/(p0+p1) */
	double p0 = exp(0.5), p1 = exp(2.0);
	double w0 = p0 / (p0 + p1), w1 = p1 / (p0 + p1);
	double silu_g0 = 0.5 / (1 + exp(-0.5)), up0 = 2.5;       /* gate x.g0 = 0.5, up x.u0 = 2.5 */
	double silu_g1 = 2.0 / (1 + exp(-2.0)), up1 = 1.0;       /* gate 2, up 1 */
	for (int h = 0; h < 2; h++) {
		double want = w0 * silu_g0 * up0 * d[0][h] + w1 * silu_g1 * up1 * d[1][h];
		assert_true(fabs(out_f[h] - want) < 1e-5);
	}
	be->act_free(be, &xa);
	be->act_free(be, &o);
}

static void test_bad_inputs(void **state)
{
	float table[4] = {1, 2, 3, 4};
	qw_tensor t = f32_tensor(table, 2, 2, 2, 0);
	qw_act o = act(1, 2, NULL);
	qw_err err = {0};
	int32_t id = 2;
	assert_int_equal(be->embed(be, &o, &t, &id, &err), QW_E_ARG);
	assert_contains(err.msg, "outside the vocabulary");
	qw_kv_shape shape = {1, 1, 2, 1, 2};
	qw_kv_cache *kv;
	assert_int_equal(be->kv_alloc(be, &shape, &kv, &err), QW_OK);
	int32_t slot = 2, zero = 0;
	qw_batch b = {.n_tokens = 1, .slot = &slot, .kv_index = &zero, .seq = &zero};
	assert_int_equal(be->kv_write(be, kv, 0, &o, &o, &b, &err), QW_E_ARG);
	assert_contains(err.msg, "outside the cache");
	be->kv_free(be, kv);
	be->act_free(be, &o);
}

static void test_sampling(void **state)
{
	float logits[4] = {1.0f, 2.0f, 0.5f, 2.0f};
	qw_sampling greedy = {.temperature = 0, .top_p = 1};
	/* the lowest id of a tie */
	assert_int_equal(qw_sample_row(logits, 4, &greedy, NULL, NULL, NULL), 1);
	qw_sampling one = {.temperature = 5, .top_k = 1, .top_p = 1, .seed = 3};
	assert_int_equal(qw_sample_row(logits, 4, &one, NULL, NULL, NULL), 1);
	/* the empirical distribution over many seeds follows softmax(logits / T) */
	int count[4] = {0};
	const int N = 40000;
	for (int s = 0; s < N; s++) {
		qw_sampling p = {.temperature = 1, .top_p = 1, .seed = (uint64_t)s, .step = 0};
		count[qw_sample_row(logits, 4, &p, NULL, NULL, NULL)]++;
	}
	double z = exp(1.0) + exp(2.0) + exp(0.5) + exp(2.0);
	for (int i = 0; i < 4; i++) {
		double want = exp(logits[i]) / z;
		assert_true(fabs((double)count[i] / N - want) < 0.01);
	}
	/* top-p keeps the smallest set reaching p: 0.5 keeps the two tied best only */
	int others = 0;
	for (int s = 0; s < 2000; s++) {
		qw_sampling p = {.temperature = 1, .top_p = 0.5f, .seed = (uint64_t)s};
		int32_t tok = qw_sample_row(logits, 4, &p, NULL, NULL, NULL);
		others += tok != 1 && tok != 3;
	}
	assert_int_equal(others, 0);
	/* top-k 2 of 5: only the two best, in proportion to their probabilities */
	float five[5] = {0.1f, 3.0f, 2.5f, -1.0f, 1.0f};
	int k_count[5] = {0};
	for (int s = 0; s < N; s++) {
		qw_sampling p = {.temperature = 1, .top_k = 2, .top_p = 1, .seed = (uint64_t)s};
		k_count[qw_sample_row(five, 5, &p, NULL, NULL, NULL)]++;
	}
	assert_int_equal(k_count[0] + k_count[3] + k_count[4], 0);
	double p1 = exp(3.0) / (exp(3.0) + exp(2.5));
	assert_true(fabs((double)k_count[1] / N - p1) < 0.01);
	/* a draw is a function of (seed, step) */
	qw_sampling a = {.temperature = 1, .top_p = 1, .seed = 9, .step = 4};
	int32_t first = qw_sample_row(logits, 4, &a, NULL, NULL, NULL);
	for (int i = 0; i < 5; i++)
		assert_int_equal(qw_sample_row(logits, 4, &a, NULL, NULL, NULL), first);
	assert_true(qw_sample_uniform(9, 4) != qw_sample_uniform(9, 5));
	assert_true(qw_sample_uniform(9, 4) != qw_sample_uniform(10, 4));
}

// ---------------------------------------------------------------------------------------
// vision ops

static void test_layernorm_gelu(void **state)
{
	float x[4] = {1, 2, 3, 6}, w[4] = {1, 2, 1, 1}, b[4] = {0, 0, 1, 0}, out[4];
	qw_tensor wt = f32_tensor(w, 1, 4, 0, 0), bt = f32_tensor(b, 1, 4, 0, 0);
	qw_act a = act(1, 4, x), o = act(1, 4, NULL);
	qw_err err = {0};
	assert_int_equal(be->layernorm(be, &o, &a, &wt, &bt, 1e-6f, &err), QW_OK);
	be->act_read(be, &o, out, &err);
	double mean = 3.0, var = (4 + 1 + 0 + 9) / 4.0;
	for (int i = 0; i < 4; i++)
		assert_true(fabs(out[i] - ((x[i] - mean) / sqrt(var + 1e-6) * w[i] + b[i])) < 1e-6);
	/* GELU at 1: exact 0.5 (1 + erf(1/sqrt 2)) = 0.841344746..., tanh form 0.841191990... */
	float one[2] = {1.0f, 1.0f}, g[2];
	qw_act ga = act(1, 1, one), ta = act(1, 1, one + 1);
	assert_int_equal(be->gelu(be, &ga, false, &err), QW_OK);
	assert_int_equal(be->gelu(be, &ta, true, &err), QW_OK);
	be->act_read(be, &ga, g, &err);
	be->act_read(be, &ta, g + 1, &err);
	assert_true(fabs(g[0] - 0.8413447460685429) < 1e-7);
	assert_true(fabs(g[1] - 0.8411919906082768) < 1e-7);
	be->act_free(be, &a);
	be->act_free(be, &o);
	be->act_free(be, &ga);
	be->act_free(be, &ta);
}

/* 2-D rotary on a head of 8: pairs 0, 1 follow the row, pairs 2, 3 the column; pair j is
 * (x[j], x[j + 4]) and pair k of each half turns by pos * theta^(-2k/4). */
static void test_rope_2d(void **state)
{
	float x[8] = {1, 1, 1, 1, 0, 0, 0, 0}, out[8];
	int32_t rc[2] = {3, 5};
	qw_act a = act(1, 8, x);
	qw_err err = {0};
	assert_int_equal(be->rope_2d(be, &a, rc, 1, 8, 100.0f, &err), QW_OK);
	be->act_read(be, &a, out, &err);
	double ang[4] = {3 * 1.0, 3 * pow(100.0, -0.5), 5 * 1.0, 5 * pow(100.0, -0.5)};
	for (int j = 0; j < 4; j++) {
		assert_true(fabs(out[j] - cos(ang[j])) < 1e-6);
		assert_true(fabs(out[j + 4] - sin(ang[j])) < 1e-6);
	}
	be->act_free(be, &a);
}

/* Segments do not see each other: changing one segment's K/V leaves the other's output. */
static void test_segment_attention(void **state)
{
	enum { T = 5, W = 4 };
	float q[T * W], k[T * W], v[T * W], o1[T * W], o2[T * W];
	for (int i = 0; i < T * W; i++) {
		q[i] = (float)((i * 7) % 5) - 2.0f;
		k[i] = (float)((i * 3) % 7) - 3.0f;
		v[i] = (float)i;
	}
	int32_t seg[3] = {0, 2, 5};
	qw_act qa = act(T, W, q), ka = act(T, W, k), va = act(T, W, v), o = act(T, W, NULL);
	qw_err err = {0};
	assert_int_equal(be->segment_attention(be, &o, &qa, &ka, &va, seg, 2, 2, &err), QW_OK);
	be->act_read(be, &o, o1, &err);
	for (int i = 0; i < 2 * W; i++)
		v[i] += 100.0f, k[i] *= -1.0f;            /* the first segment only */
	be->act_write(be, &ka, k, &err);
	be->act_write(be, &va, v, &err);
	assert_int_equal(be->segment_attention(be, &o, &qa, &ka, &va, seg, 2, 2, &err), QW_OK);
	be->act_read(be, &o, o2, &err);
	assert_memory_equal(o1 + 2 * W, o2 + 2 * W, 3 * W * sizeof(float));
	assert_true(memcmp(o1, o2, 2 * W * sizeof(float)) != 0);
	/* a one-row segment returns its own V */
	int32_t seg1[3] = {0, 4, 5};
	assert_int_equal(be->segment_attention(be, &o, &qa, &ka, &va, seg1, 2, 2, &err), QW_OK);
	be->act_read(be, &o, o2, &err);
	assert_memory_equal(o2 + 4 * W, v + 4 * W, W * sizeof(float));
	be->act_free(be, &qa);
	be->act_free(be, &ka);
	be->act_free(be, &va);
	be->act_free(be, &o);
}

static void test_interp_and_scatter(void **state)
{
	float table[3 * 2] = {1, 2, 10, 20, 100, 200}, out[4];
	qw_tensor t = f32_tensor(table, 2, 3, 2, 0);
	int32_t idx[2 * 2] = {0, 1, 2, 2};
	float w[2 * 2] = {0.25f, 0.75f, 0.5f, 0.5f};
	qw_act o = act(2, 2, NULL);
	qw_err err = {0};
	assert_int_equal(be->interp_rows(be, &o, &t, idx, w, 2, &err), QW_OK);
	be->act_read(be, &o, out, &err);
	assert_true(out[0] == 7.75f && out[1] == 15.5f && out[2] == 100.0f && out[3] == 200.0f);
	float d[3 * 2] = {0}, src[2 * 2] = {1, 2, 3, 4}, got[6];
	qw_act da = act(3, 2, d), sa = act(2, 2, src);
	int32_t rows[2] = {2, 0};
	assert_int_equal(be->scatter_rows(be, &da, rows, &sa, false, &err), QW_OK);
	assert_int_equal(be->scatter_rows(be, &da, rows, &sa, true, &err), QW_OK);
	be->act_read(be, &da, got, &err);
	float want[6] = {6, 8, 0, 0, 2, 4};
	assert_memory_equal(got, want, sizeof want);
	int32_t bad[2] = {3, 0};
	assert_int_equal(be->scatter_rows(be, &da, bad, &sa, false, &err), QW_E_ARG);
	be->act_free(be, &o);
	be->act_free(be, &da);
	be->act_free(be, &sa);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rmsnorm),
		cmocka_unit_test(test_rope_sections),
		cmocka_unit_test(test_rope_text_is_plain_rope),
		cmocka_unit_test(test_attention_paged),
		cmocka_unit_test(test_moe_layouts),
		cmocka_unit_test(test_bad_inputs),
		cmocka_unit_test(test_sampling),
		cmocka_unit_test(test_layernorm_gelu),
		cmocka_unit_test(test_rope_2d),
		cmocka_unit_test(test_segment_attention),
		cmocka_unit_test(test_interp_and_scatter),
	};
	return cmocka_run_group_tests_name("cpu-ops", tests, setup, teardown);
}
