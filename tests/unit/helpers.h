/* helpers.h - what the unit tests share: where fixtures and built programs are, scratch
 * directories, writing small files, running a program and capturing its output, and
 * cmocka include boilerplate.
 *
 * Paths come from the environment the test runner sets (QW_FIXTURES, QW_BIN); the
 * defaults work when a test is run by hand from the repository root.
 */
#ifndef QW_TESTS_HELPERS_H
#define QW_TESTS_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <cmocka.h>

/* tests/fixtures (or $QW_FIXTURES) joined with rel, in one of four rotating static
 * buffers. */
const char *fixture(const char *rel);

/* build/bin/<prog> (or $QW_BIN/<prog>). Returns a static buffer. */
const char *program(const char *prog);

/* A fresh directory under $TMPDIR, removed with everything in it by scratch_free. */
char *scratch_new(void);
void scratch_free(char *dir);

/* dir/name into a static buffer (one of four rotating buffers, so a few can be live). */
const char *path_in(const char *dir, const char *name);

void write_file(const char *path, const void *data, size_t len);
void copy_file(const char *from, const char *to);
/* Whole file into a malloc'd, NUL-terminated buffer; *len gets the size. */
char *read_file(const char *path, size_t *len);

/* Runs a shell command line; returns its exit status and its stdout+stderr (malloc'd). */
int run_capture(char **output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Starts build/bin/<prog> with args (NULL-terminated, argv[0] not included) and env entries
 * NAME=VALUE (NULL-terminated, may be NULL), its stdout and stderr into the file log;
 * returns its pid.  It gets SIGTERM when the test program ends (PR_SET_PDEATHSIG), so a
 * failed test leaves nothing running. */
pid_t spawn_program(const char *prog, const char *const *args, const char *const *env,
		    const char *log);

/* Waits up to timeout_s for pid to exit; past that it is killed and *killed set (killed may
 * be NULL).  Returns its wait status. */
int wait_exit(pid_t pid, double timeout_s, bool *killed);
/* Runs build/bin/<prog> with args to its exit (up to timeout_s); returns its wait status
 * and its output (malloc'd) in *out. */
int run_program(const char *prog, const char *const *args, double timeout_s, char **out);

/* systemd-analyze verify on the unit file (relative to the repository), its ExecStart
 * pointed at this build's prog; a note and nothing more where systemd-analyze is missing. */
void verify_unit(const char *unit, const char *prog);

/* Edits one tensor's bytes while a model is copied. */
typedef void (*tensor_edit_fn)(const char *name, int dtype, void *bytes, uint64_t nbytes,
			       void *ctx);

/* A scratch copy of the model directory model_dir (config.json if any, one model.safetensors)
 * with every tensor passed through edit (may be NULL).  Free with scratch_free. */
char *copy_model(const char *model_dir, tensor_edit_fn edit, void *ctx);

/* An edit for copy_model: adds delta to element `index` of the BF16 tensor named `tensor`. */
typedef struct perturb {
	const char *tensor;
	int index;
	float delta;
} perturb;
void perturb_bf16(const char *name, int dtype, void *bytes, uint64_t nbytes, void *ctx);

/* Makes be's KV cache ignore the writes of one-token steps past a sequence's start (a cache
 * that stops updating once the prompt is in), or, with on false, repairs it. */
struct qw_backend;
void kv_stale_after_prompt(struct qw_backend *be, bool on);

/* Bytes in memory. */
typedef struct membuf {
	uint8_t *p;
	size_t n;
} membuf;

/* A PNG of img (8-bit RGB) in colour type `type` (libpng's PNG_COLOR_TYPE_RGB, _RGBA with a
 * made-up alpha, or _GRAY from the red channel); free m.p. */
struct qw_image;
membuf encode_png(const struct qw_image *img, int type);

/* Fails the test unless haystack contains needle, printing both. */
#define assert_contains(haystack, needle) assert_contains_at(haystack, needle, __FILE__, __LINE__)
void assert_contains_at(const char *haystack, const char *needle, const char *file, int line);

#endif
