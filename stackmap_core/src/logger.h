/*
 * logger.h -- memcached's log streams ("watch"): what happens inside the
 * server, as lines, to the clients that asked for them.
 *
 * A client sends "watch fetchers mutations ..." and its connection becomes a
 * watcher: from then on it receives one line per event of the kinds it named
 * (item_get, item_store, eviction, conn_new, conn_close, slab_move), in memcached 1.6's
 * exact format ("ts=SECS.USECS gid=N type=... key=... "), until it goes away.
 *
 * Cost when nobody watches: the producers test sm_log_wants(), one relaxed
 * load of the union of every watcher's flags, and do nothing else.
 *
 * When someone watches, three parties move each line, none of them waiting
 * for another and none holding a lock shared with the request path:
 *  - the producer (a worker thread, mostly) formats the line straight into
 *    its own bounded ring (sm_log_ring, single producer, single consumer);
 *    a full ring drops the line and counts it (log_worker_dropped).  A thread
 *    that is no worker (the LRU maintainer, the control plane) shares one
 *    ring behind a mutex of its own;
 *  - the logger thread drains every ring and copies each line into the
 *    buffer of every watcher that wants it (again a bounded SPSC ring); a
 *    watcher whose buffer is full skips the line, counts it
 *    (log_watcher_skipped) and later gets "skipped=N" before its next line,
 *    as memcached sends it.  It sleeps 1 ms after a pass that found lines,
 *    longer (up to 100 ms) after empty ones, and waits on a condition
 *    variable while there is no watcher at all;
 *  - the watcher connection's own worker moves what its buffer holds into the
 *    connection's output queue (sm_watcher_peek/consume, at most
 *    SM_WATCH_PUMP_MAX bytes queued at a time), so TLS, io_uring and
 *    /dev/stackmap send log lines as they send any reply.
 * Memory is fixed: worker_logbuf_size per thread ring, watcher_logbuf_size per
 * watcher (memcached's -o options of the same names, in kilobytes).  A slow
 * watcher loses lines; it never slows the workers nor grows memory.
 *
 * The registration lock (sm_logger.lock) is taken by "watch", by a watcher's
 * close and by the logger thread's passes: never on a request.
 */
#ifndef SM_LOGGER_H
#define SM_LOGGER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Event kinds: memcached's LOG_* bits, as "watch" names them. */
#define SM_LOG_SYSEVENTS (1u << 1)   /* sysevents: slab_move (the automover's decisions) */
#define SM_LOG_FETCHERS (1u << 2)    /* fetchers: item_get, one per key looked up */
#define SM_LOG_MUTATIONS (1u << 3)   /* mutations: item_store */
#define SM_LOG_CONNEVENTS (1u << 5)  /* connevents: conn_new, conn_close */
#define SM_LOG_EVICTIONS (1u << 6)   /* evictions: eviction */
#define SM_LOG_RAWCMDS (1u << 9)     /* rawcmds (memcached 1.6.18 emits none) */
#define SM_LOG_PROXYREQS (1u << 10)  /* proxyreqs (proxy mode only: none here) */
#define SM_LOG_PROXYEVENTS (1u << 11) /* proxyevents (none here) */
#define SM_LOG_PROXYUSER (1u << 12)  /* proxyuser (none here) */

/* At most this many watchers at once (memcached's WATCHER_LIMIT). */
#define SM_WATCHER_LIMIT 20

/* A watcher connection has at most this many log bytes queued for sending. */
#define SM_WATCH_PUMP_MAX (64u * 1024u)

/* Why a connection closed (memcached's close_reasons, conn_close's reason=). */
enum sm_close_reason {
    SM_CLOSE_ERROR = 0,        /* a protocol error, a failure (the default) */
    SM_CLOSE_NORMAL = 1,       /* the client quit or ended its stream */
    SM_CLOSE_IDLE_TIMEOUT = 2, /* -o idle_timeout */
    SM_CLOSE_SHUTDOWN = 3      /* the server is stopping */
};

/* What memcached's item_get calls the outcome of a lookup. */
enum sm_log_get_status { SM_LOG_NOT_FOUND = 0, SM_LOG_FOUND = 1, SM_LOG_FLUSHED = 2, SM_LOG_EXPIRED = 3 };

/*
 * A byte ring with one producer and one consumer.  head and tail count
 * bytes ever written and consumed; each side writes only its own.
 */
typedef struct sm_log_ring {
    char *buf;                      /* size bytes */
    uint32_t size;                  /* capacity, a multiple of 8 */
    _Atomic uint64_t head;          /* bytes published by the producer */
    _Atomic uint64_t tail;          /* bytes released by the consumer */
    _Atomic uint64_t written;       /* entries written (producer rings: log_worker_written) */
    _Atomic uint64_t dropped;       /* entries dropped for want of room (log_worker_dropped) */
} sm_log_ring;

/* One watcher: a connection that ran "watch", and its buffer. */
typedef struct sm_watcher {
    sm_log_ring ring;         /* formatted lines for the connection (logger thread -> its worker) */
    unsigned flags;           /* SM_LOG_* kinds it asked for */
    uint64_t min_gid;         /* lines logged before it started (lower gids) are not its */
    uint64_t skipped;         /* lines skipped since its last one (logger thread only) */
    int slot;                 /* index in sm_logger.watchers */
    void *conn;               /* its connection (the owning worker's; the logger never touches it) */
    struct sm_watcher *next_local; /* the owning worker's list of its watchers */
} sm_watcher;

typedef struct sm_logger {
    atomic_uint eflags;               /* union of the watchers' flags: what producers log */
    _Atomic uint64_t gid;             /* the last global id handed out */
    int nrings;                       /* producer rings: one per worker, then the shared one */
    sm_log_ring *rings;               /* nrings rings of worker_buf bytes */
    pthread_mutex_t shared_lock;      /* serialises the threads that share the last ring */
    uint32_t watcher_buf;             /* bytes of each watcher's buffer */
    pthread_mutex_t lock;             /* guards watchers[] and nwatchers (not the request path) */
    pthread_cond_t cond;              /* signalled when a watcher arrives or the thread must stop */
    sm_watcher *watchers[SM_WATCHER_LIMIT]; /* registered watchers, NULL for a free slot */
    atomic_int nwatchers;             /* registered watchers (log_watchers) */
    _Atomic uint64_t watcher_skipped; /* lines a full watcher buffer skipped (log_watcher_skipped) */
    _Atomic uint64_t watcher_sent;    /* lines put in a watcher buffer (log_watcher_sent) */
    pthread_t thread;                 /* the logger thread */
    bool started;                     /* thread is running */
    bool stop;                        /* the thread must end (under lock) */
} sm_logger;

/* Set up lg with nworkers worker rings (plus the shared one); sizes in bytes.
 * 0, or -1 when out of memory. */
int sm_logger_init(sm_logger *lg, int nworkers, uint32_t worker_buf, uint32_t watcher_buf);
/* Start / stop the logger thread (stop joins it). 0, or an errno. */
int sm_logger_start(sm_logger *lg);
void sm_logger_stop(sm_logger *lg);
/* Free the rings and any watcher left (the thread is stopped). */
void sm_logger_destroy(sm_logger *lg);

/* The calling thread writes to worker ring i from now on (a worker's thread). */
void sm_logger_bind_thread(sm_logger *lg, int i);

/* Is any watcher interested in kind `flag`?  The producers' only cost when not. */
static inline bool sm_log_wants(sm_logger *lg, unsigned flag)
{
    return (atomic_load_explicit(&lg->eflags, memory_order_relaxed) & flag) != 0;
}

/* ---- producers: call only when sm_log_wants(lg, kind) ---- */

/* item_get: a key looked up (status: enum sm_log_get_status; vlen: the value's bytes). */
void sm_log_item_get(sm_logger *lg, const char *key, size_t nkey, int status, int clsid, uint32_t vlen,
                     int cfd);
/* item_store: status and cmd as memcached numbers them (see logger.c), ttl in seconds left. */
void sm_log_item_store(sm_logger *lg, const char *key, size_t nkey, int status, int cmd, uint32_t ttl,
                       int clsid, int cfd, uint32_t vlen);
/* eviction: ttl -1 for none, la: seconds since its last access. */
void sm_log_eviction(sm_logger *lg, const char *key, size_t nkey, bool fetched, long long ttl, uint32_t la,
                     int clsid, uint32_t vlen);
/* conn_new / conn_close of a connection whose peer is "tcp:A:P", "tcp6:[A]:P" or "unix:..." */
void sm_log_conn_event(sm_logger *lg, bool open, const char *peer, int reason, int cfd);
/* sysevents slab_move: the automover moves a page of class src to dst (0: the global pool). */
void sm_log_slab_move(sm_logger *lg, int src, int dst);

/* ---- watchers ---- */

enum sm_watch_result { SM_WATCH_OK = 0, SM_WATCH_TOO_MANY = 1, SM_WATCH_FAILED = 2 };

/* Register a watcher of `flags` for connection conn; *out is the caller's. */
int sm_watcher_add(sm_logger *lg, unsigned flags, void *conn, sm_watcher **out);
/* Unregister and free it (the logger thread no longer writes to it on return). */
void sm_watcher_remove(sm_logger *lg, sm_watcher *wt);
/* The owning worker: the buffered bytes that are contiguous (*p), and release n of them. */
size_t sm_watcher_peek(sm_watcher *wt, const char **p);
void sm_watcher_consume(sm_watcher *wt, size_t n);

/* Counters for "stats". */
struct sm_log_stats {
    uint64_t worker_dropped;  /* log_worker_dropped */
    uint64_t worker_written;  /* log_worker_written */
    uint64_t watcher_skipped; /* log_watcher_skipped */
    uint64_t watcher_sent;    /* log_watcher_sent */
    uint64_t watchers;        /* log_watchers */
};
void sm_logger_stats(sm_logger *lg, struct sm_log_stats *out);

#endif
