/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Top sources (agent, opt-in): packets and SYNs per source address in a
 * fixed amount of memory, whatever the number of sources. See struct
 * top_sketch in common_kern_user.h.
 */
#ifndef TCPSCOPE_TOP_SOURCES_KERN_H
#define TCPSCOPE_TOP_SOURCES_KERN_H

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct top_sketch);
} top_sketch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TOP_CANDIDATES);
	__type(key, struct top_key);
	__type(value, struct top_counts);
} top_candidates SEC(".maps");

/* The key and first counts of a new candidate: in a per-CPU scratch slot,
 * not on the stack, which the ingress program has nearly used up (512
 * bytes for the caller and this function together). */
struct top_scratch {
	struct top_key k;
	struct top_counts init;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct top_scratch);
} top_scratch SEC(".maps");

/* One row's cell for a source: a multiply-shift hash of its 16 address
 * bytes (as two words), seeded per row. */
static __always_inline __u32 top_cell_index(__u64 a0, __u64 a1, __u32 row)
{
	__u64 h = (a0 ^ (0x9e3779b97f4a7c15ULL * (row + 1))) * 0xff51afd7ed558ccdULL;
	h ^= a1 + (h >> 29);
	h *= 0xc4ceb9fe1a85ec53ULL;
	return row * TOP_WIDTH + ((h >> 32) & (TOP_WIDTH - 1));
}

/*
 * Counts one packet of the source (a0, a1) of `family`, a SYN if `syn`.
 * A global function: the verifier checks it once, on its own, not again
 * on every path of the parser that reaches it.
 */
__noinline int top_sources_count(__u64 a0, __u64 a1, __u32 family, __u32 syn)
{
	__u32 zero = 0;
	struct top_sketch *sk = bpf_map_lookup_elem(&top_sketch, &zero);
	if (!sk)
		return 0;
	__u32 est_packets = ~0U, est_syns = ~0U;
	for (__u32 row = 0; row < TOP_DEPTH; row++) {
		__u32 i = top_cell_index(a0, a1, row);
		if (i >= TOP_DEPTH * TOP_WIDTH)
			return 0;
		struct top_cell *c = &sk->cells[i];
		/* Atomic adds, their result read after (the fetching form needs
		 * -mcpu=v3, which the ingress programs do not ask for). */
		__sync_fetch_and_add(&c->packets, 1);
		if (syn)
			__sync_fetch_and_add(&c->syns, 1);
		__u32 p = c->packets, s = c->syns;
		est_packets = p < est_packets ? p : est_packets;
		est_syns = s < est_syns ? s : est_syns;
	}
	struct top_scratch *t = bpf_map_lookup_elem(&top_scratch, &zero);
	if (!t)
		return 0;
	__builtin_memset(&t->k, 0, sizeof(t->k));
	t->k.family = (__u8)family;
	__builtin_memcpy(t->k.addr, &a0, 8);
	__builtin_memcpy(t->k.addr + 8, &a1, 8);
	struct top_counts *v = bpf_map_lookup_elem(&top_candidates, &t->k);
	if (v) {
		__sync_fetch_and_add(&v->packets, 1);
		if (syn)
			__sync_fetch_and_add(&v->syns, 1);
		return 0;
	}
	/* New, or back after the LRU let it go: it enters with what the
	 * sketch says it sent in this window so far (an overestimate, never an
	 * underestimate). */
	t->init.packets = est_packets;
	t->init.syns = est_syns;
	bpf_map_update_elem(&top_candidates, &t->k, &t->init, BPF_NOEXIST);
	return 0;
}

#endif /* TCPSCOPE_TOP_SOURCES_KERN_H */
