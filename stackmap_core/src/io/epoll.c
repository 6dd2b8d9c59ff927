/*
 * epoll.c -- the baseline ring backend: the classic readiness loop
 * (epoll_wait, read, sendmsg), the socket-API data path the StackMap paper
 * measured against, and the fallback wherever io_uring is unavailable.
 *
 * Each worker has its own epoll instance and its own SO_REUSEPORT
 * listening sockets, so it accepts and serves its connections without any
 * cross-thread hand-off.  A wait reads every ready connection's bytes into
 * one worker buffer and hands them over in place (worker_input); the
 * worker's flush then has each connection's whole queue sent with one
 * sendmsg.  Level-triggered: a connection with more unread bytes is simply
 * reported again.  A connection's interest follows the worker's state for
 * it: EPOLLIN unless reading is off (back-pressure, end of stream), EPOLLOUT
 * while a send found the socket full (CONN_LOOP_SENDING).
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

/* The epoll backend's per-worker state (no per-connection state: a
 * connection's interest set follows from the worker's flags for it). */
typedef struct epoll_state {
    int epfd;                      /* the worker's epoll instance */
    char *rbuf;                    /* EPOLL_RBUF_SIZE bytes of receive buffer */
    struct epoll_event events[EPOLL_MAX_EVENTS]; /* results of epoll_wait */
} epoll_state;

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
    w->recv_in_wait = true; /* reads happen in epoll_wait's batch only (tls.c) */
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

/* Set a connection's interest set from the worker's flags for it. */
static void update_interest(worker *w, conn *c)
{
    epoll_state *st = w->backend;
    uint32_t evs = 0;
    if (!(c->loop & CONN_LOOP_PAUSED) && !c->rd_eof)
        evs |= EPOLLIN;
    if (c->loop & CONN_LOOP_SENDING)
        evs |= EPOLLOUT;
    struct epoll_event ev = {.events = evs, .data.ptr = c};
    epoll_ctl(st->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    SM_STAT_INC(w->stats.syscalls);
}

static void epoll_recv_ctl(worker *w, conn *c, bool on)
{
    (void)on; /* the flags already say it */
    update_interest(w, c);
}

/* Listeners' EPOLLIN on or off: level-triggered, a waiting connection
 * would otherwise be reported, and fail, forever. */
static void epoll_accept_ctl(worker *w, bool on)
{
    epoll_state *st = w->backend;
    for (int i = 0; i < w->nlisten; i++) {
        struct epoll_event ev = {.events = on ? EPOLLIN : 0};
        ev.data.u64 = ((uint64_t)w->listen_fds[i] << 1) | 1u;
        epoll_ctl(st->epfd, EPOLL_CTL_MOD, w->listen_fds[i], &ev);
        SM_STAT_INC(w->stats.syscalls);
    }
}

static void accept_all(worker *w, int lfd)
{
    epoll_state *st = w->backend;
    for (int i = 0; i < 64 && w->accepting; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        SM_STAT_INC(w->stats.syscalls);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                worker_accept_error(w, lfd, errno);
            return;
        }
        conn *c = worker_conn_open(w, fd);
        if (!c)
            continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(st->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            worker_close_soon(w, c);
    }
}

/* Read what is there and hand it over (at most 4 buffers a round). */
static void handle_read(worker *w, conn *c)
{
    epoll_state *st = w->backend;
    for (int round = 0; round < 4; round++) {
        ssize_t n = read(c->fd, st->rbuf, EPOLL_RBUF_SIZE);
        SM_STAT_INC(w->stats.syscalls);
        if (n == 0) {
            worker_eof(w, c);
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                worker_close_soon(w, c);
            return;
        }
        worker_batch_clock(w); /* not timed from before the read syscall */
        if (!worker_input(w, c, st->rbuf, (size_t)n))
            return;
        if ((size_t)n < EPOLL_RBUF_SIZE)
            return; /* drained: level-triggered epoll reports any later bytes */
    }
}

/* Send the queue until it is gone or the socket is full. */
static void epoll_send(worker *w, conn *c)
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
                c->loop |= CONN_LOOP_SENDING; /* until EPOLLOUT */
                update_interest(w, c);
            } else {
                worker_close_soon(w, c);
            }
            return;
        }
        worker_sent(w, c, (size_t)n);
        if (c->loop & (CONN_LOOP_CLOSE | CONN_LOOP_CLOSED))
            return;
    }
}

static void epoll_close(worker *w, conn *c)
{
    worker_conn_close(w, c); /* close() takes it out of the epoll set */
}

static int epoll_wait_batch(worker *w, int timeout_ms)
{
    epoll_state *st = w->backend;
    int n = epoll_wait(st->epfd, st->events, EPOLL_MAX_EVENTS, timeout_ms);
    SM_STAT_INC(w->stats.syscalls);
    if (n < 0 && errno != EINTR) { /* EBADF, EINVAL, EFAULT: the instance is gone */
        worker_fail(w, errno, "epoll_wait: %s", strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        struct epoll_event *ev = &st->events[i];
        if (ev->data.u64 & 1u) {
            if (w->accepting)
                accept_all(w, (int)(ev->data.u64 >> 1));
            if (worker_should_exit(w))
                return -1;
            continue;
        }
        conn *c = ev->data.ptr;
        if (c->loop & CONN_LOOP_CLOSE)
            continue;
        bool hup = ev->events & (EPOLLHUP | EPOLLERR);
        bool reading = !(c->loop & CONN_LOOP_PAUSED) && !c->rd_eof;
        if (reading && ((ev->events & EPOLLIN) || hup)) {
            handle_read(w, c);
        } else if (hup) {
            worker_close_soon(w, c); /* not reading: nothing will tell us more */
            continue;
        }
        if ((ev->events & EPOLLOUT) && (c->loop & CONN_LOOP_SENDING)) {
            c->loop &= ~CONN_LOOP_SENDING;
            update_interest(w, c);
            worker_writable(w, c);
        }
    }
    return 0;
}

static void epoll_destroy(worker *w)
{
    epoll_state *st = w->backend;
    if (!st)
        return;
    while (w->conns)
        worker_conn_close(w, w->conns);
    close(st->epfd);
    free(st->rbuf);
    free(st);
    w->backend = NULL;
}

const backend_ops backend_epoll = {
    .name = "epoll",
    .probe = epoll_probe,
    .init = epoll_init,
    .wait = epoll_wait_batch,
    .send = epoll_send,
    .recv_ctl = epoll_recv_ctl,
    .accept_ctl = epoll_accept_ctl,
    .close = epoll_close,
    .destroy = epoll_destroy,
};
