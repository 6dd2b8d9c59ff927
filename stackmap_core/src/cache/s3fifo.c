/*
 * s3fifo.c -- S3-FIFO eviction, behind -o eviction=s3fifo (the default is
 * memcached's segmented LRU, lru.c).
 *
 * Why: an LRU moves an item on every hit (or, segmented, on its second
 * hit in COLD) and lets a sweep over keys read once push out what is read
 * again and again.  S3-FIFO (Yang et al., "FIFO queues are all you need
 * for cache eviction", SOSP'23) keeps per slab class
 *   - a small FIFO S (about SMALL_PCT% of the class's chunks) where new
 *     items start: most keys are read once or never, and leave from here;
 *   - a main FIFO M for items read again while in S;
 *   - a ghost queue G of the keys S evicted (their hashes only, no
 *     values): a key that comes back soon after goes straight to M;
 * and a 2-bit access counter per item that a hit raises with one
 * compare-exchange on the item (s3fifo_hit, cache_int.h): no lock and no
 * list move on a hit, ever.  Eviction (under the class lock, where the
 * LRU's is):
 *   - from S while S holds its share (or M is empty): the tail item goes
 *     to M's head with its counter cleared when it was read more than once
 *     in S (the paper's "freq > 1"), else it is evicted and its hash put
 *     in G;
 *   - from M: a tail item read since it got there goes back to M's head
 *     with its counter one lower (a CLOCK with 2 bits), else it is evicted.
 * Until the class first evicts, a new item goes to M once S holds its
 * share, as libCacheSim's S3FIFO does: the class's size is not known
 * before it is full, and the items stored before then are kept longer.
 *
 * The queues are the LRU's lists: S is the HOT segment, M the COLD one
 * (so "stats items" shows them as number_hot and number_cold, the slab
 * automover reads M's tail age as COLD's, and an LRU tool sees a FIFO).
 * WARM is unused; TEMP (-o temporary_ttl) works as with the LRU.  What
 * else the LRU's lists feed keeps working unchanged: the crawler and
 * metadump walk slab pages, not lists; the slab mover copies an item
 * with its flags (queue and counter) to the head of its queue; flush_all
 * and expiry are found at the tails (a dead tail item is reclaimed before
 * any move) and by the crawler.  The maintainer leaves the queues alone
 * (lru_juggle only reclaims TEMP); "lru tune" and "lru mode" answer ERROR.
 *
 * The ghost is a table of GHOST_WAYS-slot buckets (one cache line) of
 * 32-bit key hashes per class, each bucket a small FIFO: a bucket's last
 * slot is the next slot to overwrite.  It holds about as many hashes as M
 * holds items (the paper's size) and is rebuilt, keeping its entries, when
 * M's item count has moved away from that: a rare allocation under the
 * class lock in the eviction path, never per request.  A hash collision
 * only sends a new item to M.  Its memory (4 bytes per item of M, plus
 * rounding) is not counted in the -m limit, like the hash table's.
 */
#include <stdlib.h>

#include "cache_int.h"

/* The small queue's share of a class's bytes, % (the paper's 10%). */
#define SMALL_PCT 10
/* An S item read more than this many times moves to M (the paper: freq > 1). */
#define MOVE_TO_MAIN_FREQ 1
/* uint32_t slots per ghost bucket: GHOST_WAYS - 1 hashes, then the bucket's cursor. */
#define GHOST_WAYS 16
/* Items an eviction may move (S to M, M to M) before it evicts M's tail
 * whatever its counter: bounds the time the class lock is held. */
#define MAX_MOVES 1024

static inline unsigned freq_of(uint16_t f)
{
    return (f & ITEM_FREQ_MASK) >> ITEM_FREQ_SHIFT;
}

/* Class lock held: set the counter (other threads may set flag bits meanwhile). */
static void freq_set(item *it, unsigned v)
{
    uint16_t f = atomic_load_explicit(&it->it_flags, memory_order_relaxed);
    uint16_t n;
    do {
        n = (uint16_t)((f & ~ITEM_FREQ_MASK) | (v << ITEM_FREQ_SHIFT));
    } while (!atomic_compare_exchange_weak_explicit(&it->it_flags, &f, n, memory_order_relaxed,
                                                    memory_order_relaxed));
}

/* ---- the ghost queue ---- */

static inline uint32_t *ghost_bucket(const uint32_t *g, uint32_t nbuckets, uint32_t hv)
{
    return (uint32_t *)g + (uint32_t)(((uint64_t)hv * nbuckets) >> 32) * GHOST_WAYS;
}

/* 0 marks an empty slot. */
static inline uint32_t ghost_key(uint32_t hv)
{
    return hv ? hv : 1;
}

static void ghost_add(uint32_t *g, uint32_t nbuckets, uint32_t key)
{
    uint32_t *b = ghost_bucket(g, nbuckets, key);
    uint32_t at = b[GHOST_WAYS - 1];
    b[at] = key;
    b[GHOST_WAYS - 1] = at + 1 < GHOST_WAYS - 1 ? at + 1 : 0;
}

/* Class lock held: make the ghost hold about as many hashes as M holds
 * items, keeping the entries it has (a new table, filled from the old one). */
static void ghost_fit(struct slabclass *cls)
{
    uint64_t want = cls->seg_items[LRU_COLD] > 0 ? cls->seg_items[LRU_COLD] : 1;
    uint64_t have = (uint64_t)cls->ghost_buckets * (GHOST_WAYS - 1);
    if (cls->ghost && have * 4 >= want * 3 && have <= want * 2)
        return;
    uint64_t nb = (want + GHOST_WAYS - 2) / (GHOST_WAYS - 1);
    if (nb > UINT32_MAX / GHOST_WAYS)
        nb = UINT32_MAX / GHOST_WAYS;
    uint32_t *g = calloc(nb * GHOST_WAYS, sizeof(uint32_t));
    if (!g)
        return; /* keep the old one (or none: S evicts without remembering) */
    for (uint32_t i = 0; cls->ghost && i < cls->ghost_buckets; i++) {
        uint32_t *b = cls->ghost + (size_t)i * GHOST_WAYS;
        uint32_t at = b[GHOST_WAYS - 1];
        for (uint32_t k = 0; k < GHOST_WAYS - 1; k++) { /* oldest first */
            uint32_t key = b[(at + k) % (GHOST_WAYS - 1)];
            if (key)
                ghost_add(g, (uint32_t)nb, key);
        }
    }
    free(cls->ghost);
    cls->ghost = g;
    cls->ghost_buckets = (uint32_t)nb;
}

/* Class lock held: remember that S evicted the key of hash hv. */
static void ghost_put(struct slabclass *cls, uint32_t hv)
{
    ghost_fit(cls);
    if (cls->ghost)
        ghost_add(cls->ghost, cls->ghost_buckets, ghost_key(hv));
}

/* Class lock held: was hv's key evicted from S lately?  Forgets it if so. */
static bool ghost_take(struct slabclass *cls, uint32_t hv)
{
    if (!cls->ghost)
        return false;
    uint32_t key = ghost_key(hv);
    uint32_t *b = ghost_bucket(cls->ghost, cls->ghost_buckets, key);
    for (int k = 0; k < GHOST_WAYS - 1; k++) {
        if (b[k] == key) {
            b[k] = 0;
            return true;
        }
    }
    return false;
}

void s3fifo_free(cache *c)
{
    for (int k = 1; c->classes && k <= c->nclasses; k++) {
        free(c->classes[k].ghost);
        c->classes[k].ghost = NULL;
    }
}

/* ---- insertion ---- */

/* Does S hold at least its share of the class's S+M items?  (Within a
 * slab class every item takes one chunk: memory is counted in items.) */
static bool small_full(const struct slabclass *cls)
{
    uint64_t s = cls->seg_items[LRU_HOT], m = cls->seg_items[LRU_COLD];
    return s * 100 >= (s + m) * SMALL_PCT;
}

int s3fifo_queue_for(struct slabclass *cls, item *it, uint32_t hv)
{
    bool main = ITEM_lru(atomic_load_explicit(&it->it_flags, memory_order_relaxed)) == LRU_COLD;
    if (ghost_take(cls, hv)) {
        cls->st.s3_ghost_hits++;
        main = true;
    }
    if (!main && !cls->s3_evicted && cls->seg_items[LRU_HOT] > 0 && small_full(cls))
        main = true;
    return main ? LRU_COLD : LRU_HOT;
}

void s3fifo_inherit(item *old, item *new_it)
{
    uint16_t of = atomic_load_explicit(&old->it_flags, memory_order_relaxed);
    unsigned fq = freq_of(of) < 3 ? freq_of(of) + 1 : 3;
    unsigned seg = ITEM_lru(of) == LRU_COLD ? LRU_COLD : LRU_HOT;
    uint16_t f = atomic_load_explicit(&new_it->it_flags, memory_order_relaxed);
    uint16_t n;
    do {
        n = (uint16_t)((f & ~(ITEM_FREQ_MASK | ITEM_LRU_MASK)) | (fq << ITEM_FREQ_SHIFT) |
                       (seg << ITEM_LRU_SHIFT));
    } while (!atomic_compare_exchange_weak_explicit(&new_it->it_flags, &f, n, memory_order_relaxed,
                                                    memory_order_relaxed));
}

/* ---- eviction ---- */

item *s3fifo_pull_tail_locked(cache *c, struct slabclass *cls, int *busy)
{
    *busy = 0;
    rel_time_t now = atomic_load_explicit(&c->current_time, memory_order_relaxed);
    int skipped = 0;
    for (int moves = 0; moves <= MAX_MOVES; moves++) {
        bool from_small = cls->tails[LRU_HOT] && (!cls->tails[LRU_COLD] || small_full(cls));
        int q = from_small ? LRU_HOT : LRU_COLD;
        item *it = cls->tails[q];
        if (!it)
            return NULL; /* nothing but TEMP items, which only expire */
        uint16_t f = atomic_load_explicit(&it->it_flags, memory_order_relaxed);
        unsigned fq = freq_of(f);
        if (!item_is_dead(c, it, now, NULL) && moves < MAX_MOVES) {
            if (q == LRU_HOT && fq > MOVE_TO_MAIN_FREQ) {
                freq_set(it, 0);
                lru_seg_move(cls, it, LRU_COLD);
                cls->st.s3_to_main++;
                continue;
            }
            if (q == LRU_COLD && fq > 0) {
                freq_set(it, fq - 1);
                lru_seg_move(cls, it, LRU_COLD);
                cls->st.s3_reinserted++;
                continue;
            }
        }
        uint32_t hv = cache_hash(ITEM_key(it), it->nkey);
        int r = lru_take_locked(c, cls, it, hv, now, busy);
        if (r > 0) {
            cls->s3_evicted = true;
            if (r == 1 && q == LRU_HOT)
                ghost_put(cls, hv);
            return it;
        }
        if (r == -2)
            return NULL; /* -M: a live item stays and the allocation fails */
        /* its stripe is held, or a reader holds it: it waits a round at its
         * queue's head; after LRU_TAIL_TRIES of those the caller retries */
        if (++skipped >= LRU_TAIL_TRIES || moves >= MAX_MOVES)
            return NULL;
        lru_seg_move(cls, it, q);
    }
    return NULL;
}
