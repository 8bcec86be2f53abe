//! `tcpscope read`: decode a pcap/pcapng capture offline, without
//! privileges, into the same text and JSON as `watch`.

use std::io::{self, BufWriter};

use anyhow::{Context, Result};

use crate::cli::ReadArgs;
use crate::output::{Emitter, Format};
use crate::view::capture::read_packets;

pub fn run(args: &ReadArgs) -> Result<()> {
    let cap = crate::view::capture::open(&args.file)?;
    let filter = args.filter.to_filter();
    filter.to_kernel(true)?; // the same limits as live mode
    let format = if args.json { Format::Json } else { Format::Text };
    let limit = args.count.unwrap_or(u64::MAX);
    let mut out = Emitter::new(BufWriter::with_capacity(1 << 16, io::stdout().lock()), format);
    // A failed write is a closed stdout (`| head`): reading stops.
    let (summary, result) = read_packets(cap, filter, limit, |p| out.emit(p).is_ok())?;
    let _ = out.flush();
    eprintln!("{}", summary.line());
    result.with_context(|| format!("reading '{}'", args.file))
}
