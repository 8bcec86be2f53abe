//! The offline view: a capture file's packets, decoded and filtered as the
//! kernel would, handed over in order. Two threads, because on this path
//! formatting costs about three times decoding: a reader thread reads,
//! decodes and filters into batches; the caller's thread takes each packet.
//! Memory stays constant: a few batches in flight. It never prints.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::mpsc;

use anyhow::Result;

use crate::bpf::types::packet_event;
use crate::capture::Capture;
use crate::decode::{self, Outcome};
use crate::filter::EventFilter;
use crate::names::malformed_name;
use crate::output::Packet;
use tcpscope_wire::payload_of;

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

/// Packets decoded by the reader thread, for the writer. Bounded, reused.
struct Batch {
    /// Interface name of every packet in the batch (a new batch starts when
    /// it changes, which only multi-interface pcapng files do).
    ifname: String,
    items: Vec<Item>,
    /// Payload bytes of all items, back to back.
    payload: Vec<u8>,
}

struct Item {
    ev: packet_event,
    ts_ns: u64,
    frame: u64,
    payload: Option<(usize, usize)>,
}

const BATCH: usize = 2048;

/// Reads `cap` to its end (or `limit` matching packets), calling `take`
/// with each packet that passes `filter`, in order, until it returns false
/// (its reader has gone). Returns what was found, `printed` counting the
/// packets `take` accepted, and the capture's own error if it ended in one.
/// A capture file opened and its header read: `file`, or standard input
/// for `-`. Errors name the file.
pub fn open(file: &str) -> Result<Capture<Box<dyn Read + Send>>> {
    use anyhow::Context;
    let input: Box<dyn Read + Send> = if file == "-" {
        Box::new(std::io::BufReader::with_capacity(1 << 16, std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::with_capacity(
            1 << 16,
            std::fs::File::open(file).with_context(|| format!("cannot open '{file}'"))?,
        ))
    };
    Capture::open(input).with_context(|| format!("reading '{file}'"))
}

pub fn read_packets<R: Read + Send + 'static>(
    cap: Capture<R>,
    filter: EventFilter,
    limit: u64,
    mut take: impl FnMut(&Packet<'_>) -> bool,
) -> Result<(ReadSummary, Result<()>)> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Batch>(4);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Batch>(8);
    for _ in 0..6 {
        let _ = empty_tx.send(Batch {
            ifname: String::new(),
            items: Vec::with_capacity(BATCH),
            payload: Vec::new(),
        });
    }
    let reader = std::thread::spawn(move || decode_all(cap, filter, limit, full_tx, empty_rx));
    let mut printed = 0u64;
    'batches: for batch in full_rx.iter() {
        for it in &batch.items {
            let packet = Packet {
                ev: &it.ev,
                ts_ns: it.ts_ns,
                payload: it.payload.map(|(a, b)| &batch.payload[a..b]),
                frame: Some(it.frame),
                netns: None,
                ifname: &batch.ifname,
            };
            if !take(&packet) {
                break 'batches; // dropping the receivers stops the reader
            }
            printed += 1;
        }
        // The reader may have finished already (end of file): its batches
        // still queued in `full_rx` must be taken, so a failed return of
        // this empty batch is no reason to stop reading them.
        let _ = empty_tx.send(batch);
    }
    drop(full_rx);
    drop(empty_tx);
    let (mut summary, result) = reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    summary.printed = printed;
    Ok((summary, result))
}

/// The reader thread: capture → decode → filter → batches.
fn decode_all<R: Read>(
    mut cap: Capture<R>,
    filter: crate::filter::EventFilter,
    limit: u64,
    full: mpsc::SyncSender<Batch>,
    empty: mpsc::Receiver<Batch>,
) -> (ReadSummary, Result<()>) {
    let mut s = ReadSummary::default();
    let sample = u64::from(filter.sample_every.max(1));
    let (mut matched, mut sent) = (0u64, 0u64);
    let mut ev = packet_event::default();
    let Ok(mut batch) = empty.recv() else { return (s, Ok(())) };
    batch.items.clear();
    batch.payload.clear();
    let mut result = Ok(());
    while sent < limit {
        let frame = match cap.next_frame() {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                result = Err(e);
                break;
            }
        };
        s.packets += 1;
        match decode::decode(frame.link, frame.data, frame.orig_len, &mut ev) {
            Outcome::Skipped(why) => *s.skipped.entry(why.name()).or_default() += 1,
            Outcome::Malformed(r) => *s.malformed.entry(malformed_name(r)).or_default() += 1,
            Outcome::Tcp => {
                s.tcp += 1;
                if ev.malformed != 0 {
                    *s.malformed.entry(malformed_name(ev.malformed)).or_default() += 1;
                }
                if !filter.matches(ev.sport, ev.dport, address(&ev, true), address(&ev, false), ev.flags_raw)
                {
                    s.filtered_out += 1;
                    continue;
                }
                matched += 1;
                if (matched - 1) % sample != 0 {
                    continue;
                }
                if batch.items.len() == BATCH || (batch.ifname != frame.ifname && !batch.items.is_empty()) {
                    if full.send(batch).is_err() {
                        return (s, result);
                    }
                    let Ok(b) = empty.recv() else { return (s, result) };
                    batch = b;
                    batch.items.clear();
                    batch.payload.clear();
                }
                if batch.ifname != frame.ifname {
                    batch.ifname.clear();
                    batch.ifname.push_str(frame.ifname);
                }
                ev.ifindex = frame.iface;
                let payload = payload_of(&ev, frame.data, filter.snaplen).map(|p| {
                    let start = batch.payload.len();
                    batch.payload.extend_from_slice(p);
                    (start, batch.payload.len())
                });
                batch.items.push(Item { ev, ts_ns: frame.ts_ns, frame: s.packets, payload });
                sent += 1;
            }
        }
    }
    if !batch.items.is_empty() {
        let _ = full.send(batch);
    }
    (s, result)
}

fn address(ev: &packet_event, src: bool) -> std::net::IpAddr {
    crate::model::address(ev.ip_version, if src { &ev.src } else { &ev.dst })
}
