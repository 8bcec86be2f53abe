//! The guard's detectors in user space, between the kernel's records and
//! the outputs: the kernel detectors' events made typed alerts, the
//! per-source connection limit (rate-limited, and mitigated with a block
//! rule), the global SYN-to-handshake ratio, and the guard's place on its
//! TC chain. Each returns what to say; none prints.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::bpf::lifecycle::types::conn_event;
use crate::bpf::types::{alert_event, alert_kind as A};
use crate::cli::GuardArgs;
use crate::filter::Cidr;
use crate::output::alert::{Alert, Detail};
use crate::policy::{List, PolicyMaps, Rule};
use crate::view::ingress::Session;

/// The detector settings, from the guard's command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scan_window: Duration,
    pub conn_limit: u32,
    /// Say nothing of the connection limit (--no-detect; --enforce still drops).
    pub quiet: bool,
    /// Block a source over the connection limit for this long (--mitigate).
    pub mitigate_ttl: Option<Duration>,
    pub alert_interval: Duration,
    pub syn_ratio: f64,
    pub syn_ratio_min: u64,
}

impl From<&GuardArgs> for Settings {
    fn from(a: &GuardArgs) -> Self {
        Settings {
            scan_window: a.scan_window,
            conn_limit: a.conn_limit,
            quiet: a.no_detect,
            mitigate_ttl: a.mitigate.then_some(a.mitigate_ttl),
            alert_interval: a.alert_interval,
            syn_ratio: a.syn_ratio,
            syn_ratio_min: a.syn_ratio_min,
        }
    }
}

/// An alert of the kernel's detectors, typed. `offset` turns the kernel's
/// monotonic time into wall-clock time.
pub fn kernel_alert(a: &alert_event, offset: u64, s: &Settings) -> Alert {
    let src = crate::model::address(a.ip_version, &a.src);
    let detail = match u32::from(a.kind) {
        k if k == A::ALERT_PORT_SCAN.0 => {
            Detail::PortScan { ports_seen: a.value, window_s: s.scan_window.as_secs_f64() }
        }
        k if k == A::ALERT_SYN_FLOOD.0 => Detail::SynFlood { syn_rate_limit: a.value },
        k if k == A::ALERT_MITIGATION.0 => Detail::Mitigation { blocked_for_s: u64::from(a.value) },
        k if k == A::ALERT_CONN_LIMIT.0 => {
            Detail::ConnLimit { connections: a.value, limit: s.conn_limit, refused: true }
        }
        k if k == A::ALERT_L7_BLOCKED.0 => Detail::L7Blocked {
            sport: a.sport,
            dport: a.dport,
            rule: crate::names::l7_rule_kind_name(a.value),
            name: String::from_utf8_lossy(&a.name[..usize::from(a.name_len).min(a.name.len())]).into_owned(),
        },
        k if k == A::ALERT_L7_UNDECIDED.0 => Detail::L7Undecided {
            sport: a.sport,
            dport: a.dport,
            reason: crate::names::l7_undecided_name(a.value),
        },
        k if k == A::ALERT_L7_CONFLICT.0 => {
            Detail::L7Conflict { sport: a.sport, dport: a.dport, offset: a.value }
        }
        _ => Detail::Flags { dport: a.dport, flags: crate::names::flag_names(a.flags_raw) },
    };
    Alert { alert: crate::names::alert_name(a.kind), src: Some(src), ts_ns: a.ts_ns + offset, detail }
}

/// Sources over the connection limit, as the lifecycle programs report
/// them: one alert per source per alert interval, and with --mitigate a
/// block rule for it (never for an allow-listed source).
#[derive(Default)]
pub struct ConnLimit {
    last_alert: HashMap<IpAddr, Instant>,
}

impl ConnLimit {
    /// The alerts one report of the kernel's gives: none, the limit, or the
    /// limit and its mitigation. Reports from other network namespaces
    /// than `netns` are not this guard's.
    pub fn on_event(
        &mut self,
        e: &conn_event,
        offset: u64,
        netns: u32,
        s: &Settings,
        maps: &PolicyMaps,
    ) -> Vec<Alert> {
        if e.netns != netns || s.quiet {
            return Vec::new();
        }
        let rec = crate::conn::ConnRecord::from_event(e, e.ts_ns + offset, &|_, _| String::new());
        let now = Instant::now();
        if self.last_alert.get(&rec.peer).is_some_and(|t| now.duration_since(*t) < s.alert_interval) {
            return Vec::new();
        }
        self.last_alert.insert(rec.peer, now);
        let alert = |kind, detail| Alert { alert: kind, src: Some(rec.peer), ts_ns: rec.ts_ns, detail };
        let mut out = vec![alert(
            "conn_limit",
            Detail::ConnLimit { connections: e.reason, limit: s.conn_limit, refused: false },
        )];
        if let Some(ttl) = s.mitigate_ttl {
            let prefix = if rec.peer.is_ipv4() { 32 } else { 128 };
            let rule = Rule {
                list: List::Block,
                cidr: Cidr { addr: rec.peer, prefix },
                port: None,
                ttl: Some(ttl),
                name: None,
            };
            if !maps.allowed(rec.peer) && maps.add(&rule).is_ok() {
                out.push(alert("mitigation", Detail::Mitigation { blocked_for_s: ttl.as_secs() }));
            }
        }
        out
    }
}

/// The global SYN-to-handshake ratio, checked once a second: many SYNs and
/// few completed handshakes is a flood, whatever its sources.
#[derive(Default)]
pub struct RatioWatch {
    last: Option<(Instant, u64, u64)>,
    alerted: Option<Instant>,
}

impl RatioWatch {
    /// Whether it is time to look again (once a second).
    pub fn due(&self) -> bool {
        self.last.is_none_or(|(t, _, _)| t.elapsed() >= Duration::from_secs(1))
    }

    /// Takes the counts so far of SYNs and of completed handshakes; an
    /// alert if, since the last look, SYNs came fast and few completed.
    pub fn check(&mut self, syns: u64, done: u64, s: &Settings) -> Option<Alert> {
        let now = Instant::now();
        let prev = self.last.replace((now, syns, done))?;
        let (dt, ds, dd) = (
            now.duration_since(prev.0).as_secs_f64(),
            syns.saturating_sub(prev.1),
            done.saturating_sub(prev.2),
        );
        let rate = ds as f64 / dt;
        let share = if ds == 0 { 1.0 } else { dd as f64 / ds as f64 };
        if rate < s.syn_ratio_min as f64 || share >= s.syn_ratio {
            return None;
        }
        if self.alerted.is_some_and(|t| now.duration_since(t) < s.alert_interval) {
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
                threshold: s.syn_ratio,
            },
        })
    }
}

/// Whether the guard still runs first on its TC chain. It attaches at the
/// head; a program attached later with BPF_F_BEFORE runs before it and can
/// pass packets the rules would drop. Checked once a second; said once per
/// change.
#[derive(Default)]
pub struct ChainPosition {
    checked: Option<Instant>,
    ahead: Vec<u32>,
}

impl ChainPosition {
    /// A warning when programs newly run before the guard's.
    pub fn check(&mut self, session: &Session) -> Option<String> {
        if self.checked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        self.checked = Some(Instant::now());
        let ahead = session.tc_programs_ahead().ok()?;
        let news = ahead != self.ahead && !ahead.is_empty();
        let ids = ahead.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
        self.ahead = ahead;
        news.then(|| {
            format!(
                "warning: TC program(s) {ids} now run before the guard on {}: they can pass packets its rules would drop (see `bpftool net show dev {}`)",
                session.ifname, session.ifname
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            scan_window: Duration::from_secs(5),
            conn_limit: 10,
            quiet: false,
            mitigate_ttl: None,
            alert_interval: Duration::from_secs(10),
            syn_ratio: 0.5,
            syn_ratio_min: 100,
        }
    }

    #[test]
    fn ratio_alerts_on_many_syns_and_few_handshakes_once_per_interval() {
        let s = settings();
        let mut w = RatioWatch::default();
        assert!(w.check(0, 0, &s).is_none(), "the first look has nothing to compare");
        w.last = w.last.map(|(t, a, b)| (t - Duration::from_secs(1), a, b));
        let a = w.check(1000, 100, &s).expect("1000 SYN/s, 10% completed");
        assert_eq!(a.alert, "syn_ratio");
        w.last = w.last.map(|(t, a, b)| (t - Duration::from_secs(1), a, b));
        assert!(w.check(2000, 200, &s).is_none(), "said once per alert interval");
        let mut w = RatioWatch::default();
        w.check(0, 0, &s);
        w.last = w.last.map(|(t, a, b)| (t - Duration::from_secs(1), a, b));
        assert!(w.check(1000, 900, &s).is_none(), "most handshakes complete");
        let mut w = RatioWatch::default();
        w.check(0, 0, &s);
        w.last = w.last.map(|(t, a, b)| (t - Duration::from_secs(1), a, b));
        assert!(w.check(50, 0, &s).is_none(), "below the minimum rate");
    }
}
