//! Reading the events of `conns` from the slots each CPU's lifecycle
//! programs write (`conn_slots_head` in bpf/common_kern_user.h says why not
//! a ring buffer): every CPU's slots in order, through shared mappings of
//! the two arrays. Events of different CPUs come out in no particular
//! order; `conns` orders them by time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::AsRawFd;
use std::ptr::addr_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use libbpf_rs::MapCore;

use super::lifecycle::types::{conn_event, conn_slot, conn_slots_head, conn_slots_limits};

/// Slots per CPU (a power of two).
pub const SLOTS_PER_CPU: u64 = conn_slots_limits::CONN_SLOTS_PER_CPU.0 as u64;

/// How long a slot may stay taken and unwritten before it counts as lost. A
/// program writes its slot within microseconds; only one stopped half-way
/// (which BPF programs cannot be) would leave it so, and without this its
/// CPU's later events would wait forever.
const GIVE_UP: Duration = Duration::from_secs(1);

/// A shared mapping of a BPF array map made with BPF_F_MMAPABLE.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(map: &impl MapCore, writable: bool, what: &str) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let elem = (map.value_size() as usize).next_multiple_of(8);
        let len = (elem * map.max_entries() as usize).next_multiple_of(page);
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a new shared mapping of the map's fd at offset 0; the
        // kernel checks the length and protection against the map.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, map.as_fd().as_raw_fd(), 0)
        };
        ensure!(ptr != libc::MAP_FAILED, "mapping the {what}: {}", std::io::Error::last_os_error());
        Ok(Self { ptr: ptr.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr and len are the mapping made in new(), unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What one pass over the slots found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pass {
    /// Most events read from one CPU's slots.
    pub busiest: u64,
    /// Some CPU has a slot being written: its later events wait for it.
    pub waiting: bool,
}

pub struct EventSlots {
    heads: Mapping,
    slots: Mapping,
    cpus: usize,
    /// Per CPU: the next position to read.
    next: Vec<u64>,
    /// Per CPU: since when the slot at `next` has been taken but not written.
    unwritten_since: Vec<Option<Instant>>,
    /// Slots given up on (GIVE_UP): lost events.
    pub given_up: u64,
}

impl EventSlots {
    /// Maps the heads (read and written: we free slots) and the slots (read
    /// only) that `lifecycle::start` sized for every possible CPU.
    pub fn new(heads: &impl MapCore, slots: &impl MapCore) -> Result<Self> {
        let cpus = heads.max_entries() as usize;
        ensure!(
            heads.value_size() as usize == std::mem::size_of::<conn_slots_head>()
                && slots.value_size() as usize == std::mem::size_of::<conn_slot>()
                && slots.max_entries() as u64 == cpus as u64 * SLOTS_PER_CPU,
            "the event slot maps are not sized for {cpus} CPUs (was lifecycle_config.events set?)"
        );
        Ok(Self {
            heads: Mapping::new(heads, true, "event slot heads")?,
            slots: Mapping::new(slots, false, "event slots")?,
            cpus,
            next: vec![0; cpus],
            unwritten_since: vec![None; cpus],
            given_up: 0,
        })
    }

    /// CPUs with slots: every CPU the kernel may run a program on.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// CPU `cpu`'s positions: (reserved, consumed).
    fn head(heads: &Mapping, cpus: usize, cpu: usize) -> (&AtomicU64, &AtomicU64) {
        assert!(cpu < cpus);
        // SAFETY: the mapping holds `cpus` heads; their u64s are 8-aligned
        // (the mapping is page-aligned, the struct 128 bytes) and live as
        // long as it. The programs and we only ever access them whole.
        unsafe {
            let h = heads.ptr.cast::<conn_slots_head>().add(cpu);
            (&*addr_of!((*h).reserved).cast::<AtomicU64>(), &*addr_of!((*h).consumed).cast::<AtomicU64>())
        }
    }

    /// Moves every CPU's written events to `out` and frees their slots.
    pub fn read(&mut self, out: &mut TimeOrder) -> Pass {
        let mut pass = Pass::default();
        for cpu in 0..self.cpus {
            let (reserved, consumed) = Self::head(&self.heads, self.cpus, cpu);
            let end = reserved.load(Ordering::Acquire);
            let start = self.next[cpu];
            let mut pos = start;
            while pos < end {
                let index = cpu as u64 * SLOTS_PER_CPU + (pos & (SLOTS_PER_CPU - 1));
                // SAFETY: index < cpus * SLOTS_PER_CPU, the slots in the
                // mapping, which lives as long as self.
                let slot = unsafe { self.slots.ptr.cast::<conn_slot>().add(index as usize) };
                // SAFETY: seq is an 8-aligned u64 the program stores whole.
                let seq = unsafe { &*addr_of!((*slot).seq).cast::<AtomicU64>() }.load(Ordering::Acquire);
                if seq != pos + 1 {
                    // Taken, not yet written: the program that took it is
                    // writing it now.
                    let since = *self.unwritten_since[cpu].get_or_insert_with(Instant::now);
                    if since.elapsed() < GIVE_UP {
                        pass.waiting = true;
                        break;
                    }
                    self.given_up += 1;
                } else {
                    // SAFETY: the program wrote the event before seq (and
                    // x86 keeps stores in order); the slot is not reused
                    // until `consumed` passes it, below.
                    out.push(cpu, unsafe { std::ptr::read_volatile(addr_of!((*slot).e)) });
                }
                self.unwritten_since[cpu] = None;
                pos += 1;
            }
            self.next[cpu] = pos;
            consumed.store(pos, Ordering::Release);
            pass.busiest = pass.busiest.max(pos - start);
        }
        pass
    }
}

/// Events read and not yet taken, put in time order across CPUs: each
/// CPU's are kept in order as they come (nearly always at the end: only a
/// program interrupted between reading the clock and taking its slot writes
/// after a later one), and taking merges the CPUs by time. Events of one
/// CPU with one time keep their order. Sorting them all at each pass, and
/// moving those held back to the front after, took 13% of the reader's
/// profile at 96,000 events/s, and grows with the events held back; this
/// merge took 4%.
pub struct TimeOrder {
    queues: Vec<VecDeque<conn_event>>,
    /// (time, CPU) of each queue's first event; entries whose queue has
    /// moved on since are skipped when they come up.
    firsts: BinaryHeap<Reverse<(u64, usize)>>,
}

impl TimeOrder {
    pub fn new(cpus: usize) -> Self {
        Self { queues: vec![VecDeque::new(); cpus], firsts: BinaryHeap::new() }
    }

    pub fn push(&mut self, cpu: usize, e: conn_event) {
        let queue = &mut self.queues[cpu];
        let at = match queue.back() {
            Some(last) if e.ts_ns < last.ts_ns => queue.partition_point(|q| q.ts_ns <= e.ts_ns),
            _ => queue.len(),
        };
        if at == 0 {
            self.firsts.push(Reverse((e.ts_ns, cpu)));
        }
        queue.insert(at, e);
    }

    /// Passes each event up to time `until` (inclusive) to `take`, in time
    /// order, and forgets it.
    pub fn take_until(&mut self, until: u64, mut take: impl FnMut(&mut conn_event)) {
        while let Some(&Reverse((ts, cpu))) = self.firsts.peek() {
            if ts > until {
                break;
            }
            self.firsts.pop();
            let queue = &mut self.queues[cpu];
            if queue.front().is_none_or(|first| first.ts_ns != ts) {
                continue; // this queue's first has changed since
            }
            if let Some(e) = queue.front_mut() {
                take(e);
            }
            queue.pop_front();
            if let Some(next) = queue.front() {
                self.firsts.push(Reverse((next.ts_ns, cpu)));
            }
        }
    }
}

/// How far the reader is behind, for another thread to watch: the heads
/// mapped again, read only.
pub struct Backlog {
    heads: Mapping,
    cpus: usize,
}

// SAFETY: the mapping is shared memory, valid until this value drops it,
// and only read through atomics.
unsafe impl Send for Backlog {}

impl Backlog {
    pub fn new(heads: &impl MapCore) -> Result<Self> {
        let cpus = heads.max_entries() as usize;
        ensure!(
            heads.value_size() as usize == std::mem::size_of::<conn_slots_head>(),
            "the event slot heads are not conn_slots_head"
        );
        Ok(Self { heads: Mapping::new(heads, false, "event slot heads")?, cpus })
    }

    /// The most events waiting on one CPU, and the events read so far (all
    /// CPUs).
    pub fn now(&self) -> (u64, u64) {
        let (mut behind, mut read) = (0, 0);
        for cpu in 0..self.cpus {
            let (reserved, consumed) = EventSlots::head(&self.heads, self.cpus, cpu);
            let consumed = consumed.load(Ordering::Acquire);
            behind = behind.max(reserved.load(Ordering::Acquire).saturating_sub(consumed));
            read += consumed;
        }
        (behind, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts_ns: u64, tag: u32) -> conn_event {
        conn_event { ts_ns, pid: tag, ..Default::default() }
    }

    #[test]
    fn events_of_all_cpus_come_out_in_time_order_and_each_once() {
        let mut order = TimeOrder::new(3);
        // CPU 0 in order; CPU 1 with one event written after a later one
        // (an interrupted program), also before the first; CPU 2 empty
        // until the second round; equal times on one CPU keep their order.
        for (cpu, ts, tag) in
            [(0, 10, 1), (0, 20, 2), (0, 20, 3), (1, 15, 4), (1, 30, 5), (1, 25, 6), (1, 5, 7)]
        {
            order.push(cpu, event(ts, tag));
        }
        let mut out = Vec::new();
        order.take_until(20, |e| out.push((e.ts_ns, e.pid)));
        assert_eq!(out, [(5, 7), (10, 1), (15, 4), (20, 2), (20, 3)]);
        for (cpu, ts, tag) in [(2, 22, 8), (0, 40, 9), (2, 21, 10)] {
            order.push(cpu, event(ts, tag));
        }
        out.clear();
        order.take_until(u64::MAX, |e| out.push((e.ts_ns, e.pid)));
        assert_eq!(out, [(21, 10), (22, 8), (25, 6), (30, 5), (40, 9)]);
        order.take_until(u64::MAX, |_| panic!("taken twice"));
    }
}
