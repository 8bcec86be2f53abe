//! `tcpscope conns`: the kernel's view of TCP connections, as events.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use libbpf_rs::MapCore;

use crate::bpf::lifecycle::AcceptVia;
use crate::bpf::lifecycle::{self, types};
use crate::cli::ConnsArgs;
use crate::cmd::{monotonic_to_realtime_offset, stop_flag};
use crate::lifecycle::{has, ConnRecord};
use crate::output::json;

/// Prints which views the kernel refused, so nobody mistakes silence for
/// "nothing happened".
pub fn report_unavailable(lc: &lifecycle::Lifecycle) {
    for (view, why) in &lc.unavailable {
        eprintln!("tcpscope: {view} unavailable: {why}");
    }
}

pub fn run(args: &ConnsArgs) -> Result<()> {
    let stop = stop_flag()?;
    let config = types::lifecycle_config {
        port: args.port.unwrap_or(0),
        emit_states: u8::from(args.states),
        ..Default::default()
    };
    let lc = lifecycle::start(config, None, Some(args.accept_via))?;
    // Before the ready line below: scripts start measuring at it.
    let [drop_names, rst_names] = lifecycle::kernel_enum_names([
        ("skb_drop_reason", "SKB_DROP_REASON_"),
        ("sk_rst_reason", "SK_RST_REASON_"),
    ]);
    report_unavailable(&lc);
    let accept_via = match lc.accept_via {
        Some(AcceptVia::Cgroup) => "; accepting process from the cgroup getpeername hooks",
        Some(AcceptVia::Syscall) => "; accepting process from the accept syscall tracepoints",
        None => "",
    };
    eprintln!(
        "tcpscope: following TCP connections in every network namespace ({} hooks{accept_via}); Ctrl-C to stop",
        lc.links.len()
    );

    let reason = |kind: u8, r: u32| -> String {
        let names =
            if u32::from(kind) == types::conn_event_kind::CONN_DROP.0 { &drop_names } else { &rst_names };
        names.get(&r).cloned().unwrap_or_else(|| format!("reason {r}"))
    };
    let offset = monotonic_to_realtime_offset();
    // Lines go straight into one buffer, written out when it holds
    // FLUSH_BYTES and after each poll of the ring: one copy per event (this
    // runs for every event, on the traced host's CPUs).
    const FLUSH_BYTES: usize = 64 * 1024;
    let printed = Cell::new(0u64);
    let failed = Cell::new(false);
    let stdout = RefCell::new(io::stdout().lock());
    let out = RefCell::new(Vec::with_capacity(2 * FLUSH_BYTES));
    let write_out = || {
        let mut buf = out.borrow_mut();
        let mut stdout = stdout.borrow_mut();
        let written = stdout.write_all(&buf).and_then(|()| stdout.flush());
        buf.clear();
        if written.is_err() {
            failed.set(true);
        }
    };
    let limit = args.count.unwrap_or(u64::MAX);
    let sockets = RefCell::new(crate::lifecycle::SocketJoin::default());

    let mut b = libbpf_rs::RingBufferBuilder::new();
    b.add(&lc.skel.maps.conn_events, |d: &[u8]| {
        if printed.get() >= limit || failed.get() {
            return 0;
        }
        let mut e = types::conn_event::default();
        if plain::copy_from_bytes(&mut e, &d[..d.len().min(std::mem::size_of::<types::conn_event>())])
            .is_err()
        {
            return 0;
        }
        if !sockets.borrow_mut().join(&mut e) {
            return 0;
        }
        if args.pid.is_some_and(|pid| pid != e.pid) {
            return 0;
        }
        let mut out = out.borrow_mut();
        if args.json {
            // Straight from the event, no record built.
            let why = if has::reason(&e) { reason(e.kind, e.reason) } else { String::new() };
            json::write_conn_event(&mut out, &e, e.ts_ns + offset, &why);
            out.push(b'\n');
        } else {
            let _ = writeln!(out, "{}", ConnRecord::from_event(&e, e.ts_ns + offset, &reason).text());
        }
        printed.set(printed.get() + 1);
        let full = out.len() >= FLUSH_BYTES;
        drop(out);
        if full {
            write_out();
        }
        0
    })
    .context("setting up the ring buffer")?;
    let ring = b.build().context("setting up the ring buffer")?;
    // The kernel does not wake us for events (submit() in
    // bpf/lifecycle.bpf.c): read the ring every POLL, and again at once while
    // a pass finds more than an eighth of the ring's worth, so that a burst
    // is read at our own speed, not one ring per POLL. A pass takes at most
    // a ring's worth: under a stream faster than we print, Ctrl-C and the
    // output still get their turn.
    const POLL: Duration = Duration::from_millis(20);
    let ring_records =
        lc.skel.maps.conn_events.max_entries() as usize / (std::mem::size_of::<types::conn_event>() + 8);
    let mut found = 0usize;
    while !stop.load(Ordering::SeqCst) && printed.get() < limit && !failed.get() {
        if found < ring_records / 8 {
            match ring.poll(POLL) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading the ring buffer"),
            }
        }
        let n = ring.consume_raw_n(ring_records);
        if n < 0 && n != -libc::EINTR {
            return Err(io::Error::from_raw_os_error(-n)).context("reading the ring buffer");
        }
        found = usize::try_from(n).unwrap_or(0);
        write_out();
    }
    let _ = ring.consume();
    write_out();
    drop(ring);
    let lost: u64 = lc
        .skel
        .maps
        .conn_events_lost
        .lookup_percpu(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .ok()
        .flatten()
        .unwrap_or_default()
        .iter()
        .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap_or([0; 8])))
        .sum();
    eprintln!("tcpscope: {} events printed, {lost} lost (ring buffer full)", printed.get());
    Ok(())
}
