/* nccl_pipe.h - a pipeline stage's data plane between GPUs: hidden states device to device.
 *
 * Owns: this stage's rank in one NCCL communicator over every stage of a pipeline
 * (non-blocking, so no call can hang the caller: every wait polls the communicator's
 * asynchronous error and the caller's keep_waiting, and a failure aborts it), a stream of
 * its own for the transfers, and the device buffers a record crosses in: two send slots and
 * two receive slots, each as large as the largest record, allocated at create (nothing is
 * allocated later).
 *
 * A record is one step's hidden states (rows x cols) followed by the deepstack feature blocks
 * later stages still add (n_extra blocks of extra_rows x cols), in the backend's activation
 * dtype.  The receiver knows the shape from the same step plan, so only the payload crosses;
 * when checking, the sender appends the chunk hashes of ipc/checksum.h computed on its GPU and
 * a header (step and shape), and the receiver compares them with its own GPU's hashes of
 * what arrived, failing loudly on any difference.
 *
 * Order, with the backend's stream doing the compute: send copies the record into a slot on
 * the backend's stream (so the stage may compute the next step into its own buffers at once)
 * and sends the slot on the pipe's stream once that copy is done; a receive is posted on the
 * pipe's stream, ahead of its step when the caller knows it (grouped with the send before it,
 * so neither waits for the other), and take makes the backend's stream wait for it before
 * copying the record out.  Nothing here blocks the host except the waits, which poll.
 *
 * A pipeline that loses a stage goes on with a new communicator: the survivors leave the old
 * one (aborting it) and join the next, the stage's new process creates its pipe, and every
 * rank warms its links again.
 *
 * NCCL refuses two ranks on one GPU unless each process has its own NCCL_HOSTID (then their
 * traffic goes over its socket transport): the caller sets the environment before the
 * first call in the process.
 */
#ifndef QW_KERNELS_CUDA_NCCL_PIPE_H
#define QW_KERNELS_CUDA_NCCL_PIPE_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QW_NCCL_ID_BYTES 128   /* an ncclUniqueId */

/* Called while a wait polls (about every millisecond): false gives up (QW_E_ABORTED). */
typedef bool (*qw_nccl_keep_waiting)(void *ctx);

typedef struct qw_nccl_pipe_config {
	int rank, n_ranks;            /* this stage, and the pipeline's stage count (>= 2) */
	const uint8_t *unique_id;     /* QW_NCCL_ID_BYTES, from qw_nccl_unique_id on rank 0 */
	int cols;                     /* values a row: the hidden size */
	int max_rows;                 /* rows of the largest step */
	int max_extra_in;             /* deepstack blocks that may arrive with a record */
	int max_extra_out;            /* deepstack blocks that may leave with one */
	bool check;                   /* checksum every record */
	int corrupt_every;            /* tests: flip a bit of every n-th record sent after its
					 checksum was taken (0: never) */
	double timeout_s;             /* joining the communicator, and a clean teardown */
	qw_nccl_keep_waiting keep_waiting;   /* may be NULL */
	void *wait_ctx;
} qw_nccl_pipe_config;

/* The shape of one step's record. */
typedef struct qw_nccl_record {
	uint64_t step;
	int rows;                     /* hidden rows: the step's tokens */
	int n_extra;                  /* deepstack blocks */
	int extra_rows;               /* rows of each block: the step's image tokens */
} qw_nccl_record;

typedef struct qw_nccl_pipe qw_nccl_pipe;

/* A fresh unique id (rank 0; the process must stay alive while the others join). */
qw_status qw_nccl_unique_id(uint8_t out[QW_NCCL_ID_BYTES], qw_err *err);

/* Joins the communicator (every rank calls it with the same id) on be's GPU and allocates
 * the slots.  be must be a CUDA backend. */
qw_status qw_nccl_pipe_create(qw_backend *be, const qw_nccl_pipe_config *cfg,
			      qw_nccl_pipe **out, qw_err *err);

/* One small transfer on each link, checked, so the connections (and the buffers NCCL makes
 * for them) exist before the caller measures free memory; the first transfer of a link can
 * take most of a second.  Every rank calls it. */
qw_status qw_nccl_pipe_warm(qw_nccl_pipe *p, qw_err *err);

/* Posts the receive of r's record from the previous stage (rank > 0).  At most two receives
 * may be posted and not yet taken. */
qw_status qw_nccl_pipe_post_recv(qw_nccl_pipe *p, const qw_nccl_record *r, qw_err *err);

/* The oldest posted record, which must be r's, into hidden (r->rows rows) and extra[0..
 * n_extra) (extra_rows rows each), ordered on the backend's stream.  With checking, waits
 * for it and verifies it. */
qw_status qw_nccl_pipe_take(qw_nccl_pipe *p, const qw_nccl_record *r, qw_act *hidden,
			    qw_act *const *extra, qw_err *err);

/* Sends r's record (hidden, then extra[0..n_extra)) to the next stage (rank < n_ranks - 1);
 * with then != NULL, also posts the receive of the next step's record, in one group. */
qw_status qw_nccl_pipe_send(qw_nccl_pipe *p, const qw_nccl_record *r, const qw_act *hidden,
			    const qw_act *const *extra, const qw_nccl_record *then, qw_err *err);

/* Waits until the latest record taken has arrived and been copied out (so later work on the
 * backend's stream no longer waits for a peer). */
qw_status qw_nccl_pipe_wait_taken(qw_nccl_pipe *p, qw_err *err);

/* Waits until at most in_flight (0 or 1) of the latest sends are still under way. */
qw_status qw_nccl_pipe_wait_sent(qw_nccl_pipe *p, int in_flight, qw_err *err);

/* Waits until the backend's stream has done everything enqueued on it. */
qw_status qw_nccl_pipe_sync(qw_nccl_pipe *p, qw_err *err);

/* After a failure (a peer's death, or this stage's own): aborts the communicator, so every
 * transfer of it ends, waits (up to the timeout) until neither the pipe's stream nor the
 * backend's has work left, and forgets the records posted, taken and sent.  The slots,
 * streams and events stay: nothing of the pipe's own is allocated again (NCCL's buffers for
 * the next communicator replace the aborted one's).  Without a communicator it only waits. */
qw_status qw_nccl_pipe_leave(qw_nccl_pipe *p, qw_err *err);

/* Joins the next communicator (every rank calls it with the same id, as at create), after
 * leave; warm follows, as after create.  A join that fails leaves the pipe out of any, so it
 * may be tried again. */
qw_status qw_nccl_pipe_join(qw_nccl_pipe *p, const uint8_t *unique_id, qw_err *err);

/* The communicator's asynchronous error, without waiting (for idle checks). */
qw_status qw_nccl_pipe_health(qw_nccl_pipe *p, qw_err *err);

/* Leaves the communicator: with clean, when it is healthy and its transfers end within the
 * timeout, it waits for them and leaves in order; otherwise it aborts it, so no peer's death
 * can hang this.  NULL is a no-op. */
void qw_nccl_pipe_destroy(qw_nccl_pipe *p, bool clean);

#ifdef __cplusplus
}
#endif

#endif
