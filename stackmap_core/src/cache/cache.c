/*
 * cache.c -- the cache's life cycle, its clock, item locks and the
 * whole-cache operations (flush_all, memory limit, CAS counter).
 *
 * Time follows memcached: rel_time is seconds since process_started, which
 * is set ITEM_UPDATE_INTERVAL + 2 seconds in the past, so rel_time starts at
 * 62 and small values such as 1 are always in the past.  The maintainer
 * thread advances the clock at each second boundary of the wall clock, read
 * through CLOCK_MONOTONIC plus the offset between the two taken at start
 * (so a later wall-clock step moves nothing); readers load it with a
 * relaxed atomic.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_int.h"

static _Atomic uint64_t next_cache_id = 1;

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

cache *cache_create(const cache_config *cfg, char *err, size_t errlen)
{
    if (cfg->item_size_max < 1024 || cfg->factor <= 1.0) {
        snprintf(err, errlen, "cache: item_size_max must be >= 1024 and factor > 1.0");
        return NULL;
    }
    cache *c = aligned_alloc(64, (sizeof(cache) + 63) & ~(size_t)63);
    if (!c) {
        snprintf(err, errlen, "cache: out of memory");
        return NULL;
    }
    memset(c, 0, sizeof(*c));
    c->cfg = *cfg;
    c->cache_id = atomic_fetch_add(&next_cache_id, 1);
    int64_t wall = clock_ns(CLOCK_REALTIME);
    c->mono_to_wall = wall - clock_ns(CLOCK_MONOTONIC);
    c->process_started = wall / 1000000000 - ITEM_UPDATE_INTERVAL - 2;
    atomic_store(&c->current_time, (rel_time_t)(ITEM_UPDATE_INTERVAL + 2));
    atomic_store(&c->maxbytes, cfg->maxbytes);
    pthread_mutex_init(&c->maint_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the maintainer's sleeps are short and timed */
    pthread_cond_init(&c->maint_cond, &ca);
    pthread_condattr_destroy(&ca);
    c->lru_maintainer = cfg->lru_maintainer != 0;
    c->s3fifo = cfg->s3fifo != 0;
    /* S3-FIFO keeps new items in HOT (its small queue) itself: lru_segment_for must say COLD */
    atomic_store(&c->lru_segmented, c->lru_maintainer && cfg->lru_segmented && !c->s3fifo);
    atomic_store(&c->hot_lru_pct, cfg->hot_lru_pct);
    atomic_store(&c->warm_lru_pct, cfg->warm_lru_pct);
    atomic_store(&c->hot_max_factor, cfg->hot_max_factor);
    atomic_store(&c->warm_max_factor, cfg->warm_max_factor);
    atomic_store(&c->temp_lru, c->lru_maintainer && cfg->temporary_ttl >= 0);
    atomic_store(&c->temporary_ttl, cfg->temporary_ttl >= 0 ? cfg->temporary_ttl : 61); /* memcached's default */
    crawler_init(c);
    pthread_mutex_init(&c->mover_lock, NULL);
    pthread_cond_init(&c->mover_cond, NULL);
    atomic_store(&c->automove, cfg->slab_automove); /* shown as set even with no mover, as memcached */
    cache_set_automove_ratio(c, cfg->slab_automove_ratio > 0 ? cfg->slab_automove_ratio : 0.8);
    c->hit_blocks = aligned_alloc(64, sizeof(struct hit_block) * HIT_BLOCKS);
    /* calloc: the queues' pages cost nothing until a thread uses its own */
    c->bump_rings = calloc(HIT_BLOCKS - 1, sizeof(struct bump_ring));
    if (!c->hit_blocks || !c->bump_rings || hash_init(c, cfg->hashpower_init ? cfg->hashpower_init : 16) != 0 ||
        slabs_init(c) != 0) {
        snprintf(err, errlen, "cache: out of memory");
        cache_destroy(c);
        return NULL;
    }
    memset(c->hit_blocks, 0, sizeof(struct hit_block) * HIT_BLOCKS);
    return c;
}

void cache_destroy(cache *c)
{
    if (!c)
        return;
    cache_stop(c);
    crawler_destroy(c);
    s3fifo_free(c);
    slabs_free_all(c);
    hash_free(c);
    free(c->hit_blocks);
    free(c->bump_rings);
    pthread_mutex_destroy(&c->maint_lock);
    pthread_cond_destroy(&c->maint_cond);
    pthread_mutex_destroy(&c->mover_lock);
    pthread_cond_destroy(&c->mover_cond);
    free(c);
}

rel_time_t cache_clock_now(cache *c)
{
    /* Monotonic, so a wall-clock step cannot move it, yet it ticks on the
     * wall clock's second boundaries: a client's time() + 2 and our now
     * name the same second (flush-all.t's "flush in two seconds"). */
    return (rel_time_t)((clock_ns(CLOCK_MONOTONIC) + c->mono_to_wall) / 1000000000 - c->process_started);
}

int64_t cache_next_tick_ns(const cache *c)
{
    int64_t wall = clock_ns(CLOCK_MONOTONIC) + c->mono_to_wall;
    return (wall / 1000000000 + 1) * 1000000000 - c->mono_to_wall;
}

void cache_update_clock(cache *c)
{
    if (atomic_load(&c->time_frozen))
        return;
    atomic_store_explicit(&c->current_time, cache_clock_now(c), memory_order_relaxed);
}

rel_time_t cache_now(const cache *c)
{
    return atomic_load_explicit(&c->current_time, memory_order_relaxed);
}

int64_t cache_process_started(const cache *c)
{
    return c->process_started;
}

rel_time_t cache_realtime(const cache *c, int64_t exptime)
{
    if (exptime == 0)
        return 0;
    if (exptime < 0)
        return 1;
    if (exptime > REALTIME_MAXDELTA) {
        if (exptime <= c->process_started)
            return 1;
        return (rel_time_t)(exptime - c->process_started);
    }
    return (rel_time_t)(exptime + cache_now(c));
}

void cache_lock(cache *c, uint32_t hv)
{
    stripe_lock_take(stripe_of(c, hv));
}

void cache_unlock(cache *c, uint32_t hv)
{
    stripe_unlock(stripe_of(c, hv));
}

uint64_t cache_next_cas(cache *c)
{
    if (!c->cfg.use_cas)
        return 0;
    return atomic_fetch_add_explicit(&c->cas_id, 1, memory_order_relaxed) + 1;
}

/*
 * memcached's flush_all: the new oldest_live is `when` (or now when `when`
 * is 0 or already past).  With CAS on, oldest_live is one second earlier and,
 * for an immediate flush, oldest_cas takes the next unique: everything
 * stored before this call is dead, while items stored later in the same
 * second survive.  Without CAS, everything stored up to the end of this
 * second is dead (memcached's -C behaviour).
 */
void cache_flush(cache *c, rel_time_t when)
{
    rel_time_t now = cache_now(c);
    rel_time_t new_oldest = (when == 0 || when < now) ? now : when;
    if (c->cfg.use_cas) {
        rel_time_t ol = new_oldest - 1;
        atomic_store(&c->oldest_live, ol);
        if (ol <= now)
            atomic_store(&c->oldest_cas, cache_next_cas(c));
    } else {
        atomic_store(&c->oldest_live, new_oldest);
    }
}

int cache_set_memlimit(cache *c, uint64_t maxbytes, char *err, size_t errlen)
{
    if (maxbytes == 0) {
        snprintf(err, errlen, "memory limit must be > 0");
        return -1;
    }
    atomic_store(&c->maxbytes, maxbytes);
    atomic_store(&c->shrinking, atomic_load(&c->mem_malloced) > maxbytes);
    /* Pooled pages above the new limit go back to the OS now; the mover
     * empties more pages into the pool until memory is within it. */
    slabs_memory_release(c);
    if (c->cfg.slab_reassign)
        mover_wake(c);
    return 0;
}

uint64_t cache_memlimit(const cache *c)
{
    return atomic_load(&c->maxbytes);
}

/* ---- LRU settings (the "lru" command) ---- */

void cache_lru_get(cache *c, cache_lru_settings *out)
{
    out->maintainer = c->lru_maintainer;
    out->segmented = atomic_load(&c->lru_segmented);
    out->hot_lru_pct = atomic_load(&c->hot_lru_pct);
    out->warm_lru_pct = atomic_load(&c->warm_lru_pct);
    out->hot_max_factor = atomic_load(&c->hot_max_factor);
    out->warm_max_factor = atomic_load(&c->warm_max_factor);
    out->temp_lru = atomic_load(&c->temp_lru);
    out->temporary_ttl = atomic_load(&c->temporary_ttl);
}

int cache_s3fifo(const cache *c)
{
    return c->s3fifo;
}

int cache_lru_tune(cache *c, int hot_pct, int warm_pct, double hot_factor, double warm_factor)
{
    if (c->s3fifo)
        return -1;
    atomic_store(&c->hot_lru_pct, hot_pct);
    atomic_store(&c->warm_lru_pct, warm_pct);
    atomic_store(&c->hot_max_factor, hot_factor);
    atomic_store(&c->warm_max_factor, warm_factor);
    return 0;
}

void cache_set_evict_log(cache *c, const atomic_uint *flags, unsigned bit, cache_evict_log_fn *fn, void *arg)
{
    c->evict_log_bit = bit;
    c->evict_log = fn;
    c->evict_log_arg = arg;
    c->evict_log_flags = flags;
}

void cache_set_slab_move_log(cache *c, const atomic_uint *flags, unsigned bit, cache_slab_move_log_fn *fn,
                             void *arg)
{
    c->move_log_bit = bit;
    c->move_log = fn;
    c->move_log_arg = arg;
    c->move_log_flags = flags;
}

int cache_lru_mode(cache *c, int segmented)
{
    if (!c->lru_maintainer || c->s3fifo)
        return -1;
    atomic_store(&c->lru_segmented, segmented != 0);
    return 0;
}

int cache_lru_temp_ttl(cache *c, int ttl)
{
    if (!c->lru_maintainer)
        return -1;
    if (ttl < 0) {
        atomic_store(&c->temp_lru, false); /* memcached keeps the old TTL on show */
    } else {
        atomic_store(&c->temporary_ttl, ttl);
        atomic_store(&c->temp_lru, true);
    }
    return 0;
}

/* ---- test hooks ---- */

void cache_test_set_time(cache *c, rel_time_t t)
{
    atomic_store(&c->time_frozen, true);
    atomic_store(&c->current_time, t);
}

uint64_t cache_test_mem_malloced(cache *c)
{
    return atomic_load(&c->mem_malloced);
}

uint64_t cache_test_count_lru(cache *c)
{
    uint64_t n = 0;
    for (int k = 1; k <= c->nclasses; k++) {
        pthread_mutex_lock(&c->classes[k].lock);
        for (int s = 0; s < LRU_NSEGS; s++)
            for (item *it = c->classes[k].heads[s]; it; it = it->next)
                n++;
        pthread_mutex_unlock(&c->classes[k].lock);
    }
    return n;
}
