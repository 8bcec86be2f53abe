/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The accept view: which process accepted a connection.
 * Part of lifecycle.bpf.c, which includes it after its configuration
 * (cfg) and the helpers it uses; not a header for other programs.
 */
#ifndef TCPSCOPE_LC_ACCEPT_KERN_H
#define TCPSCOPE_LC_ACCEPT_KERN_H

/*
 * The process of an accepted socket. Two ways, user space picks one:
 *
 * - cgroup getpeername hooks (the default): the kernel runs them when a
 *   process asks for a socket's peer address, which accept() with an address
 *   buffer does (most servers), as does getpeername(). Nothing else pays.
 * - the accept syscalls' exit tracepoints: every accept, but while any
 *   syscall tracepoint is attached every syscall of every process takes the
 *   kernel's slow tracing path (bench conns measures it).
 */

/* The accept event of socket sk, in the accepting process. */
static __always_inline void accept_event(const struct sock *sk, __u64 cookie, __u32 hook)
{
	struct conn_event e = {};
	tuple_from_sock(sk, &e);
	if (!port_wanted(&e))
		return;
	e.kind = CONN_ACCEPT;
	e.reason = hook;
	owner_from_current(&e);
	e.cookie = cookie;
	e.cgroup_id = sock_cgroup_id(sk);
	e.newstate = sk->__sk_common.skc_state;
	submit(&e);
}

/* A process asked for the peer of a socket: report it as the socket's
 * owner. User space keeps the first report of each connection it followed
 * from its handshake (a server may ask again; a client may ask too). Always
 * returns 1 (allow): this hook only watches. */
static __always_inline int peer_asked(struct bpf_sock_addr *ctx)
{
	/* A cast and two loads rather than bpf_skc_to_tcp_sock(): the same
	 * test (every inet socket's getpeername() comes here), without a
	 * helper call. */
	const struct sock *sk = bpf_core_cast(ctx->sk, struct sock);
	if (sk->sk_protocol != IPPROTO_TCP_NUM || sk->sk_type != SOCK_STREAM_NUM)
		return 1;
	/* A socket with no cookie yet is one we did not follow (the helper
	 * makes one): user space then tells it apart. */
	__u64 cookie = sk->__sk_common.skc_cookie.counter;
	accept_event(sk, cookie ? cookie : bpf_get_socket_cookie(ctx), ACCEPT_BY_GETPEERNAME);
	return 1;
}

SEC("cgroup/getpeername4")
int lc_getpeername4(struct bpf_sock_addr *ctx)
{
	return peer_asked(ctx);
}

SEC("cgroup/getpeername6")
int lc_getpeername6(struct bpf_sock_addr *ctx)
{
	return peer_asked(ctx);
}

/* accept()/accept4() returned fd: report the socket with its process. */
static __always_inline int accepted(long fd)
{
	if (fd < 0)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	struct file *f = NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd & 0xffffff]) || !f)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	struct sock *sk = bpf_core_cast(BPF_CORE_READ(sock, sk), struct sock);
	if (!sk || sk->sk_protocol != IPPROTO_TCP_NUM)
		return 0;
	/* The cookie was made at ESTABLISHED (set_state asks for it, and
	 * accept() can only return an established socket), so it is never 0
	 * here for a connection we followed. */
	accept_event(sk, sk->__sk_common.skc_cookie.counter, ACCEPT_BY_SYSCALL);
	return 0;
}

/* The per-syscall exit tracepoint (tracefs format: common header, int
 * __syscall_nr, long ret). */
struct syscall_exit_args {
	__u64 common;
	int nr;
	long ret;
};

SEC("tp/syscalls/sys_exit_accept4")
int lc_sys_exit_accept4(struct syscall_exit_args *ctx)
{
	return accepted(ctx->ret);
}

SEC("tp/syscalls/sys_exit_accept")
int lc_sys_exit_accept(struct syscall_exit_args *ctx)
{
	return accepted(ctx->ret);
}

/* Fallback when the syscall tracepoints are missing: every syscall of every
 * process comes here, so one load, then out. */
SEC("tp_btf/sys_exit")
int BPF_PROG(lc_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	if (nr != NR_ACCEPT && nr != NR_ACCEPT4)
		return 0;
	return accepted(ret);
}

#endif /* TCPSCOPE_LC_ACCEPT_KERN_H */
