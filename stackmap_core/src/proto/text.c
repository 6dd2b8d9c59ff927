/*
 * text.c -- memcached's classic text protocol (get/set/delete/incr/...,
 * stats, flush_all and the other whole-server commands), answering byte
 * for byte as memcached 1.6.18 does.
 *
 * proto.c hands each handler here one parsed command line (an sm_request:
 * parse.h's tokenizer splits exactly like memcached, and its command table
 * has already checked the token count).  Each command validates its tokens
 * in memcached's order, so that a bad line gets the same error memcached
 * sends, and counts the same statistics.  Get-style commands also read the
 * unsplit remainder of a line of more than 23 tokens.
 *
 * Stores are two-step: the "set ..." line allocates the item and
 * proto_begin_nread() makes proto.c copy the value straight into it; once
 * the value (with a good "\r\n") has arrived, proto.c calls
 * proto_text_complete_store().  Rejected stores (too large, no memory) have
 * their value swallowed, as memcached does.
 *
 * Replies go to the connection's output queue: constant strings without a
 * copy, "VALUE" headers formatted into scratch, values straight from item
 * memory (the queue keeps the reference cache_get() returned).  "noreply"
 * suppresses every reply of its command, error or not, like memcached's
 * out_string().  A reply that cannot be queued (out of memory) closes the
 * connection: there is no honest partial answer.
 *
 * Notes on memcached quirks reproduced here (all checked on 1.6.18):
 *  - numbers are read with memcached's safe_strto* rules, including their
 *    truncation to 32 bits ("set k 4294967297 0 1" stores flags 1);
 *  - "delete <key> 0" and "delete <key> 0 noreply" are accepted;
 *  - a multi-key get with a key over 250 bytes answers only
 *    "CLIENT_ERROR bad command line format": the values of the keys before
 *    it are looked up (and counted) but not sent;
 *  - "flush_all" with a negative or zero delay flushes now;
 *  - "verbosity" clamps to 2;
 *  - an unknown command whose line looks like HTTP closes the connection
 *    (looks_like_http below).
 * Not implemented (answered "ERROR"): stats sizes_enable/sizes_disable.
 */
#include "proto.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine_internal.h"
#include "../tls.h"
#include "../worker.h"

/* memcached's MAX_VERBOSITY_LEVEL. */
#define MAX_VERBOSITY_LEVEL 2
/* Room for "VALUE <key> <flags> <bytes> <cas>\r\n". */
#define VALUE_HDR_MAX (6 + KEY_MAX_LENGTH + 1 + 10 + 1 + 10 + 1 + 20 + 2)

/* Decimal digits of v at p; returns the end. */
static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* The queue could not take a reply: close rather than answer half. */
static void out_failed(conn *c)
{
    c->state = CONN_CLOSING;
}

/* Queue a constant reply (with its "\r\n") unless the command said noreply. */
static void reply(conn *c, const char *s, size_t len)
{
    if (c->noreply)
        return;
    engine_log(c->worker->engine, 2, ">%d %.*s\n", c->fd, (int)(len - 2), s);
    if (out_static(c, s, len) < 0)
        out_failed(c);
}

#define REPLY(c, lit) reply((c), lit "\r\n", sizeof(lit "\r\n") - 1)

/* memcached's set_noreply_maybe(): the last real token is "noreply". */
static bool set_noreply_maybe(conn *c, const sm_token *tokens, size_t ntokens)
{
    const sm_token *t = &tokens[ntokens - 2];
    if (t->value && strcmp(t->value, "noreply") == 0)
        c->noreply = true;
    return c->noreply;
}

/* ---- get, gets, gat, gats, bget ---- */

/*
 * The keys of a get line: first the split tokens from tokens[first] on,
 * then, when the tokenizer stopped early, the untouched remainder of the
 * line (split on spaces without modifying it).
 */
typedef struct key_iter {
    const sm_token *tok;  /* next split token (length 0: the terminal one) */
    const char *rest;  /* remainder after the split tokens, or NULL */
} key_iter;

static bool next_key(key_iter *ki, const char **key, size_t *nkey)
{
    if (ki->tok->length != 0) {
        *key = ki->tok->value;
        *nkey = ki->tok->length;
        ki->tok++;
        return true;
    }
    const char *p = ki->rest;
    if (!p)
        return false;
    while (*p == ' ')
        p++;
    if (*p == '\0') {
        ki->rest = NULL;
        return false;
    }
    const char *s = p;
    while (*p != '\0' && *p != ' ')
        p++;
    *key = s;
    *nkey = (size_t)(p - s);
    ki->rest = p;
    return true;
}

/* Queue "VALUE <key> <flags> <bytes>[ <cas>]\r\n" and the value (takes over the reference). */
static bool emit_value(conn *c, item *it, bool return_cas)
{
    char *p0 = out_reserve(c, VALUE_HDR_MAX);
    if (!p0) {
        cache_release(c->worker->cache, it);
        return false;
    }
    char *p = p0;
    memcpy(p, "VALUE ", 6);
    p += 6;
    memcpy(p, ITEM_key(it), it->nkey);
    p += it->nkey;
    *p++ = ' ';
    p = put_u64(p, it->client_flags);
    *p++ = ' ';
    p = put_u64(p, ITEM_vlen(it));
    if (return_cas) {
        *p++ = ' ';
        p = put_u64(p, it->cas);
    }
    *p++ = '\r';
    *p++ = '\n';
    out_commit(c, (size_t)(p - p0));
    return out_item(c, it, it->nbytes) == 0;
}

/*
 * Look one key up for get/gets/gat/gats: count it as memcached does and,
 * when `send` and it is a hit, queue its VALUE.  false: the queue could
 * not take the reply.
 */
static bool get_one(conn *c, const char *key, size_t nkey, bool return_cas, bool touch, rel_time_t exptime,
                    bool send)
{
    worker *w = c->worker;
    cache *cc = w->cache;
    get_info info;
    item *it = cache_get(cc, key, nkey, prefetch_hash(&w->pf, key, nkey), touch ? CACHE_GET_TOUCH : 0, exptime,
                         &info);
    proto_count_get(w, key, nkey, it, touch, &info);
    proto_log_get(c, key, nkey, it, &info);
    if (!it)
        return true;
    if (!send) {
        cache_release(cc, it);
        return true;
    }
    engine_log(w->engine, 2, ">%d sending key %.*s\n", c->fd, (int)it->nkey, ITEM_key(it));
    return emit_value(c, it, return_cas);
}

bool proto_text_get_key(conn *c, const char *key, size_t nkey, bool return_cas)
{
    c->last_active = cache_now(c->worker->cache);
    return get_one(c, key, nkey, return_cas, false, 0, true);
}

static void process_get(conn *c, sm_token *tokens, bool return_cas, bool touch)
{
    worker *w = c->worker;
    cache *cc = w->cache;
    size_t first = 1;
    rel_time_t exptime = 0;
    if (touch) {
        int32_t ex;
        if (!safe_strtol(tokens[1].value, &ex)) {
            REPLY(c, "CLIENT_ERROR invalid exptime argument");
            return;
        }
        exptime = cache_realtime(cc, ex);
        first = 2;
    }
    /* The terminal token's value is the remainder when the tokenizer stopped early. */
    const sm_token *term = &tokens[first];
    while (term->length != 0)
        term++;

    /* memcached stops at the first key over 250 bytes and sends only an error. */
    key_iter ki = {&tokens[first], term->value};
    const char *key;
    size_t nkey, nvalid = 0;
    bool too_long = false;
    while (next_key(&ki, &key, &nkey)) {
        if (nkey > KEY_MAX_LENGTH) {
            too_long = true;
            break;
        }
        nvalid++;
    }

    ki = (key_iter){&tokens[first], term->value};
    for (size_t i = 0; i < nvalid && next_key(&ki, &key, &nkey); i++) {
        if (!get_one(c, key, nkey, return_cas, touch, exptime, !too_long)) {
            out_failed(c);
            return;
        }
    }
    if (too_long) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    engine_log(w->engine, 2, ">%d END\n", c->fd);
    if (out_static(c, "END\r\n", 5) < 0)
        out_failed(c);
    c->flushed = true; /* memcached sends every reply after a get's END (watch may follow) */
}

/* ---- set, add, replace, append, prepend, cas ---- */

static void process_update(conn *c, sm_token *tokens, size_t ntokens, store_op op, bool handle_cas)
{
    worker *w = c->worker;
    set_noreply_maybe(c, tokens, ntokens);
    if (tokens[1].length > KEY_MAX_LENGTH) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    const char *key = tokens[1].value;
    size_t nkey = tokens[1].length;
    uint32_t flags;
    int32_t exptime_int, vlen;
    if (!(safe_strtoul(tokens[2].value, &flags) && safe_strtol(tokens[3].value, &exptime_int) &&
          safe_strtol(tokens[4].value, &vlen))) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    rel_time_t exptime = cache_realtime(w->cache, exptime_int);
    uint64_t req_cas = 0;
    if (handle_cas && !safe_strtoull(tokens[5].value, &req_cas)) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    if (vlen < 0 || vlen > INT_MAX - 2) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    uint32_t nbytes = (uint32_t)vlen + 2;
    sm_prefix_record(w->engine->prefixes, key, nkey, SM_PREFIX_SET);
    uint32_t hv = cache_hash(key, nkey);
    alloc_error err = ALLOC_OK;
    item *it = cache_alloc(w->cache, key, nkey, flags, exptime, nbytes, &err);
    if (!it) {
        if (err == ALLOC_TOO_LARGE) {
            REPLY(c, "SERVER_ERROR object too large for cache");
            SM_STAT_INC(w->stats.store_too_large);
        } else {
            REPLY(c, "SERVER_ERROR out of memory storing object");
            SM_STAT_INC(w->stats.store_no_memory);
        }
        proto_log_store(c, key, nkey, NULL, op, err == ALLOC_TOO_LARGE ? STORE_TOO_LARGE : STORE_NO_MEMORY);
        /* A failed set must not leave the old value readable (memcached does the same). */
        if (op == STORE_SET)
            cache_delete(w->cache, key, nkey, hv, 0, 0, 0, NULL);
        proto_begin_swallow(c, nbytes);
        return;
    }
    c->pending.proto = PROTO_TEXT;
    c->pending.op = op;
    c->pending.noreply = c->noreply;
    c->pending.cas = req_cas;
    c->pending.hv = hv;
    proto_begin_nread(c, it);
}

void proto_text_complete_store(conn *c)
{
    worker *w = c->worker;
    item *it = c->nread_item;
    c->nread_item = NULL;
    c->noreply = c->pending.noreply;
    SM_STAT_INC(w->stats.slab[proto_cls(it->slabs_clsid)].set_cmds);

    store_req req = {
        .op = c->pending.op,
        .cas_compare = c->pending.op == STORE_CAS ? c->pending.cas : 0,
        .cas_new = 0,
        .invalidate = 0,
    };
    int cls = it->slabs_clsid;
    proto_log_store_lookup(c, it, c->pending.hv);
    store_result r = cache_store(w->cache, it, c->pending.hv, &req, NULL, &cls);
    proto_log_store(c, ITEM_key(it), it->nkey, it, req.op, r);
    switch (r) {
    case STORE_STORED:
        if (req.op == STORE_CAS)
            SM_STAT_INC(w->stats.slab[proto_cls(cls)].cas_hits);
        REPLY(c, "STORED");
        break;
    case STORE_EXISTS:
        SM_STAT_INC(w->stats.slab[proto_cls(cls)].cas_badval);
        REPLY(c, "EXISTS");
        break;
    case STORE_NOT_FOUND:
        SM_STAT_INC(w->stats.cas_misses);
        REPLY(c, "NOT_FOUND");
        break;
    case STORE_NOT_STORED:
    case STORE_TOO_LARGE: /* append/prepend result too big: memcached says NOT_STORED */
    case STORE_NO_MEMORY:
    default:
        REPLY(c, "NOT_STORED");
        break;
    }
    cache_release(w->cache, it);
    c->noreply = false;
}

/* ---- touch, incr/decr, delete ---- */

void proto_text_touch(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    worker *w = c->worker;
    set_noreply_maybe(c, tokens, ntokens);
    if (tokens[1].length > KEY_MAX_LENGTH) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    int32_t ex;
    if (!safe_strtol(tokens[2].value, &ex)) {
        REPLY(c, "CLIENT_ERROR invalid exptime argument");
        return;
    }
    const char *key = tokens[1].value;
    size_t nkey = tokens[1].length;
    get_info info;
    item *it = cache_get(w->cache, key, nkey, cache_hash(key, nkey), CACHE_GET_TOUCH,
                         cache_realtime(w->cache, ex), &info);
    proto_count_lookup(w, &info);
    proto_log_get(c, key, nkey, it, &info);
    SM_STAT_INC(w->stats.touch_cmds);
    if (it) {
        SM_STAT_INC(w->stats.slab[proto_cls(it->slabs_clsid)].touch_hits);
        cache_release(w->cache, it);
        REPLY(c, "TOUCHED");
    } else {
        SM_STAT_INC(w->stats.touch_misses);
        REPLY(c, "NOT_FOUND");
    }
}

static void process_arith(conn *c, sm_token *tokens, size_t ntokens, bool incr)
{
    worker *w = c->worker;
    set_noreply_maybe(c, tokens, ntokens);
    if (tokens[1].length > KEY_MAX_LENGTH) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    uint64_t delta;
    if (!safe_strtoull(tokens[2].value, &delta)) {
        REPLY(c, "CLIENT_ERROR invalid numeric delta argument");
        return;
    }
    const char *key = tokens[1].value;
    size_t nkey = tokens[1].length;
    arith_req req = {.incr = incr ? 1 : 0, .delta = delta};
    uint64_t value = 0;
    int cls = 0;
    uint32_t hv = cache_hash(key, nkey);
    proto_log_lookup(c, key, nkey, hv);
    arith_result r = cache_arith(w->cache, key, nkey, hv, &req, &value, NULL, &cls);
    proto_count_arith(w, incr, r, cls);
    switch (r) {
    case ARITH_OK:
    case ARITH_NO_MEMORY:
        if (r == ARITH_NO_MEMORY) {
            REPLY(c, "SERVER_ERROR out of memory");
        } else if (!c->noreply) {
            char buf[24];
            char *p = put_u64(buf, value);
            *p++ = '\r';
            *p++ = '\n';
            if (out_copy(c, buf, (size_t)(p - buf)) < 0)
                out_failed(c);
        }
        break;
    case ARITH_NON_NUMERIC:
        REPLY(c, "CLIENT_ERROR cannot increment or decrement non-numeric value");
        break;
    case ARITH_NOT_FOUND:
    case ARITH_EXISTS: /* no CAS given: cannot happen */
    default:
        REPLY(c, "NOT_FOUND");
        break;
    }
}

void proto_text_delete(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    worker *w = c->worker;
    if (ntokens > 3) {
        /* Only "delete <key> 0" and "delete <key> [0] noreply" survive from the old hold time. */
        bool hold_is_zero = strcmp(tokens[2].value, "0") == 0;
        bool sets_noreply = set_noreply_maybe(c, tokens, ntokens);
        bool valid = (ntokens == 4 && (hold_is_zero || sets_noreply)) ||
                     (ntokens == 5 && hold_is_zero && sets_noreply);
        if (!valid) {
            REPLY(c, "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]");
            return;
        }
    }
    if (tokens[1].length > KEY_MAX_LENGTH) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    const char *key = tokens[1].value;
    size_t nkey = tokens[1].length;
    sm_prefix_record(w->engine->prefixes, key, nkey, SM_PREFIX_DELETE);
    int cls = 0;
    uint32_t hv = cache_hash(key, nkey);
    proto_log_lookup(c, key, nkey, hv);
    delete_result dr = cache_delete(w->cache, key, nkey, hv, 0, 0, 0, &cls);
    if (dr == DEL_DELETED) {
        SM_STAT_INC(w->stats.slab[proto_cls(cls)].delete_hits);
        REPLY(c, "DELETED");
    } else {
        SM_STAT_INC(w->stats.delete_misses);
        REPLY(c, "NOT_FOUND");
    }
}

/* ---- whole-server commands ---- */

void proto_text_verbosity(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    set_noreply_maybe(c, tokens, ntokens);
    uint32_t level;
    if (!safe_strtoul(tokens[1].value, &level)) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    atomic_store(&c->worker->engine->verbose, level > MAX_VERBOSITY_LEVEL ? MAX_VERBOSITY_LEVEL : (int)level);
    REPLY(c, "OK");
}

/*
 * memcached's process_lru_command: "lru tune HOT_PCT WARM_PCT HOT_FACTOR
 * WARM_FACTOR", "lru mode flat|segmented", "lru temp_ttl TTL" (negative:
 * no TEMP LRU), each with an optional noreply; the last two answer ERROR
 * without an LRU maintainer.  Its replies, word for word.  Two inputs
 * memcached takes and we refuse: percentages whose sum wraps around 2^32,
 * and factors that are not numbers (nan).
 */
void proto_text_lru(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    cache *ca = c->worker->cache;
    set_noreply_maybe(c, tokens, ntokens);
    const char *sub = tokens[1].value;
    if (strcmp(sub, "tune") == 0 && ntokens >= 7) {
        uint32_t hot, warm;
        double hot_factor, warm_factor;
        if (!safe_strtoul(tokens[2].value, &hot) || !safe_strtoul(tokens[3].value, &warm) ||
            !safe_strtod(tokens[4].value, &hot_factor) || !safe_strtod(tokens[5].value, &warm_factor)) {
            REPLY(c, "ERROR");
        } else if ((uint64_t)hot + warm > 80) {
            REPLY(c, "ERROR hot and warm pcts must not exceed 80");
        } else if (!(warm_factor > 0) || !(hot_factor > 0)) {
            REPLY(c, "ERROR hot/warm age factors must be greater than 0");
        } else if (cache_lru_tune(ca, (int)hot, (int)warm, hot_factor, warm_factor) < 0) {
            REPLY(c, "ERROR eviction=s3fifo has no LRU segments to tune");
        } else {
            REPLY(c, "OK");
        }
    } else if (strcmp(sub, "mode") == 0 && ntokens >= 4 && cache_s3fifo(ca)) {
        REPLY(c, "ERROR eviction=s3fifo has no LRU mode");
    } else if (strcmp(sub, "mode") == 0 && ntokens >= 4) {
        const char *m = tokens[2].value;
        int seg = strcmp(m, "segmented") == 0 ? 1 : strcmp(m, "flat") == 0 ? 0 : -1;
        if (seg < 0 || cache_lru_mode(ca, seg) < 0)
            REPLY(c, "ERROR");
        else
            REPLY(c, "OK");
    } else if (strcmp(sub, "temp_ttl") == 0 && ntokens >= 4) {
        int32_t ttl;
        if (!safe_strtol(tokens[2].value, &ttl) || cache_lru_temp_ttl(ca, ttl) < 0)
            REPLY(c, "ERROR");
        else
            REPLY(c, "OK");
    } else {
        REPLY(c, "ERROR");
    }
}

void proto_text_flush_all(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    worker *w = c->worker;
    set_noreply_maybe(c, tokens, ntokens);
    SM_STAT_INC(w->stats.flush_cmds);
    if (!w->settings->flush_enabled) { /* -F: refused, but counted, as memcached counts it */
        REPLY(c, "CLIENT_ERROR flush_all not allowed");
        return;
    }
    int32_t delay = 0;
    if (ntokens != (c->noreply ? 3u : 2u)) {
        if (!safe_strtol(tokens[1].value, &delay)) {
            REPLY(c, "CLIENT_ERROR invalid exptime argument");
            return;
        }
    }
    /* A zero or negative delay means now, as in memcached. */
    cache_flush(w->cache, delay > 0 ? cache_realtime(w->cache, delay) : cache_now(w->cache));
    REPLY(c, "OK");
}

void proto_text_cache_memlimit(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    set_noreply_maybe(c, tokens, ntokens);
    uint32_t mb;
    if (!safe_strtoul(tokens[1].value, &mb)) {
        REPLY(c, "ERROR");
        return;
    }
    if (mb < 8) {
        REPLY(c, "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m");
        return;
    }
    if (mb > 1000000000) {
        REPLY(c, "MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes");
        return;
    }
    char err[128];
    if (cache_set_memlimit(c->worker->cache, (uint64_t)mb * 1024 * 1024, err, sizeof(err)) < 0) {
        REPLY(c, "MEMLIMIT_ADJUST_FAILED out of bounds or unable to adjust");
        return;
    }
    engine_log(c->worker->engine, 1, "maxbytes adjusted to %um\n", mb);
    REPLY(c, "OK");
}

/*
 * memcached 1.6.18's process_slabs_command: "slabs reassign SRC DST" (five
 * tokens with the terminal one, no noreply) and "slabs automove N|ratio R"
 * (noreply allowed), with its replies; anything else is ERROR.
 */
void proto_text_slabs(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    cache *ch = c->worker->cache;
    if (ntokens == 5 && strcmp(tokens[1].value, "reassign") == 0) {
        if (!cache_slab_reassign_enabled(ch)) {
            REPLY(c, "CLIENT_ERROR slab reassignment disabled");
            return;
        }
        int32_t src, dst;
        if (!(safe_strtol(tokens[2].value, &src) && safe_strtol(tokens[3].value, &dst))) {
            REPLY(c, "CLIENT_ERROR bad command line format");
            return;
        }
        switch (cache_slabs_reassign(ch, src, dst)) {
        case REASSIGN_OK: REPLY(c, "OK"); break;
        case REASSIGN_RUNNING: REPLY(c, "BUSY currently processing reassign request"); break;
        case REASSIGN_BADCLASS: REPLY(c, "BADCLASS invalid src or dst class id"); break;
        case REASSIGN_NOSPARE: REPLY(c, "NOSPARE source class has no spare pages"); break;
        case REASSIGN_SRC_DST_SAME: REPLY(c, "SAME src and dst class are identical"); break;
        }
        return;
    }
    if (ntokens >= 4 && strcmp(tokens[1].value, "automove") == 0) {
        set_noreply_maybe(c, tokens, ntokens);
        if (strcmp(tokens[2].value, "ratio") == 0) {
            double ratio;
            if (ntokens < 5 || !safe_strtod(tokens[3].value, &ratio)) {
                REPLY(c, "ERROR");
                return;
            }
            cache_set_automove_ratio(ch, ratio);
        } else {
            uint32_t level;
            if (!safe_strtoul(tokens[2].value, &level)) {
                REPLY(c, "CLIENT_ERROR bad command line format");
                return;
            }
            if (level > 2) {
                REPLY(c, "ERROR");
                return;
            }
            cache_set_automove(ch, (int)level);
        }
        REPLY(c, "OK");
        return;
    }
    REPLY(c, "ERROR");
}

void proto_text_shutdown(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    if (!c->worker->settings->shutdown_enabled) {
        REPLY(c, "ERROR: shutdown not enabled");
        return;
    }
    if (ntokens == 2 || (ntokens == 3 && strcmp(tokens[1].value, "graceful") == 0)) {
        /* memcached closes the asking connection without a reply. */
        engine_request_shutdown(c->worker->engine);
        c->state = CONN_CLOSING;
        return;
    }
    REPLY(c, "CLIENT_ERROR invalid shutdown mode");
}

/* memcached's refresh_certs: load the certificate files again for the
 * connections that follow; its error text is memcached's, sent even under
 * noreply (as memcached's write_and_free does). */
void proto_text_refresh_certs(conn *c, sm_request *r)
{
    set_noreply_maybe(c, r->tokens, r->ntokens);
    char err[1400];
    if (tls_refresh_certs(c->worker->engine, err, sizeof(err)) == 0) {
        REPLY(c, "OK");
        return;
    }
    c->noreply = false;
    if (out_printf(c, "%s\r\n", err) < 0)
        out_failed(c);
}

/* A stats sink that writes "STAT name value\r\n" into the output queue. */
static void conn_stat_add(sm_stat_sink *sink, const char *name, const char *value)
{
    conn *c = sink->ctx;
    if (c->state == CONN_CLOSING)
        return;
    if (out_printf(c, "STAT %s %s\r\n", name, value) < 0)
        out_failed(c);
}

/* A "stats detail dump" line into the output queue. */
static int conn_emit(void *ctx, const char *line, size_t len)
{
    return out_printf(ctx, "%.*s", (int)len, line);
}

/* "stats detail on|off|dump", memcached's answers. */
static void stats_detail(conn *c, sm_prefix_stats *p, const char *what)
{
    if (strcmp(what, "on") == 0 || strcmp(what, "off") == 0) {
        sm_prefix_enable(p, what[1] == 'n');
        REPLY(c, "OK");
    } else if (strcmp(what, "dump") == 0) {
        if (sm_prefix_dump(p, conn_emit, c) < 0 || out_static(c, "END\r\n", 5) < 0)
            out_failed(c);
    } else {
        REPLY(c, "CLIENT_ERROR usage: stats detail on|off|dump");
    }
}

/* memcached's cap on a cachedump answer. */
#define CACHEDUMP_MAX (2u * 1024u * 1024u)

/* "stats cachedump <class> <limit>": memcached's checks and answers, in its order. */
static void stats_cachedump(conn *c, sm_token *tokens, size_t ntokens)
{
    uint32_t id, limit;
    if (!c->worker->settings->dump_enabled) {
        REPLY(c, "CLIENT_ERROR stats cachedump not allowed");
        return;
    }
    if (ntokens < 5) {
        REPLY(c, "CLIENT_ERROR bad command line");
        return;
    }
    if (!safe_strtoul(tokens[2].value, &id) || !safe_strtoul(tokens[3].value, &limit)) {
        REPLY(c, "CLIENT_ERROR bad command line format");
        return;
    }
    if (id >= 64) { /* memcached's MAX_NUMBER_OF_SLAB_CLASSES */
        REPLY(c, "CLIENT_ERROR Illegal slab id");
        return;
    }
    char *buf = malloc(CACHEDUMP_MAX);
    if (!buf) {
        REPLY(c, "SERVER_ERROR out of memory writing stats");
        return;
    }
    size_t len = cache_cachedump(c->worker->cache, id, limit, buf, CACHEDUMP_MAX - 5);
    if (out_copy(c, buf, len) < 0 || out_static(c, "END\r\n", 5) < 0)
        out_failed(c);
    free(buf);
}

void proto_text_stats(conn *c, sm_request *r)
{
    sm_token *tokens = r->tokens;
    size_t ntokens = r->ntokens;
    struct sm_engine *e = c->worker->engine;
    const char *group = ntokens == 2 ? "" : tokens[1].value;
    if (ntokens > 2 && strcmp(group, "reset") == 0) {
        engine_stats_reset(e);
        REPLY(c, "RESET");
        return;
    }
    if (ntokens > 2 && strcmp(group, "detail") == 0) {
        stats_detail(c, e->prefixes, ntokens < 4 ? "" : tokens[2].value);
        return;
    }
    if (ntokens > 2 && strcmp(group, "cachedump") == 0) {
        stats_cachedump(c, tokens, ntokens);
        return;
    }
    sm_stat_sink sink = {.add = conn_stat_add, .ctx = c, .asker = c};
    if (engine_stats_group(e, group, &sink) < 0) {
        REPLY(c, "ERROR");
        return;
    }
    if (c->state != CONN_CLOSING && out_static(c, "END\r\n", 5) < 0)
        out_failed(c);
}

/* ---- the handlers the command table names for the other commands ---- */

void proto_text_get(conn *c, sm_request *r)
{
    bool touch = r->cmd == SM_CMD_gat || r->cmd == SM_CMD_gats;
    process_get(c, r->tokens, r->cmd == SM_CMD_gets || r->cmd == SM_CMD_gats, touch);
}

void proto_text_store(conn *c, sm_request *r)
{
    store_op op;
    switch (r->cmd) {
    case SM_CMD_add: op = STORE_ADD; break;
    case SM_CMD_replace: op = STORE_REPLACE; break;
    case SM_CMD_append: op = STORE_APPEND; break;
    case SM_CMD_prepend: op = STORE_PREPEND; break;
    case SM_CMD_cas: op = STORE_CAS; break;
    default: op = STORE_SET; break;
    }
    process_update(c, r->tokens, r->ntokens, op, op == STORE_CAS);
}

void proto_text_arith(conn *c, sm_request *r)
{
    process_arith(c, r->tokens, r->ntokens, r->cmd == SM_CMD_incr);
}

void proto_text_version(conn *c, sm_request *r)
{
    (void)r;
    if (out_printf(c, "VERSION %s\r\n", sm_version()) < 0)
        out_failed(c);
}

void proto_text_quit(conn *c, sm_request *r)
{
    (void)r;
    c->close_reason = SM_CLOSE_NORMAL;
    c->state = CONN_CLOSING;
}

/*
 * A line that is no command but looks like an HTTP request line: memcached
 * hangs up on it (a defence against cross-protocol requests from browsers)
 * instead of answering ERROR.  Its rule, reproduced exactly: the word is at
 * least 2 bytes, does not start one of the command families memcached
 * answers ERROR inside (a 2-byte "m?" meta word, or a word starting with
 * g, s, a, c, i, d or t), is none of memcached's other commands, and the
 * last split token (the 23rd when the line has more) starts with "HTTP/".
 * "GET / HTTP/1.0", "PUT /x HTTP/1.1" and "DELETE HTTP/1.1" close;
 * "get / HTTP/1.0" is a get and "dance HTTP/1.1" is ERROR.
 */
static bool looks_like_http(const sm_request *r)
{
    /* memcached commands reached after its letter branches that stackmapd does not implement */
    static const char *const others[] = {"lru_crawler", "watch", "lru", "misbehave", "extstore",
                                         "refresh_certs"};
    if (r->cmd != SM_CMD_NONE || r->ntokens < 2 || r->tokens[0].length < 2)
        return false;
    const char *w = r->tokens[0].value;
    if (w[0] == 'm' && r->tokens[0].length == 2)
        return false;
    if (strchr("gsacidt", w[0]) != NULL)
        return false;
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        if (strcmp(w, others[i]) == 0)
            return false;
    return strncmp(r->tokens[r->ntokens - 2].value, "HTTP/", 5) == 0;
}

void proto_text_unknown(conn *c, sm_request *r)
{
    if (looks_like_http(r)) {
        c->state = CONN_CLOSING;
        return;
    }
    REPLY(c, "ERROR");
}
