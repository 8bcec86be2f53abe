//! The kernel's per-CPU counters, summed over CPUs, and their presentation.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::bpf::types::tcpscope_counters;
use crate::names::{FLAG_NAMES, GUARD_DROP_NAMES, MALFORMED_NAMES};

/// Totals of `struct tcpscope_counters` over all CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters(pub tcpscope_counters);

impl Counters {
    /// Adds one CPU's slot. Every field of the struct is a u64 counter, so
    /// they are added as one array: a counter added to the header is summed
    /// without a change here.
    pub fn add(&mut self, c: &tcpscope_counters) {
        const _: () = assert!(std::mem::size_of::<tcpscope_counters>() % 8 == 0);
        // SAFETY: tcpscope_counters is Plain (only u64 fields, no padding).
        let (sum, add) = unsafe { (plain::as_mut_bytes(&mut self.0), plain::as_bytes(c)) };
        for (s, a) in sum.chunks_exact_mut(8).zip(add.chunks_exact(8)) {
            let v = u64::from_ne_bytes(s.try_into().expect("8 bytes"))
                .wrapping_add(u64::from_ne_bytes(a.try_into().expect("8 bytes")));
            s.copy_from_slice(&v.to_ne_bytes());
        }
    }

    /// Malformed packets in total (slot 0, "none", is not a reason).
    pub fn malformed_total(&self) -> u64 {
        self.0.malformed.iter().skip(1).sum()
    }

    /// (name, count) of every malformed reason seen.
    pub fn malformed_by_reason(&self) -> Vec<(&'static str, u64)> {
        self.0
            .malformed
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (MALFORMED_NAMES.get(i).copied().unwrap_or("unknown"), *n))
            .collect()
    }

    /// (name, count) of every reason the guard dropped packets for, every
    /// reason listed (a zero is news to whoever asks why nothing dropped).
    pub fn guard_dropped_by_reason(&self) -> Vec<(&'static str, u64)> {
        GUARD_DROP_NAMES.iter().copied().zip(self.0.guard_dropped).skip(1).collect()
    }

    /// Every counter as a JSON object with stable keys.
    pub fn to_json(&self) -> Value {
        let c = &self.0;
        let flags: Map<String, Value> =
            FLAG_NAMES.iter().zip(c.flag).map(|(n, v)| (n.to_string(), json!(v))).collect();
        let malformed: Map<String, Value> =
            self.malformed_by_reason().into_iter().map(|(n, v)| (n.to_string(), json!(v))).collect();
        json!({
            "packets": c.packets, "bytes": c.bytes,
            "tcp_packets": c.tcp_packets, "tcp_bytes": c.tcp_bytes,
            "non_tcp": c.non_tcp, "ip_fragments": c.ip_fragments,
            "flags": flags, "syn_no_ack": c.syn_no_ack, "syn_ack": c.syn_ack,
            "malformed": malformed, "malformed_total": self.malformed_total(),
            "filtered_out": c.filtered_out, "sampled_out": c.sampled_out,
            "events": c.events, "events_lost": c.events_lost,
            "policy_dropped": c.policy_dropped, "policy_allowed": c.policy_allowed,
            "guard_dropped": self.guard_dropped_by_reason().into_iter()
                .map(|(n, v)| (n.to_string(), json!(v))).collect::<Map<String, Value>>(),
        })
    }

    /// A lean guard's summary: every packet it saw, once: dropped (by
    /// reason, on the line before), or passed as TCP, non-TCP, a non-first
    /// fragment, or unparsed (malformed below TCP).
    pub fn guard_summary(&self) -> String {
        use crate::bpf::types::guard_drop_reason as R;
        let c = &self.0;
        // These drops come after a packet was counted as TCP.
        let tcp_dropped: u64 = [R::GUARD_DROP_PORT_RULE, R::GUARD_DROP_DETECTOR, R::GUARD_DROP_CONN_LIMIT]
            .iter()
            .map(|r| c.guard_dropped[r.0 as usize])
            .sum();
        let passed = c.packets.saturating_sub(c.policy_dropped);
        let tcp = c.tcp_packets.saturating_sub(tcp_dropped);
        let unparsed = passed.saturating_sub(tcp + c.non_tcp + c.ip_fragments);
        format!(
            "packets {} ({} bytes): dropped {}, passed {} (tcp {}, non-tcp {}, non-first ip fragments {}, unparsed {}); SYN without ACK {}",
            c.packets, c.bytes, c.policy_dropped, passed, tcp, c.non_tcp, c.ip_fragments, unparsed, c.syn_no_ack
        )
    }

    /// The multi-line summary printed when a command ends.
    pub fn summary(&self) -> String {
        let c = &self.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "packets {} ({} bytes): tcp {}, non-tcp {}, non-first ip fragments {}, malformed {}",
            c.packets,
            c.bytes,
            c.tcp_packets,
            c.non_tcp,
            c.ip_fragments,
            self.malformed_total()
        );
        let flags: Vec<String> = FLAG_NAMES.iter().zip(c.flag).map(|(n, v)| format!("{n} {v}")).collect();
        let _ = writeln!(
            s,
            "tcp flags: {}; SYN without ACK {}, SYN-ACK {}",
            flags.join(", "),
            c.syn_no_ack,
            c.syn_ack
        );
        let reasons = self.malformed_by_reason();
        if !reasons.is_empty() {
            let r: Vec<String> = reasons.iter().map(|(n, v)| format!("{n} {v}")).collect();
            let _ = writeln!(s, "malformed by reason: {}", r.join(", "));
        }
        let _ = write!(
            s,
            "events: {} emitted, {} lost (ring buffer full), {} filtered out, {} sampled out",
            c.events, c.events_lost, c.filtered_out, c.sampled_out
        );
        s
    }
}
