/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Types shared by the kernel programs and user space.
 *
 * User space never mirrors these by hand: each .bpf.c declares one dummy
 * instance of every struct and enum here, so they land in the object's BTF and
 * libbpf-cargo generates the Rust types (`types::packet_event`, ...).
 *
 * Every struct uses fixed-width fields and explicit padding so that the layout
 * is the same for clang -target bpf and for the generated Rust.
 */
#ifndef TCPSCOPE_COMMON_KERN_USER_H
#define TCPSCOPE_COMMON_KERN_USER_H

/* Bounds that both sides rely on. */
#define TCPSCOPE_MAX_VLAN 2          /* 802.1Q / 802.1ad tags parsed */
#define TCPSCOPE_MAX_IPV6_EXT 8      /* IPv6 extension headers walked */
#define TCPSCOPE_MAX_SACK 4          /* SACK blocks recorded */
#define TCPSCOPE_MAX_FILTER_PORTS 8  /* ports per filter list */
#define TCPSCOPE_MAX_FILTER_CIDRS 8  /* CIDRs per filter list */

/* Limits both sides rely on. An enum, not #defines, so that they reach BTF
 * and the generated Rust (types::tcpscope_limits). */
enum tcpscope_limits {
	TCPSCOPE_MAX_SNAPLEN = 1024,  /* payload bytes an event can carry */
	TCPSCOPE_MAX_CAPTURE = 1280,  /* frame bytes an event can carry: headers + payload */
};

/* Which hook produced an event. */
enum tcpscope_hook {
	TCPSCOPE_HOOK_XDP = 1,
	TCPSCOPE_HOOK_TC = 2,
	TCPSCOPE_HOOK_PCAP = 3, /* user space only: decoded from a capture file */
};

/* Why a packet could not be parsed. Order is part of the counter layout and
 * of the user-facing names in crates/wire/src/names.rs; append only. */
enum tcpscope_malformed {
	MALFORMED_NONE = 0,
	MALFORMED_ETH_TRUNCATED,       /* frame shorter than an Ethernet header */
	MALFORMED_VLAN_TRUNCATED,      /* VLAN tag cut short */
	MALFORMED_VLAN_TOO_DEEP,       /* more than TCPSCOPE_MAX_VLAN tags */
	MALFORMED_IPV4_TRUNCATED,      /* IPv4 header cut short */
	MALFORMED_IPV4_BAD_VERSION,    /* ethertype IPv4 but version != 4 */
	MALFORMED_IPV4_BAD_IHL,        /* IHL < 5 */
	MALFORMED_IPV4_BAD_TOTAL_LEN,  /* total length < header length */
	MALFORMED_IPV6_TRUNCATED,      /* IPv6 header cut short */
	MALFORMED_IPV6_BAD_VERSION,    /* ethertype IPv6 but version != 6 */
	MALFORMED_IPV6_EXT_TRUNCATED,  /* extension header cut short */
	MALFORMED_IPV6_EXT_TOO_MANY,   /* more than TCPSCOPE_MAX_IPV6_EXT headers */
	MALFORMED_TCP_TRUNCATED,       /* fixed TCP header cut short */
	MALFORMED_TCP_BAD_DOFF,        /* data offset < 5 */
	MALFORMED_TCP_HDR_TRUNCATED,   /* data offset reaches past the packet */
	MALFORMED_TCP_BAD_IP_LEN,      /* IP length too short for the TCP header */
	MALFORMED_TCP_OPT_BAD_LEN,     /* option length 0 or 1 */
	MALFORMED_TCP_OPT_OVERRUN,     /* option runs past the TCP header */
	MALFORMED_TCP_OPT_BAD_SIZE,    /* known option with the wrong length */
	MALFORMED_IP_LEN_EXCEEDS_FRAME, /* IP length says more than the frame holds */
	MALFORMED_MAX,
};

/* Why the guard dropped a packet: tcpscope_counters.guard_dropped[]. Order is
 * part of the counter layout and of the names in src/names.rs; append only.
 * The rules' drops, then the drops that keep the rules from being dodged:
 * packets the parser cannot follow to their TCP header would reach the
 * kernel's own reassembly or extension-header walk, and a TCP port behind
 * them would never be checked. */
enum guard_drop_reason {
	GUARD_DROP_NONE = 0,
	GUARD_DROP_BLOCK_RULE,        /* source in the block list (a mitigation's rule included) */
	GUARD_DROP_PORT_RULE,         /* destination-port rule */
	GUARD_DROP_DETECTOR,          /* a detector blocked the source on this packet (--mitigate) */
	GUARD_DROP_TINY_FRAGMENT,     /* first fragment too short for the fixed TCP header
	                               * (RFC 1858, RFC 3128; IPv6: RFC 7112) */
	GUARD_DROP_FRAGMENT_OFFSET_1, /* IPv4 TCP fragment at offset 8: would overwrite the
	                               * first fragment's TCP header (RFC 1858) */
	GUARD_DROP_EXT_CHAIN_TOO_LONG,/* IPv6: more extension headers than the parser follows
	                               * (TCPSCOPE_MAX_IPV6_EXT; RFC 9098) */
	GUARD_DROP_EXT_TRUNCATED,     /* IPv6: an extension header cut short (in a first
	                               * fragment: the header chain is split, RFC 7112) */
	GUARD_DROP_EXT_UNKNOWN,       /* IPv6: an extension header the parser does not walk
	                               * (AH, Mobility, HIP, Shim6, experimental 253/254) */
	GUARD_DROP_CONN_LIMIT,        /* a SYN from a source that holds conn_limit established
	                               * connections (--enforce) */
	GUARD_DROP_L7_RULE,           /* a flow whose first message matched an L7 rule
	                               * (--sni, --host, --http-method): every packet from the
	                               * one that completed the message on */
	GUARD_DROP_L7_UNDECIDED,      /* a flow whose first message the guard could not read
	                               * while L7 rules exist (enum l7_undecided; unless
	                               * --l7-undecided pass) */
	GUARD_DROP_L7_CONFLICT,       /* a flow that resent first-message bytes unlike those
	                               * the guard had read: it could show the server another name */
	GUARD_DROP_L7_OUT_OF_ORDER,   /* a segment past a hole in a first message: the client
	                               * sends it again once the hole is filled */
	GUARD_DROP_L7_TABLE_FULL,     /* a SYN while L7_GUARD_MAX_FLOWS flows are held */
	GUARD_DROP_MAX,
};

/* Indexes into tcpscope_counters.flag[], in the order of the JSON flags list. */
enum tcpscope_flag_index {
	FLAG_IDX_FIN = 0,
	FLAG_IDX_SYN,
	FLAG_IDX_RST,
	FLAG_IDX_PSH,
	FLAG_IDX_ACK,
	FLAG_IDX_URG,
	FLAG_IDX_ECE,
	FLAG_IDX_CWR,
	FLAG_IDX_AE,
	FLAG_IDX_MAX,
};

/* TCP flag bits as they sit in flags_raw (byte 12 low nibble << 8 | byte 13).
 * Enums, not #defines: enums reach BTF, so the skeleton gives Rust the same
 * values (crates/wire: model, names) and nothing is copied by hand. */
enum tcp_flag_bits {
	TCPF_FIN = 0x001,
	TCPF_SYN = 0x002,
	TCPF_RST = 0x004,
	TCPF_PSH = 0x008,
	TCPF_ACK = 0x010,
	TCPF_URG = 0x020,
	TCPF_ECE = 0x040,
	TCPF_CWR = 0x080,
	TCPF_AE = 0x100,
};

/* packet_event.ip_flags bits */
enum ip_flag_bits {
	IPF_HAS_ID = 0x01, /* ip_id is meaningful (IPv4, or IPv6 fragment header) */
	IPF_DF = 0x02,     /* IPv4 don't-fragment */
	IPF_FRAG = 0x04,   /* first fragment of a fragmented datagram */
	IPF_JUMBO = 0x08,  /* IP length field was 0: length taken from the frame */
};

/* packet_event.opt_present bits */
enum tcp_opt_bits {
	OPT_MSS = 0x01,
	OPT_WSCALE = 0x02,
	OPT_SACK_PERM = 0x04,
	OPT_SACK = 0x08,
	OPT_TS = 0x10,
	OPT_OTHER = 0x20, /* other_kinds has at least one bit set */
	OPT_MPTCP = 0x40, /* mptcp_subtype is set */
	OPT_TFO = 0x80,   /* tfo_cookie_len is set (kind 34, or 254 with magic 0xF989) */
};

/* Per-CPU counters: one array slot, summed over CPUs by user space. */
struct tcpscope_counters {
	__u64 packets;            /* every packet the hook saw */
	__u64 bytes;              /* their frame bytes */
	__u64 tcp_packets;        /* packets parsed as TCP (malformed TCP included) */
	__u64 tcp_bytes;
	__u64 non_tcp;            /* not IP, or IP but not TCP */
	__u64 ip_fragments;       /* non-first fragments: never parsed as TCP */
	__u64 flag[FLAG_IDX_MAX]; /* packets with each TCP flag set */
	__u64 syn_no_ack;         /* SYN without ACK: connection attempts */
	__u64 syn_ack;            /* SYN+ACK */
	__u64 malformed[MALFORMED_MAX]; /* by reason; [0] unused */
	__u64 filtered_out;       /* TCP packets not matching the event filter */
	__u64 sampled_out;        /* matched, but skipped by 1-in-N sampling */
	__u64 events;             /* events written to the ring buffer */
	__u64 events_lost;        /* events dropped: ring buffer full */
	__u64 policy_dropped;     /* packets the guard dropped: the sum of guard_dropped[] */
	__u64 policy_allowed;     /* packets from allow-listed sources */
	__u64 sample_tick;        /* sampling state, not a statistic */
	__u64 guard_dropped[GUARD_DROP_MAX]; /* by enum guard_drop_reason; [0] unused */
	__u64 l7_untracked;       /* L7 hints: SYNs not followed, the flow table full */
	__u64 l7_not_listening;   /* L7 hints: SYNs not followed, no socket would take them */
};

/* One address as the kernel stores it: IPv4 in the first 4 bytes. */
struct tcpscope_cidr {
	__u8 addr[16];
	__u8 mask[16];
	__u8 family; /* 4 or 6 */
	__u8 _pad[7]; /* keeps arrays of these 8-byte aligned */
};

/*
 * Event filter, written by user space into read-only data before load.
 * Because it is const volatile, the verifier sees the final values and the
 * JIT drops every disabled test: an empty filter costs nothing per packet.
 */
struct tcpscope_config {
	struct tcpscope_cidr src[TCPSCOPE_MAX_FILTER_CIDRS]; /* first: 8-aligned */
	struct tcpscope_cidr dst[TCPSCOPE_MAX_FILTER_CIDRS];
	__u32 snaplen;       /* payload bytes to copy, <= TCPSCOPE_MAX_SNAPLEN */
	__u32 sample_every;  /* keep 1 of N matching packets; 0 or 1 keeps all */
	__u16 flags_set;     /* every one of these flag bits must be set */
	__u16 flags_clear;   /* every one of these flag bits must be clear */
	__u8 events_enabled; /* 0: counters only */
	__u8 copy_frame;     /* copy frame bytes (headers, + snaplen payload) into events */
	__u8 n_ports;        /* either port matches one of ports[] */
	__u8 n_sports;
	__u8 n_dports;
	__u8 n_src;          /* source address in one of src[] */
	__u8 n_dst;
	__u8 policy;         /* guard: apply the allow, block and port rules */
	__u16 ports[TCPSCOPE_MAX_FILTER_PORTS];
	__u16 sports[TCPSCOPE_MAX_FILTER_PORTS];
	__u16 dports[TCPSCOPE_MAX_FILTER_PORTS];
	/* guard: decide, then stop. Packets that pass are counted (packets,
	 * TCP, SYN) but not inspected further: no per-flag or malformed-option
	 * counters, and TCP options parsed only where a detector needs them
	 * (a SYN with data). Keeps the firewall path as short as a plain
	 * filter's. */
	__u8 lean;
	/* guard: drop, and count by reason, IPv6 packets whose extension
	 * headers the parser cannot follow to the transport header (too many,
	 * cut short, or of a kind it does not walk). Observers always pass
	 * them (fail open). */
	__u8 drop_unparsable;
	/* agent: count packets and SYNs per source (top_sources_kern.h) */
	__u8 top_sources;
	/* L7 hints: follow client streams from their SYN (l7_kern.h) in place
	 * of the packet events */
	__u8 l7;
};

/*
 * Top sources: a count-min sketch of packets and SYNs per source address
 * (TOP_DEPTH rows of TOP_WIDTH cells, one map value, zeroed by user space
 * at each window's end), and an LRU table of candidate sources with their
 * counts, a source entering it with the sketch's estimate. User space
 * ranks the candidates each window; the sketch's first row sums to every
 * packet counted, so "other" is the total less the top K.
 */
enum top_sources_limits {
	TOP_DEPTH = 4,
	TOP_WIDTH = 1024,   /* a power of two */
	TOP_CANDIDATES = 4096,
};

struct top_cell {
	__u32 packets;
	__u32 syns;
};

struct top_sketch {
	struct top_cell cells[TOP_DEPTH * TOP_WIDTH];
};

struct top_key {
	__u8 addr[16];  /* IPv4 in the first 4 bytes */
	__u8 family;    /* 4 or 6 */
	__u8 _pad[7];
};

struct top_counts {
	__u64 packets;
	__u64 syns;
};

/*
 * One incoming TCP packet. Ports, seq/ack and window are in host order;
 * addresses in network order (IPv4 in the first 4 bytes).
 */
struct packet_event {
	__u64 ts_ns;          /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u8 src[16];         /* 8-byte aligned: compared as two __u64 */
	__u8 dst[16];
	__u32 ifindex;
	__u32 frame_len;      /* bytes in the frame at the hook */
	__u8 hook;            /* enum tcpscope_hook */
	__u8 ip_version;      /* 4 or 6 */
	__u8 vlan_count;
	__u8 ttl;             /* hop limit for IPv6 */
	__u16 vlan[TCPSCOPE_MAX_VLAN]; /* TCI VLAN ids, outermost first */
	__u16 ip_len;         /* IPv4 total length, IPv6 payload length */
	__u8 dscp;
	__u8 ecn;
	__u32 ip_id;          /* IPv4 id, or IPv6 fragment id */
	__u8 ip_flags;        /* IPF_* */
	__u8 malformed;       /* enum tcpscope_malformed, 0 if well formed */
	__u8 hdr_len;         /* TCP header bytes (data offset * 4) */
	__u8 opt_present;     /* OPT_* */
	__u16 sport;
	__u16 dport;
	__u32 seq;
	__u32 ack;
	__u16 flags_raw;
	__u16 window;
	__u16 checksum;
	__u16 urgent_ptr;
	__u32 payload_len;
	__u16 mss;
	__u8 wscale;
	__u8 sack_count;
	__u32 ts_val;
	__u32 ts_ecr;
	__u32 sack[TCPSCOPE_MAX_SACK][2];
	/* Bitmap of every other option kind seen (bit k = kind k). A bitmap, not
	 * a list, so the verifier need not track a count across the option loop. */
	__u8 other_kinds[32];
	__u16 cap_len;        /* frame bytes that follow the event (packet_event_snap) */
	__u8 mptcp_subtype;   /* MPTCP option subtype (RFC 8684), with OPT_MPTCP */
	__u8 tfo_cookie_len;  /* Fast Open cookie bytes, with OPT_TFO */
	__u16 payload_off;    /* frame offset of the TCP payload */
	__u8 l7;              /* an L7 hints record (l7_kern.h), not a packet event */
	__u8 _pad2;
};

/* An event followed by the first cap_len bytes of its frame: the headers,
 * and up to --snaplen payload bytes. Used for --snaplen and for -w. */
struct packet_event_snap {
	struct packet_event ev;
	__u8 frame[TCPSCOPE_MAX_CAPTURE];
};

/*
 * L7 hints (`tcpscope l7 -i`, the agent's [l7]): from a SYN on, the kernel
 * follows the client's stream and copies its first L7_MAX_STREAM bytes to
 * user space, in chunks, until user space (which reassembles and parses
 * them) deletes the flow: identified, or given up on. The flow also goes at
 * the client's FIN or RST. Every other packet costs one failed hash lookup.
 */
enum l7_limits {
	L7_MAX_FLOWS = 65536,   /* streams followed at once (the wire crate's MAX_CONNS) */
	L7_CHUNK = 2048,        /* payload bytes per record, a power of two */
	L7_MAX_STREAM = 16384,  /* first bytes of a stream copied (the wire crate's MAX_STREAM) */
	L7_MAX_CHUNKS = L7_MAX_STREAM / L7_CHUNK,
};

struct l7_flow_key {
	__u8 src[16];        /* the client (IPv4 in the first 4 bytes) */
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 ip_version;
	__u8 _pad[3];
};

struct l7_flow {
	__u64 syn_ns;        /* the SYN's time: user space sweeps flows it never heard of */
	__u32 isn;           /* the client's initial sequence number */
	__u32 _pad;
};

/* Payload bytes [data_off, data_off + data_len) of the segment `ev`. A
 * segment cut in chunks has FIN and RST only in its last. */
struct l7_chunk {
	struct packet_event ev;
	__u32 data_off;
	__u32 data_len;
	__u8 data[L7_CHUNK];
};

/*
 * Guard rules on L7 names (bpf/l7_guard_kern.h). While any exists, the guard
 * holds the first L7_GUARD_BUF bytes of each incoming client stream (from a
 * SYN a socket would take), in order, and reads its first message in the
 * kernel: the TLS ClientHello's server_name, HTTP/1's method and Host (and
 * an absolute-form target's host). A match drops the segment that
 * completed the message and every later packet of the flow. Bytes sent
 * again must equal those held, or the flow is dropped (a copy the server
 * never took could name another host).
 */
enum l7_rule_kind {
	L7_RULE_SNI = 1,
	L7_RULE_HOST,
	L7_RULE_METHOD,
	L7_RULE_KINDS,
};

enum l7_guard_limits {
	L7_GUARD_NAME_MAX = 128,    /* longest name a rule holds */
	L7_GUARD_BUF = 4096,        /* first stream bytes held per flow: a power of two */
	L7_GUARD_MAX_FLOWS = 16384, /* flows held at once (each about 4.2 KiB) */
};

/* Why a first message could not be read (alert value, flow's reason). */
enum l7_undecided {
	L7_UNDECIDED_TOO_LARGE = 1, /* not complete within L7_GUARD_BUF bytes */
	L7_UNDECIDED_TLS_FRAGMENTED,/* a ClientHello spread over several TLS records */
	L7_UNDECIDED_TIMEOUT,       /* the client stopped before completing it */
	L7_UNDECIDED_H2C,           /* h2c prior knowledge: its host is HPACK-coded */
	L7_UNDECIDED_REASONS,
};

/* An LPM trie key: the kind, then the name in lower case and reversed
 * ("moc.elpmaxe"), so that a wildcard rule `*.example.com` is the prefix
 * "moc.elpmaxe." and an exact rule the whole name with a 0 end mark. */
struct l7_rule_key {
	__u32 prefixlen;                  /* 8 (kind) + 8 per name byte that must match */
	__u8 kind;                        /* enum l7_rule_kind */
	__u8 name[L7_GUARD_NAME_MAX + 1];
	__u8 _pad[2];
};

enum l7_guard_state {
	L7_GUARD_READING = 0, /* the first message is not complete yet */
	L7_GUARD_PASSED,      /* read, and no rule matched: held bytes are still compared */
	L7_GUARD_BLOCKED,     /* every packet is dropped, for `why` */
};

struct l7_guard_flow {
	__u64 seen_ns;   /* the SYN's time, then the last time the state changed or a drop */
	__u32 isn;       /* the client's initial sequence number */
	__u32 next;      /* stream bytes held: [0, next) */
	__u8 state;      /* enum l7_guard_state */
	__u8 why;        /* blocked: enum guard_drop_reason */
	__u8 closing;    /* a FIN or RST was seen */
	__u8 undecided;  /* blocked as undecided: enum l7_undecided */
	__u32 _pad;
	__u8 buf[L7_GUARD_BUF];
};

/* ---- Policy (tcpscope guard): LPM tries, changed at runtime ---- */

/* Source prefixes, for the allow and block lists. */
struct policy_key_v4 {
	__u32 prefixlen; /* bits of addr that must match */
	__u8 addr[4];
};

struct policy_key_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Destination-port rules: the port first, then the source prefix, so one
 * longest-prefix lookup finds "port P from this prefix" as well as "port P
 * from anywhere" (prefixlen 16). */
struct port_key_v4 {
	__u32 prefixlen; /* 16 + source prefix length */
	__u8 port[2];    /* network order */
	__u8 addr[4];
	__u8 _pad[2];
};

struct port_key_v6 {
	__u32 prefixlen;
	__u8 port[2];
	__u8 addr[16];
	__u8 _pad[2];
};

/* Which of the lists user space has ever put a rule in. Only user space
 * writes these (the kernel's mitigation writes block lists, which are always
 * consulted), so a set flag is never lost to a race; the lists' flags are
 * never cleared. An unused list costs no lookup. The L7 flags say which
 * kinds of L7 rules exist now (user space clears them when the last of a
 * kind goes): with none, no flow is held. */
struct policy_used {
	__u8 allow_v4;
	__u8 allow_v6;
	__u8 ports_v4;
	__u8 ports_v6;
	__u8 l7[L7_RULE_KINDS]; /* by enum l7_rule_kind; [0]: any */
};

/* The rule maps, for the expiry index below. */
enum policy_list {
	POLICY_ALLOW_V4 = 0,
	POLICY_ALLOW_V6,
	POLICY_BLOCK_V4,
	POLICY_BLOCK_V6,
	POLICY_PORTS_V4,
	POLICY_PORTS_V6,
	POLICY_LISTS,
};

/* A rule with an expiry, in the index of such rules (map `expiring`): which
 * list, and its key there (the first bytes of key[]). User space sweeps the
 * index, not every rule: a guard holding a million rules without TTLs has
 * nothing to sweep. Written by whoever adds a rule with a TTL (user space,
 * and the detectors' mitigation). */
struct expiring_key {
	__u8 list;     /* enum policy_list */
	__u8 _pad[3];
	__u8 key[24];  /* struct policy_key_* or port_key_*, zero-padded */
};

/* One rule: its own hit counter and expiry. */
struct policy_value {
	__u64 hits;       /* packets it matched */
	__u64 expires_ns; /* CLOCK_MONOTONIC; 0 = never. Expired rules match nothing. */
};

/* ---- Detectors (tcpscope guard) ---- */

/* Thresholds, read-only data set by the guard before load. 0 disables. */
struct detect_config {
	__u64 scan_window_ns;    /* port scan: the sliding window */
	__u64 mitigate_ttl_ns;   /* block a source that crossed a threshold this long; 0: alert only */
	__u64 alert_interval_ns; /* at most one alert per source and kind per interval */
	__u32 scan_ports;        /* distinct destination ports in the window that make a scan */
	__u32 syn_rate;          /* SYNs per second a source may send (token refill rate) */
	__u32 syn_burst;         /* token bucket size */
	__u32 conn_limit;        /* with enforce_conn_limit: established connections a source may hold */
	__u32 netns;             /* the guard's network namespace (inode): peer_conns' key */
	__u8 enabled;
	__u8 enforce_conn_limit; /* drop SYNs from a source at conn_limit (a rule: on with enabled 0 too) */
	__u8 l7_undecided_pass;  /* L7 rules: pass a first message the guard cannot read (else drop) */
	__u8 _pad;
};

/* Established incoming connections per peer address and network namespace:
 * counted by the lifecycle tracepoints (guard's connection limit), read by
 * the ingress programs to enforce it. One map, shared by both objects. */
struct peer_key {
	__u8 addr[16];
	__u32 netns;
};

enum alert_kind {
	ALERT_PORT_SCAN = 1,
	ALERT_SYN_FLOOD,
	ALERT_NULL_FLAGS,    /* no flag set: NULL scan */
	ALERT_XMAS,          /* FIN+PSH+URG: XMAS scan */
	ALERT_SYN_FIN,
	ALERT_SYN_RST,
	ALERT_FIN_NO_ACK,    /* FIN scan */
	ALERT_SYN_DATA,      /* SYN with payload and no Fast Open option */
	ALERT_MITIGATION,    /* the source is now blocked for mitigate_ttl_ns */
	ALERT_CONN_LIMIT,    /* a SYN refused: the source holds conn_limit connections
	                      * (--enforce); value = connections held */
	ALERT_L7_BLOCKED,    /* a flow's first message matched an L7 rule: value = enum
	                      * l7_rule_kind, name = the name (or method) it sent */
	ALERT_L7_UNDECIDED,  /* a first message the guard could not read, dropped: value =
	                      * enum l7_undecided */
	ALERT_L7_CONFLICT,   /* a flow resent first-message bytes unlike the first copy */
	ALERT_KIND_MAX,
};

enum alert_limits {
	ALERT_NAME_MAX = 64, /* bytes of an L7 alert's name kept (lower case) */
};

struct alert_event {
	__u64 ts_ns;        /* CLOCK_MONOTONIC */
	__u8 src[16];       /* the source (IPv6: its /64 for flood and scan state; the
	                     * whole address for L7 alerts) */
	__u32 value;        /* port scan: ports seen; SYN flood: the rate limit */
	__u16 dport;
	__u16 flags_raw;
	__u8 kind;          /* enum alert_kind */
	__u8 ip_version;
	__u16 sport;        /* L7 alerts: the client's port */
	__u8 name_len;      /* L7 alerts: bytes of name */
	__u8 _pad[3];
	__u8 name[ALERT_NAME_MAX];
};

/* ---- Connection lifecycle (bpf/lifecycle.bpf.c) ---- */

/* What a conn_event reports. */
enum conn_event_kind {
	CONN_CONNECT = 1,       /* connect(): SYN_SENT, process known */
	CONN_ESTABLISHED_OUT,   /* outgoing handshake done; latency = connect time */
	CONN_ESTABLISHED_IN,    /* incoming handshake done; latency = first SYN to ESTABLISHED */
	CONN_ACCEPT,            /* accept() returned the socket: process known;
	                         * reason = enum accept_hook */
	CONN_STATE,             /* any other state change (with --states) */
	CONN_CLOSE,             /* socket closed: duration, bytes, segments, retransmits */
	CONN_RETRANSMIT,        /* tcp:tcp_retransmit_skb */
	CONN_RESET_RX,          /* tcp:tcp_receive_reset */
	CONN_RESET_TX,          /* tcp:tcp_send_reset; reason = enum sk_rst_reason */
	CONN_DROP,              /* skb:kfree_skb of a TCP packet; reason = enum skb_drop_reason */
	CONN_ZERO_WINDOW,       /* the peer advertised a zero window */
	CONN_WINDOW_REOPEN,     /* ... and opened it again */
	CONN_RCVQ_FULL,         /* sock:sock_rcvqueue_full */
	CONN_RETRANSMIT_SYNACK, /* tcp:tcp_retransmit_synack: the peer has not ACKed our SYN-ACK */
	CONN_LIMIT,             /* a peer holds more established incoming connections than
	                         * conn_limit; reason = how many (guard) */
	CONN_KIND_MAX,
};

/* Which hook saw an accept. */
enum accept_hook {
	ACCEPT_BY_GETPEERNAME = 0, /* cgroup getpeername hook: maybe a client asking */
	ACCEPT_BY_SYSCALL = 1,     /* accept()/accept4() returned it */
};

/* Latency histograms, per port. */
enum latency_kind {
	LAT_HANDSHAKE = 0, /* incoming: first SYN to ESTABLISHED, per listener port */
	LAT_CONNECT = 1,   /* outgoing: connect() to ESTABLISHED, per remote port */
	LAT_RTT = 2,       /* smoothed RTT from tcp:tcp_probe, per local port */
	LAT_KINDS,
};

/* Log-linear buckets: 8 per power of two, so a bucket's width is at most
 * 1/8 of its lower bound and a percentile read off a bucket's middle is
 * within about 6%. Values in ns (RTT in us). */
enum latency_limits {
	LAT_SLOTS = 512,
	LAT_SUB_BITS = 3,
};

struct latency_key {
	__u16 port;
	__u8 kind;     /* enum latency_kind */
	__u8 _pad[5];
};

struct latency_hist {
	__u64 slots[LAT_SLOTS];
	__u64 count;
	__u64 sum;
	__u64 max;
};

/* Filter for lifecycle events, read-only data set before load. No pid
 * filter here: a socket's process is known only to `conns`' join in user
 * space (events in softirq carry none), which applies --pid. */
struct lifecycle_config {
	__u32 conn_limit;   /* guard: report peers with more established incoming connections */
	__u16 ports[TCPSCOPE_MAX_FILTER_PORTS]; /* only connections with one of these local or
	                                         * remote ports (n_ports 0: all) */
	__u8 n_ports;
	__u8 _pad0;
	__u8 emit_states;   /* report every state change */
	__u8 events;        /* `conns` reads the event slots (else only CONN_LIMIT events go out) */
	__u8 count_handshakes; /* guard: count completed incoming handshakes per netns */
	__u8 histograms;    /* keep the latency histograms (only `latency` reads them) */
	__u8 _pad[2];
};

struct conn_event {
	__u64 ts_ns;        /* CLOCK_MONOTONIC */
	__u64 cookie;       /* socket cookie (0 if no socket) */
	__u64 cgroup_id;    /* cgroup v2 id of the socket */
	__u64 duration_ns;  /* CLOSE: since SYN_SENT / SYN_RECV */
	__u64 latency_ns;   /* ESTABLISHED_*: handshake / connect time */
	__u64 bytes_received;
	__u64 bytes_acked;
	__u8 saddr[16];     /* local address (IPv4 in the first 4 bytes) */
	__u8 daddr[16];     /* peer address */
	__u32 netns;        /* network namespace inode */
	__u32 pid;          /* owning process (tgid), 0 if unknown */
	__u32 uid;          /* its user and group (with pid: where pid is 0, */
	__u32 gid;          /* these are 0 and mean nothing) */
	__u8 comm[16];
	__u32 segs_in;
	__u32 segs_out;
	__u32 total_retrans;
	__u32 srtt_us;
	__u32 rttvar_us;
	__u32 snd_cwnd;
	__u32 snd_wnd;
	__u32 rcv_wnd;
	__u32 reason;       /* DROP: skb_drop_reason; RESET_TX: sk_rst_reason */
	__u16 sport;        /* local port */
	__u16 dport;        /* peer port */
	__u8 kind;          /* enum conn_event_kind */
	__u8 family;        /* 4 or 6 */
	__u8 oldstate;      /* TCP_* states */
	__u8 newstate;
};

/*
 * The events of `conns` go through slots per CPU, not a BPF ring buffer:
 * each CPU's programs write their own slots in order, and `conns` reads
 * every CPU's slots and merges them by time. A ring buffer's reserve takes a
 * lock with interrupts off and moves its positions' cache lines between the
 * CPUs that write it and the reader; that measured 400 ns per connection
 * with client and server on one CPU and 1.1 us placed by the scheduler
 * (bpf_stats, bench conns). A slot costs an atomic add on this CPU's own
 * line and the event's copy.
 */
enum conn_slots_limits {
	CONN_SLOTS_PER_CPU = 2048, /* a power of two: 20 ms of 100,000 events/s */
	/* With this many of a CPU's events unread, the program that writes the
	 * next rings the reader's doorbell (a ring buffer it waits on between
	 * passes): a burst after a quiet spell, when it polls least often,
	 * must not fill the slots before its next pass. */
	CONN_SLOTS_DOORBELL = CONN_SLOTS_PER_CPU / 4,
};

/* One CPU's positions in its slots, counted from 0 and never wrapped. Each
 * on its own cache line: the programs write `reserved`, `conns` writes
 * `consumed`. */
struct conn_slots_head {
	__u64 reserved;     /* slots taken by this CPU's programs */
	__u64 _pad1[7];
	__u64 consumed;     /* slots `conns` has read (and the programs may reuse) */
	__u64 _pad2[7];
};

struct conn_slot {
	__u64 seq;          /* position + 1, written after the event: it is complete */
	struct conn_event e;
};

#endif /* TCPSCOPE_COMMON_KERN_USER_H */
