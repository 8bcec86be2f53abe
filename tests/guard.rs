//! `tcpscope guard` with `block` / `allow` on live traffic between test
//! hosts: rules take effect without reload, TTLs expire, errors are clear.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tcpscope::testhost::{ChildGuard, TestHosts, SERVER_IF, SERVER_V4};

struct Guard {
    guard: ChildGuard,
    /// The guard's stdout (alerts), read when it stops.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    hosts: TestHosts,
    port: u16,
}

impl Drop for Guard {
    /// A clean stop, so the guard removes its pins (SIGKILL would leave them).
    fn drop(&mut self) {
        let _ = self.guard.interrupt_and_wait(Duration::from_secs(20));
    }
}

impl Guard {
    /// Fresh test hosts, a guard on the server side, and a listener on
    /// `port` that accepts for as long as the test runs.
    fn start(tag: &str, port: u16, extra: &[&str]) -> Guard {
        let g = Guard::on(TestHosts::new(tag).unwrap(), port, extra);
        let l = listen_in_server(&g.hosts, port);
        std::thread::spawn(move || for _ in l.incoming() {});
        g
    }

    /// A guard with `extra` options on the server side of `hosts`; the test
    /// brings its own server.
    fn on(hosts: TestHosts, port: u16, extra: &[&str]) -> Guard {
        let mut cmd = Command::new(tcpscope_bin());
        cmd.args(["guard", "--netns", &hosts.server_ns, "-i", SERVER_IF]).args(extra).stdout(Stdio::piped());
        let (guard, lines) =
            ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
        Guard { guard, stderr: lines, hosts, port }
    }

    /// Stops the guard; returns its alerts (stdout) and its stderr summary.
    fn stop(&mut self) -> (Vec<serde_json::Value>, String) {
        assert!(self.guard.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
        let s = self.guard.stdout_text();
        std::thread::sleep(Duration::from_millis(100));
        let alerts = s.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let err = self.stderr.lock().unwrap().join("\n");
        (alerts, err)
    }

    /// `tcpscope ARGS -i <this guard>`.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(tcpscope_bin())
            .args(args)
            .args(["-i", SERVER_IF, "--netns", &self.hosts.server_ns])
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Can the client connect (SYN answered within `wait`)?
    fn connects(&self, wait: Duration) -> bool {
        let addr = SocketAddr::from((SERVER_V4, self.port));
        TestHosts::run_in(&self.hosts.client_ns, move || TcpStream::connect_timeout(&addr, wait).is_ok())
            .join()
            .unwrap()
            .unwrap()
    }
}

#[test]
fn block_and_unblock_take_effect_on_live_traffic_at_once() {
    let g = Guard::start("gblock", 19001, &[]);
    assert!(g.connects(Duration::from_secs(2)));

    g.ok(&["block", "add", "198.18.0.1/32"]);
    // The very next SYN after `block add` returns is dropped in the kernel.
    assert!(!g.connects(Duration::from_millis(300)), "blocked source still connects");
    let list = String::from_utf8(g.cli(&["block", "list", "--json"]).stdout).unwrap();
    let rule: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(rule["cidr"], "198.18.0.1/32");
    assert!(rule["hits"].as_u64().unwrap() >= 1, "the rule counted its drops: {rule}");

    g.ok(&["block", "del", "198.18.0.1/32"]);
    let t = Instant::now();
    assert!(g.connects(Duration::from_millis(100)), "unblocked within 100 ms");
    eprintln!("connect after `block del` returned: {:?}", t.elapsed());

    // Port rule, per source prefix: only that port is refused.
    g.ok(&["block", "add", "198.18.0.0/24", "--port", &g.port.to_string()]);
    assert!(!g.connects(Duration::from_millis(300)));
    g.ok(&["block", "del", "198.18.0.0/24", "--port", &g.port.to_string()]);
    assert!(g.connects(Duration::from_millis(100)));

    // Allow wins over block.
    g.ok(&["block", "add", "198.18.0.0/15"]);
    assert!(!g.connects(Duration::from_millis(300)));
    g.ok(&["allow", "add", "198.18.0.1"]);
    assert!(g.connects(Duration::from_millis(100)));
    let out = g.cli(&["block", "del", "198.18.0.9/32"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no such rule"));
}

#[test]
fn ttl_expires_and_the_rule_disappears() {
    let g = Guard::start("gttl", 19002, &[]);
    g.ok(&["block", "add", "198.18.0.1", "--ttl", "700ms"]);
    assert!(!g.connects(Duration::from_millis(200)));
    std::thread::sleep(Duration::from_millis(800));
    assert!(g.connects(Duration::from_secs(1)), "expired rule still blocks");
    std::thread::sleep(Duration::from_millis(200)); // the guard's sweep
    let list = g.cli(&["block", "list"]);
    assert!(list.stdout.is_empty(), "expired rule still listed: {}", String::from_utf8_lossy(&list.stdout));
}

#[test]
fn rules_file_loads_at_start_and_pins_are_root_only() {
    let file = std::env::temp_dir().join(format!("tcpscope-rules-{}.toml", std::process::id()));
    std::fs::write(&file, "# test rules\n[[block]]\ncidr = \"198.18.0.0/24\"\nport = 19003\n").unwrap();
    let g = Guard::start("grules", 19003, &["--rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!g.connects(Duration::from_millis(300)), "the file's port rule is live");
    let dir = format!("/sys/fs/bpf/tcpscope/{SERVER_IF}@{}", g.hosts.server_ns);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{dir} is root-only");
    let list = String::from_utf8(g.cli(&["block", "list"]).stdout).unwrap();
    assert!(list.contains("block 198.18.0.0/24 port 19003"), "{list}");
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn errors_are_clear() {
    // No guard on this (made-up) interface.
    let out =
        Command::new(tcpscope_bin()).args(["block", "add", "198.18.0.1", "-i", "nosuch0"]).output().unwrap();
    assert!(one_line_error(&out).contains("no tcpscope guard is running on 'nosuch0'"));
    // A bad CIDR never reaches the kernel.
    let out = Command::new(tcpscope_bin()).args(["block", "add", "198.18.0.1/40"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefix 40 is longer than 32 bits"));
    // A bad rules file names its line, before anything is attached.
    let file = std::env::temp_dir().join(format!("tcpscope-bad-{}.toml", std::process::id()));
    std::fs::File::create(&file)
        .unwrap()
        .write_all(b"[[block]]\ncidr = \"198.18.0.0/24\"\n\n[[block]]\ncidr = \"198.18.0.300\"\n")
        .unwrap();
    let out = Command::new(tcpscope_bin())
        .args(["guard", "-i", "lo", "--rules", file.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let e = one_line_error(&out);
    assert!(e.contains("tcpscope-bad") && e.contains(":4:") && e.contains("bad CIDR"), "{e}");
    // A second guard on the same interface is refused.
    let g = Guard::start("gtwice", 19004, &[]);
    let out = Command::new(tcpscope_bin())
        .args(["guard", "--netns", &g.hosts.server_ns, "-i", SERVER_IF])
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("already runs on"));
}

/// Runs a bounded nmap scan from the client host.
fn nmap(g: &Guard, kind: &str, ports: &str) {
    let st = TestHosts::command_in(&g.hosts.client_ns, "nmap")
        .args([
            kind,
            "-p",
            ports,
            "-T4",
            "-n",
            "-Pn",
            "--max-retries",
            "1",
            "--host-timeout",
            "30s",
            "198.18.0.2",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("nmap (scripts/setup.sh installs it)");
    assert!(st.success(), "nmap {kind}");
}

#[test]
fn nmap_scans_raise_scan_and_anomaly_alerts() {
    let mut g = Guard::start("gscan", 19005, &["--json", "--alert-interval", "100ms"]);
    // Separate port ranges: each scan brings 20+ new ports into the window.
    nmap(&g, "-sS", "1-100");
    std::thread::sleep(Duration::from_millis(200));
    nmap(&g, "-sX", "101-200");
    std::thread::sleep(Duration::from_millis(200));
    nmap(&g, "-sN", "201-300");
    let (alerts, _) = g.stop();
    let of = |kind: &str| alerts.iter().filter(|a| a["alert"] == kind).collect::<Vec<_>>();
    let scans = of("port_scan");
    assert!(scans.len() >= 3, "one port-scan alert per scan: {alerts:#?}");
    assert!(scans.iter().all(|a| a["src"] == "198.18.0.1" && a["ports_seen"].as_u64().unwrap() >= 20));
    assert!(!of("xmas").is_empty(), "XMAS scan flagged: {alerts:#?}");
    assert!(!of("null_flags").is_empty(), "NULL scan flagged");
    assert!(of("xmas").iter().all(|a| a["src"] == "198.18.0.1"));
    // Rate limit: 100 XMAS probes, alerts at most every 100 ms.
    assert!(of("xmas").len() < 20, "alerts are rate-limited: {}", of("xmas").len());
}

#[test]
fn syn_flood_is_mitigated_and_the_legitimate_client_is_served() {
    const PORT: u16 = 19006;
    let hosts = TestHosts::new("gflood").unwrap();
    // A second client address on the client host: the legitimate one.
    tcpscope::testhost::ip(&[
        "-n",
        &hosts.client_ns,
        "addr",
        "add",
        "198.18.0.3/24",
        "dev",
        tcpscope::testhost::CLIENT_IF,
    ])
    .unwrap();
    let mut g = Guard::on(
        hosts,
        PORT,
        &["--json", "--mitigate", "--mitigate-ttl", "30s", "--syn-rate", "10", "--syn-burst", "20"],
    );

    // A tiny HTTP server.
    let l = listen_in_server(&g.hosts, PORT);
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    const FLOOD: u64 = 10_000;
    // hping3: 10,000 SYNs at 10k/s from 198.18.0.1 (bounded: -c).
    let mut flood = TestHosts::command_in(&g.hosts.client_ns, "hping3");
    flood
        .args(["-S", "-p", &PORT.to_string(), "-i", "u100", "-c", &FLOOD.to_string(), "-q", "198.18.0.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut flood = flood.spawn().expect("hping3 (scripts/setup.sh installs it)");
    // Meanwhile, real HTTP requests from 198.18.0.3.
    let mut served = 0;
    for _ in 0..10 {
        let out = TestHosts::command_in(&g.hosts.client_ns, "curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "--interface",
                "198.18.0.3",
                &format!("http://198.18.0.2:{PORT}/"),
            ])
            .output()
            .expect("curl (scripts/setup.sh installs it)");
        if out.stdout == b"ok" {
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(flood.wait().unwrap().success());
    let blocked = String::from_utf8(g.cli(&["block", "list", "--json"]).stdout).unwrap();
    let (alerts, summary) = g.stop();
    assert_eq!(served, 10, "every legitimate request succeeds");
    assert!(alerts.iter().any(|a| a["alert"] == "syn_flood" && a["src"] == "198.18.0.1"), "{alerts:#?}");
    assert!(alerts.iter().any(|a| a["alert"] == "mitigation" && a["src"] == "198.18.0.1"));
    assert!(blocked.contains("\"198.18.0.1/32\""), "mitigation rule listed: {blocked}");
    // The guard's counters: dropped in the kernel, out of the flood's SYNs.
    let dropped: u64 = summary
        .split("guard stopped: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {summary}"));
    eprintln!(
        "SYN flood: {dropped} of {FLOOD} SYNs dropped in the kernel ({:.2}%)",
        dropped as f64 * 100.0 / FLOOD as f64
    );
    assert!(dropped as f64 >= 0.99 * FLOOD as f64, "dropped {dropped} of {FLOOD}");
}

#[test]
fn tc_hook_drops_with_tc_act_shot() {
    let g = Guard::start("gtc", 19007, &["--hook", "tc"]);
    assert!(g.connects(Duration::from_secs(2)));
    g.ok(&["block", "add", "198.18.0.0/30"]);
    assert!(!g.connects(Duration::from_millis(300)), "blocked at TC ingress");
    g.ok(&["block", "del", "198.18.0.0/30"]);
    assert!(g.connects(Duration::from_millis(100)));
}

#[test]
fn connection_limit_alerts_and_mitigates() {
    const PORT: u16 = 19008;
    let hosts = TestHosts::new("gclimit").unwrap();
    let mut g =
        Guard::on(hosts, PORT, &["--json", "--mitigate", "--conn-limit", "5", "--mitigate-ttl", "30s"]);
    let l = listen_in_server(&g.hosts, PORT);
    let held = std::thread::spawn(move || l.incoming().take(6).map(|s| s.unwrap()).collect::<Vec<_>>());
    // Six concurrent connections from one source; the limit is five.
    let addr = SocketAddr::from((SERVER_V4, PORT));
    let clients = TestHosts::run_in(&g.hosts.client_ns, move || {
        (0..6).map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap()).collect::<Vec<_>>()
    })
    .join()
    .unwrap()
    .unwrap();
    let server_side = held.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Mitigation blocked the source: a seventh connection fails.
    assert!(!g.connects(Duration::from_millis(300)), "source over the limit is blocked");
    let (alerts, _) = g.stop();
    let limit = alerts.iter().find(|a| a["alert"] == "conn_limit").unwrap_or_else(|| panic!("{alerts:#?}"));
    assert_eq!(limit["src"], "198.18.0.1");
    assert_eq!((limit["connections"].as_u64(), limit["limit"].as_u64()), (Some(6), Some(5)));
    assert!(alerts.iter().any(|a| a["alert"] == "mitigation" && a["src"] == "198.18.0.1"));
    drop((clients, server_side));
}

#[test]
fn syn_to_handshake_ratio_flags_a_flood() {
    const PORT: u16 = 19009;
    // Per-source limits out of the way: this is the global view.
    let mut g = Guard::start("gratio", PORT, &["--json", "--syn-rate", "1000000", "--syn-burst", "1000000"]);
    let mut flood = TestHosts::command_in(&g.hosts.client_ns, "hping3");
    flood
        .args(["-S", "-p", &PORT.to_string(), "-i", "u100", "-c", "20000", "-q", "198.18.0.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    assert!(flood.status().unwrap().success());
    std::thread::sleep(Duration::from_millis(1200));
    let (alerts, _) = g.stop();
    let r = alerts.iter().find(|a| a["alert"] == "syn_ratio").unwrap_or_else(|| panic!("{alerts:#?}"));
    assert!(r["syn_per_s"].as_f64().unwrap() >= 500.0, "{r}");
    assert!(r["ratio"].as_f64().unwrap() < 0.1, "{r}");
}

/// Decoded `watch --json` records of a stopped watch: (dport, flags).
fn watched(w: &mut ChildGuard) -> Vec<(u64, String)> {
    assert!(w.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    w.stdout_text()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["dport"].as_u64().unwrap(), v["flags"].to_string()))
        .collect()
}

#[test]
fn guard_at_tc_runs_first_and_observers_around_it_all_see_what_passes() {
    const OPEN: u16 = 19010;
    const BLOCKED: u16 = 19011;
    let hosts = TestHosts::new("gchain").unwrap();
    let ports = format!("{OPEN},{BLOCKED}");
    let watch = ["watch", "-i", SERVER_IF, "--json", "--dport", &ports];
    // A watch attached before the guard, the guard, a watch after it.
    let mut first = start_tcpscope(&hosts.server_ns, &watch);
    let mut g = Guard::on(hosts, OPEN, &["--hook", "tc"]);
    let mut second = start_tcpscope(&g.hosts.server_ns, &watch);
    for port in [OPEN, BLOCKED] {
        let l = listen_in_server(&g.hosts, port);
        std::thread::spawn(move || for _ in l.incoming() {});
    }
    g.ok(&["block", "add", "198.18.0.0/24", "--port", &BLOCKED.to_string()]);
    assert!(g.connects(Duration::from_secs(2)), "the open port connects");
    g.port = BLOCKED;
    assert!(!g.connects(Duration::from_millis(500)), "the rule holds with a watch attached before the guard");
    let list = String::from_utf8(g.cli(&["block", "list", "--json"]).stdout).unwrap();
    let rule: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert!(rule["hits"].as_u64().unwrap() >= 1, "{rule}");
    for (name, w) in [("first", &mut first), ("second", &mut second)] {
        let seen = watched(w);
        let syns = |port| seen.iter().filter(|(p, f)| *p == port && f.contains("SYN")).count();
        assert!(syns(u64::from(OPEN)) >= 1, "the {name} watch sees the SYN that passed: {seen:?}");
        assert_eq!(syns(u64::from(BLOCKED)), 0, "the {name} watch sees no dropped SYN: {seen:?}");
    }
}
