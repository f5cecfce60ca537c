/* moe_check.c - the MoE layer's test data, CPU reference and tolerance.  See moe_check.h. */
#include "tests/gpu/moe_check.h"

#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/cpu_backend.h"
#include "loader/dtype.h"

#define MAX_THREADS 64

int moe_check_threads(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	return cpus < 1 ? 1 : cpus > MAX_THREADS ? MAX_THREADS : (int)cpus;
}

int moe_check_setup(uint64_t *seed, int *threads)
{
	const char *s = getenv("QW_TEST_SEED");
	*seed = s && *s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	printf("# seed %llu (QW_TEST_SEED=%llu repeats this run)\n", (unsigned long long)*seed,
	       (unsigned long long)*seed);
	fflush(stdout);
	*threads = moe_check_threads();
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
		printf("no GPU: this suite needs one\n");
		return -1;
	}
	return 0;
}

void *moe_check_to_device(const void *host, size_t bytes)
{
	void *d = NULL;
	cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
	if (e == cudaSuccess)
		e = cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
	if (e != cudaSuccess) {
		printf("a device copy of %zu bytes: %s\n", bytes, cudaGetErrorString(e));
		cudaFree(d);
		return NULL;
	}
	return d;
}

float moe_check_bf16(uint16_t h)
{
	uint32_t b = (uint32_t)h << 16;
	float f;
	memcpy(&f, &b, 4);
	return f;
}

// ---------------------------------------------------------------------------------------
// in parallel

typedef struct task {
	moe_check_part_fn fn;
	void *ctx;
	size_t lo, hi;
} task;

static void *task_main(void *arg)
{
	task *t = arg;
	if (t->hi > t->lo)
		t->fn(t->ctx, t->lo, t->hi);
	return NULL;
}

void moe_check_parallel(size_t n, int threads, moe_check_part_fn fn, void *ctx)
{
	pthread_t th[MAX_THREADS];
	task parts[MAX_THREADS];
	bool started[MAX_THREADS];
	threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
	for (int i = 0; i < threads; i++) {
		parts[i] = (task){fn, ctx, n * (size_t)i / (size_t)threads,
				  n * (size_t)(i + 1) / (size_t)threads};
		started[i] = pthread_create(&th[i], NULL, task_main, &parts[i]) == 0;
		if (!started[i])   /* no thread: do it here */
			task_main(&parts[i]);
	}
	for (int i = 0; i < threads; i++)
		if (started[i])
			pthread_join(th[i], NULL);
}

// ---------------------------------------------------------------------------------------
// random data

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static float uniform(uint64_t seed, uint64_t stream, uint64_t i)
{
	uint64_t z = mix64(seed ^ mix64(stream * 0x9e3779b97f4a7c15ull + i + 1));
	return (float)((double)(z >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

typedef struct fill {
	uint16_t *dst;
	uint64_t seed, stream;
	float scale;
} fill;

static void fill_part(void *ctx, size_t lo, size_t hi)
{
	fill *f = ctx;
	for (size_t i = lo; i < hi; i++)
		f->dst[i] = qw_f32_to_bf16(f->scale * uniform(f->seed, f->stream, i));
}

uint16_t *moe_check_random_bf16(size_t n, uint64_t seed, uint64_t stream, float scale,
				int threads)
{
	fill f = {malloc(n * sizeof(uint16_t) + 2), seed, stream, scale};
	if (f.dst)
		moe_check_parallel(n, threads, fill_part, &f);
	return f.dst;
}

// ---------------------------------------------------------------------------------------
// FP8 matrices

/* The e4m3 code of a (|a| < 464: no saturation, never a NaN code), to nearest (ties away:
 * any rounding will do, the codes are the weights). */
static uint8_t e4m3_code(float a)
{
	uint8_t sign = a < 0.0f ? 0x80 : 0;
	a = fabsf(a);
	if (a < 0x1p-6f)   /* subnormal: m / 8 * 2^-6 (m 8 is the smallest normal, code 8) */
		return sign | (uint8_t)lrintf(a * 0x1p9f);
	int e;
	float f = frexpf(a, &e);                        /* a = f 2^e, f in [0.5, 1) */
	int m = (int)lrintf((2.0f * f - 1.0f) * 8.0f), E = e + 6;   /* (1 + m/8) 2^(E-7) */
	if (m == 8) {
		m = 0;
		E++;
	}
	if (E > 15 || (E == 15 && m == 7))
		return sign | 0x7e;
	return sign | (uint8_t)(E << 3 | m);
}

size_t moe_check_fp8_scales(const moe_check_fp8 *m)
{
	return (size_t)((m->rows + m->br - 1) / m->br) * (size_t)((m->cols + m->bc - 1) / m->bc);
}

typedef struct fp8_job {
	const moe_check_fp8 *m;
	float amax;
	uint64_t seed, stream;
	float *f32;        /* dequantisation outputs */
	uint16_t *bf16;
	float table[256];  /* the loader's e4m3 values */
} fp8_job;

/* The block scale of element i (matrix, row, column) of m. */
static float scale_of(const moe_check_fp8 *m, size_t i)
{
	size_t per = (size_t)m->rows * (size_t)m->cols, mat = i / per, r = i % per / (size_t)m->cols;
	size_t c = i % (size_t)m->cols, sc = (size_t)((m->cols + m->bc - 1) / m->bc);
	return m->s[mat * moe_check_fp8_scales(m) + r / (size_t)m->br * sc + c / (size_t)m->bc];
}

static void scales_part(void *ctx, size_t lo, size_t hi)
{
	fp8_job *j = ctx;
	for (size_t i = lo; i < hi; i++)
		j->m->s[i] = 2.0f * j->amax / 448.0f *
			     exp2f(uniform(j->seed, j->stream + 1, i));
}

static void codes_part(void *ctx, size_t lo, size_t hi)
{
	fp8_job *j = ctx;
	for (size_t i = lo; i < hi; i++)
		j->m->q[i] = e4m3_code(j->amax * uniform(j->seed, j->stream, i) / scale_of(j->m, i));
}

bool moe_check_fp8_make(moe_check_fp8 *m, int64_t count, int64_t rows, int64_t cols, int br,
			int bc, float amax, uint64_t seed, uint64_t stream, int threads)
{
	*m = (moe_check_fp8){.count = count, .rows = rows, .cols = cols, .br = br, .bc = bc};
	size_t n = (size_t)(count * rows * cols), ns = (size_t)count * moe_check_fp8_scales(m);
	m->q = malloc(n + 1);
	m->s = malloc(ns * sizeof *m->s + 4);
	if (!m->q || !m->s) {
		moe_check_fp8_free(m);
		return false;
	}
	fp8_job j = {.m = m, .amax = amax, .seed = seed, .stream = stream};
	moe_check_parallel(ns, threads, scales_part, &j);
	moe_check_parallel(n, threads, codes_part, &j);
	return true;
}

void moe_check_fp8_free(moe_check_fp8 *m)
{
	free(m->q);
	free(m->s);
	m->q = NULL;
	m->s = NULL;
}

static void dequant_part(void *ctx, size_t lo, size_t hi)
{
	fp8_job *j = ctx;
	for (size_t i = lo; i < hi; i++) {
		float v = j->table[j->m->q[i]] * scale_of(j->m, i);   /* one fp32 multiply */
		if (j->f32)
			j->f32[i] = v;
		else
			j->bf16[i] = qw_f32_to_bf16(v);
	}
}

static void dequant(fp8_job *j, int threads)
{
	for (int c = 0; c < 256; c++)
		j->table[c] = qw_f8e4m3_to_f32((uint8_t)c);
	moe_check_parallel((size_t)(j->m->count * j->m->rows * j->m->cols), threads, dequant_part,
			   j);
}

float *moe_check_fp8_f32(const moe_check_fp8 *m, int threads)
{
	fp8_job j = {.m = m, .f32 = malloc((size_t)(m->count * m->rows * m->cols) * 4 + 4)};
	if (j.f32)
		dequant(&j, threads);
	return j.f32;
}

uint16_t *moe_check_fp8_bf16(const moe_check_fp8 *m, int threads)
{
	fp8_job j = {.m = m, .bf16 = malloc((size_t)(m->count * m->rows * m->cols) * 2 + 2)};
	if (j.bf16)
		dequant(&j, threads);
	return j.bf16;
}

typedef struct fuse_job {
	uint16_t *fused;
	const uint16_t *parts;
	int64_t rows, cols, ld, off;
} fuse_job;

static void fuse_part(void *ctx, size_t lo, size_t hi)   /* matrices [lo, hi) */
{
	fuse_job *f = ctx;
	for (size_t e = lo; e < hi; e++) {
		const uint16_t *src = f->parts + e * (size_t)(f->rows * f->cols);
		uint16_t *dst = f->fused + e * (size_t)(f->cols * f->ld);
		for (int64_t r = 0; r < f->rows; r++)
			for (int64_t c = 0; c < f->cols; c++)
				dst[c * f->ld + f->off + r] = src[r * f->cols + c];
	}
}

void moe_check_fuse(uint16_t *fused, const uint16_t *parts, int64_t count, int64_t rows,
		    int64_t cols, int64_t ld, int64_t off, int threads)
{
	fuse_job f = {fused, parts, rows, cols, ld, off};
	moe_check_parallel((size_t)count, threads, fuse_part, &f);
}

// ---------------------------------------------------------------------------------------
// tensors

qw_tensor moe_check_tensor_of(const void *data, qw_dtype dtype, int ndim, int64_t d0,
			      int64_t d1, int64_t d2)
{
	qw_tensor t = {.name = "t", .dtype = dtype, .ndim = ndim, .data = data};
	int64_t dims[3] = {d0, d1, d2};
	t.numel = 1;
	for (int i = 0; i < ndim; i++)
		t.numel *= (uint64_t)(t.shape[i] = dims[i]);
	t.nbytes = t.numel * qw_dtype_size(dtype);
	return t;
}

qw_tensor moe_check_tensor(uint16_t *data, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
	return moe_check_tensor_of(data, QW_DT_BF16, ndim, d0, d1, d2);
}

qw_tensor moe_check_fp8_tensor(const moe_check_fp8 *m, int64_t i, int ndim, qw_tensor *scale)
{
	int64_t sr = (m->rows + m->br - 1) / m->br, sc = (m->cols + m->bc - 1) / m->bc;
	size_t per = (size_t)(m->rows * m->cols), nsc = moe_check_fp8_scales(m);
	qw_tensor t;
	if (ndim == 3) {
		t = moe_check_tensor_of(m->q, QW_DT_F8_E4M3, 3, m->count, m->rows, m->cols);
		*scale = moe_check_tensor_of(m->s, QW_DT_F32, 3, m->count, sr, sc);
	} else {
		t = moe_check_tensor_of(m->q + (size_t)i * per, QW_DT_F8_E4M3, 2, m->rows, m->cols,
					0);
		*scale = moe_check_tensor_of(m->s + (size_t)i * nsc, QW_DT_F32, 2, sr, sc, 0);
	}
	t.scale = scale;
	t.block[0] = m->br;
	t.block[1] = m->bc;
	return t;
}

// ---------------------------------------------------------------------------------------
// the reference

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
	float *xf = malloc(n * sizeof *xf + 4);
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

bool moe_check_compare(const char *what, int T, int H, const float *ref, const uint16_t *got,
		       double atol_rms)
{
	size_t n = (size_t)T * (size_t)H;
	double ss = 0.0, se = 0.0, max_diff = 0.0, max_share = 0.0;
	for (size_t i = 0; i < n; i++)
		ss += (double)ref[i] * ref[i];
	double rms = sqrt(ss / (double)n), atol = atol_rms * rms, rtol = 1.0 / 128;
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

bool moe_check_same_bits(const char *what, const uint16_t *a, const uint16_t *b, size_t n,
			 int cols)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i]) {
			printf("  %s: row %zu column %zu: %#06x against %#06x\n", what, i / (size_t)cols,
			       i % (size_t)cols, a[i], b[i]);
			fflush(stdout);
			return false;
		}
	return true;
}

bool moe_check_runs(const char *name, int H, const int *sizes, int n, const float *ref,
		    double atol_rms, moe_check_run_fn run, void *ctx, moe_check_run_fn twin,
		    void *twin_ctx)
{
	int Tmax = sizes[n - 1];
	size_t all = (size_t)Tmax * (size_t)H;
	uint16_t *full = malloc(all * 2), *got = malloc(all * 2), *want = malloc(all * 2);
	bool ok = full && got && want && run(ctx, 0, Tmax, full);
	char what[160];
	for (int s = 0; ok && s < n; s++) {   /* every size against the reference (and twin) */
		int T = sizes[s];
		ok = run(ctx, 0, T, got) && moe_check_compare(name, T, H, ref, got, atol_rms);
		snprintf(what, sizeof what, "%s: T %d against the twin", name, T);
		if (ok && twin)
			ok = twin(twin_ctx, 0, T, want) &&
			     moe_check_same_bits(what, got, want, (size_t)T * (size_t)H, H);
		snprintf(what, sizeof what, "%s: T %d, a prefix of the batch", name, T);
		ok = ok && moe_check_same_bits(what, got, full, (size_t)T * (size_t)H, H);
	}
	snprintf(what, sizeof what, "%s: a second run", name);
	ok = ok && run(ctx, 0, Tmax, got) && moe_check_same_bits(what, got, full, all, H);
	int alone[4] = {0, Tmax / 3, Tmax / 2 + 1, Tmax - 1};
	for (int i = 0; ok && i < 4; i++) {
		snprintf(what, sizeof what, "%s: token %d alone", name, alone[i]);
		ok = run(ctx, alone[i], 1, got) &&
		     moe_check_same_bits(what, got, full + (size_t)alone[i] * (size_t)H, (size_t)H, H);
	}
	int mid = Tmax / 4, len = Tmax / 2 > 37 ? 37 : Tmax / 2;
	snprintf(what, sizeof what, "%s: tokens [%d, %d) alone", name, mid, mid + len);
	if (ok && len > 0)
		ok = run(ctx, mid, len, got) &&
		     moe_check_same_bits(what, got, full + (size_t)mid * (size_t)H,
					 (size_t)len * (size_t)H, H);
	if (!full || !got || !want)
		printf("%s: out of memory for the checks\n", name);
	free(full);
	free(got);
	free(want);
	return ok;
}
