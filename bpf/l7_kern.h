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

/* The key and a socket lookup's tuple, in a per-CPU scratch slot: the
 * ingress program's stack is nearly full (see top_sources_kern.h). */
struct l7_scratch {
	struct l7_flow_key k;
	struct bpf_sock_tuple t;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l7_scratch);
} l7_scratch SEC(".maps");

#ifndef BPF_F_CURRENT_NETNS
#define BPF_F_CURRENT_NETNS (-1L)
#endif

/* Whether a socket of this host (in the interface's network namespace)
 * would take the SYN: a listener, or a connection it retransmits for.
 * Only such SYNs are followed: a scan's SYNs to closed ports would fill
 * the flow table and wait out the idle timeout. */
static __always_inline bool l7_listening(void *ctx, struct bpf_sock_tuple *t, const struct packet_event *ev)
{
	__u32 size;
	if (ev->ip_version == 4) {
		__builtin_memcpy(&t->ipv4.saddr, ev->src, 4);
		__builtin_memcpy(&t->ipv4.daddr, ev->dst, 4);
		t->ipv4.sport = bpf_htons(ev->sport);
		t->ipv4.dport = bpf_htons(ev->dport);
		size = sizeof(t->ipv4);
	} else {
		__builtin_memcpy(t->ipv6.saddr, ev->src, 16);
		__builtin_memcpy(t->ipv6.daddr, ev->dst, 16);
		t->ipv6.sport = bpf_htons(ev->sport);
		t->ipv6.dport = bpf_htons(ev->dport);
		size = sizeof(t->ipv6);
	}
	struct bpf_sock *sk = bpf_skc_lookup_tcp(ctx, t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return false;
	bpf_sk_release(sk);
	return true;
}

/* A packet of a followed flow with nothing to copy (a FIN or RST): the
 * event alone. */
static __always_inline void l7_emit_bare(struct tcpscope_counters *c, const struct packet_event *ev)
{
	struct packet_event *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);
	if (!out) {
		c->events_lost++;
		return;
	}
	__builtin_memcpy(out, ev, sizeof(*out));
	out->l7 = 1;
	bpf_ringbuf_submit(out, ringbuf_wakeup_flags(&events, sizeof(*out), WAKEUP_BYTES));
	c->events++;
}

/* Payload bytes [0, len) of the segment, in chunks. */
static __always_inline void l7_emit_chunks(void *ctx, struct tcpscope_counters *c,
					   const struct packet_event *ev, __u32 payload_off,
					   __u32 len, __u8 hook)
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
		__builtin_memcpy(&out->ev, ev, sizeof(*ev));
		out->ev.l7 = 1;
		if (off + L7_CHUNK < len)
			out->ev.flags_raw &= ~(TCPF_FIN | TCPF_RST);
		/* 1..L7_CHUNK, in a form the verifier can bound. */
		__u64 n = len - off;
		asm volatile("" : "+r"(n));
		n = ((n - 1) & (L7_CHUNK - 1)) + 1;
		long err;
		if (hook == TCPSCOPE_HOOK_XDP)
			err = bpf_xdp_load_bytes(ctx, payload_off + off, out->data, n);
		else
			err = bpf_skb_load_bytes(ctx, payload_off + off, out->data, n);
		out->data_off = off;
		out->data_len = err ? 0 : n;
		bpf_ringbuf_submit(out, ringbuf_wakeup_flags(&events, sizeof(*out), WAKEUP_BYTES));
		c->events++;
	}
}

/* One TCP packet, with L7 hints on: a SYN (that the filter wants) starts
 * following its flow; a followed flow's first L7_MAX_STREAM client bytes
 * are copied; its FIN or RST ends it. */
static __always_inline void l7_packet(void *ctx, struct tcpscope_counters *c, struct packet_event *ev,
				      __u32 payload_off, __u32 frame_len)
{
	__u16 f = ev->flags_raw;
	bool syn = (f & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
	bool ends = f & (TCPF_FIN | TCPF_RST);
	/* A bare ACK tells a stream nothing: the most common incoming packet
	 * (a download's) costs no lookup. */
	if (!syn && !ends && !ev->payload_len)
		return;
	__u32 zero = 0;
	struct l7_scratch *scratch = bpf_map_lookup_elem(&l7_scratch, &zero);
	if (!scratch)
		return; /* cannot happen: a 1-slot array */
	struct l7_flow_key *k = &scratch->k;
	__builtin_memcpy(k->src, ev->src, 16);
	__builtin_memcpy(k->dst, ev->dst, 16);
	k->sport = ev->sport;
	k->dport = ev->dport;
	k->ip_version = ev->ip_version;

	if (syn) {
		if (!event_wanted(ev)) {
			c->filtered_out++;
			return;
		}
		if (!l7_listening(ctx, &scratch->t, ev)) {
			c->l7_not_listening++;
			return;
		}
		/* The clock only for packets that go out: read for every
		 * segment, it cost a named connection's 1,400-byte segments 25
		 * ns more at TC (57 ns, against 33 only counting; bench l7 on
		 * the development VM). The rest is this flow table's lookup. */
		ev->ts_ns = bpf_ktime_get_ns();
		struct l7_flow v = { .syn_ns = ev->ts_ns, .isn = ev->seq };
		if (bpf_map_update_elem(&l7_flows, k, &v, BPF_ANY)) {
			c->l7_untracked++;
			return;
		}
		l7_emit_bare(c, ev);
		return;
	}
	struct l7_flow *fl = bpf_map_lookup_elem(&l7_flows, k);
	if (!fl)
		return;
	ev->ts_ns = bpf_ktime_get_ns();
	/* The stream offset of the segment's first byte; past the copied
	 * bytes, or before the stream (an old segment): nothing to copy. */
	__u32 at = ev->seq - fl->isn - 1;
	__u32 len = 0;
	if (at < L7_MAX_STREAM && payload_off < frame_len && !ev->malformed) {
		len = frame_len - payload_off;
		if (len > ev->payload_len)
			len = ev->payload_len;
		if (len > L7_MAX_STREAM - at)
			len = L7_MAX_STREAM - at;
	}
	if (len)
		l7_emit_chunks(ctx, c, ev, payload_off, len, ev->hook);
	else if (ends)
		l7_emit_bare(c, ev);
	if (ends)
		bpf_map_delete_elem(&l7_flows, k);
}

#endif /* TCPSCOPE_L7_KERN_H */
