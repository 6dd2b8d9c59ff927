/*
 * proto.c -- the byte-stream side of the memcached protocols: splitting
 * received bytes into command lines, receiving values into items as they
 * arrive, swallowing rejected values, and handing each line to the text or
 * meta protocol.  Also the number and key helpers both protocols share,
 * with memcached's exact acceptance rules.
 *
 * Everything here runs on the worker thread that owns the connection and
 * works in place on the receive buffer: nothing is allocated per request.
 */
#include "proto.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../engine_internal.h"
#include "../latency.h"
#include "../worker.h"

bool proto_key_valid(const char *key, size_t nkey)
{
    (void)key;
    return nkey > 0 && nkey <= KEY_MAX_LENGTH;
}

/* The token ended where a number must end: at a space or the end of string. */
static bool number_end_ok(const char *s, const char *end)
{
    return end != s && (*end == '\0' || isspace((unsigned char)*end));
}

bool safe_strtoull(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    *out = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE || !number_end_ok(s, end))
        return false;
    /* strtoull accepts "-1" as a huge number: refuse a sign on big values. */
    if ((long long)v < 0 && memchr(s, '-', (size_t)(end - s)) != NULL)
        return false;
    *out = v;
    return true;
}

bool safe_strtoul(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    *out = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno == ERANGE || !number_end_ok(s, end))
        return false;
    if ((long)v < 0 && memchr(s, '-', (size_t)(end - s)) != NULL)
        return false;
    /* memcached stores the unsigned long into 32 bits: it truncates. */
    *out = (uint32_t)v;
    return true;
}

bool safe_strtol(const char *s, int32_t *out)
{
    char *end;
    errno = 0;
    *out = 0;
    long v = strtol(s, &end, 10);
    if (errno == ERANGE || !number_end_ok(s, end))
        return false;
    /* Truncated to 32 bits, as memcached 1.6.18 does. */
    *out = (int32_t)(uint32_t)(unsigned long)v;
    return true;
}

bool safe_strtoll(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    *out = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE || !number_end_ok(s, end))
        return false;
    *out = v;
    return true;
}

void proto_begin_nread(conn *c, item *it)
{
    c->nread_item = it;
    c->nread_dst = ITEM_value(it);
    c->nread_left = it->nbytes;
    c->state = CONN_NREAD;
}

void proto_begin_swallow(conn *c, uint64_t n)
{
    c->swallow_left = n;
    c->state = n > 0 ? CONN_SWALLOW : CONN_PARSE;
}

/* A value has fully arrived: check its terminator and complete the store. */
static void finish_nread(conn *c)
{
    item *it = c->nread_item;
    const char *end = ITEM_value(it) + it->nbytes - 2;
    c->state = CONN_PARSE;
    if (end[0] != '\r' || end[1] != '\n') {
        /* memcached counts the store attempt even when its data is bad. */
        if (it->slabs_clsid < SM_MAX_SLAB_CLASSES)
            SM_STAT_INC(c->worker->stats.slab[it->slabs_clsid].set_cmds);
        cache_release(c->worker->cache, it);
        c->nread_item = NULL;
        /* A text noreply store stays silent even about a bad chunk (meta q does not). */
        if (!(c->pending.proto == PROTO_TEXT && c->pending.noreply))
            out_static(c, "CLIENT_ERROR bad data chunk\r\n", 29);
        return;
    }
    if (c->pending.proto == PROTO_META)
        proto_meta_complete_store(c);
    else
        proto_text_complete_store(c);
    if (c->nread_item) { /* the protocol kept no reference: drop ours */
        cache_release(c->worker->cache, c->nread_item);
        c->nread_item = NULL;
    }
    /* latency.h: the store's time runs from its line to its response */
    uint64_t now = sm_lat_now();
    c->worker->lat_clock = now;
    sm_lat_record(&c->worker->lat, c->lat_cmd, now - c->lat_start);
}

/*
 * No newline in the buffered bytes: decide whether to wait for more.
 * memcached closes a connection whose first 2048 bytes hold no newline,
 * unless it is a (long) get/gets line.
 */
static void check_long_line(conn *c, const char *p, size_t n)
{
    if (n <= SM_LINE_MAX)
        return;
    size_t i = 0;
    while (i < n && p[i] == ' ')
        i++;
    if (i <= 100 && ((n - i >= 4 && memcmp(p + i, "get ", 4) == 0) ||
                     (n - i >= 5 && memcmp(p + i, "gets ", 5) == 0)))
        return; /* a large multiget: keep reading */
    c->state = CONN_CLOSING;
}

/* Dispatch one command line (NUL-terminated in place, without "\r\n"). */
static void dispatch_line(conn *c, char *line, size_t len)
{
    /* latency.h: time each command; a store is finished in finish_nread */
    int cmd = sm_lat_classify(line, len);
    worker *w = c->worker;
    uint64_t t0 = w->lat_clock; /* one clock read per command: see latency.h */
    if (len >= 2 && line[0] == 'm' && (len == 2 || line[2] == ' '))
        proto_meta_command(c, line, len);
    else
        proto_text_command(c, line, len);
    if (c->state == CONN_NREAD) {
        c->lat_start = t0;
        c->lat_cmd = cmd;
    } else {
        uint64_t now = sm_lat_now();
        w->lat_clock = now;
        sm_lat_record(&w->lat, cmd, now - t0);
    }
}

size_t proto_process(conn *c, char *data, size_t len)
{
    size_t off = 0;
    while (off < len && c->state != CONN_CLOSING) {
        if (c->state == CONN_NREAD) {
            size_t n = len - off;
            if (n > c->nread_left)
                n = c->nread_left;
            memcpy(c->nread_dst, data + off, n);
            c->nread_dst += n;
            c->nread_left -= (uint32_t)n;
            off += n;
            if (c->nread_left == 0)
                finish_nread(c);
            continue;
        }
        if (c->state == CONN_SWALLOW) {
            size_t n = len - off;
            if (n > c->swallow_left)
                n = (size_t)c->swallow_left;
            c->swallow_left -= n;
            off += n;
            if (c->swallow_left == 0)
                c->state = CONN_PARSE;
            continue;
        }
        /* CONN_PARSE */
        if (out_pending(c) > OUT_HIGH_WATER)
            break;
        char *line = data + off;
        char *nl = memchr(line, '\n', len - off);
        if (!nl) {
            check_long_line(c, line, len - off);
            break;
        }
        size_t llen = (size_t)(nl - line);
        off += llen + 1;
        if (llen > 0 && line[llen - 1] == '\r')
            llen--;
        line[llen] = '\0';
        dispatch_line(c, line, llen);
    }
    return off;
}
