/*
 * prefetch.h -- overlap the cache misses of a batch of requests.
 *
 * A ring backend reaps many connections' requests at once.  Looked up one
 * after the other, each get stalls on its own misses (stripe lock, bucket,
 * item); perf shows hash_find as the largest user-space cost.  Before the
 * batch is executed, prefetch_scan() peeks at each received buffer, finds
 * the keys of the get-type commands at its start and prefetches their
 * stripes and buckets; prefetch_items() then prefetches each bucket's first
 * item and, where that item is not the key (a third of hits at the table's
 * usual load), the next one in the chain.  Nothing is parsed for real here:
 * a buffer that is not a command start (a value, the tail of a split
 * request) just prefetches a useless line, and the protocol parses
 * everything again as usual.
 */
#ifndef SM_PREFETCH_H
#define SM_PREFETCH_H

#include <stddef.h>
#include <stdint.h>

#include "cache/cache.h"

/* Keys prefetched per window at most.  With a hit's value prefetched too
 * (up to 32 lines a key), 16 measured about 1% less CPU than 32 at both 64 B
 * and 1 KiB values: a larger window's lines evict each other before use. */
#define PREFETCH_MAX 16

/*
 * The keys of one batch (one per worker, in struct worker).  The hashes are
 * kept for the lookups themselves: a key is recognised by its address in the
 * receive buffer, which the protocol parses in place, so the same bytes are
 * not hashed twice.  Valid only while the batch runs (prefetch_reset).
 */
struct prefetch_batch {
    uint32_t n;                       /* keys recorded */
    uint32_t next;                    /* first key not yet looked up */
    uint32_t hv[PREFETCH_MAX];        /* their hashes */
    const char *key[PREFETCH_MAX];    /* where each key is in its receive buffer */
    uint16_t nkey[PREFETCH_MAX];      /* and its length */
};

/* Forget the keys: before a batch, and after it (its buffers go back to the
 * kernel, so the recorded addresses mean nothing any more). */
static inline void prefetch_reset(struct prefetch_batch *pb)
{
    pb->n = 0;
    pb->next = 0;
}

/* Stage one for one received buffer: hash the keys at its start when its
 * command word's row in the command table (proto/parse.h) says to. */
void prefetch_scan(cache *c, struct prefetch_batch *pb, const char *buf, size_t len);
/* Stages two and three for the whole batch: each bucket's first item, then
 * the second where the first is not the key (nothing for a lone key, whose
 * lookup comes right after anyway). */
void prefetch_items(cache *c, const struct prefetch_batch *pb);
/* cache_hash(key, nkey), reusing the hash stage one computed for these bytes. */
uint32_t prefetch_hash(struct prefetch_batch *pb, const char *key, size_t nkey);

#endif
