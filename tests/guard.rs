//! `tcpscope guard` with `block` / `allow` on live traffic between test
//! hosts: rules take effect without reload, TTLs expire, errors are clear.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tcpscope::testhost::{ChildGuard, TestHosts, SERVER_IF, SERVER_V4};

struct Guard {
    guard: ChildGuard,
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
    fn start(tag: &str, port: u16, extra: &[&str]) -> Guard {
        let hosts = TestHosts::new(tag).unwrap();
        let mut cmd = Command::new(tcpscope_bin());
        cmd.args(["guard", "--netns", &hosts.server_ns, "-i", SERVER_IF]).args(extra).stdout(Stdio::null());
        let (guard, _) = ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
        // A listener that accepts for as long as the test runs.
        let l = TestHosts::run_in(&hosts.server_ns, move || TcpListener::bind((SERVER_V4, port)).unwrap())
            .join()
            .unwrap()
            .unwrap();
        std::thread::spawn(move || for _ in l.incoming() {});
        Guard { guard, hosts, port }
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
