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
} worker;

/* Get a scratch chunk from the worker's free list (or malloc when empty). */
out_chunk *worker_chunk_get(worker *w);
/* Return a chunk to the free list (keeps a bounded number). */
void worker_chunk_put(worker *w, out_chunk *ch);

/* A backend woke with a batch: the clock its first command is timed from (latency.h). */
static inline void worker_batch_clock(struct worker *w)
{
    w->lat_clock = sm_lat_now();
}

/* Emit memcached's "stats conns" lines for this worker's listeners and connections. */
void worker_stats_conns(worker *w, sm_stat_sink *sink);

/*
 * While draining: hand every connection with nothing in flight (no queued
 * output, no partial request, not inside a value) to the backend's close.
 */
void worker_close_idle(worker *w, void (*close_conn)(worker *w, conn *c));

/* Thread entry: runs w->ops->run(w). */
void *worker_main(void *arg);

#endif
