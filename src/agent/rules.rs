//! The agent's own rules: those added through its control API (or by
//! `tcpscope block` talking to it), for every interface it guards or for
//! one. They are kept in a JSON file in the state directory, written
//! whole (to a new file, then renamed) on every change, so that a restart,
//! even after `kill -9`, or an interface that comes and goes, finds them
//! again. TTLs are kept as a wall-clock time of expiry. The pinned maps
//! hold them too; this file is what a guard started anew is given.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::policy::{List, Rule, RuleSpec};

/// One rule as the agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRule {
    /// "allow" or "block".
    pub list: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    /// Wall-clock time of expiry, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The one interface it is for; none: every guarded interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn list_name(l: List) -> &'static str {
    if l == List::Allow {
        "allow"
    } else {
        "block"
    }
}

pub fn parse_list(s: &str) -> Result<List> {
    match s {
        "allow" => Ok(List::Allow),
        "block" => Ok(List::Block),
        _ => Err(anyhow!("list '{s}': use \"allow\" or \"block\"")),
    }
}

impl StoredRule {
    pub fn new(rule: &Rule, comment: Option<String>, interface: Option<String>) -> Self {
        StoredRule {
            list: list_name(rule.list).into(),
            spec: RuleSpec::of(rule),
            expires_unix_ms: rule.ttl.map(|t| unix_ms() + t.as_millis() as u64),
            comment,
            interface,
        }
    }

    /// The rule, with what is left of its TTL; none once expired.
    pub fn rule(&self, now_ms: u64) -> Option<Rule> {
        let ttl = match self.expires_unix_ms {
            Some(at) if at <= now_ms => return None,
            Some(at) => Some(std::time::Duration::from_millis(at - now_ms)),
            None => None,
        };
        self.spec.rule(parse_list(&self.list).ok()?, ttl).ok()
    }

    fn same(&self, r: &Rule, interface: Option<&str>) -> bool {
        self.rule(0).is_some_and(|mine| crate::policy::rule_key(&mine) == crate::policy::rule_key(r))
            && self.interface.as_deref() == interface
    }
}

pub struct RuleStore {
    path: PathBuf,
    pub rules: Vec<StoredRule>,
}

impl RuleStore {
    /// The store at `path`; empty if there is none yet.
    pub fn load(path: &Path) -> Result<Self> {
        let rules = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                anyhow!(
                    "{}: not a rules store ({e}): move it away to start with no agent rules",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(RuleStore { path: path.to_path_buf(), rules })
    }

    /// The rules for `iface` that have not expired.
    pub fn for_interface(&self, iface: &str) -> Vec<Rule> {
        let now = unix_ms();
        self.rules
            .iter()
            .filter(|r| r.interface.as_deref().is_none_or(|i| i == iface))
            .filter_map(|r| r.rule(now))
            .collect()
    }

    /// The comment of a rule for `iface`, if it has one.
    pub fn comment(&self, r: &Rule, iface: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|s| s.same(r, Some(iface)) || s.same(r, None))
            .and_then(|s| s.comment.as_deref())
    }

    /// Adds (or replaces) rules, and writes the store.
    pub fn add(&mut self, new: Vec<StoredRule>) -> Result<()> {
        let now = unix_ms();
        for n in new {
            let Some(rule) = n.rule(now) else { continue };
            self.rules.retain(|s| !s.same(&rule, n.interface.as_deref()));
            self.rules.push(n);
        }
        self.save()
    }

    /// Removes a rule (the one for `interface`; with none, the rule for
    /// whichever interface), and writes the store. Whether it was there.
    pub fn delete(&mut self, r: &Rule, interface: Option<&str>) -> Result<bool> {
        let before = self.rules.len();
        let key = crate::policy::rule_key(r);
        self.rules.retain(|s| match interface {
            Some(_) => !s.same(r, interface),
            None => s.rule(0).is_none_or(|mine| crate::policy::rule_key(&mine) != key),
        });
        let gone = self.rules.len() != before;
        self.save()?;
        Ok(gone)
    }

    /// Removes every rule of `list` (for `interface`, or all of them).
    pub fn flush(&mut self, list: List, interface: Option<&str>) -> Result<()> {
        self.rules.retain(|s| {
            s.list != list_name(list) || interface.is_some_and(|i| s.interface.as_deref() != Some(i))
        });
        self.save()
    }

    /// Writes the store: expired rules left out, a new file renamed over
    /// the old one after it is on disk.
    fn save(&mut self) -> Result<()> {
        let now = unix_ms();
        self.rules.retain(|r| r.rule(now).is_some());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = self.path.with_extension("new");
        let text = serde_json::to_vec_pretty(&self.rules)?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, port: Option<u16>, ttl: Option<u64>) -> Rule {
        Rule {
            list: List::Block,
            cidr: cidr.parse().unwrap(),
            port,
            ttl: ttl.map(std::time::Duration::from_secs),
            name: None,
        }
    }

    #[test]
    fn rules_come_back_from_the_file_with_their_interface_and_ttl() {
        let dir = std::env::temp_dir().join(format!("tcpscope-store-{}", std::process::id()));
        let path = dir.join("rules.json");
        let mut s = RuleStore::load(&path).unwrap();
        assert!(s.rules.is_empty());
        s.add(vec![
            StoredRule::new(&rule("198.18.0.1/32", Some(80), None), Some("bad bot".into()), None),
            StoredRule::new(&rule("198.18.0.2/32", None, Some(3600)), None, Some("va".into())),
        ])
        .unwrap();
        let again = RuleStore::load(&path).unwrap();
        assert_eq!(again.for_interface("va").len(), 2);
        let vb = again.for_interface("vb");
        assert_eq!(vb, vec![rule("198.18.0.1/32", Some(80), None)]);
        let ttl = again.for_interface("va")[1].ttl.unwrap().as_secs();
        assert!((3590..=3600).contains(&ttl), "{ttl}");
        assert_eq!(again.comment(&rule("198.18.0.1/32", Some(80), None), "vb"), Some("bad bot"));
        // Deleting for one interface takes that interface's rule only;
        // deleting for all takes the rule whatever it was for.
        let mut s = again;
        assert!(!s.delete(&rule("198.18.0.2/32", None, None), Some("vb")).unwrap());
        assert!(s.delete(&rule("198.18.0.2/32", None, None), None).unwrap());
        s.flush(List::Block, None).unwrap();
        assert!(RuleStore::load(&path).unwrap().rules.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_name_rule_is_stored_and_read_back() {
        let n = crate::policy::NameRule::parse(crate::policy::NameKind::Sni, "*.Example.COM").unwrap();
        let r = Rule::on_name(n, Some(std::time::Duration::from_secs(60)));
        let stored = StoredRule::new(&r, Some("why".into()), Some("eth0".into()));
        let text = serde_json::to_string(&stored).unwrap();
        assert!(text.contains(r#""sni":"*.example.com""#) && !text.contains("cidr"), "{text}");
        let back: StoredRule = serde_json::from_str(&text).unwrap();
        let again = back.rule(unix_ms()).unwrap();
        assert_eq!((again.name, again.list), (r.name, List::Block));
        assert!(again.ttl.unwrap() > std::time::Duration::from_secs(58));
        // A store written before name rules existed reads as it did.
        let old: StoredRule =
            serde_json::from_str(r#"{"list":"block","cidr":"198.18.0.0/24","port":22}"#).unwrap();
        assert_eq!(old.rule(0).unwrap().port, Some(22));
    }

    #[test]
    fn expired_rules_are_not_given_and_a_broken_store_says_what_to_do() {
        let r = StoredRule {
            expires_unix_ms: Some(unix_ms() - 1),
            ..StoredRule::new(&rule("198.18.0.3/32", None, None), None, None)
        };
        assert_eq!(r.rule(unix_ms()), None);
        let dir = std::env::temp_dir().join(format!("tcpscope-store-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = RuleStore::load(&path).err().unwrap().to_string();
        assert!(e.contains("move it away"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
