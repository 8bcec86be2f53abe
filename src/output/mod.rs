//! Presentation: packets (tcpscope_wire's `format`, re-exported here),
//! connection events, alerts and latency histograms, as text or NDJSON.
//! The format is chosen once, at the edge; only `print_line` prints, and
//! only the commands call it.

pub mod alert;
pub mod event_log;
pub mod json;
pub mod l7;
pub mod latency;
pub mod pcapng;
mod text;

use std::io::{self, Write};

pub use tcpscope_wire::format::{format_text, human_bytes, human_count, tcpdump_flags, time_of_day};
pub use tcpscope_wire::format::{Emitter, Format, Packet};
pub use text::{conn_text, human_ns};

/// Prints one line to stdout. Returns false once stdout is gone (a closed
/// pipe, as with `| head`), so callers can stop cleanly instead of panicking.
pub fn print_line(line: &str) -> bool {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).is_ok()
}
