//! `tcpscope l7 -r FILE`: each connection of a capture named by its
//! client's first bytes, as text or NDJSON.

use anyhow::{Context, Result};

use crate::cli::L7Args;
use crate::filter::EventFilter;
use crate::output::{l7, print_line};
use crate::view::capture::read_packets;
use tcpscope_wire::l7::custom::Protocols;
use tcpscope_wire::l7::track::{Record, Tracker};

pub fn run(args: &L7Args) -> Result<()> {
    let custom = match &args.protocols {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("cannot read '{}'", f.display()))?;
            Protocols::parse(&text, &f.display().to_string())
                .map_err(|e| crate::cli::UsageError(format!("{e:#}")))?
        }
        None => Protocols::default(),
    };
    let cap = crate::view::capture::open(&args.file)?;
    // Every payload byte: the first message may take several segments.
    let filter = EventFilter { snaplen: u32::from(u16::MAX), ..Default::default() };
    let mut tracker = Tracker::with_protocols(custom);
    let (mut last_ts, mut next_expiry) = (0u64, 0u64);
    let mut open = true;
    let emit = |r: Record, open: &mut bool| {
        if *open && (args.ports.is_empty() || args.ports.contains(&r.dport)) {
            *open = print_line(&if args.json { l7::json(&r) } else { l7::text(&r) });
        }
    };
    let (summary, result) = read_packets(cap, filter, u64::MAX, |p| {
        last_ts = p.ts_ns;
        if let Some(r) = tracker.packet(p.ev, p.ts_ns, p.payload.unwrap_or(&[])) {
            emit(r, &mut open);
        }
        for r in tracker.take_evicted() {
            emit(r, &mut open);
        }
        if p.ts_ns >= next_expiry {
            for r in tracker.expire(p.ts_ns) {
                emit(r, &mut open);
            }
            next_expiry = p.ts_ns + 1_000_000_000;
        }
        open
    })?;
    for r in tracker.finish(last_ts) {
        emit(r, &mut open);
    }
    let gave: Vec<String> = tracker.gave_up.iter().map(|(why, n)| format!("{why} {n}")).collect();
    eprintln!(
        "tcpscope: {} connections identified, {} given up{}; {} packets read",
        tracker.identified,
        tracker.gave_up.values().sum::<u64>(),
        if gave.is_empty() { String::new() } else { format!(" ({})", gave.join(", ")) },
        summary.packets
    );
    result.with_context(|| format!("reading '{}'", args.file))
}
