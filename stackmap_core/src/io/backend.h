/*
 * backend.h -- the interface every ring backend implements.
 *
 * A backend owns one worker thread's I/O: it accepts connections on the
 * worker's listening sockets, delivers received bytes to conn_feed() and
 * sends each connection's queued iovecs (conn_out_iov / conn_out_sent).
 * The worker loop logic (protocols, cache) is the same for every backend;
 * only how bytes move differs.  Like Redis's ae_*.c, the backend is chosen
 * once at start and called through this table of function pointers.
 *
 * Backends are designed for batching: between two waits a backend should
 * deliver every connection's received bytes, let the protocols queue every
 * response, and only then send, one send per connection and as few
 * syscalls as the mechanism allows.
 */
#ifndef SM_BACKEND_H
#define SM_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

#include "../worker.h"

typedef struct backend_ops {
    const char *name;                                      /* "epoll", "uring", "stackmap" */
    /* Can this backend run here? 0, or -1 with a reason (for AUTO's log line). */
    int (*probe)(const struct sm_settings *s, char *why, size_t whylen);
    /* Per-worker set-up on the engine's thread (memory, listeners registered).
     * 0, or a negative errno (-1 when none applies) + err. */
    int (*init)(worker *w, char *err, size_t errlen);
    /* Set-up on the worker's own thread before it serves (a ring that must be
     * created there); NULL when there is none.  0, or a negative errno (-1
     * when none applies) + err.  The engine reports started only once every
     * worker's setup has succeeded. */
    int (*setup)(worker *w, char *err, size_t errlen);
    /* The loop: runs until w->stop; when w->draining, stops accepting.  An
     * error it cannot serve past: worker_fail() and return. */
    void (*run)(worker *w);
    /* Free per-worker state and close every connection. */
    void (*destroy)(worker *w);
} backend_ops;

/* Why the uring backend is unusable in a build without liburing (uring.c). */
#define SM_URING_ABSENT                                                     \
    "this stackmapd was built without liburing, so it has no uring backend; " \
    "install liburing-dev (Debian/Ubuntu) and rebuild it (pip install . / make install)"

extern const backend_ops backend_epoll;
extern const backend_ops backend_uring;
extern const backend_ops backend_stackmap;

/*
 * Shared helpers every backend uses (worker.c).
 */
/* Account a new connection: enforces -c (writes memcached's
 * "ERROR Too many open connections" and returns NULL when over), allocates
 * and initialises the conn, sets TCP_NODELAY/non-blocking as configured. */
conn *worker_conn_open(worker *w, int fd);
/* Close the socket and free the connection. */
void worker_conn_close(worker *w, conn *c);

#endif
