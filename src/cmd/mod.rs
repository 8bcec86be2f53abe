//! The subcommands: each wires the kernel side to an output.

pub mod bench;
pub mod bench_conns;
pub mod bench_read;
pub mod bench_rules;
pub mod conns;
pub mod demo;
pub mod guard;
pub mod latency;
pub mod read;
pub mod reader_watch;
pub mod stats;
pub mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;

use crate::bpf::attach::{self, AttachedLink, HookKind};
use crate::bpf::{self, types, IngressSkel, LoadOptions};
use crate::cli::AttachArgs;

/// Loaded ingress programs plus the link that keeps one attached. Dropping
/// it detaches (the link first, then the programs).
pub struct Session {
    pub link: AttachedLink,
    pub skel: IngressSkel<'static>,
    pub ifname: String,
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
        Self::start_with(args, hook, config, ringbuf_bytes, Default::default())
    }

    /// As `start_on`, with detector thresholds (guard).
    pub fn start_with(
        args: &AttachArgs,
        hook: HookKind,
        config: types::tcpscope_config,
        ringbuf_bytes: u32,
        detect: types::detect_config,
    ) -> Result<Self> {
        bpf::preflight::check_privileges()?;
        if let Some(ns) = &args.netns {
            attach::enter_netns(ns)?;
        }
        attach::ifindex(&args.iface)?;
        let mut opts = LoadOptions::new(config);
        opts.ringbuf_bytes = ringbuf_bytes;
        opts.btf = args.btf.clone();
        opts.detect = detect;
        let skel = bpf::load_ingress(&opts)?;
        let link = match hook {
            HookKind::Xdp => attach::attach_xdp(&skel.progs.tcpscope_xdp, &args.iface, args.xdp_mode)?,
            HookKind::Tc => attach::attach_tc(&skel.progs.tcpscope_tc, &args.iface)?,
        };
        Ok(Session { link, skel, ifname: args.iface.clone() })
    }

    /// Tells the user (on stderr) what is attached where. Tests and scripts
    /// wait for this line: it is printed once the hook is live.
    pub fn announce(&self, doing: &str) {
        let id = self.link.id().map_or("?".into(), |i| i.to_string());
        eprintln!("tcpscope: {doing} on {} (link id {id}); Ctrl-C to stop", self.link.description);
    }
}

/// Set by SIGINT, SIGTERM and SIGHUP; loops poll it and return normally, so
/// that every link is dropped (detached) on the way out.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    if let Some(f) = FLAG.get() {
        return Ok(f.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || f.store(true, Ordering::SeqCst))
        .map_err(|e| anyhow::anyhow!("installing the signal handler: {e}"))?;
    let _ = FLAG.set(flag.clone());
    Ok(flag)
}

/// Offset that turns CLOCK_MONOTONIC (bpf_ktime_get_ns) into wall-clock ns.
pub fn monotonic_to_realtime_offset() -> u64 {
    use crate::bpf::clock_ns;
    clock_ns(libc::CLOCK_REALTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC))
}
