/* worker_gen.c - a worker between generations: the daemon restarts a failed stage and keeps
 * this worker, which drops its steps in flight, keeps its weights and KV cache, and goes on
 * in the new generation.  See worker.h and worker_int.h. */
#include "daemon/worker_int.h"

#include <stdio.h>
#include <unistd.h>

/* The daemon has moved on to a newer generation than this worker's (a partial restart). */
bool worker_moved_on(const worker *w)
{
	return atomic_load(&w->hdr->generation) != w->generation;
}

/* The rings are this worker's generation's: always for a fresh start; after a partial
 * restart, once the daemon has emptied them (an abort seen before is the old generation's). */
static bool rings_mine(const worker *w)
{
	return atomic_load(&w->hdr->resume) == w->generation;
}

/* A wait on the GPU or on NCCL goes on while the daemon wants this generation. */
bool worker_keep_waiting(void *ctx)
{
	worker *w = ctx;
	worker_beat(w);
	return getppid() == w->daemon && !worker_moved_on(w) &&
	       !(rings_mine(w) && atomic_load(&qw_region_plan_ring(&w->region, w->stage)->aborted));
}

/* Until the rings are this generation's (a new worker of a partial restart waits for the
 * survivors to let go of them). */
qw_status worker_await_rings(worker *w, qw_err *err)
{
	while (!rings_mine(w)) {
		if (!worker_keep_waiting(w))
			return qw_fail(err, QW_E_ABORTED, "generation %u ended before it began",
				       w->generation);
		usleep(1000);
	}
	return QW_OK;
}

/* This worker's own step failed (or a neighbour's death broke its hand-overs): it says so
 * and waits, beating, for the daemon's word: a newer generation, which it rejoins unless the
 * daemon kills it to start its stage again.  False: the daemon is gone. */
bool worker_await_generation(worker *w, const qw_err *err)
{
	snprintf(w->slot->error, sizeof w->slot->error, "%s", err->msg);
	atomic_store(&w->slot->state, QW_WORKER_FAILED);
	qw_log(QW_LOG_ERROR, "stage %d failed: %s", w->stage, err->msg);
	worker_notify(w);
	while (!worker_moved_on(w)) {
		if (getppid() != w->daemon)
			return false;
		worker_beat(w);
		usleep(2000);
	}
	return true;
}

/* What the steps in flight left: the communicator (aborted), images in progress on stage 0,
 * a plan read ahead, the hand-overs over the rings the daemon is about to empty.  The
 * daemon fails the requests those steps served and forgets their KV blocks. */
static qw_status drop_steps(worker *w, qw_err *err)
{
	if (w->pipe)
		QW_TRY(qw_nccl_pipe_leave(w->pipe, err));
	worker_forget_images(w);
	w->ahead_len = 0;
	w->posted_ahead = 0;
	qw_handover_free(&w->prev);
	qw_handover_free(&w->next);
	return QW_OK;
}

/* The hand-overs again, once the daemon has emptied the rings: on CUDA a new communicator,
 * warmed once every stage's weights are in (a new worker's links connect only after its
 * load). */
static qw_status reconnect(worker *w, qw_err *err)
{
	QW_TRY(worker_await_rings(w, err));
	if (!w->pipe)
		return worker_connect_handovers(w, err);
	QW_TRY(worker_pipe_id(w, err));
	QW_TRY(qw_nccl_pipe_join(w->pipe, w->hdr->nccl_id, err));
	for (int i = 0; i < w->n_stages; i++)
		while (!atomic_load(&w->hdr->worker[i].weights_ready)) {
			if (!worker_keep_waiting(w))
				return qw_fail(err, QW_E_ABORTED, "generation %u ended while stage %d "
					       "loaded", w->generation, i);
			usleep(1000);
		}
	return qw_nccl_pipe_warm(w->pipe, err);
}

/* The daemon starts a failed stage again and keeps this one: its weights and KV cache stay,
 * the steps in flight go; it acknowledges (REJOINING), then goes on in the new generation.
 * A newer failure meanwhile starts this over; its own failure is returned (the daemon then
 * restarts every worker). */
qw_status worker_rejoin(worker *w, qw_err *err)
{
	for (;;) {
		w->generation = atomic_load(&w->hdr->generation);
		QW_TRY(drop_steps(w, err));
		/* the state before the generation: the daemon reads them the other way round */
		atomic_store(&w->slot->state, QW_WORKER_REJOINING);
		atomic_store(&w->slot->generation, w->generation);
		qw_log(QW_LOG_INFO, "stage %d: generation %u: steps in flight dropped, weights and KV "
		       "cache kept", w->stage, w->generation);
		worker_notify(w);
		qw_status st = reconnect(w, err);
		if (st == QW_OK) {
			atomic_store(&w->slot->state, QW_WORKER_READY);
			worker_notify(w);
			qw_log(QW_LOG_INFO, "stage %d: ready in generation %u", w->stage, w->generation);
			return QW_OK;
		}
		if (!worker_moved_on(w))
			return st;
	}
}

