/*
 * admin.c -- the engine's admin API (engine.h): what the control plane's
 * HTTP admin interface, `stackmapctl` and the snapshot code call.
 *
 * Nothing here is on the request path.  Key listing, delete by prefix and
 * snapshot dumps walk the cache in bounded steps (cache_walk in
 * cache/cache_admin.c), one item lock at a time; the control plane calls
 * them in a loop with the GIL released, so workers keep serving while an
 * operator lists a million keys.
 *
 * Snapshot record format (all integers little-endian), one per item:
 *
 *     u16 nkey | u8 rflags | u8 zero | u32 value_len | u32 client_flags |
 *     i64 exptime (unix seconds, 0 = never) | u64 cas | key | value
 *
 * rflags bit 0: the key is binary (meta base64 key), bit 1: fetched.  The
 * file around the records (header, checksum) is written by the control
 * plane (stackmapd/snapshot.py).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cache/cache.h"
#include "engine_internal.h"
#include "latency.h"

/* Chunks looked at per sm_admin_keys / delete_prefix / dump call. */
#define WALK_BUDGET 65536
/* Fixed part of a snapshot record. */
#define REC_HDR 28
#define RFLAG_BINARY 0x1
#define RFLAG_FETCHED 0x2

/* ---- item metadata ---- */

static void fill_info(cache *c, const item *it, struct sm_item_info *out)
{
    int64_t started = cache_process_started(c);
    memcpy(out->key, ITEM_key(it), it->nkey);
    out->key[it->nkey] = '\0';
    out->nkey = it->nkey;
    uint16_t fl = atomic_load_explicit(&it->it_flags, memory_order_relaxed);
    out->binary_key = (fl & ITEM_KEY_BINARY) != 0;
    out->flags = it->client_flags;
    out->value_len = it->nbytes - 2;
    out->exptime = it->exptime ? started + (int64_t)it->exptime : 0;
    out->last_access = started + (int64_t)it->time;
    out->cas = it->cas;
    out->slab_class = it->slabs_clsid;
    out->fetched = (fl & ITEM_FETCHED) != 0;
}

struct keys_ctx {
    struct sm_item_info *out; /* caller's array */
    int max;                  /* its length */
    int n;                    /* entries filled */
};

static cache_walk_action keys_cb(void *p, cache *c, item *it)
{
    struct keys_ctx *k = p;
    if (k->n >= k->max)
        return CACHE_WALK_STOP;
    fill_info(c, it, &k->out[k->n++]);
    return CACHE_WALK_NEXT;
}

int sm_admin_keys(sm_engine *e, const char *prefix, size_t nprefix, uint64_t *cursor,
                  struct sm_item_info *out, int max)
{
    struct keys_ctx k = {out, max, 0};
    if (max <= 0)
        return 0;
    cache_walk(e->cache, prefix, nprefix, cursor, WALK_BUDGET, keys_cb, &k);
    return k.n;
}

static cache_walk_action meta_cb(void *p, cache *c, item *it)
{
    fill_info(c, it, p);
    return CACHE_WALK_NEXT;
}

int sm_admin_get_meta(sm_engine *e, const char *key, size_t nkey, struct sm_item_info *out)
{
    return cache_peek(e->cache, key, nkey, meta_cb, out);
}

int sm_admin_delete(sm_engine *e, const char *key, size_t nkey)
{
    if (nkey == 0 || nkey > KEY_MAX_LENGTH)
        return 0;
    uint32_t hv = cache_hash(key, nkey);
    return cache_delete(e->cache, key, nkey, hv, 0, 0, 0, NULL) == DEL_DELETED;
}

static cache_walk_action unlink_cb(void *p, cache *c, item *it)
{
    (void)p;
    (void)c;
    (void)it;
    return CACHE_WALK_UNLINK;
}

uint64_t sm_admin_delete_prefix(sm_engine *e, const char *prefix, size_t nprefix, uint64_t *cursor)
{
    return cache_walk(e->cache, prefix, nprefix, cursor, WALK_BUDGET, unlink_cb, NULL);
}

void sm_admin_flush(sm_engine *e, int delay)
{
    cache_flush(e->cache, delay > 0 ? cache_realtime(e->cache, delay) : 0);
}

long long sm_admin_set_memlimit(sm_engine *e, uint64_t maxbytes, char *err, size_t errlen)
{
    if (maxbytes == 0) /* refused, with cache_set_memlimit's message */
        return sm_engine_set_memlimit(e, maxbytes, err, errlen);
    /* Evict first: the lower limit sets the slab page mover emptying pages
     * into the pool, and it should find the free chunks this leaves. */
    uint64_t evicted = cache_evict_to(e->cache, maxbytes);
    if (sm_engine_set_memlimit(e, maxbytes, err, errlen) < 0)
        return -1;
    return (long long)evicted;
}

int sm_engine_set_maxconns(sm_engine *e, int maxconns, char *err, size_t errlen)
{
    if (maxconns < 1) {
        snprintf(err, errlen, "connection limit must be at least 1");
        return -1;
    }
    /* A raised -c needs the descriptors, as at start. */
    if (maxconns > e->settings.maxconns && engine_fd_limits(e, maxconns, err, errlen) < 0)
        return -1;
    /* Workers read it on accept; an aligned int store is seen whole. */
    __atomic_store_n(&e->settings.maxconns, maxconns, __ATOMIC_RELAXED);
    return 0;
}

/* ---- snapshot records ---- */

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

struct dump_ctx {
    unsigned char *buf; /* caller's buffer */
    size_t len;         /* its size */
    size_t used;        /* bytes written */
    uint64_t n;         /* records written */
};

static cache_walk_action dump_cb(void *p, cache *c, item *it)
{
    struct dump_ctx *d = p;
    uint32_t vlen = it->nbytes - 2;
    size_t need = REC_HDR + it->nkey + (size_t)vlen;
    if (d->used + need > d->len)
        return CACHE_WALK_STOP;
    unsigned char *r = d->buf + d->used;
    uint16_t fl = atomic_load_explicit(&it->it_flags, memory_order_relaxed);
    put16(r, it->nkey);
    r[2] = (unsigned char)(((fl & ITEM_KEY_BINARY) ? RFLAG_BINARY : 0) | ((fl & ITEM_FETCHED) ? RFLAG_FETCHED : 0));
    r[3] = 0;
    put32(r + 4, vlen);
    put32(r + 8, it->client_flags);
    put64(r + 12, it->exptime ? (uint64_t)(cache_process_started(c) + (int64_t)it->exptime) : 0);
    put64(r + 20, it->cas);
    memcpy(r + REC_HDR, ITEM_key(it), it->nkey);
    item_value_read(it, 0, (char *)r + REC_HDR + it->nkey, vlen); /* chunk by chunk if chained */
    d->used += need;
    d->n++;
    return CACHE_WALK_NEXT;
}

size_t sm_admin_dump_min_buffer(sm_engine *e)
{
    return (size_t)e->settings.item_size_max + REC_HDR + KEY_MAX_LENGTH + 1;
}

long sm_admin_dump(sm_engine *e, uint64_t *cursor, char *buf, size_t buflen, uint64_t *nitems)
{
    if (buflen < sm_admin_dump_min_buffer(e))
        return -1;
    struct dump_ctx d = {(unsigned char *)buf, buflen, 0, 0};
    cache_walk(e->cache, NULL, 0, cursor, WALK_BUDGET, dump_cb, &d);
    *nitems += d.n;
    return (long)d.used;
}

/*
 * A key the text and meta protocols can carry: no space (their tokenizers
 * split on it) and no newline (it ends the line).  Every other byte,
 * control characters included, is a key byte, as in memcached 1.6, so a
 * dump of such an item must restore.
 */
static int key_textual(const unsigned char *k, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (k[i] == ' ' || k[i] == '\n')
            return 0;
    return 1;
}

long sm_admin_restore(sm_engine *e, const char *buf, size_t len, int dry_run, uint64_t *nitems,
                      uint64_t *nexpired, char *err, size_t errlen)
{
    cache *c = e->cache;
    if (!dry_run && e->running) {
        snprintf(err, errlen, "a snapshot can only be restored before the server starts");
        return -1;
    }
    const unsigned char *p = (const unsigned char *)buf;
    size_t off = 0;
    int64_t now = (int64_t)time(NULL);
    uint64_t max_cas = 0;
    while (len - off >= REC_HDR) {
        const unsigned char *r = p + off;
        size_t nkey = get16(r);
        uint8_t rflags = r[2];
        uint32_t vlen = get32(r + 4);
        uint32_t flags = get32(r + 8);
        int64_t exptime = (int64_t)get64(r + 12);
        uint64_t cas = get64(r + 20);
        uint64_t recno = *nitems + *nexpired + 1;
        if (nkey == 0 || nkey > KEY_MAX_LENGTH || r[3] != 0 || (rflags & ~(RFLAG_BINARY | RFLAG_FETCHED)) ||
            exptime < 0) {
            snprintf(err, errlen, "record %llu is malformed (key length %zu, flags byte %u)",
                     (unsigned long long)recno, nkey, (unsigned)rflags);
            return -1;
        }
        if ((uint64_t)vlen + 2 > cache_max_value_bytes(c, nkey) ||
            cache_slab_class(c, nkey, vlen + 2) == 0) {
            snprintf(err, errlen, "record %llu: a %u-byte value does not fit this server's item size limit (-I %u)",
                     (unsigned long long)recno, vlen, e->settings.item_size_max);
            return -1;
        }
        size_t need = REC_HDR + nkey + (size_t)vlen;
        if (len - off < need)
            break; /* partial record: the caller supplies the rest */
        const unsigned char *key = r + REC_HDR;
        if (!(rflags & RFLAG_BINARY) && !key_textual(key, nkey)) {
            snprintf(err, errlen, "record %llu: key contains whitespace (a space or a newline)",
                     (unsigned long long)recno);
            return -1;
        }
        off += need;
        if (exptime != 0 && exptime <= now) {
            (*nexpired)++;
            continue;
        }
        (*nitems)++;
        /* cache.h: a CAS above SM_CAS_SET_MAX is renumbered, not restored */
        if (cas <= SM_CAS_SET_MAX && cas > max_cas)
            max_cas = cas;
        if (dry_run)
            continue;
        if (cas > SM_CAS_SET_MAX && e->settings.use_cas)
            engine_log(e, 0, "snapshot record %llu: CAS %llu is above %llu, the item gets a new one\n",
                       (unsigned long long)recno, (unsigned long long)cas, (unsigned long long)SM_CAS_SET_MAX);
        alloc_error ae;
        rel_time_t rel = exptime ? cache_realtime(c, exptime) : 0;
        item *it = cache_alloc(c, (const char *)key, nkey, flags, rel, vlen + 2, &ae);
        if (!it) {
            snprintf(err, errlen, "record %llu: out of memory (-m too small for the snapshot)",
                     (unsigned long long)recno);
            cache_cas_at_least(c, max_cas);
            return -1;
        }
        item_value_write(it, 0, (const char *)key + nkey, vlen); /* chunk by chunk if chained */
        item_value_write(it, vlen, "\r\n", 2);
        uint16_t set = (uint16_t)(((rflags & RFLAG_BINARY) ? ITEM_KEY_BINARY : 0) |
                                  ((rflags & RFLAG_FETCHED) ? ITEM_FETCHED : 0));
        if (set)
            atomic_fetch_or(&it->it_flags, set);
        store_req req = {.op = STORE_SET, .cas_new = cas};
        cache_store(c, it, cache_hash((const char *)key, nkey), &req, NULL, NULL);
        cache_release(c, it);
        if ((*nitems & 0xFFFF) == 0)
            cache_grow_now(c); /* no maintainer yet: keep hash chains short */
    }
    /*
     * The counter goes past every restored CAS.  The check pass does it too,
     * over the whole file before any item is stored, so that the items the
     * store pass renumbers get CAS values no later record holds.  (Only
     * before start: a running server's counter is not touched by a check.)
     */
    if (!e->running)
        cache_cas_at_least(c, max_cas);
    if (!dry_run)
        cache_grow_now(c);
    return (long)off;
}

/* ---- latency histograms ---- */

void sm_latency_dims(int *ncmds, int *nbuckets, int *shift)
{
    *ncmds = SM_LAT_NCMDS;
    *nbuckets = SM_LAT_BUCKETS;
    *shift = SM_LAT_SHIFT;
}

const char *sm_latency_name(int cmd)
{
    return sm_lat_name(cmd);
}

void sm_engine_latency(sm_engine *e, uint64_t *counts, uint64_t *sums_ns)
{
    memset(counts, 0, sizeof(uint64_t) * SM_LAT_NCMDS * SM_LAT_BUCKETS);
    memset(sums_ns, 0, sizeof(uint64_t) * SM_LAT_NCMDS);
    for (int w = 0; w < e->settings.num_threads; w++) {
        const struct sm_latency *l = &e->workers[w].lat;
        for (int cmd = 0; cmd < SM_LAT_NCMDS; cmd++) {
            for (int b = 0; b < SM_LAT_BUCKETS; b++)
                counts[cmd * SM_LAT_BUCKETS + b] += atomic_load_explicit(&l->count[cmd][b], memory_order_relaxed);
            sums_ns[cmd] += atomic_load_explicit(&l->sum_ns[cmd], memory_order_relaxed);
        }
    }
}
