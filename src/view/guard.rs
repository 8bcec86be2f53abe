//! The guard view: the ingress programs with the rules on, their maps
//! pinned for `tcpscope block` / `tcpscope allow` to edit while it runs,
//! and, for the connection limit and the SYN-to-handshake ratio, the
//! lifecycle tracepoints. Starting it claims the interface, takes over (or
//! carries over) the rules of the guard before it, loads the rules file,
//! attaches, and returns every error; what the user should hear on the way
//! is kept in `notes`. Dropping it detaches and releases the claim. It
//! never prints.

use anyhow::{Context, Result};

use crate::bpf::attach::HookKind;
use crate::bpf::lifecycle::Lifecycle;
use crate::bpf::{self, preflight};
use crate::cli::GuardArgs;
use crate::detect::{self, ConnLimit, Settings};
use crate::filter::EventFilter;
use crate::output::alert::Alert;
use crate::policy::{self, PolicyMaps, Rule};
use crate::view::ingress::Session;

/// Releases the guard's claim however it ends: the pid file and counters
/// go; the rules stay pinned for the next guard, unless the interface went
/// away (then they go too).
struct Claim {
    id: String,
    interface_gone: std::cell::Cell<bool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.interface_gone.get() {
            policy::release_all(&self.id);
        } else {
            policy::release(&self.id);
        }
    }
}

/// A running guard. Fields drop in order: the tracepoints, the maps, the
/// programs (detached), then the claim.
pub struct Guard {
    /// The lifecycle programs, when the connection limit is on and the
    /// kernel has their tracepoints.
    pub lc: Option<Lifecycle>,
    pub maps: PolicyMaps,
    pub session: Session,
    /// Rules in the lists once started.
    pub kept: usize,
    /// What the user should be told about how it started.
    pub notes: Vec<String>,
    /// The guard's id: interface, and network namespace if named.
    pub id: String,
    /// The network namespace (inode) of the guarded interface.
    pub netns: u32,
    last_sweep: std::cell::Cell<std::time::Instant>,
    last_l7_sweep: std::cell::Cell<std::time::Instant>,
    /// First messages given up on by `sweep_l7_flows`, so far.
    pub l7_timeouts: std::cell::Cell<u64>,
    l7_timeout: std::time::Duration,
    l7_undecided_pass: bool,
    /// The connection limit's alert pacing, kept across `alerts` calls.
    limit: std::cell::RefCell<ConnLimit>,
    claim: Claim,
}

/// The guard's alert ring buffers (the kernel detectors', and the
/// connection limit's), read into typed alerts.
pub struct Alerts<'a> {
    ring: libbpf_rs::RingBuffer<'a>,
}

impl Alerts<'_> {
    /// Waits up to 100 ms for alerts, and hands over every one that came
    /// (consume() too: poll() reads only the rings that woke it).
    pub fn poll(&self) {
        let _ = self.ring.poll(std::time::Duration::from_millis(100));
        let _ = self.ring.consume();
    }

    /// Hands over what has come, without waiting.
    pub fn consume(&self) {
        let _ = self.ring.consume();
    }
}

/// The rules of a rules file, read and checked.
pub fn read_rules_file(f: &std::path::Path) -> Result<Vec<Rule>> {
    policy::parse_rules(&policy::read_rules_text(f)?, &f.display().to_string())
}

impl Guard {
    /// Everything that can be wrong with the input fails before attaching.
    /// Enters the guard's network namespace (for this thread).
    pub fn start(args: &GuardArgs) -> Result<Guard> {
        let rules = match &args.rules {
            Some(f) => read_rules_file(f)?,
            None => Vec::new(),
        };
        preflight::check_privileges()?;
        if let Some(ns) = &args.attach.netns {
            crate::bpf::attach::enter_netns(ns)?;
        }
        crate::bpf::attach::ifindex(&args.attach.iface)?;
        let mut notes = Vec::new();
        let netns = crate::view::ingress::own_netns().unwrap_or(0);
        let iface = policy::guard_id(&args.attach.iface, args.attach.netns.as_deref());
        let claimed = policy::claim(&iface)?;
        if claimed.private_pins {
            notes.push("warning: /sys/fs/bpf was not mounted in this mount namespace (as under `ip netns exec`), so the guard mounted its own: its rules end when it stops, and `tcpscope block` elsewhere cannot reach them; run `tcpscope guard --netns NAME` instead".to_string());
        }
        let dir = claimed.dir;
        let claim = Claim { id: iface.clone(), interface_gone: std::cell::Cell::new(false) };

        let mut config = EventFilter::default().to_kernel(false)?;
        config.policy = 1;
        config.lean = u8::from(!args.inspect);
        config.drop_unparsable = u8::from(args.unparsable == crate::cli::Unparsable::Drop);
        config.top_sources = u8::from(args.top_sources);
        // The agent's L7 hints: only where the guard inspects (a lean guard
        // stops at its decision).
        config.l7 = u8::from(args.l7 && args.inspect);
        // XDP by default here: dropping before an skb exists is the point.
        let hook = args.attach.hook.unwrap_or(HookKind::Xdp);
        // --mitigate implies --enforce: a source over the connection limit
        // gets no new connection, besides being blocked for a while.
        let enforce = (args.enforce || args.mitigate) && args.conn_limit > 0;
        let detect = crate::bpf::types::detect_config {
            enabled: u8::from(!args.no_detect),
            scan_ports: args.scan_ports,
            scan_window_ns: args.scan_window.as_nanos() as u64,
            syn_rate: args.syn_rate,
            syn_burst: args.syn_burst.max(1),
            alert_interval_ns: args.alert_interval.as_nanos() as u64,
            mitigate_ttl_ns: if args.mitigate { args.mitigate_ttl.as_nanos() as u64 } else { 0 },
            conn_limit: args.conn_limit,
            netns,
            enforce_conn_limit: u8::from(enforce),
            l7_undecided_pass: u8::from(args.l7_undecided == crate::cli::Unparsable::Pass),
            ..Default::default()
        };
        let opts = bpf::LoadOptions {
            // Only L7 hints write records (the alerts have their own ring).
            ringbuf_bytes: if config.l7 != 0 { 16 << 20 } else { 4096 },
            detect,
            reuse_pins: Some((dir.clone(), &policy::RULE_MAPS[..])),
            ..bpf::LoadOptions::new(config)
        };
        let fresh_maps = !policy::RULE_MAPS.iter().any(|m| dir.join(m).exists());
        // The rules of the guard before this one, taken over as they are; or,
        // if its maps do not fit this version's, copied into new ones.
        let (mut session, carried) = match Session::start_with(&args.attach, hook, opts.clone()) {
            Ok(s) => (s, Vec::new()),
            Err(e) if policy::RULE_MAPS.iter().any(|m| dir.join(m).exists()) => {
                let saved = policy::read_pinned(&dir)?;
                // New maps, the old pins untouched until they load: a
                // failure that is not the maps' (the verifier, the
                // interface) must not cost the rules.
                let fresh = bpf::LoadOptions { reuse_pins: None, ..opts };
                let s = Session::start_with(&args.attach, hook, fresh).map_err(|e2| {
                    // The same failure again (not the maps'): said once.
                    if format!("{e2:#}") == format!("{e:#}") {
                        e2
                    } else {
                        e2.context(format!("{e:#}"))
                    }
                })?;
                for m in policy::RULE_MAPS {
                    let _ = std::fs::remove_file(dir.join(m));
                }
                notes.push(format!(
                    "{} rules carried over from the earlier guard's maps into new ones",
                    saved.len()
                ));
                (s, saved)
            }
            Err(e) => return Err(e),
        };
        {
            use libbpf_rs::skel::Skel;
            use libbpf_rs::MapCore;
            for mut m in session.skel.object_mut().maps_mut() {
                let name = m.name().to_string_lossy().into_owned();
                if policy::pinned_maps().any(|m| m == name) && !dir.join(&name).exists() {
                    m.pin(dir.join(&name))
                        .with_context(|| format!("pinning map {name} in {}", dir.display()))?;
                }
            }
        }
        let maps = PolicyMaps::open(Some(&iface))?;
        maps.restore(&carried)?;
        let added = if args.rules.is_some() { maps.sync_file_rules(&iface, &rules)?.0 } else { 0 };
        drop(rules);
        // Maps made new hold what was just written, every write checked: no
        // need to walk a million rules again (1 s) to count them.
        let kept = if fresh_maps && carried.is_empty() { added } else { maps.count() };
        // Connection limit: counted in the kernel by the lifecycle tracepoints,
        // which report only peers over the limit; alerts are rate-limited here.
        let lc = if args.conn_limit > 0 && (!args.no_detect || enforce) {
            let cfg = crate::bpf::lifecycle::types::lifecycle_config {
                conn_limit: args.conn_limit,
                count_handshakes: 1,
                ..Default::default()
            };
            // Without the lifecycle tracepoints the guard still guards: these
            // two detectors are the only casualties, and the user is told.
            use std::os::fd::AsFd;
            let shared = session.skel.maps.peer_conns.as_fd();
            match crate::bpf::lifecycle::start(
                cfg,
                Some(crate::bpf::lifecycle::GUARD_TRACEPOINTS),
                None,
                Some(shared),
            ) {
                Ok(lc) => Some(lc),
                Err(e) => {
                    notes.push(format!("connection limit and SYN-to-handshake ratio unavailable: {e:#}"));
                    None
                }
            }
        } else {
            None
        };
        let last_sweep = std::cell::Cell::new(std::time::Instant::now());
        let last_l7_sweep = std::cell::Cell::new(std::time::Instant::now());
        let limit = Default::default();
        Ok(Guard {
            lc,
            maps,
            session,
            kept,
            notes,
            id: iface,
            netns,
            last_sweep,
            last_l7_sweep,
            l7_timeouts: Default::default(),
            l7_timeout: args.l7_timeout,
            l7_undecided_pass: args.l7_undecided == crate::cli::Unparsable::Pass,
            limit,
            claim,
        })
    }

    /// The interface went away: the rules go with it when the guard ends.
    pub fn interface_gone(&self) {
        self.claim.interface_gone.set(true);
    }

    /// The alerts of the kernel's detectors and of the connection limit
    /// (which the `settings` rate-limit and mitigate), each handed to
    /// `take` as it is read. What is not read yet stays in the kernel's
    /// rings for the next reader: these may be made again at will.
    pub fn alerts<'a>(&'a self, settings: &'a Settings, take: impl FnMut(Alert) + 'a) -> Result<Alerts<'a>> {
        let take = std::rc::Rc::new(std::cell::RefCell::new(take));
        let offset = bpf::monotonic_to_realtime_offset();
        let mut b = libbpf_rs::RingBufferBuilder::new();
        let to = take.clone();
        b.add(&self.session.skel.maps.alerts, move |d: &[u8]| {
            let mut a = crate::bpf::types::alert_event::default();
            let n = d.len().min(std::mem::size_of_val(&a));
            if plain::copy_from_bytes(&mut a, &d[..n]).is_ok() {
                (to.borrow_mut())(detect::kernel_alert(&a, offset, settings));
            }
            0
        })
        .context("setting up the alert ring buffer")?;
        if let Some(lc) = &self.lc {
            b.add(&lc.skel.maps.limit_events, move |d: &[u8]| {
                let mut e = crate::bpf::lifecycle::types::conn_event::default();
                let n = d.len().min(std::mem::size_of_val(&e));
                if plain::copy_from_bytes(&mut e, &d[..n]).is_ok() {
                    for a in self.limit.borrow_mut().on_event(&e, offset, self.netns, settings, &self.maps) {
                        (take.borrow_mut())(a);
                    }
                }
                0
            })
            .context("setting up the connection-limit ring buffer")?;
        }
        Ok(Alerts { ring: b.build().context("setting up the alert ring buffer")? })
    }

    /// Removes expired rules, at most once a second. They match nothing in
    /// the kernel already; sweeping them out keeps the tries small and
    /// `block list` honest. Through the index of rules with a TTL.
    pub fn sweep_expired(&self) {
        if self.last_sweep.get().elapsed() >= std::time::Duration::from_secs(1) {
            let _ = self.maps.sweep();
            self.last_sweep.set(std::time::Instant::now());
        }
    }

    /// Ends the L7 rules' idle flows, at most every 5 s (each held flow is
    /// 4 KiB to read): a first message not complete within `l7_timeout` is
    /// given up on (its flow blocked, unless --l7-undecided pass); a blocked
    /// flow silent for 60 s, and a passed one 120 s after its first message
    /// (10 s once closing), are forgotten. Returns an alert for each flow
    /// given up on and blocked.
    pub fn sweep_l7_flows(&self) -> Vec<Alert> {
        let (l7_timeout, undecided_pass) = (self.l7_timeout, self.l7_undecided_pass);
        use crate::bpf::types::{
            alert_kind as A, guard_drop_reason as R, l7_guard_state as S, l7_undecided as U,
        };
        use crate::output::alert::Detail;
        use libbpf_rs::MapCore;
        if self.last_l7_sweep.get().elapsed() < std::time::Duration::from_secs(5) {
            return Vec::new();
        }
        self.last_l7_sweep.set(std::time::Instant::now());
        let map = &self.session.skel.maps.l7_guard_flows;
        let now = crate::bpf::clock_ns(libc::CLOCK_MONOTONIC);
        let secs = |s: u64| s * 1_000_000_000;
        let mut gave_up = 0;
        let mut alerts = Vec::new();
        let wall = crate::bpf::clock_ns(libc::CLOCK_REALTIME);
        for key in map.keys().collect::<Vec<_>>() {
            let Ok(Some(v)) = map.lookup(&key, libbpf_rs::MapFlags::ANY) else { continue };
            let mut f = crate::bpf::types::l7_guard_flow::default();
            if plain::copy_from_bytes(&mut f, &v).is_err() {
                continue;
            }
            let idle = now.saturating_sub(f.seen_ns);
            match f.state {
                s if s == S::L7_GUARD_READING.0 as u8 && idle > l7_timeout.as_nanos() as u64 => {
                    gave_up += 1;
                    f.undecided = U::L7_UNDECIDED_TIMEOUT.0 as u8;
                    f.seen_ns = now;
                    if undecided_pass {
                        f.state = S::L7_GUARD_PASSED.0 as u8;
                    } else {
                        f.state = S::L7_GUARD_BLOCKED.0 as u8;
                        f.why = R::GUARD_DROP_L7_UNDECIDED.0 as u8;
                        let mut k = crate::bpf::types::l7_flow_key::default();
                        if plain::copy_from_bytes(&mut k, &key).is_ok() {
                            alerts.push(Alert {
                                alert: crate::names::alert_name(A::ALERT_L7_UNDECIDED.0 as u8),
                                src: Some(crate::model::address(k.ip_version, &k.src)),
                                ts_ns: wall,
                                detail: Detail::L7Undecided {
                                    sport: k.sport,
                                    dport: k.dport,
                                    reason: "timeout",
                                },
                            });
                        }
                    }
                    // SAFETY: plain old data.
                    let _ = map.update(&key, unsafe { plain::as_bytes(&f) }, libbpf_rs::MapFlags::EXIST);
                }
                s if s == S::L7_GUARD_BLOCKED.0 as u8 && idle > secs(60) => {
                    let _ = map.delete(&key);
                }
                s if s == S::L7_GUARD_PASSED.0 as u8
                    && idle > secs(if f.closing != 0 { 10 } else { 120 }) =>
                {
                    let _ = map.delete(&key);
                }
                _ => {}
            }
        }
        self.l7_timeouts.set(self.l7_timeouts.get() + gave_up);
        alerts
    }

    /// SIGHUP: the rules file again, runtime rules untouched. Returns
    /// (added, removed).
    pub fn reload(&self, file: &std::path::Path) -> Result<(usize, usize)> {
        read_rules_file(file).and_then(|rules| self.maps.sync_file_rules(&self.id, &rules))
    }

    /// SYNs without ACK seen by the programs, and handshakes completed in
    /// the guard's namespace, so far: the SYN-to-handshake ratio's inputs.
    pub fn syns_and_handshakes(&self) -> Option<(u64, u64)> {
        use libbpf_rs::MapCore;
        let lc = self.lc.as_ref()?;
        let syns = self.session.counters().ok()?.0.syn_no_ack;
        let done = lc
            .skel
            .maps
            .handshakes
            .lookup(&self.netns.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .ok()
            .flatten()
            .map_or(0, |v| u64::from_ne_bytes(v[..8].try_into().unwrap_or([0; 8])));
        Some((syns, done))
    }
}

// SAFETY: integers and bytes, its padding explicit.
unsafe impl plain::Plain for crate::bpf::types::l7_guard_flow {}
