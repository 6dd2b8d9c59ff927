// SPDX-License-Identifier: GPL-2.0
/*
 * sm_sock.c -- how a StackMap port hooks into TCP sockets.
 *
 * The point of StackMap is that the application never makes a syscall per
 * socket: arriving data must mark the socket "ready" on its port by itself.
 * For a connected socket this file takes over the socket's upcalls
 * (sk_data_ready, sk_write_space, sk_state_change), saving the originals
 * and chaining to them, under sk_callback_lock, the way in-kernel socket
 * users such as strparser and sunrpc do.  For a listening socket it does
 * not touch the upcalls -- TCP copies a listener's callbacks into every
 * child it clones, which would hand our hook to sockets we never attached
 * -- but puts a wait-queue entry on the listener's wait queue (as epoll
 * does), which sock_def_readable wakes when a connection is ready.
 *
 * An upcall only records an event bit and puts the attachment on the
 * port's ready list, then wakes the port's poll waiters; all socket I/O
 * happens later in the sync, in the process context of the application.
 * That is also where connections are accepted: a new socket gets a file
 * (sock_alloc_file) and a descriptor of the calling process (fd_install),
 * is attached to the port, and is reported in an RX slot.
 *
 * Each attachment holds a reference on the socket's file, so the socket
 * cannot go away under the port even if the application closes its
 * descriptor; detach (explicit, by a CLOSE slot, or when the port is
 * released) restores the callbacks and drops that reference.
 */
#include <linux/file.h>
#include <linux/fcntl.h>
#include <linux/slab.h>
#include <linux/poll.h>
#include <net/tcp_states.h>
#include <net/inet_sock.h>

#include "sm_int.h"

/* The attachment behind sk->sk_user_data; caller holds sk_callback_lock. */
static struct sm_att *sm_att_of(struct sock *sk)
{
	return __locked_read_sk_user_data_with_flags(sk, 0);
}

void sm_queue_event(struct sm_att *att, unsigned int ev)
{
	struct sm_port *port = att->port;
	unsigned long flags;
	bool wake = false;

	spin_lock_irqsave(&port->lock, flags);
	att->ev |= ev;
	if (!att->on_list) {
		list_add_tail(&att->rnode, &port->ready);
		att->on_list = true;
		wake = true;
	}
	spin_unlock_irqrestore(&port->lock, flags);
	if (wake)
		wake_up_interruptible_poll(&port->wq, EPOLLIN | EPOLLRDNORM);
}

/* Report WRITABLE once, if a send hit AGAIN and the socket has room now. */
static void sm_check_write(struct sm_att *att, struct sock *sk)
{
	if (test_bit(0, &att->want_write) && sk_stream_is_writeable(sk) &&
	    test_and_clear_bit(0, &att->want_write))
		sm_queue_event(att, SM_EV_WRITE);
}

void sm_arm_write(struct sm_att *att)
{
	set_bit(0, &att->want_write);
	smp_mb__after_atomic();
	/* Space may have come back before the bit was visible to the upcall. */
	sm_check_write(att, att->sock->sk);
}

static void sm_data_ready(struct sock *sk)
{
	struct sm_att *att;

	read_lock_bh(&sk->sk_callback_lock);
	att = sm_att_of(sk);
	if (att) {
		sm_queue_event(att, SM_EV_READ);
		if (att->saved_data_ready)
			att->saved_data_ready(sk);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}

static void sm_write_space(struct sock *sk)
{
	struct sm_att *att;

	read_lock_bh(&sk->sk_callback_lock);
	att = sm_att_of(sk);
	if (att) {
		if (att->saved_write_space)
			att->saved_write_space(sk);
		sm_check_write(att, sk);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}

/* FIN, RST, close: let the sync's recvmsg find out which. */
static void sm_state_change(struct sock *sk)
{
	struct sm_att *att;

	read_lock_bh(&sk->sk_callback_lock);
	att = sm_att_of(sk);
	if (att) {
		sm_queue_event(att, SM_EV_READ);
		if (att->saved_state_change)
			att->saved_state_change(sk);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}

/* Wake function on a listener's wait queue (runs with the wq lock held). */
static int sm_listen_wake(struct wait_queue_entry *wait, unsigned int mode,
			  int sync, void *key)
{
	struct sm_att *att = container_of(wait, struct sm_att, wait);
	__poll_t mask = key_to_poll(key);

	if (!mask || (mask & (EPOLLIN | EPOLLRDNORM | EPOLLERR | EPOLLHUP)))
		sm_queue_event(att, SM_EV_ACCEPT);
	return 0;
}

/*
 * Attach the TCP socket of @file under descriptor number @fd.  Takes its
 * own reference on @file.  @accepted: a socket this module just accepted,
 * attached whatever its state (a reset connection must still be reported
 * to the application, as an error, through its descriptor).  Caller holds
 * port->mutex.
 */
static int sm_attach_file(struct sm_port *port, int fd, struct file *file,
			  bool accepted, struct sm_att **out)
{
	struct socket *sock = sock_from_file(file);
	struct sm_att *att, *old;
	struct sock *sk;
	bool listener;
	int ret, state;

	if (!sock)
		return -ENOTSOCK;
	sk = sock->sk;
	if (!sk || sk->sk_type != SOCK_STREAM || sk->sk_protocol != IPPROTO_TCP ||
	    (sk->sk_family != AF_INET && sk->sk_family != AF_INET6))
		return -EPROTONOSUPPORT;
	state = READ_ONCE(sk->sk_state);
	listener = !accepted && state == TCP_LISTEN;
	if (!accepted && !listener && state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT)
		return -ENOTCONN;

	old = xa_load(&port->atts, fd);
	if (old) {
		if (old->file == file)
			return -EEXIST;
		/* The application closed that descriptor and reused the number. */
		sm_detach(port, old);
	}

	att = kzalloc(sizeof(*att), GFP_KERNEL);
	if (!att)
		return -ENOMEM;
	att->port = port;
	att->file = file;
	att->sock = sock;
	att->fd = fd;
	att->listener = listener;
	INIT_LIST_HEAD(&att->rnode);
	init_waitqueue_func_entry(&att->wait, sm_listen_wake);

	ret = xa_insert(&port->atts, fd, att, GFP_KERNEL);
	if (ret) {
		kfree(att);
		return ret;
	}

	write_lock_bh(&sk->sk_callback_lock);
	if (sk->sk_user_data) {
		/* Attached to another port, or owned by ktls/sockmap/... */
		write_unlock_bh(&sk->sk_callback_lock);
		xa_erase(&port->atts, fd);
		kfree(att);
		return -EBUSY;
	}
	/* NOCOPY: a child cloned from a listener must not inherit the pointer. */
	__rcu_assign_sk_user_data_with_flags(sk, att, SK_USER_DATA_NOCOPY);
	if (!listener) {
		att->saved_data_ready = sk->sk_data_ready;
		att->saved_write_space = sk->sk_write_space;
		att->saved_state_change = sk->sk_state_change;
		sk->sk_data_ready = sm_data_ready;
		sk->sk_write_space = sm_write_space;
		sk->sk_state_change = sm_state_change;
	}
	write_unlock_bh(&sk->sk_callback_lock);

	get_file(file);
	if (listener)
		add_wait_queue(&sock->wq.wait, &att->wait);
	port->st.attached++;
	/* Anything that arrived before the hooks were in place. */
	sm_queue_event(att, listener ? SM_EV_ACCEPT : SM_EV_READ);
	if (out)
		*out = att;
	return 0;
}

int sm_attach(struct sm_port *port, int fd, struct sm_att **out)
{
	struct file *file;
	int ret;

	if (fd < 0)
		return -EBADF;
	file = fget(fd);
	if (!file)
		return -EBADF;
	ret = sm_attach_file(port, fd, file, false, out);
	fput(file);
	return ret;
}

/* Undo sm_attach_file.  Caller holds port->mutex. */
void sm_detach(struct sm_port *port, struct sm_att *att)
{
	struct sock *sk = att->sock->sk;
	unsigned long flags;

	if (att->listener)
		remove_wait_queue(&att->sock->wq.wait, &att->wait);
	write_lock_bh(&sk->sk_callback_lock);
	if (!att->listener) {
		sk->sk_data_ready = att->saved_data_ready;
		sk->sk_write_space = att->saved_write_space;
		sk->sk_state_change = att->saved_state_change;
	}
	rcu_assign_sk_user_data(sk, NULL);
	write_unlock_bh(&sk->sk_callback_lock);
	/* From here no upcall can reach att. */

	spin_lock_irqsave(&port->lock, flags);
	if (att->on_list) {
		list_del(&att->rnode);
		att->on_list = false;
	}
	spin_unlock_irqrestore(&port->lock, flags);

	xa_cmpxchg(&port->atts, att->fd, att, NULL, GFP_KERNEL);
	port->st.attached--;
	fput(att->file);
	kfree(att);
}

void sm_detach_all(struct sm_port *port)
{
	struct sm_att *att;
	unsigned long idx;

	xa_for_each(&port->atts, idx, att)
		sm_detach(port, att);
}

/*
 * Accept one connection on listener @lst, give it a descriptor in the
 * calling process and attach it to @port.  Returns 0 and the descriptor
 * in *newfd, -EAGAIN when no connection is waiting, or another -errno
 * (the connection, if one was taken off the queue, is then dropped).
 */
int sm_accept_one(struct sm_port *port, struct sm_att *lst, int *newfd)
{
	struct socket *ns;
	struct file *file;
	int fd, ret;

	ret = kernel_accept(lst->sock, &ns, O_NONBLOCK);
	if (ret)
		return ret;
	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		sock_release(ns);
		return fd;
	}
	file = sock_alloc_file(ns, O_NONBLOCK, NULL);	/* releases ns on error */
	if (IS_ERR(file)) {
		put_unused_fd(fd);
		return PTR_ERR(file);
	}
	ret = sm_attach_file(port, fd, file, true, NULL);
	if (ret) {
		put_unused_fd(fd);
		fput(file);
		return ret;
	}
	fd_install(fd, file);	/* the descriptor takes file's first reference */
	port->st.accepts++;
	*newfd = fd;
	return 0;
}
