// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Empty programs: the floor that `tcpscope bench` measures the real ingress
 * programs against (BPF_PROG_TEST_RUN overhead plus the hook's own cost).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define TC_ACT_OK 0

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int baseline_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("tc")
int baseline_tc_ok(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
