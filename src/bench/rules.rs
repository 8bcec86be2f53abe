//! `tcpscope bench rules`: ns/packet of the guard's rule lookup with 0, 100,
//! 10,000 and 100,000 rules (mixed prefix lengths, IPv4 and IPv6), side by
//! side in one run with xdp-tools' xdp-filter holding as many exact
//! addresses, both through BPF_PROG_TEST_RUN.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, ProgramInput};

use super::{median, Report};
use crate::bpf::{self, LoadOptions};
use crate::cli::BenchArgs;
use crate::filter::{Cidr, EventFilter};
use crate::policy::{rule_key, List, Rule};
use crate::testhost::{TestHosts, SERVER_IF};
use crate::testpkt;

const COUNTS: [usize; 4] = [0, 100, 10_000, 100_000];
/// xdp-filter's "match on source address" flag (xdp-filter/common_kern_user.h).
const XDPFILTER_MAP_FLAG_SRC: u64 = 1;

/// The i-th benchmark rule: alternately IPv4 in 100.64.0.0/10 and IPv6 in
/// 2001:db8:8000::/33, prefix lengths cycling; none covers the test packets'
/// source 198.18.0.1 / 2001:db8::1.
fn nth_rule(i: usize) -> Cidr {
    let x = i as u32;
    if i % 2 == 0 {
        let lens = [16, 20, 24, 28, 32];
        let a = std::net::Ipv4Addr::from(0x6440_0000 | (x.wrapping_mul(2_654_435_761) & 0x003f_ffff));
        Cidr { addr: a.into(), prefix: lens[(i / 2) % lens.len()] }
    } else {
        let lens = [48, 56, 64, 96, 128];
        let mut o = [0u8; 16];
        o[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        o[4] = 0x80 | (x >> 24) as u8 & 0x7f;
        o[5..8].copy_from_slice(&x.to_be_bytes()[1..]);
        o[8..12].copy_from_slice(&x.wrapping_mul(40_503).to_be_bytes());
        o[15] = 1;
        Cidr { addr: std::net::Ipv6Addr::from(o).into(), prefix: lens[(i / 2) % lens.len()] }
    }
}

/// ns per run of the program behind `fd` on `frame`.
fn test_run_fd(fd: &OwnedFd, frame: &[u8], repeat: u32) -> Result<f64> {
    // SAFETY: zero is valid for this C options struct; data_in points to
    // frame for the duration of the call.
    let mut opts: libbpf_rs::libbpf_sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of_val(&opts) as _;
    opts.data_in = frame.as_ptr().cast();
    opts.data_size_in = frame.len() as u32;
    opts.repeat = repeat as i32;
    // SAFETY: fd is a valid program fd; opts is initialised with its size.
    let r = unsafe { libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(fd.as_raw_fd(), &mut opts) };
    if r != 0 {
        bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::from_raw_os_error(-r));
    }
    Ok(f64::from(opts.duration))
}

/// Maps whose name is `name`, newest first.
fn maps_named(name: &str) -> Vec<MapHandle> {
    let mut id = 0u32;
    let mut out = Vec::new();
    // SAFETY: id points to a valid u32.
    while unsafe { libbpf_rs::libbpf_sys::bpf_map_get_next_id(id, &mut id) } == 0 {
        if let Ok(m) = MapHandle::from_map_id(id) {
            if m.name() == name {
                out.push(m);
            }
        }
    }
    out.reverse();
    out
}

/// xdp-filter loaded on the test host's interface: its entry program's fd
/// and its IPv4 and IPv6 address maps.
fn load_xdp_filter(hosts: &TestHosts) -> Result<(OwnedFd, MapHandle, MapHandle)> {
    // libxdp wants bpffs, which `ip netns exec` leaves unmounted in its own
    // mount namespace: mount one there for the load.
    let st = TestHosts::command_in(&hosts.server_ns, "sh")
        .args([
            "-c",
            &format!("mount -t bpf bpf /sys/fs/bpf && xdp-filter load -m skb -f ipv4,ipv6 {SERVER_IF}"),
        ])
        .status()
        .context("running xdp-filter (Debian package xdp-tools; scripts/setup.sh installs it)")?;
    if !st.success() {
        bail!("xdp-filter load failed");
    }
    let out = Command::new("ip")
        .args(["-n", &hosts.server_ns, "-d", "-j", "link", "show", "dev", SERVER_IF])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link output")?;
    let id = v[0]["xdp"]["prog"]["id"].as_u64().or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64());
    let id = id.context("xdp-filter's program id not found")? as u32;
    // SAFETY: a new fd for the program id, owned below.
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        bail!("opening xdp-filter's program {id}");
    }
    // SAFETY: fd was just returned to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let v4 = maps_named("filter_ipv4").into_iter().next().context("xdp-filter map filter_ipv4")?;
    let v6 = maps_named("filter_ipv6").into_iter().next().context("xdp-filter map filter_ipv6")?;
    Ok((fd, v4, v6))
}

fn put(map: &MapHandle, key: &[u8], value: u64) -> Result<()> {
    let v = value.to_ne_bytes().to_vec();
    if map.map_type().is_percpu() {
        let n = libbpf_rs::num_possible_cpus()?;
        map.update_percpu(key, &vec![v; n], MapFlags::ANY)?;
    } else {
        map.update(key, &v, MapFlags::ANY)?;
    }
    Ok(())
}

/// `frame` (untagged Ethernet, IPv4 or IPv6) with its source address replaced.
fn with_source(mut frame: Vec<u8>, src: std::net::IpAddr) -> Vec<u8> {
    match src {
        std::net::IpAddr::V4(a) => frame[26..30].copy_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => frame[22..38].copy_from_slice(&a.octets()),
    }
    frame
}

/// The guard's data-structure choice, measured: one LPM trie lookup against
/// one exact hash lookup per prefix length in use (longest first), both in
/// the same minimal program (bpf/baseline.bpf.c) holding the same rules.
/// Sources: covered by no rule (the hash tries every length in use), and
/// covered by a /32 rule (the trie walks to its deepest level).
fn bench_structures(args: &BenchArgs, repeat: u32, out: &mut dyn Report) -> Result<()> {
    let mut skel = bpf::load_baseline(false)?;
    let hit32 = nth_rule(8); // i % 2 == 0, lens[(8 / 2) % 5] = 32
    let cases: [(&str, Vec<u8>); 3] = [
        ("pass v4", testpkt::syn_v4()),
        ("pass v6", testpkt::syn_v6()),
        ("hit v4 /32", with_source(testpkt::syn_v4(), hit32.addr)),
    ];
    out.line("");
    out.line(&format!(
        "rule lookup structure, same minimal program and rules: median ns/packet, LPM trie / hash per prefix length (repeat {repeat})"
    ));
    let mut head = format!("{:>8}", "rules");
    for (name, _) in &cases {
        head.push_str(&format!(" {:>20}", name));
    }
    out.line(&head);
    let (mut lens4, mut lens6) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let mut added = 0;
    for n in COUNTS {
        while added < n {
            let r = Rule { list: List::Block, cidr: nth_rule(added), port: None, ttl: None, name: None };
            let (name, key) = rule_key(&r);
            let (lpm, hash) = if name == "block_v4" {
                lens4.insert(r.cidr.prefix as u8);
                (&skel.maps.ref_lpm_v4, &skel.maps.ref_hash_v4)
            } else {
                lens6.insert(r.cidr.prefix as u8);
                (&skel.maps.ref_lpm_v6, &skel.maps.ref_hash_v6)
            };
            lpm.update(&key, &[0u8; 16], MapFlags::ANY).context("adding a rule")?;
            hash.update(&key, &[0u8; 16], MapFlags::ANY).context("adding a rule")?;
            added += 1;
        }
        let bss = skel.maps.bss_data.as_deref_mut().context("baseline .bss not mapped")?;
        bss.ref_nlens_v4 = lens4.len() as u32;
        for (slot, len) in bss.ref_lens_v4.iter_mut().zip(lens4.iter().rev()) {
            *slot = *len;
        }
        bss.ref_nlens_v6 = lens6.len() as u32;
        for (slot, len) in bss.ref_lens_v6.iter_mut().zip(lens6.iter().rev()) {
            *slot = *len;
        }
        let mut row = format!("{n:>8}");
        for (_, frame) in &cases {
            let (mut lpm, mut hash) = (Vec::new(), Vec::new());
            for _ in 0..args.rounds.max(1) {
                for (v, prog) in
                    [(&mut lpm, &skel.progs.ref_lpm_xdp), (&mut hash, &skel.progs.ref_hash_prefix_xdp)]
                {
                    let o =
                        prog.test_run(ProgramInput { data_in: Some(frame), repeat, ..Default::default() })?;
                    v.push(o.duration.as_nanos() as f64);
                }
            }
            row.push_str(&format!(" {:>20}", format!("{:.1} / {:.1}", median(lpm), median(hash))));
        }
        if !out.line(&row) {
            break;
        }
    }
    Ok(())
}

pub fn run(args: &BenchArgs, out: &mut dyn Report) -> Result<()> {
    bpf::preflight::check_privileges()?;
    let mut cfg = EventFilter::default().to_kernel(false)?;
    cfg.policy = 1;
    cfg.lean = 1; // as `tcpscope guard` runs by default
    let ours = bpf::load_ingress(&LoadOptions::new(cfg))?;
    let hosts = TestHosts::new("brules")?;
    let (xf_prog, xf_v4, xf_v6) = load_xdp_filter(&hosts)?;
    let pass = testpkt::syn_v4(); // from 198.18.0.1: no rule covers it
    let block = Rule { list: List::Block, cidr: "198.18.0.1/32".parse()?, port: None, ttl: None, name: None };
    let repeat = args.repeat.min(1_000_000);
    let rounds = args.rounds.max(1);

    out.line(&format!(
        "bench rules: BPF_PROG_TEST_RUN, {repeat} repeats x {rounds} rounds, median ns/packet; a SYN whose source no rule covers (pass), and one that a rule drops"
    ));
    out.line(&format!(
        "{:>8} {:>16} {:>16} {:>8} | {:>16} {:>16}",
        "rules", "tcpscope pass", "xdp-filter pass", "ratio", "tcpscope drop", "xdp-filter drop"
    ));
    let mut added = 0;
    // xdp-filter's maps have a fixed size; past it, only tcpscope is measured.
    let mut xf_full: Option<usize> = None;
    for n in COUNTS {
        while added < n {
            let r = Rule { list: List::Block, cidr: nth_rule(added), port: None, ttl: None, name: None };
            let (name, key) = rule_key(&r);
            let map = if name == "block_v4" { &ours.maps.block_v4 } else { &ours.maps.block_v6 };
            map.update(&key, &[0u8; 16], MapFlags::ANY).context("adding a rule")?;
            if xf_full.is_none() {
                let r = match r.cidr.addr {
                    std::net::IpAddr::V4(a) => put(&xf_v4, &a.octets(), XDPFILTER_MAP_FLAG_SRC),
                    std::net::IpAddr::V6(a) => put(&xf_v6, &a.octets(), XDPFILTER_MAP_FLAG_SRC),
                };
                if r.is_err() {
                    xf_full = Some(added);
                }
            }
            added += 1;
        }
        // Rounds alternate between the two programs, so drift on this noisy
        // VM lands on both alike; each side reports its median.
        let paired =
            |a: &mut dyn FnMut() -> Result<f64>, b: &mut dyn FnMut() -> Result<f64>| -> Result<(f64, f64)> {
                let (mut va, mut vb) = (Vec::new(), Vec::new());
                for _ in 0..rounds {
                    va.push(a()?);
                    vb.push(b()?);
                }
                Ok((median(va), median(vb)))
            };
        let median1 = |f: &mut dyn FnMut() -> Result<f64>| -> Result<f64> {
            Ok(median((0..rounds).map(|_| f()).collect::<Result<Vec<_>>>()?))
        };
        let run_ours = |frame: &[u8]| -> Result<f64> {
            let out = ours.progs.tcpscope_xdp.test_run(ProgramInput {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })?;
            Ok(out.duration.as_nanos() as f64)
        };
        let (ours_pass, xf_pass) =
            paired(&mut || run_ours(&pass), &mut || test_run_fd(&xf_prog, &pass, repeat))?;
        if let Some(full) = xf_full {
            let (name, key) = rule_key(&block);
            let m = if name == "block_v4" { &ours.maps.block_v4 } else { &ours.maps.block_v6 };
            m.update(&key, &[0u8; 16], MapFlags::ANY)?;
            let ours_drop = median1(&mut || run_ours(&pass))?;
            m.delete(&key)?;
            out.line(&format!(
                "{n:>8} {ours_pass:>16.1} {:>16} {:>8} | {ours_drop:>16.1} {:>16}   (xdp-filter's maps hold {full} entries at most)",
                "full", "-", "full"
            ));
            continue;
        }
        // Drop case: the source blocked on both sides, then unblocked.
        let (name, key) = rule_key(&block);
        let m = if name == "block_v4" { &ours.maps.block_v4 } else { &ours.maps.block_v6 };
        m.update(&key, &[0u8; 16], MapFlags::ANY)?;
        put(&xf_v4, &[198, 18, 0, 1], XDPFILTER_MAP_FLAG_SRC)?;
        let (ours_drop, xf_drop) =
            paired(&mut || run_ours(&pass), &mut || test_run_fd(&xf_prog, &pass, repeat))?;
        m.delete(&key)?;
        xf_v4.delete(&[198, 18, 0, 1])?;
        if !out.line(&format!(
            "{n:>8} {ours_pass:>16.1} {xf_pass:>16.1} {:>7.2}x | {ours_drop:>16.1} {xf_drop:>16.1}",
            ours_pass / xf_pass
        )) {
            return Ok(());
        }
    }
    bench_structures(args, repeat, out)
}
