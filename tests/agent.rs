//! `tcpscope agent` with the real peer: Debian's Prometheus scrapes it with
//! the shipped scrape config (deploy/prometheus/prometheus.yml, only its
//! target and intervals rewritten), known traffic is made between the test
//! hosts, and Prometheus' HTTP API must show exactly that traffic.
//! `promtool check metrics` must accept the endpoint's output.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tcpscope::testhost::{ChildGuard, TestHosts, SERVER_IF, SERVER_V4};

const AGENT: &str = "127.0.0.1:19917";
const PROMETHEUS: &str = "127.0.0.1:19990";

/// A control socket of the test's own (tests run side by side).
fn own_socket(tag: &str) -> String {
    format!("/run/tcpscope/test-{tag}-{}.sock", std::process::id())
}

fn http_get(addr: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{addr}{path}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// One instant query's value, if the series exists.
fn query(q: &str) -> Option<f64> {
    query_at(PROMETHEUS, q)?.first()?["value"][1].as_str()?.parse().ok()
}

/// One instant query's result rows.
fn query_at(prometheus: &str, q: &str) -> Option<Vec<serde_json::Value>> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-G",
            &format!("http://{prometheus}/api/v1/query"),
            "--data-urlencode",
        ])
        .arg(format!("query={q}"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().cloned()
}

/// Waits (up to a minute) until `q` answers `want`, or fails saying what it answered.
fn wait_for(q: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = query(q);
        if last == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{q}: Prometheus answers {last:?}, not {want}");
}

fn start_prometheus(dir: &std::path::Path, agent: &str, prometheus: &str) -> ChildGuard {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/prometheus.yml"))
            .unwrap();
    let config = shipped.replace("127.0.0.1:9917", agent).replace("15s", "1s");
    assert!(config.contains(agent), "the shipped config names the agent's default address");
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    // The shipped alert rules, beside it as the config names them.
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/tcpscope-rules.yml"),
        dir.join("tcpscope-rules.yml"),
    )
    .unwrap();
    let check = Command::new("promtool").arg("check").arg("config").arg(&file).output().unwrap();
    assert!(check.status.success(), "promtool check config: {check:?}");
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={prometheus}"))
        .stdout(Stdio::null());
    ChildGuard::spawn_until_ready(cmd, "Server is ready to receive web requests", Duration::from_secs(60))
        .expect("Prometheus starts (scripts/setup.sh installs Debian's prometheus)")
        .0
}

#[test]
fn prometheus_sees_exactly_the_traffic_made() {
    const PORT: u16 = 18301;
    const CLOSED: u16 = 18302;
    const N: usize = 7;
    let hosts = TestHosts::new("agent").unwrap();
    let mut agent = Command::new(tcpscope_bin());
    agent
        .args(["agent", "--netns", &hosts.server_ns, "-i", SERVER_IF, "--listen", AGENT])
        .args(["--control-socket", &own_socket("prom")])
        .stdout(Stdio::null());
    let (mut agent, _) =
        ChildGuard::spawn_until_ready(agent, "metrics on http://", Duration::from_secs(30)).unwrap();

    // Fixed label sets are there from the start, at 0.
    let text = http_get(AGENT, "/metrics");
    assert!(
        text.contains(&format!("tcpscope_tcp_flags_total{{flag=\"RST\",interface=\"{SERVER_IF}\"}} 0")),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("tcpscope-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _prometheus = start_prometheus(&dir, AGENT, PROMETHEUS);

    let listener = listen_in_server(&hosts, PORT);
    let server = std::thread::spawn(move || {
        for _ in 0..N {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
        }
    });
    TestHosts::run_in(&hosts.client_ns, || {
        for _ in 0..N {
            let mut s = TcpStream::connect(SocketAddr::from((SERVER_V4, PORT))).unwrap();
            s.write_all(&[1; 100]).unwrap();
        }
        // A closed port: the server's kernel answers with a reset.
        assert!(TcpStream::connect(SocketAddr::from((SERVER_V4, CLOSED))).is_err());
    })
    .join()
    .unwrap()
    .unwrap();
    server.join().unwrap();

    wait_for(&format!("tcpscope_connections_opened_total{{direction=\"in\",port=\"{PORT}\"}}"), N as f64);
    wait_for(&format!("tcpscope_connections_closed_total{{direction=\"in\",port=\"{PORT}\"}}"), N as f64);
    // Incoming SYNs on the server's interface: the N connections' and the one to the closed port.
    wait_for(&format!("tcpscope_tcp_flags_total{{interface=\"{SERVER_IF}\",flag=\"SYN\"}}"), (N + 1) as f64);
    wait_for(&format!("tcpscope_malformed_total{{interface=\"{SERVER_IF}\",reason=\"tcp_bad_doff\"}}"), 0.0);
    assert!(
        query("tcpscope_resets_total{direction=\"sent\"}").is_some_and(|v| v >= 1.0),
        "the closed port's reset"
    );
    assert!(query(&format!("tcpscope_packets_total{{interface=\"{SERVER_IF}\",hook=\"tc\"}}"))
        .is_some_and(|v| v >= (4 * N) as f64));
    assert!(query("process_resident_memory_bytes{job=\"tcpscope\"}").is_some_and(|v| v > 0.0));

    // The endpoint's own output, histograms and all, passes Prometheus' linter.
    let text = http_get(AGENT, "/metrics");
    assert!(text.contains("tcpscope_handshake_seconds_bucket"), "{text}");
    let mut check =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).spawn().unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(check.wait().unwrap().success(), "promtool check metrics:\n{text}");
    // Asked for OpenMetrics (as Prometheus asks first, so the counts above
    // came that way), the same series, and the Python client's strict
    // OpenMetrics parser accepts it (it wants # EOF, counters' families
    // without _total, and more).
    let open = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-H", "Accept: application/openmetrics-text; version=1.0.0"])
        .arg(format!("http://{AGENT}/metrics"))
        .output()
        .unwrap();
    let parse =
        "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
                 for f in p(sys.stdin.read()):\n    for s in f.samples:\n        print(s.name)";
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs python3-prometheus-client)");
    py.stdin.take().unwrap().write_all(&open.stdout).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(parsed.status.success(), "OpenMetrics parser: {}", String::from_utf8_lossy(&parsed.stderr));
    let names = |t: &str| {
        let mut v: Vec<String> = t
            .lines()
            .filter(|l| l.starts_with("tcpscope_"))
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&String::from_utf8_lossy(&parsed.stdout)), names(&text), "the same samples both ways");
    // Every shipped alert rule evaluated, without error, against the live agent.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: serde_json::Value = serde_json::from_str(&http_get(PROMETHEUS, "/api/v1/rules")).unwrap();
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(rules.len(), 5, "the shipped rules are loaded: {v}");
        let evaluated =
            rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")));
        if evaluated {
            for r in &rules {
                assert_eq!(r["health"], "ok", "rule {} evaluates without error: {r}", r["name"]);
            }
            break;
        }
        assert!(Instant::now() < deadline, "rules not evaluated within a minute: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }

    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A port in use is one clear line, before anything is attached.
#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(tcpscope_bin())
        .args(["agent", "-i", "lo", "--listen", &addr, "--control-socket", &own_socket("port")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&addr) && err.contains("--listen"), "{err}");
}

/// The agent's own endpoint, read until `line` shows `want` (a minute at most).
fn wait_for_metric(line: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while Instant::now() < deadline {
        let text = http_get(AGENT_2, "/metrics");
        seen = text.lines().find(|l| l.starts_with(line)).unwrap_or("").to_string();
        if seen.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{line}: the agent shows {seen:?}, not {want}");
}

const AGENT_2: &str = "127.0.0.1:19918";

fn connect_n(hosts: &TestHosts, port: u16, n: usize) {
    let listener = listen_in_server(hosts, port);
    TestHosts::run_in(&hosts.client_ns, move || {
        for _ in 0..n {
            TcpStream::connect(SocketAddr::from((SERVER_V4, port))).unwrap();
        }
    })
    .join()
    .unwrap()
    .unwrap();
    drop(listener);
}

/// An interface deleted under the agent is said once, not an error; when
/// an interface of that name is back, the agent counts on it again, and
/// its counters go on from where they were.
#[test]
fn an_interface_that_goes_and_comes_back_is_counted_again() {
    use tcpscope::testhost::{ip, CLIENT_IF};
    let hosts = TestHosts::new("agentif").unwrap();
    let mut agent = Command::new(tcpscope_bin());
    agent
        .args(["agent", "--netns", &hosts.server_ns, "-i", SERVER_IF, "--listen", AGENT_2])
        .args(["--control-socket", &own_socket("if")])
        .stdout(Stdio::null());
    let (mut agent, lines) =
        ChildGuard::spawn_until_ready(agent, "metrics on http://", Duration::from_secs(30)).unwrap();
    let syn = format!("tcpscope_tcp_flags_total{{flag=\"SYN\",interface=\"{SERVER_IF}\"}}");
    connect_n(&hosts, 18303, 2);
    wait_for_metric(&syn, 2);

    ip(&["-n", &hosts.client_ns, "link", "del", CLIENT_IF]).unwrap(); // both ends go
    let said = |what: &str| lines.lock().unwrap().iter().any(|l| l.contains(what));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !said("attaching again when it is back") {
        assert!(Instant::now() < deadline, "the agent did not notice: {:?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent keeps running");
    hosts.link().unwrap(); // the same names, new interfaces
    while !said("is there: attached") {
        assert!(Instant::now() < deadline, "the agent did not attach again: {:?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    connect_n(&hosts, 18304, 3);
    wait_for_metric(&syn, 5);
    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
}

/// The shipped systemd unit: `systemd-analyze verify` has nothing to say
/// of it (its binary pointed at the one built), and the agent runs as an
/// unprivileged user with exactly the unit's capabilities; with one of
/// them fewer it refuses, naming the one missing.
#[test]
fn the_systemd_unit_verifies_and_its_capabilities_suffice() {
    use std::os::unix::fs::PermissionsExt;
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/tcpscope-agent.service"
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!("tcpscope-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A copy of the binary that any user may run.
    let bin = dir.join("tcpscope");
    std::fs::copy(tcpscope_bin(), &bin).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.join("tcpscope-agent.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/tcpscope", bin.to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&file).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {out:?}");

    // What RuntimeDirectory= and StateDirectory= give the unit's user.
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    Command::new("chown").args(["nobody:nogroup"]).arg(&run).status().unwrap();
    assert!(unit.contains("RuntimeDirectory=tcpscope") && unit.contains("StateDirectory=tcpscope"));
    assert!(unit.contains("--control-socket /run/tcpscope/agent.sock") || !unit.contains("--control-socket"));
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let run_with = |caps: &[String], listen: &str| {
        let set = format!("-all,{}", caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","));
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(format!("--inh-caps={set}"))
            .arg(format!("--ambient-caps={set}"))
            .arg(format!("--bounding-set={set}"))
            .arg(&bin)
            .args(["agent", "-i", "lo", "--listen", listen, "--control-socket"])
            .arg(run.join("agent.sock"))
            .arg("--state-dir")
            .arg(run.join("state"));
        cmd
    };
    let mut cmd = run_with(&caps, "127.0.0.1:19919");
    cmd.stdout(Stdio::null());
    let (mut agent, _) = ChildGuard::spawn_until_ready(cmd, "metrics on http://", Duration::from_secs(30))
        .expect("the agent starts with the unit's capabilities alone");
    assert!(http_get("127.0.0.1:19919", "/metrics")
        .contains("tcpscope_packets_total{hook=\"tc\",interface=\"lo\"}"));
    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    // The guard pins its rules where only root may write: said in one
    // line naming the fix, not a raw errno.
    let mut guard = run_with(&caps, "127.0.0.1:19920");
    let out = guard.arg("--guard").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.lines().count() == 1 && err.contains("User=root"),
        "--guard as nobody: {err}"
    );
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let out = run_with(&fewer, "127.0.0.1:19920").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.lines().count() == 1, "without {dropped}: {err}");
        assert!(err.contains(&format!("CAP_{}", dropped.to_uppercase())), "without {dropped}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every panel of the shipped Grafana dashboard, its query run by the real
/// Prometheus (Grafana's variables given their meaning: every instance, a
/// one-minute rate window), shows data after traffic made for it: packets,
/// a malformed segment, connections with data, a reset, a transfer under
/// loss (retransmits), a rule's drops, a port scan and a SYN flood (the
/// guard's alerts), with the agent guarding and timing its programs. And
/// the shipped SYN-flood and port-scan alert rules fire.
#[test]
fn every_dashboard_panel_shows_its_traffic_and_the_flood_and_scan_rules_fire() {
    const AGENT_3: &str = "127.0.0.1:19928";
    const PROMETHEUS_3: &str = "127.0.0.1:19991";
    const PORT: u16 = 18321;
    const LOSSY: u16 = 18322;
    const BLOCKED: u16 = 18323;
    const CLOSED: u16 = 18324;
    use tcpscope::testhost::{CLIENT_IF, CLIENT_V4};
    let hosts = TestHosts::new("agdash").unwrap();
    let dir = std::env::temp_dir().join(format!("tcpscope-dash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let mut agent = Command::new(tcpscope_bin());
    agent
        .args([
            "agent",
            "--guard",
            "--bpf-stats",
            "--netns",
            &hosts.server_ns,
            "-i",
            SERVER_IF,
            "--listen",
            AGENT_3,
        ])
        .arg("--control-socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::null());
    let (mut agent, _) =
        ChildGuard::spawn_until_ready(agent, "metrics on http://", Duration::from_secs(30)).unwrap();
    let _prometheus = start_prometheus(&dir, AGENT_3, PROMETHEUS_3);
    // Prometheus has the counters before the traffic, or a rate over the
    // traffic has nothing to start from.
    let deadline = Instant::now() + Duration::from_secs(120);
    while query_at(PROMETHEUS_3, "tcpscope_tcp_flags_total").is_none_or(|r| r.is_empty()) {
        assert!(Instant::now() < deadline, "Prometheus does not scrape the agent");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Connections with data both ways (handshakes, RTT, opens and closes).
    let listener = listen_in_server(&hosts, PORT);
    let server = std::thread::spawn(move || {
        for _ in 0..5 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"world").unwrap();
        }
    });
    TestHosts::run_in(&hosts.client_ns, || {
        for _ in 0..5 {
            let mut s = TcpStream::connect(SocketAddr::from((SERVER_V4, PORT))).unwrap();
            s.write_all(b"hello").unwrap();
            s.read_exact(&mut [0u8; 5]).unwrap();
        }
        // A reset from the closed port (and the kernel's drop of the SYN).
        assert!(TcpStream::connect(SocketAddr::from((SERVER_V4, CLOSED))).is_err());
    })
    .join()
    .unwrap()
    .unwrap();
    server.join().unwrap();

    // Retransmits: a quarter of the data segments to LOSSY dropped.
    nft(
        &hosts.server_ns,
        &format!("add table inet loss\nadd chain inet loss in {{ type filter hook input priority 0; }}\nadd rule inet loss in tcp dport {LOSSY} numgen random mod 4 == 0 drop\n"),
    );
    assert!(TestHosts::command_in(&hosts.client_ns, "ethtool")
        .args(["-K", CLIENT_IF, "tso", "off", "gso", "off"])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    let listener = listen_in_server(&hosts, LOSSY);
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
    });
    let client = TestHosts::run_in(&hosts.client_ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((SERVER_V4, LOSSY)), Duration::from_secs(20)).unwrap()
    })
    .join()
    .unwrap()
    .unwrap();
    // Its series exist, at 0, once it is open; then the lossy transfer.
    let series = format!("tcpscope_retransmits_total{{port=\"{LOSSY}\"}}");
    while query_at(PROMETHEUS_3, &series).is_none_or(|r| r.is_empty()) {
        assert!(Instant::now() < deadline, "{series} is not there at 0 once the connection is open");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut client = client;
    client.write_all(&vec![7u8; 300_000]).unwrap();
    drop(client);
    server.join().unwrap();

    // A malformed segment: TCP data offset 2 (under the minimum of 5).
    let peer = common::raw::mac_of(&hosts.server_ns, SERVER_IF);
    let link = common::raw::RawLink::open(&hosts.client_ns, CLIENT_IF, peer);
    let mut seg = common::raw::syn_segment(&CLIENT_V4.octets(), &SERVER_V4.octets(), 40000, PORT, 1);
    seg[12] = 2 << 4;
    link.send(
        common::raw::ETH_P_IP,
        &common::raw::ipv4_fragments(CLIENT_V4.octets(), SERVER_V4.octets(), 7, &seg, &[])[0],
    );

    // A rule through the agent: the next SYN to BLOCKED is dropped.
    let out = Command::new(tcpscope_bin())
        .args(["block", "add", &format!("{CLIENT_V4}/32"), "--port", &BLOCKED.to_string(), "--agent"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    TestHosts::run_in(&hosts.client_ns, || {
        assert!(TcpStream::connect_timeout(
            &SocketAddr::from((SERVER_V4, BLOCKED)),
            Duration::from_millis(500)
        )
        .is_err());
    })
    .join()
    .unwrap()
    .unwrap();

    // A port scan (41 ports in a moment; the guard's limit is 20 in 5 s)
    // and a SYN flood (1,000 SYNs at 2,000/s; the limit is 100/s, bursts of 200).
    let st = TestHosts::command_in(&hosts.client_ns, "nmap")
        .args(["-sS", "-p", "20000-20040", "-T4", "-n", "-Pn", "--max-retries", "0", "--host-timeout", "30s"])
        .arg(SERVER_V4.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("nmap (scripts/setup.sh installs it)");
    assert!(st.success());
    let st = TestHosts::command_in(&hosts.client_ns, "hping3")
        .args(["-q", "-S", "-p", &PORT.to_string(), "-c", "1000", "-i", "u500"])
        .arg(SERVER_V4.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("hping3 (scripts/setup.sh installs it)");
    assert!(st.success() || st.code() == Some(1), "hping3: {st:?}");

    // Every panel's query returns data, above 0 for all but events lost
    // (nothing is lost here: its series is there, at 0).
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/tcpscope.json"))
            .unwrap(),
    )
    .unwrap();
    let panels: Vec<&serde_json::Value> =
        dash["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row").collect();
    assert!(panels.len() >= 15, "the dashboard's panels");
    let deadline = Instant::now() + Duration::from_secs(90);
    let deadline_start = Instant::now();
    for p in &panels {
        for t in p["targets"].as_array().unwrap() {
            let expr =
                t["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$instance", ".+");
            let zero_ok = p["title"] == "Events lost";
            loop {
                let rows = query_at(PROMETHEUS_3, &expr).unwrap_or_default();
                let above = rows.iter().any(|r| {
                    r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0)
                });
                if above || (zero_ok && !rows.is_empty()) {
                    eprintln!("panel {} has data after {:?}", p["title"], deadline_start.elapsed());
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "panel {}: {expr} shows no data: {rows:?}; the agent says:\n{}",
                    p["title"],
                    http_get(AGENT_3, "/metrics")
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    // The shipped alert rules fire.
    for name in ["TcpscopeSynFlood", "TcpscopePortScan"] {
        loop {
            let v: serde_json::Value =
                serde_json::from_str(&http_get(PROMETHEUS_3, "/api/v1/alerts")).unwrap();
            let firing = v["data"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["labels"]["alertname"] == name && a["state"] == "firing");
            if firing {
                break;
            }
            assert!(Instant::now() < deadline, "{name} does not fire: {v}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
