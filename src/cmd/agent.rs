//! `tcpscope agent`: the ingress counters of every interface given and the
//! connection view, as Prometheus metrics on an HTTP endpoint, until
//! SIGINT or SIGTERM.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::agent::metrics::Metrics;
use crate::agent::server::Server;
use crate::bpf::lifecycle::types;
use crate::bpf::lifecycle::AcceptVia;
use crate::cli::{AgentArgs, AttachArgs};
use crate::cmd::{report_unavailable, stop_flag, Session};
use crate::filter::EventFilter;
use crate::view::conns::{ConnsView, ReasonNames};

pub fn run(args: &AgentArgs) -> Result<()> {
    crate::ensure_usage!(
        args.interval.is_finite() && args.interval >= 0.1,
        "--interval {}: use at least 0.1 seconds",
        args.interval
    );
    let stop = stop_flag()?;
    let mut metrics = Metrics::new()?;
    // The endpoint first: a port in use fails before anything is attached.
    let server = Server::start(&args.listen, metrics.registry.clone())?;
    let mut sessions = Vec::new();
    for iface in &args.ifaces {
        let attach = AttachArgs {
            iface: iface.clone(),
            hook: None,
            xdp_mode: None,
            btf: None,
            netns: args.netns.clone(),
        };
        // Events off: the programs only count.
        let session = Session::start(&attach, EventFilter::default().to_kernel(false)?, 4096)?;
        metrics.declare_interface(iface, session.hook.name());
        sessions.push(session);
    }
    // One lifecycle object for both: the events and the histograms.
    let config = types::lifecycle_config { events: 1, histograms: 1, ..Default::default() };
    let mut conns = ConnsView::start(config, AcceptVia::Cgroup)?;
    report_unavailable(&conns.lc);
    let reasons = ReasonNames::load();
    let drop_reason = |r: u32| reasons.name(types::conn_event_kind::CONN_DROP.0 as u8, r);
    let names: Vec<&str> = sessions.iter().map(|s| s.ifname.as_str()).collect();
    eprintln!(
        "tcpscope: agent counting on {} and following connections; metrics on http://{}/metrics; Ctrl-C to stop",
        names.join(", "),
        server.addr
    );
    let interval = Duration::from_secs_f64(args.interval);
    let mut next = Instant::now();
    loop {
        let last = stop.load(Ordering::SeqCst);
        let wait = conns.pass(last, |e| metrics.observe_conn_event(e, &drop_reason));
        if last || Instant::now() >= next {
            for s in &sessions {
                s.check_present()?;
                metrics.observe_interface(&s.ifname, s.hook.name(), &s.counters()?);
            }
            metrics.observe_conns_lost(conns.lost());
            metrics.observe_latency(&crate::view::latency::read_histograms(&conns.lc));
            next = Instant::now() + interval;
        }
        if last {
            break;
        }
        std::thread::park_timeout(wait.unwrap_or(Duration::ZERO).min(interval));
    }
    drop(server);
    eprintln!("tcpscope: agent stopped");
    Ok(())
}
