/*
 * logger.c -- log streams for "watch" (see logger.h for the design): the
 * producer rings, the lines in memcached 1.6's format, the logger thread
 * that fans them out, and the watchers' buffers.
 *
 * A producer ring holds entries: a header (length, kinds, gid) and the
 * formatted line, 8-byte aligned; an entry never wraps (a WRAP marker sends
 * the reader back to the start).  A watcher's ring holds plain line bytes,
 * wrapped anywhere: its reader copies them into a connection's queue.
 */
#include "logger.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

/* Longest line: a 250-byte key URI-encoded (750) and the rest of an item_store. */
#define LOG_LINE_MAX 1024
/* Entry header in a producer ring. */
struct log_hdr {
    uint32_t len;   /* bytes of the line after the header, or LOG_WRAP */
    uint16_t flags; /* its SM_LOG_* kind */
    uint16_t pad;   /* (alignment) */
    uint64_t gid;   /* its global id */
};
#define LOG_WRAP UINT32_MAX
#define ALIGN8(n) (((n) + 7u) & ~(size_t)7u)
/* Room a watcher must have beyond a line for a "skipped=N" line (memcached's 128). */
#define SKIP_ROOM 128
/* The logger thread's pause after a pass that found lines, and its longest. */
#define SLEEP_MIN_US 1000
#define SLEEP_MAX_US 100000

/* The ring this thread produces into (a worker's), NULL for the shared one. */
static _Thread_local sm_log_ring *tl_ring;
static _Thread_local sm_logger *tl_logger;

static int ring_init(sm_log_ring *r, uint32_t size)
{
    size = (uint32_t)ALIGN8(size);
    r->buf = malloc(size);
    if (!r->buf)
        return -1;
    r->size = size;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->written, 0);
    atomic_init(&r->dropped, 0);
    return 0;
}

int sm_logger_init(sm_logger *lg, int nworkers, uint32_t worker_buf, uint32_t watcher_buf)
{
    memset(lg, 0, sizeof(*lg));
    /* a ring must hold at least one whole line */
    uint32_t min = (uint32_t)(2 * (sizeof(struct log_hdr) + LOG_LINE_MAX));
    if (worker_buf < min)
        worker_buf = min;
    lg->watcher_buf = watcher_buf;
    lg->nrings = nworkers + 1;
    lg->rings = calloc((size_t)lg->nrings, sizeof(*lg->rings));
    if (!lg->rings)
        return -1;
    for (int i = 0; i < lg->nrings; i++) {
        if (ring_init(&lg->rings[i], worker_buf) < 0) {
            sm_logger_destroy(lg);
            return -1;
        }
    }
    pthread_mutex_init(&lg->shared_lock, NULL);
    pthread_mutex_init(&lg->lock, NULL);
    pthread_cond_init(&lg->cond, NULL);
    return 0;
}

void sm_logger_bind_thread(sm_logger *lg, int i)
{
    tl_logger = lg;
    tl_ring = (i >= 0 && i < lg->nrings - 1) ? &lg->rings[i] : NULL;
}

/* ---- producing ---- */

/* Reserve room for an entry of `need` bytes (aligned) in r: its place, or NULL (full). */
static char *ring_reserve(sm_log_ring *r, size_t need, uint64_t *head)
{
    uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint32_t pos = (uint32_t)(h % r->size);
    size_t contig = r->size - pos;
    size_t used = (size_t)(h - t);
    if (contig < need) {
        if (r->size - used < contig + need)
            return NULL;
        ((struct log_hdr *)(r->buf + pos))->len = LOG_WRAP; /* (contig >= 8: aligned) */
        h += contig;
        pos = 0;
    } else if (r->size - used < need) {
        return NULL;
    }
    *head = h;
    return r->buf + pos;
}

/* Format "ts=.. gid=.. " + fmt + "\n" and put it in the calling thread's
 * ring (formatted on the stack first: the entry takes only what it needs). */
static void log_line(sm_logger *lg, unsigned flag, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void log_line(sm_logger *lg, unsigned flag, const char *fmt, ...)
{
    char text[LOG_LINE_MAX];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t gid = atomic_fetch_add_explicit(&lg->gid, 1, memory_order_relaxed) + 1;
    int n = snprintf(text, sizeof(text), "ts=%lld.%d gid=%llu ", (long long)tv.tv_sec, (int)tv.tv_usec,
                     (unsigned long long)gid);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(text + n, sizeof(text) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    if (n + m > LOG_LINE_MAX - 2)
        m = LOG_LINE_MAX - 2 - n; /* (cannot happen with keys of at most 250 bytes) */
    text[n + m] = '\n';
    uint32_t len = (uint32_t)(n + m + 1);

    sm_log_ring *r = (tl_logger == lg) ? tl_ring : NULL;
    bool shared = r == NULL;
    if (shared) {
        r = &lg->rings[lg->nrings - 1];
        pthread_mutex_lock(&lg->shared_lock);
    }
    uint64_t h;
    size_t need = ALIGN8(sizeof(struct log_hdr) + len);
    char *p = ring_reserve(r, need, &h);
    if (!p) {
        atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
    } else {
        struct log_hdr *hd = (struct log_hdr *)p;
        hd->len = len;
        hd->flags = (uint16_t)flag;
        hd->pad = 0;
        hd->gid = gid;
        memcpy(hd + 1, text, len);
        atomic_store_explicit(&r->head, h + need, memory_order_release);
        atomic_fetch_add_explicit(&r->written, 1, memory_order_relaxed);
    }
    if (shared)
        pthread_mutex_unlock(&lg->shared_lock);
}

/* memcached's uriencode: all but [A-Za-z0-9-._~] as %XX. */
static void uriencode(const char *src, size_t n, char *dst)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '.' || ch == '_' || ch == '~') {
            *dst++ = (char)ch;
        } else {
            *dst++ = '%';
            *dst++ = hex[ch >> 4];
            *dst++ = hex[ch & 15];
        }
    }
    *dst = '\0';
}
/* An encoded key's buffer: 250 bytes at 3 each, and the NUL. */
#define KEYBUF (250 * 3 + 1)
static size_t key_len(size_t nkey) { return nkey > 250 ? 250 : nkey; }

void sm_log_item_get(sm_logger *lg, const char *key, size_t nkey, int status, int clsid, uint32_t vlen, int cfd)
{
    static const char *const names[] = {"not_found", "found", "flushed", "expired"};
    char kb[KEYBUF];
    uriencode(key, key_len(nkey), kb);
    log_line(lg, SM_LOG_FETCHERS, "type=item_get key=%s status=%s clsid=%u cfd=%d size=%u", kb,
             names[status & 3], (unsigned)clsid, cfd, (unsigned)vlen);
}

void sm_log_item_store(sm_logger *lg, const char *key, size_t nkey, int status, int cmd, uint32_t ttl,
                       int clsid, int cfd, uint32_t vlen)
{
    /* memcached's enum store_item_type and NREAD_* numbering */
    static const char *const statuses[] = {"not_stored", "stored", "exists", "not_found", "too_large",
                                           "no_memory"};
    static const char *const cmds[] = {"null", "add", "set", "replace", "append", "prepend", "cas"};
    char kb[KEYBUF];
    uriencode(key, key_len(nkey), kb);
    log_line(lg, SM_LOG_MUTATIONS, "type=item_store key=%s status=%s cmd=%s ttl=%u clsid=%u cfd=%d size=%u", kb,
             statuses[status >= 0 && status <= 5 ? status : 0], cmd >= 0 && cmd <= 6 ? cmds[cmd] : "na",
             (unsigned)ttl, (unsigned)clsid, cfd, (unsigned)vlen);
}

void sm_log_eviction(sm_logger *lg, const char *key, size_t nkey, bool fetched, long long ttl, uint32_t la,
                     int clsid, uint32_t vlen)
{
    char kb[KEYBUF];
    uriencode(key, key_len(nkey), kb);
    log_line(lg, SM_LOG_EVICTIONS, "type=eviction key=%s fetch=%s ttl=%lld la=%d clsid=%u size=%u", kb,
             fetched ? "yes" : "no", ttl, (int)la, (unsigned)clsid, (unsigned)vlen);
}

void sm_log_conn_event(sm_logger *lg, bool open, const char *peer, int reason, int cfd)
{
    static const char *const reasons[] = {"error", "normal", "idle_timeout", "shutdown"};
    char rip[64] = "unix";
    unsigned port = 0;
    const char *transport = "local";
    const char *colon = strrchr(peer, ':');
    if ((strncmp(peer, "tcp:", 4) == 0 || strncmp(peer, "tcp6:", 5) == 0) && colon) {
        const char *a = strchr(peer, ':') + 1;
        size_t n = (size_t)(colon - a);
        if (n >= 2 && a[0] == '[' && a[n - 1] == ']') { /* tcp6:[addr]:port */
            a++;
            n -= 2;
        }
        if (n >= sizeof(rip))
            n = sizeof(rip) - 1;
        memcpy(rip, a, n);
        rip[n] = '\0';
        port = (unsigned)strtoul(colon + 1, NULL, 10);
        transport = "tcp";
    }
    if (open)
        log_line(lg, SM_LOG_CONNEVENTS, "type=conn_new rip=%s rport=%u transport=%s cfd=%d", rip, port, transport,
                 cfd);
    else
        log_line(lg, SM_LOG_CONNEVENTS, "type=conn_close rip=%s rport=%u transport=%s reason=%s cfd=%d", rip, port,
                 transport, reasons[reason & 3], cfd);
}

void sm_log_slab_move(sm_logger *lg, int src, int dst)
{
    log_line(lg, SM_LOG_SYSEVENTS, "type=slab_move src=%d dst=%d", src, dst);
}

/* ---- watchers' buffers ---- */

static size_t ring_free(const sm_log_ring *r)
{
    uint64_t used = atomic_load_explicit(&r->head, memory_order_relaxed) -
                    atomic_load_explicit(&r->tail, memory_order_acquire);
    return r->size - (size_t)used;
}

/* Logger thread: append n bytes (room checked). */
static void ring_put(sm_log_ring *r, const char *s, size_t n)
{
    uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    size_t pos = (size_t)(h % r->size);
    size_t first = r->size - pos < n ? r->size - pos : n;
    memcpy(r->buf + pos, s, first);
    memcpy(r->buf, s + first, n - first);
    atomic_store_explicit(&r->head, h + n, memory_order_release);
}

size_t sm_watcher_peek(sm_watcher *wt, const char **p)
{
    sm_log_ring *r = &wt->ring;
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t pos = (size_t)(t % r->size);
    size_t n = (size_t)(h - t);
    if (n > r->size - pos)
        n = r->size - pos;
    *p = r->buf + pos;
    return n;
}

void sm_watcher_consume(sm_watcher *wt, size_t n)
{
    sm_log_ring *r = &wt->ring;
    atomic_store_explicit(&r->tail, atomic_load_explicit(&r->tail, memory_order_relaxed) + n,
                          memory_order_release);
}

/* Logger thread, lock held: the line goes to wt, or is skipped and counted. */
static void watcher_write(sm_logger *lg, sm_watcher *wt, const char *line, size_t n)
{
    if (ring_free(&wt->ring) < n + SKIP_ROOM) {
        wt->skipped++;
        atomic_fetch_add_explicit(&lg->watcher_skipped, 1, memory_order_relaxed);
        return;
    }
    if (wt->skipped > 0) {
        char msg[SKIP_ROOM];
        int m = snprintf(msg, sizeof(msg), "skipped=%llu\n", (unsigned long long)wt->skipped);
        ring_put(&wt->ring, msg, (size_t)m);
        wt->skipped = 0;
    }
    ring_put(&wt->ring, line, n);
    atomic_fetch_add_explicit(&lg->watcher_sent, 1, memory_order_relaxed);
}

/* Recompute what producers log: lock held. */
static void set_flags(sm_logger *lg)
{
    unsigned f = 0;
    for (int i = 0; i < SM_WATCHER_LIMIT; i++)
        if (lg->watchers[i])
            f |= lg->watchers[i]->flags;
    atomic_store_explicit(&lg->eflags, f, memory_order_relaxed);
}

int sm_watcher_add(sm_logger *lg, unsigned flags, void *conn, sm_watcher **out)
{
    if (!lg->rings)
        return SM_WATCH_FAILED;
    sm_watcher *wt = calloc(1, sizeof(*wt));
    if (!wt || ring_init(&wt->ring, lg->watcher_buf) < 0) {
        free(wt);
        return SM_WATCH_FAILED;
    }
    wt->flags = flags;
    wt->conn = conn;
    pthread_mutex_lock(&lg->lock);
    int slot = -1;
    for (int i = 0; i < SM_WATCHER_LIMIT && slot < 0; i++)
        if (!lg->watchers[i])
            slot = i;
    if (slot < 0) {
        pthread_mutex_unlock(&lg->lock);
        free(wt->ring.buf);
        free(wt);
        return SM_WATCH_TOO_MANY;
    }
    /* lines with a later gid are the watcher's: those logged from now on */
    wt->min_gid = atomic_load(&lg->gid) + 1;
    wt->slot = slot;
    lg->watchers[slot] = wt;
    atomic_fetch_add(&lg->nwatchers, 1);
    set_flags(lg);
    pthread_cond_signal(&lg->cond);
    pthread_mutex_unlock(&lg->lock);
    *out = wt;
    return SM_WATCH_OK;
}

void sm_watcher_remove(sm_logger *lg, sm_watcher *wt)
{
    pthread_mutex_lock(&lg->lock);
    lg->watchers[wt->slot] = NULL;
    atomic_fetch_sub(&lg->nwatchers, 1);
    set_flags(lg);
    pthread_mutex_unlock(&lg->lock);
    free(wt->ring.buf);
    free(wt);
}

/* ---- the logger thread ---- */

/* Lock held: hand every entry of r to the watchers that want it.  Entries read. */
static int drain_ring(sm_logger *lg, sm_log_ring *r)
{
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
    int n = 0;
    while (t < h) {
        uint32_t pos = (uint32_t)(t % r->size);
        const struct log_hdr *hd = (const struct log_hdr *)(r->buf + pos);
        if (hd->len == LOG_WRAP) {
            t += r->size - pos;
            continue;
        }
        const char *line = (const char *)(hd + 1);
        for (int i = 0; i < SM_WATCHER_LIMIT; i++) {
            sm_watcher *wt = lg->watchers[i];
            if (wt && (wt->flags & hd->flags) && hd->gid >= wt->min_gid)
                watcher_write(lg, wt, line, hd->len);
        }
        t += ALIGN8(sizeof(*hd) + hd->len);
        n++;
    }
    atomic_store_explicit(&r->tail, t, memory_order_release);
    return n;
}

static void *logger_main(void *arg)
{
    sm_logger *lg = arg;
    pthread_setname_np(pthread_self(), "sm-logger");
    unsigned sleep_us = SLEEP_MIN_US;
    pthread_mutex_lock(&lg->lock);
    while (!lg->stop) {
        if (atomic_load(&lg->nwatchers) == 0) {
            for (int i = 0; i < lg->nrings; i++)
                drain_ring(lg, &lg->rings[i]); /* what was logged for watchers now gone */
            pthread_cond_wait(&lg->cond, &lg->lock);
            continue;
        }
        int found = 0;
        for (int i = 0; i < lg->nrings; i++)
            found += drain_ring(lg, &lg->rings[i]);
        pthread_mutex_unlock(&lg->lock);
        if (found)
            sleep_us = SLEEP_MIN_US;
        else if (sleep_us < SLEEP_MAX_US)
            sleep_us += sleep_us / 8;
        struct timespec ts = {0, (long)sleep_us * 1000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&lg->lock);
    }
    pthread_mutex_unlock(&lg->lock);
    return NULL;
}

int sm_logger_start(sm_logger *lg)
{
    lg->stop = false;
    int rc = pthread_create(&lg->thread, NULL, logger_main, lg);
    if (rc == 0)
        lg->started = true;
    return rc;
}

void sm_logger_stop(sm_logger *lg)
{
    if (!lg->started)
        return;
    pthread_mutex_lock(&lg->lock);
    lg->stop = true;
    pthread_cond_signal(&lg->cond);
    pthread_mutex_unlock(&lg->lock);
    pthread_join(lg->thread, NULL);
    lg->started = false;
}

void sm_logger_destroy(sm_logger *lg)
{
    if (lg->rings) {
        for (int i = 0; i < lg->nrings; i++)
            free(lg->rings[i].buf);
        free(lg->rings);
        lg->rings = NULL;
        pthread_mutex_destroy(&lg->shared_lock);
        pthread_mutex_destroy(&lg->lock);
        pthread_cond_destroy(&lg->cond);
    }
    for (int i = 0; i < SM_WATCHER_LIMIT; i++) {
        if (lg->watchers[i]) {
            free(lg->watchers[i]->ring.buf);
            free(lg->watchers[i]);
            lg->watchers[i] = NULL;
        }
    }
}

void sm_logger_stats(sm_logger *lg, struct sm_log_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < lg->nrings && lg->rings; i++) {
        out->worker_written += atomic_load_explicit(&lg->rings[i].written, memory_order_relaxed);
        out->worker_dropped += atomic_load_explicit(&lg->rings[i].dropped, memory_order_relaxed);
    }
    out->watcher_skipped = atomic_load_explicit(&lg->watcher_skipped, memory_order_relaxed);
    out->watcher_sent = atomic_load_explicit(&lg->watcher_sent, memory_order_relaxed);
    out->watchers = (uint64_t)atomic_load(&lg->nwatchers);
}
