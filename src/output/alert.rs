//! Guard alerts: one typed record per alert, written as NDJSON or as one
//! text line with its time. The JSON schema is docs/alert-schema.md.

use std::net::IpAddr;

use serde::Serialize;

/// One alert.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Its kind: port_scan, syn_flood, null_flags, xmas, syn_fin, syn_rst,
    /// fin_without_ack, syn_with_data, mitigation, conn_limit, syn_ratio,
    /// l7_blocked, l7_undecided, l7_conflict.
    pub alert: &'static str,
    /// The source it is about (IPv6: a /64 for scans and floods); none for
    /// the host-wide syn_ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    /// Wall-clock time, ns since the epoch.
    pub ts_ns: u64,
    #[serde(flatten)]
    pub detail: Detail,
}

/// What each kind of alert says besides its source and time.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Detail {
    PortScan {
        ports_seen: u32,
        window_s: f64,
    },
    SynFlood {
        syn_rate_limit: u32,
    },
    Mitigation {
        blocked_for_s: u64,
    },
    /// `refused`: the guard drops the source's new SYNs (--enforce); else
    /// the limit only alerts.
    ConnLimit {
        connections: u32,
        limit: u32,
        refused: bool,
    },
    /// A flag anomaly: the packet's destination port and flags.
    Flags {
        dport: u16,
        flags: Vec<&'static str>,
    },
    SynRatio {
        syn_per_s: f64,
        handshakes_per_s: f64,
        ratio: f64,
        threshold: f64,
    },
    /// A connection dropped by an L7 rule: what its first message named
    /// (`rule`: sni, host or http_method; `name`: what the client sent, in
    /// lower case, its first 64 bytes).
    L7Blocked {
        sport: u16,
        dport: u16,
        rule: &'static str,
        name: String,
    },
    /// A connection dropped because its first message could not be read:
    /// too_large, tls_fragmented, timeout or h2c.
    L7Undecided {
        sport: u16,
        dport: u16,
        reason: &'static str,
    },
    /// A connection dropped because it sent first-message bytes again,
    /// unlike the first copy, at stream offset `offset`.
    L7Conflict {
        sport: u16,
        dport: u16,
        offset: u32,
    },
}

impl Alert {
    /// NDJSON: one object.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("an alert always serializes")
    }

    /// "13:05:09.123456 ALERT port_scan from 198.18.0.1: 20 distinct ports within 5s"
    pub fn text(&self) -> String {
        let from = self.src.map_or(String::new(), |s| format!(" from {s}"));
        let detail = match &self.detail {
            Detail::PortScan { ports_seen, window_s } => format!("{ports_seen} distinct ports within {window_s}s"),
            Detail::SynFlood { syn_rate_limit } => format!("more than {syn_rate_limit} SYN/s"),
            Detail::Mitigation { blocked_for_s } => format!("blocked for {blocked_for_s}s"),
            Detail::ConnLimit { connections, limit, refused } => format!(
                "{connections} established connections (limit {limit}){}",
                if *refused { ": new ones refused" } else { "" }
            ),
            Detail::Flags { dport, flags } => format!("to port {dport} flags [{}]", flags.join(",")),
            Detail::SynRatio { syn_per_s, handshakes_per_s, ratio, threshold } => format!(
                "{syn_per_s:.0} SYN/s, {handshakes_per_s:.0} handshakes/s completed ({ratio:.3} < {threshold})"
            ),
            Detail::L7Blocked { sport, dport, rule, name } => {
                format!("port {sport} > {dport}: {rule} {name}: connection dropped")
            }
            Detail::L7Undecided { sport, dport, reason } => {
                format!("port {sport} > {dport}: first message unreadable ({reason}): connection dropped")
            }
            Detail::L7Conflict { sport, dport, offset } => format!(
                "port {sport} > {dport}: bytes at stream offset {offset} sent again, changed: connection dropped"
            ),
        };
        format!("{} ALERT {}{from}: {detail}", super::time_of_day(self.ts_ns), self.alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_say_the_same() {
        let a = Alert {
            alert: "conn_limit",
            src: Some("198.18.0.1".parse().unwrap()),
            ts_ns: 1_700_000_000_123_456_789,
            detail: Detail::ConnLimit { connections: 5, limit: 5, refused: true },
        };
        let v: serde_json::Value = serde_json::from_str(&a.json()).unwrap();
        assert_eq!(v["alert"], "conn_limit");
        assert_eq!(v["src"], "198.18.0.1");
        assert_eq!(
            (v["connections"].as_u64(), v["limit"].as_u64(), v["refused"].as_bool()),
            (Some(5), Some(5), Some(true))
        );
        assert_eq!(v["ts_ns"], 1_700_000_000_123_456_789u64);
        assert_eq!(a.text(), "22:13:20.123456 ALERT conn_limit from 198.18.0.1: 5 established connections (limit 5): new ones refused");
        let r = Alert {
            alert: "syn_ratio",
            src: None,
            ts_ns: 0,
            detail: Detail::SynRatio {
                syn_per_s: 900.0,
                handshakes_per_s: 3.0,
                ratio: 0.003,
                threshold: 0.1,
            },
        };
        assert!(r.json().find("\"src\"").is_none());
    }
}
