// SPDX-License-Identifier: GPL-2.0
/*
 * sm_dev.c -- the /dev/stackmap character device.
 *
 * StackMap gives an application the kernel's TCP with a netmap-style data
 * path.  This file is the device side of it: every open of /dev/stackmap
 * creates a port; STACKMAP_IOC_REGISTER sizes the port and allocates its
 * memory (rings plus a pool of fixed-size buffers, one vmalloc_user area
 * that the application maps with mmap); the other ioctls attach and detach
 * sockets, run a sync, or read the port's counters (STACKMAP_REG_ZC adds
 * the TX-done ring of zero-copy TX, sm_zc.c, to the memory); poll() runs a sync
 * too and reports whether the RX ring holds anything.  Releasing the file
 * (close, or the process dying) detaches every socket and frees the port.
 *
 * Only the thread group that opened the port may use it: descriptors are
 * per process, and the sync installs accepted connections as descriptors
 * of the calling process.
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/poll.h>
#include <linux/uaccess.h>
#include <linux/sched.h>

#include "sm_int.h"

/* True when the caller belongs to the thread group that opened the port. */
static bool sm_is_owner(const struct sm_port *port)
{
	return task_tgid(current) == port->owner;
}

static int sm_open(struct inode *inode, struct file *file)
{
	struct sm_port *port = kzalloc(sizeof(*port), GFP_KERNEL);

	if (!port)
		return -ENOMEM;
	mutex_init(&port->mutex);
	spin_lock_init(&port->lock);
	init_waitqueue_head(&port->wq);
	INIT_LIST_HEAD(&port->ready);
	xa_init(&port->atts);
	port->owner = get_pid(task_tgid(current));
	file->private_data = port;
	return 0;
}

static int sm_release(struct inode *inode, struct file *file)
{
	struct sm_port *port = file->private_data;

	mutex_lock(&port->mutex);
	sm_detach_all(port);
	mutex_unlock(&port->mutex);
	/* Lent buffers' pages are held by their skbs, not by port->mem. */
	sm_zc_release(port);
	xa_destroy(&port->atts);
	vfree(port->mem);
	kfree(port->kv);
	put_pid(port->owner);
	mutex_destroy(&port->mutex);
	kfree(port);
	return 0;
}

/* Bytes of a ring (header and slots), rounded to a cache line. */
static u64 sm_ring_bytes(u32 slots)
{
	return ALIGN(sizeof(struct stackmap_ring) +
		     (u64)slots * sizeof(struct stackmap_slot), 64);
}

/* Initialise one ring in port memory; slot i gets buffer first + i. */
static void sm_ring_init(struct sm_kring *kr, void *mem, u64 ofs, u32 slots,
			 u32 first_buf, bool tx)
{
	struct stackmap_ring *r = mem + ofs;
	u32 i;

	r->num_slots = slots;
	r->head = 0;
	r->cur = 0;
	/* TX: all slots but one are the application's; RX: none are. */
	r->tail = tx ? slots - 1 : 0;
	for (i = 0; i < slots; i++) {
		r->slots[i].buf_idx = first_buf + i;
		r->slots[i].fd = -1;
	}
	kr->ring = r;
	kr->num = slots;
	kr->hwcur = 0;
	kr->hwtail = r->tail;
}

/*
 * REGISTER, under port->mutex, on a copy of the caller's struct (filled in
 * on success): user memory is never touched with the mutex held, since a
 * fault takes mmap_lock, which the network stack takes under sk_lock, which
 * the sync takes under the mutex (lockdep on the debug kernel).
 */
static long sm_register(struct sm_port *port, struct stackmap_reg *regp)
{
	struct stackmap_reg reg = *regp;
	struct stackmap_if *nif;
	u64 rx_ofs, tx_ofs, done_ofs = 0, bufs_ofs, size;
	bool zc = reg.flags & STACKMAP_REG_ZC;
	int ret;

	if (port->registered)
		return -EBUSY;
	if (reg.version != STACKMAP_VERSION)
		return -EPROTO;
	if ((reg.flags & ~STACKMAP_REG_ZC) || reg.done_ring_ofs)
		return -EINVAL;
	if (reg.rx_slots < STACKMAP_MIN_SLOTS || reg.rx_slots > STACKMAP_MAX_SLOTS ||
	    reg.tx_slots < STACKMAP_MIN_SLOTS || reg.tx_slots > STACKMAP_MAX_SLOTS)
		return -EINVAL;
	if (reg.buf_size < STACKMAP_MIN_BUF_SIZE ||
	    reg.buf_size > STACKMAP_MAX_BUF_SIZE || reg.buf_size % 64)
		return -EINVAL;
	if (reg.num_bufs < reg.rx_slots + reg.tx_slots ||
	    reg.num_bufs > STACKMAP_MAX_BUFS)
		return -EINVAL;

	rx_ofs = ALIGN(sizeof(struct stackmap_if), 64);
	tx_ofs = rx_ofs + sm_ring_bytes(reg.rx_slots);
	bufs_ofs = tx_ofs + sm_ring_bytes(reg.tx_slots);
	if (zc) {
		done_ofs = bufs_ofs;
		bufs_ofs += ALIGN(sizeof(struct stackmap_done_ring) +
				  ((u64)reg.num_bufs + 1) * sizeof(__u32), 64);
	}
	bufs_ofs = PAGE_ALIGN(bufs_ofs);
	size = PAGE_ALIGN(bufs_ofs + (u64)reg.num_bufs * reg.buf_size);
	if (size > STACKMAP_MAX_MEM)
		return -E2BIG;

	port->kv = kmalloc_array(SM_TX_BATCH, sizeof(*port->kv), GFP_KERNEL);
	if (!port->kv)
		return -ENOMEM;
	port->mem = vmalloc_user(size);	/* zeroed */
	if (!port->mem) {
		kfree(port->kv);
		port->kv = NULL;
		return -ENOMEM;
	}
	port->mem_size = size;
	port->bufs = port->mem + bufs_ofs;
	port->buf_size = reg.buf_size;
	port->num_bufs = reg.num_bufs;
	sm_ring_init(&port->rx, port->mem, rx_ofs, reg.rx_slots, 0, false);
	sm_ring_init(&port->tx, port->mem, tx_ofs, reg.tx_slots, reg.rx_slots,
		     true);
	if (zc) {
		ret = sm_zc_init(port, reg.tx_slots);
		if (ret) {
			vfree(port->mem);
			port->mem = NULL;
			kfree(port->kv);
			port->kv = NULL;
			return ret;
		}
		port->done = port->mem + done_ofs;
		port->done->num_entries = reg.num_bufs + 1;
		port->done_tail = 0;
	}

	reg.first_free_buf = reg.rx_slots + reg.tx_slots;
	reg.rx_ring_ofs = rx_ofs;
	reg.tx_ring_ofs = tx_ofs;
	reg.bufs_ofs = bufs_ofs;
	reg.mem_size = size;
	reg.done_ring_ofs = done_ofs;

	nif = port->mem;
	nif->version = STACKMAP_VERSION;
	nif->rx_slots = reg.rx_slots;
	nif->tx_slots = reg.tx_slots;
	nif->buf_size = reg.buf_size;
	nif->num_bufs = reg.num_bufs;
	nif->first_free_buf = reg.first_free_buf;
	nif->rx_ring_ofs = rx_ofs;
	nif->tx_ring_ofs = tx_ofs;
	nif->bufs_ofs = bufs_ofs;
	nif->mem_size = size;
	nif->done_ring_ofs = done_ofs;

	/* Published last: sm_mmap() reads it without the mutex. */
	smp_store_release(&port->registered, true);
	*regp = reg;
	return 0;
}

static int sm_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct sm_port *port = file->private_data;
	unsigned long len = vma->vm_end - vma->vm_start;
	int ret;

	/*
	 * No port->mutex here: mmap_lock is held, and the mutex is held
	 * around socket calls that take sk_lock, under which the network
	 * stack faults on user memory (mmap_lock): lockdep's circular
	 * dependency on the debug kernel.  The mapping needs none of it:
	 * mem and mem_size are set before registered is published and stay
	 * until the file is released, which this mapping's file reference
	 * prevents.
	 */
	if (!smp_load_acquire(&port->registered))
		ret = -ENXIO;
	else if (vma->vm_pgoff != 0 || len > port->mem_size)
		ret = -EINVAL;
	else if (!sm_is_owner(port))
		ret = -EPERM;
	else {
		/* A forked child does not inherit the rings. */
		vm_flags_set(vma, VM_DONTCOPY);
		ret = remap_vmalloc_range(vma, port->mem, 0);
	}
	return ret;
}

static long sm_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct sm_port *port = file->private_data;
	void __user *up = (void __user *)arg;
	struct stackmap_attach at;
	struct stackmap_stats st;
	struct stackmap_reg reg;
	struct sm_att *att;
	long ret;

	if (!sm_is_owner(port))
		return -EPERM;

	switch (cmd) {
	case STACKMAP_IOC_SYNC:
		if (arg & ~(unsigned long)STACKMAP_SYNC_WAIT)
			return -EINVAL;
		return sm_sync(port, arg & STACKMAP_SYNC_WAIT);
	case STACKMAP_IOC_REGISTER:
		if (copy_from_user(&reg, up, sizeof(reg)))
			return -EFAULT;
		mutex_lock(&port->mutex);
		ret = sm_register(port, &reg);
		mutex_unlock(&port->mutex);
		if (!ret && copy_to_user(up, &reg, sizeof(reg)))
			return -EFAULT;	/* the port stays registered; REGISTER again is EBUSY */
		return ret;
	case STACKMAP_IOC_ATTACH:
		if (copy_from_user(&at, up, sizeof(at)))
			return -EFAULT;
		if (at.flags)
			return -EINVAL;
		mutex_lock(&port->mutex);
		ret = port->registered ? sm_attach(port, at.fd, NULL) : -ENXIO;
		mutex_unlock(&port->mutex);
		return ret;
	case STACKMAP_IOC_DETACH:
		if (copy_from_user(&at, up, sizeof(at)))
			return -EFAULT;
		if (at.flags || at.fd < 0)
			return -EINVAL;
		mutex_lock(&port->mutex);
		att = xa_load(&port->atts, at.fd);
		if (att) {
			sm_detach(port, att);
			ret = 0;
		} else {
			ret = -ENOENT;
		}
		mutex_unlock(&port->mutex);
		return ret;
	case STACKMAP_IOC_STATS:
	case STACKMAP_IOC_STATS_V1:	/* binaries from before zero-copy TX */
	case STACKMAP_IOC_STATS_V2:	/* ... and from before tx_plugged */
		mutex_lock(&port->mutex);
		st = port->st;
		mutex_unlock(&port->mutex);
		if (copy_to_user(up, &st, _IOC_SIZE(cmd)))
			return -EFAULT;
		return 0;
	default:
		return -ENOTTY;
	}
}

/*
 * poll() is a sync (like netmap's): transmit what the application queued,
 * fill RX, and report EPOLLIN when the application owns RX slots or unread
 * TX-done entries (lent buffers it can have back).  The TX
 * ring is always fully handed back by a sync, so EPOLLOUT is always set;
 * poll for EPOLLIN only.
 */
static __poll_t sm_poll(struct file *file, poll_table *pt)
{
	struct sm_port *port = file->private_data;
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &port->wq, pt);
	if (!sm_is_owner(port) || !READ_ONCE(port->registered))
		return EPOLLERR;
	if (sm_sync(port, false) < 0)
		return EPOLLERR;
	mutex_lock(&port->mutex);
	if (sm_rx_avail(port) || sm_zc_unread(port))
		mask |= EPOLLIN | EPOLLRDNORM;
	mutex_unlock(&port->mutex);
	return mask;
}

static const struct file_operations sm_fops = {
	.owner = THIS_MODULE,
	.open = sm_open,
	.release = sm_release,
	.mmap = sm_mmap,
	.poll = sm_poll,
	.unlocked_ioctl = sm_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice sm_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "stackmap",
	.fops = &sm_fops,
	.mode = 0666,
};

static int __init sm_init(void)
{
	int ret = misc_register(&sm_misc);

	if (!ret)
		pr_info("stackmap: /dev/stackmap ready (uapi version %d)\n",
			STACKMAP_VERSION);
	return ret;
}

static void __exit sm_exit(void)
{
	misc_deregister(&sm_misc);
	/* Let any upcall that raced with a detach leave our code. */
	synchronize_net();
}

module_init(sm_init);
module_exit(sm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("StackMap: netmap-style rings over the kernel TCP stack");
MODULE_VERSION("1");
