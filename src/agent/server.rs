//! The agent's HTTP endpoint: `/metrics` in Prometheus' text format 0.0.4,
//! `/healthz`. tiny_http, on its own thread; the registry is shared, and
//! the agent's loop keeps its values current.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use prometheus::{Encoder, Registry, TextEncoder};

/// A running endpoint; dropping it stops the thread.
pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub addr: std::net::SocketAddr,
}

impl Server {
    /// Listens on `addr` (an error names the address: taken, or not ours).
    pub fn start(addr: &str, registry: Registry) -> Result<Self> {
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
                        let encoder = TextEncoder::new();
                        let _ = encoder.encode(&registry.gather(), &mut body);
                        let header = tiny_http::Header::from_bytes("Content-Type", encoder.format_type())
                            .expect("a valid header");
                        tiny_http::Response::from_data(body).with_header(header)
                    }
                    "/healthz" => tiny_http::Response::from_data(b"ok\n".to_vec()),
                    _ => tiny_http::Response::from_data(b"not found: try /metrics\n".to_vec())
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
