//! `tcpscope l7 -r` against tshark, on a capture of real clients between
//! the test hosts: curl (HTTP/1, h2c, IPv6), `openssl s_client` and Python's
//! `ssl` (TLS with SNI and ALPN), DNS over TCP, SSH banners, a binary
//! protocol and a connection that sends nothing. The server advertises an
//! MSS of 120 bytes, so every ClientHello and most request headers arrive
//! in several segments. tshark (`-o tcp.reassemble_out_of_order:TRUE`)
//! gives the fields it decodes; where tshark goes by the port and we do
//! not (TLS on 80, SSH on 2222, h2c on 8081, HTTP on 443, the rest), our
//! answer is checked against what the generator sent.
//!
//! `tcpscope l7 -i` runs live beside tcpdump, at TC and at XDP at once, and
//! must give the same record for every connection as the capture read
//! offline.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tcpscope::testhost::{ChildGuard, TestHosts, SERVER_IF};

const PROTOCOLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/l7/protocols.toml");

const PORTS: [u16; 10] = [8080, 443, 80, 4443, 53, 22, 2222, 9000, 8081, 7000];

/// Listeners that read what each client sends (for a second at most), then close.
fn serve(hosts: &TestHosts, ports: &[u16]) -> Vec<std::thread::JoinHandle<()>> {
    ports
        .iter()
        .map(|&port| {
            let l = TestHosts::run_in(&hosts.server_ns, move || TcpListener::bind(("::", port)).unwrap())
                .join()
                .unwrap()
                .unwrap();
            l.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while std::time::Instant::now() < deadline {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            s.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
                            let mut buf = [0u8; 8192];
                            let _ = s.read(&mut buf);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect()
}

/// tshark's fields of the packets `filter` takes, `|`-separated, one line
/// each; it reassembles out-of-order segments, and decodes `decode_as`
/// ("tcp.port==N,proto") beside what it finds by itself.
fn tshark_fields(pcap: &std::path::Path, decode_as: &[&str], filter: &str, fields: &[&str]) -> String {
    let mut ts = Command::new("tshark");
    ts.arg("-r").arg(pcap).args(["-o", "tcp.reassemble_out_of_order:TRUE"]);
    for d in decode_as {
        ts.args(["-d", d]);
    }
    ts.args(["-Y", filter, "-T", "fields", "-E", "separator=|"]);
    for f in fields {
        ts.args(["-e", f]);
    }
    let out = ts.output().expect("tshark (scripts/setup.sh installs it)");
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The first messages tshark decodes.
const DECODED: &str = "http.request or tls.handshake.type == 1 or dns.flags.response == 0 or ssh.protocol";

fn in_client(hosts: &TestHosts, program: &str, args: &[&str]) {
    let out = TestHosts::command_in(&hosts.client_ns, "timeout")
        .arg("5")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs it)"));
    // The server never answers: the clients fail after sending; only their
    // start matters.
    assert!(out.status.code() != Some(127), "{program} is missing");
    if program.ends_with("python3") {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

fn python(hosts: &TestHosts, code: &str) {
    in_client(hosts, "/usr/bin/python3", &["-c", code]);
}

/// A DNS query for `name`, type `qtype`, with DNS-over-TCP's length prefix.
fn dns_query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    framed
}

#[test]
fn l7_hints_agree_with_tshark_and_with_what_was_sent() {
    let _load = side_by_side();
    let hosts = TestHosts::new("l7").unwrap();
    // Small segments: the server advertises an MSS of 120 bytes.
    small_mss(&hosts, 120);
    // Segments as sent: no offloads merging them on either side (the
    // capture is taken at the server's interface, after GRO).
    hosts.offloads_off().unwrap();
    let dir = std::env::temp_dir().join(format!("tcpscope-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("l7.pcap");
    let mut cmd = TestHosts::command_in(&hosts.server_ns, "tcpdump");
    cmd.args(["-i", SERVER_IF, "--immediate-mode", "-U", "-s", "0", "-w"]).arg(&pcap).arg("tcp");
    let (mut tcpdump, _) =
        ChildGuard::spawn_until_ready(cmd, "listening on", Duration::from_secs(20)).unwrap();
    // Live, at both hooks, beside tcpdump.
    let mut live: Vec<(&str, ChildGuard)> = ["tc", "xdp"]
        .into_iter()
        .map(|hook| {
            let args = ["l7", "-i", SERVER_IF, "--hook", hook, "--json", "--protocols", PROTOCOLS];
            (hook, start_tcpscope(&hosts.server_ns, &args))
        })
        .collect();
    let servers = serve(&hosts, &PORTS);
    let server = "198.18.0.2";

    // curl, bounded, from a known client port.
    let curl = |port: &str, args: &[&str]| {
        let mut all = vec!["-sS", "--max-time", "2", "--local-port", port];
        all.extend_from_slice(args);
        in_client(&hosts, "curl", &all);
    };
    curl(
        "41001",
        &["-H", "Host: a.example", "-A", "tcpscope-l7/1", &format!("http://{server}:8080/l7/curl?x=1")],
    );
    curl("41002", &["-H", "Content-Type: text/plain", "-d", "hello", &format!("http://{server}:443/post")]);
    curl("41003", &["--http2-prior-knowledge", &format!("http://{server}:8081/h2")]);
    curl("41004", &["-g", "-H", "Host: v6.example", "http://[2001:db8::2]:8080/v6"]);
    in_client(
        &hosts,
        "openssl",
        &[
            "s_client",
            "-connect",
            &format!("{server}:443"),
            "-servername",
            "tls.example",
            "-alpn",
            "h2,http/1.1",
        ],
    );
    let tls_py = |port: u16, local: u16, sni: &str, alpn: &str| {
        format!(
            "import socket, ssl\nctx = ssl.create_default_context()\nctx.set_alpn_protocols([{alpn}])\ns = socket.socket()\ns.bind(('', {local}))\ns.settimeout(2)\ns.connect(('{server}', {port}))\ntry:\n    ctx.wrap_socket(s, server_hostname='{sni}')\nexcept Exception:\n    pass\n"
        )
    };
    python(&hosts, &tls_py(4443, 41005, "py.example", "'h2'"));
    python(&hosts, &tls_py(80, 41006, "mismatch.example", "'http/1.1'"));
    let send = |port: u16, local: u16, bytes: &[u8]| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        python(
            &hosts,
            &format!("import socket, time\ns = socket.socket()\ns.bind(('', {local}))\ns.connect(('{server}', {port}))\ns.sendall(bytes.fromhex('{hex}'))\ntime.sleep(0.2)\ns.close()\n"),
        );
    };
    send(53, 41007, &dns_query("l7.example", 28));
    send(22, 41008, b"SSH-2.0-tcpscope_l7_test\r\n");
    send(2222, 41009, b"SSH-2.0-OtherPort_1.0\r\n");
    send(9000, 41010, b"\x00\x01\x02binary-protocol-frame");
    send(80, 41011, b"");
    // The custom protocol of deploy/l7/protocols.toml: "MC", version 1,
    // message type 2 (status), transaction id 0x01020304, length 6.
    send(7000, 41012, b"MC\x01\x02\x01\x02\x03\x04\x00\x06status");
    // Out of order and retransmitted segments are the tracker's unit tests'
    // (crafted), and tshark needs them in order to agree.

    drop(servers); // they end by themselves; the namespaces go with `hosts`
                   // tcpdump has written the last connection's FIN before it is stopped
                   // (packets still in its ring at SIGINT are not written).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-Y", "tcp.srcport == 41012 && tcp.flags.fin == 1"])
            .output()
            .expect("tshark (scripts/setup.sh installs it)");
        if !seen.stdout.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the capture lacks the last connection");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tcpdump.interrupt_and_wait(Duration::from_secs(10)).unwrap().success());

    let out = Command::new(tcpscope_bin()).args(["l7", "--json", "-r"]).arg(&pcap).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_sport: HashMap<u64, &serde_json::Value> =
        ours.iter().map(|r| (r["sport"].as_u64().unwrap(), r)).collect();
    let of = |sport: u64| {
        &by_sport.get(&sport).unwrap_or_else(|| panic!("no record for client port {sport}: {ours:#?}"))["l7"]
    };

    // tshark's view, by client port.
    let fields = [
        "tcp.srcport",
        "http.request.method",
        "http.request.uri",
        "http.host",
        "http.user_agent",
        "tls.handshake.extensions_server_name",
        "tls.handshake.extensions_alpn_str",
        "dns.qry.name",
        "dns.qry.type",
        "ssh.protocol",
    ];
    let t = tshark_fields(&pcap, &["tcp.port==4443,tls"], DECODED, &fields);
    let mut tshark: HashMap<u64, Vec<String>> = HashMap::new();
    for line in t.lines() {
        let v: Vec<String> = line.split('|').map(str::to_string).collect();
        if let Ok(p) = v[0].parse() {
            tshark.entry(p).or_insert(v);
        }
    }
    let mut compared = 0;
    for (sport, row) in &tshark {
        let Some(r) = by_sport.get(sport) else { continue };
        let l = &r["l7"];
        let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
        let (ours_f, theirs): (Vec<String>, &[String]) = match l["proto"].as_str() {
            Some("http") => (vec![s("method"), s("path"), s("host"), s("user_agent")], &row[1..5]),
            Some("tls") => (
                vec![
                    s("sni"),
                    l["alpn"]
                        .as_array()
                        .map(|a| a.iter().map(|x| x.as_str().unwrap()).collect::<Vec<_>>().join(","))
                        .unwrap_or_default(),
                ],
                &row[5..7],
            ),
            Some("dns") => (vec![s("qname"), l["qtype"].to_string()], &row[7..9]),
            Some("ssh") => (vec![s("banner")], &row[9..10]),
            other => panic!("tshark decoded client port {sport} ({row:?}), we said {other:?}"),
        };
        assert_eq!(ours_f, theirs, "client port {sport}: ours {l}, tshark {row:?}");
        compared += 1;
    }
    // What tshark must have decoded: HTTP on 8080 (v4 and v6), TLS on 443
    // and 4443, DNS on 53, SSH on 22.
    let tls_443 =
        ours.iter().find(|r| r["dport"] == 443 && r["l7"]["proto"] == "tls").expect("openssl's connection");
    for sport in [41001, 41004, 41005, 41007, 41008, tls_443["sport"].as_u64().unwrap()] {
        assert!(tshark.contains_key(&sport), "tshark did not decode client port {sport}: {tshark:?}");
    }
    assert!(compared >= 6, "{compared} compared");
    assert_eq!(tls_443["l7"]["sni"], "tls.example");
    assert_eq!(tls_443["l7"]["alpn"], serde_json::json!(["h2", "http/1.1"]));
    assert!(tls_443["l7"]["versions"].as_array().unwrap().iter().any(|v| v == "1.3"), "{tls_443}");

    // Where tshark goes by the port: the generator's truth.
    let mismatch = of(41006);
    assert_eq!(
        (mismatch["proto"].as_str(), mismatch["sni"].as_str(), mismatch["port_mismatch"].as_bool()),
        (Some("tls"), Some("mismatch.example"), Some(true))
    );
    let http_443 = of(41002);
    assert_eq!(
        (http_443["proto"].as_str(), http_443["method"].as_str(), http_443["port_mismatch"].as_bool()),
        (Some("http"), Some("POST"), Some(true))
    );
    assert_eq!(
        (http_443["content_type"].as_str(), http_443["content_length"].as_u64()),
        (Some("text/plain"), Some(5))
    );
    assert_eq!(of(41003)["proto"], "http2");
    assert_eq!(
        (of(41009)["proto"].as_str(), of(41009)["banner"].as_str()),
        (Some("ssh"), Some("SSH-2.0-OtherPort_1.0"))
    );
    assert_eq!(
        (of(41010)["proto"].as_str(), of(41010)["first_bytes"].as_str()),
        (Some("unknown"), Some("00010262696e6172792d70726f746f63"))
    );
    let silent = of(41011);
    assert_eq!(
        (silent["proto"].as_str(), silent["gave_up"].as_str(), silent["port_mismatch"].as_bool()),
        (Some("unknown"), Some("closed"), Some(true))
    );
    for (sport, l) in [(41001u64, of(41001)), (41004, of(41004)), (41007, of(41007))] {
        assert_eq!(l["port_mismatch"], false, "client port {sport}: {l}");
    }
    // The ClientHellos came in several segments (MSS 120), and were
    // reassembled: both openssl's and Python's carry their SNI.
    assert_eq!(of(41005)["sni"], "py.example");
    let segs = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-Y", "tcp.srcport == 41005 && tcp.len > 0", "-T", "fields", "-e", "tcp.len"])
        .output()
        .unwrap();
    let lens: Vec<u32> =
        String::from_utf8_lossy(&segs.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(lens.len() >= 3 && lens.iter().all(|l| *l <= 120), "the ClientHello in small segments: {lens:?}");

    // JA4, computed here a second way: from tshark's fields for each
    // ClientHello, hashed by coreutils' sha256sum.
    let hellos = tshark_fields(
        &pcap,
        &["tcp.port==4443,tls", "tcp.port==80,tls"],
        "tls.handshake.type == 1",
        &[
            "tcp.srcport",
            "tls.handshake.version",
            "tls.handshake.ciphersuite",
            "tls.handshake.extension.type",
            "tls.handshake.sig_hash_alg",
            "tls.handshake.extensions.supported_version",
            "tls.handshake.extensions_alpn_str",
        ],
    );
    let mut checked = 0;
    for line in hellos.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let num = |s: &str| {
            if let Some(h) = s.strip_prefix("0x") {
                u16::from_str_radix(h, 16).unwrap()
            } else {
                s.parse().unwrap()
            }
        };
        let list = |s: &str| -> Vec<u16> {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(num)
                .filter(|v| !(v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff))
                .collect()
        };
        let hex = |v: &[u16]| v.iter().map(|x| format!("{x:04x}")).collect::<Vec<_>>().join(",");
        let sha = |s: &str| {
            let mut c =
                Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), s.as_bytes()).unwrap();
            String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout)[..12].to_string()
        };
        let (mut ciphers, exts, sigs) = (list(f[2]), list(f[3]), list(f[4]));
        let version = list(f[5]).into_iter().max().unwrap_or_else(|| num(f[1]));
        let v = match version {
            0x0304 => "13",
            0x0303 => "12",
            0x0302 => "11",
            0x0301 => "10",
            _ => "00",
        };
        let alpn = f[6]
            .split(',')
            .next()
            .filter(|a| !a.is_empty())
            .map_or("00".to_string(), |a| format!("{}{}", &a[..1], &a[a.len() - 1..]));
        let a = format!(
            "t{v}{}{:02}{:02}{alpn}",
            if exts.contains(&0) { "d" } else { "i" },
            ciphers.len(),
            exts.len()
        );
        ciphers.sort();
        let mut sorted: Vec<u16> = exts.iter().copied().filter(|t| *t != 0 && *t != 16).collect();
        sorted.sort();
        let c = if sigs.is_empty() {
            sha(&hex(&sorted))
        } else {
            sha(&format!("{}_{}", hex(&sorted), hex(&sigs)))
        };
        let expected = format!("{a}_{}_{c}", sha(&hex(&ciphers)));
        let sport: u64 = f[0].parse().unwrap();
        assert_eq!(of(sport)["ja4"], expected.as_str(), "client port {sport}: tshark's fields {line}");
        checked += 1;
    }
    assert!(checked >= 3, "ClientHellos checked: {checked}\n{hellos}");

    // Without its description, the custom protocol is unknown; with it,
    // named, its fields read.
    assert_eq!(of(41012)["proto"], "unknown");
    let custom = Command::new(tcpscope_bin())
        .args(["l7", "--json", "--protocols", PROTOCOLS, "-r"])
        .arg(&pcap)
        .output()
        .unwrap();
    let offline: HashMap<u64, serde_json::Value> = String::from_utf8_lossy(&custom.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| (r["sport"].as_u64().unwrap(), r))
        .collect();
    assert_eq!(
        offline[&41012]["l7"],
        serde_json::json!({"proto": "mc", "version": 1, "msg_type": 2, "txid": 0x01020304, "length": 6, "port_mismatch": false}),
        "{:?}",
        offline[&41012]
    );

    // Live: the same record for every connection as offline, at either
    // hook, with the connection's key.
    for (hook, mut child) in live.drain(..) {
        assert!(child.interrupt_and_wait(Duration::from_secs(20)).unwrap().success(), "{hook}");
        let text = stdout_of(&mut child);
        let records: HashMap<u64, serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|r| (r["sport"].as_u64().unwrap(), r))
            .collect();
        assert_eq!(records.len(), text.lines().count(), "{hook}: one record per connection\n{text}");
        let mut sports: Vec<&u64> = records.keys().collect();
        let mut expected: Vec<&u64> = offline.keys().collect();
        (sports.sort(), expected.sort());
        assert_eq!(sports, expected, "{hook}: the same connections live as offline\n{text}");
        for (sport, r) in &records {
            assert_eq!(r["l7"], offline[sport]["l7"], "{hook}, client port {sport}");
            let conn = r["conn"].as_str().unwrap_or_else(|| panic!("{hook}: no conn in {r}"));
            let (server, client) = if r["src"].as_str().unwrap().contains(':') {
                (format!("[{}]", r["dst"].as_str().unwrap()), format!("[{}]", r["src"].as_str().unwrap()))
            } else {
                (r["dst"].as_str().unwrap().to_string(), r["src"].as_str().unwrap().to_string())
            };
            assert!(conn.ends_with(&format!("/{server}:{}-{client}:{sport}", r["dport"])), "{hook}: {conn}");
        }
    }
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[protocol]]\nname = 'x'\nmagic = [{ offset = 0, value = 'q1' }]\n").unwrap();
    let out = Command::new(tcpscope_bin())
        .args(["l7", "--protocols"])
        .arg(&bad)
        .arg("-r")
        .arg(&pcap)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && err.lines().count() == 1 && err.contains("not hex"), "{err}");

    // Text mode: one line per connection.
    let text = Command::new(tcpscope_bin()).args(["l7", "-r"]).arg(&pcap).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count(), ours.len());
    assert!(
        text.lines().any(|l| l.contains("> 198.18.0.2.80: tls sni mismatch.example")
            && l.contains("[unexpected on this port]")),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `bytes` on a new connection from the client host to the server's
/// `port`, then closes it.
fn send_from_client(hosts: &TestHosts, port: u16, bytes: &'static [u8]) {
    TestHosts::run_in(&hosts.client_ns, move || {
        let mut s = std::net::TcpStream::connect((tcpscope::testhost::SERVER_V4, port))?;
        std::io::Write::write_all(&mut s, bytes)?;
        std::thread::sleep(Duration::from_millis(50));
        Ok::<_, std::io::Error>(())
    })
    .join()
    .unwrap()
    .unwrap()
    .unwrap_or_else(|e| panic!("port {port}: {e}"));
}

/// The agent with L7 hints: every connection counted once by protocol and
/// port, TLS ClientHellos by version and post-quantum offer (a crafted
/// ClientHello with an X25519MLKEM768 key share, larger than one segment),
/// the give-ups by reason, the opt-in top names with their `other` row,
/// and one log line per connection. A SYN to a closed port is not followed
/// (no socket would take it), so it makes neither a record nor a series.
/// Counting, and guarding (the guard inspects, the agent's default).
#[test]
fn the_agent_counts_l7_by_protocol_port_and_version_and_logs_each_record() {
    agent_l7("127.0.0.1:19932", false);
}

#[test]
fn the_guarding_agent_counts_l7_too() {
    agent_l7("127.0.0.1:19933", true);
}

fn agent_l7(listen: &'static str, guard: bool) {
    let _load = side_by_side();
    let hosts = TestHosts::new(if guard { "l7guard" } else { "l7agent" }).unwrap();
    let dir = std::env::temp_dir().join(format!("tcpscope-l7agent-{}-{guard}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("events.ndjson");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = ['{SERVER_IF}']\nnetns = '{}'\nlisten = '{listen}'\nstate_dir = '{}'\n\
             [control]\nsocket = '/run/tcpscope/test-l7-{}-{guard}.sock'\n\
             [log]\nevents = ['l7']\nfile = '{}'\n\
             [l7]\nenabled = true\nprotocols = '{PROTOCOLS}'\ntop_names = 1\nwindow = 1.0\n\
             [guard]\nenabled = {guard}\n",
            hosts.server_ns,
            dir.join("state").display(),
            std::process::id(),
            log.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(tcpscope_bin());
    cmd.args(["agent", "--config"]).arg(&config).stdout(Stdio::null());
    let (mut agent, _) =
        ChildGuard::spawn_until_ready(cmd, "metrics on http://", Duration::from_secs(30)).unwrap();
    let servers = serve(&hosts, &[18401, 18402, 18403]);

    send_from_client(&hosts, 18401, b"GET /1 HTTP/1.1\r\nHost: a.example\r\n\r\n");
    send_from_client(&hosts, 18401, b"GET /2 HTTP/1.1\r\nHost: a.example\r\n\r\n");
    send_from_client(&hosts, 18401, b"POST /3 HTTP/1.1\r\nHost: b.example\r\nContent-Length: 0\r\n\r\n");
    send_from_client(&hosts, 18401, b""); // sends nothing: given up, closed
    let pq: &'static [u8] = Box::leak(tcpscope::testpkt::client_hello("pq.example", true).into_boxed_slice());
    let classic: &'static [u8] =
        Box::leak(tcpscope::testpkt::client_hello("classic.example", false).into_boxed_slice());
    send_from_client(&hosts, 18402, pq);
    send_from_client(&hosts, 18402, classic);
    send_from_client(&hosts, 18403, b"MC\x01\x01\x00\x00\x00\x07\x00\x02go");
    // A closed port: refused.
    let refused = TestHosts::run_in(&hosts.client_ns, || {
        std::net::TcpStream::connect((tcpscope::testhost::SERVER_V4, 18404)).is_err()
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(refused);

    let metrics = || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &format!("http://{listen}/metrics")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let value = |text: &str, series: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    let want = [
        ("tcpscope_l7_connections_total{port=\"18401\",proto=\"http\"}", 3),
        ("tcpscope_l7_connections_total{port=\"18402\",proto=\"tls\"}", 2),
        ("tcpscope_l7_connections_total{port=\"18403\",proto=\"mc\"}", 1),
        ("tcpscope_tls_client_hellos_total{pq=\"true\",version=\"1.3\"}", 1),
        ("tcpscope_tls_client_hellos_total{pq=\"false\",version=\"1.3\"}", 1),
        ("tcpscope_l7_gave_up_total{reason=\"closed\"}", 1),
        ("tcpscope_l7_gave_up_total{reason=\"timeout\"}", 0),
        ("tcpscope_l7_gave_up_total{reason=\"too_large\"}", 0),
        ("tcpscope_l7_gave_up_total{reason=\"state_evicted\"}", 0),
        ("tcpscope_events_lost_total{view=\"l7\"}", 0),
        // Top 1 of each kind over the window, the rest as "other".
        ("tcpscope_l7_top_names{kind=\"host\",name=\"a.example\"}", 2),
        ("tcpscope_l7_top_names{kind=\"host\",name=\"other\"}", 1),
        ("tcpscope_l7_top_names{kind=\"sni\",name=\"classic.example\"}", 1),
        ("tcpscope_l7_top_names{kind=\"sni\",name=\"other\"}", 1),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = metrics();
        if want.iter().all(|(s, n)| value(&text, s) == Some(*n)) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "not the counts made: {want:?}\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!text.contains("18404"), "a closed port makes no series:\n{text}");
    assert!(!text.contains("pq.example") && !text.contains("b.example"), "past the top 1: only in other");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.as_ref().unwrap(), text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(checked.status.success(), "promtool: {}", String::from_utf8_lossy(&checked.stderr));

    assert!(agent.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    drop(servers);
    let logged: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(logged.len(), 7, "one line per connection, none for the refused SYN: {logged:#?}");
    assert!(logged
        .iter()
        .all(|l| l["event"] == "l7" && l["interface"] == SERVER_IF && l["conn"].is_string()));
    let pq_line = logged.iter().find(|l| l["l7"]["sni"] == "pq.example").expect("the post-quantum hello");
    assert_eq!(pq_line["l7"]["pq"], true);
    assert_eq!(pq_line["l7"]["key_share_groups"], serde_json::json!(["X25519MLKEM768", "x25519"]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The generator's corpus (tests/common/l7gen.rs): first messages split in
/// 2, 3 and 18 segments, reordered, retransmitted, over IPv4 and IPv6, on
/// their ports and on others, an ECH ClientHello, and a connection that
/// sends nothing. Read offline, every record carries what was sent, and
/// agrees with tshark where tshark decodes it; sent for real through the
/// veth (crafted frames on an AF_PACKET socket), `l7 -i` at TC and at XDP
/// gives the same records.
#[test]
fn the_generated_corpus_is_read_as_sent_offline_and_live() {
    use common::l7gen;
    let _load = side_by_side();
    let conns = l7gen::corpus();
    let dir = std::env::temp_dir().join(format!("tcpscope-l7gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("l7gen.pcap");
    l7gen::write_pcap(&pcap, &conns);

    let out = Command::new(tcpscope_bin()).args(["l7", "--json", "-r"]).arg(&pcap).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_sport = |text: &str| -> HashMap<u64, serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|r| (r["sport"].as_u64().unwrap(), r))
            .collect()
    };
    let offline = by_sport(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(offline.len(), conns.len(), "one record per connection: {offline:#?}");
    for c in &conns {
        let r = &offline[&u64::from(c.sport)];
        for (k, v) in c.truth.as_object().unwrap() {
            assert_eq!(&r["l7"][k], v, "{} (client port {}): {k} in {r}", c.what, c.sport);
        }
        let (client, server) = l7gen::endpoints(c);
        assert_eq!(
            (r["src"].as_str(), r["dst"].as_str()),
            (Some(&*client.to_string()), Some(&*server.to_string()))
        );
    }

    // tshark, reassembling out-of-order segments, where it decodes.
    let t = tshark_fields(
        &pcap,
        &["tcp.port==2222,ssh"],
        DECODED,
        &[
            "tcp.srcport",
            "tls.handshake.extensions_server_name",
            "tls.handshake.extensions_alpn_str",
            "http.request.method",
            "http.request.uri",
            "http.host",
            "http.user_agent",
            "dns.qry.name",
            "dns.qry.type",
            "ssh.protocol",
        ],
    );
    let mut decoded = Vec::new();
    for line in t.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let sport: u64 = f[0].parse().unwrap();
        let l = &offline[&sport]["l7"];
        let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
        let join = |k: &str| {
            l[k].as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap()).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        };
        let (ours, theirs): (Vec<String>, &[&str]) = match l["proto"].as_str().unwrap() {
            "tls" => (vec![s("sni"), join("alpn")], &f[1..3]),
            "http" => (vec![s("method"), s("path"), s("host"), s("user_agent")], &f[3..7]),
            "dns" => (vec![s("qname"), l["qtype"].to_string()], &f[7..9]),
            "ssh" => (vec![s("banner")], &f[9..10]),
            other => panic!("tshark decoded client port {sport}, we said {other}"),
        };
        assert_eq!(ours, theirs, "client port {sport}: tshark {line}");
        decoded.push(sport);
    }
    decoded.sort();
    decoded.dedup();
    // Not decoded by tshark, which goes by the port: TLS on 80, and the
    // connection that sent nothing. Checked above against the truth alone.
    // (tshark's heuristics find HTTP on 443.)
    assert_eq!(decoded, [42001, 42002, 42003, 42004, 42006, 42007, 42008, 42009, 42010, 42011], "{}", t);

    // Live: the same frames through the veth, `l7 -i` at both hooks.
    let hosts = TestHosts::new("l7gen").unwrap();
    let servers = serve(&hosts, &[443, 80, 8080, 53, 2222]);
    let n = conns.len().to_string();
    let live: Vec<_> = ["tc", "xdp"]
        .into_iter()
        .map(|hook| {
            let mut cmd = TestHosts::command_in(&hosts.server_ns, tcpscope_bin());
            cmd.args(["l7", "-i", SERVER_IF, "--hook", hook, "--json", "-c", &n]).stdout(Stdio::piped());
            let (child, said) =
                ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
            (hook, child, said)
        })
        .collect();
    let link = common::raw::RawLink::open(
        &hosts.client_ns,
        tcpscope::testhost::CLIENT_IF,
        common::raw::mac_of(&hosts.server_ns, SERVER_IF),
    );
    // First, a SYN to a port nothing listens on: not followed, counted.
    let (_, closed) = l7gen::packets(&l7gen::Conn {
        v6: false,
        sport: 42099,
        dport: 9,
        pieces: Vec::new(),
        truth: serde_json::Value::Null,
        what: "a SYN to a closed port",
    })
    .into_iter()
    .next()
    .unwrap();
    link.send(0x0800, &closed);
    for c in &conns {
        for (ethertype, packet) in l7gen::packets(c) {
            link.send(ethertype, &packet);
        }
    }
    for (hook, mut child, said) in live {
        let done = child.wait_timeout(Duration::from_secs(60));
        assert!(done.as_ref().is_ok_and(|s| s.success()), "{hook}: {done:?}");
        let records = by_sport(&stdout_of(&mut child));
        for c in &conns {
            let sport = u64::from(c.sport);
            let r = records
                .get(&sport)
                .unwrap_or_else(|| panic!("{hook}: no record for {}: {records:#?}", c.what));
            assert_eq!(r["l7"], offline[&sport]["l7"], "{hook}: {}", c.what);
        }
        assert!(!records.contains_key(&42099), "{hook}: the closed port's SYN is not followed");
        // The exit line says what was not followed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let summary = loop {
            let lines = said.lock().unwrap().clone();
            if let Some(l) = lines.iter().find(|l| l.contains("connections identified")) {
                break l.clone();
            }
            assert!(std::time::Instant::now() < deadline, "{hook}: no summary line: {lines:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            summary.contains("11 connections identified, 1 given up (closed 1)")
                && summary.contains("1 SYNs to ports nothing listens on, not followed"),
            "{hook}: {summary}"
        );
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `watch --l7` gives every packet of a named connection, from the one
/// that completed its first message on, the same `l7` object as `l7`;
/// `conns --l7 IFACE` gives it to the connection's later events on the
/// server's side.
#[test]
fn watch_and_conns_carry_the_l7_object_once_known() {
    let _load = side_by_side();
    let hosts = TestHosts::new("l7watch").unwrap();
    let servers = serve(&hosts, &[18501]);
    let watch =
        start_tcpscope(&hosts.server_ns, &["watch", "-i", SERVER_IF, "--json", "--l7", "--port", "18501"]);
    let mut conns = Command::new(tcpscope_bin());
    conns
        .args([
            "conns",
            "--json",
            "--port",
            "18501",
            "-c",
            "6",
            "--l7",
            SERVER_IF,
            "--l7-netns",
            &hosts.server_ns,
        ])
        .stdout(Stdio::piped());
    let (mut conns, _) =
        ChildGuard::spawn_until_ready(conns, "following TCP connections", Duration::from_secs(30)).unwrap();
    send_from_client(&hosts, 18501, b"GET /w HTTP/1.1\r\nHost: w.example\r\nUser-Agent: l7-watch\r\n\r\n");
    let ended = conns.wait_timeout(Duration::from_secs(30));
    assert!(ended.as_ref().is_ok_and(|s| s.success()), "conns: {ended:?}");
    let mut watch = watch;
    assert!(watch.interrupt_and_wait(Duration::from_secs(20)).unwrap().success());
    drop(servers);
    let want = serde_json::json!({"proto": "http", "method": "GET", "path": "/w", "host": "w.example", "user_agent": "l7-watch", "port_mismatch": false});

    let packets: Vec<serde_json::Value> =
        stdout_of(&mut watch).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let from_client: Vec<&serde_json::Value> = packets.iter().filter(|p| p["dport"] == 18501).collect();
    let first = from_client.iter().position(|p| p["payload_len"].as_u64() > Some(0)).expect("the request");
    assert!(from_client[..first].iter().all(|p| p.get("l7").is_none()), "not known before: {packets:#?}");
    assert!(from_client[first..].len() >= 2, "the request and the FIN at least: {packets:#?}");
    for p in &from_client[first..] {
        assert_eq!(p["l7"], want, "{p}");
    }

    let events: Vec<serde_json::Value> =
        stdout_of(&mut conns).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 6, "{events:#?}");
    let server_close =
        events.iter().find(|e| e["event"] == "close" && e["lport"] == 18501).expect("the server's close");
    assert_eq!(server_close["l7"], want, "{server_close}");
    for e in events.iter().filter(|e| e["lport"] != 18501) {
        assert!(e.get("l7").is_none(), "the client's side is not named: {e}");
    }
}

/// `l7 -i ... | head -1`: one connection named, nothing more ever written
/// that would fail on the closed pipe; `l7` notices the pipe by itself.
#[test]
fn l7_piped_into_head_exits_after_the_first_line() {
    let _load = side_by_side();
    let hosts = TestHosts::new("l7head").unwrap();
    let servers = serve(&hosts, &[18601]);
    let mut cmd = TestHosts::command_in(&hosts.server_ns, "sh");
    cmd.args(["-c", &format!("{} l7 -i {SERVER_IF} | head -1", tcpscope_bin())]).stdout(Stdio::piped());
    let (mut pipeline, _) = ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30)).unwrap();
    send_from_client(&hosts, 18601, b"SSH-2.0-head_test\r\n");
    let st = pipeline.wait_timeout(Duration::from_secs(20)).expect("l7 | head -1 ends");
    assert!(st.success());
    let out = pipeline.stdout_text();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("ssh \"SSH-2.0-head_test\""), "{out}");
    drop(servers);
}
