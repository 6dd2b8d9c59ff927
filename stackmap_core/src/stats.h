/*
 * stats.h -- the storage of every per-thread counter.
 *
 * The lists below (X-macros, after Pelikan's cc_metric.h) generate the
 * per-thread counter structs and their sums.  They are storage: what "stats"
 * prints, under which public name (get_cmds -> cmd_get, as memcached does),
 * with which kind, help and Prometheus series, is stats_table.h's, whose
 * value column reads these fields.
 *
 * Counters are written only by the thread that owns them, with relaxed
 * atomic load+store (a plain increment on x86, no locked instruction), and
 * summed across threads only when somebody reads stats.  So the hot path
 * takes no lock and shares no cache line for statistics.
 */
#ifndef SM_STATS_H
#define SM_STATS_H

#include <stdatomic.h>
#include <stdint.h>

/* Slab class ids are below this: memcached's 1..63, and one more for our one-page class (slabs.c). */
#define SM_MAX_SLAB_CLASSES 65

/* Counters kept per worker thread. */
#define SM_THREAD_STATS(X) \
    X(get_cmds)            \
    X(get_misses)          \
    X(get_expired)         \
    X(get_flushed)         \
    X(touch_cmds)          \
    X(touch_misses)        \
    X(delete_misses)       \
    X(incr_misses)         \
    X(decr_misses)         \
    X(cas_misses)          \
    X(meta_cmds)           \
    X(bytes_read)          \
    X(bytes_written)       \
    X(flush_cmds)          \
    X(conn_yields)         \
    X(auth_cmds)           \
    X(auth_errors)         \
    X(idle_kicks)          \
    X(response_obj_oom)    \
    X(read_buf_oom)        \
    X(response_obj_count)  \
    X(response_obj_bytes)  \
    X(read_buf_count)      \
    X(read_buf_bytes)      \
    X(read_buf_bytes_free) \
    X(store_too_large)     \
    X(store_no_memory)     \
    X(syscalls)            \
    X(uring_submits)       \
    X(uring_cqes)          \
    X(uring_buf_ring_empty)\
    X(uring_send_zc)       \
    X(uring_batch_waits)   \
    X(uring_batch_timeouts)\
    X(uring_batch_rests)   \
    X(uring_bufs_published)\
    X(stackmap_syncs)      \
    X(stackmap_rx_slots)   \
    X(stackmap_tx_slots)   \
    X(stackmap_bad_slots)  \
    X(stackmap_tx_lent)    \
    X(stackmap_tx_lent_copied) \
    X(listen_disabled_num) \
    X(ssl_handshake_errors)\
    X(ssl_new_sessions)    \
    X(ssl_ktls_conns)      \
    X(ssl_userspace_conns) \
    X(listen_disabled_ns)

/* Counters kept per worker thread and per slab class. */
#define SM_SLAB_STATS(X) \
    X(set_cmds)          \
    X(get_hits)          \
    X(touch_hits)        \
    X(delete_hits)       \
    X(cas_hits)          \
    X(cas_badval)        \
    X(incr_hits)         \
    X(decr_hits)

typedef _Atomic uint64_t sm_counter;

/* One slab class's share of a thread's counters. */
struct sm_slab_stats {
#define SM_X(name) sm_counter name; /* see SM_SLAB_STATS */
    SM_SLAB_STATS(SM_X)
#undef SM_X
};

/* All counters of one worker thread; written only by that thread. */
struct sm_thread_stats {
#define SM_X(name) sm_counter name; /* see SM_THREAD_STATS */
    SM_THREAD_STATS(SM_X)
#undef SM_X
    struct sm_slab_stats slab[SM_MAX_SLAB_CLASSES]; /* indexed by slab class id */
};

/* Plain (non-atomic) sums, produced when stats are read. */
struct sm_stats_sum {
#define SM_X(name) uint64_t name; /* see SM_THREAD_STATS */
    SM_THREAD_STATS(SM_X)
#undef SM_X
#define SM_X(name) uint64_t slab_##name; /* total over classes, see SM_SLAB_STATS */
    SM_SLAB_STATS(SM_X)
#undef SM_X
    /* per class sums, plain */
    struct {
#define SM_X(name) uint64_t name; /* see SM_SLAB_STATS */
        SM_SLAB_STATS(SM_X)
#undef SM_X
    } slab[SM_MAX_SLAB_CLASSES]; /* indexed by slab class id */
};

/* Owner-thread increment: relaxed load + store, no locked instruction. */
#define SM_STAT_ADD(ctr, n) \
    atomic_store_explicit(&(ctr), atomic_load_explicit(&(ctr), memory_order_relaxed) + (uint64_t)(n), \
                          memory_order_relaxed)
#define SM_STAT_INC(ctr) SM_STAT_ADD(ctr, 1)
/* Owner-thread decrement of a gauge (the counters above that go down as well as up). */
#define SM_STAT_SUB(ctr, n) \
    atomic_store_explicit(&(ctr), atomic_load_explicit(&(ctr), memory_order_relaxed) - (uint64_t)(n), \
                          memory_order_relaxed)

/* The gauges among SM_THREAD_STATS: levels, not counts, so "stats reset" leaves them be. */
#define SM_THREAD_GAUGES(X) \
    X(uring_bufs_published) \
    X(response_obj_count)   \
    X(response_obj_bytes)   \
    X(read_buf_count)       \
    X(read_buf_bytes)       \
    X(read_buf_bytes_free)

/* Reader side: add one thread's counters into a sum. */
void sm_stats_accumulate(struct sm_stats_sum *sum, const struct sm_thread_stats *ts);

/*
 * A sink for "stats" output: modules emit name/value pairs into it without
 * knowing whether they end up as protocol text or Prometheus samples.
 */
typedef struct sm_stat_sink {
    void (*add)(struct sm_stat_sink *sink, const char *name, const char *value); /* emit one pair */
    void *ctx;                                                                   /* the sink's own state */
    const void *asker; /* the connection whose command asked (stats conns shows it parsing), or NULL */
} sm_stat_sink;

/* printf-style helper: formats value and calls sink->add. */
void sm_stat_addf(sm_stat_sink *sink, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
