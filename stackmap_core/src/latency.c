/*
 * latency.c -- the clock latency.h times commands with, and the names of
 * the classes they are counted under.  Which class a command belongs to is
 * a column of the command table (proto/parse.h).
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
