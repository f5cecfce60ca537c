/* clock.h - the one clock for durations, deadlines and heartbeats, in every program.
 *
 * Owns: the monotonic clock (CLOCK_MONOTONIC: it never jumps when the wall clock is set,
 * and it is the same clock in every process of the machine, so a heartbeat one process
 * writes is read by another).  qw_now_ns reads it; the others are that reading in the units
 * their callers count in.  The log's wall-clock timestamps are daemon/log.c's.
 */
#ifndef QW_LOADER_CLOCK_H
#define QW_LOADER_CLOCK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nanoseconds since an arbitrary fixed point (the machine's boot). */
uint64_t qw_now_ns(void);

/* The same in whole milliseconds (heartbeats, ring time-outs). */
static inline uint64_t qw_now_ms(void)
{
	return qw_now_ns() / 1000000u;
}

/* The same in milliseconds with their fraction (latencies people read: TTFT, ITL). */
static inline double qw_millis_now(void)
{
	return (double)qw_now_ns() * 1e-6;
}

/* The same in seconds (deadlines, timings, rates). */
static inline double qw_seconds_now(void)
{
	return (double)qw_now_ns() * 1e-9;
}

#ifdef __cplusplus
}
#endif

#endif
