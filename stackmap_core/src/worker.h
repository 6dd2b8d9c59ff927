/*
 * worker.h -- a worker thread: one run-to-completion event loop over one
 * ring backend, owning its listeners' share of the connections.  The loop
 * and every connection policy are worker.c's; the backend (io/backend.h)
 * only moves bytes.
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
    conn_env env;                    /* what this worker's connections draw memory from (conn.h) */
    conn *flush;                     /* the flush list: connections to look at after this batch */
    bool accepting;                  /* the backend is asked to accept (off while draining or paused) */
    bool recv_in_wait;               /* the backend reads sockets only inside ops->wait, so at a flush
                                        every byte read has been delivered (tls.c's kTLS switch) */
    bool accept_paused;              /* out of descriptors: accepting off until accept_resume */
    uint64_t accept_paused_at;       /* clock (latency.h ns) the pause began */
    uint64_t accept_resume;          /* clock at which accepting resumes */
    uint64_t idle_swept;             /* cache_now() of the last idle-timeout sweep */
    int *listen_fds;                 /* this worker's listening sockets */
    int nlisten;                     /* number of listen_fds */
    int nconns;                      /* connections this worker owns */
    pthread_mutex_t conns_lock;      /* guards the conns list (taken on open/close and by stats conns) */
    conn *conns;                     /* open connections of this worker */
    struct sm_watcher *watchers;     /* this worker's watcher connections' watchers (logger.h) */
    atomic_bool stop;                /* set by the engine to end the loop */
    atomic_bool draining;            /* stop accepting, finish in-flight requests */
    atomic_int state;                /* enum sm_worker_state (engine.h) */
    atomic_bool setup_done;          /* the backend's setup succeeded on this thread */
    char error[256];                 /* why it FAILED; written before state becomes FAILED */
    int error_errno;                 /* the errno behind error, 0 when none (picks the remedy) */
    char *tls_wbuf;                  /* -Z: ssl_wbuf_size bytes where replies gather before SSL_write */
    size_t tls_wbuf_len;             /* bytes gathered in tls_wbuf, not yet encrypted */
} worker;

/* conn->loop: where a connection is in the worker's round (worker.c). */
#define CONN_LOOP_FLUSH 0x1   /* on w->flush */
#define CONN_LOOP_PAUSED 0x2  /* receiving off: its queue passed OUT_HIGH_WATER (back-pressure) */
#define CONN_LOOP_SENDING 0x4 /* the backend has a send in flight or waits for room: no new send */
#define CONN_LOOP_CLOSE 0x8   /* close at the next flush (an error, a kick, a drain) */
#define CONN_LOOP_CLOSED 0x10 /* handed to the backend's close: the worker no longer touches it */

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
 * An accept failed with err: a gone listener (EBADF, EINVAL: no longer
 * listening, e.g. destroyed with `ss -K`; ENOTSOCK, EOPNOTSUPP) fails the
 * worker, as no retry can succeed; a want of descriptors or memory (EMFILE,
 * ENFILE, ENOBUFS, ENOMEM) leaves the connection in the listen queue, and
 * retrying at once would spin, so accepting stops for ACCEPT_BACKOFF_NS
 * (memcached disables its listeners likewise), counted in
 * listen_disabled_num; the rest (a connection aborted before it was taken,
 * EAGAIN) are transient and ignored.
 */
void worker_accept_error(worker *w, int listen_fd, int err);
#define ACCEPT_BACKOFF_NS (10ull * 1000 * 1000)

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
 * Feed received bytes to the protocols: they parse straight from data (any
 * transient, writable buffer: a ring slot, a worker buffer), and the
 * unconsumed tail is kept in c->rbuf; worker_feed(c, NULL, 0) resumes
 * parsing held input.  false when the connection must close now
 * (CONN_CLOSING also means: send the queue, then close).
 */
bool worker_feed(conn *c, char *data, size_t len);

/*
 * For a connection whose peer ended its stream (rd_eof): true when it may
 * close now -- everything queued has been sent and the input left, if any,
 * is an incomplete request that can never complete.  Input held back by
 * back-pressure is parsed first once the queue has room, so a false answer
 * may come with new output queued: send it and ask again.
 */
bool worker_eof_finished(conn *c);

/* Free the backend's state and every connection, and the connections' pools. */
void worker_destroy(worker *w);

/*
 * Thread entry: the backend's setup (ring, listeners armed), then it waits
 * for the engine's go (every worker set up) and runs the loop.  A
 * failure in setup or in the loop marks the worker FAILED; one in the loop
 * also closes its connections and listeners, so no client waits on a worker
 * that will never answer (SO_REUSEPORT sends new ones to the others).
 */
void *worker_main(void *arg);

#endif
