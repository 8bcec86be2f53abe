//! `tcpscope watch`: stream decoded packets from the ring buffer.

use std::cell::{Cell, RefCell};
use std::io::{self, BufWriter};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use crate::bpf;
use crate::cli::WatchArgs;
use crate::cmd::{stop_flag, Session};
use crate::output::pcapng::PcapNgExport;
use crate::output::{Emitter, Format};
use crate::view::l7::{packet_key, FlowKey, L7Join, Recent};

pub fn run(args: &WatchArgs) -> Result<()> {
    let mut filter = args.filter.to_filter();
    filter.copy_headers = args.write.is_some();
    let snaplen = filter.snaplen;
    // Open the output file before attaching: a bad path fails early.
    let to_stdout = args.write.as_deref().is_some_and(|p| p.as_os_str() == "-");
    crate::ensure_usage!(
        !(to_stdout && args.print),
        "-w - writes the capture to standard output, where --print would print too: drop --print, or write to a file"
    );
    crate::ensure_usage!(
        !(args.json && args.write.is_some() && !args.print),
        "--json formats printed packets, and -w prints none: add --print, or drop --json"
    );
    let export = match &args.write {
        // `-w -`, as tcpdump: the capture goes to standard output.
        Some(_) if to_stdout => {
            let out: Box<dyn std::io::Write> = Box::new(BufWriter::new(io::stdout()));
            Some(RefCell::new(PcapNgExport::new(out, &args.attach.iface)?))
        }
        Some(path) => {
            let file =
                std::fs::File::create(path).with_context(|| format!("cannot create '{}'", path.display()))?;
            let out: Box<dyn std::io::Write> = Box::new(BufWriter::new(file));
            Some(RefCell::new(PcapNgExport::new(out, &args.attach.iface)?))
        }
        None => None,
    };
    let print = args.write.is_none() || args.print;
    let export_failed = RefCell::new(None::<anyhow::Error>);
    let mut config = filter.to_kernel(true)?;
    config.l7 = u8::from(args.l7);
    let join = RefCell::new(args.l7.then(|| L7Join::new(Default::default())));
    // Each named connection's hints, formatted once: (JSON, text).
    let named: RefCell<Recent<FlowKey, (Vec<u8>, String)>> = RefCell::default();
    let ringbuf_mib = args.ringbuf_mib;
    crate::ensure_usage!(
        ringbuf_mib.is_power_of_two() && ringbuf_mib <= 1024,
        "--ringbuf-mib {ringbuf_mib}: use a power of two from 1 to 1024"
    );
    let stop = stop_flag()?;
    let session = Session::start(&args.attach, config, ringbuf_mib << 20)?;
    crate::cmd::announce(&session, "watching incoming TCP");

    let format = if args.json { Format::Json } else { Format::Text };
    let printed = Cell::new(0u64);
    let out_failed = Cell::new(false);
    let out = RefCell::new(Emitter::new(BufWriter::new(io::stdout().lock()), format));
    let limit = args.count.unwrap_or(u64::MAX);
    let ifname = session.ifname.clone();
    let records = session.records(snaplen, |r| {
        if r.ev.l7 != 0 {
            // An L7 hints record: it names its connection, and is no packet.
            if let Some(j) = join.borrow_mut().as_mut() {
                for rec in j.take(&session, &r.ev, r.ts_ns, r.payload.unwrap_or(&[])) {
                    let hints = crate::output::l7::attached(&rec.l7);
                    named.borrow_mut().insert((rec.src, rec.sport, rec.dst, rec.dport), hints);
                }
            }
            return;
        }
        if printed.get() >= limit || out_failed.get() {
            return;
        }
        if let Some(x) = &export {
            if let Err(e) = x.borrow_mut().write(r.ts_ns, r.frame, r.ev.frame_len) {
                *export_failed.borrow_mut() = Some(e);
                out_failed.set(true);
            }
        }
        let named = named.borrow();
        let hints = if named.is_empty() { None } else { named.get(&packet_key(&r.ev)) };
        let extra = hints.map(|(json, text)| ("l7", json.as_slice(), text.as_str()));
        if print && out.borrow_mut().emit_with(&r.packet(&ifname), extra).is_err() {
            out_failed.set(true); // e.g. `| head` closed the pipe
        }
        printed.set(printed.get() + 1);
    })?;
    while !stop.load(Ordering::SeqCst) && printed.get() < limit && !out_failed.get() {
        records.poll()?;
        let _ = out.borrow_mut().flush();
        if let (true, Some(x)) = (to_stdout, &export) {
            let _ = x.borrow_mut().flush(); // a reader on the pipe sees packets as they come
        }
        session.check_present()?;
        if (print || to_stdout) && crate::cmd::stdout_closed() {
            break; // `| head -1` has what it wanted
        }
    }
    records.drain(); // what arrived since the last poll
    let _ = out.borrow_mut().flush();
    drop(records);

    let counters = bpf::read_counters(&session.skel)?;
    drop(session); // detach before reporting
    if let Some(e) = export_failed.into_inner() {
        return Err(e);
    }
    if let (Some(x), Some(path)) = (&export, &args.write) {
        x.borrow_mut().flush()?;
        eprintln!("tcpscope: {} packets written to {}", x.borrow().written, path.display());
    }
    if print {
        eprintln!("tcpscope: {} packets printed", printed.get());
    }
    if let Some(j) = join.borrow().as_ref() {
        let (named, gave_up) = j.counts();
        eprintln!("tcpscope: L7 hints: {named} connections named, {gave_up} given up");
    }
    eprintln!("{}", counters.summary());
    if counters.0.events_lost > 0 {
        eprintln!(
            "tcpscope: {} events were lost because the ring buffer was full: narrow the filter, use --sample, or raise --ringbuf-mib",
            counters.0.events_lost
        );
    }
    Ok(())
}
