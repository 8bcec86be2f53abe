//! `tcpscope l7`: each incoming connection named by its client's first
//! bytes, live (`-i`) or from a capture (`-r`), as text or NDJSON.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::L7Args;
use crate::filter::EventFilter;
use crate::output::{l7, print_line};
use crate::view::capture::read_packets;
use crate::view::l7::{L7Stats, L7View};
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
    match (&args.file, args.attach()) {
        (Some(file), None) => {
            let live_only = [
                (args.hook.is_some(), "--hook"),
                (args.xdp_mode.is_some(), "--xdp-mode"),
                (args.netns.is_some(), "--netns"),
                (args.ringbuf_mib != 4, "--ringbuf-mib"),
            ];
            if let Some((_, flag)) = live_only.iter().find(|(given, _)| *given) {
                return Err(crate::cli::UsageError(format!(
                    "{flag} applies to an interface (-i), not to a capture (-r): drop {flag}"
                ))
                .into());
            }
            offline(args, file, custom)
        }
        (None, Some(attach)) => live(args, &attach, custom),
        _ => Err(crate::cli::UsageError(
            "name an interface to watch (-i IFACE) or a capture to read (-r FILE)".into(),
        )
        .into()),
    }
}

/// Prints records until the count is reached or the output closes. Live,
/// each line as it comes; from a capture, through a buffer (a write per
/// line took half of `l7 -r`'s time on 100,000 connections).
struct Printer<'a> {
    args: &'a L7Args,
    printed: Cell<u64>,
    open: Cell<bool>,
    buffered: Option<std::cell::RefCell<std::io::BufWriter<std::io::StdoutLock<'static>>>>,
}

impl<'a> Printer<'a> {
    fn live(args: &'a L7Args) -> Self {
        Printer { args, printed: Cell::new(0), open: Cell::new(true), buffered: None }
    }

    fn buffered(args: &'a L7Args) -> Self {
        let out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        Printer { buffered: Some(std::cell::RefCell::new(out)), ..Self::live(args) }
    }

    fn print(&self, r: &Record) {
        if !self.wants_more() || !(self.args.ports.is_empty() || self.args.ports.contains(&r.dport)) {
            return;
        }
        let line = if self.args.json { l7::json(r) } else { l7::text(r) };
        // `| head` closes the pipe: stop.
        let open = match &self.buffered {
            Some(out) => {
                use std::io::Write;
                let mut out = out.borrow_mut();
                out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")).is_ok()
            }
            None => print_line(&line),
        };
        self.open.set(open);
        self.printed.set(self.printed.get() + 1);
    }

    /// What is buffered, out (false: the output has gone).
    fn flush(&self) -> bool {
        use std::io::Write;
        self.buffered.as_ref().is_none_or(|out| out.borrow_mut().flush().is_ok())
    }

    fn wants_more(&self) -> bool {
        self.open.get() && self.printed.get() < self.args.count.unwrap_or(u64::MAX)
    }
}

fn live(args: &L7Args, attach: &crate::cli::AttachArgs, custom: Protocols) -> Result<()> {
    crate::ensure_usage!(
        args.ports.len() <= 8,
        "--port: at most 8 ports live (the kernel's filter holds 8); {} given",
        args.ports.len()
    );
    let mib = args.ringbuf_mib;
    crate::ensure_usage!(
        mib.is_power_of_two() && mib <= 1024,
        "--ringbuf-mib {mib}: use a power of two from 1 to 1024"
    );
    let stop = crate::cmd::stop_flag()?;
    let mut view = L7View::start(attach, &args.ports, custom, mib << 20)?;
    crate::cmd::announce(&view.session, "naming incoming connections");
    let out = Printer::live(args);
    while !stop.load(Ordering::SeqCst) && out.wants_more() {
        view.poll(Duration::from_millis(100), |r| out.print(&r))?;
        view.session.check_present()?;
        if crate::cmd::stdout_closed() {
            break; // `| head -1` has what it wanted
        }
    }
    if out.wants_more() {
        // What came before the stop, then the streams still waiting.
        view.finish(|r| out.print(&r))?;
    }
    let stats = view.stats()?;
    eprintln!("tcpscope: {}; {} packets seen", summary(&stats), stats.packets);
    Ok(())
}

/// "N connections identified, M given up (closed 1, timeout 2)", and what
/// the kernel could not follow or write.
fn summary(s: &L7Stats) -> String {
    let gave: Vec<String> = s.gave_up.iter().map(|(why, n)| format!("{why} {n}")).collect();
    let mut line = format!(
        "{} connections identified, {} given up{}",
        s.identified,
        s.gave_up.values().sum::<u64>(),
        if gave.is_empty() { String::new() } else { format!(" ({})", gave.join(", ")) },
    );
    for (n, what) in [
        (s.untracked, "not followed (the kernel's flow table was full)"),
        (s.not_listening, "SYNs to ports nothing listens on, not followed"),
        (s.swept, "followed without their SYN (ring buffer full) and swept"),
        (s.events_lost, "records lost (ring buffer full: --ringbuf-mib)"),
    ] {
        if n > 0 {
            line.push_str(&format!("; {n} {what}"));
        }
    }
    line
}

fn offline(args: &L7Args, file: &str, custom: Protocols) -> Result<()> {
    let cap = crate::view::capture::open(file)?;
    // Every payload byte: the first message may take several segments.
    let filter = EventFilter { snaplen: u32::from(u16::MAX), ..Default::default() };
    let mut tracker = Tracker::with_protocols(custom);
    let (mut last_ts, mut next_expiry) = (0u64, 0u64);
    let out = Printer::buffered(args);
    let (summary_read, result) = read_packets(cap, filter, u64::MAX, |p| {
        last_ts = p.ts_ns;
        if let Some(r) = tracker.packet(p.ev, p.ts_ns, p.payload.unwrap_or(&[])) {
            out.print(&r);
        }
        for r in tracker.take_evicted() {
            out.print(&r);
        }
        if p.ts_ns >= next_expiry {
            for r in tracker.expire(p.ts_ns) {
                out.print(&r);
            }
            next_expiry = p.ts_ns + 1_000_000_000;
        }
        out.wants_more()
    })?;
    for r in tracker.finish(last_ts) {
        out.print(&r);
    }
    out.flush();
    let stats =
        L7Stats { identified: tracker.identified, gave_up: tracker.gave_up.clone(), ..Default::default() };
    eprintln!("tcpscope: {}; {} packets read", summary(&stats), summary_read.packets);
    result.with_context(|| format!("reading '{file}'"))
}
