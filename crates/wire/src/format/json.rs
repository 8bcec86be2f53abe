//! NDJSON output, written straight from the kernel's event structs.
//!
//! The schema is `model::PacketRecord`'s serde form; tcpscope's
//! connection events (`conn::ConnRecord`) are written with the same `Line`
//! (docs/json-schema.md has both) (docs/json-schema.md); these writers produce the same bytes
//! without building the record or allocating, because JSON output is the hot
//! path of `read` (millions of packets a second) and of `conns` (its cost
//! counts against the traced workload: bench conns). The tests below hold
//! each writer and serde byte-for-byte equal.

use std::net::Ipv6Addr;

use crate::model::{
    IPF_DF, IPF_FRAG, IPF_HAS_ID, OPT_MPTCP, OPT_MSS, OPT_OTHER, OPT_SACK, OPT_SACK_PERM, OPT_TFO, OPT_TS,
    OPT_WSCALE,
};
use crate::names::{malformed_name, FLAG_NAMES};
use crate::types::{self, packet_event};

/// Longest line: fixed keys and numbers (< 1 KiB), two IPv6 addresses,
/// 256 option kinds at 4 bytes, and 2 hex digits per payload byte.
const MAX_LINE: usize = 2048 + 2 * types::tcpscope_limits::TCPSCOPE_MAX_SNAPLEN.0 as usize;

/// A line being built in a fixed buffer. Constant-length pieces compile to
/// plain stores instead of memcpy calls with capacity checks, which is most
/// of the cost of a Vec-based writer at millions of lines a second.
pub struct Line {
    buf: Box<[u8; MAX_LINE]>,
    len: usize,
}

impl Line {
    #[inline(always)]
    pub fn put(&mut self, s: &[u8]) {
        // Cannot overflow: MAX_LINE bounds every line (see above); a bug
        // here would panic on the slice bound, not write out of bounds.
        self.buf[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }
    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }
    /// Decimal digits of `n`, two at a time from a table, written in place:
    /// itoa formats into its own buffer, and copying out its variable-length
    /// result costs a memcpy call per number, which measured a third of
    /// `conns --json`'s time (about 25 numbers per line).
    #[inline(always)]
    pub fn num<T: Into<u64>>(&mut self, n: T) {
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
              2021222324252627282930313233343536373839\
              4041424344454647484950515253545556575859\
              6061626364656667686970717273747576777879\
              8081828384858687888990919293949596979899";
        let mut n: u64 = n.into();
        let end = self.len + n.checked_ilog10().unwrap_or(0) as usize + 1;
        let mut pos = end;
        while n >= 100 {
            let d = (n % 100) as usize * 2;
            n /= 100;
            pos -= 2;
            self.buf[pos..pos + 2].copy_from_slice(&PAIRS[d..d + 2]);
        }
        if n >= 10 {
            let d = n as usize * 2;
            self.buf[pos - 2..pos].copy_from_slice(&PAIRS[d..d + 2]);
        } else {
            self.buf[pos - 1] = b'0' + n as u8;
        }
        self.len = end;
    }
    /// `key` and a plain-ASCII string that needs no escaping, quoted.
    #[inline(always)]
    pub fn quoted(&mut self, key: &[u8], s: &str) {
        self.put(key);
        self.byte(b'"');
        self.put(s.as_bytes());
        self.byte(b'"');
    }
    /// `key` (with its separator, quotes and colon) and then the number.
    #[inline(always)]
    pub fn field<T: Into<u64>>(&mut self, key: &[u8], n: T) {
        self.put(key);
        self.num(n);
    }
}

pub fn ipv4(out: &mut Line, a: &[u8; 16]) {
    out.byte(b'"');
    ipv4_bare(out, a);
    out.byte(b'"');
}

/// Each octet's digits and a dot ("0." to "255."), and how many of those
/// bytes are the digits: an address is then four 4-byte copies, not a
/// division per digit (addresses were a tenth of `conns --json`'s time).
const OCTETS: [([u8; 4], u8); 256] = {
    let mut table = [([0u8; 4], 0u8); 256];
    let mut n = 0;
    while n < 256 {
        let (digits, len) = if n >= 100 {
            ([b'0' + (n / 100) as u8, b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8], 3)
        } else if n >= 10 {
            ([b'0' + (n / 10) as u8, b'0' + (n % 10) as u8, 0], 2)
        } else {
            ([b'0' + n as u8, 0, 0], 1)
        };
        let mut text = [b'.'; 4];
        let mut i = 0;
        while i < len {
            text[i] = digits[i];
            i += 1;
        }
        table[n] = (text, len as u8);
        n += 1;
    }
    table
};

pub fn ipv4_bare(out: &mut Line, a: &[u8; 16]) {
    for (i, octet) in a[..4].iter().enumerate() {
        let (text, digits) = &OCTETS[usize::from(*octet)];
        // All four bytes, then keep the digits and (but after the last
        // octet) the dot: the spare bytes are overwritten by what follows.
        out.buf[out.len..out.len + 4].copy_from_slice(text);
        out.len += usize::from(*digits) + usize::from(i < 3);
    }
}

pub fn ipv6(out: &mut Line, a: &[u8; 16]) {
    use std::fmt::Write;
    let mut s = String::with_capacity(48);
    let _ = write!(s, "\"{}\"", Ipv6Addr::from(*a));
    out.put(s.as_bytes());
}

/// A JSON string: as is when it needs no escaping (the common case), else
/// escaped by serde_json.
pub fn string(out: &mut Line, s: &str) {
    if !plain_string(out, s.as_bytes()) {
        out.put(serde_json::to_string(s).unwrap_or_default().as_bytes());
    }
}

/// Bytes that are printable ASCII with nothing to escape, quoted; false
/// (nothing written) otherwise.
#[inline(always)]
pub fn plain_string(out: &mut Line, b: &[u8]) -> bool {
    if !b.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        return false;
    }
    out.byte(b'"');
    out.put(b);
    out.byte(b'"');
    true
}

const HEX: &[u8; 16] = b"0123456789abcdef";

thread_local! {
    static LINE: std::cell::RefCell<Line> =
        std::cell::RefCell::new(Line { buf: Box::new([0; MAX_LINE]), len: 0 });
}

/// Appends what `fill` writes into the thread's line buffer to `out`: the
/// one way a writer here or in another crate (tcpscope's connection
/// events) builds a line.
pub fn write_with(out: &mut Vec<u8>, fill: impl FnOnce(&mut Line)) {
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.len = 0;
        fill(&mut line);
        out.extend_from_slice(&line.buf[..line.len]);
    })
}

/// Appends one JSON object (no newline) for `ev`.
pub fn write_event(
    out: &mut Vec<u8>,
    ev: &packet_event,
    ts_ns: u64,
    payload: Option<&[u8]>,
    frame: Option<u64>,
    conn: Option<&str>,
) {
    write_with(out, |line| fill(line, ev, ts_ns, payload, frame, conn))
}

fn fill(
    out: &mut Line,
    ev: &packet_event,
    ts_ns: u64,
    payload: Option<&[u8]>,
    frame: Option<u64>,
    conn: Option<&str>,
) {
    let has = |bit: u32| u32::from(ev.opt_present) & bit != 0;
    let ipf = |bit: u32| u32::from(ev.ip_flags) & bit != 0;
    out.field(b"{\"ts_ns\":", ts_ns);
    out.field(b",\"ifindex\":", ev.ifindex);
    out.put(match u32::from(ev.hook) {
        h if h == types::tcpscope_hook::TCPSCOPE_HOOK_XDP.0 => b",\"hook\":\"xdp\",\"vlan\":[",
        h if h == types::tcpscope_hook::TCPSCOPE_HOOK_TC.0 => b",\"hook\":\"tc\",\"vlan\":[",
        _ => b",\"hook\":\"pcap\",\"vlan\":[",
    });
    for (i, v) in ev.vlan[..usize::from(ev.vlan_count).min(ev.vlan.len())].iter().enumerate() {
        if i > 0 {
            out.byte(b',');
        }
        out.num(*v);
    }
    out.field(b"],\"ip_version\":", ev.ip_version);
    out.put(b",\"src\":");
    if ev.ip_version == 4 {
        ipv4(out, &ev.src);
        out.put(b",\"dst\":");
        ipv4(out, &ev.dst);
    } else {
        ipv6(out, &ev.src);
        out.put(b",\"dst\":");
        ipv6(out, &ev.dst);
    }
    out.field(b",\"ttl\":", ev.ttl);
    out.field(b",\"ip_len\":", ev.ip_len);
    out.put(b",\"ip_id\":");
    if ipf(IPF_HAS_ID) {
        out.num(ev.ip_id);
    } else {
        out.put(b"null");
    }
    out.field(b",\"dscp\":", ev.dscp);
    out.field(b",\"ecn\":", ev.ecn);
    out.put(match (ev.ip_version == 4, ipf(IPF_DF)) {
        (false, _) => b",\"df\":null",
        (true, true) => b",\"df\":true",
        (true, false) => b",\"df\":false",
    });
    out.put(if ipf(IPF_FRAG) { b",\"frag\":true,\"sport\":" } else { b",\"frag\":false,\"sport\":" });
    out.num(ev.sport);
    out.field(b",\"dport\":", ev.dport);
    out.field(b",\"seq\":", ev.seq);
    out.field(b",\"ack\":", ev.ack);
    out.field(b",\"hdr_len\":", ev.hdr_len);
    out.field(b",\"flags_raw\":", ev.flags_raw);
    out.put(b",\"flags\":[");
    let mut first = true;
    for (bit, name) in FLAG_NAMES.iter().enumerate() {
        if ev.flags_raw & (1 << bit) != 0 {
            if !first {
                out.byte(b',');
            }
            first = false;
            out.byte(b'"');
            out.put(name.as_bytes());
            out.byte(b'"');
        }
    }
    out.field(b"],\"window\":", ev.window);
    out.field(b",\"checksum\":", ev.checksum);
    out.field(b",\"urgent_ptr\":", ev.urgent_ptr);
    out.field(b",\"payload_len\":", ev.payload_len);
    out.put(b",\"options\":{");
    let mut sep = false;
    let mut key = |out: &mut Line, k: &[u8]| {
        if sep {
            out.byte(b',');
        }
        sep = true;
        out.put(k);
    };
    if has(OPT_MSS) {
        key(out, b"\"mss\":");
        out.num(ev.mss);
    }
    if has(OPT_WSCALE) {
        key(out, b"\"wscale\":");
        out.num(ev.wscale);
    }
    if has(OPT_SACK_PERM) {
        key(out, b"\"sack_permitted\":true");
    }
    let nsack = usize::from(ev.sack_count).min(ev.sack.len());
    if has(OPT_SACK) && nsack > 0 {
        key(out, b"\"sack\":[");
        for (i, [l, r]) in ev.sack[..nsack].iter().enumerate() {
            if i > 0 {
                out.byte(b',');
            }
            out.byte(b'[');
            out.num(*l);
            out.byte(b',');
            out.num(*r);
            out.byte(b']');
        }
        out.byte(b']');
    }
    if has(OPT_TS) {
        key(out, b"\"ts_val\":");
        out.num(ev.ts_val);
        out.field(b",\"ts_ecr\":", ev.ts_ecr);
    }
    if has(OPT_OTHER) && ev.other_kinds.iter().any(|b| *b != 0) {
        key(out, b"\"other\":[");
        let mut first = true;
        for (byte, bits) in ev.other_kinds.iter().enumerate() {
            for bit in 0..8 {
                if bits & (1 << bit) != 0 {
                    if !first {
                        out.byte(b',');
                    }
                    first = false;
                    out.num((byte * 8 + bit) as u64);
                }
            }
        }
        out.byte(b']');
    }
    if has(OPT_MPTCP) {
        key(out, b"\"mptcp_subtype\":");
        out.num(ev.mptcp_subtype);
    }
    if has(OPT_TFO) {
        key(out, b"\"tfo_cookie_len\":");
        out.num(ev.tfo_cookie_len);
    }
    out.byte(b'}');
    if let Some(p) = payload {
        out.put(b",\"payload_hex\":\"");
        for b in p {
            out.byte(HEX[usize::from(b >> 4)]);
            out.byte(HEX[usize::from(b & 0xf)]);
        }
        out.byte(b'"');
    }
    if ev.malformed != 0 {
        out.put(b",\"malformed\":\"");
        out.put(malformed_name(ev.malformed).as_bytes());
        out.byte(b'"');
    }
    if let Some(f) = frame {
        out.field(b",\"frame\":", f);
    }
    if let Some(c) = conn {
        // Digits, dots, colons, brackets, slashes and a dash: no escaping.
        out.put(b",\"conn\":\"");
        out.put(c.as_bytes());
        out.byte(b'"');
    }
    out.byte(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{self, LinkType, Outcome};
    use crate::model::PacketRecord;

    /// Every digit count, and both sides of every power of ten.
    #[test]
    fn numbers_as_decimal() {
        let mut values = vec![0u64, 1, 9, 10, 11, 99, 100, 101, u64::from(u32::MAX), u64::MAX];
        for k in 1..=19 {
            let p = 10u64.pow(k);
            values.extend([p - 1, p, p + 1, p + p / 2]);
        }
        let mut line = Line { buf: Box::new([0; MAX_LINE]), len: 0 };
        for v in values {
            line.len = 0;
            line.num(v);
            assert_eq!(std::str::from_utf8(&line.buf[..line.len]).unwrap(), v.to_string());
        }
    }

    /// Every octet value in every position, as std writes the address.
    #[test]
    fn ipv4_addresses_as_dotted_quads() {
        let mut line = Line { buf: Box::new([0; MAX_LINE]), len: 0 };
        for n in 0..=255u8 {
            for a in [[n, 0, 0, 0], [0, n, 0, 0], [1, 22, n, 3], [255, 0, 100, n], [n; 4]] {
                let mut raw = [0u8; 16];
                raw[..4].copy_from_slice(&a);
                line.len = 0;
                ipv4(&mut line, &raw);
                let want = format!("\"{}\"", std::net::Ipv4Addr::from(a));
                assert_eq!(std::str::from_utf8(&line.buf[..line.len]).unwrap(), want);
            }
        }
    }

    /// The fast writer and serde agree byte for byte, on every corpus packet
    /// and on crafted ones with every optional key.
    #[test]
    fn same_bytes_as_serde() {
        let mut frames: Vec<Vec<u8>> = vec![
            crate::testpkt::syn_v4(),
            crate::testpkt::syn_v6(),
            crate::testpkt::syn_vlan(),
            crate::testpkt::syn_v4_windows_options(),
        ];
        // The shared corpus (next to the project) when it is there: `cargo
        // test --lib` must also pass in a clone without it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/tcpdump");
        let corpus = dir.is_dir();
        let mut compared = 0;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(file) = std::fs::File::open(entry.path()) else { continue };
            let Ok(mut cap) = crate::capture::Capture::open(file) else { continue };
            while let Some(Ok(f)) = cap.next_frame() {
                if f.link == LinkType::Ethernet {
                    frames.push(f.data.to_vec());
                }
            }
        }
        let mut ev = packet_event::default();
        for (i, f) in frames.iter().enumerate() {
            if decode::decode(LinkType::Ethernet, f, f.len() as u32, &mut ev) != Outcome::Tcp {
                continue;
            }
            ev.ifindex = i as u32;
            let payload = (i % 2 == 0).then_some(&f[..f.len().min(5)]);
            let frame = (i % 3 == 0).then_some(i as u64 + 1);
            let mut rec = PacketRecord::from_event(&ev, 1_700_000_000_000_000_000 + i as u64, payload);
            rec.frame = frame;
            let conn = (i % 5 == 0).then(|| format!("4026531840/198.18.0.2:{i}-198.18.0.1:1"));
            rec.conn = conn.clone();
            let mut fast = Vec::new();
            write_event(&mut fast, &ev, rec.ts_ns, payload, frame, conn.as_deref());
            assert_eq!(String::from_utf8(fast).unwrap(), serde_json::to_string(&rec).unwrap(), "frame {i}");
            compared += 1;
        }
        assert!(compared >= 4 && (!corpus || compared > 100), "{compared}");
    }
}
