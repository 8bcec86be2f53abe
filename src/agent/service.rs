//! The agent as one component: its interfaces (counting or guarding), the
//! connection view with its latency histograms, the metrics endpoint and
//! the control API, started in that order so that a port in use or a
//! socket taken fails before anything is attached. `step` reads what came;
//! `reload` takes a new configuration. Dropping it detaches everything.
//! Says what happened; never prints.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::agent::config::AgentConfig;
use crate::agent::control::{Control, Shared};
use crate::agent::interfaces::Interfaces;
use crate::agent::metrics::Metrics;
use crate::agent::rules::RuleStore;
use crate::agent::server::Server;
use crate::bpf::lifecycle::types;
use crate::policy::Rule;
use crate::view::conns::{ConnsView, ReasonNames};

/// What one step read: lines to say (stderr), NDJSON lines for the event
/// log, and how long the caller may wait before the next step.
#[derive(Default)]
pub struct Step {
    pub said: Vec<String>,
    pub lines: Vec<String>,
    pub wait: Duration,
}

/// The connection event names the log takes.
fn logged_conn_events(kinds: &[String]) -> Vec<&'static str> {
    crate::agent::config::LOG_KINDS
        .iter()
        .filter(|(k, _)| kinds.iter().any(|x| x == k))
        .flat_map(|(_, events)| events.iter().copied())
        .collect()
}

/// A rule change as a log line: `{"event":"rule_change","ts_ns":..,...}`.
pub fn rule_change_line(mut change: serde_json::Value) -> String {
    let now = crate::bpf::clock_ns(libc::CLOCK_REALTIME);
    if let Some(o) = change.as_object_mut() {
        o.insert("event".into(), "rule_change".into());
        o.insert("ts_ns".into(), now.into());
    }
    change.to_string()
}

/// Fields drop in order: the listeners first, then the programs.
pub struct Agent {
    control: Control,
    server: Server,
    pub shared: Arc<Shared>,
    conns: ConnsView,
    ifaces: Interfaces,
    metrics: Metrics,
    reasons: ReasonNames,
    file_rules: Vec<Rule>,
    config: AgentConfig,
    next: Instant,
    /// Monotonic to wall-clock time, for logged events.
    clock_offset: u64,
    /// The top sources' windows, when asked for.
    top: Option<crate::agent::top_sources::TopSources>,
    /// Who owns each socket, when asked for.
    workloads: Option<crate::workload::Workloads>,
    /// BPF run-time statistics, on while this lives.
    run_stats: Option<crate::bpf::run_stats::RunStats>,
    /// What the user should hear about how it started.
    pub notes: Vec<String>,
}

/// The file's rules and the agent's own, for one interface.
fn rules_for<'a>(file: &'a [Rule], shared: &'a Shared) -> impl Fn(&str) -> Vec<Rule> + 'a {
    move |iface| {
        let mut all = file.to_vec();
        all.extend(shared.store.lock().unwrap_or_else(|e| e.into_inner()).for_interface(iface));
        all
    }
}

/// The file the agent keeps its own rules in.
pub fn store_path(config: &AgentConfig) -> std::path::PathBuf {
    config.state_dir.join("agent-rules.json")
}

impl Agent {
    pub fn start(config: AgentConfig) -> Result<Self> {
        crate::bpf::preflight::check_privileges()?;
        let file_rules = config.file_rules()?;
        let store = RuleStore::load(&store_path(&config))?;
        let mut metrics = Metrics::new()?;
        let shared = Shared::new(store);
        let server = Server::start(&config.listen, metrics.registry.clone(), shared.ready.clone())?;
        let control = Control::start(&config.control_socket, config.control_tcp.clone(), shared.clone())?;
        if config.guard.is_some() {
            metrics.declare_guard();
        }
        let mut notes = Vec::new();
        // On before any program runs, so that every run is counted.
        // Statistics cost every program a little: only when asked for, and
        // their absence costs only their own metrics.
        let run_stats = match config.bpf_stats.then(crate::bpf::run_stats::RunStats::enable) {
            Some(Ok(s)) => {
                metrics.declare_bpf_stats()?;
                Some(s)
            }
            Some(Err(e)) => {
                notes.push(format!("bpf_stats unavailable: {e:#}"));
                None
            }
            None => None,
        };
        if config.top_sources.is_some() {
            metrics.declare_top_sources()?;
        }
        if let Some(l7) = &config.l7 {
            metrics.declare_l7(l7.top_names.as_ref().map(|t| t.k))?;
            if config.guard.as_ref().is_some_and(|g| !g.inspect) {
                notes.push(
                    "L7 hints need the guard to inspect, and [guard] inspect = false: no connection will be named (set inspect = true, the agent's default)".to_string(),
                );
            }
        }
        let ifaces = Interfaces::start(
            &config.interfaces,
            config.netns.as_deref(),
            config.guard.clone(),
            config.top_sources.is_some(),
            config.l7.as_ref().map(|l| l.protocols.clone()),
            &mut metrics,
            &rules_for(&file_rules, &shared),
        )?;
        let lc = types::lifecycle_config { events: 1, histograms: 1, ..Default::default() };
        let conns = ConnsView::start(lc, None)?;
        notes.extend(conns.lc.unavailable.iter().map(|(view, why)| format!("{view} unavailable: {why}")));
        let workloads = match &config.workload {
            Some(w) => {
                metrics.declare_workloads(w.max_labels)?;
                Some(crate::workload::Workloads::new(&w.cgroup_root, &w.pods_dir))
            }
            None => None,
        };
        let mut agent = Agent {
            control,
            server,
            shared,
            conns,
            ifaces,
            metrics,
            reasons: ReasonNames::load(),
            file_rules,
            config,
            next: Instant::now(),
            clock_offset: crate::bpf::monotonic_to_realtime_offset(),
            run_stats,
            workloads,
            top: None,
            notes,
        };
        agent.top = agent
            .config
            .top_sources
            .as_ref()
            .map(|t| crate::agent::top_sources::TopSources::new(t.k, t.window));
        agent.publish();
        Ok(agent)
    }

    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// What the control API shows of the interfaces, and readiness.
    fn publish(&self) {
        *self.shared.guarded.lock().unwrap_or_else(|e| e.into_inner()) = self.ifaces.guarded();
        *self.shared.interfaces.lock().unwrap_or_else(|e| e.into_inner()) = self.ifaces.names();
        self.shared.ready.store(self.ifaces.all_attached(), Ordering::SeqCst);
        let _ = &self.control;
    }

    /// Reads the connection events that came, and, once an interval, the
    /// counters, the histograms and the guards' alerts.
    pub fn step(&mut self, last: bool) -> Step {
        let (metrics, reasons) = (&mut self.metrics, &self.reasons);
        let drop_reason = |r: u32| reasons.name(types::conn_event_kind::CONN_DROP.0 as u8, r);
        let logged = logged_conn_events(&self.config.log.events);
        let offset = self.clock_offset;
        let mut out = Vec::new();
        let workloads = &mut self.workloads;
        let wait = self.conns.pass(last, |e| {
            metrics.observe_conn_event(e, &drop_reason);
            let kind = u32::from(e.kind);
            let opened = kind == types::conn_event_kind::CONN_ESTABLISHED_IN.0
                || kind == types::conn_event_kind::CONN_ESTABLISHED_OUT.0;
            let logs = logged.contains(&crate::names::conn_kind_name(e.kind));
            let owner =
                if logs || opened { workloads.as_mut().and_then(|w| w.get(e.cgroup_id)) } else { None };
            if let Some(w) = owner.filter(|_| opened) {
                let direction =
                    if kind == types::conn_event_kind::CONN_ESTABLISHED_IN.0 { "in" } else { "out" };
                metrics.observe_workload(direction, &w.label());
            }
            if logs {
                let why =
                    if crate::conn::has::reason(e) { reasons.name(e.kind, e.reason) } else { String::new() };
                crate::output::json::write_conn_event(&mut out, e, e.ts_ns + offset, &why);
                if let Some(w) = owner {
                    // The object gains one key: `"workload":{...}`.
                    out.pop();
                    out.extend_from_slice(b",\"workload\":");
                    out.extend_from_slice(&serde_json::to_vec(w).unwrap_or_else(|_| b"null".to_vec()));
                    out.push(b'}');
                }
                out.push(b'\n');
            }
        });
        let mut step = Step::default();
        step.lines.extend(String::from_utf8_lossy(&out).lines().map(str::to_string));
        // L7 records: every step, after the connection events that named
        // their ports.
        let log_l7 = self.config.log.events.iter().any(|k| k == "l7");
        let metrics = &mut self.metrics;
        let due = last || Instant::now() >= self.next;
        let l7_stats = self.ifaces.poll_l7(due, |iface, r| {
            metrics.observe_l7(&r);
            if log_l7 {
                step.lines.push(crate::output::l7::log_line(&r, iface));
            }
        });
        if due {
            let mut alerts = Vec::new();
            step.said =
                self.ifaces.poll(&mut self.metrics, &rules_for(&self.file_rules, &self.shared), &mut alerts);
            self.metrics.observe_conns_lost(self.conns.lost());
            self.metrics.observe_latency(&crate::view::latency::read_histograms(&self.conns.lc));
            if self.run_stats.is_some() {
                let mut stats = self.ifaces.program_stats();
                let conns = crate::bpf::run_stats::of_skel(&self.conns.lc.skel);
                stats.extend(conns.into_iter().map(|(p, ns, n)| ("conns".to_string(), p, ns, n)));
                for (owner, program, ns, n) in stats {
                    self.metrics.observe_bpf(&owner, &program, ns, n);
                }
            }
            if let Some(top) = self.top.as_mut().filter(|t| t.due()) {
                let ranking = top.collect(self.ifaces.sessions());
                self.metrics.observe_top_sources(&ranking);
            }
            if let Some(counts) = self.ifaces.rules {
                self.metrics.observe_guard_rules(counts);
            }
            for (iface, s) in &l7_stats {
                self.metrics.observe_l7_totals(iface, s.events_lost, s.untracked);
            }
            if let Some(top) = self.config.l7.as_ref().and_then(|l| l.top_names.as_ref()) {
                self.metrics.l7_names_window(top.window);
            }
            let log = |kind: &str| self.config.log.events.iter().any(|k| k == kind);
            for a in &alerts {
                self.metrics.observe_alert(a.alert);
                self.shared.push_alert(a.clone());
                if log("alerts") {
                    step.lines.push(a.json());
                }
            }
            let changes = std::mem::take(&mut *self.shared.changes.lock().unwrap_or_else(|e| e.into_inner()));
            if log("rules") {
                step.lines.extend(changes.into_iter().map(rule_change_line));
            }
            self.publish();
            self.next = Instant::now() + self.config.interval;
        }
        step.wait = wait.unwrap_or(Duration::ZERO).min(self.next.saturating_duration_since(Instant::now()));
        step
    }

    /// Lines the event log could not write, in total.
    pub fn log_lost(&mut self, total: u64) {
        self.metrics.observe_log_lost(total);
    }

    /// A new configuration: interfaces and the guard follow it; the rules
    /// file is read again. The listeners stay as they were (a new address
    /// needs a restart: said so).
    pub fn reload(&mut self, new: AgentConfig) -> Result<Vec<String>> {
        let file_rules = new.file_rules()?;
        let mut said = Vec::new();
        if new.listen != self.config.listen || new.control_socket != self.config.control_socket {
            said.push("the listen address and control socket stay as they were until a restart".to_string());
        }
        if new.bpf_stats != self.config.bpf_stats
            || new.control_tcp.is_some() != self.config.control_tcp.is_some()
        {
            said.push("bpf_stats and the control API's TCP listener change at the next restart".to_string());
        }
        if new.guard.is_some() {
            self.metrics.declare_guard();
        }
        self.file_rules = file_rules;
        let rules = rules_for(&self.file_rules, &self.shared);
        if let Some(l7) = &new.l7 {
            self.metrics.declare_l7(l7.top_names.as_ref().map(|t| t.k))?;
        }
        let protocols = new.l7.as_ref().map(|l| l.protocols.clone());
        said.extend(self.ifaces.reconfigure(
            &new.interfaces,
            new.guard.clone(),
            protocols,
            &mut self.metrics,
            &rules,
        ));
        let (added, removed) = self.ifaces.sync_rules(&rules)?;
        said.push(format!("configuration reloaded: {added} rules added, {removed} removed"));
        let change = serde_json::json!({"change": "reload", "added": added, "removed": removed});
        self.shared.changes.lock().unwrap_or_else(|e| e.into_inner()).push(change);
        let (listen, socket, stats) =
            (self.config.listen.clone(), self.config.control_socket.clone(), self.config.bpf_stats);
        let tcp = self.config.control_tcp.take();
        self.config =
            AgentConfig { listen, control_socket: socket, bpf_stats: stats, control_tcp: tcp, ..new };
        self.publish();
        Ok(said)
    }
}
