/*
 * slabs.c -- slab classes: fixed-size chunks carved from pages, one free
 * list per class, and the memory limit.
 *
 * Class sizes are memcached's: the smallest chunk is memcached's item
 * header (48 bytes) + chunk_size (-n), each next class is factor (-f)
 * times bigger, 8-byte aligned, up to a class of exactly slab_chunk_max
 * (memcached's default: half of its 1 MiB page).  As in memcached, an
 * item bigger than that largest class is chained (cache.h, item_chain):
 * a head chunk and body chunks, all of the largest class, so one class
 * lock guards a whole chain; freeing a head frees its body chunks.
 *
 * Memory: pages of page_size bytes are taken one at a time, on demand,
 * from the page arena (hugemem.c: huge-page regions, to spare TLB misses).
 * A page is carved lazily (end_page_ptr), so an untouched part of a page
 * costs no RSS.  mem_malloced counts page bytes; a class may get a new page
 * only while mem_malloced + page_size <= maxbytes -- except that a class
 * that has no page at all may take its first one past the limit.  That is
 * memcached's rule (do_slabs_newslab) and keeps every item size storable
 * with a small -m; so the hard bound is maxbytes + one page per class in
 * use.  maxbytes 0 means no limit (memcached's -m 0).
 *
 * Pages move (slab_mover.c): the mover empties a page of one class and
 * gives it to another class or to the global page pool.  A class that
 * needs a page takes one from the pool before new memory.  A page put in
 * the pool while mem_malloced is above the limit (a lowered
 * cache_set_memlimit) is given back to the OS instead: madvise
 * MADV_DONTNEED drops its memory, the address range is kept on the
 * released list and reused (faulting in fresh zero pages) before the arena
 * is asked for more.  mem_malloced counts the pages of classes and pool,
 * not released ones: it is memcached's total_malloced.
 *
 * A class's pages[] lists its pages oldest first, each with
 * a join number (page_seq[], ascending, never reused in the class):
 * cache_walk goes over one class's pages by join number, so a walk's
 * cursor stays valid however pages move.
 *
 * Free chunks are marked ITEM_SLABBED and doubly linked, so the mover can
 * take the free chunks of the page it empties out of the list in O(1)
 * each.  While a page is being emptied (cls->evac_page), a chunk of it
 * that is freed is only marked, never listed, so no allocation can land
 * there again.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MADV_DONTNEED */
#endif
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cache_int.h"

/* sizeof(item) in memcached 1.6 on 64-bit, where its class series begins. */
#define MEMCACHED_ITEM_HEADER 48

/* The highest class id memcached's series can reach (its
 * MAX_NUMBER_OF_SLAB_CLASSES - 1). */
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
    pthread_mutex_init(&c->pool_lock, NULL);
    double factor = c->cfg.factor > 1.0 ? c->cfg.factor : 1.25;
    /* memcached's series starts at its own 48-byte item header (its CAS lives
     * in the chunk), not at sizeof(item), which counts our CAS; and it ends
     * in a class of exactly its slab_chunk_max.  So the same -n, -f and
     * slab_chunk_max give memcached's chunk sizes and put every item of up
     * to slab_chunk_max in memcached's class; bigger ones are chained in
     * that last class.  Class 1 can be too small for any item (-n below
     * 12): lookups never pick it. */
    size_t size = MEMCACHED_ITEM_HEADER + (c->cfg.chunk_size ? c->cfg.chunk_size : 48);
    size_t chunk_max = c->cfg.slab_chunk_max ? c->cfg.slab_chunk_max
                                             : (c->cfg.slab_page_size ? c->cfg.slab_page_size : c->page_size) / 2;
    if (chunk_max > c->page_size)
        chunk_max = c->page_size;
    int i = 1;
    size_t prev = 0;
    for (; i < SM_MAX_SLAB_CLASSES - 1 && prev < chunk_max; i++) {
        if ((double)size >= chunk_max / factor || i == MEMCACHED_LAST_CLASS) {
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
    i--; /* the class of exactly chunk_max is the last */
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
        free(cls->page_seq);
        pthread_mutex_destroy(&cls->lock);
    }
    free(c->classes);
    c->classes = NULL;
    free(c->pool);
    free(c->released);
    pthread_mutex_destroy(&c->pool_lock);
    page_arena_destroy(&c->arena); /* every page at once */
}

int slabs_clsid(const cache *c, size_t ntotal)
{
    if (ntotal == 0 || ntotal > c->cfg.item_size_max)
        return 0;
    int lo = 1, hi = c->nclasses;
    if (ntotal > c->classes[hi].size)
        return hi; /* chained in the largest class, as memcached's slabs_clsid */
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

/* pool_lock held: room in pool[] and released[] for every page there is,
 * plus one, so putting a page in either never needs memory. */
static int pool_reserve(cache *c)
{
    uint32_t need = c->pages_taken + 1;
    if (need <= c->pool_cap)
        return 0;
    uint32_t ncap = c->pool_cap ? c->pool_cap * 2 : 64;
    char **np = realloc(c->pool, ncap * sizeof(char *));
    if (!np)
        return -1;
    c->pool = np;
    char **nr = realloc(c->released, ncap * sizeof(char *));
    if (!nr)
        return -1;
    c->released = nr;
    c->pool_cap = ncap;
    return 0;
}

/* A page for class cls: from the pool, else (within the limit) from the
 * released pages or the arena.  NULL when none may be had. */
static char *page_get(cache *c, const struct slabclass *cls)
{
    char *page = NULL;
    pthread_mutex_lock(&c->pool_lock);
    if (c->pool_n > 0) {
        page = c->pool[--c->pool_n]; /* already counted in mem_malloced */
        atomic_store_explicit(&c->pool_count, c->pool_n, memory_order_relaxed);
    } else if (mem_reserve(c, cls) == 0) {
        if (c->released_n > 0) {
            page = c->released[--c->released_n];
        } else {
            page = pool_reserve(c) == 0 ? page_arena_take(&c->arena, c->page_size) : NULL;
            if (page)
                c->pages_taken++;
            else {
                atomic_fetch_sub(&c->mem_malloced, c->page_size);
                atomic_fetch_add(&c->malloc_fails, 1);
            }
        }
    }
    pthread_mutex_unlock(&c->pool_lock);
    return page;
}

/* Class lock held: room for one more entry in pages[] and page_seq[]. */
static int pages_grow(struct slabclass *cls)
{
    if (cls->npages < cls->pages_cap)
        return 0;
    uint32_t ncap = cls->pages_cap ? cls->pages_cap * 2 : 16;
    char **np = realloc(cls->pages, ncap * sizeof(char *));
    if (!np)
        return -1;
    cls->pages = np;
    uint32_t *ns = realloc(cls->page_seq, ncap * sizeof(uint32_t));
    if (!ns)
        return -1; /* pages[] is larger, harmlessly: pages_cap still says the old size */
    cls->page_seq = ns;
    cls->pages_cap = ncap;
    return 0;
}

/* Class lock held, room made by pages_grow: the page joins the class, last.
 * Join numbers only grow, so page_seq[] stays ascending as pages leave
 * (slabs_evac_end_locked keeps the order) and the walker can find where it
 * stopped however the list changed meanwhile. */
static void pages_append(struct slabclass *cls, char *page)
{
    cls->pages[cls->npages] = page;
    cls->page_seq[cls->npages] = cls->next_page_seq++;
    cls->npages++;
}

/* Class lock held: add one page to the class, carved lazily. */
static int slabs_newpage(cache *c, struct slabclass *cls)
{
    if (pages_grow(cls) != 0) {
        atomic_fetch_add(&c->malloc_fails, 1);
        return -1;
    }
    char *page = page_get(c, cls);
    if (!page)
        return -1;
    pages_append(cls, page);
    cls->carve_page = page;
    cls->end_page_ptr = page;
    cls->end_page_free = cls->perslab;
    return 0;
}

/* Class lock held: put a chunk at the head of the free list. */
static void freelist_push(struct slabclass *cls, item *it)
{
    atomic_store_explicit(&it->it_flags, ITEM_SLABBED, memory_order_relaxed);
    it->prev = NULL;
    it->next = cls->free_list;
    if (cls->free_list)
        cls->free_list->prev = it;
    cls->free_list = it;
    cls->free_count++;
}

/* Class lock held: take a listed free chunk out of the list. */
static void freelist_remove(struct slabclass *cls, item *it)
{
    if (it->prev)
        it->prev->next = it->next;
    else
        cls->free_list = it->next;
    if (it->next)
        it->next->prev = it->prev;
    it->prev = it->next = NULL;
    cls->free_count--;
}

item *slabs_alloc_nonew_locked(struct slabclass *cls)
{
    item *it = cls->free_list;
    if (it) {
        freelist_remove(cls, it);
        atomic_store_explicit(&it->it_flags, 0, memory_order_relaxed);
        return it;
    }
    if (cls->end_page_free == 0)
        return NULL;
    it = (item *)cls->end_page_ptr;
    cls->end_page_ptr += cls->size;
    if (--cls->end_page_free == 0)
        cls->carve_page = NULL;
    atomic_store_explicit(&it->it_flags, 0, memory_order_relaxed);
    return it;
}

item *slabs_alloc_locked(cache *c, struct slabclass *cls)
{
    item *it = slabs_alloc_nonew_locked(cls);
    if (it || slabs_newpage(c, cls) != 0)
        return it;
    return slabs_alloc_nonew_locked(cls);
}

/* Is the chunk in the page being emptied? */
static inline int in_evac(const struct slabclass *cls, const item *it)
{
    const char *p = (const char *)it;
    return cls->evac_page && p >= cls->evac_page && p < cls->evac_page + (size_t)cls->perslab * cls->size;
}

/* Class lock held: free one chunk (marked only, in the page being emptied). */
static void chunk_free_locked(struct slabclass *cls, item *it)
{
    if (in_evac(cls, it)) {
        atomic_store_explicit(&it->it_flags, ITEM_SLABBED, memory_order_relaxed);
        it->prev = it->next = NULL;
        return;
    }
    freelist_push(cls, it);
}

void slabs_chain_free_locked(struct slabclass *cls, item *it)
{
    if (!(atomic_load_explicit(&it->it_flags, memory_order_relaxed) & ITEM_CHAINED))
        return;
    item *k = ITEM_chain(it)->first;
    while (k) {
        item *next = k->next;
        chunk_free_locked(cls, k);
        k = next;
    }
    ITEM_chain(it)->first = NULL;
    atomic_fetch_and_explicit(&it->it_flags, (uint16_t)~ITEM_CHAINED, memory_order_relaxed);
}

void slabs_free_locked(struct slabclass *cls, item *it)
{
    slabs_chain_free_locked(cls, it);
    chunk_free_locked(cls, it);
}

int slabs_evac_claim_locked(struct slabclass *cls, item *it)
{
    if (!in_evac(cls, it))
        return 0;
    atomic_store_explicit(&it->refcount, 0, memory_order_relaxed);
    slabs_free_locked(cls, it);
    return 1;
}

uint32_t slabs_evac_begin_locked(cache *c, struct slabclass *cls, char *page)
{
    (void)c;
    uint32_t carved = cls->perslab;
    if (cls->carve_page == page) {
        carved = (uint32_t)((cls->end_page_ptr - page) / cls->size);
        cls->carve_page = NULL;
        cls->end_page_free = 0;
    }
    cls->evac_page = page;
    cls->evac_chunks = carved;
    for (uint32_t i = 0; i < carved; i++) {
        item *it = (item *)(page + (size_t)i * cls->size);
        if (atomic_load_explicit(&it->it_flags, memory_order_relaxed) & ITEM_SLABBED)
            freelist_remove(cls, it);
    }
    return carved;
}

void slabs_evac_end_locked(struct slabclass *cls, char *page)
{
    for (uint32_t i = 0; i < cls->npages; i++) {
        if (cls->pages[i] == page) {
            memmove(&cls->pages[i], &cls->pages[i + 1], (cls->npages - i - 1) * sizeof(char *));
            memmove(&cls->page_seq[i], &cls->page_seq[i + 1], (cls->npages - i - 1) * sizeof(uint32_t));
            cls->npages--;
            break;
        }
    }
    cls->evac_page = NULL;
}

int slabs_add_page_locked(struct slabclass *cls, char *page)
{
    if (pages_grow(cls) != 0)
        return -1;
    pages_append(cls, page);
    if (cls->end_page_free == 0) {
        cls->carve_page = page;
        cls->end_page_ptr = page;
        cls->end_page_free = cls->perslab;
        return 0;
    }
    /* Still carving another page: this one's chunks go on the free list. */
    for (uint32_t i = cls->perslab; i-- > 0;)
        freelist_push(cls, (item *)(page + (size_t)i * cls->size));
    return 0;
}

/* pool_lock held: give a page's memory back to the OS; it stays mapped. */
static void page_release(cache *c, char *page)
{
    (void)madvise(page, c->page_size, MADV_DONTNEED); /* a hint: the range reads as zeros */
    c->released[c->released_n++] = page;
    atomic_fetch_sub(&c->mem_malloced, c->page_size);
    atomic_fetch_add_explicit(&c->mst.pages_released, 1, memory_order_relaxed);
}

void slabs_pool_put(cache *c, char *page)
{
    pthread_mutex_lock(&c->pool_lock); /* pool[] and released[] have room: pool_reserve */
    uint64_t limit = atomic_load(&c->maxbytes);
    if (limit != 0 && atomic_load(&c->mem_malloced) > limit)
        page_release(c, page);
    else
        c->pool[c->pool_n++] = page;
    atomic_store_explicit(&c->pool_count, c->pool_n, memory_order_relaxed);
    pthread_mutex_unlock(&c->pool_lock);
}

void slabs_memory_release(cache *c)
{
    pthread_mutex_lock(&c->pool_lock);
    uint64_t limit = atomic_load(&c->maxbytes);
    while (limit != 0 && c->pool_n > 0 && atomic_load(&c->mem_malloced) > limit)
        page_release(c, c->pool[--c->pool_n]);
    atomic_store_explicit(&c->pool_count, c->pool_n, memory_order_relaxed);
    pthread_mutex_unlock(&c->pool_lock);
}
