/*
 * ringtest.c -- ring-level test of the StackMap kernel module.
 *
 * Runs inside a VM booted with Debian's 6.12 kernel and stackmap.ko loaded
 * (see run-in-vm.sh).  The parent process is an echo server written
 * directly against the port's rings: it opens /dev/stackmap, registers,
 * maps the port, attaches a listening socket on 127.0.0.1 and serves every
 * connection through the RX/TX rings only (accepting, reading, writing and
 * closing happen in the sync).  Forked client processes drive it with
 * ordinary blocking sockets and check what comes back:
 *
 *   - many connections at once (several processes, many sockets each);
 *   - large values, which arrive and leave split over many 2 KiB buffers;
 *   - peer close: a half-closed client gets an EOF slot on the server,
 *     whose CLOSE request must then end the client's read with EOF;
 *   - a client that stops reading while 2 MiB are echoed to it: the server
 *     sees AGAIN/WRITABLE and the other clients must not be stalled.
 *
 * Then the parent turns hostile against its own port: out-of-range buffer
 * indices, offsets and lengths past the buffer, fds that are not attached,
 * belong to another process, are not sockets (a pipe), are UDP, are the
 * listener, or were reused after close, a bad RX buffer index, ring heads
 * beyond the ring size, and use of the port from a forked child.  Each
 * must be rejected (STACKMAP_F_BAD with the right reason, or EINVAL/EPERM)
 * and counted, without sending anything; after that the port must still
 * serve a new client.  Finally a port owned by a process killed with
 * SIGKILL must release its connections, and the socket and vmalloc usage
 * must be back to where they started.
 *
 * Zero-copy TX (STACKMAP_REG_ZC) gets a port of its own afterwards: the
 * echo server marks its TX slots STACKMAP_F_ZC, swaps a spare buffer in
 * for every buffer reported STACKMAP_F_LOAN and takes lent buffers back
 * from the TX-done ring.  Two clients stop reading, so buffers stay lent
 * in their sockets' queues; one checks every byte of its echo, the other
 * is the target of hostile use of lent buffers (written to while lent,
 * named again with F_ZC, a done-ring head out of range).  Every loan must
 * be answered by one done entry.  Last, a port owner with buffers lent is
 * SIGKILLed: the module must stay in use (rmmod refused) until the peer
 * goes away and the network stack frees the lent pages, then be free.
 *
 * With --expect-plug (our kernels, whose kernel/patches/ has the transmit
 * plug) the loopback device first gets fq_codel as its root qdisc (it has
 * none: packets on lo would never reach a qdisc, so never be plugged), and
 * the first phase's traffic must show the TX sync's plug at work: packets
 * held back (stats tx_plugged) and, through the echo checks, every one of
 * them delivered when the plug is finished.  lo gets its default (no
 * qdisc) back for the later phases.
 *
 * Output: one "PASS name" or "FAIL name: why" line per check, and a final
 * "RINGTEST PASS" or "RINGTEST FAIL n"; the exit status is non-zero on
 * failure.  Built with `gcc -static -std=c11 -O2 -Wall -Wextra -Werror`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

#include "../include/uapi/stackmap.h"

#define MAXFD 4096		/* server-side descriptors we track */
#define N_PROCS 4		/* echo client processes */
#define N_CONNS 32		/* connections per echo process */
#define N_ROUNDS 3		/* request/response rounds per connection */
#define LARGE_BYTES (300 * 1024)	/* one large value, echoed */
#define STALL_BYTES (2 * 1024 * 1024)	/* echoed to a client not reading */
#define CLIENT_TIMEOUT_S 60	/* socket timeouts in clients (TCG is slow) */

/* ------------------------------------------------------------ checks */

static int failures;

static void check(bool ok, const char *name, const char *fmt, ...)
{
	if (ok) {
		printf("PASS %s\n", name);
	} else {
		va_list ap;

		failures++;
		printf("FAIL %s: ", name);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		printf("\n");
	}
	fflush(stdout);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------ the port */

static int pfd = -1;			/* /dev/stackmap */
static struct stackmap_reg reg;		/* registration results */
static uint8_t *mem;			/* mapped port memory */
static struct stackmap_ring *rx, *tx;	/* the rings */
static uint32_t tx_done;		/* first TX slot whose result is unread */
static uint32_t res_flags[STACKMAP_MAX_SLOTS];	/* last TX result per slot */
static int32_t res_aux[STACKMAP_MAX_SLOTS];
static uint32_t rx_shadow[STACKMAP_MAX_SLOTS];	/* good index of a tampered RX
						 * slot + 1 (0: not tampered) */
static struct stackmap_done_ring *done;	/* TX-done ring (zero-copy port) */
static bool zc_mode;			/* echo with F_ZC, buffer swaps */
#define ZC_MAXBUFS 4096
static bool lent[ZC_MAXBUFS];		/* buffer reported F_LOAN, not back */
static int lent_fd[ZC_MAXBUFS];		/* ... to which connection */
static long lent_seq[ZC_MAXBUFS];	/* ... as which loan (zcnt.loans then) */
static uint32_t pool[ZC_MAXBUFS];	/* spare buffers (not in any slot) */
static uint32_t npool;
static struct {
	long loans;		/* F_LOAN results */
	long returned;		/* done-ring entries */
	long copied;		/* ... flagged COPIED */
	long unexpected;	/* done entries for buffers not lent */
	long zc_slots;		/* slots queued with F_ZC */
} zcnt;

static uint8_t *buf_of(uint32_t idx)
{
	return mem + reg.bufs_ofs + (size_t)idx * reg.buf_size;
}

static uint32_t ring_next(const struct stackmap_ring *r, uint32_t i)
{
	return i + 1 == r->num_slots ? 0 : i + 1;
}

static uint32_t ring_dist(const struct stackmap_ring *r, uint32_t from, uint32_t to)
{
	return to >= from ? to - from : to + r->num_slots - from;
}

static uint32_t ld_tail(struct stackmap_ring *r)
{
	return __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
}

/* TX slots the application may still fill. */
static uint32_t tx_free(void)
{
	return ring_dist(tx, tx->head, ld_tail(tx));
}

static struct stackmap_stats get_stats(void)
{
	struct stackmap_stats st;

	memset(&st, 0, sizeof(st));
	if (ioctl(pfd, STACKMAP_IOC_STATS, &st) < 0)
		check(false, "stats-ioctl", "%s", strerror(errno));
	return st;
}

static int port_open_flags(uint32_t flags)
{
	pfd = open(STACKMAP_DEVICE, O_RDWR | O_CLOEXEC);
	if (pfd < 0)
		return -1;
	memset(&reg, 0, sizeof(reg));
	reg.version = STACKMAP_VERSION;
	reg.rx_slots = 256;
	reg.tx_slots = 256;
	reg.buf_size = 2048;
	reg.num_bufs = 2048;
	reg.flags = flags;
	if (ioctl(pfd, STACKMAP_IOC_REGISTER, &reg) < 0)
		return -1;
	mem = mmap(NULL, reg.mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, pfd, 0);
	if (mem == MAP_FAILED)
		return -1;
	rx = (struct stackmap_ring *)(mem + reg.rx_ring_ofs);
	tx = (struct stackmap_ring *)(mem + reg.tx_ring_ofs);
	tx_done = tx->head;
	done = reg.done_ring_ofs ? (struct stackmap_done_ring *)(mem + reg.done_ring_ofs) : NULL;
	npool = 0;
	for (uint32_t i = reg.first_free_buf; i < reg.num_bufs && i < ZC_MAXBUFS; i++)
		pool[npool++] = i;
	memset(lent, 0, sizeof(lent));
	return 0;
}

static int port_open(void)
{
	return port_open_flags(0);
}

/* The buffer of TX slot @pos: a lent buffer left its slot when the loan
 * was reported (UINT32_MAX there: no spare was left); take a spare now,
 * or UINT32_MAX when there is none (wait for the done ring). */
static uint32_t tx_buf(uint32_t pos)
{
	struct stackmap_slot *s = &tx->slots[pos];

	if (s->buf_idx == UINT32_MAX) {
		if (!npool)
			return UINT32_MAX;
		s->buf_idx = pool[--npool];
	}
	return s->buf_idx;
}

/* Take back what the done ring returns. */
static void done_reap(void)
{
	uint32_t n, h, t;

	if (!done)
		return;
	n = done->num_entries;
	h = done->head;
	t = __atomic_load_n(&done->tail, __ATOMIC_ACQUIRE);
	while (h != t && h < n) {
		uint32_t e = done->bufs[h], idx = e & STACKMAP_DONE_IDX;

		zcnt.returned++;
		if (e & STACKMAP_DONE_COPIED)
			zcnt.copied++;
		if (idx >= ZC_MAXBUFS || !lent[idx]) {
			zcnt.unexpected++;
		} else {
			lent[idx] = false;
			pool[npool++] = idx;
		}
		h = h + 1 == n ? 0 : h + 1;
	}
	__atomic_store_n(&done->head, h, __ATOMIC_RELEASE);
}

/* Buffers reported lent and not back yet (to @fd, or any when -1). */
static long lent_now(int fd)
{
	long k = 0;

	for (uint32_t i = 0; i < ZC_MAXBUFS; i++)
		if (lent[i] && (fd < 0 || lent_fd[i] == fd))
			k++;
	return k;
}

/* ------------------------------------------------------------ echo server */

/* A byte queue with a read offset (no memmove per chunk). */
struct bq {
	uint8_t *p;	/* storage */
	size_t off;	/* first unread byte */
	size_t len;	/* end of data */
	size_t cap;	/* allocated */
};

static void bq_append(struct bq *q, const void *d, size_t n)
{
	if (q->off && q->off == q->len)
		q->off = q->len = 0;
	if (q->len + n > q->cap) {
		if (q->off) {
			memmove(q->p, q->p + q->off, q->len - q->off);
			q->len -= q->off;
			q->off = 0;
		}
		if (q->len + n > q->cap) {
			q->cap = (q->len + n) * 2;
			q->p = realloc(q->p, q->cap);
			if (!q->p)
				abort();
		}
	}
	memcpy(q->p + q->len, d, n);
	q->len += n;
}

static size_t bq_size(const struct bq *q)
{
	return q->len - q->off;
}

static void bq_free(struct bq *q)
{
	free(q->p);
	memset(q, 0, sizeof(*q));
}

/* Server-side state of one connection (indexed by fd). */
struct conn {
	bool open;		/* reported NEW, not yet closed */
	bool blocked;		/* AGAIN seen, waiting for WRITABLE */
	bool close_req;		/* EOF/ERR seen: close once pend is sent */
	struct bq pend;		/* bytes to echo, not yet in TX slots */
	struct bq back;		/* unsent remnants from the last sync */
};

static struct conn conns[MAXFD];
static int listen_fd = -1;

/* Server counters (what the rings told us). */
static struct {
	long accepted;		/* NEW slots */
	long new_bad_aux;	/* NEW slots whose aux was not the listener */
	long eofs;		/* EOF slots */
	long errs;		/* ERR slots (RX or TX) */
	long writable;		/* WRITABLE slots */
	long again;		/* AGAIN results */
	long rx_bad;		/* BAD RX slots */
	long tx_bad;		/* BAD TX results */
	long swaps;		/* echoes done by swapping an RX buffer into TX */
	long not_done;		/* TX slots handed back without DONE */
	long closes;		/* CLOSE requests queued */
	long bytes_in;		/* data bytes received */
} cnt;

static bool echo_enabled = true;	/* off while the hostile phase owns TX */

/* Put one slot at TX head and advance it (caller checked tx_free()). */
static void tx_put(uint32_t idx, uint32_t off, uint32_t len, int32_t fd, uint32_t flags)
{
	struct stackmap_slot *s = &tx->slots[tx->head];

	s->buf_idx = idx;
	s->offset = off;
	s->len = len;
	s->fd = fd;
	s->flags = flags;
	s->aux = 0;
	tx->head = tx->cur = ring_next(tx, tx->head);
}

static void conn_close(int fd)
{
	bq_free(&conns[fd].pend);
	bq_free(&conns[fd].back);
	memset(&conns[fd], 0, sizeof(conns[fd]));
}

/* Move pending echo bytes into free TX slots; queue CLOSE when drained. */
static void flush_pending(void)
{
	for (int fd = 0; fd < MAXFD; fd++) {
		struct conn *c = &conns[fd];

		if (!c->open || c->blocked)
			continue;
		while (bq_size(&c->pend) && tx_free()) {
			uint32_t b = tx_buf(tx->head);
			size_t n = bq_size(&c->pend);

			if (b == UINT32_MAX)
				break;	/* every spare is lent */
			if (n > reg.buf_size)
				n = reg.buf_size;
			memcpy(buf_of(b), c->pend.p + c->pend.off, n);
			c->pend.off += n;
			tx_put(b, 0, (uint32_t)n, fd, zc_mode ? STACKMAP_F_ZC : 0);
			zcnt.zc_slots += zc_mode;
		}
		if (c->close_req && !bq_size(&c->pend) && tx_free() &&
		    tx_buf(tx->head) != UINT32_MAX) {
			tx_put(tx->slots[tx->head].buf_idx, 0, 0, fd, STACKMAP_F_CLOSE);
			cnt.closes++;
			conn_close(fd);	/* the kernel closes the fd in this sync */
		}
	}
}

/* Read the results of every TX slot handed back by the last sync. */
static void tx_results(void)
{
	static int touched[256];
	int ntouched = 0;

	for (uint32_t i = tx_done; i != tx->head; i = ring_next(tx, i)) {
		struct stackmap_slot *s = &tx->slots[i];
		uint32_t f = s->flags, bidx = s->buf_idx;
		int fd = s->fd;

		res_flags[i] = f;
		res_aux[i] = s->aux;
		s->flags = 0;
		if (!(f & STACKMAP_F_DONE))
			cnt.not_done++;
		if ((f & STACKMAP_F_LOAN) && bidx < ZC_MAXBUFS) {
			if (lent[bidx])
				zcnt.unexpected++;	/* lent twice */
			lent[bidx] = true;
			lent_fd[bidx] = fd;
			zcnt.loans++;
			lent_seq[bidx] = zcnt.loans;
			/* Swap at once: the lent buffer must be in no slot when
			 * the done ring gives it back to the pool.  (It may
			 * still be read: the AGAIN remainder below.) */
			s->buf_idx = npool ? pool[--npool] : UINT32_MAX;
		}
		if (f & STACKMAP_F_BAD) {
			cnt.tx_bad++;
			continue;
		}
		if (fd < 0 || fd >= MAXFD || !conns[fd].open)
			continue;
		if (f & STACKMAP_F_AGAIN) {
			struct conn *c = &conns[fd];

			cnt.again++;
			c->blocked = true;
			if (!bq_size(&c->back) && ntouched < 256)
				touched[ntouched++] = fd;
			bq_append(&c->back, buf_of(bidx) + s->offset, s->len);
		} else if (f & STACKMAP_F_ERR) {
			if (cnt.errs++ < 3)
				printf("INFO TX error on fd %d: %s\n", fd, strerror(s->aux));
			conns[fd].close_req = true;
		}
	}
	tx_done = tx->head;
	/* Unsent remnants go back in front of what is still pending. */
	for (int k = 0; k < ntouched; k++) {
		struct conn *c = &conns[touched[k]];

		bq_append(&c->back, c->pend.p + c->pend.off, bq_size(&c->pend));
		bq_free(&c->pend);
		c->pend = c->back;
		memset(&c->back, 0, sizeof(c->back));
	}
}

/* Consume every RX slot the application owns. */
static void rx_process(void)
{
	uint32_t h = rx->head, t = ld_tail(rx);

	while (h != t) {
		struct stackmap_slot *s = &rx->slots[h];
		uint32_t f = s->flags, len = s->len;
		int fd = s->fd;

		if (f & STACKMAP_F_BAD) {
			cnt.rx_bad++;
		} else if (fd < 0 || fd >= MAXFD) {
			check(false, "rx-fd-range", "fd %d flags %#x", fd, f);
		} else if ((f & STACKMAP_F_NEW) && (f & STACKMAP_F_ERR)) {
			if (cnt.errs++ < 3)
				printf("INFO accept error on fd %d: %s\n", fd, strerror(s->aux));
		} else if (f & STACKMAP_F_NEW) {
			conn_close(fd);
			conns[fd].open = true;
			cnt.accepted++;
			/* A small, fixed send buffer, so that large echoes to
			 * clients that do not read at once really hit AGAIN
			 * (loopback autotuning would otherwise absorb them). */
			setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int){ 32768 }, sizeof(int));
			if (s->aux != listen_fd)
				cnt.new_bad_aux++;
		} else if (!conns[fd].open) {
			/* e.g. events for a connection we already closed */
		} else if (f & STACKMAP_F_WRITABLE) {
			cnt.writable++;
			conns[fd].blocked = false;
		} else if (f & (STACKMAP_F_EOF | STACKMAP_F_ERR)) {
			if (f & STACKMAP_F_EOF)
				cnt.eofs++;
			else if (cnt.errs++ < 3)
				printf("INFO RX error on fd %d: %s\n", fd, strerror(s->aux));
			conns[fd].close_req = true;
		} else if (len) {
			struct conn *c = &conns[fd];

			cnt.bytes_in += len;
			if (echo_enabled && !zc_mode && !bq_size(&c->pend) && !c->blocked &&
			    tx_free() && len <= reg.buf_size) {
				/* Zero-copy echo: swap the RX buffer into TX. */
				uint32_t spare = tx->slots[tx->head].buf_idx;

				tx_put(s->buf_idx, s->offset, len, fd, 0);
				s->buf_idx = spare;
				cnt.swaps++;
			} else {
				bq_append(&c->pend, buf_of(s->buf_idx) + s->offset, len);
			}
		}
		if (rx_shadow[h]) {
			/* We had put a bad index here: give the slot its buffer back. */
			s->buf_idx = rx_shadow[h] - 1;
			rx_shadow[h] = 0;
		}
		h = ring_next(rx, h);
	}
	rx->head = rx->cur = h;
}

/* One server iteration: queue TX, sync (poll when idle), read results. */
static int server_step(int wait_ms)
{
	int r;

	if (echo_enabled)
		flush_pending();
	if (wait_ms > 0 && tx->head == tx_done) {
		struct pollfd p = { .fd = pfd, .events = POLLIN };

		r = poll(&p, 1, wait_ms);
		if (r > 0 && (p.revents & POLLERR))
			r = -1;
	} else {
		r = ioctl(pfd, STACKMAP_IOC_SYNC, 0);
	}
	tx_results();
	rx_process();
	done_reap();
	return r;
}

/* ------------------------------------------------------------ clients */

static uint16_t lport;	/* the listener's port */

/*
 * A client socket connected to the test listener.  @rcvbuf > 0: that
 * receive buffer, set before connecting, so that the window the handshake
 * announces is already that small (set afterwards, the window announced
 * from the default buffer stays open: Linux does not shrink a window).
 */
static int connect_lo_rcvbuf(int rcvbuf)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(lport) };
	struct timeval tv = { .tv_sec = CLIENT_TIMEOUT_S };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (rcvbuf > 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int connect_lo(void)
{
	return connect_lo_rcvbuf(0);
}

static int write_full(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n) {
		ssize_t w = write(fd, b, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

static int read_full(int fd, void *p, size_t n)
{
	uint8_t *b = p;

	while (n) {
		ssize_t r = read(fd, b, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

/* Expect EOF (read returns 0) within the socket timeout. */
static int expect_eof(int fd)
{
	char c;
	ssize_t r;

	do
		r = read(fd, &c, 1);
	while (r < 0 && errno == EINTR);
	return r == 0 ? 0 : -1;
}

static void fill_pattern(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 11));
}

/* N_CONNS connections, N_ROUNDS interleaved request/echo rounds each. */
static int client_many(int id)
{
	int fds[N_CONNS];
	char msg[128], got[128];

	for (int i = 0; i < N_CONNS; i++) {
		fds[i] = connect_lo();
		if (fds[i] < 0)
			return 10;
	}
	for (int r = 0; r < N_ROUNDS; r++) {
		for (int i = 0; i < N_CONNS; i++) {
			int n = snprintf(msg, sizeof(msg), "proc %d conn %d round %d\n", id, i, r);

			if (write_full(fds[i], msg, (size_t)n))
				return 11;
		}
		for (int i = 0; i < N_CONNS; i++) {
			int n = snprintf(msg, sizeof(msg), "proc %d conn %d round %d\n", id, i, r);

			if (read_full(fds[i], got, (size_t)n) || memcmp(msg, got, (size_t)n))
				return 12;
		}
	}
	/* Half-close: the server sees EOF and closes; we must then see EOF. */
	for (int i = 0; i < N_CONNS; i++)
		shutdown(fds[i], SHUT_WR);
	for (int i = 0; i < N_CONNS; i++) {
		if (expect_eof(fds[i]))
			return 13;
		close(fds[i]);
	}
	return 0;
}

/* Send @n bytes while reading the echo concurrently is NOT done: the
 * server has to hold the echo; then read it all back and compare. */
static int client_bulk(size_t n, unsigned seed, int ready_fd, int go_fd)
{
	uint8_t *out = malloc(n), *in = malloc(n);
	int fd = connect_lo(), ret = 0;
	char c = 'r';

	if (!out || !in || fd < 0)
		return 20;
	if (ready_fd >= 0) {
		/* The staller: a small, fixed receive buffer, so the echo of
		 * what it sends cannot all fit in TCP's buffers. */
		int small = 16384;

		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	}
	fill_pattern(out, n, seed);
	if (write_full(fd, out, n))
		ret = 21;
	if (!ret && ready_fd >= 0 && write(ready_fd, &c, 1) != 1)
		ret = 22;
	if (!ret && go_fd >= 0 && read(go_fd, &c, 1) != 1)
		ret = 23;
	if (!ret && read_full(fd, in, n))
		ret = 24;
	if (!ret && memcmp(in, out, n))
		ret = 25;
	if (!ret) {
		shutdown(fd, SHUT_WR);
		if (expect_eof(fd))
			ret = 26;
	}
	close(fd);
	free(out);
	free(in);
	return ret;
}

/* Peer close right after a request: the server gets data then EOF. */
static int client_close(void)
{
	int fd = connect_lo();
	char got[8];

	if (fd < 0)
		return 30;
	if (write_full(fd, "bye\n", 4) || read_full(fd, got, 4) || memcmp(got, "bye\n", 4))
		return 31;
	close(fd);
	return 0;
}

/* The same, after a pause (so that the server is already asleep). */
static int client_close_late(void)
{
	usleep(300 * 1000);
	return client_close();
}

static pid_t spawn(int (*fn)(void *), void *arg)
{
	pid_t p = fork();

	if (p == 0) {
		/* Hold no server-side socket: our copies would keep them open. */
		if (pfd >= 0)
			close(pfd);
		pfd = -1;
		for (int fd = 0; fd < MAXFD; fd++) {
			if (conns[fd].open)
				close(fd);
			conns[fd].open = false;
		}
		if (listen_fd >= 0)
			close(listen_fd);
		listen_fd = -1;
		_exit(fn(arg));
	}
	return p;
}

static int wait_child(pid_t p)
{
	int st;

	if (waitpid(p, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int run_many(void *a) { return client_many((int)(intptr_t)a); }
static int run_large(void *a) { (void)a; return client_bulk(LARGE_BYTES, 7, -1, -1); }
static int run_close(void *a) { (void)a; return client_close(); }
static int run_close_late(void *a) { (void)a; return client_close_late(); }

/* The staller and its two pipes (ready: staller -> controller, go: back). */
static int stall_ready[2], stall_go[2];

static int run_staller(void *a)
{
	(void)a;
	close(stall_ready[0]);
	close(stall_go[1]);
	return client_bulk(STALL_BYTES, 3, stall_ready[1], stall_go[0]);
}

/*
 * The controller sequences the clients while the parent serves: first a
 * client that stops reading, then (while it is stalled) everyone else.
 * Exit status: bit 0 staller failed, bit 1 others failed, bit 2 others
 * finished while the staller was still stalled (expected: set).
 */
static int controller(void *a)
{
	pid_t staller, many[N_PROCS], large, closer;
	int bad_others = 0, code = 0;
	char c;

	(void)a;
	if (pipe(stall_ready) || pipe(stall_go))
		return 1;
	staller = spawn(run_staller, NULL);
	close(stall_ready[1]);
	close(stall_go[0]);
	if (read(stall_ready[0], &c, 1) != 1) {
		fprintf(stderr, "staller exit %d before sending all\n", wait_child(staller));
		return 1;	/* staller could not even send */
	}

	for (int i = 0; i < N_PROCS; i++)
		many[i] = spawn(run_many, (void *)(intptr_t)i);
	large = spawn(run_large, NULL);
	closer = spawn(run_close, NULL);
	for (int i = 0; i < N_PROCS; i++) {
		int r = wait_child(many[i]);

		if (r) {
			fprintf(stderr, "many[%d] exit %d\n", i, r);
			bad_others = 1;
		}
	}
	int rl = wait_child(large), rc = wait_child(closer);

	if (rl || rc) {
		fprintf(stderr, "large exit %d, close exit %d\n", rl, rc);
		bad_others = 1;
	}
	if (waitpid(staller, NULL, WNOHANG) == 0)
		code |= 4;	/* still stalled while all others were served */
	if (write(stall_go[1], "g", 1) != 1)
		return 1;
	if (wait_child(staller))
		code |= 1;
	if (bad_others)
		code |= 2;
	return code;
}

/* ------------------------------------------------------------ helpers */

static bool is_test_port(unsigned int port);

/*
 * TCP sockets (any state but TIME_WAIT) with a local or remote port this
 * test listened on.  Unlike the global "TCP: inuse", other processes in the
 * guest (a running stackmapd, the host's forwarded connections) do not
 * change it.
 */
static long test_sockets(void)
{
	static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	long n = 0;

	for (unsigned int i = 0; i < 2; i++) {
		FILE *f = fopen(files[i], "r");
		char line[512];

		if (!f)
			continue;
		while (fgets(line, sizeof(line), f)) {
			char la[64], ra[64];
			unsigned int st;
			char *lc, *rc;

			if (sscanf(line, " %*d: %63s %63s %x", la, ra, &st) != 3)
				continue;
			lc = strrchr(la, ':');
			rc = strrchr(ra, ':');
			if (!lc || !rc || st == 0x06)	/* TIME_WAIT holds nothing */
				continue;
			if (is_test_port((unsigned int)strtoul(lc + 1, NULL, 16)) ||
			    is_test_port((unsigned int)strtoul(rc + 1, NULL, 16)))
				n++;
		}
		fclose(f);
	}
	return n;
}

static long sockstat_tcp_inuse(void)
{
	FILE *f = fopen("/proc/net/sockstat", "r");
	char line[256];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "TCP: inuse %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

static long vmalloc_used_kb(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmallocUsed: %ld kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* Every port this test listened on: its sockets are the ones it must release. */
static int test_ports[64];
static int n_test_ports;

static int make_listener(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 1024) ||
	    getsockname(fd, (struct sockaddr *)&a, &al))
		return -1;
	lport = ntohs(a.sin_port);
	if (n_test_ports < (int)(sizeof(test_ports) / sizeof(test_ports[0])))
		test_ports[n_test_ports++] = lport;
	return fd;
}

/* Serve until @n NEW slots in total have been seen (or timeout). */
static bool serve_until_accepted(long n, double timeout)
{
	double end = now_s() + timeout;

	while (cnt.accepted < n && now_s() < end)
		server_step(50);
	return cnt.accepted >= n;
}

/* ------------------------------------------------------------ hostile */

/* The client of the connection the hostile slots aim at: reads all. */
static int run_peer(void *a)
{
	int fd = connect_lo();
	char got[64];
	size_t n = 0;
	ssize_t r;

	(void)a;
	if (fd < 0)
		return 40;
	while (n < sizeof(got) && (r = read(fd, got + n, sizeof(got) - n)) > 0)
		n += (size_t)r;
	if (n != 4 || memcmp(got, "ABok", 4)) {
		fprintf(stderr, "peer got %zu bytes: %.*s\n", n, (int)n, got);
		return 41;
	}
	return 0;
}

/* Submit slots [first, tx->head) and sync; returns the ioctl result. */
static int hostile_sync(void)
{
	int r = ioctl(pfd, STACKMAP_IOC_SYNC, 0);

	tx_results();
	rx_process();
	return r;
}

/* One hostile TX slot; expects BAD with @why and one more bad_slots. */
static void hostile_slot(const char *name, uint32_t idx, uint32_t off, uint32_t len,
			 int32_t fd, int32_t why)
{
	struct stackmap_stats a = get_stats(), b;
	uint32_t pos = tx->head, keep = tx->slots[pos].buf_idx;
	int r;

	tx_put(idx, off, len, fd, 0);
	r = hostile_sync();
	tx->slots[pos].buf_idx = keep;	/* our buffer back in its slot */
	b = get_stats();
	check(r >= 0 && (res_flags[pos] & STACKMAP_F_BAD) && res_aux[pos] == why &&
	      b.bad_slots == a.bad_slots + 1 && b.sendmsgs == a.sendmsgs,
	      name, "sync %d flags %#x aux %d (want %d) bad_slots %llu->%llu sendmsgs %llu->%llu",
	      r, res_flags[pos], res_aux[pos], why,
	      (unsigned long long)a.bad_slots, (unsigned long long)b.bad_slots,
	      (unsigned long long)a.sendmsgs, (unsigned long long)b.sendmsgs);
}

static int run_foreign(void *a)
{
	/* A child with the port fd inherited (but not the mapping). */
	int port = (int)(intptr_t)a;
	struct stackmap_attach at = { .fd = 0 };
	int e1, e2, e3;

	errno = 0;
	e1 = ioctl(port, STACKMAP_IOC_SYNC, 0) < 0 ? errno : 0;
	e2 = ioctl(port, STACKMAP_IOC_ATTACH, &at) < 0 ? errno : 0;
	e3 = mmap(NULL, 4096, PROT_READ, MAP_SHARED, port, 0) == MAP_FAILED ? errno : 0;
	return (e1 == EPERM && e2 == EPERM && e3 == EPERM) ? 0 : 50;
}

/* A child holding a socket under a high fd number the parent lacks. */
static int foreign_fd_ready[2];

static int run_fdholder(void *a)
{
	int fd = connect_lo();

	(void)a;
	if (fd < 0 || dup2(fd, 900) < 0)
		return 60;
	if (write(foreign_fd_ready[1], "x", 1) != 1)
		return 61;
	pause();	/* until the parent kills us */
	return 0;
}

static void hostile_phase(void)
{
	struct stackmap_stats a, b;
	int pipefd[2], udp, unconn, r, afd = -1;
	long acc0;
	pid_t peer, foreign, holder;
	uint32_t pos, good;
	struct stackmap_attach at;

	echo_enabled = false;

	/* A connection to aim at. */
	acc0 = cnt.accepted;
	peer = spawn(run_peer, NULL);
	if (!serve_until_accepted(acc0 + 1, 30)) {
		check(false, "hostile-setup", "peer not accepted");
		return;
	}
	for (int fd = 0; fd < MAXFD; fd++)
		if (conns[fd].open)
			afd = fd;	/* the most recent is the only open one */
	check(afd >= 0, "hostile-setup", "no open connection");
	if (afd < 0)
		return;

	if (pipe(pipefd) || pipe(foreign_fd_ready)) {
		check(false, "hostile-setup", "pipe");
		return;
	}
	udp = socket(AF_INET, SOCK_DGRAM, 0);
	unconn = socket(AF_INET, SOCK_STREAM, 0);

	/* Attach must refuse what is not a connected/listening TCP socket. */
	at.flags = 0;
	at.fd = pipefd[0];
	r = ioctl(pfd, STACKMAP_IOC_ATTACH, &at);
	check(r < 0 && errno == ENOTSOCK, "attach-pipe-refused", "r %d errno %d", r, errno);
	at.fd = udp;
	r = ioctl(pfd, STACKMAP_IOC_ATTACH, &at);
	check(r < 0 && errno == EPROTONOSUPPORT, "attach-udp-refused", "r %d errno %d", r, errno);
	at.fd = unconn;
	r = ioctl(pfd, STACKMAP_IOC_ATTACH, &at);
	check(r < 0 && errno == ENOTCONN, "attach-unconnected-refused", "r %d errno %d", r, errno);
	at.fd = afd;
	r = ioctl(pfd, STACKMAP_IOC_ATTACH, &at);
	check(r < 0 && errno == EEXIST, "attach-twice-refused", "r %d errno %d", r, errno);
	at.fd = 900;
	r = ioctl(pfd, STACKMAP_IOC_ATTACH, &at);
	check(r < 0 && errno == EBADF, "attach-badfd-refused", "r %d errno %d", r, errno);

	/* A valid slot, a bad one in the middle of the run, a valid one. */
	good = tx->slots[tx->head].buf_idx;
	a = get_stats();
	buf_of(good)[0] = 'A';
	tx_put(good, 0, 1, afd, 0);
	pos = tx->head;
	uint32_t keep = tx->slots[pos].buf_idx;
	tx_put(reg.num_bufs + 5, 0, 1, afd, 0);
	uint32_t good2 = tx->slots[tx->head].buf_idx;
	buf_of(good2)[3] = 'B';
	tx_put(good2, 3, 1, afd, 0);
	r = hostile_sync();
	tx->slots[pos].buf_idx = keep;
	b = get_stats();
	check(r >= 0 && (res_flags[pos] & STACKMAP_F_BAD) && res_aux[pos] == STACKMAP_BAD_INDEX &&
	      b.bad_slots == a.bad_slots + 1,
	      "bad-index-in-run", "flags %#x aux %d", res_flags[pos], res_aux[pos]);

	hostile_slot("bad-index-max", 0xFFFFFFFFu, 0, 1, afd, STACKMAP_BAD_INDEX);
	hostile_slot("bad-index-num-bufs", reg.num_bufs, 0, 1, afd, STACKMAP_BAD_INDEX);
	hostile_slot("bad-length-past-buffer", 0, reg.buf_size - 10, 11, afd, STACKMAP_BAD_LENGTH);
	hostile_slot("bad-length-huge", 0, 0, reg.buf_size + 1, afd, STACKMAP_BAD_LENGTH);
	hostile_slot("bad-offset-overflow", 0, 0xFFFFFFF0u, 0x20, afd, STACKMAP_BAD_LENGTH);
	hostile_slot("bad-fd-pipe", 0, 0, 1, pipefd[1], STACKMAP_BAD_NOT_ATTACHED);
	hostile_slot("bad-fd-udp", 0, 0, 1, udp, STACKMAP_BAD_NOT_ATTACHED);
	hostile_slot("bad-fd-unattached-tcp", 0, 0, 1, unconn, STACKMAP_BAD_NOT_ATTACHED);
	hostile_slot("bad-fd-negative", 0, 0, 1, -5, STACKMAP_BAD_FD);
	hostile_slot("bad-fd-listener", 0, 0, 1, listen_fd, STACKMAP_BAD_LISTENER);
	hostile_slot("bad-fd-closed", 0, 0, 1, 4000, STACKMAP_BAD_NOT_ATTACHED);

	/* An fd number that only exists in another process. */
	holder = spawn(run_fdholder, NULL);
	{
		char c;

		close(foreign_fd_ready[1]);
		r = (int)read(foreign_fd_ready[0], &c, 1);
		close(foreign_fd_ready[0]);
		check(r == 1 && fcntl(900, F_GETFD) < 0, "fd-holder-child",
		      "child did not get ready (or fd 900 is open here)");
		hostile_slot("bad-fd-other-process", 0, 0, 1, 900, STACKMAP_BAD_NOT_ATTACHED);
		kill(holder, SIGKILL);
		wait_child(holder);
	}

	/* An attached fd number reused for a pipe behind the port's back. */
	{
		long acc1 = cnt.accepted;
		pid_t victim = spawn(run_close, NULL);
		int vfd = -1;

		serve_until_accepted(acc1 + 1, 30);
		for (int fd = 0; fd < MAXFD; fd++)
			if (conns[fd].open && fd != afd)
				vfd = fd;
		if (vfd >= 0 && dup2(pipefd[0], vfd) == vfd) {
			hostile_slot("bad-fd-reused-number", 0, 0, 1, vfd, STACKMAP_BAD_FD);
			close(vfd);
			conn_close(vfd);
		} else {
			check(false, "bad-fd-reused-number", "no victim connection");
		}
		/* The victim's socket stays attached until the port closes;
		 * its client waits for an echo it never gets: kill it. */
		kill(victim, SIGKILL);
		wait_child(victim);
	}

	/* Heads beyond the ring: the sync is refused, counted, and the head is
	 * put back where the kernel last saw it -- so first let the kernel see
	 * the current heads (slots released since the last sync, e.g. by the
	 * victim's EOF above, would otherwise make "where it last saw it" an
	 * older position than h0). */
	r = ioctl(pfd, STACKMAP_IOC_SYNC, 0);
	a = get_stats();
	uint32_t h0 = tx->head;
	tx->head = tx->num_slots + 3;
	r = ioctl(pfd, STACKMAP_IOC_SYNC, 0);
	b = get_stats();
	check(r < 0 && errno == EINVAL && b.bad_heads == a.bad_heads + 1 && tx->head == h0,
	      "bad-tx-head", "r %d errno %d bad_heads %llu head %u (was %u)", r, errno,
	      (unsigned long long)b.bad_heads, tx->head, h0);
	tx->cur = tx->head;

	r = ioctl(pfd, STACKMAP_IOC_SYNC, 0);
	a = get_stats();
	h0 = rx->head;
	rx->head = 0xFFFFFFF0u;
	r = ioctl(pfd, STACKMAP_IOC_SYNC, 0);
	b = get_stats();
	check(r < 0 && errno == EINVAL && b.bad_heads == a.bad_heads + 1 && rx->head == h0,
	      "bad-rx-head", "r %d errno %d bad_heads %llu", r, errno,
	      (unsigned long long)b.bad_heads);
	/* An RX head that passes the kernel's tail (releases unfilled slots). */
	r = ioctl(pfd, STACKMAP_IOC_SYNC, 0);
	a = get_stats();
	h0 = rx->head;
	rx->head = ring_next(rx, ring_next(rx, ld_tail(rx)));
	r = ioctl(pfd, STACKMAP_IOC_SYNC, 0);
	b = get_stats();
	check(r < 0 && errno == EINVAL && b.bad_heads == a.bad_heads + 1 && rx->head == h0,
	      "bad-rx-head-past-tail", "r %d errno %d", r, errno);
	rx->cur = rx->head;

	/* The port from another process: refused. */
	foreign = fork();
	if (foreign == 0)
		_exit(run_foreign((void *)(intptr_t)pfd));
	check(wait_child(foreign) == 0, "foreign-process-refused", "child could use the port");

	/* Bad buffer indices in every kernel-owned RX slot: the kernel must
	 * hand them back flagged BAD (and read nothing into them); once we
	 * restore them, a new client's data gets through. */
	{
		long bad0, in0;
		pid_t pinger;
		double end;

		for (int i = 0; i < 5; i++)
			server_step(20);	/* absorb the killed children's EOFs */
		a = get_stats();
		bad0 = cnt.rx_bad;
		in0 = cnt.bytes_in;
		for (uint32_t i = ld_tail(rx); ring_next(rx, i) != rx->head; i = ring_next(rx, i)) {
			rx_shadow[i] = rx->slots[i].buf_idx + 1;
			rx->slots[i].buf_idx = 0xFFFFFF00u + (i & 0xff);
		}
		echo_enabled = true;
		pinger = spawn(run_close, NULL);
		end = now_s() + 30;
		while (cnt.bytes_in < in0 + 4 && now_s() < end)
			server_step(50);
		b = get_stats();
		check(cnt.rx_bad > bad0 && b.bad_slots - a.bad_slots == (unsigned long long)(cnt.rx_bad - bad0) &&
		      cnt.bytes_in >= in0 + 4,
		      "bad-rx-index", "rx_bad %ld->%ld bad_slots %llu->%llu bytes %ld->%ld",
		      bad0, cnt.rx_bad, (unsigned long long)a.bad_slots,
		      (unsigned long long)b.bad_slots, in0, cnt.bytes_in);
		end = now_s() + 30;
		while (waitpid(pinger, &r, WNOHANG) == 0 && now_s() < end)
			server_step(50);
		check(WIFEXITED(r) && WEXITSTATUS(r) == 0, "port-works-after-hostile",
		      "client status %#x", r);
		echo_enabled = false;
	}

	/* A blocking sync sleeps until a connection arrives, then returns. */
	{
		pid_t late;
		double end;
		int st = -1;

		for (int i = 0; i < 5; i++)
			server_step(20);
		echo_enabled = true;
		a = get_stats();
		late = spawn(run_close_late, NULL);
		r = ioctl(pfd, STACKMAP_IOC_SYNC, STACKMAP_SYNC_WAIT);
		tx_results();
		rx_process();
		b = get_stats();
		check(r > 0 && b.waits > a.waits, "sync-wait-blocks-then-returns",
		      "r %d waits %llu->%llu", r, (unsigned long long)a.waits,
		      (unsigned long long)b.waits);
		end = now_s() + 30;
		while (waitpid(late, &st, WNOHANG) == 0 && now_s() < end)
			server_step(50);
		check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "sync-wait-client-served",
		      "client status %#x", st);
		r = ioctl(pfd, STACKMAP_IOC_SYNC, 0x80);
		check(r < 0 && errno == EINVAL, "sync-bad-flags-refused", "r %d", r);
		echo_enabled = false;
	}

	/* Finally "ok" and a close to the peer: it must have seen exactly "ABok". */
	{
		uint32_t idx = tx->slots[tx->head].buf_idx;
		double end = now_s() + 30;
		int st = -1;

		memcpy(buf_of(idx), "ok", 2);
		tx_put(idx, 0, 2, afd, STACKMAP_F_CLOSE);
		conn_close(afd);
		hostile_sync();
		while (waitpid(peer, &st, WNOHANG) == 0 && now_s() < end)
			server_step(50);
		check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "hostile-sent-nothing",
		      "peer status %#x (it must see exactly \"ABok\")", st);
	}
	close(pipefd[0]);
	close(pipefd[1]);
	close(udp);
	close(unconn);
	echo_enabled = true;
}

/* ------------------------------------------------------------ kill test */

/* A child that owns a port with a live connection and gets SIGKILLed:
 * the client must see its connection closed (the port released it). */
static int kill_sync[2];

static int run_doomed(void *a)
{
	(void)a;
	close(kill_sync[0]);
	if (port_open())
		return 70;
	struct stackmap_attach at = { .fd = listen_fd };

	if (ioctl(pfd, STACKMAP_IOC_ATTACH, &at))
		return 71;
	/* Serve (accept) until a connection is there, then say so and idle. */
	for (int i = 0; i < 600; i++) {
		struct pollfd p = { .fd = pfd, .events = POLLIN };

		if (poll(&p, 1, 100) > 0 && rx->head != ld_tail(rx)) {
			if (write(kill_sync[1], "k", 1) != 1)
				return 72;
			pause();
		}
	}
	return 73;
}

static void kill_test(void)
{
	int cfd, dl;
	pid_t doomed;
	char c;
	int st;

	if (pipe(kill_sync)) {
		check(false, "kill-releases", "pipe");
		return;
	}
	dl = make_listener();	/* a listener of its own (lport changes) */
	listen_fd = dl;
	doomed = fork();
	if (doomed == 0) {
		pfd = -1;
		_exit(run_doomed(NULL));
	}
	close(kill_sync[1]);
	cfd = connect_lo();
	if (cfd < 0 || read(kill_sync[0], &c, 1) != 1) {
		check(false, "kill-releases", "doomed server did not accept");
		kill(doomed, SIGKILL);
		waitpid(doomed, &st, 0);
		return;
	}
	kill(doomed, SIGKILL);
	waitpid(doomed, &st, 0);
	/* The accepted socket's only holders were the dead process's fd table
	 * and its port: the client must now see EOF. */
	check(expect_eof(cfd) == 0, "kill-releases-connections", "no EOF after SIGKILL");
	close(cfd);
	close(dl);
	close(kill_sync[0]);
}

/* ------------------------------------------------------------ zero-copy TX */

#define ZC_BYTES (1024 * 1024)	/* echoed to each stalled client */

static int zc_ready[2], zc_go[2];	/* clients -> parent, parent -> clients */

/* Stalls like the staller, then checks every byte of its echo. */
static int run_zc_checker(void *a)
{
	(void)a;
	close(zc_ready[0]);
	close(zc_go[1]);
	return client_bulk(ZC_BYTES, 11, zc_ready[1], zc_go[0]);
}

/* Stalls too; its lent buffers are abused, so it only counts bytes. */
static int run_zc_victim(void *a)
{
	uint8_t *out = malloc(ZC_BYTES), buf[65536];
	int fd = connect_lo_rcvbuf(16384);
	size_t got = 0;
	ssize_t r;
	char c = 'r';

	(void)a;
	close(zc_ready[0]);
	close(zc_go[1]);
	if (!out || fd < 0)
		return 80;
	fill_pattern(out, ZC_BYTES, 12);
	if (write_full(fd, out, ZC_BYTES) || write(zc_ready[1], &c, 1) != 1 ||
	    read(zc_go[0], &c, 1) != 1)
		return 81;
	while (got < ZC_BYTES && (r = read(fd, buf, sizeof(buf))) > 0)
		got += (size_t)r;
	shutdown(fd, SHUT_WR);
	while ((r = read(fd, buf, sizeof(buf))) > 0)	/* whatever the hostile slots added */
		;
	close(fd);
	free(out);
	return got >= ZC_BYTES ? 0 : 82;
}

/* The fd of the connection whose lent buffers are the most, other than @not. */
static int zc_busiest(int not)
{
	int best = -1;
	long most = 0;

	for (int fd = 0; fd < MAXFD; fd++) {
		long k = conns[fd].open && fd != not ? lent_now(fd) : 0;

		if (k > most) {
			most = k;
			best = fd;
		}
	}
	return best;
}

/* A buffer lent to @fd, or UINT32_MAX. */
/*
 * A buffer still lent to connection @fd: the one lent last.  The victim's
 * window is small from its handshake on (connect_lo_rcvbuf), so the first
 * of what it is sent is delivered and acknowledged -- those loans end, on
 * loopback the stack copies what it delivers -- and the rest waits unsent
 * in the send queue, lent, while the victim does not read.  Loans that
 * ended are published at the next sync, so this cannot see them; the last
 * loan is in that unsent tail.  The done ring is reaped first all the same.
 */
static uint32_t zc_lent_buf(int fd)
{
	uint32_t best = UINT32_MAX;

	done_reap();
	for (uint32_t i = 0; i < ZC_MAXBUFS; i++)
		if (lent[i] && lent_fd[i] == fd && (best == UINT32_MAX || lent_seq[i] > lent_seq[best]))
			best = i;
	return best;
}

static void zc_phase(void)
{
	struct stackmap_attach at = { 0 };
	struct stackmap_stats a, b;
	pid_t checker, victim;
	int rc1, rc2, vfd, cfd;
	double end;
	char c;

	/* Registration: unknown flags and a non-zero done_ring_ofs refused. */
	{
		int p = open(STACKMAP_DEVICE, O_RDWR | O_CLOEXEC), e1, e2;
		struct stackmap_reg r = { .version = STACKMAP_VERSION, .rx_slots = 64,
					  .tx_slots = 64, .buf_size = 2048, .num_bufs = 256 };

		r.flags = 0x80;
		e1 = ioctl(p, STACKMAP_IOC_REGISTER, &r) < 0 ? errno : 0;
		r.flags = STACKMAP_REG_ZC;
		r.done_ring_ofs = 4096;
		e2 = ioctl(p, STACKMAP_IOC_REGISTER, &r) < 0 ? errno : 0;
		close(p);
		check(e1 == EINVAL && e2 == EINVAL, "zc-register-flags-checked",
		      "errno %d / %d, want EINVAL", e1, e2);
	}
	for (int fd = 0; fd < MAXFD; fd++)
		conn_close(fd);
	memset(&cnt, 0, sizeof(cnt));
	check(port_open_flags(STACKMAP_REG_ZC) == 0 && done, "zc-register", "%s", strerror(errno));
	if (!done)
		return;
	check(done->num_entries == reg.num_bufs + 1 && done->head == 0 && done->tail == 0 &&
	      reg.done_ring_ofs >= reg.tx_ring_ofs && reg.done_ring_ofs < reg.bufs_ofs,
	      "zc-done-ring-layout", "entries %u head %u tail %u ofs %u", done->num_entries,
	      done->head, done->tail, reg.done_ring_ofs);
	{
		uint64_t v1[14];

		check(ioctl(pfd, STACKMAP_IOC_STATS_V1, v1) == 0, "stats-v1-ioctl", "%s",
		      strerror(errno));
	}
	{
		uint64_t v2[20];

		check(ioctl(pfd, STACKMAP_IOC_STATS_V2, v2) == 0, "stats-v2-ioctl", "%s",
		      strerror(errno));
	}
	listen_fd = make_listener();
	at.fd = listen_fd;
	check(ioctl(pfd, STACKMAP_IOC_ATTACH, &at) == 0, "zc-attach", "%s", strerror(errno));
	zc_mode = true;

	/* Two clients that stop reading, with 1 MiB echoed to each. */
	if (pipe(zc_ready) || pipe(zc_go)) {
		check(false, "zc-pipes", "%s", strerror(errno));
		return;
	}
	/* The checker first, alone, so that its connection is known. */
	fcntl(zc_ready[0], F_SETFL, O_NONBLOCK);
	checker = spawn(run_zc_checker, NULL);
	cfd = vfd = -1;
	{
		int ready = 0;

		end = now_s() + 120;
		while (now_s() < end && (ready < 1 || zc_busiest(-1) < 0)) {
			server_step(20);
			while (read(zc_ready[0], &c, 1) == 1)
				ready++;
		}
		cfd = zc_busiest(-1);
		victim = spawn(run_zc_victim, NULL);
		close(zc_ready[1]);
		close(zc_go[0]);
		while (now_s() < end && (ready < 2 || zc_busiest(cfd) < 0)) {
			server_step(20);
			while (read(zc_ready[0], &c, 1) == 1)
				ready++;
		}
		vfd = zc_busiest(cfd);
		check(ready == 2, "zc-clients-stalled", "%d of 2 ready", ready);
	}
	a = get_stats();
	printf("INFO zc stalled: %ld buffers lent (%ld to the checker, %ld to the victim), "
	       "%ld loans, %ld returned so far, %llu fallbacks\n", lent_now(-1), lent_now(cfd),
	       lent_now(vfd), zcnt.loans, zcnt.returned, (unsigned long long)a.zc_fallback);
	check(cfd >= 0 && vfd >= 0 && lent_now(cfd) > 0 && lent_now(vfd) > 0,
	      "zc-lent-while-peer-stalls", "lent %ld", lent_now(-1));
	if (vfd >= 0) {
		uint32_t lb = zc_lent_buf(vfd), pos;

		/* 1. Write into a lent buffer: only our own data suffers. */
		if (lb != UINT32_MAX)
			memset(buf_of(lb), 0xAA, reg.buf_size);
		/* 2. Name a lent buffer again with F_ZC: copied, never lent twice. */
		a = get_stats();
		pos = tx->head;
		if (lb != UINT32_MAX && tx_free()) {
			uint32_t keep = tx->slots[pos].buf_idx;

			tx_put(lb, 0, 100, vfd, STACKMAP_F_ZC);
			hostile_sync();
			tx->slots[pos].buf_idx = keep;
		}
		b = get_stats();
		check(lb != UINT32_MAX && !(res_flags[pos] & STACKMAP_F_LOAN) &&
		      b.zc_fallback == a.zc_fallback + 1 && zcnt.unexpected == 0,
		      "zc-lent-buffer-not-lent-twice", "buf %u flags %#x fallback %llu->%llu",
		      lb, res_flags[pos], (unsigned long long)a.zc_fallback,
		      (unsigned long long)b.zc_fallback);
		/* 3. A done-ring head out of range: counted, reset, port fine. */
		done_reap();
		a = get_stats();
		done->head = done->num_entries + 5;
		check(ioctl(pfd, STACKMAP_IOC_SYNC, 0) >= 0, "zc-bad-done-head-sync", "%s",
		      strerror(errno));
		tx_results();
		rx_process();
		b = get_stats();
		check(b.bad_heads == a.bad_heads + 1 && done->head < done->num_entries,
		      "zc-bad-done-head", "bad_heads %llu->%llu head %u",
		      (unsigned long long)a.bad_heads, (unsigned long long)b.bad_heads, done->head);
		done_reap();
	}

	/* Let them read: everything must arrive, every loan come back. */
	if (write(zc_go[1], "gg", 2) != 2)
		check(false, "zc-go", "%s", strerror(errno));
	end = now_s() + 120;
	rc1 = rc2 = -1;
	while (now_s() < end && (rc1 < 0 || rc2 < 0)) {
		int st;

		server_step(20);
		if (rc1 < 0 && waitpid(checker, &st, WNOHANG) == checker)
			rc1 = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
		if (rc2 < 0 && waitpid(victim, &st, WNOHANG) == victim)
			rc2 = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	}
	end = now_s() + 30;
	while (now_s() < end && (lent_now(-1) || cnt.eofs < 2))
		server_step(20);
	for (int i = 0; i < 5; i++)
		server_step(20);
	check(rc1 == 0, "zc-stalled-client-gets-every-byte", "checker exit %d", rc1);
	check(rc2 == 0, "zc-victim-served", "victim exit %d", rc2);
	b = get_stats();
	printf("INFO zc: %ld F_ZC slots, %llu zc sendmsgs, %llu bytes lent, %llu loans, "
	       "%llu returned (%llu copied by the stack), %llu fallbacks\n", zcnt.zc_slots,
	       (unsigned long long)b.zc_sends, (unsigned long long)b.zc_bytes,
	       (unsigned long long)b.zc_lent, (unsigned long long)b.zc_returned,
	       (unsigned long long)b.zc_copied, (unsigned long long)b.zc_fallback);
	check(lent_now(-1) == 0 && zcnt.unexpected == 0 && zcnt.loans == zcnt.returned &&
	      b.zc_lent == (unsigned long long)zcnt.loans && b.zc_returned == b.zc_lent,
	      "zc-every-loan-returned-once", "still lent %ld, unexpected %ld, loans %ld/%llu, "
	      "returned %ld/%llu", lent_now(-1), zcnt.unexpected, zcnt.loans,
	      (unsigned long long)b.zc_lent, zcnt.returned, (unsigned long long)b.zc_returned);
	zc_mode = false;
	munmap(mem, reg.mem_size);
	close(pfd);
	pfd = -1;
	done = NULL;
	for (int fd = 0; fd < MAXFD; fd++)
		if (conns[fd].open) {
			close(fd);
			conn_close(fd);
		}
	close(listen_fd);
	listen_fd = -1;
	close(zc_ready[0]);
	close(zc_go[1]);
}

/* The module's reference count (/sys/module/stackmap/refcnt), -1 unknown. */
static long module_refcnt(void)
{
	FILE *f = fopen("/sys/module/stackmap/refcnt", "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

/* A port owner with buffers lent to a client that does not read. */
static int run_zc_doomed(void *a)
{
	static uint8_t chunk[2048];
	double end = now_s() + 60;

	(void)a;
	close(kill_sync[0]);
	memset(&cnt, 0, sizeof(cnt));
	memset(&zcnt, 0, sizeof(zcnt));
	if (port_open_flags(STACKMAP_REG_ZC))
		return 90;
	struct stackmap_attach at = { .fd = listen_fd };

	if (ioctl(pfd, STACKMAP_IOC_ATTACH, &at))
		return 91;
	zc_mode = true;
	memset(chunk, 0x5A, sizeof(chunk));
	while (now_s() < end) {
		server_step(20);
		for (int fd = 0; fd < MAXFD; fd++)
			if (conns[fd].open && !conns[fd].blocked && bq_size(&conns[fd].pend) < 65536)
				bq_append(&conns[fd].pend, chunk, sizeof(chunk));
		if (lent_now(-1) > 0 && cnt.again > 0) {
			if (write(kill_sync[1], "k", 1) != 1)
				return 92;
			pause();
		}
	}
	return 93;
}

static void zc_kill_test(void)
{
	long ref0 = module_refcnt(), ref1, ref2;
	int cfd, dl, st, small = 4096, busy_errno = 0;
	pid_t doomed;
	double end;
	char c;

	if (pipe(kill_sync)) {
		check(false, "zc-kill", "pipe");
		return;
	}
	dl = make_listener();
	listen_fd = dl;
	doomed = fork();
	if (doomed == 0) {
		pfd = -1;
		_exit(run_zc_doomed(NULL));
	}
	close(kill_sync[1]);
	cfd = connect_lo();
	if (cfd >= 0)
		setsockopt(cfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	if (cfd < 0 || read(kill_sync[0], &c, 1) != 1) {
		check(false, "zc-kill-with-loans", "doomed owner never had buffers lent");
		kill(doomed, SIGKILL);
		waitpid(doomed, &st, 0);
		return;
	}
	kill(doomed, SIGKILL);
	waitpid(doomed, &st, 0);
	/* The port is released; its lent pages are still in cfd's peer's
	 * queue.  The module must stay in use. */
	ref1 = module_refcnt();
	if (ref0 == 0 && ref1 > 0)
		busy_errno = syscall(SYS_delete_module, "stackmap", O_NONBLOCK) < 0 ? errno : 0;
	check(ref1 == ref0 + 1 && (ref0 != 0 || busy_errno == EWOULDBLOCK),
	      "zc-rmmod-refused-while-lent", "refcnt %ld -> %ld, delete_module errno %d",
	      ref0, ref1, busy_errno);
	/* The peer goes away (unread data: RST): the stack frees the pages. */
	close(cfd);
	end = now_s() + 30;
	while ((ref2 = module_refcnt()) != ref0 && now_s() < end)
		usleep(100 * 1000);
	check(ref2 == ref0, "zc-loans-end-with-the-peer", "refcnt %ld, was %ld", ref2, ref0);
	close(dl);
	close(kill_sync[0]);
	listen_fd = -1;
}

static bool is_test_port(unsigned int port)
{
	for (int i = 0; i < n_test_ports; i++)
		if ((unsigned int)test_ports[i] == port)
			return true;
	return false;
}

/*
 * `tc qdisc replace dev IFNAME root KIND` through rtnetlink (the guest has
 * no tc); KIND NULL: `tc qdisc del dev IFNAME root` (back to the default).
 * Returns 0 or -errno.
 */
static int set_root_qdisc(const char *ifname, const char *kind)
{
	struct {
		struct nlmsghdr nh;	/* RTM_NEWQDISC, create or replace, ack */
		struct tcmsg tc;	/* device, root parent */
		char attrs[64];		/* TCA_KIND */
	} req;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct {
		struct nlmsghdr nh;	/* NLMSG_ERROR */
		struct nlmsgerr err;	/* 0: the ack */
	} ack;
	struct rtattr *rta;
	size_t klen = kind ? strlen(kind) + 1 : 0;
	unsigned int ifindex = if_nametoindex(ifname);
	int fd, ret;

	if (!ifindex)
		return -errno;
	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_type = kind ? RTM_NEWQDISC : RTM_DELQDISC;
	req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (kind ? NLM_F_CREATE | NLM_F_REPLACE : 0);
	req.nh.nlmsg_seq = 1;
	req.tc.tcm_family = AF_UNSPEC;
	req.tc.tcm_ifindex = (int)ifindex;
	req.tc.tcm_parent = TC_H_ROOT;
	req.nh.nlmsg_len = (unsigned int)NLMSG_LENGTH(sizeof(req.tc));
	if (kind) {
		rta = (struct rtattr *)req.attrs;
		rta->rta_type = TCA_KIND;
		rta->rta_len = (unsigned short)RTA_LENGTH(klen);
		memcpy(RTA_DATA(rta), kind, klen);
		req.nh.nlmsg_len += RTA_ALIGN(rta->rta_len);
	}
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -errno;
	if (sendto(fd, &req, req.nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0 ||
	    recv(fd, &ack, sizeof(ack), 0) < (ssize_t)sizeof(ack))
		ret = -errno;
	else
		ret = ack.nh.nlmsg_type == NLMSG_ERROR ? ack.err.error : -EPROTO;
	close(fd);
	return ret;
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
	bool expect_plug = argc > 1 && strcmp(argv[1], "--expect-plug") == 0;
	struct stackmap_attach at;
	struct stackmap_stats st;
	long vm0 = vmalloc_used_kb(), tcp0 = sockstat_tcp_inuse();
	long expect_conns = 1 + N_PROCS * N_CONNS + 1 + 1;
	pid_t ctl;
	int status = -1;
	double end;

	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 2 || (argc == 2 && !expect_plug)) {
		fprintf(stderr, "usage: %s [--expect-plug]\n", argv[0]);
		return 2;
	}
	if (expect_plug) {
		int r = set_root_qdisc("lo", "fq_codel");

		check(r == 0, "lo-qdisc-fq_codel", "%s", strerror(-r));
	}

	check(port_open() == 0, "open-register-mmap", "%s", strerror(errno));
	if (failures)
		goto out;
	printf("INFO port: rx %u tx %u slots, %u bufs of %u bytes, %llu bytes mapped\n",
	       reg.rx_slots, reg.tx_slots, reg.num_bufs, reg.buf_size,
	       (unsigned long long)reg.mem_size);
	check(rx->num_slots == reg.rx_slots && tx->num_slots == reg.tx_slots &&
	      tx->tail == tx->num_slots - 1 && rx->tail == 0, "ring-layout", "bad initial rings");
	{
		struct stackmap_reg again = reg;

		check(ioctl(pfd, STACKMAP_IOC_REGISTER, &again) < 0 && errno == EBUSY,
		      "register-twice-refused", "errno %d", errno);
	}

	listen_fd = make_listener();
	at.fd = listen_fd;
	at.flags = 0;
	check(listen_fd >= 0 && ioctl(pfd, STACKMAP_IOC_ATTACH, &at) == 0, "attach-listener",
	      "%s", strerror(errno));
	if (failures)
		goto out;

	/* Phase 1: the clients, served through the rings only. */
	ctl = spawn(controller, NULL);
	end = now_s() + 600;
	while (now_s() < end) {
		if (server_step(50) < 0 && errno != EINTR) {
			check(false, "sync", "%s", strerror(errno));
			break;
		}
		if (waitpid(ctl, &status, WNOHANG) == ctl)
			break;
	}
	if (now_s() >= end) {
		kill(ctl, SIGKILL);
		check(false, "clients-finished", "timeout");
	}
	/* Let the last EOFs arrive and the CLOSEs go out. */
	end = now_s() + 30;
	while (cnt.eofs < expect_conns && now_s() < end)
		server_step(50);
	for (int i = 0; i < 5; i++)
		server_step(20);

	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 255;

	check(!(code & 2) && code != 255, "many-connections-large-and-close",
	      "controller status %d", code);
	check(!(code & 1) && code != 255, "stalled-client-gets-everything", "status %d", code);
	check((code & 4) != 0, "no-stall-of-others", "others finished only after the staller");
	check(cnt.accepted == expect_conns && cnt.new_bad_aux == 0, "accepted-all",
	      "%ld of %ld (bad aux %ld)", cnt.accepted, expect_conns, cnt.new_bad_aux);
	check(cnt.eofs == expect_conns, "eof-flags", "%ld EOF slots for %ld connections",
	      cnt.eofs, expect_conns);
	check(cnt.again > 0 && cnt.writable > 0, "again-and-writable",
	      "again %ld writable %ld", cnt.again, cnt.writable);
	check(cnt.tx_bad == 0 && cnt.rx_bad == 0 && cnt.errs == 0 && cnt.not_done == 0,
	      "no-bad-slots-when-honest", "tx_bad %ld rx_bad %ld errs %ld not_done %ld",
	      cnt.tx_bad, cnt.rx_bad, cnt.errs, cnt.not_done);
	st = get_stats();
	check(st.attached == 1 && st.closes == (unsigned long long)cnt.closes &&
	      st.accepts == (unsigned long long)expect_conns, "port-counters",
	      "attached %llu closes %llu/%ld accepts %llu", (unsigned long long)st.attached,
	      (unsigned long long)st.closes, cnt.closes, (unsigned long long)st.accepts);
	/* The echo checks above saw every byte: whatever the plug held back
	 * was sent when the sync finished it. */
	if (expect_plug) {
		int r = set_root_qdisc("lo", NULL);

		check(st.tx_plugged > 0, "tx-plug-holds-packets",
		      "tx_plugged %llu after %llu sendmsgs through fq_codel",
		      (unsigned long long)st.tx_plugged, (unsigned long long)st.sendmsgs);
		/* The later phases (hostile rings, zero-copy loans timed
		 * against stalled readers) were written for lo's default. */
		check(r == 0, "lo-qdisc-default-again", "%s", strerror(-r));
	}
	printf("INFO stats: syncs %llu waits %llu tx_slots %llu rx_slots %llu "
	       "(%.1f slots/sync) tx_bytes %llu rx_bytes %llu sendmsgs %llu recvmsgs %llu "
	       "tx_plugged %llu again %llu swaps %ld\n",
	       (unsigned long long)st.syncs, (unsigned long long)st.waits,
	       (unsigned long long)st.tx_slots, (unsigned long long)st.rx_slots,
	       st.syncs ? (double)(st.tx_slots + st.rx_slots) / st.syncs : 0.0,
	       (unsigned long long)st.tx_bytes, (unsigned long long)st.rx_bytes,
	       (unsigned long long)st.sendmsgs, (unsigned long long)st.recvmsgs,
	       (unsigned long long)st.tx_plugged, (unsigned long long)st.tx_again, cnt.swaps);

	/* Phase 2: hostile rings. */
	hostile_phase();
	st = get_stats();
	printf("INFO after hostile: bad_slots %llu bad_heads %llu attached %llu\n",
	       (unsigned long long)st.bad_slots, (unsigned long long)st.bad_heads,
	       (unsigned long long)st.attached);

	/* Detach: unknown fd refused, the listener comes off the port. */
	{
		struct stackmap_attach d = { .fd = 4000 };
		int r1 = ioctl(pfd, STACKMAP_IOC_DETACH, &d), e1 = errno, r2;
		struct stackmap_stats s0 = get_stats(), s1;

		d.fd = listen_fd;
		r2 = ioctl(pfd, STACKMAP_IOC_DETACH, &d);
		s1 = get_stats();
		check(r1 < 0 && e1 == ENOENT && r2 == 0 && s1.attached == s0.attached - 1,
		      "detach", "r1 %d errno %d r2 %d attached %llu->%llu", r1, e1, r2,
		      (unsigned long long)s0.attached, (unsigned long long)s1.attached);
	}

	/* Phase 3: release.  Close the port and every descriptor we got. */
	munmap(mem, reg.mem_size);
	close(pfd);
	pfd = -1;
	for (int fd = 3; fd < MAXFD; fd++)
		if (fd != listen_fd && fd != STDOUT_FILENO && fd != STDERR_FILENO)
			close(fd);
	close(listen_fd);
	kill_test();
	zc_phase();
	zc_kill_test();

	end = now_s() + 30;
	long tcp1;

	while ((tcp1 = test_sockets()) > 0 && now_s() < end)
		usleep(100 * 1000);
	check(tcp1 == 0, "sockets-released", "%ld TCP sockets of this test still open (TCP inuse %ld, was %ld)",
	      tcp1, sockstat_tcp_inuse(), tcp0);
	long vm1 = vmalloc_used_kb();

	check(vm1 >= 0 && vm1 - vm0 < 1024, "port-memory-freed", "VmallocUsed %ld kB, was %ld kB",
	      vm1, vm0);
out:
	if (failures)
		printf("RINGTEST FAIL %d\n", failures);
	else
		printf("RINGTEST PASS\n");
	return failures ? 1 : 0;
}
