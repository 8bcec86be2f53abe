/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Latency histograms: handshake, connect and RTT per service port, in
 * log-linear buckets, per CPU.
 * Part of lifecycle.bpf.c, which includes it after its configuration
 * (cfg) and the helpers it uses; not a header for other programs.
 */
#ifndef TCPSCOPE_LC_HIST_KERN_H
#define TCPSCOPE_LC_HIST_KERN_H

#include "lat_slot_kern.h"

/* Per CPU: every connection records into these 3-4 times, and atomics on a
 * histogram line shared by all CPUs made that the dearest step of all (the
 * line bounces between CPUs). User space sums the CPUs' copies. Allocated
 * on use: 4 KiB per CPU per (port, kind). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, struct latency_key);
	__type(value, struct latency_hist);
} latency SEC(".maps");

/* When this CPU may next take an RTT sample in tcp_probe. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rtt_next_sample SEC(".maps");

static __always_inline void lat_record(__u16 port, __u8 kind, __u64 v)
{
	if (!cfg.histograms)
		return; /* a constant to the verifier: the code below is dropped */
	struct latency_key k = { .port = port, .kind = kind };
	struct latency_hist *h = bpf_map_lookup_elem(&latency, &k);
	if (!h) {
		static const struct latency_hist zero = {};
		bpf_map_update_elem(&latency, &k, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&latency, &k);
		if (!h)
			return;
	}
	/* 64-bit and re-checked after a barrier: otherwise clang drops the
	 * bound that lat_slot() already applied, and the verifier needs it. */
	__u64 slot = lat_slot(v);
	asm volatile("" : "+r"(slot));
	if (slot >= LAT_SLOTS)
		slot = LAT_SLOTS - 1;
	/* This CPU's copy: plain adds. Only a program nested on the same CPU
	 * (softirq over process context) could interleave: a rare lost count. */
	h->slots[slot]++;
	h->count++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

/* RTT histograms are keyed by the service port, as handshake and connect
 * latency are: the local port of an accepted socket, the remote port of an
 * outgoing one (its local port is ephemeral: one histogram per connection). */
static __always_inline void rtt_record(const struct sock_info *si, const struct sock *sk)
{
	__u32 srtt = bpf_core_cast(sk, struct tcp_sock)->srtt_us >> 3;
	if (si->port && srtt)
		lat_record(si->port, LAT_RTT, srtt);
}

#endif /* TCPSCOPE_LC_HIST_KERN_H */
