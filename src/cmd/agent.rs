//! `tcpscope agent`: the ingress counters of every interface given and the
//! connection view, as Prometheus metrics on an HTTP endpoint, until
//! SIGINT or SIGTERM.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::agent::interfaces::Interfaces;
use crate::agent::metrics::Metrics;
use crate::agent::server::Server;
use crate::bpf::lifecycle::types;
use crate::cli::AgentArgs;
use crate::cmd::{report_unavailable, stop_flag};
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
    let mut ifaces = Interfaces::start(&args.ifaces, args.netns.as_deref(), &mut metrics)?;
    let config = types::lifecycle_config { events: 1, histograms: 1, ..Default::default() };
    let mut conns = ConnsView::start(config, None)?;
    report_unavailable(&conns.lc);
    let reasons = ReasonNames::load();
    let drop_reason = |r: u32| reasons.name(types::conn_event_kind::CONN_DROP.0 as u8, r);
    let names: Vec<&str> = args.ifaces.iter().map(String::as_str).collect();
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
            for said in ifaces.poll(&mut metrics) {
                eprintln!("tcpscope: {said}");
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
