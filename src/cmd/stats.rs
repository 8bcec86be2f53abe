//! `tcpscope stats`: counters and rates every interval, no events.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bpf::{self, counters::Counters};
use crate::cli::StatsArgs;
use crate::cmd::{stop_flag, Session};
use crate::filter::EventFilter;
use crate::output::print_line;

pub fn run(args: &StatsArgs) -> Result<()> {
    crate::ensure_usage!(
        args.interval.is_finite() && args.interval >= 0.05,
        "--interval {}: use a number of seconds of at least 0.05",
        args.interval
    );
    let stop = stop_flag()?;
    // Events off: the programs only count.
    let config = EventFilter::default().to_kernel(false)?;
    let session = Session::start(&args.attach, config, 4096)?;
    crate::cmd::announce(&session, "counting incoming packets");

    let interval = Duration::from_secs_f64(args.interval);
    let mut prev = Counters::default();
    let mut prev_t = Instant::now();
    let mut reports = 0u64;
    while !stop.load(Ordering::SeqCst) && args.count.is_none_or(|c| reports < c) {
        crate::cmd::sleep_while_present(&stop, Instant::now() + interval, &session)?;
        let now = bpf::read_counters(&session.skel)?;
        let t = Instant::now();
        let secs = t.duration_since(prev_t).as_secs_f64().max(1e-9);
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
        let (c, p) = (&now.0, &prev.0);
        if args.json {
            let mut v = now.to_json();
            v["ts_ns"] = serde_json::json!(crate::bpf::clock_ns(libc::CLOCK_REALTIME));
            v["interval_s"] = serde_json::json!(secs);
            v["packets_per_s"] = serde_json::json!(rate(c.packets, p.packets));
            v["bytes_per_s"] = serde_json::json!(rate(c.bytes, p.bytes));
            v["tcp_packets_per_s"] = serde_json::json!(rate(c.tcp_packets, p.tcp_packets));
            v["syn_per_s"] = serde_json::json!(rate(c.syn_no_ack, p.syn_no_ack));
            if !print_line(&v.to_string()) {
                break;
            }
        } else {
            use crate::output::{human_bytes, human_count};
            let rst = crate::bpf::types::tcpscope_flag_index::FLAG_IDX_RST.0 as usize;
            let line = format!(
                "{} {} pkt/s ({}/s), tcp {}/s, SYN {}/s, RST {}/s, malformed {}/s | totals: packets {}, tcp {}, non-tcp {}, fragments {}, malformed {}",
                crate::output::time_of_day(crate::bpf::clock_ns(libc::CLOCK_REALTIME)),
                human_count(rate(c.packets, p.packets)),
                human_bytes(rate(c.bytes, p.bytes)),
                human_count(rate(c.tcp_packets, p.tcp_packets)),
                human_count(rate(c.syn_no_ack, p.syn_no_ack)),
                human_count(rate(c.flag[rst], p.flag[rst])),
                human_count(rate(now.malformed_total(), prev.malformed_total())),
                human_count(c.packets as f64),
                human_count(c.tcp_packets as f64),
                human_count(c.non_tcp as f64),
                human_count(c.ip_fragments as f64),
                human_count(now.malformed_total() as f64),
            );
            if !print_line(&line) {
                break;
            }
        }
        prev = now;
        prev_t = t;
        reports += 1;
    }
    let last = bpf::read_counters(&session.skel)?;
    drop(session);
    eprintln!("{}", last.summary());
    Ok(())
}
