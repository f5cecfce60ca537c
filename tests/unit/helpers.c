/* helpers.c - shared test helpers.  See helpers.h. */
#include "tests/unit/helpers.h"

#include "kernels/ops.h"
#include "loader/checkpoint.h"
#include "loader/clock.h"
#include "loader/dtype.h"
#include "loader/st_writer.h"
#include "daemon/image/image.h"

#include <png.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

const char *fixture(const char *rel)
{
	static char bufs[4][4096];
	static int next;
	char *buf = bufs[next++ % 4];
	const char *root = getenv("QW_FIXTURES");
	snprintf(buf, 4096, "%s/%s", root ? root : "tests/fixtures", rel);
	return buf;
}

const char *program(const char *prog)
{
	static char buf[4096];
	const char *bin = getenv("QW_BIN");
	snprintf(buf, sizeof buf, "%s/%s", bin ? bin : "build/bin", prog);
	return buf;
}

char *scratch_new(void)
{
	const char *tmp = getenv("TMPDIR");
	char *dir = malloc(4096);
	assert_non_null(dir);
	snprintf(dir, 4096, "%s/qwtest.XXXXXX", tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(dir));
	return dir;
}

void scratch_free(char *dir)
{
	char cmd[4200];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	free(dir);
}

const char *path_in(const char *dir, const char *name)
{
	static char bufs[4][4096];
	static int next;
	char *buf = bufs[next++ % 4];
	snprintf(buf, 4096, "%s/%s", dir, name);
	return buf;
}

void write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		fail_msg("cannot open %s: %s", path, strerror(errno));
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	assert_true(n >= 0);
	rewind(f);
	char *buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = (size_t)n;
	return buf;
}

void copy_file(const char *from, const char *to)
{
	size_t len;
	char *data = read_file(from, &len);
	write_file(to, data, len);
	free(data);
}

int run_capture(char **output, const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t cap = 65536, len = 0, got;
	char *buf = malloc(cap);
	assert_non_null(buf);
	while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
		len += got;
		if (cap - len < 4096) {
			buf = realloc(buf, cap *= 2);
			assert_non_null(buf);
		}
	}
	buf[len] = '\0';
	int status = pclose(p);
	*output = buf;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void assert_contains_at(const char *haystack, const char *needle, const char *file, int line)
{
	if (!haystack || !strstr(haystack, needle))
		fail_msg("%s:%d: expected to find \"%s\" in:\n%s", file, line, needle,
			 haystack ? haystack : "(null)");
}

typedef struct copy_ctx {
	const qw_checkpoint *src;
	const qw_st_entry *entries;
	tensor_edit_fn edit;
	void *edit_ctx;
} copy_ctx;

static qw_status copy_fill(void *vctx, size_t i, void *buf, uint64_t nbytes, qw_err *err)
{
	const copy_ctx *c = vctx;
	const qw_tensor *t = qw_ckpt_find(c->src, c->entries[i].name);
	memcpy(buf, t->data, nbytes);
	if (c->edit)
		c->edit(t->name, t->dtype, buf, nbytes, c->edit_ctx);
	return QW_OK;
}

char *copy_model(const char *model_dir, tensor_edit_fn edit, void *ctx)
{
	char *dir = scratch_new();
	qw_checkpoint *src;
	qw_err err = {0};
	if (qw_ckpt_open(model_dir, &src, &err) != QW_OK)
		fail_msg("%s", err.msg);
	qw_st_entry *entries = calloc(src->n_tensors, sizeof *entries);
	assert_non_null(entries);
	for (size_t i = 0; i < src->n_tensors; i++) {
		const qw_tensor *t = src->tensors[i];
		entries[i] = (qw_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim};
		memcpy(entries[i].shape, t->shape, sizeof entries[i].shape);
	}
	copy_ctx c = {src, entries, edit, ctx};
	if (qw_st_write(path_in(dir, "model.safetensors"), entries, src->n_tensors, copy_fill, &c,
			&err) != QW_OK)
		fail_msg("%s", err.msg);
	char cfg[4096];
	snprintf(cfg, sizeof cfg, "%s/config.json", model_dir);
	if (access(cfg, F_OK) == 0)
		copy_file(cfg, path_in(dir, "config.json"));
	free(entries);
	qw_ckpt_close(src);
	return dir;
}

void perturb_bf16(const char *name, int dtype, void *bytes, uint64_t nbytes, void *ctx)
{
	const perturb *p = ctx;
	if (strcmp(name, p->tensor) == 0) {
		uint16_t *v = (uint16_t *)bytes + p->index;
		*v = qw_f32_to_bf16(qw_bf16_to_f32(*v) + p->delta);
	}
}

/* the backend's own kv_write while the stale one is installed (tests are single-threaded) */
static qw_status (*real_kv_write)(qw_backend *, qw_kv_cache *, int, const qw_act *, const qw_act *,
				  const qw_batch *, qw_err *);

static qw_status stale_kv_write(qw_backend *b, qw_kv_cache *kv, int layer, const qw_act *k,
				const qw_act *v, const qw_batch *batch, qw_err *err)
{
	if (batch->n_tokens == 1 && batch->kv_index[0] > 0)
		return QW_OK;
	return real_kv_write(b, kv, layer, k, v, batch, err);
}

void kv_stale_after_prompt(qw_backend *be, bool on)
{
	if (on && be->kv_write != stale_kv_write) {
		real_kv_write = be->kv_write;
		be->kv_write = stale_kv_write;
	} else if (!on && be->kv_write == stale_kv_write) {
		be->kv_write = real_kv_write;
	}
}

// ---------------------------------------------------------------------------------------
// images

static void png_write_mem(png_structp png, png_bytep data, png_size_t n)
{
	membuf *m = png_get_io_ptr(png);
	m->p = realloc(m->p, m->n + n);
	memcpy(m->p + m->n, data, n);
	m->n += n;
}

static void png_flush_mem(png_structp png)
{
	(void)png;
}

membuf encode_png(const qw_image *img, int type)
{
	membuf m = {0};
	png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
	png_infop info = png_create_info_struct(png);
	png_set_write_fn(png, &m, png_write_mem, png_flush_mem);
	png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8, type,
		     PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
	png_write_info(png, info);
	int ch = type == PNG_COLOR_TYPE_RGBA ? 4 : type == PNG_COLOR_TYPE_GRAY ? 1 : 3;
	uint8_t *row = malloc((size_t)img->width * 4);
	for (int y = 0; y < img->height; y++) {
		for (int x = 0; x < img->width; x++) {
			const uint8_t *s = img->rgb + ((size_t)y * img->width + x) * 3;
			uint8_t *d = row + (size_t)x * ch;
			if (ch == 1)
				d[0] = s[0];
			else
				memcpy(d, s, 3);
			if (ch == 4)
				d[3] = (uint8_t)(x * 7);
		}
		png_write_row(png, row);
	}
	png_write_end(png, NULL);
	png_destroy_write_struct(&png, &info);
	free(row);
	return m;
}

// ---------------------------------------------------------------------------------------
// programs run by the tests

pid_t spawn_program(const char *prog, const char *const *args, const char *const *env,
		    const char *log)
{
	char exe[1100];
	snprintf(exe, sizeof exe, "%s", program(prog));
	const char *argv[72] = {exe};
	int n = 1;
	for (int i = 0; args && args[i] && n < 70; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* a test that fails skips its stop: the program still ends with the tests */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		for (int i = 0; env && env[i]; i++)
			putenv((char *)env[i]);
		execv(exe, (char **)argv);
		_exit(127);
	}
	return pid;
}

int wait_exit(pid_t pid, double timeout_s, bool *killed)
{
	int status = -1;
	double until = qw_seconds_now() + timeout_s;
	if (killed)
		*killed = false;
	while (waitpid(pid, &status, WNOHANG) != pid) {
		if (qw_seconds_now() > until) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			if (killed)
				*killed = true;
			break;
		}
		usleep(5000);
	}
	return status;
}

int run_program(const char *prog, const char *const *args, double timeout_s, char **out)
{
	char *dir = scratch_new();
	char log[1100];
	snprintf(log, sizeof log, "%s/out.log", dir);
	int status = wait_exit(spawn_program(prog, args, NULL, log), timeout_s, NULL);
	size_t len;
	*out = read_file(log, &len);
	scratch_free(dir);
	return status;
}

void verify_unit(const char *unit, const char *prog)
{
	char *out;
	if (run_capture(&out, "command -v systemd-analyze") != 0) {
		free(out);
		printf("# systemd-analyze is not installed: %s is not verified here\n", unit);
		return;
	}
	free(out);
	char *dir = scratch_new();
	char copy[1100], exe[PATH_MAX], rel[300];
	const char *name = strrchr(unit, '/') ? strrchr(unit, '/') + 1 : unit;
	snprintf(copy, sizeof copy, "%s/%s", dir, name);
	snprintf(rel, sizeof rel, "../../%s", unit);
	assert_non_null(realpath(program(prog), exe));   /* systemd wants an absolute path */
	int rc = run_capture(&out, "sed 's|^ExecStart=[^ ]*|ExecStart=%s|' %s > %s && "
			     "systemd-analyze verify %s", exe, fixture(rel), copy, copy);
	if (rc != 0)
		fail_msg("systemd-analyze verify %s:\n%s", unit, out);
	free(out);
	scratch_free(dir);
}
