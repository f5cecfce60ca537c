/* transport_shm.c - qwen-transport-check's shm transport: a chain of processes on one machine,
 * each hop a shared-memory ring forward and a small one back for the acks, made before the
 * stages fork (as the daemon makes its rings before its workers).  See transport_check.h. */
#include "cli/transport_check.h"

#include <stdio.h>
#include <string.h>

typedef struct shm_links {
	qw_channel fwd[TC_MAX_HOPS], back[TC_MAX_HOPS];
} shm_links;

static qw_status open_hop(void *ctx, int hop, bool sending, qw_channel **data, qw_channel **ack,
			  qw_err *err)
{
	shm_links *l = ctx;
	*data = &l->fwd[hop];
	*ack = &l->back[hop];
	return QW_OK;
}

int tc_run_shm(const tc_opts *o, tc_report *rep, qw_err *err)
{
	int hops = o->stages - 1, made = 0, failed = -1;
	shm_links l;
	memset(&l, 0, sizeof l);
	/* a ring of the largest transfer and its header, up to 64 MiB (larger ones stream) */
	size_t ring = o->sizes[o->n_sizes - 1] + TC_HEADER_BYTES;
	ring = ring < (64u << 20) ? ring : (64u << 20);
	for (; made < hops; made++) {
		if (qw_shm_channel_create(ring, &l.fwd[made], err) != QW_OK)
			goto out;
		if (qw_shm_channel_create(4096, &l.back[made], err) != QW_OK) {
			l.fwd[made].close(&l.fwd[made]);
			goto out;
		}
		snprintf(rep->link[made], sizeof rep->link[made], "%s", l.fwd[made].link);
	}
	failed = tc_run_chain(o, rep, &(tc_links){open_hop, &l}, err);
out:
	for (int h = 0; h < made; h++) {
		l.fwd[h].close(&l.fwd[h]);
		l.back[h].close(&l.back[h]);
	}
	return failed;
}
