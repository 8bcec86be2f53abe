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
