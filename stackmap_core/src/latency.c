/*
 * latency.c -- naming and classifying the commands that latency.h times.
 *
 * Classification looks at the first word of a command line only, with a
 * comparison against a handful of constant strings chosen by the word's
 * length, so it costs a few nanoseconds on the request path.
 */
#include "latency.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

struct sm_lat_clock sm_lat_clock;

#if defined(__x86_64__)
/* Does the kernel keep time with the TSC? */
static int kernel_uses_tsc(void)
{
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    if (!f)
        return 0;
    char name[32] = "";
    int ok = fgets(name, sizeof(name), f) != NULL && strcmp(name, "tsc\n") == 0;
    fclose(f);
    return ok;
}

/* One (TSC, CLOCK_MONOTONIC) pair: the TSC halfway through the clock read. */
static void clock_pair(uint64_t *tsc, uint64_t *ns)
{
    uint64_t a = __builtin_ia32_rdtsc();
    *ns = sm_lat_mono();
    uint64_t b = __builtin_ia32_rdtsc();
    *tsc = a + (b - a) / 2;
}
#endif

static void clock_init_once(void)
{
#if defined(__x86_64__)
    if (!kernel_uses_tsc())
        return;
    uint64_t tsc_a, ns_a, tsc_b, ns_b;
    clock_pair(&tsc_a, &ns_a);
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
    clock_pair(&tsc_b, &ns_b);
    if (tsc_b <= tsc_a || ns_b <= ns_a)
        return;
    sm_lat_clock.mult = (uint64_t)((((unsigned __int128)(ns_b - ns_a)) << 32) / (tsc_b - tsc_a));
    sm_lat_clock.tsc0 = tsc_b;
    sm_lat_clock.ns0 = ns_b;
    sm_lat_clock.use_tsc = sm_lat_clock.mult > 0;
#endif
}

void sm_lat_clock_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, clock_init_once);
}

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
