//! NDJSON for connection events, written straight from the kernel's
//! `conn_event` with the packet writer's line buffer (tcpscope_wire's
//! format::json, whose header says why). The test below holds the writer
//! and `conn::ConnRecord`'s serde form byte-for-byte equal.

use std::net::IpAddr;

use tcpscope_wire::format::json::{ipv4, ipv4_bare, ipv6, plain_string, string, write_with, Line};

use crate::bpf::lifecycle::types::conn_event;
use crate::conn::{self, has};

/// Appends one JSON object (no newline) for the lifecycle event `e`;
/// `reason` names its drop or reset reason.
pub fn write_conn_event(out: &mut Vec<u8>, e: &conn_event, ts_ns: u64, reason: &str) {
    write_with(out, |line| fill_conn(line, e, ts_ns, reason))
}

fn fill_conn(out: &mut Line, e: &conn_event, ts_ns: u64, reason: &str) {
    let (local, peer) = (conn::addr(e.family, &e.saddr), conn::addr(e.family, &e.daddr));
    // A JSON string, or (in_key) bare, with IPv6 in brackets.
    let address = |out: &mut Line, a: IpAddr, in_key: bool| match a {
        IpAddr::V4(a) => {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&a.octets());
            if in_key {
                ipv4_bare(out, &raw);
            } else {
                ipv4(out, &raw);
            }
        }
        IpAddr::V6(a) if in_key => {
            let mut s = String::with_capacity(48);
            s.push('[');
            conn::push_addr(&mut s, IpAddr::V6(a));
            s.push(']');
            out.put(s.as_bytes());
        }
        IpAddr::V6(a) => ipv6(out, &a.octets()),
    };
    out.field(b"{\"ts_ns\":", ts_ns);
    out.quoted(b",\"event\":", crate::names::conn_kind_name(e.kind));
    // The key (conn::conn_key): digits, dots, colons, brackets, a slash
    // and a dash, no escaping.
    out.field(b",\"conn\":\"", e.netns);
    out.byte(b'/');
    for (i, (a, port)) in [(local, e.sport), (peer, e.dport)].into_iter().enumerate() {
        if i > 0 {
            out.byte(b'-');
        }
        address(out, a, true);
        out.byte(b':');
        out.num(port);
    }
    out.field(b"\",\"netns\":", e.netns);
    out.field(b",\"cookie\":", e.cookie);
    out.field(b",\"cgroup_id\":", e.cgroup_id);
    out.put(if local.is_ipv4() { b",\"ip_version\":4,\"local\":" } else { b",\"ip_version\":6,\"local\":" });
    address(out, local, false);
    out.field(b",\"lport\":", e.sport);
    out.put(b",\"peer\":");
    address(out, peer, false);
    out.field(b",\"pport\":", e.dport);
    if has::owner(e) {
        out.field(b",\"pid\":", e.pid);
        out.put(b",\"comm\":");
        // Raw bytes when they are plain ASCII (nearly always): no UTF-8
        // validation or allocation.
        if !plain_string(out, conn::comm_bytes(e)) {
            string(out, &conn::comm(e));
        }
        out.field(b",\"uid\":", e.uid);
        out.field(b",\"gid\":", e.gid);
    }
    if has::state(e) {
        out.quoted(b",\"state\":", crate::names::state_name(e.newstate));
    }
    if has::old_state(e) {
        out.quoted(b",\"old_state\":", crate::names::state_name(e.oldstate));
    }
    if has::latency(e) {
        out.field(b",\"latency_ns\":", e.latency_ns);
    }
    if has::duration(e) {
        out.field(b",\"duration_ns\":", e.duration_ns);
    }
    if has::stats(e) {
        out.field(b",\"stats\":{\"bytes_received\":", e.bytes_received);
        out.field(b",\"bytes_acked\":", e.bytes_acked);
        out.field(b",\"segs_in\":", e.segs_in);
        out.field(b",\"segs_out\":", e.segs_out);
        out.field(b",\"total_retrans\":", e.total_retrans);
        out.field(b",\"srtt_us\":", e.srtt_us);
        out.field(b",\"rttvar_us\":", e.rttvar_us);
        out.field(b",\"snd_cwnd\":", e.snd_cwnd);
        out.field(b",\"snd_wnd\":", e.snd_wnd);
        out.field(b",\"rcv_wnd\":", e.rcv_wnd);
        out.byte(b'}');
    }
    if has::reason(e) {
        out.put(b",\"reason\":");
        string(out, reason);
    }
    out.byte(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same for lifecycle events: every kind, IPv4, IPv6 and
    /// IPv4-mapped, with and without an owner, a comm that needs escaping.
    #[test]
    fn conn_events_same_bytes_as_serde() {
        use crate::bpf::lifecycle::types::conn_event_kind as K;
        use crate::conn::ConnRecord;
        let v6: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mapped = std::net::Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped();
        let mut compared = 0;
        for kind in 1..=K::CONN_LIMIT.0 + 1 {
            for variant in 0..4u32 {
                let mut e = conn_event {
                    kind: kind as u8,
                    sport: 8080,
                    dport: 40000 + variant as u16,
                    ..Default::default()
                };
                e.ts_ns = 1;
                e.netns = 4026531840;
                e.cookie = 77 + u64::from(variant);
                e.cgroup_id = 9;
                match variant {
                    0 => {
                        e.family = 4;
                        e.saddr[..4].copy_from_slice(&[198, 18, 0, 2]);
                        e.daddr[..4].copy_from_slice(&[198, 18, 0, 1]);
                    }
                    1 => {
                        e.family = 6;
                        e.saddr = v6.octets();
                        e.daddr = mapped.octets();
                    }
                    _ => {
                        e.family = 6;
                        e.saddr = v6.octets();
                        e.daddr = v6.octets();
                        e.daddr[15] = 1;
                    }
                }
                if variant % 2 == 0 {
                    (e.pid, e.uid, e.gid) = (4242, 1000, 100);
                    let name: &[u8] = if variant == 2 { b"we\"ird\\n\x01\xff" } else { b"server" };
                    e.comm[..name.len()].copy_from_slice(name);
                }
                (e.newstate, e.oldstate) = if variant == 3 { (0, 0) } else { (7, 9) };
                (e.latency_ns, e.duration_ns) = (1234 * u64::from(variant), 5678 * u64::from(variant));
                (e.bytes_received, e.bytes_acked, e.segs_in, e.segs_out) = (3000, 500, 7, 6);
                (e.total_retrans, e.srtt_us, e.rttvar_us) = (1, 55, 20);
                (e.snd_cwnd, e.snd_wnd, e.rcv_wnd, e.reason) = (10, 65535, 64240, 2);
                let reason = if variant == 1 { "NO_\"SOCKET" } else { "NO_SOCKET" };
                let rec = ConnRecord::from_event(&e, 1_700_000_000_000_000_000, &|_, _| reason.to_string());
                let mut fast = Vec::new();
                write_conn_event(&mut fast, &e, rec.ts_ns, reason);
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    serde_json::to_string(&rec).unwrap(),
                    "kind {kind} variant {variant}"
                );
                compared += 1;
            }
        }
        assert!(compared >= 60, "{compared}");
    }
}
