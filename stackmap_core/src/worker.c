/*
 * worker.c -- a worker thread's event loop and every connection policy, run
 * once for all backends (as Redis's ae.c runs its loop over ae_epoll.c).
 *
 * The round (worker_loop): the backend waits for a batch and delivers it
 * through the calls in io/backend.h; received bytes go to the protocols at
 * once (worker_input), and every connection the batch touched goes on the
 * flush list; then the flush looks at each once -- close it, or have the
 * backend send its whole queue -- and the timed policies run (accept
 * backoff over, idle-timeout sweep).  The policies:
 *
 * - Accept: the -c limit (memcached's "ERROR Too many open connections"),
 *   no new connection while draining, and a 10 ms pause of accepting when
 *   out of descriptors (ACCEPT_BACKOFF_NS).
 * - Back-pressure: a connection whose queue passes OUT_HIGH_WATER stops
 *   being parsed and read (ops->recv_ctl) until its client drains it below
 *   the mark; then the input held meanwhile is parsed and reading resumes.
 * - Fairness (-R, memcached's reqs_per_event): one turn at parsing answers
 *   at most R requests.  A connection with more complete requests buffered
 *   yields (conn_yields): it is held like back-pressure -- reading off, the
 *   rest of its input kept -- and put on the flush list; once its replies
 *   are sent (or at the flush, if it queued none) it gets its next turn of
 *   R, after every other connection's input of the round.  So a deep
 *   pipeline is answered R requests a round, interleaved with the others.
 *   A yield holds at most YIELD_HOLD_MAX bytes (feed_turns): past that,
 *   the turns go on at once.  An lru_crawler metadump is held the same way
 *   (c->dump, proto/crawler_cmd.c): each turn queues one step of it, and
 *   the next turn comes once that step's bytes are sent.
 * - End of stream: reading stops, everything received before it is
 *   answered, and the connection closes once its last reply has left.
 * - Idle timeout (-o idle_timeout): at most once a second, a connection
 *   waiting for a command (not inside a value, nothing queued) that has
 *   received nothing for longer than idle_timeout seconds is closed, without
 *   a word, and counted in idle_kicks: memcached 1.6's rule.
 * - Drain (stop with a grace period): accepting stops, and every connection
 *   with nothing in flight is closed as soon as it is idle.
 *
 * Also here: accounting connections in and out (socket options, the list
 * "stats conns" prints) and the thread's life: setup before the engine
 * reports started, the loop, and what a failure leaves behind (state FAILED
 * with the reason, nothing open that a client could wait on).
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
#include <sys/un.h>
#include <unistd.h>

#include "engine_internal.h"
#include "io/backend.h"
#include "proto/proto.h"
#include "racy.h"
#include "tls.h"

/* How often (ms) a loop with nothing to do looks at the stop/drain flags
 * and the timed policies. */
#define WORKER_TICK_MS 100
/* How often (ms) a worker that owns a watcher moves its log lines to it. */
#define WATCH_TICK_MS 2

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
    } else if (ss->ss_family == AF_UNIX) {
        const struct sockaddr_un *a = (const struct sockaddr_un *)ss;
        snprintf(buf, len, "unix:%.*s", (int)sizeof(a->sun_path), a->sun_path);
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

/* A socket that will not become a connection: the backend lets go, then close. */
static void refuse_fd(worker *w, int fd)
{
    if (w->ops && w->ops->forget_fd)
        w->ops->forget_fd(w, fd);
}

conn *worker_conn_open(worker *w, int fd)
{
    struct sm_engine *e = w->engine;
    if (atomic_load_explicit(&w->draining, memory_order_relaxed)) {
        refuse_fd(w, fd);
        close(fd);
        return NULL;
    }
    int cur = atomic_fetch_add(&e->curr_conns, 1);
    /* -c may be changed live (stackmapctl reload): read it atomically */
    if (cur >= __atomic_load_n(&w->settings->maxconns, __ATOMIC_RELAXED)) {
        atomic_fetch_sub(&e->curr_conns, 1);
        atomic_fetch_add(&e->rejected_conns, 1);
        refuse_fd(w, fd);
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
        refuse_fd(w, fd);
        close(fd);
        return NULL;
    }
    uint32_t id = atomic_fetch_add(&e->next_conn_id, 1);
    conn_init(c, &w->env, fd, id);
    c->worker = w;
    if (tls_wanted(w, fd) && !tls_conn_start(w, c)) { /* TLS hook: the handshake starts with its bytes */
        conn_cleanup(c);
        free(c);
        atomic_fetch_sub(&e->curr_conns, 1);
        refuse_fd(w, fd);
        close(fd);
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    if (w->settings->tcp_nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct sockaddr_storage ss = {0};
    socklen_t sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
        format_addr(&ss, c->peer, sizeof(c->peer));
    c->last_active = cache_now(w->cache);
    atomic_fetch_add(&e->total_conns, 1);
    w->nconns++;
    worker_conn_link(w, c);
    engine_log(e, 2, "<%d new auto-negotiating client connection\n", fd);
    if (sm_log_wants(&e->log, SM_LOG_CONNEVENTS))
        sm_log_conn_event(&e->log, true, c->peer, 0, fd);
    return c;
}

void worker_conn_close(worker *w, conn *c)
{
    struct sm_engine *e = w->engine;
    if (sm_log_wants(&e->log, SM_LOG_CONNEVENTS))
        sm_log_conn_event(&e->log, false, c->peer, c->close_reason, c->fd);
    if (c->watch) { /* a watcher goes: off this worker's list, then the logger's */
        sm_watcher **pp = &w->watchers;
        while (*pp && *pp != c->watch)
            pp = &(*pp)->next_local;
        if (*pp)
            *pp = c->watch->next_local;
        sm_watcher_remove(&e->log, c->watch);
        c->watch = NULL;
    }
    worker_conn_unlink(w, c);
    engine_log(e, 2, "<%d connection closed.\n", c->fd);
    close(c->fd);
    tls_conn_free(c);
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
    char name[64], addr[120];
    rel_time_t now = cache_now(w->cache);
    pthread_mutex_lock(&w->conns_lock); /* a failed worker closes its listeners under it */
    if (w->id == 0) {
        for (int i = 0; i < w->nlisten; i++) {
            struct sockaddr_storage ss = {0};
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
        struct sockaddr_storage ss = {0};
        socklen_t sl = sizeof(ss);
        if (getsockname(c->fd, (struct sockaddr *)&ss, &sl) == 0) {
            format_addr(&ss, addr, sizeof(addr));
            snprintf(name, sizeof(name), "%d:listen_addr", c->fd);
            sink->add(sink, name, addr);
        }
        snprintf(name, sizeof(name), "%d:state", c->fd);
        /* the asking connection is mid-command, as memcached shows it (its reply is queued meanwhile) */
        sink->add(sink, name, c == sink->asker ? "conn_parse_cmd" : conn_state_name(&v));
        snprintf(name, sizeof(name), "%d:secs_since_last_cmd", c->fd);
        sm_stat_addf(sink, name, "%u", (unsigned)(now - (rel_time_t)v.last_active));
    }
    pthread_mutex_unlock(&w->conns_lock);
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

/* ---- input: the protocols, back-pressure, end of stream ---- */

/*
 * Parse data[0..len) in turns of -R requests: one turn, and more while a
 * yield would hold more than YIELD_HOLD_MAX bytes.  A yield keeps the rest
 * for later, but a receive larger than that (a big uring buffer, or the
 * stackmap backend, which cannot stop receiving for a held connection)
 * must not pile up past the carry-over's limit: memcached, reading 16 KiB
 * at a time, never holds more either.  Returns the bytes consumed.
 */
#define YIELD_HOLD_MAX (64u * 1024u)
static size_t feed_turns(conn *c, char *data, size_t len)
{
    int budget = c->worker->settings->reqs_per_event;
    c->nreqs = budget;
    size_t used = proto_process(c, data, len);
    while (conn_yielded(c) && !c->dump && len - used > YIELD_HOLD_MAX) {
        c->nreqs = budget;
        used += proto_process(c, data + used, len - used);
    }
    return used;
}

bool worker_feed(conn *c, char *data, size_t len)
{
    if (c->rbytes == 0 && len > 0) {
        /* The common case: parse straight from the backend's buffer. */
        size_t used = feed_turns(c, data, len);
        if (c->state != CONN_CLOSING && used < len && !conn_rbuf_append(c, data + used, len - used))
            return false;
        conn_input_done(c);
        return true;
    }
    c->nreqs = 0; /* (no turn taken: no yield) */
    if (len == 0) {
        if (c->rbytes == 0 && !c->dump)
            return true;
        conn_rbuf_consume(c, feed_turns(c, c->rbuf, c->rbytes));
        conn_input_done(c);
        return true;
    }
    /* Behind held input: append and parse YIELD_HOLD_MAX bytes at a time,
     * so that what a yield holds never grows by a whole (big) receive. */
    while (len > 0 && c->state != CONN_CLOSING) {
        size_t n = len < YIELD_HOLD_MAX ? len : YIELD_HOLD_MAX;
        if (!conn_rbuf_append(c, data, n))
            return false;
        data += n;
        len -= n;
        conn_rbuf_consume(c, feed_turns(c, c->rbuf, c->rbytes));
    }
    conn_input_done(c);
    return true;
}

bool worker_eof_finished(conn *c)
{
    if (out_pending(c) > 0)
        return false;
    if (c->state != CONN_PARSE || (c->rbytes == 0 && !c->dump))
        return true; /* closing, or inside a value that can no longer arrive */
    /* Input held back by back-pressure or a yield: answer it now that the
     * queue is empty (turn after turn while the turns queue nothing). */
    do {
        if (!worker_feed(c, NULL, 0))
            return true;
    } while (out_pending(c) == 0 && conn_yielded(c));
    /* Parsing stops only at an incomplete request, a full queue, a yield or
     * a close: with nothing queued and no yield, nothing more can be answered. */
    return out_pending(c) == 0;
}

void worker_want_flush(worker *w, conn *c)
{
    if (c->loop & (CONN_LOOP_FLUSH | CONN_LOOP_CLOSED))
        return;
    c->loop |= CONN_LOOP_FLUSH;
    c->next_flush = w->flush;
    w->flush = c;
}

void worker_close_soon(worker *w, conn *c)
{
    c->loop |= CONN_LOOP_CLOSE;
    worker_want_flush(w, c);
}

/* Queue above the mark: stop reading c (the protocols already stopped parsing). */
static void pause_input(worker *w, conn *c)
{
    if (c->loop & CONN_LOOP_PAUSED)
        return;
    c->loop |= CONN_LOOP_PAUSED;
    if (!c->rd_eof)
        w->ops->recv_ctl(w, c, false);
}

bool worker_input(worker *w, conn *c, char *data, size_t len)
{
    if (c->loop & (CONN_LOOP_CLOSE | CONN_LOOP_CLOSED))
        return false;
    SM_STAT_ADD(w->stats.bytes_read, len);
    c->last_active = cache_now(w->cache);
    if (c->tls) /* TLS hook: decrypted (or not: kTLS) into worker_plain_input */
        return tls_input(w, c, data, len);
    return worker_plain_input(w, c, data, len);
}

bool worker_plain_input(worker *w, conn *c, char *data, size_t len)
{
    if (c->loop & (CONN_LOOP_CLOSE | CONN_LOOP_CLOSED))
        return false;
    if (!worker_feed(c, data, len)) {
        worker_close_soon(w, c);
        return false;
    }
    if (out_pending(c) > 0 || c->state == CONN_CLOSING)
        worker_want_flush(w, c);
    if (out_pending(c) > OUT_HIGH_WATER || conn_yielded(c)) {
        pause_input(w, c);
        worker_want_flush(w, c); /* (a yield that queued nothing resumes at the flush) */
        return false;
    }
    return c->state != CONN_CLOSING;
}

/*
 * Held input may go on (c's queue is below the mark, or its yield's turn
 * came): parse it, with a new -R budget, and read again unless it is held
 * still (the queue passed the mark again, or it yielded again).  false:
 * the connection must close now.
 */
static bool resume_held(worker *w, conn *c)
{
    bool yielded = false;
    if ((c->rbytes > 0 || c->dump) && c->state == CONN_PARSE) {
        worker_batch_clock(w);
        if (!worker_feed(c, NULL, 0))
            return false;
        yielded = conn_yielded(c);
    }
    if (out_pending(c) <= OUT_HIGH_WATER && !yielded) {
        c->loop &= ~CONN_LOOP_PAUSED;
        if (!c->rd_eof)
            w->ops->recv_ctl(w, c, true);
    }
    return true;
}

void worker_eof(worker *w, conn *c)
{
    if (c->rd_eof)
        return;
    c->rd_eof = true;
    if (c->state != CONN_CLOSING)
        c->close_reason = SM_CLOSE_NORMAL;
    if (!(c->loop & CONN_LOOP_PAUSED)) /* (paused: receiving is off already) */
        w->ops->recv_ctl(w, c, false);
    worker_want_flush(w, c); /* the flush closes it once everything is answered */
}

void worker_sent(worker *w, conn *c, size_t n)
{
    if (c->loop & (CONN_LOOP_CLOSE | CONN_LOOP_CLOSED))
        return;
    if (c->tls) /* TLS hook: the ciphertext head shrinks */
        tls_sent(w, c, n);
    if (n > 0) {
        SM_STAT_ADD(w->stats.bytes_written, n);
        conn_out_sent(c, n);
    }
    /* Back-pressure over, or a yield's replies sent: parse what was held
     * meanwhile, then read again. */
    if ((c->loop & CONN_LOOP_PAUSED) && out_pending(c) <= OUT_HIGH_WATER && !resume_held(w, c)) {
        worker_close_soon(w, c);
        return;
    }
    /* TLS hook: what was parsed meanwhile is encrypted before a backend
     * that sends on (epoll's loop) sees it. */
    if (c->tls && !(c->loop & CONN_LOOP_SENDING) && !tls_flush(w, c, false)) {
        worker_close_soon(w, c);
        return;
    }
    /* (still paused with nothing queued: yielded again, resumed at the flush) */
    if (out_pending(c) > 0 || c->state == CONN_CLOSING || c->rd_eof || (c->loop & CONN_LOOP_PAUSED))
        worker_want_flush(w, c);
}

void worker_writable(worker *w, conn *c)
{
    worker_want_flush(w, c);
}

/* ---- the flush ---- */

/* Hand c to the backend's close; the worker no longer touches it. */
static void close_now(worker *w, conn *c)
{
    if (c->loop & CONN_LOOP_FLUSH) { /* (rare: re-queued during its own flush) */
        conn **pp = &w->flush;
        while (*pp && *pp != c)
            pp = &(*pp)->next_flush;
        if (*pp)
            *pp = c->next_flush;
    }
    c->loop = (uint8_t)((c->loop & ~CONN_LOOP_FLUSH) | CONN_LOOP_CLOSED);
    w->ops->close(w, c);
}

/* One connection of the flush: close it, or send its queue. */
static void flush_one(worker *w, conn *c)
{
    for (int pass = 0; pass < 2; pass++) {
        if (c->loop & CONN_LOOP_CLOSE) {
            if (!c->tls || !tls_goodbye(w, c)) {
                close_now(w, c);
                return;
            }
            /* TLS: the close_notify goes out first, then the close */
            c->loop &= (uint8_t)~CONN_LOOP_CLOSE;
            c->state = CONN_CLOSING;
        }
        if (c->loop & CONN_LOOP_SENDING)
            return; /* its completion or room puts it back on the list */
        if (c->tls && !tls_flush(w, c, true)) { /* TLS hook: kTLS switch, or encrypt */
            close_now(w, c);
            return;
        }
        if (out_pending(c) == 0 && (c->loop & CONN_LOOP_PAUSED)) {
            /* A yield that queued nothing: its next turn, now. */
            if (!resume_held(w, c)) {
                close_now(w, c);
                return;
            }
            if (out_pending(c) == 0 && (c->loop & CONN_LOOP_PAUSED)) {
                worker_want_flush(w, c); /* yielded again: the next round's turn */
                return;
            }
        }
        if (out_pending(c) == 0) {
            /* CONN_CLOSING: the protocol's last words are sent; rd_eof:
             * every reply to what came before the end is sent. */
            if (c->state == CONN_CLOSING || (c->rd_eof && worker_eof_finished(c))) {
                if (!c->tls || !tls_goodbye(w, c)) { /* TLS: close_notify first */
                    close_now(w, c);
                    return;
                }
                c->state = CONN_CLOSING;
            }
            if (out_pending(c) == 0)
                return;
        }
        if (c->tls && !tls_flush(w, c, true)) { /* TLS hook: encrypt what the lines above queued */
            close_now(w, c);
            return;
        }
        w->ops->send(w, c);
        /* A send that completed at once (epoll) and left nothing queued may
         * have made c ready to close: decide now rather than next round. */
        if (w->flush != c || (c->loop & CONN_LOOP_SENDING) || out_pending(c) > 0)
            return;
        w->flush = c->next_flush;
        c->loop &= ~CONN_LOOP_FLUSH;
    }
}

/* Look at every connection on the flush list once.  Connections put back
 * on it meanwhile (a ring that was full) wait for the next round. */
static void worker_flush(worker *w)
{
    conn *c = w->flush;
    w->flush = NULL;
    while (c) {
        conn *next = c->next_flush;
        c->loop &= ~CONN_LOOP_FLUSH;
        flush_one(w, c);
        c = next;
    }
}

/* ---- accepting ---- */

static void set_accepting(worker *w, bool on)
{
    if (w->accepting == on)
        return;
    w->accepting = on;
    w->ops->accept_ctl(w, on);
}

void worker_accept_error(worker *w, int listen_fd, int err)
{
    if (err == EBADF || err == EINVAL || err == ENOTSOCK || err == EOPNOTSUPP || err == EFAULT) {
        if (!atomic_load(&w->draining)) /* (a drained listener's accept may end so) */
            worker_fail(w, err, "accept on listener fd %d: %s", listen_fd, strerror(err));
        return;
    }
    if ((err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) && !w->accept_paused) {
        w->accept_paused = true;
        w->accept_paused_at = sm_lat_now();
        w->accept_resume = w->accept_paused_at + ACCEPT_BACKOFF_NS;
        SM_STAT_INC(w->stats.listen_disabled_num);
        set_accepting(w, false);
    }
}

/* The wait's timeout: the tick, less while an accept pause ends sooner. */
static int wait_timeout(worker *w)
{
    if (w->flush)
        return 0; /* connections left for the next round: do not sleep */
    if (w->watchers)
        return WATCH_TICK_MS; /* (an accept pause is shorter than a tick anyway) */
    if (!w->accept_paused)
        return WORKER_TICK_MS;
    uint64_t now = sm_lat_now();
    if (now >= w->accept_resume)
        return 0;
    uint64_t ms = (w->accept_resume - now + 999999) / 1000000;
    return ms < WORKER_TICK_MS ? (int)ms : WORKER_TICK_MS;
}

/* Accept pause over: accept again (unless draining). */
static void accept_resume(worker *w)
{
    uint64_t now = sm_lat_now();
    if (now < w->accept_resume)
        return;
    w->accept_paused = false;
    SM_STAT_ADD(w->stats.listen_disabled_ns, now - w->accept_paused_at);
    if (!atomic_load(&w->draining))
        set_accepting(w, true);
}

/* ---- idle connections ---- */

/*
 * -o idle_timeout: at most once a second, close every connection that waits
 * for a command -- not inside a value, nothing queued -- and has received
 * nothing for more than idle_timeout seconds (memcached 1.6: its conn
 * timeout thread kicks only connections in conn_new_cmd/conn_read, and says
 * nothing before closing).  A partial command line does not protect it.
 */
static void idle_sweep(worker *w)
{
    int timeout = __atomic_load_n(&w->settings->idle_timeout, __ATOMIC_RELAXED);
    if (timeout <= 0)
        return;
    uint64_t now = cache_now(w->cache);
    if (now == w->idle_swept)
        return;
    w->idle_swept = now;
    for (conn *c = w->conns; c; c = c->next_conn) {
        if (c->state != CONN_PARSE || out_pending(c) > 0 || (c->loop & (CONN_LOOP_CLOSE | CONN_LOOP_CLOSED)) ||
            c->watch) /* (memcached never times a watcher out) */
            continue;
        if (now - c->last_active > (uint64_t)timeout) {
            c->close_reason = SM_CLOSE_IDLE_TIMEOUT;
            SM_STAT_INC(w->stats.idle_kicks);
            engine_log(w->engine, 2, "<%d idle timeout, closing\n", c->fd);
            worker_close_soon(w, c);
        }
    }
}

/* Draining: close every connection with nothing in flight (no queued
 * output, no partial request, not inside a value). */
static void close_idle(worker *w)
{
    for (conn *c = w->conns; c; c = c->next_conn)
        if (out_pending(c) == 0 && c->state == CONN_PARSE && c->rbytes == 0) {
            c->close_reason = SM_CLOSE_SHUTDOWN;
            worker_close_soon(w, c);
        }
}

/*
 * Move what each watcher's buffer holds into its connection's queue, while
 * less than SM_WATCH_PUMP_MAX bytes are queued there: a watcher that reads
 * slowly keeps its lines in its bounded buffer, where the logger thread
 * skips what does not fit.  Not once the connection is ending.
 */
static void pump_watchers(worker *w)
{
    bool draining = atomic_load_explicit(&w->draining, memory_order_relaxed);
    for (sm_watcher *wt = w->watchers; wt; wt = wt->next_local) {
        conn *c = wt->conn;
        if (draining || c->rd_eof || c->state == CONN_CLOSING || (c->loop & (CONN_LOOP_CLOSE | CONN_LOOP_CLOSED)))
            continue;
        bool queued = false;
        while (out_pending(c) < SM_WATCH_PUMP_MAX) {
            const char *p;
            size_t n = sm_watcher_peek(wt, &p);
            if (n == 0)
                break;
            if (n > SM_WATCH_PUMP_MAX - out_pending(c))
                n = SM_WATCH_PUMP_MAX - out_pending(c);
            if (n > OUT_CHUNK_SIZE)
                n = OUT_CHUNK_SIZE; /* one chunk a copy: a failure queued none of it */
            if (out_copy(c, p, n) < 0)
                break; /* out of memory: the lines wait in the buffer */
            sm_watcher_consume(wt, n);
            queued = true;
        }
        if (queued)
            worker_want_flush(w, c);
    }
}

/* ---- the round ---- */

static void worker_loop(worker *w)
{
    while (!worker_should_exit(w)) {
        if (atomic_load(&w->draining)) {
            set_accepting(w, false);
            close_idle(w);
            worker_flush(w);
            if (w->nconns == 0)
                break;
        }
        if (w->ops->wait(w, wait_timeout(w)) < 0)
            return; /* the backend failed the worker */
        if (w->watchers)
            pump_watchers(w);
        worker_flush(w);
        if (w->accept_paused)
            accept_resume(w);
        idle_sweep(w);
    }
}

void worker_destroy(worker *w)
{
    w->ops->destroy(w);
    w->flush = NULL;
    conn_env_destroy(&w->env);
}

/* After the loop died: close every connection (the backend's destroy) and
 * this worker's listeners, so the kernel sends new clients to the others. */
static void abandon(worker *w)
{
    worker_destroy(w);
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
    sm_logger_bind_thread(&e->log, w->id); /* this thread's log ring (logger.h) */
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
    w->accepting = true; /* the backend's init or setup armed the listeners */
    w->accept_paused = false;
    w->flush = NULL;
    set_state(w, SM_WORKER_SERVING);
    worker_loop(w);
    if (atomic_load(&w->state) == SM_WORKER_FAILED)
        abandon(w);
    else
        set_state(w, SM_WORKER_STOPPED);
    return NULL;
}
