/* moe_check.c - the MoE layer's CPU reference and tolerance.  See moe_check.h. */
#include "tests/gpu/moe_check.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"

#define MAX_THREADS 64

float moe_check_bf16(uint16_t h)
{
	uint32_t b = (uint32_t)h << 16;
	float f;
	memcpy(&f, &b, 4);
	return f;
}

qw_tensor moe_check_tensor(uint16_t *data, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
	qw_tensor t = {.name = "t", .dtype = QW_DT_BF16, .ndim = ndim, .data = data};
	int64_t dims[3] = {d0, d1, d2};
	t.numel = 1;
	for (int i = 0; i < ndim; i++)
		t.numel *= (uint64_t)(t.shape[i] = dims[i]);
	t.nbytes = t.numel * 2;
	return t;
}

typedef struct part {
	qw_backend *cpu;
	const qw_moe_weights *w;
	const float *x;    /* (T, H) */
	float *out;        /* (T, H) */
	int H, lo, hi;     /* tokens [lo, hi) */
	qw_status st;
	qw_err err;
} part;

static void *run_part(void *arg)
{
	part *p = arg;
	int n = p->hi - p->lo;
	if (n <= 0)
		return NULL;
	qw_act x = {(void *)(p->x + (size_t)p->lo * (size_t)p->H), n, p->H, n};
	qw_act o = {p->out + (size_t)p->lo * (size_t)p->H, n, p->H, n};
	p->st = p->cpu->moe(p->cpu, &o, &x, p->w, &p->err);
	return NULL;
}

qw_status moe_check_reference(const qw_moe_weights *w, int H, const uint16_t *x, int T,
			      int threads, float *out, qw_err *err)
{
	size_t n = (size_t)T * (size_t)H;
	float *xf = malloc(n * sizeof *xf);
	qw_backend *cpu = NULL;
	if (!xf)
		return qw_fail(err, QW_E_NOMEM, "out of memory for the reference's input");
	for (size_t i = 0; i < n; i++)
		xf[i] = moe_check_bf16(x[i]);
	qw_status st = qw_cpu_backend_create(&cpu, err);
	threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
	pthread_t th[MAX_THREADS];
	part parts[MAX_THREADS];
	int started = 0;
	for (int i = 0; st == QW_OK && i < threads; i++) {
		parts[i] = (part){.cpu = cpu, .w = w, .x = xf, .out = out, .H = H,
				  .lo = (int)((int64_t)T * i / threads),
				  .hi = (int)((int64_t)T * (i + 1) / threads), .st = QW_OK};
		if (pthread_create(&th[i], NULL, run_part, &parts[i]) != 0)
			st = qw_fail(err, QW_E_NOMEM, "cannot start a reference thread");
		else
			started++;
	}
	for (int i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		if (st == QW_OK && parts[i].st != QW_OK) {
			st = parts[i].st;
			if (err)
				*err = parts[i].err;
		}
	}
	if (cpu)
		cpu->destroy(cpu);
	free(xf);
	return st;
}

bool moe_check_compare(const char *what, int T, int H, const float *ref, const uint16_t *got)
{
	size_t n = (size_t)T * (size_t)H;
	double ss = 0.0, se = 0.0, max_diff = 0.0, max_share = 0.0;
	for (size_t i = 0; i < n; i++)
		ss += (double)ref[i] * ref[i];
	double rms = sqrt(ss / (double)n), atol = 0.02 * rms, rtol = 1.0 / 128;
	size_t bad = 0;
	for (size_t i = 0; i < n; i++) {
		double g = moe_check_bf16(got[i]), d = fabs(g - ref[i]);
		double tol = atol + rtol * fabs(ref[i]);
		se += (g - ref[i]) * (g - ref[i]);
		if (!(d <= tol)) {
			if (bad < 10)
				printf("  %s T %d: token %zu column %zu: gpu %.6g cpu %.6g (|diff| %.3g > "
				       "%.3g)\n", what, T, i / (size_t)H, i % (size_t)H, g, ref[i], d, tol);
			bad++;
		}
		if (d > max_diff)
			max_diff = d;
		if (d / tol > max_share)
			max_share = d / tol;
	}
	double nmse = ss > 0 ? se / ss : se;
	printf("%s T %d: max |diff| %.3g (%.2f of the tolerance), nmse %.2e, rms %.3g, %zu of %zu "
	       "out of tolerance\n", what, T, max_diff, max_share, nmse, rms, bad, n);
	fflush(stdout);
	return bad == 0 && nmse <= 3e-5;
}
