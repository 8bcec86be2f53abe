//! The always-on agent's parts: the interfaces it follows, its metrics, and
//! the HTTP endpoint that serves them. The command (`cmd/agent.rs`) starts
//! them with the connection view and feeds their totals and events in.

pub mod histograms;
pub mod interfaces;
pub mod metrics;
pub mod server;
