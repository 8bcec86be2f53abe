//! `tcpscope bench agent`: what the always-on agent costs. The
//! short-connection loop of `bench conns` with nothing attached, with the
//! agent (every view, counting), and with the agent guarding, interleaved
//! round by round; the agent's own CPU time per 1,000 connections and its
//! peak RSS; then the time of one scrape of /metrics with the worst-case
//! series of the default configuration for one interface and 1,000
//! listening ports (every series made: the metrics fed synthetic events
//! and histograms for every port label, drop reason and alert kind, and
//! served by the agent's own endpoint).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::conns::{placement, LoopRig};
use super::{median, Report};
use crate::cli::BenchArgs;
use crate::testhost::{ChildGuard, SERVER_IF};

const LISTEN: &str = "127.0.0.1:19899";

/// user + system CPU time of process `pid`, in ns.
fn cpu_ns(pid: u32) -> Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the agent's /proc stat")?;
    // After the command's closing parenthesis: state (field 3), then
    // ppid, ...; utime and stime are fields 14 and 15.
    let after: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    let field = |n: usize| after.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (field(14), field(15)) else {
        anyhow::bail!("unexpected /proc/{pid}/stat");
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((utime + stime) * (1_000_000_000 / hz))
}

/// Peak resident set of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the agent's status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

fn start_agent(rig: &LoopRig, dir: &std::path::Path, extra: &[&str]) -> Result<ChildGuard> {
    let exe = std::env::current_exe().context("locating the tcpscope binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["agent", "--netns", &rig.hosts.server_ns, "-i", SERVER_IF, "--listen", LISTEN])
        .arg("--control-socket")
        .arg(dir.join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .stdout(Stdio::null());
    Ok(ChildGuard::spawn_until_ready(cmd, "metrics on http://", Duration::from_secs(30))?.0)
}

/// One GET of /metrics at `addr`: (ms, bytes, series).
fn scrape(addr: &str) -> Result<(f64, usize, usize)> {
    let start = Instant::now();
    let body = crate::agent::client::scrape_metrics(addr)?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let series = body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    Ok((ms, body.len(), series))
}

pub fn run(args: &BenchArgs, out: &mut dyn Report) -> Result<()> {
    crate::bpf::preflight::check_privileges()?;
    let (client_cpu, server_cpu) = placement(args)?;
    let rig = LoopRig::start("bagent", client_cpu, server_cpu)?;
    let dir = std::env::temp_dir().join(format!("tcpscope-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cases: [(&str, Option<&[&str]>); 3] = [
        ("baseline", None),
        ("agent (every view, counting)", Some(&[])),
        ("agent --guard", Some(&["--guard"])),
    ];
    let rounds = args.rounds.max(1) as usize;
    let mut rates = vec![Vec::new(); cases.len()];
    let mut agent_ms_per_k = vec![Vec::new(); cases.len()];
    let mut peak_kib = vec![0u64; cases.len()];
    out.note(&format!("bench agent: {rounds} rounds of {} cases", cases.len()));
    for round in 0..rounds {
        for k in 0..cases.len() {
            let case = (round + k) % cases.len();
            match cases[case].1 {
                None => rates[case].push(rig.round()?.rate),
                Some(extra) => {
                    let mut agent = start_agent(&rig, &dir, extra)?;
                    let pid = agent.child.id();
                    let before = cpu_ns(pid)?;
                    let r = rig.round()?;
                    let spent = cpu_ns(pid)?.saturating_sub(before);
                    peak_kib[case] = peak_kib[case].max(peak_rss_kib(pid)?);
                    agent.interrupt_and_wait(Duration::from_secs(20))?;
                    rates[case].push(r.rate);
                    agent_ms_per_k[case].push(spent as f64 / 1e6 / r.n.max(1) as f64 * 1000.0);
                }
            }
        }
    }
    out.line(&format!(
        "bench agent: short-connection loop between test hosts, {rounds} rounds; median rate, the median \
         (min-max) of each round's ratio to its own baseline, the agent's CPU time per 1,000 connections \
         (median, min-max; ms per 1,000 connections = tenths of a percent of one CPU at 1,000 conn/s), \
         and its peak RSS"
    ));
    for (case, (name, extra)) in cases.iter().enumerate() {
        let rate = median(rates[case].clone());
        let ratios: Vec<f64> = rates[case].iter().zip(&rates[0]).map(|(t, b)| t / b).collect();
        let (lo, hi) = ratios.iter().fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let ratio = median(ratios);
        let agent = if extra.is_some() {
            let v = &agent_ms_per_k[case];
            let (alo, ahi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            format!(
                "   agent CPU {:.1} ms/1k conns ({alo:.1}-{ahi:.1})   peak RSS {:.1} MiB",
                median(v.clone()),
                peak_kib[case] as f64 / 1024.0
            )
        } else {
            String::new()
        };
        out.line(&format!("{name:<30} {rate:>8.0} conn/s   ratio {ratio:.3} ({lo:.2}-{hi:.2}){agent}"));
    }

    drop(rig);
    worst_case_scrape(out, 1000)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The agent's metrics at their worst case for one interface and
/// `listening` port labels in: every label set of every family made, then
/// served and scraped.
fn worst_case_scrape(out: &mut dyn Report, listening: u16) -> Result<()> {
    use crate::agent::metrics::{Metrics, REMOTE_PORTS};
    use crate::bpf::lifecycle::types::{
        conn_event, conn_event_kind as K, latency_hist, latency_key, latency_kind as L,
    };
    let mut m = Metrics::new()?;
    m.declare_interface("eth0", "xdp");
    m.declare_guard();
    let reasons = crate::view::conns::ReasonNames::load();
    let name = |r: u32| reasons.name(K::CONN_DROP.0 as u8, r);
    let ev = |kind: u32, sport: u16, dport: u16, cookie: u64| conn_event {
        kind: kind as u8,
        sport,
        dport,
        cookie,
        ..Default::default()
    };
    let mut hists = Vec::new();
    let mut hist = latency_hist::default();
    hist.slots[100] = 1;
    hist.count = 1;
    for p in 1..=listening {
        let c = u64::from(p);
        for kind in [K::CONN_ESTABLISHED_IN, K::CONN_RETRANSMIT, K::CONN_ZERO_WINDOW, K::CONN_CLOSE] {
            m.observe_conn_event(&ev(kind.0, p, 40000, c), &name);
        }
        hists.push((latency_key { port: p, kind: L::LAT_HANDSHAKE.0 as u8, ..Default::default() }, hist));
        hists.push((latency_key { port: p, kind: L::LAT_RTT.0 as u8, ..Default::default() }, hist));
    }
    // Remote ports: REMOTE_PORTS of them get a label, the rest "other".
    for p in 0..(REMOTE_PORTS as u16 + 8) {
        let (port, c) = (50000 + p, 1_000_000 + u64::from(p));
        for kind in [K::CONN_ESTABLISHED_OUT, K::CONN_RETRANSMIT, K::CONN_ZERO_WINDOW, K::CONN_CLOSE] {
            m.observe_conn_event(&ev(kind.0, 40000, port, c), &name);
        }
        hists.push((latency_key { port, kind: L::LAT_CONNECT.0 as u8, ..Default::default() }, hist));
        hists.push((latency_key { port, kind: L::LAT_RTT.0 as u8, ..Default::default() }, hist));
    }
    for r in reasons.drop_reasons() {
        m.observe_conn_event(
            &conn_event { kind: K::CONN_DROP.0 as u8, reason: r, ..Default::default() },
            &name,
        );
    }
    m.observe_latency(&hists);
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = crate::agent::server::Server::start("127.0.0.1:0", m.registry.clone(), ready)?;
    let addr = server.addr.to_string();
    let mut times = Vec::new();
    let mut last = (0, 0);
    for _ in 0..30 {
        let (ms, bytes, series) = scrape(&addr)?;
        times.push(ms);
        last = (bytes, series);
    }
    // Which families the series are in, for the formula in docs/agent.md.
    let body = crate::agent::client::scrape_metrics(&addr)?;
    let mut families: std::collections::BTreeMap<&str, usize> = Default::default();
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap_or("");
        let family = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        *families.entry(family).or_insert(0) += 1;
    }
    out.note(&format!(
        "series by family: {}",
        families.iter().map(|(f, n)| format!("{f} {n}")).collect::<Vec<_>>().join(", ")
    ));
    let max = times.iter().cloned().fold(0f64, f64::max);
    out.line(&format!(
        "worst case of the default config, 1 interface and {listening} listening ports: {} series ({} KiB); \
         one scrape of /metrics: median {:.2} ms, max {max:.2} ms (30 scrapes)",
        last.1,
        last.0 / 1024,
        median(times)
    ));
    Ok(())
}
