/* region.h - the shared-memory region between qwend and its workers.
 *
 * Owns: the region's layout and life.  The daemon creates one memfd when it starts the
 * workers (and a fresh one when it restarts them all); every worker maps it (its fd is
 * inherited across exec).  A partial restart keeps it: the surviving workers stay mapped,
 * the daemon empties its rings (qw_region_reset) and the failed stages' new workers map it.
 * It holds:
 *   - the job (model, device, stage layer ranges, step sizes), written before workers start;
 *   - the generation: bumped by the daemon for a partial restart (survivors then drop the
 *     steps in flight and wait), and the generation whose survivors may go on;
 *   - one slot per worker: state, pid, the generation it is in, load progress and time,
 *     heartbeat, steps run, resident bytes, how many KV blocks it could hold, and the reason
 *     it failed;
 *   - the daemon's decision on the KV cache (blocks per stage, the same on every stage);
 *   - the NCCL unique id (CUDA pipelines; made again for every generation);
 *   - rings (ring.h): step plans daemon -> each worker, results last worker -> daemon, and
 *     activation hand-overs stage i -> i+1 on the CPU backend;
 *   - the arena: resized RGB images the daemon places for stage 0's vision tower, and the
 *     histories of sampled rows with penalties, for the last stage's sampler.
 * Offsets, not pointers, are stored, since each process maps the region where it likes.
 */
#ifndef QW_IPC_REGION_H
#define QW_IPC_REGION_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ipc/ring.h"
#include "loader/error.h"
#include "loader/plan.h"

#define QW_REGION_VERSION 4

typedef enum qw_worker_state {
	QW_WORKER_STARTING = 0,  /* the process exists */
	QW_WORKER_LOADING,       /* loading its weights: load_done of load_total bytes */
	QW_WORKER_LOADED,        /* weights resident; kv_block_capacity says what fits */
	QW_WORKER_READY,         /* KV cache allocated, running steps */
	QW_WORKER_FAILED,        /* gave up; error says why */
	QW_WORKER_STOPPED,       /* left after a stop plan */
	QW_WORKER_REJOINING,     /* a survivor of a partial restart: weights and KV cache kept,
				    steps in flight dropped, waiting to go on in the generation
				    its slot names */
} qw_worker_state;

const char *qw_worker_state_name(qw_worker_state s);

typedef struct qw_worker_slot {
	_Atomic uint32_t state;          /* qw_worker_state */
	_Atomic int32_t pid;
	_Atomic uint32_t generation;     /* the generation it is in (a survivor: the one it
					    dropped its steps for) */
	_Atomic uint32_t weights_ready;  /* its weights are resident (set before it connects to
					    its neighbours, kept while it lives) */
	_Atomic uint32_t can_rejoin;     /* it has served: a partial restart may keep it */
	_Atomic uint64_t heartbeat_ms;   /* qw_now_ms() of its last sign of life */
	_Atomic uint64_t load_done;      /* weight bytes loaded so far */
	_Atomic uint64_t load_total;     /* weight bytes it owns */
	_Atomic uint64_t steps;          /* steps run */
	_Atomic uint64_t busy_us;        /* time spent running them */
	uint64_t load_ms;                /* how long its weights took to load */
	uint64_t weight_bytes;           /* resident weights, set before LOADED */
	int64_t kv_block_capacity;       /* KV blocks its memory could hold, set before LOADED */
	uint64_t kv_block_bytes;         /* bytes one block takes on this stage */
	uint64_t kv_bytes;               /* resident KV cache, set before READY */
	uint64_t step_bytes;             /* reserved for steps before the KV cache was sized:
					    activations, scratch, the vision tower and its image
					    store, memory kept for step graphs; set before LOADED */
	uint64_t step_host_bytes;        /* pinned host memory for steps, set before LOADED */
	int32_t vision_cache_tokens;     /* stage 0: image tokens its vision cache holds (rows
					    reserved for job.vision_cache_bytes), set before LOADED */
	_Atomic uint64_t vision_runs;    /* stage 0: images this worker ran the vision tower on */
	_Atomic uint64_t device_free;    /* the GPU's free memory as last seen (once ready, after
					    steps; 0 on the CPU backend) */
	char device[96];                 /* what it runs on, e.g. "cpu" or "cuda:0 (NVIDIA H200)" */
	char error[512];                 /* why it failed */
} qw_worker_slot;

/* A job's model_dir of this form names a config: its weights are synthesized. */
#define QW_SYNTHETIC_PREFIX "synthetic:"

typedef struct qw_region_job {
	char model_dir[1024];            /* config.json and the safetensors, or
					    synthetic:CONFIG.json */
	char device[8];                  /* cpu or cuda */
	int32_t n_stages;
	int32_t layer_begin[QW_MAX_STAGES];   /* stage i runs decoder layers [begin, end) */
	int32_t layer_end[QW_MAX_STAGES];
	int32_t gpu[QW_MAX_STAGES];      /* cuda: the device of stage i */
	int32_t max_tokens;              /* tokens in one step */
	int32_t max_logits;              /* rows sampled in one step */
	int32_t max_seqs;                /* sequences in one step */
	int32_t max_context;             /* KV entries of one sequence */
	int32_t max_image_tokens;        /* the largest image stage 0 reserves its vision tower
					    for; images split across steps hold at most as many
					    more (0: no vision tower) */
	int32_t block_tokens;            /* tokens per KV block */
	uint64_t vision_cache_bytes;     /* stage 0 keeps the tower's outputs of images the daemon
					    caches in this much memory (0: none) */
	double kv_memory;                /* share of the memory left after the weights for KV */
	int32_t check_transport;         /* checksum every hand-over */
	int32_t cuda_graphs;             /* decode steps replayed as CUDA graphs */
	int32_t corrupt_handover;        /* tests: flip one bit in this many-th hand-over (0: never) */
} qw_region_job;

/* Sizes of the parts, in bytes. */
typedef struct qw_region_sizes {
	size_t plan_ring;                /* each worker's plan ring */
	size_t result_ring;
	size_t handover_ring;            /* each stage-to-stage ring (CPU backend) */
	size_t arena;
} qw_region_sizes;

typedef struct qw_region_header {
	uint64_t magic;
	uint32_t version;
	uint64_t bytes;                  /* of the whole region */
	qw_region_job job;
	_Atomic uint32_t generation;     /* the daemon's: 1 for the first start, bumped by every
					    restart, partial or whole */
	_Atomic uint32_t resume;         /* the rings are this generation's: emptied after a partial
					    restart (survivors and new workers go on), at once for a
					    fresh region */
	_Atomic int32_t kv_blocks;       /* the daemon's decision (0 until made): blocks per stage */
	_Atomic uint32_t nccl_id_ready;  /* stage 0 has written nccl_id */
	uint8_t nccl_id[128];
	uint64_t plan_ring[QW_MAX_STAGES];     /* offsets from the region's start */
	uint64_t result_ring;
	uint64_t handover_ring[QW_MAX_STAGES]; /* stage i -> i + 1 */
	uint64_t arena, arena_bytes;
	qw_worker_slot worker[QW_MAX_STAGES];
} qw_region_header;

typedef struct qw_region {
	qw_region_header *hdr;           /* the mapping */
	size_t bytes;
	int fd;                          /* the memfd (inheritable by workers) */
} qw_region;

/* Creates and lays out a region for job (the daemon).  The fd is not close-on-exec. */
qw_status qw_region_create(const qw_region_job *job, const qw_region_sizes *sizes, qw_region *out,
			   qw_err *err);

/* Maps a region from an inherited fd and checks its header (a worker). */
qw_status qw_region_map(int fd, qw_region *out, qw_err *err);

/* Unmaps and closes. */
void qw_region_close(qw_region *r);

qw_ring *qw_region_plan_ring(const qw_region *r, int stage);
qw_ring *qw_region_result_ring(const qw_region *r);
qw_ring *qw_region_handover_ring(const qw_region *r, int stage);   /* stage -> stage + 1 */
uint8_t *qw_region_arena(const qw_region *r);

/* Aborts every ring: whoever waits on one wakes with QW_E_ABORTED. */
void qw_region_abort(qw_region *r);

/* Empties every ring and clears its abort, for the next generation.  Only while no worker
 * touches them: the survivors of a partial restart wait (REJOINING), the new workers wait for
 * `resume`. */
void qw_region_reset(qw_region *r);

#endif
