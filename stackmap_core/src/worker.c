/*
 * worker.c -- what every ring backend shares about a worker thread:
 * accounting connections in and out (the -c limit, socket options, the
 * list "stats conns" prints), the free list of output scratch chunks, and
 * the thread's life: setup before the engine reports started, the loop, and
 * what a failure leaves behind (state FAILED with the reason, nothing open
 * that a client could wait on).  The loops themselves are in the io/
 * backends.
 */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine_internal.h"
#include "io/backend.h"
#include "racy.h"

/* Chunks kept on a worker's free list; more are freed. */
#define FREE_CHUNKS_MAX 256

out_chunk *worker_chunk_get(worker *w)
{
    out_chunk *ch = w->free_chunks;
    if (ch) {
        w->free_chunks = ch->next;
        w->nfree_chunks--;
        return ch;
    }
    ch = malloc(sizeof(*ch));
    if (!ch)
        SM_STAT_INC(w->stats.response_obj_oom);
    return ch;
}

void worker_chunk_put(worker *w, out_chunk *ch)
{
    if (w->nfree_chunks >= FREE_CHUNKS_MAX) {
        free(ch);
        return;
    }
    ch->next = w->free_chunks;
    w->free_chunks = ch;
    w->nfree_chunks++;
}

/* "tcp:addr:port" of a socket address. */
static void format_addr(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
        snprintf(buf, len, "tcp:%s:%d", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        port = ntohs(a->sin6_port);
        snprintf(buf, len, "tcp6:[%s]:%d", host, port);
    } else {
        snprintf(buf, len, "unknown");
    }
}

/* Put c on w's connection list ("stats conns" walks it under conns_lock). */
void worker_conn_link(worker *w, conn *c)
{
    pthread_mutex_lock(&w->conns_lock);
    c->prev_conn = NULL;
    c->next_conn = w->conns;
    if (w->conns)
        w->conns->prev_conn = c;
    w->conns = c;
    pthread_mutex_unlock(&w->conns_lock);
}

/* Take c off w's connection list. */
void worker_conn_unlink(worker *w, conn *c)
{
    pthread_mutex_lock(&w->conns_lock);
    if (c->prev_conn)
        c->prev_conn->next_conn = c->next_conn;
    else
        w->conns = c->next_conn;
    if (c->next_conn)
        c->next_conn->prev_conn = c->prev_conn;
    pthread_mutex_unlock(&w->conns_lock);
}

conn *worker_conn_open(worker *w, int fd)
{
    struct sm_engine *e = w->engine;
    int cur = atomic_fetch_add(&e->curr_conns, 1);
    /* -c may be changed live (stackmapctl reload): read it atomically */
    if (cur >= __atomic_load_n(&w->settings->maxconns, __ATOMIC_RELAXED)) {
        atomic_fetch_sub(&e->curr_conns, 1);
        atomic_fetch_add(&e->rejected_conns, 1);
        static const char msg[] = "ERROR Too many open connections\r\n";
        ssize_t rc = send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL);
        (void)rc;
        close(fd);
        engine_log(e, 1, "Too many open connections\n");
        return NULL;
    }
    conn *c = malloc(sizeof(*c));
    if (!c) {
        atomic_fetch_sub(&e->curr_conns, 1);
        close(fd);
        return NULL;
    }
    uint32_t id = atomic_fetch_add(&e->next_conn_id, 1);
    conn_init(c, w, fd, id);
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    if (w->settings->tcp_nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
        format_addr(&ss, c->peer, sizeof(c->peer));
    c->last_active = cache_now(w->cache);
    atomic_fetch_add(&e->total_conns, 1);
    w->nconns++;
    worker_conn_link(w, c);
    engine_log(e, 2, "<%d new auto-negotiating client connection\n", fd);
    return c;
}

void worker_conn_close(worker *w, conn *c)
{
    struct sm_engine *e = w->engine;
    worker_conn_unlink(w, c);
    engine_log(e, 2, "<%d connection closed.\n", c->fd);
    close(c->fd);
    conn_cleanup(c);
    free(c);
    w->nconns--;
    atomic_fetch_sub(&e->curr_conns, 1);
}

/* What "stats conns" shows of a connection that another worker owns. */
struct conn_view {
    conn_state state;     /* parser state */
    size_t out_bytes;     /* output queued and not yet sent */
    uint64_t last_active; /* rel_time of the last request */
};

/*
 * "stats conns" runs on whichever thread asked (a worker serving a client,
 * or the control plane) and looks at connections owned by other workers.
 * conns_lock keeps each connection alive while we look (the owner takes it
 * before freeing), but the owner updates these three fields without it, on
 * every request.  They are only displayed, each is one aligned word read
 * whole, and a value a request old is as good as memcached's own (it reads
 * other threads' connections the same way).  Taking a lock or atomics on
 * the owner's side would cost every request for a stats command.
 */
static SM_RACY_READ struct conn_view conn_peek(const conn *c)
{
    struct conn_view v;
    v.state = SM_RACY_LOAD(c->state);
    v.out_bytes = SM_RACY_LOAD(c->out_bytes);
    v.last_active = SM_RACY_LOAD(c->last_active);
    return v;
}

/* memcached's name for where a connection is in its life. */
static const char *conn_state_name(const struct conn_view *v)
{
    switch (v->state) {
    case CONN_NREAD:
        return "conn_nread";
    case CONN_SWALLOW:
        return "conn_swallow";
    case CONN_CLOSING:
        return "conn_closing";
    default:
        return v->out_bytes ? "conn_mwrite" : "conn_parse_cmd";
    }
}

void worker_stats_conns(worker *w, sm_stat_sink *sink)
{
    char name[64], addr[96];
    rel_time_t now = cache_now(w->cache);
    pthread_mutex_lock(&w->conns_lock); /* a failed worker closes its listeners under it */
    if (w->id == 0) {
        for (int i = 0; i < w->nlisten; i++) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof(ss);
            if (getsockname(w->listen_fds[i], (struct sockaddr *)&ss, &sl) != 0)
                continue;
            format_addr(&ss, addr, sizeof(addr));
            snprintf(name, sizeof(name), "%d:addr", w->listen_fds[i]);
            sink->add(sink, name, addr);
            snprintf(name, sizeof(name), "%d:state", w->listen_fds[i]);
            sink->add(sink, name, "conn_listening");
            snprintf(name, sizeof(name), "%d:secs_since_last_cmd", w->listen_fds[i]);
            sink->add(sink, name, "0");
        }
    }
    for (conn *c = w->conns; c; c = c->next_conn) {
        struct conn_view v = conn_peek(c);
        snprintf(name, sizeof(name), "%d:addr", c->fd);
        sink->add(sink, name, c->peer);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getsockname(c->fd, (struct sockaddr *)&ss, &sl) == 0) {
            format_addr(&ss, addr, sizeof(addr));
            snprintf(name, sizeof(name), "%d:listen_addr", c->fd);
            sink->add(sink, name, addr);
        }
        snprintf(name, sizeof(name), "%d:state", c->fd);
        sink->add(sink, name, conn_state_name(&v));
        snprintf(name, sizeof(name), "%d:secs_since_last_cmd", c->fd);
        sm_stat_addf(sink, name, "%u", (unsigned)(now - (rel_time_t)v.last_active));
    }
    pthread_mutex_unlock(&w->conns_lock);
}

void worker_close_idle(worker *w, void (*close_conn)(worker *w, conn *c))
{
    conn *c = w->conns, *next;
    for (; c; c = next) {
        next = c->next_conn; /* close_conn may free c */
        if (out_pending(c) == 0 && c->state == CONN_PARSE && c->rbytes == 0)
            close_conn(w, c);
    }
}

/* Publish a state change and wake the engine's start wait. */
static void set_state(worker *w, int state)
{
    struct sm_engine *e = w->engine;
    pthread_mutex_lock(&e->wait_lock);
    atomic_store(&w->state, state);
    pthread_cond_broadcast(&e->state_cond);
    pthread_mutex_unlock(&e->wait_lock);
}

void worker_fail(worker *w, int errnum, const char *fmt, ...)
{
    int was = atomic_load(&w->state);
    if (was == SM_WORKER_FAILED)
        return; /* the first reason stays */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof(w->error), fmt, ap);
    va_end(ap);
    w->error_errno = errnum;
    /* A setup failure is the engine's start error (or AUTO's note): one line, not one per worker. */
    if (was == SM_WORKER_SERVING)
        engine_log(w->engine, 0, "worker %d failed: %s\n", w->id, w->error);
    set_state(w, SM_WORKER_FAILED); /* the mutex orders error before state for readers */
}

bool worker_accept_fatal(int err)
{
    return err == EBADF || err == EINVAL || err == ENOTSOCK || err == EOPNOTSUPP || err == EFAULT;
}

bool worker_accept_backoff(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* After the loop died: close every connection (the backend's destroy) and
 * this worker's listeners, so the kernel sends new clients to the others. */
static void abandon(worker *w)
{
    w->ops->destroy(w);
    pthread_mutex_lock(&w->conns_lock);
    for (int i = 0; i < w->nlisten; i++)
        close(w->listen_fds[i]);
    free(w->listen_fds);
    w->listen_fds = NULL;
    w->nlisten = 0;
    pthread_mutex_unlock(&w->conns_lock);
}

void *worker_main(void *arg)
{
    worker *w = arg;
    struct sm_engine *e = w->engine;
    char name[16];
    snprintf(name, sizeof(name), "sm-worker-%d", w->id);
    pthread_setname_np(pthread_self(), name);
    if (w->ops->setup) {
        char err[sizeof(w->error)] = "";
        int rc = w->ops->setup(w, err, sizeof(err));
        if (rc < 0) {
            worker_fail(w, rc == -1 ? 0 : -rc, "%s", err);
            return NULL; /* the engine's start joins us and undoes the rest */
        }
    }
    /* Set up: wait until every worker is (or the start is called off). */
    pthread_mutex_lock(&e->wait_lock);
    atomic_store(&w->setup_done, true);
    pthread_cond_broadcast(&e->state_cond);
    while (!atomic_load(&e->go) && !atomic_load(&w->stop))
        pthread_cond_wait(&e->state_cond, &e->wait_lock);
    pthread_mutex_unlock(&e->wait_lock);
    if (atomic_load(&w->stop)) {
        set_state(w, SM_WORKER_STOPPED);
        return NULL;
    }
    set_state(w, SM_WORKER_SERVING);
    w->ops->run(w);
    if (atomic_load(&w->state) == SM_WORKER_FAILED)
        abandon(w);
    else
        set_state(w, SM_WORKER_STOPPED);
    return NULL;
}
