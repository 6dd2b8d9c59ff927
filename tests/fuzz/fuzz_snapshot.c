/*
 * fuzz_snapshot.c -- libFuzzer harness for the snapshot record parser,
 * sm_admin_restore() in stackmap_core/src/admin.c.
 *
 * Why it exists: a warm restart feeds a file from disk to this parser
 * before the server starts; the file may be truncated, foreign or
 * tampered with.  The control plane (stackmapd/snapshot.py) checks the header
 * and a SHA-256 trailer, but a checksum is no defence against a crafted
 * file, so the record parser itself must refuse anything malformed without
 * reading out of bounds, overflowing, or storing half a record.  (The
 * Python side of the file, header and trailer, is fuzzed by
 * fuzz_pyinputs.py.)
 *
 * The input is the record stream (no file header or trailer).  Its first
 * byte picks how the stream is cut into chunks, the way
 * stackmapd/snapshot.py's _scan() reads the file: each call gets the
 * unconsumed rest of the previous call plus the next chunk.
 *
 * Invariants checked (abort() = a finding):
 *   - chunked and one-call dry runs agree: same error or none, same counts,
 *     and a call never consumes a partial record or more than it was given;
 *   - a real restore of a stream the dry run accepted stores what the dry
 *     run counted (or fails only for memory), and each key's last record is
 *     what the cache then holds (flags, value length, CAS unless renumbered);
 *   - a dump of the restored cache restores (dry run) completely;
 *   - whatever ASan / UBSan / LeakSanitizer find.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache.h"
#include "engine.h"

/* Fixed part of a record (admin.c's REC_HDR). */
#define REC_HDR 28
/* Records above which the per-key comparison is skipped (it is quadratic). */
#define CHECK_KEYS_MAX 64

/* What one restore pass over a stream did. */
struct pass {
    int error;         /* 1: sm_admin_restore returned -1 */
    char err[256];     /* its reason */
    uint64_t items;    /* records stored (or counted, dry run) */
    uint64_t expired;  /* records skipped as expired */
    size_t left;       /* bytes left unconsumed at the end */
};

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static sm_engine *new_engine(void)
{
    struct sm_settings s;
    sm_settings_init(&s);
    s.num_threads = 1;
    s.maxbytes = 16u << 20;
    s.item_size_max = 1u << 20;
    s.hashpower_init = 12;
    char err[256];
    sm_engine *e = sm_engine_create(&s, err, sizeof(err));
    if (!e) {
        fprintf(stderr, "engine: %s\n", err);
        abort();
    }
    return e;
}

/* Feed data in chunks of `chunk` bytes (0: one call), carrying the unconsumed rest. */
static void run_pass(sm_engine *e, const uint8_t *data, size_t size, size_t chunk, int dry, struct pass *out)
{
    memset(out, 0, sizeof(*out));
    char *pending = NULL;
    size_t npending = 0, off = 0;
    do {
        size_t take = chunk ? chunk : size;
        if (take > size - off)
            take = size - off;
        /* an exact-size buffer, so ASan sees any read past the end */
        char *buf = malloc(npending + take + 1);
        if (!buf)
            abort();
        if (npending)
            memcpy(buf, pending, npending);
        memcpy(buf + npending, data + off, take);
        off += take;
        size_t n = npending + take;
        free(pending);
        pending = NULL;
        uint64_t before = out->items + out->expired;
        long used = sm_admin_restore(e, buf, n, dry, &out->items, &out->expired, out->err, sizeof(out->err));
        if (used < 0) {
            out->error = 1;
            free(buf);
            return;
        }
        if ((size_t)used > n) {
            fprintf(stderr, "restore consumed %ld of %zu bytes\n", used, n);
            abort();
        }
        if ((size_t)used == 0 && out->items + out->expired != before)
            abort();
        npending = n - (size_t)used;
        if (npending) {
            pending = malloc(npending);
            if (!pending)
                abort();
            memcpy(pending, buf + used, npending);
        }
        free(buf);
    } while (off < size);
    /* whatever is left must be shorter than the record it starts */
    if (npending >= REC_HDR) {
        const uint8_t *r = (const uint8_t *)pending;
        size_t need = REC_HDR + (size_t)get16(r) + get32(r + 4);
        if (npending >= need) {
            fprintf(stderr, "restore left a whole record (%zu bytes) unconsumed\n", npending);
            abort();
        }
    }
    out->left = npending;
    free(pending);
}

/* Dump everything and check that the dump restores (dry run) completely. */
static void check_dump(sm_engine *e)
{
    size_t cap = sm_admin_dump_min_buffer(e);
    char *buf = malloc(cap);
    if (!buf)
        abort();
    uint64_t cursor = 0, ndumped = 0;
    do {
        uint64_t n0 = ndumped;
        long n = sm_admin_dump(e, &cursor, buf, cap, &ndumped);
        if (n < 0)
            abort();
        uint64_t items = 0, expired = 0;
        char err[256];
        long used = sm_admin_restore(e, buf, (size_t)n, 1, &items, &expired, err, sizeof(err));
        if (used != n || items + expired != ndumped - n0) {
            fprintf(stderr, "a dump chunk of %ld bytes restores as %ld: %s\n", n, used, used < 0 ? err : "");
            abort();
        }
    } while (cursor != 0);
    free(buf);
}

/* A record's CAS the item keeps: 0 asks for a new one, and one above
 * SM_CAS_SET_MAX is renumbered (cache.h: CAS never wraps). */
static int cas_kept(uint64_t cas)
{
    return cas != 0 && cas <= SM_CAS_SET_MAX;
}

/* The cache holds each key's last record (when that record is not expired). */
static void check_keys(sm_engine *e, const uint8_t *data, size_t len)
{
    const uint8_t *recs[CHECK_KEYS_MAX];
    size_t nrec = 0, off = 0;
    while (len - off >= REC_HDR && nrec < CHECK_KEYS_MAX) {
        const uint8_t *r = data + off;
        size_t need = REC_HDR + (size_t)get16(r) + get32(r + 4);
        if (len - off < need)
            break;
        recs[nrec++] = r;
        off += need;
    }
    if (len - off >= REC_HDR)
        return; /* more records than we compare */
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < nrec; i++) {
        const uint8_t *r = recs[i];
        size_t nkey = get16(r);
        int last = 1;
        for (size_t j = i + 1; j < nrec && last; j++)
            last = !(get16(recs[j]) == nkey && memcmp(recs[j] + REC_HDR, r + REC_HDR, nkey) == 0);
        int64_t exptime = (int64_t)get64(r + 12);
        /* a record close to its expiry may expire while we look */
        if (!last || (exptime != 0 && exptime <= now + 2))
            continue;
        struct sm_item_info info;
        if (!sm_admin_get_meta(e, (const char *)r + REC_HDR, nkey, &info)) {
            fprintf(stderr, "record %zu restored but its key is not in the cache\n", i + 1);
            abort();
        }
        if (info.flags != get32(r + 8) || info.value_len != get32(r + 4) || (cas_kept(get64(r + 20)) && info.cas != get64(r + 20)) ||
            info.binary_key != (r[2] & 1)) {
            fprintf(stderr, "record %zu restored as flags %u len %u cas %llu\n", i + 1, info.flags, info.value_len,
                    (unsigned long long)info.cas);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t chunk = data[0] == 0 ? 0 : (size_t)data[0] * 3;
    data++;
    size--;
    sm_engine *e = new_engine();
    struct pass whole, chunked;
    run_pass(e, data, size, 0, 1, &whole);
    run_pass(e, data, size, chunk, 1, &chunked);
    if (whole.error != chunked.error || (!whole.error && (whole.items != chunked.items ||
                                                          whole.expired != chunked.expired ||
                                                          whole.left != chunked.left))) {
        fprintf(stderr, "dry runs differ: whole %d (%s) %llu+%llu left %zu, chunked %d (%s) %llu+%llu left %zu\n",
                whole.error, whole.err, (unsigned long long)whole.items, (unsigned long long)whole.expired,
                whole.left, chunked.error, chunked.err, (unsigned long long)chunked.items,
                (unsigned long long)chunked.expired, chunked.left);
        abort();
    }
    if (!whole.error) {
        struct pass real;
        run_pass(e, data, size, chunk, 0, &real);
        if (real.error && !strstr(real.err, "out of memory")) {
            fprintf(stderr, "the dry run accepted what the restore refused: %s\n", real.err);
            abort();
        }
        if (!real.error) {
            if (real.items != whole.items || real.expired != whole.expired) {
                /* a record that expired between the two passes moves from items to expired */
                if (real.items + real.expired != whole.items + whole.expired || real.items > whole.items)
                    abort();
            }
            check_keys(e, data, size);
        }
        check_dump(e);
    }
    sm_engine_destroy(e);
    return 0;
}
