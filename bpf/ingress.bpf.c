// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Ingress hook family: one XDP and one TC program around one parser.
 *
 * Both fail open: whatever happens, the packet is passed (XDP_PASS, or
 * TCX_NEXT at TC, which lets every program attached after ours on the same
 * tcx chain run: TC_ACT_OK would be TCX_PASS and end the chain), unless
 * `tcpscope guard` loaded them with its rules on and a rule matches. Every
 * early return that loses information bumps a counter.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common_kern_user.h"
#include "parse_kern.h"
#include "ringbuf_kern.h"
#include "peer_conns_kern.h"
#include "top_sources_kern.h"

#define TC_ACT_SHOT 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Filled in by user space before load; see struct tcpscope_config. */
const volatile struct tcpscope_config cfg = {};
const volatile struct detect_config dcfg = {};

/* Anchor the shared types in BTF so the skeleton generates Rust for them. */
struct packet_event _packet_event = {};
struct packet_event_snap _packet_event_snap = {};
enum tcpscope_malformed _malformed = MALFORMED_NONE;
enum tcpscope_hook _hook = TCPSCOPE_HOOK_XDP;
enum tcpscope_flag_index _flag_index = FLAG_IDX_FIN;
enum tcpscope_limits _limits = TCPSCOPE_MAX_SNAPLEN;
enum top_sources_limits _top_limits = TOP_WIDTH;
struct alert_event _alert_event = {};
enum alert_kind _alert_kind = ALERT_PORT_SCAN;
enum guard_drop_reason _guard_drop_reason = GUARD_DROP_NONE;
enum policy_list _policy_list = POLICY_ALLOW_V4;
enum tcp_flag_bits _tcp_flag_bits = TCPF_FIN;
enum ip_flag_bits _ip_flag_bits = IPF_HAS_ID;
enum tcp_opt_bits _tcp_opt_bits = OPT_MSS;
struct expiring_key _expiring_key = {};
struct l7_chunk _l7_chunk = {};
struct l7_flow_key _l7_flow_key = {};
struct l7_flow _l7_flow = {};
enum l7_limits _l7_limits = L7_CHUNK;
enum l7_rule_kind _l7_rule_kind = L7_RULE_SNI;
enum l7_guard_limits _l7_guard_limits = L7_GUARD_BUF;
enum l7_undecided _l7_undecided = L7_UNDECIDED_TOO_LARGE;
enum l7_guard_state _l7_guard_state = L7_GUARD_READING;
enum alert_limits _alert_limits = ALERT_NAME_MAX;
struct l7_rule_key _l7_rule_key = {};
struct l7_guard_flow _l7_guard_flow = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcpscope_counters);
} counters SEC(".maps");

/* Policy (guard). Pinned by user space, which edits them at runtime. */
#define POLICY_MAX_RULES (1 << 20) /* per list; tries allocate per rule (NO_PREALLOC) */

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
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct policy_used);
} policy_used SEC(".maps");

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

/* The rules with an expiry (struct expiring_key). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, POLICY_MAX_RULES);
	__type(key, struct expiring_key);
	__type(value, __u64); /* expires_ns, as in the rule */
} expiring SEC(".maps");

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

/* Wake the reader once per this much backlog (ringbuf_kern.h). */
#define WAKEUP_BYTES (64 * 1024)

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
		bpf_ringbuf_submit(out, ringbuf_wakeup_flags(&events, sizeof(*out), WAKEUP_BYTES));
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
	bpf_ringbuf_submit(out, ringbuf_wakeup_flags(&events, sizeof(*out), WAKEUP_BYTES));
	c->events++;
}

#include "l7_kern.h"

/* Per-source detector state (IPv6 sources by /64). */
struct src_key {
	__u8 addr[16];
};

#define PORT_BITS_WORDS 16 /* 1024-bit set of destination-port hashes */

struct src_state {
	__u64 window_start;
	__u64 port_bits[PORT_BITS_WORDS];
	__u64 tokens_milli;    /* SYN token bucket, in 1/1000 tokens */
	__u64 refilled_ns;
	__u64 last_alert[ALERT_KIND_MAX];
	__u32 ports_seen;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct src_key);
	__type(value, struct src_state);
} sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} alerts SEC(".maps");

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

#include "l7_guard_kern.h"

/* Allow and block lists, by source address. */
static __always_inline int source_verdict(const struct packet_event *ev, const struct policy_used *used)
{
	if (ev->ip_version == 4) {
		struct policy_key_v4 k = { .prefixlen = 32 };
		__builtin_memcpy(k.addr, ev->src, 4);
		if (used->allow_v4 && rule_live(bpf_map_lookup_elem(&allow_v4, &k)))
			return VERDICT_ALLOW;
		if (rule_live(bpf_map_lookup_elem(&block_v4, &k)))
			return VERDICT_DROP;
	} else {
		struct policy_key_v6 k = { .prefixlen = 128 };
		__builtin_memcpy(k.addr, ev->src, 16);
		if (used->allow_v6 && rule_live(bpf_map_lookup_elem(&allow_v6, &k)))
			return VERDICT_ALLOW;
		if (rule_live(bpf_map_lookup_elem(&block_v6, &k)))
			return VERDICT_DROP;
	}
	return VERDICT_PASS;
}

/* Destination-port deny rules, optionally per source prefix. */
static __always_inline int port_verdict(const struct packet_event *ev, const struct policy_used *used)
{
	__u16 port_be = bpf_htons(ev->dport);
	if (ev->ip_version == 4) {
		if (!used->ports_v4)
			return VERDICT_PASS;
		struct port_key_v4 k = { .prefixlen = 16 + 32 };
		__builtin_memcpy(k.port, &port_be, 2);
		__builtin_memcpy(k.addr, ev->src, 4);
		return rule_live(bpf_map_lookup_elem(&ports_v4, &k)) ? VERDICT_DROP : VERDICT_PASS;
	}
	if (!used->ports_v6)
		return VERDICT_PASS;
	struct port_key_v6 k = { .prefixlen = 16 + 128 };
	__builtin_memcpy(k.port, &port_be, 2);
	__builtin_memcpy(k.addr, ev->src, 16);
	return rule_live(bpf_map_lookup_elem(&ports_v6, &k)) ? VERDICT_DROP : VERDICT_PASS;
}

/* One alert, at most once per alert_interval_ns per source and kind. */
static __always_inline void alert(struct src_state *st, const struct src_key *k, const struct packet_event *ev,
				  __u8 kind, __u32 value, __u64 now)
{
	__u32 i = kind;
	if (i >= ALERT_KIND_MAX)
		return;
	if (st->last_alert[i] && now - st->last_alert[i] < dcfg.alert_interval_ns)
		return;
	st->last_alert[i] = now;
	struct alert_event *a = bpf_ringbuf_reserve(&alerts, sizeof(*a), 0);
	if (!a)
		return;
	__builtin_memset(a, 0, sizeof(*a));
	a->ts_ns = now;
	__builtin_memcpy(a->src, k->addr, 16);
	a->value = value;
	a->dport = ev->dport;
	a->flags_raw = ev->flags_raw;
	a->kind = kind;
	a->ip_version = ev->ip_version;
	bpf_ringbuf_submit(a, 0);
}

/* Blocks the source for mitigate_ttl_ns, by inserting a block rule. */
static __always_inline void mitigate(struct src_state *st, const struct src_key *k,
				     const struct packet_event *ev, __u64 now)
{
	struct policy_value v = { .expires_ns = now + dcfg.mitigate_ttl_ns };
	struct expiring_key ek = {};
	if (ev->ip_version == 4) {
		struct policy_key_v4 pk = { .prefixlen = 32 };
		__builtin_memcpy(pk.addr, k->addr, 4);
		bpf_map_update_elem(&block_v4, &pk, &v, BPF_ANY);
		ek.list = POLICY_BLOCK_V4;
		__builtin_memcpy(ek.key, &pk, sizeof(pk));
	} else {
		struct policy_key_v6 pk = { .prefixlen = 64 };
		__builtin_memcpy(pk.addr, k->addr, 16);
		bpf_map_update_elem(&block_v6, &pk, &v, BPF_ANY);
		ek.list = POLICY_BLOCK_V6;
		__builtin_memcpy(ek.key, &pk, sizeof(pk));
	}
	bpf_map_update_elem(&expiring, &ek, &v.expires_ns, BPF_ANY);
	alert(st, k, ev, ALERT_MITIGATION, dcfg.mitigate_ttl_ns / 1000000000ULL, now);
}

/* The detectors' state of the packet's source (IPv6: its /64), made on
 * first sight; k is filled in. NULL only if the LRU map refuses. */
static __always_inline struct src_state *source_state(const struct packet_event *ev, struct src_key *k, __u64 now)
{
	if (ev->ip_version == 4)
		__builtin_memcpy(k->addr, ev->src, 4);
	else
		__builtin_memcpy(k->addr, ev->src, 8); /* the /64 */
	struct src_state *st = bpf_map_lookup_elem(&sources, k);
	if (st)
		return st;
	/* From a zero value in read-only data: the state is too big for a
	 * stack that already holds the packet event. */
	static const struct src_state zero = {};
	bpf_map_update_elem(&sources, k, &zero, BPF_NOEXIST);
	st = bpf_map_lookup_elem(&sources, k);
	if (!st)
		return NULL;
	st->window_start = now;
	st->refilled_ns = now;
	st->tokens_milli = (__u64)dcfg.syn_burst * 1000;
	return st;
}

/* --enforce refused a SYN: an alert (with the detectors on), and with
 * --mitigate the source is blocked for a while, as for a scan or flood. */
static __always_inline void conn_limit_refused(const struct packet_event *ev, __u32 held)
{
	if (!dcfg.enabled)
		return;
	struct src_key k = {};
	__u64 now = bpf_ktime_get_ns();
	struct src_state *st = source_state(ev, &k, now);
	if (!st)
		return;
	alert(st, &k, ev, ALERT_CONN_LIMIT, held, now);
	if (dcfg.mitigate_ttl_ns)
		mitigate(st, &k, ev, now);
}

#define F_SCAN_MASK (TCPF_FIN | TCPF_SYN | TCPF_RST | TCPF_PSH | TCPF_ACK | TCPF_URG)

/* Flag anomalies, port scans and SYN floods. Returns VERDICT_DROP when the
 * source has just been blocked by mitigation. */
static __always_inline int detect(const struct packet_event *ev)
{
	__u16 f = ev->flags_raw;
	__u16 f6 = f & F_SCAN_MASK;
	bool syn = f & TCPF_SYN, ack = f & TCPF_ACK;
	__u8 anomaly = 0;
	if (f6 == 0)
		anomaly = ALERT_NULL_FLAGS;
	else if ((f6 & (TCPF_FIN | TCPF_PSH | TCPF_URG)) == (TCPF_FIN | TCPF_PSH | TCPF_URG))
		anomaly = ALERT_XMAS;
	else if (syn && (f & TCPF_FIN))
		anomaly = ALERT_SYN_FIN;
	else if (syn && (f & TCPF_RST))
		anomaly = ALERT_SYN_RST;
	else if ((f & TCPF_FIN) && !ack)
		anomaly = ALERT_FIN_NO_ACK;
	else if (syn && !ack && ev->payload_len && !(ev->opt_present & OPT_TFO))
		anomaly = ALERT_SYN_DATA;
	/* Established traffic carries ACK and is no scan or flood: skip the
	 * per-source state, which costs a hash lookup. */
	if (ack && !anomaly)
		return VERDICT_PASS;

	struct src_key k = {};
	__u64 now = bpf_ktime_get_ns();
	struct src_state *st = source_state(ev, &k, now);
	if (!st)
		return VERDICT_PASS;
	if (anomaly)
		alert(st, &k, ev, anomaly, 0, now);

	int verdict = VERDICT_PASS;
	/* Port scan: distinct destination ports of packets without ACK. */
	if (!ack && dcfg.scan_ports) {
		if (now - st->window_start > dcfg.scan_window_ns) {
			st->window_start = now;
			st->ports_seen = 0;
			__builtin_memset(st->port_bits, 0, sizeof(st->port_bits));
		}
		__u32 h = ((__u32)ev->dport * 2654435761u) >> 22; /* 0..1023 */
		__u32 w = (h >> 6) & (PORT_BITS_WORDS - 1);
		__u64 bit = 1ULL << (h & 63);
		if (!(st->port_bits[w] & bit)) {
			st->port_bits[w] |= bit;
			st->ports_seen++;
			if (st->ports_seen >= dcfg.scan_ports) {
				alert(st, &k, ev, ALERT_PORT_SCAN, st->ports_seen, now);
				if (dcfg.mitigate_ttl_ns) {
					mitigate(st, &k, ev, now);
					verdict = VERDICT_DROP;
				}
			}
		}
	}
	/* SYN flood: a token bucket per source. */
	if (syn && !ack && dcfg.syn_rate) {
		__u64 elapsed = now - st->refilled_ns;
		__u64 cap = (__u64)dcfg.syn_burst * 1000;
		if (elapsed > 1000000000ULL)
			elapsed = 1000000000ULL; /* a full second refills at most `rate` */
		st->tokens_milli += elapsed * dcfg.syn_rate / 1000000;
		if (st->tokens_milli > cap)
			st->tokens_milli = cap;
		st->refilled_ns = now;
		if (st->tokens_milli >= 1000) {
			st->tokens_milli -= 1000;
		} else {
			alert(st, &k, ev, ALERT_SYN_FLOOD, dcfg.syn_rate, now);
			if (dcfg.mitigate_ttl_ns) {
				mitigate(st, &k, ev, now);
				verdict = VERDICT_DROP;
			}
		}
	}
	return verdict;
}

/* A guard drop: counted in total and by reason. */
static __always_inline int guard_drop(struct tcpscope_counters *c, __u8 reason)
{
	__u64 idx = reason;
	asm volatile("" : "+r"(idx)); /* as in count_malformed */
	if (idx >= GUARD_DROP_MAX)
		idx = GUARD_DROP_NONE;
	c->guard_dropped[idx]++;
	c->policy_dropped++;
	return VERDICT_DROP;
}

/* IPv6 extension headers (IANA's list) that parse_ipv6 does not walk:
 * authentication, mobility, HIP, shim6 and the two experimental values.
 * ESP is left out: what follows it is encrypted, and IPsec is configured on
 * purpose. */
static __always_inline bool ipv6_ext_unwalked(__u8 next)
{
	return next == 51 || next == 135 || next == 139 || next == 140 || next == 253 || next == 254;
}

/*
 * Guard: a packet whose TCP header this program cannot check, although the
 * kernel may still deliver a TCP segment from it. Returns the drop reason,
 * or GUARD_DROP_NONE to go on.
 *
 * - A first fragment too short for the fixed TCP header, and an IPv4 TCP
 *   fragment at offset 8 bytes, which would overwrite the first one's ports
 *   and flags on reassembly (RFC 1858, RFC 3128): without the drop, a SYN
 *   split after 8 bytes reaches a port that a rule blocks.
 * - With drop_unparsable (the guard's default): IPv6 headers the parser
 *   cannot follow to the transport header (RFC 7112, RFC 9098).
 */
static __always_inline __u8 unfollowable(const struct packet_event *ev, int res, const struct l3_info *l3)
{
	if (res == PARSE_MALFORMED) {
		if (!cfg.drop_unparsable)
			return GUARD_DROP_NONE;
		if (ev->malformed == MALFORMED_IPV6_EXT_TOO_MANY)
			return GUARD_DROP_EXT_CHAIN_TOO_LONG;
		if (ev->malformed == MALFORMED_IPV6_EXT_TRUNCATED)
			return GUARD_DROP_EXT_TRUNCATED;
		return GUARD_DROP_NONE; /* broken IP: the kernel drops it itself */
	}
	if (res == PARSE_NON_TCP)
		return cfg.drop_unparsable && ev->ip_version == 6 && ipv6_ext_unwalked(l3->proto)
			       ? GUARD_DROP_EXT_UNKNOWN
			       : GUARD_DROP_NONE;
	if (res == PARSE_FRAGMENT)
		return ev->ip_version == 4 && l3->frag_off == 1 ? GUARD_DROP_FRAGMENT_OFFSET_1
							      : GUARD_DROP_NONE;
	/* PARSE_OK: a first fragment (more follow) must hold the fixed header. */
	if ((ev->ip_flags & IPF_FRAG) && l3->ip_payload_len < TCP_MIN_HLEN)
		return GUARD_DROP_TINY_FRAGMENT;
	return GUARD_DROP_NONE;
}

/* Guard, for a TCP packet from a source no list decided: the port rules,
 * then the detectors (which may block the source on this very packet). */
static __always_inline int rules_and_detectors(void *ctx, struct tcpscope_counters *c, const struct packet_event *ev,
					       const struct policy_used *used, const __u8 hook)
{
	if (port_verdict(ev, used) == VERDICT_DROP)
		return guard_drop(c, GUARD_DROP_PORT_RULE);
	if (dcfg.enforce_conn_limit && (ev->flags_raw & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
		struct peer_key pk = { .netns = dcfg.netns };
		__builtin_memcpy(pk.addr, ev->src, 16);
		__u32 *held = bpf_map_lookup_elem(&peer_conns, &pk);
		if (held && *held >= dcfg.conn_limit) {
			conn_limit_refused(ev, *held);
			return guard_drop(c, GUARD_DROP_CONN_LIMIT);
		}
	}
	if (dcfg.enabled && detect(ev) == VERDICT_DROP)
		return guard_drop(c, GUARD_DROP_DETECTOR);
	if (used->l7[0]) {
		int why = l7g_hand_over(ctx, ev, hook);
		if (why)
			return guard_drop(c, why);
	}
	return VERDICT_PASS;
}

/* The TCP header's frame offset, from numbers the parser kept: not from
 * its packet pointer, which kept live to the L7 hand-over stopped the
 * verifier from merging the parser's paths (their pointers differ) and
 * took the inspecting guard with L7 hints past its limit. */
static __always_inline __u32 l4_offset(const struct packet_event *ev, const struct l3_info *l3, __u32 l3_off,
				       __u32 frame_len)
{
	if (ev->ip_flags & IPF_JUMBO)
		return frame_len > l3->ip_payload_len ? frame_len - l3->ip_payload_len : 0;
	__u32 ip_total = ev->ip_version == 6 ? (__u32)ev->ip_len + 40 : ev->ip_len;
	return l3_off + ip_total - l3->ip_payload_len;
}

/* The whole per-packet path. data..data_end is the linear packet.
 * Returns VERDICT_DROP only for packets a guard rule drops. */
static __always_inline int handle_packet(void *ctx, void *data, void *data_end,
					 __u32 frame_len, __u32 ifindex, __u8 hook, __u32 hw_vlan)
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
	if (hw_vlan) {
		/* TC: the kernel took the outer tag out of the frame before tc
		 * ran (skb->vlan_tci): it goes first. Past TCPSCOPE_MAX_VLAN tags
		 * the innermost is not kept. */
		ev.vlan[1] = ev.vlan[0];
		ev.vlan[0] = hw_vlan & VLAN_VID_MASK;
		if (ev.vlan_count < TCPSCOPE_MAX_VLAN)
			ev.vlan_count++;
	}
	__u32 l3_off = nh.pos - data;
	__u32 l3_len = frame_len > l3_off ? frame_len - l3_off : 0;
	if (proto == ETH_P_IP)
		res = parse_ipv4(&nh, data_end, &ev, &l3, l3_len);
	else if (proto == ETH_P_IPV6)
		res = parse_ipv6(&nh, data_end, &ev, &l3, l3_len);
	else
		res = PARSE_NON_TCP;

	if (res == PARSE_MALFORMED)
		count_malformed(c, ev.malformed);
	/* Guard: source allow/block lists apply to every IP packet, each
	 * fragment included; then what would let a packet dodge the rules. */
	int verdict = VERDICT_PASS;
	struct policy_used *used = NULL;
	if (cfg.policy && ev.ip_version) {
		used = bpf_map_lookup_elem(&policy_used, &zero);
		if (!used)
			return VERDICT_PASS; /* cannot happen: a 1-slot array */
		verdict = source_verdict(&ev, used);
		if (verdict == VERDICT_DROP)
			return guard_drop(c, GUARD_DROP_BLOCK_RULE);
		if (verdict == VERDICT_ALLOW) {
			c->policy_allowed++;
		} else {
			__u8 why = unfollowable(&ev, res, &l3);
			if (why)
				return guard_drop(c, why);
		}
	}
	if (res == PARSE_MALFORMED)
		return VERDICT_PASS; /* fail open */
	if (res == PARSE_NON_TCP) {
		c->non_tcp++;
		return VERDICT_PASS;
	}
	if (res == PARSE_FRAGMENT) {
		c->ip_fragments++;
		return VERDICT_PASS;
	}

	void *tcp_start = nh.pos;
	if (parse_tcp(ctx, hook, data, &nh, data_end, &ev, &l3, cfg.lean) == PARSE_MALFORMED) {
		/* Not even the fixed header: no ports, so no event. */
		count_malformed(c, ev.malformed);
		return VERDICT_PASS;
	}
	/* Where the payload starts, and the frame's length, for the L7 code
	 * (kept in the event, not in registers: the stack is nearly full). */
	ev.payload_off = l4_offset(&ev, &l3, l3_off, frame_len) + ev.hdr_len;
	ev.frame_len = frame_len;
	if (cfg.lean) {
		/* guard: decide, count what the SYN-ratio detector needs, stop. */
		c->tcp_packets++;
		if ((ev.flags_raw & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
			c->syn_no_ack++;
		if (verdict == VERDICT_PASS && used)
			return rules_and_detectors(ctx, c, &ev, used, hook);
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
	if (cfg.top_sources) {
		__u64 a0, a1;
		__builtin_memcpy(&a0, ev.src, 8);
		__builtin_memcpy(&a1, ev.src + 8, 8);
		top_sources_count(a0, a1, ev.ip_version, (ev.flags_raw & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN);
	}
	if (ev.malformed)
		count_malformed(c, ev.malformed);

	if (cfg.policy && used && verdict == VERDICT_PASS &&
	    rules_and_detectors(ctx, c, &ev, used, hook) == VERDICT_DROP)
		return VERDICT_DROP;

	if (cfg.l7)
		/* Its records go before the packet's own event (watch --l7):
		 * the packet that completes a first message is printed with
		 * the message's hints. */
		l7_hand_over(ctx, c, &ev, ev.payload_off, frame_len, ifindex, hook);
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
			  TCPSCOPE_HOOK_XDP, 0) == VERDICT_DROP)
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

	/* A tag the kernel moved out of the frame: present flag and TCI. */
	__u32 hw_vlan = SKB_LOAD(skb, vlan_present) ? (SKB_LOAD(skb, vlan_tci) | 0x10000) : 0;
	if (handle_packet(skb, data, data_end, len, ifindex, TCPSCOPE_HOOK_TC, hw_vlan) == VERDICT_DROP)
		return TC_ACT_SHOT;
	/* Never the chain's end: the next program (another watch, another
	 * tool's filter) sees the packet too. Outside tcx (a clsact filter)
	 * this is TC_ACT_UNSPEC, which also continues. */
	return TCX_NEXT;
}
