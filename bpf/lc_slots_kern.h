/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The event transport of `conns`: per-CPU slots, their doorbell, and the
 * guard's connection-limit ring; submit() writes an event to one of them.
 * Part of lifecycle.bpf.c, which includes it after its configuration
 * (cfg) and the helpers it uses; not a header for other programs.
 */
#ifndef TCPSCOPE_LC_SLOTS_KERN_H
#define TCPSCOPE_LC_SLOTS_KERN_H

/* The events of `conns` (see conn_slots_head): user space sizes both for
 * the possible CPUs before loading, and maps them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1); /* one per possible CPU */
	__type(key, __u32);
	__type(value, struct conn_slots_head);
} conn_heads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1); /* CONN_SLOTS_PER_CPU per possible CPU */
	__type(key, __u32);
	__type(value, struct conn_slot);
} conn_slots SEC(".maps");

/* Rung when a CPU's unread events reach CONN_SLOTS_DOORBELL: `conns`'
 * reader waits on it between passes (the record, the CPU's number, is not
 * read). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} conn_doorbell SEC(".maps");

/* The guard's connection-limit events: rare, and acted on at once, so they
 * wake their reader. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} limit_events SEC(".maps");

/* Events lost to full slots or a full ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} conn_events_lost SEC(".maps");

/* The guard's events go to its ring buffer, waking the reader; the others
 * to this CPU's next slot, if `conns` is reading them. No lock: only this
 * CPU's programs write its slots, and the position is taken with an atomic
 * add because one of them may interrupt another (softirq over a process).
 * A position that is taken is written (the lookup below cannot fail; were
 * it to, the reader gives up on the hole after a second and counts it
 * lost). The reader knows an event is complete by its seq, stored last
 * (x86 keeps stores in order; build.rs refuses other architectures). */
extern void bpf_preempt_disable(void) __ksym __weak;
extern void bpf_preempt_enable(void) __ksym __weak;

static __always_inline void submit(struct conn_event *e)
{
	__u32 zero = 0;
	if (e->kind == CONN_LIMIT) {
		if (bpf_ringbuf_output(&limit_events, e, sizeof(*e), BPF_RB_FORCE_WAKEUP))
			goto lost;
		return;
	}
	if (!cfg.events)
		return;
	if (!e->ts_ns) /* set_state has read the clock already */
		e->ts_ns = bpf_ktime_get_ns();
	__u32 cpu = bpf_get_smp_processor_id();
	struct conn_slots_head *h = bpf_map_lookup_elem(&conn_heads, &cpu);
	if (!h)
		goto lost;
	/* Full: the margin covers programs nested on this CPU that passed
	 * this test at the same time. */
	__u64 consumed = *(volatile __u64 *)&h->consumed;
	if (h->reserved - consumed >= CONN_SLOTS_PER_CPU - 8)
		goto lost;
	/* From taking a slot to marking it written, this task must not be
	 * preempted: the programs in process context (accept hooks) could
	 * otherwise leave a hole that later slots of this CPU wait behind,
	 * and the reader gives up on it after a second, counting it lost.
	 * bpf_preempt_disable() exists from Linux 6.10; before, that window
	 * stays (short, and only where a task is preempted inside it). */
	if (bpf_preempt_disable)
		bpf_preempt_disable();
	__u64 pos = __sync_fetch_and_add(&h->reserved, 1);
	__u32 idx = cpu * CONN_SLOTS_PER_CPU + (pos & (CONN_SLOTS_PER_CPU - 1));
	struct conn_slot *slot = bpf_map_lookup_elem(&conn_slots, &idx);
	if (slot) { /* always: user space sized the map for every CPU */
		__builtin_memcpy(&slot->e, e, sizeof(*e));
		asm volatile("" ::: "memory");
		*(volatile __u64 *)&slot->seq = pos + 1;
	}
	if (bpf_preempt_enable)
		bpf_preempt_enable();
	if (!slot)
		goto lost;
	/* After the event is complete, so the woken reader finds it. Each
	 * position is taken once: one ring per crossing, if any. */
	if (pos - consumed == CONN_SLOTS_DOORBELL)
		bpf_ringbuf_output(&conn_doorbell, &cpu, sizeof(cpu), BPF_RB_FORCE_WAKEUP);
	return;
lost:;
	__u64 *lost = bpf_map_lookup_elem(&conn_events_lost, &zero);
	if (lost)
		(*lost)++;
}

#endif /* TCPSCOPE_LC_SLOTS_KERN_H */
