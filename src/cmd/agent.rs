//! `tcpscope agent`: the ingress counters of every interface given and the
//! connection view, as Prometheus metrics on an HTTP endpoint, until
//! SIGINT or SIGTERM.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::agent::metrics::Metrics;
use crate::agent::server::Server;
use crate::bpf::lifecycle::types;
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
    // Each interface, and its session while it is there. One that goes
    // away is not an error on a host where containers come and go: its
    // programs are gone, and the agent attaches again once it is back.
    let mut ifaces: Vec<(AttachArgs, Option<Session>)> = args
        .ifaces
        .iter()
        .map(|iface| {
            let attach = AttachArgs {
                iface: iface.clone(),
                hook: None,
                xdp_mode: None,
                btf: None,
                netns: args.netns.clone(),
            };
            (attach, None)
        })
        .collect();
    for (attach, session) in &mut ifaces {
        // At start every interface must be there: a typo is one clear line.
        let s = attach_counting(attach)?;
        metrics.declare_interface(&attach.iface, s.hook.name());
        *session = Some(s);
    }
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
            for (attach, session) in &mut ifaces {
                follow_interface(attach, session, &mut metrics);
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

/// The ingress programs on one interface, counting only (no events).
fn attach_counting(attach: &AttachArgs) -> Result<Session> {
    Session::start(attach, EventFilter::default().to_kernel(false)?, 4096)
}

/// Reads an interface's counters while it is there; says when it goes, and
/// attaches again once it is back.
fn follow_interface(attach: &AttachArgs, session: &mut Option<Session>, metrics: &mut Metrics) {
    match session {
        Some(s) => match s.presence.gone() {
            None => {
                if let Ok(c) = s.counters() {
                    metrics.observe_interface(&s.ifname, s.hook.name(), &c);
                }
            }
            Some(why) => {
                eprintln!("tcpscope: {why}; attaching again when it is back");
                *session = None;
            }
        },
        None => {
            if let Ok(s) = attach_counting(attach) {
                let id = s.link.id().map_or("?".into(), |i| i.to_string());
                eprintln!("tcpscope: {} is back: counting again (link id {id})", attach.iface);
                metrics.interface_attached_again(&attach.iface);
                *session = Some(s);
            }
        }
    }
}
