//! The connection view of `conns`: the lifecycle programs started with
//! their events on, read from the per-CPU event slots, put in time order
//! across CPUs and joined per socket, and handed over pass by pass. It
//! never prints.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use libbpf_rs::MapCore;

use crate::bpf::clock_ns;
use crate::bpf::conn_slots::{EventSlots, TimeOrder, SLOTS_PER_CPU};
use crate::bpf::lifecycle::{self, types, AcceptVia, Lifecycle};
use crate::bpf::reader_watch::ReaderWatch;
use crate::lifecycle::SocketJoin;

// Read the slots every POLL, or sooner at high rates, so that a pass finds
// about an eighth of a CPU's slots, and again at once while a pass finds
// more, so that a burst is read at our own speed. A CPU with a quarter of
// its slots unread rings the doorbell, and the watch ends the wait
// (reader_watch). Events are put in time order (a socket's events may come
// from several CPUs, and its join needs them in order) up to MARGIN before
// the pass: an event is written within microseconds of its time, so none
// older can still come, unless a CPU has a slot being written at the pass
// (then the frontier waits).
const POLL: Duration = Duration::from_millis(20);
const MIN_POLL: Duration = Duration::from_millis(1);
const PER_PASS: u64 = SLOTS_PER_CPU / 8;
const MARGIN: u64 = 10_000_000;

/// The names of the kernel's drop and reset reasons, from its BTF (they
/// change between kernels).
pub struct ReasonNames {
    drop: HashMap<u32, String>,
    rst: HashMap<u32, String>,
}

impl ReasonNames {
    pub fn load() -> Self {
        let [drop, rst] = lifecycle::kernel_enum_names([
            ("skb_drop_reason", "SKB_DROP_REASON_"),
            ("sk_rst_reason", "SK_RST_REASON_"),
        ]);
        ReasonNames { drop, rst }
    }

    /// The name of reason `r` of an event of `kind` (a drop or a reset).
    pub fn name(&self, kind: u8, r: u32) -> String {
        let names =
            if u32::from(kind) == types::conn_event_kind::CONN_DROP.0 { &self.drop } else { &self.rst };
        names.get(&r).cloned().unwrap_or_else(|| format!("reason {r}"))
    }
}

pub struct ConnsView {
    reader_watch: Option<ReaderWatch>,
    slots: EventSlots,
    pending: TimeOrder,
    sockets: SocketJoin,
    frontier: u64,
    // The rate is taken over all passes since the last sleep began: a pass
    // made at once after a full one covers too short a time to tell (one
    // finding nothing 0.1 ms after another made the next sleep the longest,
    // POLL, and at 96,000 events/s on one CPU its slots filled meanwhile).
    window_start: u64,
    window_events: u64,
    /// Times the reader's priority was raised to keep up.
    pub raised: u64,
    pub lc: Lifecycle,
}

impl ConnsView {
    pub fn start(config: types::lifecycle_config, accept_via: AcceptVia) -> Result<Self> {
        let lc = lifecycle::start(config, None, Some(accept_via), None)?;
        let slots = EventSlots::new(&lc.skel.maps.conn_heads, &lc.skel.maps.conn_slots)?;
        let reader_watch = Some(ReaderWatch::start(&lc.skel.maps.conn_heads, &lc.skel.maps.conn_doorbell)?);
        let pending = TimeOrder::new(slots.cpus());
        Ok(ConnsView {
            reader_watch,
            slots,
            pending,
            sockets: SocketJoin::default(),
            frontier: 0,
            window_start: clock_ns(libc::CLOCK_MONOTONIC),
            window_events: 0,
            raised: 0,
            lc,
        })
    }

    /// One pass over the slots: hands `take` every event due, joined with
    /// its socket's earlier ones, in time order. With `last`, everything
    /// left (at normal priority: a busy host must not hold up the exit).
    /// Returns how long to wait before the next pass: none while passes
    /// find many events.
    pub fn pass(&mut self, last: bool, mut take: impl FnMut(&mut types::conn_event)) -> Option<Duration> {
        if last {
            self.raised += self.reader_watch.take().map_or(0, ReaderWatch::finish);
        }
        let now = clock_ns(libc::CLOCK_MONOTONIC);
        let pass = self.slots.read(&mut self.pending);
        self.window_events += pass.busiest;
        if last {
            self.frontier = u64::MAX;
        } else if !pass.waiting {
            self.frontier = now.saturating_sub(MARGIN);
        }
        let sockets = &mut self.sockets;
        self.pending.take_until(self.frontier, &mut |e: &mut types::conn_event| {
            if sockets.join(e) {
                take(e)
            }
        });
        if last || pass.busiest >= PER_PASS {
            return None;
        }
        // The time the busiest CPU takes to write PER_PASS events.
        let window = Duration::from_nanos(now.saturating_sub(self.window_start));
        let wait = window.mul_f64(PER_PASS as f64 / self.window_events.max(1) as f64);
        self.window_start = now;
        self.window_events = 0;
        Some(wait.clamp(MIN_POLL, POLL))
    }

    /// Events lost: slots full, or a slot given up on.
    pub fn lost(&self) -> u64 {
        self.lc
            .skel
            .maps
            .conn_events_lost
            .lookup_percpu(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .ok()
            .flatten()
            .unwrap_or_default()
            .iter()
            .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap_or([0; 8])))
            .sum::<u64>()
            + self.slots.given_up
    }
}
