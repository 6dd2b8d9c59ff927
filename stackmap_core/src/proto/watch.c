/*
 * watch.c -- the protocols' side of memcached's log streams (logger.h): the
 * "watch" command, which turns a text connection into a watcher, and the
 * item_get / item_store lines the text, meta and binary protocols log for
 * each lookup and store while somebody watches fetchers or mutations.
 *
 * The *_now calls are made only after proto_log_on() (proto.h, inline)
 * said yes, so a server nobody watches pays one relaxed load per request.
 */
#include <string.h>

#include "../engine_internal.h"
#include "../logger.h"
#include "../worker.h"
#include "proto.h"

/* memcached's set_noreply_maybe for watch: a last token "noreply" silences its errors. */
static void watch_reply(conn *c, bool noreply, const char *s)
{
    if (!noreply && out_copy(c, s, strlen(s)) < 0)
        c->state = CONN_CLOSING;
}

void proto_text_watch(conn *c, sm_request *r)
{
    worker *w = c->worker;
    const sm_token *last = &r->tokens[r->ntokens - 2];
    bool noreply = last->value && strcmp(last->value, "noreply") == 0;
    if (!w->settings->watch_enabled) {
        watch_reply(c, noreply, "CLIENT_ERROR watch commands not allowed\r\n");
        return;
    }
    if (c->resp_stack) { /* memcached: a reply of this batch is not sent yet */
        watch_reply(c, noreply, "ERROR cannot pipeline other commands before watch\r\n");
        return;
    }
    static const struct {
        const char *name; /* the word "watch" takes */
        unsigned flag;    /* the kind it asks for */
    } kinds[] = {
        {"rawcmds", SM_LOG_RAWCMDS},       {"evictions", SM_LOG_EVICTIONS},   {"fetchers", SM_LOG_FETCHERS},
        {"mutations", SM_LOG_MUTATIONS},   {"sysevents", SM_LOG_SYSEVENTS},   {"connevents", SM_LOG_CONNEVENTS},
        {"proxyreqs", SM_LOG_PROXYREQS},   {"proxyevents", SM_LOG_PROXYEVENTS}, {"proxyuser", SM_LOG_PROXYUSER},
    };
    unsigned flags = 0;
    if (r->ntokens > 2) {
        for (size_t i = 1; i < r->ntokens - 1; i++) {
            unsigned f = 0;
            for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]) && !f; k++)
                if (strcmp(r->tokens[i].value, kinds[k].name) == 0)
                    f = kinds[k].flag;
            if (!f) {
                watch_reply(c, noreply, "ERROR\r\n");
                return;
            }
            flags |= f;
        }
    } else {
        flags = SM_LOG_FETCHERS;
    }
    sm_watcher *wt = NULL;
    switch (sm_watcher_add(&w->engine->log, flags, c, &wt)) {
    case SM_WATCH_TOO_MANY:
        watch_reply(c, noreply, "WATCHER_TOO_MANY log watcher limit reached\r\n");
        return;
    case SM_WATCH_FAILED:
        watch_reply(c, noreply, "WATCHER_FAILED failed to add log watcher\r\n");
        return;
    default:
        break;
    }
    c->watch = wt;
    wt->next_local = w->watchers;
    w->watchers = wt;
    if (out_static(c, "OK\r\n", 4) < 0) /* (memcached's first bytes in the watcher's buffer) */
        c->state = CONN_CLOSING;
}

/* memcached's numbers for what a lookup found. */
static int get_status_code(const get_info *info, const item *it)
{
    if (it)
        return SM_LOG_FOUND;
    switch (info ? info->status : GET_MISS) {
    case GET_EXPIRED:
        return SM_LOG_EXPIRED;
    case GET_FLUSHED:
        return SM_LOG_FLUSHED;
    default:
        return SM_LOG_NOT_FOUND;
    }
}

void proto_log_get_now(conn *c, const char *key, size_t nkey, const item *it, const get_info *info)
{
    sm_logger *lg = &c->worker->engine->log;
    sm_log_item_get(lg, key, nkey, get_status_code(info, it), it ? it->slabs_clsid : 0,
                    it ? ITEM_vlen(it) : 0, c->fd);
}

void proto_log_lookup_now(conn *c, const char *key, size_t nkey, uint32_t hv)
{
    /* memcached's store, delete and incr/decr look the key up first (and log
     * it): look without bumping (only while somebody watches fetchers) */
    cache *ca = c->worker->cache;
    get_info info;
    item *old = cache_get(ca, key, nkey, hv, CACHE_GET_NOBUMP, 0, &info);
    proto_log_get_now(c, key, nkey, old, &info);
    if (old)
        cache_release(ca, old);
}

void proto_log_store_now(conn *c, const char *key, size_t nkey, const item *it, int op, int result)
{
    sm_logger *lg = &c->worker->engine->log;
    /* store_op -> memcached's NREAD_* (add 1, set 2, replace 3, append 4, prepend 5, cas 6) */
    static const int cmd_of[] = {[STORE_SET] = 2,    [STORE_ADD] = 1,     [STORE_REPLACE] = 3,
                                 [STORE_APPEND] = 4, [STORE_PREPEND] = 5, [STORE_CAS] = 6};
    /* store_result -> memcached's enum store_item_type */
    static const int status_of[] = {[STORE_STORED] = 1,    [STORE_NOT_STORED] = 0, [STORE_EXISTS] = 2,
                                    [STORE_NOT_FOUND] = 3, [STORE_TOO_LARGE] = 4,  [STORE_NO_MEMORY] = 5};
    uint32_t ttl = 0;
    if (it && it->exptime != 0)
        ttl = it->exptime - cache_now(c->worker->cache); /* (memcached's unsigned arithmetic) */
    sm_log_item_store(lg, key, nkey, (unsigned)result <= STORE_NO_MEMORY ? status_of[result] : 0,
                      (unsigned)op <= STORE_CAS ? cmd_of[op] : 0, ttl, it ? it->slabs_clsid : 0, c->fd,
                      it ? ITEM_vlen(it) : 0);
}
