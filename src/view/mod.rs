//! Views: components that start kernel programs, yield typed records and
//! snapshot counters, and detach when dropped. None of them prints; the
//! commands in [`crate::cmd`] wire them to outputs.

pub mod capture;
pub mod conns;
pub mod guard;
pub mod ingress;
pub mod l7;
pub mod latency;
