//! The latency view: handshake, connect and RTT histograms per port, kept
//! by the lifecycle programs, read as totals since start or per interval.
//! It never prints.

use std::collections::HashMap;

use anyhow::Result;
use libbpf_rs::MapCore;

use crate::bpf::lifecycle::{self, types, Lifecycle};
use crate::histogram::slot_bounds;

pub struct LatencyView {
    pub lc: Lifecycle,
    /// The totals at the last snapshot, per (kind, port).
    before: HashMap<(u8, u16), types::latency_hist>,
}

impl LatencyView {
    pub fn start(ports: &[u16]) -> Result<Self> {
        let lc = lifecycle::start(
            types::lifecycle_config { histograms: 1, ..lifecycle::config_for_ports(ports)? },
            Some(lifecycle::LATENCY_TRACEPOINTS),
            None,
            None,
        )?;
        Ok(LatencyView { lc, before: HashMap::new() })
    }

    /// Every histogram, sorted by kind and port: the totals since start,
    /// or with `interval_only` what came since the last snapshot.
    pub fn snapshot(&mut self, interval_only: bool) -> Vec<(types::latency_key, types::latency_hist)> {
        let mut out = read_histograms(&self.lc);
        if interval_only {
            for (k, h) in &mut out {
                let total = *h;
                if let Some(b) = self.before.get(&(k.kind, k.port)) {
                    for (s, p) in h.slots.iter_mut().zip(b.slots) {
                        *s -= p.min(*s);
                    }
                    h.count -= b.count.min(h.count);
                    h.sum -= b.sum.min(h.sum);
                }
                h.max = h.slots.iter().rposition(|n| *n > 0).map_or(0, |s| slot_bounds(s).1);
                self.before.insert((k.kind, k.port), total);
            }
        }
        out
    }
}

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
