//! `tcpscope agent`: the agent component until SIGINT or SIGTERM (exit 0),
//! its configuration read again on SIGHUP; the events chosen as NDJSON on
//! standard output or in a rotated file, what changed on standard error.

use std::sync::atomic::Ordering;

use anyhow::Result;

use crate::agent::config::AgentConfig;
use crate::agent::service::Agent;
use crate::cli::AgentArgs;
use crate::cmd::{reload_flag, stop_flag};
use crate::output::event_log::EventLog;

pub fn run(args: &AgentArgs) -> Result<()> {
    let config = AgentConfig::resolve(args)?;
    if args.check {
        config.file_rules()?;
        eprintln!(
            "tcpscope: configuration good: interfaces {}, metrics on {}, control socket {}, guard {}, L7 hints {}",
            config.interfaces.join(", "),
            config.listen,
            config.control_socket.display(),
            if config.guard.is_some() { "on" } else { "off" },
            if config.l7.is_some() { "on" } else { "off" }
        );
        return Ok(());
    }
    let mut log = match &config.log.file {
        Some(f) => EventLog::file(f, config.log.max_bytes, config.log.keep)?,
        None => EventLog::stdout(),
    };
    let stop = stop_flag()?;
    let reload = reload_flag();
    let mut agent = Agent::start(config)?;
    for note in &agent.notes {
        eprintln!("tcpscope: {note}");
    }
    let c = agent.config();
    eprintln!(
        "tcpscope: agent {} on {} and following connections; metrics on http://{}/metrics; control API on {}{}; Ctrl-C to stop",
        if c.guard.is_some() { "guarding" } else { "counting" },
        c.interfaces.join(", "),
        agent.metrics_addr(),
        c.control_socket.display(),
        c.control_tcp.as_ref().map_or(String::new(), |t| format!(" and {}", t.addr)),
    );
    loop {
        let last = stop.load(Ordering::SeqCst);
        let step = agent.step(last);
        for s in step.said {
            eprintln!("tcpscope: {s}");
        }
        log.write(&step.lines);
        agent.log_lost(log.lost);
        if reload.swap(false, Ordering::SeqCst) {
            match AgentConfig::resolve(args).and_then(|c| agent.reload(c)) {
                Ok(said) => said.iter().for_each(|s| eprintln!("tcpscope: {s}")),
                Err(e) => eprintln!("tcpscope: reload failed, configuration unchanged: {e:#}"),
            }
        }
        if last {
            break;
        }
        std::thread::park_timeout(step.wait);
    }
    drop(agent);
    eprintln!("tcpscope: agent stopped");
    Ok(())
}
