/*
 * stats_prefix.c -- per-prefix statistics (stats_prefix.h says why).
 *
 * memcached keeps the prefixes in 256 buckets chosen by its key hash
 * (MurmurHash3 x86-32, seed 0, memcached 1.6's default) of the prefix, a
 * new prefix going to the head of its bucket, and dumps bucket 0 to 255:
 * the same layout here gives the same order.  It also finds a prefix by
 * comparing only the new key's prefix length against the stored prefix
 * (so "fo" counts under a stored "foo" of the same bucket); kept, as that
 * is what memcached answers.  Each bucket has its own lock.
 */
#include "stats_prefix.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"

#define PREFIX_BUCKETS 256

typedef struct prefix_entry {
    struct prefix_entry *next; /* next in the bucket (newer entries first) */
    uint64_t gets;             /* get-type lookups of keys with this prefix */
    uint64_t hits;             /* ... that found the item */
    uint64_t sets;             /* store commands */
    uint64_t deletes;          /* delete commands, found or not */
    size_t len;                /* bytes of prefix */
    char prefix[];             /* the prefix, NUL-terminated */
} prefix_entry;

struct sm_prefix_stats {
    atomic_bool enabled; /* "stats detail on" */
    char delimiter;      /* where a prefix ends (memcached's -D, ':') */
    struct {
        pthread_mutex_t lock; /* guards head and its entries' counters */
        prefix_entry *head;   /* the bucket's entries, newest first */
    } bucket[PREFIX_BUCKETS];
};

sm_prefix_stats *sm_prefix_create(char delimiter)
{
    sm_prefix_stats *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->delimiter = delimiter;
    atomic_init(&p->enabled, false);
    for (int i = 0; i < PREFIX_BUCKETS; i++)
        pthread_mutex_init(&p->bucket[i].lock, NULL);
    return p;
}

static void free_chain(prefix_entry *e)
{
    while (e) {
        prefix_entry *next = e->next;
        free(e);
        e = next;
    }
}

void sm_prefix_destroy(sm_prefix_stats *p)
{
    if (!p)
        return;
    for (int i = 0; i < PREFIX_BUCKETS; i++) {
        free_chain(p->bucket[i].head);
        pthread_mutex_destroy(&p->bucket[i].lock);
    }
    free(p);
}

void sm_prefix_enable(sm_prefix_stats *p, bool on)
{
    atomic_store_explicit(&p->enabled, on, memory_order_relaxed);
}

bool sm_prefix_enabled(const sm_prefix_stats *p)
{
    return atomic_load_explicit(&p->enabled, memory_order_relaxed);
}

void sm_prefix_record(sm_prefix_stats *p, const char *key, size_t nkey, enum sm_prefix_op op)
{
    if (!sm_prefix_enabled(p))
        return;
    size_t len = 0;
    while (len < nkey && key[len] != '\0' && key[len] != p->delimiter)
        len++;
    if (len == nkey || key[len] != p->delimiter)
        return; /* no delimiter: memcached counts nothing */
    int b = (int)(cache_hash_seeded(key, len, 0) % PREFIX_BUCKETS);
    pthread_mutex_lock(&p->bucket[b].lock);
    prefix_entry *e = p->bucket[b].head;
    while (e && !(e->len >= len && memcmp(e->prefix, key, len) == 0))
        e = e->next;
    if (!e) {
        e = calloc(1, sizeof(*e) + len + 1);
        if (!e) { /* as memcached: the command is served, this count is lost */
            pthread_mutex_unlock(&p->bucket[b].lock);
            return;
        }
        memcpy(e->prefix, key, len);
        e->len = len;
        e->next = p->bucket[b].head;
        p->bucket[b].head = e;
    }
    switch (op) {
    case SM_PREFIX_GET_HIT:
        e->hits++;
        /* fall through */
    case SM_PREFIX_GET_MISS:
        e->gets++;
        break;
    case SM_PREFIX_SET:
        e->sets++;
        break;
    case SM_PREFIX_DELETE:
        e->deletes++;
        break;
    }
    pthread_mutex_unlock(&p->bucket[b].lock);
}

void sm_prefix_clear(sm_prefix_stats *p)
{
    for (int i = 0; i < PREFIX_BUCKETS; i++) {
        pthread_mutex_lock(&p->bucket[i].lock);
        prefix_entry *chain = p->bucket[i].head;
        p->bucket[i].head = NULL;
        pthread_mutex_unlock(&p->bucket[i].lock);
        free_chain(chain);
    }
}

int sm_prefix_dump(sm_prefix_stats *p, int (*emit)(void *ctx, const char *line, size_t len), void *ctx)
{
    char line[512];
    for (int i = 0; i < PREFIX_BUCKETS; i++) {
        pthread_mutex_lock(&p->bucket[i].lock);
        for (prefix_entry *e = p->bucket[i].head; e; e = e->next) {
            /* a prefix is at most a key: 250 bytes, so the line fits */
            int n = snprintf(line, sizeof(line), "PREFIX %s get %llu hit %llu set %llu del %llu\r\n", e->prefix,
                             (unsigned long long)e->gets, (unsigned long long)e->hits,
                             (unsigned long long)e->sets, (unsigned long long)e->deletes);
            if (n < 0 || (size_t)n >= sizeof(line) || emit(ctx, line, (size_t)n) < 0) {
                pthread_mutex_unlock(&p->bucket[i].lock);
                return -1;
            }
        }
        pthread_mutex_unlock(&p->bucket[i].lock);
    }
    return 0;
}
