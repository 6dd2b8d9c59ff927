/*
 * cache_admin.c -- whole-cache operations for the control plane's admin
 * API: walking every live item (key listing, delete by prefix, snapshots),
 * looking at one item without touching it, evicting down to a memory limit,
 * and the CAS counter and hash growth a snapshot restore needs.
 *
 * The walk goes over slab pages by their id in the page directory
 * (slabs.c), not over hash buckets: ids are never reused while the cache
 * lives, so a (page id, chunk) cursor stays valid across calls, across
 * hash-table growth, across any amount of churn and across page moves
 * (slab_mover.c).  A chunk is an item only while ITEM_LINKED is set, which
 * is decided under the item's stripe lock; the walker first copies the key
 * without a lock (the bytes may be torn by a concurrent reuse of the chunk,
 * or be the middle of another class's item when the page moved), filters on
 * the prefix, hashes the copy, takes that stripe and looks the key up: only
 * when the hash table maps it to this very chunk is it shown.  Only one
 * lock is held at any time, and only for one item, so workers never wait
 * for a walk for longer than one item's inspection.  Items the mover copies
 * to another page during a walk may be shown twice or not at all.
 */
#include <string.h>

#include "cache_int.h"
#include "../racy.h"

/* Cursor layout: page id + 1 (40 bits) | chunk (24 bits); 0 is the start. */
#define CUR_PAGE(cur) ((uint32_t)(((cur) >> 24) - 1))
#define CUR_CHUNK(cur) ((uint32_t)((cur) & 0xFFFFFFu))
#define CUR_MAKE(p, ch) ((((uint64_t)(p) + 1) << 24) | (uint64_t)(ch))

/* Page id as seen at one moment: its base, owner class and carved chunks.
 * 1 when it belongs to a class, 0 while it is in the pool, -1 past the last id. */
static int page_view(cache *c, uint32_t id, char **base, int *k, uint32_t *carved)
{
    if (id >= atomic_load_explicit(&c->npagedir, memory_order_acquire))
        return -1;
    struct page_dir_entry *e = &c->pagedir[id / PAGEDIR_CHUNK][id % PAGEDIR_CHUNK];
    int owner = atomic_load_explicit(&e->owner, memory_order_acquire);
    if (owner == SLAB_POOL)
        return 0;
    struct slabclass *cls = &c->classes[owner];
    *base = e->base;
    *k = owner;
    pthread_mutex_lock(&cls->lock);
    if (cls->carve_page == e->base)
        *carved = (uint32_t)((cls->end_page_ptr - e->base) / cls->size);
    else
        *carved = cls->perslab;
    pthread_mutex_unlock(&cls->lock);
    return 1;
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

uint64_t cache_walk(cache *c, const char *prefix, size_t nprefix, uint64_t *cursor, uint32_t budget,
                    cache_walk_fn fn, void *ctx)
{
    uint64_t unlinked = 0;
    uint64_t cur = *cursor;
    uint32_t page = cur ? CUR_PAGE(cur) : 0, chunk = cur ? CUR_CHUNK(cur) : 0;
    uint32_t looked = 0;
    char key[KEY_MAX_LENGTH + 1];
    for (;; page++, chunk = 0) {
        char *base;
        int k;
        uint32_t carved;
        int v = page_view(c, page, &base, &k, &carved);
        if (v < 0)
            break;
        if (v == 0)
            continue;
        uint32_t size = c->classes[k].size;
        for (; chunk < carved; chunk++) {
            if (looked++ >= budget) {
                *cursor = CUR_MAKE(page, chunk);
                return unlinked;
            }
            item *it = (item *)(base + (size_t)chunk * size);
            if (!(atomic_load_explicit(&it->it_flags, memory_order_relaxed) & ITEM_LINKED))
                continue;
            size_t nkey = LD(it->nkey);
            if (nkey == 0 || nkey < nprefix || it->data + nkey > base + c->page_size)
                continue;
            copy_key_unlocked(key, it, nkey);
            if (nprefix && memcmp(key, prefix, nprefix) != 0)
                continue;
            uint32_t hv = cache_hash(key, nkey);
            stripe_lock *m = stripe_of(c, hv);
            stripe_lock_take(m);
            cache_walk_action act = CACHE_WALK_NEXT;
            /* The hash table maps the key to this chunk: it is that item. */
            if (hash_find(c, key, nkey, hv) == it && !item_is_dead(c, it, cache_now(c), NULL))
                act = fn(ctx, c, it);
            if (act == CACHE_WALK_UNLINK) {
                item_unlink(c, it, hv);
                unlinked++;
            }
            stripe_unlock(m);
            if (act == CACHE_WALK_STOP) {
                *cursor = CUR_MAKE(page, chunk);
                return unlinked;
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
            for (int n = 0; n < EVICT_BATCH && cls->tail; n++) {
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
