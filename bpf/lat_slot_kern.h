/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The latency histograms' bucket of a value: in lifecycle.bpf.c's
 * histograms, and in baseline.bpf.c's test program, through which
 * src/histogram.rs's bounds are checked against it.
 */
#ifndef TCPSCOPE_LAT_SLOT_KERN_H
#define TCPSCOPE_LAT_SLOT_KERN_H

#include "common_kern_user.h"

/* Log-linear bucket of v: 8 buckets per power of two (2^LAT_SUB_BITS). */
static __always_inline __u32 lat_slot(__u64 v)
{
	if (v < (1 << LAT_SUB_BITS))
		return v;
	__u32 msb = 0;
	__u64 x = v;
	if (x >> 32) { msb += 32; x >>= 32; }
	if (x >> 16) { msb += 16; x >>= 16; }
	if (x >> 8) { msb += 8; x >>= 8; }
	if (x >> 4) { msb += 4; x >>= 4; }
	if (x >> 2) { msb += 2; x >>= 2; }
	if (x >> 1) { msb += 1; }
	__u32 sub = (v >> (msb - LAT_SUB_BITS)) & ((1 << LAT_SUB_BITS) - 1);
	__u32 slot = (msb - LAT_SUB_BITS + 1) * (1 << LAT_SUB_BITS) + sub;
	return slot < LAT_SLOTS ? slot : LAT_SLOTS - 1;
}

#endif /* TCPSCOPE_LAT_SLOT_KERN_H */
