//! The agent's HTTP endpoint: `/metrics` in Prometheus' text format 0.0.4,
//! or in OpenMetrics 1.0 when the Accept header asks for it (as Prometheus
//! does); `/healthz`, and `/readyz` (as the control API's). tiny_http, on its own thread; the registry is shared,
//! and the agent's loop keeps its values current.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use prometheus::{Encoder, Registry, TextEncoder};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text format 0.0.4 as OpenMetrics 1.0 (the `prometheus` crate writes
/// only the former). They differ, for what the agent exports, in three
/// things: a counter's family is named without its `_total` suffix in HELP
/// and TYPE (its samples keep it), HELP escapes `"` too, and the text ends
/// with `# EOF`.
pub fn openmetrics(text: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for l in text.lines() {
        if let Some(name) = l.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter")) {
            counters.insert(name);
        }
    }
    let family = |name: &str| -> String {
        match name.strip_suffix("_total") {
            Some(f) if counters.contains(name) => f.to_string(),
            _ => name.to_string(),
        }
    };
    let mut out = String::with_capacity(text.len() + 8);
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {}\n", family(name), help.replace('"', "\\\"")));
        } else if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            out.push_str(&format!("# TYPE {} {kind}\n", family(name)));
        } else if !l.is_empty() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A running endpoint; dropping it stops the thread.
pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub addr: std::net::SocketAddr,
}

impl Server {
    /// Listens on `addr` (an error names the address: taken, or not ours).
    /// `/readyz` answers 200 once `ready` is set (every configured view
    /// attached), 503 before.
    pub fn start(addr: &str, registry: Registry, ready: Arc<std::sync::atomic::AtomicBool>) -> Result<Self> {
        let server = tiny_http::Server::http(addr).map_err(|e| {
            anyhow!("cannot listen on {addr}: {e} (is another agent running? choose another with --listen)")
        })?;
        let bound = server.server_addr().to_ip().ok_or_else(|| anyhow!("{addr} is not an IP address"))?;
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let url = req.url().split('?').next().unwrap_or("");
                let response = match url {
                    "/metrics" => {
                        let mut body = Vec::new();
                        let _ = TextEncoder::new().encode(&registry.gather(), &mut body);
                        let open = req.headers().iter().any(|h| {
                            h.field.equiv("Accept")
                                && h.value.as_str().contains("application/openmetrics-text")
                        });
                        let (body, kind) = if open {
                            (openmetrics(&String::from_utf8_lossy(&body)).into_bytes(), OPENMETRICS)
                        } else {
                            (body, prometheus::TEXT_FORMAT)
                        };
                        let header =
                            tiny_http::Header::from_bytes("Content-Type", kind).expect("a valid header");
                        tiny_http::Response::from_data(body).with_header(header)
                    }
                    "/healthz" => tiny_http::Response::from_data(b"ok\n".to_vec()),
                    "/readyz" if ready.load(std::sync::atomic::Ordering::SeqCst) => {
                        tiny_http::Response::from_data(b"ready\n".to_vec())
                    }
                    "/readyz" => tiny_http::Response::from_data(
                        b"not ready: not every configured view is attached yet\n".to_vec(),
                    )
                    .with_status_code(503),
                    _ => tiny_http::Response::from_data(
                        b"not found: try /metrics, /healthz or /readyz\n".to_vec(),
                    )
                    .with_status_code(404),
                };
                let _ = req.respond(response);
            }
        });
        Ok(Server { server, thread: Some(thread), addr: bound })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
