/*
 * lru.c -- one LRU list per slab class: linking, eviction and the
 * background reclaimer of expired items.
 *
 * This is a plain LRU per class (memcached's -o no_lru_segmented mode; the
 * segmented hot/warm/cold LRU is not implemented, so "stats items" shows
 * every item as cold).  A hit does not touch the list unless the item was
 * last moved more than ITEM_UPDATE_INTERVAL seconds ago (items.c), so the
 * class lock is off the read path.
 *
 * Eviction (lru_pull_tail_locked) runs with the class lock held: it looks at
 * up to LRU_TAIL_TRIES items from the tail, TRYLOCKs each one's stripe
 * (the normal order is stripe then class, so blocking here could deadlock)
 * and takes the first one that nobody but the hash table references: an
 * expired or flushed one is "reclaimed", a live one "evicted".  Its chunk
 * is handed straight to the allocation that asked.
 *
 * The reclaimer (lru_reclaim_pass, run by the maintainer once a second)
 * walks up to RECLAIM_BATCH items from each class's tail, one class lock at
 * a time, and unlinks the dead ones it can trylock; readers still holding
 * such an item keep it until they release it.  It is a tail walker, not
 * memcached's whole-LRU crawler: a dead item in the middle of a long LRU is
 * found when it is looked up or when it reaches the tail.
 */
#include "cache_int.h"

int item_is_dead(cache *c, item *it, rel_time_t now, get_status *why)
{
    rel_time_t ol = atomic_load_explicit(&c->oldest_live, memory_order_relaxed);
    if (ol != 0 && ol <= now) {
        uint64_t oc = atomic_load_explicit(&c->oldest_cas, memory_order_relaxed);
        uint64_t cas = LD(it->cas);
        if (LD(it->time) <= ol || (oc != 0 && cas != 0 && cas < oc)) {
            if (why)
                *why = GET_FLUSHED;
            return 1;
        }
    }
    rel_time_t e = LD(it->exptime);
    if (e != 0 && e <= now) {
        if (why)
            *why = GET_EXPIRED;
        return 1;
    }
    return 0;
}

void lru_link_locked(struct slabclass *cls, item *it)
{
    it->prev = NULL;
    it->next = cls->head;
    if (cls->head)
        cls->head->prev = it;
    cls->head = it;
    if (!cls->tail)
        cls->tail = it;
}

void lru_unlink_locked(struct slabclass *cls, item *it)
{
    if (cls->head == it)
        cls->head = it->next;
    if (cls->tail == it)
        cls->tail = it->prev;
    if (it->next)
        it->next->prev = it->prev;
    if (it->prev)
        it->prev->next = it->next;
    it->prev = it->next = NULL;
}

static inline void counter_add(_Atomic uint64_t *ctr, int64_t d)
{
    atomic_store_explicit(ctr, atomic_load_explicit(ctr, memory_order_relaxed) + (uint64_t)d,
                          memory_order_relaxed);
}

/* Both locks held: take it out of the hash table and the LRU. */
static void unlink_core(cache *c, struct slabclass *cls, item *it, uint32_t hv)
{
    atomic_fetch_and(&it->it_flags, (uint16_t)~ITEM_LINKED);
    hash_delete(c, it, hv);
    lru_unlink_locked(cls, it);
    counter_add(&cls->curr_items, -1);
    counter_add(&cls->curr_bytes, -(int64_t)ITEM_ntotal(it->nkey, it->nbytes));
}

void item_unlink_classlocked(cache *c, struct slabclass *cls, item *it, uint32_t hv)
{
    if (!(atomic_load(&it->it_flags) & ITEM_LINKED))
        return;
    unlink_core(c, cls, it, hv);
    if (atomic_fetch_sub(&it->refcount, 1) == 1)
        slabs_free_locked(cls, it);
}

item *lru_pull_tail_locked(cache *c, struct slabclass *cls, int *busy)
{
    *busy = 0;
    rel_time_t now = atomic_load_explicit(&c->current_time, memory_order_relaxed);
    item *search = cls->tail;
    for (int tries = LRU_TAIL_TRIES; search && tries > 0; tries--) {
        item *prev = search->prev;
        uint32_t hv = cache_hash(ITEM_key(search), search->nkey);
        stripe_lock *m = stripe_of(c, hv);
        if (!stripe_trylock(m)) {
            *busy = 1; /* its stripe is held (maybe by our own caller) */
            search = prev;
            continue;
        }
        if (atomic_fetch_add(&search->refcount, 1) != 1) {
            /* somebody is reading it (a response in flight): leave it */
            atomic_fetch_sub(&search->refcount, 1);
            cls->st.lrutail_reflocked++;
            stripe_unlock(m);
            search = prev;
            continue;
        }
        uint16_t fl = atomic_load(&search->it_flags);
        if (item_is_dead(c, search, now, NULL)) {
            cls->st.reclaimed++;
            if (!(fl & ITEM_FETCHED))
                cls->st.expired_unfetched++;
        } else {
            cls->st.evicted++;
            cls->st.evicted_time = now - LD(search->time);
            if (search->exptime != 0)
                cls->st.evicted_nonzero++;
            if (!(fl & ITEM_FETCHED))
                cls->st.evicted_unfetched++;
            if (fl & ITEM_ACTIVE)
                cls->st.evicted_active++;
        }
        unlink_core(c, cls, search, hv);
        atomic_fetch_sub(&search->refcount, 1); /* the hash table's; ours remains */
        stripe_unlock(m);
        return search;
    }
    return NULL;
}

uint64_t lru_reclaim_pass(cache *c)
{
    rel_time_t now = atomic_load_explicit(&c->current_time, memory_order_relaxed);
    uint64_t total = 0;
    for (int k = 1; k <= c->nclasses; k++) {
        struct slabclass *cls = &c->classes[k];
        pthread_mutex_lock(&cls->lock);
        item *search = cls->tail;
        for (int checked = 0; search && checked < RECLAIM_BATCH; checked++) {
            item *prev = search->prev;
            if (item_is_dead(c, search, now, NULL)) {
                uint32_t hv = cache_hash(ITEM_key(search), search->nkey);
                stripe_lock *m = stripe_of(c, hv);
                if (stripe_trylock(m)) {
                    uint16_t fl = atomic_load(&search->it_flags);
                    if ((fl & ITEM_LINKED) && item_is_dead(c, search, now, NULL)) {
                        cls->st.reclaimed++;
                        if (!(fl & ITEM_FETCHED))
                            cls->st.expired_unfetched++;
                        item_unlink_classlocked(c, cls, search, hv);
                        total++;
                    }
                    stripe_unlock(m);
                }
            }
            search = prev;
        }
        pthread_mutex_unlock(&cls->lock);
    }
    atomic_fetch_add_explicit(&c->maint_juggles, 1, memory_order_relaxed);
    return total;
}
