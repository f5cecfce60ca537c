/* nccl_pipe.cu - a pipeline stage's NCCL data plane.  See nccl_pipe.h. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ipc/checksum.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/nccl_pipe.h"
#include "loader/clock.h"
#include "loader/dtype.h"

#define RECORD_MAGIC 0x3144524f434552ull   /* "RECORD1" */
#define HEADER_WORDS 4
#define SPIN_NS 2000000ll                  /* a wait spins this long, then naps */
#define NAP_NS 20000l
#define POLL_NS 1000000ll                  /* how often a wait asks NCCL and the caller */

typedef struct slot {
	uint8_t *d;                  /* device buffer: payload, then (checking) hashes, header */
	cudaEvent_t ready;           /* send: the record is in the slot; recv: it has arrived */
	cudaEvent_t done;            /* send: it has left; recv: it was copied out */
	bool used;                   /* done was recorded at least once */
	qw_nccl_record rec;          /* recv: what was posted */
} slot;

struct qw_nccl_pipe {
	qw_nccl_pipe_config cfg;
	int device;
	size_t elem;                 /* bytes of an activation value */
	cudaStream_t compute;        /* the backend's */
	cudaStream_t stream;         /* the transfers' */
	ncclComm_t comm;
	bool broken;                 /* a call failed: leave by aborting */
	slot send[2], recv[2];
	uint64_t n_sent, n_posted, n_taken;
	uint64_t *d_hashes;          /* the receiver's hashes of what arrived */
	uint64_t *h_check;           /* pinned: hashes computed, hashes sent, the header */
	size_t max_chunks;
	cudaEvent_t mark;            /* waits on a stream's progress */
};

// ---------------------------------------------------------------------------------------
// kernels of the checked path

__global__ static void header_kernel(uint64_t *dst, uint64_t a, uint64_t b, uint64_t c,
				     uint64_t d)
{
	dst[0] = a;
	dst[1] = b;
	dst[2] = c;
	dst[3] = d;
}

__global__ static void flip_kernel(uint8_t *p, uint64_t at, uint8_t mask)
{
	p[at] ^= mask;
}

// ---------------------------------------------------------------------------------------
// sizes

static size_t pad8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

static size_t payload_bytes(const qw_nccl_pipe *p, const qw_nccl_record *r)
{
	return ((size_t)r->rows + (size_t)r->n_extra * (size_t)r->extra_rows) *
	       (size_t)p->cfg.cols * p->elem;
}

static size_t chunks_of(size_t bytes)
{
	return (bytes + QW_CHECKSUM_CHUNK - 1) / QW_CHECKSUM_CHUNK;
}

/* What crosses for r: the payload, and when checking its hashes and the header. */
static size_t wire_bytes(const qw_nccl_pipe *p, const qw_nccl_record *r)
{
	size_t n = payload_bytes(p, r);
	return p->cfg.check ? pad8(n) + 8 * (chunks_of(n) + HEADER_WORDS) : n;
}

static void header_of(const qw_nccl_pipe *p, const qw_nccl_record *r, uint64_t h[HEADER_WORDS])
{
	h[0] = RECORD_MAGIC;
	h[1] = r->step;
	h[2] = (uint64_t)(uint32_t)r->rows | (uint64_t)(uint32_t)r->extra_rows << 32;
	h[3] = (uint64_t)(uint32_t)r->n_extra | (uint64_t)(uint32_t)p->cfg.cols << 32;
}

// ---------------------------------------------------------------------------------------
// waiting without hanging

static qw_status broke(qw_nccl_pipe *p, qw_status st)
{
	p->broken = true;
	return st;
}

/* NCCL's asynchronous state: OK, or QW_E_TIMEOUT while an operation is still being set up
 * (ncclInProgress), or the error. */
static qw_status async_state(qw_nccl_pipe *p, qw_err *err)
{
	ncclResult_t r = ncclSuccess;
	ncclResult_t q = ncclCommGetAsyncError(p->comm, &r);
	if (q != ncclSuccess)
		r = q;
	if (r == ncclSuccess)
		return QW_OK;
	if (r == ncclInProgress)
		return QW_E_TIMEOUT;
	qw_fail(err, QW_E_DEVICE, "NCCL (stage %d of %d): %s%s", p->cfg.rank, p->cfg.n_ranks,
		ncclGetErrorString(r), r == ncclRemoteError || r == ncclSystemError
		? " (a neighbouring stage died or its link broke)" : "");
	return broke(p, QW_E_DEVICE);
}

static qw_status ask_caller(qw_nccl_pipe *p, const char *what, qw_err *err)
{
	if (p->cfg.keep_waiting && !p->cfg.keep_waiting(p->cfg.wait_ctx)) {
		qw_fail(err, QW_E_ABORTED, "stage %d gave up waiting for %s", p->cfg.rank, what);
		return broke(p, QW_E_ABORTED);
	}
	return QW_OK;
}

/* Spins for the first SPIN_NS of a wait, then naps. */
static void pause_ns(long long waited)
{
	if (waited < SPIN_NS) {
		sched_yield();
	} else {
		struct timespec nap = {0, NAP_NS};
		nanosleep(&nap, NULL);
	}
}

/* Until NCCL has finished setting up what was enqueued (non-blocking communicators); asks
 * the caller between polls.  timeout_s <= 0: no limit. */
static qw_status settle(qw_nccl_pipe *p, double timeout_s, const char *what, qw_err *err)
{
	long long t0 = (long long)qw_now_ns(), last = t0;
	for (;;) {
		qw_status st = async_state(p, err);
		if (st != QW_E_TIMEOUT)
			return st;
		long long t = (long long)qw_now_ns();
		if (timeout_s > 0 && (double)(t - t0) > timeout_s * 1e9) {
			qw_fail(err, QW_E_TIMEOUT, "stage %d: %s took longer than %.0f s (a stage "
				"that never joined?)", p->cfg.rank, what, timeout_s);
			return broke(p, QW_E_TIMEOUT);
		}
		if (t - last > POLL_NS) {
			last = t;
			if ((st = ask_caller(p, what, err)) != QW_OK)
				return st;
		}
		pause_ns(t - t0);
	}
}

/* Until ev has happened on the GPU; asks NCCL and the caller between polls.  timeout_s <= 0:
 * no limit. */
static qw_status wait_event(qw_nccl_pipe *p, cudaEvent_t ev, double timeout_s, const char *what,
			    qw_err *err)
{
	long long t0 = (long long)qw_now_ns(), last = t0;
	for (;;) {
		cudaError_t q = cudaEventQuery(ev);
		if (q == cudaSuccess)
			return QW_OK;
		if (q != cudaErrorNotReady) {
			qw_fail(err, QW_E_DEVICE, "stage %d waiting for %s: %s", p->cfg.rank, what,
				cudaGetErrorString(q));
			return broke(p, QW_E_DEVICE);
		}
		long long t = (long long)qw_now_ns();
		if (t - last > POLL_NS) {
			last = t;
			qw_status st = async_state(p, err);
			if (st == QW_E_TIMEOUT)
				st = QW_OK;
			if (st == QW_OK)
				st = ask_caller(p, what, err);
			if (st != QW_OK)
				return st;
			if (timeout_s > 0 && (double)(t - t0) > timeout_s * 1e9) {
				qw_fail(err, QW_E_TIMEOUT, "stage %d: %s took longer than %.0f s",
					p->cfg.rank, what, timeout_s);
				return broke(p, QW_E_TIMEOUT);
			}
		}
		pause_ns(t - t0);
	}
}

/* A failed call marks the pipe broken, so it is left by aborting. */
#define PIPE_TRY(p, err, call)                                  \
	do {                                                    \
		qw_status pt_st_ = (call);                       \
		if (pt_st_ != QW_OK)                            \
			return broke((p), pt_st_);       \
	} while (0)

static qw_status cuda_try(cudaError_t e, const char *what, qw_err *err)
{
	if (e == cudaSuccess)
		return QW_OK;
	return qw_fail(err, QW_E_DEVICE, "%s: %s", what, cudaGetErrorString(e));
}

/* ncclInProgress is how a non-blocking communicator says "enqueued, still being set up". */
static qw_status nccl_try(ncclResult_t r, const char *what, qw_err *err)
{
	if (r == ncclSuccess || r == ncclInProgress)
		return QW_OK;
	return qw_fail(err, QW_E_DEVICE, "%s: NCCL: %s", what, ncclGetErrorString(r));
}

// ---------------------------------------------------------------------------------------
// life

extern "C" qw_status qw_nccl_unique_id(uint8_t out[QW_NCCL_ID_BYTES], qw_err *err)
{
	static_assert(sizeof(ncclUniqueId) == QW_NCCL_ID_BYTES, "an ncclUniqueId is 128 bytes");
	ncclUniqueId id;
	QW_NCCL_TRY(err, ncclGetUniqueId(&id));
	memcpy(out, &id, sizeof id);
	return QW_OK;
}

static qw_status alloc_slot(slot *s, size_t bytes, qw_err *err)
{
	QW_CUDA_TRY(err, cudaMalloc(&s->d, bytes ? bytes : 8));
	QW_CUDA_TRY(err, cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming));
	QW_CUDA_TRY(err, cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
	return QW_OK;
}

static void free_slot(slot *s)
{
	if (s->d)
		cudaFree(s->d);
	if (s->ready)
		cudaEventDestroy(s->ready);
	if (s->done)
		cudaEventDestroy(s->done);
}

/* Joins the communicator of unique_id: this rank of n_ranks, non-blocking, polled to the end
 * (a rank that never comes fails it after timeout_s). */
static qw_status join(qw_nccl_pipe *p, const uint8_t *unique_id, qw_err *err)
{
	const qw_nccl_pipe_config *c = &p->cfg;
	ncclUniqueId id;
	memcpy(&id, unique_id, sizeof id);
	ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
	config.blocking = 0;
	ncclComm_t comm = NULL;
	QW_TRY(nccl_try(ncclCommInitRankConfig(&comm, c->n_ranks, id, c->rank, &config),
			"joining the pipeline's communicator", err));
	p->comm = comm;
	return settle(p, c->timeout_s, "joining the pipeline's communicator", err);
}

static qw_status create(qw_nccl_pipe *p, qw_err *err)
{
	const qw_nccl_pipe_config *c = &p->cfg;
	QW_CUDA_TRY(err, cudaGetDevice(&p->device));
	QW_CUDA_TRY(err, cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking));
	QW_CUDA_TRY(err, cudaEventCreateWithFlags(&p->mark, cudaEventDisableTiming));
	qw_nccl_record in = {0, c->max_rows, c->max_extra_in, c->max_rows};
	qw_nccl_record out = {0, c->max_rows, c->max_extra_out, c->max_rows};
	qw_status st = QW_OK;
	for (int i = 0; i < 2 && st == QW_OK; i++) {
		if (c->rank > 0)
			st = alloc_slot(&p->recv[i], wire_bytes(p, &in), err);
		if (st == QW_OK && c->rank < c->n_ranks - 1)
			st = alloc_slot(&p->send[i], wire_bytes(p, &out), err);
	}
	if (st != QW_OK)
		return st;
	if (c->check && c->rank > 0) {
		p->max_chunks = chunks_of(payload_bytes(p, &in));
		QW_CUDA_TRY(err, cudaMalloc(&p->d_hashes, 8 * (p->max_chunks + 1)));
		QW_CUDA_TRY(err, cudaMallocHost(&p->h_check, 8 * (2 * p->max_chunks + HEADER_WORDS)));
	}
	return join(p, c->unique_id, err);
}
extern "C" qw_status qw_nccl_pipe_create(qw_backend *be, const qw_nccl_pipe_config *cfg,
					 qw_nccl_pipe **out, qw_err *err)
{
	*out = NULL;
	if (cfg->n_ranks < 2 || cfg->rank < 0 || cfg->rank >= cfg->n_ranks || cfg->cols < 1 ||
	    cfg->max_rows < 1 || cfg->max_extra_in < 0 || cfg->max_extra_out < 0)
		return qw_fail(err, QW_E_ARG, "an NCCL pipe for rank %d of %d, rows of %d, %d rows, "
			       "%d/%d feature blocks", cfg->rank, cfg->n_ranks, cfg->cols,
			       cfg->max_rows, cfg->max_extra_in, cfg->max_extra_out);
	qw_nccl_pipe *p = (qw_nccl_pipe *)calloc(1, sizeof *p);
	if (!p)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	p->cfg = *cfg;
	p->compute = (cudaStream_t)qw_cuda_backend_stream(be);
	p->elem = qw_dtype_size(be->act_dtype);
	qw_status st = create(p, err);
	p->cfg.unique_id = NULL;   /* the caller's memory: not kept */
	if (st != QW_OK) {
		qw_nccl_pipe_destroy(p, false);
		return qw_err_context(err, "the NCCL pipe of stage %d", cfg->rank);
	}
	*out = p;
	return QW_OK;
}

extern "C" void qw_nccl_pipe_destroy(qw_nccl_pipe *p, bool clean)
{
	if (!p)
		return;
	if (p->comm) {
		qw_err err = {};
		/* a clean leave needs every transfer done; a dead peer would hang it */
		clean = clean && !p->broken && cudaEventRecord(p->mark, p->stream) == cudaSuccess &&
			     wait_event(p, p->mark, p->cfg.timeout_s, "the last transfers",
					&err) == QW_OK &&
			     nccl_try(ncclCommFinalize(p->comm), "leaving", &err) == QW_OK &&
			     settle(p, p->cfg.timeout_s, "leaving the communicator", &err) == QW_OK;
		if (clean)
			ncclCommDestroy(p->comm);
		else
			ncclCommAbort(p->comm);
	}
	for (int i = 0; i < 2; i++) {
		free_slot(&p->send[i]);
		free_slot(&p->recv[i]);
	}
	if (p->d_hashes)
		cudaFree(p->d_hashes);
	if (p->h_check)
		cudaFreeHost(p->h_check);
	if (p->mark)
		cudaEventDestroy(p->mark);
	if (p->stream)
		cudaStreamDestroy(p->stream);
	free(p);
}

/* Until everything enqueued on stream so far is done, without asking NCCL (the communicator
 * may be gone), for at most the pipe's timeout. */
static qw_status drain(qw_nccl_pipe *p, cudaStream_t stream, const char *what, qw_err *err)
{
	QW_CUDA_TRY(err, cudaEventRecord(p->mark, stream));
	long long t0 = (long long)qw_now_ns();
	for (;;) {
		cudaError_t q = cudaEventQuery(p->mark);
		if (q == cudaSuccess)
			return QW_OK;
		if (q != cudaErrorNotReady)
			return qw_fail(err, QW_E_DEVICE, "stage %d waiting for %s: %s", p->cfg.rank,
				       what, cudaGetErrorString(q));
		long long t = (long long)qw_now_ns();
		if (p->cfg.timeout_s > 0 && (double)(t - t0) > p->cfg.timeout_s * 1e9)
			return qw_fail(err, QW_E_TIMEOUT, "stage %d: %s did not end within %.0f s of "
				       "leaving the communicator", p->cfg.rank, what, p->cfg.timeout_s);
		pause_ns(t - t0);
	}
}

extern "C" qw_status qw_nccl_pipe_leave(qw_nccl_pipe *p, qw_err *err)
{
	if (p->comm)   /* its kernels still waiting on a peer end now */
		ncclCommAbort(p->comm);
	p->comm = NULL;
	QW_TRY(drain(p, p->stream, "the aborted transfers", err));
	QW_TRY(drain(p, p->compute, "the stage's work", err));
	p->n_sent = p->n_posted = p->n_taken = 0;
	for (int i = 0; i < 2; i++) {
		p->send[i].used = p->recv[i].used = false;
		p->recv[i].rec = (qw_nccl_record){0, 0, 0, 0};
	}
	p->broken = false;
	return QW_OK;
}

extern "C" qw_status qw_nccl_pipe_join(qw_nccl_pipe *p, const uint8_t *unique_id, qw_err *err)
{
	if (p->comm)
		return qw_fail(err, QW_E_ARG, "stage %d joins a communicator without leaving its own",
			       p->cfg.rank);
	qw_status st = join(p, unique_id, err);
	if (st != QW_OK) {   /* half joined: abort it, so a later join starts clean */
		if (p->comm)
			ncclCommAbort(p->comm);
		p->comm = NULL;
		p->broken = false;
		return qw_err_context(err, "the NCCL pipe of stage %d, joining again", p->cfg.rank);
	}
	return QW_OK;
}

extern "C" qw_status qw_nccl_pipe_warm(qw_nccl_pipe *p, qw_err *err)
{
	const int rank = p->cfg.rank, last = p->cfg.n_ranks - 1;
	uint64_t word = RECORD_MAGIC ^ (uint64_t)rank, got = 0;
	if (rank < last)
		PIPE_TRY(p, err, cuda_try(cudaMemcpy(p->send[0].d, &word, 8, cudaMemcpyHostToDevice),
					  "warm-up", err));
	PIPE_TRY(p, err, nccl_try(ncclGroupStart(), "warm-up", err));
	if (rank > 0)
		PIPE_TRY(p, err, nccl_try(ncclRecv(p->recv[0].d, 8, ncclUint8, rank - 1, p->comm,
						   p->stream), "warm-up receive", err));
	if (rank < last)
		PIPE_TRY(p, err, nccl_try(ncclSend(p->send[0].d, 8, ncclUint8, rank + 1, p->comm,
						   p->stream), "warm-up send", err));
	PIPE_TRY(p, err, nccl_try(ncclGroupEnd(), "warm-up", err));
	qw_status st = settle(p, p->cfg.timeout_s, "connecting to the neighbouring stages", err);
	if (st == QW_OK)
		st = cuda_try(cudaEventRecord(p->mark, p->stream), "warm-up", err);
	if (st == QW_OK)
		st = wait_event(p, p->mark, 0, "the first transfer from and to the neighbouring "
				"stages", err);
	if (st == QW_OK && rank > 0)
		st = cuda_try(cudaMemcpy(&got, p->recv[0].d, 8, cudaMemcpyDeviceToHost), "warm-up",
			      err);
	if (st != QW_OK)
		return broke(p, st);
	if (rank > 0 && got != (RECORD_MAGIC ^ (uint64_t)(rank - 1))) {
		qw_fail(err, QW_E_IO, "stage %d: the warm-up word from stage %d is %016llx, not "
			"%016llx", rank, rank - 1, (unsigned long long)got,
			(unsigned long long)(RECORD_MAGIC ^ (uint64_t)(rank - 1)));
		return broke(p, QW_E_IO);
	}
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// records

static bool record_fits(const qw_nccl_pipe *p, const qw_nccl_record *r, int max_extra)
{
	return r->rows >= 0 && r->rows <= p->cfg.max_rows && r->n_extra >= 0 &&
	       r->n_extra <= max_extra && (r->n_extra == 0 ||
	       (r->extra_rows >= 0 && r->extra_rows <= p->cfg.max_rows));
}

/* Enqueues the receive into the next receive slot (inside a group when the caller is in
 * one); the slot's arrival is recorded by the caller after the group ends. */
static qw_status enqueue_recv(qw_nccl_pipe *p, const qw_nccl_record *r, slot **used, qw_err *err)
{
	if (p->cfg.rank == 0)
		return qw_fail(err, QW_E_ARG, "stage 0 receives nothing");
	if (!record_fits(p, r, p->cfg.max_extra_in))
		return qw_fail(err, QW_E_ARG, "step %llu: a record of %d rows and %d feature blocks "
			       "of %d rows does not fit the pipe (%d rows, %d blocks)",
			       (unsigned long long)r->step, r->rows, r->n_extra, r->extra_rows,
			       p->cfg.max_rows, p->cfg.max_extra_in);
	if (p->n_posted - p->n_taken >= 2)
		return qw_fail(err, QW_E_ARG, "step %llu: two receives are posted already",
			       (unsigned long long)r->step);
	slot *s = &p->recv[p->n_posted % 2];
	/* the slot's last record must have been copied out before it is overwritten */
	if (s->used)
		QW_CUDA_TRY(err, cudaStreamWaitEvent(p->stream, s->done, 0));
	s->rec = *r;
	QW_TRY(nccl_try(ncclRecv(s->d, wire_bytes(p, r), ncclUint8, p->cfg.rank - 1, p->comm,
				 p->stream), "receive", err));
	p->n_posted++;
	*used = s;
	return QW_OK;
}

extern "C" qw_status qw_nccl_pipe_post_recv(qw_nccl_pipe *p, const qw_nccl_record *r, qw_err *err)
{
	slot *s = NULL;
	PIPE_TRY(p, err, nccl_try(ncclGroupStart(), "receive", err));
	qw_status st = enqueue_recv(p, r, &s, err);
	qw_status end = nccl_try(ncclGroupEnd(), "receive", err);
	if (st != QW_OK || end != QW_OK)
		return broke(p, st != QW_OK ? st : end);
	PIPE_TRY(p, err, settle(p, 0, "posting a receive", err));
	PIPE_TRY(p, err, cuda_try(cudaEventRecord(s->ready, p->stream), "receive", err));
	return QW_OK;
}

/* With checking: the record's hashes and header against this GPU's hashes of it. */
static qw_status verify(qw_nccl_pipe *p, const slot *s, const qw_nccl_record *r, qw_err *err)
{
	size_t n = payload_bytes(p, r), k = chunks_of(n);
	uint64_t *got = p->h_check, *sent = got + k, *hdr = sent + k;
	QW_TRY(qw_cuda_chunk_hashes(p->d_hashes, s->d, n, p->compute, err));
	QW_CUDA_TRY(err, cudaMemcpyAsync(got, p->d_hashes, 8 * k, cudaMemcpyDeviceToHost,
					 p->compute));
	QW_CUDA_TRY(err, cudaMemcpyAsync(sent, s->d + pad8(n), 8 * (k + HEADER_WORDS),
					 cudaMemcpyDeviceToHost, p->compute));
	QW_CUDA_TRY(err, cudaEventRecord(p->mark, p->compute));
	QW_TRY(wait_event(p, p->mark, 0, "a record to check", err));
	uint64_t want[HEADER_WORDS];
	header_of(p, r, want);
	if (memcmp(hdr, want, sizeof want) != 0)
		return qw_fail(err, QW_E_IO, "hand-over from stage %d to %d at step %llu: the record "
			       "that arrived is of step %llu with %u rows and %u feature blocks of %u "
			       "rows (expected %d, %d of %d)", p->cfg.rank - 1, p->cfg.rank,
			       (unsigned long long)r->step, (unsigned long long)hdr[1],
			       (unsigned)hdr[2], (unsigned)hdr[3], (unsigned)(hdr[2] >> 32), r->rows,
			       r->n_extra, r->extra_rows);
	if (memcmp(got, sent, 8 * k) != 0)
		return qw_fail(err, QW_E_IO, "hand-over from stage %d to %d at step %llu: checksum "
			       "mismatch (sent %016llx, received %016llx over %zu bytes): activations "
			       "were corrupted in transit", p->cfg.rank - 1, p->cfg.rank,
			       (unsigned long long)r->step,
			       (unsigned long long)qw_checksum_finish(sent, k, n),
			       (unsigned long long)qw_checksum_finish(got, k, n), n);
	return QW_OK;
}

extern "C" qw_status qw_nccl_pipe_take(qw_nccl_pipe *p, const qw_nccl_record *r, qw_act *hidden,
				       qw_act *const *extra, qw_err *err)
{
	if (p->n_taken == p->n_posted)
		return qw_fail(err, QW_E_ARG, "step %llu: no receive was posted for it",
			       (unsigned long long)r->step);
	slot *s = &p->recv[p->n_taken % 2];
	if (s->rec.step != r->step || s->rec.rows != r->rows || s->rec.n_extra != r->n_extra ||
	    (r->n_extra && s->rec.extra_rows != r->extra_rows))
		return qw_fail(err, QW_E_ARG, "step %llu: the receive posted first was for step "
			       "%llu", (unsigned long long)r->step, (unsigned long long)s->rec.step);
	PIPE_TRY(p, err, cuda_try(cudaStreamWaitEvent(p->compute, s->ready, 0), "take", err));
	if (p->cfg.check)
		PIPE_TRY(p, err, verify(p, s, r, err));
	size_t row = (size_t)p->cfg.cols * p->elem, at = (size_t)r->rows * row;
	PIPE_TRY(p, err, cuda_try(cudaMemcpyAsync(hidden->data, s->d, at, cudaMemcpyDeviceToDevice,
						  p->compute), "take", err));
	hidden->rows = r->rows;
	for (int i = 0; i < r->n_extra; i++) {
		size_t n = (size_t)r->extra_rows * row;
		PIPE_TRY(p, err, cuda_try(cudaMemcpyAsync(extra[i]->data, s->d + at, n,
							  cudaMemcpyDeviceToDevice, p->compute),
					  "take", err));
		extra[i]->rows = r->extra_rows;
		at += n;
	}
	PIPE_TRY(p, err, cuda_try(cudaEventRecord(s->done, p->compute), "take", err));
	s->used = true;
	p->n_taken++;
	return QW_OK;
}

/* The record into the send slot, on the compute stream: payload, then (checking) its hashes
 * and header, and in tests a bit flipped after they were taken. */
static qw_status fill_slot(qw_nccl_pipe *p, slot *s, const qw_nccl_record *r,
			   const qw_act *hidden, const qw_act *const *extra, qw_err *err)
{
	size_t row = (size_t)p->cfg.cols * p->elem, at = (size_t)r->rows * row;
	if (s->used)   /* its last record must have left */
		QW_CUDA_TRY(err, cudaStreamWaitEvent(p->compute, s->done, 0));
	QW_CUDA_TRY(err, cudaMemcpyAsync(s->d, hidden->data, at, cudaMemcpyDeviceToDevice,
					 p->compute));
	for (int i = 0; i < r->n_extra; i++) {
		size_t n = (size_t)r->extra_rows * row;
		QW_CUDA_TRY(err, cudaMemcpyAsync(s->d + at, extra[i]->data, n,
						 cudaMemcpyDeviceToDevice, p->compute));
		at += n;
	}
	if (p->cfg.check) {
		uint64_t h[HEADER_WORDS];
		header_of(p, r, h);
		QW_TRY(qw_cuda_chunk_hashes((uint64_t *)(s->d + pad8(at)), s->d, at, p->compute, err));
		header_kernel<<<1, 1, 0, p->compute>>>(
			(uint64_t *)(s->d + pad8(at) + 8 * chunks_of(at)), h[0], h[1], h[2], h[3]);
		QW_CUDA_TRY(err, cudaGetLastError());
	}
	if (p->cfg.corrupt_every > 0 && (p->n_sent + 1) % (uint64_t)p->cfg.corrupt_every == 0 &&
	    at > 0) {
		flip_kernel<<<1, 1, 0, p->compute>>>(s->d, ((p->n_sent + 1) * 7919) % at, 0x10);
		QW_CUDA_TRY(err, cudaGetLastError());
	}
	QW_CUDA_TRY(err, cudaEventRecord(s->ready, p->compute));
	return QW_OK;
}

extern "C" qw_status qw_nccl_pipe_send(qw_nccl_pipe *p, const qw_nccl_record *r,
				       const qw_act *hidden, const qw_act *const *extra,
				       const qw_nccl_record *then, qw_err *err)
{
	if (p->cfg.rank == p->cfg.n_ranks - 1)
		return qw_fail(err, QW_E_ARG, "the last stage sends nothing");
	if (!record_fits(p, r, p->cfg.max_extra_out) || hidden->cols != p->cfg.cols)
		return qw_fail(err, QW_E_ARG, "step %llu: a record of %d rows of %d and %d feature "
			       "blocks does not fit the pipe (%d rows of %d, %d blocks)",
			       (unsigned long long)r->step, r->rows, hidden->cols, r->n_extra,
			       p->cfg.max_rows, p->cfg.cols, p->cfg.max_extra_out);
	slot *s = &p->send[p->n_sent % 2], *into = NULL;
	PIPE_TRY(p, err, fill_slot(p, s, r, hidden, extra, err));
	PIPE_TRY(p, err, cuda_try(cudaStreamWaitEvent(p->stream, s->ready, 0), "send", err));
	PIPE_TRY(p, err, nccl_try(ncclGroupStart(), "send", err));
	qw_status st = nccl_try(ncclSend(s->d, wire_bytes(p, r), ncclUint8, p->cfg.rank + 1,
					 p->comm, p->stream), "send", err);
	if (st == QW_OK && then)
		st = enqueue_recv(p, then, &into, err);
	qw_status end = nccl_try(ncclGroupEnd(), "send", err);
	if (st != QW_OK || end != QW_OK)
		return broke(p, st != QW_OK ? st : end);
	PIPE_TRY(p, err, settle(p, 0, "sending", err));
	PIPE_TRY(p, err, cuda_try(cudaEventRecord(s->done, p->stream), "send", err));
	if (into)
		PIPE_TRY(p, err, cuda_try(cudaEventRecord(into->ready, p->stream), "receive", err));
	s->used = true;
	p->n_sent++;
	return QW_OK;
}

extern "C" qw_status qw_nccl_pipe_wait_taken(qw_nccl_pipe *p, qw_err *err)
{
	if (p->n_taken == 0)
		return QW_OK;
	return wait_event(p, p->recv[(p->n_taken - 1) % 2].done, 0, "a hand-over to arrive", err);
}

extern "C" qw_status qw_nccl_pipe_wait_sent(qw_nccl_pipe *p, int in_flight, qw_err *err)
{
	/* the two slots' sends leave in order: the older one first */
	for (uint64_t k = p->n_sent > 2 ? p->n_sent - 2 : 0; k + (uint64_t)in_flight < p->n_sent;
	     k++)
		QW_TRY(wait_event(p, p->send[k % 2].done, 0, "a hand-over to leave", err));
	return QW_OK;
}

extern "C" qw_status qw_nccl_pipe_sync(qw_nccl_pipe *p, qw_err *err)
{
	PIPE_TRY(p, err, cuda_try(cudaEventRecord(p->mark, p->compute), "sync", err));
	return wait_event(p, p->mark, 0, "the step's hand-over and compute", err);
}

extern "C" qw_status qw_nccl_pipe_health(qw_nccl_pipe *p, qw_err *err)
{
	qw_status st = async_state(p, err);
	return st == QW_E_TIMEOUT ? QW_OK : st;
}
