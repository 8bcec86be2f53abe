//! `tcpscope guard` with `block` / `allow` on live traffic between test
//! hosts: rules take effect without reload, TTLs expire, errors are clear.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::raw;
use common::*;
use tcpscope::testhost::{ChildGuard, TestHosts, CLIENT_IF, CLIENT_V4, SERVER_IF, SERVER_V4};

struct Guard {
    guard: ChildGuard,
    /// The guard's stderr lines as they come (its stdout, the alerts, is
    /// read when it stops).
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
    let _load = side_by_side();
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
    // Waits for the condition, not a deadline: a SYN the deleted rule still
    // dropped would be retransmitted, and the connection made later.
    let t = Instant::now();
    assert!(g.connects(Duration::from_secs(10)), "unblocked");
    eprintln!("connect after `block del` returned: {:?}", t.elapsed());

    // Port rule, per source prefix: only that port is refused.
    g.ok(&["block", "add", "198.18.0.0/24", "--port", &g.port.to_string()]);
    assert!(!g.connects(Duration::from_millis(300)));
    g.ok(&["block", "del", "198.18.0.0/24", "--port", &g.port.to_string()]);
    assert!(g.connects(Duration::from_secs(10)));

    // Allow wins over block.
    g.ok(&["block", "add", "198.18.0.0/15"]);
    assert!(!g.connects(Duration::from_millis(300)));
    g.ok(&["allow", "add", "198.18.0.1"]);
    assert!(g.connects(Duration::from_secs(10)));
    let out = g.cli(&["block", "del", "198.18.0.9/32"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no such rule"));
}

#[test]
fn ttl_expires_and_the_rule_disappears() {
    let _load = side_by_side();
    let g = Guard::start("gttl", 19002, &[]);
    g.ok(&["block", "add", "198.18.0.1", "--ttl", "700ms"]);
    assert!(!g.connects(Duration::from_millis(200)));
    // Once expired, the rule lets the client in (the kernel ignores it at
    // once), and the guard's sweep (once a second) deletes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.connects(Duration::from_millis(500)) {
        assert!(Instant::now() < deadline, "expired rule still blocks");
    }
    let listed = || g.cli(&["block", "list"]).stdout;
    while !listed().is_empty() {
        assert!(Instant::now() < deadline, "expired rule still listed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rules_file_loads_at_start_and_pins_are_root_only() {
    let _load = side_by_side();
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
    let _load = side_by_side();
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
    let _load = side_by_side();
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
    let _load = side_by_side();
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
    let _load = side_by_side();
    let g = Guard::start("gtc", 19007, &["--hook", "tc"]);
    assert!(g.connects(Duration::from_secs(2)));
    g.ok(&["block", "add", "198.18.0.0/30"]);
    assert!(!g.connects(Duration::from_millis(300)), "blocked at TC ingress");
    g.ok(&["block", "del", "198.18.0.0/30"]);
    assert!(g.connects(Duration::from_secs(10)));
}

#[test]
fn connection_limit_alerts_and_mitigates() {
    let _load = side_by_side();
    const PORT: u16 = 19008;
    let hosts = TestHosts::new("gclimit").unwrap();
    // --mitigate implies --enforce: five connections, then none.
    let mut g =
        Guard::on(hosts, PORT, &["--json", "--mitigate", "--conn-limit", "5", "--mitigate-ttl", "30s"]);
    let l = listen_in_server(&g.hosts, PORT);
    std::thread::spawn(move || l.incoming().flatten().collect::<Vec<_>>());
    let wait = Duration::from_secs(1);
    let held: Vec<TcpStream> = (0..5)
        .map(|i| connect_from(&g, CLIENT_V4, PORT, wait).unwrap_or_else(|| panic!("connection {i}")))
        .collect();
    assert!(connect_from(&g, CLIENT_V4, PORT, wait).is_none(), "the 6th is refused");
    // Mitigation blocked the source: even below the limit it gets nothing.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!g.connects(Duration::from_millis(500)), "source over the limit is blocked");
    let (alerts, summary) = g.stop();
    let limit = alerts.iter().find(|a| a["alert"] == "conn_limit").unwrap_or_else(|| panic!("{alerts:#?}"));
    assert_eq!(limit["src"], "198.18.0.1");
    assert_eq!((limit["connections"].as_u64(), limit["limit"].as_u64()), (Some(5), Some(5)), "{limit}");
    assert!(alerts.iter().any(|a| a["alert"] == "mitigation" && a["src"] == "198.18.0.1"));
    assert!(dropped_for(&summary, "conn_limit") >= 1, "{summary}");
    assert_summary_adds_up(&summary);
}

#[test]
fn connection_limit_without_enforce_only_alerts() {
    let _load = side_by_side();
    const PORT: u16 = 19023;
    let hosts = TestHosts::new("gclimita").unwrap();
    let mut g = Guard::on(hosts, PORT, &["--json", "--conn-limit", "2"]);
    let l = listen_in_server(&g.hosts, PORT);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for s in l.incoming().flatten() {
            kept.push(s);
            let _ = tx.send(kept.len());
        }
    });
    let held: Vec<TcpStream> = (0..3)
        .map(|i| connect_from(&g, CLIENT_V4, PORT, Duration::from_secs(2)).unwrap_or_else(|| panic!("{i}")))
        .collect();
    // Accepted: the server's sockets are established, and so counted.
    while rx.recv_timeout(Duration::from_secs(10)).expect("the server accepts") < 3 {}
    let (alerts, summary) = g.stop();
    drop(held);
    let limit = alerts.iter().find(|a| a["alert"] == "conn_limit").unwrap_or_else(|| panic!("{alerts:#?}"));
    assert_eq!((limit["connections"].as_u64(), limit["limit"].as_u64()), (Some(3), Some(2)), "{limit}");
    assert_eq!(dropped_for(&summary, "conn_limit"), 0, "{summary}");
}

#[test]
fn syn_to_handshake_ratio_flags_a_flood() {
    let _load = side_by_side();
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
    let _load = side_by_side();
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

/// The lean guard's summary adds up: every packet seen is dropped or
/// passed, and what passed is TCP, non-TCP, a fragment or unparsed.
fn assert_summary_adds_up(summary: &str) {
    let line = summary.lines().find(|l| l.starts_with("packets ")).unwrap_or_else(|| panic!("{summary}"));
    let num = |key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    let (seen, dropped, passed) = (num("packets "), num("dropped "), num("passed "));
    assert_eq!(seen, dropped + passed, "{line}");
    let parts = num("(tcp ") + num("non-tcp ") + num("fragments ") + num("unparsed ");
    assert_eq!(passed, parts, "{line}");
    assert!(dropped > 0, "{line}");
}

/// How many packets the stopped guard's summary says it dropped for `reason`.
fn dropped_for(summary: &str, reason: &str) -> u64 {
    let line = summary.lines().find(|l| l.contains("guard stopped:")).unwrap_or_else(|| panic!("{summary}"));
    line.split(&format!("{reason} "))
        .nth(1)
        .and_then(|r| r.split([',', ')']).next()?.parse().ok())
        .unwrap_or(0)
}

/// A listener that accepts on `addr` in the server namespace for as long
/// as the test runs.
fn serve(hosts: &TestHosts, addr: std::net::SocketAddr) {
    let l = TestHosts::run_in(&hosts.server_ns, move || std::net::TcpListener::bind(addr).unwrap())
        .join()
        .unwrap()
        .unwrap();
    std::thread::spawn(move || for _ in l.incoming() {});
}

fn raw_link(hosts: &TestHosts) -> raw::RawLink {
    raw::RawLink::open(&hosts.client_ns, CLIENT_IF, raw::mac_of(&hosts.server_ns, SERVER_IF))
}

/// Test hosts with an IPv6 listener on `port`, a raw link from the client,
/// and the client's and server's IPv6 addresses.
fn v6_raw_hosts(tag: &str, port: u16) -> (TestHosts, raw::RawLink, [u8; 16], [u8; 16]) {
    let hosts = TestHosts::new(tag).unwrap();
    serve(&hosts, SocketAddr::from((tcpscope::testhost::SERVER_V6, port)));
    let link = raw_link(&hosts);
    (hosts, link, tcpscope::testhost::CLIENT_V6.octets(), tcpscope::testhost::SERVER_V6.octets())
}

#[test]
fn ipv4_fragments_cannot_dodge_port_rules() {
    let _load = side_by_side();
    const BLOCKED: u16 = 19012;
    const OPEN: u16 = 19013;
    let hosts = TestHosts::new("gfrag").unwrap();
    for p in [BLOCKED, OPEN] {
        serve(&hosts, SocketAddr::from((SERVER_V4, p)));
    }
    let link = raw_link(&hosts);
    let (c, s) = (CLIENT_V4.octets(), SERVER_V4.octets());
    let send_syn = |sport: u16, dport: u16, cuts: &[usize]| {
        let seg = raw::syn_segment(&c, &s, sport, dport, 1000);
        for f in raw::ipv4_fragments(c, s, sport, &seg, cuts) {
            link.send(raw::ETH_P_IP, &f);
        }
    };
    let wait = Duration::from_millis(1500);
    // Control: with no guard the kernel reassembles a SYN whose first
    // fragment holds 8 bytes of TCP header, and answers it.
    send_syn(40001, BLOCKED, &[8]);
    assert!(link.syn_ack_seen(Duration::from_secs(5), BLOCKED, 40001), "control: the kernel answers it");

    let mut g = Guard::on(hosts, BLOCKED, &["--json", "--no-detect"]);
    g.ok(&["block", "add", "198.18.0.0/24", "--port", &BLOCKED.to_string()]);
    for (sport, cut) in [(40010, 8), (40011, 16)] {
        send_syn(sport, BLOCKED, &[cut]);
        assert!(
            !link.syn_ack_seen(wait, BLOCKED, sport),
            "a SYN cut after {cut} bytes reached a blocked port"
        );
    }
    // Tiny first fragments are refused whatever their port.
    send_syn(40012, OPEN, &[8]);
    assert!(!link.syn_ack_seen(wait, OPEN, 40012), "a tiny first fragment passed");
    // A first fragment with the whole fixed header: the port rule sees it,
    // and a fragmented SYN to an open port still connects.
    send_syn(40013, BLOCKED, &[24]);
    assert!(!link.syn_ack_seen(wait, BLOCKED, 40013), "the port rule holds for fragmented SYNs");
    send_syn(40014, OPEN, &[24]);
    assert!(link.syn_ack_seen(Duration::from_secs(5), OPEN, 40014), "legitimate fragments pass");
    // A fragment at offset 8 bytes would overwrite the TCP header.
    let seg = raw::syn_segment(&c, &s, 40015, OPEN, 1);
    link.send(raw::ETH_P_IP, &raw::ipv4_fragment(c, s, 77, 8, &seg[8..], false));
    // A blocked source loses every fragment, not only the first: none
    // reaches the kernel's reassembly.
    g.ok(&["block", "add", "198.18.0.1"]);
    let before = raw::ip_counter(&g.hosts.server_ns, "Ip", "ReasmReqds");
    send_syn(40016, OPEN, &[8, 24]);
    assert!(!link.syn_ack_seen(wait, OPEN, 40016));
    assert_eq!(
        raw::ip_counter(&g.hosts.server_ns, "Ip", "ReasmReqds"),
        before,
        "a fragment reached reassembly"
    );

    let (_, summary) = g.stop();
    assert_eq!(dropped_for(&summary, "tiny_fragment"), 3, "{summary}");
    assert_eq!(dropped_for(&summary, "port_rule"), 1, "{summary}");
    // The explicit one, and the second fragments of the two SYNs cut after
    // 8 bytes (they start at offset 8 too).
    assert_eq!(dropped_for(&summary, "fragment_offset_1"), 3, "{summary}");
    assert!(dropped_for(&summary, "block_rule") >= 3, "{summary}");
    assert_summary_adds_up(&summary);
}

/// `nmap -sS -f` from the client against `port`: its grepable line.
fn nmap_fragmented(hosts: &TestHosts, port: u16) -> String {
    let out = TestHosts::command_in(&hosts.client_ns, "nmap")
        .args(["-sS", "-f", "-p", &port.to_string(), "-n", "-Pn", "--max-retries", "1"])
        .args(["--host-timeout", "30s", "-oG", "-", "198.18.0.2"])
        .output()
        .expect("nmap (scripts/setup.sh installs it)");
    assert!(out.status.success(), "nmap: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("Ports:")).collect()
}

#[test]
fn nmap_fragmented_syn_scan_finds_nothing_behind_the_guard() {
    let _load = side_by_side();
    const PORT: u16 = 19014;
    let hosts = TestHosts::new("gnmapf").unwrap();
    serve(&hosts, SocketAddr::from((SERVER_V4, PORT)));
    let open = format!("{PORT}/open/");
    assert!(nmap_fragmented(&hosts, PORT).contains(&open), "control: nmap -f finds the port open");
    // --no-detect: these drops enforce the rules; they are no detector.
    let mut g = Guard::on(hosts, PORT, &["--json", "--no-detect"]);
    let line = nmap_fragmented(&g.hosts, PORT);
    assert!(!line.contains(&open), "nmap -f through the guard: {line}");
    let (_, summary) = g.stop();
    assert!(dropped_for(&summary, "tiny_fragment") >= 1, "{summary}");
}

#[test]
fn ipv6_headers_the_guard_cannot_follow_are_dropped() {
    let _load = side_by_side();
    const PORT: u16 = 19015;
    let (hosts, link, c, s) = v6_raw_hosts("gext6", PORT);
    let seg = |sport: u16| raw::syn_segment(&c, &s, sport, PORT, 1);
    let dst_opts = |n: usize| (0..n).map(|_| (60u8, raw::ipv6_options_header(1))).collect::<Vec<_>>();
    // A SYN behind 9 destination-options headers: one more than the parser follows.
    let deep = |sport| raw::ipv6_packet(c, s, &dst_opts(9), 6, &seg(sport));
    // A SYN in two fragments, the first with 8 bytes of its TCP header.
    let split = |sport: u16| {
        let t = seg(sport);
        let id = u32::from(sport);
        [
            raw::ipv6_packet(c, s, &[(44, raw::ipv6_fragment_header(0, true, id))], 6, &t[..8]),
            raw::ipv6_packet(c, s, &[(44, raw::ipv6_fragment_header(8, false, id))], 6, &t[8..]),
        ]
    };
    let long = Duration::from_secs(5);
    // Control: the kernel accepts the deep chain. (A first fragment without
    // the whole TCP header this kernel drops itself, as RFC 7112 asks; the
    // guard drops it anyway, for kernels that do not.)
    link.send(raw::ETH_P_IPV6, &deep(41001));
    assert!(link.syn_ack_seen(long, PORT, 41001), "control: 9 destination options");

    let mut g = Guard::on(hosts, PORT, &["--json", "--no-detect"]);
    g.ok(&["block", "add", "2001:db8::/32", "--port", &PORT.to_string()]);
    let wait = Duration::from_millis(1500);
    link.send(raw::ETH_P_IPV6, &deep(41003));
    assert!(!link.syn_ack_seen(wait, PORT, 41003), "9 destination options dodge the port rule");
    // 12 hop-by-hop and destination headers, mixed.
    let mixed: Vec<_> =
        (0..12).map(|i| (if i % 2 == 0 { 0u8 } else { 60 }, raw::ipv6_options_header(1))).collect();
    link.send(raw::ETH_P_IPV6, &raw::ipv6_packet(c, s, &mixed, 6, &seg(41004)));
    for f in split(41005) {
        link.send(raw::ETH_P_IPV6, &f);
    }
    assert!(!link.syn_ack_seen(wait, PORT, 41005), "a cut first fragment dodges the port rule");
    // An options header longer than the packet says it holds.
    let mut cut = raw::ipv6_packet(c, s, &[(60, raw::ipv6_options_header(3))], 6, &seg(41006));
    cut[4..6].copy_from_slice(&16u16.to_be_bytes());
    link.send(raw::ETH_P_IPV6, &cut);
    // An experimental extension header (253) the parser does not walk.
    link.send(
        raw::ETH_P_IPV6,
        &raw::ipv6_packet(c, s, &[(253, raw::ipv6_options_header(1))], 6, &seg(41007)),
    );
    assert!(!link.syn_ack_seen(wait, PORT, 41007));

    let (_, summary) = g.stop();
    assert_eq!(dropped_for(&summary, "ipv6_ext_chain_too_long"), 2, "{summary}");
    assert_eq!(dropped_for(&summary, "tiny_fragment"), 1, "{summary}");
    assert_eq!(dropped_for(&summary, "ipv6_ext_truncated"), 1, "{summary}");
    assert_eq!(dropped_for(&summary, "ipv6_ext_unknown"), 1, "{summary}");
}

#[test]
fn unparsable_pass_lets_an_unfollowable_chain_through() {
    let _load = side_by_side();
    const PORT: u16 = 19016;
    let (hosts, link, c, s) = v6_raw_hosts("gext6p", PORT);
    let g = Guard::on(hosts, PORT, &["--unparsable", "pass"]);
    let chain: Vec<_> = (0..9).map(|_| (60u8, raw::ipv6_options_header(1))).collect();
    let syn = raw::syn_segment(&c, &s, 41010, PORT, 1);
    link.send(raw::ETH_P_IPV6, &raw::ipv6_packet(c, s, &chain, 6, &syn));
    assert!(link.syn_ack_seen(Duration::from_secs(5), PORT, 41010), "passed as configured");
    drop(g);
}

/// Waits up to 20 s for a guard to end by itself; its exit status and stderr.
fn ends_by_itself(g: &mut Guard) -> (std::process::ExitStatus, String) {
    let st = g.guard.wait_timeout(Duration::from_secs(20)).expect("the guard notices and exits");
    std::thread::sleep(Duration::from_millis(100)); // the stderr reader's last lines
    (st, g.stderr.lock().unwrap().join("\n"))
}

#[test]
fn guard_ends_when_its_interface_or_namespace_goes() {
    let _load = side_by_side();
    let mut g = Guard::start("ggone", 19017, &[]);
    g.ok(&["block", "add", "198.18.0.9"]);
    let pins = format!("/sys/fs/bpf/tcpscope/{SERVER_IF}@{}", g.hosts.server_ns);
    assert!(std::path::Path::new(&pins).exists());
    tcpscope::testhost::ip(&["-n", &g.hosts.server_ns, "link", "del", SERVER_IF]).unwrap();
    let (st, err) = ends_by_itself(&mut g);
    assert!(!st.success(), "exits non-zero");
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("tcpscope: error: interface 'tsc-server' went away"), "{err}");
    assert!(!std::path::Path::new(&pins).exists(), "pins removed with the interface");
    let out = g.cli(&["block", "list"]);
    assert!(!out.status.success(), "block on a gone guard fails");

    // The same name again, in the same namespace: a new guard is accepted.
    let (c, s) = (&g.hosts.client_ns, &g.hosts.server_ns);
    // (The client end went with its peer: the pair is made anew.)
    tcpscope::testhost::ip(&[
        "link", "add", CLIENT_IF, "netns", c, "type", "veth", "peer", "name", SERVER_IF, "netns", s,
    ])
    .unwrap();
    let mut again = Command::new(tcpscope_bin());
    again.args(["guard", "--netns", s, "-i", SERVER_IF]).stdout(Stdio::piped());
    let (mut second, _) = ChildGuard::spawn_until_ready(again, "(link id ", Duration::from_secs(30)).unwrap();
    let list = g.cli(&["block", "list"]);
    assert!(list.status.success() && list.stdout.is_empty(), "a new interface starts with no rules");

    // Its network namespace deleted: the guard must not keep it alive.
    tcpscope::testhost::ip(&["netns", "del", s]).unwrap();
    let st = second.wait_timeout(Duration::from_secs(20)).expect("the guard notices the namespace is gone");
    assert!(!st.success());
}

#[test]
fn watch_and_stats_end_when_their_interface_goes() {
    let _load = side_by_side();
    let hosts = TestHosts::new("wgone").unwrap();
    let mut w = start_tcpscope(&hosts.server_ns, &["watch", "-i", SERVER_IF]);
    let mut s = start_tcpscope(&hosts.server_ns, &["stats", "-i", SERVER_IF, "--interval", "5"]);
    tcpscope::testhost::ip(&["-n", &hosts.server_ns, "link", "del", SERVER_IF]).unwrap();
    for (name, child) in [("watch", &mut w), ("stats", &mut s)] {
        let st = child.wait_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{name} notices"));
        assert!(!st.success(), "{name} exits non-zero");
    }
}

#[test]
fn rules_survive_kill_9_and_sigterm_and_sighup_reloads_the_file() {
    let _load = side_by_side();
    const PORT: u16 = 19018;
    let file = std::env::temp_dir().join(format!("tcpscope-hup-{}.toml", std::process::id()));
    std::fs::write(&file, "[[block]]\ncidr = \"198.18.0.0/24\"\nport = 1\n").unwrap();
    let rules = file.to_str().unwrap().to_string();
    let mut g = Guard::start("grestart", PORT, &["--rules", &rules]);
    g.ok(&["block", "add", "198.18.0.1", "--ttl", "1h"]);
    assert!(!g.connects(Duration::from_millis(300)));
    let listed = |g: &Guard| -> Vec<serde_json::Value> {
        let out = g.cli(&["block", "list", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let before = listed(&g);
    let runtime = |rules: &[serde_json::Value]| rules.iter().find(|r| r["cidr"] == "198.18.0.1/32").cloned();
    let hits = runtime(&before).unwrap()["hits"].as_u64().unwrap();
    assert!(hits >= 1);

    // kill -9, then a new guard: the rule is there with its hits and TTL.
    g.guard.child.kill().unwrap();
    g.guard.child.wait().unwrap();
    let ns = g.hosts.server_ns.clone();
    let start = |extra: &[&str]| {
        let mut cmd = Command::new(tcpscope_bin());
        cmd.args(["guard", "--netns", &ns, "-i", SERVER_IF, "--rules", &rules])
            .args(extra)
            .stdout(Stdio::piped());
        ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap()
    };
    let (child, lines) = start(&[]);
    g.guard = child;
    g.stderr = lines;
    assert!(g.stderr.lock().unwrap().iter().any(|l| l.contains("guarding with 2 rules")));
    let after = listed(&g);
    let r = runtime(&after).expect("the runtime rule survived kill -9");
    assert!(r["hits"].as_u64().unwrap() >= hits, "hits kept: {r}");
    let ttl = r["expires_in_ms"].as_u64().unwrap();
    assert!(ttl > 3_000_000 && ttl < 3_600_000, "TTL kept, still running: {r}");
    assert!(!g.connects(Duration::from_millis(300)), "and it still drops");

    // SIGHUP: the file again (its rule changed), the runtime rule kept.
    std::fs::write(&file, "[[block]]\ncidr = \"198.18.0.0/24\"\nport = 2\n").unwrap();
    // SAFETY: kill on our own child.
    unsafe { libc::kill(g.guard.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let ports =
        |rules: &[serde_json::Value]| rules.iter().filter_map(|r| r["port"].as_u64()).collect::<Vec<_>>();
    while ports(&listed(&g)) != [2] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let reloaded = listed(&g);
    assert_eq!(ports(&reloaded), [2], "the file's new rule replaced its old one: {reloaded:?}");
    assert!(runtime(&reloaded).is_some(), "the runtime rule stays");
    assert!(g.guard.child.try_wait().unwrap().is_none(), "SIGHUP does not stop the guard");

    // `block save` writes what a guard loads.
    let saved = std::env::temp_dir().join(format!("tcpscope-saved-{}.toml", std::process::id()));
    g.ok(&["block", "save", saved.to_str().unwrap()]);
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(
        text.contains("cidr = \"198.18.0.1/32\"") && text.contains("ttl = \"") && text.contains("port = 2"),
        "{text}"
    );
    assert_eq!(tcpscope::policy::parse_rules(&text, "saved").unwrap().len(), 2);

    // SIGTERM, then a guard without the file: runtime and file rules stay.
    let (_, _) = g.stop();
    let mut cmd = Command::new(tcpscope_bin());
    cmd.args(["guard", "--netns", &ns, "-i", SERVER_IF]).stdout(Stdio::piped());
    let (child, lines) = ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
    g.guard = child;
    g.stderr = lines;
    assert_eq!(listed(&g).len(), 2, "rules survive SIGTERM");
    g.ok(&["block", "flush"]);
    assert!(listed(&g).is_empty(), "block flush empties the lists");
    assert!(g.connects(Duration::from_secs(2)));
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&saved);
}

/// The rules-file state (in /run) and the pinned maps (in bpffs) can part:
/// pins removed, or pins that ended with a guard's private mount. A guard
/// started again with the same file then loads every rule of it, rather
/// than trusting a state that describes maps that are gone. Under
/// `ip netns exec`, where the guard must mount a bpffs of its own, it says
/// so; and `block` from outside names the way out.
#[test]
fn rules_file_loads_again_when_the_pins_are_gone() {
    let _load = side_by_side();
    let port = 19024;
    let mut g = Guard::start("gpins", port, &[]);
    g.stop();
    let file = std::env::temp_dir().join(format!("tcpscope-pins-{}.toml", std::process::id()));
    std::fs::write(&file, "[[block]]\ncidr = \"198.18.0.1\"\n").unwrap();
    let rules = file.to_str().unwrap().to_string();
    let start = |hosts: &TestHosts| {
        let mut cmd = Command::new(tcpscope_bin());
        cmd.args(["guard", "--netns", &hosts.server_ns, "-i", SERVER_IF, "--rules", &rules])
            .stdout(Stdio::piped());
        ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap()
    };
    (g.guard, g.stderr) = start(&g.hosts);
    assert!(!g.connects(Duration::from_millis(300)));
    g.stop();
    let pins = format!("/sys/fs/bpf/tcpscope/{SERVER_IF}@{}", g.hosts.server_ns);
    std::fs::remove_dir_all(&pins).unwrap();
    (g.guard, g.stderr) = start(&g.hosts);
    assert!(
        g.stderr.lock().unwrap().iter().any(|l| l.contains("guarding with 1 rules")),
        "the file's rule again"
    );
    assert!(!g.connects(Duration::from_millis(300)), "and it drops");
    g.stop();

    // Under `ip netns exec`: a private bpffs, said at start; still guarding.
    let mut cmd = TestHosts::command_in(&g.hosts.server_ns, tcpscope_bin());
    cmd.args(["guard", "-i", SERVER_IF, "--rules", &rules]).stdout(Stdio::piped());
    let (child, lines) = ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
    (g.guard, g.stderr) = (child, lines);
    let said = g.stderr.lock().unwrap().join("\n");
    assert!(
        said.contains("guarding with 1 rules") && said.contains("run `tcpscope guard --netns NAME`"),
        "{said}"
    );
    assert!(!g.connects(Duration::from_millis(300)));
    let out = Command::new("ip")
        .args(["netns", "exec", &g.hosts.server_ns, tcpscope_bin(), "block", "list", "-i", SERVER_IF])
        .output()
        .unwrap();
    let e = one_line_error(&out);
    assert!(e.contains("tcpscope guard --netns NAME"), "{e}");
    let _ = std::fs::remove_file(&file);
}

/// A rules file of `n` rules: every /32 of 198.18.0.0/15 (the test hosts'
/// range, so the client is among them), then IPv6 /128s of 2001:db8::/32.
fn many_rules(n: u32, file: &std::path::Path) {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(n as usize * 42);
    for i in 0..n {
        if i < 1 << 17 {
            let a = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i);
            let _ = write!(text, "[[block]]\ncidr = \"{a}\"\n");
        } else {
            let a = std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i) << 16 | 7);
            let _ = write!(text, "[[block]]\ncidr = \"{a}/128\"\n");
        }
    }
    std::fs::write(file, text).unwrap();
}

#[test]
fn a_million_rules_load_and_all_of_them_guard() {
    let _load = alone();
    const N: u32 = 1_000_000;
    let file = std::env::temp_dir().join(format!("tcpscope-1m-{}.toml", std::process::id()));
    many_rules(N, &file);
    let g = Guard::start("g1m", 19019, &["--rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(g.stderr.lock().unwrap().iter().any(|l| l.contains(&format!("guarding with {N} rules"))));
    let out = g.cli(&["block", "list"]);
    assert!(out.status.success());
    let listed = out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(listed, N as usize, "block list shows every rule");
    assert!(!g.connects(Duration::from_millis(300)), "the client's /32 is among them");
}

#[test]
fn an_endless_rules_file_is_refused_with_its_bound() {
    let _load = side_by_side();
    let out =
        Command::new(tcpscope_bin()).args(["guard", "-i", "lo", "--rules", "/dev/zero"]).output().unwrap();
    let e = one_line_error(&out);
    assert!(e.contains("/dev/zero") && e.contains("larger than 256 MiB"), "{e}");
}

#[test]
fn block_add_takes_many_cidrs_from_stdin_in_batches() {
    let _load = side_by_side();
    let g = Guard::start("gstdin", 19020, &[]);
    let mut list = String::from("# from a feed\n\n");
    for i in 0..10_000u32 {
        list.push_str(&format!("2001:db8:{:x}:{:x}::/64\n", i >> 8, i & 0xff));
    }
    list.push_str("198.18.0.1\n");
    let mut child = Command::new(tcpscope_bin())
        .args(["block", "add", "-", "198.18.3.0/24", "-i", SERVER_IF, "--netns", &g.hosts.server_ns])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(list.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let out = g.cli(&["block", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10_002);
    assert!(!g.connects(Duration::from_millis(300)));
    // A bad line names itself, and nothing is written.
    let mut child = Command::new(tcpscope_bin())
        .args(["block", "add", "-", "-i", SERVER_IF, "--netns", &g.hosts.server_ns])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"198.18.9.0/24\nnot-a-cidr\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard input line 2"), "{out:?}");
    let out = g.cli(&["block", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10_002);
}

#[test]
fn mitigation_rules_expire_and_are_swept() {
    let _load = side_by_side();
    const PORT: u16 = 19021;
    let g = Guard::start(
        "gmitttl",
        PORT,
        &["--mitigate", "--mitigate-ttl", "2s", "--syn-rate", "10", "--syn-burst", "20"],
    );
    let mut flood = TestHosts::command_in(&g.hosts.client_ns, "hping3");
    flood
        .args(["-S", "-p", &PORT.to_string(), "-i", "u1000", "-c", "200", "-q", "198.18.0.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut flood = flood.spawn().expect("hping3 (scripts/setup.sh installs it)");
    // The map as it is (`block list` would delete what expired itself).
    let pins = format!("/sys/fs/bpf/tcpscope/{SERVER_IF}@{}", g.hosts.server_ns);
    let entries = |map: &str| -> usize {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned", &format!("{pins}/{map}")])
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).map_or(0, |v| v.len())
    };
    // The kernel put the rule in with its TTL, and in the expiry index: the
    // guard's sweep finds it there and deletes both once its time is up.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = false;
    loop {
        let (rules, index) = (entries("block_v4"), entries("expiring"));
        seen |= rules == 1 && index == 1;
        if seen && rules == 0 && index == 0 {
            break;
        }
        let l = format!("{rules} rules, {index} in the index");
        assert!(Instant::now() < deadline, "mitigation rule seen: {seen}; list: {l}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(flood.wait().unwrap().success());
    assert!(g.connects(Duration::from_secs(2)), "released");
}

/// A TCP connection from `src` (an address of the client host) to the
/// server's `port`, made in the client namespace; None if it fails within
/// `wait`.
fn connect_from(g: &Guard, src: std::net::Ipv4Addr, port: u16, wait: Duration) -> Option<TcpStream> {
    TestHosts::run_in(&g.hosts.client_ns, move || {
        use std::os::fd::FromRawFd;
        // SAFETY: a new socket, owned by the TcpStream below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        let sin = |a: std::net::Ipv4Addr, p: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: p.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(a).to_be() },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let local = sin(src, 0);
        // SAFETY: valid sockaddr_in of the given length.
        assert_eq!(unsafe { libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) }, 0);
        let tv = libc::timeval { tv_sec: wait.as_secs() as i64, tv_usec: wait.subsec_micros() as i64 };
        // SAFETY: SO_SNDTIMEO bounds connect(); valid timeval.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &tv as *const _ as *const libc::c_void,
                16,
            )
        };
        let peer = sin(SERVER_V4, port);
        // SAFETY: as above.
        let r = unsafe { libc::connect(fd, &peer as *const _ as *const libc::sockaddr, len) };
        (r == 0).then_some(stream)
    })
    .join()
    .unwrap()
    .unwrap()
}

#[test]
fn conn_limit_enforce_refuses_the_next_connection_from_that_source_only() {
    let _load = side_by_side();
    const PORT: u16 = 19022;
    let hosts = TestHosts::new("genforce").unwrap();
    let other = std::net::Ipv4Addr::new(198, 18, 0, 3);
    tcpscope::testhost::ip(&["-n", &hosts.client_ns, "addr", "add", "198.18.0.3/24", "dev", CLIENT_IF])
        .unwrap();
    let mut g = Guard::on(hosts, PORT, &["--conn-limit", "3", "--enforce", "--no-detect"]);
    let l = listen_in_server(&g.hosts, PORT);
    // The server holds each connection until its client closes it.
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || std::io::Read::read_to_end(&mut s, &mut Vec::new()));
        }
    });
    let wait = Duration::from_secs(2);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|i| connect_from(&g, CLIENT_V4, PORT, wait).unwrap_or_else(|| panic!("connection {i}")))
        .collect();
    assert!(connect_from(&g, CLIENT_V4, PORT, wait).is_none(), "a 4th connection from the same source");
    assert!(connect_from(&g, other, PORT, wait).is_some(), "another source still connects");
    // One closed: the source holds 2, and may connect again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while connect_from(&g, CLIENT_V4, PORT, wait).is_none() {
        let dump = Command::new("bpftool").args(["map", "dump", "name", "peer_conns"]).output().unwrap();
        assert!(
            Instant::now() < deadline,
            "the source is let in again below the limit: {}",
            String::from_utf8_lossy(&dump.stdout)
        );
    }
    let (alerts, summary) = g.stop();
    assert!(alerts.is_empty(), "--no-detect: no alerts: {alerts:?}");
    assert!(dropped_for(&summary, "conn_limit") >= 1, "{summary}");
}

/// `guard --inspect` keeps the full inspector's counters for what it sees
/// (every flag, SYN-ACKs, malformed), while it still guards; the lean guard
/// (the default) does not count flags at all.
#[test]
fn inspect_keeps_every_counter_and_still_guards() {
    let _load = side_by_side();
    let port = 19025;
    let blocked = (port + 1).to_string();
    let flag_count = |summary: &str, flag: &str| -> u64 {
        let line =
            summary.lines().find(|l| l.starts_with("tcp flags:")).unwrap_or_else(|| panic!("{summary}"));
        let (_, rest) = line.split_once(&format!(" {flag} ")).unwrap_or_else(|| panic!("{flag} in {line}"));
        rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    for inspect in [true, false] {
        let extra: &[&str] = if inspect { &["--inspect"] } else { &[] };
        let mut g = Guard::start(if inspect { "ginsp" } else { "glean" }, port, extra);
        g.ok(&["block", "add", "198.18.0.0/24", "--port", &blocked]);
        assert!(g.connects(Duration::from_secs(5)), "the open port");
        let addr = SocketAddr::from((SERVER_V4, port + 1));
        let refused = TestHosts::run_in(&g.hosts.client_ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err()
        });
        assert!(refused.join().unwrap().unwrap(), "the blocked port");
        let (_, summary) = g.stop();
        assert!(dropped_for(&summary, "port_rule") >= 1, "{summary}");
        if inspect {
            // Our SYN that passed and the one dropped, at least; the ACKs
            // of the handshake and of the close.
            assert!(flag_count(&summary, "SYN") >= 2, "{summary}");
            assert!(flag_count(&summary, "ACK") >= 2, "{summary}");
            assert!(summary.contains("malformed 0"), "{summary}");
        } else {
            assert!(!summary.contains("tcp flags:"), "the lean guard counts no flags: {summary}");
        }
    }
}

/// A guard that fails to start for a reason that is not its maps' (here:
/// a `watch` holds the interface's XDP hook) leaves the rules of the guard
/// before it as they were, for the next one to take over.
#[test]
fn a_failed_start_keeps_the_rules() {
    let _load = side_by_side();
    let mut g = Guard::start("gkeep", 19026, &[]);
    g.ok(&["block", "add", "198.18.0.1", "--ttl", "1h"]);
    g.stop();
    let mut watch = start_tcpscope(&g.hosts.server_ns, &["watch", "-i", SERVER_IF, "--hook", "xdp"]);
    let out = Command::new(tcpscope_bin())
        .args(["guard", "--netns", &g.hosts.server_ns, "-i", SERVER_IF])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the XDP hook is taken: {out:?}");
    watch.interrupt_and_wait(Duration::from_secs(20)).unwrap();
    let mut cmd = Command::new(tcpscope_bin());
    cmd.args(["guard", "--netns", &g.hosts.server_ns, "-i", SERVER_IF]).stdout(Stdio::piped());
    (g.guard, g.stderr) = ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
    assert!(g.stderr.lock().unwrap().iter().any(|l| l.contains("guarding with 1 rules")), "{:?}", g.stderr);
    assert!(!g.connects(Duration::from_millis(300)), "and it still drops");
    g.ok(&["block", "flush"]);
}

#[test]
fn l7_rules_stop_real_tls_and_http_clients_by_name_and_spare_the_others() {
    let _load = side_by_side();
    let hosts = TestHosts::new("gl7").unwrap();
    // ClientHellos and request heads in several segments.
    small_mss(&hosts, 200);
    let dir = std::env::temp_dir().join(format!("tcpscope-gl7-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _web = web_server(&hosts, &dir);
    let mut g = Guard::on(hosts, 443, &["--json"]);
    g.ok(&["block", "add", "--sni", "blocked.example", "--sni", "*.evil.example"]);
    g.ok(&["block", "add", "--host", "blocked.example", "--http-method", "delete"]);
    let list = String::from_utf8(g.cli(&["block", "list"]).stdout).unwrap();
    for rule in [
        "block sni blocked.example",
        "block sni *.evil.example",
        "block host blocked.example",
        "block http-method DELETE",
    ] {
        assert!(list.contains(rule), "{rule} in {list}");
    }

    let server = SERVER_V4.to_string();
    let hosts = &g.hosts;
    let https = |name: &str| {
        let resolve = format!("{name}:443:{server}");
        client_ok(
            hosts,
            "curl",
            &["-sk", "--max-time", "3", "--resolve", &resolve, &format!("https://{name}/")],
        )
    };
    // curl (TLS 1.3 with its own extension order): by SNI.
    assert_eq!(https("ok.example").as_deref(), Some("ok"), "another name on the same port works");
    assert_eq!(https("blocked.example"), None);
    assert_eq!(https("Blocked.Example"), None, "names have no case");
    assert_eq!(https("a.evil.example"), None, "the wildcard");
    assert_eq!(https("evil.example").as_deref(), Some("ok"), "the wildcard covers names under it only");
    // openssl s_client and Python's ssl: the handshake completes or not.
    let openssl = |name: &str| {
        let out = TestHosts::command_in(&hosts.client_ns, "timeout")
            .args([
                "4",
                "openssl",
                "s_client",
                "-brief",
                "-connect",
                &format!("{server}:443"),
                "-servername",
                name,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).contains("CONNECTION ESTABLISHED")
    };
    assert!(openssl("ok.example"));
    assert!(!openssl("blocked.example"));
    let python = |name: &str| tls_get(hosts, name);
    assert_eq!(python("ok.example").as_deref(), Some("HTTP/1.0 200 OK\n"));
    assert_eq!(python("x.evil.example"), None);
    // HTTP/1 on 8080: by Host, by method.
    let http = |args: &[&str]| {
        let mut all = vec!["-s", "--max-time", "3"];
        all.extend_from_slice(args);
        let url = format!("http://{server}:8080/");
        all.push(&url);
        client_ok(hosts, "curl", &all)
    };
    assert_eq!(http(&["-H", "Host: ok.example"]).as_deref(), Some("ok"));
    assert_eq!(http(&["-H", "Host: blocked.example"]), None);
    assert_eq!(http(&["-X", "DELETE", "-H", "Host: ok.example"]), None);
    assert_eq!(http(&["-X", "GET", "-H", "Host: ok.example"]).as_deref(), Some("ok"));

    // Per rule: a hit per connection it stopped (curl may try twice).
    let listed = String::from_utf8(g.cli(&["block", "list", "--json"]).stdout).unwrap();
    let hits = |field: &str, name: &str| {
        listed
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v[field] == name)
            .unwrap_or_else(|| panic!("{field} {name} in {listed}"))["hits"]
            .as_u64()
            .unwrap()
    };
    assert!(hits("sni", "blocked.example") >= 3, "{listed}");
    assert!(hits("sni", "*.evil.example") >= 2, "{listed}");
    assert!(hits("host", "blocked.example") >= 1 && hits("http_method", "DELETE") >= 1, "{listed}");
    // A head too long to read (over 4 KiB) could hide a Host: dropped.
    let big = format!("X-Big: {}", "x".repeat(5000));
    assert_eq!(http(&["-H", "Host: ok.example", "-H", &big]), None, "undecided, dropped");
    // Deleted at runtime: the name works again.
    g.ok(&["block", "del", "--sni", "blocked.example"]);
    assert_eq!(https("blocked.example").as_deref(), Some("ok"), "the rule is gone");
    // With no L7 rule left, no flow is held: the long head passes.
    g.ok(&["block", "flush"]);
    assert_eq!(http(&["-H", "Host: ok.example", "-H", &big]).as_deref(), Some("ok"), "after the flush");

    let (alerts, summary) = g.stop();
    let blocked: Vec<(String, String)> = alerts
        .iter()
        .filter(|a| a["alert"] == "l7_blocked")
        .map(|a| (a["rule"].as_str().unwrap().to_string(), a["name"].as_str().unwrap().to_string()))
        .collect();
    for want in [
        ("sni", "blocked.example"),
        ("sni", "a.evil.example"),
        ("sni", "x.evil.example"),
        ("host", "blocked.example"),
        ("http_method", "delete"),
    ] {
        assert!(blocked.iter().any(|(r, n)| (r.as_str(), n.as_str()) == want), "{want:?} in {blocked:?}");
    }
    assert!(alerts.iter().filter(|a| a["alert"] == "l7_blocked").all(|a| a["src"] == CLIENT_V4.to_string()));
    assert!(dropped_for(&summary, "l7_rule") >= 7, "{summary}");
    assert!(dropped_for(&summary, "l7_undecided") >= 1, "{summary}");
    assert!(alerts.iter().any(|a| a["alert"] == "l7_undecided" && a["reason"] == "too_large"), "{alerts:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_first_message_left_incomplete_is_given_up_on_after_the_l7_timeout() {
    let _load = side_by_side();
    let hosts = TestHosts::new("gl7t").unwrap();
    let dir = std::env::temp_dir().join(format!("tcpscope-gl7t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _web = web_server(&hosts, &dir);
    let mut g = Guard::on(hosts, 443, &["--json", "--l7-timeout", "1s"]);
    g.ok(&["block", "add", "--sni", "blocked.example"]);
    // Half a ClientHello, then nothing for 9 s (waiting out the timeout
    // and the guard's 5 s sweep), then the rest: the rest drops, so the
    // server never reads the name. Bounded by the socket's timeout.
    let hello = tcpscope::testpkt::client_hello("ok.example", false);
    let hex: String = hello.iter().map(|b| format!("{b:02x}")).collect();
    let code = format!(
        "import socket, time\nh = bytes.fromhex('{hex}')\ns = socket.create_connection(('{SERVER_V4}', 443), timeout=3)\n\
         s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\ns.sendall(h[:60])\ntime.sleep(9)\ns.sendall(h[60:])\n\
         try:\n    print(len(s.recv(100)))\nexcept OSError as e:\n    print('no answer', e)\n"
    );
    let said = client_ok(&g.hosts, "/usr/bin/python3", &["-c", &code]);
    // No ServerHello: the server timed out on the half it had (0 bytes,
    // its close), or the client on the server.
    assert!(said.as_deref().is_some_and(|s| s == "0\n" || s.starts_with("no answer")), "{said:?}");
    // A name no rule covers, sent whole: served.
    assert_eq!(tls_get(&g.hosts, "ok.example").as_deref(), Some("HTTP/1.0 200 OK\n"));
    let (alerts, summary) = g.stop();
    let timeouts: Vec<_> = alerts.iter().filter(|a| a["alert"] == "l7_undecided").collect();
    assert_eq!(timeouts.len(), 1, "{alerts:?}");
    assert_eq!((timeouts[0]["reason"].as_str(), timeouts[0]["dport"].as_u64()), (Some("timeout"), Some(443)));
    assert!(summary.contains("1 L7 first messages not complete within --l7-timeout"), "{summary}");
    assert!(dropped_for(&summary, "l7_undecided") >= 1, "{summary}");
    let _ = std::fs::remove_dir_all(dir);
}
