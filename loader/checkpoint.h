/* checkpoint.h - an HF model directory's weights: one model.safetensors, or shards
 * listed by model.safetensors.index.json.
 *
 * Owns: the open shard files and one name-sorted table over all their tensors.  The index
 * is held to the shards: every shard it names must exist and hold the tensors the index
 * places there, no tensor may appear twice, and no shard may hold a tensor the index
 * does not list.  A checkpoint may also be made of files known by their headers alone
 * (manifest.h); its tensors then have no data.
 */
#ifndef QW_LOADER_CHECKPOINT_H
#define QW_LOADER_CHECKPOINT_H

#include <stdbool.h>

#include "loader/safetensors.h"

#define QW_ST_SINGLE "model.safetensors"
#define QW_ST_INDEX "model.safetensors.index.json"

typedef struct qw_checkpoint {
	char *dir;
	bool sharded;                  /* opened through the index */
	qw_st_file **files;            /* (n_files,) in index order of first mention */
	size_t n_files;
	const qw_tensor **tensors;     /* (n_tensors,) all tensors, sorted by name */
	size_t n_tensors;
	uint64_t total_bytes;          /* sum of tensor bytes */
} qw_checkpoint;

qw_status qw_ckpt_open(const char *dir, qw_checkpoint **out, qw_err *err);

/* Checks that path is a model directory (it holds config.json), and when it is not says
 * what it is and what to give instead (QW_E_IO, with a HINT): a Hugging Face hub id such as
 * Qwen/Qwen3-VL-30B-A3B-Instruct (nothing is downloaded), a file such as the config.json
 * itself (its directory is the model), a missing path, or a directory without config.json. */
qw_status qw_model_dir_check(const char *path, qw_err *err);

/* A checkpoint of files opened already (n >= 0 of them, e.g. headers from a manifest),
 * held to the same rule that no tensor appears twice; label stands for the directory.  Takes
 * the malloc'd array files and every file in it, also on failure. */
qw_status qw_ckpt_from_files(const char *label, qw_st_file **files, size_t n,
			     qw_checkpoint **out, qw_err *err);
const qw_tensor *qw_ckpt_find(const qw_checkpoint *c, const char *name);
void qw_ckpt_close(qw_checkpoint *c);

#endif
