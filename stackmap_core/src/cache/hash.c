/*
 * hash.c -- the key hash function and the item hash table.
 *
 * A chained table of 2^hashpower buckets.  When it holds more than 1.5
 * items per bucket, the maintainer thread doubles it incrementally (as
 * memcached's assoc.c does): it allocates the new table, swaps it in while
 * holding every stripe lock (rare and short), then moves one old bucket at
 * a time under that bucket's stripe lock and advances expand_bucket.  A
 * lookup, already holding its stripe lock, uses the old table when its old
 * bucket index is not yet below expand_bucket, the new one otherwise.
 * This is safe without more locking because the stripe count never exceeds
 * the old bucket count: old bucket b and new buckets b and b+oldsize have
 * the same stripe, and expand_bucket only crosses b while b's stripe is
 * held.
 *
 * The hash function is MurmurHash3 (x86, 32 bit), written from the public
 * description of the algorithm.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache_int.h"

static inline uint32_t rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

uint32_t cache_hash(const char *key, size_t nkey)
{
    return cache_hash_seeded(key, nkey, 0x9747b28cu); /* fixed seed */
}

uint32_t cache_hash_seeded(const char *key, size_t nkey, uint32_t seed)
{
    const uint8_t *p = (const uint8_t *)key;
    const uint32_t c1 = 0xcc9e2d51u, c2 = 0x1b873593u;
    uint32_t h = seed;
    size_t nblocks = nkey / 4;
    for (size_t i = 0; i < nblocks; i++) {
        uint32_t k;
        memcpy(&k, p + i * 4, 4);
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
        h = rotl32(h, 13);
        h = h * 5 + 0xe6546b64u;
    }
    const uint8_t *tail = p + nblocks * 4;
    uint32_t k1 = 0;
    switch (nkey & 3) {
    case 3:
        k1 ^= (uint32_t)tail[2] << 16;
        /* fall through */
    case 2:
        k1 ^= (uint32_t)tail[1] << 8;
        /* fall through */
    case 1:
        k1 ^= tail[0];
        k1 *= c1;
        k1 = rotl32(k1, 15);
        k1 *= c2;
        h ^= k1;
    }
    h ^= (uint32_t)nkey;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t hmask(uint32_t power)
{
    return (uint32_t)((1ull << power) - 1);
}

int hash_init(cache *c, int hashpower)
{
    if (hashpower < 4)
        hashpower = 4;
    if (hashpower > 31)
        hashpower = 31;
    c->primary = hugemem_alloc(sizeof(item *) << hashpower);
    if (!c->primary)
        return -1;
    atomic_store(&c->hashpower, (uint32_t)hashpower);
    c->old = NULL;
    c->oldpower = 0;
    atomic_store(&c->expanding, false);
    atomic_store(&c->expand_bucket, 0);
    /* Stripes: at most the initial bucket count (the table only grows). */
    uint32_t ns = MAX_STRIPES;
    while (ns > (1u << hashpower))
        ns >>= 1;
    c->nstripes = ns;
    c->stripes = aligned_alloc(64, sizeof(struct stripe) * ns);
    if (!c->stripes) {
        hugemem_free(c->primary, sizeof(item *) << hashpower);
        c->primary = NULL;
        return -1;
    }
    for (uint32_t i = 0; i < ns; i++)
        stripe_lock_init(&c->stripes[i].m);
    return 0;
}

void hash_free(cache *c)
{
    free(c->stripes);
    if (c->primary)
        hugemem_free(c->primary, sizeof(item *) << atomic_load(&c->hashpower));
    if (c->old)
        hugemem_free(c->old, sizeof(item *) << c->oldpower);
    c->stripes = NULL;
    c->primary = c->old = NULL;
}

/* The bucket holding hv; the caller holds hv's stripe. */
static item **bucket_of(cache *c, uint32_t hv)
{
    if (atomic_load_explicit(&c->expanding, memory_order_relaxed)) {
        uint32_t ob = hv & hmask(c->oldpower);
        if (ob >= atomic_load_explicit(&c->expand_bucket, memory_order_relaxed))
            return &c->old[ob];
    }
    return &c->primary[hv & hmask(atomic_load_explicit(&c->hashpower, memory_order_relaxed))];
}

/*
 * Prefetch for a batch of requests (prefetch.c): first the stripe lock and
 * the bucket of every key, then each bucket's first item, so the cache
 * misses of a batch overlap instead of stalling one request at a time.
 * Stage one takes no lock: it only computes addresses (a stale table
 * pointer just prefetches a useless line; a prefetch never faults).
 * Stage two reads the bucket under its stripe (trylock: a busy stripe is
 * skipped, the lookup itself will wait for it).
 */
void cache_prefetch(cache *c, uint32_t hv)
{
    __builtin_prefetch(stripe_of(c, hv), 1);
    item **t = LD(c->primary);
    uint32_t hp = atomic_load_explicit(&c->hashpower, memory_order_relaxed);
    __builtin_prefetch(&t[hv & hmask(hp)]);
}

/* Is it the item of this key? */
static inline bool item_has_key(const item *it, const char *key, size_t nkey)
{
    return it->nkey == nkey && memcmp(ITEM_key(it), key, nkey) == 0;
}

/* The first lines of an item: what a lookup and a small response touch. */
static inline void prefetch_item_lines(const item *it)
{
    __builtin_prefetch(it);                     /* header, start of the key */
    __builtin_prefetch((const char *)it + 64);  /* rest of a short key, the value */
    __builtin_prefetch((const char *)it + 128); /* the rest of a small item */
}

/*
 * The rest of a hit, past the lines prefetch_item_lines took, up to
 * PREFETCH_VALUE_MAX bytes of item: a get response copies values of up to
 * 2 KiB (conn.h, OUT_COPY_MAX), and that copy otherwise stalls on every
 * line of a value (at 1 KiB values it was 5% of the server's CPU).
 */
#define PREFETCH_VALUE_MAX 2048

static inline void prefetch_value_lines(const item *it)
{
    size_t total = ITEM_ntotal(it->nkey, it->nbytes);
    const char *end = (const char *)it + (total < PREFETCH_VALUE_MAX ? total : PREFETCH_VALUE_MAX);
    const char *line = (const char *)(((uintptr_t)it + 128) & ~(uintptr_t)63) + 64;
    for (; line < end; line += 64) {
        __builtin_prefetch(line);
        __asm__ volatile("" ::: "memory"); /* else GCC drops a loop of bare prefetches */
    }
}

void cache_prefetch_item(cache *c, uint32_t hv)
{
    stripe_lock *m = stripe_of(c, hv);
    if (!stripe_trylock(m))
        return;
    item *it = *bucket_of(c, hv);
    if (it)
        prefetch_item_lines(it);
    stripe_unlock(m);
}

/*
 * Stage three, with the bucket's first item in cache from stage two: if it
 * is the key, the rest of its value is prefetched; if not, the next item in
 * the chain, the miss a lookup further down would otherwise stall on.
 */
void cache_prefetch_chain(cache *c, uint32_t hv, const char *key, size_t nkey)
{
    stripe_lock *m = stripe_of(c, hv);
    if (!stripe_trylock(m))
        return;
    item *it = *bucket_of(c, hv);
    if (it && item_has_key(it, key, nkey))
        prefetch_value_lines(it);
    else if (it && it->h_next)
        prefetch_item_lines(it->h_next);
    stripe_unlock(m);
}

item *hash_find(cache *c, const char *key, size_t nkey, uint32_t hv)
{
    item *it = *bucket_of(c, hv);
    while (it) {
        if (item_has_key(it, key, nkey))
            return it;
        it = it->h_next;
    }
    return NULL;
}

void hash_insert(cache *c, item *it, uint32_t hv)
{
    item **b = bucket_of(c, hv);
    it->h_next = *b;
    *b = it;
    uint64_t n = atomic_fetch_add_explicit(&c->hash_items, 1, memory_order_relaxed) + 1;
    uint32_t hp = atomic_load_explicit(&c->hashpower, memory_order_relaxed);
    if (hp < 31 && n > (3ull << hp) / 2 && !atomic_load_explicit(&c->expanding, memory_order_relaxed) &&
        !atomic_load_explicit(&c->expand_wanted, memory_order_relaxed)) {
        if (!atomic_exchange(&c->expand_wanted, true))
            maint_wake(c);
    }
}

void hash_delete(cache *c, item *it, uint32_t hv)
{
    item **pp = bucket_of(c, hv);
    while (*pp) {
        if (*pp == it) {
            *pp = it->h_next;
            it->h_next = NULL;
            atomic_fetch_sub_explicit(&c->hash_items, 1, memory_order_relaxed);
            return;
        }
        pp = &(*pp)->h_next;
    }
}

bool hash_needs_expand(cache *c)
{
    uint32_t hp = atomic_load(&c->hashpower);
    return !atomic_load(&c->expanding) && hp < 31 && atomic_load(&c->hash_items) > (3ull << hp) / 2;
}

static void lock_all_stripes(cache *c)
{
    for (uint32_t i = 0; i < c->nstripes; i++)
        stripe_lock_take(&c->stripes[i].m);
}

static void unlock_all_stripes(cache *c)
{
    for (uint32_t i = c->nstripes; i-- > 0;)
        stripe_unlock(&c->stripes[i].m);
}

int hash_expand_start(cache *c)
{
    uint32_t hp = atomic_load(&c->hashpower);
    item **nt = hugemem_alloc(sizeof(item *) << (hp + 1));
    if (!nt)
        return -1; /* stay at this size; lookups just get longer chains */
    lock_all_stripes(c);
    c->old = c->primary;
    c->oldpower = hp;
    ST(c->primary, nt); /* cache_prefetch reads it without a stripe */
    atomic_store(&c->expand_bucket, 0);
    atomic_store(&c->hashpower, hp + 1);
    atomic_store(&c->expanding, true);
    unlock_all_stripes(c);
    return 0;
}

int hash_expand_step(cache *c, uint32_t n)
{
    if (!atomic_load(&c->expanding))
        return 1;
    uint32_t oldsize = 1u << c->oldpower;
    uint32_t newmask = hmask(c->oldpower + 1);
    uint32_t b = atomic_load(&c->expand_bucket);
    for (uint32_t done = 0; b < oldsize && done < n; done++, b++) {
        stripe_lock *m = &c->stripes[b & (c->nstripes - 1)].m;
        stripe_lock_take(m);
        item *it = c->old[b];
        while (it) {
            item *next = it->h_next;
            uint32_t hv = cache_hash(ITEM_key(it), it->nkey);
            item **nb = &c->primary[hv & newmask];
            it->h_next = *nb;
            *nb = it;
            it = next;
        }
        c->old[b] = NULL;
        atomic_store(&c->expand_bucket, b + 1);
        stripe_unlock(m);
    }
    if (b < oldsize)
        return 0;
    lock_all_stripes(c);
    item **old = c->old;
    c->old = NULL;
    atomic_store(&c->expanding, false);
    atomic_store(&c->expand_wanted, false);
    uint32_t oldpower = c->oldpower;
    unlock_all_stripes(c);
    hugemem_free(old, sizeof(item *) << oldpower);
    atomic_fetch_add(&c->hash_expansions, 1);
    return 1;
}
