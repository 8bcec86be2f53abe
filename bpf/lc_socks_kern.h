/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Sockets the kernel follows: what it keeps of each, by socket cookie.
 * Part of lifecycle.bpf.c, which includes it after its configuration
 * (cfg) and the helpers it uses; not a header for other programs.
 */
#ifndef TCPSCOPE_LC_SOCKS_KERN_H
#define TCPSCOPE_LC_SOCKS_KERN_H

/* What the kernel must know of a live socket (see follow_socks()). */
struct sock_info {
	__u64 start_ns; /* SYN_SENT, or the first SYN of an incoming connection */
	__u16 port;     /* the service port: local if passive, else remote */
	__u8 passive;
	__u8 _pad[5];
};

/* Keyed by socket cookie (unique for the kernel's uptime, unlike a socket's
 * address); removed at close, and LRU so that sockets whose close we missed
 * cannot fill it. Per-CPU LRU lists: the common list's lock is shared by
 * every CPU. Used only when follow_socks(). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_info);
} socks SEC(".maps");

/* Whether the kernel keeps a record per socket (the socks map): only for
 * the histograms (connect time and RTT per service port) and the connection
 * limit (which needs to know at close that a socket was counted). A
 * constant to the verifier: for `conns` the map code is not even loaded. */
static __always_inline bool follow_socks(void)
{
	return cfg.histograms || cfg.conn_limit;
}

#endif /* TCPSCOPE_LC_SOCKS_KERN_H */
