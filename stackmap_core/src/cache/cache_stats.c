/*
 * cache_stats.c -- the cache's part of "stats", "stats items",
 * "stats slabs" and "stats sizes", with memcached 1.6.18's names and order.
 *
 * memcached prints the cache's general stats in two blocks: hash table,
 * slab mover and LRU maintainer right after conn_yields, the item counters
 * at the end.  cache_stats_general emits both, each in memcached's order;
 * stats_groups.c places every name where memcached prints it.  Names that
 * describe machinery we do not have (none since the slab mover, the
 * segmented LRU and the crawler landed: see each name's source) are printed
 * as 0.  As in memcached, the segmented LRU's names (number_hot, moves_to_cold,
 * evicted_active, lru_bumps_dropped, ...) are printed only while the LRU
 * maintainer runs, and number_temp only while there is a TEMP LRU.  Counters are read under each class lock in
 * turn, so the output is consistent per class, not across classes.
 */
#include <stdio.h>
#include <string.h>

#include "cache_int.h"

/* Everything "stats" needs from one class, copied under its lock. */
struct class_snap {
    uint64_t curr_items;    /* linked items */
    uint64_t curr_bytes;    /* their total size */
    uint64_t total_items;   /* items ever linked */
    uint32_t npages;        /* pages */
    uint64_t free_count;    /* chunks on the free list */
    uint32_t end_page_free; /* uncarved chunks of the newest page */
    rel_time_t tail_time[LRU_NSEGS]; /* time of each segment's tail item, 0 if empty */
    uint64_t seg_items[LRU_NSEGS];   /* items in each segment */
    struct class_stats st;  /* eviction/reclaim counters */
};

static void snap_class(cache *c, int k, struct class_snap *s)
{
    struct slabclass *cls = &c->classes[k];
    pthread_mutex_lock(&cls->lock);
    s->curr_items = atomic_load(&cls->curr_items);
    s->curr_bytes = atomic_load(&cls->curr_bytes);
    s->total_items = cls->total_items;
    s->npages = cls->npages;
    s->free_count = cls->free_count;
    s->end_page_free = cls->end_page_free;
    for (int g = 0; g < LRU_NSEGS; g++) {
        s->tail_time[g] = cls->tails[g] ? LD(cls->tails[g]->time) : 0;
        s->seg_items[g] = cls->seg_items[g];
    }
    s->st = cls->st;
    pthread_mutex_unlock(&cls->lock);
}

/* The block memcached prints right after conn_yields. */
static void stats_general_hash(cache *c, sm_stat_sink *sink)
{
    uint32_t hp = atomic_load(&c->hashpower);
    uint64_t hbytes = ((uint64_t)1 << hp) * sizeof(item *);
    bool expanding = atomic_load(&c->expanding);
    if (expanding)
        hbytes += ((uint64_t)1 << c->oldpower) * sizeof(item *);
    sm_stat_addf(sink, "hash_power_level", "%u", hp);
    sm_stat_addf(sink, "hash_bytes", "%llu", (unsigned long long)hbytes);
    sm_stat_addf(sink, "hash_is_expanding", "%d", expanding ? 1 : 0);
    /* The slab page mover (slab_mover.c), printed while it is enabled, as
     * memcached does. */
    if (cache_slab_reassign_enabled(c)) {
        const struct mover_stats *m = &c->mst;
        sm_stat_addf(sink, "slab_reassign_rescues", "%llu", (unsigned long long)atomic_load(&m->rescues));
        sm_stat_addf(sink, "slab_reassign_chunk_rescues", "%llu",
                     (unsigned long long)atomic_load(&m->chunk_rescues));
        sm_stat_addf(sink, "slab_reassign_evictions_nomem", "%llu",
                     (unsigned long long)atomic_load(&m->evictions_nomem));
        sm_stat_addf(sink, "slab_reassign_inline_reclaim", "%llu", (unsigned long long)atomic_load(&m->inline_reclaim));
        sm_stat_addf(sink, "slab_reassign_busy_items", "%llu", (unsigned long long)atomic_load(&m->busy_items));
        sm_stat_addf(sink, "slab_reassign_busy_deletes", "%llu", (unsigned long long)atomic_load(&m->busy_deletes));
        sm_stat_addf(sink, "slab_reassign_running", "%d", atomic_load(&c->reb_running) ? 1 : 0);
        sm_stat_addf(sink, "slabs_moved", "%llu", (unsigned long long)atomic_load(&m->slabs_moved));
    }
    /* The LRU crawler (crawler.c): memcached prints these only while it is enabled. */
    if (cache_crawler_enabled(c)) {
        sm_stat_addf(sink, "lru_crawler_running", "%u", atomic_load(&c->crawler.running) ? 1u : 0u);
        sm_stat_addf(sink, "lru_crawler_starts", "%llu", (unsigned long long)atomic_load(&c->crawler.starts));
    }
    if (c->lru_maintainer) /* as memcached: only while the LRU maintainer runs */
        sm_stat_addf(sink, "lru_maintainer_juggles", "%llu", (unsigned long long)atomic_load(&c->maint_juggles));
    sm_stat_addf(sink, "malloc_fails", "%llu", (unsigned long long)atomic_load(&c->malloc_fails));
}

void cache_stats_general(cache *c, sm_stat_sink *sink)
{
    stats_general_hash(c, sink);
    struct class_snap tot;
    memset(&tot, 0, sizeof(tot));
    for (int k = 1; k <= c->nclasses; k++) {
        struct class_snap s;
        snap_class(c, k, &s);
        tot.curr_items += s.curr_items;
        tot.curr_bytes += s.curr_bytes;
        tot.total_items += s.total_items;
        tot.st.expired_unfetched += s.st.expired_unfetched;
        tot.st.evicted_unfetched += s.st.evicted_unfetched;
        tot.st.evicted_active += s.st.evicted_active;
        tot.st.evicted += s.st.evicted;
        tot.st.reclaimed += s.st.reclaimed;
        tot.st.lrutail_reflocked += s.st.lrutail_reflocked;
        tot.st.moves_to_cold += s.st.moves_to_cold;
        tot.st.moves_to_warm += s.st.moves_to_warm;
        tot.st.moves_within_lru += s.st.moves_within_lru;
        tot.st.direct_reclaims += s.st.direct_reclaims;
        tot.st.crawler_reclaimed += s.st.crawler_reclaimed;
        tot.st.crawler_checked += s.st.crawler_checked;
    }
#define U(x) ((unsigned long long)(x))
    sm_stat_addf(sink, "bytes", "%llu", U(tot.curr_bytes));
    sm_stat_addf(sink, "curr_items", "%llu", U(tot.curr_items));
    sm_stat_addf(sink, "total_items", "%llu", U(tot.total_items));
    sm_stat_addf(sink, "slab_global_page_pool", "%u", atomic_load(&c->pool_count));
    sm_stat_addf(sink, "expired_unfetched", "%llu", U(tot.st.expired_unfetched));
    sm_stat_addf(sink, "evicted_unfetched", "%llu", U(tot.st.evicted_unfetched));
    if (c->lru_maintainer)
        sm_stat_addf(sink, "evicted_active", "%llu", U(tot.st.evicted_active));
    sm_stat_addf(sink, "evictions", "%llu", U(tot.st.evicted));
    sm_stat_addf(sink, "reclaimed", "%llu", U(tot.st.reclaimed));
    sm_stat_addf(sink, "crawler_reclaimed", "%llu", U(tot.st.crawler_reclaimed));
    sm_stat_addf(sink, "crawler_items_checked", "%llu", U(tot.st.crawler_checked));
    sm_stat_addf(sink, "lrutail_reflocked", "%llu", U(tot.st.lrutail_reflocked));
    if (!c->lru_maintainer)
        return;
    uint64_t dropped = 0;
    for (int i = 0; i < HIT_BLOCKS - 1; i++)
        dropped += atomic_load_explicit(&c->bump_rings[i].dropped, memory_order_relaxed);
    sm_stat_addf(sink, "moves_to_cold", "%llu", U(tot.st.moves_to_cold));
    sm_stat_addf(sink, "moves_to_warm", "%llu", U(tot.st.moves_to_warm));
    sm_stat_addf(sink, "moves_within_lru", "%llu", U(tot.st.moves_within_lru));
    sm_stat_addf(sink, "direct_reclaims", "%llu", U(tot.st.direct_reclaims));
    sm_stat_addf(sink, "lru_bumps_dropped", "%llu", U(dropped));
}

/* "items:<k>:<name>" */
static void item_stat(sm_stat_sink *sink, int k, const char *name, unsigned long long v)
{
    char key[64];
    snprintf(key, sizeof(key), "items:%d:%s", k, name);
    sm_stat_addf(sink, key, "%llu", v);
}

/* Seconds since t (a tail item's time), 0 for no item. */
static unsigned long long age_of(rel_time_t now, rel_time_t t)
{
    return t && now > t ? now - t : 0;
}

void cache_stats_items(cache *c, sm_stat_sink *sink)
{
    rel_time_t now = cache_now(c);
    bool maint = c->lru_maintainer;
    bool temp = atomic_load(&c->temp_lru);
    for (int k = 1; k <= c->nclasses; k++) {
        struct class_snap s;
        snap_class(c, k, &s);
        if (s.curr_items == 0)
            continue;
        uint64_t hits[LRU_NSEGS] = {0};
        for (int b = 0; b < HIT_BLOCKS; b++)
            for (int g = 0; g < LRU_NSEGS; g++)
                hits[g] += atomic_load_explicit(&c->hit_blocks[b].hits[g][k], memory_order_relaxed);
        item_stat(sink, k, "number", s.curr_items);
        if (maint) {
            item_stat(sink, k, "number_hot", s.seg_items[LRU_HOT]);
            item_stat(sink, k, "number_warm", s.seg_items[LRU_WARM]);
            item_stat(sink, k, "number_cold", s.seg_items[LRU_COLD]);
            if (temp)
                item_stat(sink, k, "number_temp", s.seg_items[LRU_TEMP]);
            item_stat(sink, k, "age_hot", age_of(now, s.tail_time[LRU_HOT]));
            item_stat(sink, k, "age_warm", age_of(now, s.tail_time[LRU_WARM]));
        }
        item_stat(sink, k, "age", age_of(now, s.tail_time[LRU_COLD]));
        item_stat(sink, k, "mem_requested", s.curr_bytes);
        item_stat(sink, k, "evicted", s.st.evicted);
        item_stat(sink, k, "evicted_nonzero", s.st.evicted_nonzero);
        item_stat(sink, k, "evicted_time", s.st.evicted_time);
        item_stat(sink, k, "outofmemory", s.st.outofmemory);
        item_stat(sink, k, "tailrepairs", 0); /* refcount leaks are never "repaired" */
        item_stat(sink, k, "reclaimed", s.st.reclaimed);
        item_stat(sink, k, "expired_unfetched", s.st.expired_unfetched);
        item_stat(sink, k, "evicted_unfetched", s.st.evicted_unfetched);
        if (maint)
            item_stat(sink, k, "evicted_active", s.st.evicted_active);
        item_stat(sink, k, "crawler_reclaimed", s.st.crawler_reclaimed);
        item_stat(sink, k, "crawler_items_checked", s.st.crawler_checked);
        item_stat(sink, k, "lrutail_reflocked", s.st.lrutail_reflocked);
        if (maint) {
            item_stat(sink, k, "moves_to_cold", s.st.moves_to_cold);
            item_stat(sink, k, "moves_to_warm", s.st.moves_to_warm);
            item_stat(sink, k, "moves_within_lru", s.st.moves_within_lru);
            item_stat(sink, k, "direct_reclaims", s.st.direct_reclaims);
            item_stat(sink, k, "hits_to_hot", hits[LRU_HOT]);
            item_stat(sink, k, "hits_to_warm", hits[LRU_WARM]);
            item_stat(sink, k, "hits_to_cold", hits[LRU_COLD]);
            item_stat(sink, k, "hits_to_temp", hits[LRU_TEMP]);
        }
        if (c->s3fifo) { /* -o eviction=s3fifo (s3fifo.c): HOT is its small queue, COLD its main */
            item_stat(sink, k, "s3fifo_to_main", s.st.s3_to_main);
            item_stat(sink, k, "s3fifo_ghost_hits", s.st.s3_ghost_hits);
            item_stat(sink, k, "s3fifo_reinserted", s.st.s3_reinserted);
        }
    }
}

/* "<k>:<name>" */
static void slab_stat(sm_stat_sink *sink, int k, const char *name, unsigned long long v)
{
    char key[64];
    snprintf(key, sizeof(key), "%d:%s", k, name);
    sm_stat_addf(sink, key, "%llu", v);
}

void cache_stats_slabs(cache *c, const struct sm_stats_sum *sum, sm_stat_sink *sink)
{
    int active = 0;
    for (int k = 1; k <= c->nclasses; k++) {
        struct class_snap s;
        snap_class(c, k, &s);
        if (s.npages == 0)
            continue;
        active++;
        const struct slabclass *cls = &c->classes[k];
        uint64_t total = (uint64_t)s.npages * cls->perslab;
        uint64_t free_chunks = s.free_count + s.end_page_free;
        slab_stat(sink, k, "chunk_size", cls->size);
        slab_stat(sink, k, "chunks_per_page", cls->perslab);
        slab_stat(sink, k, "total_pages", s.npages);
        slab_stat(sink, k, "total_chunks", total);
        slab_stat(sink, k, "used_chunks", total - free_chunks);
        slab_stat(sink, k, "free_chunks", free_chunks);
        slab_stat(sink, k, "free_chunks_end", s.end_page_free);
        slab_stat(sink, k, "get_hits", sum ? sum->slab[k].get_hits : 0);
        slab_stat(sink, k, "cmd_set", sum ? sum->slab[k].set_cmds : 0);
        slab_stat(sink, k, "delete_hits", sum ? sum->slab[k].delete_hits : 0);
        slab_stat(sink, k, "incr_hits", sum ? sum->slab[k].incr_hits : 0);
        slab_stat(sink, k, "decr_hits", sum ? sum->slab[k].decr_hits : 0);
        slab_stat(sink, k, "cas_hits", sum ? sum->slab[k].cas_hits : 0);
        slab_stat(sink, k, "cas_badval", sum ? sum->slab[k].cas_badval : 0);
        slab_stat(sink, k, "touch_hits", sum ? sum->slab[k].touch_hits : 0);
    }
    sm_stat_addf(sink, "active_slabs", "%d", active);
    sm_stat_addf(sink, "total_malloced", "%llu", U(atomic_load(&c->mem_malloced)));
}

void cache_stats_sizes(cache *c, sm_stat_sink *sink)
{
    (void)c;
    sink->add(sink, "sizes_status", "disabled");
}

void cache_stats_reset(cache *c)
{
    for (int k = 1; k <= c->nclasses; k++) {
        struct slabclass *cls = &c->classes[k];
        pthread_mutex_lock(&cls->lock);
        cls->st = (struct class_stats){0};
        cls->total_items = 0;
        pthread_mutex_unlock(&cls->lock);
    }
    for (int b = 0; b < HIT_BLOCKS; b++)
        for (int g = 0; g < LRU_NSEGS; g++)
            for (int k = 0; k < SM_MAX_SLAB_CLASSES; k++)
                atomic_store_explicit(&c->hit_blocks[b].hits[g][k], 0, memory_order_relaxed);
    atomic_store(&c->malloc_fails, 0);
    atomic_store(&c->maint_juggles, 0);
    atomic_store(&c->crawler.starts, 0);
    /* memcached's stats_reset clears the mover's counters too */
    atomic_store(&c->mst.slabs_moved, 0);
    atomic_store(&c->mst.rescues, 0);
    atomic_store(&c->mst.chunk_rescues, 0);
    atomic_store(&c->mst.evictions_nomem, 0);
    atomic_store(&c->mst.inline_reclaim, 0);
    atomic_store(&c->mst.busy_items, 0);
    atomic_store(&c->mst.busy_deletes, 0);
}
