/*
 * crawler_cmd.c -- memcached's `lru_crawler` text command, and the
 * streaming of `lru_crawler metadump` over the client's own connection.
 *
 * Why it exists: `memcached-tool HOST:PORT dump` and `keys` (and other
 * tools) list a cache's keys with `lru_crawler metadump all` and read
 * until "END"; operators tune and kick the crawler with the other
 * subcommands.  Replies and argument checking are memcached 1.6.18's
 * (proto_text.c process_lru_crawler_command), byte for byte:
 *   lru_crawler crawl <all|id,id,...>   OK / BUSY / BADCLASS / NOTSTARTED
 *   lru_crawler metadump <all|hash|id,id,...>   a line per item, then END
 *   lru_crawler sleep <usec>  (at most 1000000)  /  tocrawl <n>
 *   lru_crawler enable / disable
 * (memcached 1.6.18 has no `lru_crawler mgdump`; it answers ERROR, and so
 * do we.)
 *
 * memcached hands a metadump's socket to its crawler thread.  Here the
 * owning worker writes it, a step at a time, like a held pipeline: a step
 * walks the cache (the crawler's walker, cache_walk_classes) until
 * DUMP_OUT_MARK bytes are queued or DUMP_STEP_CHUNKS chunks were looked at,
 * then ends the connection's turn (conn_yielded) so the worker serves its
 * other connections; the next step runs when those bytes have been sent.
 * So a dump of any size holds at most about DUMP_OUT_MARK bytes of output,
 * reading from the client pauses until END (commands after the metadump
 * are answered after it), and a client that stops reading stops the dump.
 * One difference, on purpose: a metadump does not make `lru_crawler crawl`
 * (or another metadump) answer BUSY, as memcached's single crawler thread
 * does; they do not share anything here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

#include "../engine_internal.h"
#include "../worker.h"

/* Output queued beyond which a metadump step stops (and waits for the client). */
#define DUMP_OUT_MARK (256u * 1024u)
/* Chunks a metadump step looks at before the worker's other connections get a turn. */
#define DUMP_STEP_CHUNKS 16384
/* Longest metadump line: key=<250 bytes, each %XX> and six numbers. */
#define DUMP_LINE_MAX (4 + 3 * KEY_MAX_LENGTH + 128)
/* memcached's MAX_NUMBER_OF_SLAB_CLASSES: class ids given must be below it. */
#define MC_CLASS_LIMIT 64
/* An item field written under its stripe, read whole (the walker holds the stripe anyway). */
#define FIELD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* A metadump being streamed on a connection (c->dump). */
struct dump_stream {
    uint8_t classes[SM_MAX_SLAB_CLASSES]; /* classes to list (all set for "all" and "hash") */
    uint64_t cursor;                      /* the walk's cursor (cache_walk_classes) */
    bool oom;                             /* a line could not be queued: close the connection */
};

/*
 * memcached's argument to crawl and metadump: "all", or class ids separated
 * by commas (strtok: empty ones are skipped), each 1..63.  "hash" is
 * *is_hash.  Fills classes[]; returns CRAWL_BADCLASS for a bad id.
 */
static crawl_result parse_classes(char *arg, uint8_t *classes, bool *is_hash)
{
    memset(classes, 0, SM_MAX_SLAB_CLASSES);
    *is_hash = false;
    if (strcmp(arg, "all") == 0) {
        memset(classes, 1, SM_MAX_SLAB_CLASSES);
        return CRAWL_OK;
    }
    if (strcmp(arg, "hash") == 0) {
        *is_hash = true;
        memset(classes, 1, SM_MAX_SLAB_CLASSES);
        return CRAWL_OK;
    }
    char *save = NULL;
    for (char *p = strtok_r(arg, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        uint32_t id;
        if (!safe_strtoul(p, &id) || id < 1 || id >= MC_CLASS_LIMIT)
            return CRAWL_BADCLASS;
        classes[id] = 1;
    }
    return CRAWL_OK;
}

static bool any_class(const uint8_t *classes)
{
    for (int k = 0; k < SM_MAX_SLAB_CLASSES; k++)
        if (classes[k])
            return true;
    return false;
}

/* Queue a constant reply (a string literal: no copy). */
static void reply(conn *c, const char *s)
{
    if (out_static(c, s, strlen(s)) < 0)
        c->state = CONN_CLOSING;
}

static void reply_result(conn *c, crawl_result r)
{
    switch (r) {
    case CRAWL_OK:
        reply(c, "OK\r\n");
        break;
    case CRAWL_RUNNING:
        reply(c, "BUSY currently processing crawler request\r\n");
        break;
    case CRAWL_BADCLASS:
        reply(c, "BADCLASS invalid class id\r\n");
        break;
    case CRAWL_NOTSTARTED:
        reply(c, "NOTSTARTED no items to crawl\r\n");
        break;
    case CRAWL_ERROR:
        reply(c, "ERROR an unknown error happened\r\n");
        break;
    }
}

/* memcached's uriencode: every byte but [A-Za-z0-9._~-] as %XX. */
static size_t uriencode(const char *src, size_t n, char *dst)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t d = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '.' || ch == '_' || ch == '~') {
            dst[d++] = (char)ch;
        } else {
            dst[d++] = '%';
            dst[d++] = hex[ch >> 4];
            dst[d++] = hex[ch & 15];
        }
    }
    return d;
}

/* One item's metadump line (class lock and stripe held by the walker). */
static cache_walk_action dump_cb(void *p, cache *cc, item *it)
{
    conn *c = p;
    char *out = out_reserve(c, DUMP_LINE_MAX);
    if (!out) {
        c->dump->oom = true;
        return CACHE_WALK_STOP;
    }
    int64_t started = cache_process_started(cc);
    rel_time_t exp = FIELD(it->exptime);
    size_t n = 4;
    memcpy(out, "key=", 4);
    n += uriencode(ITEM_key(it), it->nkey, out + n);
    n += (size_t)snprintf(out + n, DUMP_LINE_MAX - n, " exp=%lld la=%llu cas=%llu fetch=%s cls=%u size=%zu\n",
                          exp == 0 ? -1LL : (long long)(started + (int64_t)exp),
                          (unsigned long long)(started + (int64_t)FIELD(it->time)),
                          (unsigned long long)FIELD(it->cas),
                          (atomic_load_explicit(&it->it_flags, memory_order_relaxed) & ITEM_FETCHED) ? "yes" : "no",
                          (unsigned)it->slabs_clsid, cache_item_total(it));
    out_commit(c, n);
    return CACHE_WALK_NEXT;
}

bool proto_dump_step(conn *c)
{
    struct dump_stream *d = c->dump;
    cache *cc = c->worker->cache;
    uint32_t looked = 0;
    while (out_pending(c) < DUMP_OUT_MARK && looked < DUMP_STEP_CHUNKS && !d->oom) {
        int done = cache_walk_classes(cc, d->classes, &d->cursor, 1024, dump_cb, c);
        looked += 1024;
        if (done) {
            free(d);
            c->dump = NULL;
            cache_crawler_dump_end(cc);
            reply(c, "END\r\n");
            return true;
        }
    }
    if (d->oom) {
        free(d);
        c->dump = NULL;
        cache_crawler_dump_end(cc);
        c->state = CONN_CLOSING; /* there is no honest partial answer */
        return true;
    }
    return false;
}

/* lru_crawler metadump <classes> */
static void metadump(conn *c, char *arg)
{
    worker *w = c->worker;
    if (!cache_crawler_enabled(w->cache)) {
        reply(c, "CLIENT_ERROR lru crawler disabled\r\n");
        return;
    }
    if (!w->settings->dump_enabled) {
        reply(c, "ERROR metadump not allowed\r\n");
        return;
    }
    /* memcached: responses of earlier commands in the same read still queued */
    if (out_pending(c) > 0) {
        reply(c, "ERROR cannot pipeline other commands before metadump\r\n");
        return;
    }
    struct dump_stream *d = calloc(1, sizeof(*d));
    if (!d) {
        c->state = CONN_CLOSING;
        return;
    }
    bool is_hash;
    crawl_result r = parse_classes(arg, d->classes, &is_hash);
    if (r == CRAWL_OK && !any_class(d->classes))
        r = CRAWL_NOTSTARTED;
    if (r != CRAWL_OK) {
        free(d);
        reply_result(c, r);
        return;
    }
    /* "hash" walks memcached's hash table; our walk meets the same items. */
    c->dump = d;
    cache_crawler_dump_begin(w->cache);
}

void proto_text_lru_crawler(conn *c, sm_request *r)
{
    sm_token *t = r->tokens;
    cache *cc = c->worker->cache;
    const char *sub = r->ntokens >= 3 ? t[1].value : "";
    if (r->ntokens == 4 && strcmp(sub, "crawl") == 0) {
        if (!cache_crawler_enabled(cc)) {
            reply(c, "CLIENT_ERROR lru crawler disabled\r\n");
            return;
        }
        uint8_t classes[SM_MAX_SLAB_CLASSES];
        bool is_hash;
        crawl_result res = parse_classes(t[2].value, classes, &is_hash);
        if (res == CRAWL_OK)
            res = is_hash ? CRAWL_ERROR /* memcached walks the hash table only to dump */
                          : cache_crawler_crawl(cc, classes);
        reply_result(c, res);
    } else if (r->ntokens == 4 && strcmp(sub, "metadump") == 0) {
        metadump(c, t[2].value);
    } else if (r->ntokens == 4 && strcmp(sub, "tocrawl") == 0) {
        uint32_t n;
        if (!safe_strtoul(t[2].value, &n)) {
            reply(c, "CLIENT_ERROR bad command line format\r\n");
            return;
        }
        cache_crawler_set_tocrawl(cc, n);
        reply(c, "OK\r\n");
    } else if (r->ntokens == 4 && strcmp(sub, "sleep") == 0) {
        uint32_t us;
        if (!safe_strtoul(t[2].value, &us)) {
            reply(c, "CLIENT_ERROR bad command line format\r\n");
            return;
        }
        if (us > 1000000) {
            reply(c, "CLIENT_ERROR sleep must be one second or less\r\n");
            return;
        }
        cache_crawler_set_sleep(cc, us);
        reply(c, "OK\r\n");
    } else if (r->ntokens == 3 && strcmp(sub, "enable") == 0) {
        reply(c, cache_crawler_enable(cc) == 0 ? "OK\r\n" : "ERROR failed to start lru crawler thread\r\n");
    } else if (r->ntokens == 3 && strcmp(sub, "disable") == 0) {
        cache_crawler_disable(cc);
        reply(c, "OK\r\n");
    } else {
        reply(c, "ERROR\r\n");
    }
}
