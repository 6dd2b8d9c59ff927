/*
 * stackmap.c -- the ring backend over our own kernel module, /dev/stackmap:
 * the StackMap paper's data path (see kernel/stackmap.4).
 *
 * Each worker opens one port, maps its rings and buffer pool, and attaches
 * its listening sockets.  The loop is one poll() per batch: that single
 * call makes the kernel send every TX slot queued since the last one, fill
 * RX slots from every socket that became readable (new connections
 * included: the module accepts them and reports their fds), and sleep only
 * when there is nothing.  The worker then walks the RX ring, parsing
 * requests straight out of the shared buffers, and copies each
 * connection's queued responses into TX slots for the next call.
 *
 * Copies: RX data is copied once, by TCP into the ring buffers, and parsed
 * in place.  TX data is copied from the response queue (item memory is not
 * in the port's pool) into TX buffers, and once more by TCP into the
 * socket.  The queue is consumed only when the kernel reports what TCP
 * took: a slot flagged AGAIN (send buffer full) leaves its remainder queued
 * until a WRITABLE slot arrives, so a client that stops reading never stalls
 * the ring or the other connections.
 *
 * End of stream (an EOF slot: the client shut down its side) closes a
 * connection only once everything it sent before has been answered and the
 * kernel has confirmed the last reply sent (conn_eof_finished); requests
 * that the output high-water mark left unparsed are parsed as soon as the
 * queue has drained below it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../engine_internal.h"
#include "../../../kernel/include/uapi/stackmap.h"
#include "backend.h"

/* Ring sizes and buffer size of a worker's port. */
#define SMAP_RX_SLOTS 1024
#define SMAP_TX_SLOTS 1024
#define SMAP_BUF_SIZE 2048
/* How often (ms) an idle loop looks at the stop/drain flags. */
#define SMAP_TICK_MS 100

/* Per-connection state (conn->backend_data). */
typedef struct smap_conn {
    size_t staged;     /* queued bytes copied into TX slots this round, not yet confirmed */
    bool blocked;      /* the kernel said AGAIN: wait for a WRITABLE slot */
    bool in_flush;     /* on the flush list */
    bool closing;      /* close now (an error or a bad slot) */
    bool held;         /* parsing stopped at the output high-water mark with input left */
} smap_conn;

/* Per-worker state (worker->backend). */
typedef struct smap_state {
    int fd;                         /* the port: an open file of /dev/stackmap */
    char *mem;                      /* the mapped port memory */
    size_t mem_size;                /* bytes mapped */
    struct stackmap_ring *rx;       /* kernel -> app ring */
    struct stackmap_ring *tx;       /* app -> kernel ring */
    char *bufs;                     /* buffer 0 */
    uint32_t buf_size;              /* bytes per buffer */
    uint32_t num_bufs;              /* buffers in the pool */
    conn **by_fd;                   /* connection of each fd number */
    int nby_fd;                     /* capacity of by_fd */
    conn *flush;                    /* connections with output to stage */
    uint32_t tx_pending;            /* TX slots queued since the last sync */
    uint32_t tx_len[SMAP_TX_SLOTS]; /* bytes staged in each TX slot (the kernel rewrites len) */
} smap_state;

static int smap_probe(const struct sm_settings *s, char *why, size_t whylen)
{
    (void)s;
    int fd = open(STACKMAP_DEVICE, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "%s: %s", STACKMAP_DEVICE, strerror(errno));
        return -1;
    }
    close(fd);
    return 0;
}

static int smap_init(worker *w, char *err, size_t errlen)
{
    smap_state *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    st->fd = open(STACKMAP_DEVICE, O_RDWR | O_CLOEXEC);
    if (st->fd < 0) {
        snprintf(err, errlen, "open %s: %s", STACKMAP_DEVICE, strerror(errno));
        free(st);
        return -1;
    }
    struct stackmap_reg reg = {.version = STACKMAP_VERSION,
                               .rx_slots = SMAP_RX_SLOTS,
                               .tx_slots = SMAP_TX_SLOTS,
                               .buf_size = SMAP_BUF_SIZE,
                               .num_bufs = SMAP_RX_SLOTS + SMAP_TX_SLOTS};
    if (ioctl(st->fd, STACKMAP_IOC_REGISTER, &reg) < 0) {
        snprintf(err, errlen, "STACKMAP_IOC_REGISTER: %s", strerror(errno));
        goto fail;
    }
    st->mem = mmap(NULL, reg.mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, st->fd, 0);
    if (st->mem == MAP_FAILED) {
        st->mem = NULL;
        snprintf(err, errlen, "mmap of the stackmap port: %s", strerror(errno));
        goto fail;
    }
    st->mem_size = reg.mem_size;
    st->rx = (struct stackmap_ring *)(st->mem + reg.rx_ring_ofs);
    st->tx = (struct stackmap_ring *)(st->mem + reg.tx_ring_ofs);
    st->bufs = st->mem + reg.bufs_ofs;
    st->buf_size = reg.buf_size;
    st->num_bufs = reg.num_bufs;
    if (st->tx->num_slots != SMAP_TX_SLOTS || st->rx->num_slots != SMAP_RX_SLOTS) {
        snprintf(err, errlen, "stackmap port has %u/%u slots, asked for %u/%u", st->rx->num_slots,
                 st->tx->num_slots, SMAP_RX_SLOTS, SMAP_TX_SLOTS);
        goto fail;
    }
    for (int i = 0; i < w->nlisten; i++) {
        struct stackmap_attach at = {.fd = w->listen_fds[i]};
        if (ioctl(st->fd, STACKMAP_IOC_ATTACH, &at) < 0) {
            snprintf(err, errlen, "STACKMAP_IOC_ATTACH listener: %s", strerror(errno));
            goto fail;
        }
    }
    w->backend = st;
    return 0;
fail:
    if (st->mem)
        munmap(st->mem, st->mem_size);
    close(st->fd);
    free(st);
    return -1;
}

/* by_fd slot for fd, growing the table. */
static conn **fd_slot(smap_state *st, int fd)
{
    if (fd < 0)
        return NULL;
    if (fd >= st->nby_fd) {
        int n = st->nby_fd ? st->nby_fd : 1024;
        while (n <= fd)
            n *= 2;
        conn **t = realloc(st->by_fd, (size_t)n * sizeof(*t));
        if (!t)
            return NULL;
        memset(t + st->nby_fd, 0, (size_t)(n - st->nby_fd) * sizeof(*t));
        st->by_fd = t;
        st->nby_fd = n;
    }
    return &st->by_fd[fd];
}

static conn *conn_of(smap_state *st, int fd)
{
    return (fd >= 0 && fd < st->nby_fd) ? st->by_fd[fd] : NULL;
}

static void want_flush(smap_state *st, conn *c)
{
    smap_conn *sc = c->backend_data;
    if (sc->in_flush)
        return;
    sc->in_flush = true;
    c->next_ready = st->flush;
    st->flush = c;
}

/* Detach from the port and close; the fd leaves the table. */
static void close_conn(worker *w, conn *c)
{
    smap_state *st = w->backend;
    smap_conn *sc = c->backend_data;
    if (sc->in_flush) {
        conn **pp = &st->flush;
        while (*pp && *pp != c)
            pp = &(*pp)->next_ready;
        if (*pp)
            *pp = c->next_ready;
    }
    struct stackmap_attach at = {.fd = c->fd};
    ioctl(st->fd, STACKMAP_IOC_DETACH, &at);
    SM_STAT_INC(w->stats.syscalls);
    conn **slot = fd_slot(st, c->fd);
    if (slot)
        *slot = NULL;
    free(sc);
    c->backend_data = NULL;
    worker_conn_close(w, c);
}

/* A new connection reported by the kernel (already accepted and attached). */
static void on_new(worker *w, int fd)
{
    smap_state *st = w->backend;
    conn **slot = fd_slot(st, fd);
    smap_conn *sc = calloc(1, sizeof(*sc));
    if (!slot || !sc || atomic_load(&w->draining)) {
        free(sc);
        struct stackmap_attach at = {.fd = fd};
        ioctl(st->fd, STACKMAP_IOC_DETACH, &at);
        close(fd);
        return;
    }
    if (atomic_load(&w->engine->curr_conns) >= __atomic_load_n(&w->settings->maxconns, __ATOMIC_RELAXED)) {
        /* Over -c: detach first, so worker_conn_open's answer and close end it. */
        struct stackmap_attach at = {.fd = fd};
        ioctl(st->fd, STACKMAP_IOC_DETACH, &at);
    }
    conn *c = worker_conn_open(w, fd);
    if (!c) { /* worker_conn_open answered and closed the fd */
        free(sc);
        return;
    }
    c->backend_data = sc;
    *slot = c;
}

/* Apply the kernel's verdict on the TX slots of the last sync. */
static void reap_tx(worker *w, uint32_t first, uint32_t n)
{
    smap_state *st = w->backend;
    uint32_t ns = st->tx->num_slots;
    for (uint32_t i = 0; i < n; i++) {
        struct stackmap_slot *s = &st->tx->slots[(first + i) % ns];
        conn *c = conn_of(st, s->fd);
        uint32_t flags = s->flags;
        s->flags = 0;
        if (!c)
            continue;
        smap_conn *sc = c->backend_data;
        uint32_t staged_len = st->tx_len[(first + i) % ns];
        uint32_t sent = staged_len;
        if (flags & STACKMAP_F_BAD) {
            sent = 0;
            sc->closing = true;
        } else if (flags & STACKMAP_F_ERR) {
            sent = 0;
            sc->closing = true;
        } else if (flags & STACKMAP_F_AGAIN) {
            sent = staged_len - s->len;
            sc->blocked = true;
        }
        if (sent > 0) {
            SM_STAT_ADD(w->stats.bytes_written, sent);
            conn_out_sent(c, sent);
        }
        sc->staged = 0;
        want_flush(st, c);
    }
}

/* A data slot's bytes, or NULL when its length or buffer index is out of range. */
static char *slot_data(const smap_state *st, const struct stackmap_slot *s)
{
    if (s->len == 0 || s->buf_idx >= st->num_bufs || s->len > st->buf_size)
        return NULL;
    return st->bufs + (size_t)s->buf_idx * st->buf_size;
}

/* Before the RX slots run: prefetch the keys they are about to look up (prefetch.h). */
static void prefetch_rx(worker *w, uint32_t head, uint32_t tail)
{
    smap_state *st = w->backend;
    struct stackmap_ring *rx = st->rx;
    for (; head != tail; head = (head + 1) % rx->num_slots) {
        const struct stackmap_slot *s = &rx->slots[head];
        char *data = (s->flags & (STACKMAP_F_NEW | STACKMAP_F_BAD)) ? NULL : slot_data(st, s);
        if (data)
            prefetch_scan(w->cache, &w->pf, data, s->len);
    }
    prefetch_items(w->cache, &w->pf);
}

/* Walk the RX ring: new connections, data, writable, end of stream. */
static void reap_rx(worker *w)
{
    smap_state *st = w->backend;
    struct stackmap_ring *rx = st->rx;
    uint32_t ns = rx->num_slots;
    uint32_t head = rx->head;
    uint32_t tail = __atomic_load_n(&rx->tail, __ATOMIC_ACQUIRE);
    uint64_t nslots = 0;
    prefetch_reset(&w->pf);
    prefetch_rx(w, head, tail);
    while (head != tail) {
        struct stackmap_slot *s = &rx->slots[head];
        uint32_t flags = s->flags;
        int fd = s->fd;
        nslots++;
        if (flags & STACKMAP_F_BAD) {
            SM_STAT_INC(w->stats.stackmap_bad_slots);
        } else if ((flags & STACKMAP_F_NEW) && !(flags & STACKMAP_F_ERR)) {
            on_new(w, fd);
        } else if (!(flags & STACKMAP_F_NEW)) {
            conn *c = conn_of(st, fd);
            if (c) {
                smap_conn *sc = c->backend_data;
                char *data = slot_data(st, s);
                if (data && !sc->closing) {
                    SM_STAT_ADD(w->stats.bytes_read, s->len);
                    c->last_active = cache_now(w->cache);
                    if (!conn_feed(c, data, s->len))
                        sc->closing = true;
                    sc->held = out_pending(c) > OUT_HIGH_WATER && c->rbytes > 0;
                }
                if (flags & STACKMAP_F_WRITABLE)
                    sc->blocked = false;
                if (flags & STACKMAP_F_EOF)
                    c->rd_eof = true; /* answer what came before it, then close (stage_tx) */
                if ((flags & STACKMAP_F_ERR) || (c->rd_eof && !sc->closing && conn_eof_finished(c))) {
                    /* Peer gone, or at its end with nothing left to answer. */
                    close_conn(w, c);
                } else if (out_pending(c) > 0 || c->state == CONN_CLOSING || sc->closing) {
                    want_flush(st, c);
                }
            }
        }
        s->flags = 0;
        head = (head + 1) % ns;
    }
    prefetch_reset(&w->pf);
    __atomic_store_n(&rx->head, head, __ATOMIC_RELEASE);
    rx->cur = head;
    SM_STAT_ADD(w->stats.stackmap_rx_slots, nslots);
}

/* Copy queued responses into TX slots (one connection's bytes in order). */
static void stage_tx(worker *w)
{
    smap_state *st = w->backend;
    struct stackmap_ring *tx = st->tx;
    uint32_t ns = tx->num_slots;
    uint32_t head = tx->head;
    uint32_t tail = __atomic_load_n(&tx->tail, __ATOMIC_ACQUIRE);
    conn *keep = NULL;
    while (st->flush) {
        conn *c = st->flush;
        smap_conn *sc = c->backend_data;
        st->flush = c->next_ready;
        sc->in_flush = false;
        /* Requests left unparsed at the high-water mark: go on once below it. */
        if (sc->held && !sc->closing && out_pending(c) <= OUT_HIGH_WATER) {
            if (!conn_feed(c, NULL, 0))
                sc->closing = true;
            sc->held = out_pending(c) > OUT_HIGH_WATER && c->rbytes > 0;
        }
        /* closing: an error or bad slot; CONN_CLOSING: the protocol's last words
         * are sent; rd_eof: every reply to what came before the end is sent */
        if (sc->closing || (c->state == CONN_CLOSING && out_pending(c) == 0) ||
            (c->rd_eof && conn_eof_finished(c))) {
            close_conn(w, c);
            continue;
        }
        if (sc->blocked || out_pending(c) <= sc->staged)
            continue;
        /* Walk the queue past what is already staged and copy the rest. */
        int cnt;
        struct iovec *iov = conn_out_iov(c, &cnt);
        size_t skip = sc->staged;
        int i = 0;
        size_t off = 0;
        while (i < cnt && skip >= iov[i].iov_len - off) {
            skip -= iov[i].iov_len - off;
            off = 0;
            i++;
        }
        off += skip;
        while (i < cnt) {
            if ((head + 1) % ns == tail) {
                /* ring full: finish next round */
                c->next_ready = keep;
                keep = c;
                sc->in_flush = true;
                break;
            }
            struct stackmap_slot *s = &tx->slots[head];
            if (s->buf_idx >= st->num_bufs)
                break;
            char *dst = st->bufs + (size_t)s->buf_idx * st->buf_size;
            uint32_t len = 0;
            while (i < cnt && len < st->buf_size) {
                size_t n = iov[i].iov_len - off;
                if (n > st->buf_size - len)
                    n = st->buf_size - len;
                memcpy(dst + len, (char *)iov[i].iov_base + off, n);
                len += (uint32_t)n;
                off += n;
                if (off == iov[i].iov_len) {
                    off = 0;
                    i++;
                }
            }
            s->fd = c->fd;
            s->offset = 0;
            s->len = len;
            s->aux = 0;
            s->flags = 0;
            st->tx_len[head] = len;
            sc->staged += len;
            head = (head + 1) % ns;
            st->tx_pending++;
            SM_STAT_INC(w->stats.stackmap_tx_slots);
        }
    }
    st->flush = keep;
    __atomic_store_n(&tx->head, head, __ATOMIC_RELEASE);
    tx->cur = head;
}

static void smap_run(worker *w)
{
    smap_state *st = w->backend;
    bool listening = true;
    while (!worker_should_exit(w)) {
        if (atomic_load(&w->draining)) {
            if (listening) {
                for (int i = 0; i < w->nlisten; i++) {
                    struct stackmap_attach at = {.fd = w->listen_fds[i]};
                    ioctl(st->fd, STACKMAP_IOC_DETACH, &at);
                }
                listening = false;
            }
            worker_close_idle(w, close_conn);
            if (w->nconns == 0)
                break;
        }
        uint32_t first = (st->tx->head + st->tx->num_slots - st->tx_pending) % st->tx->num_slots;
        uint32_t n = st->tx_pending;
        /* One call: send the TX slots, fill RX, sleep only when idle. */
        struct pollfd pfd = {.fd = st->fd, .events = POLLIN};
        int timeout = st->flush ? 0 : SMAP_TICK_MS;
        int rc = poll(&pfd, 1, timeout);
        worker_batch_clock(w);
        SM_STAT_INC(w->stats.syscalls);
        SM_STAT_INC(w->stats.stackmap_syncs);
        st->tx_pending = 0;
        if (rc < 0 && (errno == EBADF || errno == EFAULT || errno == EINVAL)) {
            worker_fail(w, errno, "stackmap poll: %s", strerror(errno)); /* the port is gone */
            return;
        }
        if (rc < 0 && errno != EINTR) {
            engine_log(w->engine, 1, "stackmap poll: %s\n", strerror(errno));
            continue;
        }
        reap_tx(w, first, n);
        reap_rx(w);
        stage_tx(w);
    }
}

static void smap_destroy(worker *w)
{
    smap_state *st = w->backend;
    if (!st)
        return;
    while (w->conns) {
        conn *c = w->conns;
        free(c->backend_data);
        c->backend_data = NULL;
        worker_conn_close(w, c);
    }
    pool_destroy(&w->pool);
    /* Closing the port detaches everything and frees its memory. */
    if (st->mem)
        munmap(st->mem, st->mem_size);
    close(st->fd);
    free(st->by_fd);
    free(st);
    w->backend = NULL;
}

const backend_ops backend_stackmap = {
    .name = "stackmap",
    .probe = smap_probe,
    .init = smap_init,
    .run = smap_run,
    .destroy = smap_destroy,
};
