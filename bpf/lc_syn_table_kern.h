/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The first-SYN table: when an incoming connection's first SYN came,
 * until its handshake completes.
 * Part of lifecycle.bpf.c, which includes it after its configuration
 * (cfg) and the helpers it uses; not a header for other programs.
 */
#ifndef TCPSCOPE_LC_SYN_TABLE_KERN_H
#define TCPSCOPE_LC_SYN_TABLE_KERN_H

/* An incoming connection before its socket exists: 5 words, hashed and
 * compared as such. */
struct syn_key {
	__u8 peer[16];
	__u8 local[16];
	__u32 netns;
	__u16 peer_port;
	__u16 local_port;
} __attribute__((aligned(8)));

/* The first SYN of a connection the listener is handshaking: the key's
 * 64-bit hash stands in for the key, so that a slot is 16 bytes, not 48
 * (two keys in one slot also agree in the hash's other 50 bits by a 2^-50
 * chance, and one would then take the other's time). */
struct syn_slot {
	__u64 tag;   /* syn_hash() of the key */
	__u64 ts_ns; /* 0: free */
};

/* A direct-mapped table, by a hash of the key: a SYN takes its slot, a
 * completed handshake frees it. No locks and no allocation: this takes a
 * write per SYN (a flood's too) and a read per handshake. With an LRU hash
 * here (whose inserts lock and rotate its lists), the first-SYN program
 * measured about 530 ns per run under bpf_stats. With 64k slots of 48 bytes
 * (the whole key), 390, most of it one load, by perf: each connection's slot
 * is a random one in 3 MiB, a cache and TLB miss. 64k slots of 16 bytes
 * (1 MiB) measured 310-350; 16k slots (256 KiB) 270-320, the same as 4k.
 * A SYN that lands on another half-open connection's slot leaves it alone
 * if that one's is younger than SYN_HOLD_NS, and takes it over otherwise;
 * either way one of the two reports no handshake latency: with 16k slots,
 * about 1 in 16 handshakes while a thousand are in flight at once (a busy
 * server with 100 ms round trips). Taking over at once forgot the first
 * SYN of a handshake whose SYN was dropped (listen overflow) while the host
 * made 15,000 other connections before the client retransmitted it: one of
 * them landed on its slot, and 34-303 us was reported instead of 2 s, in 4
 * test runs of 4. A SYN flood fills the table either way.
 * Slots are written without a lock by whichever CPU gets the SYN: two
 * SYNs racing for one slot within the same microseconds can leave it with
 * one's tag and the other's time, wrong by those microseconds. */
#define SYN_SLOT_BITS 14
#define SYN_SLOTS (1 << SYN_SLOT_BITS)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SYN_SLOTS);
	__type(key, __u32);
	__type(value, struct syn_slot);
} syn_seen SEC(".maps");

/* A retransmitted SYN keeps the first one's time if it comes within this of
 * it (Linux clients give up after 127 s); a slot older than that is a
 * handshake that never completed, and a new connection may reuse its
 * addresses and ports. */
#define SYN_RETRY_NS (130ULL * 1000 * 1000 * 1000)
/* Another handshake's slot is kept this long: past a client's first two
 * retransmitted SYNs (1 and 3 s after the first). */
#define SYN_HOLD_NS (4ULL * 1000 * 1000 * 1000)

static __always_inline __u64 syn_hash(const struct syn_key *k)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = 0;
	for (int i = 0; i < sizeof(*k) / 8; i++) {
		h = (h ^ w[i]) * 0x9E3779B97F4A7C15ULL;
		h ^= h >> 32;
	}
	return h;
}

static __always_inline struct syn_slot *syn_slot_of(__u64 hash)
{
	__u32 idx = hash & (SYN_SLOTS - 1);
	return bpf_map_lookup_elem(&syn_seen, &idx);
}

#endif /* TCPSCOPE_LC_SYN_TABLE_KERN_H */
