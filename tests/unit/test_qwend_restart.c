/* test_qwend_restart.c - a failed worker is started again alone: its stage's worker gets a
 * new pid and loads its weights, the others keep their pids, weights and KV cache and do not
 * load again (the status's per-stage load count, and the workers' own lines in the log);
 * the requests running fail with an error naming the worker, queued ones wait and are
 * served, and requests after the restart get HF's tokens.  The first, middle and last stage
 * are killed while idle and while requests run; a hung worker and a worker that fails a
 * step are started again alone too; a survivor that dies while the others wait for the new
 * worker makes qwend start every worker again; and max-restarts counts a partial restart.
 *
 * QWEND_TEST_DEVICE=cuda runs the same on the CUDA backend, the stages' hand-overs over
 * NCCL: the survivors then leave the old communicator and join a new one. */
#include "tests/unit/qwend_harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loader/clock.h"

#define STAGES 3

static const char *tiny(void)
{
	return fixture("hf/tiny-moe/model");
}

/* HF's greedy tokens of the short case: on the CUDA backend (bf16), HF's own bf16 ones. */
static bool on_cuda(void);

static int32_t *hf_tokens(int *n)
{
	return fixture_ids("tiny-moe", on_cuda() ? "short.bf16.greedy_tokens"
						 : "short.fp32.greedy_tokens", n);
}

/* The workers as status sees them. */
typedef struct stages_seen {
	pid_t pid[STAGES];
	json_int_t loads[STAGES];
	char state[STAGES][16];
	json_int_t restarts, partial;
} stages_seen;

static stages_seen seen(qwend *d)
{
	stages_seen v = {0};
	json_t *s = qwend_status(d);
	const json_t *stages = json_object_get(s, "stages");
	assert_int_equal(json_array_size(stages), STAGES);
	for (int i = 0; i < STAGES; i++) {
		const json_t *st = json_array_get(stages, (size_t)i);
		v.pid[i] = (pid_t)json_integer_value(json_object_get(st, "pid"));
		v.loads[i] = json_integer_value(json_object_get(st, "loads"));
		const char *name = json_string_value(json_object_get(st, "state"));
		snprintf(v.state[i], sizeof v.state[i], "%s", name ? name : "");
	}
	v.restarts = json_integer_value(json_object_get(s, "restarts"));
	v.partial = json_integer_value(json_object_get(s, "partial_restarts"));
	json_decref(s);
	return v;
}

/* Only stage `k` was started again: its pid is new and the old one reaped, it loaded once
 * more; every other stage kept its pid and loaded nothing. */
static void expect_only(qwend *d, const stages_seen *before, const stages_seen *after, int k)
{
	for (int i = 0; i < STAGES; i++) {
		if (i == k) {
			if (after->pid[i] == before->pid[i] || after->pid[i] <= 0 ||
			    kill(before->pid[i], 0) == 0) {
				qwend_dump_log(d);
				fail_msg("stage %d: pid %d before, %d after (the old one %s)", i,
					 (int)before->pid[i], (int)after->pid[i],
					 kill(before->pid[i], 0) == 0 ? "still there" : "gone");
			}
			assert_int_equal(after->loads[i], before->loads[i] + 1);
		} else {
			if (after->pid[i] != before->pid[i] || after->loads[i] != before->loads[i]) {
				qwend_dump_log(d);
				fail_msg("stage %d was restarted too (pid %d -> %d, loads %lld -> %lld) "
					 "when only stage %d failed", i, (int)before->pid[i],
					 (int)after->pid[i], (long long)before->loads[i],
					 (long long)after->loads[i], k);
			}
		}
		assert_string_equal(after->state[i], "ready");
	}
}

/* How many times the log says a worker of stage k loaded its weights. */
static int loads_logged(const qwend *d, int k)
{
	char *log = read_file(d->log, NULL), needle[64];
	snprintf(needle, sizeof needle, " I stage %d: layers [", k);
	int n = 0;
	for (const char *p = strstr(log, needle); p; p = strstr(p + 1, needle))
		n += strstr(p, " of weights in ") != NULL;
	free(log);
	return n;
}

static bool on_cuda(void)
{
	const char *device = getenv("QWEND_TEST_DEVICE");
	return device && !strcmp(device, "cuda");
}

/* The short case through the daemon now: HF's greedy tokens (with `cached`, a prompt served
 * partly from the prefix cache: on CUDA its suffix's prefill need not give the whole
 * prompt's bits, test_qwend_prefix says why, so there only an answer of the right length
 * is asked for). */
static void short_case(qwend *d, bool cached, const char *what)
{
	int n, n_want;
	int32_t *ids = fixture_ids("tiny-moe", "short.input_ids", &n);
	int32_t *want = hf_tokens(&n_want);
	qw_request r = token_request(ids, n, n_want, NULL, 0);
	outcome o;
	run_request(d->endpoint, &r, &o);
	if (o.code[0])
		qwend_dump_log(d);
	if (cached && on_cuda()) {
		assert_string_equal(o.code, "");
		assert_int_equal(o.n_tokens, n_want);
	} else {
		expect_tokens(&o, want, n_want, "HF", what);
	}
	outcome_free(&o);
	free(ids);
	free(want);
}

static void expect_hf_tokens(qwend *d, const char *what)
{
	short_case(d, false, what);
}

/* Each stage killed in turn while nothing runs: it alone comes back, and the tokens stay.
 * The prompt fills 4-token blocks, which the prefix cache keeps: a restart must forget them
 * (the new worker's cache holds none of them), so the first request after it hits nothing,
 * and the next one hits again, with the same tokens. */
static void test_idle_kills(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--stages", "3", "--kv-blocks", "300",
						 "--kv-block-tokens", "4", "--max-restarts", "5",
						 NULL}, NULL, true);
	expect_hf_tokens(&d, "before any kill");
	short_case(&d, true, "from the prefix cache");
	assert_true(qwend_status_int(&d, "prefix_cache", "hit_tokens") > 0);
	for (int k = 0; k < STAGES; k++) {
		stages_seen before = seen(&d);
		for (int i = 0; i < STAGES; i++)
			assert_int_equal(before.loads[i], i < k ? 2 : 1);
		kill(before.pid[k], SIGKILL);
		qwend_wait_restarted(&d, k + 1, 60);
		stages_seen after = seen(&d);
		expect_only(&d, &before, &after, k);
		assert_int_equal(after.restarts, k + 1);
		assert_int_equal(after.partial, k + 1);
		assert_int_equal(qwend_status_int(&d, "prefix_cache", "cached_blocks"), 0);
		json_int_t hits = qwend_status_int(&d, "prefix_cache", "hit_tokens");
		char what[64];
		snprintf(what, sizeof what, "after stage %d was killed", k);
		expect_hf_tokens(&d, what);
		assert_int_equal(qwend_status_int(&d, "prefix_cache", "hit_tokens"), hits);
		short_case(&d, true, "from the prefix cache after the restart");
		assert_true(qwend_status_int(&d, "prefix_cache", "hit_tokens") > hits);
		assert_int_equal(qwend_status_int(&d, "kv", "blocks_used"), 0);
	}
	/* the workers' own word: every stage loaded twice (once at the start, once when it was
	 * killed), and the survivors said they kept their weights */
	for (int k = 0; k < STAGES; k++)
		assert_int_equal(loads_logged(&d, k), 2);
	char *log = read_file(d.log, NULL);
	assert_contains(log, " I stage 0: generation 3: steps in flight dropped, weights and KV "
		       "cache kept");
	assert_contains(log, " I generation 2: starting worker 0 again; the others keep their "
		       "weights and KV cache");
	free(log);
	qwend_stop(&d);
}

/* Each stage killed while a request runs (decoding; for the middle stage, still in its
 * prompt's prefill) and another waits in the queue: the running one fails naming the worker,
 * the queued one is served after the restart with HF's tokens. */
static void test_busy_kills(void **state)
{
	int n, n_want;
	int32_t *ids = fixture_ids("tiny-moe", "short.input_ids", &n);
	int32_t *want = hf_tokens(&n_want);
	enum { LONG_PROMPT = 3000 };
	int32_t *long_ids = malloc(LONG_PROMPT * sizeof *long_ids);
	for (int i = 0; i < LONG_PROMPT; i++)
		long_ids[i] = (int32_t)((i * 7919 + 13) % 1000);   /* the vocabulary is 1024 */
	qwend d;
	/* every request here computes its whole prompt (test_idle_kills has the prefix cache) */
	qwend_start(&d, tiny(), (const char *[]){"--stages", "3", "--kv-blocks", "300",
						 "--max-batch-tokens", "16", "--max-seqs", "1",
						 "--prefix-cache", "no", "--max-restarts", "5", NULL},
		    NULL, true);
	for (int k = 0; k < STAGES; k++) {
		bool prefill = k == 1;
		qw_request running = prefill ? token_request(long_ids, LONG_PROMPT, 4, NULL, 0)
					     : token_request(ids, n, 4000, NULL, 0);
		qw_request queued = token_request(ids, n, n_want, NULL, 0);
		qw_client a, b;
		qw_reply rep;
		open_client(&a, &d);
		open_client(&b, &d);
		if (prefill) {   /* no token comes before the prompt's last chunk is through */
			assert_int_equal(qw_client_send(&a, &running, &(qw_err){0}), QW_OK);
			expect_reply(&a, QW_REPLY_ACCEPTED, &rep);
			qw_reply_free(&rep);
		} else {
			start_streaming(&a, &running);
		}
		assert_int_equal(qw_client_send(&b, &queued, &(qw_err){0}), QW_OK);
		expect_reply(&b, QW_REPLY_ACCEPTED, &rep);   /* max-seqs 1: it waits */
		qw_reply_free(&rep);
		assert_int_equal(qwend_status_int(&d, "requests", "queued"), 1);
		stages_seen before = seen(&d);
		kill(before.pid[k], SIGKILL);
		outcome oa = {0}, ob = {0};
		read_to_end(&a, &oa);
		assert_string_equal(oa.code, "internal");
		char worker[32];
		snprintf(worker, sizeof worker, "worker %d", k);
		assert_contains(oa.message, worker);
		read_to_end(&b, &ob);
		qw_client_close(&a);
		qw_client_close(&b);
		char what[96];
		snprintf(what, sizeof what, "queued while stage %d was killed", k);
		expect_tokens(&ob, want, n_want, "HF", what);
		qwend_wait_restarted(&d, k + 1, 60);
		stages_seen after = seen(&d);
		expect_only(&d, &before, &after, k);
		expect_hf_tokens(&d, "after the restart");
		assert_int_equal(qwend_status_int(&d, "kv", "blocks_used"), 0);
	}
	/* the log has a line for each failed request, at info, naming the worker */
	char *log = read_file(d.log, NULL);
	assert_contains(log, " I request 1: failed (internal) after ");
	assert_contains(strstr(log, " I request 1: failed"), "worker 0");
	free(log);
	qwend_stop(&d);
	free(long_ids);
	free(ids);
	free(want);
}

/* A worker that stops showing signs of life is killed and started again alone.  (On CUDA a
 * worker creating its context shows none for a second or more: a longer timeout there.) */
static void test_hung_worker(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--stages", "3", "--kv-blocks", "300",
						 "--worker-timeout", on_cuda() ? "15" : "2", NULL},
		    NULL, true);
	stages_seen before = seen(&d);
	kill(before.pid[2], SIGSTOP);
	qwend_wait_restarted(&d, 1, 60);
	stages_seen after = seen(&d);
	expect_only(&d, &before, &after, 2);
	json_t *s = qwend_status(&d);
	assert_contains(json_string_value(json_object_get(s, "last_failure")),
			"has shown no sign of life");
	json_decref(s);
	expect_hf_tokens(&d, "after a hung worker was replaced");
	qwend_stop(&d);
}

/* A survivor that dies while the partial restart is under way (the new worker's load spread
 * over a second by the test hook; the survivors wait for it, or on the CPU backend are ready
 * already): every worker is started again, and that counts as the same restart. */
static void test_fallback_to_every_worker(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--stages", "3", "--kv-blocks", "300",
						 "--max-restarts", "1", NULL},
		    (const char *[]){"QWEND_TEST_LOAD_DELAY_MS=1000", NULL}, true);
	stages_seen first = seen(&d);
	kill(first.pid[1], SIGKILL);
	/* the new stage 1 loading, the survivors waiting for it */
	stages_seen mid;
	double until = qw_seconds_now() + 30;
	for (;;) {
		mid = seen(&d);
		if (mid.pid[1] != first.pid[1] && mid.pid[1] > 0 && !strcmp(mid.state[1], "loading"))
			break;
		if (qw_seconds_now() > until) {
			qwend_dump_log(&d);
			fail_msg("no new stage 1 loading: states %s %s %s", mid.state[0],
				 mid.state[1], mid.state[2]);
		}
		usleep(5000);
	}
	for (int i = 0; i < STAGES; i += 2) {   /* the survivors, waiting or ready */
		assert_int_equal(mid.pid[i], first.pid[i]);
		if (strcmp(mid.state[i], "rejoining") && strcmp(mid.state[i], "ready"))
			fail_msg("survivor %d is %s", i, mid.state[i]);
	}
	kill(first.pid[0], SIGKILL);
	qwend_wait_restarted(&d, 1, 60);
	stages_seen after = seen(&d);
	for (int i = 0; i < STAGES; i++) {
		assert_true(after.pid[i] > 0 && after.pid[i] != first.pid[i] &&
			    after.pid[i] != mid.pid[i]);
		/* stage 1's worker of the partial restart was killed mid-load: started, never
		 * loaded */
		assert_int_equal(after.loads[i], i == 1 ? 3 : 2);
		assert_int_equal(loads_logged(&d, i), 2);
		if (kill(first.pid[i], 0) == 0 || kill(mid.pid[i], 0) == 0)
			fail_msg("a worker of stage %d from before the fallback is still there", i);
	}
	/* one failure handled, one partial restart begun; max-restarts 1 was not exceeded */
	assert_int_equal(after.restarts, 1);
	assert_int_equal(after.partial, 1);
	char *log = read_file(d.log, NULL);
	assert_contains(log, "a worker failed while the others waited for the new ones: restarting "
		       "every worker");
	assert_contains(log, "worker 0 (pid ");
	free(log);
	expect_hf_tokens(&d, "after every worker was started again");
	qwend_stop(&d);
}

/* max-restarts counts partial restarts: with 1, the first kill is survived, the second ends
 * qwend with status 1 for systemd, failing what runs. */
static void test_max_restarts(void **state)
{
	int n;
	int32_t *ids = fixture_ids("tiny-moe", "short.input_ids", &n);
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--stages", "3", "--kv-blocks", "300",
						 "--max-restarts", "1", NULL}, NULL, true);
	stages_seen before = seen(&d);
	kill(before.pid[1], SIGKILL);
	qwend_wait_restarted(&d, 1, 60);
	stages_seen after = seen(&d);
	expect_only(&d, &before, &after, 1);
	qw_request r = token_request(ids, n, 4000, NULL, 0);
	qw_client a;
	open_client(&a, &d);
	start_streaming(&a, &r);
	kill(after.pid[2], SIGKILL);
	outcome o = {0};
	read_to_end(&a, &o);
	qw_client_close(&a);
	assert_string_equal(o.code, "internal");
	int status = qwend_wait_exit(&d, 20);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
	char *log = read_file(d.log, NULL);
	assert_contains(log, "1 restarts in 10 minutes: giving up");
	free(log);
	scratch_free(d.dir);
	free(ids);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_idle_kills),
		cmocka_unit_test(test_busy_kills),
		cmocka_unit_test(test_hung_worker),
		cmocka_unit_test(test_fallback_to_every_worker),
		cmocka_unit_test(test_max_restarts),
	};
	return cmocka_run_group_tests_name("qwend-restart", tests, NULL, NULL);
}
