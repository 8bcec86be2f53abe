//! `tcpscope bench`: ns/packet of the ingress programs through
//! BPF_PROG_TEST_RUN, side by side with empty programs, in one run.
//!
//! Figures are printed, never asserted: this is a noisy VM. Each case is
//! measured `rounds` times, interleaved with the others, and the median kept.

use anyhow::{Context, Result};
use libbpf_rs::{ProgramInput, ProgramMut};

use super::Report;
use crate::bpf::{self, preflight, LoadOptions};
use crate::cli::BenchArgs;
use crate::filter::EventFilter;
use crate::testpkt;

/// ns per run of `prog` on `frame`, as the kernel measured it.
pub fn ns_per_packet(prog: &ProgramMut<'_>, frame: &[u8], repeat: u32) -> Result<f64> {
    let input = ProgramInput { data_in: Some(frame), repeat, ..Default::default() };
    let out = prog.test_run(input).context("BPF_PROG_TEST_RUN")?;
    Ok(out.duration.as_nanos() as f64)
}

use super::median;

/// Reports a line; a reader that has gone (a closed stdout) ends the
/// benchmark quietly.
macro_rules! emit {
    ($out:expr, $($arg:tt)*) => {
        if !$out.line(&format!($($arg)*)) {
            return Ok(());
        }
    };
}

pub fn run(args: &BenchArgs, out: &mut dyn Report) -> Result<()> {
    preflight::check_privileges()?;
    let rounds = args.rounds.max(1);
    let packets: [(&str, Vec<u8>); 6] = [
        ("SYN+options v4", testpkt::syn_v4()),
        ("SYN, other layout", testpkt::syn_v4_windows_options()),
        ("ACK v4", testpkt::pad_to_min_frame(testpkt::ack_v4())),
        ("SYN+options v6", testpkt::syn_v6()),
        ("SYN+options VLAN", testpkt::syn_vlan()),
        ("UDP (non-TCP)", testpkt::udp_v4()),
    ];

    let baseline = bpf::load_baseline(false)?;
    // Events on, but a filter that matches none of the packets: parse, count,
    // filter, no ring buffer write. This is the figure the target refers to.
    let filtered_cfg = EventFilter { dports: vec![9], ..Default::default() }.to_kernel(true)?;
    let filtered = bpf::load_ingress(&LoadOptions::new(filtered_cfg))?;
    // Events on for every TCP packet, with a consumer draining the ring.
    let all = bpf::load_ingress(&LoadOptions::new(EventFilter::default().to_kernel(true)?))?;

    let reader = super::RingDrain::start(&all.maps.events)?;

    emit!(
        out,
        "tcpscope bench: BPF_PROG_TEST_RUN, {} repeats x {} rounds per case, median ns/packet (ratio to the empty program of the same hook)",
        args.repeat, rounds
    );
    emit!(
        out,
        "{:<18} {:>9} {:>17} {:>17} | {:>9} {:>17} {:>17}",
        "packet",
        "empty xdp",
        "xdp filtered",
        "xdp events",
        "empty tc",
        "tc filtered",
        "tc events"
    );
    for (name, frame) in &packets {
        let progs: [&ProgramMut<'_>; 6] = [
            &baseline.progs.baseline_xdp_pass,
            &filtered.progs.tcpscope_xdp,
            &all.progs.tcpscope_xdp,
            &baseline.progs.baseline_tc_ok,
            &filtered.progs.tcpscope_tc,
            &all.progs.tcpscope_tc,
        ];
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); progs.len()];
        for _ in 0..rounds {
            for (i, p) in progs.iter().enumerate() {
                samples[i].push(ns_per_packet(p, frame, args.repeat)?);
            }
        }
        let m: Vec<f64> = samples.into_iter().map(median).collect();
        emit!(
        out,
            "{:<18} {:>9.1} {:>9.1} ({:>4.2}x) {:>9.1} ({:>4.2}x) | {:>9.1} {:>9.1} ({:>4.2}x) {:>9.1} ({:>4.2}x)",
            name,
            m[0],
            m[1],
            m[1] / m[0],
            m[2],
            m[2] / m[0],
            m[3],
            m[4],
            m[4] / m[3],
            m[5],
            m[5] / m[3]
        );
    }
    // The agent's top sources: the same filtered program with the per-source
    // sketch and candidate table on, paired round by round.
    let top_cfg = crate::bpf::types::tcpscope_config { top_sources: 1, ..filtered_cfg };
    let top = bpf::load_ingress(&LoadOptions::new(top_cfg))?;
    let syn = testpkt::syn_v4();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        off.push(ns_per_packet(&filtered.progs.tcpscope_tc, &syn, args.repeat)?);
        on.push(ns_per_packet(&top.progs.tcpscope_tc, &syn, args.repeat)?);
    }
    let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
    let (lo, hi) = ratios.iter().fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    emit!(
        out,
        "top sources (agent --top-sources), tc filtered, SYN v4 from one source: {:.1} ns/packet on, {:.1} off, ratio {:.2} ({lo:.2}-{hi:.2})",
        median(on),
        median(off),
        median(ratios)
    );
    let read = reader.count();
    reader.finish()?;
    let c = bpf::read_counters(&all)?;
    emit!(
        out,
        "events run: {} emitted, {} read by the consumer, {} lost (ring buffer full while the consumer lagged)",
        c.0.events,
        read,
        c.0.events_lost
    );
    Ok(())
}
