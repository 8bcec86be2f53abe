//! `tcpscope guard`: starts the guard view, prints its alerts, reloads its
//! rules file on SIGHUP, and ends with its summary.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::GuardArgs;
use crate::cmd::stop_flag;
use crate::detect::{self, ChainPosition, ConnLimit, RatioWatch};
use crate::output::alert::Alert;
use crate::output::print_line;
use crate::view::guard::Guard;

/// Set by SIGHUP: reload the rules file.
static RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sighup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst); // async-signal-safe: one atomic store
}

/// An alert on standard output, as NDJSON or a text line.
fn emit(alert: &Alert, json: bool) {
    print_line(&if json { alert.json() } else { alert.text() });
}

pub fn run(args: &GuardArgs) -> Result<()> {
    let stop = stop_flag()?;
    // SIGHUP reloads the rules file instead of stopping the guard (this
    // replaces the stop handler for SIGHUP alone).
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGHUP, on_sighup as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    let guard = Guard::start(args)?;
    for note in &guard.notes {
        eprintln!("tcpscope: {note}");
    }
    // Announced last: tests and scripts take this line to mean "all live".
    crate::cmd::announce(&guard.session, &format!("guarding with {} rules", guard.kept));
    let settings = detect::Settings::from(args);
    let mut position = ChainPosition::default();
    let warn = |w: Option<String>| w.into_iter().for_each(|w| eprintln!("tcpscope: {w}"));
    warn(position.check(&guard.session));

    let offset = crate::cmd::monotonic_to_realtime_offset();
    let conn_limit = RefCell::new(ConnLimit::default());
    let mut b = libbpf_rs::RingBufferBuilder::new();
    b.add(&guard.session.skel.maps.alerts, |d: &[u8]| {
        let mut a = crate::bpf::types::alert_event::default();
        let n = d.len().min(std::mem::size_of_val(&a));
        if plain::copy_from_bytes(&mut a, &d[..n]).is_ok() {
            emit(&detect::kernel_alert(&a, offset, &settings), args.json);
        }
        0
    })
    .context("setting up the alert ring buffer")?;
    if let Some(lc) = &guard.lc {
        b.add(&lc.skel.maps.limit_events, |d: &[u8]| {
            let mut e = crate::bpf::lifecycle::types::conn_event::default();
            let n = d.len().min(std::mem::size_of_val(&e));
            if plain::copy_from_bytes(&mut e, &d[..n]).is_ok() {
                for a in conn_limit.borrow_mut().on_event(&e, offset, guard.netns, &settings, &guard.maps) {
                    emit(&a, args.json);
                }
            }
            0
        })
        .context("setting up the connection-limit ring buffer")?;
    }
    let ring = b.build().context("setting up the alert ring buffer")?;
    let mut ratio = RatioWatch::default();
    let mut last_sweep = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // consume() too: poll() reads only the rings that woke it.
        let _ = ring.poll(Duration::from_millis(100));
        let _ = ring.consume();
        // Expired rules match nothing in the kernel already; sweeping them
        // out keeps the tries small and `block list` honest. Through the
        // index of rules with a TTL, at most once a second.
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            let _ = guard.maps.sweep();
            last_sweep = std::time::Instant::now();
        }
        warn(position.check(&guard.session));
        if let Err(e) = guard.session.check_present() {
            guard.interface_gone();
            return Err(e);
        }
        if RELOAD.swap(false, Ordering::SeqCst) {
            let now = crate::output::time_of_day(crate::bpf::clock_ns(libc::CLOCK_REALTIME));
            let said = match (&args.rules, args.rules.as_deref().map(|f| guard.reload(f))) {
                (Some(f), Some(Ok((added, removed)))) => format!(
                    "reloaded {}: {added} rules added, {removed} removed; runtime rules unchanged",
                    f.display()
                ),
                (Some(f), Some(Err(e))) => {
                    format!("reloading {} failed, rules unchanged: {e:#}", f.display())
                }
                _ => "SIGHUP: no --rules file to reload; runtime rules unchanged".into(),
            };
            eprintln!("{now} tcpscope: {said}");
        }
        if ratio.due() {
            if let Some(alert) = guard.syns_and_handshakes().and_then(|(s, d)| ratio.check(s, d, &settings)) {
                emit(&alert, args.json);
            }
        }
    }
    let _ = ring.consume(); // what arrived since the last poll
    drop(ring);
    let c = guard.session.counters()?;
    drop(guard); // detach before reporting
    let reasons: Vec<String> =
        c.guard_dropped_by_reason().iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    eprintln!(
        "tcpscope: guard stopped: {} packets dropped{}, {} from allow-listed sources",
        c.0.policy_dropped,
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
        c.0.policy_allowed
    );
    // The lean guard counts only what it needs: its own summary, whose
    // parts add up to the packets seen; --inspect keeps every counter.
    eprintln!("{}", if args.inspect { c.summary() } else { c.guard_summary() });
    Ok(())
}
