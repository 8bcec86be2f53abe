//! The kernel's latency histograms (per port, log-linear: 8 buckets per
//! power of two) as Prometheus histograms with fixed `le` bounds in
//! seconds. A kernel bucket counts toward `le` only if it lies wholly at or
//! below it, so a bucket's count is exact at the kernel's bounds and at most
//! one kernel bucket (12.5% of a value) late elsewhere; `_sum` and `_count`
//! are exact. Ports are bounded as the counters' are: listening ports, and
//! up to REMOTE_PORTS remote ports, the rest merged under `port="other"`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::bpf::lifecycle::types::{latency_hist, latency_key, latency_kind};
use crate::histogram::slot_bounds;

/// The `le` bounds, in seconds.
pub const BOUNDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// (family, labels) -> a merged histogram, and its unit in seconds.
type Merged<'a> = BTreeMap<(&'a str, Vec<(&'a str, String)>), (latency_hist, f64)>;

const HANDSHAKE: &str = "tcpscope_handshake_seconds";
const RTT: &str = "tcpscope_rtt_seconds";

/// A collector of the histograms the agent last read; cheap to clone (the
/// registry keeps one, the agent another).
#[derive(Clone)]
pub struct LatencyHistograms {
    descs: Arc<Vec<Desc>>,
    families: Arc<Mutex<Vec<MetricFamily>>>,
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

impl LatencyHistograms {
    pub fn new() -> prometheus::Result<Self> {
        let descs = vec![
            Desc::new(
                HANDSHAKE.into(),
                "Handshake time: in, first SYN to established, by listening port; out, connect() to established, by remote port.".into(),
                vec!["direction".into(), "port".into()],
                Default::default(),
            )?,
            Desc::new(RTT.into(), "Smoothed RTT of connections, by service port.".into(), vec!["port".into()], Default::default())?,
        ];
        Ok(LatencyHistograms { descs: Arc::new(descs), families: Arc::new(Mutex::new(Vec::new())) })
    }

    /// Takes the kernel's totals since start. `port` names a remote port
    /// (`Some` label, or "other"); listening ports are the handshake keys.
    pub fn update(&self, hists: &[(latency_key, latency_hist)], remote_port: &mut dyn FnMut(u16) -> String) {
        let listening: HashSet<u16> = hists
            .iter()
            .filter(|(k, _)| u32::from(k.kind) == latency_kind::LAT_HANDSHAKE.0)
            .map(|(k, _)| k.port)
            .collect();
        let mut merged = Merged::new();
        for (k, h) in hists {
            let kind = u32::from(k.kind);
            let (family, labels, unit) = if kind == latency_kind::LAT_HANDSHAKE.0 {
                (HANDSHAKE, vec![("direction", "in".to_string()), ("port", k.port.to_string())], 1e-9)
            } else if kind == latency_kind::LAT_CONNECT.0 {
                (HANDSHAKE, vec![("direction", "out".to_string()), ("port", remote_port(k.port))], 1e-9)
            } else {
                let port = if listening.contains(&k.port) { k.port.to_string() } else { remote_port(k.port) };
                (RTT, vec![("port", port)], 1e-6)
            };
            let (sum, _) = merged.entry((family, labels)).or_insert((latency_hist::default(), unit));
            for (s, n) in sum.slots.iter_mut().zip(h.slots) {
                *s += n;
            }
            sum.count += h.count;
            sum.sum += h.sum;
        }
        let mut families: BTreeMap<&str, Vec<Metric>> = BTreeMap::new();
        for ((family, labels), (h, unit)) in merged {
            let mut buckets = Vec::new();
            for b in BOUNDS {
                let below: u64 = h
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(s, _)| (slot_bounds(*s).1 as f64) * unit <= b + 1e-12)
                    .map(|(_, n)| *n)
                    .sum();
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(b);
                bucket.set_cumulative_count(below);
                buckets.push(bucket);
            }
            let mut hist = Histogram::default();
            hist.set_sample_count(h.count);
            hist.set_sample_sum(h.sum as f64 * unit);
            hist.set_bucket(buckets);
            let mut m = Metric::from_label(labels.iter().map(|(n, v)| label(n, v)).collect());
            m.set_histogram(hist);
            families.entry(family).or_default().push(m);
        }
        let out = families
            .into_iter()
            .map(|(name, metrics)| {
                let desc = self.descs.iter().find(|d| d.fq_name == name).expect("a desc per family");
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(desc.help.clone());
                mf.set_field_type(MetricType::HISTOGRAM);
                mf.set_metric(metrics);
                mf
            })
            .collect();
        *self.families.lock().unwrap_or_else(|e| e.into_inner()) = out;
    }
}

impl Collector for LatencyHistograms {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
