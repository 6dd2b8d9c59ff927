/*
 * stats_prefix.h -- memcached's per-prefix statistics: "stats detail
 * on|off|dump".
 *
 * Why it exists: memcached counts gets, hits, sets and deletes per key
 * prefix (the bytes before the first ':') while "stats detail on" is set,
 * and "stats detail dump" lists them; tools and memcached's own
 * t/stats-detail.t use it.  Off (the default) it costs one relaxed load per
 * command.  On, each counted command takes the lock of one of 256 buckets
 * (no global lock), and a prefix seen for the first time allocates its
 * entry, as memcached does: it is a diagnostic switch, not a hot path.
 */
#ifndef SM_STATS_PREFIX_H
#define SM_STATS_PREFIX_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/* What a counted command did. */
enum sm_prefix_op { SM_PREFIX_GET_MISS, SM_PREFIX_GET_HIT, SM_PREFIX_SET, SM_PREFIX_DELETE };

typedef struct sm_prefix_stats sm_prefix_stats;

/* A table for keys whose prefix ends at `delimiter`; NULL when out of memory. */
sm_prefix_stats *sm_prefix_create(char delimiter);
void sm_prefix_destroy(sm_prefix_stats *p);

/* "stats detail on" / "off". */
void sm_prefix_enable(sm_prefix_stats *p, bool on);
bool sm_prefix_enabled(const sm_prefix_stats *p);

/* Count op for key (nothing when detail is off or the key has no delimiter). */
void sm_prefix_record(sm_prefix_stats *p, const char *key, size_t nkey, enum sm_prefix_op op);

/* "stats reset": forget every prefix. */
void sm_prefix_clear(sm_prefix_stats *p);

/* "stats detail dump": one "PREFIX ..." line per prefix, in memcached's
 * order, each handed to emit(ctx, line, len); 0, or emit's first -1. */
int sm_prefix_dump(sm_prefix_stats *p, int (*emit)(void *ctx, const char *line, size_t len), void *ctx);

#endif
