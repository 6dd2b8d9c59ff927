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
 *  - memcached names we have no true value for (connection_structures,
 *    response_obj_count, read_buf_*, reserved_fds, slab mover and LRU
 *    crawler counters, logger counters ...) are left out rather than faked;
 *    over -c a connection is refused and counted in rejected_connections
 *    (memcached's maxconns_fast behaviour); "listen_disabled_num" and
 *    "time_in_listen_disabled_us" count the pauses a worker's accepting
 *    takes when the process is out of descriptors (EMFILE), as memcached
 *    disables its listeners then;
 *  - the cache's general stats (cache_stats_general) are placed where
 *    memcached prints them; names it emits that memcached does not print in
 *    "stats" follow, then our own counters (syscalls, uring_*, backend).
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "engine_internal.h"
#include "io/backend.h"

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
    e->stats_base.uring_bufs_published = 0; /* a gauge, not a counter: never reset */
    e->total_conns_base = atomic_load(&e->total_conns);
    e->rejected_conns_base = atomic_load(&e->rejected_conns);
    pthread_mutex_unlock(&stats_base_lock);
    /* total_items, evictions, reclaimed ... and the per-class item counters */
    cache_stats_reset(e->cache);
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

/* Print the captured pair called name, if the cache gave one. */
static void capture_emit(struct capture *cap, const char *name, sm_stat_sink *sink)
{
    for (int i = 0; i < cap->n; i++) {
        if (!cap->e[i].used && strcmp(cap->e[i].name, name) == 0) {
            sink->add(sink, name, cap->e[i].value);
            cap->e[i].used = true;
            return;
        }
    }
}

/* memcached 1.6.18's "stats" names after conn_yields, in its order. */
static const char *const cache_general_order[] = {
    "hash_power_level", "hash_bytes", "hash_is_expanding", "slab_reassign_rescues",
    "slab_reassign_chunk_rescues", "slab_reassign_evictions_nomem", "slab_reassign_inline_reclaim",
    "slab_reassign_busy_items", "slab_reassign_busy_deletes", "slab_reassign_running", "slabs_moved",
    "lru_crawler_running", "lru_crawler_starts", "lru_maintainer_juggles", "malloc_fails",
    "log_worker_dropped", "log_worker_written", "log_watcher_skipped", "log_watcher_sent",
    "log_watchers", "unexpected_napi_ids", "round_robin_fallback", "bytes", "curr_items",
    "total_items", "slab_global_page_pool", "expired_unfetched", "evicted_unfetched",
    "evicted_active", "evictions", "reclaimed", "crawler_reclaimed", "crawler_items_checked",
    "lrutail_reflocked", "moves_to_cold", "moves_to_warm", "moves_within_lru", "direct_reclaims",
    "lru_bumps_dropped",
};

static const char *backend_name(struct sm_engine *e)
{
    return e->ops ? e->ops->name : "none";
}

#define U64(name, v) sm_stat_addf(sink, name, "%llu", (unsigned long long)(v))

/* Listening sockets across all workers. */
static int listener_count(struct sm_engine *e)
{
    int n = 0;
    for (int i = 0; i < e->settings.num_threads; i++)
        n += e->workers[i].nlisten;
    return n;
}

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

    sm_stat_addf(sink, "pid", "%ld", (long)getpid());
    sm_stat_addf(sink, "uptime", "%lld", (long long)((int64_t)now - started));
    sm_stat_addf(sink, "time", "%lld", (long long)now);
    sink->add(sink, "version", sm_version());
    sink->add(sink, "libevent", backend_name(e));
    sm_stat_addf(sink, "pointer_size", "%d", (int)(8 * sizeof(void *)));
    sm_stat_addf(sink, "rusage_user", "%ld.%06ld", (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec);
    sm_stat_addf(sink, "rusage_system", "%ld.%06ld", (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
    /* -c changes live (sm_engine_set_maxconns): read it as it is written */
    sm_stat_addf(sink, "max_connections", "%d", __atomic_load_n(&e->settings.maxconns, __ATOMIC_RELAXED));
    sm_stat_addf(sink, "curr_connections", "%d", atomic_load(&e->curr_conns));
    U64("total_connections", total_conns);
    U64("rejected_connections", rejected_conns);
    /* conn structures in use: clients plus every worker's listening sockets */
    sm_stat_addf(sink, "connection_structures", "%d", atomic_load(&e->curr_conns) + listener_count(e));
    U64("response_obj_oom", s.response_obj_oom);
    U64("read_buf_oom", s.read_buf_oom);
    /* fds the server keeps for itself: listeners plus one event fd (epoll/ring) per worker */
    sm_stat_addf(sink, "reserved_fds", "%d", listener_count(e) + e->settings.num_threads);
    U64("cmd_get", s.get_cmds);
    U64("cmd_set", s.slab_set_cmds);
    U64("cmd_flush", s.flush_cmds);
    U64("cmd_touch", s.touch_cmds);
    U64("cmd_meta", s.meta_cmds);
    U64("get_hits", s.slab_get_hits);
    U64("get_misses", s.get_misses);
    U64("get_expired", s.get_expired);
    U64("get_flushed", s.get_flushed);
    U64("delete_misses", s.delete_misses);
    U64("delete_hits", s.slab_delete_hits);
    U64("incr_misses", s.incr_misses);
    U64("incr_hits", s.slab_incr_hits);
    U64("decr_misses", s.decr_misses);
    U64("decr_hits", s.slab_decr_hits);
    U64("cas_misses", s.cas_misses);
    U64("cas_hits", s.slab_cas_hits);
    U64("cas_badval", s.slab_cas_badval);
    U64("touch_hits", s.slab_touch_hits);
    U64("touch_misses", s.touch_misses);
    U64("store_too_large", s.store_too_large);
    U64("store_no_memory", s.store_no_memory);
    U64("auth_cmds", s.auth_cmds);
    U64("auth_errors", s.auth_errors);
    if (e->settings.idle_timeout)
        U64("idle_kicks", s.idle_kicks);
    U64("bytes_read", s.bytes_read);
    U64("bytes_written", s.bytes_written);
    U64("limit_maxbytes", cache_memlimit(e->cache));
    sm_stat_addf(sink, "accepting_conns", "%d", atomic_load(&e->accepting) ? 1 : 0);
    U64("listen_disabled_num", s.listen_disabled_num);
    U64("time_in_listen_disabled_us", s.listen_disabled_ns / 1000);
    sm_stat_addf(sink, "threads", "%d", e->settings.num_threads);
    U64("conn_yields", s.conn_yields);

    struct capture cap = {.n = 0, .out = sink};
    sm_stat_sink csink = {.add = capture_add, .ctx = &cap};
    cache_stats_general(e->cache, &csink);
    for (size_t i = 0; i < sizeof(cache_general_order) / sizeof(cache_general_order[0]); i++)
        capture_emit(&cap, cache_general_order[i], sink);
    for (int i = 0; i < cap.n; i++)
        if (!cap.e[i].used)
            sink->add(sink, cap.e[i].name, cap.e[i].value);

    /* Our own counters; memcached clients ignore names they do not know. */
    U64("syscalls", s.syscalls);
    U64("uring_submits", s.uring_submits);
    U64("uring_cqes", s.uring_cqes);
    U64("uring_buf_ring_empty", s.uring_buf_ring_empty);
    U64("uring_send_zc", s.uring_send_zc);
    U64("uring_batch_waits", s.uring_batch_waits);
    U64("uring_batch_timeouts", s.uring_batch_timeouts);
    U64("uring_batch_rests", s.uring_batch_rests);
    /* a gauge: receive buffers the rings keep published now (see top_up_bufs) */
    U64("uring_bufs_published", s.uring_bufs_published);
    /* completions per io_uring_enter: how much one syscall carries */
    sm_stat_addf(sink, "uring_batch_avg", "%.2f",
                 s.uring_submits ? (double)s.uring_cqes / (double)s.uring_submits : 0.0);
    U64("stackmap_syncs", s.stackmap_syncs);
    U64("stackmap_rx_slots", s.stackmap_rx_slots);
    U64("stackmap_tx_slots", s.stackmap_tx_slots);
    U64("stackmap_bad_slots", s.stackmap_bad_slots);
    sm_stat_addf(sink, "stackmap_slots_per_sync", "%.2f",
                 s.stackmap_syncs ? (double)(s.stackmap_rx_slots + s.stackmap_tx_slots) / (double)s.stackmap_syncs
                                  : 0.0);
    sink->add(sink, "backend", backend_name(e));
}

static void stats_settings(struct sm_engine *e, sm_stat_sink *sink)
{
    const struct sm_settings *st = &e->settings;
    U64("maxbytes", cache_memlimit(e->cache));
    sm_stat_addf(sink, "maxconns", "%d", __atomic_load_n(&st->maxconns, __ATOMIC_RELAXED)); /* changes live */
    sm_stat_addf(sink, "tcpport", "%d", st->port);
    sink->add(sink, "udpport", "0"); /* no UDP listener, ever */
    sink->add(sink, "inter", st->listen[0] ? st->listen : "NULL");
    sm_stat_addf(sink, "verbosity", "%d", atomic_load(&e->verbose));
    sink->add(sink, "evictions", "on"); /* the cache always evicts when full (no -M) */
    sink->add(sink, "domain_socket", "NULL");
    sink->add(sink, "shutdown_command", st->shutdown_enabled ? "yes" : "no");
    sm_stat_addf(sink, "growth_factor", "%.2f", st->factor);
    sm_stat_addf(sink, "chunk_size", "%u", st->chunk_size);
    sm_stat_addf(sink, "num_threads", "%d", st->num_threads);
    sink->add(sink, "detail_enabled", "no");
    sm_stat_addf(sink, "reqs_per_event", "%d", st->reqs_per_event);
    sink->add(sink, "cas_enabled", st->use_cas ? "yes" : "no");
    sm_stat_addf(sink, "tcp_backlog", "%d", st->backlog);
    sink->add(sink, "binding_protocol", "ascii"); /* text and meta; no binary protocol */
    sink->add(sink, "auth_enabled_sasl", "no");
    sink->add(sink, "auth_enabled_ascii", "no");
    sm_stat_addf(sink, "item_size_max", "%u", st->item_size_max);
    sink->add(sink, "maxconns_fast", "yes");
    sm_stat_addf(sink, "hashpower_init", "%d", st->hashpower_init);
    /* Machinery memcached has and we do not: printed with the value that is
     * true for us (off), so tools reading these settings see the truth. */
    sink->add(sink, "slab_reassign", "no");
    sink->add(sink, "slab_automove", "0");
    sm_stat_addf(sink, "slab_chunk_max", "%u", st->slab_page_size); /* items are never chunked */
    sink->add(sink, "lru_crawler", "no");
    sink->add(sink, "tail_repair_time", "0");
    sink->add(sink, "flush_enabled", "yes");
    sink->add(sink, "dump_enabled", "no");
    sink->add(sink, "hash_algorithm", "murmur3");
    sink->add(sink, "lru_maintainer_thread", "no");
    sink->add(sink, "lru_segmented", "no"); /* one LRU per slab class, whatever -o says */
    sink->add(sink, "temp_lru", "no");
    sm_stat_addf(sink, "idle_timeout", "%d", st->idle_timeout);
    sink->add(sink, "track_sizes", "no");
    sink->add(sink, "inline_ascii_response", "no");
    /* ours */
    sm_stat_addf(sink, "slab_page_size", "%u", st->slab_page_size);
    sink->add(sink, "backend", backend_name(e));
    sm_stat_addf(sink, "uring_entries", "%d", st->uring_entries);
    sm_stat_addf(sink, "uring_bufs", "%d", st->uring_bufs);
    sm_stat_addf(sink, "uring_buf_size", "%d", st->uring_buf_size);
    sm_stat_addf(sink, "uring_zc_threshold", "%d", st->uring_zc_threshold);
    sink->add(sink, "uring_sqpoll", st->uring_sqpoll ? "yes" : "no");
    sm_stat_addf(sink, "uring_batch_usec", "%d", st->uring_batch_usec);
    sink->add(sink, "tcp_nodelay", st->tcp_nodelay ? "yes" : "no");
}

#undef U64

int engine_stats_group(struct sm_engine *e, const char *group, sm_stat_sink *sink)
{
    if (!group || group[0] == '\0') {
        stats_general(e, sink);
    } else if (strcmp(group, "settings") == 0) {
        stats_settings(e, sink);
    } else if (strcmp(group, "items") == 0) {
        cache_stats_items(e->cache, sink);
    } else if (strcmp(group, "slabs") == 0) {
        struct sm_stats_sum sum;
        engine_stats_sum(e, &sum);
        cache_stats_slabs(e->cache, &sum, sink);
    } else if (strcmp(group, "sizes") == 0) {
        cache_stats_sizes(e->cache, sink);
    } else if (strcmp(group, "conns") == 0) {
        if (e->workers)
            for (int i = 0; i < e->settings.num_threads; i++)
                worker_stats_conns(&e->workers[i], sink);
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
