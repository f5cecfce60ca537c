/* manifest.h - a checkpoint known by its tensor headers alone: the manifest file.
 *
 * Owns: the manifest's JSON form, reading it into a qw_checkpoint whose files are headers
 * without data (so the weight map binds and reports it exactly as it does a real checkpoint),
 * and writing it from an open checkpoint.  The form (docs/parity.md shows it):
 *
 *   {"format": "qwen-vl-manifest", "version": 1,
 *    "source": "where it was made from",                       (optional, not read)
 *    "config": {... the model's config.json ...},              (optional)
 *    "files": [{"name": "model-00001-of-00002.safetensors",    (a plain file name)
 *               "data_bytes": 4997120000,                      (the file's size - 8 - header)
 *               "header": {... the file's safetensors header ...}}, ...]}
 *
 * Each header goes through the checks of a real file's (safetensors.h: dtypes, byte sizes
 * against shapes, overlaps, ranges inside data_bytes) and the files through those of a
 * checkpoint (no tensor twice).  Headers and the hub's file listing are all it takes to
 * write one, so a checkpoint can be checked before its weights are downloaded.
 */
#ifndef QW_LOADER_MANIFEST_H
#define QW_LOADER_MANIFEST_H

#include "loader/checkpoint.h"

#define QW_MANIFEST_FORMAT "qwen-vl-manifest"
#define QW_MANIFEST_VERSION 1

typedef struct qw_manifest {
	qw_checkpoint *ck;      /* the files' headers; every tensor's data is NULL; dir is the
				   manifest's label */
	char *config_json;      /* the embedded config.json as JSON text, or NULL if none */
	char *source;           /* "source", or NULL */
} qw_manifest;

/* Reads and checks the manifest at path.  Errors: QW_E_IO, QW_E_INDEX (not the manifest
 * form), the safetensors statuses for a bad header, QW_E_NOMEM. */
qw_status qw_manifest_load(const char *path, qw_manifest *m, qw_err *err);

/* The same from JSON text; label names it in errors and becomes m->ck->dir. */
qw_status qw_manifest_parse(const char *text, size_t len, const char *label, qw_manifest *m,
			    qw_err *err);

void qw_manifest_free(qw_manifest *m);

/* The manifest of ck (each file's header as the file has it, tensors in offset order, no
 * __metadata__) with config_json (config.json's text, embedded; NULL leaves it out) and
 * source (NULL: none), as compact JSON text (malloc'd) into *out. */
qw_status qw_manifest_write(const qw_checkpoint *ck, const char *config_json, const char *source,
			    char **out, qw_err *err);

#endif
