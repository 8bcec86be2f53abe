//! Each connection's client stream, from its SYN until its first message is
//! identified or given up on: segments placed by sequence number (out of
//! order ones wait, retransmitted ones add only what is new), at most
//! MAX_STREAM bytes and MAX_SEGMENTS segments. Once a connection is done
//! its stream is let go, and its later packets cost two failed hash
//! lookups. Every give-up is counted by reason.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::custom::Protocols;
use super::{identify_with, Identified, L7, MAX_STREAM};
use crate::types::packet_event;

/// Segments with payload kept per stream before giving up.
pub const MAX_SEGMENTS: u32 = 64;
/// Connections followed at once; past this the stalest is given up.
pub const MAX_CONNS: usize = 65536;
/// A stream with no new client byte for this long is given up (ns).
pub const IDLE_NS: u64 = 30_000_000_000;

const SYN: u16 = 0x02;
const RST: u16 = 0x04;
const FIN: u16 = 0x01;
const ACK: u16 = 0x10;

/// One connection's hint, with its endpoints (src is the client).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Record {
    pub ts_ns: u64,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Live: the connection's key, as `watch --json` and `conns --json`
    /// give it (netns/local:port-peer:port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<String>,
    pub l7: L7,
}

type Key = (IpAddr, u16, IpAddr, u16);

impl Record {
    fn new(key: Key, ts_ns: u64, l7: L7) -> Self {
        Record { ts_ns, src: key.0, sport: key.1, dst: key.2, dport: key.3, conn: None, l7 }
    }
}

struct Stream {
    isn: u32,
    data: Vec<u8>,
    pending: BTreeMap<u32, Vec<u8>>,
    segments: u32,
    last_ns: u64,
}

#[derive(Default)]
pub struct Tracker {
    conns: HashMap<Key, Stream>,
    /// Give-ups by reason: closed, too_large, timeout, state_evicted.
    pub gave_up: BTreeMap<&'static str, u64>,
    /// Connections identified.
    pub identified: u64,
    /// Custom protocols, tried first.
    pub custom: Protocols,
    /// Records of streams given up to make room, until taken.
    evicted: Vec<Record>,
}

/// Streams let go at once when the table is full: one walk of the table
/// per this many new connections, not one per SYN.
const EVICT_BATCH: usize = MAX_CONNS / 16;

fn addr(version: u8, raw: &[u8; 16]) -> IpAddr {
    crate::model::address(version, raw)
}

impl Tracker {
    /// A tracker that tries `custom` protocols before the built-in ones.
    pub fn with_protocols(custom: Protocols) -> Self {
        Tracker { custom, ..Default::default() }
    }

    /// Lets the stream go: its record, identified after all if it closed
    /// with its last bytes, or given up on for `why`.
    fn give_up(&mut self, key: Key, why: &'static str, ts_ns: u64) -> Option<Record> {
        let s = self.conns.remove(&key)?;
        let closed = why == "closed";
        let mut l7 = match identify_with(&self.custom, &s.data, key.3, true) {
            Identified::Done(l7) if closed && l7.proto != "unknown" => {
                // Whole after all (the close came with the last bytes).
                self.identified += 1;
                return Some(Record::new(key, ts_ns, *l7));
            }
            Identified::Done(l7) => *l7,
            Identified::More => L7 { proto: "unknown".into(), ..Default::default() },
        };
        l7.gave_up = Some(why);
        *self.gave_up.entry(why).or_insert(0) += 1;
        Some(Record::new(key, ts_ns, l7))
    }

    /// One packet (its decoded event and payload); returns the connection's
    /// record once it is identified or given up on.
    pub fn packet(&mut self, ev: &packet_event, ts_ns: u64, payload: &[u8]) -> Option<Record> {
        let (src, dst) = (addr(ev.ip_version, &ev.src), addr(ev.ip_version, &ev.dst));
        let key = (src, ev.sport, dst, ev.dport);
        if ev.flags_raw & (SYN | ACK) == SYN {
            if self.conns.len() >= MAX_CONNS {
                self.evict(ts_ns);
            }
            self.conns.insert(key, Stream::new(ev.seq, ts_ns));
            return None;
        }
        let reverse = (dst, ev.dport, src, ev.sport);
        let (key, from_client) = if self.conns.contains_key(&key) {
            (key, true)
        } else if self.conns.contains_key(&reverse) {
            (reverse, false)
        } else {
            return None;
        };
        let s = self.conns.get_mut(&key)?;
        let ends = ev.flags_raw & (FIN | RST) != 0;
        if from_client && !payload.is_empty() {
            s.last_ns = ts_ns;
            let off = ev.seq.wrapping_sub(s.isn.wrapping_add(1));
            if off > MAX_STREAM as u32 * 4 {
                // Before the stream's start (or wildly after): not ours to place.
            } else {
                s.segments += 1;
                s.place(off, payload);
                if s.data.len() >= MAX_STREAM
                    || s.segments > MAX_SEGMENTS
                    || s.pending.len() > MAX_SEGMENTS as usize
                {
                    return self.give_up(key, "too_large", ts_ns);
                }
                if let Identified::Done(l7) = identify_with(&self.custom, &s.data, key.3, false) {
                    self.conns.remove(&key);
                    self.identified += 1;
                    return Some(Record::new(key, ts_ns, *l7));
                }
            }
        }
        if ends {
            return self.give_up(key, "closed", ts_ns);
        }
        None
    }

    /// Makes room: the EVICT_BATCH stalest streams are given up
    /// (`state_evicted`).
    fn evict(&mut self, ts_ns: u64) {
        let mut by_age: Vec<(u64, Key)> = self.conns.iter().map(|(k, s)| (s.last_ns, *k)).collect();
        let n = EVICT_BATCH.min(by_age.len());
        if n < by_age.len() {
            by_age.select_nth_unstable(n);
        }
        for (_, k) in by_age.into_iter().take(n) {
            if let Some(r) = self.give_up(k, "state_evicted", ts_ns) {
                self.evicted.push(r);
            }
        }
    }

    /// Whether the stream of this connection (client, then server) is
    /// followed, its first message still to come.
    pub fn follows(&self, key: Key) -> bool {
        self.conns.contains_key(&key)
    }

    /// The records of streams given up to make room since the last call.
    pub fn take_evicted(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.evicted)
    }

    /// Streams idle past IDLE_NS at `now_ns` are given up.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Record> {
        let idle: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.last_ns) > IDLE_NS)
            .map(|(k, _)| *k)
            .collect();
        idle.into_iter().filter_map(|k| self.give_up(k, "timeout", now_ns)).collect()
    }

    /// The end of the input: every stream still waiting is given up
    /// (`timeout`: its first message did not come whole in time).
    pub fn finish(&mut self, now_ns: u64) -> Vec<Record> {
        let mut out = self.take_evicted();
        let mut keys: Vec<(u64, Key)> = self.conns.iter().map(|(k, s)| (s.last_ns, *k)).collect();
        keys.sort();
        out.extend(keys.into_iter().filter_map(|(_, k)| self.give_up(k, "timeout", now_ns)));
        out
    }
}

impl Stream {
    fn new(isn: u32, ts_ns: u64) -> Self {
        Stream { isn, data: Vec::new(), pending: BTreeMap::new(), segments: 0, last_ns: ts_ns }
    }

    /// Places `payload` at stream offset `off`: what is new is appended, or
    /// kept until the bytes before it come.
    fn place(&mut self, off: u32, payload: &[u8]) {
        let have = self.data.len() as u32;
        let end = off.saturating_add(payload.len() as u32);
        if end <= have {
            return; // a retransmission of what is here
        }
        if off > have {
            self.pending.entry(off).or_insert_with(|| payload.to_vec());
            return;
        }
        self.data.extend_from_slice(&payload[(have - off) as usize..]);
        while let Some((&o, _)) = self.pending.first_key_value() {
            if o > self.data.len() as u32 {
                break;
            }
            let (o, p) = self.pending.pop_first().unwrap_or_default();
            let have = self.data.len() as u32;
            if o + p.len() as u32 > have {
                self.data.extend_from_slice(&p[(have - o) as usize..]);
            }
        }
        self.data.truncate(MAX_STREAM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sport: u16, dport: u16, seq: u32, flags: u16, from_client: bool) -> packet_event {
        let mut e = packet_event { ip_version: 4, seq, flags_raw: flags, ..Default::default() };
        let (c, s) = ([198, 18, 0, 1], [198, 18, 0, 2]);
        let (a, b) = if from_client { (c, s) } else { (s, c) };
        e.src[..4].copy_from_slice(&a);
        e.dst[..4].copy_from_slice(&b);
        (e.sport, e.dport) = if from_client { (sport, dport) } else { (dport, sport) };
        e
    }

    const REQ: &[u8] = b"GET /x HTTP/1.1\r\nHost: h.example\r\nUser-Agent: t\r\n\r\n";

    /// The request in `cuts` pieces, sent in `order`, some twice.
    fn run(order: &[usize], cuts: &[usize]) -> Record {
        let mut t = Tracker::default();
        assert!(t.packet(&ev(40000, 80, 1000, SYN, true), 1, &[]).is_none());
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(REQ.len());
        let pieces: Vec<(u32, &[u8])> =
            bounds.windows(2).map(|w| (1001 + w[0] as u32, &REQ[w[0]..w[1]])).collect();
        for (n, i) in order.iter().enumerate() {
            let (seq, p) = pieces[*i];
            if let Some(r) = t.packet(&ev(40000, 80, seq, ACK, true), 10 + n as u64, p) {
                assert_eq!(n, order.len() - 1, "identified before the last piece came");
                return r;
            }
        }
        panic!("not identified: {order:?}");
    }

    #[test]
    fn split_reordered_and_retransmitted_segments_are_reassembled() {
        let cuts = [5, 20, 40];
        for order in [&[0, 1, 2, 3][..], &[3, 1, 0, 2], &[0, 0, 2, 1, 1, 3], &[2, 3, 1, 0]] {
            let r = run(order, &cuts);
            assert_eq!(
                (r.l7.proto.as_ref(), r.l7.host.as_deref(), r.l7.path.as_deref()),
                ("http", Some("h.example"), Some("/x"))
            );
            assert_eq!((r.sport, r.dport), (40000, 80));
        }
    }

    #[test]
    fn give_ups_are_counted_by_reason() {
        let mut t = Tracker::default();
        // Sends nothing, then closes.
        t.packet(&ev(40001, 80, 5, SYN, true), 1, &[]);
        let r = t.packet(&ev(40001, 80, 6, FIN | ACK, true), 2, &[]).unwrap();
        assert_eq!((r.l7.proto.as_ref(), r.l7.gave_up), ("unknown", Some("closed")));
        // A header that never ends: too large.
        t.packet(&ev(40002, 80, 0, SYN, true), 1, &[]);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_STREAM, b'a');
        let mut out = None;
        for (i, chunk) in big.chunks(1400).enumerate() {
            out = out.or(t.packet(&ev(40002, 80, 1 + (i * 1400) as u32, ACK, true), 2, chunk));
        }
        assert_eq!(out.unwrap().l7.gave_up, Some("too_large"));
        // Half a ClientHello, then silence: timeout at the end.
        t.packet(&ev(40003, 443, 0, SYN, true), 1, &[]);
        t.packet(&ev(40003, 443, 1, ACK, true), 2, &[22, 3, 1, 2, 0, 1, 0]);
        assert!(t.expire(2 + IDLE_NS / 2).is_empty());
        let late = t.expire(3 + IDLE_NS);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].l7.gave_up, Some("timeout"));
        assert_eq!(t.gave_up, BTreeMap::from([("closed", 1), ("timeout", 1), ("too_large", 1)]));
        // A full table lets the stalest go in a batch, given up and counted.
        let mut t = Tracker::default();
        for i in 0..MAX_CONNS as u32 + 1 {
            let mut e = ev((i % 60000) as u16, 80, 0, SYN, true);
            e.src[2] = (i / 60000) as u8;
            t.packet(&e, u64::from(i), &[]);
        }
        let evicted = t.take_evicted();
        assert_eq!(evicted.len(), EVICT_BATCH);
        assert!(evicted.iter().all(|r| r.l7.gave_up == Some("state_evicted") && r.ts_ns == MAX_CONNS as u64));
        assert!(
            evicted
                .iter()
                .all(|r| usize::from(r.sport) < EVICT_BATCH && r.src == IpAddr::from([198, 18, 0, 1])),
            "the stalest go"
        );
        assert_eq!(t.gave_up.get("state_evicted"), Some(&(EVICT_BATCH as u64)));
        assert_eq!(t.conns.len(), MAX_CONNS - EVICT_BATCH + 1);
        let mut t = Tracker::default();
        // The server's reset ends a stream too.
        t.packet(&ev(40004, 80, 0, SYN, true), 1, &[]);
        let r = t.packet(&ev(40004, 80, 0, RST | ACK, false), 2, &[]).unwrap();
        assert_eq!(r.l7.gave_up, Some("closed"));
    }
}
