//! Differential test: every packet tshark decodes as TCP, in every capture
//! of ../shared/corpus and in captures made here from live traffic, against
//! `tcpscope read --json`, field by field.
//!
//! A mismatch fails the test. The only exceptions are listed in
//! `explained()`, each with the reason tshark and tcpscope differ.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tcpscope::testhost::{TestHosts, SERVER_IF};

const FIELDS: &[&str] = &[
    "frame.number",
    "ip.src",
    "ipv6.src",
    "ip.dst",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.hdr_len",
    "tcp.flags",
    "tcp.window_size_value",
    "tcp.checksum",
    "tcp.urgent_pointer",
    "tcp.len",
    "tcp.options.mss_val",
    "tcp.options.wscale.shift",
    "tcp.options.sack_perm",
    "tcp.options.sack_le",
    "tcp.options.sack_re",
    "tcp.options.timestamp.tsval",
    "tcp.options.timestamp.tsecr",
    "udp.port",
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/tcpdump")
}

/// tshark's view: frame number -> field name -> value ("" if absent).
fn tshark(file: &Path) -> BTreeMap<u64, BTreeMap<&'static str, String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file);
    // Raw numbers; no reassembly, so every segment is decoded on its own.
    for o in [
        "tcp.relative_sequence_numbers:FALSE",
        "tcp.desegment_tcp_streams:FALSE",
        "tcp.analyze_sequence_numbers:FALSE",
    ] {
        cmd.args(["-o", o]);
    }
    cmd.args(["-Y", "tcp", "-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "tshark failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let row: BTreeMap<&str, String> =
                FIELDS.iter().copied().zip(l.split('|').map(str::to_string)).collect();
            (row["frame.number"].parse().unwrap(), row)
        })
        .collect()
}

/// tcpscope's view: frame number -> JSON record.
fn tcpscope(file: &Path) -> BTreeMap<u64, Value> {
    let out = Command::new(tcpscope_bin()).arg("read").arg(file).arg("--json").output().unwrap();
    // A corrupt tail is reported (non-zero exit) after what could be read.
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["frame"].as_u64().unwrap(), v)
        })
        .collect()
}

fn num(s: &str) -> String {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).map(|n| n.to_string()).unwrap_or_else(|_| s.into()),
        None => s.to_string(),
    }
}

fn first(s: &str) -> &str {
    s.split(',').next().unwrap_or("")
}

/// Why a frame may legitimately differ, or None.
fn explained(
    file: &str,
    frame: u64,
    t: &BTreeMap<&str, String>,
    ours: Option<&Value>,
) -> Option<&'static str> {
    // TCP inside VXLAN/Geneve: tshark decodes the inner packet; tcpscope
    // reports the frame as "tunnelled" and does not decode it (by design).
    if ours.is_none() && ["4789", "6081"].iter().any(|p| t["udp.port"].split(',').any(|x| x == *p)) {
        return Some("tunnelled: tcpscope skips TCP inside VXLAN/Geneve");
    }
    // Linux BIG TCP: an IPv6 GSO packet with payload length 0 and no
    // jumbo option. tshark stops at the IPv6 header ("Malformed Packet:
    // TCP"); tcpdump decodes it (its own test for this file), and so does
    // tcpscope, taking the length from the frame as the kernel does.
    if (file, frame) == ("bigtcp-ipv6.pcap", 1) && t.is_empty() {
        return Some("BIG TCP IPv6 (payload length 0): tshark does not decode it, tcpdump and tcpscope do");
    }
    // The capture kept 12 bytes of the 20-byte fixed TCP header. tshark
    // shows the fields it has; tcpscope counts the frame as malformed
    // (tcp_truncated) and, like the kernel program, prints no event without
    // a whole fixed header.
    if (file, frame) == ("tcp_header_heapoverflow.pcap", 1) && ours.is_none() {
        return Some("fixed TCP header cut by the capture: tcpscope reports tcp_truncated, no event");
    }
    None
}

/// Compares one frame; returns the differences.
fn compare(t: &BTreeMap<&str, String>, v: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut check = |name: &str, theirs: String, ours: String| {
        if theirs != ours {
            diffs.push(format!("{name}: tshark {theirs:?} tcpscope {ours:?}"));
        }
    };
    let s = |k: &str| match &v[k] {
        Value::Null => String::new(),
        Value::String(x) => x.clone(),
        x => x.to_string(),
    };
    let o = |k: &str| match &v["options"][k] {
        Value::Null => String::new(),
        x => x.to_string(),
    };
    // The innermost IP header is the one carrying TCP: tshark lists every
    // occurrence; tcpscope decodes no tunnels, so there is one.
    let src = if t["ip.src"].is_empty() { &t["ipv6.src"] } else { &t["ip.src"] };
    let dst = if t["ip.dst"].is_empty() { &t["ipv6.dst"] } else { &t["ip.dst"] };
    check("src", first(src).into(), s("src"));
    check("dst", first(dst).into(), s("dst"));
    check("sport", t["tcp.srcport"].clone(), s("sport"));
    check("dport", t["tcp.dstport"].clone(), s("dport"));
    check("seq", t["tcp.seq_raw"].clone(), s("seq"));
    check("ack", t["tcp.ack_raw"].clone(), s("ack"));
    check("hdr_len", t["tcp.hdr_len"].clone(), s("hdr_len"));
    check("flags", num(&t["tcp.flags"]), s("flags_raw"));
    check("window", t["tcp.window_size_value"].clone(), s("window"));
    check("checksum", num(&t["tcp.checksum"]), s("checksum"));
    check("urgent_ptr", t["tcp.urgent_pointer"].clone(), s("urgent_ptr"));
    if v.get("malformed").is_none() {
        check("payload_len", t["tcp.len"].clone(), s("payload_len"));
        check("mss", first(&t["tcp.options.mss_val"]).into(), o("mss"));
        check("wscale", first(&t["tcp.options.wscale.shift"]).into(), o("wscale"));
        check(
            "sack_permitted",
            (!t["tcp.options.sack_perm"].is_empty()).to_string(),
            (o("sack_permitted") == "true").to_string(),
        );
        let edges: Vec<String> = v["options"]["sack"]
            .as_array()
            .map(|a| a.iter().map(|b| b[0].to_string()).collect())
            .unwrap_or_default();
        check("sack_le", t["tcp.options.sack_le"].clone(), edges.join(","));
        let edges: Vec<String> = v["options"]["sack"]
            .as_array()
            .map(|a| a.iter().map(|b| b[1].to_string()).collect())
            .unwrap_or_default();
        check("sack_re", t["tcp.options.sack_re"].clone(), edges.join(","));
        check("ts_val", first(&t["tcp.options.timestamp.tsval"]).into(), o("ts_val"));
        check("ts_ecr", first(&t["tcp.options.timestamp.tsecr"]).into(), o("ts_ecr"));
    }
    diffs
}

/// Compares a whole file; returns (frames compared, explained, failures).
fn diff_file(file: &Path) -> (usize, Vec<String>, Vec<String>) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let theirs = tshark(file);
    let ours = tcpscope(file);
    let mut compared = 0;
    let mut explained_list = Vec::new();
    let mut failures = Vec::new();
    for (frame, t) in &theirs {
        let v = ours.get(frame);
        if let Some(why) = explained(&name, *frame, t, v) {
            explained_list.push(format!("{name}#{frame}: {why}"));
            continue;
        }
        match v {
            None => failures.push(format!("{name}#{frame}: tshark decodes TCP, tcpscope printed nothing")),
            Some(v) => {
                compared += 1;
                for d in compare(t, v) {
                    failures.push(format!("{name}#{frame}: {d}"));
                }
            }
        }
    }
    for frame in ours.keys().filter(|f| !theirs.contains_key(f)) {
        match explained(&name, *frame, &BTreeMap::new(), ours.get(frame)) {
            Some(why) => explained_list.push(format!("{name}#{frame}: {why}")),
            None => failures
                .push(format!("{name}#{frame}: tcpscope printed a packet tshark does not decode as TCP")),
        }
    }
    (compared, explained_list, failures)
}

#[test]
fn corpus_matches_tshark() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("../shared/corpus/tcpdump exists next to the project")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "corpus has {} files", files.len());
    let (mut compared, mut explained_all, mut failures) = (0, Vec::new(), Vec::new());
    for f in &files {
        let (c, e, fl) = diff_file(f);
        compared += c;
        explained_all.extend(e);
        failures.extend(fl);
    }
    eprintln!(
        "corpus: {} files, {compared} TCP packets compared field by field, {} explained:",
        files.len(),
        explained_all.len()
    );
    for e in &explained_all {
        eprintln!("  {e}");
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert!(compared >= 100, "only {compared} packets compared");
}

#[test]
fn live_capture_matches_tshark() {
    // A capture of real traffic between test hosts, in both directions,
    // with SACK and timestamps (tcpdump writes pcap, tshark pcapng: both).
    let hosts = TestHosts::new("diff").unwrap();
    for (tool, ext) in [("tshark", "pcapng"), ("tcpdump", "pcap")] {
        let file = std::env::temp_dir().join(format!("{}-{tool}.{ext}", hosts.server_ns));
        let mut cmd = TestHosts::command_in(&hosts.server_ns, tool);
        let ready = if tool == "tshark" {
            cmd.args(["-i", SERVER_IF, "-f", "tcp", "-w"]).arg(&file);
            "Capture started"
        } else {
            cmd.args(["-i", SERVER_IF, "-n", "-U", "-w"]).arg(&file).arg("tcp");
            "listening on"
        };
        let (mut cap, _) =
            tcpscope::testhost::ChildGuard::spawn_until_ready(cmd, ready, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{tool} starts: {e}"));
        exchange(&hosts, 200_000);
        std::thread::sleep(Duration::from_millis(300));
        cap.interrupt_and_wait(Duration::from_secs(20)).unwrap();
        eprintln!("{tool}: {} bytes captured", std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0));
        let (compared, explained, failures) = diff_file(&file);
        let _ = std::fs::remove_file(&file);
        eprintln!("{tool} capture: {compared} TCP packets compared, {} explained", explained.len());
        assert!(failures.is_empty(), "{tool}: {}", failures.join("\n"));
        assert!(compared >= 20, "{tool}: {compared} packets");
    }
}
