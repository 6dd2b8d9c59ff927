/*
 * items.c -- the item operations behind the protocols: allocate, look up,
 * store, delete, incr/decr and release.
 *
 * Every operation on a key runs under that key's stripe lock (cache_int.h),
 * never a global lock.  A hit costs: hash, stripe lock, chain walk, expiry
 * and flush check, refcount increment, unlock.  With the segmented LRU
 * (lru.c) a hit never takes the class lock: it sets FETCHED, then ACTIVE
 * (and the access time) once, and a COLD item's second hit is queued for
 * the maintainer on the thread's own lock-free queue.  In flat mode the
 * class lock is taken on a hit only when the item was last moved more than
 * ITEM_UPDATE_INTERVAL (60) seconds ago, as memcached does.  With
 * -o eviction=s3fifo a hit only raises the item's counter (s3fifo.c).  Link, unlink
 * and free take the item's class lock after the stripe lock.
 *
 * Reference counts: cache_alloc returns an item with one reference (the
 * caller's); linking adds the hash table's; every lookup adds one.  The
 * chunk (with a chained item's body chunks) goes back to its class's free
 * list when the count reaches zero, which can only happen once the item is
 * unlinked.
 *
 * cache_store, cache_delete and cache_arith follow memcached 1.6.18's
 * do_store_item, meta delete and do_add_delta (see the comments there).
 */
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "cache_int.h"

/* ---- per-thread hit counters and COLD-hit queues ---- */

static _Thread_local struct {
    uint64_t cache_id;   /* cache the block belongs to */
    struct hit_block *b; /* this thread's block */
    struct bump_ring *r; /* this thread's COLD-hit queue; NULL for the shared block */
    bool shared;         /* b is the shared overflow block: use atomic adds */
} tl_hits;

/* This thread's block of c (handed out on its first hit). */
static inline void tl_attach(cache *c)
{
    if (tl_hits.cache_id != c->cache_id) {
        unsigned i = atomic_fetch_add(&c->hit_blocks_used, 1);
        tl_hits.shared = i >= HIT_BLOCKS - 1;
        tl_hits.b = &c->hit_blocks[tl_hits.shared ? HIT_BLOCKS - 1 : i];
        tl_hits.r = tl_hits.shared ? NULL : &c->bump_rings[i];
        tl_hits.cache_id = c->cache_id;
    }
}

static void count_hit(cache *c, int clsid, int seg)
{
    tl_attach(c);
    _Atomic uint64_t *h = &tl_hits.b->hits[seg][clsid];
    if (tl_hits.shared)
        atomic_fetch_add_explicit(h, 1, memory_order_relaxed);
    else
        atomic_store_explicit(h, atomic_load_explicit(h, memory_order_relaxed) + 1, memory_order_relaxed);
}

/*
 * A second hit on a COLD item (memcached's lru_bump_async): queue it for
 * the maintainer to move to WARM (cache_int.h: struct bump_ring).  A full
 * queue drops the bump and takes ACTIVE back, as memcached does.  Threads
 * beyond the private blocks (more than HIT_BLOCKS - 1 of them) have no
 * queue and move the item themselves under its class lock.
 */
static void bump_cold(cache *c, item *it, uint32_t hv, rel_time_t now)
{
    tl_attach(c);
    struct bump_ring *r = tl_hits.r;
    if (!r) {
        struct slabclass *cls = &c->classes[it->slabs_clsid];
        pthread_mutex_lock(&cls->lock);
        lru_bump_cold_locked(c, cls, it, now);
        pthread_mutex_unlock(&cls->lock);
        return;
    }
    uint32_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    if (h - atomic_load_explicit(&r->tail, memory_order_acquire) >= BUMP_RING_SIZE) {
        atomic_store_explicit(&r->dropped, atomic_load_explicit(&r->dropped, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        atomic_fetch_and(&it->it_flags, (uint16_t)~ITEM_ACTIVE);
        return;
    }
    r->slots[h & (BUMP_RING_SIZE - 1)] = (struct bump){.it = it, .hv = hv};
    atomic_store_explicit(&r->head, h + 1, memory_order_release);
}

/* ---- allocation and release ---- */

uint32_t cache_max_value_bytes(const cache *c, size_t nkey)
{
    size_t hdr = sizeof(item) + nkey + 1;
    return c->cfg.item_size_max > hdr ? (uint32_t)(c->cfg.item_size_max - hdr) : 0;
}

int cache_slab_class(const cache *c, size_t nkey, uint32_t nbytes)
{
    return slabs_clsid(c, ITEM_ntotal(nkey, nbytes));
}

/*
 * Class lock held: one chunk, free or taken from the LRU tail.  When the
 * tail's stripes were only momentarily busy, let go of the class lock and
 * try again (memcached also retries its tail pull).  *evicted is set when
 * a live or dead tail item made room.
 */
static item *alloc_chunk_locked(cache *c, struct slabclass *cls, int *evicted)
{
    item *it = slabs_alloc_locked(c, cls);
    for (int tries = 0, claims = 0; !it && tries < ALLOC_RETRIES; tries++) {
        int busy;
        it = lru_pull_tail_locked(c, cls, &busy);
        if (it && slabs_evac_claim_locked(cls, it)) {
            /* its chunk is in the page the mover is emptying: that page
             * keeps it; pull again (not counted as a try) */
            it = slabs_alloc_locked(c, cls);
            if (!it && claims++ < (int)cls->perslab)
                tries--;
            continue;
        }
        if (it) {
            cls->st.direct_reclaims++;
            *evicted = 1;
            break;
        }
        if (!busy)
            break;
        pthread_mutex_unlock(&cls->lock);
        sched_yield();
        pthread_mutex_lock(&cls->lock);
        it = slabs_alloc_locked(c, cls);
    }
    return it;
}

/* Bytes of a chained head before its value: header, key, NUL, padding, item_chain. */
static inline size_t chain_head_off(size_t nkey)
{
    return sizeof(item) + ((nkey + 1 + 7) & ~(size_t)7) + sizeof(item_chain);
}

/*
 * Class lock held, head allocated with its key length set: give it the body
 * chunks for a value of nbytes (cache.h, item_chain).  0, or -1 when the
 * class has no chunk to spare (the chunks taken so far stay on the chain
 * and go with the head).
 */
static int chain_build_locked(cache *c, struct slabclass *cls, item *it, uint32_t nbytes, int *evicted)
{
    item_chain *ch = ITEM_chain(it);
    size_t off = chain_head_off(it->nkey);
    ch->head_len = (uint32_t)(cls->size - off < nbytes ? cls->size - off : nbytes);
    ch->first = NULL;
    ch->nchunks = 0;
    atomic_store_explicit(&it->it_flags, ITEM_CHAINED, memory_order_relaxed);
    uint32_t left = nbytes - ch->head_len, cap = cls->size - (uint32_t)sizeof(item);
    item *last = NULL;
    while (left > 0) {
        item *k = alloc_chunk_locked(c, cls, evicted);
        if (!k)
            return -1;
        k->h_next = it;
        k->prev = last;
        k->next = NULL;
        k->nbytes = left < cap ? left : cap;
        k->slabs_clsid = it->slabs_clsid;
        ST(k->nkey, 0);
        atomic_store_explicit(&k->refcount, 1, memory_order_relaxed);
        atomic_store_explicit(&k->it_flags, ITEM_CHUNK, memory_order_relaxed);
        if (last)
            last->next = k;
        else
            ch->first = k;
        last = k;
        ch->nchunks++;
        left -= k->nbytes;
    }
    return 0;
}

item *cache_alloc(cache *c, const char *key, size_t nkey, uint32_t client_flags, rel_time_t exptime,
                  uint32_t nbytes, alloc_error *err)
{
    alloc_error dummy;
    if (!err)
        err = &dummy;
    size_t ntotal = ITEM_ntotal(nkey, nbytes);
    int id = nkey > KEY_MAX_LENGTH ? 0 : slabs_clsid(c, ntotal);
    struct slabclass *cls = &c->classes[id];
    /* Bigger than the largest class: chained, with at least the key in the head. */
    int chained = id != 0 && ntotal > cls->size;
    if (id == 0 || (chained && chain_head_off(nkey) >= cls->size)) {
        *err = ALLOC_TOO_LARGE;
        return NULL;
    }
    pthread_mutex_lock(&cls->lock);
    if (!atomic_load_explicit(&c->lru_segmented, memory_order_relaxed))
        lru_reclaim_tail_locked(c, cls);
    int evicted = 0;
    item *it = alloc_chunk_locked(c, cls, &evicted);
    if (it && chained) {
        it->slabs_clsid = (uint8_t)id;
        ST(it->nkey, (uint8_t)nkey); /* ITEM_chain() and cache_walk read it */
        if (chain_build_locked(c, cls, it, nbytes, &evicted) != 0) {
            atomic_store_explicit(&it->refcount, 0, memory_order_relaxed);
            slabs_free_locked(cls, it); /* with the chunks it got */
            it = NULL;
        }
    }
    if (!it)
        cls->st.outofmemory++;
    pthread_mutex_unlock(&cls->lock);
    if (evicted)
        mover_note_eviction(c, id); /* automove 2: a page for this class */
    if (!it) {
        *err = ALLOC_NO_MEMORY;
        return NULL;
    }
    it->h_next = it->prev = it->next = NULL;
    ST(it->cas, 0);
    ST(it->exptime, exptime);
    ST(it->time, cache_now(c));
    it->nbytes = nbytes;
    it->client_flags = client_flags;
    atomic_store(&it->refcount, 1);
    atomic_store(&it->it_flags, chained ? ITEM_CHAINED : 0);
    it->slabs_clsid = (uint8_t)id;
    ST(it->nkey, (uint8_t)nkey); /* cache_walk reads it without the item lock */
    memcpy(ITEM_key(it), key, nkey);
    ITEM_key(it)[nkey] = '\0';
    *err = ALLOC_OK;
    return it;
}

/* Copy len bytes between the value of it (from offset off) and buf, chunk by
 * chunk: into buf when to_item is false, into the item when it is true. */
static void item_value_copy(const item *it, uint32_t off, char *buf, uint32_t len, bool to_item)
{
    const item *nx;
    uint32_t n;
    for (char *p = item_seg_first(it, &n, &nx); p && len > 0; p = item_seg_next(&nx, &n)) {
        if (off >= n) {
            off -= n;
            continue;
        }
        uint32_t m = n - off < len ? n - off : len;
        if (to_item)
            memcpy(p + off, buf, m);
        else
            memcpy(buf, p + off, m);
        buf += m;
        len -= m;
        off = 0;
    }
}

void item_value_read(const item *it, uint32_t off, char *dst, uint32_t len)
{
    item_value_copy(it, off, dst, len, false);
}

void item_value_write(item *it, uint32_t off, const char *src, uint32_t len)
{
    item_value_copy(it, off, (char *)src, len, true);
}

void cache_release(cache *c, item *it)
{
    if (atomic_fetch_sub(&it->refcount, 1) == 1) {
        struct slabclass *cls = &c->classes[it->slabs_clsid];
        pthread_mutex_lock(&cls->lock);
        slabs_free_locked(cls, it);
        pthread_mutex_unlock(&cls->lock);
    }
}

/* ---- link / unlink (stripe of hv held) ---- */

void item_link(cache *c, item *it, uint32_t hv, uint64_t cas)
{
    struct slabclass *cls = &c->classes[it->slabs_clsid];
    rel_time_t now = cache_now(c);
    atomic_fetch_or(&it->it_flags, ITEM_LINKED);
    ST(it->time, now);
    ST(it->cas, cas);
    atomic_fetch_add(&it->refcount, 1);
    hash_insert(c, it, hv);
    int seg = lru_segment_for(c, LD(it->exptime), now);
    pthread_mutex_lock(&cls->lock);
    if (c->s3fifo && seg != LRU_TEMP)
        seg = s3fifo_queue_for(cls, it, hv);
    lru_link_locked(cls, it, seg);
    atomic_store_explicit(&cls->curr_items, atomic_load_explicit(&cls->curr_items, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&cls->curr_bytes,
                          atomic_load_explicit(&cls->curr_bytes, memory_order_relaxed) +
                              ITEM_ntotal(it->nkey, it->nbytes),
                          memory_order_relaxed);
    cls->total_items++;
    pthread_mutex_unlock(&cls->lock);
}

void item_unlink(cache *c, item *it, uint32_t hv)
{
    if (!(atomic_load(&it->it_flags) & ITEM_LINKED))
        return;
    struct slabclass *cls = &c->classes[it->slabs_clsid];
    pthread_mutex_lock(&cls->lock);
    item_unlink_classlocked(c, cls, it, hv);
    pthread_mutex_unlock(&cls->lock);
}

/*
 * memcached's do_item_update, for what is not a plain hit (add on an
 * existing key, incr/decr in place): segmented, an active COLD item moves
 * to WARM and any other takes the current time; flat, the item moves to
 * COLD's head at most once a minute.
 */
static void item_update(cache *c, item *it, rel_time_t now)
{
    struct slabclass *cls = &c->classes[it->slabs_clsid];
    if (c->s3fifo) {
        s3fifo_hit(it, now);
        return;
    }
    if (atomic_load_explicit(&c->lru_segmented, memory_order_relaxed)) {
        uint16_t f = atomic_load_explicit(&it->it_flags, memory_order_relaxed);
        if (ITEM_lru(f) != LRU_COLD || !(f & ITEM_ACTIVE)) {
            ST(it->time, now);
            return;
        }
        pthread_mutex_lock(&cls->lock);
        lru_bump_cold_locked(c, cls, it, now);
        pthread_mutex_unlock(&cls->lock);
        return;
    }
    if (LD(it->time) + ITEM_UPDATE_INTERVAL >= now)
        return;
    pthread_mutex_lock(&cls->lock);
    uint16_t f = atomic_load(&it->it_flags);
    if (f & ITEM_LINKED) {
        lru_unlink_locked(cls, it);
        lru_link_locked(cls, it, ITEM_lru(f)); /* its own segment's head */
        ST(it->time, now);
        cls->st.moves_within_lru++;
    }
    pthread_mutex_unlock(&cls->lock);
}

/*
 * A hit (memcached's do_item_bump).  Segmented: the first hit sets
 * FETCHED, the next ACTIVE and, outside COLD, the access time; a COLD item
 * is queued for the maintainer (bump_cold).  An ACTIVE item costs nothing
 * more until the maintainer clears ACTIVE again.  Flat: FETCHED, ACTIVE on
 * the second hit (for evicted_active), and item_update.
 */
static void item_bump(cache *c, item *it, uint32_t hv, rel_time_t now)
{
    if (c->s3fifo) {
        s3fifo_hit(it, now); /* S3-FIFO: a counter, no lock, no move */
        return;
    }
    uint16_t f = atomic_load_explicit(&it->it_flags, memory_order_relaxed);
    if (atomic_load_explicit(&c->lru_segmented, memory_order_relaxed)) {
        if (f & ITEM_ACTIVE)
            return;
        if (!(f & ITEM_FETCHED)) {
            atomic_fetch_or(&it->it_flags, ITEM_FETCHED);
            return;
        }
        atomic_fetch_or(&it->it_flags, ITEM_ACTIVE);
        if (ITEM_lru(f) != LRU_COLD)
            ST(it->time, now);
        else
            bump_cold(c, it, hv, now);
        return;
    }
    if (!(f & ITEM_FETCHED))
        atomic_fetch_or(&it->it_flags, ITEM_FETCHED);
    else if (!(f & ITEM_ACTIVE))
        atomic_fetch_or(&it->it_flags, ITEM_ACTIVE);
    item_update(c, it, now);
}

/*
 * memcached's do_item_get(DONT_UPDATE): the live item for the key with a
 * reference taken, unlinking a dead one found on the way.
 */
static item *find_live(cache *c, const char *key, size_t nkey, uint32_t hv, get_status *st)
{
    item *it = hash_find(c, key, nkey, hv);
    if (!it) {
        *st = GET_MISS;
        return NULL;
    }
    if (item_is_dead(c, it, cache_now(c), st)) {
        item_unlink(c, it, hv);
        return NULL;
    }
    atomic_fetch_add(&it->refcount, 1);
    *st = GET_HIT;
    return it;
}

/* ---- lookups ---- */

item *cache_get_locked(cache *c, const char *key, size_t nkey, uint32_t hv, int flags, rel_time_t exptime,
                       get_info *info)
{
    get_info dummy;
    if (!info)
        info = &dummy;
    info->prev_time = 0;
    info->was_fetched = 0;
    item *it = hash_find(c, key, nkey, hv);
    if (!it) {
        info->status = GET_MISS;
        return NULL;
    }
    rel_time_t now = cache_now(c);
    if (item_is_dead(c, it, now, &info->status)) {
        item_unlink(c, it, hv);
        return NULL;
    }
    info->status = GET_HIT;
    info->prev_time = LD(it->time);
    info->was_fetched = (atomic_load_explicit(&it->it_flags, memory_order_relaxed) & ITEM_FETCHED) != 0;
    atomic_fetch_add(&it->refcount, 1);
    if (flags & CACHE_GET_TOUCH)
        ST(it->exptime, exptime);
    int seg = ITEM_lru(atomic_load_explicit(&it->it_flags, memory_order_relaxed));
    if (!(flags & CACHE_GET_NOBUMP))
        item_bump(c, it, hv, now);
    if (!(flags & CACHE_GET_TOUCH))
        count_hit(c, it->slabs_clsid, seg);
    return it;
}

item *cache_get(cache *c, const char *key, size_t nkey, uint32_t hv, int flags, rel_time_t exptime,
                get_info *info)
{
    stripe_lock *m = stripe_of(c, hv);
    stripe_lock_take(m);
    item *it = cache_get_locked(c, key, nkey, hv, flags, exptime, info);
    stripe_unlock(m);
    return it;
}

/* ---- stores ---- */

/* The first len bytes of src's value into dst's value from off on (either may be chained). */
static void value_copy(item *dst, uint32_t off, const item *src, uint32_t len)
{
    const item *nx;
    uint32_t n;
    for (char *p = item_seg_first(src, &n, &nx); p && len > 0; p = item_seg_next(&nx, &n)) {
        uint32_t m = n < len ? n : len;
        item_value_write(dst, off, p, m);
        off += m;
        len -= m;
    }
}

/*
 * The CAS a store links its item with: the next unique, or an explicit one
 * (meta E, snapshot restore).  An explicit value raises the counter to it,
 * so the uniques handed out later never collide with it.  (Newer memcached
 * keeps its counter apart from E values, so its later uniques can equal
 * one; we do not copy that.)  A value above SM_CAS_SET_MAX is not taken
 * -- the item gets the next unique -- so nothing can push the counter to
 * where it would wrap (cache.h); meta E is held to a lower limit up front.
 */
static uint64_t store_cas(cache *c, uint64_t cas_new)
{
    if (!c->cfg.use_cas)
        return 0;
    if (cas_new == 0 || cas_new > SM_CAS_SET_MAX)
        return cache_next_cas(c);
    cache_cas_at_least(c, cas_new);
    return cas_new;
}

item *cache_vivify_locked(cache *c, const char *key, size_t nkey, uint32_t hv, rel_time_t exptime,
                          uint64_t cas_new, uint16_t it_flags, alloc_error *err)
{
    /* cache_alloc never blocks on a stripe lock (eviction trylocks), so it
     * may run under the caller's, as cache_arith's allocations do. */
    item *it = cache_alloc(c, key, nkey, 0, exptime, 2, err);
    if (!it)
        return NULL;
    memcpy(ITEM_value(it), "\r\n", 2);
    atomic_fetch_or(&it->it_flags, it_flags);
    item_link(c, it, hv, store_cas(c, cas_new));
    return it;
}

/*
 * memcached's do_store_item.  The CAS comparison is made up front for every
 * mode: set and replace with a cas_compare behave as cas (meta C); add on
 * an existing item is NOT_STORED whatever the CAS, and refreshes the old
 * item's LRU position; append/prepend require a matching CAS if one was
 * given (else EXISTS) and keep the old item's flags and exptime; cas on a
 * missing item is NOT_FOUND.  With invalidate (meta I) a cas_compare lower
 * than the item's CAS still stores, keeps the old exptime and marks the new
 * item stale.  A failed append/prepend allocation (too large or no memory)
 * is NOT_STORED, as in memcached 1.6.18.
 */
store_result cache_store(cache *c, item *it, uint32_t hv, const store_req *req, uint64_t *cas_out,
                         int *clsid_out)
{
    stripe_lock *m = stripe_of(c, hv);
    stripe_lock_take(m);
    get_status gs;
    item *old = find_live(c, ITEM_key(it), it->nkey, hv, &gs);
    store_op op = req->op;
    if (req->cas_compare != 0 && (op == STORE_SET || op == STORE_REPLACE))
        op = STORE_CAS;
    store_result res = STORE_NOT_STORED;
    item *stored = NULL;
    int clsid = it->slabs_clsid;
    if (old) {
        enum { CAS_NONE, CAS_MATCH, CAS_BADVAL, CAS_STALE } cr;
        uint64_t old_cas = LD(old->cas);
        if (req->cas_compare == 0)
            cr = CAS_NONE;
        else if (req->cas_compare == old_cas)
            cr = CAS_MATCH;
        else if (req->invalidate && req->cas_compare < old_cas)
            cr = CAS_STALE;
        else
            cr = CAS_BADVAL;
        item *new_it = NULL;
        bool do_store = false;
        switch (op) {
        case STORE_ADD:
            item_update(c, old, cache_now(c));
            break;
        case STORE_CAS:
            if (cr == CAS_MATCH) {
                do_store = true;
            } else if (cr == CAS_STALE) {
                ST(it->exptime, LD(old->exptime));
                atomic_fetch_or(&it->it_flags,
                                (uint16_t)(ITEM_STALE | (atomic_load(&old->it_flags) & ITEM_TOKEN_SENT)));
                do_store = true;
            } else {
                res = STORE_EXISTS;
            }
            break;
        case STORE_APPEND:
        case STORE_PREPEND: {
            if (cr != CAS_NONE && cr != CAS_MATCH) {
                res = STORE_EXISTS;
                break;
            }
            alloc_error ae;
            new_it = cache_alloc(c, ITEM_key(it), it->nkey, old->client_flags, LD(old->exptime),
                                 it->nbytes + old->nbytes - 2, &ae);
            if (!new_it)
                break; /* NOT_STORED */
            if (op == STORE_APPEND) {
                value_copy(new_it, 0, old, old->nbytes - 2);
                value_copy(new_it, old->nbytes - 2, it, it->nbytes);
            } else {
                value_copy(new_it, 0, it, it->nbytes - 2);
                value_copy(new_it, it->nbytes - 2, old, old->nbytes);
            }
            do_store = true;
            break;
        }
        case STORE_SET:
        case STORE_REPLACE:
            do_store = true;
            break;
        }
        if (do_store) {
            stored = new_it ? new_it : it;
            if (c->s3fifo)
                s3fifo_inherit(old, stored); /* a set is an access: old's queue, its count + 1 */
            item_unlink(c, old, hv);
            item_link(c, stored, hv, store_cas(c, req->cas_new));
            res = STORE_STORED;
            clsid = stored->slabs_clsid;
            if (cas_out)
                *cas_out = LD(stored->cas);
        } else {
            clsid = old->slabs_clsid;
        }
        cache_release(c, old);
        if (new_it)
            cache_release(c, new_it); /* the hash table keeps it, or it is freed */
    } else {
        switch (op) {
        case STORE_ADD:
        case STORE_SET:
            item_link(c, it, hv, store_cas(c, req->cas_new));
            res = STORE_STORED;
            if (cas_out)
                *cas_out = LD(it->cas);
            break;
        case STORE_CAS:
            res = STORE_NOT_FOUND;
            break;
        case STORE_REPLACE:
        case STORE_APPEND:
        case STORE_PREPEND:
            break;
        }
    }
    stripe_unlock(m);
    if (clsid_out)
        *clsid_out = clsid;
    return res;
}

/* ---- delete ---- */

delete_result cache_delete(cache *c, const char *key, size_t nkey, uint32_t hv, uint64_t cas_compare,
                           int invalidate, rel_time_t new_exptime, int *clsid_out)
{
    stripe_lock *m = stripe_of(c, hv);
    stripe_lock_take(m);
    get_status gs;
    item *it = find_live(c, key, nkey, hv, &gs);
    delete_result res = DEL_NOT_FOUND;
    if (it) {
        if (clsid_out)
            *clsid_out = it->slabs_clsid;
        if (cas_compare != 0 && LD(it->cas) != cas_compare) {
            res = DEL_EXISTS;
        } else if (invalidate) {
            /* meta md I: keep it, stale, new CAS, so the next client can win */
            if (new_exptime != 0)
                ST(it->exptime, new_exptime);
            atomic_fetch_or(&it->it_flags, ITEM_STALE);
            atomic_fetch_and(&it->it_flags, (uint16_t)~ITEM_TOKEN_SENT);
            ST(it->cas, cache_next_cas(c));
            res = DEL_DELETED;
        } else {
            item_unlink(c, it, hv);
            res = DEL_DELETED;
        }
        cache_release(c, it);
    }
    stripe_unlock(m);
    return res;
}

/* ---- arithmetic ---- */

static inline int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
}

/*
 * memcached's safe_strtoull applied to the value (which ends in "\r\n"):
 * leading white space and a sign are accepted, the number must be followed
 * by white space or a NUL, overflow fails, and a '-' fails unless
 * strtoull's wrapped result is still non-negative as int64 ("-0").
 */
static int value_to_u64(const char *p, const char *end, uint64_t *out)
{
    const char *s = p;
    while (s < end && is_space(*s))
        s++;
    int neg = 0;
    if (s < end && (*s == '+' || *s == '-')) {
        neg = *s == '-';
        s++;
    }
    const char *digits = s;
    uint64_t v = 0;
    int overflow = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            overflow = 1;
        else
            v = v * 10 + d;
        s++;
    }
    if (s == digits || overflow)
        return 0;
    if (s < end && !is_space(*s) && *s != '\0')
        return 0;
    if (neg) {
        v = (uint64_t)0 - v;
        if ((int64_t)v < 0)
            return 0;
    }
    *out = v;
    return 1;
}

/*
 * memcached's do_add_delta: the new value is written in place (padded with
 * spaces, as memcached does, e.g. decr 100 -> "99 ") when it fits in the
 * old value and nobody else holds the item; otherwise a new item replaces
 * the old one.  The CAS changes either way.  Missing + vivify (meta N)
 * creates the item with `initial`, under the same stripe lock as the lookup.
 */
arith_result cache_arith(cache *c, const char *key, size_t nkey, uint32_t hv, const arith_req *req,
                         uint64_t *value_out, item **it_out, int *clsid_out)
{
    stripe_lock *m = stripe_of(c, hv);
    stripe_lock_take(m);
    get_status gs;
    char buf[24];
    item *target = NULL;
    arith_result res = ARITH_OK;
    uint64_t value = 0;
    item *it = find_live(c, key, nkey, hv, &gs);
    if (!it) {
        if (!req->vivify) {
            res = ARITH_NOT_FOUND;
            goto out;
        }
        int len = snprintf(buf, sizeof(buf), "%" PRIu64, req->initial);
        target = cache_alloc(c, key, nkey, 0, req->viv_exptime, (uint32_t)len + 2, NULL);
        if (!target) {
            res = ARITH_VIVIFY_NO_MEMORY;
            goto out;
        }
        memcpy(ITEM_value(target), buf, (size_t)len);
        memcpy(ITEM_value(target) + len, "\r\n", 2);
        item_link(c, target, hv, cache_next_cas(c));
        value = req->initial;
        res = ARITH_VIVIFIED;
        goto done;
    }
    if (clsid_out)
        *clsid_out = it->slabs_clsid;
    if (it->nbytes <= 2 || item_is_chained(it)) { /* memcached: a chained value is too long for a number */
        res = ARITH_NON_NUMERIC;
        goto release;
    }
    if (req->cas_compare != 0 && LD(it->cas) != req->cas_compare) {
        res = ARITH_EXISTS;
        goto release;
    }
    if (!value_to_u64(ITEM_value(it), ITEM_value(it) + it->nbytes, &value)) {
        res = ARITH_NON_NUMERIC;
        goto release;
    }
    if (req->incr)
        value += req->delta;
    else
        value = req->delta > value ? 0 : value - req->delta;
    int len = snprintf(buf, sizeof(buf), "%" PRIu64, value);
    if ((uint32_t)len + 2 <= it->nbytes && atomic_load(&it->refcount) == 2) {
        ST(it->cas, cache_next_cas(c));
        memcpy(ITEM_value(it), buf, (size_t)len);
        memset(ITEM_value(it) + len, ' ', it->nbytes - 2 - (uint32_t)len);
        item_update(c, it, cache_now(c));
        target = it;
        it = NULL;
    } else {
        target = cache_alloc(c, key, nkey, it->client_flags, LD(it->exptime), (uint32_t)len + 2, NULL);
        if (!target) {
            res = ARITH_NO_MEMORY;
            goto release;
        }
        memcpy(ITEM_value(target), buf, (size_t)len);
        memcpy(ITEM_value(target) + len, "\r\n", 2);
        item_unlink(c, it, hv);
        item_link(c, target, hv, cache_next_cas(c));
    }
done:
    if (clsid_out)
        *clsid_out = target->slabs_clsid;
    if (value_out)
        *value_out = value;
    if (it_out) {
        *it_out = target;
        target = NULL;
    }
release:
    if (it)
        cache_release(c, it);
    if (target)
        cache_release(c, target);
out:
    stripe_unlock(m);
    return res;
}
