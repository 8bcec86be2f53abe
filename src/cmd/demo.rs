//! `tcpscope demo`: a live demonstration on self-made test hosts. It creates
//! two network namespaces joined by a veth pair, runs `tcpscope watch` on the
//! server side, `tcpscope conns` and `tcpscope agent`, makes real IPv4 and
//! IPv6 connections that send data, shows both streams and the agent's
//! metrics of them, and removes everything again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bpf::attach::HookKind;
use crate::bpf::preflight;
use crate::cli::DemoArgs;
use crate::testhost::{ChildGuard, TestHosts, SERVER_IF};

const PORT: u16 = 8080;

pub fn run(args: &DemoArgs) -> Result<()> {
    preflight::check_privileges()?;
    // Ctrl-C, SIGTERM (`timeout`) and SIGHUP stop the demo between two
    // connections; the test hosts and the children are removed either way.
    let stop = crate::cmd::stop_flag()?;
    let hook = match args.hook.unwrap_or(HookKind::Tc) {
        HookKind::Tc => "tc",
        HookKind::Xdp => "xdp",
    };
    let hosts = TestHosts::new("demo")?;
    eprintln!(
        "demo: test hosts {} (198.18.0.1, 2001:db8::1) and {} (198.18.0.2, 2001:db8::2) joined by a veth pair",
        hosts.client_ns, hosts.server_ns
    );
    let exe = std::env::current_exe().context("locating the tcpscope binary")?;
    let exe = exe.to_str().context("binary path is not UTF-8")?;
    let mut cmd = TestHosts::command_in(&hosts.server_ns, exe);
    cmd.args(["watch", "-i", SERVER_IF, "--hook", hook, "--port", &PORT.to_string()]);
    eprintln!(
        "demo: running `tcpscope watch -i {SERVER_IF} --hook {hook} --port {PORT}` in {}",
        hosts.server_ns
    );
    let (mut watch, _stderr) = ChildGuard::spawn_until_ready(cmd, "watching", Duration::from_secs(20))?;
    // The kernel's view of the same connections, from every namespace:
    // their lines share the packet lines' connection key.
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["conns", "--port", &PORT.to_string()]);
    eprintln!("demo: running `tcpscope conns --port {PORT}` (the sockets' side of the same connections)");
    let (mut conns, _stderr) =
        ChildGuard::spawn_until_ready(cmd, "following TCP connections", Duration::from_secs(20))?;
    // The always-on agent on the same interface, on a free port.
    let run = std::env::temp_dir().join(format!("tcpscope-demo-{}", std::process::id()));
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "agent",
        "--netns",
        &hosts.server_ns,
        "-i",
        SERVER_IF,
        "--listen",
        "127.0.0.1:0",
        "--log-events",
        "rules",
    ])
    .arg("--control-socket")
    .arg(run.join("agent.sock"))
    .arg("--state-dir")
    .arg(run.join("state"));
    let (mut agent, said) =
        ChildGuard::spawn_until_ready(cmd, "metrics on http://", Duration::from_secs(20))?;
    let metrics_at = said
        .lock()
        .map_err(|_| anyhow::anyhow!("agent stderr reader panicked"))?
        .iter()
        .find_map(|l| Some(l.split("metrics on http://").nth(1)?.split('/').next()?.to_string()))
        .context("the agent did not say where its metrics are")?;
    eprintln!(
        "demo: running `tcpscope agent --netns {} -i {SERVER_IF}` (metrics on http://{metrics_at}/metrics)",
        hosts.server_ns
    );

    // Server: echo one message per connection. One dual-stack listener on
    // [::] takes both the IPv4 and the IPv6 connections.
    let n = args.connections;
    let listener = TestHosts::run_in(&hosts.server_ns, || TcpListener::bind(("::", PORT)))
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))???;
    listener.set_nonblocking(true)?;
    let server_stop = stop.clone();
    let server = std::thread::spawn(move || -> Result<()> {
        let mut served = 0;
        while served < 2 * n && !server_stop.load(std::sync::atomic::Ordering::SeqCst) {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 64];
            let got = s.read(&mut buf)?;
            s.write_all(&buf[..got])?;
            served += 1;
        }
        Ok(())
    });
    let client_stop = stop.clone();
    let client = TestHosts::run_in(&hosts.client_ns, move || -> Result<()> {
        for v6 in [false, true] {
            for i in 0..n {
                if client_stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(());
                }
                let addr = SocketAddr::new(TestHosts::server_addr(v6), PORT);
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.write_all(format!("hello {i}\n").as_bytes())?;
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf)?;
            }
        }
        Ok(())
    });
    client.join().map_err(|_| anyhow::anyhow!("client thread panicked"))???;
    server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        drop((watch, conns, agent, hosts)); // killed, reaped, and the namespaces deleted
        eprintln!("demo: stopped; test hosts removed");
        return Ok(());
    }
    // The agent's view: once its counters hold every connection.
    let opened = format!("tcpscope_connections_opened_total{{direction=\"in\",port=\"{PORT}\"}} {}", 2 * n);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = crate::agent::client::scrape_metrics(&metrics_at)?;
        let syns = format!("tcpscope_tcp_flags_total{{flag=\"SYN\",interface=\"{SERVER_IF}\"}} {}", 2 * n);
        let all_in = text.lines().any(|l| l == opened) && text.lines().any(|l| l == syns);
        if all_in || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("demo: the agent's metrics of these connections (GET http://{metrics_at}/metrics; histogram buckets left out):");
    let port = format!("port=\"{PORT}\"");
    let shown = [port.as_str(), "flag=\"SYN\"", "tcpscope_packets_total{"];
    for line in text.lines().filter(|l| !l.starts_with('#') && shown.iter().any(|s| l.contains(s))) {
        if !line.contains("_bucket{") && !crate::output::print_line(line) {
            break;
        }
    }
    let agent_status = agent.interrupt_and_wait(Duration::from_secs(10))?;
    let _ = std::fs::remove_dir_all(&run);
    std::thread::sleep(Duration::from_millis(300)); // let the last events print
    let status = watch.interrupt_and_wait(Duration::from_secs(10))?;
    let conns_status = conns.interrupt_and_wait(Duration::from_secs(10))?;
    drop((watch, conns));
    drop(hosts);
    eprintln!("demo: watch exited ({status}), conns exited ({conns_status}), agent exited ({agent_status}); test hosts removed");
    anyhow::ensure!(status.success(), "tcpscope watch failed: {status}");
    anyhow::ensure!(agent_status.success(), "tcpscope agent failed: {agent_status}");
    anyhow::ensure!(conns_status.success(), "tcpscope conns failed: {conns_status}");
    Ok(())
}
