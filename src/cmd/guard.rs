//! `tcpscope guard`: the ingress programs with the rules on, their maps
//! pinned for `tcpscope block` / `tcpscope allow` to edit while it runs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bpf::attach::HookKind;
use crate::bpf::{self, preflight};
use crate::cli::{AllowArgs, AllowCmd, BlockArgs, BlockCmd, GuardArgs};
use crate::cmd::{stop_flag, Session};
use crate::filter::EventFilter;
use crate::output::alert::{Alert, Detail};
use crate::output::print_line;
use crate::policy::{self, List, PolicyMaps, Rule};

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

/// Set by SIGHUP: reload the rules file.
static RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sighup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst); // async-signal-safe: one atomic store
}

/// The rules of a rules file, read and checked.
fn read_rules_file(f: &std::path::Path) -> Result<Vec<Rule>> {
    policy::parse_rules(&policy::read_rules_text(f)?, &f.display().to_string())
}

pub fn run(args: &GuardArgs) -> Result<()> {
    // Everything that can be wrong with the input fails before attaching.
    let rules = match &args.rules {
        Some(f) => read_rules_file(f)?,
        None => Vec::new(),
    };
    preflight::check_privileges()?;
    if let Some(ns) = &args.attach.netns {
        crate::bpf::attach::enter_netns(ns)?;
    }
    crate::bpf::attach::ifindex(&args.attach.iface)?;
    let stop = stop_flag()?;
    // SIGHUP reloads the rules file instead of stopping the guard (this
    // replaces the stop handler for SIGHUP alone).
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGHUP, on_sighup as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    let iface = policy::guard_id(&args.attach.iface, args.attach.netns.as_deref());
    let claimed = policy::claim(&iface)?;
    if claimed.private_pins {
        eprintln!(
            "tcpscope: warning: /sys/fs/bpf was not mounted in this mount namespace (as under `ip netns exec`), so the guard mounted its own: its rules end when it stops, and `tcpscope block` elsewhere cannot reach them; run `tcpscope guard --netns NAME` instead"
        );
    }
    let dir = claimed.dir;
    let claim = Claim { id: iface.clone(), interface_gone: std::cell::Cell::new(false) };

    let mut config = EventFilter::default().to_kernel(false)?;
    config.policy = 1;
    config.lean = u8::from(!args.inspect);
    config.drop_unparsable = u8::from(args.unparsable == crate::cli::Unparsable::Drop);
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
        netns: crate::cmd::watch::own_netns().unwrap_or(0),
        enforce_conn_limit: u8::from(enforce),
        ..Default::default()
    };
    let opts = bpf::LoadOptions {
        ringbuf_bytes: 4096,
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
            for m in policy::RULE_MAPS {
                let _ = std::fs::remove_file(dir.join(m));
            }
            let fresh = bpf::LoadOptions { reuse_pins: None, ..opts };
            let s =
                Session::start_with(&args.attach, hook, fresh).map_err(|e2| e2.context(format!("{e:#}")))?;
            eprintln!(
                "tcpscope: {} rules carried over from the earlier guard's maps into new ones",
                saved.len()
            );
            (s, saved)
        }
        Err(e) => return Err(e),
    };
    {
        use libbpf_rs::skel::Skel;
        use libbpf_rs::MapCore;
        for mut m in session.skel.object_mut().maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            if policy::MAPS.contains(&name.as_str()) && !dir.join(&name).exists() {
                m.pin(dir.join(&name)).with_context(|| format!("pinning map {name} in {}", dir.display()))?;
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
                eprintln!("tcpscope: connection limit and SYN-to-handshake ratio unavailable: {e:#}");
                None
            }
        }
    } else {
        None
    };
    // Announced last: tests and scripts take this line to mean "all live".
    session.announce(&format!("guarding with {kept} rules"));
    let mut position = ChainPosition::default();
    position.check(&session);

    let my_netns = crate::cmd::watch::own_netns().unwrap_or(0);
    let last_alert =
        std::cell::RefCell::new(std::collections::HashMap::<std::net::IpAddr, std::time::Instant>::new());
    let offset = crate::cmd::monotonic_to_realtime_offset();
    let mut b = libbpf_rs::RingBufferBuilder::new();
    b.add(&session.skel.maps.alerts, |d: &[u8]| {
        let mut a = crate::bpf::types::alert_event::default();
        let n = d.len().min(std::mem::size_of_val(&a));
        if plain::copy_from_bytes(&mut a, &d[..n]).is_ok() {
            emit(&kernel_alert(&a, offset, args), args.json);
        }
        0
    })
    .context("setting up the alert ring buffer")?;
    if let Some(lc) = &lc {
        b.add(&lc.skel.maps.limit_events, |d: &[u8]| {
            let mut e = crate::bpf::lifecycle::types::conn_event::default();
            let n = d.len().min(std::mem::size_of_val(&e));
            // With --no-detect (kept for --enforce), the limit drops but says nothing.
            if plain::copy_from_bytes(&mut e, &d[..n]).is_err() || e.netns != my_netns || args.no_detect {
                return 0;
            }
            let rec = crate::lifecycle::ConnRecord::from_event(&e, e.ts_ns + offset, &|_, _| String::new());
            let now = std::time::Instant::now();
            let mut last = last_alert.borrow_mut();
            if last.get(&rec.peer).is_some_and(|t| now.duration_since(*t) < args.alert_interval) {
                return 0;
            }
            last.insert(rec.peer, now);
            let alert = |kind, detail| Alert { alert: kind, src: Some(rec.peer), ts_ns: rec.ts_ns, detail };
            emit(
                &alert(
                    "conn_limit",
                    Detail::ConnLimit { connections: e.reason, limit: args.conn_limit, refused: false },
                ),
                args.json,
            );
            if args.mitigate {
                let prefix = if rec.peer.is_ipv4() { 32 } else { 128 };
                let rule = Rule {
                    list: List::Block,
                    cidr: crate::filter::Cidr { addr: rec.peer, prefix },
                    port: None,
                    ttl: Some(args.mitigate_ttl),
                };
                // Allow-listed sources are never blocked.
                if !maps.allowed(rec.peer) && maps.add(&rule).is_ok() {
                    let blocked = Detail::Mitigation { blocked_for_s: args.mitigate_ttl.as_secs() };
                    emit(&alert("mitigation", blocked), args.json);
                }
            }
            0
        })
        .context("setting up the connection-limit ring buffer")?;
    }
    let ring = b.build().context("setting up the alert ring buffer")?;
    let mut ratio = RatioWatch::default();
    let mut last_sweep = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // consume() too: poll() reads only the rings that woke it.
        let _ = ring.poll(Duration::from_millis(100));
        let _ = ring.consume();
        // Expired rules match nothing in the kernel already; sweeping them
        // out keeps the tries small and `block list` honest. Through the
        // index of rules with a TTL, at most once a second.
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            let _ = maps.sweep();
            last_sweep = std::time::Instant::now();
        }
        position.check(&session);
        if let Err(e) = session.check_present() {
            claim.interface_gone.set(true);
            return Err(e);
        }
        if RELOAD.swap(false, Ordering::SeqCst) {
            let now = crate::output::time_of_day(crate::bpf::clock_ns(libc::CLOCK_REALTIME));
            eprintln!("{now} {}", reload(args, &maps, &iface));
        }
        if let Some(lc) = &lc {
            if let Some(alert) = ratio.check(&session, lc, my_netns, args) {
                emit(&alert, args.json);
            }
        }
    }
    let _ = ring.consume(); // what arrived since the last poll
    drop(ring);
    let c = bpf::read_counters(&session.skel)?;
    drop(session);
    let reasons: Vec<String> =
        c.guard_dropped_by_reason().iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    eprintln!(
        "tcpscope: guard stopped: {} packets dropped{}, {} from allow-listed sources",
        c.0.policy_dropped,
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
        c.0.policy_allowed
    );
    // The lean guard counts only what it needs: its own summary, whose
    // parts add up to the packets seen; --inspect keeps every counter.
    eprintln!("{}", if args.inspect { c.summary() } else { c.guard_summary() });
    Ok(())
}

/// SIGHUP: the rules file again, runtime rules untouched. One line to say
/// what changed, or why nothing did.
fn reload(args: &GuardArgs, maps: &PolicyMaps, iface: &str) -> String {
    let Some(f) = &args.rules else {
        return "tcpscope: SIGHUP: no --rules file to reload; runtime rules unchanged".into();
    };
    match read_rules_file(f).and_then(|rules| maps.sync_file_rules(iface, &rules)) {
        Ok((added, removed)) => format!(
            "tcpscope: reloaded {}: {added} rules added, {removed} removed; runtime rules unchanged",
            f.display()
        ),
        Err(e) => format!("tcpscope: reloading {} failed, rules unchanged: {e:#}", f.display()),
    }
}

/// Whether the guard still runs first on its TC chain. It attaches at the
/// head; a program attached later with BPF_F_BEFORE runs before it and can
/// pass packets the rules would drop. Checked once a second; said once per
/// change.
#[derive(Default)]
struct ChainPosition {
    checked: Option<std::time::Instant>,
    ahead: Vec<u32>,
}

impl ChainPosition {
    fn check(&mut self, session: &Session) {
        if self.checked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.checked = Some(std::time::Instant::now());
        let Ok(ahead) = session.tc_programs_ahead() else { return };
        if ahead != self.ahead && !ahead.is_empty() {
            let ids = ahead.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
            eprintln!(
                "tcpscope: warning: TC program(s) {ids} now run before the guard on {}: they can pass packets its rules would drop (see `bpftool net show dev {}`)",
                session.ifname, session.ifname
            );
        }
        self.ahead = ahead;
    }
}

/// The global SYN-to-handshake ratio, checked once a second: many SYNs and
/// few completed handshakes is a flood, whatever its sources.
#[derive(Default)]
struct RatioWatch {
    last: Option<(std::time::Instant, u64, u64)>,
    alerted: Option<std::time::Instant>,
}

impl RatioWatch {
    fn check(
        &mut self,
        session: &Session,
        lc: &crate::bpf::lifecycle::Lifecycle,
        netns: u32,
        args: &GuardArgs,
    ) -> Option<Alert> {
        use libbpf_rs::MapCore;
        let now = std::time::Instant::now();
        if self.last.is_some_and(|(t, _, _)| now.duration_since(t) < Duration::from_secs(1)) {
            return None;
        }
        let syns = bpf::read_counters(&session.skel).ok()?.0.syn_no_ack;
        let done = lc
            .skel
            .maps
            .handshakes
            .lookup(&netns.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .ok()
            .flatten()
            .map_or(0, |v| u64::from_ne_bytes(v[..8].try_into().unwrap_or([0; 8])));
        let prev = self.last.replace((now, syns, done))?;
        let (dt, ds, dd) =
            (now.duration_since(prev.0).as_secs_f64(), syns - prev.1, done.saturating_sub(prev.2));
        let rate = ds as f64 / dt;
        let share = if ds == 0 { 1.0 } else { dd as f64 / ds as f64 };
        if rate < args.syn_ratio_min as f64 || share >= args.syn_ratio {
            return None;
        }
        if self.alerted.is_some_and(|t| now.duration_since(t) < args.alert_interval) {
            return None;
        }
        self.alerted = Some(now);
        Some(Alert {
            alert: "syn_ratio",
            src: None,
            ts_ns: crate::bpf::clock_ns(libc::CLOCK_REALTIME),
            detail: Detail::SynRatio {
                syn_per_s: rate.round(),
                handshakes_per_s: (dd as f64 / dt).round(),
                ratio: share,
                threshold: args.syn_ratio,
            },
        })
    }
}

fn alert_name(kind: u8) -> &'static str {
    use crate::bpf::types::alert_kind as A;
    match u32::from(kind) {
        k if k == A::ALERT_PORT_SCAN.0 => "port_scan",
        k if k == A::ALERT_SYN_FLOOD.0 => "syn_flood",
        k if k == A::ALERT_NULL_FLAGS.0 => "null_flags",
        k if k == A::ALERT_XMAS.0 => "xmas",
        k if k == A::ALERT_SYN_FIN.0 => "syn_fin",
        k if k == A::ALERT_SYN_RST.0 => "syn_rst",
        k if k == A::ALERT_FIN_NO_ACK.0 => "fin_without_ack",
        k if k == A::ALERT_SYN_DATA.0 => "syn_with_data",
        k if k == A::ALERT_MITIGATION.0 => "mitigation",
        k if k == A::ALERT_CONN_LIMIT.0 => "conn_limit",
        _ => "unknown",
    }
}

/// An alert of the kernel's detectors, typed.
fn kernel_alert(a: &crate::bpf::types::alert_event, offset: u64, args: &GuardArgs) -> Alert {
    use crate::bpf::types::alert_kind as A;
    let src = if a.ip_version == 4 {
        std::net::IpAddr::from([a.src[0], a.src[1], a.src[2], a.src[3]])
    } else {
        std::net::IpAddr::from(a.src)
    };
    let detail = match u32::from(a.kind) {
        k if k == A::ALERT_PORT_SCAN.0 => {
            Detail::PortScan { ports_seen: a.value, window_s: args.scan_window.as_secs_f64() }
        }
        k if k == A::ALERT_SYN_FLOOD.0 => Detail::SynFlood { syn_rate_limit: a.value },
        k if k == A::ALERT_MITIGATION.0 => Detail::Mitigation { blocked_for_s: u64::from(a.value) },
        k if k == A::ALERT_CONN_LIMIT.0 => {
            Detail::ConnLimit { connections: a.value, limit: args.conn_limit, refused: true }
        }
        _ => Detail::Flags { dport: a.dport, flags: crate::model::flag_names(a.flags_raw) },
    };
    Alert { alert: alert_name(a.kind), src: Some(src), ts_ns: a.ts_ns + offset, detail }
}

/// An alert on standard output, as NDJSON or a text line.
fn emit(alert: &Alert, json: bool) {
    print_line(&if json { alert.json() } else { alert.text() });
}

fn list(maps: &PolicyMaps, which: List, json: bool) -> Result<()> {
    let (mut rules, _) = maps.list()?;
    rules.retain(|r| r.rule.list == which);
    rules.sort_by_key(|r| (r.rule.cidr.addr, r.rule.cidr.prefix, r.rule.port));
    if rules.is_empty() {
        // On stderr: standard output stays empty for scripts.
        eprintln!("tcpscope: no {} rules", if which == List::Allow { "allow" } else { "block" });
    }
    for r in rules {
        let line = if json {
            serde_json::json!({
                "list": if which == List::Allow { "allow" } else { "block" },
                "cidr": format!("{}/{}", r.rule.cidr.addr, r.rule.cidr.prefix),
                "port": r.rule.port, "hits": r.hits,
                "expires_in_ms": r.expires_in.map(|d| d.as_millis() as u64),
            })
            .to_string()
        } else {
            let ttl = r.expires_in.map_or(String::new(), |d| format!(", expires in {:.1}s", d.as_secs_f64()));
            format!("{}: {} hits{ttl}", policy::describe(&r.rule), r.hits)
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
    let adding = match &args.cmd {
        BlockCmd::Add { cidrs, port, ttl } => read_cidrs(cidrs)?
            .into_iter()
            .map(|cidr| Rule { list: List::Block, cidr, port: *port, ttl: *ttl })
            .collect(),
        _ => Vec::new(),
    };
    let maps = PolicyMaps::open(args.guard.id().as_deref())?;
    match &args.cmd {
        BlockCmd::Add { .. } => maps.add_many(&adding),
        BlockCmd::Del { cidr, port } => {
            maps.delete(&Rule { list: List::Block, cidr: *cidr, port: *port, ttl: None })
        }
        BlockCmd::List { json } => list(&maps, List::Block, *json),
        BlockCmd::Flush => {
            let n = maps.flush(List::Block)?;
            eprintln!("tcpscope: {n} block rules removed");
            Ok(())
        }
        BlockCmd::Save { file } => {
            let (mut rules, _) = maps.list()?;
            rules.sort_by_key(|r| {
                (r.rule.list == List::Allow, r.rule.cidr.addr, r.rule.cidr.prefix, r.rule.port)
            });
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
        AllowCmd::Add { cidrs, ttl } => read_cidrs(cidrs)?
            .into_iter()
            .map(|cidr| Rule { list: List::Allow, cidr, port: None, ttl: *ttl })
            .collect(),
        _ => Vec::new(),
    };
    let maps = PolicyMaps::open(args.guard.id().as_deref())?;
    match &args.cmd {
        AllowCmd::Add { .. } => maps.add_many(&adding),
        AllowCmd::Del { cidr } => {
            maps.delete(&Rule { list: List::Allow, cidr: *cidr, port: None, ttl: None })
        }
        AllowCmd::List { json } => list(&maps, List::Allow, *json),
        AllowCmd::Flush => {
            let n = maps.flush(List::Allow)?;
            eprintln!("tcpscope: {n} allow rules removed");
            Ok(())
        }
    }
}
