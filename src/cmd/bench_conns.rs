//! `tcpscope bench conns`: the cost of the lifecycle tracepoints, as the
//! connections per second of a short-connection loop between test hosts,
//! with and without `tcpscope conns` running, interleaved in one run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::BenchArgs;
use crate::output::print_line;
use crate::testhost::{ChildGuard, TestHosts, SERVER_V4};

const PORT: u16 = 5202;
const ROUND: Duration = Duration::from_secs(2);

/// Connections completed in `ROUND`: connect, send a byte, read the echo, close.
fn loop_round(client_ns: &str) -> Result<f64> {
    TestHosts::run_in(client_ns, || -> Result<f64> {
        let addr = SocketAddr::from((SERVER_V4, PORT));
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < ROUND {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))??
}

pub fn run(args: &BenchArgs) -> Result<()> {
    crate::bpf::preflight::check_privileges()?;
    let hosts = TestHosts::new("bconns")?;
    let stop = Arc::new(AtomicBool::new(false));
    let listener = TestHosts::run_in(&hosts.server_ns, || TcpListener::bind((SERVER_V4, PORT)))
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))???;
    let stop_srv = stop.clone();
    let server = std::thread::spawn(move || {
        // Blocking accept; the final wake-up connection below ends it.
        while let Ok((mut s, _)) = listener.accept() {
            if stop_srv.load(Ordering::Relaxed) {
                break;
            }
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    let exe = std::env::current_exe().context("locating the tcpscope binary")?;
    // Each case's extra arguments to `tcpscope conns` (None: not running).
    // With --port 1 every event is filtered out in the kernel: the
    // tracepoint programs' own cost, without the ring buffer and output.
    let cases: [(&str, Option<&[&str]>); 3] = [
        ("baseline", None),
        ("`conns --json --port 1` (kernel only)", Some(&["--port", "1"])),
        ("`conns --json` (all events printed)", Some(&[])),
    ];
    let rounds = args.rounds.max(1) as usize;
    let mut rates = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        // The order rotates each round, so slow drift of this VM does not
        // always favour the same case.
        for k in 0..cases.len() {
            let case = (round + k) % cases.len();
            let rate = match cases[case].1 {
                None => loop_round(&hosts.client_ns)?,
                Some(extra) => {
                    let mut cmd = Command::new(&exe);
                    cmd.args(["conns", "--json"]).args(extra).stdout(Stdio::null());
                    let (mut conns, _) = ChildGuard::spawn_until_ready(
                        cmd,
                        "following TCP connections",
                        Duration::from_secs(30),
                    )?;
                    let rate = loop_round(&hosts.client_ns)?;
                    conns.interrupt_and_wait(Duration::from_secs(20))?;
                    rate
                }
            };
            rates[case].push(rate);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = TestHosts::run_in(&hosts.client_ns, || TcpStream::connect(SocketAddr::from((SERVER_V4, PORT))))
        .join();
    let _ = server.join();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    print_line(&format!(
        "bench conns: short-connection loop between test hosts, {rounds} rounds x {}s per case; \
         medians, and the median of each round's ratio to its own baseline",
        ROUND.as_secs()
    ));
    for (case, (name, _)) in cases.iter().enumerate() {
        let rate = median(rates[case].clone());
        let ratio = median(rates[case].iter().zip(&rates[0]).map(|(t, b)| t / b).collect());
        print_line(&format!("{name:<42} {rate:>8.0} conn/s   ratio {ratio:.3}"));
    }
    Ok(())
}
