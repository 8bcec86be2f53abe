//! The kernel parser (the real XDP program, through BPF_PROG_TEST_RUN)
//! against the Rust decoder, on every corpus packet and on 100,000 random
//! and mutated packets (seeded, reproducible). Both must reach the same
//! verdict — TCP, not TCP, fragment, or malformed for the same reason — and
//! for TCP the same event, field for field.

mod common;

use common::Rng;

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use libbpf_rs::{ProgramInput, RingBufferBuilder};
use tcpscope::bpf::{self, types::packet_event, IngressSkel, LoadOptions};
use tcpscope::capture::Capture;
use tcpscope::decode::{self, LinkType, Outcome, Skip};
use tcpscope::filter::EventFilter;
use tcpscope::testpkt;

/// What happened to one packet, in terms both sides can express.
#[derive(Clone, PartialEq, Eq)]
enum Verdict {
    /// The event's bytes: compared whole, so no field can be forgotten.
    Tcp(Vec<u8>),
    NotTcp,
    Fragment,
    Malformed(u8),
}

struct Kernel {
    skel: IngressSkel<'static>,
    last: tcpscope::bpf::counters::Counters,
    /// Built once: building a ring buffer per packet (an mmap, an epoll)
    /// took most of this file's time.
    ring: libbpf_rs::RingBuffer<'static>,
    events: Rc<RefCell<Vec<packet_event>>>,
}

impl Kernel {
    fn new() -> Self {
        Self::with(&EventFilter::default())
    }

    /// The XDP program with `filter` deciding which packets become events.
    fn with(filter: &EventFilter) -> Self {
        let cfg = filter.to_kernel(true).unwrap();
        let skel = bpf::load_ingress(&LoadOptions::new(cfg)).unwrap();
        let last = bpf::read_counters(&skel).unwrap();
        let events = Rc::new(RefCell::new(Vec::new()));
        let handle = libbpf_rs::MapHandle::try_from(&skel.maps.events).unwrap();
        let mut b = RingBufferBuilder::new();
        let sink = events.clone();
        b.add(&handle, move |d: &[u8]| {
            let mut ev = packet_event::default();
            plain::copy_from_bytes(&mut ev, &d[..std::mem::size_of::<packet_event>()]).unwrap();
            sink.borrow_mut().push(ev);
            0
        })
        .unwrap();
        let ring = b.build().unwrap();
        Kernel { skel, last, ring, events }
    }

    /// Runs `frame` through the XDP program; the events it made.
    fn run(&mut self, frame: &[u8]) -> Vec<packet_event> {
        self.skel
            .progs
            .tcpscope_xdp
            .test_run(ProgramInput { data_in: Some(frame), repeat: 1, ..Default::default() })
            .expect("test run");
        self.ring.consume().unwrap();
        std::mem::take(&mut *self.events.borrow_mut())
    }

    fn verdict(&mut self, frame: &[u8]) -> Verdict {
        let mut events = self.run(frame);
        let now = bpf::read_counters(&self.skel).unwrap();
        let (a, b) = (&now.0, &self.last.0);
        let v = if now.0.tcp_packets > self.last.0.tcp_packets {
            assert_eq!(events.len(), 1, "one event per TCP packet");
            tcp(events.remove(0))
        } else if a.non_tcp > b.non_tcp {
            Verdict::NotTcp
        } else if a.ip_fragments > b.ip_fragments {
            Verdict::Fragment
        } else {
            let r = (1..a.malformed.len())
                .find(|&i| a.malformed[i] > b.malformed[i])
                .expect("some counter moved");
            Verdict::Malformed(r as u8)
        };
        self.last = now;
        v
    }
}

fn user_verdict(frame: &[u8]) -> Verdict {
    let mut ev = packet_event::default();
    match decode::decode(LinkType::Ethernet, frame, frame.len() as u32, &mut ev) {
        Outcome::Tcp => tcp(ev),
        Outcome::Skipped(Skip::Fragment) => Verdict::Fragment,
        Outcome::Skipped(_) => Verdict::NotTcp,
        Outcome::Malformed(r) => Verdict::Malformed(r),
    }
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Tcp(b) => {
                let mut ev = packet_event::default();
                plain::copy_from_bytes(&mut ev, b).unwrap();
                write!(f, "Tcp({ev:#?})")
            }
            Verdict::NotTcp => write!(f, "NotTcp"),
            Verdict::Fragment => write!(f, "Fragment"),
            Verdict::Malformed(r) => {
                write!(f, "Malformed({})", tcpscope::names::malformed_name(*r))
            }
        }
    }
}

/// An event's bytes without the fields only one side can know: time,
/// interface, hook.
fn tcp(mut ev: packet_event) -> Verdict {
    ev.ts_ns = 0;
    ev.ifindex = 0;
    ev.hook = 0;
    // SAFETY: packet_event is Plain: integers only, padding explicit and zeroed.
    Verdict::Tcp(unsafe { plain::as_bytes(&ev) }.to_vec())
}

fn check(kernel: &mut Kernel, frame: &[u8], what: &str) {
    if frame.len() < 14 {
        return; // BPF_PROG_TEST_RUN refuses frames shorter than Ethernet
    }
    let k = kernel.verdict(frame);
    let u = user_verdict(frame);
    if k != u {
        // Show only what differs, and the start of the frame.
        let (ks, us) = (format!("{k:#?}"), format!("{u:#?}"));
        let diff: Vec<String> = ks
            .lines()
            .zip(us.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {i}: kernel {} | user {}", a.trim(), b.trim()))
            .collect();
        panic!(
            "kernel and user space disagree on {what} ({} bytes, starting {:02x?}):\n{}\n{}",
            frame.len(),
            &frame[..frame.len().min(80)],
            if diff.is_empty() { format!("kernel {k:?}\nuser {u:?}") } else { diff.join("\n") },
            if ks.lines().count() != us.lines().count() {
                format!("kernel {k:?}\nuser {u:?}")
            } else {
                String::new()
            }
        );
    }
}

/// BPF_PROG_TEST_RUN takes an XDP frame of at most a page less head- and
/// tailroom; longer corpus frames are cut to this (both sides see the cut).
const MAX_XDP_TEST_FRAME: usize = 3000;

/// Corpus frames as Ethernet frames: other link types get a synthetic
/// Ethernet header with the right ethertype, so the XDP program sees the
/// same network layer.
fn corpus_frames() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/tcpdump");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut cap = Capture::open(std::fs::File::open(&f).unwrap()).unwrap();
        let mut n = 0;
        while let Some(Ok(fr)) = cap.next_frame() {
            n += 1;
            let l3 = match fr.link {
                LinkType::Ethernet => {
                    out.push((format!("{name}#{n}"), fr.data.to_vec()));
                    continue;
                }
                LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => fr.data,
                LinkType::LinuxSll => fr.data.get(16..).unwrap_or(&[]),
                LinkType::LinuxSll2 => fr.data.get(20..).unwrap_or(&[]),
                LinkType::Null | LinkType::Loop => fr.data.get(4..).unwrap_or(&[]),
                LinkType::Other(_) => continue,
            };
            let ethertype: [u8; 2] = match l3.first().map(|b| b >> 4) {
                Some(6) => [0x86, 0xdd],
                _ => [0x08, 0x00],
            };
            let mut e = [testpkt::MAC_B, testpkt::MAC_A].concat();
            e.extend_from_slice(&ethertype);
            e.extend_from_slice(l3);
            out.push((format!("{name}#{n}"), e));
        }
    }
    out
}

#[test]
fn corpus_packets_agree() {
    let mut k = Kernel::new();
    let frames = corpus_frames();
    assert!(frames.len() > 500, "{} corpus frames", frames.len());
    for (what, f) in &frames {
        check(&mut k, &f[..f.len().min(MAX_XDP_TEST_FRAME)], what);
    }
    eprintln!("{} corpus frames: kernel and user space agree", frames.len());
}

#[test]
fn random_and_mutated_packets_agree() {
    const N: usize = 100_000;
    let mut rng = Rng(0x7c9_5c0e_2026);
    let mut seeds: Vec<Vec<u8>> = corpus_frames()
        .into_iter()
        .map(|(_, mut f)| {
            f.truncate(MAX_XDP_TEST_FRAME);
            f
        })
        .collect();
    seeds.extend([
        testpkt::syn_v4(),
        testpkt::syn_v6(),
        testpkt::syn_vlan(),
        testpkt::syn_v4_windows_options(),
        testpkt::ack_v4(),
        testpkt::udp_v4(),
    ]);
    let mut k = Kernel::new();
    let mut tcp = 0;
    for i in 0..N {
        let mut f = seeds[rng.below(seeds.len())].clone();
        match i % 4 {
            // Flip a few random bytes anywhere.
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(f.len());
                    f[at] = rng.next() as u8;
                }
            }
            // Aim at header fields: IHL/version, lengths, data offset, options.
            1 => {
                let hot = [
                    14,
                    16,
                    17,
                    18,
                    19,
                    20,
                    21,
                    23,
                    14 + 6,
                    14 + 20 + 12,
                    14 + 20 + 20,
                    14 + 20 + 21,
                    14 + 20 + 22,
                    14 + 40 + 12,
                    14 + 40 + 20,
                    14 + 40 + 21,
                    12,
                    13,
                ];
                let at = hot[rng.below(hot.len())];
                if at < f.len() {
                    f[at] = rng.next() as u8;
                }
            }
            // Cut short anywhere.
            2 => f.truncate(rng.below(f.len() + 1)),
            // Random bytes behind a real Ethernet/IP start.
            _ => {
                let keep = 14 + rng.below(40);
                f.truncate(keep.min(f.len()));
                for _ in 0..rng.below(80) {
                    f.push(rng.next() as u8);
                }
            }
        }
        if f.len() >= 14 {
            if let Verdict::Tcp(_) = user_verdict(&f) {
                tcp += 1;
            }
        }
        check(&mut k, &f, &format!("random packet {i}"));
    }
    eprintln!("{N} random and mutated packets: kernel and user space agree ({tcp} decoded as TCP)");
    assert!(tcp > N / 10, "the mutations still exercise the TCP parser: {tcp}");
}

/// The kernel's event filter (ports, CIDRs, flags, as `watch` loads it)
/// and the user-space one (`read`'s) agree on every corpus TCP packet, for
/// filters chosen from the corpus itself so that each matches some packets
/// and not others.
#[test]
fn kernel_and_user_filters_agree() {
    use tcpscope::filter::{Cidr, FlagMatch};
    use tcpscope::model::address;
    let mut tcp = Vec::new();
    for (_, f) in corpus_frames() {
        let f = f[..f.len().min(MAX_XDP_TEST_FRAME)].to_vec();
        let mut ev = packet_event::default();
        if f.len() >= 14 && decode::decode(LinkType::Ethernet, &f, f.len() as u32, &mut ev) == Outcome::Tcp {
            tcp.push((f, ev));
        }
    }
    assert!(tcp.len() > 300, "{} TCP frames", tcp.len());
    let net = |raw: &[u8; 16], v: u8, prefix| {
        let addr = address(v, raw);
        Cidr { addr: Cidr { addr, prefix }.network(), prefix }
    };
    let (a, b) = (tcp[tcp.len() / 3].1, tcp[tcp.len() * 2 / 3].1);
    let v6 = tcp.iter().map(|(_, e)| *e).find(|e| e.ip_version == 6).expect("an IPv6 TCP packet");
    let syn_only: FlagMatch = "SYN,!ACK".parse().unwrap();
    let filters = [
        EventFilter { ports: vec![a.dport], ..Default::default() },
        EventFilter { sports: vec![a.sport, b.sport], ..Default::default() },
        EventFilter { dports: vec![b.dport], sports: vec![b.sport], ..Default::default() },
        EventFilter { src: vec![net(&a.src, a.ip_version, 16)], ..Default::default() },
        EventFilter { dst: vec![net(&b.dst, b.ip_version, 24), net(&v6.dst, 6, 64)], ..Default::default() },
        EventFilter { src: vec![net(&v6.src, 6, 48)], ..Default::default() },
        EventFilter { flags: syn_only, ..Default::default() },
        EventFilter {
            flags: "ACK,!PSH".parse().unwrap(),
            ports: vec![a.dport, a.sport],
            ..Default::default()
        },
    ];
    for filter in &filters {
        let mut k = Kernel::with(filter);
        let mut matched = 0;
        for (frame, ev) in &tcp {
            let user = filter.matches(
                ev.sport,
                ev.dport,
                address(ev.ip_version, &ev.src),
                address(ev.ip_version, &ev.dst),
                ev.flags_raw,
            );
            assert_eq!(
                !k.run(frame).is_empty(),
                user,
                "{filter:?} on {:02x?}",
                &frame[..frame.len().min(64)]
            );
            matched += usize::from(user);
        }
        assert!(
            matched > 0 && matched < tcp.len(),
            "{filter:?} matched {matched} of {}: both outcomes must be seen",
            tcp.len()
        );
    }
}
