/*
 * latency.h -- per-command latency histograms, counted on the worker that
 * served the command.
 *
 * memcached has no latency figures at all; operators ask for them.  Each
 * worker owns one struct sm_latency (inside struct worker) and is its only
 * writer: an observation is a clock read (sm_lat_now) and two relaxed
 * load+store pairs, no lock and no shared cache line.  The
 * control plane sums the workers' tables on read (sm_engine_latency in
 * admin.c), exactly as the stats counters are summed.
 *
 * Buckets are powers of two of nanoseconds: bucket b counts durations below
 * 2^(b + SM_LAT_SHIFT) ns; the last bucket counts everything longer.  A
 * command's time runs from the moment the worker turned to it to its
 * response being queued; for a store that includes waiting for the value
 * bytes.  To read the clock once per command rather than twice, "turned to
 * it" is the worker's last reading (worker->lat_clock): the end of the
 * command before it, or, for the first command of a batch, the moment the
 * backend woke with the batch (each backend calls worker_batch_clock).  So
 * a command's time also holds the little work between two commands
 * (handing over the received buffer), never time the worker slept.
 */
#ifndef SM_LATENCY_H
#define SM_LATENCY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Commands timed separately; everything else is "other".  Each command's
 * class is its row's latency column in the command table (proto/parse.h). */
#define SM_LAT_COMMANDS(X) \
    X(get)                 \
    X(gets)                \
    X(gat)                 \
    X(gats)                \
    X(set)                 \
    X(add)                 \
    X(replace)             \
    X(append)              \
    X(prepend)             \
    X(cas)                 \
    X(delete)              \
    X(incr)                \
    X(decr)                \
    X(touch)               \
    X(mg)                  \
    X(ms)                  \
    X(md)                  \
    X(ma)                  \
    X(mn)                  \
    X(me)                  \
    X(stats)               \
    X(flush_all)           \
    X(version)             \
    X(other)

enum sm_lat_cmd {
#define SM_X(name) SM_LAT_##name,
    SM_LAT_COMMANDS(SM_X)
#undef SM_X
    SM_LAT_NCMDS
};

/* log2(ns) of the first bucket's upper bound: 2^8 ns = 256 ns. */
#define SM_LAT_SHIFT 8
/* Buckets: < 256 ns, < 512 ns, ... < 2^30 ns (~1.07 s), then +Inf. */
#define SM_LAT_BUCKETS 24

/* One worker's histograms; written only by that worker. */
struct sm_latency {
    _Atomic uint64_t count[SM_LAT_NCMDS][SM_LAT_BUCKETS]; /* observations per bucket */
    _Atomic uint64_t sum_ns[SM_LAT_NCMDS];                /* total nanoseconds per command */
};

/*
 * The clock commands are timed with, read once per command.  Where the
 * kernel keeps CLOCK_MONOTONIC with the CPU's time-stamp counter (its
 * clocksource is "tsc": invariant, synchronised across CPUs), the counter is
 * read directly and scaled to nanoseconds with a factor calibrated against
 * CLOCK_MONOTONIC when the first engine is created (sm_lat_clock_init, 10
 * ms).  That is a third of a vDSO clock_gettime, which perf put at about 1%
 * of the uring server's CPU.  Elsewhere (another clocksource, another
 * architecture) it is clock_gettime.  The two may drift apart by the
 * calibration's error (~1e-5): only differences of sm_lat_now() readings
 * are ever used.
 */
struct sm_lat_clock {
    int use_tsc;   /* 1: read the TSC (set once, before any worker runs) */
    uint64_t tsc0; /* TSC at calibration */
    uint64_t ns0;  /* CLOCK_MONOTONIC nanoseconds at tsc0 */
    uint64_t mult; /* nanoseconds per TSC tick, 32.32 fixed point */
};
extern struct sm_lat_clock sm_lat_clock;

/* Decide on the TSC and calibrate it; once per process (thread-safe). */
void sm_lat_clock_init(void);

/* CLOCK_MONOTONIC nanoseconds (vDSO: no syscall). */
static inline uint64_t sm_lat_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Monotonic nanoseconds for latency figures (see struct sm_lat_clock). */
static inline uint64_t sm_lat_now(void)
{
#if defined(__x86_64__)
    if (sm_lat_clock.use_tsc) {
        uint64_t ticks = __builtin_ia32_rdtsc() - sm_lat_clock.tsc0;
        return sm_lat_clock.ns0 + (uint64_t)(((unsigned __int128)ticks * sm_lat_clock.mult) >> 32);
    }
#endif
    return sm_lat_mono();
}

/* Owner-thread observation: no locked instruction. */
static inline void sm_lat_record(struct sm_latency *l, int cmd, uint64_t ns)
{
    int b = ns == 0 ? 0 : 64 - __builtin_clzll(ns) - SM_LAT_SHIFT;
    if (b < 0)
        b = 0;
    if (b >= SM_LAT_BUCKETS)
        b = SM_LAT_BUCKETS - 1;
    _Atomic uint64_t *ctr = &l->count[cmd][b];
    atomic_store_explicit(ctr, atomic_load_explicit(ctr, memory_order_relaxed) + 1, memory_order_relaxed);
    _Atomic uint64_t *sum = &l->sum_ns[cmd];
    atomic_store_explicit(sum, atomic_load_explicit(sum, memory_order_relaxed) + ns, memory_order_relaxed);
}

/* Name of a command ("get", ..., "other"), NULL when out of range. */
const char *sm_lat_name(int cmd);

#endif
