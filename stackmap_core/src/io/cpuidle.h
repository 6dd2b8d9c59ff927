/*
 * cpuidle.h -- does this worker's CPU ever go idle?
 *
 * The uring backend waits for a batch of arrivals only when sleeping costs
 * no latency: when its CPU has no idle time, a worker that sleeps hands the
 * CPU to another task (typically the very clients whose requests it waits
 * for, when they share the CPU), so waiting a little longer for more of
 * them delays nothing.  On a CPU that does go idle, the worker is the only
 * thing there to run, and waiting would only add latency.  The signal is
 * the CPU's idle time from /proc/stat, sampled a couple of times a second.
 */
#ifndef SM_CPUIDLE_H
#define SM_CPUIDLE_H

#include <stdbool.h>
#include <stdint.h>

/* How often the idle time is sampled, and how much idle a window may show. */
#define CPUIDLE_WINDOW_NS 500000000ull
#define CPUIDLE_MAX_TICKS 1 /* USER_HZ ticks (10 ms) of idle per window */

typedef struct cpuidle {
    int fd;               /* /proc/stat, -1: unavailable (the answer is then "idle") */
    int cpu;              /* CPU of the last sample, -1: none yet */
    uint64_t idle_ticks;  /* idle + iowait of that CPU at the last sample, USER_HZ ticks */
    uint64_t sampled_ns;  /* clock of the last sample */
    bool busy;            /* the last window: same CPU throughout and no idle time */
} cpuidle;

/* Open /proc/stat (failure leaves the probe answering "idle"). */
void cpuidle_init(cpuidle *ci);
void cpuidle_close(cpuidle *ci);
/* Called once per round with the current clock: resamples when a window
 * has passed.  Returns whether the CPU was busy throughout the last window. */
bool cpuidle_busy(cpuidle *ci, uint64_t now_ns);

#endif
