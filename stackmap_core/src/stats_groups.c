/*
 * stats_groups.c -- the "stats" groups: memcached 1.6.18's names, in its
 * order, for everything we have a true value for.
 *
 * A group is written into a sm_stat_sink, so the same code serves the text
 * protocol's "stats [group]" (text.c), the control plane's snapshot
 * (sm_engine_stats_text, here too) and through it the Prometheus exporter.
 *
 * Counters live per worker thread (stats.h) and are summed on read.  "stats
 * reset" does not write other threads' counters: it records the current
 * sums as a baseline that later reads subtract.  Counters only grow, so a
 * read never goes below its baseline; one small lock (not on the request
 * path) keeps a read from seeing a half-written baseline.
 *
 * Choices worth knowing:
 *  - "libevent" (memcached prints libevent's version) carries the name of
 *    the ring backend in use ("epoll", "uring", ...), so tools that show it
 *    show something meaningful;
 *  - plain "stats" prints memcached 1.6.18's names and no other, so tools
 *    that count or parse them (its t/stats.t) see memcached; stackmapd's own
 *    figures (the backend in use, syscalls, io_uring, /dev/stackmap, kTLS)
 *    are the "stats backend" group (SM_STATS_BACKEND);
 *  - every value printed is true: response_obj_* count the output queue's
 *    scratch chunks and read_buf_* the workers' buffer pools (bufpool.h),
 *    the memory memcached's names count there; the NAPI counters are 0, as
 *    connections are never placed by NAPI id (README);
 *    over -c a connection is refused and counted in rejected_connections
 *    (memcached's maxconns_fast behaviour); "listen_disabled_num" and
 *    "time_in_listen_disabled_us" count the pauses a worker's accepting
 *    takes when the process is out of descriptors (EMFILE), as memcached
 *    disables its listeners then;
 *  - the general group is stats_table.h's SM_STATS_GENERAL, printed row by
 *    row; the cache's general stats (cache_stats_general) are captured
 *    first and each printed at its row, which is where memcached prints it.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "engine_internal.h"
#include "io/backend.h"
#include "stats_table.h"
#include "tls.h"

/* Guards every engine's stats baselines (reads and "stats reset"). */
static pthread_mutex_t stats_base_lock = PTHREAD_MUTEX_INITIALIZER;

/* a - b, never below 0. */
static inline uint64_t sub0(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

/* Sum every worker's counters, without the baseline. */
static void raw_sum(struct sm_engine *e, struct sm_stats_sum *sum)
{
    memset(sum, 0, sizeof(*sum));
    if (!e->workers)
        return;
    for (int i = 0; i < e->settings.num_threads; i++)
        sm_stats_accumulate(sum, &e->workers[i].stats);
}

void engine_stats_sum(struct sm_engine *e, struct sm_stats_sum *sum)
{
    pthread_mutex_lock(&stats_base_lock);
    raw_sum(e, sum);
    const struct sm_stats_sum *b = &e->stats_base;
#define SM_X(name) sum->name = sub0(sum->name, b->name);
    SM_THREAD_STATS(SM_X)
#undef SM_X
#define SM_X(name) sum->slab_##name = sub0(sum->slab_##name, b->slab_##name);
    SM_SLAB_STATS(SM_X)
#undef SM_X
    for (int i = 0; i < SM_MAX_SLAB_CLASSES; i++) {
#define SM_X(name) sum->slab[i].name = sub0(sum->slab[i].name, b->slab[i].name);
        SM_SLAB_STATS(SM_X)
#undef SM_X
    }
    pthread_mutex_unlock(&stats_base_lock);
}

void engine_stats_reset(struct sm_engine *e)
{
    pthread_mutex_lock(&stats_base_lock);
    raw_sum(e, &e->stats_base);
#define SM_X(name) e->stats_base.name = 0; /* a gauge, not a counter: never reset */
    SM_THREAD_GAUGES(SM_X)
#undef SM_X
    e->total_conns_base = atomic_load(&e->total_conns);
    e->rejected_conns_base = atomic_load(&e->rejected_conns);
    sm_logger_stats(&e->log, &e->log_base); /* (log_watchers is a gauge: printed as it is) */
    pthread_mutex_unlock(&stats_base_lock);
    /* total_items, evictions, reclaimed ... and the per-class item counters */
    cache_stats_reset(e->cache);
    sm_prefix_clear(e->prefixes); /* memcached's stats reset forgets the prefixes too */
}

/* Connection totals since the last reset. */
static void conn_totals(struct sm_engine *e, uint64_t *total, uint64_t *rejected)
{
    pthread_mutex_lock(&stats_base_lock);
    *total = sub0(atomic_load(&e->total_conns), e->total_conns_base);
    *rejected = sub0(atomic_load(&e->rejected_conns), e->rejected_conns_base);
    pthread_mutex_unlock(&stats_base_lock);
}

/* ---- capturing the cache's general stats to print them in memcached's order ---- */

#define CAPTURE_MAX 64

/* The cache's name/value pairs, in the order it emitted them. */
struct capture {
    struct {
        char name[48];  /* stat name */
        char value[40]; /* its value */
        bool used;      /* already printed */
    } e[CAPTURE_MAX];   /* captured pairs */
    int n;              /* pairs captured */
    sm_stat_sink *out;  /* where pairs that do not fit go directly */
};

static void capture_add(sm_stat_sink *sink, const char *name, const char *value)
{
    struct capture *cap = sink->ctx;
    if (cap->n == CAPTURE_MAX || strlen(name) >= sizeof(cap->e[0].name) ||
        strlen(value) >= sizeof(cap->e[0].value)) {
        cap->out->add(cap->out, name, value); /* out of order but not lost */
        return;
    }
    snprintf(cap->e[cap->n].name, sizeof(cap->e[0].name), "%s", name);
    snprintf(cap->e[cap->n].value, sizeof(cap->e[0].value), "%s", value);
    cap->e[cap->n].used = false;
    cap->n++;
}

/* The captured value of the stat called name (marking it printed), or NULL if the cache gave none. */
static const char *capture_take(struct capture *cap, const char *name)
{
    for (int i = 0; i < cap->n; i++) {
        if (!cap->e[i].used && strcmp(cap->e[i].name, name) == 0) {
            cap->e[i].used = true;
            return cap->e[i].value;
        }
    }
    return NULL;
}

static const char *backend_name(struct sm_engine *e)
{
    return e->ops ? e->ops->name : "none";
}

/* Listening sockets across all workers. */
static int listener_count(struct sm_engine *e)
{
    int n = 0;
    for (int i = 0; i < e->settings.num_threads; i++)
        n += e->workers[i].nlisten;
    return n;
}

/* The value column's formatters (stats_table.h): each yields the text to print, or NULL to print nothing. */
#define V_U64(x) (snprintf(val, sizeof(val), "%llu", (unsigned long long)(x)), (const char *)val)
#define V_INT(x) (snprintf(val, sizeof(val), "%lld", (long long)(x)), (const char *)val)
#define V_OCT(x) (snprintf(val, sizeof(val), "%o", (unsigned)(x)), (const char *)val)
#define V_F2(x) (snprintf(val, sizeof(val), "%.2f", (double)(x)), (const char *)val)
#define V_TV(tv) (snprintf(val, sizeof(val), "%ld.%06ld", (long)(tv).tv_sec, (long)(tv).tv_usec), (const char *)val)
#define V_STR(x) ((const char *)(x))
#define V_CACHE capture_take(&cap, stat)
#define V_IF(cond, v) ((cond) ? (v) : (const char *)NULL)

/* "stats": SM_STATS_GENERAL's rows in order, each value from its value column. */
static void stats_general(struct sm_engine *e, sm_stat_sink *sink)
{
    struct sm_stats_sum s;
    engine_stats_sum(e, &s);
    uint64_t total_conns, rejected_conns;
    conn_totals(e, &total_conns, &rejected_conns);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    time_t now = time(NULL);
    int64_t started = e->started ? e->started : (int64_t)now;
    /* the cache's stats, captured so that each is printed at its row */
    struct capture cap = {.n = 0, .out = sink};
    sm_stat_sink csink = {.add = capture_add, .ctx = &cap};
    cache_stats_general(e->cache, &csink);
    struct sm_log_stats lgs; /* the watch log streams' counters, since the last reset */
    sm_logger_stats(&e->log, &lgs);
    pthread_mutex_lock(&stats_base_lock);
    lgs.worker_dropped = sub0(lgs.worker_dropped, e->log_base.worker_dropped);
    lgs.worker_written = sub0(lgs.worker_written, e->log_base.worker_written);
    lgs.watcher_skipped = sub0(lgs.watcher_skipped, e->log_base.watcher_skipped);
    lgs.watcher_sent = sub0(lgs.watcher_sent, e->log_base.watcher_sent);
    pthread_mutex_unlock(&stats_base_lock);
    char val[64];

#define SM_X(name, kind, unit, metric, labels, help, value) \
    {                                                     \
        const char *stat = #name;                         \
        const char *v = value;                            \
        if (v)                                            \
            sink->add(sink, stat, v);                     \
    }
    SM_STATS_GENERAL(SM_X)
#undef SM_X
    /* a name the cache emits without a row still reaches the client (a test flags it) */
    for (int i = 0; i < cap.n; i++)
        if (!cap.e[i].used)
            sink->add(sink, cap.e[i].name, cap.e[i].value);
}

/* "stats backend": SM_STATS_BACKEND's rows in order. */
static void stats_backend(struct sm_engine *e, sm_stat_sink *sink)
{
    struct sm_stats_sum s;
    engine_stats_sum(e, &s);
    char val[64];
#define SM_X(name, kind, unit, metric, labels, help, value) \
    {                                                     \
        const char *v = value;                            \
        if (v)                                            \
            sink->add(sink, #name, v);                    \
    }
    SM_STATS_BACKEND(SM_X)
#undef SM_X
}

/* "stats settings": SM_STATS_SETTINGS's rows in order. */
static void stats_settings(struct sm_engine *e, sm_stat_sink *sink)
{
    const struct sm_settings *st = &e->settings;
    cache_lru_settings lru; /* as "lru tune/mode/temp_ttl" left them */
    cache_lru_get(e->cache, &lru);
    char val[64];
#define SM_X(name, option, help, value) sink->add(sink, #name, value);
    SM_STATS_SETTINGS(SM_X)
#undef SM_X
}

#undef V_U64
#undef V_INT
#undef V_F2
#undef V_OCT
#undef V_TV
#undef V_STR
#undef V_CACHE
#undef V_IF

/*
 * "stats conns" in memcached's order, ascending descriptor (it walks its
 * table of connections by fd; clients find their own line as the last one,
 * e.g. t/watcher_connid.t): the workers' lines are gathered, stably sorted
 * on the number before the ':', then sent.  A line that does not fit the
 * gathering (out of memory) goes straight out, out of order but not lost.
 */
struct conn_line {
    long fd;       /* the descriptor the name starts with */
    int seq;       /* order of arrival (stable sort) */
    char name[64]; /* "FD:what" */
    char value[128]; /* its value */
};
struct conn_lines {
    struct conn_line *v; /* lines gathered */
    int n, cap;          /* count and capacity */
    sm_stat_sink *out;   /* the real sink */
};

static void conn_lines_add(sm_stat_sink *sink, const char *name, const char *value)
{
    struct conn_lines *cl = sink->ctx;
    if (cl->n == cl->cap) {
        int cap = cl->cap ? 2 * cl->cap : 64;
        struct conn_line *v = realloc(cl->v, (size_t)cap * sizeof(*v));
        if (!v) {
            cl->out->add(cl->out, name, value);
            return;
        }
        cl->v = v;
        cl->cap = cap;
    }
    struct conn_line *l = &cl->v[cl->n];
    l->fd = strtol(name, NULL, 10);
    l->seq = cl->n++;
    snprintf(l->name, sizeof(l->name), "%s", name);
    snprintf(l->value, sizeof(l->value), "%s", value);
}

static int conn_line_cmp(const void *a, const void *b)
{
    const struct conn_line *x = a, *y = b;
    if (x->fd != y->fd)
        return x->fd < y->fd ? -1 : 1;
    return x->seq - y->seq;
}

static void stats_conns(struct sm_engine *e, sm_stat_sink *sink)
{
    if (!e->workers)
        return;
    struct conn_lines cl = {.v = NULL, .n = 0, .cap = 0, .out = sink};
    sm_stat_sink gather = {.add = conn_lines_add, .ctx = &cl, .asker = sink->asker};
    for (int i = 0; i < e->settings.num_threads; i++)
        worker_stats_conns(&e->workers[i], &gather);
    qsort(cl.v, (size_t)cl.n, sizeof(*cl.v), conn_line_cmp);
    for (int i = 0; i < cl.n; i++)
        sink->add(sink, cl.v[i].name, cl.v[i].value);
    free(cl.v);
}

int engine_stats_group(struct sm_engine *e, const char *group, sm_stat_sink *sink)
{
    if (!group || group[0] == '\0') {
        stats_general(e, sink);
    } else if (strcmp(group, "settings") == 0) {
        stats_settings(e, sink);
    } else if (strcmp(group, "backend") == 0) {
        stats_backend(e, sink);
    } else if (strcmp(group, "items") == 0) {
        cache_stats_items(e->cache, sink);
    } else if (strcmp(group, "slabs") == 0) {
        struct sm_stats_sum sum;
        engine_stats_sum(e, &sum);
        cache_stats_slabs(e->cache, &sum, sink);
    } else if (strcmp(group, "sizes") == 0) {
        cache_stats_sizes(e->cache, sink);
    } else if (strcmp(group, "conns") == 0) {
        stats_conns(e, sink);
    } else {
        return -1;
    }
    return 0;
}

/* ---- the control plane's snapshot: a group as text in a caller's buffer ---- */

/* A sink that formats into a fixed buffer and counts what it would need. */
struct buf_sink {
    char *buf;  /* destination */
    size_t cap; /* its size */
    size_t len; /* bytes produced so far (may exceed cap) */
};

static void buf_put(struct buf_sink *b, const char *s, size_t n)
{
    if (b->len < b->cap) {
        size_t room = b->cap - b->len;
        memcpy(b->buf + b->len, s, n < room ? n : room);
    }
    b->len += n;
}

static void buf_add(sm_stat_sink *sink, const char *name, const char *value)
{
    struct buf_sink *b = sink->ctx;
    buf_put(b, "STAT ", 5);
    buf_put(b, name, strlen(name));
    buf_put(b, " ", 1);
    buf_put(b, value, strlen(value));
    buf_put(b, "\r\n", 2);
}

long sm_engine_stats_text(sm_engine *e, const char *group, char *buf, size_t buflen)
{
    struct buf_sink b = {.buf = buf, .cap = buflen, .len = 0};
    sm_stat_sink sink = {.add = buf_add, .ctx = &b};
    if (engine_stats_group(e, group ? group : "", &sink) < 0)
        return -1;
    buf_put(&b, "END\r\n", 5);
    if (b.len > buflen)
        return -(long)b.len - 1;
    if (b.len < buflen)
        buf[b.len] = '\0';
    return (long)b.len;
}
