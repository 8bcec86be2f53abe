// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * TCP lifecycle and health, from tracepoints only (this kernel has no kprobes
 * and refuses fentry). The programs are tp_btf (typed arguments, no tracefs
 * needed), except the accept hooks (lc_accept_kern.h). User space attaches
 * each one on its own and reports any
 * that the kernel refuses, so one missing tracepoint costs one view, not the
 * tool.
 *
 * Cost matters: these run on a short connection's critical path (bench
 * conns measures it). Per connection with both ends on this host: 10 state
 * changes, 5 tcp_probe (every segment an established socket receives), one
 * each of consume_skb, kfree_skb and getpeername, and 6 events. Each cold
 * cache line counts (a clock read, a table slot: 50-150 ns each on this
 * VM), and a ring buffer's lock and positions cost more than the rest of an
 * event (see conn_slots_head). Map
 * operations were the dearest part, so `conns` keeps no per-socket state in
 * the kernel: each event carries its time, and user space joins a socket's
 * events by socket cookie (owning process, connect and close times). Only
 * what must be known here keeps a preallocated LRU entry per followed socket
 * (socket local storage measured dearer: it allocates on create and frees
 * through RCU): the histograms of `latency` and the connection limit of
 * `guard`.
 *
 * One job per header, included below in this order: the sockets followed
 * (lc_socks_kern.h), the first-SYN table (lc_syn_table_kern.h), the
 * histograms (lc_hist_kern.h), the event transport (lc_slots_kern.h), and
 * the accept hooks (lc_accept_kern.h). This file keeps the configuration,
 * the helpers that read sockets and packets, and the tracepoint programs.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common_kern_user.h"
#include "peer_conns_kern.h"
#include "net_defs_kern.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* x86_64 syscall numbers (vmlinux.h is x86_64). */
#define NR_ACCEPT 43
#define NR_ACCEPT4 288
/* tcp_probe takes at most one RTT sample per CPU per this long. */
#define RTT_SAMPLE_NS (1000 * 1000)

const volatile struct lifecycle_config cfg = {};

struct conn_event _conn_event = {};
struct latency_key _latency_key = {};
struct latency_hist _latency_hist = {};
enum conn_event_kind _conn_event_kind = CONN_CONNECT;
enum latency_kind _latency_kind = LAT_HANDSHAKE;
enum latency_limits _latency_limits = LAT_SLOTS;
enum accept_hook _accept_hook = ACCEPT_BY_SYSCALL;
enum conn_slots_limits _conn_slots_limits = CONN_SLOTS_PER_CPU;
struct conn_slots_head _conn_slots_head = {};
struct conn_slot _conn_slot = {};

#include "lc_socks_kern.h"
#include "lc_syn_table_kern.h"
#include "lc_hist_kern.h"
#include "lc_slots_kern.h"

/* Completed incoming handshakes per network namespace (the guard's
 * SYN-to-handshake ratio). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} handshakes SEC(".maps");

/*
 * Reads below are plain loads through BTF-typed pointers (tracepoint
 * arguments, or bpf_core_cast() of a pointer read from memory), not
 * BPF_CORE_READ(): that is one probe-read helper call per field, and these
 * programs run several times per connection. Loads through an untrusted
 * pointer that turns out NULL read 0 (the verifier adds fault handling).
 */

/* Local and peer address/port from the common part of a socket (full,
 * request or timewait sockets all start with it), into the event. */
static __always_inline void tuple_from_common(const struct sock_common *c, struct conn_event *e)
{
	e->sport = c->skc_num;
	e->dport = bpf_ntohs(c->skc_dport);
	e->netns = c->skc_net.net->ns.inum;
	if (c->skc_family == AF_INET6) {
		e->family = 6;
		__builtin_memcpy(e->saddr, &c->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(e->daddr, &c->skc_v6_daddr, 16);
	} else {
		e->family = 4;
		__u32 s = c->skc_rcv_saddr;
		__u32 d = c->skc_daddr;
		__builtin_memcpy(e->saddr, &s, 4);
		__builtin_memcpy(e->daddr, &d, 4);
	}
}

/* The cgroup v2 id of the socket (where it was made; an accepted socket
 * inherits its listener's), the same for all of a socket's events. */
static __always_inline __u64 sock_cgroup_id(const struct sock *sk)
{
	return sk->sk_cgrp_data.cgroup->kn->id;
}

static __always_inline void tuple_from_sock(const struct sock *sk, struct conn_event *e)
{
	tuple_from_common(&sk->__sk_common, e);
}

/*
 * The packet whose network header is at l3 (IPv4 or IPv6 by proto), in two
 * steps so that a caller can look at the TCP header before copying anything.
 * Direct loads through bpf_core_cast(), not probe-read helper calls: the
 * first SYN hook runs this for every received packet.
 */

/* Its TCP header, or NULL if it is not TCP (or is a non-first fragment, or
 * IPv6 with extension headers). */
static __always_inline const struct tcphdr *tcp_from_l3(unsigned char *l3, __u16 proto)
{
	if (proto == ETH_P_IP) {
		const struct iphdr *ip = bpf_core_cast(l3, struct iphdr);
		if (ip->protocol != IPPROTO_TCP_NUM || (bpf_ntohs(ip->frag_off) & 0x1fff))
			return NULL;
		return bpf_core_cast(l3 + (ip->ihl & 0xf) * 4, struct tcphdr);
	}
	if (proto == ETH_P_IPV6) {
		const struct ipv6hdr *ip6 = bpf_core_cast(l3, struct ipv6hdr);
		if (ip6->nexthdr != IPPROTO_TCP_NUM)
			return NULL;
		return bpf_core_cast(l3 + sizeof(struct ipv6hdr), struct tcphdr);
	}
	return NULL;
}

/* Its source and destination addresses (IPv4 in the first 4 bytes); returns
 * the IP version. Only for a packet tcp_from_l3() accepted. */
static __always_inline __u8 addrs_from_l3(unsigned char *l3, __u16 proto, __u8 src[16], __u8 dst[16])
{
	if (proto == ETH_P_IP) {
		const struct iphdr *ip = bpf_core_cast(l3, struct iphdr);
		__u32 s = ip->saddr, d = ip->daddr;
		__builtin_memcpy(src, &s, 4);
		__builtin_memcpy(dst, &d, 4);
		return 4;
	}
	const struct ipv6hdr *ip6 = bpf_core_cast(l3, struct ipv6hdr);
	__builtin_memcpy(src, &ip6->saddr, 16);
	__builtin_memcpy(dst, &ip6->daddr, 16);
	return 6;
}

/* Addresses and ports of that packet as seen by its receiver: local =
 * destination. Returns 0 if it is not TCP. */
static __always_inline int tuple_from_l3(unsigned char *l3, __u16 proto, struct conn_event *e)
{
	const struct tcphdr *th = tcp_from_l3(l3, proto);
	if (!th)
		return 0;
	e->family = addrs_from_l3(l3, proto, e->daddr, e->saddr);
	e->dport = bpf_ntohs(th->source);
	e->sport = bpf_ntohs(th->dest);
	return 1;
}

static __always_inline __u32 skb_netns(const struct sk_buff *skb)
{
	struct net_device *dev = skb->dev;
	if (!dev) {
		/* TCP has let go of skb->dev by the time a listener consumes the
		 * SYN; its input route still names the device. */
		const struct dst_entry *dst = bpf_core_cast((void *)(skb->_skb_refdst & ~1UL), struct dst_entry);
		dev = dst ? dst->dev : NULL;
	}
	return dev ? dev->nd_net.net->ns.inum : 0;
}

/* The TCP packet in skb, by its network header. Returns 0 if not TCP. */
static __always_inline int tuple_from_skb(const struct sk_buff *skb, struct conn_event *e)
{
	unsigned char *l3 = skb->head + skb->network_header;
	if (!tuple_from_l3(l3, bpf_ntohs(skb->protocol), e))
		return 0;
	e->netns = skb_netns(skb);
	return 1;
}

/* The current process (its pid is the thread group's), its comm, user and
 * group, into the event: two loads from the task, one helper call. */
static __always_inline void owner_from_current(struct conn_event *e)
{
	const struct task_struct *t = bpf_get_current_task_btf();
	__u64 ids = bpf_get_current_uid_gid();
	e->pid = t->tgid;
	e->uid = (__u32)ids;
	e->gid = ids >> 32;
	__builtin_memcpy(e->comm, t->comm, sizeof(e->comm));
}

/* The socket's cookie: a load once it has one (set_state asks for it at
 * SYN_SENT and ESTABLISHED), the helper, which makes it, only before. */
static __always_inline __u64 sock_cookie(const struct sock *sk)
{
	__u64 cookie = sk->__sk_common.skc_cookie.counter;
	return cookie ? cookie : bpf_get_socket_cookie((void *)sk);
}

static __always_inline bool port_wanted(const struct conn_event *e)
{
	if (!cfg.n_ports)
		return true;
#pragma unroll
	for (int i = 0; i < TCPSCOPE_MAX_FILTER_PORTS; i++) {
		if (i >= cfg.n_ports)
			break;
		if (e->sport == cfg.ports[i] || e->dport == cfg.ports[i])
			return true;
	}
	return false;
}

/*
 * The kernel's byte counters follow sequence numbers, and a SYN and a FIN
 * each take one: bytes_received counts the peer's FIN once it is in,
 * bytes_acked our FIN once acked (and, on an active open, our SYN: user
 * space takes that off, knowing which sockets connected). Users compare
 * these with what their application sent, so the events carry payload.
 * - The peer's FIN is in once tcp_fin() set SOCK_DONE (a reset does not).
 * - Our FIN takes write_seq's last number: it was sent in the FIN states
 *   and is acked once snd_una reaches write_seq. At a close the socket's
 *   state is already TCP_CLOSE, so the caller passes the state it left.
 */
static __always_inline void fill_tcp_stats_in(const struct sock *sk, struct conn_event *e, __u8 state)
{
	const struct tcp_sock *tp = bpf_core_cast(sk, struct tcp_sock);
	bool fin_in = sk->__sk_common.skc_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE));
	bool fin_sent = state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_CLOSING ||
			state == TCP_LAST_ACK || state == TCP_TIME_WAIT;
	bool fin_acked = fin_sent && tp->snd_una == tp->write_seq;
	__u64 rx = tp->bytes_received, acked = tp->bytes_acked;
	e->bytes_received = fin_in && rx ? rx - 1 : rx;
	e->bytes_acked = fin_acked && acked ? acked - 1 : acked;
	e->segs_in = tp->segs_in;
	e->segs_out = tp->segs_out;
	e->total_retrans = tp->total_retrans;
	e->srtt_us = tp->srtt_us >> 3;
	e->rttvar_us = tp->mdev_us >> 2;
	e->snd_cwnd = tp->snd_cwnd;
	e->snd_wnd = tp->snd_wnd;
	e->rcv_wnd = tp->rcv_wnd;
}

/* As fill_tcp_stats_in, for a socket in the state it is in now. */
static __always_inline void fill_tcp_stats(const struct sock *sk, struct conn_event *e)
{
	fill_tcp_stats_in(sk, e, sk->__sk_common.skc_state);
}

/* Counts a peer's established incoming connections up or down; over the
 * limit, reports it (user space rate-limits and mitigates). */
static __always_inline void peer_conn_add(const struct conn_event *e, int delta)
{
	struct peer_key k = { .netns = e->netns };
	__builtin_memcpy(k.addr, e->daddr, 16);
	__u32 *n = bpf_map_lookup_elem(&peer_conns, &k);
	if (!n) {
		if (delta < 0)
			return;
		__u32 one = 0;
		bpf_map_update_elem(&peer_conns, &k, &one, BPF_NOEXIST);
		n = bpf_map_lookup_elem(&peer_conns, &k);
		if (!n)
			return;
	}
	if (delta > 0) {
		/* The count this connection made (a fetching add: -mcpu=v3). */
		__u32 now_n = __sync_fetch_and_add(n, 1) + 1;
		if (now_n > cfg.conn_limit) {
			struct conn_event a = *e;
			a.kind = CONN_LIMIT;
			a.reason = now_n;
			submit(&a);
		}
	} else if (*n > 0) {
		__sync_fetch_and_add(n, (__u32)-1);
	}
}

/*
 * The first SYN of each incoming connection, by 4-tuple and netns: when a
 * listener has processed it. The listener consumes every SYN it handles
 * (skb:consume_skb in tcp_rcv_state_process), including those it then drops
 * because its accept queue is full, and those answered with a syncookie; a
 * later retransmitted SYN keeps the first one's time. This tracepoint fires
 * about once per connection; netif_receive_skb, which this replaced, fires
 * for every packet the host receives (10 per short connection in bench
 * conns, about 1.5% of its rate). Received data and ACKs are freed without
 * it; a NIC's transmit completions do fire it, and leave at the first test
 * (a sent skb has its socket; a raw socket's SYN, as hping3 sends, may not,
 * and leaves a stray entry on the sender's side that nothing looks up).
 */
SEC("tp_btf/consume_skb")
int BPF_PROG(lc_consume_skb, struct sk_buff *skb, void *location)
{
	if (skb->sk) /* a sent skb */
		return 0;
	__u16 proto = bpf_ntohs(skb->protocol);
	unsigned char *l3 = skb->head + skb->network_header;
	const struct tcphdr *th = tcp_from_l3(l3, proto);
	if (!th || !th->syn || th->ack)
		return 0;
	struct syn_key k = {};
	addrs_from_l3(l3, proto, k.peer, k.local);
	k.peer_port = bpf_ntohs(th->source);
	k.local_port = bpf_ntohs(th->dest);
	k.netns = skb_netns(skb);
	__u64 tag = syn_hash(&k);
	struct syn_slot *slot = syn_slot_of(tag);
	if (!slot)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	/* Retransmitted: the first one's time stays. Another's: see above. */
	if (slot->ts_ns && now - slot->ts_ns < (slot->tag == tag ? SYN_RETRY_NS : SYN_HOLD_NS))
		return 0;
	slot->tag = tag;
	slot->ts_ns = now;
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(lc_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	/* Decide first: most transitions (FIN_WAIT*, CLOSE_WAIT, ...) report
	 * nothing without --states, and this runs ~10 times per connection. */
	bool handshake_done = newstate == TCP_ESTABLISHED && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV);
	bool closed = newstate == TCP_CLOSE && oldstate != TCP_LISTEN;
	if (!cfg.emit_states && !handshake_done && !closed && newstate != TCP_SYN_SENT)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP_NUM)
		return 0;
	/* A handshake completes on a received packet, and TCP has just read
	 * the clock for it (tcp_mstamp_refresh() at the top of
	 * tcp_rcv_state_process()): measured 100-200 ns before this for a
	 * passive open, about 1 us for an active one (the SYN-ACK's
	 * processing). Reading it again cost 30-60 ns, twice per connection. */
	__u64 now = handshake_done ? bpf_core_cast(sk, struct tcp_sock)->tcp_clock_cache : 0;
	if (!now)
		now = bpf_ktime_get_ns();
	struct conn_event e = {};
	tuple_from_sock(sk, &e);
	e.ts_ns = now;
	e.oldstate = oldstate;
	e.newstate = newstate;
	e.cookie = sock_cookie(sk);
	e.cgroup_id = sock_cgroup_id(sk);

	if (newstate == TCP_SYN_SENT) {
		/* connect(): the calling process is current. The whole record is
		 * written: a socket may connect again after a failed attempt. */
		if (follow_socks()) {
			struct sock_info si = { .start_ns = now, .port = e.dport };
			bpf_map_update_elem(&socks, &e.cookie, &si, BPF_ANY);
		}
		if (!port_wanted(&e))
			return 0;
		e.kind = CONN_CONNECT;
		owner_from_current(&e);
		submit(&e);
		return 0;
	}
	struct sock_info *si = NULL;
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV) {
		/* A listener's child, made in softirq when the final ACK came:
		 * the connection started at its first SYN. Recorded here rather
		 * than at SYN_RECV, which comes just before: one heavy call, not
		 * two. The latency goes out with the event; user space takes the
		 * start from it. */
		struct syn_key k = {};
		__builtin_memcpy(k.peer, e.daddr, 16);
		__builtin_memcpy(k.local, e.saddr, 16);
		k.peer_port = e.dport;
		k.local_port = e.sport;
		k.netns = e.netns;
		__u64 tag = syn_hash(&k);
		struct syn_slot *slot = syn_slot_of(tag);
		__u64 syn = 0;
		if (slot && slot->ts_ns && slot->tag == tag) {
			syn = slot->ts_ns;
			slot->ts_ns = 0;
		}
		struct sock_info fresh = { .start_ns = syn ? syn : now, .port = e.sport, .passive = 1 };
		if (follow_socks())
			bpf_map_update_elem(&socks, &e.cookie, &fresh, BPF_ANY);
		si = &fresh;
	} else if (follow_socks() && (handshake_done || closed)) {
		si = bpf_map_lookup_elem(&socks, &e.cookie);
	}
	if (handshake_done) {
		/* Outgoing without follow_socks(): user space has the connect
		 * event's time. */
		bool in = oldstate == TCP_SYN_RECV;
		if (si) {
			/* Two clocks' readings (TCP's, ours at the first SYN):
			 * never let a nanosecond's disagreement wrap. */
			e.latency_ns = now > si->start_ns ? now - si->start_ns : 0;
			lat_record(si->port, in ? LAT_HANDSHAKE : LAT_CONNECT, e.latency_ns);
		}
		if (in && cfg.conn_limit)
			peer_conn_add(&e, 1);
		if (in && cfg.count_handshakes) {
			__u64 *h = bpf_map_lookup_elem(&handshakes, &e.netns);
			if (h) {
				__sync_fetch_and_add(h, 1);
			} else {
				__u64 one = 1;
				bpf_map_update_elem(&handshakes, &e.netns, &one, BPF_NOEXIST);
			}
		}
		if (!port_wanted(&e))
			return 0;
		e.kind = in ? CONN_ESTABLISHED_IN : CONN_ESTABLISHED_OUT;
		fill_tcp_stats(sk, &e);
		submit(&e);
		return 0;
	}
	/* A listener closing is no connection's end: a plain state change. */
	if (closed) {
		/* The kernel has released the local port (skc_num reads 0);
		 * the socket's own copy of it stays. */
		if (!e.sport)
			e.sport = bpf_ntohs(bpf_core_cast(sk, struct inet_sock)->inet_sport);
		if (si) {
			e.duration_ns = now - si->start_ns;
			if (si->passive && cfg.conn_limit)
				peer_conn_add(&e, -1);
			/* Every followed connection's final smoothed RTT. */
			rtt_record(si, sk);
			bpf_map_delete_elem(&socks, &e.cookie);
		}
		if (!port_wanted(&e))
			return 0;
		e.kind = CONN_CLOSE;
		fill_tcp_stats_in(sk, &e, oldstate);
		submit(&e);
		return 0;
	}
	if (cfg.emit_states && port_wanted(&e)) {
		e.kind = CONN_STATE;
		submit(&e);
	}
	return 0;
}

#include "lc_accept_kern.h"

/* An event about socket sk, into *e; false if it is filtered out. */
static __always_inline bool sock_event_fill(const struct sock *sk, __u8 kind, __u32 reason,
					    struct conn_event *e)
{
	if (!sk)
		return false;
	tuple_from_sock(sk, e);
	if (!port_wanted(e))
		return false;
	e->kind = kind;
	e->reason = reason;
	e->newstate = sk->__sk_common.skc_state;
	e->cookie = sock_cookie(sk);
	fill_tcp_stats(sk, e);
	return true;
}

static __always_inline int sock_event(const struct sock *sk, __u8 kind, __u32 reason)
{
	struct conn_event e = {};
	if (sock_event_fill(sk, kind, reason, &e))
		submit(&e);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(lc_tcp_retransmit_skb, const struct sock *sk, const struct sk_buff *skb, int err)
{
	return sock_event(sk, CONN_RETRANSMIT, 0);
}

/* The peer has not ACKed our SYN-ACK: the request socket holds the tuple. */
SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(lc_tcp_retransmit_synack, const struct sock *sk, const struct request_sock *req)
{
	struct conn_event e = {};
	tuple_from_common(&req->__req_common, &e);
	if (!port_wanted(&e))
		return 0;
	e.kind = CONN_RETRANSMIT_SYNACK;
	e.newstate = TCP_SYN_RECV;
	submit(&e);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(lc_tcp_receive_reset, struct sock *sk)
{
	return sock_event(sk, CONN_RESET_RX, 0);
}

/* An event about the TCP packet in skb. With a socket (the receiving one,
 * or the skb's owner for queued data) the connection is named from it: the
 * packet may be going either way. */
static __always_inline int skb_event(const struct sk_buff *skb, const struct sock *sk, __u8 kind,
				     __u32 reason)
{
	struct conn_event e = {};
	if (!skb || !tuple_from_skb(skb, &e))
		return 0;
	if (sk) {
		tuple_from_sock(sk, &e);
		e.cookie = sk->__sk_common.skc_cookie.counter;
		e.newstate = sk->__sk_common.skc_state;
	}
	if (!port_wanted(&e))
		return 0;
	e.kind = kind;
	e.reason = reason;
	submit(&e);
	return 0;
}

static __always_inline int reset_sent(const struct sock *sk, const struct sk_buff *skb, __u32 reason)
{
	if (sk)
		return sock_event(sk, CONN_RESET_TX, reason);
	/* No socket (e.g. a SYN to a closed port): the tuple is the packet's. */
	return skb_event(skb, NULL, CONN_RESET_TX, reason);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(lc_tcp_send_reset, const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason)
{
	return reset_sent(sk, skb, reason);
}

/* The same on kernels whose tcp_send_reset passes no reason (before 6.10):
 * user space loads whichever this kernel's argument list takes. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(lc_tcp_send_reset_v1, const struct sock *sk, const struct sk_buff *skb)
{
	return reset_sent(sk, skb, 0);
}

static __always_inline int dropped(struct sk_buff *skb, enum skb_drop_reason reason, struct sock *sk)
{
	if (reason <= SKB_CONSUMED)
		return 0;
	/* A socket being destroyed frees what is left in its queues with
	 * QUEUE_PURGE. A segment without payload there (typically the peer's
	 * FIN that nobody read) loses nothing: reporting it would put a "drop"
	 * on nearly every connection. Purged data still reports. */
	if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE) && skb->len == 0)
		return 0;
	return skb_event(skb, sk, CONN_DROP, reason);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(lc_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason,
	     struct sock *rx_sk)
{
	return dropped(skb, reason, rx_sk ? rx_sk : skb->sk);
}

/* The same on kernels whose kfree_skb passes no receiving socket (before
 * 6.11: the 6.6 and 6.1 LTS kernels). */
SEC("tp_btf/kfree_skb")
int BPF_PROG(lc_kfree_skb_v1, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	return dropped(skb, reason, skb->sk);
}

/* Every segment received on an established connection, on every socket of
 * the host: this must stay cheap, so nothing per socket is looked up unless
 * an RTT sample is due. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(lc_tcp_probe, struct sock *sk, const struct sk_buff *skb)
{
	const struct tcp_sock *tp = bpf_core_cast(sk, struct tcp_sock);
	/* Zero window, from the transition itself: this tracepoint fires
	 * before the segment is processed, so snd_wnd is still the window the
	 * peer advertised last, and the header carries the new one. */
	const struct tcphdr *th = bpf_core_cast(skb->head + skb->transport_header, struct tcphdr);
	__u16 win = th->window;
	__u32 snd_wnd = tp->snd_wnd;
	if (!th->syn && !th->rst && (win == 0) != (snd_wnd == 0)) {
		struct conn_event e = {};
		if (sock_event_fill(sk, win ? CONN_WINDOW_REOPEN : CONN_ZERO_WINDOW, 0, &e)) {
			/* The window this segment advertises, not the one it ends. */
			e.snd_wnd = (__u32)bpf_ntohs(win) << BPF_CORE_READ_BITFIELD(tp, rx_opt.snd_wscale);
			submit(&e);
		}
		return 0;
	}
	/* RTT of live connections, at most one sample per CPU per
	 * RTT_SAMPLE_NS (every followed connection adds its final one at
	 * close): a sample of the segments, not of every one. */
	if (!cfg.histograms)
		return 0;
	__u32 zero = 0;
	__u64 *next = bpf_map_lookup_elem(&rtt_next_sample, &zero);
	if (!next)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now < *next)
		return 0;
	/* 0 if nobody asked for it: then we did not follow the socket. */
	__u64 cookie = sk->__sk_common.skc_cookie.counter;
	struct sock_info *si = cookie ? bpf_map_lookup_elem(&socks, &cookie) : NULL;
	if (!si)
		return 0; /* connections made before we started: not followed */
	*next = now + RTT_SAMPLE_NS;
	rtt_record(si, sk);
	return 0;
}

SEC("tp_btf/sock_rcvqueue_full")
int BPF_PROG(lc_sock_rcvqueue_full, struct sock *sk, struct sk_buff *skb)
{
	if (sk->sk_protocol != IPPROTO_TCP_NUM)
		return 0;
	return sock_event(sk, CONN_RCVQ_FULL, 0);
}
