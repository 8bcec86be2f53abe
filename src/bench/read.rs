//! `tcpscope bench read`: offline decoding speed and memory, side by side
//! with tcpdump, on a capture of real TCP traffic that it makes itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Report;
use crate::cli::BenchArgs;
use crate::testhost::{ChildGuard, TestHosts, SERVER_IF};

/// Makes a capture of `packets` packets of bulk TCP between two test hosts,
/// with snaplen 96 (headers only), one wire-sized packet per record.
pub fn make_capture(packets: u64, file: &Path) -> Result<()> {
    let hosts = TestHosts::new("bench")?;
    // The capture holds MTU-sized packets, as a NIC would see them.
    hosts.offloads_off()?;
    let mut tcpdump = TestHosts::command_in(&hosts.server_ns, "tcpdump");
    tcpdump
        .args(["-i", SERVER_IF, "-nn", "-s", "96", "-B", "16384", "-c", &packets.to_string(), "-w"])
        .arg(file)
        .arg("tcp")
        .stdout(Stdio::null());
    let (mut capture, _) = ChildGuard::spawn_until_ready(tcpdump, "listening on", Duration::from_secs(30))?;

    // Bulk sender until tcpdump has its packets (or 120 s pass).
    let stop = Arc::new(AtomicBool::new(false));
    let listener = TestHosts::run_in(&hosts.server_ns, || TcpListener::bind(("198.18.0.2", 5201)))
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))???;
    let stop_rx = stop.clone();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = vec![0u8; 1 << 16];
            while !stop_rx.load(Ordering::Relaxed) && s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
        }
    });
    let stop_tx = stop.clone();
    let client = TestHosts::run_in(&hosts.client_ns, move || -> Result<()> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from(([198, 18, 0, 2], 5201)), Duration::from_secs(10))?;
        let buf = vec![0x5au8; 1 << 16];
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop_tx.load(Ordering::Relaxed) && Instant::now() < deadline {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let status = capture.wait_timeout(Duration::from_secs(150));
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    let _ = server.join();
    status.context("tcpdump did not finish the capture")?;
    Ok(())
}

/// Runs `cmd` with stdout to /dev/null; returns (seconds, peak RSS in KiB,
/// its stderr).
fn measure(cmd: &mut Command) -> Result<(f64, u64, String)> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    // Read stderr on a thread: a child blocked on a full pipe never exits.
    let mut err_pipe = child.stderr.take().context("child stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child's pid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    let stderr = reader.join().unwrap_or_default();
    if pid < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok((secs, usage.ru_maxrss as u64, stderr))
}

/// The packets `tcpscope read` printed, from its summary line.
fn printed_of(summary: &str) -> Option<u64> {
    summary.split("(printed ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn count_packets(file: &Path) -> Result<u64> {
    let mut cap = crate::capture::Capture::open(std::fs::File::open(file)?)?;
    let mut n = 0;
    while let Some(f) = cap.next_frame() {
        f?;
        n += 1;
    }
    Ok(n)
}

pub fn run(args: &BenchArgs, out: &mut dyn Report) -> Result<()> {
    // --capture FILE: use it if it exists, else make it there and keep it.
    let file: PathBuf = args
        .capture
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("tcpscope-bench-{}.pcap", std::process::id())));
    if !file.exists() {
        crate::bpf::preflight::check_privileges()?; // test hosts need root
        out.note(&format!(
            "bench read: capturing {} packets of bulk TCP between test hosts (snaplen 96)...",
            args.packets
        ));
        make_capture(args.packets, &file)?;
    }
    let packets = count_packets(&file)?;
    let size = std::fs::metadata(&file)?.len();
    let exe = std::env::current_exe()?;
    if !out.line(&format!(
        "bench read: {} ({} packets, {:.1} MiB), {} rounds, median",
        file.display(),
        packets,
        size as f64 / (1 << 20) as f64,
        args.rounds.max(1)
    )) {
        return Ok(());
    }
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..args.rounds.max(1) {
        // Interleaved, so that both see the same machine conditions.
        ours.push(measure(Command::new(&exe).arg("read").arg(&file).arg("--json"))?);
        theirs.push(measure(Command::new("tcpdump").args(["-nn", "-v", "-r"]).arg(&file))?);
    }
    // Each decoder is credited with what it printed, not with what the file
    // holds: a reader that dropped packets must not look faster for it.
    let printed = ours.iter().filter_map(|o| printed_of(&o.2)).min().unwrap_or(0);
    if printed != packets {
        out.note(&format!("bench read: tcpscope printed {printed} of the capture's {packets} packets (the rest are not TCP)"));
    }
    let med = |v: &mut Vec<(f64, u64, String)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        (v[v.len() / 2].0, v[v.len() / 2].1)
    };
    let (o, t) = (med(&mut ours), med(&mut theirs));
    let (ops, tps) = (printed as f64 / o.0, packets as f64 / t.0);
    out.line(&format!("{:<32} {:>12} {:>10} {:>12}", "decoder", "packets/s", "seconds", "peak RSS"));
    out.line(&format!(
        "{:<32} {:>12.0} {:>10.2} {:>9.1} MiB",
        "tcpscope read --json",
        ops,
        o.0,
        o.1 as f64 / 1024.0
    ));
    out.line(&format!(
        "{:<32} {:>12.0} {:>10.2} {:>9.1} MiB",
        "tcpdump -nn -v -r",
        tps,
        t.0,
        t.1 as f64 / 1024.0
    ));
    out.line(&format!("ratio: tcpscope decodes {:.1}x the packets/s of tcpdump", ops / tps));
    if args.capture.is_none() {
        let _ = std::fs::remove_file(&file);
    }
    Ok(())
}
