/* handover.h - activations from one pipeline stage to the next, one step at a time.
 *
 * Owns: the hand-over record: a header (step, rows, width, and how many deepstack feature
 * blocks travel along for the layers of later stages), the hidden states (rows x width) and
 * those features (extra_rows x width each), and, with checking on, a checksum of all of it
 * (ipc/checksum.h) that the receiver recomputes, failing loudly on a mismatch.  It runs over
 * a channel (ipc/channel.h: the region's ring on the CPU backend) through host staging.
 */
#ifndef QW_DAEMON_HANDOVER_H
#define QW_DAEMON_HANDOVER_H

#include <stdbool.h>
#include <stdint.h>

#include "ipc/channel.h"
#include "kernels/ops.h"

typedef struct qw_handover {
	qw_channel ch;               /* carries the bytes; owned */
	qw_backend *be;              /* whose activations these are; not owned */
	int from, to;                /* stage indices, for messages */
	bool check;                  /* checksum every hand-over */
	int corrupt_every;           /* tests: flip one bit of every n-th record sent (0: never) */
	uint64_t sent;               /* records sent */
	float *staging;              /* host copy of one record's payload */
	size_t staging_cap;          /* floats */
} qw_handover;

/* Takes ownership of ch. */
void qw_handover_init(qw_handover *h, qw_channel ch, qw_backend *be, int from, int to, bool check,
		      int corrupt_every);
void qw_handover_free(qw_handover *h);

/* Sends step's hidden states and n_extra feature blocks (each extra[i]->rows rows). */
qw_status qw_handover_send(qw_handover *h, uint64_t step, const qw_act *hidden,
			   const qw_act *const *extra, int n_extra, qw_err *err);

/* Receives step's record into hidden (rows rows) and extra (n_extra blocks of extra_rows
 * rows); a record of another step or shape, or a checksum that does not match, is an error. */
qw_status qw_handover_recv(qw_handover *h, uint64_t step, qw_act *hidden, int rows,
			   qw_act *const *extra, int n_extra, int extra_rows, qw_err *err);

#endif
