/* demo.c - the built-in demo model, generated into a cache directory.  See demo.h. */
#include "daemon/demo.h"

#define ZLIB_CONST
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "loader/export.h"

/* demo_blobs.c: the gzipped tokenizer files, [start, end) each */
extern const unsigned char qw_demo_tokenizer_json_gz[], qw_demo_tokenizer_json_gz_end[];
extern const unsigned char qw_demo_tokenizer_config_gz[], qw_demo_tokenizer_config_gz_end[];

// ---------------------------------------------------------------------------------------
// what the model is

/* Qwen3-VL-235B-A22B-Thinking's config.json, as published (key order kept). */
static const char base_config[] =
	"{\"architectures\": [\"Qwen3VLMoeForConditionalGeneration\"], "
	"\"image_token_id\": 151655, \"model_type\": \"qwen3_vl_moe\", "
	"\"text_config\": {\"attention_bias\": false, \"attention_dropout\": 0.0, "
	"\"bos_token_id\": 151643, \"eos_token_id\": 151645, \"head_dim\": 128, "
	"\"hidden_act\": \"silu\", \"hidden_size\": 4096, \"initializer_range\": 0.02, "
	"\"intermediate_size\": 12288, \"max_position_embeddings\": 262144, "
	"\"model_type\": \"qwen3_vl_moe_text\", \"num_attention_heads\": 64, "
	"\"num_hidden_layers\": 94, \"num_key_value_heads\": 4, \"rms_norm_eps\": 1e-06, "
	"\"rope_scaling\": {\"mrope_interleaved\": true, \"mrope_section\": [24, 20, 20], "
	"\"rope_type\": \"default\"}, \"rope_theta\": 5000000, \"use_cache\": true, "
	"\"vocab_size\": 151936, \"dtype\": \"bfloat16\", \"decoder_sparse_step\": 1, "
	"\"mlp_only_layers\": [], \"moe_intermediate_size\": 1536, \"norm_topk_prob\": true, "
	"\"num_experts\": 128, \"num_experts_per_tok\": 8}, \"tie_word_embeddings\": false, "
	"\"transformers_version\": \"4.57.0.dev0\", \"video_token_id\": 151656, "
	"\"vision_config\": {\"deepstack_visual_indexes\": [8, 16, 24], \"depth\": 27, "
	"\"hidden_act\": \"gelu_pytorch_tanh\", \"hidden_size\": 1152, \"in_channels\": 3, "
	"\"initializer_range\": 0.02, \"intermediate_size\": 4304, "
	"\"model_type\": \"qwen3_vl_moe\", \"num_heads\": 16, \"num_position_embeddings\": 2304, "
	"\"out_hidden_size\": 4096, \"patch_size\": 16, \"spatial_merge_size\": 2, "
	"\"temporal_patch_size\": 2}, \"vision_end_token_id\": 151653, "
	"\"vision_start_token_id\": 151652}";

/* The sizes cut down; the vocabulary and the special token ids stay the real ones.  The
 * fused experts are [8, 128, 96] and [8, 48, 128]: not square, so transformers loads them. */
static void demo_opts(qw_export_opts *o)
{
	qw_export_opts_default(o);
	o->ov[QW_EXPORT_OV_LAYERS] = 4;
	o->ov[QW_EXPORT_OV_HIDDEN] = 128;
	o->ov[QW_EXPORT_OV_HEADS] = 4;
	o->ov[QW_EXPORT_OV_KV_HEADS] = 2;
	o->ov[QW_EXPORT_OV_HEAD_DIM] = 32;
	o->ov[QW_EXPORT_OV_INTER] = 256;          /* no dense layer uses it; kept in proportion */
	o->ov[QW_EXPORT_OV_MOE_INTER] = 48;
	o->ov[QW_EXPORT_OV_EXPERTS] = 8;
	o->ov[QW_EXPORT_OV_TOP_K] = 2;
	o->ov[QW_EXPORT_OV_VISION_DEPTH] = 4;     /* deepstack blocks 8, 16, 24 of 27 -> 1, 2, 3 */
	o->ov[QW_EXPORT_OV_VISION_HIDDEN] = 64;
	o->seed = QW_DEMO_SEED;
}

static const char generation_config[] =
	"{\n"
	"  \"bos_token_id\": 151643,\n"
	"  \"eos_token_id\": [\n"
	"    151645,\n"
	"    151643\n"
	"  ],\n"
	"  \"pad_token_id\": 151643\n"
	"}\n";

/* The files of a complete directory, as the marker lists them. */
static const char *const demo_files[] = {
	"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
	"generation_config.json"};
#define N_DEMO_FILES (sizeof demo_files / sizeof demo_files[0])

// ---------------------------------------------------------------------------------------
// the cache root

static const char *env_nonempty(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

/* The default root; *fallback says whether it is the shared /tmp one. */
static qw_status default_root(char *root, size_t cap, bool *fallback, qw_err *err)
{
	const char *v;
	int n;
	*fallback = false;
	if ((v = env_nonempty("QWEN_DEMO_DIR"))) {
		n = snprintf(root, cap, "%s", v);
	} else if ((v = env_nonempty("CACHE_DIRECTORY")) && *v != ':') {
		n = snprintf(root, cap, "%.*s", (int)strcspn(v, ":"), v);
	} else if ((v = env_nonempty("XDG_CACHE_HOME")) && *v == '/') {
		n = snprintf(root, cap, "%s/qwen-vl", v);
	} else if ((v = env_nonempty("HOME"))) {
		n = snprintf(root, cap, "%s/.cache/qwen-vl", v);
	} else {
		*fallback = true;
		n = snprintf(root, cap, "/tmp/qwen-vl-%u", (unsigned)getuid());
	}
	if (n < 0 || (size_t)n >= cap)
		return qw_fail(err, QW_E_ARG, "demo model cache root: the path does not fit in %zu "
			       "bytes", cap);
	return QW_OK;
}

qw_status qw_demo_cache_root(char *root, size_t cap, qw_err *err)
{
	bool fallback;
	return default_root(root, cap, &fallback, err);
}

/* mkdir -p with mode for the last component (parents 0755): 0, or -1 with errno set. */
static int mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf + 1; *p; p++)
		if (*p == '/' && p[1] && p[-1] != '/') {
			*p = '\0';
			if (mkdir(buf, 0755) != 0 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	return mkdir(buf, mode) != 0 && errno != EEXIST ? -1 : 0;
}

/* Creates root if needed and checks it is a directory (for the /tmp fallback: a private one
 * of this user's). */
static qw_status prepare_root(const char *root, bool fallback, qw_err *err)
{
	static const char hint[] = "\nHINT: set QWEN_DEMO_DIR to a writable directory";
	if (mkdir_p(root, fallback ? 0700 : 0755) != 0)
		return qw_fail(err, QW_E_IO, "demo model cache %s: cannot create: %s%s", root,
			       strerror(errno), hint);
	struct stat st;
	if (lstat(root, &st) != 0)
		return qw_fail(err, QW_E_IO, "demo model cache %s: %s%s", root, strerror(errno), hint);
	if (S_ISLNK(st.st_mode) && !fallback && stat(root, &st) != 0)
		return qw_fail(err, QW_E_IO, "demo model cache %s: %s%s", root, strerror(errno), hint);
	if (!S_ISDIR(st.st_mode))
		return qw_fail(err, QW_E_IO, "demo model cache %s: not a directory%s", root, hint);
	if (fallback && st.st_uid != getuid())
		return qw_fail(err, QW_E_IO, "demo model cache %s belongs to uid %u, not to this "
			       "user (uid %u)%s", root, (unsigned)st.st_uid, (unsigned)getuid(), hint);
	if (fallback && (st.st_mode & 077) && chmod(root, 0700) != 0)
		return qw_fail(err, QW_E_IO, "demo model cache %s: cannot make it private: %s%s",
			       root, strerror(errno), hint);
	return QW_OK;
}

// ---------------------------------------------------------------------------------------
// writing the files

/* fflush, fsync, fclose; an error names path. */
static qw_status finish_file(FILE *f, const char *path, qw_err *err)
{
	bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
	int saved = errno;
	if (fclose(f) != 0 && ok) {
		ok = false;
		saved = errno;
	}
	return ok ? QW_OK : qw_fail(err, QW_E_IO, "%s: write failed: %s", path, strerror(saved));
}

static qw_status write_text(const char *dir, const char *name, const char *text, qw_err *err)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f)
		return qw_fail(err, QW_E_IO, "%s: cannot create: %s", path, strerror(errno));
	size_t n = strlen(text);
	if (fwrite(text, 1, n, f) != n) {
		int saved = errno;
		fclose(f);
		return qw_fail(err, QW_E_IO, "%s: write failed: %s", path, strerror(saved));
	}
	return finish_file(f, path, err);
}

/* Inflates the gzip data [gz, gz_end) into dir/name. */
static qw_status write_gunzipped(const char *dir, const char *name, const unsigned char *gz,
				 const unsigned char *gz_end, qw_err *err)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	z_stream zs;
	memset(&zs, 0, sizeof zs);
	if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)      /* 16: a gzip header */
		return qw_fail(err, QW_E_NOMEM, "%s: cannot start zlib", path);
	FILE *f = fopen(path, "wb");
	if (!f) {
		inflateEnd(&zs);
		return qw_fail(err, QW_E_IO, "%s: cannot create: %s", path, strerror(errno));
	}
	zs.next_in = gz;
	zs.avail_in = (uInt)((uintptr_t)gz_end - (uintptr_t)gz);
	unsigned char out[1 << 16];
	int ret;
	qw_status st = QW_OK;
	do {
		zs.next_out = out;
		zs.avail_out = sizeof out;
		ret = inflate(&zs, Z_NO_FLUSH);
		if (ret != Z_OK && ret != Z_STREAM_END) {
			/* the build embedded these bytes: only a broken build gets here */
			st = qw_fail(err, QW_E_IO, "%s: the embedded copy does not inflate (zlib %d: "
				     "%s)", path, ret, zs.msg ? zs.msg : "truncated");
			break;
		}
		size_t n = sizeof out - zs.avail_out;
		if (fwrite(out, 1, n, f) != n) {
			st = qw_fail(err, QW_E_IO, "%s: write failed: %s", path, strerror(errno));
			break;
		}
	} while (ret != Z_STREAM_END);
	inflateEnd(&zs);
	if (st != QW_OK) {
		fclose(f);
		return st;
	}
	return finish_file(f, path, err);
}

/* The marker's text for the files now in dir into buf; false if one is missing or not a
 * regular file. */
static bool marker_text(const char *dir, char *buf, size_t cap)
{
	size_t at = (size_t)snprintf(buf, cap, "qwen-vl %s\n", QW_DEMO_NAME);
	for (size_t i = 0; i < N_DEMO_FILES && at < cap; i++) {
		char path[4200];
		struct stat st;
		snprintf(path, sizeof path, "%s/%s", dir, demo_files[i]);
		if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
			return false;
		at += (size_t)snprintf(buf + at, cap - at, "%lld %s\n", (long long)st.st_size,
				       demo_files[i]);
	}
	return at < cap;
}

bool qw_demo_model_complete(const char *dir)
{
	char want[1024], got[1025], path[4200];
	if (!marker_text(dir, want, sizeof want))
		return false;
	snprintf(path, sizeof path, "%s/%s", dir, QW_DEMO_MARKER);
	FILE *f = fopen(path, "rb");
	if (!f)
		return false;
	size_t n = fread(got, 1, sizeof got - 1, f);
	fclose(f);
	got[n] = '\0';
	return strcmp(want, got) == 0;
}

/* Every file of the demo model into dir (which exists), the marker last. */
static qw_status write_demo(const char *dir, qw_err *err)
{
	qw_status st;
	if ((st = write_gunzipped(dir, "tokenizer.json", qw_demo_tokenizer_json_gz,
				  qw_demo_tokenizer_json_gz_end, err)) != QW_OK ||
	    (st = write_gunzipped(dir, "tokenizer_config.json", qw_demo_tokenizer_config_gz,
				  qw_demo_tokenizer_config_gz_end, err)) != QW_OK ||
	    (st = write_text(dir, "generation_config.json", generation_config, err)) != QW_OK)
		return st;
	qw_export_opts o;
	demo_opts(&o);
	if ((st = qw_export_reduced(base_config, sizeof base_config - 1,
				    "the demo model's built-in config", &o, dir, NULL, err)) != QW_OK)
		return qw_err_context(err, "generating the demo model in %s", dir);
	char marker[1024];
	if (!marker_text(dir, marker, sizeof marker))
		return qw_fail(err, QW_E_IO, "%s: a file of the demo model vanished while it was "
			       "written", dir);
	return write_text(dir, QW_DEMO_MARKER, marker, err);
}

// ---------------------------------------------------------------------------------------
// the directory's life cycle

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path) != 0 && errno != ENOENT ? -1 : 0;
}

/* rm -rf path (no error if it is gone already). */
static int remove_tree(const char *path)
{
	int rc = nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	return rc != 0 && errno == ENOENT ? 0 : rc;
}

/* fsync of a directory, so a rename in it lasts; failures only cost durability. */
static void sync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

/* Removes what crashed generations left in root (<name>.tmp.* and <name>.old.*).  Only
 * called with the lock held, when no other generation can be running. */
static void remove_leftovers(const char *root)
{
	DIR *d = opendir(root);
	if (!d)
		return;
	const char *prefixes[] = {QW_DEMO_NAME ".tmp.", QW_DEMO_NAME ".old."};
	struct dirent *e;
	while ((e = readdir(d)))
		for (int i = 0; i < 2; i++)
			if (strncmp(e->d_name, prefixes[i], strlen(prefixes[i])) == 0) {
				char path[4200];
				snprintf(path, sizeof path, "%s/%s", root, e->d_name);
				remove_tree(path);
			}
	closedir(d);
}

/* With the lock held: generates into a temporary directory and renames it to final,
 * moving an incomplete final out of the way first. */
static qw_status generate(const char *root, const char *final, qw_err *err)
{
	remove_leftovers(root);
	char tmp[4200], old[4200];
	snprintf(tmp, sizeof tmp, "%s/%s.tmp.XXXXXX", root, QW_DEMO_NAME);
	if (!mkdtemp(tmp))
		return qw_fail(err, QW_E_IO, "%s: cannot create a directory in it: %s\nHINT: set "
			       "QWEN_DEMO_DIR to a writable directory", root, strerror(errno));
	qw_status st = write_demo(tmp, err);
	if (st == QW_OK && chmod(tmp, 0755) != 0)
		st = qw_fail(err, QW_E_IO, "%s: chmod: %s", tmp, strerror(errno));
	if (st == QW_OK) {
		sync_dir(tmp);
		struct stat sb;
		snprintf(old, sizeof old, "%s/%s.old.%ld", root, QW_DEMO_NAME, (long)getpid());
		if (lstat(final, &sb) == 0 && rename(final, old) != 0)
			st = qw_fail(err, QW_E_IO, "%s is incomplete and cannot be moved aside: %s\n"
				     "HINT: remove it", final, strerror(errno));
		else
			remove_tree(old);
	}
	if (st == QW_OK && rename(tmp, final) != 0)
		st = qw_fail(err, QW_E_IO, "%s: cannot rename %s into place: %s", final, tmp,
			     strerror(errno));
	if (st == QW_OK)
		sync_dir(root);
	else
		remove_tree(tmp);
	return st;
}

qw_status qw_demo_model_ensure(const char *cache_root, char *dir, size_t cap, qw_err *err)
{
	char root[4096], final[4200], lock[4200];
	bool fallback = false;
	qw_status st;
	if (cache_root) {
		if (!*cache_root)
			return qw_fail(err, QW_E_ARG, "demo model cache root: an empty path");
		snprintf(root, sizeof root, "%s", cache_root);
	} else if ((st = default_root(root, sizeof root, &fallback, err)) != QW_OK) {
		return st;
	}
	if (strlen(root) >= sizeof root - 128)     /* room for the names made inside it */
		return qw_fail(err, QW_E_ARG, "demo model cache root %.64s...: too long", root);
	snprintf(final, sizeof final, "%s/%s", root, QW_DEMO_NAME);
	if (strlen(final) >= cap)
		return qw_fail(err, QW_E_ARG, "demo model directory %s: longer than the %zu bytes "
			       "given for it", final, cap);
	if ((st = prepare_root(root, fallback, err)) != QW_OK)
		return st;
	snprintf(dir, cap, "%s", final);
	if (qw_demo_model_complete(final))
		return QW_OK;

	/* one generator at a time; the others wait here, then find it complete */
	snprintf(lock, sizeof lock, "%s/%s.lock", root, QW_DEMO_NAME);
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return qw_fail(err, QW_E_IO, "%s: cannot create: %s\nHINT: set QWEN_DEMO_DIR to a "
			       "writable directory", lock, strerror(errno));
	int rc;
	while ((rc = flock(fd, LOCK_EX)) != 0 && errno == EINTR)
		;
	if (rc != 0) {
		st = qw_fail(err, QW_E_IO, "%s: cannot lock: %s", lock, strerror(errno));
	} else {
		st = qw_demo_model_complete(final) ? QW_OK : generate(root, final, err);
		flock(fd, LOCK_UN);
	}
	close(fd);
	return st;
}
