//! The interfaces an agent follows, each with its ingress programs (the
//! guard's, when it guards) while it is there. They are given as names,
//! globs (`veth*`, `eth?`) or `all` (every interface but loopback).
//!
//! A netlink socket subscribed to link events says when interfaces come
//! and go; the list is then read again. One that goes away is not an
//! error on a host where containers come and go: a named one is attached
//! again once an interface of that name is back, its counters going on
//! from where they were; one that matched a glob is forgotten, series
//! included, so that churning container interfaces do not grow the
//! series without bound. Says what changed; never prints.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Result};

use crate::agent::metrics::Metrics;
use crate::cli::{AttachArgs, GuardArgs};
use crate::detect::{RatioWatch, Settings};
use crate::filter::EventFilter;
use crate::output::alert::Alert;
use crate::policy::Rule;
use crate::view::guard::Guard;
use crate::view::ingress::Session;
use crate::view::l7::L7Reader;
use tcpscope_wire::l7::custom::Protocols;
use tcpscope_wire::l7::track::Record;

/// The ring of an interface with L7 hints: 16 MiB.
const L7_RING: u32 = 16 << 20;

/// The programs on one interface.
pub enum Attached {
    Counting(Box<Counted>),
    Guarding(Box<Guarded>),
}

pub struct Counted {
    /// L7 hints, when on: read before the session goes.
    pub l7: Option<L7Reader>,
    pub session: Session,
}

pub struct Guarded {
    /// L7 hints, when on (and the guard inspects): read before the guard goes.
    pub l7: Option<L7Reader>,
    pub guard: Guard,
    settings: Settings,
    ratio: RatioWatch,
}

impl Attached {
    pub fn session(&self) -> &Session {
        match self {
            Attached::Counting(c) => &c.session,
            Attached::Guarding(g) => &g.guard.session,
        }
    }
}

struct Entry {
    name: String,
    /// Named, not matched by a glob: kept while gone, attached again.
    named: bool,
    state: Option<Attached>,
    /// The interface index an attach failed on: not tried again (a BPF
    /// load, and a line said, every poll) until the index changes.
    refused: Option<u32>,
}

/// The rules a guard on an interface is to hold: the agent's rules file
/// and its own rules.
pub type RulesFor<'a> = &'a dyn Fn(&str) -> Vec<Rule>;

pub struct Interfaces {
    patterns: Vec<String>,
    netns: Option<String>,
    /// The guard's settings, when it guards (the interface left blank).
    guard: Option<GuardArgs>,
    list: Vec<Entry>,
    links: Option<LinkEvents>,
    /// Interfaces a glob matched that could not be attached: tried again
    /// only once they have gone and come back.
    refused: HashSet<String>,
    /// Count packets and SYNs per source in the kernel.
    pub top_sources: bool,
    /// L7 hints on counting interfaces, with these custom protocols.
    pub l7: Option<Protocols>,
    /// Rule counts (allow, block), read every few polls.
    pub rules: Option<(usize, usize)>,
    polls: u64,
}

fn is_glob(p: &str) -> bool {
    p == "all" || p.contains(['*', '?', '['])
}

/// Whether `name` matches `pattern` (fnmatch(3); `all` is every interface
/// but loopback).
fn matches(pattern: &str, name: &str) -> bool {
    if pattern == "all" {
        return name != "lo";
    }
    let (Ok(p), Ok(n)) = (CString::new(pattern), CString::new(name)) else { return false };
    // SAFETY: two valid NUL-terminated strings.
    unsafe { libc::fnmatch(p.as_ptr(), n.as_ptr(), 0) == 0 }
}

/// The interfaces of this thread's network namespace.
pub fn present() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed
    // below; names are NUL-terminated.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push(CStr::from_ptr((*p).if_name).to_string_lossy().into_owned());
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// A netlink socket on the link group (RTMGRP_LINK): readable when an
/// interface is added, removed or changed.
struct LinkEvents(OwnedFd);

impl LinkEvents {
    fn open() -> Option<Self> {
        // SAFETY: plain socket calls on a zeroed sockaddr_nl.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            sa.nl_groups = libc::RTMGRP_LINK as u32;
            let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
            if libc::bind(fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, len) != 0 {
                return None;
            }
            Some(LinkEvents(fd))
        }
    }

    /// Whether anything happened since the last call (messages drained;
    /// an overflow counts as something).
    fn changed(&self) -> bool {
        let mut any = false;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a buffer we own, without waiting.
            let n = unsafe {
                libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            };
            if n > 0 {
                any = true;
                continue;
            }
            let e = std::io::Error::last_os_error().raw_os_error();
            return any || (n < 0 && e == Some(libc::ENOBUFS));
        }
    }
}

impl Interfaces {
    /// Attaches to every interface `patterns` give, in `netns` if named (the
    /// calling thread stays in it). A name must be there at start, so that
    /// a typo is one clear error; a glob may match nothing yet.
    pub fn start(
        patterns: &[String],
        netns: Option<&str>,
        guard: Option<GuardArgs>,
        top_sources: bool,
        l7: Option<Protocols>,
        metrics: &mut Metrics,
        rules: RulesFor,
    ) -> Result<Self> {
        if let Some(ns) = netns {
            crate::bpf::attach::enter_netns(ns)?;
        }
        let mut me = Interfaces {
            patterns: Vec::new(),
            netns: netns.map(str::to_string),
            guard,
            list: Vec::new(),
            links: LinkEvents::open(),
            refused: HashSet::new(),
            top_sources,
            l7,
            rules: None,
            polls: 0,
        };
        for name in patterns.iter().filter(|p| !is_glob(p)) {
            crate::bpf::attach::ifindex(name)?;
        }
        me.patterns = patterns.to_vec();
        for name in patterns.iter().filter(|p| !is_glob(p)) {
            let a = me.attach(name, rules)?;
            metrics.declare_interface(name, a.session().hook.name());
            me.list.push(Entry { name: name.clone(), named: true, state: Some(a), refused: None });
        }
        let mut said = Vec::new();
        me.rescan(metrics, rules, &mut said);
        if let Some(e) = said.iter().find(|s| s.contains("cannot")) {
            bail!("{e}");
        }
        Ok(me)
    }

    fn attach(&self, name: &str, rules: RulesFor) -> Result<Attached> {
        let attach = AttachArgs {
            iface: name.to_string(),
            hook: self.guard.as_ref().and_then(|g| g.attach.hook),
            xdp_mode: self.guard.as_ref().and_then(|g| g.attach.xdp_mode),
            btf: None,
            netns: self.netns.clone(),
        };
        let Some(template) = &self.guard else {
            let mut config = EventFilter::default().to_kernel(false)?;
            config.top_sources = u8::from(self.top_sources);
            let counted = match &self.l7 {
                // Records of 2 KiB chunks: room for a few thousand
                // connections' first bytes between two reads.
                Some(protocols) => {
                    let session = crate::view::l7::start_session(&attach, config, L7_RING)?;
                    Counted { l7: Some(L7Reader::new(&session, protocols.clone())?), session }
                }
                None => Counted { l7: None, session: Session::start(&attach, config, 4096)? },
            };
            return Ok(Attached::Counting(Box::new(counted)));
        };
        let args = GuardArgs {
            attach,
            rules: None,
            top_sources: self.top_sources,
            l7: self.l7.is_some(),
            ..template.clone()
        };
        let guard = Guard::start(&args)?;
        guard.maps.sync_file_rules(&guard.id, &rules(name))?;
        let l7 = match &self.l7 {
            Some(protocols) if args.inspect => Some(L7Reader::new(&guard.session, protocols.clone())?),
            _ => None,
        };
        Ok(Attached::Guarding(Box::new(Guarded {
            l7,
            guard,
            settings: Settings::from(&args),
            ratio: RatioWatch::default(),
        })))
    }

    /// Interfaces a glob matches that are not followed yet are attached;
    /// those a glob matched that are gone are forgotten.
    fn rescan(&mut self, metrics: &mut Metrics, rules: RulesFor, said: &mut Vec<String>) {
        let now = present();
        self.refused.retain(|n| now.contains(n));
        for name in &now {
            let wanted = self.patterns.iter().any(|p| is_glob(p) && matches(p, name));
            if !wanted || self.refused.contains(name) || self.list.iter().any(|e| &e.name == name) {
                continue;
            }
            match self.attach(name, rules) {
                Ok(a) => {
                    let id = a.session().link.id().map_or("?".into(), |i| i.to_string());
                    said.push(format!("{name} appeared: attached (link id {id})"));
                    metrics.declare_interface(name, a.session().hook.name());
                    self.list.push(Entry { name: name.clone(), named: false, state: Some(a), refused: None });
                }
                Err(e) => {
                    said.push(format!("{name} appeared but cannot be followed: {e:#}"));
                    self.refused.insert(name.clone());
                }
            }
        }
        self.list.retain_mut(|e| {
            if e.named || now.contains(&e.name) {
                return true;
            }
            if let Some(Attached::Guarding(g)) = &e.state {
                g.guard.interface_gone();
            }
            said.push(format!("{} went away: forgotten, with its series", e.name));
            metrics.forget_interface(&e.name);
            false
        });
    }

    /// Reads every interface's counters into `metrics`, and the guards'
    /// alerts into `alerts`; follows interfaces that came or went. Returns
    /// one line for each such change.
    pub fn poll(&mut self, metrics: &mut Metrics, rules: RulesFor, alerts: &mut Vec<Alert>) -> Vec<String> {
        let mut said = Vec::new();
        // Without a netlink socket (none allowed), the list is read every time.
        if self.links.as_ref().is_none_or(LinkEvents::changed) {
            self.rescan(metrics, rules, &mut said);
        }
        for i in 0..self.list.len() {
            let gone = self.list[i].state.as_ref().and_then(|a| a.session().presence.gone());
            let entry = &mut self.list[i];
            match (&entry.state, gone) {
                (Some(a), Some(why)) => {
                    if let Attached::Guarding(g) = a {
                        g.guard.interface_gone();
                    }
                    said.push(format!("{why}; attaching again when it is back"));
                    entry.state = None;
                }
                (Some(a), None) => {
                    let s = a.session();
                    if let Ok(c) = s.counters() {
                        metrics.observe_interface(&s.ifname, s.hook.name(), &c);
                    }
                    if let Attached::Guarding(g) = a {
                        // The guard's alerts wait in its rings until read.
                        if let Ok(ring) = g.guard.alerts(&g.settings, |x| alerts.push(x)) {
                            ring.consume();
                        }
                    }
                }
                (None, _) => {
                    let name = entry.name.clone();
                    let Ok(index) = crate::bpf::attach::ifindex(&name) else { continue };
                    if entry.refused == Some(index) {
                        continue;
                    }
                    match self.attach(&name, rules) {
                        Ok(a) => {
                            let id = a.session().link.id().map_or("?".into(), |i| i.to_string());
                            said.push(format!("{name} is there: attached (link id {id})"));
                            metrics.interface_attached_again(&name);
                            metrics.declare_interface(&name, a.session().hook.name());
                            self.list[i].state = Some(a);
                        }
                        Err(e) => {
                            said.push(format!("{name} is there but cannot be attached (tried again when it is made anew): {e:#}"));
                            self.list[i].refused = Some(index);
                        }
                    }
                }
            }
        }
        for e in &mut self.list {
            if let Some(Attached::Guarding(g)) = &mut e.state {
                g.guard.sweep_expired();
                alerts.extend(g.guard.sweep_l7_flows());
                if g.ratio.due() {
                    let got = g.guard.syns_and_handshakes();
                    alerts.extend(got.and_then(|(s, d)| g.ratio.check(s, d, &g.settings)));
                }
            }
        }
        // Counting walks the tries: each poll while they are small, every
        // tenth once they are large.
        if self.rules.is_none_or(|(a, b)| a + b < 100_000) || self.polls % 10 == 0 {
            self.rules = self.guards().map(|g| g.maps.count_by_list()).max_by_key(|(a, b)| a + b);
        }
        self.polls += 1;
        said
    }

    /// The L7 records that came on every interface with L7 hints, and, with
    /// `stats_too`, what each reader has done so far (by interface).
    pub fn poll_l7(
        &mut self,
        stats_too: bool,
        mut take: impl FnMut(&str, Record),
    ) -> Vec<(String, crate::view::l7::L7Stats)> {
        let mut stats = Vec::new();
        for e in &mut self.list {
            let (reader, session) = match &mut e.state {
                Some(Attached::Counting(c)) => (&mut c.l7, &c.session),
                Some(Attached::Guarding(g)) => (&mut g.l7, &g.guard.session),
                None => continue,
            };
            let Some(reader) = reader else { continue };
            let name = &e.name;
            let _ = reader.poll(session, std::time::Duration::ZERO, |r| take(name, r));
            if let Some(s) = stats_too.then(|| reader.stats(session).ok()).flatten() {
                stats.push((name.clone(), s));
            }
        }
        stats
    }

    fn guards(&self) -> impl Iterator<Item = &Guard> {
        self.list.iter().filter_map(|e| match &e.state {
            Some(Attached::Guarding(g)) => Some(&g.guard),
            _ => None,
        })
    }

    /// (interface, program, run time in ns, runs) of every program loaded
    /// for an interface (the guard's tracepoints included).
    pub fn program_stats(&self) -> Vec<(String, String, u64, u64)> {
        let mut out = Vec::new();
        for e in &self.list {
            let Some(a) = &e.state else { continue };
            let mut stats = crate::bpf::run_stats::of_skel(&a.session().skel);
            if let Attached::Guarding(g) = a {
                stats.extend(g.guard.lc.iter().flat_map(|lc| crate::bpf::run_stats::of_skel(&lc.skel)));
            }
            out.extend(stats.into_iter().map(|(p, ns, n)| (e.name.clone(), p, ns, n)));
        }
        out
    }

    /// The ingress programs of every interface attached.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.list.iter().filter_map(|e| e.state.as_ref().map(Attached::session))
    }

    /// The guarded interfaces, as (name, guard id).
    pub fn guarded(&self) -> Vec<(String, String)> {
        self.guards().map(|g| (g.session.ifname.clone(), g.id.clone())).collect()
    }

    /// Every interface followed, attached or waiting to be back.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|e| e.name.clone()).collect()
    }

    /// Whether every named interface is attached.
    pub fn all_attached(&self) -> bool {
        self.list.iter().all(|e| e.state.is_some() || !e.named)
    }

    /// A new configuration (SIGHUP): interfaces no longer wanted are let
    /// go, new ones attached; if the guard's settings changed, every
    /// interface is attached again with them. Pinned rules stay, and so do
    /// the counters of interfaces still followed.
    pub fn reconfigure(
        &mut self,
        patterns: &[String],
        guard: Option<GuardArgs>,
        l7: Option<Protocols>,
        metrics: &mut Metrics,
        rules: RulesFor,
    ) -> Vec<String> {
        let mut said = Vec::new();
        let guard_changed = format!("{guard:?}") != format!("{:?}", self.guard);
        let l7_changed = format!("{l7:?}") != format!("{:?}", self.l7);
        self.patterns = patterns.to_vec();
        self.guard = guard;
        self.l7 = l7;
        self.list.retain(|e| {
            let keep = if e.named {
                patterns.contains(&e.name)
            } else {
                patterns.iter().any(|p| is_glob(p) && matches(p, &e.name))
            };
            if !keep {
                said.push(format!("{}: no longer wanted, detached", e.name));
                metrics.forget_interface(&e.name);
            }
            keep
        });
        for name in patterns.iter().filter(|p| !is_glob(p)) {
            if !self.list.iter().any(|e| &e.name == name) {
                self.list.push(Entry { name: name.clone(), named: true, state: None, refused: None });
            }
        }
        if l7_changed {
            said.push(format!(
                "L7 hints {}",
                if self.l7.is_some() { "on, or their protocols changed" } else { "off" }
            ));
        }
        if guard_changed || l7_changed {
            if guard_changed {
                said.push(format!(
                    "guard {}",
                    if self.guard.is_some() { "on, or its settings changed" } else { "off" }
                ));
            }
            for e in &mut self.list {
                e.state = None; // detached; attached again below
            }
        }
        self.refused.clear();
        for e in &mut self.list {
            e.refused = None; // new settings may attach where the old failed
        }
        // The named ones are attached by the next poll.
        self.rescan(metrics, rules, &mut said);
        said
    }

    /// The rules changed (the rules file reloaded): every guard is given
    /// them again. Returns (added, removed) over all guards.
    pub fn sync_rules(&self, rules: RulesFor) -> Result<(usize, usize)> {
        let mut sum = (0, 0);
        for g in self.guards() {
            let (a, r) = g.maps.sync_file_rules(&g.id, &rules(&g.session.ifname))?;
            sum = (sum.0 + a, sum.1 + r);
        }
        Ok(sum)
    }
}
