/* test_endpoint.c - the daemon's and the client's default endpoints, and the bind check:
 * socket files pass, tcp and abstract sockets (no file permissions guard them) need
 * allow-remote, wildcards become loopback, other transports are refused. */
#include "tests/unit/helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ipc/endpoint.h"

static void expect_daemon(qw_endpoint_env env, const char *want)
{
	char out[QW_ENDPOINT_MAX];
	qw_err err = {0};
	if (qw_endpoint_daemon_default(&env, out, sizeof out, &err) != QW_OK)
		fail_msg("daemon default failed: %s", err.msg);
	assert_string_equal(out, want);
}

static void test_daemon_default(void **state)
{
	/* systemd's RuntimeDirectory= wins, its first entry only, a trailing slash dropped */
	expect_daemon((qw_endpoint_env){.runtime_directory = "/run/qwend", .xdg_runtime_dir =
					"/run/user/1000", .root = true},
		      "ipc:///run/qwend/qwend.sock");
	expect_daemon((qw_endpoint_env){.runtime_directory = "/run/a/:/run/b"},
		      "ipc:///run/a/qwend.sock");
	/* root: the system socket, whatever XDG says */
	expect_daemon((qw_endpoint_env){.xdg_runtime_dir = "/run/user/0", .root = true},
		      "ipc:///run/qwend/qwend.sock");
	expect_daemon((qw_endpoint_env){.runtime_directory = "", .root = true,
					.system_socket = "/tmp/x.sock"},
		      "ipc:///tmp/x.sock");
	/* a user: the XDG runtime dir; empty or relative values count as unset */
	expect_daemon((qw_endpoint_env){.xdg_runtime_dir = "/run/user/1000"},
		      "ipc:///run/user/1000/qwend.sock");
	expect_daemon((qw_endpoint_env){.runtime_directory = "relative",
					.xdg_runtime_dir = "/run/user/7/"},
		      "ipc:///run/user/7/qwend.sock");

	char out[QW_ENDPOINT_MAX];
	qw_err err = {0};
	qw_endpoint_env none = {.xdg_runtime_dir = ""};
	assert_int_equal(qw_endpoint_daemon_default(&none, out, sizeof out, &err), QW_E_ARG);
	assert_contains(err.msg, "HINT: pass --socket");
	/* a path longer than a Unix socket can hold */
	char longdir[200];
	memset(longdir, 'd', sizeof longdir - 1);
	longdir[0] = '/';
	longdir[sizeof longdir - 1] = '\0';
	qw_endpoint_env deep = {.xdg_runtime_dir = longdir};
	assert_int_equal(qw_endpoint_daemon_default(&deep, out, sizeof out, &err), QW_E_ARG);
	assert_contains(err.msg, "at most 107");
}

static void test_client_default(void **state)
{
	char *dir = scratch_new();
	char out[QW_ENDPOINT_MAX], sys[1024], want[1100];
	snprintf(sys, sizeof sys, "%s/system.sock", dir);
	qw_endpoint_env env = {.xdg_runtime_dir = "/run/user/1000", .system_socket = sys};
	/* no system socket: the user's, and with no XDG dir the system path anyway */
	qw_endpoint_client_default(&env, out, sizeof out);
	assert_string_equal(out, "ipc:///run/user/1000/qwend.sock");
	env.xdg_runtime_dir = NULL;
	qw_endpoint_client_default(&env, out, sizeof out);
	snprintf(want, sizeof want, "ipc://%s", sys);
	assert_string_equal(out, want);
	/* a plain file there is not a socket */
	write_file(sys, "x", 1);
	env.xdg_runtime_dir = "/run/user/1000";
	qw_endpoint_client_default(&env, out, sizeof out);
	assert_string_equal(out, "ipc:///run/user/1000/qwend.sock");
	unlink(sys);
	/* a socket there wins */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sys);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	qw_endpoint_client_default(&env, out, sizeof out);
	assert_string_equal(out, want);
	close(fd);
	/* the real default is one of the two */
	qw_endpoint_env cur = qw_endpoint_env_current();
	qw_endpoint_client_default(&cur, out, sizeof out);
	assert_int_equal(strncmp(out, "ipc://", 6), 0);
	scratch_free(dir);
}

static void expect_bind(const char *endpoint, bool allow_remote, const char *want)
{
	char out[QW_ENDPOINT_MAX];
	qw_err err = {0};
	if (qw_endpoint_check_bind(endpoint, allow_remote, out, sizeof out, &err) != QW_OK)
		fail_msg("%s refused: %s", endpoint, err.msg);
	assert_string_equal(out, want);
}

static void expect_refused(const char *endpoint, bool allow_remote, const char *msg)
{
	char out[QW_ENDPOINT_MAX];
	qw_err err = {0};
	if (qw_endpoint_check_bind(endpoint, allow_remote, out, sizeof out, &err) == QW_OK)
		fail_msg("%s accepted as %s", endpoint, out);
	assert_int_equal(err.code, QW_E_ARG);
	assert_string_equal(out, "");
	assert_contains(err.msg, msg);
}

/* what a person writes: a bare path is a socket file */
static void test_from_arg(void **state)
{
	char out[64];
	assert_true(qw_endpoint_from_arg("/tmp/x.sock", out, sizeof out));
	assert_string_equal(out, "ipc:///tmp/x.sock");
	assert_true(qw_endpoint_from_arg("run/q.sock", out, sizeof out));
	assert_string_equal(out, "ipc://run/q.sock");
	assert_true(qw_endpoint_from_arg("ipc:///tmp/x.sock", out, sizeof out));
	assert_string_equal(out, "ipc:///tmp/x.sock");
	assert_true(qw_endpoint_from_arg("tcp://127.0.0.1:5555", out, sizeof out));
	assert_string_equal(out, "tcp://127.0.0.1:5555");
	/* too long for out: refused, out empty */
	assert_false(qw_endpoint_from_arg("/a/path/that/is/much/longer/than/the/sixty/four/bytes/"
					  "out/holds.sock", out, sizeof out));
	assert_string_equal(out, "");
}

static void test_bind_tcp(void **state)
{
	/* tcp has no access control: refused without allow-remote, loopback included, naming
	 * who could connect and the setting */
	const char *local[] = {"tcp://*:5555", "tcp://:5555", "tcp://localhost:80",
			       "tcp://127.0.0.1:5555", "tcp://[::1]:5555", "tcp://lo:5555"};
	for (size_t i = 0; i < sizeof local / sizeof *local; i++) {
		expect_refused(local[i], false, local[i]);
		expect_refused(local[i], false, "every user of this machine could submit requests");
		expect_refused(local[i], false, "HINT: use ipc:///PATH");
		expect_refused(local[i], false, "set allow-remote yes");
	}
	/* with it, wildcards (and localhost, which ZeroMQ does not resolve for bind) become
	 * loopback, and loopback stays as it is */
	expect_bind("tcp://*:5555", true, "tcp://127.0.0.1:5555");
	expect_bind("tcp://:5555", true, "tcp://127.0.0.1:5555");
	expect_bind("tcp://localhost:80", true, "tcp://127.0.0.1:80");
	expect_bind("tcp://127.0.0.1:5555", true, "tcp://127.0.0.1:5555");
	expect_bind("tcp://127.1.2.3:65535", true, "tcp://127.1.2.3:65535");
	expect_bind("tcp://[::1]:5555", true, "tcp://[::1]:5555");
	expect_bind("tcp://::1:5555", true, "tcp://::1:5555");
	expect_bind("tcp://[::ffff:127.0.0.1]:5555", true, "tcp://[::ffff:127.0.0.1]:5555");
	expect_bind("tcp://lo:5555", true, "tcp://lo:5555");
	const char *loop[] = {"tcp://127.0.0.1:5555", "tcp://127.1.2.3:65535", "tcp://[::1]:5555",
			      "tcp://::1:5555", "tcp://[::ffff:127.0.0.1]:5555", "tcp://lo:5555"};
	for (size_t i = 0; i < sizeof loop / sizeof *loop; i++)
		assert_int_equal(qw_endpoint_access(loop[i]), QW_REACH_LOCAL);
	/* other addresses reach other machines: the error says so */
	const char *remote[] = {"tcp://0.0.0.0:5555", "tcp://[::]:5555", "tcp://:::5555",
				"tcp://192.168.1.20:5555", "tcp://10.0.0.1:1", "tcp://eth0:5555",
				"tcp://[fe80::1]:5555", "tcp://[::ffff:10.0.0.1]:5555",
				"tcp://example.com:5555"};
	for (size_t i = 0; i < sizeof remote / sizeof *remote; i++) {
		expect_refused(remote[i], false, remote[i]);
		expect_refused(remote[i], false, "would let other machines submit requests");
		expect_refused(remote[i], false, "set allow-remote yes");
		expect_bind(remote[i], true, remote[i]);
		assert_int_equal(qw_endpoint_access(remote[i]), QW_REACH_NETWORK);
	}
	/* ports clients can find, and well-formed addresses only */
	expect_refused("tcp://127.0.0.1:*", true, "port");
	expect_refused("tcp://127.0.0.1:0", true, "port");
	expect_refused("tcp://127.0.0.1:65536", true, "port");
	expect_refused("tcp://127.0.0.1:55x", true, "port");
	expect_refused("tcp://127.0.0.1:", true, "port");
	expect_refused("tcp://127.0.0.1", true, "no port");
	expect_refused("tcp://[::1]", true, "no port");
	expect_refused("tcp://[::1:5555", true, "unbalanced");
	expect_refused("tcp://127.0.0.1;192.168.1.1:5555", true, "not a host");
}

static void test_bind_ipc_and_others(void **state)
{
	expect_bind("ipc:///run/qwend/qwend.sock", false, "ipc:///run/qwend/qwend.sock");
	expect_bind("ipc://relative.sock", false, "ipc://relative.sock");
	/* an abstract socket has no file to guard it: only with allow-remote */
	expect_refused("ipc://@abstract", false, "an abstract socket has no file permissions");
	expect_refused("ipc://@abstract", false, "set allow-remote yes");
	expect_bind("ipc://@abstract", true, "ipc://@abstract");
	assert_int_equal(qw_endpoint_access("ipc://@abstract"), QW_REACH_LOCAL);
	assert_int_equal(qw_endpoint_access("ipc:///run/qwend/qwend.sock"), QW_REACH_FILE);
	expect_refused("ipc://", false, "name the socket file");
	expect_refused("ipc://*", false, "name the socket file");
	char longer[QW_IPC_PATH_MAX + 20] = "ipc:///";
	memset(longer + 7, 'p', QW_IPC_PATH_MAX);
	longer[7 + QW_IPC_PATH_MAX] = '\0';
	expect_refused(longer, false, "at most 107");
	expect_refused("inproc://qwend", true, "not inproc://");
	expect_refused("pgm://eth0;239.192.1.1:5555", true, "not pgm://");
	expect_refused("epgm://eth0;239.192.1.1:5555", true, "not epgm://");
	expect_refused("/run/qwend/qwend.sock", false, "not a ZeroMQ endpoint");
	expect_refused("://x", false, "not a ZeroMQ endpoint");

	char path[256];
	assert_true(qw_endpoint_ipc_path("ipc:///run/qwend/qwend.sock", path, sizeof path));
	assert_string_equal(path, "/run/qwend/qwend.sock");
	assert_true(qw_endpoint_ipc_path("ipc://rel/x.sock", path, sizeof path));
	assert_string_equal(path, "rel/x.sock");
	assert_false(qw_endpoint_ipc_path("ipc://@abstract", path, sizeof path));
	assert_string_equal(path, "");
	assert_false(qw_endpoint_ipc_path("tcp://127.0.0.1:5555", path, sizeof path));
	assert_false(qw_endpoint_ipc_path("ipc://", path, sizeof path));
	assert_false(qw_endpoint_ipc_path("ipc:///a/long/path", path, 8));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_daemon_default),
		cmocka_unit_test(test_client_default),
		cmocka_unit_test(test_from_arg),
		cmocka_unit_test(test_bind_tcp),
		cmocka_unit_test(test_bind_ipc_and_others),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
