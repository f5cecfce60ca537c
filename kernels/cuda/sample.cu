/* sample.cu - one token per row of logits on the GPU, by the rule of kernels/sample.h.  See
 * kernels.h (qw_cuda_sample) for the contract.
 *
 * One block of 1024 threads per row; each row's rule (mode, candidates, temperature, min-p,
 * top-k, top-p, its uniform number qw_sample_uniform(seed, step) computed here on the host,
 * how many log-probabilities) travels in the kernel's arguments.  Rows without penalties are
 * read as they are, bf16, 64 a launch.  Rows with penalties and a history go 8 a launch: a
 * first kernel writes each as fp32 into the scratch and applies its history's penalties
 * there, with the CPU's operations (IEEE division, multiplication and subtraction, no fused
 * multiply-add), so the processed logits are the CPU's bit for bit; the same sampling kernel
 * then reads those.  Modes:
 *   greedy  temperature <= 0: argmax over the row, the lowest id among equals (NaNs lose;
 *           a NaN first logit wins, as qw_argmax's scan has it).
 *   all     top-k off (0 or >= V) and top-p off: the walk in id order over what min-p keeps.
 *           Thread t owns ids [t*C, t*C + C), C = ceil(V / 1024), and sums their kept
 *           exp((z - max) / temp) in order; a block scan of those sums finds the first chunk
 *           whose inclusive prefix passes u = U * total, and its thread walks its ids.
 *   top-k   1 <= top_k <= 1024 (< V), optionally with top-p: the k best (k = max(top_k,
 *           top logprobs)) by (z desc, id asc) by a radix select on the order keys of the
 *           logits, 8 bits a pass (2 passes on bf16, 4 on fp32; the ties at the k-th key are
 *           taken lowest id first through a block scan in id order), sorted by a bitonic sort
 *           in shared memory; the min-p cut (a prefix of them), the top-k cut, the nucleus
 *           cut and the draw over their probabilities by block scans.
 *   top-p   top_p < 1 without top-k: the same with the 1024 best, the kept mass being the
 *           whole row's min-p survivors'; when the nucleus is not within those 1024 (a flat
 *           row), the row goes to the host.
 *   host    1024 < top_k < V: the row goes to the host.
 * "The host": after the kernels, the row's logits are copied back and qw_sample_row draws
 * (a synchronous copy of V * 2 bytes per such row; rare in practice), penalties and
 * log-probabilities included.
 *
 * Log-probabilities (the rows that ask): the kept mass's log, log_softmax of the processed
 * logits, and the top ones as the first candidates of the same radix select (greedy and
 * all rows select them for that alone), -inf past what the cuts keep.
 *
 * Precision: probabilities in double (exp of ((double)z - max) / temperature, the CPU's
 * expression), unnormalised: the draw compares u = U * total against running sums, and the
 * top-p cut top_p * kept against them, both unchanged by a common scale.  Ordering by logit
 * is ordering by probability, except where exp maps distinct logits to the same double
 * (underflow below 1e-308, or temperatures above ~1e15); such candidates carry no mass a
 * draw can land on.  So the token equals qw_sample_row's except when u lies within a few
 * double roundings (~1e-15 relative) of a cumulative boundary (the sums are taken in a
 * different order), the cut's running mass within as much of top_p * kept, or a
 * probability within an ulp of min_p (CUDA's exp and the host's may differ in the last
 * bit); log-probabilities agree to ~1e-15 relative, before their rounding to float.  The
 * tests bound and explain every disagreement this way.
 *
 * Cost per row: 2-4 passes over the row's 2 V bytes (from L2 after the first; twice the
 * passes and bytes for a penalised fp32 row), V double exps in the all and top-p modes
 * (~40 us for V = 151936 on one SM), none but k in top-k.
 */
#include <cuda_bf16.h>
#include <limits.h>
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
#define PEN_ROWS 8              /* penalised rows per launch (their fp32 rows in the scratch) */
#define NEEDS_HOST (-2)         /* a row's result: qw_sample_row draws it */

enum { MODE_GREEDY, MODE_ALL, MODE_TOPK, MODE_TOPP, MODE_HOST };

typedef struct row_rule {
	double u;            /* qw_sample_uniform(seed, step) */
	int mode;            /* MODE_* */
	int k;               /* candidates selected: top-k: max(top_k, n_top); top-p: min(V, 1024) */
	int top_k;           /* the top-k cut (V: none) */
	int n_top;           /* top log-probabilities to list; -1: no log-probabilities */
	int row;             /* the row of the outputs */
	int src;             /* the row of the launch's logits */
	float temperature;
	float top_p;         /* < 1: the nucleus cut among the candidates */
	float min_p;         /* > 0: the min-p cut */
} row_rule;

typedef struct row_rules {
	row_rule r[SAMPLE_ROWS];
} row_rules;

/* A penalised row: where its logits and history are, and its penalties. */
typedef struct pen_rule {
	int row;             /* of the logits */
	int hist_at, hist_n; /* its history in the scratch's entries */
	float repetition, frequency, presence;
} pen_rule;

typedef struct pen_rules {
	pen_rule r[PEN_ROWS];
} pen_rules;

static const unsigned FULL = 0xffffffffu;

// ---------------------------------------------------------------------------------------
// rows: bf16 as the model wrote them, or fp32 once penalised

__device__ static inline float bf16_value(uint16_t b)
{
	return __uint_as_float((uint32_t)b << 16);
}

/* An order key: larger value, larger key; -0 is +0. */
__device__ static inline unsigned order_key16(uint16_t b)
{
	if (b == 0x8000)
		b = 0;
	return (b & 0x8000) ? (~b & 0xffffu) : (b | 0x8000u);
}

__device__ static inline unsigned order_key32(float f)
{
	unsigned b = __float_as_uint(f);
	if (b == 0x80000000u)
		b = 0;
	return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct bf16_row {
	const uint16_t *p;
	static constexpr int KEY_BITS = 16;
	__device__ float value(int i) const { return bf16_value(p[i]); }
	__device__ unsigned key(int i) const { return order_key16(p[i]); }
};

struct f32_row {
	const float *p;
	static constexpr int KEY_BITS = 32;
	__device__ float value(int i) const { return p[i]; }
	__device__ unsigned key(int i) const { return order_key32(p[i]); }
};

// ---------------------------------------------------------------------------------------
// block-wide helpers (SAMPLE_THREADS threads; every thread must call them)

/* (value, index) pairs: the larger value, then the lower index */
__device__ static inline bool better(float v, int i, float bv, int bi)
{
	return v > bv || (v == bv && i < bi);
}

/* The argmax of the row: the lowest index of the largest non-NaN value; 0 when row[0] is
 * NaN or every value is (qw_argmax's sequential scan). */
template <class R>
__device__ static int block_argmax(R row, int V)
{
	__shared__ float sv[SAMPLE_THREADS / 32];
	__shared__ int si[SAMPLE_THREADS / 32];
	float bv = -INFINITY;
	int bi = V;
	for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
		float v = row.value(i);
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
	if (bi >= V || isnan(row.value(0)))
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

/* The largest v of the block. */
__device__ static int block_max_int(int v)
{
	__shared__ int m;
	if (threadIdx.x == 0)
		m = INT_MIN;
	__syncthreads();
	atomicMax(&m, v);
	__syncthreads();
	int r = m;
	__syncthreads();
	return r;
}

// ---------------------------------------------------------------------------------------
// the kernels

/* The k best ids of the row by (key desc, id asc) into cand[0..k), sorted, as
 * key << 32 | (0xffffffff - id): a radix select, 8 bits of the key a pass. */
template <class R>
__device__ static void top_candidates(R row, int V, int k, unsigned long long *cand, int *hist)
{
	int tid = threadIdx.x;
	unsigned prefix = 0;
	int need = k, greater = 0;
	for (int shift = R::KEY_BITS - 8; shift >= 0; shift -= 8) {
		/* among the keys whose higher digits are the prefix's, the digit at shift */
		unsigned high = shift + 8 >= 32 ? 0u : ~0u << (shift + 8);
		for (int i = tid; i < 256; i += SAMPLE_THREADS)
			hist[i] = 0;
		__syncthreads();
		for (int i = tid; i < V; i += SAMPLE_THREADS) {
			unsigned key = row.key(i);
			if ((key & high) == (prefix & high))
				atomicAdd(&hist[(key >> shift) & 0xff], 1);
		}
		__syncthreads();
		int bin, above;
		select_bin(hist, need, &bin, &above);
		prefix |= (unsigned)bin << shift;
		greater += above;
		need -= above;
	}
	unsigned kth = prefix;
	int ties = k - greater;   /* >= 1 taken at kth */

	/* collect in id order: chunks of consecutive ids per thread */
	int C = (V + SAMPLE_THREADS - 1) / SAMPLE_THREADS, lo = min(tid * C, V), hi = min(lo + C, V);
	unsigned n_gt = 0, n_eq = 0;
	for (int i = lo; i < hi; i++) {
		unsigned key = row.key(i);
		n_gt += key > kth;
		n_eq += key == kth;
	}
	unsigned long long total;
	unsigned long long pre = block_exclusive_scan_u64((unsigned long long)n_gt << 32 | n_eq,
							  &total);
	unsigned pos_gt = (unsigned)(pre >> 32), pos_eq = (unsigned)(pre & 0xffffffffu);
	for (int i = lo; i < hi; i++) {
		unsigned key = row.key(i);
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

__device__ static inline int cand_id(unsigned long long c)
{
	return (int)(0xffffffffu - (unsigned)(c & 0xffffffffu));
}

/* The row's log-probabilities: the chosen token's and the first n_top candidates' (those
 * at index >= kept are -inf), log_mass the log of the kept mass.  Thread 0 and the first
 * n_top threads write. */
template <class R>
__device__ static void write_logprobs(qw_sample_logprobs *lp, R row, const unsigned long long *cand,
				      int n_top, int kept, double mx, double temp, double log_mass,
				      int token)
{
	int tid = threadIdx.x;
	if (tid == 0) {
		lp->logprob = (float)(((double)row.value(token) - mx) / temp - log_mass);
		lp->n_top = n_top;
	}
	if (tid < n_top) {
		int id = cand_id(cand[tid]);
		lp->top_ids[tid] = id;
		lp->top_logprobs[tid] = tid < kept ? (float)(((double)row.value(id) - mx) / temp -
							    log_mass)
						   : -INFINITY;
	}
}

/* The processed logits of penalised rows: row i of z (V,) = logits[rule.row] as fp32 with
 * its history's penalties (kernels/sample.c's arithmetic, operation for operation). */
static __global__ void __launch_bounds__(SAMPLE_THREADS)
penalize_kernel(float *z, const uint16_t *logits, int V, pen_rules rules,
		const qw_token_count *entries)
{
	const pen_rule pr = rules.r[blockIdx.x];
	const uint16_t *src = logits + (size_t)pr.row * (size_t)V;
	float *dst = z + (size_t)blockIdx.x * (size_t)V;
	for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS)
		dst[i] = bf16_value(src[i]);
	__syncthreads();
	bool rep = pr.repetition > 0.0f && pr.repetition != 1.0f;
	for (int j = threadIdx.x; j < pr.hist_n; j += SAMPLE_THREADS) {
		qw_token_count e = entries[pr.hist_at + j];   /* distinct tokens: no two threads
								 write one */
		unsigned generated = QW_GENERATED(e.count);
		float x = dst[e.token];
		if (rep && (generated > 0 || (e.count & QW_IN_PROMPT)))
			x = x > 0.0f ? __fdiv_rn(x, pr.repetition) : __fmul_rn(x, pr.repetition);
		if (generated > 0) {
			float f = __fmul_rn(pr.frequency, __uint2float_rn(generated));
			x = __fsub_rn(x, f);
			x = __fsub_rn(x, pr.presence);
		}
		dst[e.token] = x;
	}
}

template <class R, class T>
static __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(int32_t *out, qw_sample_logprobs *lps, const T *base, int V, row_rules rules)
{
	__shared__ unsigned long long cand[SAMPLE_MAX_TOPK];
	__shared__ int hist[256];
	__shared__ int s_token;
	const row_rule rr = rules.r[blockIdx.x];
	R row{base + (size_t)rr.src * (size_t)V};
	int tid = threadIdx.x;
	if (rr.mode == MODE_HOST) {
		if (tid == 0)
			out[rr.row] = NEEDS_HOST;
		return;
	}
	qw_sample_logprobs *lp = rr.n_top >= 0 ? &lps[rr.row] : NULL;
	int best = block_argmax(row, V);
	double mx = row.value(best);
	int C = (V + SAMPLE_THREADS - 1) / SAMPLE_THREADS, lo = min(tid * C, V), hi = min(lo + C, V);
	if (rr.mode == MODE_GREEDY) {
		if (tid == 0)
			out[rr.row] = best;
		if (!lp)
			return;
		/* log_softmax of the row */
		double chunk = 0.0, total;
		for (int i = lo; i < hi; i++)
			chunk += exp((double)row.value(i) - mx);
		block_scan(chunk, &total);
		if (rr.n_top > 0)
			top_candidates(row, V, rr.n_top, cand, hist);
		write_logprobs(lp, row, cand, rr.n_top, rr.n_top, mx, 1.0, log(total), best);
		return;
	}
	double temp = rr.temperature, min_p = rr.min_p;

	/* the whole row's kept mass, by chunks of consecutive ids (all and top-p modes) */
	double chunk = 0.0, incl = 0.0, row_mass = 0.0;
	int last_kept = -1;
	if (rr.mode != MODE_TOPK) {
		for (int i = lo; i < hi; i++) {
			double e = exp(((double)row.value(i) - mx) / temp);
			if (min_p <= 0.0 || e >= min_p) {
				chunk += e;
				last_kept = i;
			}
		}
		incl = block_scan(chunk, &row_mass);
	}
	if (rr.mode == MODE_ALL) {
		__shared__ double prefix[SAMPLE_THREADS];   /* inclusive, per chunk */
		prefix[tid] = incl;
		double u = rr.u * row_mass;
		int t = block_first(u < incl, SAMPLE_THREADS);   /* (synchronises prefix) */
		/* nothing passed u (roundings): the last kept id, as the CPU's walk */
		int last = block_max_int(last_kept);
		if (t == SAMPLE_THREADS && tid == 0)
			s_token = last;
		if (tid == t && t < SAMPLE_THREADS) {
			/* from where chunk t-1 ended, which did not pass u */
			double acc = t > 0 ? prefix[t - 1] : 0.0;
			int token = last_kept;   /* roundings apart, the walk ends in the chunk */
			for (int i = lo; i < hi; i++) {
				double e = exp(((double)row.value(i) - mx) / temp);
				if (min_p > 0.0 && e < min_p)
					continue;
				acc += e;
				if (u < acc) {
					token = i;
					break;
				}
			}
			s_token = token;
		}
		__syncthreads();
		int token = s_token;
		if (tid == 0)
			out[rr.row] = token;
		if (!lp)
			return;
		/* the top ones; min-p alone says which are kept */
		if (rr.n_top > 0)
			top_candidates(row, V, rr.n_top, cand, hist);
		int kept = 0;
		if (tid < rr.n_top) {
			double e = exp(((double)row.value(cand_id(cand[tid])) - mx) / temp);
			kept = min_p <= 0.0 || e >= min_p;
		}
		kept = block_first(!kept, rr.n_top);   /* a prefix, by (z desc, id asc) */
		write_logprobs(lp, row, cand, rr.n_top, kept, mx, temp, log(row_mass), token);
		return;
	}

	/* top-k / top-p: the k best, sorted, cut by min-p, top-k and top-p, and their mass */
	int k = rr.k;
	top_candidates(row, V, k, cand, hist);
	int id = tid < k ? cand_id(cand[tid]) : 0;
	double e = tid < k ? exp(((double)row.value(id) - mx) / temp) : 0.0;
	int n_min_p = block_first(tid < k && !(min_p <= 0.0 || e >= min_p), k);
	int keep = n_min_p < rr.top_k ? n_min_p : rr.top_k;
	double kept;
	double cum = block_scan(tid < keep ? e : 0.0, &kept);
	if (rr.mode == MODE_TOPP)
		kept = row_mass;
	int n = keep;
	if (rr.top_p < 1.0f) {
		/* the smallest prefix whose mass reaches top_p of the kept mass */
		double thr = (double)rr.top_p * kept;
		int f = block_first(tid < keep && cum >= thr, keep);
		if (f < keep) {
			n = f + 1;
		} else if (rr.mode == MODE_TOPP && n_min_p == k && k < V) {
			if (tid == 0)
				out[rr.row] = NEEDS_HOST;   /* the nucleus is wider than 1024 */
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
		s_token = id;
	__syncthreads();
	int token = s_token;
	if (tid == 0)
		out[rr.row] = token;
	if (lp)
		write_logprobs(lp, row, cand, rr.n_top, n, mx, temp, log(mass_n), token);
}

// ---------------------------------------------------------------------------------------
// launcher

/* Bytes of each part of the scratch, 256-aligned: tokens, log-probabilities, fp32 rows,
 * history entries. */
static size_t align256(size_t n)
{
	return (n + 255) & ~(size_t)255;
}

typedef struct ws_parts {
	int32_t *tokens;
	qw_sample_logprobs *logprobs;
	float *z;
	qw_token_count *entries;
	size_t bytes;
} ws_parts;

static ws_parts parts_of(void *ws, int max_rows, int V)
{
	ws_parts p = {};
	size_t at = 0;
	char *b = (char *)ws;
	p.tokens = (int32_t *)(b + at);
	at += align256((size_t)max_rows * sizeof(int32_t));
	p.logprobs = (qw_sample_logprobs *)(b + at);
	at += align256((size_t)max_rows * sizeof(qw_sample_logprobs));
	p.z = (float *)(b + at);
	at += align256((size_t)PEN_ROWS * (size_t)V * sizeof(float));
	p.entries = (qw_token_count *)(b + at);
	at += align256((size_t)PEN_ROWS * (size_t)V * sizeof(qw_token_count));
	p.bytes = at;
	return p;
}

extern "C" size_t qw_cuda_sample_ws_bytes(int max_rows, int V)
{
	if (max_rows < 0 || V < 1)
		return 0;
	return parts_of(NULL, max_rows, V).bytes;
}

static row_rule rule_of(const qw_sampling *p, int V, int row, int src)
{
	row_rule r = {};
	r.row = row;
	r.src = src;
	r.temperature = p->temperature;
	r.top_p = p->top_p;
	r.min_p = p->min_p;
	r.n_top = !p->logprobs ? -1 : p->top_logprobs < V ? p->top_logprobs : V;
	r.top_k = V;
	if (p->temperature <= 0.0f) {
		r.mode = MODE_GREEDY;
		return r;
	}
	r.u = qw_sample_uniform(p->seed, p->step);
	int keep = (p->top_k > 0 && p->top_k < V) ? p->top_k : V;
	if (keep < V) {
		r.top_k = keep;
		r.k = keep > r.n_top ? keep : r.n_top;
		r.mode = r.k <= SAMPLE_MAX_TOPK ? MODE_TOPK : MODE_HOST;
	} else if (p->top_p < 1.0f) {
		r.mode = MODE_TOPP;
		r.k = V < SAMPLE_MAX_TOPK ? V : SAMPLE_MAX_TOPK;
	} else {
		r.mode = MODE_ALL;
	}
	return r;
}

/* The rows the kernel left to the host (NEEDS_HOST), drawn by qw_sample_row. */
static qw_status host_rows(int32_t *out_host, qw_sample_logprobs *lp_host,
			   const uint16_t *logits, int rows, int V, const qw_sampling *params,
			   const qw_sample_history *history, cudaStream_t stream, qw_err *err)
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
		out_host[r] = qw_sample_row(row, V, &params[r], history ? &history[r] : NULL,
					    scratch, lp_host ? &lp_host[r] : NULL);
	}
	free(raw);
	free(row);
	free(scratch);
	return st;
}

/* Launches the sampling of n rules' rows (bf16 rows of logits, or fp32 rows of z). */
template <class R, class T>
static qw_status launch(const ws_parts *w, const T *base, int V, const row_rules *rules, int n,
			cudaStream_t stream, qw_err *err)
{
	sample_kernel<R, T><<<n, SAMPLE_THREADS, 0, stream>>>(w->tokens, w->logprobs, base, V,
							      *rules);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}

/* The penalised rows rows[0..n): their histories into the scratch, their processed rows
 * into z, then their sampling. */
static qw_status launch_penalised(const ws_parts *w, const uint16_t *logits, int V,
				  const qw_sampling *params, const qw_sample_history *history,
				  const int *rows, int n, cudaStream_t stream, qw_err *err)
{
	pen_rules pen = {};
	row_rules rules = {};
	int at = 0;
	for (int i = 0; i < n; i++) {
		int r = rows[i];
		const qw_sample_history *h = &history[r];
		QW_CUDA_TRY(err, cudaMemcpyAsync(w->entries + at, h->tokens,
						 (size_t)h->n * sizeof *h->tokens,
						 cudaMemcpyHostToDevice, stream));
		pen.r[i] = (pen_rule){r, at, h->n, params[r].repetition_penalty,
				      params[r].frequency_penalty, params[r].presence_penalty};
		at += h->n;
		rules.r[i] = rule_of(&params[r], V, r, i);
	}
	penalize_kernel<<<n, SAMPLE_THREADS, 0, stream>>>(w->z, logits, V, pen, w->entries);
	QW_CUDA_TRY(err, cudaGetLastError());
	return launch<f32_row, float>(w, w->z, V, &rules, n, stream, err);
}

extern "C" qw_status qw_cuda_sample(int32_t *out_host, qw_sample_logprobs *lp_host,
				    const uint16_t *logits, int rows, int V,
				    const qw_sampling *params, const qw_sample_history *history,
				    void *ws, size_t ws_bytes, cudaStream_t stream, qw_err *err)
{
	if (rows < 0 || V < 1)
		return qw_fail(err, QW_E_ARG, "cuda sample: %d rows of %d logits", rows, V);
	if (rows == 0)
		return QW_OK;
	if (!out_host || !logits || !params || !ws)
		return qw_fail(err, QW_E_ARG, "cuda sample: a NULL pointer");
	if (ws_bytes < qw_cuda_sample_ws_bytes(rows, V))
		return qw_fail(err, QW_E_ARG, "cuda sample: %zu bytes of scratch, %d rows need %zu "
			       "(qw_cuda_sample_ws_bytes)", ws_bytes, rows,
			       qw_cuda_sample_ws_bytes(rows, V));
	QW_TRY(qw_sample_check(params, history, lp_host, rows, V, err));
	ws_parts w = parts_of(ws, rows, V);
	bool any_lp = false;
	row_rules rules = {};
	int n = 0, pen_rows[PEN_ROWS], n_pen = 0;
	for (int r = 0; r < rows; r++) {
		any_lp |= params[r].logprobs != 0;
		if (history && history[r].n > 0 && qw_sample_penalized(&params[r])) {
			pen_rows[n_pen++] = r;
			if (n_pen == PEN_ROWS) {
				QW_TRY(launch_penalised(&w, logits, V, params, history, pen_rows, n_pen,
							stream, err));
				n_pen = 0;
			}
			continue;
		}
		rules.r[n++] = rule_of(&params[r], V, r, r);
		if (n == SAMPLE_ROWS) {
			QW_TRY((launch<bf16_row, uint16_t>(&w, logits, V, &rules, n, stream, err)));
			n = 0;
		}
	}
	if (n)
		QW_TRY((launch<bf16_row, uint16_t>(&w, logits, V, &rules, n, stream, err)));
	if (n_pen)
		QW_TRY(launch_penalised(&w, logits, V, params, history, pen_rows, n_pen, stream,
					err));
	QW_CUDA_TRY(err, cudaMemcpyAsync(out_host, w.tokens, (size_t)rows * sizeof(int32_t),
					 cudaMemcpyDeviceToHost, stream));
	if (any_lp)
		QW_CUDA_TRY(err, cudaMemcpyAsync(lp_host, w.logprobs,
						 (size_t)rows * sizeof(qw_sample_logprobs),
						 cudaMemcpyDeviceToHost, stream));
	QW_CUDA_TRY(err, cudaStreamSynchronize(stream));
	return host_rows(out_host, lp_host, logits, rows, V, params, history, stream, err);
}
