/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * When to wake a ring buffer's reader. Waking it on every record costs more
 * than the program that writes it (an irq_work, on a VM an interrupt that
 * exits to the host), so records go in silently and the reader is woken
 * once per `every` bytes of backlog; it also polls on a timeout, so a quiet
 * stream is still delivered.
 *
 * "Once" matters: waking whenever the backlog is above the mark sends one
 * interrupt per record from the wakeup until the reader has actually run
 * and drained it, tens of microseconds on a VM. So wake only when this
 * record takes the backlog across a multiple of `every`: at most one wakeup
 * per `every` bytes, and another if the backlog keeps growing unread.
 */
#ifndef TCPSCOPE_RINGBUF_KERN_H
#define TCPSCOPE_RINGBUF_KERN_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* Each record's header in the ring (struct bpf_ringbuf_hdr); records are
 * 8-byte aligned. */
#define RINGBUF_HDR_BYTES 8

/* Flags for bpf_ringbuf_submit() of a record of `size` bytes, already
 * reserved in `rb` (so the backlog includes it). `every` must be a power of
 * two. */
static __always_inline __u64 ringbuf_wakeup_flags(void *rb, __u64 size, __u64 every)
{
	__u64 after = bpf_ringbuf_query(rb, BPF_RB_AVAIL_DATA);
	__u64 before = after - ((size + RINGBUF_HDR_BYTES + 7) & ~7ULL);
	return after / every != before / every ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

#endif /* TCPSCOPE_RINGBUF_KERN_H */
