/*
 * slab_mover.c -- slab page rebalancing: the page mover thread, the
 * automover that decides what to move, and "slabs reassign".
 *
 * Why: a slab page belongs to one chunk size.  Without moves, a page stays
 * with the class that first took it, so when the sizes a workload stores
 * shift, the new sizes starve while old ones hold the memory (memcached's
 * "slab calcification").  memcached 1.6 moves pages, with its automover on
 * by default; this file does the same job with the same commands, stats
 * and policy, on this engine's locks:
 *
 *   - A move empties one page of the source class -- the oldest, pages[0],
 *     most likely to hold old items -- then gives it to the destination
 *     class or to the global page pool (SLAB_POOL, 0).  Emptying walks the
 *     page's chunks in batches of MOVE_BATCH under the source class lock,
 *     released between batches, so workers allocating in that class wait
 *     at most one batch.  A free chunk is already out of the free list
 *     (slabs_evac_begin_locked); a linked item that only the hash table
 *     holds is "rescued": copied, under its stripe lock (trylocked, as
 *     eviction does), into a free chunk of the same class elsewhere and
 *     swapped in for the original in the hash chain and LRU, keeping its
 *     key, value, flags, exptime and CAS.  With no free chunk it is
 *     evicted (evictions_nomem); dead ones are just freed (inline_reclaim).
 *     A chained item's head is rescued the same way, taking its chain
 *     along; a body chunk of a chain (ITEM_CHUNK) is copied into a free
 *     chunk and put in its place in the chain under the head's stripe
 *     when the head is linked and unread (memcached's chunk rescue,
 *     chunk_rescues), else waited for like a busy item; with no free chunk
 *     its whole item is evicted.
 *     An item a reader holds (a response in flight) is never touched: the
 *     mover comes back to it, backing off up to a millisecond, and only
 *     after MAX_BUSY_PASSES passes unlinks it (busy_deletes), so that the
 *     reader's release frees it.  Chunks freed in the page meanwhile are
 *     only marked (slabs_free_locked), never reused.
 *   - A page put in the pool while memory is above the limit goes back to
 *     the OS (slabs.c); a class needing a page takes one from the pool
 *     first.  When cache_set_memlimit lowers the limit, the mover keeps
 *     moving pages to the pool -- from the class with the most free chunks,
 *     else the one with the most pages -- until mem_malloced is within it.
 *   - The automover (automove 1) is memcached 1.6's age-balancing policy
 *     (its slab_automove.c, rewritten here), made quicker: once a second it
 *     samples every class's evictions, out-of-memory failures, pages, free
 *     chunks and the age of its LRU tail into a window of
 *     slab_automove_window samples; a class with more than 2.5 pages of
 *     free chunks and a quiet window gives a page to the pool; otherwise a
 *     class that keeps evicting (in more than half of the last AM_RECENT
 *     samples, or more than a quarter of all evictions over the window) and
 *     whose tail is younger than slab_automove_ratio times the oldest
 *     class's gets a page from that oldest class (which must have more than
 *     two) -- up to AM_BURST pages a second while its tail is less than
 *     half as old as that.  memcached waits for the whole window and moves
 *     one page a second; on loadtest's calcification scenario (-m 64, value
 *     sizes shifting from 300 B-1 KiB to 2-8 KiB) that left stackmapd at a
 *     0.58 hit ratio after the shift against memcached's 0.66, and these two
 *     changes bring it to 0.70.  automove 2 asks for a page from any class
 *     on every eviction, as memcached does.  Each automover decision is
 *     logged to "watch sysevents" watchers (cache_set_slab_move_log) as
 *     memcached's "type=slab_move src=N dst=N" line; "slabs reassign",
 *     automove 2 and a lowered limit's moves are not, as in memcached.
 *
 * The hot path is untouched but for two compares: slabs_free_locked checks
 * whether the chunk is in the page being emptied, and cache_alloc hands an
 * evicted chunk of that page back.  No per-request allocation, no global
 * lock: the mover's own lock is taken by "slabs" commands and the mover.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache_int.h"

/* Chunks looked at per hold of the source class lock. */
#define MOVE_BATCH 64
/* Passes over a page with busy items before they are unlinked (memcached's SLAB_MOVE_MAX_LOOPS). */
#define MAX_BUSY_PASSES 1000
/* Longest back-off between passes while items are busy, in microseconds. */
#define BUSY_BACKOFF_MAX_US 1000
/* The automover's thresholds (memcached's slab_automove.c). */
#define MIN_PAGES_FOR_SOURCE 2
#define MIN_PAGES_FOR_RECLAIM 2.5
/* Our changes to memcached's policy (measured on loadtest's calcification
 * scenario; see the header): a class counts as evicting when it evicted in
 * more than half of the last AM_RECENT samples (memcached: of the whole
 * window), decisions start once AM_RECENT samples exist (memcached: once
 * the window filled), and when the youngest evicting class's tail is less
 * than half as old as the ratio asks, up to AM_BURST pages move per second
 * (memcached: one). */
#define AM_RECENT 10
#define AM_BURST 4
/* Defaults of the options, as memcached's. */
#define DEFAULT_WINDOW 30
#define DEFAULT_RATIO 0.8

static double bits_to_double(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof(d));
    return d;
}

static uint64_t double_to_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof(b));
    return b;
}

/* ---- settings ---- */

int cache_slab_reassign_enabled(const cache *c)
{
    return c->cfg.slab_reassign != 0;
}

void cache_set_automove(cache *c, int level)
{
    atomic_store(&c->automove, level);
    mover_wake(c);
}

int cache_automove(const cache *c)
{
    return atomic_load(&c->automove);
}

void cache_set_automove_ratio(cache *c, double ratio)
{
    atomic_store(&c->automove_ratio_bits, double_to_bits(ratio));
}

double cache_automove_ratio(const cache *c)
{
    return bits_to_double(atomic_load(&c->automove_ratio_bits));
}

/* ---- requests ---- */

static uint32_t class_pages(cache *c, int k)
{
    if (k == SLAB_POOL)
        return atomic_load_explicit(&c->pool_count, memory_order_relaxed);
    struct slabclass *cls = &c->classes[k];
    pthread_mutex_lock(&cls->lock);
    uint32_t n = cls->npages;
    pthread_mutex_unlock(&cls->lock);
    return n;
}

/* memcached's slabs_reassign_pick_any: the next class round-robin with a spare page. */
static int pick_any(cache *c, int dst)
{
    for (int tries = c->nclasses; tries > 0; tries--) {
        c->reb_pick = c->reb_pick >= c->nclasses ? 1 : c->reb_pick + 1;
        if (c->reb_pick != dst && class_pages(c, c->reb_pick) > 1)
            return c->reb_pick;
    }
    return -1;
}

/* mover_lock held: memcached's do_slabs_reassign. */
static reassign_result reassign_locked(cache *c, int src, int dst)
{
    if (c->reb_signal != 0)
        return REASSIGN_RUNNING;
    if (src == dst)
        return REASSIGN_SRC_DST_SAME;
    if (src == -1)
        src = pick_any(c, dst);
    if (src < SLAB_POOL || src > c->nclasses || dst < SLAB_POOL || dst > c->nclasses)
        return REASSIGN_BADCLASS;
    if (class_pages(c, src) < 2)
        return REASSIGN_NOSPARE;
    c->reb_src = src;
    c->reb_dst = dst;
    c->reb_signal = 1;
    pthread_cond_signal(&c->mover_cond);
    return REASSIGN_OK;
}

reassign_result cache_slabs_reassign(cache *c, int src, int dst)
{
    pthread_mutex_lock(&c->mover_lock);
    reassign_result r = reassign_locked(c, src, dst);
    pthread_mutex_unlock(&c->mover_lock);
    return r;
}

void mover_note_eviction(cache *c, int clsid)
{
    if (atomic_load_explicit(&c->automove, memory_order_relaxed) != 2 || !c->cfg.slab_reassign)
        return;
    if (pthread_mutex_trylock(&c->mover_lock) != 0)
        return; /* a "slabs" command or the mover has it: skip, the next eviction asks again */
    (void)reassign_locked(c, -1, clsid);
    pthread_mutex_unlock(&c->mover_lock);
}

void mover_wake(cache *c)
{
    pthread_mutex_lock(&c->mover_lock);
    pthread_cond_signal(&c->mover_cond);
    pthread_mutex_unlock(&c->mover_lock);
}

/* ---- emptying a page ---- */

enum { CHUNK_DONE = 0, CHUNK_BUSY = 1 };

static inline void bump(_Atomic uint64_t *ctr)
{
    atomic_fetch_add_explicit(ctr, 1, memory_order_relaxed);
}

/* Every header field up to refcount is plain data; the rest are copied one
 * by one (cache_walk reads it_flags and nkey of any chunk without a lock). */
_Static_assert(offsetof(item, slabs_clsid) == offsetof(item, it_flags) + sizeof(uint16_t) &&
                   offsetof(item, data) == offsetof(item, nkey) + 1,
               "copy_item copies the fields after refcount one by one: add new ones there");

/* Class lock and the item's stripe held: copy it into a free chunk.  A
 * chained head keeps its body chunks, which are told of their new head. */
static void copy_item(const struct slabclass *cls, item *n, const item *it, uint16_t flags)
{
    memcpy(n, it, offsetof(item, refcount));
    n->h_next = n->prev = n->next = NULL;
    atomic_store_explicit(&n->refcount, 1, memory_order_relaxed);
    n->slabs_clsid = it->slabs_clsid;
    ST(n->nkey, it->nkey);
    if (flags & ITEM_CHAINED) {
        memcpy(n->data, it->data, cls->size - sizeof(item)); /* key, item_chain, the head's part */
        for (item *k = ITEM_chain(n)->first; k; k = k->next)
            k->h_next = n;
    } else {
        memcpy(n->data, it->data, (size_t)it->nkey + 1 + it->nbytes);
    }
    atomic_store(&n->it_flags, flags);
}

/*
 * Class lock and the head's stripe held, the head linked and unread: copy
 * body chunk k of its chain into free chunk n and put n in k's place
 * (memcached's chunk rescue).
 */
static void rescue_body_chunk(struct slabclass *cls, item *head, item *k, item *n)
{
    memcpy(n, k, offsetof(item, refcount)); /* h_next (the head), links, nbytes */
    atomic_store_explicit(&n->refcount, 1, memory_order_relaxed);
    n->slabs_clsid = k->slabs_clsid;
    ST(n->nkey, 0);
    memcpy(n->data, k->data, k->nbytes);
    atomic_store(&n->it_flags, ITEM_CHUNK);
    if (n->prev)
        n->prev->next = n;
    else
        ITEM_chain(head)->first = n;
    if (n->next)
        n->next->prev = n;
    atomic_store(&k->refcount, 0);
    slabs_free_locked(cls, k); /* marked free, not listed */
}

/*
 * Source class lock held: empty one chunk of the page, or say it is busy.
 * A body chunk of a chained item (ITEM_CHUNK) is settled through its head,
 * which is of the same class and so cannot be freed under us: the head's
 * link, stripe and readers decide, exactly as for an item, and a rescue
 * copies just the chunk (a response may be sending from it, hence the
 * head's readers count).
 */
static int move_chunk(cache *c, struct slabclass *cls, item *it, uint32_t passes, rel_time_t now)
{
    uint16_t fl = atomic_load(&it->it_flags);
    if (fl & ITEM_SLABBED)
        return CHUNK_DONE; /* free: unlisted by slabs_evac_begin_locked, or freed since */
    item *head = (fl & ITEM_CHUNK) ? it->h_next : it;
    if (!(atomic_load(&head->it_flags) & ITEM_LINKED)) {
        /* Being filled by a store, or unlinked with a reader still holding
         * it: its link brings it back here, its release marks it free. */
        bump(&c->mst.busy_items);
        return CHUNK_BUSY;
    }
    /* Linked: its key cannot change while we hold the class lock (an
     * unlink or a free needs it). */
    uint32_t hv = cache_hash(ITEM_key(head), head->nkey);
    stripe_lock *m = stripe_of(c, hv);
    if (!stripe_trylock(m)) {
        bump(&c->mst.busy_items);
        return CHUNK_BUSY;
    }
    int ret = CHUNK_DONE;
    if (!(atomic_load(&head->it_flags) & ITEM_LINKED)) {
        ret = CHUNK_BUSY;
    } else if (atomic_load(&head->refcount) != 1) {
        /* A reader holds it (a response in flight): never move it under them. */
        bump(&c->mst.busy_items);
        if (passes > MAX_BUSY_PASSES) {
            item_unlink_classlocked(c, cls, head, hv); /* the last release frees it */
            bump(&c->mst.busy_deletes);
        }
        ret = CHUNK_BUSY;
    } else if (item_is_dead(c, head, now, NULL)) {
        uint16_t f = atomic_load(&head->it_flags);
        cls->st.reclaimed++;
        if (!(f & ITEM_FETCHED))
            cls->st.expired_unfetched++;
        item_unlink_classlocked(c, cls, head, hv); /* refcount 0: marked free (in the page), chain too */
        bump(&c->mst.inline_reclaim);
    } else {
        item *n = slabs_alloc_nonew_locked(cls);
        if (!n) {
            item_unlink_classlocked(c, cls, head, hv);
            bump(&c->mst.evictions_nomem);
        } else if (head != it) {
            rescue_body_chunk(cls, head, it, n);
            bump(&c->mst.chunk_rescues);
        } else {
            /* Nobody else can reach it: we hold its stripe, and its only
             * reference is the hash table's. */
            copy_item(cls, n, it, fl);
            hash_delete(c, it, hv);
            hash_insert(c, n, hv);
            lru_unlink_locked(cls, it);
            lru_link_locked(cls, n, ITEM_lru(fl)); /* where it was, at its segment's head */
            atomic_store(&it->refcount, 0);
            atomic_fetch_and(&it->it_flags, (uint16_t)~ITEM_CHAINED); /* its chain is n's now */
            slabs_free_locked(cls, it); /* marked free, not listed */
            bump(&c->mst.rescues);
        }
    }
    stripe_unlock(m);
    return ret;
}

/* Give an emptied (or pooled) page to dst, or to the pool. */
static void page_hand_over(cache *c, char *page, int dst)
{
    if (dst != SLAB_POOL) {
        struct slabclass *d = &c->classes[dst];
        pthread_mutex_lock(&d->lock);
        int rc = slabs_add_page_locked(d, page);
        pthread_mutex_unlock(&d->lock);
        if (rc == 0)
            return;
    }
    slabs_pool_put(c, page);
}

/* Move a page from the pool to dst. */
static void move_from_pool(cache *c, int dst)
{
    char *page = NULL;
    pthread_mutex_lock(&c->pool_lock);
    if (c->pool_n > 0) {
        page = c->pool[--c->pool_n];
        atomic_store_explicit(&c->pool_count, c->pool_n, memory_order_relaxed);
    }
    pthread_mutex_unlock(&c->pool_lock);
    if (!page)
        return;
    page_hand_over(c, page, dst);
    bump(&c->mst.slabs_moved);
}

/* One whole move: memcached's slab_rebalance_start, _move and _finish. */
static void move_page(cache *c, int src, int dst)
{
    if (src == SLAB_POOL) {
        move_from_pool(c, dst);
        return;
    }
    struct slabclass *cls = &c->classes[src];
    pthread_mutex_lock(&cls->lock);
    if (cls->npages < 2) { /* it lost its spare meanwhile */
        pthread_mutex_unlock(&cls->lock);
        return;
    }
    char *page = cls->pages[0];
    uint32_t carved = slabs_evac_begin_locked(c, cls, page);
    pthread_mutex_unlock(&cls->lock);

    uint8_t *done = calloc(carved ? carved : 1, 1);
    if (!done) {
        pthread_mutex_lock(&cls->lock);
        cls->evac_page = NULL; /* give up: its free chunks are lost until the next move of it */
        pthread_mutex_unlock(&cls->lock);
        return;
    }
    uint32_t left = carved, passes = 0;
    useconds_t backoff = 1;
    while (left > 0 && !atomic_load(&c->mover_stop)) {
        rel_time_t now = cache_now(c);
        uint32_t busy = 0;
        for (uint32_t i = 0; i < carved; i += MOVE_BATCH) {
            uint32_t end = i + MOVE_BATCH < carved ? i + MOVE_BATCH : carved;
            pthread_mutex_lock(&cls->lock);
            for (uint32_t j = i; j < end; j++) {
                if (done[j])
                    continue;
                if (move_chunk(c, cls, (item *)(page + (size_t)j * cls->size), passes, now) == CHUNK_DONE) {
                    done[j] = 1;
                    left--;
                } else {
                    busy++;
                }
            }
            pthread_mutex_unlock(&cls->lock);
        }
        if (left > 0 && busy > 0) {
            passes++;
            usleep(backoff);
            backoff = backoff * 2 > BUSY_BACKOFF_MAX_US ? BUSY_BACKOFF_MAX_US : backoff * 2;
        }
    }
    free(done);
    if (left > 0)
        return; /* stopping: the cache is going away, the page with it */
    pthread_mutex_lock(&cls->lock);
    slabs_evac_end_locked(cls, page);
    pthread_mutex_unlock(&cls->lock);
    page_hand_over(c, page, dst);
    bump(&c->mst.slabs_moved);
    if (c->cfg.verbose > 1)
        fprintf(stderr, "slab page moved from class %d to %d\n", src, dst);
}

/* ---- the automover (memcached's slab_automove.c policy) ---- */

/* One class at one sampling. */
struct am_sample {
    uint64_t evicted;      /* items evicted so far */
    uint64_t outofmemory;  /* allocations failed so far */
    uint32_t pages;        /* pages owned */
    uint32_t perslab;      /* chunks per page */
    uint64_t free_chunks;  /* free and never-used chunks */
    uint64_t age;          /* seconds since the LRU tail item's last access */
};

/* One class in one second of the window. */
struct am_window {
    uint64_t age;          /* tail age sampled */
    int dirty;             /* evictions, out-of-memory or page growth seen */
    double evicted_ratio;  /* its share of all evictions this sample */
    int evicted_seen;      /* it evicted this sample */
};

struct automover {
    uint32_t window;                              /* samples per class kept */
    uint64_t runs;                                /* samples taken */
    double ratio;                                 /* slab_automove_ratio in use */
    struct am_window *w;                          /* window per class, class-major */
    struct am_sample before[SM_MAX_SLAB_CLASSES]; /* the previous sample */
    struct am_sample after[SM_MAX_SLAB_CLASSES];  /* this sample */
};

static void am_sample_all(cache *c, struct am_sample *s)
{
    rel_time_t now = cache_now(c);
    for (int k = 1; k <= c->nclasses; k++) {
        struct slabclass *cls = &c->classes[k];
        pthread_mutex_lock(&cls->lock);
        s[k].evicted = cls->st.evicted;
        s[k].outofmemory = cls->st.outofmemory;
        s[k].pages = cls->npages;
        s[k].perslab = cls->perslab;
        s[k].free_chunks = cls->free_count + cls->end_page_free;
        /* COLD's tail, as memcached's automover reads it (the flat LRU is COLD too) */
        item *tail = cls->tails[LRU_COLD];
        s[k].age = tail && now > LD(tail->time) ? now - LD(tail->time) : 0;
        pthread_mutex_unlock(&cls->lock);
    }
}

static int am_init(struct automover *a, cache *c)
{
    memset(a, 0, sizeof(*a));
    a->window = c->cfg.slab_automove_window > 2 ? (uint32_t)c->cfg.slab_automove_window : DEFAULT_WINDOW;
    a->ratio = cache_automove_ratio(c);
    a->w = calloc((size_t)a->window * SM_MAX_SLAB_CLASSES, sizeof(struct am_window));
    if (!a->w)
        return -1;
    am_sample_all(c, a->before);
    return 0;
}

/* Growth of a counter between samples ("stats reset" may have zeroed it). */
static uint64_t since(uint64_t now, uint64_t before)
{
    return now >= before ? now - before : now;
}

/* One sample; *src and *dst get a move to make, or -1; *strong says the
 * imbalance is large enough for a burst of moves. */
static void am_run(struct automover *a, cache *c, int *src, int *dst, int *strong)
{
    *src = *dst = -1;
    *strong = 0;
    uint32_t recent = a->window < AM_RECENT ? a->window : AM_RECENT;
    am_sample_all(c, a->after);
    uint64_t evicted_total = 0;
    for (int k = 1; k <= c->nclasses; k++)
        evicted_total += since(a->after[k].evicted, a->before[k].evicted);
    a->runs++;
    int oldest = -1, youngest = -1;
    uint64_t oldest_age = 0, youngest_age = UINT64_MAX;
    int youngest_evicting = 0;
    for (int k = 1; k <= c->nclasses; k++) {
        struct am_window *cw = &a->w[(size_t)k * a->window];
        struct am_window *wd = &cw[a->runs % a->window];
        const struct am_sample *b = &a->before[k], *n = &a->after[k];
        memset(wd, 0, sizeof(*wd));
        uint64_t ev = since(n->evicted, b->evicted);
        if (ev > 0) {
            wd->evicted_ratio = (double)ev / (double)evicted_total;
            wd->evicted_seen = 1;
            wd->dirty = 1;
        }
        if (since(n->outofmemory, b->outofmemory) > 0 || n->pages > b->pages)
            wd->dirty = 1;
        wd->age = n->age;
        uint64_t age_sum = 0;
        int dirty = 0, seen_recent = 0;
        double ratio_sum = 0;
        for (uint32_t x = 0; x < a->window; x++) {
            age_sum += cw[x].age;
            dirty += cw[x].dirty;
            ratio_sum += cw[x].evicted_ratio;
        }
        for (uint32_t x = 0; x < recent; x++) /* the last `recent` samples */
            seen_recent += cw[(a->runs + a->window - x) % a->window].evicted_seen;
        /* The average over the samples taken so far (the window may not have filled). */
        uint64_t filled = a->runs < a->window ? a->runs : a->window;
        uint64_t age = age_sum / filled;
        if (n->free_chunks > n->perslab * MIN_PAGES_FOR_RECLAIM && dirty == 0 && n->pages > 1) {
            *src = k; /* plenty free and quiet: give a page back to the pool */
            *dst = SLAB_POOL;
            oldest = youngest = -1;
            break;
        }
        if (age > oldest_age && n->pages > MIN_PAGES_FOR_SOURCE) {
            oldest = k;
            oldest_age = age;
        }
        if (age < youngest_age && ((uint32_t)seen_recent > recent / 2 || ratio_sum / a->window > 0.25)) {
            youngest = k;
            youngest_age = age;
            youngest_evicting = wd->evicted_seen;
        }
    }
    memcpy(a->before, a->after, sizeof(a->before));
    if (youngest != -1 && oldest != -1 && a->runs > recent && youngest_evicting &&
        (double)youngest_age < (double)oldest_age * a->ratio) {
        *src = oldest;
        *dst = youngest;
        *strong = (double)youngest_age * 2 < (double)oldest_age * a->ratio;
    }
}

/* ---- the thread ---- */

/* Memory above a lowered limit: the class to take a page from, or -1.  (A
 * class's first page may exceed the limit, as in memcached: that alone
 * starts no shrinking; only cache_set_memlimit does.) */
static int shrink_source(cache *c)
{
    if (!atomic_load(&c->shrinking))
        return -1;
    uint64_t limit = atomic_load(&c->maxbytes);
    if (limit == 0 || atomic_load(&c->mem_malloced) <= limit) {
        atomic_store(&c->shrinking, false);
        return -1;
    }
    int best_free = -1, best_pages = -1;
    uint64_t most_free = 0;
    uint32_t most_pages = 1;
    for (int k = 1; k <= c->nclasses; k++) {
        struct slabclass *cls = &c->classes[k];
        pthread_mutex_lock(&cls->lock);
        uint64_t fr = cls->free_count + cls->end_page_free;
        uint32_t np = cls->npages, per = cls->perslab;
        pthread_mutex_unlock(&cls->lock);
        if (np < 2)
            continue;
        if (fr >= per && fr > most_free) {
            most_free = fr;
            best_free = k;
        }
        if (np > most_pages) {
            most_pages = np;
            best_pages = k;
        }
    }
    if (best_free == -1 && best_pages == -1)
        atomic_store(&c->shrinking, false); /* every class is down to one page */
    return best_free != -1 ? best_free : best_pages;
}

/* The sysevents line of an automover decision, if somebody watches them. */
static void log_move(cache *c, int src, int dst)
{
    if (c->move_log_flags && (atomic_load_explicit(c->move_log_flags, memory_order_relaxed) & c->move_log_bit))
        c->move_log(c->move_log_arg, src, dst);
}

static void *mover_main(void *arg)
{
    cache *c = arg;
    struct automover am;
    bool am_ok = am_init(&am, c) == 0;
    rel_time_t last_check = 0;
    int burst_src = -1, burst_dst = -1, bursts = 0; /* the strong decision being repeated */
    pthread_mutex_lock(&c->mover_lock);
    while (!atomic_load(&c->mover_stop)) {
        if (c->reb_signal == 1) {
            int src = c->reb_src, dst = c->reb_dst;
            c->reb_signal = 2;
            pthread_mutex_unlock(&c->mover_lock);
            atomic_store(&c->reb_running, true);
            move_page(c, src, dst);
            atomic_store(&c->reb_running, false);
            pthread_mutex_lock(&c->mover_lock);
            c->reb_signal = 0;
            continue;
        }
        rel_time_t now = cache_now(c);
        int src = shrink_source(c), dst = SLAB_POOL;
        bool shrinking = src != -1; /* a lowered memory limit's move, not the automover's */
        if (src == -1 && am_ok && atomic_load(&c->automove) == 1 && now != last_check) {
            if (am.ratio != cache_automove_ratio(c)) { /* memcached starts over on a new ratio */
                free(am.w);
                am_ok = am_init(&am, c) == 0;
            }
            int strong = 0;
            if (am_ok)
                am_run(&am, c, &src, &dst, &strong);
            if (dst != SLAB_POOL || src == -1)
                last_check = now; /* a reclaim to the pool looks again at once */
            burst_src = strong ? src : -1;
            burst_dst = dst;
            bursts = 0;
        } else if (src == -1 && burst_src != -1 && ++bursts < AM_BURST && atomic_load(&c->automove) == 1 &&
                   class_pages(c, burst_src) > MIN_PAGES_FOR_SOURCE) {
            src = burst_src; /* the same move again, within this second */
            dst = burst_dst;
        } else {
            burst_src = -1;
        }
        if (src != -1) {
            bool ok = reassign_locked(c, src, dst) == REASSIGN_OK;
            if (!shrinking) /* the automover's choice, logged whatever reassign answered, as memcached */
                log_move(c, src, dst);
            if (ok)
                continue;
        }
        /* Sleep until the next second starts, or until asked. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        ts.tv_nsec = 0;
        pthread_cond_timedwait(&c->mover_cond, &c->mover_lock, &ts);
    }
    pthread_mutex_unlock(&c->mover_lock);
    if (am_ok)
        free(am.w);
    return NULL;
}

int mover_start(cache *c)
{
    if (c->mover_started || !c->cfg.slab_reassign)
        return 0;
    atomic_store(&c->mover_stop, false);
    int rc = pthread_create(&c->mover_thread, NULL, mover_main, c);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    c->mover_started = true;
    return 0;
}

void mover_stop(cache *c)
{
    if (!c->mover_started)
        return;
    pthread_mutex_lock(&c->mover_lock);
    atomic_store(&c->mover_stop, true);
    pthread_cond_signal(&c->mover_cond);
    pthread_mutex_unlock(&c->mover_lock);
    pthread_join(c->mover_thread, NULL);
    c->mover_started = false;
}
