//! The agent's control API: HTTP and JSON on a Unix socket that only root
//! may use (by default `/run/tcpscope/agent.sock`), and optionally on TCP,
//! where every request must carry the bearer token. tiny_http, one thread
//! per listener. Rules are written to the guards' pinned maps directly,
//! and kept in the agent's rule store so that a guard started later gets
//! them too.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | /healthz | | `ok` |
//! | GET | /readyz | | 200 once every configured view is attached, else 503 |
//! | GET | /v1/interfaces | | `{"interfaces":[{"name","guarded"}]}` |
//! | GET | /v1/rules[?interface=I] | | `{"rules":[ListedRule]}` |
//! | POST | /v1/rules | `{"rules":[NewRule], "interface"?}` or one NewRule | `{"added":N}` |
//! | DELETE | /v1/rules | `{"list","cidr","port"?,"interface"?}`, or `"sni"`, `"host"` or `"http_method"` for `"cidr"` | `{"deleted":N}` |
//! | POST | /v1/rules/flush | `{"list","interface"?}` | `{"removed":N}` |
//! | GET | /v1/alerts[?limit=N] | | `{"alerts":[Alert]}`, oldest first |
//!
//! Errors answer 4xx with `{"error": "one line naming the fix"}`.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::agent::rules::{list_name, parse_list, RuleStore, StoredRule};
use crate::output::alert::Alert;
use crate::policy::RuleSpec;
use crate::policy::{PolicyMaps, Rule};

/// The default control socket.
pub const SOCKET: &str = "/run/tcpscope/agent.sock";
/// Recent alerts kept for `GET /v1/alerts`.
pub const RECENT_ALERTS: usize = 1024;
/// Largest request body: a bulk add of about 200,000 rules.
const MAX_BODY: u64 = 32 << 20;

/// What the control threads and the agent's loop share.
pub struct Shared {
    /// Guarded interfaces: (name, guard id).
    pub guarded: Mutex<Vec<(String, String)>>,
    /// Every interface the agent follows, guarded or not.
    pub interfaces: Mutex<Vec<String>>,
    pub store: Mutex<RuleStore>,
    pub alerts: Mutex<VecDeque<Alert>>,
    /// Set once every configured view is attached.
    pub ready: Arc<AtomicBool>,
    /// Rule changes made through the API, for the agent's log.
    pub changes: Mutex<Vec<Value>>,
}

impl Shared {
    pub fn new(store: RuleStore) -> Arc<Self> {
        Arc::new(Shared {
            guarded: Mutex::default(),
            interfaces: Mutex::default(),
            store: Mutex::new(store),
            alerts: Mutex::default(),
            ready: Arc::new(AtomicBool::new(false)),
            changes: Mutex::default(),
        })
    }

    pub fn push_alert(&self, a: Alert) {
        let mut q = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == RECENT_ALERTS {
            q.pop_front();
        }
        q.push_back(a);
    }
}

/// A rule to add, as the API takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewRule {
    pub list: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    /// "500ms", "30s", "10m", "2h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl NewRule {
    pub fn from_rule(r: &Rule, comment: Option<String>) -> Self {
        NewRule {
            list: list_name(r.list).into(),
            spec: RuleSpec::of(r),
            ttl: r.ttl.map(|t| format!("{}ms", t.as_millis())),
            comment,
        }
    }

    pub fn rule(&self) -> Result<Rule> {
        let list = parse_list(&self.list)?;
        let ttl = self
            .ttl
            .as_deref()
            .map(crate::policy::parse_duration)
            .transpose()
            .map_err(|e| anyhow!("ttl: {e}"))?;
        self.spec.rule(list, ttl).map_err(|e| anyhow!("{e}"))
    }
}

/// A rule as the API lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedRule {
    pub interface: String,
    pub list: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub hits: u64,
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// A rule to delete, or a list to flush.
#[derive(Debug, Deserialize)]
struct Which {
    list: String,
    #[serde(flatten)]
    spec: RuleSpec,
    #[serde(default)]
    interface: Option<String>,
}

/// The listeners; dropping them stops their threads and removes the socket.
pub struct Control {
    servers: Vec<(Arc<tiny_http::Server>, Option<JoinHandle<()>>)>,
    socket: PathBuf,
}

/// Where the TCP listener may answer: with a token, anywhere; without,
/// loopback only.
#[derive(Clone)]
pub struct TcpListen {
    pub addr: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for TcpListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TcpListen({}, token {})", self.addr, if self.token.is_some() { "set" } else { "none" })
    }
}

impl Control {
    /// Listens on `socket` (root-only), and on `tcp` if given. A socket
    /// left by an agent that was killed is replaced; a live agent's is not.
    pub fn start(socket: &Path, tcp: Option<TcpListen>, shared: Arc<Shared>) -> Result<Self> {
        if let Some(t) = &tcp {
            let addr: std::net::SocketAddr =
                t.addr.parse().map_err(|_| anyhow!("control listen address '{}': use IP:PORT", t.addr))?;
            if !addr.ip().is_loopback() && t.token.is_none() {
                bail!(
                    "the control API on {} would be reachable beyond this host without a token: give a token file, or listen on 127.0.0.1",
                    t.addr
                );
            }
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!(
                "another agent answers on {}: stop it, or give this one another control socket",
                socket.display()
            );
        }
        let _ = std::fs::remove_file(socket);
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Root-only from its first moment: made under a umask that leaves
        // others nothing, then set to 0600.
        // SAFETY: umask has no failure mode; restored at once.
        let old = unsafe { libc::umask(0o077) };
        let unix = tiny_http::Server::http_unix(socket);
        unsafe { libc::umask(old) };
        let unix = unix.map_err(|e| anyhow!("cannot listen on {}: {e}", socket.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        }
        let mut servers = vec![(Arc::new(unix), None)];
        let mut control = Control { servers: Vec::new(), socket: socket.to_path_buf() };
        if let Some(t) = tcp {
            let s = tiny_http::Server::http(&t.addr)
                .map_err(|e| anyhow!("cannot listen on {} for the control API: {e}", t.addr))?;
            servers.push((Arc::new(s), t.token.map(|t| format!("Bearer {t}"))));
        }
        for (server, token) in servers {
            let (s, shared) = (server.clone(), shared.clone());
            let thread = std::thread::spawn(move || {
                for mut req in s.incoming_requests() {
                    let (status, body) = if token.as_ref().is_some_and(|t| !authorized(&req, t)) {
                        (
                            401,
                            json!({"error": "a bearer token is needed: Authorization: Bearer <the token file's contents>"}),
                        )
                    } else {
                        answer(&mut req, &shared)
                    };
                    let text = if body.is_string() {
                        format!("{}\n", body.as_str().unwrap_or_default())
                    } else {
                        format!("{body}\n")
                    };
                    let kind = if body.is_string() { "text/plain" } else { "application/json" };
                    let header = tiny_http::Header::from_bytes("Content-Type", kind).expect("a valid header");
                    let _ = req.respond(
                        tiny_http::Response::from_string(text).with_status_code(status).with_header(header),
                    );
                }
            });
            control.servers.push((server, Some(thread)));
        }
        Ok(control)
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        for (s, t) in &mut self.servers {
            s.unblock();
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Compares the Authorization header with the token, in time that does
/// not depend on where they differ.
fn authorized(req: &tiny_http::Request, expected: &str) -> bool {
    let Some(h) = req.headers().iter().find(|h| h.field.equiv("Authorization")) else { return false };
    let given = h.value.as_str().as_bytes();
    let expected = expected.as_bytes();
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn query(url: &str, key: &str) -> Option<String> {
    url.split_once('?')?.1.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn bad(msg: impl std::fmt::Display) -> (u16, Value) {
    (400, json!({ "error": msg.to_string() }))
}

fn answer(req: &mut tiny_http::Request, shared: &Shared) -> (u16, Value) {
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    let method = req.method().as_str().to_string();
    let mut body = Vec::new();
    if req.as_reader().take(MAX_BODY + 1).read_to_end(&mut body).is_err() {
        return bad("could not read the request body");
    }
    if body.len() as u64 > MAX_BODY {
        return (
            413,
            json!({"error": format!("request body over {} MiB: send the rules in parts", MAX_BODY >> 20)}),
        );
    }
    let parsed = || -> std::result::Result<Value, (u16, Value)> {
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))
    };
    let outcome = match (method.as_str(), path) {
        ("GET", "/healthz") => return (200, json!("ok")),
        ("GET", "/readyz") => {
            return if shared.ready.load(Ordering::SeqCst) {
                (200, json!("ready"))
            } else {
                (503, json!("not ready: not every configured view is attached yet"))
            }
        }
        ("GET", "/v1/interfaces") => {
            let guarded = shared.guarded.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let all = shared.interfaces.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let list: Vec<Value> = all
                .iter()
                .map(|n| json!({"name": n, "guarded": guarded.iter().any(|(g, _)| g == n)}))
                .collect();
            return (200, json!({ "interfaces": list }));
        }
        ("GET", "/v1/alerts") => {
            let limit = query(&url, "limit").and_then(|l| l.parse().ok()).unwrap_or(RECENT_ALERTS);
            let q = shared.alerts.lock().unwrap_or_else(|e| e.into_inner());
            let skip = q.len().saturating_sub(limit);
            return (200, json!({ "alerts": q.iter().skip(skip).collect::<Vec<_>>() }));
        }
        ("GET", "/v1/rules") => list_rules(shared, query(&url, "interface").as_deref()),
        ("POST", "/v1/rules") => parsed().and_then(|v| add_rules(shared, v)),
        ("DELETE", "/v1/rules") => parsed().and_then(|v| delete_rule(shared, v, false)),
        ("POST", "/v1/rules/flush") => parsed().and_then(|v| delete_rule(shared, v, true)),
        (_, "/v1/rules" | "/v1/rules/flush" | "/healthz" | "/readyz" | "/v1/interfaces" | "/v1/alerts") => {
            Err((405, json!({"error": format!("{method} is not allowed on {path}")})))
        }
        _ => Err((
            404,
            json!({"error": format!("no {path}: see /v1/rules, /v1/alerts, /v1/interfaces, /healthz, /readyz")}),
        )),
    };
    outcome.unwrap_or_else(|e| e)
}

/// The pinned maps of each guarded interface `interface` selects (all, if
/// none), or an error naming what to do.
fn targets(
    shared: &Shared,
    interface: Option<&str>,
) -> std::result::Result<Vec<(String, PolicyMaps)>, (u16, Value)> {
    let guarded = shared.guarded.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if guarded.is_empty() {
        return Err((
            409,
            json!({"error": "the agent guards no interface: start it with --guard (or guard = true in its config)"}),
        ));
    }
    let chosen: Vec<_> = guarded.into_iter().filter(|(n, _)| interface.is_none_or(|i| i == n)).collect();
    if chosen.is_empty() {
        let i = interface.unwrap_or_default();
        return Err((
            404,
            json!({"error": format!("the agent does not guard '{i}': see GET /v1/interfaces")}),
        ));
    }
    chosen
        .into_iter()
        .map(|(n, id)| {
            PolicyMaps::open(Some(&id)).map(|m| (n, m)).map_err(|e| (500, json!({"error": format!("{e:#}")})))
        })
        .collect()
}

fn list_rules(shared: &Shared, interface: Option<&str>) -> std::result::Result<(u16, Value), (u16, Value)> {
    let mut out = Vec::new();
    for (name, maps) in targets(shared, interface)? {
        let (rules, _) = maps.list().map_err(|e| (500, json!({"error": format!("{e:#}")})))?;
        let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
        for r in rules {
            out.push(ListedRule {
                interface: name.clone(),
                list: list_name(r.rule.list).into(),
                spec: RuleSpec::of(&r.rule),
                hits: r.hits,
                expires_in_ms: r.expires_in.map(|d| d.as_millis() as u64),
                comment: store.comment(&r.rule, &name).map(str::to_string),
            });
        }
    }
    Ok((200, json!({ "rules": out })))
}

/// What a rule object may hold besides `extra` (serde's flatten cannot
/// refuse the rest): a misspelt field is an error, not a rule that covers
/// more than meant.
fn check_fields(v: &Value, extra: &[&str]) -> std::result::Result<(), (u16, Value)> {
    const FIELDS: [&str; 6] = ["list", "cidr", "port", "sni", "host", "http_method"];
    let Some(obj) = v.as_object() else { return Ok(()) };
    match obj.keys().find(|k| !FIELDS.contains(&k.as_str()) && !extra.contains(&k.as_str())) {
        Some(k) => Err(bad(format!(
            "unknown field '{k}': a rule takes {}",
            FIELDS.iter().chain(extra).copied().collect::<Vec<_>>().join(", ")
        ))),
        None => Ok(()),
    }
}

fn add_rules(shared: &Shared, v: Value) -> std::result::Result<(u16, Value), (u16, Value)> {
    let interface = v.get("interface").and_then(Value::as_str).map(str::to_string);
    match v.get("rules").and_then(Value::as_array) {
        Some(list) => {
            for item in list {
                check_fields(item, &["ttl", "comment"])?;
            }
        }
        None => check_fields(&v, &["ttl", "comment", "interface"])?,
    }
    let items: Vec<NewRule> = match v.get("rules") {
        Some(list) => serde_json::from_value(list.clone()),
        None => serde_json::from_value(v.clone()).map(|r| vec![r]),
    }
    .map_err(|e| bad(format!("a rule is {{\"list\":\"block\",\"cidr\":\"198.18.0.0/24\",\"port\"?,\"ttl\"?,\"comment\"?}} or {{\"list\":\"block\",\"sni\":\"*.example.com\",...}}: {e}")))?;
    let mut rules = Vec::new();
    for (i, item) in items.iter().enumerate() {
        rules.push(item.rule().map_err(|e| bad(format!("rule {}: {e:#}", i + 1)))?);
    }
    let targets = targets(shared, interface.as_deref())?;
    for (_, maps) in &targets {
        maps.add_many(&rules).map_err(|e| (500, json!({"error": format!("{e:#}")})))?;
    }
    let stored = items
        .into_iter()
        .zip(&rules)
        .map(|(i, r)| StoredRule::new(r, i.comment, interface.clone()))
        .collect();
    shared
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add(stored)
        .map_err(|e| (500, json!({"error": format!("{e:#}")})))?;
    shared
        .changes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(json!({"change": "add", "rules": rules.len(), "interface": interface}));
    Ok((200, json!({ "added": rules.len() })))
}

fn delete_rule(shared: &Shared, v: Value, flush: bool) -> std::result::Result<(u16, Value), (u16, Value)> {
    check_fields(&v, &["interface"])?;
    let w: Which = serde_json::from_value(v)
        .map_err(|e| bad(format!("give {{\"list\",\"cidr\",\"port\"?,\"interface\"?}}: {e}")))?;
    let list = parse_list(&w.list).map_err(bad)?;
    let targets = targets(shared, w.interface.as_deref())?;
    let mut store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    let internal = |e: anyhow::Error| (500, json!({"error": format!("{e:#}")}));
    if flush {
        let mut n = 0;
        for (_, maps) in &targets {
            n += maps.flush(list).map_err(internal)?;
        }
        store.flush(list, w.interface.as_deref()).map_err(internal)?;
        shared
            .changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(json!({"change": "flush", "list": w.list, "removed": n, "interface": w.interface}));
        return Ok((200, json!({ "removed": n })));
    }
    if w.spec == RuleSpec::default() {
        return Err(bad("which rule? give its cidr (and port), or its sni, host or http_method"));
    }
    let rule = w.spec.rule(list, None).map_err(bad)?;
    let n = targets.iter().filter(|(_, m)| m.delete(&rule).is_ok()).count();
    store.delete(&rule, w.interface.as_deref()).map_err(internal)?;
    if n == 0 {
        return Err((404, json!({"error": format!("no such rule: {}", crate::policy::describe(&rule))})));
    }
    shared
        .changes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(json!({"change": "delete", "rule": crate::policy::describe(&rule), "interface": w.interface}));
    Ok((200, json!({ "deleted": n })))
}
