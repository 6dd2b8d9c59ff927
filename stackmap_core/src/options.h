/*
 * options.h -- every stackmapd option, declared once.
 *
 * One row per option a user can give, on the command line, in the TOML
 * config file or in the environment: the engine's (struct sm_settings
 * fields), memcached's extended "-o key=value" ones, and the control
 * plane's own (HTTP listener, admin token, snapshots), which have no field
 * here but are checked and documented the same way.  From these rows:
 *  - sm_settings_init (engine.c) sets every field to its default, parsed
 *    from the default column, and sm_settings_check checks every field
 *    against its limits;
 *  - sm_option_count()/sm_option_info() (engine.c, engine.h) hand the rows
 *    to the control plane: stackmapd/settings.py builds its option table
 *    (argparse flags, TOML keys, STACKMAP_* environment names, parsers and
 *    ranges, what reloads live) from them, and stackmapd/docs.py writes
 *    the README's flag tables from that.
 *
 * Columns: X(key, field, type, default, lo, hi, flag, metavar, scope, live, help)
 *   key      long flag --key (with '-' for '_'), TOML key, environment
 *            variable STACKMAP_<KEY>; for scope EXTENDED the -o key, which
 *            is in the config file's [extended] table;
 *   field    FIELD(name) of struct sm_settings it sets, or NOFIELD;
 *   type     how the value is written and parsed (enum sm_option_type):
 *            INT, MB (megabytes given, bytes stored), SIZE (bytes, k/m
 *            suffixes), FLOAT (greater than lo, at most hi),
 *            BOOL, NOT (a switch that clears its field: -C), COUNT (-vvv),
 *            STR, LISTEN (address list), BACKEND (a backend name),
 *            HOSTPORT (HOST:PORT or off), LIST (-o's key[=value] list),
 *            OCTAL (an integer written in octal: -a 0700);
 *   default  the default as a user would write it ("" for none);
 *   lo, hi   inclusive limits of the value as given (INFINITY: none);
 *            lo == hi: the one value accepted, and help says why;
 *   flag     memcached's one-letter flag, or 0;
 *   metavar  the value's placeholder in --help ("" for a switch; "[N]":
 *            an -o number that may be given bare, meaning 1);
 *   scope    ENGINE (a flag and key), EXTENDED (an -o key), CONTROL (the
 *            control plane's own), REFUSED (an -o key memcached has that
 *            stackmapd refuses; help says why);
 *   live     1 when SIGHUP / stackmapctl reload applies it to a running
 *            server, 0 when it needs a restart;
 *   help     one line, for --help and the README.
 *
 * struct sm_settings (engine.h) keeps one field the table does not set:
 * slab_page_size, derived from -I by sm_settings_derive.  slab_chunk_max
 * 0 becomes memcached's default in the engine's copy (sm_slab_chunk_max).
 */
#ifndef SM_OPTIONS_H
#define SM_OPTIONS_H

#include <math.h>

#define SM_OPTIONS(X)                                                                                                  \
    X(port, FIELD(port), INT, "11211", 0, 65535, 'p', "NUM", ENGINE, 0, "TCP port to listen on")                       \
    X(unix_socket, FIELD(unix_socket), STR, "", 0, 0, 's', "FILE", ENGINE, 0,                                          \
      "UNIX socket to listen on; then no TCP listener (-l and -p unused), as in memcached")                             \
    X(unix_mask, FIELD(unix_mask), OCTAL, "0700", 0, 0777, 'a', "MASK", ENGINE, 0,                                     \
      "access mode of the -s socket file, in octal")                                                                   \
    X(listen, FIELD(listen), LISTEN, "127.0.0.1", 0, 0, 'l', "ADDR", ENGINE, 0,                                        \
      "interfaces to listen on, comma-separated (host, IPv4 or IPv6 address; HOST:PORT or [V6]:PORT "                  \
      "listen on their own port)")                                                                                     \
    X(memory_limit, FIELD(maxbytes), MB, "64", 1, 1099511627776.0, 'm', "MB", ENGINE, 1,                               \
      "item memory in megabytes")                                                                                      \
    X(disable_evictions, FIELD(evict_to_free), NOT, "off", 0, 1, 'M', "", ENGINE, 0,                                  \
      "when memory is full, answer SERVER_ERROR out of memory storing object instead of evicting")                   \
    X(conn_limit, FIELD(maxconns), INT, "1024", 1, 1048576, 'c', "NUM", ENGINE, 1, "max simultaneous connections")     \
    X(threads, FIELD(num_threads), INT, "4", 1, 256, 't', "NUM", ENGINE, 0,                                            \
      "number of worker threads (one event loop each)")                                                                \
    X(max_item_size, FIELD(item_size_max), SIZE, "1m", 1024, 1073741824, 'I', "SIZE", ENGINE, 0,                       \
      "largest item (key + value + overhead); k/m suffixes; at most half of -m")                                       \
    X(slab_growth_factor, FIELD(factor), FLOAT, "1.25", 1, INFINITY, 'f', "FACTOR", ENGINE, 0,                         \
      "chunk size growth factor between slab classes")                                                                 \
    X(slab_min_size, FIELD(chunk_size), INT, "48", 1, 1048576, 'n', "BYTES", ENGINE, 0,                                \
      "minimum space for key + value + flags in the smallest chunk")                                                   \
    X(disable_cas, FIELD(use_cas), NOT, "off", 0, 1, 'C', "", ENGINE, 0,                                               \
      "disable CAS unique ids (saves 8 bytes per item)")                                                               \
    X(verbose, FIELD(verbose), COUNT, "0", 0, 3, 'v', "", ENGINE, 1,                                                   \
      "verbosity: -v errors and warnings, -vv also commands, -vvv internals")                                          \
    X(disable_flush_all, FIELD(flush_enabled), NOT, "off", 0, 1, 'F', "", ENGINE, 0,                                  \
      "disable the flush_all command (it answers CLIENT_ERROR flush_all not allowed)")                                 \
    X(enable_shutdown, FIELD(shutdown_enabled), BOOL, "off", 0, 1, 'A', "", ENGINE, 0,                                 \
      "allow clients to stop the server with \"shutdown\"")                                                            \
    X(udp_port, NOFIELD, INT, "0", 0, 0, 'U', "0", ENGINE, 0,                                                          \
      "UDP is not supported: only 0 (UDP off, memcached's default) is accepted")                                       \
    X(enable_ssl, FIELD(ssl_enabled), BOOL, "off", 0, 1, 'Z', "", ENGINE, 0,                                           \
      "TLS on every TCP listener but those given as notls:ADDR (see -o ssl_*)")                                        \
    /* The binary protocol (-B) and authentication (-Y, with the binary protocol's SASL PLAIN): proto/binary.h,   */ \
    /* proto/auth.h. */                                                                                                \
    X(protocol, FIELD(binding_protocol), STR, "auto", 0, 0, 'B', "NAME", ENGINE, 0,                                    \
      "protocol: auto (each connection's first byte picks text or binary), ascii or binary")                          \
    X(auth_file, FIELD(auth_file), STR, "", 0, 0, 'Y', "FILE", ENGINE, 0,                                              \
      "memcached auth file (user:password lines): text clients log in with set, binary ones with SASL PLAIN")         \
    X(disable_dumping, FIELD(dump_enabled), NOT, "off", 0, 1, 'X', "", ENGINE, 0,                                       \
      "disable lru_crawler metadump (memcached's -X)")                                                                 \
    X(disable_watch, FIELD(watch_enabled), NOT, "off", 0, 1, 'W', "", ENGINE, 0,                                      \
      "disable the watch command (log streams): it answers CLIENT_ERROR watch commands not allowed")                 \
    X(listen_backlog, FIELD(backlog), INT, "1024", 1, 1048576, 'b', "NUM", ENGINE, 0, "listen() backlog")              \
    X(max_reqs_per_event, FIELD(reqs_per_event), INT, "20", 1, 1048576, 'R', "NUM", ENGINE, 0,                         \
      "requests a connection answers in one turn before the worker's other connections get theirs "                    \
      "(counted in conn_yields)")                                                                                      \
    X(extended, NOFIELD, LIST, "", 0, 0, 'o', "OPTS", ENGINE, 0,                                                       \
      "extended options, comma-separated key[=value] (listed below)")                                                  \
    X(backend, FIELD(backend), BACKEND, "auto", 0, 3, 0, "NAME", ENGINE, 0,                                            \
      "I/O backend: auto, epoll, uring or stackmap; auto tries stackmap, then uring, then epoll, and takes "           \
      "the first that starts on every worker (logging once why it passed over one that exists but failed)")            \
    X(daemon, NOFIELD, BOOL, "off", 0, 1, 'd', "", CONTROL, 0,                                                          \
      "run as a daemon: detach once the listeners are open and the workers serve (errors until then reach "          \
      "the terminal)")                                                                                                 \
    X(pidfile, NOFIELD, STR, "", 0, 0, 'P', "FILE", CONTROL, 0,                                                        \
      "write the server's pid to FILE once it serves (with -d the daemon's); removed at a clean exit")                 \
    X(user, NOFIELD, STR, "", 0, 0, 'u', "USER", CONTROL, 0,                                                           \
      "as root: become USER once the listeners are bound and /dev/stackmap is open (as root without -u, "             \
      "stackmapd stays root; memcached refuses)")                                                                      \
    X(enable_coredumps, NOFIELD, BOOL, "off", 0, 1, 'r', "", CONTROL, 0,                                               \
      "raise the core file size limit to the maximum")                                                                 \
    X(metrics_listen, NOFIELD, HOSTPORT, "127.0.0.1:9150", 0, 0, 0, "HOST:PORT", CONTROL, 1,                           \
      "HTTP address of /metrics, /healthz, /readyz and the admin API; off to disable")                                 \
    X(admin_token, NOFIELD, STR, "", 0, 0, 0, "TOKEN", CONTROL, 1,                                                     \
      "bearer token the admin API requires (required to use it beyond loopback)")                                      \
    X(admin_token_file, NOFIELD, STR, "", 0, 0, 0, "FILE", CONTROL, 1,                                                 \
      "read the admin bearer token from this file's first line")                                                       \
    X(snapshot, NOFIELD, STR, "", 0, 0, 0, "FILE", CONTROL, 1,                                                         \
      "warm restart file: loaded at start if present, saved on SIGTERM/SIGINT")                                        \
    X(restore, NOFIELD, STR, "", 0, 0, 0, "FILE", CONTROL, 0,                                                          \
      "load this snapshot at start (a bad file is refused: the server starts empty)")                                  \
    X(snapshot_dir, NOFIELD, STR, "", 0, 0, 0, "DIR", CONTROL, 1,                                                      \
      "the only directory the admin API may write snapshots to (default: --snapshot's directory)")                     \
    X(snapshot_max_age, NOFIELD, INT, "", 1, INFINITY, 0, "SECONDS", CONTROL, 0,                                       \
      "refuse to load a snapshot created more than this many seconds ago (start empty)")                               \
    X(hashpower, FIELD(hashpower_init), INT, "16", 12, 32, 0, "N", EXTENDED, 0,                                        \
      "initial hash table size, 2^N buckets")                                                                          \
    X(lru_segmented, FIELD(lru_segmented), BOOL, "1", 0, 1, 0, "", EXTENDED, 0,                                        \
      "segmented LRU: HOT, WARM and COLD lists per slab class, as memcached 1.6 (no_lru_segmented: one plain "         \
      "LRU per class, memcached's \"lru mode flat\")")                                                                 \
    X(lru_maintainer, FIELD(lru_maintainer), BOOL, "1", 0, 1, 0, "", EXTENDED, 0,                                      \
      "the LRU maintainer moves items between the segments (no_lru_maintainer: a plain LRU, and \"lru mode\" "        \
      "and \"lru temp_ttl\" answer ERROR, as in memcached)")                                                           \
    X(modern, NOFIELD, BOOL, "1", 0, 1, 0, "", EXTENDED, 0,                                                            \
      "memcached 1.6's defaults (no_modern, where it appears in the -o list: memcached's older ones, "               \
      "no LRU maintainer (a plain LRU), no LRU crawler, no slab page mover; a later key overrides it)")             \
    X(hot_lru_pct, FIELD(hot_lru_pct), INT, "20", 1, 79, 0, "N", EXTENDED, 0,                                          \
      "% of a class's HOT+WARM+COLD bytes HOT may hold before its inactive tail goes to COLD")                         \
    X(warm_lru_pct, FIELD(warm_lru_pct), INT, "40", 1, 79, 0, "N", EXTENDED, 0,                                        \
      "% WARM may hold (hot_lru_pct + warm_lru_pct at most 80)")                                                       \
    X(hot_max_factor, FIELD(hot_max_factor), FLOAT, "0.2", 0, INFINITY, 0, "F", EXTENDED, 0,                           \
      "HOT items idle longer than COLD's tail age times this go to COLD")                                              \
    X(warm_max_factor, FIELD(warm_max_factor), FLOAT, "2.0", 0, INFINITY, 0, "F", EXTENDED, 0,                         \
      "WARM items idle longer than COLD's tail age times this go to COLD")                                             \
    X(temporary_ttl, FIELD(temporary_ttl), INT, "-1", -1, 2147483647, 0, "N", EXTENDED, 0,                             \
      "items with a TTL of at most N seconds go to a TEMP LRU, never evicted, only expired; -1 none")                  \
    X(eviction, FIELD(eviction), STR, "lru", 0, 0, 0, "NAME", EXTENDED, 0,                                             \
      "eviction policy: lru (memcached's LRU, segmented or flat) or s3fifo (small, main and ghost FIFO queues "        \
      "per slab class, a hit only counts; \"lru tune\" and \"lru mode\" then answer ERROR)")                          \
    X(lru_crawler, FIELD(lru_crawler), BOOL, "1", 0, 1, 0, "", EXTENDED, 0,                                            \
      "run the LRU crawler thread, which frees expired items in the background (no_lru_crawler: off; "                 \
      "lru_crawler enable/disable change it live)")                                                                    \
    X(lru_crawler_sleep, FIELD(lru_crawler_sleep), INT, "100", 0, 1000000, 0, "N", EXTENDED, 0,                        \
      "microseconds the LRU crawler pauses every 1000 items it looks at")                                              \
    X(lru_crawler_tocrawl, FIELD(lru_crawler_tocrawl), INT, "0", 0, 2147483647, 0, "N", EXTENDED, 0,                   \
      "items the LRU crawler looks at per slab class per pass; 0 all")                                                 \
    X(watcher_logbuf_size, FIELD(watcher_logbuf_size), INT, "256", 1, 1048576, 0, "KB", EXTENDED, 0,               \
      "kilobytes of each watcher's log buffer; a watcher that reads slower skips lines (log_watcher_skipped)")         \
    X(worker_logbuf_size, FIELD(worker_logbuf_size), INT, "64", 1, 1048576, 0, "KB", EXTENDED, 0,                   \
      "kilobytes of each worker thread's log ring, which the logger thread drains (full: log_worker_dropped)")         \
    X(idle_timeout, FIELD(idle_timeout), INT, "0", 0, 2147483647, 0, "N", EXTENDED, 0,                                 \
      "close client connections idle this many seconds; 0 never")                                                      \
    X(tcp_nodelay, FIELD(tcp_nodelay), BOOL, "1", 0, 1, 0, "", EXTENDED, 0, "set TCP_NODELAY on accepted sockets")     \
    X(uring_entries, FIELD(uring_entries), INT, "256", 1, 32768, 0, "N", EXTENDED, 0,                                  \
      "io_uring submission queue entries per worker")                                                                  \
    X(uring_bufs, FIELD(uring_bufs), INT, "1024", 1, 32768, 0, "N", EXTENDED, 0,                                       \
      "provided receive buffers per worker ring (at most; fewer are published while fewer are needed)")                \
    X(uring_buf_size, FIELD(uring_buf_size), SIZE, "4096", 512, 16777216, 0, "SIZE", EXTENDED, 0,                      \
      "bytes per provided receive buffer (k/m suffixes)")                                                              \
    X(uring_zc_threshold, FIELD(uring_zc_threshold), SIZE, "0", 0, 2147483647, 0, "SIZE", EXTENDED, 0,                 \
      "send zero-copy at and above this many bytes; 0 never (k/m suffixes)")                                           \
    X(stackmap_zc_threshold, FIELD(stackmap_zc_threshold), SIZE, "0", 0, 2147483647, 0, "SIZE", EXTENDED, 0,           \
      "stackmap backend: lend TX buffers to the kernel (zero-copy) for queues of at least this many bytes; "          \
      "0 never (k/m suffixes)")                                                                                      \
    X(uring_sqpoll, FIELD(uring_sqpoll), BOOL, "0", 0, 1, 0, "", EXTENDED, 0,                                          \
      "kernel submission-queue polling thread")                                                                        \
    X(uring_batch_usec, FIELD(uring_batch_usec), INT, "2000", 0, 100000, 0, "N", EXTENDED, 0,                          \
      "a loaded worker whose CPU never idles waits up to this many microseconds for a batch of requests; "             \
      "0 never")                                                                                                       \
    X(slab_reassign, FIELD(slab_reassign), BOOL, "1", 0, 1, 0, "", EXTENDED, 0,                                        \
      "the slab page mover: slabs reassign, the automover and memory-limit shrinking (no_slab_reassign: off)")         \
    X(slab_automove, FIELD(slab_automove), INT, "1", 0, 2, 0, "[N]", EXTENDED, 0,                                      \
      "slab page automover: 0 off, 1 age balancing, 2 a page on every eviction (bare: 1); slabs automove changes it")  \
    X(slab_automove_ratio, FIELD(slab_automove_ratio), FLOAT, "0.8", 0, 1, 0, "R", EXTENDED, 0,                        \
      "automove 1 moves a page to a class whose LRU tail is younger than R times the oldest class's")                  \
    X(slab_automove_window, FIELD(slab_automove_window), INT, "30", 3, 3600, 0, "N", EXTENDED, 0,                      \
      "seconds of history (one sample a second) the automover judges classes by")                                     \
    X(ssl_chain_cert, FIELD(ssl_chain_cert), STR, "", 0, 0, 0, "FILE", EXTENDED, 0,                                    \
      "TLS certificate chain file in PEM format (needed by -Z)")                                                      \
    X(ssl_key, FIELD(ssl_key), STR, "", 0, 0, 0, "FILE", EXTENDED, 0,                                                  \
      "TLS private key file, if not part of ssl_chain_cert")                                                          \
    X(ssl_keyformat, FIELD(ssl_keyformat), INT, "1", 1, 2, 0, "N", EXTENDED, 0,                                        \
      "TLS private key format: 1 PEM, 2 DER (OpenSSL's SSL_FILETYPE_* numbers, as memcached takes them)")              \
    X(ssl_verify_mode, FIELD(ssl_verify_mode), INT, "0", 0, 3, 0, "N", EXTENDED, 0,                                    \
      "TLS client certificates: 0 not asked, 1 requested, 2 required, 3 required once")                                \
    X(ssl_ciphers, FIELD(ssl_ciphers), STR, "", 0, 0, 0, "LIST", EXTENDED, 0,                                          \
      "OpenSSL cipher list for TLS 1.2 and older (default: OpenSSL's)")                                               \
    X(ssl_ca_cert, FIELD(ssl_ca_cert), STR, "", 0, 0, 0, "FILE", EXTENDED, 0,                                          \
      "PEM file of the CAs whose client certificates are accepted")                                                   \
    X(ssl_session_cache, FIELD(ssl_session_cache), BOOL, "0", 0, 1, 0, "", EXTENDED, 0,                                \
      "server-side TLS session cache, for session resumption (counted in ssl_new_sessions)")                           \
    X(ssl_kernel_tls, FIELD(ssl_kernel_tls), BOOL, "0", 0, 1, 0, "", EXTENDED, 0,                                      \
      "hand TLS 1.3 records to the kernel (kTLS) when it can take them, so TLS connections keep the ring "            \
      "data path; off by default, as memcached's")                                                                    \
    X(ssl_min_version, FIELD(ssl_min_version), INT, "2", 0, 3, 0, "N", EXTENDED, 0,                                    \
      "oldest TLS version accepted: 0 TLS 1.0, 1 TLS 1.1, 2 TLS 1.2, 3 TLS 1.3")                                       \
    X(ssl_wbuf_size, FIELD(ssl_wbuf_size), INT, "16", 1, 1024, 0, "KB", EXTENDED, 0,                                   \
      "TLS in user space: KiB of queued replies gathered into one TLS write (its records carry at most "               \
      "16 KiB each, so 1-15 also caps the record size)")                                                               \
    X(slab_chunk_max, FIELD(slab_chunk_max), SIZE, "0", 0, 1048576, 0, "SIZE", EXTENDED, 0,                         \
      "size of the largest class of memcached's slab series (k/m suffixes; must divide -I and 1m); bigger items "  \
      "are chained across chunks of it; 0: memcached's default, 512k (1m with no_modern)")

#endif
