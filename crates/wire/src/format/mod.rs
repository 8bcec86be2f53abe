//! Presentation of packet records: tcpdump-like text or NDJSON. The format
//! is chosen once, at the edge; nothing here prints.

pub mod json;
mod text;

use std::io::{self, Write};

pub use text::{format_text, human_bytes, human_count, tcpdump_flags, time_of_day};

use crate::model::PacketRecord;
use crate::types::packet_event;

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// One packet to present: the decoded event and what goes with it.
pub struct Packet<'a> {
    pub ev: &'a packet_event,
    /// Wall-clock time, ns since the epoch.
    pub ts_ns: u64,
    /// Payload bytes the user asked for (--snaplen).
    pub payload: Option<&'a [u8]>,
    /// Record number in a capture file (offline only).
    pub frame: Option<u64>,
    /// Network namespace the packet arrived in (live only): with it the
    /// record carries the connection key that `conns` events use.
    pub netns: Option<u32>,
    /// Interface name for text output.
    pub ifname: &'a str,
}

impl Packet<'_> {
    /// The owned record (the schema's serde form).
    pub fn record(&self) -> PacketRecord {
        let mut rec = PacketRecord::from_event(self.ev, self.ts_ns, self.payload);
        rec.frame = self.frame;
        rec.conn = self.conn_key();
        rec
    }

    /// The connection key, as `conns` prints it: local = destination.
    pub fn conn_key(&self) -> Option<String> {
        let ns = self.netns?;
        let rec_addr = |raw: &[u8; 16]| crate::model::address(self.ev.ip_version, raw);
        Some(crate::model::conn_key(
            ns,
            rec_addr(&self.ev.dst),
            self.ev.dport,
            rec_addr(&self.ev.src),
            self.ev.sport,
        ))
    }
}

/// Writes packets, one line each, in the chosen format.
pub struct Emitter<W: Write> {
    out: W,
    format: Format,
    line: Vec<u8>,
}

impl<W: Write> Emitter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Emitter { out, format, line: Vec::with_capacity(1024) }
    }

    pub fn emit(&mut self, p: &Packet<'_>) -> io::Result<()> {
        self.emit_with(p, None)
    }

    /// As `emit`, with one more key: (key, its JSON value, its text form
    /// appended to a text line).
    pub fn emit_with(&mut self, p: &Packet<'_>, extra: Option<(&str, &[u8], &str)>) -> io::Result<()> {
        self.line.clear();
        match self.format {
            Format::Json => {
                json::write_event(&mut self.line, p.ev, p.ts_ns, p.payload, p.frame, p.conn_key().as_deref());
                if let Some((key, value, _)) = extra {
                    self.line.pop(); // the closing brace
                    self.line.extend_from_slice(format!(",\"{key}\":").as_bytes());
                    self.line.extend_from_slice(value);
                    self.line.push(b'}');
                }
            }
            Format::Text => {
                self.line.extend_from_slice(format_text(&p.record(), p.ifname).as_bytes());
                if let Some((_, _, text)) = extra {
                    self.line.push(b' ');
                    self.line.extend_from_slice(text.as_bytes());
                }
            }
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
