/* elementwise.cu - the CUDA backend's row-wise and elementwise kernels: embedding gather,
 * RMSNorm (whole rows and per head), interleaved M-RoPE, residual add, bias, SwiGLU, row
 * gathers and scatters, the fused residual add + RMSNorm and q/k norms + M-RoPE + KV-cache
 * write, and the vision tower's LayerNorm, GELU, 2-D rotary and position interpolation.
 * See kernels.h.
 *
 * Every kernel reads bf16, computes in fp32 and rounds once when it stores, so its output
 * is the fp32 reference's rounded to bf16 (up to fp32 summation order in the norms).  These
 * are memory-bound: row kernels give a row to a block and read it with 16-byte loads where
 * the row allows; elementwise ones run a grid-stride loop over bf16 pairs.
 *
 * Fused kernels (residual add + RMSNorm; q/k norms + M-RoPE + KV-cache write) give the bits
 * of the separate kernels they replace: they round to bf16 wherever the separate ones store,
 * sum in the same order, and share the arithmetic below (the *_scale, normed and rope_*
 * helpers), so the fused and unfused forward passes agree bit for bit.
 */
#include <cuda_bf16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"

typedef __nv_bfloat16 bf16;

#define LAUNCH_CHECK(err, what)                                                              \
	do {                                                                                 \
		cudaError_t launch_rc_ = cudaGetLastError();                                 \
		if (launch_rc_ != cudaSuccess)                                               \
			return qw_fail((err), QW_E_DEVICE, "%s: launch failed: %s", (what),     \
				       cudaGetErrorString(launch_rc_));                         \
	} while (0)

static int blocks_for(size_t n, int threads)
{
	size_t b = (n + (size_t)threads - 1) / (size_t)threads;
	return (int)(b < 65535 * 8 ? (b ? b : 1) : 65535 * 8);
}

/* The sum over a block of one value per thread (blockDim.x a multiple of 32, <= 1024). */
__device__ static float block_sum(float v, float *shared)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
	__syncthreads();
	if (lane == 0)
		shared[warp] = v;
	__syncthreads();
	v = lane < warps ? shared[lane] : 0.0f;
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* The RMSNorm scale rsqrt(mean(x^2) + eps) of a block's row of n values, from each thread's
 * sum of squares over its columns (threadIdx.x, + blockDim.x, ...). */
__device__ static __forceinline__ float row_rms_scale(float ss, int n, float eps, float *shared)
{
	return rsqrtf(block_sum(ss, shared) / (float)n + eps);
}

/* The same for one head of n values held by a warp, each lane's sum over columns lane,
 * lane + 32, ... (xor butterfly: every lane gets the total). */
__device__ static __forceinline__ float head_rms_scale(float ss, int n, float eps)
{
	for (int o = 16; o > 0; o >>= 1)
		ss += __shfl_xor_sync(0xffffffffu, ss, o);
	return rsqrtf(ss / (float)n + eps);
}

/* One normed value, rounded as every norm stores it. */
__device__ static __forceinline__ bf16 normed(float x, float scale, bf16 w)
{
	return __float2bfloat16(x * scale * __bfloat162float(w));
}

/* Which position (0 t, 1 h, 2 w) turns rotary pair j under interleaved M-RoPE. */
__device__ static __forceinline__ int rope_axis(int j, int sec_h, int sec_w)
{
	return (j % 3 == 1 && j < 3 * sec_h) ? 1 : (j % 3 == 2 && j < 3 * sec_w) ? 2 : 0;
}

/* Turns pair (a, b) = (v[j], v[j + D/2]) by pos / theta^(2j/D) into *lo, *hi. */
__device__ static __forceinline__ void rope_turn(bf16 *lo, bf16 *hi, float a, float b, int j,
						 int D, int32_t pos, float theta)
{
	/* as HF and the CPU reference: a float power, a float reciprocal */
	float inv_freq = 1.0f / powf(theta, (float)(2 * j) / (float)D);
	float angle = (float)pos * inv_freq, s, c;
	sincosf(angle, &s, &c);
	*lo = __float2bfloat16(a * c - b * s);
	*hi = __float2bfloat16(b * c + a * s);
}

// ---------------------------------------------------------------------------------------
// embedding, gathers, scatters

static __global__ void gather_rows_kernel(bf16 *out, const bf16 *src, const int32_t *rows,
					  int n, int cols, int src_rows)
{
	pdl_launch_next();
	pdl_wait_previous();
	int r = blockIdx.x;
	int from = rows[r];
	if (from < 0 || from >= src_rows)
		from = -1;
	for (int c = threadIdx.x; c < cols; c += blockDim.x)
		out[(size_t)r * cols + c] = from < 0 ? __float2bfloat16(__int_as_float(0x7fc00000))
						     : src[(size_t)from * cols + c];
}

qw_status qw_cuda_gather_rows(uint16_t *out, const uint16_t *x, const int32_t *rows, int n,
			      int cols, int x_rows, cudaStream_t stream, qw_err *err)
{
	if (n < 1)
		return QW_OK;
	QW_CUDA_TRY(err, launch_pdl(gather_rows_kernel, dim3(n), dim3(256), 0, stream, (bf16 *)out,
				    (const bf16 *)x, rows, n, cols, x_rows));
	return QW_OK;
}

/* The embedding is a gather of table rows; an id outside the table gives a NaN row rather
 * than a read out of bounds. */
qw_status qw_cuda_embed(uint16_t *out, const uint16_t *table, const int32_t *ids, int T,
			int H, int V, cudaStream_t stream, qw_err *err)
{
	return qw_cuda_gather_rows(out, table, ids, T, H, V, stream, err);
}

static __global__ void scatter_rows_kernel(bf16 *dst, const int32_t *rows, const bf16 *src,
					   int cols, int dst_rows, bool add)
{
	int r = blockIdx.x, to = rows[r];
	if (to < 0 || to >= dst_rows)
		return;
	for (int c = threadIdx.x; c < cols; c += blockDim.x) {
		size_t d = (size_t)to * cols + c;
		float v = __bfloat162float(src[(size_t)r * cols + c]);
		dst[d] = __float2bfloat16(add ? __bfloat162float(dst[d]) + v : v);
	}
}

qw_status qw_cuda_scatter_rows(uint16_t *dst, const int32_t *rows, const uint16_t *src, int n,
			       int cols, int dst_rows, bool add, cudaStream_t stream, qw_err *err)
{
	if (n < 1)
		return QW_OK;
	scatter_rows_kernel<<<n, 256, 0, stream>>>((bf16 *)dst, rows, (const bf16 *)src, cols,
						    dst_rows, add);
	LAUNCH_CHECK(err, "scatter_rows");
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// norms

/* One block per row of `cols`: out = x * rsqrt(mean(x^2) + eps) * w. */
static __global__ void rmsnorm_kernel(bf16 *out, const bf16 *x, const bf16 *w, int cols,
				      float eps)
{
	pdl_launch_next();
	pdl_wait_previous();
	__shared__ float shared[32];
	const bf16 *xr = x + (size_t)blockIdx.x * cols;
	bf16 *o = out + (size_t)blockIdx.x * cols;
	float ss = 0.0f;
	for (int c = threadIdx.x; c < cols; c += blockDim.x) {
		float v = __bfloat162float(xr[c]);
		ss += v * v;
	}
	float r = row_rms_scale(ss, cols, eps, shared);
	for (int c = threadIdx.x; c < cols; c += blockDim.x)
		o[c] = normed(__bfloat162float(xr[c]), r, w[c]);
}

/* rmsnorm_kernel after the residual add: x += r (stored rounded, as add_kernel does), then
 * out = the norm of the rounded sum; a block per row, the thread-to-column map of
 * rmsnorm_kernel, so the bits of add then rmsnorm. */
static __global__ void add_rmsnorm_kernel(bf16 *out, bf16 *x, const bf16 *r, const bf16 *w,
					  int cols, float eps)
{
	pdl_launch_next();
	pdl_wait_previous();
	__shared__ float shared[32];
	bf16 *xr = x + (size_t)blockIdx.x * cols;
	const bf16 *rr = r + (size_t)blockIdx.x * cols;
	bf16 *o = out + (size_t)blockIdx.x * cols;
	float ss = 0.0f;
	for (int c = threadIdx.x; c < cols; c += blockDim.x) {
		bf16 sum = __float2bfloat16(__bfloat162float(xr[c]) + __bfloat162float(rr[c]));
		xr[c] = sum;
		float v = __bfloat162float(sum);
		ss += v * v;
	}
	float scale = row_rms_scale(ss, cols, eps, shared);
	/* each thread reads back only the columns it wrote */
	for (int c = threadIdx.x; c < cols; c += blockDim.x)
		o[c] = normed(__bfloat162float(xr[c]), scale, w[c]);
}

/* A warp per (row, head) of D values (the q/k norms): no block barrier, heads in parallel. */
static __global__ void head_rmsnorm_kernel(bf16 *x, const bf16 *w, int n, int D, float eps)
{
	int head = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
	if (head >= n)
		return;
	bf16 *v = x + (size_t)head * D;
	float ss = 0.0f;
	for (int c = lane; c < D; c += 32) {
		float f = __bfloat162float(v[c]);
		ss += f * f;
	}
	float r = head_rms_scale(ss, D, eps);
	for (int c = lane; c < D; c += 32)
		v[c] = normed(__bfloat162float(v[c]), r, w[c]);
}

/* The block size rmsnorm_kernel (and add_rmsnorm_kernel, whose bits must match) use for a
 * row of cols. */
static int rmsnorm_threads(int cols)
{
	return cols >= 1024 ? 512 : cols >= 256 ? 256 : 128;
}

qw_status qw_cuda_rmsnorm(uint16_t *out, const uint16_t *x, const uint16_t *w, int rows,
			  int cols, float eps, cudaStream_t stream, qw_err *err)
{
	if (rows < 1)
		return QW_OK;
	QW_CUDA_TRY(err, launch_pdl(rmsnorm_kernel, dim3(rows), dim3(rmsnorm_threads(cols)), 0,
				    stream, (bf16 *)out, (const bf16 *)x, (const bf16 *)w, cols, eps));
	return QW_OK;
}

qw_status qw_cuda_add_rmsnorm(uint16_t *out, uint16_t *x, const uint16_t *r, const uint16_t *w,
			      int rows, int cols, float eps, cudaStream_t stream, qw_err *err)
{
	if (rows < 1)
		return QW_OK;
	QW_CUDA_TRY(err, launch_pdl(add_rmsnorm_kernel, dim3(rows), dim3(rmsnorm_threads(cols)), 0,
				    stream, (bf16 *)out, (bf16 *)x, (const bf16 *)r, (const bf16 *)w,
				    cols, eps));
	return QW_OK;
}

qw_status qw_cuda_head_rmsnorm(uint16_t *x, const uint16_t *w, int rows, int n_heads,
			       int head_dim, float eps, cudaStream_t stream, qw_err *err)
{
	int n = rows * n_heads;
	if (n < 1)
		return QW_OK;
	head_rmsnorm_kernel<<<(n + 7) / 8, 256, 0, stream>>>((bf16 *)x, (const bf16 *)w, n,
							      head_dim, eps);
	LAUNCH_CHECK(err, "head_rmsnorm");
	return QW_OK;
}

/* One block per row: (x - mean) / sqrt(var + eps) * w + b, two passes over the row. */
static __global__ void layernorm_kernel(bf16 *out, const bf16 *x, const bf16 *w, const bf16 *b,
					int cols, float eps)
{
	__shared__ float shared[32];
	const bf16 *xr = x + (size_t)blockIdx.x * cols;
	bf16 *o = out + (size_t)blockIdx.x * cols;
	float s = 0.0f;
	for (int c = threadIdx.x; c < cols; c += blockDim.x)
		s += __bfloat162float(xr[c]);
	float mean = block_sum(s, shared) / (float)cols, var = 0.0f;
	for (int c = threadIdx.x; c < cols; c += blockDim.x) {
		float d = __bfloat162float(xr[c]) - mean;
		var += d * d;
	}
	float r = rsqrtf(block_sum(var, shared) / (float)cols + eps);
	for (int c = threadIdx.x; c < cols; c += blockDim.x)
		o[c] = __float2bfloat16((__bfloat162float(xr[c]) - mean) * r *
					__bfloat162float(w[c]) + __bfloat162float(b[c]));
}

qw_status qw_cuda_layernorm(uint16_t *out, const uint16_t *x, const uint16_t *w,
			    const uint16_t *b, int rows, int cols, float eps, cudaStream_t stream,
			    qw_err *err)
{
	if (rows < 1)
		return QW_OK;
	layernorm_kernel<<<rows, cols >= 1024 ? 512 : 128, 0, stream>>>(
		(bf16 *)out, (const bf16 *)x, (const bf16 *)w, (const bf16 *)b, cols, eps);
	LAUNCH_CHECK(err, "layernorm");
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// rotary

/* Interleaved M-RoPE: thread per (token, head, pair j); pair (j, j + D/2) turns by
 * pos[axis(j)] / theta^(2j/D), axis(j) = h if j%3==1 && j<3*sec_h, w if j%3==2 && j<3*sec_w,
 * else t (kernels/ops.h). */
static __global__ void rope_kernel(bf16 *x, const int32_t *positions, int T, int n_heads,
				   int D, int sec_h, int sec_w, float theta)
{
	int half = D / 2;
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (size_t)T * n_heads * half)
		return;
	int j = (int)(i % half);
	size_t th = i / half;
	int t = (int)(th / n_heads);
	bf16 *v = x + th * D;
	rope_turn(&v[j], &v[j + half], __bfloat162float(v[j]), __bfloat162float(v[j + half]), j, D,
		  positions[3 * t + rope_axis(j, sec_h, sec_w)], theta);
}

qw_status qw_cuda_rope(uint16_t *x, const int32_t *positions, int T, int n_heads, int head_dim,
		       const int *mrope_section, float theta, cudaStream_t stream, qw_err *err)
{
	size_t n = (size_t)T * n_heads * (head_dim / 2);
	if (n == 0)
		return QW_OK;
	rope_kernel<<<blocks_for(n, 256), 256, 0, stream>>>((bf16 *)x, positions, T, n_heads,
							     head_dim, mrope_section[1],
							     mrope_section[2], theta);
	LAUNCH_CHECK(err, "rope");
	return QW_OK;
}

/* The q/k norms, M-RoPE and KV-cache write of one layer, a warp per (token, head) of qkv's
 * Hq + 2 Hkv heads.  A q or k head is normed as head_rmsnorm_kernel does (lane l sums
 * columns l, l + 32, ...), rounded to bf16 as that kernel stores it, staged in shared memory
 * and turned pair by pair as rope_kernel does; q heads go to q_out, k heads to K-cache row
 * slot[t].  v heads are copied to V-cache row slot[t].  A negative slot writes no cache row,
 * as kv_write_rows skips it. */
#define QKV_WARPS 8          /* warps a block */
#define QKV_MAX_D 256

static __global__ void qk_norm_rope_kv_kernel(bf16 *q_out, bf16 *k_cache, bf16 *v_cache,
					      const bf16 *qkv, const bf16 *q_norm,
					      const bf16 *k_norm, const int32_t *positions,
					      const int32_t *slot, int T, int Hq, int Hkv, int D,
					      int sec_h, int sec_w, float theta, float eps)
{
	pdl_launch_next();
	pdl_wait_previous();
	__shared__ float staged[QKV_WARPS][QKV_MAX_D];
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, heads = Hq + 2 * Hkv;
	const size_t unit = (size_t)blockIdx.x * QKV_WARPS + warp;
	if (unit >= (size_t)T * heads)   /* the whole warp leaves together */
		return;
	const int t = (int)(unit / heads), h = (int)(unit % heads);
	const bf16 *src = qkv + unit * D;   /* head h of row t: rows are heads x D wide */
	const int32_t sl = slot[t];
	const size_t cache_row = (size_t)sl * Hkv * D;
	if (h >= Hq + Hkv) {
		if (sl >= 0)
			for (int c = lane; c < D; c += 32)
				v_cache[cache_row + (size_t)(h - Hq - Hkv) * D + c] = src[c];
		return;
	}
	const bool is_q = h < Hq;
	if (!is_q && sl < 0)
		return;
	bf16 *dst = is_q ? q_out + ((size_t)t * Hq + h) * D
			 : k_cache + cache_row + (size_t)(h - Hq) * D;
	const bf16 *w = is_q ? q_norm : k_norm;
	float ss = 0.0f;
	for (int c = lane; c < D; c += 32) {
		float f = __bfloat162float(src[c]);
		ss += f * f;
	}
	const float r = head_rms_scale(ss, D, eps);
	float *v = staged[warp];
	for (int c = lane; c < D; c += 32)
		v[c] = __bfloat162float(normed(__bfloat162float(src[c]), r, w[c]));
	__syncwarp();   /* a pair's two values were staged by different lanes */
	const int half = D / 2;
	const int32_t *pos = positions + 3 * (size_t)t;
	for (int j = lane; j < half; j += 32)
		rope_turn(&dst[j], &dst[j + half], v[j], v[j + half], j, D,
			  pos[rope_axis(j, sec_h, sec_w)], theta);
}

qw_status qw_cuda_qk_norm_rope_kv(uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache,
				  const uint16_t *qkv, const uint16_t *q_norm,
				  const uint16_t *k_norm, const int32_t *positions,
				  const int32_t *slot, int T, int n_heads, int n_kv_heads,
				  int head_dim, const int *mrope_section, float theta, float eps,
				  cudaStream_t stream, qw_err *err)
{
	if (head_dim < 2 || head_dim % 2 || head_dim > QKV_MAX_D || n_heads < 1 || n_kv_heads < 1)
		return qw_fail(err, QW_E_ARG, "cuda qk_norm_rope_kv: head_dim %d (even, at most %d) "
			       "or head counts %d/%d not taken", head_dim, QKV_MAX_D, n_heads,
			       n_kv_heads);
	size_t units = (size_t)T * (size_t)(n_heads + 2 * n_kv_heads);
	if (units == 0)
		return QW_OK;
	QW_CUDA_TRY(err, launch_pdl(qk_norm_rope_kv_kernel,
				    dim3((unsigned)((units + QKV_WARPS - 1) / QKV_WARPS)),
				    dim3(32 * QKV_WARPS), 0, stream, (bf16 *)q_out, (bf16 *)k_cache,
				    (bf16 *)v_cache, (const bf16 *)qkv, (const bf16 *)q_norm,
				    (const bf16 *)k_norm, positions, slot, T, n_heads, n_kv_heads,
				    head_dim, mrope_section[1], mrope_section[2], theta, eps));
	return QW_OK;
}

/* The vision tower's 2-D rotary: pair j of D/2 turns by pos_rc[t][j < D/4 ? 0 : 1] /
 * theta^(2 (j mod D/4) / (D/2)). */
static __global__ void rope_2d_kernel(bf16 *x, const int32_t *pos_rc, int T, int n_heads, int D,
				      float theta)
{
	int half = D / 2, quarter = D / 4;
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (size_t)T * n_heads * half)
		return;
	int j = (int)(i % half);
	size_t th = i / half;
	int t = (int)(th / n_heads);
	float inv_freq = 1.0f / powf(theta, (float)(2 * (j % quarter)) / (float)half);
	float angle = (float)pos_rc[2 * t + (j < quarter ? 0 : 1)] * inv_freq, s, c;
	sincosf(angle, &s, &c);
	bf16 *v = x + th * D;
	float a = __bfloat162float(v[j]), b = __bfloat162float(v[j + half]);
	v[j] = __float2bfloat16(a * c - b * s);
	v[j + half] = __float2bfloat16(b * c + a * s);
}

qw_status qw_cuda_rope_2d(uint16_t *x, const int32_t *pos_rc, int T, int n_heads, int head_dim,
			  float theta, cudaStream_t stream, qw_err *err)
{
	size_t n = (size_t)T * n_heads * (head_dim / 2);
	if (n == 0)
		return QW_OK;
	rope_2d_kernel<<<blocks_for(n, 256), 256, 0, stream>>>((bf16 *)x, pos_rc, T, n_heads,
								head_dim, theta);
	LAUNCH_CHECK(err, "rope_2d");
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// elementwise

static __global__ void add_kernel(bf16 *out, const bf16 *a, const bf16 *b, size_t n)
{
	pdl_launch_next();
	pdl_wait_previous();
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

qw_status qw_cuda_add(uint16_t *out, const uint16_t *a, const uint16_t *b, size_t n,
		      cudaStream_t stream, qw_err *err)
{
	if (n == 0)
		return QW_OK;
	QW_CUDA_TRY(err, launch_pdl(add_kernel, dim3(blocks_for(n, 256)), dim3(256), 0, stream,
				    (bf16 *)out, (const bf16 *)a, (const bf16 *)b, n));
	return QW_OK;
}

static __global__ void add_bias_kernel(bf16 *x, const bf16 *bias, size_t n, int cols)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		x[i] = __float2bfloat16(__bfloat162float(x[i]) + __bfloat162float(bias[i % cols]));
}

qw_status qw_cuda_add_bias(uint16_t *x, const uint16_t *bias, int rows, int cols,
			   cudaStream_t stream, qw_err *err)
{
	size_t n = (size_t)rows * cols;
	if (n == 0)
		return QW_OK;
	add_bias_kernel<<<blocks_for(n, 256), 256, 0, stream>>>((bf16 *)x, (const bf16 *)bias, n,
								 cols);
	LAUNCH_CHECK(err, "add_bias");
	return QW_OK;
}

static __global__ void silu_mul_kernel(bf16 *out, const bf16 *gate, const bf16 *up, size_t n)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float g = __bfloat162float(gate[i]);
		out[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * __bfloat162float(up[i]));
	}
}

qw_status qw_cuda_silu_mul(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n,
			   cudaStream_t stream, qw_err *err)
{
	if (n == 0)
		return QW_OK;
	silu_mul_kernel<<<blocks_for(n, 256), 256, 0, stream>>>((bf16 *)out, (const bf16 *)gate,
								 (const bf16 *)up, n);
	LAUNCH_CHECK(err, "silu_mul");
	return QW_OK;
}

static __global__ void gelu_kernel(bf16 *x, size_t n, bool tanh_approx)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float z = __bfloat162float(x[i]);
		float g = tanh_approx
			? 0.5f * z * (1.0f + tanhf(0.7978845608028654f * (z + 0.044715f * z * z * z)))
			: 0.5f * z * (1.0f + erff(z * 0.7071067811865476f));
		x[i] = __float2bfloat16(g);
	}
}

qw_status qw_cuda_gelu(uint16_t *x, size_t n, bool tanh_approx, cudaStream_t stream,
		       qw_err *err)
{
	if (n == 0)
		return QW_OK;
	gelu_kernel<<<blocks_for(n, 256), 256, 0, stream>>>((bf16 *)x, n, tanh_approx);
	LAUNCH_CHECK(err, "gelu");
	return QW_OK;
}

/* out[r] = sum over k of w[r][k] * table[idx[r][k]], in order, in fp32. */
static __global__ void interp_rows_kernel(bf16 *out, const bf16 *table, const int32_t *idx,
					  const float *w, int taps, int cols, int table_rows)
{
	int r = blockIdx.x;
	for (int c = threadIdx.x; c < cols; c += blockDim.x) {
		float acc = 0.0f;
		for (int k = 0; k < taps; k++) {
			int i = idx[r * taps + k];
			float v = i >= 0 && i < table_rows ? __bfloat162float(table[(size_t)i * cols + c])
							   : __int_as_float(0x7fc00000);
			acc = k ? acc + v * w[r * taps + k] : v * w[r * taps];
		}
		out[(size_t)r * cols + c] = __float2bfloat16(acc);
	}
}

qw_status qw_cuda_interp_rows(uint16_t *out, const uint16_t *table, const int32_t *idx,
			      const float *w, int rows, int taps, int cols, int table_rows,
			      cudaStream_t stream, qw_err *err)
{
	if (rows < 1)
		return QW_OK;
	interp_rows_kernel<<<rows, 128, 0, stream>>>((bf16 *)out, (const bf16 *)table, idx, w, taps,
						      cols, table_rows);
	LAUNCH_CHECK(err, "interp_rows");
	return QW_OK;
}
