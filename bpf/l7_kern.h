/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * L7 hints: the client streams the kernel follows (struct l7_flow in
 * common_kern_user.h says how), and the chunks it copies of them into the
 * `events` ring buffer. Included by ingress.bpf.c after its maps.
 */
#ifndef TCPSCOPE_L7_KERN_H
#define TCPSCOPE_L7_KERN_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, L7_MAX_FLOWS);
	__type(key, struct l7_flow_key);
	__type(value, struct l7_flow);
} l7_flows SEC(".maps");

/* What the L7 code needs of a packet: the caller copies it here (a few
 * fields, not the whole event: a pointer to the event would make all of it
 * live across the caller's paths, which multiplied the states the verifier
 * walks past its limit). */
struct l7_pkt {
	__u8 src[16];
	__u8 dst[16];
	__u32 seq;
	__u32 payload_len;
	__u32 ifindex;
	__u32 frame_len;
	__u16 sport;
	__u16 dport;
	__u16 flags_raw;
	__u16 payload_off;
	__u8 ip_version;
	__u8 malformed;
	__u8 hook;
	__u8 _pad[5];
};

/* The packet, the flow's key and a socket lookup's tuple, in a per-CPU
 * scratch slot: the ingress program's stack is nearly full (see
 * top_sources_kern.h). */
struct l7_scratch {
	struct l7_pkt p;
	struct l7_flow_key k;
	struct l7_flow v;
	struct bpf_sock_tuple t;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l7_scratch);
} l7_scratch SEC(".maps");

/* The scratch slot's key, not on the stack: the caller leaves the L7 code
 * 16 bytes of it (512 in all). */
static const __u32 l7_zero = 0;

#ifndef BPF_F_CURRENT_NETNS
#define BPF_F_CURRENT_NETNS (-1L)
#endif

/* The socket of this host (in the interface's network namespace) that
 * would take the packet's segment: its connection's, a listener, or
 * none. The caller releases it. */
static __always_inline struct bpf_sock *l7_sock(void *ctx, struct bpf_sock_tuple *t, const struct l7_pkt *p)
{
	if (p->ip_version == 4) {
		__builtin_memcpy(&t->ipv4.saddr, p->src, 4);
		__builtin_memcpy(&t->ipv4.daddr, p->dst, 4);
		t->ipv4.sport = bpf_htons(p->sport);
		t->ipv4.dport = bpf_htons(p->dport);
		return bpf_skc_lookup_tcp(ctx, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	__builtin_memcpy(t->ipv6.saddr, p->src, 16);
	__builtin_memcpy(t->ipv6.daddr, p->dst, 16);
	t->ipv6.sport = bpf_htons(p->sport);
	t->ipv6.dport = bpf_htons(p->dport);
	return bpf_skc_lookup_tcp(ctx, t, sizeof(t->ipv6), BPF_F_CURRENT_NETNS, 0);
}

/* Whether a socket of this host would take the SYN: a listener, or a
 * connection it retransmits for. Only such SYNs are followed: a scan's
 * SYNs to closed ports would fill the flow table and wait out the idle
 * timeout. */
static __always_inline bool l7_listening(void *ctx, struct bpf_sock_tuple *t, const struct l7_pkt *p)
{
	struct bpf_sock *sk = l7_sock(ctx, t, p);
	if (!sk)
		return false;
	bpf_sk_release(sk);
	return true;
}

/* The flow key of the packet (the client's side first). */
static __always_inline void l7_key_of(struct l7_flow_key *k, const struct l7_pkt *p)
{
	__builtin_memcpy(k->src, p->src, 16);
	__builtin_memcpy(k->dst, p->dst, 16);
	k->sport = p->sport;
	k->dport = p->dport;
	k->ip_version = p->ip_version;
	__builtin_memset(k->_pad, 0, sizeof(k->_pad));
}

/* What the L7 code needs of a packet, from its event. */
static __always_inline void l7_pkt_of(struct l7_pkt *p, const struct packet_event *ev, __u32 payload_off,
				      __u32 frame_len, __u32 ifindex, const __u8 hook)
{
	__builtin_memcpy(p->src, ev->src, 16);
	__builtin_memcpy(p->dst, ev->dst, 16);
	p->seq = ev->seq;
	p->payload_len = ev->payload_len;
	p->ifindex = ifindex;
	p->frame_len = frame_len;
	p->sport = ev->sport;
	p->dport = ev->dport;
	p->flags_raw = ev->flags_raw;
	p->payload_off = ev->malformed ? 0 : payload_off;
	p->ip_version = ev->ip_version;
	p->malformed = ev->malformed;
	p->hook = hook;
}

/* A record's event, from the packet: what user space reads of it (the
 * other fields zero), marked as an L7 record. */
static __always_inline void l7_event(struct packet_event *e, const struct l7_pkt *p, __u64 ts)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = ts;
	__builtin_memcpy(e->src, p->src, 16);
	__builtin_memcpy(e->dst, p->dst, 16);
	e->ifindex = p->ifindex;
	e->frame_len = p->frame_len;
	e->hook = p->hook;
	e->ip_version = p->ip_version;
	e->malformed = p->malformed;
	e->sport = p->sport;
	e->dport = p->dport;
	e->seq = p->seq;
	e->flags_raw = p->flags_raw;
	e->payload_len = p->payload_len;
	e->payload_off = p->payload_off;
	e->l7 = 1;
}

/* A packet of a followed flow with nothing to copy (a SYN, FIN or RST):
 * the event alone. */
static __always_inline void l7_emit_bare(struct tcpscope_counters *c, const struct l7_pkt *p, __u64 ts)
{
	struct packet_event *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);
	if (!out) {
		c->events_lost++;
		return;
	}
	l7_event(out, p, ts);
	bpf_ringbuf_submit(out, ringbuf_wakeup_flags(&events, sizeof(*out), WAKEUP_BYTES));
	c->events++;
}

/* Payload bytes [0, len) of the segment, in chunks. */
static __always_inline void l7_emit_chunks(void *ctx, struct tcpscope_counters *c, const struct l7_pkt *p,
					   __u64 ts, __u32 len, const __u8 hook)
{
	for (int i = 0; i < L7_MAX_CHUNKS; i++) {
		__u32 off = i * L7_CHUNK;
		if (off >= len)
			break;
		struct l7_chunk *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);
		if (!out) {
			c->events_lost++;
			return;
		}
		l7_event(&out->ev, p, ts);
		if (off + L7_CHUNK < len)
			out->ev.flags_raw &= ~(TCPF_FIN | TCPF_RST);
		/* 1..L7_CHUNK, in a form the verifier can bound. */
		__u64 n = len - off;
		asm volatile("" : "+r"(n));
		n = ((n - 1) & (L7_CHUNK - 1)) + 1;
		long err;
		if (hook == TCPSCOPE_HOOK_XDP)
			err = bpf_xdp_load_bytes(ctx, p->payload_off + off, out->data, n);
		else
			err = bpf_skb_load_bytes(ctx, p->payload_off + off, out->data, n);
		out->data_off = off;
		out->data_len = err ? 0 : n;
		bpf_ringbuf_submit(out, ringbuf_wakeup_flags(&events, sizeof(*out), WAKEUP_BYTES));
		c->events++;
	}
}

/* One TCP packet, with L7 hints on (the caller has checked that it is a
 * SYN the filter wants, a FIN or RST, or carries payload): a SYN starts
 * following its flow if a socket would take it; a followed flow's first
 * L7_MAX_STREAM client bytes are copied; its FIN or RST ends it. */
static __always_inline void l7_packet(void *ctx, const __u8 hook)
{
	struct l7_scratch *s = bpf_map_lookup_elem(&l7_scratch, &l7_zero);
	struct tcpscope_counters *c = bpf_map_lookup_elem(&counters, &l7_zero);
	if (!s || !c)
		return; /* cannot happen: 1-slot arrays */
	struct l7_pkt *p = &s->p;
	struct l7_flow_key *k = &s->k;
	l7_key_of(k, p);
	__u16 f = p->flags_raw;
	bool ends = f & (TCPF_FIN | TCPF_RST);

	if ((f & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
		if (!l7_listening(ctx, &s->t, p)) {
			c->l7_not_listening++;
			return;
		}
		/* The clock only for packets that go out: read for every
		 * segment, it cost each 1,400-byte segment of a named
		 * connection 25 ns more at TC (bench l7, development VM). */
		__u64 ts = bpf_ktime_get_ns();
		s->v.syn_ns = ts;
		s->v.isn = p->seq;
		if (bpf_map_update_elem(&l7_flows, k, &s->v, BPF_ANY)) {
			c->l7_untracked++;
			return;
		}
		l7_emit_bare(c, p, ts);
		return;
	}
	struct l7_flow *fl = bpf_map_lookup_elem(&l7_flows, k);
	if (!fl)
		return;
	__u64 ts = bpf_ktime_get_ns();
	/* The stream offset of the segment's first byte; past the copied
	 * bytes, or before the stream (an old segment): nothing to copy. */
	__u32 at = p->seq - fl->isn - 1;
	__u32 len = 0;
	if (at < L7_MAX_STREAM && p->payload_off < p->frame_len && !p->malformed) {
		len = p->frame_len - p->payload_off;
		if (len > p->payload_len)
			len = p->payload_len;
		if (len > L7_MAX_STREAM - at)
			len = L7_MAX_STREAM - at;
	}
	if (len)
		l7_emit_chunks(ctx, c, p, ts, len, hook);
	else if (ends)
		l7_emit_bare(c, p, ts);
	if (ends)
		bpf_map_delete_elem(&l7_flows, k);
}

/*
 * The entry points: global functions, which the verifier checks once, on
 * their own, whatever path of the ingress program calls them. Inlined, the
 * L7 code multiplied the paths of the programs that also write events or
 * inspect as a guard past the verifier's limit (E2BIG). One per hook: each
 * may call only its own hook's helpers. The packet is in the scratch slot.
 */
__noinline int l7_packet_xdp(struct xdp_md *ctx)
{
	if (!ctx)
		return 0;
	l7_packet(ctx, TCPSCOPE_HOOK_XDP);
	return 0;
}

__noinline int l7_packet_tc(struct __sk_buff *ctx)
{
	if (!ctx)
		return 0;
	l7_packet(ctx, TCPSCOPE_HOOK_TC);
	return 0;
}

/* Called by the ingress program for each TCP packet when L7 hints are on. */
static __always_inline void l7_hand_over(void *ctx, struct tcpscope_counters *c, const struct packet_event *ev,
					 __u32 payload_off, __u32 frame_len, __u32 ifindex, const __u8 hook)
{
	__u16 f = ev->flags_raw;
	bool syn = (f & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
	/* A bare ACK tells a stream nothing: the most common incoming packet
	 * (a download's) costs no lookup. */
	if (!syn && !(f & (TCPF_FIN | TCPF_RST)) && !ev->payload_len)
		return;
	if (syn && !event_wanted(ev)) {
		c->filtered_out++;
		return;
	}
	struct l7_scratch *s = bpf_map_lookup_elem(&l7_scratch, &l7_zero);
	if (!s)
		return; /* cannot happen: a 1-slot array */
	l7_pkt_of(&s->p, ev, payload_off, frame_len, ifindex, hook);
	if (hook == TCPSCOPE_HOOK_XDP)
		l7_packet_xdp(ctx);
	else
		l7_packet_tc(ctx);
}

#endif /* TCPSCOPE_L7_KERN_H */
