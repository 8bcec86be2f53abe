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

    /// Tells the user (on stderr) what is attached where. Tests and scripts
    /// wait for this line: it is printed once the hook is live.
    pub fn announce(&self, doing: &str) {
        let id = self.link.id().map_or("?".into(), |i| i.to_string());
        eprintln!("tcpscope: {doing} on {} (link id {id}); Ctrl-C to stop", self.link.description);
    }
}

/// The threads that asked for the stop flag: setting it unparks them.
static WAKE_ON_STOP: std::sync::Mutex<Vec<std::thread::Thread>> = std::sync::Mutex::new(Vec::new());

/// Set by SIGINT, SIGTERM and SIGHUP; loops poll it and return normally, so
/// that every link is dropped (detached) on the way out. Setting it also
/// unparks each thread that asked for it: such a thread may wait in
/// `thread::park_timeout` (or `sleep_unless_stopped`) for as long as it
/// likes instead of waking every few ms to look (each wake-up of a thread
/// costs CPU: 25-55 us on the development VM).
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    if let Ok(mut threads) = WAKE_ON_STOP.lock() {
        let me = std::thread::current();
        if !threads.iter().any(|t| t.id() == me.id()) {
            threads.push(me);
        }
    }
    if let Some(f) = FLAG.get() {
        return Ok(f.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // ctrlc calls this on its own thread, not in the signal handler: the
    // lock is allowed.
    ctrlc::set_handler(move || {
        f.store(true, Ordering::SeqCst);
        for thread in WAKE_ON_STOP.lock().iter().flat_map(|threads| threads.iter()) {
            thread.unpark();
        }
    })
    .map_err(|e| anyhow::anyhow!("installing the signal handler: {e}"))?;
    let _ = FLAG.set(flag.clone());
    Ok(flag)
}

/// Sleeps until `deadline`, or less if `stop` (from `stop_flag`, asked for
/// on this thread) is set meanwhile.
pub fn sleep_unless_stopped(stop: &AtomicBool, deadline: std::time::Instant) {
    // park_timeout may also return early for no reason: look again.
    while !stop.load(Ordering::SeqCst) {
        let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { break };
        std::thread::park_timeout(left);
    }
}

/// As `sleep_unless_stopped`, waking every 500 ms to ask `session` whether
/// its interface is still there: an error as soon as it is gone.
pub fn sleep_while_present(stop: &AtomicBool, deadline: std::time::Instant, session: &Session) -> Result<()> {
    let step = std::time::Duration::from_millis(500);
    loop {
        session.check_present()?;
        let now = std::time::Instant::now();
        if now >= deadline || stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        sleep_unless_stopped(stop, deadline.min(now + step));
    }
}

/// Whether whoever read our standard output has gone (`| head -1` exited):
/// a pipe whose reader closed polls as an error at once, so a command that
/// waits for something to print learns it without writing.
pub fn stdout_closed() -> bool {
    let mut pfd = libc::pollfd { fd: 1, events: 0, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Offset that turns CLOCK_MONOTONIC (bpf_ktime_get_ns) into wall-clock ns.
pub fn monotonic_to_realtime_offset() -> u64 {
    use crate::bpf::clock_ns;
    clock_ns(libc::CLOCK_REALTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC))
}
