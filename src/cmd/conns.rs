//! `tcpscope conns`: the connection view's events as text or NDJSON.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::sync::atomic::Ordering;

use anyhow::Result;

use crate::bpf::lifecycle::{self, types, AcceptVia};
use crate::bpf::monotonic_to_realtime_offset;
use crate::cli::ConnsArgs;
use crate::cmd::{report_unavailable, stop_flag};
use crate::conn::{has, ConnRecord};
use crate::output::conn_text;
use crate::output::json;
use crate::view::conns::{ConnsView, ReasonNames};
use crate::view::l7::{L7View, Recent};

/// A connection event's key: netns/local:port-peer:port.
fn event_conn_key(e: &types::conn_event) -> String {
    let (local, peer) = (crate::conn::addr(e.family, &e.saddr), crate::conn::addr(e.family, &e.daddr));
    tcpscope_wire::model::conn_key(e.netns, local, e.sport, peer, e.dport)
}

pub fn run(args: &ConnsArgs) -> Result<()> {
    let stop = stop_flag()?;
    let config = types::lifecycle_config {
        emit_states: u8::from(args.states),
        events: 1,
        ..lifecycle::config_for_ports(&args.ports)?
    };
    let mut view = ConnsView::start(config, Some(args.accept_via))?;
    // L7 hints on one interface: its connections' later events carry them.
    let mut l7 = match &args.l7 {
        Some(iface) => {
            let attach = crate::cli::AttachArgs {
                iface: iface.clone(),
                hook: None,
                xdp_mode: None,
                btf: None,
                netns: args.l7_netns.clone(),
            };
            Some(L7View::start(&attach, &[], Default::default(), 16 << 20)?)
        }
        None => None,
    };
    // Each named connection's hints by its key, formatted once: (JSON, text).
    let named: RefCell<Recent<String, (Vec<u8>, String)>> = RefCell::default();
    // Before the ready line below: scripts start measuring at it.
    let reasons = ReasonNames::load();
    report_unavailable(&view.lc);
    let accept_via = match view.lc.accept_via {
        Some(AcceptVia::Cgroup) => "; accepting process from the cgroup getpeername hooks",
        Some(AcceptVia::Syscall) => "; accepting process from the accept syscall tracepoints",
        None => "",
    };
    eprintln!(
        "tcpscope: following TCP connections in every network namespace ({} hooks{accept_via}); Ctrl-C to stop",
        view.lc.links.len()
    );

    let reason = |kind: u8, r: u32| reasons.name(kind, r);
    let offset = monotonic_to_realtime_offset();
    // Lines go straight into one buffer, written out when it holds
    // FLUSH_BYTES and after each pass: one copy per event (this runs for
    // every event, on the traced host's CPUs).
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
    let print = |e: &mut types::conn_event| {
        if printed.get() >= limit || failed.get() || args.pid.is_some_and(|pid| pid != e.pid) {
            return;
        }
        let mut out = out.borrow_mut();
        let named = named.borrow();
        let hints = if named.is_empty() { None } else { named.get(&event_conn_key(e)) };
        if args.json {
            // Straight from the event, no record built.
            let why = if has::reason(e) { reason(e.kind, e.reason) } else { String::new() };
            json::write_conn_event(&mut out, e, e.ts_ns + offset, &why);
            if let Some((json, _)) = hints {
                out.pop(); // the closing brace
                out.extend_from_slice(b",\"l7\":");
                out.extend_from_slice(json);
                out.push(b'}');
            }
            out.push(b'\n');
        } else {
            let text = conn_text(&ConnRecord::from_event(e, e.ts_ns + offset, &reason));
            match hints {
                Some((_, hint)) => {
                    let _ = writeln!(out, "{text} {hint}");
                }
                None => {
                    let _ = writeln!(out, "{text}");
                }
            }
        }
        printed.set(printed.get() + 1);
        let full = out.len() >= FLUSH_BYTES;
        drop(out);
        if full {
            write_out();
        }
    };
    loop {
        let last = stop.load(Ordering::SeqCst) || printed.get() >= limit || failed.get();
        if let Some(v) = &mut l7 {
            v.poll(std::time::Duration::ZERO, |r| {
                if let Some(conn) = &r.conn {
                    named.borrow_mut().insert(conn.clone(), crate::output::l7::attached(&r.l7));
                }
            })?;
        }
        let wait = view.pass(last, print);
        write_out();
        if last {
            break;
        }
        if let Some(wait) = wait {
            std::thread::park_timeout(wait);
        }
    }
    let lost = view.lost();
    let raised = view.raised;
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
