//! Capture link types: where the network layer starts, and which it is.

use super::{ethernet, malformed, Bytes, Outcome, Skip, ETH_P_IP, ETH_P_IPV6};
use crate::types::{packet_event, tcpscope_malformed as M};

/// The link types tcpscope decodes (pcap LINKTYPE_* values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1), with 802.1Q / 802.1ad tags.
    Ethernet,
    /// LINKTYPE_RAW (101; also DLT_RAW's 12 and 14 on some systems): IPv4 or IPv6 by version.
    Raw,
    /// LINKTYPE_IPV4 (228).
    Ipv4,
    /// LINKTYPE_IPV6 (229).
    Ipv6,
    /// LINKTYPE_LINUX_SLL (113): 16-byte Linux cooked header.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): 20-byte Linux cooked header.
    LinuxSll2,
    /// LINKTYPE_NULL (0): 4-byte address family, host byte order of the capturer.
    Null,
    /// LINKTYPE_LOOP (108): as NULL, network byte order.
    Loop,
    /// Anything else.
    Other(u32),
}

impl LinkType {
    /// The pcap LINKTYPE_* value.
    pub fn linktype(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::Raw => 101,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
            LinkType::LinuxSll => 113,
            LinkType::LinuxSll2 => 276,
            LinkType::Null => 0,
            LinkType::Loop => 108,
            LinkType::Other(n) => n,
        }
    }

    pub fn from_linktype(n: u32) -> Self {
        match n {
            1 => LinkType::Ethernet,
            12 | 14 | 101 => LinkType::Raw,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            0 => LinkType::Null,
            108 => LinkType::Loop,
            n => LinkType::Other(n),
        }
    }
}

const SLL_HLEN: usize = 16;
const SLL2_HLEN: usize = 20;
const NULL_HLEN: usize = 4;
// BSD address families for IPv4 and the several values used for IPv6.
const AF_INET: u32 = 2;
const AF_INET6: [u32; 3] = [10, 24, 28];
const AF_INET6_MORE: [u32; 1] = [30];

fn by_ip_version(b: Bytes<'_>, at: usize) -> Option<u16> {
    match b.u8(at)? >> 4 {
        4 => Some(ETH_P_IP),
        6 => Some(ETH_P_IPV6),
        _ => None,
    }
}

/// (offset of the network layer, its ethertype), or the outcome that ends
/// decoding here.
pub(super) fn network_layer(
    link: LinkType,
    b: Bytes<'_>,
    ev: &mut packet_event,
) -> Result<(usize, u16), Outcome> {
    match link {
        LinkType::Ethernet => ethernet(b, ev),
        LinkType::Raw => match by_ip_version(b, 0) {
            Some(t) => Ok((0, t)),
            None if b.is_empty() => Err(malformed(ev, M::MALFORMED_IPV4_TRUNCATED)),
            None => Err(Outcome::Skipped(Skip::NotIp)),
        },
        LinkType::Ipv4 => Ok((0, ETH_P_IP)),
        LinkType::Ipv6 => Ok((0, ETH_P_IPV6)),
        LinkType::LinuxSll => {
            let proto = b.u16(14).ok_or_else(|| malformed(ev, M::MALFORMED_ETH_TRUNCATED))?;
            Ok((SLL_HLEN, proto))
        }
        LinkType::LinuxSll2 => {
            if b.len() < SLL2_HLEN {
                return Err(malformed(ev, M::MALFORMED_ETH_TRUNCATED));
            }
            Ok((SLL2_HLEN, b.u16(0).unwrap_or(0)))
        }
        LinkType::Null | LinkType::Loop => {
            let raw = b.slice(0, NULL_HLEN).ok_or_else(|| malformed(ev, M::MALFORMED_ETH_TRUNCATED))?;
            let raw = [raw[0], raw[1], raw[2], raw[3]];
            // NULL is in the capturing host's byte order: accept either.
            let fams = if link == LinkType::Loop {
                [u32::from_be_bytes(raw), u32::from_be_bytes(raw)]
            } else {
                [u32::from_le_bytes(raw), u32::from_be_bytes(raw)]
            };
            if fams.contains(&AF_INET) {
                Ok((NULL_HLEN, ETH_P_IP))
            } else if fams.iter().any(|f| AF_INET6.contains(f) || AF_INET6_MORE.contains(f)) {
                Ok((NULL_HLEN, ETH_P_IPV6))
            } else {
                Err(Outcome::Skipped(Skip::NotIp))
            }
        }
        LinkType::Other(_) => Err(Outcome::Skipped(Skip::UnsupportedLinkType)),
    }
}
