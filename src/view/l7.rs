//! The L7 view: the ingress program with L7 hints on (bpf/l7_kern.h), on
//! one interface. The kernel copies the first bytes of each incoming
//! connection's client stream; this view reassembles and names them
//! ([`Tracker`]), and lets the kernel forget each flow as soon as its
//! record is made, so that the connection's later packets cost the kernel
//! one failed lookup. It never prints; dropping it detaches.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::MapCore;

use crate::bpf::types::{l7_chunk, l7_flow, l7_flow_key, l7_limits, packet_event};
use crate::bpf::{self, LoadOptions};
use crate::cli::AttachArgs;
use crate::view::ingress::Session;
use tcpscope_wire::l7::custom::Protocols;
use tcpscope_wire::l7::track::{Record, Tracker, IDLE_NS, MAX_CONNS};
use tcpscope_wire::model::raw_address;

// The kernel copies what the tracker keeps, and follows as many flows.
const _: () = assert!(l7_limits::L7_MAX_STREAM.0 as usize == tcpscope_wire::l7::MAX_STREAM);
const _: () = assert!(l7_limits::L7_MAX_FLOWS.0 as usize == MAX_CONNS);

const EVENT_SIZE: usize = std::mem::size_of::<packet_event>();
const CHUNK_SIZE: usize = std::mem::size_of::<l7_chunk>();

/// How often streams idle past the tracker's timeout are given up.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often the kernel's table is swept of flows user space never heard
/// of: a walk of up to 65,536 keys, each looked up.
const SWEEP: Duration = Duration::from_secs(10);

/// One record of the ring: a flow's packet, and the payload bytes copied
/// with it.
struct Piece {
    ev: packet_event,
    ts_ns: u64,
    data: Vec<u8>,
}

/// What the view has done so far; nothing it let go is left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L7Stats {
    /// Connections whose first message was named.
    pub identified: u64,
    /// Connections given up on, by reason (closed, too_large, timeout,
    /// state_evicted).
    pub gave_up: BTreeMap<&'static str, u64>,
    /// SYNs the kernel could not follow: its flow table was full.
    pub untracked: u64,
    /// SYNs not followed because no socket would take them (closed ports).
    pub not_listening: u64,
    /// Flows the kernel followed whose SYN never reached user space (the
    /// ring buffer was full): swept from the table after the idle timeout.
    pub swept: u64,
    /// Records the kernel could not write: the ring buffer was full.
    pub events_lost: u64,
    /// Packets the kernel saw on the interface.
    pub packets: u64,
}

/// The L7 records of an ingress session loaded with L7 hints on (its
/// `events` ring and `l7_flows` table): a session's own view, or the
/// agent's beside its counters. Drop it before the session.
pub struct L7Reader {
    ring: libbpf_rs::RingBuffer<'static>,
    queue: Rc<RefCell<Vec<Piece>>>,
    tracker: Tracker,
    clock_offset: u64,
    next_housekeeping: Instant,
    next_sweep: Instant,
    swept: u64,
}

impl L7Reader {
    /// Reads `session`'s records, naming them with `custom` protocols
    /// first, then the built-in ones.
    pub fn new(session: &Session, custom: Protocols) -> Result<Self> {
        let queue: Rc<RefCell<Vec<Piece>>> = Rc::default();
        let clock_offset = bpf::monotonic_to_realtime_offset();
        let q = queue.clone();
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&session.skel.maps.events, move |data: &[u8]| {
                if let Some(p) = decode(data, clock_offset) {
                    q.borrow_mut().push(p);
                }
                0
            })
            .context("setting up the ring buffer")?;
        let ring = builder.build().context("setting up the ring buffer")?;
        Ok(L7Reader {
            ring,
            queue,
            tracker: Tracker::with_protocols(custom),
            clock_offset,
            next_housekeeping: Instant::now() + HOUSEKEEPING,
            next_sweep: Instant::now() + SWEEP,
            swept: 0,
        })
    }

    /// Waits up to `timeout` for the kernel's records, and hands over each
    /// connection's record as it is made.
    pub fn poll(&mut self, session: &Session, timeout: Duration, mut take: impl FnMut(Record)) -> Result<()> {
        match self.ring.poll(timeout).and_then(|()| self.ring.consume()) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the ring buffer"),
        }
        let pieces = std::mem::take(&mut *self.queue.borrow_mut());
        for p in pieces {
            if let Some(r) = self.tracker.packet(&p.ev, p.ts_ns, &p.data) {
                done(session, r, &mut take);
            }
            for r in self.tracker.take_evicted() {
                done(session, r, &mut take);
            }
        }
        if Instant::now() >= self.next_housekeeping {
            self.next_housekeeping = Instant::now() + HOUSEKEEPING;
            let now = self.now_ns();
            for r in self.tracker.expire(now) {
                done(session, r, &mut take);
            }
        }
        if Instant::now() >= self.next_sweep {
            self.next_sweep = Instant::now() + SWEEP;
            self.sweep(session, self.now_ns());
        }
        Ok(())
    }

    /// The end: what came, then every stream still waiting, given up
    /// (`timeout`).
    pub fn finish(&mut self, session: &Session, mut take: impl FnMut(Record)) -> Result<()> {
        self.poll(session, Duration::ZERO, &mut take)?;
        let now = self.now_ns();
        for r in self.tracker.finish(now) {
            done(session, r, &mut take);
        }
        Ok(())
    }

    /// Now, on the records' clock (wall-clock ns).
    fn now_ns(&self) -> u64 {
        bpf::clock_ns(libc::CLOCK_MONOTONIC) + self.clock_offset
    }

    /// Flows in the kernel's table whose SYN user space never had (the
    /// ring was full), older than the idle timeout: deleted, and counted.
    /// A flow the tracker still follows is its to give up.
    fn sweep(&mut self, session: &Session, now_ns: u64) {
        let map = &session.skel.maps.l7_flows;
        let cutoff = now_ns.saturating_sub(IDLE_NS + self.clock_offset);
        let tracker = &self.tracker;
        let stale: Vec<Vec<u8>> = map
            .keys()
            .filter(|k| {
                let mut key = l7_flow_key::default();
                if plain::copy_from_bytes(&mut key, k).is_err() || tracker.follows(flow_of_key(&key)) {
                    return false;
                }
                let mut v = l7_flow::default();
                match map.lookup(k, libbpf_rs::MapFlags::ANY) {
                    Ok(Some(bytes)) => plain::copy_from_bytes(&mut v, &bytes).is_ok() && v.syn_ns < cutoff,
                    _ => false,
                }
            })
            .collect();
        for k in stale {
            if map.delete(&k).is_ok() {
                self.swept += 1;
            }
        }
    }

    /// What the reader has done, with the session's counters now.
    pub fn stats(&self, session: &Session) -> Result<L7Stats> {
        let c = session.counters()?;
        Ok(L7Stats {
            identified: self.tracker.identified,
            gave_up: self.tracker.gave_up.clone(),
            untracked: c.0.l7_untracked,
            not_listening: c.0.l7_not_listening,
            swept: self.swept,
            events_lost: c.0.events_lost,
            packets: c.0.packets,
        })
    }
}

/// A connection's record is made: the kernel stops copying its bytes.
fn done(session: &Session, mut r: Record, take: &mut impl FnMut(Record)) {
    let key = flow_key(&r);
    r.conn = crate::view::ingress::own_netns()
        .map(|ns| tcpscope_wire::model::conn_key(ns, r.dst, r.dport, r.src, r.sport));
    // SAFETY: l7_flow_key is plain data.
    let bytes = unsafe { plain::as_bytes(&key) };
    // Gone already when the client's FIN or RST ended it in the kernel.
    let _ = session.skel.maps.l7_flows.delete(bytes);
    take(r);
}

/// The L7 view: one interface's ingress program with L7 hints on, and its
/// records. Dropping it detaches.
pub struct L7View {
    // The reader first: its ring goes before the programs it reads.
    reader: L7Reader,
    pub session: Session,
}

impl L7View {
    /// Loads the ingress program with L7 hints on, for connections to
    /// `ports` (all if empty), and attaches it to the interface.
    pub fn start(args: &AttachArgs, ports: &[u16], custom: Protocols, ringbuf_bytes: u32) -> Result<Self> {
        let filter = crate::filter::EventFilter { dports: ports.to_vec(), ..Default::default() };
        let config = filter.to_kernel(false)?;
        let session = start_session(args, config, ringbuf_bytes)?;
        Ok(L7View { reader: L7Reader::new(&session, custom)?, session })
    }

    /// Waits up to `timeout`, and hands over each connection's record.
    pub fn poll(&mut self, timeout: Duration, take: impl FnMut(Record)) -> Result<()> {
        self.reader.poll(&self.session, timeout, take)
    }

    /// What came, then every stream still waiting, given up.
    pub fn finish(&mut self, take: impl FnMut(Record)) -> Result<()> {
        self.reader.finish(&self.session, take)
    }

    pub fn stats(&self) -> Result<L7Stats> {
        self.reader.stats(&self.session)
    }
}

/// An ingress session with `config` and L7 hints on.
pub fn start_session(
    args: &AttachArgs,
    mut config: crate::bpf::types::tcpscope_config,
    ringbuf_bytes: u32,
) -> Result<Session> {
    config.l7 = 1;
    let opts = LoadOptions { ringbuf_bytes, ..LoadOptions::new(config) };
    Session::start_with(args, args.hook(), opts)
}

/// A kernel key's flow, as the tracker keys it.
fn flow_of_key(k: &l7_flow_key) -> FlowKey {
    let a = |raw: &[u8; 16]| tcpscope_wire::model::address(k.ip_version, raw);
    (a(&k.src), k.sport, a(&k.dst), k.dport)
}

/// The kernel's key of a record's flow.
fn flow_key(r: &Record) -> l7_flow_key {
    let (ip_version, src) = raw_address(r.src);
    let (_, dst) = raw_address(r.dst);
    l7_flow_key { src, dst, sport: r.sport, dport: r.dport, ip_version, ..Default::default() }
}

/// One L7 record of the ring: its event (the sequence number moved to the
/// chunk's first byte) and the bytes it carries (none for a bare SYN, FIN
/// or RST).
pub fn decode_l7(data: &[u8]) -> Option<(packet_event, &[u8])> {
    use std::mem::offset_of;
    let mut ev = packet_event::default();
    plain::copy_from_bytes(&mut ev, data.get(..EVENT_SIZE)?).ok()?;
    if data.len() < CHUNK_SIZE {
        return Some((ev, &[]));
    }
    let word = |at: usize| data.get(at..at + 4).map(|w| u32::from_ne_bytes(w.try_into().unwrap_or_default()));
    let (off, len) = (word(offset_of!(l7_chunk, data_off))?, word(offset_of!(l7_chunk, data_len))?);
    let at = offset_of!(l7_chunk, data);
    let bytes = data.get(at..at + (len as usize).min(l7_limits::L7_CHUNK.0 as usize))?;
    // The chunk's first byte is data_off bytes into the segment.
    ev.seq = ev.seq.wrapping_add(off);
    Some((ev, bytes))
}

fn decode(data: &[u8], clock_offset: u64) -> Option<Piece> {
    let (ev, bytes) = decode_l7(data)?;
    Some(Piece { ts_ns: ev.ts_ns + clock_offset, ev, data: bytes.to_vec() })
}

/// L7 hints beside packet events (`watch --l7`): the L7 records of a
/// session's ring are named here; the caller keeps what it needs of them
/// (a [`Recent`] map of its own output, say).
pub struct L7Join {
    tracker: Tracker,
}

impl L7Join {
    pub fn new(custom: Protocols) -> Self {
        L7Join { tracker: Tracker::with_protocols(custom) }
    }

    /// An L7 record of `session`'s ring (`ev.l7` set): the connections'
    /// records made (the kernel then stops copying their bytes).
    pub fn take(&mut self, session: &Session, ev: &packet_event, ts_ns: u64, data: &[u8]) -> Vec<Record> {
        let mut out = Vec::new();
        let made: Vec<Record> =
            self.tracker.packet(ev, ts_ns, data).into_iter().chain(self.tracker.take_evicted()).collect();
        for r in made {
            done(session, r, &mut |r| out.push(r));
        }
        out
    }

    /// Connections named and given up on so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.tracker.identified, self.tracker.gave_up.values().sum())
    }
}

/// A connection's key as a record gives it: client, then server.
pub type FlowKey = (IpAddr, u16, IpAddr, u16);

/// The client-to-server key of a packet from the client.
pub fn packet_key(ev: &packet_event) -> FlowKey {
    let a = |raw: &[u8; 16]| tcpscope_wire::model::address(ev.ip_version, raw);
    (a(&ev.src), ev.sport, a(&ev.dst), ev.dport)
}

/// What is kept of the most recently named connections, at most MAX_CONNS
/// of them: the oldest go first.
pub struct Recent<K, V> {
    known: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Clone, V> Default for Recent<K, V> {
    fn default() -> Self {
        Recent { known: HashMap::new(), order: VecDeque::new() }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> Recent<K, V> {
    pub fn insert(&mut self, key: K, value: V) {
        if self.known.len() >= MAX_CONNS {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
        if self.known.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.known.get(key)
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}
