/*
 * engine.c -- the engine's life cycle: settings, whose defaults and limits
 * are the option table's (options.h), which it also hands to the control
 * plane (sm_option_info); the open-file limit -c needs, binding the
 * listeners (one SO_REUSEPORT socket per worker per address, so each worker
 * accepts its own connections; or, with -s, one unix socket every worker
 * accepts from), starting the worker threads over a ring backend and
 * waiting until every one has set up (AUTO moving on to the next backend
 * when one cannot start everywhere), each worker's state for readiness,
 * stopping, and the few whole-server calls the control plane makes.
 */
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "tls.h"
#include "engine_internal.h"
#include "io/backend.h"
#include "proto/auth.h"
#include "options.h"

#define ONE_MB (1024u * 1024u)

const char *sm_version(void)
{
    return "1.6.18";
}

/* ---- the option table (options.h): defaults, limits, rows for the control plane ---- */

/* enum sm_backend_kind's names, by value: what --backend takes. */
static const char *const backend_names[] = {"auto", "epoll", "uring", "stackmap"};

const char *sm_backend_name(int kind)
{
    if (kind < 0 || kind >= (int)(sizeof(backend_names) / sizeof(backend_names[0])))
        return NULL;
    return backend_names[kind];
}

/* A value as written (the default column) -> a number; -1 if it is not one of `type`. */
static int opt_number(int type, const char *text, double *out)
{
    char *end = NULL;
    switch (type) {
    case SM_OPT_BOOL:
    case SM_OPT_NOT: {
        static const char *const yes[] = {"1", "on", "yes", "true"}, *const no[] = {"0", "off", "no", "false"};
        for (int i = 0; i < 4; i++) {
            if (strcmp(text, yes[i]) == 0)
                return *out = 1, 0;
            if (strcmp(text, no[i]) == 0)
                return *out = 0, 0;
        }
        return -1;
    }
    case SM_OPT_BACKEND:
        for (int k = 0; sm_backend_name(k); k++)
            if (strcmp(text, sm_backend_name(k)) == 0)
                return *out = k, 0;
        return -1;
    case SM_OPT_OCTAL:
        *out = (double)strtol(text, &end, 8);
        return end != text && *end == '\0' ? 0 : -1;
    case SM_OPT_SIZE:
        *out = strtod(text, &end);
        if (end != text && (*end == 'k' || *end == 'K'))
            *out *= 1024, end++;
        else if (end != text && (*end == 'm' || *end == 'M'))
            *out *= ONE_MB, end++;
        return end != text && *end == '\0' ? 0 : -1;
    default:
        *out = strtod(text, &end);
        return end != text && *end == '\0' ? 0 : -1;
    }
}

/* Store v (the value as a user gives it) into a field of `size` bytes. */
static void opt_store(int type, void *field, size_t size, double v)
{
    if (type == SM_OPT_FLOAT)
        *(double *)field = v;
    else if (type == SM_OPT_MB)
        *(uint64_t *)field = (uint64_t)v * ONE_MB;
    else if (type == SM_OPT_NOT)
        *(int *)field = v == 0;
    else if (size == sizeof(uint64_t))
        *(uint64_t *)field = (uint64_t)v;
    else
        *(int *)field = (int)v; /* int and uint32_t fields alike: every limit is below 2^31 */
}

/* A field's value as a user would have given it (opt_store's inverse). */
static double opt_load(int type, const void *field, size_t size)
{
    if (type == SM_OPT_FLOAT)
        return *(const double *)field;
    if (type == SM_OPT_MB)
        return (double)(*(const uint64_t *)field / ONE_MB);
    if (type == SM_OPT_NOT)
        return *(const int *)field == 0;
    if (size == sizeof(uint64_t))
        return (double)*(const uint64_t *)field;
    if (type == SM_OPT_SIZE)
        return (double)*(const uint32_t *)field; /* item_size_max is unsigned */
    return (double)*(const int *)field;
}

static bool opt_is_text(int type)
{
    return type == SM_OPT_STR || type == SM_OPT_LISTEN || type == SM_OPT_HOSTPORT || type == SM_OPT_LIST;
}

/* Set one field to its default. */
static void opt_default(int type, const char *def, void *field, size_t size)
{
    if (!field)
        return;
    double v;
    if (opt_is_text(type))
        snprintf(field, size, "%s", def);
    else if (opt_number(type, def, &v) == 0)
        opt_store(type, field, size, v);
    /* a default that does not parse is caught by tests/test_options.py */
}

/* "-p/--port", "--backend" or "-o hashpower": how a message names an option. */
static void opt_name(char *buf, size_t len, const char *key, int flag, int scope)
{
    if (scope == SM_OPT_EXTENDED) {
        snprintf(buf, len, "-o %s", key);
        return;
    }
    size_t n = 0;
    if (flag)
        n = (size_t)snprintf(buf, len, "-%c/", flag);
    n += (size_t)snprintf(buf + n, n < len ? len - n : 0, "--%s", key);
    for (char *c = buf; *c; c++)
        if (*c == '_')
            *c = '-';
}

/* Check one field against its row's limits; -1 + err when outside. */
static int opt_check(const char *key, int flag, int scope, int type, double lo, double hi, const char *help,
                     const void *field, size_t size, char *err, size_t errlen)
{
    if (!field || opt_is_text(type))
        return 0;
    double v = opt_load(type, field, size);
    bool ok = type == SM_OPT_FLOAT ? v > lo && v <= hi : v >= lo && v <= hi;
    if (ok)
        return 0;
    char name[64];
    opt_name(name, sizeof(name), key, flag, scope);
    if (lo == hi && type == SM_OPT_BOOL) /* a switch that may not be turned on: help says why */
        snprintf(err, errlen, "%s: %s", name, help);
    else if (lo == hi)
        snprintf(err, errlen, "%s: %s, got %.0f", name, help, v);
    else if (type == SM_OPT_FLOAT)
        snprintf(err, errlen, "%s: must be greater than %g, got %g", name, lo, v);
    else if (type == SM_OPT_OCTAL)
        snprintf(err, errlen, "%s: must be an octal mode between %o and %o, got %o", name, (unsigned)lo,
                 (unsigned)hi, (unsigned)v);
    else if (isinf(hi))
        snprintf(err, errlen, "%s: must be at least %.0f, got %.0f", name, lo, v);
    else
        snprintf(err, errlen, "%s: must be between %.0f and %.0f, got %.0f", name, lo, hi, v);
    return -1;
}

/* The table's rows, for sm_option_info. */
#define FIELD(f) #f
#define NOFIELD ""
#define SM_X(key, field, type, def, lo, hi, flag, metavar, scope, live, help) \
    {#key, field, SM_OPT_##type, def, lo, hi, flag, metavar, SM_OPT_##scope, live, help},
static const struct sm_option_info option_rows[] = {SM_OPTIONS(SM_X)};
#undef SM_X
#undef FIELD
#undef NOFIELD

int sm_option_count(void)
{
    return (int)(sizeof(option_rows) / sizeof(option_rows[0]));
}

int sm_option_info(int i, struct sm_option_info *out)
{
    if (i < 0 || i >= sm_option_count())
        return -1;
    *out = option_rows[i];
    return 0;
}

uint32_t sm_slab_chunk_max(const struct sm_settings *s)
{
    if (s->slab_chunk_max != 0)
        return s->slab_chunk_max;
    return ONE_MB / 2; /* no_modern's whole page is set by its expansion (stackmapd/settings.py) */
}

void sm_settings_derive(struct sm_settings *s)
{
    if (s->slab_page_size < s->item_size_max)
        s->slab_page_size = s->item_size_max;
    if (s->slab_page_size < ONE_MB)
        s->slab_page_size = ONE_MB;
}

void sm_settings_init(struct sm_settings *s)
{
    memset(s, 0, sizeof(*s));
#define FIELD(f) &s->f, sizeof(s->f)
#define NOFIELD NULL, 0
#define SM_X(key, field, type, def, lo, hi, flag, metavar, scope, live, help) opt_default(SM_OPT_##type, def, field);
    SM_OPTIONS(SM_X)
#undef SM_X
#undef FIELD
#undef NOFIELD
    sm_settings_derive(s);
}

int sm_settings_check(const struct sm_settings *s, char *err, size_t errlen)
{
#define FIELD(f) &s->f, sizeof(s->f)
#define NOFIELD NULL, 0
#define SM_X(key, field, type, def, lo, hi, flag, metavar, scope, live, help)                           \
    if (opt_check(#key, flag, SM_OPT_##scope, SM_OPT_##type, lo, hi, help, field, err, errlen) < 0) \
        return -1;
    SM_OPTIONS(SM_X)
#undef SM_X
#undef FIELD
#undef NOFIELD
    /* rules that involve more than one field, or the build */
    if (s->listen[0] == '\0') {
        snprintf(err, errlen, "-l/--listen: no listen address");
        return -1;
    }
    if ((uint64_t)s->item_size_max > s->maxbytes / 2) {
        snprintf(err, errlen, "-I/--max-item-size (%u bytes) cannot be larger than half of -m/--memory-limit",
                 s->item_size_max);
        return -1;
    }
    /* memcached's checks of slab_chunk_max, in its words; its slab page is
     * always 1 MiB (ours grows with -I, but the class series is its) */
    uint32_t chunk_max = sm_slab_chunk_max(s);
    if (chunk_max > s->item_size_max) {
        snprintf(err, errlen, "-o slab_chunk_max (bytes: %u) cannot be larger than -I (item_size_max %u)",
                 chunk_max, s->item_size_max);
        return -1;
    }
    if (s->item_size_max % chunk_max != 0) {
        snprintf(err, errlen, "-I (item_size_max: %u) must be evenly divisible by slab_chunk_max (bytes: %u)",
                 s->item_size_max, chunk_max);
        return -1;
    }
    if (ONE_MB % chunk_max != 0) {
        snprintf(err, errlen, "-o slab_chunk_max (bytes: %u) must divide evenly into %u (slab_page_size)",
                 chunk_max, ONE_MB);
        return -1;
    }
    if (s->hot_lru_pct + s->warm_lru_pct > 80) { /* memcached's words */
        snprintf(err, errlen, "-o hot_lru_pct + warm_lru_pct cannot be more than 80%% combined");
        return -1;
    }
    if (s->temporary_ttl >= 0 && !s->lru_maintainer) {
        snprintf(err, errlen, "-o temporary_ttl requires lru_maintainer to be enabled");
        return -1;
    }
    if (s->unix_socket[0] && s->backend == SM_BACKEND_STACKMAP) {
        snprintf(err, errlen, "-s/--unix-socket: the stackmap module carries TCP sockets only; a unix socket "
                              "is served by --backend uring or epoll (auto picks them)");
        return -1;
    }
    if (strcmp(s->eviction, "lru") != 0 && strcmp(s->eviction, "s3fifo") != 0) {
        snprintf(err, errlen, "-o eviction: must be lru or s3fifo, got '%s'", s->eviction);
        return -1;
    }
    if (strcmp(s->binding_protocol, "auto") != 0 && strcmp(s->binding_protocol, "ascii") != 0 &&
        strcmp(s->binding_protocol, "binary") != 0) {
        snprintf(err, errlen, "-B/--protocol: must be auto, ascii or binary, got '%s'", s->binding_protocol);
        return -1;
    }
    if (!sm_backend_built(s->backend)) {
        snprintf(err, errlen, "--backend uring: %s", SM_URING_ABSENT); /* the only optional one */
        return -1;
    }
    return 0;
}

void engine_log_write(struct sm_engine *e, const char *fmt, ...)
{
    (void)e;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

/* The cache's eviction hook: memcached's "type=eviction" line for a watcher. */
static void log_eviction(void *arg, const item *it, rel_time_t now)
{
    rel_time_t exp = it->exptime, last = it->time;
    sm_log_eviction(arg, ITEM_key(it), it->nkey, (atomic_load(&it->it_flags) & ITEM_FETCHED) != 0,
                    exp > 0 ? (long long)exp - (long long)now : -1LL, now - last, it->slabs_clsid,
                    it->nbytes >= 2 ? it->nbytes - 2 : 0);
}

/* The cache's slab-move hook: an automover decision, to "watch sysevents". */
static void log_slab_move(void *arg, int src, int dst)
{
    sm_log_slab_move(arg, src, dst);
}

sm_engine *sm_engine_create(const struct sm_settings *s, char *err, size_t errlen)
{
    if (sm_settings_check(s, err, errlen) < 0)
        return NULL;
    sm_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    sm_lat_clock_init(); /* before any worker reads it */
    e->settings = *s;
    sm_settings_derive(&e->settings);
    e->settings.slab_chunk_max = sm_slab_chunk_max(&e->settings); /* 0: memcached's default, as it shows it */
    atomic_init(&e->verbose, s->verbose);
    pthread_mutex_init(&e->wait_lock, NULL);
    pthread_cond_init(&e->wait_cond, NULL);
    pthread_cond_init(&e->state_cond, NULL);
    cache_config cc = {
        .maxbytes = e->settings.maxbytes,
        .item_size_max = e->settings.item_size_max,
        .chunk_size = e->settings.chunk_size,
        .factor = e->settings.factor,
        .slab_page_size = e->settings.slab_page_size,
        .slab_chunk_max = e->settings.slab_chunk_max,
        .hashpower_init = e->settings.hashpower_init,
        .use_cas = e->settings.use_cas,
        .disable_evictions = !e->settings.evict_to_free,
        .lru_segmented = e->settings.lru_segmented,
        .lru_maintainer = e->settings.lru_maintainer,
        .hot_lru_pct = e->settings.hot_lru_pct,
        .warm_lru_pct = e->settings.warm_lru_pct,
        .hot_max_factor = e->settings.hot_max_factor,
        .warm_max_factor = e->settings.warm_max_factor,
        .temporary_ttl = e->settings.temporary_ttl,
        .verbose = e->settings.verbose,
        .lru_crawler = e->settings.lru_crawler,
        .lru_crawler_sleep = (uint32_t)e->settings.lru_crawler_sleep,
        .lru_crawler_tocrawl = (uint32_t)e->settings.lru_crawler_tocrawl,
        .slab_reassign = e->settings.slab_reassign,
        .slab_automove = e->settings.slab_automove,
        .slab_automove_ratio = e->settings.slab_automove_ratio,
        .slab_automove_window = e->settings.slab_automove_window,
        .s3fifo = strcmp(e->settings.eviction, "s3fifo") == 0,
    };
    if (e->settings.auth_file[0]) { /* -Y: a file that cannot be used stops the start */
        e->auth = sm_auth_load(e->settings.auth_file, err, errlen);
        if (!e->auth) {
            free(e);
            return NULL;
        }
    }
    e->cache = cache_create(&cc, err, errlen);
    if (!e->cache) {
        sm_auth_free(e->auth);
        free(e);
        return NULL;
    }
    e->prefixes = sm_prefix_create(':');
    e->workers = calloc((size_t)s->num_threads, sizeof(worker));
    if (!e->workers || !e->prefixes ||
        sm_logger_init(&e->log, s->num_threads, (uint32_t)s->worker_logbuf_size * 1024u,
                       (uint32_t)s->watcher_logbuf_size * 1024u) < 0) {
        sm_logger_destroy(&e->log);
        free(e->workers);
        sm_prefix_destroy(e->prefixes);
        cache_destroy(e->cache);
        sm_auth_free(e->auth);
        free(e);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    cache_set_evict_log(e->cache, &e->log.eflags, SM_LOG_EVICTIONS, log_eviction, &e->log);
    cache_set_slab_move_log(e->cache, &e->log.eflags, SM_LOG_SYSEVENTS, log_slab_move, &e->log);
    for (int i = 0; i < s->num_threads; i++) {
        worker *w = &e->workers[i];
        w->id = i;
        w->engine = e;
        w->cache = e->cache;
        w->settings = &e->settings;
        w->env.cache = e->cache;
        w->env.stats = &w->stats;
        w->env.pool.stats = &w->stats;
        w->env.log_flags = &e->log.eflags;
        /* A request line longer than this is abuse, not a multiget. */
        w->env.rbuf_max = (size_t)s->item_size_max + (1u << 20);
        pthread_mutex_init(&w->conns_lock, NULL);
        atomic_init(&w->state, SM_WORKER_STOPPED);
    }
    return e;
}

/* Descriptors the process needs beside -c client connections: the control
 * plane's (HTTP server, logs, snapshot files) and, per worker, its
 * listeners, its ring or epoll instance and /proc/stat. */
#define FD_RESERVE_BASE 64
#define FD_RESERVE_PER_WORKER 4

/*
 * The open-file limit for -c (at start, and when -c is raised live), as
 * memcached 1.6 does it at start: raise the soft limit
 * to what -c needs (and the hard one too, where we may), and refuse to start
 * when the hard limit is below -c itself (memcached: "failed to set rlimit
 * for open files").  memcached counts its own descriptors in -c; stackmapd's
 * -c counts clients only, so a hard limit between -c and -c plus our own
 * descriptors still starts, with a warning of how many clients fit.
 */
int engine_fd_limits(struct sm_engine *e, int conns, char *err, size_t errlen)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(err, errlen, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return -1;
    }
    rlim_t maxconns = (rlim_t)conns;
    rlim_t reserve = FD_RESERVE_BASE + (rlim_t)FD_RESERVE_PER_WORKER * (rlim_t)e->settings.num_threads;
    rlim_t want = maxconns + reserve;
    if (rl.rlim_cur >= want)
        return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
        struct rlimit up = {want, want}; /* only with CAP_SYS_RESOURCE */
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            return 0;
    }
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < maxconns) {
        snprintf(err, errlen,
                 "the open-file limit (hard %llu) is below -c %d and cannot be raised: "
                 "raise the open-file limit (ulimit -n) or lower -c",
                 (unsigned long long)rl.rlim_max, conns);
        return -1;
    }
    rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(err, errlen, "setrlimit(RLIMIT_NOFILE, %llu): %s", (unsigned long long)rl.rlim_cur,
                 strerror(errno));
        return -1;
    }
    if (rl.rlim_cur < want)
        engine_log(e, 0,
                   "the open-file limit %llu leaves room for about %llu client connections, fewer than "
                   "-c %d: raise it to %llu (ulimit -n) to serve them all\n",
                   (unsigned long long)rl.rlim_cur,
                   (unsigned long long)(rl.rlim_cur > reserve ? rl.rlim_cur - reserve : 0),
                   conns, (unsigned long long)want);
    return 0;
}

/* What a user can do about a backend that failed with errnum, or NULL. */
static const char *remedy(int errnum)
{
    switch (errnum) {
    case EMFILE:
    case ENFILE:
        return "raise the open-file limit (ulimit -n) or lower -c or -t";
    case ENOMEM:
        return "lower -o uring_entries, uring_bufs or uring_buf_size, or give the process more memory "
               "(ulimit -l, ulimit -v)";
    case EPERM:
    case EACCES:
        return "the backend is not permitted here (sysctl kernel.io_uring_disabled, a seccomp profile): "
               "use --backend epoll";
    case EINVAL:
    case ENOSYS:
    case EOPNOTSUPP:
        return "this kernel lacks what the backend needs: use --backend epoll";
    default:
        return NULL;
    }
}

/* Undo start_workers' work: stop and join every thread created, free the backend state. */
static void stop_workers(sm_engine *e, int created)
{
    int n = e->settings.num_threads;
    pthread_mutex_lock(&e->wait_lock);
    for (int i = 0; i < n; i++)
        atomic_store(&e->workers[i].stop, true);
    pthread_cond_broadcast(&e->state_cond);
    pthread_mutex_unlock(&e->wait_lock);
    for (int i = 0; i < created; i++)
        pthread_join(e->workers[i].thread, NULL);
    for (int i = 0; i < n; i++) {
        worker_destroy(&e->workers[i]);
        if (atomic_load(&e->workers[i].state) != SM_WORKER_FAILED)
            atomic_store(&e->workers[i].state, SM_WORKER_STOPPED);
    }
}

/*
 * Start every worker over ops and wait until each has set up (its ring is
 * created on its own thread).  0 with all of them serving, or -1 + err with
 * every thread joined and the backend state freed (the listeners stay bound,
 * for the next backend or for close_listeners).
 */
static int start_workers(sm_engine *e, const backend_ops *ops, char *err, size_t errlen)
{
    int n = e->settings.num_threads;
    e->ops = ops;
    atomic_store(&e->go, false);
    for (int i = 0; i < n; i++) {
        worker *w = &e->workers[i];
        w->ops = ops;
        atomic_store(&w->stop, false);
        atomic_store(&w->draining, false);
        atomic_store(&w->setup_done, false);
        atomic_store(&w->state, SM_WORKER_STARTING);
        w->error[0] = '\0';
        w->error_errno = 0;
    }
    for (int i = 0; i < n; i++) {
        char why[sizeof(e->workers[i].error)] = "";
        int rc = ops->init(&e->workers[i], why, sizeof(why));
        if (rc < 0) {
            const char *fix = remedy(rc == -1 ? 0 : -rc);
            snprintf(err, errlen, "backend %s failed on worker %d: %s%s%s", ops->name, i, why, fix ? "; " : "",
                     fix ? fix : "");
            for (int j = 0; j < i; j++)
                worker_destroy(&e->workers[j]);
            for (int j = 0; j < n; j++)
                atomic_store(&e->workers[j].state, SM_WORKER_STOPPED);
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        int rc = pthread_create(&e->workers[i].thread, NULL, worker_main, &e->workers[i]);
        if (rc != 0) {
            snprintf(err, errlen, "cannot create worker thread: %s", strerror(rc));
            stop_workers(e, i);
            return -1;
        }
    }
    /* Every worker either set up or failed. */
    int failed = -1;
    pthread_mutex_lock(&e->wait_lock);
    for (int i = 0; i < n; i++) {
        worker *w = &e->workers[i];
        while (!atomic_load(&w->setup_done) && atomic_load(&w->state) != SM_WORKER_FAILED)
            pthread_cond_wait(&e->state_cond, &e->wait_lock);
        if (failed < 0 && atomic_load(&w->state) == SM_WORKER_FAILED)
            failed = i;
    }
    if (failed < 0) {
        atomic_store(&e->go, true);
        pthread_cond_broadcast(&e->state_cond);
    }
    pthread_mutex_unlock(&e->wait_lock);
    if (failed < 0)
        return 0;
    worker *w = &e->workers[failed];
    const char *fix = remedy(w->error_errno);
    snprintf(err, errlen, "backend %s failed on worker %d: %s%s%s", ops->name, failed, w->error,
             fix ? "; " : "", fix ? fix : "");
    stop_workers(e, n);
    return -1;
}

/* A bound, listening socket for one address; -1 + err. */
static int open_listener(const struct addrinfo *ai, int backlog, bool reuseport, char *err,
                         size_t errlen, const char *host)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        snprintf(err, errlen, "socket(): %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        snprintf(err, errlen, "failed to listen on %s: %s", host, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, backlog) < 0) {
        snprintf(err, errlen, "listen() on %s: %s", host, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Port of a bound socket. */
static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* Give fd to worker w as one more listener; -1 + err (fd closed) when out of memory. */
static int add_listener(worker *w, int fd, char *err, size_t errlen)
{
    int *n = realloc(w->listen_fds, (size_t)(w->nlisten + 1) * sizeof(int));
    if (!n) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->listen_fds = n;
    w->listen_fds[w->nlisten++] = fd;
    return 0;
}

/*
 * -s: the one unix socket, as memcached binds it: a socket file left at the
 * path (a previous run's) is removed first, anything else there makes bind
 * fail; the file gets mode -a (bound under umask ~mask, as memcached does:
 * the engine starts before the control plane's other threads, so nothing
 * else creates files meanwhile).  AF_UNIX has no SO_REUSEPORT balancing, so
 * every worker gets a dup() of the one listening socket and they all accept
 * from it (a worker that loses the race gets EAGAIN).
 */
static int bind_unix(sm_engine *e, char *err, size_t errlen)
{
    const char *path = e->settings.unix_socket;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket(AF_UNIX): %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    mode_t old = umask((mode_t)(~e->settings.unix_mask & 0777));
    int rc = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    int saved = errno;
    umask(old);
    if (rc < 0) {
        snprintf(err, errlen, "failed to listen on UNIX socket: %s: %s", path, strerror(saved));
        close(fd);
        return -1;
    }
    if (listen(fd, e->settings.backlog) < 0) {
        snprintf(err, errlen, "listen() on UNIX socket %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    for (int i = 0; i < e->settings.num_threads; i++) {
        int copy = i == 0 ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (copy < 0) {
            snprintf(err, errlen, "dup of the unix listener: %s", strerror(errno));
            return -1;
        }
        if (add_listener(&e->workers[i], copy, err, errlen) < 0)
            return -1;
    }
    return 0;
}

/* A -l entry's own port, as memcached reads it: "HOST:PORT" (one colon) or
 * "[V6]:PORT"; the host is left in place ("[::1]" loses its brackets; a bare
 * "::1" has no port).  The port, -1 when the entry names none, -2 + err for
 * one that is not a number in 0..65535 (memcached's message). */
static int listen_entry_port(char *host, char *err, size_t errlen)
{
    char *colon;
    if (host[0] == '[') {
        char *rb = strchr(host, ']');
        if (!rb) {
            snprintf(err, errlen, "Invalid IPV6 address: \"%s\"", host);
            return -2;
        }
        *rb = '\0';
        colon = rb[1] == ':' ? rb + 1 : NULL;
        if (!colon && rb[1] != '\0') {
            snprintf(err, errlen, "Invalid IPV6 address: \"%s]%s\"", host, rb + 1);
            return -2;
        }
        memmove(host, host + 1, strlen(host + 1) + 1);
        if (!colon)
            return -1;
    } else {
        colon = strchr(host, ':');
        if (!colon || strchr(colon + 1, ':'))
            return -1; /* no port, or a bare IPv6 address */
        *colon = '\0';
    }
    const char *digits = colon + 1;
    char *end = NULL;
    errno = 0;
    long v = strtol(digits, &end, 10);
    if (*digits < '0' || *digits > '9' || *end != '\0' || errno != 0 || v > 65535) {
        snprintf(err, errlen, "Invalid port number: \"%s\"", digits);
        return -2;
    }
    return (int)v;
}

/* Bind every listen address for every worker (or, with -s, the unix socket). */
static int bind_all(sm_engine *e, char *err, size_t errlen)
{
    if (e->settings.unix_socket[0])
        return bind_unix(e, err, errlen);
    char list[sizeof(e->settings.listen)];
    snprintf(list, sizeof(list), "%s", e->settings.listen);
    int nthreads = e->settings.num_threads;
    int port = e->settings.port;
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        char *end = tok + strlen(tok);
        while (end > tok && end[-1] == ' ')
            *--end = '\0';
        char host[256];
        snprintf(host, sizeof(host), "%s", tok);
        bool notls = tls_listen_notls(host); /* memcached's -l notls:ADDR: plain under -Z */
        int entry_port = listen_entry_port(host, err, errlen); /* HOST:PORT, [V6]:PORT; -1: none */
        if (entry_port == -2)
            return -1;
        int the_port = entry_port >= 0 ? entry_port : port;
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *res = NULL;
        char portstr[16];
        snprintf(portstr, sizeof(portstr), "%d", the_port);
        int rc = getaddrinfo(host, portstr, &hints, &res);
        if (rc != 0) {
            snprintf(err, errlen, "getaddrinfo(%s): %s", host, gai_strerror(rc));
            return -1;
        }
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            /* First a probe without SO_REUSEPORT: fails if anybody holds the port. */
            int probe = open_listener(ai, 1, false, err, errlen, host);
            if (probe < 0) {
                freeaddrinfo(res);
                return -1;
            }
            if (the_port == 0) {
                the_port = bound_port(probe);
                ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)the_port);
                if (entry_port < 0) /* -p 0: the first port picked is the -p port of the rest */
                    port = e->settings.port = the_port;
            }
            close(probe);
            for (int i = 0; i < nthreads; i++) {
                int fd = open_listener(ai, e->settings.backlog, true, err, errlen, host);
                if (fd < 0) {
                    freeaddrinfo(res);
                    return -1;
                }
                if (add_listener(&e->workers[i], fd, err, errlen) < 0) {
                    freeaddrinfo(res);
                    return -1;
                }
                if (notls && i == 0)
                    tls_note_notls(e, fd);
            }
        }
        freeaddrinfo(res);
    }
    return 0;
}

static void close_listeners(sm_engine *e)
{
    for (int i = 0; i < e->settings.num_threads; i++) {
        worker *w = &e->workers[i];
        for (int j = 0; j < w->nlisten; j++)
            close(w->listen_fds[j]);
        free(w->listen_fds);
        w->listen_fds = NULL;
        w->nlisten = 0;
    }
}

int sm_engine_start(sm_engine *e, char *err, size_t errlen)
{
    if (e->running) {
        snprintf(err, errlen, "engine already started");
        return -1;
    }
    /* Explicit: that backend only.  AUTO: our module's rings, then io_uring, then epoll. */
    const backend_ops *order[3];
    int norder = 0;
    switch (e->settings.backend) {
    case SM_BACKEND_EPOLL:
        order[norder++] = &backend_epoll;
        break;
    case SM_BACKEND_URING:
        order[norder++] = &backend_uring;
        break;
    case SM_BACKEND_STACKMAP:
        order[norder++] = &backend_stackmap;
        break;
    default:
        order[norder++] = &backend_stackmap;
        order[norder++] = &backend_uring;
        order[norder++] = &backend_epoll;
        break;
    }
    bool autopick = norder > 1;
    if (engine_fd_limits(e, e->settings.maxconns, err, errlen) < 0)
        return -1;
    if (!e->tls && tls_engine_init(e, err, errlen) < 0) /* -Z: certificates first, a bad one is the start error */
        return -1;
    if (bind_all(e, err, errlen) < 0) {
        close_listeners(e);
        return -1;
    }
    if (cache_start(e->cache) < 0) {
        snprintf(err, errlen, "cannot start the cache maintainer thread");
        close_listeners(e);
        return -1;
    }
    if (sm_logger_start(&e->log) != 0) {
        snprintf(err, errlen, "cannot start the logger thread");
        cache_stop(e->cache);
        close_listeners(e);
        return -1;
    }
    e->backend_note[0] = '\0';
    char why[sizeof(e->backend_note)];
    size_t nl = 0;
    bool started = false;
    /* Before any worker runs: a worker answering "stats" reads it (uptime). */
    e->started = time(NULL);
    for (int k = 0; k < norder && !started; k++) {
        const backend_ops *ops = order[k];
        bool probed = ops->probe(&e->settings, why, sizeof(why)) == 0;
        if (probed && start_workers(e, ops, why, sizeof(why)) == 0) {
            started = true;
            break;
        }
        if (!autopick) {
            if (probed)
                snprintf(err, errlen, "%s", why);
            else
                snprintf(err, errlen, "backend %s is not usable here: %s", ops->name, why);
            break;
        }
        /* AUTO moves on and says why, except past a stackmap backend that is
         * not usable (no module loaded: the usual case, not news). */
        if (probed || ops != &backend_stackmap) {
            char entry[sizeof(why) + 64];
            if (probed)
                snprintf(entry, sizeof(entry), "%s", why);
            else
                snprintf(entry, sizeof(entry), "backend %s is not usable here: %s", ops->name, why);
            int w = snprintf(e->backend_note + nl, sizeof(e->backend_note) - nl, "%s%s", nl ? "; then " : "auto: ",
                             entry);
            if (w > 0)
                nl = nl + (size_t)w < sizeof(e->backend_note) ? nl + (size_t)w : sizeof(e->backend_note) - 1;
        }
    }
    if (!started) {
        e->started = 0;
        if (autopick)
            snprintf(err, errlen, "no backend could start: %s", e->backend_note);
        sm_logger_stop(&e->log);
        cache_stop(e->cache);
        close_listeners(e);
        return -1;
    }
    if (nl)
        snprintf(e->backend_note + nl, sizeof(e->backend_note) - nl, "; using %s", e->ops->name);
    atomic_store(&e->accepting, true);
    e->running = true;
    return 0;
}

int sm_engine_ready(sm_engine *e)
{
    if (!e->running || !atomic_load(&e->accepting))
        return 0;
    for (int i = 0; i < e->settings.num_threads; i++)
        if (atomic_load(&e->workers[i].state) != SM_WORKER_SERVING)
            return 0;
    return 1;
}

int sm_engine_num_workers(sm_engine *e)
{
    return e->settings.num_threads;
}

int sm_engine_worker_state(sm_engine *e, int i, char *err, size_t errlen)
{
    if (i < 0 || i >= e->settings.num_threads)
        return -1;
    worker *w = &e->workers[i];
    pthread_mutex_lock(&e->wait_lock); /* worker_fail writes error before the state, under it */
    int state = atomic_load(&w->state);
    if (errlen > 0)
        snprintf(err, errlen, "%s", state == SM_WORKER_FAILED ? w->error : "");
    pthread_mutex_unlock(&e->wait_lock);
    return state;
}

void engine_request_shutdown(struct sm_engine *e)
{
    pthread_mutex_lock(&e->wait_lock);
    atomic_store(&e->shutdown_requested, true);
    pthread_cond_broadcast(&e->wait_cond);
    pthread_mutex_unlock(&e->wait_lock);
}

int sm_engine_wait(sm_engine *e, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->wait_lock);
    while (!atomic_load(&e->shutdown_requested)) {
        if (pthread_cond_timedwait(&e->wait_cond, &e->wait_lock, &ts) == ETIMEDOUT)
            break;
    }
    int r = atomic_load(&e->shutdown_requested) ? 1 : 0;
    pthread_mutex_unlock(&e->wait_lock);
    return r;
}

/* Monotonic milliseconds. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sm_engine_stop(sm_engine *e, int grace_ms)
{
    if (!e->running)
        return;
    int n = e->settings.num_threads;
    atomic_store(&e->accepting, false);
    for (int i = 0; i < n; i++)
        atomic_store(&e->workers[i].draining, true);
    /* Let in-flight requests finish: workers leave once their connections are idle. */
    int64_t deadline = now_ms() + grace_ms;
    while (now_ms() < deadline && atomic_load(&e->curr_conns) > 0) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < n; i++)
        atomic_store(&e->workers[i].stop, true);
    for (int i = 0; i < n; i++)
        pthread_join(e->workers[i].thread, NULL);
    for (int i = 0; i < n; i++)
        worker_destroy(&e->workers[i]);
    close_listeners(e);
    sm_logger_stop(&e->log); /* (every watcher's connection is closed) */
    cache_stop(e->cache);
    e->running = false;
}

void sm_engine_destroy(sm_engine *e)
{
    if (!e)
        return;
    if (e->running)
        sm_engine_stop(e, 0);
    for (int i = 0; i < e->settings.num_threads; i++) {
        worker *w = &e->workers[i];
        conn_env_destroy(&w->env);
        pthread_mutex_destroy(&w->conns_lock);
    }
    free(e->workers);
    sm_prefix_destroy(e->prefixes);
    sm_logger_destroy(&e->log);
    tls_engine_free(e);
    cache_destroy(e->cache);
    sm_auth_free(e->auth);
    pthread_mutex_destroy(&e->wait_lock);
    pthread_cond_destroy(&e->wait_cond);
    pthread_cond_destroy(&e->state_cond);
    free(e);
}

int sm_backend_built(int kind)
{
    switch (kind) {
    case SM_BACKEND_AUTO:
    case SM_BACKEND_EPOLL:
    case SM_BACKEND_STACKMAP: /* needs the module at run time, nothing at build time */
        return 1;
    case SM_BACKEND_URING:
#ifdef SM_HAVE_URING
        return 1;
#else
        return 0;
#endif
    default:
        return 0;
    }
}

int sm_engine_backend(sm_engine *e)
{
    if (e->ops == &backend_epoll)
        return SM_BACKEND_EPOLL;
    if (e->ops == &backend_uring)
        return SM_BACKEND_URING;
    if (e->ops == &backend_stackmap)
        return SM_BACKEND_STACKMAP;
    return e->settings.backend;
}

const char *sm_engine_backend_note(sm_engine *e)
{
    return e->backend_note;
}

int sm_engine_set_memlimit(sm_engine *e, uint64_t maxbytes, char *err, size_t errlen)
{
    if (cache_set_memlimit(e->cache, maxbytes, err, errlen) < 0)
        return -1;
    e->settings.maxbytes = maxbytes;
    return 0;
}

void sm_engine_set_verbosity(sm_engine *e, int level)
{
    atomic_store(&e->verbose, level);
}
