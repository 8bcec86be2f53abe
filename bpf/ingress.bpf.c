// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Ingress hook family: one XDP and one TC program around one parser.
 *
 * Both fail open: whatever happens, the packet is passed (XDP_PASS /
 * TC_ACT_OK), unless `tcpscope guard` loaded them with its rules on and a
 * rule matches. Every early return that loses information bumps a counter.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common_kern_user.h"
#include "parse_kern.h"

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Filled in by user space before load; see struct tcpscope_config. */
const volatile struct tcpscope_config cfg = {};

/* Anchor the shared types in BTF so the skeleton generates Rust for them. */
struct packet_event _packet_event = {};
struct packet_event_snap _packet_event_snap = {};
enum tcpscope_malformed _malformed = MALFORMED_NONE;
enum tcpscope_hook _hook = TCPSCOPE_HOOK_XDP;
enum tcpscope_flag_index _flag_index = FLAG_IDX_FIN;
enum tcpscope_limits _limits = TCPSCOPE_MAX_SNAPLEN;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcpscope_counters);
} counters SEC(".maps");

/* Policy (guard). Pinned by user space, which edits them at runtime. */
#define POLICY_MAX_RULES 262144

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, POLICY_MAX_RULES);
	__type(key, struct policy_key_v4);
	__type(value, struct policy_value);
} allow_v4 SEC(".maps"), block_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, POLICY_MAX_RULES);
	__type(key, struct policy_key_v6);
	__type(value, struct policy_value);
} allow_v6 SEC(".maps"), block_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, POLICY_MAX_RULES);
	__type(key, struct port_key_v4);
	__type(value, struct policy_value);
} ports_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, POLICY_MAX_RULES);
	__type(key, struct port_key_v6);
	__type(value, struct policy_value);
} ports_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024); /* user space may resize before load */
} events SEC(".maps");

static __always_inline bool port_in(const volatile __u16 *list, __u8 n, __u16 port)
{
#pragma unroll
	for (int i = 0; i < TCPSCOPE_MAX_FILTER_PORTS; i++) {
		if (i >= n)
			break;
		if (list[i] == port)
			return true;
	}
	return false;
}

static __always_inline bool cidr_match(const volatile struct tcpscope_cidr *c,
				       __u8 ip_version, const __u8 *addr)
{
	if (c->family != ip_version)
		return false;
	const __u64 *a = (const __u64 *)addr;
	const volatile __u64 *net = (const volatile __u64 *)c->addr;
	const volatile __u64 *mask = (const volatile __u64 *)c->mask;
	return ((a[0] & mask[0]) == net[0]) && ((a[1] & mask[1]) == net[1]);
}

static __always_inline bool cidr_in(const volatile struct tcpscope_cidr *list, __u8 n,
				    __u8 ip_version, const __u8 *addr)
{
#pragma unroll
	for (int i = 0; i < TCPSCOPE_MAX_FILTER_CIDRS; i++) {
		if (i >= n)
			break;
		if (cidr_match(&list[i], ip_version, addr))
			return true;
	}
	return false;
}

/* The user's event filter. With an empty filter every test folds away. */
static __always_inline bool event_wanted(const struct packet_event *ev)
{
	if ((ev->flags_raw & cfg.flags_set) != cfg.flags_set)
		return false;
	if (ev->flags_raw & cfg.flags_clear)
		return false;
	if (cfg.n_ports && !port_in(cfg.ports, cfg.n_ports, ev->sport) &&
	    !port_in(cfg.ports, cfg.n_ports, ev->dport))
		return false;
	if (cfg.n_sports && !port_in(cfg.sports, cfg.n_sports, ev->sport))
		return false;
	if (cfg.n_dports && !port_in(cfg.dports, cfg.n_dports, ev->dport))
		return false;
	if (cfg.n_src && !cidr_in(cfg.src, cfg.n_src, ev->ip_version, ev->src))
		return false;
	if (cfg.n_dst && !cidr_in(cfg.dst, cfg.n_dst, ev->ip_version, ev->dst))
		return false;
	return true;
}

static __always_inline void count_flags(struct tcpscope_counters *c, __u16 f)
{
	/* Branch per flag: cheaper than a loop over a table for 9 bits. */
	if (f & TCPF_FIN) c->flag[FLAG_IDX_FIN]++;
	if (f & TCPF_SYN) c->flag[FLAG_IDX_SYN]++;
	if (f & TCPF_RST) c->flag[FLAG_IDX_RST]++;
	if (f & TCPF_PSH) c->flag[FLAG_IDX_PSH]++;
	if (f & TCPF_ACK) c->flag[FLAG_IDX_ACK]++;
	if (f & TCPF_URG) c->flag[FLAG_IDX_URG]++;
	if (f & TCPF_ECE) c->flag[FLAG_IDX_ECE]++;
	if (f & TCPF_CWR) c->flag[FLAG_IDX_CWR]++;
	if (f & TCPF_AE) c->flag[FLAG_IDX_AE]++;
	if ((f & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
		c->syn_no_ack++;
	else if ((f & (TCPF_SYN | TCPF_ACK)) == (TCPF_SYN | TCPF_ACK))
		c->syn_ack++;
}

static __always_inline void count_malformed(struct tcpscope_counters *c, __u8 reason)
{
	/* One 64-bit bound check that clang cannot fold into a form the
	 * verifier loses track of; slot 0 (MALFORMED_NONE) is never read. */
	__u64 idx = reason;
	asm volatile("" : "+r"(idx));
	if (idx >= MALFORMED_MAX)
		idx = MALFORMED_NONE;
	c->malformed[idx]++;
}

/*
 * Waking the reader on every event costs more than the whole parse (an
 * irq_work per packet, ~0.5 us). Submit silently and wake the reader only
 * once this much data waits; the reader also polls on a short timeout, so a
 * quiet stream is still delivered promptly.
 */
#define WAKEUP_BYTES (64 * 1024)

static __always_inline __u64 submit_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
}

/*
 * Copy the event into the ring buffer; with cfg.copy_frame, also the frame's
 * first bytes: its headers and at most cfg.snaplen payload bytes (never
 * Ethernet padding, never payload the user did not ask for).
 */
static __always_inline void emit_event(void *ctx, struct tcpscope_counters *c,
				       struct packet_event *ev, __u32 tcp_off,
				       __u32 payload_off, __u32 frame_len, __u8 hook)
{
	/* 64-bit: a 32-bit copy of a length loses its bounds in the verifier. */
	__u64 cap = 0;

	if (cfg.copy_frame) {
		if (ev->malformed) {
			cap = tcp_off + TCP_MIN_HLEN; /* fixed header: the rest is suspect */
		} else {
			__u64 snap = 0;
			if (cfg.snaplen && payload_off < frame_len) {
				snap = frame_len - payload_off;
				if (snap > ev->payload_len)
					snap = ev->payload_len;
				if (snap > cfg.snaplen)
					snap = cfg.snaplen;
			}
			cap = payload_off + snap;
		}
		if (cap > frame_len)
			cap = frame_len;
	}
	ev->ts_ns = bpf_ktime_get_ns();

	if (!cap) {
		struct packet_event *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);
		if (!out) {
			c->events_lost++;
			return;
		}
		__builtin_memcpy(out, ev, sizeof(*out));
		bpf_ringbuf_submit(out, submit_flags());
		c->events++;
		return;
	}

	struct packet_event_snap *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);
	if (!out) {
		c->events_lost++;
		return;
	}
	/* Re-check right before use: clang otherwise reuses an older register
	 * whose bounds the verifier cannot see. */
	asm volatile("" : "+r"(cap));
	if (cap > TCPSCOPE_MAX_CAPTURE)
		cap = TCPSCOPE_MAX_CAPTURE;
	ev->cap_len = cap;
	__builtin_memcpy(&out->ev, ev, sizeof(*ev));
	long err;
	if (hook == TCPSCOPE_HOOK_XDP)
		err = bpf_xdp_load_bytes(ctx, 0, out->frame, cap);
	else
		err = bpf_skb_load_bytes(ctx, 0, out->frame, cap);
	if (err)
		out->ev.cap_len = 0;
	bpf_ringbuf_submit(out, submit_flags());
	c->events++;
}

enum verdict {
	VERDICT_PASS = 0,
	VERDICT_ALLOW, /* allow-listed: no rule may drop it */
	VERDICT_DROP,
};

/* A live rule counts the hit; an expired one is ignored (user space deletes
 * it soon after). */
static __always_inline bool rule_live(struct policy_value *v)
{
	if (!v)
		return false;
	if (v->expires_ns && v->expires_ns <= bpf_ktime_get_ns())
		return false;
	__sync_fetch_and_add(&v->hits, 1);
	return true;
}

/* Allow and block lists, by source address. */
static __always_inline int source_verdict(const struct packet_event *ev)
{
	if (ev->ip_version == 4) {
		struct policy_key_v4 k = { .prefixlen = 32 };
		__builtin_memcpy(k.addr, ev->src, 4);
		if (rule_live(bpf_map_lookup_elem(&allow_v4, &k)))
			return VERDICT_ALLOW;
		if (rule_live(bpf_map_lookup_elem(&block_v4, &k)))
			return VERDICT_DROP;
	} else {
		struct policy_key_v6 k = { .prefixlen = 128 };
		__builtin_memcpy(k.addr, ev->src, 16);
		if (rule_live(bpf_map_lookup_elem(&allow_v6, &k)))
			return VERDICT_ALLOW;
		if (rule_live(bpf_map_lookup_elem(&block_v6, &k)))
			return VERDICT_DROP;
	}
	return VERDICT_PASS;
}

/* Destination-port deny rules, optionally per source prefix. */
static __always_inline int port_verdict(const struct packet_event *ev)
{
	__u16 port_be = bpf_htons(ev->dport);
	if (ev->ip_version == 4) {
		struct port_key_v4 k = { .prefixlen = 16 + 32 };
		__builtin_memcpy(k.port, &port_be, 2);
		__builtin_memcpy(k.addr, ev->src, 4);
		return rule_live(bpf_map_lookup_elem(&ports_v4, &k)) ? VERDICT_DROP : VERDICT_PASS;
	}
	struct port_key_v6 k = { .prefixlen = 16 + 128 };
	__builtin_memcpy(k.port, &port_be, 2);
	__builtin_memcpy(k.addr, ev->src, 16);
	return rule_live(bpf_map_lookup_elem(&ports_v6, &k)) ? VERDICT_DROP : VERDICT_PASS;
}

/* The whole per-packet path. data..data_end is the linear packet.
 * Returns VERDICT_DROP only for packets a guard rule drops. */
static __always_inline int handle_packet(void *ctx, void *data, void *data_end,
					 __u32 frame_len, __u32 ifindex, __u8 hook)
{
	__u32 zero = 0;
	struct tcpscope_counters *c = bpf_map_lookup_elem(&counters, &zero);
	if (!c)
		return VERDICT_PASS; /* cannot happen for a 1-slot array */

	c->packets++;
	c->bytes += frame_len;

	struct packet_event ev;
	__builtin_memset(&ev, 0, sizeof(ev));
	struct hdr_cursor nh = { .pos = data };
	struct l3_info l3 = {};
	int res;

	int proto = parse_ethhdr(&nh, data_end, &ev);
	if (proto < 0) {
		count_malformed(c, -proto);
		return VERDICT_PASS;
	}
	__u32 l3_off = nh.pos - data;
	if (proto == ETH_P_IP)
		res = parse_ipv4(&nh, data_end, &ev, &l3);
	else if (proto == ETH_P_IPV6)
		res = parse_ipv6(&nh, data_end, &ev, &l3);
	else
		res = PARSE_NON_TCP;

	if (res == PARSE_MALFORMED) {
		count_malformed(c, ev.malformed);
		return VERDICT_PASS; /* fail open */
	}
	/* Guard: source allow/block lists apply to every IP packet. */
	int verdict = VERDICT_PASS;
	if (cfg.policy && ev.ip_version) {
		verdict = source_verdict(&ev);
		if (verdict == VERDICT_DROP) {
			c->policy_dropped++;
			return VERDICT_DROP;
		}
		if (verdict == VERDICT_ALLOW)
			c->policy_allowed++;
	}
	if (res == PARSE_NON_TCP) {
		c->non_tcp++;
		return VERDICT_PASS;
	}
	if (res == PARSE_FRAGMENT) {
		c->ip_fragments++;
		return VERDICT_PASS;
	}

	void *tcp_start = nh.pos;
	if (parse_tcp(ctx, hook, data, &nh, data_end, &ev, &l3) == PARSE_MALFORMED) {
		/* Not even the fixed header: no ports, so no event. */
		count_malformed(c, ev.malformed);
		return VERDICT_PASS;
	}
	if (!ev.malformed && !(ev.ip_flags & IPF_JUMBO)) {
		/* A header claiming more bytes than the frame has: the packet was
		 * cut short, or its IP length lies. Compared with the whole frame,
		 * not data_end: at TC the skb may be non-linear. */
		__u32 ip_end = l3_off + ev.ip_len + (ev.ip_version == 6 ? sizeof(struct ipv6hdr) : 0);
		if (ip_end > frame_len)
			ev.malformed = MALFORMED_IP_LEN_EXCEEDS_FRAME;
	}
	c->tcp_packets++;
	c->tcp_bytes += frame_len;
	count_flags(c, ev.flags_raw);
	if (ev.malformed)
		count_malformed(c, ev.malformed);

	if (cfg.policy && verdict == VERDICT_PASS && port_verdict(&ev) == VERDICT_DROP) {
		c->policy_dropped++;
		return VERDICT_DROP;
	}

	if (!cfg.events_enabled)
		return VERDICT_PASS;
	if (!event_wanted(&ev)) {
		c->filtered_out++;
		return VERDICT_PASS;
	}
	if (cfg.sample_every > 1) {
		if (c->sample_tick++ % cfg.sample_every) {
			c->sampled_out++;
			return VERDICT_PASS;
		}
	}

	__u32 tcp_off = tcp_start - data;
	__u32 payload_off = tcp_off + ev.hdr_len;
	ev.hook = hook;
	ev.ifindex = ifindex;
	ev.frame_len = frame_len;
	ev.payload_off = ev.malformed ? 0 : payload_off;
	emit_event(ctx, c, &ev, tcp_off, payload_off, frame_len, hook);
	return VERDICT_PASS;
}

SEC("xdp")
int tcpscope_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	/* Only a guard rule drops; everything else, errors included, passes. */
	if (handle_packet(ctx, data, data_end, (__u32)(data_end - data), ctx->ingress_ifindex,
			  TCPSCOPE_HOOK_XDP) == VERDICT_DROP)
		return XDP_DROP;
	return XDP_PASS;
}

/* Headers this deep must be in the linear part for direct access. */
#define TC_PULL_LEN 256

/*
 * Load one __sk_buff field as a single "rX = *(u32 *)(ctx + off)".
 * vmlinux.h makes every field access a CO-RE relocation, and clang then shares
 * the "ctx + off" address between the loads before and after
 * bpf_skb_pull_data(); the verifier refuses any access through a modified ctx
 * pointer. The asm keeps each load in the one form the verifier accepts.
 */
#define SKB_LOAD(skb, field)                                                       \
	({                                                                         \
		__u64 __v; /* 64-bit: data pointers must not be truncated */  \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                              \
			     : "=r"(__v)                                           \
			     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, field))); \
		__v;                                                               \
	})

SEC("tc")
int tcpscope_tc(struct __sk_buff *skb)
{
	__u32 len = SKB_LOAD(skb, len);
	__u32 ifindex = SKB_LOAD(skb, ingress_ifindex);
	__u32 linear = SKB_LOAD(skb, data_end) - SKB_LOAD(skb, data);

	if (linear < len && linear < TC_PULL_LEN)
		bpf_skb_pull_data(skb, len < TC_PULL_LEN ? len : TC_PULL_LEN);

	void *data = (void *)(long)SKB_LOAD(skb, data);
	void *data_end = (void *)(long)SKB_LOAD(skb, data_end);

	if (handle_packet(skb, data, data_end, len, ifindex, TCPSCOPE_HOOK_TC) == VERDICT_DROP)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
