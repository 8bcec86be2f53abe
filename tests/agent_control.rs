//! The agent's control API, its configuration and its signals, with real
//! traffic between the test hosts: a rule added through the API (and by
//! `tcpscope block` talking to the agent) drops the next packet and
//! outlives `kill -9`; the socket is root-only, and TCP needs a token;
//! interfaces matched by a glob are followed as they come and go; SIGHUP
//! reloads the configuration, SIGTERM ends the agent with 0; a bad
//! configuration is one line naming its line.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tcpscope::testhost::{ip, ChildGuard, TestHosts, CLIENT_V4, SERVER_IF, SERVER_V4};

/// A directory of the test's own: control socket, state, config.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcpscope-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn agent_cmd(dir: &Path, listen: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(tcpscope_bin());
    cmd.arg("agent")
        .args(["--listen", listen, "--control-socket"])
        .arg(dir.join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .stdout(Stdio::piped());
    cmd
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

fn start(cmd: Command) -> (ChildGuard, Lines) {
    ChildGuard::spawn_until_ready(cmd, "metrics on http://", Duration::from_secs(30))
        .expect("the agent starts")
}

/// `curl` on the control socket: (status, body).
fn api(dir: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(dir.join("agent.sock"))
        .arg(format!("http://agent{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data", b]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `tcpscope ARGS --agent SOCKET`: (success, stdout, stderr).
fn tcpscope(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(tcpscope_bin()).args(args).arg("--agent").arg(dir.join("agent.sock")).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Whether the client host gets a connection to the server's `port` within a second.
fn connects(hosts: &TestHosts, port: u16) -> bool {
    TestHosts::run_in(&hosts.client_ns, move || {
        TcpStream::connect_timeout(&SocketAddr::from((SERVER_V4, port)), Duration::from_secs(1)).is_ok()
    })
    .join()
    .unwrap()
    .unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics(listen: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{listen}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn metric(listen: &str, line: &str) -> Option<f64> {
    metrics(listen).lines().find(|l| l.starts_with(line)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_rule_added_through_the_api_drops_the_next_packet_and_outlives_kill_9() {
    const LISTEN: &str = "127.0.0.1:19921";
    const PORT: u16 = 18311;
    const OTHER: u16 = 18312;
    let _load = side_by_side();
    let hosts = TestHosts::new("agctl").unwrap();
    let dir = scratch("agctl");
    let args = ["--guard", "--netns", &hosts.server_ns, "-i", SERVER_IF];
    let (mut agent, _) = start(agent_cmd(&dir, LISTEN, &args));
    assert_eq!(api(&dir, "GET", "/readyz", None), (200, "ready\n".into()));
    let _l1 = listen_in_server(&hosts, PORT);
    let _l2 = listen_in_server(&hosts, OTHER);
    assert!(connects(&hosts, PORT), "before any rule");

    // Through the API: the next SYN to PORT is dropped; OTHER still works.
    let rule =
        format!(r#"{{"list":"block","cidr":"{CLIENT_V4}/32","port":{PORT},"comment":"from the test"}}"#);
    let (code, body) = api(&dir, "POST", "/v1/rules", Some(&rule));
    assert_eq!((code, body.trim()), (200, r#"{"added":1}"#));
    assert!(!connects(&hosts, PORT), "the rule drops the SYN");
    assert!(connects(&hosts, OTHER), "another port is untouched");
    let (code, listed) = api(&dir, "GET", "/v1/rules", None);
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let r = &v["rules"][0];
    assert_eq!(code, 200);
    assert_eq!(
        (r["interface"].as_str(), r["port"].as_u64()),
        (Some(SERVER_IF), Some(u64::from(PORT))),
        "{v}"
    );
    assert_eq!(r["comment"], "from the test");
    assert!(r["hits"].as_u64().unwrap() >= 1, "the dropped SYNs hit it: {v}");
    let dropped =
        format!("tcpscope_guard_dropped_packets_total{{interface=\"{SERVER_IF}\",reason=\"port_rule\"}}");
    wait_until("guard drops in /metrics", Duration::from_secs(30), || metric(LISTEN, &dropped) >= Some(1.0));
    wait_until("the rule count", Duration::from_secs(30), || {
        metric(LISTEN, "tcpscope_guard_rules{list=\"block\"}") == Some(1.0)
    });

    // `tcpscope block` without -i talks to the agent.
    let (ok, _, err) = tcpscope(&dir, &["block", "add", "198.19.7.0/24", "--comment", "from block"]);
    assert!(ok, "{err}");
    let (ok, out, err) = tcpscope(&dir, &["block", "list", "--json"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(r#""comment":"from block""#) && out.contains(&format!(r#""interface":"{SERVER_IF}""#)),
        "{out}"
    );

    // kill -9, and a new agent: the rules are there, and still drop.
    // SAFETY: our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGKILL) };
    agent.wait_timeout(Duration::from_secs(20)).unwrap();
    let (mut agent, lines) = start(agent_cmd(&dir, LISTEN, &args));
    let (_, out, _) = tcpscope(&dir, &["block", "list", "--json"]);
    assert_eq!(out.lines().count(), 2, "both rules after kill -9: {out}");
    assert!(out.contains("from the test"), "{out}");
    assert!(!connects(&hosts, PORT), "still dropped after kill -9");

    // Deleted through the API: connections pass again; a second delete
    // says there is no such rule.
    let del = format!(r#"{{"list":"block","cidr":"{CLIENT_V4}/32","port":{PORT}}}"#);
    assert_eq!(api(&dir, "DELETE", "/v1/rules", Some(&del)).0, 200);
    assert!(connects(&hosts, PORT), "after the delete");
    let (code, body) = api(&dir, "DELETE", "/v1/rules", Some(&del));
    assert!(code == 404 && body.contains("no such rule"), "{code} {body}");
    let (code, body) = api(&dir, "POST", "/v1/rules/flush", Some(r#"{"list":"block"}"#));
    assert_eq!((code, body.trim()), (200, r#"{"removed":1}"#));

    // Bad input: one line naming the fix, nothing written.
    let (code, body) = api(&dir, "POST", "/v1/rules", Some(r#"{"list":"block","cidr":"198.18.0.0/33"}"#));
    assert!(code == 400 && body.contains("prefix 33"), "{code} {body}");
    let (code, body) =
        api(&dir, "POST", "/v1/rules", Some(r#"{"list":"allow","cidr":"198.18.0.1","port":80}"#));
    assert!(code == 400 && body.contains("allow rules take no port"), "{code} {body}");
    let (ok, _, err) = tcpscope(&dir, &["block", "-i", "nosuch0", "list"]);
    assert!(!ok && err.lines().count() == 1, "{err}");

    // The interface deleted and made again: its pins went with it, and the
    // agent gives the new guard its rules from its store.
    let (ok, _, err) =
        tcpscope(&dir, &["block", "add", &format!("{CLIENT_V4}/32"), "--port", &PORT.to_string()]);
    assert!(ok, "{err}");
    ip(&["-n", &hosts.client_ns, "link", "del", tcpscope::testhost::CLIENT_IF]).unwrap();
    let said = |what: &str| lines.lock().unwrap().iter().any(|l| l.contains(what));
    wait_until("the interface noticed gone", Duration::from_secs(30), || {
        said("attaching again when it is back")
    });
    hosts.link().unwrap();
    wait_until("attached again", Duration::from_secs(30), || said("is there: attached"));
    assert!(connects(&hosts, OTHER), "the new interface carries traffic");
    assert!(!connects(&hosts, PORT), "the rule is back on the new interface");

    // SIGTERM: detached, exit 0, the socket gone.
    // SAFETY: our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    assert!(agent.wait_timeout(Duration::from_secs(20)).unwrap().success());
    assert!(!dir.join("agent.sock").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_sni_rule_through_the_api_stops_that_name_only_and_outlives_kill_9() {
    const LISTEN: &str = "127.0.0.1:19934";
    let _load = side_by_side();
    let hosts = TestHosts::new("agl7").unwrap();
    let dir = scratch("agl7");
    let _web = web_server(&hosts, &dir);
    let args = ["--guard", "--netns", &hosts.server_ns, "-i", SERVER_IF];
    let (mut agent, _) = start(agent_cmd(&dir, LISTEN, &args));
    assert_eq!(tls_get(&hosts, "blocked.example").as_deref(), Some("HTTP/1.0 200 OK\n"), "before the rule");

    let rule = r#"{"list":"block","sni":"blocked.example","comment":"l7 from the test"}"#;
    let (code, body) = api(&dir, "POST", "/v1/rules", Some(rule));
    assert_eq!((code, body.trim()), (200, r#"{"added":1}"#));
    assert_eq!(tls_get(&hosts, "blocked.example"), None, "the rule stops the handshake");
    assert_eq!(tls_get(&hosts, "ok.example").as_deref(), Some("HTTP/1.0 200 OK\n"), "another name works");
    let (_, listed) = api(&dir, "GET", "/v1/rules", None);
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let r = &v["rules"][0];
    assert_eq!(
        (r["sni"].as_str(), r["comment"].as_str()),
        (Some("blocked.example"), Some("l7 from the test")),
        "{v}"
    );
    assert!(r["hits"].as_u64() >= Some(1) && r.get("cidr").is_none(), "{v}");
    let dropped =
        format!("tcpscope_guard_dropped_packets_total{{interface=\"{SERVER_IF}\",reason=\"l7_rule\"}}");
    wait_until("L7 drops in /metrics", Duration::from_secs(30), || metric(LISTEN, &dropped) >= Some(1.0));
    wait_until("the L7 alert in /metrics", Duration::from_secs(30), || {
        metric(LISTEN, "tcpscope_alerts_total{kind=\"l7_blocked\"}") >= Some(1.0)
    });
    let (_, alerts) = api(&dir, "GET", "/v1/alerts", None);
    assert!(alerts.contains(r#""name":"blocked.example","rule":"sni""#), "{alerts}");

    // A misspelt field is refused, not taken for a rule on every source.
    let (code, body) = api(&dir, "POST", "/v1/rules", Some(r#"{"list":"block","snii":"x.example"}"#));
    assert!(code == 400 && body.contains("unknown field 'snii'"), "{code} {body}");
    let (code, body) = api(&dir, "POST", "/v1/rules", Some(r#"{"list":"block","sni":"a b"}"#));
    assert!(code == 400 && body.contains("give a host name"), "{code} {body}");

    // kill -9 and a new agent: the rule is there and still stops the name.
    // SAFETY: our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGKILL) };
    agent.wait_timeout(Duration::from_secs(20)).unwrap();
    let (mut agent, _) = start(agent_cmd(&dir, LISTEN, &args));
    let (ok, out, err) = tcpscope(&dir, &["block", "list"]);
    assert!(
        ok && out.contains("block sni blocked.example") && out.contains("(l7 from the test)"),
        "{out}{err}"
    );
    assert_eq!(tls_get(&hosts, "blocked.example"), None, "still stopped after kill -9");
    // `tcpscope block del --sni` through the agent: the name works again.
    let (ok, _, err) = tcpscope(&dir, &["block", "del", "--sni", "blocked.example"]);
    assert!(ok, "{err}");
    assert_eq!(tls_get(&hosts, "blocked.example").as_deref(), Some("HTTP/1.0 200 OK\n"), "after the delete");
    // SAFETY: our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    assert!(agent.wait_timeout(Duration::from_secs(20)).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_control_socket_is_root_only_and_tcp_needs_a_token() {
    use std::os::unix::fs::PermissionsExt;
    let _load = side_by_side();
    let dir = scratch("agtok");
    // Beyond loopback without a token: refused, one line, nothing started.
    let out = agent_cmd(&dir, "127.0.0.1:19922", &["-i", "lo", "--control-listen", "0.0.0.0:19923"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.lines().count() == 1 && err.contains("token"), "{err}");
    // A token file others can read: refused.
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let t = token.to_str().unwrap();
    let out = agent_cmd(
        &dir,
        "127.0.0.1:19922",
        &["-i", "lo", "--control-listen", "127.0.0.1:19923", "--control-token-file", t],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (mut agent, _) = start(agent_cmd(
        &dir,
        "127.0.0.1:19922",
        &["-i", "lo", "--control-listen", "127.0.0.1:19923", "--control-token-file", t],
    ));

    let sock = dir.join("agent.sock");
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    // nobody cannot use the socket.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--unix-socket",
        ])
        .arg(&sock)
        .arg("http://agent/v1/rules")
        .output()
        .unwrap();
    // curl's 7: it could not connect (the kernel said EACCES).
    assert_eq!(out.status.code(), Some(7), "nobody reached the socket: {out:?}");

    let get = |auth: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:19923/v1/interfaces",
        ]);
        if let Some(a) = auth {
            cmd.args(["-H", &format!("Authorization: Bearer {a}")]);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).to_string()
    };
    assert_eq!(get(None), "401");
    assert_eq!(get(Some("0123456789abcdef0123456789abcdeX")), "401");
    assert_eq!(get(Some("0123456789abcdef0123456789abcdef")), "200");

    // An agent that does not guard says so to a rule.
    let (code, body) = api(&dir, "POST", "/v1/rules", Some(r#"{"list":"block","cidr":"198.18.0.9"}"#));
    assert!(code == 409 && body.contains("--guard"), "{code} {body}");
    // A second agent on the same socket: one line, before attaching.
    let out = agent_cmd(&dir, "127.0.0.1:19924", &["-i", "lo"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.lines().count() == 1 && err.contains("another agent"), "{err}");
    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Interfaces that match a glob are attached as they appear and forgotten,
/// series and all, as they go; SIGHUP turns the guard on from the edited
/// config without losing the counters of interfaces still followed.
#[test]
fn a_glob_follows_interfaces_and_sighup_reloads_the_config() {
    const LISTEN: &str = "127.0.0.1:19925";
    let _load = side_by_side();
    let hosts = TestHosts::new("agglob").unwrap();
    let dir = scratch("agglob");
    let config = dir.join("agent.toml");
    let ns = &hosts.server_ns;
    std::fs::write(&config, format!("interfaces = ['{SERVER_IF}', 'tsg*']\nnetns = '{ns}'\n")).unwrap();
    let (mut agent, lines) = start(agent_cmd(&dir, LISTEN, &["--config", config.to_str().unwrap()]));
    let said = |what: &str| lines.lock().unwrap().iter().any(|l| l.contains(what));

    ip(&["-n", ns, "link", "add", "tsg0", "type", "veth", "peer", "name", "tsg1"]).unwrap();
    ip(&["-n", ns, "link", "set", "tsg0", "up"]).unwrap();
    wait_until("tsg0 attached", Duration::from_secs(30), || said("tsg0 appeared: attached"));
    wait_until("tsg0's series", Duration::from_secs(30), || {
        metrics(LISTEN).contains("tcpscope_packets_total{hook=\"tc\",interface=\"tsg0\"}")
    });
    ip(&["-n", ns, "link", "del", "tsg0"]).unwrap();
    wait_until("tsg0 forgotten", Duration::from_secs(30), || said("tsg0 went away: forgotten"));
    wait_until("tsg0's series gone", Duration::from_secs(30), || {
        !metrics(LISTEN).contains("interface=\"tsg0\"")
    });

    // Traffic counted on the named interface, then the guard turned on by
    // SIGHUP: the counter goes on from where it was.
    let syn = format!("tcpscope_tcp_flags_total{{flag=\"SYN\",interface=\"{SERVER_IF}\"}}");
    let _l = listen_in_server(&hosts, 18313);
    for _ in 0..3 {
        assert!(connects(&hosts, 18313));
    }
    wait_until("3 SYNs", Duration::from_secs(30), || metric(LISTEN, &syn) == Some(3.0));
    std::fs::write(
        &config,
        format!("interfaces = ['{SERVER_IF}', 'tsg*']\nnetns = '{ns}'\n[guard]\nenabled = true\n"),
    )
    .unwrap();
    // SAFETY: our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    wait_until("reloaded", Duration::from_secs(30), || said("configuration reloaded"));
    wait_until("the guard's XDP hook", Duration::from_secs(30), || {
        metrics(LISTEN).contains(&format!("tcpscope_packets_total{{hook=\"xdp\",interface=\"{SERVER_IF}\"}}"))
    });
    assert!(metrics(LISTEN).contains("tcpscope_alerts_total{kind=\"syn_flood\"} 0"));
    assert!(connects(&hosts, 18313));
    wait_until("4 SYNs", Duration::from_secs(30), || metric(LISTEN, &syn) == Some(4.0));

    // A broken config on SIGHUP: said, and the agent goes on as it was.
    std::fs::write(&config, "interfaces = [\n").unwrap();
    // SAFETY: our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    wait_until("reload refused", Duration::from_secs(30), || said("reload failed, configuration unchanged"));
    assert!(agent.child.try_wait().unwrap().is_none());
    // SAFETY: our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    assert!(agent.wait_timeout(Duration::from_secs(20)).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bad config: one line naming the file and line, exit 2, nothing
/// attached to the interface it names.
#[test]
fn a_bad_config_is_one_line_with_its_line_and_nothing_attached() {
    let _load = side_by_side();
    let hosts = TestHosts::new("agbad").unwrap();
    let dir = scratch("agbad");
    let config = dir.join("agent.toml");
    let ns = &hosts.server_ns;
    for (text, want) in [
        (format!("interfaces = ['{SERVER_IF}']\nnetns = '{ns}'\nlisten = 9917\n"), ":3: invalid type"),
        (
            format!(
                "interfaces = ['{SERVER_IF}']\nnetns = '{ns}'\n[guard]\nenabled = true\nsyn_rate = 'fast'\n"
            ),
            ":5: [guard] syn_rate",
        ),
        (
            format!("interfaces = ['{SERVER_IF}']\nnetns = '{ns}'\n\nintervall = 2\n"),
            ":4: unknown field `intervall`",
        ),
    ] {
        std::fs::write(&config, &text).unwrap();
        let out =
            agent_cmd(&dir, "127.0.0.1:19926", &["--config", config.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.lines().count() == 1 && err.contains(want) && err.contains("agent.toml"),
            "{text}: {err}"
        );
        let net =
            TestHosts::command_in(ns, "bpftool").args(["net", "show", "dev", SERVER_IF]).output().unwrap();
        let net = String::from_utf8_lossy(&net.stdout);
        assert!(!net.contains("tcpscope") && !net.contains("xdp_"), "{net}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With bpf_stats, the kernel counts every run of the agent's programs:
/// the TC program ran once per packet it counted. Without, no such series.
#[test]
fn bpf_stats_count_every_run() {
    const LISTEN: &str = "127.0.0.1:19927";
    let _load = side_by_side();
    let hosts = TestHosts::new("agstat").unwrap();
    let dir = scratch("agstat");
    let (mut agent, _) =
        start(agent_cmd(&dir, LISTEN, &["--bpf-stats", "--netns", &hosts.server_ns, "-i", SERVER_IF]));
    let _l = listen_in_server(&hosts, 18314);
    for _ in 0..3 {
        assert!(connects(&hosts, 18314));
    }
    let packets = format!("tcpscope_packets_total{{hook=\"tc\",interface=\"{SERVER_IF}\"}}");
    let runs = "tcpscope_bpf_program_runs_total{program=\"tcpscope_tc\"}";
    // Once the traffic is over, the two agree exactly.
    wait_until("runs equal packets", Duration::from_secs(30), || {
        let (p, r) = (metric(LISTEN, &packets), metric(LISTEN, runs));
        p >= Some(9.0) && p == r
    });
    assert!(metric(LISTEN, "tcpscope_bpf_program_run_seconds_total{program=\"tcpscope_tc\"}") > Some(0.0));
    assert!(
        metric(LISTEN, "tcpscope_bpf_program_runs_total{program=\"lc_inet_sock_set_state\"}") >= Some(1.0)
    );
    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());

    let (mut agent, _) = start(agent_cmd(&dir, LISTEN, &["--netns", &hosts.server_ns, "-i", SERVER_IF]));
    assert!(!metrics(LISTEN).contains("tcpscope_bpf_program"), "off unless asked for");
    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Chosen events go to a file as NDJSON in the documented schemas, rotated
/// by size: each file under the limit, every line whole JSON, and every
/// connection made there once.
#[test]
fn events_go_to_a_file_rotated_by_size() {
    const LISTEN: &str = "127.0.0.1:19929";
    const PORT: u16 = 18315;
    const CLOSED: u16 = 18316;
    const N: usize = 40;
    // Alone: the agent logs every namespace's connections, and the other
    // tests' thousands of resets would rotate this one's events away.
    let _load = alone();
    let hosts = TestHosts::new("aglog").unwrap();
    let dir = scratch("aglog");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "[log]\nevents = ['connections', 'resets', 'rules']\nmax_bytes = 8192\nkeep = 50\n",
    )
    .unwrap();
    let log = dir.join("log/events.ndjson");
    let (mut agent, _) = start(agent_cmd(
        &dir,
        LISTEN,
        &[
            "--guard",
            "--config",
            config.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
            "--netns",
            &hosts.server_ns,
            "-i",
            SERVER_IF,
        ],
    ));
    let _l = listen_in_server(&hosts, PORT);
    for _ in 0..N {
        assert!(connects(&hosts, PORT));
    }
    assert!(!connects(&hosts, CLOSED), "nothing listens there: a reset");
    assert_eq!(
        api(&dir, "POST", "/v1/rules", Some(r#"{"list":"block","cidr":"198.19.9.0/24","comment":"logged"}"#))
            .0,
        200
    );
    let read_all = || -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir.join("log")).unwrap().flatten().map(|e| e.path()).collect();
        // Oldest first: .N ... .1, then the file itself.
        files.sort_by_key(|p| {
            std::cmp::Reverse(p.extension().and_then(|e| e.to_str()?.parse::<u32>().ok()).unwrap_or(0))
        });
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(text.len() <= 8192, "{} is over the size limit", f.display());
            assert!(text.is_empty() || text.ends_with('\n'), "{} ends mid-line", f.display());
            out.extend(text.lines().map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
            }));
        }
        out
    };
    let ours = |v: &Vec<serde_json::Value>, event: &str| {
        v.iter()
            .filter(|e| e["event"] == event && e["lport"] == PORT && e["peer"] == CLIENT_V4.to_string())
            .count()
    };
    wait_until("every connection logged", Duration::from_secs(30), || {
        let v = read_all();
        ours(&v, "established_in") == N && v.iter().any(|e| e["event"] == "rule_change")
    });
    // SIGTERM, then everything is there once.
    // SAFETY: our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    assert!(agent.wait_timeout(Duration::from_secs(20)).unwrap().success());
    let v = read_all();
    assert_eq!(ours(&v, "established_in"), N, "each connection once");
    assert!(dir.join("log/events.ndjson.1").exists(), "rotated");
    assert!(v.iter().any(|e| e["event"] == "reset_sent" && e["lport"] == CLOSED), "the reset");
    let change = v.iter().find(|e| e["event"] == "rule_change").unwrap();
    assert_eq!((change["change"].as_str(), change["rules"].as_u64()), (Some("add"), Some(1)), "{change}");
    assert!(v.iter().all(|e| e["ts_ns"].as_u64().is_some()), "every line has its time");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes the test's cgroups however the test ends (leaves first).
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Workload identity: a connection made by a process running as nobody in
/// a cgroup laid out as containerd lays out a Kubernetes pod's container
/// is logged with its uid and gid, the container id and runtime, the pod
/// UID, and the pod's namespace and name from a /var/log/pods-like
/// directory; one from a systemd-unit-like cgroup names the unit; and the
/// capped workload metric counts each.
#[test]
fn workload_identity_names_the_pod_container_unit_and_user() {
    const LISTEN: &str = "127.0.0.1:19930";
    const PORT: u16 = 18317;
    let _load = side_by_side();
    let hosts = TestHosts::new("agwl").unwrap();
    let dir = scratch("agwl");
    let me = std::process::id();
    let uid = format!("0b7d5f1e-2c3a-4b6d-8e9f-{me:012x}");
    let id = format!("{:064x}", u128::from(me) * 0x1_0000_0001);
    // Where cgroup v2 is mounted (on a hybrid host, not /sys/fs/cgroup).
    let root = Command::new("findmnt").args(["-n", "-t", "cgroup2", "-o", "TARGET"]).output().unwrap();
    let root =
        String::from_utf8_lossy(&root.stdout).lines().next().expect("a cgroup2 mount").trim().to_string();
    let top = PathBuf::from(format!("{root}/tcpscope-test-{me}.slice"));
    let pod = top.join(format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")));
    let container = pod.join(format!("cri-containerd-{id}.scope"));
    let unit = top.join(format!("tcpscope-demo-{me}.service"));
    let cgroups = Cgroups(vec![top.clone(), pod.clone(), container.clone(), unit.clone()]);
    for d in &cgroups.0 {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    let pods = dir.join("pods");
    std::fs::create_dir_all(pods.join(format!("shop_checkout-7d9f_{uid}"))).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(&config, format!("[workload]\nenabled = true\npods_dir = '{}'\n", pods.display()))
        .unwrap();
    let log = dir.join("events.ndjson");
    let (mut agent, _) = start(agent_cmd(
        &dir,
        LISTEN,
        &[
            "--config",
            config.to_str().unwrap(),
            "--log-events",
            "connections",
            "--log-file",
            log.to_str().unwrap(),
            "--netns",
            &hosts.server_ns,
            "-i",
            SERVER_IF,
        ],
    ));
    let _l = listen_in_server(&hosts, PORT);
    // A process that joins the cgroup, enters the client host, becomes
    // nobody, and connects.
    let connect_from = |cg: &Path| {
        let py =
            format!("import socket; socket.create_connection(('{SERVER_V4}', {PORT}), timeout=5).close()");
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net=/var/run/netns/{} setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c \"{py}\"",
            cg.display(),
            hosts.client_ns
        );
        let st = Command::new("sh").args(["-c", &script]).status().unwrap();
        assert!(st.success(), "{script}");
    };
    connect_from(&container);
    connect_from(&unit);
    let events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let out_from = |v: &Vec<serde_json::Value>, cg: &str| {
        v.iter()
            .find(|e| {
                e["event"] == "established_out"
                    && e["pport"] == PORT
                    && e["workload"]["cgroup"].as_str().is_some_and(|c| c.ends_with(cg))
            })
            .cloned()
    };
    let cname = container.file_name().unwrap().to_str().unwrap().to_string();
    let uname = unit.file_name().unwrap().to_str().unwrap().to_string();
    wait_until("both connections logged", Duration::from_secs(30), || {
        let v = events();
        out_from(&v, &cname).is_some() && out_from(&v, &uname).is_some()
    });
    let v = events();
    let c = out_from(&v, &cname).unwrap();
    assert_eq!(
        (c["uid"].as_u64(), c["gid"].as_u64(), c["comm"].as_str()),
        (Some(65534), Some(65534), Some("python3")),
        "{c}"
    );
    let w = &c["workload"];
    assert_eq!(w["container_id"], id.as_str(), "{c}");
    assert_eq!(w["runtime"], "containerd");
    assert_eq!(w["pod_uid"], uid.as_str());
    assert_eq!((w["pod_namespace"].as_str(), w["pod_name"].as_str()), (Some("shop"), Some("checkout-7d9f")));
    let u = out_from(&v, &uname).unwrap();
    assert_eq!(u["workload"]["unit"], uname.as_str(), "{u}");
    assert!(u["workload"].get("container_id").is_none());
    let metric = |label: &str| {
        metric(
            LISTEN,
            &format!("tcpscope_workload_connections_opened_total{{direction=\"out\",workload=\"{label}\"}}"),
        )
    };
    wait_until("the workload metric", Duration::from_secs(30), || {
        metric("pod/shop/checkout-7d9f") == Some(1.0) && metric(&format!("unit/{uname}")) == Some(1.0)
    });
    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    drop(cgroups);
    assert!(!top.exists(), "the test's cgroups are removed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The top sources, with more sources than the kernel's candidate table
/// holds: one heavy source among 6,000 others sending one SYN each (crafted
/// frames from 198.18.16.0-198.18.39.255). The heavy one ranks first with
/// at least what it sent (the sketch may only overestimate), the rows and
/// "other" add up to every packet, and once a window passes in which only
/// another source sends, the first one's series are gone.
#[test]
fn top_sources_rank_the_heavy_hitter_among_thousands() {
    const LISTEN: &str = "127.0.0.1:19931";
    let _load = side_by_side();
    let hosts = TestHosts::new("agtop").unwrap();
    let dir = scratch("agtop");
    let config = dir.join("agent.toml");
    std::fs::write(&config, "[top_sources]\nenabled = true\nk = 3\nwindow = 2.0\n").unwrap();
    let (mut agent, _) = start(agent_cmd(
        &dir,
        LISTEN,
        &["--guard", "--config", config.to_str().unwrap(), "--netns", &hosts.server_ns, "-i", SERVER_IF],
    ));
    let peer = common::raw::mac_of(&hosts.server_ns, SERVER_IF);
    let link = common::raw::RawLink::open(&hosts.client_ns, tcpscope::testhost::CLIENT_IF, peer);
    let dst = SERVER_V4.octets();
    let syn_from = |src: [u8; 4], n: u32| {
        let seg = common::raw::syn_segment(&src, &dst, 40000 + (n % 20000) as u16, 9, n);
        link.send(common::raw::ETH_P_IP, &common::raw::ipv4_fragments(src, dst, n as u16, &seg, &[])[0]);
    };
    let heavy = [198, 18, 9, 1];
    let rows = |name: &str| -> Vec<(String, u64)> {
        metrics(LISTEN)
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("tcpscope_top_source_{name}{{source=\"")))
            .filter_map(|r| {
                let (src, v) = r.split_once("\"} ")?;
                Some((src.to_string(), v.parse().ok()?))
            })
            .collect()
    };
    // A burst may straddle two windows: then it is sent again.
    let mut seen = Vec::new();
    for _attempt in 0..3 {
        for i in 0..6000u32 {
            let (hi, lo) = (16 + i / 250, i % 250);
            syn_from([198, 18, hi as u8, lo as u8 + 1], i);
            if i % 10 == 0 {
                syn_from(heavy, i);
            }
        }
        // Two windows at most: the one the burst fell in is over.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            seen = rows("syns");
            let total: u64 = seen.iter().map(|(_, n)| n).sum();
            if total == 6600 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if seen.iter().map(|(_, n)| n).sum::<u64>() == 6600 {
            break;
        }
    }
    assert_eq!(seen.iter().map(|(_, n)| n).sum::<u64>(), 6600, "every SYN in one window: {seen:?}");
    let top = seen.iter().filter(|(s, _)| s != "other").max_by_key(|(_, n)| *n).unwrap();
    assert_eq!(top.0, "198.18.9.1", "{seen:?}");
    assert!((600..=660).contains(&top.1), "the heavy source's count, at least what it sent: {seen:?}");
    assert!(seen.len() <= 4, "three rows and other: {seen:?}");
    // Another window, another source: the old rows go.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for i in 0..50 {
            syn_from([198, 18, 9, 2], i);
        }
        let now = rows("packets");
        if now.iter().any(|(s, n)| s == "198.18.9.2" && *n >= 50)
            && !now.iter().any(|(s, _)| s == "198.18.9.1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the old rows stay: {now:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
