//! Latency histograms' maths: the bounds of the kernel's log-linear
//! buckets (lat_slot in bpf/lifecycle.bpf.c) and quantiles.

use crate::bpf::lifecycle::types::{self, latency_hist};

/// [lower, upper) bounds of histogram slot `s` (see lat_slot in the kernel).
pub fn slot_bounds(s: usize) -> (u64, u64) {
    let sub_bits = types::latency_limits::LAT_SUB_BITS.0 as usize;
    let per = 1usize << sub_bits;
    if s < per {
        return (s as u64, s as u64 + 1);
    }
    let msb = s / per + sub_bits - 1;
    let sub = (s % per) as u64;
    let shift = (msb - sub_bits) as u32;
    let lo = (per as u64 + sub) << shift;
    (lo, lo + (1u64 << shift))
}

/// The q-quantile (0..1) of a histogram: the midpoint of the bucket that
/// holds it, never above the recorded maximum.
pub fn quantile(h: &latency_hist, q: f64) -> u64 {
    if h.count == 0 {
        return 0;
    }
    let target = ((h.count as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (s, n) in h.slots.iter().enumerate() {
        seen += n;
        if seen >= target {
            let (lo, hi) = slot_bounds(s);
            return ((lo + hi) / 2).min(h.max);
        }
    }
    h.max
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same slot function as the kernel's lat_slot, for checking bounds.
    fn slot(v: u64) -> usize {
        let bits = types::latency_limits::LAT_SUB_BITS.0 as usize;
        let per = 1u64 << bits;
        if v < per {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros() as usize;
        let sub = ((v >> (msb - bits)) & (per - 1)) as usize;
        (msb - bits + 1) * per as usize + sub
    }

    #[test]
    fn bounds_hold_their_values() {
        for v in [0u64, 1, 3, 4, 7, 8, 9, 15, 16, 1000, 50_000_000, 1 << 40, u64::MAX >> 1] {
            let (lo, hi) = slot_bounds(slot(v));
            assert!(lo <= v && v < hi, "{v}: [{lo},{hi})");
            assert!(hi - lo <= lo.max(8) / 8 + 1, "bucket width within 1/8: {v}");
        }
    }

    #[test]
    fn quantiles_within_a_bucket() {
        let mut h = latency_hist::default();
        for v in [48_000_000u64, 50_000_000, 51_000_000, 52_000_000, 49_000_000] {
            h.slots[slot(v)] += 1;
            h.count += 1;
            h.max = h.max.max(v);
        }
        let p50 = quantile(&h, 0.5) as f64;
        assert!((p50 - 50e6).abs() / 50e6 < 0.07, "{p50}");
        assert_eq!(quantile(&h, 1.0), 52_000_000);
    }
}
