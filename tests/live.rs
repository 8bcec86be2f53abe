//! End to end on real traffic: test hosts in network namespaces, real TCP
//! connections over IPv4 and IPv6, `tcpscope watch` on the server's veth,
//! and tshark capturing on the same interface as the independent decoder.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tcpscope::testhost::{TestHosts, SERVER_IF};

/// tshark fields, in the order compared with tcpscope's JSON keys.
const FIELDS: [(&str, &str); 11] = [
    ("tcp.srcport", "sport"),
    ("tcp.dstport", "dport"),
    ("tcp.seq_raw", "seq"),
    ("tcp.ack_raw", "ack"),
    ("tcp.hdr_len", "hdr_len"),
    ("tcp.flags", "flags_raw"),
    ("tcp.window_size_value", "window"),
    ("tcp.checksum", "checksum"),
    ("tcp.len", "payload_len"),
    ("tcp.options.mss_val", "mss"),
    ("tcp.options.timestamp.tsval", "ts_val"),
];

fn field_of(ev: &Value, key: &str) -> String {
    let v = match key {
        "mss" | "ts_val" => &ev["options"][key],
        _ => &ev[key],
    };
    match v {
        Value::Null => String::new(),
        v => v.as_u64().expect("number").to_string(),
    }
}

fn tshark_value(raw: &str) -> String {
    // tshark prints flags and checksums in hex.
    match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap().to_string(),
        None => raw.to_string(),
    }
}

fn watch_matches_tshark(hook: &str) {
    let hosts = TestHosts::new(&format!("live{hook}")).expect("test hosts");
    let pcap = std::env::temp_dir().join(format!("{}-{hook}.pcapng", hosts.server_ns));
    // Incoming packets only, as tcpscope sees them.
    let filter = format!(
        "tcp port {PORT} and (dst host {} or dst host {})",
        TestHosts::server_addr(false),
        TestHosts::server_addr(true)
    );
    let tshark = Tshark::start(&hosts.server_ns, SERVER_IF, &filter, &pcap);
    let (mut watch, link) = start_tcpscope_link(
        &hosts.server_ns,
        &["watch", "-i", SERVER_IF, "--hook", hook, "--json", "--port", &PORT.to_string()],
    );

    let seen = exchange(&hosts, 1000);
    assert_eq!(seen, vec![1000, 1000]);

    std::thread::sleep(Duration::from_millis(300));
    let status = watch.interrupt_and_wait(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "watch exits cleanly on SIGINT: {status}");
    let events: Vec<Value> = stdout_of(&mut watch)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    let tshark_names: Vec<&str> = FIELDS.iter().map(|(t, _)| *t).collect();
    let mut rows = tshark.stop_and_read(&[&tshark_names[..], &["ip.src", "ipv6.src"]].concat());
    let _ = std::fs::remove_file(&pcap);

    // Every incoming packet: both connections' handshake, data and close.
    assert!(rows.len() >= 10, "tshark saw {} packets", rows.len());
    assert_eq!(
        events.len(),
        rows.len(),
        "one event per packet tshark saw\nevents: {events:#?}\ntshark: {rows:?}"
    );
    for (i, (ev, row)) in events.iter().zip(rows.iter_mut()).enumerate() {
        assert_eq!(ev["hook"], hook);
        for (j, (tname, key)) in FIELDS.iter().enumerate() {
            assert_eq!(field_of(ev, key), tshark_value(&row[j]), "packet {i}: {key} (tshark {tname})\n{ev}");
        }
        let src = if row[11].is_empty() { &row[12] } else { &row[11] };
        assert_eq!(ev["src"].as_str().unwrap(), src, "packet {i}: source address");
    }
    // The handshakes, explicitly: SYN then ACK of SYN-ACK, per family.
    let syns: Vec<&Value> = events.iter().filter(|e| e["flags"] == serde_json::json!(["SYN"])).collect();
    assert_eq!(syns.len(), 2);
    assert_eq!(syns[0]["ip_version"], 4);
    assert_eq!(syns[1]["ip_version"], 6);
    for syn in syns {
        assert_eq!(syn["dport"], PORT);
        assert!(syn["options"]["mss"].as_u64().unwrap() >= 1400);
        let sport = &syn["sport"];
        let isn = syn["seq"].as_u64().unwrap();
        let ack = events
            .iter()
            .find(|e| &e["sport"] == sport && e["flags"] == serde_json::json!(["ACK"]))
            .expect("handshake ACK");
        assert_eq!(ack["seq"].as_u64().unwrap(), (isn + 1) % (1 << 32));
        let data: u64 =
            events.iter().filter(|e| &e["sport"] == sport).map(|e| e["payload_len"].as_u64().unwrap()).sum();
        assert_eq!(data, 1000, "payload bytes of one connection");
    }
    // Nothing stays attached after a clean exit.
    assert!(!link_exists(link), "link {link} detached");
}

#[test]
fn tc_events_match_tshark() {
    watch_matches_tshark("tc");
}

#[test]
fn xdp_events_match_tshark() {
    watch_matches_tshark("xdp");
}

#[test]
fn count_and_flag_filter_stop_after_the_syns() {
    let hosts = TestHosts::new("count").unwrap();
    let mut watch = start_tcpscope(
        &hosts.server_ns,
        &["watch", "-i", SERVER_IF, "--json", "--flags", "SYN,!ACK", "-c", "2"],
    );
    exchange(&hosts, 10);
    let status = watch.wait_timeout(Duration::from_secs(20)).expect("-c 2 makes watch exit by itself");
    assert!(status.success());
    let out = stdout_of(&mut watch);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|e| e["flags"] == serde_json::json!(["SYN"])));
    assert_eq!(lines[0]["src"], "198.18.0.1");
    assert_eq!(lines[1]["src"], "2001:db8::1");
}

#[test]
fn text_output_reads_like_tcpdump() {
    let hosts = TestHosts::new("text").unwrap();
    let mut watch =
        start_tcpscope(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--port", "8080", "--snaplen", "4"]);
    exchange(&hosts, 100);
    std::thread::sleep(Duration::from_millis(300));
    watch.interrupt_and_wait(Duration::from_secs(20)).unwrap();
    let out = stdout_of(&mut watch);
    let first = out.lines().next().expect("a line");
    assert!(first.contains(" tc tsc-server IP 198.18.0.1."), "{first}");
    assert!(first.contains(" > 198.18.0.2.8080: Flags [S], seq "), "{first}");
    assert!(first.contains("options [mss 1460,sackOK,TS val "), "{first}");
    assert!(out.lines().any(|l| l.contains("IP6 2001:db8::1.") && l.contains("Flags [S]")));
    // --snaplen 4: the first data segment shows "xxxx".
    assert!(out.lines().any(|l| l.contains("length 100") && l.ends_with("payload 78787878")), "{out}");
}

#[test]
fn stats_counts_real_packets() {
    let hosts = TestHosts::new("stats").unwrap();
    let mut stats = start_tcpscope(
        &hosts.server_ns,
        &["stats", "-i", SERVER_IF, "--interval", "0.3", "-c", "6", "--json"],
    );
    exchange(&hosts, 500);
    let status = stats.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(status.success());
    let out = stdout_of(&mut stats);
    let reports: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(reports.len(), 6);
    let last = reports.last().unwrap();
    // Two connections: two SYNs, at least SYN, ACK, data, FIN, ACK each.
    assert_eq!(last["syn_no_ack"], 2, "{last}");
    assert!(last["tcp_packets"].as_u64().unwrap() >= 10, "{last}");
    assert_eq!(last["flags"]["SYN"], 2);
    assert_eq!(last["events"], 0, "stats never writes events");
    assert_eq!(last["malformed_total"], 0);
}

#[test]
fn kill_9_leaves_nothing_attached() {
    let hosts = TestHosts::new("kill").unwrap();
    for hook in ["tc", "xdp"] {
        let (mut watch, link) =
            start_tcpscope_link(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--hook", hook]);
        assert!(link_exists(link), "{hook}: link {link} exists while tcpscope runs");
        watch.child.kill().unwrap(); // SIGKILL: no cleanup code runs
        watch.child.wait().unwrap();
        // The kernel releases the link when the last fd closes; give the
        // deferred free a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while link_exists(link) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!link_exists(link), "{hook}: the kernel detached link {link}");
        // And the hook is free again: a new instance attaches.
        let (mut again, _) =
            start_tcpscope_link(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--hook", hook]);
        again.interrupt_and_wait(Duration::from_secs(20)).unwrap();
    }
}

#[test]
fn sigterm_detaches_and_prints_the_summary() {
    let hosts = TestHosts::new("term").unwrap();
    let mut cmd = TestHosts::command_in(&hosts.server_ns, tcpscope_bin());
    cmd.args(["watch", "-i", SERVER_IF, "--hook", "xdp"]).stdout(std::process::Stdio::null());
    let (mut watch, stderr) =
        tcpscope::testhost::ChildGuard::spawn_until_ready(cmd, "watching", Duration::from_secs(30)).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(watch.child.id() as i32, libc::SIGTERM) };
    let status = watch.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(100));
    let text = stderr.lock().unwrap().join("\n");
    assert!(text.contains("events: 0 emitted, 0 lost"), "{text}");
    // The XDP hook is free: a second instance can attach.
    let (mut again, _) = start_tcpscope_link(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--hook", "xdp"]);
    again.interrupt_and_wait(Duration::from_secs(20)).unwrap();
}

#[test]
fn pcapng_export_opens_in_tshark() {
    let hosts = TestHosts::new("pcapng").unwrap();
    let tmp = std::env::temp_dir();
    let theirs = tmp.join(format!("{}-tshark.pcapng", hosts.server_ns));
    let ours = tmp.join(format!("{}-tcpscope.pcapng", hosts.server_ns));
    let filter = format!(
        "tcp port {PORT} and (dst host {} or dst host {})",
        TestHosts::server_addr(false),
        TestHosts::server_addr(true)
    );
    let tshark = Tshark::start(&hosts.server_ns, SERVER_IF, &filter, &theirs);
    let out = ours.to_str().unwrap();
    let mut watch = start_tcpscope(
        &hosts.server_ns,
        &["watch", "-i", SERVER_IF, "--port", "8080", "--snaplen", "16", "-w", out],
    );
    exchange(&hosts, 1000);
    std::thread::sleep(Duration::from_millis(300));
    assert!(watch.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    assert!(stdout_of(&mut watch).is_empty(), "-w writes the file instead of printing");

    let fields = [
        "frame.len",
        "frame.cap_len",
        "frame.time_epoch",
        "tcp.srcport",
        "tcp.dstport",
        "tcp.seq_raw",
        "tcp.ack_raw",
        "tcp.flags",
        "tcp.len",
        "tcp.options.timestamp.tsval",
    ];
    let live = tshark.stop_and_read(&fields);
    let exported = read_pcap_fields(&ours, &fields);
    let _ = std::fs::remove_file(&ours);
    let _ = std::fs::remove_file(&theirs);
    assert!(live.len() >= 10);
    assert_eq!(exported.len(), live.len(), "tshark decodes every exported packet as TCP");
    for (i, (e, l)) in exported.iter().zip(&live).enumerate() {
        assert_eq!(e[0], l[0], "packet {i}: original length kept");
        assert_eq!(e[3..], l[3..], "packet {i}: the same TCP fields");
        let (cap, len): (usize, usize) = (e[1].parse().unwrap(), e[0].parse().unwrap());
        let payload: usize = e[8].parse().unwrap();
        // Headers plus at most 16 payload bytes: a headers-only capture is honest.
        assert_eq!(cap, len - payload + payload.min(16), "packet {i}: captured length");
        let (te, tl): (f64, f64) = (e[2].parse().unwrap(), l[2].parse().unwrap());
        assert!((te - tl).abs() < 0.05, "packet {i}: timestamps {te} vs {tl}");
    }
    assert!(
        exported.iter().any(|e| e[8] == "1000" && e[1] != e[0]),
        "a data packet was cut to headers + 16 bytes"
    );
}

#[test]
fn netns_option_watches_an_interface_in_another_namespace() {
    // Like `ip -n`: tcpscope itself enters the namespace (no `ip netns exec`).
    let hosts = TestHosts::new("netnsopt").unwrap();
    let mut cmd = std::process::Command::new(tcpscope_bin());
    cmd.args([
        "watch",
        "--netns",
        &hosts.server_ns,
        "-i",
        SERVER_IF,
        "--json",
        "--flags",
        "SYN,!ACK",
        "-c",
        "1",
    ])
    .stdout(std::process::Stdio::piped());
    let (mut watch, _) =
        tcpscope::testhost::ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
    exchange(&hosts, 10);
    assert!(watch.wait_timeout(Duration::from_secs(20)).unwrap().success());
    let ev: Value = serde_json::from_str(stdout_of(&mut watch).trim()).unwrap();
    assert_eq!((ev["src"].as_str(), ev["dport"].as_u64()), (Some("198.18.0.1"), Some(u64::from(PORT))));
    // The connection key names the namespace the interface lives in.
    let ino = std::fs::metadata(format!("/var/run/netns/{}", hosts.server_ns)).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    assert!(ev["conn"].as_str().unwrap().starts_with(&format!("{}/", ino.unwrap())), "{ev}");
    let bad = std::process::Command::new(tcpscope_bin())
        .args(["watch", "--netns", "no-such-ns", "-i", "lo"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("network namespace 'no-such-ns' not found"));
}

#[test]
fn watch_piped_into_head_exits_after_the_first_line() {
    let hosts = TestHosts::new("head").unwrap();
    let mut cmd = TestHosts::command_in(&hosts.server_ns, "sh");
    // One matching packet only: nothing more is ever written that would
    // fail on the closed pipe, so watch must notice the pipe by itself.
    cmd.args(["-c", &format!("{} watch -i {SERVER_IF} --flags SYN,!ACK | head -1", tcpscope_bin())])
        .stdout(std::process::Stdio::piped());
    let (mut pipeline, _) =
        tcpscope::testhost::ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
    let listener = listen_in_server(&hosts, 18090);
    let addr = std::net::SocketAddr::from((tcpscope::testhost::SERVER_V4, 18090));
    TestHosts::run_in(&hosts.client_ns, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .join()
    .unwrap()
    .unwrap()
    .unwrap();
    drop(listener);
    let st = pipeline.wait_timeout(Duration::from_secs(20)).expect("watch | head -1 ends");
    assert!(st.success());
    assert_eq!(pipeline.stdout_text().lines().count(), 1);
}

/// 802.1Q and QinQ frames, crafted and sent into the server's veth: both
/// hooks report every tag, outermost first. At TC the kernel has already
/// moved the outer tag out of the frame (skb->vlan_tci).
#[test]
fn vlan_tags_reach_events_at_both_hooks() {
    use common::raw;
    const PORT: u16 = 18091;
    let hosts = TestHosts::new("vlan").unwrap();
    let link = raw::RawLink::open(
        &hosts.client_ns,
        tcpscope::testhost::CLIENT_IF,
        raw::mac_of(&hosts.server_ns, SERVER_IF),
    );
    let (c, s) = (tcpscope::testhost::CLIENT_V4.octets(), tcpscope::testhost::SERVER_V4.octets());
    let ip = raw::ipv4_fragments(c, s, 1, &raw::syn_segment(&c, &s, 40000, PORT, 1), &[]).remove(0);
    let tag = |tci: u16, next: u16| [tci.to_be_bytes(), next.to_be_bytes()].concat();
    let single = [tag(100, raw::ETH_P_IP), ip.clone()].concat();
    let qinq = [tag(10, 0x8100), tag(20, raw::ETH_P_IP), ip].concat();
    for hook in ["tc", "xdp"] {
        let port = PORT.to_string();
        let mut w = start_tcpscope(
            &hosts.server_ns,
            &["watch", "-i", SERVER_IF, "--hook", hook, "--json", "--dport", &port, "-c", "2"],
        );
        link.send(0x8100, &single);
        link.send(0x88a8, &qinq);
        assert!(w.wait_timeout(Duration::from_secs(20)).unwrap().success(), "{hook}");
        let vlans: Vec<Value> = stdout_of(&mut w)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["vlan"].clone())
            .collect();
        assert_eq!(vlans, [serde_json::json!([100]), serde_json::json!([10, 20])], "{hook}");
    }
}

#[test]
fn watch_writes_pcapng_to_stdout_with_dash() {
    const PORT: u16 = 18092;
    let hosts = TestHosts::new("wdash").unwrap();
    let port = PORT.to_string();
    let mut w =
        start_tcpscope(&hosts.server_ns, &["watch", "-i", SERVER_IF, "-w", "-", "-c", "2", "--dport", &port]);
    let listener = listen_in_server(&hosts, PORT);
    TestHosts::run_in(&hosts.client_ns, move || {
        let mut s = std::net::TcpStream::connect((tcpscope::testhost::SERVER_V4, PORT)).unwrap();
        std::io::Write::write_all(&mut s, b"hello").unwrap();
    })
    .join()
    .unwrap()
    .unwrap();
    drop(listener);
    assert!(w.wait_timeout(Duration::from_secs(20)).unwrap().success());
    // Standard output is the capture: tshark reads it (and no file named "-" appears).
    let file = std::env::temp_dir().join(format!("tcpscope-dash-{}.pcapng", std::process::id()));
    std::fs::write(&file, w.stdout_text_bytes()).unwrap();
    let rows = read_pcap_fields(&file, &["tcp.dstport"]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r[0] == port));
    assert!(!std::path::Path::new("-").exists());
}

/// BIG TCP: the client's veth may build GSO packets of up to 185,000
/// bytes, and the server's veth passes them up whole, so tc sees packets
/// whose IP length field is 0 and whose data mostly sits outside the
/// linear part. The payload length comes from the frame's length, not from
/// the linear data (IPv4 has nothing else to go by; IPv6 may also carry a
/// jumbo option): the events' payloads cover exactly the bytes the
/// application sent, over each family.
#[test]
fn big_tcp_packets_report_their_whole_payload_at_tc() {
    use std::io::{Read, Write};
    use tcpscope::testhost::{set_link_u32, CLIENT_IF, IFLA_GRO_IPV4_MAX_SIZE, IFLA_GSO_IPV4_MAX_SIZE};
    const PORT: u16 = 18110;
    const SENT: usize = 50_000_000;
    let hosts = TestHosts::new("bigtcp").unwrap();
    let big = "this kernel allows BIG TCP (IPv6 from Linux 5.19, IPv4 from 6.3)";
    tcpscope::testhost::ip(&["-n", &hosts.client_ns, "link", "set", CLIENT_IF, "gso_max_size", "185000"])
        .expect(big);
    tcpscope::testhost::ip(&["-n", &hosts.server_ns, "link", "set", SERVER_IF, "gro_max_size", "185000"])
        .expect(big);
    set_link_u32(&hosts.client_ns, CLIENT_IF, IFLA_GSO_IPV4_MAX_SIZE, 185_000).expect(big);
    set_link_u32(&hosts.server_ns, SERVER_IF, IFLA_GRO_IPV4_MAX_SIZE, 185_000).expect(big);
    let port = PORT.to_string();
    let mut w = start_tcpscope(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--json", "--dport", &port]);
    let listener = TestHosts::run_in(&hosts.server_ns, || std::net::TcpListener::bind(("::", PORT)).unwrap())
        .join()
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let mut counts = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut n = 0;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match s.read(&mut buf).unwrap() {
                    0 => break,
                    k => n += k,
                }
            }
            counts.push(n);
        }
        counts
    });
    TestHosts::run_in(&hosts.client_ns, move || {
        for v6 in [false, true] {
            let addr = std::net::SocketAddr::new(TestHosts::server_addr(v6), PORT);
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            s.write_all(&vec![b'x'; SENT]).unwrap();
        }
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(server.join().unwrap(), [SENT, SENT]);
    // The server read each FIN, so every packet has passed tc, and its
    // event is in the ring buffer, which watch drains before it exits.
    assert!(w.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    let events: Vec<Value> = stdout_of(&mut w).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for family in [4, 6] {
        let events: Vec<&Value> = events.iter().filter(|e| e["ip_version"] == family).collect();
        let big: Vec<&&Value> = events.iter().filter(|e| e["ip_len"] == 0).collect();
        assert!(
            !big.is_empty(),
            "IPv{family}: no BIG TCP packet (IP length 0) reached tc: nothing was tested"
        );
        for e in &big {
            assert!(
                e["payload_len"].as_u64().unwrap() > 65535,
                "IPv{family}: a BIG TCP packet's payload: {e}"
            );
        }
        // The bytes the events cover, each once: under load TCP may send
        // some again, and tc sees those too.
        let syn = events.iter().find(|e| e["flags"] == serde_json::json!(["SYN"])).expect("the SYN's event");
        let isn = syn["seq"].as_u64().unwrap() as u32;
        let mut ranges: Vec<(u64, u64)> = events
            .iter()
            .filter(|e| e["payload_len"].as_u64().unwrap() > 0)
            .map(|e| {
                let start = u64::from((e["seq"].as_u64().unwrap() as u32).wrapping_sub(isn.wrapping_add(1)));
                (start, start + e["payload_len"].as_u64().unwrap())
            })
            .collect();
        ranges.sort_unstable();
        let (mut covered, mut reach) = (0u64, 0u64);
        for (start, end) in ranges {
            covered += end.saturating_sub(start.max(reach));
            reach = reach.max(end);
        }
        assert_eq!(
            (covered, reach),
            (SENT as u64, SENT as u64),
            "IPv{family}: the payload of {} events ({} BIG TCP)",
            events.len(),
            big.len()
        );
    }
}
