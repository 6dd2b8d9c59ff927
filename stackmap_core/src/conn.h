/*
 * conn.h -- one client connection as the protocols and the worker loop see it.
 *
 * A connection is owned by exactly one worker thread from accept to close,
 * so nothing here is locked.  conn.c is a leaf: it knows the cache (queued
 * items are released there) and its owner's memory (struct conn_env), but
 * neither workers nor protocols.  The worker loop (worker.c) hands received
 * bytes to the protocol layer (proto_process in proto/proto.h), which
 * appends responses to the output queue with the out_* calls below; the
 * backend sends the queue as iovecs and the worker calls conn_out_sent().
 *
 * The output queue is a list of iovecs.  Short responses (status lines,
 * "VALUE ..." headers) are either constant strings or copied into scratch
 * chunks that never move while queued; values larger than OUT_COPY_MAX are
 * sent straight from item memory, and those items stay referenced until the
 * queue is sent (smaller ones are copied: cheaper than another iovec).  Scratch
 * chunks come from the owner's free list (conn_env), so steady-state
 * requests allocate nothing.
 *
 * Memory: an idle connection holds only this struct.  The receive
 * carry-over and the queue's iovec and held-item arrays are blocks of the
 * owner's pool (bufpool.h), taken when data arrives and given back once it
 * has been answered and sent.
 *
 * End of stream: when the peer shuts down its side, the worker stops
 * reading and sets rd_eof; every complete request received before it is
 * still answered (including input that back-pressure held), and the
 * connection closes once nothing is left to send (worker_eof_finished).
 */
#ifndef SM_CONN_H
#define SM_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "bufpool.h"
#include "cache/cache.h"
#include "stats.h"

struct worker;
struct dump_stream;
struct sm_watcher;

/* Bytes of one output scratch chunk. */
#define OUT_CHUNK_SIZE 16384

/* Longest command line memcached accepts before deciding it is garbage. */
#define SM_LINE_MAX 2048

/* Values (and constants) up to this size are copied into the queue rather
 * than referenced: copying a small value costs less than an extra iovec. */
#define OUT_COPY_MAX 2048

/* Output queue above which a connection stops parsing input (back-pressure). */
#define OUT_HIGH_WATER (4u * 1024u * 1024u)

/* A scratch chunk holding copied response bytes.  "stats" counts them as
 * memcached's response objects: response_obj_count the chunks in output
 * queues now, response_obj_bytes the bytes of all allocated (queued or on
 * the free list). */
typedef struct out_chunk {
    struct out_chunk *next; /* next chunk in the queue or the free list */
    uint32_t used;          /* bytes used in data[] */
    char data[OUT_CHUNK_SIZE]; /* response bytes */
} out_chunk;

/*
 * What a connection draws memory from and counts its shortages in: its
 * owner's resources (one per worker, embedded in struct worker).  This is
 * all conn.c sees of the thread that owns the connection.
 */
typedef struct conn_env {
    sm_pool pool;                  /* blocks: carry-over, iovec and held-item arrays, meta flags,
                                      the backends' send snapshots (bufpool.h) */
    out_chunk *free_chunks;        /* recycled output scratch chunks */
    int nfree_chunks;              /* length of free_chunks */
    cache *cache;                  /* where the queue's item references are released */
    size_t rbuf_max;               /* longest input carry-over accepted (a longer line is abuse) */
    struct sm_thread_stats *stats; /* the owner's counters (response_obj_*, read_buf_oom) */
    const _Atomic unsigned *log_flags; /* the kinds somebody watches (logger.h sm_logger.eflags), or NULL */
} conn_env;

/* Where the protocol parser is in the byte stream. */
typedef enum {
    CONN_PARSE = 0,   /* expecting a command line */
    CONN_NREAD = 1,   /* copying a value's bytes into c->nread_item */
    CONN_SWALLOW = 2, /* discarding the value of a rejected store */
    CONN_CLOSING = 3  /* send what is queued, then close */
} conn_state;

/* Which protocol a pending value belongs to. */
typedef enum { PROTO_TEXT = 0, PROTO_META = 1, PROTO_BINARY = 2 } proto_kind;

/* What a connection speaks, decided by its first byte as memcached does. */
typedef enum {
    CONN_PROTO_UNKNOWN = 0, /* nothing received yet */
    CONN_PROTO_TEXT = 1,    /* text and meta lines */
    CONN_PROTO_BINARY = 2   /* the first byte was 0x80: binary requests (proto/binary.h) */
} conn_proto;

/* A store waiting for its value bytes (text "set ..." or meta "ms ...");
 * laid out to fill 64 bytes. */
typedef struct pending_store {
    uint64_t cas;         /* text cas unique / meta C */
    uint64_t cas_new;     /* meta E: the stored item's CAS (0: the next unique) */
    uint32_t hv;          /* hash of the key */
    uint8_t proto;        /* proto_kind: who completes it */
    uint8_t op;           /* store_op: set/add/replace/append/prepend/cas */
    bool noreply;         /* text noreply / meta q */
    union {
        struct {                  /* meta ms: what its response needs, parsed from its flags */
            bool invalidate;      /* I: a stale CAS may store and mark the item stale */
            uint8_t nret;         /* entries in ret */
            char ret[3];          /* 'O', 'k', 'c' in the order the request gave them */
            uint8_t opaque_len;   /* bytes in opaque */
            char opaque[31];      /* the O token without its 'O' (memcached allows 31 bytes) */
        } meta;
        struct {                  /* binary set/add/replace/append/prepend: what its response echoes */
            uint32_t opaque;      /* the request's opaque, as sent */
            uint8_t opcode;       /* the request's opcode, as sent */
        } bin;
    };
} pending_store;

/*
 * A get/gets line longer than SM_LINE_MAX that has not ended yet: proto.c
 * answers its keys as they arrive instead of buffering the whole line.
 */
typedef struct get_stream {
    bool active;     /* the line's "get "/"gets " is consumed; keys follow */
    bool return_cas; /* gets: VALUE lines carry the CAS */
    bool skip;       /* a key over 250 bytes or a NUL was seen: ignore the rest of the line */
    bool too_long;   /* a key over 250 bytes was seen: the line ends in CLIENT_ERROR */
    uint64_t nkeys;  /* keys seen (none at all: the line is "ERROR") */
} get_stream;

typedef struct conn {
    int fd;                  /* the socket */
    uint32_t id;             /* engine-wide connection number (for -vv logs) */
    struct worker *worker;   /* owning worker thread (the protocols reach the cache and
                                settings through it; conn.c never does) */
    conn_env *env;           /* the owner's memory and counters (conn.c's only view of it) */
    conn_state state;        /* parser state */
    bool noreply;            /* the current text command asked for no reply */
    bool rd_eof;             /* the peer ended its stream: read no more, answer what came, close */
    uint8_t loop;            /* the worker loop's CONN_LOOP_* flags (worker.h) */
    uint8_t proto;           /* conn_proto: text or binary, from the first byte */
    bool authenticated;      /* -Y: this connection has authenticated (proto/auth.h) */
    bool resp_stack;         /* a reply of this input batch is unsent as memcached counts it: a
                                command since the batch began or the last flush (watch refuses) */
    bool flushed;            /* the command just run ends as memcached's get and mn do: every
                                reply so far is sent before the next command is read */
    int nreqs;               /* requests this turn may still start (-R, set by worker_feed); -1: the
                                turn ended with a complete request left unanswered (a yield) */

    /* input carried over between receives (a partial line or request);
     * a pooled block, held only while rbytes > 0 */
    char *rbuf;              /* buffered unparsed bytes, NULL when none */
    uint32_t rbytes;         /* bytes in rbuf */
    uint32_t rsize;          /* capacity of rbuf */

    /* value being received */
    item *nread_item;        /* item being filled (CONN_NREAD), referenced */
    char *nread_dst;         /* where the next value byte goes */
    uint32_t nread_room;     /* bytes of the item segment at nread_dst (cache.h, item_seg_first) */
    const item *nread_next;  /* the chained item's chunk after that segment, or NULL */
    uint32_t nread_left;     /* value bytes (incl. "\r\n") still to come */
    uint64_t swallow_left;   /* bytes still to discard (CONN_SWALLOW) */
    pending_store pending;   /* what to do when the value is complete */
    get_stream gets;         /* a long get/gets line being answered as it arrives */
    uint64_t auth_left;      /* -Y text auth: bytes of the "user password" data (with "\r\n") still
                                awaited after its set line; 0 when waiting for that line */
    struct dump_stream *dump; /* an lru_crawler metadump being streamed (proto/crawler_cmd.c), or NULL */
    struct sm_watcher *watch; /* "watch" made it a watcher (logger.h): it gets log lines, its input is
                                 ignored; NULL otherwise */
    uint8_t close_reason;    /* enum sm_close_reason (logger.h): what conn_close logs */

    /* output queue; its arrays are pooled blocks, held only while bytes are queued */
    struct iovec *iov;       /* queued iovecs, in order */
    int iovcnt;              /* iovecs queued */
    int iovcap;              /* capacity of iov */
    int iov_done;            /* iovecs fully sent */
    size_t iov_off;          /* bytes of iov[iov_done] already sent */
    size_t out_bytes;        /* bytes queued and not yet sent */
    item **held;             /* items referenced by queued iovecs */
    int nheld;               /* entries in held */
    int heldcap;             /* capacity of held */
    out_chunk *chunk_head;   /* first scratch chunk in use */
    out_chunk *chunk_tail;   /* last scratch chunk (the one being filled) */

    /* bookkeeping */
    uint64_t last_active;    /* rel_time of the last bytes received (idle timeout, stats conns) */
    struct conn *next_flush; /* the worker's flush list: connections to look at after the batch */
    struct conn *prev_conn;  /* worker's list of open connections (stats conns) */
    struct conn *next_conn;  /* worker's list of open connections (stats conns) */
    void *backend_data;      /* the backend's own per-connection data, NULL when it has none */
    struct tls_conn *tls;    /* TLS state (tls.c), NULL on a plain connection */
    char peer[120];          /* "tcp:addr:port" or "unix:path" for stats conns and logs */
    uint64_t lat_start;      /* monotonic ns when the pending store's line was dispatched (latency.h) */
    int lat_cmd;             /* enum sm_lat_cmd of the pending store */
} conn;

/* c's last turn at parsing ended at -R requests with a complete request
 * still held in its input, or in a metadump step with more to come: the
 * worker resumes it after the others' turns. */
static inline bool conn_yielded(const conn *c) { return c->nreqs < 0; }

/* ---- output queue (conn.c) ---- */

/* Queue a constant string (lives forever): no copy. 0 or -1 (out of memory). */
int out_static(conn *c, const char *s, size_t len);
/* Queue a copy of len bytes. */
int out_copy(conn *c, const void *s, size_t len);
/* Reserve up to max (<= OUT_CHUNK_SIZE) bytes of scratch to format into; NULL on OOM. */
char *out_reserve(conn *c, size_t max);
/* Queue `used` bytes of the last out_reserve(). */
void out_commit(conn *c, size_t used);
/* printf into scratch and queue it (max OUT_CHUNK_SIZE bytes). */
int out_printf(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * Queue the first len bytes of the item's value (a chained item's chunk by
 * chunk); the queue takes over one reference to it (released once sent).
 * Pass the same item several times with the extra references taken by the
 * caller.
 */
int out_item(conn *c, item *it, size_t len);
/* Drop everything queued (on close). */
void out_reset(conn *c);
/* Bytes queued and not yet sent. */
static inline size_t out_pending(const conn *c) { return c->out_bytes; }
/* The backend sent n more bytes; releases items and chunks once all is sent. */
void conn_out_sent(conn *c, size_t n);
/* The iovecs still to send, for writev/sendmsg. */
struct iovec *conn_out_iov(conn *c, int *cnt);

/*
 * The last `tail` bytes queued (the plaintext after TLS's ciphertext head):
 * hand them to fn piece by piece, in order, after dropping them from the
 * queue, so fn may queue their replacement (tls.c encrypts them).  Their
 * memory (scratch chunks, held items) stays valid until the queue is sent.
 * false when fn fails or memory runs out.
 */
bool conn_out_take_tail(conn *c, size_t tail, bool (*fn)(void *arg, const char *p, size_t len), void *arg);

/* Initialise a freshly accepted connection drawing on env / free its resources. */
void conn_init(conn *c, conn_env *env, int fd, uint32_t id);
void conn_cleanup(conn *c);

/* Free env's recycled scratch chunks and pooled blocks (its owner is going away). */
void conn_env_destroy(conn_env *env);

/*
 * Input carry-over: append len bytes the parser left unconsumed to rbuf
 * (false: over env->rbuf_max or out of memory, the connection must close);
 * drop the first `used` bytes of rbuf once parsed; give the blocks nothing
 * needs any more back after a parse.
 */
bool conn_rbuf_append(conn *c, const char *data, size_t len);
void conn_rbuf_consume(conn *c, size_t used);
void conn_input_done(conn *c);

#endif
