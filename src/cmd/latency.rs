//! `tcpscope latency`: per-port latency histograms kept in the kernel, as
//! text bars with percentiles.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use libbpf_rs::MapCore;

use crate::bpf::lifecycle::{self, types};
use crate::cli::LatencyArgs;
use crate::cmd::{report_unavailable, stop_flag};
use crate::lifecycle::{human_ns, quantile, slot_bounds};
use crate::names::latency_kind_name;
use crate::output::print_line;

/// All histograms in the map, sorted by kind and port.
pub fn read_histograms(lc: &lifecycle::Lifecycle) -> Vec<(types::latency_key, types::latency_hist)> {
    let map = &lc.skel.maps.latency;
    let mut out = Vec::new();
    for key in map.keys() {
        let mut k = types::latency_key::default();
        if plain::copy_from_bytes(&mut k, &key).is_err() {
            continue;
        }
        // Per CPU in the kernel: summed here.
        if let Ok(Some(per_cpu)) = map.lookup_percpu(&key, libbpf_rs::MapFlags::ANY) {
            let mut total = types::latency_hist::default();
            for v in per_cpu {
                let mut h = types::latency_hist::default();
                if plain::copy_from_bytes(&mut h, &v).is_err() {
                    continue;
                }
                for (t, s) in total.slots.iter_mut().zip(h.slots) {
                    *t += s;
                }
                total.count += h.count;
                total.sum += h.sum;
                total.max = total.max.max(h.max);
            }
            out.push((k, total));
        }
    }
    out.sort_by_key(|(k, _)| (k.kind, k.port));
    out
}

pub fn run(args: &LatencyArgs) -> Result<()> {
    crate::ensure_usage!(
        args.interval.is_finite() && args.interval >= 0.1,
        "--interval {}: use at least 0.1 seconds",
        args.interval
    );
    let stop = stop_flag()?;
    let lc = lifecycle::start(
        types::lifecycle_config { histograms: 1, ..lifecycle::config_for_ports(args.port.as_slice())? },
        Some(lifecycle::LATENCY_TRACEPOINTS),
        None,
        None,
    )?;
    report_unavailable(&lc);
    eprintln!(
        "tcpscope: collecting handshake, connect and RTT latency; report every {}s; Ctrl-C to stop",
        args.interval
    );
    let mut reports = 0;
    let mut before: std::collections::HashMap<(u8, u16), types::latency_hist> = Default::default();
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && args.count.is_none_or(|c| reports < c) {
        crate::cmd::sleep_unless_stopped(&stop, Instant::now() + Duration::from_secs_f64(args.interval));
        reports += 1;
        let now = crate::output::time_of_day(crate::bpf::clock_ns(libc::CLOCK_REALTIME));
        if !args.json {
            let over = if args.reset {
                format!("the last {}s", args.interval)
            } else {
                format!("{:.0}s since start", started.elapsed().as_secs_f64())
            };
            if !print_line(&format!("{now} latency over {over} (report every {}s)", args.interval)) {
                return Ok(());
            }
        }
        for (k, mut h) in read_histograms(&lc) {
            if args.reset {
                // This interval only: the kernel's totals less the last ones.
                let total = h;
                if let Some(b) = before.get(&(k.kind, k.port)) {
                    for (s, p) in h.slots.iter_mut().zip(b.slots) {
                        *s -= p.min(*s);
                    }
                    h.count -= b.count.min(h.count);
                    h.sum -= b.sum.min(h.sum);
                }
                h.max = h.slots.iter().rposition(|n| *n > 0).map_or(0, |s| slot_bounds(s).1);
                before.insert((k.kind, k.port), total);
            }
            if args.port.is_some_and(|p| p != k.port) || h.count == 0 {
                continue;
            }
            // RTT is recorded in microseconds, the others in nanoseconds.
            let unit = if u32::from(k.kind) == types::latency_kind::LAT_RTT.0 { 1000 } else { 1 };
            let q = |x| quantile(&h, x) * unit;
            if args.json {
                let buckets: Vec<[u64; 3]> = h
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(s, n)| {
                        let (lo, hi) = slot_bounds(s);
                        [lo * unit, hi * unit, *n]
                    })
                    .collect();
                let v = serde_json::json!({
                    "ts_ns": crate::bpf::clock_ns(libc::CLOCK_REALTIME), "interval_only": args.reset,
                    "kind": latency_kind_name(k.kind), "port": k.port, "count": h.count,
                    "p50_ns": q(0.5), "p90_ns": q(0.9), "p99_ns": q(0.99), "max_ns": h.max * unit,
                    "mean_ns": h.sum * unit / h.count.max(1), "buckets": buckets,
                });
                if !print_line(&v.to_string()) {
                    return Ok(());
                }
                continue;
            }
            let mut text = format!(
                "{} :{} n={} p50 {} p90 {} p99 {} max {}",
                latency_kind_name(k.kind),
                k.port,
                h.count,
                human_ns(q(0.5)),
                human_ns(q(0.9)),
                human_ns(q(0.99)),
                human_ns(h.max * unit)
            );
            let peak = h.slots.iter().copied().max().unwrap_or(1).max(1);
            for (s, n) in h.slots.iter().enumerate().filter(|(_, n)| **n > 0) {
                let (lo, hi) = slot_bounds(s);
                let bar = "#".repeat(((n * 40).div_ceil(peak)) as usize);
                text.push_str(&format!(
                    "\n  [{:>9}, {:>9}) {:<40} {n}",
                    human_ns(lo * unit),
                    human_ns(hi * unit),
                    bar
                ));
            }
            if !print_line(&text) {
                return Ok(());
            }
        }
    }
    Ok(())
}
