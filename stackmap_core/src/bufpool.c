/*
 * bufpool.c -- a worker's size-classed LIFO free lists of in-flight
 * buffers (see bufpool.h for why they exist and what they hold).
 */
#include "bufpool.h"

#include <stdlib.h>

/* The class of a request for size bytes (size <= POOL_MAX_SIZE). */
static inline unsigned pool_class(size_t size)
{
    if (size <= POOL_MIN_SIZE)
        return 0;
    /* ceil(log2(size)) - POOL_MIN_SHIFT */
    return (unsigned)(64 - __builtin_clzll((unsigned long long)(size - 1))) - POOL_MIN_SHIFT;
}

void *pool_take(sm_pool *p, size_t size, size_t *cap)
{
    if (size > POOL_MAX_SIZE) {
        *cap = size;
        return malloc(size);
    }
    unsigned k = pool_class(size);
    *cap = POOL_MIN_SIZE << k;
    pool_block *b = p->free[k];
    if (b) {
        p->free[k] = b->next;
        p->nfree[k]--;
        return b;
    }
    return malloc(*cap);
}

void pool_give(sm_pool *p, void *b, size_t cap)
{
    if (!b)
        return;
    if (cap > POOL_MAX_SIZE) {
        free(b);
        return;
    }
    unsigned k = pool_class(cap);
    size_t keep = POOL_KEEP_BYTES / cap;
    if (keep < POOL_KEEP_MIN)
        keep = POOL_KEEP_MIN;
    if (p->nfree[k] >= keep) {
        free(b);
        return;
    }
    pool_block *blk = b;
    blk->next = p->free[k];
    p->free[k] = blk;
    p->nfree[k]++;
}

void pool_destroy(sm_pool *p)
{
    for (unsigned k = 0; k < POOL_CLASSES; k++) {
        while (p->free[k]) {
            pool_block *b = p->free[k];
            p->free[k] = b->next;
            free(b);
        }
        p->nfree[k] = 0;
    }
}
