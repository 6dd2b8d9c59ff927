/*
 * stats.c -- summing per-thread counters, the printf helper of the stats
 * sink, and the stats table (stats_table.h) as rows the control plane can
 * read (sm_metric_info).  The per-thread counters live in stats.h; the
 * "stats" groups that print them are in stats_groups.c.
 */
#include "stats.h"

#include "engine.h"
#include "stats_table.h"

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

/* The stats table's rows, in stats_table.h's order. */
#define SM_ROW(group, per_class, name, kind, unit, metric, labels, help) \
    {group, per_class, #name, SM_METRIC_##kind, unit, metric, labels, help, ""},
#define SM_GENERAL(name, kind, unit, metric, labels, help, value) \
    SM_ROW("", 0, name, kind, unit, metric, labels, help)
#define SM_BACKEND(name, kind, unit, metric, labels, help, value) \
    SM_ROW("backend", 0, name, kind, unit, metric, labels, help)
#define SM_SETTINGS(name, option, help, value) \
    {"settings", 0, #name, SM_METRIC_SETTING, "", "", "", help, option},
#define SM_ITEMS(name, kind, unit, metric, labels, help) SM_ROW("items", 1, name, kind, unit, metric, labels, help)
#define SM_SLABS(name, kind, unit, metric, labels, help) SM_ROW("slabs", 1, name, kind, unit, metric, labels, help)
#define SM_SLABS_TOTAL(name, kind, unit, metric, labels, help) \
    SM_ROW("slabs", 0, name, kind, unit, metric, labels, help)
static const struct sm_metric_info metric_rows[] = {
    SM_STATS_GENERAL(SM_GENERAL) SM_STATS_BACKEND(SM_BACKEND) SM_STATS_SETTINGS(SM_SETTINGS) SM_STATS_ITEMS(SM_ITEMS) SM_STATS_SLABS(SM_SLABS)
        SM_STATS_SLABS_TOTAL(SM_SLABS_TOTAL)};
#undef SM_ROW
#undef SM_GENERAL
#undef SM_BACKEND
#undef SM_SETTINGS
#undef SM_ITEMS
#undef SM_SLABS
#undef SM_SLABS_TOTAL

int sm_metric_count(void)
{
    return (int)(sizeof(metric_rows) / sizeof(metric_rows[0]));
}

int sm_metric_info(int i, struct sm_metric_info *out)
{
    if (i < 0 || i >= sm_metric_count())
        return -1;
    *out = metric_rows[i];
    return 0;
}
