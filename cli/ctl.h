/* ctl.h - the parts of qwenctl, the command-line client of qwend.
 *
 * Owns: what every command shares, in ctl_common.c (ctl_common: the endpoint and the time
 * the daemon has for its first answer; the exit statuses; the usage text; the options
 * --socket, --timeout and --help; strict parsing of real-valued flags; turning client
 * failures and error replies into messages and exit statuses; Ctrl-C; the daemon's status)
 * and the commands' entry points: submit (ctl_submit.c), status (ctl_status.c), bench
 * (ctl_bench.c); cancel, shutdown and main are in qwenctl.c.  The commands depend on
 * ctl_common.c, never on qwenctl.c.
 */
#ifndef QW_CLI_CTL_H
#define QW_CLI_CTL_H

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>

#include "cli/client.h"

enum {
	CTL_OK = 0,            /* done */
	CTL_ERROR = 1,         /* the daemon answered with an error */
	CTL_USAGE = 2,         /* bad command line, or a file named on it is unusable */
	CTL_UNREACHABLE = 3,   /* the daemon is not running or does not answer */
	CTL_INTERRUPTED = 130, /* Ctrl-C */
};

enum { CTL_MAX_IMAGES = 16 };   /* images in a request: the protocol's default limit */

typedef struct ctl_common {
	char endpoint[QW_ENDPOINT_MAX]; /* --socket, or the client default */
	int timeout_ms;                 /* --timeout: the daemon's first answer, in ms */
} ctl_common;

/* The long options every command takes; a command's own table ends with CTL_COMMON_OPTIONS
 * and its short-option string includes CTL_COMMON_SHORT. */
#define CTL_COMMON_OPTIONS                                   \
	{"socket", required_argument, NULL, 's'},            \
	{"timeout", required_argument, NULL, 't'},           \
	{"help", no_argument, NULL, 'h'},                    \
	{NULL, 0, NULL, 0}
#define CTL_COMMON_SHORT "s:t:h"

/* A command's short-option string: its own options, then the common ones; the leading ':'
 * makes getopt_long answer ':' for a missing value (opterr is 0: ctl_option_error says what
 * was wrong, once). */
#define CTL_SHORT(own) ":" own CTL_COMMON_SHORT

/* Handles a common option: returns 1 when opt was one, -1 after a bad value (message
 * printed), 0 when opt is not common.  --help prints the usage and exits 0. */
int ctl_common_opt(ctl_common *c, int opt, const char *arg);

/* The whole usage text, every option with its default, to stdout. */
void ctl_print_help(void);

/* After getopt_long answered '?' (an unknown option) or ':' (an option without its value)
 * for command cmd (NULL: before any command): says which option, once, with the short
 * usage; returns CTL_USAGE. */
int ctl_option_error(const char *cmd, char *const *argv, int opt);

/* Prints "qwenctl: MESSAGE" and the short usage to stderr; returns CTL_USAGE. */
int ctl_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parses s as a real number in [lo, hi] (lo excluded when lo_open) for flag into *out;
 * prints why not and returns false. */
bool ctl_arg_real(const char *flag, const char *s, double lo, double hi, bool lo_open,
		  double *out);

/* Prints a failed client call ("qwenctl: MESSAGE") and returns its exit status:
 * CTL_UNREACHABLE for QW_E_IO, CTL_ERROR otherwise. */
int ctl_fail(const qw_err *err);

/* Prints an error reply ("qwenctl: CODE: MESSAGE", with what not_ready and busy mean) and
 * returns CTL_ERROR. */
int ctl_reply_error(const qw_reply *r);

/* Prints a reply of an unexpected type for op and returns CTL_ERROR. */
int ctl_unexpected(const char *op, const qw_reply *r);

/* Opens a client on c's endpoint (printing why not); returns CTL_OK or an exit status. */
int ctl_connect(const ctl_common *c, qw_client *client);

/* Ctrl-C: the first sets ctl_interrupted (a client's wait then ends), the second kills. */
extern volatile sig_atomic_t ctl_interrupted;
void ctl_catch_sigint(void);

/* Reads the file path (stdin when NULL) of at most cap bytes into *out (malloc'd, NUL after
 * the *len bytes); what names it in errors ("--image", "PROMPT"), which it prints. */
bool ctl_read_input(const char *what, const char *path, size_t cap, char **out, size_t *len);

/* Reads an image file (at most the protocol's image size) and checks that it is one qwend
 * decodes (JPEG, PNG or WebP), before it is sent; prints why not, naming the file. */
bool ctl_read_image(const char *what, const char *path, char **out, size_t *len);

/* Asks the daemon for its status: *text the JSON as sent, *obj parsed (an object); both
 * NULL unless CTL_OK.  Prints why not and returns the exit status. */
int ctl_fetch_status(const ctl_common *c, char **text, json_t **obj);

/* submit --messages FILE (ctl_messages.c): a conversation in JSON, as the protocol's
 * messages.  The form is in ctl_messages.c's top comment and qwenctl --help. */
typedef struct ctl_conversation {
	qw_req_message *msgs;        /* (n_msgs,) */
	int n_msgs;
	qw_item *items;              /* every message's items */
	int n_items;
	char *images[CTL_MAX_IMAGES];/* the image files' bytes, which image items point into */
	int n_images;
	json_t *json;                /* the file, which text items point into */
} ctl_conversation;

/* Reads path ("-" for stdin) into c: CTL_OK, or (message printed, nothing held) CTL_USAGE
 * for a file that is not such a conversation or names an image that is not one. */
int ctl_conversation_read(const char *path, ctl_conversation *c);
void ctl_conversation_free(ctl_conversation *c);

/* The commands: argv[0] is the command's name. */
int ctl_submit(ctl_common *c, int argc, char **argv);
int ctl_status(ctl_common *c, int argc, char **argv);
int ctl_bench(ctl_common *c, int argc, char **argv);

#endif
