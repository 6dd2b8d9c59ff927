// SPDX-License-Identifier: GPL-2.0
/*
 * sm_sync.c -- the data path: one sync moves a whole batch.
 *
 * A sync (STACKMAP_IOC_SYNC or poll) does, in the application's process
 * context and under the port mutex:
 *   1. TX: every slot from the kernel's position up to the application's
 *      new head is read once, checked, gathered with the following slots
 *      of the same connection, and handed to TCP with one sendmsg per run
 *      of slots (MSG_DONTWAIT: the data is copied into the socket's send
 *      buffer).  A full send buffer never stalls the ring: the unsent
 *      remainder is described back in the slot (STACKMAP_F_AGAIN), later
 *      slots of that connection in this sync are not sent (so the stream
 *      stays in order), and a WRITABLE slot is posted when TCP frees space.
 *      All TX slots are handed back when the sync returns.
 *   2. RX: the application's released slots are taken back, then the
 *      ready list is walked in order: listeners accept, connections are
 *      read with recvmsg(MSG_DONTWAIT) straight into the buffers of free
 *      RX slots (at most SM_RX_PER_SOCK buffers per connection before the
 *      next one gets its turn), with EOF/ERR slots when a stream ends.
 *   3. With STACKMAP_SYNC_WAIT, sleep only if the application owns no RX
 *      slot and no unread TX-done entry, until an upcall queues an event
 *      or a lent buffer comes back.
 * Before all that, buffers lent by earlier syncs and since released by TCP
 * are published in the TX-done ring (sm_zc.c); TX slots flagged
 * STACKMAP_F_ZC on a zero-copy port are gathered into runs of their own
 * and sent with MSG_ZEROCOPY instead of being copied.
 *
 * Everything read from the shared rings is untrusted: each field is read
 * once (READ_ONCE into a local), indices and lengths are bounds-checked,
 * and a slot's fd must name, in the calling process, the very socket that
 * is attached to this port under that number.  A slot that fails is
 * flagged STACKMAP_F_BAD, counted, and never followed.  A head outside the
 * ring refuses the whole sync (-EINVAL, counted) and resets that ring's
 * head to the kernel's position, so the port keeps working.
 */
#include <linux/file.h>
#include <linux/fdtable.h>
#include <linux/netdevice.h>
#include <linux/socket.h>
#include <linux/sched/signal.h>
#include <linux/wait.h>

#include "sm_int.h"

static inline u32 sm_next(u32 i, u32 n)
{
	return i + 1 == n ? 0 : i + 1;
}

/* Slots from @from up to (not including) @to on a ring of @n. */
static inline u32 sm_dist(u32 from, u32 to, u32 n)
{
	return to >= from ? to - from : to + n - from;
}

/* RX slots the application owns (filled and not yet released). */
u32 sm_rx_avail(struct sm_port *port)
{
	return sm_dist(port->rx.hwcur, port->rx.hwtail, port->rx.num);
}

/* RX slots the kernel may fill (one stays empty to tell full from empty). */
static u32 sm_rx_space(struct sm_port *port)
{
	return port->rx.num - 1 - sm_rx_avail(port);
}

bool sm_rx_pending(struct sm_port *port)
{
	unsigned long flags;
	bool ret;

	spin_lock_irqsave(&port->lock, flags);
	ret = !list_empty(&port->ready);
	spin_unlock_irqrestore(&port->lock, flags);
	return ret;
}

/* A head outside the ring: count it and put the ring back in order. */
static int sm_bad_head(struct sm_port *port, struct sm_kring *kr)
{
	port->st.bad_heads++;
	WRITE_ONCE(kr->ring->head, kr->hwcur);
	WRITE_ONCE(kr->ring->cur, kr->hwcur);
	return -EINVAL;
}

/* ---------------------------------------------------------------- TX */

static void sm_tx_result(struct sm_port *port, const struct sm_txslot *t,
			 u32 flags, s32 aux)
{
	struct stackmap_slot *s = &port->tx.ring->slots[t->pos];

	WRITE_ONCE(s->aux, aux);
	WRITE_ONCE(s->flags, (t->flags & (STACKMAP_F_CLOSE | STACKMAP_F_ZC)) |
		   STACKMAP_F_DONE | flags);
}

static void sm_tx_bad(struct sm_port *port, const struct sm_txslot *t, s32 why)
{
	port->st.bad_slots++;
	sm_tx_result(port, t, STACKMAP_F_BAD, why);
}

/* Close requested by the application: detach, then close its descriptor. */
static void sm_tx_close(struct sm_port *port, struct sm_att *att)
{
	struct file *mine = att->file, *now;
	int fd = att->fd;

	now = fget(fd);
	sm_detach(port, att);	/* drops our reference; att is gone */
	if (now) {
		bool same = now == mine;

		fput(now);
		if (same)
			close_fd(fd);
	}
	port->st.closes++;
}

static void sm_tx_flush(struct sm_port *port, struct sm_txgroup *g)
{
	struct sm_att *att = g->att;
	u64 syncno = port->st.syncs;
	size_t sent = 0;
	bool lent = false;
	int err = 0;
	u32 k;

	if (!g->n)
		return;
	if (g->zc && (att->blocked_sync == syncno || !g->bytes)) {
		for (k = 0; k < g->n; k++)
			sm_zc_unmark(port, g->s[k].buf_idx);
		g->zc = false;
	}
	if (att->blocked_sync == syncno) {
		err = -EAGAIN;	/* an earlier run of this sync hit a full buffer */
	} else if (g->zc && (err = sm_zc_send(port, g, &lent)) != -ENOBUFS) {
		port->st.sendmsgs++;
		if (err >= 0) {
			sent = err;
			port->st.tx_bytes += sent;
			err = sent < g->bytes ? -EAGAIN : 0;
		}
	} else if (g->bytes) {
		struct msghdr msg = { .msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL };
		int r;

		if (g->zc) {	/* no notifier free: copy this run */
			port->st.zc_fallback += g->n;
			for (k = 0; k < g->n; k++)
				sm_zc_unmark(port, g->s[k].buf_idx);
			err = 0;
		}

		for (k = 0; k < g->n; k++) {
			port->kv[k].iov_base = port->bufs +
				(size_t)g->s[k].buf_idx * port->buf_size + g->s[k].offset;
			port->kv[k].iov_len = g->s[k].len;
		}
		r = kernel_sendmsg(att->sock, &msg, port->kv, g->n, g->bytes);
		port->st.sendmsgs++;
		if (r >= 0) {
			sent = r;
			port->st.tx_bytes += r;
			if (sent < g->bytes)
				err = -EAGAIN;
		} else {
			err = r;
		}
	}

	for (k = 0; k < g->n; k++) {
		struct sm_txslot *t = &g->s[k];
		struct stackmap_slot *s = &port->tx.ring->slots[t->pos];
		u32 loan = lent && sent && t->len ? STACKMAP_F_LOAN : 0;

		if (sent >= t->len) {
			sent -= t->len;
			sm_tx_result(port, t, loan, 0);
			continue;
		}
		/* Not (entirely) sent: describe what is left. */
		WRITE_ONCE(s->offset, t->offset + (u32)sent);
		WRITE_ONCE(s->len, t->len - (u32)sent);
		sent = 0;
		if (err == -EAGAIN) {
			port->st.tx_again++;
			sm_tx_result(port, t, STACKMAP_F_AGAIN | loan, 0);
		} else {
			sm_tx_result(port, t, STACKMAP_F_ERR | loan, -err);
		}
	}
	if (err == -EAGAIN && att->blocked_sync != syncno) {
		att->blocked_sync = syncno;
		sm_arm_write(att);
	}
	if (g->close)
		sm_tx_close(port, att);
	g->n = 0;
	g->bytes = 0;
	g->close = false;
	g->zc = false;
	g->att = NULL;
}

/* Check a slot's fd: the socket attached to this port under that number. */
static struct sm_att *sm_tx_lookup(struct sm_port *port, s32 fd, s32 *why)
{
	struct sm_att *att;
	struct file *f;
	bool same;

	if (fd < 0) {
		*why = STACKMAP_BAD_FD;
		return NULL;
	}
	att = xa_load(&port->atts, fd);
	if (!att) {
		*why = STACKMAP_BAD_NOT_ATTACHED;
		return NULL;
	}
	f = fget(fd);
	same = f == att->file;
	if (f)
		fput(f);
	if (!same) {
		*why = STACKMAP_BAD_FD;
		return NULL;
	}
	if (att->listener) {
		*why = STACKMAP_BAD_LISTENER;
		return NULL;
	}
	return att;
}

static int sm_txsync(struct sm_port *port)
{
	struct sm_kring *kr = &port->tx;
	struct stackmap_slot *slots = kr->ring->slots;
	struct sm_txgroup *g = &port->txg;
	u32 head = READ_ONCE(kr->ring->head);
	u32 i;
#ifdef HAVE_NETDEV_XMIT_PLUG
	/* Our kernel's transmit plug (kernel/patches/0001-*): this sync's
	 * packets reach the driver as one burst, one device notification.
	 */
	struct netdev_xmit_plug plug;
#endif

	if (head >= kr->num)
		return sm_bad_head(port, kr);

#ifdef HAVE_NETDEV_XMIT_PLUG
	netdev_xmit_plug_start(&plug);
#endif
	for (i = kr->hwcur; i != head; i = sm_next(i, kr->num)) {
		struct sm_txslot t;
		struct sm_att *att;
		s32 why;

		t.pos = i;
		t.buf_idx = READ_ONCE(slots[i].buf_idx);
		t.len = READ_ONCE(slots[i].len);
		t.offset = READ_ONCE(slots[i].offset);
		t.fd = READ_ONCE(slots[i].fd);
		t.flags = READ_ONCE(slots[i].flags);
		t.zc = false;
		port->st.tx_slots++;

		if (t.buf_idx >= port->num_bufs) {
			sm_tx_bad(port, &t, STACKMAP_BAD_INDEX);
			continue;
		}
		if ((u64)t.offset + t.len > port->buf_size) {
			sm_tx_bad(port, &t, STACKMAP_BAD_LENGTH);
			continue;
		}
		if (g->n && g->att->fd == t.fd) {
			att = g->att;	/* checked for this run already */
		} else {
			sm_tx_flush(port, g);
			att = sm_tx_lookup(port, t.fd, &why);
			if (!att) {
				sm_tx_bad(port, &t, why);
				continue;
			}
			g->att = att;
		}
		if ((t.flags & STACKMAP_F_ZC) && port->zc && t.len)
			t.zc = sm_zc_want(port, att, t.buf_idx);
		if (g->n && g->zc != t.zc)
			sm_tx_flush(port, g);	/* runs are all lent or all copied */
		if (!g->n) {
			g->att = att;
			g->zc = t.zc;
		}
		g->s[g->n++] = t;
		g->bytes += t.len;
		if (t.flags & STACKMAP_F_CLOSE) {
			g->close = true;
			sm_tx_flush(port, g);
		} else if (g->n == SM_TX_BATCH) {
			sm_tx_flush(port, g);
		}
	}
	sm_tx_flush(port, g);
#ifdef HAVE_NETDEV_XMIT_PLUG
	netdev_xmit_plug_finish(&plug);
	port->st.tx_plugged += plug.packets;
#endif

	kr->hwcur = head;
	kr->hwtail = head ? head - 1 : kr->num - 1;
	smp_store_release(&kr->ring->tail, kr->hwtail);
	return 0;
}

/* ---------------------------------------------------------------- RX */

/* Fill the RX slot at the kernel's tail and hand it over. */
static void sm_rx_post(struct sm_port *port, s32 fd, u32 len, u32 flags, s32 aux)
{
	struct sm_kring *kr = &port->rx;
	struct stackmap_slot *s = &kr->ring->slots[kr->hwtail];

	WRITE_ONCE(s->len, len);
	WRITE_ONCE(s->offset, 0);
	WRITE_ONCE(s->fd, fd);
	WRITE_ONCE(s->aux, aux);
	WRITE_ONCE(s->flags, flags);
	kr->hwtail = sm_next(kr->hwtail, kr->num);
	port->st.rx_slots++;
}

/* Outcomes of sm_rx_read besides a byte count. */
#define SM_RX_BADSLOT	(-1000)	/* the slot's buffer index was bad */

/*
 * Read one buffer's worth from @att into the next RX slot's buffer.
 * Returns bytes (>0, slot posted), 0 at EOF (EOF slot posted),
 * SM_RX_BADSLOT (BAD slot posted, nothing read), -EAGAIN (nothing posted)
 * or -errno (ERR slot posted).
 */
static int sm_rx_read(struct sm_port *port, struct sm_att *att)
{
	struct stackmap_slot *s = &port->rx.ring->slots[port->rx.hwtail];
	u32 idx = READ_ONCE(s->buf_idx);
	struct msghdr msg = { .msg_flags = MSG_DONTWAIT };
	struct kvec kv;
	int r;

	if (idx >= port->num_bufs) {
		port->st.bad_slots++;
		sm_rx_post(port, -1, 0, STACKMAP_F_BAD, STACKMAP_BAD_INDEX);
		return SM_RX_BADSLOT;
	}
	kv.iov_base = port->bufs + (size_t)idx * port->buf_size;
	kv.iov_len = port->buf_size;
	r = kernel_recvmsg(att->sock, &msg, &kv, 1, port->buf_size, MSG_DONTWAIT);
	port->st.recvmsgs++;
	if (r > 0) {
		port->st.rx_bytes += r;
		sm_rx_post(port, att->fd, r, 0, 0);
	} else if (r == 0) {
		att->dead = true;
		sm_rx_post(port, att->fd, 0, STACKMAP_F_EOF, 0);
	} else if (r != -EAGAIN) {
		att->dead = true;
		sm_rx_post(port, att->fd, 0, STACKMAP_F_ERR, -r);
	}
	return r;
}

/* Serve one ready attachment; returns the events still pending. */
static unsigned int sm_rx_att(struct sm_port *port, struct sm_att *att,
			      unsigned int ev)
{
	unsigned int k;
	int r, nfd;

	if (att->listener) {
		for (k = 0; k < SM_ACCEPT_PER_SYNC; k++) {
			if (!sm_rx_space(port))
				return SM_EV_ACCEPT;
			r = sm_accept_one(port, att, &nfd);
			if (r == -EAGAIN)
				return 0;
			if (r < 0) {
				/* E.g. EMFILE: that connection was dropped; the
				 * listener stays attached. */
				sm_rx_post(port, att->fd, 0,
					   STACKMAP_F_NEW | STACKMAP_F_ERR, -r);
				return 0;
			}
			sm_rx_post(port, nfd, 0, STACKMAP_F_NEW, att->fd);
		}
		return SM_EV_ACCEPT;
	}

	if (ev & SM_EV_WRITE) {
		if (!sm_rx_space(port))
			return ev;
		sm_rx_post(port, att->fd, 0, STACKMAP_F_WRITABLE, 0);
	}
	if (!(ev & SM_EV_READ) || att->dead)
		return 0;
	for (k = 0; k < SM_RX_PER_SOCK; k++) {
		if (!sm_rx_space(port))
			return SM_EV_READ;
		r = sm_rx_read(port, att);
		if (r == SM_RX_BADSLOT || r == (int)port->buf_size)
			continue;	/* maybe more */
		/*
		 * A short read with the peer's FIN already in: the FIN's
		 * upcalls were folded into the event this read serves, so
		 * no later one would report it.  Read on to post EOF.
		 */
		if (r > 0 && (READ_ONCE(att->sock->sk->sk_shutdown) & RCV_SHUTDOWN))
			continue;
		return 0;		/* short read, EOF, error or EAGAIN */
	}
	return SM_EV_READ;
}

static int sm_rxsync(struct sm_port *port)
{
	struct sm_kring *kr = &port->rx;
	u32 head = READ_ONCE(kr->ring->head);
	unsigned long flags;
	LIST_HEAD(batch);
	int round;

	if (head >= kr->num ||
	    sm_dist(kr->hwcur, head, kr->num) > sm_dist(kr->hwcur, kr->hwtail, kr->num))
		return sm_bad_head(port, kr);
	kr->hwcur = head;	/* slots before head are released */

	/*
	 * Two rounds: connections accepted (or re-queued) in the first are
	 * read in the second, so a new connection's first request does not
	 * wait for another sync.  Each round is bounded by the ring's room.
	 */
	for (round = 0; round < 2 && sm_rx_space(port); round++) {
		spin_lock_irqsave(&port->lock, flags);
		list_splice_tail_init(&port->ready, &batch);
		spin_unlock_irqrestore(&port->lock, flags);

		while (!list_empty(&batch) && sm_rx_space(port)) {
			struct sm_att *att = list_first_entry(&batch, struct sm_att, rnode);
			unsigned int ev, left;

			spin_lock_irqsave(&port->lock, flags);
			list_del_init(&att->rnode);
			att->on_list = false;
			ev = att->ev;
			att->ev = 0;
			spin_unlock_irqrestore(&port->lock, flags);

			/* No CLOSE/detach runs here, so att stays valid. */
			left = sm_rx_att(port, att, ev);
			if (left)
				sm_queue_event(att, left);	/* back of the line */
		}
	}

	/* Not served for lack of room: first in line next time. */
	spin_lock_irqsave(&port->lock, flags);
	list_splice(&batch, &port->ready);
	spin_unlock_irqrestore(&port->lock, flags);

	smp_store_release(&kr->ring->tail, kr->hwtail);
	return 0;
}

int sm_sync(struct sm_port *port, bool wait)
{
	int ret;

	mutex_lock(&port->mutex);
	if (!port->registered) {
		ret = -ENXIO;
		goto out;
	}
	port->st.syncs++;
	sm_zc_publish(port);
	ret = sm_txsync(port);
	if (!ret)
		ret = sm_rxsync(port);
	while (!ret && wait && !sm_rx_avail(port) && !sm_zc_unread(port)) {
		port->st.waits++;
		mutex_unlock(&port->mutex);
		ret = wait_event_interruptible(port->wq, sm_rx_pending(port) ||
					       sm_zc_pending(port));
		mutex_lock(&port->mutex);
		if (!ret) {
			sm_zc_publish(port);
			ret = sm_rxsync(port);
		}
	}
	if (!ret)
		ret = sm_rx_avail(port);
out:
	mutex_unlock(&port->mutex);
	return ret;
}
