/* transport_nccl.cu - qwen-transport-check's NCCL transport (built by nvcc for the tool
 * alone): one process per GPU, hidden-state-like tensors generated on the sending GPU, sent with ncclSend / ncclRecv on their own stream,
 * checksummed on the GPUs (the two-level XXH64 of ipc/checksum.h, chunk hashes in parallel,
 * finished on the host) and compared with the pattern the receiver regenerates on its GPU.
 * Per size: a check pass (every transfer verified), then a timed pass of the same number of
 * transfers back to back, timed with events on the sender's stream.  See
 * cli/transport_check.h. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/transport_check.h"
#include "ipc/checksum.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"

// ---------------------------------------------------------------------------------------
// device: the pattern (the chunk hashes are kernels/cuda/checksum.cu's)

__device__ static uint64_t pattern_word(uint64_t seed, int stage, int iter, uint64_t i)
{
	uint64_t z = seed ^ ((uint64_t)stage << 56) ^ ((uint64_t)iter << 40) ^
		     (i * 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* one thread per 8-byte word; then the dtype's Inf/NaN codes are cleared as on the host */
__global__ static void fill_kernel(uint8_t *buf, uint64_t bytes, int dtype, uint64_t seed,
				   int stage, int iter)
{
	uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x;
	if (i * 8 >= bytes)
		return;
	uint64_t w = pattern_word(seed, stage, iter, i);
	uint8_t b[8];
	memcpy(b, &w, 8);
	uint64_t k = bytes - i * 8 < 8 ? bytes - i * 8 : 8;
	for (uint64_t j = 0; j < k; j++) {
		uint64_t at = i * 8 + j;
		if (dtype == TC_FP8 && (b[j] & 0x7f) == 0x7f)
			b[j] ^= 1;
		if ((dtype == TC_BF16 || dtype == TC_FP16) && (at & 1)) {
			/* the high byte of a 16-bit value holds the sign and exponent's top */
			uint16_t h = (uint16_t)(b[j - 1] | (b[j] << 8));
			if (dtype == TC_BF16 ? ((h >> 7) & 0xff) == 0xff : ((h >> 10) & 0x1f) == 0x1f)
				h &= (uint16_t)~(1u << 14);
			b[j] = (uint8_t)(h >> 8);
		}
		if (dtype == TC_FP32 && (at & 3) == 3) {
			uint32_t u = (uint32_t)b[j - 3] | ((uint32_t)b[j - 2] << 8) |
				     ((uint32_t)b[j - 1] << 16) | ((uint32_t)b[j] << 24);
			if (((u >> 23) & 0xff) == 0xff)
				u &= ~(1u << 30);
			b[j] = (uint8_t)(u >> 24);
		}
		buf[at] = b[j];
	}
}

__global__ static void count_diff_kernel(const uint8_t *a, const uint8_t *b, uint64_t bytes,
					 unsigned long long *count)
{
	uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x;
	if (i < bytes && a[i] != b[i])
		atomicAdd(count, 1ull);
}

// ---------------------------------------------------------------------------------------
// host side of one stage

typedef struct gpu_stage {
	int rank, stages, dev;
	cudaStream_t stream;
	ncclComm_t comm;
	uint8_t *d_buf, *d_want;
	uint64_t *d_hash, *h_hash, *d_head;
	unsigned long long *d_count;
} gpu_stage;

static qw_status checksum_dev(gpu_stage *g, const uint8_t *d, uint64_t bytes, uint64_t *out,
			      qw_err *err)
{
	uint64_t n = (bytes + QW_CHECKSUM_CHUNK - 1) / QW_CHECKSUM_CHUNK;
	qw_status st = qw_cuda_chunk_hashes(g->d_hash, d, bytes, g->stream, err);
	if (st != QW_OK)
		return st;
	QW_CUDA_TRY(err, cudaMemcpyAsync(g->h_hash, g->d_hash, n * 8, cudaMemcpyDeviceToHost,
					 g->stream));
	QW_CUDA_TRY(err, cudaStreamSynchronize(g->stream));
	*out = qw_checksum_finish(g->h_hash, n, bytes);
	return QW_OK;
}

static qw_status fill_dev(gpu_stage *g, uint8_t *d, uint64_t bytes, const tc_opts *o, int stage,
			  int iter, qw_err *err)
{
	uint64_t words = (bytes + 7) / 8;
	fill_kernel<<<(unsigned)((words + 255) / 256), 256, 0, g->stream>>>(d, bytes, (int)o->dtype,
									    o->seed, stage, iter);
	QW_CUDA_TRY(err, cudaGetLastError());
	return QW_OK;
}

/* stage s: receive every size from s-1 and verify, then send every size to s+1 */
static qw_status run_stage(gpu_stage *g, const tc_opts *o, tc_report *rep, qw_err *err)
{
	for (int s = 0; g->rank > 0 && s < o->n_sizes; s++) {
		uint64_t n = o->sizes[s];
		tc_result *r = &rep->r[g->rank - 1][s];
		for (int it = 0; it < o->iters; it++) {
			uint64_t head[2], got, want;
			QW_NCCL_TRY(err, ncclGroupStart());
			QW_NCCL_TRY(err, ncclRecv(g->d_head, 2, ncclUint64, g->rank - 1, g->comm, g->stream));
			QW_NCCL_TRY(err, ncclRecv(g->d_buf, n, ncclUint8, g->rank - 1, g->comm, g->stream));
			QW_NCCL_TRY(err, ncclGroupEnd());
			QW_CUDA_TRY(err, cudaMemcpyAsync(head, g->d_head, 16, cudaMemcpyDeviceToHost, g->stream));
			qw_status st = checksum_dev(g, g->d_buf, n, &got, err);
			if (st == QW_OK)
				st = fill_dev(g, g->d_want, n, o, g->rank - 1, it, err);
			if (st == QW_OK)
				st = checksum_dev(g, g->d_want, n, &want, err);
			if (st != QW_OK)
				return st;
			QW_CUDA_TRY(err, cudaMemsetAsync(g->d_count, 0, 8, g->stream));
			count_diff_kernel<<<(unsigned)((n + 255) / 256), 256, 0, g->stream>>>(
				g->d_buf, g->d_want, n, g->d_count);
			unsigned long long diff;
			QW_CUDA_TRY(err, cudaMemcpyAsync(&diff, g->d_count, 8, cudaMemcpyDeviceToHost, g->stream));
			QW_CUDA_TRY(err, cudaStreamSynchronize(g->stream));
			if (got == head[0] && want == head[0] && diff == 0 && head[1] == n) {
				r->verified++;
			} else {
				r->wrong++;
				fprintf(stderr, "# MISMATCH hop %d -> %d, %llu bytes, transfer %d: checksum "
					"%016llx, sender's %016llx, %llu bytes differ from the pattern\n",
					g->rank - 1, g->rank, (unsigned long long)n, it,
					(unsigned long long)got, (unsigned long long)head[0], diff);
			}
			if (s == 0 && it == 0) {   /* the GPU's checksum is the host's */
				uint8_t *h = (uint8_t *)malloc(n);
				QW_CUDA_TRY(err, cudaMemcpy(h, g->d_want, n, cudaMemcpyDeviceToHost));
				uint64_t host = qw_checksum(h, n);
				free(h);
				if (host != want)
					return qw_fail(err, QW_E_DEVICE, "the GPU checksum %016llx disagrees "
						       "with the host's %016llx", (unsigned long long)want,
						       (unsigned long long)host);
			}
		}
		/* the timed phase: the same transfers back to back, nothing checked in between */
		QW_NCCL_TRY(err, ncclGroupStart());
		for (int it = 0; it < o->iters; it++)
			QW_NCCL_TRY(err, ncclRecv(g->d_buf, n, ncclUint8, g->rank - 1, g->comm, g->stream));
		QW_NCCL_TRY(err, ncclGroupEnd());
		QW_CUDA_TRY(err, cudaStreamSynchronize(g->stream));
	}
	for (int s = 0; g->rank < g->stages - 1 && s < o->n_sizes; s++) {
		uint64_t n = o->sizes[s];
		float total = 0;
		cudaEvent_t a, b;
		QW_CUDA_TRY(err, cudaEventCreate(&a));
		QW_CUDA_TRY(err, cudaEventCreate(&b));
		for (int it = 0; it < o->iters; it++) {
			uint64_t head[2];
			qw_status st = fill_dev(g, g->d_buf, n, o, g->rank, it, err);
			if (st == QW_OK)
				st = checksum_dev(g, g->d_buf, n, &head[0], err);
			if (st != QW_OK)
				return st;
			head[1] = n;
			if (o->corrupt && g->rank == 0 && s == 0 && it == 0) {
				uint8_t byte;   /* one bit, after the checksum: in flight */
				QW_CUDA_TRY(err, cudaMemcpy(&byte, g->d_buf + n / 3, 1, cudaMemcpyDeviceToHost));
				byte ^= 0x08;
				QW_CUDA_TRY(err, cudaMemcpy(g->d_buf + n / 3, &byte, 1, cudaMemcpyHostToDevice));
			}
			QW_CUDA_TRY(err, cudaMemcpyAsync(g->d_head, head, 16, cudaMemcpyHostToDevice, g->stream));
			QW_NCCL_TRY(err, ncclGroupStart());
			QW_NCCL_TRY(err, ncclSend(g->d_head, 2, ncclUint64, g->rank + 1, g->comm, g->stream));
			QW_NCCL_TRY(err, ncclSend(g->d_buf, n, ncclUint8, g->rank + 1, g->comm, g->stream));
			QW_NCCL_TRY(err, ncclGroupEnd());
			QW_CUDA_TRY(err, cudaStreamSynchronize(g->stream));
		}
		/* timed: iters transfers back to back (the receiver checks nothing meanwhile),
		 * like nccl-tests' timed loop after its check pass */
		QW_CUDA_TRY(err, cudaEventRecord(a, g->stream));
		QW_NCCL_TRY(err, ncclGroupStart());
		for (int it = 0; it < o->iters; it++)
			QW_NCCL_TRY(err, ncclSend(g->d_buf, n, ncclUint8, g->rank + 1, g->comm, g->stream));
		QW_NCCL_TRY(err, ncclGroupEnd());
		QW_CUDA_TRY(err, cudaEventRecord(b, g->stream));
		QW_CUDA_TRY(err, cudaEventSynchronize(b));
		QW_CUDA_TRY(err, cudaEventElapsedTime(&total, a, b));
		rep->r[g->rank][s].seconds = total / 1e3;
		cudaEventDestroy(a);
		cudaEventDestroy(b);
	}
	return QW_OK;
}

typedef struct shared_id {
	int ready;            /* set with __atomic builtins: the processes share the page */
	ncclUniqueId id;
} shared_id;

static qw_status stage_main(int rank, const tc_opts *o, shared_id *sid, tc_report *rep, qw_err *err)
{
	gpu_stage g;
	memset(&g, 0, sizeof g);
	g.rank = rank;
	g.stages = o->stages;
	g.dev = o->gpus[rank];
	uint64_t max = o->sizes[o->n_sizes - 1], chunks = (max + QW_CHECKSUM_CHUNK - 1) / QW_CHECKSUM_CHUNK;
	QW_CUDA_TRY(err, cudaSetDevice(g.dev));
	QW_CUDA_TRY(err, cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
	if (rank == 0) {
		QW_NCCL_TRY(err, ncclGetUniqueId(&sid->id));
		__atomic_store_n(&sid->ready, 1, __ATOMIC_RELEASE);
	}
	while (!__atomic_load_n(&sid->ready, __ATOMIC_ACQUIRE))
		usleep(100);
	QW_NCCL_TRY(err, ncclCommInitRank(&g.comm, o->stages, sid->id, rank));
	QW_CUDA_TRY(err, cudaMalloc(&g.d_buf, max));
	QW_CUDA_TRY(err, cudaMalloc(&g.d_want, max));
	QW_CUDA_TRY(err, cudaMalloc(&g.d_hash, chunks * 8));
	QW_CUDA_TRY(err, cudaMallocHost(&g.h_hash, chunks * 8));
	QW_CUDA_TRY(err, cudaMalloc(&g.d_head, 16));
	QW_CUDA_TRY(err, cudaMalloc(&g.d_count, 8));
	/* the first send/recv of a pair connects (can take most of a second): not timed */
	QW_NCCL_TRY(err, ncclGroupStart());
	if (rank > 0)
		QW_NCCL_TRY(err, ncclRecv(g.d_head, 2, ncclUint64, rank - 1, g.comm, g.stream));
	if (rank < o->stages - 1)   /* as many elements as the receiver posts */
		QW_NCCL_TRY(err, ncclSend(g.d_head, 2, ncclUint64, rank + 1, g.comm, g.stream));
	QW_NCCL_TRY(err, ncclGroupEnd());
	QW_CUDA_TRY(err, cudaStreamSynchronize(g.stream));
	if (rank < o->stages - 1) {
		int peer = 0;
		QW_CUDA_TRY(err, cudaDeviceCanAccessPeer(&peer, g.dev, o->gpus[rank + 1]));
		snprintf(rep->link[rank], sizeof rep->link[rank], "NCCL, GPU %d -> GPU %d (%s)", g.dev,
			 o->gpus[rank + 1], peer ? "peer access: NVLink or PCIe P2P" : "no peer access");
	}
	qw_status st = run_stage(&g, o, rep, err);
	ncclCommDestroy(g.comm);
	return st;
}

extern "C" int tc_run_nccl(const tc_opts *o, tc_report *rep, qw_err *err)
{
	shared_id *sid = (shared_id *)mmap(NULL, sizeof *sid, PROT_READ | PROT_WRITE,
					   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sid == MAP_FAILED) {
		qw_fail(err, QW_E_IO, "cannot map shared memory");
		return -1;
	}
	sid->ready = 0;
	pid_t pids[TC_MAX_HOPS + 1];
	int started = 0;
	for (; started < o->stages; started++) {   /* fork before any CUDA call in this process */
		int r = started;
		pids[r] = fork();
		if (pids[r] < 0)
			break;
		if (pids[r] == 0) {
			qw_err e = {};
			qw_status st = stage_main(r, o, sid, rep, &e);
			if (st != QW_OK)
				fprintf(stderr, "qwen-transport-check: stage %d: %s\n", r, e.msg);
			_exit(st == QW_OK ? 0 : 1);
		}
	}
	int failed = started < o->stages;
	if (failed)
		qw_fail(err, QW_E_IO, "fork failed for stage %d", started);
	for (int r = 0; r < started; r++) {
		int status;
		if (started < o->stages)
			kill(pids[r], SIGKILL);
		waitpid(pids[r], &status, 0);
		failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	}
	munmap(sid, sizeof *sid);
	return failed;
}
