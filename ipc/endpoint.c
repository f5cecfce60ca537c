/* endpoint.c - default endpoints and the daemon's bind check.  See endpoint.h. */
#include "ipc/endpoint.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

qw_endpoint_env qw_endpoint_env_current(void)
{
	return (qw_endpoint_env){.runtime_directory = getenv("RUNTIME_DIRECTORY"),
				 .xdg_runtime_dir = getenv("XDG_RUNTIME_DIR"),
				 .root = geteuid() == 0};
}

static const char *system_socket(const qw_endpoint_env *env)
{
	return env->system_socket ? env->system_socket : QW_SYSTEM_SOCKET;
}

/* "ipc://DIR/qwend.sock" from the first len bytes of dir (no doubled slash). */
static void ipc_in(const char *dir, size_t len, char *out, size_t cap)
{
	while (len > 1 && dir[len - 1] == '/')
		len--;
	snprintf(out, cap, "ipc://%.*s/%s", (int)len, dir, QW_SOCKET_NAME);
}

static bool usable_dir(const char *dir, size_t len)
{
	return dir && len > 0 && dir[0] == '/';
}

static qw_status fits(const char *endpoint, char *out, size_t cap, qw_err *err)
{
	size_t n = strlen(endpoint) - strlen("ipc://");
	if (n > QW_IPC_PATH_MAX)
		return qw_fail(err, QW_E_ARG, "default socket %s: the path is %zu bytes; a Unix "
			       "socket path holds at most %d\nHINT: pass a shorter --socket", endpoint,
			       n, QW_IPC_PATH_MAX);
	if (strlen(endpoint) >= cap)
		return qw_fail(err, QW_E_ARG, "default socket %s: longer than %zu bytes", endpoint,
			       cap - 1);
	snprintf(out, cap, "%s", endpoint);
	return QW_OK;
}

qw_status qw_endpoint_daemon_default(const qw_endpoint_env *env, char *out, size_t cap,
				     qw_err *err)
{
	char buf[QW_ENDPOINT_MAX + 64];
	const char *rd = env->runtime_directory;
	size_t rd_len = rd ? strcspn(rd, ":") : 0;
	if (usable_dir(rd, rd_len)) {
		ipc_in(rd, rd_len, buf, sizeof buf);
		return fits(buf, out, cap, err);
	}
	if (env->root) {
		snprintf(buf, sizeof buf, "ipc://%s", system_socket(env));
		return fits(buf, out, cap, err);
	}
	const char *xdg = env->xdg_runtime_dir;
	if (usable_dir(xdg, xdg ? strlen(xdg) : 0)) {
		ipc_in(xdg, strlen(xdg), buf, sizeof buf);
		return fits(buf, out, cap, err);
	}
	return qw_fail(err, QW_E_ARG, "no default socket: not root, and neither $RUNTIME_DIRECTORY "
		       "nor $XDG_RUNTIME_DIR names a directory\nHINT: pass --socket ENDPOINT (e.g. "
		       "ipc:///tmp/qwend.sock or tcp://127.0.0.1:5555)");
}

void qw_endpoint_client_default(const qw_endpoint_env *env, char *out, size_t cap)
{
	struct stat st;
	const char *sys = system_socket(env);
	const char *xdg = env->xdg_runtime_dir;
	if (stat(sys, &st) == 0 && S_ISSOCK(st.st_mode))
		snprintf(out, cap, "ipc://%s", sys);
	else if (usable_dir(xdg, xdg ? strlen(xdg) : 0))
		ipc_in(xdg, strlen(xdg), out, cap);
	else
		snprintf(out, cap, "ipc://%s", sys);
}

bool qw_endpoint_from_arg(const char *arg, char *out, size_t cap)
{
	const char *prefix = strstr(arg, "://") ? "" : "ipc://";
	int n = snprintf(out, cap, "%s%s", prefix, arg);
	if (n < 0 || (size_t)n >= cap) {
		if (cap)
			out[0] = '\0';
		return false;
	}
	return true;
}

bool qw_endpoint_ipc_path(const char *endpoint, char *out, size_t cap)
{
	if (cap)
		out[0] = '\0';
	if (strncmp(endpoint, "ipc://", 6) != 0)
		return false;
	const char *path = endpoint + 6;
	if (!*path || *path == '@' || strlen(path) >= cap)
		return false;
	memcpy(out, path, strlen(path) + 1);
	return true;
}

// ---------------------------------------------------------------------------------------
// the bind check

typedef enum host_kind { HOST_ANY, HOST_LOOPBACK, HOST_REMOTE } host_kind;

/* What a tcp host (brackets already removed) binds to. */
static host_kind classify(const char *host)
{
	unsigned char a[16];
	if (!*host || strcmp(host, "*") == 0 || strcmp(host, "localhost") == 0)
		return HOST_ANY;                   /* rewritten to 127.0.0.1 */
	if (strcmp(host, "lo") == 0)
		return HOST_LOOPBACK;              /* the loopback interface */
	if (inet_pton(AF_INET, host, a) == 1)
		return a[0] == 127 ? HOST_LOOPBACK : HOST_REMOTE;
	if (inet_pton(AF_INET6, host, a) == 1) {
		static const unsigned char v6_loopback[16] = {[15] = 1};
		static const unsigned char v4_mapped[12] = {[10] = 0xff, [11] = 0xff};
		if (memcmp(a, v6_loopback, 16) == 0)
			return HOST_LOOPBACK;
		if (memcmp(a, v4_mapped, 12) == 0 && a[12] == 127)
			return HOST_LOOPBACK;
		return HOST_REMOTE;
	}
	return HOST_REMOTE;                        /* a host or interface name, e.g. eth0 */
}

bool qw_endpoint_host_is_loopback(const char *host)
{
	return !strcmp(host, "localhost") || (*host && strcmp(host, "*") != 0 &&
					      classify(host) == HOST_LOOPBACK);
}

static qw_status check_tcp(const char *endpoint, bool allow_remote, char *out, size_t cap,
			   qw_err *err)
{
	const char *addr = endpoint + 6;
	const char *colon = strrchr(addr, ':');
	const char *close = strrchr(addr, ']');
	if (!colon || (close && close > colon))
		return qw_fail(err, QW_E_ARG, "socket %s: no port (tcp://HOST:PORT)", endpoint);
	const char *port_s = colon + 1;
	char *end;
	long port = strtol(port_s, &end, 10);
	if (*port_s < '0' || *port_s > '9' || *end || port < 1 || port > 65535)
		return qw_fail(err, QW_E_ARG, "socket %s: the port must be a number in 1..65535 that "
			       "clients can find, not '%s'", endpoint, port_s);
	char host[256];
	size_t hlen = (size_t)(colon - addr);
	if (hlen >= sizeof host)
		return qw_fail(err, QW_E_ARG, "socket %s: the host is too long", endpoint);
	memcpy(host, addr, hlen);
	host[hlen] = '\0';
	if (host[0] == '[') {
		if (hlen < 2 || host[hlen - 1] != ']')
			return qw_fail(err, QW_E_ARG, "socket %s: unbalanced [ ] around the host",
				       endpoint);
		memmove(host, host + 1, hlen - 2);
		host[hlen - 2] = '\0';
	}
	if (strpbrk(host, ";[]/ "))
		return qw_fail(err, QW_E_ARG, "socket %s: '%s' is not a host to bind", endpoint,
			       host);
	host_kind kind = classify(host);
	if (!allow_remote && kind == HOST_REMOTE)
		return qw_fail(err, QW_E_ARG, "socket %s: binding '%s' would let other machines "
			       "submit requests and shut qwend down; qwend binds tcp only when the "
			       "allow-remote setting is yes\nHINT: use ipc:///PATH (a socket file, "
			       "guarded by its permissions), or set allow-remote yes", endpoint, host);
	if (!allow_remote)
		return qw_fail(err, QW_E_ARG, "socket %s: a tcp socket has no access control: "
			       "every user of this machine could submit requests and shut qwend "
			       "down; qwend binds tcp only when the allow-remote setting is yes\n"
			       "HINT: use ipc:///PATH (a socket file, guarded by its permissions), "
			       "or set allow-remote yes", endpoint);
	if (kind == HOST_ANY) {
		if ((size_t)snprintf(out, cap, "tcp://127.0.0.1:%ld", port) >= cap)
			return qw_fail(err, QW_E_ARG, "socket %s: no room for the result", endpoint);
		return QW_OK;
	}
	if (strlen(endpoint) >= cap)
		return qw_fail(err, QW_E_ARG, "socket %s: no room for the result", endpoint);
	memcpy(out, endpoint, strlen(endpoint) + 1);
	return QW_OK;
}

qw_status qw_endpoint_check_bind(const char *endpoint, bool allow_remote, char *out,
				 size_t cap, qw_err *err)
{
	if (cap)
		out[0] = '\0';
	const char *sep = strstr(endpoint, "://");
	if (!sep || sep == endpoint)
		return qw_fail(err, QW_E_ARG, "socket '%s' is not a ZeroMQ endpoint\nHINT: "
			       "ipc:///PATH (a socket file) or tcp://127.0.0.1:PORT", endpoint);
	if (strncmp(endpoint, "tcp://", 6) == 0)
		return check_tcp(endpoint, allow_remote, out, cap, err);
	if (strncmp(endpoint, "ipc://", 6) != 0)
		return qw_fail(err, QW_E_ARG, "socket %s: qwend serves clients over ipc:// or tcp://, "
			       "not %.*s://", endpoint, (int)(sep - endpoint), endpoint);
	const char *path = endpoint + 6;
	if (!*path || strcmp(path, "*") == 0)
		return qw_fail(err, QW_E_ARG, "socket %s: name the socket file (ipc:///PATH) so "
			       "clients can find it", endpoint);
	if (strlen(path) > QW_IPC_PATH_MAX)
		return qw_fail(err, QW_E_ARG, "socket %s: the path is %zu bytes; a Unix socket path "
			       "holds at most %d", endpoint, strlen(path), QW_IPC_PATH_MAX);
	if (path[0] == '@' && !allow_remote)
		return qw_fail(err, QW_E_ARG, "socket %s: an abstract socket has no file "
			       "permissions: every user of this machine could submit requests and "
			       "shut qwend down; qwend binds one only when the allow-remote setting "
			       "is yes\nHINT: use ipc:///PATH (a socket file, guarded by its "
			       "permissions), or set allow-remote yes", endpoint);
	if (strlen(endpoint) >= cap)
		return qw_fail(err, QW_E_ARG, "socket %s: no room for the result", endpoint);
	memcpy(out, endpoint, strlen(endpoint) + 1);
	return QW_OK;
}

qw_endpoint_reach qw_endpoint_access(const char *endpoint)
{
	if (strncmp(endpoint, "ipc://", 6) == 0)
		return endpoint[6] == '@' ? QW_REACH_LOCAL : QW_REACH_FILE;
	const char *addr = strncmp(endpoint, "tcp://", 6) == 0 ? endpoint + 6 : endpoint;
	const char *colon = strrchr(addr, ':');
	char host[256];
	size_t n = colon ? (size_t)(colon - addr) : strlen(addr);
	if (n >= sizeof host)
		return QW_REACH_NETWORK;
	memcpy(host, addr, n);
	host[n] = '\0';
	if (host[0] == '[' && n >= 2 && host[n - 1] == ']') {
		memmove(host, host + 1, n - 2);
		host[n - 2] = '\0';
	}
	return classify(host) == HOST_REMOTE ? QW_REACH_NETWORK : QW_REACH_LOCAL;
}
