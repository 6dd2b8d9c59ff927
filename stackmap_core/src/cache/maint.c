/*
 * maint.c -- the cache maintainer thread.
 *
 * One thread does all of the cache's background work, so worker threads
 * never wait for it:
 *   - the clock: current_time advances once a second;
 *   - hash expansion: when an insert sees more than 1.5 items per bucket it
 *     wakes this thread, which doubles the table and migrates it a batch of
 *     buckets at a time (hash.c) without sleeping until it is done;
 *   - the reclaimer: once a second, a walk over each class's LRU tail that
 *     unlinks expired and flushed items (lru.c).
 * cache_start also starts the slab page mover's thread (slab_mover.c),
 * which can spend long stretches waiting for busy items.
 */
#include <errno.h>
#include <stdio.h>
#include <time.h>

#include "cache_int.h"

/* Buckets migrated per step between checks of the stop flag and clock. */
#define EXPAND_BATCH 1024

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

static void *maint_main(void *arg)
{
    cache *c = arg;
    rel_time_t last_reclaim = 0;
    while (!atomic_load(&c->maint_stop)) {
        cache_update_clock(c);
        rel_time_t now = cache_now(c);
        if (now != last_reclaim) {
            last_reclaim = now;
            lru_reclaim_pass(c);
        }
        if (maint_expand(c))
            continue; /* keep migrating; the clock is checked every batch */
        /* Sleep until the next second starts, or until woken. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        ts.tv_nsec = 0;
        pthread_mutex_lock(&c->maint_lock);
        if (!atomic_load(&c->maint_stop) && !atomic_load(&c->expand_wanted))
            pthread_cond_timedwait(&c->maint_cond, &c->maint_lock, &ts);
        pthread_mutex_unlock(&c->maint_lock);
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
    return 0;
}

void cache_stop(cache *c)
{
    mover_stop(c);
    if (!c->maint_started)
        return;
    pthread_mutex_lock(&c->maint_lock);
    atomic_store(&c->maint_stop, true);
    pthread_cond_signal(&c->maint_cond);
    pthread_mutex_unlock(&c->maint_lock);
    pthread_join(c->maint_thread, NULL);
    c->maint_started = false;
}

void cache_test_maintain(cache *c)
{
    lru_reclaim_pass(c);
    while (maint_expand(c))
        ;
}
