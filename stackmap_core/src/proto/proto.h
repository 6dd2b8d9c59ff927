/*
 * proto.h -- the protocol layer's entry point and the context it runs in.
 *
 * proto_process() parses requests straight out of a buffer of received
 * bytes, executes them against the cache and queues the responses on the
 * connection (conn.h out_* calls).  It knows nothing about sockets or rings:
 * every backend (epoll, io_uring, /dev/stackmap) feeds it the same way, via
 * worker_feed() (worker.c).  Each command line is parsed once (parse.h: tokenizer,
 * command table, number rules) and dispatched as an sm_request to the
 * handler the command table names: text.c for the classic commands, meta.c
 * for the meta ones.  A connection whose first byte is 0x80 speaks the
 * binary protocol instead (binary.h): its requests go to binary.c, which
 * uses the same value receiving, output queue and turns.  With -Y a
 * connection must authenticate first (auth.h).  This header is what they
 * share.
 */
#ifndef SM_PROTO_H
#define SM_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../conn.h"
#include "../logger.h"
#include "parse.h"

/*
 * Parse and execute as many complete requests from data[0..len) as
 * possible.  Returns the number of bytes consumed; the caller keeps the
 * rest and calls again with more bytes appended.  Value bytes of a store
 * are consumed (copied into the item) as they arrive, so a large value
 * never has to fit in the caller's buffer.  Stops early, consuming less,
 * when out_pending(c) exceeds OUT_HIGH_WATER (back-pressure), when c->nreqs
 * requests have started and another complete one waits (a yield: c->nreqs
 * becomes -1, conn_yielded), after one step of a metadump that is not over
 * (c->dump; also a yield, and then it runs even with len 0) or when the
 * connection must close
 * (c->state == CONN_CLOSING).  An unterminated line
 * longer than SM_LINE_MAX that is not a get/gets closes the connection, as
 * memcached does; a long get/gets line is answered key by key as its keys
 * arrive (c->gets), so it never has to fit in the caller's buffer either.
 * data must be writable: lines are tokenised in place (every backend's
 * receive buffers are private to the worker).
 */
size_t proto_process(conn *c, char *data, size_t len);

/*
 * The handlers the command table (parse.h) dispatches to.  Each gets the
 * parsed line: r->cmd says which of its commands it is, r->tokens[0] is the
 * command word, and the token count is already within the table's bounds
 * for text commands.
 */
/*
 * Counting shared by the text and binary protocols (proto.c), as memcached
 * counts in both: proto_count_lookup adds get_expired / get_flushed for
 * whatever a lookup found; proto_count_get counts one get or touch lookup
 * (the key's prefix stats, get_cmds or touch_cmds, and the miss or the
 * hit of the item's class); proto_count_arith counts one incr or decr
 * (text, binary and meta ma alike) from cache_arith's result and class.
 */
struct worker;
void proto_count_lookup(struct worker *w, const get_info *info);
void proto_count_get(struct worker *w, const char *key, size_t nkey, const item *it, bool touch,
                     const get_info *info);
void proto_count_arith(struct worker *w, bool incr, arith_result r, int cls);

typedef void proto_handler(conn *c, sm_request *r);
proto_handler proto_text_get, proto_text_store, proto_text_delete, proto_text_arith, proto_text_touch,
    proto_text_stats, proto_text_flush_all, proto_text_version, proto_text_verbosity, proto_text_lru,
    proto_text_cache_memlimit, proto_text_shutdown, proto_text_quit, proto_text_refresh_certs,
    proto_text_lru_crawler, proto_text_slabs, proto_text_watch;
/* An unknown command, or a text command with a wrong number of tokens: "ERROR". */
proto_handler proto_text_unknown;
proto_handler proto_meta_get, proto_meta_set, proto_meta_delete, proto_meta_arith, proto_meta_noop,
    proto_meta_debug;

/* One key of a long get/gets line (proto.c streams those): count it and queue
 * its VALUE if it is a hit.  false: the queue could not take the reply. */
bool proto_text_get_key(conn *c, const char *key, size_t nkey, bool return_cas);

/*
 * A metadump is being streamed on c (c->dump, crawler_cmd.c): queue its next
 * step.  true when it ended (END queued, c->dump NULL) and parsing may go on.
 */
bool proto_dump_step(conn *c);

/*
 * The log streams (watch.c, logger.h), each a no-op unless a watcher asked
 * for its kind: proto_log_get logs one lookup (item_get); a store logs
 * proto_log_store_lookup (the key's item_get, as memcached's store looks it
 * up first) before cache_store and proto_log_store (item_store: op is a
 * store_op, result a store_result) after it, or for an allocation that
 * failed (it NULL).
 */
void proto_log_get_now(conn *c, const char *key, size_t nkey, const item *it, const get_info *info);
void proto_log_lookup_now(conn *c, const char *key, size_t nkey, uint32_t hv);
void proto_log_store_now(conn *c, const char *key, size_t nkey, const item *it, int op, int result);

/* Does anybody watch `kind`?  What a request pays when nobody does: one relaxed load. */
static inline bool proto_log_on(const conn *c, unsigned kind)
{
    return c->env->log_flags && (atomic_load_explicit(c->env->log_flags, memory_order_relaxed) & kind);
}
static inline void proto_log_get(conn *c, const char *key, size_t nkey, const item *it, const get_info *info)
{
    if (proto_log_on(c, SM_LOG_FETCHERS))
        proto_log_get_now(c, key, nkey, it, info);
}
/* The item_get of the lookup a delete or incr/decr makes (before it runs). */
static inline void proto_log_lookup(conn *c, const char *key, size_t nkey, uint32_t hv)
{
    if (proto_log_on(c, SM_LOG_FETCHERS))
        proto_log_lookup_now(c, key, nkey, hv);
}
static inline void proto_log_store_lookup(conn *c, const item *it, uint32_t hv)
{
    if (proto_log_on(c, SM_LOG_FETCHERS))
        proto_log_lookup_now(c, ITEM_key(it), it->nkey, hv);
}
static inline void proto_log_store(conn *c, const char *key, size_t nkey, const item *it, int op, int result)
{
    if (proto_log_on(c, SM_LOG_MUTATIONS))
        proto_log_store_now(c, key, nkey, it, op, result);
}

/* Called by proto_process when a value is complete (c->pending says whose). */
void proto_text_complete_store(conn *c);
void proto_meta_complete_store(conn *c);

/*
 * Shared helpers (proto.c).
 */
/* The per-class counters' index for a slab class id: ids outside the stats
 * table (SM_MAX_SLAB_CLASSES) count under class 0 rather than past its end. */
static inline unsigned proto_cls(int clsid)
{
    return (clsid > 0 && clsid < SM_MAX_SLAB_CLASSES) ? (unsigned)clsid : 0;
}
/*
 * Begin receiving a value of vlen bytes (+2 for "\r\n") into `it` (already
 * allocated, referenced; ownership passes to the connection).  proto_process
 * copies the following bytes and calls the matching *_complete_store; a
 * value whose last two bytes are not "\r\n" gets "CLIENT_ERROR bad data chunk".
 */
void proto_begin_nread(conn *c, item *it);
/* Discard the next n bytes (the value of a rejected store, + 2). */
void proto_begin_swallow(conn *c, uint64_t n);

#endif
