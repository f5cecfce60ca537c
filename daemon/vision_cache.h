/* vision_cache.h - the daemon's record of the vision tower outputs stage 0 keeps for images it
 * has seen, so that a later request about the same image does not run the tower again.
 *
 * Owns: the entries (an image's content hash, the handle stage 0 keeps its features under,
 * its merged tokens, when it was last used), the token budget they share (what stage 0
 * reserved rows for at load, reported in its slot), least-recently-used eviction and the
 * hit / miss / eviction counts.  It knows nothing of sequences or steps beyond a step
 * number: the scheduler says which entries a sequence still needs (busy) and sends stage 0
 * the handles evicted, in a plan that stage 0 runs before any later step could miss them.
 * The daemon is the single owner of what stage 0 holds; stage 0 never drops a kept image
 * on its own, and a stage 0 that starts again (or forgets its images on a restart) is
 * matched by qw_vcache_clear.
 */
#ifndef QW_DAEMON_VISION_CACHE_H
#define QW_DAEMON_VISION_CACHE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct qw_vcache_entry {
	uint64_t hash;            /* the image's content hash (qw_sched_image_hash) */
	uint64_t handle;          /* its name on stage 0 */
	uint64_t last_step;       /* the last step built that reads it */
	uint64_t used;            /* LRU clock of its last use */
	int tokens;               /* merged tokens: rows of stage 0's store */
} qw_vcache_entry;

typedef struct qw_vcache_stats {
	uint64_t hits;            /* images sent to stage 0 whose features it kept */
	uint64_t misses;          /* images sent to stage 0 to run the tower on (with the cache on) */
	uint64_t evictions;       /* entries evicted for room */
} qw_vcache_stats;

typedef struct qw_vision_cache {
	int cap_tokens;           /* rows stage 0 keeps for cached features; 0: off */
	int held_tokens;          /* of them, taken by entries */
	int max_entries;          /* images held at most */
	qw_vcache_entry *e;       /* (n,) in no order */
	int n, cap;
	uint64_t clock;
	qw_vcache_stats stats;
} qw_vision_cache;

/* Whether some sequence still needs handle's features (it has rows of the image left). */
typedef bool (*qw_vcache_busy_fn)(void *ctx, uint64_t handle);
/* handle was evicted: stage 0 may drop it. */
typedef void (*qw_vcache_evict_fn)(void *ctx, uint64_t handle);

void qw_vcache_init(qw_vision_cache *c, int cap_tokens, int max_entries);
void qw_vcache_free(qw_vision_cache *c);

/* The entry of an image's content hash, or NULL; a found entry is marked used by step. */
const qw_vcache_entry *qw_vcache_use(qw_vision_cache *c, uint64_t hash, uint64_t step);

/* Adds an entry for an image stage 0 is about to see in step, evicting least recently used
 * entries that neither step reads nor busy says a sequence needs (for tokens, or for an
 * entry when max_entries are held); each evicted handle goes to evicted.  false (nothing
 * evicted) when the image cannot have room: larger than the cache, or the entries that may
 * go leave too little. */
bool qw_vcache_add(qw_vision_cache *c, uint64_t hash, uint64_t handle, int tokens, uint64_t step,
		   qw_vcache_busy_fn busy, qw_vcache_evict_fn evicted, void *ctx);

/* Takes handle's entry back (added in a step that did not carry the image after all: stage
 * 0 never saw it, so nothing is dropped). */
void qw_vcache_remove(qw_vision_cache *c, uint64_t handle);

/* Forgets every entry: stage 0 holds none (a restart, partial or whole). */
void qw_vcache_clear(qw_vision_cache *c);

#endif
