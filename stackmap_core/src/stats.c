/*
 * stats.c -- summing per-thread counters and the printf helper of the
 * stats sink.  The counter tables live in stats.h; the "stats" groups that
 * print them are in stats_groups.c.
 */
#include "stats.h"

#include <stdarg.h>
#include <stdio.h>

void sm_stats_accumulate(struct sm_stats_sum *sum, const struct sm_thread_stats *ts)
{
#define SM_X(name) sum->name += atomic_load_explicit(&ts->name, memory_order_relaxed);
    SM_THREAD_STATS(SM_X)
#undef SM_X
    for (int i = 0; i < SM_MAX_SLAB_CLASSES; i++) {
#define SM_X(name)                                                                  \
    {                                                                               \
        uint64_t v = atomic_load_explicit(&ts->slab[i].name, memory_order_relaxed); \
        sum->slab[i].name += v;                                                     \
        sum->slab_##name += v;                                                      \
    }
        SM_SLAB_STATS(SM_X)
#undef SM_X
    }
}

void sm_stat_addf(sm_stat_sink *sink, const char *name, const char *fmt, ...)
{
    char val[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(val, sizeof(val), fmt, ap);
    va_end(ap);
    sink->add(sink, name, val);
}
