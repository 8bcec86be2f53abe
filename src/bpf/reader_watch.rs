//! The thread that watches `conns`' reader. The reader sleeps between
//! passes over the event slots, longer the fewer events come; a CPU with a
//! quarter of its slots unread rings a doorbell (a BPF ring buffer), and the
//! watch wakes the reader at once: a burst after a quiet spell must not fill
//! the slots before the next pass.
//!
//! With CAP_SYS_NICE the reader also reads at idle CPU priority
//! (SCHED_IDLE) while it keeps up, so that on a busy host the reading waits
//! for a CPU with nothing else to do instead of taking turns with the
//! programs it traces: a reader at normal priority preempts whichever of
//! them is about to run, while the other waits on it. Side by side in bench
//! conns (21 rounds each), the idle reader came out ahead in 7 runs of 8: by
//! 1-6% with client and server on two CPUs (one run 3% behind), by about 1%
//! placed by the scheduler; with both on one CPU the reader has the other
//! to itself either way. The watch, at normal priority, raises it back
//! while it falls behind, and lowers it again once it has kept up for
//! 200 ms: a saturated host makes events come later, not get lost.
//!
//! Behind means: a ring not answered within PROMPT (an idle reader woken
//! onto a busy CPU waited there 20 ms, until the scheduler moved it, and
//! the slots of a CPU writing 96,000 events/s filled meanwhile), half of
//! some CPU's slots unread, or events waiting with none read for
//! STARVED_WATCHES.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, RingBuffer};

use crate::bpf::conn_slots::{Backlog, SLOTS_PER_CPU};
use crate::bpf::preflight::{has_capability, CAP_SYS_NICE};

const WATCH: Duration = Duration::from_millis(20);
/// How soon a woken reader must have read something.
const PROMPT: Duration = Duration::from_millis(1);
/// Raise the reader at this many events waiting on one CPU...
const BEHIND: u64 = SLOTS_PER_CPU / 2;
/// ...or after this many watches in a row with events waiting and none read.
const STARVED_WATCHES: u32 = 5;
/// Lower it after this many watches in a row with at most KEPT_UP waiting.
const KEPT_UP_WATCHES: u32 = 10;
const KEPT_UP: u64 = SLOTS_PER_CPU / 4;

pub struct ReaderWatch {
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

impl ReaderWatch {
    /// Starts watching the slot heads and the doorbell for the calling
    /// thread (the reader), which waits with `thread::park_timeout` between
    /// passes. It goes to idle priority only with CAP_SYS_NICE (which
    /// coming back up takes) and when it was started at normal priority
    /// (not under chrt or a real-time policy).
    pub fn start(heads: &impl MapCore, doorbell: &impl MapCore) -> Result<Self> {
        let backlog = Backlog::new(heads)?;
        // Its records carry nothing to read (the events are in the slots).
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder.add(doorbell, |_: &[u8]| 0).context("setting up the event doorbell")?;
        let doorbell = builder.build().context("setting up the event doorbell")?;
        // SAFETY: gettid and sched_getscheduler have no preconditions.
        let tid = unsafe { libc::gettid() };
        let idle = has_capability(CAP_SYS_NICE)
            && unsafe { libc::sched_getscheduler(tid) } == libc::SCHED_OTHER
            && set_idle(tid, true);
        let done = Arc::new(AtomicBool::new(false));
        let done_watch = done.clone();
        let reader = thread::current();
        let watch = thread::Builder::new().name("reader-watch".into()).spawn(move || {
            // Made by the reader, it starts at the reader's priority.
            // SAFETY: gettid has no preconditions.
            if idle && !set_idle(unsafe { libc::gettid() }, false) {
                return 0; // cannot be: CAP_SYS_NICE let the reader go idle
            }
            watch(&backlog, &doorbell, &reader, idle.then_some(tid), &done_watch)
        });
        match watch {
            Ok(watch) => Ok(Self { tid, done, watch: Some(watch) }),
            Err(e) => {
                set_idle(tid, false);
                Err(e).context("starting the reader's watch thread")
            }
        }
    }

    /// Stops watching and puts the reader back to normal priority for good
    /// (the final drain); how many times it had to be raised.
    pub fn finish(mut self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        let raised = self.watch.take().and_then(|w| w.join().ok()).unwrap_or(0);
        set_idle(self.tid, false);
        raised
    }
}

/// `idle`: the reader's thread, if it may be moved between idle and normal
/// priority (it starts idle).
fn watch(
    backlog: &Backlog,
    doorbell: &RingBuffer,
    reader: &thread::Thread,
    idle: Option<libc::pid_t>,
    done: &AtomicBool,
) -> u64 {
    let (mut is_idle, mut raised, mut starved, mut kept_up) = (idle.is_some(), 0, 0, 0);
    let (_, mut last_read) = backlog.now();
    let mut raise = |is_idle: &mut bool, kept_up: &mut u32| {
        if let Some(tid) = idle.filter(|_| *is_idle) {
            if set_idle(tid, false) {
                (*is_idle, *kept_up) = (false, 0);
                raised += 1;
            }
        }
    };
    while !done.load(Ordering::Relaxed) {
        // A positive count is a ring; after an error (not expected) the
        // timed watch goes on.
        let rings = doorbell.poll_raw(WATCH);
        if rings < 0 && rings != -libc::EINTR {
            thread::sleep(WATCH);
        } else if rings > 0 {
            let (_, read) = backlog.now();
            reader.unpark();
            thread::sleep(PROMPT);
            if backlog.now().1 == read {
                raise(&mut is_idle, &mut kept_up);
                reader.unpark();
            }
        }
        let Some(tid) = idle else { continue };
        let (behind, read) = backlog.now();
        if is_idle {
            starved = if behind > 0 && read == last_read { starved + 1 } else { 0 };
            if behind >= BEHIND || starved >= STARVED_WATCHES {
                raise(&mut is_idle, &mut kept_up);
            }
        } else {
            kept_up = if behind <= KEPT_UP { kept_up + 1 } else { 0 };
            if kept_up >= KEPT_UP_WATCHES && set_idle(tid, true) {
                (is_idle, starved) = (true, 0);
            }
        }
        last_read = read;
    }
    raised
}
