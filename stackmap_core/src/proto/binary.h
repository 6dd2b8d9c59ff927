/*
 * binary.h -- memcached's binary protocol, beside the text and meta ones.
 *
 * Why this file exists: clients that speak only the binary protocol (older
 * Java and PHP clients, memaslap -B, memccapable -b, SASL users) must be
 * able to use stackmapd as they use memcached 1.6.18.  A connection whose
 * first byte is the request magic 0x80 speaks binary for its whole life,
 * as in memcached; proto.c then hands each request to the calls below
 * instead of the line parser.  Requests share everything else with text
 * and meta: the cache calls, the output queue, -R turns, back-pressure,
 * and proto.c's value receiving (CONN_NREAD) and swallowing.
 */
#ifndef SM_PROTO_BINARY_H
#define SM_PROTO_BINARY_H

#include <stddef.h>

#include "proto.h"

/* The first byte of every binary request (and of a binary connection). */
#define SM_BIN_REQ_MAGIC 0x80
/* Bytes of a request or response header. */
#define SM_BIN_HDR_LEN 24

/*
 * How many bytes of p[0..n) the request starting there needs before it can
 * be dispatched: its header, extras and key (and, for SASL, its body).
 * 0: not even the header has arrived, or its magic is wrong (then
 * c->state is CONN_CLOSING: memcached hangs up without an answer).
 */
size_t proto_bin_need(conn *c, const char *p, size_t n);

/*
 * Execute the request at p, whose first proto_bin_need() bytes are there.
 * Returns the bytes consumed; a value that follows is received by proto.c
 * (CONN_NREAD, then proto_bin_complete_store) or swallowed.  *lat gets the
 * latency class (enum sm_lat_cmd) the request is timed as.
 */
size_t proto_bin_dispatch(conn *c, char *p, int *lat);

/* A binary store's value has arrived (proto.c calls this from CONN_NREAD). */
void proto_bin_complete_store(conn *c);

#endif
