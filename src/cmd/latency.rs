//! `tcpscope latency`: the latency view's histograms, reported every
//! interval.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cli::LatencyArgs;
use crate::cmd::{report_unavailable, stop_flag};
use crate::output::{latency, print_line};
use crate::view::latency::LatencyView;

pub fn run(args: &LatencyArgs) -> Result<()> {
    crate::ensure_usage!(
        args.interval.is_finite() && args.interval >= 0.1,
        "--interval {}: use at least 0.1 seconds",
        args.interval
    );
    let stop = stop_flag()?;
    let mut view = LatencyView::start(args.port.as_slice())?;
    report_unavailable(&view.lc);
    eprintln!(
        "tcpscope: collecting handshake, connect and RTT latency; report every {}s; Ctrl-C to stop",
        args.interval
    );
    let mut reports = 0;
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && args.count.is_none_or(|c| reports < c) {
        crate::cmd::sleep_unless_stopped(&stop, Instant::now() + Duration::from_secs_f64(args.interval));
        reports += 1;
        let now_ns = crate::bpf::clock_ns(libc::CLOCK_REALTIME);
        if !args.json {
            let over = if args.reset {
                format!("the last {}s", args.interval)
            } else {
                format!("{:.0}s since start", started.elapsed().as_secs_f64())
            };
            let now = crate::output::time_of_day(now_ns);
            if !print_line(&format!("{now} latency over {over} (report every {}s)", args.interval)) {
                return Ok(());
            }
        }
        for (k, h) in view.snapshot(args.reset) {
            if args.port.is_some_and(|p| p != k.port) || h.count == 0 {
                continue;
            }
            let line =
                if args.json { latency::json(&k, &h, now_ns, args.reset) } else { latency::text(&k, &h) };
            if !print_line(&line) {
                return Ok(());
            }
        }
    }
    Ok(())
}
