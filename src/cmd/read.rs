//! `tcpscope read`: decode a pcap/pcapng capture offline, without
//! privileges, into the same text and JSON as `watch`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read};

use anyhow::{Context, Result};

use crate::bpf::types::packet_event;
use crate::capture::Capture;
use crate::cli::ReadArgs;
use crate::cmd::watch::payload_of;
use crate::decode::{self, Outcome};
use crate::model::malformed_name;
use crate::output::{Emitter, Format, Packet};

/// What a read found, by kind; printed at the end.
#[derive(Debug, Default)]
pub struct ReadSummary {
    pub packets: u64,
    pub tcp: u64,
    pub printed: u64,
    pub filtered_out: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    pub malformed: BTreeMap<&'static str, u64>,
}

impl ReadSummary {
    pub fn line(&self) -> String {
        let join = |m: &BTreeMap<&str, u64>| {
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        let skipped: u64 = self.skipped.values().sum();
        let malformed: u64 = self.malformed.values().sum();
        format!(
            "tcpscope: {} packets: tcp {} (printed {}, filtered out {}); skipped {}{}; malformed {}{}",
            self.packets,
            self.tcp,
            self.printed,
            self.filtered_out,
            skipped,
            if skipped > 0 { format!(" ({})", join(&self.skipped)) } else { String::new() },
            malformed,
            if malformed > 0 { format!(" ({})", join(&self.malformed)) } else { String::new() },
        )
    }
}

pub fn run(args: &ReadArgs) -> Result<()> {
    let input: Box<dyn Read> = if args.file == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::with_capacity(
            1 << 16,
            File::open(&args.file).with_context(|| format!("cannot open '{}'", args.file))?,
        ))
    };
    let mut cap = Capture::open(input).with_context(|| format!("reading '{}'", args.file))?;
    let filter = args.filter.to_filter();
    filter.to_kernel(true)?; // the same limits as live mode
    let format = if args.json { Format::Json } else { Format::Text };
    let limit = args.count.unwrap_or(u64::MAX);
    let sample = u64::from(filter.sample_every.max(1));
    let mut out = Emitter::new(BufWriter::with_capacity(1 << 16, io::stdout().lock()), format);
    let mut s = ReadSummary::default();
    let mut ev = packet_event::default();
    let mut matched = 0u64;
    let mut result = Ok(());

    while s.printed < limit {
        let frame = match cap.next_frame() {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                result = Err(e);
                break;
            }
        };
        s.packets += 1;
        let (link, ts, iface) = (frame.link, frame.ts_ns, frame.iface);
        match decode::decode(link, frame.data, frame.orig_len, &mut ev) {
            Outcome::Skipped(why) => *s.skipped.entry(why.name()).or_default() += 1,
            Outcome::Malformed(r) => *s.malformed.entry(malformed_name(r)).or_default() += 1,
            Outcome::Tcp => {
                s.tcp += 1;
                if ev.malformed != 0 {
                    *s.malformed.entry(malformed_name(ev.malformed)).or_default() += 1;
                }
                let (src, dst) = (address(&ev, true), address(&ev, false));
                if !filter.matches(ev.sport, ev.dport, src, dst, ev.flags_raw) {
                    s.filtered_out += 1;
                    continue;
                }
                matched += 1;
                if (matched - 1) % sample != 0 {
                    continue;
                }
                ev.ifindex = iface;
                let packet = Packet {
                    ev: &ev,
                    ts_ns: ts,
                    payload: payload_of(&ev, frame.data, filter.snaplen),
                    frame: Some(s.packets),
                    ifname: frame.ifname,
                };
                if out.emit(&packet).is_err() {
                    break; // stdout closed
                }
                s.printed += 1;
            }
        }
    }
    let _ = out.flush();
    eprintln!("{}", s.line());
    result.with_context(|| format!("reading '{}'", args.file))
}

fn address(ev: &packet_event, src: bool) -> std::net::IpAddr {
    let raw = if src { &ev.src } else { &ev.dst };
    if ev.ip_version == 4 {
        std::net::IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
    } else {
        std::net::IpAddr::from(*raw)
    }
}
