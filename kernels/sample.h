/* sample.h - choosing the next token from a row of logits, on the host: the reference every
 * backend follows.
 *
 * Owns: the sampling rule and its random number, a pure function of (seed, step), so the
 * same seed gives the same tokens regardless of batching, and a GPU can reproduce the draw.
 * The rule (qw_sampling's fields), its processors in vLLM's order (vllm/v1/sample/
 * sampler.py: penalties, temperature, min-p, top-k, top-p):
 *   1. penalties on the row's logits, in fp32, for each token of the row's history (its
 *      sequence's prompt and generated tokens, qw_sample_history): repetition, as HF's
 *      RepetitionPenaltyLogitsProcessor and vLLM define it (a token of the prompt or
 *      generated before: z / r where z > 0, else z * r), then frequency (z - f * count,
 *      count the times it was generated), then presence (z - p once generated), as vLLM
 *      and OpenAI define them (generated tokens only).  z is the processed logit;
 *   2. greedy (temperature 0): the argmax of z, lowest id among equals; nothing below
 *      applies;
 *   3. temperature: e_i = exp((z_i - max z) / T) in double, left unnormalised (every test
 *      below compares against a sum of them, which a common scale leaves alone);
 *   4. min-p (HF's MinPLogitsWarper, vLLM's min_p): keeps e_i >= min_p, the tokens at
 *      least min_p times as likely as the most likely one;
 *   5. top-k: the k best of those, by (probability desc, id asc);
 *   6. top-p: the smallest prefix of those, best first, whose mass reaches top_p of theirs;
 *   7. one draw: u = qw_sample_uniform(seed, step) times the kept mass; the first candidate
 *      whose running mass passes u, walking in id order when neither top-k nor top-p cut
 *      anything (min-p's cut needs no order), else best first.
 * HF's generate applies the same processors, its repetition penalty first too; it has no
 * frequency or presence penalty and puts min-p after top-k and top-p, which changes only
 * the mass top-p measures against.  vLLM is followed because the API served (OpenAI's, as
 * vLLM serves it) defines the penalties and log-probabilities this way.
 *
 * Log-probabilities are vLLM's processed_logprobs: log_softmax of the logits the token was
 * drawn from, (z_i - max z) / T - log(kept mass) for a kept token and -inf for one a cut
 * removed; on a greedy row log_softmax(z).  The top ones are the best by (z desc, id asc).
 */
#ifndef QW_KERNELS_SAMPLE_H
#define QW_KERNELS_SAMPLE_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/ops.h"

/* Index of the largest value (the lowest index among equals). */
int32_t qw_argmax(const float *x, int n);

/* The uniform number in [0, 1) that draw `step` of a sequence seeded `seed` uses. */
double qw_sample_uniform(uint64_t seed, uint64_t step);

/* Whether p applies a penalty (and so looks at a history). */
bool qw_sample_penalized(const qw_sampling *p);

/* The penalties of step 1 on z (V,) in place: tokens of h outside [0, V) are skipped. */
void qw_sample_penalize(float *z, int V, const qw_sampling *p, const qw_sample_history *h);

/* Samples one token from logits (V,) with the history h (NULL: none) by the rule above;
 * with p->logprobs, *lp (not NULL) gets the log-probabilities.  scratch holds
 * qw_sample_scratch_bytes(V) bytes, or is NULL to have it allocated.  Returns -1 only if
 * allocation fails. */
int32_t qw_sample_row(const float *logits, int V, const qw_sampling *p,
		      const qw_sample_history *h, void *scratch, qw_sample_logprobs *lp);

/* What a backend's sample op checks of its arguments (ops.h): rows of V logits, each
 * history's tokens ids in [0, V) (at most V of them), out_logprobs given when a
 * row asks for logprobs, top_logprobs within [0, QW_MAX_TOP_LOGPROBS].  QW_E_ARG naming the
 * row otherwise.  (That no token appears twice is the caller's to keep: it is not checked.) */
qw_status qw_sample_check(const qw_sampling *params, const qw_sample_history *history,
			  const qw_sample_logprobs *out_logprobs, int rows, int V, qw_err *err);

/* Bytes of scratch qw_sample_row needs for V. */
uint64_t qw_sample_scratch_bytes(int V);

#endif
