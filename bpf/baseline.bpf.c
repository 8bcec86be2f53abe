// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Reference programs that `tcpscope bench` measures the real ones against:
 * - empty programs: the floor (BPF_PROG_TEST_RUN overhead plus the hook's
 *   own cost), at XDP and TC for `bench`, and at every hook `conns` attaches
 *   for `bench conns`: what calling a program there costs this kernel before
 *   the program does anything;
 * - two ways to match a source address against rules of any prefix length,
 *   one LPM trie or one exact-match hash lookup per prefix length in use,
 *   side by side on the same packet path, so the guard's choice of data
 *   structure rests on a measurement (`tcpscope bench rules`).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common_kern_user.h"
#include "net_defs_kern.h"
#include "lat_slot_kern.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int baseline_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("tc")
int baseline_tc_ok(struct __sk_buff *skb)
{
	return TCX_NEXT; /* as the real TC program: the chain goes on */
}

/* conns' hooks (lifecycle.bpf.c), in its attach order; the two cgroup
 * hooks must allow the call (1). */
#define EMPTY_TP_BTF(tp) \
	SEC("tp_btf/" #tp) \
	int baseline_##tp(void *ctx) { return 0; }
EMPTY_TP_BTF(consume_skb)
EMPTY_TP_BTF(inet_sock_set_state)
EMPTY_TP_BTF(tcp_retransmit_skb)
EMPTY_TP_BTF(tcp_retransmit_synack)
EMPTY_TP_BTF(tcp_receive_reset)
EMPTY_TP_BTF(tcp_send_reset)
EMPTY_TP_BTF(kfree_skb)
EMPTY_TP_BTF(tcp_probe)
EMPTY_TP_BTF(sock_rcvqueue_full)

SEC("cgroup/getpeername4")
int baseline_getpeername4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/getpeername6")
int baseline_getpeername6(struct bpf_sock_addr *ctx) { return 1; }

#define REF_RULES_MAX 262144

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, REF_RULES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key_v4);
	__type(value, struct policy_value);
} ref_lpm_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, REF_RULES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key_v6);
	__type(value, struct policy_value);
} ref_lpm_v6 SEC(".maps");

/* The same rules keyed by (prefix length, address masked to it). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, REF_RULES_MAX);
	__type(key, struct policy_key_v4);
	__type(value, struct policy_value);
} ref_hash_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, REF_RULES_MAX);
	__type(key, struct policy_key_v6);
	__type(value, struct policy_value);
} ref_hash_v6 SEC(".maps");

/* Prefix lengths that hold rules, longest first (user space keeps them). */
__u32 ref_nlens_v4 = 0;
__u8 ref_lens_v4[33] = {};
__u32 ref_nlens_v6 = 0;
__u8 ref_lens_v6[129] = {};

/* The source address of an untagged IPv4 or IPv6 frame: 4, 6, or 0. */
static __always_inline int ref_source(void *data, void *data_end, __u8 *addr)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return 0;
		__builtin_memcpy(addr, &ip->saddr, 4);
		return 4;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return 0;
		__builtin_memcpy(addr, &ip6->saddr, 16);
		return 6;
	}
	return 0;
}

static __always_inline int ref_verdict(struct policy_value *v)
{
	if (!v)
		return XDP_PASS;
	__sync_fetch_and_add(&v->hits, 1);
	return XDP_DROP;
}

SEC("xdp")
int ref_lpm_xdp(struct xdp_md *ctx)
{
	__u8 addr[16];
	int ver = ref_source((void *)(long)ctx->data, (void *)(long)ctx->data_end, addr);
	if (ver == 4) {
		struct policy_key_v4 k = { .prefixlen = 32 };
		__builtin_memcpy(k.addr, addr, 4);
		return ref_verdict(bpf_map_lookup_elem(&ref_lpm_v4, &k));
	}
	if (ver == 6) {
		struct policy_key_v6 k = { .prefixlen = 128 };
		__builtin_memcpy(k.addr, addr, 16);
		return ref_verdict(bpf_map_lookup_elem(&ref_lpm_v6, &k));
	}
	return XDP_PASS;
}

/* 32-bit mask of the first `bits` bits (0..32), network order. */
static __always_inline __u32 mask_be(int bits)
{
	if (bits <= 0)
		return 0;
	if (bits >= 32)
		return 0xffffffff;
	return bpf_htonl(0xffffffffu << (32 - bits));
}

SEC("xdp")
int ref_hash_prefix_xdp(struct xdp_md *ctx)
{
	__u8 addr[16];
	int ver = ref_source((void *)(long)ctx->data, (void *)(long)ctx->data_end, addr);
	if (ver == 4) {
		__u32 a;
		__builtin_memcpy(&a, addr, 4);
		for (int i = 0; i < 33; i++) {
			if (i >= ref_nlens_v4)
				break;
			__u32 len = ref_lens_v4[i];
			struct policy_key_v4 k = { .prefixlen = len };
			__u32 m = a & mask_be(len);
			__builtin_memcpy(k.addr, &m, 4);
			struct policy_value *v = bpf_map_lookup_elem(&ref_hash_v4, &k);
			if (v)
				return ref_verdict(v);
		}
		return XDP_PASS;
	}
	if (ver == 6) {
		__u32 w[4];
		__builtin_memcpy(w, addr, 16);
		for (int i = 0; i < 129; i++) {
			if (i >= ref_nlens_v6)
				break;
			int len = ref_lens_v6[i];
			struct policy_key_v6 k = { .prefixlen = len };
			__u32 m[4] = {
				w[0] & mask_be(len),
				w[1] & mask_be(len - 32),
				w[2] & mask_be(len - 64),
				w[3] & mask_be(len - 96),
			};
			__builtin_memcpy(k.addr, m, 16);
			struct policy_value *v = bpf_map_lookup_elem(&ref_hash_v6, &k);
			if (v)
				return ref_verdict(v);
		}
	}
	return XDP_PASS;
}

/* lat_slot() for a test (tests/prog_test_run.rs): the bucket of each value
 * user space put in lat_slot_in, into lat_slot_out. */
__u64 lat_slot_in[64] = {};
__u32 lat_slot_out[64] = {};

SEC("syscall")
int baseline_lat_slot(void *ctx)
{
	for (int i = 0; i < 64; i++)
		lat_slot_out[i] = lat_slot(lat_slot_in[i]);
	return 0;
}
