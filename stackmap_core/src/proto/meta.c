/*
 * meta.c -- memcached 1.6's meta commands: mg, ms, md, ma, mn and me.
 *
 * Why this file exists: the meta protocol is memcached's modern text
 * protocol (one command letter pair, a key, then single-letter flags with
 * optional tokens), and clients that use it expect memcached 1.6.18's
 * answers byte for byte -- including its error strings, which flags each
 * command accepts, in which order response flags come back, and the
 * recache "win" logic (W/X/Z).  The text protocol lives in text.c; value
 * reading (NREAD/SWALLOW) in proto.c; tokenizer and number rules in parse.c.
 *
 * How a request is handled: proto.c has split the line (parse.h, memcached's
 * tokenizer) and the command table chose the handler here; the flags are
 * checked in one pass exactly as memcached's flag pre-parser does (first
 * character of each token; duplicates and unknown letters are errors, a
 * bad numeric token is remembered but parsing goes on) into a meta_flags,
 * then the command runs against the cache and its response line is built
 * in a stack buffer by walking the request flags again in order (the order
 * is part of the answer).  An ms keeps only what its response needs in
 * c->pending.meta until its value is in.  Nothing is allocated per
 * request: values go out straight from item memory (out_item).
 *
 * Compatibility notes (memcached 1.6.18 is the reference; all checked
 * against the real binary):
 *  - q hides: mg's EN, ms's HD, md's HD, ma's HD/VA (but not a vivified
 *    ma's HD); errors and the other codes always go out.
 *  - Flag order matters: T/N change the TTL at their position, so "t"
 *    before "T" prints the old TTL.
 *  - Only "me" counts towards meta_cmds (cmd_meta), as in memcached.
 *  - Numbers parse like memcached's 64-bit safe_strtol/strtoul: a value
 *    beyond 32 bits is truncated ("T4294967396" is T100), not refused.
 *  - A key sent with b keeps ITEM_KEY_BINARY on the item (ms only, as in
 *    memcached), so k and me echo it base64-encoded later.
 *  - Known differences: an mg whose O token is too long answers the error
 *    before touching the item (memcached may already have applied T or
 *    vivified it); me's size= is our item's real size.
 *  - Newer-memcached extensions accepted here (1.6.18 answers "invalid
 *    flag" to them): E<cas> on mg (CAS of a vivified item) and ms (CAS of
 *    the stored item), x on md (drop the value, keep the item).  E on md
 *    and ma is refused: the cache API has no way to pass a new CAS there.
 *    E takes 1..2^63-1 only and raises the CAS counter (cache.h,
 *    SM_CAS_EXPLICIT_MAX); every other E is "invalid flag", as in 1.6.18.
 */
#include "proto/proto.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cache/cache.h"
#include "conn.h"
#include "stats.h"
#include "worker.h"

/*
 * exptime, time and cas of a linked item are read by other threads (the
 * cache's reclaimer) without the item lock: access them the way the cache
 * does, as relaxed atomics.
 */
#define META_LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define META_ST(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

/* memcached's MFLAG_MAX_OPT_LENGTH: more tokens than this is an error. */
#define META_MAX_NTOKENS 20
/* memcached's MFLAG_MAX_OPAQUE_LENGTH: longest O token, 'O' included. */
#define META_MAX_OPAQUE 32
_Static_assert(sizeof(((pending_store *)0)->meta.opaque) == META_MAX_OPAQUE - 1,
               "an ms keeps its O token's bytes in pending_store");
/* Room for any response line: code, 17 flags, a base64 key, numbers. */
#define META_LINE_BUF 2048

/* What the flags of one request asked for (memcached's _meta_flags). */
typedef struct meta_flags {
    bool key_binary;         /* b: the key token was base64, now decoded */
    bool no_update;          /* u: do not bump in the LRU */
    bool vivify;             /* N: create on miss */
    bool value;              /* v: return the value */
    bool set_stale;          /* I: invalidate */
    bool no_reply;           /* q: hide nominal responses */
    bool has_cas;            /* C given */
    bool has_cas_new;        /* E given */
    bool new_ttl;            /* T given */
    bool remove_val;         /* x (md): drop the value, keep the item */
    bool has_error;          /* a token was bad; errstr says which */
    char mode;               /* M token: ms E/A/P/R/S, ma I/+/D/- (0: none) */
    rel_time_t exptime;      /* T */
    rel_time_t autoviv_exptime; /* N */
    rel_time_t recache_time; /* R */
    uint32_t client_flags;   /* F */
    uint64_t req_cas;        /* C */
    uint64_t cas_new;        /* E */
    uint64_t delta;          /* D (ma), default 1 */
    uint64_t initial;        /* J (ma), default 0 */
} meta_flags;

static const char ERR_FORMAT[] = "CLIENT_ERROR bad command line format";
static const char ERR_BAD_TOKEN[] = "CLIENT_ERROR bad token in command line format";
static const char ERR_OPAQUE[] = "CLIENT_ERROR opaque token too long";

/* ---- base64 (RFC 4648 alphabet, memcached's tolerant decoder rules) ---- */

static const char b64_alphabet[64] = {
    'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', 'P',
    'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'a', 'b', 'c', 'd', 'e', 'f',
    'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v',
    'w', 'x', 'y', 'z', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '+', '/'};

/* Value of a base64 character; '=' counts as 0 (padding); -1 otherwise. */
static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    if (ch == '=')
        return 0;
    return -1;
}

/* Encode n bytes into out (room for 4*ceil(n/3)); returns the length. */
static size_t b64_encode(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = (i + 1 < n) ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

/*
 * Decode in place.  Like memcached: characters outside the alphabet are
 * skipped, the alphabet characters (with '=') must come in groups of four,
 * decoding stops after the first group holding padding, and more than two
 * '=' is invalid.  Returns the decoded length, 0 on failure.
 */
static size_t b64_decode_inplace(char *buf, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (b64_value((unsigned char)buf[i]) >= 0)
            count++;
    if (count == 0 || count % 4 != 0)
        return 0;

    size_t o = 0, k = 0;
    int pad = 0;
    uint32_t block = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)buf[i]);
        if (v < 0)
            continue;
        if (buf[i] == '=')
            pad++;
        block = (block << 6) | (uint32_t)v;
        if (++k == 4) {
            /* o <= i - 3 here: the output never overtakes the input */
            buf[o++] = (char)(block >> 16);
            buf[o++] = (char)(block >> 8);
            buf[o++] = (char)block;
            k = 0;
            block = 0;
            if (pad) {
                if (pad > 2)
                    return 0;
                o -= (size_t)pad;
                break;
            }
        }
    }
    return o;
}

/* ---- small formatting helpers over a bounded buffer ---- */

/* A response line being built. */
typedef struct meta_line {
    char buf[META_LINE_BUF]; /* the bytes */
    size_t n;                /* bytes used */
} meta_line;

static void ml_put(meta_line *l, const char *s, size_t n)
{
    if (n > sizeof(l->buf) - l->n)
        n = sizeof(l->buf) - l->n;
    memcpy(l->buf + l->n, s, n);
    l->n += n;
}

static void ml_u64(meta_line *l, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    ml_put(l, tmp, (size_t)n);
}

/* " <c><number>" */
static void ml_flag_u64(meta_line *l, char flag, uint64_t v)
{
    char tmp[2] = {' ', flag};
    ml_put(l, tmp, 2);
    ml_u64(l, v);
}

/* " k<key>", base64 plus " b" for binary keys (memcached's META_KEY). */
static void ml_key(meta_line *l, const char *key, size_t nkey, bool binary)
{
    ml_put(l, " k", 2);
    if (!binary) {
        ml_put(l, key, nkey);
        return;
    }
    char enc[((KEY_MAX_LENGTH + 2) / 3) * 4 + 4];
    size_t n = b64_encode((const unsigned char *)key, nkey > KEY_MAX_LENGTH ? KEY_MAX_LENGTH : nkey, enc);
    ml_put(l, enc, n);
    ml_put(l, " b", 2);
}

/* " t<ttl>": -1 for never, else the remaining seconds as memcached's u32. */
static void ml_ttl(meta_line *l, rel_time_t exptime, rel_time_t now)
{
    if (exptime == 0)
        ml_put(l, " t-1", 4);
    else
        ml_flag_u64(l, 't', (uint32_t)(exptime - now));
}

static void ml_crlf(meta_line *l) { ml_put(l, "\r\n", 2); }

/* Queue a built line; out of memory closes the connection (stream broken). */
static bool meta_send(conn *c, const meta_line *l)
{
    if (out_copy(c, l->buf, l->n) < 0) {
        c->state = CONN_CLOSING;
        return false;
    }
    return true;
}

/* Queue an error line ("CLIENT_ERROR ..."): errors are never suppressed. */
static void meta_error(conn *c, const char *msg)
{
    out_static(c, msg, strlen(msg));
    out_static(c, "\r\n", 2);
}

/* ---- flag parsing ---- */

/* A TTL token as memcached converts it (negative: already expired). */
static bool meta_ttl_token(conn *c, const char *s, rel_time_t *out)
{
    int32_t v;
    if (!safe_strtol(s, &v))
        return false;
    *out = cache_realtime(c->worker->cache, v);
    return true;
}

/*
 * memcached's _meta_flag_preparse for the tokens from `start` up to the
 * terminal one.  cmd is the command letter ('g', 's', 'd', 'a'): it only
 * decides which newer-memcached flags (E, x) are accepted.  Returns false
 * with *errstr set on any error; unknown and repeated flags stop at once,
 * bad tokens are remembered and the scan goes on (so a later error wins).
 */
static bool meta_preparse(conn *c, sm_token *t, size_t ntokens, size_t start, char cmd,
                          meta_flags *of, const char **errstr)
{
    uint8_t seen[128] = {0};
    for (size_t i = start; i < ntokens - 1; i++) {
        uint8_t o = (uint8_t)t[i].value[0];
        if (o >= 127 || seen[o]) {
            *errstr = "CLIENT_ERROR duplicate flag";
            return false;
        }
        seen[o] = 1;
        const char *tok = t[i].value + 1;
        switch (o) {
        case 'b': {
            size_t n = b64_decode_inplace(t[1].value, t[1].length);
            if (n == 0) {
                *errstr = "CLIENT_ERROR error decoding key";
                of->has_error = true;
            }
            t[1].length = n;
            of->key_binary = true;
            break;
        }
        case 'N':
            of->vivify = true;
            if (!meta_ttl_token(c, tok, &of->autoviv_exptime)) {
                *errstr = ERR_BAD_TOKEN;
                of->has_error = true;
            }
            break;
        case 'T':
            if (!meta_ttl_token(c, tok, &of->exptime)) {
                *errstr = ERR_BAD_TOKEN;
                of->has_error = true;
            } else {
                of->new_ttl = true;
            }
            break;
        case 'R':
            if (!meta_ttl_token(c, tok, &of->recache_time)) {
                *errstr = ERR_BAD_TOKEN;
                of->has_error = true;
            }
            break;
        case 'l': case 'h': case 'O': case 'P': case 'L':
        case 'k': case 's': case 't': case 'c': case 'f':
            break;
        case 'v':
            of->value = true;
            break;
        case 'u':
            of->no_update = true;
            break;
        case 'q':
            of->no_reply = true;
            break;
        case 'F':
            if (!safe_strtoul(tok, &of->client_flags))
                of->has_error = true; /* memcached keeps the generic errstr here */
            break;
        case 'C':
            if (!safe_strtoull(tok, &of->req_cas)) {
                *errstr = ERR_BAD_TOKEN;
                of->has_error = true;
            } else {
                of->has_cas = true;
            }
            break;
        case 'M':
            if (t[i].length != 2) {
                *errstr = "CLIENT_ERROR incorrect length for M token";
                of->has_error = true;
            } else {
                of->mode = t[i].value[1];
            }
            break;
        case 'J':
            if (!safe_strtoull(tok, &of->initial)) {
                *errstr = "CLIENT_ERROR invalid numeric initial value";
                of->has_error = true;
            }
            break;
        case 'D':
            if (!safe_strtoull(tok, &of->delta)) {
                *errstr = "CLIENT_ERROR invalid numeric delta value";
                of->has_error = true;
            }
            break;
        case 'I':
            of->set_stale = true;
            break;
        case 'E': /* newer memcached: explicit new CAS value */
            /*
             * Only a CAS of 1..SM_CAS_EXPLICIT_MAX on mg/ms is taken (cache.h:
             * larger ones would let the counter wrap, 0 is "no CAS").  Any
             * other E gets what 1.6.18 answers to every E: "invalid flag",
             * stopping the scan.
             */
            if ((cmd != 'g' && cmd != 's') || !safe_strtoull(tok, &of->cas_new) || of->cas_new == 0 ||
                of->cas_new > SM_CAS_EXPLICIT_MAX) {
                *errstr = "CLIENT_ERROR invalid flag";
                return false;
            }
            of->has_cas_new = true;
            break;
        case 'x': /* newer memcached: md removes the value only */
            if (cmd != 'd') {
                *errstr = "CLIENT_ERROR invalid flag";
                return false;
            }
            of->remove_val = true;
            break;
        default:
            *errstr = "CLIENT_ERROR invalid flag";
            return false;
        }
    }
    return !of->has_error;
}

/* The TTL of an item N vivifies: what N and T, in request order, leave. */
static rel_time_t meta_viv_exptime(const sm_token *t, size_t ntokens, const meta_flags *of)
{
    rel_time_t viv_exp = 0;
    for (size_t i = 2; i < ntokens - 1; i++) {
        if (t[i].value[0] == 'T')
            viv_exp = of->exptime;
        else if (t[i].value[0] == 'N')
            viv_exp = of->autoviv_exptime;
    }
    return viv_exp;
}

/* Any O token longer than memcached allows? */
static bool meta_opaque_too_long(const sm_token *t, size_t ntokens, size_t start)
{
    for (size_t i = start; i < ntokens - 1; i++)
        if (t[i].value[0] == 'O' && t[i].length > META_MAX_OPAQUE)
            return true;
    return false;
}

/* Append the O and k flags only (misses and failures), in request order. */
static void ml_opaque_key(meta_line *l, const sm_token *t, size_t ntokens, size_t start,
                          const char *key, size_t nkey, bool binary)
{
    for (size_t i = start; i < ntokens - 1; i++) {
        if (t[i].value[0] == 'O') {
            ml_put(l, " ", 1);
            ml_put(l, t[i].value, t[i].length);
        } else if (t[i].value[0] == 'k') {
            ml_key(l, key, nkey, binary);
        }
    }
}

/*
 * The checks every keyed meta command starts with, in memcached's order: no
 * key is ERROR, a key too long (or, for ms, no data length) is a format
 * error, too many tokens is `toolong` (mg and the others word it
 * differently).  false when the error has been queued.
 */
static bool meta_head_ok(conn *c, const sm_token *t, size_t ntokens, bool need_datalen, const char *toolong)
{
    if (ntokens < 3) {
        out_static(c, "ERROR\r\n", 7);
        return false;
    }
    if (t[1].length > KEY_MAX_LENGTH || (need_datalen && ntokens == 3)) {
        meta_error(c, ERR_FORMAT);
        return false;
    }
    if (ntokens > META_MAX_NTOKENS) {
        meta_error(c, toolong);
        return false;
    }
    return true;
}

/* ---- mg ---- */

void proto_meta_get(conn *c, sm_request *r)
{
    sm_token *t = r->tokens;
    size_t ntokens = r->ntokens;
    cache *ca = c->worker->cache;
    struct sm_thread_stats *st = &c->worker->stats;
    meta_flags of = {0};
    const char *errstr = ERR_FORMAT;

    if (!meta_head_ok(c, t, ntokens, false, "CLIENT_ERROR options flags are too long"))
        return;
    if (!meta_preparse(c, t, ntokens, 2, 'g', &of, &errstr)) {
        meta_error(c, errstr);
        return;
    }
    const char *key = t[1].value;
    size_t nkey = t[1].length;
    uint32_t hv = prefetch_hash(&c->worker->pf, key, nkey);
    if (meta_opaque_too_long(t, ntokens, 2)) {
        /* memcached finds this out while answering: a miss is counted first */
        get_info gi = {0};
        item *hit = cache_get(ca, key, nkey, hv, CACHE_GET_NOBUMP, 0, &gi);
        if (hit != NULL) {
            cache_release(ca, hit);
        } else {
            SM_STAT_INC(st->get_misses);
            SM_STAT_INC(st->get_cmds);
        }
        meta_error(c, ERR_OPAQUE);
        return;
    }
    rel_time_t now = cache_now(ca);
    get_info info = {0};
    item *it = NULL;
    bool created = false;
    meta_line l;
    l.n = 0;

    /* The item lock is held from the lookup to the end of the response
     * line: vivify, T, and the recache token are one step for other clients. */
    cache_lock(ca, hv);
    it = cache_get_locked(ca, key, nkey, hv, of.no_update ? CACHE_GET_NOBUMP : 0, 0, &info);
    proto_log_get(c, key, nkey, it, &info);
    if (it == NULL && of.vivify) {
        /* Vivify: a 0-byte item whose TTL is what N and T (in order) leave;
         * the win token is ours before anybody can see the item. */
        it = cache_vivify_locked(ca, key, nkey, hv, meta_viv_exptime(t, ntokens, &of),
                                 of.has_cas_new ? of.cas_new : 0, ITEM_TOKEN_SENT, NULL);
        if (it != NULL) {
            created = true;
            info.prev_time = now;
            info.was_fetched = 0;
        }
    }

    if (info.status == GET_EXPIRED)
        SM_STAT_INC(st->get_expired);
    else if (info.status == GET_FLUSHED)
        SM_STAT_INC(st->get_flushed);

    if (it == NULL) {
        cache_unlock(ca, hv);
        SM_STAT_INC(st->get_misses);
        SM_STAT_INC(st->get_cmds);
        if (of.no_reply)
            return;
        ml_put(&l, "EN", 2);
        ml_opaque_key(&l, t, ntokens, 2, key, nkey, of.key_binary);
        ml_crlf(&l);
        meta_send(c, &l);
        return;
    }

    /* A hit (or a fresh vivified item): build the line in request order. */
    bool won = false;
    bool ttl_set = false;
    rel_time_t cur_exp = created ? 0 : META_LD(it->exptime);
    if (of.value) {
        ml_put(&l, "VA ", 3);
        ml_u64(&l, it->nbytes - 2);
    } else {
        ml_put(&l, "HD", 2);
    }
    uint16_t flags0 = atomic_load(&it->it_flags);
    for (size_t i = 2; i < ntokens - 1; i++) {
        switch (t[i].value[0]) {
        case 'T':
            ttl_set = true;
            cur_exp = of.exptime;
            if (!created)
                META_ST(it->exptime, cur_exp);
            break;
        case 'N':
            if (created) {
                cur_exp = of.autoviv_exptime;
                won = true;
            }
            break;
        case 'R':
            if (!created && (flags0 & ITEM_TOKEN_SENT) == 0 && cur_exp != 0 && cur_exp < of.recache_time)
                won = true;
            break;
        case 's':
            ml_flag_u64(&l, 's', it->nbytes - 2);
            break;
        case 't':
            ml_ttl(&l, cur_exp, now);
            break;
        case 'c':
            ml_flag_u64(&l, 'c', META_LD(it->cas));
            break;
        case 'f':
            ml_flag_u64(&l, 'f', it->client_flags);
            break;
        case 'l':
            ml_flag_u64(&l, 'l', (uint32_t)(now - info.prev_time));
            break;
        case 'h':
            ml_put(&l, info.was_fetched ? " h1" : " h0", 3);
            break;
        case 'O':
            ml_put(&l, " ", 1);
            ml_put(&l, t[i].value, t[i].length);
            break;
        case 'k':
            ml_key(&l, ITEM_key(it), it->nkey, (flags0 & ITEM_KEY_BINARY) != 0);
            break;
        default:
            break;
        }
    }

    if (created) {
        /* the token was taken before linking; a new item is never stale */
        if (won)
            ml_put(&l, " W", 2);
    } else {
        if (flags0 & ITEM_TOKEN_SENT)
            ml_put(&l, " Z", 2);
        if (flags0 & ITEM_STALE) {
            ml_put(&l, " X", 2);
            if ((flags0 & ITEM_TOKEN_SENT) == 0)
                won = true;
        }
        if (won) {
            /* under the item lock nobody else can have taken it meanwhile */
            atomic_fetch_or(&it->it_flags, ITEM_TOKEN_SENT);
            ml_put(&l, " W", 2);
        }
    }
    ml_crlf(&l);
    if (created && !of.no_update) {
        /* memcached bumps the item it vivified: it counts as fetched */
        item *again = cache_get_locked(ca, key, nkey, hv, 0, 0, NULL);
        if (again != NULL)
            cache_release(ca, again);
    }
    cache_unlock(ca, hv);

    int clsid = it->slabs_clsid;
    if (ttl_set) {
        SM_STAT_INC(st->touch_cmds);
        SM_STAT_INC(st->slab[proto_cls(clsid)].touch_hits);
    } else {
        SM_STAT_INC(st->get_cmds);
        SM_STAT_INC(st->slab[proto_cls(clsid)].get_hits);
    }

    if (meta_send(c, &l) && of.value) {
        if (out_item(c, it, it->nbytes) < 0) /* takes our reference */
            c->state = CONN_CLOSING;
    } else {
        cache_release(ca, it);
    }
}

/* ---- ms ---- */

void proto_meta_set(conn *c, sm_request *r)
{
    sm_token *t = r->tokens;
    size_t ntokens = r->ntokens;
    cache *ca = c->worker->cache;
    struct sm_thread_stats *st = &c->worker->stats;
    meta_flags of = {0};
    const char *errstr = ERR_FORMAT;
    int32_t vlen32;

    if (!meta_head_ok(c, t, ntokens, true, "CLIENT_ERROR options flags too long"))
        return;
    if (!safe_strtol(t[2].value, &vlen32) || vlen32 < 0 || vlen32 > INT_MAX - 2) {
        meta_error(c, ERR_FORMAT);
        return;
    }
    uint64_t vlen = (uint64_t)vlen32 + 2;

    bool bad = !meta_preparse(c, t, ntokens, 3, 's', &of, &errstr);
    if (!bad) {
        if (meta_opaque_too_long(t, ntokens, 3)) {
            errstr = ERR_OPAQUE;
            bad = true;
        }
        store_op op = STORE_SET;
        switch (of.mode) {
        case 0: case 'S': op = STORE_SET; break;
        case 'E': op = STORE_ADD; break;
        case 'A': op = STORE_APPEND; break;
        case 'P': op = STORE_PREPEND; break;
        case 'R': op = STORE_REPLACE; break;
        default:
            errstr = "CLIENT_ERROR invalid mode for ms M token";
            bad = true;
            break;
        }
        if (of.has_cas && (op == STORE_SET || op == STORE_REPLACE))
            op = STORE_CAS;

        if (!bad) {
            const char *key = t[1].value;
            size_t nkey = t[1].length;
            uint32_t hv = cache_hash(key, nkey);
            alloc_error aerr = ALLOC_OK;
            item *it = cache_alloc(ca, key, nkey, of.client_flags, of.exptime, (uint32_t)vlen, &aerr);
            if (it == NULL) {
                if (aerr == ALLOC_TOO_LARGE) {
                    errstr = "SERVER_ERROR object too large for cache";
                    SM_STAT_INC(st->store_too_large);
                } else {
                    errstr = "SERVER_ERROR out of memory storing object";
                    SM_STAT_INC(st->store_no_memory);
                }
                /* memcached logs the refused store (item_store, mutations) as text does */
                proto_log_store(c, key, nkey, NULL, op, aerr == ALLOC_TOO_LARGE ? STORE_TOO_LARGE : STORE_NO_MEMORY);
                /* like memcached: do not leave the old value behind */
                cache_delete(ca, key, nkey, hv, 0, 0, 0, NULL);
                meta_error(c, errstr);
                proto_begin_swallow(c, vlen);
                return;
            }

            /* like memcached, remember that k and me must echo it encoded */
            if (of.key_binary)
                atomic_fetch_or(&it->it_flags, ITEM_KEY_BINARY);
            pending_store *p = &c->pending;
            p->proto = PROTO_META;
            p->op = op;
            p->noreply = of.no_reply;
            p->cas = of.req_cas;
            p->hv = hv;
            /* what the response needs once the value is in (conn.h) */
            p->cas_new = of.has_cas_new ? of.cas_new : 0;
            p->meta.invalidate = of.set_stale;
            p->meta.nret = 0;
            p->meta.opaque_len = 0;
            for (size_t i = 3; i < ntokens - 1; i++) {
                char f = t[i].value[0];
                if (f != 'O' && f != 'k' && f != 'c')
                    continue;
                p->meta.ret[p->meta.nret++] = f; /* each at most once: duplicates are refused */
                if (f == 'O') {
                    /* META_MAX_OPAQUE was checked above */
                    p->meta.opaque_len = (uint8_t)(t[i].length - 1);
                    memcpy(p->meta.opaque, t[i].value + 1, t[i].length - 1);
                }
            }
            proto_begin_nread(c, it);
            return;
        }
    }
    meta_error(c, errstr);
    proto_begin_swallow(c, vlen);
}

void proto_meta_complete_store(conn *c)
{
    cache *ca = c->worker->cache;
    struct sm_thread_stats *st = &c->worker->stats;
    pending_store *p = &c->pending;
    item *it = c->nread_item;

    SM_STAT_INC(st->slab[proto_cls(it->slabs_clsid)].set_cmds);

    store_req req = {0};
    req.op = p->op;
    if (p->op == STORE_CAS || p->op == STORE_APPEND || p->op == STORE_PREPEND)
        req.cas_compare = p->cas;
    req.cas_new = p->cas_new;
    req.invalidate = p->meta.invalidate && p->op == STORE_CAS;

    uint64_t cas = 0;
    int clsid = 0;
    proto_log_store_lookup(c, it, p->hv);
    store_result r = cache_store(ca, it, p->hv, &req, &cas, &clsid);
    proto_log_store(c, ITEM_key(it), it->nkey, it, req.op, r);
    if (p->op == STORE_CAS) {
        if (r == STORE_STORED)
            SM_STAT_INC(st->slab[proto_cls(clsid)].cas_hits);
        else if (r == STORE_EXISTS)
            SM_STAT_INC(st->slab[proto_cls(clsid ? clsid : it->slabs_clsid)].cas_badval);
        else if (r == STORE_NOT_FOUND)
            SM_STAT_INC(st->cas_misses);
    }

    meta_line l;
    l.n = 0;
    bool skip = false;
    switch (r) {
    case STORE_STORED:
        ml_put(&l, "HD", 2);
        skip = p->noreply;
        break;
    case STORE_EXISTS:
        ml_put(&l, "EX", 2);
        break;
    case STORE_NOT_FOUND:
        ml_put(&l, "NF", 2);
        break;
    default: /* NOT_STORED, and append/prepend that could not grow */
        ml_put(&l, "NS", 2);
        break;
    }
    if (r != STORE_STORED)
        cas = 0;
    if (!skip) {
        for (size_t i = 0; i < p->meta.nret; i++) {
            switch (p->meta.ret[i]) {
            case 'O':
                ml_put(&l, " O", 2);
                ml_put(&l, p->meta.opaque, p->meta.opaque_len);
                break;
            case 'k':
                ml_key(&l, ITEM_key(it), it->nkey, (atomic_load(&it->it_flags) & ITEM_KEY_BINARY) != 0);
                break;
            case 'c':
                ml_flag_u64(&l, 'c', cas);
                break;
            default:
                break;
            }
        }
        ml_crlf(&l);
        meta_send(c, &l);
    }
    cache_release(ca, it);
    c->nread_item = NULL;
}

/* ---- md ---- */

void proto_meta_delete(conn *c, sm_request *r)
{
    sm_token *t = r->tokens;
    size_t ntokens = r->ntokens;
    cache *ca = c->worker->cache;
    struct sm_thread_stats *st = &c->worker->stats;
    meta_flags of = {0};
    const char *errstr = ERR_FORMAT;

    if (!meta_head_ok(c, t, ntokens, false, "CLIENT_ERROR options flags too long"))
        return;
    if (!meta_preparse(c, t, ntokens, 2, 'd', &of, &errstr)) {
        meta_error(c, "CLIENT_ERROR invalid or duplicate flag");
        return;
    }
    if (meta_opaque_too_long(t, ntokens, 2)) {
        meta_error(c, ERR_OPAQUE);
        return;
    }

    const char *key = t[1].value;
    size_t nkey = t[1].length;
    uint32_t hv = cache_hash(key, nkey);
    const char *code;
    bool nominal = false;

    /*
     * memcached compares a C token even when it is 0 (our cache treats
     * cas_compare 0 as "no check"): look first, then delete if it still
     * matches.  Same look-first for x, which stores an empty value.
     */
    item *old = NULL;
    if ((of.has_cas && of.req_cas == 0) || of.remove_val)
        old = cache_get(ca, key, nkey, hv, CACHE_GET_NOBUMP, 0, NULL);

    if ((of.has_cas && of.req_cas == 0) || of.remove_val) {
        if (old == NULL) {
            SM_STAT_INC(st->delete_misses);
            code = "NF";
        } else if (of.has_cas && META_LD(old->cas) != of.req_cas) {
            SM_STAT_INC(st->delete_misses);
            code = "EX";
        } else if (of.set_stale || !of.remove_val) {
            /* C0 on an item whose CAS is 0 (CAS disabled): delete as usual */
            int clsid = 0;
            delete_result dr = cache_delete(ca, key, nkey, hv, 0, of.set_stale,
                                            of.new_ttl ? of.exptime : 0, &clsid);
            if (dr == DEL_DELETED) {
                if (!of.set_stale)
                    SM_STAT_INC(st->slab[proto_cls(clsid)].delete_hits);
                code = "HD";
                nominal = true;
            } else {
                SM_STAT_INC(st->delete_misses);
                code = "NF";
            }
        } else {
            /* x: replace the value by an empty one, keeping flags and TTL */
            alloc_error aerr;
            item *nit = cache_alloc(ca, key, nkey, old->client_flags, META_LD(old->exptime), 2, &aerr);
            if (nit == NULL) {
                cache_release(ca, old);
                meta_error(c, "SERVER_ERROR out of memory");
                return;
            }
            memcpy(ITEM_value(nit), "\r\n", 2);
            store_req req = {.op = STORE_CAS, .cas_compare = META_LD(old->cas)};
            int clsid = 0;
            store_result r = cache_store(ca, nit, hv, &req, NULL, &clsid);
            cache_release(ca, nit);
            if (r == STORE_STORED) {
                SM_STAT_INC(st->slab[proto_cls(clsid)].delete_hits);
                code = "HD";
                nominal = true;
            } else if (r == STORE_EXISTS) {
                SM_STAT_INC(st->delete_misses);
                code = "EX";
            } else {
                SM_STAT_INC(st->delete_misses);
                code = "NF";
            }
        }
        if (old != NULL)
            cache_release(ca, old);
    } else {
        int clsid = 0;
        proto_log_lookup(c, key, nkey, hv);
        delete_result dr = cache_delete(ca, key, nkey, hv, of.has_cas ? of.req_cas : 0, of.set_stale,
                                        of.new_ttl ? of.exptime : 0, &clsid);
        switch (dr) {
        case DEL_DELETED:
            if (!of.set_stale)
                SM_STAT_INC(st->slab[proto_cls(clsid)].delete_hits);
            code = "HD";
            nominal = true;
            break;
        case DEL_EXISTS:
            SM_STAT_INC(st->delete_misses);
            code = "EX";
            break;
        default:
            SM_STAT_INC(st->delete_misses);
            code = "NF";
            break;
        }
    }

    /* md I T0 makes the stale item immortal; the cache API reads 0 as "keep" */
    if (nominal && of.set_stale && of.new_ttl && of.exptime == 0) {
        cache_lock(ca, hv);
        item *it = cache_get_locked(ca, key, nkey, hv, CACHE_GET_NOBUMP, 0, NULL);
        if (it != NULL) {
            META_ST(it->exptime, (rel_time_t)0);
            cache_release(ca, it);
        }
        cache_unlock(ca, hv);
    }

    if (nominal && of.no_reply)
        return;
    meta_line l;
    l.n = 0;
    ml_put(&l, code, 2);
    ml_opaque_key(&l, t, ntokens, 2, key, nkey, of.key_binary);
    ml_crlf(&l);
    meta_send(c, &l);
}

/* ---- ma ---- */

void proto_meta_arith(conn *c, sm_request *r)
{
    sm_token *t = r->tokens;
    size_t ntokens = r->ntokens;
    cache *ca = c->worker->cache;
    meta_flags of = {0};
    const char *errstr = ERR_FORMAT;
    of.delta = 1;

    if (!meta_head_ok(c, t, ntokens, false, "CLIENT_ERROR options flags too long"))
        return;
    if (!meta_preparse(c, t, ntokens, 2, 'a', &of, &errstr)) {
        meta_error(c, "CLIENT_ERROR invalid or duplicate flag");
        return;
    }
    bool incr = true;
    switch (of.mode) {
    case 0: case 'I': case '+': incr = true; break;
    case 'D': case '-': incr = false; break;
    default:
        meta_error(c, "CLIENT_ERROR invalid mode for ma M token");
        return;
    }

    const char *key = t[1].value;
    size_t nkey = t[1].length;
    uint32_t hv = cache_hash(key, nkey);
    rel_time_t now = cache_now(ca);
    arith_req req = {
        .incr = incr,
        .delta = of.delta,
        .cas_compare = of.has_cas ? of.req_cas : 0,
        .vivify = of.vivify,
        .initial = of.initial,
        .viv_exptime = of.vivify ? meta_viv_exptime(t, ntokens, &of) : 0,
    };
    uint64_t value = 0;
    item *it = NULL;
    int clsid = 0;
    proto_log_lookup(c, key, nkey, hv);
    arith_result ar = cache_arith(ca, key, nkey, hv, &req, &value, &it, &clsid);
    proto_count_arith(c->worker, incr, ar, clsid);
    bool created = ar == ARITH_VIVIFIED;
    if (created)
        ar = ARITH_OK;

    meta_line l;
    l.n = 0;
    switch (ar) {
    case ARITH_OK:
        break;
    case ARITH_NON_NUMERIC:
        meta_error(c, "CLIENT_ERROR cannot increment or decrement non-numeric value");
        return;
    case ARITH_NO_MEMORY:
        meta_error(c, "SERVER_ERROR out of memory");
        return;
    case ARITH_VIVIFY_NO_MEMORY:
        meta_error(c, "SERVER_ERROR Out of memory allocating new item");
        return;
    case ARITH_EXISTS:
        ml_put(&l, "EX", 2);
        break;
    default:
        ml_put(&l, "NF", 2);
        break;
    }
    if (ar != ARITH_OK) {
        if (meta_opaque_too_long(t, ntokens, 2)) {
            meta_error(c, ERR_OPAQUE);
            return;
        }
        ml_opaque_key(&l, t, ntokens, 2, key, nkey, of.key_binary);
        ml_crlf(&l);
        meta_send(c, &l);
        return;
    }

    char num[24];
    int vl = snprintf(num, sizeof(num), "%llu", (unsigned long long)value);
    if (of.value) {
        ml_put(&l, "VA ", 3);
        ml_u64(&l, (uint64_t)vl);
    } else {
        ml_put(&l, "HD", 2);
    }
    rel_time_t cur_exp = created ? 0 : META_LD(it->exptime);
    bool ttl_changed = false;
    bool opaque_err = false;
    for (size_t i = 2; i < ntokens - 1; i++) {
        switch (t[i].value[0]) {
        case 'c':
            ml_flag_u64(&l, 'c', META_LD(it->cas));
            break;
        case 't':
            ml_ttl(&l, cur_exp, now);
            break;
        case 'T':
            cur_exp = of.exptime;
            ttl_changed = true;
            break;
        case 'N':
            if (created)
                cur_exp = of.autoviv_exptime;
            break;
        case 'O':
            if (t[i].length > META_MAX_OPAQUE) {
                opaque_err = true;
                break;
            }
            ml_put(&l, " ", 1);
            ml_put(&l, t[i].value, t[i].length);
            break;
        case 'k':
            ml_key(&l, key, nkey, of.key_binary);
            break;
        default:
            break;
        }
        if (opaque_err)
            break;
    }
    if (ttl_changed && !created && cur_exp != META_LD(it->exptime)) {
        cache_lock(ca, hv);
        META_ST(it->exptime, cur_exp);
        cache_unlock(ca, hv);
    }
    cache_release(ca, it);
    if (opaque_err) {
        meta_error(c, ERR_OPAQUE);
        return;
    }
    /* q hides a nominal result, but memcached still answers a vivify */
    if (of.no_reply && !created)
        return;
    if (of.value) {
        ml_crlf(&l);
        ml_put(&l, num, (size_t)vl);
    }
    ml_crlf(&l);
    meta_send(c, &l);
}

/* ---- me ---- */

void proto_meta_debug(conn *c, sm_request *r)
{
    sm_token *t = r->tokens;
    size_t ntokens = r->ntokens;
    cache *ca = c->worker->cache;
    struct sm_thread_stats *st = &c->worker->stats;

    if (ntokens < 3 || t[1].length > KEY_MAX_LENGTH) {
        meta_error(c, ERR_FORMAT);
        return;
    }
    char *key = t[1].value;
    size_t nkey = t[1].length;
    if (ntokens >= 4 && t[2].length == 1 && t[2].value[0] == 'b') {
        nkey = b64_decode_inplace(key, nkey);
        if (nkey == 0) {
            meta_error(c, ERR_FORMAT);
            return;
        }
    }

    uint32_t hv = cache_hash(key, nkey);
    get_info info = {0};
    item *it = cache_get(ca, key, nkey, hv, CACHE_GET_NOBUMP, 0, &info);
    if (info.status == GET_EXPIRED)
        SM_STAT_INC(st->get_expired);
    else if (info.status == GET_FLUSHED)
        SM_STAT_INC(st->get_flushed);
    if (it != NULL) {
        rel_time_t now = cache_now(ca);
        rel_time_t exp = META_LD(it->exptime);
        meta_line l;
        l.n = 0;
        ml_put(&l, "ME ", 3);
        if (atomic_load(&it->it_flags) & ITEM_KEY_BINARY) {
            char enc[((KEY_MAX_LENGTH + 2) / 3) * 4 + 4];
            ml_put(&l, enc, b64_encode((const unsigned char *)ITEM_key(it), it->nkey, enc));
        } else {
            ml_put(&l, ITEM_key(it), it->nkey);
        }
        /* exp is memcached's (now - exptime), so a future expiry prints negative */
        char tail[160];
        int n = snprintf(tail, sizeof(tail), " exp=%d la=%llu cas=%llu fetch=%s cls=%u size=%lu\r\n",
                         exp == 0 ? -1 : (int)(now - exp),
                         (unsigned long long)(uint32_t)(now - META_LD(it->time)),
                         (unsigned long long)META_LD(it->cas),
                         (atomic_load(&it->it_flags) & ITEM_FETCHED) ? "yes" : "no",
                         (unsigned)it->slabs_clsid,
                         (unsigned long)(sizeof(item) + it->nkey + 1 + it->nbytes));
        ml_put(&l, tail, (size_t)n);
        cache_release(ca, it);
        meta_send(c, &l);
    } else {
        out_static(c, "EN\r\n", 4);
    }
    SM_STAT_INC(st->meta_cmds);
}

/* ---- mn ---- */

void proto_meta_noop(conn *c, sm_request *r)
{
    (void)r;
    out_static(c, "MN\r\n", 4);
    c->flushed = true; /* memcached's mn sends every reply queued before the next command */
}
