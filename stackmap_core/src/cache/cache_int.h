/*
 * cache_int.h -- the cache engine's private state, shared by the files of
 * stackmap_core/src/cache/ only.  Protocol code sees cache.h alone.
 *
 * Locking (see also the notes in items.c and lru.c):
 *   - stripes[]: item locks, chosen by hv & (nstripes-1).  They guard hash
 *     chains, an item's LINKED flag, its value, exptime, cas and time.
 *     nstripes never exceeds the smallest bucket count the table ever has,
 *     so during an expansion old bucket b and new buckets b and b+oldsize
 *     share one stripe.
 *   - slabclass.lock: one per class; guards its free list, its pages, its
 *     LRU lists (every segment), their counters, and an item's segment bits.
 *     Moving an item between segments needs only this lock: the maintainer
 *     never takes a stripe to juggle (only to reclaim a dead item).
 *   - Order: stripe, then class.  Code that already holds a class lock
 *     (eviction, the reclaimer) only ever TRYLOCKs a stripe.  Nobody holds
 *     two class locks, nor two stripes, except the maintainer when it swaps
 *     hash tables (it takes every stripe, in index order, holding no class
 *     lock).
 *   - S3-FIFO (s3fifo.c): an item's access counter (it_flags) is raised by
 *     hits with a compare-exchange under the stripe only, and lowered under
 *     the class lock; a class's ghost queue is guarded by its class lock.
 *   - Chained items (cache.h, item_chain): every chunk of a chain is of its
 *     head's class, so that class lock guards the chunks' allocation and
 *     freeing, and never a second class lock.  The links of a linked
 *     chain change only in the mover, under the class lock and the head's
 *     stripe while the head has no reader (refcount 1); readers walk a
 *     chain holding a reference, and a reference is only taken under the
 *     stripe.
 *   - Page accounting (mem_malloced) is one atomic counter, no lock.
 *   - Slab page moves (slab_mover.c): the mover thread empties a page of
 *     its source class in short batches under that class lock (trylocking
 *     stripes, as eviction does), then hands the page over holding one
 *     class lock at a time.  pool_lock guards the global page pool, the
 *     released pages and the count of pages taken; it is taken with at most one
 *     class lock held, never the other way round.  mover_lock guards the
 *     mover's request (reb_*); nothing else is taken under it except by
 *     the mover thread itself, which holds no class lock then.
 */
#ifndef SM_CACHE_INT_H
#define SM_CACHE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "hugemem.h"
#include "stripe_lock.h"

/* memcached's ITEM_UPDATE_INTERVAL: a hit moves an item at most this often. */
#define ITEM_UPDATE_INTERVAL 60
/* Exptimes above this many seconds are absolute unix times. */
#define REALTIME_MAXDELTA (60 * 60 * 24 * 30)
/* Tail items an allocation looks at before giving up (memcached: 5). */
#define LRU_TAIL_TRIES 5
/* Tail items the reclaimer checks per class per batch. */
#define RECLAIM_BATCH 64
/* Upper bound of item lock stripes. */
#define MAX_STRIPES 4096
/* Threads that get a private block of hit counters; the rest share one. */
#define HIT_BLOCKS 64

/* LRU segments (memcached's HOT_LRU..TEMP_LRU), kept in it_flags bits 8-9. */
enum { LRU_HOT = 0, LRU_WARM = 1, LRU_COLD = 2, LRU_TEMP = 3, LRU_NSEGS = 4 };
#define ITEM_lru(flags) ((int)(((flags) & ITEM_LRU_MASK) >> ITEM_LRU_SHIFT))
/* Entries of a thread's queue of COLD hits for the maintainer (a power of two). */
#define BUMP_RING_SIZE 1024

/* it_flags bit of a free chunk: on its class's free list, or emptied out of
 * a page the mover is taking away.  Set and cleared under the class lock.
 * (A high bit, clear of the ITEM_* bits in cache.h.) */
#define ITEM_SLABBED 0x8000

/* memcached's SLAB_GLOBAL_PAGE_POOL: the "class" id of the global page pool. */
#define SLAB_POOL 0

/* Relaxed access to plain item fields that are read outside their lock. */
#define LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ST(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

/* Total size of an item with this key and value length. */
#define ITEM_ntotal(nkey, nbytes) (sizeof(item) + (size_t)(nkey) + 1 + (size_t)(nbytes))

/* One padded stripe lock, so neighbours do not share a cache line. */
struct stripe {
    stripe_lock m; /* the lock itself (stripe_lock.h) */
} __attribute__((aligned(64)));

/* Per-class counters printed by "stats items" (memcached's itemstats_t). */
struct class_stats {
    uint64_t evicted;           /* items evicted while live */
    uint64_t evicted_nonzero;   /* evicted items that had an exptime */
    rel_time_t evicted_time;    /* seconds since last access of the last evicted item */
    uint64_t outofmemory;       /* allocations that failed in this class */
    uint64_t reclaimed;         /* expired/flushed items whose memory was taken back */
    uint64_t expired_unfetched; /* reclaimed items that were never read */
    uint64_t evicted_unfetched; /* evicted items that were never read */
    uint64_t evicted_active;    /* evicted items that were read at least twice */
    uint64_t lrutail_reflocked; /* tail items skipped because a reader held them */
    uint64_t moves_to_cold;     /* items moved from HOT or WARM into COLD */
    uint64_t moves_to_warm;     /* items moved from HOT or COLD into WARM */
    uint64_t moves_within_lru;  /* items moved to the head of their own segment */
    uint64_t direct_reclaims;   /* allocations that had to pull from the LRU tail */
    uint64_t crawler_reclaimed; /* expired/flushed items the LRU crawler freed (crawler.c) */
    uint64_t crawler_checked;   /* items the LRU crawler looked at (crawler_items_checked) */
    uint64_t s3_to_main;        /* S3-FIFO: items read twice in the small queue moved to the main one */
    uint64_t s3_ghost_hits;     /* S3-FIFO: new items whose key was in the ghost, linked into main */
    uint64_t s3_reinserted;     /* S3-FIFO: main-queue tail items read since, given another round */
};

/* One slab class: chunks of one size, their pages, free list and LRU. */
struct slabclass {
    pthread_mutex_t lock;        /* guards everything below */
    uint32_t size;               /* chunk size in bytes (8-byte aligned) */
    uint32_t perslab;            /* chunks per page */
    item *free_list;             /* freed chunks, doubly linked through item->next/prev */
    uint64_t free_count;         /* chunks on free_list (memcached's sl_curr) */
    char *end_page_ptr;          /* next never-used chunk of the newest page */
    uint32_t end_page_free;      /* never-used chunks left on carve_page */
    char *carve_page;            /* the page end_page_ptr carves, or NULL */
    char *evac_page;             /* the page the mover is emptying, or NULL */
    uint32_t evac_chunks;        /* chunks of evac_page ever carved (the rest may hold garbage) */
    uint32_t npages;             /* pages owned by this class */
    uint32_t pages_cap;          /* capacity of pages[] */
    char **pages;                /* its pages, oldest first (the mover takes pages[0]) */
    uint32_t *page_seq;          /* pages[i]'s join number, ascending: the walker's cursor (crawler.c) */
    uint32_t next_page_seq;      /* join number the next page added gets */
    item *heads[LRU_NSEGS];      /* each segment's head: most recently linked */
    item *tails[LRU_NSEGS];      /* each segment's tail: next to move or evict */
    uint64_t seg_items[LRU_NSEGS]; /* items in each segment */
    uint64_t seg_bytes[LRU_NSEGS]; /* their total size (memcached's sizes_bytes) */
    uint32_t juggle_wait_us;     /* maintainer only: sleep before this class's next juggle */
    uint32_t juggle_backoff_us;  /* maintainer only: the wait it grows while idle */
    rel_time_t cold_age_ref;     /* maintainer only: COLD's age as the max factors see it (lru.c) */
    rel_time_t cold_age_since;   /* maintainer only: when cold_age_ref last rose or fell */
    uint32_t *ghost;             /* S3-FIFO's ghost queue: key hashes in buckets (s3fifo.c), or NULL */
    uint32_t ghost_buckets;      /* buckets in ghost, of GHOST_WAYS slots each */
    bool s3_evicted;             /* S3-FIFO: the class has evicted (its small queue is now sized) */
    _Atomic uint64_t curr_items; /* linked items (relaxed; written under lock) */
    _Atomic uint64_t curr_bytes; /* sum of linked items' total sizes (mem_requested) */
    uint64_t total_items;        /* items ever linked (since stats reset) */
    struct class_stats st;       /* eviction/reclaim counters */
} __attribute__((aligned(64)));

/* Where the crawler is with one class, and when it looks at it again (crawler.c). */
struct crawl_class {
    uint64_t cursor;     /* walk cursor a pass limited by tocrawl resumes from; 0: the start */
    rel_time_t next_due; /* the background pass of this class is due at this rel_time */
    uint32_t gap;        /* seconds between background passes while they find little (1..CRAWL_GAP_MAX) */
};

/* The LRU crawler's state (crawler.c); lock guards the fields not atomic. */
struct crawler {
    pthread_t thread;                        /* the crawler thread */
    pthread_mutex_t ctl;                     /* serialises enable/disable (held across the join) */
    bool started;                            /* thread is running (joined on disable/destroy) */
    bool stop;                               /* ask the thread to exit */
    pthread_mutex_t lock;                    /* guards want, user_busy, stop, started */
    pthread_cond_t cond;                     /* wakes the thread: a request, or stop */
    uint8_t want[SM_MAX_SLAB_CLASSES];       /* classes `lru_crawler crawl` asked for, not yet begun */
    bool user_busy;                          /* a `lru_crawler crawl` is pending or running (BUSY) */
    atomic_bool enabled;                     /* lru_crawler enable/disable, -o lru_crawler */
    _Atomic uint32_t sleep_usec;             /* lru_crawler_sleep: pause per CRAWL_PER_SLEEP items */
    _Atomic uint32_t tocrawl;                /* lru_crawler_tocrawl: items per class per pass, 0 all */
    _Atomic uint32_t running;                /* crawls and metadumps under way (lru_crawler_running) */
    _Atomic uint64_t starts;                 /* runs started (lru_crawler_starts) */
    rel_time_t seen_oldest_live;             /* thread only: the flush_all it last crawled for */
    uint64_t seen_oldest_cas;                /* thread only: ditto, its CAS bound */
    struct crawl_class cls[SM_MAX_SLAB_CLASSES]; /* thread only: per-class pass state */
};

/* The mover's counters (memcached's slab_reassign_* and slabs_moved stats). */
struct mover_stats {
    _Atomic uint64_t slabs_moved;      /* pages handed to another class or the pool */
    _Atomic uint64_t rescues;          /* items copied to another chunk of their class */
    _Atomic uint64_t chunk_rescues;    /* body chunks of chained items copied and relinked */
    _Atomic uint64_t evictions_nomem;  /* live items evicted for want of a free chunk */
    _Atomic uint64_t inline_reclaim;   /* expired/flushed items freed while emptying a page */
    _Atomic uint64_t busy_items;       /* times an item was in use and had to be waited for */
    _Atomic uint64_t busy_deletes;     /* items unlinked because they stayed in use too long */
    _Atomic uint64_t pages_released;   /* pages given back to the OS (MADV_DONTNEED) */
};

/* A thread's private hit counters ("items:N:hits_to_hot" ...). */
struct hit_block {
    _Atomic uint64_t hits[LRU_NSEGS][SM_MAX_SLAB_CLASSES]; /* get hits per segment and class */
} __attribute__((aligned(64)));

/* One queued COLD hit: the item and its key's hash. */
struct bump {
    item *it;    /* the item as it was hit (not referenced: see bump_ring) */
    uint32_t hv; /* its key's hash: where to look for it */
};

/*
 * A thread's queue of hits on COLD items for the maintainer to move to
 * WARM (memcached's lru_bump_buf): one producer (the thread owning the hit
 * block of the same index), one consumer (the maintainer), no lock.
 * Unlike memcached's, an entry holds no reference: a referenced item
 * cannot be evicted, and a queue of them pinned whole slab classes of a
 * small cache.  The maintainer moves an entry's item only if, under the
 * stripe of hv, it is still in that hash chain (a pointer comparison: a
 * chunk freed since is never read).
 */
struct bump_ring {
    _Atomic uint32_t head;                    /* next slot the producer fills */
    char pad0[60];                            /* keeps head and tail on their own lines */
    _Atomic uint32_t tail;                    /* next slot the consumer takes */
    char pad1[60];                            /* see pad0 */
    _Atomic uint64_t dropped;                 /* bumps lost to a full queue (lru_bumps_dropped) */
    struct bump slots[BUMP_RING_SIZE];        /* queued hits */
} __attribute__((aligned(64)));

struct cache {
    cache_config cfg;               /* as given (item_size_max, factor, ...) */
    uint64_t cache_id;              /* distinguishes caches for thread-local hit blocks */

    /* ---- time ---- */
    _Atomic rel_time_t current_time;  /* rel_time now, set by the maintainer */
    int64_t process_started;          /* unix time of rel_time 0 */
    int64_t mono_to_wall;             /* ns to add to CLOCK_MONOTONIC to get unix time, fixed at start */
    atomic_bool time_frozen;          /* a test set the clock; the maintainer leaves it */

    /* ---- flush_all (memcached's settings.oldest_live / oldest_cas) ---- */
    _Atomic rel_time_t oldest_live;   /* items with time <= this are dead once now >= it */
    _Atomic uint64_t oldest_cas;      /* items with a CAS below this are dead (same time rule) */

    /* ---- CAS ---- */
    _Atomic uint64_t cas_id;          /* last CAS unique handed out */

    /* ---- hash table ---- */
    struct stripe *stripes;           /* item locks */
    uint32_t nstripes;                /* power of two, <= initial bucket count */
    item **primary;                   /* current table (the new one while expanding) */
    _Atomic uint32_t hashpower;       /* log2 of primary's bucket count */
    item **old;                       /* table being migrated from, or NULL */
    uint32_t oldpower;                /* log2 of old's bucket count */
    atomic_bool expanding;            /* a migration is in progress */
    _Atomic uint32_t expand_bucket;   /* old buckets below this are migrated */
    _Atomic uint64_t hash_items;      /* items linked in the hash table */
    atomic_bool expand_wanted;        /* set by inserts when the load factor is passed */
    _Atomic uint64_t hash_expansions; /* completed expansions (for the maintainer's log) */

    /* ---- slabs and memory ---- */
    struct slabclass *classes;        /* [0] unused, [1..nclasses] */
    int nclasses;                     /* largest valid class id */
    uint32_t page_size;               /* bytes per slab page */
    _Atomic uint64_t maxbytes;        /* memory limit (cache_set_memlimit) */
    _Atomic uint64_t mem_malloced;    /* bytes of pages allocated */
    _Atomic uint64_t malloc_fails;    /* page allocations that failed */
    struct page_arena arena;          /* where slab pages come from (huge pages) */
    pthread_mutex_t pool_lock;        /* guards pool, released and pages_taken */
    char **pool;                      /* global page pool: backed pages, counted in mem_malloced */
    uint32_t pool_n;                  /* pages in pool */
    uint32_t pool_cap;                /* capacity of pool[] and of released[] */
    char **released;                  /* pages given back to the OS: address space only */
    uint32_t released_n;              /* pages in released */
    _Atomic uint32_t pool_count;      /* pool_n, for stats without the lock */
    uint32_t pages_taken;             /* pages ever taken from the arena (pool_reserve's bound) */

    /* ---- slab page mover (slab_mover.c) ---- */
    pthread_t mover_thread;           /* the mover thread */
    bool mover_started;               /* mover_thread is running */
    atomic_bool mover_stop;           /* ask the mover to exit */
    pthread_mutex_t mover_lock;       /* guards reb_* and mover_cond */
    pthread_cond_t mover_cond;        /* wakes the mover (request, memlimit, stop) */
    int reb_signal;                   /* 0 idle, 1 requested, 2 moving (memcached's slab_rebalance_signal) */
    int reb_src;                      /* source class of the request or move */
    int reb_dst;                      /* destination class, SLAB_POOL for the pool */
    int reb_pick;                     /* last class "slabs reassign -1" picked (round robin) */
    _Atomic int automove;             /* slabs automove level: 0 off, 1 age balancing, 2 on every eviction */
    _Atomic uint64_t automove_ratio_bits; /* slab_automove_ratio, a double's bits */
    atomic_bool reb_running;          /* slab_reassign_running */
    atomic_bool shrinking;            /* a lowered limit: move pages to the pool until within it */
    struct mover_stats mst;           /* the mover's counters */

    /* ---- per-thread hit counters and COLD-hit queues ---- */
    struct hit_block *hit_blocks;     /* HIT_BLOCKS blocks; the last one is shared */
    struct bump_ring *bump_rings;     /* one per private hit block (the shared one has none) */
    atomic_uint hit_blocks_used;      /* blocks handed out */

    /* ---- the eviction log (cache_set_evict_log) ---- */
    const atomic_uint *evict_log_flags; /* the watchers' kinds, NULL: no log */
    unsigned evict_log_bit;           /* the kind that asks for evictions */
    cache_evict_log_fn *evict_log;    /* called per eviction while that kind is asked for */
    void *evict_log_arg;              /* its argument */

    /* ---- the automover's decisions log (cache_set_slab_move_log) ---- */
    const atomic_uint *move_log_flags; /* the watchers' kinds, NULL: no log */
    unsigned move_log_bit;            /* the kind that asks for slab moves (sysevents) */
    cache_slab_move_log_fn *move_log; /* called per automover decision while that kind is asked for */
    void *move_log_arg;               /* its argument */

    /* ---- the segmented LRU's settings (the "lru" command changes them live) ---- */
    bool lru_maintainer;              /* the maintainer juggles segments (-o lru_maintainer) */
    atomic_int lru_segmented;         /* 1: new items to HOT, COLD hits to WARM; 0: flat, all COLD */
    bool s3fifo;                      /* S3-FIFO eviction (s3fifo.c): HOT is its small queue, COLD its main */
    atomic_int hot_lru_pct;           /* HOT's share of HOT+WARM+COLD bytes, % */
    atomic_int warm_lru_pct;          /* WARM's share, % */
    _Atomic double hot_max_factor;    /* HOT items idle > COLD age * this move to COLD */
    _Atomic double warm_max_factor;   /* WARM items idle > COLD age * this move to COLD */
    atomic_bool temp_lru;             /* short-TTL items go to TEMP */
    atomic_int temporary_ttl;         /* the TTL at or under which they do (kept while temp_lru is off) */

    /* ---- maintainer ---- */
    pthread_t maint_thread;           /* the maintainer thread */
    bool maint_started;               /* maint_thread is running */
    atomic_bool maint_stop;           /* ask the maintainer to exit */
    pthread_mutex_t maint_lock;       /* guards maint_cond */
    pthread_cond_t maint_cond;        /* wakes the maintainer early (expansion, stop) */
    _Atomic uint64_t maint_juggles;   /* maintainer rounds (lru_maintainer_juggles) */

    /* ---- LRU crawler ---- */
    struct crawler crawler;           /* background reclaim thread and its settings (crawler.c) */
};

/* ---- cache.c ---- */
rel_time_t cache_clock_now(cache *c);  /* read the monotonic clock, as rel_time */
void cache_update_clock(cache *c);     /* maintainer tick */
int64_t cache_next_tick_ns(const cache *c); /* CLOCK_MONOTONIC ns at which the clock next advances */

/* ---- hash.c ---- */
int hash_init(cache *c, int hashpower);
void hash_free(cache *c);
/* With the stripe of hv held. */
item *hash_find(cache *c, const char *key, size_t nkey, uint32_t hv);
void hash_insert(cache *c, item *it, uint32_t hv);
void hash_delete(cache *c, item *it, uint32_t hv);
/* Maintainer: start, step (migrate up to n buckets; returns 1 when done), finish. */
/* With the stripe of hv held: is it in hv's chain (linked)?  Reads no item but those in the chain. */
int hash_holds(cache *c, const item *it, uint32_t hv);
bool hash_needs_expand(cache *c);
int hash_expand_start(cache *c);
int hash_expand_step(cache *c, uint32_t n);
static inline stripe_lock *stripe_of(cache *c, uint32_t hv)
{
    return &c->stripes[hv & (c->nstripes - 1)].m;
}

/* ---- slabs.c ---- */
int slabs_init(cache *c);
void slabs_free_all(cache *c);
int slabs_clsid(const cache *c, size_t ntotal);
/* With the class lock held: a free chunk or a chunk of a new page, or NULL. */
item *slabs_alloc_locked(cache *c, struct slabclass *cls);
/* With the class lock held: put a chunk on the free list (or, in a page
 * the mover is emptying, just mark it free). */
void slabs_free_locked(struct slabclass *cls, item *it);
/* With the class lock held: free the body chunks of a chained item (a no-op
 * for any other) and clear its ITEM_CHAINED; its head chunk stays.  Every
 * chunk of a chain is of the head's class (cache.h, item_chain). */
void slabs_chain_free_locked(struct slabclass *cls, item *it);
/* With the class lock held: a free chunk without taking a new page, or NULL. */
item *slabs_alloc_nonew_locked(struct slabclass *cls);
/* With the class lock held: is this chunk in the page being emptied?  If so
 * it is marked free (it must be unreferenced) and 1 is returned. */
int slabs_evac_claim_locked(struct slabclass *cls, item *it);
/* Take a page out of the free list bookkeeping of cls (class lock held):
 * stop carving it and unlink its free chunks.  Returns the chunks it holds. */
uint32_t slabs_evac_begin_locked(cache *c, struct slabclass *cls, char *page);
/* Class lock held: drop the emptied page from cls's page list. */
void slabs_evac_end_locked(struct slabclass *cls, char *page);
/* Class lock held: add a page (garbage inside) to cls. 0 or -1 (no memory for the list). */
int slabs_add_page_locked(struct slabclass *cls, char *page);
/* Put a page into the global pool, or give it back to the OS when memory is
 * above the limit.  Takes pool_lock. */
void slabs_pool_put(cache *c, char *page);
/* Give pool pages back to the OS while mem_malloced exceeds the limit. */
void slabs_memory_release(cache *c);

/* ---- slab_mover.c ---- */
/* Start / stop the mover thread (cache_start / cache_stop). */
int mover_start(cache *c);
void mover_stop(cache *c);
/* cache_alloc saw an eviction in clsid: with automove 2, ask for a page. */
void mover_note_eviction(cache *c, int clsid);
/* Wake the mover (memory limit changed). */
void mover_wake(cache *c);

/* ---- lru.c ---- */
/* With the class lock held: put it at the head of segment seg (sets its
 * segment bits and the segment's counters). */
void lru_link_locked(struct slabclass *cls, item *it, int seg);
/* With the class lock held: take it out of whichever segment it is in. */
void lru_unlink_locked(struct slabclass *cls, item *it);
/* The segment a new item with this exptime goes to (TEMP, HOT, or COLD when flat). */
int lru_segment_for(cache *c, rel_time_t exptime, rel_time_t now);
/* With the class lock held: reclaim or evict a COLD tail item for reuse
 * (refcount 1, unlinked), or NULL; *busy tells whether a stripe trylock
 * failed on the way.  When COLD has nothing to give it moves HOT's (then
 * WARM's) tail down to COLD and tries again, as memcached's allocation does. */
item *lru_pull_tail_locked(cache *c, struct slabclass *cls, int *busy);
/* With the class lock held, flat LRU: free the dead (expired or flushed)
 * items at COLD's tail up to the first live one, counted in reclaimed, as
 * memcached's allocation does before it takes a chunk when its LRU is not
 * segmented (so a flushed item's memory is reused before a fresh chunk). */
void lru_reclaim_tail_locked(cache *c, struct slabclass *cls);
/* Allocation attempts when tail items' stripes are momentarily busy. */
#define ALLOC_RETRIES 10
/* Maintainer: one pass of the expired-item reclaimer over every class. */
uint64_t lru_reclaim_pass(cache *c);
/* Maintainer: memcached's lru_maintainer_juggle for class k: move items
 * between segments by size, age and activity; returns moves made. */
int lru_juggle(cache *c, int k);
/* Maintainer: move the queued COLD hits to WARM; returns items looked at. */
uint64_t lru_drain_bumps(cache *c);
/* Stripe or class context: a hit moves a COLD item to WARM now (the
 * maintainer's part of a bump, and memcached's do_item_update). */
void lru_bump_cold_locked(cache *c, struct slabclass *cls, item *it, rel_time_t now);
/* Is it dead (expired or flushed) at `now`?  Stripe lock held or fields read relaxed. */
int item_is_dead(cache *c, item *it, rel_time_t now, get_status *why);
/* Stripe held and class lock held: unlink and drop the hash table's
 * reference, freeing under the held class lock. */
void item_unlink_classlocked(cache *c, struct slabclass *cls, item *it, uint32_t hv);

/* ---- s3fifo.c (-o eviction=s3fifo) ---- */
/*
 * A hit: raise the item's access counter (at most 3) and mark it FETCHED,
 * then ACTIVE, as a segmented hit does; take the time when anything
 * changed.  One compare-exchange on the item, no lock, and nothing at all
 * once the counter is at 3.
 */
static inline void s3fifo_hit(item *it, rel_time_t now)
{
    uint16_t f = atomic_load_explicit(&it->it_flags, memory_order_relaxed);
    uint16_t n;
    do {
        n = f;
        if ((n & ITEM_FREQ_MASK) != ITEM_FREQ_MASK)
            n = (uint16_t)(n + (1u << ITEM_FREQ_SHIFT));
        n |= (f & ITEM_FETCHED) ? ITEM_ACTIVE : ITEM_FETCHED;
        if (n == f)
            return;
    } while (!atomic_compare_exchange_weak_explicit(&it->it_flags, &f, n, memory_order_relaxed,
                                                    memory_order_relaxed));
    ST(it->time, now);
}
/* Stripe of hv and class lock held, it about to be linked: the queue it
 * goes to (LRU_HOT: small, LRU_COLD: main). */
int s3fifo_queue_for(struct slabclass *cls, item *it, uint32_t hv);
/* Stripe held: old is being replaced by new_it (a set on an existing key):
 * new_it takes old's queue and counter, plus this access. */
void s3fifo_inherit(item *old, item *new_it);
/* Class lock held: S3-FIFO's eviction; as lru_pull_tail_locked. */
item *s3fifo_pull_tail_locked(cache *c, struct slabclass *cls, int *busy);
/* cache_destroy: free the ghost queues. */
void s3fifo_free(cache *c);

/* ---- lru.c, shared with s3fifo.c ---- */
/* Class lock held: unlink tail item it for reuse if its stripe is free and
 * nobody reads it, counted as reclaimed (dead) or evicted.  Returns 1 when
 * taken live, 2 taken dead (the item then has one reference: the caller's),
 * 0 when its stripe was busy, -1 when a reader holds it (both set *busy), -2
 * when it is live and evictions are off (-M: the allocation fails). */
int lru_take_locked(cache *c, struct slabclass *cls, item *it, uint32_t hv, rel_time_t now, int *busy);
/* Class lock held: move a linked item to the head of segment seg. */
void lru_seg_move(struct slabclass *cls, item *it, int seg);

/* ---- items.c ---- */
/* Stripe of hv held: link (hash + LRU, refcount+1, time, cas). */
void item_link(cache *c, item *it, uint32_t hv, uint64_t cas);
/* Stripe of hv held: unlink and drop the hash table's reference. */
void item_unlink(cache *c, item *it, uint32_t hv);

/* ---- maint.c ---- */
/* Wake the maintainer (hash expansion wanted). */
void maint_wake(cache *c);

/* ---- crawler.c: the one item walker ---- */
/* walk_items flags: also show items that are expired or flushed (the crawler reclaims them). */
#define WALK_DEAD 0x1
/*
 * Visit the linked items of the classes set in classes[] (NULL: all) from
 * *cursor (0: the start), looking at no more than budget chunks, and show
 * each whose key starts with prefix (and that is live, unless WALK_DEAD)
 * to fn, with its class lock and its stripe held.  Returns true when the
 * walk is complete (*cursor is then 0); *unlinked counts CACHE_WALK_UNLINK.
 */
bool walk_items(cache *c, const uint8_t *classes, const char *prefix, size_t nprefix, uint64_t *cursor,
                uint32_t budget, cache_walk_fn fn, void *ctx, int flags, uint64_t *unlinked);
/* cache_create / cache_destroy: the crawler's locks and its thread. */
void crawler_init(cache *c);
void crawler_destroy(cache *c);

/* ---- test hooks (tests/c/test_cache.c) ---- */
/* Freeze the clock at t; the maintainer stops moving it. */
void cache_test_set_time(cache *c, rel_time_t t);
/* Run one maintainer pass synchronously (reclaimer + a whole pending expansion).
 * Only while the maintainer thread is not running. */
void cache_test_maintain(cache *c);
/* Bytes of pages allocated so far. */
uint64_t cache_test_mem_malloced(cache *c);
/* Items linked, counted by walking every LRU (takes the class locks). */
uint64_t cache_test_count_lru(cache *c);

#endif
