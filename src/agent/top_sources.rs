//! Top sources: each window, the K sources with the most packets and the K
//! with the most SYNs, from the kernel's count-min sketch and candidate
//! table (bpf/top_sources_kern.h) of every interface, summed; what the top
//! K leave is "other". Both are then zeroed for the next window. Packets
//! that arrive between the read and the zeroing (microseconds) are counted
//! in neither window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags};

use crate::bpf::types::{top_counts, top_key, top_sketch};
use crate::view::ingress::Session;

// SAFETY: plain integers and byte arrays, explicit padding.
unsafe impl plain::Plain for top_key {}
// SAFETY: two u64.
unsafe impl plain::Plain for top_counts {}

/// One window's ranking.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ranking {
    pub packets: Vec<(IpAddr, u64)>,
    pub packets_other: u64,
    pub syns: Vec<(IpAddr, u64)>,
    pub syns_other: u64,
}

pub struct TopSources {
    pub k: usize,
    window: Duration,
    started: Instant,
}

fn address(k: &top_key) -> Option<IpAddr> {
    matches!(k.family, 4 | 6).then(|| crate::model::address(k.family, &k.addr))
}

/// The first `k` of `counts` by count (ties by address, for stable
/// output), and the rest's sum out of `total`.
fn rank(counts: &HashMap<IpAddr, u64>, k: usize, total: u64) -> (Vec<(IpAddr, u64)>, u64) {
    let mut v: Vec<(IpAddr, u64)> = counts.iter().filter(|(_, n)| **n > 0).map(|(a, n)| (*a, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    let top: u64 = v.iter().map(|(_, n)| n).sum();
    (v, total.saturating_sub(top))
}

impl TopSources {
    pub fn new(k: usize, window: Duration) -> Self {
        TopSources { k, window, started: Instant::now() }
    }

    pub fn due(&self) -> bool {
        self.started.elapsed() >= self.window
    }

    /// Reads and zeroes every session's sketch and candidates; ranks them.
    pub fn collect<'a>(&mut self, sessions: impl Iterator<Item = &'a Session>) -> Ranking {
        self.started = Instant::now();
        let (mut packets, mut syns) = (HashMap::new(), HashMap::new());
        let (mut total_packets, mut total_syns) = (0u64, 0u64);
        let zero = 0u32.to_ne_bytes();
        for s in sessions {
            let maps = &s.skel.maps;
            let empty = vec![0u8; std::mem::size_of::<top_sketch>()];
            if let Ok(Some(bytes)) = maps.top_sketch.lookup(&zero, MapFlags::ANY) {
                // The first row: one cell per packet counted.
                let row = crate::bpf::types::top_sources_limits::TOP_WIDTH.0 as usize;
                for cell in bytes.chunks_exact(8).take(row) {
                    total_packets += u64::from(u32::from_ne_bytes(cell[..4].try_into().unwrap_or([0; 4])));
                    total_syns += u64::from(u32::from_ne_bytes(cell[4..].try_into().unwrap_or([0; 4])));
                }
            }
            let keys: Vec<Vec<u8>> = maps.top_candidates.keys().collect();
            for key in &keys {
                let (mut k, mut v) = (top_key::default(), top_counts::default());
                let Ok(Some(val)) = maps.top_candidates.lookup(key, MapFlags::ANY) else { continue };
                if plain::copy_from_bytes(&mut k, key).is_err()
                    || plain::copy_from_bytes(&mut v, &val).is_err()
                {
                    continue;
                }
                if let Some(a) = address(&k) {
                    *packets.entry(a).or_insert(0) += v.packets;
                    *syns.entry(a).or_insert(0) += v.syns;
                }
            }
            for key in &keys {
                let _ = maps.top_candidates.delete(key);
            }
            let _ = maps.top_sketch.update(&zero, &empty, MapFlags::ANY);
        }
        let (p, po) = rank(&packets, self.k, total_packets);
        let (s, so) = rank(&syns, self.k, total_syns);
        Ranking { packets: p, packets_other: po, syns: s, syns_other: so }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_k_and_the_rest() {
        let a = |n: u8| IpAddr::from([198, 18, 0, n]);
        let counts: HashMap<IpAddr, u64> = [(a(1), 50), (a(2), 500), (a(3), 5), (a(4), 50), (a(5), 0)].into();
        let (top, other) = rank(&counts, 2, 700);
        assert_eq!(top, vec![(a(2), 500), (a(1), 50)], "ties broken by address");
        assert_eq!(other, 150);
        let (top, other) = rank(&counts, 10, 605);
        assert_eq!((top.len(), other), (4, 0), "no zero rows");
    }
}
