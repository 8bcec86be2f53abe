//! Presentation of packet records: tcpdump-like text or NDJSON. The format
//! is chosen once, at the edge; nothing below this module prints.

pub mod pcapng;
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

/// Prints one line to stdout. Returns false once stdout is gone (a closed
/// pipe, as with `| head`), so callers can stop cleanly instead of panicking.
pub fn print_line(line: &str) -> bool {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_ok()
}
