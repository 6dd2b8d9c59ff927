/*
 * lru.c -- the LRU lists of each slab class: memcached 1.6's segmented
 * LRU (HOT, WARM, COLD, TEMP), eviction, the maintainer's juggling of
 * items between segments, the queue of COLD hits, and the background
 * reclaimer of expired items.
 *
 * Why segments: with one LRU per class, a sweep over keys read once (a
 * scan, a batch job, one-hit wonders) pushes every item that is read
 * again and again out of memory.  memcached 1.5 split each class's LRU in
 * four, and 1.6 makes that the default; we follow its rules:
 *   - a new item goes to HOT (to TEMP when its TTL is at most
 *     temporary_ttl, when that is set; to COLD in flat mode);
 *   - a hit marks an item FETCHED, a second one ACTIVE (items.c);
 *   - HOT's tail flows to WARM when ACTIVE, else to COLD once HOT holds
 *     more than hot_lru_pct of the class's bytes or the item has been idle
 *     longer than COLD's tail age (held at its recent peak: see
 *     cold_age_reference) times hot_max_factor; WARM's tail is
 *     moved back to WARM's head when ACTIVE, else to COLD by the same rule
 *     with warm_lru_pct and warm_max_factor;
 *     (WARM is sized and aged only once memory is full: see memory_full);
 *   - a hit on a COLD item is queued (bump_ring, cache_int.h) and the
 *     maintainer moves it to WARM: the hit itself takes no extra lock;
 *   - allocation evicts only from COLD's tail, moving HOT's (then WARM's)
 *     tail down when COLD is empty;
 *   - TEMP is never juggled nor evicted from: only expiry frees it.
 * The maintainer thread (maint.c) runs lru_juggle on each class, backing
 * off from 10 ms to 1 s per class while there is nothing to move, as
 * memcached's lru_maintainer_thread does from 1 ms.  "lru mode flat" (or
 * -o no_lru_segmented / no_lru_maintainer) gives the plain LRU: new items
 * go to COLD, a hit moves an item to COLD's head at most once a minute
 * (items.c), and the maintainer drains what HOT and WARM still hold.
 *
 * Moving an item between segments needs only its class lock: list links,
 * the segment bits (it_flags, changed with atomic ops so that the flag
 * bits other threads set are never lost) and ACTIVE are all that change.
 * A stripe is taken only to unlink an item (eviction, reclaim), and only
 * with TRYLOCK, since the normal order is stripe then class.
 *
 * The reclaimer (lru_reclaim_pass, once a second) walks up to
 * RECLAIM_BATCH items from each segment's tail and unlinks the dead ones.
 *
 * With -o eviction=s3fifo these lists are S3-FIFO's queues (HOT its small
 * one, COLD its main one) and s3fifo.c decides what moves and what is
 * evicted: lru_pull_tail_locked hands over to it, lru_juggle only reclaims
 * TEMP, and a hit never reaches this file.
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

/* Class lock held: record that the item is in segment seg. */
static void seg_set(item *it, int seg)
{
    uint16_t f = atomic_load_explicit(&it->it_flags, memory_order_relaxed);
    uint16_t n;
    do {
        n = (uint16_t)((f & ~ITEM_LRU_MASK) | ((unsigned)seg << ITEM_LRU_SHIFT));
    } while (!atomic_compare_exchange_weak_explicit(&it->it_flags, &f, n, memory_order_relaxed,
                                                    memory_order_relaxed));
}

void lru_link_locked(struct slabclass *cls, item *it, int seg)
{
    seg_set(it, seg);
    it->prev = NULL;
    it->next = cls->heads[seg];
    if (it->next)
        it->next->prev = it;
    cls->heads[seg] = it;
    if (!cls->tails[seg])
        cls->tails[seg] = it;
    cls->seg_items[seg]++;
    cls->seg_bytes[seg] += ITEM_ntotal(it->nkey, it->nbytes);
}

void lru_unlink_locked(struct slabclass *cls, item *it)
{
    int seg = ITEM_lru(atomic_load_explicit(&it->it_flags, memory_order_relaxed));
    if (cls->heads[seg] == it)
        cls->heads[seg] = it->next;
    if (cls->tails[seg] == it)
        cls->tails[seg] = it->prev;
    if (it->next)
        it->next->prev = it->prev;
    if (it->prev)
        it->prev->next = it->next;
    it->prev = it->next = NULL;
    cls->seg_items[seg]--;
    cls->seg_bytes[seg] -= ITEM_ntotal(it->nkey, it->nbytes);
}

void lru_seg_move(struct slabclass *cls, item *it, int seg)
{
    lru_unlink_locked(cls, it);
    lru_link_locked(cls, it, seg);
}

int lru_segment_for(cache *c, rel_time_t exptime, rel_time_t now)
{
    int ttl = atomic_load_explicit(&c->temporary_ttl, memory_order_relaxed);
    /* memcached's unsigned "exptime - current_time <= temporary_ttl":
     * no exptime, or one already past, is not temporary */
    if (atomic_load_explicit(&c->temp_lru, memory_order_relaxed) && exptime != 0 && exptime >= now && exptime - now <= (rel_time_t)ttl)
        return LRU_TEMP;
    return atomic_load_explicit(&c->lru_segmented, memory_order_relaxed) ? LRU_HOT : LRU_COLD;
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

/* Class lock held: unlink a dead item if its stripe is free; 1 if it was. */
static int reclaim_dead(cache *c, struct slabclass *cls, item *it, rel_time_t now)
{
    uint32_t hv = cache_hash(ITEM_key(it), it->nkey);
    stripe_lock *m = stripe_of(c, hv);
    if (!stripe_trylock(m))
        return 0;
    int done = 0;
    uint16_t fl = atomic_load(&it->it_flags);
    if ((fl & ITEM_LINKED) && item_is_dead(c, it, now, NULL)) {
        cls->st.reclaimed++;
        if (!(fl & ITEM_FETCHED))
            cls->st.expired_unfetched++;
        item_unlink_classlocked(c, cls, it, hv);
        done = 1;
    }
    stripe_unlock(m);
    return done;
}

int lru_take_locked(cache *c, struct slabclass *cls, item *it, uint32_t hv, rel_time_t now, int *busy)
{
    stripe_lock *m = stripe_of(c, hv);
    if (!stripe_trylock(m)) {
        *busy = 1; /* its stripe is held (maybe by our own caller) */
        return 0;
    }
    if (atomic_fetch_add(&it->refcount, 1) != 1) {
        /* somebody is reading it (a response in flight, a walker): leave
         * it, and let the caller try again once it has let go of the class
         * lock, as memcached's allocation retries its tail pull */
        atomic_fetch_sub(&it->refcount, 1);
        cls->st.lrutail_reflocked++;
        stripe_unlock(m);
        *busy = 1;
        return -1;
    }
    uint16_t fl = atomic_load(&it->it_flags);
    int dead = item_is_dead(c, it, now, NULL);
    if (dead) {
        cls->st.reclaimed++;
        if (!(fl & ITEM_FETCHED))
            cls->st.expired_unfetched++;
    } else if (c->cfg.disable_evictions) {
        /* -M: a live tail item stays */
        atomic_fetch_sub(&it->refcount, 1);
        stripe_unlock(m);
        return -2;
    } else {
        cls->st.evicted++;
        cls->st.evicted_time = now - LD(it->time);
        if (it->exptime != 0)
            cls->st.evicted_nonzero++;
        if (!(fl & ITEM_FETCHED))
            cls->st.evicted_unfetched++;
        if (fl & ITEM_ACTIVE)
            cls->st.evicted_active++;
        if (c->evict_log_flags &&
            (atomic_load_explicit(c->evict_log_flags, memory_order_relaxed) & c->evict_log_bit))
            c->evict_log(c->evict_log_arg, it, now);
    }
    unlink_core(c, cls, it, hv);
    atomic_fetch_sub(&it->refcount, 1); /* the hash table's; ours remains */
    /* The caller reuses the head as one chunk: the rest of a chain is free. */
    slabs_chain_free_locked(cls, it);
    stripe_unlock(m);
    return dead ? 2 : 1;
}

/* Class lock held: take COLD's tail (a dead item, or the oldest live one)
 * for reuse, as memcached's lru_pull_tail(COLD_LRU, LRU_PULL_EVICT). */
static item *evict_cold(cache *c, struct slabclass *cls, int *busy, rel_time_t now)
{
    item *search = cls->tails[LRU_COLD];
    for (int tries = LRU_TAIL_TRIES; search && tries > 0; tries--) {
        item *prev = search->prev;
        int r = lru_take_locked(c, cls, search, cache_hash(ITEM_key(search), search->nkey), now, busy);
        if (r > 0)
            return search;
        if (r == -2)
            return NULL; /* -M: the allocation fails (memcached stops here too) */
        search = prev;
    }
    return NULL;
}

/*
 * Class lock held: memcached's lru_pull_tail without LRU_PULL_EVICT, for
 * segment seg: reclaim dead tail items, then move the tail item by the
 * rules at the top of this file.  One difference: memcached moves an
 * ACTIVE item at WARM's tail back to WARM's head whenever it juggles, so a
 * working set that is read all the time keeps its maintainer rotating
 * WARM (and its hits writing the time back) forever; we rotate only when
 * WARM is over its size or the tail over its age, i.e. when something
 * has to leave WARM, which is when the order matters.  The same items
 * leave, the same are rescued, and an idle maintainer stays idle.  total is the class's HOT+WARM+COLD
 * bytes (0 forces every inactive HOT/WARM tail item down to COLD), max_age
 * the idle time past which HOT/WARM items go to COLD.  Returns the number
 * of items reclaimed or moved.
 */
static int juggle_tail(cache *c, struct slabclass *cls, int seg, uint64_t total, rel_time_t max_age,
                       rel_time_t now)
{
    int removed = 0;
    item *search = cls->tails[seg];
    for (int tries = LRU_TAIL_TRIES; search && tries > 0; tries--) {
        item *prev = search->prev;
        if (item_is_dead(c, search, now, NULL)) {
            removed += reclaim_dead(c, cls, search, now);
            search = prev; /* if all we find are dead, keep going */
            continue;
        }
        uint16_t f = atomic_load_explicit(&search->it_flags, memory_order_relaxed);
        if (seg == LRU_HOT || seg == LRU_WARM) {
            int pct = atomic_load_explicit(seg == LRU_HOT ? &c->hot_lru_pct : &c->warm_lru_pct,
                                           memory_order_relaxed);
            uint64_t limit = total * (uint64_t)pct / 100;
            rel_time_t t = LD(search->time);
            bool over = cls->seg_bytes[seg] > limit || (now > t && now - t > max_age);
            if ((f & ITEM_ACTIVE) && seg == LRU_WARM && !over)
                break; /* nothing has to leave WARM: its order can wait (see below) */
            if (f & ITEM_ACTIVE) {
                /* rescue active items: HOT's go to WARM, WARM's to its head */
                atomic_fetch_and(&search->it_flags, (uint16_t)~ITEM_ACTIVE);
                removed++;
                if (seg == LRU_WARM) {
                    cls->st.moves_within_lru++;
                    lru_seg_move(cls, search, LRU_WARM);
                    search = prev;
                    continue;
                }
                cls->st.moves_to_warm++;
                lru_seg_move(cls, search, LRU_WARM);
            } else if (over) {
                cls->st.moves_to_cold++;
                lru_seg_move(cls, search, LRU_COLD);
                removed++;
            }
        } else if (seg == LRU_COLD && (f & ITEM_ACTIVE) &&
                   atomic_load_explicit(&c->lru_segmented, memory_order_relaxed)) {
            /* a hit the queue lost (or not drained yet): WARM it now */
            atomic_fetch_and(&search->it_flags, (uint16_t)~ITEM_ACTIVE);
            cls->st.moves_to_warm++;
            lru_seg_move(cls, search, LRU_WARM);
            removed++;
        }
        break; /* TEMP, or a tail that stays: stop here */
    }
    return removed;
}

/* Items the allocation path looks at in HOT and WARM to find one for COLD. */
#define DEMOTE_TRIES (LRU_TAIL_TRIES * ALLOC_RETRIES)

/*
 * Class lock held, COLD has nothing to give: move HOT's tail item (WARM's
 * once HOT is empty) down to COLD, as memcached's allocation pulls HOT
 * with no room to spare.  ACTIVE items met on the way are rescued the
 * usual way (HOT's to WARM, WARM's to WARM's head) and the next one is
 * tried; after DEMOTE_TRIES of them the tail goes down ACTIVE or not, so
 * that a store never fails while the class holds an item to evict (memcached
 * gives up and answers out of memory there).  Returns 1 when an item went
 * to COLD, 0 when HOT and WARM are empty.
 */
static int demote_for_alloc(struct slabclass *cls)
{
    for (int tries = 0;; tries++) {
        int seg = cls->tails[LRU_HOT] ? LRU_HOT : LRU_WARM;
        item *it = cls->tails[seg];
        if (!it)
            return 0;
        if (tries < DEMOTE_TRIES && (atomic_load_explicit(&it->it_flags, memory_order_relaxed) & ITEM_ACTIVE)) {
            atomic_fetch_and(&it->it_flags, (uint16_t)~ITEM_ACTIVE);
            if (seg == LRU_HOT)
                cls->st.moves_to_warm++;
            else
                cls->st.moves_within_lru++;
            lru_seg_move(cls, it, LRU_WARM);
            continue;
        }
        cls->st.moves_to_cold++;
        lru_seg_move(cls, it, LRU_COLD);
        return 1;
    }
    return 0;
}

void lru_reclaim_tail_locked(cache *c, struct slabclass *cls)
{
    rel_time_t now = atomic_load_explicit(&c->current_time, memory_order_relaxed);
    item *search = cls->tails[LRU_COLD];
    for (int tries = LRU_TAIL_TRIES; search && tries > 0; tries--) {
        item *prev = search->prev;
        if (!item_is_dead(c, search, now, NULL))
            return; /* the oldest live item: memcached's pull stops at it */
        reclaim_dead(c, cls, search, now);
        search = prev;
    }
}

item *lru_pull_tail_locked(cache *c, struct slabclass *cls, int *busy)
{
    if (c->s3fifo)
        return s3fifo_pull_tail_locked(c, cls, busy);
    *busy = 0;
    rel_time_t now = atomic_load_explicit(&c->current_time, memory_order_relaxed);
    for (int round = 0; round < ALLOC_RETRIES; round++) {
        item *it = evict_cold(c, cls, busy, now);
        if (it || !demote_for_alloc(cls))
            return it;
    }
    return NULL;
}

void lru_bump_cold_locked(cache *c, struct slabclass *cls, item *it, rel_time_t now)
{
    (void)c;
    uint16_t f = atomic_load(&it->it_flags);
    if (!(f & ITEM_LINKED))
        return; /* unlinked since the hit: nothing to move */
    ST(it->time, now);
    if (ITEM_lru(f) == LRU_COLD && (f & ITEM_ACTIVE)) {
        atomic_fetch_and(&it->it_flags, (uint16_t)~ITEM_ACTIVE);
        cls->st.moves_to_warm++;
        lru_seg_move(cls, it, LRU_WARM);
    }
}

uint64_t lru_drain_bumps(cache *c)
{
    uint64_t n = 0;
    unsigned used = atomic_load(&c->hit_blocks_used);
    if (used > HIT_BLOCKS - 1)
        used = HIT_BLOCKS - 1;
    for (unsigned i = 0; i < used; i++) {
        struct bump_ring *r = &c->bump_rings[i];
        uint32_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint32_t h = atomic_load_explicit(&r->head, memory_order_acquire);
        for (; t != h; t++, n++) {
            struct bump b = r->slots[t & (BUMP_RING_SIZE - 1)];
            stripe_lock *m = stripe_of(c, b.hv);
            stripe_lock_take(m); /* the maintainer holds no class lock here */
            if (hash_holds(c, b.it, b.hv)) {
                struct slabclass *cls = &c->classes[b.it->slabs_clsid];
                pthread_mutex_lock(&cls->lock);
                lru_bump_cold_locked(c, cls, b.it, cache_now(c));
                pthread_mutex_unlock(&cls->lock);
            }
            stripe_unlock(m);
        }
        atomic_store_explicit(&r->tail, t, memory_order_release);
    }
    return n;
}

/* age * factor in whole seconds, saturating (a factor may be huge). */
static rel_time_t age_times(rel_time_t age, double factor)
{
    double v = (double)age * factor;
    return v >= 4294967295.0 ? (rel_time_t)4294967295u : v > 0 ? (rel_time_t)v : 0;
}

/* cold_age_ref falls this many times slower than time passes. */
#define COLD_AGE_DECAY 8

/*
 * The COLD age that hot_max_factor and warm_max_factor multiply.  memcached
 * takes COLD's tail age as it is; then a burst of keys read once (a scan,
 * a batch job) that makes COLD churn in a second also makes every WARM
 * item idle for two seconds look stale, and WARM is emptied into COLD and
 * evicted with the scan.  We hold the age at its recent peak and let it
 * fall COLD_AGE_DECAY times slower than time passes: a burst shorter than
 * a few times the old COLD age leaves WARM alone, while a lasting change
 * of traffic still brings the limits down (in 8x the time).
 */
static rel_time_t cold_age_reference(struct slabclass *cls, rel_time_t age, rel_time_t now)
{
    if (age >= cls->cold_age_ref) {
        cls->cold_age_ref = age;
        cls->cold_age_since = now;
        return age;
    }
    rel_time_t fall = (now - cls->cold_age_since) / COLD_AGE_DECAY;
    if (fall > 0) {
        cls->cold_age_ref = cls->cold_age_ref - age > fall ? cls->cold_age_ref - fall : age;
        cls->cold_age_since = now;
    }
    return cls->cold_age_ref;
}

/*
 * Can no class take another page?  Until then nothing is evicted, so how
 * much WARM holds does not matter yet.  memcached sizes WARM (and ages it)
 * from the start; then a working set larger than warm_lru_pct that is read
 * all over keeps cycling through WARM and COLD (moved down at WARM's tail,
 * back up on its next hit) and its maintainer moves about one item per
 * request, evictions or not.  We size WARM only once memory is full: before
 * that items stay where their hits put them, and when it fills, WARM's tail
 * (what was not read since it got there) goes down to COLD until WARM is
 * back within its share; from then on the rules are memcached's.
 */
static bool memory_full(cache *c)
{
    uint64_t limit = atomic_load_explicit(&c->maxbytes, memory_order_relaxed);
    return limit != 0 && atomic_load_explicit(&c->mem_malloced, memory_order_relaxed) + c->page_size > limit;
}

/* Juggling passes per class per maintainer round (memcached: 500). */
#define JUGGLE_PASSES 500

int lru_juggle(cache *c, int k)
{
    struct slabclass *cls = &c->classes[k];
    rel_time_t now = cache_now(c);
    int did = 0;
    pthread_mutex_lock(&cls->lock);
    bool any = false;
    for (int s = 0; s < LRU_NSEGS; s++)
        any |= cls->tails[s] != NULL;
    if (!any) {
        pthread_mutex_unlock(&cls->lock);
        return 0;
    }
    /* TEMP: reclaims only, before the segments are sized */
    for (int i = 0; i < JUGGLE_PASSES && cls->tails[LRU_TEMP]; i++) {
        if (juggle_tail(c, cls, LRU_TEMP, 0, 0, now) == 0)
            break;
        did++;
    }
    if (c->s3fifo) {
        /* S3-FIFO moves items only when it evicts (s3fifo.c) */
        pthread_mutex_unlock(&cls->lock);
        return did;
    }
    bool segmented = atomic_load_explicit(&c->lru_segmented, memory_order_relaxed);
    uint64_t total = 0;
    rel_time_t hot_age = 0, warm_age = 0;
    if (segmented) {
        /* flat mode leaves these 0: HOT and WARM drain into COLD */
        item *ct = cls->tails[LRU_COLD];
        rel_time_t cold_age = cold_age_reference(cls, ct && now > LD(ct->time) ? now - LD(ct->time) : 0, now);
        total = cls->seg_bytes[LRU_HOT] + cls->seg_bytes[LRU_WARM] + cls->seg_bytes[LRU_COLD];
        hot_age = age_times(cold_age, atomic_load_explicit(&c->hot_max_factor, memory_order_relaxed));
        warm_age = age_times(cold_age, atomic_load_explicit(&c->warm_max_factor, memory_order_relaxed));
    }
    pthread_mutex_unlock(&cls->lock);
    bool warm_sized = !segmented || memory_full(c);
    for (int i = 0; i < JUGGLE_PASSES; i++) {
        int more = 0;
        pthread_mutex_lock(&cls->lock); /* let go between passes: allocations wait at most one */
        if (juggle_tail(c, cls, LRU_HOT, total, hot_age, now) ||
            (warm_sized && juggle_tail(c, cls, LRU_WARM, total, warm_age, now)))
            more++;
        if (segmented)
            more += juggle_tail(c, cls, LRU_COLD, total, 0, now);
        pthread_mutex_unlock(&cls->lock);
        if (!more)
            break;
        did++;
    }
    return did;
}

uint64_t lru_reclaim_pass(cache *c)
{
    rel_time_t now = atomic_load_explicit(&c->current_time, memory_order_relaxed);
    uint64_t total = 0;
    for (int k = 1; k <= c->nclasses; k++) {
        struct slabclass *cls = &c->classes[k];
        pthread_mutex_lock(&cls->lock);
        for (int s = 0; s < LRU_NSEGS; s++) {
            item *search = cls->tails[s];
            for (int checked = 0; search && checked < RECLAIM_BATCH; checked++) {
                item *prev = search->prev;
                if (item_is_dead(c, search, now, NULL))
                    total += (uint64_t)reclaim_dead(c, cls, search, now);
                search = prev;
            }
        }
        pthread_mutex_unlock(&cls->lock);
    }
    return total;
}
