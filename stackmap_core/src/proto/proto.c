/*
 * proto.c -- the byte-stream side of the memcached protocols: splitting
 * received bytes into command lines, receiving values into items as they
 * arrive, swallowing rejected values, and dispatching each line, parsed
 * once (parse.h), to the handler its command-table row names.
 *
 * Everything here runs on the worker thread that owns the connection and
 * works in place on the receive buffer: nothing is allocated per request.
 */
#include "proto.h"

#include <string.h>

#include "../engine_internal.h"
#include "../latency.h"
#include "../worker.h"
#include "auth.h"
#include "binary.h"

void proto_begin_nread(conn *c, item *it)
{
    c->nread_item = it;
    c->nread_dst = item_seg_first(it, &c->nread_room, &c->nread_next);
    c->nread_left = it->nbytes;
    c->state = CONN_NREAD;
}

void proto_begin_swallow(conn *c, uint64_t n)
{
    c->swallow_left = n;
    c->state = n > 0 ? CONN_SWALLOW : CONN_PARSE;
}

/* A value has fully arrived: check its terminator and complete the store. */
static void finish_nread(conn *c)
{
    item *it = c->nread_item;
    char end[2];
    c->state = CONN_PARSE;
    if (c->pending.proto == PROTO_BINARY) { /* a binary value has no terminator: the item's is ours */
        item_value_write(it, it->nbytes - 2, "\r\n", 2);
    } else if ((item_value_read(it, it->nbytes - 2, end, 2), end[0] != '\r' || end[1] != '\n')) {
        /* memcached counts the store attempt even when its data is bad. */
        SM_STAT_INC(c->worker->stats.slab[proto_cls(it->slabs_clsid)].set_cmds);
        cache_release(c->worker->cache, it);
        c->nread_item = NULL;
        /* A text noreply store stays silent even about a bad chunk (meta q does not). */
        if (!(c->pending.proto == PROTO_TEXT && c->pending.noreply))
            out_static(c, "CLIENT_ERROR bad data chunk\r\n", 29);
        return;
    }
    if (c->pending.proto == PROTO_META)
        proto_meta_complete_store(c);
    else if (c->pending.proto == PROTO_BINARY)
        proto_bin_complete_store(c);
    else
        proto_text_complete_store(c);
    if (c->nread_item) { /* the protocol kept no reference: drop ours */
        cache_release(c->worker->cache, c->nread_item);
        c->nread_item = NULL;
    }
    /* latency.h: the store's time runs from its line to its response */
    uint64_t now = sm_lat_now();
    c->worker->lat_clock = now;
    sm_lat_record(&c->worker->lat, c->lat_cmd, now - c->lat_start);
}

/*
 * Long get/gets lines.  memcached buffers a get line of any length until
 * its newline (growing its read buffer without bound) and then answers it.
 * We answer its keys as they arrive instead, so a connection holds at most
 * one partial key of such a line, and send the same bytes for every line
 * memcached answers.  One difference (README): a key over 250 bytes makes
 * memcached drop the VALUEs of the whole line and send only the error;
 * here VALUEs of hits before it may already have been sent.
 */

/*
 * memcached's read buffer (READ_BUFFER_SIZE).  A line that is not a get/gets
 * and is longer than this never has its newline inside that buffer, so
 * memcached always closes the connection on it; so do we, even when our
 * backend happened to receive the whole line at once.  (Between SM_LINE_MAX
 * and this, both answer or close depending on how the line arrives.)
 */
#define MC_READ_BUFFER 16384

/*
 * memcached's test for a long line it keeps reading: "get " or "gets "
 * after at most 100 spaces.  Returns the bytes up to the first key (and
 * *cmd, SM_CMD_get or SM_CMD_gets), or 0.
 */
static size_t get_line_head(const char *p, size_t n, int *cmd)
{
    size_t i = 0;
    while (i < n && p[i] == ' ')
        i++;
    if (i > 100)
        return 0;
    const char *sp = memchr(p + i, ' ', n - i < 5 ? n - i : 5);
    if (!sp)
        return 0;
    *cmd = sm_cmd_lookup(p + i, (size_t)(sp - (p + i)));
    return *cmd == SM_CMD_get || *cmd == SM_CMD_gets ? (size_t)(sp - p) + 1 : 0;
}

/*
 * An unterminated line of more than SM_LINE_MAX bytes: a get/gets starts
 * streaming; anything else closes the connection, as memcached does.
 * Returns the bytes consumed (the line's head up to its first key).
 */
static size_t long_line(conn *c, const char *p, size_t n)
{
    int cmd;
    size_t end = get_line_head(p, n, &cmd);
    if (end == 0) {
        c->state = CONN_CLOSING;
        return 0;
    }
    size_t head = sm_cmds[cmd].len + 1, i = end - head;
    worker *w = c->worker;
    c->gets = (get_stream){.active = true, .return_cas = cmd == SM_CMD_gets};
    c->lat_start = w->lat_clock; /* latency.h: timed from here to the line's end */
    c->lat_cmd = sm_cmds[cmd].lat;
    engine_log(w->engine, 2, "<%d %.*s(a line over %d bytes: keys answered as they arrive)\n", c->fd,
               (int)head, p + i, SM_LINE_MAX);
    return end;
}

/* The streamed get line ended: its last reply, as process_get would send. */
static void get_stream_end(conn *c)
{
    get_stream *g = &c->gets;
    int r;
    if (g->too_long)
        r = out_static(c, "CLIENT_ERROR bad command line format\r\n", 38);
    else if (g->nkeys == 0)
        r = out_static(c, "ERROR\r\n", 7); /* "get" and only spaces: too few tokens */
    else
        r = out_static(c, "END\r\n", 5);
    if (r < 0)
        c->state = CONN_CLOSING;
    c->resp_stack = g->too_long || g->nkeys == 0; /* memcached flushes after a get's END */
    g->active = false;
    uint64_t now = sm_lat_now();
    c->worker->lat_clock = now;
    sm_lat_record(&c->worker->lat, c->lat_cmd, now - c->lat_start);
}

/*
 * Answer the keys of a streamed get line found in p[0..n); returns the
 * bytes consumed.  A key still arriving (no space or newline after it yet)
 * is left for the next call; so is everything after the point where the
 * output queue passed OUT_HIGH_WATER.  Ends the line at its newline.
 */
static size_t get_stream_step(conn *c, char *p, size_t n)
{
    get_stream *g = &c->gets;
    char *nl = memchr(p, '\n', n);
    size_t end = nl ? (size_t)(nl - p) : n;
    if (nl && end > 0 && p[end - 1] == '\r')
        end--; /* only the "\r" right before the newline is not line content */
    size_t i = 0;
    while (i < end && !g->skip) {
        if (p[i] == ' ') {
            i++;
            continue;
        }
        if (p[i] == '\0') { /* memcached reads the line as a C string: it ends here */
            g->skip = true;
            break;
        }
        if (out_pending(c) > OUT_HIGH_WATER)
            return i;
        size_t s = i;
        while (i < end && p[i] != ' ' && p[i] != '\0')
            i++;
        if (i == end && !nl && i - s <= KEY_MAX_LENGTH)
            return s; /* the key goes on in bytes still to come */
        g->nkeys++;
        if (i - s > KEY_MAX_LENGTH) {
            g->too_long = g->skip = true;
            break;
        }
        if (!proto_text_get_key(c, p + s, i - s, g->return_cas)) {
            c->state = CONN_CLOSING;
            return i;
        }
    }
    if (!nl)
        return n; /* all of it answered, or skipped */
    get_stream_end(c);
    return (size_t)(nl - p) + 1;
}

/* Every command's handler, from the command table (parse.h). */
static proto_handler *const handlers[SM_NCMDS] = {
    [SM_CMD_NONE] = proto_text_unknown,
#define SM_X(nm, pr, lt, pf, lo, hi, handler) [SM_CMD_##nm] = handler,
    SM_COMMANDS(SM_X)
#undef SM_X
};

/* Dispatch one command line (NUL-terminated in place, without "\r\n"). */
static void dispatch_line(conn *c, char *line, size_t len)
{
    worker *w = c->worker;
    uint64_t t0 = w->lat_clock; /* one clock read per command: see latency.h */
    engine_log(w->engine, 2, "<%d %s\n", c->fd, line);
    c->noreply = false;
    c->last_active = cache_now(w->cache);
    sm_request r;
    sm_parse_line(&r, line, len);
    const struct sm_cmd_info *ci = &sm_cmds[r.cmd];
    /* A text command with too few or too many tokens is "ERROR", as an unknown one. */
    if (ci->proto == SM_PROTO_TEXT && (r.ntokens < ci->min_ntokens || r.ntokens > ci->max_ntokens))
        proto_text_unknown(c, &r);
    else
        handlers[r.cmd](c, &r);
    /* memcached's resp_has_stack, for watch: every command leaves a response
     * object until the replies are transmitted, which get and mn force */
    c->resp_stack = !c->flushed;
    c->flushed = false;
    /* latency.h: time each command; a store is finished in finish_nread */
    if (c->state == CONN_NREAD) {
        c->lat_start = t0;
        c->lat_cmd = ci->lat;
    } else {
        uint64_t now = sm_lat_now();
        w->lat_clock = now;
        sm_lat_record(&w->lat, ci->lat, now - t0);
    }
}

/*
 * -Y on a text connection, as memcached's try_read_command_asciiauth: until
 * it authenticates, a connection's lines must be "set <key> <flags>
 * <exptime> <bytes>" followed by <bytes> of "user password" and "\r\n";
 * anything else is answered "CLIENT_ERROR unauthenticated".  Returns the
 * bytes consumed (0: more are needed).
 */
static size_t text_auth_step(conn *c, char *p, size_t n)
{
    worker *w = c->worker;
    size_t used = 0;
    if (c->auth_left == 0) {
        char *nl = memchr(p, '\n', n);
        if (!nl) {
            if (n > SM_LINE_MAX) /* no newline after 2 KiB: junk */
                c->state = CONN_CLOSING;
            return 0;
        }
        used = (size_t)(nl - p) + 1;
        *nl = '\0'; /* the "\r" stays: the size's number rules stop at it */
        sm_request r;
        sm_parse_line(&r, p, (size_t)(nl - p));
        uint32_t size;
        if (r.ntokens < 6 || strcmp(r.tokens[0].value, "set") != 0 || !safe_strtoul(r.tokens[4].value, &size)) {
            if (out_static(c, "CLIENT_ERROR unauthenticated\r\n", 30) < 0)
                c->state = CONN_CLOSING;
            return used;
        }
        c->auth_left = (uint64_t)size + 2;
    }
    if (n - used < c->auth_left)
        return used; /* the data is still coming (the line stays consumed) */
    char *data = p + used;
    size_t dlen = (size_t)c->auth_left;
    used += dlen;
    c->auth_left = 0;
    const char *reply;
    if (data[dlen - 2] != '\r' || data[dlen - 1] != '\n') {
        reply = "CLIENT_ERROR bad command line termination\r\n";
    } else {
        sm_request r;
        sm_parse_line(&r, data, dlen - 2);
        if (r.ntokens < 3) {
            reply = "CLIENT_ERROR bad authentication token format\r\n";
        } else {
            SM_STAT_INC(w->stats.auth_cmds);
            if (sm_auth_check(w->engine->auth, r.tokens[0].value, r.tokens[0].length, r.tokens[1].value,
                              r.tokens[1].length)) {
                c->authenticated = true;
                reply = "STORED\r\n";
            } else {
                SM_STAT_INC(w->stats.auth_errors);
                reply = "CLIENT_ERROR authentication failure\r\n";
            }
        }
    }
    if (out_static(c, reply, strlen(reply)) < 0)
        c->state = CONN_CLOSING;
    return used;
}

/*
 * -R (memcached's reqs_per_event): a request may start only while this
 * turn's budget lasts.  Once R have started, the next complete one ends the
 * turn instead -- counted in conn_yields, as memcached counts one yield each
 * time a connection with more requests buffered gives the others a turn --
 * and the worker (worker.c) resumes the held input later with a new budget.
 */
static inline bool take_turn(conn *c)
{
    if (c->nreqs > 0) {
        c->nreqs--;
        return true;
    }
    c->nreqs = -1;
    SM_STAT_INC(c->worker->stats.conn_yields);
    return false;
}

size_t proto_process(conn *c, char *data, size_t len)
{
    size_t off = 0;
    /* memcached reads (or resumes after a yield) only once every reply is sent */
    c->resp_stack = false;
    while ((off < len || c->dump) && c->state != CONN_CLOSING) {
        if (c->state == CONN_NREAD) {
            if (c->nread_room == 0) /* a chained item: on to its next chunk */
                c->nread_dst = item_seg_next(&c->nread_next, &c->nread_room);
            size_t n = len - off;
            if (n > c->nread_left)
                n = c->nread_left;
            if (n > c->nread_room)
                n = c->nread_room;
            memcpy(c->nread_dst, data + off, n);
            c->nread_dst += n;
            c->nread_room -= (uint32_t)n;
            c->nread_left -= (uint32_t)n;
            off += n;
            if (c->nread_left == 0)
                finish_nread(c);
            continue;
        }
        if (c->state == CONN_SWALLOW) {
            size_t n = len - off;
            if (n > c->swallow_left)
                n = (size_t)c->swallow_left;
            c->swallow_left -= n;
            off += n;
            if (c->swallow_left == 0)
                c->state = CONN_PARSE;
            continue;
        }
        /* CONN_PARSE */
        if (c->watch) { /* a watcher (watch.c): memcached reads nothing more from it */
            off = len;
            break;
        }
        if (c->dump) {
            /* lru_crawler metadump: a step, then the others' turn (a yield,
             * not counted as one); the input after it waits for its END. */
            if (proto_dump_step(c))
                continue;
            c->nreqs = -1;
            break;
        }
        if (out_pending(c) > OUT_HIGH_WATER)
            break;
        if (c->proto == CONN_PROTO_UNKNOWN) { /* memcached decides once, by the first byte (-B auto) */
            const char *b = c->worker->settings->binding_protocol;
            if (b[0] == 'a' && b[1] == 's') /* -B ascii */
                c->proto = CONN_PROTO_TEXT;
            else if (b[0] == 'b') /* -B binary: anything else is bad magic */
                c->proto = CONN_PROTO_BINARY;
            else
                c->proto = (unsigned char)data[off] == SM_BIN_REQ_MAGIC ? CONN_PROTO_BINARY : CONN_PROTO_TEXT;
        }
        if (c->proto == CONN_PROTO_BINARY) {
            size_t need = proto_bin_need(c, data + off, len - off);
            if (need == 0 || need > len - off || !take_turn(c))
                break;
            worker *w = c->worker;
            uint64_t t0 = w->lat_clock; /* latency.h: one clock read per request */
            c->last_active = cache_now(w->cache);
            int lat;
            off += proto_bin_dispatch(c, data + off, &lat);
            if (c->state == CONN_NREAD) {
                c->lat_start = t0;
                c->lat_cmd = lat;
            } else {
                uint64_t now = sm_lat_now();
                w->lat_clock = now;
                sm_lat_record(&w->lat, lat, now - t0);
            }
            continue;
        }
        if (c->worker->engine->auth && !c->authenticated) {
            size_t n = text_auth_step(c, data + off, len - off);
            if (n == 0)
                break;
            off += n;
            continue;
        }
        if (c->gets.active) {
            off += get_stream_step(c, data + off, len - off);
            if (c->gets.active)
                break; /* the line goes on in bytes still to come (or back-pressure) */
            continue;
        }
        char *line = data + off;
        char *nl = memchr(line, '\n', len - off);
        if (!nl) {
            if (len - off > SM_LINE_MAX) {
                if (!take_turn(c))
                    break;
                off += long_line(c, line, len - off);
                continue;
            }
            break;
        }
        if (!take_turn(c))
            break;
        size_t llen = (size_t)(nl - line);
        int cmd;
        if (llen >= MC_READ_BUFFER && get_line_head(line, llen, &cmd) == 0) {
            c->state = CONN_CLOSING;
            break;
        }
        off += llen + 1;
        if (llen > 0 && line[llen - 1] == '\r')
            llen--;
        line[llen] = '\0';
        dispatch_line(c, line, llen);
    }
    return off;
}

/* ---- counting shared by text and binary ---- */

void proto_count_lookup(worker *w, const get_info *info)
{
    if (info->status == GET_EXPIRED)
        SM_STAT_INC(w->stats.get_expired);
    else if (info->status == GET_FLUSHED)
        SM_STAT_INC(w->stats.get_flushed);
}

void proto_count_get(worker *w, const char *key, size_t nkey, const item *it, bool touch, const get_info *info)
{
    sm_prefix_record(w->engine->prefixes, key, nkey, it ? SM_PREFIX_GET_HIT : SM_PREFIX_GET_MISS);
    proto_count_lookup(w, info);
    if (touch)
        SM_STAT_INC(w->stats.touch_cmds);
    else
        SM_STAT_INC(w->stats.get_cmds);
    if (!it) {
        if (touch)
            SM_STAT_INC(w->stats.touch_misses);
        else
            SM_STAT_INC(w->stats.get_misses);
    } else if (touch) {
        SM_STAT_INC(w->stats.slab[proto_cls(it->slabs_clsid)].touch_hits);
    } else {
        SM_STAT_INC(w->stats.slab[proto_cls(it->slabs_clsid)].get_hits);
    }
}

/*
 * As memcached's do_add_delta: a hit (incr_hits / decr_hits of the item's
 * class) once the old value has been read as a number, so also when the
 * new value then finds no memory; a miss only for a key that was absent
 * and not created (a vivified key, a CAS mismatch and a non-numeric value
 * are neither).
 */
void proto_count_arith(worker *w, bool incr, arith_result r, int cls)
{
    switch (r) {
    case ARITH_OK:
    case ARITH_NO_MEMORY:
        if (incr)
            SM_STAT_INC(w->stats.slab[proto_cls(cls)].incr_hits);
        else
            SM_STAT_INC(w->stats.slab[proto_cls(cls)].decr_hits);
        break;
    case ARITH_NOT_FOUND:
        if (incr)
            SM_STAT_INC(w->stats.incr_misses);
        else
            SM_STAT_INC(w->stats.decr_misses);
        break;
    default:
        break;
    }
}
