/*
 * tsan_stress.c -- the engine's admin API called while the workers serve
 * clients, for ThreadSanitizer (make tsan).
 *
 * Why it exists: the control plane (Python) calls the admin API from its
 * own threads while the worker threads run -- stats of every group
 * (including "stats conns", which walks other workers' connections),
 * changing the connection and memory limits, listing, dumping and deleting
 * keys.  The pytest suites run build/smd-tsan over the network, but that
 * bare driver never makes these calls; this program makes them, in a loop,
 * against real loopback clients, so TSan sees both sides of every such
 * access.
 *
 *   build/tsan-stress [seconds] [epoll|uring]
 *
 * Clients: CLIENTS threads, each with two connections, send pipelined
 * batches of text and meta commands (set/get/incr/delete/mg/ms/stats/stats
 * conns/stats settings/lru_crawler crawl, and now and then a metadump) and
 * read the replies to the end; items expiring in a second keep the LRU
 * crawler freeing; a connection is
 * closed and reopened every few batches.  The main thread meanwhile loops
 * over the admin calls.  Exits 0 when done; TSan's exitcode (TSAN_OPTIONS)
 * when it reported anything; 1 when a client saw the server misbehave.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "engine_internal.h"

/* Client threads. */
#define CLIENTS 4

/* What the client threads share. */
struct shared {
    int port;            /* the engine's port */
    atomic_bool stop;    /* set by main when time is up */
    atomic_int failures; /* clients that saw a wrong reply */
    atomic_long batches; /* batches completed, all clients */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Send a batch ending in "mn\r\n" and read until its "MN\r\n": 0 ok (buf holds the
 * whole reply), 1 ok but the reply was longer than buf, -1 closed or refused. */
static int batch(int fd, const char *req, size_t len, char *buf, size_t cap)
{
    if (send(fd, req, len, MSG_NOSIGNAL) != (ssize_t)len)
        return -1;
    size_t got = 0;
    int wrapped = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n <= 0)
            return -1;
        got += (size_t)n;
        if (got >= 4 && memcmp(buf + got - 4, "MN\r\n", 4) == 0)
            return wrapped;
        if (got >= 34 && memcmp(buf, "ERROR Too many open connections\r\n", 33) == 0)
            return -1; /* over the (changing) limit: try again later */
        if (got == cap - 1) {
            memmove(buf, buf + got - 3, 3); /* keep a possible partial "MN\r" */
            got = 3;
            wrapped = 1;
        }
    }
}

static void *client(void *arg)
{
    struct shared *sh = arg;
    static _Thread_local char buf[1 << 16];
    char req[2048];
    int fds[2] = {-1, -1};
    unsigned seed = (unsigned)(uintptr_t)&fds;
    for (long i = 0; !atomic_load(&sh->stop); i++) {
        int k = (int)(i & 1);
        if (fds[k] < 0 && (fds[k] = connect_port(sh->port)) < 0)
            continue;
        unsigned key = rand_r(&seed) % 64;
        if (i % 17 == 0) {
            /* a metadump (first in its read: nothing queued before it), streamed by the worker */
            static const char dump[] = "lru_crawler metadump all\r\nmn\r\n";
            if (batch(fds[k], dump, sizeof(dump) - 1, buf, sizeof(buf)) < 0) {
                close(fds[k]);
                fds[k] = -1;
            }
            continue;
        }
        int n = snprintf(req, sizeof(req),
                         "set k%u 0 0 4\r\nabcd\r\nget k%u k%u\r\nms m%u 2 T60\r\nxy\r\nmg m%u v c t\r\n"
                         "set n%u 0 0 1\r\n1\r\nincr n%u 5\r\ndelete k%u\r\nset e%u 0 1 1\r\ne\r\n%s%s%s%smn\r\n",
                         key, key, key + 1, key, key, key, key, key, key, i % 7 == 0 ? "stats\r\n" : "",
                         i % 5 == 0 ? "stats conns\r\n" : "", i % 11 == 0 ? "stats settings\r\n" : "",
                         i % 3 == 0 ? "lru_crawler crawl all\r\n" : "");
        int r = batch(fds[k], req, (size_t)n, buf, sizeof(buf));
        if (r < 0) {
            close(fds[k]);
            fds[k] = -1;
            continue;
        }
        /* the batch starts with a set (other clients may delete the key before the get) */
        static const char want[] = "STORED\r\n";
        if (r == 0 && memcmp(buf, want, sizeof(want) - 1) != 0) {
            fprintf(stderr, "tsan-stress: unexpected reply \"%.40s\"\n", buf);
            atomic_fetch_add(&sh->failures, 1);
        }
        atomic_fetch_add(&sh->batches, 1);
        if (i % 13 == 0) {
            close(fds[k]);
            fds[k] = -1;
        }
    }
    for (int k = 0; k < 2; k++)
        if (fds[k] >= 0)
            close(fds[k]);
    return NULL;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    struct sm_settings s;
    sm_settings_init(&s);
    s.port = 0;
    s.num_threads = 2;
    s.maxbytes = 16u << 20;
    s.backend = argc > 2 && strcmp(argv[2], "uring") == 0 ? SM_BACKEND_URING : SM_BACKEND_EPOLL;
    s.lru_crawler_sleep = 0; /* the crawler as busy as it gets, beside the workers and the admin walks */
    char err[256];
    sm_engine *e = sm_engine_create(&s, err, sizeof(err));
    if (!e || sm_engine_start(e, err, sizeof(err)) < 0) {
        fprintf(stderr, "tsan-stress: %s\n", err);
        return 2;
    }
    struct shared sh = {.port = e->settings.port};
    pthread_t th[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        pthread_create(&th[i], NULL, client, &sh);

    static const char *const groups[] = {"", "settings", "items", "slabs", "sizes", "conns"};
    size_t dcap = sm_admin_dump_min_buffer(e);
    char *dump = malloc(dcap);
    char *text = malloc(1 << 20);
    struct sm_item_info info[32];
    int ncmds, nb, shift;
    sm_latency_dims(&ncmds, &nb, &shift);
    uint64_t *counts = calloc((size_t)ncmds * (size_t)nb, sizeof(uint64_t));
    uint64_t *sums = calloc((size_t)ncmds, sizeof(uint64_t));
    if (!dump || !text || !counts || !sums)
        return 2;
    long rounds = 0;
    double end = now_s() + seconds;
    while (now_s() < end) {
        sm_engine_set_maxconns(e, 6 + (int)(rounds % 8), err, sizeof(err));
        for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++)
            sm_engine_stats_text(e, groups[g], text, 1 << 20);
        uint64_t cur = 0, n = 0;
        do
            sm_admin_keys(e, "k", 1, &cur, info, 32);
        while (cur);
        sm_admin_get_meta(e, "m1", 2, &info[0]);
        sm_admin_delete(e, "k3", 2);
        cur = 0;
        do
            sm_admin_delete_prefix(e, "n1", 2, &cur);
        while (cur);
        cur = 0;
        do
            sm_admin_dump(e, &cur, dump, dcap, &n);
        while (cur);
        sm_admin_set_memlimit(e, (uint64_t)(12 + rounds % 8) << 20, err, sizeof(err));
        sm_engine_set_memlimit(e, (uint64_t)(12 + rounds % 8) << 20, err, sizeof(err));
        sm_engine_set_verbosity(e, 0);
        sm_engine_latency(e, counts, sums);
        if (rounds % 50 == 49)
            sm_admin_flush(e, 0);
        sm_engine_ready(e);
        rounds++;
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
    }
    atomic_store(&sh.stop, true);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(th[i], NULL);
    sm_engine_stop(e, 1000);
    sm_engine_destroy(e);
    printf("tsan-stress: %ld admin rounds, %ld client batches in %.0f s (%s)\n", rounds,
           atomic_load(&sh.batches), seconds, s.backend == SM_BACKEND_URING ? "uring" : "epoll");
    free(dump);
    free(text);
    free(counts);
    free(sums);
    return atomic_load(&sh.failures) ? 1 : 0;
}
