/*
 * prefetch.c -- batch prefetch of the keys a ring backend is about to look
 * up (see prefetch.h for why).  Only commands whose row in the command
 * table (proto/parse.h) says their keys are prefetched are peeked at (get,
 * gets and bget: every key; mg: the one key); everything else is left alone.
 */
#include <string.h>

#include "prefetch.h"
#include "proto/parse.h"

/* Longest key memcached accepts. */
#define PREFETCH_KEY_MAX 250

/* Longest command word, with room for the space after it. */
#define PREFETCH_WORD_MAX 16

void prefetch_scan(cache *c, struct prefetch_batch *pb, const char *buf, size_t len)
{
    /* the command word at the buffer's very start, and a space after it */
    const char *sp0 = memchr(buf, ' ', len < PREFETCH_WORD_MAX ? len : PREFETCH_WORD_MAX);
    if (!sp0)
        return;
    int pf = sm_cmds[sm_cmd_lookup(buf, (size_t)(sp0 - buf))].prefetch;
    if (pf == SM_PF_NONE)
        return;
    int many = pf == SM_PF_MANY;
    const char *p = sp0 + 1, *end = buf + len;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *eol = nl ? nl : end; /* no newline: the line goes on in the next read */
    if (nl && eol > p && eol[-1] == '\r')
        eol--;
    while (pb->n < PREFETCH_MAX) {
        while (p < eol && *p == ' ')
            p++;
        const char *key = p;
        const char *sp = memchr(p, ' ', (size_t)(eol - p));
        p = sp ? sp : eol;
        if (p == key || (size_t)(p - key) > PREFETCH_KEY_MAX || (!sp && !nl))
            return; /* no key, one the lookup will refuse, or one cut off by the buffer's end */
        uint32_t hv = cache_hash(key, (size_t)(p - key));
        cache_prefetch(c, hv);
        pb->hv[pb->n] = hv;
        pb->key[pb->n] = key;
        pb->nkey[pb->n] = (uint16_t)(p - key);
        pb->n++;
        if (!many || p == eol)
            return;
    }
}

void prefetch_items(cache *c, const struct prefetch_batch *pb)
{
    if (pb->n < 2)
        return;
    for (uint32_t i = 0; i < pb->n; i++)
        cache_prefetch_item(c, pb->hv[i]);
    for (uint32_t i = 0; i < pb->n; i++)
        cache_prefetch_chain(c, pb->hv[i], pb->key[i], pb->nkey[i]);
}

uint32_t prefetch_hash(struct prefetch_batch *pb, const char *key, size_t nkey)
{
    for (uint32_t i = pb->next; i < pb->n; i++) { /* lookups come in scan order */
        if (pb->key[i] == key && pb->nkey[i] == nkey) {
            pb->next = i + 1;
            return pb->hv[i];
        }
    }
    return cache_hash(key, nkey);
}
