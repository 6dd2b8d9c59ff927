/*
 * engine_internal.h -- the engine's own state, shared by engine.c, stats.c,
 * worker.c and the protocols' few whole-server commands (stats, shutdown,
 * verbosity, flush_all, cache_memlimit).  Not part of the public API: the
 * control plane only sees engine.h.
 */
#ifndef SM_ENGINE_INTERNAL_H
#define SM_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache/cache.h"
#include "engine.h"
#include "logger.h"
#include "stats.h"
#include "stats_prefix.h"
#include "worker.h"

struct sm_engine {
    struct sm_settings settings;    /* as given, checked; read-only while running */
    cache *cache;                   /* the key store */
    worker *workers;                /* settings.num_threads workers */
    const struct backend_ops *ops;  /* backend chosen at start */
    char backend_note[512];         /* why AUTO fell back, "" otherwise */
    atomic_int verbose;             /* live verbosity (verbosity command, -v) */
    atomic_int curr_conns;          /* open client connections, all workers */
    atomic_uint_fast64_t total_conns;    /* connections accepted since start */
    atomic_uint_fast64_t rejected_conns; /* connections refused over -c */
    atomic_uint next_conn_id;       /* id for the next accepted connection */
    atomic_bool shutdown_requested; /* a client sent "shutdown" (-A) */
    atomic_bool accepting;          /* listeners active */
    pthread_mutex_t wait_lock;      /* guards wait_cond for sm_engine_wait */
    pthread_cond_t wait_cond;       /* signalled on shutdown request */
    pthread_cond_t state_cond;      /* signalled (under wait_lock) when a worker's setup ends or it fails */
    atomic_bool go;                 /* every worker set up: leave the start wait and serve */
    int64_t started;                /* unix time of start */
    bool running;                   /* start() succeeded and stop() not yet called */
    struct sm_tls *tls;             /* -Z: the TLS server context (tls.c), NULL without */
    /* "stats reset" baselines, subtracted when stats are read (stats_groups.c; guarded by its lock) */
    struct sm_stats_sum stats_base; /* worker counters at the last reset */
    uint64_t total_conns_base;      /* total_conns at the last reset */
    uint64_t rejected_conns_base;   /* rejected_conns at the last reset */
    struct sm_log_stats log_base;   /* the watch counters at the last reset */
    sm_prefix_stats *prefixes;      /* "stats detail": per-prefix counters (stats_prefix.h) */
    struct sm_auth *auth;           /* -Y: the auth file's users, NULL without -Y (proto/auth.h) */
    sm_logger log;                  /* the "watch" log streams (logger.h) */
};

/*
 * Make the open-file limit fit conns client connections (engine.c): raise
 * the soft limit (the hard one where we may); -1 + err when the hard limit
 * is below conns; a warning when only the room for our own descriptors is
 * short.
 */
int engine_fd_limits(struct sm_engine *e, int conns, char *err, size_t errlen);

/* A client asked for "shutdown" (only honoured with -A). */
void engine_request_shutdown(struct sm_engine *e);

/*
 * Emit a "stats" group: "" (general), "settings", "items", "slabs",
 * "sizes", "conns".  Returns 0, or -1 for an unknown group.
 */
int engine_stats_group(struct sm_engine *e, const char *group, sm_stat_sink *sink);

/* Sum every worker's counters. */
void engine_stats_sum(struct sm_engine *e, struct sm_stats_sum *sum);

/* "stats reset": zero counters that memcached resets. */
void engine_stats_reset(struct sm_engine *e);

/* One log line to stderr, memcached style; call it through engine_log. */
void engine_log_write(struct sm_engine *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Log at a verbosity level; the level test is inline, so the per-command
 * trace lines (-vv) cost a load and a branch when off, not a varargs call. */
#define engine_log(e, level, ...)                                                          \
    do {                                                                                   \
        if (atomic_load_explicit(&(e)->verbose, memory_order_relaxed) >= (level))          \
            engine_log_write((e), __VA_ARGS__);                                            \
    } while (0)

#endif
