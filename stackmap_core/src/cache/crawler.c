/*
 * crawler.c -- the LRU crawler: the one walker over every item of the
 * cache, and the background thread that uses it to free expired and
 * flushed items before anybody looks them up.
 *
 * Why it exists: an expired item is otherwise found only when a request
 * looks it up, or when it reaches its LRU's tail (the maintainer's tail
 * reclaimer, lru.c).  One in the middle of a long LRU holds its memory for
 * as long as the LRU is long.  memcached's crawler walks the LRUs for it;
 * ours walks the slab pages, which also serves every other "show me all
 * items" need: lru_crawler metadump (proto/crawler_cmd.c), the admin API's
 * key listing, delete by prefix and snapshots (cache_admin.c, admin.c).
 *
 * The walker (walk_items).  It goes over a class's own pages (its pages[]
 * list, so a walk costs that class's pages, not all of the cache's) chunk
 * by chunk, in batches of WALK_BATCH chunks under that class's lock, never
 * along the LRU lists, so it does not depend on how the LRU is organised (segments,
 * policies) and meets every item exactly once whatever the LRU does
 * meanwhile.  Under the class lock a chunk whose ITEM_LINKED is set is an
 * item that cannot be unlinked nor freed (both need the class lock), so
 * its key is stable and can be hashed.  The walker then takes that key's
 * stripe: with a trylock (the lock order is stripe, then class); when the
 * stripe is busy it lets the class lock go, waits for the stripe, takes the
 * class lock again and checks that the page is still this class's and the
 * chunk still a linked item of that stripe.  The callback runs with both
 * locks held, so it may read the value or unlink the item.  A cursor is
 * (class, page join number, chunk); an item stored, moved or whose page
 * changed class during a walk may or may not be shown.
 *
 * The thread.  Two kinds of passes, one class at a time, each looking at up
 * to lru_crawler_tocrawl items (0: the whole class; a limited pass resumes
 * where the last one stopped), pausing lru_crawler_sleep microseconds every
 * CRAWL_PER_SLEEP items as memcached does:
 *  - asked for (lru_crawler crawl <classes>): the classes given, once;
 *  - background: once a second the thread looks at each class with items
 *    and crawls the ones that are due.  A pass records, for the live items
 *    with an exptime, a histogram of their remaining lifetimes in powers of
 *    two; the class is due again when 1% of them (+1, memcached's low
 *    watermark) will have expired, or after `gap` seconds, whichever is
 *    sooner.  `gap` is 1 second after a pass that freed at least that many
 *    and doubles (up to CRAWL_GAP_MAX) after one that did not, so a class
 *    whose items never expire is looked at once a minute, and new items
 *    with short lifetimes are found within about a gap of their expiry.
 *    A flush_all makes every class due at once.
 * Nothing on the request path changes: workers never wait for the thread
 * beyond one batch of one class's lock.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cache_int.h"

/* Chunks looked at per hold of a class lock. */
#define WALK_BATCH 64
/* Items between the crawler's pauses (memcached's crawls_persleep). */
#define CRAWL_PER_SLEEP 1000
/* Longest gap between background passes of a class, in seconds. */
#define CRAWL_GAP_MAX 60
/* Buckets of the remaining-lifetime histogram: [2^b, 2^(b+1)) seconds. */
#define TTL_BUCKETS 32

/* Cursor layout: class id (8 bits) | page join number (32 bits) | chunk (24 bits). */
#define CUR_CLASS(cur) ((int)((cur) >> 56))
#define CUR_PAGE(cur) ((uint32_t)((cur) >> 24))
#define CUR_CHUNK(cur) ((uint32_t)((cur) & 0xFFFFFFu))
#define CUR_MAKE(k, p, ch) (((uint64_t)(k) << 56) | ((uint64_t)(p) << 24) | (uint64_t)(ch))

#ifdef SM_TEST_HOOKS
/* Pages the walker has finished or skipped (build/test_cache only: the
 * check that a class's walk costs that class's pages, not all of them). */
_Atomic uint64_t sm_test_walk_page_steps;
#define PAGE_STEP() atomic_fetch_add_explicit(&sm_test_walk_page_steps, 1, memory_order_relaxed)
#else
#define PAGE_STEP() ((void)0)
#endif

size_t cache_item_total(const item *it)
{
    return ITEM_ntotal(it->nkey, it->nbytes);
}

/* ---- the walker ---- */

/*
 * Class lock held: the index in cls->pages of the first page whose join
 * number is `seq` or more, npages when none.  A class's pages are its own
 * list (slabs.c keeps it as pages join and leave the class: a new page, a
 * page the slab mover hands over or takes away), so a walk looks at that
 * class's pages only; join numbers ascend along the list and are never
 * reused within the class, so a (join number, chunk) cursor stays valid
 * however the list changed.  `hint` is where to look first.
 */
static uint32_t page_index(const struct slabclass *cls, uint32_t seq, uint32_t hint)
{
    if (hint < cls->npages && cls->page_seq[hint] == seq)
        return hint;
    uint32_t lo = 0, hi = cls->npages;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cls->page_seq[mid] < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/*
 * Class lock held: the chunk count of cls->pages[i].  Only the page a class
 * is carving (or a page the mover took while it was being carved) has
 * fewer chunks: the rest of it has never been written by this class and
 * may hold another's bytes.
 */
static int64_t page_chunks(const struct slabclass *cls, uint32_t i)
{
    char *base = cls->pages[i];
    if (cls->evac_page == base) /* being emptied: its linked items are still shown */
        return cls->evac_chunks;
    if (cls->carve_page == base)
        return (cls->end_page_ptr - base) / cls->size;
    return cls->perslab;
}

/*
 * Class lock held, chunk linked: take its stripe.  Returns the stripe held,
 * or NULL when the chunk changed while the class lock was let go (the
 * caller looks at the same chunk again).  *hv gets the key's hash.
 */
static stripe_lock *lock_item(cache *c, struct slabclass *cls, uint32_t seq, uint32_t idx, char *base, item *it,
                              uint32_t *hv)
{
    *hv = cache_hash(ITEM_key(it), it->nkey);
    stripe_lock *m = stripe_of(c, *hv);
    if (stripe_trylock(m))
        return m;
    pthread_mutex_unlock(&cls->lock);
    stripe_lock_take(m);
    pthread_mutex_lock(&cls->lock);
    uint32_t i = page_index(cls, seq, idx);
    if (i >= cls->npages || cls->page_seq[i] != seq || cls->pages[i] != base ||
        !(atomic_load_explicit(&it->it_flags, memory_order_acquire) & ITEM_LINKED)) {
        stripe_unlock(m);
        return NULL;
    }
    /* Still linked, but maybe freed and reused under another key meanwhile. */
    uint32_t hv2 = cache_hash(ITEM_key(it), it->nkey);
    if (stripe_of(c, hv2) != m) {
        stripe_unlock(m);
        return NULL;
    }
    *hv = hv2;
    return m;
}

bool walk_items(cache *c, const uint8_t *classes, const char *prefix, size_t nprefix, uint64_t *cursor,
                uint32_t budget, cache_walk_fn fn, void *ctx, int flags, uint64_t *unlinked)
{
    uint64_t cur = *cursor;
    int k = CUR_CLASS(cur);
    uint32_t seq = CUR_PAGE(cur), chunk = CUR_CHUNK(cur);
    if (k == 0) {
        k = 1;
        seq = chunk = 0;
    }
    uint32_t looked = 0;
    for (; k <= c->nclasses; k++, seq = 0, chunk = 0) {
        if (classes && !classes[k])
            continue;
        struct slabclass *cls = &c->classes[k];
        pthread_mutex_lock(&cls->lock);
        uint32_t batch = 0, idx = 0;
        for (;;) {
            if (looked >= budget) {
                pthread_mutex_unlock(&cls->lock);
                *cursor = CUR_MAKE(k, seq, chunk);
                return false;
            }
            if (++batch > WALK_BATCH) { /* let the workers in */
                pthread_mutex_unlock(&cls->lock);
                batch = 1;
                pthread_mutex_lock(&cls->lock);
            }
            idx = page_index(cls, seq, idx);
            if (idx >= cls->npages)
                break; /* past the class's last page */
            if (cls->page_seq[idx] != seq) { /* that page left the class: the next one */
                seq = cls->page_seq[idx];
                chunk = 0;
            }
            if (chunk >= page_chunks(cls, idx)) { /* done with it */
                PAGE_STEP();
                seq++;
                idx++;
                chunk = 0;
                continue;
            }
            looked++;
            char *base = cls->pages[idx];
            item *it = (item *)(base + (size_t)chunk * cls->size);
            if (!(atomic_load_explicit(&it->it_flags, memory_order_acquire) & ITEM_LINKED) ||
                it->nkey < nprefix || (nprefix && memcmp(ITEM_key(it), prefix, nprefix) != 0)) {
                chunk++;
                continue;
            }
            uint32_t hv;
            stripe_lock *m = lock_item(c, cls, seq, idx, base, it, &hv);
            if (!m)
                continue; /* it changed while we waited: look again */
            cache_walk_action act = CACHE_WALK_NEXT;
            if ((flags & WALK_DEAD) || !item_is_dead(c, it, cache_now(c), NULL))
                act = fn(ctx, c, it);
            if (act == CACHE_WALK_UNLINK) {
                item_unlink_classlocked(c, cls, it, hv);
                if (unlinked)
                    (*unlinked)++;
            }
            stripe_unlock(m);
            if (act == CACHE_WALK_STOP) {
                pthread_mutex_unlock(&cls->lock);
                *cursor = CUR_MAKE(k, seq, chunk);
                return false;
            }
            chunk++;
        }
        pthread_mutex_unlock(&cls->lock);
    }
    *cursor = 0;
    return true;
}

int cache_walk_classes(cache *c, const uint8_t *classes, uint64_t *cursor, uint32_t budget, cache_walk_fn fn,
                       void *ctx)
{
    return walk_items(c, classes, NULL, 0, cursor, budget, fn, ctx, 0, NULL) ? 1 : 0;
}

/* ---- one pass over one class ---- */

/* What a pass saw (the callback's context). */
struct pass {
    struct slabclass *cls;          /* the class being crawled */
    rel_time_t now;                 /* the clock when the pass began */
    uint64_t checked;               /* items looked at */
    uint64_t reclaimed;             /* items freed */
    uint64_t with_exptime;          /* live items that will expire */
    uint64_t ttl[TTL_BUCKETS];      /* their remaining lifetimes, [2^b, 2^(b+1)) seconds */
};

/* Both locks held: free the item if it is dead, else note when it expires. */
static cache_walk_action crawl_cb(void *p, cache *c, item *it)
{
    struct pass *ps = p;
    ps->checked++;
    ps->cls->st.crawler_checked++;
    get_status why;
    if (item_is_dead(c, it, cache_now(c), &why)) {
        uint16_t fl = atomic_load(&it->it_flags);
        ps->reclaimed++;
        ps->cls->st.crawler_reclaimed++;
        /* memcached counts an expired (not a flushed) unfetched item here too */
        if (!(fl & ITEM_FETCHED) && why == GET_EXPIRED)
            ps->cls->st.expired_unfetched++;
        if (c->cfg.verbose > 1)
            fprintf(stderr, "LRU crawler found an expired item (flags: %u, slab: %u): %.*s\n", fl,
                    it->slabs_clsid, (int)it->nkey, ITEM_key(it));
        return CACHE_WALK_UNLINK;
    }
    rel_time_t e = LD(it->exptime);
    if (e != 0) {
        rel_time_t left = e > ps->now ? e - ps->now : 1;
        int b = 31 - __builtin_clz(left);
        ps->ttl[b < TTL_BUCKETS ? b : TTL_BUCKETS - 1]++;
        ps->with_exptime++;
    }
    return CACHE_WALK_NEXT;
}

/* Stop crawling now: the thread is asked to exit or the crawler was disabled. */
static bool crawl_should_stop(cache *c)
{
    struct crawler *cr = &c->crawler;
    pthread_mutex_lock(&cr->lock);
    bool stop = cr->stop;
    pthread_mutex_unlock(&cr->lock);
    return stop;
}

/* lru_crawler_sleep: pause, but wake at once when asked to stop (disable waits for us). */
static void crawl_pause(cache *c, uint32_t us)
{
    struct crawler *cr = &c->crawler;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += us / 1000000;
    ts.tv_nsec += (long)(us % 1000000) * 1000;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&cr->lock);
    if (!cr->stop)
        pthread_cond_timedwait(&cr->cond, &cr->lock, &ts);
    pthread_mutex_unlock(&cr->lock);
}

/*
 * One pass over class k: up to tocrawl items (0: all of them), from where
 * the last limited pass stopped.  Fills *ps.
 */
static void crawl_class(cache *c, int k, struct pass *ps)
{
    struct crawler *cr = &c->crawler;
    struct crawl_class *cc = &cr->cls[k];
    uint8_t only[SM_MAX_SLAB_CLASSES] = {0};
    only[k] = 1;
    memset(ps, 0, sizeof(*ps));
    ps->cls = &c->classes[k];
    ps->now = cache_now(c);
    uint32_t tocrawl = atomic_load_explicit(&cr->tocrawl, memory_order_relaxed);
    uint64_t since_sleep = 0;
    for (;;) {
        uint64_t before = ps->checked;
        bool done = walk_items(c, only, NULL, 0, &cc->cursor, WALK_BATCH, crawl_cb, ps, WALK_DEAD, NULL);
        since_sleep += ps->checked - before;
        if (done || (tocrawl && ps->checked >= tocrawl) || crawl_should_stop(c))
            break;
        uint32_t us = atomic_load_explicit(&cr->sleep_usec, memory_order_relaxed);
        if (since_sleep >= CRAWL_PER_SLEEP && us) {
            crawl_pause(c, us);
            since_sleep = 0;
        }
    }
}

/* After a background pass of class k: when it is due again. */
static void schedule(cache *c, int k, const struct pass *ps)
{
    struct crawl_class *cc = &c->crawler.cls[k];
    uint64_t watermark = ps->checked / 100 + 1;
    if (ps->reclaimed >= watermark)
        cc->gap = 1;
    else
        cc->gap = cc->gap * 2 > CRAWL_GAP_MAX ? CRAWL_GAP_MAX : (cc->gap ? cc->gap * 2 : 1);
    uint32_t wait = cc->gap;
    if (ps->with_exptime) {
        uint64_t expiring = 0, want = ps->with_exptime / 100 + 1;
        for (int b = 0; b < TTL_BUCKETS; b++) {
            expiring += ps->ttl[b];
            if (expiring >= want) {
                uint32_t t = b >= 31 ? UINT32_MAX : (uint32_t)1 << b;
                if (t < wait)
                    wait = t;
                break;
            }
        }
    }
    cc->next_due = cache_now(c) + wait;
}

/* One pass over every class set in classes[] that has pages. */
static void crawl_classes(cache *c, const uint8_t *classes, bool background)
{
    for (int k = 1; k <= c->nclasses && !crawl_should_stop(c); k++) {
        if (!classes[k])
            continue;
        struct pass ps;
        crawl_class(c, k, &ps);
        if (background)
            schedule(c, k, &ps);
        if (c->cfg.verbose > 2)
            fprintf(stderr, "LRU crawler: class %d checked %llu, reclaimed %llu\n", k,
                    (unsigned long long)ps.checked, (unsigned long long)ps.reclaimed);
    }
}

/* The background classes due now (items in them, and their time has come or a flush happened). */
static bool due_classes(cache *c, uint8_t *due)
{
    struct crawler *cr = &c->crawler;
    rel_time_t now = cache_now(c);
    rel_time_t ol = atomic_load(&c->oldest_live);
    uint64_t oc = atomic_load(&c->oldest_cas);
    bool flushed = false;
    if (ol != 0 && ol <= now && (ol != cr->seen_oldest_live || oc != cr->seen_oldest_cas)) {
        cr->seen_oldest_live = ol;
        cr->seen_oldest_cas = oc;
        flushed = true;
    }
    bool any = false;
    for (int k = 1; k <= c->nclasses; k++) {
        due[k] = 0;
        if (atomic_load_explicit(&c->classes[k].curr_items, memory_order_relaxed) == 0)
            continue;
        if (flushed || now >= cr->cls[k].next_due) {
            due[k] = 1;
            any = true;
        }
    }
    return any;
}

static void *crawler_main(void *arg)
{
    cache *c = arg;
    struct crawler *cr = &c->crawler;
    uint8_t todo[SM_MAX_SLAB_CLASSES];
    pthread_setname_np(pthread_self(), "sm-crawler");
    pthread_mutex_lock(&cr->lock);
    while (!cr->stop) {
        bool user = false;
        for (int k = 1; k < SM_MAX_SLAB_CLASSES; k++)
            user |= cr->want[k] != 0;
        if (user) {
            memcpy(todo, cr->want, sizeof(todo));
            memset(cr->want, 0, sizeof(cr->want));
            pthread_mutex_unlock(&cr->lock);
            crawl_classes(c, todo, false);
            pthread_mutex_lock(&cr->lock);
            cr->user_busy = false;
            atomic_fetch_sub(&cr->running, 1);
            continue;
        }
        pthread_mutex_unlock(&cr->lock);
        if (due_classes(c, todo)) {
            atomic_fetch_add(&cr->running, 1);
            atomic_fetch_add(&cr->starts, 1);
            crawl_classes(c, todo, true);
            atomic_fetch_sub(&cr->running, 1);
        }
        pthread_mutex_lock(&cr->lock);
        if (cr->stop)
            break;
        bool asked = false;
        for (int k = 1; k < SM_MAX_SLAB_CLASSES; k++)
            asked |= cr->want[k] != 0;
        if (asked)
            continue;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&cr->cond, &cr->lock, &ts);
    }
    /* A crawl asked for but not begun ends with the thread. */
    if (cr->user_busy) {
        cr->user_busy = false;
        atomic_fetch_sub(&cr->running, 1);
    }
    memset(cr->want, 0, sizeof(cr->want));
    pthread_mutex_unlock(&cr->lock);
    return NULL;
}

/* ---- control ---- */

void crawler_init(cache *c)
{
    struct crawler *cr = &c->crawler;
    pthread_mutex_init(&cr->ctl, NULL);
    pthread_mutex_init(&cr->lock, NULL);
    pthread_cond_init(&cr->cond, NULL);
    atomic_store(&cr->sleep_usec, c->cfg.lru_crawler_sleep);
    atomic_store(&cr->tocrawl, c->cfg.lru_crawler_tocrawl);
    for (int k = 0; k < SM_MAX_SLAB_CLASSES; k++)
        cr->cls[k].gap = 1;
}

void crawler_destroy(cache *c)
{
    cache_crawler_disable(c);
    pthread_mutex_destroy(&c->crawler.ctl);
    pthread_mutex_destroy(&c->crawler.lock);
    pthread_cond_destroy(&c->crawler.cond);
}

int cache_crawler_enable(cache *c)
{
    struct crawler *cr = &c->crawler;
    pthread_mutex_lock(&cr->ctl);
    pthread_mutex_lock(&cr->lock);
    bool running = cr->started;
    cr->stop = false;
    pthread_mutex_unlock(&cr->lock);
    int rc = running ? -1 : pthread_create(&cr->thread, NULL, crawler_main, c);
    if (rc == 0) {
        pthread_mutex_lock(&cr->lock);
        cr->started = true;
        pthread_mutex_unlock(&cr->lock);
        atomic_store(&cr->enabled, true);
    }
    pthread_mutex_unlock(&cr->ctl);
    if (rc != 0) {
        if (rc > 0)
            errno = rc;
        return -1;
    }
    return 0;
}

void cache_crawler_disable(cache *c)
{
    struct crawler *cr = &c->crawler;
    pthread_mutex_lock(&cr->ctl); /* one disable joins; a concurrent one waits for it */
    pthread_mutex_lock(&cr->lock);
    bool running = cr->started;
    if (running) {
        cr->stop = true;
        atomic_store(&cr->enabled, false);
        pthread_cond_signal(&cr->cond);
    }
    pthread_mutex_unlock(&cr->lock);
    if (running) {
        pthread_join(cr->thread, NULL);
        pthread_mutex_lock(&cr->lock);
        cr->started = false;
        pthread_mutex_unlock(&cr->lock);
    }
    pthread_mutex_unlock(&cr->ctl);
}

int cache_crawler_enabled(cache *c)
{
    return atomic_load(&c->crawler.enabled) ? 1 : 0;
}

crawl_result cache_crawler_crawl(cache *c, const uint8_t *classes)
{
    struct crawler *cr = &c->crawler;
    bool any = false;
    for (int k = 1; k < SM_MAX_SLAB_CLASSES; k++)
        any |= classes[k] != 0;
    pthread_mutex_lock(&cr->lock);
    crawl_result res;
    if (!cr->started) {
        res = CRAWL_ERROR;
    } else if (cr->user_busy) {
        res = CRAWL_RUNNING;
    } else if (!any) {
        res = CRAWL_NOTSTARTED;
    } else {
        memcpy(cr->want, classes, sizeof(cr->want));
        cr->user_busy = true;
        atomic_fetch_add(&cr->running, 1); /* before the reply: "running" until it is done */
        atomic_fetch_add(&cr->starts, 1);
        pthread_cond_signal(&cr->cond);
        res = CRAWL_OK;
    }
    pthread_mutex_unlock(&cr->lock);
    return res;
}

void cache_crawler_set_sleep(cache *c, uint32_t usec)
{
    atomic_store(&c->crawler.sleep_usec, usec);
}

void cache_crawler_set_tocrawl(cache *c, uint32_t n)
{
    atomic_store(&c->crawler.tocrawl, n);
}

uint32_t cache_crawler_sleep(cache *c)
{
    return atomic_load(&c->crawler.sleep_usec);
}

uint32_t cache_crawler_tocrawl(cache *c)
{
    return atomic_load(&c->crawler.tocrawl);
}

void cache_crawler_dump_begin(cache *c)
{
    atomic_fetch_add(&c->crawler.running, 1);
    atomic_fetch_add(&c->crawler.starts, 1);
}

void cache_crawler_dump_end(cache *c)
{
    atomic_fetch_sub(&c->crawler.running, 1);
}
