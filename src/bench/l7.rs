//! `tcpscope bench l7`: what L7 hints cost. In the kernel, ns per packet of
//! the ingress programs with L7 hints on, next to the same programs only
//! counting and to empty ones (BPF_PROG_TEST_RUN, interleaved rounds): for
//! the packets of a connection already named (the steady state, one
//! failed hash lookup), for SYNs (a socket lookup, and a flow followed if a
//! socket would take it) and for a
//! segment of a followed flow (1,400 bytes copied out). In user space, ns
//! per connection of reassembling and naming a post-quantum ClientHello
//! that came in two segments. End to end, bulk throughput through a veth
//! with and without `tcpscope l7 -i` following the connection. And the
//! guard's L7 rules: ns per packet of the flows a guard holds, and
//! connections/s of a loop sending ClientHellos through `tcpscope guard`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, ProgramMut};

use super::programs::ns_per_packet;
use super::{median, Report};
use crate::bpf::types::{l7_flow, l7_flow_key};
use crate::bpf::{self, preflight, LoadOptions};
use crate::cli::BenchArgs;
use crate::filter::EventFilter;
use crate::testhost::{ChildGuard, TestHosts, SERVER_IF, SERVER_V4};
use crate::testpkt;
use tcpscope_wire::l7::track::Tracker;
use tcpscope_wire::types::packet_event;

/// Runs of the cases that write records: what the ring (64 MiB) holds
/// between two drains.
const WRITING_RUNS: u32 = 20_000;

/// Median and range of `on[i] / off[i]`.
fn ratio(on: &[f64], off: &[f64]) -> (f64, f64, f64) {
    let r: Vec<f64> = on.iter().zip(off).map(|(a, b)| a / b).collect();
    let (lo, hi) = r.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    (median(r), lo, hi)
}

pub fn run(args: &BenchArgs, out: &mut dyn Report) -> Result<()> {
    preflight::check_privileges()?;
    let rounds = args.rounds.max(1) as usize;
    let baseline = bpf::load_baseline(false)?;
    let counting = bpf::load_ingress(&LoadOptions::new(EventFilter::default().to_kernel(false)?))?;
    let mut l7_cfg = EventFilter::default().to_kernel(false)?;
    l7_cfg.l7 = 1;
    let l7 = bpf::load_ingress(&LoadOptions { ringbuf_bytes: 64 << 20, ..LoadOptions::new(l7_cfg) })?;

    // The followed flow: the client 198.18.0.1:40000 to 198.18.0.2:443,
    // its stream starting at sequence number 1001.
    let mut key = l7_flow_key { sport: 40000, dport: 443, ip_version: 4, ..Default::default() };
    key.src[..4].copy_from_slice(&testpkt::V4_SRC);
    key.dst[..4].copy_from_slice(&testpkt::V4_DST);
    let flow = l7_flow { isn: 1000, ..Default::default() };
    // SAFETY: both are plain data.
    let (key_bytes, flow_bytes) =
        unsafe { (plain::as_bytes(&key).to_vec(), plain::as_bytes(&flow).to_vec()) };
    let payload = [0x42u8; 1400];
    // Not in the table (nothing here sends a SYN to 8080).
    let named = testpkt::data_v4(8080, 1001, &payload);
    let followed = testpkt::data_v4(443, 1001, &payload);
    // A SYN is followed only if a socket would take it: a listener of this
    // namespace on every address, for as long as the benchmark runs.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").context("a listener for the SYN case")?;
    let syn = testpkt::syn_v4_to(listener.local_addr()?.port());
    let syn_closed = testpkt::syn_v4_to(9); // discard: nothing listens
    let ack = testpkt::pad_to_min_frame(testpkt::ack_v4());

    let reader = super::RingDrain::start(&l7.maps.events)?;
    let drain = |emitted: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while reader.count() < emitted && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    out.line(&format!(
        "bench l7: BPF_PROG_TEST_RUN, {rounds} rounds, median ns/packet; with L7 hints on, the ratio to \
         the same program only counting (median, and min-max of the rounds' ratios). Packets of named \
         connections: {} runs; SYNs and followed segments (which write records, read by a consumer \
         thread): {WRITING_RUNS} runs",
        args.repeat
    ));
    for hook in ["tc", "xdp"] {
        let (empty, count, on): (&ProgramMut<'_>, &ProgramMut<'_>, &ProgramMut<'_>) = if hook == "tc" {
            (&baseline.progs.baseline_tc_ok, &counting.progs.tcpscope_tc, &l7.progs.tcpscope_tc)
        } else {
            (&baseline.progs.baseline_xdp_pass, &counting.progs.tcpscope_xdp, &l7.progs.tcpscope_xdp)
        };
        let cases: [(&str, &[u8], u32); 5] = [
            ("bare ACK (a download's)", &ack, args.repeat),
            ("data of a named connection (1,400 B)", &named, args.repeat),
            ("SYN to a closed port (socket lookup)", &syn_closed, args.repeat),
            ("SYN to a listener (starts following)", &syn, WRITING_RUNS),
            ("data of a followed flow (1,400 B copied)", &followed, WRITING_RUNS),
        ];
        for (name, frame, runs) in cases {
            let (mut e, mut c, mut l) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                l7.maps.l7_flows.update(&key_bytes, &flow_bytes, libbpf_rs::MapFlags::ANY)?;
                e.push(ns_per_packet(empty, frame, runs)?);
                c.push(ns_per_packet(count, frame, runs)?);
                l.push(ns_per_packet(on, frame, runs)?);
                drain(bpf::read_counters(&l7)?.0.events);
            }
            let (r, lo, hi) = ratio(&l, &c);
            if !out.line(&format!(
                "{hook:<3} {name:<42} empty {:>6.1}   counting {:>6.1}   l7 {:>6.1} ns   ratio {r:.2} ({lo:.2}-{hi:.2})",
                median(e),
                median(c),
                median(l)
            )) {
                break;
            }
        }
    }
    drop(listener);
    let read = reader.count();
    reader.finish()?;
    let c = bpf::read_counters(&l7)?;
    out.line(&format!(
        "records: {} written, {} read, {} lost (ring full while the consumer lagged)",
        c.0.events, read, c.0.events_lost
    ));

    // User space: SYN, then the ClientHello in two segments, per connection.
    let hello = testpkt::client_hello("bench.example", true);
    let (first, rest) = hello.split_at(1400);
    let conns: u16 = 50_000;
    let mut per_conn = Vec::new();
    for _ in 0..rounds {
        let mut t = Tracker::default();
        let mut ev = packet_event { ip_version: 4, dport: 443, ..Default::default() };
        ev.src[..4].copy_from_slice(&testpkt::V4_SRC);
        ev.dst[..4].copy_from_slice(&testpkt::V4_DST);
        let start = Instant::now();
        for sport in 0..conns {
            ev.sport = 10_000 + sport;
            (ev.seq, ev.flags_raw) = (1000, 0x02);
            t.packet(&ev, 1, &[]);
            (ev.seq, ev.flags_raw) = (1001, 0x10);
            t.packet(&ev, 2, first);
            ev.seq = 1001 + first.len() as u32;
            let r = t.packet(&ev, 3, rest);
            anyhow::ensure!(r.is_some_and(|r| r.l7.sni.as_deref() == Some("bench.example")), "not named");
        }
        per_conn.push(start.elapsed().as_nanos() as f64 / f64::from(conns));
    }
    let (lo, hi) = per_conn.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    out.line(&format!(
        "user space: {conns} connections, each a SYN and a {}-byte post-quantum ClientHello in 2 segments, \
         reassembled and named: {:.0} ns/connection (median; {lo:.0}-{hi:.0})",
        hello.len(),
        median(per_conn)
    ));
    bulk(rounds, out)?;
    hints_loop(rounds, out)?;
    offline(args, out)?;
    guard_kernel(args, rounds, out)?;
    guard_loop(rounds, out)
}

/// End to end: the short-connection loop, each connection sending a
/// post-quantum ClientHello, with nothing attached, with `stats` and with
/// `l7 -i` naming every connection, interleaved round by round.
fn hints_loop(rounds: usize, out: &mut dyn Report) -> Result<()> {
    let hello = testpkt::client_hello("bench.example", true);
    let len = hello.len();
    let rig = super::conns::LoopRig::start_with("bl7h", None, None, hello)?;
    let cases: [&[&str]; 3] = [&[], &["stats", "--interval", "60"], &["l7"]];
    let mut rates = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for k in 0..cases.len() {
            let case = (round + k) % cases.len();
            let rate = if cases[case].is_empty() {
                rig.round()?.rate
            } else {
                while_running(&rig.hosts, cases[case], || Ok(rig.round()?.rate))?.0
            };
            rates[case].push(rate);
        }
    }
    let (r, lo, hi) = ratio(&rates[2], &rates[0]);
    let (rs, los, his) = ratio(&rates[2], &rates[1]);
    out.line(&format!(
        "end to end: short connections each sending a {len}-byte ClientHello, 2 s per case, {rounds} rounds, \
         median conn/s: {:.0} alone, {:.0} with `stats`, {:.0} with `l7 -i` naming each; l7 to alone \
         {r:.3} ({lo:.3}-{hi:.3}), l7 to stats {rs:.3} ({los:.3}-{his:.3})",
        median(rates[0].clone()),
        median(rates[1].clone()),
        median(rates[2].clone())
    ));
    Ok(())
}

/// A capture of `n` TLS connections from as many clients (SYN, a
/// ClientHello naming `c<i>.example`, FIN), written with pcap-file.
fn tls_capture(n: u32, file: &std::path::Path) -> Result<()> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let f = std::io::BufWriter::new(
        std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?,
    );
    let mut w = PcapWriter::with_header(f, PcapHeader { snaplen: 65535, ..Default::default() })?;
    let mut ts = Duration::from_secs(1_700_000_000);
    for i in 0..n {
        // Clients 198.19.0.0/16, each with a port of its own.
        let src = [198, 19, (i >> 8) as u8, i as u8];
        let sport = 10_000 + (i >> 16) as u16;
        let ip =
            |b: etherparse::PacketBuilderStep<etherparse::Ethernet2Header>| b.ipv4(src, testpkt::V4_DST, 64);
        let hello = testpkt::client_hello(&format!("c{i}.example"), false);
        let frames = [
            ip(etherparse::PacketBuilder::ethernet2(testpkt::MAC_A, testpkt::MAC_B))
                .tcp(sport, 443, 1000, 64240)
                .syn(),
            ip(etherparse::PacketBuilder::ethernet2(testpkt::MAC_A, testpkt::MAC_B))
                .tcp(sport, 443, 1001, 502)
                .ack(1)
                .psh(),
            ip(etherparse::PacketBuilder::ethernet2(testpkt::MAC_A, testpkt::MAC_B))
                .tcp(sport, 443, 1001 + hello.len() as u32, 502)
                .ack(1)
                .fin(),
        ];
        for (k, b) in frames.into_iter().enumerate() {
            let payload: &[u8] = if k == 1 { &hello } else { &[] };
            let mut frame = Vec::with_capacity(b.size(payload.len()));
            b.write(&mut frame, payload)?;
            ts += Duration::from_micros(10);
            w.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))?;
        }
    }
    Ok(())
}

/// The peak RSS (VmHWM, MiB) of a running process; 0 once it has gone.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix(" kB")?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `cmd` with its output counted, not kept: (seconds, lines, peak RSS
/// in MiB, sampled every 64 lines: wait4's figure would count this
/// process's own memory, which the child's exec inherits as its mark).
fn timed_lines(mut cmd: std::process::Command) -> Result<(f64, usize, f64)> {
    use std::io::BufRead;
    let start = Instant::now();
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().with_context(|| format!("{cmd:?}"))?;
    let pid = child.id();
    let (mut lines, mut rss) = (0usize, 0f64);
    for _ in std::io::BufReader::new(child.stdout.take().context("stdout")?).lines() {
        if lines % 64 == 0 {
            rss = rss.max(peak_rss_mib(pid));
        }
        lines += 1;
    }
    rss = rss.max(peak_rss_mib(pid));
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed");
    Ok((start.elapsed().as_secs_f64(), lines, rss))
}

/// Offline: `l7 -r` and tshark's SNI field on the same capture of TLS
/// connections (PACKETS/10 of them, and a tenth of that for the memory
/// comparison).
fn offline(args: &BenchArgs, out: &mut dyn Report) -> Result<()> {
    let n = (args.packets / 10).clamp(1_000, 1_000_000) as u32;
    let dir = std::env::temp_dir().join(format!("tcpscope-bench-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe().context("locating the tcpscope binary")?;
    let mut rss_small = 0.0;
    for (conns, keep) in [(n / 10, false), (n, true)] {
        let file = dir.join(format!("tls-{conns}.pcap"));
        tls_capture(conns, &file)?;
        let mut ours = std::process::Command::new(&exe);
        ours.args(["l7", "-r"]).arg(&file).arg("--json");
        let (t_ours, l_ours, rss_ours) = timed_lines(ours)?;
        anyhow::ensure!(l_ours == conns as usize, "l7 -r printed {l_ours} records for {conns} connections");
        if !keep {
            rss_small = rss_ours;
            continue;
        }
        let mut tshark = std::process::Command::new("tshark");
        tshark.args(["-r"]).arg(&file).args([
            "-Y",
            "tls.handshake.type==1",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions_server_name",
        ]);
        let (t_tshark, l_tshark, rss_tshark) =
            timed_lines(tshark).context("tshark (scripts/setup.sh installs it)")?;
        anyhow::ensure!(
            l_tshark == conns as usize,
            "tshark printed {l_tshark} names for {conns} connections"
        );
        out.line(&format!(
            "offline: {conns} TLS connections ({:.1} MiB pcap): `l7 -r --json` {t_ours:.2} s, peak RSS {rss_ours:.1} MiB \
             ({rss_small:.1} MiB for {} connections); tshark's SNI field {t_tshark:.2} s, {rss_tshark:.0} MiB: \
             {:.1}x faster",
            std::fs::metadata(&file)?.len() as f64 / (1 << 20) as f64,
            conns / 10,
            t_tshark / t_ours
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The guard's lean programs, with one L7 rule (a server name no test
/// client sends) or none.
fn guard_programs(with_rule: bool) -> Result<crate::bpf::IngressSkel<'static>> {
    use crate::policy::{rule_key, NameKind, NameRule, Rule};
    let mut opts = LoadOptions::new(EventFilter::default().to_kernel(false)?);
    opts.config.policy = 1;
    opts.config.lean = 1;
    opts.config.drop_unparsable = 1;
    let skel = bpf::load_ingress(&opts)?;
    if with_rule {
        let rule =
            Rule::on_name(NameRule::parse(NameKind::Sni, "other.example").map_err(anyhow::Error::msg)?, None);
        let (_, key) = rule_key(&rule);
        skel.maps.l7_rules.update(&key, &[0u8; 16], libbpf_rs::MapFlags::ANY)?;
        let mut used = crate::bpf::types::policy_used::default();
        used.l7[0] = 1;
        used.l7[1] = 1;
        // SAFETY: bytes only.
        skel.maps.policy_used.update(
            &0u32.to_ne_bytes(),
            unsafe { plain::as_bytes(&used) },
            libbpf_rs::MapFlags::ANY,
        )?;
    }
    Ok(skel)
}

/// In the kernel: what a guard with an L7 rule costs the packets of a flow
/// it holds (read and passed: one lookup) and of one it does not, next to
/// the same guard without L7 rules (no lookup).
fn guard_kernel(args: &BenchArgs, rounds: usize, out: &mut dyn Report) -> Result<()> {
    let listener = TcpListener::bind("0.0.0.0:0").context("a listener for the held flow")?;
    let port = listener.local_addr()?.port();
    let (plain_guard, l7_guard) = (guard_programs(false)?, guard_programs(true)?);
    // The flow 198.18.0.1:40000 > port: its SYN, then a ClientHello the
    // rule does not cover, read and passed.
    let hello = testpkt::client_hello("bench.example", true);
    for skel in [&plain_guard, &l7_guard] {
        for frame in [testpkt::syn_v4_to(port), testpkt::data_v4(port, 1001, &hello)] {
            let r = skel
                .progs
                .tcpscope_xdp
                .test_run(libbpf_rs::ProgramInput { data_in: Some(&frame), ..Default::default() })?;
            anyhow::ensure!(r.return_value == 2, "the guard dropped the bench's flow");
        }
    }
    anyhow::ensure!(l7_guard.maps.l7_guard_flows.keys().count() == 1, "the flow is not held");
    let after = 1001 + hello.len() as u32;
    let payload = [0x42u8; 1400];
    let cases: [(&str, Vec<u8>); 3] = [
        ("data of a held flow, first message passed (1,400 B)", testpkt::data_v4(port, after, &payload)),
        ("empty ACK of a held flow", testpkt::data_v4(port, after, &[])),
        ("data of a flow not held (1,400 B)", testpkt::data_v4(8080, 1001, &payload)),
    ];
    out.line(&format!(
        "guard with L7 rules: XDP, BPF_PROG_TEST_RUN, {rounds} rounds of {} runs, median ns/packet of the lean guard \
         without and with one --sni rule",
        args.repeat
    ));
    for (name, frame) in &cases {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            off.push(ns_per_packet(&plain_guard.progs.tcpscope_xdp, frame, args.repeat)?);
            on.push(ns_per_packet(&l7_guard.progs.tcpscope_xdp, frame, args.repeat)?);
        }
        let (r, lo, hi) = ratio(&on, &off);
        if !out.line(&format!(
            "xdp {name:<52} no L7 rule {:>6.1}   L7 rule {:>6.1} ns   +{:.1} ns   ratio {r:.2} ({lo:.2}-{hi:.2})",
            median(off.clone()),
            median(on.clone()),
            median(on) - median(off)
        )) {
            return Ok(());
        }
    }
    Ok(())
}

/// End to end: the short-connection loop (connect, send a post-quantum
/// ClientHello, read a byte back, close) through `tcpscope guard` at XDP,
/// without and with an L7 rule (a name the loop does not send: each
/// connection is held, read and passed), interleaved round by round.
fn guard_loop(rounds: usize, out: &mut dyn Report) -> Result<()> {
    let hello = testpkt::client_hello("bench.example", true);
    let rig = super::conns::LoopRig::start_with("bl7g", None, None, hello)?;
    let exe = std::env::current_exe().context("locating the tcpscope binary")?;
    let ns = rig.hosts.server_ns.clone();
    let rules = |args: &[&str]| -> Result<()> {
        let st = std::process::Command::new(&exe)
            .args(args)
            .args(["-i", SERVER_IF, "--netns", &ns])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "tcpscope {args:?} failed");
        Ok(())
    };
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in 0..2 {
            let with_rule = (round + k) % 2 == 1;
            let (rate, _) = while_running(&rig.hosts, &["guard", "--no-detect"], || {
                if with_rule {
                    rules(&["block", "add", "--sni", "other.example"])?;
                }
                let rate = rig.round()?.rate;
                if with_rule {
                    rules(&["block", "flush"])?;
                }
                Ok(rate)
            })?;
            rates[usize::from(with_rule)].push(rate);
        }
    }
    let (r, lo, hi) = ratio(&rates[1], &rates[0]);
    out.line(&format!(
        "guard with L7 rules, end to end: short connections each sending a {}-byte ClientHello, 2 s per case, \
         {rounds} rounds, median conn/s: {:.0} guard without L7 rules, {:.0} with one --sni rule (every \
         connection held, read, passed); ratio {r:.3} ({lo:.3}-{hi:.3})",
        testpkt::client_hello("bench.example", true).len(),
        median(rates[0].clone()),
        median(rates[1].clone())
    ));
    Ok(())
}

/// `tcpscope ARGS -i SERVER_IF` while `f` runs: in the server's namespace,
/// or (a guard, whose pins `block` must find) named by `--netns`; what it
/// said on standard error.
fn while_running<T>(
    hosts: &TestHosts,
    args: &[&str],
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<String>)> {
    let exe = std::env::current_exe().context("locating the tcpscope binary")?;
    let mut cmd = if args.first() == Some(&"guard") {
        let mut c = std::process::Command::new(&exe);
        c.args(["guard", "--netns", &hosts.server_ns]).args(&args[1..]);
        c
    } else {
        let mut c = TestHosts::command_in(&hosts.server_ns, &exe.to_string_lossy());
        c.args(args);
        c
    };
    cmd.args(["-i", SERVER_IF]).stdout(Stdio::null());
    let (mut child, said) = ChildGuard::spawn_until_ready(cmd, "(link id ", Duration::from_secs(30))?;
    let got = f();
    child.interrupt_and_wait(Duration::from_secs(20))?;
    let said = said.lock().map(|l| l.clone()).unwrap_or_default();
    Ok((got?, said))
}

/// One bulk connection between test hosts for `ROUND`, segmentation
/// offloads off (every segment passes the hook on its own): bytes/s the
/// server read.
fn bulk_round(hosts: &TestHosts, port: u16) -> Result<f64> {
    const ROUND: Duration = Duration::from_secs(2);
    let listener = TestHosts::run_in(&hosts.server_ns, move || TcpListener::bind((SERVER_V4, port)))
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))???;
    let server = std::thread::spawn(move || -> u64 {
        let Ok((mut s, _)) = listener.accept() else { return 0 };
        let (mut buf, mut total) = (vec![0u8; 1 << 16], 0u64);
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let start = Instant::now();
    TestHosts::run_in(&hosts.client_ns, move || -> Result<()> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((SERVER_V4, port)), Duration::from_secs(10))?;
        let buf = vec![0x5au8; 1 << 16];
        while start.elapsed() < ROUND {
            s.write_all(&buf)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))???;
    let total = server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// End to end: bulk throughput through the veth with nothing attached and
/// with `tcpscope l7 -i` following (the connection is named after its
/// first bytes; every later segment is the steady state), interleaved
/// round by round.
fn bulk(rounds: usize, out: &mut dyn Report) -> Result<()> {
    let hosts = TestHosts::new("bl7")?;
    hosts.offloads_off()?;
    // Alone, with `stats` (the same program at TC, counting only), with `l7`.
    let cases: [(&str, &[&str]); 3] =
        [("alone", &[]), ("stats", &["stats", "--interval", "60"]), ("l7", &["l7"])];
    let mut rates = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        // The order rotates, so slow drift favours no case.
        for k in 0..cases.len() {
            let case = (round + k) % cases.len();
            let port = 5301 + (round * cases.len() + case) as u16;
            let (name, args) = cases[case];
            if args.is_empty() {
                rates[case].push(bulk_round(&hosts, port)?);
                continue;
            }
            let (rate, said) = while_running(&hosts, args, || bulk_round(&hosts, port))?;
            rates[case].push(rate);
            if name == "l7" {
                let named = said.iter().any(|l| l.contains("1 connections identified"));
                anyhow::ensure!(named, "l7 did not name the bulk connection");
            }
        }
    }
    let ratio = |a: usize, b: usize| {
        let r: Vec<f64> = rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect();
        let (lo, hi) = r.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("{:.3} ({lo:.3}-{hi:.3})", median(r))
    };
    out.line(&format!(
        "end to end: one bulk connection through the veth, offloads off, 2 s per case, {rounds} rounds, \
         median MB/s: {:.0} alone, {:.0} with `stats` (the program at TC, counting), {:.0} with `l7 -i` \
         (TC) naming it; l7 to stats {}, stats to alone {}",
        median(rates[0].clone()) / 1e6,
        median(rates[1].clone()) / 1e6,
        median(rates[2].clone()) / 1e6,
        ratio(2, 1),
        ratio(1, 0)
    ));
    Ok(())
}
