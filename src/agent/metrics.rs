//! The agent's Prometheus metrics: the kernel's totals (per-interface
//! counters, events seen by the connection view) turned into Prometheus
//! counters that only ever go up, even when a program is attached again
//! and its own totals start from 0. Nothing here reads the kernel; the
//! agent hands totals and events in.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::agent::histograms::LatencyHistograms;
use crate::bpf::counters::Counters;
use crate::bpf::lifecycle::types::{conn_event, conn_event_kind as K, latency_hist, latency_key};
use crate::names::{FLAG_NAMES, GUARD_DROP_NAMES, MALFORMED_NAMES};

/// Remote ports of outgoing connections get a label each up to this many;
/// the rest share `port="other"`. Local ports of incoming connections are
/// listening ports, as many as the host has.
pub const REMOTE_PORTS: usize = 32;

pub struct Metrics {
    pub registry: Registry,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    flags: IntCounterVec,
    malformed: IntCounterVec,
    guard_dropped: IntCounterVec,
    events_lost: IntCounterVec,
    opened: IntCounterVec,
    closed: IntCounterVec,
    retransmits: IntCounterVec,
    resets: IntCounterVec,
    drops: IntCounterVec,
    zero_windows: IntCounterVec,
    alerts: IntCounterVec,
    guard_rules: IntGaugeVec,
    /// Top sources, when on: packets and SYNs gauges, and the sources shown.
    top: Option<(IntGaugeVec, IntGaugeVec, HashSet<String>)>,
    /// Connections by workload, when that is on: (counter, labels seen, cap).
    workloads: Option<(IntCounterVec, HashSet<String>, usize)>,
    /// The programs' cost, when BPF run-time statistics are on.
    bpf_runs: Option<(CounterVec, IntCounterVec)>,
    /// L7 hints, when on.
    l7: Option<L7Metrics>,
    /// The last total seen per series, to add only what is new.
    last: HashMap<(&'static str, Vec<String>), u64>,
    remote_ports: HashSet<u16>,
    /// Open connections seen: cookie to (direction, port label).
    open: HashMap<u64, (&'static str, String)>,
    latency: LatencyHistograms,
}

/// TLS versions as `version` labels, highest first; anything else "other".
const TLS_VERSIONS: [&str; 5] = ["1.3", "1.2", "1.1", "1.0", "ssl3"];

/// The reasons an L7 record gives up, all exported from the start.
pub const GAVE_UP_REASONS: [&str; 4] = ["closed", "too_large", "timeout", "state_evicted"];

struct L7Metrics {
    connections: IntCounterVec,
    gave_up: IntCounterVec,
    hellos: IntCounterVec,
    names: Option<TopNames>,
}

/// The most seen TLS server names and HTTP hosts over a window. Counted
/// with the space-saving algorithm in a table of 8·K names per kind, so
/// that a flood of distinct names costs fixed memory: a name that is truly
/// among the K most seen is kept (its count may be over by at most the
/// smallest count in the table).
struct TopNames {
    k: usize,
    gauge: IntGaugeVec,
    counts: HashMap<&'static str, HashMap<String, u64>>,
    totals: HashMap<&'static str, u64>,
    started: std::time::Instant,
    shown: HashSet<(&'static str, String)>,
}

impl TopNames {
    fn new(k: usize, gauge: IntGaugeVec) -> Self {
        TopNames {
            k,
            gauge,
            counts: HashMap::new(),
            totals: HashMap::new(),
            started: std::time::Instant::now(),
            shown: HashSet::new(),
        }
    }

    fn count(&mut self, kind: &'static str, name: &str) {
        *self.totals.entry(kind).or_insert(0) += 1;
        let table = self.counts.entry(kind).or_default();
        if let Some(n) = table.get_mut(name) {
            *n += 1;
        } else if table.len() < 8 * self.k {
            table.insert(name.to_string(), 1);
        } else if let Some((least, n)) = table.iter().min_by_key(|(_, n)| **n).map(|(k, n)| (k.clone(), *n)) {
            table.remove(&least);
            table.insert(name.to_string(), n + 1);
        }
    }

    fn publish_if_due(&mut self, window: std::time::Duration) {
        if self.started.elapsed() < window {
            return;
        }
        self.started = std::time::Instant::now();
        let mut now = HashSet::new();
        for kind in ["sni", "host"] {
            let mut rows: Vec<(String, u64)> =
                self.counts.remove(kind).unwrap_or_default().into_iter().collect();
            rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            rows.truncate(self.k);
            let total = self.totals.remove(kind).unwrap_or(0);
            let shown: u64 = rows.iter().map(|(_, n)| n).sum();
            self.gauge.with_label_values(&[kind, "other"]).set(total.saturating_sub(shown) as i64);
            for (name, n) in rows {
                self.gauge.with_label_values(&[kind, &name]).set(n as i64);
                now.insert((kind, name));
            }
        }
        for (kind, name) in self.shown.difference(&now) {
            let _ = self.gauge.remove_label_values(&[kind, name.as_str()]);
        }
        self.shown = now;
    }
}

/// A remote port's label: its number for the first REMOTE_PORTS ports seen,
/// "other" after.
fn remote_port_label(seen: &mut HashSet<u16>, port: u16) -> String {
    if seen.contains(&port) || seen.len() < REMOTE_PORTS && seen.insert(port) {
        port.to_string()
    } else {
        "other".to_string()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let latency = LatencyHistograms::new()?;
        registry.register(Box::new(latency.clone()))?;
        let r = &registry;
        Ok(Metrics {
            packets: counter(
                r,
                "tcpscope_packets_total",
                "Packets the ingress hook saw.",
                &["interface", "hook"],
            )?,
            bytes: counter(
                r,
                "tcpscope_bytes_total",
                "Frame bytes the ingress hook saw.",
                &["interface", "hook"],
            )?,
            flags: counter(
                r,
                "tcpscope_tcp_flags_total",
                "TCP packets with each flag set.",
                &["interface", "flag"],
            )?,
            malformed: counter(
                r,
                "tcpscope_malformed_total",
                "Malformed packets by reason.",
                &["interface", "reason"],
            )?,
            guard_dropped: counter(
                r,
                "tcpscope_guard_dropped_packets_total",
                "Packets the guard dropped, by reason.",
                &["interface", "reason"],
            )?,
            events_lost: counter(r, "tcpscope_events_lost_total", "Events lost, by view.", &["view"])?,
            opened: counter(
                r,
                "tcpscope_connections_opened_total",
                "Completed handshakes: in (local listening port) or out (remote port).",
                &["direction", "port"],
            )?,
            closed: counter(
                r,
                "tcpscope_connections_closed_total",
                "Closes of connections whose handshake the agent saw.",
                &["direction", "port"],
            )?,
            retransmits: counter(
                r,
                "tcpscope_retransmits_total",
                "Retransmitted segments, by the connection's port label.",
                &["port"],
            )?,
            resets: counter(r, "tcpscope_resets_total", "Resets sent or received.", &["direction"])?,
            drops: counter(
                r,
                "tcpscope_drops_total",
                "TCP packets the kernel dropped, by reason.",
                &["reason"],
            )?,
            zero_windows: counter(
                r,
                "tcpscope_zero_windows_total",
                "Zero windows advertised by peers.",
                &["port"],
            )?,
            alerts: counter(r, "tcpscope_alerts_total", "Alerts the guard raised, by kind.", &["kind"])?,
            guard_rules: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tcpscope_guard_rules",
                        "Rules in the guard's lists (the largest over guarded interfaces).",
                    ),
                    &["list"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            bpf_runs: None,
            l7: None,
            workloads: None,
            top: None,
            registry,
            last: HashMap::new(),
            remote_ports: HashSet::new(),
            open: HashMap::new(),
            latency,
        })
    }

    /// Series with a fixed label set exist from the start, at 0, so that a
    /// rate over them is defined before the first event.
    pub fn declare_interface(&self, iface: &str, hook: &str) {
        self.packets.with_label_values(&[iface, hook]);
        self.bytes.with_label_values(&[iface, hook]);
        for f in FLAG_NAMES {
            self.flags.with_label_values(&[iface, f]);
        }
        for m in &MALFORMED_NAMES[1..] {
            self.malformed.with_label_values(&[iface, m]);
        }
        for g in &GUARD_DROP_NAMES[1..] {
            self.guard_dropped.with_label_values(&[iface, g]);
        }
        for d in ["sent", "received"] {
            self.resets.with_label_values(&[d]);
        }
        // The agent's ingress programs only count (no events to lose);
        // the connection view's events can be lost.
        self.events_lost.with_label_values(&["conns"]);
        self.events_lost.with_label_values(&["log"]);
    }

    /// The guard is on: its series, at 0 until something happens.
    pub fn declare_guard(&self) {
        for k in crate::names::alert_kinds() {
            self.alerts.with_label_values(&[k]);
        }
        for l in ["allow", "block"] {
            self.guard_rules.with_label_values(&[l]);
        }
    }

    pub fn observe_alert(&self, kind: &str) {
        self.alerts.with_label_values(&[kind]).inc();
    }

    /// The rules the guards hold: (allow, block).
    pub fn observe_guard_rules(&self, (allow, block): (usize, usize)) {
        self.guard_rules.with_label_values(&["allow"]).set(allow as i64);
        self.guard_rules.with_label_values(&["block"]).set(block as i64);
    }

    /// Top sources are on: their gauges, at first with the `other` row only.
    pub fn declare_top_sources(&mut self) -> Result<()> {
        if self.top.is_none() {
            let gauge = |name: &str, help: &str| -> Result<IntGaugeVec> {
                let g = IntGaugeVec::new(Opts::new(name, help), &["source"])?;
                self.registry.register(Box::new(g.clone()))?;
                g.with_label_values(&["other"]);
                Ok(g)
            };
            let packets = gauge(
                "tcpscope_top_source_packets",
                "TCP packets from each of the top sources over the last window; the rest as source=\"other\".",
            )?;
            let syns = gauge(
                "tcpscope_top_source_syns",
                "SYNs from each of the top sources over the last window; the rest as source=\"other\".",
            )?;
            self.top = Some((packets, syns, HashSet::new()));
        }
        Ok(())
    }

    /// A window's ranking: its rows set, and the series of sources that
    /// left the top removed.
    pub fn observe_top_sources(&mut self, r: &crate::agent::top_sources::Ranking) {
        let Some((packets, syns, shown)) = &mut self.top else { return };
        let mut now = HashSet::new();
        for (g, rows, other) in [(&*packets, &r.packets, r.packets_other), (&*syns, &r.syns, r.syns_other)] {
            g.with_label_values(&["other"]).set(other as i64);
            for (a, n) in rows {
                let label = a.to_string();
                g.with_label_values(&[&label]).set(*n as i64);
                now.insert(label);
            }
        }
        for gone in shown.difference(&now) {
            for g in [&*packets, &*syns] {
                let _ = g.remove_label_values(&[gone]);
            }
        }
        // A source in one list only: its row in the other goes.
        for label in &now {
            if !r.packets.iter().any(|(a, _)| &a.to_string() == label) {
                let _ = packets.remove_label_values(&[label]);
            }
            if !r.syns.iter().any(|(a, _)| &a.to_string() == label) {
                let _ = syns.remove_label_values(&[label]);
            }
        }
        *shown = now;
    }

    /// Workload labels are on, at most `cap` of them.
    pub fn declare_workloads(&mut self, cap: usize) -> Result<()> {
        if self.workloads.is_none() {
            let c = counter(
                &self.registry,
                "tcpscope_workload_connections_opened_total",
                "Completed handshakes by the workload that owns the socket (pod, container, unit); past the cap, \"other\".",
                &["direction", "workload"],
            )?;
            self.workloads = Some((c, HashSet::new(), cap));
        }
        Ok(())
    }

    /// A connection opened by `workload`.
    pub fn observe_workload(&mut self, direction: &str, workload: &str) {
        let Some((c, seen, cap)) = &mut self.workloads else { return };
        let label = if seen.contains(workload) || seen.len() < *cap && seen.insert(workload.to_string()) {
            workload
        } else {
            "other"
        };
        c.with_label_values(&[direction, label]).inc();
    }

    /// BPF run-time statistics are on: their series.
    pub fn declare_bpf_stats(&mut self) -> Result<()> {
        if self.bpf_runs.is_none() {
            let time = CounterVec::new(
                Opts::new(
                    "tcpscope_bpf_program_run_seconds_total",
                    "Time the kernel spent running each BPF program.",
                ),
                &["program"],
            )?;
            self.registry.register(Box::new(time.clone()))?;
            let runs = counter(
                &self.registry,
                "tcpscope_bpf_program_runs_total",
                "Runs of each BPF program.",
                &["program"],
            )?;
            self.bpf_runs = Some((time, runs));
        }
        Ok(())
    }

    /// A program's totals: `owner` tells apart the same program loaded for
    /// several interfaces, which share its series.
    pub fn observe_bpf(&mut self, owner: &str, program: &str, run_ns: u64, runs: u64) {
        let Some((time, count)) = self.bpf_runs.clone() else { return };
        let mut new = |what: &'static str, total: u64| {
            let key = (what, vec![owner.to_string(), program.to_string()]);
            let last = self.last.insert(key, total).unwrap_or(0);
            if total >= last {
                total - last
            } else {
                total
            }
        };
        let (ns, n) = (new("bpf-ns", run_ns), new("bpf-runs", runs));
        time.with_label_values(&[program]).inc_by(ns as f64 / 1e9);
        count.with_label_values(&[program]).inc_by(n);
    }

    /// An interface no longer followed: its series go.
    pub fn forget_interface(&mut self, iface: &str) {
        self.interface_attached_again(iface);
        for c in [&self.packets, &self.bytes, &self.flags, &self.malformed, &self.guard_dropped] {
            let families = prometheus::core::Collector::collect(c);
            for m in families.iter().flat_map(|f| f.get_metric()) {
                // Each of these has "interface" first, and one label more.
                let label = |named: bool| m.get_label().iter().find(|l| (l.name() == "interface") == named);
                if let (Some(i), Some(other)) = (label(true), label(false)) {
                    if i.value() == iface {
                        let _ = c.remove_label_values(&[iface, other.value()]);
                    }
                }
            }
        }
    }

    /// Adds to `c`'s series what `total` has beyond the last total seen; a
    /// total below it means the program started again from 0.
    fn advance(&mut self, c: &IntCounterVec, name: &'static str, labels: &[&str], total: u64) {
        let key = (name, labels.iter().map(|s| s.to_string()).collect());
        let last = self.last.insert(key, total).unwrap_or(0);
        let new = if total >= last { total - last } else { total };
        c.with_label_values(labels).inc_by(new);
    }

    /// The interface's programs are new (attached again): their totals
    /// start from 0, and all of them are news.
    pub fn interface_attached_again(&mut self, iface: &str) {
        self.last.retain(|(_, labels), _| labels.first().map(String::as_str) != Some(iface));
    }

    /// An interface's counters, as totals since its program was attached.
    pub fn observe_interface(&mut self, iface: &str, hook: &str, c: &Counters) {
        let k = &c.0;
        let (packets, bytes, flags, malformed, guard) = (
            self.packets.clone(),
            self.bytes.clone(),
            self.flags.clone(),
            self.malformed.clone(),
            self.guard_dropped.clone(),
        );
        self.advance(&packets, "packets", &[iface, hook], k.packets);
        self.advance(&bytes, "bytes", &[iface, hook], k.bytes);
        for (f, n) in FLAG_NAMES.iter().zip(k.flag) {
            self.advance(&flags, "flags", &[iface, f], n);
        }
        for (m, n) in MALFORMED_NAMES.iter().zip(k.malformed).skip(1) {
            self.advance(&malformed, "malformed", &[iface, m], n);
        }
        for (g, n) in GUARD_DROP_NAMES.iter().zip(k.guard_dropped).skip(1) {
            self.advance(&guard, "guard", &[iface, g], n);
        }
    }

    /// Lines the event log could not write, in total.
    pub fn observe_log_lost(&mut self, total: u64) {
        let lost = self.events_lost.clone();
        self.advance(&lost, "lost-log", &["log"], total);
    }

    /// Events the connection view lost, in total.
    pub fn observe_conns_lost(&mut self, total: u64) {
        let lost = self.events_lost.clone();
        self.advance(&lost, "lost-conns", &["conns"], total);
    }

    fn port_label(&mut self, direction: &str, port: u16) -> String {
        if direction == "in" {
            return port.to_string();
        }
        remote_port_label(&mut self.remote_ports, port)
    }

    /// The kernel's latency histograms, as totals since start.
    pub fn observe_latency(&mut self, hists: &[(latency_key, latency_hist)]) {
        let ports = &mut self.remote_ports;
        self.latency.update(hists, &mut |p| remote_port_label(ports, p));
    }

    /// The port label of a connection whose handshake was seen, else
    /// "other": a port label is never made from an unbounded set.
    fn known_port(&self, cookie: u64) -> String {
        self.open.get(&cookie).map_or_else(|| "other".to_string(), |(_, p)| p.clone())
    }

    /// One event of the connection view, joined with its socket's earlier
    /// ones; `drop_reason` names a drop's reason.
    pub fn observe_conn_event(&mut self, e: &conn_event, drop_reason: &dyn Fn(u32) -> String) {
        let kind = u32::from(e.kind);
        if kind == K::CONN_ESTABLISHED_IN.0 || kind == K::CONN_ESTABLISHED_OUT.0 {
            let (direction, port) =
                if kind == K::CONN_ESTABLISHED_IN.0 { ("in", e.sport) } else { ("out", e.dport) };
            let port = self.port_label(direction, port);
            self.opened.with_label_values(&[direction, &port]).inc();
            // The connection's other series exist from its start, at 0: a
            // rate over a series born with its first increments misses them.
            self.closed.with_label_values(&[direction, &port]);
            self.retransmits.with_label_values(&[&port]);
            self.zero_windows.with_label_values(&[&port]);
            // Bounded: a host with more open connections than this has its
            // oldest closes uncounted rather than the agent growing.
            if self.open.len() < 1 << 20 {
                self.open.insert(e.cookie, (direction, port));
            }
        } else if kind == K::CONN_CLOSE.0 {
            if let Some((direction, port)) = self.open.remove(&e.cookie) {
                self.closed.with_label_values(&[direction, &port]).inc();
            }
        } else if kind == K::CONN_RETRANSMIT.0 {
            let port = self.known_port(e.cookie);
            self.retransmits.with_label_values(&[&port]).inc();
        } else if kind == K::CONN_RESET_TX.0 {
            self.resets.with_label_values(&["sent"]).inc();
        } else if kind == K::CONN_RESET_RX.0 {
            self.resets.with_label_values(&["received"]).inc();
        } else if kind == K::CONN_DROP.0 {
            self.drops.with_label_values(&[&drop_reason(e.reason)]).inc();
        } else if kind == K::CONN_ZERO_WINDOW.0 {
            let port = self.known_port(e.cookie);
            self.zero_windows.with_label_values(&[&port]).inc();
        }
    }

    /// L7 hints are on: their series, the give-ups at 0 by reason, and the
    /// top names' gauge if `top_names` asks for K of each kind.
    pub fn declare_l7(&mut self, top_names: Option<usize>) -> Result<()> {
        if self.l7.is_none() {
            let r = &self.registry;
            let l7 = L7Metrics {
                connections: counter(
                    r,
                    "tcpscope_l7_connections_total",
                    "Incoming connections by the protocol their first bytes spoke (unknown included), and the local (listening) port.",
                    &["proto", "port"],
                )?,
                gave_up: counter(
                    r,
                    "tcpscope_l7_gave_up_total",
                    "Connections whose first message was not named: closed first, too large, timed out, or its state evicted (or never kept: the kernel's flow table was full).",
                    &["reason"],
                )?,
                hellos: counter(
                    r,
                    "tcpscope_tls_client_hellos_total",
                    "TLS ClientHellos by the highest version offered, and whether a post-quantum key exchange group was offered.",
                    &["version", "pq"],
                )?,
                names: None,
            };
            for reason in GAVE_UP_REASONS {
                l7.gave_up.with_label_values(&[reason]);
            }
            self.events_lost.with_label_values(&["l7"]);
            self.l7 = Some(l7);
        }
        let l7 = self.l7.as_mut().expect("just made");
        match (top_names, &mut l7.names) {
            (Some(k), Some(names)) => names.k = k,
            (Some(k), None) => {
                let gauge = IntGaugeVec::new(
                    Opts::new(
                        "tcpscope_l7_top_names",
                        "Connections per TLS server name (kind=\"sni\") or HTTP host (kind=\"host\") over the last window: the K most seen, the rest as name=\"other\".",
                    ),
                    &["kind", "name"],
                )?;
                self.registry.register(Box::new(gauge.clone()))?;
                for kind in ["sni", "host"] {
                    gauge.with_label_values(&[kind, "other"]);
                }
                l7.names = Some(TopNames::new(k, gauge));
            }
            (None, Some(_)) => {
                if let Some(names) = l7.names.take() {
                    let _ = self.registry.unregister(Box::new(names.gauge));
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// One connection's L7 record.
    pub fn observe_l7(&mut self, r: &tcpscope_wire::l7::track::Record) {
        // A listening port: the kernel follows only connections that a
        // listening socket takes (a scan's SYNs to every port make none).
        let port = r.dport.to_string();
        let Some(m) = &mut self.l7 else { return };
        let l = &r.l7;
        if let Some(why) = l.gave_up {
            m.gave_up.with_label_values(&[why]).inc();
            return;
        }
        m.connections.with_label_values(&[l.proto.as_ref(), port.as_str()]).inc();
        if l.proto == "tls" {
            // The highest known version offered; a label from a fixed set
            // (a client may offer any number).
            let offered = l.versions.as_deref().unwrap_or_default();
            let version =
                TLS_VERSIONS.iter().find(|v| offered.iter().any(|o| o == *v)).copied().unwrap_or("other");
            let pq = if l.pq == Some(true) { "true" } else { "false" };
            m.hellos.with_label_values(&[version, pq]).inc();
        }
        if let Some(names) = &mut m.names {
            if let Some(sni) = &l.sni {
                names.count("sni", sni);
            }
            if let Some(host) = &l.host {
                names.count("host", host);
            }
        }
    }

    /// An interface's L7 totals since its program was attached: records
    /// the kernel could not write, and SYNs it could not follow (counted as
    /// `state_evicted` give-ups: no state could be kept for them).
    pub fn observe_l7_totals(&mut self, iface: &str, lost: u64, untracked: u64) {
        let Some(m) = &self.l7 else { return };
        let (gave_up, lost_c) = (m.gave_up.clone(), self.events_lost.clone());
        for (name, total, c, label) in
            [("l7-lost", lost, &lost_c, "l7"), ("l7-untracked", untracked, &gave_up, "state_evicted")]
        {
            let last = self.last.insert((name, vec![iface.to_string()]), total).unwrap_or(0);
            c.with_label_values(&[label]).inc_by(if total >= last { total - last } else { total });
        }
    }

    /// The top names' window, if it is over: its rows shown, the rest
    /// gone.
    pub fn l7_names_window(&mut self, window: std::time::Duration) {
        if let Some(names) = self.l7.as_mut().and_then(|m| m.names.as_mut()) {
            names.publish_if_due(window);
        }
    }

    /// The text exposition format 0.0.4.
    pub fn text(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
