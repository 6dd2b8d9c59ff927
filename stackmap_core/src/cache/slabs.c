/*
 * slabs.c -- slab classes: fixed-size chunks carved from pages, one free
 * list per class, and the memory limit.
 *
 * Class sizes are memcached's: the smallest chunk is memcached's item
 * header (48 bytes) + chunk_size (-n), each next class is factor (-f)
 * times bigger, 8-byte aligned, up to a class of half a slab page
 * (memcached's slab_chunk_max).  memcached stores bigger items as chains of
 * chunks; we never chain, so the series goes on until a chunk would exceed
 * page_size / factor and the last class is exactly one page: every item up
 * to item_size_max (<= page size) fits in one chunk.
 *
 * Memory: pages of page_size bytes are taken one at a time, on demand,
 * from the page arena (hugemem.c: huge-page regions, to spare TLB misses).
 * A page is carved lazily (end_page_ptr), so an untouched part of a page
 * costs no RSS.  mem_malloced counts page bytes; a class may get a new page
 * only while mem_malloced + page_size <= maxbytes -- except that a class
 * that has no page at all may take its first one past the limit.  That is
 * memcached's rule (do_slabs_newslab) and keeps every item size storable
 * with a small -m; so the hard bound is maxbytes + one page per class in
 * use.  maxbytes 0 means no limit (memcached's -m 0).  Pages never move
 * between classes (no slab rebalancing) and are only freed by
 * cache_destroy.  A lower limit (cache_set_memlimit) just
 * stops new pages; the LRU keeps evicting within the pages it has.
 */
#include <stdlib.h>

#include "cache_int.h"

/* sizeof(item) in memcached 1.6 on 64-bit, where its class series begins. */
#define MEMCACHED_ITEM_HEADER 48

/* The highest class id memcached's series can reach (its
 * MAX_NUMBER_OF_SLAB_CLASSES - 1); SM_MAX_SLAB_CLASSES leaves room above it
 * for our one-page class. */
#define MEMCACHED_LAST_CLASS 63

int slabs_init(cache *c)
{
    c->page_size = c->cfg.slab_page_size;
    if (c->page_size < c->cfg.item_size_max)
        c->page_size = c->cfg.item_size_max;
    if (c->page_size < 1024)
        c->page_size = 1024;
    c->classes = calloc(SM_MAX_SLAB_CLASSES, sizeof(struct slabclass));
    if (!c->classes)
        return -1;
    page_arena_init(&c->arena, ARENA_REGION);
    double factor = c->cfg.factor > 1.0 ? c->cfg.factor : 1.25;
    /* memcached's series starts at its own 48-byte item header (its CAS lives
     * in the chunk), not at sizeof(item), which counts our CAS; and it ends
     * in a class of exactly its slab_chunk_max (half a slab page).  So the
     * same -n and -f give memcached's chunk sizes and put every item of up
     * to half a page in memcached's class.  Past that memcached chains
     * chunks; we go on with bigger classes up to one page instead.  Class 1
     * can be too small for any item (-n below 12): lookups never pick it. */
    size_t size = MEMCACHED_ITEM_HEADER + (c->cfg.chunk_size ? c->cfg.chunk_size : 48);
    size_t chunk_max = (c->cfg.slab_page_size ? c->cfg.slab_page_size : c->page_size) / 2;
    int i = 1;
    size_t prev = 0;
    for (; i < SM_MAX_SLAB_CLASSES - 1 && (prev < chunk_max || (double)size < c->page_size / factor); i++) {
        if (prev < chunk_max && ((double)size >= chunk_max / factor || i == MEMCACHED_LAST_CLASS)) {
            size = chunk_max; /* memcached's largest class, exactly */
        } else {
            size = (size + 7) & ~(size_t)7;
            if (size <= prev)
                size = prev + 8;
        }
        c->classes[i].size = (uint32_t)size;
        c->classes[i].perslab = c->page_size / (uint32_t)size;
        prev = size;
        size = (size_t)((double)size * factor);
    }
    c->classes[i].size = c->page_size;
    c->classes[i].perslab = 1;
    c->nclasses = i;
    for (int k = 1; k <= i; k++)
        pthread_mutex_init(&c->classes[k].lock, NULL);
    return 0;
}

void slabs_free_all(cache *c)
{
    if (!c->classes)
        return;
    for (int k = 1; k <= c->nclasses; k++) {
        struct slabclass *cls = &c->classes[k];
        free(cls->pages);
        pthread_mutex_destroy(&cls->lock);
    }
    free(c->classes);
    c->classes = NULL;
    page_arena_destroy(&c->arena); /* every page at once */
}

int slabs_clsid(const cache *c, size_t ntotal)
{
    if (ntotal == 0 || ntotal > c->cfg.item_size_max)
        return 0;
    int lo = 1, hi = c->nclasses;
    if (ntotal > c->classes[hi].size)
        return 0;
    while (lo < hi) { /* first class whose size >= ntotal */
        int mid = (lo + hi) / 2;
        if (c->classes[mid].size >= ntotal)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* Reserve page_size bytes against the limit; 0 on success. */
static int mem_reserve(cache *c, const struct slabclass *cls)
{
    uint64_t cur = atomic_load(&c->mem_malloced);
    for (;;) {
        uint64_t limit = atomic_load(&c->maxbytes);
        if (limit != 0 && cur + c->page_size > limit && cls->npages > 0)
            return -1;
        if (atomic_compare_exchange_weak(&c->mem_malloced, &cur, cur + c->page_size))
            return 0;
    }
}

/* Class lock held: add one page to the class. */
static int slabs_newpage(cache *c, struct slabclass *cls)
{
    if (mem_reserve(c, cls) != 0)
        return -1;
    if (cls->npages == cls->pages_cap) {
        uint32_t ncap = cls->pages_cap ? cls->pages_cap * 2 : 16;
        char **np = realloc(cls->pages, ncap * sizeof(char *));
        if (!np) {
            atomic_fetch_sub(&c->mem_malloced, c->page_size);
            atomic_fetch_add(&c->malloc_fails, 1);
            return -1;
        }
        cls->pages = np;
        cls->pages_cap = ncap;
    }
    char *page = page_arena_take(&c->arena, c->page_size);
    if (!page) {
        atomic_fetch_sub(&c->mem_malloced, c->page_size);
        atomic_fetch_add(&c->malloc_fails, 1);
        return -1;
    }
    cls->pages[cls->npages++] = page;
    cls->end_page_ptr = page;
    cls->end_page_free = cls->perslab;
    return 0;
}

item *slabs_alloc_locked(cache *c, struct slabclass *cls)
{
    item *it = cls->free_list;
    if (it) {
        cls->free_list = it->next;
        cls->free_count--;
        return it;
    }
    if (cls->end_page_free == 0 && slabs_newpage(c, cls) != 0)
        return NULL;
    it = (item *)cls->end_page_ptr;
    cls->end_page_ptr += cls->size;
    cls->end_page_free--;
    return it;
}

void slabs_free_locked(struct slabclass *cls, item *it)
{
    atomic_store_explicit(&it->it_flags, 0, memory_order_relaxed);
    it->prev = NULL;
    it->next = cls->free_list;
    cls->free_list = it;
    cls->free_count++;
}
