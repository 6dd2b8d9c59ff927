/*
 * cache_admin.c -- whole-cache operations for the control plane's admin
 * API: walking every live item (key listing, delete by prefix, snapshots),
 * looking at one item without touching it, evicting down to a memory limit,
 * and the CAS counter and hash growth a snapshot restore needs.
 *
 * The walk goes over slab pages, not hash buckets: pages are never freed
 * while the cache lives (slabs.c), so a (class, page, chunk) cursor stays
 * valid across calls, across hash-table growth and across any amount of
 * churn.  A chunk is an item only while ITEM_LINKED is set, which is decided
 * under the item's stripe lock; the walker first copies the key without a
 * lock (the bytes may be torn by a concurrent reuse of the chunk), filters
 * on the prefix, hashes the copy, takes that stripe and checks that the
 * chunk is still linked under the same key.  Only one lock is held at any
 * time, and only for one item, so workers never wait for a walk for longer
 * than one item's inspection.
 */
#include <string.h>

#include "cache_int.h"
#include "../racy.h"

/* Cursor layout: class id (8 bits) | page (32 bits) | chunk (24 bits). */
#define CUR_CLASS(cur) ((int)((cur) >> 56))
#define CUR_PAGE(cur) ((uint32_t)((cur) >> 24))
#define CUR_CHUNK(cur) ((uint32_t)((cur) & 0xFFFFFFu))
#define CUR_MAKE(k, p, ch) (((uint64_t)(k) << 56) | ((uint64_t)(p) << 24) | (uint64_t)(ch))

/* One page of a class as seen at one moment (class lock held briefly). */
static int page_view(cache *c, int k, uint32_t page, char **base, uint32_t *carved)
{
    struct slabclass *cls = &c->classes[k];
    int ok = 0;
    pthread_mutex_lock(&cls->lock);
    if (page < cls->npages) {
        *base = cls->pages[page];
        *carved = page + 1 == cls->npages ? cls->perslab - cls->end_page_free : cls->perslab;
        ok = 1;
    }
    pthread_mutex_unlock(&cls->lock);
    return ok;
}

/*
 * Copy an item's key without its lock, to filter and hash it.  The chunk
 * may be reused under us (cache_alloc writes a new key into it): the copy
 * may then be torn, and it is only trusted after cache_walk has taken the
 * key's stripe and compared the key under it.  Taking the stripe first is
 * not possible (which stripe depends on the key), so the race is by design
 * and the function is exempt from ThreadSanitizer (racy.h); the writer's
 * side stays checked.
 */
static SM_RACY_READ void copy_key_unlocked(char *key, const item *it, size_t nkey)
{
    for (size_t i = 0; i < nkey; i++)
        key[i] = SM_RACY_LOAD(it->data[i]);
}

/*
 * With the stripe of `key` held: does the chunk hold that key?  An item
 * linked under this key cannot change (unlinking it needs this stripe), but
 * the chunk may be linked under another key in another stripe, and then be
 * freed and reused (cache_alloc writing a new key) while we compare: the
 * comparison races by design and is exempt from ThreadSanitizer.  The
 * caller checks ITEM_LINKED before and after it: a match between two
 * LINKED observations is the item linked under this key, except for a
 * chunk freed, refilled with this very key, abandoned and relinked under
 * yet another key between the two loads.
 */
static SM_RACY_READ int key_matches_unlocked(const item *it, const char *key, size_t nkey)
{
    if (SM_RACY_LOAD(it->nkey) != nkey)
        return 0;
    for (size_t i = 0; i < nkey; i++)
        if (SM_RACY_LOAD(it->data[i]) != key[i])
            return 0;
    return 1;
}

uint64_t cache_walk(cache *c, const char *prefix, size_t nprefix, uint64_t *cursor, uint32_t budget,
                    cache_walk_fn fn, void *ctx)
{
    uint64_t unlinked = 0;
    uint64_t cur = *cursor;
    int k = CUR_CLASS(cur);
    uint32_t page = CUR_PAGE(cur), chunk = CUR_CHUNK(cur);
    if (k == 0) {
        k = 1;
        page = chunk = 0;
    }
    uint32_t looked = 0;
    char key[KEY_MAX_LENGTH + 1];
    for (; k <= c->nclasses; k++, page = 0, chunk = 0) {
        uint32_t size = c->classes[k].size;
        for (;; page++, chunk = 0) {
            char *base;
            uint32_t carved;
            if (!page_view(c, k, page, &base, &carved))
                break;
            for (; chunk < carved; chunk++) {
                if (looked++ >= budget) {
                    *cursor = CUR_MAKE(k, page, chunk);
                    return unlinked;
                }
                item *it = (item *)(base + (size_t)chunk * size);
                if (!(atomic_load_explicit(&it->it_flags, memory_order_relaxed) & ITEM_LINKED))
                    continue;
                size_t nkey = LD(it->nkey);
                if (nkey == 0 || nkey < nprefix)
                    continue;
                copy_key_unlocked(key, it, nkey);
                if (nprefix && memcmp(key, prefix, nprefix) != 0)
                    continue;
                uint32_t hv = cache_hash(key, nkey);
                stripe_lock *m = stripe_of(c, hv);
                stripe_lock_take(m);
                cache_walk_action act = CACHE_WALK_NEXT;
                /* LINKED before and after the key: see key_matches_unlocked */
                if ((atomic_load(&it->it_flags) & ITEM_LINKED) && key_matches_unlocked(it, key, nkey) &&
                    (atomic_load(&it->it_flags) & ITEM_LINKED) && !item_is_dead(c, it, cache_now(c), NULL))
                    act = fn(ctx, c, it);
                if (act == CACHE_WALK_UNLINK) {
                    item_unlink(c, it, hv);
                    unlinked++;
                }
                stripe_unlock(m);
                if (act == CACHE_WALK_STOP) {
                    *cursor = CUR_MAKE(k, page, chunk);
                    return unlinked;
                }
            }
        }
    }
    *cursor = 0;
    return unlinked;
}

int cache_peek(cache *c, const char *key, size_t nkey, cache_walk_fn fn, void *ctx)
{
    if (nkey == 0 || nkey > KEY_MAX_LENGTH)
        return 0;
    uint32_t hv = cache_hash(key, nkey);
    stripe_lock *m = stripe_of(c, hv);
    stripe_lock_take(m);
    item *it = hash_find(c, key, nkey, hv);
    int found = it && !item_is_dead(c, it, cache_now(c), NULL);
    if (found)
        fn(ctx, c, it);
    stripe_unlock(m);
    return found;
}

void cache_cas_at_least(cache *c, uint64_t cas)
{
    uint64_t cur = atomic_load(&c->cas_id);
    while (cur < cas && !atomic_compare_exchange_weak(&c->cas_id, &cur, cas))
        ;
}

uint64_t cache_item_bytes(cache *c)
{
    uint64_t total = 0;
    for (int k = 1; k <= c->nclasses; k++)
        total += atomic_load_explicit(&c->classes[k].curr_bytes, memory_order_relaxed);
    return total;
}

/* Items evicted per class lock hold, so workers allocating in the class get a turn. */
#define EVICT_BATCH 32

uint64_t cache_evict_to(cache *c, uint64_t target)
{
    uint64_t evicted = 0;
    int idle_rounds = 0;
    while (cache_item_bytes(c) > target && idle_rounds < 100) {
        uint64_t before = evicted;
        for (int k = 1; k <= c->nclasses && cache_item_bytes(c) > target; k++) {
            struct slabclass *cls = &c->classes[k];
            pthread_mutex_lock(&cls->lock);
            for (int n = 0; n < EVICT_BATCH; n++) {
                int busy;
                item *it = lru_pull_tail_locked(c, cls, &busy);
                if (!it)
                    break;
                /* lru_pull_tail_locked hands the chunk over with one reference: ours. */
                atomic_store(&it->refcount, 0);
                slabs_free_locked(cls, it);
                evicted++;
            }
            pthread_mutex_unlock(&cls->lock);
        }
        /* Tail items in use by a response in flight are skipped; retry a while. */
        idle_rounds = evicted == before ? idle_rounds + 1 : 0;
    }
    return evicted;
}

void cache_grow_now(cache *c)
{
    for (;;) {
        if (!atomic_load(&c->expanding)) {
            atomic_store(&c->expand_wanted, false);
            if (!hash_needs_expand(c) || hash_expand_start(c) != 0)
                return;
        }
        while (!hash_expand_step(c, 1u << 20))
            ;
    }
}
