/*
 * proto.h -- the protocol layer's entry point and the context it runs in.
 *
 * proto_process() parses requests straight out of a buffer of received
 * bytes, executes them against the cache and queues the responses on the
 * connection (conn.h out_* calls).  It knows nothing about sockets or rings:
 * every backend (epoll, io_uring, /dev/stackmap) feeds it the same way, via
 * the worker's worker_feed().  The text protocol lives in text.c, the meta commands in
 * meta.c; this header is what they share.
 */
#ifndef SM_PROTO_H
#define SM_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../conn.h"

/*
 * Parse and execute as many complete requests from data[0..len) as
 * possible.  Returns the number of bytes consumed; the caller keeps the
 * rest and calls again with more bytes appended.  Value bytes of a store
 * are consumed (copied into the item) as they arrive, so a large value
 * never has to fit in the caller's buffer.  Stops early, consuming less,
 * when out_pending(c) exceeds OUT_HIGH_WATER (back-pressure) or when the
 * connection must close (c->state == CONN_CLOSING).  An unterminated line
 * longer than SM_LINE_MAX that is not a get/gets closes the connection, as
 * memcached does; a long get/gets line is answered key by key as its keys
 * arrive (c->gets), so it never has to fit in the caller's buffer either.
 * data must be writable: lines are tokenised in place (every backend's
 * receive buffers are private to the worker).
 */
size_t proto_process(conn *c, char *data, size_t len);

/* Text protocol: handle one complete command line (without "\r\n"/"\n"). */
void proto_text_command(conn *c, char *line, size_t len);
/* Meta protocol: handle one complete meta command line ("mg ...", "ms ...", ...). */
void proto_meta_command(conn *c, char *line, size_t len);

/* One key of a long get/gets line (proto.c streams those): count it and queue
 * its VALUE if it is a hit.  false: the queue could not take the reply. */
bool proto_text_get_key(conn *c, const char *key, size_t nkey, bool return_cas);

/* Called by proto_process when a value is complete (c->pending says whose). */
void proto_text_complete_store(conn *c);
void proto_meta_complete_store(conn *c);

/*
 * Shared helpers (proto.c).
 */
/* A key is valid: 1..250 bytes (memcached 1.6's text protocol accepts control
 * characters inside keys; the tokenizer already split on spaces). */
bool proto_key_valid(const char *key, size_t nkey);
/* memcached's safe_strtoull/strtoul/strtol/strtoll: whole token must be a number. */
bool safe_strtoull(const char *s, uint64_t *out);
bool safe_strtoul(const char *s, uint32_t *out);
bool safe_strtol(const char *s, int32_t *out);
bool safe_strtoll(const char *s, int64_t *out);
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
