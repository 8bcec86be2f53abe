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

use super::{median, Report};
use crate::cli::BenchArgs;
use crate::testhost::{pin_to, ChildGuard, TestHosts, SERVER_V4};

pub const PORT: u16 = 5202;
const ROUND: Duration = Duration::from_secs(2);

/// ns per getppid(), a syscall that does nearly nothing: what every syscall
/// of every process pays while a case runs (while any syscall tracepoint is
/// attached, all of them take the kernel's slow tracing path).
fn syscall_ns() -> f64 {
    const CALLS: u32 = 500_000;
    let start = Instant::now();
    for _ in 0..CALLS {
        // SAFETY: getppid has no arguments and cannot fail.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// CPU time the whole machine has spent busy (user, system, interrupts;
/// not idle, and not time the hypervisor took), in ns: what a round costs,
/// whichever CPU and process paid it.
fn machine_busy_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| l.split_whitespace().filter_map(|f| f.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal ...
    anyhow::ensure!(fields.len() >= 8, "/proc/stat: unexpected first line");
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(busy * (1_000_000_000 / hz))
}

/// The events `conns` printed and lost, from its exit line ("N events
/// printed, M lost ..."), which its stderr reader may still be passing on.
fn printed_and_lost(stderr: &std::sync::Mutex<Vec<String>>) -> Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = stderr.lock().map_err(|_| anyhow::anyhow!("conns stderr reader panicked"))?;
        if let Some(line) = lines.iter().find(|l| l.contains(" events printed, ")) {
            let count = |s: Option<&str>| s.and_then(|n| n.trim_start_matches("tcpscope: ").parse().ok());
            let mut parts = line.split(" events printed, ");
            let printed = count(parts.next());
            let lost = count(parts.next().and_then(|rest| rest.split(' ').next()));
            return printed.zip(lost).with_context(|| format!("conns' exit line has no counts: {line}"));
        }
        drop(lines);
        anyhow::ensure!(Instant::now() < deadline, "conns exited without its events printed/lost line");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What runs while a round of the loop does.
enum Case {
    Nothing,
    /// bpf/baseline.bpf.c's empty programs at every hook `conns` attaches.
    EmptyPrograms,
    /// `tcpscope conns --json` with these extra arguments.
    Conns(&'static [&'static str]),
}

/// One round of the loop: connections per second, and busy CPU time of the
/// machine per connection (ns).
pub struct Round {
    pub rate: f64,
    pub cpu_ns_per_conn: f64,
    /// Connections made.
    pub n: u64,
}

/// Connections completed in `ROUND`: connect, send `first`, read a byte
/// back, close.
fn loop_round(client_ns: &str, cpu: Option<usize>, first: Arc<Vec<u8>>) -> Result<Round> {
    let busy_before = machine_busy_ns()?;
    let (rate, n) = TestHosts::run_in(client_ns, move || -> Result<(f64, u64)> {
        pin_to(cpu)?;
        let addr = SocketAddr::from((SERVER_V4, PORT));
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < ROUND {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.write_all(&first)?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            n += 1;
        }
        Ok((n as f64 / start.elapsed().as_secs_f64(), n))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))???;
    let busy = machine_busy_ns()?.saturating_sub(busy_before);
    Ok(Round { rate, cpu_ns_per_conn: busy as f64 / n.max(1) as f64, n })
}

/// The client's and the server's CPUs from --cpu (none: the scheduler's).
pub fn placement(args: &BenchArgs) -> Result<(Option<usize>, Option<usize>)> {
    let (client_cpu, server_cpu) = match args.cpu[..] {
        [] => (None, None),
        [c] => (Some(c), Some(c)),
        [c, s] => (Some(c), Some(s)),
        _ => anyhow::bail!("--cpu takes one CPU (client and server) or two (client,server)"),
    };
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    for &c in &args.cpu {
        crate::ensure_usage!(c < n, "--cpu {c}: no such CPU (this machine has {n}: 0-{})", n - 1);
    }
    Ok((client_cpu, server_cpu))
}

/// The test hosts and the echo server of the short-connection loop;
/// dropping it stops the server.
pub struct LoopRig {
    pub hosts: TestHosts,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
    pub client_cpu: Option<usize>,
    first: Arc<Vec<u8>>,
}

impl LoopRig {
    /// Each connection sends a byte, which the server echoes.
    pub fn start(tag: &str, client_cpu: Option<usize>, server_cpu: Option<usize>) -> Result<Self> {
        Self::start_with(tag, client_cpu, server_cpu, b"x".to_vec())
    }

    /// Each connection sends `first` (a request, a ClientHello), whose last
    /// byte the server sends back once it has it all.
    pub fn start_with(
        tag: &str,
        client_cpu: Option<usize>,
        server_cpu: Option<usize>,
        first: Vec<u8>,
    ) -> Result<Self> {
        anyhow::ensure!(!first.is_empty(), "the loop's first message is empty");
        let first = Arc::new(first);
        let want = first.len();
        let hosts = TestHosts::new(tag)?;
        // Hundreds of thousands of connections from one address to one port:
        // without reuse, the client's TIME_WAIT sockets used up its ports within
        // a minute and some rounds collapsed to a few hundred connections/s
        // (connect() searching for a free port), whatever the case.
        TestHosts::run_in(&hosts.client_ns, || -> Result<()> {
            // /proc/sys/net is the namespace of the thread that opens it.
            for (path, value) in
                [("net/ipv4/tcp_tw_reuse", "1"), ("net/ipv4/ip_local_port_range", "1024 65535")]
            {
                std::fs::write(format!("/proc/sys/{path}"), value)
                    .with_context(|| format!("setting {path} in the client namespace"))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))???;
        let stop = Arc::new(AtomicBool::new(false));
        let listener = TestHosts::run_in(&hosts.server_ns, || TcpListener::bind((SERVER_V4, PORT)))
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))???;
        let stop_srv = stop.clone();
        let server = std::thread::spawn(move || {
            if pin_to(server_cpu).is_err() {
                return; // checked by `placement`: cannot happen
            }
            // Blocking accept; the final wake-up connection in drop ends it.
            while let Ok((mut s, _)) = listener.accept() {
                if stop_srv.load(Ordering::Relaxed) {
                    break;
                }
                let mut b = vec![0u8; want];
                if s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(&b[want - 1..]);
                }
            }
        });
        Ok(LoopRig { hosts, stop, server: Some(server), client_cpu, first })
    }

    /// One round of the loop.
    pub fn round(&self) -> Result<Round> {
        loop_round(&self.hosts.client_ns, self.client_cpu, self.first.clone())
    }
}

impl Drop for LoopRig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TestHosts::run_in(&self.hosts.client_ns, || {
            TcpStream::connect(SocketAddr::from((SERVER_V4, PORT)))
        })
        .join();
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

pub fn run(args: &BenchArgs, out: &mut dyn Report) -> Result<()> {
    crate::bpf::preflight::check_privileges()?;
    let (client_cpu, server_cpu) = placement(args)?;
    let rig = LoopRig::start("bconns", client_cpu, server_cpu)?;
    let exe = std::env::current_exe().context("locating the tcpscope binary")?;
    // Empty programs at conns' hooks: the kernel's cost of calling a
    // program at each, which no program of ours can go below. With --port
    // 1 every event is filtered out in the kernel: the programs' own cost,
    // without the event slots and output. The last case is the accept hook
    // that makes every syscall on the host take the slow tracing path: its
    // price, side by side.
    let mut empty_programs = crate::bpf::load_baseline(true)?;
    let cases: [(&str, Case); 5] = [
        ("baseline", Case::Nothing),
        ("empty programs at conns' hooks (the floor)", Case::EmptyPrograms),
        ("`conns --json --port 1` (kernel only)", Case::Conns(&["--port", "1"])),
        ("`conns --json` (all events printed)", Case::Conns(&[])),
        ("`conns --json --accept-via syscall`", Case::Conns(&["--accept-via", "syscall"])),
    ];
    let rounds = args.rounds.max(1) as usize;
    let mut rates = vec![Vec::new(); cases.len()];
    let mut cpu_costs = vec![Vec::new(); cases.len()];
    let mut syscalls = vec![Vec::new(); cases.len()];
    // Per case: events printed, events lost, connections the loop made.
    let mut events = vec![(0u64, 0u64, 0u64); cases.len()];
    for round in 0..rounds {
        // The order rotates each round, so slow drift of this VM does not
        // always favour the same case.
        for k in 0..cases.len() {
            let case = (round + k) % cases.len();
            let (round, syscall) = match cases[case].1 {
                Case::Nothing => (rig.round()?, syscall_ns()),
                Case::EmptyPrograms => {
                    let _links = crate::bpf::lifecycle::attach_empty_programs(&mut empty_programs)?;
                    (rig.round()?, syscall_ns())
                }
                Case::Conns(extra) => {
                    let mut cmd = Command::new(&exe);
                    cmd.args(["conns", "--json"]).args(extra).stdout(Stdio::null());
                    let (mut conns, stderr) = ChildGuard::spawn_until_ready(
                        cmd,
                        "following TCP connections",
                        Duration::from_secs(30),
                    )?;
                    let round = rig.round()?;
                    let syscall = syscall_ns();
                    conns.interrupt_and_wait(Duration::from_secs(20))?;
                    let (printed, lost) = printed_and_lost(&stderr)?;
                    let e = &mut events[case];
                    (e.0, e.1, e.2) = (e.0 + printed, e.1 + lost, e.2 + round.n);
                    (round, syscall)
                }
            };
            rates[case].push(round.rate);
            cpu_costs[case].push(round.cpu_ns_per_conn);
            syscalls[case].push(syscall);
        }
    }
    drop(rig);
    let placement = match (client_cpu, server_cpu) {
        (Some(c), Some(s)) if c == s => format!("client and server on CPU {c}"),
        (Some(c), Some(s)) => format!("client on CPU {c}, server on CPU {s}"),
        _ => "placed by the scheduler".to_string(),
    };
    out.line(&format!(
        "bench conns: short-connection loop between test hosts ({placement}), {rounds} rounds x {}s per \
         case; median rate, the median (min-max) of each round's ratio to its own baseline, the \
         machine's busy CPU time per connection (median, and the median of each round's change from \
         its baseline: every CPU and process, tcpscope's reader included; time the hypervisor took \
         is not counted), the median cost of one getppid() syscall meanwhile, and the events \
         `conns` printed and lost per connection of the loop (all rounds; it sees the whole \
         host, so others' connections count too)",
        ROUND.as_secs()
    ));
    for (case, (name, _)) in cases.iter().enumerate() {
        let rate = median(rates[case].clone());
        let ratios: Vec<f64> = rates[case].iter().zip(&rates[0]).map(|(t, b)| t / b).collect();
        let (lo, hi) = ratios.iter().fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let ratio = median(ratios);
        let syscall = median(syscalls[case].clone());
        let cpu_us = median(cpu_costs[case].clone()) / 1000.0;
        let changes: Vec<f64> =
            cpu_costs[case].iter().zip(&cpu_costs[0]).map(|(t, b)| (t / b - 1.0) * 100.0).collect();
        let cpu_change = median(changes);
        let lost = match cases[case].1 {
            Case::Conns(_) => {
                let (printed, lost, n) = events[case];
                let per_conn = |e: u64| e as f64 / n.max(1) as f64;
                format!(
                    "   per conn {:.2} printed {:.3} lost ({lost} lost)",
                    per_conn(printed),
                    per_conn(lost)
                )
            }
            _ => String::new(),
        };
        out.line(&format!(
            "{name:<42} {rate:>8.0} conn/s   ratio {ratio:.3} ({lo:.2}-{hi:.2})   CPU {cpu_us:>5.1} us/conn \
             ({cpu_change:+5.1}%)   getppid {syscall:>4.0} ns{lost}"
        ));
    }
    Ok(())
}
