/*
 * hugemem.c -- the cache's big allocations on transparent huge pages.
 *
 * Why: a get touches a random hash bucket and a random item.  With 4 KiB
 * pages each of those is also a TLB miss, and in a virtual machine a TLB
 * miss walks two page tables (guest and host), which perf shows as the
 * single largest user-space cost of a get (hash_find).  Backing the hash
 * table and the slab pages with 2 MiB pages cuts those walks to a handful
 * of TLB entries.
 *
 * How: anonymous mmap, aligned to 2 MiB by over-mapping and trimming, then
 * madvise(MADV_HUGEPAGE), which asks for huge pages even where the system's
 * THP policy is "madvise" (Debian's default).  Where THP is off the memory
 * is simply ordinary pages; nothing here depends on getting huge ones.
 *
 *   - hugemem_alloc/hugemem_free: one zeroed block (the hash tables).
 *     Blocks under 2 MiB use calloc: a huge page for them would mostly be
 *     unused memory.
 *   - page_arena: slab pages carved in order from 2 MiB-aligned regions of
 *     ARENA_REGION bytes.  Only the carved part of a region is ever touched,
 *     so the untouched rest costs address space, not memory (at most one
 *     huge page past the last slab page).  Regions are unmapped together
 *     by page_arena_destroy; slab pages are never unmapped one by one
 *     (slabs.c gives a page's memory back with MADV_DONTNEED and keeps its
 *     address range for reuse).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MADV_HUGEPAGE */
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hugemem.h"

#define HUGE_SIZE ((size_t)2 << 20)

static size_t round_huge(size_t n)
{
    return (n + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
}

/* A 2 MiB-aligned, zeroed mapping of round_huge(bytes), advised huge; NULL on failure. */
static void *map_huge(size_t bytes)
{
    size_t len = round_huge(bytes);
    size_t over = len + HUGE_SIZE;
    char *raw = mmap(NULL, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uintptr_t start = ((uintptr_t)raw + HUGE_SIZE - 1) & ~(uintptr_t)(HUGE_SIZE - 1);
    size_t head = start - (uintptr_t)raw;
    if (head)
        munmap(raw, head);
    size_t tail = over - head - len;
    if (tail)
        munmap((char *)start + len, tail);
    (void)madvise((void *)start, len, MADV_HUGEPAGE); /* a hint: fine if refused */
    return (void *)start;
}

void *hugemem_alloc(size_t bytes)
{
    if (bytes < HUGE_SIZE)
        return calloc(1, bytes ? bytes : 1);
    return map_huge(bytes);
}

void hugemem_free(void *p, size_t bytes)
{
    if (!p)
        return;
    if (bytes < HUGE_SIZE)
        free(p);
    else
        munmap(p, round_huge(bytes));
}

/* A region's header lives in its own small allocation, not in the region. */
struct arena_region {
    struct arena_region *next; /* older region, or NULL */
    char *base;                /* the 2 MiB-aligned mapping */
    size_t len;                /* its length */
};

void page_arena_init(struct page_arena *a, size_t region_bytes)
{
    memset(a, 0, sizeof(*a));
    a->region_bytes = round_huge(region_bytes ? region_bytes : ARENA_REGION);
    pthread_mutex_init(&a->lock, NULL);
}

void *page_arena_take(struct page_arena *a, size_t page_size)
{
    pthread_mutex_lock(&a->lock);
    if (a->left < page_size) {
        size_t len = page_size > a->region_bytes ? round_huge(page_size) : a->region_bytes;
        struct arena_region *r = malloc(sizeof(*r));
        char *base = r ? map_huge(len) : NULL;
        if (!base) {
            free(r);
            pthread_mutex_unlock(&a->lock);
            return NULL;
        }
        r->base = base;
        r->len = len;
        r->next = a->regions;
        a->regions = r;
        a->cur = base; /* the old region's tail (less than one page) stays unused */
        a->left = len;
    }
    void *page = a->cur;
    a->cur += page_size;
    a->left -= page_size;
    pthread_mutex_unlock(&a->lock);
    return page;
}

void page_arena_destroy(struct page_arena *a)
{
    struct arena_region *r = a->regions;
    while (r) {
        struct arena_region *next = r->next;
        munmap(r->base, r->len);
        free(r);
        r = next;
    }
    a->regions = NULL;
    a->cur = NULL;
    a->left = 0;
    pthread_mutex_destroy(&a->lock);
}
