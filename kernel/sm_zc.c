// SPDX-License-Identifier: GPL-2.0
/*
 * sm_zc.c -- zero-copy TX: the port's buffers lent to TCP.
 *
 * Without it every TX byte is copied twice: by the application into a TX
 * buffer, and by TCP from that buffer into its own pages.  Over a real
 * device the second copy is avoidable: TCP can point its skbs at the
 * buffer's pages (MSG_ZEROCOPY), as io_uring's zero-copy send does with a
 * registered buffer.  The price is that the buffer stays in use until the
 * peer has acknowledged the data and the skbs are freed, which can be long
 * after the sync returned, and in any order.  So a port registered with
 * STACKMAP_REG_ZC lends buffers of TX slots flagged STACKMAP_F_ZC, reports
 * each lent slot with STACKMAP_F_LOAN, and hands the buffers back through a
 * third ring in port memory, the TX-done ring (stackmap.4).
 *
 * Mechanism (what io_uring/notif.c and net/core/skbuff.c's msg_zerocopy do
 * in 6.12): one notifier (struct ubuf_info with our ops) per zero-copy
 * sendmsg, passed as msg->msg_ubuf with MSG_ZEROCOPY over an ITER_BVEC of
 * the buffers' vmalloc pages.  tcp_sendmsg_locked attaches it to every skb
 * that references those pages and takes a reference for each; our
 * complete() runs as each skb is freed (softirq or process context) and,
 * at the last reference, queues the notifier on the done list and wakes
 * the port.  The next sync publishes its buffers in the done ring.  The
 * skbs hold page references of their own (iov_iter_get_pages on a bvec
 * takes them), so freeing the port memory while buffers are lent is safe:
 * the pages outlive the mapping.
 *
 * Lifetime: struct sm_zc outlives the port while notifiers are in flight
 * (a SIGKILLed owner, a peer that never reads).  It is reference counted
 * (the port, and each notifier in flight or waiting on the done list) and
 * holds a reference on this module, so rmmod is refused (EBUSY) until the
 * network stack has let go of every lent buffer; the final module_put runs
 * inside an RCU read-side section, which module unloading waits out
 * (sm_exit's synchronize_net, free_module's synchronize_rcu), as vhost-net
 * does for its zero-copy completions.
 *
 * Lent state per buffer (a bitmap) is touched only under port->mutex: set
 * when a slot is gathered into a zero-copy run, cleared when the buffer is
 * published in the done ring or turns out not to have been lent.  A buffer
 * named again while lent is sent by copying, never lent twice.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/bitmap.h>
#include <linux/skbuff.h>
#include <linux/rcupdate.h>
#include <net/inet_connection_sock.h>

#include "sm_int.h"

#define SM_ZC_NONE	U32_MAX	/* end of a notifier's buffer chain */

/* One zero-copy sendmsg's notifier. */
struct sm_zc_ubuf {
	struct ubuf_info ubuf;	/* what the skbs point to; refcnt: one per
				 * skb, plus the sender's while it sends */
	struct sm_zc *zc;	/* owner */
	struct list_head node;	/* on zc->free, or zc->done once completed */
	u32 first;		/* first lent buffer (chained by zc->next) */
	u32 count;		/* buffers left in the chain */
	bool copied;		/* the stack copied some of it after all */
};

/* Zero-copy state of a port; outlives it while buffers are lent. */
struct sm_zc {
	refcount_t ref;		/* the port's + one per notifier not free */
	spinlock_t lock;	/* free, done, port */
	struct sm_port *port;	/* NULL once the port is released */
	struct list_head free;	/* idle notifiers */
	struct list_head done;	/* completed, buffers not yet published */
	u32 *next;		/* per buffer: next in its notifier's chain
				 * (port->mutex; freed with the port) */
	unsigned long *lent;	/* per buffer: lent (port->mutex; ditto) */
};

static void sm_zc_free(struct sm_zc *zc)
{
	struct sm_zc_ubuf *u, *tmp;

	list_for_each_entry_safe(u, tmp, &zc->free, node)
		kfree(u);
	kfree(zc);
	/* Module text must stay until we are out of it: see the header. */
	rcu_read_lock();
	module_put(THIS_MODULE);
	rcu_read_unlock();
}

static void sm_zc_put(struct sm_zc *zc)
{
	if (refcount_dec_and_test(&zc->ref))
		sm_zc_free(zc);
}

/* A notifier back to the pool; drops its reference on zc. */
static void sm_zc_recycle(struct sm_zc *zc, struct sm_zc_ubuf *u)
{
	unsigned long flags;

	spin_lock_irqsave(&zc->lock, flags);
	list_add(&u->node, &zc->free);
	spin_unlock_irqrestore(&zc->lock, flags);
	sm_zc_put(zc);
}

/* An skb holding the notifier was freed (or the sender let go of it). */
static void sm_zc_complete(struct sk_buff *skb, struct ubuf_info *uarg,
			   bool zerocopy_success)
{
	struct sm_zc_ubuf *u = container_of(uarg, struct sm_zc_ubuf, ubuf);
	struct sm_zc *zc = u->zc;
	unsigned long flags;
	bool orphan;

	if (!zerocopy_success)
		WRITE_ONCE(u->copied, true);
	if (!refcount_dec_and_test(&uarg->refcnt))
		return;
	spin_lock_irqsave(&zc->lock, flags);
	orphan = !zc->port;
	if (orphan) {
		list_add(&u->node, &zc->free);
	} else {
		list_add_tail(&u->node, &zc->done);
		wake_up_interruptible_poll(&zc->port->wq, EPOLLIN | EPOLLRDNORM);
	}
	spin_unlock_irqrestore(&zc->lock, flags);
	if (orphan)
		sm_zc_put(zc);
}

static const struct ubuf_info_ops sm_zc_ops = {
	.complete = sm_zc_complete,
};

/* At REGISTER with STACKMAP_REG_ZC, before the port is published. */
int sm_zc_init(struct sm_port *port, u32 tx_slots)
{
	u32 per_slot = DIV_ROUND_UP(port->buf_size, PAGE_SIZE) + 1;
	struct sm_zc *zc;
	u32 i;

	zc = kzalloc(sizeof(*zc), GFP_KERNEL);
	if (!zc)
		return -ENOMEM;
	refcount_set(&zc->ref, 1);
	spin_lock_init(&zc->lock);
	INIT_LIST_HEAD(&zc->free);
	INIT_LIST_HEAD(&zc->done);
	zc->port = port;
	zc->next = kvmalloc_array(port->num_bufs, sizeof(*zc->next), GFP_KERNEL);
	zc->lent = bitmap_zalloc(port->num_bufs, GFP_KERNEL);
	port->bv = kvmalloc_array(SM_TX_BATCH * per_slot, sizeof(*port->bv), GFP_KERNEL);
	if (!zc->next || !zc->lent || !port->bv)
		goto nomem;
	/* One notifier per TX slot: more runs than that cannot be in one
	 * sync; when loans pile up beyond it, F_ZC slots are copied. */
	for (i = 0; i < tx_slots; i++) {
		struct sm_zc_ubuf *u = kzalloc(sizeof(*u), GFP_KERNEL);

		if (!u)
			goto nomem;
		u->zc = zc;
		list_add(&u->node, &zc->free);
	}
	__module_get(THIS_MODULE);	/* dropped by sm_zc_free */
	port->zc = zc;
	return 0;
nomem:
	{
		struct sm_zc_ubuf *u, *tmp;

		list_for_each_entry_safe(u, tmp, &zc->free, node)
			kfree(u);
	}
	kvfree(zc->next);
	bitmap_free(zc->lent);
	kvfree(port->bv);
	port->bv = NULL;
	kfree(zc);
	return -ENOMEM;
}

/* Port release (no sync can run): unhook; lent buffers complete later. */
void sm_zc_release(struct sm_port *port)
{
	struct sm_zc *zc = port->zc;
	struct sm_zc_ubuf *u, *tmp;
	unsigned long flags;
	LIST_HEAD(done);

	if (!zc)
		return;
	spin_lock_irqsave(&zc->lock, flags);
	zc->port = NULL;
	list_splice_init(&zc->done, &done);
	spin_unlock_irqrestore(&zc->lock, flags);
	list_for_each_entry_safe(u, tmp, &done, node) {
		list_del(&u->node);
		sm_zc_recycle(zc, u);
	}
	kvfree(zc->next);
	zc->next = NULL;
	bitmap_free(zc->lent);
	zc->lent = NULL;
	kvfree(port->bv);
	port->bv = NULL;
	port->zc = NULL;
	sm_zc_put(zc);
}

/*
 * May the slot's buffer be lent?  Only on a zero-copy port, to a plain TCP
 * socket (a ULP such as kTLS refuses MSG_ZEROCOPY), and not while it is
 * lent already.  Marks it lent (tentatively, until the send says).
 */
bool sm_zc_want(struct sm_port *port, struct sm_att *att, u32 buf_idx)
{
	struct sock *sk = att->sock->sk;

	if (sk->sk_type != SOCK_STREAM || sk->sk_protocol != IPPROTO_TCP ||
	    inet_csk(sk)->icsk_ulp_ops || test_bit(buf_idx, port->zc->lent)) {
		port->st.zc_fallback++;
		return false;
	}
	__set_bit(buf_idx, port->zc->lent);
	return true;
}

/* The buffer was not lent after all. */
void sm_zc_unmark(struct sm_port *port, u32 buf_idx)
{
	__clear_bit(buf_idx, port->zc->lent);
}

/*
 * Send a zero-copy run.  Returns bytes TCP took or -errno like sendmsg;
 * -ENOBUFS when no notifier is free (nothing sent: copy instead).  *lent
 * says whether the buffers with bytes sent stay lent (F_LOAN); if not,
 * every buffer of the run is free again.
 */
int sm_zc_send(struct sm_port *port, struct sm_txgroup *g, bool *lent)
{
	struct sm_zc *zc = port->zc;
	struct msghdr msg = {
		.msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL | MSG_ZEROCOPY,
	};
	struct sm_zc_ubuf *u;
	unsigned long flags;
	size_t left;
	u32 k, nb = 0;
	int r;

	*lent = false;
	spin_lock_irqsave(&zc->lock, flags);
	u = list_first_entry_or_null(&zc->free, struct sm_zc_ubuf, node);
	if (u)
		list_del(&u->node);
	spin_unlock_irqrestore(&zc->lock, flags);
	if (!u)
		return -ENOBUFS;

	for (k = 0; k < g->n; k++) {
		u8 *p = port->bufs + (size_t)g->s[k].buf_idx * port->buf_size +
			g->s[k].offset;
		u32 len = g->s[k].len;

		while (len) {
			u32 po = offset_in_page(p);
			u32 n = min_t(u32, len, PAGE_SIZE - po);

			bvec_set_page(&port->bv[nb++], vmalloc_to_page(p), n, po);
			p += n;
			len -= n;
		}
	}
	iov_iter_bvec(&msg.msg_iter, ITER_SOURCE, port->bv, nb, g->bytes);

	u->ubuf.ops = &sm_zc_ops;
	u->ubuf.flags = SKBFL_ZEROCOPY_FRAG | SKBFL_DONT_ORPHAN;
	refcount_set(&u->ubuf.refcnt, 1);	/* ours, while sending */
	u->first = SM_ZC_NONE;
	u->count = 0;
	u->copied = false;
	msg.msg_ubuf = &u->ubuf;
	refcount_inc(&zc->ref);

	r = sock_sendmsg(g->att->sock, &msg);
	port->st.zc_sends++;

	/* Chain the buffers TCP took bytes from (ours holds u meanwhile). */
	left = r > 0 ? r : 0;
	for (k = 0; k < g->n; k++) {
		u32 idx = g->s[k].buf_idx;

		if (left && g->s[k].len) {
			left -= min_t(size_t, left, g->s[k].len);
			zc->next[idx] = u->first;
			u->first = idx;
			u->count++;
		} else {
			sm_zc_unmark(port, idx);
		}
	}
	if (refcount_dec_and_test(&u->ubuf.refcnt)) {
		/* No skb holds it (copied, or sent and acknowledged already). */
		while (u->first != SM_ZC_NONE) {
			sm_zc_unmark(port, u->first);
			u->first = zc->next[u->first];
		}
		sm_zc_recycle(zc, u);
	} else {
		*lent = true;
		port->st.zc_lent += u->count;
	}
	if (r > 0)
		port->st.zc_bytes += r;
	return r;
}

/* Completed loans waiting for the next sync? */
bool sm_zc_pending(struct sm_port *port)
{
	struct sm_zc *zc = port->zc;
	unsigned long flags;
	bool ret;

	if (!zc)
		return false;
	spin_lock_irqsave(&zc->lock, flags);
	ret = !list_empty(&zc->done);
	spin_unlock_irqrestore(&zc->lock, flags);
	return ret;
}

/* Done-ring entries the application has not consumed (0 on a bad head). */
u32 sm_zc_unread(struct sm_port *port)
{
	struct stackmap_done_ring *dr = port->done;
	u32 n, head;

	if (!dr)
		return 0;
	n = port->num_bufs + 1;	/* never the shared num_entries */
	head = READ_ONCE(dr->head);
	if (head >= n)
		return 0;
	return port->done_tail >= head ? port->done_tail - head
				       : port->done_tail + n - head;
}

/* At the start of a sync: completed loans into the done ring. */
void sm_zc_publish(struct sm_port *port)
{
	struct stackmap_done_ring *dr = port->done;
	struct sm_zc *zc = port->zc;
	struct sm_zc_ubuf *u, *tmp;
	unsigned long flags;
	LIST_HEAD(batch);
	u32 n, head, tail, room;

	if (!zc)
		return;
	n = port->num_bufs + 1;
	head = READ_ONCE(dr->head);
	if (head >= n) {
		port->st.bad_heads++;
		head = port->done_tail;
		WRITE_ONCE(dr->head, head);
	}
	spin_lock_irqsave(&zc->lock, flags);
	list_splice_init(&zc->done, &batch);
	spin_unlock_irqrestore(&zc->lock, flags);
	if (list_empty(&batch))
		return;

	tail = port->done_tail;
	room = n - 1 - (tail >= head ? tail - head : tail + n - head);
	list_for_each_entry_safe(u, tmp, &batch, node) {
		bool copied = READ_ONCE(u->copied);

		while (u->first != SM_ZC_NONE && room) {
			u32 idx = u->first;

			WRITE_ONCE(dr->bufs[tail], idx | (copied ? STACKMAP_DONE_COPIED : 0));
			tail = tail + 1 == n ? 0 : tail + 1;
			room--;
			u->first = zc->next[idx];
			sm_zc_unmark(port, idx);
			port->st.zc_returned++;
			if (copied)
				port->st.zc_copied++;
		}
		if (u->first != SM_ZC_NONE)
			break;	/* ring full: the rest stays lent until later */
		list_del(&u->node);
		sm_zc_recycle(zc, u);
	}
	if (!list_empty(&batch)) {
		spin_lock_irqsave(&zc->lock, flags);
		list_splice(&batch, &zc->done);
		spin_unlock_irqrestore(&zc->lock, flags);
	}
	port->done_tail = tail;
	smp_store_release(&dr->tail, tail);
}
