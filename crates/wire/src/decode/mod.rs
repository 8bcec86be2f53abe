//! User-space packet decoder, for capture files.
//!
//! It fills the same `struct packet_event` the kernel programs produce, by
//! the same rules (bpf/parse_kern.h), so that live and offline output agree
//! and the two parsers can be checked against each other
//! (tests/kernel_vs_user.rs).
//!
//! Contract, as in smoltcp's `wire`: every read goes through [`Bytes`],
//! whose accessors return `None` past the end; nothing here indexes a slice
//! directly, loops are bounded, and no input can make it panic (fuzzed by
//! `fuzz/fuzz_targets/decode.rs`).

pub mod link;
pub mod tcp;

use crate::model::{IPF_DF, IPF_FRAG, IPF_HAS_ID, IPF_JUMBO};
use crate::types::{self, packet_event, tcpscope_malformed as M};

pub use link::LinkType;

/// What the decoder made of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A TCP header was decoded into the event (`malformed` may still be set
    /// for faults found after the ports).
    Tcp,
    /// Not decoded; the reason says why. Counted, never silent.
    Skipped(Skip),
    /// Broken below TCP: the kernel's reason code (`enum tcpscope_malformed`).
    Malformed(u8),
}

/// Why a well-formed frame was not decoded as TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// Link layer carries something other than IPv4/IPv6 (ARP, LLDP, ...).
    NotIp,
    /// IP, but not TCP (UDP, ICMP, ...).
    NotTcp,
    /// A non-first IP fragment: no TCP header in it.
    Fragment,
    /// TCP inside a VXLAN or Geneve tunnel: reported, not decoded.
    Tunnelled,
    /// A capture link type this decoder does not know.
    UnsupportedLinkType,
}

impl Skip {
    pub fn name(self) -> &'static str {
        match self {
            Skip::NotIp => "not_ip",
            Skip::NotTcp => "not_tcp",
            Skip::Fragment => "ip_fragment",
            Skip::Tunnelled => "tunnelled",
            Skip::UnsupportedLinkType => "unsupported_link_type",
        }
    }
}

/// A bounds-checked view of packet bytes: reads past the end give `None`.
#[derive(Debug, Clone, Copy)]
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn u8(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }
    pub fn u16(&self, at: usize) -> Option<u16> {
        let b = self.0.get(at..at.checked_add(2)?)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&self, at: usize) -> Option<u32> {
        let b = self.0.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn slice(&self, from: usize, len: usize) -> Option<&'a [u8]> {
        self.0.get(from..from.checked_add(len)?)
    }
    /// Everything from `from` on (empty past the end).
    pub fn rest(&self, from: usize) -> Bytes<'a> {
        Bytes(self.0.get(from..).unwrap_or(&[]))
    }
}

// Protocol numbers and header sizes.
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const MAX_VLAN: usize = 2;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_MAX_EXT: usize = 8;
const IPV6_TLV_JUMBO: u8 = 0xC2;
const UDP_HLEN: usize = 8;
const VXLAN_PORT: u16 = 4789;
const GENEVE_PORT: u16 = 6081;

fn malformed(ev: &mut packet_event, reason: M) -> Outcome {
    ev.malformed = reason.0 as u8;
    Outcome::Malformed(reason.0 as u8)
}

/// Decodes one captured frame. `data` is what was captured, `orig_len` the
/// frame's length on the wire (they differ when the capture was cut short by
/// its snaplen); the IP-length fallbacks for TSO and jumbo packets use the
/// wire length, exactly as the kernel uses the whole frame.
pub fn decode(link: LinkType, data: &[u8], orig_len: u32, ev: &mut packet_event) -> Outcome {
    *ev = packet_event { hook: types::tcpscope_hook::TCPSCOPE_HOOK_PCAP.0 as u8, ..Default::default() };
    ev.frame_len = orig_len;
    let b = Bytes(data);
    // Bytes the wire frame had beyond what was captured.
    let uncaptured = (orig_len as usize).saturating_sub(data.len());
    let (l3, ethertype) = match link::network_layer(link, b, ev) {
        Ok(x) => x,
        Err(outcome) => return outcome,
    };
    let outcome = match ethertype {
        ETH_P_IP => ipv4(b, l3, uncaptured, ev),
        ETH_P_IPV6 => ipv6(b, l3, uncaptured, ev),
        _ => Outcome::Skipped(Skip::NotIp),
    };
    if outcome == Outcome::Tcp && ev.malformed == 0 && u32::from(ev.ip_flags) & IPF_JUMBO == 0 {
        // The IP header claims more bytes than the frame had on the wire
        // (the capture's snaplen does not count: that is `uncaptured`).
        let ip_end = l3 + usize::from(ev.ip_len) + if ev.ip_version == 6 { IPV6_HLEN } else { 0 };
        if ip_end > orig_len as usize {
            ev.malformed = M::MALFORMED_IP_LEN_EXCEEDS_FRAME.0 as u8;
            ev.payload_off = 0;
        }
    }
    outcome
}

/// Ethernet header and up to two VLAN tags: (offset of L3, ethertype).
fn ethernet(b: Bytes<'_>, ev: &mut packet_event) -> Result<(usize, u16), Outcome> {
    let mut proto = b.u16(12).ok_or_else(|| malformed(ev, M::MALFORMED_ETH_TRUNCATED))?;
    let mut off = ETH_HLEN;
    for i in 0..MAX_VLAN {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            return Ok((off, proto));
        }
        let (Some(tci), Some(inner)) = (b.u16(off), b.u16(off + 2)) else {
            return Err(malformed(ev, M::MALFORMED_VLAN_TRUNCATED));
        };
        ev.vlan[i] = tci & 0x0fff;
        ev.vlan_count = i as u8 + 1;
        proto = inner;
        off += VLAN_HLEN;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return Err(malformed(ev, M::MALFORMED_VLAN_TOO_DEEP));
    }
    Ok((off, proto))
}

/// Is this UDP datagram (at `l4`) a VXLAN or Geneve tunnel?
fn is_tunnel(b: Bytes<'_>, l4: usize) -> bool {
    matches!(b.u16(l4 + 2), Some(VXLAN_PORT) | Some(GENEVE_PORT)) && b.len() >= l4 + UDP_HLEN
}

fn ipv4(b: Bytes<'_>, at: usize, uncaptured: usize, ev: &mut packet_event) -> Outcome {
    let ip = b.rest(at);
    if ip.len() < IPV4_MIN_HLEN {
        return malformed(ev, M::MALFORMED_IPV4_TRUNCATED);
    }
    let vihl = ip.u8(0).unwrap_or(0);
    if vihl >> 4 != 4 {
        return malformed(ev, M::MALFORMED_IPV4_BAD_VERSION);
    }
    let hlen = usize::from(vihl & 0x0f) * 4;
    if hlen < IPV4_MIN_HLEN {
        return malformed(ev, M::MALFORMED_IPV4_BAD_IHL);
    }
    if hlen > ip.len() {
        return malformed(ev, M::MALFORMED_IPV4_TRUNCATED);
    }
    let tot_len = ip.u16(2).unwrap_or(0);
    let ip_payload_len = if tot_len == 0 {
        // TSO/GSO super-packets carry 0: the frame gives the length.
        ev.ip_flags |= IPF_JUMBO as u8;
        (ip.len() + uncaptured - hlen) as u32
    } else if usize::from(tot_len) < hlen {
        return malformed(ev, M::MALFORMED_IPV4_BAD_TOTAL_LEN);
    } else {
        u32::from(tot_len) - hlen as u32
    };
    let tos = ip.u8(1).unwrap_or(0);
    let frag = ip.u16(6).unwrap_or(0);
    let proto = ip.u8(9).unwrap_or(0);
    ev.ip_version = 4;
    ev.ip_len = tot_len;
    ev.ttl = ip.u8(8).unwrap_or(0);
    ev.dscp = tos >> 2;
    ev.ecn = tos & 0x3;
    ev.ip_id = u32::from(ip.u16(4).unwrap_or(0));
    ev.ip_flags |= IPF_HAS_ID as u8;
    if frag & 0x4000 != 0 {
        ev.ip_flags |= IPF_DF as u8;
    }
    if frag & 0x2000 != 0 {
        ev.ip_flags |= IPF_FRAG as u8;
    }
    ev.src[..4].copy_from_slice(ip.slice(12, 4).unwrap_or(&[0; 4]));
    ev.dst[..4].copy_from_slice(ip.slice(16, 4).unwrap_or(&[0; 4]));
    let l4 = at + hlen;
    if proto != IPPROTO_TCP {
        let first = frag & 0x1fff == 0;
        if proto == IPPROTO_UDP && first && is_tunnel(b, l4) {
            return Outcome::Skipped(Skip::Tunnelled);
        }
        return Outcome::Skipped(Skip::NotTcp);
    }
    if frag & 0x1fff != 0 {
        return Outcome::Skipped(Skip::Fragment);
    }
    tcp::decode(b, l4, ip_payload_len, ev)
}

fn ipv6(b: Bytes<'_>, at: usize, uncaptured: usize, ev: &mut packet_event) -> Outcome {
    let ip = b.rest(at);
    if ip.len() < IPV6_HLEN {
        return malformed(ev, M::MALFORMED_IPV6_TRUNCATED);
    }
    let first = ip.u32(0).unwrap_or(0);
    if first >> 28 != 6 {
        return malformed(ev, M::MALFORMED_IPV6_BAD_VERSION);
    }
    let plen = ip.u16(4).unwrap_or(0);
    let tclass = ((first >> 20) & 0xff) as u8;
    ev.ip_version = 6;
    ev.ip_len = plen;
    ev.ttl = ip.u8(7).unwrap_or(0);
    ev.dscp = tclass >> 2;
    ev.ecn = tclass & 0x3;
    ev.src.copy_from_slice(ip.slice(8, 16).unwrap_or(&[0; 16]));
    ev.dst.copy_from_slice(ip.slice(24, 16).unwrap_or(&[0; 16]));

    let mut off = at + IPV6_HLEN;
    let mut remaining: u32 = if plen == 0 {
        // Jumbogram or BIG TCP: length from the frame, unless a hop-by-hop
        // jumbo option below says better.
        ev.ip_flags |= IPF_JUMBO as u8;
        (b.len().saturating_sub(off) + uncaptured) as u32
    } else {
        u32::from(plen)
    };
    let mut next = ip.u8(6).unwrap_or(0);
    if plen == 0 && next == IPV6_HOPOPTS {
        // RFC 2675 jumbogram: the hop-by-hop header, always first, holds the
        // real length of everything after the IPv6 header.
        if let Some(h) = b.slice(off, 8) {
            if h[2] == IPV6_TLV_JUMBO && h[3] == 4 {
                remaining = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            }
        }
    }
    let is_ext = |n: u8| matches!(n, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT);
    for _ in 0..IPV6_MAX_EXT {
        if !is_ext(next) {
            break;
        }
        let Some(ext) = b.slice(off, 8) else {
            return malformed(ev, M::MALFORMED_IPV6_EXT_TRUNCATED);
        };
        let elen = if next == IPV6_FRAGMENT {
            let fo = u16::from_be_bytes([ext[2], ext[3]]);
            ev.ip_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
            ev.ip_flags |= IPF_HAS_ID as u8;
            if fo & 0x0001 != 0 {
                ev.ip_flags |= IPF_FRAG as u8;
            }
            if fo & 0xfff8 != 0 {
                return Outcome::Skipped(if ext[0] == IPPROTO_TCP { Skip::Fragment } else { Skip::NotTcp });
            }
            8
        } else {
            (u32::from(ext[1]) + 1) * 8
        };
        if elen > remaining {
            return malformed(ev, M::MALFORMED_IPV6_EXT_TRUNCATED);
        }
        next = ext[0];
        remaining -= elen;
        off += elen as usize;
    }
    if is_ext(next) {
        return malformed(ev, M::MALFORMED_IPV6_EXT_TOO_MANY);
    }
    if next != IPPROTO_TCP {
        if next == IPPROTO_UDP && is_tunnel(b, off) {
            return Outcome::Skipped(Skip::Tunnelled);
        }
        return Outcome::Skipped(Skip::NotTcp);
    }
    tcp::decode(b, off, remaining, ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(link: LinkType, data: &[u8]) -> (Outcome, packet_event) {
        let mut ev = packet_event::default();
        let o = decode(link, data, data.len() as u32, &mut ev);
        (o, ev)
    }

    #[test]
    fn syn_from_etherparse() {
        let f = crate::testpkt::syn_v4();
        let (o, ev) = run(LinkType::Ethernet, &f);
        assert_eq!(o, Outcome::Tcp);
        assert_eq!((ev.sport, ev.dport, ev.seq, ev.mss, ev.wscale), (40000, 80, 1000, 1460, 7));
        assert_eq!(&ev.src[..4], &[198, 18, 0, 1]);
        assert_eq!(ev.hook, types::tcpscope_hook::TCPSCOPE_HOOK_PCAP.0 as u8);
    }

    #[test]
    fn every_truncation_of_a_frame_is_handled() {
        for f in [crate::testpkt::syn_v4(), crate::testpkt::syn_v6(), crate::testpkt::syn_vlan()] {
            for n in 0..f.len() {
                let (o, _) = run(LinkType::Ethernet, &f[..n]);
                assert!(matches!(o, Outcome::Malformed(_) | Outcome::Tcp), "{n}: {o:?}");
            }
        }
        // Hand-checked: 14 + 20 + 12 bytes cuts the fixed TCP header.
        let f = crate::testpkt::syn_v4();
        assert_eq!(
            run(LinkType::Ethernet, &f[..46]).0,
            Outcome::Malformed(M::MALFORMED_TCP_TRUNCATED.0 as u8)
        );
        assert_eq!(
            run(LinkType::Ethernet, &f[..10]).0,
            Outcome::Malformed(M::MALFORMED_ETH_TRUNCATED.0 as u8)
        );
    }

    #[test]
    fn udp_and_tunnels_are_skipped() {
        assert_eq!(run(LinkType::Ethernet, &crate::testpkt::udp_v4()).0, Outcome::Skipped(Skip::NotTcp));
        let mut vx = crate::testpkt::udp_v4();
        vx[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&VXLAN_PORT.to_be_bytes());
        assert_eq!(run(LinkType::Ethernet, &vx).0, Outcome::Skipped(Skip::Tunnelled));
        let mut arp = crate::testpkt::udp_v4();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(LinkType::Ethernet, &arp).0, Outcome::Skipped(Skip::NotIp));
    }
}
