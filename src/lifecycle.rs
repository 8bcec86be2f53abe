//! Connection lifecycle records and latency histograms, from the kernel's
//! `conn_event` and `latency_hist` (bpf/lifecycle.bpf.c).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::bpf::lifecycle::types::{self, conn_event, latency_hist};

/// The address as a user sees it: a dual-stack socket's IPv4-mapped
/// address (::ffff:a.b.c.d) is shown, and keyed, as the IPv4 address the
/// packets carry.
pub fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == 6 {
        let a = Ipv6Addr::from(*raw);
        a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// An address as text, IPv4 by hand (std's `Display` goes through the
/// formatting machinery: a measurable part of each event's key).
pub fn push_addr(s: &mut String, a: IpAddr) {
    match a {
        IpAddr::V4(a) => {
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                s.push_str(itoa::Buffer::new().format(o));
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(s, "{a}");
        }
    }
}

/// The key that names one connection in both packet and lifecycle output:
/// network namespace, then local and peer endpoint. Built by hand into one
/// string: it is made for every event, and nested `format!` calls made it
/// the dearest step of decoding one.
pub fn conn_key(netns: u32, local: IpAddr, lport: u16, peer: IpAddr, pport: u16) -> String {
    fn push_endpoint(s: &mut String, a: IpAddr, port: u16) {
        if a.is_ipv6() {
            s.push('[');
            push_addr(s, a);
            s.push(']');
        } else {
            push_addr(s, a);
        }
        s.push(':');
        s.push_str(itoa::Buffer::new().format(port));
    }
    let mut s = String::with_capacity(64);
    s.push_str(itoa::Buffer::new().format(netns));
    s.push('/');
    push_endpoint(&mut s, local, lport);
    s.push('-');
    push_endpoint(&mut s, peer, pport);
    s
}

/// What earlier events said of one followed socket.
#[derive(Clone, Copy)]
struct Followed {
    pid: u32,
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
                    (f.pid, f.comm, f.owner_reported) = (e.pid, e.comm, true);
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
            (e.pid, e.comm) = (f.pid, f.comm);
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

/// One lifecycle event, owned; its serde form is the `conns --json` schema.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRecord {
    pub ts_ns: u64,
    pub event: &'static str,
    pub conn: String,
    pub netns: u32,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub ip_version: u8,
    pub local: IpAddr,
    pub lport: u16,
    pub peer: IpAddr,
    pub pport: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Socket state after the event; absent when no socket was involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<ConnStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnStats {
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub total_retrans: u32,
    pub srtt_us: u32,
    pub rttvar_us: u32,
    pub snd_cwnd: u32,
    pub snd_wnd: u32,
    pub rcv_wnd: u32,
}

/// Which optional keys an event of this kind carries: the one statement of
/// these rules, for `ConnRecord` and for the fast JSON writer alike.
pub mod has {
    use super::types::{conn_event, conn_event_kind as K};

    fn kind(e: &conn_event) -> u32 {
        u32::from(e.kind)
    }
    pub fn owner(e: &conn_event) -> bool {
        e.pid != 0
    }
    pub fn state(e: &conn_event) -> bool {
        e.newstate != 0
    }
    pub fn old_state(e: &conn_event) -> bool {
        kind(e) == K::CONN_STATE.0 || e.oldstate != 0
    }
    pub fn latency(e: &conn_event) -> bool {
        (kind(e) == K::CONN_ESTABLISHED_IN.0 || kind(e) == K::CONN_ESTABLISHED_OUT.0) && e.latency_ns > 0
    }
    pub fn duration(e: &conn_event) -> bool {
        kind(e) == K::CONN_CLOSE.0 && e.duration_ns > 0
    }
    pub fn stats(e: &conn_event) -> bool {
        [
            K::CONN_CLOSE.0,
            K::CONN_ESTABLISHED_IN.0,
            K::CONN_ESTABLISHED_OUT.0,
            K::CONN_RETRANSMIT.0,
            K::CONN_ZERO_WINDOW.0,
            K::CONN_WINDOW_REOPEN.0,
            K::CONN_RESET_RX.0,
            K::CONN_RCVQ_FULL.0,
        ]
        .contains(&kind(e))
    }
    pub fn reason(e: &conn_event) -> bool {
        kind(e) == K::CONN_DROP.0 || kind(e) == K::CONN_RESET_TX.0
    }
}

/// The process name, as text.
pub fn comm(e: &conn_event) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(comm_bytes(e))
}

/// The comm's bytes, up to its NUL.
pub fn comm_bytes(e: &conn_event) -> &[u8] {
    let len = e.comm.iter().position(|c| *c == 0).unwrap_or(e.comm.len());
    &e.comm[..len]
}

impl ConnRecord {
    /// `reason_name` maps a DROP or RESET_TX reason number to its kernel name.
    pub fn from_event(e: &conn_event, ts_ns: u64, reason_name: &dyn Fn(u8, u32) -> String) -> Self {
        let local = addr(e.family, &e.saddr);
        let peer = addr(e.family, &e.daddr);
        ConnRecord {
            ts_ns,
            event: crate::names::conn_kind_name(e.kind),
            conn: conn_key(e.netns, local, e.sport, peer, e.dport),
            netns: e.netns,
            cookie: e.cookie,
            cgroup_id: e.cgroup_id,
            ip_version: if local.is_ipv4() { 4 } else { 6 },
            local,
            lport: e.sport,
            peer,
            pport: e.dport,
            pid: has::owner(e).then_some(e.pid),
            comm: has::owner(e).then(|| comm(e).into_owned()),
            state: has::state(e).then(|| crate::names::state_name(e.newstate)),
            old_state: has::old_state(e).then(|| crate::names::state_name(e.oldstate)),
            latency_ns: has::latency(e).then_some(e.latency_ns),
            duration_ns: has::duration(e).then_some(e.duration_ns),
            stats: has::stats(e).then_some(ConnStats {
                bytes_received: e.bytes_received,
                bytes_acked: e.bytes_acked,
                segs_in: e.segs_in,
                segs_out: e.segs_out,
                total_retrans: e.total_retrans,
                srtt_us: e.srtt_us,
                rttvar_us: e.rttvar_us,
                snd_cwnd: e.snd_cwnd,
                snd_wnd: e.snd_wnd,
                rcv_wnd: e.rcv_wnd,
            }),
            reason: has::reason(e).then(|| reason_name(e.kind, e.reason)),
        }
    }

    /// One line of text.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} {:<15} {} {}:{} <-> {}:{}",
            crate::output::time_of_day(self.ts_ns),
            self.event,
            self.state.unwrap_or("-"),
            self.local,
            self.lport,
            self.peer,
            self.pport
        );
        if let (Some(pid), Some(comm)) = (self.pid, &self.comm) {
            let _ = write!(s, " pid {pid} ({comm})");
        }
        if let Some(l) = self.latency_ns {
            let _ = write!(s, " latency {}", human_ns(l));
        }
        if let Some(d) = self.duration_ns {
            let _ = write!(s, " duration {}", human_ns(d));
        }
        if let Some(st) = &self.stats {
            if self.event == "close" {
                let _ = write!(
                    s,
                    " rx {}B acked {}B segs in {} out {} retrans {}",
                    st.bytes_received, st.bytes_acked, st.segs_in, st.segs_out, st.total_retrans
                );
            }
            let _ = write!(
                s,
                " srtt {}us cwnd {} snd_wnd {} rcv_wnd {}",
                st.srtt_us, st.snd_cwnd, st.snd_wnd, st.rcv_wnd
            );
        }
        if let Some(r) = &self.reason {
            let _ = write!(s, " reason {r}");
        }
        s
    }
}

pub fn human_ns(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}us", n as f64 / 1e3),
        n => format!("{n}ns"),
    }
}

/// [lower, upper) bounds of histogram slot `s` (see lat_slot in the kernel).
pub fn slot_bounds(s: usize) -> (u64, u64) {
    let sub_bits = types::latency_limits::LAT_SUB_BITS.0 as usize;
    let per = 1usize << sub_bits;
    if s < per {
        return (s as u64, s as u64 + 1);
    }
    let msb = s / per + sub_bits - 1;
    let sub = (s % per) as u64;
    let shift = (msb - sub_bits) as u32;
    let lo = (per as u64 + sub) << shift;
    (lo, lo + (1u64 << shift))
}

/// The q-quantile (0..1) of a histogram: the midpoint of the bucket that
/// holds it, never above the recorded maximum.
pub fn quantile(h: &latency_hist, q: f64) -> u64 {
    if h.count == 0 {
        return 0;
    }
    let target = ((h.count as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (s, n) in h.slots.iter().enumerate() {
        seen += n;
        if seen >= target {
            let (lo, hi) = slot_bounds(s);
            return ((lo + hi) / 2).min(h.max);
        }
    }
    h.max
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same slot function as the kernel's lat_slot, for checking bounds.
    fn slot(v: u64) -> usize {
        let bits = types::latency_limits::LAT_SUB_BITS.0 as usize;
        let per = 1u64 << bits;
        if v < per {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros() as usize;
        let sub = ((v >> (msb - bits)) & (per - 1)) as usize;
        (msb - bits + 1) * per as usize + sub
    }

    #[test]
    fn bounds_hold_their_values() {
        for v in [0u64, 1, 3, 4, 7, 8, 9, 15, 16, 1000, 50_000_000, 1 << 40, u64::MAX >> 1] {
            let (lo, hi) = slot_bounds(slot(v));
            assert!(lo <= v && v < hi, "{v}: [{lo},{hi})");
            assert!(hi - lo <= lo.max(8) / 8 + 1, "bucket width within 1/8: {v}");
        }
    }

    #[test]
    fn quantiles_within_a_bucket() {
        let mut h = latency_hist::default();
        for v in [48_000_000u64, 50_000_000, 51_000_000, 52_000_000, 49_000_000] {
            h.slots[slot(v)] += 1;
            h.count += 1;
            h.max = h.max.max(v);
        }
        let p50 = quantile(&h, 0.5) as f64;
        assert!((p50 - 50e6).abs() / 50e6 < 0.07, "{p50}");
        assert_eq!(quantile(&h, 1.0), 52_000_000);
    }

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

    #[test]
    fn conn_keys() {
        let k = conn_key(7, "198.18.0.2".parse().unwrap(), 8080, "198.18.0.1".parse().unwrap(), 40000);
        assert_eq!(k, "7/198.18.0.2:8080-198.18.0.1:40000");
        let k6 = conn_key(7, "2001:db8::2".parse().unwrap(), 80, "2001:db8::1".parse().unwrap(), 1);
        assert_eq!(k6, "7/[2001:db8::2]:80-[2001:db8::1]:1");
    }
}
