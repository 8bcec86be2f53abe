//! The owned, decoded form of one TCP packet, in the stable JSON schema of
//! `docs/json-schema.md`, and its conversion from the kernel's event.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::names::{flag_names, malformed_name};
use crate::types;

/// Where a packet was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Xdp,
    Tc,
    Pcap,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
            Hook::Pcap => "pcap",
        }
    }
}

/// Parsed TCP options. Absent options are omitted from JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TcpOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mss: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wscale: Option<u8>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sack_permitted: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sack: Vec<[u32; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts_val: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts_ecr: Option<u32>,
    /// Kinds of every other option present, ascending, each once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other: Vec<u8>,
    /// MPTCP option subtype (0 MP_CAPABLE, 1 MP_JOIN, 2 DSS, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mptcp_subtype: Option<u8>,
    /// Fast Open cookie length in bytes (0: a cookie request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tfo_cookie_len: Option<u8>,
}

/// One packet, as both the live and the offline paths report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PacketRecord {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub hook: Hook,
    pub vlan: Vec<u16>,
    pub ip_version: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub ip_len: u16,
    pub ip_id: Option<u32>,
    pub dscp: u8,
    pub ecn: u8,
    pub df: Option<bool>,
    pub frag: bool,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub hdr_len: u8,
    pub flags_raw: u16,
    pub flags: Vec<&'static str>,
    pub window: u16,
    pub checksum: u16,
    pub urgent_ptr: u16,
    pub payload_len: u32,
    pub options: TcpOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malformed: Option<&'static str>,
    /// Offline only: the packet's number in the capture file, from 1, as
    /// Wireshark counts (every record, TCP or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<u64>,
    /// Live only: the connection key shared with `conns` events
    /// (netns/local:port-peer:port; the local side is the destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<String>,
}

/// A packet's address as the kernel event carries it: IPv4 in the first 4
/// of 16 bytes. (Sockets' addresses: `lifecycle::addr`, which also unmaps
/// IPv4-mapped IPv6.)
pub fn address(ip_version: u8, raw: &[u8; 16]) -> IpAddr {
    if ip_version == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

/// The inverse of [`address`]: the IP version and the 16 bytes.
pub fn raw_address(a: IpAddr) -> (u8, [u8; 16]) {
    match a {
        IpAddr::V4(v4) => {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&v4.octets());
            (4, raw)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

impl PacketRecord {
    /// Builds a record from a kernel event. `ts_ns` is the event's time
    /// already converted to the wall clock; `payload` holds the bytes
    /// copied with `--snaplen`, if any.
    pub fn from_event(ev: &types::packet_event, ts_ns: u64, payload: Option<&[u8]>) -> Self {
        let hook = match u32::from(ev.hook) {
            h if h == types::tcpscope_hook::TCPSCOPE_HOOK_XDP.0 => Hook::Xdp,
            h if h == types::tcpscope_hook::TCPSCOPE_HOOK_TC.0 => Hook::Tc,
            _ => Hook::Pcap,
        };
        let has = |bit: u32| u32::from(ev.opt_present) & bit != 0;
        let ip_flag = |bit: u32| u32::from(ev.ip_flags) & bit != 0;
        let options = TcpOptions {
            mss: has(OPT_MSS).then_some(ev.mss),
            wscale: has(OPT_WSCALE).then_some(ev.wscale),
            sack_permitted: has(OPT_SACK_PERM),
            sack: if has(OPT_SACK) {
                ev.sack[..usize::from(ev.sack_count).min(ev.sack.len())].to_vec()
            } else {
                Vec::new()
            },
            ts_val: has(OPT_TS).then_some(ev.ts_val),
            ts_ecr: has(OPT_TS).then_some(ev.ts_ecr),
            other: (0u16..256)
                .filter(|k| ev.other_kinds[(k >> 3) as usize] & (1 << (k & 7)) != 0)
                .map(|k| k as u8)
                .collect(),
            mptcp_subtype: has(OPT_MPTCP).then_some(ev.mptcp_subtype),
            tfo_cookie_len: has(OPT_TFO).then_some(ev.tfo_cookie_len),
        };
        PacketRecord {
            ts_ns,
            ifindex: ev.ifindex,
            hook,
            vlan: ev.vlan[..usize::from(ev.vlan_count).min(ev.vlan.len())].to_vec(),
            ip_version: ev.ip_version,
            src: address(ev.ip_version, &ev.src),
            dst: address(ev.ip_version, &ev.dst),
            ttl: ev.ttl,
            ip_len: ev.ip_len,
            ip_id: ip_flag(IPF_HAS_ID).then_some(ev.ip_id),
            dscp: ev.dscp,
            ecn: ev.ecn,
            df: (ev.ip_version == 4).then_some(ip_flag(IPF_DF)),
            frag: ip_flag(IPF_FRAG),
            sport: ev.sport,
            dport: ev.dport,
            seq: ev.seq,
            ack: ev.ack,
            hdr_len: ev.hdr_len,
            flags_raw: ev.flags_raw,
            flags: flag_names(ev.flags_raw),
            window: ev.window,
            checksum: ev.checksum,
            urgent_ptr: ev.urgent_ptr,
            payload_len: ev.payload_len,
            options,
            payload_hex: payload.map(hex),
            malformed: (ev.malformed != 0).then(|| malformed_name(ev.malformed)),
            frame: None,
            conn: None,
        }
    }
}

// Bit values of bpf/common_kern_user.h's enums, through the skeleton.
use types::{ip_flag_bits as ipf, tcp_flag_bits as tcpf, tcp_opt_bits as opt};
pub const IPF_HAS_ID: u32 = ipf::IPF_HAS_ID.0;
pub const IPF_DF: u32 = ipf::IPF_DF.0;
pub const IPF_FRAG: u32 = ipf::IPF_FRAG.0;
pub const IPF_JUMBO: u32 = ipf::IPF_JUMBO.0;
pub const OPT_MSS: u32 = opt::OPT_MSS.0;
pub const OPT_WSCALE: u32 = opt::OPT_WSCALE.0;
pub const OPT_SACK_PERM: u32 = opt::OPT_SACK_PERM.0;
pub const OPT_SACK: u32 = opt::OPT_SACK.0;
pub const OPT_TS: u32 = opt::OPT_TS.0;
pub const OPT_OTHER: u32 = opt::OPT_OTHER.0;
pub const OPT_MPTCP: u32 = opt::OPT_MPTCP.0;
pub const OPT_TFO: u32 = opt::OPT_TFO.0;
/// TCP flag bits of `flags_raw`.
pub const TCPF_SYN: u16 = tcpf::TCPF_SYN.0 as u16;
pub const TCPF_ACK: u16 = tcpf::TCPF_ACK.0 as u16;
pub const TCPF_URG: u16 = tcpf::TCPF_URG.0 as u16;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_converts_to_record() {
        let mut ev = types::packet_event {
            hook: types::tcpscope_hook::TCPSCOPE_HOOK_TC.0 as u8,
            ip_version: 6,
            vlan_count: 1,
            ip_flags: (IPF_HAS_ID | IPF_FRAG) as u8,
            opt_present: (OPT_MSS | OPT_SACK | OPT_OTHER) as u8,
            sack_count: 2,
            mss: 1440,
            flags_raw: 0x012,
            ip_id: 77,
            ..Default::default()
        };
        ev.vlan = [100, 0];
        ev.src[15] = 1;
        ev.dst[0] = 0x20;
        ev.sack = [[1, 2], [3, 4], [5, 6], [7, 8]];
        ev.other_kinds[30 >> 3] |= 1 << (30 & 7);
        ev.other_kinds[254 >> 3] |= 1 << (254 & 7);
        let r = PacketRecord::from_event(&ev, 5, Some(&[0xde, 0xad]));
        assert_eq!(r.hook, Hook::Tc);
        assert_eq!(r.vlan, vec![100]);
        assert_eq!(r.src, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(r.dst, "2000::".parse::<IpAddr>().unwrap());
        assert_eq!(r.ip_id, Some(77));
        assert_eq!(r.df, None);
        assert!(r.frag);
        assert_eq!(r.options.mss, Some(1440));
        assert_eq!(r.options.wscale, None);
        assert_eq!(r.options.sack, vec![[1, 2], [3, 4]]);
        assert_eq!(r.options.other, vec![30, 254]);
        assert_eq!(r.payload_hex.as_deref(), Some("dead"));
        assert_eq!(r.malformed, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["flags"], serde_json::json!(["SYN", "ACK"]));
        assert_eq!(json["hook"], "tc");
        assert_eq!(json["df"], serde_json::Value::Null);
        assert!(json["options"].get("ts_val").is_none());
    }
}
