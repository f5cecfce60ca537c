/* sched_prefix.h - the scheduler's side of the prefix cache, private to the scheduler
 * (sched.c; the policy is stated in sched.h, the blocks are kv_blocks.h's).
 *
 * Owns: the content keys of a sequence's full blocks (a hash of the parent block's key,
 * the block's tokens, their M-RoPE positions, and for image rows the image's content hash
 * and which of its rows: what the block's K/V follows from on every stage), kept in the
 * sequence as they are computed; publishing a sequence's blocks as its scheduled tokens
 * fill them; and at admission, finding and taking the longest cached prefix.
 */
#ifndef QW_DAEMON_SCHED_PREFIX_H
#define QW_DAEMON_SCHED_PREFIX_H

#include <stdint.h>

#include "daemon/sched.h"

/* The content hash of an image as stage 0 would see it: its pixels, size and grid. */
uint64_t qw_sched_image_hash(const qw_sched_image *im);

/* The M-RoPE position (3 values) of q's token i. */
void qw_seq_position(const qw_seq *q, int i, int32_t *pos);

/* Publishes q's blocks that its scheduled tokens fill, in `step`. */
void qw_sched_publish(qw_sched *s, qw_seq *q, uint64_t step);

/* Whole blocks of q's leading tokens the cache holds for a step built now (never its last
 * token, which must be computed to give logits); *idle gets how many of them no sequence
 * holds (taking them makes them unavailable to others). */
int qw_sched_cached_prefix(qw_sched *s, qw_seq *q, uint64_t step, int *idle);

/* Admission: q (no blocks yet) takes its first n cached blocks by reference, its scheduled
 * tokens start after them, and the statistics count the lookup. */
void qw_sched_take_prefix(qw_sched *s, qw_seq *q, int n, uint64_t step);

#endif
