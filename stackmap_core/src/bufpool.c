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
        if (p->stats)
            SM_STAT_SUB(p->stats->read_buf_bytes_free, *cap);
        return b;
    }
    void *n = malloc(*cap);
    if (n && p->stats) {
        SM_STAT_INC(p->stats->read_buf_count);
        SM_STAT_ADD(p->stats->read_buf_bytes, *cap);
    }
    return n;
}

/* A pooled block of cap bytes is freed: it leaves the allocated gauges. */
static inline void pool_forget(sm_pool *p, size_t cap)
{
    if (p->stats) {
        SM_STAT_SUB(p->stats->read_buf_count, 1);
        SM_STAT_SUB(p->stats->read_buf_bytes, cap);
    }
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
        pool_forget(p, cap);
        return;
    }
    pool_block *blk = b;
    blk->next = p->free[k];
    p->free[k] = blk;
    p->nfree[k]++;
    if (p->stats)
        SM_STAT_ADD(p->stats->read_buf_bytes_free, cap);
}

void pool_destroy(sm_pool *p)
{
    for (unsigned k = 0; k < POOL_CLASSES; k++) {
        while (p->free[k]) {
            pool_block *b = p->free[k];
            p->free[k] = b->next;
            free(b);
            pool_forget(p, POOL_MIN_SIZE << k);
            if (p->stats)
                SM_STAT_SUB(p->stats->read_buf_bytes_free, POOL_MIN_SIZE << k);
        }
        p->nfree[k] = 0;
    }
}
