/* transport_check.h - what qwen-transport-check's transports share: the options, the test
 * pattern (deterministic bits of valid values of the dtype, from seed, stage and iteration),
 * the results table, and each transport's entry.  Like nccl-tests' common.cu and its one
 * file per collective: qwen_transport_check.c parses, runs the transport its table names and
 * reports; a transport is one file (transport_shm.c, transport_tcp.c, transport_nccl.cu) that
 * runs its chain and fills the table; transport_hop.c is one hop over host channels, either
 * side, and the chain of stage processes the host transports share. */
#ifndef QW_CLI_TRANSPORT_CHECK_H
#define QW_CLI_TRANSPORT_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ipc/channel.h"
#include "loader/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TC_MAX_SIZES 40
#define TC_MAX_HOPS 16

#define TC_HEADER_BYTES 48   /* what precedes each transfer on a host channel */

typedef enum tc_dtype { TC_FP16, TC_BF16, TC_FP32, TC_FP8 } tc_dtype;

/* tcp: a chain over loopback on one machine, or one hop between two */
typedef enum tc_mode { TC_LOCAL, TC_SERVER, TC_CLIENT } tc_mode;

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
	tc_mode mode;                     /* tcp only; a client runs 2 stages, itself and the server */
	const char *host;                 /* tcp server (NULL: 127.0.0.1) and client */
	int port;                         /* tcp server and client (a server's 0: any) */
	bool once;                        /* tcp server: serve one client, then exit */
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

// -- the transports: each runs o's chain (or tcp's one hop to a server) and fills rep -----
// They return 0 when every stage ran, 1 when one failed (it says why on stderr, or err
// does), -1 when the chain could not start (err says why).  Verification is the report's.

typedef int (*tc_run_fn)(const tc_opts *o, tc_report *rep, qw_err *err);
/* transport_shm.c: shared-memory rings between the stage processes */
int tc_run_shm(const tc_opts *o, tc_report *rep, qw_err *err);
/* transport_tcp.c: a chain over loopback, or (TC_CLIENT) one hop to a server */
int tc_run_tcp(const tc_opts *o, tc_report *rep, qw_err *err);
/* transport_tcp.c: a tcp server's life (TC_SERVER): verifies each client's transfers and
 * prints its verdict; returns the exit status, or -1 (err set) */
int tc_serve_tcp(const tc_opts *o, tc_report *rep, qw_err *err);
/* transport_nccl.cu (transport_nccl_stub.c without CUDA): NCCL between GPUs */
int tc_run_nccl(const tc_opts *o, tc_report *rep, qw_err *err);

// -- transport_hop.c: what the host transports share ------------------------------------

/* Sends o->iters transfers of every size to the next stage over fwd, then waits for its ack
 * on back; the time per size into rep.  Returns 0, or 1 (err set). */
int tc_send_side(const tc_opts *o, int stage, qw_channel *fwd, qw_channel *back,
		 tc_report *rep, qw_err *err);
/* Receives from the previous stage, acks each size, verifies every transfer (counted into
 * rep, a mismatch printed): after the ack when a size's transfers fit in 512 MiB
 * ($QW_TC_STAGING_BYTES), so the sender's timing is the transport's, else as they arrive.
 * With expect_sizes < 0 (a tcp server) the sizes come from the headers, until the peer
 * closes.  Returns 0, or 1 (err set). */
int tc_recv_side(const tc_opts *o, int hop, qw_channel *in, qw_channel *back,
		 tc_report *rep, int expect_sizes, qw_err *err);

/* How a host transport's stage process gets its channels of a hop: the sending side (stage
 * hop) or the receiving side (stage hop + 1); data and ack may be one channel. */
typedef struct tc_links {
	qw_status (*open)(void *ctx, int hop, bool sending, qw_channel **data, qw_channel **ack,
			  qw_err *err);
	void *ctx;                        /* the transport's, copied into each stage process */
} tc_links;
/* One process per stage, each receiving from the one before it and then sending to the one
 * after it, as the daemon's pipeline runs.  Returns 0 when every stage exited 0, else 1. */
int tc_run_chain(const tc_opts *o, tc_report *rep, const tc_links *links, qw_err *err);

#ifdef __cplusplus
}
#endif

#endif
