//! The subcommands: each wires the kernel side to an output.

pub mod agent;
pub mod bench;
pub mod conns;
pub mod demo;
pub mod guard;
pub mod l7;
pub mod latency;
pub mod read;
pub mod rules;
pub mod stats;
pub mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;

pub use crate::view::ingress::Session;

/// Tells the user (on stderr) what is attached where. Tests and scripts
/// wait for this line: it is printed once the hook is live.
pub fn announce(session: &Session, doing: &str) {
    let id = session.link.id().map_or("?".into(), |i| i.to_string());
    eprintln!("tcpscope: {doing} on {} (link id {id}); Ctrl-C to stop", session.description());
}

/// Prints which views the kernel refused, so nobody mistakes silence for
/// "nothing happened".
pub fn report_unavailable(lc: &crate::bpf::lifecycle::Lifecycle) {
    for (view, why) in &lc.unavailable {
        eprintln!("tcpscope: {view} unavailable: {why}");
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

/// Set by SIGHUP once `reload_flag` was asked for: read the configuration
/// again instead of stopping.
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sighup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst); // async-signal-safe: one atomic store
}

/// Makes SIGHUP set the returned flag instead of stopping (call it after
/// `stop_flag`, whose handler it replaces for SIGHUP alone).
pub fn reload_flag() -> &'static AtomicBool {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGHUP, on_sighup as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    &RELOAD
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
