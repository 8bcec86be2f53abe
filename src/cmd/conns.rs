//! `tcpscope conns`: the kernel's view of TCP connections, as events.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use libbpf_rs::MapCore;

use crate::bpf::clock_ns;
use crate::bpf::conn_slots::{EventSlots, TimeOrder, SLOTS_PER_CPU};
use crate::bpf::lifecycle::AcceptVia;
use crate::bpf::lifecycle::{self, types};
use crate::bpf::reader_watch::ReaderWatch;
use crate::cli::ConnsArgs;
use crate::cmd::{monotonic_to_realtime_offset, report_unavailable, stop_flag};
use crate::lifecycle::{has, ConnRecord};
use crate::output::json;

pub fn run(args: &ConnsArgs) -> Result<()> {
    let stop = stop_flag()?;
    let config = types::lifecycle_config {
        emit_states: u8::from(args.states),
        events: 1,
        ..lifecycle::config_for_ports(&args.ports)?
    };
    let lc = lifecycle::start(config, None, Some(args.accept_via), None)?;
    // Before the ready line below: scripts start measuring at it.
    let [drop_names, rst_names] = lifecycle::kernel_enum_names([
        ("skb_drop_reason", "SKB_DROP_REASON_"),
        ("sk_rst_reason", "SK_RST_REASON_"),
    ]);
    report_unavailable(&lc);
    let mut slots = EventSlots::new(&lc.skel.maps.conn_heads, &lc.skel.maps.conn_slots)?;
    let mut reader_watch = Some(ReaderWatch::start(&lc.skel.maps.conn_heads, &lc.skel.maps.conn_doorbell)?);
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
    let mut sockets = crate::lifecycle::SocketJoin::default();
    let mut print = |e: &mut types::conn_event| {
        if printed.get() >= limit || failed.get() || !sockets.join(e) {
            return;
        }
        if args.pid.is_some_and(|pid| pid != e.pid) {
            return;
        }
        let mut out = out.borrow_mut();
        if args.json {
            // Straight from the event, no record built.
            let why = if has::reason(e) { reason(e.kind, e.reason) } else { String::new() };
            json::write_conn_event(&mut out, e, e.ts_ns + offset, &why);
            out.push(b'\n');
        } else {
            let _ = writeln!(out, "{}", ConnRecord::from_event(e, e.ts_ns + offset, &reason).text());
        }
        printed.set(printed.get() + 1);
        let full = out.len() >= FLUSH_BYTES;
        drop(out);
        if full {
            write_out();
        }
    };

    // Read the slots every POLL, or sooner at high rates, so that a pass
    // finds about an eighth of a CPU's slots, and again at once while a pass
    // finds more, so that a burst is read at our own speed. A CPU with a
    // quarter of its slots unread rings the doorbell, and the watch ends the
    // wait (reader_watch). Events are put in time order (a socket's events
    // may come from several CPUs, and its join needs them in order) up to
    // MARGIN before the pass: an event is written within microseconds of
    // its time, so none older can still come, unless a CPU has a slot being
    // written at the pass (then the frontier waits).
    const POLL: Duration = Duration::from_millis(20);
    const MIN_POLL: Duration = Duration::from_millis(1);
    const PER_PASS: u64 = SLOTS_PER_CPU / 8;
    const MARGIN: u64 = 10_000_000;
    let mut raised = 0;
    let mut pending = TimeOrder::new(slots.cpus());
    let mut frontier = 0u64;
    // The rate is taken over all passes since the last sleep began: a pass
    // made at once after a full one covers too short a time to tell (one
    // finding nothing 0.1 ms after another made the next sleep the longest,
    // POLL, and at 96,000 events/s on one CPU its slots filled meanwhile).
    let mut window_start = clock_ns(libc::CLOCK_MONOTONIC);
    let mut window_events = 0u64;
    loop {
        let last = stop.load(Ordering::SeqCst) || printed.get() >= limit || failed.get();
        if last {
            // The final drain at normal priority: a busy host must not hold
            // up the exit.
            raised = reader_watch.take().map_or(0, ReaderWatch::finish);
        }
        let now = clock_ns(libc::CLOCK_MONOTONIC);
        let pass = slots.read(&mut pending);
        window_events += pass.busiest;
        if last {
            frontier = u64::MAX;
        } else if !pass.waiting {
            frontier = now.saturating_sub(MARGIN);
        }
        pending.take_until(frontier, &mut print);
        write_out();
        if last {
            break;
        }
        if pass.busiest < PER_PASS {
            // The time the busiest CPU takes to write PER_PASS events.
            let window = Duration::from_nanos(now.saturating_sub(window_start));
            let wait = window.mul_f64(PER_PASS as f64 / window_events.max(1) as f64);
            std::thread::park_timeout(wait.clamp(MIN_POLL, POLL));
            window_start = now;
            window_events = 0;
        }
    }
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
        .sum::<u64>()
        + slots.given_up;
    let priority = if raised > 0 {
        format!(
            "; read at idle CPU priority, raised {raised} time{} to keep up",
            if raised == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    eprintln!("tcpscope: {} events printed, {lost} lost (event slots full){priority}", printed.get());
    Ok(())
}
