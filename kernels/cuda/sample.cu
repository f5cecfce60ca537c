/* sample.cu - one token per row of logits on the GPU, by the rule of kernels/sample.h.  See
 * kernels.h (qw_cuda_sample) for the contract.
 *
 * One block of 1024 threads per row; each row's rule (mode, k, temperature, top_p and its
 * uniform number, qw_sample_uniform(seed, step) computed here on the host) travels in the
 * kernel's arguments, 64 rows a launch.  Modes:
 *   greedy  temperature <= 0: argmax over the row, the lowest id among equals (NaNs lose;
 *           a NaN first logit wins, as qw_argmax's scan has it).
 *   all     nothing cut (top_k 0 or >= V, top_p >= 1): the walk in id order.  Thread t owns
 *           ids [t*C, t*C + C), C = ceil(V / 1024), and sums their exp((l - max) / temp) in
 *           order; a block scan of those sums finds the first chunk whose inclusive prefix
 *           passes u = U * total, and its thread walks its ids.
 *   top-k   1 <= top_k <= 1024 (< V), optionally with top_p: the k best by (logit desc, id
 *           asc) by a radix select on the 16-bit order keys of the bf16 logits (two
 *           histogram passes find the k-th key; the ties at it are taken lowest id first
 *           through a block scan in id order), sorted by a bitonic sort in shared memory, then
 *           the nucleus cut and the draw over their probabilities by block scans.
 *   top-p   top_p < 1 without top-k (top_k 0 or >= V): the same with the 1024 best, the kept
 *           mass being the whole row's; when the nucleus is not within those 1024 (a flat
 *           row), the row goes to the host.
 *   host    1024 < top_k < V: the row goes to the host.
 * "The host": after the kernels, the row's logits are copied back and qw_sample_row draws
 * (a synchronous copy of V * 2 bytes per such row; rare in practice).
 *
 * Precision: probabilities in double (exp of ((double)logit - max) / temperature, the CPU's
 * expression), unnormalised: the draw compares u = U * total against running sums, and the
 * top-p cut top_p * kept against them, both unchanged by a common scale, so dividing by the
 * row's sum (the CPU does) only moves roundings.  Ordering by logit is ordering by
 * probability, except where exp maps distinct logits to the same double (underflow below
 * 1e-308, or temperatures above ~1e15); such candidates carry no mass a draw can land on.
 * So the token equals qw_sample_row's except when u lies within a few double roundings
 * (~1e-15 relative) of a cumulative boundary (the sums are taken in a different order) or
 * the cut's running mass within as much of top_p * kept; the tests bound and explain every
 * disagreement this way.
 *
 * Cost per row: 2-4 passes over the row's 2 V bytes (from L2 after the first), V double
 * exps in the all and top-p modes (~40 us for V = 151936 on one SM), none but k in top-k.
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"

extern "C" {
#include "kernels/sample.h"
}

#define SAMPLE_THREADS 1024     /* threads per row */
#define SAMPLE_MAX_TOPK 1024    /* candidates the GPU sorts */
#define SAMPLE_ROWS 64          /* rows per launch */
#define NEEDS_HOST (-2)         /* a row's result: qw_sample_row draws it */

enum { MODE_GREEDY, MODE_ALL, MODE_TOPK, MODE_TOPP, MODE_HOST };

typedef struct row_rule {
	int mode;            /* MODE_* */
	int k;               /* top-k: candidates kept; top-p: min(V, 1024) */
	float temperature;
	float top_p;         /* < 1: the nucleus cut among the candidates */
	double u;            /* qw_sample_uniform(seed, step) */
} row_rule;

typedef struct row_rules {
	row_rule r[SAMPLE_ROWS];
} row_rules;

static const unsigned FULL = 0xffffffffu;

// ---------------------------------------------------------------------------------------
// block-wide helpers (SAMPLE_THREADS threads; every thread must call them)

__device__ static inline float bf16_value(uint16_t b)
{
	return __uint_as_float((uint32_t)b << 16);
}

/* An order key: larger logit, larger key; -0 is +0. */
__device__ static inline unsigned order_key(uint16_t b)
{
	if (b == 0x8000)
		b = 0;
	return (b & 0x8000) ? (~b & 0xffffu) : (b | 0x8000u);
}

/* (value, index) pairs: the larger value, then the lower index */
__device__ static inline bool better(float v, int i, float bv, int bi)
{
	return v > bv || (v == bv && i < bi);
}

/* The argmax of the row: the lowest index of the largest non-NaN value; 0 when row[0] is
 * NaN or every value is (qw_argmax's sequential scan). */
__device__ static int block_argmax(const uint16_t *row, int V)
{
	__shared__ float sv[SAMPLE_THREADS / 32];
	__shared__ int si[SAMPLE_THREADS / 32];
	float bv = -INFINITY;
	int bi = V;
	for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
		float v = bf16_value(row[i]);
		if (better(v, i, bv, bi)) {
			bv = v;
			bi = i;
		}
	}
	int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) {
		float ov = __shfl_xor_sync(FULL, bv, o);
		int oi = __shfl_xor_sync(FULL, bi, o);
		if (better(ov, oi, bv, bi)) {
			bv = ov;
			bi = oi;
		}
	}
	if (lane == 0) {
		sv[warp] = bv;
		si[warp] = bi;
	}
	__syncthreads();
	bv = sv[lane];
	bi = si[lane];
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) {
		float ov = __shfl_xor_sync(FULL, bv, o);
		int oi = __shfl_xor_sync(FULL, bi, o);
		if (better(ov, oi, bv, bi)) {
			bv = ov;
			bi = oi;
		}
	}
	__syncthreads();   /* sv, si reusable */
	if (bi >= V || isnan(bf16_value(row[0])))
		return 0;
	return bi;
}

/* Inclusive prefix sum of v in thread order (a fixed tree); *total gets the sum. */
__device__ static double block_scan(double v, double *total)
{
	__shared__ double ws[SAMPLE_THREADS / 32];
	int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
	for (int o = 1; o < 32; o <<= 1) {
		double n = __shfl_up_sync(FULL, v, o);
		if (lane >= o)
			v += n;
	}
	if (lane == 31)
		ws[warp] = v;
	__syncthreads();
	double w = ws[lane];
#pragma unroll
	for (int o = 1; o < 32; o <<= 1) {
		double n = __shfl_up_sync(FULL, w, o);
		if (lane >= o)
			w += n;
	}
	/* w on lane j: warps 0..j summed */
	double before = __shfl_sync(FULL, w, (warp + 31) % 32);
	*total = __shfl_sync(FULL, w, 31);
	__syncthreads();   /* ws reusable */
	return warp > 0 ? before + v : v;
}

/* Exclusive prefix sum of v in thread order; *total gets the sum. */
__device__ static unsigned long long block_exclusive_scan_u64(unsigned long long v,
							      unsigned long long *total)
{
	__shared__ unsigned long long ws[SAMPLE_THREADS / 32];
	int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
	unsigned long long incl = v;
#pragma unroll
	for (int o = 1; o < 32; o <<= 1) {
		unsigned long long n = __shfl_up_sync(FULL, incl, o);
		if (lane >= o)
			incl += n;
	}
	if (lane == 31)
		ws[warp] = incl;
	__syncthreads();
	unsigned long long before = 0, sum = 0;
	for (int i = 0; i < SAMPLE_THREADS / 32; i++) {
		before += i < warp ? ws[i] : 0;
		sum += ws[i];
	}
	__syncthreads();
	*total = sum;
	return before + incl - v;
}

/* The smallest index i < n (one per thread, i = threadIdx.x) with pred true; n if none. */
__device__ static int block_first(bool pred, int n)
{
	__shared__ int first;
	if (threadIdx.x == 0)
		first = n;
	__syncthreads();
	if (pred && (int)threadIdx.x < n)
		atomicMin(&first, (int)threadIdx.x);
	__syncthreads();
	int r = first;
	__syncthreads();
	return r;
}

/* Given a histogram of 256 bins, the bin holding the need-th largest element (counting from
 * the top bin down) and how many elements lie in the bins above it. */
__device__ static void select_bin(const int *hist, int need, int *bin, int *above)
{
	__shared__ int res[2];
	if (threadIdx.x < 32) {
		int lane = threadIdx.x, c = 0;
		for (int b = 0; b < 8; b++)
			c += hist[lane * 8 + b];
		int incl = c;   /* lanes >= lane summed */
#pragma unroll
		for (int o = 1; o < 32; o <<= 1) {
			int n = __shfl_down_sync(FULL, incl, o);
			if (lane + o < 32)
				incl += n;
		}
		int acc = incl - c;
		if (acc < need && need <= incl) {
			for (int b = lane * 8 + 7; b >= lane * 8; b--) {
				if (acc + hist[b] >= need) {
					res[0] = b;
					res[1] = acc;
					break;
				}
				acc += hist[b];
			}
		}
	}
	__syncthreads();
	*bin = res[0];
	*above = res[1];
	__syncthreads();
}

// ---------------------------------------------------------------------------------------
// the kernel

/* The k best ids of the row by (key desc, id asc) into cand[0..k), sorted, as
 * key << 32 | (0xffffffff - id). */
__device__ static void top_candidates(const uint16_t *row, int V, int k, unsigned long long *cand,
				      int *hist)
{
	int tid = threadIdx.x;
	/* pass 1: high byte of the key */
	for (int i = tid; i < 256; i += SAMPLE_THREADS)
		hist[i] = 0;
	__syncthreads();
	for (int i = tid; i < V; i += SAMPLE_THREADS)
		atomicAdd(&hist[order_key(row[i]) >> 8], 1);
	__syncthreads();
	int b1, above1, b2, above2;
	select_bin(hist, k, &b1, &above1);
	/* pass 2: low byte among the keys of that high byte */
	for (int i = tid; i < 256; i += SAMPLE_THREADS)
		hist[i] = 0;
	__syncthreads();
	for (int i = tid; i < V; i += SAMPLE_THREADS) {
		unsigned key = order_key(row[i]);
		if ((int)(key >> 8) == b1)
			atomicAdd(&hist[key & 0xff], 1);
	}
	__syncthreads();
	select_bin(hist, k - above1, &b2, &above2);
	unsigned kth = (unsigned)(b1 << 8 | b2);
	int greater = above1 + above2, ties = k - greater;   /* ties >= 1 taken at kth */

	/* collect in id order: chunks of consecutive ids per thread */
	int C = (V + SAMPLE_THREADS - 1) / SAMPLE_THREADS, lo = min(tid * C, V), hi = min(lo + C, V);
	unsigned n_gt = 0, n_eq = 0;
	for (int i = lo; i < hi; i++) {
		unsigned key = order_key(row[i]);
		n_gt += key > kth;
		n_eq += key == kth;
	}
	unsigned long long total;
	unsigned long long pre = block_exclusive_scan_u64((unsigned long long)n_gt << 32 | n_eq,
							  &total);
	unsigned pos_gt = (unsigned)(pre >> 32), pos_eq = (unsigned)(pre & 0xffffffffu);
	for (int i = lo; i < hi; i++) {
		unsigned key = order_key(row[i]);
		unsigned long long c = (unsigned long long)key << 32 | (0xffffffffu - (unsigned)i);
		if (key > kth)
			cand[pos_gt++] = c;
		else if (key == kth && pos_eq < (unsigned)ties)
			cand[greater + pos_eq++] = c;
		else if (key == kth)
			pos_eq++;
	}
	/* bitonic sort, descending, over the next power of two (padding 0 sorts last) */
	int n2 = 1;
	while (n2 < k)
		n2 <<= 1;
	if (tid >= k && tid < n2)
		cand[tid] = 0;
	for (int size = 2; size <= n2; size <<= 1)
		for (int stride = size / 2; stride > 0; stride >>= 1) {
			__syncthreads();
			int j = tid ^ stride;
			if (tid < n2 && j > tid) {
				unsigned long long x = cand[tid], y = cand[j];
				bool desc = (tid & size) == 0;
				if (desc ? x < y : x > y) {
					cand[tid] = y;
					cand[j] = x;
				}
			}
		}
	__syncthreads();
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(int32_t *out, const uint16_t *logits, int V, row_rules rules)
{
	__shared__ unsigned long long cand[SAMPLE_MAX_TOPK];
	__shared__ int hist[256];
	const row_rule rr = rules.r[blockIdx.x];
	const uint16_t *row = logits + (size_t)blockIdx.x * (size_t)V;
	int tid = threadIdx.x;
	if (rr.mode == MODE_HOST) {
		if (tid == 0)
			out[blockIdx.x] = NEEDS_HOST;
		return;
	}
	int best = block_argmax(row, V);
	if (rr.mode == MODE_GREEDY) {
		if (tid == 0)
			out[blockIdx.x] = best;
		return;
	}
	double mx = bf16_value(row[best]), temp = rr.temperature;

	/* the whole row's mass, by chunks of consecutive ids (all and top-p modes) */
	int C = (V + SAMPLE_THREADS - 1) / SAMPLE_THREADS, lo = min(tid * C, V), hi = min(lo + C, V);
	double chunk = 0.0, incl = 0.0, row_mass = 0.0;
	if (rr.mode != MODE_TOPK) {
		for (int i = lo; i < hi; i++)
			chunk += exp(((double)bf16_value(row[i]) - mx) / temp);
		incl = block_scan(chunk, &row_mass);
	}
	if (rr.mode == MODE_ALL) {
		__shared__ double prefix[SAMPLE_THREADS];   /* inclusive, per chunk */
		prefix[tid] = incl;
		double u = rr.u * row_mass;
		int t = block_first(u < incl, SAMPLE_THREADS);   /* (synchronises prefix) */
		if (tid == (t < SAMPLE_THREADS ? t : 0)) {
			int token = V - 1;   /* nothing passed u: the last id, as the CPU's walk */
			if (t < SAMPLE_THREADS && lo < hi) {
				/* from where chunk t-1 ended, which did not pass u */
				double acc = t > 0 ? prefix[t - 1] : 0.0;
				token = hi - 1;   /* roundings apart, the walk ends in the chunk */
				for (int i = lo; i < hi; i++) {
					acc += exp(((double)bf16_value(row[i]) - mx) / temp);
					if (u < acc) {
						token = i;
						break;
					}
				}
			}
			out[blockIdx.x] = token;
		}
		return;
	}

	/* top-k / top-p: the k best, sorted, and their running mass */
	int k = rr.k;
	top_candidates(row, V, k, cand, hist);
	int id = tid < k ? (int)(0xffffffffu - (unsigned)(cand[tid] & 0xffffffffu)) : 0;
	double p = tid < k ? exp(((double)bf16_value(row[id]) - mx) / temp) : 0.0, kept;
	double cum = block_scan(p, &kept);
	if (rr.mode == MODE_TOPP)
		kept = row_mass;
	int n = k;
	if (rr.top_p < 1.0f) {
		/* the smallest prefix whose mass reaches top_p of the kept mass */
		double thr = (double)rr.top_p * kept;
		int f = block_first(cum >= thr, k);
		if (f < k)
			n = f + 1;
		else if (rr.mode == MODE_TOPP && k < V) {
			if (tid == 0)
				out[blockIdx.x] = NEEDS_HOST;   /* the nucleus is wider than 1024 */
			return;
		}
	}
	/* the draw among the first n: u against their running mass */
	__shared__ double mass_n;
	if (tid == n - 1)
		mass_n = cum;
	__syncthreads();
	double u = rr.u * mass_n;
	int f = block_first(u < cum, n);
	int pick = f < n ? f : n - 1;
	if (tid == pick)
		out[blockIdx.x] = id;
}

// ---------------------------------------------------------------------------------------
// launcher

extern "C" size_t qw_cuda_sample_ws_bytes(int max_rows, int V)
{
	if (max_rows < 0)
		return 0;
	return ((size_t)max_rows * sizeof(int32_t) + 255) & ~(size_t)255;
}

static row_rule rule_of(const qw_sampling *p, int V)
{
	row_rule r = {};
	r.temperature = p->temperature;
	r.top_p = p->top_p;
	if (p->temperature <= 0.0f) {
		r.mode = MODE_GREEDY;
		return r;
	}
	r.u = qw_sample_uniform(p->seed, p->step);
	int keep = (p->top_k > 0 && p->top_k < V) ? p->top_k : V;
	if (keep < V) {
		r.mode = keep <= SAMPLE_MAX_TOPK ? MODE_TOPK : MODE_HOST;
		r.k = keep;
	} else if (p->top_p < 1.0f) {
		r.mode = MODE_TOPP;
		r.k = V < SAMPLE_MAX_TOPK ? V : SAMPLE_MAX_TOPK;
	} else {
		r.mode = MODE_ALL;
	}
	return r;
}

/* The rows the kernel left to the host (NEEDS_HOST), drawn by qw_sample_row. */
static qw_status host_rows(int32_t *out_host, const uint16_t *logits, int rows, int V,
			   const qw_sampling *params, cudaStream_t stream, qw_err *err)
{
	uint16_t *raw = NULL;
	float *row = NULL;
	void *scratch = NULL;
	qw_status st = QW_OK;
	for (int r = 0; r < rows && st == QW_OK; r++) {
		if (out_host[r] != NEEDS_HOST)
			continue;
		if (!raw) {
			raw = (uint16_t *)malloc((size_t)V * sizeof *raw);
			row = (float *)malloc((size_t)V * sizeof *row);
			scratch = malloc(qw_sample_scratch_bytes(V));
			if (!raw || !row || !scratch) {
				st = qw_fail(err, QW_E_NOMEM, "cuda sample: out of host memory for "
					     "a row of %d logits", V);
				break;
			}
		}
		cudaError_t ce = cudaMemcpyAsync(raw, logits + (size_t)r * (size_t)V,
						 (size_t)V * sizeof *raw, cudaMemcpyDeviceToHost, stream);
		if (ce == cudaSuccess)
			ce = cudaStreamSynchronize(stream);
		if (ce != cudaSuccess) {
			st = qw_fail(err, QW_E_DEVICE, "cuda sample: copying row %d back: %s", r,
				     cudaGetErrorString(ce));
			break;
		}
		for (int i = 0; i < V; i++) {
			uint32_t bits = (uint32_t)raw[i] << 16;
			memcpy(&row[i], &bits, sizeof bits);
		}
		out_host[r] = qw_sample_row(row, V, &params[r], scratch);
	}
	free(raw);
	free(row);
	free(scratch);
	return st;
}

extern "C" qw_status qw_cuda_sample(int32_t *out_host, const uint16_t *logits, int rows, int V,
				    const qw_sampling *params, void *ws, size_t ws_bytes,
				    cudaStream_t stream, qw_err *err)
{
	if (rows < 0 || V < 1)
		return qw_fail(err, QW_E_ARG, "cuda sample: %d rows of %d logits", rows, V);
	if (rows == 0)
		return QW_OK;
	if (!out_host || !logits || !params || !ws)
		return qw_fail(err, QW_E_ARG, "cuda sample: a NULL pointer");
	if (ws_bytes < (size_t)rows * sizeof(int32_t))
		return qw_fail(err, QW_E_ARG, "cuda sample: %zu bytes of scratch, %d rows need %zu "
			       "(qw_cuda_sample_ws_bytes)", ws_bytes, rows,
			       qw_cuda_sample_ws_bytes(rows, V));
	int32_t *out_dev = (int32_t *)ws;
	for (int r0 = 0; r0 < rows; r0 += SAMPLE_ROWS) {
		int n = rows - r0 < SAMPLE_ROWS ? rows - r0 : SAMPLE_ROWS;
		row_rules rules = {};
		for (int i = 0; i < n; i++)
			rules.r[i] = rule_of(&params[r0 + i], V);
		sample_kernel<<<n, SAMPLE_THREADS, 0, stream>>>(out_dev + r0,
								logits + (size_t)r0 * (size_t)V, V, rules);
		QW_CUDA_TRY(err, cudaGetLastError());
	}
	QW_CUDA_TRY(err, cudaMemcpyAsync(out_host, out_dev, (size_t)rows * sizeof(int32_t),
					 cudaMemcpyDeviceToHost, stream));
	QW_CUDA_TRY(err, cudaStreamSynchronize(stream));
	return host_rows(out_host, logits, rows, V, params, stream, err);
}
