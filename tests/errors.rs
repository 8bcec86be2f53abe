//! Every failure a user can cause gets one line on stderr that names the
//! fix, a non-zero exit code, and leaves nothing attached.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use tcpscope::testhost::{TestHosts, SERVER_IF};

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "must fail: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr:?}");
    assert!(lines[0].starts_with("tcpscope: error: "), "{stderr:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
    lines[0].to_string()
}

fn run_in(ns: &str, args: &[&str]) -> Output {
    TestHosts::command_in(ns, tcpscope_bin()).args(args).output().unwrap()
}

/// Whether an XDP program is on `ifname`, from `ip -d link`.
fn xdp_attached(ns: &str, ifname: &str) -> bool {
    let out = Command::new("ip").args(["-n", ns, "-d", "link", "show", "dev", ifname]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn missing_interface() {
    let out = Command::new(tcpscope_bin()).args(["watch", "-i", "nosuch0"]).output().unwrap();
    let line = one_line_error(&out);
    assert!(line.contains("interface 'nosuch0' not found") && line.contains("ip link"), "{line}");
    let out = Command::new(tcpscope_bin()).args(["stats", "-i", "nosuch0"]).output().unwrap();
    assert!(one_line_error(&out).contains("not found"));
}

#[test]
fn missing_privileges() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(tcpscope_bin())
        .args(["watch", "-i", "lo"])
        .output()
        .expect("setpriv (util-linux) runs");
    let line = one_line_error(&out);
    assert!(
        line.contains("missing privileges") && line.contains("CAP_BPF") && line.contains("root"),
        "{line}"
    );
}

#[test]
fn missing_btf() {
    let out = Command::new(tcpscope_bin())
        .args(["watch", "-i", "lo", "--btf", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(line.contains("BTF file /nonexistent/vmlinux not found"), "{line}");
}

#[test]
fn native_xdp_unsupported() {
    // Loopback has no native XDP support in any kernel.
    let hosts = TestHosts::new("noxdp").unwrap();
    let out = run_in(&hosts.server_ns, &["watch", "-i", "lo", "--hook", "xdp", "--xdp-mode", "native"]);
    let line = one_line_error(&out);
    assert!(
        line.contains("native XDP is not supported on 'lo'") && line.contains("--xdp-mode generic"),
        "{line}"
    );
    assert!(!xdp_attached(&hosts.server_ns, "lo"));
}

#[test]
fn another_xdp_program_attached() {
    let hosts = TestHosts::new("busy").unwrap();
    let (mut first, _) = start_tcpscope_link(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--hook", "xdp"]);
    let out = run_in(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--hook", "xdp"]);
    let line = one_line_error(&out);
    assert!(line.contains("already has an XDP program") && line.contains("--hook tc"), "{line}");
    // The first instance is untouched; after it stops, nothing is left.
    assert!(xdp_attached(&hosts.server_ns, SERVER_IF));
    first.interrupt_and_wait(Duration::from_secs(20)).unwrap();
    assert!(!xdp_attached(&hosts.server_ns, SERVER_IF));
}

#[test]
fn bad_arguments() {
    let run = |args: &[&str]| Command::new(tcpscope_bin()).args(args).output().unwrap();
    // clap's usage errors: exit code 2 and the reason.
    let out = run(&["watch", "-i", "lo", "--src", "198.18.0.0/33"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefix 33 is longer than 32 bits"));
    let out = run(&["watch", "-i", "lo", "--dst", "2001:db8::zz/32"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad CIDR"));
    let out = run(&["watch", "-i", "lo", "--flags", "SYN,PUSH"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown TCP flag 'PUSH'"));
    // Our own checks.
    let line = one_line_error(&run(&["watch", "-i", "lo", "--snaplen", "5000"]));
    assert!(line.contains("--snaplen 5000 is too large"), "{line}");
    let line = one_line_error(&run(&["watch", "-i", "lo", "--port", "1,2,3,4,5,6,7,8,9"]));
    assert!(line.contains("at most 8"), "{line}");
    let line = one_line_error(&run(&["stats", "-i", "lo", "--interval", "0"]));
    assert!(line.contains("--interval"), "{line}");
    let line = one_line_error(&run(&["watch", "-i", "lo", "--ringbuf-mib", "3"]));
    assert!(line.contains("power of two"), "{line}");
}

#[test]
fn contradictory_flags_are_refused() {
    let out =
        Command::new(tcpscope_bin()).args(["watch", "-i", "lo", "--xdp-mode", "generic"]).output().unwrap();
    assert!(one_line_error(&out).contains("--xdp-mode applies to the XDP hook only"));
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2");
    let out = Command::new(tcpscope_bin()).args(["watch", "-i", "lo", "-c", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
    for (args, says) in [
        (&["watch", "-i", "lo", "--flags", "SYN,!SYN"][..], "both set and clear"),
        (&["watch", "-i", "lo", "--src", "198.18.0.7/24"][..], "host bits set"),
        (&["block", "add", "198.18.0.7/24"][..], "host bits set"),
        (&["block", "add", "198.18.0.7", "--ttl", "30"][..], "give a unit"),
        (&["block", "add", "198.18.0.7", "--ttl", "99999999999d"][..], "too long"),
        (&["stats", "-i", "lo", "--interval", "0"][..], "--interval"),
        (&["l7"][..], "name an interface to watch (-i IFACE) or a capture to read (-r FILE)"),
        (
            &["l7", "-r", "x.pcap", "--hook", "xdp"][..],
            "--hook applies to an interface (-i), not to a capture",
        ),
        (&["l7", "-i", "lo", "--port", "1,2,3,4,5,6,7,8,9"][..], "--port: at most 8 ports live"),
        (&["block", "add", "--sni", "a b.example"][..], "--sni 'a b.example': give a host name"),
        (&["block", "add", "--sni", "*.*.example"][..], "give a host name"),
        (&["block", "add", "--http-method", "GE T"][..], "an HTTP method is 1 to 16 letters"),
        (&["block", "add", "--sni", "a.example", "--port", "443"][..], "--port is for CIDR rules"),
        (&["block", "add", "198.18.0.1", "--sni", "a.example"][..], "cannot be used with"),
        (&["block", "add"][..], "required"),
        (&["block", "del", "--sni", "a.example", "--host", "b.example"][..], "block del removes one rule"),
        (&["guard", "-i", "lo", "--l7-timeout", "0s"][..], "must be positive"),
    ] {
        let out = Command::new(tcpscope_bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{args:?}: {out:?}");
    }
    // A failure at run time exits 1.
    let out = Command::new(tcpscope_bin()).args(["watch", "-i", "nosuch0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_input_files_get_one_line() {
    // --btf that is no BTF.
    let out =
        Command::new(tcpscope_bin()).args(["watch", "-i", "lo", "--btf", "/etc/passwd"]).output().unwrap();
    assert!(one_line_error(&out).contains("/etc/passwd is not a BTF file"));
    // Captures cut inside their headers (a header-only pcap is a valid,
    // empty capture, as for tcpdump and tshark).
    let dir = std::env::temp_dir();
    let pcap4 = dir.join(format!("tcpscope-p4-{}.pcap", std::process::id()));
    std::fs::write(&pcap4, [0xd4, 0xc3, 0xb2, 0xa1]).unwrap();
    let ng12 = dir.join(format!("tcpscope-n12-{}.pcapng", std::process::id()));
    std::fs::write(&ng12, [0x0a, 0x0d, 0x0d, 0x0a, 0x1c, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a]).unwrap();
    for f in [&pcap4, &ng12] {
        let out = Command::new(tcpscope_bin()).arg("read").arg(f).output().unwrap();
        assert!(one_line_error(&out).contains("cut short"), "{f:?}");
        let _ = std::fs::remove_file(f);
    }
    // -w with --json but no --print; -w - with --print.
    let out = Command::new(tcpscope_bin())
        .args(["watch", "-i", "lo", "-w", "x.pcapng", "--json"])
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("add --print"));
    let out =
        Command::new(tcpscope_bin()).args(["watch", "-i", "lo", "-w", "-", "--print"]).output().unwrap();
    assert!(one_line_error(&out).contains("drop --print"));
    assert!(!std::path::Path::new("x.pcapng").exists());
}

#[test]
fn block_without_privileges_names_them() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(tcpscope_bin())
        .args(["block", "list"])
        .output()
        .expect("setpriv (util-linux) runs");
    assert!(one_line_error(&out).contains("missing privileges"));
}

#[test]
fn demo_cleans_up_on_sigterm() {
    let mut cmd = Command::new(tcpscope_bin());
    cmd.args(["demo", "--connections", "100000"]).stdout(std::process::Stdio::null());
    let (mut demo, _) = tcpscope::testhost::ChildGuard::spawn_until_ready(
        cmd,
        "the sockets' side of the same connections",
        Duration::from_secs(30),
    )
    .unwrap();
    let pid = demo.child.id();
    // SAFETY: kill on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = demo.wait_timeout(Duration::from_secs(20)).expect("the demo stops at once");
    assert!(st.success(), "{st}");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains(&format!("tsc-demo-{pid}-")), "namespaces left behind: {left}");
}

/// The quick start's demo ends with the agent's metrics of the
/// connections it made: the SYNs its interface saw, exactly, and the
/// handshakes to its port (other tests' connections to the same port
/// number, in other namespaces, may add to those).
#[test]
fn the_demo_shows_the_agents_metrics_of_its_connections() {
    let out = Command::new(tcpscope_bin()).args(["demo", "--connections", "3"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.lines().any(|l| l == "tcpscope_tcp_flags_total{flag=\"SYN\",interface=\"tsc-server\"} 6"),
        "{stdout}"
    );
    let opened = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tcpscope_connections_opened_total{direction=\"in\",port=\"8080\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(opened >= Some(6), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent exited (exit status: 0)"));
}
