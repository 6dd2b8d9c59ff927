/*
 * latency.c -- naming and classifying the commands that latency.h times.
 *
 * Classification looks at the first word of a command line only, with a
 * comparison against a handful of constant strings chosen by the word's
 * length, so it costs a few nanoseconds on the request path.
 */
#include "latency.h"

#include <string.h>

static const char *const names[SM_LAT_NCMDS] = {
#define SM_X(name) #name,
    SM_LAT_COMMANDS(SM_X)
#undef SM_X
};

const char *sm_lat_name(int cmd)
{
    return cmd >= 0 && cmd < SM_LAT_NCMDS ? names[cmd] : NULL;
}

int sm_lat_classify(const char *line, size_t len)
{
    size_t n = 0;
    while (n < len && line[n] != ' ')
        n++;
    /* Candidates of the word's length; the word must equal one of them. */
    static const int by_len[][4] = {
        [2] = {SM_LAT_mg, SM_LAT_ms, SM_LAT_md, SM_LAT_ma},
        [3] = {SM_LAT_get, SM_LAT_set, SM_LAT_add, SM_LAT_cas},
        [4] = {SM_LAT_gets, SM_LAT_gats, SM_LAT_incr, SM_LAT_decr},
        [5] = {SM_LAT_touch, SM_LAT_stats, SM_LAT_other, SM_LAT_other},
        [6] = {SM_LAT_append, SM_LAT_delete, SM_LAT_other, SM_LAT_other},
        [7] = {SM_LAT_replace, SM_LAT_prepend, SM_LAT_version, SM_LAT_other},
        [9] = {SM_LAT_flush_all, SM_LAT_other, SM_LAT_other, SM_LAT_other},
    };
    if (n == 3 && memcmp(line, "gat", 3) == 0)
        return SM_LAT_gat;
    if (n == 2 && line[0] == 'm' && (line[1] == 'n' || line[1] == 'e'))
        return line[1] == 'n' ? SM_LAT_mn : SM_LAT_me;
    if (n >= sizeof(by_len) / sizeof(by_len[0]))
        return SM_LAT_other;
    for (int i = 0; i < 4; i++) {
        int cmd = by_len[n][i];
        if (cmd == SM_LAT_other || (cmd == 0 && n != 3))
            break;
        if (memcmp(line, names[cmd], n) == 0)
            return cmd;
    }
    return SM_LAT_other;
}
