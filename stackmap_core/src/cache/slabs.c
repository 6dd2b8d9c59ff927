/*
 * slabs.c -- slab classes: fixed-size chunks carved from pages, one free
 * list per class, and the memory limit.
 *
 * Class sizes follow memcached: the smallest chunk is sizeof(item) +
 * chunk_size (-n), each next class is factor (-f) times bigger, 8-byte
 * aligned, until a chunk would exceed page_size / factor; the last class is
 * exactly one page, so every item up to item_size_max (<= page size) fits
 * in one chunk (no chunked items).
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
    size_t size = sizeof(item) + (c->cfg.chunk_size ? c->cfg.chunk_size : 48);
    int i = 1;
    size_t prev = 0;
    while (i < SM_MAX_SLAB_CLASSES - 1 && (double)size < c->page_size / factor) {
        size = (size + 7) & ~(size_t)7;
        if (size <= prev)
            size = prev + 8;
        c->classes[i].size = (uint32_t)size;
        c->classes[i].perslab = c->page_size / (uint32_t)size;
        prev = size;
        size = (size_t)((double)size * factor);
        i++;
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
