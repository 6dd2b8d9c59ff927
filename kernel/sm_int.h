/* SPDX-License-Identifier: GPL-2.0 */
/*
 * sm_int.h -- private declarations shared by the StackMap module's files.
 *
 * The module is split by concern: sm_dev.c is the character device (open,
 * registration, mmap, ioctl dispatch, poll, release), sm_sock.c owns the
 * relation with TCP sockets (attach/detach, the upcalls it takes over,
 * accepting and installing new descriptors), and sm_sync.c is the data
 * path (the TX and RX halves of one sync), sm_zc.c lends TX buffers to TCP
 * (zero-copy TX) and takes them back.  This header holds the port and
 * attachment structures those three share.
 *
 * Locking:
 *  - port->mutex serialises everything done in process context on a port:
 *    register, attach/detach, sync (ioctl or poll), stats, release.  The
 *    kernel-private ring positions and the attachment table are only
 *    touched under it.
 *  - port->lock (irq-safe spinlock) protects the ready list and the event
 *    bits' queueing state; socket upcalls run in softirq context (and the
 *    listener's wait-queue callback with interrupts off) and take only it.
 *  - zc->lock (irq-safe spinlock, sm_zc.c) protects the zero-copy
 *    notifiers' free and done lists; completions run in any context.
 *  - sk->sk_callback_lock is taken for writing when callbacks are swapped
 *    and for reading inside our callbacks, so once detach has restored the
 *    callbacks no callback still uses the attachment.
 */
#ifndef SM_INT_H
#define SM_INT_H

#include <linux/types.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/list.h>
#include <linux/xarray.h>
#include <linux/pid.h>
#include <linux/net.h>
#include <linux/uio.h>
#include <linux/bvec.h>
#include <net/sock.h>

#include "include/uapi/stackmap.h"

/* Maximum slots of one connection gathered into a single sendmsg. */
#define SM_TX_BATCH		64
/* Buffers read from one socket per sync before moving to the next one. */
#define SM_RX_PER_SOCK		16
/* Connections accepted from one listener per sync. */
#define SM_ACCEPT_PER_SYNC	64

/* Event bits of an attachment (att->ev), set by upcalls, taken by sync. */
#define SM_EV_READ	0x1	/* data, EOF or error may be readable */
#define SM_EV_WRITE	0x2	/* send space came back after AGAIN */
#define SM_EV_ACCEPT	0x4	/* listener: a connection may be waiting */

/* The kernel's private view of one ring (never read from shared memory). */
struct sm_kring {
	struct stackmap_ring *ring;	/* the shared ring (untrusted contents) */
	u32 num;			/* slots in the ring */
	u32 hwcur;			/* first slot not yet released by the app
					 * (RX) / not yet transmitted (TX) */
	u32 hwtail;			/* kernel's tail: next slot to fill (RX) */
};

/* One TX slot as read (once) from shared memory. */
struct sm_txslot {
	u32 pos;	/* slot position in the ring */
	u32 buf_idx;	/* buffer index */
	u32 len;	/* bytes to send */
	u32 offset;	/* first byte in the buffer */
	s32 fd;		/* connection */
	u32 flags;	/* application's flags (CLOSE, ZC) */
	bool zc;	/* to be lent: F_ZC asked and allowed (buffer marked lent) */
};

/* A run of consecutive valid slots of one connection, sent by one sendmsg. */
struct sm_txgroup {
	struct sm_att *att;			/* the connection */
	u32 n;					/* slots in the run */
	size_t bytes;				/* their total length */
	bool close;				/* last slot asked for CLOSE */
	bool zc;				/* a zero-copy run (all slots .zc) */
	struct sm_txslot s[SM_TX_BATCH];	/* the slots */
};

/* One port: one open file of /dev/stackmap. */
struct sm_port {
	struct mutex mutex;		/* serialises process-context operations */
	spinlock_t lock;		/* protects ready list and att queueing */
	wait_queue_head_t wq;		/* poll and SYNC_WAIT sleepers */
	struct list_head ready;		/* attachments with pending events */
	struct pid *owner;		/* thread group that opened the port */
	bool registered;		/* memory allocated */
	void *mem;			/* vmalloc_user'd port memory */
	size_t mem_size;		/* its size in bytes (page multiple) */
	u8 *bufs;			/* buffer 0 in the port memory */
	u32 buf_size;			/* bytes per buffer */
	u32 num_bufs;			/* buffers in the pool */
	struct sm_kring rx;		/* kernel state of the RX ring */
	struct sm_kring tx;		/* kernel state of the TX ring */
	struct xarray atts;		/* fd number -> struct sm_att */
	struct kvec *kv;		/* SM_TX_BATCH kvecs for gathered sends */
	struct sm_txgroup txg;		/* the TX run being gathered */
	struct sm_zc *zc;		/* zero-copy TX state, NULL: copy-only port */
	struct stackmap_done_ring *done;	/* the TX-done ring (with zc) */
	u32 done_tail;			/* kernel's tail of the done ring */
	struct bio_vec *bv;		/* page pieces of one zero-copy run */
	struct stackmap_stats st;	/* counters (st.attached kept live) */
};

/* One socket attached to a port. */
struct sm_att {
	struct sm_port *port;		/* owning port */
	struct file *file;		/* our reference to the socket's file */
	struct socket *sock;		/* the socket (lives as long as file) */
	int fd;				/* descriptor number it was attached under */
	bool listener;			/* listening socket (accept on events) */
	bool on_list;			/* on port->ready (under port->lock) */
	bool dead;			/* EOF/error reported: read no more */
	unsigned int ev;		/* SM_EV_* pending (under port->lock) */
	unsigned long want_write;	/* bit 0: AGAIN seen, report WRITABLE */
	u64 blocked_sync;		/* sync number in which a send hit AGAIN */
	struct list_head rnode;		/* link in port->ready */
	wait_queue_entry_t wait;	/* listener: entry on the socket's wq */
	void (*saved_data_ready)(struct sock *sk);	/* original upcalls */
	void (*saved_write_space)(struct sock *sk);
	void (*saved_state_change)(struct sock *sk);
};

/* sm_sock.c */
int sm_attach(struct sm_port *port, int fd, struct sm_att **out);
void sm_detach(struct sm_port *port, struct sm_att *att);
void sm_detach_all(struct sm_port *port);
void sm_queue_event(struct sm_att *att, unsigned int ev);
void sm_arm_write(struct sm_att *att);
int sm_accept_one(struct sm_port *port, struct sm_att *lst, int *newfd);

/* sm_zc.c */
int sm_zc_init(struct sm_port *port, u32 tx_slots);
void sm_zc_release(struct sm_port *port);
bool sm_zc_want(struct sm_port *port, struct sm_att *att, u32 buf_idx);
void sm_zc_unmark(struct sm_port *port, u32 buf_idx);
int sm_zc_send(struct sm_port *port, struct sm_txgroup *g, bool *lent);
void sm_zc_publish(struct sm_port *port);
bool sm_zc_pending(struct sm_port *port);
u32 sm_zc_unread(struct sm_port *port);

/* sm_sync.c */
int sm_sync(struct sm_port *port, bool wait);
bool sm_rx_pending(struct sm_port *port);
u32 sm_rx_avail(struct sm_port *port);

#endif /* SM_INT_H */
