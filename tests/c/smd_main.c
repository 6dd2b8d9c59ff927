/*
 * smd_main.c -- a bare C driver of the engine with memcached's core flags,
 * for working on the data plane without Python (gdb, valgrind, sanitizers,
 * quick protocol diffs).  The product's command line is stackmapd/cli.py; this
 * driver is not installed.
 *
 *   build/smd [-p port] [-l addrs] [-t threads] [-m MB] [-c conns] [-I size]
 *             [-f factor] [-n bytes] [-C] [-A] [-v...] [-U 0] [-u user] [-B epoll]
 *             [-o uring_batch_usec=N,uring_bufs=N,eviction=E,slab_chunk_max=SIZE,slab_reassign]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* "1m", "512k", "2048" -> bytes */
static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    if (*end == 'k' || *end == 'K')
        v *= 1024;
    else if (*end == 'm' || *end == 'M')
        v *= 1024 * 1024;
    return v;
}

int main(int argc, char **argv)
{
    struct sm_settings s;
    sm_settings_init(&s);
    s.backend = SM_BACKEND_EPOLL;
    int opt;
    while ((opt = getopt(argc, argv, "p:l:t:m:c:I:f:n:CAvU:u:B:b:R:o:")) != -1) {
        switch (opt) {
        case 'p': s.port = atoi(optarg); break;
        case 'l': snprintf(s.listen, sizeof(s.listen), "%s", optarg); break;
        case 't': s.num_threads = atoi(optarg); break;
        case 'm': s.maxbytes = strtoull(optarg, NULL, 10) * 1024 * 1024; break;
        case 'c': s.maxconns = atoi(optarg); break;
        case 'I': s.item_size_max = (uint32_t)parse_size(optarg); break;
        case 'f': s.factor = atof(optarg); break;
        case 'n': s.chunk_size = (uint32_t)atoi(optarg); break;
        case 'C': s.use_cas = 0; break;
        case 'A': s.shutdown_enabled = 1; break;
        case 'v': s.verbose++; break;
        case 'b': s.backlog = atoi(optarg); break;
        case 'R': s.reqs_per_event = atoi(optarg); break;
        case 'o':
            /* a comma-separated list, as memcached's -o; unknown keys are ignored */
            for (char *o = strtok(optarg, ","); o; o = strtok(NULL, ",")) {
                if (strncmp(o, "uring_batch_usec=", 17) == 0)
                    s.uring_batch_usec = atoi(o + 17);
                else if (strncmp(o, "uring_bufs=", 11) == 0)
                    s.uring_bufs = atoi(o + 11);
                else if (strncmp(o, "eviction=", 9) == 0)
                    snprintf(s.eviction, sizeof(s.eviction), "%s", o + 9);
                else if (strncmp(o, "slab_chunk_max=", 15) == 0)
                    s.slab_chunk_max = (uint32_t)parse_size(o + 15);
                else if (strcmp(o, "slab_reassign") == 0)
                    s.slab_reassign = 1;
            }
            break;
        case 'U': case 'u': break;
        case 'B':
            s.backend = strcmp(optarg, "uring") == 0    ? SM_BACKEND_URING
                      : strcmp(optarg, "stackmap") == 0 ? SM_BACKEND_STACKMAP
                      : strcmp(optarg, "auto") == 0  ? SM_BACKEND_AUTO
                                                     : SM_BACKEND_EPOLL;
            break;
        default:
            fprintf(stderr, "usage: %s [-p port] [-l addrs] [-t n] [-m MB] [-c n] [-I size] [-A] [-v]\n", argv[0]);
            return 64;
        }
    }
    char err[256];
    sm_engine *e = sm_engine_create(&s, err, sizeof(err));
    if (!e) {
        fprintf(stderr, "%s\n", err);
        return 64;
    }
    if (sm_engine_start(e, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        sm_engine_destroy(e);
        return 71;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    while (!stop_flag && !sm_engine_wait(e, 200))
        ;
    sm_engine_stop(e, 1000);
    sm_engine_destroy(e);
    return 0;
}
