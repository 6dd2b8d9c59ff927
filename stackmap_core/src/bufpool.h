/*
 * bufpool.h -- a worker's pool of buffers for data in flight.
 *
 * Most connections are idle most of the time.  What a connection needs only
 * while bytes move through it -- the carry-over of a partial request, the
 * output queue's iovec and held-item arrays, the io_uring send snapshot --
 * is taken from its worker's pool when the bytes
 * arrive and given back as soon as they have gone, so an idle connection
 * holds just its small struct (memcached's rule too: its read buffers come
 * from a per-thread cache while a connection is busy).
 *
 * Blocks come in power-of-two size classes, POOL_MIN_SIZE to POOL_MAX_SIZE;
 * each class is a LIFO free list, so the block given back last -- still in
 * the cache -- is the next one taken.  Take and give are O(1) and touch only
 * the worker's own pool: no lock, and no malloc once the lists hold what the
 * load needs.  A class keeps at most POOL_KEEP_BYTES of free blocks (and at
 * least POOL_KEEP_MIN); beyond that a given-back block is freed.  Requests
 * above POOL_MAX_SIZE (a rare huge request line or multi-get) are plain
 * malloc and free.
 *
 * The pool keeps three gauges in its owner's counters (stats.h), which
 * "stats" prints as memcached's read_buf_count, read_buf_bytes and
 * read_buf_bytes_free (memcached's per-thread cache of 16 KiB read buffers
 * holds the same kind of memory): the pooled blocks allocated now, in use or
 * free, their bytes, and the bytes of those on the free lists.  Blocks above
 * POOL_MAX_SIZE are not counted, as memcached leaves out the read buffers it
 * mallocs past its cache.  Only the owner writes them (relaxed load+store).
 */
#ifndef SM_BUFPOOL_H
#define SM_BUFPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "stats.h"

/* Smallest block (log2 and bytes). */
#define POOL_MIN_SHIFT 8
#define POOL_MIN_SIZE ((size_t)1 << POOL_MIN_SHIFT)
/* Number of size classes: POOL_MIN_SIZE << 0 .. POOL_MIN_SIZE << (POOL_CLASSES - 1). */
#define POOL_CLASSES 13
/* Largest pooled block (1 MiB). */
#define POOL_MAX_SIZE (POOL_MIN_SIZE << (POOL_CLASSES - 1))
/* Free bytes one class keeps at most, and free blocks it keeps at least. */
#define POOL_KEEP_BYTES ((size_t)1 << 20)
#define POOL_KEEP_MIN 4

/* A free block's first bytes: the link of its class's free list. */
typedef struct pool_block {
    struct pool_block *next; /* next free block of the same class */
} pool_block;

/* One worker's pool (in struct worker; zero-initialised is empty). */
typedef struct sm_pool {
    pool_block *free[POOL_CLASSES]; /* LIFO free list of each class */
    uint32_t nfree[POOL_CLASSES];   /* blocks on each list */
    struct sm_thread_stats *stats;  /* where read_buf_count/_bytes/_bytes_free are kept, or NULL */
} sm_pool;

/*
 * A block of at least `size` bytes (> 0); *cap gets its real size, which
 * pool_give needs back.  NULL when memory is exhausted.
 */
void *pool_take(sm_pool *p, size_t size, size_t *cap);
/* Give back a block of capacity cap (as pool_take reported it); NULL is ignored. */
void pool_give(sm_pool *p, void *b, size_t cap);
/* Free every block on the lists (the worker is gone). */
void pool_destroy(sm_pool *p);

#endif
