/* sched_sim.h - a simulated pipeline for the scheduler's tests (test_sched, test_sched_prefix),
 * and the pool's invariant check they share with test_kv_blocks.
 *
 * The simulated workers keep a KV cache of slots.  Like attention, what a slot holds follows
 * from its sequence's whole history: the entry written for token i is a hash of the entry of
 * token i - 1, read back through the plan's block table, and of token i itself (its id, its
 * positions, and for an image row which image and which row, the image known only from the
 * pixels stage 0 received).  A sampled token is a hash of its row's entry.  So a lost or
 * misplaced chunk, a slot shared by two sequences, a wrong position or image row, a bad
 * recomputation after preemption, or a cached block reused for a different history (another
 * prefix, another image) changes the tokens; every sequence must get exactly the tokens of
 * the reference, which runs it alone, token by token, without the scheduler.
 *
 * The simulation also checks each plan as it runs: no two tokens of a step write one slot,
 * every slot lies where the block table says, a written block is held by its writer alone
 * and was not published by an earlier step, every entry a token attends to was written by
 * an earlier step or by its own sequence earlier in this one, fresh images arrive intact in
 * the arena and the features of an image's later rows are still on stage 0 (which forgets
 * an image after its last rows unless the plan says keep, and a dropped one); and every
 * logit row of a sequence with penalties carries, in the arena, its history exactly as the
 * reference's tokens so far make it (each distinct token once, its generated count and
 * whether the prompt holds it), and no other row carries one; it counts the image tokens
 * stage 0 holds (at most, and from one step to the next).
 */
#ifndef QW_TESTS_SCHED_SIM_H
#define QW_TESTS_SCHED_SIM_H

#include "tests/unit/helpers.h"

#include "daemon/sched.h"

#define SIM_V 1000
#define SIM_PAD 7          /* the image pad token */
#define SIM_BLOCK 4        /* tokens per KV block */
#define SIM_DELTA 5        /* rope_delta: a generated token's position is its index + 5 */
#define SIM_MAX_OUT 64
#define SIM_MAX_IMG 3
#define SIM_ARENA (1 << 16)

typedef struct sim_seq {
	qw_seq q;
	int max_new, generated;
	int32_t out[SIM_MAX_OUT];
	bool finished, lost, cancelled;
	/* the reference: the history as it should be */
	int n_prompt;
	int32_t *prompt, *pos;                 /* (n_prompt,), (n_prompt, 3); owned */
	bool penalized, prompt_penalized;      /* has a history; it holds the prompt */
	int n_img;
	int img_pos[SIM_MAX_IMG], img_len[SIM_MAX_IMG];
	uint8_t img_seed[SIM_MAX_IMG];         /* the image's pixels follow from it */
} sim_seq;

typedef struct sim {
	uint64_t *cache;                       /* (slots,) what each slot holds */
	uint64_t *written;                     /* (slots,) the step that wrote it (0: none) */
	int32_t *writer;                       /* (slots,) which sequence of that step */
	int slots;
	uint8_t *arena;
	uint64_t handles[256];                 /* stage 0's images: handle -> seed */
	uint8_t seeds[256];
	int tokens[256];                       /* and its tokens */
	int n_handles;
	int held_peak;                         /* the most image tokens stage 0 held at once */
	int held_after;                        /* the most it held from one step to the next */
	int held_split;                        /* the most it held as an image came that a
						  step split (that image included) */
	int fresh[256];                        /* by seed: times stage 0 ran the vision tower */
	int steps, max_logits_per_step;
	qw_sched *s;
	bool remove_on_finish;
} sim;

/* A scheduler over kv_blocks blocks of SIM_BLOCK tokens, plans of at most budget tokens,
 * with the prefix cache on or off, an arena of SIM_ARENA bytes, and its simulation. */
void sim_make(qw_sched *s, sim *m, int depth, int budget, int max_seqs, int kv_blocks,
	      bool prefix_cache);
/* The same with an arena of arena_bytes. */
void sim_make_arena(qw_sched *s, sim *m, int depth, int budget, int max_seqs, int kv_blocks,
		    bool prefix_cache, uint64_t arena_bytes);
void sim_free(sim *m);

/* The end of a test: the scheduler freed, then the n submitted sequences' reference arrays,
 * then the simulation. */
void sim_end(qw_sched *s, sim *m, sim_seq *xs, int n);

/* A sequence of the given prompt and positions (copied) and images (each a run of SIM_PAD
 * tokens that sim_seq_init writes into the prompt, with the pixels of its seed). */
void sim_seq_init(sim_seq *x, uint64_t id, const int32_t *prompt, const int32_t *pos,
		  int n_prompt, int n_img, const int *img_pos, const int *img_len,
		  const uint8_t *img_seed, int max_new);
/* One with a random prompt of n_prompt tokens, random positions, and n_img images spread
 * through it when n_prompt >= 30. */
void sim_seq_random(sim_seq *x, uint64_t id, int n_prompt, int n_img, int max_new,
		    uint64_t *rng);
/* Gives x (not submitted yet) a penalty and its history: frequency, and repetition (which
 * looks at the prompt) with_prompt. */
void sim_seq_penalize(sim_seq *x, bool with_prompt);

/* Frees the reference arrays (the scheduler frees the sequence's own on removal; a sequence
 * never submitted has them freed here too). */
void sim_seq_free(sim_seq *x, bool submitted);

/* Runs plan p: writes its entries, samples its logit rows into tokens. */
void sim_run_plan(sim *m, const qw_step_plan *p, int32_t *tokens);

/* Completes the oldest step in flight with tokens. */
void sim_complete(sim *m, const int32_t *tokens);

/* The pipeline is lost: qw_sched_reset (each running sequence marked lost and removed),
 * and new workers with empty caches. */
void sim_reset(sim *m);

/* Posts plans while the scheduler gives them and completes the oldest when the pipeline is
 * full or idle, until there is no work. */
void sim_drive(sim *m);

/* Every sequence that finished got the reference's tokens; one cancelled or lost, a prefix
 * of them. */
void sim_check(sim_seq *xs, int n);

/* The reference tokens of x alone. */
void sim_reference(const sim_seq *x, int32_t *out, int n_out);

/* The pool against the block tables that use it: each block's reference count is the
 * number of tables holding it, and every block is exactly one of used, cached (published,
 * in the LRU list) or free (neither), so used + cached + free = total; every published block
 * is found by its key. */
void sim_check_tables(const qw_kv_pool *p, const qw_kv_seq *const *tables, int n_tables);

/* sim_check_tables over the running sequences' tables; queued sequences hold no blocks. */
void sim_check_pool(const qw_sched *s);

#endif
