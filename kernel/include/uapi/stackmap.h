/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * stackmap.h -- the user/kernel interface of /dev/stackmap.
 *
 * StackMap (Yasukata, Honda, Santry, Eggert) keeps the kernel's TCP/IP
 * stack but replaces the socket data path with netmap-style shared rings:
 * the application opens /dev/stackmap (one open file = one "port", one per
 * worker thread), registers ring and buffer-pool sizes, mmaps the port
 * memory, attaches TCP sockets by fd, and then moves data for all of its
 * connections with one sync call per batch.  This header is the only
 * definition of that shared layout; the kernel module (kernel/stackmap*.c)
 * and the userspace backend (stackmap_core) both include it, so it uses
 * only fixed-width types from <linux/types.h> and compiles as C11 in
 * userspace and as kernel C.  kernel/stackmap.4 is its manual page.
 *
 * Port memory (one mmap of STACKMAP_REG.mem_size bytes at offset 0):
 *
 *   0            struct stackmap_if        sizes and offsets (informative;
 *                                          the kernel never reads it back)
 *   rx_ring_ofs  struct stackmap_ring + rx_slots slots   (kernel -> app)
 *   tx_ring_ofs  struct stackmap_ring + tx_slots slots   (app -> kernel)
 *   done_ring_ofs struct stackmap_done_ring + num_bufs + 1 entries
 *                (kernel -> app; only with STACKMAP_REG_ZC, else absent)
 *   bufs_ofs     num_bufs buffers of buf_size bytes (page aligned start);
 *                buffer i is at bufs_ofs + i * buf_size
 *
 * Ring ownership (netmap): head and cur are written by the application,
 * tail by the kernel.  Slots in [head, tail) (modulo num_slots) belong to
 * the application, the others to the kernel.  The application releases
 * slots by advancing head and then calling STACKMAP_IOC_SYNC or poll().
 *
 *   RX: the kernel fills slots at tail and advances tail.  The application
 *       consumes [head, tail), then advances head to give them back.
 *   TX: the application fills slots in [head, tail), advances head and
 *       syncs; the sync processes every slot from the kernel's previous
 *       position up to head and, when it returns, has handed all of them
 *       back (tail == head - 1) with result flags set in each slot.
 *
 * Buffers are referenced by index from slots.  The application may swap
 * buffer indices between slots (for example put a filled RX buffer into a
 * TX slot to send it, and a spare buffer into the RX slot); the kernel
 * reads every index, offset, length and fd from shared memory exactly once
 * and bounds-checks it, so a bad value only loses the application's own
 * data (the slot is flagged STACKMAP_F_BAD and counted).
 *
 * Zero-copy TX (STACKMAP_REG_ZC at registration): a TX slot flagged
 * STACKMAP_F_ZC may be sent without copying -- TCP's skbs then point at
 * the buffer's pages (MSG_ZEROCOPY) until the peer acknowledges the data.
 * When that happened the slot comes back with STACKMAP_F_LOAN: the slot is
 * the application's again, but its buffer is on loan to the kernel and
 * must not be written (nor given to an RX slot) until its index appears in
 * the TX-done ring.  The usual way is a buffer swap: put a spare buffer
 * (indices >= first_free_buf, or any returned one) into the slot and keep
 * the loaned index aside.  A slot without F_LOAN has its buffer back at
 * once, as without STACKMAP_REG_ZC.  Every F_LOAN is answered by exactly
 * one done-ring entry, published by a later sync (never the one that
 * reported the loan), so the two can be processed in any order.
 */
#ifndef _UAPI_LINUX_STACKMAP_H
#define _UAPI_LINUX_STACKMAP_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define STACKMAP_VERSION	1
#define STACKMAP_DEVICE		"/dev/stackmap"

/* Limits enforced by STACKMAP_IOC_REGISTER. */
#define STACKMAP_MIN_SLOTS	8		/* per ring */
#define STACKMAP_MAX_SLOTS	32768		/* per ring */
#define STACKMAP_MIN_BUF_SIZE	256		/* bytes, multiple of 64 */
#define STACKMAP_MAX_BUF_SIZE	65536		/* bytes, multiple of 64 */
#define STACKMAP_MAX_BUFS	(1u << 20)	/* buffers per port */
#define STACKMAP_MAX_MEM	(1ull << 30)	/* bytes of port memory */

/*
 * One slot: 24 bytes.  Which fields are inputs and outputs depends on the
 * ring; see the flags below and stackmap.4.
 */
struct stackmap_slot {
	__u32 buf_idx;	/* buffer index in the pool, < num_bufs */
	__u32 len;	/* bytes of data in the buffer at offset */
	__u32 offset;	/* start of the data in the buffer (RX: always 0) */
	__s32 fd;	/* socket descriptor the data belongs to */
	__u32 flags;	/* STACKMAP_F_* */
	__s32 aux;	/* NEW: listening fd; ERR: errno; BAD: STACKMAP_BAD_* */
};

/* Slot flags. */
#define STACKMAP_F_NEW		0x0001u	/* RX: fd is a newly accepted connection
					 *     (attached to this port, already
					 *     installed in the process), aux is
					 *     the listening socket's fd */
					/* NEW|ERR: accepting on listener fd
					 *     failed (aux = errno, e.g. EMFILE);
					 *     the connection was dropped, the
					 *     listener stays attached */
#define STACKMAP_F_EOF		0x0002u	/* RX: peer closed its side; no more data */
#define STACKMAP_F_ERR		0x0004u	/* RX/TX: socket error, aux = errno; the
					 *     connection is unusable */
#define STACKMAP_F_CLOSE	0x0008u	/* TX (app sets): after sending this slot's
					 *     data, detach the socket and close fd */
#define STACKMAP_F_BAD		0x0010u	/* RX/TX: slot rejected (bad buffer index,
					 *     offset/length, or fd); nothing was
					 *     sent/received, aux says why */
#define STACKMAP_F_AGAIN	0x0020u	/* TX: socket send buffer full; offset/len
					 *     now describe the unsent remainder;
					 *     a WRITABLE slot follows on RX */
#define STACKMAP_F_WRITABLE	0x0040u	/* RX: fd can take data again after AGAIN */
#define STACKMAP_F_DONE		0x0080u	/* TX: slot processed by the kernel (set on
					 *     every slot handed back) */
#define STACKMAP_F_ZC		0x0100u	/* TX (app sets): the buffer may be sent
					 *     zero-copy (lent); ignored without
					 *     STACKMAP_REG_ZC */
#define STACKMAP_F_LOAN		0x0200u	/* TX (kernel sets): the buffer was lent
					 *     to TCP; do not write it until the
					 *     done ring returns it */

/* aux values of STACKMAP_F_BAD slots. */
#define STACKMAP_BAD_INDEX	1	/* buf_idx >= num_bufs */
#define STACKMAP_BAD_LENGTH	2	/* offset + len > buf_size */
#define STACKMAP_BAD_FD		3	/* fd not open in this process, or not the
					 *     socket that was attached under it */
#define STACKMAP_BAD_NOT_ATTACHED 4	/* fd is not attached to this port */
#define STACKMAP_BAD_LISTENER	5	/* fd is an attached listening socket */

struct stackmap_ring {
	__u32 num_slots;	/* slots in this ring (set by the kernel) */
	__u32 head;		/* application: first slot it owns */
	__u32 cur;		/* application: its own cursor (kernel ignores) */
	__u32 tail;		/* kernel: first slot the kernel owns */
	__u32 flags;		/* reserved, 0 */
	__u32 reserved[11];	/* pads the header to 64 bytes */
	struct stackmap_slot slots[];	/* num_slots entries */
};

/*
 * The TX-done ring (STACKMAP_REG_ZC): buffers lent by F_LOAN slots, handed
 * back.  The kernel writes entries at tail and advances tail; the
 * application reads [head, tail) and advances head.  It has num_bufs + 1
 * entries, so it never fills while the application keeps up; if it does
 * fill, the kernel keeps the rest (those buffers stay lent) until there is
 * room.  A head outside the ring is counted in bad_heads and reset to the
 * kernel's tail (the entries in between are lost to the application, the
 * buffers are no longer lent).
 */
struct stackmap_done_ring {
	__u32 num_entries;	/* entries in bufs[] (set by the kernel) */
	__u32 head;		/* application: first entry it has not read */
	__u32 tail;		/* kernel: next entry it writes */
	__u32 flags;		/* reserved, 0 */
	__u32 reserved[12];	/* pads the header to 64 bytes */
	__u32 bufs[];		/* buffer index | STACKMAP_DONE_COPIED */
};

/* Entry bits: the buffer index and whether the stack copied it after all
 * (e.g. over loopback, or a device without scatter-gather). */
#define STACKMAP_DONE_IDX	0x7fffffffu
#define STACKMAP_DONE_COPIED	0x80000000u

/* Informative copy of the registration results at offset 0 of the map. */
struct stackmap_if {
	__u32 version;		/* STACKMAP_VERSION */
	__u32 rx_slots;		/* RX ring size */
	__u32 tx_slots;		/* TX ring size */
	__u32 buf_size;		/* bytes per buffer */
	__u32 num_bufs;		/* buffers in the pool */
	__u32 first_free_buf;	/* buffers >= this are in no slot initially */
	__u64 rx_ring_ofs;	/* byte offset of the RX struct stackmap_ring */
	__u64 tx_ring_ofs;	/* byte offset of the TX struct stackmap_ring */
	__u64 bufs_ofs;		/* byte offset of buffer 0 */
	__u64 mem_size;		/* bytes to mmap */
	__u64 done_ring_ofs;	/* byte offset of the TX-done ring, 0: none */
};

/* STACKMAP_IOC_REGISTER argument. */
struct stackmap_reg {
	__u32 version;		/* in: STACKMAP_VERSION */
	__u32 rx_slots;		/* in: RX ring size */
	__u32 tx_slots;		/* in: TX ring size */
	__u32 buf_size;		/* in: bytes per buffer */
	__u32 num_bufs;		/* in: pool size, >= rx_slots + tx_slots */
	__u32 flags;		/* in: STACKMAP_REG_* (0: copy-only port) */
	__u32 first_free_buf;	/* out: rx_slots + tx_slots */
	__u32 done_ring_ofs;	/* in: 0; out: offset of the TX-done ring
				 *     (STACKMAP_REG_ZC), else 0 */
	__u64 rx_ring_ofs;	/* out: offset of the RX ring */
	__u64 tx_ring_ofs;	/* out: offset of the TX ring */
	__u64 bufs_ofs;		/* out: offset of buffer 0 */
	__u64 mem_size;		/* out: bytes to mmap at offset 0 */
};

/* STACKMAP_IOC_REGISTER flags.  A module without a flag refuses it with
 * EINVAL, so an application can ask and fall back. */
#define STACKMAP_REG_ZC		0x1u	/* zero-copy TX: F_ZC slots, done ring */

/* STACKMAP_IOC_ATTACH / STACKMAP_IOC_DETACH argument. */
struct stackmap_attach {
	__s32 fd;		/* a TCP socket (listening or connected) */
	__u32 flags;		/* 0 */
};

/* STACKMAP_IOC_SYNC flags (the ioctl argument itself, not a pointer). */
#define STACKMAP_SYNC_WAIT	0x1u	/* block until RX has something */

/* STACKMAP_IOC_STATS result: counters of this port since open. */
struct stackmap_stats {
	__u64 syncs;		/* sync calls (ioctl and poll) */
	__u64 waits;		/* syncs that blocked */
	__u64 tx_slots;		/* TX slots processed (incl. bad ones) */
	__u64 rx_slots;		/* RX slots filled (incl. bad ones) */
	__u64 tx_bytes;		/* bytes accepted by TCP */
	__u64 rx_bytes;		/* bytes received from TCP */
	__u64 bad_slots;	/* slots rejected with STACKMAP_F_BAD */
	__u64 bad_heads;	/* syncs refused: ring head out of range */
	__u64 tx_again;		/* TX slots left (partly) unsent */
	__u64 sendmsgs;		/* sendmsg calls into TCP */
	__u64 recvmsgs;		/* recvmsg calls into TCP */
	__u64 accepts;		/* connections accepted */
	__u64 closes;		/* CLOSE requests honoured */
	__u64 attached;		/* sockets attached right now */
	/* Zero-copy TX (STACKMAP_REG_ZC); appended, the ioctl number moved. */
	__u64 zc_sends;		/* zero-copy sendmsg calls */
	__u64 zc_bytes;		/* bytes TCP took from lent buffers */
	__u64 zc_lent;		/* slots handed back with F_LOAN */
	__u64 zc_returned;	/* done-ring entries published */
	__u64 zc_copied;	/* ... of which the stack had copied anyway */
	__u64 zc_fallback;	/* F_ZC slots sent by copying (buffer already
				 * lent, socket cannot, notifier pool empty) */
	/* TX doorbell batching; appended, the ioctl number moved again. */
	__u64 tx_plugged;	/* packets the TX sync's transmit plug held
				 * back and released as one burst (always 0
				 * on a kernel without the plug patch) */
};

#define STACKMAP_IOC_MAGIC	0xB7
#define STACKMAP_IOC_REGISTER	_IOWR(STACKMAP_IOC_MAGIC, 1, struct stackmap_reg)
#define STACKMAP_IOC_ATTACH	_IOW(STACKMAP_IOC_MAGIC, 2, struct stackmap_attach)
#define STACKMAP_IOC_DETACH	_IOW(STACKMAP_IOC_MAGIC, 3, struct stackmap_attach)
#define STACKMAP_IOC_SYNC	_IO(STACKMAP_IOC_MAGIC, 4)
#define STACKMAP_IOC_STATS	_IOR(STACKMAP_IOC_MAGIC, 5, struct stackmap_stats)
/* The counters up to 'attached' only (the struct before zero-copy TX). */
#define STACKMAP_IOC_STATS_V1	_IOC(_IOC_READ, STACKMAP_IOC_MAGIC, 5, 14 * sizeof(__u64))
/* The counters up to 'zc_fallback' (the struct before tx_plugged). */
#define STACKMAP_IOC_STATS_V2	_IOC(_IOC_READ, STACKMAP_IOC_MAGIC, 5, 20 * sizeof(__u64))

#endif /* _UAPI_LINUX_STACKMAP_H */
