/* supervisor.c - worker processes and their region.  See supervisor.h. */
#include "daemon/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEATH_GRACE_MS 200   /* how long a reported failure waits for a death it may follow */

qw_status qw_supervisor_init(qw_supervisor *s, const qw_region_job *job,
			     const qw_region_sizes *sizes, int64_t kv_blocks, int64_t kv_blocks_max,
			     qw_log_level log_level, qw_err *err)
{
	memset(s, 0, sizeof *s);
	s->job = *job;
	s->sizes = *sizes;
	s->kv_blocks = kv_blocks;
	s->kv_blocks_max = kv_blocks_max;
	s->log_level = log_level;
	s->region.fd = -1;
	/* inherited by the workers: no close-on-exec */
	s->notify_fd = eventfd(0, EFD_NONBLOCK);
	if (s->notify_fd < 0)
		return qw_fail(err, QW_E_IO, "eventfd: %s", strerror(errno));
	return QW_OK;
}

void qw_supervisor_clear_notify(qw_supervisor *s)
{
	uint64_t v;
	while (read(s->notify_fd, &v, sizeof v) == (ssize_t)sizeof v) {
	}
}

static const char *level_name(qw_log_level l)
{
	static const char *const names[] = {"debug", "info", "warn", "error"};
	return l <= QW_LOG_ERROR ? names[l] : "info";
}

/* Starts stage i's worker into the current region. */
static qw_status spawn(qw_supervisor *s, int i, qw_err *err)
{
	char stage[16], region_fd[16], notify_fd[16];
	snprintf(stage, sizeof stage, "%d", i);
	snprintf(region_fd, sizeof region_fd, "%d", s->region.fd);
	snprintf(notify_fd, sizeof notify_fd, "%d", s->notify_fd);
	char *argv[] = {"qwend-worker", "--worker", stage, "--region-fd", region_fd,
			"--notify-fd", notify_fd, "--log-level", (char *)level_name(s->log_level),
			NULL};
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return qw_fail(err, QW_E_IO, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* the daemon blocks the signals it reads from a signalfd: not so a worker */
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execv("/proc/self/exe", argv);
		char msg[160];
		int n = snprintf(msg, sizeof msg, "qwend: cannot start worker %d: %s\n", i,
				 strerror(errno));
		if (write(2, msg, (size_t)n) < 0) {
		}
		_exit(127);
	}
	s->pid[i] = pid;
	s->exit_status[i] = 0;
	s->exited[i] = false;
	s->loads[i]++;
	qw_log(QW_LOG_INFO, "started worker %d (pid %d) for layers [%d, %d)", i, (int)pid,
	       s->job.layer_begin[i], s->job.layer_end[i]);
	return QW_OK;
}

qw_status qw_supervisor_start(qw_supervisor *s, qw_err *err)
{
	qw_status st = qw_region_create(&s->job, &s->sizes, &s->region, err);
	if (st != QW_OK)
		return st;
	s->generation++;
	atomic_store(&s->region.hdr->generation, (uint32_t)s->generation);
	atomic_store(&s->region.hdr->resume, (uint32_t)s->generation);   /* fresh rings */
	s->running = true;
	memset(s->exited, 0, sizeof s->exited);
	s->kv_decided = 0;
	s->rejoin = 0;
	s->resumed = false;
	qw_supervisor_clear_notify(s);
	for (int i = 0; i < s->job.n_stages && st == QW_OK; i++)
		st = spawn(s, i, err);
	if (st != QW_OK)
		qw_supervisor_kill(s);
	return st;
}

/* Every stage has loaded: the cache is as large as the smallest stage allows. */
static void decide_kv(qw_supervisor *s)
{
	qw_region_header *h = s->region.hdr;
	int64_t blocks = s->kv_blocks;
	if (blocks == 0) {
		blocks = INT32_MAX;
		for (int i = 0; i < s->job.n_stages; i++)
			if (h->worker[i].kv_block_capacity < blocks)
				blocks = h->worker[i].kv_block_capacity;
		if (blocks > s->kv_blocks_max)
			blocks = s->kv_blocks_max;
	}
	if (blocks < 1)
		blocks = 1;   /* the workers' allocation then says what is wrong */
	s->kv_decided = (int)blocks;
	qw_log(QW_LOG_INFO, "KV cache: %d blocks of %d tokens on every stage (%lld tokens)",
	       s->kv_decided, s->job.block_tokens, (long long)blocks * s->job.block_tokens);
	atomic_store(&h->kv_blocks, s->kv_decided);
}

static bool died_first(qw_supervisor *s, int failed, qw_pipe_failure *f);

static qw_worker_state state_of(const qw_supervisor *s, int i)
{
	return s->region.hdr ? atomic_load(&s->region.hdr->worker[i].state) : QW_WORKER_STOPPED;
}

static uint64_t all_stages(const qw_supervisor *s)
{
	return s->job.n_stages >= 64 ? ~0ull : (1ull << s->job.n_stages) - 1;
}

static bool in(uint64_t stages, int i)
{
	return (stages >> i) & 1u;
}

/* "0", "0 and 2", "0, 1 and 3" */
static const char *stage_list(uint64_t stages, char *buf, size_t cap)
{
	int n = 0, k = 0, at = 0;
	for (int i = 0; i < QW_MAX_STAGES; i++)
		n += in(stages, i);
	buf[0] = 0;
	for (int i = 0; i < QW_MAX_STAGES && at >= 0 && (size_t)at < cap; i++)
		if (in(stages, i)) {
			k++;
			at += snprintf(buf + at, cap - (size_t)at, "%s%d",
				       k == 1 ? "" : k == n ? " and " : ", ", i);
		}
	return buf;
}

bool qw_supervisor_can_rejoin(const qw_supervisor *s, uint64_t stages)
{
	if (!s->running || s->rejoin || !stages || (stages & all_stages(s)) == all_stages(s))
		return false;
	for (int i = 0; i < s->job.n_stages; i++) {
		if (in(stages, i))
			continue;
		qw_worker_state st = state_of(s, i);
		if (!s->pid[i] || !atomic_load(&s->region.hdr->worker[i].can_rejoin) ||
		    (st != QW_WORKER_READY && st != QW_WORKER_FAILED))
			return false;
	}
	return true;
}

qw_status qw_supervisor_restart_stages(qw_supervisor *s, uint64_t stages, qw_err *err)
{
	if (!qw_supervisor_can_rejoin(s, stages))
		return qw_fail(err, QW_E_ARG, "a partial restart that keeps no worker");
	qw_region_header *h = s->region.hdr;
	s->generation++;
	/* the generation first: a survivor woken by the abort finds it moved on */
	atomic_store(&h->generation, (uint32_t)s->generation);
	qw_region_abort(&s->region);
	for (int i = 0; i < s->job.n_stages; i++)
		if (in(stages, i) && s->pid[i])
			kill(s->pid[i], SIGKILL);
	for (int i = 0; i < s->job.n_stages; i++) {
		if (!in(stages, i))
			continue;
		if (s->pid[i]) {
			int status;
			while (waitpid(s->pid[i], &status, 0) < 0 && errno == EINTR) {
			}
			s->pid[i] = 0;
		}
		/* its slot is the new worker's: no stale heartbeat to take for a hang, no old
		 * state to report */
		memset(&h->worker[i], 0, sizeof h->worker[i]);
	}
	s->rejoin = stages;
	s->resumed = false;
	char list[64];
	qw_log(QW_LOG_INFO, "generation %d: starting worker%s %s again; the others keep their "
	       "weights and KV cache", s->generation, stages & (stages - 1) ? "s" : "",
	       stage_list(stages, list, sizeof list));
	/* the new workers load while the survivors finish the steps they are in; they touch
	 * the rings only once the rings are this generation's (resume) */
	atomic_store(&h->nccl_id_ready, 0);
	for (int i = 0; i < s->job.n_stages; i++)
		if (in(stages, i))
			QW_TRY(spawn(s, i, err));
	return QW_OK;
}

/* A partial restart, until the survivors have dropped their steps: then the rings are
 * emptied, and the survivors and the new workers may go on. */
static qw_pipe_state rejoin_step(qw_supervisor *s, qw_pipe_failure *f)
{
	qw_region_header *h = s->region.hdr;
	uint32_t g = (uint32_t)s->generation;
	for (int i = 0; i < s->job.n_stages; i++) {
		if (in(s->rejoin, i))
			continue;
		qw_worker_slot *w = &h->worker[i];
		if (atomic_load(&w->generation) != g)
			return QW_PIPE_LOADING;   /* it has not seen the new generation yet */
		qw_worker_state st = atomic_load(&w->state);
		if (st == QW_WORKER_FAILED) {
			snprintf(f->why, sizeof f->why, "worker %d (layers [%d, %d)) could not keep "
				 "its weights for generation %u: %s", i, s->job.layer_begin[i],
				 s->job.layer_end[i], g, w->error);
			f->stages = 1ull << i;
			return QW_PIPE_FAILED;
		}
		if (st != QW_WORKER_REJOINING)
			return QW_PIPE_LOADING;
	}
	qw_region_reset(&s->region);
	s->resumed = true;
	atomic_store(&h->resume, g);
	return QW_PIPE_LOADING;
}

/* The workers that report a failure. */
static uint64_t failed_stages(const qw_supervisor *s)
{
	uint64_t m = 0;
	for (int i = 0; i < s->job.n_stages; i++)
		if (state_of(s, i) == QW_WORKER_FAILED)
			m |= 1ull << i;
	return m;
}

qw_pipe_state qw_supervisor_poll(qw_supervisor *s, qw_pipe_failure *f)
{
	f->why[0] = 0;
	f->stages = 0;
	if (!s->running) {
		snprintf(f->why, sizeof f->why, "no workers");
		return QW_PIPE_FAILED;
	}
	if (s->rejoin && !s->resumed)
		return rejoin_step(s, f);
	qw_region_header *h = s->region.hdr;
	int loaded = 0, ready = 0;
	for (int i = 0; i < s->job.n_stages; i++) {
		qw_worker_state st = atomic_load(&h->worker[i].state);
		if (st == QW_WORKER_FAILED) {
			if (!died_first(s, i, f)) {
				snprintf(f->why, sizeof f->why, "worker %d (layers [%d, %d)) failed: %s", i,
					 s->job.layer_begin[i], s->job.layer_end[i], h->worker[i].error);
				f->stages = failed_stages(s);
			}
			return QW_PIPE_FAILED;
		}
		loaded += st >= QW_WORKER_LOADED;
		ready += st == QW_WORKER_READY;
	}
	if (loaded == s->job.n_stages && !s->kv_decided)
		decide_kv(s);
	if (ready < s->job.n_stages)
		return QW_PIPE_LOADING;
	s->rejoin = 0;   /* a partial restart is over */
	s->resumed = false;
	return QW_PIPE_READY;
}

static void describe_exit(int status, char *buf, size_t cap)
{
	if (WIFSIGNALED(status))
		snprintf(buf, cap, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, cap, "exited with status %d", WEXITSTATUS(status));
}

/* Reaps whatever has exited, noting each worker's status. */
static void reap_exited(qw_supervisor *s)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0)
			return;
		for (int i = 0; i < s->job.n_stages; i++)
			if (s->pid[i] == pid) {
				s->pid[i] = 0;
				s->exit_status[i] = status;
				s->exited[i] = true;
			}
	}
}

/* Exited without being asked to. */
static bool unexpected_exit(const qw_supervisor *s, int i)
{
	int status = s->exit_status[i];
	return s->exited[i] && !(state_of(s, i) == QW_WORKER_STOPPED && WIFEXITED(status) &&
				 WEXITSTATUS(status) == 0);
}

static void describe_worker(const qw_supervisor *s, int i, pid_t pid, char *why, size_t cap)
{
	char how[96];
	describe_exit(s->exit_status[i], how, sizeof how);
	const char *detail = s->region.hdr && s->region.hdr->worker[i].error[0]
				     ? s->region.hdr->worker[i].error : NULL;
	snprintf(why, cap, "worker %d (pid %d, layers [%d, %d)) %s%s%s", i, (int)pid,
		 s->job.layer_begin[i], s->job.layer_end[i], how, detail ? ": " : "",
		 detail ? detail : "");
}

bool qw_supervisor_reap(qw_supervisor *s, qw_pipe_failure *f)
{
	pid_t before[QW_MAX_STAGES];
	memcpy(before, s->pid, sizeof before);
	reap_exited(s);
	/* one that died without a word is the cause; those that reported may have seen it die */
	int cause = -1;
	uint64_t dead = 0;
	for (int i = 0; i < s->job.n_stages; i++)
		if (before[i] && !s->pid[i] && unexpected_exit(s, i)) {
			dead |= 1ull << i;
			if (cause < 0 || (state_of(s, cause) == QW_WORKER_FAILED &&
					  state_of(s, i) != QW_WORKER_FAILED))
				cause = i;
		}
	if (cause >= 0) {
		describe_worker(s, cause, before[cause], f->why, sizeof f->why);
		f->stages = dead;
	}
	return cause >= 0;
}

/* Worker `failed` reported a failure.  The stages beside one that died see its death through
 * NCCL and report it, possibly before the dead one is reaped: give the others a moment, and
 * name one that died without a word as the cause (the dead are the ones to start again). */
static bool died_first(qw_supervisor *s, int failed, qw_pipe_failure *f)
{
	pid_t pids[QW_MAX_STAGES];
	memcpy(pids, s->pid, sizeof pids);
	for (int ms = 0; ms <= DEATH_GRACE_MS; ms += 5) {
		reap_exited(s);
		uint64_t dead = 0;
		int first = -1;
		for (int i = 0; i < s->job.n_stages; i++)
			if (i != failed && unexpected_exit(s, i)) {
				dead |= 1ull << i;
				if (first < 0 && state_of(s, i) != QW_WORKER_FAILED)
					first = i;
			}
		if (first >= 0) {
			char which[600];
			describe_worker(s, first, pids[first], which, sizeof which);
			snprintf(f->why, sizeof f->why, "%s; then worker %d reported: %s", which,
				 failed, s->region.hdr->worker[failed].error);
			f->stages = dead | (unexpected_exit(s, failed) ? 1ull << failed : 0);
			return true;
		}
		usleep(5000);
	}
	return false;
}

static bool all_gone(const qw_supervisor *s)
{
	for (int i = 0; i < s->job.n_stages; i++)
		if (s->pid[i])
			return false;
	return true;
}

bool qw_supervisor_wait(qw_supervisor *s, int timeout_ms)
{
	for (int waited = 0; !all_gone(s); waited += 5) {
		qw_pipe_failure f;
		qw_supervisor_reap(s, &f);
		if (all_gone(s) || waited >= timeout_ms)
			break;
		usleep(5000);
	}
	return all_gone(s);
}

void qw_supervisor_kill(qw_supervisor *s)
{
	if (s->region.hdr)
		qw_region_abort(&s->region);
	for (int i = 0; i < s->job.n_stages; i++)
		if (s->pid[i])
			kill(s->pid[i], SIGKILL);
	for (int i = 0; i < s->job.n_stages; i++)
		if (s->pid[i]) {
			int status;
			while (waitpid(s->pid[i], &status, 0) < 0 && errno == EINTR) {
			}
			s->pid[i] = 0;
		}
	if (s->region.hdr)
		qw_region_close(&s->region);
	s->running = false;
	s->kv_decided = 0;
	s->rejoin = 0;
	s->resumed = false;
}

void qw_supervisor_free(qw_supervisor *s)
{
	if (s->running)
		qw_supervisor_kill(s);
	if (s->notify_fd >= 0)
		close(s->notify_fd);
	s->notify_fd = -1;
}
