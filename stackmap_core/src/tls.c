/*
 * tls.c -- TLS for client connections (-Z), keeping the worker's data path.
 *
 * Why it is built this way.  The point of stackmapd is that a request goes
 * from the backend's receive (io_uring buffer, epoll read, /dev/stackmap
 * ring slot) to the protocols and back to the backend's send with nothing
 * in between.  TLS must not change that where the kernel can do the record
 * layer, so a TLS connection goes through three stages:
 *
 * 1. The handshake, non-blocking, on the worker that owns the connection.
 *    OpenSSL talks to memory BIOs: the backend's received bytes are written
 *    into one (tls_input), and what OpenSSL writes to the other is moved into
 *    the connection's ordinary output queue, which the backend sends.  So no
 *    backend knows about TLS, a client that stalls mid-handshake costs one
 *    idle connection and never a blocked thread, and garbage or a plaintext
 *    client fails the handshake: OpenSSL's alert is sent, the connection
 *    closes and ssl_handshake_errors counts it.  (The alternative, a
 *    handshake stage on its own thread before the worker adopts the socket,
 *    would need every backend to take over an open socket from another
 *    thread; this way they are untouched.)
 *
 * 2. kTLS.  With TLS 1.3 (AES-GCM or ChaCha20-Poly1305) the traffic keys are
 *    derived from the secrets OpenSSL reports through its key-log callback
 *    (HKDF-Expand-Label, RFC 8446 7.3) and given to the kernel: TCP_ULP
 *    "tls", then TLS_RX and TLS_TX.  From then on the backend receives and
 *    sends plaintext on the socket and the SSL object is freed.  The switch
 *    is made at a flush, where three things are exact:
 *      - every byte read from the socket has been delivered to us (epoll
 *        reads, io_uring runs its receives with DEFER_TASKRUN and the
 *        stackmap sync reads only inside the backend's wait; with
 *        uring_sqpoll a kernel thread receives at any time, so kTLS is not
 *        tried there), and what we decrypted ends on a record boundary;
 *      - the RX sequence number is the count of client records decrypted in
 *        user space since the handshake (a request that came with the
 *        client's Finished), counted by walking the record headers;
 *      - nothing OpenSSL encrypted is still queued or in flight, and the TX
 *        sequence number is the count of records it wrote after the
 *        handshake (TLS 1.3 session tickets advance it).
 *    Once switched, a record that is not application data (a KeyUpdate, an
 *    alert such as close_notify) makes the backend's receive fail (EIO) and
 *    the connection closes: the client reconnects.
 *
 * 3. The fallback: where the kernel has no kTLS (no "tls" module:
 *    TCP_ULP gives ENOENT, remembered for the whole engine), for TLS 1.2,
 *    another cipher, -o no_ssl_kernel_tls or uring_sqpoll, the connection
 *    stays in user space: received bytes are decrypted (SSL_read) before the
 *    protocols see them, and before each send the plaintext the protocols
 *    queued is replaced by its encryption (conn_out_take_tail, SSL_write)
 *    in the same queue, so every backend still just sends its queue.  The
 *    queue's pieces (a reply's header, its value, END) gather in the
 *    worker's -o ssl_wbuf_size buffer first, one SSL_write per full buffer,
 *    as memcached's ssl_wbuf: records carry whole replies, not pieces.
 *    When the server closes such a session it sends close_notify first
 *    (tls_goodbye), as memcached's SSL_shutdown does.
 *
 * Counters (each completed handshake in exactly one of the first two):
 * ssl_ktls_conns (connections whose records the kernel took over),
 * ssl_userspace_conns (connections that stayed in user space, including
 * one that closed before the switch point came),
 * ssl_handshake_errors, ssl_new_sessions (with -o ssl_session_cache).
 *
 * The server context is shared: a read lock is taken once per TLS
 * connection accepted (SSL_new), the write lock only by refresh_certs.
 */
#include "tls.h"

#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "engine_internal.h"
#include "io/backend.h"
#include "worker.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

/* The most one SSL_read hands over, and the most plaintext one SSL_write
 * takes (one record each). */
#define TLS_PLAIN_MAX 16384

/* Most "notls:" listen addresses recorded. */
#define TLS_NOTLS_MAX 16

/* A TLS 1.3 traffic secret's longest size (SHA-384). */
#define TLS_SECRET_MAX 48

struct sm_tls {
    pthread_rwlock_t lock;                      /* guards ctx: read per TLS accept, written by refresh */
    SSL_CTX *ctx;                               /* the server context new connections use */
    _Atomic long long cert_time;                /* unix time the certificates were last loaded */
    atomic_bool ktls_absent;                    /* TCP_ULP "tls" said ENOENT: the kernel has no kTLS */
    int nnotls;                                 /* entries in notls */
    struct sockaddr_storage notls[TLS_NOTLS_MAX]; /* listeners -l notls:ADDR bound (plain) */
};

/* Where a byte stream is among its TLS records (5-byte header + body). */
struct rec_track {
    uint64_t records; /* records complete since the tracking began */
    uint32_t left;    /* body bytes of the current record still to come */
    uint8_t have;     /* header bytes of the current record seen (0..5) */
    uint8_t hdr[5];   /* the current record's header */
};

typedef struct tls_conn {
    SSL *ssl;            /* OpenSSL's session; NULL once the kernel has both directions */
    BIO *net_in;         /* memory BIO: received bytes OpenSSL has not read yet */
    BIO *net_out;        /* memory BIO: bytes OpenSSL wrote, not yet moved to the queue */
    bool open;           /* the handshake is complete */
    bool ktls_wanted;    /* open, TLS 1.3, the ULP is attached: switch at the next exact flush */
    bool ktls_rx;        /* the kernel decrypts what the backend receives */
    bool ktls_tx;        /* the kernel encrypts what the backend sends */
    bool goodbye;        /* our close_notify is queued (tls_goodbye): the next close is final */
    size_t sealed;       /* ciphertext at the head of the output queue (the rest is plaintext) */
    struct rec_track in; /* client records since the handshake (the RX sequence number) */
    struct rec_track out; /* our records since the handshake (the TX sequence number) */
    uint8_t secret_len;  /* bytes in each traffic secret, 0 until the key log gave both */
    uint8_t have_secrets; /* bit 0: client secret seen, bit 1: server secret seen */
    uint8_t client_secret[TLS_SECRET_MAX]; /* client_application_traffic_secret_0 */
    uint8_t server_secret[TLS_SECRET_MAX]; /* server_application_traffic_secret_0 */
} tls_conn;

/* Plaintext SSL_read hands over, before the protocols parse it (one per worker thread). */
static _Thread_local char plain_buf[TLS_PLAIN_MAX];

/* ---- the server context ---- */

/* `what`, then OpenSSL's first queued error, as one line; the queue is emptied. */
static void ssl_reason(char *err, size_t errlen, const char *what)
{
    unsigned long code = ERR_get_error();
    char buf[256] = "";
    if (code)
        ERR_error_string_n(code, buf, sizeof(buf));
    ERR_clear_error();
    snprintf(err, errlen, "%s%s%s", what, code ? " " : "", buf);
}

/* The key log (TLS 1.3): keep the two application traffic secrets for kTLS. */
static void keylog_cb(const SSL *ssl, const char *line)
{
    conn *c = SSL_get_app_data(ssl);
    if (!c || !c->tls)
        return;
    tls_conn *t = c->tls;
    uint8_t *dst;
    int bit;
    if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0)
        dst = t->client_secret, bit = 1;
    else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0)
        dst = t->server_secret, bit = 2;
    else
        return;
    const char *hex = strrchr(line, ' ');
    if (!hex)
        return;
    hex++;
    size_t n = strlen(hex) / 2;
    if (n == 0 || n > TLS_SECRET_MAX)
        return;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return;
        dst[i] = (uint8_t)v;
    }
    t->secret_len = (uint8_t)n;
    t->have_secrets |= (uint8_t)bit;
}

/* -o ssl_session_cache: a new session was cached (memcached's ssl_new_sessions). */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    (void)sess;
    conn *c = SSL_get_app_data(ssl);
    if (c)
        SM_STAT_INC(c->worker->stats.ssl_new_sessions);
    return 0; /* we keep no reference */
}

/* memcached's ssl_min_version values 0..3. */
static int min_version(int v)
{
    static const int map[] = {TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION, TLS1_3_VERSION};
    return map[v >= 0 && v <= 3 ? v : 2];
}

/* memcached's ssl_verify_mode values 0..3. */
static int verify_mode(int v)
{
    switch (v) {
    case 1:
        return SSL_VERIFY_PEER;
    case 2:
        return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    case 3:
        return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT | SSL_VERIFY_CLIENT_ONCE;
    default:
        return SSL_VERIFY_NONE;
    }
}

/* A server context from the settings; NULL + err. */
static SSL_CTX *build_ctx(const struct sm_settings *s, char *err, size_t errlen)
{
    if (s->ssl_chain_cert[0] == '\0') {
        snprintf(err, errlen, "-Z/--enable-ssl needs a certificate: -o ssl_chain_cert=FILE");
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_reason(err, errlen, "cannot create the TLS context:");
        return NULL;
    }
    char what[1200];
    if (!SSL_CTX_set_min_proto_version(ctx, min_version(s->ssl_min_version))) {
        ssl_reason(err, errlen, "-o ssl_min_version:");
        goto fail;
    }
    /* The messages are memcached's (refresh_certs answers them too). */
    if (SSL_CTX_use_certificate_chain_file(ctx, s->ssl_chain_cert) != 1) {
        snprintf(what, sizeof(what), "Error loading the certificate chain: %s :", s->ssl_chain_cert);
        ssl_reason(err, errlen, what);
        goto fail;
    }
    const char *key = s->ssl_key[0] ? s->ssl_key : s->ssl_chain_cert;
    if (SSL_CTX_use_PrivateKey_file(ctx, key, s->ssl_keyformat) != 1) {
        snprintf(what, sizeof(what), "Error loading the key: %s :", key);
        ssl_reason(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_reason(err, errlen, "Error validating the certificate:");
        goto fail;
    }
    if (s->ssl_ca_cert[0]) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(s->ssl_ca_cert);
        if (!names || SSL_CTX_load_verify_locations(ctx, s->ssl_ca_cert, NULL) != 1) {
            if (names)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            snprintf(what, sizeof(what), "Error loading the CA certificate: %s :", s->ssl_ca_cert);
            ssl_reason(err, errlen, what);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
    }
    if (s->ssl_ciphers[0] && SSL_CTX_set_cipher_list(ctx, s->ssl_ciphers) != 1) {
        snprintf(what, sizeof(what), "Error setting the provided cipher(s): %s :", s->ssl_ciphers);
        ssl_reason(err, errlen, what);
        goto fail;
    }
    SSL_CTX_set_verify(ctx, verify_mode(s->ssl_verify_mode), NULL);
    if (s->ssl_session_cache) {
        static const unsigned char sid[] = "stackmapd";
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
        SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    if (s->ssl_kernel_tls)
        SSL_CTX_set_keylog_callback(ctx, keylog_cb);
    /* (No SSL_MODE_RELEASE_BUFFERS: it frees and reallocates the record
     * buffers around every record, an allocation per request.  A user-space
     * connection keeps them, ~34 KiB; a kTLS one frees its SSL at the switch.) */
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

bool tls_listen_notls(char *host)
{
    if (strncmp(host, "notls:", 6) != 0)
        return false;
    memmove(host, host + 6, strlen(host + 6) + 1);
    return true;
}

int tls_engine_init(sm_engine *e, char *err, size_t errlen)
{
    if (!e->settings.ssl_enabled)
        return 0;
    struct sm_tls *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    t->ctx = build_ctx(&e->settings, err, errlen);
    if (!t->ctx) {
        free(t);
        return -1;
    }
    /* memcached's ssl_wbuf: one per worker thread, where a flush's replies
     * gather before they are encrypted (seal). */
    size_t wbuf = (size_t)e->settings.ssl_wbuf_size * 1024;
    for (int i = 0; i < e->settings.num_threads; i++) {
        e->workers[i].tls_wbuf = malloc(wbuf);
        if (!e->workers[i].tls_wbuf) {
            snprintf(err, errlen, "out of memory for -o ssl_wbuf_size (%zu bytes per thread)", wbuf);
            for (int j = 0; j < i; j++) {
                free(e->workers[j].tls_wbuf);
                e->workers[j].tls_wbuf = NULL;
            }
            SSL_CTX_free(t->ctx);
            free(t);
            return -1;
        }
    }
    pthread_rwlock_init(&t->lock, NULL);
    atomic_store(&t->cert_time, (long long)time(NULL));
    e->tls = t;
    return 0;
}

void tls_engine_free(sm_engine *e)
{
    struct sm_tls *t = e->tls;
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    pthread_rwlock_destroy(&t->lock);
    free(t);
    e->tls = NULL;
    for (int i = 0; i < e->settings.num_threads; i++) {
        free(e->workers[i].tls_wbuf);
        e->workers[i].tls_wbuf = NULL;
    }
}

int tls_refresh_certs(sm_engine *e, char *err, size_t errlen)
{
    struct sm_tls *t = e->tls;
    if (!t) {
        snprintf(err, errlen, "Error TLS not enabled");
        return -1;
    }
    SSL_CTX *ctx = build_ctx(&e->settings, err, errlen);
    if (!ctx)
        return -1;
    pthread_rwlock_wrlock(&t->lock);
    SSL_CTX *old = t->ctx;
    t->ctx = ctx;
    pthread_rwlock_unlock(&t->lock);
    SSL_CTX_free(old); /* (connections keep their own reference) */
    atomic_store(&t->cert_time, (long long)time(NULL));
    return 0;
}

long long tls_cert_age(sm_engine *e)
{
    return e->tls ? (long long)time(NULL) - atomic_load(&e->tls->cert_time) : 0;
}

void tls_note_notls(sm_engine *e, int fd)
{
    struct sm_tls *t = e->tls;
    if (!t || t->nnotls >= TLS_NOTLS_MAX)
        return;
    socklen_t sl = sizeof(t->notls[0]);
    if (getsockname(fd, (struct sockaddr *)&t->notls[t->nnotls], &sl) == 0)
        t->nnotls++;
}

/* Same address and port. */
static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port &&
               (y->sin_addr.s_addr == htonl(INADDR_ANY) || x->sin_addr.s_addr == y->sin_addr.s_addr);
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               (IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr) || memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0);
    }
    return false;
}

bool tls_wanted(worker *w, int fd)
{
    struct sm_tls *t = w->engine->tls;
    if (!t)
        return false;
    /* -s: the unix socket is plain, as memcached's is under -Z. */
    if (w->engine->settings.unix_socket[0])
        return false;
    if (t->nnotls == 0)
        return true;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return true;
    for (int i = 0; i < t->nnotls; i++)
        if (same_addr(&ss, &t->notls[i]))
            return false;
    return true;
}

/* ---- per connection ---- */

bool tls_conn_start(worker *w, conn *c)
{
    struct sm_tls *st = w->engine->tls;
    tls_conn *t = calloc(1, sizeof(*t));
    if (!t)
        return false;
    pthread_rwlock_rdlock(&st->lock);
    t->ssl = SSL_new(st->ctx);
    pthread_rwlock_unlock(&st->lock);
    t->net_in = BIO_new(BIO_s_mem());
    t->net_out = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->net_in || !t->net_out) {
        SSL_free(t->ssl);
        BIO_free(t->net_in);
        BIO_free(t->net_out);
        free(t);
        ERR_clear_error();
        return false;
    }
    /* An empty memory BIO means "try again later", not end of file. */
    BIO_set_mem_eof_return(t->net_in, -1);
    SSL_set_bio(t->ssl, t->net_in, t->net_out);
    SSL_set_accept_state(t->ssl);
    SSL_set_app_data(t->ssl, c);
    c->tls = t;
    return true;
}

void tls_conn_free(conn *c)
{
    tls_conn *t = c->tls;
    if (!t)
        return;
    if (t->ktls_wanted) /* closed before the switch: it was served in user space */
        SM_STAT_INC(c->worker->stats.ssl_userspace_conns);
    SSL_free(t->ssl); /* (frees the BIOs) */
    OPENSSL_cleanse(t, sizeof(*t));
    free(t);
    c->tls = NULL;
}

/* Walk len bytes of a record stream. */
static void rec_feed(struct rec_track *r, const uint8_t *p, size_t len)
{
    while (len > 0) {
        if (r->have < 5) {
            r->hdr[r->have++] = *p++;
            len--;
            if (r->have == 5) {
                r->left = (uint32_t)r->hdr[3] << 8 | r->hdr[4];
                if (r->left == 0)
                    r->records++, r->have = 0;
            }
            continue;
        }
        size_t n = len < r->left ? len : r->left;
        r->left -= (uint32_t)n;
        p += n;
        len -= n;
        if (r->left == 0)
            r->records++, r->have = 0;
    }
}

static bool rec_at_boundary(const struct rec_track *r)
{
    return r->have == 0;
}

/* Move what OpenSSL wrote into c's queue, as ciphertext. */
static bool move_out(conn *c)
{
    tls_conn *t = c->tls;
    size_t pending;
    while ((pending = BIO_ctrl_pending(t->net_out)) > 0) {
        size_t want = pending < OUT_CHUNK_SIZE ? pending : OUT_CHUNK_SIZE;
        char *p = out_reserve(c, want);
        if (!p)
            return false;
        int n = BIO_read(t->net_out, p, (int)want);
        if (n <= 0)
            return false;
        size_t before = out_pending(c);
        out_commit(c, (size_t)n);
        if (out_pending(c) != before + (size_t)n)
            return false; /* (no room for an iovec) */
        if (t->open)
            rec_feed(&t->out, (const uint8_t *)p, (size_t)n);
        t->sealed += (size_t)n;
    }
    return true;
}

/* Encrypt len bytes with one SSL_write (OpenSSL cuts records of at most
 * 16 KiB) and move the ciphertext into c's queue. */
static bool seal_write(conn *c, const char *p, size_t len)
{
    tls_conn *t = c->tls;
    int r = SSL_write(t->ssl, p, (int)len);
    if (r <= 0 || (size_t)r != len) {
        ERR_clear_error();
        return false;
    }
    return move_out(c);
}

/* conn_out_take_tail's callback: one piece of plaintext (an iovec of the
 * queue).  Pieces gather in the worker's wbuf and each full wbuf is one
 * SSL_write, as memcached's ssl_wbuf does: a reply's header, value and END
 * share records instead of being one record each.  A piece at least a
 * wbuf long, with nothing gathered, is encrypted in place, wbuf bytes at a
 * time (no copy). */
static bool seal_piece(void *arg, const char *p, size_t len)
{
    conn *c = arg;
    worker *w = c->worker;
    size_t cap = (size_t)w->settings->ssl_wbuf_size * 1024;
    while (len > 0) {
        if (w->tls_wbuf_len == 0 && len >= cap) {
            if (!seal_write(c, p, cap))
                return false;
            p += cap;
            len -= cap;
            continue;
        }
        size_t n = cap - w->tls_wbuf_len;
        if (n > len)
            n = len;
        memcpy(w->tls_wbuf + w->tls_wbuf_len, p, n);
        w->tls_wbuf_len += n;
        p += n;
        len -= n;
        if (w->tls_wbuf_len == cap) {
            w->tls_wbuf_len = 0;
            if (!seal_write(c, w->tls_wbuf, cap))
                return false;
        }
    }
    return true;
}

/* Replace the plaintext the protocols queued (after the sealed head) by its
 * encryption, then queue whatever else OpenSSL wrote. */
static bool seal(conn *c)
{
    tls_conn *t = c->tls;
    if (t->ktls_tx)
        return true;
    size_t plain = out_pending(c) - t->sealed;
    if (plain > 0) {
        worker *w = c->worker;
        w->tls_wbuf_len = 0;
        bool ok = conn_out_take_tail(c, plain, seal_piece, c);
        size_t rest = w->tls_wbuf_len;
        w->tls_wbuf_len = 0;
        if (!ok || (rest > 0 && !seal_write(c, w->tls_wbuf, rest)))
            return false;
    }
    return move_out(c);
}

/* ---- kTLS ---- */

/* HKDF-Expand-Label(secret, label, "", len) of RFC 8446 section 7.1. */
static bool expand_label(const EVP_MD *md, const uint8_t *secret, size_t slen, const char *label, uint8_t *out,
                         size_t len)
{
    uint8_t info[64];
    size_t ll = strlen(label), n = 0;
    info[n++] = (uint8_t)(len >> 8);
    info[n++] = (uint8_t)len;
    info[n++] = (uint8_t)(6 + ll);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, ll);
    n += ll;
    info[n++] = 0; /* empty context */
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    bool ok = pc && EVP_PKEY_derive_init(pc) > 0 &&
              EVP_PKEY_CTX_set_hkdf_mode(pc, EVP_PKEY_HKDEF_MODE_EXPAND_ONLY) > 0 &&
              EVP_PKEY_CTX_set_hkdf_md(pc, md) > 0 && EVP_PKEY_CTX_set1_hkdf_key(pc, secret, (int)slen) > 0 &&
              EVP_PKEY_CTX_add1_hkdf_info(pc, info, (int)n) > 0 && EVP_PKEY_derive(pc, out, &len) > 0;
    EVP_PKEY_CTX_free(pc);
    return ok;
}

/* Every kTLS crypto_info this file builds. */
union ktls_info {
    struct tls12_crypto_info_aes_gcm_128 g128;          /* TLS_AES_128_GCM_SHA256 */
    struct tls12_crypto_info_aes_gcm_256 g256;          /* TLS_AES_256_GCM_SHA384 */
    struct tls12_crypto_info_chacha20_poly1305 chacha;  /* TLS_CHACHA20_POLY1305_SHA256 */
};

/* The crypto_info for one direction; its size, or 0 when the cipher has none. */
static size_t ktls_info(const SSL *ssl, const uint8_t *secret, size_t slen, uint64_t seq, union ktls_info *ci)
{
    uint8_t key[32], iv[12], rec_seq[8];
    for (int i = 0; i < 8; i++)
        rec_seq[i] = (uint8_t)(seq >> (56 - 8 * i));
    memset(ci, 0, sizeof(*ci));
    size_t size = 0;
    switch (SSL_CIPHER_get_id(SSL_get_current_cipher(ssl))) {
    case TLS1_3_CK_AES_128_GCM_SHA256:
        if (!expand_label(EVP_sha256(), secret, slen, "key", key, 16) ||
            !expand_label(EVP_sha256(), secret, slen, "iv", iv, 12))
            break;
        ci->g128.info.version = TLS_1_3_VERSION;
        ci->g128.info.cipher_type = TLS_CIPHER_AES_GCM_128;
        memcpy(ci->g128.key, key, 16);
        memcpy(ci->g128.salt, iv, 4);
        memcpy(ci->g128.iv, iv + 4, 8);
        memcpy(ci->g128.rec_seq, rec_seq, 8);
        size = sizeof(ci->g128);
        break;
    case TLS1_3_CK_AES_256_GCM_SHA384:
        if (!expand_label(EVP_sha384(), secret, slen, "key", key, 32) ||
            !expand_label(EVP_sha384(), secret, slen, "iv", iv, 12))
            break;
        ci->g256.info.version = TLS_1_3_VERSION;
        ci->g256.info.cipher_type = TLS_CIPHER_AES_GCM_256;
        memcpy(ci->g256.key, key, 32);
        memcpy(ci->g256.salt, iv, 4);
        memcpy(ci->g256.iv, iv + 4, 8);
        memcpy(ci->g256.rec_seq, rec_seq, 8);
        size = sizeof(ci->g256);
        break;
    case TLS1_3_CK_CHACHA20_POLY1305_SHA256:
        if (!expand_label(EVP_sha256(), secret, slen, "key", key, 32) ||
            !expand_label(EVP_sha256(), secret, slen, "iv", iv, 12))
            break;
        ci->chacha.info.version = TLS_1_3_VERSION;
        ci->chacha.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
        memcpy(ci->chacha.key, key, 32);
        memcpy(ci->chacha.iv, iv, 12);
        memcpy(ci->chacha.rec_seq, rec_seq, 8);
        size = sizeof(ci->chacha);
        break;
    default:
        break;
    }
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    ERR_clear_error();
    return size;
}

/* Can the kernel take this connection's records (decided once, at the end
 * of the handshake)?  Attaches the ULP when it can. */
static bool ktls_possible(worker *w, conn *c)
{
    tls_conn *t = c->tls;
    struct sm_tls *st = w->engine->tls;
    if (!w->settings->ssl_kernel_tls || atomic_load_explicit(&st->ktls_absent, memory_order_relaxed))
        return false;
    if (!w->recv_in_wait)
        return false; /* the backend may read at any time (uring_sqpoll): no exact switch point */
    if (SSL_version(t->ssl) != TLS1_3_VERSION || t->have_secrets != 3)
        return false;
    uint32_t id = SSL_CIPHER_get_id(SSL_get_current_cipher(t->ssl));
    if (id != TLS1_3_CK_AES_128_GCM_SHA256 && id != TLS1_3_CK_AES_256_GCM_SHA384 &&
        id != TLS1_3_CK_CHACHA20_POLY1305_SHA256)
        return false;
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
        if (errno == ENOENT) /* no "tls" module: no connection will do better */
            atomic_store_explicit(&st->ktls_absent, true, memory_order_relaxed);
        return false;
    }
    return true;
}

/* The connection stays in user space: count it and forget the secrets. */
static void stay_userspace(worker *w, tls_conn *t)
{
    t->ktls_wanted = false;
    OPENSSL_cleanse(t->client_secret, sizeof(t->client_secret));
    OPENSSL_cleanse(t->server_secret, sizeof(t->server_secret));
    SM_STAT_INC(w->stats.ssl_userspace_conns);
}

/* The switch, at an exact point (see the header): RX first (a TX failure then
 * leaves a working half: the kernel decrypts, OpenSSL encrypts), then TX. */
static void ktls_switch(worker *w, conn *c)
{
    tls_conn *t = c->tls;
    union ktls_info ci;
    size_t n = ktls_info(t->ssl, t->client_secret, t->secret_len, t->in.records, &ci);
    bool rx = n > 0 && setsockopt(c->fd, SOL_TLS, TLS_RX, &ci, (socklen_t)n) == 0;
    if (!rx) {
        OPENSSL_cleanse(&ci, sizeof(ci));
        stay_userspace(w, t);
        return;
    }
    t->ktls_rx = true;
    n = ktls_info(t->ssl, t->server_secret, t->secret_len, t->out.records, &ci);
    bool tx = n > 0 && setsockopt(c->fd, SOL_TLS, TLS_TX, &ci, (socklen_t)n) == 0;
    OPENSSL_cleanse(&ci, sizeof(ci));
    if (!tx) {
        stay_userspace(w, t);
        return;
    }
    t->ktls_tx = true;
    t->ktls_wanted = false;
    OPENSSL_cleanse(t->client_secret, sizeof(t->client_secret));
    OPENSSL_cleanse(t->server_secret, sizeof(t->server_secret));
    SSL_free(t->ssl); /* the kernel has both directions now */
    t->ssl = NULL;
    t->net_in = t->net_out = NULL;
    SM_STAT_INC(w->stats.ssl_ktls_conns);
    engine_log(w->engine, 2, "<%d kTLS on\n", c->fd);
}

bool tls_flush(worker *w, conn *c, bool may_switch)
{
    tls_conn *t = c->tls;
    if (may_switch && t->ktls_wanted && t->sealed == 0 && !(c->loop & CONN_LOOP_SENDING) && rec_at_boundary(&t->in) &&
        BIO_ctrl_pending(t->net_in) == 0 && SSL_pending(t->ssl) == 0 && BIO_ctrl_pending(t->net_out) == 0 &&
        rec_at_boundary(&t->out))
        ktls_switch(w, c);
    if (!t->open)
        return move_out(c);
    return seal(c);
}

void tls_sent(worker *w, conn *c, size_t n)
{
    tls_conn *t = c->tls;
    t->sealed = n < t->sealed ? t->sealed - n : 0;
    if (t->ktls_wanted && t->sealed == 0)
        worker_want_flush(w, c); /* the switch may be possible now */
}

bool tls_goodbye(worker *w, conn *c)
{
    tls_conn *t = c->tls;
    if (t->goodbye || !t->open || !t->ssl || t->ktls_tx || out_pending(c) > 0 || (c->loop & CONN_LOOP_SENDING))
        return false;
    t->goodbye = true;
    if (t->ktls_wanted) /* no switch for a connection that is ending */
        stay_userspace(w, t);
    if (SSL_shutdown(t->ssl) < 0) { /* (0: sent, the peer's is not awaited) */
        ERR_clear_error();
        return false;
    }
    if (!move_out(c) || out_pending(c) == 0)
        return false;
    engine_log(w->engine, 2, "<%d TLS close_notify\n", c->fd);
    return true;
}

/* ---- receiving ---- */

/* The handshake failed (garbage, a plaintext client, a wrong certificate):
 * send OpenSSL's alert, if any, and close. */
static bool handshake_failed(worker *w, conn *c)
{
    SM_STAT_INC(w->stats.ssl_handshake_errors);
    if (atomic_load_explicit(&w->engine->verbose, memory_order_relaxed) >= 1) {
        char why[256];
        ssl_reason(why, sizeof(why), "TLS handshake failed:");
        engine_log(w->engine, 1, "<%d %s\n", c->fd, why);
    }
    ERR_clear_error();
    move_out(c);
    c->state = CONN_CLOSING;
    worker_want_flush(w, c);
    return false;
}

/* Handshake complete: decide kTLS or user space, and start counting records. */
static void handshake_done(worker *w, conn *c)
{
    tls_conn *t = c->tls;
    t->open = true;
    memset(&t->in, 0, sizeof(t->in));
    memset(&t->out, 0, sizeof(t->out));
    /* Client records that came with its Finished are the first of the new keys. */
    char *rest = NULL;
    long nrest = BIO_get_mem_data(t->net_in, &rest);
    if (nrest > 0 && rest)
        rec_feed(&t->in, (const uint8_t *)rest, (size_t)nrest);
    if (ktls_possible(w, c))
        t->ktls_wanted = true;
    else
        stay_userspace(w, t);
    engine_log(w->engine, 2, "<%d TLS handshake done (%s, %s)\n", c->fd, SSL_get_version(t->ssl),
               SSL_get_cipher_name(t->ssl));
}

bool tls_input(worker *w, conn *c, char *data, size_t len)
{
    tls_conn *t = c->tls;
    if (c->state == CONN_CLOSING)
        return false; /* (a failed handshake's alert is on its way: nothing more is read) */
    if (t->ktls_rx) /* the kernel decrypted it */
        return worker_plain_input(w, c, data, len);
    if (BIO_write(t->net_in, data, (int)len) != (int)len) {
        worker_close_soon(w, c);
        return false;
    }
    if (t->open)
        rec_feed(&t->in, (const uint8_t *)data, len);
    if (!t->open) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                return handshake_failed(w, c);
            if (BIO_ctrl_pending(t->net_out) > 0) {
                if (!move_out(c)) {
                    worker_close_soon(w, c);
                    return false;
                }
                worker_want_flush(w, c);
            }
            return true;
        }
        /* The last flight (TLS 1.3: the session tickets) is already under the
         * new keys: counted as ours after the handshake (handshake_done first). */
        handshake_done(w, c);
        if (!move_out(c)) {
            worker_close_soon(w, c);
            return false;
        }
        worker_want_flush(w, c);
    }
    /* Decrypt everything there is: the protocols hold what they cannot parse yet. */
    while (!(c->loop & (CONN_LOOP_CLOSE | CONN_LOOP_CLOSED)) && c->state != CONN_CLOSING) {
        int n = SSL_read(t->ssl, plain_buf, sizeof(plain_buf));
        if (n > 0) {
            worker_plain_input(w, c, plain_buf, (size_t)n);
            continue;
        }
        int e = SSL_get_error(t->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        ERR_clear_error();
        if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify: as the end of the stream */
            worker_eof(w, c);
            break;
        }
        worker_close_soon(w, c); /* a bad record: the stream cannot go on */
        return false;
    }
    /* OpenSSL may have answered something itself (a KeyUpdate). */
    if (BIO_ctrl_pending(t->net_out) > 0) {
        if (!seal(c)) {
            worker_close_soon(w, c);
            return false;
        }
        worker_want_flush(w, c);
    }
    return !(c->loop & (CONN_LOOP_CLOSE | CONN_LOOP_CLOSED | CONN_LOOP_PAUSED)) && c->state != CONN_CLOSING &&
           !c->rd_eof;
}
