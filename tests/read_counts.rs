//! `tcpscope read` prints every matching packet of a capture: as many lines
//! as tshark finds TCP packets, for captures that end on, just before and
//! just after a batch boundary (the reader hands packets over in batches of
//! 2,048), a long one, a pcapng with two interfaces, and with --sample.

mod common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::tcpscope_bin;
use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use tcpscope::testpkt::{MAC_A, MAC_B, V4_DST, V4_SRC};

/// Packet `i` of a test capture: TCP, with one UDP packet in every 10 (so
/// that skipped packets are in the mix).
fn frame(i: u32) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(V4_SRC, V4_DST, 64);
    let mut out = Vec::new();
    if i % 10 == 9 {
        ip.udp(5353, 53).write(&mut out, &[0; 8]).unwrap();
    } else {
        ip.tcp(40000 + (i % 1000) as u16, 8080, i, 512).ack(1).write(&mut out, &[b'x'; 10]).unwrap();
    }
    out
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tcpscope-readcount-{}-{name}", std::process::id()))
}

/// A classic pcap of `n` packets.
fn write_pcap(n: u32, file: &Path) {
    let mut w = PcapWriter::with_header(
        std::fs::File::create(file).unwrap(),
        PcapHeader { datalink: DataLink::ETHERNET, ..Default::default() },
    )
    .unwrap();
    for i in 0..n {
        let f = frame(i);
        let p = PcapPacket::new(Duration::from_micros(u64::from(i)), f.len() as u32, &f);
        w.write_packet(&p).unwrap();
    }
}

/// A pcapng of `n` packets alternating, in runs of 700, between two
/// interfaces (each change of interface starts a new batch in the reader).
fn write_pcapng_two_interfaces(n: u32, file: &Path) {
    let mut w = PcapNgWriter::new(std::fs::File::create(file).unwrap()).unwrap();
    for name in ["eth0", "eth1"] {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 65535,
            options: vec![InterfaceDescriptionOption::IfName(Cow::Borrowed(name))],
        })
        .unwrap();
    }
    for i in 0..n {
        let f = frame(i);
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: (i / 700) % 2,
            timestamp: Duration::from_micros(u64::from(i)),
            original_len: f.len() as u32,
            data: Cow::Owned(f),
            options: vec![],
        })
        .unwrap();
    }
}

/// How many TCP packets tshark finds in `file`.
fn tshark_tcp_count(file: &Path) -> u64 {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-Y", "tcp", "-T", "fields", "-e", "frame.number"])
        .output()
        .expect("tshark runs (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// Lines `tcpscope read FILE ARGS` printed, and its summary line.
fn read_lines(file: &Path, args: &[&str]) -> (u64, String) {
    let out = Command::new(tcpscope_bin()).arg("read").arg(file).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    (lines, String::from_utf8_lossy(&out.stderr).trim().to_string())
}

fn check(file: &Path, args: &[&str], expected: u64) {
    let (lines, summary) = read_lines(file, args);
    assert_eq!(
        lines,
        expected,
        "{} {args:?}: printed {lines}, expected {expected}; {summary}",
        file.display()
    );
    assert!(summary.contains(&format!("(printed {expected},")), "{summary}");
}

#[test]
fn every_packet_is_printed_at_batch_boundaries() {
    for n in [2047u32, 2048, 2049, 2276, 100_000] {
        let file = temp(&format!("{n}.pcap"));
        write_pcap(n, &file);
        let tcp = tshark_tcp_count(&file);
        assert_eq!(tcp, u64::from(n - n / 10), "the capture holds what we wrote");
        check(&file, &[], tcp);
        check(&file, &["--json"], tcp);
        let _ = std::fs::remove_file(&file);
    }
}

#[test]
fn every_packet_of_a_two_interface_pcapng_is_printed() {
    let file = temp("two.pcapng");
    write_pcapng_two_interfaces(10_000, &file);
    let tcp = tshark_tcp_count(&file);
    check(&file, &["--json"], tcp);
    // Both interfaces reach the records: their index in JSON, their name
    // in text.
    let out = Command::new(tcpscope_bin()).arg("read").arg(&file).arg("--json").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for index in [0, 1] {
        let n = text.lines().filter(|l| l.contains(&format!("\"ifindex\":{index},"))).count();
        assert!(n > 4000, "interface {index}: {n} records");
    }
    let out = Command::new(tcpscope_bin()).arg("read").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["eth0", "eth1"] {
        let n = text.lines().filter(|l| l.contains(&format!(" {name} IP "))).count();
        assert!(n > 4000, "{name}: {n} records");
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn sampling_keeps_one_in_n_of_every_match() {
    let file = temp("sample.pcap");
    write_pcap(20_481, &file);
    let tcp = tshark_tcp_count(&file);
    // 1 of every 7 matching packets, the first included.
    check(&file, &["--sample", "7"], tcp.div_ceil(7));
    let _ = std::fs::remove_file(&file);
}
