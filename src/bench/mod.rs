//! Benchmarks (`tcpscope bench ...`): figures side by side in one run,
//! never asserted (this is a noisy VM). Each reports its lines to a
//! [`Report`]; the command prints them.

pub mod agent;
pub mod conns;
pub mod l7;
pub mod programs;
pub mod read;
pub mod rules;

/// Where a benchmark's figures go.
pub trait Report {
    /// One line of figures; false once nobody reads them (stdout closed).
    fn line(&mut self, line: &str) -> bool;
    /// What the benchmark is doing, or a caveat: not a figure.
    fn note(&mut self, note: &str);
}

/// The median of some measurements (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A thread that reads a ring buffer as fast as it can and counts the
/// records, as a reader keeping up would. `finish` stops it and says
/// whether it failed; dropping it stops it too.
pub struct RingDrain {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Records read so far.
    pub read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RingDrain {
    pub fn start<T: std::fmt::Debug>(map: &libbpf_rs::MapImpl<'_, T>) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let handle =
            libbpf_rs::MapHandle::try_from(map).map_err(|e| anyhow::anyhow!("ring buffer handle: {e}"))?;
        let (s, r) = (stop.clone(), read.clone());
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let mut b = libbpf_rs::RingBufferBuilder::new();
            b.add(&handle, |_d: &[u8]| {
                r.fetch_add(1, Ordering::Relaxed);
                0
            })?;
            let ring = b.build()?;
            while !s.load(Ordering::Relaxed) {
                let _ = ring.poll(std::time::Duration::from_millis(10));
                let _ = ring.consume(); // records submitted without a wakeup
            }
            let _ = ring.consume();
            Ok(())
        });
        Ok(RingDrain { stop, read, thread: Some(thread) })
    }

    /// Records read so far.
    pub fn count(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the thread once it has read what is there.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.end()
    }

    fn end(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow::anyhow!("ring buffer reader panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for RingDrain {
    fn drop(&mut self) {
        let _ = self.end();
    }
}
