//! The always-on agent's parts: its configuration, the interfaces it
//! follows, its metrics and the endpoint that serves them, its rules and
//! the control API that edits them (with its client, for `block` and
//! `allow`), and the service that runs them all (`service::Agent`).

pub mod client;
pub mod config;
pub mod control;
pub mod histograms;
pub mod interfaces;
pub mod metrics;
pub mod rules;
pub mod server;
pub mod service;
pub mod top_sources;
