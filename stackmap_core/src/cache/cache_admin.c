/*
 * cache_admin.c -- whole-cache operations for the control plane's admin
 * API: walking every live item (key listing, delete by prefix, snapshots),
 * looking at one item without touching it, memcached's "stats cachedump"
 * (one class's COLD LRU, under its lock), evicting down to a memory limit,
 * and the CAS counter and hash growth a snapshot restore needs.
 *
 * The walk is the LRU crawler's walker (walk_items in crawler.c): slab
 * pages chunk by chunk, a short batch under one class lock at a time, each
 * item shown with its stripe held.  The cursor is (class, page, chunk), so
 * it stays meaningful across calls, across hash-table growth and across any
 * amount of churn; the crawler, lru_crawler metadump and these calls all
 * see items the same way.
 */
#include <stdio.h>
#include <string.h>

#include "cache_int.h"

uint64_t cache_walk(cache *c, const char *prefix, size_t nprefix, uint64_t *cursor, uint32_t budget,
                    cache_walk_fn fn, void *ctx)
{
    uint64_t unlinked = 0;
    walk_items(c, NULL, prefix, nprefix, cursor, budget, fn, ctx, 0, &unlinked);
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

size_t cache_cachedump(cache *c, unsigned id, unsigned limit, char *buf, size_t cap)
{
    if (id < 1 || (int)id > c->nclasses)
        return 0;
    struct slabclass *cls = &c->classes[id];
    size_t len = 0;
    unsigned shown = 0;
    pthread_mutex_lock(&cls->lock);
    for (item *it = cls->heads[LRU_COLD]; it && (limit == 0 || shown < limit); it = it->next) {
        rel_time_t exp = LD(it->exptime); /* touch changes it under the item's stripe */
        char line[KEY_MAX_LENGTH + 64];
        int n = snprintf(line, sizeof(line), "ITEM %.*s [%u b; %llu s]\r\n", (int)it->nkey, ITEM_key(it),
                         ITEM_vlen(it), exp == 0 ? 0ULL : (unsigned long long)(exp + c->process_started));
        if (n < 0 || (size_t)n > cap - len)
            break;
        memcpy(buf + len, line, (size_t)n);
        len += (size_t)n;
        shown++;
    }
    pthread_mutex_unlock(&cls->lock);
    return len;
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
