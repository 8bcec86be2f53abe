//! The agent's configuration: a TOML file, with the command line's options
//! over it. Every error names its line, and comes before anything is
//! attached. Read again on SIGHUP.
//!
//! ```toml
//! interfaces = ["eth0", "veth*"]   # names, globs, or "all"
//! listen = "127.0.0.1:9917"
//! interval = 1.0
//! state_dir = "/var/lib/tcpscope"
//! bpf_stats = false
//!
//! [control]
//! socket = "/run/tcpscope/agent.sock"
//! listen = "127.0.0.1:9918"          # optional TCP listener
//! token_file = "/etc/tcpscope/token"   # needed beyond loopback
//!
//! [log]                               # NDJSON events
//! events = ["alerts", "rules"]         # the default; also connections,
//!                                      # retransmits, resets, drops, windows
//! file = "/var/log/tcpscope/events.ndjson"   # default: standard output
//! max_bytes = 104857600                # rotate past this size...
//! keep = 5                             # ...keeping this many old files
//!
//! [top_sources]                       # or --top-sources K (off by default)
//! enabled = true
//! k = 10                               # sources shown, by packets and by SYNs
//! window = 10.0                        # seconds each ranking covers
//!
//! [workload]                          # who owns each socket (off by default)
//! enabled = true
//! cgroup_root = "/sys/fs/cgroup"      # default: where cgroup2 is mounted
//! pods_dir = "/var/log/pods"           # pod names and namespaces
//! max_labels = 64                      # workload labels; the rest "other"
//!
//! [l7]                                # L7 hints (off by default; or --l7)
//! enabled = true
//! protocols = "/etc/tcpscope/protocols.toml"   # custom protocols
//! top_names = 10                       # opt-in: the 10 most seen SNIs and
//! window = 60.0                        # Hosts per window; 0 (default): none
//! log = false                          # or "l7" in [log] events
//!
//! [guard]
//! enabled = true
//! rules = "/etc/tcpscope/rules.toml"
//! syn_rate = 100                       # any `tcpscope guard` option,
//! mitigate = true                      # its dashes as underscores;
//! inspect = true                       # the default here: every counter
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use toml::Spanned;

use crate::agent::control::TcpListen;
use crate::cli::{AgentArgs, GuardArgs, UsageError};
use crate::policy::Lines;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    interfaces: Option<Vec<String>>,
    netns: Option<String>,
    listen: Option<String>,
    interval: Option<f64>,
    state_dir: Option<PathBuf>,
    bpf_stats: Option<bool>,
    control: Option<ControlFile>,
    log: Option<LogFile>,
    workload: Option<WorkloadFile>,
    top_sources: Option<TopFile>,
    l7: Option<L7File>,
    guard: Option<BTreeMap<String, Spanned<toml::Value>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct L7File {
    enabled: Option<bool>,
    protocols: Option<PathBuf>,
    top_names: Option<usize>,
    window: Option<f64>,
}

/// L7 hints on every counting interface.
#[derive(Debug, Clone)]
pub struct L7Config {
    /// Custom protocols, tried first.
    pub protocols: tcpscope_wire::l7::custom::Protocols,
    /// The most seen TLS server names and HTTP hosts per window, as
    /// labels: opt-in, K of each.
    pub top_names: Option<TopConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopFile {
    enabled: Option<bool>,
    k: Option<usize>,
    window: Option<f64>,
}

/// The top sources: how many, over what window.
#[derive(Debug, Clone)]
pub struct TopConfig {
    pub k: usize,
    pub window: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadFile {
    enabled: Option<bool>,
    cgroup_root: Option<PathBuf>,
    pods_dir: Option<PathBuf>,
    max_labels: Option<usize>,
}

/// Who owns each socket: on connection events in the log, and as the
/// `workload` label of `tcpscope_workload_connections_opened_total`.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub cgroup_root: PathBuf,
    pub pods_dir: PathBuf,
    /// Workload labels at most; the rest share "other".
    pub max_labels: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    events: Option<Spanned<Vec<String>>>,
    file: Option<PathBuf>,
    max_bytes: Option<u64>,
    keep: Option<u32>,
}

/// What the agent logs as NDJSON, and where.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Kinds of events, from [`LOG_KINDS`].
    pub events: Vec<String>,
    /// None: standard output.
    pub file: Option<PathBuf>,
    pub max_bytes: u64,
    pub keep: u32,
}

/// The kinds of events the agent can log, and the connection events of
/// each (their `event` names in docs/conns-schema.md).
pub const LOG_KINDS: [(&str, &[&str]); 8] = [
    ("connections", &["connect", "established_out", "established_in", "accept", "close"]),
    ("retransmits", &["retransmit", "retransmit_synack"]),
    ("resets", &["reset_received", "reset_sent"]),
    ("drops", &["drop"]),
    ("windows", &["zero_window", "window_reopen", "rcvqueue_full"]),
    ("alerts", &[]),
    ("rules", &[]),
    ("l7", &[]),
];

fn check_log_kinds(kinds: &[String]) -> std::result::Result<(), String> {
    match kinds.iter().find(|k| !LOG_KINDS.iter().any(|(n, _)| n == k)) {
        Some(bad) => Err(format!(
            "log event kind '{bad}': use {}",
            LOG_KINDS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlFile {
    socket: Option<PathBuf>,
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

/// The guard's options, parsed as `tcpscope guard` parses them.
#[derive(Parser)]
struct GuardOnly {
    #[command(flatten)]
    g: GuardArgs,
}

/// The agent's settings, file and command line resolved.
#[derive(Debug)]
pub struct AgentConfig {
    pub interfaces: Vec<String>,
    pub netns: Option<String>,
    pub listen: String,
    pub interval: Duration,
    pub state_dir: PathBuf,
    pub bpf_stats: bool,
    pub control_socket: PathBuf,
    pub control_tcp: Option<TcpListen>,
    /// The guard's settings when it guards; the interface is left blank.
    pub guard: Option<GuardArgs>,
    /// The guard's rules file.
    pub rules_file: Option<PathBuf>,
    pub log: LogConfig,
    /// None: off (the default).
    pub workload: Option<WorkloadConfig>,
    /// None: off (the default).
    pub top_sources: Option<TopConfig>,
    /// None: off (the default).
    pub l7: Option<L7Config>,
}

/// Reads a token file: root-only, not empty.
fn read_token(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| anyhow!("token file {}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!("token file {} can be read by others than its owner: chmod 600 it", path.display());
    }
    let token = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = token.trim().to_string();
    if token.len() < 16 {
        bail!("token file {}: the token is shorter than 16 characters: use a long random one (openssl rand -hex 32)", path.display());
    }
    Ok(token)
}

/// The guard table's options as `tcpscope guard` flags, each checked on its
/// own so that an error names its line.
fn guard_args(
    table: BTreeMap<String, Spanned<toml::Value>>,
    lines: &Lines,
    file: &str,
) -> Result<(GuardArgs, Option<PathBuf>)> {
    let mut flags: Vec<String> = vec!["guard".into(), "-i".into(), "-".into()];
    // The agent's metrics want every counter: the guard inspects unless
    // told `inspect = false`.
    if table.get("inspect").is_none_or(|v| v.get_ref().as_bool() != Some(false)) {
        flags.push("--inspect".into());
    }
    let mut rules = None;
    for (key, value) in table {
        let line = lines.of(value.span().start);
        let at = |msg: String| UsageError(format!("{file}:{line}: [guard] {key}: {msg}"));
        let value = value.into_inner();
        match (key.as_str(), &value) {
            ("enabled" | "inspect", _) => continue,
            ("rules", toml::Value::String(s)) => {
                rules = Some(PathBuf::from(s));
                continue;
            }
            ("interface" | "netns" | "json", _) => {
                return Err(at("not a guard setting here: the agent's own settings say where".into()).into())
            }
            _ => {}
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let mut one = flags.clone();
        match value {
            toml::Value::Boolean(true) => one.push(flag),
            toml::Value::Boolean(false) => continue,
            toml::Value::String(s) => one.extend([flag, s]),
            toml::Value::Integer(n) => one.extend([flag, n.to_string()]),
            toml::Value::Float(f) => one.extend([flag, f.to_string()]),
            other => return Err(at(format!("{} is not a setting's value", other.type_str())).into()),
        }
        if let Err(e) = GuardOnly::try_parse_from(&one) {
            let said = e.to_string();
            let first = said.lines().next().unwrap_or("invalid").trim_start_matches("error: ");
            return Err(at(format!("{first} (see `tcpscope guard --help`)")).into());
        }
        flags = one;
    }
    let g = GuardOnly::try_parse_from(&flags).map_err(|e| anyhow!("{file}: [guard]: {e}"))?;
    Ok((g.g, rules))
}

impl AgentConfig {
    pub fn resolve(args: &AgentArgs) -> Result<Self> {
        let (file, guard_table, name, lines) = match &args.config {
            None => (File::default(), None, String::new(), Lines::new("")),
            Some(path) => {
                let name = path.display().to_string();
                let text =
                    std::fs::read_to_string(path).map_err(|e| UsageError(format!("config {name}: {e}")))?;
                let lines = Lines::new(&text);
                let mut f: File = toml::from_str(&text).map_err(|e| {
                    let line = e.span().map(|s| lines.of(s.start)).unwrap_or(0);
                    UsageError(format!("{name}:{line}: {}", e.message().trim()))
                })?;
                let table = f.guard.take();
                (f, table, name, lines)
            }
        };
        let enabled = guard_table
            .as_ref()
            .and_then(|t| t.get("enabled"))
            .map(|v| {
                v.get_ref().as_bool().ok_or_else(|| {
                    UsageError(format!("{name}:{}: [guard] enabled: true or false", lines.of(v.span().start)))
                })
            })
            .transpose()?
            .unwrap_or(false);
        let (guard, rules_file) = match guard_table {
            Some(t) => guard_args(t, &lines, &name)?,
            None => guard_args(BTreeMap::new(), &lines, &name)?,
        };
        let interfaces =
            if args.ifaces.is_empty() { file.interfaces.unwrap_or_default() } else { args.ifaces.clone() };
        crate::ensure_usage!(
            !interfaces.is_empty(),
            "no interface to follow: give -i IFACE (a name, a glob such as 'veth*', or all), or interfaces = [...] in the config"
        );
        let interval = args.interval.or(file.interval).unwrap_or(1.0);
        crate::ensure_usage!(
            interval.is_finite() && interval >= 0.1,
            "interval {interval}: use at least 0.1 seconds"
        );
        let control = file.control.unwrap_or_default();
        let log_file = file.log.unwrap_or_default();
        let events = match (&args.log_events, log_file.events) {
            (Some(list), _) => {
                let kinds: Vec<String> =
                    list.split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
                check_log_kinds(&kinds).map_err(|e| UsageError(format!("--log-events: {e}")))?;
                kinds
            }
            (None, Some(spanned)) => {
                let line = lines.of(spanned.span().start);
                let kinds = spanned.into_inner();
                check_log_kinds(&kinds)
                    .map_err(|e| UsageError(format!("{name}:{line}: [log] events: {e}")))?;
                kinds
            }
            (None, None) => vec!["alerts".into(), "rules".into()],
        };
        let log = LogConfig {
            events,
            file: args.log_file.clone().or(log_file.file),
            max_bytes: log_file.max_bytes.unwrap_or(100 << 20).max(4096),
            keep: log_file.keep.unwrap_or(5),
        };
        let control_tcp = match args.control_listen.clone().or(control.listen) {
            None => None,
            Some(addr) => {
                let token = args
                    .control_token_file
                    .clone()
                    .or(control.token_file)
                    .map(|f| read_token(&f))
                    .transpose()?;
                Some(TcpListen { addr, token })
            }
        };
        let tf = file.top_sources.unwrap_or_default();
        let top_sources = if args.top_sources.is_some() || tf.enabled.unwrap_or(false) {
            let k = args.top_sources.or(tf.k).unwrap_or(10);
            let window = tf.window.unwrap_or(10.0);
            crate::ensure_usage!(
                (1..=1000).contains(&k),
                "top sources: K {k}: use 1 to 1000 (each is two series)"
            );
            crate::ensure_usage!(
                window.is_finite() && window >= 1.0,
                "top sources: window {window}: use at least 1 second"
            );
            Some(TopConfig { k, window: Duration::from_secs_f64(window) })
        } else {
            None
        };
        let wf = file.workload.unwrap_or_default();
        let workload = (args.workload || wf.enabled.unwrap_or(false)).then(|| WorkloadConfig {
            cgroup_root: wf
                .cgroup_root
                .or_else(crate::workload::cgroup2_root)
                .unwrap_or_else(|| "/sys/fs/cgroup".into()),
            pods_dir: wf.pods_dir.unwrap_or_else(|| "/var/log/pods".into()),
            max_labels: wf.max_labels.unwrap_or(64),
        });
        let lf = file.l7.unwrap_or_default();
        let l7 = if args.l7 || lf.enabled.unwrap_or(false) {
            let protocols = match &lf.protocols {
                None => Default::default(),
                Some(f) => {
                    let text = std::fs::read_to_string(f)
                        .map_err(|e| UsageError(format!("{name}: [l7] protocols {}: {e}", f.display())))?;
                    tcpscope_wire::l7::custom::Protocols::parse(&text, &f.display().to_string())
                        .map_err(|e| UsageError(format!("{e:#}")))?
                }
            };
            let k = lf.top_names.unwrap_or(0);
            let window = lf.window.unwrap_or(60.0);
            crate::ensure_usage!(k <= 100, "[l7] top_names {k}: use 0 (none) to 100");
            crate::ensure_usage!(
                window.is_finite() && window >= 1.0,
                "[l7] window {window}: use at least 1 second"
            );
            let top_names = (k > 0).then(|| TopConfig { k, window: Duration::from_secs_f64(window) });
            Some(L7Config { protocols, top_names })
        } else {
            None
        };
        Ok(AgentConfig {
            l7,
            interfaces,
            netns: args.netns.clone().or(file.netns),
            listen: args.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:9917".into()),
            interval: Duration::from_secs_f64(interval),
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| "/var/lib/tcpscope".into()),
            bpf_stats: args.bpf_stats || file.bpf_stats.unwrap_or(false),
            control_socket: args
                .control_socket
                .clone()
                .or(control.socket)
                .unwrap_or_else(|| crate::agent::control::SOCKET.into()),
            control_tcp,
            guard: (args.guard || enabled).then_some(guard),
            rules_file,
            log,
            workload,
            top_sources,
        })
    }

    /// The rules file's rules (none without one).
    pub fn file_rules(&self) -> Result<Vec<crate::policy::Rule>> {
        self.rules_file.as_deref().map_or(Ok(Vec::new()), crate::view::guard::read_rules_file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, extra: &[&str]) -> Result<AgentConfig> {
        let path =
            std::env::temp_dir().join(format!("tcpscope-agent-{}-{}.toml", std::process::id(), text.len()));
        std::fs::write(&path, text).unwrap();
        #[derive(Parser)]
        struct A {
            #[command(flatten)]
            a: AgentArgs,
        }
        let mut argv = vec!["agent".to_string(), "--config".into(), path.display().to_string()];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let r = AgentConfig::resolve(&A::parse_from(argv).a);
        std::fs::remove_file(path).unwrap();
        r
    }

    #[test]
    fn the_file_gives_settings_and_flags_override_it() {
        let c = resolve(
            "interfaces = ['veth*']\nlisten = '127.0.0.1:1'\n[guard]\nenabled = true\nsyn_rate = 7\nmitigate = true\nscan_window = '2s'\n",
            &["--listen", "127.0.0.1:2"],
        )
        .unwrap();
        assert_eq!(c.interfaces, ["veth*"]);
        assert_eq!(c.listen, "127.0.0.1:2");
        let g = c.guard.unwrap();
        assert_eq!((g.syn_rate, g.mitigate, g.scan_window), (7, true, Duration::from_secs(2)));
        assert_eq!(g.syn_burst, 200, "the guard's own default");
        assert!(g.inspect, "the agent's guard keeps every counter by default");
        let lean = resolve("interfaces = ['a']\n[guard]\nenabled = true\ninspect = false\n", &[]).unwrap();
        assert!(!lean.guard.unwrap().inspect);
    }

    #[test]
    fn every_error_names_its_line() {
        let e = |text: &str| resolve(text, &[]).err().unwrap().to_string();
        let bad_toml = e("interfaces = ['a']\nlisten = \n");
        assert!(bad_toml.contains(":2: "), "{bad_toml}");
        let unknown = e("interfaces = ['a']\n\nlisten_on = 'x'\n");
        assert!(unknown.contains(":3: ") && unknown.contains("listen_on"), "{unknown}");
        let guard_key = e("interfaces = ['a']\n[guard]\nenabled = true\nsyn_rat = 5\n");
        assert!(guard_key.contains(":4: [guard] syn_rat"), "{guard_key}");
        let guard_value = e("interfaces = ['a']\n[guard]\nscan_window = 'soon'\n");
        assert!(guard_value.contains(":3: [guard] scan_window"), "{guard_value}");
        let none = e("listen = '127.0.0.1:1'\n");
        assert!(none.contains("no interface"), "{none}");
        let l7_key = e("interfaces = ['a']\n[l7]\nenabled = true\nprotocol = 'p.toml'\n");
        assert!(l7_key.contains(":4: ") && l7_key.contains("protocol"), "{l7_key}");
        let l7_k = e("interfaces = ['a']\n[l7]\nenabled = true\ntop_names = 500\n");
        assert!(l7_k.contains("top_names 500"), "{l7_k}");
        let l7_file = e("interfaces = ['a']\n[l7]\nenabled = true\nprotocols = '/nonexistent/p.toml'\n");
        assert!(l7_file.contains("[l7] protocols /nonexistent/p.toml"), "{l7_file}");
        let on = resolve("interfaces = ['a']\n[l7]\nenabled = true\ntop_names = 3\n", &[]).unwrap();
        assert_eq!(
            on.l7.and_then(|l| l.top_names).map(|t| (t.k, t.window)),
            Some((3, Duration::from_secs(60)))
        );
    }
}
