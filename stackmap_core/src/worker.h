/*
 * worker.h -- a worker thread: one run-to-completion event loop over one
 * ring backend, owning its listeners' share of the connections.
 *
 * Everything a request needs is reachable from its connection's worker: the
 * cache, the settings, this thread's counters and its free lists.  Nothing
 * on the request path hands work to another thread.
 */
#ifndef SM_WORKER_H
#define SM_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "bufpool.h"
#include "cache/cache.h"
#include "conn.h"
#include "engine.h"
#include "latency.h"
#include "prefetch.h"
#include "stats.h"

struct sm_engine;
struct backend_ops;

typedef struct worker {
    int id;                          /* 0..num_threads-1 */
    pthread_t thread;                /* the loop's thread */
    struct sm_engine *engine;        /* owner */
    cache *cache;                    /* shared cache */
    const struct sm_settings *settings; /* engine settings (read-only after start) */
    struct sm_thread_stats stats;    /* this thread's counters */
    struct sm_latency lat;           /* this thread's command latency histograms (latency.h) */
    uint64_t lat_clock;              /* last clock reading: batch start or last command's end (latency.h) */
    struct prefetch_batch pf;        /* keys of the batch being run (prefetch.h; ring backends) */
    const struct backend_ops *ops;   /* the backend driving this loop */
    void *backend;                   /* the backend's per-worker state */
    out_chunk *free_chunks;          /* recycled output scratch chunks */
    int nfree_chunks;                /* length of free_chunks */
    sm_pool pool;                    /* buffers connections take while data is in flight (bufpool.h) */
    int *listen_fds;                 /* this worker's listening sockets */
    int nlisten;                     /* number of listen_fds */
    int nconns;                      /* connections this worker owns */
    pthread_mutex_t conns_lock;      /* guards the conns list (taken on open/close and by stats conns) */
    conn *conns;                     /* open connections of this worker */
    atomic_bool stop;                /* set by the engine to end the loop */
    atomic_bool draining;            /* stop accepting, finish in-flight requests */
    atomic_int state;                /* enum sm_worker_state (engine.h) */
    atomic_bool setup_done;          /* the backend's setup succeeded on this thread */
    char error[256];                 /* why it FAILED; written before state becomes FAILED */
    int error_errno;                 /* the errno behind error, 0 when none (picks the remedy) */
} worker;

/* Worker w FAILED: record why (once: the first reason stays), log it at
 * every verbosity when it was serving (a setup failure is the engine's
 * start error instead), and wake the engine's start wait.  errnum may be 0. */
void worker_fail(worker *w, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The loop should end: the engine stops it, or it failed. */
static inline bool worker_should_exit(worker *w)
{
    return atomic_load_explicit(&w->stop, memory_order_relaxed) ||
           atomic_load_explicit(&w->state, memory_order_relaxed) == SM_WORKER_FAILED;
}

/*
 * An accept on a listening socket failed with err: true when the listener
 * itself is gone (EBADF, EINVAL: no longer listening, e.g. destroyed with
 * `ss -K`; ENOTSOCK, EOPNOTSUPP), so no retry can succeed and the worker
 * fails; false for the transient ones (a connection aborted before it was
 * taken, EMFILE, ENOBUFS, EAGAIN...).
 */
bool worker_accept_fatal(int err);

/*
 * An accept failed for want of descriptors or memory (EMFILE, ENFILE,
 * ENOBUFS, ENOMEM): the connection waits in the listen queue, and retrying
 * at once would spin, so the backend stops accepting on that listener for
 * ACCEPT_BACKOFF_NS (memcached disables its listeners likewise) and counts
 * it in listen_disabled_num.
 */
bool worker_accept_backoff(int err);
#define ACCEPT_BACKOFF_NS (10ull * 1000 * 1000)

/* Get a scratch chunk from the worker's free list (or malloc when empty). */
out_chunk *worker_chunk_get(worker *w);
/* Return a chunk to the free list (keeps a bounded number). */
void worker_chunk_put(worker *w, out_chunk *ch);

/* A backend woke with a batch: the clock its first command is timed from (latency.h). */
static inline void worker_batch_clock(struct worker *w)
{
    w->lat_clock = sm_lat_now();
}

/* Put a connection on / take it off this worker's list, under conns_lock
 * (worker_conn_open and worker_conn_close do; so does the fuzz harness). */
void worker_conn_link(worker *w, conn *c);
void worker_conn_unlink(worker *w, conn *c);
/* Emit memcached's "stats conns" lines for this worker's listeners and connections. */
void worker_stats_conns(worker *w, sm_stat_sink *sink);

/*
 * While draining: hand every connection with nothing in flight (no queued
 * output, no partial request, not inside a value) to the backend's close.
 */
void worker_close_idle(worker *w, void (*close_conn)(worker *w, conn *c));

/*
 * Thread entry: the backend's setup (ring, listeners armed), then it waits
 * for the engine's go (every worker set up) and runs w->ops->run(w).  A
 * failure in setup or in the loop marks the worker FAILED; one in the loop
 * also closes its connections and listeners, so no client waits on a worker
 * that will never answer (SO_REUSEPORT sends new ones to the others).
 */
void *worker_main(void *arg);

#endif
