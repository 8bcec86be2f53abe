//! The client side of the control API, for `tcpscope block` and `allow`:
//! one HTTP/1.1 request on the agent's Unix socket, its answer parsed by
//! httparse.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::agent::control::{ListedRule, NewRule};
use crate::policy::{List, Rule};

/// The body of `GET /metrics` from the agent's endpoint at `addr`.
pub fn scrape_metrics(addr: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    // HTTP/1.0: the body comes whole, never in chunks (tiny_http chunks
    // large bodies for HTTP/1.1 clients).
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&answer) {
        Ok(httparse::Status::Complete(n)) if resp.code == Some(200) => {
            let chunked = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.eq_ignore_ascii_case(b"chunked")
            });
            anyhow::ensure!(!chunked, "{addr} answered in chunks to an HTTP/1.0 request");
            Ok(String::from_utf8_lossy(&answer[n..]).into_owned())
        }
        _ => bail!("{addr} did not answer GET /metrics with 200"),
    }
}

/// A running agent, reached through its control socket.
pub struct AgentClient {
    socket: PathBuf,
    /// The one interface to act on; none: every interface it guards.
    pub interface: Option<String>,
}

/// Largest answer read: a list of a million rules.
const MAX_ANSWER: u64 = 512 << 20;

impl AgentClient {
    /// The agent answering on `socket`, if one does. A socket nobody
    /// answers on (left by a killed agent) is no agent.
    pub fn find(socket: &Path, interface: Option<String>) -> Option<Self> {
        UnixStream::connect(socket).ok()?;
        Some(AgentClient { socket: socket.to_path_buf(), interface })
    }

    /// Sends one request; the answer's JSON, or its error line.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to the agent at {}", self.socket.display()))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut answer).context("reading the agent's answer")?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let start = match resp.parse(&answer) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => bail!("the agent at {} gave an answer that is not HTTP", self.socket.display()),
        };
        let code = resp.code.unwrap_or(0);
        let text = String::from_utf8_lossy(&answer[start..]);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.trim().to_string()));
        if !(200..300).contains(&code) {
            let why = v
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| text.trim().to_string(), str::to_string);
            bail!("the agent says: {why}");
        }
        Ok(v)
    }

    /// Whether the agent guards `iface`.
    pub fn guards(&self, iface: &str) -> Result<bool> {
        let v = self.request("GET", "/v1/interfaces", None)?;
        Ok(v["interfaces"].as_array().is_some_and(|l| {
            l.iter().any(|i| i["name"].as_str() == Some(iface) && i["guarded"].as_bool() == Some(true))
        }))
    }

    pub fn add_many(&self, rules: &[Rule], comment: Option<&str>) -> Result<usize> {
        let rules: Vec<NewRule> =
            rules.iter().map(|r| NewRule::from_rule(r, comment.map(str::to_string))).collect();
        let v =
            self.request("POST", "/v1/rules", Some(&json!({"rules": rules, "interface": self.interface})))?;
        Ok(v["added"].as_u64().unwrap_or(0) as usize)
    }

    pub fn delete(&self, r: &Rule) -> Result<()> {
        let mut body = serde_json::to_value(crate::policy::RuleSpec::of(r))?;
        body["list"] = crate::agent::rules::list_name(r.list).into();
        body["interface"] = json!(self.interface);
        self.request("DELETE", "/v1/rules", Some(&body)).map(drop)
    }

    pub fn flush(&self, list: List) -> Result<usize> {
        let body = json!({"list": crate::agent::rules::list_name(list), "interface": self.interface});
        let v = self.request("POST", "/v1/rules/flush", Some(&body))?;
        Ok(v["removed"].as_u64().unwrap_or(0) as usize)
    }

    pub fn list(&self) -> Result<Vec<ListedRule>> {
        let path = match &self.interface {
            Some(i) => format!("/v1/rules?interface={i}"),
            None => "/v1/rules".to_string(),
        };
        let v = self.request("GET", &path, None)?;
        serde_json::from_value(v["rules"].clone()).map_err(|e| anyhow!("the agent's rule list: {e}"))
    }
}
