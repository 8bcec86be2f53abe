//! Presentation of packet records: tcpdump-like text or NDJSON. The format
//! is chosen once, at the edge; nothing below this module prints.

mod text;

use std::io::{self, Write};

pub use text::{format_text, tcpdump_flags};

use crate::model::PacketRecord;

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Writes one record as one line.
pub fn write_record<W: Write>(
    out: &mut W,
    rec: &PacketRecord,
    format: Format,
    ifname: &str,
) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer(&mut *out, rec).map_err(io::Error::other)?;
            out.write_all(b"\n")
        }
        Format::Text => {
            out.write_all(format_text(rec, ifname).as_bytes())?;
            out.write_all(b"\n")
        }
    }
}
