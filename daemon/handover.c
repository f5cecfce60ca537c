/* handover.c - stage-to-stage activation records.  See handover.h. */
#include "daemon/handover.h"

#include <stdlib.h>
#include <string.h>

#include "ipc/checksum.h"

#define HANDOVER_MAGIC 0x524f5648u   /* "HVOR" */

typedef struct record_header {
	uint32_t magic;
	uint32_t checked;        /* a checksum follows the payload */
	uint64_t step;
	int32_t rows, cols;
	int32_t n_extra, extra_rows;
} record_header;

void qw_handover_init(qw_handover *h, qw_channel ch, qw_backend *be, int from, int to, bool check,
		      int corrupt_every)
{
	*h = (qw_handover){.ch = ch, .be = be, .from = from, .to = to, .check = check,
			   .corrupt_every = corrupt_every};
}

void qw_handover_free(qw_handover *h)
{
	if (h->ch.close)
		h->ch.close(&h->ch);
	free(h->staging);
	memset(h, 0, sizeof *h);
}

static qw_status staging_for(qw_handover *h, size_t floats, qw_err *err)
{
	if (floats <= h->staging_cap)
		return QW_OK;
	float *grown = realloc(h->staging, floats * sizeof *grown);
	if (!grown)
		return qw_fail(err, QW_E_NOMEM, "out of memory for a hand-over of %zu values", floats);
	h->staging = grown;
	h->staging_cap = floats;
	return QW_OK;
}

qw_status qw_handover_send(qw_handover *h, uint64_t step, const qw_act *hidden,
			   const qw_act *const *extra, int n_extra, qw_err *err)
{
	int cols = hidden->cols, extra_rows = n_extra ? extra[0]->rows : 0;
	size_t main_n = (size_t)hidden->rows * (size_t)cols;
	size_t total = main_n + (size_t)n_extra * (size_t)extra_rows * (size_t)cols;
	qw_status st = staging_for(h, total, err);
	if (st != QW_OK)
		return st;
	st = h->be->act_read(h->be, hidden, h->staging, err);
	for (int i = 0; i < n_extra && st == QW_OK; i++)
		st = h->be->act_read(h->be, extra[i],
				     h->staging + main_n + (size_t)i * (size_t)extra_rows * (size_t)cols,
				     err);
	if (st != QW_OK)
		return st;
	record_header hdr = {HANDOVER_MAGIC, h->check, step, hidden->rows, cols, n_extra,
			     extra_rows};
	size_t bytes = total * sizeof(float);
	uint64_t sum = h->check ? qw_checksum(h->staging, bytes) : 0;
	h->sent++;
	if (h->corrupt_every > 0 && h->sent % (uint64_t)h->corrupt_every == 0 && bytes > 0)
		((uint8_t *)h->staging)[(h->sent * 7919) % bytes] ^= 0x10;   /* "in flight" */
	if ((st = h->ch.send(&h->ch, &hdr, sizeof hdr, err)) == QW_OK &&
	    (st = h->ch.send(&h->ch, h->staging, bytes, err)) == QW_OK && h->check)
		st = h->ch.send(&h->ch, &sum, sizeof sum, err);
	if (st != QW_OK)
		return qw_err_context(err, "hand-over from stage %d to %d at step %llu", h->from,
				      h->to, (unsigned long long)step);
	return QW_OK;
}

qw_status qw_handover_recv(qw_handover *h, uint64_t step, qw_act *hidden, int rows,
			   qw_act *const *extra, int n_extra, int extra_rows, qw_err *err)
{
	record_header hdr;
	qw_status st = h->ch.recv(&h->ch, &hdr, sizeof hdr, err);
	if (st != QW_OK)
		return qw_err_context(err, "hand-over from stage %d to %d", h->from, h->to);
	if (hdr.magic != HANDOVER_MAGIC || hdr.step != step || hdr.rows != rows ||
	    hdr.cols != hidden->cols || hdr.n_extra != n_extra ||
	    (n_extra && hdr.extra_rows != extra_rows) || hdr.checked != (uint32_t)h->check)
		return qw_fail(err, QW_E_IO, "hand-over from stage %d to %d: expected step %llu with "
			       "%d rows of %d and %d feature blocks, got a record of step %llu with %d "
			       "rows of %d and %d blocks", h->from, h->to, (unsigned long long)step,
			       rows, hidden->cols, n_extra, (unsigned long long)hdr.step, hdr.rows,
			       hdr.cols, hdr.n_extra);
	size_t main_n = (size_t)rows * (size_t)hdr.cols;
	size_t total = main_n + (size_t)n_extra * (size_t)extra_rows * (size_t)hdr.cols;
	if ((st = staging_for(h, total, err)) != QW_OK)
		return st;
	size_t bytes = total * sizeof(float);
	uint64_t sum = 0;
	if ((st = h->ch.recv(&h->ch, h->staging, bytes, err)) == QW_OK && h->check)
		st = h->ch.recv(&h->ch, &sum, sizeof sum, err);
	if (st != QW_OK)
		return qw_err_context(err, "hand-over from stage %d to %d at step %llu", h->from,
				      h->to, (unsigned long long)step);
	if (h->check) {
		uint64_t got = qw_checksum(h->staging, bytes);
		if (got != sum)
			return qw_fail(err, QW_E_IO, "hand-over from stage %d to %d at step %llu: "
				       "checksum mismatch (sent %016llx, received %016llx over %zu "
				       "bytes): activations were corrupted in transit", h->from, h->to,
				       (unsigned long long)step, (unsigned long long)sum,
				       (unsigned long long)got, bytes);
	}
	hidden->rows = rows;
	st = h->be->act_write(h->be, hidden, h->staging, err);
	for (int i = 0; i < n_extra && st == QW_OK; i++) {
		extra[i]->rows = extra_rows;
		st = h->be->act_write(h->be, extra[i],
				      h->staging + main_n + (size_t)i * (size_t)extra_rows *
							      (size_t)hdr.cols, err);
	}
	return st;
}
