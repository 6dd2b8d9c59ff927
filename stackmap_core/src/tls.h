/*
 * tls.h -- TLS (-Z) for client connections: the handshake with OpenSSL on
 * the worker, then the record layer in the kernel (kTLS) where it can take
 * it, or in user space (OpenSSL over memory BIOs) where it cannot.
 *
 * The worker calls in at six small hook points (worker.c): a connection
 * accepted on a TLS listener (tls_conn_start), bytes received (tls_input
 * instead of the plain path), bytes sent (tls_sent), the flush before a
 * send (tls_flush), the server's decision to close (tls_goodbye) and the
 * close (tls_conn_free).  Everything else -- the
 * backends, the protocols, the output queue -- sees plain connections.
 */
#ifndef SM_TLS_H
#define SM_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "conn.h"

struct sm_engine;
struct worker;

/* The server-wide part (an SSL_CTX); NULL in an engine without -Z. */
struct sm_tls;

/* With -Z: load the certificates and build the server context, recording the
 * "notls:" listeners.  0, or -1 + a one-line reason in err. */
int tls_engine_init(struct sm_engine *e, char *err, size_t errlen);
void tls_engine_free(struct sm_engine *e);

/* memcached's refresh_certs: load -o ssl_chain_cert/ssl_key/ssl_ca_cert
 * again for the connections that follow.  0, or -1 + err (the old ones stay). */
int tls_refresh_certs(struct sm_engine *e, char *err, size_t errlen);

/* Seconds since the certificates were last loaded (stats time_since_server_cert_refresh). */
long long tls_cert_age(struct sm_engine *e);

/* A listener named "notls:ADDR" in -l: strip the prefix in place and say so. */
bool tls_listen_notls(char *host);

/* Record a "notls:" listener's bound address (engine.c, while binding). */
void tls_note_notls(struct sm_engine *e, int fd);

/* Should the connection on fd (just accepted) speak TLS? */
bool tls_wanted(struct worker *w, int fd);

/* Attach TLS state to a new connection (the handshake starts with its first
 * bytes).  false: out of memory, the connection must not open. */
bool tls_conn_start(struct worker *w, conn *c);
void tls_conn_free(conn *c);

/* The worker's received-bytes hook for a TLS connection (worker_input's contract). */
bool tls_input(struct worker *w, conn *c, char *data, size_t len);
/* n bytes of c's queue left (called before the queue itself is told). */
void tls_sent(struct worker *w, conn *c, size_t n);
/* Before a send: encrypt the plaintext queued so far, unless the kernel does;
 * may_switch (only at the flush, after the wait delivered everything read):
 * first hand the records to the kernel if it can take them now.  false: close. */
bool tls_flush(struct worker *w, conn *c, bool may_switch);
/* The worker is about to close c with nothing queued: queue TLS's
 * close_notify first, as memcached's SSL_shutdown sends it, so a client
 * reads the end of the session rather than a reset.  true: queued, send
 * it, then close; false (said already, the kernel has the records, the
 * handshake never finished, a send is in flight): close now. */
bool tls_goodbye(struct worker *w, conn *c);

#endif
