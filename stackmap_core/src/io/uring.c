/*
 * uring.c -- the io_uring ring backend: StackMap's data path as mainline
 * Linux offers it.
 *
 * One ring per worker thread, run to completion: one io_uring_enter (the
 * wait) both submits everything the worker's last flush queued and waits
 * for the next batch of completions; the batch is handed to the worker in
 * full (worker.c parses and executes it, every response is queued), and
 * each connection's queue leaves in one sendmsg SQE (the send).  So the
 * number of syscalls falls with the load instead of growing with it.
 *
 * - Accept: a multishot accept SQE per listening socket (each worker has
 *   its own SO_REUSEPORT listeners, so no cross-thread hand-off).
 * - Receive: a multishot recv per connection into a provided-buffer ring
 *   of static buffers registered once per worker.  The protocol parses
 *   straight out of the ring buffer; the buffer goes back to the ring as
 *   soon as worker_input() returns (a partial request is copied aside),
 *   so the ring never waits on a slow client.
 * - Registered files: every accepted socket is installed in the ring's
 *   sparse file table; recv and send use the fixed index, which saves the
 *   kernel a file-table lookup and reference per operation.
 * - Send: the iovecs of a connection's queue are snapshotted into the
 *   connection's own array for the in-flight sendmsg (the protocol may keep
 *   appending to the live queue meanwhile); values go straight from item
 *   memory, which stays referenced until the send completes.
 * - Zero copy (-o uring_zc_threshold=BYTES): a queue of at least that many
 *   bytes leaves with SENDMSG_ZC; the kernel pins the pages, and the items
 *   and scratch chunks they belong to stay referenced until the second
 *   (notification) completion says TCP has let go of them.
 * - Back-pressure (the worker's recv_ctl): a connection's multishot receive
 *   is cancelled until the client drains its responses.
 * - A full socket buffer after the client's end of stream: io_uring's own
 *   poll always reports POLLRDHUP, so once the peer has shut down its side
 *   a send that finds no room completes with EAGAIN instead of waiting (and
 *   an io_uring POLLOUT would fire at once, forever).  Such a connection is
 *   parked in a per-worker epoll instance (created on first use) for
 *   EPOLLOUT, which does not report RDHUP unless asked; one io_uring poll
 *   on that epoll fd wakes the loop when any of them has room again.
 * - End of stream (a receive of 0 bytes: the client shut down its side):
 *   no receive is armed again (worker_eof); the close (shutdown, then
 *   close) frees the connection once no SQE refers to it any more.
 * - Memory: an idle connection holds its conn and this backend's small
 *   uring_conn; a send's iovec snapshot is a block of the worker's pool
 *   (bufpool.h) held only while the send is in flight.
 * - Batch wait (-o uring_batch_usec): a loaded worker whose CPU never idles
 *   asks the kernel for a batch of arrivals instead of waking at the first
 *   (batch_adapt); a large batch is prefetched a window at a time.
 *
 * The ring is created on the worker thread itself, so it can be
 * SINGLE_ISSUER | DEFER_TASKRUN (completions are processed only when this
 * thread enters the kernel: no inter-processor wake-ups for task work).
 *
 * All of this needs liburing, which is optional at build time: the build
 * (stackmap_core/_build.py, the Makefile's C targets) defines SM_HAVE_URING
 * only when a program using liburing compiles and links.  Without it the
 * #else branch at the end of this file is the backend: its probe says what
 * is missing, so --backend uring is refused and auto moves on to epoll.
 */
#ifdef SM_HAVE_URING
#include <errno.h>
#include <limits.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../engine_internal.h"
#include "../cache/hugemem.h"
#include "../prefetch.h"
#include "backend.h"
#include "cpuidle.h"

/* user_data tags in the low bits (conn and state pointers are 16-aligned). */
#define TAG_ACCEPT 1u
#define TAG_RECV   2u
#define TAG_SEND   3u
#define TAG_IGNORE 4u
#define TAG_WRWAIT 5u
#define TAG_MASK   7u

/* Provided-buffer group id used for receives. */
#define BGID 0

/* Batch wait (-o uring_batch_usec; see batch_adapt). */
#define BATCH_MIN 8        /* a round with this many arrivals shows a loaded worker */
#define BATCH_MAX 256      /* the largest batch a wait asks for */
#define BATCH_HOLD 64      /* rounds without growth after a wait ran out of time, and of rest after two */
#define ACTIVE_ROUNDS 64   /* rounds per window of the active-connection count */

/* The kernel's largest registered file table (IORING_MAX_FIXED_FILES). */
#define URING_MAX_FIXED (1 << 20)

/* Receive buffers published to the kernel at least (see top_up_bufs). */
#define PUBLISH_MIN 64
/* Nanoseconds after the ring ran dry during which the publish target does not fall. */
#define PUBLISH_DRY_HOLD_NS (5ull * 1000 * 1000 * 1000)

/* Per-connection io_uring state (conn->backend_data). */
typedef struct uring_conn {
    struct msghdr msg;    /* header of the in-flight sendmsg */
    struct iovec *snap;   /* iovecs of the in-flight sendmsg (snapshot of the queue): a pooled
                             block, held only while that send is in flight; NULL otherwise */
    size_t snapcap;       /* bytes of the snap block */
    int fixed;            /* index in the ring's registered file table, -1: use the plain fd */
    int inflight;         /* SQEs in flight that reference this connection */
    bool recv_armed;      /* a multishot recv is active */
    bool wr_wait;         /* parked in the worker's wr_epfd until the socket has room
                             (a send is "in flight" meanwhile: CONN_LOOP_SENDING) */
    bool closing;         /* the worker closed it: freed once nothing is in flight */
    bool zc;              /* the in-flight send is zero-copy (SENDMSG_ZC) */
    int zc_res;           /* result of a zero-copy send, applied when its notification arrives */
    unsigned seen_window; /* the active-count window of this connection's last counted arrival */
} uring_conn;

/* Per-worker io_uring state (worker->backend). */
typedef struct uring_state {
    struct io_uring ring;        /* the worker's ring */
    bool ring_ok;                /* ring initialised */
    struct io_uring_buf_ring *br; /* provided-buffer ring (shared with the kernel) */
    char *bufs;                  /* nbufs * bufsize bytes of static receive buffers */
    unsigned nbufs;              /* buffers in the ring (power of two) */
    unsigned bufsize;            /* bytes per buffer */
    unsigned short *spare;       /* stack of buffer ids not in the ring, last returned on top;
                                    every other buffer is in the ring or taken by a receive
                                    whose completion is not reaped yet (then it comes back) */
    unsigned nspare;             /* entries in spare */
    unsigned publish_target;     /* how many the ring is topped up to each round */
    unsigned bufs_round;         /* buffers receives took this round */
    unsigned bufs_peak;          /* most taken in one round, this active-count window */
    unsigned bufs_peak_prev;     /* the same, previous window */
    unsigned ran_dry;            /* receives that found the ring empty this round */
    uint64_t dry_until;          /* publish_target may not fall before this clock (latency.h ns) */
    int *free_fixed;             /* stack of free registered-file slots */
    int nfree_fixed;             /* entries in free_fixed */
    int nfixed;                  /* size of the registered file table */
    bool *accept_armed;          /* per listener: its multishot accept is in flight */
    unsigned sends_queued;       /* sends queued this round: each completes inline unless its socket is full */
    unsigned arrivals;           /* receives with data this round */
    unsigned batch_target;       /* arrivals the next wait asks for (1: wake at the first) */
    unsigned batch_hold;         /* rounds left before batch_target may grow again */
    unsigned batch_rest;         /* rounds left without batch waits (two ran out in a row) */
    unsigned active_window;      /* id of the current active-count window */
    unsigned active_rounds;      /* rounds into the current window */
    unsigned active_count;       /* connections with an arrival in the current window */
    unsigned active_prev;        /* the same, for the previous window */
    cpuidle idle;                /* whether this worker's CPU idles (batch waits only if not) */
    int wr_epfd;                 /* epoll instance of sockets waiting for room (wait_writable), -1: none yet */
    int wr_count;                /* connections parked in wr_epfd */
    bool wr_armed;               /* an io_uring poll on wr_epfd is in flight */
} uring_state;

/* Receive buffer bid of the provided-buffer ring. */
static inline char *ring_buf(const uring_state *st, unsigned bid)
{
    return st->bufs + (size_t)bid * st->bufsize;
}

/* Largest power of two <= v (v >= 1). */
static unsigned pow2_floor(unsigned v)
{
    unsigned p = 1;
    while (p * 2 <= v)
        p *= 2;
    return p;
}

static int uring_probe(const struct sm_settings *s, char *why, size_t whylen)
{
    (void)s;
    FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
    if (f) {
        int v = 0;
        if (fscanf(f, "%d", &v) == 1 && v == 2) {
            fclose(f);
            snprintf(why, whylen, "io_uring is disabled by sysctl kernel.io_uring_disabled=2");
            return -1;
        }
        fclose(f);
    }
    struct io_uring ring;
    int rc = io_uring_queue_init(8, &ring, 0);
    if (rc < 0) {
        snprintf(why, whylen, "io_uring_setup failed: %s", strerror(-rc));
        return -1;
    }
    struct io_uring_probe *p = io_uring_get_probe_ring(&ring);
    bool ok = p && io_uring_opcode_supported(p, IORING_OP_RECV) &&
              io_uring_opcode_supported(p, IORING_OP_SENDMSG) &&
              io_uring_opcode_supported(p, IORING_OP_ACCEPT);
    if (p)
        io_uring_free_probe(p);
    io_uring_queue_exit(&ring);
    if (!ok) {
        snprintf(why, whylen, "io_uring lacks recv/sendmsg/accept support");
        return -1;
    }
    return 0;
}

/*
 * Slots of a worker's registered file table: one per connection it may hold
 * (-c, and a few spare), but no more than the open-file limit, which the
 * kernel holds each table to (EMFILE beyond it: with `ulimit -n 1024` and
 * -c 1024 every worker's ring failed).  Connections past the table use
 * their plain fd.
 */
static int fixed_table_size(int maxconns)
{
    long n = (long)maxconns + 16;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && (rlim_t)n > rl.rlim_cur)
        n = (long)rl.rlim_cur;
    if (n > URING_MAX_FIXED)
        n = URING_MAX_FIXED;
    return n > 0 ? (int)n : 1;
}

static int uring_init(worker *w, char *err, size_t errlen)
{
    uring_state *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    const struct sm_settings *s = w->settings;
    st->nbufs = pow2_floor((unsigned)(s->uring_bufs > 0 ? s->uring_bufs : 1024));
    if (st->nbufs > 32768)
        st->nbufs = 32768;
    st->bufsize = (unsigned)s->uring_buf_size; /* 512 and up: sm_settings_check */
    st->nfixed = fixed_table_size(s->maxconns);
    st->free_fixed = malloc((size_t)st->nfixed * sizeof(int));
    /* Huge pages: the kernel writes each receive into the next buffer of the
     * ring, so with 4 KiB pages nearly every receive is a TLB miss (twice:
     * the kernel's copy and our parse). */
    st->bufs = hugemem_alloc((size_t)st->nbufs * st->bufsize);
    st->spare = malloc((size_t)st->nbufs * sizeof(*st->spare));
    st->accept_armed = calloc((size_t)(w->nlisten > 0 ? w->nlisten : 1), sizeof(bool));
    if (!st->free_fixed || !st->bufs || !st->spare || !st->accept_armed) {
        free(st->accept_armed);
        free(st->spare);
        free(st->free_fixed);
        hugemem_free(st->bufs, (size_t)st->nbufs * st->bufsize);
        free(st);
        snprintf(err, errlen, "out of memory for io_uring buffers");
        return -ENOMEM;
    }
    for (int i = 0; i < st->nfixed; i++)
        st->free_fixed[st->nfree_fixed++] = st->nfixed - 1 - i;
    for (unsigned i = 0; i < st->nbufs; i++)
        st->spare[st->nspare++] = (unsigned short)(st->nbufs - 1 - i);
    st->publish_target = PUBLISH_MIN < st->nbufs ? PUBLISH_MIN : st->nbufs;
    st->batch_target = 1;
    st->active_window = 1; /* new connections start at 0: not yet counted */
    st->wr_epfd = -1;
    w->backend = st;
    return 0;
}

/* An SQE, submitting the queue first when it is full. */
static struct io_uring_sqe *get_sqe(worker *w)
{
    uring_state *st = w->backend;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&st->ring);
    if (!sqe) {
        io_uring_submit(&st->ring);
        SM_STAT_INC(w->stats.syscalls);
        SM_STAT_INC(w->stats.uring_submits);
        sqe = io_uring_get_sqe(&st->ring);
    }
    return sqe;
}

/*
 * Publish receive buffers until publish_target are in the ring, the ones
 * returned last first.  The kernel takes the ring's buffers in turn, so with
 * all of them in it each would come round again only after every other one:
 * a new receive always copied into memory long gone from the cache (and the
 * parser read it from there).  Publishing only about twice what receives
 * took in a busy round keeps the few buffers in use cache-warm; when the
 * ring does run dry (a receive fails with ENOBUFS and is re-armed) the
 * target grows at once to twice what the round wanted, up to all of them
 * (-o uring_bufs), and does not fall again until 5 s have passed without
 * that: such demand comes in spikes.
 */
static void top_up_bufs(uring_state *st)
{
    unsigned mask = io_uring_buf_ring_mask(st->nbufs);
    int added = 0;
    while (st->nbufs - st->nspare < st->publish_target && st->nspare > 0) {
        unsigned bid = st->spare[--st->nspare];
        io_uring_buf_ring_add(st->br, ring_buf(st, bid), st->bufsize, (unsigned short)bid, mask, added++);
    }
    if (added)
        io_uring_buf_ring_advance(st->br, added);
}

/* After a round: the publish target from the buffers taken lately. */
static void publish_adapt(uring_state *st, uint64_t now)
{
    unsigned ran_dry = st->ran_dry;
    /* A receive that found the ring empty wanted a buffer too. */
    unsigned wanted = st->bufs_round + ran_dry;
    if (wanted > st->bufs_peak)
        st->bufs_peak = wanted;
    st->bufs_round = 0;
    st->ran_dry = 0;
    unsigned peak = st->bufs_peak > st->bufs_peak_prev ? st->bufs_peak : st->bufs_peak_prev;
    unsigned t = 2 * peak;
    if (ran_dry && t < 2 * st->publish_target)
        t = 2 * st->publish_target;
    if (t < PUBLISH_MIN)
        t = PUBLISH_MIN;
    if (t > st->nbufs)
        t = st->nbufs;
    if (ran_dry)
        st->dry_until = now + PUBLISH_DRY_HOLD_NS;
    if (now < st->dry_until && t < st->publish_target)
        t = st->publish_target; /* keep room for the next spike */
    st->publish_target = t;
}

static void arm_accept(worker *w, int idx);

/*
 * The backend's setup, on the worker thread before the engine reports
 * started: create the ring and the buffer ring, register the file table and
 * arm a multishot accept per listener (submitted with the loop's first
 * enter).  0, or a negative errno + err.
 */
static int ring_setup(worker *w, char *err, size_t errlen)
{
    uring_state *st = w->backend;
    const struct sm_settings *s = w->settings;
    unsigned entries = (unsigned)(s->uring_entries > 0 ? s->uring_entries : 256);
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    if (s->uring_sqpoll) {
        p.flags = IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER;
        p.sq_thread_idle = 1000;
    }
    /* CLAMP: a completion queue of 8 per entry passes the kernel's largest
     * (65536) from uring_entries=8192 on; it is then that largest. */
    p.flags |= IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    p.cq_entries = entries * 8;
    int rc = io_uring_queue_init_params(entries, &st->ring, &p);
    if (rc < 0 && rc != -EMFILE && rc != -ENFILE && rc != -ENOMEM) {
        /* Older kernels: no DEFER_TASKRUN / SINGLE_ISSUER. */
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        p.cq_entries = entries * 8;
        rc = io_uring_queue_init_params(entries, &st->ring, &p);
    }
    if (rc < 0) {
        snprintf(err, errlen, "io_uring_queue_init: %s", strerror(-rc));
        return rc;
    }
    st->ring_ok = true;
    /* DEFER_TASKRUN: receives run only inside our io_uring_enter (tls.c). */
    w->recv_in_wait = (st->ring.flags & IORING_SETUP_DEFER_TASKRUN) != 0;
    cpuidle_init(&st->idle);
    /* Each io_uring_enter then names the ring by a registered index, which
     * spares the kernel a file lookup per enter; without it, plain fd. */
    (void)io_uring_register_ring_fd(&st->ring);
    size_t brsize = (size_t)st->nbufs * sizeof(struct io_uring_buf);
    void *mem = NULL;
    if (posix_memalign(&mem, 4096, brsize) != 0) {
        snprintf(err, errlen, "out of memory for the buffer ring");
        return -ENOMEM;
    }
    memset(mem, 0, brsize);
    st->br = mem;
    io_uring_buf_ring_init(st->br);
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)st->br, .ring_entries = st->nbufs,
                                   .bgid = BGID};
    rc = io_uring_register_buf_ring(&st->ring, &reg, 0);
    if (rc < 0) {
        snprintf(err, errlen, "io_uring_register_buf_ring: %s", strerror(-rc));
        return rc;
    }
    top_up_bufs(st);
    atomic_store_explicit(&w->stats.uring_bufs_published, st->publish_target, memory_order_relaxed);
    rc = io_uring_register_files_sparse(&st->ring, (unsigned)st->nfixed);
    if (rc < 0) {
        snprintf(err, errlen, "io_uring_register_files_sparse(%d): %s", st->nfixed, strerror(-rc));
        return rc;
    }
    for (int i = 0; i < w->nlisten; i++)
        arm_accept(w, i);
    return 0;
}

static void arm_accept(worker *w, int idx)
{
    uring_state *st = w->backend;
    if (st->accept_armed[idx])
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe)
        return;
    io_uring_prep_multishot_accept(sqe, w->listen_fds[idx], NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ((uint64_t)idx << 3) | TAG_ACCEPT);
    st->accept_armed[idx] = true;
}

/* Accepting on: arm every listener not armed; off: cancel the armed ones
 * (their last completion, -ECANCELED, marks them unarmed). */
static void uring_accept_ctl(worker *w, bool on)
{
    uring_state *st = w->backend;
    for (int i = 0; i < w->nlisten; i++) {
        if (on) {
            arm_accept(w, i);
        } else if (st->accept_armed[i]) {
            struct io_uring_sqe *sqe = get_sqe(w);
            if (!sqe)
                break;
            io_uring_prep_cancel64(sqe, ((uint64_t)i << 3) | TAG_ACCEPT, 0);
            io_uring_sqe_set_data64(sqe, TAG_IGNORE);
        }
    }
}

static void arm_recv(worker *w, conn *c)
{
    uring_conn *uc = c->backend_data;
    if (c->rd_eof)
        return; /* nothing more will come */
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe)
        return;
    io_uring_prep_recv_multishot(sqe, uc->fixed >= 0 ? uc->fixed : c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT | (uc->fixed >= 0 ? IOSQE_FIXED_FILE : 0);
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | TAG_RECV);
    uc->recv_armed = true;
    uc->inflight++;
}

/* Cancel a connection's multishot receive (its final CQE still arrives). */
static void cancel_recv(worker *w, conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe)
        return;
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)c | TAG_RECV, 0);
    io_uring_sqe_set_data64(sqe, TAG_IGNORE);
}

/* Give back the snapshot block of a send that has completed. */
static void drop_snap(worker *w, uring_conn *uc)
{
    pool_give(&w->env.pool, uc->snap, uc->snapcap);
    uc->snap = NULL;
    uc->snapcap = 0;
}

/* Free a connection once nothing in flight references it. */
static void maybe_free(worker *w, conn *c)
{
    uring_state *st = w->backend;
    uring_conn *uc = c->backend_data;
    if (!uc->closing || uc->inflight > 0 || (c->loop & CONN_LOOP_FLUSH))
        return;
    if (uc->fixed >= 0) {
        int minus1 = -1;
        io_uring_register_files_update(&st->ring, (unsigned)uc->fixed, &minus1, 1);
        SM_STAT_INC(w->stats.syscalls);
        st->free_fixed[st->nfree_fixed++] = uc->fixed;
    }
    drop_snap(w, uc);
    free(uc);
    c->backend_data = NULL;
    worker_conn_close(w, c);
}

static void start_close(worker *w, conn *c);

/* Take a connection out of wr_epfd: it no longer waits for room. */
static void unpark(worker *w, conn *c)
{
    uring_state *st = w->backend;
    uring_conn *uc = c->backend_data;
    epoll_ctl(st->wr_epfd, EPOLL_CTL_DEL, c->fd, NULL);
    SM_STAT_INC(w->stats.syscalls);
    st->wr_count--;
    uc->wr_wait = false;
    c->loop &= ~CONN_LOOP_SENDING;
    uc->inflight--;
}

/* Have the ring wake the loop when a socket parked in wr_epfd has room. */
static void arm_wr_poll(worker *w)
{
    uring_state *st = w->backend;
    if (st->wr_armed || st->wr_count == 0)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe)
        return;
    io_uring_prep_poll_add(sqe, st->wr_epfd, POLLIN);
    io_uring_sqe_set_data64(sqe, TAG_WRWAIT);
    st->wr_armed = true;
}

/*
 * A send found the socket buffer full (EAGAIN): park the connection in
 * wr_epfd until it has room (on_writable), sending nothing meanwhile.
 * Has it closed when that cannot be set up.
 */
static void wait_writable(worker *w, conn *c)
{
    uring_state *st = w->backend;
    uring_conn *uc = c->backend_data;
    if (st->wr_epfd < 0)
        st->wr_epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (st->wr_epfd < 0 || epoll_ctl(st->wr_epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        worker_close_soon(w, c);
        return;
    }
    SM_STAT_INC(w->stats.syscalls);
    st->wr_count++;
    uc->wr_wait = true;
    c->loop |= CONN_LOOP_SENDING;
    uc->inflight++;
    arm_wr_poll(w);
}

/* wr_epfd is readable: send on for every parked connection that has room. */
static void on_writable(worker *w)
{
    uring_state *st = w->backend;
    struct epoll_event evs[64];
    st->wr_armed = false;
    int n;
    do {
        n = epoll_wait(st->wr_epfd, evs, 64, 0);
        SM_STAT_INC(w->stats.syscalls);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            unpark(w, c);
            worker_writable(w, c);
        }
    } while (n == 64);
    arm_wr_poll(w);
}

/*
 * Start closing: stop receiving; the connection is freed by maybe_free()
 * once the last completion is in.
 */
static void start_close(worker *w, conn *c)
{
    uring_conn *uc = c->backend_data;
    if (uc->closing)
        return;
    uc->closing = true;
    if (uc->recv_armed)
        cancel_recv(w, c);
    if (uc->wr_wait)
        unpark(w, c);
    shutdown(c->fd, SHUT_RDWR);
}

static void on_accept(worker *w, struct io_uring_cqe *cqe)
{
    uring_state *st = w->backend;
    int idx = (int)(cqe->user_data >> 3);
    if (!(cqe->flags & IORING_CQE_F_MORE))
        st->accept_armed[idx] = false;
    if (cqe->res < 0) {
        if (cqe->res != -ECANCELED)
            worker_accept_error(w, w->listen_fds[idx], -cqe->res);
    } else {
        int fd = cqe->res;
        conn *c = worker_conn_open(w, fd);
        if (c) {
            uring_conn *uc = calloc(1, sizeof(*uc));
            if (!uc) {
                worker_conn_close(w, c);
            } else {
                c->backend_data = uc;
                uc->fixed = -1;
                /* A registered slot when one is free (the table is sized for -c
                 * at start; a -c raised live may outgrow it): otherwise the
                 * plain fd serves. */
                if (st->nfree_fixed > 0) {
                    int slot = st->free_fixed[--st->nfree_fixed];
                    int rc = io_uring_register_files_update(&st->ring, (unsigned)slot, &fd, 1);
                    SM_STAT_INC(w->stats.syscalls);
                    if (rc >= 0)
                        uc->fixed = slot;
                    else
                        st->free_fixed[st->nfree_fixed++] = slot;
                }
                arm_recv(w, c);
            }
        }
    }
    /* A multishot accept that ended is re-armed while the worker accepts
     * (an error above may just have stopped that, or failed the worker). */
    if (!st->accept_armed[idx] && w->accepting && !worker_should_exit(w))
        arm_accept(w, idx);
}

/* A receive is done with buffer bid: it waits on the spare stack. */
static void recycle_buf(uring_state *st, unsigned bid)
{
    st->spare[st->nspare++] = (unsigned short)bid;
}

static void on_recv(worker *w, conn *c, struct io_uring_cqe *cqe)
{
    uring_state *st = w->backend;
    uring_conn *uc = c->backend_data;
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        uc->recv_armed = false;
        uc->inflight--;
    }
    int res = cqe->res;
    bool took = cqe->flags & IORING_CQE_F_BUFFER; /* the receive took buffer bid */
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    if (took)
        st->bufs_round++;
    if (uc->closing) {
        if (took)
            recycle_buf(st, bid);
        maybe_free(w, c);
        return;
    }
    if (res > 0 && took) {
        st->arrivals++;
        if (uc->seen_window != st->active_window) {
            uc->seen_window = st->active_window;
            st->active_count++;
        }
        worker_input(w, c, ring_buf(st, bid), (size_t)res);
        recycle_buf(st, bid);
    } else {
        if (took) /* and put nothing in it */
            recycle_buf(st, bid);
        if (res == -ENOBUFS) {
            SM_STAT_INC(w->stats.uring_buf_ring_empty);
            st->ran_dry++;
        } else if (res == 0) {
            worker_eof(w, c); /* answer what came before it, then close */
        } else if (res < 0 && res != -ECANCELED) {
            worker_close_soon(w, c); /* error */
        }
    }
    /* A multishot receive that ended (ENOBUFS, a full CQ) goes on, unless
     * reading is off (back-pressure, end of stream) or it closes. */
    if (!uc->recv_armed && !(c->loop & (CONN_LOOP_PAUSED | CONN_LOOP_CLOSE)))
        arm_recv(w, c);
}

/* The worker's receive switch: back-pressure or end of stream (off), back-pressure over (on). */
static void uring_recv_ctl(worker *w, conn *c, bool on)
{
    uring_conn *uc = c->backend_data;
    if (on && !uc->recv_armed)
        arm_recv(w, c);
    else if (!on && uc->recv_armed)
        cancel_recv(w, c);
}

static void on_send(worker *w, conn *c, struct io_uring_cqe *cqe)
{
    uring_conn *uc = c->backend_data;
    int res = cqe->res;
    if (uc->zc) {
        if (!(cqe->flags & IORING_CQE_F_NOTIF) && (cqe->flags & IORING_CQE_F_MORE)) {
            uc->zc_res = res; /* bytes queued; pages still pinned until the notification */
            return;
        }
        if (cqe->flags & IORING_CQE_F_NOTIF)
            res = uc->zc_res;
        uc->zc = false;
    }
    c->loop &= ~CONN_LOOP_SENDING;
    uc->inflight--;
    drop_snap(w, uc);
    if (uc->closing) {
        maybe_free(w, c);
        return;
    }
    if (res == -EAGAIN) {
        wait_writable(w, c);
        return;
    }
    if (res < 0) {
        worker_close_soon(w, c);
        return;
    }
    worker_sent(w, c, (size_t)res);
}

/* Queue one sendmsg SQE for c's queue (submitted by the next wait). */
static void uring_send(worker *w, conn *c)
{
    uring_state *st = w->backend;
    uring_conn *uc = c->backend_data;
    int cnt;
    struct iovec *iov = conn_out_iov(c, &cnt);
    if (cnt > IOV_MAX)
        cnt = IOV_MAX;
    int zc_min = w->settings->uring_zc_threshold;
    /* (Not on TLS: a kTLS socket copies into its records anyway, and the
     * user-space path sends copies of its ciphertext.) */
    uc->zc = zc_min > 0 && out_pending(c) >= (size_t)zc_min && !c->tls;
    /* One contiguous run leaves as a plain send, whose SQE carries the
     * address and length: no msghdr, no snapshot.  Otherwise the iovecs
     * are snapshotted (the protocol may append to the live queue while
     * the send is in flight) into a pooled block. */
    if (cnt > 1 || uc->zc) {
        uc->snap = pool_take(&w->env.pool, (size_t)cnt * sizeof(*iov), &uc->snapcap);
        if (!uc->snap) {
            worker_close_soon(w, c);
            return;
        }
        memcpy(uc->snap, iov, (size_t)cnt * sizeof(*iov));
        memset(&uc->msg, 0, sizeof(uc->msg));
        uc->msg.msg_iov = uc->snap;
        uc->msg.msg_iovlen = (size_t)cnt;
    }
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe) {
        drop_snap(w, uc);
        worker_close_soon(w, c);
        return;
    }
    int target = uc->fixed >= 0 ? uc->fixed : c->fd;
    if (uc->zc) {
        io_uring_prep_sendmsg_zc(sqe, target, &uc->msg, MSG_NOSIGNAL);
        SM_STAT_INC(w->stats.uring_send_zc);
    } else if (cnt == 1) { /* one contiguous run: a plain send, no msghdr to import */
        io_uring_prep_send(sqe, target, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        io_uring_prep_sendmsg(sqe, target, &uc->msg, MSG_NOSIGNAL);
    }
    if (uc->fixed >= 0)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | TAG_SEND);
    st->sends_queued++;
    c->loop |= CONN_LOOP_SENDING;
    uc->inflight++;
}

/* The worker's close: start closing; freed once nothing is in flight. */
static void uring_close(worker *w, conn *c)
{
    uring_conn *uc = c->backend_data;
    if (!uc) { /* (never had its state: nothing in flight) */
        worker_conn_close(w, c);
        return;
    }
    start_close(w, c);
    maybe_free(w, c);
}

/*
 * Prefetch the keys the receives among this batch's completions from the
 * one at ring position head on are about to look up, up to PREFETCH_MAX keys
 * (a large batch is prefetched a window at a time, each just before it
 * runs).  Returns how many completions the window covers.
 */
static unsigned prefetch_window(worker *w, unsigned head)
{
    uring_state *st = w->backend;
    struct io_uring *ring = &st->ring;
    struct prefetch_batch *pb = &w->pf;
    unsigned tail = io_uring_smp_load_acquire(ring->cq.ktail), i = head;
    prefetch_reset(pb);
    for (; i != tail && pb->n < PREFETCH_MAX; i++) {
        const struct io_uring_cqe *cqe = &ring->cq.cqes[io_uring_cqe_index(ring, i, ring->cq.ring_mask)];
        if ((cqe->user_data & TAG_MASK) == TAG_RECV && cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
            unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
            prefetch_scan(w->cache, pb, ring_buf(st, bid), (size_t)cqe->res);
        }
    }
    prefetch_items(w->cache, pb);
    return i - head;
}

/*
 * After a round: how many arrivals the next wait asks for.
 *
 * A worker that wakes at its first arrival sleeps and wakes once per few
 * requests when its clients share its CPU: each arrival's wake-up lets it
 * preempt the client in the middle of the client's burst, and each of those
 * context switches costs more than a request.  Waiting for more arrivals
 * delays nothing then, because the CPU is the clients' while the worker
 * sleeps.  So, only while the worker's CPU shows no idle time (cpuidle.h)
 * and a round brought BATCH_MIN arrivals or more, the next wait asks the
 * kernel (DEFER_TASKRUN counts arrivals before it wakes anyone) for up to
 * twice as many, never more than the connections active lately, for at
 * most uring_batch_usec.  A wait that runs out of time sets the target to
 * what did arrive and holds it there for BATCH_HOLD rounds; a second one
 * within those rounds means the CPU is shared with busy tasks other than
 * our clients (the wait lends them the CPU and the batch does not come), so
 * batch waits rest for BATCH_HOLD rounds.  A light round or a CPU that
 * idles drops back to waking at the first arrival.  So a worker with a CPU
 * of its own always answers at once, and a saturated one never sleeps (its
 * arrivals are there when it asks).
 */
static void batch_adapt(worker *w, uring_state *st, bool ran_out)
{
    unsigned a = st->arrivals;
    st->arrivals = 0;
    if (++st->active_rounds >= ACTIVE_ROUNDS) {
        st->active_prev = st->active_count;
        st->active_count = 0;
        st->bufs_peak_prev = st->bufs_peak;
        st->bufs_peak = 0;
        st->active_window++;
        st->active_rounds = 0;
    }
    if (w->settings->uring_batch_usec <= 0 || a < BATCH_MIN || !cpuidle_busy(&st->idle, w->lat_clock)) {
        st->batch_target = 1;
        return;
    }
    if (ran_out) {
        /* A second wait that runs out within BATCH_HOLD rounds of the
         * first: the CPU goes to tasks other than our clients, so the
         * batch is not coming; rest from batch waits. */
        if (st->batch_hold > 0) {
            st->batch_rest = BATCH_HOLD;
            SM_STAT_INC(w->stats.uring_batch_rests);
        }
        st->batch_target = st->batch_rest > 0 ? 1 : a;
        st->batch_hold = BATCH_HOLD;
        return;
    }
    if (st->batch_rest > 0) {
        st->batch_rest--;
        st->batch_target = 1;
        return;
    }
    unsigned t = a;
    if (st->batch_hold > 0)
        st->batch_hold--;
    else
        t = 2 * a;
    unsigned cap = st->active_prev > st->active_count ? st->active_prev : st->active_count;
    if (t > cap) /* >= 1: this round's arrivals were counted in a window */
        t = cap;
    if (t > BATCH_MAX)
        t = BATCH_MAX;
    st->batch_target = t;
}

/* io_uring_enter failed in a way no later call recovers from (the ring or
 * its memory is gone); timeouts, signals and a full queue are not. */
static bool ring_broken(int rc)
{
    return rc == -EBADF || rc == -EBADFD || rc == -EFAULT || rc == -ENXIO || rc == -EOPNOTSUPP;
}

/*
 * Submit what the last flush queued and wait for a batch: the first
 * arrival, at most timeout_ms (0: do not sleep), or (batch_adapt) until
 * batch_target have come on top of the completions of the flush's sends,
 * for at most uring_batch_usec.  Then hand the completions over, a prefetch
 * window at a time.
 */
static int uring_wait(worker *w, int timeout_ms)
{
    uring_state *st = w->backend;
    top_up_bufs(st);
    struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000LL};
    unsigned wait_nr = 1; /* (a zero timeout still enters for completions: DEFER_TASKRUN
                             posts them only when this thread waits) */
    if (st->batch_target > 1 && timeout_ms > 0) {
        wait_nr = st->sends_queued + st->batch_target;
        ts.tv_sec = 0;
        ts.tv_nsec = (long long)w->settings->uring_batch_usec * 1000;
        SM_STAT_INC(w->stats.uring_batch_waits);
    }
    st->sends_queued = 0;
    struct io_uring_cqe *cqe;
    int rc = io_uring_submit_and_wait_timeout(&st->ring, &cqe, wait_nr, &ts, NULL);
    if (ring_broken(rc)) {
        worker_fail(w, -rc, "io_uring_enter: %s", strerror(-rc));
        return -1;
    }
    worker_batch_clock(w);
    SM_STAT_INC(w->stats.syscalls);
    SM_STAT_INC(w->stats.uring_submits);
    unsigned head, n = 0, prefetched = 0;
    io_uring_for_each_cqe(&st->ring, head, cqe)
    {
        if (n == prefetched)
            prefetched = n + prefetch_window(w, head);
        n++;
        uint64_t ud = cqe->user_data;
        unsigned tag = (unsigned)(ud & TAG_MASK);
        conn *c = (conn *)(uintptr_t)(ud & ~(uint64_t)TAG_MASK);
        switch (tag) {
        case TAG_ACCEPT:
            on_accept(w, cqe);
            break;
        case TAG_RECV:
            on_recv(w, c, cqe);
            break;
        case TAG_SEND:
            on_send(w, c, cqe);
            break;
        case TAG_WRWAIT:
            on_writable(w);
            break;
        default:
            break;
        }
    }
    prefetch_reset(&w->pf);
    io_uring_cq_advance(&st->ring, n);
    SM_STAT_ADD(w->stats.uring_cqes, n);
    bool ran_out = wait_nr > 1 && n < wait_nr;
    if (ran_out)
        SM_STAT_INC(w->stats.uring_batch_timeouts);
    batch_adapt(w, st, ran_out);
    publish_adapt(st, w->lat_clock);
    atomic_store_explicit(&w->stats.uring_bufs_published, st->publish_target, memory_order_relaxed);
    return 0;
}

static void uring_destroy(worker *w)
{
    uring_state *st = w->backend;
    if (!st)
        return;
    while (w->conns) {
        conn *c = w->conns;
        uring_conn *uc = c->backend_data;
        if (uc) {
            drop_snap(w, uc);
            free(uc);
            c->backend_data = NULL;
        }
        worker_conn_close(w, c);
    }
    if (st->ring_ok) {
        io_uring_queue_exit(&st->ring);
        cpuidle_close(&st->idle);
    }
    if (st->wr_epfd >= 0)
        close(st->wr_epfd);
    free(st->br);
    hugemem_free(st->bufs, (size_t)st->nbufs * st->bufsize);
    free(st->free_fixed);
    free(st->spare);
    free(st->accept_armed);
    free(st);
    w->backend = NULL;
}

const backend_ops backend_uring = {
    .name = "uring",
    .probe = uring_probe,
    .init = uring_init,
    .setup = ring_setup,
    .wait = uring_wait,
    .send = uring_send,
    .recv_ctl = uring_recv_ctl,
    .accept_ctl = uring_accept_ctl,
    .close = uring_close,
    .destroy = uring_destroy,
};

#else /* !SM_HAVE_URING: built without liburing */

#include <stdio.h>

#include "backend.h"

static int uring_absent_probe(const struct sm_settings *s, char *why, size_t whylen)
{
    (void)s;
    snprintf(why, whylen, "%s", SM_URING_ABSENT);
    return -1;
}

/* Never reached (the probe fails first); an error rather than a crash if it were. */
static int uring_absent_init(worker *w, char *err, size_t errlen)
{
    (void)w;
    snprintf(err, errlen, "%s", SM_URING_ABSENT);
    return -1;
}

static void uring_absent_noop(worker *w)
{
    (void)w;
}

const backend_ops backend_uring = {
    .name = "uring",
    .probe = uring_absent_probe,
    .init = uring_absent_init,
    .destroy = uring_absent_noop,
};

#endif /* SM_HAVE_URING */
