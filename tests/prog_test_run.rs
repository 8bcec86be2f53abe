//! The real XDP and TC programs, fed crafted frames through
//! BPF_PROG_TEST_RUN: events and counters are checked against etherparse's
//! independent decoding of the same bytes, and every malformed case against
//! its reason. Needs root (CI runs as root).

mod common;

use common::Rng;

use std::net::IpAddr;

use etherparse::{PacketBuilder, SlicedPacket, TcpOptionElement};
use libbpf_rs::{ProgramInput, RingBufferBuilder};
use tcpscope::bpf::{self, counters::Counters, IngressSkel, LoadOptions};
use tcpscope::filter::EventFilter;
use tcpscope::model::{PacketRecord, TcpOptions};
use tcpscope::testpkt::{self, MAC_A, MAC_B, V4_DST, V4_SRC};
use tcpscope::view::ingress::decode_record;

const XDP_PASS: u32 = 2;
/// TCX_NEXT (-1): pass, and let the next program on the tcx chain run.
const TCX_NEXT: u32 = -1i32 as u32;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hook {
    Xdp,
    Tc,
}

struct Harness {
    skel: IngressSkel<'static>,
    snaplen: u32,
    /// Built once per harness, not per packet: the events' raw bytes.
    ring: libbpf_rs::RingBuffer<'static>,
    raw: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>,
}

struct RunResult {
    events: Vec<PacketRecord>,
    counters: Counters,
}

impl Harness {
    fn new(filter: EventFilter) -> Self {
        let cfg = filter.to_kernel(true).expect("valid filter");
        let skel = bpf::load_ingress(&LoadOptions::new(cfg)).expect("load ingress programs");
        let raw = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let handle = libbpf_rs::MapHandle::try_from(&skel.maps.events).unwrap();
        let mut b = RingBufferBuilder::new();
        let sink = raw.clone();
        b.add(&handle, move |d: &[u8]| {
            sink.borrow_mut().push(d.to_vec());
            0
        })
        .unwrap();
        let ring = b.build().unwrap();
        Harness { skel, snaplen: filter.snaplen, ring, raw }
    }

    /// Runs `frame` once through `hook`; returns the new events and the
    /// counters' change.
    fn run(&self, hook: Hook, frame: &[u8]) -> RunResult {
        self.try_run(hook, frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {hook:?} on {} bytes: {e}", frame.len()))
    }

    fn try_run(&self, hook: Hook, frame: &[u8]) -> Result<RunResult, libbpf_rs::Error> {
        let before = bpf::read_counters(&self.skel).unwrap();
        let prog = match hook {
            Hook::Xdp => &self.skel.progs.tcpscope_xdp,
            Hook::Tc => &self.skel.progs.tcpscope_tc,
        };
        let out = prog.test_run(ProgramInput { data_in: Some(frame), repeat: 1, ..Default::default() })?;
        let want = if hook == Hook::Xdp { XDP_PASS } else { TCX_NEXT };
        assert_eq!(out.return_value, want, "{hook:?} must fail open and pass every packet");
        self.ring.consume().unwrap();
        let events = std::mem::take(&mut *self.raw.borrow_mut())
            .iter()
            .map(|d| decode_record(d, 0, self.snaplen).expect("decodable event").packet("test").record())
            .collect();
        let after = bpf::read_counters(&self.skel).unwrap();
        Ok(RunResult { events, counters: delta(&after, &before) })
    }

    /// Runs on both hooks; asserts both produced the same events (but for
    /// the hook field) and returns XDP's.
    fn run_both(&self, frame: &[u8]) -> RunResult {
        let x = self.run(Hook::Xdp, frame);
        let t = self.run(Hook::Tc, frame);
        self.compare(frame, x, t)
    }

    /// As run_both, for frames the kernel's skb test harness may refuse:
    /// bpf_prog_test_run_skb() rejects (EINVAL) an IP ethertype whose IP
    /// header is not all there, so such frames only reach the XDP program.
    fn run_both_or_xdp(&self, frame: &[u8]) -> (RunResult, bool) {
        let x = self.run(Hook::Xdp, frame);
        match self.try_run(Hook::Tc, frame) {
            Ok(t) => (self.compare(frame, x, t), true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::InvalidInput => (x, false),
            Err(e) => panic!("TC test run: {e}"),
        }
    }

    fn compare(&self, frame: &[u8], x: RunResult, t: RunResult) -> RunResult {
        let strip = |v: &[PacketRecord]| {
            v.iter()
                .map(|r| PacketRecord {
                    hook: tcpscope::model::Hook::Pcap,
                    ifindex: 0,
                    ts_ns: 0,
                    ..r.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&x.events), strip(&t.events), "XDP and TC disagree on {frame:02x?}");
        assert_eq!(x.counters.0.malformed, t.counters.0.malformed);
        assert_eq!(x.counters.0.tcp_packets, t.counters.0.tcp_packets);
        x
    }
}

fn delta(a: &Counters, b: &Counters) -> Counters {
    let (a, b) = (&a.0, &b.0);
    let mut d = *a;
    d.packets -= b.packets;
    d.bytes -= b.bytes;
    d.tcp_packets -= b.tcp_packets;
    d.tcp_bytes -= b.tcp_bytes;
    d.non_tcp -= b.non_tcp;
    d.ip_fragments -= b.ip_fragments;
    for i in 0..d.flag.len() {
        d.flag[i] -= b.flag[i];
    }
    d.syn_no_ack -= b.syn_no_ack;
    d.syn_ack -= b.syn_ack;
    for i in 0..d.malformed.len() {
        d.malformed[i] -= b.malformed[i];
    }
    d.filtered_out -= b.filtered_out;
    d.sampled_out -= b.sampled_out;
    d.events -= b.events;
    d.events_lost -= b.events_lost;
    Counters(d)
}

/// What etherparse decodes from the same frame, in our record's terms.
struct Expected {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    vlan: Vec<u16>,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    hdr_len: u8,
    flags_raw: u16,
    window: u16,
    checksum: u16,
    urgent_ptr: u16,
    payload_len: u32,
    options: TcpOptions,
}

fn expected(frame: &[u8]) -> Expected {
    let p = SlicedPacket::from_ethernet(frame).expect("etherparse decodes the frame");
    let vlan = match &p.vlan {
        Some(etherparse::VlanSlice::SingleVlan(v)) => vec![v.vlan_identifier().value()],
        Some(etherparse::VlanSlice::DoubleVlan(d)) => {
            vec![d.outer().vlan_identifier().value(), d.inner().vlan_identifier().value()]
        }
        None => vec![],
    };
    let (src, dst, ttl) = match &p.net {
        Some(etherparse::NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            (IpAddr::from(h.source()), IpAddr::from(h.destination()), h.ttl())
        }
        Some(etherparse::NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            (IpAddr::from(h.source()), IpAddr::from(h.destination()), h.hop_limit())
        }
        _ => panic!("not IP"),
    };
    let Some(etherparse::TransportSlice::Tcp(t)) = &p.transport else { panic!("not TCP") };
    let mut options = TcpOptions::default();
    for o in t.options_iterator() {
        match o.expect("valid options") {
            TcpOptionElement::MaximumSegmentSize(m) => options.mss = Some(m),
            TcpOptionElement::WindowScale(w) => options.wscale = Some(w),
            TcpOptionElement::SelectiveAcknowledgementPermitted => options.sack_permitted = true,
            TcpOptionElement::SelectiveAcknowledgement(first, rest) => {
                options.sack.push([first.0, first.1]);
                options.sack.extend(rest.iter().flatten().map(|(l, r)| [*l, *r]));
            }
            TcpOptionElement::Timestamp(v, e) => {
                options.ts_val = Some(v);
                options.ts_ecr = Some(e);
            }
            TcpOptionElement::Noop => {}
        }
    }
    let raw = t.slice();
    Expected {
        src,
        dst,
        ttl,
        vlan,
        sport: t.source_port(),
        dport: t.destination_port(),
        seq: t.sequence_number(),
        ack: t.acknowledgment_number(),
        hdr_len: t.header_len() as u8,
        flags_raw: (u16::from(raw[12] & 0x0f) << 8) | u16::from(raw[13]),
        window: t.window_size(),
        checksum: t.checksum(),
        urgent_ptr: t.urgent_pointer(),
        payload_len: t.payload().len() as u32,
        options,
    }
}

fn assert_matches_etherparse(rec: &PacketRecord, frame: &[u8]) {
    let e = expected(frame);
    assert_eq!((rec.src, rec.dst, rec.ttl), (e.src, e.dst, e.ttl));
    assert_eq!(rec.vlan, e.vlan);
    assert_eq!((rec.sport, rec.dport, rec.seq, rec.ack), (e.sport, e.dport, e.seq, e.ack));
    assert_eq!((rec.hdr_len, rec.flags_raw, rec.window), (e.hdr_len, e.flags_raw, e.window));
    assert_eq!((rec.checksum, rec.urgent_ptr, rec.payload_len), (e.checksum, e.urgent_ptr, e.payload_len));
    assert_eq!(rec.options, e.options);
    assert_eq!(rec.malformed, None);
}

fn all_frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("syn_v4", testpkt::syn_v4()),
        ("syn_v4_windows", testpkt::syn_v4_windows_options()),
        ("ack_v4_padded", testpkt::pad_to_min_frame(testpkt::ack_v4())),
        ("syn_v6", testpkt::syn_v6()),
        ("syn_vlan", testpkt::syn_vlan()),
        (
            "data_ts",
            data_v4(
                &[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(7, 9)],
                b"hello",
            ),
        ),
        (
            "sack_blocks",
            data_v4(
                &[
                    TcpOptionElement::Noop,
                    TcpOptionElement::Noop,
                    TcpOptionElement::SelectiveAcknowledgement(
                        (100, 200),
                        [Some((300, 400)), Some((500, 600)), None],
                    ),
                ],
                b"",
            ),
        ),
        ("qinq", qinq_syn()),
    ]
}

fn data_v4(opts: &[TcpOptionElement], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_SRC, V4_DST, 61)
        .tcp(40000, 80, 0xfffffff0, 501)
        .ack(77)
        .psh()
        .options(opts)
        .unwrap();
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn qinq_syn() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(etherparse::VlanId::try_new(10).unwrap(), etherparse::VlanId::try_new(20).unwrap())
        .ipv4(V4_SRC, V4_DST, 64)
        .tcp(1, 2, 3, 4)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

#[test]
fn well_formed_packets_match_etherparse_on_both_hooks() {
    let h = Harness::new(EventFilter::default());
    for (name, frame) in all_frames() {
        let r = h.run_both(&frame);
        assert_eq!(r.events.len(), 1, "{name}: one event");
        assert_matches_etherparse(&r.events[0], &frame);
        assert_eq!(r.counters.0.tcp_packets, 1, "{name}");
        assert_eq!(r.counters.0.packets, 1, "{name}");
        assert_eq!(r.counters.0.bytes, frame.len() as u64, "{name}");
        assert_eq!(r.counters.0.events, 1, "{name}");
    }
}

#[test]
fn linux_syn_fields_are_exact() {
    let h = Harness::new(EventFilter::default());
    let frame = testpkt::syn_v4();
    let r = h.run(Hook::Xdp, &frame).events.remove(0);
    assert_eq!(r.src.to_string(), "198.18.0.1");
    assert_eq!(r.dst.to_string(), "198.18.0.2");
    assert_eq!((r.sport, r.dport, r.seq, r.ack), (40000, 80, 1000, 0));
    assert_eq!(r.flags, vec!["SYN"]);
    assert_eq!(r.hdr_len, 40);
    assert_eq!(r.options.mss, Some(1460));
    assert!(r.options.sack_permitted);
    assert_eq!((r.options.ts_val, r.options.ts_ecr), (Some(0x0102_0304), Some(0)));
    assert_eq!(r.options.wscale, Some(7));
    assert_eq!(r.ip_version, 4);
    assert_eq!(r.ip_len, (frame.len() - 14) as u16);
    assert_eq!(r.ip_id, Some(0));
    assert_eq!(r.df, Some(true)); // etherparse sets DF by default
    assert!(!r.frag);
    assert_eq!(r.hook, tcpscope::model::Hook::Xdp);
    assert!(r.payload_hex.is_none(), "no payload without --snaplen");
}

#[test]
fn fast_and_general_option_parsers_agree() {
    // The same options in the Linux order (fast path) and in another order
    // (general parser) must give the same decoded options.
    let h = Harness::new(EventFilter::default());
    let linux = testpkt::syn_v4();
    let reordered = {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(V4_SRC, V4_DST, 64)
            .tcp(40000, 80, 1000, 64240)
            .syn()
            .options(&[
                TcpOptionElement::Timestamp(0x0102_0304, 0),
                TcpOptionElement::WindowScale(7),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::Noop,
            ])
            .unwrap();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    let a = h.run_both(&linux).events.remove(0);
    let b = h.run_both(&reordered).events.remove(0);
    assert_eq!(a.options, b.options);
    // And the 12-byte NOP NOP TS layout against TS NOP NOP.
    let fast =
        data_v4(&[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(5, 6)], b"");
    let slow =
        data_v4(&[TcpOptionElement::Timestamp(5, 6), TcpOptionElement::Noop, TcpOptionElement::Noop], b"");
    assert_eq!(h.run_both(&fast).events[0].options, h.run_both(&slow).events[0].options);
}

/// Replaces the TCP options of a well-formed IPv4 frame (from
/// `data_v4`, with 12 option bytes) by `opts`, fixing the lengths.
fn with_raw_options(opts: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let base = data_v4(&[], b"");
    let mut f = base[..14 + 20 + 20].to_vec();
    f.extend_from_slice(opts);
    let tcp = 14 + 20;
    f[tcp + 12] = (((20 + opts.len()) / 4) as u8) << 4 | (f[tcp + 12] & 0x0f);
    let tot = (20 + 20 + opts.len()) as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f
}

#[test]
fn other_option_kinds_are_recorded() {
    let h = Harness::new(EventFilter::default());
    // MD5 (19, 18 bytes), TFO cookie (34, 10), experimental TFO (254, 6),
    // MPTCP (30, 4), then EOL padding.
    let mut o = vec![19, 18];
    o.extend_from_slice(&[0xaa; 16]);
    o.extend_from_slice(&[34, 10, 1, 2, 3, 4, 5, 6, 7, 8]);
    o.extend_from_slice(&[254, 6, 0xf9, 0x89, 0, 0]);
    o.extend_from_slice(&[30, 4, 0x00, 0x81]);
    while o.len() % 4 != 0 {
        o.push(0);
    }
    let r = h.run_both(&with_raw_options(&o)).events.remove(0);
    assert_eq!(r.options.other, vec![19, 30, 34, 254]);
    assert_eq!(r.malformed, None);
}

/// (name, frame, expected malformed reason, expect an event)
fn malformed_cases() -> Vec<(&'static str, Vec<u8>, &'static str, bool)> {
    let syn = testpkt::syn_v4();
    let syn6 = testpkt::syn_v6();
    let mut cases = Vec::new();

    let mut f = syn[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00, 0x00]); // VLAN ethertype, 1 byte of tag
    cases.push(("vlan_truncated", f, "vlan_truncated", false));

    let mut f = syn[..12].to_vec();
    for _ in 0..3 {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    }
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&syn[14..]);
    cases.push(("three_vlan_tags", f, "vlan_too_deep", false));

    cases.push(("ipv4_truncated", syn[..14 + 12].to_vec(), "ipv4_truncated", false));

    let mut f = syn.clone();
    f[14] = 0x65; // version 6 under ethertype IPv4
    cases.push(("ipv4_bad_version", f, "ipv4_bad_version", false));

    let mut f = syn.clone();
    f[14] = 0x44; // IHL 4
    cases.push(("ipv4_ihl_4", f, "ipv4_bad_ihl", false));

    let mut f = syn.clone();
    f[14] = 0x4f; // IHL 15: 60 bytes of IPv4 header, but the frame ends 40 bytes in
    f.truncate(14 + 40);
    cases.push(("ipv4_options_past_end", f, "ipv4_truncated", false));

    let mut f = syn.clone();
    f[16..18].copy_from_slice(&12u16.to_be_bytes()); // total length < header
    cases.push(("ipv4_total_len_short", f, "ipv4_bad_total_len", false));

    cases.push(("ipv6_truncated", syn6[..14 + 30].to_vec(), "ipv6_truncated", false));

    let mut f = syn6.clone();
    f[14] = 0x45;
    cases.push(("ipv6_bad_version", f, "ipv6_bad_version", false));

    // Hop-by-hop header claiming 8*(1+10) bytes, more than the payload.
    let f = insert_v6_ext(&syn6, &[(0, vec![6, 10, 0, 0, 0, 0, 0, 0])]);
    cases.push(("ipv6_ext_truncated", f, "ipv6_ext_truncated", false));

    let nine: Vec<(u8, Vec<u8>)> = (0..9).map(|_| (60u8, vec![0, 0, 1, 4, 0, 0, 0, 0])).collect();
    cases.push(("ipv6_nine_ext", insert_v6_ext(&syn6, &nine), "ipv6_ext_too_many", false));

    cases.push(("tcp_truncated", syn[..14 + 20 + 12].to_vec(), "tcp_truncated", false));

    let mut f = syn.clone();
    f[14 + 20 + 12] = 0x40; // data offset 4
    cases.push(("tcp_doff_4", f, "tcp_bad_doff", true));

    let mut f = syn.clone();
    f[14 + 20 + 12] = 0xf0; // data offset 15 (60 bytes) but IP length holds 40
    cases.push(("tcp_doff_past_ip_len", f, "tcp_bad_ip_len", true));

    let mut f = syn.clone();
    f[14 + 20 + 12] = 0xf0; // data offset 15, IP length agrees, frame cut short
    let tot = (20 + 60) as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    cases.push(("tcp_hdr_past_frame", f, "tcp_hdr_truncated", true));

    cases.push(("opt_len_1", with_raw_options(&[99, 1, 0, 0]), "tcp_opt_bad_len", true));
    cases.push(("opt_len_0", with_raw_options(&[1, 1, 99, 0]), "tcp_opt_bad_len", true));
    cases.push(("opt_overrun", with_raw_options(&[99, 30, 0, 0, 0, 0, 0, 0]), "tcp_opt_overrun", true));
    cases.push(("opt_no_len_byte", with_raw_options(&[1, 1, 1, 99]), "tcp_opt_overrun", true));
    cases.push(("mss_len_5", with_raw_options(&[2, 5, 5, 180, 0, 0, 0, 0]), "tcp_opt_bad_size", true));
    cases.push(("ts_len_8", with_raw_options(&[8, 8, 0, 0, 0, 0, 0, 0]), "tcp_opt_bad_size", true));
    cases.push((
        "sack_len_9",
        with_raw_options(&[5, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        "tcp_opt_bad_size",
        true,
    ));
    cases
}

/// Inserts IPv6 extension headers (next-header type, bytes) between the
/// IPv6 header of an Ethernet/IPv6/TCP frame and its TCP header.
fn insert_v6_ext(frame: &[u8], exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = frame[..14 + 40].to_vec();
    let upper = frame[14 + 6];
    let mut ext_bytes = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = exts.get(i + 1).map_or(upper, |(t, _)| *t); // each one's next header
        ext_bytes.extend_from_slice(&b);
    }
    out[14 + 6] = exts[0].0;
    let plen = u16::from_be_bytes([frame[18], frame[19]]) as usize + ext_bytes.len();
    out[18..20].copy_from_slice(&(plen as u16).to_be_bytes());
    out.extend_from_slice(&ext_bytes);
    out.extend_from_slice(&frame[14 + 40..]);
    out
}

#[test]
fn malformed_packets_are_counted_by_reason_and_passed() {
    let h = Harness::new(EventFilter::default());
    let mut xdp_only = Vec::new();
    for (name, frame, reason, event) in malformed_cases() {
        let (r, both) = h.run_both_or_xdp(&frame);
        if !both {
            xdp_only.push(name);
        }
        let by_reason = r.counters.malformed_by_reason();
        assert_eq!(by_reason, vec![(reason, 1)], "{name}: counters {by_reason:?}");
        assert_eq!(r.counters.0.packets, 1, "{name}");
        if event {
            assert_eq!(r.events.len(), 1, "{name}: a malformed TCP header still yields its event");
            assert_eq!(r.events[0].malformed, Some(reason), "{name}");
            assert_eq!((r.events[0].sport, r.events[0].dport), (40000, 80), "{name}");
        } else {
            assert!(r.events.is_empty(), "{name}: no ports, no event");
        }
    }
    // Only frames with a cut-short IP header may skip the TC run.
    assert_eq!(xdp_only, ["ipv4_truncated", "ipv6_truncated"], "frames the skb harness refused");
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let h = Harness::new(EventFilter::default());
    let syn6 = testpkt::syn_v6();
    let exts = vec![
        (0u8, vec![0, 0, 1, 4, 0, 0, 0, 0]),  // hop-by-hop, PadN
        (43u8, vec![0, 0, 0, 0, 0, 0, 0, 0]), // routing, 0 segments left
        (60u8, vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // dest opts, 16 bytes
        (44u8, vec![0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]), // fragment: offset 0, M=1
    ];
    let f = insert_v6_ext(&syn6, &exts);
    let r = h.run_both(&f).events.remove(0);
    assert_eq!((r.sport, r.dport, r.seq), (40000, 443, 2000));
    assert_eq!(r.options.mss, Some(1460));
    assert!(r.frag, "first fragment is flagged");
    assert_eq!(r.ip_id, Some(0xdead_beef));
    assert_eq!(r.payload_len, 0);
}

#[test]
fn non_first_fragments_are_counted_not_parsed() {
    let h = Harness::new(EventFilter::default());
    let mut f = testpkt::syn_v4();
    f[20..22].copy_from_slice(&0x2005u16.to_be_bytes()); // MF, offset 5*8
    let r = h.run_both(&f);
    assert!(r.events.is_empty());
    assert_eq!((r.counters.0.ip_fragments, r.counters.0.tcp_packets), (1, 0));

    let mut f = testpkt::syn_v4();
    f[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // first fragment
    let r = h.run_both(&f);
    assert_eq!(r.events.len(), 1);
    assert!(r.events[0].frag);

    let f6 = insert_v6_ext(&testpkt::syn_v6(), &[(44u8, vec![0, 0, 0, 0x28, 0, 0, 0, 9])]);
    let r = h.run_both(&f6);
    assert!(r.events.is_empty());
    assert_eq!(r.counters.0.ip_fragments, 1);
}

#[test]
fn counters_count_flags_and_non_tcp() {
    let h = Harness::new(EventFilter::default());
    let udp = h.run_both(&testpkt::udp_v4());
    assert_eq!((udp.counters.0.non_tcp, udp.counters.0.tcp_packets, udp.events.len()), (1, 0, 0));

    let mut synack = testpkt::syn_v4();
    synack[14 + 20 + 13] = 0x12;
    let r = h.run(Hook::Xdp, &synack);
    assert_eq!((r.counters.0.syn_ack, r.counters.0.syn_no_ack), (1, 0));
    assert_eq!(r.counters.0.flag[1], 1); // SYN
    assert_eq!(r.counters.0.flag[4], 1); // ACK

    let mut all = testpkt::syn_v4();
    all[14 + 20 + 12] |= 0x01; // AE
    all[14 + 20 + 13] = 0xff;
    let r = h.run(Hook::Tc, &all);
    assert_eq!(r.counters.0.flag, [1; 9]);
    assert_eq!(r.events[0].flags, tcpscope::names::FLAG_NAMES.to_vec());
    assert_eq!(r.events[0].flags_raw, 0x1ff);
}

#[test]
fn kernel_filters_select_events() {
    let syn = testpkt::syn_v4(); // 198.18.0.1:40000 -> 198.18.0.2:80, SYN
    let syn6 = testpkt::syn_v6(); // 2001:db8::1:40000 -> 2001:db8::2:443
    let ack = testpkt::ack_v4();
    let cases: Vec<(EventFilter, [bool; 3])> = vec![
        (EventFilter { ports: vec![80], ..Default::default() }, [true, false, true]),
        (EventFilter { ports: vec![40000], ..Default::default() }, [true, true, true]),
        (EventFilter { dports: vec![443, 8443], ..Default::default() }, [false, true, false]),
        (EventFilter { sports: vec![80], ..Default::default() }, [false, false, false]),
        (
            EventFilter { src: vec!["198.18.0.0/31".parse().unwrap()], ..Default::default() },
            [true, false, true],
        ),
        (
            EventFilter { src: vec!["198.18.0.2/32".parse().unwrap()], ..Default::default() },
            [false, false, false],
        ),
        (
            EventFilter { dst: vec!["2001:db8::/32".parse().unwrap()], ..Default::default() },
            [false, true, false],
        ),
        (
            EventFilter {
                src: vec!["2001:db8::1/128".parse().unwrap(), "198.18.0.1".parse().unwrap()],
                ..Default::default()
            },
            [true, true, true],
        ),
        (EventFilter { flags: "SYN".parse().unwrap(), ..Default::default() }, [true, true, false]),
        (EventFilter { flags: "ACK,!SYN".parse().unwrap(), ..Default::default() }, [false, false, true]),
        (EventFilter { src: vec!["0.0.0.0/0".parse().unwrap()], ..Default::default() }, [true, false, true]),
    ];
    for (filter, want) in cases {
        let h = Harness::new(filter.clone());
        for (frame, want) in [&syn, &syn6, &ack].into_iter().zip(want) {
            let r = h.run_both(frame);
            assert_eq!(r.events.len(), usize::from(want), "filter {filter:?} on {frame:02x?}");
            assert_eq!(r.counters.0.filtered_out, u64::from(!want));
            // The user-space twin of the filter agrees.
            let e = expected(frame);
            assert_eq!(filter.matches(e.sport, e.dport, e.src, e.dst, e.flags_raw), want);
        }
    }
}

#[test]
fn sampling_keeps_one_in_n() {
    let h = Harness::new(EventFilter { sample_every: 3, ..Default::default() });
    let mut events = 0;
    let mut sampled_out = 0;
    for _ in 0..9 {
        let r = h.run(Hook::Xdp, &testpkt::syn_v4());
        events += r.events.len();
        sampled_out += r.counters.0.sampled_out;
    }
    assert_eq!((events, sampled_out), (3, 6));
}

#[test]
fn snaplen_copies_payload_but_never_padding() {
    let h = Harness::new(EventFilter { snaplen: 5, ..Default::default() });
    let r = h.run_both(&data_v4(&[], b"hello world")).events.remove(0);
    assert_eq!(r.payload_hex.as_deref(), Some("68656c6c6f"));
    assert_eq!(r.payload_len, 11);

    let h = Harness::new(EventFilter { snaplen: 64, ..Default::default() });
    // 2 payload bytes in a frame padded to 60: the padding is not payload.
    let padded = testpkt::pad_to_min_frame(data_v4(&[], b"hi"));
    assert!(padded.len() > 14 + 20 + 20 + 2);
    let r = h.run_both(&padded).events.remove(0);
    assert_eq!(r.payload_hex.as_deref(), Some("6869"));
    assert_eq!(r.payload_len, 2);

    let none = Harness::new(EventFilter::default());
    assert!(none.run_both(&data_v4(&[], b"secret")).events[0].payload_hex.is_none());
}

#[test]
fn full_ring_buffer_counts_lost_events() {
    // The smallest ring (one page) fills after a few events; the rest must
    // be counted as lost, never silently dropped.
    let mut opts = LoadOptions::new(EventFilter::default().to_kernel(true).unwrap());
    opts.ringbuf_bytes = 4096;
    let skel = bpf::load_ingress(&opts).unwrap();
    let frame = testpkt::syn_v4();
    let n = 200;
    skel.progs
        .tcpscope_xdp
        .test_run(ProgramInput { data_in: Some(&frame), repeat: n, ..Default::default() })
        .unwrap();
    let c = bpf::read_counters(&skel).unwrap();
    assert!(c.0.events_lost > 0, "a 4 KiB ring cannot hold {n} events");
    assert_eq!(c.0.events + c.0.events_lost, u64::from(n));
}

/// The kernel's lat_slot (bpf/lat_slot_kern.h, run through a syscall
/// program of the baseline object) puts each value in the bucket whose
/// bounds, as user space computes them for `latency`, hold it.
#[test]
fn kernel_lat_slot_buckets_hold_their_values() {
    use tcpscope::histogram::slot_bounds;
    let mut values: Vec<u64> = (0..16).collect();
    for k in [4, 5, 6, 7, 9, 10, 13, 17, 20, 24, 30, 32, 33, 40, 47, 52, 60, 63] {
        values.extend([(1u64 << k) - 1, 1u64 << k]);
    }
    values.extend([(1u64 << 63) + 12345, u64::MAX, 999_999_999, 1_000_000_007, 123_456_789_012]);
    values.resize(64, 3_000_000);
    let mut skel = tcpscope::bpf::load_baseline(true).expect("load the baseline object");
    skel.maps.bss_data.as_deref_mut().expect("bss").lat_slot_in.copy_from_slice(&values);
    skel.progs.baseline_lat_slot.test_run(ProgramInput::default()).expect("run lat_slot");
    let out = skel.maps.bss_data.as_deref().expect("bss").lat_slot_out;
    for (v, s) in values.iter().zip(out) {
        let (lo, hi) = slot_bounds(s as usize);
        // The last bucket's upper bound overflows for u64::MAX only.
        assert!(lo <= *v && (*v < hi || hi < lo), "value {v}: kernel slot {s} holds [{lo}, {hi})");
    }
    // Distinct values in distinct powers of two land in distinct buckets.
    assert_ne!(out[16], out[18]);
}

/// The verifier takes every combination of the ingress programs' features
/// that the commands ask for, at both hooks, and each passes a SYN and a
/// data segment. Without a guard (watch, stats, l7, the counting agent):
/// events (every filter list full, 1,024 payload bytes, sampling) or none,
/// times L7 hints or none, times top sources or none. With a guard (guard,
/// the guarding agent; no events): lean or inspecting with every detector,
/// times top sources or none, and inspecting with L7 hints (the guarding
/// agent's). A feature that adds paths to the programs can push a
/// combination past the verifier's limits (it
/// did: E2BIG for the inspecting guard, the stack for `watch --l7`); this
/// finds it before a user does.
///
/// No command combines a guard with events, and the verifier does not take
/// that (E2BIG: the guard's paths times the events'; the events path keeps
/// a packet pointer live, as the L7 hand-over did until it computed the
/// offset from numbers).
#[test]
fn every_combination_of_features_loads_and_passes_packets() {
    use tcpscope::bpf::types::detect_config;
    let full = EventFilter {
        ports: (1..=8).collect(),
        sports: (1..=8).collect(),
        dports: (1..=8).collect(),
        src: (0..8).map(|i| format!("198.18.{i}.0/24").parse().unwrap()).collect(),
        dst: (0..8).map(|i| format!("2001:db8:{i}::/48").parse().unwrap()).collect(),
        sample_every: 2,
        snaplen: 1024,
        ..Default::default()
    };
    let frames = [testpkt::syn_v4(), testpkt::data_v4(443, 1001, &[0x16; 600])];
    let mut loaded = 0;
    let mut combos = Vec::new();
    for events in [false, true] {
        for l7 in [false, true] {
            for top in [false, true] {
                combos.push((events, l7, "none", top));
            }
        }
    }
    for guard in ["lean", "inspect"] {
        for top in [false, true] {
            combos.push((false, false, guard, top));
        }
    }
    // The agent's guard with L7 hints (it inspects).
    for top in [false, true] {
        combos.push((false, true, "inspect", top));
    }
    for (events, l7, guard, top) in combos {
        let mut cfg = if events {
            full.to_kernel(true).unwrap()
        } else {
            EventFilter::default().to_kernel(false).unwrap()
        };
        cfg.l7 = u8::from(l7);
        cfg.top_sources = u8::from(top);
        let mut opts = LoadOptions::new(cfg);
        if guard != "none" {
            opts.config.policy = 1;
            opts.config.lean = u8::from(guard == "lean");
            opts.config.drop_unparsable = 1;
            opts.detect = detect_config {
                enabled: 1,
                scan_ports: 20,
                scan_window_ns: 1_000_000_000,
                syn_rate: 100,
                syn_burst: 200,
                alert_interval_ns: 1_000_000_000,
                mitigate_ttl_ns: 60_000_000_000,
                conn_limit: 10,
                enforce_conn_limit: 1,
                ..Default::default()
            };
        }
        let what = format!("events {events}, l7 {l7}, guard {guard}, top sources {top}");
        let skel = bpf::load_ingress(&opts).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        for frame in &frames {
            let input = || ProgramInput { data_in: Some(frame), ..Default::default() };
            let xdp = skel.progs.tcpscope_xdp.test_run(input()).unwrap().return_value;
            let tc = skel.progs.tcpscope_tc.test_run(input()).unwrap().return_value;
            assert_eq!((xdp, tc), (XDP_PASS, TCX_NEXT), "{what}");
        }
        loaded += 1;
    }
    assert_eq!(loaded, 14);
}

const XDP_DROP: u32 = 1;
const TC_ACT_SHOT: u32 = 2;

/// A guard's programs with L7 rules, fed crafted flows: one per client
/// port, to `port`, where a listener of this process waits (the guard
/// holds only flows a socket would take).
struct L7Guard {
    skel: IngressSkel<'static>,
    port: u16,
    _listener: std::net::TcpListener,
    alerts: libbpf_rs::RingBuffer<'static>,
    seen: std::rc::Rc<std::cell::RefCell<Vec<tcpscope::bpf::types::alert_event>>>,
}

impl L7Guard {
    fn new(rules: &[(tcpscope::policy::NameKind, &str)], undecided_pass: bool) -> Self {
        use libbpf_rs::{MapCore, MapFlags};
        use tcpscope::bpf::types;
        use tcpscope::policy::{rule_key, NameRule, Rule};
        // On [::]: IPv4 and IPv6 clients alike.
        let listener = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut opts = LoadOptions::new(EventFilter::default().to_kernel(false).unwrap());
        opts.config.policy = 1;
        opts.config.lean = 1;
        opts.config.drop_unparsable = 1;
        opts.detect =
            types::detect_config { l7_undecided_pass: u8::from(undecided_pass), ..Default::default() };
        let skel = bpf::load_ingress(&opts).unwrap();
        let mut used = types::policy_used::default();
        for (kind, name) in rules {
            let r = Rule::on_name(NameRule::parse(*kind, name).unwrap(), None);
            let (map, key) = rule_key(&r);
            assert_eq!(map, "l7_rules");
            skel.maps.l7_rules.update(&key, &[0u8; 16], MapFlags::ANY).unwrap();
            used.l7[0] = 1;
            used.l7[*kind as usize + 1] = 1;
        }
        // SAFETY: bytes only.
        let used_bytes = unsafe {
            std::slice::from_raw_parts(
                (&used as *const types::policy_used).cast::<u8>(),
                std::mem::size_of_val(&used),
            )
        };
        skel.maps.policy_used.update(&0u32.to_ne_bytes(), used_bytes, MapFlags::ANY).unwrap();
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = seen.clone();
        let handle = libbpf_rs::MapHandle::try_from(&skel.maps.alerts).unwrap();
        let mut b = RingBufferBuilder::new();
        b.add(&handle, move |d: &[u8]| {
            let mut a = types::alert_event::default();
            let n = d.len().min(std::mem::size_of_val(&a));
            plain::copy_from_bytes(&mut a, &d[..n]).unwrap();
            sink.borrow_mut().push(a);
            0
        })
        .unwrap();
        let alerts = b.build().unwrap();
        L7Guard { skel, port, _listener: listener, alerts, seen }
    }

    /// One segment of the flow from `sport`: true if the guard passed it.
    fn pass(&self, hook: Hook, sport: u16, seq: u32, syn: bool, payload: &[u8]) -> bool {
        let b =
            PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(V4_SRC, V4_DST, 64).tcp(sport, self.port, seq, 502);
        let b = if syn { b.syn() } else { b.ack(7001).psh() };
        let mut frame = Vec::new();
        b.write(&mut frame, payload).unwrap();
        let prog = match hook {
            Hook::Xdp => &self.skel.progs.tcpscope_xdp,
            Hook::Tc => &self.skel.progs.tcpscope_tc,
        };
        let r =
            prog.test_run(ProgramInput { data_in: Some(&frame), ..Default::default() }).unwrap().return_value;
        match (hook, r) {
            (Hook::Xdp, XDP_PASS) | (Hook::Tc, TCX_NEXT) => true,
            (Hook::Xdp, XDP_DROP) | (Hook::Tc, TC_ACT_SHOT) => false,
            _ => panic!("{hook:?} returned {r}"),
        }
    }

    /// As `pass`, over IPv6 (2001:db8::1 to 2001:db8::2).
    fn pass6(&self, sport: u16, seq: u32, syn: bool, payload: &[u8]) -> bool {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(testpkt::V6_SRC, testpkt::V6_DST, 64)
            .tcp(sport, self.port, seq, 502);
        let b = if syn { b.syn() } else { b.ack(7001).psh() };
        let mut frame = Vec::new();
        b.write(&mut frame, payload).unwrap();
        let r = self
            .skel
            .progs
            .tcpscope_xdp
            .test_run(ProgramInput { data_in: Some(&frame), ..Default::default() });
        match r.unwrap().return_value {
            XDP_PASS => true,
            XDP_DROP => false,
            r => panic!("XDP returned {r}"),
        }
    }

    /// A flow: its SYN (ISN 1000), then `parts` as (stream offset, bytes);
    /// the verdict of each part.
    fn flow(&self, hook: Hook, sport: u16, parts: &[(usize, &[u8])]) -> Vec<bool> {
        assert!(self.pass(hook, sport, 1000, true, &[]), "the SYN passes");
        parts.iter().map(|(at, bytes)| self.pass(hook, sport, 1001 + *at as u32, false, bytes)).collect()
    }

    fn dropped(&self, reason: &str) -> u64 {
        bpf::read_counters(&self.skel)
            .unwrap()
            .guard_dropped_by_reason()
            .into_iter()
            .find(|(r, _)| *r == reason)
            .unwrap()
            .1
    }

    fn alerts(&self) -> Vec<tcpscope::bpf::types::alert_event> {
        self.alerts.consume().unwrap();
        std::mem::take(&mut *self.seen.borrow_mut())
    }

    fn hits(&self, kind: tcpscope::policy::NameKind, name: &str) -> u64 {
        use libbpf_rs::{MapCore, MapFlags};
        use tcpscope::policy::{rule_key, NameRule, Rule};
        let (_, key) = rule_key(&Rule::on_name(NameRule::parse(kind, name).unwrap(), None));
        let v = self.skel.maps.l7_rules.lookup(&key, MapFlags::ANY).unwrap().unwrap();
        u64::from_ne_bytes(v[..8].try_into().unwrap())
    }
}

/// The rules of the L7 guard tests: two server names (one a wildcard), a
/// host and a method.
const RULES: [(tcpscope::policy::NameKind, &str); 4] = [
    (tcpscope::policy::NameKind::Sni, "blocked.example"),
    (tcpscope::policy::NameKind::Sni, "*.evil.example"),
    (tcpscope::policy::NameKind::Host, "blocked.example"),
    (tcpscope::policy::NameKind::HttpMethod, "DELETE"),
];

/// `bytes` in segments of `size`, each with its stream offset.
fn segments(bytes: &[u8], size: usize) -> Vec<(usize, &[u8])> {
    bytes.chunks(size).enumerate().map(|(i, c)| (i * size, c)).collect()
}

#[test]
fn l7_rules_drop_the_completing_segment_and_the_rest_of_the_flow() {
    use tcpscope::policy::NameKind::*;
    let g = L7Guard::new(&RULES, false);
    for (i, hook) in [Hook::Xdp, Hook::Tc].into_iter().enumerate() {
        let sport = |n: u16| 41000 + 100 * i as u16 + n;
        // A post-quantum ClientHello (1,718 bytes) in 3 segments: the last,
        // which completes it, drops, and so does everything after it.
        let hello = testpkt::client_hello("blocked.example", true);
        let parts = segments(&hello, 600);
        assert_eq!(g.flow(hook, sport(1), &parts), [true, true, false], "{hook:?}");
        assert!(!g.pass(hook, sport(1), 1001 + hello.len() as u32, false, b""), "a later ACK drops");
        assert!(!g.pass(hook, sport(1), 1001 + 1200, false, parts[2].1), "the last segment again drops");
        // In 18 segments (a small MSS), and the name's case does not matter.
        let upper = testpkt::client_hello("BLOCKED.example", true);
        let v = g.flow(hook, sport(2), &segments(&upper, 100));
        assert_eq!((v.iter().filter(|p| **p).count(), v.last()), (v.len() - 1, Some(&false)), "{hook:?}");
        // Out of order: the segment past the hole drops (the client sends
        // it again), then the stream completes in order and drops.
        assert!(g.pass(hook, sport(3), 1000, true, &[]));
        assert!(!g.pass(hook, sport(3), 1001 + 600, false, parts[1].1), "past a hole");
        assert!(g.pass(hook, sport(3), 1001, false, parts[0].1));
        assert!(g.pass(hook, sport(3), 1001 + 600, false, parts[1].1));
        assert!(!g.pass(hook, sport(3), 1001 + 1200, false, parts[2].1));
        // Another name passes, all of it, its retransmissions too; a copy
        // of its first segment with other bytes drops the flow.
        let ok = testpkt::client_hello("ok.example", true);
        let okp = segments(&ok, 600);
        assert_eq!(g.flow(hook, sport(4), &okp), [true, true, true]);
        assert!(g.pass(hook, sport(4), 1001, false, okp[0].1), "the same bytes again pass");
        let mut forged = okp[0].1.to_vec();
        forged[100] ^= 0xff;
        assert!(!g.pass(hook, sport(4), 1001, false, &forged), "changed bytes drop");
        assert!(!g.pass(hook, sport(4), 1001 + ok.len() as u32, false, b"later"), "and the rest of the flow");
        // A first copy the server may never take (a bad checksum, an old
        // timestamp) cannot name another host: the real one differs.
        let decoy = testpkt::client_hello("decoy.example", false);
        let real = testpkt::client_hello("blocked.example", false);
        assert_eq!(decoy.len() + 2, real.len());
        assert_eq!(g.flow(hook, sport(5), &[(0, &decoy[..150])]), [true]);
        assert!(!g.pass(hook, sport(5), 1001, false, &real), "the real hello over the decoy's bytes");
        // The wildcard: names under evil.example, not evil.example itself.
        for (n, name, passes) in
            [(6, "a.b.evil.example", false), (7, "evil.example", true), (8, "notevil.example", true)]
        {
            let h = testpkt::client_hello(name, false);
            assert_eq!(g.flow(hook, sport(n), &[(0, &h)]), [passes], "{name}");
        }
        // HTTP/1: Host (any case, with a port), a second Host header, an
        // absolute-form target, the method; and a request that passes.
        for (n, req, passes) in [
            (10, &b"GET / HTTP/1.1\r\nHost: Blocked.Example:8080\r\nAccept: */*\r\n\r\n"[..], false),
            (11, b"GET / HTTP/1.1\r\nHost: ok.example\r\nhost:blocked.example\r\n\r\n", false),
            (12, b"GET http://blocked.example/x HTTP/1.1\r\nHost: ok.example\r\n\r\n", false),
            (13, b"DELETE /x HTTP/1.1\r\nHost: ok.example\r\n\r\n", false),
            (14, b"GET / HTTP/1.1\r\nHost: ok.example\r\nUser-Agent: blocked.example\r\n\r\n", true),
        ] {
            // The head in two segments: the first passes, the second decides.
            let v = g.flow(hook, sport(n), &[(0, &req[..20]), (20, &req[20..])]);
            assert_eq!(v, [true, passes], "{}", String::from_utf8_lossy(req));
        }
        // Not TLS, not HTTP: passes at once.
        assert_eq!(g.flow(hook, sport(20), &[(0, b"SSH-2.0-x\r\n")]), [true]);
    }
    // IPv6 (the listener, on [::], takes both): held and read the same way.
    for (sport, name, passes) in [(43100, "blocked.example", false), (43101, "ok.example", true)] {
        let h = testpkt::client_hello(name, true);
        assert!(g.pass6(sport, 1000, true, &[]));
        assert!(g.pass6(sport, 1001, false, &h[..700]));
        assert_eq!(g.pass6(sport, 1701, false, &h[700..]), passes, "IPv6 {name}");
    }
    let alerts = g.alerts();
    let named: Vec<String> = alerts
        .iter()
        .filter(|a| a.kind == tcpscope::bpf::types::alert_kind::ALERT_L7_BLOCKED.0 as u8)
        .map(|a| String::from_utf8_lossy(&a.name[..a.name_len as usize]).into_owned())
        .collect();
    assert!(named.iter().filter(|n| *n == "blocked.example").count() >= 8, "{named:?}");
    assert!(
        named.contains(&"a.b.evil.example".to_string()) && named.contains(&"delete".to_string()),
        "{named:?}"
    );
    let conflicts =
        alerts.iter().filter(|a| a.kind == tcpscope::bpf::types::alert_kind::ALERT_L7_CONFLICT.0 as u8);
    assert_eq!(conflicts.count(), 4, "two per hook");
    // Per rule: one hit per flow it blocked, on both hooks.
    assert_eq!(
        g.hits(Sni, "blocked.example"),
        2 * 3 + 1,
        "3 hellos per hook (3 segments, 18, reordered), 1 over IPv6"
    );
    assert_eq!(g.hits(Sni, "*.evil.example"), 2);
    assert_eq!(g.hits(Host, "blocked.example"), 2 * 3);
    assert_eq!(g.hits(HttpMethod, "DELETE"), 2);
    assert_eq!(
        g.dropped("l7_conflict"),
        2 * 3,
        "per hook: the forged copy, the flow's next packet, the real hello"
    );
    assert_eq!(g.dropped("l7_out_of_order"), 2);
    assert!(g.dropped("l7_rule") >= 2 * 10);
}

#[test]
fn l7_rules_refuse_what_they_cannot_read_unless_told_to_pass_it() {
    use tcpscope::policy::NameKind::*;
    // A hello past the 4 KiB held (a padding extension of 5,000 bytes), and
    // one spread over two TLS records: no name can be read from either.
    let huge = testpkt::client_hello_with("blocked.example", false, &[(0x0015, vec![0; 5000])]);
    let small = testpkt::client_hello("blocked.example", false);
    let body = &small[5..];
    let (a, b) = body.split_at(40);
    let two_records = [
        &[0x16, 0x03, 0x01][..],
        &(a.len() as u16).to_be_bytes(),
        a,
        &[0x16, 0x03, 0x01],
        &(b.len() as u16).to_be_bytes(),
        b,
    ]
    .concat();
    // An HTTP head that never ends within 4 KiB.
    let long_head = [&b"GET / HTTP/1.1\r\nCookie: "[..], &[b'x'; 5000]].concat();
    for pass in [false, true] {
        let g = L7Guard::new(&[(Sni, "blocked.example"), (Host, "blocked.example")], pass);
        let mut sport = 42000;
        for (what, bytes) in [("huge", &huge), ("two records", &two_records), ("long head", &long_head)] {
            sport += 1;
            let v = g.flow(Hook::Xdp, sport, &segments(bytes, 1400));
            assert_eq!(v.iter().all(|p| *p), pass, "{what}, --l7-undecided pass {pass}: {v:?}");
        }
        let reasons: Vec<u32> = g.alerts().iter().map(|a| a.value).collect();
        if pass {
            assert_eq!(g.dropped("l7_undecided"), 0);
            assert!(reasons.is_empty());
        } else {
            use tcpscope::bpf::types::l7_undecided as U;
            assert_eq!(
                reasons,
                [U::L7_UNDECIDED_TOO_LARGE.0, U::L7_UNDECIDED_TLS_FRAGMENTED.0, U::L7_UNDECIDED_TOO_LARGE.0]
            );
        }
        // A SYN no socket would take is not held (the kernel answers it
        // with a reset), nor is a flow whose SYN the guard never saw.
        let closed = L7Guard { port: 1, ..L7Guard::new(&[(Sni, "blocked.example")], pass) };
        assert_eq!(closed.flow(Hook::Xdp, 43000, &[(0, &small)]), [true]);
        assert!(g.pass(Hook::Xdp, 43001, 5000, false, &small), "no SYN seen: passes");
    }
}

/// The kernel's reading against the Rust decoder's (tls-parser, httparse),
/// on 600 generated first messages: ClientHellos with the server name
/// anywhere among GREASE, padding and post-quantum key shares, HTTP heads
/// with their headers in any order and case, each in random segments with
/// random resends. Where the decoder reads a name a rule covers, the
/// kernel must drop the completing segment, and only then; a tenth of the
/// messages have a byte changed past the record header (a fuzz of the
/// kernel's reader): there, a name the decoder still reads must not pass.
#[test]
fn the_kernels_l7_reading_agrees_with_the_decoder_on_generated_messages() {
    let g = L7Guard::new(&RULES, false);
    let names = [
        "blocked.example",
        "ok.example",
        "Blocked.EXAMPLE",
        "a.evil.example",
        "evil.example",
        "x.blocked.example",
    ];
    let mut rng = Rng(0x7c9e_2f1d_33aa_5be1);
    let (mut dropped, mut passed, mut mutated) = (0, 0, 0);
    for case in 0..600u32 {
        let name = *rng.pick(&names);
        let msg: Vec<u8> = if rng.below(10) < 7 {
            let mut exts = tcpscope::testpkt::hello_extensions(name, rng.below(2) == 0);
            for _ in 0..rng.below(4) {
                let grease = 0x0a0a + 0x1010 * rng.below(16) as u16;
                let len = rng.below(40);
                exts.push((grease, vec![0; len]));
            }
            if rng.below(2) == 0 {
                let len = rng.below(700);
                exts.push((0x0015, vec![0; len]));
            }
            for i in (1..exts.len()).rev() {
                exts.swap(i, rng.below(i + 1));
            }
            tcpscope::testpkt::client_hello_from(&exts)
        } else {
            let method = *rng.pick(&["GET", "POST", "DELETE", "OPTIONS", "delete"]);
            let host_key = *rng.pick(&["Host", "host", "HOST"]);
            let port = *rng.pick(&["", ":8080"]);
            let space = *rng.pick(&["", " ", "  "]);
            let mut headers = vec![
                format!("{host_key}:{space}{name}{port}"),
                "User-Agent: tcpscope-test/1".to_string(),
                "Accept: */*".to_string(),
                format!("X-Pad: {}", "p".repeat(rng.below(900))),
            ];
            for i in (1..headers.len()).rev() {
                headers.swap(i, rng.below(i + 1));
            }
            format!("{method} /path?q={case} HTTP/1.1\r\n{}\r\n\r\n", headers.join("\r\n")).into_bytes()
        };
        let mut msg = msg;
        let is_mutated = rng.below(10) == 0;
        if is_mutated {
            let at = 9 + rng.below(msg.len() - 9);
            msg[at] ^= 1 << rng.below(8);
            mutated += 1;
        }
        // What the decoder reads, and whether a rule covers it.
        let l7 = match tcpscope_wire::l7::identify(&msg, 443, true) {
            tcpscope_wire::l7::Identified::Done(l7) => Some(l7),
            _ => None,
        };
        let covered = |n: &str| {
            let n = n.to_ascii_lowercase();
            let n = n.split(':').next().unwrap_or_default();
            n == "blocked.example" || n.ends_with(".evil.example")
        };
        let by_name = l7.as_ref().and_then(|l| l.sni.as_deref()).is_some_and(covered);
        let by_host = l7.as_ref().and_then(|l| l.host.as_deref()).is_some_and(|h| {
            let h = h.to_ascii_lowercase();
            h.split(':').next() == Some("blocked.example")
        });
        let by_method =
            l7.as_ref().and_then(|l| l.method.as_deref()).is_some_and(|m| m.eq_ignore_ascii_case("DELETE"));
        let want_drop = by_name || by_host || by_method;
        // In random segments, each maybe sent twice; the verdict of the
        // message is the last segment's.
        let sport = 30000 + case as u16;
        assert!(g.pass(Hook::Xdp, sport, 1000, true, &[]));
        let mut at = 0;
        let mut last = true;
        while at < msg.len() {
            let n = (1 + rng.below(500)).min(msg.len() - at);
            let seg = &msg[at..at + n];
            last = g.pass(Hook::Xdp, sport, 1001 + at as u32, false, seg);
            if rng.below(4) == 0 && at + n < msg.len() {
                assert!(
                    g.pass(Hook::Xdp, sport, 1001 + at as u32, false, seg),
                    "case {case}: a resend of the same bytes"
                );
            }
            at += n;
            if !last {
                break;
            }
        }
        let what = format!(
            "case {case} ({}mutated): {:?}",
            if is_mutated { "" } else { "not " },
            String::from_utf8_lossy(&msg[..msg.len().min(120)])
        );
        if is_mutated {
            assert!(!(want_drop && last), "{what}: the decoder reads {l7:?}, the kernel passed it");
        } else {
            assert_eq!(!last, want_drop, "{what}: the decoder reads {l7:?}");
            assert!(at == msg.len(), "{what}: dropped before the message was complete");
        }
        if last {
            passed += 1;
        } else {
            dropped += 1;
        }
    }
    assert!(
        dropped > 150 && passed > 150 && mutated > 30,
        "dropped {dropped}, passed {passed}, mutated {mutated}"
    );
}

#[test]
fn a_full_l7_flow_table_drops_new_syns_and_counts_them() {
    use tcpscope::bpf::types::l7_guard_limits as L;
    let g = L7Guard::new(&[(tcpscope::policy::NameKind::Sni, "blocked.example")], false);
    let max = L::L7_GUARD_MAX_FLOWS.0 as u16;
    for sport in 1..=max {
        assert!(g.pass(Hook::Xdp, sport, 1000, true, &[]), "SYN {sport} of {max}");
    }
    // One more flow would be one no rule sees: its SYN drops (as
    // conntrack's do when its table is full), and says why.
    assert!(!g.pass(Hook::Xdp, max + 1, 1000, true, &[]));
    assert_eq!(g.dropped("l7_table_full"), 1);
    // A held flow goes on as before.
    let hello = testpkt::client_hello("blocked.example", false);
    assert!(!g.pass(Hook::Xdp, 1, 1001, false, &hello));
}
