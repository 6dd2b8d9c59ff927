/*
 * parse.c -- the command table, the tokenizer and memcached's number rules
 * (parse.h says why they live in one place).
 *
 * Everything here works in place on the caller's line and allocates
 * nothing; it runs once per command on the worker thread.
 */
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

const struct sm_cmd_info sm_cmds[SM_NCMDS] = {
    [SM_CMD_NONE] = {.name = "", .len = 0, .proto = SM_PROTO_TEXT, .lat = SM_LAT_other,
                     .prefetch = SM_PF_NONE, .min_ntokens = 0, .max_ntokens = 0},
#define SM_X(nm, pr, lt, pf, lo, hi, handler)                                                      \
    [SM_CMD_##nm] = {.name = #nm, .len = sizeof(#nm) - 1, .proto = SM_PROTO_##pr, .lat = SM_LAT_##lt, \
                     .prefetch = SM_PF_##pf, .min_ntokens = (lo), .max_ntokens = (hi)},
    SM_COMMANDS(SM_X)
#undef SM_X
};

/* The word is command id (whose length the caller has matched). */
static inline int is(const char *w, int id)
{
    return memcmp(w, sm_cmds[id].name, sm_cmds[id].len) == 0 ? id : SM_CMD_NONE;
}

/*
 * Candidates are chosen by length and first byte, so a word costs one
 * switch and one short memcmp.  tests/c/test_cache.c checks that every row
 * of the table is found here and that near misses are not.
 */
int sm_cmd_lookup(const char *w, size_t n)
{
    switch (n) {
    case 2:
        if (w[0] != 'm')
            return SM_CMD_NONE;
        switch (w[1]) {
        case 'g': return SM_CMD_mg;
        case 's': return SM_CMD_ms;
        case 'd': return SM_CMD_md;
        case 'a': return SM_CMD_ma;
        case 'n': return SM_CMD_mn;
        case 'e': return SM_CMD_me;
        default: return SM_CMD_NONE;
        }
    case 3:
        switch (w[0]) {
        case 'g': return w[1] == 'e' ? is(w, SM_CMD_get) : is(w, SM_CMD_gat);
        case 's': return is(w, SM_CMD_set);
        case 'a': return is(w, SM_CMD_add);
        case 'c': return is(w, SM_CMD_cas);
        case 'l': return is(w, SM_CMD_lru);
        default: return SM_CMD_NONE;
        }
    case 4:
        switch (w[0]) {
        case 'g': return w[1] == 'e' ? is(w, SM_CMD_gets) : is(w, SM_CMD_gats);
        case 'i': return is(w, SM_CMD_incr);
        case 'd': return is(w, SM_CMD_decr);
        case 'b': return is(w, SM_CMD_bget);
        case 'q': return is(w, SM_CMD_quit);
        default: return SM_CMD_NONE;
        }
    case 5:
        switch (w[0]) {
        case 't': return is(w, SM_CMD_touch);
        case 's': return w[1] == 't' ? is(w, SM_CMD_stats) : is(w, SM_CMD_slabs);
        case 'w': return is(w, SM_CMD_watch);
        default: return SM_CMD_NONE;
        }
    case 6:
        switch (w[0]) {
        case 'a': return is(w, SM_CMD_append);
        case 'd': return is(w, SM_CMD_delete);
        default: return SM_CMD_NONE;
        }
    case 7:
        switch (w[0]) {
        case 'r': return is(w, SM_CMD_replace);
        case 'p': return is(w, SM_CMD_prepend);
        case 'v': return is(w, SM_CMD_version);
        default: return SM_CMD_NONE;
        }
    case 8:
        return w[0] == 's' ? is(w, SM_CMD_shutdown) : SM_CMD_NONE;
    case 9:
        switch (w[0]) {
        case 'f': return is(w, SM_CMD_flush_all);
        case 'v': return is(w, SM_CMD_verbosity);
        default: return SM_CMD_NONE;
        }
    case 11:
        return w[0] == 'l' ? is(w, SM_CMD_lru_crawler) : SM_CMD_NONE;
    case 13:
        return w[0] == 'r' ? is(w, SM_CMD_refresh_certs) : SM_CMD_NONE;
    case 14:
        return w[0] == 'c' ? is(w, SM_CMD_cache_memlimit) : SM_CMD_NONE;
    default:
        return SM_CMD_NONE;
    }
}

void sm_parse_line(sm_request *r, char *line, size_t len)
{
    /* memcached reads the line as a C string: an embedded NUL ends it.  From
     * here on line[len] is the line's NUL and none comes before it, so memchr
     * (a word at a time, where the key is most of the line) finds the spaces. */
    len = strnlen(line, len);
    line[len] = '\0';
    sm_token *t = r->tokens;
    size_t n = 0;
    char *s = line, *end = line + len, *e;
    while ((e = memchr(s, ' ', (size_t)(end - s))) != NULL) {
        if (e != s) {
            t[n].value = s;
            t[n].length = (size_t)(e - s);
            n++;
            *e = '\0';
            if (n == SM_MAX_TOKENS - 1) {
                s = e + 1;
                t[n].value = s < end ? s : NULL;
                t[n].length = 0;
                goto done;
            }
        }
        s = e + 1;
    }
    if (s != end) {
        t[n].value = s;
        t[n].length = (size_t)(end - s);
        n++;
    }
    t[n].value = NULL;
    t[n].length = 0;
done:
    r->ntokens = n + 1;
    r->cmd = n > 0 ? sm_cmd_lookup(t[0].value, t[0].length) : SM_CMD_NONE;
}

/* strto*'s end pointer is where a number may end: white space or the end,
 * after at least one digit. */
static bool number_end_ok(const char *s, const char *end)
{
    return end != s && (*end == '\0' || isspace((unsigned char)*end));
}

bool safe_strtoull(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    *out = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE || !number_end_ok(s, end))
        return false;
    /* strtoull negates a '-' number modulo 2^64: refuse it when that looks negative. */
    if ((long long)v < 0 && memchr(s, '-', (size_t)(end - s)) != NULL)
        return false;
    *out = v;
    return true;
}

bool safe_strtoul(const char *s, uint32_t *out)
{
    uint64_t v;
    *out = 0;
    if (!safe_strtoull(s, &v))
        return false;
    *out = (uint32_t)v; /* memcached stores its unsigned long into 32 bits */
    return true;
}

bool safe_strtol(const char *s, int32_t *out)
{
    char *end;
    errno = 0;
    *out = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE || !number_end_ok(s, end))
        return false;
    *out = (int32_t)(uint32_t)(unsigned long long)v; /* memcached stores its long into 32 bits */
    return true;
}

bool safe_strtod(const char *s, double *out)
{
    char *end;
    errno = 0;
    *out = 0;
    double d = strtod(s, &end);
    if (errno == ERANGE || !number_end_ok(s, end))
        return false;
    *out = d;
    return true;
}
