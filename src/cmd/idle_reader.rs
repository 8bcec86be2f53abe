//! `conns` reads its events at idle CPU priority (SCHED_IDLE) while it keeps
//! up, so that on a busy host the reading waits for a CPU with nothing else
//! to do instead of taking turns with the programs it traces: a reader at
//! normal priority preempts whichever of them is about to run, while the
//! other waits on it. Side by side in bench conns (21 rounds each), the
//! idle reader came out ahead in 7 runs of 8: by 1-6% with client and
//! server on two CPUs (one run 3% behind), by about 1% placed by the
//! scheduler; with both on one CPU the reader has the other to itself
//! either way. A watching thread at normal priority raises the reader back
//! while it falls behind (slots half full on some CPU, or events waiting
//! 100 ms with none read), so a saturated host makes events come later, not
//! get lost, and lowers it again once it has kept up for 200 ms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::bpf::conn_slots::{Backlog, SLOTS_PER_CPU};
use crate::bpf::preflight::{has_capability, CAP_SYS_NICE};

const WATCH: Duration = Duration::from_millis(20);
/// Raise the reader at this many events waiting on one CPU...
const BEHIND: u64 = SLOTS_PER_CPU / 2;
/// ...or after this many watches in a row with events waiting and none read.
const STARVED_WATCHES: u32 = 5;
/// Lower it after this many watches in a row with at most KEPT_UP waiting.
const KEPT_UP_WATCHES: u32 = 10;
const KEPT_UP: u64 = SLOTS_PER_CPU / 4;

pub struct IdleReader {
    tid: libc::pid_t,
    done: Arc<AtomicBool>,
    watch: Option<thread::JoinHandle<u64>>,
}

/// Thread `tid` to SCHED_IDLE or back to SCHED_OTHER (its nice value is
/// kept); false if the kernel refused.
fn set_idle(tid: libc::pid_t, idle: bool) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    // SAFETY: a plain syscall on a thread of this process, with a valid
    // parameter struct.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

impl IdleReader {
    /// Puts the calling thread (the reader) at idle priority and starts
    /// watching `backlog`. None, and the reader keeps the priority it was
    /// started with, without CAP_SYS_NICE (which coming back up takes) or
    /// when it was not started at normal priority (chrt, a real-time policy).
    pub fn start(backlog: Backlog) -> Option<Self> {
        if !has_capability(CAP_SYS_NICE) {
            return None;
        }
        // SAFETY: gettid and sched_getscheduler have no preconditions.
        let tid = unsafe { libc::gettid() };
        if unsafe { libc::sched_getscheduler(tid) } != libc::SCHED_OTHER {
            return None;
        }
        // The watch first: a thread inherits its maker's policy.
        let done = Arc::new(AtomicBool::new(false));
        let done_watch = done.clone();
        let watch = thread::Builder::new()
            .name("reader-watch".into())
            .spawn(move || watch(&backlog, tid, &done_watch))
            .ok()?;
        let reader = Self { tid, done, watch: Some(watch) };
        if !set_idle(tid, true) {
            reader.finish();
            return None;
        }
        Some(reader)
    }

    /// Back to normal priority for good (the final drain); how many times
    /// the reader had to be raised.
    pub fn finish(mut self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        let raised = self.watch.take().and_then(|w| w.join().ok()).unwrap_or(0);
        set_idle(self.tid, false);
        raised
    }
}

fn watch(backlog: &Backlog, tid: libc::pid_t, done: &AtomicBool) -> u64 {
    let (mut idle, mut raised, mut starved, mut kept_up) = (true, 0, 0, 0);
    let (_, mut last_read) = backlog.now();
    while !done.load(Ordering::Relaxed) {
        thread::sleep(WATCH);
        let (behind, read) = backlog.now();
        if idle {
            starved = if behind > 0 && read == last_read { starved + 1 } else { 0 };
            if (behind >= BEHIND || starved >= STARVED_WATCHES) && set_idle(tid, false) {
                (idle, kept_up) = (false, 0);
                raised += 1;
            }
        } else {
            kept_up = if behind <= KEPT_UP { kept_up + 1 } else { 0 };
            if kept_up >= KEPT_UP_WATCHES && set_idle(tid, true) {
                (idle, starved) = (true, 0);
            }
        }
        last_read = read;
    }
    raised
}
