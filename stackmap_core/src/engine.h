/*
 * engine.h -- the public C API of stackmapd's data plane.
 *
 * This is the only header the cffi builder (stackmap_core/_build.py) reads:
 * everything between the SM_CDEF_BEGIN and SM_CDEF_END markers is fed to
 * cffi's cdef() verbatim, so it must stay plain C that pycparser accepts
 * (no macros, no includes, no inline functions).  The control plane (Python)
 * fills a struct sm_settings, creates an engine, starts it and then only
 * talks to it through these calls: it never reaches into C structs.
 *
 * Threads: sm_engine_start() spawns the worker threads (one event loop each)
 * and the cache maintainer.  Every other call is safe from any thread while
 * the workers run; cffi releases the GIL around each of them, so Python
 * never blocks the data path and the data path never calls into Python.
 */
#ifndef SM_ENGINE_H
#define SM_ENGINE_H

#include <stddef.h>
#include <stdint.h>

/* SM_CDEF_BEGIN */

/* Backends a worker loop can run over (--backend). */
enum sm_backend_kind {
    SM_BACKEND_AUTO = 0,     /* best available: uring, then epoll */
    SM_BACKEND_EPOLL = 1,    /* epoll_wait + read + writev */
    SM_BACKEND_URING = 2,    /* io_uring rings */
    SM_BACKEND_STACKMAP = 3  /* /dev/stackmap rings */
};

/*
 * A worker thread's life (sm_engine_worker_state).  A worker sets up its
 * ring and listeners on its own thread before the engine reports started;
 * one whose setup fails, or whose loop meets an error it cannot serve past
 * (its listener gone, its ring broken), is FAILED and says why.
 */
enum sm_worker_state {
    SM_WORKER_STARTING = 0,  /* thread created, ring not set up yet */
    SM_WORKER_SERVING = 1,   /* accepting and serving its connections */
    SM_WORKER_FAILED = 2,    /* setup failed or the loop died: serves nothing */
    SM_WORKER_STOPPED = 3    /* stopped by sm_engine_stop (or never started) */
};

/*
 * Every engine option, with memcached's meaning.  The options, their
 * defaults and limits are the rows of options.h (sm_option_info below):
 * sm_settings_init() fills the defaults, sm_settings_check() the limits;
 * the control plane overrides what the user gave.
 */
struct sm_settings {
    int port;                   /* TCP port (-p), 11211 */
    char listen[512];           /* comma-separated listen addresses (-l) */
    uint64_t maxbytes;          /* memory limit for items in bytes (-m) */
    int evict_to_free;          /* 0 when -M: a full cache refuses stores instead of evicting */
    int maxconns;               /* simultaneous connection limit (-c) */
    int num_threads;            /* worker threads (-t) */
    uint32_t item_size_max;     /* largest item in bytes (-I) */
    double factor;              /* slab chunk growth factor (-f) */
    uint32_t chunk_size;        /* key+value+flags space of the smallest chunk (-n) */
    uint32_t slab_page_size;    /* bytes per slab page: no option, see sm_settings_derive */
    uint32_t slab_chunk_max;    /* largest class of memcached's series (-o slab_chunk_max); 0: its default */
    int use_cas;                /* 0 when -C disables CAS */
    int verbose;                /* -v count: 0 quiet, 1 errors, 2 commands, 3 internals */
    int shutdown_enabled;       /* -A: allow the "shutdown" command */
    int flush_enabled;          /* 0 when -F disables the flush_all command */
    int backlog;                /* listen() backlog (-b) */
    int reqs_per_event;         /* max requests per connection per event (-R) */
    int hashpower_init;         /* initial hash table size as a power of two (-o hashpower) */
    int lru_segmented;          /* HOT/WARM/COLD segments per class (-o lru_segmented, default) */
    int lru_maintainer;         /* the LRU maintainer juggles segments (-o lru_maintainer, default) */
    int hot_lru_pct;            /* HOT's share of a class's bytes, % (-o hot_lru_pct) */
    int warm_lru_pct;           /* WARM's share, % (-o warm_lru_pct) */
    double hot_max_factor;      /* HOT idle limit as a multiple of COLD's age (-o hot_max_factor) */
    double warm_max_factor;     /* WARM idle limit as a multiple of COLD's age (-o warm_max_factor) */
    int temporary_ttl;          /* TTLs up to this go to the TEMP LRU, -1 none (-o temporary_ttl) */
    char eviction[16];          /* "lru" or "s3fifo" (-o eviction; cache/s3fifo.c) */
    int backend;                /* enum sm_backend_kind (--backend) */
    int uring_entries;          /* io_uring SQ size per worker (-o uring_entries) */
    int uring_bufs;             /* provided buffers per worker ring (-o uring_bufs) */
    int uring_buf_size;         /* bytes per provided buffer (-o uring_buf_size) */
    int uring_zc_threshold;     /* send zero-copy above this many bytes, 0 = never */
    int uring_sqpoll;           /* 1: kernel submission polling thread */
    int stackmap_zc_threshold;  /* stackmap: lend TX buffers for queues of this many bytes, 0 = never */
    int uring_batch_usec;       /* a loaded worker waits up to this long for a batch, 0 = never */
    int tcp_nodelay;            /* set TCP_NODELAY on accepted sockets */
    int idle_timeout;           /* close connections idle this many seconds, 0 = never */
    int slab_reassign;          /* 1: the slab page mover runs (-o slab_reassign) */
    int slab_automove;          /* automover level 0, 1 or 2 (-o slab_automove) */
    double slab_automove_ratio; /* automover age ratio (-o slab_automove_ratio) */
    int slab_automove_window;   /* automover window in seconds (-o slab_automove_window) */
    char unix_socket[108];      /* -s: unix socket path (sun_path's size); "" for TCP on -l/-p */
    int unix_mask;              /* -a: the unix socket file's mode bits (octal as given, 0700) */
    int ssl_enabled;            /* -Z: TCP listeners speak TLS (but "notls:" ones) */
    char ssl_chain_cert[1024];  /* -o ssl_chain_cert: certificate chain file (PEM) */
    char ssl_key[1024];         /* -o ssl_key: private key file, "" = in ssl_chain_cert */
    int ssl_keyformat;          /* -o ssl_keyformat: OpenSSL file type of the key, 1 PEM, 2 DER */
    int ssl_verify_mode;        /* -o ssl_verify_mode: 0 none, 1 request, 2 require, 3 once */
    char ssl_ciphers[1024];     /* -o ssl_ciphers: OpenSSL cipher list (TLS 1.2), "" = OpenSSL's */
    char ssl_ca_cert[1024];     /* -o ssl_ca_cert: CAs client certificates are checked against */
    int ssl_session_cache;      /* -o ssl_session_cache: server-side session cache */
    int ssl_kernel_tls;         /* -o ssl_kernel_tls: hand the records to the kernel (kTLS) when it can */
    int ssl_min_version;        /* -o ssl_min_version: 0 TLS 1.0 .. 3 TLS 1.3 */
    int ssl_wbuf_size;          /* -o ssl_wbuf_size: KiB of plaintext gathered into one SSL_write */
    char binding_protocol[16];  /* -B: "auto", "ascii" or "binary" (proto/binary.h) */
    char auth_file[4096];       /* -Y: memcached auth file, "" for none (proto/auth.h) */
    int dump_enabled;           /* 0 when -X disables lru_crawler metadump */
    int watch_enabled;          /* 0 when -W disables the watch command */
    int watcher_logbuf_size;    /* -o watcher_logbuf_size: each watcher's buffer, kilobytes */
    int worker_logbuf_size;     /* -o worker_logbuf_size: each thread's log ring, kilobytes */
    int lru_crawler;            /* start the LRU crawler thread (-o lru_crawler / no_lru_crawler) */
    int lru_crawler_sleep;      /* crawler pause per 1000 items, microseconds (-o lru_crawler_sleep) */
    int lru_crawler_tocrawl;    /* items per class per crawler pass, 0 all (-o lru_crawler_tocrawl) */
};

typedef struct sm_engine sm_engine;

/* Fill `s` with memcached 1.6's defaults (the option table's default column). */
void sm_settings_init(struct sm_settings *s);

/* Check `s` against the option table's limits and the rules that involve
 * several options; on error write a one-line reason into err and return -1. */
int sm_settings_check(const struct sm_settings *s, char *err, size_t errlen);

/* Set what follows from the options: slab pages of at least 1 MiB and at
 * least -I (an item never spans pages).  sm_engine_create calls it, and
 * then puts sm_slab_chunk_max in its copy's slab_chunk_max. */
void sm_settings_derive(struct sm_settings *s);
/* The slab_chunk_max in effect: the one given, else memcached 1.6's default,
 * half of its 1 MiB slab page.  (-o no_modern's whole page, unless -I is
 * over 1 MiB, comes from its expansion in stackmapd/settings.py, which sets
 * slab_chunk_max unless the list gives it.) */
uint32_t sm_slab_chunk_max(const struct sm_settings *s);

/* ---- the option table (options.h): every option a user can give ---- */

/* How an option's value is written (see options.h). */
enum sm_option_type {
    SM_OPT_INT = 0,       /* an integer */
    SM_OPT_MB = 1,        /* megabytes given, bytes stored */
    SM_OPT_SIZE = 2,      /* bytes, with k/m suffixes */
    SM_OPT_FLOAT = 3,     /* a number greater than lo */
    SM_OPT_BOOL = 4,      /* a switch: on/off, 1/0, yes/no, true/false */
    SM_OPT_NOT = 5,       /* a switch that clears its field (-C clears use_cas) */
    SM_OPT_COUNT = 6,     /* a repeated flag (-vvv) */
    SM_OPT_STR = 7,       /* text (a token, a path) */
    SM_OPT_LISTEN = 8,    /* comma-separated addresses */
    SM_OPT_BACKEND = 9,   /* a backend name (sm_backend_name) */
    SM_OPT_HOSTPORT = 10, /* HOST:PORT, or off */
    SM_OPT_LIST = 11,     /* -o's comma-separated key[=value] list */
    SM_OPT_OCTAL = 12     /* an integer written in octal (-a 0700) */
};

/* Where an option belongs. */
enum sm_option_scope {
    SM_OPT_ENGINE = 0,    /* a command-line flag and config key */
    SM_OPT_EXTENDED = 1,  /* an -o key ([extended] in the config file) */
    SM_OPT_CONTROL = 2,   /* the control plane's own flag and config key */
    SM_OPT_REFUSED = 3    /* an -o key memcached has and stackmapd refuses (help says why) */
};

/* One row of the option table. */
struct sm_option_info {
    const char *key;      /* --key (with '-' for '_'), TOML key, STACKMAP_<KEY>; -o key for EXTENDED */
    const char *field;    /* struct sm_settings field it sets, "" for none */
    int type;             /* enum sm_option_type */
    const char *def;      /* default as a user writes it, "" for none */
    double lo;            /* smallest value (FLOAT: the value must exceed it) */
    double hi;            /* largest value; infinity for no limit */
    int flag;             /* memcached's one-letter flag, 0 for none */
    const char *metavar;  /* placeholder for the value in --help, "" for a switch */
    int scope;            /* enum sm_option_scope */
    int live;             /* 1: a reload applies it to a running server */
    const char *help;     /* one line */
};

/* Rows in the option table, and row i (0 <= i < count) into out: 0, or -1 for a bad i. */
int sm_option_count(void);
int sm_option_info(int i, struct sm_option_info *out);

/* The name of enum sm_backend_kind `kind` ("auto", "epoll", ...), NULL past the last. */
const char *sm_backend_name(int kind);

/* Create an engine (cache allocated, nothing bound yet). NULL + err on failure. */
sm_engine *sm_engine_create(const struct sm_settings *s, char *err, size_t errlen);

/*
 * Raise the open-file limit for -c (as memcached does), bind listeners,
 * start the maintainer and the workers, and wait until every worker has set
 * up its ring.  With SM_BACKEND_AUTO a backend that cannot start on every
 * worker gives way to the next (stackmap, uring, epoll; the reason is in
 * sm_engine_backend_note); with an explicit backend any worker's failure
 * fails the start.  0, or -1 + a one-line err (what failed, the errno text,
 * the remedy) with every thread joined and every listener closed.
 */
int sm_engine_start(sm_engine *e, char *err, size_t errlen);

/*
 * Block up to timeout_ms.  Returns 1 if a client asked for "shutdown"
 * (only possible with -A), 0 otherwise.  The control plane calls this in a
 * loop so it can handle signals between calls.
 */
int sm_engine_wait(sm_engine *e, int timeout_ms);

/* Stop accepting, let in-flight requests finish (up to grace_ms), join threads. */
void sm_engine_stop(sm_engine *e, int grace_ms);

/* Free everything; the engine must be stopped (or never started). */
void sm_engine_destroy(sm_engine *e);

/* 1 when backend `kind` is compiled into this build (uring needs liburing at
 * build time, see stackmap_core/_build.py), else 0. */
int sm_backend_built(int kind);

/* The backend actually in use (resolves AUTO), and why AUTO fell back if it did. */
int sm_engine_backend(sm_engine *e);
const char *sm_engine_backend_note(sm_engine *e);

/*
 * Write a stats group ("" for general, "settings", "items", "slabs",
 * "conns", ...) as memcached's "STAT name value\r\n" lines followed by
 * "END\r\n" into buf.  Returns the length written, -1 for an unknown group,
 * or the negative needed size minus one (-(n+1)) when buf is too small.
 */
long sm_engine_stats_text(sm_engine *e, const char *group, char *buf, size_t buflen);

/* Change settings that may change live; 0 or -1 + err. */
int sm_engine_set_memlimit(sm_engine *e, uint64_t maxbytes, char *err, size_t errlen);
void sm_engine_set_verbosity(sm_engine *e, int level);

/* ---- the stats table (stats_table.h): what every "stats" name is ---- */

/* What a stat measures. */
enum sm_metric_kind {
    SM_METRIC_COUNTER = 0,  /* only grows (until "stats reset") */
    SM_METRIC_GAUGE = 1,    /* a current level */
    SM_METRIC_INFO = 2,     /* text, not a number (version, backend) */
    SM_METRIC_SETTING = 3   /* "stats settings": configuration, not a measurement */
};

/* One row of the stats table. */
struct sm_metric_info {
    const char *group;   /* "stats" group: "" general, "settings", "items", "slabs" */
    int per_class;       /* 1: printed once per slab class ("items:N:name", "N:name") */
    const char *name;    /* the name "stats" prints (per class: the part after the class) */
    int kind;            /* enum sm_metric_kind */
    const char *unit;    /* "" or the unit of the value ("seconds", "bytes", ...) */
    const char *metric;  /* Prometheus family it is exposed as ("" for none) */
    const char *labels;  /* "" or "k=v,k=v" within the family; INFO: the label carrying the text */
    const char *help;    /* one line */
    const char *option;  /* settings: the option (sm_option_info key) it shows, "" for none */
};

/* Rows in the stats table, and row i (0 <= i < count) into out: 0, or -1 for a bad i. */
int sm_metric_count(void);
int sm_metric_info(int i, struct sm_metric_info *out);

/* Number of this library's version string, e.g. "1.6.18-stackmapd". */
const char *sm_version(void);

/* ---- admin API (admin.c): the control plane's key-store and metrics calls ---- */

/* One item's metadata, as the admin API lists it (memcached's metadump fields). */
struct sm_item_info {
    char key[256];          /* the key's bytes, NUL-terminated */
    int nkey;               /* key length in bytes */
    int binary_key;         /* 1: stored from a base64 meta key (ms b) */
    uint32_t flags;         /* client flags */
    uint32_t value_len;     /* value length in bytes (without "\r\n") */
    int64_t exptime;        /* unix time of expiry, 0 = never */
    int64_t last_access;    /* unix time of the last access */
    uint64_t cas;           /* CAS unique */
    int slab_class;         /* slab class id */
    int fetched;            /* 1 when read at least once since stored */
};

/*
 * List live items whose key starts with prefix (nprefix 0: all), resuming at
 * *cursor (0 to begin).  Looks at a bounded number of slab chunks per call,
 * holding one item lock at a time, so it may return 0 items before the end.
 * Returns the number written to out (<= max); *cursor is 0 once the walk is
 * complete.
 */
int sm_admin_keys(sm_engine *e, const char *prefix, size_t nprefix, uint64_t *cursor,
                  struct sm_item_info *out, int max);

/* One key's metadata without touching its LRU position: 1 found, 0 not. */
int sm_admin_get_meta(sm_engine *e, const char *key, size_t nkey, struct sm_item_info *out);

/* Delete one key: 1 deleted, 0 not found. */
int sm_admin_delete(sm_engine *e, const char *key, size_t nkey);

/* One bounded step of deleting every key with a prefix; returns the number
 * deleted in this step.  *cursor as for sm_admin_keys. */
uint64_t sm_admin_delete_prefix(sm_engine *e, const char *prefix, size_t nprefix, uint64_t *cursor);

/* flush_all [delay]: everything stored up to now is invalid after delay seconds. */
void sm_admin_flush(sm_engine *e, int delay);

/* Set the memory limit and evict from the LRU tails until stored item bytes
 * fit under it.  Returns the items evicted, or -1 + err. */
long long sm_admin_set_memlimit(sm_engine *e, uint64_t maxbytes, char *err, size_t errlen);

/* Change the connection limit (-c) while running; 0 or -1 + err. */
int sm_engine_set_maxconns(sm_engine *e, int maxconns, char *err, size_t errlen);

/* 1 when started, accepting connections and every worker is SERVING (readiness). */
int sm_engine_ready(sm_engine *e);

/* Worker count (-t). */
int sm_engine_num_workers(sm_engine *e);

/*
 * Worker i's enum sm_worker_state; when FAILED, why (one line) into err.
 * -1 for an i out of range.
 */
int sm_engine_worker_state(sm_engine *e, int i, char *err, size_t errlen);

/*
 * Snapshot dump: copy live items as records (format in admin.c) into buf,
 * resuming at *cursor (0 to begin; 0 again once complete).  buf must hold at
 * least sm_admin_dump_min_buffer() bytes.  Returns the bytes written and
 * adds the records written to *nitems.
 */
long sm_admin_dump(sm_engine *e, uint64_t *cursor, char *buf, size_t buflen, uint64_t *nitems);
size_t sm_admin_dump_min_buffer(sm_engine *e);

/*
 * Snapshot restore, before sm_engine_start: parse whole records from buf
 * (dry_run 1: check only, store nothing) and store them with their flags,
 * CAS and expiry; expired ones are counted in *nexpired and skipped.
 * Both passes raise the CAS counter past every restored CAS (before start
 * only), so later uniques never repeat one; a record whose CAS is above
 * SM_CAS_SET_MAX (cache.h) is stored with a new CAS instead, above
 * all others once the check pass has seen the whole file.
 * Returns the bytes consumed (a trailing partial record is left), or -1 and
 * a reason in err for a malformed record or a failed store.
 */
long sm_admin_restore(sm_engine *e, const char *buf, size_t len, int dry_run, uint64_t *nitems,
                      uint64_t *nexpired, char *err, size_t errlen);

/* Latency histograms (latency.h): dimensions, command names, and the sums
 * over all workers: counts[cmd * nbuckets + bucket] and sums_ns[cmd]. */
void sm_latency_dims(int *ncmds, int *nbuckets, int *shift);
const char *sm_latency_name(int cmd);
void sm_engine_latency(sm_engine *e, uint64_t *counts, uint64_t *sums_ns);

/* SM_CDEF_END */

#endif
