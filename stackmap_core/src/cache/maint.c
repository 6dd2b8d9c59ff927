/*
 * maint.c -- the cache maintainer thread.
 *
 * One thread does all of the cache's background work, so worker threads
 * never wait for it:
 *   - the clock: current_time advances once a second;
 *   - hash expansion: when an insert sees more than 1.5 items per bucket it
 *     wakes this thread, which doubles the table and migrates it a batch of
 *     buckets at a time (hash.c) without sleeping until it is done;
 *   - the LRU maintainer (unless -o no_lru_maintainer): memcached's
 *     lru_maintainer_thread, juggling each class's HOT/WARM/COLD segments
 *     (lru.c) and moving the COLD hits the workers queued to WARM.  Each
 *     class has its own wait, from 10 ms while it has items to move to 1 s
 *     while it has none (growing by 1/8 a round, halving when work shows
 *     up), so an idle cache costs one wake-up a second;
 *   - the reclaimer: once a second, a walk over each segment's tail that
 *     unlinks expired and flushed items (lru.c), while the LRU maintainer
 *     runs and the LRU crawler (crawler.c, which walks every item) does
 *     not: memcached's tail reclaim is part of its maintainer, so with
 *     neither (-o no_modern) expired items are found lazily, as there.
 * cache_start also starts the slab page mover's thread (slab_mover.c),
 * which can spend long stretches waiting for busy items.
 */
#include <errno.h>
#include <stdio.h>
#include <time.h>

#include "cache_int.h"

/* Buckets migrated per step between checks of the stop flag and clock. */
#define EXPAND_BATCH 1024
/* A class's juggling wait, microseconds.  memcached's MAX_LRU_MAINTAINER_SLEEP
 * is 1 s as here; its minimum is 1 ms (and no sleep at all after a busy
 * round): a wake-up every millisecond cost a measurable share of a loaded
 * worker's CPU when both share one, while 10 ms of inserts is a sliver of
 * any segment and 10 ms of COLD hits fits a thread's queue. */
#define JUGGLE_WAIT_MIN 10000
#define JUGGLE_WAIT_MAX 1000000

void maint_wake(cache *c)
{
    pthread_mutex_lock(&c->maint_lock);
    pthread_cond_signal(&c->maint_cond);
    pthread_mutex_unlock(&c->maint_lock);
}

/* Continue or start a hash expansion; returns 1 while one is in progress. */
static int maint_expand(cache *c)
{
    if (!atomic_load(&c->expanding)) {
        atomic_store(&c->expand_wanted, false); /* an insert sets it again if needed */
        if (!hash_needs_expand(c))
            return 0;
        uint32_t hp = atomic_load(&c->hashpower);
        if (hash_expand_start(c) != 0) {
            if (c->cfg.verbose > 0)
                fprintf(stderr, "Hash table expansion failed: out of memory\n");
            return 0;
        }
        if (c->cfg.verbose > 1)
            fprintf(stderr, "Hash table expansion starting (power %u -> %u)\n", hp, hp + 1);
    }
    if (hash_expand_step(c, EXPAND_BATCH)) {
        if (c->cfg.verbose > 1)
            fprintf(stderr, "Hash table expansion done\n");
        return hash_needs_expand(c); /* maybe double again right away */
    }
    return 1;
}

/*
 * One LRU maintainer round: juggle each class whose wait is over, move the
 * queued COLD hits; returns how long to sleep (microseconds).  slept is how
 * long the last sleep was.
 */
static uint32_t maint_lru_round(cache *c, uint32_t slept)
{
    atomic_fetch_add_explicit(&c->maint_juggles, 1, memory_order_relaxed);
    uint32_t to_sleep = JUGGLE_WAIT_MAX;
    for (int k = 1; k <= c->nclasses; k++) {
        struct slabclass *cls = &c->classes[k];
        cls->juggle_wait_us = cls->juggle_wait_us > slept ? cls->juggle_wait_us - slept : 0;
        if (cls->juggle_wait_us == 0) {
            if (lru_juggle(c, k) == 0) {
                uint32_t b = cls->juggle_backoff_us;
                b = b ? b + b / 8 : JUGGLE_WAIT_MIN;
                cls->juggle_backoff_us = b > JUGGLE_WAIT_MAX ? JUGGLE_WAIT_MAX : b;
            } else if (cls->juggle_backoff_us > 0) {
                cls->juggle_backoff_us /= 2;
                if (cls->juggle_backoff_us < JUGGLE_WAIT_MIN)
                    cls->juggle_backoff_us = 0;
            }
            cls->juggle_wait_us = cls->juggle_backoff_us;
        }
        if (cls->juggle_wait_us < to_sleep)
            to_sleep = cls->juggle_wait_us;
    }
    if (lru_drain_bumps(c) > 0 && to_sleep > JUGGLE_WAIT_MIN)
        to_sleep = JUGGLE_WAIT_MIN;
    /* memcached does not sleep at all after a busy round; 10 ms still
     * moves up to ~10^5 items a second per class and leaves the CPU to workers */
    return to_sleep < JUGGLE_WAIT_MIN ? JUGGLE_WAIT_MIN : to_sleep;
}

static void *maint_main(void *arg)
{
    cache *c = arg;
    rel_time_t last_reclaim = 0;
    uint32_t slept = JUGGLE_WAIT_MIN;
    while (!atomic_load(&c->maint_stop)) {
        cache_update_clock(c);
        rel_time_t now = cache_now(c);
        /* The LRU crawler (crawler.c), when on, frees expired items everywhere
         * in the LRU; the tail walk is the maintainer's for when it is off. */
        if (now != last_reclaim && c->lru_maintainer && !cache_crawler_enabled(c)) {
            last_reclaim = now;
            lru_reclaim_pass(c);
        }
        uint32_t to_sleep = c->lru_maintainer ? maint_lru_round(c, slept) : JUGGLE_WAIT_MAX;
        if (maint_expand(c)) {
            slept = 0;
            continue; /* keep migrating; the clock is checked every batch */
        }
        /* Sleep that long, but wake when the next second starts (the clock), or when woken. */
        struct timespec t0, ts;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int64_t wake = (int64_t)t0.tv_sec * 1000000000 + t0.tv_nsec + (int64_t)to_sleep * 1000;
        int64_t tick = cache_next_tick_ns(c);
        if (tick < wake)
            wake = tick; /* the next second's start comes first */
        ts.tv_sec = (time_t)(wake / 1000000000);
        ts.tv_nsec = (long)(wake % 1000000000);
        pthread_mutex_lock(&c->maint_lock);
        if (!atomic_load(&c->maint_stop) && !atomic_load(&c->expand_wanted))
            pthread_cond_timedwait(&c->maint_cond, &c->maint_lock, &ts);
        pthread_mutex_unlock(&c->maint_lock);
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        int64_t us = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
        slept = us < JUGGLE_WAIT_MIN ? JUGGLE_WAIT_MIN : us > JUGGLE_WAIT_MAX ? JUGGLE_WAIT_MAX : (uint32_t)us;
    }
    return NULL;
}

int cache_start(cache *c)
{
    if (c->maint_started)
        return 0;
    atomic_store(&c->maint_stop, false);
    cache_update_clock(c);
    int rc = pthread_create(&c->maint_thread, NULL, maint_main, c);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    c->maint_started = true;
    if (mover_start(c) != 0) {
        int e = errno;
        cache_stop(c);
        errno = e;
        return -1;
    }
    if (c->cfg.lru_crawler && !cache_crawler_enabled(c) && cache_crawler_enable(c) != 0)
        return -1; /* errno from pthread_create */
    return 0;
}

void cache_stop(cache *c)
{
    cache_crawler_disable(c);
    mover_stop(c);
    if (!c->maint_started)
        return;
    pthread_mutex_lock(&c->maint_lock);
    atomic_store(&c->maint_stop, true);
    pthread_cond_signal(&c->maint_cond);
    pthread_mutex_unlock(&c->maint_lock);
    pthread_join(c->maint_thread, NULL);
    c->maint_started = false;
    /* the COLD hits still queued: move them (the queues are empty after a stop) */
    lru_drain_bumps(c);
}

void cache_test_maintain(cache *c)
{
    lru_reclaim_pass(c);
    if (c->lru_maintainer) {
        lru_drain_bumps(c);
        for (int k = 1; k <= c->nclasses; k++)
            lru_juggle(c, k);
    }
    while (maint_expand(c))
        ;
}
