//! The kernel's per-CPU counters, summed over CPUs, and their presentation.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::bpf::types::tcpscope_counters;
use crate::model::{FLAG_NAMES, MALFORMED_NAMES};

/// Totals of `struct tcpscope_counters` over all CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters(pub tcpscope_counters);

impl Counters {
    /// Adds one CPU's slot.
    pub fn add(&mut self, c: &tcpscope_counters) {
        let t = &mut self.0;
        t.packets += c.packets;
        t.bytes += c.bytes;
        t.tcp_packets += c.tcp_packets;
        t.tcp_bytes += c.tcp_bytes;
        t.non_tcp += c.non_tcp;
        t.ip_fragments += c.ip_fragments;
        for (a, b) in t.flag.iter_mut().zip(c.flag) {
            *a += b;
        }
        t.syn_no_ack += c.syn_no_ack;
        t.syn_ack += c.syn_ack;
        for (a, b) in t.malformed.iter_mut().zip(c.malformed) {
            *a += b;
        }
        t.filtered_out += c.filtered_out;
        t.sampled_out += c.sampled_out;
        t.events += c.events;
        t.events_lost += c.events_lost;
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
        })
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
