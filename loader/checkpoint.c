/* checkpoint.c - open a single-file or sharded safetensors checkpoint.  See checkpoint.h. */
#include "loader/checkpoint.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int cmp_tensor_ptr_name(const void *a, const void *b)
{
	return strcmp((*(const qw_tensor *const *)a)->name, (*(const qw_tensor *const *)b)->name);
}

static char *path_join(const char *dir, const char *name)
{
	size_t len = strlen(dir) + strlen(name) + 2;
	char *p = malloc(len);
	if (p)
		snprintf(p, len, "%s/%s", dir, name);
	return p;
}

/* Adds shard `name` to c->files unless present; returns its index or -1 with err set. */
static long add_shard(qw_checkpoint *c, const char *name, const char *first_tensor, qw_err *err)
{
	for (size_t i = 0; i < c->n_files; i++) {
		const char *base = strrchr(c->files[i]->path, '/');
		if (strcmp(base ? base + 1 : c->files[i]->path, name) == 0)
			return (long)i;
	}
	if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
		qw_fail(err, QW_E_INDEX, "%s/%s: tensor '%s' names shard '%s', which is not a "
			"plain file name in the model directory", c->dir, QW_ST_INDEX, first_tensor,
			name);
		return -1;
	}
	char *path = path_join(c->dir, name);
	if (!path) {
		qw_fail(err, QW_E_NOMEM, "out of memory");
		return -1;
	}
	if (access(path, F_OK) != 0) {
		qw_fail(err, QW_E_INDEX, "%s/%s names shard '%s' (for tensor '%s'), but %s is "
			"missing: %s\nHINT: a shard of this checkpoint was not downloaded", c->dir,
			QW_ST_INDEX, name, first_tensor, path, strerror(errno));
		free(path);
		return -1;
	}
	qw_st_file **grown = realloc(c->files, (c->n_files + 1) * sizeof *grown);
	if (!grown) {
		free(path);
		qw_fail(err, QW_E_NOMEM, "out of memory");
		return -1;
	}
	c->files = grown;
	qw_status st = qw_st_open(path, &c->files[c->n_files], err);
	free(path);
	if (st != QW_OK)
		return -1;
	return (long)c->n_files++;
}

static qw_status open_sharded(qw_checkpoint *c, const char *index_path, qw_err *err)
{
	json_error_t jerr;
	json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return qw_fail(err, QW_E_INDEX, "%s: not valid JSON (line %d: %s)", index_path,
			       jerr.line, jerr.text);
	qw_status st = QW_OK;
	json_t *map = json_object_get(root, "weight_map");
	if (!json_is_object(map) || json_object_size(map) == 0) {
		st = qw_fail(err, QW_E_INDEX, "%s: needs a non-empty object 'weight_map'",
			     index_path);
		goto out;
	}
	size_t listed = 0;
	const char *name;
	json_t *shard;
	json_object_foreach(map, name, shard) {
		if (!json_is_string(shard)) {
			st = qw_fail(err, QW_E_INDEX, "%s: weight_map['%s'] is not a string",
				     index_path, name);
			goto out;
		}
		long fi = add_shard(c, json_string_value(shard), name, err);
		if (fi < 0) {
			st = err ? err->code : QW_E_INDEX;
			goto out;
		}
		if (!qw_st_find(c->files[fi], name)) {
			st = qw_fail(err, QW_E_INDEX, "%s places tensor '%s' in %s, which does not "
				     "hold it", index_path, name, c->files[fi]->path);
			goto out;
		}
		listed++;
	}
	size_t held = 0;
	for (size_t i = 0; i < c->n_files; i++)
		held += c->files[i]->n_tensors;
	if (held != listed) {
		/* find one unlisted tensor to name */
		for (size_t i = 0; i < c->n_files; i++)
			for (size_t j = 0; j < c->files[i]->n_tensors; j++) {
				const char *tn = c->files[i]->tensors[j].name;
				json_t *where = json_object_get(map, tn);
				const char *base = strrchr(c->files[i]->path, '/');
				if (!where || strcmp(json_string_value(where), base + 1) != 0) {
					st = qw_fail(err, QW_E_INDEX, "%s holds tensor '%s', which %s "
						     "does not place there", c->files[i]->path, tn,
						     index_path);
					goto out;
				}
			}
	}
out:
	json_decref(root);
	return st;
}

static qw_status build_table(qw_checkpoint *c, qw_err *err)
{
	size_t n = 0;
	for (size_t i = 0; i < c->n_files; i++)
		n += c->files[i]->n_tensors;
	c->tensors = malloc((n ? n : 1) * sizeof *c->tensors);
	if (!c->tensors)
		return qw_fail(err, QW_E_NOMEM, "out of memory for %zu tensors", n);
	for (size_t i = 0; i < c->n_files; i++)
		for (size_t j = 0; j < c->files[i]->n_tensors; j++) {
			c->tensors[c->n_tensors++] = &c->files[i]->tensors[j];
			c->total_bytes += c->files[i]->tensors[j].nbytes;
		}
	qsort(c->tensors, n, sizeof *c->tensors, cmp_tensor_ptr_name);
	for (size_t i = 1; i < n; i++)
		if (strcmp(c->tensors[i - 1]->name, c->tensors[i]->name) == 0)
			return qw_fail(err, QW_E_INDEX, "tensor '%s' appears in both %s and %s",
				       c->tensors[i]->name, c->tensors[i - 1]->file->path,
				       c->tensors[i]->file->path);
	return QW_OK;
}

qw_status qw_ckpt_open(const char *dir, qw_checkpoint **out, qw_err *err)
{
	*out = NULL;
	qw_checkpoint *c = calloc(1, sizeof *c);
	if (!c || !(c->dir = strdup(dir))) {
		free(c);
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	}
	char *index = path_join(dir, QW_ST_INDEX), *single = path_join(dir, QW_ST_SINGLE);
	qw_status st = QW_OK;
	if (!index || !single) {
		st = qw_fail(err, QW_E_NOMEM, "out of memory");
	} else if (access(index, F_OK) == 0) {
		c->sharded = true;
		st = open_sharded(c, index, err);
	} else if (access(single, F_OK) == 0) {
		c->files = calloc(1, sizeof *c->files);
		st = c->files ? qw_st_open(single, &c->files[0], err)
			      : qw_fail(err, QW_E_NOMEM, "out of memory");
		c->n_files = (st == QW_OK);
	} else {
		st = qw_fail(err, QW_E_IO, "%s: neither %s nor %s is there\nHINT: pass the "
			     "directory that holds the model's config.json and weights", dir,
			     QW_ST_SINGLE, QW_ST_INDEX);
	}
	if (st == QW_OK)
		st = build_table(c, err);
	free(index);
	free(single);
	if (st != QW_OK) {
		qw_ckpt_close(c);
		return st;
	}
	*out = c;
	return QW_OK;
}

qw_status qw_ckpt_from_files(const char *label, qw_st_file **files, size_t n,
			    qw_checkpoint **out, qw_err *err)
{
	*out = NULL;
	qw_checkpoint *c = calloc(1, sizeof *c);
	if (!c || !(c->dir = strdup(label))) {
		free(c);
		for (size_t i = 0; i < n; i++)
			qw_st_close(files[i]);
		free(files);
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	}
	c->files = files;
	c->n_files = n;
	c->sharded = n > 1;
	qw_status st = build_table(c, err);
	if (st != QW_OK) {
		qw_ckpt_close(c);
		return st;
	}
	*out = c;
	return QW_OK;
}

const qw_tensor *qw_ckpt_find(const qw_checkpoint *c, const char *name)
{
	qw_tensor key = {.name = (char *)name};
	const qw_tensor *kp = &key;
	const qw_tensor **hit = bsearch(&kp, c->tensors, c->n_tensors, sizeof *c->tensors,
					cmp_tensor_ptr_name);
	return hit ? *hit : NULL;
}

void qw_ckpt_close(qw_checkpoint *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_files; i++)
		qw_st_close(c->files[i]);
	free(c->files);
	free(c->tensors);
	free(c->dir);
	free(c);
}

// ---------------------------------------------------------------------------------------
// what a model directory is, and what people give instead

/* ORG/NAME with the hub's characters, not a path that looks like one (/x, ./x, ~/x). */
static bool hub_id(const char *s)
{
	const char *slash = strchr(s, '/');
	if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/') || s[0] == '.' ||
	    s[0] == '~')
		return false;
	for (const char *p = s; *p; p++)
		if (!(*p == '/' || *p == '-' || *p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
		      (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
			return false;
	return true;
}

qw_status qw_model_dir_check(const char *path, qw_err *err)
{
	struct stat st;
	if (stat(path, &st) != 0) {
		if (errno == ENOENT && hub_id(path))
			return qw_fail(err, QW_E_IO, "%s: no such directory; it looks like a Hugging "
				       "Face hub id, but models are read from a local directory and "
				       "nothing is downloaded\nHINT: download it first (hf download %s "
				       "--local-dir DIR) and give that DIR", path, path);
		return qw_fail(err, QW_E_IO, "%s: %s\nHINT: give the model's directory, the one "
			       "that holds config.json and the *.safetensors", path, strerror(errno));
	}
	if (!S_ISDIR(st.st_mode)) {
		char dir[4096];
		snprintf(dir, sizeof dir, "%s", path);
		char *slash = strrchr(dir, '/');
		if (slash)
			*(slash == dir ? slash + 1 : slash) = '\0';
		else
			snprintf(dir, sizeof dir, ".");
		return qw_fail(err, QW_E_IO, "%s: a file, not a directory; a model is the directory "
			       "that holds config.json and the *.safetensors\nHINT: give %s", path, dir);
	}
	char config[4200];
	snprintf(config, sizeof config, "%s/config.json", path);
	if (stat(config, &st) != 0)
		return qw_fail(err, QW_E_IO, "%s holds no config.json, so it is not a model "
			       "directory\nHINT: give the directory HF's download made (config.json, "
			       "*.safetensors, tokenizer.json)", path);
	return QW_OK;
}
