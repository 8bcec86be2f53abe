//! The user's event filter: parsing of CIDRs, flag sets and ports, and their
//! translation into the kernel's `struct tcpscope_config`.

use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

use crate::bpf::types;
use crate::names::FLAG_NAMES;

/// Limits that the kernel's config struct imposes.
pub const MAX_PORTS: usize = types_len::PORTS;
pub const MAX_CIDRS: usize = types_len::CIDRS;
pub const MAX_SNAPLEN: u32 = types_len::SNAPLEN;

/// Array lengths read off the generated types, so they cannot drift from
/// bpf/common_kern_user.h.
mod types_len {
    use crate::bpf::types;
    const fn cfg() -> types::tcpscope_config {
        // SAFETY: tcpscope_config is plain old data; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }
    pub const PORTS: usize = cfg().ports.len();
    pub const CIDRS: usize = cfg().src.len();
    pub const SNAPLEN: u32 = types::tcpscope_limits::TCPSCOPE_MAX_SNAPLEN.0;
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("bad CIDR '{0}': expected ADDRESS or ADDRESS/PREFIX, e.g. 198.18.0.0/15 or 2001:db8::/32")]
    BadCidr(String),
    #[error("bad CIDR '{0}': prefix {1} is longer than {2} bits")]
    PrefixTooLong(String, u32, u32),
    #[error("unknown TCP flag '{0}': use FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, AE, optionally prefixed with ! for 'not set'")]
    BadFlag(String),
    #[error("flag {0} is asked to be both set and clear: no packet matches; drop one of them")]
    FlagBothWays(String),
    #[error("CIDR '{0}' has host bits set: write the network, {1}, or the host, {2}")]
    HostBits(String, String, String),
    #[error("too many {what}: at most {max} are supported")]
    TooMany { what: &'static str, max: usize },
    #[error("--snaplen {0} is too large: at most {max} payload bytes per event", max = MAX_SNAPLEN)]
    SnaplenTooLarge(u32),
}

/// An address prefix: IPv4 or IPv6 network with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u32,
}

impl FromStr for Cidr {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s.trim().parse().map_err(|_| FilterError::BadCidr(s.into()))?;
        // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address,
        // as packets carry it: a rule on it must match them.
        let (addr, mapped) = match addr {
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), 96),
                None => (addr, 0),
            },
            v4 => (v4, 0),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => {
                let p = p.trim().parse::<u32>().map_err(|_| FilterError::BadCidr(s.into()))?;
                if mapped > 0 && p < mapped {
                    return Err(FilterError::BadCidr(s.into()));
                }
                p - mapped
            }
        };
        if prefix > max {
            return Err(FilterError::PrefixTooLong(s.into(), prefix + mapped, max + mapped));
        }
        let cidr = Cidr { addr, prefix };
        let network = cidr.network();
        // As tcpdump: 198.18.0.7/24 is a typo for one of two things.
        if network != addr {
            return Err(FilterError::HostBits(
                s.into(),
                format!("{network}/{prefix}"),
                format!("{addr}/{max}"),
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// The address with the bits past the prefix cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Network and mask bytes as the kernel compares them (IPv4 in bytes 0..4).
    fn to_kernel(self) -> types::tcpscope_cidr {
        let mut out = types::tcpscope_cidr::default();
        let (net, family): (Vec<u8>, u8) = match self.network() {
            IpAddr::V4(a) => (a.octets().to_vec(), 4),
            IpAddr::V6(a) => (a.octets().to_vec(), 6),
        };
        for (i, byte) in net.iter().enumerate() {
            let bits = self.prefix.saturating_sub(i as u32 * 8).min(8);
            out.mask[i] = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            out.addr[i] = *byte;
        }
        out.family = family;
        out
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && Cidr { addr: ip, prefix: self.prefix }.network() == self.network()
    }
}

/// `--flags SYN,!ACK`: flags that must be set and flags that must be clear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagMatch {
    pub set: u16,
    pub clear: u16,
}

impl FromStr for FlagMatch {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut m = FlagMatch::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (negated, name) = match part.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, part),
            };
            let bit = FLAG_NAMES
                .iter()
                .position(|f| f.eq_ignore_ascii_case(name))
                .ok_or_else(|| FilterError::BadFlag(part.into()))?;
            if negated {
                m.clear |= 1 << bit;
            } else {
                m.set |= 1 << bit;
            }
            if m.set & m.clear & (1 << bit) != 0 {
                return Err(FilterError::FlagBothWays(FLAG_NAMES[bit].into()));
            }
        }
        Ok(m)
    }
}

impl FlagMatch {
    pub fn matches(&self, flags_raw: u16) -> bool {
        flags_raw & self.set == self.set && flags_raw & self.clear == 0
    }
}

/// Everything that decides which packets become events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Either port matches.
    pub ports: Vec<u16>,
    pub sports: Vec<u16>,
    pub dports: Vec<u16>,
    pub src: Vec<Cidr>,
    pub dst: Vec<Cidr>,
    pub flags: FlagMatch,
    /// Keep one of every N matching packets (0 and 1 keep all).
    pub sample_every: u32,
    /// Payload bytes to copy per event.
    pub snaplen: u32,
    /// Copy each event's frame headers too (for pcapng export).
    pub copy_headers: bool,
}

impl EventFilter {
    /// The kernel configuration for this filter. `events` false turns the
    /// ring buffer off entirely (counters only).
    pub fn to_kernel(&self, events: bool) -> Result<types::tcpscope_config, FilterError> {
        let mut cfg = types::tcpscope_config {
            events_enabled: u8::from(events),
            copy_frame: u8::from(self.snaplen > 0 || self.copy_headers),
            sample_every: self.sample_every,
            flags_set: self.flags.set,
            flags_clear: self.flags.clear,
            ..Default::default()
        };
        if self.snaplen > MAX_SNAPLEN {
            return Err(FilterError::SnaplenTooLarge(self.snaplen));
        }
        cfg.snaplen = self.snaplen;
        cfg.n_ports = fill_ports(&mut cfg.ports, &self.ports, "--port values")?;
        cfg.n_sports = fill_ports(&mut cfg.sports, &self.sports, "--sport values")?;
        cfg.n_dports = fill_ports(&mut cfg.dports, &self.dports, "--dport values")?;
        cfg.n_src = fill_cidrs(&mut cfg.src, &self.src, "--src CIDRs")?;
        cfg.n_dst = fill_cidrs(&mut cfg.dst, &self.dst, "--dst CIDRs")?;
        Ok(cfg)
    }

    /// The same decision in user space, for records that did not come
    /// through the kernel filter (offline reading, tests).
    pub fn matches(&self, sport: u16, dport: u16, src: IpAddr, dst: IpAddr, flags_raw: u16) -> bool {
        self.flags.matches(flags_raw)
            && (self.ports.is_empty() || self.ports.contains(&sport) || self.ports.contains(&dport))
            && (self.sports.is_empty() || self.sports.contains(&sport))
            && (self.dports.is_empty() || self.dports.contains(&dport))
            && (self.src.is_empty() || self.src.iter().any(|c| c.contains(src)))
            && (self.dst.is_empty() || self.dst.iter().any(|c| c.contains(dst)))
    }
}

fn fill_ports(out: &mut [u16], ports: &[u16], what: &'static str) -> Result<u8, FilterError> {
    if ports.len() > out.len() {
        return Err(FilterError::TooMany { what, max: out.len() });
    }
    out[..ports.len()].copy_from_slice(ports);
    Ok(ports.len() as u8)
}

fn fill_cidrs(
    out: &mut [types::tcpscope_cidr],
    cidrs: &[Cidr],
    what: &'static str,
) -> Result<u8, FilterError> {
    if cidrs.len() > out.len() {
        return Err(FilterError::TooMany { what, max: out.len() });
    }
    for (slot, c) in out.iter_mut().zip(cidrs) {
        *slot = c.to_kernel();
    }
    Ok(cidrs.len() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_masks() {
        // Host bits set: refused, naming both readings (as tcpdump does).
        let e = "198.18.7.9/15".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("198.18.0.0/15") && e.contains("198.18.7.9/32"), "{e}");
        let c = Cidr { addr: "198.18.7.9".parse().unwrap(), prefix: 15 };
        let k = c.to_kernel();
        assert_eq!(&k.addr[..4], &[198, 18, 0, 0]);
        assert_eq!(&k.mask[..4], &[255, 254, 0, 0]);
        assert_eq!(k.family, 4);
        assert!(c.contains("198.19.255.1".parse().unwrap()));
        assert!(!c.contains("198.20.0.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));

        let c6: Cidr = "2001:db8::/33".parse().unwrap();
        let k6 = c6.to_kernel();
        assert_eq!(k6.mask[4], 0x80);
        assert_eq!(k6.mask[5], 0);
        assert!(c6.contains("2001:db8:7fff::1".parse().unwrap()));
        assert!(!c6.contains("2001:db8:8000::1".parse().unwrap()));

        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(host.prefix, 128);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().to_kernel().mask, [0; 16]);
    }

    #[test]
    fn mapped_ipv4_is_ipv4_and_flags_cannot_contradict() {
        let c: Cidr = "::ffff:198.18.0.1".parse().unwrap();
        assert_eq!((c.addr, c.prefix), ("198.18.0.1".parse().unwrap(), 32));
        let c: Cidr = "::ffff:198.18.0.0/120".parse().unwrap();
        assert_eq!((c.addr, c.prefix), ("198.18.0.0".parse().unwrap(), 24));
        assert!("::ffff:198.18.0.0/90".parse::<Cidr>().is_err());
        assert!(matches!("SYN,!SYN".parse::<FlagMatch>(), Err(FilterError::FlagBothWays(_))));
        assert!("SYN,!ACK".parse::<FlagMatch>().is_ok());
    }

    #[test]
    fn bad_cidrs_say_why() {
        assert!(matches!("198.18.0.0/33".parse::<Cidr>(), Err(FilterError::PrefixTooLong(_, 33, 32))));
        assert!(matches!("2001:db8::/129".parse::<Cidr>(), Err(FilterError::PrefixTooLong(..))));
        assert!(matches!("300.1.1.1/8".parse::<Cidr>(), Err(FilterError::BadCidr(_))));
        assert!(matches!("10.0.0.0/x".parse::<Cidr>(), Err(FilterError::BadCidr(_))));
        assert!(matches!("".parse::<Cidr>(), Err(FilterError::BadCidr(_))));
        let msg = "1.2.3/8".parse::<Cidr>().unwrap_err().to_string();
        assert!(msg.contains("198.18.0.0/15"), "{msg}");
    }

    #[test]
    fn flags_parse_set_and_clear() {
        let m: FlagMatch = "SYN,!ack".parse().unwrap();
        assert_eq!(m.set, 0x002);
        assert_eq!(m.clear, 0x010);
        assert!(m.matches(0x002));
        assert!(!m.matches(0x012));
        assert!("SYN,BOGUS".parse::<FlagMatch>().is_err());
        assert_eq!("AE".parse::<FlagMatch>().unwrap().set, 0x100);
    }

    #[test]
    fn config_limits_are_enforced() {
        let f = EventFilter { ports: vec![1; MAX_PORTS + 1], ..Default::default() };
        assert!(matches!(f.to_kernel(true), Err(FilterError::TooMany { .. })));
        let f = EventFilter { snaplen: MAX_SNAPLEN + 1, ..Default::default() };
        assert!(matches!(f.to_kernel(true), Err(FilterError::SnaplenTooLarge(_))));
        let f = EventFilter {
            ports: vec![80, 443],
            src: vec!["198.18.0.0/15".parse().unwrap()],
            ..Default::default()
        };
        let cfg = f.to_kernel(true).unwrap();
        assert_eq!((cfg.n_ports, cfg.ports[1], cfg.n_src, cfg.events_enabled), (2, 443, 1, 1));
    }
}
