/*
 * mcblast.c -- our own memcached load generator, for what memaslap cannot
 * do: many connections from one thread, several pipelined requests in
 * flight per connection, and fixed-rate (open-loop) load whose latencies
 * are measured from the intended send time, so a stalled server cannot
 * hide its tail (no coordinated omission).  memaslap stays the reference
 * tool; results from this one are labelled "mcblast".
 *
 *   mcblast -s 127.0.0.1:11211 -c 16 -d 8 -t 10 [-r RATE] [-k 64] [-v 64]
 *           [-g 0.9] [-K keys] [-w warmup_s] [-P]
 *
 * -P stores every key once before the run (so gets hit from the start, for
 * every server alike).  In open loop, requests whose intended send time lies
 * in the measured window are waited for up to one second after it ends, so
 * that the slowest ones still count; any left are reported as "unanswered".
 *
 * Prints one JSON object: ops, seconds, ops_per_sec, latency percentiles in
 * microseconds, get hits and misses, errors.  Loopback targets only (it
 * refuses others).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Most requests one connection may have in flight. */
#define MAX_DEPTH 256
/* Latency histogram: log-linear buckets over nanoseconds. */
#define HIST_SUB 32
#define HIST_BUCKETS (64 * HIST_SUB)
/* Open loop: how long to wait for answers to measured requests after the window. */
#define DRAIN_NS 1000000000ull
/* Prefill: sets written per batch on one connection. */
#define PREFILL_BATCH 64

/* One client connection and its requests in flight. */
typedef struct client {
    int fd;                      /* socket */
    uint64_t sent_at[MAX_DEPTH]; /* intended send time (ns) of each in-flight request, FIFO */
    bool is_get[MAX_DEPTH];      /* whether each in-flight request is a get, same FIFO */
    int head;                    /* oldest in-flight request */
    int inflight;                /* requests awaiting a response */
    char rbuf[1 << 17];          /* received, unparsed bytes */
    size_t rlen;                 /* bytes in rbuf */
    char wbuf[1 << 16];          /* requests not yet written */
    size_t wlen;                 /* bytes in wbuf */
    uint64_t next_send;          /* open loop: intended time of the next request (ns) */
} client;

/* Options. */
typedef struct opts {
    struct sockaddr_in addr; /* target (loopback only) */
    int conns;               /* connections */
    int depth;               /* requests in flight per connection (closed loop) */
    double seconds;          /* measured duration */
    double warmup;           /* unmeasured warm-up */
    double rate;             /* open loop: total requests per second, 0 = closed loop */
    int key_len;             /* key length */
    int value_len;           /* value length */
    double get_ratio;        /* share of gets */
    int nkeys;               /* key space */
    bool prefill;            /* store every key once before the run */
} opts;

static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_count;
static uint64_t errors;
static uint64_t get_hits;   /* measured gets answered with a value */
static uint64_t get_misses; /* measured gets answered with END alone */
static char *value_buf;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int hist_index(uint64_t ns)
{
    if (ns < HIST_SUB)
        return (int)ns;
    int msb = 63 - __builtin_clzll(ns);
    int shift = msb - 5; /* log2(HIST_SUB) */
    int sub = (int)((ns >> shift) & (HIST_SUB - 1));
    int idx = (shift + 1) * HIST_SUB + sub;
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

static uint64_t hist_value(int idx)
{
    if (idx < HIST_SUB)
        return (uint64_t)idx;
    int shift = idx / HIST_SUB - 1;
    uint64_t sub = (uint64_t)(idx % HIST_SUB);
    return ((uint64_t)HIST_SUB + sub) << shift;
}

static double percentile(double p)
{
    if (hist_count == 0)
        return 0;
    uint64_t want = (uint64_t)ceil(p * (double)hist_count);
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= want)
            return (double)hist_value(i) / 1000.0;
    }
    return 0;
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Append "set KEY 0 0 LEN\r\nVALUE\r\n" for key number k to the write buffer. */
static void add_set(client *c, const opts *o, int k)
{
    char *w = c->wbuf + c->wlen;
    c->wlen += (size_t)sprintf(w, "set %0*d 0 0 %d\r\n", o->key_len, k, o->value_len);
    memcpy(c->wbuf + c->wlen, value_buf, (size_t)o->value_len);
    c->wlen += (size_t)o->value_len;
    memcpy(c->wbuf + c->wlen, "\r\n", 2);
    c->wlen += 2;
}

/* Append one request to the connection's write buffer. */
static void add_request(client *c, const opts *o, uint64_t when)
{
    int k = (int)(rng() % (uint64_t)o->nkeys);
    bool get = (double)(rng() % 10000) < o->get_ratio * 10000.0;
    if (get)
        c->wlen += (size_t)sprintf(c->wbuf + c->wlen, "get %0*d\r\n", o->key_len, k);
    else
        add_set(c, o, k);
    int slot = (c->head + c->inflight) % MAX_DEPTH;
    c->sent_at[slot] = when;
    c->is_get[slot] = get;
    c->inflight++;
}

/* Length of one complete response at the start of buf, 0 if incomplete; *hit says
 * whether it carried a value. */
static long response_len(const char *buf, size_t len, bool *hit)
{
    *hit = false;
    const char *nl = memchr(buf, '\n', len);
    if (!nl)
        return 0;
    size_t l1 = (size_t)(nl - buf) + 1;
    if (l1 == 5 && memcmp(buf, "END\r\n", 5) == 0)
        return 5;
    if (l1 == 8 && memcmp(buf, "STORED\r\n", 8) == 0)
        return 8;
    if (l1 > 6 && memcmp(buf, "VALUE ", 6) == 0) {
        /* VALUE key flags bytes */
        const char *p = buf + 6;
        int spaces = 0;
        while (p < nl && spaces < 2) {
            if (*p == ' ')
                spaces++;
            p++;
        }
        long bytes = strtol(p, NULL, 10);
        size_t total = l1 + (size_t)bytes + 2 + 5;
        if (len < total)
            return 0;
        *hit = true;
        return (long)total;
    }
    errors++;
    return (long)l1; /* an error line: count it and go on */
}

static int connect_one(const opts *o)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)&o->addr, sizeof(o->addr)) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Store every key once over connection c, PREFILL_BATCH sets at a time; 0 on success. */
static int prefill(client *c, const opts *o)
{
    /* As many sets as fit in the write buffer, at most PREFILL_BATCH. */
    int batch = (int)((sizeof(c->wbuf) - 512) / ((size_t)o->value_len + 300));
    if (batch > PREFILL_BATCH)
        batch = PREFILL_BATCH;
    if (batch < 1)
        batch = 1;
    for (int base = 0; base < o->nkeys; base += batch) {
        int n = o->nkeys - base < batch ? o->nkeys - base : batch;
        for (int k = base; k < base + n; k++)
            add_set(c, o, k);
        size_t off = 0;
        int answered = 0;
        while (answered < n) {
            struct pollfd pfd = {.fd = c->fd, .events = (short)(POLLIN | (off < c->wlen ? POLLOUT : 0))};
            if (poll(&pfd, 1, 5000) <= 0)
                return -1;
            if (off < c->wlen && (pfd.revents & POLLOUT)) {
                ssize_t w = send(c->fd, c->wbuf + off, c->wlen - off, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN)
                    return -1;
                if (w > 0)
                    off += (size_t)w;
            }
            if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t r = recv(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN))
                    return -1;
                if (r > 0)
                    c->rlen += (size_t)r;
                size_t used = 0;
                bool hit;
                long len;
                while ((len = response_len(c->rbuf + used, c->rlen - used, &hit)) > 0) {
                    used += (size_t)len;
                    answered++;
                }
                memmove(c->rbuf, c->rbuf + used, c->rlen - used);
                c->rlen -= used;
            }
        }
        c->wlen = 0;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: mcblast -s HOST:PORT [-c conns] [-d depth] [-t seconds] [-w warmup] "
                    "[-r rate] [-k keylen] [-v valuelen] [-g getratio] [-K keys] [-P]\n");
    exit(64);
}

int main(int argc, char **argv)
{
    opts o = {.conns = 16, .depth = 8, .seconds = 10, .warmup = 1, .rate = 0, .key_len = 64,
              .value_len = 64, .get_ratio = 0.9, .nkeys = 10000};
    const char *target = "127.0.0.1:11211";
    int opt;
    while ((opt = getopt(argc, argv, "s:c:d:t:w:r:k:v:g:K:P")) != -1) {
        switch (opt) {
        case 's': target = optarg; break;
        case 'c': o.conns = atoi(optarg); break;
        case 'd': o.depth = atoi(optarg); break;
        case 't': o.seconds = atof(optarg); break;
        case 'w': o.warmup = atof(optarg); break;
        case 'r': o.rate = atof(optarg); break;
        case 'k': o.key_len = atoi(optarg); break;
        case 'v': o.value_len = atoi(optarg); break;
        case 'g': o.get_ratio = atof(optarg); break;
        case 'K': o.nkeys = atoi(optarg); break;
        case 'P': o.prefill = true; break;
        default: usage();
        }
    }
    char host[64];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof(host))
        usage();
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    o.addr.sin_family = AF_INET;
    o.addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &o.addr.sin_addr) != 1 || (ntohl(o.addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "mcblast: only IPv4 loopback targets (127.0.0.0/8) are allowed\n");
        return 64;
    }
    if (o.conns < 1 || o.depth < 1 || o.depth > MAX_DEPTH / 2 || o.key_len < 1 || o.key_len > 250 ||
        o.value_len < 1 || o.value_len > 32768 || o.nkeys < 1)
        usage();
    value_buf = malloc((size_t)o.value_len);
    memset(value_buf, 'x', (size_t)o.value_len);

    client *cl = calloc((size_t)o.conns, sizeof(client));
    int ep = epoll_create1(0);
    for (int i = 0; i < o.conns; i++) {
        cl[i].fd = connect_one(&o);
        if (cl[i].fd < 0) {
            fprintf(stderr, "mcblast: connect failed: %s\n", strerror(errno));
            return 69;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cl[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cl[i].fd, &ev);
    }
    if (o.prefill && prefill(&cl[0], &o) != 0) {
        fprintf(stderr, "mcblast: prefill failed\n");
        return 70;
    }
    /* Open loop: each connection gets rate/conns requests per second, evenly spaced. */
    double per_conn_interval = o.rate > 0 ? 1e9 * o.conns / o.rate : 0;
    uint64_t start = now_ns();
    uint64_t measure_from = start + (uint64_t)(o.warmup * 1e9);
    uint64_t end = measure_from + (uint64_t)(o.seconds * 1e9);
    for (int i = 0; i < o.conns; i++)
        cl[i].next_send = start + (uint64_t)(per_conn_interval * i / o.conns);
    uint64_t ops = 0;
    /* Open loop: measured requests still awaiting an answer (drained after the window). */
    uint64_t pending = 0;
    struct epoll_event evs[256];
    for (;;) {
        uint64_t now = now_ns();
        if (now >= end && (o.rate <= 0 || pending == 0 || now >= end + DRAIN_NS))
            break;
        /* Queue new requests (none after the window). */
        for (int i = 0; i < o.conns && now < end; i++) {
            client *c = &cl[i];
            if (o.rate > 0) {
                while (c->next_send <= now && c->next_send < end && c->inflight < MAX_DEPTH - 1 &&
                       c->wlen + 512 + (size_t)o.value_len < sizeof(c->wbuf)) {
                    if (c->next_send >= measure_from)
                        pending++;
                    add_request(c, &o, c->next_send);
                    c->next_send += (uint64_t)per_conn_interval;
                }
            } else {
                while (c->inflight < o.depth && c->wlen + 512 + (size_t)o.value_len < sizeof(c->wbuf))
                    add_request(c, &o, now);
            }
        }
        for (int i = 0; i < o.conns; i++) {
            client *c = &cl[i];
            if (c->wlen) {
                ssize_t n = send(c->fd, c->wbuf, c->wlen, MSG_NOSIGNAL);
                if (n > 0) {
                    memmove(c->wbuf, c->wbuf + n, c->wlen - (size_t)n);
                    c->wlen -= (size_t)n;
                } else if (n < 0 && errno != EAGAIN) {
                    fprintf(stderr, "mcblast: send: %s\n", strerror(errno));
                    return 70;
                }
            }
        }
        /* Sleep until a response arrives or (open loop) the next request is due. */
        uint64_t wait_ns = 1000000;
        if (o.rate > 0 && now < end) {
            uint64_t next = end;
            for (int i = 0; i < o.conns; i++)
                if (cl[i].next_send < next)
                    next = cl[i].next_send;
            uint64_t t = now_ns();
            wait_ns = next > t ? next - t : 0;
        }
        struct timespec wts = {.tv_sec = (time_t)(wait_ns / 1000000000ull),
                               .tv_nsec = (long)(wait_ns % 1000000000ull)};
        int n = epoll_pwait2(ep, evs, 256, &wts, NULL);
        for (int e = 0; e < n; e++) {
            client *c = evs[e].data.ptr;
            ssize_t r = recv(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                fprintf(stderr, "mcblast: connection closed by server\n");
                return 70;
            }
            c->rlen += (size_t)r;
            size_t off = 0;
            uint64_t t = now_ns();
            for (;;) {
                bool hit;
                long len = response_len(c->rbuf + off, c->rlen - off, &hit);
                if (len <= 0)
                    break;
                off += (size_t)len;
                if (c->inflight > 0) {
                    uint64_t sent = c->sent_at[c->head];
                    bool get = c->is_get[c->head];
                    c->head = (c->head + 1) % MAX_DEPTH;
                    c->inflight--;
                    /* Closed loop: responses within the window; open loop: every answer to a
                     * request due within it, however late. */
                    bool measured = sent >= measure_from && (o.rate > 0 ? sent < end : t < end);
                    if (measured) {
                        ops++;
                        hist[hist_index(t - sent)]++;
                        hist_count++;
                        if (get)
                            *(hit ? &get_hits : &get_misses) += 1;
                    }
                    if (o.rate > 0 && sent >= measure_from && sent < end)
                        pending--;
                }
            }
            memmove(c->rbuf, c->rbuf + off, c->rlen - off);
            c->rlen -= off;
        }
    }
    double secs = o.seconds;
    double sum = 0;
    for (int i = 0; i < HIST_BUCKETS; i++)
        sum += (double)hist[i] * (double)hist_value(i);
    printf("{\"generator\": \"mcblast\", \"mode\": \"%s\", \"conns\": %d, \"depth\": %d, \"rate\": %.0f, "
           "\"ops\": %llu, \"seconds\": %.3f, \"ops_per_sec\": %.1f, \"lat_mean_us\": %.2f, "
           "\"lat_p50_us\": %.2f, \"lat_p90_us\": %.2f, \"lat_p99_us\": %.2f, \"lat_p999_us\": %.2f, "
           "\"get_hits\": %llu, \"get_misses\": %llu, \"unanswered\": %llu, \"key_len\": %d, "
           "\"value_len\": %d, \"get_ratio\": %.3f, \"warmup\": %.3f, \"prefill\": %s, \"errors\": %llu}\n",
           o.rate > 0 ? "open" : "closed", o.conns, o.depth, o.rate, (unsigned long long)ops, secs,
           (double)ops / secs, hist_count ? sum / (double)hist_count / 1000.0 : 0.0, percentile(0.50),
           percentile(0.90), percentile(0.99), percentile(0.999), (unsigned long long)get_hits,
           (unsigned long long)get_misses, (unsigned long long)(o.rate > 0 ? pending : 0), o.key_len,
           o.value_len, o.get_ratio, o.warmup, o.prefill ? "true" : "false", (unsigned long long)errors);
    return 0;
}
