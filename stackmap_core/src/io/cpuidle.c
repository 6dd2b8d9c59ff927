/*
 * cpuidle.c -- the idle time of the CPU a worker runs on (cpuidle.h says
 * why the uring backend wants it).
 *
 * /proc/stat's "cpuN" lines give idle and iowait in USER_HZ ticks; reading
 * the whole file costs a few microseconds on a small machine (more with
 * many CPUs), which twice a second is nothing.  A window counts as busy
 * only if the worker was on the same CPU at both ends of it (a thread that
 * moved says nothing about either CPU) and the CPU idled for at most
 * CPUIDLE_MAX_TICKS.
 */
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpuidle.h"

void cpuidle_init(cpuidle *ci)
{
    memset(ci, 0, sizeof(*ci));
    ci->fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    ci->cpu = -1;
}

void cpuidle_close(cpuidle *ci)
{
    if (ci->fd >= 0)
        close(ci->fd);
    ci->fd = -1;
}

/* idle + iowait ticks of CPU cpu, or -1 when not found. */
static int read_idle(int fd, int cpu, uint64_t *ticks)
{
    char buf[32768];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char tag[24];
    int tlen = snprintf(tag, sizeof(tag), "\ncpu%d ", cpu);
    const char *line = strstr(buf, tag);
    if (!line)
        return -1;
    unsigned long long v[5];
    if (sscanf(line + tlen, "%llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4]) != 5)
        return -1;
    *ticks = v[3] + v[4];
    return 0;
}

bool cpuidle_busy(cpuidle *ci, uint64_t now_ns)
{
    if (ci->fd < 0)
        return false;
    if (ci->cpu >= 0 && now_ns - ci->sampled_ns < CPUIDLE_WINDOW_NS)
        return ci->busy;
    int cpu = sched_getcpu();
    uint64_t ticks;
    if (cpu < 0 || read_idle(ci->fd, cpu, &ticks) < 0) {
        ci->busy = false;
        ci->cpu = -1;
        return false;
    }
    ci->busy = ci->cpu == cpu && ticks - ci->idle_ticks <= CPUIDLE_MAX_TICKS;
    ci->cpu = cpu;
    ci->idle_ticks = ticks;
    ci->sampled_ns = now_ns;
    return ci->busy;
}
