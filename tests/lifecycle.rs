//! `tcpscope conns` and `tcpscope latency` on real connections between test
//! hosts. Tracepoints see every namespace, so each test filters on its own
//! port and on its namespaces' inodes.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tcpscope::testhost::{ChildGuard, TestHosts, SERVER_IF, SERVER_V4};

fn netns_inode(ns: &str) -> u64 {
    std::fs::metadata(format!("/var/run/netns/{ns}")).unwrap().ino()
}

fn start_conns(args: &[&str]) -> ChildGuard {
    let mut cmd = Command::new(tcpscope_bin());
    cmd.arg("conns").arg("--json").args(args).stdout(Stdio::piped());
    ChildGuard::spawn_until_ready(cmd, "following TCP connections", Duration::from_secs(30)).unwrap().0
}

fn stop_and_collect(mut g: ChildGuard) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(300));
    assert!(g.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    stdout_of(&mut g).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn find<'a>(evs: &'a [Value], event: &str, netns: u64) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == event && e["netns"] == netns).collect()
}

#[test]
fn close_reports_bytes_process_and_the_packet_key() {
    const PORT: u16 = 18081;
    let hosts = TestHosts::new("lcbytes").unwrap();
    let (sns, cns) = (netns_inode(&hosts.server_ns), netns_inode(&hosts.client_ns));
    let conns = start_conns(&["--port", &PORT.to_string()]);
    let mut watch =
        start_tcpscope(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--json", "--port", &PORT.to_string()]);

    let listener = TestHosts::run_in(&hosts.server_ns, || TcpListener::bind((SERVER_V4, PORT)).unwrap())
        .join()
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap(); // until the client's FIN
        s.write_all(&[7u8; 500]).unwrap();
        buf.len()
    });
    TestHosts::run_in(&hosts.client_ns, || {
        let mut s = TcpStream::connect(SocketAddr::from((SERVER_V4, PORT))).unwrap();
        s.write_all(&[1u8; 3000]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 500);
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(server.join().unwrap(), 3000);
    std::thread::sleep(Duration::from_millis(300));
    watch.interrupt_and_wait(Duration::from_secs(20)).unwrap();
    let packets: Vec<Value> =
        stdout_of(&mut watch).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let evs = stop_and_collect(conns);
    let me = u64::from(std::process::id());

    let est = find(&evs, "established_in", sns);
    assert_eq!(est.len(), 1, "{evs:#?}");
    assert_eq!(est[0]["lport"], PORT);
    assert!(est[0]["latency_ns"].as_u64().unwrap() > 0);
    let acc = find(&evs, "accept", sns);
    assert_eq!(acc.len(), 1);
    assert_eq!(acc[0]["pid"], me, "accept() attributed to the test process");
    let conn = find(&evs, "connect", cns);
    assert_eq!(conn[0]["pid"], me, "connect() attributed to the test process");

    // Close, hand-checked: bytes_received counts data plus the peer's FIN;
    // the passive side's bytes_acked counts data plus its FIN, the active
    // side's also its SYN.
    let sclose = find(&evs, "close", sns);
    assert_eq!(sclose.len(), 1);
    let s = &sclose[0]["stats"];
    assert_eq!((s["bytes_received"].as_u64(), s["bytes_acked"].as_u64()), (Some(3001), Some(501)), "{s}");
    assert_eq!(sclose[0]["pid"], me);
    assert!(sclose[0]["duration_ns"].as_u64().unwrap() > 0);
    let cclose = find(&evs, "close", cns);
    let c = &cclose[0]["stats"];
    assert_eq!((c["bytes_received"].as_u64(), c["bytes_acked"].as_u64()), (Some(501), Some(3002)), "{c}");
    assert!(s["segs_in"].as_u64().unwrap() >= 4);

    // Correlation: every packet the server received carries the key of
    // the server-side lifecycle events.
    let key = sclose[0]["conn"].as_str().unwrap();
    assert_eq!(est[0]["conn"], key);
    assert!(packets.len() >= 5);
    assert!(
        packets.iter().all(|p| p["conn"] == key),
        "packet conn keys: {:?} vs {key}",
        packets.iter().map(|p| &p["conn"]).collect::<Vec<_>>()
    );
}

#[test]
fn closed_port_gives_reset_and_no_socket_drop() {
    const PORT: u16 = 18082;
    let hosts = TestHosts::new("lcrst").unwrap();
    let (sns, cns) = (netns_inode(&hosts.server_ns), netns_inode(&hosts.client_ns));
    let conns = start_conns(&["--port", &PORT.to_string()]);
    let err = TestHosts::run_in(&hosts.client_ns, || {
        TcpStream::connect(SocketAddr::from((SERVER_V4, PORT))).unwrap_err()
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let evs = stop_and_collect(conns);
    let sent = find(&evs, "reset_sent", sns);
    assert_eq!(sent.len(), 1, "{evs:#?}");
    assert_eq!(sent[0]["reason"], "NO_SOCKET");
    let drop = find(&evs, "drop", sns);
    assert!(drop.iter().any(|d| d["reason"] == "NO_SOCKET" && d["lport"] == PORT), "{evs:#?}");
    let got = find(&evs, "reset_received", cns);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["state"], "SYN_SENT");
    assert_eq!(got[0]["pid"], u64::from(std::process::id()));
}

#[test]
fn retransmits_under_injected_loss() {
    const PORT: u16 = 18083;
    let hosts = TestHosts::new("lcloss").unwrap();
    let cns = netns_inode(&hosts.client_ns);
    // Drop a quarter of the data segments arriving at the server.
    let rules = format!(
        "add table inet loss\nadd chain inet loss in {{ type filter hook input priority 0; }}\nadd rule inet loss in tcp dport {PORT} numgen random mod 4 == 0 drop\n"
    );
    let mut nft = TestHosts::command_in(&hosts.server_ns, "nft");
    nft.args(["-f", "-"]).stdin(Stdio::piped());
    let mut child = nft.spawn().expect("nft (scripts/setup.sh installs nftables)");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());

    let conns = start_conns(&["--port", &PORT.to_string()]);
    let listener = TestHosts::run_in(&hosts.server_ns, || TcpListener::bind((SERVER_V4, PORT)).unwrap())
        .join()
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    TestHosts::run_in(&hosts.client_ns, || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((SERVER_V4, PORT)), Duration::from_secs(20))
            .unwrap();
        s.write_all(&vec![3u8; 300_000]).unwrap();
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(server.join().unwrap(), 300_000);
    let evs = stop_and_collect(conns);
    let rtx = find(&evs, "retransmit", cns);
    assert!(!rtx.is_empty(), "retransmits seen: {evs:#?}");
    let close = find(&evs, "close", cns);
    assert!(close[0]["stats"]["total_retrans"].as_u64().unwrap() >= rtx.len() as u64 / 2);
}

#[test]
fn zero_window_and_reopen() {
    const PORT: u16 = 18084;
    let hosts = TestHosts::new("lczw").unwrap();
    let cns = netns_inode(&hosts.client_ns);
    let conns = start_conns(&["--port", &PORT.to_string()]);
    let listener = TestHosts::run_in(&hosts.server_ns, || TcpListener::bind((SERVER_V4, PORT)).unwrap())
        .join()
        .unwrap()
        .unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        go_rx.recv().unwrap(); // stop reading until told
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    let client = TestHosts::run_in(&hosts.client_ns, || {
        let mut s = TcpStream::connect(SocketAddr::from((SERVER_V4, PORT))).unwrap();
        s.set_nonblocking(true).unwrap();
        let chunk = vec![5u8; 65536];
        let mut sent = 0usize;
        let deadline = Instant::now() + Duration::from_secs(3);
        // Fill the server's receive buffer and our send buffer.
        while Instant::now() < deadline {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
        s.set_nonblocking(false).unwrap();
        (s, sent)
    })
    .join()
    .unwrap()
    .unwrap();
    go_tx.send(()).unwrap();
    let (s, sent) = client;
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), sent);
    drop(s);
    let evs = stop_and_collect(conns);
    assert!(!find(&evs, "zero_window", cns).is_empty(), "zero window seen by the sender: {evs:#?}");
    assert!(!find(&evs, "window_reopen", cns).is_empty(), "and its reopening");
}
