/* endpoint.h - where qwend listens for clients and where clients look for it.
 *
 * Owns: the default endpoint of the daemon (qw_endpoint_daemon_default) and of a client
 * (qw_endpoint_client_default), the bind check that keeps the daemon on a socket file, whose
 * permissions say who may talk to it, unless allow-remote says otherwise
 * (qw_endpoint_check_bind), who can reach an endpoint (qw_endpoint_access), and the socket
 * file of an ipc endpoint (qw_endpoint_ipc_path).  The environment is passed in
 * (qw_endpoint_env) so every rule can be tested; qw_endpoint_env_current reads the
 * process's own.
 */
#ifndef QW_IPC_ENDPOINT_H
#define QW_IPC_ENDPOINT_H

#include <stdbool.h>
#include <stddef.h>

#include "loader/error.h"

#define QW_ENDPOINT_MAX 1024                       /* bytes of an endpoint, NUL included */
#define QW_SYSTEM_SOCKET "/run/qwend/qwend.sock"   /* the system daemon's socket */
#define QW_SOCKET_NAME "qwend.sock"                /* the socket's name in a runtime dir */
#define QW_IPC_PATH_MAX 107                        /* sun_path less its NUL */

typedef struct qw_endpoint_env {
	const char *runtime_directory; /* $RUNTIME_DIRECTORY (systemd RuntimeDirectory=,
					* colon-separated), or NULL */
	const char *xdg_runtime_dir;   /* $XDG_RUNTIME_DIR, or NULL */
	bool root;                     /* the effective user is root */
	const char *system_socket;     /* the system socket's path; NULL: QW_SYSTEM_SOCKET */
} qw_endpoint_env;

/* The environment of this process (getenv, geteuid); the strings are the environment's. */
qw_endpoint_env qw_endpoint_env_current(void);

/* Where qwend binds when no socket is configured: ipc://$RUNTIME_DIRECTORY/qwend.sock
 * (its first entry), else the system socket when root, else ipc://$XDG_RUNTIME_DIR/qwend.sock.
 * Unset, empty and relative directories count as absent; with none of them it fails
 * (QW_E_ARG, with a HINT to configure the socket).  out holds cap bytes. */
qw_status qw_endpoint_daemon_default(const qw_endpoint_env *env, char *out, size_t cap,
				     qw_err *err);

/* Where a client looks when not told: the system socket if that file exists, else
 * ipc://$XDG_RUNTIME_DIR/qwend.sock, else the system socket.  Always fills out. */
void qw_endpoint_client_default(const qw_endpoint_env *env, char *out, size_t cap);

/* Checks an endpoint the daemon is about to bind and writes the one to bind into out:
 *   ipc://PATH is kept as it is (PATH not empty, not *, at most QW_IPC_PATH_MAX bytes): the
 *   socket file's permissions say who may connect;
 *   endpoints no file guards are refused unless allow_remote, naming the endpoint, who could
 *   connect and the allow-remote setting: an abstract socket (ipc://@NAME) and any tcp
 *   endpoint, loopback included (every local user could submit requests and shut qwend
 *   down; beyond loopback, every machine that reaches it);
 *   with allow_remote, a wildcard host ("*", or none as in tcp://:P) and localhost become
 *   127.0.0.1 (tcp://:5555 binds tcp://127.0.0.1:5555), other addresses are kept;
 *   other transports (inproc, pgm, epgm, vmci, ...) and malformed endpoints are refused.
 * The port must be 1..65535.  Errors are QW_E_ARG. */
qw_status qw_endpoint_check_bind(const char *endpoint, bool allow_remote, char *out,
				 size_t cap, qw_err *err);

/* Whether host (an address without brackets, or "localhost") is this machine's loopback:
 * 127.0.0.0/8, ::1, ::ffff:127.x.y.z, the lo interface.  qwen-http's --host is held to
 * the same rule as qwend's endpoints. */
bool qw_endpoint_host_is_loopback(const char *host);

/* An endpoint as a person writes it (--socket, the socket setting) into out: TRANSPORT://...
 * is kept as it is, anything else is the path of a Unix socket and becomes ipc://PATH.
 * False (out "") when the result does not fit in cap. */
bool qw_endpoint_from_arg(const char *arg, char *out, size_t cap);

/* Who can connect to an endpoint that passed qw_endpoint_check_bind. */
typedef enum qw_endpoint_reach {
	QW_REACH_FILE,       /* ipc://PATH: whoever the socket file's permissions let in */
	QW_REACH_LOCAL,      /* loopback tcp, abstract ipc: every user of this machine */
	QW_REACH_NETWORK,    /* tcp on another address: every machine that can reach it */
} qw_endpoint_reach;

qw_endpoint_reach qw_endpoint_access(const char *endpoint);

/* The filesystem path of an ipc:// endpoint, into out; false (out "") when the endpoint is
 * not ipc://, names an abstract socket (ipc://@name), or does not fit. */
bool qw_endpoint_ipc_path(const char *endpoint, char *out, size_t cap);

#endif
