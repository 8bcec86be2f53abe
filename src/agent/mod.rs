//! The always-on agent's parts: its metrics, and the HTTP endpoint that
//! serves them. The command (`cmd/agent.rs`) starts the views and feeds
//! their totals and events in.

pub mod histograms;
pub mod metrics;
pub mod server;
