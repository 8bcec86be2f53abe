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
use crate::bpf::lifecycle::types::conn_event;
use crate::bpf::lifecycle::{self, types, AcceptVia, Lifecycle};
use crate::bpf::reader_watch::ReaderWatch;

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
    /// Every drop reason this kernel names.
    pub fn drop_reasons(&self) -> Vec<u32> {
        self.drop.keys().copied().collect()
    }

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
    /// `accept_via`: where the process of accepted sockets comes from;
    /// None leaves the accept view out (the agent counts, and needs no
    /// process).
    pub fn start(config: types::lifecycle_config, accept_via: Option<AcceptVia>) -> Result<Self> {
        let lc = lifecycle::start(config, None, accept_via, None)?;
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

/// What earlier events said of one followed socket.
#[derive(Clone, Copy)]
struct Followed {
    pid: u32,
    uid: u32,
    gid: u32,
    comm: [u8; 16],
    /// connect(), or the first SYN of an incoming connection (CLOCK_MONOTONIC).
    start_ns: u64,
    passive: bool,
    owner_reported: bool,
}

/// A socket's events joined by socket cookie. The kernel reports the owning
/// process only where it runs in that process (connect, accept), and for
/// `conns` keeps no per-socket state at all: each event carries its time.
/// Here the later events get the process, the connect time, and the
/// duration. Keeping this join out of the kernel spares every connection
/// its map operations (bench conns measures them).
#[derive(Default)]
pub struct SocketJoin {
    by_cookie: std::collections::HashMap<u64, Followed>,
}

impl SocketJoin {
    /// Sockets followed at once; past this the table starts afresh (a
    /// long-lived socket's later events then lack their pid and duration).
    const MAX: usize = 1 << 20;

    fn follow(&mut self, cookie: u64, f: Followed) {
        if self.by_cookie.len() >= Self::MAX {
            self.by_cookie.clear();
        }
        self.by_cookie.insert(cookie, f);
    }

    /// Completes `e` from its socket's earlier events and learns from it.
    /// False if it is not to be reported: an accept event that repeats one
    /// already out, or that the getpeername hook saw for a socket that was
    /// not accepted (a client asking for its peer) or not followed from its
    /// handshake.
    pub fn join(&mut self, e: &mut conn_event) -> bool {
        use types::conn_event_kind as K;
        if e.cookie == 0 {
            return true;
        }
        let kind = u32::from(e.kind);
        let fresh = |start_ns, passive| Followed {
            pid: e.pid,
            uid: e.uid,
            gid: e.gid,
            comm: e.comm,
            start_ns,
            passive,
            owner_reported: false,
        };
        if kind == K::CONN_CONNECT.0 {
            self.follow(e.cookie, fresh(e.ts_ns, false));
            return true;
        }
        if kind == K::CONN_ESTABLISHED_IN.0 {
            self.follow(e.cookie, fresh(e.ts_ns.saturating_sub(e.latency_ns), true));
            return true;
        }
        if kind == K::CONN_ACCEPT.0 {
            return match self.by_cookie.get_mut(&e.cookie) {
                Some(f) if f.passive && !f.owner_reported => {
                    (f.pid, f.uid, f.gid, f.comm, f.owner_reported) = (e.pid, e.uid, e.gid, e.comm, true);
                    true
                }
                Some(_) => false,
                // Accepted before we started: only the accept syscall's hook
                // knows it was accepted.
                None => e.reason == types::accept_hook::ACCEPT_BY_SYSCALL.0,
            };
        }
        let closed = kind == K::CONN_CLOSE.0;
        let known =
            if closed { self.by_cookie.remove(&e.cookie) } else { self.by_cookie.get(&e.cookie).copied() };
        // An active open's bytes_acked counts its SYN (the kernel's events
        // already leave out FINs): payload bytes only. A socket not followed
        // from its connect cannot be told apart, and keeps the count as is.
        let active = kind == K::CONN_ESTABLISHED_OUT.0 || known.is_some_and(|f| !f.passive);
        if active && (closed || kind == K::CONN_ESTABLISHED_OUT.0) {
            e.bytes_acked = e.bytes_acked.saturating_sub(1);
        }
        if let Some(f) = known {
            (e.pid, e.uid, e.gid, e.comm) = (f.pid, f.uid, f.gid, f.comm);
            let since_start = e.ts_ns.saturating_sub(f.start_ns);
            if kind == K::CONN_ESTABLISHED_OUT.0 && e.latency_ns == 0 {
                e.latency_ns = since_start;
            }
            if closed && e.duration_ns == 0 {
                e.duration_ns = since_start;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::lifecycle::types::conn_event;

    fn event(kind: types::conn_event_kind, cookie: u64, ts_ns: u64) -> conn_event {
        conn_event { kind: kind.0 as u8, cookie, ts_ns, ..Default::default() }
    }

    #[test]
    fn socket_join_completes_outgoing_connections() {
        use types::conn_event_kind as K;
        let mut join = SocketJoin::default();
        let mut connect = event(K::CONN_CONNECT, 9, 1_000);
        connect.pid = 42;
        connect.comm[..4].copy_from_slice(b"curl");
        assert!(join.join(&mut connect));
        let mut est = event(K::CONN_ESTABLISHED_OUT, 9, 1_500);
        assert!(join.join(&mut est));
        assert_eq!((est.latency_ns, est.pid, &est.comm[..4]), (500, 42, &b"curl"[..]));
        // The client asking for its peer is no accept.
        let mut asked = event(K::CONN_ACCEPT, 9, 1_600);
        assert!(!join.join(&mut asked));
        let mut close = event(K::CONN_CLOSE, 9, 5_000);
        assert!(join.join(&mut close));
        assert_eq!((close.duration_ns, close.pid), (4_000, 42));
        // Forgotten at close: a late event of the same socket gets nothing.
        let mut late = event(K::CONN_RETRANSMIT, 9, 6_000);
        assert!(join.join(&mut late));
        assert_eq!(late.pid, 0);
    }

    #[test]
    fn socket_join_reports_one_accept_per_incoming_connection() {
        use types::conn_event_kind as K;
        let mut join = SocketJoin::default();
        let mut est = event(K::CONN_ESTABLISHED_IN, 5, 2_000);
        est.latency_ns = 300; // first SYN at 1,700
        assert!(join.join(&mut est));
        let mut accept = event(K::CONN_ACCEPT, 5, 2_100);
        accept.pid = 7;
        assert!(join.join(&mut accept));
        let mut again = event(K::CONN_ACCEPT, 5, 2_200);
        again.pid = 7;
        assert!(!join.join(&mut again), "a second getpeername is no second accept");
        let mut close = event(K::CONN_CLOSE, 5, 9_000);
        assert!(join.join(&mut close));
        assert_eq!((close.duration_ns, close.pid), (7_300, 7));
        // Sockets from before the start: only the accept syscall's hook
        // knows they were accepted.
        let mut unknown = event(K::CONN_ACCEPT, 6, 9_100);
        assert!(!join.join(&mut unknown));
        unknown.reason = types::accept_hook::ACCEPT_BY_SYSCALL.0;
        assert!(join.join(&mut unknown));
    }

    #[test]
    fn socket_join_keeps_what_the_kernel_measured() {
        use types::conn_event_kind as K;
        let mut join = SocketJoin::default();
        assert!(join.join(&mut event(K::CONN_CONNECT, 3, 1_000)));
        let mut est = event(K::CONN_ESTABLISHED_OUT, 3, 1_500);
        est.latency_ns = 480;
        assert!(join.join(&mut est));
        let mut close = event(K::CONN_CLOSE, 3, 4_000);
        close.duration_ns = 2_990;
        assert!(join.join(&mut close));
        assert_eq!((est.latency_ns, close.duration_ns), (480, 2_990));
    }
}
