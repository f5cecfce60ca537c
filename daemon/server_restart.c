/* server_restart.c - what a failure of the pipeline does: the requests it cut fail, and the
 * failed stages' workers start again (or every worker), within max-restarts.  See server.h. */
#include "daemon/server.h"

#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "loader/clock.h"

#define RESTART_WINDOW_S 600.0

static void on_lost(void *ctx, qw_seq *seq)
{
	qw_server *sv = ctx;
	char msg[1200];
	snprintf(msg, sizeof msg, "the pipeline failed and the request was lost: %s",
		 sv->last_failure);
	qw_server_end(sv, seq->owner, "internal", msg, NULL);
}

/* Whether qwend may restart its workers once more, or has restarted them too often. */
static bool may_restart(qw_server *sv)
{
	double now = qw_seconds_now();
	int recent = 0;
	for (int i = 0; i < sv->n_restarts && i < 64; i++)
		recent += now - sv->restarts[i] < RESTART_WINDOW_S;
	if (recent >= sv->set.max_restarts) {
		qw_log(QW_LOG_ERROR, "%d restarts in %.0f minutes: giving up (systemd may restart "
		       "qwend)", recent, RESTART_WINDOW_S / 60);
		return false;
	}
	sv->restarts[sv->n_restarts++ % 64] = now;
	return true;
}

/* A worker failed, died or hung: the running requests fail (the queued ones wait), and only
 * the failed stages' workers start again while the others keep their weights and KV cache;
 * every worker starts again when that cannot be (a survivor is gone, never served, or fails
 * while the others wait for the new workers: the fallback, counted with the failure it
 * follows), and the daemon gives up and exits for systemd past max-restarts. */
void qw_server_pipeline_failed(qw_server *sv, const qw_pipe_failure *f)
{
	snprintf(sv->last_failure, sizeof sv->last_failure, "%s", f->why);
	qw_log(QW_LOG_ERROR, "pipeline failed: %s", f->why);
	bool fallback = sv->sup.rejoin != 0;   /* a partial restart was under way */
	bool partial = !fallback && sv->state != QW_SERVER_DRAINING &&
		       qw_supervisor_can_rejoin(&sv->sup, f->stages);
	if (!fallback || sv->t_failed == 0)
		sv->t_failed = qw_seconds_now();
	if (sv->have_sched)
		qw_sched_reset(&sv->sched, on_lost, sv);
	if (sv->state == QW_SERVER_DRAINING) {
		qw_supervisor_kill(&sv->sup);
		qw_server_fail_all(sv, "internal", "qwend is shutting down and its pipeline failed");
		sv->stopping = true;
		return;
	}
	if (!fallback && !may_restart(sv)) {
		qw_supervisor_kill(&sv->sup);
		qw_server_fail_all(sv, "internal", "qwend's pipeline keeps failing; qwend is exiting");
		sv->exit_status = 1;
		sv->stopping = true;
		return;
	}
	qw_err err = {0};
	sv->state = QW_SERVER_RESTARTING;
	sd_notifyf(0, "STATUS=restarting the workers: %s", f->why);
	sv->t_load = sv->t_load_logged = qw_seconds_now();
	sv->load_logged_tenth = 0;
	qw_status st;
	if (partial) {
		sv->n_partial_restarts++;
		st = qw_supervisor_restart_stages(&sv->sup, f->stages, &err);
	} else {
		if (fallback)
			qw_log(QW_LOG_WARN, "a worker failed while the others waited for the new "
			       "ones: restarting every worker");
		qw_supervisor_kill(&sv->sup);
		st = qw_supervisor_start(&sv->sup, &err);
	}
	if (st != QW_OK) {
		qw_log(QW_LOG_ERROR, "cannot restart the workers: %s", err.msg);
		qw_supervisor_kill(&sv->sup);
		qw_server_fail_all(sv, "internal", "qwend cannot restart its workers; qwend is exiting");
		sv->exit_status = 1;
		sv->stopping = true;
	}
}

/* A failure that is not one stage's doing: every worker starts again. */
void qw_server_pipeline_broke(qw_server *sv, const char *why)
{
	qw_pipe_failure f = {.stages = 0};
	snprintf(f.why, sizeof f.why, "%s", why);
	qw_server_pipeline_failed(sv, &f);
}

