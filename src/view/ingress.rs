//! The ingress view: the XDP or TC program attached to one interface, its
//! ring buffer's records and its counters. Starting it checks privileges,
//! loads and attaches, and returns every error; dropping it detaches (the
//! link first, then the programs). It never prints.

use anyhow::{Context, Result};

use crate::bpf::attach::{self, AttachedLink, HookKind};
use crate::bpf::counters::Counters;
use crate::bpf::{self, types, IngressSkel, LoadOptions};
use crate::cli::AttachArgs;
use crate::output::Packet;

/// Loaded ingress programs plus the link that keeps one attached. Dropping
/// it detaches (the link first, then the programs).
pub struct Session {
    pub link: AttachedLink,
    pub skel: IngressSkel<'static>,
    pub ifname: String,
    pub ifindex: u32,
    pub hook: HookKind,
    pub presence: attach::Presence,
}

impl Session {
    /// Checks privileges and the interface, loads with `config`, attaches.
    pub fn start(args: &AttachArgs, config: types::tcpscope_config, ringbuf_bytes: u32) -> Result<Self> {
        Self::start_on(args, args.hook(), config, ringbuf_bytes)
    }

    /// As `start`, with the hook chosen by the caller.
    pub fn start_on(
        args: &AttachArgs,
        hook: HookKind,
        config: types::tcpscope_config,
        ringbuf_bytes: u32,
    ) -> Result<Self> {
        let opts = LoadOptions { ringbuf_bytes, ..LoadOptions::new(config) };
        Self::start_with(args, hook, opts)
    }

    /// As `start_on`, with every load option (guard: detectors, pins).
    pub fn start_with(args: &AttachArgs, hook: HookKind, mut opts: LoadOptions) -> Result<Self> {
        let config = opts.config;
        crate::ensure_usage!(
            args.xdp_mode.is_none() || hook == HookKind::Xdp,
            "--xdp-mode applies to the XDP hook only: add --hook xdp, or drop --xdp-mode"
        );
        bpf::preflight::check_privileges()?;
        if let Some(ns) = &args.netns {
            attach::enter_netns(ns)?;
        }
        let ifindex = attach::ifindex(&args.iface)?;
        opts.btf = args.btf.clone();
        opts.only = Some(hook);
        let skel = bpf::load_ingress(&opts)?;
        let link = match hook {
            HookKind::Xdp => attach::attach_xdp(
                &skel.progs.tcpscope_xdp,
                &args.iface,
                args.xdp_mode.unwrap_or(attach::XdpMode::Native),
            )?,
            // A guard goes first: a program attached before it must not be
            // able to pass a packet its rules drop.
            HookKind::Tc => attach::attach_tc(
                &skel.progs.tcpscope_tc,
                &args.iface,
                if config.policy != 0 { attach::TcPlace::First } else { attach::TcPlace::Last },
            )?,
        };
        let presence = attach::Presence::new(&args.iface, ifindex);
        Ok(Session { link, skel, ifname: args.iface.clone(), ifindex, hook, presence })
    }

    /// An error once the interface (or its network namespace) is gone: the
    /// kernel has detached the program, and there is nothing left to do.
    pub fn check_present(&self) -> Result<()> {
        match self.presence.gone() {
            Some(why) => Err(anyhow::anyhow!("{why}: stopped; start again once it is back")),
            None => Ok(()),
        }
    }

    /// The TC programs that run before this session's (a guard attached at
    /// the chain's head and finds some when another program was later put
    /// in front of it). Empty at XDP, which has no chain.
    pub fn tc_programs_ahead(&self) -> Result<Vec<u32>> {
        if self.hook != HookKind::Tc {
            return Ok(Vec::new());
        }
        let ours = self.link.prog_id().ok_or_else(|| anyhow::anyhow!("reading our TC link's program id"))?;
        let chain = attach::tc_chain(self.ifindex)?;
        Ok(chain.iter().take_while(|id| **id != ours).copied().collect())
    }
}

/// The kernel wakes a reader only when 64 KiB of events wait (see
/// WAKEUP_BYTES in bpf/ingress.bpf.c); polling this often bounds the
/// latency of a quiet stream.
const POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The ring buffer of a session, read into records.
pub struct Records<'a> {
    ring: libbpf_rs::RingBuffer<'a>,
}

impl Records<'_> {
    /// Waits up to 50 ms for records to come, and hands over every one
    /// that has (poll() returns early when the kernel wakes it, and does
    /// not read what came without a wakeup, hence consume() after).
    pub fn poll(&self) -> Result<()> {
        match self.ring.poll(POLL).and_then(|()| self.ring.consume()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e).context("reading the ring buffer"),
        }
    }

    /// Hands over what came since the last poll, without waiting.
    pub fn drain(&self) {
        let _ = self.ring.consume();
    }
}

impl Session {
    /// The packet records of this session's ring buffer, each handed to
    /// `take` as it is read: wall-clock times, and payload bytes up to
    /// `snaplen` if the filter asked for them.
    pub fn records<'a>(
        &'a self,
        snaplen: u32,
        mut take: impl FnMut(LiveRecord<'_>) + 'a,
    ) -> Result<Records<'a>> {
        let offset = bpf::monotonic_to_realtime_offset();
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.events, move |data: &[u8]| {
                if let Some(r) = decode_record(data, offset, snaplen) {
                    take(r);
                }
                0
            })
            .context("setting up the ring buffer")?;
        Ok(Records { ring: builder.build().context("setting up the ring buffer")? })
    }

    /// The programs' counters, now.
    pub fn counters(&self) -> Result<Counters> {
        bpf::read_counters(&self.skel)
    }

    /// How the link is described to the user: hook, mode and interface.
    pub fn description(&self) -> &str {
        &self.link.description
    }
}

const EVENT_SIZE: usize = std::mem::size_of::<types::packet_event>();

/// One ring-buffer record, decoded.
pub struct LiveRecord<'a> {
    pub ev: types::packet_event,
    /// Wall-clock time, ns since the epoch.
    pub ts_ns: u64,
    /// The frame's first bytes, if the kernel copied them (else empty).
    pub frame: &'a [u8],
    /// The payload bytes the user asked for (--snaplen).
    pub payload: Option<&'a [u8]>,
}

impl LiveRecord<'_> {
    pub fn packet<'a>(&'a self, ifname: &'a str) -> Packet<'a> {
        Packet {
            ev: &self.ev,
            ts_ns: self.ts_ns,
            payload: self.payload,
            frame: None,
            netns: own_netns(),
            ifname,
        }
    }
}

/// The inode of this process's network namespace, which is the namespace of
/// the interface `watch` attached to.
pub fn own_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    static NS: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *NS.get_or_init(|| std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino() as u32))
}

/// Decodes one ring-buffer record: an event, maybe followed by the frame's
/// first bytes.
pub fn decode_record(data: &[u8], clock_offset: u64, snaplen: u32) -> Option<LiveRecord<'_>> {
    if data.get(std::mem::offset_of!(types::packet_event, l7)).is_some_and(|l7| *l7 != 0) {
        // An L7 hints record (`watch --l7`): its bytes as the payload.
        let (ev, bytes) = crate::view::l7::decode_l7(data)?;
        return Some(LiveRecord { ts_ns: ev.ts_ns + clock_offset, ev, frame: &[], payload: Some(bytes) });
    }
    let mut ev = types::packet_event::default();
    plain::copy_from_bytes(&mut ev, data.get(..EVENT_SIZE)?).ok()?;
    let frame = data.get(EVENT_SIZE..EVENT_SIZE + usize::from(ev.cap_len)).unwrap_or(&[]);
    let payload = tcpscope_wire::payload_of(&ev, frame, snaplen);
    Some(LiveRecord { ts_ns: ev.ts_ns + clock_offset, ev, frame, payload })
}
