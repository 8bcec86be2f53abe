//! `tcpscope guard`: starts the guard view, prints its alerts, reloads its
//! rules file on SIGHUP, and ends with its summary.

use std::sync::atomic::Ordering;

use anyhow::Result;

use crate::cli::GuardArgs;
use crate::cmd::stop_flag;
use crate::detect::{self, ChainPosition, RatioWatch};
use crate::output::alert::Alert;
use crate::output::print_line;
use crate::view::guard::Guard;

/// An alert on standard output, as NDJSON or a text line.
fn emit(alert: &Alert, json: bool) {
    print_line(&if json { alert.json() } else { alert.text() });
}

pub fn run(args: &GuardArgs) -> Result<()> {
    let stop = stop_flag()?;
    // SIGHUP reloads the rules file instead of stopping the guard.
    let reload = crate::cmd::reload_flag();
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

    let alerts = guard.alerts(&settings, |a| emit(&a, args.json))?;
    let mut ratio = RatioWatch::default();
    while !stop.load(Ordering::SeqCst) {
        alerts.poll();
        guard.sweep_expired();
        for a in guard.sweep_l7_flows() {
            emit(&a, args.json);
        }
        warn(position.check(&guard.session));
        if let Err(e) = guard.session.check_present() {
            guard.interface_gone();
            return Err(e);
        }
        if reload.swap(false, Ordering::SeqCst) {
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
    alerts.poll(); // what arrived since the last poll
    drop(alerts);
    let c = guard.session.counters()?;
    let l7_timeouts = guard.l7_timeouts.get();
    drop(guard); // detach before reporting
    let reasons: Vec<String> =
        c.guard_dropped_by_reason().iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    eprintln!(
        "tcpscope: guard stopped: {} packets dropped{}, {} from allow-listed sources{}",
        c.0.policy_dropped,
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
        c.0.policy_allowed,
        match l7_timeouts {
            0 => String::new(),
            n => format!(", {n} L7 first messages not complete within --l7-timeout"),
        }
    );
    // The lean guard counts only what it needs: its own summary, whose
    // parts add up to the packets seen; --inspect keeps every counter.
    eprintln!("{}", if args.inspect { c.summary() } else { c.guard_summary() });
    Ok(())
}
