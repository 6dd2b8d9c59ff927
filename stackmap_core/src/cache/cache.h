/*
 * cache.h -- the cache engine's internal API: items, lookups, stores,
 * deletes, arithmetic, expiry, flush, eviction and statistics.
 *
 * The protocol modules (proto/text.c, proto/meta.c) are the only callers
 * on the request path; the engine (engine.c) creates the cache and starts
 * its maintainer thread.  All calls are thread-safe.  There is no global
 * lock on the get/set path: an item is guarded by one of a fixed array of
 * striped locks chosen by its key's hash; a slab class's free list and its
 * LRU (memcached 1.6's segmented HOT/WARM/COLD/TEMP lists, or one plain
 * list in flat mode: lru.c) by that class's own lock.  The hash table grows incrementally, bucket by
 * bucket, under the same stripe locks.
 *
 * Items are reference counted.  The hash table owns one reference while an
 * item is linked; every item returned by a lookup carries one more that the
 * caller must drop with cache_release().  A response can therefore point an
 * iovec at item memory and release the item only once the bytes are sent.
 *
 * Time is kept in "rel_time": seconds since the process started (minus a
 * small offset so that 1 is always in the past), updated once a second by
 * the maintainer thread, as memcached does.
 */
#ifndef SM_CACHE_H
#define SM_CACHE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../stats.h"

typedef uint32_t rel_time_t;

/* it_flags bits. */
#define ITEM_LINKED     0x01 /* in the hash table and an LRU */
#define ITEM_FETCHED    0x02 /* read at least once since stored */
#define ITEM_ACTIVE     0x04 /* read again after its first fetch (counted as evicted_active) */
#define ITEM_STALE      0x08 /* meta: invalidated (md I / ms I) */
#define ITEM_TOKEN_SENT 0x10 /* meta: a recache "win" token was handed out */
#define ITEM_KEY_BINARY 0x20 /* meta: the key was sent base64-encoded (ms b); k/me echo it encoded */
#define ITEM_CHAINED    0x40 /* the value goes on in chunks after the head's part (item_chain) */
#define ITEM_CHUNK      0x80 /* not an item: one chunk of a chained item's value (item_chain) */
/* Bits 8-9: the LRU segment the item is in (LRU_HOT..LRU_TEMP, lru.c), changed
 * only under its class lock, read anywhere (a stale read only picks how a
 * hit is recorded). */
#define ITEM_LRU_SHIFT  8
#define ITEM_LRU_MASK   0x300
/* Bits 10-11: S3-FIFO's access counter, 0..3 (-o eviction=s3fifo: s3fifo.c);
 * a hit raises it with a compare-exchange, eviction lowers it under the
 * class lock.  Unused (0) with the LRU. */
#define ITEM_FREQ_SHIFT 10
#define ITEM_FREQ_MASK  0xC00

/* Longest key, in bytes (memcached's KEY_MAX_LENGTH). */
#define KEY_MAX_LENGTH 250

/*
 * One cached item, laid out in a slab chunk.  data[] holds the key, a NUL,
 * then the value including its trailing "\r\n" (nbytes counts the "\r\n"),
 * so a get response can send the value straight from item memory.
 */
typedef struct item {
    struct item *h_next;       /* next item in the same hash bucket */
    struct item *prev;         /* LRU neighbour towards the head (newer) */
    struct item *next;         /* LRU neighbour towards the tail (older) */
    uint64_t cas;              /* CAS unique, 0 when CAS is disabled */
    rel_time_t exptime;        /* absolute rel_time of expiry, 0 = never */
    rel_time_t time;           /* rel_time of the last access */
    uint32_t nbytes;           /* value length including the trailing "\r\n" */
    uint32_t client_flags;     /* opaque client flags (32 bits) */
    atomic_uint refcount;      /* 1 for the hash table while linked, +1 per user */
    _Atomic uint16_t it_flags; /* ITEM_* bits; change with atomic ops or under the item lock */
    uint8_t slabs_clsid;       /* slab class id (1..), also selects the LRU */
    uint8_t nkey;              /* key length in bytes (no NUL) */
    char data[];               /* key, NUL, value + "\r\n" */
} item;

#define ITEM_key(it)   ((it)->data)
/* The value of an item that is not ITEM_CHAINED (use item_seg_first for any). */
#define ITEM_value(it) ((it)->data + (it)->nkey + 1)
/* Value length without the trailing "\r\n". */
#define ITEM_vlen(it)  ((it)->nbytes - 2)

/*
 * Chained items (memcached's ITEM_CHUNKED).  An item bigger than the
 * largest slab class (slab_chunk_max) is a head chunk followed by body
 * chunks, all of that one class, so that every chunk of a chain is guarded
 * by the same class lock.  The head is an ordinary item header with
 * ITEM_CHAINED set; its data[] holds the key, a NUL, padding to 8 bytes,
 * an item_chain, then the first head_len bytes of the value.  Each body
 * chunk is laid out as an item too, so page walkers tell it apart by the
 * same it_flags/slabs_clsid fields: it_flags is ITEM_CHUNK, h_next points
 * back to its head, next/prev link the chunks in value order, nbytes is
 * the number of value bytes in its data[], nkey is 0.  it->nbytes of the
 * head is the whole value's length, as for any item.
 */
typedef struct item_chain {
    struct item *first; /* first body chunk (never NULL in a chained item) */
    uint32_t head_len;  /* value bytes held in the head itself, after this header */
    uint32_t nchunks;   /* body chunks in the chain */
} item_chain;

static inline item_chain *ITEM_chain(const item *it)
{
    return (item_chain *)(void *)((char *)it->data + (((size_t)it->nkey + 1 + 7) & ~(size_t)7));
}

static inline int item_is_chained(const item *it)
{
    return (atomic_load_explicit(&it->it_flags, memory_order_relaxed) & ITEM_CHAINED) != 0;
}

/*
 * Walk an item's value (with its "\r\n") segment by segment, whether
 * chained or not.  The caller holds a reference (or the item lock):
 *     const item *nx; uint32_t n;
 *     for (char *p = item_seg_first(it, &n, &nx); p; p = item_seg_next(&nx, &n)) ...
 */
static inline char *item_seg_first(const item *it, uint32_t *len, const item **next)
{
    if (!item_is_chained(it)) {
        *len = it->nbytes;
        *next = NULL;
        return (char *)ITEM_value(it);
    }
    item_chain *ch = ITEM_chain(it);
    *len = ch->head_len;
    *next = ch->first;
    return (char *)(ch + 1);
}

static inline char *item_seg_next(const item **next, uint32_t *len)
{
    const item *k = *next;
    if (!k)
        return NULL;
    *len = k->nbytes;
    *next = k->next;
    return (char *)k->data;
}

/* Copy len value bytes from off on out of it / into it (chained or not). */
void item_value_read(const item *it, uint32_t off, char *dst, uint32_t len);
void item_value_write(item *it, uint32_t off, const char *src, uint32_t len);

/* Everything the cache is configured with (a subset of sm_settings). */
typedef struct cache_config {
    uint64_t maxbytes;        /* memory limit for slab pages in bytes */
    uint32_t item_size_max;   /* largest item: header + key + value */
    uint32_t chunk_size;      /* -n: key+value+flags space of the smallest class */
    double factor;            /* -f: chunk size growth factor between classes */
    uint32_t slab_page_size;  /* bytes per slab page (>= item_size_max) */
    uint32_t slab_chunk_max;  /* largest class of memcached's series; 0: half a page */
    int hashpower_init;       /* initial hash table size, power of two */
    int use_cas;              /* 0: CAS uniques are always 0 */
    int disable_evictions;    /* 1 (-M): never evict a live item to make room; the alloc fails */
    int lru_segmented;        /* 1: HOT/WARM/COLD segments (memcached 1.6's default); 0: flat (lru.c) */
    int lru_maintainer;       /* 1: the maintainer juggles the segments; 0: flat only, no "lru mode" */
    int hot_lru_pct;          /* HOT's share of the class's HOT+WARM+COLD bytes, % */
    int warm_lru_pct;         /* WARM's share, % */
    double hot_max_factor;    /* HOT items idle longer than COLD's age times this go to COLD */
    double warm_max_factor;   /* WARM items idle longer than COLD's age times this go to COLD */
    int temporary_ttl;        /* items with a TTL of at most this many seconds go to TEMP; -1 none */
    int verbose;              /* log level for the maintainer's messages */
    int lru_crawler;          /* start the LRU crawler thread (-o lru_crawler / no_lru_crawler) */
    uint32_t lru_crawler_sleep;   /* microseconds the crawler pauses per CRAWL_PER_SLEEP items */
    uint32_t lru_crawler_tocrawl; /* items the crawler looks at per class per pass, 0: all */
    int slab_reassign;        /* 1: the slab page mover runs (slabs reassign, automove, memlimit shrink) */
    int slab_automove;        /* initial automove level: 0 off, 1 age balancing, 2 on every eviction */
    double slab_automove_ratio; /* age ratio below which a class gets a page (memcached's, 0.8) */
    int slab_automove_window; /* seconds of history the automover judges by (memcached's, 30) */
    int s3fifo;               /* 1: S3-FIFO eviction (-o eviction=s3fifo, s3fifo.c); 0: the LRU (lru.c) */
} cache_config;

typedef struct cache cache;

/* ---- life cycle ---- */

/* Allocate the hash table and slab classes. NULL + err on failure. */
cache *cache_create(const cache_config *cfg, char *err, size_t errlen);
/* Start the maintainer thread: clock tick, expired-item reclaimer, hash growth. */
int cache_start(cache *c);
/* Stop and join the maintainer thread. */
void cache_stop(cache *c);
/* Free all memory; no other thread may use the cache any more. */
void cache_destroy(cache *c);

/* ---- time ---- */

/* Current rel_time (updated once a second). */
rel_time_t cache_now(const cache *c);
/* Unix time at which rel_time 0 was. */
int64_t cache_process_started(const cache *c);
/*
 * Convert a protocol exptime to rel_time: 0 -> 0 (never); negative -> 1
 * (always in the past, so immediately expired); up to 30 days -> relative to
 * now; above -> an absolute unix time (in the past -> 1).
 */
rel_time_t cache_realtime(const cache *c, int64_t exptime);

/* ---- keys and locks ---- */

/* Hash of a key; pass it to the calls below. */
uint32_t cache_hash(const char *key, size_t nkey);
/* The same MurmurHash3 with another seed (memcached's own hash is seed 0: stats_prefix.c). */
uint32_t cache_hash_seeded(const char *key, size_t nkey, uint32_t seed);
/* Batch prefetch (prefetch.c): the stripe and bucket of hv, then its first
 * item, then that item's value when it is the key, else the next item. */
void cache_prefetch(cache *c, uint32_t hv);
void cache_prefetch_item(cache *c, uint32_t hv);
void cache_prefetch_chain(cache *c, uint32_t hv, const char *key, size_t nkey);
/*
 * The item lock (stripe) for hash hv.  Meta commands use it to read and
 * change an item's flags and exptime atomically with a lookup
 * (cache_get_locked).  Never hold it across calls other than the *_locked ones.
 */
void cache_lock(cache *c, uint32_t hv);
void cache_unlock(cache *c, uint32_t hv);

/* ---- lookups ---- */

typedef enum {
    GET_HIT = 0,     /* found and live */
    GET_MISS = 1,    /* never stored, deleted or evicted */
    GET_EXPIRED = 2, /* found but its exptime passed (unlinked now) */
    GET_FLUSHED = 3  /* found but older than a flush_all (unlinked now) */
} get_status;

#define CACHE_GET_NOBUMP 0x1 /* do not update access time / LRU position / FETCHED */
#define CACHE_GET_TOUCH  0x2 /* set exptime to the given value (gat, touch) */

/* What a lookup saw before it changed anything (for meta's h and l flags). */
typedef struct get_info {
    get_status status;     /* hit, miss, expired or flushed */
    rel_time_t prev_time;  /* item->time before this access */
    int was_fetched;       /* ITEM_FETCHED was set before this access */
} get_info;

/*
 * Look a key up.  On a hit returns the item with a reference taken (release
 * it with cache_release), marks it fetched and bumps it unless NOBUMP; with
 * TOUCH also sets its exptime.  Expired or flushed items found on the way
 * are unlinked.  info may be NULL.
 */
item *cache_get(cache *c, const char *key, size_t nkey, uint32_t hv, int flags, rel_time_t exptime,
                get_info *info);
/* The same with the item lock for hv already held by the caller. */
item *cache_get_locked(cache *c, const char *key, size_t nkey, uint32_t hv, int flags,
                       rel_time_t exptime, get_info *info);

/* Drop one reference; the item is freed when the last one goes. */
void cache_release(cache *c, item *it);

/* ---- stores ---- */

typedef enum {
    STORE_SET = 0,
    STORE_ADD = 1,
    STORE_REPLACE = 2,
    STORE_APPEND = 3,
    STORE_PREPEND = 4,
    STORE_CAS = 5
} store_op;

typedef enum {
    STORE_STORED = 0,     /* STORED / HD */
    STORE_NOT_STORED = 1, /* add found one, replace/append/prepend found none */
    STORE_EXISTS = 2,     /* CAS mismatch */
    STORE_NOT_FOUND = 3,  /* CAS given but no item */
    STORE_TOO_LARGE = 4,  /* append/prepend result would exceed the size limit */
    STORE_NO_MEMORY = 5   /* append/prepend result could not be allocated */
} store_result;

typedef enum {
    ALLOC_OK = 0,
    ALLOC_TOO_LARGE = 1, /* bigger than item_size_max */
    ALLOC_NO_MEMORY = 2  /* nothing evictable in the class and no free page */
} alloc_error;

/*
 * Allocate an unlinked item with one reference (the caller's) for a key and
 * a value of nbytes (value length + 2 for "\r\n").  The key is copied; the
 * caller fills ITEM_value(it) (including the "\r\n").  Evicts from the
 * class's LRU tail when memory is full.  NULL and *err when impossible.
 */
item *cache_alloc(cache *c, const char *key, size_t nkey, uint32_t client_flags, rel_time_t exptime,
                  uint32_t nbytes, alloc_error *err);

/* ---- eviction log (the "evictions" watch stream) ---- */

/* Called for each live item evicted, with its class lock held: it is still intact. */
typedef void cache_evict_log_fn(void *arg, const item *it, rel_time_t now);
/* Call fn(arg, ...) on each eviction while (*flags & bit) != 0 (one relaxed
 * load per eviction otherwise).  Set before the cache is used. */
void cache_set_evict_log(cache *c, const atomic_uint *flags, unsigned bit, cache_evict_log_fn *fn, void *arg);
/* A page move the automover decided on (memcached's sysevents slab_move): from src to dst (0: the pool). */
typedef void cache_slab_move_log_fn(void *arg, int src, int dst);
/* Call fn(arg, src, dst) from the mover thread on each automover decision while
 * (*flags & bit) != 0, as memcached logs them (not "slabs reassign", not
 * automove 2, not a memory limit's shrinking).  Set before the cache is used. */
void cache_set_slab_move_log(cache *c, const atomic_uint *flags, unsigned bit, cache_slab_move_log_fn *fn,
                             void *arg);

/* ---- LRU tuning (the "lru" command; memcached's settings of the same names) ---- */

/* The segmented LRU's settings as they are now. */
typedef struct cache_lru_settings {
    int maintainer;         /* the LRU maintainer runs (-o lru_maintainer, the default) */
    int segmented;          /* HOT/WARM/COLD in use ("lru mode segmented") */
    int hot_lru_pct;        /* hot_lru_pct */
    int warm_lru_pct;       /* warm_lru_pct */
    double hot_max_factor;  /* hot_max_factor */
    double warm_max_factor; /* warm_max_factor */
    int temp_lru;           /* a TEMP LRU is in use (temp_lru) */
    int temporary_ttl;      /* temporary_ttl (61 until one is set; kept when temp_lru goes off) */
} cache_lru_settings;

void cache_lru_get(cache *c, cache_lru_settings *out);
/* Whether the cache evicts by S3-FIFO (-o eviction=s3fifo), which has no
 * segments for "lru tune" and "lru mode" to change. */
int cache_s3fifo(const cache *c);
/* "lru tune": checked by the caller as memcached does (hot + warm <= 80,
 * factors > 0); -1 with S3-FIFO. */
int cache_lru_tune(cache *c, int hot_pct, int warm_pct, double hot_factor, double warm_factor);
/* "lru mode flat|segmented"; -1 when there is no LRU maintainer (memcached:
 * ERROR) or with S3-FIFO. */
int cache_lru_mode(cache *c, int segmented);
/* "lru temp_ttl N": N >= 0 turns the TEMP LRU on with that TTL, N < 0 off;
 * -1 without a maintainer. */
int cache_lru_temp_ttl(cache *c, int ttl);

/* Largest nbytes (value + 2) that cache_alloc accepts for a key of nkey bytes. */
uint32_t cache_max_value_bytes(const cache *c, size_t nkey);

/*
 * meta mg N: with the item lock for hv held and the key found missing
 * (cache_get_locked), create it with an empty value, exptime and it_flags
 * (e.g. ITEM_TOKEN_SENT, so the win token is the creator's before anybody
 * can see the item) and link it, with CAS cas_new (0: the next unique; as
 * for store_req).  Returns it with a reference for the caller, or NULL and
 * *err when it cannot be allocated.  The lock is still held on return.
 */
item *cache_vivify_locked(cache *c, const char *key, size_t nkey, uint32_t hv, rel_time_t exptime,
                          uint64_t cas_new, uint16_t it_flags, alloc_error *err);

/* How to store. */
typedef struct store_req {
    store_op op;           /* set/add/replace/append/prepend/cas */
    uint64_t cas_compare;  /* STORE_CAS, or any op with cas_compare != 0 (meta C): must match */
    uint64_t cas_new;      /* 0: assign the next unique; else use this value (meta E, restore; see SM_CAS_SET_MAX) */
    int invalidate;        /* meta I: a cas_compare older than the item's stores and marks stale */
} store_req;

/*
 * Store an item from cache_alloc.  Links it (replacing any old one) or, for
 * append/prepend, links a new combined item.  The caller keeps its own
 * reference and must still cache_release(it).  *cas_out gets the stored
 * item's CAS (may be NULL).  The slab class of the stored item is written to
 * *clsid_out when not NULL (for per-class stats).
 */
store_result cache_store(cache *c, item *it, uint32_t hv, const store_req *req, uint64_t *cas_out,
                         int *clsid_out);

/* ---- delete ---- */

typedef enum {
    DEL_DELETED = 0,   /* DELETED / HD */
    DEL_NOT_FOUND = 1, /* NOT_FOUND / NF */
    DEL_EXISTS = 2     /* CAS mismatch: EX */
} delete_result;

/*
 * Delete a key.  cas_compare != 0 must match the item's CAS.  invalidate
 * (meta md I): keep the item but mark it stale, give it a new CAS and, when
 * new_exptime != 0, that exptime.  *clsid_out as for cache_store.
 */
delete_result cache_delete(cache *c, const char *key, size_t nkey, uint32_t hv, uint64_t cas_compare,
                           int invalidate, rel_time_t new_exptime, int *clsid_out);

/* ---- arithmetic ---- */

typedef enum {
    ARITH_OK = 0,
    ARITH_NOT_FOUND = 1,   /* NOT_FOUND / NF */
    ARITH_NON_NUMERIC = 2, /* value is not a decimal uint64 */
    ARITH_EXISTS = 3,      /* cas_compare mismatch (meta C) */
    ARITH_NO_MEMORY = 4,   /* could not allocate the new value */
    ARITH_VIVIFIED = 5,    /* missing, and created with req->initial (req->vivify) */
    ARITH_VIVIFY_NO_MEMORY = 6 /* missing, and the item to vivify could not be allocated */
} arith_result;

/* An incr/decr, and what meta arithmetic (ma) asks beyond it. */
typedef struct arith_req {
    int incr;             /* 1 incr (wraps at 2^64), 0 decr (floors at 0) */
    uint64_t delta;       /* amount */
    uint64_t cas_compare; /* != 0: must match */
    int vivify;           /* meta N: create the item with `initial` when missing */
    uint64_t initial;     /* meta J: the value of a vivified item */
    rel_time_t viv_exptime; /* exptime of a vivified item */
} arith_req;

/*
 * incr/decr.  On ARITH_OK (and ARITH_VIVIFIED) *value_out is the new value
 * and, when it_out is not NULL, *it_out the (referenced) item now holding
 * it, for meta's t/c flags; release it.  *clsid_out as for cache_store.
 * With req->vivify a missing key is created with req->initial under the
 * same item lock as the lookup, so of many concurrent callers exactly one
 * gets ARITH_VIVIFIED and the others find its item.
 */
arith_result cache_arith(cache *c, const char *key, size_t nkey, uint32_t hv, const arith_req *req,
                         uint64_t *value_out, item **it_out, int *clsid_out);

/* ---- whole-cache operations ---- */

/*
 * CAS values taken from outside the counter, and how the counter is kept
 * from ever wrapping to 0 (which would hand out 0, 1, ... again, equal to
 * CAS values still in the cache).  Storing an outside value raises the
 * counter to it (cache_cas_at_least), so later uniques never equal it.
 *  - SM_CAS_EXPLICIT_MAX (2^63 - 1): the largest a client may set (meta E).
 *  - SM_CAS_SET_MAX (2^64 - 2^62 - 1): the largest a store takes at all,
 *    i.e. a snapshot record's CAS (one the counter handed out after an E,
 *    or one restored before); larger ones get the next unique instead.
 * So the counter starts at most at SM_CAS_SET_MAX after a restore and has
 * 2^62 steps left (a century and more at a billion stores a second), and
 * it takes 2^62 stores after the largest E to reach SM_CAS_SET_MAX.
 */
#define SM_CAS_EXPLICIT_MAX ((uint64_t)INT64_MAX)
#define SM_CAS_SET_MAX (UINT64_MAX - (UINT64_C(1) << 62))

/* Next CAS unique (0 when CAS is disabled). */
uint64_t cache_next_cas(cache *c);
/* flush_all: items stored up to now (+delay seconds) become invalid then. */
void cache_flush(cache *c, rel_time_t when);
/* cache_memlimit: new limit in bytes; 0 or -1 + err.  Shrinking: pooled
 * pages above it go back to the OS at once, and the slab page mover empties
 * pages into the pool (and so to the OS) until memory is within it. */
int cache_set_memlimit(cache *c, uint64_t maxbytes, char *err, size_t errlen);
uint64_t cache_memlimit(const cache *c);

/* ---- slab page moves (slab_mover.c) ---- */

/* memcached's reassign_result_type: what "slabs reassign" answers. */
typedef enum {
    REASSIGN_OK = 0,          /* OK: the mover starts */
    REASSIGN_RUNNING = 1,     /* BUSY: a move is already under way */
    REASSIGN_BADCLASS = 2,    /* BADCLASS: no such class (or none to pick) */
    REASSIGN_NOSPARE = 3,     /* NOSPARE: the source has fewer than two pages */
    REASSIGN_SRC_DST_SAME = 4 /* SAME */
} reassign_result;

/* Whether the mover runs (-o slab_reassign). */
int cache_slab_reassign_enabled(const cache *c);
/* Move one page from src (-1: any class with a spare page) to dst (0: the
 * global page pool), as memcached's slabs_reassign. */
reassign_result cache_slabs_reassign(cache *c, int src, int dst);
/* slabs automove 0|1|2 and slabs automove ratio R. */
void cache_set_automove(cache *c, int level);
int cache_automove(const cache *c);
void cache_set_automove_ratio(cache *c, double ratio);
double cache_automove_ratio(const cache *c);

/* ---- statistics (names as memcached's "stats", "stats items", "stats slabs") ---- */

/* curr_items, total_items, bytes, evictions, reclaimed, expired_unfetched,
 * evicted_unfetched, evicted_active, hash_power_level, hash_bytes,
 * hash_is_expanding, slab_global_page_pool, total_malloced... */
void cache_stats_general(cache *c, sm_stat_sink *sink);
/* "stats reset": zero total_items, evictions,
 * reclaimed and the other counters memcached resets (not curr_items/bytes). */
void cache_stats_reset(cache *c);
/* "items:<cls>:number", "items:<cls>:age", ... for classes with items. */
void cache_stats_items(cache *c, sm_stat_sink *sink);
/* "<cls>:chunk_size", ..., with per-class hit counters from sum, then
 * "active_slabs" and "total_malloced". */
void cache_stats_slabs(cache *c, const struct sm_stats_sum *sum, sm_stat_sink *sink);
/* "stats sizes" is not kept; this writes nothing but "sizes_status disabled". */
void cache_stats_sizes(cache *c, sm_stat_sink *sink);
/* Slab class id an item of total size `ntotal` would use (0 if too large). */
int cache_slab_class(const cache *c, size_t nkey, uint32_t nbytes);

/* ---- administration (cache_admin.c; added for the control plane's admin API) ---- */

/* What a walk callback wants done with the item it was shown. */
typedef enum {
    CACHE_WALK_NEXT = 0,  /* go on */
    CACHE_WALK_STOP = 1,  /* stop here; the cursor stays on this item (it is shown again) */
    CACHE_WALK_UNLINK = 2 /* unlink it (delete), then go on */
} cache_walk_action;

/* Shown each live item whose key starts with the walk's prefix, with its
 * class lock and its stripe lock held (it may be read whole, not changed). */
typedef cache_walk_action (*cache_walk_fn)(void *ctx, cache *c, item *it);

/*
 * Walk the slab pages from *cursor (0: the beginning), looking at no more
 * than `budget` chunks, and show every live linked item whose key starts
 * with prefix to fn.  This is the LRU crawler's walker (crawler.c): a
 * short batch of chunks under one class lock at a time, the item's stripe
 * taken without ever waiting for it while the class lock is held, so
 * workers are not stalled and the lock order is kept.  It never follows
 * the LRU lists, so concurrent stores, deletes, evictions, LRU moves and
 * hash growth cannot make it skip or repeat an item that stays put (page
 * moves: an item the mover copies may be shown twice or not at all); an
 * item stored or moved during a walk may or may not be shown.  *cursor is
 * 0 when the walk is complete.  Returns the number of items unlinked.
 */
uint64_t cache_walk(cache *c, const char *prefix, size_t nprefix, uint64_t *cursor, uint32_t budget,
                    cache_walk_fn fn, void *ctx);
/* Show the live item for key (stripe held) to fn without bumping it. 1 found, 0 not. */
int cache_peek(cache *c, const char *key, size_t nkey, cache_walk_fn fn, void *ctx);
/*
 * memcached's "stats cachedump": "ITEM <key> [<value bytes> b; <expiry> s]\r\n"
 * for the items of class id's COLD LRU, newest first (expiry: unix time, 0
 * never), at most limit of them (0: no limit) and no more than fits in cap
 * bytes, into buf.  Returns the bytes written.  The class's lock is held
 * for the walk: an administrator's debugging aid, as in memcached.
 */
size_t cache_cachedump(cache *c, unsigned id, unsigned limit, char *buf, size_t cap);
/* Make every CAS unique handed out from now on larger than cas. */
void cache_cas_at_least(cache *c, uint64_t cas);
/* Evict from the LRU tails until stored item bytes are <= target; returns items evicted. */
uint64_t cache_evict_to(cache *c, uint64_t target);
/* Bytes of linked items (the "bytes" stat). */
uint64_t cache_item_bytes(cache *c);
/* Run pending hash growth now; only while the maintainer thread is not running. */
void cache_grow_now(cache *c);
/*
 * The same walk over the classes set in classes[] (indexed by class id,
 * SM_MAX_SLAB_CLASSES entries; NULL: every class), for lru_crawler
 * metadump.  Returns 1 when complete (*cursor is then 0), else 0.
 */
int cache_walk_classes(cache *c, const uint8_t *classes, uint64_t *cursor, uint32_t budget, cache_walk_fn fn,
                       void *ctx);
/* An item's total size in its slab chunk (memcached's ITEM_ntotal; metadump's size=). */
size_t cache_item_total(const item *it);

/* ---- the LRU crawler (crawler.c) ---- */

/* Start the crawler thread (lru_crawler enable).  -1 when it runs already or cannot start. */
int cache_crawler_enable(cache *c);
/* Stop it (lru_crawler disable); a crawl under way ends after its current batch. */
void cache_crawler_disable(cache *c);
int cache_crawler_enabled(cache *c);

/* What lru_crawler crawl (and metadump) answers, as memcached's crawler_result_type. */
typedef enum {
    CRAWL_OK = 0,         /* OK */
    CRAWL_RUNNING = 1,    /* BUSY currently processing crawler request */
    CRAWL_BADCLASS = 2,   /* BADCLASS invalid class id */
    CRAWL_NOTSTARTED = 3, /* NOTSTARTED no items to crawl */
    CRAWL_ERROR = 4       /* ERROR an unknown error happened */
} crawl_result;

/*
 * lru_crawler crawl: ask the crawler thread to free the expired and flushed
 * items of the classes set in classes[] (SM_MAX_SLAB_CLASSES entries), up to
 * lru_crawler_tocrawl items each.  CRAWL_RUNNING while an earlier one is
 * pending or running, CRAWL_NOTSTARTED when no class is set.  The caller
 * checks that the crawler is enabled.
 */
crawl_result cache_crawler_crawl(cache *c, const uint8_t *classes);
/* lru_crawler sleep / tocrawl (the callers check memcached's limits). */
void cache_crawler_set_sleep(cache *c, uint32_t usec);
void cache_crawler_set_tocrawl(cache *c, uint32_t n);
uint32_t cache_crawler_sleep(cache *c);
uint32_t cache_crawler_tocrawl(cache *c);
/* A metadump starts / ends on a worker: counted in lru_crawler_starts and _running. */
void cache_crawler_dump_begin(cache *c);
void cache_crawler_dump_end(cache *c);

#endif
