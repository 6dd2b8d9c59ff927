/*
 * hugemem.h -- huge-page backed memory for the hash table and slab pages
 * (see hugemem.c for why).
 */
#ifndef SM_HUGEMEM_H
#define SM_HUGEMEM_H

#include <pthread.h>
#include <stddef.h>

/* Default size of one slab-page region: address space reserved at a time. */
#define ARENA_REGION ((size_t)64 << 20)

/* Zeroed memory of bytes; huge-page backed when at least 2 MiB. */
void *hugemem_alloc(size_t bytes);
/* Frees what hugemem_alloc(bytes) returned; bytes must be the same. */
void hugemem_free(void *p, size_t bytes);

struct arena_region;

/* Slab pages handed out in order from huge-page regions. */
struct page_arena {
    pthread_mutex_t lock;          /* guards everything below (taken per new page) */
    size_t region_bytes;           /* size of each new region */
    char *cur;                     /* next free byte of the newest region */
    size_t left;                   /* bytes left after cur in the newest region */
    struct arena_region *regions;  /* every region, newest first, for destroy */
};

void page_arena_init(struct page_arena *a, size_t region_bytes);
/* One page of page_size bytes (zeroed, never used before), or NULL. */
void *page_arena_take(struct page_arena *a, size_t page_size);
/* Unmaps every region: every page taken is gone. */
void page_arena_destroy(struct page_arena *a);

#endif
