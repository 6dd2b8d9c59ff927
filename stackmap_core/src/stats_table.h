/*
 * stats_table.h -- every statistic the "stats" command prints, declared once.
 *
 * Each row names one stat and says what it is: its kind (a counter that
 * only grows, a gauge that goes up and down, or info: a text value), its
 * unit, the Prometheus series /metrics exposes it as, and a one-line help.
 * Everything else is produced from these rows:
 *  - the general "stats" group (stats_groups.c) prints SM_STATS_GENERAL in
 *    row order, which is memcached 1.6.18's order, taking each value from
 *    the row's value column; it holds memcached's names only, and
 *    "stats backend" (SM_STATS_BACKEND) stackmapd's own;
 *  - the per-class groups ("stats items", "stats slabs") are printed by the
 *    cache (cache/cache_stats.c), and their names are declared here;
 *  - sm_metric_count()/sm_metric_info() (stats.c, engine.h) hand the rows
 *    to the control plane, whose Prometheus collector (stackmapd/metrics.py)
 *    and README generator (stackmapd/docs.py) read nothing else.
 *
 * Columns: X(name, kind, unit, metric, labels, help[, value]) (the backend
 * group has the general group's); the settings
 * group has its own (below).
 *   name    the stat's name as "stats" prints it (per class: after "items:N:"
 *           or "N:");
 *   kind    COUNTER, GAUGE or INFO (enum sm_metric_kind);
 *   unit    "" or what one unit of the value is ("seconds", "bytes", ...);
 *   metric  the Prometheus family; memcached's stats keep memcached_exporter's
 *           names so dashboards work, ours are stackmap_*;
 *   labels  "" or fixed labels "k=v,k=v" that tell the rows of one family
 *           apart; for INFO, the one label that carries the text value;
 *           per-class rows also get slab="<class id>";
 *   help    one line, shown by /metrics (# HELP) and the README;
 *   value   (general and backend groups) how stats_groups.c computes it: V_U64,
 *           V_INT, V_F2, V_TV, V_STR of an expression over stats_general's
 *           locals, V_CACHE for a value the cache emits (captured, then
 *           placed here), V_IF(cond, v) for a stat memcached prints only
 *           sometimes.
 *
 * Adding a stat is adding a row: "stats", /metrics and the README follow,
 * and tests/test_metrics_table.py fails if a printed stat has no row.
 */
#ifndef SM_STATS_TABLE_H
#define SM_STATS_TABLE_H

/* The general group ("stats"), in the order it is printed. */
#define SM_STATS_GENERAL(X)                                                                                            \
    X(pid, GAUGE, "", "stackmap_pid", "", "Process id of the server.", V_INT(getpid()))                                \
    X(uptime, COUNTER, "seconds", "memcached_uptime_seconds", "", "Number of seconds since the server started.",       \
      V_INT((long long)now - started))                                                                                 \
    X(time, GAUGE, "seconds", "memcached_time_seconds", "", "Current UNIX time according to the server.",              \
      V_INT((long long)now))                                                                                           \
    X(version, INFO, "", "memcached_version", "version", "The version of this memcached server.",                      \
      V_STR(sm_version()))                                                                                             \
    X(libevent, INFO, "", "", "",                                                                                      \
      "The I/O backend in use (memcached prints libevent's version here); exposed as stackmap_backend_info.",          \
      V_STR(backend_name(e)))                                                                                          \
    X(pointer_size, GAUGE, "bits", "memcached_pointer_size_bits", "", "Size of a pointer on this host.",               \
      V_INT(8 * (int)sizeof(void *)))                                                                                  \
    X(rusage_user, COUNTER, "seconds", "memcached_process_user_cpu_seconds_total", "",                                 \
      "Accumulated user time for this process.", V_TV(ru.ru_utime))                                                    \
    X(rusage_system, COUNTER, "seconds", "memcached_process_system_cpu_seconds_total", "",                             \
      "Accumulated system time for this process.", V_TV(ru.ru_stime))                                                  \
    X(max_connections, GAUGE, "", "memcached_max_connections", "", "Maximum number of clients allowed (-c).",          \
      V_INT(__atomic_load_n(&e->settings.maxconns, __ATOMIC_RELAXED)))                                                 \
    X(curr_connections, GAUGE, "", "memcached_current_connections", "", "Current number of open connections.",         \
      V_INT(atomic_load(&e->curr_conns)))                                                                              \
    X(total_connections, COUNTER, "", "memcached_connections_total", "",                                               \
      "Total number of connections opened since the server started running.", V_U64(total_conns))                      \
    X(rejected_connections, COUNTER, "", "memcached_connections_rejected_total", "",                                   \
      "Total number of connections rejected due to hitting the -c limit in maxconns_fast mode.",                       \
      V_U64(rejected_conns))                                                                                           \
    X(connection_structures, GAUGE, "", "memcached_connection_structures", "",                                         \
      "Connection structures in use: clients plus every worker's listening sockets.",                                  \
      V_INT(atomic_load(&e->curr_conns) + listener_count(e)))                                                          \
    X(response_obj_oom, COUNTER, "", "memcached_response_obj_oom_total", "",                                           \
      "Responses that could not be queued for want of memory.", V_U64(s.response_obj_oom))                             \
    X(response_obj_count, GAUGE, "", "memcached_response_obj_count", "",                                              \
      "Output scratch chunks (16 KiB) holding queued responses now; memcached counts its response objects.",           \
      V_U64(s.response_obj_count))                                                                                     \
    X(response_obj_bytes, GAUGE, "bytes", "memcached_response_obj_bytes", "",                                          \
      "Bytes of the output scratch chunks allocated, queued or kept free for reuse.", V_U64(s.response_obj_bytes))    \
    X(read_buf_count, GAUGE, "", "memcached_read_buf_count", "",                                                      \
      "Blocks of the workers' buffer pools allocated now (read carry-over, output arrays), in use or free.",           \
      V_U64(s.read_buf_count))                                                                                         \
    X(read_buf_bytes, GAUGE, "bytes", "memcached_read_buf_bytes", "",                                                  \
      "Bytes of the workers' buffer pool blocks allocated now, in use or free.", V_U64(s.read_buf_bytes))              \
    X(read_buf_bytes_free, GAUGE, "bytes", "memcached_read_buf_free_bytes", "",                                        \
      "Bytes of the workers' buffer pool blocks on the free lists, kept for reuse.", V_U64(s.read_buf_bytes_free))     \
    X(read_buf_oom, COUNTER, "", "memcached_read_buf_oom_total", "",                                                   \
      "Reads that could not get a buffer for want of memory.", V_U64(s.read_buf_oom))                                  \
    X(reserved_fds, GAUGE, "", "memcached_reserved_fds", "",                                                           \
      "Descriptors the server keeps for itself: listeners and one event fd per worker.",                               \
      V_INT(listener_count(e) + e->settings.num_threads))                                                              \
    X(cmd_get, COUNTER, "", "memcached_cmd_get_total", "", "Keys requested by get commands (hits and misses).",        \
      V_U64(s.get_cmds))                                                                                               \
    X(cmd_set, COUNTER, "", "memcached_cmd_set_total", "", "Storage commands (set, add, cas, ...) served.",            \
      V_U64(s.slab_set_cmds))                                                                                          \
    X(cmd_flush, COUNTER, "", "memcached_commands_total", "command=flush,status=hit", "flush_all commands.",           \
      V_U64(s.flush_cmds))                                                                                             \
    X(cmd_touch, COUNTER, "", "memcached_cmd_touch_total", "", "Keys touched (hits and misses).",                      \
      V_U64(s.touch_cmds))                                                                                             \
    X(cmd_meta, COUNTER, "", "memcached_cmd_meta_total", "", "Meta protocol commands served.", V_U64(s.meta_cmds))     \
    X(get_hits, COUNTER, "", "memcached_commands_total", "command=get,status=hit", "Keys found by get.",               \
      V_U64(s.slab_get_hits))                                                                                          \
    X(get_misses, COUNTER, "", "memcached_commands_total", "command=get,status=miss", "Keys get did not find.",        \
      V_U64(s.get_misses))                                                                                             \
    X(get_expired, COUNTER, "", "memcached_get_expired_total", "", "Keys get found expired.",                          \
      V_U64(s.get_expired))                                                                                            \
    X(get_flushed, COUNTER, "", "memcached_get_flushed_total", "", "Keys get found invalidated by flush_all.",         \
      V_U64(s.get_flushed))                                                                                            \
    X(delete_misses, COUNTER, "", "memcached_commands_total", "command=delete,status=miss",                            \
      "Deletes of keys that were not there.", V_U64(s.delete_misses))                                                  \
    X(delete_hits, COUNTER, "", "memcached_commands_total", "command=delete,status=hit", "Keys deleted.",              \
      V_U64(s.slab_delete_hits))                                                                                       \
    X(incr_misses, COUNTER, "", "memcached_commands_total", "command=incr,status=miss",                                \
      "incr of keys that were not there.", V_U64(s.incr_misses))                                                       \
    X(incr_hits, COUNTER, "", "memcached_commands_total", "command=incr,status=hit", "Keys incremented.",              \
      V_U64(s.slab_incr_hits))                                                                                         \
    X(decr_misses, COUNTER, "", "memcached_commands_total", "command=decr,status=miss",                                \
      "decr of keys that were not there.", V_U64(s.decr_misses))                                                       \
    X(decr_hits, COUNTER, "", "memcached_commands_total", "command=decr,status=hit", "Keys decremented.",              \
      V_U64(s.slab_decr_hits))                                                                                         \
    X(cas_misses, COUNTER, "", "memcached_commands_total", "command=cas,status=miss",                                  \
      "cas of keys that were not there.", V_U64(s.cas_misses))                                                         \
    X(cas_hits, COUNTER, "", "memcached_commands_total", "command=cas,status=hit", "cas that stored.",                 \
      V_U64(s.slab_cas_hits))                                                                                          \
    X(cas_badval, COUNTER, "", "memcached_commands_total", "command=cas,status=badval",                                \
      "cas refused because the key had changed.", V_U64(s.slab_cas_badval))                                            \
    X(touch_hits, COUNTER, "", "memcached_commands_total", "command=touch,status=hit", "Keys touched.",                \
      V_U64(s.slab_touch_hits))                                                                                        \
    X(touch_misses, COUNTER, "", "memcached_commands_total", "command=touch,status=miss",                              \
      "touch of keys that were not there.", V_U64(s.touch_misses))                                                     \
    X(store_too_large, COUNTER, "", "memcached_item_too_large_total", "",                                              \
      "The number of times an item exceeded the max-item-size when being stored.", V_U64(s.store_too_large))           \
    X(store_no_memory, COUNTER, "", "memcached_item_no_memory_total", "",                                              \
      "The number of times an item could not be stored due to no more memory.", V_U64(s.store_no_memory))              \
    X(auth_cmds, COUNTER, "", "memcached_auth_cmds_total", "", "Authentication attempts (-Y: text and SASL).",           \
      V_U64(s.auth_cmds))                                                                                              \
    X(auth_errors, COUNTER, "", "memcached_auth_errors_total", "", "Failed authentication attempts.",                      \
      V_U64(s.auth_errors))                                                                                            \
    X(idle_kicks, COUNTER, "", "memcached_idle_kicks_total", "",                                                       \
      "Connections closed for idling past -o idle_timeout (printed only when it is set).",                             \
      V_IF(e->settings.idle_timeout, V_U64(s.idle_kicks)))                                                             \
    X(bytes_read, COUNTER, "bytes", "memcached_read_bytes_total", "",                                                  \
      "Total number of bytes read by this server from network.", V_U64(s.bytes_read))                                  \
    X(bytes_written, COUNTER, "bytes", "memcached_written_bytes_total", "",                                            \
      "Total number of bytes sent by this server to network.", V_U64(s.bytes_written))                                 \
    X(limit_maxbytes, GAUGE, "bytes", "memcached_limit_bytes", "",                                                     \
      "Number of bytes this server is allowed to use for storage.", V_U64(cache_memlimit(e->cache)))                   \
    X(accepting_conns, GAUGE, "", "memcached_accepting_connections", "",                                               \
      "The server is currently accepting new connections.", V_INT(atomic_load(&e->accepting) ? 1 : 0))                 \
    X(listen_disabled_num, COUNTER, "", "memcached_connections_listener_disabled_total", "",                           \
      "Times accepting paused because the process was out of descriptors.", V_U64(s.listen_disabled_num))              \
    X(time_in_listen_disabled_us, COUNTER, "microseconds",                                                             \
      "memcached_time_in_listen_disabled_microseconds_total", "",                                                      \
      "Time accepting spent paused for want of descriptors.", V_U64(s.listen_disabled_ns / 1000))                      \
    X(threads, GAUGE, "", "memcached_threads", "", "Worker threads (-t).", V_INT(e->settings.num_threads))             \
    X(conn_yields, COUNTER, "", "memcached_connections_yielded_total", "",                                             \
      "Times a connection with more requests buffered ended its turn after -R of them, so the worker's "               \
      "other connections got theirs (memcached's count).",                                                             \
      V_U64(s.conn_yields))                                                                                            \
    X(hash_power_level, GAUGE, "", "memcached_hash_power_level", "",                                                   \
      "The hash table holds 2^this buckets.", V_CACHE)                                                                 \
    X(hash_bytes, GAUGE, "bytes", "memcached_hash_bytes", "", "Memory the hash table uses.", V_CACHE)                  \
    X(hash_is_expanding, GAUGE, "", "memcached_hash_is_expanding", "", "1 while the hash table grows.",                \
      V_CACHE)                                                                                                         \
    X(slab_reassign_rescues, COUNTER, "", "memcached_slab_reassign_rescues_total", "",                                 \
      "Items the slab page mover copied out of a page it emptied.", V_CACHE)                                      \
    X(slab_reassign_chunk_rescues, COUNTER, "", "memcached_slab_reassign_chunk_rescues_total", "",                     \
      "Chunked items rescued by the slab page mover (always 0: items are never chunked).", V_CACHE)                                             \
    X(slab_reassign_evictions_nomem, COUNTER, "", "memcached_slab_reassign_evictions_nomem_total", "",                 \
      "Items the slab page mover evicted for want of a free chunk.", V_CACHE)                                     \
    X(slab_reassign_inline_reclaim, COUNTER, "", "memcached_slab_reassign_inline_reclaim_total", "",                   \
      "Expired or flushed items the slab page mover freed while emptying a page.", V_CACHE)                                               \
    X(slab_reassign_busy_items, COUNTER, "", "memcached_slab_reassign_busy_items_total", "",                           \
      "Times the slab page mover found an item in use and came back to it.", V_CACHE)                                                       \
    X(slab_reassign_busy_deletes, COUNTER, "", "memcached_slab_reassign_busy_deletes_total", "",                       \
      "Items the slab page mover unlinked after they stayed in use too long.", V_CACHE)                                                     \
    X(slab_reassign_running, GAUGE, "", "memcached_slab_reassign_running", "",                                         \
      "1 while the slab page mover is moving a page.", V_CACHE)                                                         \
    X(slabs_moved, COUNTER, "", "memcached_slabs_moved_total", "",                                                     \
      "Slab pages moved to another class or the global pool.", V_CACHE)                                                \
    X(lru_crawler_running, GAUGE, "", "memcached_lru_crawler_running", "",                                             \
      "1 while the LRU crawler (a crawl or a metadump) runs; printed while the crawler is enabled.", V_CACHE)                                              \
    X(lru_crawler_starts, COUNTER, "", "memcached_lru_crawler_starts_total", "",                                       \
      "LRU crawler runs started: crawls asked for, background passes and metadumps.", V_CACHE)                                                                 \
    X(lru_maintainer_juggles, COUNTER, "", "memcached_lru_maintainer_juggles_total", "",                               \
      "Rounds of the LRU maintainer.", V_CACHE)                                                               \
    X(malloc_fails, COUNTER, "", "memcached_malloc_fails_total", "", "Memory allocations that failed.",                \
      V_CACHE)                                                                                                         \
    X(log_worker_dropped, COUNTER, "", "memcached_log_worker_dropped_total", "",                                       \
      "Log lines (watch) a thread's full log ring dropped before the logger thread read them.",                        \
      V_U64(lgs.worker_dropped))                                                                                       \
    X(log_worker_written, COUNTER, "", "memcached_log_worker_written_total", "",                                       \
      "Log lines (watch) written to the threads' log rings.", V_U64(lgs.worker_written))                              \
    X(log_watcher_skipped, COUNTER, "", "memcached_log_watcher_skipped_total", "",                                     \
      "Log lines a watcher missed because its buffer was full (it reads too slowly).", V_U64(lgs.watcher_skipped))     \
    X(log_watcher_sent, COUNTER, "", "memcached_log_watcher_sent_total", "",                                           \
      "Log lines put in watchers' buffers.", V_U64(lgs.watcher_sent))                                                  \
    X(log_watchers, GAUGE, "", "memcached_log_watchers", "", "Connections watching log streams (watch).",              \
      V_U64(lgs.watchers))                                                                                             \
    X(ssl_new_sessions, COUNTER, "", "memcached_ssl_new_sessions_total", "",                                           \
      "TLS sessions cached for resumption (-o ssl_session_cache).",                                                    \
      V_IF(e->settings.ssl_enabled && e->settings.ssl_session_cache, V_U64(s.ssl_new_sessions)))                       \
    X(ssl_handshake_errors, COUNTER, "", "memcached_ssl_handshake_errors_total", "",                                   \
      "TLS handshakes that failed (garbage, a plaintext client, a refused certificate).",                              \
      V_IF(e->settings.ssl_enabled, V_U64(s.ssl_handshake_errors)))                                                    \
    X(time_since_server_cert_refresh, GAUGE, "seconds", "memcached_time_since_server_cert_refresh_seconds", "",        \
      "Seconds since the TLS certificates were loaded (start or refresh_certs).",                                      \
      V_IF(e->settings.ssl_enabled, V_INT(tls_cert_age(e))))                                                           \
    X(unexpected_napi_ids, COUNTER, "", "memcached_unexpected_napi_ids_total", "",                                   \
      "Always 0: memcached counts NAPI ids its -N thread selection did not expect; connections are not placed "        \
      "by NAPI id here.", V_STR("0"))                                                                                  \
    X(round_robin_fallback, COUNTER, "", "memcached_round_robin_fallback_total", "",                                 \
      "Always 0: memcached counts connections its -N thread selection placed round-robin for want of a NAPI id; "     \
      "there is no such selection here.", V_STR("0"))                                                                  \
    X(bytes, GAUGE, "bytes", "memcached_current_bytes", "", "Current number of bytes used to store items.",            \
      V_CACHE)                                                                                                         \
    X(curr_items, GAUGE, "", "memcached_current_items", "", "Current number of items stored by this instance.",        \
      V_CACHE)                                                                                                         \
    X(total_items, COUNTER, "", "memcached_items_total", "",                                                           \
      "Total number of items stored during the life of this instance.", V_CACHE)                                       \
    X(slab_global_page_pool, GAUGE, "", "memcached_slab_global_page_pool", "",                                         \
      "Slab pages in the global pool, free for any class.", V_CACHE)                               \
    X(expired_unfetched, COUNTER, "", "memcached_expired_unfetched_total", "",                                         \
      "Items that expired without ever being fetched.", V_CACHE)                                                       \
    X(evicted_unfetched, COUNTER, "", "memcached_evicted_unfetched_total", "",                                         \
      "Items evicted without ever being fetched.", V_CACHE)                                                            \
    X(evicted_active, COUNTER, "", "memcached_evicted_active_total", "",                                               \
      "Items evicted although fetched recently.", V_CACHE)                                                             \
    X(evictions, COUNTER, "", "memcached_items_evicted_total", "",                                                     \
      "Total number of valid items removed from cache to free memory for new items.", V_CACHE)                         \
    X(reclaimed, COUNTER, "", "memcached_items_reclaimed_total", "",                                                   \
      "Total number of times an entry was stored using memory from an expired entry.", V_CACHE)                        \
    X(crawler_reclaimed, COUNTER, "", "memcached_lru_crawler_reclaimed_total", "",                                     \
      "Expired and flushed items freed by the LRU crawler.", V_CACHE)                                                           \
    X(crawler_items_checked, COUNTER, "", "memcached_lru_crawler_items_checked_total", "",                             \
      "Items the LRU crawler checked.", V_CACHE)                                                            \
    X(lrutail_reflocked, COUNTER, "", "memcached_lrutail_reflocked_total", "",                                         \
      "LRU tail items skipped because another thread held them.", V_CACHE)                                             \
    X(moves_to_cold, COUNTER, "", "memcached_moves_to_cold_total", "",                                                 \
      "Items moved from HOT or WARM into COLD.", V_CACHE)                                \
    X(moves_to_warm, COUNTER, "", "memcached_moves_to_warm_total", "",                                                 \
      "Items moved into WARM (from HOT, or COLD after a hit).", V_CACHE)                                       \
    X(moves_within_lru, COUNTER, "", "memcached_moves_within_lru_total", "",                                           \
      "Active items bumped to the head of their LRU.", V_CACHE)                                                        \
    X(direct_reclaims, COUNTER, "", "memcached_direct_reclaims_total", "",                                             \
      "Times worker threads had to directly reclaim or evict items.", V_CACHE)                                         \
    X(lru_bumps_dropped, COUNTER, "", "memcached_lru_bumps_dropped_total", "",                                         \
      "Hits on COLD items not queued for the maintainer (a thread's queue was full).", V_CACHE)

/*
 * "stats backend": stackmapd's own figures, which memcached has no name for
 * (so plain "stats" prints memcached's names only): the backend serving the
 * data path first, then its counters.  Each backend's counters are printed
 * whichever backend runs (0 for the others), the kTLS ones only with -Z.
 */
#define SM_STATS_BACKEND(X)                                                                                            \
    X(backend, INFO, "", "stackmap_backend_info", "backend", "The ring backend serving the data path.",                \
      V_STR(backend_name(e)))                                                                                          \
    X(syscalls, COUNTER, "", "stackmap_syscalls_total", "", "System calls made by the worker loops (all backends).",   \
      V_U64(s.syscalls))                                                                                               \
    X(uring_submits, COUNTER, "", "stackmap_uring_submits_total", "", "io_uring_enter calls that submitted work.",     \
      V_U64(s.uring_submits))                                                                                          \
    X(uring_cqes, COUNTER, "", "stackmap_uring_completions_total", "", "io_uring completions reaped.",                 \
      V_U64(s.uring_cqes))                                                                                             \
    X(uring_buf_ring_empty, COUNTER, "", "stackmap_uring_buffer_ring_empty_total", "",                                 \
      "Receives that found the provided-buffer ring exhausted.", V_U64(s.uring_buf_ring_empty))                        \
    X(uring_send_zc, COUNTER, "", "stackmap_uring_send_zc_total", "", "Zero-copy sends issued.",                       \
      V_U64(s.uring_send_zc))                                                                                          \
    X(uring_batch_waits, COUNTER, "", "stackmap_uring_batch_waits_total", "",                                          \
      "io_uring waits that asked for a batch of arrivals (busy CPU, loaded worker).", V_U64(s.uring_batch_waits))      \
    X(uring_batch_timeouts, COUNTER, "", "stackmap_uring_batch_timeouts_total", "",                                    \
      "Batch waits that ran out of time before the batch was complete.", V_U64(s.uring_batch_timeouts))                \
    X(uring_batch_rests, COUNTER, "", "stackmap_uring_batch_rests_total", "",                                          \
      "Times batch waits were stopped for 64 rounds (two ran out of time in a row: a shared CPU).",                    \
      V_U64(s.uring_batch_rests))                                                                                      \
    X(uring_bufs_published, GAUGE, "", "stackmap_uring_buffers_published", "",                                         \
      "Receive buffers the io_uring workers keep in their provided-buffer rings now.",                                 \
      V_U64(s.uring_bufs_published))                                                                                   \
    X(uring_batch_avg, GAUGE, "", "stackmap_uring_completions_per_submit", "",                                         \
      "Average io_uring batch: completions reaped per submitting io_uring_enter since start.",                         \
      V_F2(s.uring_submits ? (double)s.uring_cqes / (double)s.uring_submits : 0.0))                                    \
    X(stackmap_syncs, COUNTER, "", "stackmap_syncs_total", "", "Ring synchronisations with /dev/stackmap.",            \
      V_U64(s.stackmap_syncs))                                                                                         \
    X(stackmap_rx_slots, COUNTER, "", "stackmap_rx_slots_total", "", "Receive slots consumed from /dev/stackmap.",     \
      V_U64(s.stackmap_rx_slots))                                                                                      \
    X(stackmap_tx_slots, COUNTER, "", "stackmap_tx_slots_total", "", "Transmit slots handed to /dev/stackmap.",        \
      V_U64(s.stackmap_tx_slots))                                                                                      \
    X(stackmap_bad_slots, COUNTER, "", "stackmap_bad_slots_total", "",                                                 \
      "Slots /dev/stackmap handed over that were malformed and skipped.", V_U64(s.stackmap_bad_slots))                 \
    X(stackmap_tx_lent, COUNTER, "", "stackmap_tx_lent_total", "",                                                     \
      "Transmit buffers /dev/stackmap sent zero-copy and lent to TCP until acknowledged (-o stackmap_zc_threshold).",  \
      V_U64(s.stackmap_tx_lent))                                                                                       \
    X(stackmap_tx_lent_copied, COUNTER, "", "stackmap_tx_lent_copied_total", "",                                       \
      "Lent transmit buffers the kernel copied after all (loopback, no scatter-gather).",                              \
      V_U64(s.stackmap_tx_lent_copied))                                                                                \
    X(stackmap_slots_per_sync, GAUGE, "", "stackmap_slots_per_sync", "",                                               \
      "Average slots (receive and transmit) moved per /dev/stackmap synchronisation since start.",                     \
      V_F2(s.stackmap_syncs ? (double)(s.stackmap_rx_slots + s.stackmap_tx_slots) / (double)s.stackmap_syncs           \
                            : 0.0)) \
    X(ssl_ktls_conns, COUNTER, "", "stackmap_ssl_ktls_connections_total", "",                                          \
      "TLS connections whose records the kernel took over after the handshake (kTLS).",                                \
      V_IF(e->settings.ssl_enabled, V_U64(s.ssl_ktls_conns)))                                                          \
    X(ssl_userspace_conns, COUNTER, "", "stackmap_ssl_userspace_connections_total", "",                                \
      "TLS connections whose records stayed in user space (no kTLS here, TLS 1.2, or another cipher).",                \
      V_IF(e->settings.ssl_enabled, V_U64(s.ssl_userspace_conns)))

/*
 * "stats settings", in memcached's order: X(name, option, help, value).
 * option is the options.h key whose value it shows, "" for a fixed value:
 * machinery memcached has and stackmapd does not is printed with the value
 * that is true here (off), so tools reading these settings see the truth.
 * Settings are configuration, not measurements: /metrics leaves them out
 * (max_connections, in the general group, is the one that changes live).
 */
#define SM_STATS_SETTINGS(X)                                                                                           \
    X(maxbytes, "memory_limit", "Item memory limit in bytes (-m, changes live).", V_U64(cache_memlimit(e->cache)))     \
    X(maxconns, "conn_limit", "Connection limit (-c, changes live).",                                                  \
      V_INT(__atomic_load_n(&st->maxconns, __ATOMIC_RELAXED)))                                                         \
    X(tcpport, "port", "TCP port (-p).", V_INT(st->port))                                                              \
    X(udpport, "udp_port", "UDP port: always 0, there is no UDP listener.", V_STR("0"))                                \
    X(inter, "listen", "Listen addresses (-l), NULL for none.", V_STR(st->listen[0] ? st->listen : "NULL"))            \
    X(verbosity, "verbose", "Verbosity (-v, the verbosity command).", V_INT(atomic_load(&e->verbose)))                 \
    X(evictions, "disable_evictions", "on: a full cache evicts; off (-M): it refuses the store.",                      \
      V_STR(st->evict_to_free ? "on" : "off"))                                                                         \
    X(domain_socket, "unix_socket", "Unix socket path (-s), NULL for none.",                                          \
      V_STR(st->unix_socket[0] ? st->unix_socket : "NULL"))                                                            \
    X(umask, "unix_mask", "Mode of the unix socket file, octal (-a).", V_OCT(st->unix_mask))                            \
    X(shutdown_command, "enable_shutdown", "Whether the shutdown command is allowed (-A).",                            \
      V_STR(st->shutdown_enabled ? "yes" : "no"))                                                                      \
    X(growth_factor, "slab_growth_factor", "Slab chunk growth factor (-f).", V_F2(st->factor))                         \
    X(chunk_size, "slab_min_size", "Key + value + flags space of the smallest chunk (-n).", V_INT(st->chunk_size))     \
    X(num_threads, "threads", "Worker threads (-t).", V_INT(st->num_threads))                                          \
    X(detail_enabled, "", "Whether per-prefix stats are collected (stats detail on|off).",                            \
      V_STR(sm_prefix_enabled(e->prefixes) ? "yes" : "no"))                                                            \
    X(reqs_per_event, "max_reqs_per_event", "Requests a connection answers in one turn (-R).",                         \
      V_INT(st->reqs_per_event))                                                                                       \
    X(cas_enabled, "disable_cas", "Whether items carry CAS unique ids (-C turns them off).",                           \
      V_STR(st->use_cas ? "yes" : "no"))                                                                               \
    X(tcp_backlog, "listen_backlog", "listen() backlog (-b).", V_INT(st->backlog))                                     \
    X(binding_protocol, "protocol", "-B: auto-negotiate (the first byte picks), ascii or binary.",                     \
      V_STR(strcmp(st->binding_protocol, "auto") == 0 ? "auto-negotiate" : st->binding_protocol))                    \
    X(auth_enabled_sasl, "", "yes with -Y: binary clients authenticate with SASL PLAIN.",                              \
      V_STR(st->auth_file[0] ? "yes" : "no"))                                                                          \
    X(auth_enabled_ascii, "auth_file", "The auth file (-Y), no for none.",                                             \
      V_STR(st->auth_file[0] ? st->auth_file : "no"))                                                                  \
    X(item_size_max, "max_item_size", "Largest item in bytes (-I).", V_INT(st->item_size_max))                         \
    X(maxconns_fast, "", "yes: a connection over -c is refused at once.", V_STR("yes"))                                \
    X(hashpower_init, "hashpower", "Initial hash table size as a power of two (-o hashpower).",                        \
      V_INT(st->hashpower_init))                                                                                       \
    X(slab_reassign, "slab_reassign", "Whether the slab page mover runs (-o slab_reassign).",                          \
      V_STR(st->slab_reassign ? "yes" : "no"))                                                                         \
    X(slab_automove, "slab_automove", "Slab automover level (-o slab_automove, slabs automove).",                      \
      V_INT(cache_automove(e->cache)))                                                                                 \
    X(slab_automove_ratio, "slab_automove_ratio", "Automover age ratio (-o slab_automove_ratio, slabs automove ratio).",\
      V_F2(cache_automove_ratio(e->cache)))                                                                            \
    X(slab_automove_window, "slab_automove_window", "Automover window in seconds (-o slab_automove_window).",          \
      V_INT(st->slab_automove_window))                                                                                 \
    X(slab_chunk_max, "slab_chunk_max", "Largest class of memcached's slab series (-o slab_chunk_max).",               \
      V_INT(st->slab_chunk_max))                                                                                       \
    X(lru_crawler, "lru_crawler", "Whether the LRU crawler thread runs (-o lru_crawler, lru_crawler enable).",         \
      V_STR(cache_crawler_enabled(e->cache) ? "yes" : "no"))                                                          \
    X(lru_crawler_sleep, "lru_crawler_sleep", "Microseconds the crawler pauses every 1000 items (changes live).",      \
      V_INT(cache_crawler_sleep(e->cache)))                                                                            \
    X(lru_crawler_tocrawl, "lru_crawler_tocrawl", "Items the crawler looks at per class per pass, 0 all.",            \
      V_U64(cache_crawler_tocrawl(e->cache)))                                                                          \
    X(tail_repair_time, "", "0: there is no tail repair.", V_STR("0"))                                                 \
    X(flush_enabled, "disable_flush_all", "Whether flush_all is allowed (-F turns it off).",                           \
      V_STR(st->flush_enabled ? "yes" : "no"))                                                                         \
    X(dump_enabled, "disable_dumping", "Whether lru_crawler metadump is allowed (-X turns it off).",                   \
      V_STR(st->dump_enabled ? "yes" : "no"))                                                                          \
    X(hash_algorithm, "", "The key hash.", V_STR("murmur3"))                                                           \
    X(lru_maintainer_thread, "lru_maintainer", "Whether the LRU maintainer moves items between segments.",            \
      V_STR(lru.maintainer ? "yes" : "no"))                                                                            \
    X(lru_segmented, "lru_segmented", "Whether the LRU is segmented (HOT/WARM/COLD; \"lru mode\" changes it live).",   \
      V_STR(lru.segmented ? "yes" : "no"))                                                                             \
    X(hot_lru_pct, "hot_lru_pct", "HOT's share of a class's memory, % (\"lru tune\" changes it live).",                \
      V_INT(lru.hot_lru_pct))                                                                                          \
    X(warm_lru_pct, "warm_lru_pct", "WARM's share of a class's memory, % (\"lru tune\").", V_INT(lru.warm_lru_pct))    \
    X(hot_max_factor, "hot_max_factor", "HOT idle limit as a multiple of COLD's age (\"lru tune\").",                  \
      V_F2(lru.hot_max_factor))                                                                                        \
    X(warm_max_factor, "warm_max_factor", "WARM idle limit as a multiple of COLD's age (\"lru tune\").",               \
      V_F2(lru.warm_max_factor))                                                                                       \
    X(temp_lru, "temporary_ttl", "Whether short-TTL items go to a TEMP LRU (\"lru temp_ttl\" changes it live).",       \
      V_STR(lru.temp_lru ? "yes" : "no"))                                                                              \
    X(temporary_ttl, "temporary_ttl", "TTL at or under which items go to TEMP (61 until one is set).",             \
      V_INT(lru.temporary_ttl))                                                                                        \
    X(eviction, "eviction", "Eviction policy: lru (memcached's) or s3fifo (-o eviction).", V_STR(st->eviction))     \
    X(idle_timeout, "idle_timeout", "Idle connection timeout in seconds (-o idle_timeout), 0 never.",                  \
      V_INT(st->idle_timeout))                                                                                         \
    X(watcher_logbuf_size, "watcher_logbuf_size", "Bytes of each watcher's log buffer (-o watcher_logbuf_size, KB).",  \
      V_U64((uint64_t)st->watcher_logbuf_size * 1024))                                                                 \
    X(worker_logbuf_size, "worker_logbuf_size", "Bytes of each thread's log ring (-o worker_logbuf_size, KB).",        \
      V_U64((uint64_t)st->worker_logbuf_size * 1024))                                                                  \
    X(track_sizes, "", "no: stats sizes is not tracked.", V_STR("no"))                                                 \
    X(inline_ascii_response, "", "no: responses are never inlined.", V_STR("no"))                                      \
    X(ssl_enabled, "enable_ssl", "Whether TCP listeners speak TLS (-Z).", V_STR(st->ssl_enabled ? "yes" : "no"))     \
    X(ssl_chain_cert, "ssl_chain_cert", "TLS certificate chain file, (null) for none (as memcached prints it).",       \
      V_STR(st->ssl_chain_cert[0] ? st->ssl_chain_cert : "(null)"))                                                    \
    X(ssl_key, "ssl_key", "TLS private key file, (null) for none.", V_STR(st->ssl_key[0] ? st->ssl_key : "(null)"))   \
    X(ssl_verify_mode, "ssl_verify_mode", "OpenSSL's verify flags for client certificates (as memcached prints them).",\
      V_INT(st->ssl_verify_mode == 3 ? 7 : st->ssl_verify_mode == 2 ? 3 : st->ssl_verify_mode))                        \
    X(ssl_keyformat, "ssl_keyformat", "TLS private key format (1 PEM, 2 DER).", V_INT(st->ssl_keyformat))              \
    X(ssl_ciphers, "ssl_ciphers", "OpenSSL cipher list, NULL for OpenSSL's default.",                                  \
      V_STR(st->ssl_ciphers[0] ? st->ssl_ciphers : "NULL"))                                                            \
    X(ssl_ca_cert, "ssl_ca_cert", "CA file for client certificates, NULL for none.",                                   \
      V_STR(st->ssl_ca_cert[0] ? st->ssl_ca_cert : "NULL"))                                                            \
    X(ssl_wbuf_size, "ssl_wbuf_size", "Bytes of plaintext gathered into one TLS write (-o ssl_wbuf_size KiB).",        \
      V_INT((long long)st->ssl_wbuf_size * 1024))                                                                      \
    X(ssl_session_cache, "ssl_session_cache", "Whether the server-side TLS session cache is on.",                      \
      V_STR(st->ssl_session_cache ? "yes" : "no"))                                                                     \
    X(ssl_kernel_tls, "ssl_kernel_tls", "Whether TLS records go to the kernel (kTLS) when it can take them.",          \
      V_STR(st->ssl_kernel_tls ? "yes" : "no"))                                                                        \
    X(ssl_min_version, "ssl_min_version", "Oldest TLS version accepted.",                                              \
      V_STR(st->ssl_min_version == 0 ? "tlsv1.0" : st->ssl_min_version == 1 ? "tlsv1.1" :                              \
            st->ssl_min_version == 2 ? "tlsv1.2" : "tlsv1.3"))                                                         \
    X(slab_page_size, "", "Bytes per slab page: at least 1 MiB and at least -I.", V_INT(st->slab_page_size))           \
    X(backend, "backend", "The ring backend in use (--backend; auto resolved).", V_STR(backend_name(e)))               \
    X(uring_entries, "uring_entries", "io_uring submission queue entries per worker.", V_INT(st->uring_entries))       \
    X(uring_bufs, "uring_bufs", "Provided receive buffers per worker ring.", V_INT(st->uring_bufs))                    \
    X(uring_buf_size, "uring_buf_size", "Bytes per provided receive buffer.", V_INT(st->uring_buf_size))               \
    X(uring_zc_threshold, "uring_zc_threshold", "Zero-copy sends at and above this size, 0 never.",                    \
      V_INT(st->uring_zc_threshold))                                                                                   \
    X(stackmap_zc_threshold, "stackmap_zc_threshold",                                                                  \
      "stackmap backend: TX buffers lent (zero-copy) for queues of at least this size, 0 never.",                      \
      V_INT(st->stackmap_zc_threshold))                                                                                \
    X(uring_sqpoll, "uring_sqpoll", "Whether a kernel submission-queue polling thread runs.",                          \
      V_STR(st->uring_sqpoll ? "yes" : "no"))                                                                          \
    X(uring_batch_usec, "uring_batch_usec", "Longest batch wait of a loaded worker in microseconds, 0 never.",         \
      V_INT(st->uring_batch_usec))                                                                                     \
    X(tcp_nodelay, "tcp_nodelay", "Whether accepted sockets get TCP_NODELAY.", V_STR(st->tcp_nodelay ? "yes" : "no"))

/* "stats items": per slab class, printed as items:<class>:<name>. */
#define SM_STATS_ITEMS(X)                                                                                              \
    X(number, GAUGE, "", "memcached_slab_current_items", "", "Number of items currently stored in this slab class.")   \
    X(number_hot, GAUGE, "", "memcached_slab_hot_items", "", "Number of items presently stored in the HOT LRU.")       \
    X(number_warm, GAUGE, "", "memcached_slab_warm_items", "", "Number of items presently stored in the WARM LRU.")    \
    X(number_cold, GAUGE, "", "memcached_slab_cold_items", "", "Number of items presently stored in the COLD LRU.")    \
    X(number_temp, GAUGE, "", "memcached_slab_temp_items", "", "Number of items presently stored in the TEMP LRU.")    \
    X(age_hot, GAUGE, "seconds", "memcached_slab_hot_age_seconds", "", "Age of the oldest item in HOT LRU.")           \
    X(age_warm, GAUGE, "seconds", "memcached_slab_warm_age_seconds", "", "Age of the oldest item in WARM LRU.")        \
    X(age, GAUGE, "seconds", "memcached_slab_items_age_seconds", "",                                                   \
      "Number of seconds the oldest item has been in the slab class.")                                                 \
    X(mem_requested, GAUGE, "bytes", "memcached_slab_mem_requested_bytes", "",                                         \
      "Number of bytes of memory actual items take up within a slab.")                                                 \
    X(evicted, COUNTER, "", "memcached_slab_items_evicted_total", "",                                                  \
      "Total number of times an item had to be evicted from the LRU before it expired.")                               \
    X(evicted_nonzero, COUNTER, "", "memcached_slab_items_evicted_nonzero_total", "",                                  \
      "Total number of times an item which had an explicit expire time set had to be evicted from the LRU "            \
      "before it expired.")                                                                                            \
    X(evicted_time, GAUGE, "seconds", "memcached_slab_items_evicted_time_seconds", "",                                 \
      "Seconds since the last access for the most recent item evicted from this class.")                               \
    X(outofmemory, COUNTER, "", "memcached_slab_items_outofmemory_total", "",                                          \
      "Total number of items for this slab class that have triggered an out of memory error.")                         \
    X(tailrepairs, COUNTER, "", "memcached_slab_items_tailrepairs_total", "",                                          \
      "Total number of times the entries for a particular ID need repairing.")                                         \
    X(reclaimed, COUNTER, "", "memcached_slab_items_reclaimed_total", "", "Total number of items reclaimed.")          \
    X(expired_unfetched, COUNTER, "", "memcached_slab_items_expired_unfetched_total", "",                              \
      "Total number of valid items evicted from the LRU which were never touched after being set.")                    \
    X(evicted_unfetched, COUNTER, "", "memcached_slab_items_evicted_unfetched_total", "",                              \
      "Total number of items evicted and never fetched.")                                                              \
    X(evicted_active, COUNTER, "", "memcached_slab_items_evicted_active_total", "",                                    \
      "Items evicted from this class although fetched recently.")                                                      \
    X(crawler_reclaimed, COUNTER, "", "memcached_slab_items_crawler_reclaimed_total", "",                              \
      "Number of items freed by the LRU Crawler.")                                                                     \
    X(crawler_items_checked, COUNTER, "", "memcached_slab_items_crawler_items_checked_total", "",                      \
      "Items of this class the LRU crawler checked.")                                                       \
    X(lrutail_reflocked, COUNTER, "", "memcached_slab_items_lrutail_reflocked_total", "",                              \
      "LRU tail items of this class skipped because another thread held them.")                                        \
    X(moves_to_cold, COUNTER, "", "memcached_slab_items_moves_to_cold", "",                                            \
      "Number of items moved from HOT or WARM into COLD.")                                                             \
    X(moves_to_warm, COUNTER, "", "memcached_slab_items_moves_to_warm", "",                                            \
      "Number of items moved into WARM (from HOT, or COLD after a hit).")                                                                    \
    X(moves_within_lru, COUNTER, "", "memcached_slab_items_moves_within_lru", "",                                      \
      "Number of times active items were bumped within their LRU.")                                                    \
    X(direct_reclaims, COUNTER, "", "memcached_slab_items_direct_reclaims_total", "",                                  \
      "Times worker threads had to directly reclaim or evict items of this class.")                                    \
    X(hits_to_hot, COUNTER, "", "memcached_slab_lru_hits_total", "lru=hot", "get hits to the HOT LRU.")                \
    X(hits_to_warm, COUNTER, "", "memcached_slab_lru_hits_total", "lru=warm", "get hits to the WARM LRU.")             \
    X(hits_to_cold, COUNTER, "", "memcached_slab_lru_hits_total", "lru=cold", "get hits to the COLD LRU.")             \
    X(hits_to_temp, COUNTER, "", "memcached_slab_lru_hits_total", "lru=temporary",                                     \
      "get hits to the TEMPORARY LRU.")                                                                                \
    X(s3fifo_to_main, COUNTER, "", "stackmap_slab_s3fifo_to_main_total", "",                                           \
      "-o eviction=s3fifo: items read twice in the small queue moved to the main queue.")                              \
    X(s3fifo_ghost_hits, COUNTER, "", "stackmap_slab_s3fifo_ghost_hits_total", "",                                     \
      "-o eviction=s3fifo: new items whose key the ghost queue remembered, stored into the main queue.")               \
    X(s3fifo_reinserted, COUNTER, "", "stackmap_slab_s3fifo_reinserted_total", "",                                     \
      "-o eviction=s3fifo: main-queue tail items read since they got there, given another round.")

/* "stats slabs": per slab class, printed as <class>:<name>. */
#define SM_STATS_SLABS(X)                                                                                              \
    X(chunk_size, GAUGE, "bytes", "memcached_slab_chunk_size_bytes", "",                                               \
      "Number of bytes allocated to each chunk within this slab class.")                                               \
    X(chunks_per_page, GAUGE, "", "memcached_slab_chunks_per_page", "",                                                \
      "Number of chunks within a single page for this slab class.")                                                    \
    X(total_pages, GAUGE, "", "memcached_slab_current_pages", "", "Number of pages allocated to this slab class.")     \
    X(total_chunks, GAUGE, "", "memcached_slab_current_chunks", "",                                                    \
      "Number of chunks allocated to this slab class.")                                                                \
    X(used_chunks, GAUGE, "", "memcached_slab_chunks_used", "", "Number of chunks allocated to an item.")              \
    X(free_chunks, GAUGE, "", "memcached_slab_chunks_free", "", "Number of chunks not yet allocated items.")           \
    X(free_chunks_end, GAUGE, "", "memcached_slab_chunks_free_end", "",                                                \
      "Number of free chunks at the end of the last allocated page.")                                                  \
    X(get_hits, COUNTER, "", "memcached_slab_commands_total", "command=get,status=hit",                                \
      "Keys of this class found by get.")                                                                              \
    X(cmd_set, COUNTER, "", "memcached_slab_cmd_set_total", "", "Storage commands into this class.")                   \
    X(delete_hits, COUNTER, "", "memcached_slab_commands_total", "command=delete,status=hit",                          \
      "Keys of this class deleted.")                                                                                   \
    X(incr_hits, COUNTER, "", "memcached_slab_commands_total", "command=incr,status=hit",                              \
      "Keys of this class incremented.")                                                                               \
    X(decr_hits, COUNTER, "", "memcached_slab_commands_total", "command=decr,status=hit",                              \
      "Keys of this class decremented.")                                                                               \
    X(cas_hits, COUNTER, "", "memcached_slab_commands_total", "command=cas,status=hit",                                \
      "cas into this class that stored.")                                                                              \
    X(cas_badval, COUNTER, "", "memcached_slab_commands_total", "command=cas,status=badval",                           \
      "cas into this class refused because the key had changed.")                                                      \
    X(touch_hits, COUNTER, "", "memcached_slab_commands_total", "command=touch,status=hit",                            \
      "Keys of this class touched.")

/* "stats slabs": the two totals after the classes. */
#define SM_STATS_SLABS_TOTAL(X)                                                                                        \
    X(active_slabs, GAUGE, "", "memcached_active_slabs", "", "Slab classes with at least one page.")                   \
    X(total_malloced, GAUGE, "bytes", "memcached_malloced_bytes", "",                                                  \
      "Number of bytes of memory allocated to slab pages.")

#endif
