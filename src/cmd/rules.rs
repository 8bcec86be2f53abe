//! `tcpscope block` and `tcpscope allow`: edit, list and save the rules of
//! a running agent (through its control socket) or guard (through its
//! pinned maps).

use anyhow::{Context, Result};

use crate::cli::{AllowArgs, AllowCmd, BlockArgs, BlockCmd};
use crate::output::print_line;
use crate::policy::{self, List, Rule};
use crate::rule_target::{Row, RuleTarget};

fn list(target: &RuleTarget, which: List, json: bool) -> Result<()> {
    let mut rows = target.list()?;
    rows.retain(|r| r.state.rule.list == which);
    rows.sort_by(|a, b| {
        let key = |r: &Row| {
            (r.state.rule.name.clone(), r.state.rule.cidr.addr, r.state.rule.cidr.prefix, r.state.rule.port)
        };
        key(a).cmp(&key(b)).then(a.interface.cmp(&b.interface))
    });
    if rows.is_empty() {
        // On stderr: standard output stays empty for scripts.
        eprintln!("tcpscope: no {} rules", if which == List::Allow { "allow" } else { "block" });
    }
    for Row { interface, state: r, comment } in rows {
        let line = if json {
            let mut v = serde_json::to_value(policy::RuleSpec::of(&r.rule)).unwrap_or_default();
            v["list"] = (if which == List::Allow { "allow" } else { "block" }).into();
            if r.rule.name.is_none() {
                v["port"] = r.rule.port.into();
            }
            v["hits"] = r.hits.into();
            v["expires_in_ms"] = r.expires_in.map(|d| d.as_millis() as u64).into();
            if let Some(i) = interface {
                v["interface"] = i.into();
            }
            if let Some(c) = comment {
                v["comment"] = c.into();
            }
            v.to_string()
        } else {
            let ttl = r.expires_in.map_or(String::new(), |d| format!(", expires in {:.1}s", d.as_secs_f64()));
            let on = interface.map_or(String::new(), |i| format!("{i}: "));
            let note = comment.map_or(String::new(), |c| format!(" ({c})"));
            format!("{on}{}: {} hits{ttl}{note}", policy::describe(&r.rule), r.hits)
        };
        if !print_line(&line) {
            break;
        }
    }
    Ok(())
}

/// The CIDRs of `block add` / `allow add`: as given, with `-` standing for
/// standard input's lines (blank lines and # comments skipped). Every CIDR
/// is checked before any rule is written.
fn read_cidrs(args: &[String]) -> Result<Vec<crate::filter::Cidr>> {
    let mut out = Vec::new();
    for a in args {
        if a != "-" {
            out.push(a.parse().map_err(|e| crate::cli::UsageError(format!("{e}")))?);
            continue;
        }
        for (i, line) in std::io::stdin().lines().enumerate() {
            let line = line.context("reading CIDRs from standard input")?;
            let t = line.split('#').next().unwrap_or("").trim();
            if !t.is_empty() {
                out.push(
                    t.parse()
                        .map_err(|e| crate::cli::UsageError(format!("standard input line {}: {e}", i + 1)))?,
                );
            }
        }
    }
    Ok(out)
}

pub fn block(args: &BlockArgs) -> Result<()> {
    // The input is checked before any guard is looked for.
    let usage = |e: String| crate::cli::UsageError(e);
    let adding = match &args.cmd {
        BlockCmd::Add { cidrs, port, ttl, names, .. } => {
            let mut rules = names.rules(*ttl).map_err(usage)?;
            if !rules.is_empty() && port.is_some() {
                return Err(usage(
                    "--port is for CIDR rules: a rule on --sni, --host or --http-method applies to every port".into(),
                )
                .into());
            }
            rules.extend(read_cidrs(cidrs)?.into_iter().map(|cidr| Rule {
                list: List::Block,
                cidr,
                port: *port,
                ttl: *ttl,
                name: None,
            }));
            rules
        }
        _ => Vec::new(),
    };
    let deleting = match &args.cmd {
        BlockCmd::Del { cidr, port, names } => {
            let mut named = names.rules(None).map_err(usage)?;
            match (cidr, named.len()) {
                (Some(cidr), 0) => Some(Rule { list: List::Block, cidr: *cidr, port: *port, ttl: None, name: None }),
                (None, 1) if port.is_none() => named.pop(),
                _ => {
                    return Err(usage(
                        "block del removes one rule: give its CIDR (and --port), or one --sni, --host or --http-method"
                            .into(),
                    )
                    .into())
                }
            }
        }
        _ => None,
    };
    let maps = RuleTarget::open(&args.guard)?;
    match &args.cmd {
        BlockCmd::Add { comment, .. } => maps.add_many(&adding, comment.as_deref()),
        BlockCmd::Del { .. } => maps.delete(deleting.as_ref().expect("checked above")),
        BlockCmd::List { json } => list(&maps, List::Block, *json),
        BlockCmd::Flush => {
            let n = maps.flush(List::Block)?;
            eprintln!("tcpscope: {n} block rules removed");
            Ok(())
        }
        BlockCmd::Save { file } => {
            // Through an agent, a rule on several interfaces is one line.
            let mut rules: Vec<_> = maps.list()?.into_iter().map(|r| r.state).collect();
            rules.sort_by_key(|r| {
                (
                    r.rule.list == List::Allow,
                    r.rule.name.clone(),
                    r.rule.cidr.addr,
                    r.rule.cidr.prefix,
                    r.rule.port,
                )
            });
            rules.dedup_by_key(|r| policy::rule_key(&r.rule));
            let text = policy::to_rules_file(&rules);
            if file.as_os_str() == "-" {
                print_line(text.trim_end());
            } else {
                std::fs::write(file, text).with_context(|| format!("cannot write '{}'", file.display()))?;
                eprintln!("tcpscope: {} rules saved to {}", rules.len(), file.display());
            }
            Ok(())
        }
    }
}

pub fn allow(args: &AllowArgs) -> Result<()> {
    let adding = match &args.cmd {
        AllowCmd::Add { cidrs, ttl, .. } => read_cidrs(cidrs)?
            .into_iter()
            .map(|cidr| Rule { list: List::Allow, cidr, port: None, ttl: *ttl, name: None })
            .collect(),
        _ => Vec::new(),
    };
    let maps = RuleTarget::open(&args.guard)?;
    match &args.cmd {
        AllowCmd::Add { comment, .. } => maps.add_many(&adding, comment.as_deref()),
        AllowCmd::Del { cidr } => {
            maps.delete(&Rule { list: List::Allow, cidr: *cidr, port: None, ttl: None, name: None })
        }
        AllowCmd::List { json } => list(&maps, List::Allow, *json),
        AllowCmd::Flush => {
            let n = maps.flush(List::Allow)?;
            eprintln!("tcpscope: {n} allow rules removed");
            Ok(())
        }
    }
}
