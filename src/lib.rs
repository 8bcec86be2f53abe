//! tcpscope: an eBPF inspector of incoming TCP traffic.
//!
//! Data flows one way: kernel programs (`bpf/`) → ring-buffer events
//! ([`bpf`]) → owned records ([`model`]) → presentation ([`output`]).
//! The commands in [`cmd`] wire those together; [`cli`] only parses.

// The packet side without BPF, under its old paths.
pub use tcpscope_wire::{capture, decode, model, testpkt};

pub mod agent;
pub mod bench;
pub mod bpf;
pub mod cli;
pub mod cmd;
pub mod conn;
pub mod detect;
pub mod filter;
pub mod histogram;
pub mod names;
pub mod output;
pub mod policy;
pub mod rule_target;
pub mod testhost;
pub mod view;
pub mod workload;
