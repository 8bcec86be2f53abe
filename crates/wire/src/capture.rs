//! Streaming reader of pcap and pcapng capture files, from a file or a pipe,
//! in constant memory: one record at a time, in one reused buffer.
//!
//! Hand-written on purpose, after trying the pcap-file crate (2.0): it
//! rejects every record whose wire length exceeds the file's snaplen (that
//! is, every packet of a `tcpdump -s 96` capture), ignores pcapng's
//! if_tsresol, and grows its buffer to whatever length a corrupt header
//! claims. Here a record larger than [`MAX_RECORD`] is an error, not an
//! allocation. (pcap-file's writer is fine and `output::pcapng` uses it.)

use std::io::{self, Read};

use anyhow::{bail, Context, Result};

use crate::decode::LinkType;

/// Largest record accepted: bigger than any real snaplen (256 KiB) plus
/// block overhead; a larger length means a corrupt file.
pub const MAX_RECORD: usize = 1 << 20;

/// One captured frame.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Capture time, ns since the Unix epoch.
    pub ts_ns: u64,
    pub link: LinkType,
    /// The captured bytes (possibly cut short by the capture's snaplen).
    pub data: &'a [u8],
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// Interface number in the file (pcapng), 0 for pcap.
    pub iface: u32,
    /// Its name (pcapng if_name), or "if<N>".
    pub ifname: &'a str,
}

/// A pcapng interface: its link type, time unit and name.
#[derive(Debug, Clone)]
pub struct Interface {
    pub link: LinkType,
    /// Timestamp units per second (if_tsresol; default microseconds).
    pub units_per_sec: u64,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let x = [b.get(at).copied().unwrap_or(0), b.get(at + 1).copied().unwrap_or(0)];
        match self {
            Endian::Little => u16::from_le_bytes(x),
            Endian::Big => u16::from_be_bytes(x),
        }
    }
    fn u32(self, b: &[u8], at: usize) -> u32 {
        let mut x = [0u8; 4];
        for (i, v) in x.iter_mut().enumerate() {
            *v = b.get(at + i).copied().unwrap_or(0);
        }
        match self {
            Endian::Little => u32::from_le_bytes(x),
            Endian::Big => u32::from_be_bytes(x),
        }
    }
}

enum Format {
    Pcap { endian: Endian, link: LinkType, nanos: bool },
    PcapNg { endian: Endian, interfaces: Vec<Interface> },
}

/// An open capture.
pub struct Capture<R: Read> {
    input: R,
    format: Format,
    /// The current record; after next_*, exactly the frame's bytes.
    buf: Vec<u8>,
    /// The current frame's metadata.
    meta: Meta,
    records: u64,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    ts_ns: u64,
    orig_len: u32,
    iface: u32,
    link: LinkType,
}

const PCAPNG_SHB: u32 = 0x0A0D_0D0A;
const PCAPNG_BOM: u32 = 0x1A2B_3C4D;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_PB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;
const OPT_IF_NAME: u16 = 2;
const OPT_IF_TSRESOL: u16 = 9;

fn units_per_sec(tsresol: u8) -> u64 {
    // High bit set: a power of two; else a power of ten. Clamp absurd values.
    if tsresol & 0x80 != 0 {
        1u64 << u32::from(tsresol & 0x7f).min(63)
    } else {
        10u64.pow(u32::from(tsresol).min(19))
    }
}

/// ns from `raw` units of 1/units_per_sec seconds, saturating.
fn to_ns(raw: u64, units_per_sec: u64) -> u64 {
    let secs = raw / units_per_sec;
    let frac = raw % units_per_sec;
    secs.saturating_mul(1_000_000_000)
        .saturating_add((u128::from(frac) * 1_000_000_000 / u128::from(units_per_sec)) as u64)
}

/// Reads exactly `buf.len()` bytes; Ok(false) on a clean end of input
/// before the first byte.
/// Reads all of `buf`, which `what` names: the end of the input anywhere
/// inside it is a truncated file, said as such.
fn read_all<R: Read>(input: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    match read_full(input, buf) {
        Ok(true) => Ok(()),
        Ok(false) => bail!("the capture is cut short: {what} is missing (truncated file?)"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            bail!("the capture is cut short inside {what} (truncated file?)")
        }
        Err(e) => Err(e).with_context(|| format!("reading {what}")),
    }
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "capture file ends mid-record (truncated file?)",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl<R: Read> Capture<R> {
    /// Opens a capture, telling pcap from pcapng by its first bytes.
    pub fn open(mut input: R) -> Result<Self> {
        let mut head = [0u8; 4];
        if !read_full(&mut input, &mut head).context("reading the capture")? {
            bail!("empty input: expected a pcap or pcapng capture");
        }
        let format = match head {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => {
                let endian = if head[0] == 0xa1 { Endian::Big } else { Endian::Little };
                let nanos = head == [0x4d, 0x3c, 0xb2, 0xa1] || head == [0xa1, 0xb2, 0x3c, 0x4d];
                let mut rest = [0u8; 20];
                read_all(&mut input, &mut rest, "the pcap file header")?;
                // Lower 16 bits: the link type; upper bits: FCS information.
                let link = LinkType::from_linktype(endian.u32(&rest, 16) & 0xffff);
                Format::Pcap { endian, link, nanos }
            }
            [0x0a, 0x0d, 0x0d, 0x0a] => Format::PcapNg { endian: Endian::Little, interfaces: Vec::new() },
            _ => bail!(
                "not a pcap or pcapng file (it starts with {head:02x?}): tcpscope reads libpcap and pcapng captures"
            ),
        };
        let meta = Meta { ts_ns: 0, orig_len: 0, iface: 0, link: LinkType::Ethernet };
        let mut cap = Capture { input, format, buf: Vec::with_capacity(1 << 16), meta, records: 0 };
        if let Format::PcapNg { .. } = cap.format {
            cap.read_section_header(PCAPNG_SHB)?;
        }
        Ok(cap)
    }

    /// The pcapng interfaces seen so far (empty for pcap).
    pub fn interfaces(&self) -> &[Interface] {
        match &self.format {
            Format::PcapNg { interfaces, .. } => interfaces,
            Format::Pcap { .. } => &[],
        }
    }

    /// Reads the rest of a section header block whose type was just read.
    fn read_section_header(&mut self, _type: u32) -> Result<()> {
        let mut lens = [0u8; 8];
        read_all(&mut self.input, &mut lens, "a pcapng section header")?;
        let endian = match u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]) {
            PCAPNG_BOM => Endian::Little,
            bom if bom.swap_bytes() == PCAPNG_BOM => Endian::Big,
            _ => bail!("corrupt pcapng section header: bad byte-order magic"),
        };
        let total = endian.u32(&lens, 0) as usize;
        if !(28..=MAX_RECORD).contains(&total) || total % 4 != 0 {
            bail!("corrupt pcapng section header: block length {total}");
        }
        self.buf.resize(total - 12, 0);
        read_all(&mut self.input, &mut self.buf, "a pcapng section header")?;
        self.format = Format::PcapNg { endian, interfaces: Vec::new() };
        Ok(())
    }

    /// The next frame, or None at the end of the file.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>>> {
        let r = match self.format {
            Format::Pcap { .. } => self.next_pcap(),
            Format::PcapNg { .. } => self.next_pcapng(),
        };
        match r {
            Ok(Some(())) => {}
            Ok(None) => return None,
            Err(e) => return Some(Err(e.context(format!("after {} records", self.records)))),
        }
        self.records += 1;
        Some(Ok(self.frame()))
    }

    /// The frame the last next_* call left in `buf`.
    fn frame(&self) -> Frame<'_> {
        let m = self.meta;
        let ifname = self.interfaces().get(m.iface as usize).map_or("if0", |i| i.name.as_str());
        Frame { ts_ns: m.ts_ns, link: m.link, data: &self.buf, orig_len: m.orig_len, iface: m.iface, ifname }
    }

    fn next_pcap(&mut self) -> Result<Option<()>> {
        let Format::Pcap { endian, link, nanos } = self.format else { unreachable!() };
        let mut hdr = [0u8; 16];
        if !read_full(&mut self.input, &mut hdr)? {
            return Ok(None);
        }
        let (sec, frac) = (endian.u32(&hdr, 0), endian.u32(&hdr, 4));
        let (incl, orig) = (endian.u32(&hdr, 8) as usize, endian.u32(&hdr, 12));
        if incl > MAX_RECORD {
            bail!("corrupt pcap record: {incl} captured bytes");
        }
        self.buf.resize(incl, 0);
        read_all(&mut self.input, &mut self.buf, "a packet's bytes")?;
        let ts =
            u64::from(sec) * 1_000_000_000 + if nanos { u64::from(frac) } else { u64::from(frac) * 1000 };
        self.meta = Meta { ts_ns: ts, orig_len: orig.max(incl as u32), iface: 0, link };
        Ok(Some(()))
    }

    fn next_pcapng(&mut self) -> Result<Option<()>> {
        loop {
            let mut hdr = [0u8; 8];
            if !read_full(&mut self.input, &mut hdr)? {
                return Ok(None);
            }
            let Format::PcapNg { endian, .. } = self.format else { unreachable!() };
            let btype = endian.u32(&hdr, 0);
            if btype == PCAPNG_SHB {
                // A new section: its own byte order and interfaces.
                self.read_section_header(btype)?;
                continue;
            }
            let total = endian.u32(&hdr, 4) as usize;
            if !(12..=MAX_RECORD).contains(&total) || total % 4 != 0 {
                bail!("corrupt pcapng block: length {total}");
            }
            self.buf.resize(total - 8, 0);
            read_all(&mut self.input, &mut self.buf, "a pcapng block")?;
            let body_len = total - 12;
            let Format::PcapNg { interfaces, .. } = &mut self.format else { unreachable!() };
            let b = &self.buf[..body_len];
            match btype {
                PCAPNG_IDB => interfaces.push(parse_idb(endian, b, interfaces.len())),
                PCAPNG_EPB | PCAPNG_PB => {
                    let (iface, ts_hi, ts_lo, cap, orig) = if btype == PCAPNG_EPB {
                        (
                            endian.u32(b, 0),
                            endian.u32(b, 4),
                            endian.u32(b, 8),
                            endian.u32(b, 12),
                            endian.u32(b, 16),
                        )
                    } else {
                        (
                            u32::from(endian.u16(b, 0)),
                            endian.u32(b, 4),
                            endian.u32(b, 8),
                            endian.u32(b, 12),
                            endian.u32(b, 16),
                        )
                    };
                    let Some(i) = interfaces.get(iface as usize) else {
                        bail!("corrupt pcapng: a packet refers to interface {iface}, which the file never described");
                    };
                    let cap = cap as usize;
                    if 20 + cap > body_len {
                        bail!("corrupt pcapng packet block: {cap} captured bytes in a {body_len}-byte block");
                    }
                    let ts = to_ns((u64::from(ts_hi) << 32) | u64::from(ts_lo), i.units_per_sec);
                    let link = i.link;
                    self.buf.copy_within(20..20 + cap, 0);
                    self.buf.truncate(cap);
                    self.meta = Meta { ts_ns: ts, orig_len: orig.max(cap as u32), iface, link };
                    return Ok(Some(()));
                }
                PCAPNG_SPB => {
                    let orig = endian.u32(b, 0);
                    let link = interfaces.first().map_or(LinkType::Ethernet, |i| i.link);
                    let cap = (body_len - 4).min(orig as usize);
                    self.buf.copy_within(4..4 + cap, 0);
                    self.buf.truncate(cap);
                    self.meta = Meta { ts_ns: 0, orig_len: orig, iface: 0, link };
                    return Ok(Some(()));
                }
                _ => {} // statistics, name resolution, custom...: not packets
            }
        }
    }
}

fn parse_idb(endian: Endian, b: &[u8], index: usize) -> Interface {
    let mut iface = Interface {
        link: LinkType::from_linktype(u32::from(endian.u16(b, 0))),
        units_per_sec: 1_000_000,
        name: format!("if{index}"),
    };
    let mut off = 8;
    // Options: code, length, value padded to 4 bytes; bounded by the body.
    while off + 4 <= b.len() {
        let (code, len) = (endian.u16(b, off), usize::from(endian.u16(b, off + 2)));
        let Some(v) = b.get(off + 4..off + 4 + len) else {
            break;
        };
        match code {
            0 => break,
            OPT_IF_TSRESOL if len == 1 => iface.units_per_sec = units_per_sec(v[0]),
            OPT_IF_NAME => iface.name = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
        off += 4 + len.div_ceil(4) * 4;
    }
    iface
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_units() {
        assert_eq!(units_per_sec(6), 1_000_000);
        assert_eq!(units_per_sec(9), 1_000_000_000);
        assert_eq!(units_per_sec(0x80 | 10), 1024);
        assert_eq!(to_ns(1_500_000, 1_000_000), 1_500_000_000);
        assert_eq!(to_ns(1536, 1024), 1_500_000_000);
        assert_eq!(to_ns(u64::MAX, 1), u64::MAX); // saturates, no panic
    }

    #[test]
    fn rejects_what_is_not_a_capture() {
        assert!(Capture::open(&b"GET / HTTP/1.1\r\n"[..]).is_err());
        assert!(Capture::open(&b"ab"[..]).is_err());
        assert!(Capture::open(&b""[..]).is_err());
    }

    #[test]
    fn pcap_with_snaplen_cut_records() {
        // Hand-built little-endian µs pcap, snaplen 4, one record of 4 of 60 bytes.
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0];
        f.extend_from_slice(&[7, 0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0, 60, 0, 0, 0, 1, 2, 3, 4]);
        let mut c = Capture::open(&f[..]).unwrap();
        let fr = c.next_frame().unwrap().unwrap();
        assert_eq!(
            (fr.ts_ns, fr.orig_len, fr.data, fr.link),
            (7_000_005_000, 60, &[1u8, 2, 3, 4][..], LinkType::Ethernet)
        );
        assert!(c.next_frame().is_none());
        // Cut inside the record: an error, not a panic or a silent end.
        let mut c = Capture::open(&f[..f.len() - 2]).unwrap();
        assert!(c.next_frame().unwrap().is_err());
        // A record claiming 2 GB is refused, not allocated.
        let mut huge = f[..24].to_vec();
        huge.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0x80]);
        assert!(Capture::open(&huge[..]).unwrap().next_frame().unwrap().is_err());
    }
}
