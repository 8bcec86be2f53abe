//! Where `tcpscope block` and `allow` send their rules: to a running agent
//! through its control socket, when one answers (and guards the interface
//! named, if one is); else to the pinned maps of a running guard.

use anyhow::{anyhow, Result};

use crate::agent::client::AgentClient;
use crate::cli::GuardSelect;
use crate::policy::{List, PolicyMaps, Rule, RuleState};

pub enum RuleTarget {
    Agent(AgentClient),
    Guard(PolicyMaps),
}

/// One rule as listed: on which interface (when an agent lists it), its
/// state, and its comment.
pub struct Row {
    pub interface: Option<String>,
    pub state: RuleState,
    pub comment: Option<String>,
}

impl RuleTarget {
    pub fn open(sel: &GuardSelect) -> Result<Self> {
        if let Some(agent) = AgentClient::find(&sel.agent, sel.iface.clone()) {
            // A guard in a named namespace, or an interface the agent does
            // not guard, is reached through its pins.
            let through_agent = match &sel.iface {
                None => true,
                Some(i) => sel.netns.is_none() && agent.guards(i)?,
            };
            if through_agent {
                return Ok(RuleTarget::Agent(agent));
            }
        }
        PolicyMaps::open(sel.id().as_deref()).map(RuleTarget::Guard)
    }

    pub fn add_many(&self, rules: &[Rule], comment: Option<&str>) -> Result<()> {
        match self {
            RuleTarget::Agent(a) => a.add_many(rules, comment).map(drop),
            RuleTarget::Guard(_) if comment.is_some() => Err(crate::cli::UsageError(
                "--comment is kept by a running agent; a guard keeps no comments: leave it out".into(),
            )
            .into()),
            RuleTarget::Guard(m) => m.add_many(rules),
        }
    }

    pub fn delete(&self, r: &Rule) -> Result<()> {
        match self {
            RuleTarget::Agent(a) => a.delete(r),
            RuleTarget::Guard(m) => m.delete(r),
        }
    }

    pub fn flush(&self, list: List) -> Result<usize> {
        match self {
            RuleTarget::Agent(a) => a.flush(list),
            RuleTarget::Guard(m) => m.flush(list),
        }
    }

    pub fn list(&self) -> Result<Vec<Row>> {
        match self {
            RuleTarget::Guard(m) => Ok(m
                .list()?
                .0
                .into_iter()
                .map(|state| Row { interface: None, state, comment: None })
                .collect()),
            RuleTarget::Agent(a) => a
                .list()?
                .into_iter()
                .map(|l| {
                    let rule = crate::agent::control::NewRule {
                        list: l.list,
                        spec: l.spec,
                        ttl: None,
                        comment: None,
                    }
                    .rule()
                    .map_err(|e| anyhow!("the agent listed a rule this version cannot read: {e:#}"))?;
                    let expires_in = l.expires_in_ms.map(std::time::Duration::from_millis);
                    Ok(Row {
                        interface: Some(l.interface),
                        state: RuleState { rule, hits: l.hits, expires_in },
                        comment: l.comment,
                    })
                })
                .collect(),
        }
    }
}
