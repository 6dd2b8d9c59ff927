/*
 * fuzz_conn.c -- libFuzzer harness for the protocol layer, driven the way
 * the backends drive it: through worker_feed() on connections owned by a
 * worker, with the output queue drained through conn_out_iov() and
 * conn_out_sent().
 *
 * Why it exists: every byte a client sends reaches proto_process() through
 * worker_feed(), so this is the server's whole network attack surface short
 * of the socket calls.  A plain "feed the input to one connection" harness
 * misses the bugs that live between calls: a line or a value split across
 * receives, the carry-over buffer, a partially sent output queue whose
 * items are still referenced, another connection changing the item in
 * between, an admin call walking the cache meanwhile.  This harness
 * exercises all of those, and checks what comes out.
 *
 * Input format: protocol bytes, with 0xFF as an escape.  "\xff\xff" is a
 * literal 0xFF byte; "\xff" followed by any other byte X is a control op.
 * Bytes between ops are fed to the current connection as one worker_feed()
 * call, so every op is also a split point.  A plain memcached session (no
 * 0xFF) is a valid input: it is fed to connection 0 in one call.
 *
 *   X 0x00-0x3F  switch the current connection to X % NCONN
 *   X 0x40-0x7F  drain the current connection's output: all of it when
 *                X == 0x40, else (X & 0x3F) * 7 bytes (partial send)
 *   X 0x80-0xBF  admin call number (X & 0x3F) % NADMIN (see run_admin; 0x8A
 *                stores a 60000-byte value, to reach back-pressure)
 *   X 0xC0       close the current connection and open a new one
 *   X 0xC1       worker_feed(c, NULL, 0): resume after back-pressure
 *   X 0xC2       the peer ends its stream (half-close): as the backends do,
 *                send the queue until worker_eof_finished() says to close;
 *                later bytes for this connection are dropped until 0xC0
 *   X 0xC3-0xFE  advance the cache clock by (X - 0xC2) * 13 seconds
 *
 * The same op sequence runs on two engines: engine A gets each segment as
 * one worker_feed() call, engine B gets it cut into pieces of 1..13 bytes.
 * Splitting must not change anything, so every connection's output must be
 * byte-identical between A and B ("STAT" lines aside: they hold rusage and
 * latency figures).  The one legitimate difference -- memcached closes a
 * connection whose buffered input holds 2048 bytes without a newline, so
 * how much arrives at once matters -- turns the comparison off for inputs
 * that have such a run.
 *
 * Invariants checked (abort() = a finding):
 *   - every reply on every connection is a well-formed memcached reply:
 *     known first word, "\r\n"-terminated, VALUE / VA headers followed by
 *     exactly the announced bytes and "\r\n"; on a binary connection
 *     (first byte 0x80) a response header whose lengths fit its body,
 *     followed by that body;
 *   - the queued iovecs add up to out_pending();
 *   - A and B produced the same bytes on every connection;
 *   - a snapshot dump of the cache restores (dry run) completely;
 *   - once every connection is closed, every live item has refcount 1
 *     (a leaked reference would pin the item forever);
 *   - and whatever ASan / UBSan / LeakSanitizer find.
 *
 * Each input gets fresh engines (not started: no threads, no sockets), so a
 * crash reproduces from its input alone.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"
#include "conn.h"
#include "engine.h"
#include "engine_internal.h"
#include "worker.h"

/* Connections per engine. */
#define NCONN 4
/* Output kept per connection slot for checking: a prefix of what was sent. */
#define OUT_KEEP (8u << 20)
/* Admin calls run_admin knows. */
#define NADMIN 12

/* One connection slot of one engine. */
struct slot {
    conn *c;          /* the open connection, NULL once closed */
    char *out;        /* bytes "sent" so far on this slot (all its connections) */
    size_t nout;      /* bytes in out */
    size_t cap;       /* capacity of out */
    uint32_t next_id; /* id for the next connection opened on this slot */
    int full;         /* OUT_KEEP reached: out is a prefix, nothing more is kept */
};

/* One engine and its connections. */
struct side {
    sm_engine *e;             /* the engine (created, never started) */
    struct slot s[NCONN];     /* its connection slots */
    int split;                /* 1: feed in pieces of 1..13 bytes (engine B) */
};

static void append_out(struct slot *sl, const void *p, size_t n)
{
    if (sl->full || sl->nout + n > OUT_KEEP) {
        sl->full = 1; /* the checks see the first bytes, without a gap */
        return;
    }
    if (sl->nout + n > sl->cap) {
        size_t cap = sl->cap ? sl->cap : 4096;
        while (cap < sl->nout + n)
            cap *= 2;
        char *q = realloc(sl->out, cap);
        if (!q)
            abort();
        sl->out = q;
        sl->cap = cap;
    }
    memcpy(sl->out + sl->nout, p, n);
    sl->nout += n;
}

/* "Send" up to max bytes of c's queue (SIZE_MAX: all), as a backend would. */
static void drain(struct slot *sl, size_t max)
{
    conn *c = sl->c;
    if (!c || out_pending(c) == 0)
        return; /* the backends only look at the queue when it holds bytes */
    int cnt;
    struct iovec *iov = conn_out_iov(c, &cnt);
    size_t total = 0;
    for (int i = 0; i < cnt; i++)
        total += iov[i].iov_len;
    if (total != out_pending(c)) {
        fprintf(stderr, "iovecs hold %zu bytes, out_pending says %zu\n", total, out_pending(c));
        abort();
    }
    size_t sent = 0;
    for (int i = 0; i < cnt && sent < max; i++) {
        size_t n = iov[i].iov_len;
        if (n > max - sent)
            n = max - sent;
        append_out(sl, iov[i].iov_base, n);
        sent += n;
    }
    if (sent)
        conn_out_sent(c, sent);
}

static void conn_open(struct side *sd, int i)
{
    struct slot *sl = &sd->s[i];
    conn *c = malloc(sizeof(*c));
    if (!c)
        abort();
    conn_init(c, &sd->e->workers[0].env, -1, sl->next_id++);
    c->worker = &sd->e->workers[0];
    /* on the worker's list, so "stats conns" walks it as it would a real one */
    worker_conn_link(&sd->e->workers[0], c);
    sl->c = c;
}

/* Close: send what is queued (a closing connection flushes), then free. */
static void conn_close(struct side *sd, int i)
{
    struct slot *sl = &sd->s[i];
    conn *c = sl->c;
    if (!c)
        return;
    drain(sl, SIZE_MAX);
    append_out(sl, "<closed>", 8); /* not a reply: marks the end of this connection */
    worker_conn_unlink(&sd->e->workers[0], c);
    conn_cleanup(c);
    free(c);
    sl->c = NULL;
}

/* Feed bytes (copied to a buffer of exactly their size, so ASan sees overreads). */
static void feed(struct side *sd, int i, const uint8_t *p, size_t n)
{
    struct slot *sl = &sd->s[i];
    size_t off = 0;
    unsigned piece = 1;
    if (sl->c && sl->c->rd_eof)
        return; /* the peer has ended its stream: nothing more arrives */
    while (sl->c && sl->c->state != CONN_CLOSING && (off < n || n == 0)) {
        size_t take = sd->split ? piece : n - off;
        if (take > n - off)
            take = n - off;
        piece = piece % 13 + 1;
        char *buf = take ? malloc(take) : NULL;
        if (take && !buf)
            abort();
        if (take)
            memcpy(buf, p + off, take);
        bool ok = worker_feed(sl->c, take ? buf : NULL, take);
        free(buf);
        /* a yield (-R): the worker gives the held input its next turns; a
         * metadump step also waits for its bytes to be sent */
        while (ok && sl->c->state != CONN_CLOSING && conn_yielded(sl->c)) {
            if (sl->c->dump)
                drain(sl, SIZE_MAX);
            ok = worker_feed(sl->c, NULL, 0);
        }
        off += take;
        if (!ok) {
            conn_close(sd, i);
            return;
        }
        if (n == 0)
            break;
    }
    if (sl->c && sl->c->state == CONN_CLOSING)
        conn_close(sd, i); /* bytes after a close are never read */
}

/* The peer ended its stream: answer what came, close once all is sent. */
static void peer_eof(struct side *sd, int i)
{
    struct slot *sl = &sd->s[i];
    if (!sl->c)
        return;
    sl->c->rd_eof = true;
    /* each round sends everything; a round that queues nothing new closes */
    for (int round = 0; sl->c && round < 1000; round++) {
        if (worker_eof_finished(sl->c)) {
            conn_close(sd, i);
            return;
        }
        drain(sl, SIZE_MAX);
    }
    fprintf(stderr, "connection %d: worker_eof_finished never says to close\n", i);
    abort();
}

/* ---- admin calls ---- */

static const char *const keys[] = {"foo", "a", "k", "key", ""};

static cache_walk_action count_cb(void *p, cache *c, item *it)
{
    (void)c;
    (void)it;
    (*(uint64_t *)p)++;
    return CACHE_WALK_NEXT;
}

/* Dump everything and check that the records restore (dry run) completely. */
static void dump_restore(sm_engine *e)
{
    size_t cap = sm_admin_dump_min_buffer(e) * 2;
    char *buf = malloc(cap);
    char *all = NULL;
    size_t nall = 0;
    uint64_t cursor = 0, ndumped = 0;
    if (!buf)
        abort();
    do {
        long n = sm_admin_dump(e, &cursor, buf, cap, &ndumped);
        if (n < 0)
            abort();
        char *q = realloc(all, nall + (size_t)n + 1);
        if (!q)
            abort();
        all = q;
        memcpy(all + nall, buf, (size_t)n);
        nall += (size_t)n;
    } while (cursor != 0);
    uint64_t nitems = 0, nexpired = 0;
    char err[256];
    long used = sm_admin_restore(e, all ? all : "", nall, 1, &nitems, &nexpired, err, sizeof(err));
    if (used != (long)nall || nitems + nexpired != ndumped) {
        fprintf(stderr, "dump of %llu records (%zu bytes) restores as %ld bytes, %llu+%llu records: %s\n",
                (unsigned long long)ndumped, nall, used, (unsigned long long)nitems,
                (unsigned long long)nexpired, used < 0 ? err : "");
        abort();
    }
    free(all);
    free(buf);
}

static void run_admin(struct side *sd, unsigned op, unsigned arg)
{
    sm_engine *e = sd->e;
    const char *key = keys[arg % 5];
    size_t nkey = strlen(key);
    char err[256];
    switch (op % NADMIN) {
    case 0:
        sm_admin_flush(e, (int)(arg % 3));
        break;
    case 1: {
        struct sm_item_info info[8];
        uint64_t cursor = 0;
        do
            sm_admin_keys(e, key, nkey, &cursor, info, 8);
        while (cursor != 0);
        break;
    }
    case 2: {
        struct sm_item_info info;
        sm_admin_get_meta(e, key, nkey, &info);
        break;
    }
    case 3:
        sm_admin_delete(e, key, nkey);
        break;
    case 4: {
        uint64_t cursor = 0;
        do
            sm_admin_delete_prefix(e, key, nkey, &cursor);
        while (cursor != 0);
        break;
    }
    case 5:
        sm_admin_set_memlimit(e, (uint64_t)(2 + arg % 8) << 20, err, sizeof(err));
        break;
    case 6: {
        static const char *const groups[] = {"", "settings", "items", "slabs", "sizes", "conns", "nope"};
        char small[64];
        char *big = malloc(1 << 16);
        if (!big)
            abort();
        const char *g = groups[arg % 7];
        long n = sm_engine_stats_text(e, g, big, 1 << 16);
        if (n >= (1 << 16))
            abort();
        long m = sm_engine_stats_text(e, g, small, sizeof(small));
        if (n >= 0 && (size_t)n < sizeof(small) && m != n)
            abort();
        free(big);
        break;
    }
    case 7:
        dump_restore(e);
        break;
    case 8:
        sm_engine_set_maxconns(e, 1 + (int)arg, err, sizeof(err));
        break;
    case 9: {
        int ncmds, nb, shift;
        sm_latency_dims(&ncmds, &nb, &shift);
        uint64_t *counts = calloc((size_t)ncmds * (size_t)nb, sizeof(uint64_t));
        uint64_t *sums = calloc((size_t)ncmds, sizeof(uint64_t));
        if (!counts || !sums)
            abort();
        sm_engine_latency(e, counts, sums);
        free(counts);
        free(sums);
        break;
    }
    case 10: {
        /* Store a value too big to type into an input (restore works on an
         * engine that is not started): gets of it are sent from item
         * memory, not copied, and a few fill the queue past OUT_HIGH_WATER. */
        enum { REC = 28, VLEN = 60000 };
        static unsigned char rec[REC + 8 + VLEN];
        memset(rec, 0, REC);
        rec[0] = (unsigned char)nkey;
        rec[4] = VLEN & 0xFF;
        rec[5] = (VLEN >> 8) & 0xFF;
        rec[8] = (unsigned char)arg; /* client flags */
        rec[20] = 1;                 /* cas */
        memcpy(rec + REC, key, nkey);
        for (size_t i = 0; i < VLEN; i++)
            rec[REC + nkey + i] = (unsigned char)('a' + (i + arg) % 26);
        uint64_t items = 0, expired = 0;
        sm_admin_restore(e, (const char *)rec, REC + nkey + VLEN, 0, &items, &expired, err, sizeof(err));
        break;
    }
    default: {
        uint64_t n = 0, cursor = 0;
        do
            cache_walk(e->cache, NULL, 0, &cursor, 1000, count_cb, &n);
        while (cursor != 0);
        break;
    }
    }
}

/* ---- reply checking ---- */

static void bad_reply(const char *why, const char *p, const char *end)
{
    size_t n = (size_t)(end - p) < 80 ? (size_t)(end - p) : 80;
    fprintf(stderr, "malformed reply (%s): \"", why);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, (p[i] >= 32 && p[i] < 127) ? "%c" : "\\x%02x", (unsigned char)p[i]);
    fprintf(stderr, "\"\n");
    abort();
}

/* Does the line [p, eol) start with word w followed by a space or its end? */
static int starts_word(const char *p, const char *eol, const char *w)
{
    size_t n = strlen(w);
    return (size_t)(eol - p) >= n && memcmp(p, w, n) == 0 && (p + n == eol || p[n] == ' ');
}

/* Parse the last space-separated number of [p, eol) before skipping `skip` tokens from the end. */
static int token_number(const char *p, const char *eol, int index_from_start, uint64_t *out)
{
    int t = 0;
    const char *s = p;
    while (s < eol) {
        const char *e = memchr(s, ' ', (size_t)(eol - s));
        if (!e)
            e = eol;
        if (t == index_from_start) {
            if (e == s || e - s > 20)
                return 0;
            uint64_t v = 0;
            for (const char *q = s; q < e; q++) {
                if (*q < '0' || *q > '9')
                    return 0;
                v = v * 10 + (uint64_t)(*q - '0');
            }
            *out = v;
            return 1;
        }
        t++;
        s = e + 1;
    }
    return 0;
}

/* memcached's binary protocol: response magic, header length, STAT opcode. */
#define BIN_RES_MAGIC 0x81
#define BIN_HDR 24
#define BIN_OP_STAT 0x10

/* Bytes of the binary response packet at p (whose first byte is the
 * response magic), or 0 when it runs past end.  Aborts on a bad header. */
static size_t bin_packet(const char *p, const char *end, int truncated)
{
    if ((size_t)(end - p) < BIN_HDR) {
        if (truncated)
            return 0;
        bad_reply("binary header cut short", p, end);
    }
    const unsigned char *u = (const unsigned char *)p;
    uint32_t keylen = (uint32_t)(u[2] << 8 | u[3]), extlen = u[4];
    uint32_t bodylen = (uint32_t)u[8] << 24 | (uint32_t)u[9] << 16 | (uint32_t)u[10] << 8 | u[11];
    if (u[5] != 0 || keylen + extlen > bodylen)
        bad_reply("binary header", p, end);
    if ((uint64_t)(end - p) < (uint64_t)BIN_HDR + bodylen) {
        if (truncated)
            return 0;
        bad_reply("binary body shorter than announced", p, end);
    }
    return BIN_HDR + (size_t)bodylen;
}

static void check_replies(const char *p, size_t n, int truncated)
{
    static const char *const words[] = {
        "END", "STORED", "NOT_STORED", "EXISTS", "NOT_FOUND", "DELETED", "TOUCHED", "OK", "ERROR",
        "CLIENT_ERROR", "SERVER_ERROR", "STAT", "VERSION", "RESET", "MEMLIMIT_TOO_SMALL",
        "MEMLIMIT_ADJUST_FAILED", "HD", "NS", "EX", "NF", "EN", "MN", "ME", "BUSY", "BADCLASS", "NOTSTARTED"};
    const char *end = p + n;
    while (p < end) {
        if ((size_t)(end - p) >= 8 && memcmp(p, "<closed>", 8) == 0) {
            p += 8;
            continue;
        }
        if ((unsigned char)*p == BIN_RES_MAGIC) { /* a binary connection's response packet */
            size_t len = bin_packet(p, end, truncated);
            if (len == 0)
                return;
            p += len;
            continue;
        }
        const char *eol = NULL;
        for (const char *q = p; q + 1 < end; q++) {
            if (q[0] == '\r' && q[1] == '\n') {
                eol = q;
                break;
            }
        }
        if (!eol) {
            if (truncated)
                return;
            bad_reply("no \\r\\n", p, end);
        }
        uint64_t vlen = 0;
        int data = 0;
        if (starts_word(p, eol, "VALUE")) {
            /* VALUE <key> <flags> <bytes>[ <cas>]: keys have no spaces */
            if (!token_number(p, eol, 3, &vlen))
                bad_reply("VALUE header", p, end);
            data = 1;
        } else if ((size_t)(eol - p) >= 4 && memcmp(p, "key=", 4) == 0) {
            /* lru_crawler metadump: "key=... size=N\n" lines, then END\r\n */
            const char *q = p;
            for (;;) {
                const char *nl = memchr(q, '\n', (size_t)(eol - q));
                if (!nl)
                    break;
                if ((size_t)(eol - q) < 4 || memcmp(q, "key=", 4) != 0)
                    bad_reply("metadump line", q, end);
                q = nl + 1;
            }
            if (eol - q != 3 || memcmp(q, "END", 3) != 0)
                bad_reply("metadump end", q, end);
        } else if (starts_word(p, eol, "VA")) {
            if (!token_number(p, eol, 1, &vlen))
                bad_reply("VA header", p, end);
            data = 1;
        } else {
            int ok = eol > p;
            for (const char *q = p; q < eol && ok; q++)
                ok = *q >= '0' && *q <= '9'; /* incr/decr result */
            for (size_t i = 0; !ok && i < sizeof(words) / sizeof(words[0]); i++)
                ok = starts_word(p, eol, words[i]);
            if (!ok)
                bad_reply("unknown reply", p, end);
        }
        p = eol + 2;
        if (data) {
            if ((uint64_t)(end - p) < vlen + 2) {
                if (truncated)
                    return;
                bad_reply("value shorter than announced", p, end);
            }
            if (p[vlen] != '\r' || p[vlen + 1] != '\n')
                bad_reply("value not followed by \\r\\n", p, end);
            p += vlen + 2;
        }
    }
}

/* The output without STAT lines (those hold timings that differ between runs). */
static size_t strip_stats(const char *p, size_t n, char *out)
{
    size_t o = 0;
    const char *end = p + n;
    while (p < end) {
        if ((unsigned char)*p == BIN_RES_MAGIC && (size_t)(end - p) >= BIN_HDR) {
            /* a binary packet: STAT packets go, like STAT lines */
            size_t len = bin_packet(p, end, 1);
            if (len == 0)
                len = (size_t)(end - p);
            if ((unsigned char)p[1] != BIN_OP_STAT) {
                memcpy(out + o, p, len);
                o += len;
            }
            p += len;
            continue;
        }
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        if (!((size_t)(end - p) >= 5 && memcmp(p, "STAT ", 5) == 0)) {
            memcpy(out + o, p, (size_t)(next - p));
            o += (size_t)(next - p);
        }
        p = next;
    }
    return o;
}

static cache_walk_action ref_cb(void *p, cache *c, item *it)
{
    (void)p;
    (void)c;
    unsigned r = atomic_load(&it->refcount);
    if (r != 1) {
        fprintf(stderr, "item \"%.*s\" has refcount %u with no connection open\n", it->nkey, ITEM_key(it), r);
        abort();
    }
    return CACHE_WALK_NEXT;
}

/* ---- driver ---- */

static void side_init(struct side *sd, int split)
{
    struct sm_settings s;
    sm_settings_init(&s);
    s.num_threads = 1;
    s.maxbytes = 8u << 20;
    /* inputs are a few KB: a small -I keeps the dump buffer (one item) cheap per run */
    s.item_size_max = 64u << 10;
    s.slab_chunk_max = 64u << 10; /* at most -I, as memcached requires */
    s.hashpower_init = 12;
    s.shutdown_enabled = 1;
    s.reqs_per_event = 3; /* short turns: most inputs yield (worker.c), in both feeding modes */
    char err[256];
    memset(sd, 0, sizeof(*sd));
    sd->split = split;
    sd->e = sm_engine_create(&s, err, sizeof(err));
    if (!sd->e) {
        fprintf(stderr, "engine: %s\n", err);
        abort();
    }
    for (int i = 0; i < NCONN; i++)
        conn_open(sd, i);
}

static void side_finish(struct side *sd)
{
    for (int i = 0; i < NCONN; i++)
        conn_close(sd, i);
    uint64_t cursor = 0;
    do
        cache_walk(sd->e->cache, NULL, 0, &cursor, 1u << 20, ref_cb, NULL);
    while (cursor != 0);
    sm_engine_destroy(sd->e);
}

/* Apply one op (or a segment of bytes) to a side. */
struct op {
    int kind;          /* 0 feed, 1 switch, 2 drain, 3 admin, 4 reopen, 5 resume, 6 clock, 7 eof */
    const uint8_t *p;  /* feed: the bytes */
    size_t n;          /* feed: byte count; drain: bytes; admin: call; clock: seconds; switch: conn */
    unsigned arg;      /* admin: argument */
};

static void apply(struct side *sd, int *cur, const struct op *o)
{
    struct slot *sl = &sd->s[*cur];
    switch (o->kind) {
    case 0:
        feed(sd, *cur, o->p, o->n);
        break;
    case 1:
        *cur = (int)o->n;
        break;
    case 2:
        drain(sl, o->n);
        break;
    case 3:
        run_admin(sd, (unsigned)o->n, o->arg);
        break;
    case 4:
        conn_close(sd, *cur);
        conn_open(sd, *cur);
        break;
    case 5:
        feed(sd, *cur, NULL, 0);
        break;
    case 6:
        cache_test_set_time(sd->e->cache, cache_now(sd->e->cache) + (rel_time_t)o->n);
        break;
    case 7:
        peer_eof(sd, *cur);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Unescape into a byte stream plus ops. */
    uint8_t *bytes = malloc(size + 1);
    struct op *ops = malloc((size + 1) * sizeof(*ops));
    if (!bytes || !ops)
        abort();
    size_t nb = 0, nops = 0, seg = 0;
    for (size_t i = 0; i < size; i++) {
        if (data[i] != 0xFF) {
            bytes[nb++] = data[i];
            continue;
        }
        if (i + 1 >= size)
            break;
        uint8_t x = data[++i];
        if (x == 0xFF) {
            bytes[nb++] = 0xFF;
            continue;
        }
        if (nb > seg)
            ops[nops++] = (struct op){0, bytes + seg, nb - seg, 0};
        seg = nb;
        struct op o = {0, NULL, 0, 0};
        if (x < 0x40) {
            o.kind = 1;
            o.n = x % NCONN;
        } else if (x < 0x80) {
            o.kind = 2;
            o.n = x == 0x40 ? SIZE_MAX : (size_t)(x & 0x3F) * 7;
        } else if (x < 0xC0) {
            o.kind = 3;
            o.n = (x & 0x3F) % NADMIN;
            o.arg = (x & 0x3F) / NADMIN + (unsigned)nops;
        } else if (x == 0xC0) {
            o.kind = 4;
        } else if (x == 0xC1) {
            o.kind = 5;
        } else if (x == 0xC2) {
            o.kind = 7;
        } else {
            o.kind = 6;
            o.n = (size_t)(x - 0xC2) * 13;
        }
        ops[nops++] = o;
    }
    if (nb > seg)
        ops[nops++] = (struct op){0, bytes + seg, nb - seg, 0};

    /* Is there a run of more than SM_LINE_MAX bytes without a newline on a
     * connection?  Or an lru_crawler command: its crawler thread runs on its
     * own time (a crawl answers BUSY or OK depending on whether the last one
     * is over), so the two engines may rightly differ. */
    int compare = memmem(bytes, nb, "lru_crawler", 11) == NULL;
    {
        size_t run[NCONN] = {0};
        int cur = 0;
        for (size_t k = 0; k < nops && compare; k++) {
            if (ops[k].kind == 1)
                cur = (int)ops[k].n;
            else if (ops[k].kind == 4)
                run[cur] = 0;
            else if (ops[k].kind == 0)
                for (size_t j = 0; j < ops[k].n && compare; j++) {
                    run[cur] = ops[k].p[j] == '\n' ? 0 : run[cur] + 1;
                    compare = run[cur] <= SM_LINE_MAX;
                }
        }
    }

    static struct side a, b;
    side_init(&a, 0);
    side_init(&b, 1);
    /* same clock origin, so absolute exptimes convert alike on both */
    b.e->cache->process_started = a.e->cache->process_started;
    b.e->cache->mono_to_wall = a.e->cache->mono_to_wall;
    int cura = 0, curb = 0;
    for (size_t k = 0; k < nops; k++) {
        apply(&a, &cura, &ops[k]);
        apply(&b, &curb, &ops[k]);
        /* a "verbosity" command would log every later command to stderr: keep it to its segment */
        sm_engine_set_verbosity(a.e, 0);
        sm_engine_set_verbosity(b.e, 0);
    }
    for (int i = 0; i < NCONN; i++) {
        drain(&a.s[i], SIZE_MAX);
        drain(&b.s[i], SIZE_MAX);
    }
    side_finish(&a);
    side_finish(&b);

    static int dump = -1; /* FUZZ_CONN_DUMP=1: print each connection's output (debugging seeds) */
    if (dump < 0)
        dump = getenv("FUZZ_CONN_DUMP") != NULL;
    for (int i = 0; i < NCONN; i++) {
        struct slot *sa = &a.s[i], *sb = &b.s[i];
        if (dump)
            fprintf(stderr, "--- connection %d (%zu bytes) ---\n%.*s\n", i, sa->nout, (int)sa->nout, sa->out);
        check_replies(sa->out, sa->nout, sa->full);
        check_replies(sb->out, sb->nout, sb->full);
        if (compare) {
            char *xa = malloc(sa->nout + 1), *xb = malloc(sb->nout + 1);
            if (!xa || !xb)
                abort();
            size_t la = strip_stats(sa->out, sa->nout, xa);
            size_t lb = strip_stats(sb->out, sb->nout, xb);
            if (la != lb || memcmp(xa, xb, la) != 0) {
                size_t d = 0;
                while (d < la && d < lb && xa[d] == xb[d])
                    d++;
                fprintf(stderr, "connection %d: output differs when the input is split differently, at byte %zu:\n",
                        i, d);
                fprintf(stderr, "  whole: \"%.*s\"\n  split: \"%.*s\"\n", (int)(la - d < 120 ? la - d : 120),
                        xa + d, (int)(lb - d < 120 ? lb - d : 120), xb + d);
                abort();
            }
            free(xa);
            free(xb);
        }
        free(sa->out);
        free(sb->out);
    }
    free(bytes);
    free(ops);
    return 0;
}
