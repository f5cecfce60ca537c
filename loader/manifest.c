/* manifest.c - read and write checkpoint manifests.  See manifest.h. */
#include "loader/manifest.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------
// reading

static const char hint_form[] =
	"\nHINT: a manifest is what `qwen-ckpt manifest DIR` writes (docs/parity.md shows the form)";

/* Fails unless every key of o is one of the NULL-terminated list `known`. */
static qw_status known_keys(json_t *o, const char *const *known, const char *label,
			    const char *where, qw_err *err)
{
	const char *key;
	json_t *v;
	json_object_foreach(o, key, v) {
		size_t i = 0;
		while (known[i] && strcmp(known[i], key) != 0)
			i++;
		if (!known[i])
			return qw_fail(err, QW_E_INDEX, "%s: %s has an unknown key '%s'%s", label,
				       where, key, hint_form);
	}
	return QW_OK;
}

/* One entry of "files": its header as a file known by its header alone. */
static qw_status read_file_entry(json_t *entry, size_t i, const char *label, qw_st_file **out,
				 qw_err *err)
{
	char where[64];
	snprintf(where, sizeof where, "files[%zu]", i);
	if (!json_is_object(entry))
		return qw_fail(err, QW_E_INDEX, "%s: %s is not an object%s", label, where,
			       hint_form);
	static const char *const keys[] = {"name", "data_bytes", "header", NULL};
	QW_TRY(known_keys(entry, keys, label, where, err));
	const char *name = json_string_value(json_object_get(entry, "name"));
	json_t *bytes = json_object_get(entry, "data_bytes");
	json_t *header = json_object_get(entry, "header");
	if (!name || !*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return qw_fail(err, QW_E_INDEX, "%s: %s.name must be the plain file name of a "
			       "safetensors file%s", label, where, hint_form);
	if (!json_is_integer(bytes) || json_integer_value(bytes) < 0)
		return qw_fail(err, QW_E_INDEX, "%s: %s (%s): data_bytes must be the size of the "
			       "file's data section (its size - 8 - the header's length)", label,
			       where, name);
	if (!json_is_object(header))
		return qw_fail(err, QW_E_INDEX, "%s: %s (%s): header must be the file's safetensors "
			       "header, an object%s", label, where, name, hint_form);
	char file_label[4200];
	snprintf(file_label, sizeof file_label, "%s: %s", label, name);
	return qw_st_from_header(header, (uint64_t)json_integer_value(bytes), file_label, out, err);
}

/* "files" into a checkpoint labelled `label`. */
static qw_status read_files(json_t *files, const char *label, qw_checkpoint **out, qw_err *err)
{
	if (!json_is_array(files) || json_array_size(files) == 0)
		return qw_fail(err, QW_E_INDEX, "%s: needs a non-empty array 'files'%s", label,
			       hint_form);
	size_t n = json_array_size(files);
	qw_st_file **opened = calloc(n, sizeof *opened);
	if (!opened)
		return qw_fail(err, QW_E_NOMEM, "out of memory");
	qw_status st = QW_OK;
	for (size_t i = 0; i < n && st == QW_OK; i++) {
		st = read_file_entry(json_array_get(files, i), i, label, &opened[i], err);
		const char *name = json_string_value(json_object_get(json_array_get(files, i),
								     "name"));
		for (size_t j = 0; j < i && st == QW_OK; j++)
			if (!strcmp(name, json_string_value(json_object_get(json_array_get(files, j),
									    "name"))))
				st = qw_fail(err, QW_E_INDEX, "%s: file '%s' is listed twice "
					     "(files[%zu] and files[%zu])", label, name, j, i);
	}
	if (st != QW_OK) {
		for (size_t i = 0; i < n; i++)
			qw_st_close(opened[i]);
		free(opened);
		return st;
	}
	return qw_ckpt_from_files(label, opened, n, out, err);
}

/* The manifest whose JSON is root (NULL: it did not parse, jerr says why). */
static qw_status from_root(json_t *root, const json_error_t *jerr, const char *label,
			   qw_manifest *m, qw_err *err)
{
	memset(m, 0, sizeof *m);
	if (!root)
		return qw_fail(err, QW_E_INDEX, "%s: not valid JSON (line %d: %s)%s", label,
			       jerr->line, jerr->text, hint_form);
	qw_status st = QW_OK;
	static const char *const keys[] = {"format", "version", "source", "config", "files", NULL};
	const char *format = json_string_value(json_object_get(root, "format"));
	json_t *version = json_object_get(root, "version");
	json_t *config = json_object_get(root, "config");
	json_t *source = json_object_get(root, "source");
	if (!json_is_object(root) || !format || strcmp(format, QW_MANIFEST_FORMAT) != 0) {
		st = qw_fail(err, QW_E_INDEX, "%s: not a checkpoint manifest (needs \"format\": "
			     "\"%s\")%s", label, QW_MANIFEST_FORMAT, hint_form);
	} else if (!json_is_integer(version) || json_integer_value(version) != QW_MANIFEST_VERSION) {
		st = qw_fail(err, QW_E_INDEX, "%s: manifest version must be %d (this program "
			     "reads no other)", label, QW_MANIFEST_VERSION);
	} else if ((st = known_keys(root, keys, label, "the manifest", err)) != QW_OK) {
	} else if (config && !json_is_object(config)) {
		st = qw_fail(err, QW_E_INDEX, "%s: config must be the model's config.json, an "
			     "object", label);
	} else if (source && !json_is_string(source)) {
		st = qw_fail(err, QW_E_INDEX, "%s: source must be a string", label);
	} else if (config && !(m->config_json = json_dumps(config, JSON_COMPACT |
								   JSON_PRESERVE_ORDER))) {
		st = qw_fail(err, QW_E_NOMEM, "out of memory");
	} else if (source && !(m->source = strdup(json_string_value(source)))) {
		st = qw_fail(err, QW_E_NOMEM, "out of memory");
	} else {
		st = read_files(json_object_get(root, "files"), label, &m->ck, err);
	}
	json_decref(root);
	if (st != QW_OK)
		qw_manifest_free(m);
	return st;
}

qw_status qw_manifest_parse(const char *text, size_t len, const char *label, qw_manifest *m,
			    qw_err *err)
{
	json_error_t jerr;
	return from_root(json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr), &jerr, label, m,
			 err);
}

qw_status qw_manifest_load(const char *path, qw_manifest *m, qw_err *err)
{
	json_error_t jerr;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root && json_error_code(&jerr) == json_error_cannot_open_file) {
		memset(m, 0, sizeof *m);
		return qw_fail(err, QW_E_IO, "%s: cannot open: %s", path, jerr.text);
	}
	return from_root(root, &jerr, path, m, err);
}

void qw_manifest_free(qw_manifest *m)
{
	qw_ckpt_close(m->ck);
	free(m->config_json);
	free(m->source);
	memset(m, 0, sizeof *m);
}

// ---------------------------------------------------------------------------------------
// writing

static int cmp_offset(const void *a, const void *b)
{
	const qw_tensor *x = *(const qw_tensor *const *)a, *y = *(const qw_tensor *const *)b;
	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* f's header as the file has it, tensors in offset order. */
static json_t *header_of(const qw_st_file *f)
{
	const qw_tensor **order = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *order);
	json_t *h = json_object();
	if (!order || !h) {
		free(order);
		json_decref(h);
		return NULL;
	}
	for (size_t i = 0; i < f->n_tensors; i++)
		order[i] = &f->tensors[i];
	qsort(order, f->n_tensors, sizeof *order, cmp_offset);
	for (size_t i = 0; i < f->n_tensors; i++) {
		const qw_tensor *t = order[i];
		json_t *e = qw_st_header_entry(t->dtype, t->ndim, t->shape, t->offset,
					       t->offset + t->nbytes);
		if (!e || json_object_set_new(h, t->name, e) != 0) {
			json_decref(h);
			h = NULL;
			break;
		}
	}
	free(order);
	return h;
}

qw_status qw_manifest_write(const qw_checkpoint *ck, const char *config_json, const char *source,
			    char **out, qw_err *err)
{
	*out = NULL;
	json_t *config = NULL;
	if (config_json) {
		json_error_t jerr;
		config = json_loads(config_json, JSON_REJECT_DUPLICATES, &jerr);
		if (!config)
			return qw_fail(err, QW_E_CONFIG, "not valid JSON (line %d: %s)", jerr.line,
				       jerr.text);
		if (!json_is_object(config)) {
			json_decref(config);
			return qw_fail(err, QW_E_CONFIG, "not a JSON object");
		}
	}
	json_t *root = json_pack("{s:s, s:i}", "format", QW_MANIFEST_FORMAT, "version",
				 QW_MANIFEST_VERSION);
	json_t *files = json_array();
	bool ok = root && files;
	if (ok && source)
		ok = json_object_set_new(root, "source", json_string(source)) == 0;
	if (ok && config)
		ok = json_object_set(root, "config", config) == 0;
	for (size_t i = 0; ok && i < ck->n_files; i++) {
		const qw_st_file *f = ck->files[i];
		const char *base = strrchr(f->path, '/');
		json_t *header = header_of(f);
		ok = header && json_array_append_new(files, json_pack(
			"{s:s, s:I, s:o}", "name", base ? base + 1 : f->path, "data_bytes",
			(json_int_t)f->data_size, "header", header)) == 0;
	}
	if (ok)
		ok = json_object_set(root, "files", files) == 0;
	if (ok)
		*out = json_dumps(root, JSON_PRESERVE_ORDER | JSON_COMPACT);
	json_decref(config);
	json_decref(files);
	json_decref(root);
	if (!*out)
		return qw_fail(err, QW_E_NOMEM, "out of memory writing the manifest");
	return QW_OK;
}
