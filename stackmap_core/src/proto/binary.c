/*
 * binary.c -- memcached's binary protocol (binary.h says why it exists),
 * answering byte for byte as memcached 1.6.18's proto_bin.c does.
 *
 * A request is a 24-byte header (magic 0x80, opcode, key length, extras
 * length, body length, an opaque the response echoes, a CAS), then its
 * extras, key and value.  proto.c waits until header, extras and key are
 * buffered (proto_bin_need), then calls proto_bin_dispatch, which checks
 * the lengths in memcached's order and runs the command against the same
 * cache calls the text protocol uses.  A store's value is copied straight
 * into its item by proto.c (CONN_NREAD) as it arrives, as for text; the
 * binary value has no "\r\n", so proto.c writes it before calling
 * proto_bin_complete_store.  Responses are a header formatted into scratch
 * followed, for hits, by the value straight from item memory.
 *
 * memcached's rules reproduced here (checked against 1.6.18):
 *  - quiet opcodes (GETQ, SETQ, ..., QUITQ) send nothing on success, and a
 *    quiet get sends nothing on a miss; errors are always sent;
 *  - a key or extras length beyond the body length is "Unknown command"
 *    and closes; a key over 250 bytes, or lengths a command does not take,
 *    are "Invalid arguments" and close; bad magic closes without a word;
 *  - an unknown opcode is "Unknown command" and the next body-length
 *    bytes after its key are discarded (memcached's own count);
 *  - a CAS in the header turns set/add/replace into a compare-and-swap,
 *    and makes append/prepend/delete/incr/decr check it;
 *  - incr/decr on a missing key create it with the initial value unless
 *    the expiration is 0xffffffff;
 *  - VERBOSITY is not implemented by memcached 1.6.18's binary protocol
 *    ("Unknown command"), and neither are the SASL opcodes without auth.
 * Nothing here allocates per request.
 */
#include "binary.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine_internal.h"
#include "../stats_prefix.h"
#include "../io/backend.h" /* worker_close_soon: bad magic closes without sending */
#include "../worker.h"
#include "auth.h"

/* Opcodes (memcached's protocol_binary.h). */
enum {
    OP_GET = 0x00, OP_SET = 0x01, OP_ADD = 0x02, OP_REPLACE = 0x03, OP_DELETE = 0x04,
    OP_INCREMENT = 0x05, OP_DECREMENT = 0x06, OP_QUIT = 0x07, OP_FLUSH = 0x08, OP_GETQ = 0x09,
    OP_NOOP = 0x0a, OP_VERSION = 0x0b, OP_GETK = 0x0c, OP_GETKQ = 0x0d, OP_APPEND = 0x0e,
    OP_PREPEND = 0x0f, OP_STAT = 0x10, OP_SETQ = 0x11, OP_ADDQ = 0x12, OP_REPLACEQ = 0x13,
    OP_DELETEQ = 0x14, OP_INCREMENTQ = 0x15, OP_DECREMENTQ = 0x16, OP_QUITQ = 0x17,
    OP_FLUSHQ = 0x18, OP_APPENDQ = 0x19, OP_PREPENDQ = 0x1a, OP_TOUCH = 0x1c, OP_GAT = 0x1d,
    OP_GATQ = 0x1e, OP_SASL_LIST_MECHS = 0x20, OP_SASL_AUTH = 0x21, OP_SASL_STEP = 0x22,
    OP_GATK = 0x23, OP_GATKQ = 0x24
};

/* Response status codes. */
enum {
    ST_SUCCESS = 0x00, ST_KEY_ENOENT = 0x01, ST_KEY_EEXISTS = 0x02, ST_E2BIG = 0x03,
    ST_EINVAL = 0x04, ST_NOT_STORED = 0x05, ST_DELTA_BADVAL = 0x06, ST_AUTH_ERROR = 0x20,
    ST_UNKNOWN_COMMAND = 0x81, ST_ENOMEM = 0x82
};

/* The response magic. */
#define BIN_RES_MAGIC 0x81
/* memcached's BIN_MAX_EXTLEN: extras it looks at (incr's 20 bytes). */
#define BIN_MAX_EXTLEN 20
/* memcached's MAX_SASL_MECH_LEN. */
#define MAX_SASL_MECH_LEN 32
/* Largest SASL body accepted (PLAIN's "authzid\0user\0password"); a larger
 * one is answered "Out of memory", as memcached answers a body it cannot
 * allocate an item for. */
#define SASL_BODY_MAX 4096
/* Scratch for a header, 4 bytes of flags and a key. */
#define RESP_HEAD_MAX (SM_BIN_HDR_LEN + 4 + KEY_MAX_LENGTH)

/* One request header, in host order (opaque stays as sent: it is echoed). */
typedef struct bin_req {
    uint8_t opcode;   /* as sent (responses echo it, quiet or not) */
    uint8_t extlen;   /* bytes of extras */
    uint16_t keylen;  /* bytes of key */
    uint32_t bodylen; /* extras + key + value */
    uint32_t opaque;  /* echoed unchanged (network order) */
    uint64_t cas;     /* the request's CAS (0: none) */
    const char *ext;  /* the extras, in the buffer */
    const char *key;  /* the key, in the buffer */
    bool quiet;       /* a quiet opcode: no reply on success */
} bin_req;

static inline uint16_t get16(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint16_t)((u[0] << 8) | u[1]);
}

static inline uint32_t get32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

static inline uint64_t get64(const char *p)
{
    return ((uint64_t)get32(p) << 32) | get32(p + 4);
}

static inline char *put16(char *p, uint16_t v)
{
    p[0] = (char)(v >> 8);
    p[1] = (char)v;
    return p + 2;
}

static inline char *put32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
    return p + 4;
}

static inline char *put64(char *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    return put32(p + 4, (uint32_t)v);
}

/* A response header at p; returns the end. */
static char *put_header(char *p, uint8_t opcode, uint16_t status, uint8_t extlen, uint16_t keylen,
                        uint32_t bodylen, uint32_t opaque, uint64_t cas)
{
    p[0] = (char)BIN_RES_MAGIC;
    p[1] = (char)opcode;
    put16(p + 2, keylen);
    p[4] = (char)extlen;
    p[5] = 0; /* raw bytes */
    put16(p + 6, status);
    put32(p + 8, bodylen);
    memcpy(p + 12, &opaque, 4);
    put64(p + 16, cas);
    return p + SM_BIN_HDR_LEN;
}

/* The queue could not take a response: close rather than answer half. */
static void out_failed(conn *c)
{
    c->state = CONN_CLOSING;
}

/* Queue a header followed by body[0..blen) (copied). */
static void respond(conn *c, uint8_t opcode, uint16_t status, uint32_t opaque, uint64_t cas, const void *body,
                    size_t blen)
{
    char *p = out_reserve(c, SM_BIN_HDR_LEN);
    if (!p) {
        out_failed(c);
        return;
    }
    put_header(p, opcode, status, 0, 0, (uint32_t)blen, opaque, cas);
    out_commit(c, SM_BIN_HDR_LEN);
    if (blen > 0 && out_copy(c, body, blen) < 0)
        out_failed(c);
}

/* memcached's write_bin_error: the status's text (or msg) as the body, sent
 * even for quiet commands; then discard `swallow` bytes of input. */
static void bin_error(conn *c, const bin_req *rq, uint16_t status, const char *msg, uint64_t swallow)
{
    if (!msg) {
        switch (status) {
        case ST_ENOMEM: msg = "Out of memory"; break;
        case ST_UNKNOWN_COMMAND: msg = "Unknown command"; break;
        case ST_KEY_ENOENT: msg = "Not found"; break;
        case ST_EINVAL: msg = "Invalid arguments"; break;
        case ST_KEY_EEXISTS: msg = "Data exists for key."; break;
        case ST_E2BIG: msg = "Too large."; break;
        case ST_DELTA_BADVAL: msg = "Non-numeric server-side value for incr or decr"; break;
        case ST_NOT_STORED: msg = "Not stored."; break;
        case ST_AUTH_ERROR: msg = "Auth failure."; break;
        default: msg = "UNHANDLED ERROR"; break;
        }
    }
    engine_log(c->worker->engine, 2, ">%d Writing an error: %s\n", c->fd, msg);
    respond(c, rq->opcode, status, rq->opaque, 0, msg, strlen(msg));
    if (swallow > 0 && c->state != CONN_CLOSING)
        proto_begin_swallow(c, swallow);
}

/* memcached's handle_binary_protocol_error: "Invalid arguments", then close. */
static void protocol_error(conn *c, const bin_req *rq)
{
    bin_error(c, rq, ST_EINVAL, NULL, 0);
    engine_log(c->worker->engine, 1, "Protocol error (opcode %02x), close connection %d\n", rq->opcode, c->fd);
    c->state = CONN_CLOSING;
}

/* memcached's write_bin_response: a success, unless the command is quiet. */
static void bin_ok(conn *c, const bin_req *rq, uint64_t cas, const void *body, size_t blen)
{
    if (rq->quiet)
        return;
    respond(c, rq->opcode, ST_SUCCESS, rq->opaque, cas, body, blen);
}

/*
 * A binary key may hold any byte; one with a byte no text line can carry
 * in a key (space, newline, NUL) is marked ITEM_KEY_BINARY, as a meta key
 * sent base64-encoded is: meta echoes it encoded, and a snapshot records
 * it as binary (admin.c) so that a warm restart restores it.
 */
static bool key_is_binary(const char *key, size_t nkey)
{
    for (size_t i = 0; i < nkey; i++)
        if (key[i] == ' ' || key[i] == '\n' || key[i] == '\0')
            return true;
    return false;
}

/* ---- get, getk, gat, gatk, touch and their quiet forms ---- */

static void process_get(conn *c, const bin_req *rq, bool touch, bool with_key, bool with_value)
{
    worker *w = c->worker;
    cache *cc = w->cache;
    const char *key = rq->key;
    size_t nkey = rq->keylen;
    rel_time_t exptime = touch ? cache_realtime(cc, (int64_t)get32(rq->ext)) : 0;
    get_info info;
    item *it = cache_get(cc, key, nkey, prefetch_hash(&w->pf, key, nkey), touch ? CACHE_GET_TOUCH : 0, exptime,
                         &info);
    proto_count_get(w, key, nkey, it, touch, &info);
    proto_log_get(c, key, nkey, it, &info);
    if (!it) {
        if (rq->quiet)
            return;
        if (with_key) {
            /* GETK/GATK miss: the key comes back with the status. */
            char *p = out_reserve(c, SM_BIN_HDR_LEN + KEY_MAX_LENGTH);
            if (!p) {
                out_failed(c);
                return;
            }
            char *e = put_header(p, rq->opcode, ST_KEY_ENOENT, 0, (uint16_t)nkey, (uint32_t)nkey, rq->opaque, 0);
            memcpy(e, key, nkey);
            out_commit(c, SM_BIN_HDR_LEN + nkey);
        } else {
            bin_error(c, rq, ST_KEY_ENOENT, NULL, 0);
        }
        return;
    }
    uint32_t vlen = with_value ? ITEM_vlen(it) : 0;
    uint16_t klen = with_key ? (uint16_t)nkey : 0;
    char *p = out_reserve(c, RESP_HEAD_MAX);
    if (!p) {
        cache_release(cc, it);
        out_failed(c);
        return;
    }
    char *e = put_header(p, rq->opcode, ST_SUCCESS, 4, klen, 4u + klen + vlen, rq->opaque, it->cas);
    e = put32(e, it->client_flags);
    memcpy(e, ITEM_key(it), klen);
    e += klen;
    out_commit(c, (size_t)(e - p));
    if (!with_value) {
        cache_release(cc, it);
        return;
    }
    /* The value without its "\r\n"; the queue takes over our reference. */
    if (out_item(c, it, vlen) < 0)
        out_failed(c);
}

/* ---- set, add, replace, append, prepend ---- */

static void process_update(conn *c, const bin_req *rq, store_op op, uint32_t flags, uint32_t exp,
                           uint64_t vlen)
{
    worker *w = c->worker;
    const char *key = rq->key;
    size_t nkey = rq->keylen;
    sm_prefix_record(w->engine->prefixes, key, nkey, SM_PREFIX_SET);
    uint32_t hv = cache_hash(key, nkey);
    alloc_error err = ALLOC_OK;
    item *it = NULL;
    if (vlen <= UINT32_MAX - 2)
        it = cache_alloc(w->cache, key, nkey, flags, cache_realtime(w->cache, (int64_t)exp), (uint32_t)vlen + 2,
                         &err);
    else
        err = ALLOC_TOO_LARGE;
    if (!it) {
        if (err == ALLOC_TOO_LARGE) {
            bin_error(c, rq, ST_E2BIG, NULL, vlen);
            SM_STAT_INC(w->stats.store_too_large);
        } else {
            bin_error(c, rq, ST_ENOMEM, "Out of memory allocating item", vlen);
            SM_STAT_INC(w->stats.store_no_memory);
        }
        /* The refused store's item_store line (mutations), as text and meta log it.
         * (memcached 1.6.18 means to log it too, but reads a NULL item there and
         * crashes; the command logged is the one asked for, CAS included.) */
        store_op asked = rq->cas != 0 && (op == STORE_SET || op == STORE_ADD || op == STORE_REPLACE) ? STORE_CAS : op;
        proto_log_store(c, key, nkey, NULL, asked, err == ALLOC_TOO_LARGE ? STORE_TOO_LARGE : STORE_NO_MEMORY);
        /* A failed set must not leave the old value readable (as memcached). */
        if (op == STORE_SET)
            cache_delete(w->cache, key, nkey, hv, 0, 0, 0, NULL);
        return;
    }
    if (key_is_binary(key, nkey)) /* the item is not linked yet: nobody else sees it */
        atomic_fetch_or(&it->it_flags, ITEM_KEY_BINARY);
    /* A CAS in the header makes set/add/replace a compare-and-swap. */
    if (rq->cas != 0 && (op == STORE_SET || op == STORE_ADD || op == STORE_REPLACE))
        op = STORE_CAS;
    c->pending.proto = PROTO_BINARY;
    c->pending.op = (uint8_t)op;
    c->pending.noreply = rq->quiet;
    c->pending.cas = rq->cas;
    c->pending.hv = hv;
    c->pending.bin.opcode = rq->opcode;
    c->pending.bin.opaque = rq->opaque;
    proto_begin_nread(c, it);
    c->nread_left = (uint32_t)vlen; /* proto.c writes the "\r\n" itself */
}

void proto_bin_complete_store(conn *c)
{
    worker *w = c->worker;
    item *it = c->nread_item;
    c->nread_item = NULL;
    SM_STAT_INC(w->stats.slab[proto_cls(it->slabs_clsid)].set_cmds);
    bin_req rq = {.opcode = c->pending.bin.opcode, .opaque = c->pending.bin.opaque, .quiet = c->pending.noreply};
    store_op op = (store_op)c->pending.op;
    store_req req = {.op = op, .cas_compare = c->pending.cas, .cas_new = 0, .invalidate = 0};
    int cls = it->slabs_clsid;
    uint64_t cas = 0;
    proto_log_store_lookup(c, it, c->pending.hv);
    store_result r = cache_store(w->cache, it, c->pending.hv, &req, &cas, &cls);
    proto_log_store(c, ITEM_key(it), it->nkey, it, op, r);
    switch (r) {
    case STORE_STORED:
        if (op == STORE_CAS)
            SM_STAT_INC(w->stats.slab[proto_cls(cls)].cas_hits);
        bin_ok(c, &rq, cas, NULL, 0);
        break;
    case STORE_EXISTS:
        if (op == STORE_CAS)
            SM_STAT_INC(w->stats.slab[proto_cls(cls)].cas_badval);
        bin_error(c, &rq, ST_KEY_EEXISTS, NULL, 0);
        break;
    case STORE_NOT_FOUND:
        if (op == STORE_CAS) {
            SM_STAT_INC(w->stats.cas_misses);
            bin_error(c, &rq, ST_KEY_ENOENT, NULL, 0);
            break;
        }
        /* append/prepend to nothing is "Not stored." */
        __attribute__((fallthrough));
    case STORE_NOT_STORED:
    case STORE_TOO_LARGE:
    case STORE_NO_MEMORY:
    default:
        if (op == STORE_ADD)
            bin_error(c, &rq, ST_KEY_EEXISTS, NULL, 0);
        else if (op == STORE_REPLACE)
            bin_error(c, &rq, ST_KEY_ENOENT, NULL, 0);
        else
            bin_error(c, &rq, ST_NOT_STORED, NULL, 0);
        break;
    }
    cache_release(w->cache, it);
}

/* ---- delete, incr/decr, flush ---- */

static void process_delete(conn *c, const bin_req *rq)
{
    worker *w = c->worker;
    int cls = 0;
    sm_prefix_record(w->engine->prefixes, rq->key, rq->keylen, SM_PREFIX_DELETE);
    uint32_t hv = cache_hash(rq->key, rq->keylen);
    proto_log_lookup(c, rq->key, rq->keylen, hv);
    delete_result dr = cache_delete(w->cache, rq->key, rq->keylen, hv, rq->cas, 0, 0, &cls);
    if (dr == DEL_DELETED) {
        SM_STAT_INC(w->stats.slab[proto_cls(cls)].delete_hits);
        bin_ok(c, rq, 0, NULL, 0);
    } else if (dr == DEL_EXISTS) {
        bin_error(c, rq, ST_KEY_EEXISTS, NULL, 0);
    } else {
        SM_STAT_INC(w->stats.delete_misses);
        bin_error(c, rq, ST_KEY_ENOENT, NULL, 0);
    }
}

static void process_arith(conn *c, const bin_req *rq, bool incr)
{
    worker *w = c->worker;
    uint32_t exp = get32(rq->ext + 16);
    arith_req req = {
        .incr = incr ? 1 : 0,
        .delta = get64(rq->ext),
        .cas_compare = rq->cas,
        .vivify = exp != 0xffffffffu, /* 0xffffffff: a miss stays a miss */
        .initial = get64(rq->ext + 8),
        .viv_exptime = cache_realtime(w->cache, (int64_t)exp),
    };
    uint64_t value = 0;
    item *it = NULL;
    int cls = 0;
    uint32_t hv = cache_hash(rq->key, rq->keylen);
    proto_log_lookup(c, rq->key, rq->keylen, hv);
    arith_result r = cache_arith(w->cache, rq->key, rq->keylen, hv, &req, &value, &it, &cls);
    char body[8];
    proto_count_arith(w, incr, r, cls);
    switch (r) {
    case ARITH_OK:
    case ARITH_NO_MEMORY:
        if (r == ARITH_NO_MEMORY) {
            bin_error(c, rq, ST_ENOMEM, "Out of memory incrementing value", 0);
            break;
        }
        __attribute__((fallthrough));
    case ARITH_VIVIFIED:
        /* (a snapshot taken between the creation and this may record the
         * key as text and refuse it at restore: a window of a few instructions) */
        if (r == ARITH_VIVIFIED && it && key_is_binary(rq->key, rq->keylen))
            atomic_fetch_or(&it->it_flags, ITEM_KEY_BINARY);
        put64(body, value);
        bin_ok(c, rq, it ? it->cas : 0, body, sizeof(body));
        break;
    case ARITH_NON_NUMERIC:
        bin_error(c, rq, ST_DELTA_BADVAL, NULL, 0);
        break;
    case ARITH_EXISTS:
        bin_error(c, rq, ST_KEY_EEXISTS, NULL, 0);
        break;
    case ARITH_VIVIFY_NO_MEMORY:
        bin_error(c, rq, ST_ENOMEM, "Out of memory allocating new item", 0);
        break;
    case ARITH_NOT_FOUND:
    default:
        bin_error(c, rq, ST_KEY_ENOENT, NULL, 0);
        break;
    }
    if (it)
        cache_release(w->cache, it);
}

static void process_flush(conn *c, const bin_req *rq)
{
    worker *w = c->worker;
    int64_t delay = rq->extlen == 4 ? (int64_t)get32(rq->ext) : 0;
    cache_flush(w->cache, delay > 0 ? cache_realtime(w->cache, delay) : cache_now(w->cache));
    SM_STAT_INC(w->stats.flush_cmds);
    bin_ok(c, rq, 0, NULL, 0);
}

/* ---- stat ---- */

/* Where a binary stats response is being written. */
typedef struct bin_stat_ctx {
    conn *c;         /* the connection */
    uint32_t opaque; /* the request's opaque, echoed in every packet */
} bin_stat_ctx;

/* memcached's append_bin_stats: one packet per statistic, name as the key. */
static void bin_stat_add(sm_stat_sink *sink, const char *name, const char *value)
{
    bin_stat_ctx *x = sink->ctx;
    conn *c = x->c;
    if (c->state == CONN_CLOSING)
        return;
    size_t klen = strlen(name), vlen = strlen(value);
    if (SM_BIN_HDR_LEN + klen + vlen > OUT_CHUNK_SIZE) {
        out_failed(c);
        return;
    }
    char *p = out_reserve(c, SM_BIN_HDR_LEN + klen + vlen);
    if (!p) {
        out_failed(c);
        return;
    }
    char *e = put_header(p, OP_STAT, ST_SUCCESS, 0, (uint16_t)klen, (uint32_t)(klen + vlen), x->opaque, 0);
    memcpy(e, name, klen);
    memcpy(e + klen, value, vlen);
    out_commit(c, SM_BIN_HDR_LEN + klen + vlen);
}

/* The key is `word` exactly (memcached's nz_strcmp). */
static bool key_is(const bin_req *rq, const char *word)
{
    size_t n = strlen(word);
    return rq->keylen == n && memcmp(rq->key, word, n) == 0;
}

/* The key starts with `word` (memcached compares with strncmp there). */
static bool key_starts(const bin_req *rq, const char *word)
{
    size_t n = strlen(word);
    return rq->keylen >= n && memcmp(rq->key, word, n) == 0;
}

/* "STAT detail dump" collects the dump here, to send it as one packet. */
typedef struct dump_buf {
    char *p;    /* malloc'd bytes (a stats command, not the request path) */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
} dump_buf;

static int dump_emit(void *ctx, const char *line, size_t len)
{
    dump_buf *b = ctx;
    if (b->len + len > b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 4096;
        while (ncap < b->len + len)
            ncap *= 2;
        char *n = realloc(b->p, ncap);
        if (!n)
            return -1;
        b->p = n;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, line, len);
    b->len += len;
    return 0;
}

/*
 * memcached's binary "detail on|off|dump" (prefix matches, as its strncmp):
 * on and off answer with the terminating packet alone; dump sends the text
 * dump, "END\r\n" included, as the value of one packet keyed "detailed".
 * false (and an error sent) for any other detail word.
 */
static bool stat_detail(conn *c, const bin_req *rq)
{
    sm_prefix_stats *p = c->worker->engine->prefixes;
    const char *w = rq->key + 6;
    size_t n = rq->keylen - 6;
    if (n >= 3 && memcmp(w, " on", 3) == 0) {
        sm_prefix_enable(p, true);
        return true;
    }
    if (n >= 4 && memcmp(w, " off", 4) == 0) {
        sm_prefix_enable(p, false);
        return true;
    }
    if (!(n >= 5 && memcmp(w, " dump", 5) == 0)) {
        bin_error(c, rq, ST_KEY_ENOENT, NULL, 0);
        return false;
    }
    dump_buf b = {0};
    if (sm_prefix_dump(p, dump_emit, &b) < 0 || dump_emit(&b, "END\r\n", 5) < 0) {
        free(b.p);
        out_failed(c);
        return false;
    }
    static const char key[] = "detailed";
    char hdr[SM_BIN_HDR_LEN + sizeof(key) - 1];
    char *e = put_header(hdr, OP_STAT, ST_SUCCESS, 0, (uint16_t)(sizeof(key) - 1),
                         (uint32_t)(sizeof(key) - 1 + b.len), rq->opaque, 0);
    memcpy(e, key, sizeof(key) - 1);
    bool ok = out_copy(c, hdr, sizeof(hdr)) == 0 && out_copy(c, b.p, b.len) == 0;
    free(b.p);
    if (!ok)
        out_failed(c);
    return ok;
}

static void process_stat(conn *c, const bin_req *rq)
{
    struct sm_engine *e = c->worker->engine;
    bin_stat_ctx x = {.c = c, .opaque = rq->opaque};
    sm_stat_sink sink = {.add = bin_stat_add, .ctx = &x};
    if (rq->keylen == 0) {
        engine_stats_group(e, "", &sink);
    } else if (key_starts(rq, "reset")) {
        engine_stats_reset(e);
    } else if (key_starts(rq, "settings")) {
        engine_stats_group(e, "settings", &sink);
    } else if (key_is(rq, "items") || key_is(rq, "slabs") || key_is(rq, "sizes") || key_is(rq, "backend")) {
        char group[8];
        memcpy(group, rq->key, rq->keylen);
        group[rq->keylen] = '\0';
        engine_stats_group(e, group, &sink);
    } else if (key_starts(rq, "detail")) {
        if (!stat_detail(c, rq))
            return;
    } else {
        /* memcached's binary STAT has no "conns". */
        bin_error(c, rq, ST_KEY_ENOENT, NULL, 0);
        return;
    }
    if (c->state == CONN_CLOSING)
        return;
    /* The terminating packet: no key, no value. */
    char *p = out_reserve(c, SM_BIN_HDR_LEN);
    if (!p) {
        out_failed(c);
        return;
    }
    put_header(p, OP_STAT, ST_SUCCESS, 0, 0, 0, rq->opaque, 0);
    out_commit(c, SM_BIN_HDR_LEN);
}

/* ---- SASL (only with -Y: PLAIN against the auth file) ---- */

static void sasl_list_mechs(conn *c, const bin_req *rq)
{
    static const char mechs[] = "PLAIN";
    bin_ok(c, rq, 0, mechs, sizeof(mechs) - 1);
}

/* The SASL requests whose body proto_bin_need waits for (and sasl_auth
 * reads from the input): the others are refused and their body swallowed. */
static bool sasl_body_inline(uint8_t extlen, uint16_t keylen, uint32_t bodylen)
{
    return extlen == 0 && keylen != 0 && keylen <= MAX_SASL_MECH_LEN && bodylen >= keylen &&
           bodylen - keylen <= SASL_BODY_MAX;
}

/* SASL_AUTH / SASL_STEP; returns the bytes of body it read from the input
 * after the key (the rest of a refused request's body is swallowed). */
static size_t sasl_auth(conn *c, const bin_req *rq)
{
    worker *w = c->worker;
    uint32_t vlen = rq->bodylen - rq->keylen;
    if (rq->keylen > MAX_SASL_MECH_LEN) {
        bin_error(c, rq, ST_EINVAL, NULL, vlen);
        return 0;
    }
    if (vlen > SASL_BODY_MAX) {
        bin_error(c, rq, ST_ENOMEM, NULL, vlen);
        return 0;
    }
    const char *data = rq->key + rq->keylen;
    bool ok = false;
    /* PLAIN is one step: a SASL_STEP never completes it. */
    if (rq->opcode == OP_SASL_AUTH && rq->keylen == 5 && memcmp(rq->key, "PLAIN", 5) == 0)
        ok = sm_auth_check_plain(w->engine->auth, data, vlen);
    SM_STAT_INC(w->stats.auth_cmds);
    if (ok) {
        c->authenticated = true;
        static const char msg[] = "Authenticated";
        bin_ok(c, rq, 0, msg, sizeof(msg) - 1);
    } else {
        SM_STAT_INC(w->stats.auth_errors);
        bin_error(c, rq, ST_AUTH_ERROR, NULL, 0);
    }
    return vlen;
}

/* ---- reading and dispatching requests ---- */

/* The opcodes that may be sent before authenticating. */
static bool allowed_unauthenticated(uint8_t op)
{
    return op == OP_SASL_LIST_MECHS || op == OP_SASL_AUTH || op == OP_SASL_STEP || op == OP_VERSION;
}

size_t proto_bin_need(conn *c, const char *p, size_t n)
{
    if (n < SM_BIN_HDR_LEN)
        return 0;
    if ((unsigned char)p[0] != SM_BIN_REQ_MAGIC) {
        engine_log(c->worker->engine, 1, "Invalid magic:  %x\n", (unsigned char)p[0]);
        /* memcached closes at once: the answers it had not yet written
         * (everything since its last flush) are dropped, not sent. */
        c->state = CONN_CLOSING;
        worker_close_soon(c->worker, c);
        return 0;
    }
    size_t need = SM_BIN_HDR_LEN + (uint8_t)p[4] + get16(p + 2);
    uint8_t op = (uint8_t)p[1];
    uint32_t bodylen = get32(p + 8);
    /* A SASL body is read whole from the input (it is small): see sasl_auth. */
    if (c->worker->engine->auth && (op == OP_SASL_AUTH || op == OP_SASL_STEP) &&
        sasl_body_inline((uint8_t)p[4], get16(p + 2), bodylen))
        need = SM_BIN_HDR_LEN + (size_t)bodylen;
    return need;
}

/* The latency class a binary opcode is timed as (latency.h). */
static int lat_class(uint8_t op)
{
    switch (op) {
    case OP_GET: case OP_GETQ: case OP_GETK: case OP_GETKQ: return SM_LAT_get;
    case OP_GAT: case OP_GATQ: case OP_GATK: case OP_GATKQ: return SM_LAT_gat;
    case OP_TOUCH: return SM_LAT_touch;
    case OP_SET: case OP_SETQ: return SM_LAT_set;
    case OP_ADD: case OP_ADDQ: return SM_LAT_add;
    case OP_REPLACE: case OP_REPLACEQ: return SM_LAT_replace;
    case OP_APPEND: case OP_APPENDQ: return SM_LAT_append;
    case OP_PREPEND: case OP_PREPENDQ: return SM_LAT_prepend;
    case OP_DELETE: case OP_DELETEQ: return SM_LAT_delete;
    case OP_INCREMENT: case OP_INCREMENTQ: return SM_LAT_incr;
    case OP_DECREMENT: case OP_DECREMENTQ: return SM_LAT_decr;
    case OP_STAT: return SM_LAT_stats;
    case OP_FLUSH: case OP_FLUSHQ: return SM_LAT_flush_all;
    case OP_VERSION: return SM_LAT_version;
    default: return SM_LAT_other;
    }
}

size_t proto_bin_dispatch(conn *c, char *p, int *lat)
{
    worker *w = c->worker;
    bin_req rq = {
        .opcode = (uint8_t)p[1],
        .keylen = get16(p + 2),
        .extlen = (uint8_t)p[4],
        .bodylen = get32(p + 8),
        .cas = get64(p + 16),
    };
    memcpy(&rq.opaque, p + 12, 4);
    rq.ext = p + SM_BIN_HDR_LEN;
    rq.key = rq.ext + rq.extlen;
    size_t used = SM_BIN_HDR_LEN + rq.extlen + rq.keylen;
    uint8_t op = rq.opcode;
    *lat = lat_class(op);
    engine_log(w->engine, 2, "<%d Read binary protocol data: opcode 0x%02x key %u extras %u body %u\n", c->fd, op,
               rq.keylen, rq.extlen, rq.bodylen);

    if ((uint32_t)rq.keylen + rq.extlen > rq.bodylen) {
        bin_error(c, &rq, ST_UNKNOWN_COMMAND, NULL, 0);
        c->state = CONN_CLOSING;
        return used;
    }
    struct sm_auth *auth = w->engine->auth;
    if (auth && !c->authenticated && !allowed_unauthenticated(op)) {
        bin_error(c, &rq, ST_AUTH_ERROR, NULL, 0);
        c->state = CONN_CLOSING;
        return used;
    }
    if (rq.keylen > KEY_MAX_LENGTH) {
        protocol_error(c, &rq);
        return used;
    }
    switch (op) {
    case OP_SETQ: case OP_ADDQ: case OP_REPLACEQ: case OP_DELETEQ: case OP_INCREMENTQ: case OP_DECREMENTQ:
    case OP_QUITQ: case OP_FLUSHQ: case OP_APPENDQ: case OP_PREPENDQ: case OP_GETQ: case OP_GETKQ:
    case OP_GATQ: case OP_GATKQ:
        rq.quiet = true;
        break;
    default:
        rq.quiet = false;
    }
    uint32_t ext = rq.extlen, key = rq.keylen, body = rq.bodylen;
    bool bad = false;
    switch (op) {
    case OP_VERSION:
        if (ext == 0 && key == 0 && body == 0) {
            const char *v = sm_version();
            bin_ok(c, &rq, 0, v, strlen(v));
        } else {
            bad = true;
        }
        break;
    case OP_FLUSH: case OP_FLUSHQ:
        if (key == 0 && body == ext && (ext == 0 || ext == 4))
            process_flush(c, &rq);
        else
            bad = true;
        break;
    case OP_NOOP:
        if (ext == 0 && key == 0 && body == 0)
            bin_ok(c, &rq, 0, NULL, 0);
        else
            bad = true;
        break;
    case OP_SET: case OP_SETQ: case OP_ADD: case OP_ADDQ: case OP_REPLACE: case OP_REPLACEQ:
        if (ext == 8 && key != 0 && body >= key + 8) {
            store_op sop = (op == OP_SET || op == OP_SETQ) ? STORE_SET
                           : (op == OP_ADD || op == OP_ADDQ) ? STORE_ADD : STORE_REPLACE;
            process_update(c, &rq, sop, get32(rq.ext), get32(rq.ext + 4), (uint64_t)body - key - ext);
        } else {
            bad = true;
        }
        break;
    case OP_APPEND: case OP_APPENDQ: case OP_PREPEND: case OP_PREPENDQ:
        if (key > 0 && ext == 0)
            process_update(c, &rq, (op == OP_APPEND || op == OP_APPENDQ) ? STORE_APPEND : STORE_PREPEND, 0, 0,
                           (uint64_t)body - key);
        else
            bad = true;
        break;
    case OP_GET: case OP_GETQ: case OP_GETK: case OP_GETKQ:
        if (ext == 0 && body == key && key > 0)
            process_get(c, &rq, false, op == OP_GETK || op == OP_GETKQ, true);
        else
            bad = true;
        break;
    case OP_TOUCH: case OP_GAT: case OP_GATQ: case OP_GATK: case OP_GATKQ:
        if (ext == 4 && key != 0)
            process_get(c, &rq, true, op == OP_GATK || op == OP_GATKQ, op != OP_TOUCH);
        else
            bad = true;
        break;
    case OP_DELETE: case OP_DELETEQ:
        if (key > 0 && ext == 0 && body == key)
            process_delete(c, &rq);
        else
            bad = true;
        break;
    case OP_INCREMENT: case OP_INCREMENTQ: case OP_DECREMENT: case OP_DECREMENTQ:
        if (key > 0 && ext == 20 && body == key + ext)
            process_arith(c, &rq, op == OP_INCREMENT || op == OP_INCREMENTQ);
        else
            bad = true;
        break;
    case OP_STAT:
        if (ext == 0)
            process_stat(c, &rq);
        else
            bad = true;
        break;
    case OP_QUIT: case OP_QUITQ:
        if (key == 0 && ext == 0 && body == 0) {
            bin_ok(c, &rq, 0, NULL, 0);
            c->close_reason = SM_CLOSE_NORMAL;
            c->state = CONN_CLOSING;
        } else {
            bad = true;
        }
        break;
    case OP_SASL_LIST_MECHS:
        if (!(ext == 0 && key == 0 && body == 0))
            bad = true;
        else if (!auth)
            bin_error(c, &rq, ST_UNKNOWN_COMMAND, NULL, body - key);
        else
            sasl_list_mechs(c, &rq);
        break;
    case OP_SASL_AUTH: case OP_SASL_STEP:
        if (!(ext == 0 && key != 0)) {
            bad = true;
        } else if (!auth) {
            bin_error(c, &rq, ST_UNKNOWN_COMMAND, NULL, body - key);
        } else {
            used += sasl_auth(c, &rq);
        }
        break;
    default:
        /* memcached discards body-length bytes after the key (not body - key - extras). */
        bin_error(c, &rq, ST_UNKNOWN_COMMAND, NULL, body);
        break;
    }
    if (bad)
        protocol_error(c, &rq);
    return used;
}
