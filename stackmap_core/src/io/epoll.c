/*
 * epoll.c -- the baseline ring backend: the classic readiness loop
 * (epoll_wait, read, sendmsg), the socket-API data path the StackMap paper
 * measured against, and the fallback wherever io_uring is unavailable.
 *
 * Each worker has its own epoll instance and its own SO_REUSEPORT
 * listening sockets, so it accepts and serves its connections without any
 * cross-thread hand-off.  One loop iteration is run-to-completion: read
 * every ready connection's bytes into one worker buffer and parse them in
 * place, queue every response, then send each connection's whole queue
 * with one sendmsg.  Level-triggered: a connection with more unread bytes is
 * simply reported again.  A connection whose queued output passes the
 * high-water mark stops being read (EPOLLIN off, EPOLLOUT on) until the
 * client drains it, so a client that stops reading costs bounded memory
 * and never stalls the others.  End of stream (the client shut down its
 * side) stops reading too, but everything received before it is answered
 * and the connection closes only once the last reply has been sent
 * (conn_eof_finished).
 */
#include <errno.h>
#include <stdio.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../engine_internal.h"
#include "backend.h"

/* Receive buffer per worker. */
#define EPOLL_RBUF_SIZE (64 * 1024)
/* Events fetched per epoll_wait. */
#define EPOLL_MAX_EVENTS 256
/* How often (ms) an idle loop looks at the stop/drain flags. */
#define EPOLL_TICK_MS 100

/* The epoll backend's per-worker state. */
typedef struct epoll_state {
    int epfd;                      /* the worker's epoll instance */
    char *rbuf;                    /* EPOLL_RBUF_SIZE bytes of receive buffer */
    conn *flush;                   /* connections with output queued this round */
    bool accept_paused;            /* out of descriptors: listeners' EPOLLIN off until accept_resume */
    uint64_t accept_paused_at;     /* clock (latency.h ns) the pause began */
    uint64_t accept_resume;        /* clock at which the listeners are watched again */
    struct epoll_event events[EPOLL_MAX_EVENTS]; /* results of epoll_wait */
} epoll_state;

/* conn->backend_state bits. */
#define EP_IN_FLUSH 0x1  /* on the flush list this round */
#define EP_WANT_OUT 0x2  /* registered for EPOLLOUT (socket buffer full) */
#define EP_PAUSED   0x4  /* EPOLLIN off: back-pressure */

static int epoll_probe(const struct sm_settings *s, char *why, size_t whylen)
{
    (void)s;
    (void)why;
    (void)whylen;
    return 0;
}

static int epoll_init(worker *w, char *err, size_t errlen)
{
    epoll_state *st = calloc(1, sizeof(*st));
    if (!st)
        goto oom;
    st->rbuf = malloc(EPOLL_RBUF_SIZE);
    if (!st->rbuf) {
        free(st);
        goto oom;
    }
    st->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (st->epfd < 0) {
        snprintf(err, errlen, "epoll_create1: %s", strerror(errno));
        free(st->rbuf);
        free(st);
        return -1;
    }
    for (int i = 0; i < w->nlisten; i++) {
        /* Listeners carry (fd << 1) | 1; conn pointers are aligned, low bit 0. */
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.u64 = ((uint64_t)w->listen_fds[i] << 1) | 1u;
        if (epoll_ctl(st->epfd, EPOLL_CTL_ADD, w->listen_fds[i], &ev) < 0) {
            snprintf(err, errlen, "epoll_ctl listener: %s", strerror(errno));
            close(st->epfd);
            free(st->rbuf);
            free(st);
            return -1;
        }
    }
    w->backend = st;
    return 0;
oom:
    snprintf(err, errlen, "out of memory creating the epoll backend");
    return -1;
}

/* Change a connection's interest set. */
static void update_interest(worker *w, conn *c)
{
    epoll_state *st = w->backend;
    uint32_t evs = 0;
    if (!(c->backend_state & EP_PAUSED) && !c->rd_eof)
        evs |= EPOLLIN;
    if (c->backend_state & EP_WANT_OUT)
        evs |= EPOLLOUT;
    struct epoll_event ev = {.events = evs, .data.ptr = c};
    epoll_ctl(st->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    SM_STAT_INC(w->stats.syscalls);
}

/* Listeners' EPOLLIN on (events EPOLLIN) or off (0): level-triggered, a
 * waiting connection would otherwise be reported, and fail, forever. */
static void watch_listeners(worker *w, epoll_state *st, uint32_t events)
{
    for (int i = 0; i < w->nlisten; i++) {
        struct epoll_event ev = {.events = events};
        ev.data.u64 = ((uint64_t)w->listen_fds[i] << 1) | 1u;
        epoll_ctl(st->epfd, EPOLL_CTL_MOD, w->listen_fds[i], &ev);
        SM_STAT_INC(w->stats.syscalls);
    }
}

/* Out of descriptors: stop accepting for ACCEPT_BACKOFF_NS (worker.h). */
static void pause_accepts(worker *w, epoll_state *st)
{
    if (st->accept_paused)
        return;
    watch_listeners(w, st, 0);
    st->accept_paused = true;
    st->accept_paused_at = sm_lat_now();
    st->accept_resume = st->accept_paused_at + ACCEPT_BACKOFF_NS;
    SM_STAT_INC(w->stats.listen_disabled_num);
}

/* The epoll_wait timeout: the tick, or less while the pause ends sooner;
 * accepting resumes once it is over (unless draining removed the listeners). */
static int resume_accepts(worker *w, epoll_state *st, bool listening)
{
    if (!st->accept_paused)
        return EPOLL_TICK_MS;
    uint64_t now = sm_lat_now();
    if (now < st->accept_resume) {
        uint64_t ms = (st->accept_resume - now + 999999) / 1000000;
        return ms < EPOLL_TICK_MS ? (int)ms : EPOLL_TICK_MS;
    }
    if (listening)
        watch_listeners(w, st, EPOLLIN);
    st->accept_paused = false;
    SM_STAT_ADD(w->stats.listen_disabled_ns, now - st->accept_paused_at);
    return EPOLL_TICK_MS;
}

static void accept_all(worker *w, int lfd)
{
    epoll_state *st = w->backend;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        SM_STAT_INC(w->stats.syscalls);
        if (fd < 0) {
            /* The listener is gone (ss -K, say): epoll would report it forever. */
            if (worker_accept_fatal(errno))
                worker_fail(w, errno, "accept on listener fd %d: %s", lfd, strerror(errno));
            else if (worker_accept_backoff(errno))
                pause_accepts(w, st);
            return; /* EAGAIN, or a transient error: epoll reports again */
        }
        conn *c = worker_conn_open(w, fd);
        if (!c)
            continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(st->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            worker_conn_close(w, c);
            continue;
        }
    }
}

/* Put a connection on this round's flush list. */
static void want_flush(epoll_state *st, conn *c)
{
    if (c->backend_state & EP_IN_FLUSH)
        return;
    c->backend_state |= EP_IN_FLUSH;
    c->next_ready = st->flush;
    st->flush = c;
}

/* Read what is there and parse it. false: close the connection. */
static bool handle_read(worker *w, conn *c)
{
    epoll_state *st = w->backend;
    for (int round = 0; round < 4; round++) {
        ssize_t n = read(c->fd, st->rbuf, EPOLL_RBUF_SIZE);
        SM_STAT_INC(w->stats.syscalls);
        if (n == 0) {
            /* End of stream: read no more (level-triggered, it would be
             * reported forever), answer what came, close once all is sent. */
            c->rd_eof = true;
            update_interest(w, c);
            if (conn_eof_finished(c))
                return false;
            want_flush(st, c);
            return true;
        }
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        SM_STAT_ADD(w->stats.bytes_read, n);
        c->last_active = cache_now(w->cache);
        worker_batch_clock(w); /* not timed from before the read syscall */
        if (!conn_feed(c, st->rbuf, (size_t)n))
            return false;
        if (out_pending(c) > 0 || c->state == CONN_CLOSING)
            want_flush(st, c);
        if (c->state == CONN_CLOSING || out_pending(c) > OUT_HIGH_WATER)
            break;
        if ((size_t)n < EPOLL_RBUF_SIZE)
            break; /* drained: level-triggered epoll reports any later bytes */
    }
    return true;
}

/* Send the queue. false: close the connection. */
static bool handle_write(worker *w, conn *c)
{
    while (out_pending(c) > 0) {
        int cnt;
        struct iovec *iov = conn_out_iov(c, &cnt);
        if (cnt > IOV_MAX)
            cnt = IOV_MAX;
        ssize_t n;
        if (cnt == 1) { /* the common case: one contiguous run of responses */
            n = send(c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
            n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        }
        SM_STAT_INC(w->stats.syscalls);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!(c->backend_state & EP_WANT_OUT)) {
                    c->backend_state |= EP_WANT_OUT;
                    update_interest(w, c);
                }
                return true;
            }
            return false;
        }
        SM_STAT_ADD(w->stats.bytes_written, n);
        conn_out_sent(c, (size_t)n);
    }
    if (c->backend_state & EP_WANT_OUT) {
        c->backend_state &= ~EP_WANT_OUT;
        update_interest(w, c);
    }
    return c->state != CONN_CLOSING;
}

/*
 * After a flush: resume parsing input that back-pressure left buffered,
 * and re-enable reading once the queue is below the mark.
 */
static bool after_flush(worker *w, conn *c)
{
    if (out_pending(c) <= OUT_HIGH_WATER && c->rbytes > 0 && c->state == CONN_PARSE) {
        worker_batch_clock(w);
        if (!conn_feed(c, NULL, 0))
            return false;
    }
    bool paused = c->backend_state & EP_PAUSED;
    bool over = out_pending(c) > OUT_HIGH_WATER;
    if (paused != over) {
        c->backend_state ^= EP_PAUSED;
        update_interest(w, c);
    }
    return true;
}

static void flush_all(worker *w)
{
    epoll_state *st = w->backend;
    while (st->flush) {
        conn *c = st->flush;
        st->flush = c->next_ready;
        c->backend_state &= ~EP_IN_FLUSH;
        if (!handle_write(w, c) || !after_flush(w, c) || (c->rd_eof && conn_eof_finished(c))) {
            worker_conn_close(w, c);
            continue;
        }
        if (out_pending(c) > 0 && !(c->backend_state & EP_WANT_OUT))
            want_flush(st, c); /* parsing resumed and queued more */
    }
}

static void epoll_run(worker *w)
{
    epoll_state *st = w->backend;
    bool listening = true;
    while (!worker_should_exit(w)) {
        if (atomic_load(&w->draining)) {
            if (listening) {
                for (int i = 0; i < w->nlisten; i++)
                    epoll_ctl(st->epfd, EPOLL_CTL_DEL, w->listen_fds[i], NULL);
                listening = false;
            }
            worker_close_idle(w, worker_conn_close);
            if (w->nconns == 0)
                break;
        }
        int n = epoll_wait(st->epfd, st->events, EPOLL_MAX_EVENTS, resume_accepts(w, st, listening));
        SM_STAT_INC(w->stats.syscalls);
        if (n < 0 && errno != EINTR) { /* EBADF, EINVAL, EFAULT: the instance is gone */
            worker_fail(w, errno, "epoll_wait: %s", strerror(errno));
            return;
        }
        for (int i = 0; i < n; i++) {
            struct epoll_event *ev = &st->events[i];
            if (ev->data.u64 & 1u) {
                if (listening)
                    accept_all(w, (int)(ev->data.u64 >> 1));
                if (worker_should_exit(w))
                    return;
                continue;
            }
            conn *c = ev->data.ptr;
            bool hup = ev->events & (EPOLLHUP | EPOLLERR);
            if ((ev->events & EPOLLIN) || hup) {
                bool paused = (c->backend_state & EP_PAUSED) || c->rd_eof; /* not reading */
                if ((paused && hup) || (!paused && !handle_read(w, c))) {
                    if (c->backend_state & EP_IN_FLUSH) {
                        /* Drop it from the flush list before freeing. */
                        conn **pp = &st->flush;
                        while (*pp && *pp != c)
                            pp = &(*pp)->next_ready;
                        if (*pp)
                            *pp = c->next_ready;
                    }
                    worker_conn_close(w, c);
                    continue;
                }
            }
            if (ev->events & EPOLLOUT)
                want_flush(st, c);
        }
        flush_all(w);
    }
}

static void epoll_destroy(worker *w)
{
    epoll_state *st = w->backend;
    if (!st)
        return;
    while (w->conns)
        worker_conn_close(w, w->conns);
    pool_destroy(&w->pool);
    close(st->epfd);
    free(st->rbuf);
    free(st);
    w->backend = NULL;
}

const backend_ops backend_epoll = {
    .name = "epoll",
    .probe = epoll_probe,
    .init = epoll_init,
    .run = epoll_run,
    .destroy = epoll_destroy,
};
