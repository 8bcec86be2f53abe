//! tcpdump-like one-line text for a packet record, and the time and
//! number formats every text output shares.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::PacketRecord;

/// tcpdump's flag letters, in flags_raw bit order (FIN..AE).
const FLAG_LETTERS: [char; 9] = ['F', 'S', 'R', 'P', '.', 'U', 'E', 'W', 'e'];

/// Flags as tcpdump prints them between brackets: "S", "S.", "P.", "none".
pub fn tcpdump_flags(flags_raw: u16) -> String {
    let s: String = FLAG_LETTERS
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags_raw & (1 << bit) != 0)
        .map(|(_, c)| *c)
        .collect();
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// A count or rate for people: 950, 12.3k, 4.56M, 7.89G.
pub fn human_count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}G", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n if n == n.trunc() => format!("{n:.0}"),
        n => format!("{n:.1}"),
    }
}

/// Bytes for people, in powers of 1000 as network rates are: 512 B, 1.5 kB, 12.3 MB.
pub fn human_bytes(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n:.0} B"),
    }
}

/// UTC wall-clock time of day, microseconds: "13:05:09.123456".
pub fn time_of_day(ts_ns: u64) -> String {
    let secs = ts_ns / 1_000_000_000;
    let micros = (ts_ns % 1_000_000_000) / 1_000;
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}.{:06}", day / 3600, (day / 60) % 60, day % 60, micros)
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    format!("{addr}.{port}")
}

/// One line, tcpdump style, with the hook and interface in front.
pub fn format_text(r: &PacketRecord, ifname: &str) -> String {
    let mut s = String::with_capacity(160);
    let _ = write!(s, "{} {} {}", time_of_day(r.ts_ns), r.hook.name(), ifname);
    for v in &r.vlan {
        let _ = write!(s, " vlan {v}");
    }
    let _ = write!(
        s,
        " {} {} > {}: Flags [{}], seq {}",
        if r.ip_version == 4 { "IP" } else { "IP6" },
        endpoint(r.src, r.sport),
        endpoint(r.dst, r.dport),
        tcpdump_flags(r.flags_raw),
        r.seq
    );
    if r.flags_raw & crate::model::TCPF_ACK != 0 {
        let _ = write!(s, ", ack {}", r.ack);
    }
    let _ = write!(s, ", win {}", r.window);
    if r.flags_raw & crate::model::TCPF_URG != 0 {
        let _ = write!(s, ", urg {}", r.urgent_ptr);
    }
    let o = &r.options;
    let mut opts: Vec<String> = Vec::new();
    if let Some(m) = o.mss {
        opts.push(format!("mss {m}"));
    }
    if o.sack_permitted {
        opts.push("sackOK".into());
    }
    if let (Some(v), Some(e)) = (o.ts_val, o.ts_ecr) {
        opts.push(format!("TS val {v} ecr {e}"));
    }
    if let Some(w) = o.wscale {
        opts.push(format!("wscale {w}"));
    }
    if !o.sack.is_empty() {
        let blocks: Vec<String> = o.sack.iter().map(|[l, r]| format!("{{{l}:{r}}}")).collect();
        opts.push(format!("sack {} {}", o.sack.len(), blocks.join("")));
    }
    for k in &o.other {
        match crate::decode::tcp::option_name(*k) {
            Some("mptcp") => match o.mptcp_subtype {
                Some(st) => opts.push(format!("mptcp subtype {st}")),
                None => opts.push("mptcp".into()),
            },
            Some(name) => opts.push(name.into()),
            None => opts.push(format!("opt-{k}")),
        }
    }
    if let Some(n) = o.tfo_cookie_len {
        opts.push(if n == 0 { "tfo cookiereq".into() } else { format!("tfo cookie {n}B") });
    }
    if !opts.is_empty() {
        let _ = write!(s, ", options [{}]", opts.join(","));
    }
    let _ = write!(s, ", length {}", r.payload_len);
    if let Some(reason) = r.malformed {
        let _ = write!(s, " [malformed: {reason}]");
    }
    if let Some(hex) = &r.payload_hex {
        let _ = write!(s, ", payload {hex}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hook, TcpOptions};

    #[test]
    fn flags_like_tcpdump() {
        assert_eq!(tcpdump_flags(0x002), "S");
        assert_eq!(tcpdump_flags(0x012), "S.");
        assert_eq!(tcpdump_flags(0x018), "P.");
        assert_eq!(tcpdump_flags(0x0c2), "SEW");
        assert_eq!(tcpdump_flags(0), "none");
    }

    #[test]
    fn syn_line() {
        let r = PacketRecord {
            ts_ns: 1_700_000_000_123_456_789,
            ifindex: 2,
            hook: Hook::Xdp,
            vlan: vec![100],
            ip_version: 4,
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            ttl: 64,
            ip_len: 60,
            ip_id: Some(1),
            dscp: 0,
            ecn: 0,
            df: Some(true),
            frag: false,
            sport: 40000,
            dport: 80,
            seq: 1000,
            ack: 0,
            hdr_len: 40,
            flags_raw: 0x002,
            flags: vec!["SYN"],
            window: 64240,
            checksum: 0,
            urgent_ptr: 0,
            payload_len: 0,
            options: TcpOptions {
                mss: Some(1460),
                wscale: Some(7),
                sack_permitted: true,
                ts_val: Some(5),
                ts_ecr: Some(0),
                ..Default::default()
            },
            payload_hex: None,
            malformed: None,
            frame: None,
            conn: None,
        };
        assert_eq!(
            format_text(&r, "veth1"),
            "22:13:20.123456 xdp veth1 vlan 100 IP 198.18.0.1.40000 > 198.18.0.2.80: Flags [S], seq 1000, win 64240, options [mss 1460,sackOK,TS val 5 ecr 0,wscale 7], length 0"
        );
    }
}
