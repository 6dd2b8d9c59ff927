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
 * The module cannot stop receiving for one connection: under back-pressure
 * its bytes wait, unparsed, in the connection's carry-over (conn.h) until
 * the queue drains below the high-water mark.
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

/* Per-connection state (conn->backend_data). */
typedef struct smap_conn {
    size_t staged;     /* queued bytes copied into TX slots, not yet confirmed by a sync */
    bool blocked;      /* the kernel said AGAIN: wait for a WRITABLE slot */
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
    uint32_t tx_pending;            /* TX slots queued since the last sync */
    uint32_t tx_len[SMAP_TX_SLOTS]; /* bytes staged in each TX slot (the kernel rewrites len) */
} smap_state;

static int smap_probe(const struct sm_settings *s, char *why, size_t whylen)
{
    /* The module attaches TCP sockets only (kernel/sm_sock.c): a -s unix
     * listener is for uring or epoll, which AUTO then picks. */
    if (s->unix_socket[0]) {
        snprintf(why, whylen, "the module carries TCP sockets only, and -s asks for a unix socket");
        return -1;
    }
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
    w->recv_in_wait = true; /* the module reads only in the sync of our wait (tls.c) */
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

/* Let go of a socket: detach it from the port. */
static void detach(worker *w, int fd)
{
    smap_state *st = w->backend;
    struct stackmap_attach at = {.fd = fd};
    ioctl(st->fd, STACKMAP_IOC_DETACH, &at);
    SM_STAT_INC(w->stats.syscalls);
}

/* Detach from the port and close; the fd leaves the table. */
static void smap_close(worker *w, conn *c)
{
    smap_state *st = w->backend;
    detach(w, c->fd);
    conn **slot = fd_slot(st, c->fd);
    if (slot)
        *slot = NULL;
    free(c->backend_data);
    c->backend_data = NULL;
    worker_conn_close(w, c);
}

/* A new connection reported by the kernel (already accepted and attached). */
static void on_new(worker *w, int fd)
{
    smap_state *st = w->backend;
    conn **slot = fd_slot(st, fd);
    smap_conn *sc = calloc(1, sizeof(*sc));
    if (!slot || !sc) {
        free(sc);
        detach(w, fd);
        close(fd);
        return;
    }
    conn *c = worker_conn_open(w, fd);
    if (!c) { /* worker_conn_open detached (forget_fd), answered and closed it */
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
        sc->staged -= staged_len;
        if (flags & (STACKMAP_F_BAD | STACKMAP_F_ERR)) {
            worker_close_soon(w, c);
            continue;
        }
        uint32_t sent = staged_len;
        if (flags & STACKMAP_F_AGAIN) {
            sent = staged_len - s->len;
            sc->blocked = true;
        }
        if (sc->staged == 0 && !sc->blocked)
            c->loop &= ~CONN_LOOP_SENDING;
        worker_sent(w, c, sent);
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
                if (data)
                    worker_input(w, c, data, s->len);
                if ((flags & STACKMAP_F_WRITABLE) && sc->blocked) {
                    sc->blocked = false;
                    if (sc->staged == 0)
                        c->loop &= ~CONN_LOOP_SENDING;
                    worker_writable(w, c);
                }
                if (flags & STACKMAP_F_EOF)
                    worker_eof(w, c);
                if (flags & STACKMAP_F_ERR)
                    worker_close_soon(w, c); /* the peer is gone */
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

/* Copy c's queue, past what is already staged, into TX slots for the next
 * sync.  A full ring leaves the rest for the next round. */
static void smap_send(worker *w, conn *c)
{
    smap_state *st = w->backend;
    smap_conn *sc = c->backend_data;
    struct stackmap_ring *tx = st->tx;
    uint32_t ns = tx->num_slots;
    uint32_t head = tx->head;
    uint32_t tail = __atomic_load_n(&tx->tail, __ATOMIC_ACQUIRE);
    if (sc->blocked || out_pending(c) <= sc->staged)
        return;
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
            worker_want_flush(w, c); /* ring full: the rest next round */
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
    if (sc->staged > 0)
        c->loop |= CONN_LOOP_SENDING; /* until the next sync's verdict */
    __atomic_store_n(&tx->head, head, __ATOMIC_RELEASE);
    tx->cur = head;
}

/* The module receives for every attached socket: nothing to switch. */
static void smap_recv_ctl(worker *w, conn *c, bool on)
{
    (void)w;
    (void)c;
    (void)on;
}

/* Listeners attached to the port (it accepts for them) or detached. */
static void smap_accept_ctl(worker *w, bool on)
{
    smap_state *st = w->backend;
    for (int i = 0; i < w->nlisten; i++) {
        struct stackmap_attach at = {.fd = w->listen_fds[i]};
        ioctl(st->fd, on ? STACKMAP_IOC_ATTACH : STACKMAP_IOC_DETACH, &at);
        SM_STAT_INC(w->stats.syscalls);
    }
}

/* One call: send the TX slots staged by the last flush, fill RX, sleep only
 * when idle; then the verdicts and the arrivals. */
static int smap_wait(worker *w, int timeout_ms)
{
    smap_state *st = w->backend;
    uint32_t first = (st->tx->head + st->tx->num_slots - st->tx_pending) % st->tx->num_slots;
    uint32_t n = st->tx_pending;
    struct pollfd pfd = {.fd = st->fd, .events = POLLIN};
    int rc = poll(&pfd, 1, timeout_ms);
    worker_batch_clock(w);
    SM_STAT_INC(w->stats.syscalls);
    SM_STAT_INC(w->stats.stackmap_syncs);
    st->tx_pending = 0;
    if (rc < 0 && (errno == EBADF || errno == EFAULT || errno == EINVAL)) {
        worker_fail(w, errno, "stackmap poll: %s", strerror(errno)); /* the port is gone */
        return -1;
    }
    if (rc < 0 && errno != EINTR) {
        engine_log(w->engine, 1, "stackmap poll: %s\n", strerror(errno));
        return 0;
    }
    reap_tx(w, first, n);
    reap_rx(w);
    return 0;
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
    .wait = smap_wait,
    .send = smap_send,
    .recv_ctl = smap_recv_ctl,
    .accept_ctl = smap_accept_ctl,
    .forget_fd = detach,
    .close = smap_close,
    .destroy = smap_destroy,
};
