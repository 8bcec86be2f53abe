//! Latency histograms as NDJSON or text with a bar chart.

use crate::bpf::lifecycle::types::{latency_hist, latency_key, latency_kind};
use crate::histogram::{quantile, slot_bounds};
use crate::names::latency_kind_name;
use crate::output::human_ns;

/// RTT is recorded in microseconds, the others in nanoseconds.
fn unit(k: &latency_key) -> u64 {
    if u32::from(k.kind) == latency_kind::LAT_RTT.0 {
        1000
    } else {
        1
    }
}

/// One histogram as a JSON line: quantiles, and every non-empty bucket.
pub fn json(k: &latency_key, h: &latency_hist, ts_ns: u64, interval_only: bool) -> String {
    let unit = unit(k);
    let q = |x| quantile(h, x) * unit;
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
    serde_json::json!({
        "ts_ns": ts_ns, "interval_only": interval_only,
        "kind": latency_kind_name(k.kind), "port": k.port, "count": h.count,
        "p50_ns": q(0.5), "p90_ns": q(0.9), "p99_ns": q(0.99), "max_ns": h.max * unit,
        "mean_ns": h.sum * unit / h.count.max(1), "buckets": buckets,
    })
    .to_string()
}

/// One histogram as text: a summary line, then a bar per bucket.
pub fn text(k: &latency_key, h: &latency_hist) -> String {
    let unit = unit(k);
    let q = |x| quantile(h, x) * unit;
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
    text
}
