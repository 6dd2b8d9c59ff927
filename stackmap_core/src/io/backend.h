/*
 * backend.h -- what a ring backend implements, and the worker calls it uses.
 *
 * Like Redis's ae.c over ae_epoll.c, the worker (worker.c) owns the round
 * and every connection policy: accept limits and backoff, the flush list,
 * back-pressure and its resume, end of stream, drain on stop, the idle
 * timeout, when to close.  A backend is only the primitives its mechanism
 * differs in: wait for a batch and hand it over, arm or stop a receive,
 * submit a send, close.  The backend is chosen once at start and called
 * through this table of function pointers.
 *
 * One round (worker.c):
 *
 *   ops->wait(w, timeout)   wait for a batch and deliver it: new sockets to
 *                           worker_conn_open, received bytes to
 *                           worker_input, end of stream to worker_eof,
 *                           completed sends to worker_sent, room on a full
 *                           socket to worker_writable, failures to
 *                           worker_close_soon;
 *   the flush               every connection the batch touched: close it,
 *                           or ops->send its queue (one send each);
 *   the policies            accept backoff over, idle-timeout sweep.
 *
 * Backends are designed for batching: a wait should deliver every
 * connection's received bytes before the flush sends anything, so that the
 * protocols queue every response first and each connection's queue leaves
 * in one send, in as few syscalls as the mechanism allows.
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
     * worker's setup has succeeded.  Accepting is on once it returns. */
    int (*setup)(worker *w, char *err, size_t errlen);
    /* Wait at most timeout_ms (0: do not sleep) for a batch, and deliver it
     * (the worker calls above).  0, or -1 after worker_fail() when the
     * mechanism itself is gone. */
    int (*wait)(worker *w, int timeout_ms);
    /* Send c's queue (conn_out_iov): as much as the socket takes now, or
     * submitted for later.  While a send is in flight or the socket has no
     * room the backend keeps CONN_LOOP_SENDING set, and reports with
     * worker_sent / worker_writable. */
    void (*send)(worker *w, conn *c);
    /* Receiving for c on (true) or off (false: back-pressure, end of stream).
     * A mechanism that cannot stop receiving (stackmap) does nothing: the
     * bytes then wait in c->rbuf, up to its limit. */
    void (*recv_ctl)(worker *w, conn *c, bool on);
    /* Accepting on every listener on (true) or off (false: drain, backoff). */
    void (*accept_ctl)(worker *w, bool on);
    /* A socket the backend reported accepted will be closed without becoming
     * a connection (over -c, draining, out of memory): let go of it first.
     * NULL when there is nothing to let go of. */
    void (*forget_fd)(worker *w, int fd);
    /* Close c: the backend lets go of it and calls worker_conn_close() once
     * nothing in flight refers to it (at once, or from a later wait). */
    void (*close)(worker *w, conn *c);
    /* Free per-worker state and close every connection (worker_conn_close). */
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
 * The worker calls a backend makes (worker.c).
 */
/* A new socket: enforces -c (writes memcached's "ERROR Too many open
 * connections" and returns NULL when over), refuses it while draining,
 * allocates and initialises the conn, sets TCP_NODELAY/non-blocking as
 * configured.  NULL: the fd is closed (after ops->forget_fd). */
conn *worker_conn_open(worker *w, int fd);
/* Close the socket and free the connection (the backend's last word on it). */
void worker_conn_close(worker *w, conn *c);
/* len bytes arrived for c: parse them, queue the replies, apply
 * back-pressure.  true when the backend may deliver c more bytes now. */
bool worker_input(worker *w, conn *c, char *data, size_t len);
/* worker_input's plaintext half: what TLS decrypted (tls.c), or a plain connection's bytes. */
bool worker_plain_input(worker *w, conn *c, char *data, size_t len);
/* c's peer ended its stream: read no more, answer what came, then close. */
void worker_eof(worker *w, conn *c);
/* n bytes of c's queue have left (n may be 0 after a send that moved none). */
void worker_sent(worker *w, conn *c, size_t n);
/* c's full socket has room again (the backend cleared CONN_LOOP_SENDING). */
void worker_writable(worker *w, conn *c);
/* c must close (an error): at the next flush, whatever is queued. */
void worker_close_soon(worker *w, conn *c);
/* Look at c in the next flush. */
void worker_want_flush(worker *w, conn *c);

#endif
