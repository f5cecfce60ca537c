/* transport_check.h - what qwen-transport-check's transports share: the options, the test
 * pattern (deterministic bits of valid values of the dtype, from seed, stage and iteration),
 * the message header, and the results table.  The host transports (shm, tcp) are in
 * qwen_transport_check.c, NCCL in cli/transport_nccl.cu. */
#ifndef QW_CLI_TRANSPORT_CHECK_H
#define QW_CLI_TRANSPORT_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TC_MAX_SIZES 40
#define TC_MAX_HOPS 16

typedef enum tc_dtype { TC_FP16, TC_BF16, TC_FP32, TC_FP8 } tc_dtype;

typedef struct tc_opts {
	const char *transport;            /* shm, tcp, nccl */
	tc_dtype dtype;
	int dsize;                        /* bytes per element */
	uint64_t seed;
	int iters;
	int n_sizes;
	uint64_t sizes[TC_MAX_SIZES];     /* bytes per transfer */
	int stages;                       /* processes in the chain (hops = stages - 1) */
	int gpus[TC_MAX_HOPS + 1];        /* nccl: the GPU of each stage */
	bool json, corrupt;
} tc_opts;

/* One hop at one size: filled by sender (time) and receiver (verification). */
typedef struct tc_result {
	double seconds;                   /* for all iters, sender's view, until the ack */
	uint64_t verified, wrong;
} tc_result;

typedef struct tc_report {
	char link[TC_MAX_HOPS][160];
	tc_result r[TC_MAX_HOPS][TC_MAX_SIZES];
} tc_report;

/* The 64-bit words of the pattern: word i of transfer (stage, iter). */
uint64_t tc_pattern_word(uint64_t seed, int stage, int iter, uint64_t i);
/* Makes every element of buf (bytes, dsize each) a finite value of dtype, in place. */
void tc_make_finite(void *buf, uint64_t bytes, tc_dtype dtype);
/* The pattern of transfer (stage, iter) into buf. */
void tc_fill(void *buf, uint64_t bytes, tc_dtype dtype, uint64_t seed, int stage, int iter);

/* NCCL between GPUs (cli/transport_nccl.cu): runs the chain, fills rep. */
int tc_run_nccl(const tc_opts *o, tc_report *rep, char *errbuf, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
