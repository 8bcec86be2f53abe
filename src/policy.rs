//! Guard rules: source allow/block lists and destination-port deny rules,
//! kept in LPM-trie maps that a running `tcpscope guard` pins under
//! /sys/fs/bpf/tcpscope/<iface>/ and other tcpscope commands edit live.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::{Deserialize, Serialize};

use crate::bpf::types;
use crate::filter::Cidr;

/// Where guards pin their maps (bpffs); one directory per interface.
pub const PIN_ROOT: &str = "/sys/fs/bpf/tcpscope";
/// Where guards record their pid, to tell a live guard from stale pins.
pub const RUN_ROOT: &str = "/run/tcpscope";

/// The maps that hold the rules. A guard pins them and leaves them pinned
/// when it stops, however it stops (SIGTERM or `kill -9`): the next guard on
/// the same interface takes them over with their hit counts and remaining
/// TTLs. Only `block del`/`flush`, expiry, or the interface going away
/// removes rules. (Pins live in bpffs, so a reboot clears them.)
pub const RULE_MAPS: [&str; 9] = [
    "allow_v4",
    "allow_v6",
    "block_v4",
    "block_v6",
    "ports_v4",
    "ports_v6",
    "l7_rules",
    "policy_used",
    "expiring",
];

/// The maps a guard pins, by name: the rules, and its counters (this
/// guard's own; a new guard starts them at zero).
pub fn pinned_maps() -> impl Iterator<Item = &'static str> {
    RULE_MAPS.into_iter().chain(["counters"])
}

/// The rule map of each `enum policy_list` value.
fn list_map(list: u8) -> Option<&'static str> {
    use types::policy_list as L;
    Some(match u32::from(list) {
        x if x == L::POLICY_ALLOW_V4.0 => "allow_v4",
        x if x == L::POLICY_ALLOW_V6.0 => "allow_v6",
        x if x == L::POLICY_BLOCK_V4.0 => "block_v4",
        x if x == L::POLICY_BLOCK_V6.0 => "block_v6",
        x if x == L::POLICY_PORTS_V4.0 => "ports_v4",
        x if x == L::POLICY_PORTS_V6.0 => "ports_v6",
        _ => return None,
    })
}

/// The `enum policy_list` value of a rule map.
fn map_list(name: &str) -> Option<u8> {
    (0..types::policy_list::POLICY_LISTS.0 as u8).find(|l| list_map(*l) == Some(name))
}

/// The key of a rule in the expiry index.
fn expiring_key(name: &str, key: &[u8]) -> Option<types::expiring_key> {
    let mut k = types::expiring_key { list: map_list(name)?, ..Default::default() };
    k.key.get_mut(..key.len())?.copy_from_slice(key);
    Some(k)
}

/// Largest rules file read: a million rules take about 50 MiB.
pub const MAX_RULES_FILE: u64 = 256 << 20;

/// Reads a rules file, refusing one past MAX_RULES_FILE (or endless, like
/// /dev/zero) with a line that says so.
pub fn read_rules_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let f = fs::File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_RULES_FILE + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    if buf.len() as u64 > MAX_RULES_FILE {
        bail!(
            "'{}' is larger than {} MiB: split the rules over several files, or add them with `tcpscope block add -`",
            path.display(),
            MAX_RULES_FILE >> 20
        );
    }
    String::from_utf8(buf).map_err(|e| {
        anyhow!("'{}' is not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to())
    })
}

/// Which list a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Allow,
    Block,
}

/// One rule as a user writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub list: List,
    /// The sources it covers; for a name rule, every source (0.0.0.0/0).
    pub cidr: Cidr,
    /// Block only this destination port (block list only).
    pub port: Option<u16>,
    /// Remove the rule after this long.
    pub ttl: Option<Duration>,
    /// A rule on what a connection's first message names (block list
    /// only), instead of its source.
    pub name: Option<NameRule>,
}

/// What an L7 rule looks at (`enum l7_rule_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameKind {
    /// The TLS ClientHello's server_name.
    Sni,
    /// HTTP/1's Host header, or an absolute-form request target's host.
    Host,
    /// HTTP/1's request method.
    HttpMethod,
}

impl NameKind {
    pub const ALL: [NameKind; 3] = [NameKind::Sni, NameKind::Host, NameKind::HttpMethod];

    /// Its name in rules files and the API; the CLI flag is `--` and this
    /// with '-' for '_'.
    pub fn field(self) -> &'static str {
        match self {
            NameKind::Sni => "sni",
            NameKind::Host => "host",
            NameKind::HttpMethod => "http_method",
        }
    }

    fn value(self) -> u8 {
        use types::l7_rule_kind as K;
        (match self {
            NameKind::Sni => K::L7_RULE_SNI.0,
            NameKind::Host => K::L7_RULE_HOST.0,
            NameKind::HttpMethod => K::L7_RULE_METHOD.0,
        }) as u8
    }

    fn from_value(v: u8) -> Option<Self> {
        NameKind::ALL.into_iter().find(|k| k.value() == v)
    }
}

/// An L7 rule: a name (lower case; `*.suffix` for every name under a
/// domain) or an HTTP method (upper case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameRule {
    pub kind: NameKind,
    pub name: String,
}

const NAME_MAX: usize = types::l7_guard_limits::L7_GUARD_NAME_MAX.0 as usize;

impl NameRule {
    /// Checks and normalises what the user wrote.
    pub fn parse(kind: NameKind, text: &str) -> Result<Self, String> {
        let flag = format!("--{}", kind.field().replace('_', "-"));
        if kind == NameKind::HttpMethod {
            let m = text.trim().to_ascii_uppercase();
            if m.is_empty()
                || m.len() > 16
                || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "{flag} '{text}': an HTTP method is 1 to 16 letters (GET, POST, CONNECT, ...)"
                ));
            }
            return Ok(NameRule { kind, name: m });
        }
        let lower = text.trim().to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (wild, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower),
        };
        let literal = rest.starts_with('[')
            && rest.ends_with(']')
            && rest[1..rest.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
        let ok_name = !rest.is_empty()
            && rest.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !(ok_name || (literal && !wild)) {
            return Err(format!(
                "{flag} '{text}': give a host name (a.example.com), '*.example.com' for every name under a domain, or an address ([2001:db8::1] in brackets)"
            ));
        }
        let name = if wild { format!("*.{rest}") } else { rest.to_string() };
        // The kernel matches the suffix: for a wildcard, '.' and the rest.
        let matched = if wild { rest.len() + 1 } else { rest.len() };
        if matched > NAME_MAX {
            return Err(format!("{flag} '{text}': longer than {NAME_MAX} bytes"));
        }
        Ok(NameRule { kind, name })
    }

    /// The rule's trie key (struct l7_rule_key): the name reversed, an
    /// exact name with its end mark.
    fn key(&self) -> types::l7_rule_key {
        let mut k = types::l7_rule_key { kind: self.kind.value(), ..Default::default() };
        let (bytes, exact): (Vec<u8>, bool) = match self.name.strip_prefix('*') {
            Some(suffix) => (suffix.bytes().rev().collect(), false),
            None => (self.name.to_ascii_lowercase().bytes().rev().collect(), true),
        };
        k.name[..bytes.len()].copy_from_slice(&bytes);
        k.prefixlen = 8 * (1 + bytes.len() as u32 + u32::from(exact));
        k
    }

    fn from_key(k: &types::l7_rule_key) -> Option<Self> {
        let kind = NameKind::from_value(k.kind)?;
        let n = (k.prefixlen / 8).checked_sub(1)? as usize;
        let bytes = k.name.get(..n)?;
        let (body, exact) = match bytes.split_last() {
            Some((0, body)) => (body, true),
            _ => (bytes, false),
        };
        let mut name: String = String::from_utf8(body.iter().rev().copied().collect()).ok()?;
        if kind == NameKind::HttpMethod {
            name = name.to_ascii_uppercase();
        }
        Some(NameRule { kind, name: if exact { name } else { format!("*{name}") } })
    }
}

/// What a rule covers, as rules files, the agent's API and its store write
/// it: a `cidr` (and for a block rule, maybe a `port`), or one of `sni`,
/// `host` and `http_method`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
}

impl RuleSpec {
    pub fn of(r: &Rule) -> Self {
        let Some(n) = &r.name else {
            return RuleSpec {
                cidr: Some(format!("{}/{}", r.cidr.addr, r.cidr.prefix)),
                port: r.port,
                ..Default::default()
            };
        };
        let mut spec = RuleSpec::default();
        *match n.kind {
            NameKind::Sni => &mut spec.sni,
            NameKind::Host => &mut spec.host,
            NameKind::HttpMethod => &mut spec.http_method,
        } = Some(n.name.clone());
        spec
    }

    /// The rule, checked: one line saying what is wrong otherwise.
    pub fn rule(&self, list: List, ttl: Option<Duration>) -> Result<Rule, String> {
        let given: Vec<(NameKind, &String)> = [
            (NameKind::Sni, &self.sni),
            (NameKind::Host, &self.host),
            (NameKind::HttpMethod, &self.http_method),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
        match (given.as_slice(), &self.cidr) {
            ([], None) => Err("a rule needs a cidr, or one of sni, host or http_method".into()),
            ([], Some(cidr)) => {
                let cidr: Cidr = cidr.parse().map_err(|e| format!("{e}"))?;
                if list == List::Allow && self.port.is_some() {
                    return Err("allow rules take no port (an allow-listed source is never blocked)".into());
                }
                Ok(Rule { list, cidr, port: self.port, ttl, name: None })
            }
            ([(k, v)], None) if self.port.is_none() => {
                if list == List::Allow {
                    return Err("allow rules take a cidr only (sni, host and http_method rules block)".into());
                }
                NameRule::parse(*k, v).map(|n| Rule::on_name(n, ttl))
            }
            ([(k, _)], _) => Err(format!(
                "a rule on {} takes no cidr or port: it applies to every source and port",
                k.field()
            )),
            _ => Err("one of sni, host or http_method per rule: write one rule for each".into()),
        }
    }
}

impl Rule {
    /// A block rule on a name.
    pub fn on_name(name: NameRule, ttl: Option<Duration>) -> Self {
        Rule {
            list: List::Block,
            cidr: Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), prefix: 0 },
            port: None,
            ttl,
            name: Some(name),
        }
    }
}

/// "500ms", "30s", "5m", "2h", "1d": a number and its unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("bad duration '{s}': use e.g. 500ms, 30s, 5m, 2h"))?;
    let secs = match unit {
        "" => return Err(format!("bad duration '{s}': give a unit, e.g. {s}s or {s}m")),
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("bad duration '{s}': unit must be ms, s, m, h or d")),
    };
    if !(secs > 0.0) {
        return Err(format!("bad duration '{s}': must be positive"));
    }
    if secs >= 1e9 {
        return Err(format!("bad duration '{s}': too long (at most about 31 years)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    block: Vec<toml::Spanned<FileRule>>,
    #[serde(default)]
    allow: Vec<toml::Spanned<FileRule>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRule {
    cidr: Option<String>,
    port: Option<u16>,
    ttl: Option<String>,
    sni: Option<String>,
    host: Option<String>,
    http_method: Option<String>,
}

impl FileRule {
    fn spec(self) -> RuleSpec {
        RuleSpec {
            cidr: self.cidr,
            port: self.port,
            sni: self.sni,
            host: self.host,
            http_method: self.http_method,
        }
    }
}

/// Line numbers of byte offsets: the offsets of each line's start, found
/// once, then a binary search per offset (counting newlines from the start
/// for every rule made a 40,000-rule file take 13 s).
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub(crate) fn new(text: &str) -> Self {
        Lines(std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect())
    }

    /// The 1-based line of byte `offset`.
    pub(crate) fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|start| *start <= offset)
    }
}

/// Parses a rules file; every error names its line.
pub fn parse_rules(text: &str, file: &str) -> Result<Vec<Rule>> {
    let items = match plain_tables(text) {
        Some(items) => items,
        None => {
            let lines = Lines::new(text);
            let parsed: RulesFile = toml::from_str(text).map_err(|e| {
                let line = e.span().map(|s| lines.of(s.start)).unwrap_or(0);
                anyhow!("{file}:{line}: {}", e.message())
            })?;
            let spanned = |list, items: Vec<toml::Spanned<FileRule>>| {
                items
                    .into_iter()
                    .map(|i| (list, lines.of(i.span().start), i.into_inner()))
                    .collect::<Vec<_>>()
            };
            let mut all = spanned(List::Block, parsed.block);
            all.extend(spanned(List::Allow, parsed.allow));
            all
        }
    };
    let mut rules = Vec::with_capacity(items.len());
    {
        for (list, line, r) in items {
            let ttl = r
                .ttl
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| anyhow!("{file}:{line}: {e}"))?;
            rules.push(r.spec().rule(list, ttl).map_err(|e| anyhow!("{file}:{line}: {e}"))?);
        }
    }
    Ok(rules)
}

/// The rules of a file in the plain form that `block save` writes and most
/// rule lists take: `[[block]]`/`[[allow]]` headers, then `cidr = "..."`,
/// `port = N`, `ttl = "..."` lines, blank lines and whole-line comments.
/// None for anything else (the TOML parser then reads it, and names the line
/// of any error). Each item: (list, line of its header, fields).
///
/// Why by hand: the `toml` crate took 4.5 s and 1.4 GB to read a rules file
/// of 1,000,000 rules (40 MB) on the development VM; this takes about 0.3 s
/// and keeps only the rules. `plain_form_reads_as_toml_does` checks the two
/// agree.
fn plain_tables(text: &str) -> Option<Vec<(List, usize, FileRule)>> {
    let (mut blocks, mut allows) = (Vec::new(), Vec::new());
    let mut current: Option<(List, usize, Option<String>, Option<u16>, Option<String>)> = None;
    let mut close = |c: Option<(List, usize, Option<String>, Option<u16>, Option<String>)>| -> Option<()> {
        if let Some((list, line, cidr, port, ttl)) = c {
            let item = (list, line, FileRule { cidr: Some(cidr?), port, ttl, ..Default::default() });
            if list == List::Block {
                blocks.push(item)
            } else {
                allows.push(item)
            }
        }
        Some(())
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let list = match line {
            "[[block]]" => Some(List::Block),
            "[[allow]]" => Some(List::Allow),
            _ => None,
        };
        if let Some(list) = list {
            close(current.take())?;
            current = Some((list, i + 1, None, None, None));
            continue;
        }
        let (key, value) = line.split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        let string = || {
            let v = value.strip_prefix('"')?.strip_suffix('"')?;
            (!v.contains(['"', '\\'])).then(|| v.to_string())
        };
        let c = current.as_mut()?;
        match key {
            "cidr" if c.2.is_none() => c.2 = Some(string()?),
            "port" if c.3.is_none() => c.3 = Some(value.parse().ok()?),
            "ttl" if c.4.is_none() => c.4 = Some(string()?),
            _ => return None,
        }
    }
    close(current.take())?;
    blocks.extend(allows);
    Some(blocks)
}

/// The pinned maps of the guard on one interface.
pub struct PolicyMaps {
    pub dir: PathBuf,
    maps: Vec<(String, MapHandle)>,
}

/// A generated key struct as the map's key bytes.
fn key_bytes<T: plain::Plain>(k: &T) -> Vec<u8> {
    // SAFETY: the key structs are Plain: integers and byte arrays, their
    // padding explicit and zeroed by Default.
    unsafe { plain::as_bytes(k) }.to_vec()
}

/// The trie key of a rule: (map name, key bytes), built from the structs
/// generated from bpf/common_kern_user.h. Addresses are masked to the
/// prefix so that "198.18.0.7/24" and "198.18.0.0/24" are one rule.
pub fn rule_key(r: &Rule) -> (&'static str, Vec<u8>) {
    if let Some(n) = &r.name {
        return ("l7_rules", key_bytes(&n.key()));
    }
    let prefix = r.cidr.prefix;
    match (r.list, r.port, r.cidr.network()) {
        (List::Block, Some(p), IpAddr::V4(a)) => (
            "ports_v4",
            key_bytes(&types::port_key_v4 {
                prefixlen: 16 + prefix,
                port: p.to_be_bytes(),
                addr: a.octets(),
                ..Default::default()
            }),
        ),
        (List::Block, Some(p), IpAddr::V6(a)) => (
            "ports_v6",
            key_bytes(&types::port_key_v6 {
                prefixlen: 16 + prefix,
                port: p.to_be_bytes(),
                addr: a.octets(),
                ..Default::default()
            }),
        ),
        (list, _, IpAddr::V4(a)) => (
            if list == List::Allow { "allow_v4" } else { "block_v4" },
            key_bytes(&types::policy_key_v4 { prefixlen: prefix, addr: a.octets() }),
        ),
        (list, _, IpAddr::V6(a)) => (
            if list == List::Allow { "allow_v6" } else { "block_v6" },
            key_bytes(&types::policy_key_v6 { prefixlen: prefix, addr: a.octets() }),
        ),
    }
}

/// Decodes a trie key back into a rule (without ttl).
fn key_rule(map: &str, k: &[u8]) -> Option<Rule> {
    fn read<T: plain::Plain + Default>(k: &[u8]) -> Option<T> {
        let mut v = T::default();
        plain::copy_from_bytes(&mut v, k).ok()?;
        Some(v)
    }
    let rule = |list, port, addr: IpAddr, prefix| {
        Some(Rule { list, cidr: Cidr { addr, prefix }, port, ttl: None, name: None })
    };
    let list = if map.starts_with("allow") { List::Allow } else { List::Block };
    match map {
        "ports_v4" => read::<types::port_key_v4>(k).and_then(|x| {
            rule(List::Block, Some(u16::from_be_bytes(x.port)), x.addr.into(), x.prefixlen.checked_sub(16)?)
        }),
        "ports_v6" => read::<types::port_key_v6>(k).and_then(|x| {
            rule(List::Block, Some(u16::from_be_bytes(x.port)), x.addr.into(), x.prefixlen.checked_sub(16)?)
        }),
        "allow_v4" | "block_v4" => {
            read::<types::policy_key_v4>(k).and_then(|x| rule(list, None, x.addr.into(), x.prefixlen))
        }
        "allow_v6" | "block_v6" => {
            read::<types::policy_key_v6>(k).and_then(|x| rule(list, None, x.addr.into(), x.prefixlen))
        }
        "l7_rules" => {
            read::<types::l7_rule_key>(k).and_then(|x| NameRule::from_key(&x)).map(|n| Rule::on_name(n, None))
        }
        _ => None,
    }
}

/// A rule as found in the maps, with its hit count.
#[derive(Debug, Clone)]
pub struct RuleState {
    pub rule: Rule,
    pub hits: u64,
    /// Remaining time to live; None: forever.
    pub expires_in: Option<Duration>,
}

/// The name a guard goes by: the interface, qualified by its network
/// namespace when it was given (several namespaces may have an "eth0").
pub fn guard_id(iface: &str, netns: Option<&str>) -> String {
    match netns {
        // A path to an `ip netns` name goes by that name; any other path
        // by itself, its slashes made safe for a file name.
        Some(ns) => {
            let name =
                ns.strip_prefix("/var/run/netns/").or_else(|| ns.strip_prefix("/run/netns/")).unwrap_or(ns);
            format!("{iface}@{}", name.replace('/', "_"))
        }
        None => iface.to_string(),
    }
}

pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
}

fn pid_file(iface: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(format!("{iface}.pid"))
}

/// The rules the guard on `iface` last loaded from its rules file: on a
/// restart or SIGHUP, a rule that left the file leaves the maps, and a rule
/// still in it that expired or was deleted at runtime stays away.
fn file_rules_state(iface: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(format!("{iface}.file-rules.toml"))
}

/// The pid of a live guard on `iface`, if any.
pub fn running_guard(iface: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_file(iface)).ok()?.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    // A guard killed a moment ago is a zombie until reaped: not running.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    (comm.trim() == "tcpscope" && !matches!(state, Some("Z" | "X"))).then_some(pid)
}

/// Interfaces with a live guard.
pub fn running_guards() -> Vec<String> {
    let Ok(rd) = fs::read_dir(RUN_ROOT) else { return Vec::new() };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".pid").map(str::to_string))
        .filter(|i| running_guard(i).is_some())
        .collect();
    out.sort();
    out
}

/// What `claim` found.
pub struct Claimed {
    /// The pin directory of the guard's maps.
    pub dir: PathBuf,
    /// The pins live in a bpffs this process mounted in a mount namespace
    /// of its own (as under `ip netns exec`): they end with it, and no
    /// other process can reach them.
    pub private_pins: bool,
}

/// Claims `iface` for this guard: fails if another guard is live there.
/// The rule maps of an earlier guard stay for this one to take over; its
/// counters go.
pub fn claim(iface: &str) -> Result<Claimed> {
    // Mounted if absent, as bpftool does.
    let mounted = crate::bpf::preflight::ensure_mounted(c"/sys/fs/bpf", c"bpf", 0xcafe4a11, c"mode=0700")?;
    let private_pins =
        mounted && fs::read_link("/proc/self/ns/mnt").ok() != fs::read_link("/proc/1/ns/mnt").ok();
    if let Some(pid) = running_guard(iface) {
        bail!("a tcpscope guard (pid {pid}) already runs on '{iface}': stop it first, or edit its rules with `tcpscope block ...`");
    }
    let dir = pin_dir(iface);
    let _ = fs::remove_file(dir.join("counters"));
    // The rules-file state describes the pinned maps: without them (a
    // reboot, pins removed, or pins that ended with a private mount) it
    // describes nothing, and every rule of the file must be loaded again.
    if !RULE_MAPS.iter().all(|m| dir.join(m).exists()) {
        let _ = fs::remove_file(file_rules_state(iface));
    }
    // Root-only: the directories, and so the pinned maps in them.
    for d in [Path::new(PIN_ROOT), dir.as_path(), Path::new(RUN_ROOT)] {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(d).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "cannot create {}: permission denied: the guard pins its rules under /sys/fs/bpf and {RUN_ROOT}, which only root may write; run it as root (in the systemd unit: User=root)",
                d.display()
            ),
            _ => anyhow::anyhow!(
                "creating {}: {e} (is bpffs mounted at /sys/fs/bpf? `mount -t bpf bpf /sys/fs/bpf`)",
                d.display()
            ),
        })?;
    }
    fs::write(pid_file(iface), std::process::id().to_string()).context("writing the guard's pid file")?;
    Ok(Claimed { dir, private_pins })
}

/// The guard on `iface` stops: its pid file and counters go, its rules stay
/// pinned for the next guard.
pub fn release(iface: &str) {
    let _ = fs::remove_file(pin_dir(iface).join("counters"));
    let _ = fs::remove_file(pid_file(iface));
}

/// The interface went away: its rules go with it.
pub fn release_all(iface: &str) {
    let _ = fs::remove_dir_all(pin_dir(iface));
    let _ = fs::remove_file(pid_file(iface));
    let _ = fs::remove_file(file_rules_state(iface));
}

/// Every map entry of the pinned rule maps in `dir`: (map, key, value).
/// Used to carry rules over to maps of another layout (a newer tcpscope).
pub fn read_pinned(dir: &Path) -> Result<Vec<(String, Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in RULE_MAPS {
        let Ok(m) = MapHandle::from_pinned_path(dir.join(name)) else { continue };
        for key in m.keys() {
            if let Ok(Some(v)) = m.lookup(&key, MapFlags::ANY) {
                out.push((name.to_string(), key, v));
            }
        }
    }
    Ok(out)
}

/// Rules as a rules file (TOML), each with its remaining time to live.
pub fn to_rules_file(rules: &[RuleState]) -> String {
    let mut out = String::new();
    for r in rules {
        let list = if r.rule.list == List::Allow { "allow" } else { "block" };
        match &r.rule.name {
            Some(n) => out.push_str(&format!("[[{list}]]\n{} = \"{}\"\n", n.kind.field(), n.name)),
            None => {
                out.push_str(&format!("[[{list}]]\ncidr = \"{}/{}\"\n", r.rule.cidr.addr, r.rule.cidr.prefix))
            }
        }
        if let Some(p) = r.rule.port {
            out.push_str(&format!("port = {p}\n"));
        }
        if let Some(t) = r.expires_in {
            out.push_str(&format!("ttl = \"{}ms\"\n", t.as_millis().max(1)));
        }
        out.push('\n');
    }
    out
}

impl PolicyMaps {
    /// Opens the pinned maps of the live guard on `iface` (or of the only
    /// live guard when `iface` is None).
    pub fn open(iface: Option<&str>) -> Result<Self> {
        // Without privileges the pid files and pins cannot be read: say
        // that, not that no guard runs.
        crate::bpf::preflight::check_privileges()?;
        let iface = match iface {
            Some(i) => i.to_string(),
            None => {
                let live = running_guards();
                match live.as_slice() {
                    [] => bail!("no tcpscope guard or agent is running: start one with `tcpscope guard -i IFACE` or `tcpscope agent --guard -i IFACE` (an agent elsewhere than /run/tcpscope/agent.sock: --agent SOCKET)"),
                    [one] => one.clone(),
                    many => {
                        bail!("several guards are running ({}): choose one with -i IFACE", many.join(", "))
                    }
                }
            }
        };
        if running_guard(&iface).is_none() {
            let how = match iface.split_once('@') {
                Some((i, ns)) => format!("-i {i} --netns {ns}"),
                None => format!("-i {iface}"),
            };
            bail!("no tcpscope guard is running on '{iface}': start one with `tcpscope guard {how}`");
        }
        let dir = pin_dir(&iface);
        let mut maps = Vec::new();
        for name in pinned_maps() {
            let path = dir.join(name);
            let m = MapHandle::from_pinned_path(&path).map_err(|e| match e.kind() {
                libbpf_rs::ErrorKind::NotFound => anyhow!(
                    "the guard on '{iface}' has no map at {}: it pinned its maps where this process cannot see them (a guard started under `ip netns exec` mounts a bpffs of its own); restart it as `tcpscope guard --netns NAME -i IFACE`",
                    path.display()
                ),
                _ => anyhow!("opening the guard's map {}: {e} (run as root)", path.display()),
            })?;
            maps.push((name.to_string(), m));
        }
        Ok(PolicyMaps { dir, maps })
    }

    /// Writes map entries read by [`read_pinned`] (same key and value
    /// layout); entries of maps this version lacks are skipped.
    pub fn restore(&self, entries: &[(String, Vec<u8>, Vec<u8>)]) -> Result<()> {
        for (name, key, value) in entries {
            if let Some((_, m)) = self.maps.iter().find(|(n, _)| n == name) {
                // A value grown since (policy_used gained fields): the new
                // fields zero.
                let mut value = value.clone();
                value.resize(value.len().max(m.value_size() as usize), 0);
                m.update(key, &value, MapFlags::ANY)
                    .map_err(|e| anyhow!("restoring a rule in {name}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Makes the maps hold exactly the rules of a rules file as far as the
    /// file is concerned: rules the file held last time (`state`) and no
    /// longer holds are deleted; rules new to it are added. A rule still in
    /// the file but gone from the maps (expired, deleted) stays gone, and a
    /// rule in both keeps its hits and TTL. Returns (added, removed).
    pub fn sync_file_rules(&self, iface: &str, rules: &[Rule]) -> Result<(usize, usize)> {
        let state = file_rules_state(iface);
        let text = to_rules_file(
            &rules
                .iter()
                .map(|r| RuleState { rule: r.clone(), hits: 0, expires_in: r.ttl })
                .collect::<Vec<_>>(),
        );
        // The same file as last time (a restart): nothing to do.
        if fs::read(&state).is_ok_and(|old| old == text.as_bytes()) {
            return Ok((0, 0));
        }
        let old = fs::read_to_string(&state)
            .ok()
            .and_then(|t| parse_rules(&t, &state.display().to_string()).ok())
            .unwrap_or_default();
        let (added, removed) = if old.is_empty() {
            // No file before (a first start): every rule is new, and a
            // million need no key sets.
            self.add_many(rules)?;
            (rules.len(), 0)
        } else {
            let keys = |rs: &[Rule]| rs.iter().map(rule_key).collect::<std::collections::HashSet<_>>();
            let (old_keys, new_keys) = (keys(&old), keys(rules));
            let mut removed = 0;
            for r in old.iter().filter(|r| !new_keys.contains(&rule_key(r))) {
                removed += usize::from(self.delete(r).is_ok());
            }
            let fresh: Vec<Rule> =
                rules.iter().filter(|r| !old_keys.contains(&rule_key(r))).cloned().collect();
            self.add_many(&fresh)?;
            (fresh.len(), removed)
        };
        fs::write(&state, text).with_context(|| format!("writing {}", state.display()))?;
        Ok((added, removed))
    }

    /// How many rules the lists hold (their keys walked, no values read).
    pub fn count(&self) -> usize {
        let (allow, block) = self.count_by_list();
        allow + block
    }

    /// How many rules the allow list and the block list hold.
    pub fn count_by_list(&self) -> (usize, usize) {
        let is_allow = |n: &str| n.starts_with("allow_");
        let (mut allow, mut block) = (0, 0);
        for (name, n) in
            self.maps.iter().filter(|(n, _)| map_list(n).is_some() || n == "l7_rules").map(|(name, m)| {
                (name, {
                    // In batches where the kernel can (a million rules took 0.8 s
                    // key by key); key by key where it cannot.
                    let batched =
                        m.lookup_batch(1 << 16, MapFlags::ANY, MapFlags::ANY).map_or(0, |b| b.count());
                    // A kernel without batch lookups for tries yields nothing.
                    if batched == 0 && m.keys().next().is_some() {
                        m.keys().count()
                    } else {
                        batched
                    }
                })
            })
        {
            *if is_allow(name) { &mut allow } else { &mut block } += n;
        }
        (allow, block)
    }

    /// Deletes every rule of `list`; returns how many.
    pub fn flush(&self, list: List) -> Result<usize> {
        let names: &[&str] = match list {
            List::Allow => &["allow_v4", "allow_v6"],
            List::Block => &["block_v4", "block_v6", "ports_v4", "ports_v6", "l7_rules"],
        };
        let mut n = 0;
        for name in names {
            let m = self.map(name);
            // Keys first: deleting while walking would skip some.
            for key in m.keys().collect::<Vec<_>>() {
                n += usize::from(m.delete(&key).is_ok());
                self.index_expiry(name, &key, 0)?;
            }
        }
        if list == List::Block {
            self.refresh_l7_used()?;
        }
        Ok(n)
    }

    fn map(&self, name: &str) -> &MapHandle {
        &self.maps.iter().find(|(n, _)| n == name).expect("every pinned map is opened").1
    }

    /// Adds or replaces a rule (its hit count restarts).
    pub fn add(&self, r: &Rule) -> Result<()> {
        self.add_many(std::slice::from_ref(r))
    }

    /// Adds or replaces rules, in batches of up to 4096 per map and call.
    pub fn add_many(&self, rules: &[Rule]) -> Result<()> {
        const BATCH: usize = 4096;
        let now = crate::bpf::clock_ns(libc::CLOCK_MONOTONIC);
        // A rule without a TTL must leave the expiry index (it may have had
        // one before): with an empty index, that is nothing to do, which
        // spares a syscall per rule when loading a large file.
        let index_empty = self.map("expiring").keys().next().is_none();
        let mut by_map: std::collections::BTreeMap<&str, (Vec<u8>, Vec<u8>, u32)> = Default::default();
        for r in rules {
            if let Some(n) = &r.name {
                self.mark_l7_used(n.kind)?;
            }
            let (name, key) = rule_key(r);
            let value = types::policy_value {
                expires_ns: r.ttl.map_or(0, |t| now.saturating_add(t.as_nanos() as u64)),
                ..Default::default()
            };
            if value.expires_ns != 0 || !index_empty {
                self.index_expiry(name, &key, value.expires_ns)?;
            }
            let (keys, values, n) = by_map.entry(name).or_default();
            keys.extend_from_slice(&key);
            // SAFETY: policy_value is plain old data (two u64).
            values.extend_from_slice(unsafe { plain::as_bytes(&value) });
            *n += 1;
            if *n as usize == BATCH {
                let (k, v, n) = std::mem::take(by_map.get_mut(name).expect("just used"));
                self.write_batch(name, &k, &v, n)?;
            }
        }
        for (name, (k, v, n)) in by_map {
            if n > 0 {
                self.write_batch(name, &k, &v, n)?;
            }
        }
        Ok(())
    }

    fn write_batch(&self, name: &str, keys: &[u8], values: &[u8], n: u32) -> Result<()> {
        self.mark_used(name)?;
        let map = self.map(name);
        map.update_batch(keys, values, n, MapFlags::ANY, MapFlags::ANY).map_err(|e| {
            if e.kind() == libbpf_rs::ErrorKind::OutOfMemory || e.to_string().contains("No space") {
                anyhow!("adding rules to {name}: the list is full ({} rules at most)", map.max_entries())
            } else {
                anyhow!("adding rules to {name}: {e}")
            }
        })
    }

    /// Records (or, with no expiry, forgets) a rule in the expiry index.
    fn index_expiry(&self, name: &str, key: &[u8], expires_ns: u64) -> Result<()> {
        let Some(k) = expiring_key(name, key) else { return Ok(()) };
        // SAFETY: expiring_key is plain old data.
        let kb = unsafe { plain::as_bytes(&k) };
        let index = self.map("expiring");
        if expires_ns == 0 {
            let _ = index.delete(kb); // absent unless it had a TTL before
            return Ok(());
        }
        index
            .update(kb, &expires_ns.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| anyhow!("indexing the rule's TTL: {e}"))
    }

    /// Deletes the rules whose time is up, found through the expiry index
    /// (the kernel already ignores them); returns how many.
    pub fn sweep(&self) -> Result<usize> {
        let now = crate::bpf::clock_ns(libc::CLOCK_MONOTONIC);
        let index = self.map("expiring");
        let mut gone = Vec::new();
        for kb in index.keys() {
            let Ok(Some(v)) = index.lookup(&kb, MapFlags::ANY) else { continue };
            let expires = u64::from_ne_bytes(v.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
            if expires <= now {
                gone.push(kb);
            }
        }
        for kb in &gone {
            let mut k = types::expiring_key::default();
            if plain::copy_from_bytes(&mut k, kb).is_ok() {
                if let Some(name) = list_map(k.list) {
                    let map = self.map(name);
                    let len = map.key_size() as usize;
                    // Only if the rule still expires: it may have been
                    // added again since, without a TTL.
                    let still = map.lookup(&k.key[..len], MapFlags::ANY).ok().flatten().is_some_and(|v| {
                        let mut value = types::policy_value::default();
                        plain::copy_from_bytes(&mut value, &v).is_ok()
                            && value.expires_ns != 0
                            && value.expires_ns <= now
                    });
                    if still {
                        let _ = map.delete(&k.key[..len]);
                    }
                }
            }
            let _ = index.delete(kb);
        }
        // L7 rules are few, and their keys too long for the index: walked.
        let l7 = self.map("l7_rules");
        let mut expired = 0;
        for kb in l7.keys().collect::<Vec<_>>() {
            let Ok(Some(v)) = l7.lookup(&kb, MapFlags::ANY) else { continue };
            let mut value = types::policy_value::default();
            if plain::copy_from_bytes(&mut value, &v).is_ok()
                && value.expires_ns != 0
                && value.expires_ns <= now
            {
                expired += usize::from(l7.delete(&kb).is_ok());
            }
        }
        if expired > 0 {
            self.refresh_l7_used()?;
        }
        Ok(gone.len() + expired)
    }

    /// Whether an allow rule covers `addr`: one longest-prefix lookup.
    pub fn allowed(&self, addr: IpAddr) -> bool {
        let (name, key) = rule_key(&Rule {
            list: List::Allow,
            cidr: Cidr { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } },
            port: None,
            ttl: None,
            name: None,
        });
        let now = crate::bpf::clock_ns(libc::CLOCK_MONOTONIC);
        self.map(name).lookup(&key, MapFlags::ANY).ok().flatten().is_some_and(|v| {
            let mut value = types::policy_value::default();
            plain::copy_from_bytes(&mut value, &v).is_ok()
                && (value.expires_ns == 0 || value.expires_ns > now)
        })
    }

    /// Tells the kernel that list `name` has rules (see struct policy_used).
    fn mark_used(&self, name: &str) -> Result<()> {
        let map = self.map("policy_used");
        let key = 0u32.to_ne_bytes();
        let mut used = types::policy_used::default();
        if let Some(v) = map.lookup(&key, MapFlags::ANY)? {
            plain::copy_from_bytes(&mut used, &v).map_err(|_| anyhow!("reading policy_used"))?;
        }
        let field = match name {
            "allow_v4" => &mut used.allow_v4,
            "allow_v6" => &mut used.allow_v6,
            "ports_v4" => &mut used.ports_v4,
            "ports_v6" => &mut used.ports_v6,
            _ => return Ok(()), // block lists are always consulted
        };
        if *field == 1 {
            return Ok(());
        }
        *field = 1;
        map.update(&key, &key_bytes(&used), MapFlags::ANY)
            .map_err(|e| anyhow!("enabling the {name} list: {e}"))
    }

    /// Tells the kernel that L7 rules of `kind` exist: from then on, the
    /// guard holds each new flow's first bytes (see struct policy_used).
    fn mark_l7_used(&self, kind: NameKind) -> Result<()> {
        let map = self.map("policy_used");
        let key = 0u32.to_ne_bytes();
        let mut used = types::policy_used::default();
        if let Some(v) = map.lookup(&key, MapFlags::ANY)? {
            plain::copy_from_bytes(&mut used, &v).map_err(|_| anyhow!("reading policy_used"))?;
        }
        let i = usize::from(kind.value());
        if used.l7[0] == 1 && used.l7[i] == 1 {
            return Ok(());
        }
        used.l7[0] = 1;
        used.l7[i] = 1;
        map.update(&key, &key_bytes(&used), MapFlags::ANY)
            .map_err(|e| anyhow!("enabling {} rules: {e}", kind.field()))
    }

    /// Deletes a rule; an error if there is no such rule.
    pub fn delete(&self, r: &Rule) -> Result<()> {
        let (name, key) = rule_key(r);
        self.map(name).delete(&key).map_err(|_| anyhow!("no such rule: {}", describe(r)))?;
        if r.name.is_some() {
            self.refresh_l7_used()?;
        }
        self.index_expiry(name, &key, 0)
    }

    /// Makes the kernel's L7 flags say which kinds of L7 rules exist now:
    /// with none left, the guard holds no flow, and drops none it cannot
    /// read. Read again after writing: a rule added meanwhile (by another
    /// process) sets its flag back.
    fn refresh_l7_used(&self) -> Result<()> {
        let map = self.map("policy_used");
        let key = 0u32.to_ne_bytes();
        let kinds = || -> std::collections::BTreeSet<u8> {
            self.map("l7_rules")
                .keys()
                .filter_map(|k| {
                    let mut rk = types::l7_rule_key::default();
                    plain::copy_from_bytes(&mut rk, &k).ok().map(|_| rk.kind)
                })
                .collect()
        };
        for _ in 0..3 {
            let present = kinds();
            let mut used = types::policy_used::default();
            if let Some(v) = map.lookup(&key, MapFlags::ANY)? {
                plain::copy_from_bytes(&mut used, &v).map_err(|_| anyhow!("reading policy_used"))?;
            }
            for (i, flag) in used.l7.iter_mut().enumerate().skip(1) {
                *flag = u8::from(present.contains(&(i as u8)));
            }
            used.l7[0] = u8::from(!present.is_empty());
            map.update(&key, &key_bytes(&used), MapFlags::ANY)
                .map_err(|e| anyhow!("updating the L7 rule flags: {e}"))?;
            if kinds() == present {
                break;
            }
        }
        Ok(())
    }

    /// Every rule with its hits, and expired ones removed (returns how many).
    pub fn list(&self) -> Result<(Vec<RuleState>, usize)> {
        let now = crate::bpf::clock_ns(libc::CLOCK_MONOTONIC);
        let mut out = Vec::new();
        let mut expired = 0;
        for (name, map) in &self.maps {
            if name == "counters" || name == "policy_used" || name == "expiring" {
                continue;
            }
            for key in map.keys() {
                let Some(rule) = key_rule(name, &key) else { continue };
                let Ok(Some(v)) = map.lookup(&key, MapFlags::ANY) else { continue };
                let mut value = types::policy_value::default();
                if plain::copy_from_bytes(&mut value, &v).is_err() {
                    continue;
                }
                if value.expires_ns != 0 && value.expires_ns <= now {
                    let _ = map.delete(&key);
                    expired += 1;
                    continue;
                }
                out.push(RuleState {
                    rule,
                    hits: value.hits,
                    expires_in: (value.expires_ns != 0).then(|| Duration::from_nanos(value.expires_ns - now)),
                });
            }
        }
        Ok((out, expired))
    }
}

// SAFETY: two u64, no padding.
unsafe impl plain::Plain for types::policy_value {}
// SAFETY: bytes only, explicit padding.
unsafe impl plain::Plain for types::expiring_key {}
// SAFETY: integers and byte arrays, explicit padding.
unsafe impl plain::Plain for types::policy_key_v4 {}
// SAFETY: as above.
unsafe impl plain::Plain for types::policy_key_v6 {}
// SAFETY: as above.
unsafe impl plain::Plain for types::port_key_v4 {}
// SAFETY: as above.
unsafe impl plain::Plain for types::port_key_v6 {}
// SAFETY: bytes only.
unsafe impl plain::Plain for types::policy_used {}
// SAFETY: an integer and bytes, explicit padding.
unsafe impl plain::Plain for types::l7_rule_key {}

/// A rule in the words of the CLI.
pub fn describe(r: &Rule) -> String {
    let list = if r.list == List::Allow { "allow" } else { "block" };
    if let Some(n) = &r.name {
        return format!("{list} {} {}", n.kind.field().replace('_', "-"), n.name);
    }
    let port = r.port.map_or(String::new(), |p| format!(" port {p}"));
    format!("{list} {}/{}{port}", r.cidr.addr, r.cidr.prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_file_errors_name_the_line() {
        let ok = "[[block]]\ncidr = \"198.18.0.0/24\"\nport = 22\nttl = \"10m\"\n\n[[allow]]\ncidr = \"2001:db8::1\"\n";
        let rules = parse_rules(ok, "r.toml").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].port, Some(22));
        assert_eq!(rules[0].ttl, Some(Duration::from_secs(600)));
        assert_eq!(rules[1].list, List::Allow);

        let bad_cidr = "[[block]]\ncidr = \"198.18.0.0/24\"\n\n[[block]]\ncidr = \"198.18.0.0/33\"\n";
        let e = parse_rules(bad_cidr, "r.toml").unwrap_err().to_string();
        assert!(e.starts_with("r.toml:4:") && e.contains("prefix 33"), "{e}");
        let bad_key = "[[block]]\ncidr = \"198.18.0.0/24\"\nprot = 22\n";
        let e = parse_rules(bad_key, "r.toml").unwrap_err().to_string();
        assert!(e.starts_with("r.toml:") && e.contains("prot"), "{e}");
        let bad_ttl = "[[block]]\ncidr = \"198.18.0.1\"\nttl = \"soon\"\n";
        assert!(parse_rules(bad_ttl, "r.toml").unwrap_err().to_string().contains("r.toml:1: bad duration"));
        assert!(parse_rules("[[allow]]\ncidr = \"198.18.0.1\"\nport = 1\n", "r").is_err());
    }

    #[test]
    fn plain_form_reads_as_toml_does() {
        let text = "# rules\n[[allow]]\ncidr = \"2001:db8::1\"\nttl = \"1h\"\n\n[[block]]\n  cidr = \"198.18.0.0/24\"\nport = 22\n\
                    ttl = \"10m\"\n[[block]]\ncidr=\"198.18.1.7\"\n";
        let plain = plain_tables(text).expect("the plain form");
        let parsed: RulesFile = toml::from_str(text).unwrap();
        let lines = Lines::new(text);
        let mut via_toml: Vec<_> = parsed.block.into_iter().map(|i| (List::Block, i)).collect();
        via_toml.extend(parsed.allow.into_iter().map(|i| (List::Allow, i)));
        assert_eq!(plain.len(), via_toml.len());
        for ((l1, line1, a), (l2, b)) in plain.iter().zip(&via_toml) {
            assert_eq!((l1, *line1), (l2, lines.of(b.span().start)));
            let b = b.get_ref();
            assert_eq!((&a.cidr, a.port, &a.ttl), (&b.cidr, b.port, &b.ttl));
        }
        // Anything else goes to the TOML parser.
        for other in [
            "[[block]]\ncidr = 'single quoted'\n",
            "[[block]]\ncidr = \"198.18.0.1\" # trailing comment\n",
            "[[block]]\nport = 22\n",
            "cidr = \"198.18.0.1\"\n",
            "[[block]]\ncidr = \"a\"\ncidr = \"b\"\n",
            "[block]\ncidr = \"198.18.0.1\"\n",
        ] {
            assert!(plain_tables(other).is_none(), "{other:?}");
        }
        // And `block save` writes the plain form.
        let saved = to_rules_file(&[RuleState {
            rule: Rule {
                list: List::Block,
                cidr: "198.18.0.0/24".parse().unwrap(),
                port: Some(80),
                ttl: None,
                name: None,
            },
            hits: 3,
            expires_in: Some(Duration::from_millis(1500)),
        }]);
        assert!(plain_tables(&saved).is_some(), "{saved}");
        assert_eq!(parse_rules(&saved, "s").unwrap()[0].ttl, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn keys_round_trip_and_mask() {
        let r = Rule {
            list: List::Block,
            cidr: Cidr { addr: "198.18.7.9".parse().unwrap(), prefix: 24 },
            port: Some(443),
            ttl: None,
            name: None,
        };
        let (name, k) = rule_key(&r);
        assert_eq!(name, "ports_v4");
        assert_eq!(k.len(), 12);
        let back = key_rule(name, &k).unwrap();
        assert_eq!(back.cidr.addr.to_string(), "198.18.7.0");
        assert_eq!((back.cidr.prefix, back.port), (24, Some(443)));
        let r6 = Rule {
            list: List::Allow,
            cidr: Cidr { addr: "2001:db8::1".parse().unwrap(), prefix: 64 },
            port: None,
            ttl: None,
            name: None,
        };
        let (name, k) = rule_key(&r6);
        assert_eq!((name, k.len()), ("allow_v6", 20));
        assert_eq!(key_rule(name, &k).unwrap().cidr.addr.to_string(), "2001:db8::");
    }

    #[test]
    fn name_rules_parse_key_and_round_trip() {
        use NameKind::*;
        let key = |k, n: &str| NameRule::parse(k, n).unwrap().key();
        // Exact: the name reversed, then the 0 end mark, all in the prefix.
        let k = key(Sni, "A.Example.com.");
        assert_eq!((k.kind, &k.name[..14], k.prefixlen), (1, &b"moc.elpmaxe.a\0"[..], 8 * 15));
        // Wildcard: ".example.com" reversed, no end mark: a prefix of every
        // name under it, not of example.com itself.
        let w = key(Host, "*.example.com");
        assert_eq!((w.kind, &w.name[..12], w.prefixlen), (2, &b"moc.elpmaxe."[..], 8 * 13));
        let m = key(HttpMethod, "connect");
        assert_eq!((m.kind, &m.name[..8], m.prefixlen), (3, &b"tcennoc\0"[..], 8 * 9));
        for (kind, text, want) in [
            (Sni, "A.Example.com.", "block sni a.example.com"),
            (Host, "*.example.com", "block host *.example.com"),
            (HttpMethod, "connect", "block http-method CONNECT"),
            (Host, "[2001:db8::1]", "block host [2001:db8::1]"),
        ] {
            let r = Rule::on_name(NameRule::parse(kind, text).unwrap(), None);
            let (map, k) = rule_key(&r);
            assert_eq!(map, "l7_rules");
            let back = key_rule(map, &k).unwrap();
            assert_eq!(describe(&back), want);
            assert_eq!(back, r);
        }
        for (kind, bad) in [
            (Sni, ""),
            (Sni, "*"),
            (Sni, "a..b"),
            (Sni, "a b"),
            (Sni, "*.*.a"),
            (Host, "*.[2001:db8::1]"),
            (HttpMethod, "GE T"),
            (HttpMethod, "AVERYLONGMETHODNAME"),
        ] {
            assert!(NameRule::parse(kind, bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.example", "a".repeat(121));
        assert!(NameRule::parse(Sni, &long).unwrap_err().contains("longer than 128"));
    }

    #[test]
    fn rules_files_take_name_rules() {
        let text = "[[block]]\nsni = \"*.example.com\"\nttl = \"1h\"\n\n[[block]]\nhttp_method = \"TRACE\"\n\n[[block]]\ncidr = \"198.18.0.1\"\n";
        let rules = parse_rules(text, "r.toml").unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(describe(&rules[0]), "block sni *.example.com");
        assert_eq!(rules[0].ttl, Some(Duration::from_secs(3600)));
        assert_eq!(describe(&rules[1]), "block http-method TRACE");
        // Written back and read again: the same rules.
        let states: Vec<RuleState> =
            rules.iter().map(|r| RuleState { rule: r.clone(), hits: 0, expires_in: r.ttl }).collect();
        assert_eq!(parse_rules(&to_rules_file(&states), "s").unwrap(), rules);
        for (bad, says) in [
            ("[[block]]\nsni = \"a.example\"\nport = 443\n", "r.toml:1: a rule on sni takes no cidr or port"),
            (
                "[[block]]\nsni = \"a.example\"\nhost = \"b.example\"\n",
                "r.toml:1: one of sni, host or http_method",
            ),
            ("[[allow]]\nsni = \"a.example\"\n", "r.toml:1: allow rules take a cidr only"),
            ("[[block]]\nport = 22\n", "r.toml:1: a rule needs a cidr"),
            ("[[block]]\nhost = \"a b\"\n", "r.toml:1: --host 'a b': give a host name"),
        ] {
            let e = parse_rules(bad, "r.toml").unwrap_err().to_string();
            assert!(e.starts_with(says), "{e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("3").unwrap_err().contains("give a unit"));
        assert!(parse_duration("99999999999d").unwrap_err().contains("too long"));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }
}
