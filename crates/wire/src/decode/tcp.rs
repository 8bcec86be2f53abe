//! TCP header and options, by the rules of bpf/parse_kern.h.

use super::{Bytes, Outcome};
use crate::model::{OPT_MPTCP, OPT_MSS, OPT_OTHER, OPT_SACK, OPT_SACK_PERM, OPT_TFO, OPT_TS, OPT_WSCALE};
use crate::types::{packet_event, tcpscope_malformed as M};

/// Byte offsets in the fixed TCP header.
mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DOFF_FLAGS: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

pub const HEADER_LEN: usize = 20;
pub const MAX_OPTIONS_LEN: usize = 40;

pub mod kind {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WSCALE: u8 = 3;
    pub const SACK_PERM: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMP: u8 = 8;
    pub const MD5: u8 = 19;
    pub const AO: u8 = 29;
    pub const MPTCP: u8 = 30;
    pub const FASTOPEN: u8 = 34;
    pub const ACCECN0: u8 = 172;
    pub const ACCECN1: u8 = 174;
    pub const EXP: u8 = 254;
}

/// Experimental-option id of Fast Open (RFC 7413, kind 254).
const TFO_EXP_MAGIC: [u8; 2] = [0xF9, 0x89];

/// A short name for an option kind, for text output.
pub fn option_name(k: u8) -> Option<&'static str> {
    Some(match k {
        kind::MD5 => "md5",
        kind::AO => "tcp-ao",
        kind::MPTCP => "mptcp",
        kind::FASTOPEN => "tfo",
        kind::ACCECN0 => "accecn0",
        kind::ACCECN1 => "accecn1",
        kind::EXP => "exp",
        27 => "quick-start",
        28 => "user-timeout",
        _ => return None,
    })
}

/// One option as it sits in the header: its kind and the bytes after the
/// kind and length bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOption<'a> {
    pub kind: u8,
    pub data: &'a [u8],
}

/// Iterates the options of a TCP header. Yields `Err(reason)` once on a bad
/// length and then stops; stops at EOL. NOPs are skipped. Bounded by the
/// option bytes: every step consumes at least one.
pub struct Options<'a> {
    bytes: &'a [u8],
    off: usize,
    done: bool,
}

impl<'a> Options<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Options { bytes, off: 0, done: false }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<RawOption<'a>, M>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let kind = *self.bytes.get(self.off)?;
            match kind {
                kind::EOL => self.done = true,
                kind::NOP => self.off += 1,
                _ => {
                    let Some(&len) = self.bytes.get(self.off + 1) else {
                        self.done = true;
                        return Some(Err(M::MALFORMED_TCP_OPT_OVERRUN));
                    };
                    let len = usize::from(len);
                    if len < 2 {
                        self.done = true;
                        return Some(Err(M::MALFORMED_TCP_OPT_BAD_LEN));
                    }
                    let Some(data) = self.bytes.get(self.off + 2..self.off + len) else {
                        self.done = true;
                        return Some(Err(M::MALFORMED_TCP_OPT_OVERRUN));
                    };
                    self.off += len;
                    return Some(Ok(RawOption { kind, data }));
                }
            }
        }
        None
    }
}

fn be32(d: &[u8], at: usize) -> u32 {
    Bytes(d).u32(at).unwrap_or(0)
}

/// Records one option in the event; Err for a known option of the wrong size.
fn apply(o: RawOption<'_>, ev: &mut packet_event) -> Result<(), M> {
    let d = o.data;
    let bad = Err(M::MALFORMED_TCP_OPT_BAD_SIZE);
    match o.kind {
        kind::MSS => {
            let [a, b] = d else { return bad };
            ev.mss = u16::from_be_bytes([*a, *b]);
            ev.opt_present |= OPT_MSS as u8;
        }
        kind::WSCALE => {
            let [w] = d else { return bad };
            ev.wscale = *w;
            ev.opt_present |= OPT_WSCALE as u8;
        }
        kind::SACK_PERM => {
            if !d.is_empty() {
                return bad;
            }
            ev.opt_present |= OPT_SACK_PERM as u8;
        }
        kind::TIMESTAMP => {
            if d.len() != 8 {
                return bad;
            }
            ev.ts_val = be32(d, 0);
            ev.ts_ecr = be32(d, 4);
            ev.opt_present |= OPT_TS as u8;
        }
        kind::SACK => {
            if d.is_empty() || d.len() % 8 != 0 {
                return bad;
            }
            let n = d.len() / 8;
            for (i, blk) in d.chunks_exact(8).take(ev.sack.len()).enumerate() {
                ev.sack[i] = [be32(blk, 0), be32(blk, 4)];
            }
            ev.sack_count = n as u8;
            ev.opt_present |= OPT_SACK as u8;
        }
        k => {
            ev.other_kinds[usize::from(k >> 3)] |= 1 << (k & 7);
            ev.opt_present |= OPT_OTHER as u8;
            if k == kind::MPTCP && !d.is_empty() {
                ev.mptcp_subtype = d[0] >> 4;
                ev.opt_present |= OPT_MPTCP as u8;
            } else if k == kind::FASTOPEN {
                ev.tfo_cookie_len = d.len() as u8;
                ev.opt_present |= OPT_TFO as u8;
            } else if k == kind::EXP && d.len() >= 2 && d[..2] == TFO_EXP_MAGIC {
                ev.tfo_cookie_len = (d.len() - 2) as u8;
                ev.opt_present |= OPT_TFO as u8;
            }
        }
    }
    Ok(())
}

/// The TCP header at `at`; `ip_payload_len` is what the IP layer says
/// follows it.
pub(super) fn decode(b: Bytes<'_>, at: usize, ip_payload_len: u32, ev: &mut packet_event) -> Outcome {
    let t = b.rest(at);
    if t.len() < HEADER_LEN {
        ev.malformed = M::MALFORMED_TCP_TRUNCATED.0 as u8;
        return Outcome::Malformed(ev.malformed);
    }
    let get16 = |f| t.u16(f).unwrap_or(0);
    ev.sport = get16(field::SRC_PORT);
    ev.dport = get16(field::DST_PORT);
    ev.seq = t.u32(field::SEQ).unwrap_or(0);
    ev.ack = t.u32(field::ACK).unwrap_or(0);
    let doff_byte = t.u8(field::DOFF_FLAGS).unwrap_or(0);
    ev.flags_raw = (u16::from(doff_byte & 0x0f) << 8) | u16::from(t.u8(field::FLAGS).unwrap_or(0));
    ev.window = get16(field::WINDOW);
    ev.checksum = get16(field::CHECKSUM);
    ev.urgent_ptr = get16(field::URGENT);
    let hlen = usize::from(doff_byte >> 4) * 4;
    ev.hdr_len = hlen as u8;
    if hlen < HEADER_LEN {
        ev.malformed = M::MALFORMED_TCP_BAD_DOFF.0 as u8;
        return Outcome::Tcp;
    }
    if hlen as u32 > ip_payload_len {
        ev.malformed = M::MALFORMED_TCP_BAD_IP_LEN.0 as u8;
        return Outcome::Tcp;
    }
    ev.payload_len = ip_payload_len - hlen as u32;
    let Some(opts) = t.slice(HEADER_LEN, hlen - HEADER_LEN) else {
        ev.malformed = M::MALFORMED_TCP_HDR_TRUNCATED.0 as u8;
        return Outcome::Tcp;
    };
    for o in Options::new(opts) {
        if let Err(reason) = o.and_then(|o| apply(o, ev)) {
            ev.malformed = reason.0 as u8;
            return Outcome::Tcp;
        }
    }
    // As the kernel: a payload offset only for a well-formed header.
    ev.payload_off = (at + hlen) as u16;
    Outcome::Tcp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bytes: &[u8]) -> (packet_event, u8) {
        let mut ev = packet_event::default();
        let mut reason = 0;
        for o in Options::new(bytes) {
            if let Err(r) = o.and_then(|o| apply(o, &mut ev)) {
                reason = r.0 as u8;
                break;
            }
        }
        (ev, reason)
    }

    #[test]
    fn linux_syn_options() {
        // mss 1460, sackOK, TS 1/0, nop, wscale 7 (hand-written bytes)
        let b = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        let (ev, r) = opts(&b);
        assert_eq!(r, 0);
        assert_eq!((ev.mss, ev.wscale, ev.ts_val, ev.ts_ecr), (1460, 7, 1, 0));
        assert_eq!(ev.opt_present as u32, OPT_MSS | OPT_SACK_PERM | OPT_TS | OPT_WSCALE);
    }

    #[test]
    fn bad_lengths_stop_with_a_reason() {
        assert_eq!(opts(&[99, 1]).1, M::MALFORMED_TCP_OPT_BAD_LEN.0 as u8);
        assert_eq!(opts(&[99, 0, 0, 0]).1, M::MALFORMED_TCP_OPT_BAD_LEN.0 as u8);
        assert_eq!(opts(&[1, 1, 1, 99]).1, M::MALFORMED_TCP_OPT_OVERRUN.0 as u8);
        assert_eq!(opts(&[99, 9, 0, 0]).1, M::MALFORMED_TCP_OPT_OVERRUN.0 as u8);
        assert_eq!(opts(&[2, 5, 0, 0, 0]).1, M::MALFORMED_TCP_OPT_BAD_SIZE.0 as u8);
        assert_eq!(opts(&[5, 9, 0, 0, 0, 0, 0, 0, 0]).1, M::MALFORMED_TCP_OPT_BAD_SIZE.0 as u8);
        // EOL ends parsing: garbage after it is padding.
        assert_eq!(opts(&[0, 99, 1, 0]).1, 0);
        // Options before the bad one are kept.
        let (ev, r) = opts(&[2, 4, 0, 100, 99, 1]);
        assert_eq!((ev.mss, r), (100, M::MALFORMED_TCP_OPT_BAD_LEN.0 as u8));
    }

    #[test]
    fn mptcp_tfo_and_unknown_kinds() {
        let (ev, _) = opts(&[30, 4, 0x20, 0x01]); // MPTCP DSS (subtype 2)
        assert_eq!((ev.mptcp_subtype, ev.opt_present as u32 & OPT_MPTCP), (2, OPT_MPTCP));
        let (ev, _) = opts(&[254, 8, 0xf9, 0x89, 1, 2, 3, 4]); // experimental TFO
        assert_eq!(ev.tfo_cookie_len, 4);
        let (ev, _) = opts(&[34, 10, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(ev.tfo_cookie_len, 8);
        let (ev, _) = opts(&[254, 4, 0x12, 0x34]); // other experiment: not TFO
        assert_eq!(ev.opt_present as u32 & OPT_TFO, 0);
        assert_eq!(ev.other_kinds[254 / 8], 1 << (254 % 8));
    }
}
