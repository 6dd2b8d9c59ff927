/*
 * conn.c -- a connection's output queue and input carry-over.
 *
 * Responses are queued as iovecs so that a whole batch of pipelined
 * requests leaves in one send, and values leave straight from item memory.
 * Short response bytes are copied into scratch chunks that never move while
 * queued (iovecs point into them); chunks are recycled through the owner's
 * free list (conn_env).  The iovec and held-item arrays are blocks of the
 * owner's pool (bufpool.h): taken with the first queued byte, grown by
 * taking the next class up, and given back when the queue has been sent, so
 * an idle connection holds none and a busy one allocates nothing per
 * request.
 *
 * Input: the worker (worker_feed) has the protocol parse straight from the
 * backend's buffer; only the unconsumed tail (a partial line) is copied into
 * the connection's rbuf, a pooled block held until it has been parsed
 * together with the next bytes.
 *
 * A leaf: nothing here knows of workers, backends or protocols.
 */
#include "conn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Smallest block taken for each per-connection array (bytes). */
#define IOV_INITIAL_BYTES 256
#define HELD_INITIAL_BYTES 256
#define RBUF_INITIAL 4096
/* Chunks kept on an env's free list; more are freed. */
#define FREE_CHUNKS_MAX 256

/* A scratch chunk from env's free list (or malloc when empty). */
static out_chunk *chunk_get(conn_env *env)
{
    out_chunk *ch = env->free_chunks;
    if (ch) {
        env->free_chunks = ch->next;
        env->nfree_chunks--;
        SM_STAT_INC(env->stats->response_obj_count);
        return ch;
    }
    ch = malloc(sizeof(*ch));
    if (!ch) {
        SM_STAT_INC(env->stats->response_obj_oom);
        return NULL;
    }
    SM_STAT_INC(env->stats->response_obj_count);
    SM_STAT_ADD(env->stats->response_obj_bytes, sizeof(*ch));
    return ch;
}

/* Return a chunk to the free list (keeps a bounded number). */
static void chunk_put(conn_env *env, out_chunk *ch)
{
    SM_STAT_SUB(env->stats->response_obj_count, 1);
    if (env->nfree_chunks >= FREE_CHUNKS_MAX) {
        free(ch);
        SM_STAT_SUB(env->stats->response_obj_bytes, sizeof(*ch));
        return;
    }
    ch->next = env->free_chunks;
    env->free_chunks = ch;
    env->nfree_chunks++;
}

void conn_env_destroy(conn_env *env)
{
    while (env->free_chunks) {
        out_chunk *ch = env->free_chunks;
        env->free_chunks = ch->next;
        free(ch);
        SM_STAT_SUB(env->stats->response_obj_bytes, sizeof(*ch));
    }
    env->nfree_chunks = 0;
    pool_destroy(&env->pool);
}

/* Grow a pooled array of `have` bytes (holding `used` bytes) to at least `want` bytes. */
static void *pool_grow(sm_pool *p, void *old, size_t used, size_t have, size_t want, size_t *cap)
{
    size_t ask = have ? have * 2 : want;
    while (ask < want)
        ask *= 2;
    void *n = pool_take(p, ask, cap);
    if (!n)
        return NULL;
    if (used)
        memcpy(n, old, used);
    pool_give(p, old, have);
    return n;
}

void conn_init(conn *c, conn_env *env, int fd, uint32_t id)
{
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->id = id;
    c->env = env;
    c->state = CONN_PARSE;
}

void conn_cleanup(conn *c)
{
    out_reset(c);
    if (c->dump) { /* a metadump cut short: it holds no lock nor item between steps */
        free(c->dump);
        c->dump = NULL;
        cache_crawler_dump_end(c->env->cache);
    }
    if (c->nread_item) {
        cache_release(c->env->cache, c->nread_item);
        c->nread_item = NULL;
    }
    sm_pool *p = &c->env->pool;
    pool_give(p, c->rbuf, c->rsize);
    c->rbuf = NULL;
    c->rsize = c->rbytes = 0;
}

/* Make room for one more iovec. */
static int iov_reserve(conn *c)
{
    if (c->iovcnt < c->iovcap)
        return 0;
    size_t sz = sizeof(*c->iov), cap;
    struct iovec *n = pool_grow(&c->env->pool, c->iov, (size_t)c->iovcnt * sz, (size_t)c->iovcap * sz,
                                IOV_INITIAL_BYTES, &cap);
    if (!n)
        return -1;
    c->iov = n;
    c->iovcap = (int)(cap / sz);
    return 0;
}

/* Queue an iovec pointing at memory that outlives the queue (no copy). */
static int out_ref(conn *c, const char *s, size_t len)
{
    if (iov_reserve(c) < 0)
        return -1;
    c->iov[c->iovcnt].iov_base = (void *)s;
    c->iov[c->iovcnt].iov_len = len;
    c->iovcnt++;
    c->out_bytes += len;
    return 0;
}

int out_static(conn *c, const char *s, size_t len)
{
    if (len == 0)
        return 0;
    /* Short constants are copied so that a response stays one contiguous run. */
    if (len <= OUT_COPY_MAX)
        return out_copy(c, s, len);
    return out_ref(c, s, len);
}

/* A chunk with at least `need` free bytes at the tail of the queue. */
static out_chunk *chunk_with_room(conn *c, size_t need)
{
    out_chunk *t = c->chunk_tail;
    if (t && OUT_CHUNK_SIZE - t->used >= need)
        return t;
    out_chunk *n = chunk_get(c->env);
    if (!n)
        return NULL;
    n->next = NULL;
    n->used = 0;
    if (t)
        t->next = n;
    else
        c->chunk_head = n;
    c->chunk_tail = n;
    return n;
}

/* Queue bytes that were just written at the end of the tail chunk. */
static int queue_chunk_bytes(conn *c, char *p, size_t len)
{
    if (c->iovcnt > c->iov_done) {
        struct iovec *last = &c->iov[c->iovcnt - 1];
        if ((char *)last->iov_base + last->iov_len == p) {
            last->iov_len += len;
            c->out_bytes += len;
            return 0;
        }
    }
    if (iov_reserve(c) < 0)
        return -1;
    c->iov[c->iovcnt].iov_base = p;
    c->iov[c->iovcnt].iov_len = len;
    c->iovcnt++;
    c->out_bytes += len;
    return 0;
}

int out_copy(conn *c, const void *s, size_t len)
{
    const char *src = s;
    while (len > 0) {
        size_t n = len < OUT_CHUNK_SIZE ? len : OUT_CHUNK_SIZE;
        out_chunk *ch = chunk_with_room(c, n);
        if (!ch)
            return -1;
        char *dst = ch->data + ch->used;
        memcpy(dst, src, n);
        ch->used += (uint32_t)n;
        if (queue_chunk_bytes(c, dst, n) < 0)
            return -1;
        src += n;
        len -= n;
    }
    return 0;
}

char *out_reserve(conn *c, size_t max)
{
    if (max > OUT_CHUNK_SIZE)
        return NULL;
    out_chunk *ch = chunk_with_room(c, max);
    return ch ? ch->data + ch->used : NULL;
}

void out_commit(conn *c, size_t used)
{
    out_chunk *ch = c->chunk_tail;
    char *p = ch->data + ch->used;
    ch->used += (uint32_t)used;
    if (queue_chunk_bytes(c, p, used) < 0) {
        /* No room for an iovec: give the bytes back; the caller's reply is lost
         * and the connection will be closed by the protocol's OOM handling. */
        ch->used -= (uint32_t)used;
        SM_STAT_INC(c->env->stats->response_obj_oom);
    }
}

int out_printf(conn *c, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof(tmp))
        return out_copy(c, tmp, (size_t)n);
    /* Long: format straight into a chunk. */
    char *p = out_reserve(c, (size_t)n + 1);
    if (!p)
        return -1;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    out_commit(c, (size_t)n);
    return 0;
}

int out_item(conn *c, item *it, size_t len)
{
    if (c->nheld == c->heldcap) {
        size_t sz = sizeof(*c->held), cap;
        item **n = pool_grow(&c->env->pool, c->held, (size_t)c->nheld * sz, (size_t)c->heldcap * sz,
                             HELD_INITIAL_BYTES, &cap);
        if (!n) {
            cache_release(c->env->cache, it);
            return -1;
        }
        c->held = n;
        c->heldcap = (int)(cap / sz);
    }
    /*
     * The item stays referenced until the queue is sent, whether its bytes
     * are referenced or copied: that is memcached's lifetime for a response's
     * item, and what decides whether incr/decr may rewrite a value in place.
     * Small values are copied (cheaper than another iovec: a batch of
     * responses then leaves as one buffer); large ones go from item memory.
     */
    c->held[c->nheld++] = it;
    const item *nx;
    uint32_t n;
    for (const char *p = item_seg_first(it, &n, &nx); p && len > 0; p = item_seg_next(&nx, &n)) {
        size_t m = n < len ? n : len; /* a chained item: one piece per chunk */
        if ((m <= OUT_COPY_MAX ? out_copy(c, p, m) : out_ref(c, p, m)) < 0)
            return -1;
        len -= m;
    }
    return 0;
}

/* Release held items, recycle chunks, give the arrays back: everything queued is gone. */
void out_reset(conn *c)
{
    sm_pool *p = &c->env->pool;
    for (int i = 0; i < c->nheld; i++)
        cache_release(c->env->cache, c->held[i]);
    c->nheld = 0;
    pool_give(p, c->held, (size_t)c->heldcap * sizeof(*c->held));
    c->held = NULL;
    c->heldcap = 0;
    pool_give(p, c->iov, (size_t)c->iovcap * sizeof(*c->iov));
    c->iov = NULL;
    c->iovcap = 0;
    out_chunk *ch = c->chunk_head;
    while (ch) {
        out_chunk *next = ch->next;
        chunk_put(c->env, ch);
        ch = next;
    }
    c->chunk_head = c->chunk_tail = NULL;
    c->iovcnt = 0;
    c->iov_done = 0;
    c->iov_off = 0;
    c->out_bytes = 0;
}

struct iovec *conn_out_iov(conn *c, int *cnt)
{
    *cnt = c->iovcnt - c->iov_done;
    return c->iov + c->iov_done;
}

void conn_out_sent(conn *c, size_t n)
{
    c->out_bytes -= n;
    while (n > 0 && c->iov_done < c->iovcnt) {
        struct iovec *v = &c->iov[c->iov_done];
        if (n >= v->iov_len) {
            n -= v->iov_len;
            c->iov_done++;
        } else {
            v->iov_base = (char *)v->iov_base + n;
            v->iov_len -= n;
            n = 0;
        }
    }
    if (c->iov_done == c->iovcnt)
        out_reset(c);
}

bool conn_out_take_tail(conn *c, size_t tail, bool (*fn)(void *arg, const char *p, size_t len), void *arg)
{
    if (tail == 0)
        return true;
    if (tail > c->out_bytes)
        return false;
    int i = c->iovcnt;
    size_t acc = 0;
    while (acc < tail) {
        i--;
        acc += c->iov[i].iov_len;
    }
    size_t keep = acc - tail; /* bytes of iov[i] before the tail */
    int n = c->iovcnt - i;
    size_t cap;
    struct iovec *pieces = pool_take(&c->env->pool, (size_t)n * sizeof(*pieces), &cap);
    if (!pieces)
        return false;
    memcpy(pieces, c->iov + i, (size_t)n * sizeof(*pieces));
    pieces[0].iov_base = (char *)pieces[0].iov_base + keep;
    pieces[0].iov_len -= keep;
    if (keep > 0) {
        c->iov[i].iov_len = keep;
        c->iovcnt = i + 1;
    } else {
        c->iovcnt = i;
    }
    c->out_bytes -= tail;
    bool ok = true;
    for (int k = 0; k < n && ok; k++)
        ok = fn(arg, pieces[k].iov_base, pieces[k].iov_len);
    pool_give(&c->env->pool, pieces, cap);
    return ok;
}

bool conn_rbuf_append(conn *c, const char *data, size_t len)
{
    size_t need = (size_t)c->rbytes + len;
    if (need > c->rsize) {
        if (need > c->env->rbuf_max)
            return false;
        size_t want = need < RBUF_INITIAL ? RBUF_INITIAL : need, cap;
        char *n = pool_grow(&c->env->pool, c->rbuf, c->rbytes, c->rsize, want, &cap);
        if (!n) {
            SM_STAT_INC(c->env->stats->read_buf_oom);
            return false;
        }
        c->rbuf = n;
        c->rsize = (uint32_t)cap;
    }
    memcpy(c->rbuf + c->rbytes, data, len);
    c->rbytes += (uint32_t)len;
    return true;
}

void conn_rbuf_consume(conn *c, size_t used)
{
    if (used > 0) {
        memmove(c->rbuf, c->rbuf + used, c->rbytes - used);
        c->rbytes -= (uint32_t)used;
    }
}

void conn_input_done(conn *c)
{
    if (c->rbytes == 0 && c->rbuf) {
        pool_give(&c->env->pool, c->rbuf, c->rsize);
        c->rbuf = NULL;
        c->rsize = 0;
    }
}
